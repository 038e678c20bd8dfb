#pragma once
/// Scratch memory and thread-count plumbing for the fused kernels.

#include <algorithm>
#include <cstddef>
#include <new>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "diffattn/tensor.hpp"

namespace diffattn {
namespace detail {

/// A 64-byte aligned array that is sized once, before the parallel region, so the
/// kernels never allocate while they run.
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
    release();
    data_ = static_cast<T*>(::operator new(static_cast<std::size_t>(count) * sizeof(T),
                                           std::align_val_t{64}));
    size_ = count;
  }
  T* data() const noexcept { return data_; }
  index_t size() const noexcept { return size_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t{64});
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
