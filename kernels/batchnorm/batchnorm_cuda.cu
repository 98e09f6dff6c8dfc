// CUDA batch normalisation over N×C×HW (NCHW, float, compute stream), the GPU twin of batchnorm_cpu.cpp.
// Each reduction runs in three kernels: blocks (channel, split) sum a slice of images in double (the same
// shifted sums as the CPU: shift = the channel's first value), one thread per channel merges the splits in
// a fixed order and derives the per-channel coefficients, and an elementwise kernel applies them. The
// elementwise arithmetic is written with _rn intrinsics so nvcc cannot contract it into FMAs: every output
// is the CPU's float expression, step by step, so the results differ from the CPU only through the order
// of the double sums and the host compiler's own multiply-add fusion.
#include <algorithm>
#include <cstdint>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/batchnorm/batchnorm.h"

namespace sparrow {

namespace {

constexpr int kThreads = 256;
constexpr int kTargetBlocks = 256;  // reduction blocks wanted in flight (channels × splits)
constexpr int64_t kMaxBlocks = 8192;

cudaStream_t stream() { return static_cast<cudaStream_t>(cuda_stream_handle()); }
int blocks_for(int64_t n) { return int(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)); }

// Splits per channel: enough blocks to fill the GPU, never more than one per image. Depends on the shape
// only, so the summation order (and the result) is reproducible.
int splits_for(const BatchNormShape& s) { return std::max(1, std::min(s.n, (kTargetBlocks + s.c - 1) / s.c)); }

// Per-call device scratch from the pool: partial sums (C·S·2 doubles) and per-channel coefficients.
struct Scratch {
  Scratch(int c, int splits) {
    bytes_part = size_t(c) * splits * 2 * sizeof(double);
    base = cuda_alloc(bytes_part + size_t(c) * 4 * sizeof(float));
    part = static_cast<double*>(base);
    coef = reinterpret_cast<float*>(static_cast<char*>(base) + bytes_part);
  }
  ~Scratch() { cuda_free(base); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  size_t bytes_part;
  void* base;
  double* part;
  float* coef;  // 4 arrays of C: per-kernel meaning documented where they are written
};

// Sums a and b over the block; thread 0 gets the totals.
__device__ void block_sum2(double& a, double& b) {
  __shared__ double sa[32], sb[32];
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < warps ? sa[lane] : 0.0;
    b = lane < warps ? sb[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, off);
      b += __shfl_down_sync(0xffffffffu, b, off);
    }
  }
}

// Block (c, sp): Σ(x − shift) and Σ(x − shift)² over images [n0, n1) of channel c.
__global__ void bn_stats_partial_kernel(BatchNormShape s, int splits, const float* __restrict__ x,
                                        double* __restrict__ part) {
  const int c = blockIdx.x, sp = blockIdx.y;
  const int n0 = int(int64_t(s.n) * sp / splits), n1 = int(int64_t(s.n) * (sp + 1) / splits);
  const double shift = double(x[int64_t(c) * s.hw]);
  const int64_t count = int64_t(n1 - n0) * s.hw;
  double sum = 0.0, sumsq = 0.0;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const int64_t img = n0 + j / s.hw, i = j % s.hw;
    const double d = double(x[(img * s.c + c) * s.hw + i]) - shift;
    sum += d;
    sumsq += d * d;
  }
  block_sum2(sum, sumsq);
  if (threadIdx.x == 0) {
    part[(int64_t(c) * splits + sp) * 2] = sum;
    part[(int64_t(c) * splits + sp) * 2 + 1] = sumsq;
  }
}

// One thread per channel: statistics, running update (PyTorch's rule, unbiased variance) and the
// coefficients of the normalisation: coef = [mean_f, scale, bias, -].
__global__ void bn_forward_finish_kernel(BatchNormShape s, int splits, const float* __restrict__ x,
                                         const double* __restrict__ part, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, float* __restrict__ save_mean,
                                         float* __restrict__ save_invstd, float* __restrict__ running_mean,
                                         float* __restrict__ running_var, double momentum, double eps,
                                         float* __restrict__ coef) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= s.c) return;
  double sum = 0.0, sumsq = 0.0;
  for (int sp = 0; sp < splits; ++sp) {
    sum += part[(int64_t(c) * splits + sp) * 2];
    sumsq += part[(int64_t(c) * splits + sp) * 2 + 1];
  }
  const int64_t count = int64_t(s.n) * s.hw;
  const double shift = double(x[int64_t(c) * s.hw]);
  const double mean_d = sum / double(count);
  const double var = fmax(0.0, sumsq / double(count) - mean_d * mean_d);
  const double mean = shift + mean_d;
  const double invstd = 1.0 / sqrt(var + eps);
  save_mean[c] = float(mean);
  save_invstd[c] = float(invstd);
  if (running_mean) running_mean[c] = float((1.0 - momentum) * double(running_mean[c]) + momentum * mean);
  if (running_var) {
    const double unbiased = var * double(count) / double(count - 1);
    running_var[c] = float((1.0 - momentum) * double(running_var[c]) + momentum * unbiased);
  }
  coef[c] = float(mean);
  coef[s.c + c] = float((gamma ? double(gamma[c]) : 1.0) * invstd);
  coef[2 * s.c + c] = beta ? beta[c] : 0.0f;
}

// Eval: coef = [running_mean, scale, bias, -] from the running statistics.
__global__ void bn_eval_coef_kernel(int C, const float* __restrict__ gamma, const float* __restrict__ beta,
                                    const float* __restrict__ running_mean, const float* __restrict__ running_var,
                                    double eps, float* __restrict__ coef) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double invstd = 1.0 / sqrt(double(running_var[c]) + eps);
  coef[c] = running_mean[c];
  coef[C + c] = float((gamma ? double(gamma[c]) : 1.0) * invstd);
  coef[2 * C + c] = beta ? beta[c] : 0.0f;
}

// y = (x − mean)·scale + bias, as the CPU rounds it.
__global__ void bn_normalize_kernel(int64_t total, int C, int hw, const float* __restrict__ x,
                                    const float* __restrict__ coef, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int((i / hw) % C);
    y[i] = __fadd_rn(__fmul_rn(__fsub_rn(x[i], coef[c]), coef[C + c]), coef[2 * C + c]);
  }
}

// Block (c, sp): Σdy and Σdy·(x − mean) over images [n0, n1) of channel c (x − mean rounded in float first,
// as on the CPU).
__global__ void bn_backward_partial_kernel(BatchNormShape s, int splits, const float* __restrict__ x,
                                           const float* __restrict__ dy, const float* __restrict__ mean,
                                           double* __restrict__ part) {
  const int c = blockIdx.x, sp = blockIdx.y;
  const int n0 = int(int64_t(s.n) * sp / splits), n1 = int(int64_t(s.n) * (sp + 1) / splits);
  const float m = mean[c];
  const int64_t count = int64_t(n1 - n0) * s.hw;
  double sdy = 0.0, sdyx = 0.0;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const int64_t img = n0 + j / s.hw, i = j % s.hw;
    const int64_t at = (img * s.c + c) * s.hw + i;
    const double g = double(dy[at]);
    sdy += g;
    sdyx += g * double(__fsub_rn(x[at], m));
  }
  block_sum2(sdy, sdyx);
  if (threadIdx.x == 0) {
    part[(int64_t(c) * splits + sp) * 2] = sdy;
    part[(int64_t(c) * splits + sp) * 2 + 1] = sdyx;
  }
}

// Train backward coefficients: coef = [mean, a, b, mean_dy] with dx = (dy − mean_dy)·a + (x − mean)·b.
// Eval (running statistics): coef = [mean, scale, 0, 0] with dx = dy·scale. Also dgamma and dbeta.
__global__ void bn_backward_finish_kernel(BatchNormShape s, int splits, bool training, const double* __restrict__ part,
                                          const float* __restrict__ gamma, const float* __restrict__ mean,
                                          const float* __restrict__ save_invstd, const float* __restrict__ running_var,
                                          double eps, float* __restrict__ dgamma, float* __restrict__ dbeta,
                                          float* __restrict__ coef) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= s.c) return;
  double sdy = 0.0, sdyx = 0.0;
  for (int sp = 0; sp < splits; ++sp) {
    sdy += part[(int64_t(c) * splits + sp) * 2];
    sdyx += part[(int64_t(c) * splits + sp) * 2 + 1];
  }
  const double invstd = training ? double(save_invstd[c]) : 1.0 / sqrt(double(running_var[c]) + eps);
  if (dgamma) dgamma[c] = float(sdyx * invstd);
  if (dbeta) dbeta[c] = float(sdy);
  const double g = gamma ? double(gamma[c]) : 1.0;
  const double count = double(int64_t(s.n) * s.hw);
  coef[c] = mean[c];
  if (training) {
    coef[s.c + c] = float(g * invstd);
    coef[2 * s.c + c] = float(-g * invstd * invstd * invstd * sdyx / count);
    coef[3 * s.c + c] = float(sdy / count);
  } else {
    coef[s.c + c] = float(g * invstd);
    coef[2 * s.c + c] = 0.0f;
    coef[3 * s.c + c] = 0.0f;
  }
}

__global__ void bn_backward_dx_kernel(int64_t total, int C, int hw, bool training, const float* __restrict__ x,
                                      const float* __restrict__ dy, const float* __restrict__ coef,
                                      float* __restrict__ dx) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int((i / hw) % C);
    if (training)
      dx[i] = __fadd_rn(__fmul_rn(__fsub_rn(dy[i], coef[3 * C + c]), coef[C + c]),
                        __fmul_rn(__fsub_rn(x[i], coef[c]), coef[2 * C + c]));
    else
      dx[i] = __fmul_rn(dy[i], coef[C + c]);
  }
}

void check_shape(const BatchNormShape& s, const char* op) {
  SPARROW_CHECK(s.n > 0 && s.c > 0 && s.hw > 0, op, ": invalid shape n=", s.n, " c=", s.c, " hw=", s.hw);
}

int64_t total(const BatchNormShape& s) { return int64_t(s.n) * s.c * s.hw; }

void backward(const BatchNormShape& s, bool training, const float* x, const float* dy, const float* gamma,
              const float* mean, const float* save_invstd, const float* running_var, double eps, float* dx,
              float* dgamma, float* dbeta) {
  const int splits = splits_for(s);
  Scratch w(s.c, splits);
  bn_backward_partial_kernel<<<dim3(unsigned(s.c), unsigned(splits)), kThreads, 0, stream()>>>(s, splits, x, dy, mean,
                                                                                               w.part);
  SPARROW_CUDA_LAUNCH_CHECK("bn_backward_partial_kernel");
  bn_backward_finish_kernel<<<(s.c + 127) / 128, 128, 0, stream()>>>(s, splits, training, w.part, gamma, mean,
                                                                     save_invstd, running_var, eps, dgamma, dbeta,
                                                                     w.coef);
  SPARROW_CUDA_LAUNCH_CHECK("bn_backward_finish_kernel");
  bn_backward_dx_kernel<<<blocks_for(total(s)), kThreads, 0, stream()>>>(total(s), s.c, s.hw, training, x, dy, w.coef,
                                                                         dx);
  SPARROW_CUDA_LAUNCH_CHECK("bn_backward_dx_kernel");
}

}  // namespace

void batchnorm_forward_train_cuda(const BatchNormShape& s, const float* x, const float* gamma, const float* beta,
                                  float* y, float* save_mean, float* save_invstd, float* running_mean,
                                  float* running_var, double momentum, double eps) {
  check_shape(s, "batchnorm_forward_train_cuda");
  SPARROW_CHECK(int64_t(s.n) * s.hw > 1, "batchnorm_forward_train_cuda: need more than one value per channel (n=",
                s.n, " hw=", s.hw, ")");
  const int splits = splits_for(s);
  Scratch w(s.c, splits);
  bn_stats_partial_kernel<<<dim3(unsigned(s.c), unsigned(splits)), kThreads, 0, stream()>>>(s, splits, x, w.part);
  SPARROW_CUDA_LAUNCH_CHECK("bn_stats_partial_kernel");
  bn_forward_finish_kernel<<<(s.c + 127) / 128, 128, 0, stream()>>>(s, splits, x, w.part, gamma, beta, save_mean,
                                                                    save_invstd, running_mean, running_var, momentum,
                                                                    eps, w.coef);
  SPARROW_CUDA_LAUNCH_CHECK("bn_forward_finish_kernel");
  bn_normalize_kernel<<<blocks_for(total(s)), kThreads, 0, stream()>>>(total(s), s.c, s.hw, x, w.coef, y);
  SPARROW_CUDA_LAUNCH_CHECK("bn_normalize_kernel");
}

void batchnorm_forward_eval_cuda(const BatchNormShape& s, const float* x, const float* gamma, const float* beta,
                                 const float* running_mean, const float* running_var, double eps, float* y) {
  check_shape(s, "batchnorm_forward_eval_cuda");
  Scratch w(s.c, 1);
  bn_eval_coef_kernel<<<(s.c + 127) / 128, 128, 0, stream()>>>(s.c, gamma, beta, running_mean, running_var, eps,
                                                               w.coef);
  SPARROW_CUDA_LAUNCH_CHECK("bn_eval_coef_kernel");
  bn_normalize_kernel<<<blocks_for(total(s)), kThreads, 0, stream()>>>(total(s), s.c, s.hw, x, w.coef, y);
  SPARROW_CUDA_LAUNCH_CHECK("bn_normalize_kernel");
}

void batchnorm_backward_train_cuda(const BatchNormShape& s, const float* x, const float* dy, const float* gamma,
                                   const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                                   float* dbeta) {
  check_shape(s, "batchnorm_backward_train_cuda");
  backward(s, true, x, dy, gamma, save_mean, save_invstd, nullptr, 0.0, dx, dgamma, dbeta);
}

void batchnorm_backward_eval_cuda(const BatchNormShape& s, const float* x, const float* dy, const float* gamma,
                                  const float* running_mean, const float* running_var, double eps, float* dx,
                                  float* dgamma, float* dbeta) {
  check_shape(s, "batchnorm_backward_eval_cuda");
  backward(s, false, x, dy, gamma, running_mean, nullptr, running_var, eps, dx, dgamma, dbeta);
}

}  // namespace sparrow
