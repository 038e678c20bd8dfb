#pragma once
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
/// sequence; RoPE positions continue from cache.length().

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "diffattn/attention.hpp"
#include "diffattn/errors.hpp"
#include "diffattn/kv_cache.hpp"
#include "diffattn/lambda.hpp"
#include "diffattn/layouts.hpp"
#include "diffattn/options.hpp"
#include "diffattn/rms_norm.hpp"
#include "diffattn/rope.hpp"
#include "diffattn/safetensors.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

/// How a differential block gets its λ; see the top of this header.
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
  RopeStyle rope = RopeStyle::none;
  /// RoPE base θ: pair i turns by position·θ^(−2i/d).
  double rope_theta = 10000;
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
  Tensor<T, 2> lambda_q1, lambda_k1, lambda_q2, lambda_k2;
  /// RMSNorm weight `subln.weight` [2d] (not in v2).
  Tensor<T, 1> subln_weight;
  /// v2 only: `lambda_proj.weight` [H, E].
  Linear<T> lambda_proj;
};

namespace detail {

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

/// Row-major Eigen map of a 2-D view whose rows are contiguous. as_eigen's map has a
/// run-time inner stride, and Eigen's GEMM copies such an operand before multiplying;
/// this one has a compile-time inner stride of 1, so the GEMM reads it in place.
template <class T>
auto row_major_map(TensorView<T, 2> view) {
  using Plain =
      Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Matrix = std::conditional_t<std::is_const_v<T>, const Plain, Plain>;
  if (view.extent(1) > 1 && view.stride(1) != 1) {
    throw_shape_error("row_major_map: expected contiguous rows, got a column stride of ",
                      view.stride(1));
  }
  const index_t row_stride = view.extent(0) > 1 ? view.stride(0) : view.extent(1);
  return Eigen::Map<Matrix, Eigen::Unaligned, Eigen::OuterStride<>>(
      view.data(), view.extent(0), view.extent(1), Eigen::OuterStride<>(row_stride));
}

/// y = x·Wᵀ + b. x [R, in] and y [R, out] with contiguous rows.
template <class T>
void apply_linear(TensorView<const T, 2> x, const Linear<T>& layer, TensorView<T, 2> y) {
  auto y_map = row_major_map(y);
  y_map.noalias() = row_major_map(x) * row_major_map(layer.weight.view()).transpose();
  if (!layer.bias.empty()) {
    using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;
    y_map.rowwise() += Eigen::Map<const RowVector>(layer.bias.data(), layer.bias.size());
  }
}

/// x [B, N, E] as rows [B·N, E]: a view when x is contiguous, else a copy in `scratch`.
template <class T>
TensorView<const T, 2> token_rows(const char* fn, TensorView<const T, 3> x, index_t embed_dim,
                                  Tensor<T, 2>& scratch) {
  check_extent(fn, "x", 2, "E", embed_dim, x.extent(2));
  const std::array<index_t, 2> shape = {x.extent(0) * x.extent(1), x.extent(2)};
  if (x.is_contiguous()) return x.template reshape<2>(shape);
  scratch = Tensor<T, 2>(shape);
  index_t row = 0;
  for (index_t b = 0; b < x.extent(0); ++b) {
    for (index_t n = 0; n < x.extent(1); ++n, ++row) {
      for (index_t c = 0; c < x.extent(2); ++c) scratch(row, c) = x(b, n, c);
    }
  }
  return scratch.view();
}

template <class T>
void check_cache(const char* fn, const KVCache<T>& cache, const BlockShape& shape, index_t batch,
                 index_t tokens) {
  if (cache.batch() != batch || cache.key_heads() != shape.key_heads ||
      cache.key_dim() != shape.head_dim || cache.value_heads() != shape.value_heads ||
      cache.value_dim() != shape.value_dim) {
    throw_shape_error(fn, ": 'cache' does not fit this block and batch: it holds keys [B=",
                      cache.batch(), ", heads=", cache.key_heads(), ", width=", cache.key_dim(),
                      "] and values [heads=", cache.value_heads(), ", width=", cache.value_dim(),
                      "], expected keys [B=", batch, ", heads=", shape.key_heads,
                      ", width=", shape.head_dim, "] and values [heads=", shape.value_heads,
                      ", width=", shape.value_dim, "] (make_cache builds a matching one)");
  }
  if (tokens > cache.remaining()) {
    throw_shape_error(fn, ": 'x' dimension 1 (N): the cache holds ", cache.length(), " of ",
                      cache.capacity(), " tokens, so at most ", cache.remaining(),
                      " more fit, got ", tokens);
  }
}

/// The queries of the new tokens and the keys/values every query may attend to, after
/// RoPE; all in projection layout [B, tokens, heads, width].
template <class T>
struct ProjectedTokens {
  Tensor<T, 4> q, k, v;
  TensorView<const T, 4> keys, values;  // k and v, or the cache after appending them
};

/// Projects rows [B·N, E] to q, k, v, rotates q and k at positions from the cache's
/// length on, and appends k and v to the cache when there is one. The cache must have
/// passed check_cache.
template <class T>
ProjectedTokens<T> project_tokens(const BlockShape& shape, RopeStyle rope, double rope_theta,
                                  TensorView<const T, 2> rows, index_t batch, index_t tokens,
                                  const Linear<T>& q_proj, const Linear<T>& k_proj,
                                  const Linear<T>& v_proj, KVCache<T>* cache) {
  ProjectedTokens<T> p;
  p.q = Tensor<T, 4>({batch, tokens, shape.query_heads, shape.head_dim});
  p.k = Tensor<T, 4>({batch, tokens, shape.key_heads, shape.head_dim});
  p.v = Tensor<T, 4>({batch, tokens, shape.value_heads, shape.value_dim});
  const index_t count = batch * tokens;
  apply_linear(rows, q_proj,
               p.q.view().template reshape<2>({count, shape.query_heads * shape.head_dim}));
  apply_linear(rows, k_proj,
               p.k.view().template reshape<2>({count, shape.key_heads * shape.head_dim}));
  apply_linear(rows, v_proj,
               p.v.view().template reshape<2>({count, shape.value_heads * shape.value_dim}));
  const index_t position = cache != nullptr ? cache->length() : 0;
  apply_rope(p.q.view(), position, rope, rope_theta);
  apply_rope(p.k.view(), position, rope, rope_theta);
  if (cache != nullptr) {
    cache->append(p.k.view(), p.v.view());
    p.keys = cache->keys();
    p.values = cache->values();
  } else {
    p.keys = p.k.view();
    p.values = p.v.view();
  }
  return p;
}

/// y [B, N, E] = heads [B, N, Hout, Dv] flattened to [B·N, Hout·Dv], times out_projᵀ.
template <class T>
Tensor<T, 3> project_output(TensorView<const T, 4> heads, const Linear<T>& out_proj,
                            index_t embed_dim) {
  const index_t batch = heads.extent(0), tokens = heads.extent(1);
  Tensor<T, 3> y({batch, tokens, embed_dim});
  apply_linear(heads.template reshape<2>({batch * tokens, heads.extent(2) * heads.extent(3)}),
               out_proj, y.view().template reshape<2>({batch * tokens, embed_dim}));
  return y;
}

template <class T>
Linear<T> load_linear(const SafeTensors& file, const std::string& name, index_t out_features,
                      index_t in_features) {
  Linear<T> layer;
  layer.weight = file.tensor<T, 2>(name + ".weight", {out_features, in_features});
  if (file.contains(name + ".bias")) layer.bias = file.tensor<T, 1>(name + ".bias", {out_features});
  return layer;
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

}  // namespace detail

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
  /// for a missing tensor or a wrong shape.
  static MultiHeadAttention from_safetensors(const AttentionConfig& config, const SafeTensors& file,
                                             const std::string& prefix = "") {
    const AttentionConfig c = detail::resolve_config(config);
    const detail::BlockShape s = detail::block_shape(c);
    AttentionWeights<T> w;
    detail::load_projections<T>(file, prefix, s, "out_proj", w);
    return MultiHeadAttention(c, std::move(w));
  }

  /// y = the block applied to x, each sequence on its own.
  /// x [B, N, E] (any strides) → y [B, N, E].
  Tensor<T, 3> forward(TensorView<const T, 3> x) const {
    return run("MultiHeadAttention::forward", x, nullptr);
  }

  /// Incremental decoding: x holds the next N tokens of every sequence; their keys and
  /// values are appended to `cache` and they attend to every cached token (causally
  /// among themselves when config().causal). Throws diffattn::shape_error, leaving the
  /// cache as it was, when the cache does not fit the block or lacks room.
  /// x [B, N, E] → y [B, N, E].
  Tensor<T, 3> forward(TensorView<const T, 3> x, KVCache<T>& cache) const {
    return run("MultiHeadAttention::forward(x, cache)", x, &cache);
  }

  /// An empty cache for `batch` sequences of up to `capacity` tokens.
  KVCache<T> make_cache(index_t batch, index_t capacity) const {
    return KVCache<T>(batch, capacity, shape_.key_heads, shape_.head_dim, shape_.value_heads,
                      shape_.value_dim);
  }

  /// The config with num_kv_heads and head_dim resolved.
  const AttentionConfig& config() const noexcept { return config_; }
  const AttentionWeights<T>& weights() const noexcept { return weights_; }

 private:
  Tensor<T, 3> run(const char* fn, TensorView<const T, 3> x, KVCache<T>* cache) const {
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
    softmax_attention<T>(bnhd_to_bhnd(p.q.view()), bnhd_to_bhnd(p.keys), bnhd_to_bhnd(p.values),
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
  /// diffattn::safetensors_error for a missing tensor or a wrong shape.
  static MultiHeadDiffAttention from_safetensors(const DiffAttentionConfig& config,
                                                 const SafeTensors& file,
                                                 const std::string& prefix = "") {
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

  /// y = the block applied to x, each sequence on its own.
  /// x [B, N, E] (any strides) → y [B, N, E].
  Tensor<T, 3> forward(TensorView<const T, 3> x) const {
    return run("MultiHeadDiffAttention::forward", x, nullptr);
  }

  /// Incremental decoding: x holds the next N tokens of every sequence; their keys and
  /// values are appended to `cache` and they attend to every cached token (causally
  /// among themselves when config().causal). Throws diffattn::shape_error, leaving the
  /// cache as it was, when the cache does not fit the block or lacks room.
  /// x [B, N, E] → y [B, N, E].
  Tensor<T, 3> forward(TensorView<const T, 3> x, KVCache<T>& cache) const {
    return run("MultiHeadDiffAttention::forward(x, cache)", x, &cache);
  }

  /// An empty cache for `batch` sequences of up to `capacity` tokens.
  KVCache<T> make_cache(index_t batch, index_t capacity) const {
    return KVCache<T>(batch, capacity, shape_.key_heads, shape_.head_dim, shape_.value_heads,
                      shape_.value_dim);
  }

  /// The config with num_kv_heads and head_dim resolved.
  const DiffAttentionConfig& config() const noexcept { return config_; }
  const DiffAttentionWeights<T>& weights() const noexcept { return weights_; }
  /// λ_init of the config's layer (0 in v2 mode, which does not use it).
  double lambda_init() const noexcept { return lambda_init_; }
  /// λ per head ([H], or [1] in reference mode); empty in v2 mode, where λ depends on x.
  TensorView<const T, 1> lambda() const noexcept { return lambda_.view(); }

 private:
  Tensor<T, 3> run(const char* fn, TensorView<const T, 3> x, KVCache<T>* cache) const {
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
      diff_attention<T>(q1, q2, keys, keys, values, lambda_bhn, bnhd_to_bhnd(heads.view()),
                        options);
    } else {
      const auto [k1, k2] = interleaved_pairs(p.keys);
      diff_attention<T>(q1, q2, k1, k2, values, lambda_.view(), bnhd_to_bhnd(heads.view()),
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

/// Deterministic random weights for a standard block, the same on every platform for a
/// given seed: nn.Linear's default uniform(±1/√fan_in), no biases. For tests and examples.
template <class T>
AttentionWeights<T> random_weights(const AttentionConfig& config, std::uint64_t seed) {
  const detail::BlockShape s = detail::block_shape(detail::resolve_config(config));
  detail::WeightGenerator generator(seed);
  AttentionWeights<T> w;
  generator.projections<T>(s, w);
  return w;
}

/// Deterministic random weights for a differential block in the config's λ mode, the
/// same on every platform for a given seed (λ vectors up to libm's last bit):
/// projections as nn.Linear's default uniform(±1/√fan_in) without biases, λ vectors
/// normal(0, 0.1) and subln.weight ones as the reference code initialises them. For
/// tests and examples.
template <class T>
DiffAttentionWeights<T> random_weights(const DiffAttentionConfig& config, std::uint64_t seed) {
  const DiffAttentionConfig c = detail::resolve_config(config);
  const detail::BlockShape s = detail::block_shape(c);
  detail::WeightGenerator generator(seed);
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

}  // namespace diffattn
