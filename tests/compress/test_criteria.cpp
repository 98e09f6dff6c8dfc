// Scoring criteria against independent computations on tiny double-precision smooth nets: SNIP against
// finite differences of the loss, GraSP's Hg against an explicit finite-difference Hessian times g,
// SynFlow against its closed form on a linear chain, the full meta-gradient against finite differences
// of the whole unrolled loss w.r.t. single mask entries; plus the accumulators.
#include <gtest/gtest.h>

#include <cmath>

#include "compress/criteria.h"
#include "compress/score_accumulator.h"
#include "models/models.h"
#include "tests/compress/compress_test_util.h"

using namespace sparrow;
using namespace sparrow::testing;

namespace {

struct Batches {
  std::vector<Tensor> x, y;
};

Batches make_batches(int count, const Shape& x_shape, int classes, uint64_t seed) {
  Batches b;
  Rng rng(seed);
  for (int i = 0; i < count; ++i) {
    b.x.push_back(Tensor::randn(x_shape, rng, 0.0, 1.0, DType::F64));
    b.y.push_back(random_labels(x_shape[0], classes, seed * 31 + uint64_t(i)));
  }
  return b;
}

LossFn ce_loss(Module& net, const Batches& b) {
  return [&net, &b](int k) { return cross_entropy(net.forward(b.x[size_t(k)]), b.y[size_t(k)]); };
}

double loss_value(Module& net, const LossFn& loss, int k) {
  NoGradGuard ng;
  return loss(k).item();
}

std::vector<Tensor> weights(const std::vector<PrunableParam>& ps) {
  std::vector<Tensor> w;
  for (auto& p : ps) w.push_back(p.weight());
  return w;
}

// Every parameter and buffer equal to a snapshot taken before (criteria must restore the model).
void expect_unchanged(Module& net, const StateDict& before) {
  for (auto& [name, t] : net.state_dict()) {
    ASSERT_TRUE(before.count(name)) << name;
    EXPECT_EQ(t.to_vector<double>(), before.at(name).to_vector<double>()) << name << " was not restored";
  }
}

StateDict deep_copy(const Module& net) {
  StateDict sd;
  for (auto& [name, t] : net.state_dict()) sd[name] = t.clone();
  return sd;
}

}  // namespace

TEST(Snip, EqualsWeightTimesFiniteDifferenceGradient) {
  auto net = tiny_conv_net(3);
  net->train();
  Batches b = make_batches(2, {4, 2, 5, 5}, 4, 11);
  LossFn loss = ce_loss(*net, b);
  auto params = prunable_params(*net);
  ASSERT_EQ(params.size(), 2u);
  StateDict before = deep_copy(*net);
  Scores s = score_snip(*net, params, loss, 2);
  expect_unchanged(*net, before);
  // Reference: g_j = Σ_b (L_b(w + h e_j) − L_b(w − h e_j)) / 2h, score |w_j g_j|.
  const double h = 1e-6;
  std::vector<double> ref;
  for (auto& p : params) {
    Tensor w = p.weight();
    double* d = w.data<double>();
    for (int64_t j = 0; j < w.numel(); ++j) {
      const double orig = d[j];
      double g = 0;
      for (int k = 0; k < 2; ++k) {
        d[j] = orig + h;
        const double lp = loss_value(*net, loss, k);
        d[j] = orig - h;
        const double lm = loss_value(*net, loss, k);
        g += (lp - lm) / (2 * h);
      }
      d[j] = orig;
      ref.push_back(std::fabs(orig * g));
    }
  }
  expect_close(flat(s), ref, 1e-9, 1e-6, "SNIP scores");
}

TEST(Grasp, HgEqualsExplicitHessianTimesG) {
  auto net = tiny_conv_net(5);
  net->train();
  Batches b = make_batches(2, {4, 2, 5, 5}, 4, 12);
  LossFn loss = [&](int k) {
    return cross_entropy(scale(net->forward(b.x[size_t(k)]), 1.0 / 2.0), b.y[size_t(k)]);  // a temperature
  };
  auto params = prunable_params(*net);
  auto w = weights(params);
  StateDict before = deep_copy(*net);
  GraspResult r = grasp(*net, params, loss, 2, 1e-4);  // double: truncation ≈ ε², as the meta-gradient test shows
  expect_unchanged(*net, before);
  // g from autograd at w.
  std::vector<double> g(flat(r.g).size(), 0.0);
  for (int k = 0; k < 2; ++k) {
    auto gk = flat(loss_gradients(*net, loss, k, w));
    for (size_t i = 0; i < g.size(); ++i) g[i] += gk[i];
  }
  expect_close(flat(r.g), g, 1e-12, 1e-9, "GraSP g");
  // H column by column: H e_j = Σ_b (∇L_b(w + h e_j) − ∇L_b(w − h e_j)) / 2h, then Hg = H·g.
  const size_t n = g.size();
  std::vector<double> hg(n, 0.0);
  const double h = 1e-5;
  size_t col = 0;
  for (auto& t : w) {
    Tensor wt = t;
    double* d = wt.data<double>();
    for (int64_t j = 0; j < wt.numel(); ++j, ++col) {
      const double orig = d[j];
      for (int k = 0; k < 2; ++k) {
        d[j] = orig + h;
        auto gp = flat(loss_gradients(*net, loss, k, w));
        d[j] = orig - h;
        auto gm = flat(loss_gradients(*net, loss, k, w));
        d[j] = orig;
        for (size_t i = 0; i < n; ++i) hg[i] += (gp[i] - gm[i]) / (2 * h) * g[col];
      }
    }
  }
  double hmax = 0;
  for (double v : hg) hmax = std::max(hmax, std::fabs(v));
  expect_close(flat(r.hg), hg, 1e-6 * hmax, 1e-5, "GraSP Hg");
  // Score = w ⊙ Hg (GraSP removes the largest −w ⊙ Hg, i.e. keeps the largest w ⊙ Hg).
  auto wv = flat(w);
  std::vector<double> score(n);
  for (size_t i = 0; i < n; ++i) score[i] = wv[i] * hg[i];
  expect_close(flat(r.scores), score, 1e-6 * hmax, 1e-5, "GraSP scores");
}

TEST(Synflow, LinearChainMatchesClosedForm) {
  Rng rng(7);
  auto net = std::make_shared<Sequential>();
  auto l1 = std::make_shared<Linear>(4, 3, true, rng);
  auto l2 = std::make_shared<Linear>(3, 2, true, rng);
  net->push_back(l1);
  net->push_back(l2);
  convert_module_dtype(*net, DType::F64);
  auto params = prunable_params(*net);
  // A mask pruning two entries of W1 shows that later rounds score the masked network.
  MaskSet masks = full_masks(params);
  masks.masks[0].data<double>()[1] = 0;
  masks.masks[0].data<double>()[6] = 0;
  StateDict before = deep_copy(*net);
  for (bool masked : {false, true}) {
    SCOPED_TRACE(masked ? "masked" : "dense");
    Scores s = score_synflow(*net, params, {1, 4}, masked ? &masks : nullptr);
    expect_unchanged(*net, before);
    const auto W1 = l1->weight.to_vector<double>(), b1 = l1->bias.to_vector<double>();
    const auto W2 = l2->weight.to_vector<double>();
    const auto m1 = masks.masks[0].to_vector<double>();
    // h = |W1|·1 + |b1| ;  R = 1ᵀ|W2|h + Σ|b2| ;  ∂R/∂W1[i,j] = Σ_k |W2[k,i]| ;  ∂R/∂W2[k,i] = h_i.
    std::vector<double> h(3, 0.0), c(3, 0.0), ref1, ref2;
    for (int i = 0; i < 3; ++i) {
      h[size_t(i)] = std::fabs(b1[size_t(i)]);
      for (int j = 0; j < 4; ++j) h[size_t(i)] += std::fabs(W1[size_t(i * 4 + j)]) * (masked ? m1[size_t(i * 4 + j)] : 1.0);
      for (int k = 0; k < 2; ++k) c[size_t(i)] += std::fabs(W2[size_t(k * 3 + i)]);
    }
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j) {
        const size_t f = size_t(i * 4 + j);
        ref1.push_back(masked && m1[f] == 0 ? -INFINITY : std::fabs(W1[f]) * c[size_t(i)]);
      }
    for (int k = 0; k < 2; ++k)
      for (int i = 0; i < 3; ++i) ref2.push_back(std::fabs(W2[size_t(k * 3 + i)]) * h[size_t(i)]);
    auto got1 = s[0].to_vector<double>();
    for (size_t f = 0; f < ref1.size(); ++f)
      if (std::isinf(ref1[f])) {
        EXPECT_TRUE(std::isinf(got1[f]) && got1[f] < 0) << "pruned entry " << f << " must score -inf";
        ref1[f] = got1[f] = 0;
      }
    expect_close(got1, ref1, 1e-14, 1e-12, "SynFlow W1");
    expect_close(s[1].to_vector<double>(), ref2, 1e-14, 1e-12, "SynFlow W2");
  }
}

TEST(Synflow, IterativePruneHitsTargetAndRestoresTheModel) {
  ModelPtr m = make_model({"resnet8", 10, 3, {}, ""}, 4);
  m->train();
  auto params = prunable_params(*m);
  StateDict before = deep_copy(*m);
  PruneConfig cfg;
  cfg.sparsity = 0.9;
  PruneResult r = synflow_prune(*m, params, {1, 3, 8, 8}, 5, cfg);
  expect_unchanged(*m, before);
  EXPECT_TRUE(m->is_training());
  EXPECT_EQ(r.kept, keep_count(r.total, 0.9));
  // One round at the final sparsity is plain top-k of one SynFlow pass.
  PruneResult one = synflow_prune(*m, params, {1, 3, 8, 8}, 1, cfg);
  PruneResult direct = prune(params, score_synflow(*m, params, {1, 3, 8, 8}), cfg);
  EXPECT_EQ(flat(one.masks.masks), flat(direct.masks.masks));
}

namespace {

// F(m) = L_i(θ_i(m)) with θ_0 = (m ⊙ W0, P0): only mask entry (p, j) differs from 1, by `scale`.
double unrolled_loss(Module& net, const std::vector<PrunableParam>& params, const LossFn& loss, int steps, double lr,
                     size_t p, int64_t j, double scale, const StateDict& start) {
  net.load_state_dict(start);
  Tensor w = params[p].weight();
  w.data<double>()[j] *= scale;
  const std::vector<Tensor> theta = net.parameters();
  for (int k = 0; k < steps; ++k) {
    auto g = loss_gradients(net, loss, k, theta);
    for (size_t i = 0; i < theta.size(); ++i) {
      Tensor t = theta[i];
      double* d = t.data<double>();
      const double* gd = g[i].data<double>();
      for (int64_t e = 0; e < t.numel(); ++e) d[e] -= lr * gd[e];
    }
  }
  const double l = loss_value(net, loss, steps);
  net.load_state_dict(start);
  return l;
}

}  // namespace

TEST(MetaGradient, FullModeEqualsFiniteDifferenceOfTheUnrolledLoss) {
  for (int which = 0; which < 2; ++which) {
    SCOPED_TRACE(which == 0 ? "conv net" : "mlp");
    auto net = which == 0 ? tiny_conv_net(9) : tiny_mlp(9);
    net->train();
    const int steps = 3;
    const double lr = 0.5;
    Batches b = which == 0 ? make_batches(steps + 1, {6, 2, 5, 5}, 4, 21) : make_batches(steps + 1, {6, 5}, 4, 21);
    LossFn loss = ce_loss(*net, b);
    auto params = prunable_params(*net);
    StateDict start = deep_copy(*net);
    MetaGradConfig cfg;
    cfg.steps = steps;
    cfg.inner_lr = lr;
    cfg.hvp_eps = 1e-4;  // double precision: truncation error ≈ ε², rounding ≈ 1e-16/ε
    auto full = flat(meta_gradient(*net, params, loss, cfg));
    expect_unchanged(*net, start);
    cfg.mode = MetaGradMode::FirstOrder;
    auto first = flat(meta_gradient(*net, params, loss, cfg));
    // Reference: central differences of F w.r.t. each mask entry (h = 1e-5, double: error ≈ 1e-10).
    std::vector<double> ref;
    const double h = 1e-5;
    for (size_t p = 0; p < params.size(); ++p)
      for (int64_t j = 0; j < params[p].weight().numel(); ++j) {
        const double fp = unrolled_loss(*net, params, loss, steps, lr, p, j, 1 + h, start);
        const double fm = unrolled_loss(*net, params, loss, steps, lr, p, j, 1 - h, start);
        ref.push_back((fp - fm) / (2 * h));
      }
    double rmax = 0, first_err = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      rmax = std::max(rmax, std::fabs(ref[i]));
      first_err = std::max(first_err, std::fabs(first[i] - ref[i]));
    }
    expect_close(full, ref, 1e-7 * rmax, 1e-5, "full meta-gradient");
    // Non-vacuous: the second-order terms matter here, and the first-order mode misses them.
    EXPECT_GT(first_err, 1e-3 * rmax) << "first-order mode is indistinguishable from the full one on this net";
    // The central-difference HVPs converge as ε²: ten times the step, about a hundred times the error
    // (this net is curved enough that ε = 1e-3/‖v‖ already costs ≈3e-5 relative error).
    cfg.mode = MetaGradMode::Full;
    cfg.hvp_eps = 1e-3;
    auto coarse = flat(meta_gradient(*net, params, loss, cfg));
    double err_fine = 0, err_coarse = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      err_fine = std::max(err_fine, std::fabs(full[i] - ref[i]));
      err_coarse = std::max(err_coarse, std::fabs(coarse[i] - ref[i]));
    }
    EXPECT_GT(err_coarse, 30 * err_fine) << "HVP error does not shrink as eps^2: " << err_coarse << " vs " << err_fine;
    EXPECT_LT(err_coarse, 1e-3 * rmax);
  }
}

TEST(MetaGradient, ZeroStepsIsSnip) {
  auto net = tiny_conv_net(13);
  net->train();
  Batches b = make_batches(1, {4, 2, 5, 5}, 4, 3);
  LossFn loss = ce_loss(*net, b);
  auto params = prunable_params(*net);
  MetaGradConfig cfg;
  cfg.steps = 0;
  auto delta = flat(meta_gradient(*net, params, loss, cfg));
  for (double& v : delta) v = std::fabs(v);
  expect_close(delta, flat(score_snip(*net, params, loss, 1)), 1e-15, 1e-12, "meta-gradient with 0 steps vs SNIP");
  // score_meta normalises |Δ| to sum 1.
  auto s = flat(score_meta(*net, params, loss, cfg));
  double total = 0, dsum = 0;
  for (double v : s) total += v;
  for (double v : delta) dsum += v;
  EXPECT_NEAR(total, 1.0, 1e-12);
  for (size_t i = 0; i < s.size(); ++i) EXPECT_NEAR(s[i], delta[i] / dsum, 1e-15);
}

TEST(Criteria, MagnitudeAndRandom) {
  ModelPtr m = make_model({"resnet8", 10, 3, {}, ""}, 1);
  auto params = prunable_params(*m);
  Scores mag = score_magnitude(params);
  for (size_t i = 0; i < params.size(); ++i) {
    auto w = params[i].weight().to_vector<double>(), s = mag[i].to_vector<double>();
    for (size_t j = 0; j < w.size(); ++j) ASSERT_EQ(s[j], std::fabs(w[j]));
  }
  auto r1 = flat(score_random(params, 5)), r2 = flat(score_random(params, 5)), r3 = flat(score_random(params, 6));
  EXPECT_EQ(r1, r2);
  EXPECT_NE(r1, r3);
}

TEST(ScoreAccumulator, SumMeanAndBiasCorrectedEma) {
  auto make = [](double v) { return Scores{Tensor::full({2, 3}, v, DType::F64), Tensor::full({4}, -v, DType::F64)}; };
  const std::vector<double> seq{1.0, 2.0, 4.0};
  ScoreAccumulator sum(ScoreAccumulator::Kind::Sum), mean(ScoreAccumulator::Kind::Mean),
      ema(ScoreAccumulator::Kind::Ema, 0.9, true), raw(ScoreAccumulator::Kind::Ema, 0.9, false);
  EXPECT_THROW(sum.value(), Error);
  for (double v : seq)
    for (auto* a : {&sum, &mean, &ema, &raw}) a->add(make(v));
  // Independent: EMA_T = Σ_t β^(T−t)(1−β)s_t, bias-corrected by 1 − β^T.
  double e = 0;
  for (size_t t = 0; t < seq.size(); ++t) e += std::pow(0.9, double(seq.size() - 1 - t)) * 0.1 * seq[t];
  const double corrected = e / (1 - std::pow(0.9, 3.0));
  EXPECT_DOUBLE_EQ(sum.value()[0].to_vector<double>()[0], 7.0);
  EXPECT_DOUBLE_EQ(mean.value()[1].to_vector<double>()[3], -7.0 / 3.0);
  EXPECT_NEAR(raw.value()[0].to_vector<double>()[5], e, 1e-15);
  EXPECT_NEAR(ema.value()[0].to_vector<double>()[2], corrected, 1e-15);
  EXPECT_NEAR(ema.value()[1].to_vector<double>()[0], -corrected, 1e-15);
  EXPECT_EQ(ema.count(), 3);
  EXPECT_THROW(sum.add({Tensor::zeros({2, 3}, DType::F64)}), Error);
}
