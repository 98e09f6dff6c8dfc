// Pruning scores (ALGORITHMS.md §0.3 and §1): random, magnitude, SNIP, GraSP, SynFlow and the
// meta-gradient of ProsPr / EPSD step 1. Each returns one F64 tensor per prunable weight (its shape),
// larger = keep, and leaves the model's parameters and buffers exactly as it found them. Losses come
// in as closures (compress/prunable.h: LossFn), so the caller picks the data and the loss.
#pragma once
#include <string>
#include <vector>

#include "compress/pruner.h"

namespace sparrow {

Scores score_random(const std::vector<PrunableParam>& params, uint64_t seed);
Scores score_magnitude(const std::vector<PrunableParam>& params);  // |w|

// SNIP: |w ⊙ Σ_b ∇_w L(b)| for b = 0..batches−1 (gradients summed first, as SNIP's code does). One
// batch of it is the per-batch saliency TGOSP accumulates with a ScoreAccumulator.
Scores score_snip(Module& model, const std::vector<PrunableParam>& params, const LossFn& loss, int batches);

// GraSP: g = Σ_b ∇_w L(b), Hg = Σ_b H_b g with H_b the Hessian of L(b) w.r.t. the prunable weights,
// by central differences of gradients: H_b g ≈ (∇L_b(w+εg) − ∇L_b(w−εg)) / 2ε, ε = hvp_eps/‖g‖ (no
// double backward needed). GraSP removes the largest −w ⊙ Hg, so the score returned is w ⊙ Hg (keep the
// largest). The closure divides the logits by kGraspTemperature, as GraSP's code does.
constexpr double kGraspTemperature = 200.0;
struct GraspResult {
  Scores scores;               // w ⊙ Hg
  std::vector<Tensor> g, hg;   // F64, per prunable weight
};
GraspResult grasp(Module& model, const std::vector<PrunableParam>& params, const LossFn& loss, int batches,
                  double hvp_eps = 0.01);

// SynFlow, one round: every float parameter and buffer replaced by its absolute value (the paper's
// linearize: BN in eval mode with |γ|, |β| and its running statistics, so BN is a fixed positive
// per-channel affine map), prunable weights multiplied by `masks` when given, input all ones of
// `input_shape` (e.g. {1, 3, 32, 32}), R = Σ output, score |w ⊙ ∂R/∂w|. Weights already masked out
// score −∞ so later rounds never revive them. Runs in the model's dtype and fails on overflow (R not
// finite): convert_module_dtype(model, DType::F64) first for very deep nets.
Scores score_synflow(Module& model, const std::vector<PrunableParam>& params, const Shape& input_shape,
                     const MaskSet* masks = nullptr);
// Iterative SynFlow: `rounds` rounds of score → prune, round r to sparsity 1 − (1−s)^(r/rounds).
PruneResult synflow_prune(Module& model, const std::vector<PrunableParam>& params, const Shape& input_shape,
                          int rounds, const PruneConfig& cfg);

// Meta-gradient (EPSD §1, ProsPr): with a continuous mask m = 1 on the prunable weights,
// θ_0 = (m ⊙ W0, P0), θ_{k+1} = θ_k − η ∇_θ L(θ_k; k) for k < steps (plain SGD on every trainable
// parameter), Δ = ∂L(θ_steps; steps)/∂m.
//   first-order: Δ = W0 ⊙ ∇_W L(θ_steps);
//   full: v = ∇L(θ_steps); for k = steps−1..0: v ← v − η H_k v with H_k v = (∇L_k(θ_k+εv) −
//         ∇L_k(θ_k−εv)) / 2ε, ε = hvp_eps/‖v‖, evaluated with the buffers θ_k saw; Δ = W0 ⊙ v_W.
// loss(k) is called several times for the same k (the step, then the HVPs at θ_k ± εv) and must be the
// same function of the parameters each time: a DLB closure caches its detached previous-batch logits
// on the first call for k. steps = 0 gives W0 ⊙ ∇_W L(θ_0; 0), i.e. signed SNIP.
enum class MetaGradMode { FirstOrder, Full };
MetaGradMode parse_meta_grad(const std::string& s);  // "first-order" | "full"
struct MetaGradConfig {
  int steps = 3;         // --epsd-steps
  double inner_lr = 0.1; // --epsd-inner-lr
  MetaGradMode mode = MetaGradMode::Full;
  double hvp_eps = 0.01; // --hvp-eps
};
std::vector<Tensor> meta_gradient(Module& model, const std::vector<PrunableParam>& params, const LossFn& loss,
                                  const MetaGradConfig& cfg);  // signed Δ, F64
// EPSD's score: |Δ_p| / Σ_q |Δ_q|.
Scores score_meta(Module& model, const std::vector<PrunableParam>& params, const LossFn& loss,
                  const MetaGradConfig& cfg);

}  // namespace sparrow
