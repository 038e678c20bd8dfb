// With umbrella_b.cpp: two translation units that include the umbrella header, linked
// into one executable. A header function that is not inline, constexpr or a template
// would be defined in both and fail the link.

#include <diffattn/diffattn.hpp>

#include <gtest/gtest.h>

namespace diffattn_test {

// Defined in umbrella_b.cpp.
double umbrella_b_output_sum();

double umbrella_a_output_sum() {
  diffattn::Tensor<float, 4> q({1, 1, 2, 2}, 0.5f), k({1, 1, 3, 2}, 0.25f), v({1, 1, 3, 2}, 1.0f);
  diffattn::Tensor<float, 4> out({1, 1, 2, 2});
  diffattn::softmax_attention(q, k, v, out.view());
  double sum = 0;
  for (diffattn::index_t i = 0; i < out.size(); ++i) sum += out.data()[i];
  return sum + diffattn::lambda_init(1);
}

}  // namespace diffattn_test

TEST(Umbrella, TwoTranslationUnitsLinkAndAgree) {
  // Every value row is all ones, so each of the 4 outputs is 1 (up to float rounding of
  // the 1/3 weights); λ_init(1) = 0.2. The fast kernel (a) and the reference (b) agree
  // to a few float ulps, far inside 1e-5.
  EXPECT_NEAR(diffattn_test::umbrella_a_output_sum(), 4.2, 1e-5);
  EXPECT_NEAR(diffattn_test::umbrella_a_output_sum(), diffattn_test::umbrella_b_output_sum(), 1e-5);
}
