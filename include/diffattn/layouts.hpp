#pragma once
/// \file
/// Zero-copy views for the tensor layouts attention code meets in practice.

#include "diffattn/errors.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

/// [B, N, H, D] (what a projection x·Wᵀ produces, split into heads) → [B, H, N, D]
/// (what the kernels take).
template <class T>
TensorView<T, 4> bnhd_to_bhnd(TensorView<T, 4> x) {
  return x.permute({0, 2, 1, 3});
}

/// [B, H, N, D] → [B, N, H, D]; e.g. to write kernel output straight into the buffer
/// the output projection reads.
template <class T>
TensorView<T, 4> bhnd_to_bnhd(TensorView<T, 4> x) {
  return x.permute({0, 2, 1, 3});
}

/// The two maps of the differential heads, each [B, H, N, d] in kernel layout.
template <class T>
struct HeadPairs {
  /// The first map's heads (q1 or k1) [B, H, N, d].
  TensorView<T, 4> first;
  /// The second map's heads (q2 or k2) [B, H, N, d].
  TensorView<T, 4> second;
};

namespace detail {
template <class T>
void check_even_heads(const char* fn, TensorView<T, 4> x) {
  if (x.extent(2) % 2 != 0) {
    throw_shape_error(fn, ": 'x' dimension 2 (2H): expected an even number of heads, got ",
                      x.extent(2));
  }
}
}  // namespace detail

/// The reference code's pairing: x [B, N, 2H, d], head 2i is the first map of pair i
/// and head 2i+1 the second. Returns first, second [B, H, N, d].
template <class T>
HeadPairs<T> interleaved_pairs(TensorView<T, 4> x) {
  detail::check_even_heads("interleaved_pairs", x);
  const auto pairs = x.split(2, x.extent(2) / 2, 2);  // [B, N, H, 2, d]
  return {bnhd_to_bhnd(pairs.select(3, 0)), bnhd_to_bhnd(pairs.select(3, 1))};
}

/// Hugging Face DiffLlama's pairing: x [B, N, 2H, d], heads [0, H) are the first maps
/// and heads [H, 2H) the second. Returns first, second [B, H, N, d].
template <class T>
HeadPairs<T> half_split_pairs(TensorView<T, 4> x) {
  detail::check_even_heads("half_split_pairs", x);
  const auto halves = x.split(2, 2, x.extent(2) / 2);  // [B, N, 2, H, d]
  return {bnhd_to_bhnd(halves.select(2, 0)), bnhd_to_bhnd(halves.select(2, 1))};
}

}  // namespace diffattn
