#pragma once
/// \file
/// Rotary position embedding (RoPE) applied in place to per-head query or key vectors.
///
/// Channel pairs (x_a, x_b) of a head are rotated by the angle p·θ^(−2i/d), where p is the
/// token's position, d the head width and i < d/2 the pair's index:
///   x_a' = x_a·cos − x_b·sin,   x_b' = x_a·sin + x_b·cos.
/// The two styles differ only in which channels form pair i:
/// - interleaved (GPT-J; flash_attn's apply_rotary_emb(interleaved=True), used by the
///   Differential Transformer reference code): (x[2i], x[2i+1]);
/// - half (GPT-NeoX, Llama, Hugging Face's rotate_half): (x[i], x[i + d/2]).

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "diffattn/errors.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

/// Which channels RoPE rotates together; `none` leaves the vectors unchanged.
enum class RopeStyle { none, interleaved, half };

/// The style's name as the command-line tools spell it: "none", "interleaved", "half".
constexpr const char* rope_style_name(RopeStyle style) noexcept {
  switch (style) {
    case RopeStyle::interleaved: return "interleaved";
    case RopeStyle::half: return "half";
    case RopeStyle::none: break;
  }
  return "none";
}

namespace detail {

inline void check_rope_arguments(const char* fn, index_t head_dim, index_t tokens, index_t position_offset,
                                 RopeStyle style, double theta) {
  if (style != RopeStyle::none && head_dim % 2 != 0) {
    throw_shape_error(fn, ": 'x' dimension 3 (d): expected an even head width, got ", head_dim);
  }
  // The last token's position, position_offset + N − 1, must fit index_t too.
  if (position_offset < 0 || (tokens > 0 && position_offset > std::numeric_limits<index_t>::max() - (tokens - 1))) {
    throw std::invalid_argument(concat("diffattn: ", fn, ": position_offset must be >= 0 and leave room for the ",
                                       tokens, " tokens' positions in std::ptrdiff_t, got ", position_offset));
  }
  if (!(std::isfinite(theta) && theta > 0)) {
    throw std::invalid_argument(
        concat("diffattn: ", fn, ": theta must be finite and > 0, got ", theta));
  }
  // Angles position·θ^(−2i/d) must be finite: a θ far below 1 (4.9e-324, say) makes the
  // inverse frequencies, and so cos and sin, overflow to inf and NaN.
  if (style != RopeStyle::none && head_dim >= 2 && tokens > 0) {
    const double exponent = -2.0 * static_cast<double>(head_dim / 2 - 1) / static_cast<double>(head_dim);
    const double largest_frequency = std::max(1.0, std::pow(theta, exponent));
    const double last_position = static_cast<double>(position_offset) + static_cast<double>(tokens - 1);
    if (!std::isfinite(largest_frequency * last_position)) {
      throw std::invalid_argument(concat("diffattn: ", fn, ": theta ", theta, " at position ", last_position,
                                         " gives a rotation angle that is not finite"));
    }
  }
}

}  // namespace detail

/// Rotates x in place; token n of x sits at position `position_offset` + n (the number
/// of tokens already in a KV cache when decoding). Angles, cos/sin and the rotation are
/// computed in double and rounded once, so float results are within half an ulp of the
/// exact rotation of the stored inputs. θ is the base (10000 in most models).
/// Throws diffattn::shape_error for an odd d (unless style is none) and
/// std::invalid_argument for a negative offset or a θ that is not finite and > 0.
/// x [B, N, H, d] with d even; any strides.
template <class T>
void apply_rope(TensorView<T, 4> x, index_t position_offset, RopeStyle style,
                double theta = 10000) {
  static_assert(!std::is_const_v<T>, "apply_rope rotates x in place");
  const index_t batch = x.extent(0), tokens = x.extent(1), heads = x.extent(2),
                head_dim = x.extent(3);
  detail::check_rope_arguments("apply_rope", head_dim, tokens, position_offset, style, theta);
  if (style == RopeStyle::none || x.empty()) return;

  // One cos/sin table [N, d/2] serves every batch row and head.
  const index_t pairs = head_dim / 2;
  std::vector<double> cos_table(static_cast<std::size_t>(tokens * pairs));
  std::vector<double> sin_table(cos_table.size());
  for (index_t i = 0; i < pairs; ++i) {
    const double inverse_frequency =
        std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    for (index_t n = 0; n < tokens; ++n) {
      const double angle = static_cast<double>(position_offset + n) * inverse_frequency;
      cos_table[static_cast<std::size_t>(n * pairs + i)] = std::cos(angle);
      sin_table[static_cast<std::size_t>(n * pairs + i)] = std::sin(angle);
    }
  }

  // Interleaved pairs are neighbours; half-rotation pairs are d/2 apart.
  const index_t second_offset = style == RopeStyle::interleaved ? 1 : pairs;
  const index_t pair_step = style == RopeStyle::interleaved ? 2 : 1;
  for (index_t b = 0; b < batch; ++b) {
    for (index_t n = 0; n < tokens; ++n) {
      const double* cos_row = cos_table.data() + n * pairs;
      const double* sin_row = sin_table.data() + n * pairs;
      for (index_t h = 0; h < heads; ++h) {
        for (index_t i = 0; i < pairs; ++i) {
          T& first = x(b, n, h, i * pair_step);
          T& second = x(b, n, h, i * pair_step + second_offset);
          const double xa = static_cast<double>(first), xb = static_cast<double>(second);
          first = static_cast<T>(xa * cos_row[i] - xb * sin_row[i]);
          second = static_cast<T>(xa * sin_row[i] + xb * cos_row[i]);
        }
      }
    }
  }
}

}  // namespace diffattn
