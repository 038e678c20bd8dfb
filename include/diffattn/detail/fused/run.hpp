#pragma once
/// The fused attention kernels behind diffattn::softmax_attention and diff_attention.
///
/// Work is split into tiles of query rows. A tile holds the rows of every query head that
/// shares one kv head (grouped-query attention) for a range of query positions, so each
/// K/V tile is read once for the whole group while it is hot in cache. Scores are kept
/// transposed, Sᵀ [keys, rows], so query rows run along the SIMD lanes (microkernels.hpp);
/// decoding tiles, with fewer rows than lanes, keep S [rows, keys] instead (ScoreLayout).
///
/// Standard attention streams key tiles through an online softmax ("flash"): per key
/// tile, Sᵀ = K·Qᵀ (Q pre-scaled by scale·log2 e, so exp becomes exp2), the running row
/// max m, the running sum l, and O += P·V, rescaling a row of O only when its max grew.
/// No Nq×Nk matrix exists. FLOPs: 2·Nq·Nk·(D + Dv).
///
/// Differential attention, two-pass (default): per query tile, 2^(S − m) of both maps
/// against all visible keys go to a per-thread workspace of Nk × rows (m the running row
/// max, recorded per key tile), and once every key is seen, P = softmax(S1) − λ·softmax(S2)
/// is formed one key tile at a time and ONE P·V product runs: 2·Nq·Nk·(2D + Dv) FLOPs,
/// the same as standard attention with twice the heads at width D = Dv/2. Streaming
/// (fallback): two online softmax states and two P·V products, 2·Nq·Nk·(2D + 2Dv) FLOPs
/// (1.5× at Dv = 2D) in O(rows × key tile) memory; used when a single tile's Nk × rows
/// workspace would exceed options.workspace_limit, and for decoding (few query rows),
/// where reading K/V, not FLOPs, is the cost.
///
/// Decoding: with few query tiles and long Nk the keys are split in fixed chunks, each
/// chunk's (max, sum, accumulator) is computed in parallel and the triples are merged in
/// chunk order. The split depends on the shapes and the K/V layout only, never on the
/// thread count, and no result depends on how rows are grouped into tiles: outputs are
/// bitwise identical for any number of threads. Decoding tiles read K and V from memory,
/// not cache: they stream 256-key tiles, read each K and V row whole and in address order
/// (microkernels.hpp) and leave the fetching to the hardware prefetchers (a software
/// prefetch of the next tile measured slower on both a Zen 3 and a Zen 4; see
/// FusedPlan::decode_key_tile). When the kv heads of a token lie side by side ([B, N, H, D]
/// storage), one work item takes a key chunk of every kv head, so that memory is read
/// in order rather than one row per page (flash_stream_heads), and asks for each tile's
/// lines before reading them one head at a time (prefetch_heads).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
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
};

/// Tiling and method decisions for one call. Only `positions_per_tile` and `threads`
/// may depend on the thread count; they never change a result.
struct FusedPlan {
  static constexpr index_t key_tile = 64;     // keys per tile (two-pass, and prefill)
  // Decoding tiles: K and V come from memory, and each tile switches the stream from K to
  // V and back. At Nk = 32768, d = 128 on the Zen 3 (AVX2), medians of 30 interleaved
  // runs (15 on one thread), 64 → 256 keys took Hkv 8 from 20.2 to 24.4 GB/s on 2 threads
  // and 11.3 to 12.6 on one, Hkv 2 17.4 to 20.3; 512 and 1024 were no better.
  // No software prefetch: fetching the next tile ahead took the 223 GFLOP/s AVX-512 EPYC
  // of docs/avx512-2026-11-23 from 26 to 40 GB/s (with the earlier depth-major score
  // kernel, never measured there since), but cost 5–10% on the Zen 3 and,
  // with the key-major kernel, 33–63% on a Zen 4 (AVX-512; medians of 20 interleaved
  // runs: Hkv 8 25.6 vs 17.2 GB/s on 2 threads, 19.4 vs 11.9 on one; Hkv 2 17.0 vs 12.8).
  // Spreading the prefetches over the tile, 16–64 keys ahead, or with the L2 hint, measured
  // no better than none on either. (heads_together items are the exception: see
  // prefetch_heads.)
  // On the Zen 4 (AVX-512, key-major kernels) 512 keys beat 256 in all 7 A/B pairs
  // (medians of 11–31 interleaved runs): time ×0.93–0.98 for Hkv 8 and Hkv 2 on one and
  // two threads and for differential Hq 4, Hkv 2, d 64. 1024 was no better than 512
  // (median ×0.956 against ×0.953 over 9 pairs); 2048 lost 11% at Hkv 2 in its one pair.
  // On the Zen 3, 512 had measured no better than 256 (above); it was not re-measured there.
  static constexpr index_t decode_key_tile = 512;
  // Decoding with every kv head per item (heads_together): K (or V) rows of all heads per
  // key tile, at least 16 keys. Nk = 32768, d = 128, [B, N, H, D] K/V on the Zen 3,
  // medians of 30 interleaved runs (15 on one thread): 128 rows vs 256, Hkv 8 19.5 vs
  // 16.1 GB/s (2 threads) and 11.9 vs 9.8 (1 thread), Hkv 2 12.3 vs 11.4; 64 and 512
  // rows were no better than 128.
  static constexpr index_t heads_key_rows = 128;
  static constexpr index_t target_rows = 64;  // query rows per tile (all heads of a group)
  // Short causal sequences: half-height tiles, so less of each diagonal tile is masked
  // work (at N = 128 a 64-row tiling computes 1.5× the visible scores, a 32-row 1.24×).
  static constexpr index_t short_causal_rows = 32;
  static constexpr index_t short_causal_len = 512;
  static constexpr index_t split_chunk_min = 1024;
  // Two-pass tiles whose workspace (both maps' 2^(s − m), rows × Nk) is at least this
  // large score each key tile into an L1 tile and stream the exponentials to the
  // workspace with non-temporal stores (FusedPlan::stream_workspace). On a 2-core Zen 5
  // (1 MB L2; in-process A/B against writing in place, medians of 5–9 interleaved runs,
  // one and two threads, a noisy host) 30 pairs at N = 8192–16384 (64-row tiles: 4–8 MiB)
  // ran ×0.96 the time at the median, single pairs ×0.89–1.04 (d = 64 at 16384: ×0.89–0.96
  // in 7 of 8); at N = 2048–4096 it cost ×1.02–1.06 and at 6144 (3 MiB) it was mixed.
  // Below this the workspace stays in cache until the second pass reads it; above it
  // every line written in place costs a read for ownership and displaces K/V lines that
  // the next tiles read again.
  static constexpr std::size_t stream_workspace_bytes = std::size_t{4} << 20;
  // Split decoding aims at about this many work items (chunks × tiles). On the Zen 4 with
  // 512-key tiles, 8 and 32 ran within 3% of 16 (Hkv 2 and 4, one and two threads,
  // differential Hkv 2; 8 A/B pairs).
  static constexpr index_t split_items = 16;
  static constexpr index_t max_split_chunks = split_items;
  static constexpr index_t key_tiles(index_t keys) { return keys / key_tile + (keys % key_tile != 0); }

  index_t positions_per_tile = 1;  // query positions per tile; rows = group × positions
  index_t tiles_per_group = 0;     // ceil(Nq / positions_per_tile)
  index_t tiles = 0;               // B × Hkv × tiles_per_group
  index_t key_chunk = 0;           // keys per split chunk (all keys when not split)
  index_t chunks = 1;
  bool split_keys = false;
  bool two_pass = false;    // diff only
  bool stream_workspace = false;  // two-pass: exponentials reach the workspace by streaming stores
  bool dot_scores = false;  // tiles have fewer rows than a batch: SIMD along D instead
  bool heads_together = false;  // decoding, kv heads interleaved: items span every kv head
  // Prefill tiles whose K (V) rows are not adjacent in memory copy each key tile into a
  // packed buffer first (score_keys, value_rows), and V tiles too when their width needs
  // padding.
  bool pack_keys = false;
  bool pack_values = false;
  index_t stream_tile = key_tile;  // keys per tile in flash_stream
  int threads = 1;
};

/// Whether a two-pass tile of `rows_pad` rows against `keys` keys streams its workspace.
template <class T>
bool streams_workspace(index_t rows_pad, index_t keys) {
  return size_bytes<T>(size_mul(2, rows_pad, keys)) >= static_cast<index_t>(FusedPlan::stream_workspace_bytes);
}

/// Padded sizes that follow from the shapes.
template <class T>
struct FusedSizes {
  index_t dv_pad;     // value width rounded up to whole batches
  bool pack_values;   // V rows are read in place unless their width needs padding
  explicit FusedSizes(const AttentionProblem& p)
      : dv_pad(round_up(std::max<index_t>(p.value_dim, 1), micro_blocking<T>::lanes)),
        pack_values(p.value_dim % micro_blocking<T>::lanes != 0) {}
  static index_t rows_padded(index_t rows) {
    return round_up(std::max<index_t>(rows, 1), micro_blocking<T>::row_align);
  }
};

/// Where a tile keeps the score of key j (of the key tile at hand) for row r:
/// st[j·key_stride + r·row_stride]. Prefill and two-pass tiles keep Sᵀ, keys down and
/// rows along the SIMD lanes, so the softmax statistics are lane-wise. Decoding tiles
/// (plan.dot_scores: fewer rows than a batch has lanes) keep S, each row's keys in a run
/// padded with −inf to whole batches, so the softmax runs on whole batches of keys: Sᵀ
/// would cost one batch of mostly padding rows per key (a 2^x, a max and a zeroing store
/// for 1 row of 16 with AVX-512): 28% of the samples of a one-row decoding call on the
/// Zen 4 with its K/V in cache (softmax 19%, zeroing 9%); from memory, 5–8% of the time.
struct ScoreLayout {
  bool by_row = false;
  index_t stride = 0;  // rows_pad (Sᵀ) or keys per row (S)
  index_t key_stride() const { return by_row ? 1 : stride; }
  index_t row_stride() const { return by_row ? stride : 1; }
  /// Keys per row of a streaming tile's S: the stream tile in whole batches.
  template <class T>
  static index_t stream_row_keys(const FusedPlan& plan) {
    return round_up(plan.stream_tile, micro_blocking<T>::lanes);
  }
  /// Two-pass tiles keep Sᵀ whatever their height: their second pass forms P lane-wise.
  template <class T>
  static ScoreLayout of(const FusedPlan& plan, index_t rows_pad) {
    return plan.dot_scores && !plan.two_pass ? ScoreLayout{true, stream_row_keys<T>(plan)}
                                             : ScoreLayout{false, rows_pad};
  }
};

/// The per-row statistics of a tile, one rows_pad array each in ThreadWorkspace::stats:
/// each map's running max m and sum l and its P·V scales (RowScales: keep, add), λ per
/// row, and the rescale factors of the tile at hand.
template <class T>
struct TileStats {
  static constexpr index_t arrays = 10;
  T *m1, *l1, *m2, *l2, *lambda, *rescale, *keep1, *add1, *keep2, *add2;
  TileStats(T* base, index_t rows_pad)
      : m1(base), l1(m1 + rows_pad), m2(l1 + rows_pad), l2(m2 + rows_pad), lambda(l2 + rows_pad),
        rescale(lambda + rows_pad), keep1(rescale + rows_pad), add1(keep1 + rows_pad), keep2(add1 + rows_pad),
        add2(keep2 + rows_pad) {}
};

/// Per-thread scratch: packed Qᵀ, transposed scores, accumulators and row statistics.
template <class T>
struct ThreadWorkspace {
  ScratchArray<T> qt1, qt2, st1, st2, keys, values, acc1, acc2, stats;
  ScratchArray<T> tile_max, p_tile;  // two-pass diff only

  /// Elements for a tile of `rows_pad` rows whose scores span `score_keys` keys (saturated:
  /// see size_mul).
  static index_t elements(const AttentionProblem& p, const FusedSizes<T>& sz, index_t rows_pad,
                          index_t score_keys, bool diff) {
    const index_t maps = diff ? 2 : 1;
    const index_t two_pass =
        diff ? size_mul(size_add(size_mul(2, FusedPlan::key_tiles(score_keys)), FusedPlan::key_tile), rows_pad) : 0;
    // Packed K and V tiles counted whether or not the plan packs them.
    return size_add(size_mul(maps, size_add(size_mul(p.head_dim, rows_pad), size_mul(score_keys, rows_pad),
                                            size_mul(rows_pad, sz.dv_pad))),
                    size_mul(FusedPlan::key_tile, size_add(p.head_dim, sz.dv_pad)),
                    size_mul(TileStats<T>::arrays, rows_pad), two_pass);
  }
  static index_t bytes(const AttentionProblem& p, const FusedSizes<T>& sz, index_t rows_pad, index_t score_keys,
                       bool diff) {
    return size_bytes<T>(elements(p, sz, rows_pad, score_keys, diff));
  }

  /// Scratch for tiles of `rows_pad` rows under `plan`.
  void reserve(const AttentionProblem& p, const FusedSizes<T>& sz, const FusedPlan& plan, index_t rows_pad,
               bool diff) {
    // Scores span every key (two-pass) or one stream tile; V rows are read a key tile at
    // a time (two-pass) or a stream tile; with heads_together every kv head's packed
    // queries and scores are held at once.
    const index_t score_keys = plan.two_pass ? std::max<index_t>(p.kv_len, 1)
                                             : ScoreLayout::stream_row_keys<T>(plan);
    const index_t value_keys = plan.two_pass ? FusedPlan::key_tile : plan.stream_tile;
    const index_t query_tiles = plan.heads_together ? p.kv_heads : 1;
    const index_t depth = std::max<index_t>(p.head_dim, 1);
    qt1.reserve(size_mul(depth, rows_pad, query_tiles));
    st1.reserve(size_mul(score_keys, rows_pad, query_tiles));
    acc1.reserve(size_mul(rows_pad, sz.dv_pad));
    if (diff) {
      qt2.reserve(size_mul(depth, rows_pad, query_tiles));
      st2.reserve(size_mul(score_keys, rows_pad, query_tiles));
      acc2.reserve(size_mul(rows_pad, sz.dv_pad));
    }
    if (plan.pack_keys) keys.reserve(size_mul(FusedPlan::key_tile, depth));  // prefill only
    if (plan.pack_values) values.reserve(size_mul(value_keys, sz.dv_pad));
    stats.reserve(size_mul(TileStats<T>::arrays, rows_pad));
    if (diff) {  // two-pass tiles: the max each key tile used, and one tile of P
      tile_max.reserve(size_mul(2, FusedPlan::key_tiles(score_keys), rows_pad));
      p_tile.reserve(size_mul(FusedPlan::key_tile, rows_pad));
    }
  }
};

/// The query rows of one tile: every head of kv group `kv_head`, positions [first, last).
/// Row r is head kv_head·group + r / positions at position first + r % positions.
struct QueryTile {
  index_t batch, kv_head, first, last;
  index_t positions() const { return last - first; }
  index_t head(const AttentionProblem& p, index_t r) const {
    return kv_head * p.group + r / positions();
  }
  index_t position(index_t r) const { return first + r % positions(); }
};

inline QueryTile tile_at(const AttentionProblem& p, const FusedPlan& plan, index_t tile) {
  const index_t t = tile % plan.tiles_per_group;
  const index_t kv_head = (tile / plan.tiles_per_group) % p.kv_heads;
  const index_t batch = tile / plan.tiles_per_group / p.kv_heads;
  const index_t first = t * plan.positions_per_tile;
  return {batch, kv_head, first, std::min(p.q_len, first + plan.positions_per_tile)};
}

/// The tile's Q rows times scale·log2 e: transposed, qt [D, rows_pad] with zero padding
/// rows, for score_tile; or row-major [rows, D] for score_tile_dot.
template <class T>
void pack_queries(TensorView<const T, 4> q, const AttentionProblem& p, const QueryTile& tile,
                  index_t rows_pad, bool row_major, T factor, T* packed) {
  const index_t rows = p.group * tile.positions();
  if (p.head_dim == 0) return;  // nothing to pack (and q may have no storage)
  if (row_major) {
    for (index_t r = 0; r < rows; ++r) {
      const T* src = &q(tile.batch, tile.head(p, r), tile.position(r), 0);
      for (index_t c = 0; c < p.head_dim; ++c) packed[r * p.head_dim + c] = src[c] * factor;
    }
    return;
  }
  // Transposed: one head's positions at a time, so the inner loop is a constant-stride
  // read the compiler can vectorize.
  const index_t positions = tile.positions(), stride = q.stride(2), depth = p.head_dim;
  for (index_t h = 0; h < p.group; ++h) {
    const T* src = &q(tile.batch, tile.head(p, h * positions), tile.first, 0);
    T* dst = packed + h * positions;
    for (index_t c = 0; c < depth; ++c) {
      for (index_t i = 0; i < positions; ++i) dst[c * rows_pad + i] = src[i * stride + c] * factor;
    }
  }
  for (index_t c = 0; c < depth; ++c) std::fill(packed + c * rows_pad + rows, packed + (c + 1) * rows_pad, T(0));
}

/// Copies `count` rows of `width` elements, `stride` apart at src, one after another to
/// dst at `padded_width` apart, zero-filling each row's padding.
template <class T>
void pack_rows(const T* src, index_t stride, index_t count, index_t width, index_t padded_width, T* dst) {
  for (index_t j = 0; j < count; ++j) {
    std::copy(src + j * stride, src + j * stride + width, dst + j * padded_width);
    std::fill(dst + j * padded_width + width, dst + (j + 1) * padded_width, T(0));
  }
}

/// K·Qᵀ of the tile's rows against keys [first, first + count) into st, laid out as
/// `layout` says; with plan.pack_keys the K rows are first copied one after another into
/// key_buffer. The head dimension is not 0.
template <class T>
void score_products(const FusedPlan& plan, TensorView<const T, 4> k, const QueryTile& tile, ScoreLayout layout,
                    const T* q_packed, index_t first, index_t count, T* st, T* key_buffer, index_t rows) {
  const index_t depth = k.extent(3);
  const T* keys = &k(tile.batch, tile.kv_head, first, 0);
  index_t key_stride = k.stride(2);
  if (plan.pack_keys) {
    pack_rows(keys, key_stride, count, depth, depth, key_buffer);
    keys = key_buffer;
    key_stride = depth;
  }
  const index_t rows_pad = layout.stride;  // Sᵀ only
  if (layout.by_row) {
    score_tile_dot(keys, key_stride, count, q_packed, rows, depth, st, index_t{1}, layout.stride);
  } else if (plan.dot_scores) {  // fewer rows than lanes in an Sᵀ tile (two-pass): zero the padding lanes
    using B = native_batch<T>;
    for (index_t j = 0; j < count; ++j) {
      for (index_t r = 0; r < rows_pad; r += micro_blocking<T>::lanes) B(T(0)).store_unaligned(st + j * rows_pad + r);
    }
    score_tile_dot(keys, key_stride, count, q_packed, rows, depth, st, rows_pad, index_t{1});
  } else {
    score_tile(keys, key_stride, count, q_packed, rows_pad, rows_pad, depth, st, rows_pad);
  }
}

/// Scores of the tile's rows against keys [first, first + count) into st, laid out as
/// `layout` says: K·Qᵀ, plus mask·log2 e, and −inf past each row's causal limit (and,
/// for S, in each row's padding up to whole batches).
template <class T>
void score_keys(const FusedArgs<T>& a, const FusedPlan& plan, TensorView<const T, 4> k,
                const QueryTile& tile, ScoreLayout layout, const T* q_packed, index_t first,
                index_t count, T* st, T* key_buffer) {
  const AttentionProblem& p = a.problem;
  if (count <= 0) return;
  const index_t rows = p.group * tile.positions();
  if (p.head_dim == 0) {  // empty dot products (and k may have no storage to point into)
    const index_t row_slots = layout.by_row ? rows : layout.stride;  // Sᵀ zeroes its padding lanes too
    for (index_t j = 0; j < count; ++j) {
      for (index_t r = 0; r < row_slots; ++r) st[j * layout.key_stride() + r * layout.row_stride()] = T(0);
    }
  } else {
    score_products(plan, k, tile, layout, q_packed, first, count, st, key_buffer, rows);
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
  // by row down a column of st (a strided scalar store per masked score cost 7% of a
  // causal call at N = 128).
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

/// Lane-wise max over keys of st [count, rows_pad], for one vector of rows at `offset`.
/// NaN scores are skipped here; they reach the output through exp2.
template <class T>
native_batch<T> column_max(const T* st, index_t rows_pad, index_t count, index_t offset) {
  using B = native_batch<T>;
  B best(-std::numeric_limits<T>::infinity());
  for (index_t j = 0; j < count; ++j) best = simd_max(B::load_unaligned(st + j * rows_pad + offset), best);
  return best;
}

/// st[j][lanes] = 2^(st[j][lanes] − shift) in place for one vector of rows; returns the
/// lane-wise sums. Two accumulators halve the add chain, in a fixed order, and each block
/// of value_chunk_keys keys is summed afresh before it joins the total, so that no chain
/// grows with the tile (decoding tiles hold 512 keys).
template <class T>
native_batch<T> exp2_columns(T* st, index_t rows_pad, index_t count, index_t offset,
                             native_batch<T> shift) {
  using B = native_batch<T>;
  B total(T(0));
  for (index_t block = 0; block < count; block += value_chunk_keys) {
    const index_t end = std::min(count, block + value_chunk_keys);
    B sum0(T(0)), sum1(T(0));
    index_t j = block;
    for (; j + 2 <= end; j += 2) {
      T* p0 = st + j * rows_pad + offset;
      T* p1 = p0 + rows_pad;
      const B e0 = exp2_nonpositive(B::load_unaligned(p0) - shift);
      const B e1 = exp2_nonpositive(B::load_unaligned(p1) - shift);
      e0.store_unaligned(p0);
      e1.store_unaligned(p1);
      sum0 = sum0 + e0;
      sum1 = sum1 + e1;
    }
    if (j < end) {
      T* p0 = st + j * rows_pad + offset;
      const B e0 = exp2_nonpositive(B::load_unaligned(p0) - shift);
      e0.store_unaligned(p0);
      sum0 = sum0 + e0;
    }
    total = total + (sum0 + sum1);
  }
  return total;
}

/// Subtracting the max lane by lane; 0 where a row has seen no key (max −inf), so that
/// its −inf scores give 2^−inf = 0 rather than NaN.
template <class T>
native_batch<T> safe_shift(native_batch<T> row_max) {
  using B = native_batch<T>;
#if defined(DIFFATTN_NO_SIMD)
  return row_max.value == -std::numeric_limits<T>::infinity() ? B(T(0)) : row_max;
#else
  return xsimd::select(row_max == B(-std::numeric_limits<T>::infinity()), B(T(0)), row_max);
#endif
}

/// Online softmax state of a tile's rows: running max m, sum l, and acc = the output so
/// far, Σ 2^(s − m)·v / l, kept normalized so that it stays within max|V| (a sum over
/// thousands of keys of values near the type's max would overflow). keep and add are the
/// RowScales of the key tile at hand. A row's sum is 0 exactly when it has seen no key
/// (else its max term adds 1).
template <class T>
struct FlashState {
  T* m;
  T* l;
  T* acc;  // [rows_pad, dv_pad]
  T* keep;
  T* add;
};

template <class T>
void flash_reset(FlashState<T> st, index_t rows_pad, index_t dv_pad) {
  std::fill(st.m, st.m + rows_pad, -std::numeric_limits<T>::infinity());
  std::fill(st.l, st.l + rows_pad, T(0));
  std::fill(st.acc, st.acc + rows_pad * dv_pad, T(0));
}

/// Turns a key tile's scores into 2^(s − m) in place against the running row max m,
/// updates (m, l) and leaves each row's rescale factor 2^(m_old − m_new) in `rescale`.
template <class T>
void online_softmax_tile(T* m, T* l, T* st, index_t rows_pad, index_t count, T* rescale) {
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  for (index_t offset = 0; offset < rows_pad; offset += lanes) {
    const B m_old = B::load_unaligned(m + offset);
    const B m_new = simd_max(column_max(st, rows_pad, count, offset), m_old);
    const B shift = safe_shift<T>(m_new);
    const B sum = exp2_columns(st, rows_pad, count, offset, shift);
    const B alpha = exp2_nonpositive(m_old - shift);
    simd_fma(B::load_unaligned(l + offset), alpha, sum).store_unaligned(l + offset);
    m_new.store_unaligned(m + offset);
    alpha.store_unaligned(rescale + offset);
  }
}

/// online_softmax_tile for scores kept as S (ScoreLayout::by_row): the `rows` real rows at
/// `row_stride`, each padded with −inf to whole batches of keys. Rows from `rows` to
/// rows_pad are padding: their m stays −inf, their l 0 and their rescale factor is 0.
template <class T>
void online_softmax_rows(T* m, T* l, T* st, index_t row_stride, index_t rows, index_t rows_pad, index_t count,
                         T* rescale) {
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  const index_t padded = round_up(count, lanes);
  // Each row's max (NaN skipped, as column_max does), then the statistics lane-wise over
  // rows as online_softmax_tile has them; `rescale` holds the row maxes in between.
  for (index_t r = 0; r < rows_pad; ++r) {
    B best(minus_inf);
    if (r < rows) {
      for (index_t j = 0; j < padded; j += lanes) best = simd_max(B::load_unaligned(st + r * row_stride + j), best);
    }
    rescale[r] = simd_hmax(best);
  }
  for (index_t offset = 0; offset < rows_pad; offset += lanes) {
    const B m_old = B::load_unaligned(m + offset);
    const B m_new = simd_max(B::load_unaligned(rescale + offset), m_old);
    m_new.store_unaligned(m + offset);
    exp2_nonpositive(m_old - safe_shift<T>(m_new)).store_unaligned(rescale + offset);
  }
  for (index_t r = 0; r < rows; ++r) {
    const B shift(m[r] == minus_inf ? T(0) : m[r]);
    T* row = st + r * row_stride;
    B sum0(T(0)), sum1(T(0));  // two chains, in a fixed order
    index_t j = 0;
    for (; j + 2 * lanes <= padded; j += 2 * lanes) {
      const B e0 = exp2_nonpositive(B::load_unaligned(row + j) - shift);
      const B e1 = exp2_nonpositive(B::load_unaligned(row + j + lanes) - shift);
      e0.store_unaligned(row + j);
      e1.store_unaligned(row + j + lanes);
      sum0 = sum0 + e0;
      sum1 = sum1 + e1;
    }
    if (j < padded) {
      const B e0 = exp2_nonpositive(B::load_unaligned(row + j) - shift);
      e0.store_unaligned(row + j);
      sum0 = sum0 + e0;
    }
    l[r] = std::fma(l[r], rescale[r], simd_sum(sum0 + sum1));
  }
}

/// Turns a key tile's scores into P = 2^(s − m) in place, updates (m, l), and sets the
/// tile's RowScales: acc = acc·keep + (P·V)·add with keep = 2^(m_old − m)·l_old/l and
/// add = 1/l (both 0 while a row has seen no key).
template <class T>
void flash_softmax_update(FlashState<T> state, T* st, ScoreLayout layout, index_t rows, index_t rows_pad,
                          index_t count, T* rescale) {
  using B = native_batch<T>;
  std::copy(state.l, state.l + rows_pad, state.keep);  // l before the tile
  if (layout.by_row) {
    online_softmax_rows(state.m, state.l, st, layout.stride, rows, rows_pad, count, rescale);
  } else {
    online_softmax_tile(state.m, state.l, st, rows_pad, count, rescale);
  }
  for (index_t offset = 0; offset < rows_pad; offset += micro_blocking<T>::lanes) {
    const B l = B::load_unaligned(state.l + offset);
    const B kept = B::load_unaligned(rescale + offset) * B::load_unaligned(state.keep + offset);
    simd_ratio_or_zero(kept, l).store_unaligned(state.keep + offset);
    simd_ratio_or_zero(B(T(1)), l).store_unaligned(state.add + offset);
  }
}

/// Where the V rows of keys [first, first + count) are read from: in place, or from a
/// copy (plan.pack_values), zero-padded when the value width is not a whole number of
/// batches.
template <class T>
const T* value_rows(const FusedArgs<T>& a, const FusedPlan& plan, const FusedSizes<T>& sz,
                    const QueryTile& tile, index_t first, index_t count, T* packed, index_t& stride) {
  const T* src = &a.v(tile.batch, tile.kv_head, first, 0);
  if (!plan.pack_values) {
    stride = a.v.stride(2);
    return src;
  }
  pack_rows(src, a.v.stride(2), count, a.problem.value_dim, sz.dv_pad, packed);
  stride = sz.dv_pad;
  return packed;
}

/// Keys [j0, j0 + count) through one or (diff, streaming) two online softmax states,
/// with the tile's queries packed at qt1 (and qt2): scores into st1 (and st2), turned
/// into P with (m, l) and the RowScales updated. key_tile_values finishes it.
/// When k2 is k1 (the "V2" form), map 2 re-reads the K tile map 1 just brought into
/// L1/L2, so memory sees it once.
template <class T>
void key_tile_scores(const FusedArgs<T>& a, const FusedPlan& plan, const QueryTile& tile, index_t rows_pad,
                     ThreadWorkspace<T>& ws, const T* qt1, const T* qt2, T* st1,
                     T* st2, index_t j0, index_t count, FlashState<T> first_state,
                     const FlashState<T>* second_state) {
  T* rescale = TileStats<T>(ws.stats.data(), rows_pad).rescale;
  const ScoreLayout layout = ScoreLayout::of<T>(plan, rows_pad);
  const index_t rows = a.problem.group * tile.positions();
  score_keys(a, plan, a.k1, tile, layout, qt1, j0, count, st1, ws.keys.data());
  flash_softmax_update(first_state, st1, layout, rows, rows_pad, count, rescale);
  if (second_state != nullptr) {
    score_keys(a, plan, a.k2, tile, layout, qt2, j0, count, st2, ws.keys.data());
    flash_softmax_update(*second_state, st2, layout, rows, rows_pad, count, rescale);
  }
}

/// acc += P·V for the key tile key_tile_scores left in st1 (and st2); both maps share
/// the V tile.
template <class T>
void key_tile_values(const FusedArgs<T>& a, const FusedPlan& plan, const QueryTile& tile, index_t rows_pad,
                     const FusedSizes<T>& sz,
                     ThreadWorkspace<T>& ws, const T* st1, const T* st2, index_t j0, index_t count,
                     FlashState<T> first_state, const FlashState<T>* second_state) {
  // P·V only for the real rows: a decoding tile has a few rows in a rows_pad of a
  // whole batch.
  const index_t value_rows_used = a.problem.group * tile.positions();
  const ScoreLayout layout = ScoreLayout::of<T>(plan, rows_pad);
  index_t v_stride = 0;
  const T* v = value_rows(a, plan, sz, tile, j0, count, ws.values.data(), v_stride);
  value_tile(st1, layout.key_stride(), layout.row_stride(), value_rows_used, count, v, v_stride, sz.dv_pad,
             first_state.acc, sz.dv_pad, RowScales<T>{first_state.keep, first_state.add});
  if (second_state != nullptr) {
    value_tile(st2, layout.key_stride(), layout.row_stride(), value_rows_used, count, v, v_stride, sz.dv_pad,
               second_state->acc, sz.dv_pad, RowScales<T>{second_state->keep, second_state->add});
  }
}

/// Streams keys [key_begin, key_end) through the tile's state(s), plan.stream_tile keys
/// at a time.
template <class T>
void flash_stream(const FusedArgs<T>& a, const FusedPlan& plan, const QueryTile& tile, index_t rows_pad,
                  const FusedSizes<T>& sz, ThreadWorkspace<T>& ws, index_t key_begin,
                  index_t key_end, FlashState<T> first_state, const FlashState<T>* second_state) {
  const index_t tile_keys = plan.stream_tile;
  for (index_t j0 = key_begin; j0 < key_end; j0 += tile_keys) {
    const index_t count = std::min(tile_keys, key_end - j0);
    key_tile_scores(a, plan, tile, rows_pad, ws, ws.qt1.data(), ws.qt2.data(), ws.st1.data(), ws.st2.data(),
                    j0, count, first_state, second_state);
    key_tile_values(a, plan, tile, rows_pad, sz, ws, ws.st1.data(), ws.st2.data(), j0, count, first_state,
                    second_state);
  }
}

/// Whether a K or V view keeps the kv heads of one token next to each other and a head's
/// rows apart (the projection layout [B, N, H, D]), rather than each head's rows in a run.
template <class T>
bool heads_interleaved(TensorView<const T, 4> t) {
  return t.extent(1) > 1 && std::abs(t.stride(1)) < std::abs(t.stride(2));
}

/// Asks for the lines of keys [first, first + count) of every kv head of `t`, key by key
/// from its first head's row to the end of its last: in the projection layout
/// [B, N, H, D] that is the whole key tile, in address order.
///
/// The heads_together passes read one head's rows at a time, D·sizeof(T) bytes out of
/// every H·D·sizeof(T), which the hardware prefetchers follow poorly. On a Zen 4 (AVX-512;
/// Nk = 32768, d = 128, 8 query heads; two A/B runs, medians of 21 interleaved runs on 2
/// threads, 15 on one) asking for the tile first took Hkv 2 from 11.4–12.4 to
/// 15.4–16.6 GB/s on 2 threads and from 5.6 to 8.6–9.1 on one, and Hkv 4 from 13.2 to
/// 16.8–19.0 (2 threads) and 6.5–7.0 to 9.3–9.7 (one); differential attention (Hq 4,
/// Hkv 2, d 64) from 12.3–12.8 to 15.5–16.7. Hkv 8 (16-key tiles) stayed within 2%.
/// Asking for the next tile instead measured no better.
#if defined(__GNUC__)
// Always inlined: GCC 12 deems a function whose only effect is prefetching const and
// drops its calls (no prefetch instruction was left in the binary).
template <class T>
__attribute__((always_inline)) inline void prefetch_heads(TensorView<const T, 4> t, index_t batch, index_t first,
                                                          index_t count) {
  constexpr std::uintptr_t line = 64;
  if (t.extent(3) == 0) return;  // no rows to read (and possibly no storage)
  const index_t last_head = t.extent(1) - 1;
  for (index_t j = first; j < first + count; ++j) {
    const T* first_row = &t(batch, 0, j, 0);
    const T* last_row = &t(batch, last_head, j, 0);
    const auto begin = reinterpret_cast<std::uintptr_t>(std::min(first_row, last_row)) & ~(line - 1);
    const auto end = reinterpret_cast<std::uintptr_t>(std::max(first_row, last_row) + t.extent(3));
    for (std::uintptr_t at = begin; at < end; at += line) __builtin_prefetch(reinterpret_cast<const void*>(at), 0, 3);
  }
}
#else
template <class T>
inline void prefetch_heads(TensorView<const T, 4>, index_t, index_t, index_t) {}
#endif

/// One heads_together item: every kv head of one (batch, query tile) against one key
/// chunk, the chunk states at chunk_state(tile index, map). Per key tile the heads run
/// one after another, so the memory under the tile — every head's rows, interleaved —
/// is read whole before the next, instead of each head streaming rows H·D apart, one per
/// page, which the hardware prefetchers do not follow.
template <class T, class ChunkState>
void flash_stream_heads(const FusedArgs<T>& a, const FusedPlan& plan, index_t item, index_t rows_pad,
                        const FusedSizes<T>& sz, ThreadWorkspace<T>& ws, T logit_factor,
                        const ChunkState& chunk_state) {
  const AttentionProblem& p = a.problem;
  const index_t chunk = item % plan.chunks;
  const index_t batch = item / plan.chunks / plan.tiles_per_group;
  const index_t query_tile = item / plan.chunks % plan.tiles_per_group;
  auto tile_index = [&](index_t kv_head) { return (batch * p.kv_heads + kv_head) * plan.tiles_per_group + query_tile; };
  const index_t q_size = std::max<index_t>(p.head_dim, 1) * rows_pad;
  const index_t s_size = ScoreLayout::stream_row_keys<T>(plan) * rows_pad;
  for (index_t h = 0; h < p.kv_heads; ++h) {
    const QueryTile tile = tile_at(p, plan, tile_index(h));
    pack_queries(a.q1, p, tile, rows_pad, plan.dot_scores, logit_factor, ws.qt1.data() + h * q_size);
    flash_reset(chunk_state(tile_index(h), chunk, 0), rows_pad, sz.dv_pad);
    if (a.diff) {
      pack_queries(a.q2, p, tile, rows_pad, plan.dot_scores, logit_factor, ws.qt2.data() + h * q_size);
      flash_reset(chunk_state(tile_index(h), chunk, 1), rows_pad, sz.dv_pad);
    }
  }
  const QueryTile any_tile = tile_at(p, plan, tile_index(0));  // every head sees the same keys
  const index_t key_begin = chunk * plan.key_chunk;
  const index_t key_end = std::min(p.key_limit(any_tile.last - 1), key_begin + plan.key_chunk);
  for (index_t j0 = key_begin; j0 < key_end; j0 += plan.stream_tile) {
    const index_t count = std::min(plan.stream_tile, key_end - j0);
    // Every head's K rows of the tile, then every head's V rows: two regions read whole.
    for (int pass = 0; pass < 2; ++pass) {
      if (pass == 0) {
        prefetch_heads(a.k1, any_tile.batch, j0, count);
        if (a.diff && a.k2.data() != a.k1.data()) prefetch_heads(a.k2, any_tile.batch, j0, count);
      } else {
        prefetch_heads(a.v, any_tile.batch, j0, count);
      }
      for (index_t h = 0; h < p.kv_heads; ++h) {
        const QueryTile tile = tile_at(p, plan, tile_index(h));
        const FlashState<T> first = chunk_state(tile_index(h), chunk, 0);
        const FlashState<T> second = a.diff ? chunk_state(tile_index(h), chunk, 1) : FlashState<T>{};
        T* st1 = ws.st1.data() + h * s_size;
        T* st2 = a.diff ? ws.st2.data() + h * s_size : nullptr;
        if (pass == 0) {
          key_tile_scores(a, plan, tile, rows_pad, ws, ws.qt1.data() + h * q_size,
                          a.diff ? ws.qt2.data() + h * q_size : nullptr, st1, st2, j0, count, first,
                          a.diff ? &second : nullptr);
        } else {
          key_tile_values(a, plan, tile, rows_pad, sz, ws, st1, st2, j0, count, first, a.diff ? &second : nullptr);
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

/// Writes the tile's outputs: acc1 (standard) or acc1 − λ·acc2 (diff, streaming), the
/// accumulators already normalized. A map whose row saw no key (l = 0) contributes zero,
/// whatever λ is; a NaN l, NaN.
template <class T>
void write_flash_output(const FusedArgs<T>& a, const QueryTile& tile, index_t dv_pad,
                        FlashState<T> first, const FlashState<T>* second) {
  const AttentionProblem& p = a.problem;
  for (index_t r = 0; r < p.group * tile.positions(); ++r) {
    const index_t head = tile.head(p, r);
    const index_t position = tile.position(r);
    T* out = &a.out(tile.batch, head, position, 0);
    const T* acc1 = first.acc + r * dv_pad;
    if (second == nullptr) {
      std::copy(acc1, acc1 + p.value_dim, out);
      continue;
    }
    const T* acc2 = second->acc + r * dv_pad;
    const T lambda = second->l[r] == T(0) ? T(0) : a.lambda(tile.batch, head, position);
    for (index_t d = 0; d < p.value_dim; ++d) out[d] = acc1[d] - lambda * acc2[d];
  }
}

/// Differential attention for one tile, two-pass with one P·V product.
/// Pass 1, per key tile: scores of both maps, then (while the tile is in L1) 2^(s − m)
/// against each row's running max m, the running sums l, and the m each key tile used.
/// A workspace too large to stay in cache (plan.stream_workspace) is written with
/// non-temporal stores from an L1 tile rather than in place.
/// Pass 2, per key tile: P = e1·2^(m1_t − m1)/l1 − e2·λ·2^(m2_t − m2)/l2 into an L1
/// tile, then P·V. The rows × Nk workspace is written once and read once; forming P
/// only after every key is seen is what keeps a single P·V product (two online states
/// would need two). An earlier form (exact max, then exp, then P in place: five sweeps
/// of the workspace) ran 1.14× the standard time at N = 8192 and 1.30× at 16384, where
/// the workspace no longer fits in L2.
template <class T>
void diff_two_pass_tile(const FusedArgs<T>& a, const FusedPlan& plan, const QueryTile& tile, index_t rows_pad,
                        const FusedSizes<T>& sz, ThreadWorkspace<T>& ws) {
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  const AttentionProblem& p = a.problem;
  const index_t rows = p.group * tile.positions();
  const index_t key_end = p.key_limit(tile.last - 1);  // the last position sees the most keys
  T* st1 = ws.st1.data();
  T* st2 = ws.st2.data();
  const TileStats<T> stats(ws.stats.data(), rows_pad);
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
  auto map_tile = [&](TensorView<const T, 4> k, const T* qt, T* m, T* l, T* workspace, T* tile_max, index_t j0,
                      index_t count, index_t t) {
    T* e = workspace + j0 * rows_pad;
    T* work = plan.stream_workspace ? ws.p_tile.data() : e;
    score_keys(a, plan, k, tile, ScoreLayout{false, rows_pad}, qt, j0, count, work, ws.keys.data());
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
  for (index_t j0 = 0, t = 0; j0 < key_end; j0 += FusedPlan::key_tile, ++t) {
    const index_t count = std::min(FusedPlan::key_tile, key_end - j0);
    const T* e1 = st1 + j0 * rows_pad;
    const T* e2 = st2 + j0 * rows_pad;
    for (index_t offset = 0; offset < rows_pad; offset += lanes) {
      const B f1 = exp2_nonpositive(B::load_unaligned(tile_max1 + t * rows_pad + offset) - B::load_unaligned(m1 + offset)) *
                   B::load_unaligned(l1 + offset);
      const B f2 = exp2_nonpositive(B::load_unaligned(tile_max2 + t * rows_pad + offset) - B::load_unaligned(m2 + offset)) *
                   B::load_unaligned(l2 + offset);
      for (index_t j = 0; j < count; ++j) {
        const index_t at = j * rows_pad + offset;
        (B::load_unaligned(e1 + at) * f1 - B::load_unaligned(e2 + at) * f2).store_unaligned(pt + at);
      }
    }
    index_t v_stride = 0;
    const T* v = value_rows(a, plan, sz, tile, j0, count, ws.values.data(), v_stride);
    value_tile(pt, rows_pad, index_t{1}, rows, count, v, v_stride, sz.dv_pad, ws.acc1.data(), sz.dv_pad);
  }
  for (index_t r = 0; r < rows; ++r) {
    const T* acc = ws.acc1.data() + r * sz.dv_pad;
    std::copy(acc, acc + p.value_dim, &a.out(tile.batch, tile.head(p, r), tile.position(r), 0));
  }
}

template <class T>
FusedPlan make_plan(const FusedArgs<T>& a, const FusedSizes<T>& sz, int requested_threads,
                    std::size_t workspace_limit) {
  const AttentionProblem& p = a.problem;
  FusedPlan plan;
  const index_t groups = p.batch * p.kv_heads;
  const index_t all_keys = std::max<index_t>(p.kv_len, 1);
  // Method decisions use the shapes and the limit only (bitwise thread independence).
  plan.two_pass = a.diff && fits_in(ThreadWorkspace<T>::bytes(p, sz, FusedSizes<T>::rows_padded(p.group),
                                                              all_keys, true),
                                     workspace_limit);
  const index_t rows_wanted = p.causal && p.q_len <= FusedPlan::short_causal_len ? FusedPlan::short_causal_rows
                                                                                 : FusedPlan::target_rows;
  index_t positions = std::max<index_t>(1, rows_wanted / p.group);
  positions = std::min(positions, std::max<index_t>(p.q_len, 1));
  const index_t natural_tiles = groups * ((p.q_len + positions - 1) / positions);
  // Splits the keys in chunks, about split_items work items in all over `item_rows`
  // items per chunk; false (and no split) when the per-chunk states would not fit.
  // Long chunks stream better (each chunk starts cold and adds a merge). Nk = 32768,
  // 2 tiles, 2 threads, medians of 8 runs: 1024-key chunks 36 GB/s, 4096-key 39 GB/s.
  auto split_keys = [&](index_t item_rows) {
    const index_t chunks_wanted = (FusedPlan::split_items + item_rows - 1) / item_rows;
    const index_t key_chunk = std::max(
        FusedPlan::split_chunk_min,
        round_up((p.kv_len + chunks_wanted - 1) / chunks_wanted, FusedPlan::key_tile));
    const index_t chunks = (p.kv_len + key_chunk - 1) / key_chunk;
    const index_t state_bytes =
        size_bytes<T>(size_mul(natural_tiles, chunks, a.diff ? 2 : 1, FusedSizes<T>::rows_padded(p.group * positions),
                               size_add(sz.dv_pad, 4)));
    if (!fits_in(state_bytes, workspace_limit / 2)) return false;
    plan.key_chunk = key_chunk;
    plan.chunks = chunks;
    plan.split_keys = true;
    plan.two_pass = false;  // decoding: bandwidth-bound, stream both maps
    return true;
  };
  const bool long_keys = p.kv_len >= 4 * FusedPlan::split_chunk_min;
  if (natural_tiles < 8 && long_keys) split_keys(natural_tiles);
  plan.dot_scores = p.group * positions < micro_blocking<T>::lanes &&
                    p.head_dim >= micro_blocking<T>::lanes;
  const bool decoding = plan.dot_scores || plan.split_keys;
  if (decoding) plan.stream_tile = FusedPlan::decode_key_tile;
  index_t items = natural_tiles * plan.chunks;
  const bool interleaved = heads_interleaved(a.k1) && heads_interleaved(a.v) && (!a.diff || heads_interleaved(a.k2));
  if (decoding && interleaved && long_keys) {  // interleaved: at least 2 kv heads
    const index_t head_items = natural_tiles / p.kv_heads;  // (batch, query tile) pairs
    if (split_keys(head_items)) {
      // Every kv head in each item (flash_stream_heads).
      plan.heads_together = true;
      plan.stream_tile = std::max(FusedPlan::key_tile / 4, FusedPlan::heads_key_rows / p.kv_heads);
      items = head_items * plan.chunks;
    }
  }
  // Prefill re-reads each K and V tile from L1 for every block of rows. Rows that are not
  // adjacent share few L1 sets and evict each other (in [B, N, H, D] a head's rows are
  // H·D apart, 1–4 KB, where the set index repeats every 4 KB): copying the tile first
  // is cheap against the 2·rows FLOPs per element it feeds.
  const bool keys_apart = a.k1.stride(2) != p.head_dim || (a.diff && a.k2.stride(2) != p.head_dim);
  plan.pack_keys = !decoding && keys_apart;
  plan.pack_values = sz.pack_values || (!decoding && a.v.stride(2) != p.value_dim);
  plan.threads = resolve_threads(requested_threads, items);
  if (plan.two_pass) {
    auto fits = [&] {
      return fits_in(size_mul(plan.threads, ThreadWorkspace<T>::bytes(
                                                p, sz, FusedSizes<T>::rows_padded(p.group * positions), all_keys, true)),
                     workspace_limit);
    };
    // Shrink the tile, then the thread count, until every thread's workspace fits.
    while (positions > 1 && !fits()) positions = (positions + 1) / 2;
    while (plan.threads > 1 && !fits()) --plan.threads;
  }
  plan.positions_per_tile = positions;
  plan.stream_workspace = plan.two_pass && streams_workspace<T>(FusedSizes<T>::rows_padded(p.group * positions), all_keys);
  plan.tiles_per_group = (p.q_len + positions - 1) / positions;
  plan.tiles = groups * plan.tiles_per_group;
  if (!plan.split_keys) plan.key_chunk = all_keys;
  return plan;
}

/// The calling thread's scratch, kept between calls: allocating (and page-faulting) a
/// fresh workspace on every call cost 10–30% of a differential call at N = 1024–2048.
/// It only grows, up to options.workspace_limit; diffattn::release_scratch() frees it.
template <class T>
struct ScratchCache {
  std::vector<ThreadWorkspace<T>> workspaces;
  ScratchArray<T> chunk_storage;  // split keys: per (tile, chunk, map) states
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
  const FusedSizes<T> sz(p);
  const FusedPlan plan = make_plan(a, sz, requested_threads, workspace_limit);
  const index_t rows_pad = FusedSizes<T>::rows_padded(p.group * plan.positions_per_tile);
  const index_t maps = a.diff ? 2 : 1;
  const T logit_factor = static_cast<T>(p.scale * 1.4426950408889634074);

  // Everything is allocated here, before any thread starts.
  ScratchCache<T>& cache = scratch_cache<T>();
  std::vector<ThreadWorkspace<T>>& workspaces = cache.workspaces;
  if (workspaces.size() < static_cast<std::size_t>(plan.threads)) {
    workspaces.resize(static_cast<std::size_t>(plan.threads));
  }
  for (int t = 0; t < plan.threads; ++t) workspaces[t].reserve(p, sz, plan, rows_pad, a.diff);
  ScratchArray<T>& chunk_storage = cache.chunk_storage;
  const index_t state_size = size_mul(rows_pad, size_add(sz.dv_pad, 4));
  if (plan.split_keys) chunk_storage.reserve(size_mul(plan.tiles, plan.chunks, maps, state_size));
  auto chunk_state = [&](index_t tile, index_t chunk, index_t map) {
    T* base = chunk_storage.data() + ((tile * plan.chunks + chunk) * maps + map) * state_size;
    return FlashState<T>{base, base + rows_pad, base + 4 * rows_pad, base + 2 * rows_pad, base + 3 * rows_pad};
  };

  const index_t items = (plan.heads_together ? plan.tiles / p.kv_heads : plan.tiles) * plan.chunks;
  // Causal tiles late in the sequence cost the most: hand them out first.
  auto item_at = [&](index_t w) { return p.causal ? items - 1 - w : w; };

#if defined(_OPENMP)
#pragma omp parallel num_threads(plan.threads)
#endif
  {
    ThreadWorkspace<T>& ws = workspaces[static_cast<std::size_t>(current_thread())];
    const TileStats<T> stats(ws.stats.data(), rows_pad);
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (index_t w = 0; w < items; ++w) {
      const index_t item = item_at(w);
      if (plan.heads_together) {
        flash_stream_heads(a, plan, item, rows_pad, sz, ws, logit_factor, chunk_state);
        continue;
      }
      const index_t tile_index = item / plan.chunks;
      const index_t chunk = item % plan.chunks;
      const QueryTile tile = tile_at(p, plan, tile_index);
      pack_queries(a.q1, p, tile, rows_pad, plan.dot_scores, logit_factor, ws.qt1.data());
      if (a.diff) pack_queries(a.q2, p, tile, rows_pad, plan.dot_scores, logit_factor, ws.qt2.data());
      if (plan.two_pass) {
        diff_two_pass_tile(a, plan, tile, rows_pad, sz, ws);
        continue;
      }
      FlashState<T> first{stats.m1, stats.l1, ws.acc1.data(), stats.keep1, stats.add1};
      FlashState<T> second{stats.m2, stats.l2, ws.acc2.data(), stats.keep2, stats.add2};
      if (plan.split_keys) {
        first = chunk_state(tile_index, chunk, 0);
        if (a.diff) second = chunk_state(tile_index, chunk, 1);
      }
      flash_reset(first, rows_pad, sz.dv_pad);
      if (a.diff) flash_reset(second, rows_pad, sz.dv_pad);
      const index_t key_end = p.key_limit(tile.last - 1);
      const index_t key_begin = chunk * plan.key_chunk;
      flash_stream(a, plan, tile, rows_pad, sz, ws, key_begin, std::min(key_end, key_begin + plan.key_chunk),
                   first, a.diff ? &second : nullptr);
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
        FlashState<T> merged[2] = {{stats.m1, stats.l1, ws.acc1.data(), stats.keep1, stats.add1},
                                   {stats.m2, stats.l2, ws.acc2.data(), stats.keep2, stats.add2}};
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
