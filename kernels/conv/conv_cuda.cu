// Dense 2-D convolution on the GPU without cuDNN: im2col + one cuBLAS GEMM per chunk of images, plus the
// per-channel bias kernels both conv paths use. Layouts: x N×Cin×H×W, w Cout×(Cin·Kh·Kw), y N×Cout×P
// (P = OH·OW). A chunk of nb images is unrolled into col (K × nb·P, K = Cin·Kh·Kw, column img·P + p), so
// one GEMM covers the chunk; outputs pass through a Cout × nb·P staging buffer that a permute kernel
// turns into NCHW. col2im is a gather (each input pixel sums its taps), so no atomics are needed.
#include <algorithm>
#include <cstdint>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/conv/conv.h"
#include "kernels/gemm/gemm.h"

namespace sparrow {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;
constexpr int64_t kColBudget = int64_t(256) << 20;  // bytes for the column buffer of one chunk

cudaStream_t stream() { return static_cast<cudaStream_t>(cuda_stream_handle()); }
int blocks_for(int64_t n) { return int(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)); }

// Pool memory released (stream-ordered) when the scope ends.
struct DeviceScratch {
  explicit DeviceScratch(size_t bytes) : p(static_cast<float*>(cuda_alloc(bytes))) {}
  ~DeviceScratch() { cuda_free(p); }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  float* p;
};

struct Geo {
  int cin, h, w, kh, kw, stride, pad, oh, ow;
};

Geo geo_of(const Conv2dShape& s) { return Geo{s.cin, s.h, s.w, s.kh, s.kw, s.stride, s.pad, s.oh(), s.ow()}; }

// col[k][img·P + p] for k = (ci·Kh + ky)·Kw + kx; images img0 .. img0+nb−1 of x.
__global__ void im2col_kernel(Geo g, int nb, const float* __restrict__ x, float* __restrict__ col) {
  const int64_t P = int64_t(g.oh) * g.ow, cols = nb * P;
  const int64_t total = int64_t(g.cin) * g.kh * g.kw * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i / cols, q = i % cols;
    const int img = int(q / P), p = int(q % P);
    const int kx = int(k % g.kw), ky = int((k / g.kw) % g.kh), ci = int(k / (int64_t(g.kw) * g.kh));
    const int oy = p / g.ow, ox = p % g.ow;
    const int iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
    float v = 0.0f;
    if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) v = x[((int64_t(img) * g.cin + ci) * g.h + iy) * g.w + ix];
    col[i] = v;
  }
}

// dx[img][ci][iy][ix] = Σ over taps (ky, kx) whose output pixel exists of col[k][img·P + oy·OW + ox].
__global__ void col2im_kernel(Geo g, int nb, const float* __restrict__ col, float* __restrict__ dx) {
  const int64_t P = int64_t(g.oh) * g.ow, cols = nb * P;
  const int64_t total = int64_t(nb) * g.cin * g.h * g.w;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int ix = int(i % g.w), iy = int((i / g.w) % g.h);
    const int ci = int((i / (int64_t(g.w) * g.h)) % g.cin), img = int(i / (int64_t(g.w) * g.h * g.cin));
    float s = 0.0f;
    for (int ky = 0; ky < g.kh; ++ky) {
      const int ty = iy + g.pad - ky;
      if (ty < 0 || ty % g.stride != 0) continue;
      const int oy = ty / g.stride;
      if (oy >= g.oh) continue;
      for (int kx = 0; kx < g.kw; ++kx) {
        const int tx = ix + g.pad - kx;
        if (tx < 0 || tx % g.stride != 0) continue;
        const int ox = tx / g.stride;
        if (ox >= g.ow) continue;
        const int64_t k = (int64_t(ci) * g.kh + ky) * g.kw + kx;
        s += col[k * cols + int64_t(img) * P + int64_t(oy) * g.ow + ox];
      }
    }
    dx[i] = s;
  }
}

// dst[c][img·P + p] = src[img][c][p]
__global__ void nchw_to_cnp_kernel(int nb, int c, int64_t P, const float* __restrict__ src, float* __restrict__ dst) {
  const int64_t total = int64_t(nb) * c * P;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % P, ch = (i / P) % c, img = i / (P * c);
    dst[ch * (nb * P) + img * P + p] = src[i];
  }
}

// dst[img][c][p] = src[c][img·P + p] (+ b[c])
__global__ void cnp_to_nchw_kernel(int nb, int c, int64_t P, const float* __restrict__ src, const float* __restrict__ b,
                                   float* __restrict__ dst) {
  const int64_t total = int64_t(nb) * c * P;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % P, ch = (i / P) % c, img = i / (P * c);
    const float v = src[ch * (nb * P) + img * P + p];
    dst[i] = b ? v + b[ch] : v;
  }
}

__global__ void bias_add_nchw_kernel(int64_t total, int c, int64_t P, const float* __restrict__ b, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[(i / P) % c];
}

// One block per channel: db[c] = Σ_img Σ_p dy[img][c][p], accumulated in double in a fixed order (the
// result does not depend on scheduling).
__global__ void bias_grad_nchw_kernel(int n, int c, int64_t P, const float* __restrict__ dy, float* __restrict__ db) {
  const int ch = blockIdx.x;
  double s = 0.0;
  const int64_t count = int64_t(n) * P;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const int64_t img = j / P, p = j % P;
    s += double(dy[(img * c + ch) * P + p]);
  }
  __shared__ double part[kThreads];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off >>= 1) {
    if (int(threadIdx.x) < off) part[threadIdx.x] += part[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[ch] = float(part[0]);
}

void check_shape(const Conv2dShape& s, const char* op) {
  SPARROW_CHECK(s.n > 0 && s.cin > 0 && s.h > 0 && s.w > 0 && s.cout > 0 && s.kh > 0 && s.kw > 0 && s.stride > 0 &&
                    s.pad >= 0 && s.oh() > 0 && s.ow() > 0,
                op, ": invalid shape n=", s.n, " cin=", s.cin, " h=", s.h, " w=", s.w, " cout=", s.cout, " k=", s.kh,
                "x", s.kw, " stride=", s.stride, " pad=", s.pad);
}

int chunk_images(const Conv2dShape& s) {
  const int64_t per_image = int64_t(s.cin) * s.kh * s.kw * s.oh() * s.ow() * int64_t(sizeof(float));
  return int(std::max<int64_t>(1, std::min<int64_t>(s.n, kColBudget / std::max<int64_t>(per_image, 1))));
}

}  // namespace

void conv2d_bias_add_cuda(const Conv2dShape& s, const float* b, float* y) {
  const int64_t P = int64_t(s.oh()) * s.ow(), total = int64_t(s.n) * s.cout * P;
  if (total == 0) return;
  bias_add_nchw_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(total, s.cout, P, b, y);
  SPARROW_CUDA_LAUNCH_CHECK("bias_add_nchw_kernel");
}

void conv2d_bias_grad_cuda(const Conv2dShape& s, const float* dy, float* db) {
  const int64_t P = int64_t(s.oh()) * s.ow();
  bias_grad_nchw_kernel<<<s.cout, kThreads, 0, stream()>>>(s.n, s.cout, P, dy, db);
  SPARROW_CUDA_LAUNCH_CHECK("bias_grad_nchw_kernel");
}

void conv2d_forward_im2col_cuda(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  check_shape(s, "conv2d_forward_im2col_cuda");
  const Geo g = geo_of(s);
  const int K = s.cin * s.kh * s.kw;
  const int64_t P = int64_t(g.oh) * g.ow;
  const int nb_max = chunk_images(s);
  DeviceScratch col(size_t(K) * nb_max * P * sizeof(float)), yt(size_t(s.cout) * nb_max * P * sizeof(float));
  for (int img0 = 0; img0 < s.n; img0 += nb_max) {
    const int nb = std::min(nb_max, s.n - img0);
    const int64_t cols = nb * P;
    im2col_kernel<<<blocks_for(K * cols), kThreads, 0, stream()>>>(g, nb, x + int64_t(img0) * s.cin * s.h * s.w, col.p);
    SPARROW_CUDA_LAUNCH_CHECK("im2col_kernel");
    gemm_cuda(false, false, s.cout, int(cols), K, 1.0f, w, K, col.p, int(cols), 0.0f, yt.p, int(cols));
    cnp_to_nchw_kernel<<<blocks_for(s.cout * cols), kThreads, 0, stream()>>>(nb, s.cout, P, yt.p, b,
                                                                             y + int64_t(img0) * s.cout * P);
    SPARROW_CUDA_LAUNCH_CHECK("cnp_to_nchw_kernel");
  }
}

void conv2d_backward_input_im2col_cuda(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  check_shape(s, "conv2d_backward_input_im2col_cuda");
  const Geo g = geo_of(s);
  const int K = s.cin * s.kh * s.kw;
  const int64_t P = int64_t(g.oh) * g.ow;
  const int nb_max = chunk_images(s);
  DeviceScratch col(size_t(K) * nb_max * P * sizeof(float)), dyt(size_t(s.cout) * nb_max * P * sizeof(float));
  for (int img0 = 0; img0 < s.n; img0 += nb_max) {
    const int nb = std::min(nb_max, s.n - img0);
    const int64_t cols = nb * P;
    nchw_to_cnp_kernel<<<blocks_for(s.cout * cols), kThreads, 0, stream()>>>(nb, s.cout, P,
                                                                             dy + int64_t(img0) * s.cout * P, dyt.p);
    SPARROW_CUDA_LAUNCH_CHECK("nchw_to_cnp_kernel");
    gemm_cuda(true, false, K, int(cols), s.cout, 1.0f, w, K, dyt.p, int(cols), 0.0f, col.p, int(cols));
    const int64_t xs = int64_t(nb) * s.cin * s.h * s.w;
    col2im_kernel<<<blocks_for(xs), kThreads, 0, stream()>>>(g, nb, col.p, dx + int64_t(img0) * s.cin * s.h * s.w);
    SPARROW_CUDA_LAUNCH_CHECK("col2im_kernel");
  }
}

void conv2d_backward_weight_im2col_cuda(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* db) {
  check_shape(s, "conv2d_backward_weight_im2col_cuda");
  const Geo g = geo_of(s);
  const int K = s.cin * s.kh * s.kw;
  const int64_t P = int64_t(g.oh) * g.ow;
  const int nb_max = chunk_images(s);
  DeviceScratch col(size_t(K) * nb_max * P * sizeof(float)), dyt(size_t(s.cout) * nb_max * P * sizeof(float));
  for (int img0 = 0; img0 < s.n; img0 += nb_max) {
    const int nb = std::min(nb_max, s.n - img0);
    const int64_t cols = nb * P;
    im2col_kernel<<<blocks_for(K * cols), kThreads, 0, stream()>>>(g, nb, x + int64_t(img0) * s.cin * s.h * s.w, col.p);
    SPARROW_CUDA_LAUNCH_CHECK("im2col_kernel");
    nchw_to_cnp_kernel<<<blocks_for(s.cout * cols), kThreads, 0, stream()>>>(nb, s.cout, P,
                                                                             dy + int64_t(img0) * s.cout * P, dyt.p);
    SPARROW_CUDA_LAUNCH_CHECK("nchw_to_cnp_kernel");
    // dw (Cout×K) = dyt (Cout × cols) · colᵀ (cols × K), accumulated over chunks.
    gemm_cuda(false, true, s.cout, K, int(cols), 1.0f, dyt.p, int(cols), col.p, int(cols), img0 == 0 ? 0.0f : 1.0f,
              dw, K);
  }
  if (db) conv2d_bias_grad_cuda(s, dy, db);
}

}  // namespace sparrow
