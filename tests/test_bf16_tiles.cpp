// The AVX512_BF16 tile kernels (detail/simd/avx512_bf16.hpp) against plain
// double-precision loops on the same bf16 values: the packing bit for bit, the products
// within a bound on fp32 rounding, and the same bits whatever the blocking. Skipped when
// the compile flags do not allow AVX512_BF16.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <diffattn/detail/simd/avx512_bf16.hpp>

#include "helpers.hpp"

namespace diffattn_test {
namespace {

using diffattn::bf16;
using diffattn::detail::has_bf16_dot_product;

namespace kernels {
#if defined(DIFFATTN_HAS_BF16_DOT)
using diffattn::detail::pack_value_pairs;
using diffattn::detail::pack_weight_pairs;
using diffattn::detail::score_tile_bf16;
using diffattn::detail::value_tile_bf16;
#else
// Stand-ins so that the tests compile without the ISA; the fixture skips every test first.
void score_tile_bf16(const bf16*, index_t, index_t, const std::uint32_t*, index_t, index_t, float, float*,
                     index_t) {}
void pack_weight_pairs(const float*, index_t, index_t, index_t, std::uint32_t*) {}
void pack_value_pairs(const bf16*, index_t, index_t, index_t, index_t, std::uint32_t*) {}
void value_tile_bf16(const std::uint32_t*, index_t, index_t, index_t, const std::uint32_t*, index_t, index_t,
                     float*, index_t, const float*, const float*) {}
#endif
}  // namespace kernels

class Bf16Tiles : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!has_bf16_dot_product) {
      GTEST_SKIP() << "built without AVX512F + AVX512BW + AVX512_BF16 (DIFFATTN_HAS_BF16_DOT undefined)";
    }
  }
};

/// fp32's unit roundoff, and γ(n) = n·u / (1 − n·u): the relative error bound of n
/// roundings (Higham, Accuracy and Stability of Numerical Algorithms, §3.1).
constexpr double unit_roundoff = 0x1p-24;
double rounding_gamma(double n) { return n * unit_roundoff / (1 - n * unit_roundoff); }

float float_from_bits(std::uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

bf16 bf16_from_bits(std::uint16_t bits) { return Eigen::numext::bit_cast<bf16>(bits); }

std::uint32_t pair_bits(bf16 low, bf16 high) {
  return static_cast<std::uint32_t>(bits_of(low)) | static_cast<std::uint32_t>(bits_of(high)) << 16;
}

/// A quiet NaN in the bytes a kernel must not read (past a row's length): a product with
/// it, even by a zero weight, makes a NaN that the comparisons catch.
const bf16 poison = bf16_from_bits(0x7FC1);

index_t draw(std::mt19937_64& rng, index_t lo, index_t hi) {
  return std::uniform_int_distribution<index_t>(lo, hi)(rng);
}

bf16 random_bf16(std::mt19937_64& rng, double lo = -1, double hi = 1) {
  return bf16(static_cast<float>(std::uniform_real_distribution<double>(lo, hi)(rng)));
}

/// Q [rows, depth] (row stride depth) as score_tile_bf16 takes it: depth pairs of
/// rows_pad rows, the padding rows and an odd depth's last high half zero.
std::vector<std::uint32_t> pack_query(const std::vector<bf16>& q, index_t rows, index_t rows_pad, index_t depth) {
  const index_t pairs = (depth + 1) / 2;
  std::vector<std::uint32_t> qp(static_cast<std::size_t>(pairs * rows_pad), 0);
  for (index_t p = 0; p < pairs; ++p) {
    for (index_t r = 0; r < rows; ++r) {
      const bf16 low = q[static_cast<std::size_t>(r * depth + 2 * p)];
      const bf16 high = 2 * p + 1 < depth ? q[static_cast<std::size_t>(r * depth + 2 * p + 1)] : bf16(0.0f);
      qp[static_cast<std::size_t>(p * rows_pad + r)] = pair_bits(low, high);
    }
  }
  return qp;
}

// ---------------------------------------------------------------------------------------
// Packing

/// The bf16 that pack_weight_pairs makes of x: Eigen's round to nearest even, except that
/// vcvtne2ps2bf16 turns denormals into zeros of the same sign.
std::uint16_t expected_weight_bits(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) return std::signbit(x) ? 0x8000 : 0x0000;
  return bits_of(bf16(x));
}

TEST_F(Bf16Tiles, PackWeightPairsRoundsToNearestEvenAsEigen) {
  std::mt19937_64 rng(11);
  std::vector<float> values;
  // Ties both ways (low half 0x8000 over an even and an odd bf16), one below and one above
  // each, at random exponents and signs.
  for (int i = 0; i < 400; ++i) {
    const std::uint32_t high = static_cast<std::uint32_t>(draw(rng, 0x0080, 0x7F7F)) |
                               (i % 2 == 0 ? 0u : 0x8000u);
    for (std::uint32_t low : {0x8000u, 0x7FFFu, 0x8001u, 0x0000u, 0xFFFFu}) {
      values.push_back(float_from_bits(high << 16 | low));
    }
  }
  for (int i = 0; i < 2000; ++i) values.push_back(float_from_bits(static_cast<std::uint32_t>(rng())));
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::min(), std::numeric_limits<float>::denorm_min(),
                  -std::numeric_limits<float>::denorm_min(), float_from_bits(0x007FFFFF), 1.0f, 0.5f}) {
    values.push_back(x);
  }
  // NaNs: quiet, signalling (low payload only, which truncation alone would make inf), negative.
  for (std::uint32_t bits : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu}) {
    values.push_back(float_from_bits(bits));
  }

  // Pᵀ [keys, rows_pad] with a row stride past rows_pad and an odd number of keys.
  constexpr index_t rows_pad = 48, pt_stride = 53;
  const index_t keys = (static_cast<index_t>(values.size()) + rows_pad - 1) / rows_pad | 1;
  std::vector<float> pt(static_cast<std::size_t>(keys * pt_stride), std::numeric_limits<float>::quiet_NaN());
  for (index_t j = 0; j < keys; ++j)
    for (index_t r = 0; r < rows_pad; ++r)
      pt[static_cast<std::size_t>(j * pt_stride + r)] =
          values[static_cast<std::size_t>(j * rows_pad + r) % values.size()];
  std::vector<std::uint32_t> pp(static_cast<std::size_t>((keys + 1) / 2 * rows_pad), 0xDEADBEEF);
  kernels::pack_weight_pairs(pt.data(), pt_stride, keys, rows_pad, pp.data());

  for (index_t j = 0; j < keys; ++j) {
    for (index_t r = 0; r < rows_pad; ++r) {
      const float x = pt[static_cast<std::size_t>(j * pt_stride + r)];
      const std::uint32_t pair = pp[static_cast<std::size_t>(j / 2 * rows_pad + r)];
      const auto got = static_cast<std::uint16_t>(j % 2 == 0 ? pair & 0xFFFF : pair >> 16);
      if (std::isnan(x)) {
        EXPECT_TRUE(std::isnan(static_cast<float>(bf16_from_bits(got)))) << "float bits 0x" << std::hex << bits_of(x);
      } else {
        ASSERT_EQ(got, expected_weight_bits(x)) << "float bits 0x" << std::hex << bits_of(x) << std::dec
                                                << ", key " << j << ", row " << r;
      }
    }
  }
  for (index_t r = 0; r < rows_pad; ++r) {  // the odd last key's partner is zero
    EXPECT_EQ(pp[static_cast<std::size_t>((keys - 1) / 2 * rows_pad + r)] >> 16, 0u) << r;
  }
}

TEST_F(Bf16Tiles, PackValuePairsInterleavesKeysAndZeroesThePadding) {
  std::mt19937_64 rng(12);
  for (int trial = 0; trial < 300; ++trial) {
    const index_t keys = draw(rng, 1, 9), width = draw(rng, 1, 100);
    const index_t width_pad = diffattn::detail::round_up(width, 16) + 16 * draw(rng, 0, 1);
    const index_t v_stride = width + draw(rng, 0, 5);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ": keys " << keys << ", width " << width
                                      << ", width_pad " << width_pad << ", v_stride " << v_stride);
    std::vector<bf16> v(static_cast<std::size_t>(keys * v_stride), poison);
    for (index_t j = 0; j < keys; ++j)
      for (index_t d = 0; d < width; ++d) v[static_cast<std::size_t>(j * v_stride + d)] = random_bf16(rng);
    std::vector<std::uint32_t> vp(static_cast<std::size_t>((keys + 1) / 2 * width_pad), 0xDEADBEEF);
    kernels::pack_value_pairs(v.data(), v_stride, keys, width, width_pad, vp.data());
    for (index_t p = 0; p < (keys + 1) / 2; ++p) {
      for (index_t d = 0; d < width_pad; ++d) {
        const auto at = [&](index_t j) {
          return j < keys && d < width ? v[static_cast<std::size_t>(j * v_stride + d)] : bf16(0.0f);
        };
        ASSERT_EQ(vp[static_cast<std::size_t>(p * width_pad + d)], pair_bits(at(2 * p), at(2 * p + 1)))
            << "pair " << p << ", column " << d;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Sᵀ = factor·K·Qᵀ

struct ScoreCase {
  std::uint64_t seed;
  index_t keys, rows, rows_pad, depth, k_stride, st_stride;
  float factor;
  std::string describe() const {
    std::ostringstream out;
    out << "seed=" << seed << " keys=" << keys << " rows=" << rows << " rows_pad=" << rows_pad << " depth=" << depth
        << " k_stride=" << k_stride << " st_stride=" << st_stride << " factor=" << factor;
    return out.str();
  }
};

struct ScoreInputs {
  std::vector<bf16> k, q;  // k [keys, k_stride], poisoned past depth; q [rows, depth]
  std::vector<std::uint32_t> qp;
};

ScoreInputs score_inputs(const ScoreCase& c) {
  std::mt19937_64 rng(c.seed * 7919 + 1);
  ScoreInputs in;
  in.k.assign(static_cast<std::size_t>(c.keys * c.k_stride), poison);
  for (index_t j = 0; j < c.keys; ++j)
    for (index_t d = 0; d < c.depth; ++d) in.k[static_cast<std::size_t>(j * c.k_stride + d)] = random_bf16(rng, -4, 4);
  in.q.resize(static_cast<std::size_t>(c.rows * c.depth));
  for (auto& x : in.q) x = random_bf16(rng, -4, 4);
  in.qp = pack_query(in.q, c.rows, c.rows_pad, c.depth);
  return in;
}

constexpr float untouched = -12345.0f;

std::vector<float> run_score(const ScoreCase& c, const ScoreInputs& in) {
  std::vector<float> st(static_cast<std::size_t>(c.keys * c.st_stride), untouched);
  kernels::score_tile_bf16(in.k.data(), c.k_stride, c.keys, in.qp.data(), c.rows_pad, c.depth, c.factor, st.data(),
                           c.st_stride);
  return st;
}

ScoreCase draw_score_case(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  ScoreCase c{};
  c.seed = seed;
  c.keys = draw(rng, 1, 130);
  c.rows_pad = 16 * draw(rng, 1, 4);
  c.rows = draw(rng, c.rows_pad - 15, c.rows_pad);
  c.depth = draw(rng, 1, 160);
  c.k_stride = c.depth + draw(rng, 0, 9);
  c.st_stride = c.rows_pad + draw(rng, 0, 7);
  c.factor = seed % 4 == 0 ? 1.0f : static_cast<float>(1 / std::sqrt(static_cast<double>(c.depth)));
  return c;
}

// Every product of two bf16 is exact in fp32, so each score carries depth roundings of its
// running sum (vdpbf16ps adds its pair's two products one after the other) and one of the
// factor: |error| <= γ(depth + 1)·|factor|·Σ_c |k·q|.
TEST_F(Bf16Tiles, ScoreTileMatchesDoubleLoop) {
  for (std::uint64_t seed = 1; seed <= 300; ++seed) {
    const ScoreCase c = draw_score_case(seed);
    SCOPED_TRACE(c.describe());
    const ScoreInputs in = score_inputs(c);
    const std::vector<float> st = run_score(c, in);
    const double bound_factor =
        rounding_gamma(static_cast<double>(c.depth + 1)) * std::abs(static_cast<double>(c.factor));
    for (index_t j = 0; j < c.keys; ++j) {
      for (index_t r = 0; r < c.st_stride; ++r) {
        const float got = st[static_cast<std::size_t>(j * c.st_stride + r)];
        if (r >= c.rows_pad) {
          ASSERT_EQ(got, untouched) << "key " << j << ": column " << r << " is past rows_pad";
          continue;
        }
        double sum = 0, magnitude = 0;
        for (index_t d = 0; r < c.rows && d < c.depth; ++d) {
          const double product = static_cast<double>(in.k[static_cast<std::size_t>(j * c.k_stride + d)]) *
                                 static_cast<double>(in.q[static_cast<std::size_t>(r * c.depth + d)]);
          sum += product;
          magnitude += std::abs(product);
        }
        const double expected = static_cast<double>(c.factor) * sum;
        ASSERT_LE(std::abs(static_cast<double>(got) - expected), bound_factor * magnitude)
            << "key " << j << ", row " << r << ": got " << got << ", expected " << expected;
      }
    }
    if (HasFailure()) break;  // the first failing seed is the one to replay
  }
}

// The same scores, bit for bit, whether computed whole or in parts that take other register
// blocks (12 keys × 2 vectors, 6 × 1, key tails of every length), over two depth panels.
TEST_F(Bf16Tiles, ScoreTileSameBitsForAnyBlocking) {
  for (index_t depth : {index_t{150}, index_t{255}, index_t{64}}) {
    ScoreCase c{};
    c.seed = 900 + static_cast<std::uint64_t>(depth);
    c.keys = 71;
    c.rows = c.rows_pad = 64;
    c.depth = depth;
    c.k_stride = depth + 3;
    c.st_stride = 64;
    c.factor = 0.3f;
    SCOPED_TRACE(c.describe());
    const ScoreInputs in = score_inputs(c);
    const std::vector<float> whole = run_score(c, in);

    // Row blocks of 32 and 16: Q repacked with fewer rows per pair row.
    for (index_t part_rows : {index_t{32}, index_t{16}}) {
      std::vector<float> st(whole.size(), untouched);
      for (index_t r0 = 0; r0 < c.rows; r0 += part_rows) {
        const std::vector<bf16> q_part(in.q.begin() + r0 * depth, in.q.begin() + (r0 + part_rows) * depth);
        const auto qp = pack_query(q_part, part_rows, part_rows, depth);
        kernels::score_tile_bf16(in.k.data(), c.k_stride, c.keys, qp.data(), part_rows, depth, c.factor,
                                 st.data() + r0, c.st_stride);
      }
      for (std::size_t i = 0; i < whole.size(); ++i) {
        ASSERT_EQ(bits_of(st[i]), bits_of(whole[i])) << part_rows << " rows, element " << i;
      }
    }
    // Keys in runs of 1, 2, ..., so every tail length and block boundary moves.
    std::vector<float> st(whole.size(), untouched);
    for (index_t j0 = 0, run = 1; j0 < c.keys; j0 += run, ++run) {
      kernels::score_tile_bf16(in.k.data() + j0 * c.k_stride, c.k_stride, std::min(run, c.keys - j0), in.qp.data(),
                               c.rows_pad, depth, c.factor, st.data() + j0 * c.st_stride, c.st_stride);
    }
    for (std::size_t i = 0; i < whole.size(); ++i) {
      ASSERT_EQ(bits_of(st[i]), bits_of(whole[i])) << "key runs, element " << i;
    }
  }
}

// ---------------------------------------------------------------------------------------
// O = O·keep + (P·V)·add

struct ValueCase {
  std::uint64_t seed;
  index_t keys, rows, rows_pad, width, pt_stride, pp_stride, v_stride, vp_stride, o_stride;
  bool keep, add;
  std::string describe() const {
    std::ostringstream out;
    out << "seed=" << seed << " keys=" << keys << " rows=" << rows << " rows_pad=" << rows_pad << " width=" << width
        << " pp_stride=" << pp_stride << " v_stride=" << v_stride << " vp_stride=" << vp_stride
        << " o_stride=" << o_stride << " keep=" << keep << " add=" << add;
    return out.str();
  }
};

struct ValueInputs {
  std::vector<float> pt, o, keep, add;  // pt [keys, pt_stride]; o [rows, o_stride]
  std::vector<bf16> v;                  // [keys, v_stride], poisoned past width
  std::vector<std::uint32_t> pp, vp;    // packed with strides pp_stride, vp_stride
};

ValueInputs value_inputs(const ValueCase& c) {
  std::mt19937_64 rng(c.seed * 7919 + 2);
  std::uniform_real_distribution<double> unit(0, 1), signed_unit(-1, 1);
  ValueInputs in;
  in.pt.assign(static_cast<std::size_t>(c.keys * c.pt_stride), std::numeric_limits<float>::quiet_NaN());
  for (index_t j = 0; j < c.keys; ++j)
    for (index_t r = 0; r < c.rows_pad; ++r) {
      in.pt[static_cast<std::size_t>(j * c.pt_stride + r)] = static_cast<float>(unit(rng));
    }
  in.v.assign(static_cast<std::size_t>(c.keys * c.v_stride), poison);
  for (index_t j = 0; j < c.keys; ++j)
    for (index_t d = 0; d < c.width; ++d) in.v[static_cast<std::size_t>(j * c.v_stride + d)] = random_bf16(rng, -2, 2);
  in.o.assign(static_cast<std::size_t>(c.rows * c.o_stride), untouched);
  for (index_t r = 0; r < c.rows; ++r)
    for (index_t d = 0; d < c.width; ++d) {
      in.o[static_cast<std::size_t>(r * c.o_stride + d)] = static_cast<float>(signed_unit(rng));
    }
  for (index_t r = 0; r < c.rows; ++r) {
    in.keep.push_back(static_cast<float>(unit(rng)));
    in.add.push_back(static_cast<float>(0.5 + 1.5 * unit(rng)));
  }
  // Packed at the kernels' strides: pack_weight_pairs writes rows_pad-wide pair rows, so a
  // wider pp_stride takes a copy.
  const index_t pairs = (c.keys + 1) / 2;
  std::vector<std::uint32_t> pp(static_cast<std::size_t>(pairs * c.rows_pad));
  kernels::pack_weight_pairs(in.pt.data(), c.pt_stride, c.keys, c.rows_pad, pp.data());
  in.pp.assign(static_cast<std::size_t>(std::max<index_t>(pairs, 1) * c.pp_stride), 0xFFFFFFFF);
  for (index_t p = 0; p < pairs; ++p)
    std::copy_n(pp.begin() + p * c.rows_pad, c.rows_pad, in.pp.begin() + p * c.pp_stride);
  in.vp.assign(static_cast<std::size_t>(std::max<index_t>(pairs, 1) * c.vp_stride), 0xFFFFFFFF);
  if (c.keys > 0) kernels::pack_value_pairs(in.v.data(), c.v_stride, c.keys, c.width, c.vp_stride, in.vp.data());
  return in;
}

std::vector<float> run_value(const ValueCase& c, const ValueInputs& in) {
  std::vector<float> o = in.o;
  kernels::value_tile_bf16(in.pp.data(), c.pp_stride, c.rows, c.keys, in.vp.data(), c.vp_stride, c.width, o.data(),
                           c.o_stride, c.keep ? in.keep.data() : nullptr, c.add ? in.add.data() : nullptr);
  return o;
}

ValueCase draw_value_case(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  ValueCase c{};
  c.seed = seed;
  c.keys = seed % 25 == 0 ? 0 : draw(rng, 1, 130);
  c.rows_pad = 16 * draw(rng, 1, 4);
  c.rows = draw(rng, std::max<index_t>(1, c.rows_pad - 15), c.rows_pad);
  c.width = 16 * draw(rng, 1, 12);
  c.pt_stride = c.rows_pad + draw(rng, 0, 5);
  c.pp_stride = c.rows_pad + 16 * draw(rng, 0, 1);
  c.v_stride = c.width + draw(rng, 0, 9);
  c.vp_stride = c.width + 16 * draw(rng, 0, 1);
  c.o_stride = c.width + draw(rng, 0, 7);
  c.keep = seed % 3 != 0;
  c.add = seed % 5 != 0;
  return c;
}

// The reference takes P rounded to bf16 as pack_weight_pairs does (Eigen's bf16, the same
// for normal numbers) and sums each 64-key chunk afresh, as the kernel does. Products are
// exact in fp32, so each chunk's sum carries at most 64 roundings, each within u of a
// partial sum bounded by that chunk's Σ|p·v|; o·keep and each chunk's fused update add one
// rounding each, within u of M = |o·keep| + |add|·Σ_j |p·v|. So
// |error| <= γ(min(keys, 64) + chunks + 1)·M.
TEST_F(Bf16Tiles, ValueTileMatchesDoubleLoop) {
  constexpr index_t chunk = diffattn::detail::value_chunk_keys;
  for (std::uint64_t seed = 1; seed <= 300; ++seed) {
    const ValueCase c = draw_value_case(seed);
    SCOPED_TRACE(c.describe());
    const ValueInputs in = value_inputs(c);
    const std::vector<float> o = run_value(c, in);
    const index_t chunks = std::max<index_t>(1, (c.keys + chunk - 1) / chunk);
    const double bound_factor = rounding_gamma(static_cast<double>(std::min(c.keys, chunk) + chunks + 1));
    for (index_t r = 0; r < c.rows; ++r) {
      const double keep = c.keep ? static_cast<double>(in.keep[static_cast<std::size_t>(r)]) : 1.0;
      const double add = c.add ? static_cast<double>(in.add[static_cast<std::size_t>(r)]) : 1.0;
      for (index_t d = 0; d < c.o_stride; ++d) {
        const float got = o[static_cast<std::size_t>(r * c.o_stride + d)];
        if (d >= c.width) {
          ASSERT_EQ(got, untouched) << "row " << r << ": column " << d << " is past the width";
          continue;
        }
        const double old = static_cast<double>(in.o[static_cast<std::size_t>(r * c.o_stride + d)]);
        double expected = old * keep, magnitude = std::abs(old * keep);
        for (index_t j0 = 0; j0 < c.keys; j0 += chunk) {
          double sum = 0;
          for (index_t j = j0; j < std::min(c.keys, j0 + chunk); ++j) {
            const double p = static_cast<double>(bf16(in.pt[static_cast<std::size_t>(j * c.pt_stride + r)]));
            const double product = p * static_cast<double>(in.v[static_cast<std::size_t>(j * c.v_stride + d)]);
            sum += product;
            magnitude += std::abs(add * product);
          }
          expected += sum * add;
        }
        ASSERT_LE(std::abs(static_cast<double>(got) - expected), bound_factor * magnitude)
            << "row " << r << ", column " << d << ": got " << got << ", expected " << expected;
      }
    }
    if (HasFailure()) break;  // the first failing seed is the one to replay
  }
}

TEST_F(Bf16Tiles, ValueTileWithNoKeysAppliesKeep) {
  ValueCase c{};
  c.seed = 77;
  c.rows = 11;
  c.rows_pad = 16;
  c.width = 80;
  c.pt_stride = c.pp_stride = 16;
  c.v_stride = c.vp_stride = c.o_stride = 80;
  c.keep = c.add = true;
  const ValueInputs in = value_inputs(c);
  const std::vector<float> o = run_value(c, in);
  for (index_t r = 0; r < c.rows; ++r)
    for (index_t d = 0; d < c.width; ++d) {
      const std::size_t i = static_cast<std::size_t>(r * c.o_stride + d);
      ASSERT_EQ(o[i], in.o[i] * in.keep[static_cast<std::size_t>(r)]) << r << ", " << d;
    }
}

// The same outputs, bit for bit, from the whole tile and from parts that take other
// blocks: row ranges (6-, 4- and 1-row blocks), width ranges (panels, 4- and 1-vector
// blocks), and the keys split at a chunk boundary (the second call without keep).
TEST_F(Bf16Tiles, ValueTileSameBitsForAnyBlocking) {
  ValueCase c{};
  c.seed = 4242;
  c.keys = 157;
  c.rows = 61;
  c.rows_pad = 64;
  c.width = 208;
  c.pt_stride = c.pp_stride = 64;
  c.v_stride = c.vp_stride = c.o_stride = 208;
  c.keep = c.add = true;
  SCOPED_TRACE(c.describe());
  const ValueInputs in = value_inputs(c);
  const std::vector<float> whole = run_value(c, in);
  const auto expect_same = [&](const std::vector<float>& o, const char* what) {
    for (std::size_t i = 0; i < whole.size(); ++i) {
      ASSERT_EQ(bits_of(o[i]), bits_of(whole[i])) << what << ", element " << i;
    }
  };

  std::vector<float> o = in.o;
  for (index_t r0 : {index_t{0}, index_t{5}, index_t{6}, index_t{33}}) {
    const index_t r1 = r0 == 0 ? 5 : r0 == 5 ? 6 : r0 == 6 ? 33 : c.rows;
    kernels::value_tile_bf16(in.pp.data() + r0, c.pp_stride, r1 - r0, c.keys, in.vp.data(), c.vp_stride, c.width,
                             o.data() + r0 * c.o_stride, c.o_stride, in.keep.data() + r0, in.add.data() + r0);
  }
  expect_same(o, "row ranges");

  o = in.o;
  for (index_t d0 = 0; d0 < c.width;) {
    const index_t span = std::min<index_t>(d0 == 0 ? 16 : 48, c.width - d0);
    kernels::value_tile_bf16(in.pp.data(), c.pp_stride, c.rows, c.keys, in.vp.data() + d0, c.vp_stride, span,
                             o.data() + d0, c.o_stride, in.keep.data(), in.add.data());
    d0 += span;
  }
  expect_same(o, "width ranges");

  o = in.o;
  constexpr index_t chunk = diffattn::detail::value_chunk_keys;
  kernels::value_tile_bf16(in.pp.data(), c.pp_stride, c.rows, chunk, in.vp.data(), c.vp_stride, c.width, o.data(),
                           c.o_stride, in.keep.data(), in.add.data());
  kernels::value_tile_bf16(in.pp.data() + chunk / 2 * c.pp_stride, c.pp_stride, c.rows, c.keys - chunk,
                           in.vp.data() + chunk / 2 * c.vp_stride, c.vp_stride, c.width, o.data(), c.o_stride,
                           nullptr, in.add.data());
  expect_same(o, "keys split at a chunk");
}

}  // namespace
}  // namespace diffattn_test
