// Channel gates and surgery: the gate op against its formulas, PDD's placements, and narrowed models
// that compute what the gated model computes when the gates are hard 0/1 and BN is inherited.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "compress/accounting.h"
#include "compress/surgery.h"
#include "tests/compress/compress_test_util.h"

using namespace sparrow;
using namespace sparrow::testing;

TEST(ChannelGate, ForwardAndStraightThroughBackwardMatchTheFormulas) {
  const std::vector<double> mv{0.3, -0.2, 0.0, 1.5, -0.999};
  for (const Shape& shape : {Shape{2, 5, 3, 2}, Shape{3, 5}}) {
    SCOPED_TRACE(shape_str(shape));
    Rng rng(1);
    Tensor x = Tensor::randn(shape, rng, 0, 1, DType::F64);
    Tensor r = Tensor::randn(shape, rng, 0, 1, DType::F64);
    Tensor m = Tensor::from_vector<double>({5}, mv);
    x.set_requires_grad(true);
    m.set_requires_grad(true);
    Tensor y = channel_gate(x, m);
    sum(mul(y, r)).backward();
    const int64_t n = shape[0], c = 5, hw = shape.size() == 4 ? shape[2] * shape[3] : 1;
    const auto xv = x.to_vector<double>(), rv = r.to_vector<double>(), yv = y.to_vector<double>();
    const auto dx = x.grad().to_vector<double>();
    auto dm = m.grad().to_vector<double>();
    std::vector<double> dm_ref(5, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t ch = 0; ch < c; ++ch) {
        const double g = mv[size_t(ch)] > 0 ? 1.0 : (mv[size_t(ch)] < 0 ? 0.0 : 0.5);
        for (int64_t k = 0; k < hw; ++k) {
          const size_t f = size_t((i * c + ch) * hw + k);
          ASSERT_EQ(yv[f], g * xv[f]);
          ASSERT_EQ(dx[f], g * rv[f]);
          dm_ref[size_t(ch)] += rv[f] * xv[f];
        }
      }
    for (size_t ch = 0; ch < 5; ++ch) dm_ref[ch] *= 0.5 * std::max(0.0, 2.0 - 2.0 * std::fabs(mv[ch]));
    EXPECT_EQ(dm[3], 0.0);  // |m| ≥ 1: the ApproxSign window is closed
    expect_close(dm, dm_ref, 1e-14, 1e-12, "dL/dm");
  }
}

TEST(ChannelGate, PlacementsFollowPdd) {
  ModelPtr v = make_model({"vgg11", 10, 3, {}, "pdd"}, 1);
  const size_t n_params = v->parameters().size();
  GatedModel gv = insert_gates(v, 2);
  ASSERT_EQ(gv.gates.size(), 8u);
  EXPECT_EQ(gv.names[0], "features.2.gate");
  EXPECT_EQ(gv.gates[0]->m.numel(), 64);
  EXPECT_EQ(gv.gates[7]->m.numel(), 512);
  EXPECT_EQ(v->parameters().size(), n_params);  // gates stay out of the model's parameters
  for (auto& g : gv.gates)
    for (double m : g->m.to_vector<double>()) EXPECT_LT(std::fabs(m), 0.01);  // N(0,1)·0.001
  // All gates open: the gated model is the model.
  Rng rng(3);
  Tensor x = Tensor::randn({2, 3, 32, 32}, rng);
  v->eval();
  for (auto& g : gv.gates) g->m.fill_(0.5);
  const auto y_open = gv.forward(x).to_vector<float>();
  remove_gates(gv);
  EXPECT_EQ(v->forward(x).to_vector<float>(), y_open);

  ModelPtr r = make_model({"resnet20", 10, 3, {}, ""}, 1);
  GatedModel gr = insert_gates(r, 2);
  ASSERT_EQ(gr.gates.size(), 9u);
  EXPECT_EQ(gr.names[8], "blocks.8.gate");
  EXPECT_EQ(gr.gates[0]->m.numel(), 16);
  EXPECT_EQ(gr.gates[8]->m.numel(), 64);
  // Closing the last block's gate zeroes even the residual path: the gate sits after add and ReLU, so
  // the logits are the fc bias.
  r->eval();
  gr.gates[8]->m.fill_(-1.0);
  const auto y = gr.forward(Tensor::randn({2, 3, 16, 16}, rng)).to_vector<float>();
  const auto b = dynamic_cast<ResNetCifar&>(*r).fc->bias.to_vector<float>();
  for (size_t i = 0; i < y.size(); ++i) EXPECT_FLOAT_EQ(y[i], b[i % 10]);
  // Gradients reach the gates through the straight-through estimator.
  r->train();
  for (auto& g : gr.gates) g->m.fill_(0.01);
  cross_entropy(gr.forward(Tensor::randn({4, 3, 8, 8}, rng)), random_labels(4, 10, 1)).backward();
  for (auto& g : gr.gates) EXPECT_TRUE(g->m.grad().defined());
}

namespace {

// Hard gates from a channel set; every gate value is exactly 0 or 1.
void set_gate(ChannelGate& g, const std::vector<int64_t>& keep) {
  std::vector<float> m(size_t(g.m.numel()), -0.5f);
  for (int64_t c : keep) m[size_t(c)] = 0.5f;
  g.m.copy_(Tensor::from_vector<float>(g.m.shape(), m));
}

std::vector<int64_t> range(int64_t a, int64_t b) {
  std::vector<int64_t> v;
  for (int64_t i = a; i < b; ++i) v.push_back(i);
  return v;
}

// Train-mode forward through the gated model (moves the BN statistics), then eval outputs of the gated
// and the narrowed model (BN, biases and classifier inherited).
std::pair<std::vector<double>, std::vector<double>> gated_and_narrow(GatedModel& g, const Shape& in) {
  Rng rng(17);
  g.model->train();
  {
    NoGradGuard ng;
    g.forward(Tensor::randn(in, rng, 0.5, 1.0));
  }
  g.model->eval();
  Tensor x = Tensor::randn(in, rng);
  NoGradGuard ng;
  const auto yg = g.forward(x).to_vector<double>();
  SurgeryConfig cfg;
  cfg.inherit_bn = true;
  ModelPtr narrow = narrow_from_gates(g, cfg);
  narrow->eval();
  return {yg, narrow->forward(x).to_vector<double>()};
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double e : v) m = std::max(m, std::fabs(e));
  return m;
}

}  // namespace

TEST(Surgery, VggNarrowModelComputesTheGatedModel) {
  ModelPtr v = make_model({"vgg11", 10, 3, {}, "pdd"}, 5);
  GatedModel g = insert_gates(v, 6);
  Rng rng(7);
  for (auto& gate : g.gates) {
    std::vector<int64_t> keep;
    for (int64_t c = 0; c < gate->m.numel(); ++c)
      if (rng.uniform() < 0.6 || c == 0) keep.push_back(c);
    set_gate(*gate, keep);
  }
  auto [yg, yn] = gated_and_narrow(g, {3, 3, 32, 32});
  expect_close(yn, yg, 1e-5 * max_abs(yg), 1e-4, "narrow VGG vs gated VGG");
}

// ResNet: the narrow net is the gated net only under two conditions, both consequences of PDD's rule
// (ALGORITHMS.md §3) and not bugs:
//  1. Gate k sits on the block output, but surgery also cuts block k's middle channels (c1's outputs,
//     c2's inputs) to gate k's set. Those middle channels are live in the gated net, so equality needs
//     them dead: c2's input weights zero outside the kept set.
//  2. The narrow net's option-A shortcut pads/crops by position, the gated net's by absolute channel
//     index. They agree when every block of a stage keeps the same centred contiguous range (here
//     [2,14) of 16, [4,28) of 32, [8,56) of 64): narrow channel j is full channel lo+j on both sides of
//     every shortcut. Any other selection (e.g. a stage keeping [0,24) of 32) gives another function.
TEST(Surgery, ResNetNarrowModelComputesTheGatedModelWhereThatHolds) {
  ModelPtr r = make_model({"resnet20", 10, 3, {}, ""}, 8);
  GatedModel g = insert_gates(r, 9);
  auto centred = [](int k) { return k < 3 ? range(2, 14) : k < 6 ? range(4, 28) : range(8, 56); };
  for (int k = 0; k < 9; ++k) set_gate(*g.gates[size_t(k)], centred(k));
  auto [yg0, yn0] = gated_and_narrow(g, {2, 3, 16, 16});
  double diff0 = 0;
  for (size_t i = 0; i < yg0.size(); ++i) diff0 = std::max(diff0, std::fabs(yg0[i] - yn0[i]));
  EXPECT_GT(diff0, 1e-3 * max_abs(yg0)) << "live middle channels unexpectedly did not matter (condition 1)";

  auto& blocks = dynamic_cast<ResNetCifar&>(*r).block_list;
  for (int k = 0; k < 9; ++k) {  // condition 1: kill the middle channels surgery will remove
    Tensor w = blocks[size_t(k)]->c2->weight;
    const int64_t c = w.size(1);
    const auto keep = centred(k);
    for (int64_t o = 0; o < w.size(0); ++o)
      for (int64_t ci = 0; ci < c; ++ci)
        if (std::find(keep.begin(), keep.end(), ci) == keep.end())
          for (int64_t t = 0; t < 9; ++t) w.data<float>()[(o * c + ci) * 9 + t] = 0;
  }
  auto [yg, yn] = gated_and_narrow(g, {2, 3, 16, 16});
  expect_close(yn, yg, 1e-5 * max_abs(yg), 1e-4, "narrow ResNet vs gated ResNet (dead middle, centred)");

  for (int k = 3; k < 6; ++k) set_gate(*g.gates[size_t(k)], range(0, 24));  // breaks condition 2 only
  for (int k = 3; k < 6; ++k) {
    Tensor w = blocks[size_t(k)]->c2->weight;
    for (int64_t o = 0; o < 32; ++o)
      for (int64_t ci = 24; ci < 32; ++ci)
        for (int64_t t = 0; t < 9; ++t) w.data<float>()[(o * 32 + ci) * 9 + t] = 0;
  }
  auto [yg2, yn2] = gated_and_narrow(g, {2, 3, 16, 16});
  double diff = 0;
  for (size_t i = 0; i < yg2.size(); ++i) diff = std::max(diff, std::fabs(yg2[i] - yn2[i]));
  EXPECT_GT(diff, 1e-3 * max_abs(yg2)) << "uncentred selection unexpectedly matched (condition 2)";
}

TEST(Surgery, Vgg11PddWidthsCutMacsAndParamsAsThePaper) {
  const std::vector<int> widths{35, 69, 195, 96, 300, 109, 227, 368};
  ModelPtr v = make_model({"vgg11", 10, 3, {}, "pdd"}, 1);
  GatedModel g = insert_gates(v, 2);
  for (size_t i = 0; i < widths.size(); ++i) set_gate(*g.gates[i], range(0, widths[i]));
  ModelPtr narrow = narrow_from_gates(g, {});
  EXPECT_EQ(narrow->widths(), widths);
  remove_gates(g);
  CostReport dense = count_costs(*v, {1, 3, 32, 32}), small = count_costs(*narrow, {1, 3, 32, 32});
  EXPECT_EQ(dense.macs, 153445376);
  EXPECT_EQ(dense.params, 9756426);
  EXPECT_EQ(small.macs, 38355416);
  EXPECT_EQ(small.params, 2301177);
  const double mac_cut = 1.0 - double(small.macs) / double(dense.macs);
  const double param_cut = 1.0 - double(small.params) / double(dense.params);
  EXPECT_NEAR(mac_cut, 0.750, 0.0005);   // paper: −74.96%
  EXPECT_NEAR(param_cut, 0.764, 0.0005); // paper: −76.43%
}

TEST(Surgery, DefaultReinitialisesBnBiasesAndClassifierButCopiesKeptConvWeights) {
  ModelPtr v = make_model({"vgg11", 10, 3, {}, "pdd"}, 1);
  GatedModel g = insert_gates(v, 2);
  std::vector<std::vector<int64_t>> keep;
  for (auto& gate : g.gates) {
    keep.push_back({1, 3, gate->m.numel() - 1});
    set_gate(*gate, keep.back());
  }
  v->train();
  Rng rng(2);
  g.forward(Tensor::randn({2, 3, 32, 32}, rng));  // BN statistics move away from their init
  SurgeryConfig cfg;
  cfg.seed = 77;
  ModelPtr narrow = narrow_from_gates(g, cfg);
  auto* n = dynamic_cast<Vgg*>(narrow.get());
  auto* old = dynamic_cast<Vgg*>(v.get());
  ModelPtr fresh = make_model(narrow->spec(), 77);
  auto* f = dynamic_cast<Vgg*>(fresh.get());
  for (size_t i = 0; i < keep.size(); ++i) {
    // conv weight [o][c] = old [keep_i[o]][keep_{i−1}[c]]
    const auto nw = n->convs[i]->weight.to_vector<float>(), ow = old->convs[i]->weight.to_vector<float>();
    const int64_t cin_old = old->convs[i]->cin, cin_new = n->convs[i]->cin;
    for (int64_t o = 0; o < 3; ++o)
      for (int64_t c = 0; c < cin_new; ++c)
        for (int64_t k = 0; k < 9; ++k) {
          const int64_t oc = i == 0 ? c : keep[i - 1][size_t(c)];
          ASSERT_EQ(nw[size_t((o * cin_new + c) * 9 + k)], ow[size_t((keep[i][size_t(o)] * cin_old + oc) * 9 + k)]);
        }
    EXPECT_EQ(n->convs[i]->bias.to_vector<float>(), f->convs[i]->bias.to_vector<float>());
    EXPECT_EQ(n->bns[i]->running_mean.to_vector<float>(), std::vector<float>(3, 0.0f));
  }
  for (auto& [name, t] : narrow->state_dict()) {
    if (name.rfind("classifier", 0) != 0) continue;
    EXPECT_EQ(t.to_vector<double>(), fresh->state_dict()[name].to_vector<double>()) << name;
  }
  // Errors name the problem.
  keep[2].clear();
  EXPECT_THROW(narrow_model(*v, keep, cfg), Error);
  EXPECT_THROW(insert_gates(make_model({"resnet18", 10, 3, {}, ""}, 1), 1), Error);
}

// The gate op on CUDA tensors (kernels/gate) against the CPU op: values, both gradients, and a gated VGG
// whose gates follow the model onto the device. Skipped without a device.
TEST(ChannelGateCuda, OpAndGatedModelMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << cuda_unavailable_reason();
  Rng rng(3);
  const std::vector<float> mv{-1.5f, -0.5f, -1e-3f, 0.0f, 1e-3f, 0.5f, 1.5f, 0.2f, -0.2f};
  for (const Shape& shape : {Shape{4, 9, 5, 5}, Shape{6, 9}}) {
    SCOPED_TRACE(shape_str(shape));
    Tensor x = Tensor::randn(shape, rng), r = Tensor::randn(shape, rng);
    Tensor m = Tensor::from_vector<float>({9}, mv);
    Tensor xc = x.to(Device::CUDA), mc = m.to(Device::CUDA), rc = r.to(Device::CUDA);
    for (Tensor* t : {&x, &m, &xc, &mc}) t->set_requires_grad(true);
    Tensor y = channel_gate(x, m), yc = channel_gate(xc, mc);
    sum(mul(y, r)).backward();
    sum(mul(yc, rc)).backward();
    EXPECT_EQ(yc.to(Device::CPU).to_vector<float>(), y.to_vector<float>());
    EXPECT_EQ(xc.grad().to(Device::CPU).to_vector<float>(), x.grad().to_vector<float>());
    const auto dm = m.grad().to_vector<float>(), dmc = mc.grad().to(Device::CPU).to_vector<float>();
    for (size_t c = 0; c < dm.size(); ++c) EXPECT_NEAR(dmc[c], dm[c], 1e-5 * (1.0 + std::fabs(dm[c]))) << "channel " << c;
  }
  ModelPtr cpu = make_model({"vgg11", 10, 1, {}, "pdd"}, 7), gpu = make_model({"vgg11", 10, 1, {}, "pdd"}, 7);
  gpu->to(Device::CUDA);
  GatedModel gc = insert_gates(cpu, 11), gg = insert_gates(gpu, 11);
  for (const auto& g : gg.gates) EXPECT_EQ(g->m.device(), Device::CUDA);
  cpu->eval();
  gpu->eval();
  gc.gates[2]->m.copy_(Tensor::from_vector<float>({gc.gates[2]->m.numel()}, std::vector<float>(size_t(gc.gates[2]->m.numel()), -1.0f)));
  gg.gates[2]->m.copy_(gc.gates[2]->m);
  Tensor x = Tensor::randn({2, 1, 32, 32}, rng);
  const auto want = gc.forward(x).to_vector<float>(), got = gg.forward(x.to(Device::CUDA)).to(Device::CPU).to_vector<float>();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-3 * (1.0 + std::fabs(want[i]))) << i;
}
