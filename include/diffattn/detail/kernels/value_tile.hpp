#pragma once
/// The P·V micro-kernel: O = O·keep + (P·V)·add for one tile, with P as the score
/// kernels leave it (Pᵀ for prefill tiles, P for decoding tiles) and V rows read in place:
/// of T, or (T = float) of bf16 or f16, converted as they load (simd_load).
/// Each output sums its keys in order, chunk by chunk, whatever the blocking.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>

#include "diffattn/detail/kernels/blocking.hpp"
#include "diffattn/detail/simd.hpp"
#include "diffattn/half.hpp"
#include "diffattn/tensor.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

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


/// o[m][d] = o[m][d]·keep[m] + (Σ_j p(j, m)·v[j][d])·add[m] for m < MR rows and
/// d < NV·lanes, with the weight of key j for row m at pt[j·pt_stride + m·pt_row_stride].
template <class T, class E, int MR, int NV>
inline void value_block(const T* pt, index_t pt_stride, index_t pt_row_stride, const E* v,
                        index_t v_stride, index_t keys, T* o, index_t o_stride, RowScales<T> scales) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  B acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NV; ++n) acc[m][n] = B(T(0));
  for (index_t j = 0; j < keys; ++j) {
    B values[NV];
    for (int n = 0; n < NV; ++n) {
      values[n] = simd_load<B>(v + j * v_stride + n * lanes);
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

/// Calls chunk(j0, count, scales) for the keys [0, keys) in chunks of value_chunk_keys:
/// the first chunk with `scales`, later ones with keep null, as they add to what the first
/// kept; at least one chunk, so that O is scaled even when there are no keys. Every P·V
/// kernel sums its keys this way.
template <class T, class F>
void for_each_value_chunk(index_t keys, RowScales<T> scales, F&& chunk) {
  index_t j0 = 0;
  do {
    chunk(j0, std::min(value_chunk_keys, keys - j0), scales);
    scales.keep = nullptr;
    j0 += value_chunk_keys;
  } while (j0 < keys);
}

/// value_block over the whole width for MR rows: blocks of NV vectors, then single ones.
template <class T, class E, int MR, int NV>
inline void value_row_block(const T* pt, index_t pt_stride, index_t pt_row_stride, const E* v,
                            index_t v_stride, index_t keys, index_t width, T* o, index_t o_stride,
                            RowScales<T> scales) {
  constexpr index_t lanes = micro_blocking<T>::lanes;
  index_t d = 0;
  for (; d + NV * lanes <= width; d += NV * lanes) {
    value_block<T, E, MR, NV>(pt, pt_stride, pt_row_stride, v + d, v_stride, keys, o + d, o_stride, scales);
  }
  if constexpr (NV > micro_blocking<T>::value_vectors) {  // a lone row: keep 4+ chains
    for (; d + micro_blocking<T>::value_vectors * lanes <= width; d += micro_blocking<T>::value_vectors * lanes) {
      value_block<T, E, MR, micro_blocking<T>::value_vectors>(pt, pt_stride, pt_row_stride, v + d, v_stride, keys,
                                                           o + d, o_stride, scales);
    }
  }
  for (; d < width; d += lanes) {
    value_block<T, E, MR, 1>(pt, pt_stride, pt_row_stride, v + d, v_stride, keys, o + d, o_stride, scales);
  }
}


/// The value_block product for R rows, one key at a time across a panel of the width, the
/// sums in L1 rather than registers: each V row is read once, whole (up to
/// value_by_key_panel_bytes) and in address order. For register files of 16 (AVX2, SSE);
/// see value_tile.
template <class T, class E, int R>
void value_rows_by_key(const T* pt, index_t pt_stride, index_t pt_row_stride, const E* v,
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
      const E* row = v + j * v_stride + d0;
      for (index_t d = 0; d < span; d += lanes) {
        B values = simd_load<B>(row + d);
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


/// value_tile for tiles of at most value_few_rows_max rows (decoding). With 32 registers,
/// two rows at a time keep 16 accumulators and a 512-byte run of each V row in registers
/// (value_row_block with 8 vectors), and each pair re-reads the V tile; with 16 registers,
/// value_rows_by_key.
template <class T, class E>
void value_few_rows(const T* pt, index_t pt_stride, index_t pt_row_stride, index_t rows, index_t keys,
                    const E* v, index_t v_stride, index_t width, T* o, index_t o_stride, RowScales<T> scales) {
  if constexpr (micro_blocking<T>::wide_file) {
    if constexpr (!std::is_same_v<T, E>) {
      // Half-precision V: every row in one pass, so each element is converted once.
      switch (rows) {
        case 3: value_row_block<T, E, 3, 4>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales); return;
        case 4: value_row_block<T, E, 4, 4>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales); return;
        default: break;
      }
    }
    for (index_t r = 0; r < rows; r += 2) {
      const T* p_rows = pt + r * pt_row_stride;
      T* o_rows = o + r * o_stride;
      if (rows - r >= 2) {
        value_row_block<T, E, 2, 8>(p_rows, pt_stride, pt_row_stride, v, v_stride, keys, width, o_rows, o_stride,
                                 scales.from_row(r));
      } else {
        value_row_block<T, E, 1, 8>(p_rows, pt_stride, pt_row_stride, v, v_stride, keys, width, o_rows, o_stride,
                                 scales.from_row(r));
      }
    }
  } else {
    switch (rows) {
      case 1: value_rows_by_key<T, E, 1>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales); return;
      case 2: value_rows_by_key<T, E, 2>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales); return;
      case 3: value_rows_by_key<T, E, 3>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales); return;
      default:
        static_assert(value_few_rows_max == 4);
        value_rows_by_key<T, E, 4>(pt, pt_stride, pt_row_stride, v, v_stride, keys, width, o, o_stride, scales);
        return;
    }
  }
}

/// value_tile for one chunk of at most value_chunk_keys keys.
template <class T, class E>
void value_chunk(const T* pt, index_t pt_stride, index_t pt_row_stride, index_t rows, index_t keys,
                 const E* v, index_t v_stride, index_t width, T* o, index_t o_stride, RowScales<T> scales) {
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
  // of 4 (32 = 4·6 + 2·4, 64 = 10·6 + 4): 5·6 + 2 lone rows made 32-row tiles slower
  // (docs/tuning.md, "value_chunk row split").
  index_t six_rows = rows / MR * MR;
  if (rows % 2 == 0 && (rows - six_rows) % 4 != 0 && six_rows > 0) six_rows -= MR;
  index_t r = 0;
  for (; r < six_rows; r += MR) {
    value_row_block<T, E, MR, NV>(pt + r * pt_row_stride, pt_stride, pt_row_stride, v, v_stride, keys, width,
                               o + r * o_stride, o_stride, scales.from_row(r));
  }
  for (; r + 4 <= rows; r += 4) {
    value_row_block<T, E, 4, NV>(pt + r * pt_row_stride, pt_stride, pt_row_stride, v, v_stride, keys, width,
                              o + r * o_stride, o_stride, scales.from_row(r));
  }
  for (; r < rows; ++r) {
    value_row_block<T, E, 1, 2 * NV>(pt + r * pt_row_stride, pt_stride, pt_row_stride, v, v_stride, keys, width,
                                  o + r * o_stride, o_stride, scales.from_row(r));
  }
}

/// O [rows, width] = O·keep + (P [rows, keys] · V [keys, width])·add, row by row (see
/// RowScales; by default O += P·V), the keys summed in chunks of value_chunk_keys, each
/// into a fresh accumulator; width a multiple of the batch width, any number of rows. The
/// weight of key j for row r is pt[j·pt_stride + r·pt_row_stride]: Pᵀ as the prefill tiles
/// keep it (pt_row_stride = 1), or P as the decoding tiles do (pt_stride = 1). V rows are
/// `v_stride` apart and read in place.
/// Rows go 6 at a time, then 4 at a time (as many 6s as leave a multiple of 4); the rest one
/// at a time with twice the vectors, so a lone row still has 8 independent FMA chains
/// rather than computing rows of padding.
///
/// The width goes in panels of value_panel_bytes per V row, so that a panel of the V tile
/// (64 keys × 256 B = 16 KB) stays in L1 next to Pᵀ while every row block streams it
/// (a whole 128-float-wide tile is 32 KB, a whole L1).
///
/// A tile of at most value_few_rows_max rows reuses no V panel across row blocks, and its
/// V tile usually comes from memory (decoding), so value_few_rows reads whole V rows (or
/// 512-byte runs of them) in address order. With AVX2 the register blocks would read it
/// in column strips 2–4 vectors wide, each strip touching a line or two of every row,
/// which the hardware prefetcher follows poorly. With AVX-512 accumulators in L1 were the
/// bottleneck instead, so two rows at a time stay in registers (docs/tuning.md,
/// "value_few_rows"). Each output sums its keys in order, chunk by chunk, whatever the
/// blocking.
template <class T, class E>
void value_tile(const T* pt, index_t pt_stride, index_t pt_row_stride, index_t rows, index_t keys,
                const E* v, index_t v_stride, index_t width, T* o, index_t o_stride, RowScales<T> scales = {}) {
  for_each_value_chunk(keys, scales, [&](index_t j0, index_t count, RowScales<T> chunk_scales) {
    value_chunk(pt + j0 * pt_stride, pt_stride, pt_row_stride, rows, count, v + j0 * v_stride, v_stride, width, o,
                o_stride, chunk_scales);
  });
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
