#pragma once
/// Method::flash: a query tile streams its visible keys through an online softmax, one
/// key tile at a time: Sᵀ = K·Qᵀ (Q pre-scaled by scale·log2 e, so exp becomes exp2),
/// the running row max m and sum l, and O = O·keep + (P·V)·add with O kept normalized.
/// No Nq×Nk matrix exists. FLOPs: 2·Nq·Nk·(D + Dv). Differential attention here
/// ("streaming") keeps two states and runs two P·V products on the shared V tile.
/// The key-tile steps are shared with the split decoding items (decode.hpp).

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "diffattn/detail/fused/bf16_products.hpp"
#include "diffattn/detail/fused/online_softmax.hpp"
#include "diffattn/detail/fused/scores.hpp"
#include "diffattn/detail/fused/tile.hpp"
#include "diffattn/detail/kernels/value_tile.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

/// Keys [j0, j0 + count) through one or (diff) two online softmax states, with the
/// tile's queries packed at qt1 (and qt2): scores into st1 (and st2), turned into P with
/// (m, l) and the RowScales updated. key_tile_values finishes it. When k2 is k1 (the
/// "V2" form), map 2 re-reads the K tile map 1 just brought into L1/L2, so memory sees
/// it once.
template <class T>
void key_tile_scores(const TileContext<T>& c, const T* qt1, const T* qt2, T* st1, T* st2, index_t j0,
                     index_t count, FlashState<T> first_state, const FlashState<T>* second_state) {
  T* rescale = c.stats().rescale;
  const ScoreLayout layout = c.call.layout;
  const index_t rows = c.rows();
  score_keys(c, c.args().k1, qt1, j0, count, st1);
  flash_softmax_update(first_state, st1, layout, rows, c.rows_pad(), count, rescale);
  if (second_state != nullptr) {
    score_keys(c, c.args().k2, qt2, j0, count, st2);
    flash_softmax_update(*second_state, st2, layout, rows, c.rows_pad(), count, rescale);
  }
}

/// O = O·keep + (P·V)·add for the key tile key_tile_scores left in st1 (and st2); both
/// maps share the V tile. Only the real rows: a decoding tile has a few rows in a
/// rows_pad of a whole batch.
template <class T>
void key_tile_values(const TileContext<T>& c, const T* st1, const T* st2, index_t j0, index_t count,
                     FlashState<T> first_state, const FlashState<T>* second_state) {
  const index_t rows = c.rows();
  const index_t dv_pad = c.call.sizes.dv_pad;
  const ScoreLayout layout = c.call.layout;
  if constexpr (bf16_dot_for<T>) {
    if (c.plan().bf16_products) {  // Sᵀ, key_stride = rows_pad
      const std::uint32_t* vp = value_pairs(c, j0, count);
      value_pair_tile(c, st1, count, vp, first_state.acc, first_state.keep, first_state.add);
      if (second_state != nullptr) {
        value_pair_tile(c, st2, count, vp, second_state->acc, second_state->keep, second_state->add);
      }
      return;
    }
    if (c.plan().bf16_dot_scores && layout.by_row && rows <= value_few_rows_max && !c.plan().pack_values) {
      // Decoding: V rows paired in registers, P rounded to bf16 (as bf16_products does).
      c.args().v.visit([&](const auto& v) {
        if constexpr (std::is_same_v<typename std::decay_t<decltype(v)>::value_type, bf16>) {
          const bf16* rows_v = &v(c.tile.batch, c.tile.kv_head, j0, 0);
          value_rows_bf16(st1, layout.stride, rows, count, rows_v, v.stride(2), dv_pad, first_state.acc, dv_pad,
                          first_state.keep, first_state.add);
          if (second_state != nullptr) {
            value_rows_bf16(st2, layout.stride, rows, count, rows_v, v.stride(2), dv_pad, second_state->acc, dv_pad,
                            second_state->keep, second_state->add);
          }
        }
      });
      return;
    }
  }
  with_value_rows(c, j0, count, [&](const auto* v, index_t v_stride) {
    value_tile(st1, layout.key_stride(), layout.row_stride(), rows, count, v, v_stride, dv_pad, first_state.acc,
               dv_pad, RowScales<T>{first_state.keep, first_state.add});
    if (second_state != nullptr) {
      value_tile(st2, layout.key_stride(), layout.row_stride(), rows, count, v, v_stride, dv_pad, second_state->acc,
                 dv_pad, RowScales<T>{second_state->keep, second_state->add});
    }
  });
}

/// Streams keys [key_begin, key_end) through the tile's state(s), plan.stream_tile keys
/// at a time.
template <class T>
void flash_stream(const TileContext<T>& c, index_t key_begin, index_t key_end, FlashState<T> first_state,
                  const FlashState<T>* second_state) {
  const index_t tile_keys = c.plan().stream_tile;
  ThreadWorkspace<T>& ws = c.ws;
  for (index_t j0 = key_begin; j0 < key_end; j0 += tile_keys) {
    const index_t count = std::min(tile_keys, key_end - j0);
    key_tile_scores(c, ws.qt1.data(), ws.qt2.data(), ws.st1.data(), ws.st2.data(), j0, count, first_state,
                    second_state);
    key_tile_values(c, ws.st1.data(), ws.st2.data(), j0, count, first_state, second_state);
  }
}

/// Writes the tile's outputs: acc1 (standard) or acc1 − λ·acc2 (diff, streaming), the
/// accumulators already normalized. A map whose row saw no key (l = 0) contributes zero,
/// whatever λ is; a NaN l, NaN.
template <class T>
void write_flash_output(const TileContext<T>& c, FlashState<T> first, const FlashState<T>* second) {
  const FusedArgs<T>& a = c.args();
  const QueryTile& tile = c.tile;
  const index_t dv_pad = c.call.sizes.dv_pad;
  for (index_t r = 0; r < c.rows(); ++r) {
    const T* acc1 = first.acc + r * dv_pad;
    if (second == nullptr) {
      write_output_row(c, r, acc1, static_cast<const T*>(nullptr), T(0));
      continue;
    }
    const T lambda = second->l[r] == T(0) ? T(0) : a.lambda(tile.batch, tile.head(a.problem, r), tile.position(r));
    write_output_row(c, r, acc1, second->acc + r * dv_pad, lambda);
  }
}

/// A Method::flash item: the whole tile, every visible key, then its output.
template <class T>
void flash_tile(const TileContext<T>& c) {
  const TileStats<T> stats = c.stats();
  const bool diff = c.args().diff;
  const index_t dv_pad = c.call.sizes.dv_pad;
  const FlashState<T> first = stats.flash_state(0, c.ws.acc1.data());
  const FlashState<T> second = stats.flash_state(1, c.ws.acc2.data());
  flash_reset(first, c.rows_pad(), dv_pad);
  if (diff) flash_reset(second, c.rows_pad(), dv_pad);
  flash_stream(c, 0, c.problem().key_limit(c.tile.last - 1), first, diff ? &second : nullptr);
  write_flash_output(c, first, diff ? &second : nullptr);
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
