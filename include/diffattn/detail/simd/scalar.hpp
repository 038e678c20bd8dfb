#pragma once
/// The one-lane batch: the SIMD vocabulary on targets xsimd does not know, or with
/// DIFFATTN_NO_SIMD. Every operation here has an xsimd::batch overload in generic.hpp
/// with the same results lane by lane.

#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

#include "diffattn/half.hpp"

namespace diffattn {
namespace detail {

/// A one-lane stand-in for xsimd::batch, so the kernels compile on any target.
template <class T>
struct scalar_batch {
  static constexpr std::size_t size = 1;
  T value;
  scalar_batch() = default;
  scalar_batch(T v) : value(v) {}  // NOLINT(implicit): mirrors xsimd's broadcast
  static scalar_batch load_unaligned(const T* p) { return scalar_batch(*p); }
  void store_unaligned(T* p) const { *p = value; }
  friend scalar_batch operator+(scalar_batch a, scalar_batch b) { return a.value + b.value; }
  friend scalar_batch operator-(scalar_batch a, scalar_batch b) { return a.value - b.value; }
  friend scalar_batch operator*(scalar_batch a, scalar_batch b) { return a.value * b.value; }
};

template <class T>
scalar_batch<T> simd_fma(scalar_batch<T> a, scalar_batch<T> b, scalar_batch<T> c) {
  return std::fma(a.value, b.value, c.value);
}
template <class T>
scalar_batch<T> simd_max(scalar_batch<T> a, scalar_batch<T> b) {
  // Keeps a NaN in `b`, like the xsimd overload.
  return a.value > b.value ? a : b;
}
template <class T>
T simd_sum(scalar_batch<T> a) {
  return a.value;
}
template <class T>
T simd_hmax(scalar_batch<T> a) {
  return a.value;
}
template <class T>
scalar_batch<T> simd_sums(const scalar_batch<T>* rows) {
  return rows[0];
}
/// `scores` where key < limit, −inf elsewhere (lane-wise; key and limit hold small
/// whole numbers, exact in T).
template <class T>
scalar_batch<T> simd_hide_from(scalar_batch<T> key, scalar_batch<T> limit, scalar_batch<T> scores) {
  return key.value < limit.value ? scores : scalar_batch<T>(-std::numeric_limits<T>::infinity());
}
/// num / den lane-wise, and 0 where den is 0 (a row that has seen no key).
template <class T>
scalar_batch<T> simd_ratio_or_zero(scalar_batch<T> num, scalar_batch<T> den) {
  return den.value == T(0) ? T(0) : num.value / den.value;
}
/// x with the lanes equal to `match` replaced by `replacement`.
template <class T>
scalar_batch<T> simd_replace_equal(scalar_batch<T> x, T match, T replacement) {
  return x.value == match ? scalar_batch<T>(replacement) : x;
}
/// One element of E (T itself, or bf16/f16 for float) read as T.
template <class T, class E>
void load_converted(const E* p, scalar_batch<T>& out) {
  out = scalar_batch<T>(convert_element<T>(*p));
}
/// No register pinning to do for one lane.
template <class T>
void keep_in_register(scalar_batch<T>&) {}
/// An ordinary store: there is no non-temporal store of one element.
template <class T>
void stream_store(T* dst, scalar_batch<T> b) {
  b.store_unaligned(dst);
}

}  // namespace detail
}  // namespace diffattn
