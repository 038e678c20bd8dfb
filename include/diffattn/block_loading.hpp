#pragma once
/// \file
/// MultiHeadAttention::from_safetensors and MultiHeadDiffAttention::from_safetensors:
/// the blocks' weights read from a .safetensors checkpoint by the names of the reference
/// state_dicts (see blocks.hpp). Needs nlohmann-json, through the reader.

#include <algorithm>
#include <string>
#include <utility>

#include "diffattn/block_config.hpp"
#include "diffattn/block_weights.hpp"
#include "diffattn/blocks.hpp"
#include "diffattn/detail/blocks/loading.hpp"
#include "diffattn/detail/blocks/shape.hpp"
#include "diffattn/safetensors_reader.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

template <class T>
MultiHeadAttention<T> MultiHeadAttention<T>::from_safetensors(const AttentionConfig& config,
                                                              const SafeTensors& file,
                                                              const std::string& prefix) {
  const AttentionConfig c = detail::resolve_config(config);
  const detail::BlockShape s = detail::block_shape(c);
  AttentionWeights<T> w;
  detail::load_projections<T>(file, prefix, s, "out_proj", w);
  return MultiHeadAttention(c, std::move(w));
}

template <class T>
MultiHeadDiffAttention<T> MultiHeadDiffAttention<T>::from_safetensors(
    const DiffAttentionConfig& config, const SafeTensors& file, const std::string& prefix) {
  const DiffAttentionConfig c = detail::resolve_config(config);
  const detail::BlockShape s = detail::block_shape(c);
  const index_t d = s.head_dim, H = c.num_heads;
  const bool v2 = c.lambda == LambdaMode::v2;
  // The V2 reference code calls the output projection o_proj.
  const std::string out_name =
      v2 && !file.contains(prefix + "out_proj.weight") ? "o_proj" : "out_proj";
  DiffAttentionWeights<T> w;
  detail::load_projections<T>(file, prefix, s, out_name, w);
  if (v2) {
    w.lambda_proj = detail::load_linear<T>(file, prefix + "lambda_proj", H, s.embed_dim);
    return MultiHeadDiffAttention(c, std::move(w));
  }
  Tensor<T, 2>* vectors[4] = {&w.lambda_q1, &w.lambda_k1, &w.lambda_q2, &w.lambda_k2};
  const char* names[4] = {"lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"};
  for (int i = 0; i < 4; ++i) {
    const std::string name = prefix + names[i];
    if (c.lambda == LambdaMode::per_head) {
      *vectors[i] = file.tensor<T, 2>(name, {H, d});
    } else {
      const Tensor<T, 1> shared = file.tensor<T, 1>(name, {d});
      *vectors[i] = Tensor<T, 2>({1, d});
      std::copy(shared.data(), shared.data() + d, vectors[i]->data());
    }
  }
  w.subln_weight = file.tensor<T, 1>(prefix + "subln.weight", {2 * d});
  return MultiHeadDiffAttention(c, std::move(w));
}

}  // namespace diffattn
