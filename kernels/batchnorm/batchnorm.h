// Batch normalisation over N×C×HW (NCHW; hw = H·W, 1 for BatchNorm1d). Per channel c:
// train: mean/var over N·HW (biased var for normalising, unbiased for the running update with momentum).
#pragma once
#include <cstdint>

#include "kernels/common/moments.h"

namespace sparrow {

struct BatchNormShape {
  int n, c, hw;
};

// Training forward. Writes y, save_mean[c], save_invstd[c] = 1/sqrt(var+eps); updates
// running_mean/var in place: r = (1−momentum)·r + momentum·stat (running_var takes the unbiased var).
// gamma/beta may be null (affine off). running_* may be null (no tracking).
template <typename T>
void batchnorm_forward_train_cpu(const BatchNormShape& s, const T* x, const T* gamma, const T* beta, T* y,
                                 T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                                 double momentum, double eps);
// Eval forward with running statistics. Writes y.
template <typename T>
void batchnorm_forward_eval_cpu(const BatchNormShape& s, const T* x, const T* gamma, const T* beta,
                                const T* running_mean, const T* running_var, double eps, T* y);
// Training backward. Writes dx, dgamma, dbeta (dgamma/dbeta may be null).
template <typename T>
void batchnorm_backward_train_cpu(const BatchNormShape& s, const T* x, const T* dy, const T* gamma,
                                  const T* save_mean, const T* save_invstd, T* dx, T* dgamma, T* dbeta);
// Eval backward (statistics are constants). Writes dx, dgamma, dbeta.
template <typename T>
void batchnorm_backward_eval_cpu(const BatchNormShape& s, const T* x, const T* dy, const T* gamma,
                                 const T* running_mean, const T* running_var, double eps, T* dx, T* dgamma,
                                 T* dbeta);

// Fused batch norm + ReLU (+ residual), the conv → BN → ReLU and conv → BN → add → ReLU of ResNet/VGG
// blocks: y = max(bn(x) + r, 0), r (same shape as x) may be null. A statistics pass over x, then one that
// reads x (and r) and writes y: 3 activation-sized reads/writes (4 with r), where BN, add and ReLU as
// separate ops make 5 (8). Statistics, running update
// and saved mean/invstd as the unfused forwards. Every forward computes z = fma(x − mean, scale, β) with
// scale = γ·invstd from the saved (rounded) invstd, which the fused backward relies on.
// `moments` (optional): x's per-channel moments gathered by the kernel that wrote x (the sparse
// convolution); then the statistics pass is skipped. Their count and channels must match x.
template <typename T>
void batchnorm_relu_forward_train_cpu(const BatchNormShape& s, const T* x, const T* r, const T* gamma,
                                      const T* beta, T* y, T* save_mean, T* save_invstd, T* running_mean,
                                      T* running_var, double momentum, double eps,
                                      const ChannelMoments* moments = nullptr);
template <typename T>
void batchnorm_relu_forward_eval_cpu(const BatchNormShape& s, const T* x, const T* r, const T* gamma,
                                     const T* beta, const T* running_mean, const T* running_var, double eps,
                                     T* y);
// Training backward of y = max(bn(x), 0) (no residual): dy is masked by the ReLU, the mask recomputed from
// x by the forward's own expression (bit-identical decision), so neither y nor a masked dy is read or
// written. Writes dx, dgamma, dbeta (dgamma/dbeta may be null); beta must be the forward's.
template <typename T>
void batchnorm_relu_backward_train_cpu(const BatchNormShape& s, const T* x, const T* dy, const T* gamma,
                                       const T* beta, const T* save_mean, const T* save_invstd, T* dx, T* dgamma,
                                       T* dbeta);

// Training backward of y = max(bn(x) + r, 0): dr = dy masked by y > 0 (the residual's gradient, written
// in the pass that sums it) and dx the batch-norm backward of dr, which the second pass reads instead of dy
// and y. Writes dx, dr, dgamma, dbeta (dgamma/dbeta may be null).
template <typename T>
void batchnorm_relu_residual_backward_train_cpu(const BatchNormShape& s, const T* x, const T* y, const T* dy,
                                                const T* gamma, const T* save_mean, const T* save_invstd, T* dx,
                                                T* dr, T* dgamma, T* dbeta);

// Plain two-pass references for tests (same contracts).
template <typename T>
void batchnorm_forward_train_ref_cpu(const BatchNormShape& s, const T* x, const T* gamma, const T* beta,
                                     T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                                     double momentum, double eps);
template <typename T>
void batchnorm_backward_train_ref_cpu(const BatchNormShape& s, const T* x, const T* dy, const T* gamma,
                                      const T* save_mean, const T* save_invstd, T* dx, T* dgamma, T* dbeta);

}  // namespace sparrow

#if SPARROW_HAS_CUDA
namespace sparrow {
// Device pointers, float, on the compute stream; same contracts as the CPU versions (nullable gamma,
// beta, running statistics, dgamma, dbeta). Statistics are summed in double per (channel, slice of
// images) and merged in a fixed order, so results are reproducible run to run.
void batchnorm_forward_train_cuda(const BatchNormShape& s, const float* x, const float* gamma, const float* beta,
                                  float* y, float* save_mean, float* save_invstd, float* running_mean,
                                  float* running_var, double momentum, double eps);
void batchnorm_forward_eval_cuda(const BatchNormShape& s, const float* x, const float* gamma, const float* beta,
                                 const float* running_mean, const float* running_var, double eps, float* y);
void batchnorm_backward_train_cuda(const BatchNormShape& s, const float* x, const float* dy, const float* gamma,
                                   const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                                   float* dbeta);
void batchnorm_backward_eval_cuda(const BatchNormShape& s, const float* x, const float* dy, const float* gamma,
                                  const float* running_mean, const float* running_var, double eps, float* dx,
                                  float* dgamma, float* dbeta);
}  // namespace sparrow
#endif
