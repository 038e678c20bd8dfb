// Unit tests for include/diffattn/lambda.hpp: the λ_init layer schedule and the
// re-parameterisation λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "diffattn/lambda.hpp"
#include "diffattn/tensor.hpp"

#include "helpers.hpp"

namespace {

using diffattn_test::contains;
using diffattn_test::shape_error_message;

using diffattn::index_t;
using diffattn::lambda_init;
using diffattn::lambda_reparam;
using diffattn::shape_error;
using diffattn::TensorView;



/// k·eps(T)·max(|ref|, 1). The expected values are exact-decimal answers; the library sees
/// the inputs rounded to T (relative error <= eps/2 each) and computes λ in double. Through
/// the two dot products (sum of |q||k| <= 1 in every case here) and exp (value <= 1.2 at the
/// dot products used), that input rounding moves λ by at most about 1.2·eps(T). For double
/// the dot products, exps and sums add a few more roundings of eps/2 on values <= 2.
template <class T>
double tolerance(double ref, double k) {
  return k * static_cast<double>(std::numeric_limits<T>::epsilon()) * std::max(std::abs(ref), 1.0);
}

using diffattn_test::ElementTypeNames;
using ElementTypes = diffattn_test::FloatTypes;

template <class T>
class LambdaTypedTest : public ::testing::Test {};
TYPED_TEST_SUITE(LambdaTypedTest, ElementTypes, ElementTypeNames);

/// Tolerance factor (see tolerance()): 4 leaves float a margin of three over the input
/// rounding; 16 covers double's input rounding plus its handful of arithmetic roundings.
template <class T>
constexpr double k_factor = std::is_same_v<T, float> ? 4.0 : 16.0;

// lambda_init

TEST(LambdaInitTest, FirstLayerIsPointTwo) {
  EXPECT_DOUBLE_EQ(lambda_init(1), 0.2);
  // 0.8 − 0.6·exp(0) rounds exactly like 0.8 − 0.6 in double.
  EXPECT_EQ(lambda_init(1), 0.8 - 0.6);
}

TEST(LambdaInitTest, MatchesClosedFormForLayers1To24) {
  for (int layer = 1; layer <= 24; ++layer) {
    const double expected = 0.8 - 0.6 * std::exp(-0.3 * (layer - 1));
    EXPECT_NEAR(lambda_init(layer), expected, 4 * std::numeric_limits<double>::epsilon())
        << "layer " << layer;
  }
  // Independent values (Python: 0.8 - 0.6*math.exp(-0.3*depth), depth = layer - 1), so a
  // 0-based/1-based slip or a wrong constant cannot hide behind a shared formula.
  EXPECT_NEAR(lambda_init(2), 0.35550906759096934, 1e-15);
  EXPECT_NEAR(lambda_init(3), 0.4707130183435842, 1e-15);
  EXPECT_NEAR(lambda_init(12), 0.777870099559256, 1e-15);
  EXPECT_NEAR(lambda_init(24), 0.7993953287425709, 1e-15);
}

TEST(LambdaInitTest, IncreasesMonotonicallyTowardPointEight) {
  double previous = lambda_init(1);
  for (int layer = 2; layer <= 64; ++layer) {
    const double current = lambda_init(layer);
    EXPECT_GT(current, previous) << "layer " << layer;
    EXPECT_LT(current, 0.8) << "layer " << layer;
    previous = current;
  }
  EXPECT_NEAR(lambda_init(64), 0.8, 1e-8);
  EXPECT_LE(lambda_init(INT_MAX), 0.8);
  EXPECT_NEAR(lambda_init(INT_MAX), 0.8, 1e-15);
}

TEST(LambdaInitTest, RejectsNonPositiveLayers) {
  EXPECT_THROW(lambda_init(0), std::invalid_argument);
  EXPECT_THROW(lambda_init(-1), std::invalid_argument);
  EXPECT_THROW(lambda_init(INT_MIN), std::invalid_argument);
  try {
    lambda_init(0);
    ADD_FAILURE() << "lambda_init(0) did not throw";
  } catch (const std::invalid_argument& e) {
    const std::string message = e.what();
    EXPECT_TRUE(contains(message, "lambda_init")) << message;
    EXPECT_TRUE(contains(message, ">= 1")) << message;
    EXPECT_TRUE(contains(message, "got 0")) << message;
  }
}

// lambda_reparam, one head

TYPED_TEST(LambdaTypedTest, ReparamMatchesHandComputation) {
  using T = TypeParam;
  const std::vector<T> q1 = {T(0.1), T(0.2)}, k1 = {T(0.3), T(0.4)};
  const std::vector<T> q2 = {T(0.5), T(-0.1)}, k2 = {T(0.2), T(0.3)};
  const auto view = [](const std::vector<T>& v) {
    return TensorView<const T, 1>(v.data(), {static_cast<index_t>(v.size())});
  };
  // λq1·λk1 = 0.03 + 0.08 = 0.11, λq2·λk2 = 0.10 − 0.03 = 0.07:
  // exp(0.11) − exp(0.07) + 0.2 = 1.1162780704588713 − 1.0725081812542165 + 0.2.
  const double expected = 0.24376988920465475;
  const double got = lambda_reparam(view(q1), view(k1), view(q2), view(k2), 0.2);
  EXPECT_NEAR(got, expected, tolerance<T>(expected, k_factor<T>));
  // Swapping the two maps flips the sign of the exp difference.
  const double swapped = lambda_reparam(view(q2), view(k2), view(q1), view(k1), 0.2);
  EXPECT_NEAR(swapped, 0.2 - (expected - 0.2), tolerance<T>(expected, k_factor<T>));
  // λ_init is added, not scaled.
  const double shifted = lambda_reparam(view(q1), view(k1), view(q2), view(k2), 0.7);
  EXPECT_NEAR(shifted - got, 0.5, 1e-12);
}

TYPED_TEST(LambdaTypedTest, ZeroVectorsGiveLambdaInit) {
  using T = TypeParam;
  const std::vector<T> zeros(8, T(0));
  const TensorView<const T, 1> z(zeros.data(), {8});
  for (int layer : {1, 2, 5, 24}) {
    const double init = lambda_init(layer);
    EXPECT_EQ(lambda_reparam(z, z, z, z, init), init) << "layer " << layer;
  }
  // Zero only on one side of each dot product is enough.
  const std::vector<T> ones(8, T(1));
  const TensorView<const T, 1> o(ones.data(), {8});
  EXPECT_EQ(lambda_reparam(o, z, z, o, 0.35), 0.35);
  // Width 0: both dot products are empty sums.
  const TensorView<const T, 1> none(nullptr, {0});
  EXPECT_EQ(lambda_reparam(none, none, none, none, 0.5), 0.5);
}

TEST(LambdaReparamTest, AcceptsMixedElementTypesAndStridedViews) {
  // λq in float, λk in double, read through a stride-2 view.
  const std::vector<float> q1 = {0.5f, 0.25f}, q2 = {1.0f, -1.0f};
  const std::vector<double> k_storage = {2.0, 99.0, 4.0, 99.0};  // every other element
  const TensorView<const float, 1> vq1(q1.data(), {2}), vq2(q2.data(), {2});
  const TensorView<const double, 1> vk(k_storage.data(), {2}, {2});
  // q1·k = 1 + 1 = 2, q2·k = 2 − 4 = −2: exp(2) − exp(−2) + 0.1 = 2 sinh(2) + 0.1.
  const double expected = 2.0 * std::sinh(2.0) + 0.1;
  EXPECT_NEAR(lambda_reparam(vq1, vk, vq2, vk, 0.1), expected,
              16 * std::numeric_limits<double>::epsilon() * expected);
}

TEST(LambdaReparamTest, MismatchedWidthsThrowNamingTheArgument) {
  const std::vector<double> two = {0.1, 0.2}, three = {0.1, 0.2, 0.3};
  const TensorView<const double, 1> w2(two.data(), {2}), w3(three.data(), {3});
  EXPECT_THROW(lambda_reparam(w2, w3, w2, w2, 0.2), shape_error);
  EXPECT_THROW(lambda_reparam(w2, w2, w3, w2, 0.2), shape_error);
  EXPECT_THROW(lambda_reparam(w2, w2, w2, w3, 0.2), shape_error);
  EXPECT_THROW(lambda_reparam(w3, w2, w2, w2, 0.2), shape_error);
  EXPECT_NO_THROW(lambda_reparam(w3, w3, w3, w3, 0.2));

  const std::array<std::string, 3> names = {"lambda_k1", "lambda_q2", "lambda_k2"};
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string message = shape_error_message([&] {
      lambda_reparam(w2, i == 0 ? w3 : w2, i == 1 ? w3 : w2, i == 2 ? w3 : w2, 0.2);
    });
    EXPECT_TRUE(contains(message, "lambda_reparam")) << message;
    EXPECT_TRUE(contains(message, "'" + names[i] + "'")) << message;
    EXPECT_TRUE(contains(message, "(d)")) << message;
    EXPECT_TRUE(contains(message, "expected 2")) << message;
    EXPECT_TRUE(contains(message, "got 3")) << message;
  }
}

// lambda_reparam, per head

/// [H, d] = [3, 2] parameters; λ values computed in Python with λ_init = 0.35:
/// head 0: q1·k1 = 0.11, q2·k2 = 0.07 → 0.3937698892046547
/// head 1: q1·k1 = −0.25, q2·k2 = 0 → exp(−0.25) − 1 + 0.35 = 0.12880078307140486
/// head 2: q1·k1 = 0, q2·k2 = 0 → 0.35
template <class T>
struct PerHeadCase {
  std::vector<T> q1 = {T(0.1), T(0.2), T(0.0), T(-0.5), T(1.0), T(0.25)};
  std::vector<T> k1 = {T(0.3), T(0.4), T(0.7), T(0.5), T(-0.5), T(2.0)};
  std::vector<T> q2 = {T(0.5), T(-0.1), T(0.25), T(0.25), T(0.0), T(0.0)};
  std::vector<T> k2 = {T(0.2), T(0.3), T(1.0), T(-1.0), T(3.0), T(4.0)};
  std::array<double, 3> expected = {0.3937698892046547, 0.12880078307140486, 0.35};

  TensorView<const T, 2> view(const std::vector<T>& v, index_t heads = 3) const {
    return TensorView<const T, 2>(v.data(), {heads, 2});
  }
};

TYPED_TEST(LambdaTypedTest, PerHeadWritesEveryHead) {
  using T = TypeParam;
  const PerHeadCase<T> c;
  std::vector<T> out(3, T(-100));
  lambda_reparam(c.view(c.q1), c.view(c.k1), c.view(c.q2), c.view(c.k2), 0.35,
                 TensorView<T, 1>(out.data(), {3}));
  for (std::size_t h = 0; h < 3; ++h) {
    // The result is rounded to T on the way out: allow that on top of the input rounding.
    EXPECT_NEAR(static_cast<double>(out[h]), c.expected[h],
                tolerance<T>(c.expected[h], k_factor<T> + 1))
        << "head " << h;
    // And it is exactly the one-head overload's result, rounded to T.
    const double single = lambda_reparam(c.view(c.q1).select(0, static_cast<index_t>(h)),
                                         c.view(c.k1).select(0, static_cast<index_t>(h)),
                                         c.view(c.q2).select(0, static_cast<index_t>(h)),
                                         c.view(c.k2).select(0, static_cast<index_t>(h)), 0.35);
    EXPECT_EQ(out[h], static_cast<T>(single)) << "head " << h;
  }
}

TEST(LambdaReparamTest, PerHeadWritesThroughAStridedOutput) {
  const PerHeadCase<double> c;
  std::vector<float> storage(7, -1.0f);
  const TensorView<float, 1> out(storage.data() + 1, {3}, {2});  // elements 1, 3, 5
  lambda_reparam(c.view(c.q1), c.view(c.k1), c.view(c.q2), c.view(c.k2), 0.35, out);
  for (std::size_t h = 0; h < 3; ++h)
    EXPECT_NEAR(storage[1 + 2 * h], c.expected[h], 4 * std::numeric_limits<float>::epsilon())
        << "head " << h;
  for (std::size_t i : {0u, 2u, 4u, 6u}) EXPECT_EQ(storage[i], -1.0f) << "element " << i;
}

TEST(LambdaReparamTest, PerHeadValidatesShapes) {
  const PerHeadCase<double> c;
  std::vector<double> out(3, -100.0), short_out(2, -100.0);
  const TensorView<double, 1> out_view(out.data(), {3});
  const TensorView<double, 1> short_view(short_out.data(), {2});

  // H mismatch for out.
  const std::string out_message = shape_error_message([&] {
    lambda_reparam(c.view(c.q1), c.view(c.k1), c.view(c.q2), c.view(c.k2), 0.35, short_view);
  });
  EXPECT_TRUE(contains(out_message, "'out'")) << out_message;
  EXPECT_TRUE(contains(out_message, "dimension 0 (H)")) << out_message;
  EXPECT_TRUE(contains(out_message, "expected 3")) << out_message;
  EXPECT_TRUE(contains(out_message, "got 2")) << out_message;
  EXPECT_EQ(short_out, std::vector<double>(2, -100.0)) << "nothing is written on error";

  // H mismatch for an input.
  const std::string k1_message = shape_error_message([&] {
    lambda_reparam(c.view(c.q1), c.view(c.k1, 2), c.view(c.q2), c.view(c.k2), 0.35, out_view);
  });
  EXPECT_TRUE(contains(k1_message, "'lambda_k1'")) << k1_message;
  EXPECT_TRUE(contains(k1_message, "(H)")) << k1_message;
  EXPECT_TRUE(contains(k1_message, "got 2")) << k1_message;

  // d mismatch for an input: [3, 1] instead of [3, 2].
  const TensorView<const double, 2> narrow(c.q2.data(), {3, 1});
  const std::string d_message = shape_error_message([&] {
    lambda_reparam(c.view(c.q1), c.view(c.k1), narrow, c.view(c.k2), 0.35, out_view);
  });
  EXPECT_TRUE(contains(d_message, "'lambda_q2'")) << d_message;
  EXPECT_TRUE(contains(d_message, "dimension 1 (d)")) << d_message;
  EXPECT_TRUE(contains(d_message, "expected 2")) << d_message;
  EXPECT_TRUE(contains(d_message, "got 1")) << d_message;
  EXPECT_EQ(out, std::vector<double>(3, -100.0)) << "nothing is written on error";

  // H mismatch on the first argument is reported against the others.
  EXPECT_THROW(lambda_reparam(c.view(c.q1, 2), c.view(c.k1), c.view(c.q2), c.view(c.k2), 0.35,
                              out_view),
               shape_error);
}

TEST(LambdaReparamTest, PerHeadWithZeroHeads) {
  const TensorView<const double, 2> none(nullptr, {0, 4});
  const TensorView<double, 1> out(nullptr, {0});
  EXPECT_NO_THROW(lambda_reparam(none, none, none, none, 0.2, out));
}

}  // namespace
