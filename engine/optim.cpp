// SGD exactly as torch.optim.SGD (with masks), and the LR schedules. CPU parameters are updated by the
// OpenMP loop below; CUDA parameters all together by one fused kernel launch (kernels/optim).
#include "engine/optim.h"

#include <cmath>
#include <sstream>

#include "engine/ops.h"
#include "engine/base/nvtx.h"
#include "kernels/optim/optim.h"

namespace sparrow {

Sgd::Sgd(std::vector<Tensor> params, SgdConfig cfg) : params_(std::move(params)), cfg_(cfg) {
  SPARROW_CHECK(cfg.lr >= 0, "SGD: negative learning rate ", cfg.lr);
  SPARROW_CHECK(cfg.momentum >= 0, "SGD: negative momentum ", cfg.momentum);
  SPARROW_CHECK(!cfg.nesterov || (cfg.momentum > 0 && cfg.dampening == 0),
                "SGD: Nesterov needs momentum > 0 and zero dampening");
  bufs_.resize(params_.size());
  masks_.resize(params_.size());
  wd_.assign(params_.size(), cfg.weight_decay);
}

int Sgd::index_of(const Tensor& p) const {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].same(p)) return int(i);
  SPARROW_FAIL("SGD: tensor is not one of the optimiser's parameters");
}

void Sgd::set_weight_decay(const Tensor& p, double wd) { wd_[size_t(index_of(p))] = wd; }

void Sgd::set_mask(const Tensor& p, const Tensor& mask) {
  SPARROW_CHECK(mask.shape() == p.shape() && mask.dtype() == p.dtype(), "SGD mask of shape ", mask.shape_str(),
                " for a parameter of shape ", p.shape_str());
  const size_t i = size_t(index_of(p));
  // The mask lives beside its parameter (a mask built on the host for a CUDA parameter is copied over).
  const Tensor m = mask.device() == p.device() ? mask : mask.to(p.device());
  masks_[i] = m;
  // Enforce at once: pruned weights and their momentum are zero from now on.
  Tensor param = p;
  NoGradGuard ng;
  param.copy_(mul(param.detach(), m));
  if (bufs_[i].defined()) {
    if (bufs_[i].device() != p.device()) bufs_[i].move_to_(p.device());
    bufs_[i].copy_(mul(bufs_[i], m));
  }
}


void Sgd::step() {
  SPARROW_NVTX_RANGE("sgd_step");
#if SPARROW_HAS_CUDA
  std::vector<SgdTensor> on_device;  // CUDA parameters, updated together after the loop
#endif
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i];
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (p.device() == Device::CUDA) {
#if SPARROW_HAS_CUDA
      SPARROW_CHECK(p.dtype() == DType::F32 && g.dtype() == DType::F32 && g.device() == Device::CUDA &&
                        g.numel() == p.numel(),
                    "SGD: CUDA parameter ", i, " of shape ", p.shape_str(), " (", dtype_name(p.dtype()),
                    ") has a gradient of shape ", g.shape_str(), " on ", device_name(g.device()), " (",
                    dtype_name(g.dtype()), "); CUDA parameters must be F32 with F32 CUDA gradients");
      const bool first = cfg_.momentum != 0 && !bufs_[i].defined();
      if (first) bufs_[i] = Tensor::empty(p.shape(), p.dtype(), p.device());
      // State restored from a checkpoint may sit on the host: it follows the parameter.
      if (bufs_[i].defined() && bufs_[i].device() != p.device()) bufs_[i].move_to_(p.device());
      if (masks_[i].defined() && masks_[i].device() != p.device()) masks_[i] = masks_[i].to(p.device());
      const bool use_buf = cfg_.momentum != 0;
      on_device.push_back(SgdTensor{p.data<float>(), g.data<float>(), use_buf ? bufs_[i].data<float>() : nullptr,
                                    masks_[i].defined() ? masks_[i].data<float>() : nullptr, p.numel(),
                                    float(wd_[i]), first ? 1 : 0});
      continue;
#else
      SPARROW_FAIL("SGD: parameter ", i, " is on CUDA but sparrow was built without CUDA");
#endif
    }
    const bool first = cfg_.momentum != 0 && !bufs_[i].defined();
    if (first) bufs_[i] = Tensor::empty(p.shape(), p.dtype(), p.device());
    const bool use_buf = cfg_.momentum != 0;
    const SgdHyper h{cfg_.lr, cfg_.momentum, cfg_.dampening, cfg_.nesterov};
    if (p.dtype() == DType::F64)
      sgd_update_cpu<double>(p.numel(), p.data<double>(), g.data<double>(), use_buf ? bufs_[i].data<double>() : nullptr,
                             masks_[i].defined() ? masks_[i].data<double>() : nullptr, first, h, wd_[i]);
    else
      sgd_update_cpu<float>(p.numel(), p.data<float>(), g.data<float>(), use_buf ? bufs_[i].data<float>() : nullptr,
                            masks_[i].defined() ? masks_[i].data<float>() : nullptr, first, h, wd_[i]);
  }
#if SPARROW_HAS_CUDA
  if (!on_device.empty())
    sgd_update_multi_cuda(on_device.data(), int(on_device.size()),
                          SgdHyper{cfg_.lr, cfg_.momentum, cfg_.dampening, cfg_.nesterov});
#endif
}

void Sgd::zero_grad() {
  for (auto& p : params_) p.impl().grad = nullptr;
}

double LrSchedule::lr_at(int epoch) const {
  switch (kind) {
    case Constant: return base_lr;
    case MultiStep: {
      double lr = base_lr;
      for (int m : milestones)
        if (epoch >= m) lr *= gamma;
      return lr;
    }
    case Cosine: {
      const double t = std::min(epoch, total_epochs);
      return eta_min + (base_lr - eta_min) * (1 + std::cos(M_PI * t / double(total_epochs))) / 2;
    }
  }
  return base_lr;
}

LrSchedule parse_schedule(const std::string& spec, double base_lr, int total_epochs, double gamma) {
  LrSchedule s;
  s.base_lr = base_lr;
  s.total_epochs = std::max(1, total_epochs);
  s.gamma = gamma;
  if (spec == "constant" || spec.empty()) return s;
  if (spec == "cosine") {
    s.kind = LrSchedule::Cosine;
    return s;
  }
  if (spec.rfind("multistep:", 0) == 0) {
    s.kind = LrSchedule::MultiStep;
    std::stringstream ss(spec.substr(10));
    std::string item;
    while (std::getline(ss, item, ',')) {
      try {
        size_t used = 0;
        int m = std::stoi(item, &used);
        SPARROW_CHECK(used == item.size() && m >= 0, "");
        s.milestones.push_back(m);
      } catch (...) {
        SPARROW_FAIL("--schedule: bad milestone '", item, "' in '", spec, "' (expected multistep:E1,E2,...)");
      }
    }
    SPARROW_CHECK(!s.milestones.empty(), "--schedule: no milestones in '", spec, "'");
    return s;
  }
  SPARROW_FAIL("--schedule: unknown schedule '", spec, "' (expected constant, cosine or multistep:E1,E2,...)");
}

}  // namespace sparrow
