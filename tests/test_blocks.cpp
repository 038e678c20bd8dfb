// Tests for include/diffattn/blocks.hpp: the blocks against PyTorch fixtures
// (tests/fixtures/blocks, written by scripts/make_fixtures.py), and properties that need
// no fixture: incremental decoding equals one causal forward, GQA equals repeated kv
// heads, each λ mode, λ = 0, weight loading, and every validation error.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <diffattn/safetensors.hpp>

#include "helpers.hpp"
#include "random_weights.hpp"

namespace {

using diffattn_test::contains;

using diffattn::AttentionConfig;
using diffattn::DiffAttentionConfig;
using diffattn::DiffAttentionWeights;
using diffattn::KVCache;
using diffattn::LambdaMode;
using diffattn::MultiHeadAttention;
using diffattn::MultiHeadDiffAttention;
using diffattn::RopeStyle;
using diffattn::SafeTensors;
using diffattn_test::FloatTypes;
using diffattn_test::index_t;
using diffattn_test::max_abs;
using diffattn_test::max_abs_diff;
using diffattn_test::random_tensor;
using diffattn_test::Tensor;
using diffattn_test::TensorView;
using diffattn_test::tolerance;


/// Runs `fn`, expecting exception E whose message contains every one of `parts`.
template <class E, class F>
void expect_error(F&& fn, std::initializer_list<const char*> parts) {
  try {
    fn();
    ADD_FAILURE() << "nothing was thrown";
  } catch (const E& e) {
    for (const char* part : parts) {
      EXPECT_TRUE(contains(e.what(), part)) << "message: " << e.what() << "\nexpected: " << part;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "another exception: " << e.what();
  }
}

constexpr index_t kEmbed = 32;

AttentionConfig standard_config(index_t heads, index_t kv_heads, bool causal, RopeStyle rope,
                                double theta = 10000) {
  AttentionConfig c;
  c.embed_dim = kEmbed;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.causal = causal;
  c.rope = rope;
  c.rope_theta = theta;
  return c;
}

DiffAttentionConfig diff_config(index_t heads, index_t kv_heads, int layer, bool causal,
                                RopeStyle rope, LambdaMode lambda, index_t head_dim = 0) {
  DiffAttentionConfig c;
  c.embed_dim = kEmbed;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.layer = layer;
  c.causal = causal;
  c.rope = rope;
  c.lambda = lambda;
  return c;
}

// ---------------------------------------------------------------------------------------
// PyTorch fixtures

/// One file of tests/fixtures/blocks; the configs repeat the FIXTURES table of
/// scripts/make_fixtures.py (also stored in each file's "config" metadata).
struct Fixture {
  const char* name;
  bool standard;
  AttentionConfig standard_block;
  DiffAttentionConfig diff_block;
  const char* prefix;
};

const std::vector<Fixture>& fixtures() {
  static const std::vector<Fixture> list = {
      {"standard_causal_interleaved",
       true,
       standard_config(4, 4, true, RopeStyle::interleaved),
       {},
       ""},
      {"standard_gqa_half_bias", true, standard_config(4, 2, false, RopeStyle::half, 500), {}, ""},
      {"diff_reference",
       false,
       {},
       diff_config(2, 2, 1, false, RopeStyle::none, LambdaMode::reference),
       ""},
      {"diff_reference_causal_interleaved",
       false,
       {},
       diff_config(2, 2, 3, true, RopeStyle::interleaved, LambdaMode::reference),
       ""},
      {"diff_gqa_causal_half",
       false,
       {},
       diff_config(4, 2, 2, true, RopeStyle::half, LambdaMode::reference),
       ""},
      {"diff_per_head_prefix_bias",
       false,
       {},
       diff_config(2, 1, 5, true, RopeStyle::interleaved, LambdaMode::per_head),
       "layers.4.attn."},
      {"diff_v2_gqa_causal_interleaved",
       false,
       {},
       diff_config(2, 1, 1, true, RopeStyle::interleaved, LambdaMode::v2),
       ""},
      {"diff_v2_head_dim_half",
       false,
       {},
       diff_config(2, 2, 1, false, RopeStyle::half, LambdaMode::v2, 16),
       ""},
  };
  return list;
}

std::string fixture_path(const std::string& name) {
  return std::string(DIFFATTN_TEST_SOURCE_DIR) + "/fixtures/blocks/" + name + ".safetensors";
}

/// Calls check(block) with the fixture's block loaded as MultiHeadAttention<T> or
/// MultiHeadDiffAttention<T>.
template <class T, class F>
void with_fixture_block(const Fixture& fixture, const SafeTensors& file, F&& check) {
  if (fixture.standard) {
    check(MultiHeadAttention<T>::from_safetensors(fixture.standard_block, file, fixture.prefix));
  } else {
    check(MultiHeadDiffAttention<T>::from_safetensors(fixture.diff_block, file, fixture.prefix));
  }
}

/// Tolerance against PyTorch, k·eps(T)·max(max|y|, 1) with k = 64. Both sides round the
/// same chain independently: three input projections (dot products of E = 32 terms), the
/// softmax and P·V over N <= 8 keys, the per-head RMSNorm over 2d values and the output
/// projection over up to 32 terms — a handful of products of <= 32 terms each, whose
/// worst-case rounding is a few times 32·eps/2 relative; 64 keeps clear of the typical
/// error while failing on any semantic difference (a wrong eps, λ_init, pairing or RoPE
/// position moves y by 1e-4 or more). Observed: float 3.0e-7 (max|y| 1.7), double 4.6e-16.
template <class T>
double pytorch_tolerance(double max_y) {
  return tolerance<T>(64, max_y);
}

/// Float blocks are compared with PyTorch's float32 output y, double blocks with y_f64,
/// the same block computed in float64 from the same (float32-valued) weights and input.
template <class T>
Tensor<T, 3> expected_output(const SafeTensors& file) {
  return file.tensor<T, 3>(std::is_same_v<T, float> ? "y" : "y_f64");
}

template <class T>
class BlockFixtureTest : public ::testing::Test {};
TYPED_TEST_SUITE(BlockFixtureTest, FloatTypes);

TYPED_TEST(BlockFixtureTest, ForwardMatchesPyTorch) {
  using T = TypeParam;
  for (const Fixture& fixture : fixtures()) {
    SCOPED_TRACE(fixture.name);
    const SafeTensors file = SafeTensors::load(fixture_path(fixture.name));
    const Tensor<T, 3> x = file.tensor<T, 3>("x");
    const Tensor<T, 3> expected = expected_output<T>(file);
    with_fixture_block<T>(fixture, file, [&](const auto& block) {
      const Tensor<T, 3> y = block.forward(x);
      ASSERT_EQ(y.shape(), expected.shape());
      EXPECT_LE(max_abs_diff(y.view(), expected.view()),
                pytorch_tolerance<T>(max_abs(expected.view())));
    });
  }
}

/// The output of `block` over x computed through `cache` (empty, x.extent(1) tokens of
/// room): a 5-token prompt, then one token at a time.
template <class Block, class T, class Cache>
Tensor<T, 3> prompt_then_tokens(const Block& block, const Tensor<T, 3>& x, KVCache<Cache>& cache) {
  const index_t tokens = x.extent(1);
  Tensor<T, 3> y(x.shape());
  for (index_t begin = 0; begin < tokens;) {
    const index_t end = begin == 0 ? 5 : begin + 1;
    const Tensor<T, 3> part = block.forward(x.view().slice(1, begin, end), cache);
    diffattn_test::for_each_index(part.shape(), [&](const auto& i) {
      y(i[0], begin + i[1], i[2]) = part(i[0], i[1], i[2]);
    });
    begin = end;
  }
  EXPECT_EQ(cache.length(), tokens);
  return y;
}

bool is_causal(const Fixture& fixture) {
  return fixture.standard ? fixture.standard_block.causal : fixture.diff_block.causal;
}

TYPED_TEST(BlockFixtureTest, IncrementalDecodingMatchesPyTorch) {
  using T = TypeParam;
  for (const Fixture& fixture : fixtures()) {
    if (!is_causal(fixture)) continue;
    SCOPED_TRACE(fixture.name);
    const SafeTensors file = SafeTensors::load(fixture_path(fixture.name));
    const Tensor<T, 3> x = file.tensor<T, 3>("x");
    const Tensor<T, 3> expected = expected_output<T>(file);
    with_fixture_block<T>(fixture, file, [&](const auto& block) {
      auto cache = block.make_cache(x.extent(0), x.extent(1));
      static_assert(std::is_same_v<decltype(cache), KVCache<T>>);
      const Tensor<T, 3> y = prompt_then_tokens(block, x, cache);
      EXPECT_LE(max_abs_diff(y.view(), expected.view()),
                pytorch_tolerance<T>(max_abs(expected.view())));
    });
  }
}

TEST(BlockFixtures, MetadataAgreesWithTheTable) {
  for (const Fixture& fixture : fixtures()) {
    SCOPED_TRACE(fixture.name);
    const SafeTensors file = SafeTensors::load(fixture_path(fixture.name));
    const auto& metadata = file.metadata();
    ASSERT_EQ(metadata.count("config"), 1u);
    const std::string& config = metadata.at("config");
    EXPECT_TRUE(
        contains(config, fixture.standard ? "\"block\": \"standard\"" : "\"block\": \"diff\""))
        << config;
    EXPECT_TRUE(contains(config, std::string("\"prefix\": \"") + fixture.prefix + "\"")) << config;
    if (!fixture.standard) {
      const std::string mode = std::string("\"lambda_mode\": \"") +
                               diffattn::lambda_mode_name(fixture.diff_block.lambda) + "\"";
      EXPECT_TRUE(contains(config, mode)) << config;
      EXPECT_TRUE(contains(config, std::string("\"rope\": \"") +
                                       diffattn::rope_style_name(fixture.diff_block.rope) + "\""))
          << config;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Properties with random weights

/// The output of `block` over x, computed `chunks` tokens at a time through a KV cache.
template <class Cache, class Block, class T>
Tensor<T, 3> forward_in_chunks_with(const Block& block, const Tensor<T, 3>& x,
                                    const std::vector<index_t>& chunks) {
  auto cache = block.template make_cache<Cache>(x.extent(0), x.extent(1));
  Tensor<T, 3> y(x.shape());
  index_t begin = 0;
  for (index_t chunk : chunks) {
    const Tensor<T, 3> part = block.forward(x.view().slice(1, begin, begin + chunk), cache);
    diffattn_test::for_each_index(
        part.shape(), [&](const auto& i) { y(i[0], begin + i[1], i[2]) = part(i[0], i[1], i[2]); });
    begin += chunk;
  }
  EXPECT_EQ(cache.length(), begin);
  return y;
}

template <class Block, class T>
Tensor<T, 3> forward_in_chunks(const Block& block, const Tensor<T, 3>& x,
                               const std::vector<index_t>& chunks) {
  return forward_in_chunks_with<T>(block, x, chunks);
}

/// Same-implementation comparisons (cache vs full, GQA vs repeated heads): the kernels
/// tile a 1-token query differently from a 9-token one and the GEMMs may block
/// differently, so results differ by reassociation only: k = 16 roundings on max|y|.
/// Observed: 2.2·eps·max|y| in float and in double.
template <class T>
double same_math_tolerance(double max_y) {
  return tolerance<T>(16, max_y);
}

template <class T>
class BlockPropertyTest : public ::testing::Test {};
TYPED_TEST_SUITE(BlockPropertyTest, FloatTypes);

TYPED_TEST(BlockPropertyTest, IncrementalEqualsFullCausalForward) {
  using T = TypeParam;
  std::mt19937_64 rng(41);
  const std::vector<index_t> chunks = {3, 1, 2, 1, 1, 1};  // 9 tokens
  for (RopeStyle rope : {RopeStyle::none, RopeStyle::interleaved, RopeStyle::half}) {
    for (index_t kv_heads : {4, 2, 1}) {
      SCOPED_TRACE(testing::Message() << diffattn::rope_style_name(rope) << " Hkv " << kv_heads);
      const Tensor<T, 3> x = random_tensor<T, 3>({2, 9, kEmbed}, rng);
      {
        const MultiHeadAttention<T> block(
            standard_config(8, 2 * kv_heads, true, rope),
            examples::random_weights<T>(standard_config(8, 2 * kv_heads, true, rope), 1));
        const Tensor<T, 3> full = block.forward(x);
        EXPECT_LE(max_abs_diff(forward_in_chunks(block, x, chunks).view(), full.view()),
                  same_math_tolerance<T>(max_abs(full.view())));
      }
      for (LambdaMode mode : {LambdaMode::reference, LambdaMode::per_head, LambdaMode::v2}) {
        SCOPED_TRACE(diffattn::lambda_mode_name(mode));
        const DiffAttentionConfig config = diff_config(4, kv_heads, 2, true, rope, mode);
        const MultiHeadDiffAttention<T> block(config, examples::random_weights<T>(config, 2));
        const Tensor<T, 3> full = block.forward(x);
        EXPECT_LE(max_abs_diff(forward_in_chunks(block, x, chunks).view(), full.view()),
                  same_math_tolerance<T>(max_abs(full.view())));
      }
    }
  }
}

TYPED_TEST(BlockPropertyTest, RopePositionsContinueFromTheCache) {
  using T = TypeParam;
  std::mt19937_64 rng(42);
  const DiffAttentionConfig config =
      diff_config(2, 2, 1, true, RopeStyle::interleaved, LambdaMode::reference);
  const MultiHeadDiffAttention<T> block(config, examples::random_weights<T>(config, 3));
  const Tensor<T, 3> x = random_tensor<T, 3>({1, 6, kEmbed}, rng);
  const Tensor<T, 3> full = block.forward(x);

  auto cache = block.make_cache(1, 6);
  block.forward(x.view().slice(1, 0, 5), cache);
  EXPECT_EQ(cache.length(), 5);
  const Tensor<T, 3> last = block.forward(x.view().slice(1, 5, 6), cache);
  EXPECT_LE(max_abs_diff(last.view(), full.view().slice(1, 5, 6)),
            same_math_tolerance<T>(max_abs(full.view())));

  // clear() restarts the positions at 0: the same prompt and token give the same output.
  cache.clear();
  block.forward(x.view().slice(1, 0, 5), cache);
  const Tensor<T, 3> again = block.forward(x.view().slice(1, 5, 6), cache);
  EXPECT_EQ(max_abs_diff(again.view(), last.view()), 0.0);
}

/// [blocks·width, E] → [blocks·group·width, E]: row block b of the result is row block
/// b / group of w, as a GQA kv head is shared by `group` query heads.
template <class T>
Tensor<T, 2> repeat_row_blocks(const Tensor<T, 2>& w, index_t width, index_t group) {
  const index_t blocks = w.extent(0) / width;
  Tensor<T, 2> out({blocks * group * width, w.extent(1)});
  for (index_t b = 0; b < blocks * group; ++b) {
    for (index_t r = 0; r < width; ++r) {
      for (index_t c = 0; c < w.extent(1); ++c)
        out(b * width + r, c) = w((b / group) * width + r, c);
    }
  }
  return out;
}

TYPED_TEST(BlockPropertyTest, GqaEqualsRepeatedKvHeads) {
  using T = TypeParam;
  std::mt19937_64 rng(43);
  const Tensor<T, 3> x = random_tensor<T, 3>({2, 5, kEmbed}, rng);
  {
    // Standard: query head h reads kv head h / (Hq / Hkv).
    const AttentionConfig gqa = standard_config(8, 2, true, RopeStyle::half);
    auto weights = examples::random_weights<T>(gqa, 4);
    const MultiHeadAttention<T> grouped(gqa, weights);
    const index_t d = 4;
    weights.k_proj.weight = repeat_row_blocks(weights.k_proj.weight, d, 4);
    weights.v_proj.weight = repeat_row_blocks(weights.v_proj.weight, d, 4);
    const MultiHeadAttention<T> repeated(standard_config(8, 8, true, RopeStyle::half), weights);
    const Tensor<T, 3> y = grouped.forward(x);
    EXPECT_LE(max_abs_diff(y.view(), repeated.forward(x).view()),
              same_math_tolerance<T>(max_abs(y.view())));
  }
  for (LambdaMode mode : {LambdaMode::reference, LambdaMode::v2}) {
    SCOPED_TRACE(diffattn::lambda_mode_name(mode));
    // Differential head i reads kv head i / (H / Hkv); in V1 a kv head is the pair
    // (k1, k2) of 2d key rows and 2d value rows, in V2 one key and one value head of d
    // rows each — so q1 meets k1 and q2 meets k2 (multihead_flashdiff_1.py's pairing).
    const DiffAttentionConfig gqa = diff_config(4, 2, 3, true, RopeStyle::interleaved, mode);
    auto weights = examples::random_weights<T>(gqa, 5);
    const MultiHeadDiffAttention<T> grouped(gqa, weights);
    const index_t d = 4, kv_width = mode == LambdaMode::v2 ? d : 2 * d;
    weights.k_proj.weight = repeat_row_blocks(weights.k_proj.weight, kv_width, 2);
    weights.v_proj.weight = repeat_row_blocks(weights.v_proj.weight, kv_width, 2);
    const MultiHeadDiffAttention<T> repeated(
        diff_config(4, 4, 3, true, RopeStyle::interleaved, mode), weights);
    const Tensor<T, 3> y = grouped.forward(x);
    EXPECT_LE(max_abs_diff(y.view(), repeated.forward(x).view()),
              same_math_tolerance<T>(max_abs(y.view())));
  }
}

TYPED_TEST(BlockPropertyTest, PerHeadLambdaWithEqualRowsIsTheReferenceMode) {
  using T = TypeParam;
  std::mt19937_64 rng(44);
  const DiffAttentionConfig shared =
      diff_config(2, 2, 4, false, RopeStyle::half, LambdaMode::reference);
  const auto weights = examples::random_weights<T>(shared, 6);
  const MultiHeadDiffAttention<T> reference(shared, weights);

  DiffAttentionConfig per_head_config = shared;
  per_head_config.lambda = LambdaMode::per_head;
  auto per_head_weights = weights;
  for (Tensor<T, 2>* vector : {&per_head_weights.lambda_q1, &per_head_weights.lambda_k1,
                               &per_head_weights.lambda_q2, &per_head_weights.lambda_k2}) {
    *vector = repeat_row_blocks(*vector, 1, 2);  // [1, d] → [2, d], both rows equal
  }
  const MultiHeadDiffAttention<T> per_head(per_head_config, per_head_weights);
  ASSERT_EQ(per_head.lambda().extent(0), 2);
  EXPECT_EQ(per_head.lambda()(0), reference.lambda()(0));
  EXPECT_EQ(per_head.lambda()(1), reference.lambda()(0));
  const Tensor<T, 3> x = random_tensor<T, 3>({2, 4, kEmbed}, rng);
  EXPECT_EQ(max_abs_diff(per_head.forward(x).view(), reference.forward(x).view()), 0.0);

  // λ of each head from its own row, with λ_init of layer 4.
  const double lambda_init = diffattn::lambda_init(4);
  EXPECT_EQ(reference.lambda_init(), lambda_init);
  per_head_weights.lambda_q1(1, 0) += T(0.5);
  const MultiHeadDiffAttention<T> distinct(per_head_config, per_head_weights);
  EXPECT_EQ(distinct.lambda()(0), per_head.lambda()(0));
  EXPECT_NE(distinct.lambda()(1), per_head.lambda()(1));
  EXPECT_NEAR(distinct.lambda()(1),
              diffattn::lambda_reparam(per_head_weights.lambda_q1.view().select(0, 1),
                                       per_head_weights.lambda_k1.view().select(0, 1),
                                       per_head_weights.lambda_q2.view().select(0, 1),
                                       per_head_weights.lambda_k2.view().select(0, 1), lambda_init),
              tolerance<T>(1, 1));
}

TYPED_TEST(BlockPropertyTest, SecondMapHasNoEffectWhenLambdaIsZero) {
  using T = TypeParam;
  std::mt19937_64 rng(45);
  const int layer = 2;
  const DiffAttentionConfig config =
      diff_config(2, 2, layer, true, RopeStyle::interleaved, LambdaMode::per_head);
  auto weights = examples::random_weights<T>(config, 7);
  // λ = exp(0) − exp(s²) + λ_init = 0 for s² = ln(1 + λ_init), up to rounding of s.
  const double s = std::sqrt(std::log(1 + diffattn::lambda_init(layer)));
  const index_t d = 8;  // E / H / 2
  for (Tensor<T, 2>* vector :
       {&weights.lambda_q1, &weights.lambda_k1, &weights.lambda_q2, &weights.lambda_k2}) {
    *vector = Tensor<T, 2>({2, d});
  }
  for (index_t h = 0; h < 2; ++h) {
    weights.lambda_q2(h, 0) = static_cast<T>(s);
    weights.lambda_k2(h, 0) = static_cast<T>(s);
  }
  const MultiHeadDiffAttention<T> block(config, weights);
  const double residual_lambda = std::abs(static_cast<double>(block.lambda()(0)));
  EXPECT_LE(residual_lambda, tolerance<T>(8, 1));

  // Replace the q2 and k2 rows (heads 2i+1 of the [2H, d] and [2Hkv, d] views).
  auto other = weights;
  for (auto* w : {&other.q_proj.weight, &other.k_proj.weight}) {
    for (index_t row = 0; row < w->extent(0); ++row) {
      if ((row / d) % 2 == 1) {
        for (index_t c = 0; c < kEmbed; ++c)
          (*w)(row, c) = static_cast<T>(0.3 * std::cos(row + 7.0 * c));
      }
    }
  }
  const MultiHeadDiffAttention<T> changed(config, other);
  const Tensor<T, 3> x = random_tensor<T, 3>({2, 6, kEmbed}, rng);
  const Tensor<T, 3> y = block.forward(x);
  // Only the residual λ·softmax(q2·k2ᵀ)·v remains, amplified by RMSNorm and the output
  // projection by a small factor; 64·residual + 16 roundings covers it.
  EXPECT_LE(max_abs_diff(y.view(), changed.forward(x).view()),
            (64 * residual_lambda + tolerance<T>(16, 1)) * std::max(max_abs(y.view()), 1.0));
}

TYPED_TEST(BlockPropertyTest, V2WithLambdaZeroIsStandardAttentionOnTheFirstMaps) {
  using T = TypeParam;
  std::mt19937_64 rng(46);
  // λ = sigmoid(−100) ≈ 4e-44 for every token and head: head i is softmax(q_{2i}·kᵀ)·v,
  // a standard block with H heads, Hkv kv heads of width d and the even q rows.
  const DiffAttentionConfig config = diff_config(4, 2, 1, true, RopeStyle::half, LambdaMode::v2);
  auto weights = examples::random_weights<T>(config, 8);
  weights.lambda_proj.weight = Tensor<T, 2>({4, kEmbed});
  weights.lambda_proj.bias = Tensor<T, 1>({4}, T(-100));
  const MultiHeadDiffAttention<T> diff(config, weights);

  const index_t d = 4;
  diffattn::AttentionWeights<T> standard_weights;
  standard_weights.q_proj.weight = Tensor<T, 2>({4 * d, kEmbed});
  for (index_t head = 0; head < 4; ++head) {
    for (index_t r = 0; r < d; ++r) {
      for (index_t c = 0; c < kEmbed; ++c) {
        standard_weights.q_proj.weight(head * d + r, c) =
            weights.q_proj.weight(2 * head * d + r, c);
      }
    }
  }
  standard_weights.k_proj = weights.k_proj;
  standard_weights.v_proj = weights.v_proj;
  standard_weights.out_proj = weights.out_proj;
  AttentionConfig standard = standard_config(4, 2, true, RopeStyle::half);
  standard.head_dim = d;
  const MultiHeadAttention<T> reference(standard, standard_weights);

  const Tensor<T, 3> x = random_tensor<T, 3>({2, 7, kEmbed}, rng);
  const Tensor<T, 3> y = diff.forward(x);
  EXPECT_LE(max_abs_diff(y.view(), reference.forward(x).view()),
            same_math_tolerance<T>(max_abs(y.view())));
}

TYPED_TEST(BlockPropertyTest, StridedInputAndThreadCountDoNotChangeTheOutput) {
  using T = TypeParam;
  std::mt19937_64 rng(47);
  DiffAttentionConfig config = diff_config(2, 1, 1, true, RopeStyle::half, LambdaMode::reference);
  const auto weights = examples::random_weights<T>(config, 9);
  const MultiHeadDiffAttention<T> block(config, weights);
  // x stored token-major [N, B, E] and seen as [B, N, E].
  const Tensor<T, 3> nbe = random_tensor<T, 3>({5, 2, kEmbed}, rng);
  const TensorView<const T, 3> strided = nbe.view().transpose(0, 1);
  const Tensor<T, 3> contiguous = diffattn_test::copy_as<T>(strided);
  const Tensor<T, 3> y = block.forward(contiguous);
  EXPECT_EQ(max_abs_diff(block.forward(strided).view(), y.view()), 0.0);

  config.threads = 1;
  const MultiHeadDiffAttention<T> one_thread(config, weights);
  EXPECT_EQ(max_abs_diff(one_thread.forward(contiguous).view(), y.view()), 0.0);
}

TYPED_TEST(BlockPropertyTest, EmptyInputs) {
  using T = TypeParam;
  const DiffAttentionConfig config = diff_config(2, 2, 1, true, RopeStyle::half, LambdaMode::v2);
  const MultiHeadDiffAttention<T> block(config, examples::random_weights<T>(config, 10));
  const Tensor<T, 3> no_tokens({2, 0, kEmbed});
  EXPECT_EQ(block.forward(no_tokens).shape(), (std::array<index_t, 3>{2, 0, kEmbed}));
  const Tensor<T, 3> no_batch({0, 3, kEmbed});
  EXPECT_EQ(block.forward(no_batch).shape(), (std::array<index_t, 3>{0, 3, kEmbed}));
  auto cache = block.make_cache(2, 4);
  EXPECT_EQ(block.forward(no_tokens, cache).shape(), (std::array<index_t, 3>{2, 0, kEmbed}));
  EXPECT_EQ(cache.length(), 0);
}

TYPED_TEST(BlockPropertyTest, SafetensorsRoundTrip) {
  using T = TypeParam;
  std::mt19937_64 rng(48);
  const Tensor<T, 3> x = random_tensor<T, 3>({1, 4, kEmbed}, rng);
  for (LambdaMode mode : {LambdaMode::reference, LambdaMode::per_head, LambdaMode::v2}) {
    SCOPED_TRACE(diffattn::lambda_mode_name(mode));
    const DiffAttentionConfig config = diff_config(2, 1, 3, true, RopeStyle::interleaved, mode);
    auto weights = examples::random_weights<T>(config, 11);
    weights.q_proj.bias = random_tensor<T, 1>({32}, rng);
    const MultiHeadDiffAttention<T> block(config, weights);

    // Written as a checkpoint would be: nn.Linear names, λ vectors [d] in reference mode,
    // out_proj (not o_proj) even for v2.
    diffattn::SafeTensorsWriter writer;
    const std::string prefix = "model.layers.2.self_attn.";
    writer.add(prefix + "q_proj.weight", weights.q_proj.weight);
    writer.add(prefix + "q_proj.bias", weights.q_proj.bias);
    writer.add(prefix + "k_proj.weight", weights.k_proj.weight);
    writer.add(prefix + "v_proj.weight", weights.v_proj.weight);
    writer.add(prefix + "out_proj.weight", weights.out_proj.weight);
    if (mode == LambdaMode::v2) {
      writer.add(prefix + "lambda_proj.weight", weights.lambda_proj.weight);
    } else {
      const std::pair<const char*, const Tensor<T, 2>*> vectors[4] = {
          {"lambda_q1", &weights.lambda_q1},
          {"lambda_k1", &weights.lambda_k1},
          {"lambda_q2", &weights.lambda_q2},
          {"lambda_k2", &weights.lambda_k2}};
      for (const auto& [name, tensor] : vectors) {
        if (mode == LambdaMode::per_head) {
          writer.add(prefix + name, *tensor);
        } else {
          writer.add(prefix + name, tensor->view().select(0, 0));
        }
      }
      writer.add(prefix + "subln.weight", weights.subln_weight);
    }
    const SafeTensors file = SafeTensors::parse(writer.bytes());
    const auto loaded = MultiHeadDiffAttention<T>::from_safetensors(config, file, prefix);
    EXPECT_EQ(max_abs_diff(loaded.forward(x).view(), block.forward(x).view()), 0.0);
  }
}

TEST(BlockConfigs, StandardCounterpartOfADiffBlock) {
  DiffAttentionConfig diff = diff_config(4, 2, 3, true, RopeStyle::half, LambdaMode::reference);
  diff.rope_theta = 500;
  diff.threads = 1;
  const AttentionConfig standard = diff.standard();
  EXPECT_EQ(standard.embed_dim, kEmbed);
  EXPECT_EQ(standard.num_heads, 8);
  EXPECT_EQ(standard.num_kv_heads, 4);
  EXPECT_EQ(standard.head_dim, 4);
  EXPECT_TRUE(standard.causal);
  EXPECT_EQ(standard.rope, RopeStyle::half);
  EXPECT_EQ(standard.rope_theta, 500);
  EXPECT_EQ(standard.threads, 1);

  // Resolved configs report the defaults; the two blocks have the same projections.
  const MultiHeadDiffAttention<float> diff_block(diff, examples::random_weights<float>(diff, 1));
  const MultiHeadAttention<float> standard_block(standard,
                                                 examples::random_weights<float>(standard, 1));
  EXPECT_EQ(diff_block.config().head_dim, 4);
  EXPECT_EQ(standard_block.config().head_dim, 4);
  EXPECT_EQ(diff_block.weights().q_proj.weight.shape(),
            standard_block.weights().q_proj.weight.shape());
  EXPECT_EQ(diff_block.weights().k_proj.weight.shape(),
            standard_block.weights().k_proj.weight.shape());
  EXPECT_EQ(diff_block.weights().v_proj.weight.shape(),
            standard_block.weights().v_proj.weight.shape());
  DiffAttentionConfig defaults = diff;
  defaults.num_kv_heads = 0;
  EXPECT_EQ(MultiHeadDiffAttention<float>(defaults, examples::random_weights<float>(defaults, 1))
                .config()
                .num_kv_heads,
            4);
}

TEST(BlockConfigs, RandomWeightsAreDeterministic) {
  const DiffAttentionConfig config =
      diff_config(2, 2, 1, false, RopeStyle::none, LambdaMode::per_head);
  const auto a = examples::random_weights<double>(config, 5);
  const auto b = examples::random_weights<double>(config, 5);
  const auto c = examples::random_weights<double>(config, 6);
  EXPECT_EQ(max_abs_diff(a.q_proj.weight.view(), b.q_proj.weight.view()), 0.0);
  EXPECT_EQ(max_abs_diff(a.lambda_k2.view(), b.lambda_k2.view()), 0.0);
  EXPECT_GT(max_abs_diff(a.q_proj.weight.view(), c.q_proj.weight.view()), 0.0);
  // nn.Linear's bound 1/√E and the reference's λ init scale.
  EXPECT_LE(max_abs(a.q_proj.weight.view()), 1 / std::sqrt(double(kEmbed)));
  EXPECT_LE(max_abs(a.lambda_q1.view()), 0.6);
  EXPECT_EQ(a.subln_weight.shape()[0], 16);
}

// ---------------------------------------------------------------------------------------
// Half-precision KV caches

/// How a cache element type rounds a float e: to within u·|e| + a, u the unit roundoff
/// (bf16 keeps 8 significant bits, f16 11) and a half the spacing of its subnormals.
template <class C>
struct CacheRounding;
template <>
struct CacheRounding<diffattn::bf16> {
  static double u() { return std::ldexp(1.0, -8); }
  static double a() { return std::ldexp(1.0, -134); }
};
template <>
struct CacheRounding<diffattn::f16> {
  static double u() { return std::ldexp(1.0, -11); }
  static double a() { return std::ldexp(1.0, -25); }
};

/// x·Wᵀ + b in double, rows [B·N, E] → [B, N, heads, width].
Tensor<double, 4> project_exact(const Tensor<float, 3>& x, const diffattn::Linear<float>& layer,
                                index_t heads, index_t width) {
  const index_t batch = x.extent(0), tokens = x.extent(1);
  Tensor<double, 4> out({batch, tokens, heads, width});
  const auto rows = out.view().reshape<3>({batch, tokens, heads * width});
  diffattn_test::for_each_index(rows.shape(), [&](const auto& i) {
    double sum = layer.bias.empty() ? 0.0 : static_cast<double>(layer.bias(i[2]));
    for (index_t c = 0; c < x.extent(2); ++c) {
      sum += static_cast<double>(x(i[0], i[1], c)) * static_cast<double>(layer.weight(i[2], c));
    }
    rows(i[0], i[1], i[2]) = sum;
  });
  return out;
}

/// An upper bound on max|y_C − y_float| for a causal float block decoding x (from position
/// 0) from a KVCache<C> instead of a KVCache<float>, in exact arithmetic; the fp32
/// rounding of the two runs is left to the caller's tolerance. Computed in double from
/// the block's weights and x, for each token i, batch row and output head:
/// - each cached element e becomes ê with |ê − e| <= u·|e| + a (CacheRounding);
/// - a logit of query q and key k moves by at most δ = scale·Σ_c |q_c|·(u·|k_c| + a) (q
///   and k after RoPE; the largest over the keys j <= i), so each softmax weight p_j by a
///   factor within e^(±2δ) and Σ_j |p̂_j − p_j| <= e^(2δ) − 1 (0 when one key is seen);
/// - element c of a head h = Σ_j (p1_j − λ·p2_j)·v_j (p2 = 0 for a standard head) then
///   moves by at most Σ_j |p1_j − λ·p2_j|·(u·|v_jc| + a) (V's rounding) plus
///   (e^(2δ1) − 1 + |λ|·(e^(2δ2) − 1))·max_j |v̂_jc| (K's);
/// - y_r = Σ_c Wo_rc·h_c moves by at most Σ_c |Wo_rc|·|Δh_c|. In V1 the per-head RMSNorm
///   comes first: h / rms(h) (rms with eps over the 2d values) moves by at most
///   2·‖Δh‖₂ / rms(ĥ) in the 2-norm, where rms(ĥ) >= rms(h) − ‖Δh‖₂/√(2d) (rms is
///   1/√(2d)-Lipschitz), and is scaled by s = subln.weight·(1 − λ_init): y_r moves by at
///   most ‖Wo_r,head ∘ s‖₂ times that.
template <class C, class Block>
double cache_rounding_bound(const Block& block, const Tensor<float, 3>& x) {
  const double u = CacheRounding<C>::u(), a = CacheRounding<C>::a();
  const auto& w = block.weights();
  const auto& config = block.config();
  constexpr bool standard = std::is_same_v<Block, MultiHeadAttention<float>>;
  EXPECT_TRUE(config.causal) << "the bound is for causal decoding";
  const index_t d = config.head_dim;
  index_t q_heads = 0, k_heads = 0, v_width = d, maps = 1;
  bool v1 = false;
  if constexpr (standard) {
    q_heads = config.num_heads;
    k_heads = config.num_kv_heads;
  } else {
    v1 = config.lambda != LambdaMode::v2;
    q_heads = 2 * config.num_heads;
    k_heads = v1 ? 2 * config.num_kv_heads : config.num_kv_heads;
    v_width = v1 ? 2 * d : d;
    maps = 2;
  }
  const index_t out_heads = q_heads / maps, group = out_heads / config.num_kv_heads;
  const index_t batch = x.extent(0), tokens = x.extent(1);

  Tensor<double, 4> q = project_exact(x, w.q_proj, q_heads, d);
  Tensor<double, 4> k = project_exact(x, w.k_proj, k_heads, d);
  const Tensor<double, 4> v = project_exact(x, w.v_proj, config.num_kv_heads, v_width);
  diffattn::apply_rope(q.view(), 0, config.rope, config.rope_theta);
  diffattn::apply_rope(k.view(), 0, config.rope, config.rope_theta);
  // λ of output head o at token i of row b.
  Tensor<double, 4> lambda_v2;
  if constexpr (!standard) {
    if (!v1) lambda_v2 = project_exact(x, w.lambda_proj, out_heads, 1);
  }
  auto lambda = [&](index_t b, index_t i, index_t o) -> double {
    if constexpr (standard) {
      return 0;
    } else {
      if (!v1) return 1 / (1 + std::exp(-lambda_v2(b, i, o, 0)));
      return block.lambda()(block.lambda().extent(0) == 1 ? 0 : o);
    }
  };
  const double scale = 1 / std::sqrt(static_cast<double>(d));

  double bound = 0;
  for (index_t b = 0; b < batch; ++b) {
    for (index_t i = 0; i < tokens; ++i) {
      // Head outputs h and bounds on their changes Δh, [out_heads, v_width].
      Tensor<double, 2> h({out_heads, v_width}), dh({out_heads, v_width});
      for (index_t o = 0; o < out_heads; ++o) {
        const index_t kv = o / group;
        std::vector<double> coefficient(static_cast<std::size_t>(i + 1), 0.0);
        std::vector<double> k_drift(static_cast<std::size_t>(v_width), 0.0);
        for (index_t m = 0; m < maps; ++m) {
          const index_t qh = maps * o + m, kh = v1 ? 2 * kv + m : kv;
          const double factor = m == 0 ? 1 : -lambda(b, i, o);
          std::vector<double> logits;
          double delta = 0;
          for (index_t j = 0; j <= i; ++j) {
            double logit = 0, drift = 0;
            for (index_t c = 0; c < d; ++c) {
              logit += q(b, i, qh, c) * k(b, j, kh, c);
              drift += std::abs(q(b, i, qh, c)) * (u * std::abs(k(b, j, kh, c)) + a);
            }
            logits.push_back(scale * logit);
            delta = std::max(delta, scale * drift);
          }
          const double top = *std::max_element(logits.begin(), logits.end());
          double total = 0;
          for (double& l : logits) total += (l = std::exp(l - top));
          for (index_t j = 0; j <= i; ++j) coefficient[j] += factor * logits[j] / total;
          const double change = i == 0 ? 0.0 : std::expm1(2 * delta);
          for (index_t c = 0; c < v_width; ++c) {
            double max_v = 0;
            for (index_t j = 0; j <= i; ++j) max_v = std::max(max_v, std::abs(v(b, j, kv, c)));
            k_drift[c] += std::abs(factor) * change * ((1 + u) * max_v + a);
          }
        }
        for (index_t c = 0; c < v_width; ++c) {
          double value = 0, v_drift = 0;
          for (index_t j = 0; j <= i; ++j) {
            value += coefficient[j] * v(b, j, kv, c);
            v_drift += std::abs(coefficient[j]) * (u * std::abs(v(b, j, kv, c)) + a);
          }
          h(o, c) = value;
          dh(o, c) = v_drift + k_drift[c];
        }
      }
      // How far each head's change moves y_r.
      const auto& wo = w.out_proj.weight;
      for (index_t r = 0; r < wo.extent(0); ++r) {
        double sum = 0;
        for (index_t o = 0; o < out_heads; ++o) {
          if (!v1) {
            for (index_t c = 0; c < v_width; ++c) {
              sum += std::abs(static_cast<double>(wo(r, o * v_width + c))) * dh(o, c);
            }
            continue;
          }
          if constexpr (!standard) {
            double squares = 0, change = 0, weights = 0;
            for (index_t c = 0; c < v_width; ++c) {
              const double s = static_cast<double>(w.subln_weight(c)) * (1 - block.lambda_init());
              squares += h(o, c) * h(o, c);
              change += dh(o, c) * dh(o, c);
              weights += std::pow(static_cast<double>(wo(r, o * v_width + c)) * s, 2);
            }
            const double rms = std::sqrt(squares / static_cast<double>(v_width) + Block::subln_eps);
            const double rms_drop = std::sqrt(change / static_cast<double>(v_width));
            EXPECT_GT(rms, rms_drop) << "the bound needs rms(h) above its change";
            sum += std::sqrt(weights) * 2 * std::sqrt(change) / (rms - rms_drop);
          }
        }
        bound = std::max(bound, sum);
      }
    }
  }
  return bound;
}

struct HalfTypeNames {
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, diffattn::bf16> ? "bf16" : "f16";
  }
};

template <class C>
class BlockHalfCacheTest : public ::testing::Test {};
using HalfTypes = ::testing::Types<diffattn::bf16, diffattn::f16>;
TYPED_TEST_SUITE(BlockHalfCacheTest, HalfTypes, HalfTypeNames);

// The fixtures' decoding check with the cache in bf16 or f16: within PyTorch's fp32
// tolerance plus cache_rounding_bound of the fp32 output, and not the fp32 cache's output.
TYPED_TEST(BlockHalfCacheTest, IncrementalDecodingMatchesPyTorch) {
  using C = TypeParam;
  for (const Fixture& fixture : fixtures()) {
    if (!is_causal(fixture)) continue;
    SCOPED_TRACE(fixture.name);
    const SafeTensors file = SafeTensors::load(fixture_path(fixture.name));
    const Tensor<float, 3> x = file.tensor<float, 3>("x");
    const Tensor<float, 3> expected = expected_output<float>(file);
    with_fixture_block<float>(fixture, file, [&](const auto& block) {
      auto cache = block.template make_cache<C>(x.extent(0), x.extent(1));
      static_assert(std::is_same_v<decltype(cache), KVCache<C>>);
      const Tensor<float, 3> y = prompt_then_tokens(block, x, cache);
      auto float_cache = block.make_cache(x.extent(0), x.extent(1));
      const Tensor<float, 3> y_float = prompt_then_tokens(block, x, float_cache);

      const double bound = cache_rounding_bound<C>(block, x);
      const double max_y = max_abs(expected.view());
      EXPECT_LE(max_abs_diff(y.view(), expected.view()), pytorch_tolerance<float>(max_y) + bound);
      EXPECT_LE(max_abs_diff(y.view(), y_float.view()), same_math_tolerance<float>(max_y) + bound);
      EXPECT_GT(max_abs_diff(y.view(), y_float.view()), 0.0) << "the cache did not round";
    });
  }
}

// Random GQA blocks of every kind, decoding token by token from a half cache and from a
// float cache, agree within cache_rounding_bound (plus reassociation).
TYPED_TEST(BlockHalfCacheTest, TokenByTokenMatchesAFloatCache) {
  using C = TypeParam;
  std::mt19937_64 rng(49);
  const std::vector<index_t> tokens(9, 1);
  const Tensor<float, 3> x = random_tensor<float, 3>({2, 9, kEmbed}, rng);
  auto check = [&](const auto& block) {
    const Tensor<float, 3> y = forward_in_chunks_with<C>(block, x, tokens);
    const Tensor<float, 3> y_float = forward_in_chunks_with<float>(block, x, tokens);
    const double diff = max_abs_diff(y.view(), y_float.view());
    EXPECT_LE(diff, cache_rounding_bound<C>(block, x) +
                        same_math_tolerance<float>(max_abs(y_float.view())));
    EXPECT_GT(diff, 0.0) << "the cache did not round";
  };
  {
    SCOPED_TRACE("standard");
    const AttentionConfig config = standard_config(8, 2, true, RopeStyle::interleaved);
    check(MultiHeadAttention<float>(config, examples::random_weights<float>(config, 12)));
  }
  for (LambdaMode mode : {LambdaMode::reference, LambdaMode::per_head, LambdaMode::v2}) {
    SCOPED_TRACE(diffattn::lambda_mode_name(mode));
    const DiffAttentionConfig config = diff_config(4, 2, 2, true, RopeStyle::half, mode);
    check(MultiHeadDiffAttention<float>(config, examples::random_weights<float>(config, 13)));
  }
}

// ---------------------------------------------------------------------------------------
// Validation

TEST(BlockErrors, ConfigValues) {
  using Weights = DiffAttentionWeights<float>;
  auto build = [](DiffAttentionConfig config) { MultiHeadDiffAttention<float>(config, Weights{}); };
  DiffAttentionConfig good =
      diff_config(2, 2, 1, false, RopeStyle::interleaved, LambdaMode::reference);

  auto c = good;
  c.embed_dim = 0;
  expect_error<std::invalid_argument>(
      [&] { build(c); }, {"MultiHeadDiffAttention: config.embed_dim must be > 0, got 0"});
  c = good;
  c.num_heads = -1;
  expect_error<std::invalid_argument>([&] { build(c); }, {"config.num_heads must be > 0, got -1"});
  c = good;
  c.num_kv_heads = 3;
  expect_error<std::invalid_argument>([&] { build(c); },
                                      {"config.num_kv_heads must divide num_heads = 2, got 3"});
  c = good;
  c.num_heads = 3;
  c.num_kv_heads = 0;
  expect_error<std::invalid_argument>([&] { build(c); },
                                      {"config.head_dim is 0 (E / 2H)", "multiple of 6, got 32"});
  c = good;
  c.head_dim = 5;
  expect_error<std::invalid_argument>([&] { build(c); },
                                      {"config.rope needs an even head_dim, got 5"});
  c = good;
  c.rope_theta = 0;
  expect_error<std::invalid_argument>([&] { build(c); },
                                      {"config.rope_theta must be finite and > 0, got 0"});
  c = good;
  c.layer = 0;
  expect_error<std::invalid_argument>([&] { build(c); },
                                      {"config.layer is 1-based, expected >= 1, got 0"});
  c = good;
  c.threads = -2;
  expect_error<std::invalid_argument>([&] { build(c); }, {"config.threads must be >= 0, got -2"});

  AttentionConfig s = standard_config(4, 3, false, RopeStyle::none);
  expect_error<std::invalid_argument>(
      [&] { MultiHeadAttention<float>(s, diffattn::AttentionWeights<float>{}); },
      {"MultiHeadAttention: config.num_kv_heads must divide num_heads = 4, got 3"});
  s = standard_config(5, 5, false, RopeStyle::none);
  expect_error<std::invalid_argument>(
      [&] { MultiHeadAttention<float>(s, diffattn::AttentionWeights<float>{}); },
      {"config.head_dim is 0 (E / H)", "multiple of 5, got 32"});
}

TEST(BlockErrors, WeightShapes) {
  const DiffAttentionConfig config =
      diff_config(2, 1, 1, false, RopeStyle::none, LambdaMode::reference);
  const auto good = examples::random_weights<float>(config, 1);
  auto build = [&](const DiffAttentionWeights<float>& w) {
    MultiHeadDiffAttention<float>(config, w);
  };

  auto w = good;
  w.q_proj.weight = Tensor<float, 2>({16, kEmbed});
  expect_error<diffattn::shape_error>(
      [&] { build(w); },
      {"MultiHeadDiffAttention: 'weights.q_proj.weight' dimension 0 (2H·d): expected 32, got 16"});
  w = good;
  w.k_proj.weight = Tensor<float, 2>({16, 31});
  expect_error<diffattn::shape_error>(
      [&] { build(w); }, {"'weights.k_proj.weight' dimension 1 (E): expected 32, got 31"});
  w = good;
  w.v_proj.bias = Tensor<float, 1>({4});
  expect_error<diffattn::shape_error>(
      [&] { build(w); }, {"'weights.v_proj.bias' dimension 0 (Hkv·2d): expected 16, got 4"});
  w = good;
  w.out_proj.weight = Tensor<float, 2>({kEmbed, 16});
  expect_error<diffattn::shape_error>(
      [&] { build(w); }, {"'weights.out_proj.weight' dimension 1 (H·2d): expected 32, got 16"});
  w = good;
  w.lambda_k2 = Tensor<float, 2>({2, 8});
  expect_error<diffattn::shape_error>(
      [&] { build(w); },
      {"'weights.lambda_k2' dimension 0 (1: one λ for all heads): expected 1, got 2"});
  w = good;
  w.subln_weight = Tensor<float, 1>();
  expect_error<diffattn::shape_error>(
      [&] { build(w); }, {"'weights.subln_weight' dimension 0 (2d): expected 16, got 0"});

  DiffAttentionConfig v2 = config;
  v2.lambda = LambdaMode::v2;
  auto v2_weights = examples::random_weights<float>(v2, 1);
  v2_weights.lambda_proj.weight = Tensor<float, 2>({3, kEmbed});
  expect_error<diffattn::shape_error>(
      [&] { MultiHeadDiffAttention<float>(v2, v2_weights); },
      {"'weights.lambda_proj.weight' dimension 0 (H): expected 2, got 3"});
  expect_error<diffattn::shape_error>(
      [&] { MultiHeadDiffAttention<float>(v2, good); },  // V1 shapes in a v2 block
      {"'weights.k_proj.weight' dimension 0 (Hkv·d): expected 8, got 16"});
}

TEST(BlockErrors, ForwardInputsAndCaches) {
  const DiffAttentionConfig config =
      diff_config(2, 1, 1, true, RopeStyle::half, LambdaMode::reference);
  const MultiHeadDiffAttention<float> block(config, examples::random_weights<float>(config, 1));
  const Tensor<float, 3> narrow({1, 3, 16});
  expect_error<diffattn::shape_error>(
      [&] { block.forward(narrow); },
      {"MultiHeadDiffAttention::forward: 'x' dimension 2 (E): expected 32, got 16"});

  const Tensor<float, 3> x({2, 3, kEmbed}, 0.25f);
  auto cache = block.make_cache(2, 4);
  block.forward(x, cache);
  expect_error<diffattn::shape_error>([&] { block.forward(x, cache); },
                                      {"forward(x, cache): 'x' dimension 1 (N): the cache holds 3 "
                                       "of 4 tokens, so at most 1 more fit, got 3"});
  EXPECT_EQ(cache.length(), 3);  // unchanged by the failed call

  auto other_batch = block.make_cache(1, 4);
  expect_error<diffattn::shape_error>([&] { block.forward(x, other_batch); },
                                      {"'cache' does not fit this block and batch", "B=1", "B=2"});
  const MultiHeadAttention<float> standard(config.standard(),
                                           examples::random_weights<float>(config.standard(), 1));
  auto standard_cache = standard.make_cache(2, 4);
  expect_error<diffattn::shape_error>([&] { block.forward(x, standard_cache); },
                                      {"'cache' does not fit this block and batch"});
  EXPECT_EQ(standard_cache.length(), 0);
}

TEST(BlockErrors, HalfCaches) {
  // A bf16 or f16 cache is checked as a float one, and a failed call leaves it unchanged.
  const DiffAttentionConfig config = diff_config(2, 1, 1, true, RopeStyle::half, LambdaMode::v2);
  const MultiHeadDiffAttention<float> block(config, examples::random_weights<float>(config, 1));
  const Tensor<float, 3> x({2, 3, kEmbed}, 0.25f);
  auto other_batch = block.make_cache<diffattn::bf16>(1, 4);
  expect_error<diffattn::shape_error>(
      [&] { block.forward(x, other_batch); },
      {"MultiHeadDiffAttention::forward(x, cache): 'cache' does not fit this block and batch",
       "B=1", "B=2"});
  EXPECT_EQ(other_batch.length(), 0);
  auto small = block.make_cache<diffattn::f16>(2, 2);
  expect_error<diffattn::shape_error>([&] { block.forward(x, small); },
                                      {"forward(x, cache): 'x' dimension 1 (N): the cache holds 0 "
                                       "of 2 tokens, so at most 2 more fit, got 3"});
  EXPECT_EQ(small.length(), 0);
  const DiffAttentionConfig v1 = diff_config(2, 1, 1, true, RopeStyle::half, LambdaMode::reference);
  const MultiHeadDiffAttention<float> v1_block(v1, examples::random_weights<float>(v1, 1));
  auto v1_cache = v1_block.make_cache<diffattn::bf16>(2, 4);
  expect_error<diffattn::shape_error>([&] { block.forward(x, v1_cache); },
                                      {"'cache' does not fit this block and batch"});
  const MultiHeadAttention<float> standard(config.standard(),
                                           examples::random_weights<float>(config.standard(), 1));
  expect_error<diffattn::shape_error>([&] { standard.forward(x, v1_cache); },
                                      {"MultiHeadAttention::forward(x, cache): 'cache' does not fit"});
  EXPECT_EQ(v1_cache.length(), 0);
}

TEST(BlockErrors, FromSafetensors) {
  const SafeTensors file = SafeTensors::load(fixture_path("diff_per_head_prefix_bias"));
  const DiffAttentionConfig config =
      diff_config(2, 1, 5, true, RopeStyle::interleaved, LambdaMode::per_head);
  // Without the prefix nothing is found; the message names the tensor.
  expect_error<diffattn::safetensors_error>(
      [&] { MultiHeadDiffAttention<float>::from_safetensors(config, file); }, {"q_proj.weight"});
  // The reference mode expects λ vectors [d], the file has [H, d].
  DiffAttentionConfig reference = config;
  reference.lambda = LambdaMode::reference;
  expect_error<diffattn::safetensors_error>(
      [&] { MultiHeadDiffAttention<float>::from_safetensors(reference, file, "layers.4.attn."); },
      {"layers.4.attn.lambda_q1", "[2, 8]", "expected [8]"});
  // Two kv heads where the file has one.
  DiffAttentionConfig mha = config;
  mha.num_kv_heads = 2;
  expect_error<diffattn::safetensors_error>(
      [&] { MultiHeadDiffAttention<float>::from_safetensors(mha, file, "layers.4.attn."); },
      {"layers.4.attn.k_proj.weight", "expected [32, 32]"});
  // Config errors come first, as from the constructor.
  DiffAttentionConfig bad = config;
  bad.layer = 0;
  EXPECT_THROW(MultiHeadDiffAttention<float>::from_safetensors(bad, file, "layers.4.attn."),
               std::invalid_argument);
}

}  // namespace
