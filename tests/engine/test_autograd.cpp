// Autograd mechanics: accumulation through shared inputs, leaf gradients across backward calls,
// NoGradGuard, graph release, and errors.
#include <gtest/gtest.h>

#include "engine/ops.h"

using namespace sparrow;

TEST(Autograd, ProductRuleAndSharedInput) {
  Tensor a = Tensor::from_vector<double>({3}, {1, 2, 3}).set_requires_grad(true);
  Tensor b = Tensor::from_vector<double>({3}, {4, 5, 6}).set_requires_grad(true);
  // L = Σ a·b + Σ a·a  ->  dL/da = b + 2a, dL/db = a
  Tensor loss = add(sum(mul(a, b)), sum(mul(a, a)));
  EXPECT_DOUBLE_EQ(loss.item(), 32 + 14);
  loss.backward();
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{6, 9, 12}));
  EXPECT_EQ(b.grad().to_vector<double>(), (std::vector<double>{1, 2, 3}));
}

TEST(Autograd, LeafGradientsAccumulateAcrossBackwardCalls) {
  Tensor a = Tensor::from_vector<double>({2}, {1, -1}).set_requires_grad(true);
  sum(scale(a, 3)).backward();
  sum(scale(a, 2)).backward();
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{5, 5}));
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor a = Tensor::from_vector<double>({2}, {1, 2}).set_requires_grad(true);
  Tensor y;
  {
    NoGradGuard ng;
    y = mul(a, a);
  }
  EXPECT_EQ(y.grad_fn(), nullptr);
  EXPECT_TRUE(grad_enabled());
  EXPECT_THROW(sum(y).backward(), Error);
}

TEST(Autograd, GraphIsReleasedAfterBackward) {
  Tensor a = Tensor::from_vector<double>({2}, {1, 2}).set_requires_grad(true);
  Tensor h = mul(a, a);
  Tensor loss = sum(h);
  std::weak_ptr<TensorImpl> saved = a.impl_ptr();
  loss.backward();
  ASSERT_NE(h.grad_fn(), nullptr);
  EXPECT_TRUE(h.grad_fn()->inputs.empty()) << "nodes must drop their inputs after backward";
  EXPECT_FALSE(h.grad_fn()->backward) << "nodes must drop their closures after backward";
}

TEST(Autograd, DeepChainDoesNotOverflow) {
  Tensor a = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  Tensor h = a;
  for (int i = 0; i < 20000; ++i) h = scale(h, 1.0);
  sum(h).backward();
  EXPECT_DOUBLE_EQ(a.grad().item(), 1.0);
}

TEST(Autograd, DiamondGraphSumsBothPaths) {
  Tensor a = Tensor::from_vector<double>({2}, {2, 3}).set_requires_grad(true);
  Tensor h = scale(a, 2);                  // shared intermediate
  Tensor loss = sum(add(mul(h, h), h));    // L = Σ 4a² + 2a -> dL/da = 8a + 2
  loss.backward();
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{18, 26}));
}

TEST(Autograd, OnlyRequestedGradientsAreComputed) {
  Tensor x = Tensor::ones({1, 2, 4, 4}, DType::F64);  // data: no gradient wanted
  Tensor w = Tensor::ones({3, 2, 3, 3}, DType::F64).set_requires_grad(true);
  sum(conv2d(x, w, Tensor(), 1, 1)).backward();
  EXPECT_FALSE(x.grad().defined());
  ASSERT_TRUE(w.grad().defined());
  // Each weight tap sees the count of in-range positions: centre tap 16, corner taps 9.
  const auto g = w.grad().to_vector<double>();
  EXPECT_DOUBLE_EQ(g[4], 16.0);
  EXPECT_DOUBLE_EQ(g[0], 9.0);
}
