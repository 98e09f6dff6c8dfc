// Parity tests for batch normalisation (N×C×HW): the fused one-pass kernels against the two-pass
// references in float and double (affine on/off, running stats on/off), plus independent checks: batch
// output has mean 0 / var 1, the running-statistics formula, eval mode, backward by central differences.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/base/error.h"
#include "kernels/batchnorm/batchnorm.h"
#include "tests/kernels/check.h"

namespace sparrow {
namespace {

using test::expect_close;
using test::random_vector;

const BatchNormShape kShapes[] = {
    {1, 3, 7},                    // batch 1 (statistics over HW only)
    {2, 5, 1},                    // BatchNorm1d-like, two values per channel
    {13, 7, 1},                   // BatchNorm1d
    {4, 16, 64},                  // 8×8 maps
    {3, 17, 25},                  // odd sizes
    {5, 11, 13}, {64, 16, 1024},  // CIFAR stage 1 at batch 64: large enough for the OpenMP path
};

std::string describe(const BatchNormShape& s) { return str("n=", s.n, " c=", s.c, " hw=", s.hw); }

template <typename T>
void check_parity(const BatchNormShape& s, bool affine, bool track) {
  SCOPED_TRACE(describe(s) + (affine ? " affine" : " plain") + (track ? " tracked" : " untracked") +
               (std::is_same<T, float>::value ? " float" : " double"));
  const double tol = std::is_same<T, float>::value ? 2e-5 : 1e-12;
  const int64_t total = int64_t(s.n) * s.c * s.hw;
  const size_t nt = static_cast<size_t>(total);
  // An offset mean (+3) and a non-unit spread make the statistics non-trivial.
  const auto x = random_vector<T>(total, 51, 1.0, 5.0);
  const auto dy = random_vector<T>(total, 52);
  const auto gamma = random_vector<T>(s.c, 53, 0.5, 1.5);
  const auto beta = random_vector<T>(s.c, 54);
  const T* g = affine ? gamma.data() : nullptr;
  const T* bt = affine ? beta.data() : nullptr;
  const double momentum = 0.1, eps = 1e-5;

  std::vector<T> y(nt, T(-1)), y_ref(nt);
  std::vector<T> mean(size_t(s.c)), invstd(size_t(s.c)), mean_ref(size_t(s.c)), invstd_ref(size_t(s.c));
  auto rm = random_vector<T>(s.c, 55), rv = random_vector<T>(s.c, 56, 0.5, 2.0);
  auto rm_ref = rm, rv_ref = rv;
  batchnorm_forward_train_cpu<T>(s, x.data(), g, bt, y.data(), mean.data(), invstd.data(),
                                 track ? rm.data() : nullptr, track ? rv.data() : nullptr, momentum, eps);
  batchnorm_forward_train_ref_cpu<T>(s, x.data(), g, bt, y_ref.data(), mean_ref.data(), invstd_ref.data(),
                                     track ? rm_ref.data() : nullptr, track ? rv_ref.data() : nullptr,
                                     momentum, eps);
  expect_close(y, y_ref, tol, tol, "forward train y");
  expect_close(mean, mean_ref, tol, tol, "save_mean");
  expect_close(invstd, invstd_ref, tol, tol, "save_invstd");
  if (track) {
    expect_close(rm, rm_ref, tol, tol, "running_mean");
    expect_close(rv, rv_ref, tol, tol, "running_var");
  }

  std::vector<T> dx(nt, T(7)), dx_ref(nt);
  std::vector<T> dg(size_t(s.c), T(7)), db(size_t(s.c), T(7)), dg_ref(size_t(s.c)), db_ref(size_t(s.c));
  batchnorm_backward_train_cpu<T>(s, x.data(), dy.data(), g, mean.data(), invstd.data(), dx.data(), dg.data(),
                                  db.data());
  batchnorm_backward_train_ref_cpu<T>(s, x.data(), dy.data(), g, mean_ref.data(), invstd_ref.data(),
                                      dx_ref.data(), dg_ref.data(), db_ref.data());
  // dx is a difference of O(1) terms that nearly cancel; float needs a looser absolute tolerance.
  const double dx_tol = std::is_same<T, float>::value ? 2e-4 : 1e-10;
  expect_close(dx, dx_ref, dx_tol, tol, "backward train dx");
  expect_close(dg, dg_ref, dx_tol, tol, "backward train dgamma");
  expect_close(db, db_ref, dx_tol, tol, "backward train dbeta");
  // Null dgamma/dbeta are allowed and leave dx unchanged.
  std::vector<T> dx2(nt);
  batchnorm_backward_train_cpu<T>(s, x.data(), dy.data(), g, mean.data(), invstd.data(), dx2.data(), nullptr,
                                  nullptr);
  expect_close(dx2, dx, 0.0, 0.0, "backward train dx without dgamma/dbeta");
}

TEST(BatchNorm, TrainMatchesReference) {
  for (const auto& s : kShapes)
    for (int affine = 0; affine < 2; ++affine)
      for (int track = 0; track < 2; ++track) {
        if (int64_t(s.n) * s.hw < 2) continue;
        check_parity<float>(s, affine, track);
        check_parity<double>(s, affine, track);
      }
}

// Independent of both implementations: each channel of the output has mean 0 and biased variance 1
// (up to eps), and the running update is r ← (1−m)·r + m·stat with the unbiased variance.
TEST(BatchNorm, OutputIsStandardisedAndRunningStatsFollowTheFormula) {
  const BatchNormShape s{6, 5, 9};
  const int64_t total = int64_t(s.n) * s.c * s.hw, count = int64_t(s.n) * s.hw;
  const size_t nt = static_cast<size_t>(total);
  const auto x = random_vector<double>(total, 61, -2.0, 6.0);
  std::vector<double> y(nt), mean(size_t(s.c)), invstd(size_t(s.c));
  std::vector<double> rm(size_t(s.c), 0.5), rv(size_t(s.c), 2.0);
  const double momentum = 0.25, eps = 1e-10;
  batchnorm_forward_train_cpu<double>(s, x.data(), nullptr, nullptr, y.data(), mean.data(), invstd.data(),
                                      rm.data(), rv.data(), momentum, eps);
  for (int c = 0; c < s.c; ++c) {
    double my = 0, vy = 0, mx = 0, vx = 0;
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.hw; ++i) {
        const int64_t at = (int64_t(n) * s.c + c) * s.hw + i;
        my += y[size_t(at)];
        mx += x[size_t(at)];
      }
    my /= double(count);
    mx /= double(count);
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.hw; ++i) {
        const int64_t at = (int64_t(n) * s.c + c) * s.hw + i;
        vy += (y[size_t(at)] - my) * (y[size_t(at)] - my);
        vx += (x[size_t(at)] - mx) * (x[size_t(at)] - mx);
      }
    vy /= double(count);
    EXPECT_NEAR(my, 0.0, 1e-12) << "channel " << c;
    EXPECT_NEAR(vy, 1.0, 1e-8) << "channel " << c;
    EXPECT_NEAR(mean[size_t(c)], mx, 1e-12);
    EXPECT_NEAR(invstd[size_t(c)], 1.0 / std::sqrt(vx / double(count) + eps), 1e-9);
    EXPECT_NEAR(rm[size_t(c)], 0.75 * 0.5 + 0.25 * mx, 1e-12) << "running_mean channel " << c;
    EXPECT_NEAR(rv[size_t(c)], 0.75 * 2.0 + 0.25 * vx / double(count - 1), 1e-12)
        << "running_var channel " << c;
  }
}

TEST(BatchNorm, LargeMeanSmallSpreadKeepsPrecision) {
  // float data around 1000 with spread 1e-2: a naive Σx² − (Σx)² in float would lose the variance.
  const BatchNormShape s{8, 2, 50};
  const int64_t total = int64_t(s.n) * s.c * s.hw;
  const size_t nt = static_cast<size_t>(total);
  auto x = random_vector<float>(total, 62, 1000.0 - 0.01, 1000.0 + 0.01);
  std::vector<float> y(nt), y_ref(nt), m(2), is(2), m_ref(2), is_ref(2);
  batchnorm_forward_train_cpu<float>(s, x.data(), nullptr, nullptr, y.data(), m.data(), is.data(), nullptr,
                                     nullptr, 0.1, 1e-8);
  batchnorm_forward_train_ref_cpu<float>(s, x.data(), nullptr, nullptr, y_ref.data(), m_ref.data(),
                                         is_ref.data(), nullptr, nullptr, 0.1, 1e-8);
  expect_close(is, is_ref, 0.0, 1e-3, "invstd at large mean");
  // y is limited by float's resolution of x itself (ulp(1000)/std ≈ 1e-2), not by the statistics.
  expect_close(y, y_ref, 3e-2, 0.0, "y at large mean");
}

TEST(BatchNorm, EvalForwardAndBackward) {
  const BatchNormShape s{3, 7, 10};
  const int64_t total = int64_t(s.n) * s.c * s.hw;
  const size_t nt = static_cast<size_t>(total);
  const auto x = random_vector<double>(total, 71, -3.0, 3.0);
  const auto dy = random_vector<double>(total, 72);
  const auto gamma = random_vector<double>(s.c, 73, 0.5, 1.5);
  const auto beta = random_vector<double>(s.c, 74);
  const auto rm = random_vector<double>(s.c, 75);
  const auto rv = random_vector<double>(s.c, 76, 0.5, 2.0);
  const double eps = 1e-5;
  std::vector<double> y(nt), want(nt), dx(nt), dx_want(nt);
  std::vector<double> dg(size_t(s.c)), db(size_t(s.c)), dg_want(size_t(s.c), 0.0), db_want(size_t(s.c), 0.0);
  batchnorm_forward_eval_cpu<double>(s, x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), eps,
                                     y.data());
  batchnorm_backward_eval_cpu<double>(s, x.data(), dy.data(), gamma.data(), rm.data(), rv.data(), eps,
                                      dx.data(), dg.data(), db.data());
  for (int n = 0; n < s.n; ++n)
    for (int c = 0; c < s.c; ++c)
      for (int i = 0; i < s.hw; ++i) {
        const size_t at = size_t((int64_t(n) * s.c + c) * s.hw + i);
        const double inv = 1.0 / std::sqrt(rv[size_t(c)] + eps), xhat = (x[at] - rm[size_t(c)]) * inv;
        want[at] = xhat * gamma[size_t(c)] + beta[size_t(c)];
        dx_want[at] = dy[at] * gamma[size_t(c)] * inv;
        dg_want[size_t(c)] += dy[at] * xhat;
        db_want[size_t(c)] += dy[at];
      }
  expect_close(y, want, 1e-12, 1e-12, "eval forward");
  expect_close(dx, dx_want, 1e-12, 1e-12, "eval backward dx");
  expect_close(dg, dg_want, 1e-12, 1e-12, "eval backward dgamma");
  expect_close(db, db_want, 1e-12, 1e-12, "eval backward dbeta");
}

// The training backward is the gradient of L = Σ dy ⊙ BN(x) (statistics recomputed from x), checked by
// central differences in double on the fast path.
TEST(BatchNorm, TrainBackwardMatchesFiniteDifferences) {
  const BatchNormShape s{3, 2, 5};
  const int64_t total = int64_t(s.n) * s.c * s.hw;
  const size_t nt = static_cast<size_t>(total);
  auto x = random_vector<double>(total, 81, -2.0, 2.0);
  const auto dy = random_vector<double>(total, 82);
  const auto gamma = random_vector<double>(s.c, 83, 0.5, 1.5);
  const auto beta = random_vector<double>(s.c, 84);
  std::vector<double> y(nt), mean(size_t(s.c)), invstd(size_t(s.c));
  auto loss = [&](const std::vector<double>& xv, const std::vector<double>& g) {
    batchnorm_forward_train_cpu<double>(s, xv.data(), g.data(), beta.data(), y.data(), mean.data(),
                                        invstd.data(), nullptr, nullptr, 0.1, 1e-5);
    return test::dot(y.data(), dy.data(), total);
  };
  loss(x, gamma);
  std::vector<double> dx(nt), dg(size_t(s.c)), db(size_t(s.c));
  batchnorm_backward_train_cpu<double>(s, x.data(), dy.data(), gamma.data(), mean.data(), invstd.data(),
                                       dx.data(), dg.data(), db.data());
  const double h = 1e-5;
  std::vector<double> num(nt);
  for (int64_t i = 0; i < total; ++i) {
    auto xp = x, xm = x;
    xp[size_t(i)] += h;
    xm[size_t(i)] -= h;
    num[size_t(i)] = (loss(xp, gamma) - loss(xm, gamma)) / (2 * h);
  }
  expect_close(dx, num, 1e-7, 1e-6, "dx vs central differences");
  std::vector<double> num_g(size_t(s.c));
  for (int c = 0; c < s.c; ++c) {
    auto gp = gamma, gm = gamma;
    gp[size_t(c)] += h;
    gm[size_t(c)] -= h;
    num_g[size_t(c)] = (loss(x, gp) - loss(x, gm)) / (2 * h);
  }
  expect_close(dg, num_g, 1e-7, 1e-6, "dgamma vs central differences");
}

// Fused BN + ReLU (+ residual) against the separate fast kernels (bit for bit: the same expression,
// then the same add and max) and, through them, the references; the fused backwards (ReLU mask recomputed
// from x, or from y with a residual) against the reference backward of the masked dy, the mask taken from
// the fused forward's y, so a single element whose recomputed mask disagreed with the forward would fail.
template <typename T>
void check_fused(const BatchNormShape& s, bool affine, bool residual, std::vector<T> x, std::vector<T> beta) {
  SCOPED_TRACE(describe(s) + (affine ? " affine" : " plain") + (residual ? " residual" : "") +
               (std::is_same<T, float>::value ? " float" : " double"));
  const int64_t total = int64_t(s.n) * s.c * s.hw;
  const size_t nt = static_cast<size_t>(total);
  const auto r = random_vector<T>(total, 92);
  const auto dy = random_vector<T>(total, 93);
  const auto gamma = random_vector<T>(s.c, 94, 0.5, 1.5);
  const T* g = affine ? gamma.data() : nullptr;
  const T* bt = affine ? beta.data() : nullptr;
  const T* rp = residual ? r.data() : nullptr;
  auto rm = random_vector<T>(s.c, 95), rv = random_vector<T>(s.c, 96, 0.5, 2.0);
  auto rm2 = rm, rv2 = rv;
  std::vector<T> y(nt, T(-1)), bn(nt), want(nt), mean(size_t(s.c)), invstd(size_t(s.c)), mean2(size_t(s.c)),
      invstd2(size_t(s.c));
  batchnorm_relu_forward_train_cpu<T>(s, x.data(), rp, g, bt, y.data(), mean.data(), invstd.data(), rm.data(),
                                      rv.data(), 0.1, 1e-5);
  batchnorm_forward_train_cpu<T>(s, x.data(), g, bt, bn.data(), mean2.data(), invstd2.data(), rm2.data(),
                                 rv2.data(), 0.1, 1e-5);
  for (size_t i = 0; i < nt; ++i) {
    const T z = residual ? T(bn[i] + r[i]) : bn[i];
    want[i] = z < T(0) ? T(0) : z;
  }
  expect_close(y, want, 0.0, 0.0, "fused forward y vs bn + add + relu");
  expect_close(mean, mean2, 0.0, 0.0, "save_mean");
  expect_close(invstd, invstd2, 0.0, 0.0, "save_invstd");
  expect_close(rm, rm2, 0.0, 0.0, "running_mean");
  expect_close(rv, rv2, 0.0, 0.0, "running_var");

  // Eval forward likewise.
  std::vector<T> ye(nt), bne(nt);
  batchnorm_relu_forward_eval_cpu<T>(s, x.data(), rp, g, bt, rm.data(), rv.data(), 1e-5, ye.data());
  batchnorm_forward_eval_cpu<T>(s, x.data(), g, bt, rm.data(), rv.data(), 1e-5, bne.data());
  for (size_t i = 0; i < nt; ++i) {
    const T z = residual ? T(bne[i] + r[i]) : bne[i];
    want[i] = z < T(0) ? T(0) : z;
  }
  expect_close(ye, want, 0.0, 0.0, "fused eval forward");

  std::vector<T> dz(nt), dx(nt, T(7)), dx_ref(nt), dg(size_t(s.c)), db(size_t(s.c)), dg_ref(size_t(s.c)),
      db_ref(size_t(s.c));
  int64_t kept = 0;
  for (size_t i = 0; i < nt; ++i) {
    dz[i] = y[i] > T(0) ? dy[i] : T(0);
    kept += y[i] > T(0);
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, total);
  std::vector<T> dr(nt, T(7));
  if (residual) {
    batchnorm_relu_residual_backward_train_cpu<T>(s, x.data(), y.data(), dy.data(), g, mean.data(), invstd.data(),
                                                  dx.data(), dr.data(), dg.data(), db.data());
    expect_close(dr, dz, 0.0, 0.0, "fused residual backward dr = dy masked by y > 0");
  } else {
    batchnorm_relu_backward_train_cpu<T>(s, x.data(), dy.data(), g, bt, mean.data(), invstd.data(), dx.data(),
                                         dg.data(), db.data());
  }
  batchnorm_backward_train_ref_cpu<T>(s, x.data(), dz.data(), g, mean.data(), invstd.data(), dx_ref.data(),
                                      dg_ref.data(), db_ref.data());
  const double tol = std::is_same<T, float>::value ? 2e-4 : 1e-10;
  expect_close(dx, dx_ref, tol, tol, "fused backward dx");
  expect_close(dg, dg_ref, tol, tol, "fused backward dgamma");
  expect_close(db, db_ref, tol, tol, "fused backward dbeta");
}

TEST(BatchNorm, FusedReluMatchesSeparateOps) {
  for (const auto& s : kShapes)
    for (int affine = 0; affine < 2; ++affine)
      for (int residual = 0; residual < 2; ++residual) {
        if (int64_t(s.n) * s.hw < 2) continue;
        const int64_t total = int64_t(s.n) * s.c * s.hw;
        check_fused<float>(s, affine, residual, random_vector<float>(total, 91, 1.0, 5.0),
                           random_vector<float>(s.c, 97));
        check_fused<double>(s, affine, residual, random_vector<double>(total, 91, 1.0, 5.0),
                            random_vector<double>(s.c, 97));
      }
}

// Ties at the kink: the integers 1..5 repeated have mean exactly 3, so with β = 0 every x = 3 gives z = 0
// exactly (masked: relu'(0) = 0), and tiny β put those z a few ulps either side of 0.
TEST(BatchNorm, FusedReluMaskAgreesAtTheKink) {
  const BatchNormShape s{4, 3, 10};
  const int64_t total = int64_t(s.n) * s.c * s.hw;
  std::vector<float> x(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) x[size_t(i)] = float(i % 5 + 1);  // 1..5, mean 3 per channel
  for (float b : {0.0f, 1e-7f, -1e-7f, 3e-8f}) {
    SCOPED_TRACE(str("beta=", b));
    check_fused<float>(s, true, false, x, std::vector<float>(size_t(s.c), b));
  }
}

// Moments gathered by the producer of x replace the statistics pass: the same y and statistics as
// computing them (within rounding), they are really used (shifted moments shift y), and moments that do
// not describe x are an error.
TEST(BatchNorm, FusedReluTakesGivenMoments) {
  const BatchNormShape s{5, 4, 12};
  const int64_t total = int64_t(s.n) * s.c * s.hw, count = int64_t(s.n) * s.hw;
  const size_t nt = static_cast<size_t>(total);
  const auto x = random_vector<float>(total, 101, 1.0, 5.0);
  const auto gamma = random_vector<float>(s.c, 102, 0.5, 1.5), beta = random_vector<float>(s.c, 103);
  ChannelMoments m;
  m.count = count;
  m.mean.assign(size_t(s.c), 0.0);
  m.m2.assign(size_t(s.c), 0.0);
  for (int c = 0; c < s.c; ++c) {
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.hw; ++i) m.mean[size_t(c)] += double(x[size_t((n * s.c + c) * s.hw + i)]) / double(count);
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.hw; ++i) {
        const double d = double(x[size_t((n * s.c + c) * s.hw + i)]) - m.mean[size_t(c)];
        m.m2[size_t(c)] += d * d;
      }
  }
  std::vector<float> y(nt), y_given(nt), mean(size_t(s.c)), invstd(size_t(s.c)), mean_g(size_t(s.c)),
      invstd_g(size_t(s.c));
  batchnorm_relu_forward_train_cpu<float>(s, x.data(), nullptr, gamma.data(), beta.data(), y.data(), mean.data(),
                                          invstd.data(), nullptr, nullptr, 0.1, 1e-5);
  batchnorm_relu_forward_train_cpu<float>(s, x.data(), nullptr, gamma.data(), beta.data(), y_given.data(),
                                          mean_g.data(), invstd_g.data(), nullptr, nullptr, 0.1, 1e-5, &m);
  expect_close(y_given, y, 1e-5, 1e-5, "y with given moments");
  expect_close(mean_g, mean, 1e-6, 1e-6, "mean from given moments");
  expect_close(invstd_g, invstd, 1e-6, 1e-6, "invstd from given moments");
  ChannelMoments shifted = m;
  for (double& v : shifted.mean) v += 1.0;
  batchnorm_relu_forward_train_cpu<float>(s, x.data(), nullptr, gamma.data(), beta.data(), y_given.data(),
                                          mean_g.data(), invstd_g.data(), nullptr, nullptr, 0.1, 1e-5, &shifted);
  for (int c = 0; c < s.c; ++c) EXPECT_NEAR(mean_g[size_t(c)], mean[size_t(c)] + 1.0f, 1e-5);
  ChannelMoments wrong = m;
  wrong.count = count - 1;
  EXPECT_THROW(batchnorm_relu_forward_train_cpu<float>(s, x.data(), nullptr, gamma.data(), beta.data(),
                                                       y_given.data(), mean_g.data(), invstd_g.data(), nullptr,
                                                       nullptr, 0.1, 1e-5, &wrong),
               Error);
  wrong = m;
  wrong.mean.pop_back();
  EXPECT_THROW(batchnorm_relu_forward_train_cpu<float>(s, x.data(), nullptr, gamma.data(), beta.data(),
                                                       y_given.data(), mean_g.data(), invstd_g.data(), nullptr,
                                                       nullptr, 0.1, 1e-5, &wrong),
               Error);
}

TEST(BatchNorm, RejectsSingleValuePerChannel) {
  const BatchNormShape s{1, 4, 1};
  float v[4] = {1, 2, 3, 4}, y[4], m[4], is[4];
  EXPECT_THROW(
      batchnorm_forward_train_cpu<float>(s, v, nullptr, nullptr, y, m, is, nullptr, nullptr, 0.1, 1e-5),
      Error);
}

}  // namespace
}  // namespace sparrow
