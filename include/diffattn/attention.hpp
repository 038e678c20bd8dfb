#pragma once
/// \file
/// The public attention kernels: standard softmax attention and differential attention.
///
/// Shapes: q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], out [B, Hq, Nq, Dv],
/// with Hq % Hkv == 0 (grouped-query attention: query head h reads kv head
/// h / (Hq / Hkv)). Any strides >= 0, but the last dimension of every tensor is
/// contiguous. Empty extents are valid and write nothing.
///
/// Errors: a rank, extent, GQA ratio, λ length or mask shape that does not fit, a
/// non-contiguous last dimension, an output whose elements overlap, an output that
/// shares memory with an input, or a problem whose FLOP count 2·B·Hq·Nq·Nk·(D + Dv)
/// overflows std::ptrdiff_t throws diffattn::shape_error (a std::invalid_argument) naming
/// the argument, the dimension, expected and got. A scale that is not finite as the
/// kernel uses it (scale·log2 e in the element type: 1e300 is refused for float) or a
/// negative thread count throws std::invalid_argument; scratch memory that cannot be
/// allocated, std::bad_alloc. Nothing is read or written before the checks pass.
///
/// Edge cases (diffattn::reference follows the same rules):
/// - A row that sees no key (all −inf in the mask, causal with Nq > Nk, or Nk = 0)
///   gives a zero output row, not NaN. In differential attention a map whose row sees
///   no key contributes zero whatever λ is, so such a row is zero even for a NaN λ.
/// - A finite mask value is a finite logit: a row masked with lowest() on every key
///   (PyTorch's finfo.min masking) averages V, as softmax does.
/// - Logits are shifted by their row maximum before exp(), so logits up to ±1e30 (and
///   +inf/−inf in the mask) do not overflow. The kernels scale q by scale·log2 e first,
///   so an element of q with |q|·|scale|·log2 e past the type's max may make its row NaN. The running output is kept normalized, so
///   finite inputs give finite outputs while 64·max|V| and (1 + |λ|)·max|V| stay below the
///   type's max (float: |V| up to 5e36).
/// - NaN: a NaN or +inf logit (from q, k or the mask) makes its whole output row NaN.
///   A NaN or ±inf in v row j makes every output row that can see key j NaN or ±inf;
///   for rows where key j is masked (by the mask or causally) it may or may not
///   propagate. A NaN λ makes its rows NaN, unless they see no key (above).
///
/// Accuracy, against diffattn::reference run in double on the same inputs (max abs error):
///   |out − ref| <= (1 + |λ|max)·max|V|·(ε_sum + 2·ε_logit)    (|λ|max = 0 for softmax_attention)
/// - ε_sum = (160 + 6·⌈Nk/64⌉)·u + (2·Nk + 16)·2⁻⁵³, u the unit roundoff of the element
///   type (2⁻²⁴ for float, 2⁻⁵³ for double). Each P·V product sums at most 64 keys into a
///   fresh accumulator, so the terms of one chunk round at most 64 times; the running
///   output and sum take about 6 roundings per 64-key tile; the rest is the softmax sums,
///   exp2 (within 2 ulp) and the merges. The second term is the reference's own rounding,
///   which matters for double only. Float: 1.0e-5 at Nk = 64, 3.2e-5 at Nk = 4096.
/// - ε_logit is the largest rounding error of a logit, at most
///   (D + 2)·(u + 2⁻⁵³)·max(|scale|·Σ_c |q_c·k_c| + |mask|): fp32 dot products, as in any
///   fp32 attention. A logit's error e changes the weights by up to a factor e^(±2e).
/// Both are worst cases, reached only when every rounding goes the same way: uniform
/// weights over identical V rows (each sum adding one value Nk times) came to 1.1e-6·max|V|
/// in float at Nk = 4096, and random inputs to 3.8e-7 (standard) and 5.0e-7
/// (differential); double 1.1e-15 against the reference. tests/test_fused.cpp enforces the
/// bound (with ε_logit = 0 for random inputs) over 2,200 random cases per type and on
/// adversarial inputs.
///
/// Element types: every tensor float, or every tensor double; or, computing in float, q
/// of float, bf16 or f16 (q1 and q2 one type), k and v of one of those, and out of float
/// or of q's type (diffattn::bf16 and f16, half.hpp), with λ and the mask float. Products,
/// softmax statistics and sums are fp32 whatever the storage; half-precision K/V rows are
/// converted in registers as they load (decoding) or as a tile packs them (prefill).
///
/// Half-precision accuracy, against diffattn::reference run in double on the same values:
///   |out − ref| <= (1 + |λ|max)·max|V|·(ε_sum + 2·ε_logit + ε_P + u_out)
/// - ε_sum and ε_logit as for float (u = 2⁻²⁴): bf16 and f16 values are exact in float, so
///   the float bound holds for what the kernels compute from them.
/// - u_out: the result rounded to out's type, 0 for float, 2⁻⁸ for bf16 (8 significant
///   bits) and 2⁻¹¹ for f16, relative to |out| <= (1 + |λ|)·max|V|.
/// - ε_P = 2⁻⁸ where the P·V product takes the weights rounded to bf16 (q and k/v both
///   bf16 on CPUs with AVX512_BF16, whose vdpbf16ps multiplies pairs of bf16), else 0.
///   Rounding to nearest moves each weight p by at most 2⁻⁸·|p| (2⁻¹⁰·|p| on average),
///   so the output by at most 2⁻⁸·Σ_j |p_j|·max|V|, and Σ_j |p_j| <= 1 + |λ|. (vdpbf16ps
///   also flushes subnormal products to zero: below 2⁻¹²⁶ each, nothing at this scale.)
/// Fully masked rows give zeros and ±1e30 logits do not overflow, as for float: bf16 has
/// float's range and f16 values are finite by type. tests/test_fused_half.cpp enforces
/// the bound for seven type mixes over the random cases of test_fused.cpp.

#include <type_traits>

#include "diffattn/detail/fused/backward_run.hpp"
#include "diffattn/detail/fused/run.hpp"
#include "diffattn/half.hpp"
#include "diffattn/options.hpp"
#include "diffattn/tensor.hpp"
#include "diffattn/detail/validation.hpp"

namespace diffattn {
namespace detail {

/// The element type of a rank-4 Tensor or TensorView argument, without const.
template <class X>
struct view_element {};
template <class E>
struct view_element<TensorView<E, 4>> {
  using type = std::remove_const_t<E>;
};
template <class E>
struct view_element<Tensor<E, 4>> {
  using type = E;
};
template <class X>
using view_element_t = typename view_element<std::remove_cv_t<std::remove_reference_t<X>>>::type;

template <class E>
TensorView<const E, 4> read_view(TensorView<E, 4> v) {
  return v;
}
template <class E>
TensorView<const E, 4> read_view(const Tensor<E, 4>& t) {
  return t.view();
}

/// The single-type overloads take the compute types only, so that a call on bf16 or f16
/// alone finds the mixed-type overload.
template <class T>
using enable_compute_t = std::enable_if_t<std::is_same_v<T, float> || std::is_same_v<T, double>, int>;

template <class T>
inline constexpr bool is_float_family_v = std::is_same_v<T, float> || is_half_v<T>;

/// Enables the mixed-type overloads: every argument a rank-4 Tensor or TensorView, and not
/// all of one type the single-type overloads take (float or double).
template <class O, class... In>
using enable_mixed_t = std::enable_if_t<
    !((std::is_same_v<view_element_t<In>, O> && ...) && (std::is_same_v<O, float> || std::is_same_v<O, double>)),
    int>;

/// The element types a fused call may mix, checked at compile time.
template <class Q, class Q2, class K, class K2, class V, class O>
constexpr void check_mixed_types() {
  static_assert(!std::is_same_v<Q, double> && !std::is_same_v<K, double> && !std::is_same_v<O, double>,
                "diffattn: double calls are all-double (q, k, v and out of double)");
  static_assert(is_float_family_v<Q> && is_float_family_v<K>,
                "diffattn: the fused kernels take q, k and v of float, bf16 or f16");
  static_assert(std::is_same_v<Q, Q2>, "diffattn: q1 and q2 must have one element type");
  static_assert(std::is_same_v<K, K2> && std::is_same_v<K, V>, "diffattn: k and v must have one element type");
  static_assert(std::is_same_v<O, float> || std::is_same_v<O, Q>,
                "diffattn: out is float or of q's element type");
}

template <class T, class Q, class KV, class O>
void run_softmax_attention(TensorView<const Q, 4> q, TensorView<const KV, 4> k, TensorView<const KV, 4> v,
                           TensorView<O, 4> out, const AttentionOptions<T>& options) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "diffattn's fused kernels compute in float or double (diffattn::reference takes any)");
  FusedArgs<T> args;
  args.problem = validate_attention("softmax_attention", q, k, v, out, options, args.mask);
  args.q1 = q;
  args.k1 = k;
  args.v = v;
  args.out = out;
  fused_attention(args, options.threads, options.workspace_limit);
}

template <class T, class Q, class KV, class O, std::size_t LambdaRank>
void run_diff_attention(TensorView<const Q, 4> q1, TensorView<const Q, 4> q2, TensorView<const KV, 4> k1,
                        TensorView<const KV, 4> k2, TensorView<const KV, 4> v,
                        TensorView<const T, LambdaRank> lambda, TensorView<O, 4> out,
                        const AttentionOptions<T>& options) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "diffattn's fused kernels compute in float or double (diffattn::reference takes any)");
  const char* fn = "diff_attention";
  FusedArgs<T> args;
  args.problem = validate_attention(fn, q1, k1, v, out, options, args.mask);
  validate_second_map(fn, q1, q2, k1, k2, out);
  args.lambda = widen_lambda(fn, lambda, args.problem);
  check_no_alias(fn, "out", out, "lambda", args.lambda);
  args.q1 = q1;
  args.q2 = q2;
  args.k1 = k1;
  args.k2 = k2;
  args.v = v;
  args.out = out;
  args.diff = true;
  fused_attention(args, options.threads, options.workspace_limit);
}

/// Body of both mixed-type diff_attention overloads (λ per head or per token).
template <class Q1, class Q2, class K1, class K2, class V, class O, std::size_t LambdaRank>
void run_mixed_diff_attention(const Q1& q1, const Q2& q2, const K1& k1, const K2& k2, const V& v,
                              TensorView<const float, LambdaRank> lambda, TensorView<O, 4> out,
                              const AttentionOptions<float>& options) {
  check_mixed_types<view_element_t<Q1>, view_element_t<Q2>, view_element_t<K1>, view_element_t<K2>,
                    view_element_t<V>, O>();
  run_diff_attention<float>(read_view(q1), read_view(q2), read_view(k1), read_view(k2), read_view(v), lambda, out,
                            options);
}

}  // namespace detail

/// Standard attention: out = softmax(scale·q·kᵀ + mask)·v.
/// q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], out [B, Hq, Nq, Dv].
template <class T, detail::enable_compute_t<T> = 0>
void softmax_attention(detail::identity_t<TensorView<const T, 4>> q,
                       detail::identity_t<TensorView<const T, 4>> k,
                       detail::identity_t<TensorView<const T, 4>> v, TensorView<T, 4> out,
                       const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::run_softmax_attention<T>(q, k, v, out, options);
}

/// Standard attention on half-precision tensors: q of float, bf16 or f16; k and v of one
/// of those; out of float or of q's type. Computes in float (products, softmax statistics
/// and accumulation); the mask is float. q, k, v: rank-4 Tensor or TensorView.
template <class Q, class K, class V, class O, detail::enable_mixed_t<O, Q, K, V> = 0>
void softmax_attention(const Q& q, const K& k, const V& v, TensorView<O, 4> out,
                       const AttentionOptions<float>& options = {}) {
  using QE = detail::view_element_t<Q>;
  using KE = detail::view_element_t<K>;
  detail::check_mixed_types<QE, QE, KE, KE, detail::view_element_t<V>, O>();
  detail::run_softmax_attention<float>(detail::read_view(q), detail::read_view(k), detail::read_view(v), out,
                                       options);
}

/// Differential attention with one λ per query head:
/// out = (softmax(scale·q1·k1ᵀ + mask) − λ[h]·softmax(scale·q2·k2ᵀ + mask))·v.
/// q1, q2 [B, Hq, Nq, D], k1, k2 [B, Hkv, Nk, D] (k2 may be k1), v [B, Hkv, Nk, Dv],
/// lambda [Hq] (or [1], or stride 0, to share one value), out [B, Hq, Nq, Dv].
template <class T, detail::enable_compute_t<T> = 0>
void diff_attention(detail::identity_t<TensorView<const T, 4>> q1,
                    detail::identity_t<TensorView<const T, 4>> q2,
                    detail::identity_t<TensorView<const T, 4>> k1,
                    detail::identity_t<TensorView<const T, 4>> k2,
                    detail::identity_t<TensorView<const T, 4>> v,
                    detail::identity_t<TensorView<const T, 1>> lambda, TensorView<T, 4> out,
                    const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::run_diff_attention<T>(q1, q2, k1, k2, v, lambda, out, options);
}

/// Differential attention with λ per query token and head (the 2026 "V2" form, where
/// λ = sigmoid(x·Wλ)). lambda [B|1, Hq|1, Nq|1]; extent-1 dimensions broadcast.
template <class T, detail::enable_compute_t<T> = 0>
void diff_attention(detail::identity_t<TensorView<const T, 4>> q1,
                    detail::identity_t<TensorView<const T, 4>> q2,
                    detail::identity_t<TensorView<const T, 4>> k1,
                    detail::identity_t<TensorView<const T, 4>> k2,
                    detail::identity_t<TensorView<const T, 4>> v,
                    detail::identity_t<TensorView<const T, 3>> lambda, TensorView<T, 4> out,
                    const detail::identity_t<AttentionOptions<T>>& options = {}) {
  detail::run_diff_attention<T>(q1, q2, k1, k2, v, lambda, out, options);
}

/// Differential attention (λ per head) on half-precision tensors, with the types of the
/// half-precision softmax_attention (q1 and q2 one type, k1, k2 and v one type); λ and
/// the mask are float.
template <class Q1, class Q2, class K1, class K2, class V, class O,
          detail::enable_mixed_t<O, Q1, Q2, K1, K2, V> = 0>
void diff_attention(const Q1& q1, const Q2& q2, const K1& k1, const K2& k2, const V& v,
                    TensorView<const float, 1> lambda, TensorView<O, 4> out,
                    const AttentionOptions<float>& options = {}) {
  detail::run_mixed_diff_attention(q1, q2, k1, k2, v, lambda, out, options);
}

/// Differential attention (λ per token, [B|1, Hq|1, Nq|1]) on half-precision tensors.
template <class Q1, class Q2, class K1, class K2, class V, class O,
          detail::enable_mixed_t<O, Q1, Q2, K1, K2, V> = 0>
void diff_attention(const Q1& q1, const Q2& q2, const K1& k1, const K2& k2, const V& v,
                    TensorView<const float, 3> lambda, TensorView<O, 4> out,
                    const AttentionOptions<float>& options = {}) {
  detail::run_mixed_diff_attention(q1, q2, k1, k2, v, lambda, out, options);
}

/// Frees the scratch memory the kernels (forward and backward) keep for the calling
/// thread between calls; the next call allocates it again.
inline void release_scratch() {
  detail::scratch_cache<float>() = {};
  detail::scratch_cache<double>() = {};
  detail::backward_scratch<float>() = {};
  detail::backward_scratch<double>() = {};
}

}  // namespace diffattn
