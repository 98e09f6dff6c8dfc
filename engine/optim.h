// Optimisers and learning-rate schedules. SGD follows torch.optim.SGD exactly (coupled weight decay,
// dampening, Nesterov). A parameter may carry a 0/1 mask: its masked entries stay exactly zero — the
// gradient, weight decay and momentum at those positions are never applied.
#pragma once
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace sparrow {

struct SgdConfig {
  double lr = 0.1;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

class Sgd {
 public:
  Sgd(std::vector<Tensor> params, SgdConfig cfg);
  void step();
  void zero_grad();
  void set_lr(double lr) { cfg_.lr = lr; }
  double lr() const { return cfg_.lr; }
  const SgdConfig& config() const { return cfg_; }
  // Per-parameter options: weight decay 0 (e.g. for gates) or a fixed 0/1 mask (same shape, same dtype).
  void set_weight_decay(const Tensor& param, double wd);
  void set_mask(const Tensor& param, const Tensor& mask);
  const std::vector<Tensor>& params() const { return params_; }
  // Momentum buffers (undefined until the first step), in parameter order: for checkpoints.
  std::vector<Tensor>& momentum_buffers() { return bufs_; }
  const Tensor& mask_of(size_t i) const { return masks_[i]; }

 private:
  int index_of(const Tensor& p) const;
  std::vector<Tensor> params_, bufs_, masks_;
  std::vector<double> wd_;
  SgdConfig cfg_;
};

// lr at `epoch` (0-based) for the schedules the papers use.
struct LrSchedule {
  enum Kind { Constant, MultiStep, Cosine } kind = Constant;
  double base_lr = 0.1;
  std::vector<int> milestones;  // MultiStep: multiply by gamma at each milestone epoch
  double gamma = 0.1;
  int total_epochs = 1;         // Cosine: T_max
  double eta_min = 0.0;
  double lr_at(int epoch) const;
};

// Parses "constant", "multistep:100,150", "cosine" (errors name the option).
LrSchedule parse_schedule(const std::string& spec, double base_lr, int total_epochs, double gamma = 0.1);

}  // namespace sparrow

namespace sparrow {
// Scales every parameter's gradient so their joint L2 norm is at most max_norm (torch.nn.utils.
// clip_grad_norm_); returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);
}  // namespace sparrow
