// A fixed-pattern Conv2d through the direct sparse kernel equals the masked-dense reference: forward, input
// gradient, value gradient, and several SGD steps on the values (momentum, weight decay) — at densities
// around the auto crossover, with and without bias, stride 1 and 2.
#include <gtest/gtest.h>

#include "engine/nn.h"
#include "engine/optim.h"
#include "engine/sparse.h"

using namespace sparrow;

namespace {
struct ModeGuard {
  SparseKernelMode saved = sparse_kernel_mode();
  ~ModeGuard() { set_sparse_kernel_mode(saved); }
};

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) scale = std::max(scale, double(std::fabs(b[i])));
  EXPECT_GT(scale, 0.0) << "all-zero reference";
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - b[i]) / scale);
  return worst;
}

struct Case {
  int cin, cout, k, stride, pad;
  bool bias;
  double density;
};
}  // namespace

class SparseConvLayer : public ::testing::TestWithParam<Case> {};

TEST_P(SparseConvLayer, SparseKernelEqualsMaskedDenseThroughTraining) {
  const Case c = GetParam();
  ModeGuard guard;
  Rng rng(1);
  auto make = [&](SparseKernelMode mode) {
    Rng r(5);
    auto conv = std::make_shared<Conv2d>(c.cin, c.cout, c.k, c.stride, c.pad, c.bias, r);
    Rng mr(9);
    Tensor mask = Tensor::empty(conv->weight.shape());
    for (int64_t i = 0; i < mask.numel(); ++i) mask.data<float>()[i] = mr.uniform() < c.density ? 1.f : 0.f;
    conv->make_sparse(mask);
    set_sparse_kernel_mode(mode);
    return conv;
  };
  auto sparse = make(SparseKernelMode::On);
  auto dense = make(SparseKernelMode::Off);
  ASSERT_TRUE(sparse->is_sparse());
  Sgd os(sparse->parameters(), {0.05, 0.9, 0.0, 5e-4, true}), od(dense->parameters(), {0.05, 0.9, 0.0, 5e-4, true});
  for (int step = 0; step < 4; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    Tensor x = Tensor::randn({3, c.cin, 9, 7}, rng);
    Tensor gy;
    Tensor xs = x.clone().set_requires_grad(true), xd = x.clone().set_requires_grad(true);
    set_sparse_kernel_mode(SparseKernelMode::On);
    ASSERT_TRUE(sparse->uses_sparse_kernel(Device::CPU));
    Tensor ys = sparse->forward(xs);
    set_sparse_kernel_mode(SparseKernelMode::Off);
    ASSERT_FALSE(dense->uses_sparse_kernel(Device::CPU));
    Tensor yd = dense->forward(xd);
    EXPECT_LE(max_rel(ys.to_vector<float>(), yd.to_vector<float>()), 1e-5);
    gy = Tensor::randn(ys.shape(), rng);
    os.zero_grad();
    od.zero_grad();
    ys.backward(gy);
    yd.backward(gy);
    EXPECT_LE(max_rel(xs.grad().to_vector<float>(), xd.grad().to_vector<float>()), 1e-5);
    const auto ps = sparse->parameters(), pd = dense->parameters();
    for (size_t i = 0; i < ps.size(); ++i) {
      if (c.density > 0) {
        EXPECT_LE(max_rel(ps[i].grad().to_vector<float>(), pd[i].grad().to_vector<float>()), 1e-5) << i;
      }
    }
    os.step();
    od.step();
  }
  EXPECT_LE(max_rel(sparse->dense_weight().to_vector<float>(), dense->dense_weight().to_vector<float>()), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Layers, SparseConvLayer,
                         ::testing::Values(Case{16, 16, 3, 1, 1, false, 0.1}, Case{5, 7, 3, 2, 1, true, 0.35},
                                           Case{8, 12, 1, 1, 0, false, 0.5}, Case{3, 4, 3, 1, 0, true, 0.05},
                                           Case{6, 6, 3, 2, 0, false, 0.02}));

TEST(SparseKernelMode, AutoFollowsTheCrossover) {
  ModeGuard guard;
  Rng r(1);
  Conv2d conv(4, 4, 3, 1, 1, false, r);
  Tensor mask = Tensor::zeros(conv.weight.shape());
  for (int64_t i = 0; i < mask.numel(); i += 4) mask.data<float>()[i] = 1.f;  // density 0.25
  conv.make_sparse(mask);
  set_sparse_kernel_mode(SparseKernelMode::Auto);
  EXPECT_TRUE(conv.uses_sparse_kernel(Device::CPU));
  set_sparse_kernel_crossover(0.2);
  EXPECT_FALSE(conv.uses_sparse_kernel(Device::CPU));
  set_sparse_kernel_crossover(0.4);
  set_sparse_kernel_mode(SparseKernelMode::Off);
  EXPECT_FALSE(conv.uses_sparse_kernel(Device::CPU));
  EXPECT_THROW(parse_sparse_kernel_mode("fast"), Error);
}
