// The public kernels: argument validation (each error is thrown, names what is wrong,
// and leaves the output untouched) and agreement with the reference kernels.

#include <functional>
#include <random>
#include <string>
#include <vector>

#include "helpers.hpp"

namespace diffattn_test {
namespace {

using diffattn::AttentionOptions;
using diffattn::shape_error;

/// Runs `call`, expects an exception of type E whose message contains every fragment.
template <class E>
void expect_error(const std::function<void()>& call, const std::vector<std::string>& fragments) {
  try {
    call();
    ADD_FAILURE() << "expected an exception mentioning '" << fragments.front() << "'";
  } catch (const E& error) {
    const std::string message = error.what();
    for (const std::string& fragment : fragments) {
      EXPECT_NE(message.find(fragment), std::string::npos)
          << "message: " << message << "\nmissing: " << fragment;
    }
  }
}

/// A valid differential problem q [2, 4, 5, 8], k [2, 2, 7, 8], v [2, 2, 7, 6] that
/// each validation test breaks in one way.
struct Valid {
  Tensor<float, 4> q1{{2, 4, 5, 8}}, q2{{2, 4, 5, 8}}, k1{{2, 2, 7, 8}}, k2{{2, 2, 7, 8}};
  Tensor<float, 4> v{{2, 2, 7, 6}}, out{{2, 4, 5, 6}, 42.0f};
  Tensor<float, 1> lambda{{4}, 0.5f};
  Tensor<float, 3> lambda_tokens{{2, 4, 5}, 0.5f};
  Valid() {
    std::mt19937_64 rng(1);
    for (auto* t : {&q1, &q2, &k1, &k2, &v}) fill_uniform(t->view(), rng);
  }
  bool out_untouched() const {
    for (index_t n = 0; n < out.size(); ++n) {
      if (out.data()[n] != 42.0f) return false;
    }
    return true;
  }
};

using Q = TensorView<const float, 4>;

// Both the public kernels and the reference run the same checks; test each error on
// all four entry points.
struct EntryPoints {
  std::function<void(Q, Q, Q, TensorView<float, 4>, const AttentionOptions<float>&)> softmax;
  std::function<void(Q, Q, Q, Q, Q, TensorView<const float, 1>, TensorView<float, 4>,
                     const AttentionOptions<float>&)>
      diff;
  const char* name;
};

std::vector<EntryPoints> entry_points() {
  return {
      {[](Q q, Q k, Q v, TensorView<float, 4> o, const AttentionOptions<float>& opt) {
         diffattn::softmax_attention<float>(q, k, v, o, opt);
       },
       [](Q q1, Q q2, Q k1, Q k2, Q v, TensorView<const float, 1> l, TensorView<float, 4> o,
          const AttentionOptions<float>& opt) {
         diffattn::diff_attention<float>(q1, q2, k1, k2, v, l, o, opt);
       },
       "diffattn::"},
      {[](Q q, Q k, Q v, TensorView<float, 4> o, const AttentionOptions<float>& opt) {
         diffattn::reference::softmax_attention<float>(q, k, v, o, opt);
       },
       [](Q q1, Q q2, Q k1, Q k2, Q v, TensorView<const float, 1> l, TensorView<float, 4> o,
          const AttentionOptions<float>& opt) {
         diffattn::reference::diff_attention<float>(q1, q2, k1, k2, v, l, o, opt);
       },
       "diffattn::reference::"},
  };
}

/// Expects the break to throw from softmax and diff entry points alike, with `out`
/// untouched. `breaks_diff_only` skips the softmax call for errors in q2, k2 or λ.
void expect_rejected(const std::function<void(Valid&, AttentionOptions<float>&, Q& q1, Q& q2,
                                              Q& k1, Q& k2, Q& v, TensorView<float, 4>& out,
                                              TensorView<const float, 1>& lambda)>& breaker,
                     const std::vector<std::string>& fragments, bool breaks_diff_only = false) {
  for (const EntryPoints& entry : entry_points()) {
    SCOPED_TRACE(entry.name);
    Valid valid;
    AttentionOptions<float> options;
    Q q1 = valid.q1, q2 = valid.q2, k1 = valid.k1, k2 = valid.k2, v = valid.v;
    TensorView<float, 4> out = valid.out;
    TensorView<const float, 1> lambda = valid.lambda;
    breaker(valid, options, q1, q2, k1, k2, v, out, lambda);
    if (!breaks_diff_only) {
      expect_error<shape_error>([&] { entry.softmax(q1, k1, v, out, options); }, fragments);
      EXPECT_TRUE(valid.out_untouched());
    }
    expect_error<shape_error>([&] { entry.diff(q1, q2, k1, k2, v, lambda, out, options); },
                              fragments);
    EXPECT_TRUE(valid.out_untouched());
  }
}

TEST(AttentionValidation, ValidProblemIsAccepted) {
  for (const EntryPoints& entry : entry_points()) {
    Valid valid;
    entry.softmax(valid.q1, valid.k1, valid.v, valid.out, {});
    EXPECT_FALSE(valid.out_untouched());
    Valid again;
    entry.diff(again.q1, again.q2, again.k1, again.k2, again.v, again.lambda, again.out, {});
    EXPECT_FALSE(again.out_untouched());
  }
}

TEST(AttentionValidation, HeadWidthMismatch) {
  expect_rejected(
      [](Valid& valid, auto&, Q&, Q&, Q& k1, Q& k2, Q&, auto&, auto&) {
        k1 = valid.k1.view().slice(3, 0, 7);
        k2 = k1;
      },
      {"'k'", "dimension 3", "(D)", "expected 8", "got 7"});
}

TEST(AttentionValidation, BatchMismatch) {
  expect_rejected([](Valid& valid, auto&, Q&, Q&, Q&, Q&, Q& v, auto&,
                     auto&) { v = valid.v.view().slice(0, 0, 1); },
                  {"'v'", "dimension 0", "expected 2", "got 1"});
}

TEST(AttentionValidation, KeyValueLengthMismatch) {
  expect_rejected([](Valid& valid, auto&, Q&, Q&, Q&, Q&, Q& v, auto&,
                     auto&) { v = valid.v.view().slice(2, 0, 6); },
                  {"'v'", "dimension 2", "Nk", "expected 7", "got 6"});
}

TEST(AttentionValidation, OutputShapeMismatch) {
  expect_rejected([](Valid& valid, auto&, Q&, Q&, Q&, Q&, Q&, TensorView<float, 4>& out,
                     auto&) { out = valid.out.view().slice(3, 0, 5); },
                  {"'out'", "dimension 3", "Dv", "expected 6", "got 5"});
  expect_rejected([](Valid& valid, auto&, Q&, Q&, Q&, Q&, Q&, TensorView<float, 4>& out,
                     auto&) { out = valid.out.view().slice(2, 0, 4); },
                  {"'out'", "dimension 2", "Nq", "expected 5", "got 4"});
}

TEST(AttentionValidation, GroupedQueryRatio) {
  // Hq = 4 with 3 kv heads is not a whole group.
  Tensor<float, 4> k({2, 3, 7, 8}), v({2, 3, 7, 6});
  expect_rejected(
      [&](Valid&, auto&, Q&, Q&, Q& k1, Q& k2, Q& value, auto&, auto&) {
        k1 = k2 = k;
        value = v;
      },
      {"'k'", "dimension 1", "divisor of Hq = 4", "got 3"});
}

TEST(AttentionValidation, LambdaLength) {
  Tensor<float, 1> three({3}, 0.5f);
  expect_rejected([&](Valid&, auto&, Q&, Q&, Q&, Q&, Q&, auto&,
                      TensorView<const float, 1>& lambda) { lambda = three; },
                  {"'lambda'", "expected 4", "got 3"}, /*breaks_diff_only=*/true);
}

TEST(AttentionValidation, LambdaPerTokenShape) {
  Valid valid;
  Tensor<float, 3> wrong({2, 4, 4});
  expect_error<shape_error>(
      [&] {
        diffattn::diff_attention<float>(valid.q1, valid.q2, valid.k1, valid.k2, valid.v, wrong,
                                        valid.out);
      },
      {"'lambda'", "dimension 2", "Nq", "expected 5", "got 4"});
  EXPECT_TRUE(valid.out_untouched());
  // Broadcast forms are accepted: [1, 4, 1] and [2, 1, 5].
  Tensor<float, 3> per_head({1, 4, 1}, 0.5f), per_token({2, 1, 5}, 0.5f);
  diffattn::diff_attention<float>(valid.q1, valid.q2, valid.k1, valid.k2, valid.v, per_head,
                                  valid.out);
  diffattn::diff_attention<float>(valid.q1, valid.q2, valid.k1, valid.k2, valid.v, per_token,
                                  valid.out);
}

TEST(AttentionValidation, SecondMapShape) {
  expect_rejected([](Valid& valid, auto&, Q&, Q& q2, Q&, Q&, Q&, auto&,
                     auto&) { q2 = valid.q2.view().slice(2, 0, 3); },
                  {"'q2'", "dimension 2", "expected 5", "got 3"}, true);
  expect_rejected([](Valid& valid, auto&, Q&, Q&, Q&, Q& k2, Q&, auto&,
                     auto&) { k2 = valid.k2.view().slice(3, 0, 4); },
                  {"'k2'", "dimension 3", "expected 8", "got 4"}, true);
}

TEST(AttentionValidation, MaskShape) {
  Tensor<float, 4> wrong_keys({1, 1, 5, 6}), wrong_batch({3, 1, 5, 7}), wrong_heads({1, 2, 5, 7});
  expect_rejected([&](Valid&, AttentionOptions<float>& options, auto&&...) {
    options.mask = wrong_keys;
  }, {"'options.mask'", "dimension 3", "Nk", "expected 7", "got 6"});
  expect_rejected([&](Valid&, AttentionOptions<float>& options, auto&&...) {
    options.mask = wrong_batch;
  }, {"'options.mask'", "dimension 0", "expected 2 or 1", "got 3"});
  expect_rejected([&](Valid&, AttentionOptions<float>& options, auto&&...) {
    options.mask = wrong_heads;
  }, {"'options.mask'", "dimension 1", "expected 4 or 1", "got 2"});
}

TEST(AttentionValidation, NonContiguousLastDimension) {
  Tensor<float, 4> wide({2, 4, 5, 16});
  expect_rejected([&](Valid&, auto&, Q& q1, auto&&...) { q1 = wide.view().slice(3, 0, 16, 2); },
                  {"'q'", "dimension 3", "stride 1", "got stride 2"});
  Tensor<float, 4> wide_out({2, 4, 5, 12});
  expect_rejected(
      [&](Valid&, auto&, Q&, Q&, Q&, Q&, Q&, TensorView<float, 4>& out, auto&) {
        out = wide_out.view().slice(3, 0, 12, 2);
      },
      {"'out'", "dimension 3", "got stride 2"});
  Tensor<float, 4> mask({1, 1, 5, 14});
  expect_rejected([&](Valid&, AttentionOptions<float>& options, auto&&...) {
    options.mask = mask.view().slice(3, 0, 14, 2);
  }, {"'options.mask'", "got stride 2"});
}

TEST(AttentionValidation, OutputOverlappingAnInput) {
  // out written into the memory of v (same element count layout) or of q.
  Tensor<float, 4> shared({2, 4, 5, 14});
  expect_rejected(
      [&](Valid&, auto&, Q& q1, Q&, Q&, Q&, Q&, TensorView<float, 4>& out, auto&) {
        q1 = shared.view().slice(3, 0, 8);
        out = shared.view().slice(3, 8, 14);
      },
      {"'out' overlaps input 'q'"});
  Tensor<float, 4> shared2({2, 4, 5, 14});
  expect_rejected(
      [&](Valid&, auto&, Q&, Q& q2, Q&, Q&, Q&, TensorView<float, 4>& out, auto&) {
        q2 = shared2.view().slice(3, 0, 8);
        out = shared2.view().slice(3, 8, 14);
      },
      {"'out' overlaps input 'q2'"}, true);
}

TEST(AttentionValidation, OutputWithRepeatedElements) {
  Tensor<float, 4> small({2, 1, 5, 6});
  expect_rejected(
      [&](Valid&, auto&, Q&, Q&, Q&, Q&, Q&, TensorView<float, 4>& out, auto&) {
        out = small.view().broadcast(1, 4);
      },
      {"'out'", "overlapping elements"});
}

TEST(AttentionValidation, ScaleAndThreads) {
  for (const EntryPoints& entry : entry_points()) {
    Valid valid;
    AttentionOptions<float> options;
    options.scale = std::numeric_limits<double>::quiet_NaN();
    expect_error<std::invalid_argument>(
        [&] { entry.softmax(valid.q1, valid.k1, valid.v, valid.out, options); },
        {"options.scale", "finite"});
    options.scale = 0;
    options.threads = -1;
    expect_error<std::invalid_argument>(
        [&] { entry.softmax(valid.q1, valid.k1, valid.v, valid.out, options); },
        {"options.threads", "got -1"});
    EXPECT_TRUE(valid.out_untouched());
  }
}

// A scale finite in double but not as the float kernels use it (times log2 e) was
// accepted and gave NaN everywhere.
TEST(AttentionValidation, ScaleMustBeFiniteInTheElementType) {
  for (const EntryPoints& entry : entry_points()) {
    Valid valid;
    AttentionOptions<float> options;
    for (const double scale : {1e300, -1e300, 3e38}) {
      options.scale = scale;
      expect_error<std::invalid_argument>(
          [&] { entry.softmax(valid.q1, valid.k1, valid.v, valid.out, options); }, {"options.scale", "finite"});
      expect_error<std::invalid_argument>(
          [&] {
            entry.diff(valid.q1, valid.q2, valid.k1, valid.k2, valid.v, valid.lambda, valid.out, options);
          },
          {"options.scale", "finite"});
    }
    EXPECT_TRUE(valid.out_untouched());
  }
  // The same scale is fine for double kernels, and a float one just inside the range too.
  Tensor<double, 4> q({1, 1, 2, 3}), k({1, 1, 4, 3}), v({1, 1, 4, 2}), out({1, 1, 2, 2});
  AttentionOptions<double> options;
  options.scale = 1e300;
  EXPECT_NO_THROW(diffattn::softmax_attention<double>(q, k, v, out, options));
  Valid valid;
  AttentionOptions<float> float_options;
  float_options.scale = 2e38;
  EXPECT_NO_THROW(diffattn::softmax_attention<float>(valid.q1, valid.k1, valid.v, valid.out, float_options));
}

// K and V broadcast to 2^59 keys through stride-0 views (8 batches of 1024 query heads):
// the workspace size overflowed, the two-pass method was chosen with a buffer far too
// small, and the call wrote through a null pointer. The FLOP count overflows too, so the
// call is refused, before anything is read or written, also with a warm scratch.
TEST(AttentionValidation, ProblemWhoseSizeOverflowsIsRefused) {
  const index_t keys = index_t{1} << 59;
  const float one = 1;
  const Q k(&one, {8, 1, keys, 1}, {0, 0, 0, 1});
  Tensor<float, 4> q({8, 1024, 1, 1}, 0.5f), out({8, 1024, 1, 1}, 42.0f);
  const Tensor<float, 1> lambda({1024}, 0.5f);
  Valid warm;  // leaves scratch behind in this thread
  diffattn::diff_attention<float>(warm.q1, warm.q2, warm.k1, warm.k2, warm.v, warm.lambda, warm.out);
  for (const EntryPoints& entry : entry_points()) {
    SCOPED_TRACE(entry.name);
    expect_error<shape_error>([&] { entry.softmax(q, k, k, out, {}); }, {"FLOP count", "overflows"});
    expect_error<shape_error>([&] { entry.diff(q, q, k, k, k, lambda, out, {}); }, {"FLOP count", "overflows"});
    for (index_t n = 0; n < out.size(); ++n) ASSERT_EQ(out.data()[n], 42.0f);
  }
}

// A problem that fits but whose two-pass workspace (rows × Nk per map) would not fit an
// index_t takes the streaming method: the plan's size arithmetic saturates rather than
// overflowing into a small "fitting" size.
TEST(AttentionValidation, PlanForAHugeKeyCountStreams) {
  using diffattn::detail::FusedArgs;
  FusedArgs<float> args;
  args.diff = true;
  args.problem.batch = 1;
  args.problem.q_heads = 1;
  args.problem.kv_heads = 1;
  args.problem.q_len = 3;
  args.problem.kv_len = index_t{1} << 58;
  args.problem.head_dim = 0;
  args.problem.value_dim = 1;
  for (const std::size_t limit : {std::size_t{64} << 20, std::numeric_limits<std::size_t>::max()}) {
    const diffattn::detail::FusedSizes<float> sizes(args.problem);
    const auto plan = diffattn::detail::make_plan(args, sizes, 1, limit);
    EXPECT_NE(plan.method, diffattn::detail::Method::two_pass) << limit;
  }
  EXPECT_EQ(diffattn::detail::size_mul(index_t{1} << 40, index_t{1} << 40), diffattn::detail::saturated_size);
  EXPECT_FALSE(diffattn::detail::fits_in(diffattn::detail::saturated_size, std::numeric_limits<std::size_t>::max()));
}

// q and k of head dimension 0 (empty, no storage): every logit is 0, so each row averages
// V. The kernels bound a reference to the null data while packing and scoring (UBSan).
TEST(AttentionValidation, ZeroHeadDimensionAveragesValues) {
  const Q q(nullptr, {1, 2, 5, 0}), k(nullptr, {1, 1, 70, 0});
  std::mt19937_64 rng(5);
  auto v = random_tensor<float, 4>({1, 1, 70, 3}, rng);
  const Tensor<float, 1> lambda({2}, 0.25f);
  for (const bool decoding : {false, true}) {
    const Q rows = decoding ? q.slice(2, 0, 1) : q;
    Tensor<float, 4> standard({1, 2, rows.extent(2), 3}), diff({1, 2, rows.extent(2), 3});
    for (const EntryPoints& entry : entry_points()) {
      SCOPED_TRACE(entry.name);
      entry.softmax(rows, k, v, standard, {});
      entry.diff(rows, rows, k, k, v, lambda, diff, {});
      for (index_t c = 0; c < 3; ++c) {
        double mean = 0;
        for (index_t j = 0; j < 70; ++j) mean += v(0, 0, j, c) / 70.0;
        for (index_t h = 0; h < 2; ++h) {
          for (index_t i = 0; i < rows.extent(2); ++i) {
            EXPECT_NEAR(standard(0, h, i, c), mean, 1e-6);
            EXPECT_NEAR(diff(0, h, i, c), 0.75 * mean, 1e-6);
          }
        }
      }
    }
  }
}

// Until the fused kernels land the public kernels are the reference; this test pins the
// contract they must keep: equal to the reference within k·eps, on strided inputs too.
template <class T>
class PublicMatchesReference : public ::testing::Test {};
TYPED_TEST_SUITE(PublicMatchesReference, FloatTypes);

TYPED_TEST(PublicMatchesReference, RandomShapes) {
  using T = TypeParam;
  for (std::uint64_t seed = 100; seed < 140; ++seed) {
    SCOPED_TRACE(describe_seed(seed));
    std::mt19937_64 rng(seed);
    auto pick = [&](index_t lo, index_t hi) {
      return std::uniform_int_distribution<index_t>(lo, hi)(rng);
    };
    const index_t batch = pick(1, 2), kv_heads = pick(1, 2), group = pick(1, 3);
    const index_t q_heads = kv_heads * group, q_len = pick(1, 19), kv_len = pick(1, 19);
    const index_t head_dim = pick(1, 17), value_dim = pick(1, 33);
    auto q1 = random_tensor<T, 4>({batch, q_heads, q_len, head_dim}, rng);
    auto q2 = random_tensor<T, 4>({batch, q_heads, q_len, head_dim}, rng);
    auto k = random_tensor<T, 4>({batch, kv_heads, kv_len, head_dim}, rng);
    auto v = random_tensor<T, 4>({batch, kv_heads, kv_len, value_dim}, rng);
    auto lambda = random_tensor<T, 1>({q_heads}, rng, 0, 1);
    AttentionOptions<T> options;
    options.causal = seed % 2 == 0;
    Tensor<T, 4> fast({batch, q_heads, q_len, value_dim}), slow = fast;
    diffattn::softmax_attention<T>(q1, k, v, fast, options);
    diffattn::reference::softmax_attention<T>(q1, k, v, slow, options);
    // Outputs are convex combinations of |v| <= 1: a few roundings of 1.
    EXPECT_LE(max_abs_diff(fast.view(), slow.view()), tolerance<T>(8, 1));
    diffattn::diff_attention<T>(q1, q2, k, k, v, lambda, fast, options);
    diffattn::reference::diff_attention<T>(q1, q2, k, k, v, lambda, slow, options);
    EXPECT_LE(max_abs_diff(fast.view(), slow.view()), tolerance<T>(8, 2));
  }
}

}  // namespace
}  // namespace diffattn_test
