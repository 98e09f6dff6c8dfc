// Self-distillation methods (ALGORITHMS.md §0.2) as objects a training loop calls with the batch parts they
// need: DLB (two views + the previous batch), CS-KD (same-class pairs), PS-KD (sample indices). Each keeps
// its own state (DLB's stored batch, PS-KD's table) and exposes it for checkpoints.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "compress/distill.h"
#include "engine/nn.h"

namespace sparrow {

struct SdStep {
  Tensor loss;    // scalar
  Tensor logits;  // logits of the fresh view-0 samples (first B rows), for accuracy
};

struct SdInputs {
  Tensor x, x2, x_pair;  // N×C×H×W: view 0, view 1 (DLB), same-class partner (CS-KD)
  Tensor y;              // I64 labels
  Tensor index;          // I64 sample indices (PS-KD)
  int epoch = 0, epochs = 1;
};

class SdMethod {
 public:
  virtual ~SdMethod() = default;
  virtual const char* name() const = 0;
  virtual bool needs_two_views() const { return false; }
  virtual bool needs_pairs() const { return false; }
  virtual SdStep step(Module& model, const SdInputs& in) = 0;
  // State for checkpoints (tensors by name) and its restore.
  virtual std::map<std::string, Tensor> state() const { return {}; }
  virtual void load_state(const std::map<std::string, Tensor>&) {}
};

// "none": plain cross-entropy (the SD-free baseline).
class PlainCe : public SdMethod {
 public:
  const char* name() const override { return "none"; }
  SdStep step(Module& model, const SdInputs& in) override;
};

// DLB: L = CE over B_t view 0 and B_{t−1} view 1 (one forward of both) + α·T²·KL(softmax(z_prev/T) ‖
// softmax(z_rep/T)) over the repeated samples, z_prev the detached logits of B_{t−1} view 0 from step t−1.
// First step: CE only. The stored batch carries over epoch boundaries. Defaults T=3, α=1.
class Dlb : public SdMethod {
 public:
  explicit Dlb(double T = 3.0, double alpha = 1.0) : T_(T), alpha_(alpha) {}
  const char* name() const override { return "dlb"; }
  bool needs_two_views() const override { return true; }
  SdStep step(Module& model, const SdInputs& in) override;
  std::map<std::string, Tensor> state() const override;
  void load_state(const std::map<std::string, Tensor>& s) override;
  bool has_previous() const { return prev_x_.defined(); }
  void reset() { prev_x_ = prev_y_ = prev_logits_ = Tensor(); }

 private:
  double T_, alpha_;
  Tensor prev_x_, prev_y_, prev_logits_;
};

// CS-KD: L = CE(z(x), y) + λ·T²·KL(softmax(z(x')/T) ‖ softmax(z(x)/T)), z(x') without gradient (and with
// BN in the same mode: the partner forward is a separate no-grad pass). Defaults T=4, λ=1.
class CsKd : public SdMethod {
 public:
  explicit CsKd(double T = 4.0, double lambda = 1.0) : T_(T), lambda_(lambda) {}
  const char* name() const override { return "cskd"; }
  bool needs_pairs() const override { return true; }
  SdStep step(Module& model, const SdInputs& in) override;

 private:
  double T_, lambda_;
};

// PS-KD: target (1−α_t)·onehot + α_t·table[idx], α_t = α_T·(epoch+1)/epochs; soft-target CE; then
// table[idx] = softmax(z) (detached). The table starts as one-hot labels: call init_table first.
class PsKd : public SdMethod {
 public:
  explicit PsKd(double alpha_T = 0.8) : alpha_T_(alpha_T) {}
  const char* name() const override { return "pskd"; }
  void init_table(const std::vector<int32_t>& labels, int classes);
  SdStep step(Module& model, const SdInputs& in) override;
  std::map<std::string, Tensor> state() const override { return {{"pskd.table", table_}}; }
  void load_state(const std::map<std::string, Tensor>& s) override;
  const Tensor& table() const { return table_; }

 private:
  double alpha_T_;
  Tensor table_;  // N×C float on CPU
};

// "dlb", "cskd", "pskd", "none" (with the method's default hyper-parameters).
std::unique_ptr<SdMethod> make_sd_method(const std::string& name);

}  // namespace sparrow
