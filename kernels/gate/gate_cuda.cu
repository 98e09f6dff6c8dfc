// CUDA channel gate (kernels/gate/gate.h): elementwise forward and dx, one block per channel for dm.
#include <cuda_runtime.h>

#include <algorithm>

#include "engine/base/cuda_check.h"
#include "engine/base/error.h"
#include "engine/base/nvtx.h"
#include "kernels/gate/gate.h"

namespace sparrow {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 8192;  // grid-stride beyond this

int grid_for(int64_t elems) { return int(std::max<int64_t>(1, std::min(kMaxGrid, (elems + kThreads - 1) / kThreads))); }

// y = g(m_c)·x for every element; channel = (index / hw) mod c. Forward and dx are the same map.
__global__ void gate_scale_kernel(int64_t total, int64_t c, int64_t hw, const float* __restrict__ x,
                                  const float* __restrict__ m, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = gate_value(m[(i / hw) % c]) * x[i];
}

// dm_c = slope(m_c)·Σ_{n,hw} dy·x in double: each thread strides over the channel's n·hw elements, then a
// shared-memory tree sum.
__global__ void gate_dm_kernel(int64_t n, int64_t c, int64_t hw, const float* __restrict__ x,
                               const float* __restrict__ m, const float* __restrict__ dy, float* __restrict__ dm) {
  __shared__ double partial[kThreads];
  const int64_t ch = blockIdx.x;
  double acc = 0;
  for (int64_t j = threadIdx.x; j < n * hw; j += kThreads) {
    const int64_t i = j / hw, k = j - i * hw;
    const int64_t at = (i * c + ch) * hw + k;
    acc += double(dy[at]) * double(x[at]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) dm[ch] = float(double(gate_ste_slope(m[ch])) * partial[0]);
}

void check_shape(const char* what, int64_t n, int64_t c, int64_t hw) {
  SPARROW_CHECK(n >= 0 && c >= 1 && hw >= 1, what, ": bad shape n=", n, " c=", c, " hw=", hw);
  SPARROW_CHECK(c <= int64_t(0x7fffffff), what, ": ", c, " channels exceed the grid");
}

}  // namespace

void gate_forward_cuda(int64_t n, int64_t c, int64_t hw, const float* x, const float* m, float* y) {
  SPARROW_NVTX_RANGE("gate_fwd_cuda");
  check_shape("gate_forward_cuda", n, c, hw);
  const int64_t total = n * c * hw;
  if (total == 0) return;
  gate_scale_kernel<<<grid_for(total), kThreads>>>(total, c, hw, x, m, y);
  SPARROW_CUDA_LAUNCH_CHECK("gate_scale_kernel");
}

void gate_backward_cuda(int64_t n, int64_t c, int64_t hw, const float* x, const float* m, const float* dy,
                        float* dx, float* dm) {
  SPARROW_NVTX_RANGE("gate_bwd_cuda");
  check_shape("gate_backward_cuda", n, c, hw);
  const int64_t total = n * c * hw;
  if (dx && total > 0) {
    gate_scale_kernel<<<grid_for(total), kThreads>>>(total, c, hw, dy, m, dx);
    SPARROW_CUDA_LAUNCH_CHECK("gate_scale_kernel");
  }
  if (dm) {
    gate_dm_kernel<<<int(c), kThreads>>>(n, c, hw, x, m, dy, dm);
    SPARROW_CUDA_LAUNCH_CHECK("gate_dm_kernel");
  }
}

}  // namespace sparrow
