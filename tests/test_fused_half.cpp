// The fused kernels on bf16 and f16 tensors: the randomized sweep of test_fused.cpp for
// each mix of element types, against the double-precision reference run on the same
// half-precision values, held to the half-precision contract of attention.hpp; decoding
// from a bf16 cache against the fp32 cache; edge rows; thread-count determinism.

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "fused_cases.hpp"
#include "helpers.hpp"

#ifndef DIFFATTN_RANDOM_CASES
#define DIFFATTN_RANDOM_CASES 1100
#endif

namespace diffattn_test {
namespace {

using diffattn::AttentionOptions;
using diffattn::bf16;
using diffattn::f16;

/// q, k/v and out element types of one call.
template <class Q, class KV, class O>
struct Mix {
  using q = Q;
  using kv = KV;
  using out = O;
};

/// Unit roundoff of a storage type: 2⁻⁸ for bf16 (8 significant bits), 2⁻¹¹ for f16.
template <class E>
double unit_roundoff() {
  if constexpr (std::is_same_v<E, bf16>) {
    return std::ldexp(1.0, -8);
  } else if constexpr (std::is_same_v<E, f16>) {
    return std::ldexp(1.0, -11);
  } else {
    return std::numeric_limits<E>::epsilon() / 2;
  }
}

/// attention.hpp's half-precision contract: the float bound, plus 2⁻⁸ where the P·V
/// product takes P rounded to bf16 (bf16 q and k/v on CPUs with AVX512_BF16), plus the
/// rounding of the output to its type.
template <class Q, class KV, class O>
double half_bound(double lambda_max, double v_max, index_t nk) {
  double extra = 0;
  if (diffattn::detail::rounds_weights_to_bf16<Q, KV>()) extra += unit_roundoff<bf16>();
  if (!std::is_same_v<O, float>) extra += unit_roundoff<O>();
  return contract_bound<float>(lambda_max, v_max, nk) + (1 + lambda_max) * v_max * extra;
}

template <class Q, class KV, class O>
void run_half_case(const Case& c) {
  SCOPED_TRACE(c.describe());
  std::mt19937_64 rng(c.seed * 7919 + 1);
  // Each input in its own type and in the case's layout; mask and λ stay float.
  const Inputs<float> floats(c, rng);
  const Inputs<Q> queries(c, rng);
  const Inputs<KV> keys_values(c, rng);
  const index_t q_heads = c.kv_heads * c.group;
  const AttentionOptions<float> options = case_options(c, floats.mask);
  const ReferenceInputs ref(c, queries, keys_values, floats);
  const auto &q1 = ref.q1, &q2 = ref.q2, &k1 = ref.k1, &k2 = ref.k2, &v = ref.v;
  const auto& ref_options = ref.options;
  const std::array<index_t, 4> out_shape{c.batch, q_heads, c.q_len, c.value_dim};
  const double v_max = max_abs(keys_values.v);

  Tensor<O, 4> out(out_shape);
  Tensor<double, 4> expected(out_shape);
  diffattn::softmax_attention(queries.q1, keys_values.k1, keys_values.v, out.view(), options);
  diffattn::reference::softmax_attention<double>(q1, k1, v, expected, ref_options);
  EXPECT_LE(max_abs_diff(out.view(), expected.view()), (half_bound<Q, KV, O>(0, v_max, c.kv_len)))
      << "standard";

  const auto& q2_in = queries.q2;
  const auto& k2_in = keys_values.k2;
  if (c.per_token_lambda) {
    diffattn::diff_attention(queries.q1, q2_in, keys_values.k1, k2_in, keys_values.v, floats.lambda_token.view(),
                             out.view(), options);
    auto lambda = copy_as<double>(floats.lambda_token.view());
    diffattn::reference::diff_attention<double>(q1, q2, k1, k2, v, lambda, expected, ref_options);
  } else {
    diffattn::diff_attention(queries.q1, q2_in, keys_values.k1, k2_in, keys_values.v, floats.lambda_head.view(),
                             out.view(), options);
    auto lambda = copy_as<double>(floats.lambda_head.view());
    diffattn::reference::diff_attention<double>(q1, q2, k1, k2, v, lambda, expected, ref_options);
  }
  EXPECT_LE(max_abs_diff(out.view(), expected.view()), (half_bound<Q, KV, O>(floats.lambda_max, v_max, c.kv_len)))
      << "differential";
}

template <class M>
class FusedHalfTest : public ::testing::Test {};

struct MixNames {
  template <class M>
  static std::string GetName(int) {
    auto name = [](auto tag) -> std::string {
      using E = typename decltype(tag)::type;
      return std::is_same_v<E, bf16> ? "bf16" : std::is_same_v<E, f16> ? "f16" : "float";
    };
    return "q_" + name(std::common_type<typename M::q>{}) + "_kv_" + name(std::common_type<typename M::kv>{}) +
           "_out_" + name(std::common_type<typename M::out>{});
  }
};

using Mixes = ::testing::Types<Mix<bf16, bf16, bf16>, Mix<bf16, bf16, float>, Mix<f16, f16, f16>,
                               Mix<f16, f16, float>, Mix<float, bf16, float>, Mix<float, f16, float>,
                               Mix<bf16, f16, bf16>>;
TYPED_TEST_SUITE(FusedHalfTest, Mixes, MixNames);

// bf16 and f16 each sweep as many cases as test_fused.cpp does per type, half with out
// of their own type (seeds 1 to 550 of 1,100) and half with float out (551 to 1,100);
// the mixed q and k/v types a quarter as many, from other seeds.
TYPED_TEST(FusedHalfTest, RandomCasesMatchReference) {
  using M = TypeParam;
  constexpr bool uniform = std::is_same_v<typename M::q, typename M::kv>;
  const std::uint64_t cases = uniform ? DIFFATTN_RANDOM_CASES / 2 : DIFFATTN_RANDOM_CASES / 4;
  const std::uint64_t first = !uniform ? 20000 : std::is_same_v<typename M::out, float> ? 1 + cases : 1;
  for (std::uint64_t seed = first; seed < first + cases; ++seed) {
    run_half_case<typename M::q, typename M::kv, typename M::out>(draw_case(seed));
    if (::testing::Test::HasFailure()) break;  // the first failing seed is the one to replay
  }
}

// Decoding shapes and split prefill tiles, Nk 4113–6113: 5000 (one token, 4 query heads
// per kv head: the decoding benchmark's tile, D 72), 5001 (one token, kv heads
// interleaved), 5003 (70 tokens, GQA, split prefill) and 5005 (2 tokens, GQA,
// interleaved); the mixed-type mixes, whose use is a float query against a half cache,
// the first.
TYPED_TEST(FusedHalfTest, DecodingAndLongSequencesMatchReference) {
  using M = TypeParam;
  constexpr bool uniform = std::is_same_v<typename M::q, typename M::kv>;
  for (const std::uint64_t seed : {5000, 5001, 5003, 5005}) {
    if (!uniform && seed != 5000) continue;
    Case c = draw_case(seed);
    c.batch = 1;
    c.kv_heads = 1 + seed % 2;
    c.group = seed % 3 == 0 ? 1 : 4;
    c.q_len = seed == 5000 ? 1 : seed % 4 == 3 ? 70 : 1 + seed % 3;
    c.kv_len = 4096 + 1000 * (seed % 3) + 17;
    c.head_dim = seed % 2 ? 64 : 72;
    c.value_dim = 128;
    c.layout = seed % 2 ? Layout::permuted : Layout::contiguous;
    c.mask = MaskKind::none;
    c.workspace_limit = std::size_t{64} << 20;
    c.threads = 1 + seed % 3;
    run_half_case<typename M::q, typename M::kv, typename M::out>(c);
  }
}

template <class E>
Tensor<E, 4> rounded(TensorView<const float, 4> x) {
  Tensor<E, 4> t(x.shape());
  diffattn::convert(x, t.view());
  return t;
}

// One decoding step of 8 query heads over a 6000-token cache, from KVCache<bf16> and
// KVCache<f16> against KVCache<float> holding the same (unrounded) rows. Besides the
// kernel's contract the difference holds the rounding of K and V themselves: V rounded by
// u moves the output by u·max|V|; each logit moves by at most u·|scale|·Σ_c|q_c·k_c|,
// which scales the weights by e^(±2δ).
template <class E>
void expect_cache_matches_float_cache() {
  std::mt19937_64 rng(41);
  const index_t n = 6000, kv_heads = 2, heads = 8, d = 128;
  for (const bool diff : {false, true}) {
    auto keys = random_tensor<float, 4>({1, n, kv_heads, d}, rng);
    auto values = random_tensor<float, 4>({1, n, kv_heads, d}, rng, -2, 2);
    auto q = random_tensor<float, 4>({1, heads, 1, d}, rng);
    diffattn::KVCache<float> exact(1, n, kv_heads, d, kv_heads, d);
    diffattn::KVCache<E> half(1, n, kv_heads, d, kv_heads, d);
    exact.append(keys, values);
    half.append(keys, values);
    const auto k_exact = diffattn::bnhd_to_bhnd(exact.keys()), v_exact = diffattn::bnhd_to_bhnd(exact.values());
    const auto k_half = diffattn::bnhd_to_bhnd(half.keys()), v_half = diffattn::bnhd_to_bhnd(half.values());
    Tensor<float, 4> from_exact({1, heads, 1, d}), from_half({1, heads, 1, d});
    const Tensor<float, 1> lambda({heads}, 0.6f);
    if (diff) {
      diffattn::diff_attention<float>(q, q, k_exact, k_exact, v_exact, lambda, from_exact.view());
      diffattn::diff_attention(q.view(), q.view(), k_half, k_half, v_half, lambda.view(), from_half.view());
    } else {
      diffattn::softmax_attention<float>(q, k_exact, v_exact, from_exact.view());
      diffattn::softmax_attention(q.view(), k_half, v_half, from_half.view());
    }
    double dot_max = 0;  // max over rows and keys of Σ_c |q_c·k_c|
    for (index_t h = 0; h < heads; ++h) {
      for (index_t j = 0; j < n; ++j) {
        double dot = 0;
        for (index_t c = 0; c < d; ++c) dot += std::abs(double(q(0, h, 0, c)) * keys(0, j, h / 4, c));
        dot_max = std::max(dot_max, dot);
      }
    }
    const double u = unit_roundoff<E>(), lambda_max = diff ? 0.6 : 0.0;
    const double v_max = max_abs(values.view());
    const double logit_shift = u * dot_max / std::sqrt(double(d));
    const double bound = contract_bound<float>(lambda_max, v_max, n) +
                         (1 + lambda_max) * v_max * (u + std::expm1(2 * logit_shift));
    EXPECT_LE(max_abs_diff(from_half.view(), from_exact.view()), bound) << (diff ? "differential" : "standard");
    EXPECT_GT(max_abs_diff(from_half.view(), from_exact.view()), 0.0) << "the cache did round";
  }
}

TEST(FusedHalf, Bf16CacheDecodingMatchesFloatCache) { expect_cache_matches_float_cache<bf16>(); }
TEST(FusedHalf, F16CacheDecodingMatchesFloatCache) { expect_cache_matches_float_cache<f16>(); }

// ±1e30 logits (bf16 has float's range) give the one-hot rows in every method; fully
// masked rows give zeros in out of bf16 too.
TEST(FusedHalf, HugeLogitsAndFullyMaskedRows) {
  const index_t n = 37;
  Tensor<bf16, 4> q({1, 1, n, 2}), k({1, 1, n, 2}), v({1, 1, n, 3});
  for (index_t i = 0; i < n; ++i) {
    q(0, 0, i, 0) = bf16(1e15f);
    k(0, 0, i, 0) = i == 11 ? bf16(1e15f) : bf16(-1e15f);
    for (index_t c = 0; c < 3; ++c) v(0, 0, i, c) = bf16(float(i + c));
  }
  Tensor<float, 4> mask({1, 1, n, n});
  for (index_t j = 0; j < n; ++j) mask(0, 0, 5, j) = -std::numeric_limits<float>::infinity();
  AttentionOptions<float> options;
  options.scale = 1;
  options.mask = mask.view();
  for (const std::size_t limit : {std::size_t{64} << 20, std::size_t{4096}}) {
    options.workspace_limit = limit;
    Tensor<bf16, 4> out({1, 1, n, 3});
    diffattn::softmax_attention(q, k, v, out.view(), options);
    const float half = 0.5f;
    Tensor<float, 4> diff_out({1, 1, n, 3});
    diffattn::diff_attention(q, q, k, k, v, TensorView<const float, 1>(&half, {1}), diff_out.view(), options);
    for (index_t i = 0; i < n; ++i) {
      for (index_t c = 0; c < 3; ++c) {
        const float expected = i == 5 ? 0.0f : float(11 + c);
        EXPECT_EQ(float(out(0, 0, i, c)), expected) << "row " << i;
        EXPECT_EQ(diff_out(0, 0, i, c), expected / 2) << "row " << i;
      }
    }
  }
}

// Outputs are bitwise identical for 1, 2 and 3 threads, in prefill and decoding.
TEST(FusedHalf, BitwiseIdenticalForAnyThreadCount) {
  std::mt19937_64 rng(43);
  for (const index_t nq : {index_t{1}, index_t{150}}) {
    const index_t nk = nq == 1 ? 9000 : 400;
    auto q = rounded<bf16>(random_tensor<float, 4>({1, 4, nq, 64}, rng).view());
    auto k = rounded<bf16>(random_tensor<float, 4>({1, 2, nk, 64}, rng).view());
    auto v = rounded<bf16>(random_tensor<float, 4>({1, 2, nk, 80}, rng).view());
    const Tensor<float, 1> lambda({4}, 0.4f);
    std::vector<Tensor<float, 4>> outs;
    for (const int threads : {1, 2, 3}) {
      AttentionOptions<float> options;
      options.threads = threads;
      options.causal = nq > 1;
      outs.emplace_back(std::array<index_t, 4>{1, 4, nq, 80});
      diffattn::diff_attention(q, q, k, k, v, lambda.view(), outs.back().view(), options);
    }
    for (std::size_t t = 1; t < outs.size(); ++t) {
      for (index_t i = 0; i < outs[0].size(); ++i) {
        ASSERT_EQ(bits_of(outs[0].data()[i]), bits_of(outs[t].data()[i])) << "Nq=" << nq << " element " << i;
      }
    }
  }
}

void expect_shape_error(const std::function<void()>& call, const std::string& fragment) {
  EXPECT_NE(shape_error_message(call).find(fragment), std::string::npos) << "expected: " << fragment;
}

// Mixed-type calls are validated like the others: errors name the argument.
TEST(FusedHalf, ShapeErrorsNameTheArgument) {
  Tensor<bf16, 4> q({1, 2, 3, 8}), k({1, 1, 5, 8}), v({1, 1, 5, 4}), bad_k({1, 1, 5, 7});
  Tensor<float, 4> out({1, 2, 3, 4}), bad_out({1, 2, 3, 5});
  Tensor<bf16, 4> bf16_out({1, 2, 3, 4});
  const Tensor<float, 1> lambda({2}, 0.5f), bad_lambda({3}, 0.5f);
  expect_shape_error([&] { diffattn::softmax_attention(q, bad_k, v, out.view()); }, "'k' dimension 3");
  expect_shape_error([&] { diffattn::softmax_attention(q, k, v, bad_out.view()); }, "'out' dimension 3");
  expect_shape_error([&] { diffattn::diff_attention(q, q, k, bad_k, v, lambda.view(), out.view()); },
                     "'k2' dimension 3");
  expect_shape_error([&] { diffattn::diff_attention(q, q, k, k, v, bad_lambda.view(), bf16_out.view()); },
                     "'lambda' dimension 0");
  // An output over its own input's memory.
  const TensorView<bf16, 4> alias(q.data(), {1, 2, 3, 4});
  expect_shape_error([&] { diffattn::softmax_attention(q, k, v, alias); }, "overlaps input 'q'");
}

}  // namespace
}  // namespace diffattn_test
