// PDD's channel gate (ALGORITHMS.md §3) on N×C×HW tensors (HW = 1 for N×C): forward y = g(m_c)·x with
// g(m) = (sign(m)+1)/2 (½ at exactly 0); backward straight-through with ApproxSign,
//   ∂L/∂x = g(m_c)·∂L/∂y,   ∂L/∂m_c = ½·max(0, 2 − 2|m_c|)·Σ_{n,hw} ∂L/∂y·x = max(0, 1 − |m_c|)·Σ ∂L/∂y·x.
// The per-element and per-channel math below is shared by the CPU and CUDA launchers (DESIGN.md rule 2).
#pragma once
#include <cstdint>

#include "kernels/common/hd.h"

namespace sparrow {

template <typename T>
SPARROW_HD T gate_value(T m) {
  return m > T(0) ? T(1) : (m < T(0) ? T(0) : T(0.5));
}

// ½·max(0, 2 − 2|m|): the gate's straight-through derivative (exactly max(0, 1 − |m|) in floating point,
// since doubling is exact).
template <typename T>
SPARROW_HD T gate_ste_slope(T m) {
  const T a = m < T(0) ? -m : m;
  return a < T(1) ? T(1) - a : T(0);
}

// Plain loops: the oracle. y, dx, dm are written; dx or dm may be null. The channel sum is in double, in
// (n, hw) order.
template <typename T>
void gate_forward_ref_cpu(int64_t n, int64_t c, int64_t hw, const T* x, const T* m, T* y);
template <typename T>
void gate_backward_ref_cpu(int64_t n, int64_t c, int64_t hw, const T* x, const T* m, const T* dy, T* dx, T* dm);

// OpenMP over (n, c) planes (forward, dx) and over channels (dm; each channel's sum is one thread's, in the
// reference's order, so the result equals the reference bit for bit).
template <typename T>
void gate_forward_cpu(int64_t n, int64_t c, int64_t hw, const T* x, const T* m, T* y);
template <typename T>
void gate_backward_cpu(int64_t n, int64_t c, int64_t hw, const T* x, const T* m, const T* dy, T* dx, T* dm);

#if SPARROW_HAS_CUDA
// Device pointers, float, default stream. Forward and dx: one thread per element. dm: one 256-thread block
// per channel, a double-precision tree sum (the summation order differs from the CPU's: parity is to
// rounding, not bit for bit).
void gate_forward_cuda(int64_t n, int64_t c, int64_t hw, const float* x, const float* m, float* y);
void gate_backward_cuda(int64_t n, int64_t c, int64_t hw, const float* x, const float* m, const float* dy,
                        float* dx, float* dm);
#endif

}  // namespace sparrow
