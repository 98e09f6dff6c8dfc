// CUDA elementwise ops on flat float arrays of length n (device pointers), the GPU twins of
// elementwise_cpu.cpp. Grid-stride loops with 64-bit indices; launches go on the default stream.
#include <algorithm>
#include <cstdint>

#include "engine/base/cuda_check.h"
#include "kernels/elementwise/elementwise.h"

namespace sparrow {

namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU several times over; the grid-stride loop covers the rest.
constexpr int64_t kMaxBlocks = 4096;

int blocks_for(int64_t n) { return int(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)); }

__global__ void fill_kernel(int64_t n, float value, float* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = value;
}

__global__ void relu_forward_kernel(int64_t n, const float* x, float* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    y[i] = v < 0.0f ? 0.0f : v;  // NaN passes through, as on the CPU
  }
}

__global__ void relu_backward_kernel(int64_t n, const float* y, const float* dy, float* dx) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

__global__ void add_kernel(int64_t n, const float* a, const float* b, float* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = a[i] + b[i];
}

__global__ void mul_kernel(int64_t n, const float* a, const float* b, float* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = a[i] * b[i];
}

__global__ void axpy_kernel(int64_t n, float alpha, const float* x, float* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] += alpha * x[i];
}

__global__ void scale_kernel(int64_t n, float alpha, const float* x, float* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = alpha * x[i];
}

void check_n(int64_t n, const char* op) { SPARROW_CHECK(n >= 0, op, ": negative length ", n); }

}  // namespace

void fill_cuda(int64_t n, float value, float* y) {
  check_n(n, "fill_cuda");
  if (n == 0) return;
  fill_kernel<<<blocks_for(n), kThreads>>>(n, value, y);
  SPARROW_CUDA_LAUNCH_CHECK("fill_kernel");
}

void relu_forward_cuda(int64_t n, const float* x, float* y) {
  check_n(n, "relu_forward_cuda");
  if (n == 0) return;
  relu_forward_kernel<<<blocks_for(n), kThreads>>>(n, x, y);
  SPARROW_CUDA_LAUNCH_CHECK("relu_forward_kernel");
}

void relu_backward_cuda(int64_t n, const float* y, const float* dy, float* dx) {
  check_n(n, "relu_backward_cuda");
  if (n == 0) return;
  relu_backward_kernel<<<blocks_for(n), kThreads>>>(n, y, dy, dx);
  SPARROW_CUDA_LAUNCH_CHECK("relu_backward_kernel");
}

void add_cuda(int64_t n, const float* a, const float* b, float* y) {
  check_n(n, "add_cuda");
  if (n == 0) return;
  add_kernel<<<blocks_for(n), kThreads>>>(n, a, b, y);
  SPARROW_CUDA_LAUNCH_CHECK("add_kernel");
}

void mul_cuda(int64_t n, const float* a, const float* b, float* y) {
  check_n(n, "mul_cuda");
  if (n == 0) return;
  mul_kernel<<<blocks_for(n), kThreads>>>(n, a, b, y);
  SPARROW_CUDA_LAUNCH_CHECK("mul_kernel");
}

void axpy_cuda(int64_t n, float alpha, const float* x, float* y) {
  check_n(n, "axpy_cuda");
  if (n == 0) return;
  axpy_kernel<<<blocks_for(n), kThreads>>>(n, alpha, x, y);
  SPARROW_CUDA_LAUNCH_CHECK("axpy_kernel");
}

void scale_cuda(int64_t n, float alpha, const float* x, float* y) {
  check_n(n, "scale_cuda");
  if (n == 0) return;
  scale_kernel<<<blocks_for(n), kThreads>>>(n, alpha, x, y);
  SPARROW_CUDA_LAUNCH_CHECK("scale_kernel");
}

}  // namespace sparrow
