// Tests for the backward pass against PyTorch autograd (tests/fixtures/backward, written by
// scripts/make_backward_fixtures.py): the fused softmax_attention_backward and
// diff_attention_backward, their diffattn::reference twins, and lambda_reparam_backward,
// each in float on the stored float32 inputs and in double on the same values upcast,
// against gradients that PyTorch computed in float64 from those float32 values.

#include <gtest/gtest.h>

#include <cstddef>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <diffattn/safetensors.hpp>

#include "helpers.hpp"

namespace {

using diffattn::AttentionOptions;
using diffattn::SafeTensors;
using diffattn_test::contains;
using diffattn_test::FloatTypes;
using diffattn_test::max_abs;
using diffattn_test::max_abs_diff;
using diffattn_test::Tensor;
using diffattn_test::TensorView;

enum class LambdaSource { none, reparam, per_head, per_token };

const char* lambda_source_name(LambdaSource mode) {
  switch (mode) {
    case LambdaSource::none: return "none";
    case LambdaSource::reparam: return "reparam";
    case LambdaSource::per_head: return "per_head";
    case LambdaSource::per_token: return "per_token";
  }
  return "?";
}

/// One file of tests/fixtures/backward; repeats the FIXTURES table of
/// scripts/make_backward_fixtures.py (also stored in each file's "config" metadata).
struct Fixture {
  const char* name;
  LambdaSource lambda;
  bool causal;
  double scale;  // 0: 1/√D
  bool shared_k;
  int layer;     // of λ_init, for LambdaSource::reparam
};

const std::vector<Fixture>& fixtures() {
  static const std::vector<Fixture> list = {
      {"standard", LambdaSource::none, false, 0, false, 0},
      {"standard_gqa_causal", LambdaSource::none, true, 0, false, 0},
      {"diff_reparam_gqa_causal", LambdaSource::reparam, true, 0, false, 3},
      {"diff_per_token_shared_k", LambdaSource::per_token, false, 0.2, true, 0},
      {"diff_causal_empty_rows", LambdaSource::per_head, true, 0, false, 0},
  };
  return list;
}

SafeTensors load(const Fixture& fixture) {
  return SafeTensors::load(std::string(DIFFATTN_TEST_SOURCE_DIR) + "/fixtures/backward/" + fixture.name +
                           ".safetensors");
}

template <class T>
AttentionOptions<T> options_of(const Fixture& fixture) {
  AttentionOptions<T> options;
  options.causal = fixture.causal;
  options.scale = fixture.scale;
  return options;
}

/// How a backward pass is computed: the fused kernel with its default tiles, the fused
/// kernel with a workspace too small for any tile (one query position per tile, one
/// thread: the tile edges fall between every pair of rows), or diffattn::reference.
enum class Kernel { fused, fused_one_row_tiles, reference };

const char* kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::fused: return "fused";
    case Kernel::fused_one_row_tiles: return "fused, one-row tiles";
    case Kernel::reference: return "reference";
  }
  return "?";
}

constexpr Kernel kKernels[] = {Kernel::fused, Kernel::fused_one_row_tiles, Kernel::reference};

/// Tolerance on max|g − g_torch| for a gradient whose largest torch element is max_g:
/// k·u(T)·max_g, relative to max_g (not max(max_g, 1): these gradients are O(1), from 0.2
/// to 11, and the point is relative accuracy). The torch side is exact to float64
/// rounding, so the whole error is ours.
///
/// Float, fused, k = 32 (3.8e-6): the kernel rounds in float every logit (a D <= 16 term
/// dot product of values up to ~5, so ~D·u/2 relative), the exp and the row sums, each
/// dP = dO·vᵀ (Dv terms), Δ = Σ P·dP, dS = P∘(dP − Δ), where dP − Δ cancels, and the
/// dQ/dK/dV sums over up to 12 keys or 14 query rows — a dozen roundings of terms up to a
/// few times max_g. Measured worst: 3.0 u (3.6e-7, dλk2 of diff_reparam_gqa_causal; the
/// attention gradients <= 2.9e-7), and PyTorch's own float32 backward of the same cases is
/// off by up to 2.3 u. 32 leaves a 10× margin and still fails on any semantic error: a
/// wrong causal flag or scale moves every case by 0.35 to 1.2 relative.
///
/// Float, reference, k = 4: it computes in double and rounds each gradient once (u/2);
/// in the reparametrized case the λ it gets was rounded to float too (u/2 relative on λ).
/// Measured worst: 0.6 u (7.0e-8).
///
/// Double, k = 4096 (9.1e-13): both sides compute the same sums in double, in different
/// orders and (fused) with differently rounded intermediates, so they differ by a few
/// roundings; measured worst 3.6 u (8.0e-16) for either kernel. The bound is kept at the
/// ~1e-12 the fixtures promise, far below any real error.
template <class T>
double gradient_tolerance(Kernel kernel, double max_g) {
  const double u = static_cast<double>(std::numeric_limits<T>::epsilon());
  if (std::is_same_v<T, double>) return 4096 * u * max_g;
  return (kernel == Kernel::reference ? 4 : 32) * u * max_g;
}

/// Compares each gradient the kernel computed with the file's float64 gradient of the
/// same name.
template <class T>
class GradientCheck {
 public:
  GradientCheck(const SafeTensors& file, Kernel kernel) : file_(file), kernel_(kernel) {}

  template <std::size_t R>
  void operator()(const std::string& name, TensorView<const T, R> got) const {
    SCOPED_TRACE(name);
    const Tensor<double, R> expected = file_.tensor<double, R>(name);
    ASSERT_EQ(got.shape(), expected.shape());
    const double max_g = max_abs(expected.view());
    ASSERT_GT(max_g, 0.0) << "a fixture gradient that is all zeros tests nothing";
    EXPECT_LE(max_abs_diff(got, expected.view()), gradient_tolerance<T>(kernel_, max_g))
        << "relative error " << max_abs_diff(got, expected.view()) / max_g;
  }

  template <std::size_t R>
  void operator()(const std::string& name, const Tensor<T, R>& got) const {
    (*this)(name, got.view());
  }

 private:
  const SafeTensors& file_;
  Kernel kernel_;
};

template <class T>
void check_standard(const Fixture& fixture, const SafeTensors& file, Kernel kernel) {
  const Tensor<T, 4> q = file.tensor<T, 4>("q");
  const Tensor<T, 4> k = file.tensor<T, 4>("k");
  const Tensor<T, 4> v = file.tensor<T, 4>("v");
  const Tensor<T, 4> dout = file.tensor<T, 4>("dout");
  Tensor<T, 4> dq(q.shape()), dk(k.shape()), dv(v.shape());
  AttentionOptions<T> options = options_of<T>(fixture);
  if (kernel == Kernel::reference) {
    diffattn::reference::softmax_attention_backward<T>(q, k, v, dout, dq.view(), dk.view(), dv.view(), options);
  } else {
    if (kernel == Kernel::fused_one_row_tiles) options.workspace_limit = 1;
    diffattn::softmax_attention_backward<T>(q, k, v, dout, dq.view(), dk.view(), dv.view(), options);
  }
  const GradientCheck<T> check(file, kernel);
  check("dq", dq);
  check("dk", dk);
  check("dv", dv);
}

/// Runs diff_attention_backward with `lambda` ([Hq|1] or [B, Hq, Nq]) and checks dq1, dq2,
/// dk1, dk2 (dk when the keys are shared) and dv; returns dλ for the caller to check.
template <class T, std::size_t LambdaRank>
Tensor<T, LambdaRank> check_diff(const Fixture& fixture, const SafeTensors& file, Kernel kernel,
                                 TensorView<const T, LambdaRank> lambda) {
  const Tensor<T, 4> q1 = file.tensor<T, 4>("q1");
  const Tensor<T, 4> q2 = file.tensor<T, 4>("q2");
  const Tensor<T, 4> k1 = file.tensor<T, 4>(fixture.shared_k ? "k" : "k1");
  const Tensor<T, 4> k2 = fixture.shared_k ? Tensor<T, 4>() : file.tensor<T, 4>("k2");
  // Shared keys: one view passed twice, as k = k1 = k2 in the PyTorch graph.
  const TensorView<const T, 4> k2_view = fixture.shared_k ? k1.view() : k2.view();
  const Tensor<T, 4> v = file.tensor<T, 4>("v");
  const Tensor<T, 4> dout = file.tensor<T, 4>("dout");
  AttentionOptions<T> options = options_of<T>(fixture);
  if (kernel == Kernel::fused_one_row_tiles) options.workspace_limit = 1;

  // Shared keys are run twice: dk1 and dk2 one view (which receives the sum), and two
  // views whose sum must be the same gradient.
  const int runs = fixture.shared_k ? 2 : 1;
  Tensor<T, LambdaRank> dlambda(lambda.shape());
  for (int run = 0; run < runs; ++run) {
    const bool one_dk = fixture.shared_k && run == 0;
    SCOPED_TRACE(fixture.shared_k ? (one_dk ? "dk1 = dk2 one view" : "dk1, dk2 apart") : "");
    Tensor<T, 4> dq1(q1.shape()), dq2(q2.shape()), dk1(k1.shape()), dk2(k1.shape()), dv(v.shape());
    const TensorView<T, 4> dk2_view = one_dk ? dk1.view() : dk2.view();
    if (kernel == Kernel::reference) {
      diffattn::reference::diff_attention_backward<T>(q1, q2, k1, k2_view, v, lambda, dout, dq1.view(), dq2.view(),
                                                      dk1.view(), dk2_view, dv.view(), dlambda.view(), options);
    } else {
      diffattn::diff_attention_backward<T>(q1, q2, k1, k2_view, v, lambda, dout, dq1.view(), dq2.view(), dk1.view(),
                                           dk2_view, dv.view(), dlambda.view(), options);
    }
    const GradientCheck<T> check(file, kernel);
    check("dq1", dq1);
    check("dq2", dq2);
    check("dv", dv);
    if (!fixture.shared_k) {
      check("dk1", dk1);
      check("dk2", dk2);
    } else if (one_dk) {
      check("dk", dk1);
    } else {
      Tensor<T, 4> sum(dk1.shape());
      diffattn_test::for_each_index(
          sum.shape(), [&](const auto& i) { sum.view().at(i) = dk1.view().at(i) + dk2.view().at(i); });
      check("dk", sum);
    }
  }
  return dlambda;
}

template <class T>
void check_reparam(const Fixture& fixture, const SafeTensors& file, Kernel kernel) {
  const Tensor<T, 2> lambda_q1 = file.tensor<T, 2>("lambda_q1");
  const Tensor<T, 2> lambda_k1 = file.tensor<T, 2>("lambda_k1");
  const Tensor<T, 2> lambda_q2 = file.tensor<T, 2>("lambda_q2");
  const Tensor<T, 2> lambda_k2 = file.tensor<T, 2>("lambda_k2");
  Tensor<T, 1> lambda({lambda_q1.extent(0)});
  diffattn::lambda_reparam(lambda_q1.view(), lambda_k1.view(), lambda_q2.view(), lambda_k2.view(),
                           diffattn::lambda_init(fixture.layer), lambda.view());
  {
    // λ itself: computed in double either way, rounded once to T.
    const Tensor<double, 1> expected = file.tensor<double, 1>("lambda");
    EXPECT_LE(max_abs_diff(lambda.view(), expected.view()),
              static_cast<double>(std::numeric_limits<T>::epsilon()) * max_abs(expected.view()));
  }
  const Tensor<T, 1> dlambda = check_diff<T, 1>(fixture, file, kernel, lambda.view());
  const GradientCheck<T> check(file, kernel);
  check("dlambda", dlambda);

  Tensor<T, 2> d_q1(lambda_q1.shape()), d_k1(lambda_q1.shape()), d_q2(lambda_q1.shape()), d_k2(lambda_q1.shape());
  diffattn::lambda_reparam_backward<T>(lambda_q1, lambda_k1, lambda_q2, lambda_k2, dlambda, d_q1.view(), d_k1.view(),
                                       d_q2.view(), d_k2.view());
  check("dlambda_q1", d_q1);
  check("dlambda_k1", d_k1);
  check("dlambda_q2", d_q2);
  check("dlambda_k2", d_k2);
}

template <class T>
void check_fixture(const Fixture& fixture, Kernel kernel) {
  const SafeTensors file = load(fixture);
  switch (fixture.lambda) {
    case LambdaSource::none: check_standard<T>(fixture, file, kernel); break;
    case LambdaSource::reparam: check_reparam<T>(fixture, file, kernel); break;
    case LambdaSource::per_head: {
      const Tensor<T, 1> lambda = file.tensor<T, 1>("lambda");
      const Tensor<T, 1> dlambda = check_diff<T, 1>(fixture, file, kernel, lambda.view());
      GradientCheck<T>(file, kernel)("dlambda", dlambda);
      break;
    }
    case LambdaSource::per_token: {
      const Tensor<T, 3> lambda = file.tensor<T, 3>("lambda");
      const Tensor<T, 3> dlambda = check_diff<T, 3>(fixture, file, kernel, lambda.view());
      GradientCheck<T>(file, kernel)("dlambda", dlambda);
      break;
    }
  }
}

template <class T>
class BackwardFixtureTest : public ::testing::Test {};
TYPED_TEST_SUITE(BackwardFixtureTest, FloatTypes, diffattn_test::ElementTypeNames);

TYPED_TEST(BackwardFixtureTest, GradientsMatchPyTorchAutograd) {
  for (const Fixture& fixture : fixtures()) {
    for (Kernel kernel : kKernels) {
      SCOPED_TRACE(testing::Message() << fixture.name << ", " << kernel_name(kernel));
      check_fixture<TypeParam>(fixture, kernel);
    }
  }
}

/// The forward on the same inputs, against PyTorch's float64 output: a gradient mismatch
/// with a matching forward points at the backward. Tolerance as the fused backward's.
TYPED_TEST(BackwardFixtureTest, ForwardMatchesPyTorch) {
  using T = TypeParam;
  for (const Fixture& fixture : fixtures()) {
    SCOPED_TRACE(fixture.name);
    const SafeTensors file = load(fixture);
    const Tensor<double, 4> expected = file.tensor<double, 4>("out");
    Tensor<T, 4> out(expected.shape());
    const AttentionOptions<T> options = options_of<T>(fixture);
    if (fixture.lambda == LambdaSource::none) {
      const Tensor<T, 4> q = file.tensor<T, 4>("q");
      const Tensor<T, 4> k = file.tensor<T, 4>("k");
      const Tensor<T, 4> v = file.tensor<T, 4>("v");
      diffattn::softmax_attention<T>(q, k, v, out.view(), options);
    } else {
      const Tensor<T, 4> q1 = file.tensor<T, 4>("q1");
      const Tensor<T, 4> q2 = file.tensor<T, 4>("q2");
      const Tensor<T, 4> k1 = file.tensor<T, 4>(fixture.shared_k ? "k" : "k1");
      const Tensor<T, 4> k2 = file.tensor<T, 4>(fixture.shared_k ? "k" : "k2");
      const Tensor<T, 4> v = file.tensor<T, 4>("v");
      if (fixture.lambda == LambdaSource::per_token) {
        const Tensor<T, 3> lambda = file.tensor<T, 3>("lambda");
        diffattn::diff_attention<T>(q1, q2, k1, k2, v, lambda, out.view(), options);
      } else {
        // The reparametrized case stores λ as computed in float64 from its vectors.
        const Tensor<T, 1> lambda = fixture.lambda == LambdaSource::per_head
                                        ? file.tensor<T, 1>("lambda")
                                        : diffattn_test::copy_as<T>(file.tensor<double, 1>("lambda").view());
        diffattn::diff_attention<T>(q1, q2, k1, k2, v, lambda, out.view(), options);
      }
    }
    EXPECT_LE(max_abs_diff(out.view(), expected.view()),
              gradient_tolerance<T>(Kernel::fused, max_abs(expected.view())));
  }
}

TEST(BackwardFixtures, MetadataAgreesWithTheTable) {
  for (const Fixture& fixture : fixtures()) {
    SCOPED_TRACE(fixture.name);
    const SafeTensors file = load(fixture);
    ASSERT_EQ(file.metadata().count("config"), 1u);
    const std::string& config = file.metadata().at("config");
    EXPECT_TRUE(contains(config, std::string("\"lambda_mode\": \"") + lambda_source_name(fixture.lambda) + "\""))
        << config;
    EXPECT_TRUE(contains(config, fixture.causal ? "\"causal\": true" : "\"causal\": false")) << config;
    EXPECT_TRUE(contains(config, fixture.shared_k ? "\"shared_k\": true" : "\"shared_k\": false")) << config;
    EXPECT_TRUE(contains(config, "\"scale\": " + std::string(fixture.scale == 0 ? "0.0" : "0.2"))) << config;
    EXPECT_TRUE(contains(config, "\"layer\": " + std::to_string(fixture.layer))) << config;
  }
}

}  // namespace
