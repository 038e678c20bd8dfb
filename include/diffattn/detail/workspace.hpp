#pragma once
/// Scratch memory and thread-count plumbing for the fused kernels.

#include <algorithm>
#include <cstddef>
#include <limits>
#include <new>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "diffattn/tensor.hpp"

namespace diffattn {
namespace detail {

/// Size arithmetic for plans and scratch: a product or sum of non-negative sizes that would
/// overflow index_t saturates at its largest value, which no workspace limit admits
/// (fits_in) and no scratch array allocates (ScratchArray::reserve throws).
inline constexpr index_t saturated_size = std::numeric_limits<index_t>::max();

inline index_t size_mul(index_t a, index_t b) {
  if (a != 0 && b > saturated_size / a) return saturated_size;
  return a * b;
}
template <class... Rest>
index_t size_mul(index_t a, index_t b, Rest... rest) {
  return size_mul(size_mul(a, b), rest...);
}
inline index_t size_add(index_t a, index_t b) { return b > saturated_size - a ? saturated_size : a + b; }
template <class... Rest>
index_t size_add(index_t a, index_t b, Rest... rest) {
  return size_add(size_add(a, b), rest...);
}

/// Bytes of `count` elements of T, saturated.
template <class T>
index_t size_bytes(index_t count) {
  return size_mul(count, static_cast<index_t>(sizeof(T)));
}

/// Whether `bytes` (from the size arithmetic above) fits under `limit`.
inline bool fits_in(index_t bytes, std::size_t limit) {
  return bytes != saturated_size && static_cast<std::size_t>(bytes) <= limit;
}

/// An array aligned as Tensor's storage (allocate_aligned), sized once before the
/// parallel region so the kernels never allocate while they run, and not zero-filled.
template <class T>
class ScratchArray {
 public:
  ScratchArray() = default;
  ScratchArray(const ScratchArray&) = delete;
  ScratchArray& operator=(const ScratchArray&) = delete;
  ScratchArray(ScratchArray&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  ScratchArray& operator=(ScratchArray&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  ~ScratchArray() { release(); }

  void reserve(index_t count) {
    if (count <= size_) return;
    if (count >= saturated_size / static_cast<index_t>(sizeof(T))) {
      throw_shape_error("the scratch memory this problem needs (", count,
                        " elements) overflows std::ptrdiff_t");
    }
    release();
    data_ = allocate_aligned<T>(count);  // Tensor's storage, not zero-filled
    size_ = count;
  }
  T* data() const noexcept { return data_; }
  index_t size() const noexcept { return size_; }

 private:
  void release() noexcept {
    deallocate_aligned(data_);
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  index_t size_ = 0;
};

/// Threads the kernels may use: `requested` (0 = all cores) capped by the work items.
/// Always 1 when the consumer does not compile with OpenMP.
inline int resolve_threads(int requested, index_t work_items) {
#if defined(_OPENMP)
  const int available = requested > 0 ? requested : omp_get_max_threads();
#else
  const int available = 1;
  (void)requested;
#endif
  return static_cast<int>(std::max<index_t>(1, std::min<index_t>(available, work_items)));
}

inline int current_thread() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace detail
}  // namespace diffattn
