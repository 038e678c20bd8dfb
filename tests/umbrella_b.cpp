// The second translation unit of the umbrella-header link test; see umbrella_a.cpp.

#include <diffattn/diffattn.hpp>

namespace diffattn_test {

double umbrella_b_output_sum() {
  diffattn::Tensor<float, 4> q({1, 1, 2, 2}, 0.5f), k({1, 1, 3, 2}, 0.25f), v({1, 1, 3, 2}, 1.0f);
  diffattn::Tensor<float, 4> out({1, 1, 2, 2});
  diffattn::reference::softmax_attention(q, k, v, out.view());
  double sum = 0;
  for (diffattn::index_t i = 0; i < out.size(); ++i) sum += out.data()[i];
  return sum + diffattn::lambda_init(1);
}

}  // namespace diffattn_test
