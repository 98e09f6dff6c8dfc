// Prunable-weight discovery, model snapshots, loss gradients and in-place dtype conversion.
#include "compress/prunable.h"

namespace sparrow {

std::vector<PrunableParam> prunable_params(Module& model, const PrunableSpec& spec) {
  std::vector<PrunableParam> all;
  for (auto& [name, m] : model.named_modules()) {
    const bool conv = dynamic_cast<Conv2d*>(m) != nullptr, lin = dynamic_cast<Linear*>(m) != nullptr;
    if (conv || lin) all.push_back({name.empty() ? "weight" : name + ".weight", static_cast<WeightLayer*>(m), conv});
  }
  int first_conv = -1, last_linear = -1;
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].is_conv && first_conv < 0) first_conv = int(i);
    if (!all[i].is_conv) last_linear = int(i);
  }
  std::vector<PrunableParam> out;
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].is_conv ? !spec.conv : !spec.linear) continue;
    if (spec.skip_first_conv && int(i) == first_conv) continue;
    if (spec.skip_classifier && int(i) == last_linear) continue;
    out.push_back(all[i]);
  }
  return out;
}

ModelSnapshot::ModelSnapshot(const Module& model) {
  for (const auto& list : {model.named_parameters(), model.named_buffers()})
    for (const auto& [name, t] : list) saved_.emplace_back(t, t.clone());
}

void ModelSnapshot::restore() const {
  NoGradGuard ng;
  for (const auto& [live, copy] : saved_) Tensor(live).copy_(copy);
}

std::vector<Tensor> loss_gradients(Module& model, const LossFn& loss, int index, const std::vector<Tensor>& wrt) {
  model.zero_grad();
  for (const Tensor& p : wrt) p.impl().grad = nullptr;
  Tensor l = loss(index);
  SPARROW_CHECK(l.defined() && l.numel() == 1, "loss closure returned ", l.defined() ? l.shape_str() : "nothing",
                " for index ", index, " (expected a scalar)");
  l.backward();
  std::vector<Tensor> out;
  for (const Tensor& p : wrt) {
    Tensor g = p.grad();
    out.push_back(g.defined() ? g.clone() : Tensor::zeros(p.shape(), p.dtype()));
    p.impl().grad = nullptr;
  }
  model.zero_grad();
  return out;
}

void convert_module_dtype(Module& model, DType dtype) {
  for (const auto& list : {model.named_parameters(), model.named_buffers()})
    for (const auto& [name, t] : list) {
      if ((t.dtype() != DType::F32 && t.dtype() != DType::F64) || t.dtype() == dtype) continue;
      SPARROW_CHECK(t.device() == Device::CPU, "convert_module_dtype: '", name, "' is not on the CPU");
      Tensor c = t.to(dtype);
      TensorImpl& impl = t.impl();
      impl.storage = c.impl().storage;
      impl.offset = c.impl().offset;
      impl.dtype = dtype;
      impl.grad = nullptr;
    }
}

}  // namespace sparrow
