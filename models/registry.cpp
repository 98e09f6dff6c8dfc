// make_model(): the name -> builder registry and each architecture's default widths.
#include <algorithm>

#include "models/builders.h"

namespace sparrow {

namespace {
// CIFAR ResNet-(6n+2) depths.
int resnet_blocks(const std::string& name) {
  if (name == "resnet8") return 1;
  if (name == "resnet20" || name == "resnet20-pdd") return 3;
  if (name == "resnet32") return 5;
  if (name == "resnet44") return 7;
  if (name == "resnet56") return 9;
  if (name == "resnet110") return 18;
  return 0;
}
}  // namespace

std::vector<std::string> model_names() {
  return {"resnet8", "resnet20", "resnet20-pdd", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18",
          "vgg11",   "vgg13",    "vgg16",    "vgg19"};
}

std::vector<int> default_widths(const std::string& name) {
  // PDD's public code widens one block early in each stage (the last block of a stage already outputs the
  // next stage's width): 61.8M MACs / 0.339M parameters instead of ResNet-20's 40.6M / 0.270M.
  if (name == "resnet20-pdd") return {16, 16, 16, 32, 32, 32, 64, 64, 64, 64};
  if (int n = resnet_blocks(name)) {
    std::vector<int> w{16};
    for (int s = 0; s < 3; ++s)
      for (int b = 0; b < n; ++b) w.push_back(16 << s);
    return w;
  }
  if (name == "resnet18") return {64, 128, 256, 512};
  VggCfg cfg = vgg_cfg(name);
  if (!cfg.widths.empty()) return cfg.widths;
  std::string known;
  for (auto& m : model_names()) known += (known.empty() ? "" : ", ") + m;
  SPARROW_FAIL("unknown model '", name, "' (known: ", known, ")");
}

ModelPtr make_model(ModelSpec spec, uint64_t seed) {
  SPARROW_CHECK(spec.classes >= 2, "model '", spec.name, "': needs at least 2 classes, got ", spec.classes);
  SPARROW_CHECK(spec.in_channels >= 1, "model '", spec.name, "': bad input channels ", spec.in_channels);
  if (spec.widths.empty()) spec.widths = default_widths(spec.name);
  else default_widths(spec.name);  // validates the name
  Rng rng(seed);
  if (int n = resnet_blocks(spec.name)) return std::make_shared<ResNetCifar>(std::move(spec), n, rng);
  if (spec.name == "resnet18") return make_resnet18(std::move(spec), rng);
  return make_vgg(std::move(spec), rng);
}

}  // namespace sparrow
