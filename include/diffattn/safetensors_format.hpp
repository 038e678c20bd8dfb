#pragma once
/// \file
/// The .safetensors format (Hugging Face's `safetensors` library, which PyTorch and JAX
/// checkpoints are published in): its element types and the error its reader and writer
/// throw. Needs no JSON library; the reader and writer (safetensors_reader.hpp,
/// safetensors_writer.hpp) do.
///
/// Layout of a file: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON
///   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
///    "__metadata__": {"<key>": "<value>", ...}}
/// then the data buffer. Offsets are relative to the start of the data buffer, tensors
/// are row-major and little-endian, and together they cover the buffer exactly (no
/// overlaps, no holes), as the format's reference implementation requires.

#include <cstddef>
#include <stdexcept>
#include <string_view>

namespace diffattn {

/// Thrown for a malformed or unreadable .safetensors file, or a request (name, rank,
/// shape, dtype) the file cannot satisfy. The message names the source and the tensor.
class safetensors_error : public std::runtime_error {
 public:
  using runtime_error::runtime_error;
};

/// Element types of the safetensors format that diffattn knows. Only the floating
/// types convert to float/double tensors; the others can be listed and inspected.
enum class DType { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean };

/// The format's spelling of a dtype: "F64", "F32", "F16", "BF16", "I64", ..., "BOOL".
constexpr std::string_view dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::f64:
      return "F64";
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::i64:
      return "I64";
    case DType::i32:
      return "I32";
    case DType::i16:
      return "I16";
    case DType::i8:
      return "I8";
    case DType::u8:
      return "U8";
    case DType::boolean:
      return "BOOL";
  }
  return "?";
}

/// Bytes per element of a dtype.
constexpr std::size_t dtype_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::f16:
    case DType::bf16:
    case DType::i16:
      return 2;
    case DType::i8:
    case DType::u8:
    case DType::boolean:
      return 1;
  }
  return 0;
}

}  // namespace diffattn
