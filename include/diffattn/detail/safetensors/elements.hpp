#pragma once
/// How the format stores elements: little-endian integers, IEEE-754 bit patterns, and
/// F16/BF16/F32 widened exactly to float or double.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace diffattn::detail {

// Numbers are assembled from bytes with shifts rather than memcpy'd, so the file's
// little-endian layout is read and written correctly on a big-endian host too. The
// float <-> integer bit copies assume floats share the integers' byte order, which holds
// on every platform with IEEE-754 floats that C++ compilers target.
static_assert(std::numeric_limits<float>::is_iec559 && std::numeric_limits<double>::is_iec559,
              "safetensors conversion assumes IEEE-754 float and double");

template <class U>
U load_le(const std::uint8_t* bytes) noexcept {
  U value = 0;
  for (std::size_t i = sizeof(U); i-- > 0;) value = static_cast<U>((value << 8) | bytes[i]);
  return value;
}

template <class U>
void store_le(U value, std::uint8_t* bytes) noexcept {
  for (std::size_t i = 0; i < sizeof(U); ++i) {
    bytes[i] = static_cast<std::uint8_t>(value & 0xFFu);
    value = static_cast<U>(value >> 8);
  }
}

inline float float_from_bits(std::uint32_t bits) noexcept {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline double double_from_bits(std::uint64_t bits) noexcept {
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

/// float to double keeping a signaling NaN signaling and its payload (a conversion
/// instruction would quiet it), so that F16/BF16/F32 -> double is exact bit for bit.
inline double float_to_double(float value) noexcept {
  if (!std::isnan(value)) return static_cast<double>(value);
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const std::uint64_t sign = static_cast<std::uint64_t>(bits >> 31) << 63;
  const std::uint64_t payload = static_cast<std::uint64_t>(bits & 0x7FFFFFu) << (52 - 23);
  return double_from_bits(sign | (std::uint64_t{0x7FF} << 52) | payload);
}

/// float to T (float or double), exactly.
template <class T>
T widen_float(float value) noexcept {
  if constexpr (std::is_same_v<T, double>) {
    return float_to_double(value);
  } else {
    return value;
  }
}

/// IEEE binary16 to float, exactly: every half (subnormals, ±0, ±inf, NaN payloads) is
/// representable in float.
inline float half_to_float(std::uint16_t half) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1Fu;
  const std::uint32_t mantissa = half & 0x3FFu;
  if (exponent == 0x1F) {  // inf (mantissa 0) or NaN, payload kept in the top bits
    return float_from_bits(sign | 0x7F800000u | (mantissa << 13));
  }
  if (exponent == 0) {
    // ±0 and subnormals: mantissa · 2^-24, exact since mantissa < 2^10.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  return float_from_bits(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

/// bfloat16 is the top half of a float, so widening is a shift (NaNs stay NaN).
inline float bfloat16_to_float(std::uint16_t bits) noexcept {
  return float_from_bits(static_cast<std::uint32_t>(bits) << 16);
}

}  // namespace diffattn::detail
