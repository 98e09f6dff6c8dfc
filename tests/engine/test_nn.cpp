// Modules: PyTorch-style names, parameter counts, train/eval, state-dict round trip and its errors.
#include <gtest/gtest.h>

#include "engine/nn.h"
#include "models/models.h"

using namespace sparrow;

TEST(Module, ResNetNamesMatchPyTorch) {
  ModelPtr m = make_model({"resnet20", 10, 3, {}, ""}, 1);
  std::set<std::string> names;
  for (auto& [n, t] : m->named_parameters()) names.insert(n);
  for (const char* n : {"stem.0.weight", "stem.1.weight", "stem.1.bias", "blocks.0.c1.weight", "blocks.8.b2.bias",
                        "fc.weight", "fc.bias"})
    EXPECT_TRUE(names.count(n)) << n;
  auto sd = m->state_dict();
  EXPECT_TRUE(sd.count("blocks.3.b1.running_var"));
  EXPECT_TRUE(sd.count("stem.1.num_batches_tracked"));
}

TEST(Module, ParameterCounts) {
  auto count = [](const ModelPtr& m) {
    int64_t n = 0;
    for (auto& t : m->parameters()) n += t.numel();
    return n;
  };
  // Standard CIFAR figures: ResNet-20 0.27M (269,722), ResNet-56 0.85M (853,018).
  EXPECT_EQ(count(make_model({"resnet20", 10, 3, {}, ""}, 1)), 269722);
  EXPECT_EQ(count(make_model({"resnet56", 10, 3, {}, ""}, 1)), 853018);
  // PDD's code variant of ResNet-20 (widening one block early): 0.339M (ALGORITHMS.md §3).
  EXPECT_EQ(count(make_model({"resnet20-pdd", 10, 3, {}, ""}, 1)), 339034);
  // VGG-11-BN with PDD's classifier: 9,756,426 (ALGORITHMS.md: ≈9.76M).
  EXPECT_EQ(count(make_model({"vgg11", 10, 3, {}, "pdd"}, 1)), 9756426);
}

TEST(Module, StateDictRoundTripGivesIdenticalOutputs) {
  ModelPtr a = make_model({"resnet8", 10, 1, {}, ""}, 1);
  ModelPtr b = make_model({"resnet8", 10, 1, {}, ""}, 2);
  Rng rng(3);
  Tensor x = Tensor::randn({2, 1, 12, 12}, rng);
  a->train();
  a->forward(x);  // move the BN running stats away from their initial values
  a->eval();
  b->eval();
  b->load_state_dict(a->state_dict());
  EXPECT_EQ(a->forward(x).to_vector<float>(), b->forward(x).to_vector<float>());
}

TEST(Module, LoadStateDictErrorsNameTheEntry) {
  ModelPtr a = make_model({"resnet8", 10, 3, {}, ""}, 1);
  auto sd = a->state_dict();
  sd.erase("fc.bias");
  try {
    a->load_state_dict(sd);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fc.bias"), std::string::npos) << e.what();
  }
  auto sd2 = a->state_dict();
  sd2["fc.weight"] = Tensor::zeros({3, 3});
  EXPECT_THROW(a->load_state_dict(sd2), Error);
  auto sd3 = a->state_dict();
  sd3["extra"] = Tensor::zeros({1});
  EXPECT_THROW(a->load_state_dict(sd3), Error);
  EXPECT_NO_THROW(a->load_state_dict(sd3, false));
}

TEST(Module, TrainEvalPropagatesAndBatchNormTracksStats) {
  ModelPtr m = make_model({"resnet8", 10, 3, {}, ""}, 1);
  m->eval();
  for (auto& [name, mod] : m->named_modules()) EXPECT_FALSE(mod->is_training()) << name;
  m->train();
  Rng rng(1);
  Tensor x = Tensor::randn({4, 3, 8, 8}, rng, 2.0, 1.0);
  m->forward(x);
  auto sd = m->state_dict();
  EXPECT_EQ(sd["stem.1.num_batches_tracked"].to_vector<int64_t>()[0], 1);
  // Running mean moved 10% of the way to the batch mean (inputs have mean 2, conv output mean ≠ 0).
  double moved = 0;
  for (float v : sd["stem.1.running_mean"].to_vector<float>()) moved += std::fabs(v);
  EXPECT_GT(moved, 0.0);
}

// Sequential runs BatchNorm2d + ReLU as one fused op: same output as the modules one by one, the batch
// counted once, and a BatchNorm2d with no ReLU after it left alone.
TEST(Module, SequentialFusesBatchNormAndReLU) {
  Rng rng(3);
  Tensor x = Tensor::randn({3, 4, 5, 5}, rng, 1.0, 2.0);
  auto bn = std::make_shared<BatchNorm2d>(4);
  auto relu_m = std::make_shared<ReLU>();
  auto bn_only = std::make_shared<BatchNorm2d>(4);
  Sequential seq;
  seq.push_back(bn);
  seq.push_back(relu_m);
  seq.push_back(bn_only);
  Tensor got = seq.forward(x);
  auto ref_bn = std::make_shared<BatchNorm2d>(4), ref_bn2 = std::make_shared<BatchNorm2d>(4);
  Tensor want = ref_bn2->forward(relu(ref_bn->forward(x)));
  EXPECT_EQ(got.to_vector<float>(), want.to_vector<float>());
  EXPECT_EQ(bn->num_batches_tracked.to_vector<int64_t>()[0], 1);
  EXPECT_EQ(bn_only->num_batches_tracked.to_vector<int64_t>()[0], 1);
  EXPECT_EQ(bn->running_mean.to_vector<float>(), ref_bn->running_mean.to_vector<float>());
}

TEST(Models, EveryModelRunsOnOneAndThreeChannels) {
  for (const auto& name : model_names()) {
    if (name == "resnet110" || name == "vgg19") continue;  // same code paths as their smaller siblings
    for (int ch : {1, 3}) {
      SCOPED_TRACE(name + " channels " + std::to_string(ch));
      ModelPtr m = make_model({name, 7, ch, {}, ""}, 1);
      m->eval();
      Rng rng(2);
      const int size = ch == 1 ? 28 : 32;
      Tensor y = m->forward(Tensor::randn({2, ch, size, size}, rng));
      EXPECT_EQ(y.shape(), (Shape{2, 7}));
    }
  }
  EXPECT_THROW(make_model({"resnet21", 10, 3, {}, ""}, 1), Error);
  EXPECT_THROW(make_model({"resnet20", 10, 3, {16, 16}, ""}, 1), Error);
}

TEST(Models, NarrowWidthsBuildAndRun) {
  // PDD surgery shapes: per-block widths, crops and pads in the option-A shortcut.
  ModelPtr m = make_model({"resnet20", 10, 3, {16, 9, 16, 12, 20, 32, 7, 64, 40, 64}, ""}, 1);
  m->eval();
  Rng rng(2);
  EXPECT_EQ(m->forward(Tensor::randn({1, 3, 32, 32}, rng)).shape(), (Shape{1, 10}));
  ModelPtr v = make_model({"vgg11", 10, 3, {35, 69, 195, 96, 300, 109, 227, 368}, "pdd"}, 1);
  v->eval();
  EXPECT_EQ(v->forward(Tensor::randn({1, 3, 32, 32}, rng)).shape(), (Shape{1, 10}));
}
