#pragma once
/// \file
/// Gradients of the attention kernels, for training: softmax_attention_backward and
/// diff_attention_backward, fused (scores recomputed tile by tile, no Nq × Nk matrix).
///
/// Shapes, layouts, strides, grouped-query attention, causal, the mask and every argument
/// check are the forward's (attention.hpp), plus: dout has out's shape; each gradient has
/// its input's shape (dlambda λ's), a contiguous last dimension and a distinct element per
/// index, and shares no memory with an input or another gradient (diffattn::shape_error).
/// The one exception: when k2 is the same view as k1 (shared keys), dk1 and dk2 may be
/// the same view, which then receives the sum of both maps' key gradients.
/// Gradients are written, not accumulated into. With grouped-query attention dk and dv
/// sum over the query heads that read each kv head; dlambda sums over every position that
/// reads each λ (its broadcast dimensions).
///
/// Element types: every tensor float, or every tensor double; or, computing in float, the
/// forward's half-precision mixes (q of float, bf16 or f16; k and v of one of those), dout
/// of float or q's type, dq of float or q's type, dk and dv of float or k's type, λ, dλ
/// and the mask float. Half-precision rows are converted to float as a tile packs them;
/// every product and sum is fp32.
///
/// Nothing from the forward is needed: each query tile recomputes its scores (and exact
/// softmax statistics) from q and k. docs/design.md ("Backward pass") gives the method and
/// its cost: 2·B·Hq·Nq·Nk·(3D + 2Dv) FLOPs for standard attention, 2.5× the forward's at
/// D = Dv; a differential head of D, Dv = 2D costs what two standard heads of D do.
/// Scratch memory is linear in the lengths: per thread, (maps + 1)·Nk scores for each of
/// a tile's up to 64 query rows and Nk·(2D + Dv) gradient sums; calls with fewer than 16
/// kv heads × batch also keep up to 16 such sums in all. Tiles shrink to fit
/// options.workspace_limit down to one position per tile; a call whose one-position tile
/// needs more still runs, on one thread. Results are bitwise identical for any thread count.
///
/// Edge cases: a row that sees no key has zero gradient (its dq row is 0, and it adds
/// nothing to dk, dv or dλ), and so has a differential map whose row sees no key, whatever
/// λ is (even NaN), as in the forward. Logits up to ±1e30 do not overflow. NaN and ±inf
/// inputs propagate to the gradients they reach.
///
/// Accuracy, against diffattn::reference's backward run in double on the same inputs (max
/// abs error per gradient):
///   |dv − ref| <= max|dout|·C·ε              |dq − ref| <= scale·max|k|·(1 + |λ|max)·2·Δ·ε
///   |dk − ref| <= scale·max|q|·C·2·Δ·ε       |dλ − ref| <= rows·Δ·ε
/// - Δ = max |dout_r·v_j| over the (row, key) pairs a row sees (at most Dv·max|dout|·max|v|):
///   the bound of |dP|, so |dP − D| <= 2Δ and Σ_j |dS_rj| <= (1 + |λ|)·2Δ for each row.
/// - C = max over keys of Σ_r (P1_rj + |λ_r|·P2_rj), at least 1: the weight a key receives
///   from all the rows that read it (Nq·group at most). rows: the rows summed into one dλ.
/// - ε = (160 + 6·⌈Nk/64⌉ + 6·⌈Nq·group/64⌉ + D + Dv)·u + 2·ε_logit, with u and ε_logit as in
///   the forward's bound (attention.hpp): the weights carry the forward's rounding, each
///   gradient sums keys (or rows) 64 to a chunk as the forward's P·V does, and dP and the
///   scores are fp32 dot products of length Dv and D; plus the reference's own rounding,
///   (2·(Nk + Nq·group) + 16)·2⁻⁵³, which matters for double only. Doubled for dk when dk1
///   and dk2 are one view (it holds two sums).
/// Half precision: the float bound holds for what the kernel computes from the (exact)
/// half values; a gradient stored in bf16 or f16 adds its rounding, 2⁻⁸ (bf16) or 2⁻¹¹
/// (f16) of its largest magnitude.
/// tests/test_backward.cpp enforces it (with ε_logit = 0 for random inputs, as the
/// forward's sweep does) over random cases in float, double and four half-precision mixes;
/// the worst float case came to 0.03 of the bound.

#include <cstddef>
#include <type_traits>
#include <vector>

#include "diffattn/attention.hpp"
#include "diffattn/detail/fused/backward_run.hpp"
#include "diffattn/detail/validation_backward.hpp"
#include "diffattn/options.hpp"
#include "diffattn/reference_backward.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {
namespace detail {

/// Sums the per-row dλ ([B, Hq, Nq] row-major) into dlambda's shape, in double, in row
/// order: the same sum for any thread count.
template <class T, std::size_t Rank>
void sum_lambda_gradient(const T* rows, const AttentionProblem& p, TensorView<T, Rank> dlambda) {
  std::vector<double> sums(static_cast<std::size_t>(dlambda.size()), 0.0);
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t h = 0; h < p.q_heads; ++h)
      for (index_t i = 0; i < p.q_len; ++i) {
        sums[static_cast<std::size_t>(lambda_slot(dlambda, b, h, i))] +=
            static_cast<double>(rows[(b * p.q_heads + h) * p.q_len + i]);
      }
  write_lambda_gradient(sums, dlambda);
}

/// The element types a mixed-type backward call may take, checked at compile time: those
/// of the forward (check_mixed_types), dout of float or q's type, and each gradient of
/// float or its input's type.
template <class Q, class Q2, class K, class K2, class V, class DO, class GQ, class GK>
constexpr void check_backward_types() {
  check_mixed_types<Q, Q2, K, K2, V, DO>();
  static_assert(std::is_same_v<GQ, float> || std::is_same_v<GQ, Q>, "diffattn: dq is float or of q's element type");
  static_assert(std::is_same_v<GK, float> || std::is_same_v<GK, K>,
                "diffattn: dk and dv are float or of k's element type");
}

template <class T, class Q, class KV, class DO, class GQ, class GK>
void run_softmax_attention_backward(TensorView<const Q, 4> q, TensorView<const KV, 4> k, TensorView<const KV, 4> v,
                                    TensorView<const DO, 4> dout, TensorView<GQ, 4> dq, TensorView<GK, 4> dk,
                                    TensorView<GK, 4> dv, const AttentionOptions<T>& options) {
  BackwardArgs<T> b;
  b.forward.problem =
      validate_softmax_backward("softmax_attention_backward", q, k, v, dout, dq, dk, dv, options, b.forward.mask);
  b.forward.q1 = q;
  b.forward.k1 = k;
  b.forward.v = v;
  b.dout = dout;
  b.dq1 = dq;
  b.dk1 = dk;
  b.dv = dv;
  fused_backward(b, options.threads, options.workspace_limit);
}

template <class T, std::size_t LambdaRank, class Q, class KV, class DO, class GQ, class GK>
void run_diff_attention_backward(TensorView<const Q, 4> q1, TensorView<const Q, 4> q2, TensorView<const KV, 4> k1,
                                 TensorView<const KV, 4> k2, TensorView<const KV, 4> v,
                                 TensorView<const T, LambdaRank> lambda, TensorView<const DO, 4> dout,
                                 TensorView<GQ, 4> dq1, TensorView<GQ, 4> dq2, TensorView<GK, 4> dk1,
                                 TensorView<GK, 4> dk2, TensorView<GK, 4> dv, TensorView<T, LambdaRank> dlambda,
                                 const AttentionOptions<T>& options) {
  BackwardArgs<T> b;
  const DiffBackwardChecked<T> checked = validate_diff_backward("diff_attention_backward", q1, q2, k1, k2, v, lambda,
                                                                dout, dq1, dq2, dk1, dk2, dv, dlambda, options,
                                                                b.forward.mask);
  b.forward.problem = checked.problem;
  b.forward.lambda = checked.lambda;
  b.forward.q1 = q1;
  b.forward.q2 = q2;
  b.forward.k1 = k1;
  b.forward.k2 = k2;
  b.forward.v = v;
  b.forward.diff = true;
  b.dout = dout;
  b.dq1 = dq1;
  b.dq2 = dq2;
  b.dk1 = dk1;
  b.dk2 = dk2;
  b.dv = dv;
  b.shared_dk = checked.shared_dk;
  fused_backward(b, options.threads, options.workspace_limit);
  sum_lambda_gradient(b.dlambda_rows, checked.problem, dlambda);
}

/// Body of both mixed-type diff_attention_backward overloads (λ per head or per token).
template <class Q1, class Q2, class K1, class K2, class V, class DO, class GQ, class GK, std::size_t LambdaRank>
void run_mixed_diff_attention_backward(const Q1& q1, const Q2& q2, const K1& k1, const K2& k2, const V& v,
                                       TensorView<const float, LambdaRank> lambda, const DO& dout,
                                       TensorView<GQ, 4> dq1, TensorView<GQ, 4> dq2, TensorView<GK, 4> dk1,
                                       TensorView<GK, 4> dk2, TensorView<GK, 4> dv,
                                       TensorView<float, LambdaRank> dlambda, const AttentionOptions<float>& options) {
  check_backward_types<view_element_t<Q1>, view_element_t<Q2>, view_element_t<K1>, view_element_t<K2>,
                       view_element_t<V>, view_element_t<DO>, GQ, GK>();
  run_diff_attention_backward<float>(read_view(q1), read_view(q2), read_view(k1), read_view(k2), read_view(v), lambda,
                                     read_view(dout), dq1, dq2, dk1, dk2, dv, dlambda, options);
}

}  // namespace detail

/// Gradients of out = softmax_attention(q, k, v, options) for the loss gradient dout.
/// q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], dout [B, Hq, Nq, Dv],
/// dq [B, Hq, Nq, D], dk [B, Hkv, Nk, D], dv [B, Hkv, Nk, Dv].
template <class T, detail::enable_compute_t<T> = 0>
void softmax_attention_backward(detail::identity_t<TensorView<const T, 4>> q,
                                detail::identity_t<TensorView<const T, 4>> k,
                                detail::identity_t<TensorView<const T, 4>> v,
                                detail::identity_t<TensorView<const T, 4>> dout, TensorView<T, 4> dq,
                                TensorView<T, 4> dk, TensorView<T, 4> dv,
                                const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::run_softmax_attention_backward<T>(q, k, v, dout, dq, dk, dv, options);
}

/// Gradients of standard attention on half-precision tensors, computed in float: q, k/v
/// and dout of the forward's types (dout as out: float or q's type), dq of float or q's
/// type, dk and dv of float or k's type. q, k, v, dout: rank-4 Tensor or TensorView.
template <class Q, class K, class V, class DO, class GQ, class GK,
          detail::enable_mixed_t<GQ, Q, K, V, DO, TensorView<GK, 4>> = 0>
void softmax_attention_backward(const Q& q, const K& k, const V& v, const DO& dout, TensorView<GQ, 4> dq,
                                TensorView<GK, 4> dk, TensorView<GK, 4> dv,
                                const AttentionOptions<float>& options = {}) {
  using QE = detail::view_element_t<Q>;
  using KE = detail::view_element_t<K>;
  detail::check_backward_types<QE, QE, KE, KE, detail::view_element_t<V>, detail::view_element_t<DO>, GQ, GK>();
  detail::run_softmax_attention_backward<float>(detail::read_view(q), detail::read_view(k), detail::read_view(v),
                                                detail::read_view(dout), dq, dk, dv, options);
}

/// Gradients of out = diff_attention(q1, q2, k1, k2, v, lambda, options), λ per head.
/// Shapes as diff_attention; dq1, dq2 as q1, dk1, dk2 as k1, dv as v, dlambda [Hq|1] as
/// lambda. dk1 and dk2 may be one view when k1 and k2 are.
template <class T, detail::enable_compute_t<T> = 0>
void diff_attention_backward(detail::identity_t<TensorView<const T, 4>> q1,
                             detail::identity_t<TensorView<const T, 4>> q2,
                             detail::identity_t<TensorView<const T, 4>> k1,
                             detail::identity_t<TensorView<const T, 4>> k2,
                             detail::identity_t<TensorView<const T, 4>> v,
                             detail::identity_t<TensorView<const T, 1>> lambda,
                             detail::identity_t<TensorView<const T, 4>> dout, TensorView<T, 4> dq1,
                             TensorView<T, 4> dq2, TensorView<T, 4> dk1, TensorView<T, 4> dk2, TensorView<T, 4> dv,
                             TensorView<T, 1> dlambda, const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::run_diff_attention_backward<T>(q1, q2, k1, k2, v, lambda, dout, dq1, dq2, dk1, dk2, dv, dlambda, options);
}

/// As above with λ per query token and head: lambda and dlambda [B|1, Hq|1, Nq|1].
template <class T, detail::enable_compute_t<T> = 0>
void diff_attention_backward(detail::identity_t<TensorView<const T, 4>> q1,
                             detail::identity_t<TensorView<const T, 4>> q2,
                             detail::identity_t<TensorView<const T, 4>> k1,
                             detail::identity_t<TensorView<const T, 4>> k2,
                             detail::identity_t<TensorView<const T, 4>> v,
                             detail::identity_t<TensorView<const T, 3>> lambda,
                             detail::identity_t<TensorView<const T, 4>> dout, TensorView<T, 4> dq1,
                             TensorView<T, 4> dq2, TensorView<T, 4> dk1, TensorView<T, 4> dk2, TensorView<T, 4> dv,
                             TensorView<T, 3> dlambda, const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::run_diff_attention_backward<T>(q1, q2, k1, k2, v, lambda, dout, dq1, dq2, dk1, dk2, dv, dlambda, options);
}

/// Gradients of differential attention (λ per head) on half-precision tensors, with the
/// types of the half-precision softmax_attention_backward; λ and dλ are float.
template <class Q1, class Q2, class K1, class K2, class V, class DO, class GQ, class GK,
          detail::enable_mixed_t<GQ, Q1, Q2, K1, K2, V, DO, TensorView<GK, 4>> = 0>
void diff_attention_backward(const Q1& q1, const Q2& q2, const K1& k1, const K2& k2, const V& v,
                             TensorView<const float, 1> lambda, const DO& dout, TensorView<GQ, 4> dq1,
                             TensorView<GQ, 4> dq2, TensorView<GK, 4> dk1, TensorView<GK, 4> dk2, TensorView<GK, 4> dv,
                             TensorView<float, 1> dlambda, const AttentionOptions<float>& options = {}) {
  detail::run_mixed_diff_attention_backward(q1, q2, k1, k2, v, lambda, dout, dq1, dq2, dk1, dk2, dv, dlambda, options);
}

/// As above with λ per token: lambda and dlambda [B|1, Hq|1, Nq|1].
template <class Q1, class Q2, class K1, class K2, class V, class DO, class GQ, class GK,
          detail::enable_mixed_t<GQ, Q1, Q2, K1, K2, V, DO, TensorView<GK, 4>> = 0>
void diff_attention_backward(const Q1& q1, const Q2& q2, const K1& k1, const K2& k2, const V& v,
                             TensorView<const float, 3> lambda, const DO& dout, TensorView<GQ, 4> dq1,
                             TensorView<GQ, 4> dq2, TensorView<GK, 4> dk1, TensorView<GK, 4> dk2, TensorView<GK, 4> dv,
                             TensorView<float, 3> dlambda, const AttentionOptions<float>& options = {}) {
  detail::run_mixed_diff_attention_backward(q1, q2, k1, k2, v, lambda, dout, dq1, dq2, dk1, dk2, dv, dlambda, options);
}

}  // namespace diffattn
