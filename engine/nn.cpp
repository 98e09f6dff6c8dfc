// Module bookkeeping and the basic layers.
#include "engine/nn.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <type_traits>
#include <typeinfo>

#include "engine/base/nvtx.h"
#include "engine/bsr_op.h"
#include "engine/sparse.h"
#include "engine/sparse_conv_op.h"

namespace sparrow {

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  t.set_requires_grad(true);
  params_.emplace_back(name, t);
  return params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.emplace_back(name, t);
  return buffers_.back().second;
}

void Module::collect(const std::string& prefix, bool params, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& [name, t] : params ? params_ : buffers_)
    if (t.defined()) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", true, out);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", false, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  for (auto& [name, child] : children_)
    for (auto& [sub, m] : child->named_modules()) out.emplace_back(sub.empty() ? name : name + "." + sub, m);
  return out;
}

void Module::replace_parameter(const std::string& name, const std::string& new_name, Tensor t) {
  for (auto& entry : params_)
    if (entry.first == name) {
      t.set_requires_grad(true);
      entry = {new_name, t};
      return;
    }
  SPARROW_FAIL(type_name(), ": no parameter '", name, "' to replace");
}

void Module::remove_buffer(const std::string& name) {
  auto it = std::find_if(buffers_.begin(), buffers_.end(), [&](const auto& e) { return e.first == name; });
  SPARROW_CHECK(it != buffers_.end(), type_name(), ": no buffer '", name, "' to remove");
  buffers_.erase(it);
}

void Module::set_transient(const std::string& name, bool on) {
  auto it = std::find(transient_.begin(), transient_.end(), name);
  if (on && it == transient_.end()) transient_.push_back(name);
  if (!on && it != transient_.end()) transient_.erase(it);
}

void Module::collect_state(const std::string& prefix, StateDict& sd) const {
  sync_state();
  auto saved = [&](const std::string& n) { return std::find(transient_.begin(), transient_.end(), n) == transient_.end(); };
  for (const auto& list : {&params_, &buffers_})
    for (const auto& [name, t] : *list)
      if (t.defined() && saved(name)) sd[prefix + name] = t;
  for (const auto& [name, child] : children_) child->collect_state(prefix + name + ".", sd);
}

StateDict Module::state_dict() const {
  StateDict sd;
  collect_state("", sd);
  return sd;
}

void Module::load_state_dict(const StateDict& sd, bool strict) {
  StateDict mine = state_dict();
  std::set<std::string> used;
  for (auto& [name, dst] : mine) {
    auto it = sd.find(name);
    if (it == sd.end()) {
      SPARROW_CHECK(!strict, "state dict is missing '", name, "' (shape ", dst.shape_str(), ")");
      continue;
    }
    SPARROW_CHECK(it->second.shape() == dst.shape(), "state dict entry '", name, "' has shape ",
                  it->second.shape_str(), ", the model expects ", dst.shape_str());
    Tensor src = it->second;
    if (src.device() != Device::CPU && dst.device() == Device::CPU) src = src.to(Device::CPU);
    if (src.dtype() != dst.dtype()) src = src.to(Device::CPU).to(dst.dtype());
    Tensor d = dst;
    d.copy_(src);
    used.insert(name);
  }
  if (strict)
    for (auto& [name, t] : sd)
      SPARROW_CHECK(used.count(name), "state dict has an unexpected entry '", name, "' (shape ", t.shape_str(), ")");
  for (auto& [name, m] : named_modules()) m->after_load();
}

void Module::to(Device device) {
  for (auto& [name, t] : named_parameters()) Tensor(t).move_to_(device);
  // Integer buffers are host-side counters (BN's num_batches_tracked): keeping them on the host saves a
  // device round trip per BN layer per step.
  for (auto& [name, t] : named_buffers())
    if (is_floating(t.dtype())) Tensor(t).move_to_(device);
}

void Module::zero_grad() {
  for (auto& [name, t] : named_parameters()) t.impl().grad = nullptr;
}

// ---------------------------------------------------------------- init

namespace {
int64_t fan_in_of(const Tensor& w) { return w.dim() >= 2 ? w.numel() / w.size(0) : w.numel(); }
}  // namespace

void init_kaiming_normal(Tensor& w, Rng& rng) {
  const double std = std::sqrt(2.0 / double(fan_in_of(w)));
  w.copy_(Tensor::randn(w.shape(), rng, 0.0, std, w.dtype()));
}

void init_kaiming_uniform_default(Tensor& w, Rng& rng) {
  // kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + a²) fan_in)) = 1 / sqrt(fan_in).
  const double bound = 1.0 / std::sqrt(double(fan_in_of(w)));
  w.copy_(Tensor::uniform(w.shape(), rng, -bound, bound, w.dtype()));
}

void init_bias_default(Tensor& b, int64_t fan_in, Rng& rng) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(double(fan_in)) : 0.0;
  b.copy_(Tensor::uniform(b.shape(), rng, -bound, bound, b.dtype()));
}

// ---------------------------------------------------------------- dense or sparse weight

const SparseWeight& WeightLayer::sparse() const {
  SPARROW_CHECK(sparse_, type_name(), ": the weight is dense (call make_sparse first)");
  return *sparse_;
}

void WeightLayer::rebuild_from(const Tensor& dense, const Tensor& mask) {
  sparse_ = sparse_from_dense(dense, mask);
  replace_parameter("weight_values", "weight_values", sparse_->values);
  remove_buffer("weight_pattern");
  register_buffer("weight_pattern", sparse_->pattern);
  NoGradGuard ng;
  weight.copy_(sparse_->to_dense());
  Tensor(buffer_mask_).copy_(mask.to(weight.dtype()));
}

void WeightLayer::make_sparse(const Tensor& mask) {
  SPARROW_CHECK(mask.shape() == weight.shape(), type_name(), ": mask of shape ", mask.shape_str(), " for a weight of shape ",
                weight.shape_str());
  if (sparse_) {
    rebuild_from(dense_weight(), mask);
    return;
  }
  sparse_ = sparse_from_dense(weight, mask);
  replace_parameter("weight", "weight_values", sparse_->values);
  // The old parameter becomes the dense export buffer (same handle, no gradient, pruned entries zero).
  weight.set_requires_grad(false);
  weight.impl().grad = nullptr;
  {
    NoGradGuard ng;
    weight.copy_(sparse_->to_dense());
  }
  register_buffer("weight", weight);
  buffer_mask_ = register_buffer("weight_mask", mask.to(Device::CPU).to(weight.dtype()).clone());
  register_buffer("weight_pattern", sparse_->pattern);
  set_transient("weight_values", true);
  set_transient("weight_pattern", true);
}

void WeightLayer::make_dense() {
  if (!sparse_) return;
  Tensor w = dense_weight();
  remove_buffer("weight");
  remove_buffer("weight_mask");
  remove_buffer("weight_pattern");
  set_transient("weight_values", false);
  set_transient("weight_pattern", false);
  replace_parameter("weight_values", "weight", w);
  buffer_mask_ = Tensor();
  sparse_ = nullptr;
}

Tensor WeightLayer::dense_weight() const {
  if (sparse_) {
    NoGradGuard ng;
    Tensor(weight).copy_(sparse_->to_dense());
  }
  return weight;
}

Tensor WeightLayer::forward_weight() const {
  return sparse_ ? scatter_to_dense(sparse_->values, sparse_->pattern, sparse_->dense_shape) : weight;
}

int WeightLayer::bsr_block() const {
  if (!sparse_) return 0;
  if (bsr_key_.lock() != sparse_->pattern.impl_ptr()) {
    bsr_block_ = detect_block(*sparse_);
    bsr_layout_.reset();
    bsr_key_ = sparse_->pattern.impl_ptr();
  }
  return bsr_block_;
}

bool WeightLayer::uses_bsr_kernel(Device device) const {
  if (!is_sparse() || device != Device::CPU || sparse_->values.dtype() != DType::F32) return false;
  const SparseKernelMode mode = sparse_kernel_mode();
  if (mode == SparseKernelMode::Off ||
      (mode == SparseKernelMode::Auto && sparse_->density() > bsr_kernel_crossover()))
    return false;
  return bsr_block() > 0;
}

const std::shared_ptr<const BsrLayout>& WeightLayer::bsr_layout() const {
  const int b = bsr_block();  // refreshes the cache when the pattern changed
  SPARROW_CHECK(b > 0, type_name(), ": the weight pattern is not block-structured");
  if (!bsr_layout_) bsr_layout_ = bsr_layout_from_sparse(*sparse_, b);
  return bsr_layout_;
}

void WeightLayer::sync_state() const { dense_weight(); }

void WeightLayer::after_load() {
  if (!sparse_) return;
  // weight and weight_mask hold what was loaded; the mask is the authority for the pattern.
  const std::vector<double> m = buffer_mask_.to_vector<double>();
  const int64_t* p = sparse_->pattern.data<int64_t>();
  int64_t kept = 0;
  bool same = true;
  for (double v : m) kept += v != 0.0;
  same = kept == sparse_->nnz();
  for (int64_t i = 0; same && i < sparse_->nnz(); ++i) same = m[size_t(p[i])] != 0.0;
  if (same) {
    NoGradGuard ng;
    Tensor(sparse_->values).copy_(gather_at(weight, sparse_->pattern));
    weight.copy_(sparse_->to_dense());
  } else {
    rebuild_from(weight.clone(), buffer_mask_.clone());
  }
}

// ---------------------------------------------------------------- layers

Conv2d::Conv2d(int cin, int cout, int k, int stride, int pad, bool with_bias, Rng& rng)
    : cin(cin), cout(cout), k(k), stride(stride), pad(pad) {
  SPARROW_CHECK(cin > 0 && cout > 0 && k > 0, "Conv2d: bad channels ", cin, "->", cout, " or kernel ", k);
  weight = register_parameter("weight", Tensor::empty({cout, cin, k, k}));
  init_kaiming_uniform_default(weight, rng);
  if (with_bias) {
    bias = register_parameter("bias", Tensor::empty({cout}));
    init_bias_default(bias, int64_t(cin) * k * k, rng);
  }
}

bool Conv2d::uses_sparse_kernel(Device device) const {
  if (!is_sparse() || device != Device::CPU) return false;
  const SparseKernelMode mode = sparse_kernel_mode();
  return mode == SparseKernelMode::On ||
         (mode == SparseKernelMode::Auto &&
          sparse().density() <= sparse_kernel_crossover(cin, k, stride, last_input_width));
}

bool Conv2d::uses_direct_dense_kernel(Device device) const {
  return !is_sparse() && device == Device::CPU && sparse_kernel_mode() == SparseKernelMode::Auto &&
         sparse_kernel_crossover(cin, k, stride, last_input_width) >= 1.0 &&
         (weight.dtype() == DType::F32 || weight.dtype() == DType::F64);
}

Tensor Conv2d::forward(const Tensor& x, ChannelMoments* moments) {
  if (moments) moments->count = 0;
  if (x.dim() == 4) last_input_width = int(x.size(3));
  Tensor y;
  if (uses_bsr_kernel(x.device())) {
    y = bsr_conv2d(x, sparse().values, bsr_layout(), bias, {k, k, stride, pad});
  } else if (uses_sparse_kernel(x.device())) {
    const SparseWeight& sw = sparse();
    const std::shared_ptr<TensorImpl>& key = sw.pattern.impl_ptr();
    if (!kernel_pattern_ || kernel_pattern_key_.lock() != key) {
      const Conv2dShape s{1, cin, k, k, cout, k, k, stride, pad};
      kernel_pattern_ = std::make_shared<const SparseConvPattern>(
          sparse_conv_pattern_from_indices(s, sw.pattern.data<int64_t>(), sw.nnz()));
      kernel_pattern_key_ = key;
    }
    y = sparse_conv2d(x, sw.values, kernel_pattern_, bias, moments);
  } else if (uses_direct_dense_kernel(x.device())) {
    const std::shared_ptr<TensorImpl>& key = weight.impl_ptr();
    if (!kernel_pattern_ || kernel_pattern_key_.lock() != key) {
      const Conv2dShape s{1, cin, k, k, cout, k, k, stride, pad};
      const std::vector<float> all(size_t(weight.numel()), 1.0f);
      kernel_pattern_ = std::make_shared<const SparseConvPattern>(sparse_conv_pattern_from_mask(s, all.data()));
      kernel_pattern_key_ = key;
    }
    y = sparse_conv2d(x, weight, kernel_pattern_, bias, moments);
  } else {
    y = conv2d(x, forward_weight(), bias, stride, pad);
  }
  last_output_shape = y.shape();
  return y;
}

Linear::Linear(int in, int out, bool with_bias, Rng& rng) : in(in), out(out) {
  SPARROW_CHECK(in > 0 && out > 0, "Linear: bad sizes ", in, "->", out);
  weight = register_parameter("weight", Tensor::empty({out, in}));
  init_kaiming_uniform_default(weight, rng);
  if (with_bias) {
    bias = register_parameter("bias", Tensor::empty({out}));
    init_bias_default(bias, in, rng);
  }
}

Tensor Linear::forward(const Tensor& x) {
  Tensor y = uses_bsr_kernel(x.device()) ? bsr_linear(x, sparse().values, bsr_layout(), bias)
                                         : linear(x, forward_weight(), bias);
  last_output_shape = y.shape();
  return y;
}

BatchNorm2d::BatchNorm2d(int c, double momentum, double eps) : c(c), momentum(momentum), eps(eps) {
  weight = register_parameter("weight", Tensor::ones({c}));
  bias = register_parameter("bias", Tensor::zeros({c}));
  running_mean = register_buffer("running_mean", Tensor::zeros({c}));
  running_var = register_buffer("running_var", Tensor::ones({c}));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::I64));
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  if (is_training()) {
    num_batches_tracked.data<int64_t>()[0] += 1;  // stays on the host (Module::to)
  }
  Tensor y = batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum, eps);
  last_output_shape = y.shape();
  return y;
}

Tensor BatchNorm2d::forward_relu(const Tensor& x, const Tensor& residual, const ChannelMoments* moments) {
  if (is_training()) num_batches_tracked.data<int64_t>()[0] += 1;
  Tensor y = batch_norm_relu(x, residual, weight, bias, running_mean, running_var, is_training(), momentum, eps,
                             moments);
  last_output_shape = y.shape();
  return y;
}

Tensor conv_bn_relu(Conv2d& conv, BatchNorm2d& bn, const Tensor& x, const Tensor& residual) {
  if (!bn.is_training()) return bn.forward_relu(conv.forward(x), residual);
  ChannelMoments moments;
  Tensor y = conv.forward(x, &moments);
  return bn.forward_relu(y, residual, &moments);
}

void Sequential::push_back(ModulePtr m) {
  register_module(std::to_string(layers_.size()), m);
  layers_.push_back(std::move(m));
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  // Exact types only: a subclass may override forward(), which the fused path would bypass.
  auto is = [&](size_t i, auto* type) -> decltype(type) {
    using M = std::remove_pointer_t<decltype(type)>;
    return i < layers_.size() && typeid(*layers_[i]) == typeid(M) ? static_cast<M*>(layers_[i].get()) : nullptr;
  };
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto* conv = is(i, (Conv2d*)nullptr);
    auto* bn = is(conv ? i + 1 : i, (BatchNorm2d*)nullptr);
    const size_t relu_at = conv ? i + 2 : i + 1;
    if (bn && is(relu_at, (ReLU*)nullptr)) {
      h = conv ? conv_bn_relu(*conv, *bn, h) : bn->forward_relu(h);
      i = relu_at;
    } else {
      h = layers_[i]->forward(h);
    }
  }
  return h;
}

}  // namespace sparrow
