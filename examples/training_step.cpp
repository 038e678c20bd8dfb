// Training with the backward pass: gradient descent on the λ re-parameterisation of a
// differential-attention layer (λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init) and on its
// queries, to match the output of a "teacher" layer. diff_attention_backward gives dq1,
// dq2 and dλ; lambda_reparam_backward turns dλ into the gradients of the four vectors.
// Exits non-zero unless the loss falls by 10×.

#include <cstdio>
#include <random>

#include <diffattn/diffattn.hpp>

namespace {

using diffattn::Tensor;
using diffattn::index_t;

template <std::size_t Rank>
Tensor<float, Rank> random_tensor(const std::array<index_t, Rank>& shape, float stddev, std::mt19937& rng) {
  Tensor<float, Rank> t(shape);
  std::normal_distribution<float> normal(0.0f, stddev);
  for (index_t i = 0; i < t.size(); ++i) t.data()[i] = normal(rng);
  return t;
}

template <std::size_t Rank>
void descend(Tensor<float, Rank>& x, const Tensor<float, Rank>& grad, float rate) {
  for (index_t i = 0; i < x.size(); ++i) x.data()[i] -= rate * grad.data()[i];
}

}  // namespace

int main() {
  constexpr index_t B = 1, H = 2, N = 24, d = 8, Dv = 16, dl = 4;
  std::mt19937 rng(7);
  const auto k1 = random_tensor<4>({B, H, N, d}, 1, rng), k2 = random_tensor<4>({B, H, N, d}, 1, rng);
  const auto v = random_tensor<4>({B, H, N, Dv}, 1, rng);
  auto q1 = random_tensor<4>({B, H, N, d}, 1, rng), q2 = random_tensor<4>({B, H, N, d}, 1, rng);
  const double lambda_init = diffattn::lambda_init(2);
  diffattn::AttentionOptions<float> options;
  options.causal = true;

  // The teacher: other queries and λ vectors; the student learns to match its output.
  Tensor<float, 4> target({B, H, N, Dv});
  {
    const auto tq1 = random_tensor<4>({B, H, N, d}, 1, rng), tq2 = random_tensor<4>({B, H, N, d}, 1, rng);
    Tensor<float, 1> teacher_lambda({H});
    diffattn::lambda_reparam(random_tensor<2>({H, dl}, 0.5f, rng).view(), random_tensor<2>({H, dl}, 0.5f, rng).view(),
                             random_tensor<2>({H, dl}, 0.5f, rng).view(), random_tensor<2>({H, dl}, 0.5f, rng).view(),
                             lambda_init, teacher_lambda.view());
    diffattn::diff_attention(tq1, tq2, k1, k2, v, teacher_lambda, target.view(), options);
  }
  auto lq1 = random_tensor<2>({H, dl}, 0.1f, rng), lk1 = random_tensor<2>({H, dl}, 0.1f, rng);
  auto lq2 = random_tensor<2>({H, dl}, 0.1f, rng), lk2 = random_tensor<2>({H, dl}, 0.1f, rng);

  Tensor<float, 1> lambda({H}), dlambda({H});
  Tensor<float, 4> out({B, H, N, Dv}), dout({B, H, N, Dv});
  Tensor<float, 4> dq1(q1.shape()), dq2(q2.shape()), dk1(k1.shape()), dk2(k2.shape()), dv(v.shape());
  Tensor<float, 2> dlq1(lq1.shape()), dlk1(lk1.shape()), dlq2(lq2.shape()), dlk2(lk2.shape());
  double first_loss = 0, loss = 0;
  for (int step = 0; step < 200; ++step) {
    diffattn::lambda_reparam(lq1.view(), lk1.view(), lq2.view(), lk2.view(), lambda_init, lambda.view());
    diffattn::diff_attention(q1, q2, k1, k2, v, lambda, out.view(), options);
    // loss = ½·Σ (out − target)², so dloss/dout = out − target.
    loss = 0;
    for (index_t i = 0; i < out.size(); ++i) {
      dout.data()[i] = out.data()[i] - target.data()[i];
      loss += 0.5 * dout.data()[i] * dout.data()[i];
    }
    if (step == 0) first_loss = loss;
    if (step % 50 == 0) std::printf("step %3d  loss %.5f  lambda [%.4f, %.4f]\n", step, loss, lambda(0), lambda(1));
    diffattn::diff_attention_backward(q1, q2, k1, k2, v, lambda, dout, dq1.view(), dq2.view(), dk1.view(),
                                      dk2.view(), dv.view(), dlambda.view(), options);
    diffattn::lambda_reparam_backward(lq1, lk1, lq2, lk2, dlambda, dlq1.view(), dlk1.view(), dlq2.view(),
                                      dlk2.view());
    const float rate = 0.5f;
    descend(q1, dq1, rate);
    descend(q2, dq2, rate);
    descend(lq1, dlq1, rate / N);
    descend(lk1, dlk1, rate / N);
    descend(lq2, dlq2, rate / N);
    descend(lk2, dlk2, rate / N);
  }
  std::printf("final loss %.5f (from %.5f)\n", loss, first_loss);
  return loss < first_loss / 10 ? 0 : 1;
}
