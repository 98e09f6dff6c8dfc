// Cost accounting from a probe forward: each Conv2d/Linear/BatchNorm2d records its output shape.
#include "compress/accounting.h"

namespace sparrow {

namespace {
int64_t count_nonzero(const Tensor& t) {
  int64_t n = 0;
  for (double v : t.to_vector<double>()) n += v != 0.0;
  return n;
}
}  // namespace

CostReport count_costs(Module& model, const Shape& input_shape, const PrunableSpec& prunable) {
  auto modules = model.named_modules();
  std::vector<bool> modes;
  for (auto& [name, m] : modules) {
    modes.push_back(m->is_training());
    if (auto* w = dynamic_cast<WeightLayer*>(m)) w->last_output_shape.clear();
    if (auto* b = dynamic_cast<BatchNorm2d*>(m)) b->last_output_shape.clear();
  }
  model.eval();
  {
    NoGradGuard ng;
    DType dt = DType::F32;
    for (auto& [name, t] : model.named_parameters()) {
      dt = t.dtype();
      break;
    }
    model.forward(Tensor::zeros(input_shape, dt));
  }
  for (size_t i = 0; i < modules.size(); ++i) modules[i].second->train(modes[i]);  // parents before children

  CostReport r;
  for (auto& [name, m] : modules) {
    LayerCost c;
    c.name = name;
    c.type = m->type_name();
    if (auto* w = dynamic_cast<WeightLayer*>(m)) {
      if (w->last_output_shape.empty()) continue;
      const Tensor weight = w->dense_weight();
      const int64_t out_elems = shape_numel(w->last_output_shape);
      const int64_t rows = weight.size(0), nz = count_nonzero(weight);
      c.shape = weight.shape();
      c.params = weight.numel() + (w->bias.defined() ? w->bias.numel() : 0);
      c.nonzeros = nz + (w->bias.defined() ? count_nonzero(w->bias) : 0);
      // Each output element of a row uses that row's weights once: MACs = Σ_rows nnz_row × (outputs per
      // row) = nnz × out_elems / rows (out_elems is a multiple of rows for conv and linear alike).
      const int64_t per_row = out_elems / rows;
      const int64_t bias_ops = dynamic_cast<Conv2d*>(m) && w->bias.defined() ? out_elems : 0;
      c.macs = nz * per_row + bias_ops;
      c.dense_macs = weight.numel() * per_row + bias_ops;
    } else if (auto* b = dynamic_cast<BatchNorm2d*>(m)) {
      if (b->last_output_shape.empty()) continue;
      c.shape = b->weight.shape();
      c.params = b->weight.numel() + b->bias.numel();
      c.nonzeros = count_nonzero(b->weight) + count_nonzero(b->bias);
    } else {
      continue;
    }
    r.params += c.params;
    r.nonzeros += c.nonzeros;
    r.macs += c.macs;
    r.dense_macs += c.dense_macs;
    r.layers.push_back(c);
  }
  for (const auto& p : prunable_params(model, prunable)) {
    const Tensor w = p.layer->dense_weight();
    r.prunable += w.numel();
    r.prunable_nonzeros += count_nonzero(w);
  }
  r.sparsity = r.prunable ? 1.0 - double(r.prunable_nonzeros) / double(r.prunable) : 0.0;
  return r;
}

}  // namespace sparrow
