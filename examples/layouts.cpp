// Layouts: feeding diff_attention straight from projection outputs computed with Eigen,
// and writing its output where the output projection reads it, without copies.
// Quoted in README.md between the [layouts] markers.

#include <cmath>
#include <cstdio>

#include <Eigen/Core>

#include <diffattn/diffattn.hpp>

int main() {
  constexpr diffattn::index_t B = 1, N = 12, H = 2, d = 8, Dv = 16, model = 32;
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  // Token activations and projection weights; Eigen's Random is uniform in [-1, 1].
  const RowMatrix x = RowMatrix::Random(B * N, model);
  const Eigen::MatrixXf w_q = Eigen::MatrixXf::Random(model, 2 * H * d) / std::sqrt(float(model));
  const Eigen::MatrixXf w_k = Eigen::MatrixXf::Random(model, 2 * H * d) / std::sqrt(float(model));
  const Eigen::MatrixXf w_v = Eigen::MatrixXf::Random(model, H * Dv) / std::sqrt(float(model));
  const Eigen::MatrixXf w_o = Eigen::MatrixXf::Random(H * Dv, model) / std::sqrt(float(H * Dv));

  // [layouts]
  // Projections as Eigen computes them: one row per token, heads side by side.
  RowMatrix q_proj = x * w_q;  // [B·N, 2H·d]
  RowMatrix k_proj = x * w_k;  // [B·N, 2H·d]
  RowMatrix v_proj = x * w_v;  // [B·N, H·Dv]

  // as_view shares the matrix's memory; reshape splits the columns into heads.
  auto q_heads = diffattn::as_view(q_proj).reshape<4>({B, N, 2 * H, d});  // [B, N, 2H, d]
  auto k_heads = diffattn::as_view(k_proj).reshape<4>({B, N, 2 * H, d});

  // Heads 2i and 2i+1 are the two maps of differential head i; both come back in the
  // kernels' [B, H, N, d] layout as strided views, still without a copy.
  auto [q1, q2] = diffattn::interleaved_pairs(q_heads);
  auto [k1, k2] = diffattn::interleaved_pairs(k_heads);
  auto v = diffattn::bnhd_to_bhnd(diffattn::as_view(v_proj).reshape<4>({B, N, H, Dv}));

  diffattn::Tensor<float, 1> lambda({H}, static_cast<float>(diffattn::lambda_init(1)));

  // The output projection reads [B, N, H·Dv]; the kernel writes [B, H, N, Dv] through a
  // permuted view of that buffer.
  diffattn::Tensor<float, 4> attn({B, N, H, Dv});
  auto out = diffattn::bnhd_to_bhnd(attn.view());  // [B, H, N, Dv]
  diffattn::diff_attention(q1, q2, k1, k2, v, lambda, out);

  // bhnd_to_bnhd undoes the permutation: the buffer again, contiguous, so it reshapes to
  // one row per token and as_eigen hands it to Eigen for the output projection.
  auto rows = diffattn::bhnd_to_bnhd(out).reshape<2>({B * N, H * Dv});
  RowMatrix y = diffattn::as_eigen(rows) * w_o;  // [B·N, model]
  // [layouts]

  // Check against the reference computed into an ordinary [B, H, N, Dv] tensor.
  diffattn::Tensor<float, 4> expected({B, H, N, Dv});
  diffattn::reference::diff_attention(q1, q2, k1, k2, v, lambda, expected.view());
  const auto expected_bnhd = diffattn::bhnd_to_bnhd(expected.view());
  double worst = 0;
  for (diffattn::index_t n = 0; n < N; ++n) {
    for (diffattn::index_t h = 0; h < H; ++h) {
      for (diffattn::index_t c = 0; c < Dv; ++c) {
        const double err = std::abs(double(attn(0, n, h, c)) - double(expected_bnhd(0, n, h, c)));
        if (!(err <= worst)) worst = err;  // also catches NaN
      }
    }
  }
  std::printf("output projection: [%td x %td], |y| = %.6f\n", y.rows(), y.cols(),
              static_cast<double>(y.norm()));
  std::printf("max |attn - reference| = %.3g\n", worst);
  // Inputs and outputs are O(1): a float kernel is within a few hundred ulps of it.
  return worst <= 1e-4 ? 0 : 1;
}
