#pragma once
/// The x86 forms of the SIMD vocabulary, chosen by xsimd's architecture tags (SSE2/SSE3,
/// AVX/AVX2, AVX-512 form three families of tags) over the generic forms in generic.hpp.
/// Half-precision rows convert to float here as they load: bf16 is the high half of a
/// float (a 16-bit shift), f16 takes F16C's or AVX-512's conversion. Kernels of an
/// instruction-set extension get a file of their own (avx512_bf16.hpp).

#include <type_traits>

#include <Eigen/Core>
#include <xsimd/xsimd.hpp>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace diffattn {
namespace detail {
namespace simd_kernel {

#if defined(__x86_64__) || defined(__i386__)

#if defined(__AVX512F__)
/// The row sums of 16 AVX-512 float batches. xsimd 8.1's haddp (Debian's) returns these
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

template <class A>
xsimd::batch<float, A> sums(const xsimd::batch<float, A>* rows, xsimd::kernel::requires_arch<xsimd::avx512f>) {
  __m512 registers[16];
  for (int i = 0; i < 16; ++i) registers[i] = rows[i];
  return sum_rows_avx512(registers);
}
#endif

// One transposing add tree (haddp) rather than a horizontal sum per batch, from SSE3 on.
template <class T, class A>
xsimd::batch<T, A> sums(const xsimd::batch<T, A>* rows, xsimd::kernel::requires_arch<xsimd::sse3>) {
  return xsimd::haddp(rows);
}
template <class T, class A>
xsimd::batch<T, A> sums(const xsimd::batch<T, A>* rows, xsimd::kernel::requires_arch<xsimd::avx>) {
  return xsimd::haddp(rows);
}
template <class T, class A>
xsimd::batch<T, A> sums(const xsimd::batch<T, A>* rows, xsimd::kernel::requires_arch<xsimd::avx512f>) {
  return xsimd::haddp(rows);
}

#if defined(__AVX512F__)
template <class T, class A>
void stream_store(T* dst, const xsimd::batch<T, A>& b, xsimd::kernel::requires_arch<xsimd::avx512f>) {
  if constexpr (std::is_same_v<T, float>) _mm512_stream_ps(dst, b); else _mm512_stream_pd(dst, b);
}
#endif
#if defined(__AVX__)
template <class T, class A>
void stream_store(T* dst, const xsimd::batch<T, A>& b, xsimd::kernel::requires_arch<xsimd::avx>) {
  if constexpr (std::is_same_v<T, float>) _mm256_stream_ps(dst, b); else _mm256_stream_pd(dst, b);
}
#endif
#if defined(__SSE2__)
template <class T, class A>
void stream_store(T* dst, const xsimd::batch<T, A>& b, xsimd::kernel::requires_arch<xsimd::sse2>) {
  if constexpr (std::is_same_v<T, float>) _mm_stream_ps(dst, b); else _mm_stream_pd(dst, b);
}
#endif

#if defined(__GNUC__)
// An empty asm that claims to modify the register ("+x": an SSE/AVX register) makes the
// compiler load the batch once and keep it there.
template <class T, class A>
void keep_in_register(xsimd::batch<T, A>& b, xsimd::kernel::requires_arch<xsimd::sse2>) {
  asm volatile("" : "+x"(b.data));
}
template <class T, class A>
void keep_in_register(xsimd::batch<T, A>& b, xsimd::kernel::requires_arch<xsimd::avx>) {
  asm volatile("" : "+x"(b.data));
}
template <class T, class A>
void keep_in_register(xsimd::batch<T, A>& b, xsimd::kernel::requires_arch<xsimd::avx512f>) {
  asm volatile("" : "+x"(b.data));
}
#endif

// bf16 → float: zero-extend each 16-bit pattern to 32 bits and shift it to the top.
#if defined(__AVX512F__)
template <class A>
void load_converted(const Eigen::bfloat16* p, xsimd::batch<float, A>& out,
                    xsimd::kernel::requires_arch<xsimd::avx512f>) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  out = _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
template <class A>
void load_converted(const Eigen::half* p, xsimd::batch<float, A>& out, xsimd::kernel::requires_arch<xsimd::avx512f>) {
  out = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif
#if defined(__AVX2__)
template <class A>
void load_converted(const Eigen::bfloat16* p, xsimd::batch<float, A>& out, xsimd::kernel::requires_arch<xsimd::avx2>) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  out = _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
#endif
#if defined(__F16C__)
template <class A>
void load_converted(const Eigen::half* p, xsimd::batch<float, A>& out, xsimd::kernel::requires_arch<xsimd::avx>) {
  out = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#endif

#endif  // x86

}  // namespace simd_kernel

}  // namespace detail
}  // namespace diffattn
