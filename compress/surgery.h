// PDD surgery (ALGORITHMS.md §3): from the kept channels of each gate, build the narrower model of the
// same architecture (make_model with new widths) and copy the kept conv weights into it.
// VGG: conv i keeps its output channels from gate i and its input channels from gate i−1.
// CIFAR ResNet (option A): both convs of block k take their output channels from gate k; c1's input
// channels follow block k−1's gate (the stem, never gated, for block 0), c2's follow gate k; the fc
// input follows the last gate. The narrow net's option-A shortcuts pad or crop by position.
#pragma once
#include <cstdint>
#include <vector>

#include "compress/gates.h"

namespace sparrow {

struct SurgeryConfig {
  // Also copy the kept BN parameters and running statistics, the conv biases and the classifier
  // (ALGORITHMS.md §3 groups these under --inherit-bn); otherwise they keep the narrow model's fresh
  // initialisation from `seed`.
  bool inherit_bn = false;
  uint64_t seed = 0;
};

// keep[k]: ascending channel indices kept by gate k (the GatedModel's order). A gate keeping nothing is
// an error (the narrow model would have a zero-width layer).
ModelPtr narrow_model(const Model& model, const std::vector<std::vector<int64_t>>& keep, const SurgeryConfig& cfg);
ModelPtr narrow_from_gates(const GatedModel& gated, const SurgeryConfig& cfg);

}  // namespace sparrow
