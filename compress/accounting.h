// Parameters, nonzeros and MACs per layer at a given input size, in the thop convention the papers
// report (conv, BN and linear layers only):
//   conv   MACs = output elements × (Cin·Kh·Kw + 1 if bias)      (thop 0.0.31's count_convNd)
//   linear MACs = In × output elements                           (bias not counted)
//   BN     MACs = 0  (thop 0.1.1's count_normalization adds to a zero-initialised counter only when it
//                     is already non-zero, i.e. never; thop 0.0.31 counted BN only in eval mode)
//   params = every parameter element of the layer (weights, biases, BN γ and β; no running stats).
// This reproduces ALGORITHMS.md's figures: ResNet-20 40.55M MACs / 0.270M params; VGG-11-BN with PDD's
// classifier 153.45M / 9.76M; VGG-16-BN (PDD classifier) 314.0M / 15.25M. Only nonzero weights do work:
// a conv/linear layer's MACs count its nonzero weights (× output positions), so a sparse or masked layer
// costs its density; `dense_macs` is the same layer fully dense. After surgery the narrow model's
// layers are simply smaller.
#pragma once
#include <string>
#include <vector>

#include "compress/prunable.h"

namespace sparrow {

struct LayerCost {
  std::string name, type;  // "blocks.0.c1", "Conv2d" | "Linear" | "BatchNorm2d"
  Shape shape;             // the weight's (dense) shape
  int64_t params = 0, nonzeros = 0, macs = 0, dense_macs = 0;
};

struct CostReport {
  std::vector<LayerCost> layers;  // module order; layers the probe forward did not reach are left out
  int64_t params = 0, nonzeros = 0, macs = 0, dense_macs = 0;
  int64_t prunable = 0, prunable_nonzeros = 0;  // prunable weights (PrunableSpec)
  double sparsity = 0;                          // fraction of prunable weights that are zero
};

// Runs one forward of zeros(input_shape) (batch 1 by convention, e.g. {1, 3, 32, 32}) in eval mode
// without gradient to learn each layer's output size, restores the train/eval modes, and counts.
CostReport count_costs(Module& model, const Shape& input_shape, const PrunableSpec& prunable = {});

}  // namespace sparrow
