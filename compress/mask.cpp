// Granularity parsing, group layouts over the GEMM view, and the ways a mask is made to hold.
#include "compress/mask.h"

#include <cstdio>

namespace sparrow {

std::string MaskGranularity::str() const {
  switch (kind) {
    case Granularity::Unstructured: return "unstructured";
    case Granularity::Channel: return "channel";
    case Granularity::Block: return sparrow::str("block:", block_rows, "x", block_cols);
    case Granularity::NM: return sparrow::str("nm:", n, ":", m);
  }
  return "?";
}

MaskGranularity parse_granularity(const std::string& spec) {
  MaskGranularity g;
  auto bad = [&]() {
    SPARROW_FAIL("--granularity: cannot parse '", spec,
                 "' (expected unstructured, channel, block:RxC such as block:16x16, or nm:N:M such as nm:2:4)");
  };
  if (spec == "unstructured") return g;
  if (spec == "channel" || spec == "filter") {
    g.kind = Granularity::Channel;
    return g;
  }
  int a = 0, b = 0;
  char tail = 0;
  if (spec.rfind("block:", 0) == 0) {
    g.kind = Granularity::Block;
    const std::string rest = spec.substr(6);
    if (std::sscanf(rest.c_str(), "%dx%d%c", &a, &b, &tail) == 2) {
      g.block_rows = a, g.block_cols = b;
    } else if (std::sscanf(rest.c_str(), "%d%c", &a, &tail) == 1) {
      g.block_rows = g.block_cols = a;
    } else {
      bad();
    }
    if (g.block_rows < 1 || g.block_cols < 1) bad();
    return g;
  }
  if (spec.rfind("nm:", 0) == 0) {
    g.kind = Granularity::NM;
    if (std::sscanf(spec.c_str() + 3, "%d:%d%c", &a, &b, &tail) != 2 || a < 1 || b < a) bad();
    g.n = a, g.m = b;
    return g;
  }
  bad();
  return g;
}

GroupLayout group_layout(const Shape& shape, const MaskGranularity& g) {
  SPARROW_CHECK(shape.size() >= 2, "masks need a weight with at least 2 dimensions, got ", shape_str(shape));
  GroupLayout L;
  L.rows = shape[0];
  L.cols = shape_numel(shape) / L.rows;
  if (g.kind == Granularity::Channel) {
    L.groups = L.rows;
    L.group_of.resize(size_t(L.rows * L.cols));
    for (int64_t i = 0; i < L.rows * L.cols; ++i) L.group_of[size_t(i)] = i / L.cols;
  } else if (g.kind == Granularity::Block) {
    const int64_t br = g.block_rows, bc = g.block_cols;
    const int64_t nbr = (L.rows + br - 1) / br, nbc = (L.cols + bc - 1) / bc;
    L.groups = nbr * nbc;
    L.group_of.resize(size_t(L.rows * L.cols));
    for (int64_t r = 0; r < L.rows; ++r)
      for (int64_t c = 0; c < L.cols; ++c) L.group_of[size_t(r * L.cols + c)] = (r / br) * nbc + c / bc;
  } else {
    L.groups = g.kind == Granularity::NM ? L.rows * ((L.cols + g.m - 1) / g.m) : L.rows * L.cols;
  }
  return L;
}

int64_t MaskSet::total() const {
  int64_t n = 0;
  for (const Tensor& m : masks) n += m.numel();
  return n;
}

int64_t MaskSet::kept() const {
  int64_t n = 0;
  for (const Tensor& m : masks)
    for (double v : m.to_vector<double>()) n += v != 0.0;
  return n;
}

MaskSet full_masks(const std::vector<PrunableParam>& params) {
  MaskSet ms;
  for (const auto& p : params) {
    ms.names.push_back(p.name);
    ms.masks.push_back(Tensor::ones(p.weight().shape(), p.weight().dtype()));
  }
  return ms;
}

namespace {
void check_match(const std::vector<PrunableParam>& params, const MaskSet& masks, const char* what) {
  SPARROW_CHECK(params.size() == masks.masks.size() && params.size() == masks.names.size(), what, ": ",
                masks.masks.size(), " masks for ", params.size(), " prunable weights");
  for (size_t i = 0; i < params.size(); ++i) {
    SPARROW_CHECK(params[i].name == masks.names[i], what, ": mask ", i, " is for '", masks.names[i], "', expected '",
                  params[i].name, "'");
    SPARROW_CHECK(params[i].weight().shape() == masks.masks[i].shape(), what, ": mask for '", params[i].name,
                  "' has shape ", masks.masks[i].shape_str(), ", the weight ", params[i].weight().shape_str());
  }
}
}  // namespace

void apply_masks(const std::vector<PrunableParam>& params, const MaskSet& masks) {
  check_match(params, masks, "apply_masks");
  NoGradGuard ng;
  for (size_t i = 0; i < params.size(); ++i) {
    SPARROW_CHECK(!params[i].layer->is_sparse(), "apply_masks: '", params[i].name,
                  "' is already sparse (its pattern is its mask)");
    Tensor w = params[i].weight();
    w.copy_(mul(w.detach(), masks.masks[i].to(w.dtype())));
  }
}

void enforce_masks(Sgd& opt, const std::vector<PrunableParam>& params, const MaskSet& masks) {
  check_match(params, masks, "enforce_masks");
  for (size_t i = 0; i < params.size(); ++i) {
    SPARROW_CHECK(!params[i].layer->is_sparse(), "enforce_masks: '", params[i].name,
                  "' is sparse: its optimizer state is already restricted to the pattern");
    opt.set_mask(params[i].weight(), masks.masks[i].to(params[i].weight().dtype()));
  }
}

void make_sparse(const std::vector<PrunableParam>& params, const MaskSet& masks) {
  check_match(params, masks, "make_sparse");
  for (size_t i = 0; i < params.size(); ++i) params[i].layer->make_sparse(masks.masks[i]);
}

void make_sparse_like(Module& model, const StateDict& sd) {
  for (auto& [name, m] : model.named_modules()) {
    auto* layer = dynamic_cast<WeightLayer*>(m);
    if (!layer) continue;
    auto it = sd.find(name.empty() ? "weight_mask" : name + ".weight_mask");
    if (it != sd.end()) layer->make_sparse(it->second.to(Device::CPU));
  }
}

}  // namespace sparrow
