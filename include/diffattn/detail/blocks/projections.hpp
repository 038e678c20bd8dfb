#pragma once
/// The blocks' dense steps: token rows through nn.Linear layers with Eigen GEMMs, RoPE,
/// the KV cache's append, and the output projection.

#include <array>
#include <type_traits>

#include <Eigen/Core>

#include "diffattn/block_weights.hpp"
#include "diffattn/detail/blocks/shape.hpp"
#include "diffattn/errors.hpp"
#include "diffattn/half.hpp"
#include "diffattn/kv_cache.hpp"
#include "diffattn/rope.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn::detail {

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

/// The caches a block of T decodes from: KVCache<T>, and for a float block also bf16 or
/// f16, which the cache's converting append fills from the block's float rows.
template <class T, class Cache>
constexpr void check_cache_type() {
  static_assert(std::is_same_v<Cache, T> || (std::is_same_v<T, float> && is_half_v<Cache>),
                "diffattn: a block's KV cache holds the block's T, or bf16 or f16 for a float block");
}

template <class Cache>
void check_cache(const char* fn, const KVCache<Cache>& cache, const BlockShape& shape, index_t batch,
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
/// RoPE; all in projection layout [B, tokens, heads, width]. keys and values are of the
/// cache's element type C (T without a cache).
template <class T, class C>
struct ProjectedTokens {
  Tensor<T, 4> q, k, v;
  TensorView<const C, 4> keys, values;  // k and v, or the cache after appending them
};

/// Projects rows [B·N, E] to q, k, v, rotates q and k at positions from the cache's
/// length on, and appends k and v to the cache when there is one (a bf16 or f16 cache
/// rounds them as it stores them). The cache must have passed check_cache; pass a null
/// KVCache<T>* for none.
template <class T, class C>
ProjectedTokens<T, C> project_tokens(const BlockShape& shape, RopeStyle rope, double rope_theta,
                                     TensorView<const T, 2> rows, index_t batch, index_t tokens,
                                     const Linear<T>& q_proj, const Linear<T>& k_proj,
                                     const Linear<T>& v_proj, KVCache<C>* cache) {
  check_cache_type<T, C>();
  ProjectedTokens<T, C> p;
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
  } else if constexpr (std::is_same_v<C, T>) {
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

}  // namespace diffattn::detail
