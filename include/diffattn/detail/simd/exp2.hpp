#pragma once
/// 2^x for the kernels' shifted logits (x <= 0), on batches: a polynomial evaluated in
/// SIMD registers, written once against xsimd::batch, and std::exp2 for the one-lane batch.

#include <cmath>
#include <cstdint>

#include "diffattn/detail/simd/scalar.hpp"

#if !defined(DIFFATTN_NO_SIMD)
#include "diffattn/detail/simd/generic.hpp"
#endif

namespace diffattn {
namespace detail {

/// Per-precision constants of exp2_nonpositive. 2^x is evaluated as 2^n · p(f) with
/// n = round(x), f = x − n in [−½, ½] and p the Taylor polynomial of e^(f·ln 2).
/// Truncation error at |f| = ½: (½·ln 2)^(deg+1)/(deg+1)! relative — 7.3e-9 for float
/// (degree 7, 0.06 ulp) and 5.8e-18 for double (degree 13, 0.05 ulp). With Horner's
/// rounding the result is within 2 ulp of 2^x (tested); below 2^lowest it is 0.
template <class T>
struct exp2_constants;

template <>
struct exp2_constants<float> {
  using bits = std::int32_t;
  static constexpr int degree = 7;
  static constexpr float lowest = -126.0f;         // smallest normal exponent
  static constexpr float round_magic = 12582912.0f;  // 1.5·2^23
  static constexpr bits bias = 127;
  static constexpr int mantissa_bits = 23;
};

template <>
struct exp2_constants<double> {
  using bits = std::int64_t;
  static constexpr int degree = 13;
  static constexpr double lowest = -1022.0;
  static constexpr double round_magic = 6755399441055744.0;  // 1.5·2^52
  static constexpr bits bias = 1023;
  static constexpr int mantissa_bits = 52;
};

/// Taylor coefficient k of 2^f: ln(2)^k / k!.
template <class T>
constexpr T exp2_coefficient(int k) {
  double c = 1;
  for (int i = 1; i <= k; ++i) c *= 0.69314718055994530942 / i;
  return static_cast<T>(c);
}

template <class B, class T>
B exp2_polynomial(B f) {
  constexpr int degree = exp2_constants<T>::degree;
  B p(exp2_coefficient<T>(degree));
  for (int k = degree - 1; k >= 0; --k) p = simd_fma(p, f, B(exp2_coefficient<T>(k)));
  return p;
}

/// 2^x for x <= 0 (the kernels' shifted logits), lane by lane: 0 below 2^lowest and
/// for −inf, NaN for NaN. Needs IEEE round-to-nearest (no -ffast-math).
template <class T>
scalar_batch<T> exp2_nonpositive(scalar_batch<T> x) {
  return x.value < exp2_constants<T>::lowest ? T(0) : std::exp2(x.value);
}

#if !defined(DIFFATTN_NO_SIMD)
template <class T, class A>
xsimd::batch<T, A> exp2_nonpositive(const xsimd::batch<T, A>& x) {
  using B = xsimd::batch<T, A>;
  using C = exp2_constants<T>;
  using I = xsimd::batch<typename C::bits, A>;
  const B lowest(C::lowest);
  const auto underflow = x < lowest;  // false for NaN, which so flows through
  const B clamped = xsimd::select(underflow, lowest, x);
  // Adding 1.5·2^mantissa rounds to an integer that lands in the low mantissa bits.
  const B shifted = clamped + B(C::round_magic);
  const B n = shifted - B(C::round_magic);
  const B p = exp2_polynomial<B, T>(clamped - n);
  // The low mantissa bits of `shifted` hold 2^(mantissa−1) + n; adding the bias and
  // shifting drops the high part and leaves n + bias in the exponent field: 2^n.
  const I exponent = (xsimd::bitwise_cast<I>(shifted) + I(C::bias)) << C::mantissa_bits;
  return xsimd::select(underflow, B(T(0)), p * xsimd::bitwise_cast<B>(exponent));
}
#endif

}  // namespace detail
}  // namespace diffattn
