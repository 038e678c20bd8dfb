#pragma once
/// Tiles whose q and k/v are all bf16 on CPUs with AVX512_BF16 (FusedPlan::bf16_products)
/// take both tile products on bf16 pairs (simd/avx512_bf16.hpp): Q packed as depth pairs,
/// K rows read in place, and per key tile V packed as key pairs and the weights P rounded
/// to bf16 key pairs. Q is packed unscaled and the score kernel multiplies its fp32 sums
/// by scale·log2 e: rounding a scaled Q to bf16 would add an error to every logit.

#include <cstdint>
#include <type_traits>

#include "diffattn/detail/fused/tile.hpp"
#include "diffattn/detail/simd/avx512_bf16.hpp"
#include "diffattn/half.hpp"

namespace diffattn {
namespace detail {

/// Packs V rows of keys [first, first + count) of kv head `kv_head` as key pairs into vp.
template <class T>
void pack_value_rows(const FusedCall<T>& call, index_t batch, index_t kv_head, index_t first, index_t count,
                     std::uint32_t* vp) {
  call.args.v.visit([&](const auto& v) {
    if constexpr (bf16_dot_for<T> && std::is_same_v<typename std::decay_t<decltype(v)>::value_type, bf16>) {
      pack_value_pairs(&v(batch, kv_head, first, 0), v.stride(2), count, call.problem().value_dim,
                       call.sizes.dv_pad, vp);
    }
  });
}

/// The V rows of keys [first, first + count) (first even) as key pairs: from the call's
/// shared copy, or packed into the workspace now.
template <class T>
const std::uint32_t* value_pairs(const TileContext<T>& c, index_t first, index_t count) {
  const index_t dv_pad = c.call.sizes.dv_pad;
  if (c.call.value_pairs != nullptr) {
    const index_t head_rows = (c.problem().kv_len + 1) / 2;
    return c.call.value_pairs + ((c.tile.batch * c.problem().kv_heads + c.tile.kv_head) * head_rows + first / 2) * dv_pad;
  }
  std::uint32_t* vp = pair_storage(c.ws.values.data());
  pack_value_rows(c.call, c.tile.batch, c.tile.kv_head, first, count, vp);
  return vp;
}

/// o = o·keep + (P·V)·add (value_tile's RowScales; null keep/add stand for 1) with
/// P [count keys, rows_pad] as a tile keeps Sᵀ, rounded to bf16 key pairs, against V pairs.
template <class T>
void value_pair_tile(const TileContext<T>& c, const T* pt, index_t count, const std::uint32_t* vp, T* o,
                     const T* keep, const T* add) {
  const index_t rows_pad = c.rows_pad(), dv_pad = c.call.sizes.dv_pad;
  std::uint32_t* pp = pair_storage(c.ws.pairs.data());
  pack_weight_pairs(pt, rows_pad, count, rows_pad, pp);
  value_tile_bf16(pp, rows_pad, c.rows(), count, vp, dv_pad, dv_pad, o, dv_pad, keep, add);
}

}  // namespace detail
}  // namespace diffattn
