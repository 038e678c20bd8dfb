// Quick start: one differential-attention layer with 2 heads, next to standard softmax
// attention on the same inputs. Quoted in README.md between the [quickstart] markers.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include <diffattn/diffattn.hpp>

namespace {

template <std::size_t Rank>
void fill_normal(diffattn::Tensor<float, Rank>& tensor, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, stddev);
  for (diffattn::index_t i = 0; i < tensor.size(); ++i) tensor.data()[i] = normal(rng);
}

float max_abs(const diffattn::Tensor<float, 4>& tensor) {
  float largest = 0;
  for (diffattn::index_t i = 0; i < tensor.size(); ++i) {
    largest = std::max(largest, std::abs(tensor.data()[i]));
  }
  return largest;
}

}  // namespace

int main() {
  std::mt19937 rng(42);

  // [quickstart]
  using diffattn::Tensor;
  constexpr diffattn::index_t B = 1, H = 2, N = 16, d = 8, Dv = 16;

  // Each differential head has two query/key maps (q1·k1ᵀ and q2·k2ᵀ) and one value.
  Tensor<float, 4> q1({B, H, N, d}), q2({B, H, N, d});
  Tensor<float, 4> k1({B, H, N, d}), k2({B, H, N, d});
  Tensor<float, 4> v({B, H, N, Dv});
  for (auto* t : {&q1, &q2, &k1, &k2, &v}) fill_normal(*t, 1.0f, rng);

  // λ per head: exp(λq1·λk1) − exp(λq2·λk2) + λ_init, with λ_init set by the layer.
  const int layer = 3;  // 1-based
  const double lambda_init = diffattn::lambda_init(layer);
  Tensor<float, 2> lambda_q1({H, d}), lambda_k1({H, d}), lambda_q2({H, d}), lambda_k2({H, d});
  for (auto* t : {&lambda_q1, &lambda_k1, &lambda_q2, &lambda_k2}) fill_normal(*t, 0.1f, rng);
  Tensor<float, 1> lambda({H});
  diffattn::lambda_reparam(lambda_q1.view(), lambda_k1.view(), lambda_q2.view(),
                           lambda_k2.view(), lambda_init, lambda.view());

  // out = (softmax(q1·k1ᵀ/√d) − λ·softmax(q2·k2ᵀ/√d))·v, causal as in a decoder.
  diffattn::AttentionOptions<float> options;
  options.causal = true;
  Tensor<float, 4> diff_out({B, H, N, Dv});
  diffattn::diff_attention(q1, q2, k1, k2, v, lambda, diff_out.view(), options);

  // Standard attention with the first map, for comparison.
  Tensor<float, 4> softmax_out({B, H, N, Dv});
  diffattn::softmax_attention(q1, k1, v, softmax_out.view(), options);
  // [quickstart]

  std::printf("layer %d: lambda_init = %.6f\n", layer, lambda_init);
  for (diffattn::index_t h = 0; h < H; ++h) {
    std::printf("head %td: lambda = %.6f\n", h, static_cast<double>(lambda(h)));
  }
  std::printf("max |diff_attention out|    = %.6f\n", static_cast<double>(max_abs(diff_out)));
  std::printf("max |softmax_attention out| = %.6f\n", static_cast<double>(max_abs(softmax_out)));
  return 0;
}
