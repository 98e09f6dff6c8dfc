// The scoring criteria. Vector arithmetic over parameter lists is done in double on host vectors:
// scoring runs once per experiment, so clarity wins over speed here; the forward/backward passes inside
// are the engine's own.
#include "compress/criteria.h"

#include <cmath>
#include <limits>
#include <memory>

namespace sparrow {

namespace {

using Vec = std::vector<double>;
using VecList = std::vector<Vec>;

std::vector<Tensor> weights_of(const std::vector<PrunableParam>& params, const char* who) {
  std::vector<Tensor> w;
  for (const auto& p : params) {
    SPARROW_CHECK(!p.layer->is_sparse(), who, ": '", p.name,
                  "' is already sparse; score the dense model (scoring happens before the pattern is fixed)");
    w.push_back(p.weight());
  }
  return w;
}

VecList to_vecs(const std::vector<Tensor>& ts) {
  VecList out;
  for (const Tensor& t : ts) out.push_back(t.to_vector<double>());
  return out;
}

Scores to_scores(const VecList& v, const std::vector<Tensor>& like) {
  Scores s;
  for (size_t i = 0; i < v.size(); ++i) s.push_back(Tensor::from_vector<double>(like[i].shape(), v[i]));
  return s;
}

VecList grads(Module& model, const LossFn& loss, int index, const std::vector<Tensor>& wrt) {
  return to_vecs(loss_gradients(model, loss, index, wrt));
}

void add_into(VecList& acc, const VecList& g, double a = 1.0) {
  for (size_t i = 0; i < acc.size(); ++i)
    for (size_t j = 0; j < acc[i].size(); ++j) acc[i][j] += a * g[i][j];
}

double norm(const VecList& v) {
  double s = 0;
  for (const Vec& x : v)
    for (double e : x) s += e * e;
  return std::sqrt(s);
}

// p ← p + a·v for each tensor (the tensors' own dtype).
void axpy_params(const std::vector<Tensor>& ps, double a, const VecList& v) {
  for (size_t i = 0; i < ps.size(); ++i) {
    Tensor p = ps[i];
    const int64_t n = p.numel();
    if (p.dtype() == DType::F64) {
      double* d = p.data<double>();
      for (int64_t j = 0; j < n; ++j) d[j] += a * v[i][size_t(j)];
    } else {
      float* d = p.data<float>();
      for (int64_t j = 0; j < n; ++j) d[j] = float(double(d[j]) + a * v[i][size_t(j)]);
    }
  }
}

VecList zeros_like(const std::vector<Tensor>& ts) {
  VecList z;
  for (const Tensor& t : ts) z.emplace_back(size_t(t.numel()), 0.0);
  return z;
}

}  // namespace

Scores score_random(const std::vector<PrunableParam>& params, uint64_t seed) {
  Rng rng(seed);
  Scores s;
  for (const auto& p : params) s.push_back(Tensor::uniform(p.weight().shape(), rng, 0.0, 1.0, DType::F64));
  return s;
}

Scores score_magnitude(const std::vector<PrunableParam>& params) {
  VecList v;
  std::vector<Tensor> w;
  for (const auto& p : params) {
    w.push_back(p.layer->dense_weight());
    v.push_back(w.back().to_vector<double>());
    for (double& e : v.back()) e = std::fabs(e);
  }
  return to_scores(v, w);
}

Scores score_snip(Module& model, const std::vector<PrunableParam>& params, const LossFn& loss, int batches) {
  SPARROW_CHECK(batches >= 1, "SNIP needs at least one batch (--prune-batches), got ", batches);
  const std::vector<Tensor> w = weights_of(params, "SNIP");
  ModelSnapshot snap(model);  // train-mode forwards move the BN statistics
  VecList g = zeros_like(w);
  for (int b = 0; b < batches; ++b) add_into(g, grads(model, loss, b, w));
  snap.restore();
  VecList s = to_vecs(w);
  for (size_t i = 0; i < s.size(); ++i)
    for (size_t j = 0; j < s[i].size(); ++j) s[i][j] = std::fabs(s[i][j] * g[i][j]);
  return to_scores(s, w);
}

GraspResult grasp(Module& model, const std::vector<PrunableParam>& params, const LossFn& loss, int batches,
                  double hvp_eps) {
  SPARROW_CHECK(batches >= 1, "GraSP needs at least one batch (--prune-batches), got ", batches);
  SPARROW_CHECK(hvp_eps > 0, "--hvp-eps must be positive, got ", hvp_eps);
  const std::vector<Tensor> w = weights_of(params, "GraSP");
  ModelSnapshot snap(model);
  VecList g = zeros_like(w);
  for (int b = 0; b < batches; ++b) {
    snap.restore();
    add_into(g, grads(model, loss, b, w));
  }
  VecList hg = zeros_like(w);
  const double gn = norm(g);
  if (gn > 0) {
    const double eps = hvp_eps / gn;
    for (int b = 0; b < batches; ++b) {
      snap.restore();
      axpy_params(w, eps, g);
      VecList gp = grads(model, loss, b, w);
      snap.restore();
      axpy_params(w, -eps, g);
      VecList gm = grads(model, loss, b, w);
      add_into(hg, gp, 1.0 / (2 * eps));
      add_into(hg, gm, -1.0 / (2 * eps));
    }
  }
  snap.restore();
  VecList s = to_vecs(w);
  for (size_t i = 0; i < s.size(); ++i)
    for (size_t j = 0; j < s[i].size(); ++j) s[i][j] *= hg[i][j];
  GraspResult r;
  r.scores = to_scores(s, w);
  r.g = to_scores(g, w);
  r.hg = to_scores(hg, w);
  return r;
}

Scores score_synflow(Module& model, const std::vector<PrunableParam>& params, const Shape& input_shape,
                     const MaskSet* masks) {
  const std::vector<Tensor> w = weights_of(params, "SynFlow");
  SPARROW_CHECK(!w.empty(), "SynFlow: no prunable weights");
  if (masks) SPARROW_CHECK(masks->masks.size() == w.size(), "SynFlow: ", masks->masks.size(), " masks for ", w.size(), " weights");
  ModelSnapshot snap(model);
  std::vector<std::pair<Module*, bool>> modes;
  for (auto& [name, m] : model.named_modules()) modes.emplace_back(m, m->is_training());
  model.eval();
  Scores out;
  try {
    {
      NoGradGuard ng;
      for (const auto& list : {model.named_parameters(), model.named_buffers()})
        for (const auto& [name, t] : list) {
          if (t.dtype() != DType::F32 && t.dtype() != DType::F64) continue;
          std::vector<double> v = t.to_vector<double>();
          for (double& e : v) e = std::fabs(e);
          Tensor(t).copy_(Tensor::from_vector<double>(t.shape(), v));
        }
      if (masks)
        for (size_t i = 0; i < w.size(); ++i) Tensor(w[i]).copy_(mul(w[i].detach(), masks->masks[i].to(w[i].dtype())));
    }
    const Tensor x = Tensor::ones(input_shape, w[0].dtype());
    double r = 0;
    VecList g = grads(model, [&](int) {
      Tensor R = sum(model.forward(x));
      r = R.item();
      return R;
    }, 0, w);
    SPARROW_CHECK(std::isfinite(r), "SynFlow: R = Σ output overflowed (", r,
                  ") in ", dtype_name(w[0].dtype()), "; convert the model to double first (convert_module_dtype)");
    VecList s = to_vecs(w);
    const double lowest = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < s.size(); ++i) {
      const std::vector<double> m = masks ? masks->masks[i].to_vector<double>() : std::vector<double>();
      for (size_t j = 0; j < s[i].size(); ++j) s[i][j] = (masks && m[j] == 0.0) ? lowest : std::fabs(s[i][j] * g[i][j]);
    }
    out = to_scores(s, w);
  } catch (...) {
    for (auto& [m, on] : modes) m->train(on);
    snap.restore();
    throw;
  }
  for (auto& [m, on] : modes) m->train(on);
  snap.restore();
  return out;
}

PruneResult synflow_prune(Module& model, const std::vector<PrunableParam>& params, const Shape& input_shape,
                          int rounds, const PruneConfig& cfg) {
  SPARROW_CHECK(rounds >= 1, "--synflow-rounds must be at least 1, got ", rounds);
  SPARROW_CHECK(cfg.granularity.kind != Granularity::NM, "SynFlow's sparsity schedule needs a granularity whose sparsity is free; ",
                cfg.granularity.str(), " fixes it");
  MaskSet masks = full_masks(params);
  PruneResult res;
  for (int r = 1; r <= rounds; ++r) {
    PruneConfig round = cfg;
    round.sparsity = r == rounds ? cfg.sparsity : 1.0 - std::pow(1.0 - cfg.sparsity, double(r) / rounds);
    res = prune(params, score_synflow(model, params, input_shape, &masks), round);
    masks = res.masks;
  }
  return res;
}

MetaGradMode parse_meta_grad(const std::string& s) {
  if (s == "first-order") return MetaGradMode::FirstOrder;
  if (s == "full") return MetaGradMode::Full;
  SPARROW_FAIL("--meta-grad: unknown mode '", s, "' (expected first-order or full)");
}

std::vector<Tensor> meta_gradient(Module& model, const std::vector<PrunableParam>& params, const LossFn& loss,
                                  const MetaGradConfig& cfg) {
  SPARROW_CHECK(cfg.steps >= 0, "--epsd-steps must be >= 0, got ", cfg.steps);
  SPARROW_CHECK(cfg.hvp_eps > 0, "--hvp-eps must be positive, got ", cfg.hvp_eps);
  const std::vector<Tensor> w = weights_of(params, "meta-gradient");
  const std::vector<Tensor> theta = model.parameters();
  std::vector<size_t> w_at;  // position of each prunable weight in theta
  for (const Tensor& t : w) {
    size_t i = 0;
    while (i < theta.size() && !theta[i].same(t)) ++i;
    SPARROW_CHECK(i < theta.size(), "meta-gradient: a prunable weight is not a parameter of the model");
    w_at.push_back(i);
  }
  const VecList w0 = to_vecs(w);
  ModelSnapshot start(model);
  // θ_k with the buffers it saw, for k = 0..steps.
  std::vector<std::unique_ptr<ModelSnapshot>> at;
  for (int k = 0; k < cfg.steps; ++k) {
    at.push_back(std::make_unique<ModelSnapshot>(model));
    const VecList g = grads(model, loss, k, theta);
    NoGradGuard ng;
    axpy_params(theta, -cfg.inner_lr, g);
  }
  VecList v = grads(model, loss, cfg.steps, theta);
  if (cfg.mode == MetaGradMode::Full) {
    for (int k = cfg.steps - 1; k >= 0; --k) {
      const double vn = norm(v);
      if (vn == 0) break;
      const double eps = cfg.hvp_eps / vn;
      at[size_t(k)]->restore();
      axpy_params(theta, eps, v);
      const VecList gp = grads(model, loss, k, theta);
      at[size_t(k)]->restore();
      axpy_params(theta, -eps, v);
      const VecList gm = grads(model, loss, k, theta);
      add_into(v, gp, -cfg.inner_lr / (2 * eps));
      add_into(v, gm, cfg.inner_lr / (2 * eps));
    }
  }
  start.restore();
  VecList delta;
  for (size_t i = 0; i < w.size(); ++i) {
    delta.push_back(w0[i]);
    for (size_t j = 0; j < delta[i].size(); ++j) delta[i][j] *= v[w_at[i]][j];
  }
  return to_scores(delta, w);
}

Scores score_meta(Module& model, const std::vector<PrunableParam>& params, const LossFn& loss,
                  const MetaGradConfig& cfg) {
  VecList d = to_vecs(meta_gradient(model, params, loss, cfg));
  double total = 0;
  for (Vec& x : d)
    for (double& e : x) total += (e = std::fabs(e));
  if (total > 0)
    for (Vec& x : d)
      for (double& e : x) e /= total;
  std::vector<Tensor> w;
  for (const auto& p : params) w.push_back(p.weight());
  return to_scores(d, w);
}

}  // namespace sparrow
