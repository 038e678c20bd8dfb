// The backward pass from first principles: the reference gradients against central
// finite differences of the reference forward (in double), lambda_reparam_backward
// against finite differences of lambda_reparam, the argument checks of every backward
// entry point (reference and fused share validation_backward.hpp, so each check runs
// against both), and the edge cases (rows that see no key, ±1e30 logits) where the fused
// kernel is also spot-checked against the reference.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "helpers.hpp"

namespace diffattn_test {
namespace {

namespace ref = diffattn::reference;
using diffattn::AttentionOptions;

constexpr double kInf = std::numeric_limits<double>::infinity();

// Central differences (L(x+h) − L(x−h))/2h miss ∂L/∂x by a truncation error
// h²/6·|∂³L/∂x³| and a rounding error of about ε·Σ|out∘dout|/h (the forward and the
// loss rounded in double, divided by 2h). Inputs here lie in [−2, 2] with scale <= 1.3
// and D <= 3, so the third derivatives are O(1) and Σ|out∘dout| < 20: h = 1e-5, close
// to the optimum (3ε·|L|/|L'''|)^(1/3), leaves errors of order 1e-10 (the worst measured
// over this file is 1.7e-10 of max(|g|, 1)), and the tolerance 1e-7·max(|g|, 1) is a
// margin of about 600. A real mistake in a gradient — a missing term, a wrong sign, head
// or index — is of the order of the gradient itself.
constexpr double kStep = 1e-5;
constexpr double kFiniteDifferenceTolerance = 1e-7;

// The fused kernel in double against the reference: the bound in attention_backward.hpp
// is a few hundred ε (ε = 2.2e-16) times the gradient's scale for these sizes; the worst
// measured here is 1.4e-15 of the largest reference element, and 1e-12 leaves room for
// other tilings and instruction sets.
constexpr double kFusedTolerance = 1e-12;

template <std::size_t R>
std::string index_text(const std::array<index_t, R>& idx) {
  std::ostringstream out;
  out << "[";
  for (std::size_t d = 0; d < R; ++d) out << (d ? ", " : "") << idx[d];
  out << "]";
  return out.str();
}

/// Σ a∘b in double.
double inner_product(TensorView<const double, 4> a, TensorView<const double, 4> b) {
  double sum = 0;
  for_each_index(a.shape(), [&](const auto& idx) { sum += a.at(idx) * b.at(idx); });
  return sum;
}

/// Expects every element of `gradient` to match the central difference of `loss` in the
/// same element of `input`, which is perturbed in place and restored exactly.
template <std::size_t R, class Loss>
void expect_matches_finite_differences(const std::string& name, TensorView<double, R> input,
                                       diffattn::detail::identity_t<TensorView<const double, R>> gradient,
                                       Loss&& loss) {
  ASSERT_EQ(input.shape(), gradient.shape()) << name;
  for_each_index(input.shape(), [&](const auto& idx) {
    double& x = input.at(idx);
    const double original = x;
    const double up_x = original + kStep, down_x = original - kStep;
    x = up_x;
    const double up = loss();
    x = down_x;
    const double down = loss();
    x = original;
    const double difference = (up - down) / (up_x - down_x);
    const double g = gradient.at(idx);
    EXPECT_LE(std::abs(difference - g), kFiniteDifferenceTolerance * std::max(std::abs(g), 1.0))
        << name << index_text(idx) << ": analytic " << g << ", finite difference " << difference;
  });
}

template <std::size_t R>
double max_difference(const Tensor<double, R>& a, const Tensor<double, R>& b) {
  return max_abs_diff(a.view(), b.view());
}
template <std::size_t R>
double max_magnitude(const Tensor<double, R>& a) {
  return max_abs(a.view());
}

/// |fused − reference| <= kFusedTolerance·max|reference| elementwise (exact where the
/// reference is all zeros).
template <std::size_t R>
void expect_fused_matches(const std::string& name, const Tensor<double, R>& fused,
                          const Tensor<double, R>& reference) {
  EXPECT_LE(max_difference(fused, reference), kFusedTolerance * max_magnitude(reference))
      << name << ": max |fused − reference| " << max_difference(fused, reference) << ", scale "
      << max_magnitude(reference);
}

struct Shape {
  index_t batch, q_heads, kv_heads, q_len, kv_len, head_dim, value_dim;
};

struct GradientCase {
  const char* name;
  Shape shape;
  bool causal = false;
  /// An additive [B, 1, Nq, Nk] mask with scattered −inf entries, row 1 of batch 0 fully
  /// masked, and (with B > 1) the last key masked for every row of batch 1.
  bool mask = false;
  double scale = 0;
};

// Tiny on purpose: every input element costs two forward passes.
const GradientCase kCases[] = {
    {"standard", {1, 2, 2, 3, 4, 3, 3}},
    {"dv_differs_from_d", {2, 2, 2, 3, 4, 2, 5}},
    {"grouped_query", {1, 4, 2, 3, 4, 3, 2}},
    {"causal_nq_below_nk", {1, 2, 1, 3, 5, 3, 2}, true},
    {"causal_nq_above_nk", {1, 2, 1, 5, 3, 3, 2}, true},
    {"mask_with_minus_inf", {2, 2, 1, 3, 4, 3, 2}, false, true},
    {"explicit_scale", {1, 2, 2, 3, 4, 3, 2}, false, false, 0.7},
    {"all_at_once", {2, 4, 2, 4, 3, 3, 2}, true, true, 1.3},
};

/// Random inputs (and dout) of one case. Not copyable: options.mask points into `mask`.
struct Problem {
  Shape s;
  Tensor<double, 4> q1, q2, k1, k2, v, dout, mask;
  AttentionOptions<double> options;

  Problem(const GradientCase& c, std::uint64_t seed) : s(c.shape) {
    std::mt19937_64 rng(seed);
    q1 = random_tensor<double, 4>(q_shape(), rng);
    q2 = random_tensor<double, 4>(q_shape(), rng);
    k1 = random_tensor<double, 4>(k_shape(), rng);
    k2 = random_tensor<double, 4>(k_shape(), rng);
    v = random_tensor<double, 4>(v_shape(), rng, -2, 2);
    dout = random_tensor<double, 4>(out_shape(), rng);
    options.causal = c.causal;
    options.scale = c.scale;
    if (c.mask) {
      mask = random_tensor<double, 4>({s.batch, 1, s.q_len, s.kv_len}, rng);
      mask(0, 0, 0, 0) = -kInf;
      mask(0, 0, s.q_len - 1, s.kv_len - 1) = -kInf;
      for (index_t j = 0; j < s.kv_len; ++j) mask(0, 0, 1, j) = -kInf;
      if (s.batch > 1) {
        for (index_t i = 0; i < s.q_len; ++i) mask(1, 0, i, s.kv_len - 1) = -kInf;
      }
      options.mask = mask.view();
    }
  }
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;

  std::array<index_t, 4> q_shape() const { return {s.batch, s.q_heads, s.q_len, s.head_dim}; }
  std::array<index_t, 4> k_shape() const { return {s.batch, s.kv_heads, s.kv_len, s.head_dim}; }
  std::array<index_t, 4> v_shape() const { return {s.batch, s.kv_heads, s.kv_len, s.value_dim}; }
  std::array<index_t, 4> out_shape() const { return {s.batch, s.q_heads, s.q_len, s.value_dim}; }

  /// Keys [0, limit) are causally visible to row i (bottom-right aligned).
  index_t key_limit(index_t i) const {
    if (!options.causal) return s.kv_len;
    return std::clamp<index_t>(i + 1 + s.kv_len - s.q_len, 0, s.kv_len);
  }
  bool sees(index_t b, index_t i, index_t j) const {
    return j < key_limit(i) && (mask.empty() || mask(b, 0, i, j) != -kInf);
  }
  bool row_sees_a_key(index_t b, index_t i) const {
    for (index_t j = 0; j < s.kv_len; ++j) {
      if (sees(b, i, j)) return true;
    }
    return false;
  }
  bool key_is_seen(index_t b, index_t j) const {
    for (index_t i = 0; i < s.q_len; ++i) {
      if (sees(b, i, j)) return true;
    }
    return false;
  }
};

/// Rows that see no key have exactly zero dq; keys no row sees have exactly zero dk, dv.
/// Also that the case has some of each when it promises to.
void expect_zero_where_unseen(const Problem& p, TensorView<const double, 4> dq, TensorView<const double, 4> dk,
                              TensorView<const double, 4> dv) {
  for_each_index(dq.shape(), [&](const auto& idx) {
    if (!p.row_sees_a_key(idx[0], idx[2])) {
      EXPECT_EQ(dq.at(idx), 0.0) << "dq" << index_text(idx);
    }
  });
  for_each_index(dk.shape(), [&](const auto& idx) {
    if (!p.key_is_seen(idx[0], idx[2])) {
      EXPECT_EQ(dk.at(idx), 0.0) << "dk" << index_text(idx);
    }
  });
  for_each_index(dv.shape(), [&](const auto& idx) {
    if (!p.key_is_seen(idx[0], idx[2])) {
      EXPECT_EQ(dv.at(idx), 0.0) << "dv" << index_text(idx);
    }
  });
}

Tensor<double, 4> sentinel_tensor(const std::array<index_t, 4>& shape) {
  // NaN: an element the backward leaves unwritten (or accumulates into) fails every check.
  return Tensor<double, 4>(shape, std::numeric_limits<double>::quiet_NaN());
}

enum class Impl { reference, fused };
constexpr Impl kImpls[] = {Impl::reference, Impl::fused};
const char* impl_name(Impl impl) { return impl == Impl::reference ? "reference" : "fused"; }

/// The gradients of one softmax_attention_backward call (reference or fused), written
/// over NaN.
struct SoftmaxGradients {
  Tensor<double, 4> dq, dk, dv;
  SoftmaxGradients(Impl impl, TensorView<const double, 4> q, TensorView<const double, 4> k,
                   TensorView<const double, 4> v, TensorView<const double, 4> dout,
                   const AttentionOptions<double>& options)
      : dq(sentinel_tensor(q.shape())), dk(sentinel_tensor(k.shape())), dv(sentinel_tensor(v.shape())) {
    if (impl == Impl::reference) {
      ref::softmax_attention_backward<double>(q, k, v, dout, dq, dk, dv, options);
    } else {
      diffattn::softmax_attention_backward<double>(q, k, v, dout, dq, dk, dv, options);
    }
  }
};

/// The gradients of one diff_attention_backward call (reference or fused), written over
/// NaN. `shared_dk` passes dk1 as both dk1 and dk2 (dk2 then stays NaN).
template <std::size_t LambdaRank>
struct DiffGradients {
  Tensor<double, 4> dq1, dq2, dk1, dk2, dv;
  Tensor<double, LambdaRank> dlambda;
  DiffGradients(Impl impl, TensorView<const double, 4> q1, TensorView<const double, 4> q2,
                TensorView<const double, 4> k1, TensorView<const double, 4> k2, TensorView<const double, 4> v,
                TensorView<const double, LambdaRank> lambda, TensorView<const double, 4> dout,
                const AttentionOptions<double>& options, bool shared_dk)
      : dq1(sentinel_tensor(q1.shape())),
        dq2(sentinel_tensor(q1.shape())),
        dk1(sentinel_tensor(k1.shape())),
        dk2(sentinel_tensor(k1.shape())),
        dv(sentinel_tensor(v.shape())),
        dlambda(lambda.shape(), std::numeric_limits<double>::quiet_NaN()) {
    const TensorView<double, 4> dk2_view = shared_dk ? dk1.view() : dk2.view();
    if (impl == Impl::reference) {
      ref::diff_attention_backward<double>(q1, q2, k1, k2, v, lambda, dout, dq1, dq2, dk1, dk2_view, dv, dlambda,
                                           options);
    } else {
      diffattn::diff_attention_backward<double>(q1, q2, k1, k2, v, lambda, dout, dq1, dq2, dk1, dk2_view, dv,
                                                dlambda, options);
    }
  }
  /// On p; `shared_keys` passes k1 as both k1 and k2, and dk1 as both dk1 and dk2.
  DiffGradients(Impl impl, const Problem& p, TensorView<const double, LambdaRank> lambda, bool shared_keys)
      : DiffGradients(impl, p.q1, p.q2, p.k1, shared_keys ? p.k1.view() : p.k2.view(), p.v, lambda, p.dout,
                      p.options, shared_keys) {}
};

TEST(ReferenceBackwardTest, SoftmaxMatchesFiniteDifferences) {
  std::uint64_t seed = 100;
  for (const GradientCase& c : kCases) {
    SCOPED_TRACE(std::string(c.name) + " " + describe_seed(seed));
    Problem p(c, seed++);
    const SoftmaxGradients g(Impl::reference, p.q1, p.k1, p.v, p.dout, p.options);
    Tensor<double, 4> out(p.out_shape());
    const auto loss = [&] {
      ref::softmax_attention<double>(p.q1, p.k1, p.v, out, p.options);
      return inner_product(out.view(), p.dout.view());
    };
    expect_matches_finite_differences("dq", p.q1.view(), g.dq.view(), loss);
    expect_matches_finite_differences("dk", p.k1.view(), g.dk.view(), loss);
    expect_matches_finite_differences("dv", p.v.view(), g.dv.view(), loss);
    expect_zero_where_unseen(p, g.dq, g.dk, g.dv);

    const SoftmaxGradients fused(Impl::fused, p.q1, p.k1, p.v, p.dout, p.options);
    expect_fused_matches("fused dq", fused.dq, g.dq);
    expect_fused_matches("fused dk", fused.dk, g.dk);
    expect_fused_matches("fused dv", fused.dv, g.dv);
  }
}

// The cases that promise unseen rows and keys have them, so the zero checks bite.
TEST(ReferenceBackwardTest, CasesContainUnseenRowsAndKeys) {
  Problem above(kCases[4], 0), masked(kCases[5], 0);
  EXPECT_FALSE(above.row_sees_a_key(0, 0));
  EXPECT_FALSE(above.row_sees_a_key(0, 1));
  EXPECT_TRUE(above.row_sees_a_key(0, 2));
  EXPECT_FALSE(masked.row_sees_a_key(0, 1));
  EXPECT_FALSE(masked.key_is_seen(1, masked.s.kv_len - 1));
}

/// The full finite-difference check of diff_attention_backward on p with λ (which it
/// perturbs too), plus the fused kernel against the reference.
template <std::size_t LambdaRank>
void check_diff_case(Problem& p, Tensor<double, LambdaRank>& lambda, bool shared_keys) {
  const DiffGradients<LambdaRank> g(Impl::reference, p, lambda, shared_keys);
  Tensor<double, 4> out(p.out_shape());
  const auto loss = [&] {
    ref::diff_attention<double>(p.q1, p.q2, p.k1, shared_keys ? p.k1.view() : p.k2.view(), p.v, lambda.view(), out,
                                p.options);
    return inner_product(out.view(), p.dout.view());
  };
  expect_matches_finite_differences("dq1", p.q1.view(), g.dq1.view(), loss);
  expect_matches_finite_differences("dq2", p.q2.view(), g.dq2.view(), loss);
  // With shared keys, perturbing k1 moves both maps' keys: dk1 holds the sum.
  expect_matches_finite_differences("dk1", p.k1.view(), g.dk1.view(), loss);
  if (!shared_keys) expect_matches_finite_differences("dk2", p.k2.view(), g.dk2.view(), loss);
  expect_matches_finite_differences("dv", p.v.view(), g.dv.view(), loss);
  // Perturbing a broadcast λ element moves every position that reads it: the sum.
  expect_matches_finite_differences("dlambda", lambda.view(), g.dlambda.view(), loss);
  expect_zero_where_unseen(p, g.dq1, g.dk1, g.dv);
  expect_zero_where_unseen(p, g.dq2, shared_keys ? g.dk1 : g.dk2, g.dv);

  const DiffGradients<LambdaRank> fused(Impl::fused, p, lambda, shared_keys);
  expect_fused_matches("fused dq1", fused.dq1, g.dq1);
  expect_fused_matches("fused dq2", fused.dq2, g.dq2);
  expect_fused_matches("fused dk1", fused.dk1, g.dk1);
  if (!shared_keys) expect_fused_matches("fused dk2", fused.dk2, g.dk2);
  expect_fused_matches("fused dv", fused.dv, g.dv);
  expect_fused_matches("fused dlambda", fused.dlambda, g.dlambda);
}

TEST(ReferenceBackwardTest, DiffMatchesFiniteDifferencesWithLambdaPerHead) {
  std::uint64_t seed = 200;
  for (const GradientCase& c : kCases) {
    SCOPED_TRACE(std::string(c.name) + " " + describe_seed(seed));
    Problem p(c, seed++);
    std::mt19937_64 rng(seed);
    // λ of either sign: the gradients must not assume 0 < λ < 1.
    auto lambda = random_tensor<double, 1>({c.shape.q_heads}, rng, -0.5, 1.0);
    check_diff_case<1>(p, lambda, false);
  }
}

// Every broadcast form of λ: the finite difference of a broadcast element is the sum
// over the positions that read it, so dλ must be that sum.
TEST(ReferenceBackwardTest, DiffMatchesFiniteDifferencesForEveryLambdaShape) {
  const GradientCase& c = kCases[7];  // grouped-query, causal with Nq > Nk, masked, B = 2
  const Shape& s = c.shape;
  std::uint64_t seed = 300;
  for (const std::array<index_t, 1>& shape : {std::array<index_t, 1>{s.q_heads}, std::array<index_t, 1>{1}}) {
    SCOPED_TRACE("lambda " + index_text(shape) + " " + describe_seed(seed));
    Problem p(c, seed);
    std::mt19937_64 rng(seed++);
    auto lambda = random_tensor<double, 1>(shape, rng, -0.5, 1.0);
    check_diff_case<1>(p, lambda, false);
  }
  for (const std::array<index_t, 3>& shape :
       {std::array<index_t, 3>{s.batch, s.q_heads, s.q_len}, std::array<index_t, 3>{1, 1, 1},
        std::array<index_t, 3>{1, s.q_heads, 1}, std::array<index_t, 3>{s.batch, 1, s.q_len},
        std::array<index_t, 3>{s.batch, 1, 1}, std::array<index_t, 3>{1, 1, s.q_len},
        std::array<index_t, 3>{s.batch, s.q_heads, 1}}) {
    SCOPED_TRACE("lambda " + index_text(shape) + " " + describe_seed(seed));
    Problem p(c, seed);
    std::mt19937_64 rng(seed++);
    auto lambda = random_tensor<double, 3>(shape, rng, -0.5, 1.0);
    check_diff_case<3>(p, lambda, false);
  }
}

// The same sum, checked against the per-position dλ of the unbroadcast form with the
// same values (to rounding: the sums run in another order).
TEST(ReferenceBackwardTest, BroadcastLambdaGradientIsTheSumOfPerTokenOnes) {
  const GradientCase& c = kCases[7];
  const Shape& s = c.shape;
  Problem p(c, 400);
  const std::array<index_t, 3> full_shape{s.batch, s.q_heads, s.q_len};
  for (const std::array<index_t, 3>& shape :
       {std::array<index_t, 3>{1, 1, 1}, std::array<index_t, 3>{1, s.q_heads, 1},
        std::array<index_t, 3>{s.batch, 1, s.q_len}, std::array<index_t, 3>{1, 1, s.q_len}}) {
    SCOPED_TRACE(index_text(shape));
    std::mt19937_64 rng(401);
    auto lambda = random_tensor<double, 3>(shape, rng, -0.5, 1.0);
    Tensor<double, 3> widened(full_shape);
    for_each_index(full_shape, [&](const auto& idx) {
      widened.view().at(idx) = lambda(shape[0] == 1 ? 0 : idx[0], shape[1] == 1 ? 0 : idx[1],
                                      shape[2] == 1 ? 0 : idx[2]);
    });
    const DiffGradients<3> broadcast(Impl::reference, p, lambda, false);
    const DiffGradients<3> full(Impl::reference, p, widened, false);
    Tensor<double, 3> summed(shape);
    for_each_index(full_shape, [&](const auto& idx) {
      summed(shape[0] == 1 ? 0 : idx[0], shape[1] == 1 ? 0 : idx[1], shape[2] == 1 ? 0 : idx[2]) +=
          full.dlambda.view().at(idx);
    });
    EXPECT_LE(max_difference(broadcast.dlambda, summed), 1e-14 * std::max(max_magnitude(summed), 1.0));
    // The other gradients do not depend on how λ is stored.
    EXPECT_EQ(max_difference(broadcast.dq2, full.dq2), 0.0);
    EXPECT_EQ(max_difference(broadcast.dk1, full.dk1), 0.0);
    EXPECT_EQ(max_difference(broadcast.dv, full.dv), 0.0);
  }
}

// k1 and k2 one view, dk1 and dk2 one view: it receives both maps' key gradients, which
// the finite difference of the shared tensor measures, and which separate dk1, dk2 of
// the same call add up to.
TEST(ReferenceBackwardTest, SharedKeysGetTheSumOfBothMapsGradients) {
  std::uint64_t seed = 500;
  for (const GradientCase& c : {kCases[2], kCases[7]}) {
    SCOPED_TRACE(std::string(c.name) + " " + describe_seed(seed));
    Problem p(c, seed);
    std::mt19937_64 rng(seed++);
    auto lambda = random_tensor<double, 1>({c.shape.q_heads}, rng, -0.5, 1.0);
    check_diff_case<1>(p, lambda, true);

    const DiffGradients<1> shared(Impl::reference, p, lambda, true);
    // The same call with dk1, dk2 apart: each map's own key gradient.
    const DiffGradients<1> separate(Impl::reference, p.q1, p.q2, p.k1, p.k1, p.v, lambda, p.dout, p.options, false);
    Tensor<double, 4> sum(p.k_shape());
    for_each_index(sum.shape(), [&](const auto& idx) {
      sum.view().at(idx) = separate.dk1.view().at(idx) + separate.dk2.view().at(idx);
    });
    EXPECT_LE(max_difference(shared.dk1, sum), 1e-15 * std::max(max_magnitude(sum), 1.0));
    EXPECT_EQ(max_difference(shared.dq1, separate.dq1), 0.0);
    EXPECT_EQ(max_difference(shared.dlambda, separate.dlambda), 0.0);
  }
}

// Edge cases: rows that see no key, ±1e30 logits, empty extents

template <std::size_t R>
bool all_finite(const Tensor<double, R>& t) {
  bool finite = true;
  for_each_index(t.shape(), [&](const auto& idx) { finite = finite && std::isfinite(t.view().at(idx)); });
  return finite;
}

/// Expects got within factor·max|expected| of expected, gradient by gradient.
void expect_gradients_match(const SoftmaxGradients& got, const SoftmaxGradients& expected, double factor) {
  EXPECT_TRUE(all_finite(got.dq) && all_finite(got.dk) && all_finite(got.dv));
  EXPECT_LE(max_difference(got.dq, expected.dq), factor * max_magnitude(expected.dq));
  EXPECT_LE(max_difference(got.dk, expected.dk), factor * max_magnitude(expected.dk));
  EXPECT_LE(max_difference(got.dv, expected.dv), factor * max_magnitude(expected.dv));
}

template <std::size_t LambdaRank>
void expect_gradients_match(const DiffGradients<LambdaRank>& got, const DiffGradients<LambdaRank>& expected,
                            double factor) {
  EXPECT_TRUE(all_finite(got.dq1) && all_finite(got.dq2) && all_finite(got.dk1) && all_finite(got.dk2) &&
              all_finite(got.dv) && all_finite(got.dlambda));
  EXPECT_LE(max_difference(got.dq1, expected.dq1), factor * max_magnitude(expected.dq1));
  EXPECT_LE(max_difference(got.dq2, expected.dq2), factor * max_magnitude(expected.dq2));
  EXPECT_LE(max_difference(got.dk1, expected.dk1), factor * max_magnitude(expected.dk1));
  EXPECT_LE(max_difference(got.dk2, expected.dk2), factor * max_magnitude(expected.dk2));
  EXPECT_LE(max_difference(got.dv, expected.dv), factor * max_magnitude(expected.dv));
  EXPECT_LE(max_difference(got.dlambda, expected.dlambda), factor * max_magnitude(expected.dlambda));
}

// A row that sees no key (fully masked, or before the causal diagonal with Nq > Nk) has
// zero dq, and its dout reaches no gradient: making it huge changes nothing, bit for bit.
TEST(BackwardEdgeTest, RowsThatSeeNoKeyIgnoreTheirDout) {
  for (const GradientCase& c : {kCases[4], kCases[5], kCases[7]}) {
    SCOPED_TRACE(c.name);
    Problem p(c, 700);
    Tensor<double, 4> loud_dout = p.dout;
    for_each_index(loud_dout.shape(), [&](const auto& idx) {
      if (!p.row_sees_a_key(idx[0], idx[2])) loud_dout.view().at(idx) = 1e300;
    });
    std::mt19937_64 rng(701);
    const auto lambda = random_tensor<double, 1>({c.shape.q_heads}, rng, -0.5, 1.0);
    for (Impl impl : kImpls) {
      SCOPED_TRACE(impl_name(impl));
      const SoftmaxGradients quiet(impl, p.q1, p.k1, p.v, p.dout, p.options);
      const SoftmaxGradients loud(impl, p.q1, p.k1, p.v, loud_dout, p.options);
      expect_gradients_match(loud, quiet, 0.0);
      expect_zero_where_unseen(p, loud.dq, loud.dk, loud.dv);

      const DiffGradients<1> diff_quiet(impl, p.q1, p.q2, p.k1, p.k2, p.v, lambda, p.dout, p.options, false);
      const DiffGradients<1> diff_loud(impl, p.q1, p.q2, p.k1, p.k2, p.v, lambda, loud_dout, p.options, false);
      expect_gradients_match(diff_loud, diff_quiet, 0.0);
    }
  }
}

// Mask logits of ±1e30 swamp q·k (|q·k| < 3 is lost rounding to 1e30): a +1e30 key takes
// all the weight, so its row's dq is exactly zero and its dout goes whole to that key's
// dv; a row of −1e30 logits whose q is zero is exactly uniform. Those are the gradients
// of the equivalent finite mask (−inf for the keys the +1e30 hides, 0 for the uniform
// row), bit for bit in the reference; the fused kernel matches to its tolerance.
TEST(BackwardEdgeTest, HugeMaskLogitsGiveTheGradientsOfTheEquivalentMask) {
  std::mt19937_64 rng(710);
  const index_t heads = 2, q_len = 3, kv_len = 4;
  auto q1 = random_tensor<double, 4>({1, heads, q_len, 2}, rng);
  auto q2 = random_tensor<double, 4>({1, heads, q_len, 2}, rng);
  const auto k1 = random_tensor<double, 4>({1, 1, kv_len, 2}, rng);
  const auto k2 = random_tensor<double, 4>({1, 1, kv_len, 2}, rng);
  const auto v = random_tensor<double, 4>({1, 1, kv_len, 3}, rng, -2, 2);
  const auto dout = random_tensor<double, 4>({1, heads, q_len, 3}, rng);
  const auto lambda = random_tensor<double, 1>({heads}, rng, -0.5, 1.0);
  for (index_t h = 0; h < heads; ++h) {
    for (index_t c = 0; c < 2; ++c) q1(0, h, 1, c) = q2(0, h, 1, c) = 0.0;
  }
  Tensor<double, 4> huge({1, 1, q_len, kv_len}, -1e30), equivalent({1, 1, q_len, kv_len}, -kInf);
  huge(0, 0, 0, 1) = 1e30;
  equivalent(0, 0, 0, 1) = 0;
  for (index_t j = 0; j < kv_len; ++j) {
    equivalent(0, 0, 1, j) = 0;
    huge(0, 0, 2, j) = equivalent(0, 0, 2, j) = 0.25 * static_cast<double>(j);  // an ordinary row
  }
  AttentionOptions<double> huge_options, equivalent_options;
  huge_options.mask = huge.view();
  equivalent_options.mask = equivalent.view();

  const SoftmaxGradients expected(Impl::reference, q1, k1, v, dout, equivalent_options);
  const DiffGradients<1> diff_expected(Impl::reference, q1, q2, k1, k2, v, lambda, dout, equivalent_options, false);
  for (index_t h = 0; h < heads; ++h) {
    for (index_t c = 0; c < 2; ++c) {
      EXPECT_EQ(expected.dq(0, h, 0, c), 0.0);
      EXPECT_EQ(diff_expected.dq1(0, h, 0, c), 0.0);
      EXPECT_EQ(diff_expected.dq2(0, h, 0, c), 0.0);
    }
  }
  for (Impl impl : kImpls) {
    SCOPED_TRACE(impl_name(impl));
    const double factor = impl == Impl::reference ? 0.0 : kFusedTolerance;
    expect_gradients_match(SoftmaxGradients(impl, q1, k1, v, dout, huge_options), expected, factor);
    expect_gradients_match(DiffGradients<1>(impl, q1, q2, k1, k2, v, lambda, dout, huge_options, false),
                           diff_expected, factor);
  }
}

// Logits of ±1e30 through q·k itself (q = 1e15, k = ±1e15, scale 1): key 1 takes all the
// weight, so dq = 0, dk = 0 (dS is exactly zero: P = 1 against D = dP), dv(key 1) = dout
// and dv(key 0) = 0 — finite, though |q|, |k| = 1e15.
TEST(BackwardEdgeTest, HugeDotProductLogitsGiveFiniteGradients) {
  Tensor<double, 4> q({1, 1, 1, 1}, 1e15), k({1, 1, 2, 1}), v({1, 1, 2, 2}), dout({1, 1, 1, 2});
  k(0, 0, 0, 0) = -1e15;
  k(0, 0, 1, 0) = 1e15;
  v(0, 0, 0, 0) = 1;
  v(0, 0, 0, 1) = -2;
  v(0, 0, 1, 0) = 3;
  v(0, 0, 1, 1) = 0.5;
  dout(0, 0, 0, 0) = 0.75;
  dout(0, 0, 0, 1) = -1.25;
  const double lambda_value = 0.6;
  const TensorView<const double, 1> lambda(&lambda_value, {1});
  AttentionOptions<double> options;
  options.scale = 1;
  for (Impl impl : kImpls) {
    SCOPED_TRACE(impl_name(impl));
    const SoftmaxGradients g(impl, q, k, v, dout, options);
    EXPECT_EQ(g.dq(0, 0, 0, 0), 0.0);
    EXPECT_EQ(g.dk(0, 0, 0, 0), 0.0);
    EXPECT_EQ(g.dk(0, 0, 1, 0), 0.0);
    for (index_t c = 0; c < 2; ++c) {
      EXPECT_EQ(g.dv(0, 0, 0, c), 0.0);
      EXPECT_EQ(g.dv(0, 0, 1, c), dout(0, 0, 0, c));
    }
    // Both maps the same: out = (1 − λ)·v(key 1), so dv(key 1) = (1 − λ)·dout and
    // dλ = −dout·v(key 1); no score gradient.
    const DiffGradients<1> d(impl, q, q, k, k, v, lambda, dout, options, false);
    EXPECT_EQ(d.dq1(0, 0, 0, 0), 0.0);
    EXPECT_EQ(d.dq2(0, 0, 0, 0), 0.0);
    EXPECT_EQ(d.dk1(0, 0, 1, 0), 0.0);
    EXPECT_EQ(d.dk2(0, 0, 1, 0), 0.0);
    for (index_t c = 0; c < 2; ++c) {
      EXPECT_EQ(d.dv(0, 0, 0, c), 0.0);
      EXPECT_NEAR(d.dv(0, 0, 1, c), (1 - lambda_value) * dout(0, 0, 0, c), 1e-15);
    }
    EXPECT_NEAR(d.dlambda(0), -(0.75 * 3 - 1.25 * 0.5), 1e-15);
  }
}

// Empty extents are valid calls, and every gradient element is still written: with no
// query rows (B, Hq or Nq = 0) dk, dv and dλ are zero, with no keys dq is zero.
TEST(BackwardEdgeTest, EmptyExtentsWriteZeroGradients) {
  const Shape shapes[] = {{1, 2, 1, 0, 3, 2, 2}, {1, 2, 1, 3, 0, 2, 2}, {0, 2, 1, 3, 3, 2, 2},
                          {1, 0, 0, 3, 3, 2, 2}, {1, 2, 1, 3, 3, 2, 0}, {1, 2, 1, 3, 3, 0, 2}};
  for (const Shape& s : shapes) {
    const GradientCase c{"empty", s};
    SCOPED_TRACE(index_text(std::array<index_t, 7>{s.batch, s.q_heads, s.kv_heads, s.q_len, s.kv_len, s.head_dim,
                                                   s.value_dim}));
    Problem p(c, 720);
    std::mt19937_64 rng(721);
    const auto lambda = random_tensor<double, 1>({s.q_heads}, rng, -0.5, 1.0);
    const auto per_token = random_tensor<double, 3>({s.batch, s.q_heads, s.q_len}, rng, -0.5, 1.0);
    const SoftmaxGradients expected(Impl::reference, p.q1, p.k1, p.v, p.dout, p.options);
    const DiffGradients<1> diff_expected(Impl::reference, p, lambda, false);
    const DiffGradients<3> token_expected(Impl::reference, p, per_token, false);
    if (s.q_len == 0) {
      EXPECT_EQ(max_magnitude(expected.dk), 0.0);
      EXPECT_EQ(max_magnitude(expected.dv), 0.0);
      EXPECT_EQ(max_magnitude(diff_expected.dk1), 0.0);
      EXPECT_EQ(max_magnitude(diff_expected.dk2), 0.0);
      EXPECT_EQ(max_magnitude(diff_expected.dv), 0.0);
      EXPECT_EQ(max_magnitude(diff_expected.dlambda), 0.0);
    }
    if (s.kv_len == 0) {
      EXPECT_EQ(max_magnitude(expected.dq), 0.0);
      EXPECT_EQ(max_magnitude(diff_expected.dq1), 0.0);
      EXPECT_EQ(max_magnitude(diff_expected.dq2), 0.0);
      EXPECT_EQ(max_magnitude(diff_expected.dlambda), 0.0);
    }
    for (Impl impl : kImpls) {
      SCOPED_TRACE(impl_name(impl));
      const double factor = impl == Impl::reference ? 0.0 : kFusedTolerance;
      expect_gradients_match(SoftmaxGradients(impl, p.q1, p.k1, p.v, p.dout, p.options), expected, factor);
      expect_gradients_match(DiffGradients<1>(impl, p, lambda, false), diff_expected, factor);
      expect_gradients_match(DiffGradients<3>(impl, p, per_token, false), token_expected, factor);
    }
  }
}

// lambda_reparam_backward

TEST(LambdaReparamBackwardTest, VectorFormMatchesFiniteDifferences) {
  std::mt19937_64 rng(600);
  auto q1 = random_tensor<double, 1>({5}, rng), k1 = random_tensor<double, 1>({5}, rng);
  auto q2 = random_tensor<double, 1>({5}, rng), k2 = random_tensor<double, 1>({5}, rng);
  const double dlambda = -1.7, init = 0.35;
  Tensor<double, 1> d_q1({5}, 7.0), d_k1({5}, 7.0), d_q2({5}, 7.0), d_k2({5}, 7.0);
  diffattn::lambda_reparam_backward<double>(q1, k1, q2, k2, dlambda, d_q1, d_k1, d_q2, d_k2);
  const auto loss = [&] {
    return dlambda * diffattn::lambda_reparam(q1.view(), k1.view(), q2.view(), k2.view(), init);
  };
  expect_matches_finite_differences("d_q1", q1.view(), d_q1.view(), loss);
  expect_matches_finite_differences("d_k1", k1.view(), d_k1.view(), loss);
  expect_matches_finite_differences("d_q2", q2.view(), d_q2.view(), loss);
  expect_matches_finite_differences("d_k2", k2.view(), d_k2.view(), loss);

  // A strided output gets the same values; float inputs the same to float rounding.
  Tensor<double, 1> wide({10}, 7.0);
  const TensorView<double, 1> strided = wide.view().slice(0, 1, 10, 2);
  Tensor<float, 1> q1f({5}), k1f({5}), q2f({5}), k2f({5}), d_q1f({5}), d_k1f({5}), d_q2f({5}), d_k2f({5});
  for (index_t c = 0; c < 5; ++c) {
    q1f(c) = static_cast<float>(q1(c));
    k1f(c) = static_cast<float>(k1(c));
    q2f(c) = static_cast<float>(q2(c));
    k2f(c) = static_cast<float>(k2(c));
  }
  diffattn::lambda_reparam_backward<double>(q1, k1, q2, k2, dlambda, strided, d_k1, d_q2, d_k2);
  diffattn::lambda_reparam_backward<float>(q1f, k1f, q2f, k2f, dlambda, d_q1f, d_k1f, d_q2f, d_k2f);
  for (index_t c = 0; c < 5; ++c) {
    EXPECT_EQ(strided(c), d_q1(c));
    EXPECT_EQ(wide(2 * c), 7.0) << "a gap of the strided output was written";
    // Float inputs carry a rounding of ε_f/2 each: the dot products (|q·k| < 5) move by up
    // to 5·ε_f, which exp turns into a relative error of 5·ε_f, plus the rounding of the
    // factor and the result: about 6·ε_f of the gradient, and 64 leaves a margin of 10.
    EXPECT_NEAR(d_q1f(c), d_q1(c), tolerance<float>(64, std::abs(d_q1(c))));
    EXPECT_NEAR(d_k2f(c), d_k2(c), tolerance<float>(64, std::abs(d_k2(c))));
  }
}

TEST(LambdaReparamBackwardTest, PerHeadFormMatchesFiniteDifferences) {
  std::mt19937_64 rng(601);
  const index_t heads = 3, width = 4;
  auto q1 = random_tensor<double, 2>({heads, width}, rng), k1 = random_tensor<double, 2>({heads, width}, rng);
  auto q2 = random_tensor<double, 2>({heads, width}, rng), k2 = random_tensor<double, 2>({heads, width}, rng);
  auto dlambda = random_tensor<double, 1>({heads}, rng, -2, 2);
  const double init = diffattn::lambda_init(3);
  Tensor<double, 2> d_q1({heads, width}, 7.0), d_k1({heads, width}, 7.0), d_q2({heads, width}, 7.0),
      d_k2({heads, width}, 7.0);
  diffattn::lambda_reparam_backward<double>(q1, k1, q2, k2, dlambda, d_q1, d_k1, d_q2, d_k2);
  Tensor<double, 1> lambda({heads});
  const auto loss = [&] {
    diffattn::lambda_reparam(q1.view(), k1.view(), q2.view(), k2.view(), init, lambda.view());
    double sum = 0;
    for (index_t h = 0; h < heads; ++h) sum += dlambda(h) * lambda(h);
    return sum;
  };
  expect_matches_finite_differences("d_q1", q1.view(), d_q1.view(), loss);
  expect_matches_finite_differences("d_k1", k1.view(), d_k1.view(), loss);
  expect_matches_finite_differences("d_q2", q2.view(), d_q2.view(), loss);
  expect_matches_finite_differences("d_k2", k2.view(), d_k2.view(), loss);
}

// Argument errors. Reference and fused share validation_backward.hpp; every check runs
// against both, and no output may be written before the error.

constexpr double kSentinel = 777;
constexpr const char* q_dims[4] = {"B", "Hq", "Nq", "D"};
constexpr const char* k_dims[4] = {"B", "Hkv", "Nk", "D"};
constexpr const char* v_dims[4] = {"B", "Hkv", "Nk", "Dv"};
constexpr const char* out_dims[4] = {"B", "Hq", "Nq", "Dv"};

/// "'dq' dimension 2 (Nq): expected 3, got 10", as detail::throw_extent_mismatch words it.
std::string extent_text(const std::string& arg, std::size_t dim, const char* dim_name, index_t expected,
                        index_t got) {
  std::ostringstream out;
  out << "'" << arg << "' dimension " << dim << " (" << dim_name << "): expected " << expected << ", got " << got;
  return out.str();
}

/// Storage for the views of argument-error cases, alive for the whole test.
class Buffers {
 public:
  /// A contiguous tensor of `shape` filled with `value`.
  template <std::size_t R>
  TensorView<double, R> make(const std::array<index_t, R>& shape, double value = kSentinel) {
    index_t count = 1;
    for (index_t e : shape) count *= e;
    return TensorView<double, R>(flat(count, value), shape);
  }
  /// `count` elements filled with `value`, to carve overlapping views from.
  double* flat(index_t count, double value = kSentinel) {
    storage_.emplace_back(static_cast<std::size_t>(std::max<index_t>(count, 1)), value);
    return storage_.back().data();
  }
  /// A view of `shape` whose last dimension has stride 2.
  TensorView<double, 4> strided_last(std::array<index_t, 4> shape) {
    std::array<index_t, 4> wide = shape;
    wide[3] *= 2;
    return make(wide).slice(3, 0, wide[3], 2);
  }
  /// A view of `shape` whose dimension `dim` has stride 0 (all its indices alias).
  TensorView<double, 4> aliased(std::array<index_t, 4> shape, std::size_t dim) {
    const index_t extent = shape[dim];
    shape[dim] = 1;
    return make(shape).broadcast(dim, extent);
  }

 private:
  std::deque<std::vector<double>> storage_;
};

template <std::size_t R>
void append(std::vector<double>& values, TensorView<const double, R> view) {
  for_each_index(view.shape(), [&](const auto& idx) { values.push_back(view.at(idx)); });
}

constexpr Shape kArgs{2, 4, 2, 3, 5, 4, 6};
constexpr std::array<index_t, 4> kQShape{kArgs.batch, kArgs.q_heads, kArgs.q_len, kArgs.head_dim};
constexpr std::array<index_t, 4> kKShape{kArgs.batch, kArgs.kv_heads, kArgs.kv_len, kArgs.head_dim};
constexpr std::array<index_t, 4> kVShape{kArgs.batch, kArgs.kv_heads, kArgs.kv_len, kArgs.value_dim};
constexpr std::array<index_t, 4> kOutShape{kArgs.batch, kArgs.q_heads, kArgs.q_len, kArgs.value_dim};

struct SoftmaxCall {
  TensorView<const double, 4> q, k, v, dout;
  TensorView<double, 4> dq, dk, dv;
  AttentionOptions<double> options;

  static std::string name(Impl impl) {
    return impl == Impl::reference ? "reference::softmax_attention_backward" : "softmax_attention_backward";
  }
  void operator()(Impl impl) const {
    if (impl == Impl::reference) {
      ref::softmax_attention_backward<double>(q, k, v, dout, dq, dk, dv, options);
    } else {
      diffattn::softmax_attention_backward<double>(q, k, v, dout, dq, dk, dv, options);
    }
  }
  std::vector<double> outputs() const {
    std::vector<double> values;
    for (TensorView<const double, 4> view : {dq, dk, dv}) append(values, view);
    return values;
  }
};

template <std::size_t LambdaRank>
struct DiffCall {
  TensorView<const double, 4> q1, q2, k1, k2, v;
  TensorView<const double, LambdaRank> lambda;
  TensorView<const double, 4> dout;
  TensorView<double, 4> dq1, dq2, dk1, dk2, dv;
  TensorView<double, LambdaRank> dlambda;
  AttentionOptions<double> options;

  static std::string name(Impl impl) {
    return impl == Impl::reference ? "reference::diff_attention_backward" : "diff_attention_backward";
  }
  void operator()(Impl impl) const {
    if (impl == Impl::reference) {
      ref::diff_attention_backward<double>(q1, q2, k1, k2, v, lambda, dout, dq1, dq2, dk1, dk2, dv, dlambda,
                                           options);
    } else {
      diffattn::diff_attention_backward<double>(q1, q2, k1, k2, v, lambda, dout, dq1, dq2, dk1, dk2, dv, dlambda,
                                                options);
    }
  }
  std::vector<double> outputs() const {
    std::vector<double> values;
    for (TensorView<const double, 4> view : {dq1, dq2, dk1, dk2, dv}) append(values, view);
    append<LambdaRank>(values, dlambda);
    return values;
  }
};

/// Expects `call` to throw E from both implementations, with a message that names the
/// function and contains each of `parts`, and to leave every output as it was.
template <class E = diffattn::shape_error, class Call>
void expect_rejected(const Call& call, std::initializer_list<std::string> parts) {
  for (Impl impl : kImpls) {
    SCOPED_TRACE(impl_name(impl));
    const std::vector<double> before = call.outputs();
    const std::string message = error_message<E>([&] { call(impl); });
    EXPECT_TRUE(contains(message, "diffattn: " + Call::name(impl) + ": ")) << message;
    for (const std::string& part : parts) EXPECT_TRUE(contains(message, part)) << message << "\n  lacks: " << part;
    EXPECT_TRUE(call.outputs() == before) << "an output was written before the error: " << message;
  }
}

class BackwardArgumentTest : public ::testing::Test {
 protected:
  Buffers buffers;
  TensorView<double, 4> q = buffers.make(kQShape, 0.5), k = buffers.make(kKShape, 0.25);
  TensorView<double, 4> q2 = buffers.make(kQShape, -0.5), k2 = buffers.make(kKShape, -0.25);
  TensorView<double, 4> v = buffers.make(kVShape, 1.0), dout = buffers.make(kOutShape, 0.125);

  SoftmaxCall valid_softmax() {
    SoftmaxCall call{q, k, v, dout, buffers.make(kQShape), buffers.make(kKShape), buffers.make(kVShape), {}};
    call.options.threads = 2;
    return call;
  }
  template <std::size_t LambdaRank>
  DiffCall<LambdaRank> valid_diff(const std::array<index_t, LambdaRank>& lambda_shape) {
    DiffCall<LambdaRank> call{q,
                              q2,
                              k,
                              k2,
                              v,
                              buffers.make(lambda_shape, 0.3),
                              dout,
                              buffers.make(kQShape),
                              buffers.make(kQShape),
                              buffers.make(kKShape),
                              buffers.make(kKShape),
                              buffers.make(kVShape),
                              buffers.make(lambda_shape),
                              {}};
    call.options.threads = 2;
    return call;
  }
  DiffCall<1> valid_diff() { return valid_diff<1>({kArgs.q_heads}); }
};

TEST_F(BackwardArgumentTest, ValidCallsPass) {
  for (Impl impl : kImpls) {
    SCOPED_TRACE(impl_name(impl));
    EXPECT_NO_THROW(valid_softmax()(impl));
    EXPECT_NO_THROW(valid_diff()(impl));
    EXPECT_NO_THROW(valid_diff<1>({1})(impl));
    EXPECT_NO_THROW(valid_diff<3>({kArgs.batch, kArgs.q_heads, kArgs.q_len})(impl));
    EXPECT_NO_THROW(valid_diff<3>({1, kArgs.q_heads, 1})(impl));
  }
}

/// One gradient-side argument of a call: its name, expected shape, dimension names, and
/// how to put a view in its place.
template <class Call>
struct Slot {
  const char* name;
  std::array<index_t, 4> shape;
  const char* const* dims;
  void (*set)(Call&, TensorView<double, 4>);
};

template <class Call>
void expect_every_wrong_extent_rejected(Buffers& buffers, const Call& valid, std::initializer_list<Slot<Call>> slots) {
  for (const Slot<Call>& slot : slots) {
    for (std::size_t d = 0; d < 4; ++d) {
      SCOPED_TRACE(std::string(slot.name) + " dimension " + std::to_string(d));
      Call call = valid;
      std::array<index_t, 4> shape = slot.shape;
      shape[d] += 7;
      slot.set(call, buffers.make(shape));
      expect_rejected(call, {extent_text(slot.name, d, slot.dims[d], slot.shape[d], shape[d])});
    }
  }
}

TEST_F(BackwardArgumentTest, WrongExtentsNameArgumentDimensionExpectedAndGot) {
  using S = SoftmaxCall;
  expect_every_wrong_extent_rejected<S>(
      buffers, valid_softmax(),
      {{"dout", kOutShape, out_dims, [](S& c, TensorView<double, 4> t) { c.dout = t; }},
       {"dq", kQShape, q_dims, [](S& c, TensorView<double, 4> t) { c.dq = t; }},
       {"dk", kKShape, k_dims, [](S& c, TensorView<double, 4> t) { c.dk = t; }},
       {"dv", kVShape, v_dims, [](S& c, TensorView<double, 4> t) { c.dv = t; }}});
  using D1 = DiffCall<1>;
  expect_every_wrong_extent_rejected<D1>(
      buffers, valid_diff(),
      {{"dout", kOutShape, out_dims, [](D1& c, TensorView<double, 4> t) { c.dout = t; }},
       {"dq1", kQShape, q_dims, [](D1& c, TensorView<double, 4> t) { c.dq1 = t; }},
       {"dq2", kQShape, q_dims, [](D1& c, TensorView<double, 4> t) { c.dq2 = t; }},
       {"dk1", kKShape, k_dims, [](D1& c, TensorView<double, 4> t) { c.dk1 = t; }},
       {"dk2", kKShape, k_dims, [](D1& c, TensorView<double, 4> t) { c.dk2 = t; }},
       {"dv", kVShape, v_dims, [](D1& c, TensorView<double, 4> t) { c.dv = t; }}});
  using D3 = DiffCall<3>;
  expect_every_wrong_extent_rejected<D3>(
      buffers, valid_diff<3>({kArgs.batch, 1, kArgs.q_len}),
      {{"dout", kOutShape, out_dims, [](D3& c, TensorView<double, 4> t) { c.dout = t; }},
       {"dq2", kQShape, q_dims, [](D3& c, TensorView<double, 4> t) { c.dq2 = t; }},
       {"dk1", kKShape, k_dims, [](D3& c, TensorView<double, 4> t) { c.dk1 = t; }},
       {"dv", kVShape, v_dims, [](D3& c, TensorView<double, 4> t) { c.dv = t; }}});
}

TEST_F(BackwardArgumentTest, DlambdaMustHaveLambdasShape) {
  const index_t heads = kArgs.q_heads;
  {  // λ per head, dλ broadcast (and the reverse, and too long).
    DiffCall<1> call = valid_diff();
    call.dlambda = buffers.make<1>({1});
    expect_rejected(call, {extent_text("dlambda", 0, "Hq", heads, 1)});
    call = valid_diff<1>({1});
    call.dlambda = buffers.make<1>({heads});
    expect_rejected(call, {extent_text("dlambda", 0, "Hq", 1, heads)});
    call = valid_diff();
    call.dlambda = buffers.make<1>({heads + 1});
    expect_rejected(call, {extent_text("dlambda", 0, "Hq", heads, heads + 1)});
  }
  const std::array<index_t, 3> full{kArgs.batch, heads, kArgs.q_len};
  constexpr const char* lambda_dims[3] = {"B", "Hq", "Nq"};
  for (std::size_t d = 0; d < 3; ++d) {
    SCOPED_TRACE(d);
    // λ full, dλ broadcast in dimension d; and λ broadcast there, dλ full.
    std::array<index_t, 3> broadcast = full;
    broadcast[d] = 1;
    DiffCall<3> call = valid_diff<3>(full);
    call.dlambda = buffers.make(broadcast);
    expect_rejected(call, {extent_text("dlambda", d, lambda_dims[d], full[d], 1)});
    call = valid_diff<3>(broadcast);
    call.dlambda = buffers.make(full);
    expect_rejected(call, {extent_text("dlambda", d, lambda_dims[d], 1, full[d])});
  }
}

TEST_F(BackwardArgumentTest, GradientsNeedAContiguousLastDimension) {
  SoftmaxCall softmax = valid_softmax();
  softmax.dk = buffers.strided_last(kKShape);
  expect_rejected(softmax, {"'dk' dimension 3: expected a contiguous last dimension (stride 1), got stride 2"});
  softmax = valid_softmax();
  softmax.dout = buffers.strided_last(kOutShape);
  expect_rejected(softmax, {"'dout' dimension 3: expected a contiguous last dimension (stride 1), got stride 2"});
  DiffCall<1> diff = valid_diff();
  diff.dq2 = buffers.strided_last(kQShape);
  expect_rejected(diff, {"'dq2' dimension 3: expected a contiguous last dimension (stride 1), got stride 2"});
  diff = valid_diff();
  diff.dv = buffers.strided_last(kVShape);
  expect_rejected(diff, {"'dv' dimension 3: expected a contiguous last dimension (stride 1), got stride 2"});
}

TEST_F(BackwardArgumentTest, GradientsNeedADistinctElementPerIndex) {
  const std::string overlapping = "' has overlapping elements";
  SoftmaxCall softmax = valid_softmax();
  softmax.dq = buffers.aliased(kQShape, 1);
  expect_rejected(softmax, {"'dq" + overlapping});
  softmax = valid_softmax();
  softmax.dv = buffers.aliased(kVShape, 2);
  expect_rejected(softmax, {"'dv" + overlapping});
  DiffCall<1> diff = valid_diff();
  diff.dk2 = buffers.aliased(kKShape, 0);
  expect_rejected(diff, {"'dk2" + overlapping});
  diff = valid_diff();
  diff.dlambda = buffers.make<1>({1}).broadcast(0, kArgs.q_heads);
  expect_rejected(diff, {"'dlambda" + overlapping});
  DiffCall<3> token = valid_diff<3>({kArgs.batch, kArgs.q_heads, kArgs.q_len});
  token.dlambda = buffers.make<3>({kArgs.batch, kArgs.q_heads, 1}).broadcast(2, kArgs.q_len);
  expect_rejected(token, {"'dlambda" + overlapping});
}

/// Two views of `shape_a` and `shape_b` in one buffer, b starting `offset` elements after a.
std::pair<TensorView<double, 4>, TensorView<double, 4>> overlapping(Buffers& buffers,
                                                                    const std::array<index_t, 4>& shape_a,
                                                                    const std::array<index_t, 4>& shape_b,
                                                                    index_t offset, double value = kSentinel) {
  index_t count_b = 1;
  for (index_t e : shape_b) count_b *= e;
  double* data = buffers.flat(offset + count_b + 1000, value);
  return {TensorView<double, 4>(data, shape_a), TensorView<double, 4>(data + offset, shape_b)};
}

TEST_F(BackwardArgumentTest, GradientsMustNotOverlapInputs) {
  const std::string overlaps = "' overlaps input '";
  {
    SoftmaxCall call = valid_softmax();
    const auto [input, output] = overlapping(buffers, kQShape, kQShape, 5, 0.5);
    call.q = input;
    call.dq = output;
    expect_rejected(call, {"output 'dq" + overlaps + "q'"});
  }
  {
    SoftmaxCall call = valid_softmax();
    const auto [input, output] = overlapping(buffers, kOutShape, kVShape, 30, 0.5);
    call.dout = input;
    call.dv = output;
    expect_rejected(call, {"output 'dv" + overlaps + "dout'"});
  }
  {  // The mask is an input too.
    SoftmaxCall call = valid_softmax();
    const auto [output, mask] = overlapping(buffers, kKShape, {1, 1, kArgs.q_len, kArgs.kv_len}, 70, 0.0);
    call.dk = output;
    call.options.mask = mask;
    expect_rejected(call, {"output 'dk" + overlaps + "options.mask'"});
  }
  {
    DiffCall<1> call = valid_diff();
    const auto [input, output] = overlapping(buffers, kQShape, kQShape, 0, 0.5);
    call.q1 = input;
    call.dq2 = output;
    expect_rejected(call, {"output 'dq2" + overlaps + "q1'"});
  }
  {
    DiffCall<1> call = valid_diff();
    const auto [output, input] = overlapping(buffers, kKShape, kKShape, 79, 0.5);
    call.dk1 = output;
    call.k2 = input;
    expect_rejected(call, {"output 'dk1" + overlaps + "k2'"});
  }
  {  // dλ over λ.
    DiffCall<1> call = valid_diff();
    double* data = buffers.flat(kArgs.q_heads + 1, 0.3);
    call.lambda = TensorView<const double, 1>(data, {kArgs.q_heads});
    call.dlambda = TensorView<double, 1>(data + 1, {kArgs.q_heads});
    expect_rejected(call, {"output 'dlambda" + overlaps + "lambda'"});
  }
  {
    DiffCall<3> call = valid_diff<3>({1, kArgs.q_heads, 1});
    const auto [output, input] = overlapping(buffers, kVShape, kVShape, 3, 1.0);
    call.dv = output;
    call.v = input;
    expect_rejected(call, {"output 'dv" + overlaps + "v'"});
  }
}

TEST_F(BackwardArgumentTest, GradientsMustNotOverlapEachOther) {
  const std::string each = "' overlap in memory; each gradient needs its own";
  {
    SoftmaxCall call = valid_softmax();
    std::tie(call.dq, call.dk) = overlapping(buffers, kQShape, kKShape, 20);
    expect_rejected(call, {"outputs 'dq' and 'dk" + each});
  }
  {
    SoftmaxCall call = valid_softmax();
    std::tie(call.dv, call.dk) = overlapping(buffers, kVShape, kKShape, 119);
    expect_rejected(call, {"outputs 'dk' and 'dv" + each});
  }
  {  // One view for dq1 and dq2.
    DiffCall<1> call = valid_diff();
    call.dq2 = call.dq1;
    expect_rejected(call, {"outputs 'dq1' and 'dq2" + each});
  }
  {
    DiffCall<1> call = valid_diff();
    double* data = buffers.flat(200);
    call.dv = TensorView<double, 4>(data, kVShape);
    call.dlambda = TensorView<double, 1>(data + 100, {kArgs.q_heads});
    expect_rejected(call, {"outputs 'dv' and 'dlambda" + each});
  }
  {  // Shared keys allow dk1 == dk2, nothing more: not a partial overlap …
    DiffCall<1> call = valid_diff();
    call.k2 = call.k1;
    std::tie(call.dk1, call.dk2) = overlapping(buffers, kKShape, kKShape, 4);
    expect_rejected(call, {"outputs 'dk1' and 'dk2" + each});
  }
  {  // … nor that view overlapping another gradient.
    DiffCall<1> call = valid_diff();
    call.k2 = call.k1;
    std::tie(call.dq2, call.dk1) = overlapping(buffers, kQShape, kKShape, 90);
    call.dk2 = call.dk1;
    expect_rejected(call, {"outputs 'dq2' and 'dk1" + each});
  }
}

TEST_F(BackwardArgumentTest, OneViewForDk1AndDk2OnlyWithSharedKeys) {
  const std::string refused = "'dk1' and 'dk2' are one view, which only sums the two maps' key gradients when "
                              "'k1' and 'k2' are one view too (shared keys); they are not";
  {  // Shared keys: allowed (the finite-difference tests check the sum).
    DiffCall<1> call = valid_diff();
    call.k2 = call.k1;
    call.dk2 = call.dk1;
    for (Impl impl : kImpls) EXPECT_NO_THROW(call(impl)) << impl_name(impl);
    DiffCall<3> token = valid_diff<3>({kArgs.batch, 1, 1});
    token.k2 = token.k1;
    token.dk2 = token.dk1;
    for (Impl impl : kImpls) EXPECT_NO_THROW(token(impl)) << impl_name(impl);
  }
  {  // Distinct keys.
    DiffCall<1> call = valid_diff();
    call.dk2 = call.dk1;
    expect_rejected(call, {refused});
  }
  {  // Equal values in other memory are not shared keys.
    DiffCall<1> call = valid_diff();
    call.k2 = buffers.make(kKShape, 0.25);
    call.dk2 = call.dk1;
    expect_rejected(call, {refused});
  }
  {  // The same data and shape through other strides is another view.
    DiffCall<3> call = valid_diff<3>({kArgs.batch, kArgs.q_heads, kArgs.q_len});
    const TensorView<double, 4> transposed =
        TensorView<double, 4>(k.data(), {kArgs.batch, kArgs.kv_len, kArgs.kv_heads, kArgs.head_dim}).transpose(1, 2);
    ASSERT_EQ(call.k1.data(), transposed.data());
    ASSERT_EQ(call.k1.shape(), transposed.shape());
    call.k2 = transposed;
    call.dk2 = call.dk1;
    expect_rejected(call, {refused});
  }
}

TEST_F(BackwardArgumentTest, NegativeThreadsAreRefused) {
  SoftmaxCall softmax = valid_softmax();
  softmax.options.threads = -1;
  expect_rejected<std::invalid_argument>(softmax, {"options.threads must be >= 0", "got -1"});
  DiffCall<1> diff = valid_diff();
  diff.options.threads = -3;
  expect_rejected<std::invalid_argument>(diff, {"options.threads must be >= 0", "got -3"});
  DiffCall<3> token = valid_diff<3>({1, 1, kArgs.q_len});
  token.options.threads = -1;
  expect_rejected<std::invalid_argument>(token, {"options.threads must be >= 0", "got -1"});
}

// lambda_reparam_backward: argument errors

/// The vector form's arguments, width 4.
struct ReparamCall {
  TensorView<const double, 1> q1, k1, q2, k2;
  TensorView<double, 1> d_q1, d_k1, d_q2, d_k2;
  static std::string name(Impl) { return "lambda_reparam_backward"; }
  void operator()(Impl) const { diffattn::lambda_reparam_backward<double>(q1, k1, q2, k2, 0.5, d_q1, d_k1, d_q2, d_k2); }
  std::vector<double> outputs() const {
    std::vector<double> values;
    for (TensorView<const double, 1> view : {d_q1, d_k1, d_q2, d_k2}) append(values, view);
    return values;
  }
};

/// The per-head form's arguments, [3, 4] and dλ [3].
struct PerHeadReparamCall {
  TensorView<const double, 2> q1, k1, q2, k2;
  TensorView<const double, 1> dlambda;
  TensorView<double, 2> d_q1, d_k1, d_q2, d_k2;
  static std::string name(Impl) { return "lambda_reparam_backward"; }
  void operator()(Impl) const {
    diffattn::lambda_reparam_backward<double>(q1, k1, q2, k2, dlambda, d_q1, d_k1, d_q2, d_k2);
  }
  std::vector<double> outputs() const {
    std::vector<double> values;
    for (TensorView<const double, 2> view : {d_q1, d_k1, d_q2, d_k2}) append(values, view);
    return values;
  }
};

// The reparam checks run once: there is no fused twin (expect_rejected's second pass
// repeats the same call, harmlessly).
TEST_F(BackwardArgumentTest, LambdaReparamBackwardVectorFormErrors) {
  const auto valid = [&] {
    return ReparamCall{buffers.make<1>({4}, 0.1), buffers.make<1>({4}, 0.2), buffers.make<1>({4}, 0.3),
                       buffers.make<1>({4}, 0.4), buffers.make<1>({4}), buffers.make<1>({4}),
                       buffers.make<1>({4}), buffers.make<1>({4})};
  };
  const char* names[7] = {"lambda_k1", "lambda_q2", "lambda_k2", "d_q1", "d_k1", "d_q2", "d_k2"};
  for (int i = 0; i < 7; ++i) {
    SCOPED_TRACE(names[i]);
    ReparamCall call = valid();
    const TensorView<double, 1> wide = buffers.make<1>({5});
    TensorView<const double, 1>* inputs[3] = {&call.k1, &call.q2, &call.k2};
    TensorView<double, 1>* outputs[4] = {&call.d_q1, &call.d_k1, &call.d_q2, &call.d_k2};
    if (i < 3) {
      *inputs[i] = wide;
    } else {
      *outputs[i - 3] = wide;
    }
    expect_rejected(call, {extent_text(names[i], 0, "d", 4, 5)});
  }
  ReparamCall call = valid();
  call.d_q2 = buffers.make<1>({1}).broadcast(0, 4);
  expect_rejected(call, {"'d_q2' has overlapping elements"});
  call = valid();
  double* data = buffers.flat(6, 0.2);
  call.k1 = TensorView<const double, 1>(data, {4});
  call.d_q1 = TensorView<double, 1>(data + 2, {4});
  expect_rejected(call, {"output 'd_q1' overlaps input 'lambda_k1'"});
  call = valid();
  call.d_k2 = call.d_q1;
  expect_rejected(call, {"outputs 'd_q1' and 'd_k2' overlap in memory"});
}

TEST_F(BackwardArgumentTest, LambdaReparamBackwardPerHeadFormErrors) {
  const auto valid = [&] {
    return PerHeadReparamCall{buffers.make<2>({3, 4}, 0.1), buffers.make<2>({3, 4}, 0.2),
                              buffers.make<2>({3, 4}, 0.3), buffers.make<2>({3, 4}, 0.4),
                              buffers.make<1>({3}, 1.0),    buffers.make<2>({3, 4}),
                              buffers.make<2>({3, 4}),      buffers.make<2>({3, 4}),
                              buffers.make<2>({3, 4})};
  };
  const char* names[7] = {"lambda_k1", "lambda_q2", "lambda_k2", "d_q1", "d_k1", "d_q2", "d_k2"};
  const char* dims[2] = {"H", "d"};
  for (int i = 0; i < 7; ++i) {
    for (std::size_t d = 0; d < 2; ++d) {
      SCOPED_TRACE(std::string(names[i]) + " dimension " + std::to_string(d));
      PerHeadReparamCall call = valid();
      std::array<index_t, 2> shape{3, 4};
      const index_t expected = shape[d];
      shape[d] += 2;
      const TensorView<double, 2> wrong = buffers.make<2>(shape);
      TensorView<const double, 2>* inputs[3] = {&call.k1, &call.q2, &call.k2};
      TensorView<double, 2>* outputs[4] = {&call.d_q1, &call.d_k1, &call.d_q2, &call.d_k2};
      if (i < 3) {
        *inputs[i] = wrong;
      } else {
        *outputs[i - 3] = wrong;
      }
      expect_rejected(call, {extent_text(names[i], d, dims[d], expected, shape[d])});
    }
  }
  PerHeadReparamCall call = valid();
  call.dlambda = buffers.make<1>({2});
  expect_rejected(call, {extent_text("dlambda", 0, "H", 3, 2)});
  call = valid();
  call.d_k1 = buffers.make<2>({1, 4}).broadcast(0, 3);
  expect_rejected(call, {"'d_k1' has overlapping elements"});
  call = valid();
  double* data = buffers.flat(12, 1.0);
  call.dlambda = TensorView<const double, 1>(data, {3});
  call.d_k2 = TensorView<double, 2>(data, {3, 4});
  expect_rejected(call, {"output 'd_k2' overlaps input 'dlambda'"});
  call = valid();
  call.d_q2 = call.d_k1;
  expect_rejected(call, {"outputs 'd_k1' and 'd_q2' overlap in memory"});
}

}  // namespace
}  // namespace diffattn_test
