// Attention noise, and how differential attention cancels it: the idea of the
// Differential Transformer made visible with the two public kernels.
//
// One query looks for one "needle" key among 63 distractors. The query has a specific
// part that only the needle matches and a common-mode part that every distractor matches
// (think of tokens that are merely "of the same kind" as what is being looked for).
// Softmax attention cannot ignore 63 moderate matches, so much of its mass lands on
// them. A differential head has a second map whose query is just the common-mode part:
// it spreads its mass over the distractors and almost none on the needle, so
// p1 − λ·p2 keeps the needle and cancels most of the distractor mass.
//
// The values are one-hot rows (V = identity), so each output row is the attention
// weights themselves. The program exits non-zero if the effect does not show.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include <diffattn/diffattn.hpp>

namespace {

using diffattn::index_t;
using diffattn::Tensor;

constexpr index_t keys = 64;     // 1 needle + 63 distractors
constexpr index_t needle = 41;   // anywhere; not first, to show nothing depends on it
constexpr index_t d = 16;        // head width; the kernels' default scale is 1/√d
constexpr index_t common = 0;    // dimension of the common-mode direction
constexpr index_t specific = 1;  // dimension only the needle's key shares with q1

struct Masses {
  double needle = 0;
  double distractors = 0;      // signed sum
  double distractors_abs = 0;  // Σ|w|: negative weights are noise too
  double total = 0;
};

Masses masses(const Tensor<float, 4>& weights) {
  Masses m;
  for (index_t j = 0; j < keys; ++j) {
    const double w = weights(0, 0, 0, j);
    m.total += w;
    if (j == needle) {
      m.needle = w;
    } else {
      m.distractors += w;
      m.distractors_abs += std::abs(w);
    }
  }
  return m;
}

void print_row(const char* label, const Masses& m, double divide_by = 1) {
  std::printf("%-28s %9.4f %12.4f %12.4f %9.4f\n", label, m.needle / divide_by,
              m.distractors / divide_by, m.distractors_abs / divide_by, m.total / divide_by);
}

}  // namespace

int main() {
  std::mt19937 rng(2025);
  std::normal_distribution<float> normal(0.0f, 1.0f);

  // Keys: distractors carry the common mode (4 along `common`), the needle the specific
  // part (7 along `specific`); all get unit noise in the other 14 dimensions.
  Tensor<float, 4> k({1, 1, keys, d});
  for (index_t j = 0; j < keys; ++j) {
    for (index_t c = 2; c < d; ++c) k(0, 0, j, c) = normal(rng);
    if (j == needle) {
      k(0, 0, j, specific) = 7.0f;
    } else {
      k(0, 0, j, common) = 4.0f;
    }
  }
  // Map 1 (and the standard head): the full query, common mode + specific part + a
  // little noise. Map 2: the common mode alone. The noise makes the distractors' map-1
  // weights uneven; map 2 does not see it, so that part is not cancelled (Σ|w| below).
  Tensor<float, 4> q1({1, 1, 1, d}), q2({1, 1, 1, d});
  q1(0, 0, 0, common) = 4.0f;
  q1(0, 0, 0, specific) = 4.0f;
  for (index_t c = 2; c < d; ++c) q1(0, 0, 0, c) = 0.1f * normal(rng);
  q2(0, 0, 0, common) = 4.0f;

  // One-hot values: out[0, 0, 0, j] is the weight of key j.
  Tensor<float, 4> v({1, 1, keys, keys});
  for (index_t j = 0; j < keys; ++j) v(0, 0, j, j) = 1.0f;

  // λ as the paper initializes it in layer 8; in a trained model it is learned.
  const int layer = 8;
  const double lambda_value = diffattn::lambda_init(layer);
  Tensor<float, 1> lambda({1}, static_cast<float>(lambda_value));

  Tensor<float, 4> standard({1, 1, 1, keys}), differential({1, 1, 1, keys}),
      second_map({1, 1, 1, keys});
  diffattn::softmax_attention(q1, k, v, standard.view());
  diffattn::diff_attention(q1, q2, k, k, v, lambda, differential.view());
  diffattn::softmax_attention(q2, k, v, second_map.view());  // p2 alone, for the table

  const Masses s = masses(standard), p2 = masses(second_map), diff = masses(differential);

  std::printf(
      "One query, 1 needle among %td distractors (d = %td); lambda = lambda_init(%d) = %.4f\n\n",
      keys - 1, d, layer, lambda_value);
  std::printf("%-28s %9s %12s %12s %9s\n", "attention weights", "needle", "distractors",
              "distr. |w|", "sum");
  print_row("standard softmax(S1)", s);
  print_row("second map softmax(S2)", p2);
  print_row("differential p1 - lambda*p2", diff);
  // The weights sum to 1 − λ; the block's per-head normalization removes that scale, so
  // shares of the total are what compare with softmax.
  print_row("  as shares (/ sum)", diff, diff.total);
  std::printf(
      "(differential weights sum to 1 - lambda; the block's per-head norm removes that\n"
      " scale, so their shares are what compares with softmax)\n");
  std::printf(
      "\nneedle share: %.1f%% standard -> %.1f%% differential; distractor share: "
      "%.1f%% -> %.1f%%\n",
      100 * s.needle, 100 * diff.needle / diff.total, 100 * s.distractors,
      100 * diff.distractors / diff.total);

  // Outside the convex hull: find the output coordinate farthest outside [min, max] of
  // its value column (every column of the identity spans [0, 1]).
  index_t worst_column = 0;
  double worst_excess = 0;
  for (index_t j = 0; j < keys; ++j) {
    const double out = differential(0, 0, 0, j);
    const double excess = std::max(0.0 - out, out - 1.0);  // > 0: outside [0, 1]
    if (excess > worst_excess) {
      worst_excess = excess;
      worst_column = j;
    }
  }
  std::printf(
      "\ndifferential out[%td] = %.5f, outside [min, max] = [0, 1] of value column %td:\n"
      "weights p1 - lambda*p2 can be negative, so the output is no convex combination "
      "of the values (softmax's always is).\n",
      worst_column, static_cast<double>(differential(0, 0, 0, worst_column)), worst_column);

  const bool needle_up = diff.needle / diff.total > s.needle;
  const bool distractors_down = std::abs(diff.distractors / diff.total) < s.distractors &&
                                diff.distractors_abs / diff.total < s.distractors_abs;
  const bool outside_hull = worst_excess > 1e-4;
  if (!needle_up || !distractors_down || !outside_hull) {
    std::printf(
        "\nFAILED: the effect did not show (needle share up: %d, distractor share down: %d, "
        "output outside the hull: %d)\n",
        needle_up, distractors_down, outside_hull);
    return 1;
  }
  return 0;
}
