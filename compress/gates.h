// PDD's differentiable channel gates (ALGORITHMS.md §3): one real m_c per channel, forward
// g_c = (sign(m_c)+1)/2 (½ at exactly 0), y = g ⊙ x over N×C(×H×W); backward straight-through with
// ApproxSign: ∂L/∂m_c = ½·max(0, 2−2|m_c|)·Σ_{n,h,w} ∂L/∂y·x, ∂L/∂x = g ⊙ ∂L/∂y. Gates hang on the
// models' hooks (BasicBlockA::gate, Vgg::gates), so the model's own names and state dict are unchanged.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/models.h"

namespace sparrow {

// y = g(m) ⊙ x with the straight-through backward above. x: N×C×H×W or N×C; m: C.
Tensor channel_gate(const Tensor& x, const Tensor& m);

class ChannelGate : public Module {
 public:
  ChannelGate(int channels, Rng& rng);  // m ~ N(0,1)·0.001
  Tensor forward(const Tensor& x) override { return channel_gate(x, m); }
  const char* type_name() const override { return "ChannelGate"; }
  std::vector<int64_t> kept() const;  // ascending channels with m_c > 0 (PDD's readout)
  Tensor m;
};

// A model with gates at PDD's placements: VGG after every conv→BN→ReLU, CIFAR ResNet (option A) one per
// basic block on the block output after add and ReLU, none on the stem.
struct GatedModel {
  ModelPtr model;
  std::vector<std::string> names;                   // "blocks.3.gate", "features.2.gate", ...
  std::vector<std::shared_ptr<ChannelGate>> gates;  // in forward order
  Tensor forward(const Tensor& x) const { return model->forward(x); }
  std::vector<Tensor> gate_parameters() const;
  StateDict gate_state_dict() const;  // "<name>.m"
  void load_gate_state_dict(const StateDict& sd);
};

GatedModel insert_gates(ModelPtr model, uint64_t seed);
void remove_gates(GatedModel& gated);                            // detaches the gates from the model
std::vector<std::vector<int64_t>> kept_channels(const GatedModel& gated);  // per gate

}  // namespace sparrow
