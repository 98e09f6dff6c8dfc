// CUDA block-sparse (BSR) linear passes on tensor cores (WMMA: TF32 m16n16k8 for fp32 data, FP16/BF16
// m16n16k16 with fp32 accumulation). Layouts as kernels/sparse/bsr.h: W Out×In, X Rows×In, Y Rows×Out
// row-major; value blocks column-major (W[bi·b + r][bj·b + c] at k·b² + c·b + r), outputs always fp32.
// The kernels themselves are in bsr_cuda.cuh (shared with the CPU emulation in the tests); this file holds
// the pattern upload, the launch planning and the dispatch over (type, block, alignment).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "engine/base/cuda_check.h"
#include "engine/base/error.h"
#include "engine/base/nvtx.h"
#include "kernels/sparse/bsr.h"
#include "kernels/sparse/bsr_cuda.cuh"

namespace sparrow {
namespace {

using bsr_device::bsr_reduce_splits_kernel;
using bsr_device::bsr_sddmm_kernel;
using bsr_device::bsr_spmm_kernel;
using bsr_device::kThreads;
using bsr_device::SddmmParams;
using bsr_device::SpmmParams;
using bsr_device::SpmmShape;

template <typename T>
__global__ void bsr_convert_kernel(const float* src, T* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same<T, __half>::value)
      dst[i] = __float2half_rn(src[i]);
    else
      dst[i] = __float2bfloat16_rn(src[i]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.

unsigned grid_for(int64_t total, int threads) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((total + threads - 1) / threads, int64_t(1) << 20)));
}

template <typename T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  SPARROW_CUDA_CHECK(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T)));
  if (!h.empty()) SPARROW_CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

size_t elem_size(BsrCudaType t) { return t == BsrCudaType::kF32 ? 4 : 2; }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

void check_pass(const BsrPatternDevice& p, int rows, const char* op) {
  SPARROW_CHECK(bsr_block_supported_cuda(p.block), op, ": block size ", p.block,
                " is not supported on CUDA (16, 32 or 64)");
  SPARROW_CHECK(p.row_ptr != nullptr, op, ": the device pattern is empty (moved from?)");
  SPARROW_CHECK(rows >= 0, op, ": negative row count ", rows);
}

template <typename Kernel>
void set_smem(Kernel k, size_t bytes) {
  if (bytes > 48 * 1024)
    SPARROW_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <typename T, int B, bool TRANS>
void launch_spmm(const SpmmParams& prm, int lists, bool vec, cudaStream_t stream) {
  constexpr int BM = SpmmShape<B>::BM;
  const int64_t tiles = (int64_t(prm.rows) + BM - 1) / BM;
  SPARROW_CHECK(tiles <= 65535, "bsr spmm: ", prm.rows, " rows exceed the grid limit (", 65535 * BM, ")");
  const dim3 grid(static_cast<unsigned>(lists), static_cast<unsigned>(tiles));
  constexpr size_t smem = bsr_device::spmm_smem_bytes<T, B>();
  if (vec) {
    set_smem(bsr_spmm_kernel<T, B, TRANS, true>, smem);
    bsr_spmm_kernel<T, B, TRANS, true><<<grid, kThreads, smem, stream>>>(prm);
  } else {
    set_smem(bsr_spmm_kernel<T, B, TRANS, false>, smem);
    bsr_spmm_kernel<T, B, TRANS, false><<<grid, kThreads, smem, stream>>>(prm);
  }
  SPARROW_CUDA_LAUNCH_CHECK(TRANS ? "bsr_spmm_kernel (input gradient)" : "bsr_spmm_kernel (forward)");
}

template <bool TRANS>
void spmm_dispatch(BsrCudaType type, int block, const SpmmParams& prm, int lists, bool vec, cudaStream_t stream) {
  switch (type) {
    case BsrCudaType::kF32:
      if (block == 16) return launch_spmm<float, 16, TRANS>(prm, lists, vec, stream);
      if (block == 32) return launch_spmm<float, 32, TRANS>(prm, lists, vec, stream);
      return launch_spmm<float, 64, TRANS>(prm, lists, vec, stream);
    case BsrCudaType::kF16:
      if (block == 16) return launch_spmm<__half, 16, TRANS>(prm, lists, vec, stream);
      if (block == 32) return launch_spmm<__half, 32, TRANS>(prm, lists, vec, stream);
      return launch_spmm<__half, 64, TRANS>(prm, lists, vec, stream);
    case BsrCudaType::kBF16:
      if (block == 16) return launch_spmm<__nv_bfloat16, 16, TRANS>(prm, lists, vec, stream);
      if (block == 32) return launch_spmm<__nv_bfloat16, 32, TRANS>(prm, lists, vec, stream);
      return launch_spmm<__nv_bfloat16, 64, TRANS>(prm, lists, vec, stream);
  }
}

template <typename T, int B>
void launch_sddmm(const SddmmParams& prm, int splits, bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(prm.nnzb), static_cast<unsigned>(splits));
  constexpr size_t smem = bsr_device::sddmm_smem_bytes<T, B>();
  if (vec) {
    set_smem(bsr_sddmm_kernel<T, B, true>, smem);
    bsr_sddmm_kernel<T, B, true><<<grid, kThreads, smem, stream>>>(prm);
  } else {
    set_smem(bsr_sddmm_kernel<T, B, false>, smem);
    bsr_sddmm_kernel<T, B, false><<<grid, kThreads, smem, stream>>>(prm);
  }
  SPARROW_CUDA_LAUNCH_CHECK("bsr_sddmm_kernel");
}

void sddmm_dispatch(BsrCudaType type, int block, const SddmmParams& prm, int splits, bool vec,
                    cudaStream_t stream) {
  switch (type) {
    case BsrCudaType::kF32:
      if (block == 16) return launch_sddmm<float, 16>(prm, splits, vec, stream);
      if (block == 32) return launch_sddmm<float, 32>(prm, splits, vec, stream);
      return launch_sddmm<float, 64>(prm, splits, vec, stream);
    case BsrCudaType::kF16:
      if (block == 16) return launch_sddmm<__half, 16>(prm, splits, vec, stream);
      if (block == 32) return launch_sddmm<__half, 32>(prm, splits, vec, stream);
      return launch_sddmm<__half, 64>(prm, splits, vec, stream);
    case BsrCudaType::kBF16:
      if (block == 16) return launch_sddmm<__nv_bfloat16, 16>(prm, splits, vec, stream);
      if (block == 32) return launch_sddmm<__nv_bfloat16, 32>(prm, splits, vec, stream);
      return launch_sddmm<__nv_bfloat16, 64>(prm, splits, vec, stream);
  }
}

int sm_count() {
  int dev = 0, n = 0;
  SPARROW_CUDA_CHECK(cudaGetDevice(&dev));
  SPARROW_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return std::max(1, n);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Pattern upload.

BsrPatternDevice::BsrPatternDevice(const BsrPattern& p)
    : out(p.out), in(p.in), block(p.block), block_rows(p.block_rows()), block_cols(p.block_cols()), nnzb(p.nnzb()) {
  bsr_pattern_validate(p);
  std::vector<int32_t> br(size_t(p.nnzb()));
  for (int bi = 0; bi < p.block_rows(); ++bi)
    for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) br[size_t(k)] = bi;
  try {
    row_ptr = upload(p.row_ptr);
    col_idx = upload(p.col_idx);
    col_ptr = upload(p.col_ptr);
    t_row = upload(p.t_row);
    t_block = upload(p.t_block);
    row_order = upload(bsr_device::longest_first(p.row_ptr));
    col_order = upload(bsr_device::longest_first(p.col_ptr));
    blk_row = upload(br);
  } catch (...) {
    release();
    throw;
  }
}

BsrPatternDevice::~BsrPatternDevice() { release(); }

void BsrPatternDevice::release() noexcept {
  for (int32_t** a : {&row_ptr, &col_idx, &col_ptr, &t_row, &t_block, &row_order, &col_order, &blk_row}) {
    if (*a) cudaFree(*a);
    *a = nullptr;
  }
}

BsrPatternDevice::BsrPatternDevice(BsrPatternDevice&& o) noexcept { *this = std::move(o); }

BsrPatternDevice& BsrPatternDevice::operator=(BsrPatternDevice&& o) noexcept {
  if (this == &o) return *this;
  release();
  out = o.out;
  in = o.in;
  block = o.block;
  block_rows = o.block_rows;
  block_cols = o.block_cols;
  nnzb = o.nnzb;
  for (auto [dst, src] : {std::pair{&row_ptr, &o.row_ptr}, std::pair{&col_idx, &o.col_idx},
                          std::pair{&col_ptr, &o.col_ptr}, std::pair{&t_row, &o.t_row},
                          std::pair{&t_block, &o.t_block}, std::pair{&row_order, &o.row_order},
                          std::pair{&col_order, &o.col_order}, std::pair{&blk_row, &o.blk_row}}) {
    *dst = *src;
    *src = nullptr;
  }
  return *this;
}

const char* bsr_cuda_type_name(BsrCudaType t) {
  switch (t) {
    case BsrCudaType::kF32: return "tf32";
    case BsrCudaType::kF16: return "fp16";
    case BsrCudaType::kBF16: return "bf16";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------------
// Passes.

void bsr_linear_forward_cuda(const BsrPatternDevice& p, BsrCudaType type, const void* values, const void* x,
                             int rows, const float* bias, float* y, cudaStream_t stream) {
  SPARROW_NVTX_RANGE("bsr_linear_fwd_cuda");
  check_pass(p, rows, "bsr_linear_forward_cuda");
  if (rows == 0) return;
  const int ch = int(16 / elem_size(type));
  const bool vec = p.in % ch == 0 && aligned16(x) && aligned16(values);
  const SpmmParams prm{x, values, y, bias, p.row_ptr, p.col_idx, nullptr, p.row_order, rows, p.in, p.out};
  spmm_dispatch<false>(type, p.block, prm, p.block_rows, vec, stream);
}

void bsr_linear_backward_input_cuda(const BsrPatternDevice& p, BsrCudaType type, const void* values,
                                    const void* dy, int rows, float* dx, cudaStream_t stream) {
  SPARROW_NVTX_RANGE("bsr_linear_bwd_input_cuda");
  check_pass(p, rows, "bsr_linear_backward_input_cuda");
  if (rows == 0) return;
  const int ch = int(16 / elem_size(type));
  const bool vec = p.out % ch == 0 && aligned16(dy) && aligned16(values);
  const SpmmParams prm{dy, values, dx, nullptr, p.col_ptr, p.t_row, p.t_block, p.col_order, rows, p.out, p.in};
  spmm_dispatch<true>(type, p.block, prm, p.block_cols, vec, stream);
}

void bsr_linear_backward_weight_cuda(const BsrPatternDevice& p, BsrCudaType type, const void* x,
                                     const void* dy, int rows, float* dvalues, cudaStream_t stream) {
  SPARROW_NVTX_RANGE("bsr_linear_bwd_weight_cuda");
  check_pass(p, rows, "bsr_linear_backward_weight_cuda");
  if (p.nnzb == 0) return;
  const int b = p.block;
  const int64_t n = p.nnzb * int64_t(b) * b;
  if (rows == 0) {
    SPARROW_CUDA_CHECK(cudaMemsetAsync(dvalues, 0, size_t(n) * sizeof(float), stream));
    return;
  }
  SPARROW_CHECK(p.nnzb <= INT32_MAX, "bsr_linear_backward_weight_cuda: too many blocks");
  const int ch = int(16 / elem_size(type));
  const bool vec = p.in % ch == 0 && p.out % ch == 0 && aligned16(x) && aligned16(dy);
  const bsr_device::SddmmPlan plan = bsr_device::sddmm_plan(rows, p.nnzb, sm_count(), b);
  const int splits = plan.splits;
  float* partial = nullptr;
  if (splits > 1) SPARROW_CUDA_CHECK(cudaMallocAsync(&partial, sizeof(float) * size_t(splits) * size_t(n), stream));
  const SddmmParams prm{x,    dy,    splits > 1 ? partial : dvalues, p.col_idx, p.blk_row, rows,
                        p.in, p.out, int(p.nnzb), plan.rows_per_split};
  sddmm_dispatch(type, b, prm, splits, vec, stream);
  if (splits > 1) {
    bsr_reduce_splits_kernel<<<grid_for(n, 256), 256, 0, stream>>>(partial, splits, n, dvalues);
    SPARROW_CUDA_LAUNCH_CHECK("bsr_reduce_splits_kernel");
    SPARROW_CUDA_CHECK(cudaFreeAsync(partial, stream));
  }
}

void bsr_convert_from_float_cuda(const float* src, void* dst, int64_t n, BsrCudaType type, cudaStream_t stream) {
  if (n <= 0) return;
  if (type == BsrCudaType::kF32) {
    SPARROW_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  } else if (type == BsrCudaType::kF16) {
    bsr_convert_kernel<__half><<<grid_for(n, 256), 256, 0, stream>>>(src, static_cast<__half*>(dst), n);
    SPARROW_CUDA_LAUNCH_CHECK("bsr_convert_kernel (fp16)");
  } else {
    bsr_convert_kernel<__nv_bfloat16>
        <<<grid_for(n, 256), 256, 0, stream>>>(src, static_cast<__nv_bfloat16*>(dst), n);
    SPARROW_CUDA_LAUNCH_CHECK("bsr_convert_kernel (bf16)");
  }
}

}  // namespace sparrow
