// The fused kernels against the double-precision reference: a randomized sweep over
// shapes, layouts, masks, λ forms, methods and thread counts, plus the edge cases.

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fused_cases.hpp"
#include "helpers.hpp"

// Random cases per element type; the slower scalar-fallback build runs fewer.
#ifndef DIFFATTN_RANDOM_CASES
#define DIFFATTN_RANDOM_CASES 1100
#endif

namespace diffattn_test {
namespace {

using diffattn::AttentionOptions;

template <class T>
void run_case(const Case& c) {
  SCOPED_TRACE(c.describe());
  std::mt19937_64 rng(c.seed * 7919 + 1);
  Inputs<T> in(c, rng);
  const index_t q_heads = c.kv_heads * c.group;
  const AttentionOptions<T> options = case_options(c, in.mask);
  // The reference runs in double on the same (exactly converted) inputs.
  const ReferenceInputs ref(c, in, in, in);
  const auto &q1 = ref.q1, &q2 = ref.q2, &k1 = ref.k1, &k2 = ref.k2, &v = ref.v;
  const auto& ref_options = ref.options;
  const std::array<index_t, 4> out_shape{c.batch, q_heads, c.q_len, c.value_dim};
  const double v_max = max_abs(in.v);

  Tensor<T, 4> out(out_shape);
  Tensor<double, 4> expected(out_shape);
  diffattn::softmax_attention<T>(in.q1, in.k1, in.v, out, options);
  diffattn::reference::softmax_attention<double>(q1, k1, v, expected, ref_options);
  EXPECT_LE(max_abs_diff(out.view(), expected.view()), contract_bound<T>(0, v_max, c.kv_len)) << "standard";

  if (c.per_token_lambda) {
    diffattn::diff_attention<T>(in.q1, in.q2, in.k1, in.k2, in.v, in.lambda_token, out, options);
    auto lambda = copy_as<double>(in.lambda_token.view());
    diffattn::reference::diff_attention<double>(q1, q2, k1, k2, v, lambda, expected, ref_options);
  } else {
    diffattn::diff_attention<T>(in.q1, in.q2, in.k1, in.k2, in.v, in.lambda_head, out, options);
    auto lambda = copy_as<double>(in.lambda_head.view());
    diffattn::reference::diff_attention<double>(q1, q2, k1, k2, v, lambda, expected, ref_options);
  }
  EXPECT_LE(max_abs_diff(out.view(), expected.view()), contract_bound<T>(in.lambda_max, v_max, c.kv_len))
      << "differential";
}

template <class T>
class FusedTest : public ::testing::Test {};
TYPED_TEST_SUITE(FusedTest, FloatTypes);

// DIFFATTN_RANDOM_CASES (1,100) random cases per type; each runs standard and
// differential attention.
TYPED_TEST(FusedTest, RandomCasesMatchReference) {
  for (std::uint64_t seed = 1; seed <= DIFFATTN_RANDOM_CASES; ++seed) {
    run_case<TypeParam>(draw_case(seed));
    if (::testing::Test::HasFailure()) break;  // the first failing seed is the one to replay
  }
}

// Long key sequences with few query tiles take the split-keys (decoding) path.
TYPED_TEST(FusedTest, DecodingSplitKeysMatchesReference) {
  for (std::uint64_t seed = 5000; seed < 5006; ++seed) {
    Case c = draw_case(seed);
    c.batch = 1;
    c.kv_heads = 1 + seed % 2;
    c.group = seed % 3 == 0 ? 1 : 4;
    c.q_len = 1 + seed % 3;
    c.kv_len = 4096 + 1000 * (seed % 3) + 17;
    c.head_dim = 64;
    c.value_dim = 128;
    c.layout = Layout::contiguous;
    c.workspace_limit = std::size_t{64} << 20;
    c.threads = 1 + seed % 3;
    run_case<TypeParam>(c);
  }
}

// Decoding-shaped tiles (fewer rows than a batch has lanes) without the split: several
// of the long decoding key tiles (FusedPlan::decode_key_tile) and a ragged last one, in
// the drawn layouts, masks and causality.
TYPED_TEST(FusedTest, DecodingTilesMatchReference) {
  for (std::uint64_t seed = 5100; seed < 5108; ++seed) {
    Case c = draw_case(seed);
    c.batch = 1 + seed % 2;
    c.kv_heads = 1 + seed % 2;
    c.group = 1 + seed % 3;
    c.q_len = 1 + seed % 2;
    c.kv_len = diffattn::detail::FusedPlan::decode_key_tile * (2 + seed % 3) + 37 + static_cast<index_t>(seed % 5);
    c.head_dim = 64 + static_cast<index_t>(seed % 3);
    c.value_dim = 128 - static_cast<index_t>(seed % 2);
    c.workspace_limit = std::size_t{64} << 20;
    c.threads = 1 + seed % 2;
    run_case<TypeParam>(c);
  }
}

// Decoding from K/V whose kv heads interleave token by token ([B, N, H, D] storage, and
// the head-pair layouts built on it): every kv head streams in the same work item
// (Method::split_heads), over chunks with a ragged last one.
TYPED_TEST(FusedTest, DecodingInterleavedHeadsMatchesReference) {
  const Layout layouts[] = {Layout::permuted, Layout::interleaved_pairs, Layout::half_split_pairs};
  for (std::uint64_t seed = 5200; seed < 5209; ++seed) {
    Case c = draw_case(seed);
    c.batch = 1 + seed % 2;
    c.kv_heads = 2 + seed % 2;
    c.group = seed % 3 == 0 ? 1 : 2 * (seed % 3);
    // Seed 5208: 70 causal positions make two query tiles per kv head, which see
    // different keys; each item takes every kv head of one of them.
    c.q_len = seed == 5208 ? 70 : 1 + seed % 2;
    if (seed == 5208) {
      c.group = 1;
      c.causal = true;
    }
    c.kv_len = 4096 + 1000 * (seed % 2) + 29 + static_cast<index_t>(seed % 7);
    c.head_dim = 64 - static_cast<index_t>(seed % 2);
    c.value_dim = 128;
    c.layout = layouts[seed % 3];
    c.workspace_limit = std::size_t{64} << 20;
    c.threads = 1 + seed % 3;
    run_case<TypeParam>(c);
  }
}

// The accuracy contract is stated for Nk <= 4096 and D <= 256: test its corner, with
// queries that see (almost) all 4096 keys.
TYPED_TEST(FusedTest, LongestContractedSequenceMatchesReference) {
  for (const bool causal : {false, true}) {
    Case c = draw_case(6000 + causal);
    c.batch = 1;
    c.kv_heads = 1;
    c.group = 1;
    c.q_len = 48;
    c.kv_len = 4096;
    c.head_dim = 256;
    c.value_dim = 256;
    c.causal = causal;
    c.layout = Layout::contiguous;
    c.mask = MaskKind::none;
    c.workspace_limit = std::size_t{64} << 20;
    c.threads = 2;
    run_case<TypeParam>(c);
  }
}

// Two-pass differential tiles whose workspace passes FusedPlan::stream_workspace_bytes
// write it with non-temporal stores from an L1 tile: 8 query tiles of 64 rows (so the keys
// are not split as for decoding) against 8200 keys, past the threshold for both types.
TYPED_TEST(FusedTest, StreamedWorkspaceMatchesReference) {
  constexpr index_t rows = diffattn::detail::FusedPlan::target_rows, keys = 8200;
  ASSERT_TRUE(diffattn::detail::streams_workspace<TypeParam>(rows, keys));
  ASSERT_FALSE(diffattn::detail::streams_workspace<TypeParam>(rows, 1024));
  for (const bool causal : {false, true}) {
    Case c = draw_case(6100 + causal);
    c.batch = 1;
    c.kv_heads = 1;
    c.group = 1;
    c.q_len = 8 * rows;
    c.kv_len = keys;
    c.head_dim = 8;
    c.value_dim = 16;
    c.causal = causal;
    c.layout = causal ? Layout::strided : Layout::contiguous;
    c.mask = MaskKind::none;
    c.workspace_limit = std::size_t{64} << 20;
    c.threads = 2;
    run_case<TypeParam>(c);
  }
}

/// Runs standard and differential attention with `threads` and returns both outputs.
template <class T>
std::vector<Tensor<T, 4>> outputs_with_threads(const Case& c, int threads) {
  std::mt19937_64 rng(c.seed);
  Inputs<T> in(c, rng);
  AttentionOptions<T> options;
  options.causal = c.causal;
  options.mask = in.mask;
  options.threads = threads;
  options.workspace_limit = c.workspace_limit;
  std::vector<Tensor<T, 4>> outs(2, Tensor<T, 4>({c.batch, c.kv_heads * c.group, c.q_len, c.value_dim}));
  diffattn::softmax_attention<T>(in.q1, in.k1, in.v, outs[0], options);
  diffattn::diff_attention<T>(in.q1, in.q2, in.k1, in.k2, in.v, in.lambda_token, outs[1], options);
  return outs;
}

TYPED_TEST(FusedTest, BitwiseIdenticalForAnyThreadCount) {
  using T = TypeParam;
  Case base = draw_case(77);
  base.batch = 2;
  base.kv_heads = 2;
  base.group = 2;
  base.q_len = 150;
  base.kv_len = 170;
  base.head_dim = 31;
  base.value_dim = 62;
  base.causal = true;
  base.mask = MaskKind::with_masked_rows;
  std::vector<Case> cases = {base};
  Case streaming = base;  // the streaming differential method
  streaming.workspace_limit = 4096;
  cases.push_back(streaming);
  Case decoding = base;  // the split-keys method
  decoding.q_len = 2;
  decoding.kv_len = 5000;
  decoding.batch = 1;
  decoding.kv_heads = 1;
  cases.push_back(decoding);
  Case interleaved = decoding;  // every kv head per work item
  interleaved.kv_heads = 3;
  interleaved.layout = Layout::permuted;
  cases.push_back(interleaved);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.describe());
    const auto one = outputs_with_threads<T>(c, 1);
    for (int threads : {2, 3, 5}) {
      const auto many = outputs_with_threads<T>(c, threads);
      for (std::size_t i = 0; i < one.size(); ++i) {
        EXPECT_EQ(std::memcmp(one[i].data(), many[i].data(), sizeof(T) * static_cast<std::size_t>(one[i].size())), 0)
            << "threads=" << threads << " output " << i;
      }
    }
  }
}

/// Standard and differential attention (λ = 0.5, per head) of one input against the
/// reference, for every method the plan may choose: prefill rows or one decoding row,
/// two-pass or streaming; returns the worst error relative to the contract bound.
template <class T>
void expect_within_contract(TensorView<const T, 4> q, TensorView<const T, 4> k, TensorView<const T, 4> v,
                            const std::string& what) {
  const index_t heads = q.extent(1), nq = q.extent(2), dv = v.extent(3);
  const T half = T(0.5);
  const TensorView<const T, 1> lambda(&half, {1});
  const double lambda_d = 0.5;
  auto qd = copy_as<double>(q), kd = copy_as<double>(k), vd = copy_as<double>(v);
  Tensor<double, 4> expected({1, heads, nq, dv}), expected_diff({1, heads, nq, dv});
  diffattn::reference::softmax_attention<double>(qd, kd, vd, expected);
  diffattn::reference::diff_attention<double>(qd, qd, kd, kd, vd, TensorView<const double, 1>(&lambda_d, {1}),
                                              expected_diff);
  const double v_max = max_abs(v);
  for (const std::size_t limit : {std::size_t{64} << 20, std::size_t{4096}}) {
    SCOPED_TRACE(what + " workspace_limit=" + std::to_string(limit));
    AttentionOptions<T> options;
    options.workspace_limit = limit;
    Tensor<T, 4> out({1, heads, nq, dv});
    diffattn::softmax_attention<T>(q, k, v, out, options);
    EXPECT_LE(max_abs_diff(out.view(), expected.view()), contract_bound<T>(0, v_max, k.extent(2))) << "standard";
    diffattn::diff_attention<T>(q, q, k, k, v, lambda, out, options);
    EXPECT_LE(max_abs_diff(out.view(), expected_diff.view()), contract_bound<T>(0.5, v_max, k.extent(2)))
        << "differential";
  }
}

// Inputs whose rounding errors do not cancel, at the top of the contracted range: q = 0
// (every key weighs the same) with every V row equal, so each sum adds the same value
// Nk times. A running sum over all keys erred by up to 3.8e-5·max|V| at Nk = 4095.
TYPED_TEST(FusedTest, UniformWeightsOverIdenticalValueRowsMeetTheBound) {
  using T = TypeParam;
  std::mt19937_64 rng(17);
  const index_t dv = 37;
  const auto row = random_tensor<T, 1>({dv}, rng, -2, 2);
  for (const index_t nk : {index_t{2048}, index_t{4095}, index_t{4096}}) {
    for (const index_t nq : {index_t{1}, index_t{3}, index_t{40}}) {
      Tensor<T, 4> q({1, 2, nq, 16}), k({1, 1, nk, 16}), v({1, 1, nk, dv});
      fill_uniform(k.view(), rng);
      for (index_t j = 0; j < nk; ++j) {
        for (index_t c = 0; c < dv; ++c) v(0, 0, j, c) = row(c);
      }
      expect_within_contract<T>(q, k, v, "Nk=" + std::to_string(nk) + " Nq=" + std::to_string(nq));
    }
  }
}

// One key takes almost all the weight (its logit 30 above the rest) at every position
// of a 4096-key sequence; its V row is large and the rest are small.
TYPED_TEST(FusedTest, OneDominantKeyMeetsTheBound) {
  using T = TypeParam;
  std::mt19937_64 rng(23);
  const index_t nk = 4096, d = 8, dv = 33;
  for (const index_t dominant : {index_t{0}, index_t{1000}, nk - 1}) {
    Tensor<T, 4> q({1, 1, 5, d}), k({1, 1, nk, d});
    auto v = random_tensor<T, 4>({1, 1, nk, dv}, rng, -1e-3, 1e-3);
    for (index_t i = 0; i < 5; ++i) q(0, 0, i, 0) = T(1);
    fill_uniform(k.view().slice(3, 1, d), rng);
    k(0, 0, dominant, 0) = T(30 * std::sqrt(double(d)));  // scale 1/√d: logit 30
    for (index_t c = 0; c < dv; ++c) v(0, 0, dominant, c) = T(c % 2 ? 3 : -3);
    expect_within_contract<T>(q, k, v, "dominant key " + std::to_string(dominant));
  }
}

// Large finite values: V = 1e35 (float) or 1e305 (double) in every entry, q = 0. The true
// output is V (standard) and V/2 (λ = 0.5); summing unnormalized weights over 4096 keys
// overflowed to inf (standard) and inf − inf = NaN (differential).
TYPED_TEST(FusedTest, LargeFiniteValuesStayFinite) {
  using T = TypeParam;
  const T big = std::is_same_v<T, float> ? T(1e35) : T(1e305);
  const index_t nk = 4096;
  for (const index_t nq : {index_t{1}, index_t{40}}) {
    Tensor<T, 4> q({1, 1, nq, 4}), k({1, 1, nk, 4}), v({1, 1, nk, 5}, big);
    expect_within_contract<T>(q, k, v, "Nq=" + std::to_string(nq));
  }
}

// Rows the fused kernels and the reference once treated differently; both follow the
// rules of attention.hpp, in every method (prefill and decoding rows, two-pass and
// streaming):
// - a mask of lowest() on every key (PyTorch's finfo.min masking) is a finite logit:
//   the row averages V (the fused kernels gave zeros);
// - a row that sees no key is zero even with a NaN λ (the reference gave NaN), while a
//   NaN λ on a row that sees keys makes it NaN in both.
TYPED_TEST(FusedTest, EdgeRowsFollowTheSameRuleAsTheReference) {
  using T = TypeParam;
  const T lowest = std::numeric_limits<T>::lowest();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  const index_t nk = 90, d = 6, dv = 5;
  for (const index_t nq : {index_t{1}, index_t{7}}) {
    std::mt19937_64 rng(29 + nq);
    auto q = random_tensor<T, 4>({1, 2, nq, d}, rng);
    auto k = random_tensor<T, 4>({1, 1, nk, d}, rng);
    auto v = random_tensor<T, 4>({1, 1, nk, dv}, rng);
    Tensor<T, 4> mask({1, 2, nq, nk});
    Tensor<T, 3> lambda({1, 2, nq}, T(0.3));
    for (index_t j = 0; j < nk; ++j) {
      mask(0, 0, 0, j) = lowest;  // head 0, row 0: lowest() everywhere → mean of V
      mask(0, 1, nq - 1, j) = -inf;  // head 1, last row: sees no key → zeros, with a NaN λ
    }
    lambda(0, 1, nq - 1) = nan;
    if (nq > 1) lambda(0, 0, 1) = nan;  // a NaN λ on a row that sees keys → NaN
    auto qd = copy_as<double>(q.view()), kd = copy_as<double>(k.view()), vd = copy_as<double>(v.view());
    auto maskd = copy_as<double>(mask.view());
    auto lambdad = copy_as<double>(lambda.view());
    AttentionOptions<double> ref_options;
    ref_options.mask = maskd.view();
    Tensor<double, 4> expected({1, 2, nq, dv}), expected_diff({1, 2, nq, dv});
    diffattn::reference::softmax_attention<double>(qd, kd, vd, expected, ref_options);
    diffattn::reference::diff_attention<double>(qd, qd, kd, kd, vd, lambdad, expected_diff, ref_options);
    for (index_t c = 0; c < dv; ++c) {
      double mean = 0;
      for (index_t j = 0; j < nk; ++j) mean += vd(0, 0, j, c) / nk;
      EXPECT_NEAR(expected(0, 0, 0, c), mean, 1e-12);
      EXPECT_EQ(expected(0, 1, nq - 1, c), 0.0);
      EXPECT_EQ(expected_diff(0, 1, nq - 1, c), 0.0);
      if (nq > 1) {
        EXPECT_TRUE(std::isnan(expected_diff(0, 0, 1, c)));
      }
    }
    for (const std::size_t limit : {std::size_t{64} << 20, std::size_t{4096}}) {
      SCOPED_TRACE("Nq=" + std::to_string(nq) + " workspace_limit=" + std::to_string(limit));
      AttentionOptions<T> options;
      options.mask = mask.view();
      options.workspace_limit = limit;
      Tensor<T, 4> out({1, 2, nq, dv});
      diffattn::softmax_attention<T>(q, k, v, out, options);
      EXPECT_LE(max_abs_diff(out.view(), expected.view()), contract_bound<T>(0, 1, nk));
      diffattn::diff_attention<T>(q, q, k, k, v, lambda, out, options);
      EXPECT_LE(max_abs_diff(out.view(), expected_diff.view()), contract_bound<T>(0.3, 1, nk));
    }
  }
}

TYPED_TEST(FusedTest, HugeLogitsDoNotOverflow) {
  using T = TypeParam;
  // Logits of ±1e30 through q·k (scale 1): each row puts all its weight on one key.
  const index_t n = 37;
  Tensor<T, 4> q({1, 1, n, 1}), k({1, 1, n, 1}), v({1, 1, n, 3});
  for (index_t i = 0; i < n; ++i) {
    q(0, 0, i, 0) = T(1e15);
    k(0, 0, i, 0) = i == 11 ? T(1e15) : T(-1e15);
    for (index_t c = 0; c < 3; ++c) v(0, 0, i, c) = static_cast<T>(i + c);
  }
  AttentionOptions<T> options;
  options.scale = 1;
  for (int method = 0; method < 2; ++method) {
    options.workspace_limit = method == 0 ? std::size_t{64} << 20 : 4096;
    Tensor<T, 4> out({1, 1, n, 3});
    diffattn::softmax_attention<T>(q, k, v, out, options);
    for (index_t i = 0; i < n; ++i) {
      for (index_t c = 0; c < 3; ++c) EXPECT_EQ(out(0, 0, i, c), static_cast<T>(11 + c));
    }
    const T half = T(0.5);
    diffattn::diff_attention<T>(q, q, k, k, v, TensorView<const T, 1>(&half, {1}), out, options);
    for (index_t i = 0; i < n; ++i) {
      for (index_t c = 0; c < 3; ++c) EXPECT_EQ(out(0, 0, i, c), static_cast<T>(11 + c) / 2);
    }
  }
}

TYPED_TEST(FusedTest, FullyMaskedRowsAndNaNAsDocumented) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  const index_t nq = 9, nk = 70, d = 5, dv = 7;
  std::mt19937_64 rng(3);
  auto q = random_tensor<T, 4>({1, 1, nq, d}, rng);
  auto k = random_tensor<T, 4>({1, 1, nk, d}, rng);
  auto v = random_tensor<T, 4>({1, 1, nk, dv}, rng);
  Tensor<T, 4> mask({1, 1, nq, nk});
  for (index_t j = 0; j < nk; ++j) {
    mask(0, 0, 2, j) = -inf;  // row 2: fully masked → zeros
    mask(0, 0, 4, j) = j == 66 ? nan : -inf;  // row 4: one NaN among masked keys → NaN
  }
  mask(0, 0, 6, 3) = inf;  // row 6: +inf logit → NaN
  q(0, 0, 7, 1) = nan;     // row 7: NaN query → NaN
  Tensor<T, 1> lambda({1}, T(0.4));
  for (const std::size_t limit : {std::size_t{64} << 20, std::size_t{4096}}) {
    SCOPED_TRACE(limit);
    AttentionOptions<T> options;
    options.mask = mask.view();
    options.workspace_limit = limit;
    Tensor<T, 4> standard({1, 1, nq, dv}), diff({1, 1, nq, dv});
    diffattn::softmax_attention<T>(q, k, v, standard, options);
    diffattn::diff_attention<T>(q, q, k, k, v, lambda, diff, options);
    for (index_t i = 0; i < nq; ++i) {
      for (index_t c = 0; c < dv; ++c) {
        const bool nan_row = i == 4 || i == 6 || i == 7;
        EXPECT_EQ(std::isnan(standard(0, 0, i, c)), nan_row) << i << "," << c;
        EXPECT_EQ(std::isnan(diff(0, 0, i, c)), nan_row) << i << "," << c;
        if (i == 2) {
          EXPECT_EQ(standard(0, 0, i, c), T(0));
          EXPECT_EQ(diff(0, 0, i, c), T(0));
        }
      }
    }
  }
  // NaN in v at key 5 reaches every row that sees key 5 (causal: rows >= 5).
  v(0, 0, 5, 2) = nan;
  AttentionOptions<T> causal;
  causal.causal = true;
  Tensor<T, 4> q_square({1, 1, nk, d});
  fill_uniform(q_square.view(), rng);
  Tensor<T, 4> out({1, 1, nk, dv});
  diffattn::softmax_attention<T>(q_square, k, v, out, causal);
  for (index_t i = 5; i < nk; ++i) EXPECT_TRUE(std::isnan(out(0, 0, i, 2))) << i;
  for (index_t i = 0; i < nk; ++i) EXPECT_FALSE(std::isnan(out(0, 0, i, 1))) << i;
}

}  // namespace
}  // namespace diffattn_test
