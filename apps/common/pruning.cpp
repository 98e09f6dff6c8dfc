// Pruning options, sparse-training setup and the SD training hooks.
#include "apps/common/pruning.h"

#include <filesystem>

#include "compress/mask.h"
#include "engine/sparse.h"

namespace sparrow {

void add_prune_options(CLI::App& app, PruneOptions& p) {
  app.add_option("--sparsity", p.sparsity, "fraction of prunable weights removed, in [0, 1)");
  app.add_option("--scope", p.scope, "global or layer (top-k over all prunable weights or per layer)");
  app.add_option("--granularity", p.granularity, "unstructured, channel, block:16, block:32x32 or nm:2:4");
  app.add_flag("--min-keep", p.min_keep, "a layer that would lose every weight keeps its best one (else an error)");
  app.add_flag("--skip-first-conv", p.skip_first_conv, "never prune the first convolution");
  app.add_flag("--skip-classifier", p.skip_classifier, "never prune the last linear layer");
  app.add_option("--sparse-kernels", p.sparse_kernels,
                 "auto, on (pattern + values layers) or off (dense weights with optimizer masks)");
}

PruneConfig prune_config(const PruneOptions& p) {
  SPARROW_CHECK(p.sparsity >= 0 && p.sparsity < 1, "--sparsity must be in [0, 1), got ", p.sparsity);
  SPARROW_CHECK(p.sparse_kernels == "auto" || p.sparse_kernels == "on" || p.sparse_kernels == "off",
                "--sparse-kernels: expected auto, on or off, got '", p.sparse_kernels, "'");
  PruneConfig c;
  c.sparsity = p.sparsity;
  c.scope = parse_scope(p.scope);
  c.granularity = parse_granularity(p.granularity);
  c.min_keep = p.min_keep;
  return c;
}

PrunableSpec prunable_spec(const PruneOptions& p) {
  PrunableSpec s;
  s.linear = p.prune_linear;
  s.skip_first_conv = p.skip_first_conv;
  s.skip_classifier = p.skip_classifier;
  return s;
}

std::unique_ptr<Sgd> sparse_training_setup(Model& model, const std::vector<PrunableParam>& params, const MaskSet& masks,
                                           const PruneOptions& p, const SgdConfig& sgd) {
  apply_masks(params, masks);
  if (p.sparse_kernels != "off") {
    set_sparse_kernel_mode(parse_sparse_kernel_mode(p.sparse_kernels));
    make_sparse(params, masks);
    return std::make_unique<Sgd>(model.parameters(), sgd);
  }
  auto opt = std::make_unique<Sgd>(model.parameters(), sgd);
  enforce_masks(*opt, params, masks);
  return opt;
}

void prepare_from_checkpoint(Model& model, const std::string& path, const std::string& sparse_kernels) {
  set_sparse_kernel_mode(parse_sparse_kernel_mode(sparse_kernels));
  if (!std::filesystem::exists(path)) return;
  StFile f = read_safetensors(path);
  StateDict masks;
  for (auto& [name, e] : f.tensors)
    if (name.size() > 12 && name.compare(name.size() - 12, 12, ".weight_mask") == 0)
      masks[name] = entry_to_tensor(e, path);
  if (!masks.empty()) make_sparse_like(model, masks);
}

BatchSpec sd_batch_spec(const SdMethod& sd) {
  BatchSpec s;
  s.two_views = sd.needs_two_views();
  s.pair = sd.needs_pairs();
  return s;
}

TrainHooks sd_train_hooks(SdMethod& sd, Model& model, Device device, int epochs) {
  TrainHooks h;
  h.loss = [&sd, &model, device, epochs](const Batch& b) {
    SdInputs in;
    in.x = images_tensor(b, b.x, device);
    if (!b.x2.empty()) in.x2 = images_tensor(b, b.x2, device);
    if (!b.x_pair.empty()) in.x_pair = images_tensor(b, b.x_pair, device);
    in.y = labels_tensor(b.y, device);
    in.index = labels_tensor(b.index, Device::CPU);
    in.epoch = b.epoch;
    in.epochs = epochs;
    SdStep s = sd.step(model, in);
    return StepOutput{s.loss, s.logits};
  };
  h.save_extra = [&sd](StFile& f) {
    for (auto& [name, t] : sd.state()) f.tensors["extra." + name] = tensor_to_entry(t);
  };
  h.load_extra = [&sd](const StFile& f) {
    std::map<std::string, Tensor> s;
    for (auto& [name, e] : f.tensors)
      if (name.rfind("extra.", 0) == 0) s[name.substr(6)] = entry_to_tensor(e, name);
    sd.load_state(s);
  };
  return h;
}

int64_t revived_weights(Model& model, Sgd& opt) {
  int64_t bad = 0;
  for (size_t i = 0; i < opt.params().size(); ++i) {
    const Tensor& mask = opt.mask_of(i);
    if (!mask.defined()) continue;
    const auto m = mask.to_vector<double>(), w = opt.params()[i].to_vector<double>();
    const Tensor& buf = opt.momentum_buffers()[i];
    const auto b = buf.defined() ? buf.to_vector<double>() : std::vector<double>(m.size(), 0.0);
    for (size_t j = 0; j < m.size(); ++j) bad += m[j] == 0 && (w[j] != 0 || b[j] != 0);
  }
  for (auto& [name, mod] : model.named_modules())
    if (auto* layer = dynamic_cast<WeightLayer*>(mod); layer && layer->is_sparse()) {
      const auto m = layer->sparse().mask().to_vector<double>(), w = layer->dense_weight().to_vector<double>();
      for (size_t j = 0; j < m.size(); ++j) bad += m[j] == 0 && w[j] != 0;
    }
  return bad;
}

}  // namespace sparrow
