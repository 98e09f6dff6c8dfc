// Optimiser updates on raw arrays: SGD exactly as torch.optim.SGD (coupled weight decay, dampening,
// Nesterov) with optional 0/1 masks whose zero entries keep the parameter and its momentum at exactly 0.
// One element: d = g + wd·p; buf = first ? d : momentum·buf + (1 − dampening)·d;
// d = nesterov ? d + momentum·buf : buf; p −= lr·d (no momentum: buf is null and d is used directly).
#pragma once
#include <cstdint>

namespace sparrow {

struct SgdHyper {
  double lr = 0.1;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
};

// One element of the update above (the CPU loops share it; the CUDA kernel spells the same steps with
// __fadd_rn/__fmul_rn so the device never contracts them into FMAs).
template <typename T>
inline void sgd_element(T& p, T g, T* buf, bool masked_out, bool first, T lr, T mom, T damp, T decay, bool nesterov) {
  if (masked_out) {
    p = T(0);
    if (buf) *buf = T(0);
    return;
  }
  T d = g + decay * p;
  if (buf) {
    *buf = first ? d : mom * *buf + damp * d;
    d = nesterov ? d + mom * *buf : *buf;
  }
  p -= lr * d;
}

// buf may be null (no momentum); mask may be null; first: the momentum buffer is being initialised.
// sgd_update_ref_cpu: the plain loop, the oracle for the CUDA update. sgd_update_cpu: the same with OpenMP
// over large tensors (what Sgd::step runs on CPU); elementwise, so both give identical results.
template <typename T>
void sgd_update_ref_cpu(int64_t n, T* p, const T* g, T* buf, const T* mask, bool first, const SgdHyper& h, double wd);
template <typename T>
void sgd_update_cpu(int64_t n, T* p, const T* g, T* buf, const T* mask, bool first, const SgdHyper& h, double wd);

#if SPARROW_HAS_CUDA
// One parameter tensor of a fused update (device pointers; buf and mask may be null).
struct SgdTensor {
  float* p;
  const float* g;
  float* buf;
  const float* mask;
  int64_t n;
  float wd;
  int first;
};

// Updates every tensor in one kernel launch on the compute stream (the descriptor table is copied to the
// device first; `tensors` is host memory and may be reused as soon as this returns). The float arithmetic
// is rounded step by step (no FMA contraction); it matches the CPU loop to an ulp or two (the host
// compiler may fuse the CPU's multiply-adds).
void sgd_update_multi_cuda(const SgdTensor* tensors, int count, const SgdHyper& h);
#endif

}  // namespace sparrow
