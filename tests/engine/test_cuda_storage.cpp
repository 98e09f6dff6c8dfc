// CUDA plumbing: device storage round trips and the elementwise kernels through the tensor API.
// Skips with the probe's reason when there is no device (this test never touches CUDA before the probe).
#include <gtest/gtest.h>

#include <cmath>

#include "engine/ops.h"

using namespace sparrow;

#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << cuda_unavailable_reason()

TEST(CudaStorage, RoundTripAndSlices) {
  SKIP_WITHOUT_CUDA();
  Tensor h = Tensor::from_vector<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor d = h.to(Device::CUDA);
  EXPECT_EQ(d.device(), Device::CUDA);
  EXPECT_EQ(d.to(Device::CPU).to_vector<float>(), h.to_vector<float>());
  EXPECT_EQ(d.slice_batch(1, 2).to(Device::CPU).to_vector<float>(), (std::vector<float>{4, 5, 6}));
  Tensor z = Tensor::full({1000}, 2.5, DType::F32, Device::CUDA);
  for (float v : z.to_vector<float>()) ASSERT_EQ(v, 2.5f);
}

TEST(CudaStorage, ElementwiseOpsMatchCpuWithGradients) {
  SKIP_WITHOUT_CUDA();
  Rng rng(1);
  Tensor a = Tensor::randn({3, 1001}, rng), b = Tensor::randn({3, 1001}, rng);
  Tensor ad = a.to(Device::CUDA).set_requires_grad(true), bd = b.to(Device::CUDA).set_requires_grad(true);
  Tensor ac = a.clone().set_requires_grad(true), bc = b.clone().set_requires_grad(true);
  Tensor yd = relu(add(mul(ad, bd), scale(ad, 0.5)));
  Tensor yc = relu(add(mul(ac, bc), scale(ac, 0.5)));
  EXPECT_EQ(yd.to_vector<float>(), yc.to_vector<float>());
  Tensor g = Tensor::randn({3, 1001}, rng);
  yd.backward(g.to(Device::CUDA));
  yc.backward(g);
  const auto gd = ad.grad().to_vector<float>(), gc = ac.grad().to_vector<float>();
  for (size_t i = 0; i < gc.size(); ++i) ASSERT_NEAR(gd[i], gc[i], 1e-6f * (1 + std::fabs(gc[i]))) << i;
}
