// The channel-gate op (CPU, float/double), the gate module, and insertion at PDD's placements.
#include "compress/gates.h"

#include <algorithm>
#include <cmath>

namespace sparrow {

namespace {
template <typename T>
T gate_value(T m) { return m > T(0) ? T(1) : (m < T(0) ? T(0) : T(0.5)); }
}  // namespace

Tensor channel_gate(const Tensor& x, const Tensor& m) {
  check_float(x, "channel_gate", "x");
  SPARROW_CHECK((x.dim() == 4 || x.dim() == 2) && m.dim() == 1 && m.numel() == x.size(1) && m.dtype() == x.dtype(),
                "channel_gate: gate of shape ", m.shape_str(), " for input ", x.shape_str(),
                " (expected N×C×H×W or N×C and C gates of the same dtype)");
  SPARROW_CHECK(x.device() == Device::CPU && m.device() == Device::CPU,
                "channel_gate has no CUDA path in this build yet; run it with --device cpu");
  const int64_t n = x.size(0), c = x.size(1), hw = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  auto run = [&](auto t) {
    using T = decltype(t);
    const T* px = x.data<T>();
    const T* pm = m.data<T>();
    T* py = y.data<T>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t ch = 0; ch < c; ++ch) {
        const T g = gate_value(pm[ch]);
        const int64_t base = (i * c + ch) * hw;
        for (int64_t k = 0; k < hw; ++k) py[base + k] = g * px[base + k];
      }
  };
  if (x.dtype() == DType::F64) run(double{});
  else run(float{});
  Tensor xd = x.detach(), md = m.detach();
  return record(y, "channel_gate", {x, m}, [xd, md, n, c, hw](const Tensor& g, const std::vector<bool>& needs) {
    Tensor dx = needs[0] ? Tensor::empty(xd.shape(), xd.dtype()) : Tensor();
    Tensor dm = needs[1] ? Tensor::empty({c}, xd.dtype()) : Tensor();
    auto back = [&](auto t) {
      using T = decltype(t);
      const T* px = xd.data<T>();
      const T* pm = md.data<T>();
      const T* pg = g.data<T>();
      for (int64_t ch = 0; ch < c; ++ch) {
        const T gv = gate_value(pm[ch]);
        double acc = 0;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t base = (i * c + ch) * hw;
          for (int64_t k = 0; k < hw; ++k) {
            if (needs[0]) dx.data<T>()[base + k] = gv * pg[base + k];
            acc += double(pg[base + k]) * double(px[base + k]);
          }
        }
        // ApproxSign: d sign(m)/dm = max(0, 2 − 2|m|), and g = (sign+1)/2 halves it.
        if (needs[1]) dm.data<T>()[ch] = T(0.5 * std::max(0.0, 2.0 - 2.0 * std::fabs(double(pm[ch]))) * acc);
      }
    };
    if (xd.dtype() == DType::F64) back(double{});
    else back(float{});
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
  for (auto& g : gm.gates) g->train(model->is_training());
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
