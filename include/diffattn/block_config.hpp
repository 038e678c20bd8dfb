#pragma once
/// \file
/// Configuration of the attention blocks (blocks.hpp): AttentionConfig for the standard
/// block, DiffAttentionConfig and its λ mode for the differential one.

#include "diffattn/rope.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

/// How a differential block gets its λ; see the top of blocks.hpp.
enum class LambdaMode { reference, per_head, v2 };

/// The mode's name as the command-line tools spell it: "reference", "per-head", "v2".
constexpr const char* lambda_mode_name(LambdaMode mode) noexcept {
  switch (mode) {
    case LambdaMode::per_head: return "per-head";
    case LambdaMode::v2: return "v2";
    case LambdaMode::reference: break;
  }
  return "reference";
}

/// Configuration of a standard block. Zero-valued optional fields take their defaults
/// when the block is built; MultiHeadAttention::config() reports the resolved values.
struct AttentionConfig {
  /// E: the width of x and y.
  index_t embed_dim = 0;
  /// Hq: query heads.
  index_t num_heads = 0;
  /// Hkv: key/value heads, a divisor of Hq (grouped-query attention); 0 means Hq.
  index_t num_kv_heads = 0;
  /// d: head width; 0 means E / Hq.
  index_t head_dim = 0;
  /// Query i sees keys j <= i (and every cached key).
  bool causal = false;
  /// Rotary position embedding of q and k (RopeStyle::none: no rotation).
  RopeStyle rope = RopeStyle::none;
  /// RoPE base θ: pair i turns by position·θ^(−2i/d).
  double rope_theta = 10000;
  /// Passed to the kernels' AttentionOptions::threads (0: all cores). The projections
  /// follow Eigen's own setting (Eigen::setNbThreads).
  int threads = 0;
};

/// Configuration of a differential block. Zero-valued optional fields take their
/// defaults when the block is built; MultiHeadDiffAttention::config() reports them.
struct DiffAttentionConfig {
  /// E: the width of x and y.
  index_t embed_dim = 0;
  /// H: differential heads (each with two query maps).
  index_t num_heads = 0;
  /// Hkv: kv heads, a divisor of H; 0 means H.
  index_t num_kv_heads = 0;
  /// d: width of each query/key map; 0 means E / H / 2 (the reference code's).
  index_t head_dim = 0;
  /// 1-based layer index l, for λ_init = 0.8 − 0.6·exp(−0.3·(l − 1)); unused by v2.
  int layer = 1;
  /// Query i sees keys j <= i (and every cached key).
  bool causal = false;
  /// Rotary position embedding of q and k (RopeStyle::none: no rotation).
  RopeStyle rope = RopeStyle::none;
  /// RoPE base θ: pair i turns by position·θ^(−2i/d).
  double rope_theta = 10000;
  /// How λ is formed: the paper's reparameterization (per layer or per head) or v2's
  /// per-token sigmoid (LambdaMode).
  LambdaMode lambda = LambdaMode::reference;
  /// Passed to the kernels' AttentionOptions::threads (0: all cores). The projections
  /// follow Eigen's own setting (Eigen::setNbThreads).
  int threads = 0;

  /// The standard block the reference compares this one with: 2H heads and 2Hkv kv heads
  /// of width d, the same E, causal flag and RoPE.
  AttentionConfig standard() const {
    AttentionConfig result;
    result.embed_dim = embed_dim;
    result.num_heads = 2 * num_heads;
    result.num_kv_heads = 2 * num_kv_heads;
    result.head_dim = head_dim != 0 ? head_dim : (num_heads > 0 ? embed_dim / num_heads / 2 : 0);
    result.causal = causal;
    result.rope = rope;
    result.rope_theta = rope_theta;
    result.threads = threads;
    return result;
  }
};

}  // namespace diffattn
