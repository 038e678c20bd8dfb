// Unit tests for include/diffattn/tensor.hpp: TensorView semantics and the owning Tensor.

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "diffattn/tensor.hpp"

#include "helpers.hpp"

namespace {

using diffattn_test::contains;
using diffattn_test::shape_error_message;

using diffattn::index_t;
using diffattn::shape_error;
using diffattn::Tensor;
using diffattn::TensorView;


template <class F>
std::string out_of_range_message(F&& fn) {
  return diffattn_test::error_message<std::out_of_range>(std::forward<F>(fn));
}


/// Value stored at (a, b, c) of the [A, B, C] test buffers: distinct for every index and
/// exactly representable in float.
template <class T>
T code3(index_t a, index_t b, index_t c) {
  return static_cast<T>(100 * a + 10 * b + c);
}

/// A row-major [A, B, C] buffer with element (a, b, c) = code3(a, b, c); needs B, C <= 10.
template <class T>
std::vector<T> coded_buffer(index_t extent_a, index_t extent_b, index_t extent_c) {
  std::vector<T> buffer;
  for (index_t a = 0; a < extent_a; ++a)
    for (index_t b = 0; b < extent_b; ++b)
      for (index_t c = 0; c < extent_c; ++c) buffer.push_back(code3<T>(a, b, c));
  return buffer;
}

using diffattn_test::ElementTypeNames;
using ElementTypes = diffattn_test::FloatTypes;

template <class T>
class TensorViewTypedTest : public ::testing::Test {};
TYPED_TEST_SUITE(TensorViewTypedTest, ElementTypes, ElementTypeNames);

template <class T>
class TensorTypedTest : public ::testing::Test {};
TYPED_TEST_SUITE(TensorTypedTest, ElementTypes, ElementTypeNames);

// TensorView: construction

TEST(TensorViewTest, RowMajorConstructorComputesStrides) {
  std::vector<float> buffer(2 * 3 * 4);
  const TensorView<float, 3> view(buffer.data(), {2, 3, 4});
  EXPECT_EQ(view.data(), buffer.data());
  EXPECT_EQ(view.shape(), (std::array<index_t, 3>{2, 3, 4}));
  EXPECT_EQ(view.strides(), (std::array<index_t, 3>{12, 4, 1}));
  EXPECT_EQ(view.extent(0), 2);
  EXPECT_EQ(view.extent(2), 4);
  EXPECT_EQ(view.stride(0), 12);
  EXPECT_EQ(view.stride(1), 4);
  EXPECT_EQ(view.stride(2), 1);
  static_assert(TensorView<float, 3>::rank == 3);
  static_assert(std::is_same_v<TensorView<const float, 3>::value_type, float>);
  static_assert(std::is_same_v<TensorView<const float, 3>::element_type, const float>);
}

TEST(TensorViewTest, RowMajorStridesOfRankOneAndWithUnitExtents) {
  std::vector<float> buffer(7);
  const TensorView<float, 1> line(buffer.data(), {7});
  EXPECT_EQ(line.stride(0), 1);
  const TensorView<float, 4> shaped(buffer.data(), {1, 7, 1, 1});
  EXPECT_EQ(shaped.strides(), (std::array<index_t, 4>{7, 1, 1, 1}));
}

TYPED_TEST(TensorViewTypedTest, ExplicitStridesAddressElements) {
  using T = TypeParam;
  // A column-major [3, 2] view of 0..5: element (i, j) lives at i + 3j.
  std::vector<T> buffer = {0, 1, 2, 3, 4, 5};
  const TensorView<T, 2> view(buffer.data(), {3, 2}, {1, 3});
  EXPECT_EQ(view.strides(), (std::array<index_t, 2>{1, 3}));
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 2; ++j) {
      EXPECT_EQ(view(i, j), static_cast<T>(i + 3 * j)) << "(" << i << ", " << j << ")";
      EXPECT_EQ(&view(i, j), buffer.data() + i + 3 * j);
    }
  // Writes go to the buffer.
  view(2, 1) = T(42);
  EXPECT_EQ(buffer[5], T(42));
}

TYPED_TEST(TensorViewTypedTest, ConvertsToConstView) {
  using T = TypeParam;
  std::vector<T> buffer = {1, 2, 3, 4, 5, 6};
  const TensorView<T, 2> view(buffer.data(), {2, 3}, {1, 2});
  const TensorView<const T, 2> const_view = view;  // implicit
  EXPECT_EQ(const_view.data(), view.data());
  EXPECT_EQ(const_view.shape(), view.shape());
  EXPECT_EQ(const_view.strides(), view.strides());
  EXPECT_EQ(const_view(1, 2), view(1, 2));
  static_assert(std::is_convertible_v<TensorView<T, 2>, TensorView<const T, 2>>);
  static_assert(!std::is_convertible_v<TensorView<const T, 2>, TensorView<T, 2>>,
                "dropping const must not compile");
  static_assert(!std::is_constructible_v<TensorView<T, 2>, TensorView<const T, 2>>,
                "dropping const must not compile, even explicitly");
  static_assert(!std::is_convertible_v<TensorView<T, 2>, TensorView<const T, 3>>,
                "rank is part of the type");
  static_assert(std::is_same_v<decltype(const_view(0, 0)), const T&>);
  static_assert(std::is_same_v<decltype(view(0, 0)), T&>);
}

TEST(TensorViewTest, NegativeExtentThrowsShapeError) {
  float value = 0;
  const std::string message =
      shape_error_message([&] { TensorView<float, 3>(&value, {1, -2, 1}); });
  EXPECT_TRUE(contains(message, "dimension 1")) << message;
  EXPECT_TRUE(contains(message, "expected an extent >= 0")) << message;
  EXPECT_TRUE(contains(message, "got -2")) << message;
  // Also through the explicit-strides constructor.
  EXPECT_THROW((TensorView<float, 2>(&value, {-1, 1}, {1, 1})), shape_error);
}

TEST(TensorViewTest, NegativeStrideThrowsShapeError) {
  std::vector<float> buffer(6);
  const std::string message =
      shape_error_message([&] { TensorView<float, 2>(buffer.data(), {2, 3}, {3, -1}); });
  EXPECT_TRUE(contains(message, "dimension 1")) << message;
  EXPECT_TRUE(contains(message, "stride >= 0")) << message;
  EXPECT_TRUE(contains(message, "got -1")) << message;
}

TEST(TensorViewTest, NullDataWithElementsThrowsShapeError) {
  const std::string message =
      shape_error_message([] { TensorView<float, 2>(nullptr, {2, 3}); });
  EXPECT_TRUE(contains(message, "null data")) << message;
  EXPECT_TRUE(contains(message, "6 elements")) << message;
  EXPECT_THROW((TensorView<double, 1>(nullptr, {1}, {1})), shape_error);
}

TEST(TensorViewTest, ElementCountOverflowThrowsShapeError) {
  float value = 0;
  const index_t huge = std::numeric_limits<index_t>::max() / 2;
  EXPECT_THROW((TensorView<float, 2>(&value, {huge, 3}, {0, 0})), shape_error);
}

// Offsets Σ (extent − 1)·stride past what std::ptrdiff_t holds (strides of 2^62 over a
// small buffer) were accepted, and validation's address arithmetic overflowed.
TEST(TensorViewTest, OffsetOverflowThrowsShapeError) {
  float buffer[8] = {};
  const index_t huge = index_t{1} << 62;
  const std::string message =
      shape_error_message([&] { (void)TensorView<const float, 4>(buffer, {1, 1, 3, 2}, {0, 0, huge, 1}); });
  EXPECT_TRUE(contains(message, "dimension 2")) << message;
  EXPECT_THROW((TensorView<float, 2>(buffer, {2, 2}, {huge, huge})), shape_error);
  // In elements it fits; in bytes it does not.
  EXPECT_THROW((TensorView<float, 1>(buffer, {3}, {index_t{1} << 61})), shape_error);
  EXPECT_NO_THROW((TensorView<char, 1>(reinterpret_cast<char*>(buffer), {3}, {index_t{1} << 61})));
  // Extent 1 and stride 0 never reach past the first element.
  EXPECT_NO_THROW((TensorView<float, 2>(buffer, {1, huge}, {std::numeric_limits<index_t>::max(), 0})));
}

// Empty shapes whose other extents multiply past std::ptrdiff_t (found by the shape
// fuzzer): the element count is 0 whatever comes before the 0, row-major strides do not
// overflow, and selecting or slicing an empty view of null data offsets no pointer.
TEST(TensorViewTest, EmptyShapesWithHugeExtents) {
  const index_t huge = index_t{1} << 62;
  const TensorView<float, 5> empty(nullptr, {1, huge, 2, 0, 0});
  EXPECT_EQ(empty.size(), 0);
  EXPECT_EQ((diffattn::detail::checked_element_count<3>({huge, huge, 0})), 0);
  const TensorView<float, 3> wide(nullptr, {0, huge, huge});
  EXPECT_EQ(wide.select(1, 5).data(), nullptr);
  EXPECT_EQ(wide.slice(2, 7, 9).data(), nullptr);
  const TensorView<float, 2> rows(nullptr, {2, 0});
  EXPECT_EQ(rows.select(0, 1).data(), nullptr);
  EXPECT_EQ(rows.slice(0, 1, 2).data(), nullptr);
  EXPECT_THROW((TensorView<float, 2>(nullptr, {std::numeric_limits<index_t>::min(), 4})), shape_error);
}

// Transforms whose stride arithmetic overflowed although the result was a fine view: a
// huge slice step, and a split whose outer extent is 1 (stride·inner).
TEST(TensorViewTest, TransformsOfWideStridesDoNotOverflow) {
  char buffer[4] = {};
  const index_t step = index_t{1} << 31;
  const TensorView<char, 1> wide(buffer, {index_t{1} << 32}, {step});
  const auto split = wide.split(0, 1, index_t{1} << 32);
  EXPECT_EQ(split.extent(0), 1);
  EXPECT_EQ(split.stride(1), step);
  const auto one = wide.slice(0, 0, 2, std::numeric_limits<index_t>::max());
  EXPECT_EQ(one.extent(0), 1);
  EXPECT_EQ(one.data(), buffer);
}

TEST(TensorViewTest, EmptyViewsWithNullDataAreFine) {
  const TensorView<float, 2> default_view;
  EXPECT_EQ(default_view.data(), nullptr);
  EXPECT_EQ(default_view.size(), 0);
  EXPECT_TRUE(default_view.empty());

  TensorView<float, 3> zero_extent;
  EXPECT_NO_THROW((zero_extent = TensorView<float, 3>(nullptr, {4, 0, 5})));
  EXPECT_EQ(zero_extent.shape(), (std::array<index_t, 3>{4, 0, 5}));
  EXPECT_EQ(zero_extent.size(), 0);
  EXPECT_TRUE(zero_extent.empty());
  EXPECT_TRUE(zero_extent.is_contiguous());

  EXPECT_NO_THROW((TensorView<double, 2>(nullptr, {0, 0}, {7, 3})));
  EXPECT_NO_THROW((TensorView<const double, 1>(nullptr, {0})));
}

// TensorView: element access

TYPED_TEST(TensorViewTypedTest, OperatorParenAndAtAgree) {
  using T = TypeParam;
  const auto buffer = coded_buffer<T>(2, 3, 4);
  // A transposed, strided view so that the two accessors are exercised off row-major.
  const TensorView<const T, 3> view(buffer.data(), {4, 3, 2}, {1, 4, 12});
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 3; ++j)
      for (index_t k = 0; k < 2; ++k) {
        EXPECT_EQ(&view(i, j, k), &view.at({i, j, k}));
        EXPECT_EQ(view.at({i, j, k}), code3<T>(k, j, i));
      }
}

TEST(TensorViewTest, AtThrowsOutOfRange) {
  std::vector<float> buffer(6);
  const TensorView<float, 2> view(buffer.data(), {2, 3});
  EXPECT_THROW(view.at({2, 0}), std::out_of_range);
  EXPECT_THROW(view.at({-1, 0}), std::out_of_range);
  EXPECT_THROW(view.at({0, 3}), std::out_of_range);
  EXPECT_THROW(view.at({0, -1}), std::out_of_range);
  EXPECT_NO_THROW(view.at({1, 2}));
  const std::string message = out_of_range_message([&] { view.at({1, 3}); });
  EXPECT_TRUE(contains(message, "index 3")) << message;
  EXPECT_TRUE(contains(message, "[0, 3)")) << message;
  EXPECT_TRUE(contains(message, "dimension 1")) << message;
  // An empty view has no valid index.
  const TensorView<float, 2> empty(nullptr, {0, 3});
  EXPECT_THROW(empty.at({0, 0}), std::out_of_range);
}

// TensorView: select, slice, permute, transpose, split, reshape, broadcast

TYPED_TEST(TensorViewTypedTest, SelectEveryDimension) {
  using T = TypeParam;
  auto buffer = coded_buffer<T>(2, 3, 4);
  const TensorView<T, 3> view(buffer.data(), {2, 3, 4});

  for (index_t a = 0; a < 2; ++a) {
    const TensorView<T, 2> plane = view.select(0, a);
    ASSERT_EQ(plane.shape(), (std::array<index_t, 2>{3, 4}));
    for (index_t b = 0; b < 3; ++b)
      for (index_t c = 0; c < 4; ++c) EXPECT_EQ(plane(b, c), code3<T>(a, b, c));
  }
  for (index_t b = 0; b < 3; ++b) {
    const TensorView<T, 2> plane = view.select(1, b);
    ASSERT_EQ(plane.shape(), (std::array<index_t, 2>{2, 4}));
    EXPECT_EQ(plane.strides(), (std::array<index_t, 2>{12, 1}));
    for (index_t a = 0; a < 2; ++a)
      for (index_t c = 0; c < 4; ++c) EXPECT_EQ(plane(a, c), code3<T>(a, b, c));
  }
  for (index_t c = 0; c < 4; ++c) {
    const TensorView<T, 2> plane = view.select(2, c);
    ASSERT_EQ(plane.shape(), (std::array<index_t, 2>{2, 3}));
    EXPECT_EQ(plane.strides(), (std::array<index_t, 2>{12, 4}));
    for (index_t a = 0; a < 2; ++a)
      for (index_t b = 0; b < 3; ++b) EXPECT_EQ(plane(a, b), code3<T>(a, b, c));
  }
  // Down to rank 1, and writes through the selection land in the buffer.
  const TensorView<T, 1> line = view.select(0, 1).select(0, 2);
  ASSERT_EQ(line.extent(0), 4);
  line(3) = T(-7);
  EXPECT_EQ(buffer[1 * 12 + 2 * 4 + 3], T(-7));
}

TEST(TensorViewTest, SelectRejectsBadIndexAndDimension) {
  std::vector<float> buffer(24);
  const TensorView<float, 3> view(buffer.data(), {2, 3, 4});
  EXPECT_THROW(view.select(0, 2), shape_error);
  EXPECT_THROW(view.select(0, -1), shape_error);
  EXPECT_THROW(view.select(2, 4), shape_error);
  EXPECT_THROW(view.select(3, 0), shape_error);
  const std::string message = shape_error_message([&] { view.select(1, 3); });
  EXPECT_TRUE(contains(message, "select")) << message;
  EXPECT_TRUE(contains(message, "index 3")) << message;
  EXPECT_TRUE(contains(message, "[0, 3)")) << message;
  EXPECT_TRUE(contains(message, "dimension 1")) << message;
  const std::string dim_message = shape_error_message([&] { view.select(5, 0); });
  EXPECT_TRUE(contains(dim_message, "dimension 5")) << dim_message;
  EXPECT_TRUE(contains(dim_message, "rank 3")) << dim_message;
}

TYPED_TEST(TensorViewTypedTest, SliceWithoutStep) {
  using T = TypeParam;
  const auto buffer = coded_buffer<T>(2, 4, 5);
  const TensorView<const T, 3> view(buffer.data(), {2, 4, 5});
  const auto sliced = view.slice(1, 1, 3);
  ASSERT_EQ(sliced.shape(), (std::array<index_t, 3>{2, 2, 5}));
  EXPECT_EQ(sliced.strides(), view.strides());
  for (index_t a = 0; a < 2; ++a)
    for (index_t b = 0; b < 2; ++b)
      for (index_t c = 0; c < 5; ++c) EXPECT_EQ(sliced(a, b, c), code3<T>(a, b + 1, c));

  const auto last = view.slice(2, 4, 5);
  ASSERT_EQ(last.shape(), (std::array<index_t, 3>{2, 4, 1}));
  for (index_t a = 0; a < 2; ++a)
    for (index_t b = 0; b < 4; ++b) EXPECT_EQ(last(a, b, 0), code3<T>(a, b, 4));

  const auto empty = view.slice(0, 2, 2);
  EXPECT_EQ(empty.extent(0), 0);
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(empty.extent(1), 4);
}

TYPED_TEST(TensorViewTypedTest, SliceWithStep) {
  using T = TypeParam;
  const auto buffer = coded_buffer<T>(2, 4, 7);
  const TensorView<const T, 3> view(buffer.data(), {2, 4, 7});

  // Indices 1, 3, 5 of the last dimension (7 is excluded).
  const auto odd = view.slice(2, 1, 7, 2);
  ASSERT_EQ(odd.shape(), (std::array<index_t, 3>{2, 4, 3}));
  EXPECT_EQ(odd.stride(2), 2);
  for (index_t a = 0; a < 2; ++a)
    for (index_t b = 0; b < 4; ++b)
      for (index_t k = 0; k < 3; ++k) EXPECT_EQ(odd(a, b, k), code3<T>(a, b, 1 + 2 * k));

  // Step that does not divide the range: 0, 3, 6 out of [0, 7).
  const auto thirds = view.slice(2, 0, 7, 3);
  ASSERT_EQ(thirds.extent(2), 3);
  for (index_t k = 0; k < 3; ++k) EXPECT_EQ(thirds(1, 2, k), code3<T>(1, 2, 3 * k));

  // Middle dimension with step, then a slice of the slice.
  const auto rows = view.slice(1, 0, 4, 3);  // rows 0 and 3
  ASSERT_EQ(rows.extent(1), 2);
  EXPECT_EQ(rows.stride(1), 21);
  const auto nested = rows.slice(2, 2, 6, 2);  // columns 2 and 4
  ASSERT_EQ(nested.shape(), (std::array<index_t, 3>{2, 2, 2}));
  for (index_t a = 0; a < 2; ++a)
    for (index_t b = 0; b < 2; ++b)
      for (index_t c = 0; c < 2; ++c)
        EXPECT_EQ(nested(a, b, c), code3<T>(a, 3 * b, 2 + 2 * c));

  // A step larger than the range keeps only `begin`.
  const auto single = view.slice(2, 5, 7, 10);
  ASSERT_EQ(single.extent(2), 1);
  EXPECT_EQ(single(1, 1, 0), code3<T>(1, 1, 5));
}

TEST(TensorViewTest, SliceRejectsBadRanges) {
  std::vector<float> buffer(12);
  const TensorView<float, 2> view(buffer.data(), {3, 4});
  EXPECT_THROW(view.slice(0, -1, 2), shape_error);
  EXPECT_THROW(view.slice(0, 2, 1), shape_error);
  EXPECT_THROW(view.slice(1, 0, 5), shape_error);
  EXPECT_THROW(view.slice(1, 0, 4, 0), shape_error);
  EXPECT_THROW(view.slice(1, 0, 4, -1), shape_error);
  EXPECT_THROW(view.slice(2, 0, 1), shape_error);
  EXPECT_NO_THROW(view.slice(1, 4, 4));
  const std::string message = shape_error_message([&] { view.slice(1, 1, 6); });
  EXPECT_TRUE(contains(message, "[1, 6)")) << message;
  EXPECT_TRUE(contains(message, "dimension 1")) << message;
  EXPECT_TRUE(contains(message, "extent 4")) << message;
}

TYPED_TEST(TensorViewTypedTest, PermuteReordersDimensions) {
  using T = TypeParam;
  const auto buffer = coded_buffer<T>(2, 3, 4);
  const TensorView<const T, 3> view(buffer.data(), {2, 3, 4});
  const auto permuted = view.permute({2, 0, 1});  // [C, A, B]
  ASSERT_EQ(permuted.shape(), (std::array<index_t, 3>{4, 2, 3}));
  EXPECT_EQ(permuted.strides(), (std::array<index_t, 3>{1, 12, 4}));
  EXPECT_EQ(permuted.data(), view.data());
  for (index_t c = 0; c < 4; ++c)
    for (index_t a = 0; a < 2; ++a)
      for (index_t b = 0; b < 3; ++b) EXPECT_EQ(permuted(c, a, b), code3<T>(a, b, c));

  const auto identity = view.permute({0, 1, 2});
  EXPECT_EQ(identity.shape(), view.shape());
  EXPECT_EQ(identity.strides(), view.strides());
}

TEST(TensorViewTest, PermuteRejectsNonPermutations) {
  std::vector<float> buffer(24);
  const TensorView<float, 3> view(buffer.data(), {2, 3, 4});
  EXPECT_THROW(view.permute({0, 0, 1}), shape_error);
  EXPECT_THROW(view.permute({0, 1, 3}), shape_error);
  EXPECT_THROW(view.permute({2, 2, 2}), shape_error);
  const std::string message = shape_error_message([&] { view.permute({1, 1, 0}); });
  EXPECT_TRUE(contains(message, "permutation of 0..2")) << message;
  EXPECT_TRUE(contains(message, "entry 1 is 1")) << message;
}

TYPED_TEST(TensorViewTypedTest, TransposeSwapsTwoDimensions) {
  using T = TypeParam;
  const auto buffer = coded_buffer<T>(2, 3, 4);
  const TensorView<const T, 3> view(buffer.data(), {2, 3, 4});
  const auto transposed = view.transpose(0, 2);
  ASSERT_EQ(transposed.shape(), (std::array<index_t, 3>{4, 3, 2}));
  EXPECT_EQ(transposed.strides(), (std::array<index_t, 3>{1, 4, 12}));
  for (index_t c = 0; c < 4; ++c)
    for (index_t b = 0; b < 3; ++b)
      for (index_t a = 0; a < 2; ++a) EXPECT_EQ(transposed(c, b, a), code3<T>(a, b, c));

  const auto same = view.transpose(1, 1);
  EXPECT_EQ(same.shape(), view.shape());
  EXPECT_EQ(same.strides(), view.strides());
  const auto back = transposed.transpose(2, 0);
  EXPECT_EQ(back.shape(), view.shape());
  EXPECT_EQ(back.strides(), view.strides());

  EXPECT_THROW(view.transpose(0, 3), shape_error);
  EXPECT_THROW(view.transpose(3, 0), shape_error);
}

TYPED_TEST(TensorViewTypedTest, SplitHeadsIntoPairs) {
  using T = TypeParam;
  // [B, N, 2H, d] = [2, 3, 6, 4], element (b, n, j, c) = 1000b + 100n + 10j + c.
  constexpr index_t B = 2, N = 3, H = 3, d = 4;
  std::vector<T> buffer;
  for (index_t b = 0; b < B; ++b)
    for (index_t n = 0; n < N; ++n)
      for (index_t j = 0; j < 2 * H; ++j)
        for (index_t c = 0; c < d; ++c)
          buffer.push_back(static_cast<T>(1000 * b + 100 * n + 10 * j + c));
  const TensorView<const T, 4> x(buffer.data(), {B, N, 2 * H, d});
  const TensorView<const T, 5> pairs = x.split(2, H, 2);
  ASSERT_EQ(pairs.shape(), (std::array<index_t, 5>{B, N, H, 2, d}));
  EXPECT_EQ(pairs.strides(), (std::array<index_t, 5>{N * 2 * H * d, 2 * H * d, 2 * d, d, 1}));
  for (index_t b = 0; b < B; ++b)
    for (index_t n = 0; n < N; ++n)
      for (index_t h = 0; h < H; ++h)
        for (index_t p = 0; p < 2; ++p)
          for (index_t c = 0; c < d; ++c)
            EXPECT_EQ(pairs(b, n, h, p, c), x(b, n, 2 * h + p, c))
                << "(" << b << ", " << n << ", " << h << ", " << p << ", " << c << ")";

  // The other split of the same dimension: [B, N, 2, H, d], element (b, n, s, h, c) is
  // head s*H + h.
  const auto halves = x.split(2, 2, H);
  ASSERT_EQ(halves.shape(), (std::array<index_t, 5>{B, N, 2, H, d}));
  for (index_t s = 0; s < 2; ++s)
    for (index_t h = 0; h < H; ++h)
      for (index_t c = 0; c < d; ++c) EXPECT_EQ(halves(1, 2, s, h, c), x(1, 2, s * H + h, c));

  // Splitting the first and last dimensions.
  const auto first = x.split(0, 1, 2);
  ASSERT_EQ(first.shape(), (std::array<index_t, 5>{1, 2, N, 2 * H, d}));
  EXPECT_EQ(first(0, 1, 2, 5, 3), x(1, 2, 5, 3));
  const auto last = x.split(3, 2, 2);
  ASSERT_EQ(last.shape(), (std::array<index_t, 5>{B, N, 2 * H, 2, 2}));
  EXPECT_EQ(last(1, 1, 4, 1, 0), x(1, 1, 4, 2));
}

TEST(TensorViewTest, SplitRejectsWrongFactors) {
  std::vector<float> buffer(2 * 6);
  const TensorView<float, 2> view(buffer.data(), {2, 6});
  EXPECT_THROW(view.split(1, 4, 2), shape_error);
  EXPECT_THROW(view.split(1, -2, -3), shape_error);
  EXPECT_THROW(view.split(2, 3, 2), shape_error);
  EXPECT_NO_THROW(view.split(1, 6, 1));
  const std::string message = shape_error_message([&] { view.split(1, 4, 2); });
  EXPECT_TRUE(contains(message, "dimension 1")) << message;
  EXPECT_TRUE(contains(message, "extent 6")) << message;
  EXPECT_TRUE(contains(message, "4 x 2")) << message;
}

TYPED_TEST(TensorViewTypedTest, ReshapeContiguousViews) {
  using T = TypeParam;
  const auto buffer = coded_buffer<T>(2, 3, 4);
  const TensorView<const T, 3> view(buffer.data(), {2, 3, 4});

  const TensorView<const T, 2> matrix = view.template reshape<2>({6, 4});
  EXPECT_EQ(matrix.data(), view.data());
  EXPECT_EQ(matrix.strides(), (std::array<index_t, 2>{4, 1}));
  for (index_t r = 0; r < 6; ++r)
    for (index_t c = 0; c < 4; ++c) EXPECT_EQ(matrix(r, c), code3<T>(r / 3, r % 3, c));

  const TensorView<const T, 1> flat = view.template reshape<1>({24});
  for (index_t i = 0; i < 24; ++i) EXPECT_EQ(flat(i), buffer[static_cast<std::size_t>(i)]);

  const auto more = view.template reshape<4>({2, 2, 3, 2});
  EXPECT_EQ(more(1, 1, 2, 1), view(1, 2, 3));

  // A slice along the outermost dimension stays contiguous.
  const auto tail = view.slice(0, 1, 2).template reshape<1>({12});
  for (index_t i = 0; i < 12; ++i) EXPECT_EQ(tail(i), code3<T>(1, i / 4, i % 4));
}

TEST(TensorViewTest, ReshapeRejectsNonContiguousViewsAndCountMismatch) {
  std::vector<float> buffer(24);
  const TensorView<float, 3> view(buffer.data(), {2, 3, 4});
  EXPECT_THROW(view.transpose(0, 1).reshape<1>({24}), shape_error);
  EXPECT_THROW(view.slice(2, 0, 2).reshape<1>({12}), shape_error);
  EXPECT_THROW(view.slice(1, 0, 3, 2).reshape<1>({16}), shape_error);
  const std::string contiguity =
      shape_error_message([&] { view.transpose(1, 2).reshape<2>({6, 4}); });
  EXPECT_TRUE(contains(contiguity, "not contiguous")) << contiguity;

  EXPECT_THROW(view.reshape<2>({5, 5}), shape_error);
  EXPECT_THROW(view.reshape<2>({5, 4}), shape_error);
  EXPECT_THROW(view.reshape<3>({2, 3, 0}), shape_error);
  EXPECT_THROW(view.reshape<1>({-24}), shape_error);
  const std::string count = shape_error_message([&] { view.reshape<2>({5, 5}); });
  EXPECT_TRUE(contains(count, "24")) << count;
  EXPECT_TRUE(contains(count, "25")) << count;
}

TYPED_TEST(TensorViewTypedTest, BroadcastRepeatsUnitDimensions) {
  using T = TypeParam;
  std::vector<T> buffer = {1, 2, 3};
  const TensorView<T, 2> column(buffer.data(), {3, 1});
  const auto wide = column.broadcast(1, 5);
  ASSERT_EQ(wide.shape(), (std::array<index_t, 2>{3, 5}));
  EXPECT_EQ(wide.stride(1), 0);
  EXPECT_EQ(wide.stride(0), 1);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 5; ++j) {
      EXPECT_EQ(wide(i, j), buffer[static_cast<std::size_t>(i)]);
      EXPECT_EQ(&wide(i, j), &column(i, 0));
    }
  // Writing one broadcast element is visible through all of them.
  wide(1, 4) = T(9);
  EXPECT_EQ(wide(1, 0), T(9));
  EXPECT_EQ(buffer[1], T(9));

  const auto none = column.broadcast(1, 0);
  EXPECT_EQ(none.extent(1), 0);
  EXPECT_TRUE(none.empty());
}

TEST(TensorViewTest, BroadcastRejectsNonUnitExtents) {
  std::vector<float> buffer(6);
  const TensorView<float, 2> view(buffer.data(), {2, 3});
  EXPECT_THROW(view.broadcast(0, 4), shape_error);
  EXPECT_THROW(view.broadcast(2, 4), shape_error);
  const TensorView<float, 2> row(buffer.data(), {1, 3});
  EXPECT_THROW(row.broadcast(0, -1), shape_error);
  EXPECT_NO_THROW(row.broadcast(0, 4));
  const std::string message = shape_error_message([&] { view.broadcast(1, 4); });
  EXPECT_TRUE(contains(message, "dimension 1")) << message;
  EXPECT_TRUE(contains(message, "extent 3")) << message;
  EXPECT_TRUE(contains(message, "expected 1")) << message;
}

TEST(TensorViewTest, IsContiguous) {
  std::vector<float> buffer(2 * 3 * 4);
  const TensorView<float, 3> view(buffer.data(), {2, 3, 4});
  EXPECT_TRUE(view.is_contiguous());
  EXPECT_FALSE(view.transpose(1, 2).is_contiguous());
  EXPECT_FALSE(view.permute({1, 0, 2}).is_contiguous());
  EXPECT_TRUE(view.slice(0, 1, 2).is_contiguous());
  EXPECT_FALSE(view.slice(1, 0, 2).is_contiguous());
  EXPECT_FALSE(view.slice(2, 0, 3).is_contiguous());
  EXPECT_FALSE(view.slice(2, 0, 4, 2).is_contiguous());
  EXPECT_TRUE(view.select(0, 1).is_contiguous());
  EXPECT_FALSE(view.select(1, 1).is_contiguous());
  // Extent-1 dimensions may have any stride.
  EXPECT_TRUE(view.slice(1, 2, 3).slice(0, 0, 1).is_contiguous());
  EXPECT_TRUE((TensorView<float, 3>(buffer.data(), {2, 1, 4}, {4, 1000, 1})).is_contiguous());
  // Broadcast dimensions are not (unless they stay extent 1).
  const TensorView<float, 2> row(buffer.data(), {1, 4});
  EXPECT_TRUE(row.is_contiguous());
  EXPECT_FALSE(row.broadcast(0, 3).is_contiguous());
  EXPECT_TRUE(row.broadcast(0, 1).is_contiguous());
  // Empty views are, whatever their strides.
  EXPECT_TRUE(view.slice(2, 0, 4, 2).slice(0, 1, 1).is_contiguous());
  // Explicit column-major strides are not row-major.
  EXPECT_FALSE((TensorView<float, 2>(buffer.data(), {3, 2}, {1, 3})).is_contiguous());
}

TEST(TensorViewTest, SizeAndEmpty) {
  std::vector<float> buffer(60);
  const TensorView<float, 3> view(buffer.data(), {3, 4, 5});
  EXPECT_EQ(view.size(), 60);
  EXPECT_FALSE(view.empty());
  EXPECT_EQ(view.slice(1, 1, 3).size(), 30);
  EXPECT_EQ(view.select(2, 0).size(), 12);
  EXPECT_EQ(view.slice(0, 0, 0).size(), 0);
  EXPECT_TRUE(view.slice(0, 0, 0).empty());
  const TensorView<float, 1> one(buffer.data(), {1});
  EXPECT_EQ(one.size(), 1);
  EXPECT_FALSE(one.empty());
}

TEST(TensorViewTest, IsTriviallyCopyable) {
  static_assert(std::is_trivially_copyable_v<TensorView<float, 1>>);
  static_assert(std::is_trivially_copyable_v<TensorView<const double, 4>>);
  static_assert(std::is_trivially_copyable_v<TensorView<float, 5>>);
  EXPECT_TRUE((std::is_trivially_copyable_v<TensorView<float, 3>>));
  EXPECT_TRUE((std::is_nothrow_copy_constructible_v<TensorView<double, 2>>));
}

// Tensor

TYPED_TEST(TensorTypedTest, DataIs64ByteAligned) {
  using T = TypeParam;
  const std::vector<std::array<index_t, 2>> shapes = {{1, 1},  {1, 3}, {3, 5},
                                                      {7, 17}, {64, 3}, {1, 1000}};
  // Keep several tensors alive at once so that the allocator cannot hand back the same
  // (possibly lucky) block every time.
  std::vector<Tensor<T, 2>> tensors;
  for (const auto& shape : shapes) tensors.emplace_back(shape);
  for (const auto& tensor : tensors) {
    const auto address = reinterpret_cast<std::uintptr_t>(tensor.data());
    EXPECT_EQ(address % 64, 0u) << "shape [" << tensor.extent(0) << ", " << tensor.extent(1) << "]";
  }
  static_assert(Tensor<T, 2>::alignment == 64);
  const Tensor<T, 1> line({5});
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(line.data()) % 64, 0u);
  const Tensor<T, 4> rank4({2, 3, 1, 5}, T(1));
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(rank4.data()) % 64, 0u);
  const Tensor<T, 4> copy = rank4;
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(copy.data()) % 64, 0u);
}

TYPED_TEST(TensorTypedTest, ZeroInitialized) {
  using T = TypeParam;
  const Tensor<T, 3> tensor({3, 4, 5});
  EXPECT_EQ(tensor.size(), 60);
  EXPECT_FALSE(tensor.empty());
  for (index_t i = 0; i < tensor.size(); ++i) EXPECT_EQ(tensor.data()[i], T(0)) << i;
}

TYPED_TEST(TensorTypedTest, FillConstructor) {
  using T = TypeParam;
  const Tensor<T, 2> tensor({4, 3}, T(2.5));
  EXPECT_EQ(tensor.size(), 12);
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 3; ++j) EXPECT_EQ(tensor(i, j), T(2.5));
}

TYPED_TEST(TensorTypedTest, ElementAccessIsRowMajor) {
  using T = TypeParam;
  Tensor<T, 3> tensor({2, 3, 4});
  for (index_t a = 0; a < 2; ++a)
    for (index_t b = 0; b < 3; ++b)
      for (index_t c = 0; c < 4; ++c) tensor(a, b, c) = code3<T>(a, b, c);
  const auto expected = coded_buffer<T>(2, 3, 4);
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(tensor.data()[i], expected[i]) << i;
  const Tensor<T, 3>& const_ref = tensor;
  static_assert(std::is_same_v<decltype(const_ref(0, 0, 0)), const T&>);
  EXPECT_EQ(const_ref(1, 2, 3), code3<T>(1, 2, 3));
}

TYPED_TEST(TensorTypedTest, CopyIsDeep) {
  using T = TypeParam;
  Tensor<T, 2> original({2, 3}, T(1));
  original(1, 2) = T(5);
  Tensor<T, 2> copy = original;
  EXPECT_NE(copy.data(), original.data());
  EXPECT_EQ(copy.shape(), original.shape());
  EXPECT_EQ(copy(1, 2), T(5));
  copy(0, 0) = T(-3);
  EXPECT_EQ(original(0, 0), T(1));

  Tensor<T, 2> assigned({7, 7});
  assigned = original;
  EXPECT_NE(assigned.data(), original.data());
  EXPECT_EQ(assigned.shape(), original.shape());
  EXPECT_EQ(assigned.size(), 6);
  EXPECT_EQ(assigned(1, 2), T(5));
  assigned(1, 2) = T(8);
  EXPECT_EQ(original(1, 2), T(5));

  // Copying an empty tensor gives an empty tensor.
  const Tensor<T, 2> empty;
  const Tensor<T, 2> empty_copy = empty;
  EXPECT_TRUE(empty_copy.empty());
}

TYPED_TEST(TensorTypedTest, MoveLeavesSourceEmpty) {
  using T = TypeParam;
  Tensor<T, 2> source({3, 2}, T(4));
  const T* storage = source.data();
  Tensor<T, 2> moved = std::move(source);
  EXPECT_EQ(moved.data(), storage);
  EXPECT_EQ(moved.shape(), (std::array<index_t, 2>{3, 2}));
  EXPECT_EQ(moved(2, 1), T(4));
  // NOLINTNEXTLINE(bugprone-use-after-move): the moved-from state is what we test.
  EXPECT_EQ(source.data(), nullptr);
  EXPECT_EQ(source.size(), 0);
  EXPECT_TRUE(source.empty());
  EXPECT_EQ(source.shape(), (std::array<index_t, 2>{0, 0}));
  EXPECT_TRUE(source.view().empty());

  Tensor<T, 2> target({5, 5});
  target = std::move(moved);
  EXPECT_EQ(target.data(), storage);
  EXPECT_EQ(target.shape(), (std::array<index_t, 2>{3, 2}));
  EXPECT_EQ(moved.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(moved.empty());
  static_assert(std::is_nothrow_move_constructible_v<Tensor<T, 2>>);
}

TYPED_TEST(TensorTypedTest, ViewHasTheTensorsShape) {
  using T = TypeParam;
  Tensor<T, 3> tensor({2, 3, 4});
  const TensorView<T, 3> view = tensor.view();
  EXPECT_EQ(view.data(), tensor.data());
  EXPECT_EQ(view.shape(), (std::array<index_t, 3>{2, 3, 4}));
  EXPECT_EQ(view.strides(), (std::array<index_t, 3>{12, 4, 1}));
  view(1, 2, 3) = T(6);
  EXPECT_EQ(tensor(1, 2, 3), T(6));

  const Tensor<T, 3>& const_ref = tensor;
  const auto const_view = const_ref.view();
  static_assert(std::is_same_v<decltype(const_view), const TensorView<const T, 3>>);
  EXPECT_EQ(const_view.data(), tensor.data());
  EXPECT_EQ(const_view.shape(), view.shape());
}

template <class T>
index_t count_nonzero(TensorView<const T, 2> view) {
  index_t count = 0;
  for (index_t i = 0; i < view.extent(0); ++i)
    for (index_t j = 0; j < view.extent(1); ++j) count += view(i, j) != T(0);
  return count;
}

template <class T>
void fill_with(TensorView<T, 2> view, T value) {
  for (index_t i = 0; i < view.extent(0); ++i)
    for (index_t j = 0; j < view.extent(1); ++j) view(i, j) = value;
}

TYPED_TEST(TensorTypedTest, LvalueConvertsToView) {
  using T = TypeParam;
  Tensor<T, 2> tensor({2, 3});
  fill_with<T>(tensor, T(3));  // Tensor& → TensorView<T, 2>
  EXPECT_EQ(tensor(1, 2), T(3));
  const Tensor<T, 2>& const_ref = tensor;
  EXPECT_EQ(count_nonzero<T>(const_ref), 6);  // const Tensor& → TensorView<const T, 2>
  EXPECT_EQ(count_nonzero<T>(tensor), 6);     // Tensor& → TensorView<const T, 2>

  const TensorView<T, 2> implicit = tensor;
  EXPECT_EQ(implicit.data(), tensor.data());
  EXPECT_EQ(implicit.shape(), tensor.shape());

  static_assert(std::is_convertible_v<Tensor<T, 2>&, TensorView<T, 2>>);
  static_assert(std::is_convertible_v<Tensor<T, 2>&, TensorView<const T, 2>>);
  static_assert(std::is_convertible_v<const Tensor<T, 2>&, TensorView<const T, 2>>);
  static_assert(!std::is_convertible_v<const Tensor<T, 2>&, TensorView<T, 2>>,
                "a const tensor must not give a mutable view");
}

TYPED_TEST(TensorTypedTest, RvalueToViewConversionIsDeleted) {
  using T = TypeParam;
  // A view of a temporary would dangle.
  static_assert(!std::is_convertible_v<Tensor<T, 2>&&, TensorView<T, 2>>);
  static_assert(!std::is_convertible_v<Tensor<T, 2>&&, TensorView<const T, 2>>);
  static_assert(!std::is_convertible_v<const Tensor<T, 2>&&, TensorView<const T, 2>>);
  static_assert(!std::is_convertible_v<Tensor<T, 2>, TensorView<T, 2>>);
  EXPECT_FALSE((std::is_convertible_v<Tensor<T, 3>&&, TensorView<T, 3>>));
}

TEST(TensorTest, RejectsNegativeExtents) {
  const std::string message = shape_error_message([] { Tensor<float, 2>({3, -1}); });
  EXPECT_TRUE(contains(message, "dimension 1")) << message;
  EXPECT_TRUE(contains(message, "got -1")) << message;
  EXPECT_THROW((Tensor<double, 1>({-5}, 1.0)), shape_error);
}

TEST(TensorTest, EmptyShapes) {
  const Tensor<float, 2> default_tensor;
  EXPECT_TRUE(default_tensor.empty());
  EXPECT_EQ(default_tensor.data(), nullptr);
  EXPECT_EQ(default_tensor.shape(), (std::array<index_t, 2>{0, 0}));

  Tensor<float, 3> zero_extent({4, 0, 2});
  EXPECT_TRUE(zero_extent.empty());
  EXPECT_EQ(zero_extent.size(), 0);
  EXPECT_EQ(zero_extent.extent(0), 4);
  const TensorView<float, 3> view = zero_extent.view();
  EXPECT_EQ(view.shape(), (std::array<index_t, 3>{4, 0, 2}));
  EXPECT_TRUE(view.empty());
}

TEST(TensorTest, SwapExchangesContents) {
  Tensor<float, 1> a({2}, 1.0f);
  Tensor<float, 1> b({3}, 2.0f);
  const float* a_data = a.data();
  a.swap(b);
  EXPECT_EQ(b.data(), a_data);
  EXPECT_EQ(a.extent(0), 3);
  EXPECT_EQ(b.extent(0), 2);
  EXPECT_EQ(a(2), 2.0f);
  EXPECT_EQ(b(1), 1.0f);
}

// Transforms with extreme arguments must reject them, not overflow into a bogus view.
TEST(TensorViewTest, TransformsDoNotOverflow) {
  float buffer[12] = {};
  const diffattn::TensorView<float, 2> v(buffer, {2, 6});
  const auto huge_step = v.slice(1, 0, 6, std::numeric_limits<std::ptrdiff_t>::max());
  EXPECT_EQ(huge_step.extent(1), 1);
  EXPECT_EQ(v.slice(1, 3, 3, std::numeric_limits<std::ptrdiff_t>::max()).extent(1), 0);
  // 6148914691236517206 · 9 wraps around to 6 in 64-bit arithmetic.
  EXPECT_THROW(v.split(1, 6148914691236517206, 9), diffattn::shape_error);
  try {
    (void)v.split(1, 6148914691236517206, 9);
  } catch (const diffattn::shape_error& e) {
    EXPECT_NE(std::string(e.what()).find("is not 6148914691236517206 x 9"), std::string::npos)
        << e.what();
  }
  const diffattn::TensorView<float, 2> row(buffer, {1, std::ptrdiff_t{1} << 40}, {0, 0});
  EXPECT_THROW((void)row.broadcast(0, std::ptrdiff_t{1} << 40), diffattn::shape_error);
}

}  // namespace
