// CIFAR ResNets: option-A (resnet8/20/32/44/56/110: 3×3 stem, three stages of n basic blocks, global
// average pool, linear) and ResNet-18 (CIFAR variant: 3×3 stem, no max-pool, projection shortcuts).
// Parameter names match the PyTorch definitions in shared/tools/torch_baseline.py.
#include "models/builders.h"

namespace sparrow {

namespace {
std::shared_ptr<Conv2d> conv_kaiming(int cin, int cout, int k, int stride, int pad, Rng& rng) {
  auto c = std::make_shared<Conv2d>(cin, cout, k, stride, pad, false, rng);
  init_kaiming_normal(c->weight, rng);
  return c;
}
}  // namespace

BasicBlockA::BasicBlockA(int cin, int cout, int stride, Rng& rng) : cin(cin), cout(cout), stride(stride) {
  c1 = register_module("c1", conv_kaiming(cin, cout, 3, stride, 1, rng));
  b1 = register_module("b1", std::make_shared<BatchNorm2d>(cout));
  c2 = register_module("c2", conv_kaiming(cout, cout, 3, 1, 1, rng));
  b2 = register_module("b2", std::make_shared<BatchNorm2d>(cout));
}

Tensor BasicBlockA::forward(const Tensor& x) {
  Tensor y = conv_bn_relu(*c1, *b1, x);
  Tensor s = (stride != 1 || cin != cout) ? shortcut_a(x, cout, stride) : x;
  Tensor out = conv_bn_relu(*c2, *b2, y, s);
  return gate ? gate->forward(out) : out;
}

ResNetCifar::ResNetCifar(ModelSpec spec, int n, Rng& rng) : blocks_per_stage(n) {
  spec_ = std::move(spec);
  const auto& w = spec_.widths;
  SPARROW_CHECK(int(w.size()) == 1 + 3 * n, "model '", spec_.name, "': expected ", 1 + 3 * n,
                " widths (stem + one per block), got ", w.size());
  for (int v : w) SPARROW_CHECK(v > 0, "model '", spec_.name, "': widths must be positive");
  stem = register_module("stem", std::make_shared<Sequential>());
  stem->push_back(conv_kaiming(spec_.in_channels, w[0], 3, 1, 1, rng));
  stem->push_back(std::make_shared<BatchNorm2d>(w[0]));
  stem->push_back(std::make_shared<ReLU>());
  blocks = register_module("blocks", std::make_shared<Sequential>());
  for (int i = 0; i < 3 * n; ++i) {
    const int stride = (i > 0 && i % n == 0) ? 2 : 1;
    auto b = std::make_shared<BasicBlockA>(w[size_t(i)], w[size_t(i) + 1], stride, rng);
    blocks->push_back(b);
    block_list.push_back(b);
  }
  fc = register_module("fc", std::make_shared<Linear>(w.back(), spec_.classes, true, rng));
  init_kaiming_normal(fc->weight, rng);
}

Tensor ResNetCifar::forward(const Tensor& x) {
  SPARROW_CHECK(x.dim() == 4 && x.size(1) == spec_.in_channels, "model '", spec_.name, "' expects N×",
                spec_.in_channels, "×H×W input, got ", x.shape_str());
  return fc->forward(global_avg_pool(blocks->forward(stem->forward(x))));
}

// ---------------------------------------------------------------- ResNet-18 (projection shortcuts)

namespace {
class BasicBlockB : public Module {
 public:
  BasicBlockB(int cin, int cout, int stride, Rng& rng) {
    conv1 = register_module("conv1", conv_kaiming(cin, cout, 3, stride, 1, rng));
    bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(cout));
    conv2 = register_module("conv2", conv_kaiming(cout, cout, 3, 1, 1, rng));
    bn2 = register_module("bn2", std::make_shared<BatchNorm2d>(cout));
    if (stride != 1 || cin != cout) {
      shortcut = register_module("shortcut", std::make_shared<Sequential>());
      shortcut->push_back(conv_kaiming(cin, cout, 1, stride, 0, rng));
      shortcut->push_back(std::make_shared<BatchNorm2d>(cout));
    }
  }
  Tensor forward(const Tensor& x) override {
    Tensor y = conv_bn_relu(*conv1, *bn1, x);
    return conv_bn_relu(*conv2, *bn2, y, shortcut ? shortcut->forward(x) : x);
  }
  const char* type_name() const override { return "BasicBlockB"; }
  std::shared_ptr<Conv2d> conv1, conv2;
  std::shared_ptr<BatchNorm2d> bn1, bn2;
  std::shared_ptr<Sequential> shortcut;
};

class ResNet18 : public Model {
 public:
  ResNet18(ModelSpec spec, Rng& rng) {
    spec_ = std::move(spec);
    const auto& w = spec_.widths;
    SPARROW_CHECK(w.size() == 4, "model 'resnet18': expected 4 stage widths, got ", w.size());
    conv1 = register_module("conv1", conv_kaiming(spec_.in_channels, w[0], 3, 1, 1, rng));
    bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(w[0]));
    int cin = w[0];
    for (int s = 0; s < 4; ++s) {
      auto layer = std::make_shared<Sequential>();
      for (int b = 0; b < 2; ++b) {
        layer->push_back(std::make_shared<BasicBlockB>(cin, w[size_t(s)], (s > 0 && b == 0) ? 2 : 1, rng));
        cin = w[size_t(s)];
      }
      layers.push_back(register_module("layer" + std::to_string(s + 1), layer));
    }
    linear = register_module("linear", std::make_shared<Linear>(cin, spec_.classes, true, rng));
  }
  Tensor forward(const Tensor& x) override {
    SPARROW_CHECK(x.dim() == 4 && x.size(1) == spec_.in_channels, "model 'resnet18' expects N×", spec_.in_channels,
                  "×H×W input, got ", x.shape_str());
    Tensor h = conv_bn_relu(*conv1, *bn1, x);
    for (auto& l : layers) h = l->forward(h);
    return linear->forward(global_avg_pool(h));
  }
  const char* type_name() const override { return "ResNet18"; }
  std::shared_ptr<Conv2d> conv1;
  std::shared_ptr<BatchNorm2d> bn1;
  std::vector<std::shared_ptr<Sequential>> layers;
  std::shared_ptr<Linear> linear;
};
}  // namespace

ModelPtr make_resnet18(ModelSpec spec, Rng& rng) { return std::make_shared<ResNet18>(std::move(spec), rng); }

}  // namespace sparrow
