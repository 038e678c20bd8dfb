#pragma once
/// \file
/// Reference kernels: plain loops that accumulate in double. They are the oracle the
/// fast kernels are tested against, and are public so downstream code can test too.
/// Slow on purpose: O(B·Hq·Nq·Nk·(D + Dv)) with no blocking, no SIMD, one thread.

#include <cmath>
#include <limits>
#include <vector>

#include "diffattn/options.hpp"
#include "diffattn/tensor.hpp"
#include "diffattn/detail/validation.hpp"

namespace diffattn {
namespace detail {

/// Softmax weights of query row (b, h, i) over keys [0, Nk), in double. Keys past the
/// causal limit or masked with −inf get weight 0. Returns false, with all weights 0,
/// when the row sees no key at all.
template <class T>
bool reference_softmax_weights(TensorView<const T, 4> q, TensorView<const T, 4> k,
                               TensorView<const T, 4> mask, const AttentionProblem& p,
                               index_t b, index_t h, index_t i, std::vector<double>& weights) {
  constexpr double minus_inf = -std::numeric_limits<double>::infinity();
  const index_t kv_head = h / p.group;
  const index_t limit = p.key_limit(i);
  weights.assign(static_cast<std::size_t>(p.kv_len), 0.0);
  double row_max = minus_inf;
  bool sees_a_key = false;
  for (index_t j = 0; j < limit; ++j) {
    double dot = 0;
    for (index_t c = 0; c < p.head_dim; ++c) {
      dot += static_cast<double>(q(b, h, i, c)) * static_cast<double>(k(b, kv_head, j, c));
    }
    double logit = p.scale * dot;
    if (p.has_mask) logit += static_cast<double>(mask(b, h, i, j));
    weights[j] = logit;
    if (logit == minus_inf) continue;
    sees_a_key = true;
    // NaN never compares greater; it reaches the output through exp() below.
    if (logit > row_max) row_max = logit;
  }
  if (!sees_a_key) {
    std::fill(weights.begin(), weights.end(), 0.0);
    return false;
  }
  double sum = 0;
  for (index_t j = 0; j < limit; ++j) {
    weights[j] = weights[j] == minus_inf ? 0.0 : std::exp(weights[j] - row_max);
    sum += weights[j];
  }
  for (index_t j = 0; j < limit; ++j) weights[j] /= sum;
  return true;
}

/// out(b, h, i, :) = Σ_j weights[j] · v(b, h / group, j, :) for the keys row i can see.
template <class T>
void reference_weighted_values(const std::vector<double>& weights, TensorView<const T, 4> v,
                               TensorView<T, 4> out, const AttentionProblem& p, index_t b,
                               index_t h, index_t i) {
  const index_t kv_head = h / p.group;
  const index_t limit = p.key_limit(i);
  for (index_t c = 0; c < p.value_dim; ++c) {
    double acc = 0;
    for (index_t j = 0; j < limit; ++j) {
      acc += weights[j] * static_cast<double>(v(b, kv_head, j, c));
    }
    out(b, h, i, c) = static_cast<T>(acc);
  }
}

/// Body of reference::softmax_attention; `fn` names the caller in error messages.
template <class T>
void reference_softmax_attention(const char* fn, TensorView<const T, 4> q,
                                 TensorView<const T, 4> k, TensorView<const T, 4> v,
                                 TensorView<T, 4> out, const AttentionOptions<T>& options) {
  TensorView<const T, 4> mask;
  const AttentionProblem p = validate_attention(fn, q, k, v, out, options, mask);
  std::vector<double> weights;
  for (index_t b = 0; b < p.batch; ++b) {
    for (index_t h = 0; h < p.q_heads; ++h) {
      for (index_t i = 0; i < p.q_len; ++i) {
        reference_softmax_weights(q, k, mask, p, b, h, i, weights);
        reference_weighted_values(weights, v, out, p, b, h, i);
      }
    }
  }
}

/// Shared body of both reference diff_attention overloads; `lambda_arg` is per head
/// (rank 1) or per token (rank 3).
template <class T, std::size_t LambdaRank>
void reference_diff_attention(const char* fn, TensorView<const T, 4> q1, TensorView<const T, 4> q2,
                              TensorView<const T, 4> k1, TensorView<const T, 4> k2,
                              TensorView<const T, 4> v, TensorView<const T, LambdaRank> lambda_arg,
                              TensorView<T, 4> out, const AttentionOptions<T>& options) {
  TensorView<const T, 4> mask;
  const AttentionProblem p = validate_attention(fn, q1, k1, v, out, options, mask);
  validate_second_map(fn, q1, q2, k1, k2, out);
  const TensorView<const T, 3> lambda = widen_lambda(fn, lambda_arg, p);
  check_no_alias(fn, "out", out, "lambda", lambda);
  std::vector<double> weights1, weights2;
  for (index_t b = 0; b < p.batch; ++b) {
    for (index_t h = 0; h < p.q_heads; ++h) {
      for (index_t i = 0; i < p.q_len; ++i) {
        reference_softmax_weights(q1, k1, mask, p, b, h, i, weights1);
        // A map whose row sees no key contributes zero, whatever λ is (even NaN), as
        // attention.hpp states.
        if (reference_softmax_weights(q2, k2, mask, p, b, h, i, weights2)) {
          const double lam = static_cast<double>(lambda(b, h, i));
          for (std::size_t j = 0; j < weights1.size(); ++j) weights1[j] -= lam * weights2[j];
        }
        reference_weighted_values(weights1, v, out, p, b, h, i);
      }
    }
  }
}

}  // namespace detail

namespace reference {

/// Standard attention, out = softmax(scale·q·kᵀ + mask)·v, computed in double.
/// q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], out [B, Hq, Nq, Dv].
template <class T>
void softmax_attention(detail::identity_t<TensorView<const T, 4>> q,
                       detail::identity_t<TensorView<const T, 4>> k,
                       detail::identity_t<TensorView<const T, 4>> v, TensorView<T, 4> out,
                       const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::reference_softmax_attention<T>("reference::softmax_attention", q, k, v, out, options);
}

/// Differential attention with one λ per query head, computed in double:
/// out = (softmax(scale·q1·k1ᵀ + mask) − λ[h]·softmax(scale·q2·k2ᵀ + mask))·v.
/// q1, q2 [B, Hq, Nq, D], k1, k2 [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], lambda [Hq|1],
/// out [B, Hq, Nq, Dv].
template <class T>
void diff_attention(detail::identity_t<TensorView<const T, 4>> q1,
                    detail::identity_t<TensorView<const T, 4>> q2,
                    detail::identity_t<TensorView<const T, 4>> k1,
                    detail::identity_t<TensorView<const T, 4>> k2,
                    detail::identity_t<TensorView<const T, 4>> v,
                    detail::identity_t<TensorView<const T, 1>> lambda, TensorView<T, 4> out,
                    const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::reference_diff_attention<T>("reference::diff_attention", q1, q2, k1, k2, v, lambda, out,
                                      options);
}

/// Differential attention with λ per query token and head (the "V2" form, λ =
/// sigmoid(x·Wλ)), computed in double. lambda [B|1, Hq|1, Nq|1]; the rest as above.
template <class T>
void diff_attention(detail::identity_t<TensorView<const T, 4>> q1,
                    detail::identity_t<TensorView<const T, 4>> q2,
                    detail::identity_t<TensorView<const T, 4>> k1,
                    detail::identity_t<TensorView<const T, 4>> k2,
                    detail::identity_t<TensorView<const T, 4>> v,
                    detail::identity_t<TensorView<const T, 3>> lambda, TensorView<T, 4> out,
                    const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::reference_diff_attention<T>("reference::diff_attention", q1, q2, k1, k2, v, lambda, out,
                                      options);
}

}  // namespace reference
}  // namespace diffattn
