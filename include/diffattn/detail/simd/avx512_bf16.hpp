#pragma once
/// AVX512_BF16 forms of the two tile products: vdpbf16ps adds 32 products of bf16 into 16
/// fp32 sums per instruction, twice the products of an fp32 FMA. Its operands come in
/// pairs: a std::uint32_t holding two bf16 bit patterns, the element of lower index in
/// the low 16 bits. Pairs run along the shared dimension (D for scores, keys for P·V), so
/// each fp32 lane still holds one output.
///   score_tile_bf16    Sᵀ = factor·K·Qᵀ, K rows in place, Q packed as depth pairs
///   score_tile_dot_bf16  scores of a few query rows (decoding), dot products along D
///   pack_weight_pairs  fp32 Pᵀ to key pairs of bf16, rounded to nearest even
///   pack_difference_pairs  the same for P = e1·f1 − e2·f2, formed on the way
///   pack_value_pairs   bf16 V rows to key pairs
///   value_tile_bf16    O = O·keep + (P·V)·add on the packed pairs, as value_tile does
///   value_rows_bf16    the same for decoding tiles, V pairs formed in registers
/// The register blocks, panels and chunks mirror score_tile.hpp and value_tile.hpp; each
/// output sums its pairs in order, whatever the blocking.
///
/// vdpbf16ps reads denormal inputs as zero and flushes denormal results to zero, and
/// vcvtne2ps2bf16 rounds denormal floats to zero: values below 2⁻¹²⁶ in magnitude count
/// as zero here.
///
/// Defined only when the compile flags allow AVX512F, AVX512BW and AVX512_BF16 (and not
/// DIFFATTN_NO_SIMD): then DIFFATTN_HAS_BF16_DOT is 1. detail::has_bf16_dot_product says
/// which, in every build.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "diffattn/detail/kernels/blocking.hpp"
#include "diffattn/detail/kernels/value_tile.hpp"
#include "diffattn/detail/simd.hpp"
#include "diffattn/half.hpp"
#include "diffattn/tensor.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__) && !defined(DIFFATTN_NO_SIMD)
#define DIFFATTN_HAS_BF16_DOT 1
#include <immintrin.h>
#endif

namespace diffattn {
namespace detail {

#if defined(DIFFATTN_HAS_BF16_DOT)
inline constexpr bool has_bf16_dot_product = true;
#else
inline constexpr bool has_bf16_dot_product = false;
// Declared, never defined: templates choose these under `if constexpr (bf16_dot_for<T>)`,
// a branch no build without the instructions instantiates.
void score_tile_bf16(const bf16* k, index_t k_stride, index_t keys, const std::uint32_t* qp, index_t rows_pad,
                     index_t depth, float factor, float* st, index_t st_stride);
void pack_weight_pairs(const float* pt, index_t pt_stride, index_t keys, index_t rows_pad, std::uint32_t* pp);
void value_rows_bf16(const float* pt, index_t pt_row_stride, index_t rows, index_t keys, const bf16* v,
                     index_t v_stride, index_t width, float* o, index_t o_stride, const float* keep, const float* add);
void pack_difference_pairs(const float* e1, const float* e2, const float* f1, const float* f2, index_t keys,
                           index_t rows_pad, std::uint32_t* pp);
void score_tile_dot_bf16(const bf16* k, index_t k_stride, index_t keys, const bf16* q, index_t rows, index_t depth,
                         float factor, float* st, index_t key_stride, index_t row_stride);
void pack_value_pairs(const bf16* v, index_t v_stride, index_t keys, index_t width, index_t width_pad,
                      std::uint32_t* vp);
void value_tile_bf16(const std::uint32_t* pp, index_t pp_stride, index_t rows, index_t keys, const std::uint32_t* vp,
                     index_t vp_stride, index_t width, float* o, index_t o_stride, const float* keep, const float* add);
#endif

/// Whether kernels computing in T have the bf16 pair products (float only).
template <class T>
inline constexpr bool bf16_dot_for = has_bf16_dot_product && std::is_same_v<T, float>;

}  // namespace detail
}  // namespace diffattn

#if defined(DIFFATTN_HAS_BF16_DOT)

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {
namespace bf16_dot {

/// 16 fp32 lanes, 16 pairs to a register.
inline constexpr index_t lanes = 16;

/// The blocking of the fp32 kernels (micro_blocking<float> with AVX-512's 32 registers):
/// a vdpbf16ps takes one register of pairs where an FMA takes one of floats, so the same
/// MR × NR accumulators fit next to the NR operand vectors and a broadcast.
using blocking = micro_blocking<float>;
static_assert(blocking::lanes == lanes && blocking::wide_file, "AVX-512 float batches");

inline __m512 dot_pairs(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

/// One pair broadcast to every lane: a 32-bit load the broadcast takes from memory.
inline __m512i broadcast_pair(const void* pair) {
  std::uint32_t bits;
  std::memcpy(&bits, pair, sizeof bits);
  return _mm512_set1_epi32(static_cast<int>(bits));
}

/// The pair (x, 0), for the last element of an odd-length row: the element after it is
/// not ours to read.
inline __m512i broadcast_lone(const bf16* x) {
  std::uint16_t bits;
  std::memcpy(&bits, x, sizeof bits);
  return _mm512_set1_epi32(static_cast<int>(bits));
}

#if defined(__GNUC__)
// As keep_in_register in x86.hpp ("v": any of the 32 vector registers): without it the
// compiler folds the load into every vdpbf16ps that uses it.
inline void keep_in_register(__m512i& x) { asm volatile("" : "+v"(x)); }
#else
inline void keep_in_register(__m512i&) {}
#endif

/// st[m][r] (+)= Σ_p k[m] pair p · q[r] pair p, for m < MR keys, r < NR·16 rows, over
/// `depth` elements (pairs, then the lone last element of an odd depth). Scale multiplies
/// by factor before the store: the last depth panel does it.
///
/// Out of line: inlined into its caller next to the odd-depth step and the other blocks,
/// GCC 12 kept accumulators on the stack, a store and a store-to-load chain per
/// vdpbf16ps (docs/tuning.md, "score_tile_bf16, value_tile_bf16").
template <int MR, int NR, bool Accumulate, bool Scale>
[[gnu::noinline]] void score_block(const bf16* k, index_t k_stride, const std::uint32_t* qp, index_t rows_pad,
                                   index_t depth, float factor, float* st, index_t st_stride) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      acc[m][n] = Accumulate ? _mm512_loadu_ps(st + m * st_stride + n * lanes) : _mm512_setzero_ps();
  const index_t pairs = depth / 2;
  for (index_t p = 0; p < pairs; ++p) {
    __m512i rows[NR];
    for (int n = 0; n < NR; ++n) {
      rows[n] = _mm512_loadu_si512(qp + p * rows_pad + n * lanes);
      keep_in_register(rows[n]);
    }
    for (int m = 0; m < MR; ++m) {
      const __m512i key = broadcast_pair(k + m * k_stride + 2 * p);
      for (int n = 0; n < NR; ++n) acc[m][n] = dot_pairs(acc[m][n], key, rows[n]);
    }
  }
  if (depth % 2 != 0) {
    __m512i rows[NR];
    for (int n = 0; n < NR; ++n) rows[n] = _mm512_loadu_si512(qp + pairs * rows_pad + n * lanes);
    for (int m = 0; m < MR; ++m) {
      const __m512i key = broadcast_lone(k + m * k_stride + depth - 1);
      for (int n = 0; n < NR; ++n) acc[m][n] = dot_pairs(acc[m][n], key, rows[n]);
    }
  }
  const __m512 scale = _mm512_set1_ps(factor);
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      _mm512_storeu_ps(st + m * st_stride + n * lanes, Scale ? _mm512_mul_ps(acc[m][n], scale) : acc[m][n]);
}

template <int NR, bool Accumulate, bool Scale>
inline void score_rows(const bf16* k, index_t k_stride, index_t keys, const std::uint32_t* qp, index_t rows_pad,
                       index_t depth, float factor, float* st, index_t st_stride) {
  constexpr int MR = blocking::score_keys_for(NR);
  index_t j = 0;
  for (; j + MR <= keys; j += MR) {
    score_block<MR, NR, Accumulate, Scale>(k + j * k_stride, k_stride, qp, rows_pad, depth, factor,
                                           st + j * st_stride, st_stride);
  }
  if constexpr (MR > 6) {
    for (; j + 6 <= keys; j += 6) {
      score_block<6, NR, Accumulate, Scale>(k + j * k_stride, k_stride, qp, rows_pad, depth, factor,
                                            st + j * st_stride, st_stride);
    }
  }
  // Key tail in one block, as score_rows in score_tile.hpp.
  const bf16* k_tail = k + j * k_stride;
  float* st_tail = st + j * st_stride;
  switch (keys - j) {
    case 0: break;
    case 1: score_block<1, NR, Accumulate, Scale>(k_tail, k_stride, qp, rows_pad, depth, factor, st_tail, st_stride); break;
    case 2: score_block<2, NR, Accumulate, Scale>(k_tail, k_stride, qp, rows_pad, depth, factor, st_tail, st_stride); break;
    case 3: score_block<3, NR, Accumulate, Scale>(k_tail, k_stride, qp, rows_pad, depth, factor, st_tail, st_stride); break;
    case 4: score_block<4, NR, Accumulate, Scale>(k_tail, k_stride, qp, rows_pad, depth, factor, st_tail, st_stride); break;
    case 5: score_block<5, NR, Accumulate, Scale>(k_tail, k_stride, qp, rows_pad, depth, factor, st_tail, st_stride); break;
    default: break;  // unreachable: fewer than 6 keys remain
  }
}

template <bool Accumulate, bool Scale>
void score_panel(const bf16* k, index_t k_stride, index_t keys, const std::uint32_t* qp, index_t rows_pad,
                 index_t depth, float factor, float* st, index_t st_stride) {
  constexpr int NR = blocking::score_vectors;
  index_t r = 0;
  for (; r + NR * lanes <= rows_pad; r += NR * lanes) {
    score_rows<NR, Accumulate, Scale>(k, k_stride, keys, qp + r, rows_pad, depth, factor, st + r, st_stride);
  }
  for (; r + 2 * lanes <= rows_pad; r += 2 * lanes) {
    score_rows<2, Accumulate, Scale>(k, k_stride, keys, qp + r, rows_pad, depth, factor, st + r, st_stride);
  }
  for (; r < rows_pad; r += lanes) {
    score_rows<1, Accumulate, Scale>(k, k_stride, keys, qp + r, rows_pad, depth, factor, st + r, st_stride);
  }
}

/// o[m][d] = o[m][d]·keep[m] + (Σ_p pair p of row m · pair p of v[d])·add[m] for m < MR
/// rows and d < NV·16, the row's pair p at pp[p·pp_stride + m]. Out of line, as
/// score_block.
template <int MR, int NV>
[[gnu::noinline]] void value_block(const std::uint32_t* pp, index_t pp_stride, const std::uint32_t* vp,
                                   index_t vp_stride, index_t pairs, float* o, index_t o_stride,
                                   RowScales<float> scales) {
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NV; ++n) acc[m][n] = _mm512_setzero_ps();
  for (index_t p = 0; p < pairs; ++p) {
    __m512i values[NV];
    for (int n = 0; n < NV; ++n) {
      values[n] = _mm512_loadu_si512(vp + p * vp_stride + n * lanes);
      keep_in_register(values[n]);
    }
    for (int m = 0; m < MR; ++m) {
      const __m512i weights = broadcast_pair(pp + p * pp_stride + m);
      for (int n = 0; n < NV; ++n) acc[m][n] = dot_pairs(acc[m][n], weights, values[n]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    const __m512 keep = _mm512_set1_ps(scales.keep_at(m)), add = _mm512_set1_ps(scales.add_at(m));
    for (int n = 0; n < NV; ++n) {
      float* out = o + m * o_stride + n * lanes;
      const __m512 old = _mm512_loadu_ps(out);
      _mm512_storeu_ps(out, _mm512_fmadd_ps(acc[m][n], add, scales.keep ? _mm512_mul_ps(old, keep) : old));
    }
  }
}

/// value_block over the whole width for MR rows: blocks of NV vectors, then single ones.
template <int MR, int NV>
inline void value_row_block(const std::uint32_t* pp, index_t pp_stride, const std::uint32_t* vp,
                            index_t vp_stride, index_t pairs, index_t width, float* o, index_t o_stride,
                            RowScales<float> scales) {
  constexpr int value_vectors = blocking::value_vectors;
  index_t d = 0;
  for (; d + NV * lanes <= width; d += NV * lanes) {
    value_block<MR, NV>(pp, pp_stride, vp + d, vp_stride, pairs, o + d, o_stride, scales);
  }
  if constexpr (NV > value_vectors) {  // a lone row: keep 4+ chains
    for (; d + value_vectors * lanes <= width; d += value_vectors * lanes) {
      value_block<MR, value_vectors>(pp, pp_stride, vp + d, vp_stride, pairs, o + d, o_stride, scales);
    }
  }
  for (; d < width; d += lanes) {
    value_block<MR, 1>(pp, pp_stride, vp + d, vp_stride, pairs, o + d, o_stride, scales);
  }
}

/// value_tile_bf16 for one chunk of at most value_chunk_keys keys (pairs of them), with
/// value_chunk's panels and row split.
inline void value_chunk(const std::uint32_t* pp, index_t pp_stride, index_t rows, index_t pairs,
                        const std::uint32_t* vp, index_t vp_stride, index_t width, float* o, index_t o_stride,
                        RowScales<float> scales) {
  // A 64-wide panel of a chunk's pair rows is 32 × 256 B, in L1 next to the weights.
  constexpr index_t panel = value_panel_bytes / sizeof(std::uint32_t);
  if (width > panel) {
    for (index_t d = 0; d < width; d += panel) {
      value_chunk(pp, pp_stride, rows, pairs, vp + d, vp_stride, std::min(panel, width - d), o + d, o_stride,
                  scales);
    }
    return;
  }
  constexpr int MR = blocking::value_rows, NV = blocking::value_vectors;
  static_assert(MR == 6, "the split below assumes 6-row blocks");
  // value_chunk's split: 6-row blocks, then 4-row ones, then lone rows with twice the
  // vectors, one 6-row block fewer where that leaves a multiple of 4.
  index_t six_rows = rows / MR * MR;
  if (rows % 2 == 0 && (rows - six_rows) % 4 != 0 && six_rows > 0) six_rows -= MR;
  index_t r = 0;
  for (; r < six_rows; r += MR) {
    value_row_block<MR, NV>(pp + r, pp_stride, vp, vp_stride, pairs, width, o + r * o_stride, o_stride,
                            scales.from_row(r));
  }
  for (; r + 4 <= rows; r += 4) {
    value_row_block<4, NV>(pp + r, pp_stride, vp, vp_stride, pairs, width, o + r * o_stride, o_stride,
                           scales.from_row(r));
  }
  for (; r < rows; ++r) {
    value_row_block<1, 2 * NV>(pp + r, pp_stride, vp, vp_stride, pairs, width, o + r * o_stride, o_stride,
                               scales.from_row(r));
  }
}

/// The word indices that interleave two runs of 16 bf16 into 16 pairs, for vpermw and
/// vpermt2w: word 2i of the result is source word first + i, word 2i + 1 is second + i.
inline __m512i interleave_index(int first, int second) {
  alignas(64) std::uint16_t index[32];
  for (int i = 0; i < 16; ++i) {
    index[2 * i] = static_cast<std::uint16_t>(first + i);
    index[2 * i + 1] = static_cast<std::uint16_t>(second + i);
  }
  return _mm512_load_si512(index);
}


/// score_block_dot on bf16 (score_tile.hpp): the scores of MR keys against R query rows,
/// dot products along D, 32 elements per vdpbf16ps; the depth tail of fewer than 32
/// through masked loads. One add tree per 16 (key, row) sums, then the factor.
template <int MR, int R>
[[gnu::noinline]] void score_block_dot(const bf16* k, index_t k_stride, const bf16* q, index_t depth, float factor,
                                       float* st, index_t key_stride, index_t row_stride) {
  constexpr int count = MR * R, trees = (count + 15) / 16;
  __m512 group[trees * 16];
  for (int i = count; i < trees * 16; ++i) group[i] = _mm512_setzero_ps();
  const index_t whole = depth / 32 * 32;
  const __mmask32 tail = static_cast<__mmask32>((std::uint64_t{1} << (depth - whole)) - 1);
  for (int m = 0; m < MR; ++m) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const bf16* key_row = k + m * k_stride;
    for (index_t c = 0; c < whole; c += 32) {
      __m512i key = _mm512_loadu_si512(key_row + c);
      keep_in_register(key);
      for (int r = 0; r < R; ++r) acc[r] = dot_pairs(acc[r], key, _mm512_loadu_si512(q + r * depth + c));
    }
    if (tail != 0) {
      const __m512i key = _mm512_maskz_loadu_epi16(tail, key_row + whole);
      for (int r = 0; r < R; ++r) {
        acc[r] = dot_pairs(acc[r], key, _mm512_maskz_loadu_epi16(tail, q + r * depth + whole));
      }
    }
    for (int r = 0; r < R; ++r) group[m * R + r] = acc[r];
  }
  for (int tree = 0; tree < trees; ++tree) {
    alignas(64) float sums[16];
    _mm512_store_ps(sums, _mm512_mul_ps(simd_kernel::sum_rows_avx512(group + tree * 16), _mm512_set1_ps(factor)));
    for (int i = 0; i < 16 && tree * 16 + i < count; ++i) {
      const int m = (tree * 16 + i) / R, r = (tree * 16 + i) % R;
      st[m * key_stride + r * row_stride] = sums[i];
    }
  }
}

template <int R>
void score_rows_dot(const bf16* k, index_t k_stride, index_t keys, const bf16* q, index_t depth, float factor,
                    float* st, index_t key_stride, index_t row_stride) {
  constexpr int MR = R == 1 ? 16 : R == 2 ? 8 : R == 3 ? 5 : 4;  // one add tree, as score_rows_dot
  index_t j = 0;
  for (; j + MR <= keys; j += MR) {
    score_block_dot<MR, R>(k + j * k_stride, k_stride, q, depth, factor, st + j * key_stride, key_stride, row_stride);
  }
  for (; j < keys; ++j) {
    score_block_dot<1, R>(k + j * k_stride, k_stride, q, depth, factor, st + j * key_stride, key_stride, row_stride);
  }
}

/// value_few_rows on bf16 pairs: R rows (at most value_few_rows_max) of O over a 64-key
/// chunk, NV vectors of the width from `d0`; w holds each row's weight pairs (R rows of
/// 32 pairs). V rows are read in place and interleaved into key pairs in registers
/// (vpermt2w), key j's row with key j + 1's; an odd last key pairs with zeros.
template <int R, int NV>
[[gnu::noinline]] void value_rows_block(const std::uint32_t* w, index_t keys, const bf16* v, index_t v_stride,
                                        float* o, index_t o_stride, const float* keep, const float* add) {
  const __m512i interleave = interleave_index(0, 32);
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_setzero_ps();
  for (index_t j = 0; j < keys; j += 2) {
    const bf16* first = v + j * v_stride;
    __m512i values[NV];
    for (int n = 0; n < NV; ++n) {
      const __m512i a = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + 16 * n)));
      const __m512i b =
          j + 1 < keys
              ? _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + v_stride + 16 * n)))
              : _mm512_setzero_si512();
      values[n] = _mm512_permutex2var_epi16(a, interleave, b);
      keep_in_register(values[n]);
    }
    for (int r = 0; r < R; ++r) {
      const __m512i weight = broadcast_pair(w + r * 32 + j / 2);
      for (int n = 0; n < NV; ++n) acc[r][n] = dot_pairs(acc[r][n], weight, values[n]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512 scale_add = _mm512_set1_ps(add ? add[r] : 1.0f);
    for (int n = 0; n < NV; ++n) {
      float* out = o + r * o_stride + 16 * n;
      __m512 old = _mm512_loadu_ps(out);
      if (keep) old = _mm512_mul_ps(old, _mm512_set1_ps(keep[r]));
      _mm512_storeu_ps(out, _mm512_fmadd_ps(acc[r][n], scale_add, old));
    }
  }
}

template <int R>
void value_rows_chunk(const std::uint32_t* w, index_t keys, const bf16* v, index_t v_stride, index_t width, float* o,
                      index_t o_stride, const float* keep, const float* add) {
  // One or two rows keep 128 floats of every row in registers, so each V row is read
  // whole and in order; three or four, 64 (their accumulators take the room).
  constexpr int NV = R <= 2 ? 8 : 4;
  index_t d = 0;
  for (; d + 16 * NV <= width; d += 16 * NV) {
    value_rows_block<R, NV>(w, keys, v + d, v_stride, o + d, o_stride, keep, add);
  }
  for (; d < width; d += 16) value_rows_block<R, 1>(w, keys, v + d, v_stride, o + d, o_stride, keep, add);
}
}  // namespace bf16_dot

/// Sᵀ [keys, rows_pad] = factor · K [keys, depth] · Qᵀ, with st[j·st_stride + r] the
/// score of key j and query row r. K rows are bf16, `k_stride` elements apart, read in
/// place (never past element depth − 1). Q comes packed as depth pairs:
/// qp[p·rows_pad + r] = (q[r][2p], q[r][2p + 1]) for p < ⌈depth/2⌉, the high half zero
/// for an odd depth; rows_pad a multiple of 16.
///
/// As score_tile: keys in 6-key blocks against 4 vectors of 16 rows (12 keys against
/// 2 vectors, 6 against 1 for the rows left), the key tail in one block, and the depth in
/// panels of score_panel_bytes per K row (128 elements, 64 pairs) so that a panel of the
/// K tile stays in L1 while every row block streams it. Each score sums its pairs in
/// order across the panels, then is multiplied by factor once.
inline void score_tile_bf16(const bf16* k, index_t k_stride, index_t keys, const std::uint32_t* qp,
                            index_t rows_pad, index_t depth, float factor, float* st, index_t st_stride) {
  constexpr index_t panel = score_panel_bytes / sizeof(bf16);
  static_assert(panel % 2 == 0, "panels end on whole pairs");
  if (depth <= panel) {
    bf16_dot::score_panel<false, true>(k, k_stride, keys, qp, rows_pad, depth, factor, st, st_stride);
    return;
  }
  bf16_dot::score_panel<false, false>(k, k_stride, keys, qp, rows_pad, panel, factor, st, st_stride);
  for (index_t c = panel; c < depth; c += panel) {
    const index_t span = std::min(panel, depth - c);
    const std::uint32_t* q_panel = qp + c / 2 * rows_pad;
    if (c + span < depth) {
      bf16_dot::score_panel<true, false>(k + c, k_stride, keys, q_panel, rows_pad, span, factor, st, st_stride);
    } else {
      bf16_dot::score_panel<true, true>(k + c, k_stride, keys, q_panel, rows_pad, span, factor, st, st_stride);
    }
  }
}

/// score_tile_dot on bf16 (decoding tiles, fewer rows than lanes): score (key j, row r)
/// = factor·Σ_c k[j][c]·q[r][c] at st[j·key_stride + r·row_stride], Q packed row-major
/// [rows, depth] as bf16 (unscaled), K rows read in place; 4 query rows at a time.
inline void score_tile_dot_bf16(const bf16* k, index_t k_stride, index_t keys, const bf16* q, index_t rows,
                                index_t depth, float factor, float* st, index_t key_stride, index_t row_stride) {
  for (index_t r = 0; r < rows; r += 4) {
    const bf16* q_rows = q + r * depth;
    float* st_rows = st + r * row_stride;
    switch (std::min<index_t>(rows - r, 4)) {
      case 4: bf16_dot::score_rows_dot<4>(k, k_stride, keys, q_rows, depth, factor, st_rows, key_stride, row_stride); break;
      case 3: bf16_dot::score_rows_dot<3>(k, k_stride, keys, q_rows, depth, factor, st_rows, key_stride, row_stride); break;
      case 2: bf16_dot::score_rows_dot<2>(k, k_stride, keys, q_rows, depth, factor, st_rows, key_stride, row_stride); break;
      default: bf16_dot::score_rows_dot<1>(k, k_stride, keys, q_rows, depth, factor, st_rows, key_stride, row_stride); break;
    }
  }
}

/// value_tile for decoding tiles on bf16 pairs: O [rows, width] = O·keep + (P·V)·add
/// (RowScales; null keep/add stand for 1) for rows <= value_few_rows_max, P kept by row
/// (p(j, r) at pt[r·pt_row_stride + j]) and rounded to bf16 key pairs, V bf16 rows read in
/// place (width a multiple of 16), keys summed in chunks of value_chunk_keys.
inline void value_rows_bf16(const float* pt, index_t pt_row_stride, index_t rows, index_t keys, const bf16* v,
                            index_t v_stride, index_t width, float* o, index_t o_stride, const float* keep,
                            const float* add) {
  static_assert(value_chunk_keys == 64, "a chunk's weights are 32 pairs per row");
  alignas(64) std::uint32_t w[value_few_rows_max * 32];
  for_each_value_chunk(keys, RowScales<float>{keep, add}, [&](index_t j0, index_t count, RowScales<float> scales) {
    for (index_t r = 0; r < rows; ++r) {  // the row's weights, keys in order: pairs as they stand
      const float* p = pt + r * pt_row_stride + j0;
      for (index_t k = 0; k < 64; k += 32) {  // past the chunk's keys, weight 0
        const index_t left = count - k;
        const __mmask16 m0 = left >= 16 ? __mmask16(0xFFFF) : left > 0 ? __mmask16((1u << left) - 1) : __mmask16(0);
        const __mmask16 m1 =
            left >= 32 ? __mmask16(0xFFFF) : left > 16 ? __mmask16((1u << (left - 16)) - 1) : __mmask16(0);
        const __m512 a = _mm512_maskz_loadu_ps(m0, p + k), b = _mm512_maskz_loadu_ps(m1, p + k + 16);
        _mm512_store_si512(w + r * 32 + k / 2, (__m512i)_mm512_cvtne2ps_pbh(b, a));
      }
    }
    const bf16* chunk = v + j0 * v_stride;
    const float *kept = scales.keep, *added = scales.add;
    switch (rows) {
      case 1: bf16_dot::value_rows_chunk<1>(w, count, chunk, v_stride, width, o, o_stride, kept, added); break;
      case 2: bf16_dot::value_rows_chunk<2>(w, count, chunk, v_stride, width, o, o_stride, kept, added); break;
      case 3: bf16_dot::value_rows_chunk<3>(w, count, chunk, v_stride, width, o, o_stride, kept, added); break;
      default: bf16_dot::value_rows_chunk<4>(w, count, chunk, v_stride, width, o, o_stride, kept, added); break;
    }
  });
}

/// Pairs of keys from fp32 Pᵀ [keys, rows_pad] (pt[j·pt_stride + r], rows_pad a multiple
/// of 16): pp[(j/2)·rows_pad + r] = (bf16(p(j, r)), bf16(p(j + 1, r))), rounded to
/// nearest even (NaN stays NaN), the high half zero for an odd last key.
inline void pack_weight_pairs(const float* pt, index_t pt_stride, index_t keys, index_t rows_pad,
                              std::uint32_t* pp) {
  // vcvtne2ps2bf16 puts key j's 16 rows in words 0–15 and key j + 1's in 16–31.
  const __m512i interleave = bf16_dot::interleave_index(0, 16);
  for (index_t j = 0; j < keys; j += 2) {
    const float* first = pt + j * pt_stride;
    std::uint32_t* out = pp + j / 2 * rows_pad;
    const bool second = j + 1 < keys;
    for (index_t r = 0; r < rows_pad; r += bf16_dot::lanes) {
      const __m512 low = _mm512_loadu_ps(first + r);
      const __m512 high = second ? _mm512_loadu_ps(first + pt_stride + r) : _mm512_setzero_ps();
      const __m512i rounded = (__m512i)_mm512_cvtne2ps_pbh(high, low);
      _mm512_storeu_si512(out + r, _mm512_permutexvar_epi16(interleave, rounded));
    }
  }
}

/// pack_weight_pairs of P = e1·f1 − e2·f2, formed as it is packed: e1, e2 fp32 Pᵀ tiles
/// [keys, rows_pad] (rows_pad apart), f1, f2 one factor per row. Differential attention's
/// two-pass P then never goes to memory as float.
inline void pack_difference_pairs(const float* e1, const float* e2, const float* f1, const float* f2, index_t keys,
                                  index_t rows_pad, std::uint32_t* pp) {
  const __m512i interleave = bf16_dot::interleave_index(0, 16);
  for (index_t r = 0; r < rows_pad; r += bf16_dot::lanes) {
    const __m512 a1 = _mm512_loadu_ps(f1 + r), a2 = _mm512_loadu_ps(f2 + r);
    auto weight = [&](index_t j) {
      return _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(e1 + j * rows_pad + r), a1),
                           _mm512_mul_ps(_mm512_loadu_ps(e2 + j * rows_pad + r), a2));
    };
    for (index_t j = 0; j < keys; j += 2) {
      const __m512 low = weight(j);
      const __m512 high = j + 1 < keys ? weight(j + 1) : _mm512_setzero_ps();
      const __m512i rounded = (__m512i)_mm512_cvtne2ps_pbh(high, low);
      _mm512_storeu_si512(pp + j / 2 * rows_pad + r, _mm512_permutexvar_epi16(interleave, rounded));
    }
  }
}

/// Pairs of keys from bf16 V [keys, width] (v[j·v_stride + d]): vp[(j/2)·width_pad + d] =
/// (v[j][d], v[j + 1][d]) for d < width, zero for width ≤ d < width_pad (a multiple of
/// 16), the high half zero for an odd last key. Reads no element past a row's width.
inline void pack_value_pairs(const bf16* v, index_t v_stride, index_t keys, index_t width, index_t width_pad,
                             std::uint32_t* vp) {
  // vpermt2w numbers a's words 0–31 and b's 32–63.
  const __m512i low_words = bf16_dot::interleave_index(0, 32), high_words = bf16_dot::interleave_index(16, 48);
  for (index_t j = 0; j < keys; j += 2) {
    const bf16* first = v + j * v_stride;
    std::uint32_t* out = vp + j / 2 * width_pad;
    const bool second = j + 1 < keys;
    // 32 columns of both rows at a time, masked to the width: the padding reads as zero.
    for (index_t d = 0; d < width_pad; d += 2 * bf16_dot::lanes) {
      const index_t count = std::clamp<index_t>(width - d, 0, 32);
      const __mmask32 mask = count == 32 ? ~__mmask32{0} : static_cast<__mmask32>((std::uint32_t{1} << count) - 1);
      const __m512i a = _mm512_maskz_loadu_epi16(mask, first + d);
      const __m512i b = second ? _mm512_maskz_loadu_epi16(mask, first + v_stride + d) : _mm512_setzero_si512();
      _mm512_storeu_si512(out + d, _mm512_permutex2var_epi16(a, low_words, b));
      if (d + bf16_dot::lanes < width_pad) {
        _mm512_storeu_si512(out + d + bf16_dot::lanes, _mm512_permutex2var_epi16(a, high_words, b));
      }
    }
  }
}

/// O [rows, width] = O·keep + (P [rows, keys] · V [keys, width])·add, row by row, on key
/// pairs: pp as pack_weight_pairs leaves it (row r's pair p at pp[p·pp_stride + r]), vp
/// as pack_value_pairs does (pair p's column d at vp[p·vp_stride + d]); width a multiple
/// of 16, o rows `o_stride` floats apart, keep or add null for 1.
///
/// As value_tile: the keys in chunks of value_chunk_keys (32 pairs), each summed into
/// fresh accumulators and then added to o (the first chunk applies keep, even with no
/// keys); 6 rows × 4 vectors, then 4-row blocks, then lone rows with 8 vectors; the width
/// in panels of value_panel_bytes of pairs (64 columns).
inline void value_tile_bf16(const std::uint32_t* pp, index_t pp_stride, index_t rows, index_t keys,
                            const std::uint32_t* vp, index_t vp_stride, index_t width, float* o, index_t o_stride,
                            const float* keep, const float* add) {
  static_assert(value_chunk_keys % 2 == 0, "chunks start on whole pairs");
  for_each_value_chunk(keys, RowScales<float>{keep, add}, [&](index_t j0, index_t count, RowScales<float> scales) {
    bf16_dot::value_chunk(pp + j0 / 2 * pp_stride, pp_stride, rows, (count + 1) / 2, vp + j0 / 2 * vp_stride,
                          vp_stride, width, o, o_stride, scales);
  });
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP

#endif  // DIFFATTN_HAS_BF16_DOT
