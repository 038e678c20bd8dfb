#pragma once
/// The micro-kernels' blocking: register blocks, panel widths and chunk lengths, chosen
/// from the batch width. The measurements behind each constant are in docs/tuning.md.
///
/// Each kernel keeps an MR × NR block of accumulators in registers and streams the shared
/// dimension through it: per step, NR vector loads and MR broadcasts feed MR·NR
/// independent FMAs. Two FMA pipes with 4-cycle latency want >= 8 FMAs in flight, and
/// MR·NR + NR + 1 must fit the register file (32 vector registers with AVX-512, 16 with
/// AVX2/SSE).

#include <cstddef>

#include "diffattn/detail/simd.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {
namespace detail {

/// Blocking chosen from the batch width: 512-bit registers come 32 to a file.
template <class T>
struct micro_blocking {
  using batch = native_batch<T>;
  static constexpr index_t lanes = static_cast<index_t>(batch::size);
  static constexpr bool wide_file = lanes * sizeof(T) >= 64;
  /// Sᵀ = K·Qᵀ: keys per block × vectors of query rows. AVX2 keeps 4 × 2: 6 × 2 was no
  /// faster (docs/tuning.md, "micro_blocking::score_keys").
  static constexpr int score_keys = wide_file ? 6 : 4;
  static constexpr int score_vectors = wide_file ? 4 : 2;
  /// Keys per block when a row block has only `vectors` vectors (tiles of fewer rows):
  /// as many as the register file holds, so each loaded Qᵀ vector still feeds >= 12 FMAs.
  static constexpr int score_keys_for(int vectors) {
    return vectors >= score_vectors ? score_keys : wide_file && vectors == 2 ? 12 : score_keys;
  }
  /// O += P·V: query rows per block × vectors of the value width. Six rows make 12 FMA
  /// chains with AVX2 and 10 loads per 24 FMAs with AVX-512 (docs/tuning.md,
  /// "micro_blocking::value_rows").
  static constexpr int value_rows = 6;
  static constexpr int value_vectors = wide_file ? 4 : 2;
  /// Query rows in a tile come in multiples of this: whole batches for score_tile, and at
  /// least 4 so that narrow batches still fill a value block.
  static constexpr index_t row_align = lanes > 4 ? lanes : 4;
};

/// Bytes of each K row that score_tile streams through all row blocks at a time: a
/// 64-key panel (16 KB) stays in L1 while every row block re-reads it (docs/tuning.md,
/// "score_panel_bytes and value_panel_bytes").
inline constexpr std::size_t score_panel_bytes = 256;

/// Bytes of each V row that value_tile streams through all row blocks at a time, for the
/// same reason.
inline constexpr std::size_t value_panel_bytes = 256;

/// Keys summed into one fresh accumulator before it is added to o (see RowScales): the
/// rounding error of a row then grows per 64-key chunk, not per key.
inline constexpr index_t value_chunk_keys = 64;

/// Bytes of each V row that value_rows_by_key sums per pass: whole rows up to 256 floats.
inline constexpr std::size_t value_by_key_panel_bytes = 1024;

/// Tiles of at most this many rows (decoding: a few query rows against a long cache)
/// take value_few_rows, which reads whole V rows in address order.
inline constexpr index_t value_few_rows_max = 4;

}  // namespace detail
}  // namespace diffattn
