// Distillation losses: kd_loss gradients by finite differences in double for every mode, values against
// an independent composition, and the DLB / CS-KD / PS-KD objects on hand-checked small cases.
#include <gtest/gtest.h>

#include <cmath>

#include "compress/self_distill.h"
#include "tests/engine/grad_check.h"

using namespace sparrow;
using sparrow::testing::check_gradients;
using sparrow::testing::rand_input;

namespace {
// Independent reference: T²·Σ_rows KL(p‖q)/B with p = softmax(a/T), q = softmax(b/T), in plain loops.
double kl_rows(const std::vector<double>& a, const std::vector<double>& b, int rows, int cols, double T) {
  double total = 0;
  for (int r = 0; r < rows; ++r) {
    std::vector<double> p(static_cast<size_t>(cols)), q(static_cast<size_t>(cols));
    double sa = 0, sb = 0;
    for (int j = 0; j < cols; ++j) {
      p[size_t(j)] = std::exp(a[size_t(r * cols + j)] / T);
      q[size_t(j)] = std::exp(b[size_t(r * cols + j)] / T);
      sa += p[size_t(j)];
      sb += q[size_t(j)];
    }
    for (int j = 0; j < cols; ++j) {
      const double pj = p[size_t(j)] / sa, qj = q[size_t(j)] / sb;
      total += pj * (std::log(pj) - std::log(qj));
    }
  }
  return T * T * total / rows;
}

double ce_rows(const std::vector<double>& z, const std::vector<int64_t>& y, int rows, int cols) {
  double total = 0;
  for (int r = 0; r < rows; ++r) {
    double s = 0;
    for (int j = 0; j < cols; ++j) s += std::exp(z[size_t(r * cols + j)]);
    total += std::log(s) - z[size_t(r * cols) + size_t(y[size_t(r)])];
  }
  return total / rows;
}

class TinyNet : public Module {
 public:
  explicit TinyNet(uint64_t seed) {
    Rng rng(seed);
    fc = register_module("fc", std::make_shared<Linear>(6, 4, true, rng));
  }
  Tensor forward(const Tensor& x) override { return fc->forward(flatten(x)); }
  std::shared_ptr<Linear> fc;
};

Tensor images(int n, uint64_t seed) {
  Rng rng(seed);
  return Tensor::randn({n, 1, 2, 3}, rng);
}
}  // namespace

TEST(KdLoss, ValuesMatchAnIndependentComposition) {
  Tensor zs = rand_input({3, 5}, 1, -3, 3), zt = rand_input({3, 5}, 2, -3, 3);
  Tensor y = Tensor::from_vector<int64_t>({3}, {4, 0, 2});
  const auto s = zs.to_vector<double>(), t = zt.to_vector<double>();
  const double T = 2.5;
  EXPECT_NEAR(kd_loss(zs, zt, {T, 1, 0, LogitNorm::none}).item(), kl_rows(t, s, 3, 5, T), 1e-12);
  EXPECT_NEAR(kd_loss(zs, zt, {T, 1, 1, LogitNorm::none}).item(), kl_rows(s, t, 3, 5, T), 1e-12);
  const double mixed = 0.3 * kl_rows(s, t, 3, 5, T) + 0.7 * kl_rows(t, s, 3, 5, T);
  EXPECT_NEAR(kd_loss(zs, zt, {T, 0.6, 0.3, LogitNorm::none}, y).item(),
              0.4 * ce_rows(s, {4, 0, 2}, 3, 5) + 0.6 * mixed, 1e-12);
  EXPECT_NEAR(kd_loss(zs, zs.detach(), {T, 1, 0.5, LogitNorm::before_T}).item(), 0.0, 1e-14);
  // Named wrappers are the same op with their β.
  EXPECT_NEAR((KDLoss{T, 1.0})(zs, zt).item(), kl_rows(t, s, 3, 5, T), 1e-12);
  EXPECT_NEAR((ReverseKD{T, 1.0})(zs, zt).item(), kl_rows(s, t, 3, 5, T), 1e-12);
}

TEST(KdLoss, GradientsMatchFiniteDifferencesInEveryMode) {
  Tensor zt = rand_input({4, 7}, 3, -2, 2).detach();
  Tensor y = Tensor::from_vector<int64_t>({4}, {1, 6, 0, 3});
  for (double beta : {0.0, 1.0, 0.4})
    for (LogitNorm norm : {LogitNorm::none, LogitNorm::before_T, LogitNorm::after_T})
      for (bool with_labels : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "beta " << beta << " norm " << logit_norm_name(norm) << " labels "
                                          << with_labels);
        KlParams p{3.0, 0.7, beta, norm};
        check_gradients([&](const std::vector<Tensor>& v) { return kd_loss(v[0], zt, p, with_labels ? y : Tensor()); },
                        {rand_input({4, 7}, 4, -2, 2)}, 1e-6, 1e-8, 1e-5);
      }
}

TEST(SoftCrossEntropy, EqualsCrossEntropyForOneHotTargets) {
  Tensor z = rand_input({3, 4}, 5);
  Tensor y = Tensor::from_vector<int64_t>({3}, {2, 0, 3});
  Tensor t = Tensor::zeros({3, 4}, DType::F64);
  for (int i = 0; i < 3; ++i) t.data<double>()[i * 4 + y.data<int64_t>()[i]] = 1;
  EXPECT_NEAR(soft_cross_entropy(z, t).item(), cross_entropy(z, y).item(), 1e-12);
}

TEST(Dlb, FirstStepIsCeThenDistilsFromThePreviousBatch) {
  TinyNet net(1);
  Dlb dlb(3.0, 1.0);
  SdInputs s1{images(3, 1), images(3, 2), Tensor(), Tensor::from_vector<int64_t>({3}, {0, 1, 2}), Tensor(), 0, 1};
  SdStep a = dlb.step(net, s1);
  EXPECT_NEAR(a.loss.item(), cross_entropy(net.forward(s1.x), s1.y).item(), 1e-6);
  ASSERT_TRUE(dlb.has_previous());
  const auto z_prev = a.logits.to_vector<double>();

  SdInputs s2{images(2, 3), images(2, 4), Tensor(), Tensor::from_vector<int64_t>({2}, {3, 1}), Tensor(), 0, 1};
  SdStep b = dlb.step(net, s2);
  // Independent: CE over the 5 samples (2 fresh view 0, 3 previous view 1) + T²·KL(p_prev ‖ p_rep).
  const auto fresh = net.forward(s2.x).to_vector<double>(), rep = net.forward(s1.x2).to_vector<double>();
  std::vector<double> all(fresh);
  all.insert(all.end(), rep.begin(), rep.end());
  const double want = ce_rows(all, {3, 1, 0, 1, 2}, 5, 4) + kl_rows(z_prev, rep, 3, 4, 3.0);
  EXPECT_NEAR(b.loss.item(), want, 1e-5);
  EXPECT_EQ(b.logits.shape(), (Shape{2, 4}));
  // The stored batch is the new batch's second view.
  EXPECT_EQ(dlb.state().at("dlb.prev_x").to_vector<float>(), s2.x2.to_vector<float>());
}

TEST(CsKd, AddsTemperedKlToThePartnerPrediction) {
  TinyNet net(2);
  CsKd cskd(4.0, 1.0);
  SdInputs in{images(3, 5), Tensor(), images(3, 6), Tensor::from_vector<int64_t>({3}, {2, 2, 0}), Tensor(), 0, 1};
  SdStep s = cskd.step(net, in);
  const auto z = net.forward(in.x).to_vector<double>(), zp = net.forward(in.x_pair).to_vector<double>();
  EXPECT_NEAR(s.loss.item(), ce_rows(z, {2, 2, 0}, 3, 4) + kl_rows(zp, z, 3, 4, 4.0), 1e-5);
}

TEST(PsKd, TargetMixesOneHotWithTheTableThenUpdatesIt) {
  TinyNet net(3);
  PsKd ps(0.8);
  ps.init_table({0, 1, 2, 3, 1}, 4);
  EXPECT_EQ(ps.table().to_vector<float>()[1 * 4 + 1], 1.f);
  SdInputs in{images(2, 7), Tensor(), Tensor(), Tensor::from_vector<int64_t>({2}, {1, 3}),
              Tensor::from_vector<int64_t>({2}, {4, 3}), 1, 4};
  // epoch 1 of 4: α_t = 0.8·2/4 = 0.4; table rows 4 and 3 are still one-hot of their labels, so the target
  // equals the one-hot label and the loss is plain CE.
  const double ce = cross_entropy(net.forward(in.x), in.y).item();
  SdStep s = ps.step(net, in);
  EXPECT_NEAR(s.loss.item(), ce, 1e-6);
  // The table now holds softmax(z) for samples 4 and 3.
  Tensor p = softmax(net.forward(in.x));
  const auto pv = p.to_vector<float>(), tab = ps.table().to_vector<float>();
  for (int j = 0; j < 4; ++j) {
    EXPECT_NEAR(tab[4 * 4 + j], pv[size_t(j)], 1e-6);
    EXPECT_NEAR(tab[3 * 4 + j], pv[size_t(4 + j)], 1e-6);
  }
  // A second visit uses the mixed target: loss = −Σ((1−α)·onehot + α·p_old)·log softmax(z) / B.
  SdStep s2 = ps.step(net, in);
  const auto z = net.forward(in.x).to_vector<double>();
  double want = 0;
  for (int i = 0; i < 2; ++i) {
    double lse = 0;
    for (int j = 0; j < 4; ++j) lse += std::exp(z[size_t(i * 4 + j)]);
    lse = std::log(lse);
    for (int j = 0; j < 4; ++j) {
      const double onehot = j == in.y.to_vector<int64_t>()[size_t(i)] ? 1.0 : 0.0;
      want -= (0.6 * onehot + 0.4 * pv[size_t(i * 4 + j)]) * (z[size_t(i * 4 + j)] - lse);
    }
  }
  EXPECT_NEAR(s2.loss.item(), want / 2, 1e-5);
}

TEST(SdMethods, FactoryAndErrors) {
  EXPECT_STREQ(make_sd_method("dlb")->name(), "dlb");
  EXPECT_TRUE(make_sd_method("dlb")->needs_two_views());
  EXPECT_TRUE(make_sd_method("cskd")->needs_pairs());
  EXPECT_THROW(make_sd_method("born-again"), Error);
  EXPECT_THROW(kd_loss(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}), {}), Error);
}
