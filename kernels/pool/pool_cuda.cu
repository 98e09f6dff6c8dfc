// CUDA pooling over NCHW planes (float, compute stream), the GPU twins of pool_cpu.cpp: one thread per
// output element forward, one thread per input element backward. Backward gathers over the windows that
// contain the element in output order, which is the CPU scatter's order: max pooling matches the CPU bit
// for bit, average pooling to the rounding of the host compiler's multiply-add fusion.
#include <algorithm>
#include <cstdint>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/pool/pool.h"

namespace sparrow {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;

cudaStream_t stream() { return static_cast<cudaStream_t>(cuda_stream_handle()); }
int blocks_for(int64_t n) { return int(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)); }

struct Win {
  int h, w, k, stride, pad, oh, ow;
};

Win win_of(const Pool2dShape& s) { return Win{s.h, s.w, s.k, s.stride, s.pad, s.oh(), s.ow()}; }

// Output rows (or columns) whose window covers input coordinate i: [lo, hi] (empty when lo > hi).
__device__ __forceinline__ void covering(int i, int k, int stride, int pad, int out, int& lo, int& hi) {
  const int num = i + pad - k + 1;
  lo = num <= 0 ? 0 : (num + stride - 1) / stride;
  hi = (i + pad) / stride;
  if (hi > out - 1) hi = out - 1;
}

__global__ void max_pool_forward_kernel(int64_t planes, Win g, const float* __restrict__ x, float* __restrict__ y,
                                        int32_t* __restrict__ argmax) {
  const int64_t out_plane = int64_t(g.oh) * g.ow, total = planes * out_plane;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pl = i / out_plane;
    const int o = int(i % out_plane), oy = o / g.ow, ox = o % g.ow;
    const float* xp = x + pl * g.h * g.w;
    float best = 0.0f;
    int32_t arg = -1;
    for (int ky = 0; ky < g.k; ++ky) {
      const int iy = oy * g.stride - g.pad + ky;
      if (iy < 0 || iy >= g.h) continue;
      for (int kx = 0; kx < g.k; ++kx) {
        const int ix = ox * g.stride - g.pad + kx;
        if (ix < 0 || ix >= g.w) continue;
        const float v = xp[iy * g.w + ix];
        // NaN wins and sticks; ties keep the first (as the CPU).
        if (arg < 0 || v > best || (v != v && best == best)) {
          best = v;
          arg = iy * g.w + ix;
        }
      }
    }
    y[i] = arg < 0 ? 0.0f : best;
    argmax[i] = arg;
  }
}

__global__ void max_pool_backward_kernel(int64_t planes, Win g, const float* __restrict__ dy,
                                         const int32_t* __restrict__ argmax, float* __restrict__ dx) {
  const int64_t in_plane = int64_t(g.h) * g.w, out_plane = int64_t(g.oh) * g.ow, total = planes * in_plane;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pl = i / in_plane;
    const int idx = int(i % in_plane), iy = idx / g.w, ix = idx % g.w;
    int oy0, oy1, ox0, ox1;
    covering(iy, g.k, g.stride, g.pad, g.oh, oy0, oy1);
    covering(ix, g.k, g.stride, g.pad, g.ow, ox0, ox1);
    const float* dyp = dy + pl * out_plane;
    const int32_t* ap = argmax + pl * out_plane;
    float s = 0.0f;
    for (int oy = oy0; oy <= oy1; ++oy)
      for (int ox = ox0; ox <= ox1; ++ox)
        if (ap[oy * g.ow + ox] == idx) s = __fadd_rn(s, dyp[oy * g.ow + ox]);
    dx[i] = s;
  }
}

__global__ void avg_pool_forward_kernel(int64_t planes, Win g, float inv, const float* __restrict__ x,
                                        float* __restrict__ y) {
  const int64_t out_plane = int64_t(g.oh) * g.ow, total = planes * out_plane;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pl = i / out_plane;
    const int o = int(i % out_plane), oy = o / g.ow, ox = o % g.ow;
    const float* xp = x + pl * g.h * g.w;
    float sum = 0.0f;
    for (int ky = 0; ky < g.k; ++ky) {
      const int iy = oy * g.stride - g.pad + ky;
      if (iy < 0 || iy >= g.h) continue;
      for (int kx = 0; kx < g.k; ++kx) {
        const int ix = ox * g.stride - g.pad + kx;
        if (ix >= 0 && ix < g.w) sum = __fadd_rn(sum, xp[iy * g.w + ix]);
      }
    }
    y[i] = __fmul_rn(sum, inv);
  }
}

__global__ void avg_pool_backward_kernel(int64_t planes, Win g, float inv, const float* __restrict__ dy,
                                         float* __restrict__ dx) {
  const int64_t in_plane = int64_t(g.h) * g.w, out_plane = int64_t(g.oh) * g.ow, total = planes * in_plane;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pl = i / in_plane;
    const int idx = int(i % in_plane), iy = idx / g.w, ix = idx % g.w;
    int oy0, oy1, ox0, ox1;
    covering(iy, g.k, g.stride, g.pad, g.oh, oy0, oy1);
    covering(ix, g.k, g.stride, g.pad, g.ow, ox0, ox1);
    const float* dyp = dy + pl * out_plane;
    float s = 0.0f;
    for (int oy = oy0; oy <= oy1; ++oy)
      for (int ox = ox0; ox <= ox1; ++ox) s = __fadd_rn(s, __fmul_rn(dyp[oy * g.ow + ox], inv));
    dx[i] = s;
  }
}

// One thread per plane, summing in double in element order (the CPU's order).
__global__ void global_avg_forward_kernel(int64_t planes, int hw, const float* __restrict__ x, float* __restrict__ y) {
  for (int64_t pl = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; pl < planes; pl += int64_t(gridDim.x) * blockDim.x) {
    const float* xp = x + pl * hw;
    double sum = 0.0;
    for (int i = 0; i < hw; ++i) sum += double(xp[i]);
    y[pl] = float(sum / double(hw));
  }
}

__global__ void global_avg_backward_kernel(int64_t planes, int hw, float inv, const float* __restrict__ dy,
                                           float* __restrict__ dx) {
  const int64_t total = planes * hw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = __fmul_rn(dy[i / hw], inv);
}

void check_shape(const Pool2dShape& s, const char* op) {
  SPARROW_CHECK(s.n > 0 && s.c > 0 && s.h > 0 && s.w > 0 && s.k > 0 && s.stride > 0 && s.pad >= 0, op,
                ": invalid shape n=", s.n, " c=", s.c, " h=", s.h, " w=", s.w, " k=", s.k, " stride=", s.stride,
                " pad=", s.pad);
  SPARROW_CHECK(s.oh() > 0 && s.ow() > 0, op, ": window ", s.k, " larger than the padded input ", s.h + 2 * s.pad, "x",
                s.w + 2 * s.pad);
}

void check_global(int n, int c, int hw, const char* op) {
  SPARROW_CHECK(n > 0 && c > 0 && hw > 0, op, ": invalid shape n=", n, " c=", c, " hw=", hw);
}

}  // namespace

void max_pool2d_forward_cuda(const Pool2dShape& s, const float* x, float* y, int32_t* argmax) {
  check_shape(s, "max_pool2d_forward_cuda");
  const int64_t planes = int64_t(s.n) * s.c;
  max_pool_forward_kernel<<<blocks_for(planes * s.oh() * s.ow()), kThreads, 0, stream()>>>(planes, win_of(s), x, y,
                                                                                          argmax);
  SPARROW_CUDA_LAUNCH_CHECK("max_pool_forward_kernel");
}

void max_pool2d_backward_cuda(const Pool2dShape& s, const float* dy, const int32_t* argmax, float* dx) {
  check_shape(s, "max_pool2d_backward_cuda");
  const int64_t planes = int64_t(s.n) * s.c;
  max_pool_backward_kernel<<<blocks_for(planes * s.h * s.w), kThreads, 0, stream()>>>(planes, win_of(s), dy, argmax,
                                                                                     dx);
  SPARROW_CUDA_LAUNCH_CHECK("max_pool_backward_kernel");
}

void avg_pool2d_forward_cuda(const Pool2dShape& s, const float* x, float* y) {
  check_shape(s, "avg_pool2d_forward_cuda");
  const int64_t planes = int64_t(s.n) * s.c;
  const float inv = 1.0f / float(s.k * s.k);
  avg_pool_forward_kernel<<<blocks_for(planes * s.oh() * s.ow()), kThreads, 0, stream()>>>(planes, win_of(s), inv, x, y);
  SPARROW_CUDA_LAUNCH_CHECK("avg_pool_forward_kernel");
}

void avg_pool2d_backward_cuda(const Pool2dShape& s, const float* dy, float* dx) {
  check_shape(s, "avg_pool2d_backward_cuda");
  const int64_t planes = int64_t(s.n) * s.c;
  const float inv = 1.0f / float(s.k * s.k);
  avg_pool_backward_kernel<<<blocks_for(planes * s.h * s.w), kThreads, 0, stream()>>>(planes, win_of(s), inv, dy, dx);
  SPARROW_CUDA_LAUNCH_CHECK("avg_pool_backward_kernel");
}

void global_avg_pool_forward_cuda(int n, int c, int hw, const float* x, float* y) {
  check_global(n, c, hw, "global_avg_pool_forward_cuda");
  const int64_t planes = int64_t(n) * c;
  global_avg_forward_kernel<<<blocks_for(planes), kThreads, 0, stream()>>>(planes, hw, x, y);
  SPARROW_CUDA_LAUNCH_CHECK("global_avg_forward_kernel");
}

void global_avg_pool_backward_cuda(int n, int c, int hw, const float* dy, float* dx) {
  check_global(n, c, hw, "global_avg_pool_backward_cuda");
  const int64_t planes = int64_t(n) * c;
  const float inv = 1.0f / float(hw);
  global_avg_backward_kernel<<<blocks_for(planes * hw), kThreads, 0, stream()>>>(planes, hw, inv, dy, dx);
  SPARROW_CUDA_LAUNCH_CHECK("global_avg_backward_kernel");
}

}  // namespace sparrow
