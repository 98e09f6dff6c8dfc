// CPU channel gate: the plain reference and the OpenMP kernel (kernels/gate/gate.h).
#include "kernels/gate/gate.h"

namespace sparrow {

template <typename T>
void gate_forward_ref_cpu(int64_t n, int64_t c, int64_t hw, const T* x, const T* m, T* y) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch) {
      const T g = gate_value(m[ch]);
      const int64_t base = (i * c + ch) * hw;
      for (int64_t k = 0; k < hw; ++k) y[base + k] = g * x[base + k];
    }
}

template <typename T>
void gate_backward_ref_cpu(int64_t n, int64_t c, int64_t hw, const T* x, const T* m, const T* dy, T* dx, T* dm) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const T g = gate_value(m[ch]);
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t base = (i * c + ch) * hw;
      for (int64_t k = 0; k < hw; ++k) {
        if (dx) dx[base + k] = g * dy[base + k];
        acc += double(dy[base + k]) * double(x[base + k]);
      }
    }
    if (dm) dm[ch] = T(double(gate_ste_slope(m[ch])) * acc);
  }
}

namespace {
// Below this many elements the OpenMP fork/join costs more than the loop.
constexpr int64_t kParallelMinElems = 1 << 15;
}  // namespace

template <typename T>
void gate_forward_cpu(int64_t n, int64_t c, int64_t hw, const T* x, const T* m, T* y) {
  const int64_t planes = n * c;
#pragma omp parallel for schedule(static) if (planes * hw >= kParallelMinElems)
  for (int64_t p = 0; p < planes; ++p) {
    const T g = gate_value(m[p % c]);
    const T* xp = x + p * hw;
    T* yp = y + p * hw;
#pragma omp simd
    for (int64_t k = 0; k < hw; ++k) yp[k] = g * xp[k];
  }
}

template <typename T>
void gate_backward_cpu(int64_t n, int64_t c, int64_t hw, const T* x, const T* m, const T* dy, T* dx, T* dm) {
  if (dx) gate_forward_cpu(n, c, hw, dy, m, dx);  // ∂L/∂x = g ⊙ ∂L/∂y: the forward map on dy
  if (!dm) return;
  // One channel per iteration, summed in the reference's (n, hw) order: bit-identical to it.
#pragma omp parallel for schedule(dynamic, 1) if (n * c * hw >= kParallelMinElems)
  for (int64_t ch = 0; ch < c; ++ch) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T* xp = x + (i * c + ch) * hw;
      const T* dyp = dy + (i * c + ch) * hw;
      for (int64_t k = 0; k < hw; ++k) acc += double(dyp[k]) * double(xp[k]);
    }
    dm[ch] = T(double(gate_ste_slope(m[ch])) * acc);
  }
}

#define SPARROW_GATE_INSTANTIATE(T)                                                                         \
  template void gate_forward_ref_cpu<T>(int64_t, int64_t, int64_t, const T*, const T*, T*);               \
  template void gate_backward_ref_cpu<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, T*, T*); \
  template void gate_forward_cpu<T>(int64_t, int64_t, int64_t, const T*, const T*, T*);                   \
  template void gate_backward_cpu<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, T*, T*);
SPARROW_GATE_INSTANTIATE(float)
SPARROW_GATE_INSTANTIATE(double)
#undef SPARROW_GATE_INSTANTIATE

}  // namespace sparrow
