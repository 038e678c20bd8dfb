// Toy model: two pre-norm residual layers of differential attention, next to the
// standard-attention model of the same size, with deterministic random weights. Decodes
// the last tokens through KV caches and checks them against one causal forward pass.
// Quoted in README.md between the [blocks] markers.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <diffattn/diffattn.hpp>

#include "random_weights.hpp"

namespace {

using diffattn::index_t;
using diffattn::Tensor;

constexpr index_t kBatch = 2, kTokens = 12, kPrompt = 8, kEmbed = 64;

/// x + block(RMSNorm(x)): the pre-norm residual connection of a decoder layer.
template <class Block>
Tensor<float, 3> residual(const Block& block, const Tensor<float, 3>& x,
                          diffattn::KVCache<float>* cache) {
  const index_t rows = x.extent(0) * x.extent(1);
  const Tensor<float, 1> norm_weight({kEmbed}, 1.0f);
  Tensor<float, 3> normed(x.shape());
  diffattn::rms_norm<float>(x.view().reshape<2>({rows, kEmbed}), norm_weight, 1e-5,
                            normed.view().reshape<2>({rows, kEmbed}));
  Tensor<float, 3> y = cache != nullptr ? block.forward(normed, *cache) : block.forward(normed);
  for (index_t i = 0; i < y.size(); ++i) y.data()[i] += x.data()[i];
  return y;
}

template <class Block>
struct ToyModel {
  std::vector<Block> layers;

  /// The whole sequence at once, or the next tokens through one cache per layer.
  Tensor<float, 3> forward(Tensor<float, 3> x,
                           std::vector<diffattn::KVCache<float>>* caches) const {
    for (std::size_t l = 0; l < layers.size(); ++l) {
      x = residual(layers[l], x, caches != nullptr ? &(*caches)[l] : nullptr);
    }
    return x;
  }

  std::vector<diffattn::KVCache<float>> make_caches(index_t batch, index_t capacity) const {
    std::vector<diffattn::KVCache<float>> caches;
    for (const Block& layer : layers) caches.push_back(layer.make_cache(batch, capacity));
    return caches;
  }
};

/// Tokens [begin, end) of every sequence, as a tensor of their own.
Tensor<float, 3> token_range(const Tensor<float, 3>& x, index_t begin, index_t end) {
  Tensor<float, 3> range({x.extent(0), end - begin, x.extent(2)});
  for (index_t b = 0; b < x.extent(0); ++b)
    for (index_t n = begin; n < end; ++n)
      for (index_t c = 0; c < x.extent(2); ++c) range(b, n - begin, c) = x(b, n, c);
  return range;
}

/// Prints the model's output statistics, and how far decoding through KV caches (a
/// prompt, then one token at a time) lands from the full causal forward pass.
template <class Block>
bool summarize(const char* name, const ToyModel<Block>& model, const Tensor<float, 3>& x,
               index_t parameters) {
  const Tensor<float, 3> full = model.forward(x, nullptr);
  double sum_of_squares = 0;
  for (index_t i = 0; i < full.size(); ++i)
    sum_of_squares += double(full.data()[i]) * full.data()[i];

  auto caches = model.make_caches(kBatch, kTokens);
  double worst = 0;
  for (index_t begin = 0; begin < kTokens;) {
    const index_t end = begin == 0 ? kPrompt : begin + 1;
    const Tensor<float, 3> part = model.forward(token_range(x, begin, end), &caches);
    for (index_t b = 0; b < kBatch; ++b)
      for (index_t n = begin; n < end; ++n)
        for (index_t c = 0; c < kEmbed; ++c)
          worst = std::max(worst, std::abs(double(part(b, n - begin, c)) - full(b, n, c)));
    begin = end;
  }
  std::printf(
      "%-22s %zu layers, %6td attention parameters, output rms %.4f, "
      "cached decoding vs full forward: max |diff| %.2e\n",
      name, model.layers.size(), parameters, std::sqrt(sum_of_squares / double(full.size())),
      worst);
  // Same math in another order only (kernel tiles, GEMM blocking): a few float ulps.
  return worst <= 1e-5;
}

template <class Weights>
index_t count_parameters(const Weights& w) {
  return w.q_proj.weight.size() + w.k_proj.weight.size() + w.v_proj.weight.size() +
         w.out_proj.weight.size();
}

}  // namespace

int main() {
  // Token embeddings of two sequences: deterministic, unit-variance.
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor<float, 3> x({kBatch, kTokens, kEmbed});
  for (index_t i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);

  // [blocks]
  // Layer l of the differential model: 4 differential heads (8 maps of width 8), 2 kv
  // heads, causal, RoPE as in the reference code, λ_init from the layer index.
  ToyModel<diffattn::MultiHeadDiffAttention<float>> diff_model;
  ToyModel<diffattn::MultiHeadAttention<float>> standard_model;
  index_t diff_parameters = 0, standard_parameters = 0;
  for (int layer = 1; layer <= 2; ++layer) {
    diffattn::DiffAttentionConfig config;
    config.embed_dim = kEmbed;
    config.num_heads = 4;
    config.num_kv_heads = 2;
    config.layer = layer;
    config.causal = true;
    config.rope = diffattn::RopeStyle::interleaved;
    auto weights = examples::random_weights<float>(config, /*seed=*/layer);
    diff_parameters +=
        count_parameters(weights) + 4 * weights.lambda_q1.size() + weights.subln_weight.size();
    diff_model.layers.emplace_back(config, std::move(weights));

    // The standard block of the same size: 8 heads and 4 kv heads of width 8.
    const diffattn::AttentionConfig standard = config.standard();
    auto standard_weights = examples::random_weights<float>(standard, /*seed=*/100 + layer);
    standard_parameters += count_parameters(standard_weights);
    standard_model.layers.emplace_back(standard, std::move(standard_weights));
  }
  // [blocks]

  for (const auto& layer : diff_model.layers) {
    std::printf("diff layer %d: lambda_init %.4f, lambda %.4f\n", layer.config().layer,
                layer.lambda_init(), static_cast<double>(layer.lambda()(0)));
  }
  const bool diff_ok = summarize("differential attention", diff_model, x, diff_parameters);
  const bool standard_ok = summarize("standard attention", standard_model, x, standard_parameters);
  return diff_ok && standard_ok ? 0 : 1;
}
