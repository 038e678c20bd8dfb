#pragma once
/// \file
/// The λ of differential attention: the layer schedule λ_init and the
/// re-parameterisation λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init.

#include <array>
#include <cmath>
#include <stdexcept>

#include "diffattn/errors.hpp"
#include "diffattn/tensor.hpp"

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

}  // namespace diffattn
