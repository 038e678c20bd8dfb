#pragma once
/// Argument checks of the backward entry points (reference and fused): the forward's
/// checks on the inputs, then the incoming gradient and the gradient outputs.

#include <array>
#include <cstdint>
#include <initializer_list>

#include "diffattn/detail/validation.hpp"
#include "diffattn/errors.hpp"
#include "diffattn/options.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {
namespace detail {

/// A tensor argument's name and the bytes it touches, for the overlap checks.
struct NamedRange {
  const char* name;
  std::array<std::uintptr_t, 2> range;
};

template <class T, std::size_t Rank>
NamedRange named(const char* name, TensorView<T, Rank> view) {
  return {name, address_range(view)};
}

inline bool ranges_intersect(const NamedRange& a, const NamedRange& b) {
  if (a.range[0] > a.range[1] || b.range[0] > b.range[1]) return false;
  return a.range[0] <= b.range[1] && b.range[0] <= a.range[1];
}

/// No output may share memory with an input or with another output; `shared` names one
/// pair of outputs (by index) exempt from the second rule, or {-1, -1}.
inline void check_outputs_apart(const char* fn, std::initializer_list<NamedRange> outputs,
                                std::initializer_list<NamedRange> inputs, std::array<int, 2> shared = {-1, -1}) {
  int i = 0;
  for (const NamedRange& out : outputs) {
    for (const NamedRange& in : inputs) {
      if (ranges_intersect(out, in)) {
        throw_shape_error(fn, ": output '", out.name, "' overlaps input '", in.name,
                          "' in memory; outputs must not share memory with inputs");
      }
    }
    int j = 0;
    for (const NamedRange& other : outputs) {
      if (j > i && !(i == shared[0] && j == shared[1]) && ranges_intersect(out, other)) {
        throw_shape_error(fn, ": outputs '", out.name, "' and '", other.name,
                          "' overlap in memory; each gradient needs its own");
      }
      ++j;
    }
    ++i;
  }
}

/// Whether two views are one view: the same data, extents and strides.
template <class T, class U, std::size_t Rank>
bool same_view(TensorView<T, Rank> a, TensorView<U, Rank> b) {
  return static_cast<const void*>(a.data()) == static_cast<const void*>(b.data()) && a.shape() == b.shape() &&
         a.strides() == b.strides();
}

/// Validates a softmax_attention_backward call and returns its problem; `mask_out` as
/// validate_inputs.
template <class T, class Q, class KV, class DO, class GQ, class GK>
AttentionProblem validate_softmax_backward(const char* fn, TensorView<const Q, 4> q, TensorView<const KV, 4> k,
                                           TensorView<const KV, 4> v, TensorView<const DO, 4> dout,
                                           TensorView<GQ, 4> dq, TensorView<GK, 4> dk, TensorView<GK, 4> dv,
                                           const AttentionOptions<T>& options, TensorView<const T, 4>& mask_out) {
  const AttentionProblem p = validate_inputs(fn, q, k, v, options, mask_out);
  check_result(fn, "dout", dout, {p.batch, p.q_heads, p.q_len, p.value_dim}, out_dim_names, false);
  check_result(fn, "dq", dq, {p.batch, p.q_heads, p.q_len, p.head_dim}, q_dim_names, true);
  check_result(fn, "dk", dk, {p.batch, p.kv_heads, p.kv_len, p.head_dim}, k_dim_names, true);
  check_result(fn, "dv", dv, {p.batch, p.kv_heads, p.kv_len, p.value_dim}, v_dim_names, true);
  check_outputs_apart(fn, {named("dq", dq), named("dk", dk), named("dv", dv)},
                      {named("q", q), named("k", k), named("v", v), named("dout", dout),
                       named("options.mask", options.mask)});
  return p;
}

/// dlambda has lambda's shape, with a distinct element per index.
template <class T>
void check_lambda_gradient(const char* fn, TensorView<const T, 1> lambda, TensorView<T, 1> dlambda) {
  check_extent(fn, "dlambda", 0, "Hq", lambda.extent(0), dlambda.extent(0));
  check_output(fn, "dlambda", dlambda);
}
template <class T>
void check_lambda_gradient(const char* fn, TensorView<const T, 3> lambda, TensorView<T, 3> dlambda) {
  static constexpr const char* lambda_dims[3] = {"B", "Hq", "Nq"};
  for (std::size_t d = 0; d < 3; ++d) check_extent(fn, "dlambda", d, lambda_dims[d], lambda.extent(d), dlambda.extent(d));
  check_output(fn, "dlambda", dlambda);
}

/// A validated diff_attention_backward call's problem, λ widened to [B, Hq, Nq], and
/// whether dk1 and dk2 are one view (allowed when k1 and k2 are: it receives the sum).
template <class T>
struct DiffBackwardChecked {
  AttentionProblem problem;
  TensorView<const T, 3> lambda;
  bool shared_dk = false;
};

template <class T, std::size_t LambdaRank, class Q, class KV, class DO, class GQ, class GK>
DiffBackwardChecked<T> validate_diff_backward(
    const char* fn, TensorView<const Q, 4> q1, TensorView<const Q, 4> q2, TensorView<const KV, 4> k1,
    TensorView<const KV, 4> k2, TensorView<const KV, 4> v, TensorView<const T, LambdaRank> lambda,
    TensorView<const DO, 4> dout, TensorView<GQ, 4> dq1, TensorView<GQ, 4> dq2, TensorView<GK, 4> dk1,
    TensorView<GK, 4> dk2, TensorView<GK, 4> dv, TensorView<T, LambdaRank> dlambda, const AttentionOptions<T>& options,
    TensorView<const T, 4>& mask_out) {
  DiffBackwardChecked<T> checked;
  const AttentionProblem p = validate_inputs(fn, q1, k1, v, options, mask_out);
  checked.problem = p;
  check_second_map(fn, q1, q2, k1, k2);
  checked.lambda = widen_lambda(fn, lambda, p);
  check_result(fn, "dout", dout, {p.batch, p.q_heads, p.q_len, p.value_dim}, out_dim_names, false);
  const std::array<index_t, 4> q_shape{p.batch, p.q_heads, p.q_len, p.head_dim};
  const std::array<index_t, 4> k_shape{p.batch, p.kv_heads, p.kv_len, p.head_dim};
  check_result(fn, "dq1", dq1, q_shape, q_dim_names, true);
  check_result(fn, "dq2", dq2, q_shape, q_dim_names, true);
  check_result(fn, "dk1", dk1, k_shape, k_dim_names, true);
  check_result(fn, "dk2", dk2, k_shape, k_dim_names, true);
  check_result(fn, "dv", dv, {p.batch, p.kv_heads, p.kv_len, p.value_dim}, v_dim_names, true);
  check_lambda_gradient(fn, lambda, dlambda);
  checked.shared_dk = same_view(dk1, dk2) && !dk1.empty();
  if (checked.shared_dk && !same_view(k1, k2)) {
    throw_shape_error(fn, ": 'dk1' and 'dk2' are one view, which only sums the two maps' key gradients when "
                          "'k1' and 'k2' are one view too (shared keys); they are not");
  }
  check_outputs_apart(fn,
                      {named("dq1", dq1), named("dq2", dq2), named("dk1", dk1), named("dk2", dk2), named("dv", dv),
                       named("dlambda", dlambda)},
                      {named("q1", q1), named("q2", q2), named("k1", k1), named("k2", k2), named("v", v),
                       named("lambda", lambda), named("dout", dout), named("options.mask", options.mask)},
                      checked.shared_dk ? std::array<int, 2>{2, 3} : std::array<int, 2>{-1, -1});
  return checked;
}

}  // namespace detail
}  // namespace diffattn
