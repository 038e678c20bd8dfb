// The reference kernels against hand-computed cases and the properties attention must
// have. Everything else is tested against these, so they are tested from first principles.

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "helpers.hpp"

namespace diffattn_test {
namespace {

namespace ref = diffattn::reference;
using diffattn::AttentionOptions;

template <class T>
class ReferenceTest : public ::testing::Test {};
TYPED_TEST_SUITE(ReferenceTest, FloatTypes);

// Results are one rounding of a double computation to T; 4 leaves room for the
// rounding of the inputs written as decimal literals.
template <class T>
double hand_tolerance(double magnitude) {
  return tolerance<T>(4, magnitude);
}

TYPED_TEST(ReferenceTest, SoftmaxHandComputed) {
  using T = TypeParam;
  // logits [0, ln 3] → weights [1/4, 3/4]; values [4, 8] → 1 + 6 = 7.
  Tensor<T, 4> q({1, 1, 1, 1}), k({1, 1, 2, 1}), v({1, 1, 2, 2}), out({1, 1, 1, 2});
  q(0, 0, 0, 0) = T(1);
  k(0, 0, 0, 0) = T(0);
  k(0, 0, 1, 0) = static_cast<T>(std::log(3.0));
  v(0, 0, 0, 0) = T(4);
  v(0, 0, 1, 0) = T(8);
  v(0, 0, 0, 1) = T(-1);
  v(0, 0, 1, 1) = T(3);
  AttentionOptions<T> options;
  options.scale = 1;
  ref::softmax_attention<T>(q, k, v, out, options);
  EXPECT_NEAR(out(0, 0, 0, 0), 7.0, hand_tolerance<T>(7));
  EXPECT_NEAR(out(0, 0, 0, 1), 0.25 * -1 + 0.75 * 3, hand_tolerance<T>(2));
}

TYPED_TEST(ReferenceTest, DefaultScaleIsInverseSqrtD) {
  using T = TypeParam;
  // D = 4, q = k0 = [1,1,1,1]: q·k0 = 4, scaled by 1/2 → logit 2 against logit 0.
  Tensor<T, 4> q({1, 1, 1, 4}, T(1)), k({1, 1, 2, 4}), v({1, 1, 2, 1}), out({1, 1, 1, 1});
  for (index_t c = 0; c < 4; ++c) k(0, 0, 0, c) = T(1);
  v(0, 0, 0, 0) = T(1);
  ref::softmax_attention<T>(q, k, v, out);
  const double expected = std::exp(2.0) / (std::exp(2.0) + 1.0);
  EXPECT_NEAR(out(0, 0, 0, 0), expected, hand_tolerance<T>(1));
}

TYPED_TEST(ReferenceTest, DiffHandComputed) {
  using T = TypeParam;
  // Map 1: weights [1/4, 3/4] (as above). Map 2: q2 = 0 → uniform [1/2, 1/2].
  // λ = 0.5: P = [1/4 − 1/4, 3/4 − 1/4] = [0, 1/2]; values [4, 8] → 4.
  Tensor<T, 4> q1({1, 1, 1, 1}), q2({1, 1, 1, 1}), k({1, 1, 2, 1}), v({1, 1, 2, 1});
  Tensor<T, 4> out({1, 1, 1, 1});
  q1(0, 0, 0, 0) = T(1);
  k(0, 0, 1, 0) = static_cast<T>(std::log(3.0));
  v(0, 0, 0, 0) = T(4);
  v(0, 0, 1, 0) = T(8);
  const T lambda_value = T(0.5);
  AttentionOptions<T> options;
  options.scale = 1;
  ref::diff_attention<T>(q1, q2, k, k, v, TensorView<const T, 1>(&lambda_value, {1}), out,
                         options);
  EXPECT_NEAR(out(0, 0, 0, 0), 4.0, hand_tolerance<T>(4));
}

struct Shape {
  index_t batch, q_heads, kv_heads, q_len, kv_len, head_dim, value_dim;
};

template <class T>
struct Problem {
  Tensor<T, 4> q1, q2, k1, k2, v;
  Tensor<T, 1> lambda;
  explicit Problem(const Shape& s, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    q1 = random_tensor<T, 4>({s.batch, s.q_heads, s.q_len, s.head_dim}, rng);
    q2 = random_tensor<T, 4>({s.batch, s.q_heads, s.q_len, s.head_dim}, rng);
    k1 = random_tensor<T, 4>({s.batch, s.kv_heads, s.kv_len, s.head_dim}, rng);
    k2 = random_tensor<T, 4>({s.batch, s.kv_heads, s.kv_len, s.head_dim}, rng);
    v = random_tensor<T, 4>({s.batch, s.kv_heads, s.kv_len, s.value_dim}, rng, -2, 2);
    lambda = random_tensor<T, 1>({s.q_heads}, rng, 0.1, 0.9);
  }
  Tensor<T, 4> output(const Shape& s) const {
    return Tensor<T, 4>({s.batch, s.q_heads, s.q_len, s.value_dim});
  }
};

constexpr Shape kShape{2, 4, 2, 5, 7, 8, 6};

TYPED_TEST(ReferenceTest, LambdaZeroIsStandardAttention) {
  using T = TypeParam;
  Problem<T> p(kShape, 11);
  auto standard = p.output(kShape);
  auto diff = p.output(kShape);
  Tensor<T, 1> zero({kShape.q_heads});
  ref::softmax_attention<T>(p.q1, p.k1, p.v, standard);
  ref::diff_attention<T>(p.q1, p.q2, p.k1, p.k2, p.v, zero, diff);
  EXPECT_EQ(max_abs_diff(standard.view(), diff.view()), 0.0);
}

TYPED_TEST(ReferenceTest, IdenticalMapsWithLambdaOneCancel) {
  using T = TypeParam;
  Problem<T> p(kShape, 12);
  auto out = p.output(kShape);
  Tensor<T, 1> one({kShape.q_heads}, T(1));
  ref::diff_attention<T>(p.q1, p.q1, p.k1, p.k1, p.v, one, out);
  EXPECT_EQ(max_abs(out.view()), 0.0);
}

TYPED_TEST(ReferenceTest, StandardStaysInConvexHullDiffLeavesIt) {
  using T = TypeParam;
  Problem<T> p(kShape, 13);
  auto standard = p.output(kShape);
  ref::softmax_attention<T>(p.q1, p.k1, p.v, standard);
  const index_t group = kShape.q_heads / kShape.kv_heads;
  for_each_index(standard.shape(), [&](const auto& idx) {
    const auto [b, h, i, c] = idx;
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (index_t j = 0; j < kShape.kv_len; ++j) {
      lo = std::min(lo, static_cast<double>(p.v(b, h / group, j, c)));
      hi = std::max(hi, static_cast<double>(p.v(b, h / group, j, c)));
    }
    const double value = static_cast<double>(standard.view().at(idx));
    EXPECT_GE(value, lo - tolerance<T>(2, 2)) << b << h << i << c;
    EXPECT_LE(value, hi + tolerance<T>(2, 2)) << b << h << i << c;
  });

  // One query, two keys: map 1 picks key 0, map 2 is uniform; with λ = 0.8 key 0 gets
  // 1 − 0.4 = 0.6 and key 1 gets −0.4, so the output 0.6·1 − 0.4·2 = −0.2 is below
  // min(v) = 1: outside the hull.
  Tensor<T, 4> q1({1, 1, 1, 1}, T(1)), q2({1, 1, 1, 1}), k({1, 1, 2, 1}), v({1, 1, 2, 1});
  Tensor<T, 4> out({1, 1, 1, 1});
  k(0, 0, 0, 0) = T(100);
  v(0, 0, 0, 0) = T(1);
  v(0, 0, 1, 0) = T(2);
  const T lambda_value = T(0.8);
  AttentionOptions<T> options;
  options.scale = 1;
  ref::diff_attention<T>(q1, q2, k, k, v, TensorView<const T, 1>(&lambda_value, {1}), out,
                         options);
  EXPECT_NEAR(out(0, 0, 0, 0), -0.2, tolerance<T>(8, 1));
  EXPECT_LT(out(0, 0, 0, 0), T(1));
}

TYPED_TEST(ReferenceTest, AddingAConstantToARowChangesNothing) {
  using T = TypeParam;
  Problem<T> p(kShape, 14);
  auto plain = p.output(kShape);
  auto shifted = p.output(kShape);
  ref::softmax_attention<T>(p.q1, p.k1, p.v, plain);
  // A mask constant along each row (different per row) shifts every logit of the row.
  Tensor<T, 4> mask({1, 1, kShape.q_len, kShape.kv_len});
  for (index_t i = 0; i < kShape.q_len; ++i) {
    for (index_t j = 0; j < kShape.kv_len; ++j) mask(0, 0, i, j) = static_cast<T>(37.0 * (i + 1));
  }
  AttentionOptions<T> options;
  options.mask = mask.view();
  ref::softmax_attention<T>(p.q1, p.k1, p.v, shifted, options);
  // Shifting by ~200 moves the logits' rounding by up to eps·200 in T (the mask itself
  // is exact); the weights inherit that relative error, times |v| <= 2.
  EXPECT_LE(max_abs_diff(plain.view(), shifted.view()), tolerance<T>(8, 2 * 37 * kShape.q_len));
}

TYPED_TEST(ReferenceTest, CausalFirstRowEqualsFirstValue) {
  using T = TypeParam;
  const Shape s{1, 2, 2, 6, 6, 4, 5};
  Problem<T> p(s, 15);
  auto out = p.output(s);
  AttentionOptions<T> options;
  options.causal = true;
  ref::softmax_attention<T>(p.q1, p.k1, p.v, out, options);
  for (index_t h = 0; h < s.q_heads; ++h) {
    for (index_t c = 0; c < s.value_dim; ++c) {
      EXPECT_EQ(out(0, h, 0, c), p.v(0, h, 0, c));
    }
  }
}

// Causal is bottom-right aligned: query i sees keys j <= i + (Nk − Nq). Compare with
// the same rule written as an explicit additive −inf mask.
TYPED_TEST(ReferenceTest, CausalMatchesExplicitMaskForAllAlignments) {
  using T = TypeParam;
  for (index_t q_len : {3, 6, 9}) {
    const Shape s{1, 2, 1, q_len, 6, 4, 3};
    SCOPED_TRACE(q_len);
    Problem<T> p(s, 16);
    auto causal = p.output(s);
    auto masked = p.output(s);
    AttentionOptions<T> causal_options;
    causal_options.causal = true;
    ref::softmax_attention<T>(p.q1, p.k1, p.v, causal, causal_options);
    Tensor<T, 4> mask({1, 1, s.q_len, s.kv_len});
    for (index_t i = 0; i < s.q_len; ++i) {
      for (index_t j = 0; j < s.kv_len; ++j) {
        if (j > i + (s.kv_len - s.q_len)) mask(0, 0, i, j) = -std::numeric_limits<T>::infinity();
      }
    }
    AttentionOptions<T> mask_options;
    mask_options.mask = mask.view();
    ref::softmax_attention<T>(p.q1, p.k1, p.v, masked, mask_options);
    EXPECT_EQ(max_abs_diff(causal.view(), masked.view()), 0.0);
    // Nq > Nk: the first Nq − Nk rows see no key and are zero.
    for (index_t i = 0; i < q_len - s.kv_len; ++i) {
      for (index_t c = 0; c < s.value_dim; ++c) EXPECT_EQ(causal(0, 1, i, c), T(0));
    }
  }
}

TYPED_TEST(ReferenceTest, FullyMaskedRowsAndNoKeysGiveZeros) {
  using T = TypeParam;
  const Shape s{1, 2, 2, 3, 4, 4, 3};
  Problem<T> p(s, 17);
  Tensor<T, 4> mask({1, 1, s.q_len, s.kv_len});
  for (index_t j = 0; j < s.kv_len; ++j) mask(0, 0, 1, j) = -std::numeric_limits<T>::infinity();
  AttentionOptions<T> options;
  options.mask = mask.view();
  auto out = p.output(s);
  ref::softmax_attention<T>(p.q1, p.k1, p.v, out, options);
  auto diff_out = p.output(s);
  ref::diff_attention<T>(p.q1, p.q2, p.k1, p.k2, p.v, p.lambda, diff_out, options);
  for (index_t h = 0; h < s.q_heads; ++h) {
    for (index_t c = 0; c < s.value_dim; ++c) {
      EXPECT_EQ(out(0, h, 1, c), T(0));
      EXPECT_EQ(diff_out(0, h, 1, c), T(0));
      EXPECT_TRUE(std::isfinite(out(0, h, 0, c)));
    }
  }
  // No keys at all: Nk = 0.
  Tensor<T, 4> q({1, 1, 2, 3}, T(1)), k({1, 1, 0, 3}), v({1, 1, 0, 2}), out2({1, 1, 2, 2}, T(9));
  ref::softmax_attention<T>(q, k, v, out2);
  for (index_t i = 0; i < 2; ++i) {
    for (index_t c = 0; c < 2; ++c) EXPECT_EQ(out2(0, 0, i, c), T(0));
  }
}

TYPED_TEST(ReferenceTest, HugeLogitsDoNotOverflow) {
  using T = TypeParam;
  // Mask logits of ±1e30: the +1e30 key takes all the weight, no inf or NaN appears.
  Tensor<T, 4> q({1, 1, 2, 2}), k({1, 1, 3, 2}), v({1, 1, 3, 1}), mask({1, 1, 2, 3});
  Tensor<T, 4> out({1, 1, 2, 1});
  v(0, 0, 0, 0) = T(1);
  v(0, 0, 1, 0) = T(2);
  v(0, 0, 2, 0) = T(3);
  mask(0, 0, 0, 0) = T(1e30);
  mask(0, 0, 0, 1) = T(-1e30);
  mask(0, 0, 1, 0) = T(-1e30);
  mask(0, 0, 1, 1) = T(-1e30);
  mask(0, 0, 1, 2) = T(-1e30);  // equal huge negatives: uniform, not 0/0
  AttentionOptions<T> options;
  options.mask = mask.view();
  ref::softmax_attention<T>(q, k, v, out, options);
  EXPECT_EQ(out(0, 0, 0, 0), T(1));
  EXPECT_NEAR(out(0, 0, 1, 0), 2.0, hand_tolerance<T>(2));

  // The same through q·k: |q·k| = 1e30 fits in float.
  Tensor<T, 4> q2({1, 1, 1, 1}, T(1e15)), k2({1, 1, 2, 1}), out3({1, 1, 1, 1});
  k2(0, 0, 0, 0) = T(-1e15);
  k2(0, 0, 1, 0) = T(1e15);
  AttentionOptions<T> unit;
  unit.scale = 1;
  ref::softmax_attention<T>(q2, k2, v.view().slice(2, 0, 2), out3, unit);
  EXPECT_EQ(out3(0, 0, 0, 0), T(2));
}

TYPED_TEST(ReferenceTest, NaNPropagatesAsDocumented) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const Shape s{1, 1, 1, 4, 4, 2, 3};
  AttentionOptions<T> causal;
  causal.causal = true;
  {  // NaN in q row 2: exactly that output row is NaN.
    Problem<T> p(s, 18);
    p.q1(0, 0, 2, 1) = nan;
    auto out = p.output(s);
    ref::softmax_attention<T>(p.q1, p.k1, p.v, out);
    for (index_t i = 0; i < s.q_len; ++i) {
      for (index_t c = 0; c < s.value_dim; ++c) EXPECT_EQ(std::isnan(out(0, 0, i, c)), i == 2);
    }
  }
  {  // NaN in v(key 2, column 1): column 1 of every row that sees key 2.
    Problem<T> p(s, 19);
    p.v(0, 0, 2, 1) = nan;
    auto out = p.output(s);
    ref::softmax_attention<T>(p.q1, p.k1, p.v, out, causal);
    for (index_t i = 2; i < s.q_len; ++i) {
      for (index_t c = 0; c < s.value_dim; ++c) EXPECT_EQ(std::isnan(out(0, 0, i, c)), c == 1);
    }
  }
  {  // +inf in the mask: the row is NaN. NaN λ: its head's rows are NaN.
    Problem<T> p(s, 20);
    Tensor<T, 4> mask({1, 1, s.q_len, s.kv_len});
    mask(0, 0, 1, 3) = std::numeric_limits<T>::infinity();
    AttentionOptions<T> options;
    options.mask = mask.view();
    auto out = p.output(s);
    ref::softmax_attention<T>(p.q1, p.k1, p.v, out, options);
    EXPECT_TRUE(std::isnan(out(0, 0, 1, 0)));
    EXPECT_FALSE(std::isnan(out(0, 0, 0, 0)));
    p.lambda(0) = nan;
    ref::diff_attention<T>(p.q1, p.q2, p.k1, p.k2, p.v, p.lambda, out);
    EXPECT_TRUE(std::isnan(out(0, 0, 3, 2)));
  }
}

TYPED_TEST(ReferenceTest, GroupedQueryEqualsRepeatedKeyValueHeads) {
  using T = TypeParam;
  const Shape gqa{2, 6, 2, 4, 5, 3, 4};
  const Shape mha{2, 6, 6, 4, 5, 3, 4};
  Problem<T> p(gqa, 21);
  Tensor<T, 4> k1({2, 6, 5, 3}), k2({2, 6, 5, 3}), v({2, 6, 5, 4});
  for_each_index(k1.shape(), [&](const auto& idx) {
    k1.view().at(idx) = p.k1(idx[0], idx[1] / 3, idx[2], idx[3]);
    k2.view().at(idx) = p.k2(idx[0], idx[1] / 3, idx[2], idx[3]);
  });
  for_each_index(v.shape(), [&](const auto& idx) {
    v.view().at(idx) = p.v(idx[0], idx[1] / 3, idx[2], idx[3]);
  });
  auto grouped = p.output(gqa), repeated = p.output(mha);
  ref::diff_attention<T>(p.q1, p.q2, p.k1, p.k2, p.v, p.lambda, grouped);
  ref::diff_attention<T>(p.q1, p.q2, k1, k2, v, p.lambda, repeated);
  EXPECT_EQ(max_abs_diff(grouped.view(), repeated.view()), 0.0);
}

TYPED_TEST(ReferenceTest, BroadcastMaskAndLambdaForms) {
  using T = TypeParam;
  Problem<T> p(kShape, 22);
  std::mt19937_64 rng(23);
  // A [1, 1, Nq, Nk] mask equals the same mask materialised per batch and head.
  auto small = random_tensor<T, 4>({1, 1, kShape.q_len, kShape.kv_len}, rng, -3, 3);
  Tensor<T, 4> full({kShape.batch, kShape.q_heads, kShape.q_len, kShape.kv_len});
  for_each_index(full.shape(), [&](const auto& idx) {
    full.view().at(idx) = small(0, 0, idx[2], idx[3]);
  });
  AttentionOptions<T> small_options, full_options;
  small_options.mask = small.view();
  full_options.mask = full.view();
  auto a = p.output(kShape), b = p.output(kShape);
  ref::diff_attention<T>(p.q1, p.q2, p.k1, p.k2, p.v, p.lambda, a, small_options);
  // λ per token, constant along tokens, equals λ per head.
  Tensor<T, 3> lambda_tokens({kShape.batch, kShape.q_heads, kShape.q_len});
  for_each_index(lambda_tokens.shape(), [&](const auto& idx) {
    lambda_tokens.view().at(idx) = p.lambda(idx[1]);
  });
  ref::diff_attention<T>(p.q1, p.q2, p.k1, p.k2, p.v, lambda_tokens, b, full_options);
  EXPECT_EQ(max_abs_diff(a.view(), b.view()), 0.0);

  // λ per token really is per token: changing one token's λ changes only its row.
  lambda_tokens(1, 2, 3) = T(-0.5);
  auto c = p.output(kShape);
  ref::diff_attention<T>(p.q1, p.q2, p.k1, p.k2, p.v, lambda_tokens, c, full_options);
  for_each_index(c.shape(), [&](const auto& idx) {
    const bool changed_row = idx[0] == 1 && idx[1] == 2 && idx[2] == 3;
    if (!changed_row) {
      EXPECT_EQ(c.view().at(idx), b.view().at(idx));
    }
  });
  EXPECT_NE(c(1, 2, 3, 0), b(1, 2, 3, 0));
}

TYPED_TEST(ReferenceTest, StridedAndPermutedViewsMatchContiguousCopies) {
  using T = TypeParam;
  // The reference layout: a [B, N, 2H, d] projection output split into interleaved pairs,
  // and V viewed [B, N, H, 2d]; output written into a [B, N, H, 2d] buffer.
  const index_t batch = 2, tokens = 5, heads = 3, width = 4;
  std::mt19937_64 rng(24);
  auto q_proj = random_tensor<T, 4>({batch, tokens, 2 * heads, width}, rng);
  auto k_proj = random_tensor<T, 4>({batch, tokens, 2 * heads, width}, rng);
  auto v_proj = random_tensor<T, 4>({batch, tokens, heads, 2 * width}, rng);
  Tensor<T, 1> lambda({heads}, T(0.3));
  const auto q = diffattn::interleaved_pairs(q_proj.view());
  const auto k = diffattn::interleaved_pairs(k_proj.view());
  const auto v = diffattn::bnhd_to_bhnd(v_proj.view());
  Tensor<T, 4> out_bnhd({batch, tokens, heads, 2 * width});
  ref::diff_attention<T>(q.first, q.second, k.first, k.second, v, lambda,
                         diffattn::bnhd_to_bhnd(out_bnhd.view()));

  auto q1 = copy_as<T>(q.first), q2 = copy_as<T>(q.second);
  auto k1 = copy_as<T>(k.first), k2 = copy_as<T>(k.second), vc = copy_as<T>(v);
  Tensor<T, 4> out({batch, heads, tokens, 2 * width});
  ref::diff_attention<T>(q1, q2, k1, k2, vc, lambda, out);
  EXPECT_EQ(max_abs_diff(diffattn::bnhd_to_bhnd(out_bnhd.view()), out.view()), 0.0);
}

TYPED_TEST(ReferenceTest, EmptyExtentsAreValid) {
  using T = TypeParam;
  for (const Shape& s : {Shape{0, 2, 1, 3, 3, 4, 4}, Shape{1, 2, 1, 0, 3, 4, 4},
                         Shape{1, 0, 0, 3, 3, 4, 4}, Shape{1, 2, 2, 3, 3, 4, 0}}) {
    Problem<T> p(s, 25);
    auto out = p.output(s);
    ref::softmax_attention<T>(p.q1, p.k1, p.v, out);
    ref::diff_attention<T>(p.q1, p.q2, p.k1, p.k2, p.v, p.lambda, out);
  }
}

}  // namespace
}  // namespace diffattn_test
