#pragma once
/// The online softmax over key tiles (scores in base 2: Q is pre-scaled by log2 e): per
/// row the running max m and sum l, the exponentials 2^(s − m) in place, and the scales
/// that fold a key tile's P·V into the normalized running output (FlashState, RowScales).

#include <algorithm>
#include <cmath>
#include <limits>

#include "diffattn/detail/fused/plan.hpp"
#include "diffattn/detail/fused/tile.hpp"
#include "diffattn/detail/kernels/blocking.hpp"
#include "diffattn/detail/simd.hpp"

DIFFATTN_SIMD_WARNINGS_PUSH

namespace diffattn {
namespace detail {

/// Lane-wise max over keys of st [count, rows_pad], for one vector of rows at `offset`.
/// NaN scores are skipped here; they reach the output through exp2.
template <class T>
native_batch<T> column_max(const T* st, index_t rows_pad, index_t count, index_t offset) {
  using B = native_batch<T>;
  B best(-std::numeric_limits<T>::infinity());
  for (index_t j = 0; j < count; ++j) best = simd_max(B::load_unaligned(st + j * rows_pad + offset), best);
  return best;
}

/// st[j][lanes] = 2^(st[j][lanes] − shift) in place for one vector of rows; returns the
/// lane-wise sums. Two accumulators halve the add chain, in a fixed order, and each block
/// of value_chunk_keys keys is summed afresh before it joins the total, so that no chain
/// grows with the tile (decoding tiles hold 512 keys).
template <class T>
native_batch<T> exp2_columns(T* st, index_t rows_pad, index_t count, index_t offset,
                             native_batch<T> shift) {
  using B = native_batch<T>;
  B total(T(0));
  for (index_t block = 0; block < count; block += value_chunk_keys) {
    const index_t end = std::min(count, block + value_chunk_keys);
    B sum0(T(0)), sum1(T(0));
    index_t j = block;
    for (; j + 2 <= end; j += 2) {
      T* p0 = st + j * rows_pad + offset;
      T* p1 = p0 + rows_pad;
      const B e0 = exp2_nonpositive(B::load_unaligned(p0) - shift);
      const B e1 = exp2_nonpositive(B::load_unaligned(p1) - shift);
      e0.store_unaligned(p0);
      e1.store_unaligned(p1);
      sum0 = sum0 + e0;
      sum1 = sum1 + e1;
    }
    if (j < end) {
      T* p0 = st + j * rows_pad + offset;
      const B e0 = exp2_nonpositive(B::load_unaligned(p0) - shift);
      e0.store_unaligned(p0);
      sum0 = sum0 + e0;
    }
    total = total + (sum0 + sum1);
  }
  return total;
}

/// Subtracting the max lane by lane; 0 where a row has seen no key (max −inf), so that
/// its −inf scores give 2^−inf = 0 rather than NaN.
template <class T>
native_batch<T> safe_shift(native_batch<T> row_max) {
  return simd_replace_equal(row_max, -std::numeric_limits<T>::infinity(), T(0));
}

/// Starts a flash state: no key seen, nothing accumulated.
template <class T>
void flash_reset(FlashState<T> st, index_t rows_pad, index_t dv_pad) {
  std::fill(st.m, st.m + rows_pad, -std::numeric_limits<T>::infinity());
  std::fill(st.l, st.l + rows_pad, T(0));
  std::fill(st.acc, st.acc + rows_pad * dv_pad, T(0));
}

/// Turns a key tile's scores into 2^(s − m) in place against the running row max m,
/// updates (m, l) and leaves each row's rescale factor 2^(m_old − m_new) in `rescale`.
template <class T>
void online_softmax_tile(T* m, T* l, T* st, index_t rows_pad, index_t count, T* rescale) {
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  for (index_t offset = 0; offset < rows_pad; offset += lanes) {
    const B m_old = B::load_unaligned(m + offset);
    const B m_new = simd_max(column_max(st, rows_pad, count, offset), m_old);
    const B shift = safe_shift<T>(m_new);
    const B sum = exp2_columns(st, rows_pad, count, offset, shift);
    const B alpha = exp2_nonpositive(m_old - shift);
    simd_fma(B::load_unaligned(l + offset), alpha, sum).store_unaligned(l + offset);
    m_new.store_unaligned(m + offset);
    alpha.store_unaligned(rescale + offset);
  }
}

/// online_softmax_tile for scores kept as S (ScoreLayout::by_row): the `rows` real rows at
/// `row_stride`, each padded with −inf to whole batches of keys. Rows from `rows` to
/// rows_pad are padding: their m stays −inf, their l 0 and their rescale factor is 0.
template <class T>
void online_softmax_rows(T* m, T* l, T* st, index_t row_stride, index_t rows, index_t rows_pad, index_t count,
                         T* rescale) {
  using B = native_batch<T>;
  constexpr index_t lanes = micro_blocking<T>::lanes;
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  const index_t padded = round_up(count, lanes);
  // Each row's max (NaN skipped, as column_max does), then the statistics lane-wise over
  // rows as online_softmax_tile has them; `rescale` holds the row maxes in between.
  for (index_t r = 0; r < rows_pad; ++r) {
    B best(minus_inf);
    if (r < rows) {
      for (index_t j = 0; j < padded; j += lanes) best = simd_max(B::load_unaligned(st + r * row_stride + j), best);
    }
    rescale[r] = simd_hmax(best);
  }
  for (index_t offset = 0; offset < rows_pad; offset += lanes) {
    const B m_old = B::load_unaligned(m + offset);
    const B m_new = simd_max(B::load_unaligned(rescale + offset), m_old);
    m_new.store_unaligned(m + offset);
    exp2_nonpositive(m_old - safe_shift<T>(m_new)).store_unaligned(rescale + offset);
  }
  for (index_t r = 0; r < rows; ++r) {
    const B shift(m[r] == minus_inf ? T(0) : m[r]);
    T* row = st + r * row_stride;
    B sum0(T(0)), sum1(T(0));  // two chains, in a fixed order
    index_t j = 0;
    for (; j + 2 * lanes <= padded; j += 2 * lanes) {
      const B e0 = exp2_nonpositive(B::load_unaligned(row + j) - shift);
      const B e1 = exp2_nonpositive(B::load_unaligned(row + j + lanes) - shift);
      e0.store_unaligned(row + j);
      e1.store_unaligned(row + j + lanes);
      sum0 = sum0 + e0;
      sum1 = sum1 + e1;
    }
    if (j < padded) {
      const B e0 = exp2_nonpositive(B::load_unaligned(row + j) - shift);
      e0.store_unaligned(row + j);
      sum0 = sum0 + e0;
    }
    l[r] = std::fma(l[r], rescale[r], simd_sum(sum0 + sum1));
  }
}

/// Turns a key tile's scores into P = 2^(s − m) in place, updates (m, l), and sets the
/// tile's RowScales: acc = acc·keep + (P·V)·add with keep = 2^(m_old − m)·l_old/l and
/// add = 1/l (both 0 while a row has seen no key).
template <class T>
void flash_softmax_update(FlashState<T> state, T* st, ScoreLayout layout, index_t rows, index_t rows_pad,
                          index_t count, T* rescale) {
  using B = native_batch<T>;
  std::copy(state.l, state.l + rows_pad, state.keep);  // l before the tile
  if (layout.by_row) {
    online_softmax_rows(state.m, state.l, st, layout.stride, rows, rows_pad, count, rescale);
  } else {
    online_softmax_tile(state.m, state.l, st, rows_pad, count, rescale);
  }
  for (index_t offset = 0; offset < rows_pad; offset += micro_blocking<T>::lanes) {
    const B l = B::load_unaligned(state.l + offset);
    const B kept = B::load_unaligned(rescale + offset) * B::load_unaligned(state.keep + offset);
    simd_ratio_or_zero(kept, l).store_unaligned(state.keep + offset);
    simd_ratio_or_zero(B(T(1)), l).store_unaligned(state.add + offset);
  }
}

}  // namespace detail
}  // namespace diffattn

DIFFATTN_SIMD_WARNINGS_POP
