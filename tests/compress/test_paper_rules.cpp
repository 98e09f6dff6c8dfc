// The papers' small rules, each against hand-computed numbers: PDD's gate values and STE gradient at the
// issue's probe points, TGOSP's bias-corrected EMA and its threshold rule (ties included), and that FC and
// BN are not candidates unless asked.
#include <gtest/gtest.h>

#include "compress/gates.h"
#include "compress/score_accumulator.h"
#include "models/models.h"

using namespace sparrow;

TEST(PddGate, ValuesAndStraightThroughGradientAtTheProbePoints) {
  const std::vector<double> m{-1.5, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.5};
  // g = (sign(m)+1)/2; ∂g/∂m = ½·max(0, 2 − 2|m|)
  const std::vector<double> g{0, 0, 0, 0.5, 1, 1, 1};
  const std::vector<double> dg{0, 0.5, 0.999, 1.0, 0.999, 0.5, 0};
  Tensor mt = Tensor::from_vector<double>({7}, m).set_requires_grad(true);
  // x = 1 and dL/dy = 1 over N·H·W = 2·1·3 = 6 positions per channel: ∂L/∂m_c = 6·∂g/∂m, ∂L/∂x = g.
  Tensor x = Tensor::ones({2, 7, 1, 3}, DType::F64).set_requires_grad(true);
  Tensor y = channel_gate(x, mt);
  sum(y).backward();
  const auto yv = y.to_vector<double>(), dm = mt.grad().to_vector<double>(), dx = x.grad().to_vector<double>();
  for (int c = 0; c < 7; ++c) {
    SCOPED_TRACE(::testing::Message() << "m = " << m[size_t(c)]);
    EXPECT_EQ(yv[size_t(c * 3)], g[size_t(c)]);
    EXPECT_NEAR(dm[size_t(c)], 6 * dg[size_t(c)], 1e-12);
    EXPECT_EQ(dx[size_t(c * 3)], g[size_t(c)]);
  }
}

TEST(TgospRules, BiasCorrectedEmaByHand) {
  ScoreAccumulator acc(ScoreAccumulator::Kind::Ema, 0.9, true);
  for (double v : {1.0, 2.0, 3.0}) acc.add({Tensor::full({1}, v, DType::F64)});
  // S1 = 0.1, S2 = 0.09 + 0.2 = 0.29, S3 = 0.261 + 0.3 = 0.561; corrected by 1 − 0.9³ = 0.271.
  EXPECT_NEAR(acc.value()[0].item(), 0.561 / 0.271, 1e-12);
  ScoreAccumulator one(ScoreAccumulator::Kind::Ema, 0.9, true);
  one.add({Tensor::full({1}, 4.0, DType::F64)});
  EXPECT_NEAR(one.value()[0].item(), 4.0, 1e-12) << "bias correction makes the first value exact";
}

TEST(TgospRules, ThresholdKeepsExactlyTheScoresAboveTheKthSmallest) {
  ModelPtr m = make_model({"resnet8", 10, 1, {2, 2, 2, 2}, ""}, 1);
  PrunableSpec convs_only;
  convs_only.linear = false;
  auto params = prunable_params(*m, convs_only);
  for (auto& p : params) EXPECT_NE(p.name.rfind("fc", 0), 0u) << "FC must not be a candidate by default";
  PrunableSpec with_fc;
  EXPECT_EQ(prunable_params(*m, with_fc).size(), params.size() + 1) << "--prune-linear adds exactly the classifier";
  // Scores 0..N-1 shuffled across layers, with a block of ties at the threshold.
  Scores scores;
  int64_t n = 0, next = 0;
  for (auto& p : params) n += p.weight().numel();
  for (auto& p : params) {
    Tensor s = Tensor::empty(p.weight().shape(), DType::F64);
    for (int64_t i = 0; i < s.numel(); ++i) s.data<double>()[i] = double((next++ * 37) % n);
    scores.push_back(s);
  }
  const double sparsity = 0.7;
  const int64_t k = int64_t(std::floor(sparsity * double(n)));  // threshold = score k−1 (0-based)
  PruneResult r = prune_above_threshold(params, scores, sparsity);
  int64_t kept = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto s = scores[i].to_vector<double>(), mk = r.masks.masks[i].to_vector<double>();
    for (size_t j = 0; j < s.size(); ++j) {
      EXPECT_EQ(mk[j] != 0, s[j] > double(k - 1)) << params[i].name << " index " << j << " score " << s[j];
      kept += mk[j] != 0;
    }
  }
  EXPECT_EQ(kept, n - k);
  EXPECT_EQ(r.kept, n - k);
  // Ties at the threshold all go: every score equal -> nothing above the k-th smallest survives.
  Scores flat;
  for (auto& p : params) flat.push_back(Tensor::full(p.weight().shape(), 1.0, DType::F64));
  PruneResult t = prune_above_threshold(params, flat, 0.5);
  EXPECT_EQ(t.kept, 0);
  EXPECT_EQ(t.sparsity, 1.0);
  EXPECT_EQ(prune_above_threshold(params, flat, 0.0).kept, n) << "sparsity 0 keeps everything";
}
