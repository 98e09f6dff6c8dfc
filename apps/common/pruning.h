// What the pruning apps share: the pruning options (sparsity, scope, granularity, which weights),
// turning fixed masks into trainable sparse layers (or dense weights held by optimizer masks), and the
// training hooks that run a self-distillation method inside the shared Trainer.
#pragma once
#include <memory>

#include "apps/common/trainer.h"
#include "compress/criteria.h"
#include "compress/self_distill.h"

namespace sparrow {

struct PruneOptions {
  double sparsity = 0.9;
  std::string scope = "global";
  std::string granularity = "unstructured";
  bool min_keep = false;
  bool skip_first_conv = false;
  bool skip_classifier = false;
  bool prune_linear = true;
  // auto/on: pattern + values layers, conv through the direct sparse kernel (auto: at density <= the
  // measured crossover); off: dense weights held at zero by optimizer masks (the reference path).
  std::string sparse_kernels = "auto";
};

void add_prune_options(CLI::App& app, PruneOptions& p);
PruneConfig prune_config(const PruneOptions& p);
PrunableSpec prunable_spec(const PruneOptions& p);

// Fixes `masks` on the model (weights zeroed) and builds the optimizer for sparse training: with sparse
// kernels on, each pruned layer becomes pattern + values and the optimizer state is nnz-sized; off, the
// dense weights stay and the optimizer keeps pruned entries (and their momentum) at exactly zero.
std::unique_ptr<Sgd> sparse_training_setup(Model& model, const std::vector<PrunableParam>& params, const MaskSet& masks,
                                           const PruneOptions& p, const SgdConfig& sgd);
// For --resume: switch the layers a checkpoint stores as sparse before the optimizer is built.
void prepare_from_checkpoint(Model& model, const std::string& path, const std::string& sparse_kernels = "auto");

// Trainer hooks that run `sd` on each batch (two views / pairs / indices as it needs) and keep its state
// in checkpoints. `epochs` is the run's length (PS-KD's α schedule).
TrainHooks sd_train_hooks(SdMethod& sd, Model& model, Device device, int epochs);
BatchSpec sd_batch_spec(const SdMethod& sd);

// Pruned weights that are not exactly zero now, or whose momentum is not: dense layers held by optimizer
// masks and sparse layers (entries off their pattern). Must stay 0 through any training.
int64_t revived_weights(Model& model, Sgd& opt);

}  // namespace sparrow
