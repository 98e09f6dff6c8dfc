// The model zoo: CIFAR ResNets with option-A shortcuts (resnet8/20/32/44/56/110), the CIFAR ResNet-18
// with projection shortcuts, and VGG-11/13/16/19 with BN. Every model takes 1- or 3-channel inputs of
// any size the pooling allows, and per-layer widths (PDD surgery builds narrower nets by name + widths).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/nn.h"

namespace sparrow {

struct ModelSpec {
  std::string name = "resnet20";
  int classes = 10;
  int in_channels = 3;
  std::vector<int> widths;  // empty = the architecture's defaults; see default_widths()
  std::string classifier;   // VGG only: "" (512->classes) or "pdd" (PDD's 3-layer classifier)
};

class Model : public Module {
 public:
  const ModelSpec& spec() const { return spec_; }
  const std::vector<int>& widths() const { return spec_.widths; }

 protected:
  ModelSpec spec_;
};

using ModelPtr = std::shared_ptr<Model>;

// Builds a registered model; parameters are initialised from `seed` (Kaiming-normal for the ResNets,
// PyTorch defaults for VGG). Unknown names and bad widths are errors naming the model.
ModelPtr make_model(ModelSpec spec, uint64_t seed);
std::vector<std::string> model_names();
std::vector<int> default_widths(const std::string& name);

// CIFAR ResNet (6n+2) building block, option A. Public so compress/ can place gates and do surgery.
class BasicBlockA : public Module {
 public:
  BasicBlockA(int cin, int cout, int stride, Rng& rng);
  Tensor forward(const Tensor& x) override;
  const char* type_name() const override { return "BasicBlockA"; }
  int cin, cout, stride;
  std::shared_ptr<Conv2d> c1, c2;
  std::shared_ptr<BatchNorm2d> b1, b2;
  // Optional, applied to the block output after the add and ReLU (PDD's channel gate). Not a
  // registered child: its parameters stay out of the model's parameters and state dict.
  ModulePtr gate;
};

class ResNetCifar : public Model {
 public:
  ResNetCifar(ModelSpec spec, int blocks_per_stage, Rng& rng);
  Tensor forward(const Tensor& x) override;
  const char* type_name() const override { return "ResNetCifar"; }
  int blocks_per_stage;
  std::shared_ptr<Sequential> stem, blocks;
  std::shared_ptr<Linear> fc;
  std::vector<std::shared_ptr<BasicBlockA>> block_list;
};

// VGG with BN: features = [Conv2d(bias), BatchNorm2d, ReLU, (MaxPool2d)] per conv width, then a global
// average pool (identity at 32×32) and the classifier Sequential.
class Vgg : public Model {
 public:
  Vgg(ModelSpec spec, const std::vector<int>& pools_after, Rng& rng);
  Tensor forward(const Tensor& x) override;
  const char* type_name() const override { return "Vgg"; }
  std::shared_ptr<Sequential> features, classifier;
  std::vector<int> pool_layers;               // indices into features of the max-pools
  std::vector<std::shared_ptr<Conv2d>> convs;  // in order, one per width
  std::vector<std::shared_ptr<BatchNorm2d>> bns;
  std::vector<int> relu_layers;               // index into features of the ReLU after conv i
  // Optional per conv, applied after its ReLU (PDD's channel gates); empty or null = none. Not
  // registered children, as BasicBlockA::gate.
  std::vector<ModulePtr> gates;
};

}  // namespace sparrow
