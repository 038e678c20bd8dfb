#pragma once
/// \file
/// Multi-head attention blocks: MultiHeadAttention (standard) and MultiHeadDiffAttention
/// (the Differential Transformer's), with the reference code's projections, head
/// layout, RoPE, grouped-query attention and a KV cache for incremental decoding.
///
/// A block is projections (Eigen GEMMs), RoPE, the public kernels softmax_attention /
/// diff_attention, the per-head RMSNorm of the differential block, and the output
/// projection. Weights are in PyTorch nn.Linear layout ([out_features, in_features],
/// y = x·Wᵀ + b) and named as the reference state_dicts (`q_proj.weight`, ...).
///
/// Differential block, as microsoft/unilm Diff-Transformer/multihead_diffattn.py
/// (H differential heads, Hkv kv heads, head width d = E / H / 2 by default):
///   q = x·Wqᵀ viewed [B, N, 2H, d]: heads 2i and 2i+1 are q1 and q2 of head i;
///   k = x·Wkᵀ viewed [B, N, 2Hkv, d]: heads 2j and 2j+1 are k1 and k2 of kv head j;
///   v = x·Wvᵀ viewed [B, N, Hkv, 2d];
///   head i = (softmax(q1·k1ᵀ/√d) − λ·softmax(q2·k2ᵀ/√d))·v with k1, k2, v of kv head
///            i / (H / Hkv);
///   y = concat_i(RMSNorm(head i)·(1 − λ_init))·Woᵀ, RMSNorm over 2d values, eps 1e-5.
/// With GQA (Hkv < H) the naive reference file repeats the 2Hkv key heads before
/// pairing, so q2 of a head can meet k1 of a kv head; this follows the FlashAttention
/// variant (multihead_flashdiff_1.py) instead, where q1 always meets k1 and q2 meets k2.
///
/// λ modes (LambdaMode):
/// - reference: λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init with vectors [d] shared by
///   all heads; λ_init = 0.8 − 0.6·exp(−0.3·(l − 1)) for the 1-based layer l.
/// - per_head: the same with one set of vectors per head, [H, d] each.
/// - v2: Differential Transformer V2 (Microsoft, January 2026; unilm
///   Diff-Transformer-V2/multihead_flashdiffv2.py). q = x·Wqᵀ viewed [B, N, 2H, d] as
///   above, but k and v have Hkv heads of width d that both maps of a pair share;
///   λ = sigmoid(x·Wλᵀ) per token and head (lambda_proj.weight [H, E]); and the
///   per-head RMSNorm and the (1 − λ_init) factor are gone (the V2 code removed them),
///   so head i = (softmax(q1·kᵀ/√d) − λ·softmax(q2·kᵀ/√d))·v is projected as it is:
///   o_proj is [E, H·d]. The V2 code names the output projection `o_proj`;
///   from_safetensors takes `out_proj` or `o_proj`. V2 models usually set d = E / H
///   (2H query heads of the baseline's width): set head_dim for that.
///
/// The standard block (multihead_attention.py) has Hq heads and Hkv kv heads of width
/// d = E / Hq by default; DiffAttentionConfig::standard() gives the one the reference
/// compares a differential block with: 2H heads and 2Hkv kv heads of the same width d.
///
/// Causal masking is bottom-right aligned, so forward(x, cache) — new tokens against
/// every cached token — equals the matching rows of one causal forward over the whole
/// sequence; RoPE positions continue from cache.length(). A float block may keep its
/// cache in bf16 or f16 (make_cache<bf16>): the new keys and values are rounded as they
/// are appended and the kernels read them in half precision (attention.hpp's mixed-type
/// overloads), while the weights, activations and y stay float.
///
/// Configs are in block_config.hpp, weights in block_weights.hpp; loading a block from a
/// .safetensors checkpoint (from_safetensors) is in block_loading.hpp.

#include <cmath>
#include <string>
#include <utility>

#include "diffattn/attention.hpp"
#include "diffattn/block_config.hpp"
#include "diffattn/block_weights.hpp"
#include "diffattn/detail/blocks/projections.hpp"
#include "diffattn/detail/blocks/shape.hpp"
#include "diffattn/errors.hpp"
#include "diffattn/kv_cache.hpp"
#include "diffattn/lambda.hpp"
#include "diffattn/layouts.hpp"
#include "diffattn/options.hpp"
#include "diffattn/rms_norm.hpp"
#include "diffattn/rope.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

/// A parsed .safetensors file (safetensors_reader.hpp); named here only so that the
/// blocks can declare from_safetensors without the JSON parser.
class SafeTensors;

/// Standard multi-head attention (the baseline of the Differential Transformer paper):
/// y = concat_h(softmax(q_h·k_hᵀ/√d)·v_h)·Woᵀ, with RoPE and GQA.
template <class T>
class MultiHeadAttention {
  static constexpr const char* block_name = "MultiHeadAttention";

 public:
  /// Validates the config (std::invalid_argument) and the weight shapes
  /// (diffattn::shape_error), naming the field, expected and got.
  MultiHeadAttention(const AttentionConfig& config, AttentionWeights<T> weights)
      : config_(detail::resolve_config(config)),
        shape_(detail::block_shape(config_)),
        weights_(std::move(weights)) {
    detail::check_projections(block_name, shape_, weights_);
  }

  /// Loads `prefix` + `q_proj.weight`, `k_proj.weight`, `v_proj.weight`,
  /// `out_proj.weight` (and `.bias` where present). Throws diffattn::safetensors_error
  /// for a missing tensor or a wrong shape. Defined in block_loading.hpp (included by
  /// safetensors.hpp), which needs nlohmann-json.
  static MultiHeadAttention from_safetensors(const AttentionConfig& config, const SafeTensors& file,
                                             const std::string& prefix = "");

  /// y = the block applied to x, each sequence on its own.
  /// x [B, N, E] (any strides) → y [B, N, E].
  Tensor<T, 3> forward(TensorView<const T, 3> x) const {
    return run("MultiHeadAttention::forward", x, static_cast<KVCache<T>*>(nullptr));
  }

  /// Incremental decoding: x holds the next N tokens of every sequence; their keys and
  /// values are appended to `cache` and they attend to every cached token (causally
  /// among themselves when config().causal). Throws diffattn::shape_error, leaving the
  /// cache as it was, when the cache does not fit the block or lacks room.
  /// A float block also decodes from a KVCache<bf16> or KVCache<f16> (see make_cache).
  /// x [B, N, E] → y [B, N, E].
  template <class Cache>
  Tensor<T, 3> forward(TensorView<const T, 3> x, KVCache<Cache>& cache) const {
    detail::check_cache_type<T, Cache>();
    return run("MultiHeadAttention::forward(x, cache)", x, &cache);
  }

  /// An empty cache for `batch` sequences of up to `capacity` tokens, of T by default.
  /// A float block's cache may be bf16 or f16 (make_cache<bf16>(batch, capacity)): it
  /// halves the cache's memory and read traffic; the keys and values are rounded (to
  /// nearest even) as they are appended, and attention reads them in half precision
  /// while q, the weights and y stay float.
  template <class Cache = T>
  KVCache<Cache> make_cache(index_t batch, index_t capacity) const {
    detail::check_cache_type<T, Cache>();
    return KVCache<Cache>(batch, capacity, shape_.key_heads, shape_.head_dim,
                          shape_.value_heads, shape_.value_dim);
  }

  /// The config with num_kv_heads and head_dim resolved.
  const AttentionConfig& config() const noexcept { return config_; }
  /// The block's weights, as given or loaded.
  const AttentionWeights<T>& weights() const noexcept { return weights_; }

 private:
  template <class Cache>
  Tensor<T, 3> run(const char* fn, TensorView<const T, 3> x, KVCache<Cache>* cache) const {
    Tensor<T, 2> scratch;
    const auto rows = detail::token_rows(fn, x, shape_.embed_dim, scratch);
    const index_t batch = x.extent(0), tokens = x.extent(1);
    if (cache != nullptr) detail::check_cache(fn, *cache, shape_, batch, tokens);
    const auto p =
        detail::project_tokens(shape_, config_.rope, config_.rope_theta, rows, batch, tokens,
                               weights_.q_proj, weights_.k_proj, weights_.v_proj, cache);
    AttentionOptions<T> options;
    options.causal = config_.causal;
    options.threads = config_.threads;
    // The kernel writes [B, H, N, d] through a permuted view of the [B, N, H, d] buffer
    // the output projection reads.
    Tensor<T, 4> heads({batch, tokens, shape_.output_heads, shape_.value_dim});
    // No <T>: K and V from a bf16 or f16 cache select the mixed-type overload.
    softmax_attention(bnhd_to_bhnd(p.q.view()), bnhd_to_bhnd(p.keys), bnhd_to_bhnd(p.values),
                      bnhd_to_bhnd(heads.view()), options);
    return detail::project_output<T>(heads.view(), weights_.out_proj, shape_.embed_dim);
  }

  AttentionConfig config_;
  detail::BlockShape shape_;
  AttentionWeights<T> weights_;
};

/// Multi-head differential attention (Ye et al., "Differential Transformer", ICLR 2025),
/// in the λ mode of its config; see the top of this header for the exact computation.
template <class T>
class MultiHeadDiffAttention {
  static constexpr const char* block_name = "MultiHeadDiffAttention";

 public:
  /// RMSNorm epsilon of the per-head normalisation (the reference code's subln).
  static constexpr double subln_eps = 1e-5;

  /// Validates the config (std::invalid_argument) and the weight shapes
  /// (diffattn::shape_error), naming the field, expected and got.
  MultiHeadDiffAttention(const DiffAttentionConfig& config, DiffAttentionWeights<T> weights)
      : config_(detail::resolve_config(config)),
        shape_(detail::block_shape(config_)),
        weights_(std::move(weights)) {
    const index_t d = shape_.head_dim, H = config_.num_heads;
    detail::check_projections(block_name, shape_, weights_);
    if (config_.lambda == LambdaMode::v2) {
      detail::check_linear(block_name, "lambda_proj", weights_.lambda_proj, H, "H",
                           shape_.embed_dim, "E");
      return;
    }
    const index_t lambda_rows = config_.lambda == LambdaMode::per_head ? H : 1;
    const char* rows_name = config_.lambda == LambdaMode::per_head ? "H" : "1: one λ for all heads";
    const std::pair<const char*, const Tensor<T, 2>*> vectors[4] = {
        {"weights.lambda_q1", &weights_.lambda_q1},
        {"weights.lambda_k1", &weights_.lambda_k1},
        {"weights.lambda_q2", &weights_.lambda_q2},
        {"weights.lambda_k2", &weights_.lambda_k2}};
    for (const auto& [name, tensor] : vectors) {
      detail::check_extent(block_name, name, 0, rows_name, lambda_rows, tensor->extent(0));
      detail::check_extent(block_name, name, 1, "d", d, tensor->extent(1));
    }
    detail::check_extent(block_name, "weights.subln_weight", 0, "2d", 2 * d,
                         weights_.subln_weight.extent(0));

    lambda_init_ = diffattn::lambda_init(config_.layer);
    lambda_ = Tensor<T, 1>({lambda_rows});
    lambda_reparam(weights_.lambda_q1.view(), weights_.lambda_k1.view(), weights_.lambda_q2.view(),
                   weights_.lambda_k2.view(), lambda_init_, lambda_.view());
    // (RMSNorm(x)·w)·(1 − λ_init) = RMSNorm(x)·(w·(1 − λ_init)): one pass instead of two.
    scaled_subln_ = Tensor<T, 1>({2 * d});
    for (index_t c = 0; c < 2 * d; ++c) {
      scaled_subln_(c) =
          static_cast<T>(static_cast<double>(weights_.subln_weight(c)) * (1 - lambda_init_));
    }
  }

  /// Loads `prefix` + `q_proj.weight`, `k_proj.weight`, `v_proj.weight`,
  /// `out_proj.weight` (v2 also accepts `o_proj.weight`), with `.bias` where present,
  /// then `lambda_q1`, `lambda_k1`, `lambda_q2`, `lambda_k2` ([d], or [H, d] per head) and
  /// `subln.weight` [2d], or for v2 `lambda_proj.weight` [H, E]. Throws
  /// diffattn::safetensors_error for a missing tensor or a wrong shape. Defined in
  /// block_loading.hpp (included by safetensors.hpp), which needs nlohmann-json.
  static MultiHeadDiffAttention from_safetensors(const DiffAttentionConfig& config,
                                                 const SafeTensors& file,
                                                 const std::string& prefix = "");

  /// y = the block applied to x, each sequence on its own.
  /// x [B, N, E] (any strides) → y [B, N, E].
  Tensor<T, 3> forward(TensorView<const T, 3> x) const {
    return run("MultiHeadDiffAttention::forward", x, static_cast<KVCache<T>*>(nullptr));
  }

  /// Incremental decoding: x holds the next N tokens of every sequence; their keys and
  /// values are appended to `cache` and they attend to every cached token (causally
  /// among themselves when config().causal). Throws diffattn::shape_error, leaving the
  /// cache as it was, when the cache does not fit the block or lacks room.
  /// A float block also decodes from a KVCache<bf16> or KVCache<f16> (see make_cache).
  /// x [B, N, E] → y [B, N, E].
  template <class Cache>
  Tensor<T, 3> forward(TensorView<const T, 3> x, KVCache<Cache>& cache) const {
    detail::check_cache_type<T, Cache>();
    return run("MultiHeadDiffAttention::forward(x, cache)", x, &cache);
  }

  /// An empty cache for `batch` sequences of up to `capacity` tokens, of T by default.
  /// A float block's cache may be bf16 or f16 (make_cache<bf16>(batch, capacity)): it
  /// halves the cache's memory and read traffic; the keys and values are rounded (to
  /// nearest even) as they are appended, and attention reads them in half precision
  /// while q, the weights and y stay float.
  template <class Cache = T>
  KVCache<Cache> make_cache(index_t batch, index_t capacity) const {
    detail::check_cache_type<T, Cache>();
    return KVCache<Cache>(batch, capacity, shape_.key_heads, shape_.head_dim,
                          shape_.value_heads, shape_.value_dim);
  }

  /// The config with num_kv_heads and head_dim resolved.
  const DiffAttentionConfig& config() const noexcept { return config_; }
  /// The block's weights, as given or loaded.
  const DiffAttentionWeights<T>& weights() const noexcept { return weights_; }
  /// λ_init of the config's layer (0 in v2 mode, which does not use it).
  double lambda_init() const noexcept { return lambda_init_; }
  /// λ per head ([H], or [1] in reference mode); empty in v2 mode, where λ depends on x.
  TensorView<const T, 1> lambda() const noexcept { return lambda_.view(); }

 private:
  template <class Cache>
  Tensor<T, 3> run(const char* fn, TensorView<const T, 3> x, KVCache<Cache>* cache) const {
    Tensor<T, 2> scratch;
    const auto rows = detail::token_rows(fn, x, shape_.embed_dim, scratch);
    const index_t batch = x.extent(0), tokens = x.extent(1);
    if (cache != nullptr) detail::check_cache(fn, *cache, shape_, batch, tokens);
    const auto p =
        detail::project_tokens(shape_, config_.rope, config_.rope_theta, rows, batch, tokens,
                               weights_.q_proj, weights_.k_proj, weights_.v_proj, cache);
    AttentionOptions<T> options;
    options.causal = config_.causal;
    options.threads = config_.threads;

    // The kernel writes [B, H, N, Dv] through a permuted view of the [B, N, H, Dv] buffer
    // that RMSNorm and the output projection read as rows.
    Tensor<T, 4> heads({batch, tokens, shape_.output_heads, shape_.value_dim});
    const auto [q1, q2] = interleaved_pairs(p.q.view());
    const auto values = bnhd_to_bhnd(p.values);
    if (config_.lambda == LambdaMode::v2) {
      // λ = sigmoid(x·Wλᵀ) [B·N, H], read by the kernel as [B, H, N].
      Tensor<T, 2> lambda({batch * tokens, shape_.output_heads});
      detail::apply_linear(rows, weights_.lambda_proj, lambda.view());
      for (index_t i = 0; i < lambda.size(); ++i) {
        lambda.data()[i] =
            static_cast<T>(1 / (1 + std::exp(-static_cast<double>(lambda.data()[i]))));
      }
      const auto lambda_bhn = lambda.view()
                                  .template reshape<3>({batch, tokens, shape_.output_heads})
                                  .permute({0, 2, 1});
      const auto keys = bnhd_to_bhnd(p.keys);  // k1 = k2: the pair shares its kv head
      diff_attention(q1, q2, keys, keys, values, lambda_bhn, bnhd_to_bhnd(heads.view()),
                     options);
    } else {
      const auto [k1, k2] = interleaved_pairs(p.keys);
      diff_attention(q1, q2, k1, k2, values, lambda_.view(), bnhd_to_bhnd(heads.view()),
                     options);
      const auto head_rows = heads.view().template reshape<2>(
          {batch * tokens * shape_.output_heads, shape_.value_dim});
      rms_norm<T>(head_rows, scaled_subln_.view(), subln_eps, head_rows);
    }
    return detail::project_output<T>(heads.view(), weights_.out_proj, shape_.embed_dim);
  }

  DiffAttentionConfig config_;
  detail::BlockShape shape_;
  DiffAttentionWeights<T> weights_;
  double lambda_init_ = 0;
  Tensor<T, 1> lambda_;        // [1] or [H]; empty in v2 mode
  Tensor<T, 1> scaled_subln_;  // subln.weight·(1 − λ_init) [2d]; empty in v2 mode
};

}  // namespace diffattn
