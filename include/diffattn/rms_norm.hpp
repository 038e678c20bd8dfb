#pragma once
/// \file
/// RMSNorm (Zhang & Sennrich, 2019): each row divided by its root mean square, then
/// scaled channel-wise by a learned weight. The Differential Transformer normalises each
/// head's output with it (the reference code's `subln`, eps 1e-5).

#include <cmath>
#include <stdexcept>

#include "diffattn/errors.hpp"
#include "diffattn/tensor.hpp"
#include "diffattn/detail/validation.hpp"

namespace diffattn {

/// out[r, c] = x[r, c] / sqrt(mean_c(x[r, c]²) + eps) · weight[c], as PyTorch's
/// `x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight`. The mean of
/// squares is accumulated in double. `out` may be `x` itself (in place); otherwise the
/// two must not share memory. eps must be finite and >= 0.
/// x [R, D], weight [D], out [R, D]; any strides.
template <class T>
void rms_norm(detail::identity_t<TensorView<const T, 2>> x,
              detail::identity_t<TensorView<const T, 1>> weight, double eps, TensorView<T, 2> out) {
  constexpr const char* fn = "rms_norm";
  const index_t rows = x.extent(0), width = x.extent(1);
  detail::check_extent(fn, "weight", 0, "D", width, weight.extent(0));
  detail::check_extent(fn, "out", 0, "R", rows, out.extent(0));
  detail::check_extent(fn, "out", 1, "D", width, out.extent(1));
  if (!(std::isfinite(eps) && eps >= 0)) {
    throw std::invalid_argument(
        detail::concat("diffattn: ", fn, ": eps must be finite and >= 0, got ", eps));
  }
  detail::check_output(fn, "out", out);
  // In place is safe: a row is read in full (for its mean) before any of it is written,
  // and each output element depends only on the same element of x.
  const bool in_place =
      static_cast<const T*>(out.data()) == x.data() && out.strides() == x.strides();
  if (!in_place) detail::check_no_alias(fn, "out", out, "x", x);
  detail::check_no_alias(fn, "out", out, "weight", weight);

  // O(R·D): negligible next to the projections around it, so plain loops.
  for (index_t r = 0; r < rows; ++r) {
    double sum_of_squares = 0;
    for (index_t c = 0; c < width; ++c) {
      const double value = static_cast<double>(x(r, c));
      sum_of_squares += value * value;
    }
    const double mean = width > 0 ? sum_of_squares / static_cast<double>(width) : 0.0;
    const double inverse_rms = 1.0 / std::sqrt(mean + eps);
    for (index_t c = 0; c < width; ++c) {
      out(r, c) = static_cast<T>(static_cast<double>(x(r, c)) * inverse_rms *
                                 static_cast<double>(weight(c)));
    }
  }
}

}  // namespace diffattn
