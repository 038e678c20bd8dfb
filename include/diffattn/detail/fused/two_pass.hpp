#pragma once
/// Method::two_pass: differential attention at the FLOPs of standard attention with twice
/// the heads, 2·Nq·Nk·(2D + Dv), by forming P = softmax(S1) − λ·softmax(S2) before one
/// P·V product. Needs a rows × Nk workspace per thread (make_plan checks it fits).

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "diffattn/detail/fused/bf16_products.hpp"
#include "diffattn/detail/fused/online_softmax.hpp"
#include "diffattn/detail/fused/scores.hpp"
#include "diffattn/detail/fused/tile.hpp"
#include "diffattn/detail/kernels/value_tile.hpp"
#include "diffattn/detail/simd.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

/// Differential attention for one tile, two-pass with one P·V product.
/// Pass 1, per key tile: scores of both maps, then (while the tile is in L1) 2^(s − m)
/// against each row's running max m, the running sums l, and the m each key tile used.
/// A workspace too large to stay in cache (plan.stream_workspace) is written with
/// non-temporal stores from an L1 tile rather than in place.
/// Pass 2, per key tile: P = e1·2^(m1_t − m1)/l1 − e2·λ·2^(m2_t − m2)/l2 into an L1
/// tile, then P·V. The rows × Nk workspace is written once and read once; forming P
/// only after every key is seen is what keeps a single P·V product (two online states
/// would need two), and few sweeps of the workspace keep it fast once it leaves L2
/// (docs/tuning.md, "diff_two_pass_tile (exponentials against the running max)").
template <class T>
void diff_two_pass_tile(const TileContext<T>& c) {
  const FusedArgs<T>& a = c.args();
  const FusedPlan& plan = c.plan();
  const QueryTile& tile = c.tile;
  const index_t rows_pad = c.rows_pad();
  const FusedSizes<T>& sz = c.call.sizes;
  ThreadWorkspace<T>& ws = c.ws;
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  const AttentionProblem& p = a.problem;
  const index_t rows = c.rows();
  const index_t key_end = p.key_limit(tile.last - 1);  // the last position sees the most keys
  T* st1 = ws.st1.data();
  T* st2 = ws.st2.data();
  const TileStats<T> stats = c.stats();
  T *m1 = stats.m1, *l1 = stats.l1, *m2 = stats.m2, *l2 = stats.l2;
  T *lambda_rows = stats.lambda, *rescale = stats.rescale;
  T* tile_max1 = ws.tile_max.data();  // [key tiles, rows_pad]: the m each tile's e used
  T* tile_max2 = tile_max1 + FusedPlan::key_tiles(key_end) * rows_pad;
  std::fill(m1, m1 + rows_pad, minus_inf);
  std::fill(m2, m2 + rows_pad, minus_inf);
  std::fill(l1, l1 + rows_pad, T(0));
  std::fill(l2, l2 + rows_pad, T(0));
  // One map's key tile [j0, j0 + count): 2^(s − m) into its workspace slice `e`, (m, l)
  // updated and the m it used recorded. Streaming: scores and exponentials in the L1
  // tile, then streamed out.
  auto map_tile = [&](const ElementView<T>& k, const T* qt, T* m, T* l, T* workspace, T* tile_max, index_t j0,
                      index_t count, index_t t) {
    T* e = workspace + j0 * rows_pad;
    T* work = plan.stream_workspace ? ws.p_tile.data() : e;
    score_keys(c, k, qt, j0, count, work);  // Sᵀ: two-pass tiles always keep it
    online_softmax_tile(m, l, work, rows_pad, count, rescale);
    if (plan.stream_workspace) stream_copy(work, e, count * rows_pad);
    std::copy(m, m + rows_pad, tile_max + t * rows_pad);
  };
  for (index_t j0 = 0, t = 0; j0 < key_end; j0 += FusedPlan::key_tile, ++t) {
    const index_t count = std::min(FusedPlan::key_tile, key_end - j0);
    map_tile(a.k1, ws.qt1.data(), m1, l1, st1, tile_max1, j0, count, t);
    map_tile(a.k2, ws.qt2.data(), m2, l2, st2, tile_max2, j0, count, t);
  }
  if (plan.stream_workspace) stream_fence();
  for (index_t r = 0; r < rows_pad; ++r) {
    lambda_rows[r] = r < rows ? a.lambda(tile.batch, tile.head(p, r), tile.position(r)) : T(0);
  }
  // Final per-row weights, kept in (l1, l2): 1/l1 and λ/l2; m1, m2 become safe shifts.
  for (index_t offset = 0; offset < rows_pad; offset += lanes) {
    simd_ratio_or_zero(B(T(1)), B::load_unaligned(l1 + offset)).store_unaligned(l1 + offset);
    simd_ratio_or_zero(B::load_unaligned(lambda_rows + offset), B::load_unaligned(l2 + offset))
        .store_unaligned(l2 + offset);
    safe_shift<T>(B::load_unaligned(m1 + offset)).store_unaligned(m1 + offset);
    safe_shift<T>(B::load_unaligned(m2 + offset)).store_unaligned(m2 + offset);
  }
  T* pt = ws.p_tile.data();
  std::fill(ws.acc1.data(), ws.acc1.data() + rows_pad * sz.dv_pad, T(0));
  // The key tile's per-row factors f = 2^(m_t − m)·(1/l or λ/l), kept in stats arrays
  // pass 2 does not otherwise use.
  T* factor1 = stats.keep1;
  T* factor2 = stats.keep2;
  for (index_t j0 = 0, t = 0; j0 < key_end; j0 += FusedPlan::key_tile, ++t) {
    const index_t count = std::min(FusedPlan::key_tile, key_end - j0);
    const T* e1 = st1 + j0 * rows_pad;
    const T* e2 = st2 + j0 * rows_pad;
    for (index_t offset = 0; offset < rows_pad; offset += lanes) {
      (exp2_nonpositive(B::load_unaligned(tile_max1 + t * rows_pad + offset) - B::load_unaligned(m1 + offset)) *
       B::load_unaligned(l1 + offset))
          .store_unaligned(factor1 + offset);
      (exp2_nonpositive(B::load_unaligned(tile_max2 + t * rows_pad + offset) - B::load_unaligned(m2 + offset)) *
       B::load_unaligned(l2 + offset))
          .store_unaligned(factor2 + offset);
    }
    if constexpr (bf16_dot_for<T>) {
      if (plan.bf16_products) {  // P straight to bf16 pairs
        std::uint32_t* pairs = pair_storage(ws.pairs.data());
        pack_difference_pairs(e1, e2, factor1, factor2, count, rows_pad, pairs);
        value_tile_bf16(pairs, rows_pad, rows, count, value_pairs(c, j0, count), sz.dv_pad, sz.dv_pad,
                        ws.acc1.data(), sz.dv_pad, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr));
        continue;
      }
    }
    for (index_t offset = 0; offset < rows_pad; offset += lanes) {
      const B f1 = B::load_unaligned(factor1 + offset), f2 = B::load_unaligned(factor2 + offset);
      for (index_t j = 0; j < count; ++j) {
        const index_t at = j * rows_pad + offset;
        (B::load_unaligned(e1 + at) * f1 - B::load_unaligned(e2 + at) * f2).store_unaligned(pt + at);
      }
    }
    with_value_rows(c, j0, count, [&](const auto* v, index_t v_stride) {
      value_tile(pt, rows_pad, index_t{1}, rows, count, v, v_stride, sz.dv_pad, ws.acc1.data(), sz.dv_pad);
    });
  }
  for (index_t r = 0; r < rows; ++r) {
    write_output_row(c, r, ws.acc1.data() + r * sz.dv_pad, static_cast<const T*>(nullptr), T(0));
  }
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
