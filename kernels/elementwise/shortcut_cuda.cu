// CUDA option-A shortcut on NCHW floats (compute stream), the GPU twin of the CPU version in
// elementwise_cpu.cpp: forward one thread per output element, backward one thread per input element
// (the adjoint is a pure gather: each input element has at most one output it feeds).
#include <algorithm>
#include <cstdint>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/elementwise/elementwise.h"

namespace sparrow {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;

cudaStream_t stream() { return static_cast<cudaStream_t>(cuda_stream_handle()); }
int blocks_for(int64_t n) { return int(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)); }

// Output channel co reads input channel co − offset (zero padding in front / crop, as the CPU).
int shortcut_offset(int cin, int cout) { return cout >= cin ? (cout - cin) / 2 : -((cin - cout) / 2); }

__global__ void shortcut_a_forward_kernel(int n, int cin, int h, int w, int cout, int stride, int offset, int oh,
                                          int ow, const float* __restrict__ x, float* __restrict__ y) {
  const int64_t total = int64_t(n) * cout * oh * ow;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int ox = int(i % ow), oy = int((i / ow) % oh);
    const int co = int((i / (int64_t(ow) * oh)) % cout), img = int(i / (int64_t(ow) * oh * cout));
    const int ci = co - offset;
    y[i] = (ci < 0 || ci >= cin) ? 0.0f
                                 : x[((int64_t(img) * cin + ci) * h + int64_t(oy) * stride) * w + int64_t(ox) * stride];
  }
}

__global__ void shortcut_a_backward_kernel(int n, int cin, int h, int w, int cout, int stride, int offset, int oh,
                                           int ow, const float* __restrict__ dy, float* __restrict__ dx) {
  const int64_t total = int64_t(n) * cin * h * w;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int ix = int(i % w), iy = int((i / w) % h);
    const int ci = int((i / (int64_t(w) * h)) % cin), img = int(i / (int64_t(w) * h * cin));
    const int co = ci + offset;
    float v = 0.0f;
    if (co >= 0 && co < cout && iy % stride == 0 && ix % stride == 0)
      v = dy[((int64_t(img) * cout + co) * oh + iy / stride) * ow + ix / stride];
    dx[i] = v;
  }
}

void check_shortcut(int n, int cin, int h, int w, int cout, int stride, const char* op) {
  SPARROW_CHECK(n > 0 && cin > 0 && h > 0 && w > 0 && cout > 0 && stride > 0, op, ": invalid shape n=", n,
                " cin=", cin, " h=", h, " w=", w, " cout=", cout, " stride=", stride);
}

}  // namespace

void shortcut_a_forward_cuda(int n, int cin, int h, int w, int cout, int stride, const float* x, float* y) {
  check_shortcut(n, cin, h, w, cout, stride, "shortcut_a_forward_cuda");
  const int oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
  shortcut_a_forward_kernel<<<blocks_for(int64_t(n) * cout * oh * ow), kThreads, 0, stream()>>>(
      n, cin, h, w, cout, stride, shortcut_offset(cin, cout), oh, ow, x, y);
  SPARROW_CUDA_LAUNCH_CHECK("shortcut_a_forward_kernel");
}

void shortcut_a_backward_cuda(int n, int cin, int h, int w, int cout, int stride, const float* dy, float* dx) {
  check_shortcut(n, cin, h, w, cout, stride, "shortcut_a_backward_cuda");
  const int oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
  shortcut_a_backward_kernel<<<blocks_for(int64_t(n) * cin * h * w), kThreads, 0, stream()>>>(
      n, cin, h, w, cout, stride, shortcut_offset(cin, cout), oh, ow, dy, dx);
  SPARROW_CUDA_LAUNCH_CHECK("shortcut_a_backward_kernel");
}

}  // namespace sparrow
