#pragma once
/// Register-blocked micro-kernels for the two tile products of attention, on scores
/// stored transposed (one row per key, one column per query row):
///   score_tile:     Sᵀ = K·Qᵀ    (Qᵀ packed once per query tile, K read in place)
///   value_tile:     O = O·keep + Pᵀᵀ·V·add   (Pᵀ as scores, V read in place)
///
/// Keeping query rows along the SIMD lanes means K and V never need packing or
/// transposing (their rows are read where they are, one broadcast per element), and the
/// softmax's per-row max and sum become vertical, lane-wise operations.
///
/// Each kernel keeps an MR × NR block of accumulators in registers and streams the shared
/// dimension through it: per step, NR vector loads and MR broadcasts feed MR·NR
/// independent FMAs. Two FMA pipes with 4-cycle latency want >= 8 FMAs in flight, and
/// MR·NR + NR + 1 must fit the register file (32 vector registers with AVX-512, 16 with
/// AVX2/SSE). With AVX2 the value block is 6 rows × 2 vectors (12 chains; 4 × 2 left
/// just the 8 the pipes need); the score block stays 4 keys × 2 vectors, as fast as 6 × 2
/// on Zen 3 (86 vs 87 GFLOP/s, 64-key tiles, D = 64). With AVX-512 the value block is
/// 6 rows × 4 vectors (was 4 × 4): 10 loads per 24 FMAs rather than 8 per 16. On a 2-core
/// Xeon VM (two 512-bit FMA pipes) a 64 × 64 × 64 tile went from 154–157 to 164–165
/// GFLOP/s, and whole calls took ×0.964–0.980 the time (one thread, N = 512–8192, d 64
/// and 128, standard and differential, causal and not; in-process A/B, both orders).
/// Not measured on the Zen 4.
///
/// Both kernels walk the long dimension (D for scores, the value width for P·V) in
/// panels of 256 bytes per K or V row, so the 16 KB panel of the tile that every row
/// block re-reads stays in L1. On a Zen 3 core (AVX2, 32 KB L1, 100 GFLOP/s peak),
/// medians of 40 interleaved runs in one process, before → after: Sᵀ at D = 128
/// 65 → 72 GFLOP/s and at D = 256 65 → 81; P·V at width 128 65 → 78 and 256 63 → 75.
///
/// Each output element accumulates its terms in the order of the shared dimension,
/// whatever the blocking: results do not depend on tile sizes or thread counts.
///
/// Why not Eigen's GEMM on the tiles: bench/bench_tiles.cpp runs both on the fused
/// kernels' tile shapes (64 keys × 64 rows, D = 64..256); on AVX-512 these kernels did
/// Sᵀ at 190–198 GFLOP/s vs Eigen's 130–136, and P·V at 146–206 vs 115–139.

#include <algorithm>
#include <cmath>
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
  /// Sᵀ = K·Qᵀ: keys per block × vectors of query rows.
  static constexpr int score_keys = wide_file ? 6 : 4;
  static constexpr int score_vectors = wide_file ? 4 : 2;
  /// Keys per block when a row block has only `vectors` vectors (tiles of fewer rows):
  /// as many as the register file holds, so each loaded Qᵀ vector still feeds >= 12 FMAs.
  static constexpr int score_keys_for(int vectors) {
    return vectors >= score_vectors ? score_keys : wide_file && vectors == 2 ? 12 : score_keys;
  }
  /// O += P·V: query rows per block × vectors of the value width.
  static constexpr int value_rows = 6;
  static constexpr int value_vectors = wide_file ? 4 : 2;
  /// Query rows in a tile come in multiples of this: whole batches for score_tile, and at
  /// least 4 so that narrow batches still fill a value block.
  static constexpr index_t row_align = lanes > 4 ? lanes : 4;
};

/// Bytes of each V row that value_tile streams through all row blocks at a time.
inline constexpr std::size_t value_panel_bytes = 256;

/// Keeps a loaded batch in a register. Without it GCC folds the load into each FMA that
/// uses it (MR loads instead of one), which makes the kernels load-bound: measured
/// 154 → 205 GFLOP/s for the 4×4 value block of the time on AVX-512.
template <class B>
inline void keep_in_register(B& batch) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(DIFFATTN_NO_SIMD)
  asm volatile("" : "+x"(batch.data));
#else
  (void)batch;
#endif
}

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

/// Bytes of each K row that score_tile streams through all row blocks at a time.
inline constexpr std::size_t score_panel_bytes = 256;

/// Sᵀ [keys, rows] = K [keys, depth] · Qᵀ [depth, rows]; rows a multiple of the batch
/// width. K rows are `k_stride` apart and read in place.
///
/// The depth goes in panels of score_panel_bytes per K row, so that a panel of the K tile
/// (64 keys × 256 B = 16 KB) stays in L1 while every row block streams it: at D = 128
/// the whole tile is as large as Zen 3's L1 and was re-read from L2 for each row block.
/// Each score then sums its depth panels in order, the same order as one pass.
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
template <class T, int MR, int R>
inline void score_block_dot(const T* k, index_t k_stride, const T* q, index_t depth, T* st,
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
  // was slower on both machines measured: at Nk = 32768, d = 128, Hkv 8, 22.1 vs
  // 17.0 GB/s on 2 threads of a Zen 3 (AVX2; medians of 40 interleaved runs), and on a
  // Zen 4 (AVX-512; medians of 20) 27.1 vs 18.1 on 2 threads and 21.3 vs 13.0 on one
  // (16-key blocks against the 4-key depth-major blocks it had). Same sums in the same
  // order.
  //
  // Only the current key's R accumulators are live, so they stay in registers. One
  // MR × R array indexed by a run-time key loop was kept on the stack by GCC 12: every
  // FMA loaded and stored its accumulator, a store-to-load chain per step that ran
  // 4 query rows per kv head at 11-13 GB/s on one Zen 4 core with K/V in cache.
  for (int m = 0; m < MR; ++m) {
    B acc[R];
    for (int r = 0; r < R; ++r) acc[r] = B(T(0));
    const T* key_row = k + m * k_stride;
    for (index_t c = 0; c < whole; c += lanes) {
      B key = B::load_unaligned(key_row + c);
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
      for (index_t c = whole; c < depth; ++c) sum = std::fma(k[m * k_stride + c], q[r * depth + c], sum);
      score = sum;
    }
  }
}

template <class T, int R>
void score_rows_dot(const T* k, index_t k_stride, index_t keys, const T* q, index_t depth, T* st,
                    index_t key_stride, index_t row_stride) {
  // MR·R accumulators next to a key vector in the register file, as many as one add tree
  // of simd_sums takes: 16 (15 for R = 3) of AVX-512's 32 registers; 8 or 9 of AVX2's 16
  // (two add trees for R = 3). On the Zen 4, 16 keys × 1 row against 4 × 1 measured
  // 20.8 vs 19.6 GB/s on one thread and 29.7 vs 30.7 on two (Nk = 32768, d = 128, Hkv 8):
  // a wash, and a full add tree costs a quarter of four part-used ones.
  constexpr int MR = micro_blocking<T>::wide_file ? (R == 1 ? 16 : R == 2 ? 8 : R == 3 ? 5 : 4)
                                                  : (R == 1 ? 8 : R == 2 ? 4 : R == 3 ? 3 : 2);
  index_t j = 0;
  for (; j + MR <= keys; j += MR) {
    score_block_dot<T, MR, R>(k + j * k_stride, k_stride, q, depth, st + j * key_stride, key_stride, row_stride);
  }
  for (; j < keys; ++j) {
    score_block_dot<T, 1, R>(k + j * k_stride, k_stride, q, depth, st + j * key_stride, key_stride, row_stride);
  }
}

/// Scores of K [keys, depth] against Q [rows, depth] (packed row-major), 4 query rows at
/// a time: score (key j, row r) at st[j·key_stride + r·row_stride], so the same kernel
/// writes Sᵀ (key_stride = the row count) or S (row_stride = the keys per row).
template <class T>
void score_tile_dot(const T* k, index_t k_stride, index_t keys, const T* q, index_t rows,
                    index_t depth, T* st, index_t key_stride, index_t row_stride) {
  for (index_t r = 0; r < rows; r += 4) {
    const T* q_rows = q + r * depth;
    T* st_rows = st + r * row_stride;
    switch (std::min<index_t>(rows - r, 4)) {
      case 4: score_rows_dot<T, 4>(k, k_stride, keys, q_rows, depth, st_rows, key_stride, row_stride); break;
      case 3: score_rows_dot<T, 3>(k, k_stride, keys, q_rows, depth, st_rows, key_stride, row_stride); break;
      case 2: score_rows_dot<T, 2>(k, k_stride, keys, q_rows, depth, st_rows, key_stride, row_stride); break;
      default: score_rows_dot<T, 1>(k, k_stride, keys, q_rows, depth, st_rows, key_stride, row_stride); break;
    }
  }
}

/// How a P·V product over a chunk of keys lands in O, row by row:
/// o[r] = o[r]·keep[r] + (Σ_j p(j, r)·v[j])·add[r], the sum taken afresh for the chunk.
/// A null keep or add stands for 1 (plain o += P·V).
///
/// Starting each chunk's sum from zero, rather than from o, keeps the rounding error of a
/// row's output from growing with the number of keys: a chunk of at most value_chunk_keys
/// terms, then one addition per chunk. Summing every key into o erred by up to
/// 3.8e-5·max|V| in float at Nk = 4095 (uniform weights over identical V rows).
template <class T>
struct RowScales {
  const T* keep = nullptr;
  const T* add = nullptr;
  RowScales from_row(index_t r) const { return {keep ? keep + r : nullptr, add ? add + r : nullptr}; }
  T keep_at(index_t r) const { return keep ? keep[r] : T(1); }
  T add_at(index_t r) const { return add ? add[r] : T(1); }
};

/// Keys summed into one fresh accumulator before it is added to o (see RowScales).
inline constexpr index_t value_chunk_keys = 64;

/// o[m][d] = o[m][d]·keep[m] + (Σ_j p(j, m)·v[j][d])·add[m] for m < MR rows and
/// d < NV·lanes, with the weight of key j for row m at pt[j·pt_stride + m·pt_row_stride].
template <class T, int MR, int NV>
inline void value_block(const T* pt, index_t pt_stride, index_t pt_row_stride, const T* v,
                        index_t v_stride, index_t keys, T* o, index_t o_stride, RowScales<T> scales) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  B acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NV; ++n) acc[m][n] = B(T(0));
  for (index_t j = 0; j < keys; ++j) {
    B values[NV];
    for (int n = 0; n < NV; ++n) {
      values[n] = B::load_unaligned(v + j * v_stride + n * lanes);
      keep_in_register(values[n]);
    }
    for (int m = 0; m < MR; ++m) {
      const B weight(pt[j * pt_stride + m * pt_row_stride]);
      for (int n = 0; n < NV; ++n) acc[m][n] = simd_fma(weight, values[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    const B keep(scales.keep_at(m)), add(scales.add_at(m));
    for (int n = 0; n < NV; ++n) {
      T* out = o + m * o_stride + n * lanes;
      const B old = B::load_unaligned(out);
      simd_fma(acc[m][n], add, scales.keep ? old * keep : old).store_unaligned(out);
    }
  }
}

/// value_block over the whole width for MR rows: blocks of NV vectors, then single ones.
template <class T, int MR, int NV>
inline void value_row_block(const T* pt, index_t pt_stride, index_t pt_row_stride, const T* v,
                            index_t v_stride, index_t keys, index_t width, T* o, index_t o_stride,
                            RowScales<T> scales) {
  constexpr index_t lanes = micro_blocking<T>::lanes;
  index_t d = 0;
  for (; d + NV * lanes <= width; d += NV * lanes) {
    value_block<T, MR, NV>(pt, pt_stride, pt_row_stride, v + d, v_stride, keys, o + d, o_stride, scales);
  }
  if constexpr (NV > micro_blocking<T>::value_vectors) {  // a lone row: keep 4+ chains
    for (; d + micro_blocking<T>::value_vectors * lanes <= width; d += micro_blocking<T>::value_vectors * lanes) {
      value_block<T, MR, micro_blocking<T>::value_vectors>(pt, pt_stride, pt_row_stride, v + d, v_stride, keys,
                                                           o + d, o_stride, scales);
    }
  }
  for (; d < width; d += lanes) {
    value_block<T, MR, 1>(pt, pt_stride, pt_row_stride, v + d, v_stride, keys, o + d, o_stride, scales);
  }
}

/// Bytes of each V row that value_rows_by_key sums per pass: whole rows up to 256 floats.
inline constexpr std::size_t value_by_key_panel_bytes = 1024;

/// The value_block product for R rows, one key at a time across a panel of the width, the
/// sums in L1 rather than registers: each V row is read once, whole (up to
/// value_by_key_panel_bytes) and in address order. For register files of 16 (AVX2, SSE);
/// see value_tile.
template <class T, int R>
void value_rows_by_key(const T* pt, index_t pt_stride, index_t pt_row_stride, const T* v,
                       index_t v_stride, index_t keys, index_t width, T* o, index_t o_stride,
                       RowScales<T> scales) {
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  constexpr index_t panel = value_by_key_panel_bytes / sizeof(T);
  static_assert(panel % lanes == 0, "panels hold whole batches");
  alignas(64) T sums[R][panel];
  for (index_t d0 = 0; d0 < width; d0 += panel) {
    const index_t span = std::min(panel, width - d0);
    for (int r = 0; r < R; ++r) std::fill(sums[r], sums[r] + span, T(0));
    for (index_t j = 0; j < keys; ++j) {
      B weights[R];
      for (int r = 0; r < R; ++r) weights[r] = B(pt[j * pt_stride + r * pt_row_stride]);
      const T* row = v + j * v_stride + d0;
      for (index_t d = 0; d < span; d += lanes) {
        B values = B::load_unaligned(row + d);
        keep_in_register(values);
        for (int r = 0; r < R; ++r) {
          simd_fma(weights[r], values, B::load_unaligned(sums[r] + d)).store_unaligned(sums[r] + d);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const B keep(scales.keep_at(r)), add(scales.add_at(r));
      T* out = o + r * o_stride + d0;
      for (index_t d = 0; d < span; d += lanes) {
        simd_fma(B::load_unaligned(sums[r] + d), add, B::load_unaligned(out + d) * keep).store_unaligned(out + d);
      }
    }
  }
}

/// Tiles of at most this many rows (decoding: a few query rows against a long cache)
/// take value_few_rows.
inline constexpr index_t value_few_rows_max = 4;

/// value_tile for tiles of at most value_few_rows_max rows (decoding). With 32 registers,
/// two rows at a time keep 16 accumulators and a 512-byte run of each V row in registers
/// (value_row_block with 8 vectors), and each pair re-reads the V tile; with 16 registers,
/// value_rows_by_key.
template <class T>
void value_few_rows(const T* pt, index_t pt_stride, index_t pt_row_stride, index_t rows, index_t keys,
                    const T* v, index_t v_stride, index_t width, T* o, index_t o_stride, RowScales<T> scales) {
  if constexpr (micro_blocking<T>::wide_file) {
    for (index_t r = 0; r < rows; r += 2) {
      const T* p_rows = pt + r * pt_row_stride;
      T* o_rows = o + r * o_stride;
      if (rows - r >= 2) {
        value_row_block<T, 2, 8>(p_rows, pt_stride, pt_row_stride, v, v_stride, keys, width, o_rows, o_stride,
                                 scales.from_row(r));
      } else {
        value_row_block<T, 1, 8>(p_rows, pt_stride, pt_row_stride, v, v_stride, keys, width, o_rows, o_stride,
                                 scales.from_row(r));
      }
    }
  } else {
    switch (rows) {
      case 1: value_rows_by_key<T, 1>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales); return;
      case 2: value_rows_by_key<T, 2>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales); return;
      case 3: value_rows_by_key<T, 3>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales); return;
      default:
        static_assert(value_few_rows_max == 4);
        value_rows_by_key<T, 4>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales);
        return;
    }
  }
}

/// value_tile for one chunk of at most value_chunk_keys keys.
template <class T>
void value_chunk(const T* pt, index_t pt_stride, index_t pt_row_stride, index_t rows, index_t keys,
                 const T* v, index_t v_stride, index_t width, T* o, index_t o_stride, RowScales<T> scales) {
  if (rows <= value_few_rows_max) {
    value_few_rows(pt, pt_stride, pt_row_stride, rows, keys, v, v_stride, width, o, o_stride, scales);
    return;
  }
  constexpr index_t panel = value_panel_bytes / sizeof(T);
  if (width > panel) {
    for (index_t d = 0; d < width; d += panel) {
      value_chunk(pt, pt_stride, pt_row_stride, rows, keys, v + d, v_stride, std::min(panel, width - d), o + d,
                  o_stride, scales);
    }
    return;
  }
  using blocking = micro_blocking<T>;
  constexpr int MR = blocking::value_rows, NV = blocking::value_vectors;
  static_assert(MR == 6, "the split below assumes 6-row blocks");
  // 6-row blocks, then 4-row ones, then lone rows, which feed fewer FMAs per broadcast.
  // As 6 ≡ 2 (mod 4), one 6-row block fewer turns an even remainder of 2 into a multiple
  // of 4 (32 = 4·6 + 2·4, 64 = 10·6 + 4). With 5·6 + 2 lone rows, 32-row tiles (short
  // causal sequences) ran 2–3% slower than with 4 × 4 blocks on the Xeon.
  index_t six_rows = rows / MR * MR;
  if (rows % 2 == 0 && (rows - six_rows) % 4 != 0 && six_rows > 0) six_rows -= MR;
  index_t r = 0;
  for (; r < six_rows; r += MR) {
    value_row_block<T, MR, NV>(pt + r * pt_row_stride, pt_stride, pt_row_stride, v, v_stride, keys, width,
                               o + r * o_stride, o_stride, scales.from_row(r));
  }
  for (; r + 4 <= rows; r += 4) {
    value_row_block<T, 4, NV>(pt + r * pt_row_stride, pt_stride, pt_row_stride, v, v_stride, keys, width,
                              o + r * o_stride, o_stride, scales.from_row(r));
  }
  for (; r < rows; ++r) {
    value_row_block<T, 1, 2 * NV>(pt + r * pt_row_stride, pt_stride, pt_row_stride, v, v_stride, keys, width,
                                  o + r * o_stride, o_stride, scales.from_row(r));
  }
}

/// O [rows, width] = O·keep + (P [rows, keys] · V [keys, width])·add, row by row (see
/// RowScales; by default O += P·V), the keys summed in chunks of value_chunk_keys, each
/// into a fresh accumulator; width a multiple of the batch width, any number of rows. The
/// weight of key j for row r is pt[j·pt_stride + r·pt_row_stride]: Pᵀ as the prefill tiles
/// keep it (pt_row_stride = 1), or P as the decoding tiles do (pt_stride = 1). V rows are `v_stride` apart and read in place.
/// Rows go 6 at a time, then 4 at a time (as many 6s as leave a multiple of 4); the rest one
/// at a time with twice the vectors, so a lone row still has 8 independent FMA chains
/// rather than computing rows of padding.
///
/// The width goes in panels of value_panel_bytes per V row, so that a panel of the V tile
/// (64 keys × 256 B = 16 KB) stays in L1 next to Pᵀ while every row block streams it:
/// a whole 128-float-wide tile is 32 KB, as large as Zen 3's L1, and was re-read from L2
/// for each row block.
///
/// A tile of at most value_few_rows_max rows reuses no V panel across row blocks, and its
/// V tile usually comes from memory (decoding), so value_few_rows reads whole V rows (or
/// 512-byte runs of them) in address order. With AVX2 the register blocks would read it
/// in column strips 2–4 vectors wide, each strip touching a line or two of every row,
/// which the hardware prefetcher follows poorly; reading whole rows in order instead took
/// decoding at Nk = 32768, d = 128 on a 2-core Zen 3 (AVX2), medians of 40 interleaved
/// runs (20 on one thread), from 10.3 to 12.9 GB/s with 4 query rows per kv head
/// (2 threads) and from 8.8 to 10.0 GB/s with one (1 thread). With AVX-512 those
/// accumulators in L1 were the bottleneck instead: on a Zen 4 (two A/B runs, medians of
/// 21–41 interleaved runs, d 128, 8 query heads, 4 query rows per kv head) two rows at a
/// time in registers took Nk = 32768 from 20.1–22.2 to 22.9–25.9 GB/s on 2 threads and
/// from 12.0 to 14.1–14.9 on one, and Nk = 2048 (K/V in cache, one thread) from 17–18 to
/// 23.5–27.5; four rows in 4-vector strips were slower than pairs from memory. Each output
/// sums its keys in order, chunk by chunk, whatever the blocking.
template <class T>
void value_tile(const T* pt, index_t pt_stride, index_t pt_row_stride, index_t rows, index_t keys,
                const T* v, index_t v_stride, index_t width, T* o, index_t o_stride, RowScales<T> scales = {}) {
  // At least one chunk, so that O is scaled even when there are no keys.
  index_t j0 = 0;
  do {
    const index_t count = std::min(value_chunk_keys, keys - j0);
    value_chunk(pt + j0 * pt_stride, pt_stride, pt_row_stride, rows, count, v + j0 * v_stride, v_stride, width, o,
                o_stride, scales);
    scales.keep = nullptr;  // later chunks add to what the first one kept
    j0 += value_chunk_keys;
  } while (j0 < keys);
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
