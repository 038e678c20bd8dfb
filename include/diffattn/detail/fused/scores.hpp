#pragma once
/// A tile's scores against one key tile: the Q·Kᵀ products (score micro-kernels), the
/// additive mask and the causal limit, in the layout the method keeps them.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "diffattn/detail/fused/tile.hpp"
#include "diffattn/detail/simd/avx512_bf16.hpp"
#include "diffattn/detail/kernels/score_tile.hpp"
#include "diffattn/detail/simd.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

/// K·Qᵀ of the tile's rows against keys [first, first + count) into st, laid out as the
/// call's ScoreLayout says; with plan.pack_keys the K rows are first copied (converted to
/// T) one after another into the workspace. The head dimension is not 0.
template <class T, class E>
void score_products(const TileContext<T>& c, TensorView<const E, 4> k, const T* q_packed, index_t first,
                    index_t count, T* st) {
  const FusedPlan& plan = c.plan();
  const QueryTile& tile = c.tile;
  const ScoreLayout layout = c.call.layout;
  const index_t rows = c.rows();
  const index_t depth = k.extent(3);
  const E* keys = &k(tile.batch, tile.kv_head, first, 0);
  const index_t rows_pad = layout.stride;  // Sᵀ only
  if constexpr (bf16_dot_for<T> && std::is_same_v<E, bf16>) {
    if (plan.bf16_products) {
      score_tile_bf16(keys, k.stride(2), count, pair_storage(q_packed), rows_pad, depth, c.call.logit_factor, st,
                      rows_pad);
      return;
    }
  }
  if (plan.pack_keys) {
    T* key_buffer = c.ws.keys.data();
    pack_rows(keys, k.stride(2), count, depth, depth, key_buffer);
    score_tile(static_cast<const T*>(key_buffer), depth, count, q_packed, rows_pad, rows_pad, depth, st, rows_pad);
    return;
  }
  const index_t key_stride = k.stride(2);
  // Score (key j, row r) at st[j·at_key + r·at_row].
  auto dot_scores = [&](index_t at_key, index_t at_row) {
    if constexpr (bf16_dot_for<T> && std::is_same_v<E, bf16>) {
      if (plan.bf16_dot_scores) {
        score_tile_dot_bf16(keys, key_stride, count, reinterpret_cast<const bf16*>(q_packed), rows, depth,
                            c.call.logit_factor, st, at_key, at_row);
        return;
      }
    }
    score_tile_dot(keys, key_stride, count, q_packed, rows, depth, st, at_key, at_row);
  };
  if (layout.by_row) {
    dot_scores(index_t{1}, layout.stride);
  } else if (plan.dot_scores()) {  // fewer rows than lanes in an Sᵀ tile (two-pass): zero the padding lanes
    using B = native_batch<T>;
    for (index_t j = 0; j < count; ++j) {
      for (index_t r = 0; r < rows_pad; r += micro_blocking<T>::lanes) B(T(0)).store_unaligned(st + j * rows_pad + r);
    }
    dot_scores(rows_pad, index_t{1});
  } else if constexpr (std::is_same_v<T, E>) {
    score_tile(keys, key_stride, count, q_packed, rows_pad, rows_pad, depth, st, rows_pad);
  }
  // Half-precision prefill tiles always pack their keys (make_plan).
}

/// Scores of the tile's rows against keys [first, first + count) into st, laid out as
/// the call's ScoreLayout says: K·Qᵀ, plus mask·log2 e, and −inf past each row's causal
/// limit (and, for S, in each row's padding up to whole batches).
template <class T>
void score_keys(const TileContext<T>& c, const ElementView<T>& k, const T* q_packed, index_t first, index_t count,
                T* st) {
  const FusedArgs<T>& a = c.args();
  const AttentionProblem& p = a.problem;
  const QueryTile& tile = c.tile;
  const ScoreLayout layout = c.call.layout;
  if (count <= 0) return;
  const index_t rows = c.rows();
  if (p.head_dim == 0) {  // empty dot products (and k may have no storage to point into)
    const index_t row_slots = layout.by_row ? rows : layout.stride;  // Sᵀ zeroes its padding lanes too
    for (index_t j = 0; j < count; ++j) {
      for (index_t r = 0; r < row_slots; ++r) st[j * layout.key_stride() + r * layout.row_stride()] = T(0);
    }
  } else {
    k.visit([&](const auto& view) { score_products(c, view, q_packed, first, count, st); });
  }
  if (p.has_mask) {
    // A finite mask is a finite logit. Masks of lowest() (PyTorch's finfo.min masking)
    // overflow once in base-2 units; they keep the largest finite magnitude instead, so
    // that a row masked so on every key averages V, as the reference (in double) does.
    const T log2e = static_cast<T>(1.4426950408889634074);
    const T largest = std::numeric_limits<T>::max();
    const index_t at_key = layout.key_stride(), at_row = layout.row_stride();
    for (index_t r = 0; r < rows; ++r) {
      const T* mask_row = &a.mask(tile.batch, tile.head(p, r), tile.position(r), first);
      for (index_t j = 0; j < count; ++j) {
        T& score = st[j * at_key + r * at_row];
        const T logit = std::fma(mask_row[j], log2e, score);
        const bool overflowed = std::isinf(logit) && std::isfinite(mask_row[j]) && std::isfinite(score);
        score = overflowed ? std::copysign(largest, logit) : logit;
      }
    }
  }
  if (layout.by_row) {  // −inf past each row's causal limit and in its padding
    const index_t padded = round_up(count, micro_blocking<T>::lanes);
    for (index_t r = 0; r < rows; ++r) {
      const index_t visible = std::clamp<index_t>(p.key_limit(tile.position(r)) - first, 0, count);
      std::fill(st + r * layout.stride + visible, st + r * layout.stride + padded, -std::numeric_limits<T>::infinity());
    }
    return;
  }
  if (p.key_limit(tile.first) >= first + count) return;  // every row sees every key
  // Causal: −inf past each row's limit. Lane-wise over a batch of rows rather than row
  // by row down a column of st, a strided scalar store per masked score.
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  alignas(64) T visible[lanes];
  for (index_t offset = 0; offset < rows; offset += lanes) {
    index_t fewest = count;
    for (index_t lane = 0; lane < lanes; ++lane) {
      const index_t r = offset + lane;
      const index_t keys_seen =
          r < rows ? std::clamp<index_t>(p.key_limit(tile.position(r)) - first, 0, count) : count;
      visible[lane] = static_cast<T>(keys_seen);
      fewest = std::min(fewest, keys_seen);
    }
    const B limit = B::load_unaligned(visible);
    for (index_t j = fewest; j < count; ++j) {
      T* scores = st + j * layout.stride + offset;  // Sᵀ: rows_pad apart
      simd_hide_from(B(static_cast<T>(j)), limit, B::load_unaligned(scores)).store_unaligned(scores);
    }
  }
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
