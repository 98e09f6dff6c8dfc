// EPSD step 1's loss: L_SD(θ; k) on pruning batch k for the chosen self-distillation method, as the
// closure the meta-gradient criterion differentiates (compress/criteria.h LossFn).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "apps/common/data.h"
#include "compress/distill.h"

namespace sparrow {

// L_SD(θ; k) on pruning batch k, a pure function of the parameters for a given k (the meta-gradient calls
// it several times per k: the step, then the HVPs at θ_k ± εv). DLB follows its own rule inside step 1:
// batch 0 is CE only; batch k distils from the detached view-0 logits batch k−1 produced at θ_{k−1}, cached
// on the first call for k−1.
class SdLossClosure {
 public:
  SdLossClosure(Module& model, const std::vector<Batch>& batches, std::string sd, bool kl_only, Device device)
      : model_(model), batches_(batches), sd_(std::move(sd)), kl_only_(kl_only), device_(device) {
    const auto ps = model.parameters();
    dtype_ = ps.empty() ? DType::F32 : ps[0].dtype();  // double-precision models get double inputs
  }

  Tensor operator()(int k) {
    SPARROW_CHECK(k >= 0 && k < int(batches_.size()), "pruning batch ", k, " out of ", batches_.size());
    const Batch& b = batches_[size_t(k)];
    Tensor x = input(b, b.x), y = labels_tensor(b.y, device_);
    if (sd_ == "dlb") {
      const int64_t n = b.n;
      Tensor logits, loss;
      if (k == 0 || !prev_logits_.count(k - 1)) {
        logits = model_.forward(x);
        loss = kl_only_ ? scale(sum(logits), 0.0) : cross_entropy(logits, y);
      } else {
        const Batch& p = batches_[size_t(k - 1)];
        Tensor all = model_.forward(cat_rows({x, input(p, p.x2)}));
        Tensor kl = kd_loss(slice_rows(all, n, n + p.n), prev_logits_.at(k - 1), {dlb_.T, 1.0, 0.0, LogitNorm::none});
        kl = scale(kl, dlb_.alpha);
        loss = kl_only_ ? kl : add(cross_entropy(all, cat_rows({y, labels_tensor(p.y, device_)})), kl);
        logits = slice_rows(all, 0, n);
      }
      if (!prev_logits_.count(k)) prev_logits_[k] = logits.detach().clone();
      return loss;
    }
    if (sd_ == "cskd") {
      Tensor logits = model_.forward(x);
      Tensor zp;
      {
        NoGradGuard ng;
        zp = model_.forward(input(b, b.x_pair));
      }
      Tensor kl = scale(kd_loss(logits, zp, {cskd_.T, 1.0, 0.0, LogitNorm::none}), cskd_.lambda);
      return kl_only_ ? kl : add(cross_entropy(logits, y), kl);
    }
    // PS-KD at initialisation has a one-hot table, so its target is the label: the SD loss is CE.
    // "none" is CE by definition.
    return cross_entropy(model_.forward(x), y);
  }

 private:
  Tensor input(const Batch& b, const std::vector<float>& view) const {
    Tensor t = images_tensor(b, view, Device::CPU);
    if (dtype_ != DType::F32) t = t.to(dtype_);
    return device_ == Device::CPU ? t : t.to(device_);
  }
  DType dtype_ = DType::F32;
  struct {
    double T = 3.0, alpha = 1.0;
  } dlb_;
  struct {
    double T = 4.0, lambda = 1.0;
  } cskd_;
  Module& model_;
  const std::vector<Batch>& batches_;
  std::string sd_;
  bool kl_only_;
  Device device_;
  std::map<int, Tensor> prev_logits_;
};

}  // namespace sparrow
