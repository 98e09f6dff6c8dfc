// Elementwise ops on flat arrays of length n, plus the CIFAR option-A shortcut.
// CPU versions are OpenMP-parallel loops; the _cuda versions take device pointers.
#pragma once
#include <cstdint>

namespace sparrow {

template <typename T> void fill_cpu(int64_t n, T value, T* y);
template <typename T> void relu_forward_cpu(int64_t n, const T* x, T* y);
// dx = dy where y > 0 else 0 (y is the relu output). Writes dx.
template <typename T> void relu_backward_cpu(int64_t n, const T* y, const T* dy, T* dx);
template <typename T> void add_cpu(int64_t n, const T* a, const T* b, T* y);
template <typename T> void mul_cpu(int64_t n, const T* a, const T* b, T* y);
// y = alpha·x + y
template <typename T> void axpy_cpu(int64_t n, T alpha, const T* x, T* y);
template <typename T> void scale_cpu(int64_t n, T alpha, const T* x, T* y);

// Option-A shortcut: x N×Cin×H×W -> y N×Cout×OH×OW with OH = ceil(H/stride): spatial subsample
// x[:, :, ::stride, ::stride], then channels padded with zeros (Cout > Cin: pad_front = (Cout−Cin)/2 in
// front, the rest behind, PyTorch F.pad convention) or cropped (Cout < Cin: keep channels
// [crop_front, crop_front + Cout) with crop_front = (Cin−Cout)/2). Writes y.
template <typename T>
void shortcut_a_forward_cpu(int n, int cin, int h, int w, int cout, int stride, const T* x, T* y);
// Adjoint of the above. Writes dx.
template <typename T>
void shortcut_a_backward_cpu(int n, int cin, int h, int w, int cout, int stride, const T* dy, T* dx);

#if SPARROW_HAS_CUDA
// Device pointers, float only; launched on the current compute stream.
void fill_cuda(int64_t n, float value, float* y);
void relu_forward_cuda(int64_t n, const float* x, float* y);
void relu_backward_cuda(int64_t n, const float* y, const float* dy, float* dx);
void add_cuda(int64_t n, const float* a, const float* b, float* y);
void mul_cuda(int64_t n, const float* a, const float* b, float* y);
void axpy_cuda(int64_t n, float alpha, const float* x, float* y);
void scale_cuda(int64_t n, float alpha, const float* x, float* y);
#endif

}  // namespace sparrow

#if SPARROW_HAS_CUDA
namespace sparrow {
// Option-A shortcut on device pointers (float, compute stream); same contracts as the CPU versions.
void shortcut_a_forward_cuda(int n, int cin, int h, int w, int cout, int stride, const float* x, float* y);
void shortcut_a_backward_cuda(int n, int cin, int h, int w, int cout, int stride, const float* dy, float* dx);
// Reductions and device-scalar helpers (compute stream), so no op needs the host to read a scalar:
// *y = Σ x (summed in double in a fixed order; one float written), y[i] = s[0], y[i] = s[0]·x[i].
void sum_cuda(int64_t n, const float* x, float* y);
void fill_from_scalar_cuda(int64_t n, const float* s, float* y);
void scale_by_scalar_cuda(int64_t n, const float* s, const float* x, float* y);
}  // namespace sparrow
#endif
