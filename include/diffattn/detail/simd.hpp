#pragma once
/// The SIMD vocabulary of the fused kernels: the native batch type for the consumer's
/// compile flags (AVX-512, AVX2, SSE2, NEON through xsimd; a one-lane scalar batch
/// elsewhere or with DIFFATTN_NO_SIMD), and the few operations the kernels need.
/// The kernels are written once against it; per-architecture code lives in simd/:
///   simd/scalar.hpp   the one-lane batch and its operations
///   simd/generic.hpp  the operations on xsimd::batch<T, A>, for any architecture A
///   simd/x86.hpp      x86 forms chosen by architecture tag (add-tree sums, streaming stores)
///   simd/exp2.hpp     2^x on batches
///   simd/avx512_bf16.hpp  the tile products on bf16 pairs with AVX512_BF16; not included
///                     here (it builds on the kernels' blocking), include it where used

#include <algorithm>
#include <cstddef>
#include <cstdint>

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

// GCC 12 deems a function whose only effect is prefetching const and drops its calls (no
// prefetch instruction was left in the binary) unless it is always inlined.
#if defined(__GNUC__)
#define DIFFATTN_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define DIFFATTN_ALWAYS_INLINE inline
#endif

DIFFATTN_SIMD_WARNINGS_PUSH

#include "diffattn/detail/simd/scalar.hpp"
#if !defined(DIFFATTN_NO_SIMD)
#include "diffattn/detail/simd/generic.hpp"
#endif
#include "diffattn/detail/simd/exp2.hpp"

namespace diffattn {
namespace detail {

#if defined(DIFFATTN_NO_SIMD)
template <class T>
using native_batch = scalar_batch<T>;
#else
template <class T>
using native_batch = xsimd::batch<T, xsimd::default_arch>;
#endif

/// A batch of T loaded from `B::size` elements of E: T itself, or bf16/f16 converted to
/// float in registers (load_converted).
template <class B, class E>
DIFFATTN_ALWAYS_INLINE B simd_load(const E* p) {
  B b;
  load_converted(p, b);
  return b;
}

/// Copies n elements from src to dst, with non-temporal stores (stream_store) when dst is
/// aligned to the batch width, else with ordinary ones. stream_fence() orders them.
template <class T>
void stream_copy(const T* src, T* dst, std::ptrdiff_t n) {
  using B = native_batch<T>;
  constexpr std::ptrdiff_t lanes = static_cast<std::ptrdiff_t>(B::size);
  if (lanes > 1 && reinterpret_cast<std::uintptr_t>(dst) % (B::size * sizeof(T)) == 0) {
    std::ptrdiff_t i = 0;
    for (; i + lanes <= n; i += lanes) stream_store(dst + i, B::load_unaligned(src + i));
    std::copy(src + i, src + n, dst + i);
    return;
  }
  std::copy(src, src + n, dst);
}

/// Orders the non-temporal stores before it with the stores after it (x86: sfence).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

/// Asks for the cache line at `address` ahead of a read.
DIFFATTN_ALWAYS_INLINE void prefetch_for_read(const void* address) {
#if defined(__GNUC__)
  __builtin_prefetch(address, 0, 3);
#else
  (void)address;
#endif
}

/// Rounds n up to a multiple of m.
constexpr std::ptrdiff_t round_up(std::ptrdiff_t n, std::ptrdiff_t m) { return (n + m - 1) / m * m; }

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
