#pragma once
/// The SIMD vocabulary of the fused kernels: the native batch type for the consumer's
/// compile flags (AVX-512, AVX2, SSE2, NEON through xsimd; a one-lane scalar batch
/// elsewhere or with DIFFATTN_NO_SIMD), and the few operations the kernels need.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(XSIMD_NO_SUPPORTED_ARCHITECTURE) && !defined(DIFFATTN_NO_SIMD)
#define DIFFATTN_NO_SIMD 1
#endif

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wuninitialized
// reports once inlined into our loops (GCC bug 105593): a false positive, silenced only
// around the SIMD kernels.
#if defined(__GNUC__) && !defined(__clang__)
#define DIFFATTN_SIMD_WARNINGS_PUSH                                \
  _Pragma("GCC diagnostic push")                                   \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")           \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define DIFFATTN_SIMD_WARNINGS_POP _Pragma("GCC diagnostic pop")
#else
#define DIFFATTN_SIMD_WARNINGS_PUSH
#define DIFFATTN_SIMD_WARNINGS_POP
#endif

DIFFATTN_SIMD_WARNINGS_PUSH

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

#if defined(DIFFATTN_NO_SIMD)
template <class T>
using native_batch = scalar_batch<T>;
#else
template <class T>
using native_batch = xsimd::batch<T, xsimd::default_arch>;
#endif

template <class T>
scalar_batch<T> simd_fma(scalar_batch<T> a, scalar_batch<T> b, scalar_batch<T> c) {
  return std::fma(a.value, b.value, c.value);
}
template <class T>
scalar_batch<T> simd_max(scalar_batch<T> a, scalar_batch<T> b) {
  // Keeps a NaN in `b`, like the xsimd overload below.
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

#if !defined(DIFFATTN_NO_SIMD)
template <class T, class A>
xsimd::batch<T, A> simd_ratio_or_zero(const xsimd::batch<T, A>& num, const xsimd::batch<T, A>& den) {
  return xsimd::select(den == xsimd::batch<T, A>(T(0)), xsimd::batch<T, A>(T(0)), num / den);
}
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
#if defined(__AVX512F__)
/// simd_sums for 16 AVX-512 float batches. xsimd 8.1's haddp (Debian's) returns these
/// sums out of order: lanes 2–3 and 10–11 hold rows 4–5 and 12–13 and the other way round
/// (the decoding score kernel wrote wrong scores with it). So the add tree is ours: halves,
/// then quarters, then pairs of lanes are folded, and a final permute puts row i in lane i.
inline __m512 sum_rows_avx512(const __m512* rows) {
  __m512 halves[8], quarters[4], pairs[2];
  for (int i = 0; i < 8; ++i) {  // lanes 0–7: row 2i folded to 8 partial sums; 8–15: row 2i + 1
    const __m512 a = rows[2 * i], b = rows[2 * i + 1];
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lane k: row 4i + k folded to 4 partial sums
    const __m512 a = halves[2 * i], b = halves[2 * i + 1];
    quarters[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int i = 0; i < 2; ++i) {  // 128-bit lane k: rows 8i + k and 8i + 4 + k, 2 partial sums each
    const __m512 a = quarters[2 * i], b = quarters[2 * i + 1];
    pairs[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Lane 4k + j: the sum of row 4j + k.
  const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i row_lane = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(row_lane, sums);
}
#endif

/// Lane i of the result is the sum of rows[i]'s lanes, for `size` batches at once: one
/// transposing add tree (x86 from SSE3 on) rather than a horizontal sum per batch.
template <class T, class A>
xsimd::batch<T, A> simd_sums(const xsimd::batch<T, A>* rows) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && std::is_base_of_v<xsimd::avx512f, A>) {
    __m512 registers[16];
    for (int i = 0; i < 16; ++i) registers[i] = rows[i];
    return sum_rows_avx512(registers);
  }
#endif
  // xsimd's x86 arch tags form three families (sse…, avx/avx2, avx512…), each with haddp.
  if constexpr (std::is_base_of_v<xsimd::sse3, A> || std::is_base_of_v<xsimd::avx, A> ||
                std::is_base_of_v<xsimd::avx512f, A>) {
    return xsimd::haddp(rows);
  } else {
    alignas(64) T sums[xsimd::batch<T, A>::size];
    for (std::size_t i = 0; i < xsimd::batch<T, A>::size; ++i) sums[i] = xsimd::hadd(rows[i]);
    return xsimd::batch<T, A>::load_aligned(sums);
  }
}
template <class T, class A>
xsimd::batch<T, A> simd_hide_from(const xsimd::batch<T, A>& key, const xsimd::batch<T, A>& limit,
                                  const xsimd::batch<T, A>& scores) {
  return xsimd::select(key < limit, scores, xsimd::batch<T, A>(-std::numeric_limits<T>::infinity()));
}
template <class T, class A>
T simd_hmax(const xsimd::batch<T, A>& a) {
  alignas(64) T lanes[xsimd::batch<T, A>::size];
  a.store_unaligned(lanes);
  T best = lanes[0];
  for (std::size_t i = 1; i < xsimd::batch<T, A>::size; ++i) best = lanes[i] > best ? lanes[i] : best;
  return best;
}
#endif

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

#if !defined(DIFFATTN_NO_SIMD)
/// A non-temporal store of `b` to `dst`, aligned to the batch width: on x86 the line goes
/// to memory without being read first (no read-for-ownership) and without displacing
/// what the caches hold. An ordinary aligned store elsewhere.
template <class T, class A>
void stream_store(T* dst, const xsimd::batch<T, A>& b) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) _mm512_stream_ps(dst, b); else _mm512_stream_pd(dst, b);
    return;
  }
#endif
#if defined(__AVX__)
  if constexpr (std::is_base_of_v<xsimd::avx, A>) {
    if constexpr (std::is_same_v<T, float>) _mm256_stream_ps(dst, b); else _mm256_stream_pd(dst, b);
    return;
  }
#endif
#if defined(__SSE2__)
  if constexpr (std::is_base_of_v<xsimd::sse2, A>) {
    if constexpr (std::is_same_v<T, float>) _mm_stream_ps(dst, b); else _mm_stream_pd(dst, b);
    return;
  }
#endif
  b.store_aligned(dst);
}
#endif

/// Copies n elements from src to dst, with non-temporal stores (stream_store) when dst is
/// aligned to the batch width, else with ordinary ones. stream_fence() orders them.
template <class T>
void stream_copy(const T* src, T* dst, std::ptrdiff_t n) {
#if !defined(DIFFATTN_NO_SIMD)
  using B = native_batch<T>;
  constexpr std::ptrdiff_t lanes = static_cast<std::ptrdiff_t>(B::size);
  if (reinterpret_cast<std::uintptr_t>(dst) % (B::size * sizeof(T)) == 0) {
    std::ptrdiff_t i = 0;
    for (; i + lanes <= n; i += lanes) stream_store(dst + i, B::load_unaligned(src + i));
    std::copy(src + i, src + n, dst + i);
    return;
  }
#endif
  std::copy(src, src + n, dst);
}

/// Orders the non-temporal stores before it with the stores after it (x86: sfence).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

/// Rounds n up to a multiple of m.
constexpr std::ptrdiff_t round_up(std::ptrdiff_t n, std::ptrdiff_t m) { return (n + m - 1) / m * m; }

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
