// Block-sparse (BSR) weights for linear layers and conv GEMM views: W is Out×In row-major (a Linear weight,
// or a conv weight viewed as Cout × Cin·Kh·Kw), activations X are Rows×In row-major (batch, tokens or
// N·OH·OW). Square b×b blocks; the value array holds nnzb blocks of b·b floats in the layout described below.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/common/hd.h"

#if SPARROW_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace sparrow {

// ---------------------------------------------------------------------------------------------------
// Format.
// Block rows run over Out (ceil(Out/b)), block columns over In (ceil(In/b)). Edge blocks (Out or In not a
// multiple of b) are stored as full b×b blocks whose entries outside the matrix are zero: bsr_from_dense
// writes those zeros, the weight gradient writes zeros there, and no kernel reads them as data (the kernels
// bound their loops by the matrix edge), so the optimizer's elementwise updates may touch them freely.
//
// Value layout (fixed; every kernel, CPU and CUDA, and both conversions use bsr_value_offset):
// block k (in block-row order, k ∈ [row_ptr[bi], row_ptr[bi+1])) occupies values[k·b² .. (k+1)·b²), and
// within it W[bi·b + r][bj·b + c] sits at c·b + r — each block is stored column-major (transposed), so one
// block "row" of b contiguous values is one input column's weights for the block's b outputs. That is the
// vector the forward micro-kernel (Y = X·Wᵀ) multiplies each broadcast x by, so inference never transposes.
// (cuSPARSE reads the same array with CUSPARSE_DIRECTION_COLUMN / CUSPARSE_ORDER_COL.)
struct BsrPattern {
  int out = 0, in = 0, block = 0;
  std::vector<int32_t> row_ptr;  // block_rows() + 1
  std::vector<int32_t> col_idx;  // nnzb, ascending within each block row
  // Transposed index (block-column order, built once with the pattern) for dX = dY·W: the blocks of block
  // column bj are t = col_ptr[bj] .. col_ptr[bj+1]-1, in ascending block row t_row[t]; t_block[t] is the
  // block's position k in the value array (so value updates never need a rebuild).
  std::vector<int32_t> col_ptr;  // block_cols() + 1
  std::vector<int32_t> t_row;    // nnzb
  std::vector<int32_t> t_block;  // nnzb

  int block_rows() const { return block > 0 ? (out + block - 1) / block : 0; }
  int block_cols() const { return block > 0 ? (in + block - 1) / block : 0; }
  int64_t nnzb() const { return int64_t(col_idx.size()); }
  int64_t block_values() const { return int64_t(block) * block; }
  int64_t value_count() const { return nnzb() * block_values(); }  // length of the value array
  // Kept blocks over all blocks (the compute fraction; edge blocks count as whole blocks).
  double density() const {
    const double total = double(block_rows()) * double(block_cols());
    return total > 0 ? double(nnzb()) / total : 0.0;
  }
};

// Shared index math (DESIGN.md rule 2: the CPU kernels, the CUDA kernels and the conversions use these).
// Offset of W[bi·b + r][bj·b + c] inside the value array, for the block at position k.
SPARROW_HD int64_t bsr_value_offset(int64_t k, int b, int r, int c) {
  return k * int64_t(b) * b + int64_t(c) * b + r;
}
// Number of matrix rows/columns a block index covers: b, or fewer for the last (edge) block.
SPARROW_HD int bsr_extent(int total, int block_index, int b) {
  const int left = total - block_index * b;
  return left < b ? left : b;
}

// Block sizes the CPU kernels accept (the CUDA kernels take 16, 32 and 64).
bool bsr_block_supported_cpu(int block);
bool bsr_block_supported_cuda(int block);

// Pattern builders. Throw sparrow::Error on a bad shape, block size or index.
// From a block mask (block_rows × block_cols, row-major, kept where nonzero).
BsrPattern bsr_pattern_from_block_mask(int out, int in, int block, const uint8_t* block_mask);
// From a dense Out×In mask or weight: a block is kept iff any of its entries is nonzero.
template <typename T>
BsrPattern bsr_pattern_from_dense(int out, int in, int block, const T* dense);
// From block CSR arrays (row_ptr: block_rows + 1, col_idx: row_ptr.back(), strictly ascending per row).
BsrPattern bsr_pattern_from_csr(int out, int in, int block, std::vector<int32_t> row_ptr,
                                std::vector<int32_t> col_idx);
// Throws unless the pattern's arrays are consistent (sizes, ranges, ordering, transposed index).
void bsr_pattern_validate(const BsrPattern& p);

// values (value_count) = the kept blocks of the dense Out×In w (zero padding outside the matrix); entries of
// w outside kept blocks are ignored. bsr_to_dense writes the whole Out×In w (zeros outside kept blocks).
template <typename T>
void bsr_from_dense(const BsrPattern& p, const T* w, T* values);
template <typename T>
void bsr_to_dense(const BsrPattern& p, const T* values, T* w);
// Convenience: the pattern of the nonzero blocks of w and its value array.
template <typename T>
BsrPattern bsr_from_dense(int out, int in, int block, const T* w, std::vector<T>* values);

// ---------------------------------------------------------------------------------------------------
// CPU passes (float). All write their outputs (never accumulate); cost ∝ nnzb·b²·rows.
// Fast path: register-blocked micro-kernels — a tile of R rows × the b outputs of one block row, held in
// vector registers across the whole block list (AVX-512 / AVX2+FMA / portable). OpenMP tasks are (row
// chunk, group of block rows); each task first copies the activation segments it reads into a contiguous
// panel (L2-sized), so weights are read once per chunk and the kernel broadcasts from one pointer. The weight
// gradient packs x and dy segments the same way and accumulates b×b tiles per kept block; with few blocks it
// also splits the rows into per-thread partial sums (no atomics anywhere). Outputs larger than 16 MiB are
// written with non-temporal stores. Scratch buffers are thread-local and reused across calls.
// The *_ref_cpu versions are plain loops with double accumulation, kept as the oracle.

// Which micro-kernel family the fast path uses. kAuto picks the widest compiled in (AVX-512 when built
// with -march=native on an AVX-512 machine). The others exist so tests exercise every path.
enum class BsrIsa { kAuto, kAvx512, kAvx2, kPortable };
bool bsr_isa_available(BsrIsa isa);  // compiled into this build (kAuto and kPortable always are)
const char* bsr_isa_name(BsrIsa isa);
BsrIsa bsr_isa_default();            // the family kAuto runs

// y (rows × out) = x (rows × in) · Wᵀ + bias; bias (out) may be null.
void bsr_linear_forward_cpu(const BsrPattern& p, const float* values, const float* x, int rows,
                            const float* bias, float* y, BsrIsa isa = BsrIsa::kAuto);
// dx (rows × in) = dy (rows × out) · W. Transposes the value blocks once per call into a scratch buffer
// (nnzb·b² floats, ∝ 1/rows of the arithmetic; kept per calling thread) so the same micro-kernel runs in
// block-column order.
void bsr_linear_backward_input_cpu(const BsrPattern& p, const float* values, const float* dy, int rows,
                                   float* dx, BsrIsa isa = BsrIsa::kAuto);
// Block SDDMM: dvalues (value_count) = (dyᵀ · x) at the kept blocks only, in the value layout (zeros at
// the padding of edge blocks).
void bsr_linear_backward_weight_cpu(const BsrPattern& p, const float* x, const float* dy, int rows,
                                    float* dvalues, BsrIsa isa = BsrIsa::kAuto);

template <typename T>
void bsr_linear_forward_ref_cpu(const BsrPattern& p, const T* values, const T* x, int rows, const T* bias,
                                T* y);
template <typename T>
void bsr_linear_backward_input_ref_cpu(const BsrPattern& p, const T* values, const T* dy, int rows, T* dx);
template <typename T>
void bsr_linear_backward_weight_ref_cpu(const BsrPattern& p, const T* x, const T* dy, int rows, T* dvalues);

}  // namespace sparrow

#if SPARROW_HAS_CUDA
namespace sparrow {

// The pattern on the device (cudaMalloc/cudaMemcpy at construction, freed by the destructor; move-only).
// Besides the CSR and transposed arrays it holds the block rows (and block columns) ordered by descending
// length: CTAs are issued longest-first so uneven block rows balance across the SMs.
struct BsrPatternDevice {
  explicit BsrPatternDevice(const BsrPattern& p);
  ~BsrPatternDevice();
  BsrPatternDevice(BsrPatternDevice&& o) noexcept;
  BsrPatternDevice& operator=(BsrPatternDevice&& o) noexcept;
  BsrPatternDevice(const BsrPatternDevice&) = delete;
  BsrPatternDevice& operator=(const BsrPatternDevice&) = delete;

  int out = 0, in = 0, block = 0, block_rows = 0, block_cols = 0;
  int64_t nnzb = 0;
  int32_t* row_ptr = nullptr;    // block_rows + 1
  int32_t* col_idx = nullptr;    // nnzb
  int32_t* col_ptr = nullptr;    // block_cols + 1
  int32_t* t_row = nullptr;      // nnzb
  int32_t* t_block = nullptr;    // nnzb
  int32_t* row_order = nullptr;  // block_rows, longest block row first
  int32_t* col_order = nullptr;  // block_cols, longest block column first
  int32_t* blk_row = nullptr;    // nnzb, block row of each block (for the weight gradient)

 private:
  void release() noexcept;
};

// Element type of the CUDA inputs (x, dy and the values): fp32 runs on TF32 tensor cores; FP16/BF16 inputs
// (__half / __nv_bfloat16 device arrays, passed as void*) accumulate in fp32. Outputs are always fp32.
enum class BsrCudaType { kF32, kF16, kBF16 };
const char* bsr_cuda_type_name(BsrCudaType t);

// Tensor-core kernels on device pointers, same contracts as the CPU passes (block 16, 32 or 64); the kernel
// code is kernels/sparse/bsr_cuda.cuh (the tests also run it on CPU threads). Launched on `stream`,
// asynchronous to the host. The weight gradient may use a stream-ordered workspace (cudaMallocAsync) when it
// splits the rows across CTAs (summed by a second kernel: deterministic, no atomics).
void bsr_linear_forward_cuda(const BsrPatternDevice& p, BsrCudaType type, const void* values, const void* x,
                             int rows, const float* bias, float* y, cudaStream_t stream = 0);
void bsr_linear_backward_input_cuda(const BsrPatternDevice& p, BsrCudaType type, const void* values,
                                    const void* dy, int rows, float* dx, cudaStream_t stream = 0);
void bsr_linear_backward_weight_cuda(const BsrPatternDevice& p, BsrCudaType type, const void* x,
                                     const void* dy, int rows, float* dvalues, cudaStream_t stream = 0);

// fp32 conveniences (TF32 tensor cores).
inline void bsr_linear_forward_cuda(const BsrPatternDevice& p, const float* values, const float* x, int rows,
                                    const float* bias, float* y, cudaStream_t stream = 0) {
  bsr_linear_forward_cuda(p, BsrCudaType::kF32, values, x, rows, bias, y, stream);
}
inline void bsr_linear_backward_input_cuda(const BsrPatternDevice& p, const float* values, const float* dy,
                                           int rows, float* dx, cudaStream_t stream = 0) {
  bsr_linear_backward_input_cuda(p, BsrCudaType::kF32, values, dy, rows, dx, stream);
}
inline void bsr_linear_backward_weight_cuda(const BsrPatternDevice& p, const float* x, const float* dy,
                                            int rows, float* dvalues, cudaStream_t stream = 0) {
  bsr_linear_backward_weight_cuda(p, BsrCudaType::kF32, x, dy, rows, dvalues, stream);
}

// dst (n elements of `type`) = src (n floats), device pointers; for tests and benchmarks.
void bsr_convert_from_float_cuda(const float* src, void* dst, int64_t n, BsrCudaType type,
                                 cudaStream_t stream = 0);

}  // namespace sparrow
#endif
