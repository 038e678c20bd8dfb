// Half-precision element types: bf16 and f16 in tensors, views and Eigen maps, and
// diffattn::convert's rounding against the IEEE rules bit by bit.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include <diffattn/diffattn.hpp>
#include <diffattn/half.hpp>

#include "helpers.hpp"

namespace {

using diffattn::bf16;
using diffattn::f16;
using diffattn_test::bits_of;
using diffattn::index_t;
using diffattn::Tensor;
using diffattn::TensorView;

float float_from_bits(std::uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

/// bfloat16 from float by the definition: the top 16 bits, rounded to nearest even.
std::uint16_t bf16_bits_rne(float x) {
  const std::uint32_t bits = bits_of(x);
  if (std::isnan(x)) return static_cast<std::uint16_t>((bits >> 16) | 0x40);  // quiet
  const std::uint32_t lsb = (bits >> 16) & 1;
  return static_cast<std::uint16_t>((bits + 0x7FFF + lsb) >> 16);
}

TEST(Half, TensorsOfHalvesStartAtZeroAndViewLikeFloat) {
  Tensor<bf16, 3> t({2, 3, 5});
  for (index_t i = 0; i < t.size(); ++i) EXPECT_EQ(static_cast<float>(t.data()[i]), 0.0f);
  t(1, 2, 4) = bf16(1.5f);
  const TensorView<const bf16, 3> permuted = t.view().permute({2, 0, 1});
  EXPECT_EQ(static_cast<float>(permuted(4, 1, 2)), 1.5f);
  Tensor<f16, 4> bnhd({1, 4, 2, 8});
  bnhd(0, 3, 1, 7) = f16(-2.25f);
  EXPECT_EQ(static_cast<float>(diffattn::bnhd_to_bhnd(bnhd.view())(0, 1, 3, 7)), -2.25f);
}

TEST(Half, EigenMapsShareTheStorage) {
  Tensor<bf16, 2> t({3, 4});
  auto map = diffattn::as_eigen(t.view());
  map(2, 3) = bf16(3.0f);
  EXPECT_EQ(static_cast<float>(t(2, 3)), 3.0f);
  Eigen::Matrix<f16, Eigen::Dynamic, Eigen::Dynamic> m(2, 2);
  m.setZero();
  auto view = diffattn::as_view(m);
  static_assert(std::is_same_v<decltype(view), TensorView<f16, 2>>);
  view(1, 0) = f16(0.5f);
  EXPECT_EQ(static_cast<float>(m(1, 0)), 0.5f);
}

// Every bf16 and f16 value converts to float and back unchanged (NaN stays NaN).
TEST(Half, EveryHalfValueRoundTripsThroughFloat) {
  Tensor<bf16, 1> b({65536});
  Tensor<f16, 1> h({65536});
  for (std::uint32_t i = 0; i < 65536; ++i) {
    b(i) = Eigen::numext::bit_cast<bf16>(static_cast<std::uint16_t>(i));
    h(i) = Eigen::numext::bit_cast<f16>(static_cast<std::uint16_t>(i));
  }
  Tensor<float, 1> fb({65536}), fh({65536});
  diffattn::convert(b.view(), fb.view());
  diffattn::convert(h.view(), fh.view());
  Tensor<bf16, 1> b2({65536});
  Tensor<f16, 1> h2({65536});
  diffattn::convert(fb.view(), b2.view());
  diffattn::convert(fh.view(), h2.view());
  int bf16_nans = 0, f16_nans = 0;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    if (std::isnan(fb(i))) {
      ++bf16_nans;
      EXPECT_TRUE(std::isnan(static_cast<float>(b2(i)))) << i;
    } else {
      ASSERT_EQ(bits_of(b2(i)), i) << "bf16 bits " << i;
      EXPECT_EQ(bits_of(fb(i)), i << 16) << "bf16 " << i << " is the top half of a float";
    }
    if (std::isnan(fh(i))) {
      ++f16_nans;
      EXPECT_TRUE(std::isnan(static_cast<float>(h2(i)))) << i;
    } else {
      ASSERT_EQ(bits_of(h2(i)), i) << "f16 bits " << i;
    }
  }
  // Exponent all ones with a non-zero mantissa, both signs.
  EXPECT_EQ(bf16_nans, 2 * 127);
  EXPECT_EQ(f16_nans, 2 * 1023);
}

// float → bf16 rounds to nearest, ties to even: checked against the bit definition on
// halfway points, their neighbours and random floats of every magnitude.
TEST(Half, FloatToBf16RoundsToNearestEven) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  Tensor<float, 1> x({4096});
  for (index_t i = 0; i < x.size(); ++i) {
    const std::uint32_t top = any_bits(rng) & 0xFFFF0000u;
    switch (i % 4) {
      case 0: x(i) = float_from_bits(top | 0x8000u); break;  // exactly halfway
      case 1: x(i) = float_from_bits(top | 0x7FFFu); break;  // just below
      case 2: x(i) = float_from_bits(top | 0x8001u); break;  // just above
      default: x(i) = float_from_bits(any_bits(rng)); break;
    }
  }
  Tensor<bf16, 1> y({4096});
  diffattn::convert(x.view(), y.view());
  for (index_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x(i))) {
      EXPECT_TRUE(std::isnan(static_cast<float>(y(i))));
      continue;
    }
    ASSERT_EQ(bits_of(y(i)), bf16_bits_rne(x(i))) << "float bits 0x" << std::hex << bits_of(x(i));
  }
}

// float → f16: nearest-even on the 10-bit mantissa, subnormals, overflow to ±inf.
TEST(Half, FloatToF16RoundsToNearestEvenAndOverflowsToInfinity) {
  const float f16_max = 65504.0f, ulp_at_max = 32.0f;
  Tensor<float, 1> x({8});
  x(0) = 1.0f + std::ldexp(1.0f, -11);       // halfway between 1 and 1 + 2^-10: to 1
  x(1) = 1.0f + 3 * std::ldexp(1.0f, -11);   // halfway, odd below: up to 1 + 2^-9
  x(2) = f16_max + ulp_at_max / 2;           // halfway to 2^16: rounds up to inf
  x(3) = f16_max + ulp_at_max / 2 - 1;       // below halfway: stays max
  x(4) = -1e6f;
  x(5) = std::ldexp(1.0f, -24);              // the smallest subnormal
  x(6) = std::ldexp(1.0f, -26);              // below half of it: 0
  x(7) = std::numeric_limits<float>::quiet_NaN();
  Tensor<f16, 1> y({8});
  diffattn::convert(x.view(), y.view());
  EXPECT_EQ(static_cast<float>(y(0)), 1.0f);
  EXPECT_EQ(static_cast<float>(y(1)), 1.0f + std::ldexp(1.0f, -9));
  EXPECT_EQ(static_cast<float>(y(2)), std::numeric_limits<float>::infinity());
  EXPECT_EQ(static_cast<float>(y(3)), f16_max);
  EXPECT_EQ(static_cast<float>(y(4)), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(static_cast<float>(y(5)), std::ldexp(1.0f, -24));
  EXPECT_EQ(static_cast<float>(y(6)), 0.0f);
  EXPECT_TRUE(std::isnan(static_cast<float>(y(7))));
}

TEST(Half, ConvertFollowsStridesAndPermutations) {
  std::mt19937_64 rng(3);
  const Tensor<float, 3> src = diffattn_test::random_tensor<float, 3>({3, 4, 5}, rng);
  Tensor<bf16, 3> dst({5, 3, 4});  // written through a permuted view
  diffattn::convert(src.view(), dst.view().permute({1, 2, 0}));
  for (index_t a = 0; a < 3; ++a) {
    for (index_t b = 0; b < 4; ++b) {
      for (index_t c = 0; c < 5; ++c) {
        EXPECT_EQ(bits_of(dst(c, a, b)), bits_of(bf16(src(a, b, c))));
      }
    }
  }
  Tensor<double, 3> back({3, 4, 5});
  diffattn::convert(dst.view().permute({1, 2, 0}), back.view());
  EXPECT_EQ(back(2, 3, 4), static_cast<double>(static_cast<float>(dst(4, 2, 3))));
}

TEST(Half, ConvertRejectsMismatchedShapesAndOverlap) {
  Tensor<float, 2> src({3, 4});
  Tensor<bf16, 2> wrong({3, 5});
  const std::string message =
      diffattn_test::error_message<diffattn::shape_error>([&] { diffattn::convert(src.view(), wrong.view()); });
  EXPECT_TRUE(diffattn_test::contains(message, "'dst' dimension 1")) << message;
  EXPECT_TRUE(diffattn_test::contains(message, "expected 4")) << message;
  Tensor<bf16, 2> dst({3, 4});
  const TensorView<bf16, 2> repeated(dst.data(), {3, 4}, {0, 1});
  EXPECT_THROW(diffattn::convert(src.view(), repeated), diffattn::shape_error);
  // Reading floats and writing bf16 over the same bytes.
  const TensorView<bf16, 2> over_src(reinterpret_cast<bf16*>(src.data()), {3, 4});
  EXPECT_THROW(diffattn::convert(src.view(), over_src), diffattn::shape_error);
}

// diffattn::reference takes half inputs: it reads them as double, so on bf16 inputs it
// gives the double reference of the bf16-rounded values.
TEST(Half, ReferenceReadsHalfInputsExactly) {
  std::mt19937_64 rng(11);
  const index_t B = 1, H = 2, N = 9, D = 8;
  const Tensor<float, 4> qf = diffattn_test::random_tensor<float, 4>({B, H, N, D}, rng);
  const Tensor<float, 4> kf = diffattn_test::random_tensor<float, 4>({B, H, N, D}, rng);
  const Tensor<float, 4> vf = diffattn_test::random_tensor<float, 4>({B, H, N, D}, rng);
  Tensor<bf16, 4> q({B, H, N, D}), k({B, H, N, D}), v({B, H, N, D});
  diffattn::convert(qf.view(), q.view());
  diffattn::convert(kf.view(), k.view());
  diffattn::convert(vf.view(), v.view());
  Tensor<double, 4> qd({B, H, N, D}), kd({B, H, N, D}), vd({B, H, N, D});
  diffattn::convert(q.view(), qd.view());
  diffattn::convert(k.view(), kd.view());
  diffattn::convert(v.view(), vd.view());
  Tensor<bf16, 4> out({B, H, N, D});
  Tensor<double, 4> expected({B, H, N, D});
  diffattn::AttentionOptions<bf16> options;
  options.causal = true;
  diffattn::AttentionOptions<double> options_d;
  options_d.causal = true;
  diffattn::reference::softmax_attention<bf16>(q.view(), k.view(), v.view(), out.view(), options);
  diffattn::reference::softmax_attention<double>(qd.view(), kd.view(), vd.view(), expected.view(), options_d);
  for (index_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(bits_of(out.data()[i]), bits_of(bf16(static_cast<float>(expected.data()[i])))) << i;
  }
}

}  // namespace
