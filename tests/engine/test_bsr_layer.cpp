// Block-sparse Conv2d and Linear layers through the BSR kernels equal the masked-dense reference
// (SparseKernelMode::Off): forward, input gradient, value and bias gradients, and 4 SGD steps (momentum,
// weight decay); block detection on block, unstructured and near-block masks; the Auto crossover.
// Masks are b×b tiles of the GEMM view (rows = Cout, cols = Cin·k·k), with sizes not multiples of b.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "engine/bsr_op.h"
#include "engine/nn.h"
#include "engine/optim.h"
#include "engine/sparse.h"

using namespace sparrow;

namespace {

struct ModeGuard {
  SparseKernelMode saved = sparse_kernel_mode();
  double crossover = bsr_kernel_crossover();
  int64_t chunk = bsr_conv_chunk_floats();
  ~ModeGuard() {
    set_sparse_kernel_mode(saved);
    set_bsr_kernel_crossover(crossover);
    set_bsr_conv_chunk_floats(chunk);
  }
};

// |a − b| ≤ tol · max|ref| everywhere (fp32 sums of up to ~130 products, in a different order than OpenBLAS).
void expect_close(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  const auto a = got.to_vector<float>(), b = ref.to_vector<float>();
  ASSERT_EQ(a.size(), b.size()) << what;
  double scale = 0;
  for (float v : b) scale = std::max(scale, double(std::fabs(v)));
  ASSERT_GT(scale, 0.0) << what << ": all-zero reference";
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::fabs(double(a[i]) - b[i]) / scale;
    if (e > worst) worst = e, at = i;
  }
  EXPECT_LE(worst, tol) << what << ": worst relative error at index " << at << ": " << a[at] << " vs " << b[at]
                        << " (scale " << scale << ")";
}

// 0/1 mask of `shape` (GEMM view rows = shape[0]) keeping whole b×b tiles with probability `keep`; block row
// `empty_row` (if ≥ 0) loses every tile.
Tensor block_mask(const Shape& shape, int b, double keep, int empty_row, uint64_t seed) {
  const int64_t rows = shape[0], cols = shape_numel(shape) / rows;
  const int64_t br = (rows + b - 1) / b, bc = (cols + b - 1) / b;
  Rng rng(seed);
  std::vector<uint8_t> tile(size_t(br * bc));
  for (auto& t : tile) t = rng.uniform() < keep;
  if (empty_row >= 0)
    for (int64_t j = 0; j < bc; ++j) tile[size_t(empty_row * bc + j)] = 0;
  // Within the first 2b×2b tile, one b-tile kept and one empty: the mask is b-tiled but not 2b-tiled (so
  // detection must answer b), and never empty.
  if (br > 1) {
    if (empty_row != 0) tile[0] = 1;
    if (empty_row == 0) tile[size_t(bc)] = 1;
    else if (empty_row != 1 && b < 32) tile[size_t(bc)] = 0;
  } else if (bc > 1 && b < 32) {
    tile[0] = 1, tile[1] = 0;
  } else {
    tile[0] = 1;
  }
  Tensor m = Tensor::zeros(shape);
  float* p = m.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) p[r * cols + c] = tile[size_t((r / b) * bc + c / b)];
  return m;
}

struct ConvCase {
  int cin, cout, k, stride, pad;
  bool bias;
  int block;
  double keep;     // fraction of tiles kept
  int empty_row;   // a fully pruned block row, or -1
  int64_t chunk;   // bsr_conv_chunk_floats for the run (small: several image chunks)
};

std::ostream& operator<<(std::ostream& o, const ConvCase& c) {
  return o << c.cin << "->" << c.cout << " k" << c.k << " s" << c.stride << " p" << c.pad << (c.bias ? " bias" : "")
           << " block " << c.block << " keep " << c.keep << " chunk " << c.chunk;
}

// Runs the same layer through the BSR path (mode On) and the masked-dense path (mode Off) for 4 SGD steps.
template <typename Layer>
void compare_training(std::shared_ptr<Layer> bsr, std::shared_ptr<Layer> ref, const Shape& x_shape, int block,
                      uint64_t seed) {
  ASSERT_TRUE(bsr->is_sparse());
  ASSERT_EQ(bsr->bsr_block(), block);
  Sgd ob(bsr->parameters(), {0.05, 0.9, 0.0, 5e-4, true}), orf(ref->parameters(), {0.05, 0.9, 0.0, 5e-4, true});
  Rng rng(seed);
  for (int step = 0; step < 4; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    Tensor x = Tensor::randn(x_shape, rng);
    Tensor xb = x.clone().set_requires_grad(true), xr = x.clone().set_requires_grad(true);
    set_sparse_kernel_mode(SparseKernelMode::On);
    ASSERT_TRUE(bsr->uses_bsr_kernel(Device::CPU));
    Tensor yb = bsr->forward(xb);
    set_sparse_kernel_mode(SparseKernelMode::Off);
    ASSERT_FALSE(ref->uses_bsr_kernel(Device::CPU));
    Tensor yr = ref->forward(xr);
    expect_close(yb, yr, 1e-5, "forward");
    Tensor gy = Tensor::randn(yb.shape(), rng);
    ob.zero_grad();
    orf.zero_grad();
    yb.backward(gy);
    yr.backward(gy);
    expect_close(xb.grad(), xr.grad(), 1e-5, "input gradient");
    const auto pb = bsr->named_parameters(), pr = ref->named_parameters();
    ASSERT_EQ(pb.size(), pr.size());
    for (size_t i = 0; i < pb.size(); ++i) {
      ASSERT_EQ(pb[i].first, pr[i].first);
      expect_close(pb[i].second.grad(), pr[i].second.grad(), 1e-5, pb[i].first + " gradient");
    }
    ob.step();
    orf.step();
  }
  expect_close(bsr->dense_weight(), ref->dense_weight(), 1e-5, "weights after 4 SGD steps");
  if (bsr->bias.defined()) expect_close(bsr->bias, ref->bias, 1e-5, "bias after 4 SGD steps");
  // Pruned entries stay exactly zero.
  const auto m = bsr->sparse().mask().template to_vector<float>(), w = bsr->dense_weight().template to_vector<float>();
  int64_t revived = 0;
  for (size_t i = 0; i < m.size(); ++i) revived += m[i] == 0 && w[i] != 0.f;
  EXPECT_EQ(revived, 0) << "pruned entries revived";
}

}  // namespace

class BsrConvLayer : public ::testing::TestWithParam<ConvCase> {};

TEST_P(BsrConvLayer, BsrEqualsMaskedDenseThroughTraining) {
  const ConvCase c = GetParam();
  ModeGuard guard;
  set_bsr_conv_chunk_floats(c.chunk);
  auto make = [&]() {
    Rng r(5);
    auto conv = std::make_shared<Conv2d>(c.cin, c.cout, c.k, c.stride, c.pad, c.bias, r);
    conv->make_sparse(block_mask(conv->weight.shape(), c.block, c.keep, c.empty_row, 9));
    return conv;
  };
  auto bsr = make();
  if (c.keep <= 0.5 && c.cin * c.k * c.k > 2 * c.block) {  // then the unfolding skips some input columns
    auto L = bsr_layout_from_sparse(bsr->sparse(), c.block);
    EXPECT_LT(L->used_cols.size(), size_t(L->pattern.block_cols()));
  }
  compare_training(bsr, make(), {3, c.cin, 9, 7}, c.block, 1);
}

// GEMM views: 20x45, 40x63, 70x108, 33x16, 64x27 (K < b), 24x72; none a multiple of its block except where
// noted by the shape. Chunk 1 forces one image per chunk (the SDDMM then sums three chunks).
INSTANTIATE_TEST_SUITE_P(Layers, BsrConvLayer,
                         ::testing::Values(ConvCase{5, 20, 3, 1, 1, true, 8, 0.5, 1, int64_t(8) << 20},
                                           ConvCase{7, 40, 3, 2, 1, false, 16, 0.5, 0, int64_t(8) << 20},
                                           ConvCase{12, 70, 3, 1, 1, true, 32, 0.5, 1, 1},
                                           ConvCase{16, 33, 1, 2, 0, false, 8, 0.3, 2, 1},
                                           ConvCase{3, 64, 3, 1, 1, true, 32, 0.6, -1, int64_t(8) << 20},
                                           ConvCase{8, 24, 3, 2, 0, true, 8, 0.4, 1, 2400}));

struct LinearCase {
  int in, out;
  bool bias;
  int block;
  double keep;
  int empty_row;
  int batch;
};

class BsrLinearLayer : public ::testing::TestWithParam<LinearCase> {};

TEST_P(BsrLinearLayer, BsrEqualsMaskedDenseThroughTraining) {
  const LinearCase c = GetParam();
  ModeGuard guard;
  auto make = [&]() {
    Rng r(5);
    auto lin = std::make_shared<Linear>(c.in, c.out, c.bias, r);
    lin->make_sparse(block_mask(lin->weight.shape(), c.block, c.keep, c.empty_row, 11));
    return lin;
  };
  compare_training(make(), make(), {c.batch, c.in}, c.block, 2);
}

INSTANTIATE_TEST_SUITE_P(Layers, BsrLinearLayer,
                         ::testing::Values(LinearCase{45, 20, true, 8, 0.5, 1, 5}, LinearCase{100, 70, false, 16, 0.4, 2, 7},
                                           LinearCase{130, 37, true, 32, 0.5, 0, 13}, LinearCase{64, 10, true, 32, 1.0, -1, 1},
                                           LinearCase{512, 96, false, 32, 0.1, 1, 11}));

TEST(BsrDetect, FindsTheLargestWholeTile) {
  Rng r(3);
  for (int b : {8, 16, 32}) {
    SCOPED_TRACE(::testing::Message() << "block " << b);
    Conv2d conv(13, 70, 3, 1, 1, false, r);  // GEMM view 70 × 117
    conv.make_sparse(block_mask(conv.weight.shape(), b, 0.5, 1, 100 + b));
    EXPECT_EQ(detect_block(conv.sparse()), b);
    EXPECT_EQ(conv.bsr_block(), b);
    // One extra entry in an empty tile breaks the tiling at every block size.
    Tensor m = conv.sparse().mask();
    const int64_t cols = 13 * 9;
    m.data<float>()[b * cols + 5] = 1.f;  // block row 1 (of any b) is empty
    conv.make_sparse(m);
    EXPECT_EQ(conv.bsr_block(), 0);
  }
  // A 32×16 tiling is a 16×16 one.
  Linear lin(100, 70, false, r);
  Tensor m = Tensor::zeros(lin.weight.shape());
  for (int64_t o = 0; o < 70; ++o)
    for (int64_t i = 0; i < 100; ++i) m.data<float>()[o * 100 + i] = ((o / 32) + (i / 16)) % 2;
  lin.make_sparse(m);
  EXPECT_EQ(lin.bsr_block(), 16);
  // Unstructured random mask, and the empty pattern.
  Tensor u = Tensor::empty(lin.weight.shape());
  for (int64_t i = 0; i < u.numel(); ++i) u.data<float>()[i] = r.uniform() < 0.5 ? 1.f : 0.f;
  lin.make_sparse(u);
  EXPECT_EQ(lin.bsr_block(), 0);
  lin.make_sparse(Tensor::zeros(lin.weight.shape()));
  EXPECT_EQ(lin.bsr_block(), 0);
  EXPECT_THROW(bsr_layout_from_sparse(lin.sparse(), 8), Error);
}

TEST(BsrLayout, SlotsPointAtTheDenseEntries) {
  Rng r(4);
  Linear lin(45, 20, false, r);
  lin.make_sparse(block_mask(lin.weight.shape(), 8, 0.5, 1, 7));
  auto L = bsr_layout_from_sparse(lin.sparse(), 8);
  bsr_pattern_validate(L->pattern);
  // BSR values from the layout's slots equal bsr_from_dense of the masked dense weight.
  const Tensor dense = lin.dense_weight();
  std::vector<float> want(size_t(L->pattern.value_count()));
  bsr_from_dense(L->pattern, dense.data<float>(), want.data());
  std::vector<float> got(want.size(), 0.f);
  const float* v = lin.sparse().values.data<float>();
  for (size_t i = 0; i < L->slot.size(); ++i) got[size_t(L->slot[i])] = v[i];
  EXPECT_EQ(got, want);
  // The compact pattern: the same blocks over the used block columns only, renumbered in order.
  bsr_pattern_validate(L->compact);
  EXPECT_EQ(L->compact.row_ptr, L->pattern.row_ptr);
  int compact_in = 0;
  for (size_t j = 0; j < L->used_cols.size(); ++j) {
    if (j > 0) {
      EXPECT_LT(L->used_cols[j - 1], L->used_cols[j]);
    }
    compact_in += bsr_extent(45, L->used_cols[j], 8);
  }
  EXPECT_EQ(L->compact.in, compact_in);
  EXPECT_LT(int(L->used_cols.size()), L->pattern.block_cols()) << "the mask should leave a block column unused";
  for (size_t k = 0; k < L->pattern.col_idx.size(); ++k)
    EXPECT_EQ(L->used_cols[size_t(L->compact.col_idx[k])], L->pattern.col_idx[k]);
  EXPECT_THROW(bsr_layout_from_sparse(lin.sparse(), 16), Error);  // 8-tiles are not 16-tiles here
}

TEST(BsrKernelMode, AutoFollowsTheCrossoverAndTheBlockStructure) {
  ModeGuard guard;
  Rng r(1);
  Conv2d conv(8, 40, 3, 1, 1, false, r);
  conv.make_sparse(block_mask(conv.weight.shape(), 16, 0.5, -1, 3));
  const double density = conv.sparse().density();
  ASSERT_GT(density, 0.2);
  ASSERT_LT(density, 0.6);
  set_sparse_kernel_mode(SparseKernelMode::Auto);
  EXPECT_TRUE(conv.uses_bsr_kernel(Device::CPU));
  set_bsr_kernel_crossover(density / 2);
  EXPECT_FALSE(conv.uses_bsr_kernel(Device::CPU));
  set_sparse_kernel_mode(SparseKernelMode::On);
  EXPECT_TRUE(conv.uses_bsr_kernel(Device::CPU));
  EXPECT_FALSE(conv.uses_bsr_kernel(Device::CUDA));
  set_sparse_kernel_mode(SparseKernelMode::Off);
  EXPECT_FALSE(conv.uses_bsr_kernel(Device::CPU));
  // Unstructured masks never take the BSR path, whatever the mode.
  set_sparse_kernel_mode(SparseKernelMode::On);
  Tensor u = Tensor::empty(conv.weight.shape());
  for (int64_t i = 0; i < u.numel(); ++i) u.data<float>()[i] = r.uniform() < 0.3 ? 1.f : 0.f;
  conv.make_sparse(u);
  EXPECT_FALSE(conv.uses_bsr_kernel(Device::CPU));
  EXPECT_TRUE(conv.uses_sparse_kernel(Device::CPU));
  Conv2d dense(8, 40, 3, 1, 1, false, r);
  EXPECT_FALSE(dense.uses_bsr_kernel(Device::CPU));
}

// After make_sparse with a new block mask (a new pattern), the cached layout is rebuilt.
TEST(BsrConvLayerPattern, NewMaskRebuildsTheLayout) {
  ModeGuard guard;
  auto make = [](uint64_t mask_seed, int b) {
    Rng r(5);
    auto conv = std::make_shared<Conv2d>(6, 20, 3, 1, 1, true, r);
    conv->make_sparse(block_mask(conv->weight.shape(), b, 0.5, -1, mask_seed));
    return conv;
  };
  auto conv = make(1, 8);
  Rng rng(2);
  Tensor x = Tensor::randn({2, 6, 7, 5}, rng);
  set_sparse_kernel_mode(SparseKernelMode::On);
  conv->forward(x);
  Tensor m2 = block_mask(conv->weight.shape(), 16, 0.5, -1, 2);
  conv->make_sparse(m2);
  EXPECT_EQ(conv->bsr_block(), 16);
  Tensor yb = conv->forward(x);
  set_sparse_kernel_mode(SparseKernelMode::Off);
  Tensor yr = conv->forward(x);
  expect_close(yb, yr, 1e-5, "forward after a new mask");
}
