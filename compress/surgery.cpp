// Surgery: index selection of conv/linear/BN tensors along their channel dimensions, per architecture.
#include "compress/surgery.h"

#include <numeric>

namespace sparrow {

namespace {

std::vector<int64_t> all_of(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), int64_t(0));
  return v;
}

// w[out_idx][in_idx] for a Cout×Cin×Kh×Kw or Out×In weight (in_idx over dim 1, the rest kept whole).
Tensor select2(const Tensor& w, const std::vector<int64_t>& out_idx, const std::vector<int64_t>& in_idx) {
  const int64_t cin = w.size(1), inner = w.numel() / (w.size(0) * cin);
  Shape shape = w.shape();
  shape[0] = int64_t(out_idx.size());
  shape[1] = int64_t(in_idx.size());
  const std::vector<double> src = w.to_vector<double>();
  std::vector<double> dst;
  dst.reserve(size_t(shape_numel(shape)));
  for (int64_t o : out_idx)
    for (int64_t i : in_idx)
      for (int64_t k = 0; k < inner; ++k) dst.push_back(src[size_t((o * cin + i) * inner + k)]);
  return Tensor::from_vector<double>(shape, dst).to(w.dtype());
}

Tensor select1(const Tensor& v, const std::vector<int64_t>& idx) {
  const std::vector<double> src = v.to_vector<double>();
  std::vector<double> dst;
  for (int64_t i : idx) dst.push_back(src[size_t(i)]);
  return Tensor::from_vector<double>({int64_t(idx.size())}, dst).to(v.dtype());
}

void copy_into(Tensor dst, const Tensor& src, const char* what) {
  SPARROW_CHECK(dst.shape() == src.shape(), "surgery: ", what, " has shape ", src.shape_str(), ", the narrow model ",
                dst.shape_str());
  NoGradGuard ng;
  dst.copy_(src);
}

void copy_conv(Conv2d& dst, const Conv2d& src, const std::vector<int64_t>& out, const std::vector<int64_t>& in,
               bool with_bias) {
  copy_into(dst.weight, select2(src.dense_weight(), out, in), "conv weight");
  if (with_bias && src.bias.defined()) copy_into(dst.bias, select1(src.bias, out), "conv bias");
}

void copy_bn(BatchNorm2d& dst, const BatchNorm2d& src, const std::vector<int64_t>& keep) {
  copy_into(dst.weight, select1(src.weight, keep), "BN weight");
  copy_into(dst.bias, select1(src.bias, keep), "BN bias");
  copy_into(dst.running_mean, select1(src.running_mean, keep), "BN running mean");
  copy_into(dst.running_var, select1(src.running_var, keep), "BN running var");
  copy_into(dst.num_batches_tracked, src.num_batches_tracked, "BN batch count");
}

void copy_linear(Linear& dst, const Linear& src, const std::vector<int64_t>& in) {
  copy_into(dst.weight, select2(src.dense_weight(), all_of(src.out), in), "linear weight");
  if (src.bias.defined()) copy_into(dst.bias, src.bias.clone(), "linear bias");
}

}  // namespace

ModelPtr narrow_model(const Model& model, const std::vector<std::vector<int64_t>>& keep, const SurgeryConfig& cfg) {
  for (size_t k = 0; k < keep.size(); ++k) {
    SPARROW_CHECK(!keep[k].empty(), "surgery: gate ", k, " keeps no channel, so the narrow '", model.spec().name,
                  "' would have a zero-width layer");
    for (size_t i = 1; i < keep[k].size(); ++i)
      SPARROW_CHECK(keep[k][i] > keep[k][i - 1], "surgery: kept channels of gate ", k, " must be strictly ascending");
  }
  ModelSpec spec = model.spec();
  if (auto* r = dynamic_cast<const ResNetCifar*>(&model)) {
    const auto& blocks = r->block_list;
    SPARROW_CHECK(keep.size() == blocks.size(), "surgery: ", keep.size(), " gates for the ", blocks.size(),
                  " blocks of '", spec.name, "'");
    for (size_t k = 0; k < blocks.size(); ++k)
      SPARROW_CHECK(keep[k].back() < blocks[k]->cout, "surgery: gate ", k, " keeps channel ", keep[k].back(),
                    " of a ", blocks[k]->cout, "-channel block");
    for (size_t k = 0; k < blocks.size(); ++k) spec.widths[k + 1] = int(keep[k].size());
    ModelPtr out = make_model(spec, cfg.seed);
    auto* n = dynamic_cast<ResNetCifar*>(out.get());
    auto& stem_src = static_cast<Conv2d&>(*(*r->stem)[0]);
    auto& stem_dst = static_cast<Conv2d&>(*(*n->stem)[0]);
    copy_conv(stem_dst, stem_src, all_of(stem_src.cout), all_of(stem_src.cin), cfg.inherit_bn);
    if (cfg.inherit_bn)
      copy_bn(static_cast<BatchNorm2d&>(*(*n->stem)[1]), static_cast<BatchNorm2d&>(*(*r->stem)[1]), all_of(stem_src.cout));
    std::vector<int64_t> prev = all_of(stem_src.cout);
    for (size_t k = 0; k < blocks.size(); ++k) {
      const BasicBlockA& s = *blocks[k];
      BasicBlockA& d = *n->block_list[k];
      copy_conv(*d.c1, *s.c1, keep[k], prev, cfg.inherit_bn);
      copy_conv(*d.c2, *s.c2, keep[k], keep[k], cfg.inherit_bn);
      if (cfg.inherit_bn) {
        copy_bn(*d.b1, *s.b1, keep[k]);
        copy_bn(*d.b2, *s.b2, keep[k]);
      }
      prev = keep[k];
    }
    if (cfg.inherit_bn) copy_linear(*n->fc, *r->fc, prev);
    return out;
  }
  if (auto* v = dynamic_cast<const Vgg*>(&model)) {
    SPARROW_CHECK(keep.size() == v->convs.size(), "surgery: ", keep.size(), " gates for the ", v->convs.size(),
                  " convs of '", spec.name, "'");
    for (size_t i = 0; i < keep.size(); ++i) {
      SPARROW_CHECK(keep[i].back() < v->convs[i]->cout, "surgery: gate ", i, " keeps channel ", keep[i].back(), " of a ",
                    v->convs[i]->cout, "-channel conv");
      spec.widths[i] = int(keep[i].size());
    }
    ModelPtr out = make_model(spec, cfg.seed);
    auto* n = dynamic_cast<Vgg*>(out.get());
    std::vector<int64_t> prev = all_of(v->convs[0]->cin);
    for (size_t i = 0; i < keep.size(); ++i) {
      copy_conv(*n->convs[i], *v->convs[i], keep[i], prev, cfg.inherit_bn);
      if (cfg.inherit_bn) copy_bn(*n->bns[i], *v->bns[i], keep[i]);
      prev = keep[i];
    }
    if (cfg.inherit_bn) {
      // The classifier's first Linear reads the pooled last conv channels; later layers are copied whole.
      bool first = true;
      for (size_t j = 0; j < v->classifier->size(); ++j) {
        auto* src = dynamic_cast<Linear*>((*v->classifier)[j].get());
        if (!src) continue;
        auto* dst = dynamic_cast<Linear*>((*n->classifier)[j].get());
        copy_linear(*dst, *src, first ? prev : all_of(src->in));
        first = false;
      }
    }
    return out;
  }
  SPARROW_FAIL("surgery supports the CIFAR ResNets (option A) and VGG; model '", spec.name, "' is neither");
}

ModelPtr narrow_from_gates(const GatedModel& gated, const SurgeryConfig& cfg) {
  return narrow_model(*gated.model, kept_channels(gated), cfg);
}

}  // namespace sparrow
