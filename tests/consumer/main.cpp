// A downstream program: runs the public kernels on a small problem and checks them
// against diffattn::reference, and runs a block. Built with DIFFATTN_CONSUMER_SAFETENSORS
// (linked to diffattn::safetensors), it also writes the block's weights to a
// .safetensors buffer, loads the block back with from_safetensors and checks that it
// gives the same output. Exits non-zero on any mismatch.

#include <cmath>
#include <cstdio>
#include <random>
#include <utility>

#include <diffattn/diffattn.hpp>
#if defined(DIFFATTN_CONSUMER_SAFETENSORS)
#include <diffattn/safetensors.hpp>
#endif

namespace {

template <std::size_t Rank>
void fill_random(diffattn::Tensor<float, Rank>& tensor, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (diffattn::index_t i = 0; i < tensor.size(); ++i) tensor.data()[i] = normal(rng);
}

// Largest |a − b| relative to max(|b|, 1).
double max_error(const diffattn::Tensor<float, 4>& a, const diffattn::Tensor<float, 4>& b) {
  double worst = 0;
  for (diffattn::index_t i = 0; i < a.size(); ++i) {
    const double ref = b.data()[i];
    const double err = std::abs(static_cast<double>(a.data()[i]) - ref) / std::fmax(std::abs(ref), 1.0);
    if (!(err <= worst)) worst = err;  // also catches NaN
  }
  return worst;
}

diffattn::Linear<float> random_linear(diffattn::index_t out_features,
                                      diffattn::index_t in_features, std::mt19937& rng) {
  diffattn::Linear<float> layer;
  layer.weight = diffattn::Tensor<float, 2>({out_features, in_features});
  fill_random(layer.weight, rng);
  return layer;
}

// A causal standard block with GQA and RoPE; returns the number of failures.
int check_block(std::mt19937& rng) {
  diffattn::AttentionConfig config;
  config.embed_dim = 8;
  config.num_heads = 2;
  config.num_kv_heads = 1;
  config.causal = true;
  config.rope = diffattn::RopeStyle::half;
  diffattn::AttentionWeights<float> weights;
  weights.q_proj = random_linear(8, 8, rng);
  weights.k_proj = random_linear(4, 8, rng);
  weights.v_proj = random_linear(4, 8, rng);
  weights.out_proj = random_linear(8, 8, rng);
  diffattn::Tensor<float, 3> x({1, 5, 8});
  fill_random(x, rng);

  const diffattn::MultiHeadAttention<float> block(config, weights);
  const diffattn::Tensor<float, 3> y = block.forward(x.view());
  int failures = 0;
  for (diffattn::index_t i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y.data()[i])) ++failures;
  }
  std::printf("MultiHeadAttention: %s output\n", failures == 0 ? "finite" : "NON-FINITE");

#if defined(DIFFATTN_CONSUMER_SAFETENSORS)
  diffattn::SafeTensorsWriter writer;
  const std::pair<const char*, const diffattn::Linear<float>*> layers[] = {
      {"layer.q_proj.weight", &weights.q_proj},
      {"layer.k_proj.weight", &weights.k_proj},
      {"layer.v_proj.weight", &weights.v_proj},
      {"layer.out_proj.weight", &weights.out_proj}};
  for (const auto& [name, layer] : layers) writer.add(name, layer->weight);
  const diffattn::SafeTensors file = diffattn::SafeTensors::parse(writer.bytes());
  const auto loaded = diffattn::MultiHeadAttention<float>::from_safetensors(config, file, "layer.");
  const diffattn::Tensor<float, 3> y_loaded = loaded.forward(x.view());
  int differences = 0;
  for (diffattn::index_t i = 0; i < y.size(); ++i) {
    if (!(y_loaded.data()[i] == y.data()[i])) ++differences;
  }
  std::printf("from_safetensors: %d of %td outputs differ\n", differences, y.size());
  failures += differences;
#endif
  return failures;
}

}  // namespace

int main() {
  constexpr diffattn::index_t B = 1, H = 2, N = 5, D = 4, Dv = 8;
  std::mt19937 rng(20260101);
  diffattn::Tensor<float, 4> q1({B, H, N, D}), q2({B, H, N, D}), k1({B, H, N, D}),
      k2({B, H, N, D}), v({B, H, N, Dv});
  for (auto* t : {&q1, &q2, &k1, &k2}) fill_random(*t, rng);
  fill_random(v, rng);
  diffattn::Tensor<float, 1> lambda({H}, static_cast<float>(diffattn::lambda_init(2)));

  diffattn::Tensor<float, 4> out({B, H, N, Dv}), expected({B, H, N, Dv});
  diffattn::AttentionOptions<float> options;
  options.causal = true;

  // Loose enough for any float kernel (a few hundred ulps), tight enough to catch a
  // wrong formula, whose errors are O(1).
  constexpr double tolerance = 1e-4;
  int failures = 0;

  diffattn::softmax_attention(q1, k1, v, out.view(), options);
  diffattn::reference::softmax_attention(q1, k1, v, expected.view(), options);
  const double softmax_error = max_error(out, expected);
  std::printf("softmax_attention: max relative error %.3g\n", softmax_error);
  if (!(softmax_error <= tolerance)) ++failures;

  diffattn::diff_attention(q1, q2, k1, k2, v, lambda, out.view(), options);
  diffattn::reference::diff_attention(q1, q2, k1, k2, v, lambda, expected.view(), options);
  const double diff_error = max_error(out, expected);
  std::printf("diff_attention:    max relative error %.3g\n", diff_error);
  if (!(diff_error <= tolerance)) ++failures;

  failures += check_block(rng);

  std::printf("%s\n", failures == 0 ? "consumer: OK" : "consumer: MISMATCH");
  return failures == 0 ? 0 : 1;
}
