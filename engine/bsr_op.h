// Block-sparse (BSR) training ops: a fixed-pattern weight whose pattern, over the GEMM view (rows = outputs,
// columns = inputs, or (cin, kh, kw) flattened for a conv), is made of whole b×b tiles runs through the BSR
// kernels of kernels/sparse/bsr.h. The trainable values stay in the SparseWeight's flat-pattern order.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/autograd.h"
#include "kernels/sparse/bsr.h"

namespace sparrow {

struct SparseWeight;  // engine/sparse.h

// The largest b in {32, 16, 8} such that every b×b tile of the GEMM view (edge tiles clipped to the matrix)
// is either fully in the pattern or not at all; 0 when none is, and for an empty pattern. O(nnz) per b.
int detect_block(const SparseWeight& w);

// The BSR pattern of a block-structured SparseWeight plus, for each flat-pattern entry i, its offset in the
// BSR value array (slot[i]): values reach BSR order by a scatter and gradients come back by a gather, O(nnz).
// Entries of kept edge blocks that lie outside the matrix (padding) have no flat entry: they stay zero.
// `compact` is the same pattern over only the block columns that hold a kept block (renumbered in order,
// same blocks in the same order, so the same value array): bsr_conv2d unfolds just those input columns
// (at 90% block sparsity 20-65% of a VGG layer's columns meet no kept block and would be copied for nothing).
struct BsrLayout {
  BsrPattern pattern;
  std::vector<int64_t> slot;       // nnz
  BsrPattern compact;              // out × (used block columns' width)
  std::vector<int32_t> used_cols;  // compact block column j is block column used_cols[j] of `pattern`
};
// Throws unless the pattern is block-structured with this block (detect_block(w) would accept it).
std::shared_ptr<const BsrLayout> bsr_layout_from_sparse(const SparseWeight& w, int block);

// y (Rows×Out) = x (Rows×In) · Wᵀ + bias, W given by values [nnz] (float, flat-pattern order) and the layout;
// bias [Out] or undefined. Backward: dx, dvalues (only the kept entries, flat order), dbias.
Tensor bsr_linear(const Tensor& x, const Tensor& values, const std::shared_ptr<const BsrLayout>& layout,
                  const Tensor& bias);

// Convolution through the GEMM view: x N×Cin×H×W, the layout over Cout × (Cin·kh·kw), y N×Cout×OH×OW.
// Each chunk of images is unfolded into a row-major Rows×K' matrix (Rows = images·OH·OW, one row per output
// pixel: "im2row"; K' = the used columns of the compact pattern), multiplied by the BSR kernels and folded
// back. Backward recomputes the unfolding (the forward keeps no row matrix) and sums the block SDDMM over
// chunks.
struct BsrConvGeometry {
  int kh, kw, stride, pad;
};
Tensor bsr_conv2d(const Tensor& x, const Tensor& values, const std::shared_ptr<const BsrLayout>& layout,
                  const Tensor& bias, const BsrConvGeometry& g);

// Images per chunk are chosen so that one chunk's row matrices (Rows·K' unfolded inputs + Rows·Cout outputs)
// hold at most this many floats (default 8M = 32 MiB; always at least one image). For tests and tuning.
void set_bsr_conv_chunk_floats(int64_t floats);
int64_t bsr_conv_chunk_floats();

// Auto mode (SparseKernelMode::Auto) runs block-structured layers through the BSR kernels at density <= this
// (default 0.6: the K4 GEMM benchmark measured BSR beating OpenBLAS up to ~0.84 density single-threaded;
// the margin covers the unfolding and value reordering the ops add).
double bsr_kernel_crossover();
void set_bsr_kernel_crossover(double density);

}  // namespace sparrow
