// kd_loss: one fused kernel call computes the loss and ∂L/∂z_s; backward scales the saved gradient.
#include "compress/distill.h"

#include "engine/base/nvtx.h"

namespace sparrow {

Tensor kd_loss(const Tensor& zs, const Tensor& zt, const KlParams& p, const Tensor& labels) {
  SPARROW_NVTX_RANGE("kd_loss");
  check_float(zs, "kd_loss", "student logits");
  check_same_device(zs, zt, "kd_loss");
  SPARROW_CHECK(zs.dim() == 2 && zs.shape() == zt.shape(), "kd_loss: student ", zs.shape_str(), " and teacher ",
                zt.shape_str(), " logits must both be B×C");
  SPARROW_CHECK(p.T > 0, "kd_loss: temperature must be positive, got ", p.T);
  SPARROW_CHECK(p.alpha >= 0 && p.alpha <= 1 && p.beta >= 0 && p.beta <= 1, "kd_loss: alpha ", p.alpha,
                " and beta ", p.beta, " must be in [0, 1]");
  if (labels.defined())
    SPARROW_CHECK(labels.dtype() == DType::I64 && labels.numel() == zs.size(0), "kd_loss: labels must be I64 of ",
                  zs.size(0), " entries, got ", labels.shape_str());
  const int rows = int(zs.size(0)), cols = int(zs.size(1));
  SPARROW_CHECK(rows > 0 && cols >= 2, "kd_loss: needs at least one row and two classes, got ", zs.shape_str());
  const bool want = grad_enabled() && needs_grad(zs);
  Tensor dzs = want ? Tensor::empty(zs.shape(), zs.dtype(), zs.device()) : Tensor();
  double loss = 0;
  if (zs.device() == Device::CUDA) {
#if SPARROW_HAS_CUDA
    Tensor rl = Tensor::empty({rows}, DType::F32, Device::CUDA);
    distill_kl_cuda(rows, cols, zs.data<float>(), zt.data<float>(),
                    labels.defined() ? labels.data<int64_t>() : nullptr, p, want ? dzs.data<float>() : nullptr,
                    rl.data<float>());
    for (float v : rl.to_vector<float>()) loss += v;
    loss /= rows;
#endif
  } else if (zs.dtype() == DType::F64) {
    loss = distill_kl_cpu<double>(rows, cols, zs.data<double>(), zt.data<double>(),
                                  labels.defined() ? labels.data<int64_t>() : nullptr, p,
                                  want ? dzs.data<double>() : nullptr, nullptr, nullptr);
  } else {
    loss = distill_kl_cpu<float>(rows, cols, zs.data<float>(), zt.data<float>(),
                                 labels.defined() ? labels.data<int64_t>() : nullptr, p,
                                 want ? dzs.data<float>() : nullptr, nullptr, nullptr);
  }
  Tensor out = Tensor::full({}, loss, zs.dtype(), zs.device());
  return record(out, "kd_loss", {zs}, [dzs](const Tensor& g, const std::vector<bool>&) {
    NoGradGuard ng;
    return std::vector<Tensor>{scale(dzs, g.item())};
  });
}

Tensor soft_cross_entropy(const Tensor& logits, const Tensor& target) {
  SPARROW_CHECK(logits.shape() == target.shape() && logits.dim() == 2, "soft_cross_entropy: logits ",
                logits.shape_str(), " and target ", target.shape_str(), " must both be B×C");
  return scale(sum(mul(log_softmax(logits), target.detach())), -1.0 / double(logits.size(0)));
}

}  // namespace sparrow
