#pragma once
/// The fused attention kernels behind diffattn::softmax_attention and diff_attention.
///
/// Work is split into tiles of query rows. A tile holds the rows of every query head that
/// shares one kv head (grouped-query attention) for a range of query positions, so each
/// K/V tile is read once for the whole group while it is hot in cache.
///
/// Standard attention streams key tiles through an online softmax ("flash"): per key
/// tile, S = Q·Kᵀ (Q pre-scaled by scale·log2 e, so exp becomes exp2), the running row
/// max m, the running sum l, and O += P·V, rescaling O only when m grows. No Nq×Nk matrix
/// exists. FLOPs: 2·Nq·Nk·(D + Dv).
///
/// Differential attention, two-pass (default): per query tile, S1 and S2 against all
/// visible keys go to a per-thread workspace of rows × Nk, each row's exact max and sum
/// are taken, P = softmax(S1) − λ·softmax(S2) is formed in place, then ONE P·V product
/// runs: 2·Nq·Nk·(2D + Dv) FLOPs, the same as standard attention with twice the heads at
/// width D = Dv/2. Streaming (fallback): two online softmax states and two P·V products,
/// 2·Nq·Nk·(2D + 2Dv) FLOPs (1.5× at Dv = 2D) but only O(rows × key tile) memory; used when
/// a single tile's rows × Nk workspace would exceed options.workspace_limit, and for
/// decoding (few query rows), where reading K/V, not FLOPs, is the cost.
///
/// Decoding: with few query tiles and long Nk the keys are split in fixed chunks, each
/// chunk's (max, sum, accumulator) is computed in parallel and the triples are merged in
/// chunk order. The split depends on the shapes only, never on the thread count, and no
/// result depends on how rows are grouped into tiles: outputs are bitwise identical for
/// any number of threads.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "diffattn/microkernels.hpp"
#include "diffattn/options.hpp"
#include "diffattn/simd.hpp"
#include "diffattn/tensor.hpp"
#include "diffattn/validation.hpp"
#include "diffattn/workspace.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

template <class T>
struct FusedArgs {
  TensorView<const T, 4> q1, q2, k1, k2, v, mask;  // q2, k2 only for diff; mask may be empty
  TensorView<const T, 3> lambda;                   // [B, Hq, Nq], diff only
  TensorView<T, 4> out;
  AttentionProblem problem;
  bool diff = false;
  bool shared_keys = false;  // k2 is k1: pack and read each K tile once for both maps
};

template <class T>
bool same_view(TensorView<const T, 4> a, TensorView<const T, 4> b) {
  return a.data() == b.data() && a.shape() == b.shape() && a.strides() == b.strides();
}

/// Tiling and method decisions for one call. Only `positions_per_tile` and `threads`
/// may depend on the thread count; they never change a result.
struct FusedPlan {
  static constexpr index_t key_tile = 64;        // keys per streamed tile
  static constexpr index_t target_rows = 64;     // query rows per tile (all heads of a group)
  static constexpr index_t split_chunk_min = 1024;
  static constexpr index_t max_split_chunks = 64;

  index_t positions_per_tile = 1;  // query positions per tile; rows = group × positions
  index_t tiles_per_group = 0;     // ceil(Nq / positions_per_tile)
  index_t tiles = 0;               // B × Hkv × tiles_per_group
  index_t key_chunk = 0;           // keys per split chunk (Nk rounded when not split)
  index_t chunks = 1;
  bool split_keys = false;
  bool two_pass = false;  // diff only
  int threads = 1;
};

inline index_t rows_padded(index_t rows, index_t row_align) { return round_up(std::max<index_t>(rows, 1), row_align); }

template <class T>
struct FusedSizes {
  index_t row_align, dv_pad, key_span;
  explicit FusedSizes(const AttentionProblem& p)
      : row_align(std::max(micro_blocking<T>::qk_rows, micro_blocking<T>::pv_rows)),
        dv_pad(round_up(std::max<index_t>(p.value_dim, 1), micro_blocking<T>::lanes)),
        key_span(round_up(std::max<index_t>(p.kv_len, 1), micro_blocking<T>::lanes)) {}
};

/// Per-thread scratch: packed Q, a transposed K tile, a V tile, scores, accumulators.
template <class T>
struct ThreadWorkspace {
  ScratchArray<T> q1, q2, kt1, kt2, values, s1, s2, acc1, acc2, m1, l1, m2, l2;

  /// Bytes for a tile of `rows_pad` rows; `score_columns` is key_tile (streaming) or the
  /// padded key span (two-pass).
  static std::size_t bytes(const AttentionProblem& p, const FusedSizes<T>& sz, index_t rows_pad,
                           index_t score_columns, bool diff) {
    const index_t maps = diff ? 2 : 1;
    const index_t d = std::max<index_t>(p.head_dim, 1);
    const index_t elements = maps * rows_pad * d + maps * d * FusedPlan::key_tile +
                             FusedPlan::key_tile * sz.dv_pad + maps * rows_pad * score_columns +
                             maps * rows_pad * sz.dv_pad + 4 * rows_pad;
    return static_cast<std::size_t>(elements) * sizeof(T);
  }

  void reserve(const AttentionProblem& p, const FusedSizes<T>& sz, index_t rows_pad,
               index_t score_columns, bool diff) {
    const index_t d = std::max<index_t>(p.head_dim, 1);
    q1.reserve(rows_pad * d);
    kt1.reserve(d * FusedPlan::key_tile);
    values.reserve(FusedPlan::key_tile * sz.dv_pad);
    s1.reserve(rows_pad * score_columns);
    acc1.reserve(rows_pad * sz.dv_pad);
    m1.reserve(rows_pad);
    l1.reserve(rows_pad);
    if (diff) {
      q2.reserve(rows_pad * d);
      kt2.reserve(d * FusedPlan::key_tile);
      s2.reserve(rows_pad * score_columns);
      acc2.reserve(rows_pad * sz.dv_pad);
      m2.reserve(rows_pad);
      l2.reserve(rows_pad);
    }
  }
};

/// The query rows of one tile: every head of kv group `kv_head`, positions [first, last).
/// Row r is head kv_head·group + r / positions at position first + r % positions.
struct QueryTile {
  index_t batch, kv_head, first, last;
  index_t positions() const { return last - first; }
};

inline QueryTile tile_at(const AttentionProblem& p, const FusedPlan& plan, index_t tile) {
  const index_t t = tile % plan.tiles_per_group;
  const index_t kv_head = (tile / plan.tiles_per_group) % p.kv_heads;
  const index_t batch = tile / plan.tiles_per_group / p.kv_heads;
  const index_t first = t * plan.positions_per_tile;
  return {batch, kv_head, first, std::min(p.q_len, first + plan.positions_per_tile)};
}

/// Copies the tile's query rows, times scale·log2 e, into q_packed [rows_pad, D];
/// padding rows are zero so their scores are zero and never reach an output.
template <class T>
void pack_queries(TensorView<const T, 4> q, const AttentionProblem& p, const QueryTile& tile,
                  index_t rows_pad, T factor, T* q_packed) {
  const index_t positions = tile.positions();
  const index_t rows = p.group * positions;
  for (index_t r = 0; r < rows; ++r) {
    const T* src = &q(tile.batch, tile.kv_head * p.group + r / positions, tile.first + r % positions, 0);
    T* dst = q_packed + r * p.head_dim;
    for (index_t c = 0; c < p.head_dim; ++c) dst[c] = src[c] * factor;
  }
  std::fill(q_packed + rows * p.head_dim, q_packed + rows_pad * p.head_dim, T(0));
}

/// kt [D, columns] = K[first .. first + count)ᵀ, zero beyond count.
template <class T>
void pack_keys_transposed(TensorView<const T, 4> k, const AttentionProblem& p, index_t batch,
                          index_t kv_head, index_t first, index_t count, index_t columns, T* kt) {
  for (index_t j = 0; j < count; ++j) {
    const T* src = &k(batch, kv_head, first + j, 0);
    for (index_t c = 0; c < p.head_dim; ++c) kt[c * columns + j] = src[c];
  }
  for (index_t c = 0; c < p.head_dim; ++c) std::fill(kt + c * columns + count, kt + (c + 1) * columns, T(0));
}

/// values [count, dv_pad] = V[first .. first + count), zero-padded in width.
template <class T>
void pack_values(TensorView<const T, 4> v, const AttentionProblem& p, index_t batch,
                 index_t kv_head, index_t first, index_t count, index_t dv_pad, T* values) {
  for (index_t j = 0; j < count; ++j) {
    const T* src = &v(batch, kv_head, first + j, 0);
    T* dst = values + j * dv_pad;
    std::copy(src, src + p.value_dim, dst);
    std::fill(dst + p.value_dim, dst + dv_pad, T(0));
  }
}

/// Scores of the tile's rows against keys [first, first + count) into s (row stride
/// s_stride, columns [0, count_pad)): Q·Kᵀ, plus mask·log2 e, −inf past each row's causal
/// limit and in the padding columns.
template <class T>
void score_key_tile(const FusedArgs<T>& a, const QueryTile& tile, index_t rows_pad,
                    const T* q_packed, const T* kt, index_t first, index_t count,
                    index_t count_pad, T* s, index_t s_stride) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  const AttentionProblem& p = a.problem;
  qk_tile(q_packed, p.head_dim, rows_pad, kt, count_pad, count_pad, p.head_dim, s, s_stride);
  const index_t positions = tile.positions();
  const index_t rows = p.group * positions;
  const T log2e = static_cast<T>(1.4426950408889634074);
  for (index_t r = 0; r < rows; ++r) {
    T* row = s + r * s_stride;
    const index_t head = tile.kv_head * p.group + r / positions;
    const index_t position = tile.first + r % positions;
    if (p.has_mask) {
      const T* mask_row = &a.mask(tile.batch, head, position, first);
      index_t j = 0;
      for (; j + lanes <= count; j += lanes) {
        simd_fma(B::load_unaligned(mask_row + j), B(log2e), B::load_unaligned(row + j))
            .store_unaligned(row + j);
      }
      for (; j < count; ++j) row[j] = std::fma(mask_row[j], log2e, row[j]);
    }
    const index_t visible = std::clamp<index_t>(p.key_limit(position) - first, 0, count);
    std::fill(row + visible, row + count_pad, minus_inf);
  }
}

/// Largest value of row[0, columns) (columns a multiple of the batch width). A NaN may or
/// may not be returned; either way it reaches the output through exp2.
template <class T>
T row_max(const T* row, index_t columns) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  B best(-std::numeric_limits<T>::infinity());
  for (index_t j = 0; j < columns; j += lanes) best = simd_max(B::load_unaligned(row + j), best);
  return simd_hmax(best);
}

/// True if row[0, columns) holds a NaN. Only asked for rows whose max is −inf, where a
/// NaN could otherwise hide behind "no visible key".
template <class T>
bool row_has_nan(const T* row, index_t columns) {
  for (index_t j = 0; j < columns; ++j) {
    if (std::isnan(row[j])) return true;
  }
  return false;
}

/// row[j] = 2^(row[j] − shift) in place; returns the sum.
template <class T>
T exp2_shifted_in_place(T* row, index_t columns, T shift) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  // Two partial sums: the exp2 chain is long, the adds are not the bottleneck, but the
  // fixed pairing keeps the summation order independent of everything but `columns`.
  B sum0(T(0)), sum1(T(0));
  const B offset(shift);
  index_t j = 0;
  for (; j + 2 * lanes <= columns; j += 2 * lanes) {
    const B e0 = exp2_nonpositive(B::load_unaligned(row + j) - offset);
    const B e1 = exp2_nonpositive(B::load_unaligned(row + j + lanes) - offset);
    e0.store_unaligned(row + j);
    e1.store_unaligned(row + j + lanes);
    sum0 = sum0 + e0;
    sum1 = sum1 + e1;
  }
  for (; j < columns; j += lanes) {
    const B e = exp2_nonpositive(B::load_unaligned(row + j) - offset);
    e.store_unaligned(row + j);
    sum0 = sum0 + e;
  }
  return simd_sum(sum0 + sum1);
}

template <class T>
void scale_row(T* row, index_t columns, T factor) {
  using B = native_batch<T>;
  constexpr index_t lanes = static_cast<index_t>(B::size);
  for (index_t j = 0; j < columns; j += lanes) {
    (B::load_unaligned(row + j) * B(factor)).store_unaligned(row + j);
  }
}

/// Online softmax state of a tile's rows: running max m, sum l, accumulator acc.
template <class T>
struct FlashState {
  T* m;
  T* l;
  T* acc;  // [rows_pad, dv_pad]
};

template <class T>
void flash_reset(FlashState<T> st, index_t rows_pad, index_t dv_pad) {
  std::fill(st.m, st.m + rows_pad, -std::numeric_limits<T>::infinity());
  std::fill(st.l, st.l + rows_pad, T(0));
  std::fill(st.acc, st.acc + rows_pad * dv_pad, T(0));
}

/// Turns a key tile's scores into P in place and updates (m, l), rescaling acc rows
/// whose max grew. Rows that have seen no key yet keep m = −inf and get P = 0.
template <class T>
void flash_softmax_update(FlashState<T> st, index_t rows, T* s, index_t s_stride,
                          index_t count_pad, index_t dv_pad) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  for (index_t r = 0; r < rows; ++r) {
    T* row = s + r * s_stride;
    const T tile_max = row_max(row, count_pad);
    const T m_old = st.m[r];
    const T m_new = tile_max > m_old ? tile_max : m_old;
    if (m_new == minus_inf) {
      if (row_has_nan(row, count_pad)) {  // NaN logits among masked ones: the row is NaN
        st.m[r] = st.l[r] = std::numeric_limits<T>::quiet_NaN();
        std::fill(row, row + count_pad, std::numeric_limits<T>::quiet_NaN());
      } else {
        std::fill(row, row + count_pad, T(0));
      }
      continue;
    }
    const T row_sum = exp2_shifted_in_place(row, count_pad, m_new);
    if (m_new != m_old) {
      const T alpha = m_old == minus_inf ? T(0) : std::exp2(m_old - m_new);
      st.l[r] = st.l[r] * alpha + row_sum;
      if (m_old != minus_inf) scale_row(st.acc + r * dv_pad, dv_pad, alpha);
    } else {
      st.l[r] += row_sum;
    }
    st.m[r] = m_new;
  }
}

/// Streams keys [key_begin, key_end) of one map through the online softmax state.
/// With `second`, the diff map 2 streams alongside, sharing each V tile (and K tile
/// when k2 is k1).
template <class T>
void flash_stream(const FusedArgs<T>& a, const QueryTile& tile, index_t rows_pad,
                  const FusedSizes<T>& sz, ThreadWorkspace<T>& ws, index_t key_begin,
                  index_t key_end, FlashState<T> first_state, const FlashState<T>* second_state) {
  const AttentionProblem& p = a.problem;
  const index_t rows = p.group * tile.positions();
  constexpr index_t lanes = micro_blocking<T>::lanes;
  for (index_t j0 = key_begin; j0 < key_end; j0 += FusedPlan::key_tile) {
    const index_t count = std::min(FusedPlan::key_tile, key_end - j0);
    const index_t count_pad = round_up(count, lanes);
    pack_keys_transposed(a.k1, p, tile.batch, tile.kv_head, j0, count, count_pad, ws.kt1.data());
    score_key_tile(a, tile, rows_pad, ws.q1.data(), ws.kt1.data(), j0, count, count_pad,
                   ws.s1.data(), FusedPlan::key_tile);
    flash_softmax_update(first_state, rows, ws.s1.data(), FusedPlan::key_tile, count_pad, sz.dv_pad);
    if (second_state != nullptr) {
      const T* kt2 = ws.kt1.data();
      if (!a.shared_keys) {
        pack_keys_transposed(a.k2, p, tile.batch, tile.kv_head, j0, count, count_pad, ws.kt2.data());
        kt2 = ws.kt2.data();
      }
      score_key_tile(a, tile, rows_pad, ws.q2.data(), kt2, j0, count, count_pad, ws.s2.data(),
                     FusedPlan::key_tile);
      flash_softmax_update(*second_state, rows, ws.s2.data(), FusedPlan::key_tile, count_pad,
                           sz.dv_pad);
    }
    pack_values(a.v, p, tile.batch, tile.kv_head, j0, count, sz.dv_pad, ws.values.data());
    pv_accumulate(ws.s1.data(), FusedPlan::key_tile, rows_pad, count, ws.values.data(), sz.dv_pad,
                  sz.dv_pad, first_state.acc, sz.dv_pad);
    if (second_state != nullptr) {
      pv_accumulate(ws.s2.data(), FusedPlan::key_tile, rows_pad, count, ws.values.data(),
                    sz.dv_pad, sz.dv_pad, second_state->acc, sz.dv_pad);
    }
  }
}

/// Merges the per-chunk states [chunks][...] of a split tile into `merged`, in chunk
/// order: acc = Σ acc_c·2^(m_c − m), l = Σ l_c·2^(m_c − m), m = max m_c.
template <class T>
void merge_chunk_states(const FlashState<T>* chunk_states, index_t chunks, index_t rows,
                        index_t dv_pad, FlashState<T> merged) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  for (index_t r = 0; r < rows; ++r) {
    T m = minus_inf;
    bool saw_nan = false;
    for (index_t c = 0; c < chunks; ++c) {
      saw_nan = saw_nan || std::isnan(chunk_states[c].m[r]);
      m = chunk_states[c].m[r] > m ? chunk_states[c].m[r] : m;
    }
    if (saw_nan) m = std::numeric_limits<T>::quiet_NaN();
    merged.m[r] = m;
    merged.l[r] = saw_nan ? m : T(0);
    T* acc = merged.acc + r * dv_pad;
    std::fill(acc, acc + dv_pad, saw_nan ? m : T(0));
    if (m == minus_inf || saw_nan) continue;
    for (index_t c = 0; c < chunks; ++c) {
      const T m_c = chunk_states[c].m[r];
      if (m_c == minus_inf) continue;
      const T weight = std::exp2(m_c - m);
      merged.l[r] += chunk_states[c].l[r] * weight;
      const T* part = chunk_states[c].acc + r * dv_pad;
      for (index_t d = 0; d < dv_pad; ++d) acc[d] = std::fma(part[d], weight, acc[d]);
    }
  }
}

/// Writes the tile's outputs: acc1/l1 (standard) or acc1/l1 − λ·acc2/l2 (diff, streaming).
/// A map whose row saw no key contributes zero.
template <class T>
void write_flash_output(const FusedArgs<T>& a, const QueryTile& tile, index_t dv_pad,
                        FlashState<T> first, const FlashState<T>* second) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  const AttentionProblem& p = a.problem;
  const index_t positions = tile.positions();
  for (index_t r = 0; r < p.group * positions; ++r) {
    const index_t head = tile.kv_head * p.group + r / positions;
    const index_t position = tile.first + r % positions;
    T* out = &a.out(tile.batch, head, position, 0);
    const T* acc1 = first.acc + r * dv_pad;
    const T inv1 = first.m[r] == minus_inf ? T(0) : T(1) / first.l[r];
    if (second == nullptr) {
      for (index_t d = 0; d < p.value_dim; ++d) out[d] = first.m[r] == minus_inf ? T(0) : acc1[d] / first.l[r];
      continue;
    }
    const T* acc2 = second->acc + r * dv_pad;
    const T weight2 = second->m[r] == minus_inf ? T(0) : a.lambda(tile.batch, head, position) / second->l[r];
    for (index_t d = 0; d < p.value_dim; ++d) out[d] = acc1[d] * inv1 - acc2[d] * weight2;
  }
}

/// Differential attention for one tile, two-pass: scores of both maps against all visible
/// keys, exact softmax per row, P = P1 − λ·P2 in place, one P·V product.
template <class T>
void diff_two_pass_tile(const FusedArgs<T>& a, const QueryTile& tile, index_t rows_pad,
                        const FusedSizes<T>& sz, ThreadWorkspace<T>& ws) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  constexpr index_t lanes = micro_blocking<T>::lanes;
  const AttentionProblem& p = a.problem;
  const index_t positions = tile.positions();
  const index_t rows = p.group * positions;
  const index_t key_end = p.key_limit(tile.last - 1);  // the last position sees the most keys
  const index_t span = round_up(std::max<index_t>(key_end, 1), lanes);
  const index_t stride = sz.key_span;
  for (index_t j0 = 0; j0 < key_end; j0 += FusedPlan::key_tile) {
    const index_t count = std::min(FusedPlan::key_tile, key_end - j0);
    const index_t count_pad = round_up(count, lanes);
    pack_keys_transposed(a.k1, p, tile.batch, tile.kv_head, j0, count, count_pad, ws.kt1.data());
    score_key_tile(a, tile, rows_pad, ws.q1.data(), ws.kt1.data(), j0, count, count_pad,
                   ws.s1.data() + j0, stride);
    const T* kt2 = ws.kt1.data();
    if (!a.shared_keys) {
      pack_keys_transposed(a.k2, p, tile.batch, tile.kv_head, j0, count, count_pad, ws.kt2.data());
      kt2 = ws.kt2.data();
    }
    score_key_tile(a, tile, rows_pad, ws.q2.data(), kt2, j0, count, count_pad,
                   ws.s2.data() + j0, stride);
  }
  // With key_end = 0 no row sees a key: the loops below skip and the output is zero.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (index_t r = 0; r < rows && key_end > 0; ++r) {
    T* row1 = ws.s1.data() + r * stride;
    T* row2 = ws.s2.data() + r * stride;
    const T m1 = row_max(row1, span);
    const T m2 = row_max(row2, span);
    const T l1 = m1 == minus_inf ? T(0) : exp2_shifted_in_place(row1, span, m1);
    const T l2 = m2 == minus_inf ? T(0) : exp2_shifted_in_place(row2, span, m2);
    const index_t head = tile.kv_head * p.group + r / positions;
    const index_t position = tile.first + r % positions;
    // A map with no visible key contributes zero, unless NaN logits hid among −inf ones.
    const T weight1 = m1 != minus_inf ? T(1) / l1 : row_has_nan(row1, span) ? nan : T(0);
    const T weight2 = m2 != minus_inf ? a.lambda(tile.batch, head, position) / l2
                                      : row_has_nan(row2, span) ? nan : T(0);
    using B = native_batch<T>;
    for (index_t j = 0; j < span; j += lanes) {
      // −inf rows (no visible key) hold −inf scores: zero them instead of exp2-ing.
      const B e1 = m1 == minus_inf ? B(T(0)) : B::load_unaligned(row1 + j);
      const B e2 = m2 == minus_inf ? B(T(0)) : B::load_unaligned(row2 + j);
      (e1 * B(weight1) - e2 * B(weight2)).store_unaligned(row1 + j);
    }
  }
  std::fill(ws.acc1.data(), ws.acc1.data() + rows_pad * sz.dv_pad, T(0));
  for (index_t j0 = 0; j0 < key_end; j0 += FusedPlan::key_tile) {
    const index_t count = std::min(FusedPlan::key_tile, key_end - j0);
    pack_values(a.v, p, tile.batch, tile.kv_head, j0, count, sz.dv_pad, ws.values.data());
    pv_accumulate(ws.s1.data() + j0, stride, rows_pad, count, ws.values.data(), sz.dv_pad,
                  sz.dv_pad, ws.acc1.data(), sz.dv_pad);
  }
  for (index_t r = 0; r < rows; ++r) {
    const index_t head = tile.kv_head * p.group + r / positions;
    const index_t position = tile.first + r % positions;
    const T* acc = ws.acc1.data() + r * sz.dv_pad;
    std::copy(acc, acc + p.value_dim, &a.out(tile.batch, head, position, 0));
  }
}

template <class T>
FusedPlan make_plan(const FusedArgs<T>& a, const FusedSizes<T>& sz, int requested_threads,
                    std::size_t workspace_limit) {
  const AttentionProblem& p = a.problem;
  FusedPlan plan;
  const index_t groups = p.batch * p.kv_heads;
  // Method decisions use the shapes and the limit only (bitwise thread independence).
  const index_t min_rows_pad = rows_padded(p.group, sz.row_align);
  plan.two_pass =
      a.diff && ThreadWorkspace<T>::bytes(p, sz, min_rows_pad, sz.key_span, true) <= workspace_limit;
  index_t positions = std::max<index_t>(1, FusedPlan::target_rows / p.group);
  positions = std::min(positions, std::max<index_t>(p.q_len, 1));
  const index_t natural_tiles = groups * ((p.q_len + positions - 1) / positions);
  if (natural_tiles < 8 && p.kv_len >= 4 * FusedPlan::split_chunk_min) {
    const index_t key_chunk = std::max(FusedPlan::split_chunk_min,
                                       round_up((p.kv_len + FusedPlan::max_split_chunks - 1) /
                                                    FusedPlan::max_split_chunks,
                                                FusedPlan::key_tile));
    const index_t chunks = (p.kv_len + key_chunk - 1) / key_chunk;
    const index_t state_bytes = natural_tiles * chunks * (a.diff ? 2 : 1) *
                                rows_padded(p.group * positions, sz.row_align) *
                                (sz.dv_pad + 2) * static_cast<index_t>(sizeof(T));
    if (static_cast<std::size_t>(state_bytes) <= workspace_limit / 2) {
      plan.key_chunk = key_chunk;
      plan.chunks = chunks;
      plan.split_keys = true;
      plan.two_pass = false;  // decoding: bandwidth-bound, stream both maps
    }
  }
  plan.threads = resolve_threads(requested_threads, natural_tiles * plan.chunks);
  if (plan.two_pass) {
    // Shrink the tile until every thread's rows × Nk workspace fits the limit.
    while (positions > 1 &&
           static_cast<std::size_t>(plan.threads) *
                   ThreadWorkspace<T>::bytes(p, sz, rows_padded(p.group * positions, sz.row_align),
                                             sz.key_span, true) >
               workspace_limit) {
      positions = (positions + 1) / 2;
    }
    while (plan.threads > 1 &&
           static_cast<std::size_t>(plan.threads) *
                   ThreadWorkspace<T>::bytes(p, sz, rows_padded(p.group * positions, sz.row_align),
                                             sz.key_span, true) >
               workspace_limit) {
      --plan.threads;
    }
  }
  plan.positions_per_tile = positions;
  plan.tiles_per_group = (p.q_len + positions - 1) / positions;
  plan.tiles = groups * plan.tiles_per_group;
  if (!plan.split_keys) plan.key_chunk = std::max<index_t>(p.kv_len, 1);
  return plan;
}

/// Runs the whole call. Arguments are validated by the caller.
template <class T>
void fused_attention(const FusedArgs<T>& a, int requested_threads, std::size_t workspace_limit) {
  const AttentionProblem& p = a.problem;
  if (p.batch == 0 || p.q_heads == 0 || p.q_len == 0 || p.value_dim == 0) return;
  const FusedSizes<T> sz(p);
  const FusedPlan plan = make_plan(a, sz, requested_threads, workspace_limit);
  const index_t rows_pad = rows_padded(p.group * plan.positions_per_tile, sz.row_align);
  const index_t score_columns = plan.two_pass ? sz.key_span : FusedPlan::key_tile;
  const index_t maps = a.diff ? 2 : 1;
  const T logit_factor = static_cast<T>(p.scale * 1.4426950408889634074);

  // Everything is allocated here, before any thread starts.
  std::vector<ThreadWorkspace<T>> workspaces(static_cast<std::size_t>(plan.threads));
  for (auto& ws : workspaces) ws.reserve(p, sz, rows_pad, score_columns, a.diff);
  ScratchArray<T> chunk_storage;  // split keys: per (tile, chunk, map) states
  const index_t state_size = rows_pad * (sz.dv_pad + 2);
  if (plan.split_keys) chunk_storage.reserve(plan.tiles * plan.chunks * maps * state_size);
  auto chunk_state = [&](index_t tile, index_t chunk, index_t map) {
    T* base = chunk_storage.data() + ((tile * plan.chunks + chunk) * maps + map) * state_size;
    return FlashState<T>{base, base + rows_pad, base + 2 * rows_pad};
  };

  const index_t items = plan.tiles * plan.chunks;
  // Causal tiles late in the sequence cost the most: hand them out first.
  auto item_at = [&](index_t w) { return p.causal ? items - 1 - w : w; };

#if defined(_OPENMP)
#pragma omp parallel num_threads(plan.threads)
#endif
  {
    ThreadWorkspace<T>& ws = workspaces[static_cast<std::size_t>(current_thread())];
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (index_t w = 0; w < items; ++w) {
      const index_t item = item_at(w);
      const index_t tile_index = item / plan.chunks;
      const index_t chunk = item % plan.chunks;
      const QueryTile tile = tile_at(p, plan, tile_index);
      pack_queries(a.q1, p, tile, rows_pad, logit_factor, ws.q1.data());
      if (a.diff) pack_queries(a.q2, p, tile, rows_pad, logit_factor, ws.q2.data());
      if (plan.two_pass) {
        diff_two_pass_tile(a, tile, rows_pad, sz, ws);
        continue;
      }
      const index_t key_end = p.key_limit(tile.last - 1);
      FlashState<T> first{ws.m1.data(), ws.l1.data(), ws.acc1.data()};
      FlashState<T> second{ws.m2.data(), ws.l2.data(), ws.acc2.data()};
      if (plan.split_keys) {
        first = chunk_state(tile_index, chunk, 0);
        if (a.diff) second = chunk_state(tile_index, chunk, 1);
      }
      flash_reset(first, rows_pad, sz.dv_pad);
      if (a.diff) flash_reset(second, rows_pad, sz.dv_pad);
      const index_t key_begin = chunk * plan.key_chunk;
      const index_t chunk_end = std::min(key_end, key_begin + plan.key_chunk);
      flash_stream(a, tile, rows_pad, sz, ws, key_begin, chunk_end, first,
                   a.diff ? &second : nullptr);
      if (!plan.split_keys) write_flash_output(a, tile, sz.dv_pad, first, a.diff ? &second : nullptr);
    }
    if (plan.split_keys) {
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (index_t tile_index = 0; tile_index < plan.tiles; ++tile_index) {
        const QueryTile tile = tile_at(p, plan, tile_index);
        const index_t rows = p.group * tile.positions();
        FlashState<T> parts[FusedPlan::max_split_chunks];
        FlashState<T> merged[2] = {{ws.m1.data(), ws.l1.data(), ws.acc1.data()},
                                   {ws.m2.data(), ws.l2.data(), ws.acc2.data()}};
        for (index_t map = 0; map < maps; ++map) {
          for (index_t c = 0; c < plan.chunks; ++c) parts[c] = chunk_state(tile_index, c, map);
          merge_chunk_states(parts, plan.chunks, rows, sz.dv_pad, merged[map]);
        }
        write_flash_output(a, tile, sz.dv_pad, merged[0], a.diff ? &merged[1] : nullptr);
      }
    }
  }
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
