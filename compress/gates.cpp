// The channel-gate op (CPU float/double, CUDA float; kernels/gate), the gate module, and insertion at PDD's placements.
#include "compress/gates.h"

#include <algorithm>
#include <cmath>

#include "kernels/gate/gate.h"

namespace sparrow {

Tensor channel_gate(const Tensor& x, const Tensor& m) {
  check_float(x, "channel_gate", "x");
  SPARROW_CHECK((x.dim() == 4 || x.dim() == 2) && m.dim() == 1 && m.numel() == x.size(1) && m.dtype() == x.dtype(),
                "channel_gate: gate of shape ", m.shape_str(), " for input ", x.shape_str(),
                " (expected N×C×H×W or N×C and C gates of the same dtype)");
  SPARROW_CHECK(x.device() == m.device(), "channel_gate: input on ", device_name(x.device()), ", gates on ",
                device_name(m.device()));
  const bool cuda = x.device() == Device::CUDA;
  SPARROW_CHECK(!cuda || x.dtype() == DType::F32, "channel_gate: the CUDA path is float32 only, got ",
                dtype_name(x.dtype()));
  const int64_t n = x.size(0), c = x.size(1), hw = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (cuda) {
#if SPARROW_HAS_CUDA
    gate_forward_cuda(n, c, hw, x.data<float>(), m.data<float>(), y.data<float>());
#endif
  } else if (x.dtype() == DType::F64) {
    gate_forward_cpu<double>(n, c, hw, x.data<double>(), m.data<double>(), y.data<double>());
  } else {
    gate_forward_cpu<float>(n, c, hw, x.data<float>(), m.data<float>(), y.data<float>());
  }
  Tensor xd = x.detach(), md = m.detach();
  return record(y, "channel_gate", {x, m}, [xd, md, n, c, hw, cuda](const Tensor& g, const std::vector<bool>& needs) {
    Tensor dx = needs[0] ? Tensor::empty(xd.shape(), xd.dtype(), xd.device()) : Tensor();
    Tensor dm = needs[1] ? Tensor::empty({c}, xd.dtype(), xd.device()) : Tensor();
    if (cuda) {
#if SPARROW_HAS_CUDA
      gate_backward_cuda(n, c, hw, xd.data<float>(), md.data<float>(), g.data<float>(),
                         needs[0] ? dx.data<float>() : nullptr, needs[1] ? dm.data<float>() : nullptr);
#endif
    } else if (xd.dtype() == DType::F64) {
      gate_backward_cpu<double>(n, c, hw, xd.data<double>(), md.data<double>(), g.data<double>(),
                                needs[0] ? dx.data<double>() : nullptr, needs[1] ? dm.data<double>() : nullptr);
    } else {
      gate_backward_cpu<float>(n, c, hw, xd.data<float>(), md.data<float>(), g.data<float>(),
                               needs[0] ? dx.data<float>() : nullptr, needs[1] ? dm.data<float>() : nullptr);
    }
    return std::vector<Tensor>{dx, dm};
  });
}

ChannelGate::ChannelGate(int channels, Rng& rng) {
  SPARROW_CHECK(channels > 0, "ChannelGate: bad channel count ", channels);
  m = register_parameter("m", Tensor::randn({channels}, rng, 0.0, 0.001));
}

std::vector<int64_t> ChannelGate::kept() const {
  std::vector<int64_t> out;
  const std::vector<double> v = m.to_vector<double>();
  for (size_t c = 0; c < v.size(); ++c)
    if (v[c] > 0) out.push_back(int64_t(c));
  return out;
}

std::vector<Tensor> GatedModel::gate_parameters() const {
  std::vector<Tensor> out;
  for (const auto& g : gates) out.push_back(g->m);
  return out;
}

StateDict GatedModel::gate_state_dict() const {
  StateDict sd;
  for (size_t i = 0; i < gates.size(); ++i) sd[names[i] + ".m"] = gates[i]->m;
  return sd;
}

void GatedModel::load_gate_state_dict(const StateDict& sd) {
  for (size_t i = 0; i < gates.size(); ++i) {
    auto it = sd.find(names[i] + ".m");
    SPARROW_CHECK(it != sd.end(), "gate state dict is missing '", names[i], ".m'");
    SPARROW_CHECK(it->second.numel() == gates[i]->m.numel(), "gate '", names[i], "' has ", gates[i]->m.numel(),
                  " channels, the state dict ", it->second.shape_str());
    gates[i]->m.copy_(it->second);
  }
}

GatedModel insert_gates(ModelPtr model, uint64_t seed) {
  SPARROW_CHECK(model, "insert_gates: no model");
  GatedModel gm;
  gm.model = model;
  Rng rng(seed);
  if (auto* r = dynamic_cast<ResNetCifar*>(model.get())) {
    for (size_t k = 0; k < r->block_list.size(); ++k) {
      auto g = std::make_shared<ChannelGate>(r->block_list[k]->cout, rng);
      r->block_list[k]->gate = g;
      gm.gates.push_back(g);
      gm.names.push_back("blocks." + std::to_string(k) + ".gate");
    }
  } else if (auto* v = dynamic_cast<Vgg*>(model.get())) {
    v->gates.assign(v->convs.size(), nullptr);
    for (size_t i = 0; i < v->convs.size(); ++i) {
      auto g = std::make_shared<ChannelGate>(v->convs[i]->cout, rng);
      v->gates[i] = g;
      gm.gates.push_back(g);
      gm.names.push_back("features." + std::to_string(v->relu_layers[i]) + ".gate");
    }
  } else {
    SPARROW_FAIL("channel gates support the CIFAR ResNets (option A) and VGG; model '", model->spec().name,
                 "' is neither");
  }
  // The gates live where the model's weights do (a model moved to CUDA gets CUDA gates).
  const std::vector<Tensor> weights = model->parameters();
  const Device dev = weights.empty() ? Device::CPU : weights.front().device();
  for (auto& g : gm.gates) {
    g->to(dev);
    g->train(model->is_training());
  }
  return gm;
}

void remove_gates(GatedModel& gated) {
  if (auto* r = dynamic_cast<ResNetCifar*>(gated.model.get()))
    for (auto& b : r->block_list) b->gate = nullptr;
  if (auto* v = dynamic_cast<Vgg*>(gated.model.get())) v->gates.clear();
  gated.gates.clear();
  gated.names.clear();
}

std::vector<std::vector<int64_t>> kept_channels(const GatedModel& gated) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& g : gated.gates) out.push_back(g->kept());
  return out;
}

}  // namespace sparrow
