#pragma once
/// \file
/// The λ of differential attention: the layer schedule λ_init and the
/// re-parameterisation λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init, and its gradients.

#include <array>
#include <cmath>
#include <initializer_list>
#include <stdexcept>

#include "diffattn/errors.hpp"
#include "diffattn/tensor.hpp"
#include "diffattn/detail/validation_backward.hpp"

namespace diffattn {

/// λ_init for the 1-based layer index l: 0.8 − 0.6·exp(−0.3·(l − 1)). The reference
/// code's 0-based `depth` is l − 1. Throws std::invalid_argument for l < 1.
inline double lambda_init(int layer) {
  if (layer < 1) {
    throw std::invalid_argument(
        detail::concat("diffattn: lambda_init: layer is 1-based, expected >= 1, got ", layer));
  }
  return 0.8 - 0.6 * std::exp(-0.3 * static_cast<double>(layer - 1));
}

namespace detail {

template <class A, class B>
double dot_in_double(TensorView<A, 1> a, TensorView<B, 1> b) {
  double sum = 0;
  for (index_t i = 0; i < a.extent(0); ++i) {
    sum += static_cast<double>(a(i)) * static_cast<double>(b(i));
  }
  return sum;
}

/// The four gradients of lambda_reparam_backward: a distinct element per index, no memory
/// shared with an input or with each other.
template <class T, std::size_t Rank>
void check_reparam_gradients(const char* fn, TensorView<T, Rank> d_q1, TensorView<T, Rank> d_k1,
                             TensorView<T, Rank> d_q2, TensorView<T, Rank> d_k2,
                             std::initializer_list<NamedRange> inputs) {
  check_output(fn, "d_q1", d_q1);
  check_output(fn, "d_k1", d_k1);
  check_output(fn, "d_q2", d_q2);
  check_output(fn, "d_k2", d_k2);
  check_outputs_apart(fn, {named("d_q1", d_q1), named("d_k1", d_k1), named("d_q2", d_q2), named("d_k2", d_k2)},
                      inputs);
}

}  // namespace detail

/// λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init, computed in double.
/// lambda_q1, lambda_k1, lambda_q2, lambda_k2 [d] (all the same width).
template <class Q1, class K1, class Q2, class K2>
double lambda_reparam(TensorView<Q1, 1> lambda_q1, TensorView<K1, 1> lambda_k1,
                      TensorView<Q2, 1> lambda_q2, TensorView<K2, 1> lambda_k2,
                      double lambda_init_value) {
  const char* names[4] = {"lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"};
  const index_t widths[4] = {lambda_q1.extent(0), lambda_k1.extent(0), lambda_q2.extent(0),
                             lambda_k2.extent(0)};
  for (int i = 1; i < 4; ++i) {
    detail::check_extent("lambda_reparam", names[i], 0, "d", widths[0], widths[i]);
  }
  return std::exp(detail::dot_in_double(lambda_q1, lambda_k1)) -
         std::exp(detail::dot_in_double(lambda_q2, lambda_k2)) + lambda_init_value;
}

/// Per-head λ: out[h] = exp(λq1[h]·λk1[h]) − exp(λq2[h]·λk2[h]) + λ_init.
/// lambda_q1, lambda_k1, lambda_q2, lambda_k2 [H, d], out [H].
template <class T, class Q1, class K1, class Q2, class K2>
void lambda_reparam(TensorView<Q1, 2> lambda_q1, TensorView<K1, 2> lambda_k1,
                    TensorView<Q2, 2> lambda_q2, TensorView<K2, 2> lambda_k2,
                    double lambda_init_value, TensorView<T, 1> out) {
  const char* names[4] = {"lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"};
  const std::array<index_t, 2> shapes[4] = {lambda_q1.shape(), lambda_k1.shape(),
                                            lambda_q2.shape(), lambda_k2.shape()};
  for (int i = 1; i < 4; ++i) {
    detail::check_extent("lambda_reparam", names[i], 0, "H", shapes[0][0], shapes[i][0]);
    detail::check_extent("lambda_reparam", names[i], 1, "d", shapes[0][1], shapes[i][1]);
  }
  detail::check_extent("lambda_reparam", "out", 0, "H", shapes[0][0], out.extent(0));
  for (index_t h = 0; h < out.extent(0); ++h) {
    out(h) = static_cast<T>(lambda_reparam(lambda_q1.select(0, h), lambda_k1.select(0, h),
                                           lambda_q2.select(0, h), lambda_k2.select(0, h),
                                           lambda_init_value));
  }
}

/// Gradients of λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init with respect to the four learned
/// vectors, for the loss gradient dlambda (written, not accumulated into), in double:
/// d_q1 = dλ·e1·λk1, d_k1 = dλ·e1·λq1, d_q2 = −dλ·e2·λk2, d_k2 = −dλ·e2·λq2 with
/// e1 = exp(λq1·λk1), e2 = exp(λq2·λk2). All vectors [d].
template <class T>
void lambda_reparam_backward(detail::identity_t<TensorView<const T, 1>> lambda_q1,
                             detail::identity_t<TensorView<const T, 1>> lambda_k1,
                             detail::identity_t<TensorView<const T, 1>> lambda_q2,
                             detail::identity_t<TensorView<const T, 1>> lambda_k2, double dlambda,
                             TensorView<T, 1> d_q1, TensorView<T, 1> d_k1, TensorView<T, 1> d_q2,
                             TensorView<T, 1> d_k2) {
  const char* fn = "lambda_reparam_backward";
  const char* names[7] = {"lambda_k1", "lambda_q2", "lambda_k2", "d_q1", "d_k1", "d_q2", "d_k2"};
  const index_t widths[7] = {lambda_k1.extent(0), lambda_q2.extent(0), lambda_k2.extent(0), d_q1.extent(0),
                             d_k1.extent(0), d_q2.extent(0), d_k2.extent(0)};
  for (int i = 0; i < 7; ++i) detail::check_extent(fn, names[i], 0, "d", lambda_q1.extent(0), widths[i]);
  detail::check_reparam_gradients(fn, d_q1, d_k1, d_q2, d_k2,
                                  {detail::named("lambda_q1", lambda_q1), detail::named("lambda_k1", lambda_k1),
                                   detail::named("lambda_q2", lambda_q2), detail::named("lambda_k2", lambda_k2)});
  const double g1 = dlambda * std::exp(detail::dot_in_double(lambda_q1, lambda_k1));
  const double g2 = -dlambda * std::exp(detail::dot_in_double(lambda_q2, lambda_k2));
  for (index_t c = 0; c < lambda_q1.extent(0); ++c) {
    d_q1(c) = static_cast<T>(g1 * static_cast<double>(lambda_k1(c)));
    d_k1(c) = static_cast<T>(g1 * static_cast<double>(lambda_q1(c)));
    d_q2(c) = static_cast<T>(g2 * static_cast<double>(lambda_k2(c)));
    d_k2(c) = static_cast<T>(g2 * static_cast<double>(lambda_q2(c)));
  }
}

/// Per-head gradients of the per-head lambda_reparam: row h of each gradient from
/// dlambda[h]. lambda_q1, lambda_k1, lambda_q2, lambda_k2 and the four gradients [H, d],
/// dlambda [H].
template <class T>
void lambda_reparam_backward(detail::identity_t<TensorView<const T, 2>> lambda_q1,
                             detail::identity_t<TensorView<const T, 2>> lambda_k1,
                             detail::identity_t<TensorView<const T, 2>> lambda_q2,
                             detail::identity_t<TensorView<const T, 2>> lambda_k2,
                             detail::identity_t<TensorView<const T, 1>> dlambda, TensorView<T, 2> d_q1,
                             TensorView<T, 2> d_k1, TensorView<T, 2> d_q2, TensorView<T, 2> d_k2) {
  const char* fn = "lambda_reparam_backward";
  const char* names[7] = {"lambda_k1", "lambda_q2", "lambda_k2", "d_q1", "d_k1", "d_q2", "d_k2"};
  const std::array<index_t, 2> shapes[7] = {lambda_k1.shape(), lambda_q2.shape(), lambda_k2.shape(), d_q1.shape(),
                                            d_k1.shape(), d_q2.shape(), d_k2.shape()};
  for (int i = 0; i < 7; ++i) {
    detail::check_extent(fn, names[i], 0, "H", lambda_q1.extent(0), shapes[i][0]);
    detail::check_extent(fn, names[i], 1, "d", lambda_q1.extent(1), shapes[i][1]);
  }
  detail::check_extent(fn, "dlambda", 0, "H", lambda_q1.extent(0), dlambda.extent(0));
  detail::check_reparam_gradients(fn, d_q1, d_k1, d_q2, d_k2,
                                  {detail::named("lambda_q1", lambda_q1), detail::named("lambda_k1", lambda_k1),
                                   detail::named("lambda_q2", lambda_q2), detail::named("lambda_k2", lambda_k2),
                                   detail::named("dlambda", dlambda)});
  for (index_t h = 0; h < lambda_q1.extent(0); ++h) {
    lambda_reparam_backward<T>(lambda_q1.select(0, h), lambda_k1.select(0, h), lambda_q2.select(0, h),
                               lambda_k2.select(0, h), static_cast<double>(dlambda(h)), d_q1.select(0, h),
                               d_k1.select(0, h), d_q2.select(0, h), d_k2.select(0, h));
  }
}

}  // namespace diffattn
