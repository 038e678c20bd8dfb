#pragma once
// Deterministic random weights for the attention blocks, for the examples and the
// tests: the same values on every platform for a given seed. Not part of the library
// (a model loads trained weights: from_safetensors). The shapes come from the library's
// own config resolution (diffattn::detail), so they are the ones the block checks.

#include <cmath>
#include <cstdint>
#include <random>

#include <diffattn/blocks.hpp>

namespace examples {

using diffattn::AttentionConfig;
using diffattn::AttentionWeights;
using diffattn::DiffAttentionConfig;
using diffattn::DiffAttentionWeights;
using diffattn::index_t;
using diffattn::LambdaMode;
using diffattn::Linear;
using diffattn::Tensor;
using diffattn::detail::block_shape;
using diffattn::detail::BlockShape;
using diffattn::detail::resolve_config;

/// The same draws on every platform for a seed (std::mt19937_64 is fully specified; the
/// standard's distributions are not), for random_weights. Uniform values are exact;
/// normal ones go through libm's log and cos, so may differ in the last bit.
class WeightGenerator {
 public:
  explicit WeightGenerator(std::uint64_t seed) : engine_(seed) {}

  /// Uniform in [−bound, bound).
  double uniform(double bound) {
    const double unit = static_cast<double>(engine_() >> 11) * 0x1.0p-53;  // [0, 1)
    return bound * (2 * unit - 1);
  }

  /// Normal(0, stddev), Box–Muller.
  double normal(double stddev) {
    const double u1 = 1 - static_cast<double>(engine_() >> 11) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(engine_() >> 11) * 0x1.0p-53;
    return stddev * std::sqrt(-2 * std::log(u1)) * std::cos(2 * 3.14159265358979323846 * u2);
  }

  /// nn.Linear's default initialisation: uniform in ±1/√in_features, no bias.
  template <class T>
  Linear<T> linear(index_t out_features, index_t in_features) {
    Linear<T> layer;
    layer.weight = Tensor<T, 2>({out_features, in_features});
    const double bound = 1 / std::sqrt(static_cast<double>(in_features));
    for (index_t i = 0; i < layer.weight.size(); ++i) {
      layer.weight.data()[i] = static_cast<T>(uniform(bound));
    }
    return layer;
  }

  /// Random q_proj, k_proj, v_proj and out_proj for a block of shape `s`.
  template <class T, class Weights>
  void projections(const BlockShape& s, Weights& w) {
    w.q_proj = linear<T>(s.query_heads * s.head_dim, s.embed_dim);
    w.k_proj = linear<T>(s.key_heads * s.head_dim, s.embed_dim);
    w.v_proj = linear<T>(s.value_heads * s.value_dim, s.embed_dim);
    w.out_proj = linear<T>(s.embed_dim, s.output_heads * s.value_dim);
  }

  template <class T>
  Tensor<T, 2> normal_tensor(index_t rows, index_t cols, double stddev) {
    Tensor<T, 2> t({rows, cols});
    for (index_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(normal(stddev));
    return t;
  }

 private:
  std::mt19937_64 engine_;
};

/// Deterministic random weights for a standard block, the same on every platform for a
/// given seed: nn.Linear's default uniform(±1/√fan_in), no biases.
template <class T>
AttentionWeights<T> random_weights(const AttentionConfig& config, std::uint64_t seed) {
  const BlockShape s = block_shape(resolve_config(config));
  WeightGenerator generator(seed);
  AttentionWeights<T> w;
  generator.projections<T>(s, w);
  return w;
}

/// Deterministic random weights for a differential block in the config's λ mode, the
/// same on every platform for a given seed (λ vectors up to libm's last bit):
/// projections as nn.Linear's default uniform(±1/√fan_in) without biases, λ vectors
/// normal(0, 0.1) and subln.weight ones as the reference code initialises them.
template <class T>
DiffAttentionWeights<T> random_weights(const DiffAttentionConfig& config, std::uint64_t seed) {
  const DiffAttentionConfig c = resolve_config(config);
  const BlockShape s = block_shape(c);
  WeightGenerator generator(seed);
  DiffAttentionWeights<T> w;
  generator.projections<T>(s, w);
  if (c.lambda == LambdaMode::v2) {
    w.lambda_proj = generator.linear<T>(c.num_heads, s.embed_dim);
    return w;
  }
  const index_t rows = c.lambda == LambdaMode::per_head ? c.num_heads : 1;
  for (Tensor<T, 2>* vector : {&w.lambda_q1, &w.lambda_k1, &w.lambda_q2, &w.lambda_k2}) {
    *vector = generator.normal_tensor<T>(rows, s.head_dim, 0.1);
  }
  w.subln_weight = Tensor<T, 1>({2 * s.head_dim}, T(1));
  return w;
}

}  // namespace examples
