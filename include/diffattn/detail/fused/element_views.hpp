#pragma once
/// The element types of a fused call's tensors. The kernels compute in T (float or
/// double); with float, q, k/v and out may each hold float, bf16 or f16 instead. Each
/// tensor's type is chosen at run time, so one instantiation of the kernel core serves
/// every combination; the type is looked at once per packed tile or per kernel call
/// (ElementView::visit), never per element.

#include <type_traits>

#include "diffattn/half.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {
namespace detail {

/// Which type a tensor of a call with compute type T holds.
enum class Element { compute, bf16, f16 };

/// A rank-4 view of T, bf16 or f16 elements (the latter two only for T = float),
/// read-only unless Writable.
template <class T, bool Writable = false>
class ElementView {
  template <class E>
  using view_of = TensorView<std::conditional_t<Writable, E, const E>, 4>;

 public:
  ElementView() = default;
  ElementView(view_of<T> v) : compute_(v) {}  // NOLINT(implicit)
  // Half-precision views: for T = float only (the callers' static checks see to it).
  ElementView(view_of<bf16> v) : bf16_(v), element_(Element::bf16) {}  // NOLINT(implicit)
  ElementView(view_of<f16> v) : f16_(v), element_(Element::f16) {}     // NOLINT(implicit)

  Element element() const { return element_; }
  /// Calls f with the typed view and returns what it returns (the same type for every E).
  /// A double call is all-double: f sees its compute view only.
  template <class F>
  decltype(auto) visit(F&& f) const {
    if constexpr (std::is_same_v<T, float>) {
      if (element_ == Element::bf16) return f(bf16_);
      if (element_ == Element::f16) return f(f16_);
    }
    return f(compute_);
  }
  /// The view when it holds T (element() == Element::compute).
  view_of<T> compute_view() const { return compute_; }
  index_t extent(std::size_t d) const {
    return visit([d](const auto& v) { return v.extent(d); });
  }
  index_t stride(std::size_t d) const {
    return visit([d](const auto& v) { return v.stride(d); });
  }
  const void* address() const {
    return visit([](const auto& v) { return static_cast<const void*>(v.data()); });
  }

 private:
  view_of<T> compute_{};
  view_of<bf16> bf16_{};
  view_of<f16> f16_{};
  Element element_ = Element::compute;
};

}  // namespace detail
}  // namespace diffattn
