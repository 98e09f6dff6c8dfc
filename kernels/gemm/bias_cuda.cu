// Row-bias kernels for linear layers on device pointers (float, compute stream): y[r][c] += b[c] and its
// gradient db[c] = Σ_r dy[r][c]. Rows are contiguous (row-major B×Out); the gradient uses one thread per
// column walking the rows in order, the CPU loop's order, so the float sums match it bit for bit.
#include <cstdint>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/gemm/gemm.h"

namespace sparrow {

namespace {

constexpr int kThreads = 256;

cudaStream_t stream() { return static_cast<cudaStream_t>(cuda_stream_handle()); }

__global__ void bias_add_rows_kernel(int64_t total, int cols, const float* __restrict__ b, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i % cols];
}

__global__ void bias_grad_rows_kernel(int rows, int cols, const float* __restrict__ dy, float* __restrict__ db) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0.0f;
  for (int r = 0; r < rows; ++r) s += dy[int64_t(r) * cols + c];
  db[c] = s;
}

}  // namespace

void bias_add_rows_cuda(int rows, int cols, const float* b, float* y) {
  SPARROW_CHECK(rows >= 0 && cols >= 0, "bias_add_rows_cuda: bad shape ", rows, "x", cols);
  const int64_t total = int64_t(rows) * cols;
  if (total == 0) return;
  const int blocks = int((total + kThreads - 1) / kThreads < 4096 ? (total + kThreads - 1) / kThreads : 4096);
  bias_add_rows_kernel<<<blocks, kThreads, 0, stream()>>>(total, cols, b, y);
  SPARROW_CUDA_LAUNCH_CHECK("bias_add_rows_kernel");
}

void bias_grad_rows_cuda(int rows, int cols, const float* dy, float* db) {
  SPARROW_CHECK(rows >= 0 && cols >= 0, "bias_grad_rows_cuda: bad shape ", rows, "x", cols);
  if (cols == 0) return;
  bias_grad_rows_kernel<<<(cols + kThreads - 1) / kThreads, kThreads, 0, stream()>>>(rows, cols, dy, db);
  SPARROW_CUDA_LAUNCH_CHECK("bias_grad_rows_kernel");
}

}  // namespace sparrow
