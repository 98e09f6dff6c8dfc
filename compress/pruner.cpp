// Top-k selection over scores: threshold + in-order tie-break for unstructured masks (O(N), no sort of
// the whole network), sorted groups for Block/Channel, per-row runs for N:M.
#include "compress/pruner.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

namespace sparrow {

Scope parse_scope(const std::string& s) {
  if (s == "global") return Scope::Global;
  if (s == "layer") return Scope::Layer;
  SPARROW_FAIL("--scope: unknown scope '", s, "' (expected global or layer)");
}

int64_t keep_count(int64_t n, double sparsity) {
  // s·n is computed in double; the small slack keeps e.g. 0.36·100 = 35.99999… from removing one less.
  const int64_t removed = int64_t(std::floor(sparsity * double(n) + 1e-6));
  return n - std::min(n, std::max<int64_t>(0, removed));
}

namespace {

// One group (Block/Channel) of layer `layer`.
struct Unit {
  double score;
  int layer;
  int64_t index;  // flat weight index or group index within the layer
  int64_t size;   // weights it covers
};

bool better(const Unit& a, const Unit& b) {
  if (a.score != b.score) return a.score > b.score;
  if (a.layer != b.layer) return a.layer < b.layer;
  return a.index < b.index;
}

// Groups of one layer. Group score = mean of its weights' scores, so groups of different sizes (edge
// blocks, layers of different widths) compete on the same scale.
std::vector<Unit> layer_units(int layer, const std::vector<double>& s, const GroupLayout& L) {
  std::vector<Unit> u;
  std::vector<double> sum(size_t(L.groups), 0.0);
  std::vector<int64_t> size(size_t(L.groups), 0);
  for (size_t i = 0; i < s.size(); ++i) {
    sum[size_t(L.group_of[i])] += s[i];
    ++size[size_t(L.group_of[i])];
  }
  for (int64_t g = 0; g < L.groups; ++g) u.push_back({sum[size_t(g)] / double(size[size_t(g)]), layer, g, size[size_t(g)]});
  return u;
}

// Unstructured: the k-th best score is the threshold; everything above it is kept, and ties at it are
// taken in (layer, flat index) order. O(N) time, one copy of the scores.
void select_exact(const std::vector<std::vector<double>>& s, const std::vector<size_t>& layers, int64_t k,
                  std::vector<std::vector<char>>& keep) {
  std::vector<double> all;
  for (size_t l : layers) all.insert(all.end(), s[l].begin(), s[l].end());
  k = std::min<int64_t>(k, int64_t(all.size()));
  if (k <= 0) return;
  std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), std::greater<double>());
  const double thr = all[size_t(k - 1)];
  int64_t above = 0;
  for (double v : all) above += v > thr;
  int64_t ties = k - above;
  for (size_t l : layers)
    for (size_t i = 0; i < s[l].size(); ++i)
      if (s[l][i] > thr || (s[l][i] == thr && ties-- > 0)) keep[l][i] = 1;
}

// Block/Channel: whole groups in score order until `target` weights are covered.
void select_groups(std::vector<Unit>& units, int64_t target, std::vector<std::vector<char>>& keep) {
  std::sort(units.begin(), units.end(), better);
  int64_t kept = 0;
  for (const Unit& u : units) {
    if (kept >= target) break;
    keep[size_t(u.layer)][size_t(u.index)] = 1;
    kept += u.size;
  }
}

// N:M along each row of the GEMM view: the n best of each run of m (ties to the lower column).
void select_nm(const std::vector<double>& s, const GroupLayout& L, int n, int m, std::vector<char>& keep) {
  std::vector<int64_t> idx;
  for (int64_t r = 0; r < L.rows; ++r)
    for (int64_t c0 = 0; c0 < L.cols; c0 += m) {
      idx.clear();
      for (int64_t c = c0; c < std::min(L.cols, c0 + m); ++c) idx.push_back(r * L.cols + c);
      const size_t k = std::min<size_t>(size_t(n), idx.size());
      std::partial_sort(idx.begin(), idx.begin() + long(k), idx.end(), [&](int64_t a, int64_t b) {
        return s[size_t(a)] != s[size_t(b)] ? s[size_t(a)] > s[size_t(b)] : a < b;
      });
      for (size_t i = 0; i < k; ++i) keep[size_t(idx[i])] = 1;
    }
}

}  // namespace

PruneResult prune(const std::vector<PrunableParam>& params, const Scores& scores, const PruneConfig& cfg) {
  SPARROW_CHECK(scores.size() == params.size(), "prune: ", scores.size(), " score tensors for ", params.size(),
                " prunable weights");
  SPARROW_CHECK(!params.empty(), "prune: no prunable weights (check the prunable set: conv/linear/skip switches)");
  SPARROW_CHECK(cfg.sparsity >= 0 && cfg.sparsity < 1, "--sparsity must be in [0, 1), got ", cfg.sparsity);
  const MaskGranularity& gran = cfg.granularity;
  const bool nm = gran.kind == Granularity::NM;
  const bool grouped = gran.kind == Granularity::Block || gran.kind == Granularity::Channel;
  if (nm)
    SPARROW_CHECK(std::fabs(cfg.sparsity - (1.0 - double(gran.n) / gran.m)) < 1e-9, "granularity ", gran.str(),
                  " fixes the sparsity at ", 1.0 - double(gran.n) / gran.m, "; got --sparsity ", cfg.sparsity);

  const size_t L = params.size();
  std::vector<std::vector<double>> s(L);
  std::vector<GroupLayout> layouts(L);
  std::vector<std::vector<char>> keep(L);
  int64_t total = 0;
  for (size_t l = 0; l < L; ++l) {
    const Shape& shape = params[l].weight().shape();
    SPARROW_CHECK(scores[l].shape() == shape, "prune: scores for '", params[l].name, "' have shape ",
                  scores[l].shape_str(), ", the weight ", shape_str(shape));
    s[l] = scores[l].to_vector<double>();
    for (size_t i = 0; i < s[l].size(); ++i)
      SPARROW_CHECK(!std::isnan(s[l][i]), "prune: score of '", params[l].name, "' at flat index ", i, " is NaN");
    layouts[l] = group_layout(shape, gran);
    keep[l].assign(size_t(grouped ? layouts[l].groups : int64_t(s[l].size())), 0);
    total += int64_t(s[l].size());
  }

  PruneResult res;
  if (nm) {
    for (size_t l = 0; l < L; ++l) select_nm(s[l], layouts[l], gran.n, gran.m, keep[l]);
    res.target_kept = 0;
    for (size_t l = 0; l < L; ++l)
      for (int64_t r = 0; r < layouts[l].rows; ++r)
        for (int64_t c0 = 0; c0 < layouts[l].cols; c0 += gran.m)
          res.target_kept += std::min<int64_t>(gran.n, std::min<int64_t>(gran.m, layouts[l].cols - c0));
  } else {
    // Global: one competition over all layers; Layer: one per layer.
    std::vector<std::vector<size_t>> rounds;
    if (cfg.scope == Scope::Global) {
      rounds.emplace_back(L);
      std::iota(rounds[0].begin(), rounds[0].end(), size_t(0));
    } else {
      for (size_t l = 0; l < L; ++l) rounds.push_back({l});
    }
    for (const auto& layers : rounds) {
      int64_t n = 0;
      for (size_t l : layers) n += int64_t(s[l].size());
      const int64_t target = keep_count(n, cfg.sparsity);
      res.target_kept += target;
      if (!grouped) {
        select_exact(s, layers, target, keep);
        continue;
      }
      std::vector<Unit> units;
      for (size_t l : layers) {
        std::vector<Unit> u = layer_units(int(l), s[l], layouts[l]);
        units.insert(units.end(), u.begin(), u.end());
      }
      select_groups(units, target, keep);
    }
  }

  // Per-layer floor, then masks and counts.
  for (size_t l = 0; l < L; ++l) {
    const bool empty = std::none_of(keep[l].begin(), keep[l].end(), [](char c) { return c != 0; });
    if (!empty) continue;
    SPARROW_CHECK(cfg.min_keep, "pruning at sparsity ", cfg.sparsity, " (", cfg.scope == Scope::Global ? "global" : "layer",
                  " scope, ", gran.str(), ") removes every weight of layer '", params[l].name, "' (",
                  s[l].size(), " weights); lower the sparsity, use --scope layer, or pass --min-keep");
    if (grouped) {
      std::vector<Unit> u = layer_units(int(l), s[l], layouts[l]);
      keep[l][size_t(std::min_element(u.begin(), u.end(), better)->index)] = 1;  // the best group
    } else {
      size_t best = 0;
      for (size_t i = 1; i < s[l].size(); ++i)
        if (s[l][i] > s[l][best]) best = i;
      keep[l][best] = 1;
    }
  }
  res.total = total;
  for (size_t l = 0; l < L; ++l) {
    const Tensor& w = params[l].weight();
    std::vector<double> m(s[l].size());
    for (size_t i = 0; i < m.size(); ++i) m[i] = keep[l][size_t(grouped ? layouts[l].group_of[i] : int64_t(i))] ? 1.0 : 0.0;
    Tensor mask = Tensor::from_vector<double>(w.shape(), m);
    if (w.dtype() != DType::F64) mask = mask.to(w.dtype());
    LayerPruneStats st{params[l].name, int64_t(m.size()), 0};
    for (double v : m) st.kept += v != 0.0;
    res.kept += st.kept;
    res.layers.push_back(st);
    res.masks.names.push_back(params[l].name);
    res.masks.masks.push_back(mask);
  }
  res.sparsity = total ? 1.0 - double(res.kept) / double(total) : 0.0;
  return res;
}

}  // namespace sparrow

namespace sparrow {

PruneResult prune_above_threshold(const std::vector<PrunableParam>& params, const Scores& scores, double sparsity) {
  SPARROW_CHECK(scores.size() == params.size() && !params.empty(), "prune_above_threshold: ", scores.size(),
                " score tensors for ", params.size(), " prunable weights");
  SPARROW_CHECK(sparsity >= 0 && sparsity < 1, "--sparsity must be in [0, 1), got ", sparsity);
  std::vector<double> all;
  for (size_t i = 0; i < scores.size(); ++i) {
    SPARROW_CHECK(scores[i].shape() == params[i].weight().shape(), "prune_above_threshold: scores for '",
                  params[i].name, "' have shape ", scores[i].shape_str());
    for (double v : scores[i].to_vector<double>()) {
      SPARROW_CHECK(!std::isnan(v), "prune_above_threshold: NaN score in '", params[i].name, "'");
      all.push_back(v);
    }
  }
  const int64_t n = int64_t(all.size());
  const int64_t k = int64_t(std::floor(sparsity * double(n)));
  PruneResult r;
  r.total = n;
  r.target_kept = n - k;
  double threshold = -std::numeric_limits<double>::infinity();
  if (k > 0) {
    std::nth_element(all.begin(), all.begin() + (k - 1), all.end());
    threshold = all[size_t(k - 1)];
  }
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor mask = Tensor::zeros(params[i].weight().shape(), params[i].weight().dtype());
    const auto s = scores[i].to_vector<double>();
    int64_t kept = 0;
    for (size_t j = 0; j < s.size(); ++j) {
      const bool keep = k == 0 || s[j] > threshold;
      if (keep) {
        if (mask.dtype() == DType::F64) mask.data<double>()[j] = 1.0;
        else mask.data<float>()[j] = 1.f;
        ++kept;
      }
    }
    r.masks.names.push_back(params[i].name);
    r.masks.masks.push_back(mask);
    r.layers.push_back({params[i].name, int64_t(s.size()), kept});
    r.kept += kept;
  }
  r.sparsity = n ? 1.0 - double(r.kept) / double(n) : 0.0;
  return r;
}

}  // namespace sparrow
