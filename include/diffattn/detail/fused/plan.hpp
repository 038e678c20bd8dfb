#pragma once
/// Which method runs a validated call, and how its tiles are laid out (FusedPlan,
/// make_plan). docs/design.md explains the methods; docs/tuning.md the constants.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "diffattn/detail/fused/element_views.hpp"
#include "diffattn/detail/kernels/blocking.hpp"
#include "diffattn/detail/simd/avx512_bf16.hpp"
#include "diffattn/detail/simd.hpp"
#include "diffattn/detail/validation.hpp"
#include "diffattn/detail/workspace.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {
namespace detail {

/// A validated call: its views and the problem they describe. The kernels compute in T;
/// q, k/v and out may hold other element types (element_views.hpp); mask and λ hold T.
template <class T>
struct FusedArgs {
  ElementView<T> q1, q2, k1, k2, v;  // q2, k2 only for diff
  TensorView<const T, 4> mask;       // may be empty
  TensorView<const T, 3> lambda;     // [B, Hq, Nq], diff only
  ElementView<T, true> out;
  AttentionProblem problem;
  bool diff = false;
};

/// Whether calls with q of Q and k/v of KV round the softmax weights P to bf16 for the
/// P·V product (the bf16 dot-product tiles; attention.hpp states what it costs).
template <class Q, class KV>
constexpr bool rounds_weights_to_bf16() {
  return has_bf16_dot_product && std::is_same_v<Q, bf16> && std::is_same_v<KV, bf16>;
}

/// How a call's work is done. Every method works on query tiles (QueryTile: the rows of
/// every query head of one kv head over a range of positions).
enum class Method {
  /// One work item per query tile streams every visible key through an online softmax
  /// (flash.hpp). Standard attention always, unless it splits keys; differential
  /// attention when the two-pass workspace does not fit (then two online states and two
  /// P·V products: "streaming", 1.5× the FLOPs at Dv = 2D).
  flash,
  /// Differential attention only: each query tile holds both maps' exponentials for all
  /// its keys in a rows × Nk workspace, then forms P = P1 − λ·P2 and runs one P·V product
  /// (two_pass.hpp).
  two_pass,
  /// Decoding (few query tiles, long Nk): each query tile's keys are cut into `chunks`
  /// chunks of `key_chunk` keys, one work item each, whose flash states merge in chunk
  /// order (decode.hpp).
  split_keys,
  /// split_keys whose items each take one key chunk of every kv head, for K/V stored
  /// [B, N, H, D] (heads interleaved), so memory is read in address order (decode.hpp).
  split_heads,
};

/// How a tile computes its scores.
enum class ScoreKernel {
  /// score_tile: Sᵀ = K·Qᵀ with query rows along the SIMD lanes (Qᵀ packed transposed).
  rows_in_lanes,
  /// score_tile_dot: dot products along D, for tiles with fewer rows than a batch has
  /// lanes (Q packed row-major). Decoding.
  depth_in_lanes,
};

/// Tiling and method decisions for one call. Only `positions_per_tile` and `threads`
/// may depend on the thread count; they never change a result.
///
/// Legal combinations (make_plan only makes these):
/// - two_pass: diff only; chunks = 1; scores kept Sᵀ whatever the score kernel;
///   stream_workspace only here.
/// - flash: chunks = 1. With ScoreKernel::depth_in_lanes the tile keeps S by row and
///   streams decode_key_tile keys at a time, else key_tile.
/// - split_keys, split_heads: decoding; stream tile decode_key_tile (split_heads: a few
///   rows of every head, heads_key_rows in all).
/// - pack_keys for prefill tiles whose K rows are not adjacent, and for half-precision K
///   under ScoreKernel::rows_in_lanes (prefill or split); pack_values whenever V rows need
///   padding to whole batches, are not adjacent in a prefill tile, or are half precision
///   under rows_in_lanes.
/// - bf16_products: rows_in_lanes only; then pack_keys is false and pack_values true.
struct FusedPlan {
  static constexpr index_t key_tile = 64;     // keys per tile (two-pass, and prefill)
  /// Decoding tiles: K and V come from memory, and each tile switches the stream from K
  /// to V and back, so longer tiles stream better; no software prefetch (docs/tuning.md,
  /// "FusedPlan::decode_key_tile").
  static constexpr index_t decode_key_tile = 512;
  /// split_heads: K (or V) rows of all heads per key tile, at least 16 keys
  /// (docs/tuning.md, "FusedPlan::heads_key_rows").
  static constexpr index_t heads_key_rows = 128;
  static constexpr index_t target_rows = 64;  // query rows per tile (all heads of a group)
  /// Short causal sequences: half-height tiles, so less of each diagonal tile is masked
  /// work (at N = 128 a 64-row tiling computes 1.5× the visible scores, a 32-row 1.24×).
  static constexpr index_t short_causal_rows = 32;
  static constexpr index_t short_causal_len = 512;
  /// Keys per split chunk at least; long chunks stream better (each starts cold and
  /// adds a merge; docs/tuning.md, "FusedPlan::split_chunk_min").
  static constexpr index_t split_chunk_min = 1024;
  /// Two-pass tiles whose workspace (both maps' 2^(s − m), rows × Nk) is at least this
  /// large stream it with non-temporal stores from an L1 tile: above it every line
  /// written in place costs a read for ownership and displaces K/V lines the next tiles
  /// read again (docs/tuning.md, "FusedPlan::stream_workspace_bytes").
  static constexpr std::size_t stream_workspace_bytes = std::size_t{4} << 20;
  /// Split decoding aims at about this many work items (chunks × tiles; docs/tuning.md,
  /// "FusedPlan::split_items").
  static constexpr index_t split_items = 16;
  static constexpr index_t max_split_chunks = split_items;
  static constexpr index_t key_tiles(index_t keys) { return keys / key_tile + (keys % key_tile != 0); }

  Method method = Method::flash;
  ScoreKernel score_kernel = ScoreKernel::rows_in_lanes;
  bool stream_workspace = false;  // two_pass: exponentials reach the workspace by streaming stores
  /// Prefill tiles whose K (V) rows are not adjacent in memory copy each key tile into a
  /// packed buffer first (score_keys, value_rows), and V tiles too when their width
  /// needs padding.
  bool pack_keys = false;
  bool pack_values = false;
  /// Both tile products on bf16 pairs (bf16_products.hpp): q and k/v bf16, rows along the
  /// lanes, AVX512_BF16. K is read in place; pack_values holds V's key pairs.
  bool bf16_products = false;
  /// bf16_products: V is packed as key pairs once per call, every kv head, rather than by
  /// every query tile again (when it fits half the workspace limit).
  bool shared_value_pairs = false;
  /// Decoding tiles' scores on bf16 pairs (score_tile_dot_bf16): q and k/v bf16,
  /// depth_in_lanes, AVX512_BF16; and their P·V too (value_rows_bf16) for tiles of up to
  /// value_few_rows_max rows whose V rows are read in place.
  bool bf16_dot_scores = false;
  index_t positions_per_tile = 1;  // query positions per tile; rows = group × positions
  index_t tiles_per_group = 0;     // ceil(Nq / positions_per_tile)
  index_t tiles = 0;               // B × Hkv × tiles_per_group
  index_t key_chunk = 0;           // keys per split chunk (all keys when not split)
  index_t chunks = 1;
  index_t stream_tile = key_tile;  // keys per tile in flash_stream
  int threads = 1;

  bool splits_keys() const { return method == Method::split_keys || method == Method::split_heads; }
  bool dot_scores() const { return score_kernel == ScoreKernel::depth_in_lanes; }
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
/// rows along the SIMD lanes, so the softmax statistics are lane-wise. Decoding flash
/// tiles (ScoreKernel::depth_in_lanes) keep S, each row's keys in a run padded with −inf
/// to whole batches, so the softmax runs on whole batches of keys: Sᵀ would cost one
/// batch of mostly padding rows per key (docs/tuning.md, "ScoreLayout: S for decoding").
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
    return plan.dot_scores() && plan.method != Method::two_pass ? ScoreLayout{true, stream_row_keys<T>(plan)}
                                                                : ScoreLayout{false, rows_pad};
  }
};

/// Per-row statistics arrays of a tile (TileStats).
inline constexpr index_t tile_stat_arrays = 10;

/// Scratch elements one thread needs for a tile of `rows_pad` rows whose scores span
/// `score_keys` keys (saturated: see size_mul). Packed K and V tiles are counted whether
/// or not the plan packs them.
template <class T>
index_t tile_workspace_elements(const AttentionProblem& p, const FusedSizes<T>& sz, index_t rows_pad,
                                index_t score_keys, bool diff) {
  const index_t maps = diff ? 2 : 1;
  const index_t two_pass =
      diff ? size_mul(size_add(size_mul(2, FusedPlan::key_tiles(score_keys)), FusedPlan::key_tile), rows_pad) : 0;
  return size_add(size_mul(maps, size_add(size_mul(p.head_dim, rows_pad), size_mul(score_keys, rows_pad),
                                          size_mul(rows_pad, sz.dv_pad))),
                  size_mul(FusedPlan::key_tile, size_add(p.head_dim, sz.dv_pad)),
                  size_mul(tile_stat_arrays, rows_pad), two_pass);
}
template <class T>
index_t tile_workspace_bytes(const AttentionProblem& p, const FusedSizes<T>& sz, index_t rows_pad,
                             index_t score_keys, bool diff) {
  return size_bytes<T>(tile_workspace_elements(p, sz, rows_pad, score_keys, diff));
}

/// Bytes of every kv head's V as bf16 key pairs (FusedPlan::shared_value_pairs).
template <class T>
index_t value_pair_bytes(const AttentionProblem& p, const FusedSizes<T>& sz) {
  return size_bytes<std::uint32_t>(size_mul(p.batch, p.kv_heads, (p.kv_len + 1) / 2, sz.dv_pad));
}

/// Whether a K or V view keeps the kv heads of one token next to each other and a head's
/// rows apart (the projection layout [B, N, H, D]), rather than each head's rows in a run.
template <class View>
bool heads_interleaved(const View& t) {
  return t.extent(1) > 1 && std::abs(t.stride(1)) < std::abs(t.stride(2));
}

template <class T>
FusedPlan make_plan(const FusedArgs<T>& a, const FusedSizes<T>& sz, int requested_threads,
                    std::size_t workspace_limit) {
  const AttentionProblem& p = a.problem;
  FusedPlan plan;
  const index_t groups = p.batch * p.kv_heads;
  const index_t all_keys = std::max<index_t>(p.kv_len, 1);
  // Method decisions use the shapes and the limit only (bitwise thread independence).
  if (a.diff && fits_in(tile_workspace_bytes(p, sz, FusedSizes<T>::rows_padded(p.group), all_keys, true),
                        workspace_limit)) {
    plan.method = Method::two_pass;
  }
  const index_t rows_wanted = p.causal && p.q_len <= FusedPlan::short_causal_len ? FusedPlan::short_causal_rows
                                                                                 : FusedPlan::target_rows;
  index_t positions = std::max<index_t>(1, rows_wanted / p.group);
  positions = std::min(positions, std::max<index_t>(p.q_len, 1));
  const index_t natural_tiles = groups * ((p.q_len + positions - 1) / positions);
  // Splits the keys in chunks, about split_items work items in all over `item_rows`
  // items per chunk; false (and no split) when the per-chunk states would not fit.
  // Decoding is bandwidth-bound: both maps stream, never two-pass.
  auto split_keys = [&](index_t item_rows, Method method) {
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
    plan.method = method;
    return true;
  };
  const bool long_keys = p.kv_len >= 4 * FusedPlan::split_chunk_min;
  if (natural_tiles < 8 && long_keys) split_keys(natural_tiles, Method::split_keys);
  if (p.group * positions < micro_blocking<T>::lanes && p.head_dim >= micro_blocking<T>::lanes) {
    plan.score_kernel = ScoreKernel::depth_in_lanes;
  }
  const bool decoding = plan.dot_scores() || plan.splits_keys();
  if (decoding) plan.stream_tile = FusedPlan::decode_key_tile;
  index_t items = natural_tiles * plan.chunks;
  const bool interleaved = heads_interleaved(a.k1) && heads_interleaved(a.v) && (!a.diff || heads_interleaved(a.k2));
  if (decoding && interleaved && long_keys) {  // interleaved: at least 2 kv heads
    const index_t head_items = natural_tiles / p.kv_heads;  // (batch, query tile) pairs
    if (split_keys(head_items, Method::split_heads)) {
      plan.stream_tile = std::max(FusedPlan::key_tile / 4, FusedPlan::heads_key_rows / p.kv_heads);
      items = head_items * plan.chunks;
    }
  }
  // Prefill re-reads each K and V tile from L1 for every block of rows. Rows that are not
  // adjacent share few L1 sets and evict each other (in [B, N, H, D] a head's rows are
  // H·D apart, 1–4 KB, where the set index repeats every 4 KB): copying the tile first
  // is cheap against the 2·rows FLOPs per element it feeds.
  // Half-precision K and V rows are converted as tiles with rows along the lanes pack
  // them, once per query tile, rather than at every load of the micro-kernels (each
  // element there feeds rows/lanes FMAs); tiles of a few rows (depth_in_lanes) read each
  // row once and convert it in registers.
  const bool keys_apart = a.k1.stride(2) != p.head_dim || (a.diff && a.k2.stride(2) != p.head_dim);
  const bool bf16_dot = has_bf16_dot_product && std::is_same_v<T, float> && a.q1.element() == Element::bf16 &&
                       a.k1.element() == Element::bf16;
  plan.bf16_products = bf16_dot && !plan.dot_scores();
  plan.bf16_dot_scores = bf16_dot && plan.dot_scores();
  const bool half_rows = a.k1.element() != Element::compute && !plan.dot_scores();  // k1, k2, v: one type
  plan.pack_keys = ((!decoding && keys_apart) || half_rows) && !plan.bf16_products;
  plan.pack_values = sz.pack_values || (!decoding && a.v.stride(2) != p.value_dim) || half_rows;
  plan.threads = resolve_threads(requested_threads, items);
  if (plan.method == Method::two_pass) {
    auto fits = [&] {
      return fits_in(size_mul(plan.threads, tile_workspace_bytes(p, sz, FusedSizes<T>::rows_padded(p.group * positions),
                                                                 all_keys, true)),
                     workspace_limit);
    };
    // Shrink the tile, then the thread count, until every thread's workspace fits.
    while (positions > 1 && !fits()) positions = (positions + 1) / 2;
    while (plan.threads > 1 && !fits()) --plan.threads;
  }
  plan.shared_value_pairs = plan.bf16_products && fits_in(value_pair_bytes(p, sz), workspace_limit / 2);
  plan.positions_per_tile = positions;
  plan.stream_workspace = plan.method == Method::two_pass &&
                          streams_workspace<T>(FusedSizes<T>::rows_padded(p.group * positions), all_keys);
  plan.tiles_per_group = (p.q_len + positions - 1) / positions;
  plan.tiles = groups * plan.tiles_per_group;
  if (!plan.splits_keys()) plan.key_chunk = all_keys;
  return plan;
}

}  // namespace detail
}  // namespace diffattn
