// Row-wise softmax family on B×C row-major logits, and the fused softmax cross-entropy.
#pragma once
#include <cstdint>

namespace sparrow {

template <typename T> void softmax_forward_cpu(int rows, int cols, const T* x, T* y);
template <typename T> void log_softmax_forward_cpu(int rows, int cols, const T* x, T* y);
// dx = y ⊙ (dy − Σ dy⊙y) for softmax output y. Writes dx.
template <typename T> void softmax_backward_cpu(int rows, int cols, const T* y, const T* dy, T* dx);
// dx = dy − softmax(x)·Σdy, given log-softmax output y. Writes dx.
template <typename T> void log_softmax_backward_cpu(int rows, int cols, const T* y, const T* dy, T* dx);

// Fused cross-entropy with integer labels, mean over rows: returns the loss and, when dlogits is not
// null, writes dlogits = (softmax(x) − onehot(y)) / rows. Labels must be in [0, cols) (checked).
template <typename T>
double softmax_xent_cpu(int rows, int cols, const T* logits, const int64_t* labels, T* dlogits);
// Plain reference (log_softmax then NLL), same contract.
template <typename T>
double softmax_xent_ref_cpu(int rows, int cols, const T* logits, const int64_t* labels, T* dlogits);

}  // namespace sparrow

#if SPARROW_HAS_CUDA
namespace sparrow {
// Device pointers, float, on the compute stream; one warp per row. Same contracts as the CPU versions.
void softmax_forward_cuda(int rows, int cols, const float* x, float* y);
void log_softmax_forward_cuda(int rows, int cols, const float* x, float* y);
void softmax_backward_cuda(int rows, int cols, const float* y, const float* dy, float* dx);
void log_softmax_backward_cuda(int rows, int cols, const float* y, const float* dy, float* dx);
// Fused cross-entropy: writes the mean loss into the device scalar *loss and, when dlogits is not null,
// dlogits = (softmax(x) − onehot(y)) / rows. labels are device I64. Nothing waits for the host, so labels
// are not checked here: a label outside [0, cols) makes the loss (and that row of dlogits) NaN.
void softmax_xent_cuda(int rows, int cols, const float* logits, const int64_t* labels, float* loss, float* dlogits);
}  // namespace sparrow
#endif
