#pragma once
/// Register-blocked micro-kernels for the two tile products of attention:
/// S = Q·Kᵀ (qk_tile) and O += P·V (pv_accumulate), on packed, padded tiles.
///
/// Both keep an MR × NR block of accumulators in registers and stream the shared
/// dimension through it: per step, NR vector loads and MR broadcasts feed MR·NR
/// independent FMAs. Independent accumulators hide FMA latency (4 cycles × 2 pipes
/// wants >= 8 in flight); MR·NR + NR + 1 must fit the register file (32 vector
/// registers on AVX-512, 16 on AVX2/SSE).
///
/// Each output element accumulates its terms in the order of the shared dimension,
/// whatever the blocking: results do not depend on tile sizes or thread counts.

#include <cstddef>

#include "diffattn/simd.hpp"
#include "diffattn/tensor.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

/// Blocking chosen from the batch width: 512-bit registers come 32 to a file.
template <class T>
struct micro_blocking {
  using batch = native_batch<T>;
  static constexpr index_t lanes = static_cast<index_t>(batch::size);
  static constexpr bool wide_file = lanes * sizeof(T) >= 64;
  /// Q·Kᵀ: rows of Q × vectors of keys.
  static constexpr int qk_rows = wide_file ? 8 : 4;
  static constexpr int qk_vectors = 2;
  /// P·V: rows of P × vectors of the value width.
  static constexpr int pv_rows = 4;
  static constexpr int pv_vectors = wide_file ? 4 : 2;
};

/// S[r][j] = Σ_c Q[r][c]·KT[c][j] for r < MR, j < NR·lanes.
template <class T, int MR, int NR>
inline void qk_block(const T* q, index_t q_stride, const T* kt, index_t kt_stride, index_t depth,
                     T* s, index_t s_stride) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  B acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) acc[r][n] = B(T(0));
  for (index_t c = 0; c < depth; ++c) {
    B keys[NR];
    for (int n = 0; n < NR; ++n) keys[n] = B::load_unaligned(kt + c * kt_stride + n * lanes);
    for (int r = 0; r < MR; ++r) {
      const B query(q[r * q_stride + c]);
      for (int n = 0; n < NR; ++n) acc[r][n] = simd_fma(query, keys[n], acc[r][n]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) acc[r][n].store_unaligned(s + r * s_stride + n * lanes);
}

/// S = Q·KT for a whole tile. q [rows, depth] (rows a multiple of qk_rows),
/// kt [depth, cols] (cols a multiple of the batch width), s [rows, cols].
template <class T>
void qk_tile(const T* q, index_t q_stride, index_t rows, const T* kt, index_t kt_stride,
             index_t cols, index_t depth, T* s, index_t s_stride) {
  using blocking = micro_blocking<T>;
  constexpr int MR = blocking::qk_rows, NR = blocking::qk_vectors;
  constexpr index_t lanes = blocking::lanes;
  for (index_t r = 0; r < rows; r += MR) {
    index_t j = 0;
    for (; j + NR * lanes <= cols; j += NR * lanes) {
      qk_block<T, MR, NR>(q + r * q_stride, q_stride, kt + j, kt_stride, depth,
                          s + r * s_stride + j, s_stride);
    }
    for (; j < cols; j += lanes) {  // column tail: one vector at a time
      qk_block<T, MR, 1>(q + r * q_stride, q_stride, kt + j, kt_stride, depth,
                         s + r * s_stride + j, s_stride);
    }
  }
}

/// O[r][d] += Σ_j P[r][j]·V[j][d] for r < MR, d < NV·lanes, j < keys.
template <class T, int MR, int NV>
inline void pv_block(const T* p, index_t p_stride, const T* v, index_t v_stride, index_t keys,
                     T* o, index_t o_stride) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  B acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NV; ++n) acc[r][n] = B::load_unaligned(o + r * o_stride + n * lanes);
  for (index_t j = 0; j < keys; ++j) {
    B values[NV];
    for (int n = 0; n < NV; ++n) values[n] = B::load_unaligned(v + j * v_stride + n * lanes);
    for (int r = 0; r < MR; ++r) {
      const B weight(p[r * p_stride + j]);
      for (int n = 0; n < NV; ++n) acc[r][n] = simd_fma(weight, values[n], acc[r][n]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NV; ++n) acc[r][n].store_unaligned(o + r * o_stride + n * lanes);
}

/// O += P·V for a whole tile. p [rows, keys] (rows a multiple of pv_rows),
/// v [keys, width] (width a multiple of the batch width), o [rows, width].
template <class T>
void pv_accumulate(const T* p, index_t p_stride, index_t rows, index_t keys, const T* v,
                   index_t v_stride, index_t width, T* o, index_t o_stride) {
  using blocking = micro_blocking<T>;
  constexpr int MR = blocking::pv_rows, NV = blocking::pv_vectors;
  constexpr index_t lanes = blocking::lanes;
  for (index_t r = 0; r < rows; r += MR) {
    index_t d = 0;
    for (; d + NV * lanes <= width; d += NV * lanes) {
      pv_block<T, MR, NV>(p + r * p_stride, p_stride, v + d, v_stride, keys,
                          o + r * o_stride + d, o_stride);
    }
    for (; d < width; d += lanes) {
      pv_block<T, MR, 1>(p + r * p_stride, p_stride, v + d, v_stride, keys, o + r * o_stride + d,
                         o_stride);
    }
  }
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
