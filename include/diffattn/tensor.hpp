#pragma once
/// \file
/// TensorView (non-owning, strided, mdspan-like) and Tensor (owning, 64-byte aligned).

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "diffattn/errors.hpp"

namespace diffattn {

/// Signed index type for extents, strides and indices (as Eigen::Index).
using index_t = std::ptrdiff_t;

namespace detail {

/// Row-major strides of `shape`. A product past index_t saturates rather than overflow:
/// only an empty shape (or one its constructor rejects) can reach that, and an empty view
/// never uses its strides.
template <std::size_t Rank>
constexpr std::array<index_t, Rank> row_major_strides(const std::array<index_t, Rank>& shape) {
  constexpr index_t max = std::numeric_limits<index_t>::max();
  std::array<index_t, Rank> strides{};
  index_t running = 1;
  for (std::size_t d = Rank; d-- > 0;) {
    strides[d] = running;
    if (shape[d] <= 0) {
      running = 0;
    } else if (running > max / shape[d]) {
      running = max;
    } else {
      running *= shape[d];
    }
  }
  return strides;
}

/// Product of extents; throws if it would overflow index_t.
template <std::size_t Rank>
index_t checked_element_count(const std::array<index_t, Rank>& shape) {
  for (std::size_t d = 0; d < Rank; ++d) {
    if (shape[d] < 0) {
      throw_shape_error("tensor dimension ", d, ": expected an extent >= 0, got ", shape[d]);
    }
  }
  // Any extent 0 makes an empty shape, however large the product of the others.
  if (std::find(shape.begin(), shape.end(), index_t{0}) != shape.end()) return 0;
  index_t count = 1;
  for (std::size_t d = 0; d < Rank; ++d) {
    if (count > std::numeric_limits<index_t>::max() / shape[d]) {
      throw_shape_error("tensor shape: element count overflows std::ptrdiff_t");
    }
    count *= shape[d];
  }
  return count;
}

/// The largest element offset Σ (extent − 1)·stride of a non-empty view; throws
/// shape_error when it, or its size in bytes, overflows std::ptrdiff_t (such a view could
/// not address its elements with pointer arithmetic).
template <std::size_t Rank>
index_t checked_max_offset(const std::array<index_t, Rank>& shape, const std::array<index_t, Rank>& strides,
                           std::size_t element_bytes) {
  constexpr index_t max = std::numeric_limits<index_t>::max();
  index_t offset = 0;
  for (std::size_t d = 0; d < Rank; ++d) {
    if (shape[d] == 0) return 0;
  }
  for (std::size_t d = 0; d < Rank; ++d) {
    const index_t steps = shape[d] - 1;
    if (steps != 0 && strides[d] > (max - offset) / steps) {
      throw_shape_error("TensorView dimension ", d, ": extent ", shape[d], " x stride ", strides[d],
                        " reaches past the largest offset std::ptrdiff_t can hold");
    }
    offset += steps * strides[d];
  }
  if (offset > max / static_cast<index_t>(element_bytes)) {
    throw_shape_error("TensorView: the largest element offset, ", offset, ", is more bytes than std::ptrdiff_t can hold");
  }
  return offset;
}

/// Storage alignment of Tensor and of the kernels' scratch: a cache line, and a full
/// AVX-512 register.
inline constexpr std::size_t storage_alignment = 64;

/// Uninitialized storage for `count` elements of T, aligned to storage_alignment; null
/// for 0. std::bad_alloc when it cannot be allocated (or its bytes overflow std::size_t).
template <class T>
T* allocate_aligned(index_t count) {
  if (count == 0) return nullptr;
  if (static_cast<std::size_t>(count) > std::numeric_limits<std::size_t>::max() / sizeof(T)) {
    throw std::bad_alloc();
  }
  return static_cast<T*>(::operator new(static_cast<std::size_t>(count) * sizeof(T),
                                        std::align_val_t{storage_alignment}));
}

/// Frees what allocate_aligned returned (null is fine).
template <class T>
void deallocate_aligned(T* data) noexcept {
  if (data != nullptr) ::operator delete(data, std::align_val_t{storage_alignment});
}

}  // namespace detail

/// A non-owning strided view of a Rank-dimensional array, in the spirit of mdspan
/// with layout_stride. Extents and strides are in elements; strides are >= 0 (0
/// broadcasts). Trivially copyable: pass by value. Copying a view never copies data.
template <class T, std::size_t Rank>
class TensorView {
  static_assert(Rank >= 1, "TensorView needs rank >= 1");

 public:
  /// The element type, const for a read-only view.
  using element_type = T;
  /// The element type without const.
  using value_type = std::remove_cv_t<T>;
  /// Extents or strides, one per dimension.
  using shape_type = std::array<index_t, Rank>;
  /// Number of dimensions.
  static constexpr std::size_t rank = Rank;

  /// An empty view: null data, every extent 0.
  constexpr TensorView() noexcept = default;

  /// A row-major contiguous view of `shape`.
  TensorView(T* data, shape_type shape) : TensorView(data, shape, detail::row_major_strides(shape)) {}

  /// A view with explicit strides (in elements, each >= 0). Throws shape_error for a
  /// negative extent or stride, an element count or a largest offset (in bytes) that
  /// overflows std::ptrdiff_t, or null data with elements.
  TensorView(T* data, shape_type shape, shape_type strides)
      : data_(data), shape_(shape), strides_(strides) {
    const index_t count = detail::checked_element_count(shape_);
    for (std::size_t d = 0; d < Rank; ++d) {
      if (strides_[d] < 0) {
        detail::throw_shape_error("TensorView dimension ", d, ": expected a stride >= 0, got ",
                                  strides_[d]);
      }
    }
    if (data_ == nullptr && count != 0) {
      detail::throw_shape_error("TensorView: null data pointer for a view of ", count,
                                " elements");
    }
    detail::checked_max_offset(shape_, strides_, sizeof(T));
  }

  /// TensorView<const T, R> from TensorView<T, R>.
  template <class U,
            std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>, int> = 0>
  constexpr TensorView(const TensorView<U, Rank>& other) noexcept  // NOLINT(implicit)
      : data_(other.data()), shape_(other.shape()), strides_(other.strides()) {}

  /// Pointer to element (0, ..., 0); null for a default-constructed view.
  constexpr T* data() const noexcept { return data_; }
  /// The extents, one per dimension.
  constexpr const shape_type& shape() const noexcept { return shape_; }
  /// The strides in elements, one per dimension.
  constexpr const shape_type& strides() const noexcept { return strides_; }
  /// Extent of dimension `dim` (< Rank, unchecked).
  constexpr index_t extent(std::size_t dim) const noexcept { return shape_[dim]; }
  /// Stride of dimension `dim` in elements (< Rank, unchecked).
  constexpr index_t stride(std::size_t dim) const noexcept { return strides_[dim]; }

  /// Number of elements (product of extents). An empty view's other extents may multiply
  /// past index_t, so a 0 anywhere is looked for first.
  constexpr index_t size() const noexcept {
    if (empty()) return 0;
    index_t count = 1;
    for (index_t e : shape_) count *= e;
    return count;
  }
  /// True when some extent is 0 (the view has no elements).
  constexpr bool empty() const noexcept {
    for (index_t e : shape_) {
      if (e == 0) return true;
    }
    return false;
  }

  /// True when the elements are laid out row-major with no gaps (extent-1 dimensions
  /// may have any stride).
  constexpr bool is_contiguous() const noexcept {
    if (empty()) return true;
    index_t expected = 1;
    for (std::size_t d = Rank; d-- > 0;) {
      if (shape_[d] != 1 && strides_[d] != expected) return false;
      expected *= shape_[d];
    }
    return true;
  }

  /// Unchecked element access; use at() for a bounds-checked one.
  template <class... Indices>
  constexpr T& operator()(Indices... indices) const noexcept {
    static_assert(sizeof...(Indices) == Rank, "operator() needs one index per dimension");
    static_assert((std::is_integral_v<Indices> && ...), "indices must be integers");
    const index_t idx[Rank] = {static_cast<index_t>(indices)...};
    index_t offset = 0;
    for (std::size_t d = 0; d < Rank; ++d) offset += idx[d] * strides_[d];
    return data_[offset];
  }

  /// Bounds-checked element access; throws std::out_of_range.
  T& at(const shape_type& index) const {
    index_t offset = 0;
    for (std::size_t d = 0; d < Rank; ++d) {
      if (index[d] < 0 || index[d] >= shape_[d]) {
        throw std::out_of_range(detail::concat("diffattn: TensorView::at: index ", index[d],
                                               " out of range [0, ", shape_[d],
                                               ") in dimension ", d));
      }
      offset += index[d] * strides_[d];
    }
    return data_[offset];
  }

  /// Fixes dimension `dim` at `index`, dropping that dimension.
  TensorView<T, Rank - 1> select(std::size_t dim, index_t index) const {
    static_assert(Rank >= 2, "select() on a rank-1 view would give rank 0");
    check_dim("select", dim);
    if (index < 0 || index >= shape_[dim]) {
      detail::throw_shape_error("TensorView::select: index ", index, " out of range [0, ",
                                shape_[dim], ") in dimension ", dim);
    }
    std::array<index_t, Rank - 1> shape{}, strides{};
    for (std::size_t d = 0, o = 0; d < Rank; ++d) {
      if (d == dim) continue;
      shape[o] = shape_[d];
      strides[o] = strides_[d];
      ++o;
    }
    // An empty view may have no storage (null data) to offset into.
    return TensorView<T, Rank - 1>(empty() ? data_ : data_ + index * strides_[dim], shape, strides);
  }

  /// Keeps indices begin, begin+step, ... < end of dimension `dim`.
  TensorView slice(std::size_t dim, index_t begin, index_t end, index_t step = 1) const {
    check_dim("slice", dim);
    if (begin < 0 || end < begin || end > shape_[dim] || step < 1) {
      detail::throw_shape_error("TensorView::slice: range [", begin, ", ", end, ") step ", step,
                                " does not fit dimension ", dim, " of extent ", shape_[dim]);
    }
    TensorView result = *this;
    // Written so that a huge step cannot overflow: with one index left (or an empty
    // view, whose strides are unbounded) the stride is never used, and with more,
    // stride·step·(extent − 1) stays within this view's span.
    result.shape_[dim] = end == begin ? 0 : 1 + (end - begin - 1) / step;
    result.strides_[dim] = result.shape_[dim] > 1 && !empty() ? strides_[dim] * step : strides_[dim];
    if (!result.empty()) result.data_ = data_ + begin * strides_[dim];
    return result;
  }

  /// Reorders dimensions: dimension i of the result is dimension order[i] of this view.
  TensorView permute(const std::array<std::size_t, Rank>& order) const {
    std::array<bool, Rank> seen{};
    TensorView result = *this;
    for (std::size_t i = 0; i < Rank; ++i) {
      if (order[i] >= Rank || seen[order[i]]) {
        detail::throw_shape_error("TensorView::permute: order is not a permutation of 0..",
                                  Rank - 1, " (entry ", i, " is ", order[i], ")");
      }
      seen[order[i]] = true;
      result.shape_[i] = shape_[order[i]];
      result.strides_[i] = strides_[order[i]];
    }
    return result;
  }

  /// Swaps two dimensions.
  TensorView transpose(std::size_t a, std::size_t b) const {
    check_dim("transpose", a);
    check_dim("transpose", b);
    TensorView result = *this;
    std::swap(result.shape_[a], result.shape_[b]);
    std::swap(result.strides_[a], result.strides_[b]);
    return result;
  }

  /// Splits dimension `dim` (extent outer*inner) into two: [.., outer, inner, ..].
  /// E.g. [B, N, 2H, d].split(2, H, 2) is [B, N, H, 2, d].
  TensorView<T, Rank + 1> split(std::size_t dim, index_t outer, index_t inner) const {
    check_dim("split", dim);
    // outer · inner == extent, tested by division so that it cannot overflow.
    const bool fits = inner == 0 ? shape_[dim] == 0
                                 : shape_[dim] % inner == 0 && shape_[dim] / inner == outer;
    if (outer < 0 || inner < 0 || !fits) {
      detail::throw_shape_error("TensorView::split: dimension ", dim, " has extent ", shape_[dim],
                                ", which is not ", outer, " x ", inner);
    }
    std::array<index_t, Rank + 1> shape{}, strides{};
    for (std::size_t d = 0, o = 0; d < Rank; ++d) {
      if (d == dim) {
        // With one outer index, or none at all, its stride is never used (and stride·inner
        // may overflow: an empty view's strides are unbounded).
        shape[o] = outer;
        strides[o++] = outer > 1 && !empty() ? strides_[d] * inner : 0;
        shape[o] = inner;
        strides[o++] = strides_[d];
      } else {
        shape[o] = shape_[d];
        strides[o++] = strides_[d];
      }
    }
    return TensorView<T, Rank + 1>(data_, shape, strides);
  }

  /// A row-major view of the same elements with another shape; this view must be
  /// contiguous and the element counts must match.
  template <std::size_t NewRank>
  TensorView<T, NewRank> reshape(const std::array<index_t, NewRank>& shape) const {
    if (!is_contiguous()) {
      detail::throw_shape_error("TensorView::reshape: the view is not contiguous");
    }
    const index_t count = detail::checked_element_count(shape);
    if (count != size()) {
      detail::throw_shape_error("TensorView::reshape: expected a shape of ", size(),
                                " elements, got one of ", count);
    }
    return TensorView<T, NewRank>(data_, shape);
  }

  /// Repeats an extent-1 dimension `extent` times with stride 0.
  TensorView broadcast(std::size_t dim, index_t extent) const {
    check_dim("broadcast", dim);
    if (shape_[dim] != 1 || extent < 0) {
      detail::throw_shape_error("TensorView::broadcast: dimension ", dim, " has extent ",
                                shape_[dim], " (expected 1), target extent ", extent);
    }
    TensorView result = *this;
    result.shape_[dim] = extent;
    result.strides_[dim] = 0;
    detail::checked_element_count(result.shape_);
    return result;
  }

 private:
  static void check_dim(const char* what, std::size_t dim) {
    if (dim >= Rank) {
      detail::throw_shape_error("TensorView::", what, ": dimension ", dim,
                                " out of range for rank ", Rank);
    }
  }

  T* data_ = nullptr;
  shape_type shape_{};
  shape_type strides_{};
};

/// An owning, row-major, zero-initialized tensor whose storage is 64-byte aligned
/// (a cache line, and a full AVX-512 register).
template <class T, std::size_t Rank>
class Tensor {
  static_assert(std::is_trivially_copyable_v<T> && std::is_default_constructible_v<T>,
                "Tensor holds trivially copyable elements");

 public:
  /// The element type.
  using value_type = T;
  /// Extents, one per dimension.
  using shape_type = std::array<index_t, Rank>;
  /// Number of dimensions.
  static constexpr std::size_t rank = Rank;
  /// Alignment of the storage in bytes.
  static constexpr std::size_t alignment = detail::storage_alignment;

  /// An empty tensor: every extent 0, no storage.
  Tensor() = default;
  /// A tensor of `shape`, zero-filled. Throws shape_error for a negative extent or an
  /// element count that overflows, std::bad_alloc when the storage cannot be allocated.
  explicit Tensor(const shape_type& shape)
      : shape_(shape), size_(detail::checked_element_count(shape)), data_(allocate(size_)) {
    std::fill_n(data_, size_, T{});
  }
  /// A tensor of `shape` with every element set to `value`.
  Tensor(const shape_type& shape, const T& value) : Tensor(shape) { std::fill_n(data_, size_, value); }

  /// A deep copy: new storage with the same shape and elements.
  Tensor(const Tensor& other) : shape_(other.shape_), size_(other.size_), data_(allocate(size_)) {
    if (size_ > 0) std::memcpy(data_, other.data_, static_cast<std::size_t>(size_) * sizeof(T));
  }
  /// Takes `other`'s storage; `other` is left empty.
  Tensor(Tensor&& other) noexcept
      : shape_(std::exchange(other.shape_, shape_type{})),
        size_(std::exchange(other.size_, 0)),
        data_(std::exchange(other.data_, nullptr)) {}
  /// Copy or move assignment (a deep copy when `other` is an lvalue).
  Tensor& operator=(Tensor other) noexcept {
    swap(other);
    return *this;
  }
  ~Tensor() { deallocate(data_); }

  /// Exchanges storage and shape with `other`, without copying elements.
  void swap(Tensor& other) noexcept {
    std::swap(shape_, other.shape_);
    std::swap(size_, other.size_);
    std::swap(data_, other.data_);
  }

  /// A row-major contiguous view of the whole tensor.
  TensorView<T, Rank> view() noexcept { return TensorView<T, Rank>(data_, shape_); }
  /// A read-only row-major contiguous view of the whole tensor.
  TensorView<const T, Rank> view() const noexcept { return TensorView<const T, Rank>(data_, shape_); }

  /// Converts to view(), so a Tensor can be passed where a TensorView is taken.
  operator TensorView<T, Rank>() & noexcept { return view(); }  // NOLINT(implicit)
  /// Converts to the read-only view().
  operator TensorView<const T, Rank>() const& noexcept { return view(); }  // NOLINT(implicit)
  // A view of a temporary would dangle.
  operator TensorView<T, Rank>() && = delete;
  operator TensorView<const T, Rank>() const&& = delete;

  /// Pointer to the first element (64-byte aligned); null when the tensor is empty.
  T* data() noexcept { return data_; }
  /// Read-only pointer to the first element; null when the tensor is empty.
  const T* data() const noexcept { return data_; }
  /// The extents, one per dimension.
  const shape_type& shape() const noexcept { return shape_; }
  /// Extent of dimension `dim` (< Rank, unchecked).
  index_t extent(std::size_t dim) const noexcept { return shape_[dim]; }
  /// Number of elements (product of extents).
  index_t size() const noexcept { return size_; }
  /// True when the tensor has no elements.
  bool empty() const noexcept { return size_ == 0; }

  /// Unchecked element access, one index per dimension.
  template <class... Indices>
  T& operator()(Indices... indices) noexcept {
    return view()(indices...);
  }
  /// Unchecked read-only element access, one index per dimension.
  template <class... Indices>
  const T& operator()(Indices... indices) const noexcept {
    return view()(indices...);
  }

 private:
  static T* allocate(index_t count) { return detail::allocate_aligned<T>(count); }
  static void deallocate(T* data) noexcept { detail::deallocate_aligned(data); }

  shape_type shape_{};
  index_t size_ = 0;
  T* data_ = nullptr;
};

}  // namespace diffattn
