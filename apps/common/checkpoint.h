// Checkpoints: a model's state dict, optimizer state, masks and loop position in one safetensors file
// (written atomically). Model tensors keep their PyTorch names, so `safetensors.torch.load_file` gives a
// state_dict; other entries are prefixed "optim.", "rng." and "extra.". Metadata carries the model spec.
#pragma once
#include <string>

#include "engine/io/safetensors.h"
#include "engine/optim.h"
#include "models/models.h"

namespace sparrow {

StEntry tensor_to_entry(const Tensor& t);
Tensor entry_to_tensor(const StEntry& e, const std::string& what);

struct LoopPosition {
  int epoch = 0;              // epoch to run next (or in progress)
  int64_t batches_done = 0;   // batches of `epoch` already applied
  int64_t global_step = 0;
};

// Writes model (+ optimizer, + position) into an StFile; `extra` entries are copied in as is.
StFile make_checkpoint(Model& model, const Sgd* opt, const LoopPosition& pos,
                       const std::map<std::string, std::string>& metadata = {});
void save_checkpoint(const std::string& path, const StFile& file);

// The model spec stored in a checkpoint's metadata (name, classes, in_channels, widths, classifier).
// Untrusted: every number is parsed strictly, and a spec whose smallest possible model needs more weight
// bytes than the file holds is rejected before anything is allocated.
ModelSpec checkpoint_model_spec(const StFile& file, const std::string& path);
// What differs between the model a checkpoint holds and the one a run asks for, one "field: a vs b" per
// difference ("model: resnet8 vs resnet20; widths: [16,16,32,64] vs [8,16,32,64]"); "" when they match.
// Empty widths on the run's side mean the architecture's defaults.
std::string spec_differences(const ModelSpec& checkpoint, const ModelSpec& run);
// Builds the model a checkpoint describes and loads its weights (a narrowed PDD model loads like any other).
ModelPtr load_model_from_checkpoint(const std::string& path, StFile* file_out = nullptr);
// Restores weights, optimizer state and position. Errors name the path and what differs.
void restore_checkpoint(const StFile& file, const std::string& path, Model& model, Sgd* opt, LoopPosition* pos);

std::string widths_to_string(const std::vector<int>& w);
std::vector<int> parse_widths(const std::string& s, const std::string& what);

}  // namespace sparrow
