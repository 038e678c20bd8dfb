#pragma once
/// \file
/// Half-precision element types, diffattn::bf16 and diffattn::f16 (Eigen's bfloat16 and
/// half), and diffattn::convert, which copies a view into a view of another element type.
/// Tensor, TensorView, the layouts helpers, as_view/as_eigen and diffattn::reference take
/// them like float.

#include <array>
#include <cstddef>
#include <type_traits>

#include <Eigen/Core>

#include "diffattn/detail/validation.hpp"
#include "diffattn/errors.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

/// bfloat16: fp32's 8-bit exponent (so its range) with a 7-bit mantissa.
using bf16 = Eigen::bfloat16;
/// IEEE binary16: 5-bit exponent (largest finite 65504), 10-bit mantissa.
using f16 = Eigen::half;

/// Whether T is bf16 or f16.
template <class T>
inline constexpr bool is_half_v = std::is_same_v<std::remove_cv_t<T>, bf16> || std::is_same_v<std::remove_cv_t<T>, f16>;

namespace detail {

/// One element of From as To: exact from bf16/f16 to float or double; to bf16/f16 rounded
/// to nearest, ties to even, through float (as Eigen and PyTorch convert double), with
/// overflow to ±inf and NaN kept NaN.
template <class To, class From>
To convert_element(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (is_half_v<To> || is_half_v<From>) {
    return static_cast<To>(static_cast<float>(x));
  } else {
    return static_cast<To>(x);
  }
}

}  // namespace detail

/// dst = src element by element, converted (detail::convert_element). src and dst
/// [same shape], any strides; dst must not overlap itself or src (shape_error).
template <class From, class To, std::size_t Rank>
void convert(TensorView<From, Rank> src, TensorView<To, Rank> dst) {
  static_assert(!std::is_const_v<To>, "convert writes to dst");
  for (std::size_t d = 0; d < Rank; ++d) {
    if (src.extent(d) != dst.extent(d)) {
      detail::throw_shape_error("convert: 'dst' dimension ", d, ": expected ", src.extent(d), " (src's), got ",
                                dst.extent(d));
    }
  }
  detail::check_output("convert", "dst", dst);
  detail::check_no_alias("convert", "dst", dst, "src", src);
  if (dst.empty()) return;
  // Row by row over the last dimension, which may be strided here.
  const index_t width = dst.extent(Rank - 1), rows = dst.size() / width;
  const index_t src_step = src.stride(Rank - 1), dst_step = dst.stride(Rank - 1);
  for (index_t row = 0; row < rows; ++row) {
    std::array<index_t, Rank> index{};
    for (index_t rest = row, d = static_cast<index_t>(Rank) - 1; d-- > 0;) {
      index[static_cast<std::size_t>(d)] = rest % dst.extent(static_cast<std::size_t>(d));
      rest /= dst.extent(static_cast<std::size_t>(d));
    }
    const From* in = &src.at(index);
    To* out = &dst.at(index);
    for (index_t c = 0; c < width; ++c) out[c * dst_step] = detail::convert_element<To>(in[c * src_step]);
  }
}

}  // namespace diffattn
