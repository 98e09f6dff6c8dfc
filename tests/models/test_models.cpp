// Golden check against PyTorch: tests/fixtures/torch_resnet8_golden.safetensors (made by
// tests/fixtures/make_torch_golden.py with Debian's python3-torch) holds a tiny ResNet's weights, a batch,
// its logits (train and eval mode), loss, parameter gradients and updated running stats.
#include <gtest/gtest.h>

#include <cstring>
#include <sstream>

#include "engine/io/safetensors.h"
#include "models/models.h"

using namespace sparrow;

namespace {
Tensor to_tensor(const StEntry& e) {
  Shape shape(e.shape.begin(), e.shape.end());
  if (e.dtype == "F32") {
    Tensor t = Tensor::empty(shape, DType::F32);
    std::memcpy(t.raw_data(), e.data.data(), e.data.size());
    return t;
  }
  if (e.dtype == "I64") {
    Tensor t = Tensor::empty(shape, DType::I64);
    std::memcpy(t.raw_data(), e.data.data(), e.data.size());
    return t;
  }
  ADD_FAILURE() << "unexpected dtype " << e.dtype;
  return Tensor();
}

void expect_close(const Tensor& got, const Tensor& ref, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  const auto g = got.to_vector<double>(), r = ref.to_vector<double>();
  double ref_max = 0, worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    ref_max = std::max(ref_max, std::fabs(r[i]));
    const double excess = std::fabs(g[i] - r[i]) - (atol + rtol * std::fabs(r[i]));
    if (excess > worst) worst = excess, worst_i = i;
  }
  EXPECT_GT(ref_max, 0.0) << what << ": all-zero reference";
  EXPECT_LE(worst, 0.0) << what << ": worst index " << worst_i << " got " << g[worst_i] << " ref " << r[worst_i];
}
}  // namespace

TEST(TorchGolden, ResNet8ForwardBackwardMatchesPyTorch) {
  const std::string path = std::string(SPARROW_SOURCE_DIR) + "/tests/fixtures/torch_resnet8_golden.safetensors";
  StFile f = read_safetensors(path);
  const int in_ch = std::stoi(f.metadata.at("in_channels"));
  // metadata "widths" holds the three stage widths; resnet8 takes stem + one width per block.
  std::vector<int> stages;
  std::stringstream ws(f.metadata.at("widths"));
  for (std::string item; std::getline(ws, item, ',');) stages.push_back(std::stoi(item));
  ASSERT_EQ(stages.size(), 3u);
  ModelPtr m = make_model({"resnet8", 10, in_ch, {stages[0], stages[0], stages[1], stages[2]}, ""}, 123);
  StateDict sd;
  for (auto& [name, t] : m->state_dict()) {
    ASSERT_TRUE(f.tensors.count(name)) << "fixture lacks " << name;
    sd[name] = to_tensor(f.tensors.at(name));
  }
  m->load_state_dict(sd);
  Tensor x = to_tensor(f.tensors.at("input.x"));
  Tensor y = to_tensor(f.tensors.at("input.y"));
  // The fixture's eval logits use the stored running statistics, before the train-mode step updates them.
  m->eval();
  {
    NoGradGuard ng;
    expect_close(m->forward(x), to_tensor(f.tensors.at("output.logits_eval")), 1e-4, 1e-4, "eval logits");
  }
  m->train();
  Tensor logits = m->forward(x);
  Tensor loss = cross_entropy(logits, y);
  loss.backward();
  expect_close(logits, to_tensor(f.tensors.at("output.logits_train")), 1e-4, 1e-4, "train logits");
  expect_close(loss, to_tensor(f.tensors.at("output.loss")), 1e-5, 1e-5, "loss");
  for (auto& [name, p] : m->named_parameters()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(p.grad().defined());
    expect_close(p.grad(), to_tensor(f.tensors.at("grad." + name)), 1e-4, 1e-3, "grad " + name);
  }
  for (auto& [name, b] : m->named_buffers())
    if (name.find("running_") != std::string::npos)
      expect_close(b, to_tensor(f.tensors.at("after." + name)), 1e-5, 1e-4, "running stat " + name);
}
