#pragma once
/// Reads a block's nn.Linear layers from a .safetensors checkpoint.

#include <string>

#include "diffattn/block_weights.hpp"
#include "diffattn/detail/blocks/shape.hpp"
#include "diffattn/safetensors_reader.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn::detail {

template <class T>
Linear<T> load_linear(const SafeTensors& file, const std::string& name, index_t out_features,
                      index_t in_features) {
  Linear<T> layer;
  layer.weight = file.tensor<T, 2>(name + ".weight", {out_features, in_features});
  if (file.contains(name + ".bias")) layer.bias = file.tensor<T, 1>(name + ".bias", {out_features});
  return layer;
}

/// Loads `prefix` + q_proj, k_proj, v_proj and `out_name` into a block's weights.
template <class T, class Weights>
void load_projections(const SafeTensors& file, const std::string& prefix, const BlockShape& s,
                      const std::string& out_name, Weights& w) {
  const index_t E = s.embed_dim;
  w.q_proj = load_linear<T>(file, prefix + "q_proj", s.query_heads * s.head_dim, E);
  w.k_proj = load_linear<T>(file, prefix + "k_proj", s.key_heads * s.head_dim, E);
  w.v_proj = load_linear<T>(file, prefix + "v_proj", s.value_heads * s.value_dim, E);
  w.out_proj = load_linear<T>(file, prefix + out_name, E, s.output_heads * s.value_dim);
}

}  // namespace diffattn::detail
