// The sparse_conv2d op (CPU, float and double).
#include "engine/sparse_conv_op.h"

#include "engine/base/nvtx.h"

namespace sparrow {

Tensor sparse_conv2d(const Tensor& x, const Tensor& values, const std::shared_ptr<const SparseConvPattern>& p,
                     const Tensor& bias, ChannelMoments* moments) {
  SPARROW_NVTX_RANGE("sparse_conv2d_fwd");
  check_float(x, "sparse_conv2d", "x");
  SPARROW_CHECK(p != nullptr, "sparse_conv2d: no pattern");
  SPARROW_CHECK(x.device() == Device::CPU, "sparse_conv2d: CPU only in this build (use --sparse-kernels off on CUDA)");
  SPARROW_CHECK(x.dim() == 4 && x.size(1) == p->cin, "sparse_conv2d: input ", x.shape_str(), " for a pattern of ",
                p->cin, " input channels");
  SPARROW_CHECK(values.numel() == p->nnz && values.dtype() == x.dtype(), "sparse_conv2d: ", values.numel(),
                " values for a pattern of ", p->nnz);
  const Conv2dShape s{int(x.size(0)), p->cin, int(x.size(2)), int(x.size(3)), p->cout, p->kh, p->kw, p->stride, p->pad};
  SPARROW_CHECK(s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw, "sparse_conv2d: input ", x.shape_str(),
                " smaller than the kernel");
  Tensor y = Tensor::empty({s.n, s.cout, s.oh(), s.ow()}, x.dtype());
  const bool f64 = x.dtype() == DType::F64;
  if (f64)
    sparse_conv2d_forward_cpu<double>(s, *p, values.data<double>(), x.data<double>(),
                                      bias.defined() ? bias.data<double>() : nullptr, y.data<double>(), moments);
  else
    sparse_conv2d_forward_cpu<float>(s, *p, values.data<float>(), x.data<float>(),
                                     bias.defined() ? bias.data<float>() : nullptr, y.data<float>(), moments);
  Tensor xd = x.detach(), vd = values.detach();
  const bool has_bias = bias.defined();
  std::vector<Tensor> inputs{x, values};
  if (has_bias) inputs.push_back(bias);
  return record(y, "sparse_conv2d", inputs, [s, p, xd, vd, has_bias, f64](const Tensor& g, const std::vector<bool>& needs) {
    SPARROW_NVTX_RANGE("sparse_conv2d_bwd");
    std::vector<Tensor> out(needs.size());
    if (needs[0]) {
      out[0] = Tensor::empty(xd.shape(), xd.dtype());
      if (f64) sparse_conv2d_backward_input_cpu<double>(s, *p, vd.data<double>(), g.data<double>(), out[0].data<double>());
      else sparse_conv2d_backward_input_cpu<float>(s, *p, vd.data<float>(), g.data<float>(), out[0].data<float>());
    }
    if (needs[1] || (has_bias && needs[2])) {
      Tensor dv = Tensor::empty(vd.shape(), vd.dtype());
      Tensor db = has_bias ? Tensor::empty({s.cout}, vd.dtype()) : Tensor();
      if (f64)
        sparse_conv2d_backward_weight_cpu<double>(s, *p, xd.data<double>(), g.data<double>(), dv.data<double>(),
                                                  has_bias ? db.data<double>() : nullptr);
      else
        sparse_conv2d_backward_weight_cpu<float>(s, *p, xd.data<float>(), g.data<float>(), dv.data<float>(),
                                                 has_bias ? db.data<float>() : nullptr);
      if (needs[1]) out[1] = dv;
      if (has_bias && needs[2]) out[2] = db;
    }
    return out;
  });
}

}  // namespace sparrow
