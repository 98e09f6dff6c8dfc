// VGG-11/13/16/19 with BN for CIFAR-sized inputs: 3×3 convs with bias, BN, ReLU, max-pools, then a
// classifier: 512->classes, or PDD's Dropout->512->512->ReLU->Dropout->512->512->ReLU->classes.
// Pools that would shrink a map below 1×1 (28×28 Fashion-MNIST) are skipped; a global average pool
// before the classifier makes any input size work (identity at 32×32).
#include <algorithm>

#include "models/builders.h"

namespace sparrow {

Vgg::Vgg(ModelSpec spec, const std::vector<int>& pools_after, Rng& rng) {
  spec_ = std::move(spec);
  features = register_module("features", std::make_shared<Sequential>());
  int cin = spec_.in_channels;
  for (size_t i = 0; i < spec_.widths.size(); ++i) {
    const int w = spec_.widths[i];
    SPARROW_CHECK(w > 0, "model '", spec_.name, "': widths must be positive");
    convs.push_back(std::make_shared<Conv2d>(cin, w, 3, 1, 1, true, rng));
    bns.push_back(std::make_shared<BatchNorm2d>(w));
    features->push_back(convs.back());
    features->push_back(bns.back());
    features->push_back(std::make_shared<ReLU>());
    relu_layers.push_back(int(features->size()) - 1);
    for (int p : pools_after)
      if (p == int(i)) {
        features->push_back(std::make_shared<MaxPool2d>(2, 2));
        pool_layers.push_back(int(features->size()) - 1);
      }
    cin = w;
  }
  classifier = register_module("classifier", std::make_shared<Sequential>());
  if (spec_.classifier == "pdd") {
    classifier->push_back(std::make_shared<Dropout>(0.5, rng.next_u64()));
    classifier->push_back(std::make_shared<Linear>(cin, 512, true, rng));
    classifier->push_back(std::make_shared<ReLU>());
    classifier->push_back(std::make_shared<Dropout>(0.5, rng.next_u64()));
    classifier->push_back(std::make_shared<Linear>(512, 512, true, rng));
    classifier->push_back(std::make_shared<ReLU>());
    classifier->push_back(std::make_shared<Linear>(512, spec_.classes, true, rng));
  } else {
    SPARROW_CHECK(spec_.classifier.empty(), "model '", spec_.name, "': unknown classifier '", spec_.classifier,
                  "' (expected empty or pdd)");
    classifier->push_back(std::make_shared<Linear>(cin, spec_.classes, true, rng));
  }
}

Tensor Vgg::forward(const Tensor& x) {
  SPARROW_CHECK(x.dim() == 4 && x.size(1) == spec_.in_channels, "model '", spec_.name, "' expects N×",
                spec_.in_channels, "×H×W input, got ", x.shape_str());
  Tensor h = x;
  size_t conv = 0;  // index of the conv whose ReLU comes next
  for (size_t i = 0; i < features->size(); ++i) {
    const bool is_pool = std::find(pool_layers.begin(), pool_layers.end(), int(i)) != pool_layers.end();
    if (is_pool && (h.size(2) < 2 || h.size(3) < 2)) continue;
    // conv → BN → ReLU as conv_bn_relu (BN and ReLU fused, the conv's moments handed on).
    if (conv < relu_layers.size() && relu_layers[conv] == int(i) + 2 && (*features)[i] == convs[conv] &&
        (*features)[i + 1] == bns[conv]) {
      h = conv_bn_relu(*convs[conv], *bns[conv], h);
      i += 2;
    } else {
      h = (*features)[i]->forward(h);
    }
    if (conv < relu_layers.size() && relu_layers[conv] == int(i)) {
      if (conv < gates.size() && gates[conv]) h = gates[conv]->forward(h);
      ++conv;
    }
  }
  return classifier->forward(global_avg_pool(h));
}

VggCfg vgg_cfg(const std::string& name) {
  if (name == "vgg11") return {{64, 128, 256, 256, 512, 512, 512, 512}, {0, 1, 3, 5, 7}};
  if (name == "vgg13") return {{64, 64, 128, 128, 256, 256, 512, 512, 512, 512}, {1, 3, 5, 7, 9}};
  if (name == "vgg16")
    return {{64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512}, {1, 3, 6, 9, 12}};
  if (name == "vgg19")
    return {{64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512}, {1, 3, 7, 11, 15}};
  return {};
}

ModelPtr make_vgg(ModelSpec spec, Rng& rng) {
  VggCfg cfg = vgg_cfg(spec.name);
  SPARROW_CHECK(spec.widths.size() == cfg.widths.size(), "model '", spec.name, "': expected ", cfg.widths.size(),
                " conv widths, got ", spec.widths.size());
  return std::make_shared<Vgg>(std::move(spec), cfg.pools_after, rng);
}

}  // namespace sparrow
