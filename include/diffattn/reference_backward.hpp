#pragma once
/// \file
/// Reference backward kernels: the gradients of reference::softmax_attention and
/// reference::diff_attention by plain loops that accumulate in double, materializing one
/// row of weights at a time. The oracle the fused backward is tested against (and itself
/// tested against finite differences of the reference forward). Slow on purpose.

#include <cstddef>
#include <vector>

#include "diffattn/options.hpp"
#include "diffattn/reference.hpp"
#include "diffattn/tensor.hpp"
#include "diffattn/detail/validation_backward.hpp"

namespace diffattn {
namespace detail {

/// Gradients accumulated in double over every query row, written at the end: dK and dV
/// sum over the query heads of a group (and over both maps when dk1 and dk2 are one view).
struct ReferenceGradients {
  std::vector<double> dk1, dk2, dv;
  explicit ReferenceGradients(const AttentionProblem& p, bool diff) {
    const auto keys = static_cast<std::size_t>(p.batch * p.kv_heads * p.kv_len);
    dk1.assign(keys * static_cast<std::size_t>(p.head_dim), 0.0);
    if (diff) dk2.assign(dk1.size(), 0.0);
    dv.assign(keys * static_cast<std::size_t>(p.value_dim), 0.0);
  }
};

/// The row of one query (b, h, i) in a backward pass: its dO·V products over the keys
/// it sees, dP[j] = Σ_c dout(b, h, i, c)·v(b, h / group, j, c).
template <class T>
void reference_dp_row(TensorView<const T, 4> v, TensorView<const T, 4> dout, const AttentionProblem& p, index_t b,
                      index_t h, index_t i, std::vector<double>& dp) {
  dp.assign(static_cast<std::size_t>(p.kv_len), 0.0);
  for (index_t j = 0; j < p.key_limit(i); ++j) {
    double dot = 0;
    for (index_t c = 0; c < p.value_dim; ++c) {
      dot += static_cast<double>(dout(b, h, i, c)) * static_cast<double>(v(b, h / p.group, j, c));
    }
    dp[j] = dot;
  }
}

/// One map's share of a query row: given its softmax weights p and dS = ∂loss/∂logit,
/// dq(b, h, i, :) = scale·Σ_j dS_j·k_j, and dk_acc[j] += scale·dS_j·q(b, h, i, :).
template <class T>
void reference_score_gradients(const std::vector<double>& ds, TensorView<const T, 4> q, TensorView<const T, 4> k,
                               TensorView<T, 4> dq, std::vector<double>& dk_acc, const AttentionProblem& p,
                               index_t b, index_t h, index_t i) {
  const index_t kv_head = h / p.group;
  for (index_t c = 0; c < p.head_dim; ++c) {
    double acc = 0;
    for (index_t j = 0; j < p.key_limit(i); ++j) acc += ds[j] * static_cast<double>(k(b, kv_head, j, c));
    dq(b, h, i, c) = static_cast<T>(p.scale * acc);
  }
  for (index_t j = 0; j < p.key_limit(i); ++j) {
    if (ds[j] == 0) continue;
    double* row = dk_acc.data() + ((b * p.kv_heads + kv_head) * p.kv_len + j) * p.head_dim;
    for (index_t c = 0; c < p.head_dim; ++c) row[c] += p.scale * ds[j] * static_cast<double>(q(b, h, i, c));
  }
}

/// dv_acc[j] += weights[j]·dout(b, h, i, :).
template <class T>
void reference_value_gradients(const std::vector<double>& weights, TensorView<const T, 4> dout,
                               std::vector<double>& dv_acc, const AttentionProblem& p, index_t b, index_t h,
                               index_t i) {
  for (index_t j = 0; j < p.key_limit(i); ++j) {
    if (weights[j] == 0) continue;
    double* row = dv_acc.data() + ((b * p.kv_heads + h / p.group) * p.kv_len + j) * p.value_dim;
    for (index_t c = 0; c < p.value_dim; ++c) row[c] += weights[j] * static_cast<double>(dout(b, h, i, c));
  }
}

/// dS = P∘(dP − D) with D = Σ_j P_j·dP_j, times `factor`; returns D.
inline double reference_softmax_gradient(const std::vector<double>& weights, const std::vector<double>& dp,
                                         double factor, std::vector<double>& ds) {
  double d = 0;
  for (std::size_t j = 0; j < weights.size(); ++j) d += weights[j] * dp[j];
  ds.resize(weights.size());
  for (std::size_t j = 0; j < weights.size(); ++j) ds[j] = factor * weights[j] * (dp[j] - d);
  return d;
}

template <class T>
void write_gradient(const std::vector<double>& acc, TensorView<T, 4> out) {
  std::size_t at = 0;
  for (index_t b = 0; b < out.extent(0); ++b)
    for (index_t h = 0; h < out.extent(1); ++h)
      for (index_t j = 0; j < out.extent(2); ++j)
        for (index_t c = 0; c < out.extent(3); ++c) out(b, h, j, c) = static_cast<T>(acc[at++]);
}

template <class T>
void reference_softmax_attention_backward(const char* fn, TensorView<const T, 4> q, TensorView<const T, 4> k,
                                          TensorView<const T, 4> v, TensorView<const T, 4> dout, TensorView<T, 4> dq,
                                          TensorView<T, 4> dk, TensorView<T, 4> dv,
                                          const AttentionOptions<T>& options) {
  TensorView<const T, 4> mask;
  const AttentionProblem p = validate_softmax_backward(fn, q, k, v, dout, dq, dk, dv, options, mask);
  ReferenceGradients acc(p, false);
  std::vector<double> weights, dp, ds;
  for (index_t b = 0; b < p.batch; ++b) {
    for (index_t h = 0; h < p.q_heads; ++h) {
      for (index_t i = 0; i < p.q_len; ++i) {
        reference_softmax_weights(q, k, mask, p, b, h, i, weights);
        reference_dp_row(v, dout, p, b, h, i, dp);
        reference_softmax_gradient(weights, dp, 1.0, ds);
        reference_score_gradients(ds, q, k, dq, acc.dk1, p, b, h, i);
        reference_value_gradients(weights, dout, acc.dv, p, b, h, i);
      }
    }
  }
  write_gradient(acc.dk1, dk);
  write_gradient(acc.dv, dv);
}

/// Offset into λ's own (unwidened) elements that position (b, h, i) reads.
template <class T>
index_t lambda_slot(TensorView<T, 1> lambda, index_t, index_t h, index_t) {
  return lambda.extent(0) == 1 ? 0 : h;
}
template <class T>
index_t lambda_slot(TensorView<T, 3> lambda, index_t b, index_t h, index_t i) {
  const index_t bb = lambda.extent(0) == 1 ? 0 : b, hh = lambda.extent(1) == 1 ? 0 : h;
  const index_t ii = lambda.extent(2) == 1 ? 0 : i;
  return (bb * lambda.extent(1) + hh) * lambda.extent(2) + ii;
}

/// Writes per-slot sums (row-major over dlambda's extents) into dlambda.
template <class T>
void write_lambda_gradient(const std::vector<double>& sums, TensorView<T, 1> dlambda) {
  for (index_t h = 0; h < dlambda.extent(0); ++h) dlambda(h) = static_cast<T>(sums[h]);
}
template <class T>
void write_lambda_gradient(const std::vector<double>& sums, TensorView<T, 3> dlambda) {
  std::size_t at = 0;
  for (index_t b = 0; b < dlambda.extent(0); ++b)
    for (index_t h = 0; h < dlambda.extent(1); ++h)
      for (index_t i = 0; i < dlambda.extent(2); ++i) dlambda(b, h, i) = static_cast<T>(sums[at++]);
}

template <class T, std::size_t LambdaRank>
void reference_diff_attention_backward(const char* fn, TensorView<const T, 4> q1, TensorView<const T, 4> q2,
                                       TensorView<const T, 4> k1, TensorView<const T, 4> k2, TensorView<const T, 4> v,
                                       TensorView<const T, LambdaRank> lambda, TensorView<const T, 4> dout,
                                       TensorView<T, 4> dq1, TensorView<T, 4> dq2, TensorView<T, 4> dk1,
                                       TensorView<T, 4> dk2, TensorView<T, 4> dv, TensorView<T, LambdaRank> dlambda,
                                       const AttentionOptions<T>& options) {
  TensorView<const T, 4> mask;
  const DiffBackwardChecked<T> checked = validate_diff_backward(fn, q1, q2, k1, k2, v, lambda, dout, dq1, dq2, dk1,
                                                                dk2, dv, dlambda, options, mask);
  const AttentionProblem& p = checked.problem;
  ReferenceGradients acc(p, true);
  std::vector<double> dlambda_sums(static_cast<std::size_t>(lambda.size()), 0.0);
  std::vector<double> weights1, weights2, combined, dp, ds;
  for (index_t b = 0; b < p.batch; ++b) {
    for (index_t h = 0; h < p.q_heads; ++h) {
      for (index_t i = 0; i < p.q_len; ++i) {
        reference_softmax_weights(q1, k1, mask, p, b, h, i, weights1);
        // A map whose row sees no key contributes zero whatever λ is (the forward's rule),
        // and so receives no gradient.
        const bool second = reference_softmax_weights(q2, k2, mask, p, b, h, i, weights2);
        const double lam = second ? static_cast<double>(checked.lambda(b, h, i)) : 0.0;
        reference_dp_row(v, dout, p, b, h, i, dp);
        combined = weights1;
        for (std::size_t j = 0; j < combined.size(); ++j) combined[j] -= lam * weights2[j];
        reference_value_gradients(combined, dout, acc.dv, p, b, h, i);
        reference_softmax_gradient(weights1, dp, 1.0, ds);
        reference_score_gradients(ds, q1, k1, dq1, acc.dk1, p, b, h, i);
        // out = … − λ·P2·V: the second map's dP is −λ·dP, and ∂out/∂λ = −P2·V.
        const double d2 = reference_softmax_gradient(weights2, dp, -lam, ds);
        reference_score_gradients(ds, q2, k2, dq2, acc.dk2, p, b, h, i);
        dlambda_sums[static_cast<std::size_t>(lambda_slot(lambda, b, h, i))] -= d2;
      }
    }
  }
  if (checked.shared_dk) {
    for (std::size_t e = 0; e < acc.dk1.size(); ++e) acc.dk1[e] += acc.dk2[e];
    write_gradient(acc.dk1, dk1);
  } else {
    write_gradient(acc.dk1, dk1);
    write_gradient(acc.dk2, dk2);
  }
  write_gradient(acc.dv, dv);
  write_lambda_gradient(dlambda_sums, dlambda);
}

}  // namespace detail

namespace reference {

/// Gradients of out = reference::softmax_attention(q, k, v, options) for the loss
/// gradient dout, computed in double. dq, dk and dv are written (not accumulated into);
/// with grouped-query attention dk and dv sum over the query heads of each kv head.
/// q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], dout [B, Hq, Nq, Dv],
/// dq [B, Hq, Nq, D], dk [B, Hkv, Nk, D], dv [B, Hkv, Nk, Dv].
template <class T>
void softmax_attention_backward(detail::identity_t<TensorView<const T, 4>> q,
                                detail::identity_t<TensorView<const T, 4>> k,
                                detail::identity_t<TensorView<const T, 4>> v,
                                detail::identity_t<TensorView<const T, 4>> dout, TensorView<T, 4> dq,
                                TensorView<T, 4> dk, TensorView<T, 4> dv,
                                const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::reference_softmax_attention_backward<T>("reference::softmax_attention_backward", q, k, v, dout, dq, dk, dv,
                                                  options);
}

/// Gradients of reference::diff_attention with λ per head, computed in double.
/// dlambda [Hq|1] has lambda's shape and receives the sum over every row that reads each
/// λ. dk1 and dk2 may be one view when k1 and k2 are (shared keys): it receives the sum.
/// Shapes as diff_attention; dq1, dq2 as q, dk1, dk2 as k, dv as v.
template <class T>
void diff_attention_backward(detail::identity_t<TensorView<const T, 4>> q1,
                             detail::identity_t<TensorView<const T, 4>> q2,
                             detail::identity_t<TensorView<const T, 4>> k1,
                             detail::identity_t<TensorView<const T, 4>> k2,
                             detail::identity_t<TensorView<const T, 4>> v,
                             detail::identity_t<TensorView<const T, 1>> lambda,
                             detail::identity_t<TensorView<const T, 4>> dout, TensorView<T, 4> dq1,
                             TensorView<T, 4> dq2, TensorView<T, 4> dk1, TensorView<T, 4> dk2, TensorView<T, 4> dv,
                             TensorView<T, 1> dlambda, const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::reference_diff_attention_backward<T>("reference::diff_attention_backward", q1, q2, k1, k2, v, lambda, dout,
                                               dq1, dq2, dk1, dk2, dv, dlambda, options);
}

/// As above with λ per token, lambda and dlambda [B|1, Hq|1, Nq|1].
template <class T>
void diff_attention_backward(detail::identity_t<TensorView<const T, 4>> q1,
                             detail::identity_t<TensorView<const T, 4>> q2,
                             detail::identity_t<TensorView<const T, 4>> k1,
                             detail::identity_t<TensorView<const T, 4>> k2,
                             detail::identity_t<TensorView<const T, 4>> v,
                             detail::identity_t<TensorView<const T, 3>> lambda,
                             detail::identity_t<TensorView<const T, 4>> dout, TensorView<T, 4> dq1,
                             TensorView<T, 4> dq2, TensorView<T, 4> dk1, TensorView<T, 4> dk2, TensorView<T, 4> dv,
                             TensorView<T, 3> dlambda, const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::reference_diff_attention_backward<T>("reference::diff_attention_backward", q1, q2, k1, k2, v, lambda, dout,
                                               dq1, dq2, dk1, dk2, dv, dlambda, options);
}

}  // namespace reference
}  // namespace diffattn
