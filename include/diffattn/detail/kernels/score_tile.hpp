#pragma once
/// The score micro-kernels, Q·Kᵀ for one tile:
///   score_tile:      Sᵀ = K·Qᵀ, query rows along the SIMD lanes (Qᵀ packed once per
///                    query tile, K rows read in place, one broadcast per element)
///   score_tile_dot:  dot products along D, for tiles with fewer rows than lanes (decoding)
/// Each score sums its depth in order, whatever the blocking: results do not depend on
/// tile sizes or thread counts.

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "diffattn/detail/kernels/blocking.hpp"
#include "diffattn/detail/simd.hpp"
#include "diffattn/half.hpp"
#include "diffattn/tensor.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

/// st[m][r] (+)= Σ_c k[m][c]·qt[c][r] for m < MR keys and r < NR·lanes rows.
template <class T, int MR, int NR, bool Accumulate>
inline void score_block(const T* k, index_t k_stride, const T* qt, index_t qt_stride,
                        index_t depth, T* st, index_t st_stride) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  B acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      acc[m][n] = Accumulate ? B::load_unaligned(st + m * st_stride + n * lanes) : B(T(0));
  for (index_t c = 0; c < depth; ++c) {
    B rows[NR];
    for (int n = 0; n < NR; ++n) {
      rows[n] = B::load_unaligned(qt + c * qt_stride + n * lanes);
      keep_in_register(rows[n]);
    }
    for (int m = 0; m < MR; ++m) {
      const B key(k[m * k_stride + c]);
      for (int n = 0; n < NR; ++n) acc[m][n] = simd_fma(key, rows[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n].store_unaligned(st + m * st_stride + n * lanes);
}

template <class T, int NR, bool Accumulate>
inline void score_rows(const T* k, index_t k_stride, index_t keys, const T* qt,
                       index_t qt_stride, index_t depth, T* st, index_t st_stride) {
  constexpr int MR = micro_blocking<T>::score_keys_for(NR);
  index_t j = 0;
  for (; j + MR <= keys; j += MR) {
    score_block<T, MR, NR, Accumulate>(k + j * k_stride, k_stride, qt, qt_stride, depth,
                                       st + j * st_stride, st_stride);
  }
  if constexpr (MR > 6) {
    for (; j + 6 <= keys; j += 6) {
      score_block<T, 6, NR, Accumulate>(k + j * k_stride, k_stride, qt, qt_stride, depth,
                                        st + j * st_stride, st_stride);
    }
  }
  // Key tail in one block: a 64-key tile ends in 4 keys with MR = 6, and one key at a
  // time (NR chains of FMAs) cost ~10% of the score time.
  const T* k_tail = k + j * k_stride;
  T* st_tail = st + j * st_stride;
  switch (keys - j) {
    case 0: break;
    case 1: score_block<T, 1, NR, Accumulate>(k_tail, k_stride, qt, qt_stride, depth, st_tail, st_stride); break;
    case 2: score_block<T, 2, NR, Accumulate>(k_tail, k_stride, qt, qt_stride, depth, st_tail, st_stride); break;
    case 3: score_block<T, 3, NR, Accumulate>(k_tail, k_stride, qt, qt_stride, depth, st_tail, st_stride); break;
    case 4: score_block<T, 4, NR, Accumulate>(k_tail, k_stride, qt, qt_stride, depth, st_tail, st_stride); break;
    case 5: score_block<T, 5, NR, Accumulate>(k_tail, k_stride, qt, qt_stride, depth, st_tail, st_stride); break;
    default: break;  // unreachable: fewer than 6 keys remain
  }
}

template <class T, bool Accumulate>
void score_panel(const T* k, index_t k_stride, index_t keys, const T* qt, index_t qt_stride,
                 index_t rows, index_t depth, T* st, index_t st_stride) {
  constexpr int NR = micro_blocking<T>::score_vectors;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  index_t r = 0;
  for (; r + NR * lanes <= rows; r += NR * lanes) {
    score_rows<T, NR, Accumulate>(k, k_stride, keys, qt + r, qt_stride, depth, st + r, st_stride);
  }
  if constexpr (NR > 2) {
    for (; r + 2 * lanes <= rows; r += 2 * lanes) {
      score_rows<T, 2, Accumulate>(k, k_stride, keys, qt + r, qt_stride, depth, st + r, st_stride);
    }
  }
  for (; r < rows; r += lanes) {
    score_rows<T, 1, Accumulate>(k, k_stride, keys, qt + r, qt_stride, depth, st + r, st_stride);
  }
}


/// Sᵀ [keys, rows] = K [keys, depth] · Qᵀ [depth, rows]; rows a multiple of the batch
/// width. K rows are `k_stride` apart and read in place.
///
/// The depth goes in panels of score_panel_bytes per K row, so that a panel of the K tile
/// (64 keys × 256 B = 16 KB) stays in L1 while every row block streams it; at D = 128
/// a whole tile fills a 32 KB L1. Each score then sums its depth panels in order, the same order as one pass.
template <class T>
void score_tile(const T* k, index_t k_stride, index_t keys, const T* qt, index_t qt_stride,
                index_t rows, index_t depth, T* st, index_t st_stride) {
  constexpr index_t panel = score_panel_bytes / sizeof(T);
  score_panel<T, false>(k, k_stride, keys, qt, qt_stride, rows, std::min(depth, panel), st, st_stride);
  for (index_t c = panel; c < depth; c += panel) {
    score_panel<T, true>(k + c, k_stride, keys, qt + c * qt_stride, qt_stride, rows,
                         std::min(panel, depth - c), st, st_stride);
  }
}

/// Score (key m, row r) at st[m·key_stride + r·row_stride] = Σ_c k[m][c]·q[r][c] for MR
/// keys and R query rows, SIMD along c. For decoding tiles, which have fewer query rows
/// than a batch has lanes: the transposed kernel would compute mostly padding. q is packed
/// row-major [R, depth]; the depth tail (depth % lanes) runs scalar. One horizontal add
/// per (key, row) ends each dot product.
template <class T, class E, int MR, int R>
inline void score_block_dot(const E* k, index_t k_stride, const T* q, index_t depth, T* st,
                            index_t key_stride, index_t row_stride) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  constexpr int count = MR * R, width = static_cast<int>(lanes);
  constexpr int trees = (count + width - 1) / width;
  // The add trees' inputs: each key's R accumulators, stored once the key is done.
  B group[trees * width];
  for (int i = count; i < trees * width; ++i) group[i] = B(T(0));
  const index_t whole = depth / lanes * lanes;
  // Key-major: one K row after another, in address order, the query vectors re-read from
  // L1. Decoding reads K from memory here, and walking MR rows side by side (MR streams)
  // was slower on every machine measured (docs/tuning.md, "score_block_dot: key-major").
  //
  // Only the current key's R accumulators are live, so they stay in registers: GCC 12
  // kept an MR × R array indexed by a run-time key loop on the stack, a store-to-load
  // chain per FMA.
  for (int m = 0; m < MR; ++m) {
    B acc[R];
    for (int r = 0; r < R; ++r) acc[r] = B(T(0));
    const E* key_row = k + m * k_stride;
    for (index_t c = 0; c < whole; c += lanes) {
      B key = simd_load<B>(key_row + c);
      keep_in_register(key);
      for (int r = 0; r < R; ++r) acc[r] = simd_fma(key, B::load_unaligned(q + r * depth + c), acc[r]);
    }
    for (int r = 0; r < R; ++r) group[m * R + r] = acc[r];
  }
  // Horizontal sums, `lanes` accumulators per add tree; then the depth tail, if any.
  for (int tree = 0; tree < trees; ++tree) {
    alignas(64) T sums[lanes];
    simd_sums(group + tree * width).store_unaligned(sums);
    for (int i = 0; i < width && tree * width + i < count; ++i) {
      const int m = (tree * width + i) / R, r = (tree * width + i) % R;
      st[m * key_stride + r * row_stride] = sums[i];
    }
  }
  if (whole == depth) return;
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < R; ++r) {
      T& score = st[m * key_stride + r * row_stride];
      T sum = score;
      for (index_t c = whole; c < depth; ++c) {
        sum = std::fma(convert_element<T>(k[m * k_stride + c]), q[r * depth + c], sum);
      }
      score = sum;
    }
  }
}

template <class T, class E, int R>
void score_rows_dot(const E* k, index_t k_stride, index_t keys, const T* q, index_t depth, T* st,
                    index_t key_stride, index_t row_stride) {
  // MR·R accumulators next to a key vector in the register file, as many as one add tree
  // of simd_sums takes: 16 (15 for R = 3) of AVX-512's 32 registers; 8 or 9 of AVX2's 16
  // (two add trees for R = 3). A full add tree costs a quarter of four part-used ones, and
  // was no slower (docs/tuning.md, "score_rows_dot keys per block").
  constexpr int MR = micro_blocking<T>::wide_file ? (R == 1 ? 16 : R == 2 ? 8 : R == 3 ? 5 : 4)
                                                  : (R == 1 ? 8 : R == 2 ? 4 : R == 3 ? 3 : 2);
  index_t j = 0;
  for (; j + MR <= keys; j += MR) {
    score_block_dot<T, E, MR, R>(k + j * k_stride, k_stride, q, depth, st + j * key_stride, key_stride, row_stride);
  }
  for (; j < keys; ++j) {
    score_block_dot<T, E, 1, R>(k + j * k_stride, k_stride, q, depth, st + j * key_stride, key_stride, row_stride);
  }
}

/// Scores of K [keys, depth] against Q [rows, depth] (packed row-major), 4 query rows at
/// a time: score (key j, row r) at st[j·key_stride + r·row_stride], so the same kernel
/// writes Sᵀ (key_stride = the row count) or S (row_stride = the keys per row). K rows
/// hold T, or (T = float) bf16 or f16, converted as they load.
template <class T, class E>
void score_tile_dot(const E* k, index_t k_stride, index_t keys, const T* q, index_t rows,
                    index_t depth, T* st, index_t key_stride, index_t row_stride) {
  for (index_t r = 0; r < rows; r += 4) {
    const T* q_rows = q + r * depth;
    T* st_rows = st + r * row_stride;
    switch (std::min<index_t>(rows - r, 4)) {
      case 4: score_rows_dot<T, E, 4>(k, k_stride, keys, q_rows, depth, st_rows, key_stride, row_stride); break;
      case 3: score_rows_dot<T, E, 3>(k, k_stride, keys, q_rows, depth, st_rows, key_stride, row_stride); break;
      case 2: score_rows_dot<T, E, 2>(k, k_stride, keys, q_rows, depth, st_rows, key_stride, row_stride); break;
      default: score_rows_dot<T, E, 1>(k, k_stride, keys, q_rows, depth, st_rows, key_stride, row_stride); break;
    }
  }
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
