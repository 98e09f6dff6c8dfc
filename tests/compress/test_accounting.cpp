// MACs / parameters / nonzeros in the thop convention, against sums written out from each architecture's
// geometry, and the counts of sparse, masked and narrowed models.
#include <gtest/gtest.h>

#include "compress/accounting.h"
#include "compress/criteria.h"
#include "engine/sparse.h"
#include "models/models.h"

using namespace sparrow;

namespace {

// conv MACs = Cout·H·W·(Cin·9 + bias); linear = In·Out; BN = 0.
int64_t conv_macs(int64_t cin, int64_t cout, int64_t hw, bool bias) { return cout * hw * hw * (cin * 9 + (bias ? 1 : 0)); }

int64_t vgg_macs(const std::vector<int64_t>& widths, const std::vector<int>& pools, int classes) {
  int64_t hw = 32, cin = 3, macs = 0;
  for (size_t i = 0; i < widths.size(); ++i) {
    macs += conv_macs(cin, widths[i], hw, true);
    cin = widths[i];
    for (int p : pools)
      if (p == int(i)) hw /= 2;
  }
  return macs + cin * 512 + 512 * 512 + 512 * classes;
}

}  // namespace

TEST(Accounting, Resnet20PddVariantWidensOneBlockEarly) {
  // ALGORITHMS.md §3: the public code's "ResNet-20" has 61.8M MACs / 0.339M parameters.
  ModelPtr m = make_model({"resnet20-pdd", 10, 3, {}, ""}, 1);
  CostReport r = count_costs(*m, {1, 3, 32, 32});
  // Blocks 0-1 16->16, block 2 16->32 (stride 1, at 32x32), blocks 3-4 32->32, block 5 32->64 (at 16x16),
  // blocks 6-8 64->64 at 8x8.
  const int64_t ref = conv_macs(3, 16, 32, false) + 4 * conv_macs(16, 16, 32, false) + conv_macs(16, 32, 32, false) +
                      conv_macs(32, 32, 32, false) + 4 * conv_macs(32, 32, 16, false) + conv_macs(32, 64, 16, false) +
                      conv_macs(64, 64, 16, false) + 6 * conv_macs(64, 64, 8, false) + 64 * 10;
  EXPECT_EQ(r.macs, ref);
  EXPECT_EQ(r.macs, 61784704);
  EXPECT_EQ(r.params, 339034);
}

TEST(Accounting, ResNet20At32x32) {
  ModelPtr m = make_model({"resnet20", 10, 3, {}, ""}, 1);
  CostReport r = count_costs(*m, {1, 3, 32, 32});
  int64_t ref = conv_macs(3, 16, 32, false) + 6 * conv_macs(16, 16, 32, false) + conv_macs(16, 32, 16, false) +
                5 * conv_macs(32, 32, 16, false) + conv_macs(32, 64, 8, false) + 5 * conv_macs(64, 64, 8, false) + 64 * 10;
  EXPECT_EQ(r.macs, ref);
  EXPECT_EQ(r.macs, 40551040);  // ≈40.6M
  EXPECT_EQ(r.params, 269722);  // ≈0.27M
  EXPECT_EQ(r.dense_macs, r.macs);
  EXPECT_EQ(r.sparsity, 0.0);
  EXPECT_EQ(r.prunable, r.params - 2 * (16 * 7 + 32 * 6 + 64 * 6) - 10);  // minus BN γ/β and the fc bias
  ASSERT_EQ(r.layers.size(), 19u + 19u + 1u);  // convs, BNs, fc
  EXPECT_EQ(r.layers[0].name, "stem.0");
  EXPECT_EQ(r.layers[0].type, "Conv2d");
  EXPECT_EQ(r.layers[0].macs, 442368);
  EXPECT_EQ(r.layers[1].type, "BatchNorm2d");
  EXPECT_EQ(r.layers[1].macs, 0);
  EXPECT_EQ(r.layers[1].params, 32);
  EXPECT_EQ(r.layers.back().name, "fc");
  EXPECT_EQ(r.layers.back().shape, (Shape{10, 64}));
  EXPECT_EQ(r.layers.back().params, 650);
}

TEST(Accounting, VggWithPddClassifier) {
  ModelPtr v11 = make_model({"vgg11", 10, 3, {}, "pdd"}, 1);
  CostReport r11 = count_costs(*v11, {1, 3, 32, 32});
  EXPECT_EQ(r11.macs, vgg_macs({64, 128, 256, 256, 512, 512, 512, 512}, {0, 1, 3, 5, 7}, 10));
  EXPECT_EQ(r11.macs, 153445376);  // ALGORITHMS.md: ≈153.4M
  EXPECT_EQ(r11.params, 9756426);  // ≈9.76M
  ModelPtr v16 = make_model({"vgg16", 10, 3, {}, "pdd"}, 1);
  CostReport r16 = count_costs(*v16, {1, 3, 32, 32});
  EXPECT_EQ(r16.macs, vgg_macs({64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512}, {1, 3, 6, 9, 12}, 10));
  EXPECT_NEAR(double(r16.macs) / 1e6, 314.0, 0.05);    // ≈314M
  EXPECT_NEAR(double(r16.params) / 1e6, 15.25, 0.005); // ≈15.25M
}

TEST(Accounting, SparseAndMaskedLayersCountTheirNonzeros) {
  ModelPtr a = make_model({"resnet20", 10, 3, {}, ""}, 2);
  ModelPtr b = make_model({"resnet20", 10, 3, {}, ""}, 2);
  auto pa = prunable_params(*a), pb = prunable_params(*b);
  PruneConfig cfg;
  cfg.sparsity = 0.75;
  PruneResult pr = prune(pa, score_magnitude(pa), cfg);
  apply_masks(pa, pr.masks);   // masked dense
  make_sparse(pb, pr.masks);   // pattern + values
  a->train();
  CostReport ra = count_costs(*a, {1, 3, 32, 32}), rb = count_costs(*b, {1, 3, 32, 32});
  EXPECT_TRUE(a->is_training());
  EXPECT_EQ(ra.macs, rb.macs);
  EXPECT_EQ(ra.params, 269722);
  EXPECT_EQ(rb.params, 269722);
  EXPECT_EQ(ra.nonzeros, rb.nonzeros);
  EXPECT_EQ(rb.dense_macs, 40551040);
  EXPECT_DOUBLE_EQ(rb.sparsity, pr.sparsity);
  EXPECT_EQ(rb.prunable - rb.prunable_nonzeros, pr.total - pr.kept);
  // Each conv: nnz × output positions; the fc: nnz (batch 1).
  int64_t ref = 0;
  const int64_t hw[] = {32 * 32, 16 * 16, 8 * 8};
  for (size_t l = 0; l < pb.size(); ++l) {
    const int64_t nnz = pb[l].layer->sparse().nnz();
    if (l == pb.size() - 1) {
      ref += nnz;
    } else {
      const int64_t stage = l <= 6 ? 0 : (l <= 12 ? 1 : 2);  // stem + 6 convs at 32², then 6 at 16², 6 at 8²
      ref += nnz * hw[stage];
    }
  }
  EXPECT_EQ(rb.macs, ref);
  EXPECT_LT(rb.macs, rb.dense_macs);
}
