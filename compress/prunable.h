// Which weights pruning may touch (conv and linear weights by default, ALGORITHMS.md §0), and the small
// model utilities the criteria share: snapshots of every parameter and buffer, gradients of a loss
// closure, in-place dtype conversion (double-precision oracles in tests). Layers are found by walking
// named_modules(), so any Module tree works, not only the zoo's models.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/nn.h"

namespace sparrow {

// A loss closure: runs the model on some batch chosen by `index` (batch number, or inner step k for
// the meta-gradient) and returns a scalar. The criteria never see data, only these closures, so any
// loss works (CE, a self-distillation loss for EPSD, a KD loss for TGOSP).
using LossFn = std::function<Tensor(int index)>;

struct PrunableSpec {
  bool conv = true;              // Conv2d weights
  bool linear = true;            // Linear weights (TGOSP scores conv only: --prune-linear)
  bool skip_first_conv = false;  // the first Conv2d in module order
  bool skip_classifier = false;  // the last Linear in module order
};

struct PrunableParam {
  std::string name;    // state-dict name of the weight, e.g. "blocks.0.c1.weight"
  WeightLayer* layer;  // owner (Conv2d or Linear); the model must outlive this list
  bool is_conv;
  Tensor weight() const { return layer->weight; }  // dense layers: the parameter itself
};

std::vector<PrunableParam> prunable_params(Module& model, const PrunableSpec& spec = {});

// Deep copy of every parameter and buffer, restored into the same tensors (every handle sees it).
class ModelSnapshot {
 public:
  explicit ModelSnapshot(const Module& model);
  void restore() const;

 private:
  std::vector<std::pair<Tensor, Tensor>> saved_;  // (live tensor, copy)
};

// dL/dp for each p in `wrt` after one backward of loss(index); zeros where no gradient reached. The
// model's .grad fields are cleared before and after, so nothing leaks into an optimizer.
std::vector<Tensor> loss_gradients(Module& model, const LossFn& loss, int index, const std::vector<Tensor>& wrt);

// Converts every float parameter and buffer of `model` to `dtype` in place (CPU; handles keep working).
void convert_module_dtype(Module& model, DType dtype);

}  // namespace sparrow
