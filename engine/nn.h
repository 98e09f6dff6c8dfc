// nn: Module (named parameters, buffers and children; train/eval; state dict) and the layers the
// CIFAR models are built from. Parameter names follow PyTorch's dotted convention ("blocks.0.c1.weight")
// so checkpoints map one-to-one onto a PyTorch state_dict.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/rng.h"
#include "engine/ops.h"

namespace sparrow {

using StateDict = std::map<std::string, Tensor>;
struct SparseWeight;  // engine/sparse.h

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }
  virtual const char* type_name() const { return "Module"; }

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  std::vector<Tensor> parameters() const;
  // All modules in the tree (this one first), with dotted names ("" for this one).
  std::vector<std::pair<std::string, Module*>> named_modules();

  // Parameters and buffers, sharing storage, less the transient entries (a sparse layer's value vector
  // and pattern: its state-dict form is the dense weight plus a mask).
  StateDict state_dict() const;
  // Copies values in, then lets each module rebuild derived storage (after_load). strict: every key
  // must match in name and shape, no extra keys.
  void load_state_dict(const StateDict& sd, bool strict = true);
  void to(Device device);
  void zero_grad();

 protected:
  Tensor& register_parameter(const std::string& name, Tensor t);
  Tensor& register_buffer(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }
  // For layers that change their storage (sparse weights): swap a parameter in place (same position,
  // so parameter order stays stable), drop a buffer, keep an entry out of the state dict.
  void replace_parameter(const std::string& name, const std::string& new_name, Tensor t);
  void remove_buffer(const std::string& name);
  void set_transient(const std::string& name, bool on);
  // state_dict() calls sync_state() on each module before sharing its tensors (refresh derived
  // buffers); load_state_dict() calls after_load() on each module after copying values in.
  virtual void sync_state() const {}
  virtual void after_load() {}

 private:
  void collect(const std::string& prefix, bool params, std::vector<std::pair<std::string, Tensor>>& out) const;
  void collect_state(const std::string& prefix, StateDict& sd) const;
  // Deque-free: tensors are handles, so vectors of (name, handle) stay valid through reallocation.
  std::vector<std::pair<std::string, Tensor>> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  std::vector<std::string> transient_;  // local names left out of the state dict
  bool training_ = true;
};

using ModulePtr = std::shared_ptr<Module>;

// Weight initialisations (PyTorch conventions).
void init_kaiming_normal(Tensor& w, Rng& rng);            // std = sqrt(2 / fan_in)
void init_kaiming_uniform_default(Tensor& w, Rng& rng);    // PyTorch's Conv/Linear default
void init_bias_default(Tensor& b, int64_t fan_in, Rng& rng);

// Conv2d and Linear: a weight that is dense (parameter "weight") or a fixed sparse pattern (DESIGN.md
// rule 5). make_sparse(mask) swaps the "weight" parameter for "weight_values" (nnz, what the optimizer
// updates, so its state is nnz-sized) and keeps buffers "weight_pattern" (I64, transient), "weight"
// (dense, refreshed only by dense_weight() and state_dict(), for export) and "weight_mask" (0/1, saved).
// Build optimizers after make_sparse: the old "weight" handle stops being a parameter.
// load_state_dict into a sparse layer: a saved mask equal to the pattern reloads the values at the
// pattern; a different mask rebuilds the pattern (nnz may change). Entries off the mask load as zero.
// Block-sparse layers: a sparse layer whose pattern is made of whole b×b tiles of the GEMM view (b = 32, 16
// or 8, engine/bsr_op.h detect_block; e.g. a --granularity block:32 mask) runs through the BSR kernels on
// the CPU in mode On, or Auto at density <= bsr_kernel_crossover(); every other layer keeps its path.
struct SparseConvPattern;
struct BsrLayout;

class WeightLayer : public Module {
 public:
  Tensor weight, bias;
  Shape last_output_shape;  // set by forward(): accounting reads output sizes after a probe pass

  void make_sparse(const Tensor& mask);
  void make_dense();  // back to a dense parameter "weight" (pruned entries stay zero until trained)
  bool is_sparse() const { return sparse_ != nullptr; }
  const SparseWeight& sparse() const;
  Tensor dense_weight() const;  // the weight as a dense tensor (scatters the values when sparse)
  // The pattern's block size (32, 16 or 8), 0 when dense or not block-structured. Detected once per pattern.
  int bsr_block() const;
  // Whether forward() runs the BSR kernels now (block-structured float layer, CPU, mode and density allow).
  bool uses_bsr_kernel(Device device) const;

 protected:
  Tensor forward_weight() const;  // what forward multiplies by (differentiable w.r.t. the values)
  const std::shared_ptr<const BsrLayout>& bsr_layout() const;  // built on first use, per pattern
  void sync_state() const override;
  void after_load() override;

 private:
  void rebuild_from(const Tensor& dense, const Tensor& mask);
  std::shared_ptr<SparseWeight> sparse_;
  Tensor buffer_mask_;  // the "weight_mask" buffer while sparse
  // Keyed by the pattern tensor's impl; a weak_ptr, so a new pattern allocated where a freed one lived
  // never passes for it.
  mutable std::weak_ptr<TensorImpl> bsr_key_;
  mutable int bsr_block_ = 0;
  mutable std::shared_ptr<const BsrLayout> bsr_layout_;
};

class Conv2d : public WeightLayer {
 public:
  Conv2d(int cin, int cout, int k, int stride, int pad, bool bias, Rng& rng);
  Tensor forward(const Tensor& x) override { return forward(x, nullptr); }
  // forward(x), and when the direct sparse kernel runs, y's per-channel moments into `moments` (count 0
  // otherwise): what a training BatchNorm2d after it can use instead of its statistics pass.
  Tensor forward(const Tensor& x, ChannelMoments* moments);
  const char* type_name() const override { return "Conv2d"; }
  // Whether the mode and density allow the direct sparse kernel (sparse layer, CPU); forward() runs it
  // unless uses_bsr_kernel() takes the layer first.
  bool uses_sparse_kernel(Device device) const;
  // Whether a dense layer runs the direct kernel with every weight kept (CPU, mode Auto, and a shape whose
  // crossover is 1: the direct kernel beats our dense GEMM path at every density); its value vector is then
  // the weight tensor itself (a full pattern lists the weights in their dense order).
  bool uses_direct_dense_kernel(Device device) const;
  int cin, cout, k, stride, pad;
  // The input width of the last forward(), which the crossover depends on (0 before the first).
  int last_input_width = 0;

 private:
  // The kernel's compressed pattern, built on first use from the layer's pattern and rebuilt when it
  // changes (keyed by the pattern tensor's impl, held weakly as for the BSR layout); for the direct dense
  // kernel, the full pattern, keyed by the weight's impl.
  mutable std::shared_ptr<const SparseConvPattern> kernel_pattern_;
  mutable std::weak_ptr<TensorImpl> kernel_pattern_key_;
};

class Linear : public WeightLayer {
 public:
  Linear(int in, int out, bool bias, Rng& rng);
  Tensor forward(const Tensor& x) override;
  const char* type_name() const override { return "Linear"; }
  int in, out;
};

class BatchNorm2d : public Module {  // also normalises N×C inputs (BatchNorm1d)
 public:
  explicit BatchNorm2d(int c, double momentum = 0.1, double eps = 1e-5);
  Tensor forward(const Tensor& x) override;
  // relu(forward(x) + residual) as one fused op (residual may be undefined); what conv → BN → ReLU and the
  // residual add of a ResNet block call.
  // moments: x's per-channel moments from Conv2d::forward(x, &moments), used in training when gathered.
  Tensor forward_relu(const Tensor& x, const Tensor& residual = Tensor(), const ChannelMoments* moments = nullptr);
  const char* type_name() const override { return "BatchNorm2d"; }
  Shape last_output_shape;  // set by forward(), as for WeightLayer
  int c;
  double momentum, eps;
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
};

// bn.forward_relu(conv.forward(x), residual), with the convolution's output moments handed to a training
// batch norm (so it makes one pass over the activations forward, not two, when the sparse kernel runs).
Tensor conv_bn_relu(Conv2d& conv, BatchNorm2d& bn, const Tensor& x, const Tensor& residual = Tensor());

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override { return relu(x); }
  const char* type_name() const override { return "ReLU"; }
};

class MaxPool2d : public Module {
 public:
  MaxPool2d(int k, int stride, int pad = 0) : k(k), stride(stride), pad(pad) {}
  Tensor forward(const Tensor& x) override { return max_pool2d(x, k, stride, pad); }
  const char* type_name() const override { return "MaxPool2d"; }
  int k, stride, pad;
};

class AvgPool2d : public Module {
 public:
  AvgPool2d(int k, int stride, int pad = 0) : k(k), stride(stride), pad(pad) {}
  Tensor forward(const Tensor& x) override { return avg_pool2d(x, k, stride, pad); }
  const char* type_name() const override { return "AvgPool2d"; }
  int k, stride, pad;
};

class GlobalAvgPool : public Module {
 public:
  Tensor forward(const Tensor& x) override { return global_avg_pool(x); }
  const char* type_name() const override { return "GlobalAvgPool"; }
};

class Flatten : public Module {
 public:
  Tensor forward(const Tensor& x) override { return flatten(x); }
  const char* type_name() const override { return "Flatten"; }
};

class Dropout : public Module {
 public:
  Dropout(double p, uint64_t seed) : p(p), rng(seed) {}
  Tensor forward(const Tensor& x) override { return dropout(x, p, is_training(), rng); }
  const char* type_name() const override { return "Dropout"; }
  double p;
  Rng rng;
};

// Children named "0", "1", ... as in torch.nn.Sequential.
class Sequential : public Module {
 public:
  Sequential() = default;
  void push_back(ModulePtr m);
  // Runs the layers in order; Conv2d → BatchNorm2d → ReLU runs as conv_bn_relu and BatchNorm2d → ReLU as
  // BatchNorm2d::forward_relu (exact module types only).
  Tensor forward(const Tensor& x) override;
  const char* type_name() const override { return "Sequential"; }
  size_t size() const { return layers_.size(); }
  const ModulePtr& operator[](size_t i) const { return layers_[i]; }

 private:
  std::vector<ModulePtr> layers_;
};

}  // namespace sparrow
