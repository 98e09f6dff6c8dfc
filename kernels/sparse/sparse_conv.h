// Masked (fixed-pattern sparse) 2-D convolution on raw pointers. Layouts as kernels/conv/conv.h: x N×Cin×H×W,
// y N×Cout×OH×OW (NCHW, row-major); the weight is Cout×Cin×Kh×Kw with a fixed 0/1 pattern, stored as a
// SparseConvPattern (built once) plus a value vector in ascending flat-index order (CSR over Cout).
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/common/moments.h"
#include "kernels/conv/conv.h"

#if SPARROW_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace sparrow {

// The kept positions of a Cout×Cin×Kh×Kw weight. Independent of the batch and of H/W, so a layer builds
// it once when its mask is fixed; the optimizer then updates the value vector in place.
// Value k belongs to flat dense index index[k]; indices ascend, so the values of output channel co are
// [row_ptr[co], row_ptr[co+1]) with their (ci, ky, kx) in row-major order.
struct SparseConvPattern {
  int cout = 0, cin = 0, kh = 0, kw = 0;
  int stride = 1, pad = 0;  // fixed with the pattern: the input-gradient grouping below depends on them
  int64_t nnz = 0;
  std::vector<int64_t> row_ptr;                 // cout + 1
  std::vector<int64_t> index;                   // nnz, flat index into the dense weight, ascending
  std::vector<int32_t> tap_ci, tap_ky, tap_kx;  // nnz, (ci, ky, kx) of each kept weight
  // Transposed pattern for the input gradient: entries of input channel ci that land on input-gradient
  // stride phase ph = ((ky − pad) mod stride)·stride + (kx − pad) mod stride are
  // [col_ptr[ci·stride² + ph], col_ptr[ci·stride² + ph + 1]), ordered by (co, ky, kx); col_entry gives
  // each one's position in the value vector (so in-place value updates need no rebuild).
  std::vector<int64_t> col_ptr;    // cin·stride² + 1
  std::vector<int32_t> col_entry;  // nnz

  int64_t dense_size() const { return int64_t(cout) * cin * kh * kw; }
  double density() const { return dense_size() > 0 ? double(nnz) / double(dense_size()) : 0.0; }
  int64_t row_nnz(int co) const { return row_ptr[size_t(co) + 1] - row_ptr[size_t(co)]; }
};

// Builds the pattern of a Conv2dShape's filter (s.n, s.h, s.w are not used) from a dense Cout×Cin×Kh×Kw
// mask (kept where mask ≠ 0), or from nnz strictly ascending flat indices. Throws on a bad shape or index.
SparseConvPattern sparse_conv_pattern_from_mask(const Conv2dShape& s, const float* mask);
SparseConvPattern sparse_conv_pattern_from_indices(const Conv2dShape& s, const int64_t* idx, int64_t nnz);

// values[k] = w[index[k]] (dense → value vector) and w = scatter(values) with zeros elsewhere (W⊙M).
template <typename T>
void sparse_conv_gather_values(const SparseConvPattern& p, const T* w, T* values);
template <typename T>
void sparse_conv_scatter_values(const SparseConvPattern& p, const T* values, T* w);

// Throws unless s (a full shape with n, h, w) matches the pattern's filter, stride and padding.
void sparse_conv_check_shape(const Conv2dShape& s, const SparseConvPattern& p, const char* op);

// ---------------------------------------------------------------------------------------------------
// CPU kernels. values: nnz (pattern order). All three write their outputs (never accumulate).
// Fast path: direct sparse convolution (no im2col) over a zero-padded, stride-phase-split copy of a group
// of images laid side by side, so each kept weight is one constant offset and each output plane one
// contiguous vector loop (AVX-512/AVX2 through GCC vector types); OpenMP over (image group, channel) in
// contiguous ranges of equal kept-weight count, L1-tiled over source channels. Cost ∝ nnz · pixels plus one
// padded copy of the input (forward, weight gradient) or output gradient (input gradient) per call.
// The input gradient gathers through the transposed pattern (no scatter, no races); the weight gradient
// is a dot product per kept weight, reduced over threads in a fixed order (deterministic for a thread
// count). Masked direct variant (float, AVX-512): stride-1 layers whose output rows are as wide as the
// input's and whose planes are whole vectors skip the padded copies and read x / dy in place, with the
// lanes that would cross a row or the top / bottom edge masked off (per-lane masks precomputed per call);
// chosen per pass when the kept weights per source channel are few enough that the copies would dominate
// (thresholds by map width in sparse_conv_cpu.cpp, measured). Above those thresholds, on 8-, 16- and
// 32-wide "same" maps, the forward and the input gradient (and the weight gradient on maps at least 16 wide)
// copy whole planes with zero rows above and below (no per-row padding) and mask only the wrapping columns,
// in registers (row-padded variant). 3×3 pad-1 layers on square maps of at most 4×4 vectorise over blocks of
// 16 images instead (tiny-map variant, all three passes). The *_ref_cpu versions are plain loops over the
// pattern (double accumulation), the oracle.

// y (N×Cout×OH×OW) = conv(x, W⊙M) + bias; bias (Cout) may be null. With `moments`, also the per-channel
// moments of y (kernels/common/moments.h), summed from cache as y is written: a training batch norm after
// the convolution then skips its statistics pass over y.
template <typename T>
void sparse_conv2d_forward_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values, const T* x,
                               const T* bias, T* y, ChannelMoments* moments = nullptr);
// dx (N×Cin×H×W) = conv_transpose(dy, W⊙M).
template <typename T>
void sparse_conv2d_backward_input_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values,
                                      const T* dy, T* dx);
// dvalues (nnz) = Σ_n dy ⋆ x sampled at the pattern (the dense weight gradient at kept positions only);
// dbias (Cout) = Σ dy, may be null.
template <typename T>
void sparse_conv2d_backward_weight_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* x,
                                       const T* dy, T* dvalues, T* dbias);

template <typename T>
void sparse_conv2d_forward_ref_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values,
                                   const T* x, const T* bias, T* y);
template <typename T>
void sparse_conv2d_backward_input_ref_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values,
                                          const T* dy, T* dx);
template <typename T>
void sparse_conv2d_backward_weight_ref_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* x,
                                           const T* dy, T* dvalues, T* dbias);

#if SPARROW_HAS_CUDA
// The pattern on the device (cudaMalloc/cudaMemcpy at construction, freed by the destructor; move-only).
// Arrays (int32, nnz < 2^31): row_ptr (cout+1); tap (nnz) = (ci·Kh + ky)·Kw + kx of each value;
// col_ptr (cin+1) and, per input channel ordered by (co, ky, kx), col_entry (position in the value
// vector) and col_tap = (co·Kh + ky)·Kw + kx.
struct SparseConvPatternDevice {
  explicit SparseConvPatternDevice(const SparseConvPattern& p);
  ~SparseConvPatternDevice();
  SparseConvPatternDevice(SparseConvPatternDevice&& o) noexcept;
  SparseConvPatternDevice& operator=(SparseConvPatternDevice&& o) noexcept;
  SparseConvPatternDevice(const SparseConvPatternDevice&) = delete;
  SparseConvPatternDevice& operator=(const SparseConvPatternDevice&) = delete;

  int cout = 0, cin = 0, kh = 0, kw = 0, stride = 1, pad = 0;
  int64_t nnz = 0;
  int32_t* row_ptr = nullptr;
  int32_t* tap = nullptr;
  int32_t* col_ptr = nullptr;
  int32_t* col_entry = nullptr;
  int32_t* col_tap = nullptr;

 private:
  void release() noexcept;
};

// CUDA kernels on device pointers (float), same contracts as the CPU ones. Launched on `stream` (default:
// the legacy default stream 0), asynchronous with respect to the host. Forward / input gradient: a block
// is 128 pixels × 4 channels, the channels' kept weights staged in shared memory. Weight gradient: a block
// per 8 kept weights and pixel slice, block reductions, slices summed by a second kernel in a fixed order
// (workspace from cudaMallocAsync / cudaFreeAsync on `stream`).
void sparse_conv2d_forward_cuda(const Conv2dShape& s, const SparseConvPatternDevice& p, const float* values,
                                const float* x, const float* bias, float* y, cudaStream_t stream = 0);
void sparse_conv2d_backward_input_cuda(const Conv2dShape& s, const SparseConvPatternDevice& p,
                                       const float* values, const float* dy, float* dx,
                                       cudaStream_t stream = 0);
void sparse_conv2d_backward_weight_cuda(const Conv2dShape& s, const SparseConvPatternDevice& p, const float* x,
                                        const float* dy, float* dvalues, float* dbias,
                                        cudaStream_t stream = 0);

// Helpers for the cuSPARSE baseline in bench/bench_sparse_conv.cpp (device pointers, float). The column
// matrix is (Cin·Kh·Kw) × (N·OH·OW) row-major: row (ci·Kh + ky)·Kw + kx, column n·OH·OW + oy·OW + ox.
void sparse_conv_im2col_cuda(const Conv2dShape& s, const float* x, float* col, cudaStream_t stream = 0);
// dx = col2im(col) (writes dx; gather form, no atomics).
void sparse_conv_col2im_cuda(const Conv2dShape& s, const float* col, float* dx, cudaStream_t stream = 0);
// dst (B×A×P) = src (A×B×P) with the two leading dimensions swapped (NCHW ↔ CNHW).
void sparse_conv_swap_leading_cuda(int a, int b, int64_t p, const float* src, float* dst,
                                   cudaStream_t stream = 0);
#endif

}  // namespace sparrow
