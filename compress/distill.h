// Distillation losses as autograd ops over the fused KL kernel (kernels/distill): Hinton KD, reverse KD
// and the β-mixed "CA-KLD", optionally with the hard-label CE term and logit standardisation
// (ALGORITHMS.md §0.1). The teacher's logits are constants (detached): only the student gets a gradient.
#pragma once
#include "engine/ops.h"
#include "kernels/distill/distill.h"

namespace sparrow {

// Batchmean (1−α)·CE(z_s, y) + α·T²·[β·KL(p_s‖p_t) + (1−β)·KL(p_t‖p_s)]; labels undefined = KL term only
// (weight T², α ignored). zs, zt: B×C on the same device.
Tensor kd_loss(const Tensor& zs, const Tensor& zt, const KlParams& params, const Tensor& labels = Tensor());

// The three named losses of the papers, with α and T (and β for the mix).
struct KDLoss {
  double T = 4.0, alpha = 0.9;
  LogitNorm norm = LogitNorm::none;
  Tensor operator()(const Tensor& zs, const Tensor& zt, const Tensor& labels = Tensor()) const {
    return kd_loss(zs, zt, {T, alpha, 0.0, norm}, labels);
  }
};
struct ReverseKD {
  double T = 4.0, alpha = 0.9;
  LogitNorm norm = LogitNorm::none;
  Tensor operator()(const Tensor& zs, const Tensor& zt, const Tensor& labels = Tensor()) const {
    return kd_loss(zs, zt, {T, alpha, 1.0, norm}, labels);
  }
};
struct MixedKD {  // "CA-KLD"
  double T = 5.0, alpha = 0.5, beta = 0.5;
  LogitNorm norm = LogitNorm::none;
  Tensor operator()(const Tensor& zs, const Tensor& zt, const Tensor& labels = Tensor()) const {
    return kd_loss(zs, zt, {T, alpha, beta, norm}, labels);
  }
};

// Soft-target cross-entropy −Σ target·log_softmax(z) / B (PS-KD); target B×C constant.
Tensor soft_cross_entropy(const Tensor& logits, const Tensor& target);

}  // namespace sparrow
