// CPU elementwise ops on flat arrays (OpenMP-parallel and vectorised once the array is large) and the
// CIFAR option-A shortcut on NCHW arrays (stride subsample plus channel zero-pad or crop).
#include <cstdint>
#include <cstring>

#include "engine/base/error.h"
#include "kernels/elementwise/elementwise.h"

namespace sparrow {

namespace {

// Below this many elements a memory-bound loop finishes before OpenMP could fork.
constexpr int64_t kParallelMin = 1 << 16;

void check_n(int64_t n, const char* op) { SPARROW_CHECK(n >= 0, op, ": negative length ", n); }

// Channel offset of the option-A shortcut: output channel co reads input channel co − offset.
int shortcut_offset(int cin, int cout) { return cout >= cin ? (cout - cin) / 2 : -((cin - cout) / 2); }

void check_shortcut(int n, int cin, int h, int w, int cout, int stride, const char* op) {
  SPARROW_CHECK(n > 0 && cin > 0 && h > 0 && w > 0 && cout > 0 && stride > 0, op, ": invalid shape n=", n,
                " cin=", cin, " h=", h, " w=", w, " cout=", cout, " stride=", stride);
}

}  // namespace

template <typename T>
void fill_cpu(int64_t n, T value, T* y) {
  check_n(n, "fill_cpu");
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = value;
}

template <typename T>
void relu_forward_cpu(int64_t n, const T* x, T* y) {
  check_n(n, "relu_forward_cpu");
  // x < 0 ? 0 : x lets NaN through, as PyTorch's relu does.
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
}

template <typename T>
void relu_backward_cpu(int64_t n, const T* y, const T* dy, T* dx) {
  check_n(n, "relu_backward_cpu");
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] > T(0) ? dy[i] : T(0);
}

template <typename T>
void add_cpu(int64_t n, const T* a, const T* b, T* y) {
  check_n(n, "add_cpu");
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

template <typename T>
void mul_cpu(int64_t n, const T* a, const T* b, T* y) {
  check_n(n, "mul_cpu");
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}

template <typename T>
void axpy_cpu(int64_t n, T alpha, const T* x, T* y) {
  check_n(n, "axpy_cpu");
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
void scale_cpu(int64_t n, T alpha, const T* x, T* y) {
  check_n(n, "scale_cpu");
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = alpha * x[i];
}

template <typename T>
void shortcut_a_forward_cpu(int n, int cin, int h, int w, int cout, int stride, const T* x, T* y) {
  check_shortcut(n, cin, h, w, cout, stride, "shortcut_a_forward_cpu");
  const int oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
  const int offset = shortcut_offset(cin, cout);
  const int64_t planes = int64_t(n) * cout, out_plane = int64_t(oh) * ow;
#pragma omp parallel for schedule(static) if (planes * out_plane > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const int img = int(pl / cout), co = int(pl % cout), ci = co - offset;
    T* yp = y + pl * out_plane;
    if (ci < 0 || ci >= cin) {
      for (int64_t i = 0; i < out_plane; ++i) yp[i] = T(0);
      continue;
    }
    const T* xp = x + (int64_t(img) * cin + ci) * h * w;
    if (stride == 1) {
      std::memcpy(yp, xp, size_t(out_plane) * sizeof(T));
      continue;
    }
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) yp[oy * ow + ox] = xp[int64_t(oy) * stride * w + int64_t(ox) * stride];
  }
}

template <typename T>
void shortcut_a_backward_cpu(int n, int cin, int h, int w, int cout, int stride, const T* dy, T* dx) {
  check_shortcut(n, cin, h, w, cout, stride, "shortcut_a_backward_cpu");
  const int oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
  const int offset = shortcut_offset(cin, cout);
  const int64_t planes = int64_t(n) * cin, in_plane = int64_t(h) * w, out_plane = int64_t(oh) * ow;
#pragma omp parallel for schedule(static) if (planes * in_plane > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const int img = int(pl / cin), ci = int(pl % cin), co = ci + offset;
    T* dxp = dx + pl * in_plane;
    if (co < 0 || co >= cout) {  // channel cropped away: no gradient
      for (int64_t i = 0; i < in_plane; ++i) dxp[i] = T(0);
      continue;
    }
    const T* dyp = dy + (int64_t(img) * cout + co) * out_plane;
    if (stride == 1) {
      std::memcpy(dxp, dyp, size_t(in_plane) * sizeof(T));
      continue;
    }
    for (int64_t i = 0; i < in_plane; ++i) dxp[i] = T(0);
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox)
        dxp[int64_t(oy) * stride * w + int64_t(ox) * stride] = dyp[oy * ow + ox];
  }
}

#define SPARROW_ELEMENTWISE_INSTANTIATE(T)                                             \
  template void fill_cpu<T>(int64_t, T, T*);                                           \
  template void relu_forward_cpu<T>(int64_t, const T*, T*);                            \
  template void relu_backward_cpu<T>(int64_t, const T*, const T*, T*);                 \
  template void add_cpu<T>(int64_t, const T*, const T*, T*);                           \
  template void mul_cpu<T>(int64_t, const T*, const T*, T*);                           \
  template void axpy_cpu<T>(int64_t, T, const T*, T*);                                 \
  template void scale_cpu<T>(int64_t, T, const T*, T*);                                \
  template void shortcut_a_forward_cpu<T>(int, int, int, int, int, int, const T*, T*); \
  template void shortcut_a_backward_cpu<T>(int, int, int, int, int, int, const T*, T*);

SPARROW_ELEMENTWISE_INSTANTIATE(float)
SPARROW_ELEMENTWISE_INSTANTIATE(double)

}  // namespace sparrow
