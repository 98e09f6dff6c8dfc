// Every differentiable op: autograd's backward against central finite differences in double, over
// awkward shapes (odd sizes, batch 1, stride 2, non-square maps).
#include <gtest/gtest.h>

#include "engine/base/rng.h"
#include "engine/ops.h"
#include "tests/engine/grad_check.h"

using namespace sparrow;
using sparrow::testing::check_gradients;
using sparrow::testing::rand_input;

namespace {
// Values pushed away from 0 by at least `gap` so ReLU/max kinks are never crossed by ±ε.
Tensor away_from_zero(const Shape& s, uint64_t seed, double gap = 0.05) {
  Tensor t = rand_input(s, seed);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = p[i] >= 0 ? p[i] + gap : p[i] - gap;
  return t;
}
// Distinct values (a shuffled ramp) so max-pool's argmax is unique and stable under ±ε.
Tensor distinct(const Shape& s, uint64_t seed) {
  Tensor t = rand_input(s, seed);
  Rng rng(seed);
  double* p = t.data<double>();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) p[i] = double(i) / double(n);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[int64_t(rng.below(uint64_t(i + 1)))]);
  return t;
}
}  // namespace

struct ConvCase {
  int n, cin, h, w, cout, k, stride, pad;
  bool bias;
};

class ConvGrad : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvGrad, MatchesFiniteDifferences) {
  const ConvCase c = GetParam();
  Tensor x = rand_input({c.n, c.cin, c.h, c.w}, 1);
  Tensor w = rand_input({c.cout, c.cin, c.k, c.k}, 2);
  Tensor b = c.bias ? rand_input({c.cout}, 3) : Tensor();
  std::vector<Tensor> in{x, w};
  if (c.bias) in.push_back(b);
  check_gradients([&](const std::vector<Tensor>& v) { return conv2d(v[0], v[1], c.bias ? v[2] : Tensor(), c.stride, c.pad); },
                  in);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvGrad,
                         ::testing::Values(ConvCase{1, 1, 5, 5, 1, 3, 1, 1, false}, ConvCase{2, 3, 7, 5, 4, 3, 1, 1, true},
                                           ConvCase{1, 3, 7, 7, 5, 3, 2, 1, true}, ConvCase{2, 4, 6, 9, 3, 1, 1, 0, false},
                                           ConvCase{1, 2, 11, 7, 3, 1, 2, 0, true}, ConvCase{3, 2, 5, 6, 2, 5, 1, 2, false},
                                           ConvCase{1, 5, 13, 13, 2, 3, 2, 0, false}));

TEST(OpsGrad, Linear) {
  check_gradients([](const std::vector<Tensor>& v) { return linear(v[0], v[1], v[2]); },
                  {rand_input({5, 7}, 1), rand_input({3, 7}, 2), rand_input({3}, 3)});
  check_gradients([](const std::vector<Tensor>& v) { return linear(v[0], v[1], Tensor()); },
                  {rand_input({1, 4}, 4), rand_input({6, 4}, 5)});
}

TEST(OpsGrad, BatchNormTrain4d) {
  Tensor rm = Tensor::zeros({3}, DType::F64), rv = Tensor::ones({3}, DType::F64);
  check_gradients(
      [&](const std::vector<Tensor>& v) { return batch_norm(v[0], v[1], v[2], rm, rv, true, 0.1, 1e-5); },
      {rand_input({2, 3, 5, 3}, 1), rand_input({3}, 2, 0.5, 1.5), rand_input({3}, 3)}, 1e-6, 1e-6, 1e-4);
}

TEST(OpsGrad, BatchNormTrain2dAndBatchOne) {
  check_gradients([](const std::vector<Tensor>& v) { return batch_norm(v[0], v[1], v[2], Tensor(), Tensor(), true, 0.1, 1e-5); },
                  {rand_input({7, 4}, 1), rand_input({4}, 2, 0.5, 1.5), rand_input({4}, 3)}, 1e-6, 1e-6, 1e-4);
  check_gradients([](const std::vector<Tensor>& v) { return batch_norm(v[0], v[1], v[2], Tensor(), Tensor(), true, 0.1, 1e-5); },
                  {rand_input({1, 2, 3, 5}, 4), rand_input({2}, 5, 0.5, 1.5), rand_input({2}, 6)}, 1e-6, 1e-6, 1e-4);
}

TEST(OpsGrad, BatchNormEval) {
  Rng rng(9);
  Tensor rm = Tensor::uniform({3}, rng, -0.5, 0.5, DType::F64), rv = Tensor::uniform({3}, rng, 0.5, 2, DType::F64);
  check_gradients([&](const std::vector<Tensor>& v) { return batch_norm(v[0], v[1], v[2], rm, rv, false, 0.1, 1e-5); },
                  {rand_input({2, 3, 4, 5}, 1), rand_input({3}, 2), rand_input({3}, 3)});
}

TEST(OpsGrad, BatchNormReluTrainAndEval) {
  Tensor rm = Tensor::zeros({3}, DType::F64), rv = Tensor::ones({3}, DType::F64);
  check_gradients(
      [&](const std::vector<Tensor>& v) { return batch_norm_relu(v[0], Tensor(), v[1], v[2], rm, rv, true, 0.1, 1e-5); },
      {rand_input({2, 3, 5, 3}, 1), rand_input({3}, 2, 0.5, 1.5), rand_input({3}, 3)}, 1e-6, 1e-6, 1e-4);
  check_gradients(
      [&](const std::vector<Tensor>& v) { return batch_norm_relu(v[0], v[1], v[2], v[3], rm, rv, true, 0.1, 1e-5); },
      {rand_input({3, 3, 2, 5}, 4), rand_input({3, 3, 2, 5}, 5), rand_input({3}, 6, 0.5, 1.5), rand_input({3}, 7)}, 1e-6,
      1e-6, 1e-4);
  Rng rng(9);
  Tensor erm = Tensor::uniform({3}, rng, -0.5, 0.5, DType::F64), erv = Tensor::uniform({3}, rng, 0.5, 2, DType::F64);
  check_gradients(
      [&](const std::vector<Tensor>& v) { return batch_norm_relu(v[0], Tensor(), v[1], v[2], erm, erv, false, 0.1, 1e-5); },
      {away_from_zero({2, 3, 4, 5}, 8), rand_input({3}, 9), rand_input({3}, 10)});
  check_gradients(
      [&](const std::vector<Tensor>& v) { return batch_norm_relu(v[0], v[1], v[2], v[3], erm, erv, false, 0.1, 1e-5); },
      {rand_input({2, 3, 4, 5}, 11), rand_input({2, 3, 4, 5}, 12), rand_input({3}, 13), rand_input({3}, 14)});
}

// The fused op gives bit-identical values, gradients and running statistics to relu(add(batch_norm(x), r))
// in float: the same expressions in the same order, only fewer passes.
TEST(OpsFused, BatchNormReluEqualsTheSeparateOps) {
  for (int training = 0; training < 2; ++training)
    for (int residual = 0; residual < 2; ++residual) {
      SCOPED_TRACE(std::string(training ? "train" : "eval") + (residual ? " residual" : ""));
      Rng rng(21);
      const Tensor x0 = Tensor::randn({5, 4, 6, 7}, rng, 0.5, 2.0), r0 = Tensor::randn({5, 4, 6, 7}, rng);
      const Tensor g0 = Tensor::uniform({4}, rng, 0.5, 1.5), b0 = Tensor::uniform({4}, rng, -0.5, 0.5);
      const Tensor up = Tensor::randn({5, 4, 6, 7}, rng);
      const Tensor rm0 = Tensor::uniform({4}, rng, -0.5, 0.5), rv0 = Tensor::uniform({4}, rng, 0.5, 2.0);
      std::vector<std::vector<float>> got[2];
      for (int fused = 0; fused < 2; ++fused) {
        Tensor x = x0.clone(), r = r0.clone(), g = g0.clone(), b = b0.clone(), rm = rm0.clone(), rv = rv0.clone();
        for (Tensor* t : {&x, &r, &g, &b}) t->set_requires_grad(true);
        Tensor res = residual ? r : Tensor();
        Tensor y = fused ? batch_norm_relu(x, res, g, b, rm, rv, training, 0.1, 1e-5)
                         : relu(residual ? add(batch_norm(x, g, b, rm, rv, training, 0.1, 1e-5), r)
                                         : batch_norm(x, g, b, rm, rv, training, 0.1, 1e-5));
        y.backward(up);
        got[fused] = {y.to_vector<float>(), x.grad().to_vector<float>(), g.grad().to_vector<float>(),
                      b.grad().to_vector<float>(), rm.to_vector<float>(), rv.to_vector<float>()};
        if (residual) got[fused].push_back(r.grad().to_vector<float>());
        else EXPECT_FALSE(r.grad().defined());
      }
      const char* what[] = {"y", "dx", "dgamma", "dbeta", "running_mean", "running_var", "dresidual"};
      ASSERT_EQ(got[0].size(), got[1].size());
      for (size_t k = 0; k < got[0].size(); ++k) EXPECT_EQ(got[0][k], got[1][k]) << what[k];
      size_t zeros = 0;
      for (float v : got[1][0]) zeros += v == 0.0f;
      EXPECT_GT(zeros, 0u);  // the ReLU clipped something
    }
}

TEST(OpsGrad, Relu) {
  check_gradients([](const std::vector<Tensor>& v) { return relu(v[0]); }, {away_from_zero({3, 5, 7}, 1)});
}

TEST(OpsGrad, AddSubMulScale) {
  check_gradients([](const std::vector<Tensor>& v) { return add(v[0], v[1]); }, {rand_input({4, 5}, 1), rand_input({4, 5}, 2)});
  check_gradients([](const std::vector<Tensor>& v) { return sub(v[0], v[1]); }, {rand_input({3, 3}, 3), rand_input({3, 3}, 4)});
  check_gradients([](const std::vector<Tensor>& v) { return mul(v[0], v[1]); }, {rand_input({2, 7}, 5), rand_input({2, 7}, 6)});
  check_gradients([](const std::vector<Tensor>& v) { return scale(v[0], -2.5); }, {rand_input({11}, 7)});
  check_gradients([](const std::vector<Tensor>& v) { return mean(v[0]); }, {rand_input({3, 4}, 8)});
}

TEST(OpsGrad, Pools) {
  for (auto [k, s, p] : {std::tuple{2, 2, 0}, std::tuple{3, 2, 1}, std::tuple{3, 1, 1}, std::tuple{2, 1, 0}}) {
    SCOPED_TRACE(::testing::Message() << "k=" << k << " s=" << s << " p=" << p);
    check_gradients([&](const std::vector<Tensor>& v) { return max_pool2d(v[0], k, s, p); }, {distinct({2, 3, 7, 6}, 1)},
                    1e-7);
    check_gradients([&](const std::vector<Tensor>& v) { return avg_pool2d(v[0], k, s, p); }, {rand_input({1, 2, 5, 7}, 2)});
  }
  check_gradients([](const std::vector<Tensor>& v) { return global_avg_pool(v[0]); }, {rand_input({3, 4, 5, 3}, 3)});
}

TEST(OpsGrad, ShortcutA) {
  // Pad (16->32, stride 2, odd sizes), crop (5->3), and stride 1 with padding only.
  check_gradients([](const std::vector<Tensor>& v) { return shortcut_a(v[0], 8, 2); }, {rand_input({2, 4, 7, 5}, 1)});
  check_gradients([](const std::vector<Tensor>& v) { return shortcut_a(v[0], 3, 2); }, {rand_input({1, 5, 6, 6}, 2)});
  check_gradients([](const std::vector<Tensor>& v) { return shortcut_a(v[0], 7, 1); }, {rand_input({2, 4, 3, 5}, 3)});
}

TEST(OpsGrad, SoftmaxFamilyAndCrossEntropy) {
  check_gradients([](const std::vector<Tensor>& v) { return softmax(v[0]); }, {rand_input({3, 7}, 1, -3, 3)});
  check_gradients([](const std::vector<Tensor>& v) { return log_softmax(v[0]); }, {rand_input({4, 5}, 2, -3, 3)});
  Tensor y = Tensor::from_vector<int64_t>({5}, {0, 3, 2, 3, 1});
  check_gradients([&](const std::vector<Tensor>& v) { return cross_entropy(v[0], y); }, {rand_input({5, 4}, 3, -3, 3)});
}

TEST(OpsGrad, ShapesSliceCat) {
  check_gradients([](const std::vector<Tensor>& v) { return flatten(v[0]); }, {rand_input({2, 3, 2, 2}, 1)});
  check_gradients([](const std::vector<Tensor>& v) { return slice_rows(v[0], 1, 3); }, {rand_input({4, 3}, 2)});
  check_gradients([](const std::vector<Tensor>& v) { return cat_rows({v[0], v[1]}); }, {rand_input({2, 3}, 3), rand_input({1, 3}, 4)});
}

TEST(OpsGrad, DropoutScalesKeptAndZeroesDropped) {
  Rng rng(3);
  Tensor x = rand_input({1000}, 1);
  Tensor y = dropout(x, 0.3, true, rng);
  y.backward(Tensor::ones({1000}, DType::F64));
  const auto xv = x.to_vector<double>(), yv = y.to_vector<double>(), gv = x.grad().to_vector<double>();
  int dropped = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    if (gv[i] == 0) {
      ++dropped;
      EXPECT_EQ(yv[i], 0.0);
    } else {
      EXPECT_NEAR(gv[i], 1 / 0.7, 1e-12);
      EXPECT_NEAR(yv[i], xv[i] / 0.7, 1e-12);
    }
  }
  EXPECT_NEAR(dropped / 1000.0, 0.3, 0.05);
  Rng rng2(3);
  EXPECT_TRUE(dropout(x, 0.3, false, rng2).same(x)) << "eval-mode dropout must be the identity";
}

TEST(OpsErrors, ReadableMessages) {
  Tensor x = Tensor::zeros({2, 3, 5, 5});
  Tensor w = Tensor::zeros({4, 2, 3, 3});
  try {
    conv2d(x, w, Tensor(), 1, 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 channels"), std::string::npos) << e.what();
  }
  EXPECT_THROW(add(Tensor::zeros({2}), Tensor::zeros({3})), Error);
  EXPECT_THROW(cross_entropy(Tensor::zeros({2, 3}), Tensor::from_vector<int64_t>({2}, {0, 3})), Error);
  EXPECT_THROW(max_pool2d(Tensor::zeros({1, 1, 1, 1}), 2, 2, 0), Error);
}
