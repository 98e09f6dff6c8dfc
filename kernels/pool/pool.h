// Pooling over NCHW. Max pool remembers the argmax (flat index into the input plane) for backward.
#pragma once
#include <cstdint>

namespace sparrow {

struct Pool2dShape {
  int n, c, h, w;
  int k, stride, pad;
  int oh() const { return (h + 2 * pad - k) / stride + 1; }
  int ow() const { return (w + 2 * pad - k) / stride + 1; }
};

// Writes y (N×C×OH×OW) and argmax (same size, index y*W+x inside the input plane; −1 if window empty).
// k = 2, stride 2, no padding (the VGG pool) takes a branch-free vectorised path; other shapes the reference.
template <typename T>
void max_pool2d_forward_cpu(const Pool2dShape& s, const T* x, T* y, int32_t* argmax);
// The plain per-window loop, any shape: the oracle for the fast path.
template <typename T>
void max_pool2d_forward_ref_cpu(const Pool2dShape& s, const T* x, T* y, int32_t* argmax);
// Writes dx (zeroes it, then scatters dy through argmax).
template <typename T>
void max_pool2d_backward_cpu(const Pool2dShape& s, const T* dy, const int32_t* argmax, T* dx);
// Average pool, padding counted in the divisor (PyTorch's count_include_pad=True). Writes y / dx.
template <typename T>
void avg_pool2d_forward_cpu(const Pool2dShape& s, const T* x, T* y);
template <typename T>
void avg_pool2d_backward_cpu(const Pool2dShape& s, const T* dy, T* dx);
// Global average pool: x N×C×HW -> y N×C. Writes.
template <typename T>
void global_avg_pool_forward_cpu(int n, int c, int hw, const T* x, T* y);
template <typename T>
void global_avg_pool_backward_cpu(int n, int c, int hw, const T* dy, T* dx);

}  // namespace sparrow

#if SPARROW_HAS_CUDA
namespace sparrow {
// Device pointers, float, on the compute stream; same contracts and tie/NaN rules as the CPU versions.
// Backward passes gather (each input element sums the windows that reach it, in output order), so they
// need no atomics and add in the CPU scatter's order.
void max_pool2d_forward_cuda(const Pool2dShape& s, const float* x, float* y, int32_t* argmax);
void max_pool2d_backward_cuda(const Pool2dShape& s, const float* dy, const int32_t* argmax, float* dx);
void avg_pool2d_forward_cuda(const Pool2dShape& s, const float* x, float* y);
void avg_pool2d_backward_cuda(const Pool2dShape& s, const float* dy, float* dx);
void global_avg_pool_forward_cuda(int n, int c, int hw, const float* x, float* y);
void global_avg_pool_backward_cuda(int n, int c, int hw, const float* dy, float* dx);
}  // namespace sparrow
#endif
