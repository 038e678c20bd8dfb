// Unit tests for include/diffattn/kv_cache.hpp: appending, reading back, capacity and
// shape errors. The blocks' use of the cache is tested in test_blocks.cpp.

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>

#include "helpers.hpp"

namespace {

using diffattn_test::contains;

using diffattn::KVCache;
using diffattn_test::FloatTypes;
using diffattn_test::index_t;
using diffattn_test::max_abs_diff;
using diffattn_test::random_tensor;
using diffattn_test::Tensor;


template <class T>
class KVCacheTest : public ::testing::Test {};
TYPED_TEST_SUITE(KVCacheTest, FloatTypes);

TYPED_TEST(KVCacheTest, AppendsAndReadsBack) {
  using T = TypeParam;
  std::mt19937_64 rng(31);
  KVCache<T> cache(2, 6, 3, 4, 1, 8);
  EXPECT_EQ(cache.batch(), 2);
  EXPECT_EQ(cache.capacity(), 6);
  EXPECT_EQ(cache.key_heads(), 3);
  EXPECT_EQ(cache.key_dim(), 4);
  EXPECT_EQ(cache.value_heads(), 1);
  EXPECT_EQ(cache.value_dim(), 8);
  EXPECT_EQ(cache.length(), 0);
  EXPECT_EQ(cache.keys().extent(1), 0);

  const Tensor<T, 4> keys = random_tensor<T, 4>({2, 5, 3, 4}, rng);
  const Tensor<T, 4> values = random_tensor<T, 4>({2, 5, 1, 8}, rng);
  cache.append(keys.view().slice(1, 0, 2), values.view().slice(1, 0, 2));
  cache.append(keys.view().slice(1, 2, 3), values.view().slice(1, 2, 3));
  cache.append(keys.view().slice(1, 3, 5), values.view().slice(1, 3, 5));
  EXPECT_EQ(cache.length(), 5);
  EXPECT_EQ(cache.remaining(), 1);
  EXPECT_EQ(max_abs_diff(cache.keys(), keys.view()), 0.0);
  EXPECT_EQ(max_abs_diff(cache.values(), values.view()), 0.0);

  cache.clear();
  EXPECT_EQ(cache.length(), 0);
  EXPECT_EQ(cache.remaining(), 6);
}

TYPED_TEST(KVCacheTest, StoresEachHeadsRowsOneAfterAnother) {
  // Decoding streams a head's keys and values from memory: in kernel layout
  // [B, H, N, D] the cached rows must be adjacent, not heads × width apart.
  using T = TypeParam;
  std::mt19937_64 rng(33);
  KVCache<T> cache(2, 7, 3, 4, 2, 8);
  const Tensor<T, 4> keys = random_tensor<T, 4>({2, 5, 3, 4}, rng);
  const Tensor<T, 4> values = random_tensor<T, 4>({2, 5, 2, 8}, rng);
  cache.append(keys, values);
  const auto k = diffattn::bnhd_to_bhnd(cache.keys());
  const auto v = diffattn::bnhd_to_bhnd(cache.values());
  EXPECT_EQ(k.stride(3), 1);
  EXPECT_EQ(k.stride(2), 4);
  EXPECT_EQ(k.stride(1), 7 * 4);
  EXPECT_EQ(v.stride(2), 8);
  EXPECT_EQ(v.stride(1), 7 * 8);
  // And the rows are the ones appended.
  EXPECT_EQ(&k(1, 2, 4, 3) - &k(1, 2, 3, 0), 7);
  EXPECT_EQ(k(1, 2, 4, 3), keys(1, 4, 2, 3));
  EXPECT_EQ(v(0, 1, 3, 5), values(0, 3, 1, 5));
}

TYPED_TEST(KVCacheTest, AcceptsStridedInput) {
  using T = TypeParam;
  std::mt19937_64 rng(32);
  // Keys given as a permuted [B, H, N, D] buffer, as a kernel-layout producer would.
  const Tensor<T, 4> keys_bhnd = random_tensor<T, 4>({1, 2, 3, 4}, rng);
  const Tensor<T, 4> values = random_tensor<T, 4>({1, 3, 2, 4}, rng);
  KVCache<T> cache(1, 3, 2, 4, 2, 4);
  cache.append(diffattn::bhnd_to_bnhd(keys_bhnd.view()), values);
  EXPECT_EQ(max_abs_diff(cache.keys(), diffattn::bhnd_to_bnhd(keys_bhnd.view())), 0.0);
}

TEST(KVCacheErrors, OverflowThrowsAndKeepsTheCache) {
  KVCache<float> cache(1, 4, 1, 2, 1, 2);
  Tensor<float, 4> three({1, 3, 1, 2}, 1.0f), two({1, 2, 1, 2}, 2.0f);
  cache.append(three, three);
  try {
    cache.append(two, two);
    ADD_FAILURE() << "overflow accepted";
  } catch (const diffattn::shape_error& e) {
    EXPECT_TRUE(contains(e.what(), "KVCache::append")) << e.what();
    EXPECT_TRUE(contains(e.what(), "holds 3 of 4 tokens, so at most 1 more fit, got 2"))
        << e.what();
  }
  EXPECT_EQ(cache.length(), 3);
  EXPECT_EQ(cache.keys()(0, 2, 0, 1), 1.0f);
}

TEST(KVCacheErrors, ShapeMismatches) {
  KVCache<float> cache(2, 4, 2, 8, 1, 16);
  Tensor<float, 4> keys({2, 1, 2, 8}), values({2, 1, 1, 16});
  Tensor<float, 4> wrong_batch({1, 1, 2, 8}), wrong_width({2, 1, 2, 4}),
      wrong_tokens({2, 2, 1, 16});
  try {
    cache.append(wrong_width, values);
    ADD_FAILURE() << "wrong key width accepted";
  } catch (const diffattn::shape_error& e) {
    EXPECT_TRUE(contains(e.what(), "'keys' dimension 3 (width): expected 8, got 4")) << e.what();
  }
  EXPECT_THROW(cache.append(wrong_batch, values), diffattn::shape_error);
  EXPECT_THROW(cache.append(keys, wrong_tokens), diffattn::shape_error);
  EXPECT_EQ(cache.length(), 0);
  // Appending the cache's own storage back into it is refused, not silently garbled.
  cache.append(keys, values);
  EXPECT_THROW(cache.append(cache.keys(), cache.values()), diffattn::shape_error);
}

TEST(KVCacheErrors, NegativeExtents) {
  try {
    KVCache<double> cache(1, -1, 1, 1, 1, 1);
    ADD_FAILURE() << "negative capacity accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(contains(e.what(), "capacity must be >= 0, got -1")) << e.what();
  }
  EXPECT_THROW(KVCache<double>(1, 1, 1, 1, -2, 1), std::invalid_argument);
  // The value shape is checked before the (here 2.4 TB) key storage is allocated, which
  // threw std::bad_alloc first (found by the shape fuzzer).
  EXPECT_THROW(KVCache<float>(9, index_t{1} << 31, 8, 4, -(index_t{1} << 40), 7), std::invalid_argument);
}

// A cache of no sequences whose other extents multiply past std::ptrdiff_t: its storage
// is empty, and building and appending to it must not overflow strides or offsets.
TEST(KVCacheErrors, EmptyBatchWithHugeExtents) {
  const index_t huge = 3037000500;  // huge² > 2^63
  KVCache<float> cache(0, huge, huge, 1, 1, 1);
  EXPECT_EQ(cache.keys().size(), 0);
  Tensor<float, 4> keys({0, 1, huge, 1}), values({0, 1, 1, 1});
  cache.append(keys.view(), values.view());
  EXPECT_EQ(cache.length(), 1);
  EXPECT_EQ(cache.keys().size(), 0);
}

// A cache of another element type takes float rows and stores them as diffattn::convert
// would (bf16 and f16 round to nearest even); rows of its own type still append as they are.
template <class T>
class KVCacheConvertTest : public ::testing::Test {};
using ConvertedTypes = ::testing::Types<diffattn::bf16, diffattn::f16, double>;
TYPED_TEST_SUITE(KVCacheConvertTest, ConvertedTypes);

TYPED_TEST(KVCacheConvertTest, AppendsFloatRowsConverted) {
  using T = TypeParam;
  std::mt19937_64 rng(5);
  KVCache<T> cache(2, 5, 3, 6, 2, 7);
  // Keys through a permuted view ([B, H, N, D] storage read as [B, N, H, D]).
  const Tensor<float, 4> keys_bhnd = random_tensor<float, 4>({2, 3, 3, 6}, rng, -3, 3);
  const Tensor<float, 4> values = random_tensor<float, 4>({2, 3, 2, 7}, rng, -3, 3);
  const auto keys = diffattn::bhnd_to_bnhd(keys_bhnd.view());
  cache.append(keys, values.view());
  Tensor<T, 4> expected_keys({2, 3, 3, 6}), expected_values({2, 3, 2, 7});
  diffattn::convert(keys, expected_keys.view());
  diffattn::convert(values.view(), expected_values.view());
  EXPECT_EQ(max_abs_diff(cache.keys(), expected_keys.view()), 0.0);
  EXPECT_EQ(max_abs_diff(cache.values(), expected_values.view()), 0.0);
  if constexpr (!std::is_same_v<T, double>) {  // the rounding is real, not a float copy
    EXPECT_GT(max_abs_diff(cache.keys(), keys), 0.0);
  }
  // Its own type: appended unchanged after the converted rows.
  cache.append(expected_keys.view().slice(1, 0, 2), expected_values.view().slice(1, 0, 2));
  EXPECT_EQ(cache.length(), 5);
  EXPECT_EQ(max_abs_diff(cache.keys().slice(1, 3, 5), expected_keys.view().slice(1, 0, 2)), 0.0);
  // Float rows get the same checks as the cache's own, and a refused append adds nothing.
  KVCache<T> other(2, 5, 3, 6, 2, 7);
  other.append(keys.slice(1, 0, 1), values.view().slice(1, 0, 1));
  const Tensor<float, 4> narrow({2, 1, 2, 6});
  const std::string message = diffattn_test::error_message<diffattn::shape_error>(
      [&] { other.append(keys.slice(1, 1, 2), narrow.view()); });
  EXPECT_TRUE(contains(message, "'values' dimension 3")) << message;
  EXPECT_EQ(other.length(), 1);
}

}  // namespace
