// Unit tests for include/diffattn/rope.hpp: which channels each style pairs, the angles,
// position offsets (what a KV cache relies on), strided views and argument errors.

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

#include "helpers.hpp"

namespace {

using diffattn_test::contains;

using diffattn::apply_rope;
using diffattn::RopeStyle;
using diffattn_test::FloatTypes;
using diffattn_test::index_t;
using diffattn_test::max_abs_diff;
using diffattn_test::random_tensor;
using diffattn_test::Tensor;
using diffattn_test::tolerance;


template <class T>
class RopeTest : public ::testing::Test {};
TYPED_TEST_SUITE(RopeTest, FloatTypes);

/// The rotation written out per element from the definition, in double: pair i of token n
/// turns by (offset + n)·θ^(−2i/d); `partner(i)` is the channel paired with channel i.
template <class T>
Tensor<double, 4> rope_by_definition(const Tensor<T, 4>& x, index_t offset, RopeStyle style,
                                     double theta) {
  const index_t d = x.extent(3), half = d / 2;
  Tensor<double, 4> out(x.shape());
  diffattn_test::for_each_index(x.shape(), [&](const auto& idx) {
    const index_t c = idx[3];
    const bool interleaved = style == RopeStyle::interleaved;
    const index_t pair = interleaved ? c / 2 : c % half;
    const bool first = interleaved ? c % 2 == 0 : c < half;
    const index_t partner = interleaved ? (first ? c + 1 : c - 1) : (first ? c + half : c - half);
    const double angle = static_cast<double>(offset + idx[1]) *
                         std::pow(theta, -2.0 * static_cast<double>(pair) / static_cast<double>(d));
    const double self = static_cast<double>(x(idx[0], idx[1], idx[2], c));
    const double other = static_cast<double>(x(idx[0], idx[1], idx[2], partner));
    out(idx[0], idx[1], idx[2], c) = first ? self * std::cos(angle) - other * std::sin(angle)
                                           : other * std::sin(angle) + self * std::cos(angle);
  });
  return out;
}

TYPED_TEST(RopeTest, MatchesTheDefinitionForBothStyles) {
  using T = TypeParam;
  std::mt19937_64 rng(11);
  for (RopeStyle style : {RopeStyle::interleaved, RopeStyle::half}) {
    for (index_t offset : {0, 5, 1000}) {
      SCOPED_TRACE(testing::Message() << diffattn::rope_style_name(style) << " offset " << offset);
      const Tensor<T, 4> x = random_tensor<T, 4>({2, 5, 3, 8}, rng);
      Tensor<T, 4> rotated = x;
      apply_rope(rotated.view(), offset, style, 10000.0);
      const auto expected = rope_by_definition(x, offset, style, 10000.0);
      // Computed in double and rounded once to T: within half an ulp of |x| <= 1, plus
      // the double-precision angle at position ~1000 (~1e-13 absolute).
      EXPECT_LE(max_abs_diff(rotated.view(), expected.view()), tolerance<T>(1, 1));
    }
  }
}

TYPED_TEST(RopeTest, KnownAngles) {
  using T = TypeParam;
  // d = 4, θ = 100: pair 0 turns by p radians, pair 1 by p/10.
  Tensor<T, 4> x({1, 3, 1, 4});
  for (index_t n = 0; n < 3; ++n) {
    x(0, n, 0, 0) = 1;  // interleaved pair 0 is (0, 1); pair 1 is (2, 3)
    x(0, n, 0, 2) = 1;
  }
  apply_rope(x.view(), 0, RopeStyle::interleaved, 100.0);
  for (index_t n = 0; n < 3; ++n) {
    const double p = static_cast<double>(n);
    EXPECT_NEAR(x(0, n, 0, 0), std::cos(p), tolerance<T>(1, 1));
    EXPECT_NEAR(x(0, n, 0, 1), std::sin(p), tolerance<T>(1, 1));
    EXPECT_NEAR(x(0, n, 0, 2), std::cos(p / 10), tolerance<T>(1, 1));
    EXPECT_NEAR(x(0, n, 0, 3), std::sin(p / 10), tolerance<T>(1, 1));
  }

  // Half rotation pairs channel i with i + d/2: (0, 2) turns by p, (1, 3) by p/10.
  Tensor<T, 4> y({1, 2, 1, 4});
  y(0, 1, 0, 0) = 1;
  y(0, 1, 0, 1) = 1;
  apply_rope(y.view(), 0, RopeStyle::half, 100.0);
  EXPECT_NEAR(y(0, 1, 0, 0), std::cos(1.0), tolerance<T>(1, 1));
  EXPECT_NEAR(y(0, 1, 0, 2), std::sin(1.0), tolerance<T>(1, 1));
  EXPECT_NEAR(y(0, 1, 0, 1), std::cos(0.1), tolerance<T>(1, 1));
  EXPECT_NEAR(y(0, 1, 0, 3), std::sin(0.1), tolerance<T>(1, 1));
}

TYPED_TEST(RopeTest, HalfStyleIsInterleavedOnDeinterleavedChannels) {
  using T = TypeParam;
  std::mt19937_64 rng(12);
  constexpr index_t d = 6;
  const Tensor<T, 4> x = random_tensor<T, 4>({1, 4, 2, d}, rng);
  // Channel c of `interleaved_input` is channel (c even ? c/2 : d/2 + c/2) of x, so its
  // interleaved pair i is x's half-rotation pair i.
  Tensor<T, 4> interleaved_input(x.shape());
  diffattn_test::for_each_index(x.shape(), [&](const auto& idx) {
    const index_t c = idx[3];
    interleaved_input(idx[0], idx[1], idx[2], c) =
        x(idx[0], idx[1], idx[2], c % 2 == 0 ? c / 2 : d / 2 + c / 2);
  });
  Tensor<T, 4> half = x;
  apply_rope(half.view(), 3, RopeStyle::half, 50.0);
  apply_rope(interleaved_input.view(), 3, RopeStyle::interleaved, 50.0);
  diffattn_test::for_each_index(x.shape(), [&](const auto& idx) {
    const index_t c = idx[3];
    EXPECT_EQ(interleaved_input(idx[0], idx[1], idx[2], c),
              half(idx[0], idx[1], idx[2], c % 2 == 0 ? c / 2 : d / 2 + c / 2));
  });
}

TYPED_TEST(RopeTest, OffsetContinuesTheSequence) {
  using T = TypeParam;
  std::mt19937_64 rng(13);
  for (RopeStyle style : {RopeStyle::interleaved, RopeStyle::half}) {
    const Tensor<T, 4> x = random_tensor<T, 4>({2, 7, 2, 8}, rng);
    Tensor<T, 4> whole = x;
    apply_rope(whole.view(), 0, style);
    // Tokens 4..6 rotated on their own at offset 4 are tokens 4..6 of the whole: the
    // same angles, computed from the same doubles, so bitwise equal.
    Tensor<T, 4> tail({2, 3, 2, 8});
    diffattn_test::for_each_index(tail.shape(), [&](const auto& idx) {
      tail(idx[0], idx[1], idx[2], idx[3]) = x(idx[0], idx[1] + 4, idx[2], idx[3]);
    });
    apply_rope(tail.view(), 4, style);
    EXPECT_EQ(max_abs_diff(tail.view(), whole.view().slice(1, 4, 7)), 0.0);
  }
}

TYPED_TEST(RopeTest, ScoresDependOnlyOnRelativePosition) {
  using T = TypeParam;
  std::mt19937_64 rng(14);
  const Tensor<T, 4> q = random_tensor<T, 4>({1, 1, 1, 8}, rng);
  const Tensor<T, 4> k = random_tensor<T, 4>({1, 1, 1, 8}, rng);
  auto score = [&](index_t q_pos, index_t k_pos) {
    Tensor<T, 4> rq = q, rk = k;
    apply_rope(rq.view(), q_pos, RopeStyle::interleaved);
    apply_rope(rk.view(), k_pos, RopeStyle::interleaved);
    double dot = 0;
    for (index_t c = 0; c < 8; ++c) dot += static_cast<double>(rq(0, 0, 0, c)) * rk(0, 0, 0, c);
    return dot;
  };
  // q·k moved by the same offset keeps its value: rotations by (m − n) only. Each side
  // carries a rounding of eps/2 per element on |x| <= 1, over 8 products.
  EXPECT_NEAR(score(7, 3), score(104, 100), tolerance<T>(8, 1));
  EXPECT_NEAR(score(2, 2), score(0, 0), tolerance<T>(8, 1));
}

TYPED_TEST(RopeTest, StridedViewEqualsContiguous) {
  using T = TypeParam;
  std::mt19937_64 rng(15);
  // A [B, H, N, d] buffer seen as [B, N, H, d], as the blocks' permuted views are.
  const Tensor<T, 4> bhnd = random_tensor<T, 4>({2, 3, 5, 4}, rng);
  Tensor<T, 4> strided = bhnd;
  apply_rope(diffattn::bhnd_to_bnhd(strided.view()), 2, RopeStyle::half);
  Tensor<T, 4> contiguous = diffattn_test::copy_as<T>(diffattn::bhnd_to_bnhd(bhnd.view()));
  apply_rope(contiguous.view(), 2, RopeStyle::half);
  EXPECT_EQ(max_abs_diff(diffattn::bhnd_to_bnhd(strided.view()), contiguous.view()), 0.0);
}

TYPED_TEST(RopeTest, NoneAndPositionZeroLeaveXUnchanged) {
  using T = TypeParam;
  std::mt19937_64 rng(16);
  const Tensor<T, 4> x = random_tensor<T, 4>({1, 1, 2, 6}, rng);
  Tensor<T, 4> at_zero = x;
  apply_rope(at_zero.view(), 0, RopeStyle::interleaved);
  EXPECT_EQ(max_abs_diff(at_zero.view(), x.view()), 0.0);  // cos 0 = 1, sin 0 = 0 exactly
  const Tensor<T, 4> odd = random_tensor<T, 4>({1, 3, 2, 5}, rng);
  Tensor<T, 4> none = odd;
  apply_rope(none.view(), 9, RopeStyle::none);  // an odd width is fine when nothing turns
  EXPECT_EQ(max_abs_diff(none.view(), odd.view()), 0.0);
}

TEST(RopeErrors, RejectsBadArguments) {
  Tensor<float, 4> odd({1, 2, 1, 5});
  try {
    apply_rope(odd.view(), 0, RopeStyle::half);
    ADD_FAILURE() << "odd head width accepted";
  } catch (const diffattn::shape_error& e) {
    EXPECT_TRUE(contains(e.what(), "apply_rope: 'x' dimension 3 (d)")) << e.what();
    EXPECT_TRUE(contains(e.what(), "got 5")) << e.what();
  }
  Tensor<float, 4> x({1, 2, 1, 4});
  EXPECT_THROW(apply_rope(x.view(), -1, RopeStyle::interleaved), std::invalid_argument);
  // Positions offset + n past std::ptrdiff_t overflowed (found by the shape fuzzer).
  const index_t last = std::numeric_limits<index_t>::max();
  EXPECT_THROW(apply_rope(x.view(), last, RopeStyle::interleaved), std::invalid_argument);
  EXPECT_NO_THROW(apply_rope(x.view(), last - 1, RopeStyle::none));  // the second token at last
  for (double theta : {0.0, -2.0, std::nan(""), static_cast<double>(INFINITY)}) {
    try {
      apply_rope(x.view(), 0, RopeStyle::interleaved, theta);
      ADD_FAILURE() << "theta " << theta << " accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_TRUE(contains(e.what(), "theta")) << e.what();
    }
  }
}

TEST(RopeStyleName, SpellsEachStyle) {
  EXPECT_STREQ(diffattn::rope_style_name(RopeStyle::none), "none");
  EXPECT_STREQ(diffattn::rope_style_name(RopeStyle::interleaved), "interleaved");
  EXPECT_STREQ(diffattn::rope_style_name(RopeStyle::half), "half");
}

}  // namespace
