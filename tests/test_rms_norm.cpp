// Unit tests for include/diffattn/rms_norm.hpp: values, in-place use, strided views and
// argument errors.

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

#include "helpers.hpp"

namespace {

using diffattn_test::contains;

using diffattn::rms_norm;
using diffattn_test::FloatTypes;
using diffattn_test::index_t;
using diffattn_test::max_abs_diff;
using diffattn_test::random_tensor;
using diffattn_test::Tensor;
using diffattn_test::tolerance;


template <class T>
class RmsNormTest : public ::testing::Test {};
TYPED_TEST_SUITE(RmsNormTest, FloatTypes);

TYPED_TEST(RmsNormTest, KnownValues) {
  using T = TypeParam;
  // Row (3, 4): mean of squares 12.5; with eps 0 each value is divided by √12.5.
  Tensor<T, 2> x({1, 2});
  x(0, 0) = 3;
  x(0, 1) = 4;
  Tensor<T, 1> weight({2});
  weight(0) = 1;
  weight(1) = 2;
  Tensor<T, 2> out({1, 2});
  rms_norm<T>(x, weight, 0.0, out.view());
  EXPECT_NEAR(out(0, 0), 3 / std::sqrt(12.5), tolerance<T>(1, 1));
  EXPECT_NEAR(out(0, 1), 8 / std::sqrt(12.5), tolerance<T>(1, 2));
  // eps is added to the mean of squares, inside the square root.
  rms_norm<T>(x, weight, 0.5, out.view());
  EXPECT_NEAR(out(0, 0), 3 / std::sqrt(13.0), tolerance<T>(1, 1));
}

TYPED_TEST(RmsNormTest, MatchesTheFormulaInDouble) {
  using T = TypeParam;
  std::mt19937_64 rng(21);
  const Tensor<T, 2> x = random_tensor<T, 2>({7, 16}, rng);
  const Tensor<T, 1> weight = random_tensor<T, 1>({16}, rng, 0.5, 1.5);
  Tensor<T, 2> out({7, 16});
  rms_norm<T>(x, weight, 1e-5, out.view());
  double worst = 0;
  for (index_t r = 0; r < 7; ++r) {
    double mean = 0;
    for (index_t c = 0; c < 16; ++c) mean += static_cast<double>(x(r, c)) * x(r, c) / 16;
    for (index_t c = 0; c < 16; ++c) {
      const double expected = x(r, c) / std::sqrt(mean + 1e-5) * weight(c);
      worst = std::max(worst, std::abs(expected - static_cast<double>(out(r, c))));
    }
  }
  // Double arithmetic rounded once to T; outputs are below 1.5·√16 = 6.
  EXPECT_LE(worst, tolerance<T>(1, 6));
}

TYPED_TEST(RmsNormTest, InPlaceEqualsOutOfPlace) {
  using T = TypeParam;
  std::mt19937_64 rng(22);
  const Tensor<T, 2> x = random_tensor<T, 2>({5, 12}, rng);
  const Tensor<T, 1> weight = random_tensor<T, 1>({12}, rng);
  Tensor<T, 2> out({5, 12});
  rms_norm<T>(x, weight, 1e-5, out.view());
  Tensor<T, 2> in_place = x;
  rms_norm<T>(in_place, weight, 1e-5, in_place.view());
  EXPECT_EQ(max_abs_diff(in_place.view(), out.view()), 0.0);
}

TYPED_TEST(RmsNormTest, StridedViews) {
  using T = TypeParam;
  std::mt19937_64 rng(23);
  const Tensor<T, 2> x = random_tensor<T, 2>({6, 4}, rng);
  const Tensor<T, 1> weight = random_tensor<T, 1>({6}, rng);
  // Rows of the transposed view are columns of x.
  Tensor<T, 2> out({6, 4});
  rms_norm<T>(x.view().transpose(0, 1), weight, 1e-5, out.view().transpose(0, 1));
  const Tensor<T, 2> xt = diffattn_test::copy_as<T>(x.view().transpose(0, 1));
  Tensor<T, 2> expected({4, 6});
  rms_norm<T>(xt, weight, 1e-5, expected.view());
  EXPECT_EQ(max_abs_diff(out.view().transpose(0, 1), expected.view()), 0.0);
}

TYPED_TEST(RmsNormTest, ScaleInvariantWithoutEps) {
  using T = TypeParam;
  std::mt19937_64 rng(24);
  const Tensor<T, 2> x = random_tensor<T, 2>({3, 8}, rng);
  Tensor<T, 2> scaled = x;
  for (index_t i = 0; i < scaled.size(); ++i) scaled.data()[i] *= T(1024);  // exact
  const Tensor<T, 1> ones({8}, T(1));
  Tensor<T, 2> a({3, 8}), b({3, 8});
  rms_norm<T>(x, ones, 0.0, a.view());
  rms_norm<T>(scaled, ones, 0.0, b.view());
  EXPECT_LE(max_abs_diff(a.view(), b.view()), tolerance<T>(2, 3));
}

TEST(RmsNormErrors, RejectsBadArguments) {
  Tensor<float, 2> x({2, 4}), out({2, 4});
  Tensor<float, 1> weight({4}), short_weight({3});
  try {
    rms_norm<float>(x, short_weight, 1e-5, out.view());
    ADD_FAILURE() << "short weight accepted";
  } catch (const diffattn::shape_error& e) {
    EXPECT_TRUE(contains(e.what(), "rms_norm: 'weight' dimension 0 (D): expected 4, got 3"))
        << e.what();
  }
  Tensor<float, 2> wrong_out({3, 4});
  EXPECT_THROW(rms_norm<float>(x, weight, 1e-5, wrong_out.view()), diffattn::shape_error);
  EXPECT_THROW(rms_norm<float>(x, weight, -1.0, out.view()), std::invalid_argument);
  EXPECT_THROW(rms_norm<float>(x, weight, std::nan(""), out.view()), std::invalid_argument);
  // Partly overlapping input and output would read values already normalised.
  Tensor<float, 2> buffer({3, 4});
  EXPECT_THROW(
      rms_norm<float>(buffer.view().slice(0, 0, 2), weight, 1e-5, buffer.view().slice(0, 1, 3)),
      diffattn::shape_error);
  EXPECT_THROW(
      rms_norm<float>(x, weight, 1e-5, diffattn::TensorView<float, 2>(weight.data(), {1, 4})),
      diffattn::shape_error);
}

}  // namespace
