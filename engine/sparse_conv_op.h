// sparse_conv2d: convolution with a fixed-pattern weight (values + a SparseConvPattern built once per
// layer) through the direct sparse kernels of kernels/sparse; backward gives dx and dvalues (the weight
// gradient only at kept positions), so all three passes cost in proportion to the kept weights.
#pragma once
#include <memory>

#include "engine/autograd.h"
#include "kernels/sparse/sparse_conv.h"

namespace sparrow {

// x N×Cin×H×W; values [nnz] in the pattern's order; bias [Cout] or undefined. The pattern fixes stride/pad.
// moments (optional) receives the output's per-channel moments, for a training batch norm after it.
Tensor sparse_conv2d(const Tensor& x, const Tensor& values, const std::shared_ptr<const SparseConvPattern>& pattern,
                     const Tensor& bias, ChannelMoments* moments = nullptr);

}  // namespace sparrow
