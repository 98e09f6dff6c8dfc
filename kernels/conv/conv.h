// 2-D convolution on raw pointers. Layouts: x N×Cin×H×W, w Cout×Cin×Kh×Kw, y N×Cout×OH×OW (NCHW,
// row-major). *_ref_cpu are plain loops (the oracle); *_cpu are im2col + GEMM with OpenMP over images.
#pragma once
#include <cstdint>

#include "kernels/common/hd.h"

namespace sparrow {

struct Conv2dShape {
  int n, cin, h, w;      // input
  int cout, kh, kw;      // filter
  int stride, pad;       // same for both spatial dims
  SPARROW_HD int oh() const { return (h + 2 * pad - kh) / stride + 1; }
  SPARROW_HD int ow() const { return (w + 2 * pad - kw) / stride + 1; }
  int64_t x_size() const { return int64_t(n) * cin * h * w; }
  int64_t w_size() const { return int64_t(cout) * cin * kh * kw; }
  int64_t y_size() const { return int64_t(n) * cout * oh() * ow(); }
};

// Input coordinate of output pixel (oy, ox) under filter tap (ky, kx); may be out of range (padding).
SPARROW_HD int conv_in_y(const Conv2dShape& s, int oy, int ky) { return oy * s.stride - s.pad + ky; }
SPARROW_HD int conv_in_x(const Conv2dShape& s, int ox, int kx) { return ox * s.stride - s.pad + kx; }

// y = conv(x, w) + b. b may be null. Writes y.
template <typename T>
void conv2d_forward_ref_cpu(const Conv2dShape& s, const T* x, const T* w, const T* b, T* y);
// dx = conv_transpose(dy, w). Writes dx.
template <typename T>
void conv2d_backward_input_ref_cpu(const Conv2dShape& s, const T* dy, const T* w, T* dx);
// dw = Σ_n dy ⋆ x, db = Σ dy (db may be null). Writes dw and db.
template <typename T>
void conv2d_backward_weight_ref_cpu(const Conv2dShape& s, const T* x, const T* dy, T* dw, T* db);

// Optimised versions, same contracts (write, not accumulate).
template <typename T>
void conv2d_forward_cpu(const Conv2dShape& s, const T* x, const T* w, const T* b, T* y);
template <typename T>
void conv2d_backward_input_cpu(const Conv2dShape& s, const T* dy, const T* w, T* dx);
template <typename T>
void conv2d_backward_weight_cpu(const Conv2dShape& s, const T* x, const T* dy, T* dw, T* db);

// im2col for one image: col is (Cin·Kh·Kw) × (OH·OW); col2im accumulates into x (which it first zeroes).
template <typename T>
void im2col_cpu(const Conv2dShape& s, const T* x_img, T* col);
template <typename T>
void col2im_cpu(const Conv2dShape& s, const T* col, T* x_img);

}  // namespace sparrow

#if SPARROW_HAS_CUDA
namespace sparrow {
// Device pointers, float, on the compute stream; same contracts as the CPU versions (write, not
// accumulate). With cuDNN in the build: cuDNN, the algorithm for each (shape, direction) found once by
// timing (cudnnFind*Ex) and cached, workspace from the stream-ordered pool, FP32 math (FMA kernels only;
// TF32 with SPARROW_TF32=1). Without cuDNN, or with SPARROW_CONV=im2col, or for a shape cuDNN has no
// FP32 algorithm for: im2col + cuBLAS.
void conv2d_forward_cuda(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
void conv2d_backward_input_cuda(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void conv2d_backward_weight_cuda(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* db);
// "cudnn" or "im2col": the path the three functions above take by default.
const char* conv2d_cuda_backend();

// The im2col + cuBLAS path on its own (images in chunks so the column buffer stays ≤ 256 MiB).
void conv2d_forward_im2col_cuda(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
void conv2d_backward_input_im2col_cuda(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void conv2d_backward_weight_im2col_cuda(const Conv2dShape& s, const float* x, const float* dy, float* dw,
                                        float* db);

// Per-channel bias on N×Cout×OH×OW: y += b[c]; db[c] = Σ over images and pixels of dy (written).
void conv2d_bias_add_cuda(const Conv2dShape& s, const float* b, float* y);
void conv2d_bias_grad_cuda(const Conv2dShape& s, const float* dy, float* db);
}  // namespace sparrow
#endif
