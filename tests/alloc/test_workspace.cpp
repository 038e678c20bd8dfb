// Memory: the kernels' scratch stays within options.workspace_limit and far below an
// Nq×Nk score matrix, counted by replacing the global allocation functions. Its own
// executable, so the replacement does not touch the other tests.

#include <atomic>
#include <cstdlib>
#include <new>
#include <random>

#include "../helpers.hpp"

namespace {

std::atomic<bool> counting{false};
std::atomic<std::size_t> counted_bytes{0};
std::atomic<std::size_t> largest_allocation{0};

void* counted_allocate(std::size_t size, std::size_t alignment) {
  if (counting.load(std::memory_order_relaxed)) {
    counted_bytes += size;
    std::size_t seen = largest_allocation.load();
    while (size > seen && !largest_allocation.compare_exchange_weak(seen, size)) {
    }
  }
  const std::size_t rounded = (std::max<std::size_t>(size, 1) + alignment - 1) / alignment * alignment;
  void* p = alignment <= alignof(std::max_align_t) ? std::malloc(rounded) : std::aligned_alloc(alignment, rounded);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

// Every replaced operator new allocates with malloc/aligned_alloc, so free() is the
// matching release; GCC cannot see that pairing through gtest's `new`/`delete`.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) { return counted_allocate(size, alignof(std::max_align_t)); }
void* operator new[](std::size_t size) { return counted_allocate(size, alignof(std::max_align_t)); }
void* operator new(std::size_t size, std::align_val_t a) {
  return counted_allocate(size, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t size, std::align_val_t a) {
  return counted_allocate(size, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace diffattn_test {
namespace {

using diffattn::AttentionOptions;

struct AllocationCount {
  std::size_t total, largest;
};

/// Counts what `call` allocates, starting from no cached scratch.
template <class F>
AllocationCount count_allocations(F&& call) {
  diffattn::release_scratch();
  counted_bytes = 0;
  largest_allocation = 0;
  counting = true;
  call();
  counting = false;
  return {counted_bytes.load(), largest_allocation.load()};
}

// One head, Nk = 65536 keys, Nq = 64 queries: an Nq×Nk float matrix would be 16 MiB.
class LongSequence : public ::testing::Test {
 protected:
  static constexpr index_t q_len = 64, kv_len = 65536, head_dim = 16, value_dim = 32;
  std::mt19937_64 rng{2024};
  Tensor<float, 4> q1 = random_tensor<float, 4>({1, 1, q_len, head_dim}, rng);
  Tensor<float, 4> q2 = random_tensor<float, 4>({1, 1, q_len, head_dim}, rng);
  Tensor<float, 4> k = random_tensor<float, 4>({1, 1, kv_len, head_dim}, rng);
  Tensor<float, 4> v = random_tensor<float, 4>({1, 1, kv_len, value_dim}, rng);
  Tensor<float, 1> lambda{{1}, 0.6f};
  static constexpr std::size_t score_matrix_bytes = q_len * kv_len * sizeof(float);

  // The reference on a few query rows (non-causal, so any subset of rows is exact).
  void expect_matches_reference(const Tensor<float, 4>& out, bool diff) {
    const index_t rows[] = {0, 17, 63};
    for (index_t row : rows) {
      auto q1_row = copy_as<double>(q1.view().slice(2, row, row + 1));
      auto q2_row = copy_as<double>(q2.view().slice(2, row, row + 1));
      auto k_double = copy_as<double>(k.view());
      auto v_double = copy_as<double>(v.view());
      Tensor<double, 4> expected({1, 1, 1, value_dim});
      if (diff) {
        Tensor<double, 1> lambda_double({1}, 0.6f);
        diffattn::reference::diff_attention<double>(q1_row, q2_row, k_double, k_double, v_double,
                                                    lambda_double, expected);
      } else {
        diffattn::reference::softmax_attention<double>(q1_row, k_double, v_double, expected);
      }
      EXPECT_LE(max_abs_diff(out.view().slice(2, row, row + 1), expected.view()), 1e-5 * 1.6)
          << "row " << row;
    }
  }
};

TEST_F(LongSequence, StandardAllocatesOnlyTileScratch) {
  Tensor<float, 4> out({1, 1, q_len, value_dim});
  const auto count = count_allocations([&] { diffattn::softmax_attention<float>(q1, k, v, out); });
  // Tiles of 64 rows × 64 keys: well under 1 MiB, whatever the thread count.
  EXPECT_LT(count.total, std::size_t{1} << 20) << "total bytes";
  EXPECT_LT(count.total, score_matrix_bytes / 16);
  expect_matches_reference(out, false);
}

TEST_F(LongSequence, DiffTwoPassStaysWithinTheLimit) {
  for (std::size_t limit : {std::size_t{64} << 20, std::size_t{4} << 20}) {
    SCOPED_TRACE(limit);
    AttentionOptions<float> options;
    options.workspace_limit = limit;
    Tensor<float, 4> out({1, 1, q_len, value_dim});
    const auto count = count_allocations(
        [&] { diffattn::diff_attention<float>(q1, q2, k, k, v, lambda, out, options); });
    EXPECT_LE(count.total, limit);
    // Two score rows blocks of rows × Nk: never the whole Nq × Nk pair.
    EXPECT_LT(count.largest, 2 * score_matrix_bytes);
    expect_matches_reference(out, true);
  }
}

TEST_F(LongSequence, DiffStreamingWhenTheLimitIsTiny) {
  AttentionOptions<float> options;
  options.workspace_limit = std::size_t{256} << 10;  // below one row × Nk (256 KiB per map)
  Tensor<float, 4> out({1, 1, q_len, value_dim});
  const auto count = count_allocations(
      [&] { diffattn::diff_attention<float>(q1, q2, k, k, v, lambda, out, options); });
  EXPECT_LE(count.total, options.workspace_limit);
  expect_matches_reference(out, true);
}

TEST_F(LongSequence, ScratchIsReusedUntilReleased) {
  Tensor<float, 4> out({1, 1, q_len, value_dim});
  auto call = [&] { diffattn::diff_attention<float>(q1, q2, k, k, v, lambda, out); };
  const auto first = count_allocations(call);  // starts from released scratch
  EXPECT_GT(first.total, 0u);
  counted_bytes = 0;
  counting = true;
  call();
  counting = false;
  // Only the per-call list of thread workspaces, no scratch arrays.
  EXPECT_LT(counted_bytes.load(), std::size_t{4096});
}

}  // namespace
}  // namespace diffattn_test
