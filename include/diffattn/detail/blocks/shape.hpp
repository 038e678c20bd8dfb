#pragma once
/// A block's config resolved into the geometry of its tensors, and its weights checked
/// against that geometry.

#include <cmath>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "diffattn/block_config.hpp"
#include "diffattn/block_weights.hpp"
#include "diffattn/errors.hpp"
#include "diffattn/rope.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn::detail {

/// Head counts and widths of a block's tensors: q [B, N, query_heads, head_dim],
/// k [B, N, key_heads, head_dim], v [B, N, value_heads, value_dim], attention output
/// [B, N, output_heads, value_dim].
struct BlockShape {
  index_t embed_dim = 0, query_heads = 0, key_heads = 0, value_heads = 0, head_dim = 0,
          value_dim = 0, output_heads = 0;
  /// How error messages name the projections' widths: query_heads·head_dim,
  /// key_heads·head_dim, value_heads·value_dim and output_heads·value_dim.
  const char* q_width = "";
  const char* k_width = "";
  const char* v_width = "";
  const char* out_width = "";
};

template <class... Parts>
[[noreturn]] void throw_config_error(const char* block, const Parts&... parts) {
  throw std::invalid_argument(concat("diffattn: ", block, ": config.", parts...));
}

/// Checks the fields both configs share; returns the resolved kv heads and head width.
inline std::pair<index_t, index_t> resolve_heads(const char* block, index_t embed_dim,
                                                 index_t heads, index_t kv_heads, index_t head_dim,
                                                 index_t heads_per_width, RopeStyle rope,
                                                 double rope_theta, int threads) {
  if (embed_dim <= 0) throw_config_error(block, "embed_dim must be > 0, got ", embed_dim);
  if (heads <= 0) throw_config_error(block, "num_heads must be > 0, got ", heads);
  if (kv_heads < 0) throw_config_error(block, "num_kv_heads must be >= 0, got ", kv_heads);
  if (kv_heads == 0) kv_heads = heads;
  if (heads % kv_heads != 0) {
    throw_config_error(block, "num_kv_heads must divide num_heads = ", heads, ", got ", kv_heads);
  }
  if (head_dim < 0) throw_config_error(block, "head_dim must be >= 0, got ", head_dim);
  if (head_dim == 0) {
    const index_t parts = heads_per_width * heads;
    if (embed_dim % parts != 0) {
      throw_config_error(block, "head_dim is 0 (E / ", heads_per_width == 2 ? "2H" : "H",
                         "), so embed_dim must be a multiple of ", parts, ", got ", embed_dim);
    }
    head_dim = embed_dim / parts;
  }
  if (rope != RopeStyle::none && head_dim % 2 != 0) {
    throw_config_error(block, "rope needs an even head_dim, got ", head_dim);
  }
  if (!(std::isfinite(rope_theta) && rope_theta > 0)) {
    throw_config_error(block, "rope_theta must be finite and > 0, got ", rope_theta);
  }
  if (threads < 0) throw_config_error(block, "threads must be >= 0, got ", threads);
  return {kv_heads, head_dim};
}

/// The config with num_kv_heads and head_dim filled in; throws std::invalid_argument.
inline AttentionConfig resolve_config(AttentionConfig config) {
  std::tie(config.num_kv_heads, config.head_dim) =
      resolve_heads("MultiHeadAttention", config.embed_dim, config.num_heads, config.num_kv_heads,
                    config.head_dim, 1, config.rope, config.rope_theta, config.threads);
  return config;
}

inline DiffAttentionConfig resolve_config(DiffAttentionConfig config) {
  constexpr const char* block = "MultiHeadDiffAttention";
  std::tie(config.num_kv_heads, config.head_dim) =
      resolve_heads(block, config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
                    2, config.rope, config.rope_theta, config.threads);
  if (config.layer < 1) {
    throw_config_error(block, "layer is 1-based, expected >= 1, got ", config.layer);
  }
  return config;
}

/// Tensor geometry of a block with a resolved config.
inline BlockShape block_shape(const AttentionConfig& c) {
  BlockShape s;
  s.embed_dim = c.embed_dim;
  s.query_heads = s.output_heads = c.num_heads;
  s.key_heads = s.value_heads = c.num_kv_heads;
  s.head_dim = s.value_dim = c.head_dim;
  s.q_width = s.out_width = "Hq·d";
  s.k_width = s.v_width = "Hkv·d";
  return s;
}

inline BlockShape block_shape(const DiffAttentionConfig& c) {
  const bool v2 = c.lambda == LambdaMode::v2;
  BlockShape s;
  s.embed_dim = c.embed_dim;
  s.query_heads = 2 * c.num_heads;
  s.key_heads = v2 ? c.num_kv_heads : 2 * c.num_kv_heads;
  s.value_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.value_dim = v2 ? c.head_dim : 2 * c.head_dim;
  s.output_heads = c.num_heads;
  s.q_width = "2H·d";
  s.k_width = v2 ? "Hkv·d" : "2Hkv·d";
  s.v_width = v2 ? "Hkv·d" : "Hkv·2d";
  s.out_width = v2 ? "H·d" : "H·2d";
  return s;
}

template <class T>
void check_linear(const char* block, const char* name, const Linear<T>& layer, index_t out_features,
                  const char* out_name, index_t in_features, const char* in_name) {
  const std::string weight = concat("weights.", name, ".weight");
  check_extent(block, weight.c_str(), 0, out_name, out_features, layer.weight.extent(0));
  check_extent(block, weight.c_str(), 1, in_name, in_features, layer.weight.extent(1));
  if (!layer.bias.empty()) {
    const std::string bias = concat("weights.", name, ".bias");
    check_extent(block, bias.c_str(), 0, out_name, out_features, layer.bias.extent(0));
  }
}

/// Checks q_proj, k_proj, v_proj and out_proj of a block's weights against its shape.
template <class Weights>
void check_projections(const char* block, const BlockShape& s, const Weights& w) {
  const index_t E = s.embed_dim;
  check_linear(block, "q_proj", w.q_proj, s.query_heads * s.head_dim, s.q_width, E, "E");
  check_linear(block, "k_proj", w.k_proj, s.key_heads * s.head_dim, s.k_width, E, "E");
  check_linear(block, "v_proj", w.v_proj, s.value_heads * s.value_dim, s.v_width, E, "E");
  check_linear(block, "out_proj", w.out_proj, E, "E", s.output_heads * s.value_dim, s.out_width);
}

}  // namespace diffattn::detail
