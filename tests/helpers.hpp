#pragma once
// Shared test utilities: seeded random tensors, double copies, tolerance checks.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include <diffattn/diffattn.hpp>

namespace diffattn_test {

using diffattn::index_t;
using diffattn::Tensor;
using diffattn::TensorView;

using FloatTypes = ::testing::Types<float, double>;

/// Typed-test names "float" and "double" instead of "0" and "1".
struct ElementTypeNames {
  template <class T>
  static std::string GetName(int) {
    if (std::is_same_v<T, float>) return "float";
    if (std::is_same_v<T, double>) return "double";
    return "unknown";
  }
};

/// Fills a view with uniform values in [lo, hi) from a seeded generator.
template <class T, std::size_t R>
void fill_uniform(TensorView<T, R> view, std::mt19937_64& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::array<index_t, R> idx{};
  for (index_t n = 0; n < view.size(); ++n) {
    index_t rem = n;
    for (std::size_t d = R; d-- > 0;) {
      idx[d] = rem % view.extent(d);
      rem /= view.extent(d);
    }
    view.at(idx) = static_cast<T>(dist(rng));
  }
}

template <class T, std::size_t R>
Tensor<T, R> random_tensor(const std::array<index_t, R>& shape, std::mt19937_64& rng,
                           double lo = -1, double hi = 1) {
  Tensor<T, R> t(shape);
  fill_uniform(t.view(), rng, lo, hi);
  return t;
}

/// Calls f(index) for every index of a shape, row-major.
template <std::size_t R, class F>
void for_each_index(const std::array<index_t, R>& shape, F&& f) {
  index_t count = 1;
  for (index_t e : shape) count *= e;
  std::array<index_t, R> idx{};
  for (index_t n = 0; n < count; ++n) {
    index_t rem = n;
    for (std::size_t d = R; d-- > 0;) {
      idx[d] = rem % shape[d];
      rem /= shape[d];
    }
    f(idx);
  }
}

/// A contiguous copy (any element type) of a strided view.
template <class To, class From, std::size_t R>
Tensor<To, R> copy_as(TensorView<From, R> view) {
  Tensor<To, R> t(view.shape());
  for_each_index(view.shape(), [&](const auto& idx) { t.view().at(idx) = static_cast<To>(view.at(idx)); });
  return t;
}

/// Largest |a − b| over all elements; NaN if either side has a NaN where the other has not.
template <class A, class B, std::size_t R>
double max_abs_diff(TensorView<A, R> a, TensorView<B, R> b) {
  double worst = 0;
  for_each_index(a.shape(), [&](const auto& idx) {
    const double x = static_cast<double>(a.at(idx));
    const double y = static_cast<double>(b.at(idx));
    if (std::isnan(x) != std::isnan(y)) worst = std::numeric_limits<double>::quiet_NaN();
    if (!std::isnan(x) && !std::isnan(y)) worst = std::max(worst, std::abs(x - y));
  });
  return worst;
}

template <class T, std::size_t R>
double max_abs(TensorView<T, R> a) {
  double worst = 0;
  for_each_index(a.shape(), [&](const auto& idx) {
    worst = std::max(worst, std::abs(static_cast<double>(a.at(idx))));
  });
  return worst;
}

/// Tolerance k·eps(T)·max(scale, 1): k counts the roundings a result may carry.
template <class T>
double tolerance(double k, double scale) {
  return k * static_cast<double>(std::numeric_limits<T>::epsilon()) * std::max(scale, 1.0);
}

/// The bit pattern of a float, double, bf16 or f16, for tests that compare bits.
inline std::uint32_t bits_of(float value) { return Eigen::numext::bit_cast<std::uint32_t>(value); }
inline std::uint64_t bits_of(double value) { return Eigen::numext::bit_cast<std::uint64_t>(value); }
inline std::uint16_t bits_of(diffattn::bf16 value) { return Eigen::numext::bit_cast<std::uint16_t>(value); }
inline std::uint16_t bits_of(diffattn::f16 value) { return Eigen::numext::bit_cast<std::uint16_t>(value); }

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// Runs `fn`, expecting an exception of type E; returns its what() ("" and a test
/// failure when nothing, or something else, was thrown).
template <class E, class F>
std::string error_message(F&& fn) {
  try {
    std::forward<F>(fn)();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected another exception type, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected an exception, nothing was thrown";
  return {};
}

template <class F>
std::string shape_error_message(F&& fn) {
  return error_message<diffattn::shape_error>(std::forward<F>(fn));
}

/// Text for SCOPED_TRACE so a failing random case can be replayed.
inline std::string describe_seed(std::uint64_t seed) {
  std::ostringstream out;
  out << "seed=" << seed;
  return out.str();
}

}  // namespace diffattn_test
