// SGD against hand-computed PyTorch updates (momentum, Nesterov, dampening, weight decay), masks that
// keep pruned weights at exactly zero, and the LR schedules.
#include <gtest/gtest.h>

#include "engine/optim.h"
#include "engine/ops.h"

using namespace sparrow;

namespace {
// Two steps with a constant gradient 0.5 on a scalar parameter starting at 1.
std::vector<double> two_steps(SgdConfig cfg) {
  Tensor p = Tensor::from_vector<double>({1}, {1.0}).set_requires_grad(true);
  Sgd opt({p}, cfg);
  std::vector<double> out;
  for (int i = 0; i < 2; ++i) {
    p.set_grad(Tensor::from_vector<double>({1}, {0.5}));
    opt.step();
    out.push_back(p.item());
  }
  return out;
}
}  // namespace

TEST(Sgd, MomentumWeightDecayByHand) {
  // d1 = 0.5 + 0.01·1 = 0.51, p1 = 0.949; d2 = 0.50949, buf = 0.9·0.51 + d2 = 0.96849, p2 = 0.852151
  auto v = two_steps({0.1, 0.9, 0.0, 0.01, false});
  EXPECT_NEAR(v[0], 0.949, 1e-12);
  EXPECT_NEAR(v[1], 0.852151, 1e-12);
}

TEST(Sgd, NesterovByHand) {
  // step 1: buf = 0.51, d = 0.51 + 0.9·0.51, p = 0.9031; step 2: buf = 0.968031, d = 1.3802589
  auto v = two_steps({0.1, 0.9, 0.0, 0.01, true});
  EXPECT_NEAR(v[0], 0.9031, 1e-12);
  EXPECT_NEAR(v[1], 0.76507411, 1e-12);
}

TEST(Sgd, DampeningSkipsTheFirstStepAsPyTorch) {
  auto v = two_steps({0.1, 0.9, 0.5, 0.01, false});
  EXPECT_NEAR(v[0], 0.949, 1e-12);
  EXPECT_NEAR(v[1], 0.8776255, 1e-12);
}

TEST(Sgd, PlainStepAndZeroGrad) {
  auto v = two_steps({0.2, 0.0, 0.0, 0.0, false});
  EXPECT_NEAR(v[0], 0.9, 1e-15);
  EXPECT_NEAR(v[1], 0.8, 1e-15);
  EXPECT_THROW(Sgd({}, SgdConfig{0.1, 0.0, 0.0, 0.0, true}), Error);
}

TEST(Sgd, MaskedWeightsStayExactlyZeroFor100Steps) {
  Rng rng(1);
  Tensor w = Tensor::randn({64}, rng).set_requires_grad(true);
  Tensor mask = Tensor::empty({64});
  for (int i = 0; i < 64; ++i) mask.data<float>()[i] = (i % 3 == 0) ? 0.f : 1.f;
  Sgd opt({w}, {0.05, 0.9, 0.0, 5e-4, true});
  // Momentum already built up before the mask arrives: it must not revive pruned weights.
  for (int s = 0; s < 5; ++s) {
    opt.zero_grad();
    sum(mul(w, w)).backward();
    opt.step();
  }
  opt.set_mask(w, mask);
  for (int s = 0; s < 100; ++s) {
    opt.zero_grad();
    Tensor noise = Tensor::randn({64}, rng);
    sum(mul(w, noise)).backward();
    opt.step();
    for (int i = 0; i < 64; i += 3) ASSERT_EQ(w.data<float>()[i], 0.f) << "step " << s << " index " << i;
    for (int i = 0; i < 64; i += 3) ASSERT_EQ(opt.momentum_buffers()[0].data<float>()[i], 0.f);
  }
  int nonzero = 0;
  for (int i = 0; i < 64; ++i) nonzero += w.data<float>()[i] != 0.f;
  EXPECT_EQ(nonzero, 64 - 22) << "kept weights keep training";
}

TEST(LrSchedule, MultiStepAndCosine) {
  LrSchedule m = parse_schedule("multistep:100,150", 0.1, 200);
  EXPECT_DOUBLE_EQ(m.lr_at(0), 0.1);
  EXPECT_DOUBLE_EQ(m.lr_at(99), 0.1);
  EXPECT_NEAR(m.lr_at(100), 0.01, 1e-15);
  EXPECT_NEAR(m.lr_at(150), 0.001, 1e-15);
  LrSchedule c = parse_schedule("cosine", 0.1, 10);
  EXPECT_DOUBLE_EQ(c.lr_at(0), 0.1);
  EXPECT_NEAR(c.lr_at(5), 0.05, 1e-15);
  EXPECT_NEAR(c.lr_at(10), 0.0, 1e-15);
  EXPECT_DOUBLE_EQ(parse_schedule("constant", 0.3, 5).lr_at(4), 0.3);
  EXPECT_THROW(parse_schedule("multistep:a,b", 0.1, 10), Error);
  EXPECT_THROW(parse_schedule("linear", 0.1, 10), Error);
}
