#pragma once
/// \file
/// KVCache: the keys and values of the tokens a decoder has already seen, so that each
/// new token projects only itself and attends to all of them.

#include <array>
#include <stdexcept>
#include <type_traits>

#include "diffattn/errors.hpp"
#include "diffattn/half.hpp"
#include "diffattn/layouts.hpp"
#include "diffattn/tensor.hpp"
#include "diffattn/detail/validation.hpp"

namespace diffattn {

/// Fixed-capacity storage for post-RoPE keys and values of `batch` sequences that
/// advance together. keys() and values() are views in the projection layout
/// [B, length, heads, width] — the layout a block's projections produce — so the blocks
/// read the cached tokens through the same views as a fresh projection. The number of
/// tokens stored is also the position of the next token (its RoPE offset).
///
/// The storage itself is head-major, [B, heads, capacity, width]: each head's rows lie
/// one after another, which is how decoding reads them, from memory. In the projection
/// layout a head's consecutive rows are heads × width apart (4 KB at 8 heads of 128
/// floats), and the hardware prefetchers do not follow such a stride; decoding read the
/// cache at less than half the bandwidth (docs/tuning.md, "KVCache (head-major storage)").
template <class T>
class KVCache {
 public:
  /// A cache with capacity 0.
  KVCache() = default;

  /// An empty cache for up to `capacity` tokens per sequence: keys [B, capacity,
  /// key_heads, key_dim], values [B, capacity, value_heads, value_dim]. Throws
  /// std::invalid_argument for a negative extent.
  KVCache(index_t batch, index_t capacity, index_t key_heads, index_t key_dim, index_t value_heads,
          index_t value_dim)
      // Both shapes are checked before either is allocated.
      : keys_(head_major(checked_shape({batch, capacity, key_heads, key_dim}, key_names,
                                       checked_shape({batch, capacity, value_heads, value_dim}, value_names)))),
        values_(head_major(checked_shape({batch, capacity, value_heads, value_dim}, value_names))) {}

  /// B: sequences in the batch.
  index_t batch() const noexcept { return keys_.extent(0); }
  /// Tokens each sequence can hold.
  index_t capacity() const noexcept { return keys_.extent(2); }
  /// Hkv of the keys.
  index_t key_heads() const noexcept { return keys_.extent(1); }
  /// D: width of a key row.
  index_t key_dim() const noexcept { return keys_.extent(3); }
  /// Heads of the values.
  index_t value_heads() const noexcept { return values_.extent(1); }
  /// Dv: width of a value row.
  index_t value_dim() const noexcept { return values_.extent(3); }

  /// Tokens stored per sequence; the position the next appended token gets.
  index_t length() const noexcept { return length_; }
  /// Tokens that still fit.
  index_t remaining() const noexcept { return capacity() - length_; }

  /// The cached keys [B, length, key_heads, key_dim] (bnhd_to_bhnd gives kernel layout).
  TensorView<const T, 4> keys() const { return stored_keys().slice(1, 0, length_); }
  /// The cached values [B, length, value_heads, value_dim].
  TensorView<const T, 4> values() const { return stored_values().slice(1, 0, length_); }

  /// Appends n tokens to every sequence: keys [B, n, key_heads, key_dim], values
  /// [B, n, value_heads, value_dim]; any strides. Throws diffattn::shape_error, and
  /// appends nothing, when the shapes do not fit or the cache has no room for n tokens.
  void append(TensorView<const T, 4> keys, TensorView<const T, 4> values) { append_rows(keys, values); }
  /// append() from float rows, for a cache of another element type (bf16, f16, double):
  /// each element is converted as diffattn::convert does (to nearest, ties to even).
  template <class U = T, std::enable_if_t<!std::is_same_v<U, float>, int> = 0>
  void append(TensorView<const float, 4> keys, TensorView<const float, 4> values) {
    append_rows(keys, values);
  }

  /// Forgets every token; the storage is kept for the next sequence.
  void clear() noexcept { length_ = 0; }

 private:
  static constexpr const char* key_names[4] = {"batch", "capacity", "key_heads", "key_dim"};
  static constexpr const char* value_names[4] = {"batch", "capacity", "value_heads", "value_dim"};

  /// `shape` after the checks its storage's allocation would make (negative extents,
  /// element count overflow), so that the constructor checks both shapes before it
  /// allocates either.
  static std::array<index_t, 4> checked_shape(const std::array<index_t, 4>& shape, const char* const* names,
                                              const std::array<index_t, 4>& /*checked_already*/ = {}) {
    for (std::size_t d = 0; d < 4; ++d) {
      if (shape[d] < 0) {
        throw std::invalid_argument(
            detail::concat("diffattn: KVCache: ", names[d], " must be >= 0, got ", shape[d]));
      }
    }
    detail::checked_element_count(shape);
    return shape;
  }
  /// [B, N, H, D] → the storage shape [B, H, N, D].
  static std::array<index_t, 4> head_major(const std::array<index_t, 4>& shape) {
    return {shape[0], shape[2], shape[1], shape[3]};
  }
  /// The whole capacity in the projection layout [B, capacity, heads, width].
  TensorView<const T, 4> stored_keys() const { return bhnd_to_bnhd(keys_.view()); }
  TensorView<const T, 4> stored_values() const { return bhnd_to_bnhd(values_.view()); }

  void check_append(const std::array<index_t, 4>& key_shape,
                    const std::array<index_t, 4>& value_shape) const {
    constexpr const char* fn = "KVCache::append";
    static constexpr const char* names[4] = {"B", "n", "heads", "width"};
    for (std::size_t d : {0, 2, 3}) {
      detail::check_extent(fn, "keys", d, names[d], stored_keys().extent(d), key_shape[d]);
      detail::check_extent(fn, "values", d, names[d], stored_values().extent(d), value_shape[d]);
    }
    detail::check_extent(fn, "values", 1, "n", key_shape[1], value_shape[1]);
    if (key_shape[1] > remaining()) {
      detail::throw_shape_error(fn, ": 'keys' dimension 1 (n): the cache holds ", length_, " of ",
                                capacity(), " tokens, so at most ", remaining(), " more fit, got ",
                                key_shape[1]);
    }
  }

  template <class U>
  void append_rows(TensorView<const U, 4> keys, TensorView<const U, 4> values) {
    constexpr const char* fn = "KVCache::append";
    check_append(keys.shape(), values.shape());
    detail::check_no_alias(fn, "cache", keys_.view(), "keys", keys);
    detail::check_no_alias(fn, "cache", values_.view(), "values", values);
    const index_t added = keys.extent(1);
    copy_rows(keys, bhnd_to_bnhd(keys_.view()).slice(1, length_, length_ + added));
    copy_rows(values, bhnd_to_bnhd(values_.view()).slice(1, length_, length_ + added));
    length_ += added;
  }
  /// [B, n, H, D] into [B, n, H, D]; heads outermost, so the writes go row after row.
  template <class U>
  static void copy_rows(TensorView<const U, 4> from, TensorView<T, 4> to) {
    if (from.empty()) return;  // its other extents may be huge (heads of width 0)
    for (index_t b = 0; b < from.extent(0); ++b) {
      for (index_t h = 0; h < from.extent(2); ++h) {
        for (index_t n = 0; n < from.extent(1); ++n) {
          for (index_t c = 0; c < from.extent(3); ++c) to(b, n, h, c) = detail::convert_element<T>(from(b, n, h, c));
        }
      }
    }
  }

  Tensor<T, 4> keys_;    // [B, key_heads, capacity, key_dim]
  Tensor<T, 4> values_;  // [B, value_heads, capacity, value_dim]
  index_t length_ = 0;
};

}  // namespace diffattn
