#pragma once
// The randomized attention cases the fused-kernel tests sweep (test_fused.cpp for float
// and double, test_fused_half.cpp for bf16 and f16): shapes, layouts, masks, λ forms,
// methods and thread counts, and the accuracy contract they are held to.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "helpers.hpp"

namespace diffattn_test {

/// The accuracy contract of attention.hpp as a max-abs-error bound:
/// (1 + |λ|max)·max|V|·(ε_sum + 2·ε_logit), with ε_sum = (160 + 6·⌈Nk/64⌉)·u for the
/// kernel (u its unit roundoff) plus (2·Nk + 16)·2⁻⁵³ for the reference's own rounding,
/// and ε_logit the largest rounding error of a logit. Random logits' rounding errors stay
/// far below that worst case, so the sweeps pass ε_logit = 0: a sharper check than the
/// contract.
template <class T>
double contract_bound(double lambda_max, double v_max, index_t nk, double logit_error = 0) {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  const double reference_u = std::numeric_limits<double>::epsilon() / 2;
  const double sum_error =
      (160 + 6 * static_cast<double>((nk + 63) / 64)) * u + (2 * static_cast<double>(nk) + 16) * reference_u;
  return (1 + lambda_max) * std::max(v_max, 1e-300) * (sum_error + 2 * logit_error);
}

enum class Layout { contiguous, permuted, strided, interleaved_pairs, half_split_pairs };
enum class MaskKind { none, full, broadcast_heads, key_padding, with_masked_rows };

struct Case {
  std::uint64_t seed;
  index_t batch, kv_heads, group, q_len, kv_len, head_dim, value_dim;
  bool causal, per_token_lambda, shared_keys;
  Layout layout;
  MaskKind mask;
  int threads;
  std::size_t workspace_limit;

  std::string describe() const {
    std::ostringstream out;
    out << "seed=" << seed << " B=" << batch << " Hkv=" << kv_heads << " group=" << group
        << " Nq=" << q_len << " Nk=" << kv_len << " D=" << head_dim << " Dv=" << value_dim
        << " causal=" << causal << " per_token_lambda=" << per_token_lambda
        << " shared_keys=" << shared_keys << " layout=" << static_cast<int>(layout)
        << " mask=" << static_cast<int>(mask) << " threads=" << threads
        << " workspace_limit=" << workspace_limit;
    return out.str();
  }
};

/// Owns the buffers behind a case's (possibly strided or permuted) views.
template <class T>
struct Inputs {
  std::vector<Tensor<T, 4>> storage;
  TensorView<const T, 4> q1, q2, k1, k2, v, mask;
  Tensor<T, 1> lambda_head;
  Tensor<T, 3> lambda_token;
  double lambda_max = 0;

  /// q-like [B, H, N, D] tensor in the requested layout, filled with random values.
  std::pair<TensorView<T, 4>, TensorView<T, 4>> make_pair(Layout layout, index_t b, index_t h,
                                                          index_t n, index_t d,
                                                          std::mt19937_64& rng) {
    switch (layout) {
      case Layout::interleaved_pairs:
      case Layout::half_split_pairs: {
        storage.emplace_back(std::array<index_t, 4>{b, n, 2 * h, d});
        fill_uniform(storage.back().view(), rng);
        const auto pairs = layout == Layout::interleaved_pairs
                               ? diffattn::interleaved_pairs(storage.back().view())
                               : diffattn::half_split_pairs(storage.back().view());
        return {pairs.first, pairs.second};
      }
      default:
        return {make(layout, b, h, n, d, rng), make(layout, b, h, n, d, rng)};
    }
  }

  TensorView<T, 4> make(Layout layout, index_t b, index_t h, index_t n, index_t d,
                        std::mt19937_64& rng, double lo = -1, double hi = 1) {
    TensorView<T, 4> view;
    switch (layout) {
      case Layout::permuted:  // [B, N, H, D] storage seen as [B, H, N, D]
        storage.emplace_back(std::array<index_t, 4>{b, n, h, d});
        view = diffattn::bnhd_to_bhnd(storage.back().view());
        break;
      case Layout::strided:  // padding in every dimension but the last
        storage.emplace_back(std::array<index_t, 4>{b + 1, h + 1, n + 2, d + 5});
        view = storage.back().view().slice(0, 1, b + 1).slice(1, 0, h).slice(2, 1, n + 1).slice(3, 2, d + 2);
        break;
      default:
        storage.emplace_back(std::array<index_t, 4>{b, h, n, d});
        view = storage.back().view();
    }
    fill_uniform(view, rng, lo, hi);
    return view;
  }

  Inputs(const Case& c, std::mt19937_64& rng) {
    const index_t q_heads = c.kv_heads * c.group;
    const auto [q1v, q2v] = make_pair(c.layout, c.batch, q_heads, c.q_len, c.head_dim, rng);
    const auto [k1v, k2v] = make_pair(c.layout, c.batch, c.kv_heads, c.kv_len, c.head_dim, rng);
    q1 = q1v;
    q2 = q2v;
    k1 = k1v;
    k2 = c.shared_keys ? k1v : k2v;
    const Layout v_layout = c.layout == Layout::interleaved_pairs || c.layout == Layout::half_split_pairs
                                ? Layout::permuted
                                : c.layout;
    v = make(v_layout, c.batch, c.kv_heads, c.kv_len, c.value_dim, rng, -2, 2);
    lambda_head = random_tensor<T, 1>({q_heads}, rng, -0.2, 1.0);
    lambda_token = random_tensor<T, 3>({c.batch, q_heads, c.q_len}, rng, -0.2, 1.0);
    lambda_max = std::max(max_abs(lambda_head.view()), max_abs(lambda_token.view()));
    make_mask(c, rng);
  }

  void make_mask(const Case& c, std::mt19937_64& rng) {
    const index_t q_heads = c.kv_heads * c.group;
    std::array<index_t, 4> shape{c.batch, q_heads, c.q_len, c.kv_len};
    if (c.mask == MaskKind::none) return;
    if (c.mask == MaskKind::broadcast_heads) shape = {1, 1, c.q_len, c.kv_len};
    if (c.mask == MaskKind::key_padding) shape = {c.batch, 1, 1, c.kv_len};
    storage.emplace_back(shape);
    auto m = storage.back().view();
    fill_uniform(m, rng, -4, 4);
    std::bernoulli_distribution masked(0.2);
    for_each_index(m.shape(), [&](const auto& idx) {
      if (masked(rng)) m.at(idx) = -std::numeric_limits<T>::infinity();
    });
    if (c.mask == MaskKind::with_masked_rows) {  // every third row fully masked
      for_each_index(m.shape(), [&](const auto& idx) {
        if (idx[2] % 3 == 1) m.at(idx) = -std::numeric_limits<T>::infinity();
      });
    }
    mask = m;
  }
};

/// The options a case's fused calls take, with `mask` (empty for none).
template <class T>
diffattn::AttentionOptions<T> case_options(const Case& c, TensorView<const T, 4> mask) {
  diffattn::AttentionOptions<T> options;
  options.causal = c.causal;
  options.mask = mask;
  options.threads = c.threads;
  options.workspace_limit = c.workspace_limit;
  return options;
}

/// A case's inputs in double for the reference (exact copies of the fused call's values:
/// q from `queries`, k and v from `keys_values`, the mask from `masks`), and the
/// reference's options.
struct ReferenceInputs {
  Tensor<double, 4> q1, q2, k1, k2, v, mask;
  diffattn::AttentionOptions<double> options;
  template <class Q, class KV, class M>
  ReferenceInputs(const Case& c, const Inputs<Q>& queries, const Inputs<KV>& keys_values, const Inputs<M>& masks)
      : q1(copy_as<double>(queries.q1)), q2(copy_as<double>(queries.q2)), k1(copy_as<double>(keys_values.k1)),
        k2(copy_as<double>(keys_values.k2)), v(copy_as<double>(keys_values.v)) {
    options.causal = c.causal;
    if (masks.mask.data() != nullptr) {
      mask = copy_as<double>(masks.mask);
      options.mask = mask.view();
    }
  }
};

/// Draws a case whose reference cost stays small, so thousands run in seconds.
inline Case draw_case(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&](index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); };
  auto one_of = [&](auto... options) {
    const std::array<std::common_type_t<decltype(options)...>, sizeof...(options)> all{options...};
    return all[static_cast<std::size_t>(pick(0, sizeof...(options) - 1))];
  };
  const index_t widths[] = {1, 3, 8, 16, 31, 64, 96, 128, 256};
  Case c{};
  c.seed = seed;
  for (;;) {
    c.batch = pick(1, 2);
    c.kv_heads = pick(1, 2);
    c.group = one_of(index_t{1}, index_t{2}, index_t{4});
    // Lengths: mostly short, sometimes up to 300; never tied to the SIMD width.
    c.q_len = pick(0, 3) == 0 ? pick(1, 300) : pick(1, 40);
    c.kv_len = pick(0, 3) == 0 ? pick(1, 300) : pick(1, 40);
    c.head_dim = widths[pick(0, 8)];
    c.value_dim = pick(0, 1) == 0 ? 2 * c.head_dim : widths[pick(0, 8)];
    const double cost = static_cast<double>(c.batch * c.kv_heads * c.group) * c.q_len * c.kv_len *
                        (2 * c.head_dim + c.value_dim);
    if (cost <= 4e6) break;
  }
  c.causal = pick(0, 2) == 0;
  c.per_token_lambda = pick(0, 2) == 0;
  c.shared_keys = pick(0, 3) == 0;
  c.layout = static_cast<Layout>(pick(0, 4));
  c.mask = static_cast<MaskKind>(pick(0, 4));
  c.threads = one_of(1, 2, 3);
  // A small limit forces the streaming differential method.
  c.workspace_limit = pick(0, 3) == 0 ? std::size_t{4096} : std::size_t{64} << 20;
  return c;
}

}  // namespace diffattn_test
