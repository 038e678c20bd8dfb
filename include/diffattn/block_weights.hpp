#pragma once
/// \file
/// Weights of the attention blocks (blocks.hpp), in PyTorch nn.Linear layout
/// ([out_features, in_features], y = x·Wᵀ + b) and named as the reference state_dicts.

#include "diffattn/tensor.hpp"

namespace diffattn {

/// A bias-optional linear layer in nn.Linear layout: y = x·weightᵀ + bias.
template <class T>
struct Linear {
  /// [out_features, in_features].
  Tensor<T, 2> weight;
  /// [out_features], or empty for no bias.
  Tensor<T, 1> bias;
};

/// Weights of a standard block (E, Hq, Hkv, d as in its config).
template <class T>
struct AttentionWeights {
  Linear<T> q_proj;    ///< [Hq·d, E]
  Linear<T> k_proj;    ///< [Hkv·d, E]
  Linear<T> v_proj;    ///< [Hkv·d, E]
  Linear<T> out_proj;  ///< [E, Hq·d]
};

/// Weights of a differential block (E, H, Hkv, d as in its config). Fields a λ mode
/// does not use stay empty.
template <class T>
struct DiffAttentionWeights {
  Linear<T> q_proj;    ///< [2H·d, E]
  Linear<T> k_proj;    ///< [2Hkv·d, E]; v2: [Hkv·d, E]
  Linear<T> v_proj;    ///< [Hkv·2d, E]; v2: [Hkv·d, E]
  Linear<T> out_proj;  ///< [E, H·2d]; v2: [E, H·d]
  /// λ vectors: [1, d] in reference mode (the checkpoint's [d]), [H, d] per head.
  Tensor<T, 2> lambda_q1;
  Tensor<T, 2> lambda_k1;  ///< as lambda_q1
  Tensor<T, 2> lambda_q2;  ///< as lambda_q1
  Tensor<T, 2> lambda_k2;  ///< as lambda_q1
  /// RMSNorm weight `subln.weight` [2d] (not in v2).
  Tensor<T, 1> subln_weight;
  /// v2 only: `lambda_proj.weight` [H, E].
  Linear<T> lambda_proj;
};

}  // namespace diffattn
