#pragma once
/// The fused backward pass for one query tile, in the manner of FlashAttention-2 but with
/// nothing saved from the forward: the tile recomputes its rows' scores against every
/// key it sees, holding them in a rows × Nk workspace as the forward's two-pass tile
/// does, so that its softmax statistics are exact before any gradient is formed.
///   Pass 1, per key tile: Sᵀ = K·Qᵀ (each map), the online max and sum, and
///   dPᵀ = V·dOᵀ (one product, shared by both maps); D = Σ_j P_j·dP_j per row and map
///   kept online beside the sum, so it needs no extra sweep.
///   Pass 2, per key tile: P and dS = P∘(dP − D)·scale into L1 tiles, then
///   dV += Pᵀ·dO, dK += dSᵀ·Q (the work item's accumulators) and dQ += dS·K (the tile's).
/// Five products of 2·rows·keys·width FLOPs each: 10·N²·D per standard head at Dv = D.
/// Differential attention forms P = P1 − λ·P2 for its one dV product and shares dP, so
/// a head of D, Dv = 2D costs what the standard backward of its two heads of D costs.
/// docs/design.md ("Backward pass") derives the formulas.

#include <algorithm>
#include <cstddef>
#include <limits>
#include <type_traits>

#include "diffattn/detail/fused/element_views.hpp"
#include "diffattn/detail/fused/online_softmax.hpp"
#include "diffattn/detail/fused/scores.hpp"
#include "diffattn/detail/fused/tile.hpp"
#include "diffattn/detail/kernels/score_tile.hpp"
#include "diffattn/detail/kernels/value_tile.hpp"
#include "diffattn/detail/simd.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

/// A validated backward call: the forward's arguments (FusedArgs::out unused), the
/// incoming gradient and the gradient outputs. As in the forward, the tensors may hold
/// bf16 or f16 (T = float): dout q's type or float, each gradient its input's or float.
template <class T>
struct BackwardArgs {
  FusedArgs<T> forward;
  ElementView<T> dout;
  ElementView<T, true> dq1, dq2, dk1, dk2, dv;
  /// dλ of every query row, [B, Hq, Nq] row-major (diff only); the caller sums it into
  /// dlambda's broadcast shape.
  T* dlambda_rows = nullptr;
  bool shared_dk = false;  // dk1 and dk2 are one view: one accumulator takes both maps
};

/// The row-major widths a backward tile pads to: whole batches.
template <class T>
struct BackwardSizes {
  index_t d_pad, dv_pad;
  explicit BackwardSizes(const AttentionProblem& p)
      : d_pad(round_up(std::max<index_t>(p.head_dim, 1), micro_blocking<T>::lanes)),
        dv_pad(round_up(std::max<index_t>(p.value_dim, 1), micro_blocking<T>::lanes)) {}
};

/// Per-thread scratch of the backward tiles. `tile` holds what the forward's score code
/// uses (packed Qᵀ, packed keys, row statistics).
template <class T>
struct BackwardWorkspace {
  ThreadWorkspace<T> tile;
  ScratchArray<T> e1, e2, dpt;           // [Nk, rows_pad]: 2^(s − m) of each map, dPᵀ
  ScratchArray<T> tile_max;              // [2, key tiles, rows_pad]: the m each key tile used
  ScratchArray<T> dot, do_rows;          // dOᵀ [Dv, rows_pad], dO [rows_pad, dv_pad]
  ScratchArray<T> q_rows1, q_rows2;      // Q [rows_pad, d_pad], unscaled
  ScratchArray<T> p_tile, ds1, ds2;      // [key_tile, rows_pad]
  ScratchArray<T> key_rows;              // a key tile [key_tile, d_pad] for dQ += dS·K
  ScratchArray<T> value_rows;            // half-precision V: a key tile [key_tile, Dv] in T
  ScratchArray<T> dq_acc1, dq_acc2;      // [rows_pad, d_pad]
  ScratchArray<T> row_stats;             // D̃1, D̃2, rescale2, λ/l2 [rows_pad each]
  ScratchArray<T> dk_acc1, dk_acc2, dv_acc;  // one segment's dK, dV [Nk, pad] (unsegmented calls)

  /// Elements one thread needs (saturated), for the plan's sizes.
  static index_t elements(const AttentionProblem& p, const BackwardSizes<T>& sz, index_t rows_pad, bool diff,
                          bool own_accumulators) {
    const index_t maps = diff ? 2 : 1;
    const index_t keys = std::max<index_t>(p.kv_len, 1);
    const index_t tile_part = tile_workspace_elements(p, FusedSizes<T>(p), rows_pad, FusedPlan::key_tile, diff);
    return size_add(tile_part, size_mul(maps + 1, keys, rows_pad), size_mul(2, FusedPlan::key_tiles(keys) + 1, rows_pad),
                    size_mul(p.value_dim, rows_pad), size_mul(rows_pad, size_add(sz.dv_pad, size_mul(2 * maps, sz.d_pad))),
                    size_mul(3 + 1, FusedPlan::key_tile, size_add(rows_pad, sz.d_pad)), size_mul(4, rows_pad),
                    size_mul(FusedPlan::key_tile, p.value_dim),
                    own_accumulators ? size_mul(keys, size_add(size_mul(maps, sz.d_pad), sz.dv_pad)) : 0);
  }

  void reserve(const AttentionProblem& p, const BackwardSizes<T>& sz, const FusedPlan& plan, index_t rows_pad, bool diff,
               bool own_accumulators) {
    tile.reserve(p, FusedSizes<T>(p), plan, rows_pad, diff);
    const index_t keys = std::max<index_t>(p.kv_len, 1);
    e1.reserve(size_mul(keys, rows_pad));
    if (diff) e2.reserve(size_mul(keys, rows_pad));
    dpt.reserve(size_mul(keys, rows_pad));
    tile_max.reserve(size_mul(2, FusedPlan::key_tiles(keys) + 1, rows_pad));
    dot.reserve(size_mul(std::max<index_t>(p.value_dim, 1), rows_pad));
    do_rows.reserve(size_mul(rows_pad, sz.dv_pad));
    q_rows1.reserve(size_mul(rows_pad, sz.d_pad));
    dq_acc1.reserve(size_mul(rows_pad, sz.d_pad));
    if (diff) {
      q_rows2.reserve(size_mul(rows_pad, sz.d_pad));
      dq_acc2.reserve(size_mul(rows_pad, sz.d_pad));
      ds2.reserve(size_mul(FusedPlan::key_tile, rows_pad));
    }
    p_tile.reserve(size_mul(FusedPlan::key_tile, rows_pad));
    ds1.reserve(size_mul(FusedPlan::key_tile, rows_pad));
    key_rows.reserve(size_mul(FusedPlan::key_tile, sz.d_pad));
    value_rows.reserve(size_mul(FusedPlan::key_tile, std::max<index_t>(p.value_dim, 1)));
    row_stats.reserve(size_mul(4, rows_pad));
    if (own_accumulators) {
      dk_acc1.reserve(size_mul(keys, sz.d_pad));
      if (diff) dk_acc2.reserve(size_mul(keys, sz.d_pad));
      dv_acc.reserve(size_mul(keys, sz.dv_pad));
    }
  }
};

/// Where a work item accumulates dK (each map) and dV for its kv head: [Nk, d_pad] and
/// [Nk, dv_pad]. dk2 == dk1 when the call's dk1 and dk2 are one view.
template <class T>
struct KeyGradients {
  T* dk1;
  T* dk2;
  T* dv;
};

/// The tile's rows of `x` (q or dout: head tile.head(r), position tile.position(r)),
/// row-major [rows_pad, width_pad] in T, zero-padded.
template <class T>
void pack_tile_rows(const ElementView<T>& x, const AttentionProblem& p, const QueryTile& tile, index_t rows_pad,
                    index_t width, index_t width_pad, T* dst) {
  const index_t rows = p.group * tile.positions();
  if (width > 0) {
    x.visit([&](const auto& view) {
      for (index_t r = 0; r < rows; ++r) {
        pack_rows(&view(tile.batch, tile.head(p, r), tile.position(r), 0), 0, 1, width, width_pad,
                  dst + r * width_pad);
      }
    });
  } else {
    std::fill(dst, dst + rows * width_pad, T(0));
  }
  std::fill(dst + rows * width_pad, dst + rows_pad * width_pad, T(0));
}

/// acc[r] = acc[r]·rescale[r] + Σ_j e[j][r]·dp[j][r] over a key tile, lane-wise over rows:
/// the online D̃ = Σ_j 2^(s_j − m)·dP_j, rescaled with the running max as l is.
template <class T>
void online_row_dot(T* acc, const T* rescale, const T* e, const T* dp, index_t rows_pad, index_t count) {
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  for (index_t offset = 0; offset < rows_pad; offset += lanes) {
    B sum0(T(0)), sum1(T(0));  // two chains, in a fixed order
    index_t j = 0;
    for (; j + 2 <= count; j += 2) {
      const index_t at = j * rows_pad + offset;
      sum0 = simd_fma(B::load_unaligned(e + at), B::load_unaligned(dp + at), sum0);
      sum1 = simd_fma(B::load_unaligned(e + at + rows_pad), B::load_unaligned(dp + at + rows_pad), sum1);
    }
    if (j < count) {
      const index_t at = j * rows_pad + offset;
      sum0 = simd_fma(B::load_unaligned(e + at), B::load_unaligned(dp + at), sum0);
    }
    simd_fma(B::load_unaligned(acc + offset), B::load_unaligned(rescale + offset), sum0 + sum1)
        .store_unaligned(acc + offset);
  }
}

/// Calls f(rows, stride) with the rows of keys [first, first + count) of `x` (K or V) in
/// T: in place when they hold T and are `width_pad` wide, else converted into `buffer`,
/// zero-padded to width_pad.
template <class T, class F>
void with_rows_in(const ElementView<T>& x, const QueryTile& tile, index_t first, index_t count, index_t width_pad,
                  T* buffer, F&& f) {
  x.visit([&](const auto& view) {
    const auto* src = &view(tile.batch, tile.kv_head, first, 0);
    const index_t width = view.extent(3);
    if constexpr (std::is_same_v<std::remove_const_t<std::remove_pointer_t<decltype(src)>>, T>) {
      if (width == width_pad) {
        f(src, view.stride(2));
        return;
      }
    }
    pack_rows(src, view.stride(2), count, width, width_pad, buffer);
    f(static_cast<const T*>(buffer), width_pad);
  });
}

/// dst[0, width) = src converted to dst's element type.
template <class T, class E>
void convert_row(const T* src, index_t width, E* dst) {
  if constexpr (std::is_same_v<T, E>) {
    std::copy(src, src + width, dst);
  } else {
    for (index_t c = 0; c < width; ++c) dst[c] = convert_element<E>(src[c]);
  }
}

/// The backward pass of one query tile: writes its rows of dq1 (and dq2), their dλ, and
/// adds their share of dK and dV into `grads`.
template <class T>
void backward_tile(const BackwardArgs<T>& b, const TileContext<T>& c, BackwardWorkspace<T>& w,
                   const BackwardSizes<T>& sz, KeyGradients<T> grads) {
  const FusedArgs<T>& a = b.forward;
  const AttentionProblem& p = a.problem;
  const QueryTile& tile = c.tile;
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  constexpr index_t key_tile = FusedPlan::key_tile;
  const index_t rows = c.rows(), rows_pad = c.rows_pad();
  const bool diff = a.diff;
  const index_t key_end = p.key_limit(tile.last - 1);
  const TileStats<T> stats = c.stats();
  T *m1 = stats.m1, *l1 = stats.l1, *m2 = stats.m2, *l2 = stats.l2, *rescale1 = stats.rescale;
  T* d1 = w.row_stats.data();  // D̃, then D
  T* d2 = d1 + rows_pad;
  T* rescale2 = d2 + rows_pad;
  T* lambda_l2 = rescale2 + rows_pad;  // λ/l2 (0 where map 2 sees no key)
  T* tile_max1 = w.tile_max.data();
  T* tile_max2 = tile_max1 + (FusedPlan::key_tiles(key_end) + 1) * rows_pad;
  const T scale = static_cast<T>(p.scale);

  pack_tile_queries(c);
  pack_tile_rows(a.q1, p, tile, rows_pad, p.head_dim, sz.d_pad, w.q_rows1.data());
  if (diff) pack_tile_rows(a.q2, p, tile, rows_pad, p.head_dim, sz.d_pad, w.q_rows2.data());
  pack_tile_rows(b.dout, p, tile, rows_pad, p.value_dim, sz.dv_pad, w.do_rows.data());
  {
    AttentionProblem values = p;  // dOᵀ packs as queries of depth Dv, unscaled
    values.head_dim = p.value_dim;
    b.dout.visit([&](const auto& view) { pack_queries(view, values, tile, rows_pad, false, T(1), w.dot.data()); });
  }

  std::fill(m1, m1 + rows_pad, -std::numeric_limits<T>::infinity());
  std::fill(m2, m2 + rows_pad, -std::numeric_limits<T>::infinity());
  std::fill(l1, l1 + rows_pad, T(0));
  std::fill(l2, l2 + rows_pad, T(0));
  std::fill(d1, d1 + 2 * rows_pad, T(0));

  // Pass 1: scores, exponentials against the running max, dPᵀ, and the online D̃.
  for (index_t j0 = 0, t = 0; j0 < key_end; j0 += key_tile, ++t) {
    const index_t count = std::min(key_tile, key_end - j0);
    T* dp = w.dpt.data() + j0 * rows_pad;
    if (p.value_dim > 0) {
      with_rows_in(a.v, tile, j0, count, p.value_dim, w.value_rows.data(), [&](const T* values, index_t stride) {
        score_tile(values, stride, count, w.dot.data(), rows_pad, rows_pad, p.value_dim, dp, rows_pad);
      });
    } else {
      std::fill(dp, dp + count * rows_pad, T(0));
    }
    T* e1 = w.e1.data() + j0 * rows_pad;
    score_keys(c, a.k1, c.ws.qt1.data(), j0, count, e1);
    online_softmax_tile(m1, l1, e1, rows_pad, count, rescale1);
    std::copy(m1, m1 + rows_pad, tile_max1 + t * rows_pad);
    online_row_dot(d1, rescale1, e1, dp, rows_pad, count);
    if (diff) {
      T* e2 = w.e2.data() + j0 * rows_pad;
      score_keys(c, a.k2, c.ws.qt2.data(), j0, count, e2);
      online_softmax_tile(m2, l2, e2, rows_pad, count, rescale2);
      std::copy(m2, m2 + rows_pad, tile_max2 + t * rows_pad);
      online_row_dot(d2, rescale2, e2, dp, rows_pad, count);
    }
  }

  // Row factors: l becomes 1/l (λ/l2 for map 2), D̃ becomes D, m a safe shift.
  for (index_t r = 0; r < rows_pad; ++r) {
    lambda_l2[r] = diff && r < rows ? a.lambda(tile.batch, tile.head(p, r), tile.position(r)) : T(0);
  }
  for (index_t offset = 0; offset < rows_pad; offset += lanes) {
    const B inv1 = simd_ratio_or_zero(B(T(1)), B::load_unaligned(l1 + offset));
    inv1.store_unaligned(l1 + offset);
    (B::load_unaligned(d1 + offset) * inv1).store_unaligned(d1 + offset);
    safe_shift<T>(B::load_unaligned(m1 + offset)).store_unaligned(m1 + offset);
    if (diff) {
      const B l2v = B::load_unaligned(l2 + offset);
      (B::load_unaligned(d2 + offset) * simd_ratio_or_zero(B(T(1)), l2v)).store_unaligned(d2 + offset);
      simd_ratio_or_zero(B::load_unaligned(lambda_l2 + offset), l2v).store_unaligned(l2 + offset);
      safe_shift<T>(B::load_unaligned(m2 + offset)).store_unaligned(m2 + offset);
    }
  }
  if (diff) {  // ∂out/∂λ = −P2·V, so dλ = −Σ_j P2_j·dP_j = −D2 (0 where map 2 sees no key)
    for (index_t r = 0; r < rows; ++r) {
      b.dlambda_rows[(tile.batch * p.q_heads + tile.head(p, r)) * p.q_len + tile.position(r)] = -d2[r];
    }
  }

  // Pass 2: P and dS tile by tile, then the three products that consume them.
  std::fill(w.dq_acc1.data(), w.dq_acc1.data() + rows_pad * sz.d_pad, T(0));
  if (diff) std::fill(w.dq_acc2.data(), w.dq_acc2.data() + rows_pad * sz.d_pad, T(0));
  T* factor1 = stats.keep1;
  T* factor2 = stats.keep2;
  T* pt = w.p_tile.data();
  T* ds1 = w.ds1.data();
  T* ds2 = diff ? w.ds2.data() : nullptr;
  for (index_t j0 = 0, t = 0; j0 < key_end; j0 += key_tile, ++t) {
    const index_t count = std::min(key_tile, key_end - j0);
    const T* e1 = w.e1.data() + j0 * rows_pad;
    const T* e2 = diff ? w.e2.data() + j0 * rows_pad : nullptr;
    const T* dp = w.dpt.data() + j0 * rows_pad;
    for (index_t offset = 0; offset < rows_pad; offset += lanes) {
      (exp2_nonpositive(B::load_unaligned(tile_max1 + t * rows_pad + offset) - B::load_unaligned(m1 + offset)) *
       B::load_unaligned(l1 + offset))
          .store_unaligned(factor1 + offset);
      if (diff) {
        (exp2_nonpositive(B::load_unaligned(tile_max2 + t * rows_pad + offset) - B::load_unaligned(m2 + offset)) *
         B::load_unaligned(l2 + offset))
            .store_unaligned(factor2 + offset);
      }
    }
    for (index_t offset = 0; offset < rows_pad; offset += lanes) {
      const B f1 = B::load_unaligned(factor1 + offset), D1 = B::load_unaligned(d1 + offset);
      const B s(scale);
      if (!diff) {
        for (index_t j = 0; j < count; ++j) {
          const index_t at = j * rows_pad + offset;
          const B p1 = B::load_unaligned(e1 + at) * f1;
          p1.store_unaligned(pt + at);
          (p1 * (B::load_unaligned(dp + at) - D1) * s).store_unaligned(ds1 + at);
        }
        continue;
      }
      const B f2 = B::load_unaligned(factor2 + offset), D2 = B::load_unaligned(d2 + offset);
      for (index_t j = 0; j < count; ++j) {
        const index_t at = j * rows_pad + offset;
        const B p1 = B::load_unaligned(e1 + at) * f1;
        const B lp2 = B::load_unaligned(e2 + at) * f2;  // λ·P2
        const B dpv = B::load_unaligned(dp + at);
        (p1 - lp2).store_unaligned(pt + at);
        (p1 * (dpv - D1) * s).store_unaligned(ds1 + at);
        (lp2 * (D2 - dpv) * s).store_unaligned(ds2 + at);
      }
    }
    // dV[j] += Σ_r P[r][j]·dO[r]: the key tile's rows are the output rows, the query
    // rows the summed dimension (weights at pt[j·rows_pad + r]).
    if (p.value_dim > 0) {
      value_tile(pt, index_t{1}, rows_pad, count, rows, w.do_rows.data(), sz.dv_pad, sz.dv_pad,
                 grads.dv + j0 * sz.dv_pad, sz.dv_pad);
    }
    if (p.head_dim == 0) continue;
    auto score_gradients = [&](const T* ds, const T* q_rows, const ElementView<T>& k, T* dk, T* dq) {
      value_tile(ds, index_t{1}, rows_pad, count, rows, q_rows, sz.d_pad, sz.d_pad, dk + j0 * sz.d_pad, sz.d_pad);
      with_rows_in(k, tile, j0, count, sz.d_pad, w.key_rows.data(), [&](const T* keys, index_t key_stride) {
        value_tile(ds, rows_pad, index_t{1}, rows, count, keys, key_stride, sz.d_pad, dq, sz.d_pad);
      });
    };
    score_gradients(ds1, w.q_rows1.data(), a.k1, grads.dk1, w.dq_acc1.data());
    if (diff) score_gradients(ds2, w.q_rows2.data(), a.k2, grads.dk2, w.dq_acc2.data());
  }

  auto write_dq = [&](const T* acc, const ElementView<T, true>& dq) {
    if (p.head_dim == 0) return;
    dq.visit([&](const auto& view) {
      for (index_t r = 0; r < rows; ++r) {
        convert_row(acc + r * sz.d_pad, p.head_dim, &view(tile.batch, tile.head(p, r), tile.position(r), 0));
      }
    });
  };
  write_dq(w.dq_acc1.data(), b.dq1);
  if (diff) write_dq(w.dq_acc2.data(), b.dq2);
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
