#pragma once
/// The driver of the fused kernels behind diffattn::softmax_attention and diff_attention:
/// plans a validated call (plan.hpp), allocates every thread's scratch, and hands the
/// work items to the threads. Each method's tile code lives in its own header:
///   flash.hpp     Method::flash: online softmax over key tiles (standard; differential
///                 "streaming" with two states)
///   two_pass.hpp  Method::two_pass: differential attention with one P·V product
///   decode.hpp    Method::split_keys and split_heads: split-key decoding and the merge
/// docs/design.md walks through them.
///
/// A tile holds the rows of every query head that shares one kv head (grouped-query
/// attention) for a range of query positions, so each K/V tile is read once for the whole
/// group while it is hot in cache. No result depends on how rows are grouped into tiles
/// or on the thread count: outputs are bitwise identical for any number of threads.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "diffattn/detail/fused/bf16_products.hpp"
#include "diffattn/detail/fused/decode.hpp"
#include "diffattn/detail/fused/flash.hpp"
#include "diffattn/detail/fused/plan.hpp"
#include "diffattn/detail/fused/tile.hpp"
#include "diffattn/detail/fused/two_pass.hpp"
#include "diffattn/detail/workspace.hpp"

namespace diffattn {
namespace detail {

/// The calling thread's scratch, kept between calls: allocating (and page-faulting) a
/// fresh workspace on every call is a large part of a short call (docs/tuning.md,
/// "ScratchCache"). It only grows, up to options.workspace_limit;
/// diffattn::release_scratch() frees it.
template <class T>
struct ScratchCache {
  std::vector<ThreadWorkspace<T>> workspaces;
  ScratchArray<T> chunk_storage;  // split keys: per (tile, chunk, map) states
  ScratchArray<T> value_pairs;    // plan.shared_value_pairs: every kv head's V as bf16 key pairs
};

template <class T>
ScratchCache<T>& scratch_cache() {
  thread_local ScratchCache<T> cache;
  return cache;
}

/// Runs a validated call.
template <class T>
void fused_attention(const FusedArgs<T>& a, int requested_threads, std::size_t workspace_limit) {
  const AttentionProblem& p = a.problem;
  if (p.batch == 0 || p.q_heads == 0 || p.q_len == 0 || p.value_dim == 0) return;
  const FusedSizes<T> sizes(p);
  FusedCall<T> call(a, make_plan(a, sizes, requested_threads, workspace_limit), sizes);
  const FusedPlan& plan = call.plan;

  // Everything is allocated here, before any thread starts.
  ScratchCache<T>& cache = scratch_cache<T>();
  std::vector<ThreadWorkspace<T>>& workspaces = cache.workspaces;
  if (workspaces.size() < static_cast<std::size_t>(plan.threads)) {
    workspaces.resize(static_cast<std::size_t>(plan.threads));
  }
  for (int t = 0; t < plan.threads; ++t) workspaces[t].reserve(p, sizes, plan, call.rows_pad, a.diff);
  if (plan.splits_keys()) {
    cache.chunk_storage.reserve(ChunkStates<T>::elements(plan, call.maps(), call.rows_pad, sizes.dv_pad));
  }
  const index_t pair_items = p.batch * p.kv_heads * FusedPlan::key_tiles(p.kv_len);
  if (plan.shared_value_pairs) {
    cache.value_pairs.reserve(value_pair_bytes(p, sizes) / static_cast<index_t>(sizeof(T)) + 1);
    call.value_pairs = pair_storage(cache.value_pairs.data());
  }
  const ChunkStates<T> chunk_states{cache.chunk_storage.data(), plan.chunks, call.maps(), call.rows_pad, sizes.dv_pad};

  const index_t items = (plan.method == Method::split_heads ? plan.tiles / p.kv_heads : plan.tiles) * plan.chunks;
  // Causal tiles late in the sequence cost the most: hand them out first.
  auto item_at = [&](index_t w) { return p.causal ? items - 1 - w : w; };

#if defined(_OPENMP)
#pragma omp parallel num_threads(plan.threads)
#endif
  {
    ThreadWorkspace<T>& ws = workspaces[static_cast<std::size_t>(current_thread())];
    if (plan.shared_value_pairs) {  // every key tile of every kv head, before any tile reads one
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (index_t w = 0; w < pair_items; ++w) {
        const index_t head = w / FusedPlan::key_tiles(p.kv_len);  // batch · Hkv + kv head
        const index_t first = w % FusedPlan::key_tiles(p.kv_len) * FusedPlan::key_tile;
        const index_t count = std::min(FusedPlan::key_tile, p.kv_len - first);
        std::uint32_t* dst = pair_storage(cache.value_pairs.data()) + (head * ((p.kv_len + 1) / 2) + first / 2) * sizes.dv_pad;
        pack_value_rows(call, head / p.kv_heads, head % p.kv_heads, first, count, dst);
      }
    }
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (index_t w = 0; w < items; ++w) {
      const index_t item = item_at(w);
      if (plan.method == Method::split_heads) {
        split_heads_item(call, ws, chunk_states, item);
        continue;
      }
      const index_t tile_index = item / plan.chunks;
      const TileContext<T> c{call, ws, tile_at(p, plan, tile_index)};
      pack_tile_queries(c);
      switch (plan.method) {
        case Method::two_pass: diff_two_pass_tile(c); break;
        case Method::split_keys: split_chunk_item(c, chunk_states, tile_index, item % plan.chunks); break;
        default: flash_tile(c); break;
      }
    }
    if (plan.splits_keys()) {
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (index_t tile_index = 0; tile_index < plan.tiles; ++tile_index) {
        merge_split_tile(TileContext<T>{call, ws, tile_at(p, plan, tile_index)}, chunk_states, tile_index);
      }
    }
  }
}

}  // namespace detail
}  // namespace diffattn
