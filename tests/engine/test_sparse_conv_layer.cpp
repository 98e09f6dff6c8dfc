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
  ~ModeGuard() {
    set_sparse_kernel_mode(saved);
    clear_sparse_kernel_crossover();
  }
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

// A conv layer of the given shape with every `keep_every`-th weight kept.
std::unique_ptr<Conv2d> sparse_conv_layer(int cin, int cout, int k, int stride, int keep_every) {
  Rng r(1);
  auto conv = std::make_unique<Conv2d>(cin, cout, k, stride, k / 2, false, r);
  Tensor mask = Tensor::zeros(conv->weight.shape());
  for (int64_t i = 0; i < mask.numel(); i += keep_every) mask.data<float>()[i] = 1.f;
  conv->make_sparse(mask);
  return conv;
}

TEST(SparseKernelMode, AutoFollowsTheCrossover) {
  ModeGuard guard;
  set_sparse_kernel_mode(SparseKernelMode::Auto);
  // The measured table: 3×3 stride-1 layers with few inputs per output, and those on maps 8 or 16 wide,
  // take the sparse kernel at higher densities than the general 0.35.
  EXPECT_EQ(sparse_kernel_crossover(3, 3, 1), 1.0);
  EXPECT_EQ(sparse_kernel_crossover(16, 3, 1, 32), 1.0);
  EXPECT_EQ(sparse_kernel_crossover(32, 3, 1), 0.35);  // width not known
  EXPECT_EQ(sparse_kernel_crossover(32, 3, 1, 16), 0.9);
  EXPECT_EQ(sparse_kernel_crossover(64, 3, 1, 8), 0.65);
  EXPECT_EQ(sparse_kernel_crossover(128, 3, 1, 8), 0.55);
  EXPECT_EQ(sparse_kernel_crossover(128, 3, 1, 16), 0.5);
  EXPECT_EQ(sparse_kernel_crossover(256, 3, 1, 8), 0.5);
  EXPECT_EQ(sparse_kernel_crossover(128, 3, 1, 32), 0.35);
  EXPECT_EQ(sparse_kernel_crossover(512, 3, 1, 4), 0.35);
  EXPECT_EQ(sparse_kernel_crossover(16, 3, 2, 16), 0.35);
  // Fashion-MNIST's 28×28 ResNet-20: stem and stage 1 on the half-row strips, stages 2 and 3 on the padded
  // strips.
  EXPECT_EQ(sparse_kernel_crossover(1, 3, 1, 28), 1.0);
  EXPECT_EQ(sparse_kernel_crossover(16, 3, 1, 28), 1.0);
  EXPECT_EQ(sparse_kernel_crossover(32, 3, 1, 14), 0.7);
  EXPECT_EQ(sparse_kernel_crossover(64, 3, 1, 7), 0.55);
  EXPECT_EQ(sparse_kernel_crossover(128, 3, 1, 7), 0.35);
  EXPECT_EQ(sparse_kernel_crossover(16, 1, 1, 16), 0.35);
  auto c4 = sparse_conv_layer(4, 4, 3, 1, 1);  // density 1, 36 inputs per output
  EXPECT_TRUE(c4->uses_sparse_kernel(Device::CPU));
  EXPECT_FALSE(c4->uses_sparse_kernel(Device::CUDA));  // CPU kernels only
  // Density 0.5, 576 inputs per output: the sparse kernel on 8-wide maps (the layer keeps the width of its
  // last input), the dense path on 32-wide ones.
  auto c64 = sparse_conv_layer(64, 8, 3, 1, 2);
  EXPECT_FALSE(c64->uses_sparse_kernel(Device::CPU));
  Rng xr(2);
  c64->forward(Tensor::randn({1, 64, 8, 8}, xr));
  EXPECT_EQ(c64->last_input_width, 8);
  EXPECT_TRUE(c64->uses_sparse_kernel(Device::CPU));
  c64->forward(Tensor::randn({1, 64, 32, 32}, xr));
  EXPECT_FALSE(c64->uses_sparse_kernel(Device::CPU));
  auto c128 = sparse_conv_layer(128, 4, 3, 1, 2);  // density 0.5, 1152 inputs per output
  EXPECT_FALSE(c128->uses_sparse_kernel(Device::CPU));
  auto s2 = sparse_conv_layer(16, 8, 3, 2, 2);  // density 0.5, stride 2
  EXPECT_FALSE(s2->uses_sparse_kernel(Device::CPU));
  // A set crossover applies to every layer until cleared.
  auto quarter = sparse_conv_layer(4, 4, 3, 1, 4);  // density 0.25
  set_sparse_kernel_crossover(0.2);
  EXPECT_FALSE(quarter->uses_sparse_kernel(Device::CPU));
  EXPECT_FALSE(c4->uses_sparse_kernel(Device::CPU));
  set_sparse_kernel_crossover(0.6);
  EXPECT_TRUE(c128->uses_sparse_kernel(Device::CPU));
  clear_sparse_kernel_crossover();
  EXPECT_TRUE(quarter->uses_sparse_kernel(Device::CPU));
  EXPECT_FALSE(c128->uses_sparse_kernel(Device::CPU));
  EXPECT_THROW(set_sparse_kernel_crossover(1.5), Error);
  set_sparse_kernel_mode(SparseKernelMode::Off);
  EXPECT_FALSE(quarter->uses_sparse_kernel(Device::CPU));
  set_sparse_kernel_mode(SparseKernelMode::On);
  EXPECT_TRUE(c128->uses_sparse_kernel(Device::CPU));
  EXPECT_THROW(parse_sparse_kernel_mode("fast"), Error);
}

// conv_bn_relu hands the sparse kernel's output moments to the batch norm (no statistics pass): output,
// running statistics and every gradient agree with the modules run one by one, with and without a
// residual; and the moments are reported only when the sparse kernel runs.
TEST(SparseConvLayer, ConvBnReluWithMomentsMatchesSeparateModules) {
  ModeGuard guard;
  set_sparse_kernel_mode(SparseKernelMode::On);
  for (int residual = 0; residual < 2; ++residual) {
    SCOPED_TRACE(residual ? "residual" : "plain");
    auto build = [] {
      Rng r(5);
      auto conv = std::make_shared<Conv2d>(6, 6, 3, 1, 1, false, r);
      Rng mr(9);
      Tensor mask = Tensor::empty(conv->weight.shape());
      for (int64_t i = 0; i < mask.numel(); ++i) mask.data<float>()[i] = mr.uniform() < 0.2 ? 1.f : 0.f;
      conv->make_sparse(mask);
      return std::make_pair(conv, std::make_shared<BatchNorm2d>(6));
    };
    auto [c1, b1] = build();
    auto [c2, b2] = build();
    Rng rng(3);
    const Tensor x0 = Tensor::randn({4, 6, 9, 7}, rng, 0.5, 2.0), r0 = Tensor::randn({4, 6, 9, 7}, rng);
    const Tensor gy = Tensor::randn({4, 6, 9, 7}, rng);
    Tensor x1 = x0.clone().set_requires_grad(true), x2 = x0.clone().set_requires_grad(true);
    Tensor ra = r0.clone().set_requires_grad(true), rb = r0.clone().set_requires_grad(true);
    Tensor y1 = conv_bn_relu(*c1, *b1, x1, residual ? ra : Tensor());
    Tensor y2 = b2->forward_relu(c2->forward(x2), residual ? rb : Tensor());
    EXPECT_LE(max_rel(y1.to_vector<float>(), y2.to_vector<float>()), 1e-5);
    EXPECT_LE(max_rel(b1->running_mean.to_vector<float>(), b2->running_mean.to_vector<float>()), 1e-6);
    EXPECT_LE(max_rel(b1->running_var.to_vector<float>(), b2->running_var.to_vector<float>()), 1e-6);
    y1.backward(gy);
    y2.backward(gy);
    EXPECT_LE(max_rel(x1.grad().to_vector<float>(), x2.grad().to_vector<float>()), 1e-4);
    EXPECT_LE(max_rel(c1->sparse().values.grad().to_vector<float>(), c2->sparse().values.grad().to_vector<float>()), 1e-4);
    EXPECT_LE(max_rel(b1->weight.grad().to_vector<float>(), b2->weight.grad().to_vector<float>()), 1e-4);
    if (residual) {
      EXPECT_EQ(ra.grad().to_vector<float>(), rb.grad().to_vector<float>());
    }
  }
  // Moments only when the sparse kernel produced the output.
  Rng r(1);
  Conv2d conv(4, 4, 3, 1, 1, false, r);
  Tensor x = Tensor::randn({2, 4, 5, 5}, r);
  ChannelMoments m;
  m.count = 99;
  set_sparse_kernel_mode(SparseKernelMode::Off);  // a dense layer on the GEMM path
  conv.forward(x, &m);
  EXPECT_EQ(m.count, 0);
  set_sparse_kernel_mode(SparseKernelMode::Auto);  // the same layer on the direct kernel (36 inputs per output)
  ASSERT_TRUE(conv.uses_direct_dense_kernel(Device::CPU));
  conv.forward(x, &m);
  EXPECT_EQ(m.count, 2 * 5 * 5);
  m.count = 99;
  Tensor mask = Tensor::ones(conv.weight.shape());
  for (int64_t i = 0; i < mask.numel(); i += 2) mask.data<float>()[i] = 0.f;
  conv.make_sparse(mask);
  ASSERT_TRUE(conv.uses_sparse_kernel(Device::CPU));
  conv.forward(x, &m);
  EXPECT_EQ(m.count, 2 * 5 * 5);
  EXPECT_EQ(m.mean.size(), 4u);
}

// A dense layer whose shape the direct kernel wins at every density runs it with the full pattern in mode
// Auto; output, input gradient and weight / bias gradients equal the GEMM path's through SGD steps, with an
// odd batch and map. Layers with many inputs per output, strided ones and other modes keep the GEMM path.
TEST(SparseKernelMode, DenseLayerOnTheDirectKernelMatchesTheGemmPath) {
  ModeGuard guard;
  set_sparse_kernel_mode(SparseKernelMode::Auto);
  Rng r1(5), r2(5), rng(3);
  Conv2d direct(16, 12, 3, 1, 1, true, r1), gemm(16, 12, 3, 1, 1, true, r2);
  ASSERT_TRUE(direct.uses_direct_dense_kernel(Device::CPU));
  EXPECT_FALSE(direct.uses_direct_dense_kernel(Device::CUDA));
  EXPECT_FALSE(direct.uses_sparse_kernel(Device::CPU));  // not a sparse layer
  {
    Rng r(1);
    EXPECT_FALSE(Conv2d(32, 8, 3, 1, 1, false, r).uses_direct_dense_kernel(Device::CPU));  // 288 inputs
    EXPECT_FALSE(Conv2d(3, 8, 3, 2, 1, false, r).uses_direct_dense_kernel(Device::CPU));   // stride 2
    EXPECT_FALSE(Conv2d(3, 8, 1, 1, 0, false, r).uses_direct_dense_kernel(Device::CPU));   // 1×1
  }
  Sgd od(direct.parameters(), {0.05, 0.9, 0.0, 5e-4, true}), og(gemm.parameters(), {0.05, 0.9, 0.0, 5e-4, true});
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    Tensor x = Tensor::randn({3, 16, 11, 9}, rng);
    Tensor xd = x.clone().set_requires_grad(true), xg = x.clone().set_requires_grad(true);
    set_sparse_kernel_mode(SparseKernelMode::Auto);
    Tensor yd = direct.forward(xd);
    set_sparse_kernel_mode(SparseKernelMode::Off);
    ASSERT_FALSE(gemm.uses_direct_dense_kernel(Device::CPU));
    Tensor yg = gemm.forward(xg);
    EXPECT_LE(max_rel(yd.to_vector<float>(), yg.to_vector<float>()), 1e-5);
    const Tensor gy = Tensor::randn(yd.shape(), rng);
    od.zero_grad();
    og.zero_grad();
    yd.backward(gy);
    yg.backward(gy);
    EXPECT_LE(max_rel(xd.grad().to_vector<float>(), xg.grad().to_vector<float>()), 1e-5);
    EXPECT_LE(max_rel(direct.weight.grad().to_vector<float>(), gemm.weight.grad().to_vector<float>()), 1e-5);
    EXPECT_LE(max_rel(direct.bias.grad().to_vector<float>(), gemm.bias.grad().to_vector<float>()), 1e-5);
    od.step();
    og.step();
  }
  EXPECT_LE(max_rel(direct.weight.to_vector<float>(), gemm.weight.to_vector<float>()), 1e-5);
}
