#pragma once
/// \file
/// Zero-copy bridges between 2-D TensorViews and Eigen matrices.

#include <type_traits>

#include <Eigen/Core>

#include "diffattn/tensor.hpp"

namespace diffattn {

/// Eigen::Map of a 2-D view with both strides dynamic; const-qualified when T is.
template <class T>
using EigenMap = Eigen::Map<
    std::conditional_t<std::is_const_v<T>,
                       const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic,
                                           Eigen::RowMajor>,
                       Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>,
    Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

/// A 2-D view [rows, cols] as an Eigen::Map, sharing its memory. Row-major map, so the
/// outer stride is the row stride and the inner stride the column stride.
template <class T>
EigenMap<T> as_eigen(TensorView<T, 2> view) {
  return EigenMap<T>(view.data(), view.extent(0), view.extent(1),
                     Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(view.stride(0), view.stride(1)));
}

/// An Eigen matrix, map, block or Ref with direct access as a 2-D view [rows, cols],
/// sharing its memory; row- or column-major. The view's element type is const when
/// the expression is read-only.
template <class Expr,
          class Plain = std::remove_cv_t<std::remove_reference_t<Expr>>,
          std::enable_if_t<std::is_base_of_v<Eigen::DenseBase<Plain>, Plain> &&
                               (Eigen::internal::traits<Plain>::Flags & Eigen::DirectAccessBit) != 0,
                           int> = 0>
auto as_view(Expr&& expr) {
  static_assert(!(std::is_rvalue_reference_v<Expr&&> &&
                  std::is_base_of_v<Eigen::PlainObjectBase<Plain>, Plain>),
                "as_view of a temporary matrix would dangle");
  using Scalar = std::remove_pointer_t<decltype(expr.data())>;
  return TensorView<Scalar, 2>(expr.data(), {expr.rows(), expr.cols()},
                               {expr.rowStride(), expr.colStride()});
}

}  // namespace diffattn
