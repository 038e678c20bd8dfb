// Unit tests for include/diffattn/eigen.hpp: zero-copy bridges between TensorView and Eigen.

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "diffattn/eigen.hpp"
#include "diffattn/tensor.hpp"

#include "helpers.hpp"

namespace {

using diffattn_test::contains;
using diffattn_test::shape_error_message;

using diffattn::as_eigen;
using diffattn::as_view;
using diffattn::EigenMap;
using diffattn::index_t;
using diffattn::shape_error;
using diffattn::Tensor;
using diffattn::TensorView;



/// A buffer 0, 1, 2, ... so that every element is distinct and exactly representable.
template <class T>
std::vector<T> iota_buffer(std::size_t count) {
  std::vector<T> buffer(count);
  for (std::size_t i = 0; i < count; ++i) buffer[i] = static_cast<T>(i);
  return buffer;
}

/// Element-by-element comparison of a 2-D view and an Eigen expression; also checks that
/// both address the same memory.
template <class T, class Expr>
void expect_same_elements(TensorView<T, 2> view, const Expr& matrix) {
  ASSERT_EQ(matrix.rows(), view.extent(0));
  ASSERT_EQ(matrix.cols(), view.extent(1));
  for (index_t i = 0; i < view.extent(0); ++i)
    for (index_t j = 0; j < view.extent(1); ++j) {
      EXPECT_EQ(matrix(i, j), view(i, j)) << "(" << i << ", " << j << ")";
      EXPECT_EQ(&matrix.coeffRef(i, j), &view(i, j)) << "(" << i << ", " << j << ")";
    }
}

using diffattn_test::ElementTypeNames;
using ElementTypes = diffattn_test::FloatTypes;

template <class T>
class EigenBridgeTypedTest : public ::testing::Test {};
TYPED_TEST_SUITE(EigenBridgeTypedTest, ElementTypes, ElementTypeNames);

template <class T>
using RowMajorMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMajorMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

// as_eigen

TYPED_TEST(EigenBridgeTypedTest, AsEigenOfContiguousView) {
  using T = TypeParam;
  auto buffer = iota_buffer<T>(12);
  const TensorView<T, 2> view(buffer.data(), {3, 4});
  const EigenMap<T> map = as_eigen(view);
  EXPECT_EQ(map.data(), buffer.data());
  EXPECT_EQ(map.outerStride(), 4);
  EXPECT_EQ(map.innerStride(), 1);
  expect_same_elements(view, map);
  // Row-major: (1, 2) is element 6.
  EXPECT_EQ(map(1, 2), T(6));

  EigenMap<T> writable = as_eigen(view);
  writable(2, 3) = T(-1);
  EXPECT_EQ(buffer[11], T(-1));
  writable.row(0).setConstant(T(5));
  EXPECT_EQ(buffer[0], T(5));
  EXPECT_EQ(buffer[3], T(5));
  EXPECT_EQ(buffer[4], T(4));
}

TYPED_TEST(EigenBridgeTypedTest, AsEigenOfTransposedView) {
  using T = TypeParam;
  auto buffer = iota_buffer<T>(12);
  const TensorView<T, 2> view(buffer.data(), {3, 4});
  const TensorView<T, 2> transposed = view.transpose(0, 1);  // [4, 3], strides [1, 4]
  EigenMap<T> map = as_eigen(transposed);
  EXPECT_EQ(map.rows(), 4);
  EXPECT_EQ(map.cols(), 3);
  EXPECT_EQ(map.outerStride(), 1);
  EXPECT_EQ(map.innerStride(), 4);
  expect_same_elements(transposed, map);
  // Equal to Eigen's own transpose of the row-major original.
  const RowMajorMatrix<T> original = as_eigen(view);
  EXPECT_EQ(RowMajorMatrix<T>(map), RowMajorMatrix<T>(original.transpose()));

  map(3, 1) = T(100);  // original (1, 3) = element 7
  EXPECT_EQ(buffer[7], T(100));
}

TYPED_TEST(EigenBridgeTypedTest, AsEigenOfSteppedSlice) {
  using T = TypeParam;
  auto buffer = iota_buffer<T>(4 * 7);
  const TensorView<T, 2> view(buffer.data(), {4, 7});
  // Rows 1 and 3, columns 0, 3, 6.
  const TensorView<T, 2> sliced = view.slice(0, 1, 4, 2).slice(1, 0, 7, 3);
  ASSERT_EQ(sliced.shape(), (std::array<index_t, 2>{2, 3}));
  EigenMap<T> map = as_eigen(sliced);
  EXPECT_EQ(map.outerStride(), 14);
  EXPECT_EQ(map.innerStride(), 3);
  expect_same_elements(sliced, map);
  for (index_t r = 0; r < 2; ++r)
    for (index_t c = 0; c < 3; ++c) EXPECT_EQ(map(r, c), static_cast<T>((1 + 2 * r) * 7 + 3 * c));

  map.setConstant(T(-2));
  // Exactly the six selected elements changed.
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 7; ++j) {
      const bool selected = (i == 1 || i == 3) && j % 3 == 0;
      const T expected = selected ? T(-2) : static_cast<T>(i * 7 + j);
      EXPECT_EQ(buffer[static_cast<std::size_t>(i * 7 + j)], expected)
          << "(" << i << ", " << j << ")";
    }
}

TYPED_TEST(EigenBridgeTypedTest, AsEigenOfBroadcastView) {
  using T = TypeParam;
  std::vector<T> buffer = {1, 2, 3, 4};
  const TensorView<T, 2> row(buffer.data(), {1, 4});
  const TensorView<T, 2> rows = row.broadcast(0, 3);  // [3, 4], strides [0, 1]
  EigenMap<T> map = as_eigen(rows);
  EXPECT_EQ(map.outerStride(), 0);
  EXPECT_EQ(map.innerStride(), 1);
  expect_same_elements(rows, map);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j) EXPECT_EQ(map(i, j), buffer[static_cast<std::size_t>(j)]);
  // A reduction over the broadcast dimension sees the row three times.
  EXPECT_EQ(map.colwise().sum()(0, 2), T(9));

  map(2, 1) = T(20);
  EXPECT_EQ(buffer[1], T(20));
  EXPECT_EQ(map(0, 1), T(20));

  // A column broadcast across columns: inner stride 0.
  const TensorView<T, 2> column(buffer.data(), {4, 1});
  const EigenMap<T> wide = as_eigen(column.broadcast(1, 5));
  EXPECT_EQ(wide.innerStride(), 0);
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 5; ++j) EXPECT_EQ(wide(i, j), buffer[static_cast<std::size_t>(i)]);
}

TYPED_TEST(EigenBridgeTypedTest, AsEigenOfConstViewIsReadOnly) {
  using T = TypeParam;
  const auto buffer = iota_buffer<T>(6);
  const TensorView<const T, 2> view(buffer.data(), {2, 3});
  const auto map = as_eigen(view);
  static_assert(std::is_same_v<std::remove_const_t<decltype(map)>, EigenMap<const T>>);
  static_assert(!std::is_assignable_v<decltype(map(0, 0)), T>, "a const view maps read-only");
  static_assert(std::is_assignable_v<decltype(std::declval<EigenMap<T>&>()(0, 0)), T>);
  EXPECT_EQ(map.data(), buffer.data());
  expect_same_elements(view, map);
}

TEST(EigenBridgeTest, AsEigenOfEmptyView) {
  const TensorView<float, 2> empty(nullptr, {0, 3});
  const EigenMap<float> map = as_eigen(empty);
  EXPECT_EQ(map.rows(), 0);
  EXPECT_EQ(map.cols(), 3);
  EXPECT_EQ(map.size(), 0);
}

// as_view

TYPED_TEST(EigenBridgeTypedTest, AsViewOfColumnMajorMatrix) {
  using T = TypeParam;
  ColMajorMatrix<T> matrix(3, 4);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j) matrix(i, j) = static_cast<T>(10 * i + j);
  const auto view = as_view(matrix);
  static_assert(std::is_same_v<std::remove_const_t<decltype(view)>, TensorView<T, 2>>);
  EXPECT_EQ(view.data(), matrix.data());
  EXPECT_EQ(view.shape(), (std::array<index_t, 2>{3, 4}));
  EXPECT_EQ(view.strides(), (std::array<index_t, 2>{1, 3}));
  EXPECT_FALSE(view.is_contiguous());
  expect_same_elements(view, matrix);

  view(2, 1) = T(-5);
  EXPECT_EQ(matrix(2, 1), T(-5));
}

TYPED_TEST(EigenBridgeTypedTest, AsViewOfRowMajorMatrix) {
  using T = TypeParam;
  RowMajorMatrix<T> matrix(3, 4);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j) matrix(i, j) = static_cast<T>(10 * i + j);
  const TensorView<T, 2> view = as_view(matrix);
  EXPECT_EQ(view.data(), matrix.data());
  EXPECT_EQ(view.shape(), (std::array<index_t, 2>{3, 4}));
  EXPECT_EQ(view.strides(), (std::array<index_t, 2>{4, 1}));
  EXPECT_TRUE(view.is_contiguous());
  expect_same_elements(view, matrix);
  view(0, 3) = T(77);
  EXPECT_EQ(matrix(0, 3), T(77));
}

TYPED_TEST(EigenBridgeTypedTest, AsViewOfBlock) {
  using T = TypeParam;
  ColMajorMatrix<T> matrix(4, 5);
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 5; ++j) matrix(i, j) = static_cast<T>(10 * i + j);
  const TensorView<T, 2> view = as_view(matrix.block(1, 2, 2, 3));
  EXPECT_EQ(view.data(), &matrix(1, 2));
  EXPECT_EQ(view.shape(), (std::array<index_t, 2>{2, 3}));
  EXPECT_EQ(view.strides(), (std::array<index_t, 2>{1, 4}));
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 3; ++j) EXPECT_EQ(view(i, j), static_cast<T>(10 * (i + 1) + (j + 2)));
  view(1, 0) = T(-9);
  EXPECT_EQ(matrix(2, 2), T(-9));

  // A block of a row-major matrix, and a single column.
  RowMajorMatrix<T> row_major = matrix;
  const TensorView<T, 2> row_block = as_view(row_major.block(2, 1, 2, 2));
  EXPECT_EQ(row_block.strides(), (std::array<index_t, 2>{5, 1}));
  EXPECT_EQ(row_block(1, 1), row_major(3, 2));
  const TensorView<T, 2> column = as_view(matrix.col(3));
  EXPECT_EQ(column.shape(), (std::array<index_t, 2>{4, 1}));
  EXPECT_EQ(column(2, 0), matrix(2, 3));
}

TYPED_TEST(EigenBridgeTypedTest, AsViewOfStridedMap) {
  using T = TypeParam;
  auto buffer = iota_buffer<T>(32);
  // Column-major 3 x 2 with inner stride 2 and outer stride 8: (i, j) at 2i + 8j.
  using Strides = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  Eigen::Map<ColMajorMatrix<T>, Eigen::Unaligned, Strides> map(buffer.data() + 1, 3, 2,
                                                               Strides(8, 2));
  const TensorView<T, 2> view = as_view(map);
  EXPECT_EQ(view.data(), buffer.data() + 1);
  EXPECT_EQ(view.shape(), (std::array<index_t, 2>{3, 2}));
  EXPECT_EQ(view.strides(), (std::array<index_t, 2>{2, 8}));
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 2; ++j) EXPECT_EQ(view(i, j), static_cast<T>(1 + 2 * i + 8 * j));
  expect_same_elements(view, map);

  // OuterStride only, row-major.
  Eigen::Map<RowMajorMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>> rows(
      buffer.data(), 4, 3, Eigen::OuterStride<>(5));
  const TensorView<T, 2> row_view = as_view(rows);
  EXPECT_EQ(row_view.strides(), (std::array<index_t, 2>{5, 1}));
  EXPECT_EQ(row_view(3, 2), T(17));
}

TYPED_TEST(EigenBridgeTypedTest, AsViewOfConstMatrixIsConst) {
  using T = TypeParam;
  ColMajorMatrix<T> storage(2, 3);
  storage << 1, 2, 3, 4, 5, 6;
  const ColMajorMatrix<T>& matrix = storage;
  const auto view = as_view(matrix);
  static_assert(std::is_same_v<std::remove_const_t<decltype(view)>, TensorView<const T, 2>>);
  EXPECT_EQ(view.data(), storage.data());
  EXPECT_EQ(view(1, 2), T(6));
  EXPECT_EQ(view(0, 1), T(2));

  const auto block_view = as_view(matrix.block(0, 1, 2, 2));
  static_assert(std::is_same_v<std::remove_const_t<decltype(block_view)>, TensorView<const T, 2>>);
  EXPECT_EQ(block_view(1, 1), T(6));

  const Eigen::Map<const RowMajorMatrix<T>> const_map(storage.data(), 3, 2);
  const auto map_view = as_view(const_map);
  static_assert(std::is_same_v<std::remove_const_t<decltype(map_view)>, TensorView<const T, 2>>);
  EXPECT_EQ(map_view.strides(), (std::array<index_t, 2>{2, 1}));
}

TEST(EigenBridgeTest, AsViewOfNegativeStrideMapThrowsInformatively) {
  // Eigen maps may have negative strides; TensorView has none, so the bridge must refuse.
  std::vector<float> buffer = {0, 1, 2, 3, 4, 5};
  using Strides = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  Eigen::Map<RowMajorMatrix<float>, Eigen::Unaligned, Strides> reversed(buffer.data() + 3, 2, 3,
                                                                        Strides(-3, 1));
  ASSERT_EQ(reversed(1, 0), 0.0f);
  const std::string message = shape_error_message([&] { (void)as_view(reversed); });
  EXPECT_TRUE(contains(message, "dimension 0")) << message;
  EXPECT_TRUE(contains(message, "expected a stride >= 0")) << message;
  EXPECT_TRUE(contains(message, "got -3")) << message;
}

// Round trips

TYPED_TEST(EigenBridgeTypedTest, RoundTripViewToEigenToView) {
  using T = TypeParam;
  auto buffer = iota_buffer<T>(5 * 9);
  const TensorView<T, 2> base(buffer.data(), {5, 9});
  const std::array<TensorView<T, 2>, 5> views = {
      base,
      base.transpose(0, 1),
      base.slice(0, 1, 5, 2).slice(1, 2, 9, 3),
      base.slice(0, 2, 3).broadcast(0, 4),
      base.slice(1, 4, 5).broadcast(1, 3),
  };
  for (const auto& view : views) {
    const TensorView<T, 2> back = as_view(as_eigen(view));
    EXPECT_EQ(back.data(), view.data());
    EXPECT_EQ(back.shape(), view.shape());
    EXPECT_EQ(back.strides(), view.strides());
    const TensorView<const T, 2> const_back = as_view(as_eigen(TensorView<const T, 2>(view)));
    EXPECT_EQ(const_back.data(), view.data());
    EXPECT_EQ(const_back.strides(), view.strides());
  }
}

TYPED_TEST(EigenBridgeTypedTest, RoundTripEigenToViewToEigen) {
  using T = TypeParam;
  ColMajorMatrix<T> matrix(3, 5);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 5; ++j) matrix(i, j) = static_cast<T>(i - 2 * j);
  EigenMap<T> map = as_eigen(as_view(matrix));
  EXPECT_EQ(map.data(), matrix.data());
  EXPECT_EQ(ColMajorMatrix<T>(map), matrix);
  map(2, 4) = T(1000);
  EXPECT_EQ(matrix(2, 4), T(1000));
}

// GEMM through maps

/// C = A · Bᵀ with A [M, K] and B [N, K], accumulated in double.
template <class T>
std::vector<double> naive_a_bt(TensorView<const T, 2> a, TensorView<const T, 2> b) {
  std::vector<double> c(static_cast<std::size_t>(a.extent(0) * b.extent(0)));
  for (index_t i = 0; i < a.extent(0); ++i)
    for (index_t j = 0; j < b.extent(0); ++j) {
      double sum = 0;
      for (index_t k = 0; k < a.extent(1); ++k)
        sum += static_cast<double>(a(i, k)) * static_cast<double>(b(j, k));
      c[static_cast<std::size_t>(i * b.extent(0) + j)] = sum;
    }
  return c;
}

/// Fills with multiples of 1/8 in [-2, 2): every product is a multiple of 1/64 below 4 in
/// magnitude and every partial sum over K <= 64 terms stays below 2^8, so float and double
/// represent all of them exactly. Any summation order (Eigen's blocking, FMA or not) then
/// gives the exact result, and the comparison can be exact.
template <class T>
void fill_dyadic(TensorView<T, 2> view, int salt) {
  for (index_t i = 0; i < view.extent(0); ++i)
    for (index_t j = 0; j < view.extent(1); ++j)
      view(i, j) = static_cast<T>(((i * 7 + j * 3 + salt) % 32) - 16) / T(8);
}

TYPED_TEST(EigenBridgeTypedTest, GemmThroughMapsMatchesNaiveLoop) {
  using T = TypeParam;
  // Small sizes take Eigen's lazy (coefficient-based) product, larger ones its blocked GEMM.
  const std::array<std::array<index_t, 3>, 4> sizes = {
      {{1, 1, 1}, {5, 7, 6}, {17, 33, 19}, {48, 64, 40}}};
  for (const auto& [M, K, N] : sizes) {
    SCOPED_TRACE(::testing::Message() << "M=" << M << " K=" << K << " N=" << N);
    Tensor<T, 2> a({M, K});
    Tensor<T, 2> b({N, K});
    Tensor<T, 2> c({M, N}, T(12345));  // garbage that .noalias() must overwrite
    fill_dyadic<T>(a, 1);
    fill_dyadic<T>(b, 5);
    as_eigen(c.view()).noalias() = as_eigen(a.view()) * as_eigen(b.view()).transpose();
    const auto expected = naive_a_bt<T>(a, b);
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j)
        ASSERT_EQ(static_cast<double>(c(i, j)), expected[static_cast<std::size_t>(i * N + j)])
            << "(" << i << ", " << j << ")";
  }
}

TYPED_TEST(EigenBridgeTypedTest, GemmThroughStridedMapsWritesIntoASlice) {
  using T = TypeParam;
  constexpr index_t M = 9, K = 13, N = 11;
  // Bᵀ given as a transposed view of a [K, N] buffer; the output is every other row of a
  // larger buffer, whose other rows must stay untouched.
  Tensor<T, 2> a({M, K});
  Tensor<T, 2> b_kn({K, N});
  Tensor<T, 2> out({2 * M, N}, T(-1));
  fill_dyadic<T>(a, 2);
  fill_dyadic<T>(b_kn, 9);
  const TensorView<const T, 2> b = b_kn.view().transpose(0, 1);  // [N, K], strides [1, N]
  const TensorView<T, 2> c = out.view().slice(0, 0, 2 * M, 2);
  as_eigen(c).noalias() = as_eigen(TensorView<const T, 2>(a)) * as_eigen(b).transpose();
  const auto expected = naive_a_bt<T>(a, b);
  for (index_t i = 0; i < M; ++i)
    for (index_t j = 0; j < N; ++j) {
      ASSERT_EQ(static_cast<double>(out(2 * i, j)), expected[static_cast<std::size_t>(i * N + j)])
          << "(" << i << ", " << j << ")";
      ASSERT_EQ(out(2 * i + 1, j), T(-1)) << "row " << 2 * i + 1 << " was written";
    }
}

}  // namespace
