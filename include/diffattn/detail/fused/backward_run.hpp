#pragma once
/// The driver of the fused backward pass behind diffattn::softmax_attention_backward and
/// diff_attention_backward: plans the call, hands out work items, and sums the key
/// gradients. backward_tile.hpp computes one query tile.
///
/// A work item is one kv head (all query heads of its group) and one segment of its query
/// tiles (tiles s, s + S, s + 2S, …). The item owns its dQ rows outright and sums dK and
/// dV over its tiles in order, into its own accumulators; with S > 1 segments the
/// segments' sums then add in segment order. S comes from the shapes and the workspace
/// limit only, so the results are bitwise identical for any thread count, with no
/// atomics and no order that depends on scheduling.

#include <algorithm>
#include <cstddef>
#include <vector>

#include "diffattn/detail/fused/backward_tile.hpp"
#include "diffattn/detail/fused/plan.hpp"
#include "diffattn/detail/fused/tile.hpp"
#include "diffattn/detail/workspace.hpp"

namespace diffattn {
namespace detail {

/// How a backward call is cut into work items.
struct BackwardPlan {
  /// Work items wanted: kv heads × segments; segments are added until there are this many
  /// (so that a call with few heads still spreads over the cores), as the workspace allows.
  static constexpr index_t target_items = 16;
  /// Query rows per tile (all heads of a group), as the forward's: the summed dimension
  /// of the dK and dV products (docs/tuning.md, "BackwardPlan::target_rows").
  static constexpr index_t target_rows = 64;
  FusedPlan tiles;        // query tiles: positions_per_tile, tiles_per_group, pack_keys
  index_t segments = 1;   // query-tile segments per kv head
  index_t items = 0;      // B × Hkv × segments
  int threads = 1;
  /// Each item's dK/dV sums live in the thread's workspace and go straight to dk/dv
  /// (segments == 1), or in the shared partial sums that a last step adds up.
  bool own_accumulators() const { return segments == 1; }
};

/// Elements of one segment's dK and dV sums: [Nk, d_pad] per key map, [Nk, dv_pad].
template <class T>
index_t segment_elements(const AttentionProblem& p, const BackwardSizes<T>& sz, index_t key_maps) {
  return size_mul(std::max<index_t>(p.kv_len, 1), size_add(size_mul(key_maps, sz.d_pad), sz.dv_pad));
}

template <class T>
BackwardPlan make_backward_plan(const BackwardArgs<T>& b, const BackwardSizes<T>& sz, int requested_threads,
                                std::size_t workspace_limit) {
  const FusedArgs<T>& a = b.forward;
  const AttentionProblem& p = a.problem;
  BackwardPlan plan;
  const index_t groups = p.batch * p.kv_heads;
  const index_t key_maps = a.diff && !b.shared_dk ? 2 : 1;
  // Tile height and segments follow from the shapes and the limit, never the thread
  // count: both change the order in which dK and dV sum.
  index_t positions = std::min(std::max<index_t>(1, BackwardPlan::target_rows / p.group), std::max<index_t>(p.q_len, 1));
  auto thread_bytes = [&](index_t pos) {
    return size_bytes<T>(
        BackwardWorkspace<T>::elements(p, sz, FusedSizes<T>::rows_padded(p.group * pos), a.diff, true));
  };
  while (positions > 1 && !fits_in(thread_bytes(positions), workspace_limit / 2)) positions = (positions + 1) / 2;
  plan.tiles.positions_per_tile = positions;
  plan.tiles.tiles_per_group = (p.q_len + positions - 1) / positions;
  plan.tiles.tiles = groups * plan.tiles.tiles_per_group;
  // The score code reads K in place only when it holds T; half-precision K is converted
  // as a key tile is packed, as the forward's prefill tiles do.
  plan.tiles.pack_keys = a.k1.stride(2) != p.head_dim || (a.diff && a.k2.stride(2) != p.head_dim) ||
                         a.k1.element() != Element::compute;
  plan.segments = std::clamp<index_t>((BackwardPlan::target_items + groups - 1) / std::max<index_t>(groups, 1), 1,
                                      std::max<index_t>(plan.tiles.tiles_per_group, 1));
  while (plan.segments > 1 &&
         !fits_in(size_bytes<T>(size_mul(groups, plan.segments, segment_elements(p, sz, key_maps))),
                  workspace_limit / 2)) {
    --plan.segments;
  }
  plan.items = groups * plan.segments;
  plan.threads = resolve_threads(requested_threads, plan.items);
  while (plan.threads > 1 && !fits_in(size_mul(plan.threads, thread_bytes(positions)), workspace_limit)) --plan.threads;
  plan.tiles.threads = plan.threads;
  return plan;
}

/// The calling thread's backward scratch, kept between calls as the forward's is.
template <class T>
struct BackwardScratch {
  std::vector<BackwardWorkspace<T>> workspaces;
  ScratchArray<T> partials;      // segments > 1: every item's dK/dV sums
  ScratchArray<T> dlambda_rows;  // [B, Hq, Nq]
};

template <class T>
BackwardScratch<T>& backward_scratch() {
  thread_local BackwardScratch<T> scratch;
  return scratch;
}

/// Writes keys [first, first + count) of kv head (batch, kv_head) from sums laid out as
/// KeyGradients (rows d_pad / dv_pad apart), converted to each gradient's type.
template <class T>
void write_key_gradients(const BackwardArgs<T>& b, const BackwardSizes<T>& sz, index_t batch, index_t kv_head,
                         KeyGradients<T> sums, index_t first, index_t count) {
  const AttentionProblem& p = b.forward.problem;
  auto write = [&](const T* src, index_t pad, const ElementView<T, true>& dst, index_t width) {
    if (width == 0) return;
    dst.visit([&](const auto& view) {
      for (index_t j = first; j < first + count; ++j) convert_row(src + j * pad, width, &view(batch, kv_head, j, 0));
    });
  };
  write(sums.dk1, sz.d_pad, b.dk1, p.head_dim);
  if (b.forward.diff && !b.shared_dk) write(sums.dk2, sz.d_pad, b.dk2, p.head_dim);
  write(sums.dv, sz.dv_pad, b.dv, p.value_dim);
}

/// Zero gradients for a call with no work (an empty extent): every key a row could read
/// gets none, and every row reads nothing.
template <class T>
void zero_gradients(const BackwardArgs<T>& b) {
  auto zero = [](const ElementView<T, true>& g) {
    g.visit([](const auto& view) {
      using E = std::remove_reference_t<decltype(view(0, 0, 0, 0))>;
      for (index_t i0 = 0; i0 < view.extent(0); ++i0)
        for (index_t i1 = 0; i1 < view.extent(1); ++i1)
          for (index_t i2 = 0; i2 < view.extent(2); ++i2)
            for (index_t i3 = 0; i3 < view.extent(3); ++i3) view(i0, i1, i2, i3) = E(0);
    });
  };
  zero(b.dq1);
  zero(b.dk1);
  zero(b.dv);
  if (b.forward.diff) {
    zero(b.dq2);
    zero(b.dk2);
  }
}

/// Runs a validated backward call. b.dlambda_rows is set here (diff calls).
template <class T>
void fused_backward(BackwardArgs<T>& b, int requested_threads, std::size_t workspace_limit) {
  const FusedArgs<T>& a = b.forward;
  const AttentionProblem& p = a.problem;
  BackwardScratch<T>& scratch = backward_scratch<T>();
  if (a.diff) {
    scratch.dlambda_rows.reserve(std::max<index_t>(size_mul(p.batch, p.q_heads, p.q_len), 1));
    b.dlambda_rows = scratch.dlambda_rows.data();
    std::fill(b.dlambda_rows, b.dlambda_rows + p.batch * p.q_heads * p.q_len, T(0));
  }
  if (p.batch == 0 || p.q_heads == 0 || p.q_len == 0 || p.kv_len == 0) {
    zero_gradients(b);
    return;
  }
  const BackwardSizes<T> sz(p);
  const BackwardPlan plan = make_backward_plan(b, sz, requested_threads, workspace_limit);
  const FusedCall<T> call(a, plan.tiles, FusedSizes<T>(p));
  const index_t key_maps = a.diff && !b.shared_dk ? 2 : 1;

  // Everything is allocated here, before any thread starts.
  std::vector<BackwardWorkspace<T>>& workspaces = scratch.workspaces;
  if (workspaces.size() < static_cast<std::size_t>(plan.threads)) workspaces.resize(static_cast<std::size_t>(plan.threads));
  for (int t = 0; t < plan.threads; ++t) {
    workspaces[t].reserve(p, sz, plan.tiles, call.rows_pad, a.diff, plan.own_accumulators());
  }
  const index_t segment_size = segment_elements(p, sz, key_maps);
  if (!plan.own_accumulators()) scratch.partials.reserve(size_mul(plan.items, segment_size));
  // Item `item`'s sums: in the thread's workspace, or its slot of the partial sums.
  auto sums_of = [&](BackwardWorkspace<T>& ws, index_t item) {
    KeyGradients<T> g{};
    if (plan.own_accumulators()) {
      g = {ws.dk_acc1.data(), a.diff ? ws.dk_acc2.data() : nullptr, ws.dv_acc.data()};
    } else {
      T* base = scratch.partials.data() + item * segment_size;
      g = {base, base + (key_maps - 1) * p.kv_len * sz.d_pad, base + key_maps * p.kv_len * sz.d_pad};
    }
    if (b.shared_dk) g.dk2 = g.dk1;
    return g;
  };

#if defined(_OPENMP)
#pragma omp parallel num_threads(plan.threads)
#endif
  {
    BackwardWorkspace<T>& ws = workspaces[static_cast<std::size_t>(current_thread())];
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (index_t item = 0; item < plan.items; ++item) {
      const index_t group = item / plan.segments, segment = item % plan.segments;
      const index_t batch = group / p.kv_heads, kv_head = group % p.kv_heads;
      const KeyGradients<T> sums = sums_of(ws, item);
      std::fill(sums.dk1, sums.dk1 + p.kv_len * sz.d_pad, T(0));
      if (a.diff && !b.shared_dk) std::fill(sums.dk2, sums.dk2 + p.kv_len * sz.d_pad, T(0));
      std::fill(sums.dv, sums.dv + p.kv_len * sz.dv_pad, T(0));
      const index_t positions = plan.tiles.positions_per_tile;
      for (index_t t = segment; t < plan.tiles.tiles_per_group; t += plan.segments) {
        const QueryTile tile{batch, kv_head, t * positions, std::min(p.q_len, (t + 1) * positions)};
        backward_tile(b, TileContext<T>{call, ws.tile, tile}, ws, sz, sums);
      }
      if (plan.own_accumulators()) write_key_gradients(b, sz, batch, kv_head, sums, 0, p.kv_len);
    }
    if (!plan.own_accumulators()) {
      // Segment sums, added in segment order, a key tile per step.
      const index_t key_tiles = FusedPlan::key_tiles(p.kv_len);
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (index_t w = 0; w < p.batch * p.kv_heads * key_tiles; ++w) {
        const index_t group = w / key_tiles;
        const index_t first = w % key_tiles * FusedPlan::key_tile;
        const index_t count = std::min(FusedPlan::key_tile, p.kv_len - first);
        T* total = scratch.partials.data() + group * plan.segments * segment_size;
        for (index_t s = 1; s < plan.segments; ++s) {
          const T* part = total + s * segment_size;
          // Every array of the slot, rows [first, first + count).
          for (index_t region = 0; region < key_maps + 1; ++region) {
            const index_t pad = region < key_maps ? sz.d_pad : sz.dv_pad;
            const index_t offset = region * p.kv_len * sz.d_pad + first * pad;
            for (index_t e = 0; e < count * pad; ++e) total[offset + e] += part[offset + e];
          }
        }
        write_key_gradients(b, sz, group / p.kv_heads, group % p.kv_heads, sums_of(ws, group * plan.segments), first,
                            count);
      }
    }
  }
}

}  // namespace detail
}  // namespace diffattn
