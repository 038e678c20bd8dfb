#pragma once
/// The SIMD vocabulary written once against xsimd::batch<T, A>, for any architecture A
/// xsimd supports. Where an instruction set has a faster or a needed form of its own, the
/// operation forwards to an overload taking `xsimd::kernel::requires_arch<Arch>` in x86.hpp,
/// chosen by the most derived architecture tag, as xsimd's own kernels are.

#include <cstddef>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "diffattn/detail/simd/x86.hpp"
#include "diffattn/half.hpp"

namespace diffattn {
namespace detail {
namespace simd_kernel {

/// Lane i: the sum of rows[i]'s lanes, one horizontal add per batch.
template <class T, class A>
xsimd::batch<T, A> sums(const xsimd::batch<T, A>* rows, xsimd::kernel::requires_arch<xsimd::generic>) {
  alignas(64) T lane_sums[xsimd::batch<T, A>::size];
  for (std::size_t i = 0; i < xsimd::batch<T, A>::size; ++i) lane_sums[i] = xsimd::hadd(rows[i]);
  return xsimd::batch<T, A>::load_aligned(lane_sums);
}

template <class T, class A>
void stream_store(T* dst, const xsimd::batch<T, A>& b, xsimd::kernel::requires_arch<xsimd::generic>) {
  b.store_aligned(dst);
}

template <class T, class A>
void keep_in_register(xsimd::batch<T, A>&, xsimd::kernel::requires_arch<xsimd::generic>) {}

template <class T, class A, class E>
void load_converted(const E* p, xsimd::batch<T, A>& out, xsimd::kernel::requires_arch<xsimd::generic>) {
  alignas(64) T lanes[xsimd::batch<T, A>::size];
  for (std::size_t i = 0; i < xsimd::batch<T, A>::size; ++i) lanes[i] = convert_element<T>(p[i]);
  out = xsimd::batch<T, A>::load_aligned(lanes);
}

}  // namespace simd_kernel

template <class T, class A>
xsimd::batch<T, A> simd_fma(const xsimd::batch<T, A>& a, const xsimd::batch<T, A>& b,
                            const xsimd::batch<T, A>& c) {
  return xsimd::fma(a, b, c);
}
template <class T, class A>
xsimd::batch<T, A> simd_max(const xsimd::batch<T, A>& a, const xsimd::batch<T, A>& b) {
  return xsimd::max(a, b);
}
template <class T, class A>
T simd_sum(const xsimd::batch<T, A>& a) {
  return xsimd::hadd(a);
}
template <class T, class A>
T simd_hmax(const xsimd::batch<T, A>& a) {
  alignas(64) T lanes[xsimd::batch<T, A>::size];
  a.store_unaligned(lanes);
  T best = lanes[0];
  for (std::size_t i = 1; i < xsimd::batch<T, A>::size; ++i) best = lanes[i] > best ? lanes[i] : best;
  return best;
}
/// Lane i of the result is the sum of rows[i]'s lanes, for `size` batches at once.
template <class T, class A>
xsimd::batch<T, A> simd_sums(const xsimd::batch<T, A>* rows) {
  return simd_kernel::sums(rows, A{});
}
template <class T, class A>
xsimd::batch<T, A> simd_hide_from(const xsimd::batch<T, A>& key, const xsimd::batch<T, A>& limit,
                                  const xsimd::batch<T, A>& scores) {
  return xsimd::select(key < limit, scores, xsimd::batch<T, A>(-std::numeric_limits<T>::infinity()));
}
template <class T, class A>
xsimd::batch<T, A> simd_ratio_or_zero(const xsimd::batch<T, A>& num, const xsimd::batch<T, A>& den) {
  return xsimd::select(den == xsimd::batch<T, A>(T(0)), xsimd::batch<T, A>(T(0)), num / den);
}
template <class T, class A>
xsimd::batch<T, A> simd_replace_equal(const xsimd::batch<T, A>& x, T match, T replacement) {
  return xsimd::select(x == xsimd::batch<T, A>(match), xsimd::batch<T, A>(replacement), x);
}
/// Keeps a loaded batch in a register: without it GCC folds the load into each FMA that
/// uses it (several loads instead of one), which makes the micro-kernels load-bound.
template <class T, class A>
void keep_in_register(xsimd::batch<T, A>& b) {
  simd_kernel::keep_in_register(b, A{});
}
/// `size` elements of E (T itself, or bf16/f16 for float) from p, converted to T in
/// registers where the architecture can: half-precision K/V rows are read at half the bytes.
template <class T, class A, class E>
void load_converted(const E* p, xsimd::batch<T, A>& out) {
  if constexpr (std::is_same_v<T, E>) {
    out = xsimd::batch<T, A>::load_unaligned(p);
  } else {
    simd_kernel::load_converted(p, out, A{});
  }
}
/// A non-temporal store of `b` to `dst`, aligned to the batch width, where the
/// architecture has one (the line goes to memory without being read first and without
/// displacing what the caches hold); an ordinary aligned store elsewhere.
template <class T, class A>
void stream_store(T* dst, const xsimd::batch<T, A>& b) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  simd_kernel::stream_store(dst, b, A{});
}

}  // namespace detail
}  // namespace diffattn
