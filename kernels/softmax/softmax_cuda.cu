// CUDA row-wise softmax family and fused softmax cross-entropy on B×C row-major floats (compute stream),
// the GPU twins of softmax_cpu.cpp: one warp per row, lanes striding over the columns (coalesced), sums
// in double as on the CPU. The cross-entropy keeps its loss on the device (per-row losses, then a
// one-block sum in a fixed order), so a training step never waits for the host.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/softmax/softmax.h"

namespace sparrow {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

cudaStream_t stream() { return static_cast<cudaStream_t>(cuda_stream_handle()); }
int row_blocks(int rows) { return (rows + kRowsPerBlock - 1) / kRowsPerBlock; }

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Max of row r over lanes (every lane gets it).
__device__ __forceinline__ float row_max(const float* xr, int cols, int lane) {
  float m = xr[0];
  for (int j = lane; j < cols; j += 32) m = xr[j] > m ? xr[j] : m;
  return warp_max(m);
}

__global__ void softmax_forward_kernel(int rows, int cols, const float* __restrict__ x, float* __restrict__ y) {
  const int r = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float* xr = x + int64_t(r) * cols;
  float* yr = y + int64_t(r) * cols;
  const float m = row_max(xr, cols, lane);
  double sum = 0.0;
  for (int j = lane; j < cols; j += 32) {
    const float e = expf(__fsub_rn(xr[j], m));
    yr[j] = e;
    sum += double(e);
  }
  const float inv = float(1.0 / warp_sum(sum));
  for (int j = lane; j < cols; j += 32) yr[j] = __fmul_rn(yr[j], inv);
}

__global__ void log_softmax_forward_kernel(int rows, int cols, const float* __restrict__ x, float* __restrict__ y) {
  const int r = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float* xr = x + int64_t(r) * cols;
  float* yr = y + int64_t(r) * cols;
  const double m = double(row_max(xr, cols, lane));
  double sum = 0.0;
  for (int j = lane; j < cols; j += 32) sum += exp(double(xr[j]) - m);
  const double lse = m + log(warp_sum(sum));
  for (int j = lane; j < cols; j += 32) yr[j] = float(double(xr[j]) - lse);
}

__global__ void softmax_backward_kernel(int rows, int cols, const float* __restrict__ y, const float* __restrict__ dy,
                                        float* __restrict__ dx) {
  const int r = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t o = int64_t(r) * cols;
  double dot = 0.0;
  for (int j = lane; j < cols; j += 32) dot += double(dy[o + j]) * double(y[o + j]);
  const float d = float(warp_sum(dot));
  for (int j = lane; j < cols; j += 32) dx[o + j] = __fmul_rn(y[o + j], __fsub_rn(dy[o + j], d));
}

__global__ void log_softmax_backward_kernel(int rows, int cols, const float* __restrict__ y,
                                            const float* __restrict__ dy, float* __restrict__ dx) {
  const int r = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t o = int64_t(r) * cols;
  double sum = 0.0;
  for (int j = lane; j < cols; j += 32) sum += double(dy[o + j]);
  const float s = float(warp_sum(sum));
  for (int j = lane; j < cols; j += 32) dx[o + j] = __fsub_rn(dy[o + j], __fmul_rn(expf(y[o + j]), s));
}

// Per-row loss lse(x) − x[label] (NaN for a label outside [0, cols)) and, when dlogits is not null,
// dlogits = (softmax(x) − onehot(label)) / rows.
__global__ void softmax_xent_rows_kernel(int rows, int cols, const float* __restrict__ logits,
                                         const int64_t* __restrict__ labels, double* __restrict__ row_loss,
                                         float* __restrict__ dlogits) {
  const int r = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float* xr = logits + int64_t(r) * cols;
  const int64_t label = labels[r];
  const bool valid = label >= 0 && label < cols;
  const double m = double(row_max(xr, cols, lane));
  double sum = 0.0;
  for (int j = lane; j < cols; j += 32) sum += exp(double(xr[j]) - m);
  sum = warp_sum(sum);
  const double inv_rows = 1.0 / double(rows);
  if (lane == 0) row_loss[r] = valid ? m + log(sum) - double(xr[label]) : nan("");
  if (dlogits) {
    float* dr = dlogits + int64_t(r) * cols;
    const double scale = inv_rows / sum;
    for (int j = lane; j < cols; j += 32) {
      float d = float(exp(double(xr[j]) - m) * scale);
      if (j == label) d = __fsub_rn(d, float(inv_rows));
      dr[j] = valid ? d : nanf("");
    }
  }
}

// One block: loss = float(Σ row_loss · (1/rows)), summed in a fixed order.
__global__ void mean_rows_kernel(int rows, const double* __restrict__ row_loss, float* __restrict__ loss) {
  __shared__ double part[kThreads];
  double s = 0.0;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) s += row_loss[r];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off >>= 1) {
    if (int(threadIdx.x) < off) part[threadIdx.x] += part[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) loss[0] = float(part[0] * (1.0 / double(rows)));
}

void check_shape(int rows, int cols, const char* op) {
  SPARROW_CHECK(rows > 0 && cols > 0, op, ": invalid shape ", rows, "x", cols);
}

}  // namespace

void softmax_forward_cuda(int rows, int cols, const float* x, float* y) {
  check_shape(rows, cols, "softmax_forward_cuda");
  softmax_forward_kernel<<<row_blocks(rows), kThreads, 0, stream()>>>(rows, cols, x, y);
  SPARROW_CUDA_LAUNCH_CHECK("softmax_forward_kernel");
}

void log_softmax_forward_cuda(int rows, int cols, const float* x, float* y) {
  check_shape(rows, cols, "log_softmax_forward_cuda");
  log_softmax_forward_kernel<<<row_blocks(rows), kThreads, 0, stream()>>>(rows, cols, x, y);
  SPARROW_CUDA_LAUNCH_CHECK("log_softmax_forward_kernel");
}

void softmax_backward_cuda(int rows, int cols, const float* y, const float* dy, float* dx) {
  check_shape(rows, cols, "softmax_backward_cuda");
  softmax_backward_kernel<<<row_blocks(rows), kThreads, 0, stream()>>>(rows, cols, y, dy, dx);
  SPARROW_CUDA_LAUNCH_CHECK("softmax_backward_kernel");
}

void log_softmax_backward_cuda(int rows, int cols, const float* y, const float* dy, float* dx) {
  check_shape(rows, cols, "log_softmax_backward_cuda");
  log_softmax_backward_kernel<<<row_blocks(rows), kThreads, 0, stream()>>>(rows, cols, y, dy, dx);
  SPARROW_CUDA_LAUNCH_CHECK("log_softmax_backward_kernel");
}

void softmax_xent_cuda(int rows, int cols, const float* logits, const int64_t* labels, float* loss, float* dlogits) {
  check_shape(rows, cols, "softmax_xent_cuda");
  auto* row_loss = static_cast<double*>(cuda_alloc(size_t(rows) * sizeof(double)));
  softmax_xent_rows_kernel<<<row_blocks(rows), kThreads, 0, stream()>>>(rows, cols, logits, labels, row_loss, dlogits);
  cudaError_t launch = cudaGetLastError();
  if (launch == cudaSuccess) {
    mean_rows_kernel<<<1, kThreads, 0, stream()>>>(rows, row_loss, loss);
    launch = cudaGetLastError();
  }
  cuda_free(row_loss);
  SPARROW_CUDA_CHECK(launch);
  SPARROW_CUDA_LAUNCH_CHECK("softmax_xent_rows_kernel/mean_rows_kernel");
}

}  // namespace sparrow
