// CUDA masked convolution over device NCHW float activations and a fixed-pattern Cout×Cin×Kh×Kw weight
// (value vector in ascending flat-index order, pattern uploaded once as SparseConvPatternDevice), plus the
// im2col / col2im / transpose helpers the cuSPARSE baseline in bench/bench_sparse_conv.cpp uses.
// Every kernel's work is proportional to the kept weights: no dense weight is ever formed.
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "engine/base/cuda_check.h"
#include "engine/base/error.h"
#include "engine/base/nvtx.h"
#include "kernels/sparse/sparse_conv.h"

namespace sparrow {

namespace {

// Forward / input gradient: a block is kPixels consecutive output (input) pixels across the batch, one per
// thread, times kChannels output (input) channels; each channel's kept weights are staged in shared memory
// kStage at a time and read by all threads at the same address (a broadcast). Consecutive threads read
// consecutive input columns for a given weight, so global reads coalesce.
constexpr int kPixels = 128;
constexpr int kChannels = 4;
constexpr int kStage = 256;

// Weight gradient: a block owns kTaps consecutive kept weights and one slice of the N·OH·OW pixels;
// its threads stride over the slice and the per-tap sums are reduced in the block. Slices > 1 write
// partial sums to a workspace that a second kernel adds up in a fixed order (deterministic).
constexpr int kTaps = 8;
constexpr int kWgradThreads = 256;
constexpr int kWgradTargetBlocks = 1024;
constexpr int64_t kMinSlicePixels = 2048;

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

__global__ void sparse_conv_forward_kernel(Conv2dShape s, const int32_t* __restrict__ row_ptr,
                                           const int32_t* __restrict__ tap, const float* __restrict__ values,
                                           const float* __restrict__ x, const float* __restrict__ bias,
                                           float* __restrict__ y) {
  __shared__ int32_t s_off[kStage];  // ci·H·W
  __shared__ int32_t s_ky[kStage], s_kx[kStage];
  __shared__ float s_val[kStage];
  const int oh = s.oh(), ow = s.ow();
  const int64_t P = int64_t(oh) * ow, total = int64_t(s.n) * P;
  const int64_t pix = int64_t(blockIdx.x) * kPixels + threadIdx.x;
  const bool active = pix < total;
  const int n = active ? int(pix / P) : 0;
  const int q = active ? int(pix % P) : 0;
  const int oy = q / ow, ox = q % ow;
  const int iy0 = oy * s.stride - s.pad, ix0 = ox * s.stride - s.pad;
  const int khw = s.kh * s.kw;
  const float* xn = x + int64_t(n) * s.cin * s.h * s.w;
  const int co_end = min(s.cout, int(blockIdx.y + 1) * kChannels);
  for (int co = blockIdx.y * kChannels; co < co_end; ++co) {
    float acc = bias ? bias[co] : 0.0f;
    const int k_begin = row_ptr[co], k_end = row_ptr[co + 1];
    for (int k0 = k_begin; k0 < k_end; k0 += kStage) {
      const int cnt = min(kStage, k_end - k0);
      __syncthreads();  // the previous stage's readers are done
      for (int i = threadIdx.x; i < cnt; i += blockDim.x) {
        const int t = tap[k0 + i];
        const int ci = t / khw, r = t % khw;
        s_off[i] = ci * s.h * s.w;
        s_ky[i] = r / s.kw;
        s_kx[i] = r % s.kw;
        s_val[i] = values[k0 + i];
      }
      __syncthreads();
      if (active)
        for (int i = 0; i < cnt; ++i) {
          const int iy = iy0 + s_ky[i], ix = ix0 + s_kx[i];
          if (iy >= 0 && iy < s.h && ix >= 0 && ix < s.w) acc += s_val[i] * __ldg(xn + s_off[i] + iy * s.w + ix);
        }
    }
    if (active) y[(int64_t(n) * s.cout + co) * P + q] = acc;
  }
}

__global__ void sparse_conv_backward_input_kernel(Conv2dShape s, const int32_t* __restrict__ col_ptr,
                                                  const int32_t* __restrict__ col_entry,
                                                  const int32_t* __restrict__ col_tap,
                                                  const float* __restrict__ values, const float* __restrict__ dy,
                                                  float* __restrict__ dx) {
  __shared__ int32_t s_off[kStage];  // co·OH·OW
  __shared__ int32_t s_ky[kStage], s_kx[kStage];
  __shared__ float s_val[kStage];
  const int oh = s.oh(), ow = s.ow();
  const int64_t hw = int64_t(s.h) * s.w, total = int64_t(s.n) * hw;
  const int64_t pix = int64_t(blockIdx.x) * kPixels + threadIdx.x;
  const bool active = pix < total;
  const int n = active ? int(pix / hw) : 0;
  const int q = active ? int(pix % hw) : 0;
  const int iy = q / s.w, ix = q % s.w;
  const int khw = s.kh * s.kw;
  const float* dyn = dy + int64_t(n) * s.cout * oh * ow;
  const int ci_end = min(s.cin, int(blockIdx.y + 1) * kChannels);
  for (int ci = blockIdx.y * kChannels; ci < ci_end; ++ci) {
    float acc = 0.0f;
    const int e_begin = col_ptr[ci], e_end = col_ptr[ci + 1];
    for (int e0 = e_begin; e0 < e_end; e0 += kStage) {
      const int cnt = min(kStage, e_end - e0);
      __syncthreads();
      for (int i = threadIdx.x; i < cnt; i += blockDim.x) {
        const int t = col_tap[e0 + i];
        const int co = t / khw, r = t % khw;
        s_off[i] = co * oh * ow;
        s_ky[i] = r / s.kw;
        s_kx[i] = r % s.kw;
        s_val[i] = values[col_entry[e0 + i]];
      }
      __syncthreads();
      if (active)
        for (int i = 0; i < cnt; ++i) {
          // Gather form: output (oy, ox) reads this pixel under tap (ky, kx) iff iy = oy·s − pad + ky.
          const int ty = iy + s.pad - s_ky[i], tx = ix + s.pad - s_kx[i];
          if (ty < 0 || tx < 0 || ty % s.stride != 0 || tx % s.stride != 0) continue;
          const int oy = ty / s.stride, ox = tx / s.stride;
          if (oy < oh && ox < ow) acc += s_val[i] * __ldg(dyn + s_off[i] + oy * ow + ox);
        }
    }
    if (active) dx[(int64_t(n) * s.cin + ci) * hw + q] = acc;
  }
}

// partial[slice·nnz + k] (or dvalues[k] when slices == 1) = Σ over the slice's pixels of dy·x at tap k.
__global__ void sparse_conv_backward_weight_kernel(Conv2dShape s, int32_t nnz, const int32_t* __restrict__ row_ptr,
                                                   const int32_t* __restrict__ tap, const float* __restrict__ x,
                                                   const float* __restrict__ dy, int slices, float* __restrict__ out) {
  __shared__ int32_t s_co[kTaps], s_ci[kTaps], s_ky[kTaps], s_kx[kTaps];
  __shared__ float s_red[kWgradThreads / 32][kTaps];
  const int k0 = blockIdx.x * kTaps;
  const int khw = s.kh * s.kw;
  if (threadIdx.x < kTaps) {
    const int k = k0 + threadIdx.x;
    if (k < nnz) {
      int lo = 0, hi = s.cout;  // row of k: the last co with row_ptr[co] ≤ k
      while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (row_ptr[mid] <= k) lo = mid; else hi = mid;
      }
      const int t = tap[k];
      s_co[threadIdx.x] = lo;
      s_ci[threadIdx.x] = t / khw;
      s_ky[threadIdx.x] = (t % khw) / s.kw;
      s_kx[threadIdx.x] = t % s.kw;
    } else {
      s_co[threadIdx.x] = -1;
    }
  }
  __syncthreads();
  const int oh = s.oh(), ow = s.ow();
  const int64_t P = int64_t(oh) * ow, total = int64_t(s.n) * P;
  const int64_t per_slice = (total + slices - 1) / slices;
  const int64_t p_begin = int64_t(blockIdx.y) * per_slice, p_end = min(total, p_begin + per_slice);
  float acc[kTaps];
#pragma unroll
  for (int t = 0; t < kTaps; ++t) acc[t] = 0.0f;
  for (int64_t pix = p_begin + threadIdx.x; pix < p_end; pix += blockDim.x) {
    const int n = int(pix / P), q = int(pix % P);
    const int oy = q / ow, ox = q % ow;
    const float* dyn = dy + int64_t(n) * s.cout * P + q;
    const float* xn = x + int64_t(n) * s.cin * s.h * s.w;
#pragma unroll
    for (int t = 0; t < kTaps; ++t) {
      if (s_co[t] < 0) continue;
      const int iy = oy * s.stride - s.pad + s_ky[t], ix = ox * s.stride - s.pad + s_kx[t];
      if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
      acc[t] += __ldg(dyn + int64_t(s_co[t]) * P) * __ldg(xn + (int64_t(s_ci[t]) * s.h + iy) * s.w + ix);
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int t = 0; t < kTaps; ++t) {
    const float v = warp_sum(acc[t]);
    if (lane == 0) s_red[warp][t] = v;
  }
  __syncthreads();
  if (threadIdx.x < kTaps && s_co[threadIdx.x] >= 0) {
    float sum = 0.0f;
    for (int w = 0; w < kWgradThreads / 32; ++w) sum += s_red[w][threadIdx.x];
    const int k = k0 + threadIdx.x;
    if (slices == 1)
      out[k] = sum;
    else
      out[int64_t(blockIdx.y) * nnz + k] = sum;
  }
}

__global__ void sum_slices_kernel(int32_t nnz, int slices, const float* __restrict__ partial,
                                  float* __restrict__ dvalues) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= nnz) return;
  float sum = 0.0f;
  for (int sl = 0; sl < slices; ++sl) sum += partial[int64_t(sl) * nnz + k];
  dvalues[k] = sum;
}

// dbias[co] = Σ_n Σ_p dy[n][co][p]: one block per output channel.
__global__ void bias_grad_kernel(int n_images, int cout, int64_t P, const float* __restrict__ dy,
                                 float* __restrict__ dbias) {
  __shared__ float s_red[kWgradThreads / 32];
  const int co = blockIdx.x;
  float acc = 0.0f;
  for (int n = 0; n < n_images; ++n) {
    const float* d = dy + (int64_t(n) * cout + co) * P;
    for (int64_t q = threadIdx.x; q < P; q += blockDim.x) acc += d[q];
  }
  acc = warp_sum(acc);
  if (threadIdx.x % 32 == 0) s_red[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int w = 0; w < kWgradThreads / 32; ++w) sum += s_red[w];
    dbias[co] = sum;
  }
}

__global__ void im2col_kernel(Conv2dShape s, const float* __restrict__ x, float* __restrict__ col) {
  const int oh = s.oh(), ow = s.ow();
  const int64_t P = int64_t(oh) * ow, np = int64_t(s.n) * P;
  const int64_t total = int64_t(s.cin) * s.kh * s.kw * np;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / np, c = i % np;
    const int kx = int(row % s.kw), ky = int((row / s.kw) % s.kh), ci = int(row / (int64_t(s.kw) * s.kh));
    const int n = int(c / P), q = int(c % P);
    const int iy = (q / ow) * s.stride - s.pad + ky, ix = (q % ow) * s.stride - s.pad + kx;
    col[i] = (iy >= 0 && iy < s.h && ix >= 0 && ix < s.w) ? x[((int64_t(n) * s.cin + ci) * s.h + iy) * s.w + ix] : 0.0f;
  }
}

__global__ void col2im_kernel(Conv2dShape s, const float* __restrict__ col, float* __restrict__ dx) {
  const int oh = s.oh(), ow = s.ow();
  const int64_t P = int64_t(oh) * ow, np = int64_t(s.n) * P;
  const int64_t total = int64_t(s.n) * s.cin * s.h * s.w;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int ix = int(i % s.w), iy = int((i / s.w) % s.h);
    const int ci = int((i / (int64_t(s.w) * s.h)) % s.cin), n = int(i / (int64_t(s.w) * s.h * s.cin));
    float acc = 0.0f;
    for (int ky = 0; ky < s.kh; ++ky) {
      const int ty = iy + s.pad - ky;
      if (ty < 0 || ty % s.stride != 0 || ty / s.stride >= oh) continue;
      for (int kx = 0; kx < s.kw; ++kx) {
        const int tx = ix + s.pad - kx;
        if (tx < 0 || tx % s.stride != 0 || tx / s.stride >= ow) continue;
        const int64_t row = (int64_t(ci) * s.kh + ky) * s.kw + kx;
        acc += col[row * np + int64_t(n) * P + (ty / s.stride) * ow + tx / s.stride];
      }
    }
    dx[i] = acc;
  }
}

__global__ void swap_leading_kernel(int a, int b, int64_t p, const float* __restrict__ src, float* __restrict__ dst) {
  const int64_t total = int64_t(a) * b * p;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = i % p, ib = (i / p) % b, ia = i / (p * b);
    dst[(ib * a + ia) * p + q] = src[i];
  }
}

// Blocks of `per` items covering `total` exactly (kernels without a grid-stride loop).
unsigned blocks_for(int64_t total, int per, const char* op) {
  const int64_t b = (total + per - 1) / per;
  SPARROW_CHECK(b < (int64_t(1) << 31), op, ": ", total, " pixels exceed the grid");
  return unsigned(std::max<int64_t>(1, b));
}

// Grid for the grid-stride kernels.
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

void check_device_shape(const Conv2dShape& s, const SparseConvPatternDevice& p, const char* op) {
  SPARROW_CHECK(s.n > 0 && s.h > 0 && s.w > 0 && s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw, op,
                ": invalid shape n=", s.n, " h=", s.h, " w=", s.w, " k=", s.kh, "x", s.kw, " pad=", s.pad);
  SPARROW_CHECK(s.cout == p.cout && s.cin == p.cin && s.kh == p.kh && s.kw == p.kw && s.stride == p.stride &&
                    s.pad == p.pad,
                op, ": shape cout=", s.cout, " cin=", s.cin, " k=", s.kh, "x", s.kw, " stride=", s.stride,
                " pad=", s.pad, " does not match the pattern's cout=", p.cout, " cin=", p.cin, " k=", p.kh, "x",
                p.kw, " stride=", p.stride, " pad=", p.pad);
  SPARROW_CHECK(s.x_size() < INT32_MAX && s.y_size() < INT32_MAX, op, ": tensors of 2^31 or more elements");
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Pattern upload.

SparseConvPatternDevice::SparseConvPatternDevice(const SparseConvPattern& p)
    : cout(p.cout), cin(p.cin), kh(p.kh), kw(p.kw), stride(p.stride), pad(p.pad), nnz(p.nnz) {
  SPARROW_CHECK(p.nnz < INT32_MAX, "SparseConvPatternDevice: ", p.nnz, " kept weights exceed int32 indexing");
  const int khw = p.kh * p.kw, ss = p.stride * p.stride;
  std::vector<int32_t> rp(p.row_ptr.begin(), p.row_ptr.end()), t(size_t(p.nnz));
  const int64_t k_row = int64_t(p.cin) * khw;
  for (int64_t k = 0; k < p.nnz; ++k) t[size_t(k)] = int32_t(p.index[size_t(k)] % k_row);
  // Per input channel (all stride phases together), ordered by (phase, co, ky, kx): any order sums the same.
  std::vector<int32_t> cp(size_t(p.cin) + 1), ce(size_t(p.nnz)), ct(size_t(p.nnz));
  for (int ci = 0; ci <= p.cin; ++ci) cp[size_t(ci)] = int32_t(p.col_ptr[size_t(ci) * ss]);
  for (int64_t e = 0; e < p.nnz; ++e) {
    const int32_t k = p.col_entry[size_t(e)];
    const int co = int(p.index[size_t(k)] / k_row);
    ce[size_t(e)] = k;
    ct[size_t(e)] = (co * p.kh + p.tap_ky[size_t(k)]) * p.kw + p.tap_kx[size_t(k)];
  }
  try {
    row_ptr = upload(rp);
    tap = upload(t);
    col_ptr = upload(cp);
    col_entry = upload(ce);
    col_tap = upload(ct);
  } catch (...) {
    release();
    throw;
  }
}

SparseConvPatternDevice::~SparseConvPatternDevice() { release(); }

void SparseConvPatternDevice::release() noexcept {
  for (int32_t** a : {&row_ptr, &tap, &col_ptr, &col_entry, &col_tap}) {
    if (*a) cudaFree(*a);
    *a = nullptr;
  }
}

SparseConvPatternDevice::SparseConvPatternDevice(SparseConvPatternDevice&& o) noexcept { *this = std::move(o); }

SparseConvPatternDevice& SparseConvPatternDevice::operator=(SparseConvPatternDevice&& o) noexcept {
  if (this == &o) return *this;
  release();
  cout = o.cout;
  cin = o.cin;
  kh = o.kh;
  kw = o.kw;
  stride = o.stride;
  pad = o.pad;
  nnz = o.nnz;
  row_ptr = o.row_ptr;
  tap = o.tap;
  col_ptr = o.col_ptr;
  col_entry = o.col_entry;
  col_tap = o.col_tap;
  o.row_ptr = o.tap = o.col_ptr = o.col_entry = o.col_tap = nullptr;
  o.nnz = 0;
  return *this;
}

// ---------------------------------------------------------------------------------------------------
// Launchers.

void sparse_conv2d_forward_cuda(const Conv2dShape& s, const SparseConvPatternDevice& p, const float* values,
                                const float* x, const float* bias, float* y, cudaStream_t stream) {
  SPARROW_NVTX_RANGE("sparse_conv2d_fwd_cuda");
  check_device_shape(s, p, "sparse_conv2d_forward_cuda");
  const dim3 grid(blocks_for(int64_t(s.n) * s.oh() * s.ow(), kPixels, "sparse_conv2d_forward_cuda"),
                  unsigned((s.cout + kChannels - 1) / kChannels));
  sparse_conv_forward_kernel<<<grid, kPixels, 0, stream>>>(s, p.row_ptr, p.tap, values, x, bias, y);
  SPARROW_CUDA_LAUNCH_CHECK("sparse_conv_forward_kernel");
}

void sparse_conv2d_backward_input_cuda(const Conv2dShape& s, const SparseConvPatternDevice& p,
                                       const float* values, const float* dy, float* dx, cudaStream_t stream) {
  SPARROW_NVTX_RANGE("sparse_conv2d_dgrad_cuda");
  check_device_shape(s, p, "sparse_conv2d_backward_input_cuda");
  const dim3 grid(blocks_for(int64_t(s.n) * s.h * s.w, kPixels, "sparse_conv2d_backward_input_cuda"),
                  unsigned((s.cin + kChannels - 1) / kChannels));
  sparse_conv_backward_input_kernel<<<grid, kPixels, 0, stream>>>(s, p.col_ptr, p.col_entry, p.col_tap, values, dy,
                                                                  dx);
  SPARROW_CUDA_LAUNCH_CHECK("sparse_conv_backward_input_kernel");
}

void sparse_conv2d_backward_weight_cuda(const Conv2dShape& s, const SparseConvPatternDevice& p, const float* x,
                                        const float* dy, float* dvalues, float* dbias, cudaStream_t stream) {
  SPARROW_NVTX_RANGE("sparse_conv2d_wgrad_cuda");
  check_device_shape(s, p, "sparse_conv2d_backward_weight_cuda");
  const int64_t P = int64_t(s.oh()) * s.ow();
  if (dbias) {
    bias_grad_kernel<<<unsigned(s.cout), kWgradThreads, 0, stream>>>(s.n, s.cout, P, dy, dbias);
    SPARROW_CUDA_LAUNCH_CHECK("bias_grad_kernel");
  }
  if (p.nnz == 0) return;
  const int chunks = int((p.nnz + kTaps - 1) / kTaps);
  const int64_t pixels = int64_t(s.n) * P;
  int slices = std::max(1, kWgradTargetBlocks / chunks);
  slices = int(std::min<int64_t>(slices, std::max<int64_t>(1, pixels / kMinSlicePixels)));
  float* partial = nullptr;
  if (slices > 1) SPARROW_CUDA_CHECK(cudaMallocAsync(&partial, sizeof(float) * size_t(slices) * p.nnz, stream));
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(slices));
  sparse_conv_backward_weight_kernel<<<grid, kWgradThreads, 0, stream>>>(s, int32_t(p.nnz), p.row_ptr, p.tap, x, dy,
                                                                         slices, slices > 1 ? partial : dvalues);
  SPARROW_CUDA_LAUNCH_CHECK("sparse_conv_backward_weight_kernel");
  if (slices > 1) {
    sum_slices_kernel<<<grid_for(p.nnz, 256), 256, 0, stream>>>(int32_t(p.nnz), slices, partial, dvalues);
    SPARROW_CUDA_LAUNCH_CHECK("sum_slices_kernel");
    SPARROW_CUDA_CHECK(cudaFreeAsync(partial, stream));
  }
}

void sparse_conv_im2col_cuda(const Conv2dShape& s, const float* x, float* col, cudaStream_t stream) {
  const int64_t total = int64_t(s.cin) * s.kh * s.kw * s.n * s.oh() * s.ow();
  im2col_kernel<<<grid_for(total, 256), 256, 0, stream>>>(s, x, col);
  SPARROW_CUDA_LAUNCH_CHECK("im2col_kernel");
}

void sparse_conv_col2im_cuda(const Conv2dShape& s, const float* col, float* dx, cudaStream_t stream) {
  col2im_kernel<<<grid_for(s.x_size(), 256), 256, 0, stream>>>(s, col, dx);
  SPARROW_CUDA_LAUNCH_CHECK("col2im_kernel");
}

void sparse_conv_swap_leading_cuda(int a, int b, int64_t p, const float* src, float* dst, cudaStream_t stream) {
  swap_leading_kernel<<<grid_for(int64_t(a) * b * p, 256), 256, 0, stream>>>(a, b, p, src, dst);
  SPARROW_CUDA_LAUNCH_CHECK("swap_leading_kernel");
}

}  // namespace sparrow
