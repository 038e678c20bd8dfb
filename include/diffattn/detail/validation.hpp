#pragma once
/// Argument checks shared by every attention entry point (reference and fast), so both
/// accept and reject exactly the same calls.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "diffattn/errors.hpp"
#include "diffattn/options.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {
namespace detail {

/// Blocks template argument deduction, so a TensorView<T, R> argument converts to a
/// TensorView<const T, R> parameter whose T is deduced from another argument.
template <class T>
struct type_identity {
  using type = T;
};
template <class T>
using identity_t = typename type_identity<T>::type;

/// Everything a kernel needs to know about a validated call. Extents follow the
/// header's naming: q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv].
struct AttentionProblem {
  index_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0,
          value_dim = 0;
  /// Query heads per kv head (Hq / Hkv); query head h reads kv head h / group.
  index_t group = 1;
  double scale = 1;
  bool causal = false;
  bool has_mask = false;

  /// Keys visible to query row i are [0, key_limit(i)) — all of them unless causal.
  index_t key_limit(index_t i) const {
    if (!causal) return kv_len;
    return std::clamp<index_t>(i + 1 + kv_len - q_len, 0, kv_len);
  }
};

/// The last dimension of every tensor must be contiguous (SIMD loads run along it).
template <class T, std::size_t Rank>
void check_last_dim_contiguous(const char* fn, const char* arg, TensorView<T, Rank> view) {
  if (view.extent(Rank - 1) > 1 && view.stride(Rank - 1) != 1) {
    throw_shape_error(fn, ": '", arg, "' dimension ", Rank - 1,
                      ": expected a contiguous last dimension (stride 1), got stride ",
                      view.stride(Rank - 1));
  }
}

/// Byte range [first, last] an input or output touches; {1, 0} when empty.
template <class T, std::size_t Rank>
std::array<std::uintptr_t, 2> address_range(TensorView<T, Rank> view) {
  if (view.empty()) return {1, 0};
  index_t last = 0;
  for (std::size_t d = 0; d < Rank; ++d) last += (view.extent(d) - 1) * view.stride(d);
  const auto first = reinterpret_cast<std::uintptr_t>(view.data());
  return {first, first + static_cast<std::uintptr_t>(last) * sizeof(T) + sizeof(T) - 1};
}

template <class T, std::size_t Rank, class U, std::size_t RankU>
bool address_ranges_intersect(TensorView<T, Rank> a, TensorView<U, RankU> b) {
  const auto ra = address_range(a);
  const auto rb = address_range(b);
  if (ra[0] > ra[1] || rb[0] > rb[1]) return false;
  return ra[0] <= rb[1] && rb[0] <= ra[1];
}

/// True when no two indices of the view address the same element. Sufficient test:
/// with the dimensions sorted by stride, each stride exceeds the span of all smaller
/// ones. It accepts every slice and permutation of a contiguous tensor.
template <class T, std::size_t Rank>
bool elements_are_distinct(TensorView<T, Rank> view) {
  if (view.empty()) return true;
  std::array<std::size_t, Rank> order{};
  for (std::size_t d = 0; d < Rank; ++d) order[d] = d;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return view.stride(a) < view.stride(b); });
  index_t span = 0;  // largest offset reachable with the dimensions seen so far
  for (std::size_t d : order) {
    if (view.extent(d) == 1) continue;
    if (view.stride(d) <= span) return false;
    span += (view.extent(d) - 1) * view.stride(d);
  }
  return true;
}

template <class T, std::size_t Rank>
void check_output(const char* fn, const char* arg, TensorView<T, Rank> out) {
  if (!elements_are_distinct(out)) {
    throw_shape_error(fn, ": '", arg,
                      "' has overlapping elements (a zero or too small stride); an output "
                      "needs a distinct element per index");
  }
}

template <class T, std::size_t RankOut, class U, std::size_t RankIn>
void check_no_alias(const char* fn, const char* out_name, TensorView<T, RankOut> out,
                    const char* in_name, TensorView<U, RankIn> in) {
  if (address_ranges_intersect(out, in)) {
    throw_shape_error(fn, ": output '", out_name, "' overlaps input '", in_name,
                      "' in memory; outputs must not share memory with inputs");
  }
}

/// Widens a [1|E0, 1|E1, ...] view to `target` by giving extent-1 dimensions stride 0.
template <class T, std::size_t Rank>
TensorView<T, Rank> broadcast_to(const char* fn, const char* arg, TensorView<T, Rank> view,
                                 const std::array<index_t, Rank>& target,
                                 const char* const* dim_names) {
  auto shape = view.shape();
  auto strides = view.strides();
  for (std::size_t d = 0; d < Rank; ++d) {
    if (shape[d] == target[d]) continue;
    if (shape[d] != 1) {
      throw_shape_error(fn, ": '", arg, "' dimension ", d, " (", dim_names[d], "): expected ",
                        target[d], " or 1 (broadcast), got ", shape[d]);
    }
    shape[d] = target[d];
    strides[d] = 0;
  }
  return TensorView<T, Rank>(view.data(), shape, strides);
}

/// The scale a call uses: options.scale, or 1/√D for 0. It must be finite as the kernels
/// of element type T use it, times log2 e (they work in base 2): 1e300 is finite in
/// double but not in float.
template <class T>
double resolve_scale(const char* fn, double scale, index_t head_dim) {
  if (!std::isfinite(scale) || !std::isfinite(static_cast<T>(scale * 1.4426950408889634074))) {
    throw std::invalid_argument(concat("diffattn: ", fn, ": options.scale must be finite, and its product with ",
                                       "log2(e) finite in the element type (largest ",
                                       static_cast<double>(std::numeric_limits<T>::max()) / 1.4426950408889634074,
                                       "), got ", scale));
  }
  if (scale != 0) return scale;
  return head_dim > 0 ? 1.0 / std::sqrt(static_cast<double>(head_dim)) : 1.0;
}

/// Refuses a problem whose FLOP count 2·B·Hq·Nq·Nk·(D + Dv) overflows index_t: no call
/// of that size could finish, and the kernels' size arithmetic assumes it fits.
inline void check_problem_size(const char* fn, const AttentionProblem& p) {
  constexpr index_t max = std::numeric_limits<index_t>::max();
  // Empty views bound no extent, so even D + Dv may overflow; it saturates.
  const index_t width = p.head_dim > max - p.value_dim ? max : p.head_dim + p.value_dim;
  const index_t factors[] = {2, p.batch, p.q_heads, p.q_len, p.kv_len, width};
  for (const index_t f : factors) {
    if (f == 0) return;  // no work, however large the other extents
  }
  index_t size = 1;
  for (const index_t f : factors) {
    if (size > max / f) {
      throw_shape_error(fn, ": the FLOP count 2·B·Hq·Nq·Nk·(D + Dv) = 2·", p.batch, "·", p.q_heads, "·", p.q_len,
                        "·", p.kv_len, "·(", p.head_dim, " + ", p.value_dim, ") overflows std::ptrdiff_t");
    }
    size *= f;
  }
}

inline void check_threads(const char* fn, int threads) {
  if (threads < 0) {
    throw std::invalid_argument(concat("diffattn: ", fn,
                                       ": options.threads must be >= 0 (0 = all cores), got ",
                                       threads));
  }
}

/// Validates q, k, v and the options (the mask, widened to [B, Hq, Nq, Nk] into
/// `mask_out`, empty when there is none) and returns the problem they describe. q, k and
/// v may hold other element types than the options' T (the fused kernels take bf16/f16
/// with T = float). The caller checks its outputs (check_result, check_no_alias).
template <class T, class Q, class K, class V>
AttentionProblem validate_inputs(const char* fn, TensorView<const Q, 4> q, TensorView<const K, 4> k,
                                 TensorView<const V, 4> v, const AttentionOptions<T>& options,
                                 TensorView<const T, 4>& mask_out) {
  AttentionProblem p;
  p.batch = q.extent(0);
  p.q_heads = q.extent(1);
  p.q_len = q.extent(2);
  p.head_dim = q.extent(3);
  p.kv_heads = k.extent(1);
  p.kv_len = k.extent(2);
  p.value_dim = v.extent(3);

  check_extent(fn, "k", 0, "B", p.batch, k.extent(0));
  check_extent(fn, "k", 3, "D", p.head_dim, k.extent(3));
  if (p.kv_heads == 0 ? p.q_heads != 0 : p.q_heads % p.kv_heads != 0) {
    throw_shape_error(fn, ": 'k' dimension 1 (Hkv): expected a divisor of Hq = ", p.q_heads,
                      " (grouped-query attention), got ", p.kv_heads);
  }
  p.group = p.kv_heads == 0 ? 1 : p.q_heads / p.kv_heads;
  check_extent(fn, "v", 0, "B", p.batch, v.extent(0));
  check_extent(fn, "v", 1, "Hkv", p.kv_heads, v.extent(1));
  check_extent(fn, "v", 2, "Nk", p.kv_len, v.extent(2));

  check_last_dim_contiguous(fn, "q", q);
  check_last_dim_contiguous(fn, "k", k);
  check_last_dim_contiguous(fn, "v", v);

  check_problem_size(fn, p);
  p.scale = resolve_scale<T>(fn, options.scale, p.head_dim);
  p.causal = options.causal;
  check_threads(fn, options.threads);

  mask_out = TensorView<const T, 4>();
  const TensorView<const T, 4> mask = options.mask;
  if (mask.data() != nullptr || !mask.empty()) {
    static constexpr const char* mask_dims[4] = {"B", "Hq", "Nq", "Nk"};
    // Keys never broadcast: kernels read a mask row as contiguous memory.
    check_extent(fn, "options.mask", 3, "Nk", p.kv_len, mask.extent(3));
    mask_out = broadcast_to(fn, "options.mask", mask, {p.batch, p.q_heads, p.q_len, p.kv_len},
                            mask_dims);
    check_last_dim_contiguous(fn, "options.mask", options.mask);
    p.has_mask = true;
  }
  return p;
}

/// Checks a result tensor (an output, or the incoming gradient dout) against the extents
/// it must have; an output (`is_output`) must also have a distinct element per index.
template <class O>
void check_result(const char* fn, const char* arg, TensorView<O, 4> view, const std::array<index_t, 4>& extents,
                  const char* const* dim_names, bool is_output) {
  for (std::size_t d = 0; d < 4; ++d) check_extent(fn, arg, d, dim_names[d], extents[d], view.extent(d));
  check_last_dim_contiguous(fn, arg, view);
  if (is_output) check_output(fn, arg, view);
}

inline constexpr const char* q_dim_names[4] = {"B", "Hq", "Nq", "D"};
inline constexpr const char* k_dim_names[4] = {"B", "Hkv", "Nk", "D"};
inline constexpr const char* v_dim_names[4] = {"B", "Hkv", "Nk", "Dv"};
inline constexpr const char* out_dim_names[4] = {"B", "Hq", "Nq", "Dv"};

/// Validates q/k/v/out (and the options' mask) and returns the problem they describe.
/// `mask_out` receives the mask widened to [B, Hq, Nq, Nk] (empty when there is none).
template <class T, class Q, class K, class V, class O>
AttentionProblem validate_attention(const char* fn, TensorView<const Q, 4> q,
                                    TensorView<const K, 4> k, TensorView<const V, 4> v,
                                    TensorView<O, 4> out, const AttentionOptions<T>& options,
                                    TensorView<const T, 4>& mask_out) {
  const AttentionProblem p = validate_inputs(fn, q, k, v, options, mask_out);
  check_result(fn, "out", out, {p.batch, p.q_heads, p.q_len, p.value_dim}, out_dim_names, true);
  check_no_alias(fn, "out", out, "q", q);
  check_no_alias(fn, "out", out, "k", k);
  check_no_alias(fn, "out", out, "v", v);
  if (p.has_mask) check_no_alias(fn, "out", out, "options.mask", options.mask);
  return p;
}

/// Checks the second map (q2, k2) of a differential call against the first.
template <class Q, class K>
void check_second_map(const char* fn, TensorView<const Q, 4> q1, TensorView<const Q, 4> q2,
                      TensorView<const K, 4> k1, TensorView<const K, 4> k2) {
  for (std::size_t d = 0; d < 4; ++d) {
    check_extent(fn, "q2", d, q_dim_names[d], q1.extent(d), q2.extent(d));
    check_extent(fn, "k2", d, k_dim_names[d], k1.extent(d), k2.extent(d));
  }
  check_last_dim_contiguous(fn, "q2", q2);
  check_last_dim_contiguous(fn, "k2", k2);
}

/// Validates the second map (q2, k2) of a differential call against the first.
template <class Q, class K, class O>
void validate_second_map(const char* fn, TensorView<const Q, 4> q1, TensorView<const Q, 4> q2,
                         TensorView<const K, 4> k1, TensorView<const K, 4> k2,
                         TensorView<O, 4> out) {
  check_second_map(fn, q1, q2, k1, k2);
  check_no_alias(fn, "out", out, "q2", q2);
  check_no_alias(fn, "out", out, "k2", k2);
}

/// Widens λ, per head [Hq|1] or per token [B|1, Hq|1, Nq|1], to [B, Hq, Nq].
template <class T>
TensorView<const T, 3> widen_lambda(const char* fn, TensorView<const T, 1> lambda,
                                    const AttentionProblem& p) {
  if (lambda.extent(0) != p.q_heads && lambda.extent(0) != 1) {
    throw_shape_error(fn, ": 'lambda' dimension 0 (Hq): expected ", p.q_heads,
                      " or 1 (broadcast), got ", lambda.extent(0));
  }
  const index_t stride = lambda.extent(0) == 1 ? 0 : lambda.stride(0);
  return TensorView<const T, 3>(lambda.data(), {p.batch, p.q_heads, p.q_len}, {0, stride, 0});
}

template <class T>
TensorView<const T, 3> widen_lambda(const char* fn, TensorView<const T, 3> lambda,
                                    const AttentionProblem& p) {
  static constexpr const char* lambda_dims[3] = {"B", "Hq", "Nq"};
  return broadcast_to(fn, "lambda", lambda, {p.batch, p.q_heads, p.q_len}, lambda_dims);
}

}  // namespace detail
}  // namespace diffattn
