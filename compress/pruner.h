// Scores -> masks: keep the top ⌈(1−s)·N⌉ weights, globally or per layer, at any granularity, with a
// deterministic tie-break and a per-layer floor (ALGORITHMS.md §0.3). Scores are one F64 tensor per
// prunable weight (its shape); larger means more important.
#pragma once
#include <string>
#include <vector>

#include "compress/mask.h"

namespace sparrow {

using Scores = std::vector<Tensor>;

enum class Scope { Global, Layer };
Scope parse_scope(const std::string& s);  // "global" | "layer"

struct PruneConfig {
  double sparsity = 0.9;  // fraction of prunable weights removed, in [0, 1); N:M must give 1 − n/m
  Scope scope = Scope::Global;
  MaskGranularity granularity;
  // A layer that would lose every weight keeps its best group instead of failing (--min-keep).
  bool min_keep = false;
};

struct LayerPruneStats {
  std::string name;
  int64_t total = 0, kept = 0;
};

struct PruneResult {
  MaskSet masks;
  std::vector<LayerPruneStats> layers;
  int64_t total = 0, kept = 0;
  int64_t target_kept = 0;  // ⌈(1−s)·N⌉ (summed over layers for Scope::Layer)
  double sparsity = 0;      // achieved: 1 − kept/total
};

// Weights whose score is −∞ are never kept while a finite score competes (SynFlow uses it for weights
// pruned in earlier rounds). NaN scores are an error naming the layer.
// Order: higher score first; ties go to the earlier layer (prunable order), then the lower flat index
// (lower group index for Block/Channel). Unstructured hits the target exactly; Block/Channel keep whole
// groups in that order until the target is reached (overshoot below one group); N:M keeps n of every
// m along each row.
PruneResult prune(const std::vector<PrunableParam>& params, const Scores& scores, const PruneConfig& cfg);

// How many of n weights survive sparsity s: n − ⌊s·n⌋ (the same as ⌈(1−s)·n⌉ without its rounding trap).
int64_t keep_count(int64_t n, double sparsity);

}  // namespace sparrow

namespace sparrow {
// TGOSP's one-shot rule (ALGORITHMS.md §2): threshold = the k-th smallest score over all candidates,
// k = ⌊s·N⌋; keep a weight iff its score is strictly above the threshold. With ties at the threshold all
// tied weights go, so the achieved sparsity can exceed s (PruneResult reports it exactly).
PruneResult prune_above_threshold(const std::vector<PrunableParam>& params, const Scores& scores, double sparsity);
}  // namespace sparrow
