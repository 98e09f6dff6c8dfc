// DLB, CS-KD, PS-KD and plain CE as SdMethod objects.
#include "compress/self_distill.h"

#include "engine/base/nvtx.h"

namespace sparrow {

SdStep PlainCe::step(Module& model, const SdInputs& in) {
  SdStep s;
  s.logits = model.forward(in.x);
  s.loss = cross_entropy(s.logits, in.y);
  return s;
}

SdStep Dlb::step(Module& model, const SdInputs& in) {
  SPARROW_NVTX_RANGE("dlb_step");
  SPARROW_CHECK(in.x2.defined(), "DLB needs two views per sample (x2)");
  const int64_t n = in.x.size(0);
  SdStep s;
  if (!prev_x_.defined()) {
    s.logits = model.forward(in.x);
    s.loss = cross_entropy(s.logits, in.y);
  } else {
    const int64_t m = prev_x_.size(0);
    Tensor all = model.forward(cat_rows({in.x, prev_x_}));
    Tensor ce = cross_entropy(all, cat_rows({in.y, prev_y_}));
    Tensor z_rep = slice_rows(all, n, n + m);
    Tensor kl = kd_loss(z_rep, prev_logits_, {T_, 1.0, 0.0, LogitNorm::none});  // T²·KL(p_prev ‖ p_rep)
    s.loss = add(ce, scale(kl, alpha_));
    s.logits = slice_rows(all, 0, n);
  }
  prev_x_ = in.x2.detach().clone();
  prev_y_ = in.y.detach().clone();
  prev_logits_ = s.logits.detach().clone();
  return s;
}

std::map<std::string, Tensor> Dlb::state() const {
  if (!prev_x_.defined()) return {};
  return {{"dlb.prev_x", prev_x_}, {"dlb.prev_y", prev_y_}, {"dlb.prev_logits", prev_logits_}};
}

void Dlb::load_state(const std::map<std::string, Tensor>& s) {
  auto it = s.find("dlb.prev_x");
  if (it == s.end()) {
    reset();
    return;
  }
  prev_x_ = it->second;
  prev_y_ = s.at("dlb.prev_y");
  prev_logits_ = s.at("dlb.prev_logits");
}

SdStep CsKd::step(Module& model, const SdInputs& in) {
  SPARROW_NVTX_RANGE("cskd_step");
  SPARROW_CHECK(in.x_pair.defined(), "CS-KD needs a same-class partner per sample (x_pair)");
  SdStep s;
  s.logits = model.forward(in.x);
  Tensor ce = cross_entropy(s.logits, in.y);
  Tensor zp;
  {
    NoGradGuard ng;
    zp = model.forward(in.x_pair);
  }
  Tensor kl = kd_loss(s.logits, zp, {T_, 1.0, 0.0, LogitNorm::none});  // T²·KL(p(x') ‖ p(x))
  s.loss = add(ce, scale(kl, lambda_));
  return s;
}

void PsKd::init_table(const std::vector<int32_t>& labels, int classes) {
  table_ = Tensor::zeros({int64_t(labels.size()), classes});
  float* t = table_.data<float>();
  for (size_t i = 0; i < labels.size(); ++i) t[i * size_t(classes) + size_t(labels[i])] = 1.f;
}

void PsKd::load_state(const std::map<std::string, Tensor>& s) {
  auto it = s.find("pskd.table");
  SPARROW_CHECK(it != s.end(), "PS-KD state lacks its table");
  SPARROW_CHECK(!table_.defined() || it->second.shape() == table_.shape(), "PS-KD table of shape ",
                it->second.shape_str(), " does not match the dataset's ", table_.shape_str());
  table_ = it->second.to(DType::F32);
}

SdStep PsKd::step(Module& model, const SdInputs& in) {
  SPARROW_NVTX_RANGE("pskd_step");
  SPARROW_CHECK(table_.defined(), "PS-KD: init_table() was not called");
  SPARROW_CHECK(in.index.defined() && in.index.numel() == in.y.numel(), "PS-KD needs sample indices");
  SPARROW_CHECK(in.epochs > 0 && in.epoch >= 0, "PS-KD: bad epoch ", in.epoch, " of ", in.epochs);
  const int64_t b = in.y.numel(), c = table_.size(1);
  const double a = alpha_T_ * double(in.epoch + 1) / double(in.epochs);
  const auto idx = in.index.to_vector<int64_t>();
  const auto y = in.y.to_vector<int64_t>();
  Tensor target = Tensor::empty({b, c});
  float* tg = target.data<float>();
  const float* tab = table_.data<float>();
  for (int64_t i = 0; i < b; ++i) {
    SPARROW_CHECK(idx[size_t(i)] >= 0 && idx[size_t(i)] < table_.size(0), "PS-KD: sample index ", idx[size_t(i)],
                  " outside the table of ", table_.size(0));
    for (int64_t j = 0; j < c; ++j)
      tg[i * c + j] = float((1 - a) * (j == y[size_t(i)] ? 1.0 : 0.0) + a * tab[idx[size_t(i)] * c + j]);
  }
  SdStep s;
  s.logits = model.forward(in.x);
  s.loss = soft_cross_entropy(s.logits, target.to(s.logits.device()).to(s.logits.dtype()));
  {
    NoGradGuard ng;
    Tensor p = softmax(s.logits.to(Device::CPU)).to(DType::F32);
    float* t = table_.data<float>();
    const float* pp = p.data<float>();
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = 0; j < c; ++j) t[idx[size_t(i)] * c + j] = pp[i * c + j];
  }
  return s;
}

std::unique_ptr<SdMethod> make_sd_method(const std::string& name) {
  if (name == "dlb") return std::make_unique<Dlb>();
  if (name == "cskd") return std::make_unique<CsKd>();
  if (name == "pskd") return std::make_unique<PsKd>();
  if (name == "none") return std::make_unique<PlainCe>();
  SPARROW_FAIL("--sd: unknown self-distillation method '", name, "' (expected dlb, cskd, pskd or none)");
}

}  // namespace sparrow
