// CUDA full reduction and device-scalar helpers on flat float arrays (compute stream): Σx into a device
// scalar (block partials in double, then one block merging them in a fixed order: the grid depends only
// on n, so the result is reproducible), and broadcasts of a device scalar, which let sum/mean and the
// cross-entropy backward run without a host round trip.
#include <algorithm>
#include <cstdint>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/elementwise/elementwise.h"

namespace sparrow {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;
constexpr int kSumBlocks = 256;  // partial sums of the full reduction

cudaStream_t stream() { return static_cast<cudaStream_t>(cuda_stream_handle()); }
int blocks_for(int64_t n) { return int(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)); }

// Tree sum of part[0 .. blockDim) in shared memory; thread 0 gets the total.
__device__ double block_sum(double v) {
  __shared__ double part[kThreads];
  part[threadIdx.x] = v;
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off >>= 1) {
    if (int(threadIdx.x) < off) part[threadIdx.x] += part[threadIdx.x + off];
    __syncthreads();
  }
  return part[0];
}

__global__ void sum_partial_kernel(int64_t n, const float* __restrict__ x, double* __restrict__ partial) {
  double s = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    s += double(x[i]);
  const double t = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = t;
}

__global__ void sum_finish_kernel(int parts, const double* __restrict__ partial, float* __restrict__ y) {
  double s = 0.0;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) s += partial[i];
  const double t = block_sum(s);
  if (threadIdx.x == 0) y[0] = float(t);
}

__global__ void fill_from_scalar_kernel(int64_t n, const float* __restrict__ s, float* __restrict__ y) {
  const float v = s[0];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) y[i] = v;
}

__global__ void scale_by_scalar_kernel(int64_t n, const float* __restrict__ s, const float* __restrict__ x,
                                       float* __restrict__ y) {
  const float a = s[0];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __fmul_rn(a, x[i]);
}

}  // namespace

void sum_cuda(int64_t n, const float* x, float* y) {
  SPARROW_CHECK(n >= 0, "sum_cuda: negative length ", n);
  const int parts = int(std::max<int64_t>(1, std::min<int64_t>(kSumBlocks, (n + kThreads - 1) / kThreads)));
  auto* partial = static_cast<double*>(cuda_alloc(size_t(parts) * sizeof(double)));
  sum_partial_kernel<<<parts, kThreads, 0, stream()>>>(n, x, partial);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) {
    sum_finish_kernel<<<1, kThreads, 0, stream()>>>(parts, partial, y);
    err = cudaGetLastError();
  }
  cuda_free(partial);
  SPARROW_CUDA_CHECK(err);
  SPARROW_CUDA_LAUNCH_CHECK("sum_partial_kernel/sum_finish_kernel");
}

void fill_from_scalar_cuda(int64_t n, const float* s, float* y) {
  SPARROW_CHECK(n >= 0, "fill_from_scalar_cuda: negative length ", n);
  if (n == 0) return;
  fill_from_scalar_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(n, s, y);
  SPARROW_CUDA_LAUNCH_CHECK("fill_from_scalar_kernel");
}

void scale_by_scalar_cuda(int64_t n, const float* s, const float* x, float* y) {
  SPARROW_CHECK(n >= 0, "scale_by_scalar_cuda: negative length ", n);
  if (n == 0) return;
  scale_by_scalar_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(n, s, x, y);
  SPARROW_CUDA_LAUNCH_CHECK("scale_by_scalar_kernel");
}

}  // namespace sparrow
