#pragma once
/// Decoding: Method::split_keys and Method::split_heads. With few query tiles and long Nk
/// the keys are cut in fixed chunks; each chunk's flash state (max, sum, normalized
/// output) is computed as its own work item and the states are merged in chunk order. The
/// split depends on the shapes and the K/V layout only, never on the thread count, so
/// outputs are bitwise identical for any number of threads.
///
/// Decoding tiles read K and V from memory, not cache: they stream 512-key tiles, read
/// each K and V row whole and in address order, and leave the fetching to the hardware
/// prefetchers (docs/tuning.md, "FusedPlan::decode_key_tile"). When the kv heads of a
/// token lie side by side ([B, N, H, D] storage), a split_heads item takes a key chunk of
/// every kv head, so that memory is read in order rather than one row per page, and asks
/// for each tile's lines before reading them one head at a time (prefetch_heads).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "diffattn/detail/fused/flash.hpp"
#include "diffattn/detail/fused/tile.hpp"
#include "diffattn/detail/simd.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

/// The flash states of every (tile, chunk, map) of a split call, in one array: each
/// state holds m, l, keep and add (rows_pad each), then acc [rows_pad, dv_pad].
template <class T>
struct ChunkStates {
  T* base;
  index_t chunks, maps, rows_pad, dv_pad;

  static index_t state_size(index_t rows_pad, index_t dv_pad) { return size_mul(rows_pad, size_add(dv_pad, 4)); }
  static index_t elements(const FusedPlan& plan, index_t maps, index_t rows_pad, index_t dv_pad) {
    return size_mul(plan.tiles, plan.chunks, maps, state_size(rows_pad, dv_pad));
  }
  FlashState<T> at(index_t tile, index_t chunk, index_t map) const {
    T* state = base + ((tile * chunks + chunk) * maps + map) * state_size(rows_pad, dv_pad);
    return FlashState<T>{state, state + rows_pad, state + 4 * rows_pad, state + 2 * rows_pad, state + 3 * rows_pad};
  }
};

/// A split_keys item: keys [chunk·key_chunk, …) of one tile into that chunk's states.
template <class T>
void split_chunk_item(const TileContext<T>& c, const ChunkStates<T>& states, index_t tile_index, index_t chunk) {
  const bool diff = c.args().diff;
  const index_t dv_pad = c.call.sizes.dv_pad;
  const FlashState<T> first = states.at(tile_index, chunk, 0);
  const FlashState<T> second = diff ? states.at(tile_index, chunk, 1) : FlashState<T>{};
  flash_reset(first, c.rows_pad(), dv_pad);
  if (diff) flash_reset(second, c.rows_pad(), dv_pad);
  const index_t key_end = c.problem().key_limit(c.tile.last - 1);
  const index_t key_begin = chunk * c.plan().key_chunk;
  flash_stream(c, key_begin, std::min(key_end, key_begin + c.plan().key_chunk), first, diff ? &second : nullptr);
}

/// Asks for the lines of keys [first, first + count) of every kv head of `t`, key by key
/// from its first head's row to the end of its last: in the projection layout
/// [B, N, H, D] that is the whole key tile, in address order. The split_heads passes read
/// one head's rows at a time, D·sizeof(T) bytes out of every H·D·sizeof(T), which the
/// hardware prefetchers follow poorly (docs/tuning.md, "prefetch_heads").
template <class E>
DIFFATTN_ALWAYS_INLINE void prefetch_heads(TensorView<const E, 4> t, index_t batch, index_t first, index_t count) {
  constexpr std::uintptr_t line = 64;
  if (t.extent(3) == 0) return;  // no rows to read (and possibly no storage)
  const index_t last_head = t.extent(1) - 1;
  for (index_t j = first; j < first + count; ++j) {
    const E* first_row = &t(batch, 0, j, 0);
    const E* last_row = &t(batch, last_head, j, 0);
    const auto begin = reinterpret_cast<std::uintptr_t>(std::min(first_row, last_row)) & ~(line - 1);
    const auto end = reinterpret_cast<std::uintptr_t>(std::max(first_row, last_row) + t.extent(3));
    for (std::uintptr_t at = begin; at < end; at += line) prefetch_for_read(reinterpret_cast<const void*>(at));
  }
}

/// A split_heads item: every kv head of one (batch, query tile) against one key chunk,
/// into the chunk states. Per key tile the heads run one after another, so the memory
/// under the tile (every head's rows, interleaved) is read whole before the next.
template <class T>
void split_heads_item(const FusedCall<T>& call, ThreadWorkspace<T>& ws, const ChunkStates<T>& states, index_t item) {
  const FusedArgs<T>& a = call.args;
  const AttentionProblem& p = a.problem;
  const FusedPlan& plan = call.plan;
  const index_t rows_pad = call.rows_pad, dv_pad = call.sizes.dv_pad;
  const index_t chunk = item % plan.chunks;
  const index_t batch = item / plan.chunks / plan.tiles_per_group;
  const index_t query_tile = item / plan.chunks % plan.tiles_per_group;
  auto tile_index = [&](index_t kv_head) { return (batch * p.kv_heads + kv_head) * plan.tiles_per_group + query_tile; };
  auto context = [&](index_t kv_head) { return TileContext<T>{call, ws, tile_at(p, plan, tile_index(kv_head))}; };
  const index_t q_size = std::max<index_t>(p.head_dim, 1) * rows_pad;
  const index_t s_size = ScoreLayout::stream_row_keys<T>(plan) * rows_pad;
  for (index_t h = 0; h < p.kv_heads; ++h) {
    pack_tile_queries(context(h), h * q_size);
    flash_reset(states.at(tile_index(h), chunk, 0), rows_pad, dv_pad);
    if (a.diff) flash_reset(states.at(tile_index(h), chunk, 1), rows_pad, dv_pad);
  }
  const QueryTile any_tile = tile_at(p, plan, tile_index(0));  // every head sees the same keys
  const index_t key_begin = chunk * plan.key_chunk;
  const index_t key_end = std::min(p.key_limit(any_tile.last - 1), key_begin + plan.key_chunk);
  for (index_t j0 = key_begin; j0 < key_end; j0 += plan.stream_tile) {
    const index_t count = std::min(plan.stream_tile, key_end - j0);
    // Every head's K rows of the tile, then every head's V rows: two regions read whole.
    for (int pass = 0; pass < 2; ++pass) {
      auto prefetch = [&](const ElementView<T>& t) {
        t.visit([&](const auto& view) { prefetch_heads(view, any_tile.batch, j0, count); });
      };
      if (pass == 0) {
        prefetch(a.k1);
        if (a.diff && a.k2.address() != a.k1.address()) prefetch(a.k2);
      } else {
        prefetch(a.v);
      }
      for (index_t h = 0; h < p.kv_heads; ++h) {
        const TileContext<T> c = context(h);
        const FlashState<T> first = states.at(tile_index(h), chunk, 0);
        const FlashState<T> second = a.diff ? states.at(tile_index(h), chunk, 1) : FlashState<T>{};
        T* st1 = ws.st1.data() + h * s_size;
        T* st2 = a.diff ? ws.st2.data() + h * s_size : nullptr;
        if (pass == 0) {
          key_tile_scores(c, ws.qt1.data() + h * q_size, a.diff ? ws.qt2.data() + h * q_size : nullptr, st1, st2, j0,
                          count, first, a.diff ? &second : nullptr);
        } else {
          key_tile_values(c, st1, st2, j0, count, first, a.diff ? &second : nullptr);
        }
      }
    }
  }
}

/// Merges the per-chunk states of a split tile into `merged`, in chunk order:
/// m = max m_c, l = Σ l_c·2^(m_c − m), acc = Σ acc_c·l_c·2^(m_c − m)/l (each acc_c is
/// normalized by its own l_c); acc = 0 where no chunk saw a key.
template <class T>
void merge_chunk_states(const FlashState<T>* chunk_states, index_t chunks, index_t rows,
                        index_t dv_pad, FlashState<T> merged) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  T weights[FusedPlan::max_split_chunks];
  for (index_t r = 0; r < rows; ++r) {
    T m = minus_inf;
    for (index_t c = 0; c < chunks; ++c) m = chunk_states[c].m[r] > m ? chunk_states[c].m[r] : m;
    const T shift = m == minus_inf ? T(0) : m;
    T l = 0;
    for (index_t c = 0; c < chunks; ++c) {
      weights[c] = chunk_states[c].m[r] == minus_inf ? T(0) : std::exp2(chunk_states[c].m[r] - shift);
      l = std::fma(chunk_states[c].l[r], weights[c], l);
      weights[c] *= chunk_states[c].l[r];
    }
    merged.m[r] = m;
    merged.l[r] = l;
    T* acc = merged.acc + r * dv_pad;
    std::fill(acc, acc + dv_pad, T(0));
    if (l == T(0)) continue;
    for (index_t c = 0; c < chunks; ++c) {
      const T weight = weights[c] / l;
      const T* part = chunk_states[c].acc + r * dv_pad;
      for (index_t d = 0; d < dv_pad; ++d) acc[d] = std::fma(part[d], weight, acc[d]);
    }
  }
}

/// Merges a split tile's chunk states, map by map, and writes its outputs.
template <class T>
void merge_split_tile(const TileContext<T>& c, const ChunkStates<T>& states, index_t tile_index) {
  const TileStats<T> stats = c.stats();
  const index_t dv_pad = c.call.sizes.dv_pad;
  FlashState<T> parts[FusedPlan::max_split_chunks];
  const FlashState<T> merged[2] = {stats.flash_state(0, c.ws.acc1.data()), stats.flash_state(1, c.ws.acc2.data())};
  for (index_t map = 0; map < c.call.maps(); ++map) {
    for (index_t chunk = 0; chunk < c.plan().chunks; ++chunk) parts[chunk] = states.at(tile_index, chunk, map);
    merge_chunk_states(parts, c.plan().chunks, c.rows(), dv_pad, merged[map]);
  }
  write_flash_output(c, merged[0], c.args().diff ? &merged[1] : nullptr);
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
