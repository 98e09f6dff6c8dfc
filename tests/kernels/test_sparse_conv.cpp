// Parity tests for the masked (fixed-pattern) convolution, NCHW activations, Cout×Cin×Kh×Kw weights:
// pattern construction, then all three passes (plain-loop reference and fast CPU path) against the dense
// reference convolution run on W⊙M, over ResNet/VGG layer shapes and awkward ones at densities 0–100%.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/base/device.h"
#include "engine/base/error.h"
#include "kernels/conv/conv.h"
#include "kernels/sparse/sparse_conv.h"
#include "tests/kernels/check.h"

#if SPARROW_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace sparrow {
namespace {

using test::expect_close;
using test::random_vector;

Conv2dShape shape(int n, int cin, int h, int w, int cout, int kh, int kw, int stride, int pad) {
  return Conv2dShape{n, cin, h, w, cout, kh, kw, stride, pad};
}

std::string name(const Conv2dShape& s) {
  return str("n", s.n, " ", s.cin, "->", s.cout, " ", s.h, "x", s.w, " k", s.kh, "x", s.kw, " s", s.stride,
             " p", s.pad);
}

// Bernoulli(density) mask; `holes` also empties every third output channel and every fourth input channel
// (rows and transposed columns with no kept weight).
std::vector<float> make_mask(const Conv2dShape& s, double density, uint32_t seed, bool holes = false) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> m(size_t(s.w_size()));
  const int64_t khw = int64_t(s.kh) * s.kw;
  for (int64_t i = 0; i < s.w_size(); ++i) {
    const int co = int(i / (s.cin * khw)), ci = int((i / khw) % s.cin);
    const bool keep = u(gen) < density && !(holes && (co % 3 == 1 || ci % 4 == 2));
    m[size_t(i)] = keep ? 1.0f : 0.0f;
  }
  return m;
}

bool all_zero(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float e) { return e == 0.0f; });
}

// One configuration: pattern from the mask, values from a random dense weight, and the dense reference
// on W⊙M for all three passes.
template <typename T>
struct Case {
  Conv2dShape s;
  SparseConvPattern p;
  std::vector<T> values, w_masked, x, dy, bias;
  std::vector<T> y_ref, dx_ref, dw_ref, db_ref, dvalues_ref;
};

template <typename T>
Case<T> make_case(const Conv2dShape& s, const std::vector<float>& mask, uint32_t seed) {
  Case<T> c;
  c.s = s;
  c.p = sparse_conv_pattern_from_mask(s, mask.data());
  const std::vector<T> w = random_vector<T>(s.w_size(), seed);
  c.values.resize(size_t(c.p.nnz));
  sparse_conv_gather_values(c.p, w.data(), c.values.data());
  c.w_masked.resize(size_t(s.w_size()));
  sparse_conv_scatter_values(c.p, c.values.data(), c.w_masked.data());
  c.x = random_vector<T>(s.x_size(), seed + 1);
  c.dy = random_vector<T>(s.y_size(), seed + 2);
  c.bias = random_vector<T>(s.cout, seed + 3);
  c.y_ref.resize(size_t(s.y_size()));
  c.dx_ref.resize(size_t(s.x_size()));
  c.dw_ref.resize(size_t(s.w_size()));
  c.db_ref.resize(size_t(s.cout));
  conv2d_forward_ref_cpu(s, c.x.data(), c.w_masked.data(), c.bias.data(), c.y_ref.data());
  conv2d_backward_input_ref_cpu(s, c.dy.data(), c.w_masked.data(), c.dx_ref.data());
  conv2d_backward_weight_ref_cpu(s, c.x.data(), c.dy.data(), c.dw_ref.data(), c.db_ref.data());
  c.dvalues_ref.resize(size_t(c.p.nnz));
  sparse_conv_gather_values(c.p, c.dw_ref.data(), c.dvalues_ref.data());
  return c;
}

// Compares got with ref; an all-zero reference (no kept weights reach it) must be matched exactly.
template <typename T>
void expect_match(const std::vector<T>& got, const std::vector<T>& ref, double atol, double rtol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  if (ref.empty()) return;
  if (std::all_of(ref.begin(), ref.end(), [](T e) { return e == T(0); })) {
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i] != T(0)) {
        ADD_FAILURE() << what << ": reference all zero but element " << i << " = " << double(got[i]);
        return;
      }
    return;
  }
  expect_close(got, ref, atol, rtol, what.c_str());
}

enum class Path { Ref, Fast };

template <typename T>
void check_case(const Case<T>& c, Path path, double atol, double rtol) {
  const Conv2dShape& s = c.s;
  const bool ref = path == Path::Ref;
  const std::string tag = ref ? "ref " : "fast ";
  std::vector<T> y(size_t(s.y_size()), T(-7)), dx(size_t(s.x_size()), T(-7)), dv(size_t(c.p.nnz), T(-7)),
      db(size_t(s.cout), T(-7));
  if (ref) {
    sparse_conv2d_forward_ref_cpu(s, c.p, c.values.data(), c.x.data(), c.bias.data(), y.data());
    sparse_conv2d_backward_input_ref_cpu(s, c.p, c.values.data(), c.dy.data(), dx.data());
    sparse_conv2d_backward_weight_ref_cpu(s, c.p, c.x.data(), c.dy.data(), dv.data(), db.data());
  } else {
    sparse_conv2d_forward_cpu(s, c.p, c.values.data(), c.x.data(), c.bias.data(), y.data());
    sparse_conv2d_backward_input_cpu(s, c.p, c.values.data(), c.dy.data(), dx.data());
    sparse_conv2d_backward_weight_cpu(s, c.p, c.x.data(), c.dy.data(), dv.data(), db.data());
  }
  expect_match(y, c.y_ref, atol, rtol, tag + "forward");
  if (!ref) {
    // The forward's optional per-channel moments: y unchanged, mean and variance as the reference output's.
    std::vector<T> y2(size_t(s.y_size()), T(-7));
    ChannelMoments m;
    sparse_conv2d_forward_cpu(s, c.p, c.values.data(), c.x.data(), c.bias.data(), y2.data(), &m);
    EXPECT_EQ(y2, y) << "forward with moments";
    const int64_t plane = int64_t(s.oh()) * s.ow(), count = s.n * plane;
    ASSERT_EQ(m.count, count);
    std::vector<double> mean_ref(size_t(s.cout), 0.0), var_ref(size_t(s.cout), 0.0), var(size_t(s.cout));
    for (int co = 0; co < s.cout; ++co) {
      for (int n = 0; n < s.n; ++n)
        for (int64_t i = 0; i < plane; ++i) mean_ref[size_t(co)] += double(c.y_ref[size_t((n * s.cout + co) * plane + i)]);
      mean_ref[size_t(co)] /= double(count);
      for (int n = 0; n < s.n; ++n)
        for (int64_t i = 0; i < plane; ++i) {
          const double d = double(c.y_ref[size_t((n * s.cout + co) * plane + i)]) - mean_ref[size_t(co)];
          var_ref[size_t(co)] += d * d / double(count);
        }
      var[size_t(co)] = m.m2[size_t(co)] / double(count);
    }
    expect_match(m.mean, mean_ref, atol, rtol, tag + "forward moments: mean");
    expect_match(var, var_ref, atol, rtol, tag + "forward moments: variance");
  }
  expect_match(dx, c.dx_ref, atol, rtol, tag + "backward input");
  expect_match(dv, c.dvalues_ref, atol, rtol, tag + "backward weight (values)");
  expect_match(db, c.db_ref, atol, rtol, tag + "backward bias");
}

// ---------------------------------------------------------------------------------------------------
// Pattern construction.

TEST(SparseConvPattern, FromMaskMatchesFromIndices) {
  const Conv2dShape s = shape(1, 5, 7, 7, 6, 3, 3, 2, 1);
  const std::vector<float> mask = make_mask(s, 0.3, 11, true);
  const SparseConvPattern a = sparse_conv_pattern_from_mask(s, mask.data());
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < s.w_size(); ++i)
    if (mask[size_t(i)] != 0.0f) idx.push_back(i);
  ASSERT_GT(idx.size(), 0u);
  const SparseConvPattern b = sparse_conv_pattern_from_indices(s, idx.data(), int64_t(idx.size()));
  EXPECT_EQ(a.nnz, int64_t(idx.size()));
  EXPECT_EQ(a.index, idx);
  EXPECT_EQ(a.row_ptr, b.row_ptr);
  EXPECT_EQ(a.tap_ci, b.tap_ci);
  EXPECT_EQ(a.col_ptr, b.col_ptr);
  EXPECT_EQ(a.col_entry, b.col_entry);
  EXPECT_NEAR(a.density(), double(idx.size()) / double(s.w_size()), 1e-12);
  // Row structure and decoded taps agree with the flat indices.
  ASSERT_EQ(a.row_ptr.size(), size_t(s.cout) + 1);
  EXPECT_EQ(a.row_ptr.front(), 0);
  EXPECT_EQ(a.row_ptr.back(), a.nnz);
  for (int co = 0; co < s.cout; ++co)
    for (int64_t k = a.row_ptr[size_t(co)]; k < a.row_ptr[size_t(co) + 1]; ++k)
      EXPECT_EQ(a.index[size_t(k)], ((int64_t(co) * s.cin + a.tap_ci[size_t(k)]) * s.kh + a.tap_ky[size_t(k)]) * s.kw +
                                        a.tap_kx[size_t(k)]);
  // Holes: every third output channel has no kept weight.
  EXPECT_EQ(a.row_nnz(1), 0);
  EXPECT_EQ(a.row_nnz(4), 0);
  // The transposed pattern is a permutation of all entries, bucketed by (ci, input-gradient phase).
  std::vector<int32_t> seen(a.col_entry);
  std::sort(seen.begin(), seen.end());
  for (int64_t k = 0; k < a.nnz; ++k) EXPECT_EQ(seen[size_t(k)], k);
  const int ss = s.stride * s.stride;
  for (int ci = 0; ci < s.cin; ++ci)
    for (int ph = 0; ph < ss; ++ph)
      for (int64_t e = a.col_ptr[size_t(ci * ss + ph)]; e < a.col_ptr[size_t(ci * ss + ph) + 1]; ++e) {
        const int32_t k = a.col_entry[size_t(e)];
        EXPECT_EQ(a.tap_ci[size_t(k)], ci);
        const int ry = ((a.tap_ky[size_t(k)] - s.pad) % 2 + 2) % 2, rx = ((a.tap_kx[size_t(k)] - s.pad) % 2 + 2) % 2;
        EXPECT_EQ(ry * 2 + rx, ph);
        if (e > a.col_ptr[size_t(ci * ss + ph)]) {
          EXPECT_GT(k, a.col_entry[size_t(e - 1)]);  // (co, ky, kx) order
        }
      }
}

TEST(SparseConvPattern, GatherScatterRoundTrip) {
  const Conv2dShape s = shape(1, 4, 5, 5, 3, 3, 3, 1, 1);
  const std::vector<float> mask = make_mask(s, 0.4, 5);
  const SparseConvPattern p = sparse_conv_pattern_from_mask(s, mask.data());
  const std::vector<float> w = random_vector<float>(s.w_size(), 6);
  std::vector<float> v(size_t(p.nnz)), wm(size_t(s.w_size()), 9.0f);
  sparse_conv_gather_values(p, w.data(), v.data());
  sparse_conv_scatter_values(p, v.data(), wm.data());
  for (int64_t i = 0; i < s.w_size(); ++i) EXPECT_EQ(wm[size_t(i)], mask[size_t(i)] != 0.0f ? w[size_t(i)] : 0.0f);
}

TEST(SparseConvPattern, RejectsBadInput) {
  const Conv2dShape s = shape(1, 2, 5, 5, 3, 3, 3, 1, 1);
  const int64_t unsorted[] = {4, 2};
  const int64_t repeated[] = {1, 1};
  const int64_t outside[] = {0, 54};
  EXPECT_THROW(sparse_conv_pattern_from_indices(s, unsorted, 2), Error);
  EXPECT_THROW(sparse_conv_pattern_from_indices(s, repeated, 2), Error);
  EXPECT_THROW(sparse_conv_pattern_from_indices(s, outside, 2), Error);
  EXPECT_THROW(sparse_conv_pattern_from_indices(s, outside, 55), Error);
  const int64_t ok[] = {0, 53};
  const SparseConvPattern p = sparse_conv_pattern_from_indices(s, ok, 2);
  // A shape whose filter, stride or padding differs from the pattern's is refused by every kernel.
  std::vector<float> x(1000), y(1000), v(2, 1.0f);
  Conv2dShape other = s;
  other.stride = 2;
  EXPECT_THROW(sparse_conv2d_forward_cpu<float>(other, p, v.data(), x.data(), nullptr, y.data()), Error);
  other = s;
  other.cin = 3;
  EXPECT_THROW(sparse_conv2d_backward_input_cpu(other, p, v.data(), x.data(), y.data()), Error);
  other = s;
  other.pad = 0;
  EXPECT_THROW(sparse_conv2d_backward_weight_ref_cpu<float>(other, p, x.data(), x.data(), y.data(), nullptr), Error);
}

// ---------------------------------------------------------------------------------------------------
// Parity with the dense reference on W⊙M.

std::vector<Conv2dShape> layer_shapes() {
  return {
      shape(2, 16, 32, 32, 16, 3, 3, 1, 1),  // ResNet-20 stage 1
      shape(2, 16, 32, 32, 32, 3, 3, 2, 1),  // ResNet-20 stage-2 entry (stride 2)
      shape(2, 16, 32, 32, 32, 1, 1, 2, 0),  // ResNet 1×1 projection shortcut
      shape(2, 64, 8, 8, 64, 3, 3, 1, 1),    // ResNet-20 stage 3
      shape(2, 128, 16, 16, 64, 3, 3, 1, 1), // VGG-11 16×16 (channels halved to keep the oracle quick)
      shape(1, 256, 8, 8, 256, 3, 3, 1, 1),  // VGG-11 8×8
      shape(2, 512, 4, 4, 96, 3, 3, 1, 1),   // VGG-11 4×4 (fewer outputs, same taps per row)
      shape(2, 64, 16, 16, 64, 1, 1, 1, 0),  // pointwise
      shape(3, 1, 28, 28, 16, 3, 3, 1, 1),   // Fashion-MNIST ResNet-20 stem (one input channel)
      shape(2, 16, 28, 28, 16, 3, 3, 1, 1),  // its stage 1 (rows of 28: vectors split across rows)
      shape(3, 32, 14, 14, 32, 3, 3, 1, 1),  // its stage 2 (strips of 16, one zero column)
      shape(3, 64, 7, 7, 64, 3, 3, 1, 1),    // its stage 3 (strips of 8, a zero column and a zero row)
  };
}

std::vector<Conv2dShape> awkward_shapes() {
  return {
      shape(1, 3, 7, 7, 5, 3, 3, 1, 1),   shape(3, 5, 11, 13, 7, 3, 3, 2, 1), shape(2, 7, 13, 11, 3, 3, 3, 2, 0),
      shape(1, 5, 9, 7, 6, 1, 1, 1, 0),   shape(2, 4, 7, 5, 5, 1, 1, 2, 0),   shape(1, 3, 6, 9, 4, 5, 5, 1, 2),
      shape(2, 3, 10, 9, 4, 5, 5, 3, 2),  shape(2, 6, 5, 5, 6, 3, 3, 1, 0),   shape(1, 2, 3, 3, 3, 3, 3, 1, 0),
      shape(1, 3, 6, 8, 4, 3, 1, 2, 1),   shape(2, 4, 1, 40, 3, 1, 3, 1, 1),  shape(1, 9, 13, 5, 2, 3, 3, 1, 2),
      shape(1, 4, 33, 37, 5, 3, 3, 1, 1), shape(2, 3, 12, 12, 4, 4, 4, 2, 1), shape(1, 2, 7, 7, 3, 2, 2, 2, 1),
      // Batches that end in a partial image group (small maps are processed several images at a time).
      shape(6, 8, 8, 8, 5, 3, 3, 1, 1),   shape(13, 3, 5, 5, 4, 1, 1, 1, 0), shape(9, 4, 4, 4, 3, 3, 3, 1, 1),
      shape(7, 3, 9, 9, 2, 3, 3, 2, 1),
      // Planes of 4 vectors (8×8, 4×16), odd batches: at 1% (and 10% on 4×16 but for its weight gradient) the
      // row-padded pass (image pairs in one tap loop, then the last image alone), at 10% (8×8), 50% and 100%
      // the batch-minor strip pass (one partial block of 16).
      shape(3, 48, 8, 8, 48, 3, 3, 1, 1), shape(5, 24, 4, 16, 40, 3, 3, 1, 1),
      // The strip passes over two image blocks (the second partial), non-square maps 8 and 16 wide, and source
      // channels in several L1 blocks.
      shape(19, 20, 6, 8, 24, 3, 3, 1, 1), shape(17, 20, 5, 16, 12, 3, 3, 1, 1),
      // Maps 7, 14 and 15 wide on strips of 8 and 16 (a zero column; odd heights: a zero row), as Fashion-MNIST's
      // 28×28 ResNet stages 2 and 3, over two image blocks and with non-square maps.
      shape(19, 20, 7, 7, 24, 3, 3, 1, 1), shape(17, 12, 14, 14, 20, 3, 3, 1, 1), shape(3, 9, 5, 15, 8, 3, 3, 1, 1),
      shape(2, 6, 4, 7, 5, 3, 3, 1, 1), shape(3, 10, 5, 8, 80, 3, 3, 1, 1),  // and an 8-wide map of odd height
      // Maps 28 to 32 wide on half-row strips (16 pixels from column 0 or 16 of a 32-pixel row; zero columns past
      // 28-31 wide maps), over two image blocks, source channels in several L1 blocks, and odd heights.
      shape(17, 20, 5, 29, 12, 3, 3, 1, 1), shape(3, 9, 6, 32, 8, 3, 3, 1, 1), shape(2, 6, 3, 31, 5, 3, 3, 1, 1),
      shape(18, 4, 1, 30, 3, 3, 3, 1, 1),
      // Stride-2 strips (forward and weight gradient over x's four stride phases): outputs 8, 14 and 7 wide,
      // non-square, over two image blocks and several L1 blocks of phase planes (odd stride-2 maps above
      // keep the general path).
      shape(17, 20, 12, 16, 24, 3, 3, 2, 1), shape(3, 9, 14, 28, 8, 3, 3, 2, 1), shape(18, 6, 14, 14, 5, 3, 3, 2, 1),
      // Small maps, large batch: the forward's aligned (column-shifted copies) layout.
      shape(32, 4, 4, 4, 3, 3, 3, 1, 1),  shape(20, 5, 2, 3, 6, 3, 3, 1, 1),
      // Stride 1, output rows as wide as the input's, whole vectors per plane: the masked direct path, with
      // vectors that span rows (12 and 10 wide), a 5×5 filter, and fewer output rows than input rows.
      shape(2, 5, 12, 12, 4, 3, 3, 1, 1), shape(1, 3, 8, 10, 4, 5, 5, 1, 2), shape(2, 4, 18, 8, 3, 3, 1, 1, 0),
      // 3×3 pad-1 filters on maps of at most 4×4: the tiny-map (batch-minor) path, with a batch that ends in
      // a partial block of 16 images, batch 1, and 300 source channels (three to seven source blocks) for the
      // forward and weight gradient, then for the input gradient.
      shape(17, 40, 4, 4, 40, 3, 3, 1, 1), shape(1, 6, 2, 2, 5, 3, 3, 1, 1), shape(18, 5, 3, 3, 7, 3, 3, 1, 1),
      shape(3, 4, 1, 1, 6, 3, 3, 1, 1),    shape(3, 300, 4, 4, 4, 3, 3, 1, 1), shape(3, 4, 4, 4, 300, 3, 3, 1, 1),
  };
}

const double kDensities[] = {0.0, 0.01, 0.1, 0.5, 1.0};

void run_parity(const std::vector<Conv2dShape>& shapes, uint32_t seed0) {
  uint32_t seed = seed0;
  for (const Conv2dShape& s : shapes) {
    for (double d : kDensities) {
      SCOPED_TRACE(name(s) + " density " + std::to_string(d));
      const Case<float> c = make_case<float>(s, make_mask(s, d, seed), seed + 10);
      seed += 31;
      check_case(c, Path::Ref, 1e-4, 1e-4);
      check_case(c, Path::Fast, 1e-4, 1e-4);
    }
    SCOPED_TRACE(name(s) + " density 0.5 with empty rows and columns");
    const Case<float> c = make_case<float>(s, make_mask(s, 0.5, seed, true), seed + 10);
    seed += 31;
    ASSERT_EQ(c.p.row_nnz(1), 0);
    check_case(c, Path::Fast, 1e-4, 1e-4);
  }
}

TEST(SparseConvParity, LayerShapesFloat) { run_parity(layer_shapes(), 100); }

TEST(SparseConvParity, AwkwardShapesFloat) { run_parity(awkward_shapes(), 200); }

TEST(SparseConvParity, AwkwardShapesDouble) {
  uint32_t seed = 300;
  for (const Conv2dShape& s : awkward_shapes())
    for (double d : {0.1, 0.5, 1.0}) {
      SCOPED_TRACE(name(s) + " density " + std::to_string(d));
      const Case<double> c = make_case<double>(s, make_mask(s, d, seed), seed + 10);
      seed += 31;
      check_case(c, Path::Ref, 1e-12, 1e-12);
      check_case(c, Path::Fast, 1e-12, 1e-12);
    }
}

TEST(SparseConvParity, AllPrunedGivesBiasAndZeros) {
  const Conv2dShape s = shape(2, 6, 9, 9, 4, 3, 3, 1, 1);
  const Case<float> c = make_case<float>(s, make_mask(s, 0.0, 1), 2);
  ASSERT_EQ(c.p.nnz, 0);
  std::vector<float> y(size_t(s.y_size())), dx(size_t(s.x_size()), 5.0f), db(size_t(s.cout));
  sparse_conv2d_forward_cpu(s, c.p, c.values.data(), c.x.data(), c.bias.data(), y.data());
  for (int64_t i = 0; i < s.y_size(); ++i) ASSERT_EQ(y[size_t(i)], c.bias[size_t(i / (s.oh() * s.ow()) % s.cout)]);
  sparse_conv2d_backward_input_cpu(s, c.p, c.values.data(), c.dy.data(), dx.data());
  EXPECT_TRUE(all_zero(dx));
  sparse_conv2d_backward_weight_cpu(s, c.p, c.x.data(), c.dy.data(), static_cast<float*>(nullptr), db.data());
  expect_close(db, c.db_ref, 1e-4, 1e-4, "bias gradient with no kept weights");
}

// The forward's moments keep their precision when the mean dwarfs the spread (shifted sums per piece):
// outputs 1000 ± 1e-3, variance against a two-pass double computation over the same float outputs.
TEST(SparseConvParity, ForwardMomentsAtLargeMean) {
  const Conv2dShape s = shape(4, 5, 9, 9, 3, 3, 3, 1, 1);
  Case<float> c = make_case<float>(s, make_mask(s, 0.3, 11), 12);
  for (float& v : c.values) v *= 1e-3f;
  for (float& b : c.bias) b = 1000.0f + b;
  std::vector<float> y(size_t(s.y_size()));
  ChannelMoments m;
  sparse_conv2d_forward_cpu(s, c.p, c.values.data(), c.x.data(), c.bias.data(), y.data(), &m);
  const int64_t plane = int64_t(s.oh()) * s.ow(), count = s.n * plane;
  for (int co = 0; co < s.cout; ++co) {
    double mean = 0.0, var = 0.0;
    for (int n = 0; n < s.n; ++n)
      for (int64_t i = 0; i < plane; ++i) mean += double(y[size_t((n * s.cout + co) * plane + i)]) / double(count);
    for (int n = 0; n < s.n; ++n)
      for (int64_t i = 0; i < plane; ++i) {
        const double d = double(y[size_t((n * s.cout + co) * plane + i)]) - mean;
        var += d * d / double(count);
      }
    ASSERT_GT(var, 0.0);
    EXPECT_NEAR(m.mean[size_t(co)], mean, 1e-9 * 1000);
    EXPECT_NEAR(m.m2[size_t(co)] / double(count), var, 1e-3 * var) << "channel " << co;
  }
}

// Independent of the dense oracle: the three passes are adjoint, <conv(x), dy> = <x, dx> = <values, dvalues>.
TEST(SparseConvParity, PassesAreAdjoint) {
  for (const Conv2dShape& s : {shape(3, 5, 11, 13, 7, 3, 3, 2, 1), shape(2, 16, 32, 32, 16, 3, 3, 1, 1)}) {
    SCOPED_TRACE(name(s));
    const Case<double> c = make_case<double>(s, make_mask(s, 0.2, 77), 78);
    std::vector<double> y(size_t(s.y_size())), dx(size_t(s.x_size())), dv(size_t(c.p.nnz));
    sparse_conv2d_forward_cpu(s, c.p, c.values.data(), c.x.data(), static_cast<const double*>(nullptr), y.data());
    sparse_conv2d_backward_input_cpu(s, c.p, c.values.data(), c.dy.data(), dx.data());
    sparse_conv2d_backward_weight_cpu(s, c.p, c.x.data(), c.dy.data(), dv.data(), static_cast<double*>(nullptr));
    const double a = test::dot(y.data(), c.dy.data(), s.y_size());
    const double b = test::dot(c.x.data(), dx.data(), s.x_size());
    const double v = test::dot(c.values.data(), dv.data(), c.p.nnz);
    EXPECT_NEAR(a, b, 1e-9 * (1.0 + std::abs(a)));
    EXPECT_NEAR(a, v, 1e-9 * (1.0 + std::abs(a)));
  }
}

// Forward and input gradient do not depend on how the work is split; the weight gradient only through
// the order of its per-thread partial sums.
TEST(SparseConvParity, ThreadCountInvariant) {
  const Conv2dShape s = shape(3, 8, 10, 12, 9, 3, 3, 1, 1);
  const Case<float> c = make_case<float>(s, make_mask(s, 0.3, 9, true), 10);
  const int saved = omp_get_max_threads();
  std::vector<float> y1(size_t(s.y_size())), dx1(size_t(s.x_size())), dv1(size_t(c.p.nnz));
  std::vector<float> y3(y1.size()), dx3(dx1.size()), dv3(dv1.size());
  omp_set_num_threads(1);
  sparse_conv2d_forward_cpu(s, c.p, c.values.data(), c.x.data(), c.bias.data(), y1.data());
  sparse_conv2d_backward_input_cpu(s, c.p, c.values.data(), c.dy.data(), dx1.data());
  sparse_conv2d_backward_weight_cpu(s, c.p, c.x.data(), c.dy.data(), dv1.data(), static_cast<float*>(nullptr));
  omp_set_num_threads(3);
  sparse_conv2d_forward_cpu(s, c.p, c.values.data(), c.x.data(), c.bias.data(), y3.data());
  sparse_conv2d_backward_input_cpu(s, c.p, c.values.data(), c.dy.data(), dx3.data());
  sparse_conv2d_backward_weight_cpu(s, c.p, c.x.data(), c.dy.data(), dv3.data(), static_cast<float*>(nullptr));
  omp_set_num_threads(saved);
  EXPECT_EQ(y1, y3);
  EXPECT_EQ(dx1, dx3);
  expect_close(dv3, dv1, 1e-5, 1e-5, "weight gradient, 3 threads vs 1");
  expect_close(y1, c.y_ref, 1e-4, 1e-4, "forward, 1 thread");
}

// ---------------------------------------------------------------------------------------------------
// CUDA against the CPU path (skipped without a device).

TEST(SparseConvCuda, MatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << cuda_unavailable_reason();
#if SPARROW_HAS_CUDA
  auto upload = [](const std::vector<float>& h) {
    float* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(float)), cudaSuccess);
    if (!h.empty()) {
      EXPECT_EQ(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    }
    return d;
  };
  auto download = [](const float* d, size_t n) {
    std::vector<float> h(n);
    if (n) {
      EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return h;
  };
  std::vector<Conv2dShape> shapes = layer_shapes();
  for (const Conv2dShape& s : awkward_shapes()) shapes.push_back(s);
  uint32_t seed = 500;
  for (const Conv2dShape& s : shapes)
    for (double d : kDensities) {
      SCOPED_TRACE(name(s) + " density " + std::to_string(d));
      const Case<float> c = make_case<float>(s, make_mask(s, d, seed, d == 0.5), seed + 10);
      seed += 31;
      const SparseConvPatternDevice pd(c.p);
      float *d_v = upload(c.values), *d_x = upload(c.x), *d_dy = upload(c.dy), *d_b = upload(c.bias);
      float *d_y = upload(std::vector<float>(size_t(s.y_size()), -7.0f));
      float *d_dx = upload(std::vector<float>(size_t(s.x_size()), -7.0f));
      float *d_dv = upload(std::vector<float>(size_t(c.p.nnz), -7.0f));
      float *d_db = upload(std::vector<float>(size_t(s.cout), -7.0f));
      sparse_conv2d_forward_cuda(s, pd, d_v, d_x, d_b, d_y);
      sparse_conv2d_backward_input_cuda(s, pd, d_v, d_dy, d_dx);
      sparse_conv2d_backward_weight_cuda(s, pd, d_x, d_dy, d_dv, d_db);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      expect_match(download(d_y, size_t(s.y_size())), c.y_ref, 1e-4, 1e-4, "cuda forward");
      expect_match(download(d_dx, size_t(s.x_size())), c.dx_ref, 1e-4, 1e-4, "cuda backward input");
      expect_match(download(d_dv, size_t(c.p.nnz)), c.dvalues_ref, 1e-4, 1e-4, "cuda backward weight");
      expect_match(download(d_db, size_t(s.cout)), c.db_ref, 1e-4, 1e-4, "cuda backward bias");
      for (float* p : {d_v, d_x, d_dy, d_b, d_y, d_dx, d_dv, d_db}) cudaFree(p);
    }
#endif
}

TEST(SparseConvCuda, Im2colHelpersMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << cuda_unavailable_reason();
#if SPARROW_HAS_CUDA
  for (const Conv2dShape& s : {shape(2, 3, 7, 9, 4, 3, 3, 2, 1), shape(3, 4, 8, 8, 2, 1, 1, 1, 0)}) {
    SCOPED_TRACE(name(s));
    const int64_t k = int64_t(s.cin) * s.kh * s.kw, p = int64_t(s.oh()) * s.ow();
    const std::vector<float> x = random_vector<float>(s.x_size(), 1);
    const std::vector<float> col_in = random_vector<float>(k * s.n * p, 2);
    // CPU expectations from the per-image column form of kernels/conv.
    std::vector<float> col_ref(size_t(k * s.n * p)), img(size_t(k * p)), dx_ref(size_t(s.x_size()));
    for (int n = 0; n < s.n; ++n) {
      im2col_cpu(s, x.data() + n * s.cin * s.h * s.w, img.data());
      for (int64_t r = 0; r < k; ++r)
        std::copy(img.begin() + r * p, img.begin() + (r + 1) * p, col_ref.begin() + r * s.n * p + n * p);
      for (int64_t r = 0; r < k; ++r)
        std::copy(col_in.begin() + r * s.n * p + n * p, col_in.begin() + r * s.n * p + (n + 1) * p,
                  img.begin() + r * p);
      col2im_cpu(s, img.data(), dx_ref.data() + n * s.cin * s.h * s.w);
    }
    float *d_x, *d_col, *d_dx;
    ASSERT_EQ(cudaMalloc(&d_x, x.size() * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&d_col, col_in.size() * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&d_dx, x.size() * 4), cudaSuccess);
    cudaMemcpy(d_x, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
    sparse_conv_im2col_cuda(s, d_x, d_col);
    std::vector<float> col(col_in.size()), dx(x.size());
    cudaMemcpy(col.data(), d_col, col.size() * 4, cudaMemcpyDeviceToHost);
    expect_close(col, col_ref, 0.0, 0.0, "cuda im2col");
    cudaMemcpy(d_col, col_in.data(), col_in.size() * 4, cudaMemcpyHostToDevice);
    sparse_conv_col2im_cuda(s, d_col, d_dx);
    cudaMemcpy(dx.data(), d_dx, dx.size() * 4, cudaMemcpyDeviceToHost);
    expect_close(dx, dx_ref, 1e-5, 1e-5, "cuda col2im");
    cudaFree(d_x);
    cudaFree(d_col);
    cudaFree(d_dx);
  }
#endif
}

}  // namespace
}  // namespace sparrow
