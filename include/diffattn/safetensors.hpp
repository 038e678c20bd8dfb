#pragma once
/// \file
/// Everything that reads or writes .safetensors checkpoints: the format's types
/// (safetensors_format.hpp), SafeTensors (safetensors_reader.hpp), SafeTensorsWriter
/// (safetensors_writer.hpp) and the blocks' from_safetensors (block_loading.hpp).
///
/// These headers parse JSON with nlohmann-json, which the kernels and blocks do not
/// need: link the CMake target diffattn::safetensors (or pkg-config diffattn-safetensors)
/// instead of diffattn::diffattn to get it.

#include "diffattn/safetensors_format.hpp"
#include "diffattn/safetensors_reader.hpp"
#include "diffattn/safetensors_writer.hpp"
#include "diffattn/block_loading.hpp"
