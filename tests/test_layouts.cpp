// Unit tests for include/diffattn/layouts.hpp: [B, N, H, D] <-> [B, H, N, D] and the two
// pairings of differential heads.

#include <gtest/gtest.h>

#include <array>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "diffattn/layouts.hpp"
#include "diffattn/tensor.hpp"

#include "helpers.hpp"

namespace {

using diffattn_test::contains;
using diffattn_test::shape_error_message;

using diffattn::bhnd_to_bnhd;
using diffattn::bnhd_to_bhnd;
using diffattn::half_split_pairs;
using diffattn::HeadPairs;
using diffattn::index_t;
using diffattn::interleaved_pairs;
using diffattn::shape_error;
using diffattn::Tensor;
using diffattn::TensorView;



/// The value stored at index (i0, i1, i2, i3): distinct for extents up to 10 and exact
/// in float.
template <class T>
T code4(index_t i0, index_t i1, index_t i2, index_t i3) {
  return static_cast<T>(1000 * i0 + 100 * i1 + 10 * i2 + i3);
}

/// A row-major tensor whose element (i0, i1, i2, i3) is code4(i0, i1, i2, i3).
template <class T>
Tensor<T, 4> coded_tensor(const std::array<index_t, 4>& shape) {
  Tensor<T, 4> tensor(shape);
  for (index_t a = 0; a < shape[0]; ++a)
    for (index_t b = 0; b < shape[1]; ++b)
      for (index_t c = 0; c < shape[2]; ++c)
        for (index_t d = 0; d < shape[3]; ++d) tensor(a, b, c, d) = code4<T>(a, b, c, d);
  return tensor;
}

using diffattn_test::ElementTypeNames;
using ElementTypes = diffattn_test::FloatTypes;

template <class T>
class LayoutsTypedTest : public ::testing::Test {};
TYPED_TEST_SUITE(LayoutsTypedTest, ElementTypes, ElementTypeNames);

TYPED_TEST(LayoutsTypedTest, BnhdToBhndMapsElements) {
  using T = TypeParam;
  constexpr index_t B = 2, N = 5, H = 3, D = 4;
  auto x = coded_tensor<T>({B, N, H, D});
  const TensorView<T, 4> bhnd = bnhd_to_bhnd(x.view());
  ASSERT_EQ(bhnd.shape(), (std::array<index_t, 4>{B, H, N, D}));
  EXPECT_EQ(bhnd.data(), x.data());
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t n = 0; n < N; ++n)
        for (index_t d = 0; d < D; ++d) {
          EXPECT_EQ(bhnd(b, h, n, d), code4<T>(b, n, h, d));
          EXPECT_EQ(&bhnd(b, h, n, d), &x(b, n, h, d));
        }
  // D stays unit-stride, so kernels can read rows of the permuted view.
  EXPECT_EQ(bhnd.stride(3), 1);
  EXPECT_FALSE(bhnd.is_contiguous());
}

TYPED_TEST(LayoutsTypedTest, BhndToBnhdMapsElements) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 3, N = 4, D = 5;
  auto o = coded_tensor<T>({B, H, N, D});
  const TensorView<T, 4> bnhd = bhnd_to_bnhd(o.view());
  ASSERT_EQ(bnhd.shape(), (std::array<index_t, 4>{B, N, H, D}));
  for (index_t b = 0; b < B; ++b)
    for (index_t n = 0; n < N; ++n)
      for (index_t h = 0; h < H; ++h)
        for (index_t d = 0; d < D; ++d) EXPECT_EQ(bnhd(b, n, h, d), code4<T>(b, h, n, d));

  // The two are inverses.
  const auto round_trip = bhnd_to_bnhd(bnhd_to_bhnd(o.view()));
  EXPECT_EQ(round_trip.shape(), o.view().shape());
  EXPECT_EQ(round_trip.strides(), o.view().strides());

  // Const views go through as well.
  const Tensor<T, 4>& const_o = o;
  const TensorView<const T, 4> const_bnhd = bhnd_to_bnhd(const_o.view());
  EXPECT_EQ(const_bnhd(1, 3, 2, 4), code4<T>(1, 2, 3, 4));
}

TYPED_TEST(LayoutsTypedTest, InterleavedPairsTakeEvenAndOddHeads) {
  using T = TypeParam;
  constexpr index_t B = 2, N = 3, H = 3, d = 4;
  auto x = coded_tensor<T>({B, N, 2 * H, d});
  const HeadPairs<T> pairs = interleaved_pairs(x.view());
  ASSERT_EQ(pairs.first.shape(), (std::array<index_t, 4>{B, H, N, d}));
  ASSERT_EQ(pairs.second.shape(), (std::array<index_t, 4>{B, H, N, d}));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t n = 0; n < N; ++n)
        for (index_t c = 0; c < d; ++c) {
          EXPECT_EQ(pairs.first(b, h, n, c), x(b, n, 2 * h, c))
              << "first (" << b << ", " << h << ", " << n << ", " << c << ")";
          EXPECT_EQ(pairs.second(b, h, n, c), x(b, n, 2 * h + 1, c))
              << "second (" << b << ", " << h << ", " << n << ", " << c << ")";
        }
  EXPECT_EQ(pairs.first.stride(3), 1);
  EXPECT_EQ(pairs.second.stride(3), 1);
}

TYPED_TEST(LayoutsTypedTest, HalfSplitPairsTakeLowerAndUpperHalves) {
  using T = TypeParam;
  constexpr index_t B = 2, N = 3, H = 3, d = 4;
  auto x = coded_tensor<T>({B, N, 2 * H, d});
  const HeadPairs<T> pairs = half_split_pairs(x.view());
  ASSERT_EQ(pairs.first.shape(), (std::array<index_t, 4>{B, H, N, d}));
  ASSERT_EQ(pairs.second.shape(), (std::array<index_t, 4>{B, H, N, d}));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t n = 0; n < N; ++n)
        for (index_t c = 0; c < d; ++c) {
          EXPECT_EQ(pairs.first(b, h, n, c), x(b, n, h, c))
              << "first (" << b << ", " << h << ", " << n << ", " << c << ")";
          EXPECT_EQ(pairs.second(b, h, n, c), x(b, n, H + h, c))
              << "second (" << b << ", " << h << ", " << n << ", " << c << ")";
        }
}

TYPED_TEST(LayoutsTypedTest, PairingsDifferForMoreThanOneHead) {
  using T = TypeParam;
  // With H = 2 the interleaved second map is head 1, the half-split second map head 2:
  // the two conventions must not be confused.
  auto x = coded_tensor<T>({1, 1, 4, 2});
  const auto interleaved = interleaved_pairs(x.view());
  const auto halves = half_split_pairs(x.view());
  EXPECT_EQ(interleaved.second(0, 0, 0, 0), code4<T>(0, 0, 1, 0));
  EXPECT_EQ(halves.second(0, 0, 0, 0), code4<T>(0, 0, 2, 0));
  EXPECT_EQ(interleaved.first(0, 1, 0, 1), code4<T>(0, 0, 2, 1));
  EXPECT_EQ(halves.first(0, 1, 0, 1), code4<T>(0, 0, 1, 1));
  // With one pair they agree.
  auto single = coded_tensor<T>({1, 2, 2, 3});
  const auto a = interleaved_pairs(single.view());
  const auto b = half_split_pairs(single.view());
  EXPECT_EQ(a.first.data(), b.first.data());
  EXPECT_EQ(a.second.data(), b.second.data());
}

TYPED_TEST(LayoutsTypedTest, PairViewsShareMemory) {
  using T = TypeParam;
  constexpr index_t B = 1, N = 2, H = 2, d = 3;
  Tensor<T, 4> x({B, N, 2 * H, d});
  const auto interleaved = interleaved_pairs(x.view());
  interleaved.first(0, 1, 1, 2) = T(7);   // head 2*1 = 2
  interleaved.second(0, 0, 1, 0) = T(8);  // head 2*0 + 1 = 1
  EXPECT_EQ(x(0, 1, 2, 2), T(7));
  EXPECT_EQ(x(0, 1, 1, 0), T(8));

  const auto halves = half_split_pairs(x.view());
  halves.first(0, 1, 0, 1) = T(9);   // head 1
  halves.second(0, 1, 1, 1) = T(6);  // head H + 1 = 3
  EXPECT_EQ(x(0, 0, 1, 1), T(9));
  EXPECT_EQ(x(0, 1, 3, 1), T(6));

  // And writes to the tensor are seen through the views.
  x(0, 0, 3, 2) = T(-4);
  EXPECT_EQ(interleaved.second(0, 1, 0, 2), T(-4));
  EXPECT_EQ(halves.second(0, 1, 0, 2), T(-4));

  // Exactly the touched elements are non-zero: the views do not overlap elsewhere.
  index_t nonzero = 0;
  for (index_t i = 0; i < x.size(); ++i) nonzero += x.data()[i] != T(0);
  EXPECT_EQ(nonzero, 5);
}

TYPED_TEST(LayoutsTypedTest, PairsOfConstViews) {
  using T = TypeParam;
  const auto x = coded_tensor<T>({1, 2, 4, 2});
  const HeadPairs<const T> pairs = interleaved_pairs(x.view());
  static_assert(std::is_same_v<decltype(pairs.first), TensorView<const T, 4>>);
  EXPECT_EQ(pairs.second(0, 1, 1, 1), code4<T>(0, 1, 3, 1));
  const HeadPairs<const T> halves = half_split_pairs(x.view());
  EXPECT_EQ(halves.second(0, 0, 1, 0), code4<T>(0, 1, 2, 0));
}

TEST(LayoutsTest, OddHeadCountsThrow) {
  Tensor<float, 4> x({2, 3, 5, 4});
  EXPECT_THROW(interleaved_pairs(x.view()), shape_error);
  EXPECT_THROW(half_split_pairs(x.view()), shape_error);
  Tensor<double, 4> one_head({1, 1, 1, 8});
  EXPECT_THROW(interleaved_pairs(one_head.view()), shape_error);
  EXPECT_THROW(half_split_pairs(one_head.view()), shape_error);

  const std::string interleaved = shape_error_message([&] { interleaved_pairs(x.view()); });
  EXPECT_TRUE(contains(interleaved, "interleaved_pairs")) << interleaved;
  EXPECT_TRUE(contains(interleaved, "'x' dimension 2")) << interleaved;
  EXPECT_TRUE(contains(interleaved, "even")) << interleaved;
  EXPECT_TRUE(contains(interleaved, "got 5")) << interleaved;
  const std::string halves = shape_error_message([&] { half_split_pairs(x.view()); });
  EXPECT_TRUE(contains(halves, "half_split_pairs")) << halves;
  EXPECT_TRUE(contains(halves, "got 5")) << halves;
}

TEST(LayoutsTest, ZeroHeadsGiveEmptyPairs) {
  const TensorView<float, 4> x(nullptr, {2, 3, 0, 4});
  const auto interleaved = interleaved_pairs(x);
  EXPECT_EQ(interleaved.first.shape(), (std::array<index_t, 4>{2, 0, 3, 4}));
  EXPECT_TRUE(interleaved.second.empty());
  const auto halves = half_split_pairs(x);
  EXPECT_EQ(halves.second.shape(), (std::array<index_t, 4>{2, 0, 3, 4}));
}

}  // namespace
