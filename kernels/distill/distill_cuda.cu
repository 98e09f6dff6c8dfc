// CUDA fused KL-distillation on device B×C row-major float logits: one warp per row (cols ≤ 1024, four
// rows per 128-thread block) or one 256-thread block per row. The per-element math and the online
// softmax/moment states are distill_row.h's lane functions, the same ones the CPU tests emulate.
#include <cuda_runtime.h>

#include <cmath>

#include "engine/base/cuda_check.h"
#include "engine/base/error.h"
#include "engine/base/nvtx.h"
#include "kernels/distill/distill.h"
#include "kernels/distill/distill_row.h"

namespace sparrow {
namespace {

using namespace distill;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpRowMaxCols = 1024;
constexpr int kBlockThreads = 256;

__device__ __forceinline__ float shfl_down(float v, int off) { return __shfl_down_sync(kFullMask, v, off); }
__device__ __forceinline__ float shfl_bcast(float v) { return __shfl_sync(kFullMask, v, 0); }

// Field-wise shuffles of the row states.
__device__ __forceinline__ OnlineSoftmax<float> shfl_down(const OnlineSoftmax<float>& v, int off) {
  return OnlineSoftmax<float>{shfl_down(v.m, off), shfl_down(v.s, off), shfl_down(v.w, off)};
}
__device__ __forceinline__ OnlineSoftmax<float> shfl_bcast(const OnlineSoftmax<float>& v) {
  return OnlineSoftmax<float>{shfl_bcast(v.m), shfl_bcast(v.s), shfl_bcast(v.w)};
}
__device__ __forceinline__ LaneStats<float> shfl_down(const LaneStats<float>& v, int off) {
  return LaneStats<float>{shfl_down(v.s, off), shfl_down(v.t, off), shfl_down(v.raw, off)};
}
__device__ __forceinline__ LaneStats<float> shfl_bcast(const LaneStats<float>& v) {
  return LaneStats<float>{shfl_bcast(v.s), shfl_bcast(v.t), shfl_bcast(v.raw)};
}
__device__ __forceinline__ double shfl_down(double v, int off) { return __shfl_down_sync(kFullMask, v, off); }
__device__ __forceinline__ double shfl_bcast(double v) { return __shfl_sync(kFullMask, v, 0); }
__device__ __forceinline__ Moments<double> shfl_down(const Moments<double>& v, int off) {
  return Moments<double>{shfl_down(v.n, off), shfl_down(v.mean, off), shfl_down(v.m2, off)};
}
__device__ __forceinline__ Moments<double> shfl_bcast(const Moments<double>& v) {
  return Moments<double>{shfl_bcast(v.n), shfl_bcast(v.mean), shfl_bcast(v.m2)};
}
struct Sum2 {
  float a, b;
};
__device__ __forceinline__ Sum2 shfl_down(const Sum2& v, int off) {
  return Sum2{shfl_down(v.a, off), shfl_down(v.b, off)};
}
__device__ __forceinline__ Sum2 shfl_bcast(const Sum2& v) { return Sum2{shfl_bcast(v.a), shfl_bcast(v.b)}; }

__device__ __forceinline__ LaneStats<float> combine(const LaneStats<float>& a, const LaneStats<float>& b) {
  return lane_stats_merge(a, b);
}
__device__ __forceinline__ Moments<double> combine(const Moments<double>& a, const Moments<double>& b) {
  return moments_merge(a, b);
}
__device__ __forceinline__ Sum2 combine(const Sum2& a, const Sum2& b) { return Sum2{a.a + b.a, a.b + b.b}; }

// Merge over the kRowThreads lanes of a row; every lane gets lane 0's result (a fixed tree: lane i takes
// lane i+off for off = 16..1, then warp 0..n−1 in order), so all lanes use bitwise-identical statistics.
// smem: kRowThreads/32 slots, used only by block rows (the whole block works on one row then).
template <int kRowThreads, typename S>
__device__ S row_allreduce(S v, S* smem) {
  for (int off = 16; off > 0; off >>= 1) v = combine(v, shfl_down(v, off));
  v = shfl_bcast(v);
  if constexpr (kRowThreads > 32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // the previous reduction's readers are done with smem
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = smem[0];
    for (int i = 1; i < kRowThreads / 32; ++i) v = combine(v, smem[i]);
  }
  return v;
}

// zs, zt, dzs: [rows, cols]; labels: [rows] or null; row_loss: [rows] or null. Passes over the row:
// [moments of z_s, z_t when standardising], online softmax statistics, [Σg, Σg·u when standardising],
// gradient write. Reads after the first hit L2 for rows up to a few hundred KB.
template <int kRowThreads>
__global__ void __launch_bounds__(kRowThreads >= 128 ? kRowThreads : 128)
    distill_kl_kernel(int rows, int cols, const float* __restrict__ zs, const float* __restrict__ zt,
                      const int64_t* __restrict__ labels, KlParams p, Weights w, float inv_rows,
                      float* __restrict__ dzs, float* __restrict__ row_loss) {
  constexpr int kRowsPerBlock = kRowThreads >= 128 ? 1 : 128 / kRowThreads;
  constexpr int kWarps = kRowThreads / 32 > 0 ? kRowThreads / 32 : 1;
  __shared__ LaneStats<float> sm_stats[kWarps];
  __shared__ Moments<double> sm_mom[kWarps];
  __shared__ Sum2 sm_sum[kWarps];

  const int lane = threadIdx.x % kRowThreads;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kRowThreads;
  // A block row has all its threads on the same row, so this exit never splits a __syncthreads.
  if (row >= rows) return;
  const float* a = zs + size_t(row) * cols;
  const float* b = zt + size_t(row) * cols;

  Affine<float> fs = norm_affine<float>(LogitNorm::none, p.T, 0.0, 0.0), ft = fs;
  const bool standardise = p.norm != LogitNorm::none;
  if (standardise) {
    // Moments in double: the mean must resolve a small fraction of σ (distill_row.h, affine_apply).
    const Moments<double> ms =
        row_allreduce<kRowThreads>(lane_moments<double>(lane, kRowThreads, cols, a), sm_mom);
    const Moments<double> mt =
        row_allreduce<kRowThreads>(lane_moments<double>(lane, kRowThreads, cols, b), sm_mom);
    fs = norm_affine<float>(p.norm, p.T, ms.mean, sqrt(ms.m2 / cols));
    ft = norm_affine<float>(p.norm, p.T, mt.mean, sqrt(mt.m2 / cols));
  }
  const bool has_labels = labels != nullptr;
  const bool raw = has_labels && !ce_shares_student_softmax(p);
  const LaneStats<float> st =
      row_allreduce<kRowThreads>(lane_stats(lane, kRowThreads, cols, a, b, fs, ft, raw), sm_stats);
  RowPlan<float> rp = row_plan(p, w, fs, ft, st, cols, has_labels, has_labels ? labels[row] : int64_t(-1),
                               a, inv_rows);
  if (row_loss && lane == 0) row_loss[row] = float(rp.loss);
  if (!dzs) return;
  if (standardise) {
    Sum2 g;
    lane_grad_sums(lane, kRowThreads, cols, a, b, rp, g.a, g.b);
    g = row_allreduce<kRowThreads>(g, sm_sum);
    rp.gbar = g.a / cols;
    rp.gmu = g.b / cols;
  }
  lane_write(lane, kRowThreads, cols, a, b, rp, dzs + size_t(row) * cols);
}

}  // namespace

void distill_kl_cuda(int rows, int cols, const float* zs, const float* zt, const int64_t* labels,
                     const KlParams& params, float* dzs, float* row_loss) {
  SPARROW_NVTX_RANGE("distill_kl_cuda");
  SPARROW_CHECK(rows >= 0 && cols >= 1, "distill_kl_cuda: bad shape ", rows, "x", cols);
  SPARROW_CHECK(rows == 0 || (zs && zt), "distill_kl_cuda: null logits for ", rows, "x", cols);
  SPARROW_CHECK(params.T > 0.0 && std::isfinite(params.T), "distill_kl_cuda: temperature T = ", params.T,
                " must be > 0");
  SPARROW_CHECK(params.alpha >= 0.0 && params.alpha <= 1.0, "distill_kl_cuda: alpha = ", params.alpha,
                " outside [0, 1]");
  SPARROW_CHECK(params.beta >= 0.0 && params.beta <= 1.0, "distill_kl_cuda: beta = ", params.beta,
                " outside [0, 1]");
  if (rows == 0 || (!dzs && !row_loss)) return;
  const Weights w = kl_weights(params, labels != nullptr);
  const float inv_rows = float(1.0 / rows);
  if (cols <= kWarpRowMaxCols) {
    constexpr int kRowsPerBlock = 128 / 32;
    const int grid = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    distill_kl_kernel<32><<<grid, 128>>>(rows, cols, zs, zt, labels, params, w, inv_rows, dzs, row_loss);
  } else {
    distill_kl_kernel<kBlockThreads><<<rows, kBlockThreads>>>(rows, cols, zs, zt, labels, params, w, inv_rows,
                                                              dzs, row_loss);
  }
  SPARROW_CUDA_LAUNCH_CHECK("distill_kl_kernel");
}

}  // namespace sparrow
