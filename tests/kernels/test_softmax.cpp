// Tests for the row-wise softmax family (B×C row-major): forward and backward against direct double
// definitions over odd shapes (float and double), the fused cross-entropy against its log_softmax + NLL
// reference and a hand-computed 2×3 case, stability at huge logits, and label range errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/base/error.h"
#include "kernels/softmax/softmax.h"
#include "tests/kernels/check.h"

namespace sparrow {
namespace {

using test::expect_close;
using test::random_vector;

struct Shape {
  int rows, cols;
};
// Odd shapes, one column, and one large enough for the OpenMP path.
const Shape kShapes[] = {{1, 1}, {1, 7}, {5, 3}, {13, 11}, {7, 100}, {128, 10}, {300, 200}};

template <typename T>
void check_family(const Shape& sh) {
  SCOPED_TRACE(str(sh.rows, "x", sh.cols, std::is_same<T, float>::value ? " float" : " double"));
  const int64_t n = int64_t(sh.rows) * sh.cols;
  const size_t sz = static_cast<size_t>(n);
  const double tol = std::is_same<T, float>::value ? 1e-6 : 1e-14;
  const auto x = random_vector<T>(n, 131, -4.0, 4.0);
  const auto dy = random_vector<T>(n, 132);
  std::vector<T> sm(sz), lsm(sz), want_sm(sz), want_lsm(sz), dx(sz, T(3)), want_dx(sz), dx2(sz, T(3)),
      want_dx2(sz);
  softmax_forward_cpu<T>(sh.rows, sh.cols, x.data(), sm.data());
  log_softmax_forward_cpu<T>(sh.rows, sh.cols, x.data(), lsm.data());
  for (int r = 0; r < sh.rows; ++r) {
    const size_t o = size_t(r) * sh.cols;
    double sum = 0;
    for (int j = 0; j < sh.cols; ++j) sum += std::exp(double(x[o + j]));
    double dot_sm = 0, sum_dy = 0;
    for (int j = 0; j < sh.cols; ++j) {
      want_sm[o + j] = T(std::exp(double(x[o + j])) / sum);
      want_lsm[o + j] = T(double(x[o + j]) - std::log(sum));
      dot_sm += double(dy[o + j]) * std::exp(double(x[o + j])) / sum;
      sum_dy += double(dy[o + j]);
    }
    for (int j = 0; j < sh.cols; ++j) {
      const double p = std::exp(double(x[o + j])) / sum;
      want_dx[o + j] = T(p * (double(dy[o + j]) - dot_sm));
      want_dx2[o + j] = T(double(dy[o + j]) - p * sum_dy);
    }
  }
  softmax_backward_cpu<T>(sh.rows, sh.cols, sm.data(), dy.data(), dx.data());
  log_softmax_backward_cpu<T>(sh.rows, sh.cols, lsm.data(), dy.data(), dx2.data());
  expect_close(sm, want_sm, tol, tol, "softmax forward");
  if (sh.cols == 1) {  // one column: softmax ≡ 1, log_softmax ≡ 0 and both gradients vanish
    for (size_t i = 0; i < sz; ++i) {
      EXPECT_EQ(lsm[i], T(0));
      EXPECT_NEAR(double(dx[i]), 0.0, tol);
      EXPECT_NEAR(double(dx2[i]), 0.0, tol);
    }
    return;
  }
  expect_close(lsm, want_lsm, tol, tol, "log_softmax forward");
  expect_close(dx, want_dx, tol, tol, "softmax backward");
  expect_close(dx2, want_dx2, tol, tol, "log_softmax backward");
}

TEST(Softmax, FamilyMatchesDefinitions) {
  for (const auto& sh : kShapes) {
    check_family<float>(sh);
    check_family<double>(sh);
  }
}

template <typename T>
void check_xent(const Shape& sh) {
  SCOPED_TRACE(str(sh.rows, "x", sh.cols, std::is_same<T, float>::value ? " float" : " double"));
  const int64_t n = int64_t(sh.rows) * sh.cols;
  const auto x = random_vector<T>(n, 141, -6.0, 6.0);
  std::vector<int64_t> labels(static_cast<size_t>(sh.rows));
  for (int r = 0; r < sh.rows; ++r) labels[size_t(r)] = (r * 7 + 3) % sh.cols;
  std::vector<T> d(static_cast<size_t>(n), T(5)), d_ref(static_cast<size_t>(n));
  const double loss = softmax_xent_cpu<T>(sh.rows, sh.cols, x.data(), labels.data(), d.data());
  const double loss_ref = softmax_xent_ref_cpu<T>(sh.rows, sh.cols, x.data(), labels.data(), d_ref.data());
  EXPECT_NEAR(loss, loss_ref, 1e-12 * (1.0 + std::fabs(loss_ref)));
  if (sh.cols > 1) expect_close(d, d_ref, 1e-7, 1e-6, "softmax_xent dlogits");
  // Without dlogits only the loss is computed.
  EXPECT_EQ(softmax_xent_cpu<T>(sh.rows, sh.cols, x.data(), labels.data(), nullptr), loss);
}

TEST(Softmax, XentMatchesReference) {
  for (const auto& sh : kShapes) {
    check_xent<float>(sh);
    check_xent<double>(sh);
  }
}

TEST(Softmax, XentHandComputed2x3) {
  // Row 0: logits (1, 2, 3), label 2; row 1: (0, 0, 0), label 0.
  // loss = mean(log(e + e² + e³) − 3, log 3) ; dlogits = (softmax − onehot) / 2.
  const double x[] = {1, 2, 3, 0, 0, 0};
  const int64_t labels[] = {2, 0};
  const double z0 = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  const double want_loss = 0.5 * ((std::log(z0) - 3.0) + std::log(3.0));
  const double want_d[] = {std::exp(1.0) / z0 / 2,
                           std::exp(2.0) / z0 / 2,
                           (std::exp(3.0) / z0 - 1) / 2,
                           (1.0 / 3 - 1) / 2,
                           1.0 / 6,
                           1.0 / 6};
  double d[6];
  EXPECT_NEAR(softmax_xent_cpu<double>(2, 3, x, labels, d), want_loss, 1e-15);
  expect_close(d, want_d, 6, 1e-15, 1e-14, "dlogits 2x3");
  EXPECT_NEAR(softmax_xent_ref_cpu<double>(2, 3, x, labels, d), want_loss, 1e-15);
  expect_close(d, want_d, 6, 1e-15, 1e-14, "dlogits 2x3 reference");
  // Hand value, not just self-consistency: log(e+e²+e³) − 3 = 0.40760596..., log 3 = 1.09861229...
  EXPECT_NEAR(want_loss, 0.5 * (0.4076059644443803 + 1.0986122886681098), 1e-12);
}

TEST(Softmax, StableAtHugeLogits) {
  // exp(1000) overflows; subtracting the row max keeps every result finite and exact.
  const float x[] = {1000.0f, 1000.0f, -1000.0f, 0.0f};
  const int64_t labels[] = {0};
  float y[4], d[4];
  softmax_forward_cpu<float>(1, 4, x, y);
  EXPECT_FLOAT_EQ(y[0], 0.5f);
  EXPECT_FLOAT_EQ(y[1], 0.5f);
  EXPECT_EQ(y[2], 0.0f);
  log_softmax_forward_cpu<float>(1, 4, x, y);
  EXPECT_NEAR(y[0], -std::log(2.0f), 1e-6);
  EXPECT_TRUE(std::isfinite(y[2]));
  const double loss = softmax_xent_cpu<float>(1, 4, x, labels, d);
  EXPECT_NEAR(loss, std::log(2.0), 1e-6);
  EXPECT_NEAR(d[0], -0.5f, 1e-6);
}

TEST(Softmax, XentRejectsLabelsOutOfRange) {
  const float x[] = {0, 1, 2, 3, 4, 5};
  float d[6];
  const int64_t bad_high[] = {1, 3};  // row 1 label 3 with 3 columns
  try {
    softmax_xent_cpu<float>(2, 3, x, bad_high, d);
    ADD_FAILURE() << "expected sparrow::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("label 3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("row 1"), std::string::npos) << msg;
  }
  const int64_t bad_low[] = {-1, 0};
  EXPECT_THROW(softmax_xent_cpu<float>(2, 3, x, bad_low, d), Error);
  EXPECT_THROW(softmax_xent_ref_cpu<float>(2, 3, x, bad_low, d), Error);
  EXPECT_THROW(softmax_forward_cpu<float>(0, 3, x, d), Error);
}

}  // namespace
}  // namespace sparrow
