// A downstream program: runs the public kernels on a small problem and checks them
// against diffattn::reference. Exits non-zero on any mismatch.

#include <cmath>
#include <cstdio>
#include <random>

#include <diffattn/diffattn.hpp>

namespace {

template <std::size_t Rank>
void fill_random(diffattn::Tensor<float, Rank>& tensor, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (diffattn::index_t i = 0; i < tensor.size(); ++i) tensor.data()[i] = normal(rng);
}

// Largest |a − b| relative to max(|b|, 1).
double max_error(const diffattn::Tensor<float, 4>& a, const diffattn::Tensor<float, 4>& b) {
  double worst = 0;
  for (diffattn::index_t i = 0; i < a.size(); ++i) {
    const double ref = b.data()[i];
    const double err = std::abs(static_cast<double>(a.data()[i]) - ref) / std::fmax(std::abs(ref), 1.0);
    if (!(err <= worst)) worst = err;  // also catches NaN
  }
  return worst;
}

}  // namespace

int main() {
  constexpr diffattn::index_t B = 1, H = 2, N = 5, D = 4, Dv = 8;
  std::mt19937 rng(20260101);
  diffattn::Tensor<float, 4> q1({B, H, N, D}), q2({B, H, N, D}), k1({B, H, N, D}),
      k2({B, H, N, D}), v({B, H, N, Dv});
  for (auto* t : {&q1, &q2, &k1, &k2}) fill_random(*t, rng);
  fill_random(v, rng);
  diffattn::Tensor<float, 1> lambda({H}, static_cast<float>(diffattn::lambda_init(2)));

  diffattn::Tensor<float, 4> out({B, H, N, Dv}), expected({B, H, N, Dv});
  diffattn::AttentionOptions<float> options;
  options.causal = true;

  // Loose enough for any float kernel (a few hundred ulps), tight enough to catch a
  // wrong formula, whose errors are O(1).
  constexpr double tolerance = 1e-4;
  int failures = 0;

  diffattn::softmax_attention(q1, k1, v, out.view(), options);
  diffattn::reference::softmax_attention(q1, k1, v, expected.view(), options);
  const double softmax_error = max_error(out, expected);
  std::printf("softmax_attention: max relative error %.3g\n", softmax_error);
  if (!(softmax_error <= tolerance)) ++failures;

  diffattn::diff_attention(q1, q2, k1, k2, v, lambda, out.view(), options);
  diffattn::reference::diff_attention(q1, q2, k1, k2, v, lambda, expected.view(), options);
  const double diff_error = max_error(out, expected);
  std::printf("diff_attention:    max relative error %.3g\n", diff_error);
  if (!(diff_error <= tolerance)) ++failures;

  std::printf("%s\n", failures == 0 ? "consumer: OK" : "consumer: MISMATCH");
  return failures == 0 ? 0 : 1;
}
