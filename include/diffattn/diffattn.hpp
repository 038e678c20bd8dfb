#pragma once
/// \file
/// Umbrella header: the kernels, reference, views, blocks and KV cache (not the
/// .safetensors reader, which needs nlohmann-json: see below).

#include "diffattn/version.hpp"
#include "diffattn/errors.hpp"
#include "diffattn/tensor.hpp"
#include "diffattn/half.hpp"
#include "diffattn/eigen.hpp"
#include "diffattn/options.hpp"
#include "diffattn/lambda.hpp"
#include "diffattn/layouts.hpp"
#include "diffattn/reference.hpp"
#include "diffattn/reference_backward.hpp"
#include "diffattn/attention.hpp"
#include "diffattn/attention_backward.hpp"
#include "diffattn/rope.hpp"
#include "diffattn/rms_norm.hpp"
#include "diffattn/kv_cache.hpp"
#include "diffattn/blocks.hpp"
// .safetensors checkpoints (reader, writer, from_safetensors) need nlohmann-json and are
// not included here: #include <diffattn/safetensors.hpp> and link diffattn::safetensors.
