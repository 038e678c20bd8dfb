#pragma once
/// What every method's tile code shares: the per-thread workspace and its typed views,
/// the query tile, the call and tile contexts, and the packing of Q, K and V rows.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "diffattn/detail/fused/plan.hpp"
#include "diffattn/detail/workspace.hpp"
#include "diffattn/half.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {
namespace detail {

/// Online softmax state of a tile's rows for one map: running max m, sum l, and acc =
/// the output so far, Σ 2^(s − m)·v / l, kept normalized so that it stays within max|V|
/// (a sum over thousands of keys of values near the type's max would overflow). keep and
/// add are the RowScales of the key tile at hand. A row's sum is 0 exactly when it has
/// seen no key (else its max term adds 1).
template <class T>
struct FlashState {
  T* m;
  T* l;
  T* acc;  // [rows_pad, dv_pad]
  T* keep;
  T* add;
};

/// The per-row statistics of a tile, one rows_pad array each in ThreadWorkspace::stats:
/// each map's running max m and sum l and its P·V scales (RowScales: keep, add), λ per
/// row, and the rescale factors of the tile at hand.
template <class T>
struct TileStats {
  static constexpr index_t arrays = tile_stat_arrays;
  T *m1, *l1, *m2, *l2, *lambda, *rescale, *keep1, *add1, *keep2, *add2;
  TileStats(T* base, index_t rows_pad)
      : m1(base), l1(m1 + rows_pad), m2(l1 + rows_pad), l2(m2 + rows_pad), lambda(l2 + rows_pad),
        rescale(lambda + rows_pad), keep1(rescale + rows_pad), add1(keep1 + rows_pad), keep2(add1 + rows_pad),
        add2(keep2 + rows_pad) {}
  /// Map 0's or map 1's flash state, with its output accumulated in `acc`.
  FlashState<T> flash_state(int map, T* acc) const {
    return map == 0 ? FlashState<T>{m1, l1, acc, keep1, add1} : FlashState<T>{m2, l2, acc, keep2, add2};
  }
};

/// Per-thread scratch: packed Qᵀ, transposed scores, accumulators and row statistics.
template <class T>
struct ThreadWorkspace {
  ScratchArray<T> qt1, qt2, st1, st2, keys, values, acc1, acc2, stats;
  ScratchArray<T> tile_max, p_tile;  // two-pass diff only
  ScratchArray<T> pairs;             // plan.bf16_products: the weights of a key tile as bf16 pairs

  /// Scratch for tiles of `rows_pad` rows under `plan`.
  void reserve(const AttentionProblem& p, const FusedSizes<T>& sz, const FusedPlan& plan, index_t rows_pad,
               bool diff) {
    // Scores span every key (two-pass) or one stream tile; V rows are read a key tile at
    // a time (two-pass) or a stream tile; split_heads items hold every kv head's packed
    // queries and scores at once.
    const bool two_pass = plan.method == Method::two_pass;
    const index_t score_keys = two_pass ? std::max<index_t>(p.kv_len, 1) : ScoreLayout::stream_row_keys<T>(plan);
    const index_t value_keys = two_pass ? FusedPlan::key_tile : plan.stream_tile;
    const index_t query_tiles = plan.method == Method::split_heads ? p.kv_heads : 1;
    const index_t depth = std::max<index_t>(p.head_dim, 1);
    qt1.reserve(size_mul(depth, rows_pad, query_tiles));
    st1.reserve(size_mul(score_keys, rows_pad, query_tiles));
    acc1.reserve(size_mul(rows_pad, sz.dv_pad));
    if (diff) {
      qt2.reserve(size_mul(depth, rows_pad, query_tiles));
      st2.reserve(size_mul(score_keys, rows_pad, query_tiles));
      acc2.reserve(size_mul(rows_pad, sz.dv_pad));
    }
    if (plan.pack_keys) keys.reserve(size_mul(two_pass ? FusedPlan::key_tile : plan.stream_tile, depth));
    if (plan.pack_values) values.reserve(size_mul(value_keys, sz.dv_pad));
    if (plan.bf16_products) pairs.reserve(size_mul((value_keys + 1) / 2, rows_pad));
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

/// One validated call as its tiles see it: the arguments, the plan, and the sizes that
/// follow from them. Built once per call, before any thread starts.
template <class T>
struct FusedCall {
  const FusedArgs<T>& args;
  FusedPlan plan;
  FusedSizes<T> sizes;
  index_t rows_pad;    // rows of a full tile, padded (rows_padded)
  ScoreLayout layout;  // where its tiles keep their scores
  T logit_factor;      // scale·log2 e: Q is packed pre-scaled, so exp becomes exp2
  /// plan.shared_value_pairs: every kv head's V as key pairs, (Nk + 1)/2 pair rows of
  /// dv_pad each per head; set by the driver before the tiles run.
  const std::uint32_t* value_pairs = nullptr;

  FusedCall(const FusedArgs<T>& a, const FusedPlan& p, const FusedSizes<T>& sz)
      : args(a),
        plan(p),
        sizes(sz),
        rows_pad(FusedSizes<T>::rows_padded(a.problem.group * p.positions_per_tile)),
        layout(ScoreLayout::of<T>(p, rows_pad)),
        logit_factor(static_cast<T>(a.problem.scale * 1.4426950408889634074)) {}
  const AttentionProblem& problem() const { return args.problem; }
  index_t maps() const { return args.diff ? 2 : 1; }
};

/// One query tile at work on one thread: the call, the thread's workspace, the tile.
template <class T>
struct TileContext {
  const FusedCall<T>& call;
  ThreadWorkspace<T>& ws;
  QueryTile tile;

  const FusedArgs<T>& args() const { return call.args; }
  const AttentionProblem& problem() const { return call.args.problem; }
  const FusedPlan& plan() const { return call.plan; }
  index_t rows_pad() const { return call.rows_pad; }
  /// The tile's real query rows; rows from here to rows_pad are padding.
  index_t rows() const { return call.args.problem.group * tile.positions(); }
  TileStats<T> stats() const { return TileStats<T>(ws.stats.data(), call.rows_pad); }
};

/// The tile's Q rows times scale·log2 e: transposed, qt [D, rows_pad] with zero padding
/// rows, for score_tile; or row-major [rows, D] for score_tile_dot.
template <class T, class E>
void pack_queries(TensorView<const E, 4> q, const AttentionProblem& p, const QueryTile& tile,
                  index_t rows_pad, bool row_major, T factor, T* packed) {
  const index_t rows = p.group * tile.positions();
  if (p.head_dim == 0) return;  // nothing to pack (and q may have no storage)
  if (row_major) {
    for (index_t r = 0; r < rows; ++r) {
      const E* src = &q(tile.batch, tile.head(p, r), tile.position(r), 0);
      for (index_t c = 0; c < p.head_dim; ++c) packed[r * p.head_dim + c] = convert_element<T>(src[c]) * factor;
    }
    return;
  }
  // Transposed: one head's positions at a time, so the inner loop is a constant-stride
  // read the compiler can vectorize.
  const index_t positions = tile.positions(), stride = q.stride(2), depth = p.head_dim;
  for (index_t h = 0; h < p.group; ++h) {
    const E* src = &q(tile.batch, tile.head(p, h * positions), tile.first, 0);
    T* dst = packed + h * positions;
    for (index_t c = 0; c < depth; ++c) {
      for (index_t i = 0; i < positions; ++i) dst[c * rows_pad + i] = convert_element<T>(src[i * stride + c]) * factor;
    }
  }
  for (index_t c = 0; c < depth; ++c) std::fill(packed + c * rows_pad + rows, packed + (c + 1) * rows_pad, T(0));
}

/// A float workspace array holding bf16 pairs instead (never read as float).
template <class T>
std::uint32_t* pair_storage(T* data) {
  return reinterpret_cast<std::uint32_t*>(data);
}
template <class T>
const std::uint32_t* pair_storage(const T* data) {
  return reinterpret_cast<const std::uint32_t*>(data);
}

/// The tile's Q rows as depth pairs: qp[(c/2)·rows_pad + r] holds q[r][c] in its low half
/// (even c) or high half (odd c); zero in padding rows and past an odd depth.
inline void pack_query_pairs(TensorView<const bf16, 4> q, const AttentionProblem& p, const QueryTile& tile,
                             index_t rows_pad, std::uint32_t* qp) {
  const index_t rows = p.group * tile.positions(), pairs = (p.head_dim + 1) / 2, whole = p.head_dim / 2;
  for (index_t r = 0; r < rows; ++r) {
    const bf16* src = &q(tile.batch, tile.head(p, r), tile.position(r), 0);
    for (index_t c = 0; c < whole; ++c) std::memcpy(&qp[c * rows_pad + r], src + 2 * c, sizeof(std::uint32_t));
    if (whole < pairs) {  // odd depth: the last element alone, high half zero
      std::uint16_t bits;
      std::memcpy(&bits, src + 2 * whole, sizeof bits);
      qp[whole * rows_pad + r] = bits;
    }
  }
  for (index_t c = 0; c < pairs; ++c) std::fill(qp + c * rows_pad + rows, qp + (c + 1) * rows_pad, std::uint32_t{0});
}

/// The tile's Q rows as they are, row-major [rows, D] (bf16 decoding tiles: the score
/// kernel scales its fp32 sums).
inline void pack_query_rows(TensorView<const bf16, 4> q, const AttentionProblem& p, const QueryTile& tile, bf16* packed) {
  for (index_t r = 0; r < p.group * tile.positions(); ++r) {
    const bf16* src = &q(tile.batch, tile.head(p, r), tile.position(r), 0);
    std::copy(src, src + p.head_dim, packed + r * p.head_dim);
  }
}

/// Packs both maps' queries of the context's tile: into qt1 and qt2, or (split_heads
/// items, which hold every kv head's tile) at `offset` into them.
template <class T>
void pack_tile_queries(const TileContext<T>& c, index_t offset = 0) {
  const FusedArgs<T>& a = c.args();
  auto pack = [&](const ElementView<T>& q, T* packed) {
    q.visit([&](const auto& view) {
      using E = typename std::decay_t<decltype(view)>::value_type;
      if constexpr (bf16_dot_for<T> && std::is_same_v<E, bf16>) {
        if (c.plan().bf16_products) {
          pack_query_pairs(view, a.problem, c.tile, c.rows_pad(), pair_storage(packed));
          return;
        }
        if (c.plan().bf16_dot_scores) {
          pack_query_rows(view, a.problem, c.tile, reinterpret_cast<bf16*>(packed));
          return;
        }
      }
      pack_queries(view, a.problem, c.tile, c.rows_pad(), c.plan().dot_scores(), c.call.logit_factor, packed);
    });
  };
  pack(a.q1, c.ws.qt1.data() + offset);
  if (a.diff) pack(a.q2, c.ws.qt2.data() + offset);
}

/// Copies `count` rows of `width` elements, `stride` apart at src, one after another to
/// dst at `padded_width` apart, converted to T, zero-filling each row's padding.
template <class T, class E>
void pack_rows(const E* src, index_t stride, index_t count, index_t width, index_t padded_width, T* dst) {
  for (index_t j = 0; j < count; ++j) {
    const E* row = src + j * stride;
    T* packed = dst + j * padded_width;
    if constexpr (std::is_same_v<T, E>) {
      std::copy(row, row + width, packed);
    } else {
      for (index_t c = 0; c < width; ++c) packed[c] = convert_element<T>(row[c]);
    }
    std::fill(packed + width, dst + (j + 1) * padded_width, T(0));
  }
}

/// Calls f(rows, stride) with the V rows of keys [first, first + count): in place (of T,
/// or of a half type the kernel converts as it loads), or a copy of T (plan.pack_values),
/// zero-padded when the value width is not a whole number of batches.
template <class T, class F>
void with_value_rows(const TileContext<T>& c, index_t first, index_t count, F&& f) {
  const FusedArgs<T>& a = c.args();
  a.v.visit([&](const auto& v) {
    const auto* src = &v(c.tile.batch, c.tile.kv_head, first, 0);
    if (!c.plan().pack_values) {
      f(src, v.stride(2));
      return;
    }
    pack_rows(src, v.stride(2), count, a.problem.value_dim, c.call.sizes.dv_pad, c.ws.values.data());
    f(static_cast<const T*>(c.ws.values.data()), c.call.sizes.dv_pad);
  });
}

/// Writes row r of a tile's output, out(batch, head, position, 0..value_dim): values[d] or,
/// with `second`, values[d] − λ·second[d]; converted to out's element type.
template <class T>
void write_output_row(const TileContext<T>& c, index_t r, const T* values, const T* second, T lambda) {
  const FusedArgs<T>& a = c.args();
  const AttentionProblem& p = a.problem;
  const QueryTile& tile = c.tile;
  a.out.visit([&](const auto& out) {
    auto* dst = &out(tile.batch, tile.head(p, r), tile.position(r), 0);
    using E = std::remove_pointer_t<decltype(dst)>;
    if (second == nullptr) {
      if constexpr (std::is_same_v<T, E>) {
        std::copy(values, values + p.value_dim, dst);
      } else {
        for (index_t d = 0; d < p.value_dim; ++d) dst[d] = convert_element<E>(values[d]);
      }
      return;
    }
    for (index_t d = 0; d < p.value_dim; ++d) dst[d] = convert_element<E>(values[d] - lambda * second[d]);
  });
}

}  // namespace detail
}  // namespace diffattn
