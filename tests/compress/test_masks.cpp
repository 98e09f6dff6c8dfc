// Masks and pruners: the prunable set, exact global/per-layer top-k with deterministic ties, patterns of
// every granularity checked element by element against a direct reading of the rule, the per-layer
// floor, and masked weights staying exactly zero through 100 SGD steps with momentum and weight decay.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "compress/criteria.h"
#include "models/models.h"
#include "tests/compress/compress_test_util.h"

using namespace sparrow;
using namespace sparrow::testing;

namespace {

// Two convs and a linear layer with awkward sizes: GEMM views 5×18, 7×45 and 3×7.
std::shared_ptr<Sequential> three_layers() {
  Rng rng(1);
  auto s = std::make_shared<Sequential>();
  s->push_back(std::make_shared<Conv2d>(2, 5, 3, 1, 1, false, rng));
  s->push_back(std::make_shared<Conv2d>(5, 7, 3, 1, 1, false, rng));
  s->push_back(std::make_shared<GlobalAvgPool>());
  s->push_back(std::make_shared<Linear>(7, 3, true, rng));
  return s;
}

// Integer-valued random scores in [0, levels): many ties on purpose.
Scores tied_scores(const std::vector<PrunableParam>& ps, int levels, uint64_t seed) {
  Rng rng(seed);
  Scores s;
  for (auto& p : ps) {
    std::vector<double> v(size_t(p.weight().numel()));
    for (double& e : v) e = double(rng.below(uint64_t(levels)));
    s.push_back(Tensor::from_vector<double>(p.weight().shape(), v));
  }
  return s;
}

// Checks a selection over (layer, index) order: every kept score ≥ every pruned score, and among equal
// scores the kept ones come first in (layer, flat index) order.
void expect_top_k_order(const std::vector<std::vector<double>>& s, const std::vector<std::vector<double>>& m) {
  double min_kept = INFINITY, max_pruned = -INFINITY;
  for (size_t l = 0; l < s.size(); ++l)
    for (size_t i = 0; i < s[l].size(); ++i) (m[l][i] ? min_kept : max_pruned) = m[l][i] ? std::min(min_kept, s[l][i]) : std::max(max_pruned, s[l][i]);
  EXPECT_GE(min_kept, max_pruned);
  if (min_kept != max_pruned) return;
  bool seen_pruned_tie = false;
  for (size_t l = 0; l < s.size(); ++l)
    for (size_t i = 0; i < s[l].size(); ++i)
      if (s[l][i] == min_kept) {
        if (!m[l][i]) seen_pruned_tie = true;
        else EXPECT_FALSE(seen_pruned_tie) << "tie at layer " << l << " index " << i << " kept after a pruned tie";
      }
}

std::vector<std::vector<double>> vecs(const std::vector<Tensor>& ts) {
  std::vector<std::vector<double>> out;
  for (auto& t : ts) out.push_back(t.to_vector<double>());
  return out;
}

}  // namespace

TEST(Prunable, DefaultSetAndSwitches) {
  ModelPtr m = make_model({"resnet20", 10, 3, {}, ""}, 1);
  auto all = prunable_params(*m);
  ASSERT_EQ(all.size(), 20u);  // stem + 18 block convs + fc
  EXPECT_EQ(all.front().name, "stem.0.weight");
  EXPECT_EQ(all.back().name, "fc.weight");
  PrunableSpec spec;
  spec.skip_first_conv = true;
  EXPECT_EQ(prunable_params(*m, spec).front().name, "blocks.0.c1.weight");
  spec = {};
  spec.skip_classifier = true;
  EXPECT_EQ(prunable_params(*m, spec).back().name, "blocks.8.c2.weight");
  spec = {};
  spec.linear = false;
  EXPECT_EQ(prunable_params(*m, spec).size(), 19u);
  ModelPtr v = make_model({"vgg11", 10, 3, {}, "pdd"}, 1);
  spec = {};
  spec.skip_classifier = true;
  EXPECT_EQ(prunable_params(*v, spec).back().name, "classifier.4.weight");  // last Linear skipped, not the first
}

TEST(Pruner, KeepCount) {
  EXPECT_EQ(keep_count(100, 0.36), 64);
  EXPECT_EQ(keep_count(10, 0.9), 1);
  EXPECT_EQ(keep_count(1000, 0.95), 50);
  EXPECT_EQ(keep_count(7, 0.0), 7);
  EXPECT_EQ(keep_count(3, 0.5), 2);  // ⌈1.5⌉
}

TEST(Pruner, GlobalTopKHitsTheExactCountWithDeterministicTies) {
  auto net = three_layers();
  auto ps = prunable_params(*net);
  const int64_t total = 5 * 18 + 7 * 45 + 3 * 7;
  for (double s : {0.0, 0.1, 0.36, 0.5, 0.79, 0.9, 0.95}) {
    SCOPED_TRACE(s);
    Scores sc = tied_scores(ps, 6, 3);
    PruneConfig cfg;
    cfg.sparsity = s;
    cfg.min_keep = true;
    PruneResult r = prune(ps, sc, cfg);
    EXPECT_EQ(r.total, total);
    EXPECT_EQ(r.target_kept, keep_count(total, s));
    // Reference: a full sort by (score desc, layer, index), the first k kept, then any emptied layer
    // gets back its first best weight.
    auto sv = vecs(sc);
    std::vector<std::tuple<double, size_t, size_t>> all;
    for (size_t l = 0; l < sv.size(); ++l)
      for (size_t i = 0; i < sv[l].size(); ++i) all.emplace_back(-sv[l][i], l, i);
    std::sort(all.begin(), all.end());
    std::vector<std::vector<double>> ref;
    for (auto& v : sv) ref.emplace_back(v.size(), 0.0);
    for (int64_t k = 0; k < keep_count(total, s); ++k) ref[std::get<1>(all[size_t(k)])][std::get<2>(all[size_t(k)])] = 1;
    int64_t rescued = 0;
    for (size_t l = 0; l < ref.size(); ++l)
      if (std::count(ref[l].begin(), ref[l].end(), 1.0) == 0) {
        ref[l][size_t(std::max_element(sv[l].begin(), sv[l].end()) - sv[l].begin())] = 1;
        ++rescued;
      }
    EXPECT_EQ(vecs(r.masks.masks), ref);
    EXPECT_EQ(r.kept, keep_count(total, s) + rescued);
    EXPECT_DOUBLE_EQ(r.sparsity, 1.0 - double(r.kept) / double(total));
    // Same scores, same mask.
    EXPECT_EQ(flat(prune(ps, sc, cfg).masks.masks), flat(r.masks.masks));
  }
}

TEST(Pruner, LayerScopeHitsEachLayersCount) {
  auto net = three_layers();
  auto ps = prunable_params(*net);
  Scores sc = tied_scores(ps, 4, 9);
  PruneConfig cfg;
  cfg.sparsity = 0.7;
  cfg.scope = Scope::Layer;
  PruneResult r = prune(ps, sc, cfg);
  auto s = vecs(sc), m = vecs(r.masks.masks);
  for (size_t l = 0; l < ps.size(); ++l) {
    EXPECT_EQ(r.layers[l].kept, keep_count(r.layers[l].total, 0.7)) << ps[l].name;
    expect_top_k_order({s[l]}, {m[l]});
  }
}

TEST(Pruner, ChannelMasksKeepWholeRowsWithTheBestMeans) {
  auto net = three_layers();
  auto ps = prunable_params(*net);
  Rng rng(4);
  Scores sc;
  for (auto& p : ps) sc.push_back(Tensor::uniform(p.weight().shape(), rng, 0, 1, DType::F64));
  PruneConfig cfg;
  cfg.sparsity = 0.5;
  cfg.granularity = parse_granularity("channel");
  PruneResult r = prune(ps, sc, cfg);
  // Reference: rows ranked by mean score, taken until half of the weights are covered.
  struct Row { double mean; size_t layer; int64_t row, size; };
  std::vector<Row> rows;
  auto s = vecs(sc), m = vecs(r.masks.masks);
  for (size_t l = 0; l < ps.size(); ++l) {
    const int64_t R = ps[l].weight().size(0), C = ps[l].weight().numel() / R;
    for (int64_t i = 0; i < R; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < C; ++j) sum += s[l][size_t(i * C + j)];
      rows.push_back({sum / double(C), l, i, C});
      for (int64_t j = 1; j < C; ++j) ASSERT_EQ(m[l][size_t(i * C + j)], m[l][size_t(i * C)]) << "row not uniform";
    }
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.mean > b.mean; });
  const int64_t target = keep_count(r.total, 0.5);
  int64_t covered = 0;
  for (const Row& row : rows) {
    const int64_t C = ps[row.layer].weight().numel() / ps[row.layer].weight().size(0);
    const bool expect_kept = covered < target;
    EXPECT_EQ(m[row.layer][size_t(row.row * C)] != 0, expect_kept) << "layer " << row.layer << " row " << row.row;
    if (expect_kept) covered += row.size;
  }
  EXPECT_EQ(r.kept, covered);
  EXPECT_GE(r.kept, target);
}

TEST(Pruner, BlockMasksFollowTheGemmViewTiles) {
  auto net = three_layers();
  auto ps = prunable_params(*net);
  Rng rng(8);
  Scores sc;
  for (auto& p : ps) sc.push_back(Tensor::uniform(p.weight().shape(), rng, 0, 1, DType::F64));
  PruneConfig cfg;
  cfg.sparsity = 0.6;
  cfg.scope = Scope::Layer;
  cfg.granularity = parse_granularity("block:2x4");
  EXPECT_EQ(cfg.granularity.block_rows, 2);
  EXPECT_EQ(cfg.granularity.block_cols, 4);
  PruneResult r = prune(ps, sc, cfg);
  auto s = vecs(sc), m = vecs(r.masks.masks);
  for (size_t l = 0; l < ps.size(); ++l) {
    const int64_t R = ps[l].weight().size(0), C = ps[l].weight().numel() / R;
    const int64_t nbr = (R + 1) / 2, nbc = (C + 3) / 4;
    std::vector<std::pair<double, int64_t>> blocks;  // (mean, block id)
    std::vector<int64_t> size(size_t(nbr * nbc), 0);
    std::vector<double> sum(size_t(nbr * nbc), 0);
    for (int64_t i = 0; i < R; ++i)
      for (int64_t j = 0; j < C; ++j) {
        const int64_t b = (i / 2) * nbc + j / 4;
        sum[size_t(b)] += s[l][size_t(i * C + j)];
        ++size[size_t(b)];
        ASSERT_EQ(m[l][size_t(i * C + j)], m[l][size_t((i / 2) * 2 * C + (j / 4) * 4)]) << "tile not uniform";
      }
    for (int64_t b = 0; b < nbr * nbc; ++b) blocks.push_back({sum[size_t(b)] / double(size[size_t(b)]), b});
    std::sort(blocks.begin(), blocks.end(), [](auto& a, auto& b) { return a.first > b.first; });
    const int64_t target = keep_count(R * C, 0.6);
    int64_t covered = 0;
    for (auto& [mean, b] : blocks) {
      const int64_t i0 = (b / nbc) * 2, j0 = (b % nbc) * 4;
      EXPECT_EQ(m[l][size_t(i0 * C + j0)] != 0, covered < target) << ps[l].name << " block " << b;
      if (covered < target) covered += size[size_t(b)];
    }
    EXPECT_EQ(r.layers[l].kept, covered);
  }
  EXPECT_EQ(parse_granularity("block:32").block_cols, 32);
  EXPECT_THROW(parse_granularity("block:0x4"), Error);
  EXPECT_THROW(parse_granularity("tiles"), Error);
}

TEST(Pruner, TwoFourKeepsTheTwoBestOfEveryFour) {
  auto net = three_layers();
  auto ps = prunable_params(*net);
  Scores sc = tied_scores(ps, 5, 2);
  PruneConfig cfg;
  cfg.granularity = parse_granularity("nm:2:4");
  EXPECT_THROW(prune(ps, sc, cfg), Error);  // sparsity 0.9 is not what 2:4 gives
  cfg.sparsity = 0.5;
  PruneResult r = prune(ps, sc, cfg);
  auto s = vecs(sc), m = vecs(r.masks.masks);
  for (size_t l = 0; l < ps.size(); ++l) {
    const int64_t R = ps[l].weight().size(0), C = ps[l].weight().numel() / R;
    for (int64_t i = 0; i < R; ++i)
      for (int64_t j0 = 0; j0 < C; j0 += 4) {
        const int64_t len = std::min<int64_t>(4, C - j0);
        std::vector<int64_t> idx;
        for (int64_t j = j0; j < j0 + len; ++j) idx.push_back(i * C + j);
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return s[l][size_t(a)] > s[l][size_t(b)]; });
        for (size_t k = 0; k < idx.size(); ++k)
          EXPECT_EQ(m[l][size_t(idx[k])] != 0, k < 2) << ps[l].name << " row " << i << " run " << j0;
      }
  }
  EXPECT_EQ(r.kept, r.target_kept);
}

TEST(Pruner, LayerFloorFailsClearlyOrKeepsTheBestWeight) {
  auto net = three_layers();
  auto ps = prunable_params(*net);
  Scores sc = tied_scores(ps, 3, 5);
  for (auto& v : sc) v = Tensor::from_vector<double>(v.shape(), [&] {
    auto x = v.to_vector<double>();
    for (double& e : x) e += 10;
    return x;
  }());
  // The linear layer scores far below the convs: global pruning at 90% would empty it.
  std::vector<double> low(21);
  for (size_t i = 0; i < low.size(); ++i) low[i] = 0.01 * double(i % 7);
  sc[2] = Tensor::from_vector<double>({3, 7}, low);
  PruneConfig cfg;
  cfg.sparsity = 0.9;
  try {
    prune(ps, sc, cfg);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'3.weight'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--min-keep"), std::string::npos) << e.what();
  }
  cfg.min_keep = true;
  PruneResult r = prune(ps, sc, cfg);
  EXPECT_EQ(r.layers[2].kept, 1);
  EXPECT_EQ(r.masks.masks[2].to_vector<double>()[6], 1.0);  // first index holding the best score 0.06
  EXPECT_EQ(r.kept, r.target_kept + 1);
  // NaN scores name the layer.
  sc[1].data<double>()[4] = NAN;
  EXPECT_THROW(prune(ps, sc, cfg), Error);
}

TEST(MaskEnforcement, MaskedWeightsStayZeroThrough100SgdStepsWithMomentumAndDecay) {
  ModelPtr m = make_model({"resnet8", 10, 3, {}, ""}, 2);
  m->train();
  auto ps = prunable_params(*m);
  PruneConfig cfg;
  cfg.sparsity = 0.7;
  PruneResult r = prune(ps, score_random(ps, 3), cfg);
  apply_masks(ps, r.masks);
  SgdConfig sc;
  sc.lr = 0.05;
  sc.momentum = 0.9;
  sc.weight_decay = 5e-4;
  sc.nesterov = true;
  Sgd opt(m->parameters(), sc);
  enforce_masks(opt, ps, r.masks);
  std::vector<std::vector<double>> w0;
  for (auto& p : ps) w0.push_back(p.weight().to_vector<double>());
  Rng rng(5);
  for (int step = 0; step < 100; ++step) {
    Tensor x = Tensor::randn({4, 3, 8, 8}, rng);
    Tensor y = random_labels(4, 10, uint64_t(step));
    opt.zero_grad();
    cross_entropy(m->forward(x), y).backward();
    opt.step();
  }
  const auto params = m->parameters();
  for (size_t l = 0; l < ps.size(); ++l) {
    const auto w = ps[l].weight().to_vector<double>(), mask = r.masks.masks[l].to_vector<double>();
    size_t idx = 0;
    while (!params[idx].same(ps[l].weight())) ++idx;
    const auto mom = opt.momentum_buffers()[idx].to_vector<double>();
    int64_t moved = 0, kept = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      if (mask[i] == 0) {
        ASSERT_EQ(w[i], 0.0) << ps[l].name << " pruned weight " << i << " revived";
        ASSERT_EQ(mom[i], 0.0) << ps[l].name << " momentum " << i;
      } else {
        ++kept;
        moved += w[i] != w0[l][i];
      }
    }
    EXPECT_EQ(moved, kept) << ps[l].name << ": kept weights should all train";
  }
}
