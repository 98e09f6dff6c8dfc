// Tensor-level ops: validate shapes, allocate outputs, call the kernel for the tensor's device, and
// record the backward closure. Images are NCHW, matrices row-major. A missing CUDA path is a clear error.
#pragma once
#include <cstdint>

#include "engine/autograd.h"
#include "engine/base/rng.h"
#include "engine/tensor.h"
#include "kernels/common/moments.h"

namespace sparrow {

// Elementwise (same shapes).
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, double s);
Tensor relu(const Tensor& x);
Tensor sum(const Tensor& x);   // scalar
Tensor mean(const Tensor& x);  // scalar

// Shape.
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor flatten(const Tensor& x);                               // N×(rest)
Tensor slice_rows(const Tensor& x, int64_t begin, int64_t end);  // rows of dim 0, with gradient
Tensor cat_rows(const std::vector<Tensor>& xs);                 // concatenation along dim 0

// Layers.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, int stride, int pad);  // b may be undefined
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b);                       // x·wᵀ + b
// x: N×C×H×W or N×C. running_* updated in place in training mode (momentum as PyTorch).
Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum, double eps);
// relu(batch_norm(x) + residual) in one op (residual may be undefined: relu(batch_norm(x))). On the CPU a
// fused kernel: forward reads/writes 3 activation-sized tensors (4 with the residual; 2 and 3 with moments)
// where the separate ops make 5 (8); backward 5 (7) where they make 8. On CUDA the composition of the three
// ops. Same arguments as batch_norm.
// moments (optional, CPU training only): x's per-channel moments from the op that produced x
// (sparse_conv2d), which replace the statistics pass.
Tensor batch_norm_relu(const Tensor& x, const Tensor& residual, const Tensor& gamma, const Tensor& beta,
                       const Tensor& running_mean, const Tensor& running_var, bool training, double momentum,
                       double eps, const ChannelMoments* moments = nullptr);
Tensor max_pool2d(const Tensor& x, int k, int stride, int pad);
Tensor avg_pool2d(const Tensor& x, int k, int stride, int pad);
Tensor global_avg_pool(const Tensor& x);                 // N×C×H×W -> N×C
Tensor shortcut_a(const Tensor& x, int cout, int stride);  // CIFAR option A
Tensor dropout(const Tensor& x, double p, bool training, Rng& rng);

// Rows of a 2-D tensor.
Tensor softmax(const Tensor& x);
Tensor log_softmax(const Tensor& x);
// Mean cross-entropy of logits (B×C) against I64 labels (B), fused softmax + NLL.
Tensor cross_entropy(const Tensor& logits, const Tensor& labels);

// Not differentiable helpers.
int64_t count_correct(const Tensor& logits, const Tensor& labels);  // argmax == label

}  // namespace sparrow
