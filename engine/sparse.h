// Fixed-pattern sparse weights (DESIGN.md rule 5): a value vector over a sorted list of flat row-major
// indices into the dense weight (Cout×Cin×Kh×Kw or Out×In), i.e. per output row the kept (ci, kh, kw) in
// ascending order — the layout the sparse kernels read. Scatter/gather are the autograd bridge to dense.
#pragma once
#include <memory>
#include <string>

#include "engine/autograd.h"
#include "engine/tensor.h"

namespace sparrow {

struct SparseWeight {
  Shape dense_shape;  // the weight's dense shape; dim 0 is the output row
  Tensor pattern;     // I64 [nnz], strictly ascending flat indices into the dense weight
  Tensor values;      // [nnz], the dense weight's dtype: the trainable parameter

  int64_t nnz() const { return pattern.numel(); }
  int64_t dense_numel() const { return shape_numel(dense_shape); }
  double density() const { return dense_numel() ? double(nnz()) / double(dense_numel()) : 0.0; }
  Tensor to_dense() const;  // values scattered into zeros, no autograd
  Tensor mask() const;      // 1 at the pattern, 0 elsewhere, values' dtype
  // CSR row offsets (I64 [rows+1]): row r's entries are pattern[off[r] .. off[r+1]).
  Tensor row_offsets() const;
};

// Pattern = the nonzero entries of `mask` (same shape as w); values gathered from w (a fresh leaf).
std::shared_ptr<SparseWeight> sparse_from_dense(const Tensor& w, const Tensor& mask);

// Dense tensor of `dense_shape` holding values at pattern and zero elsewhere. Backward: dL/dvalues =
// dL/ddense gathered at the pattern (writes a fresh tensor).
Tensor scatter_to_dense(const Tensor& values, const Tensor& pattern, const Shape& dense_shape);
// dense.flatten()[pattern]. Backward scatters into zeros of dense's shape.
Tensor gather_at(const Tensor& dense, const Tensor& pattern);

}  // namespace sparrow



namespace sparrow {

// Which kernels fixed-pattern conv layers use (--sparse-kernels): Auto picks the direct sparse kernel when
// the layer's density is at most sparse_kernel_crossover(cin, k, stride), On always uses it, Off always
// runs the masked-dense reference (scatter the values, dense conv).
enum class SparseKernelMode { Auto, On, Off };
void set_sparse_kernel_mode(SparseKernelMode mode);
SparseKernelMode sparse_kernel_mode();
SparseKernelMode parse_sparse_kernel_mode(const std::string& s);  // "auto" | "on" | "off"
// The crossover density of a cin-input k×k conv layer of that stride on maps `width` wide (0: not known),
// as measured by sparrow-bench-sparse-conv: 0.35 in general (below it sparse beats our dense path in every
// ResNet-20 / VGG-11 layer and pass), higher for 3×3 stride-1 layers with few inputs per output (cin·9 ≤
// 160: the dense GEMM is small in its reduction dimension and runs far from the BLAS peak) and on maps 8 or
// 16 wide (the batch-minor strip kernels); table in sparse.cpp. set_sparse_kernel_crossover(d) makes it d
// for every layer, until clear_sparse_kernel_crossover().
double sparse_kernel_crossover(int cin, int k, int stride, int width = 0);
void set_sparse_kernel_crossover(double density);
void clear_sparse_kernel_crossover();

}  // namespace sparrow
