// Masks on prunable weights: one 0/1 tensor per weight (its shape and dtype) and a granularity that
// says which entries move together, always over the GEMM view of the weight (rows = output channels,
// columns = the rest flattened row-major: (cin, kh, kw) for a conv, inputs for a linear layer).
#pragma once
#include <string>
#include <vector>

#include "compress/prunable.h"
#include "engine/optim.h"

namespace sparrow {

enum class Granularity {
  Unstructured,  // every weight on its own
  Block,         // block_rows × block_cols tiles of the GEMM view (edge tiles may be smaller)
  Channel,       // whole rows: output channels (filters) / output neurons
  NM,            // keep n of every m consecutive weights along a row (tail runs keep min(n, length))
};

struct MaskGranularity {
  Granularity kind = Granularity::Unstructured;
  int block_rows = 16, block_cols = 16;
  int n = 2, m = 4;
  std::string str() const;  // the spelling parse_granularity accepts
};

// "unstructured", "channel", "block:16x16" (or "block:32"), "nm:2:4"; errors name the spelling.
MaskGranularity parse_granularity(const std::string& spec);

// Group index of every weight of a weight with `shape` (Unstructured and NM: -1, not grouped this
// way), and the number of groups. Used by the pruner and by tests of the patterns.
struct GroupLayout {
  int64_t rows = 0, cols = 0, groups = 0;
  std::vector<int64_t> group_of;  // per flat index (Block, Channel); empty otherwise
};
GroupLayout group_layout(const Shape& shape, const MaskGranularity& g);

struct MaskSet {
  std::vector<std::string> names;  // prunable parameter names
  std::vector<Tensor> masks;       // 0/1, each its weight's shape and dtype
  int64_t total() const;
  int64_t kept() const;
  double sparsity() const { return total() ? 1.0 - double(kept()) / double(total()) : 0.0; }
};

MaskSet full_masks(const std::vector<PrunableParam>& params);
// w ← w ⊙ mask for dense layers (checks names and shapes match).
void apply_masks(const std::vector<PrunableParam>& params, const MaskSet& masks);
// Moving or reference masks on dense weights: the optimizer keeps pruned weights, their gradient,
// momentum and weight decay at exactly zero for every later step (Sgd::set_mask).
void enforce_masks(Sgd& opt, const std::vector<PrunableParam>& params, const MaskSet& masks);
// Fixed masks: each layer switches to the sparse representation (pattern + values). Build the
// optimizer afterwards from model.parameters(): its state is then nnz-sized.
void make_sparse(const std::vector<PrunableParam>& params, const MaskSet& masks);
// Checkpoints: make sparse every Conv2d/Linear whose "<name>.weight_mask" is in `sd`, with that mask,
// so load_state_dict(sd) then finds the same entries.
void make_sparse_like(Module& model, const StateDict& sd);

}  // namespace sparrow
