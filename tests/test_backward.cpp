// The fused backward pass against the double-precision reference backward: a randomized
// sweep over the forward's case space (shapes, layouts, masks with fully masked rows,
// causal with Nq != Nk, GQA, shared keys, both λ forms, thread counts, workspace limits),
// thread-count determinism, and the edge cases. test_reference_backward.cpp checks the
// reference itself against finite differences.

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fused_cases.hpp"
#include "helpers.hpp"

// Random cases per element type; the slower scalar-fallback build runs fewer.
#ifndef DIFFATTN_BACKWARD_CASES
#define DIFFATTN_BACKWARD_CASES 240
#endif

namespace diffattn_test {
namespace {

using diffattn::AttentionOptions;

/// Gradients of one call: dq (per map), dk (per map), dv and dλ (per-token form: [B, Hq,
/// Nq]; per-head form: [Hq] in element 0..Hq−1).
template <class T>
struct Gradients {
  Tensor<T, 4> dq1, dq2, dk1, dk2, dv;
  Tensor<T, 3> dlambda_token;
  Tensor<T, 1> dlambda_head;
  Gradients(const Case& c)
      : dq1({c.batch, c.kv_heads * c.group, c.q_len, c.head_dim}), dq2(dq1.shape()),
        dk1({c.batch, c.kv_heads, c.kv_len, c.head_dim}), dk2(dk1.shape()),
        dv({c.batch, c.kv_heads, c.kv_len, c.value_dim}),
        dlambda_token({c.batch, c.kv_heads * c.group, c.q_len}), dlambda_head({c.kv_heads * c.group}) {}
};

/// Runs the backward of standard (diff = false) or differential attention on `in`.
/// With shared keys, dk1 and dk2 are one view (dk2 is left untouched).
template <class T, class Opts>
void run_backward(bool diff, bool per_token, bool shared, TensorView<const T, 4> q1, TensorView<const T, 4> q2,
                  TensorView<const T, 4> k1, TensorView<const T, 4> k2, TensorView<const T, 4> v,
                  TensorView<const T, 1> lambda_head, TensorView<const T, 3> lambda_token, TensorView<const T, 4> dout,
                  Gradients<T>& g, const Opts& options, bool reference) {
  auto dk2 = shared ? g.dk1.view() : g.dk2.view();
  if (!diff) {
    if (reference) {
      diffattn::reference::softmax_attention_backward<T>(q1, k1, v, dout, g.dq1, g.dk1, g.dv, options);
    } else {
      diffattn::softmax_attention_backward<T>(q1, k1, v, dout, g.dq1, g.dk1, g.dv, options);
    }
    return;
  }
  if (per_token) {
    if (reference) {
      diffattn::reference::diff_attention_backward<T>(q1, q2, k1, k2, v, lambda_token, dout, g.dq1, g.dq2, g.dk1, dk2,
                                                      g.dv, g.dlambda_token, options);
    } else {
      diffattn::diff_attention_backward<T>(q1, q2, k1, k2, v, lambda_token, dout, g.dq1, g.dq2, g.dk1, dk2, g.dv,
                                           g.dlambda_token, options);
    }
  } else if (reference) {
    diffattn::reference::diff_attention_backward<T>(q1, q2, k1, k2, v, lambda_head, dout, g.dq1, g.dq2, g.dk1, dk2,
                                                    g.dv, g.dlambda_head, options);
  } else {
    diffattn::diff_attention_backward<T>(q1, q2, k1, k2, v, lambda_head, dout, g.dq1, g.dq2, g.dk1, dk2, g.dv,
                                         g.dlambda_head, options);
  }
}

/// The magnitudes the backward error bound scales with, from the double inputs:
/// dp_max = max |dO_r·V_j| over the pairs a row sees, and column = max over keys of
/// Σ_r (P1_rj + |λ_r|·P2_rj), the weight a key receives from all rows that read it.
struct Magnitudes {
  double dp_max = 0, column = 0;
};

Magnitudes magnitudes(bool diff, TensorView<const double, 4> q1, TensorView<const double, 4> q2,
                      TensorView<const double, 4> k1, TensorView<const double, 4> k2, TensorView<const double, 4> v,
                      TensorView<const double, 3> lambda, TensorView<const double, 4> dout,
                      const AttentionOptions<double>& options) {
  using namespace diffattn::detail;
  TensorView<const double, 4> mask;
  Tensor<double, 4> scratch_out({q1.extent(0), q1.extent(1), q1.extent(2), v.extent(3)});
  const AttentionProblem p = validate_attention("magnitudes", q1, k1, v, scratch_out.view(), options, mask);
  Magnitudes m;
  std::vector<double> columns(static_cast<std::size_t>(p.batch * p.kv_heads * p.kv_len), 0.0), w1, w2;
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t h = 0; h < p.q_heads; ++h)
      for (index_t i = 0; i < p.q_len; ++i) {
        reference_softmax_weights(q1, k1, mask, p, b, h, i, w1);
        const bool second = diff && reference_softmax_weights(q2, k2, mask, p, b, h, i, w2);
        const double lam = second ? std::abs(lambda(b, h, i)) : 0.0;
        for (index_t j = 0; j < p.key_limit(i); ++j) {
          double dot = 0;
          for (index_t c = 0; c < p.value_dim; ++c) dot += dout(b, h, i, c) * v(b, h / p.group, j, c);
          m.dp_max = std::max(m.dp_max, std::abs(dot));
          columns[static_cast<std::size_t>((b * p.kv_heads + h / p.group) * p.kv_len + j)] +=
              w1[j] + (second ? lam * w2[j] : 0.0);
        }
      }
  for (double c : columns) m.column = std::max(m.column, c);
  return m;
}

/// The backward's accuracy contract (attention_backward.hpp) for one call, as per-gradient
/// max-abs-error bounds: ε times the gradient's natural magnitude, with
/// ε = (160 + 6·⌈Nk/64⌉ + 6·⌈Nq·group/64⌉ + D + Dv)·u plus the reference's own rounding.
struct BackwardBounds {
  double dq, dk, dv, dlambda_per_row;
};

template <class T>
BackwardBounds backward_bounds(const Case& c, double scale, double lambda_max, double q_max, double k_max, double g_max,
                               const Magnitudes& m) {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  const double ref_u = std::numeric_limits<double>::epsilon() / 2;
  const double rows = static_cast<double>(c.q_len * c.group);
  const double eps = (160 + 6 * std::ceil(c.kv_len / 64.0) + 6 * std::ceil(rows / 64.0) +
                      static_cast<double>(c.head_dim + c.value_dim)) * u +
                     (2 * (static_cast<double>(c.kv_len) + rows) + 16) * ref_u;
  const double ds = (1 + lambda_max) * 2 * std::max(m.dp_max, 1e-300);  // Σ_j |dS_rj| <= (1 + |λ|)·2·max|dP|
  return {scale * k_max * ds * eps, scale * q_max * std::max(m.column, 1.0) * 2 * std::max(m.dp_max, 1e-300) * eps,
          g_max * std::max(m.column, 1.0) * eps, std::max(m.dp_max, 1e-300) * eps};
}

template <class T>
void run_case(const Case& c) {
  SCOPED_TRACE(c.describe());
  std::mt19937_64 rng(c.seed * 7919 + 1);
  Inputs<T> in(c, rng);
  const index_t q_heads = c.kv_heads * c.group;
  auto dout = random_tensor<T, 4>({c.batch, q_heads, c.q_len, c.value_dim}, rng);
  const AttentionOptions<T> options = case_options(c, in.mask);
  const ReferenceInputs ref(c, in, in, in);
  const auto &q1 = ref.q1, &q2 = ref.q2, &k1 = ref.k1, &v = ref.v;
  const TensorView<const double, 4> k2 = c.shared_keys ? ref.k1.view() : ref.k2.view();
  const auto& ref_options = ref.options;
  auto dout_d = copy_as<double>(dout.view());
  auto lambda_head = copy_as<double>(in.lambda_head.view());
  auto lambda_token = copy_as<double>(in.lambda_token.view());
  const double scale = 1 / std::sqrt(static_cast<double>(std::max<index_t>(c.head_dim, 1)));
  const double q_max = std::max(max_abs(in.q1), max_abs(in.q2));
  const double k_max = std::max(max_abs(in.k1), max_abs(in.k2));
  const double g_max = max_abs(dout.view());

  for (const bool diff : {false, true}) {
    SCOPED_TRACE(diff ? "differential" : "standard");
    // λ as the kernel reads it, widened to [B, Hq, Nq], for the magnitudes.
    Tensor<double, 3> lambda_rows({c.batch, q_heads, c.q_len});
    for_each_index(lambda_rows.shape(), [&](const auto& idx) {
      lambda_rows.view().at(idx) = c.per_token_lambda ? lambda_token(idx[0], idx[1], idx[2]) : lambda_head(idx[1]);
    });
    const Magnitudes m = magnitudes(diff, q1, q2, k1, k2, v, lambda_rows, dout_d, ref_options);
    const BackwardBounds bound =
        backward_bounds<T>(c, scale, diff ? in.lambda_max : 0.0, q_max, k_max, g_max, m);
    Gradients<T> got(c);
    Gradients<double> want(c);
    run_backward<T>(diff, c.per_token_lambda, c.shared_keys, in.q1, in.q2, in.k1, in.k2, in.v, in.lambda_head,
                    in.lambda_token, dout.view(), got, options, false);
    run_backward<double>(diff, c.per_token_lambda, c.shared_keys, q1, q2, k1, k2, v, lambda_head, lambda_token,
                         dout_d, want, ref_options, true);
    EXPECT_LE(max_abs_diff(got.dq1.view(), want.dq1.view()), bound.dq) << "dq1";
    EXPECT_LE(max_abs_diff(got.dk1.view(), want.dk1.view()), bound.dk * (c.shared_keys && diff ? 2 : 1)) << "dk1";
    EXPECT_LE(max_abs_diff(got.dv.view(), want.dv.view()), bound.dv) << "dv";
    if (!diff) continue;
    EXPECT_LE(max_abs_diff(got.dq2.view(), want.dq2.view()), bound.dq) << "dq2";
    if (!c.shared_keys) {
      EXPECT_LE(max_abs_diff(got.dk2.view(), want.dk2.view()), bound.dk) << "dk2";
    }
    if (c.per_token_lambda) {
      EXPECT_LE(max_abs_diff(got.dlambda_token.view(), want.dlambda_token.view()), bound.dlambda_per_row)
          << "dlambda";
    } else {
      const double rows_per_head = static_cast<double>(c.batch * c.q_len);
      EXPECT_LE(max_abs_diff(got.dlambda_head.view(), want.dlambda_head.view()), rows_per_head * bound.dlambda_per_row)
          << "dlambda";
    }
  }
}

/// The forward sweep's cases, their cost capped lower: the reference backward costs
/// about three reference forwards.
Case draw_backward_case(std::uint64_t seed) {
  Case c = draw_case(seed);
  while (static_cast<double>(c.batch * c.kv_heads * c.group) * c.q_len * c.kv_len * (2 * c.head_dim + c.value_dim) >
         1.5e6) {
    if (c.q_len > 8) c.q_len = c.q_len * 2 / 3;
    if (c.kv_len > 8) c.kv_len = c.kv_len * 2 / 3;
    if (c.q_len <= 8 && c.kv_len <= 8) break;
  }
  return c;
}

template <class T>
class BackwardTest : public ::testing::Test {};
TYPED_TEST_SUITE(BackwardTest, FloatTypes);

TYPED_TEST(BackwardTest, RandomCasesMatchReference) {
  for (std::uint64_t seed = 1; seed <= DIFFATTN_BACKWARD_CASES; ++seed) {
    run_case<TypeParam>(draw_backward_case(seed));
    if (::testing::Test::HasFailure()) break;  // the first failing seed is the one to replay
  }
}

/// Long rows and many query tiles: the rows × Nk workspace, several key tiles per row,
/// dK/dV summed over segments, and the tile shrinking under a small workspace limit.
TYPED_TEST(BackwardTest, LongSequencesMatchReference) {
  Case c = draw_case(5);
  c.batch = 1;
  c.kv_heads = 1;
  c.group = 2;
  c.q_len = 200;
  c.kv_len = 333;
  c.head_dim = 24;
  c.value_dim = 40;
  c.shared_keys = false;
  c.layout = Layout::contiguous;
  c.mask = MaskKind::none;
  c.per_token_lambda = false;
  for (const bool causal : {false, true}) {
    for (const std::size_t limit : {std::size_t{64} << 20, std::size_t{200} << 10}) {
      c.causal = causal;
      c.workspace_limit = limit;
      c.threads = 2;
      run_case<TypeParam>(c);
    }
  }
}

/// The gradients of one call for `threads` threads, every output as raw bytes.
template <class T>
std::vector<std::vector<unsigned char>> gradients_with_threads(const Case& c, int threads) {
  std::mt19937_64 rng(c.seed);
  Inputs<T> in(c, rng);
  auto dout = random_tensor<T, 4>({c.batch, c.kv_heads * c.group, c.q_len, c.value_dim}, rng);
  AttentionOptions<T> options;
  options.causal = c.causal;
  options.mask = in.mask;
  options.threads = threads;
  options.workspace_limit = c.workspace_limit;
  std::vector<std::vector<unsigned char>> bytes;
  auto keep = [&](const auto& t) {
    const auto* p = reinterpret_cast<const unsigned char*>(t.data());
    bytes.emplace_back(p, p + sizeof(T) * static_cast<std::size_t>(t.size()));
  };
  for (const bool diff : {false, true}) {
    Gradients<T> g(c);
    run_backward<T>(diff, true, c.shared_keys, in.q1, in.q2, in.k1, in.k2, in.v, in.lambda_head, in.lambda_token,
                    dout.view(), g, options, false);
    keep(g.dq1);
    keep(g.dk1);
    keep(g.dv);
    if (diff) {
      keep(g.dq2);
      keep(g.dk2);
      keep(g.dlambda_token);
    }
  }
  return bytes;
}

TYPED_TEST(BackwardTest, BitwiseIdenticalForAnyThreadCount) {
  Case base = draw_case(78);
  base.batch = 2;
  base.kv_heads = 2;
  base.group = 2;
  base.q_len = 150;
  base.kv_len = 170;
  base.head_dim = 31;
  base.value_dim = 62;
  base.causal = true;
  base.mask = MaskKind::with_masked_rows;
  base.shared_keys = false;
  base.workspace_limit = std::size_t{64} << 20;
  std::vector<Case> cases = {base};
  Case one_head = base;  // one kv head: 16 segments, summed at the end
  one_head.batch = 1;
  one_head.kv_heads = 1;
  cases.push_back(one_head);
  Case small_limit = base;  // one-position tiles, own accumulators
  small_limit.workspace_limit = 4096;
  cases.push_back(small_limit);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.describe());
    const auto one = gradients_with_threads<TypeParam>(c, 1);
    for (int threads : {2, 3, 5}) {
      const auto many = gradients_with_threads<TypeParam>(c, threads);
      for (std::size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(one[i] == many[i]) << "threads=" << threads << " output " << i;
    }
  }
}

TYPED_TEST(BackwardTest, FullyMaskedRowsGetZeroGradient) {
  using T = TypeParam;
  const index_t nq = 9, nk = 70, d = 5, dv = 7;
  std::mt19937_64 rng(4);
  auto q = random_tensor<T, 4>({1, 1, nq, d}, rng);
  auto q2 = random_tensor<T, 4>({1, 1, nq, d}, rng);
  auto k = random_tensor<T, 4>({1, 1, nk, d}, rng);
  auto v = random_tensor<T, 4>({1, 1, nk, dv}, rng);
  auto dout = random_tensor<T, 4>({1, 1, nq, dv}, rng);
  Tensor<T, 4> mask({1, 1, nq, nk}, T(0));
  for (index_t j = 0; j < nk; ++j) mask(0, 0, 2, j) = -std::numeric_limits<T>::infinity();
  // λ NaN: a row that sees no key still contributes nothing (the forward's rule).
  Tensor<T, 3> lambda({1, 1, nq}, T(0.4));
  lambda(0, 0, 2) = std::numeric_limits<T>::quiet_NaN();
  AttentionOptions<T> options;
  options.mask = mask.view();
  Tensor<T, 4> dq({1, 1, nq, d}, T(7)), dq2({1, 1, nq, d}, T(7)), dk({1, 1, nk, d}), dk2({1, 1, nk, d}),
      dvv({1, 1, nk, dv});
  Tensor<T, 3> dlambda({1, 1, nq}, T(7));
  diffattn::softmax_attention_backward<T>(q, k, v, dout, dq, dk, dvv, options);
  for (index_t c = 0; c < d; ++c) EXPECT_EQ(dq(0, 0, 2, c), T(0));
  diffattn::diff_attention_backward<T>(q, q2, k, k, v, lambda, dout, dq, dq2, dk, dk2, dvv, dlambda, options);
  for (index_t c = 0; c < d; ++c) {
    EXPECT_EQ(dq(0, 0, 2, c), T(0));
    EXPECT_EQ(dq2(0, 0, 2, c), T(0));
  }
  EXPECT_EQ(dlambda(0, 0, 2), T(0));
  for (const auto* t : {&dk, &dk2, &dvv}) {
    for (index_t e = 0; e < t->size(); ++e) EXPECT_TRUE(std::isfinite(t->data()[e]));
  }
}

TYPED_TEST(BackwardTest, HugeLogitsDoNotOverflow) {
  using T = TypeParam;
  // Logits of ±1e30 through q·k (scale 1): each row puts all its weight on key 11, so
  // dv of key 11 is Σ dout and every other gradient is 0 (a saturated softmax).
  const index_t n = 37;
  Tensor<T, 4> q({1, 1, n, 1}), k({1, 1, n, 1}), v({1, 1, n, 3}), dout({1, 1, n, 3});
  for (index_t i = 0; i < n; ++i) {
    q(0, 0, i, 0) = T(1e15);
    k(0, 0, i, 0) = i == 11 ? T(1e15) : T(-1e15);
    for (index_t c = 0; c < 3; ++c) {
      v(0, 0, i, c) = static_cast<T>(i + c);
      dout(0, 0, i, c) = static_cast<T>(c + 1);
    }
  }
  AttentionOptions<T> options;
  options.scale = 1;
  Tensor<T, 4> dq({1, 1, n, 1}), dk({1, 1, n, 1}), dvv({1, 1, n, 3});
  diffattn::softmax_attention_backward<T>(q, k, v, dout, dq, dk, dvv, options);
  for (index_t i = 0; i < n; ++i) {
    EXPECT_EQ(dq(0, 0, i, 0), T(0));
    EXPECT_EQ(dk(0, 0, i, 0), T(0));
    for (index_t c = 0; c < 3; ++c) EXPECT_EQ(dvv(0, 0, i, c), i == 11 ? static_cast<T>(n * (c + 1)) : T(0));
  }
}

TYPED_TEST(BackwardTest, SharedKeysReceiveTheSumOfBothMaps) {
  using T = TypeParam;
  Case c = draw_case(11);
  c.shared_keys = true;
  c.threads = 2;
  std::mt19937_64 rng(c.seed);
  Inputs<T> in(c, rng);
  auto dout = random_tensor<T, 4>({c.batch, c.kv_heads * c.group, c.q_len, c.value_dim}, rng);
  AttentionOptions<T> options;
  options.causal = c.causal;
  options.mask = in.mask;
  Gradients<T> shared(c), apart(c);
  run_backward<T>(true, false, true, in.q1, in.q2, in.k1, in.k1, in.v, in.lambda_head, in.lambda_token, dout.view(),
                  shared, options, false);
  run_backward<T>(true, false, false, in.q1, in.q2, in.k1, in.k1, in.v, in.lambda_head, in.lambda_token, dout.view(),
                  apart, options, false);
  double worst = 0, size = 0;
  for (index_t e = 0; e < shared.dk1.size(); ++e) {
    const double sum = static_cast<double>(apart.dk1.data()[e]) + static_cast<double>(apart.dk2.data()[e]);
    worst = std::max(worst, std::abs(static_cast<double>(shared.dk1.data()[e]) - sum));
    size = std::max(size, std::abs(sum));
  }
  EXPECT_LE(worst, 64 * std::numeric_limits<T>::epsilon() * std::max(size, 1e-30));
}

// ---- half precision ---------------------------------------------------------------------

/// One mix of element types: q (and dout), k/v, dq, dk/dv.
template <class Q, class KV, class GQ, class GK>
struct Mix {
  using q_type = Q;
  using kv_type = KV;
  using dq_type = GQ;
  using dk_type = GK;
};

/// The rounding of a gradient stored in G, relative to the gradient's largest magnitude.
template <class G>
double storage_rounding() {
  if constexpr (std::is_same_v<G, diffattn::bf16>) return std::ldexp(1.0, -8);
  if constexpr (std::is_same_v<G, diffattn::f16>) return std::ldexp(1.0, -11);
  return 0.0;
}

/// The half-precision backward against the reference run in double on the same (exactly
/// converted) values: the float bound, plus the rounding of a half-precision gradient.
template <class M>
void run_half_case(const Case& c) {
  using Q = typename M::q_type;
  using KV = typename M::kv_type;
  using GQ = typename M::dq_type;
  using GK = typename M::dk_type;
  SCOPED_TRACE(c.describe());
  std::mt19937_64 rng(c.seed * 7919 + 1);
  const Inputs<float> floats(c, rng);
  const Inputs<Q> queries(c, rng);
  const Inputs<KV> keys_values(c, rng);
  const index_t q_heads = c.kv_heads * c.group;
  auto dout = random_tensor<Q, 4>({c.batch, q_heads, c.q_len, c.value_dim}, rng);
  const AttentionOptions<float> options = case_options(c, floats.mask);
  const ReferenceInputs ref(c, queries, keys_values, floats);
  const TensorView<const double, 4> k2 = c.shared_keys ? ref.k1.view() : ref.k2.view();
  auto dout_d = copy_as<double>(dout.view());
  auto lambda_head = copy_as<double>(floats.lambda_head.view());
  Tensor<double, 3> lambda_rows({c.batch, q_heads, c.q_len});
  for_each_index(lambda_rows.shape(), [&](const auto& idx) { lambda_rows.view().at(idx) = lambda_head(idx[1]); });
  const double scale = 1 / std::sqrt(static_cast<double>(std::max<index_t>(c.head_dim, 1)));
  const double q_max = std::max(max_abs(queries.q1), max_abs(queries.q2));
  const double k_max = std::max(max_abs(keys_values.k1), max_abs(keys_values.k2));
  const double g_max = max_abs(dout.view());
  auto within = [](const auto& got, const auto& want, double bound, double rounding, const char* name) {
    EXPECT_LE(max_abs_diff(got.view(), want.view()), bound + rounding * max_abs(want.view())) << name;
  };
  for (const bool diff : {false, true}) {
    SCOPED_TRACE(diff ? "differential" : "standard");
    const Magnitudes m = magnitudes(diff, ref.q1, ref.q2, ref.k1, k2, ref.v, lambda_rows, dout_d, ref.options);
    const BackwardBounds bound =
        backward_bounds<float>(c, scale, diff ? max_abs(floats.lambda_head.view()) : 0.0, q_max, k_max, g_max, m);
    Tensor<GQ, 4> dq1({c.batch, q_heads, c.q_len, c.head_dim}), dq2(dq1.shape());
    Tensor<GK, 4> dk1({c.batch, c.kv_heads, c.kv_len, c.head_dim}), dk2(dk1.shape());
    Tensor<GK, 4> dv({c.batch, c.kv_heads, c.kv_len, c.value_dim});
    Tensor<float, 1> dlambda({q_heads});
    Gradients<double> want(c);
    const bool shared = c.shared_keys && diff;
    if (!diff) {
      diffattn::softmax_attention_backward(queries.q1, keys_values.k1, keys_values.v, dout.view(), dq1.view(),
                                           dk1.view(), dv.view(), options);
    } else {
      diffattn::diff_attention_backward(queries.q1, queries.q2, keys_values.k1, keys_values.k2, keys_values.v,
                                        floats.lambda_head.view(), dout.view(), dq1.view(), dq2.view(), dk1.view(),
                                        shared ? dk1.view() : dk2.view(), dv.view(), dlambda.view(), options);
    }
    run_backward<double>(diff, false, shared, ref.q1, ref.q2, ref.k1, k2, ref.v, lambda_head, {}, dout_d, want,
                         ref.options, true);
    within(dq1, want.dq1, bound.dq, storage_rounding<GQ>(), "dq1");
    within(dk1, want.dk1, bound.dk * (shared ? 2 : 1), storage_rounding<GK>(), "dk1");
    within(dv, want.dv, bound.dv, storage_rounding<GK>(), "dv");
    if (!diff) continue;
    within(dq2, want.dq2, bound.dq, storage_rounding<GQ>(), "dq2");
    if (!shared) within(dk2, want.dk2, bound.dk, storage_rounding<GK>(), "dk2");
    within(dlambda, want.dlambda_head, static_cast<double>(c.batch * c.q_len) * bound.dlambda_per_row, 0.0,
           "dlambda");
  }
}

using diffattn::bf16;
using diffattn::f16;
template <class M>
class BackwardHalfTest : public ::testing::Test {};
using HalfMixes = ::testing::Types<Mix<bf16, bf16, float, float>, Mix<bf16, bf16, bf16, bf16>, Mix<f16, f16, f16, f16>,
                                   Mix<float, bf16, float, bf16>>;
TYPED_TEST_SUITE(BackwardHalfTest, HalfMixes);

TYPED_TEST(BackwardHalfTest, RandomCasesMatchReference) {
  for (std::uint64_t seed = 1; seed <= DIFFATTN_BACKWARD_CASES / 4; ++seed) {
    run_half_case<TypeParam>(draw_backward_case(seed + 5000));
    if (::testing::Test::HasFailure()) break;
  }
}

}  // namespace
}  // namespace diffattn_test
