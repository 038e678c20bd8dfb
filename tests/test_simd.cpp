// The SIMD building blocks: exp2_nonpositive's error bound and special values, and the
// micro-kernels against plain loops for every tail length.

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "helpers.hpp"

namespace diffattn_test {
namespace {

using diffattn::detail::native_batch;

template <class T>
class SimdTest : public ::testing::Test {};
TYPED_TEST_SUITE(SimdTest, FloatTypes);

/// exp2_nonpositive over a whole array, one batch at a time.
template <class T>
std::vector<T> simd_exp2(const std::vector<T>& x) {
  using B = native_batch<T>;
  std::vector<T> out(x.size());
  for (std::size_t i = 0; i < x.size(); i += B::size) {
    diffattn::detail::exp2_nonpositive(B::load_unaligned(&x[i])).store_unaligned(&out[i]);
  }
  return out;
}

/// Distance in units in the last place between a and the exact value.
template <class T>
double ulp_error(T a, long double exact) {
  const T rounded = static_cast<T>(exact);
  const double ulp = static_cast<double>(std::nextafter(rounded, std::numeric_limits<T>::infinity()) - rounded);
  return static_cast<double>(std::abs(static_cast<long double>(a) - exact)) / ulp;
}

// The ISA-specific test builds say which batch width they expect, so a flag that
// silently stopped working (and tested the wrong kernels) fails here.
TEST(SimdBuild, BatchWidthIsTheExpectedOne) {
#if defined(DIFFATTN_EXPECT_FLOAT_LANES)
  EXPECT_EQ(native_batch<float>::size, std::size_t{DIFFATTN_EXPECT_FLOAT_LANES});
#else
  GTEST_SKIP() << "main build: the widest ISA the flags allow";
#endif
}

TYPED_TEST(SimdTest, Exp2WithinTwoUlp) {
  using T = TypeParam;
  const T lowest = diffattn::detail::exp2_constants<T>::lowest;
  std::vector<T> x;
  for (int i = 0; i < 200000; ++i) x.push_back(lowest * static_cast<T>(i) / T(200000));
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<double> small(-1, 0);
  for (int i = 0; i < 50000; ++i) x.push_back(static_cast<T>(small(rng)));  // dense near 0
  x.push_back(T(0));
  x.push_back(T(-0.5));
  x.push_back(-std::numeric_limits<T>::denorm_min());
  while (x.size() % native_batch<T>::size != 0) x.push_back(T(-1));
  const auto y = simd_exp2(x);
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    worst = std::max(worst, ulp_error(y[i], std::exp2(static_cast<long double>(x[i]))));
  }
  EXPECT_LE(worst, 2.0);
  EXPECT_EQ(simd_exp2(std::vector<T>(native_batch<T>::size, T(0)))[0], T(1));
}

TYPED_TEST(SimdTest, Exp2SpecialValues) {
  using T = TypeParam;
  constexpr std::size_t lanes = native_batch<T>::size;
  const T lowest = diffattn::detail::exp2_constants<T>::lowest;
  const T values[] = {-std::numeric_limits<T>::infinity(), lowest - T(0.5), T(-1e30),
                      std::numeric_limits<T>::quiet_NaN()};
  for (T value : values) {
    const auto y = simd_exp2(std::vector<T>(lanes, value));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(y[0]));
    } else {
      EXPECT_EQ(y[0], T(0)) << value;
    }
  }
  // Mixed lanes: each lane on its own. Three batches: NaN first, −inf last, −3 between.
  std::vector<T> mixed(3 * lanes, T(-3));
  mixed[0] = std::numeric_limits<T>::quiet_NaN();
  mixed[3 * lanes - 1] = -std::numeric_limits<T>::infinity();
  const auto y = simd_exp2(mixed);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(y[3 * lanes - 1], T(0));
  for (std::size_t i = 1; i < 3 * lanes - 1; ++i) EXPECT_EQ(y[i], T(0.125)) << i;
}

// simd_sums feeds the decoding score kernel: lane i must be row i's sum. Small whole
// numbers, so every sum is exact whatever the add tree, and each row's values differ from
// every other row's (a swapped pair of lanes cannot pass). xsimd 8.1's AVX-512 float haddp
// swaps lanes 2–3 with 4–5 (and 10–11 with 12–13).
TYPED_TEST(SimdTest, SumsOfRowsPutEachRowInItsLane) {
  using T = TypeParam;
  using B = native_batch<T>;
  constexpr std::size_t lanes = B::size;
  std::vector<B> rows;
  std::vector<T> expected(lanes, T(0));
  for (std::size_t i = 0; i < lanes; ++i) {
    std::vector<T> values(lanes);
    for (std::size_t l = 0; l < lanes; ++l) {
      values[l] = static_cast<T>(100 * i + (l * 7 + i * 3) % 11);
      expected[i] += values[l];
    }
    rows.push_back(B::load_unaligned(values.data()));
  }
  std::vector<T> sums(lanes);
  diffattn::detail::simd_sums(rows.data()).store_unaligned(sums.data());
  for (std::size_t i = 0; i < lanes; ++i) EXPECT_EQ(sums[i], expected[i]) << "lane " << i;
}

// stream_copy: non-temporal stores to a destination aligned to the batch width, with a
// tail of ordinary ones; ordinary stores throughout to one that is not aligned.
TYPED_TEST(SimdTest, StreamCopyCopiesEveryLengthAndAlignment) {
  using T = TypeParam;
  constexpr std::ptrdiff_t lanes = static_cast<std::ptrdiff_t>(native_batch<T>::size);
  Tensor<T, 1> source({4 * lanes + 8});
  for (index_t i = 0; i < source.size(); ++i) source(i) = static_cast<T>(i + 1);
  for (std::ptrdiff_t offset : {std::ptrdiff_t{0}, std::ptrdiff_t{1}, lanes}) {
    for (std::ptrdiff_t n = 0; n <= 3 * lanes + 5; ++n) {
      Tensor<T, 1> target({4 * lanes + 8}, T(-1));  // 64-byte aligned storage
      diffattn::detail::stream_copy(source.data() + 1, target.data() + offset, n);
      diffattn::detail::stream_fence();
      for (std::ptrdiff_t i = 0; i < target.size(); ++i) {
        const T expected = i >= offset && i < offset + n ? source(i - offset + 1) : T(-1);
        ASSERT_EQ(target(i), expected) << "offset " << offset << ", n " << n << ", element " << i;
      }
    }
  }
}

TYPED_TEST(SimdTest, MicroKernelsMatchPlainLoopsForEveryTail) {
  using T = TypeParam;
  using blocking = diffattn::detail::micro_blocking<T>;
  constexpr index_t lanes = blocking::lanes;
  std::mt19937_64 rng(10);
  std::uniform_real_distribution<double> dist(-1, 1);
  auto random_vector = [&](index_t n) {
    std::vector<T> v(static_cast<std::size_t>(n));
    for (auto& e : v) e = static_cast<T>(dist(rng));
    return v;
  };
  // Keys: every tail of the key blockings (4 or 6 keys, and 12 for two-vector row
  // blocks); rows and widths: every tail of the vector blocking (in whole batches, as the
  // kernels require); depth 70 spans several score panels (64 floats, 32 doubles) with a
  // tail, and with it the width is a value panel and three batches; strides wider than the
  // data.
  constexpr index_t value_panel = diffattn::detail::value_panel_bytes / sizeof(T);
  static_assert(diffattn::detail::score_panel_bytes / sizeof(T) < 70);
  for (index_t keys : {1, 2, 5, 7, 11, 13, 17, 25, 64}) {
    for (index_t rows = blocking::row_align; rows <= 5 * blocking::row_align; rows += blocking::row_align) {
      for (index_t depth : {1, 3, 31, 70}) {
        SCOPED_TRACE(::testing::Message() << "keys=" << keys << " rows=" << rows << " depth=" << depth);
        const index_t k_stride = depth + 2, st_stride = rows + lanes;
        const auto k = random_vector(keys * k_stride);
        const auto qt = random_vector(depth * rows);
        std::vector<T> st(static_cast<std::size_t>(keys * st_stride), T(7));
        diffattn::detail::score_tile(k.data(), k_stride, keys, qt.data(), rows, rows, depth,
                                     st.data(), st_stride);
        for (index_t j = 0; j < keys; ++j) {
          for (index_t r = 0; r < st_stride; ++r) {
            if (r >= rows) {  // columns past `rows` are never written
              EXPECT_EQ(st[j * st_stride + r], T(7));
              continue;
            }
            double expected = 0;
            for (index_t c = 0; c < depth; ++c) expected += double(k[j * k_stride + c]) * double(qt[c * rows + r]);
            // depth products of |x| <= 1 accumulated in T: depth roundings.
            EXPECT_NEAR(st[j * st_stride + r], expected, tolerance<T>(double(depth) + 1, double(depth)));
          }
        }
        // O [value_rows, width] += Pᵀᵀ·V with P = st, width as above: every
        // multiple of the row blocking, the lone-row tails, and the 1–4 row tiles of
        // decoding (value_few_rows), while the rows past value_rows stay untouched.
        const index_t width = depth < 70 ? depth * lanes : value_panel + 3 * lanes;
        const index_t v_stride = width + 3;
        const auto v = random_vector(keys * v_stride);
        for (index_t value_rows : {rows, rows - 1, index_t{1}, index_t{2}, index_t{3}, index_t{4}, index_t{5}}) {
          if (value_rows > rows) continue;  // st has `rows` columns
          SCOPED_TRACE(::testing::Message() << "value_rows=" << value_rows);
          std::vector<T> o = random_vector(rows * width);
          const std::vector<T> o_before = o;
          diffattn::detail::value_tile(st.data(), st_stride, 1, value_rows, keys, v.data(), v_stride, width,
                                       o.data(), width);
          for (index_t r = 0; r < rows; ++r) {
            for (index_t d = 0; d < width; ++d) {
              if (r >= value_rows) {
                EXPECT_EQ(o[r * width + d], o_before[r * width + d]);
                continue;
              }
              double expected = o_before[r * width + d];
              double magnitude = std::abs(expected);
              for (index_t j = 0; j < keys; ++j) {
                expected += double(st[j * st_stride + r]) * double(v[j * v_stride + d]);
                magnitude += std::abs(double(st[j * st_stride + r]));
              }
              EXPECT_NEAR(o[r * width + d], expected, tolerance<T>(double(keys) + 2, magnitude));
            }
          }
        }
      }
    }
  }
}

TYPED_TEST(SimdTest, DotScoreKernelMatchesPlainLoops) {
  using T = TypeParam;
  constexpr index_t lanes = diffattn::detail::micro_blocking<T>::lanes;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> dist(-1, 1);
  // Keys: below, at and past the key blocks (up to 16 keys × 1 row on AVX-512); scores
  // written as Sᵀ (one row of st per key) and as S (one row of st per query row, as the
  // decoding tiles keep them), with strides wider than the data.
  for (index_t rows = 1; rows <= 7; ++rows) {
    for (index_t depth : {lanes, lanes + 1, 3 * lanes - 1, 4 * lanes}) {
      for (index_t keys : {1, 3, 4, 9, 17, 33}) {
        for (bool by_row : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "rows=" << rows << " depth=" << depth << " keys=" << keys
                                            << " by_row=" << by_row);
          const index_t k_stride = depth + 3;
          const index_t key_stride = by_row ? 1 : rows + 2, row_stride = by_row ? keys + 5 : 1;
          const index_t st_size = by_row ? rows * row_stride : keys * key_stride;
          std::vector<T> k(static_cast<std::size_t>(keys * k_stride)), q(static_cast<std::size_t>(rows * depth));
          for (auto& e : k) e = static_cast<T>(dist(rng));
          for (auto& e : q) e = static_cast<T>(dist(rng));
          std::vector<T> st(static_cast<std::size_t>(st_size), T(7));
          diffattn::detail::score_tile_dot(k.data(), k_stride, keys, q.data(), rows, depth, st.data(), key_stride,
                                           row_stride);
          std::vector<bool> written(st.size(), false);
          for (index_t j = 0; j < keys; ++j) {
            for (index_t r = 0; r < rows; ++r) {
              const index_t at = j * key_stride + r * row_stride;
              written[static_cast<std::size_t>(at)] = true;
              double expected = 0;
              for (index_t c = 0; c < depth; ++c) expected += double(k[j * k_stride + c]) * double(q[r * depth + c]);
              EXPECT_NEAR(st[at], expected, tolerance<T>(double(depth) + 1, double(depth)));
            }
          }
          for (std::size_t i = 0; i < st.size(); ++i) {
            if (!written[i]) {
              EXPECT_EQ(st[i], T(7)) << "padding at " << i;  // never written
            }
          }
        }
      }
    }
  }
}

// value_tile reading P row-major (pt_stride 1, one row of pt per query row), as the
// decoding tiles keep it, for every row count a decoding tile can have (below the batch
// width) and key counts past the 4-key blocks.
TYPED_TEST(SimdTest, ValueKernelReadsRowMajorWeights) {
  using T = TypeParam;
  constexpr index_t lanes = diffattn::detail::micro_blocking<T>::lanes;
  std::mt19937_64 rng(12);
  std::uniform_real_distribution<double> dist(-1, 1);
  for (index_t rows = 1; rows <= std::max<index_t>(lanes, 6); ++rows) {
    for (index_t keys : {1, 5, 19}) {
      for (index_t width : {lanes, 3 * lanes, 9 * lanes}) {
        SCOPED_TRACE(::testing::Message() << "rows=" << rows << " keys=" << keys << " width=" << width);
        const index_t row_stride = keys + 3, v_stride = width + 1;
        std::vector<T> p(static_cast<std::size_t>(rows * row_stride)), v(static_cast<std::size_t>(keys * v_stride));
        std::vector<T> o(static_cast<std::size_t>(rows * width));
        for (auto& e : p) e = static_cast<T>(dist(rng));
        for (auto& e : v) e = static_cast<T>(dist(rng));
        for (auto& e : o) e = static_cast<T>(dist(rng));
        const std::vector<T> o_before = o;
        diffattn::detail::value_tile(p.data(), 1, row_stride, rows, keys, v.data(), v_stride, width, o.data(), width);
        for (index_t r = 0; r < rows; ++r) {
          for (index_t d = 0; d < width; ++d) {
            double expected = o_before[r * width + d], magnitude = std::abs(expected);
            for (index_t j = 0; j < keys; ++j) {
              expected += double(p[r * row_stride + j]) * double(v[j * v_stride + d]);
              magnitude += std::abs(double(p[r * row_stride + j]));
            }
            EXPECT_NEAR(o[r * width + d], expected, tolerance<T>(double(keys) + 2, magnitude));
          }
        }
      }
    }
  }
}

// value_tile's RowScales: o = o·keep + (P·V)·add row by row, keep applied once however
// many chunks of value_chunk_keys keys the product takes, in both weight layouts, for
// decoding row counts (value_few_rows) and prefill ones, widths past the by-key panel.
TYPED_TEST(SimdTest, ValueKernelScalesRowsAndSumsChunksAfresh) {
  using T = TypeParam;
  using diffattn::detail::RowScales;
  constexpr index_t lanes = diffattn::detail::micro_blocking<T>::lanes;
  constexpr index_t by_key_panel = diffattn::detail::value_by_key_panel_bytes / sizeof(T);
  std::mt19937_64 rng(13);
  std::uniform_real_distribution<double> dist(-1, 1);
  const index_t prefill_rows = 2 * diffattn::detail::micro_blocking<T>::row_align;
  for (index_t rows : {index_t{1}, index_t{2}, index_t{3}, index_t{4}, index_t{7}, prefill_rows}) {
    for (index_t keys : {index_t{1}, index_t{64}, index_t{65}, index_t{200}}) {
      for (index_t width : {lanes, by_key_panel + 2 * lanes}) {
        for (const bool row_major : {false, true}) {
          for (const bool keep_given : {false, true}) {
            SCOPED_TRACE(::testing::Message() << "rows=" << rows << " keys=" << keys << " width=" << width
                                              << " row_major=" << row_major << " keep=" << keep_given);
            const index_t pt_stride = row_major ? 1 : rows + 1, pt_row_stride = row_major ? keys + 2 : 1;
            std::vector<T> p(static_cast<std::size_t>(row_major ? rows * pt_row_stride : keys * pt_stride));
            std::vector<T> v(static_cast<std::size_t>(keys * width)), o(static_cast<std::size_t>(rows * width));
            std::vector<T> keep(static_cast<std::size_t>(rows)), add(static_cast<std::size_t>(rows));
            for (auto* values : {&p, &v, &o, &keep, &add}) {
              for (auto& e : *values) e = static_cast<T>(dist(rng));
            }
            const std::vector<T> o_before = o;
            const RowScales<T> scales{keep_given ? keep.data() : nullptr, add.data()};
            diffattn::detail::value_tile(p.data(), pt_stride, pt_row_stride, rows, keys, v.data(), width, width,
                                         o.data(), width, scales);
            for (index_t r = 0; r < rows; ++r) {
              for (index_t d = 0; d < width; d += 7) {
                double sum = 0, magnitude = 0;
                for (index_t j = 0; j < keys; ++j) {
                  const double weight = p[j * pt_stride + r * pt_row_stride];
                  sum += weight * double(v[j * width + d]);
                  magnitude += std::abs(weight);
                }
                const double kept = double(o_before[r * width + d]) * (keep_given ? double(keep[r]) : 1.0);
                EXPECT_NEAR(o[r * width + d], kept + sum * double(add[r]),
                            tolerance<T>(double(keys) + 4, magnitude + 1));
              }
            }
          }
        }
      }
    }
  }
  // Each chunk is summed afresh: 4096 equal terms x·1 err by about one chunk's 64
  // roundings plus one per chunk, where a single running sum erred by up to 4096/4.
  for (const index_t rows : {index_t{1}, prefill_rows}) {
    const index_t keys = 4096;
    const T x = static_cast<T>(0.1234567);
    std::vector<T> p(static_cast<std::size_t>(keys * rows), T(1)), v(static_cast<std::size_t>(keys * lanes), x);
    std::vector<T> o(static_cast<std::size_t>(rows * lanes), T(0));
    diffattn::detail::value_tile(p.data(), rows, 1, rows, keys, v.data(), lanes, lanes, o.data(), lanes);
    const double exact = double(keys) * double(x);
    EXPECT_NEAR(o[0], exact, tolerance<T>(64 + 64 + 2, exact) / 2) << "rows=" << rows;
  }
}

}  // namespace
}  // namespace diffattn_test
