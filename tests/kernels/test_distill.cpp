// Parity and gradient tests of the fused KL-distillation kernels (kernels/distill) on B×C row-major logits:
// fused CPU kernel (float, double) vs the composed double reference for every mode, central finite
// differences in double, the shared row math (exp, online states, the CUDA lane algorithm emulated on the
// CPU), and the CUDA kernel vs the CPU kernel (skipped without a device).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/base/device.h"
#include "engine/base/error.h"
#include "kernels/distill/distill.h"
#include "kernels/distill/distill_row.h"
#include "tests/kernels/check.h"

#if SPARROW_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace sparrow {
namespace {

using test::expect_close;

// ---- modes and data ---------------------------------------------------------------------------------
struct Mode {
  double beta;
  bool labels;
  double alpha;
  LogitNorm norm;
};

std::string mode_name(const Mode& m) {
  std::string s = m.beta == 0.0 ? "fwd" : m.beta == 1.0 ? "rev" : "mix";
  if (m.labels) s += "_ce";
  s += m.norm == LogitNorm::none ? "" : m.norm == LogitNorm::before_T ? "_stdBeforeT" : "_stdAfterT";
  return s;
}

// Forward, reverse and the β = 0.5 mix; without labels and with a CE term (α = 0.6); no standardisation,
// standardisation before T and after T: 18 modes.
std::vector<Mode> all_modes() {
  std::vector<Mode> v;
  for (LogitNorm n : {LogitNorm::none, LogitNorm::before_T, LogitNorm::after_T})
    for (bool lab : {false, true})
      for (double beta : {0.0, 1.0, 0.5}) v.push_back(Mode{beta, lab, lab ? 0.6 : 1.0, n});
  return v;
}

KlParams params_of(const Mode& m, double T) {
  KlParams p;
  p.T = T;
  p.alpha = m.alpha;
  p.beta = m.beta;
  p.norm = m.norm;
  return p;
}

// Logits as a network produces them: per-row offset and spread, teacher correlated with the student.
struct Case {
  int rows, cols;
  std::vector<double> zs, zt;
  std::vector<int64_t> labels;
};

Case make_case(int rows, int cols, uint32_t seed, double spread = 3.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  Case c{rows, cols, std::vector<double>(size_t(rows) * cols), std::vector<double>(size_t(rows) * cols),
         std::vector<int64_t>(size_t(rows))};
  for (int r = 0; r < rows; ++r) {
    const double off_s = 5.0 * nd(gen), off_t = 5.0 * nd(gen);
    for (int j = 0; j < cols; ++j) {
      const double common = spread * nd(gen);
      c.zs[size_t(r) * cols + j] = off_s + common + 0.7 * spread * nd(gen);
      c.zt[size_t(r) * cols + j] = off_t + 1.3 * common + 0.5 * spread * nd(gen);
    }
    c.labels[size_t(r)] = int64_t(std::uniform_int_distribution<int>(0, cols - 1)(gen));
  }
  return c;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
struct Result {
  double loss = 0;
  std::vector<T> dzs, dzt, rows;
};

// which: 0 reference, 1 fused kernel without the teacher gradient (the fast path for norm none),
// 2 fused kernel with the teacher gradient (the generic path).
template <typename T>
Result<T> run(int which, const Case& c, const std::vector<T>& zs, const std::vector<T>& zt,
              const KlParams& p, bool labels) {
  Result<T> r;
  const size_t n = size_t(c.rows) * c.cols;
  r.dzs.assign(n, T(-7));
  r.dzt.assign(which == 1 ? 0 : n, T(-7));
  r.rows.assign(size_t(c.rows), T(-7));
  const int64_t* lab = labels ? c.labels.data() : nullptr;
  if (which == 0)
    r.loss = distill_kl_ref_cpu<T>(c.rows, c.cols, zs.data(), zt.data(), lab, p, r.dzs.data(), r.dzt.data(),
                                   r.rows.data());
  else
    r.loss = distill_kl_cpu<T>(c.rows, c.cols, zs.data(), zt.data(), lab, p, r.dzs.data(),
                               which == 2 ? r.dzt.data() : nullptr, r.rows.data());
  return r;
}

template <typename T>
double max_abs(const std::vector<T>& v) {
  double m = 0;
  for (T x : v) m = std::max(m, std::fabs(double(x)));
  return m;
}

// Tolerances of the fused kernel against the double reference: relative parts plus absolute floors
// derived from what finite-precision arithmetic can resolve (eps = unit roundoff of the kernel's type,
// U = the largest |u| in the case, gs = w_kl/(B·T), or w_kl/(B·s) when standardising):
//  - loss: KL = E[u_t − u_s] + dl cancels terms of size ~(1 + log C + U) down to the KL: floor
//    ~eps·w_kl·(1 + log C + U) (float at T = 20: ~1e-4 of a small KL); CE = lse − z_y: ~eps·w_ce·|z|;
//  - gradients: relative to the largest reference element, floor ~eps·U·gs (log p_s − log p_t − KL
//    is a difference of numbers of size U; at logits of 1e4 this is the whole story); in the
//    standardised modes the backward subtracts terms of size gs that can cancel far below it (to 0 for
//    C = 2, where u = ±1/T whatever z is), so the relative part is taken of max(ref, gs) there;
//  - the double reference itself carries ~1e-16·U on log p (it is composed like PyTorch's).
// Float relative parts measured ≤ ~6e-6 on gradients, ~1e-6 on losses; set with headroom.
template <typename T>
struct KlTol;
template <>
struct KlTol<float> {
  static constexpr double loss_rel = 2e-5, grad_atol = 2e-5, grad_rtol = 1e-4, eps = 6e-8;
};
template <>
struct KlTol<double> {
  static constexpr double loss_rel = 1e-11, grad_atol = 1e-11, grad_rtol = 1e-9, eps = 1.1e-16;
};

template <typename T>
std::vector<double> widen(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// What a comparison needs to know about the case besides the two results.
struct Scales {
  double loss_floor = 0;  // absolute loss floor, in units of eps
  double gs = 0, gt = 0;  // gradient scales w_kl/(B·T) or w_kl/(B·s_min), student and teacher
  double u_max = 0;       // largest |u|
  double ce_grad = 0;     // w_ce·(1 + max|z|)/B: floor of the CE gradient, in units of eps
  bool standardised = false;
};

// Smallest softmax-argument scale s over the rows (T, or the standardisation's s) and the largest |u|.
std::pair<double, double> row_scales(const Case& c, const std::vector<double>& z, const KlParams& p) {
  double smin = HUGE_VAL, umax = 0;
  for (int r = 0; r < c.rows; ++r) {
    const double* x = z.data() + size_t(r) * c.cols;
    double mean = 0, var = 0;
    for (int j = 0; j < c.cols; ++j) mean += x[j];
    mean /= c.cols;
    for (int j = 0; j < c.cols; ++j) var += (x[j] - mean) * (x[j] - mean);
    const double sd = std::sqrt(var / c.cols);
    double s = p.T, center = 0;
    if (p.norm != LogitNorm::none) {
      s = (p.norm == LogitNorm::before_T ? p.T : 1.0) * sd + p.T * kLogitNormEps;
      center = mean;
    }
    smin = std::min(smin, s);
    for (int j = 0; j < c.cols; ++j) umax = std::max(umax, std::fabs(x[j] - center) / s);
  }
  return {smin, umax};
}

Scales scales_of(const Case& c, const std::vector<double>& zs, const std::vector<double>& zt, const KlParams& p,
                 bool labels) {
  const distill::Weights w = distill::kl_weights(p, labels);
  double zmax = 0;
  for (double x : zs) zmax = std::max(zmax, std::fabs(x));
  const auto [ss, us] = row_scales(c, zs, p);
  const auto [st, ut] = row_scales(c, zt, p);
  Scales sc;
  sc.u_max = std::max(us, ut);
  sc.loss_floor = 16.0 * (w.kl * (1.0 + std::log(double(c.cols)) + sc.u_max) + w.ce * (1.0 + zmax));
  sc.gs = w.kl / (c.rows * ss);
  sc.gt = w.kl / (c.rows * st);
  sc.ce_grad = w.ce * (1.0 + zmax) / c.rows;
  sc.standardised = p.norm != LogitNorm::none;
  return sc;
}

template <typename T>
void expect_matches(const Result<T>& got, const Result<double>& ref, bool with_dzt, const Scales& sc,
                    double scale = 1.0) {
  using Tol = KlTol<T>;
  const double eps = Tol::eps, eps_ref = KlTol<double>::eps;
  const double loss_abs = scale * (eps + eps_ref) * sc.loss_floor;
  EXPECT_NEAR(got.loss, ref.loss, loss_abs + scale * Tol::loss_rel * std::fabs(ref.loss)) << "batchmean loss";
  expect_close(widen(got.rows), ref.rows, loss_abs, scale * Tol::loss_rel, "row loss");
  auto grad_atol = [&](const std::vector<double>& r, double g, double ce) {
    const double base = sc.standardised ? std::max(max_abs(r), g) : max_abs(r);
    return scale * (Tol::grad_atol * base + 16.0 * (eps + eps_ref) * (sc.u_max * g + ce));
  };
  expect_close(widen(got.dzs), ref.dzs, grad_atol(ref.dzs, sc.gs, sc.ce_grad), scale * Tol::grad_rtol, "dzs");
  if (with_dzt)
    expect_close(widen(got.dzt), ref.dzt, grad_atol(ref.dzt, sc.gt, 0.0), scale * Tol::grad_rtol, "dzt");
}

// Reference on the float inputs widened to double, so the comparison measures the kernel alone.
template <typename T>
Result<double> reference_on(const Case& c, const std::vector<T>& zs, const std::vector<T>& zt,
                            const KlParams& p, bool labels) {
  return run<double>(0, c, std::vector<double>(zs.begin(), zs.end()),
                     std::vector<double>(zt.begin(), zt.end()), p, labels);
}

template <typename T>
void check_case(const Case& c, const Mode& m, double T_) {
  const KlParams p = params_of(m, T_);
  const std::vector<T> zs = cast<T>(c.zs), zt = cast<T>(c.zt);
  const Result<double> ref = reference_on(c, zs, zt, p, m.labels);
  const Scales sc = scales_of(c, widen(zs), widen(zt), p, m.labels);
  {
    SCOPED_TRACE("fused, student gradient only");
    expect_matches(run<T>(1, c, zs, zt, p, m.labels), ref, false, sc);
  }
  {
    SCOPED_TRACE("fused, student and teacher gradients");
    // With α = 0 the teacher gets no gradient at all (nothing to compare against).
    expect_matches(run<T>(2, c, zs, zt, p, m.labels), ref, m.alpha > 0.0, sc);
  }
}

// ---- kernel vs reference, every mode ----------------------------------------------------------------
class DistillParity : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(DistillParity, FusedMatchesReference) {
  const Mode m = all_modes()[size_t(std::get<0>(GetParam()))];
  const int C = std::get<1>(GetParam());
  for (int B : {1, 3, 128}) {
    for (double T : {1.0, 3.0, 4.0, 20.0}) {
      SCOPED_TRACE(::testing::Message() << mode_name(m) << " B=" << B << " C=" << C << " T=" << T);
      const Case c = make_case(B, C, uint32_t(1000 * B + C + int(T)));
      {
        SCOPED_TRACE("double");
        check_case<double>(c, m, T);
      }
      {
        SCOPED_TRACE("float");
        check_case<float>(c, m, T);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllModes, DistillParity,
                         ::testing::Combine(::testing::Range(0, 18),
                                            ::testing::Values(2, 10, 100, 1000, 4099)),
                         [](const auto& info) {
                           return mode_name(all_modes()[size_t(std::get<0>(info.param))]) + "_C" +
                                  std::to_string(std::get<1>(info.param));
                         });

// α at its ends: α = 0 is pure CE (the KL weight is 0), α = 1 with labels is the KL term alone.
TEST(Distill, AlphaEnds) {
  const Case c = make_case(5, 13, 7);
  for (double alpha : {0.0, 1.0})
    for (LogitNorm n : {LogitNorm::none, LogitNorm::after_T})
      for (double T : {1.0, 4.0}) {
        SCOPED_TRACE(::testing::Message() << "alpha=" << alpha << " T=" << T << " " << logit_norm_name(n));
        const Mode m{0.5, true, alpha, n};
        check_case<double>(c, m, T);
        check_case<float>(c, m, T);
      }
  // α = 0 equals softmax cross-entropy: loss = mean(lse(z) − z_y), gradient (softmax − onehot)/B.
  KlParams p;
  p.alpha = 0.0;
  p.T = 4.0;
  std::vector<double> dzs(c.zs.size());
  const double loss = distill_kl_cpu<double>(c.rows, c.cols, c.zs.data(), c.zt.data(), c.labels.data(), p,
                                             dzs.data(), nullptr, nullptr);
  double ce = 0;
  std::vector<double> want(c.zs.size());
  for (int r = 0; r < c.rows; ++r) {
    const double* z = c.zs.data() + size_t(r) * c.cols;
    double mx = *std::max_element(z, z + c.cols), s = 0;
    for (int j = 0; j < c.cols; ++j) s += std::exp(z[j] - mx);
    ce += mx + std::log(s) - z[c.labels[size_t(r)]];
    for (int j = 0; j < c.cols; ++j)
      want[size_t(r) * c.cols + j] = (std::exp(z[j] - mx) / s - (j == c.labels[size_t(r)])) / c.rows;
  }
  EXPECT_NEAR(loss, ce / c.rows, 1e-12);
  expect_close(dzs, want, 1e-14, 1e-10, "alpha=0 CE gradient");
}

// ---- extreme logits ----------------------------------------------------------------------------------
// ±1e4 (the softmaxes are one-hot to working precision; a naive exp overflows), and a +1e4 offset on
// ordinary logits (shift invariance: the loss must equal the un-shifted one).
TEST(Distill, ExtremeLogits) {
  for (const Mode& m : all_modes())
    for (int C : {2, 10, 1000})
      for (double T : {1.0, 4.0}) {
        SCOPED_TRACE(::testing::Message() << mode_name(m) << " C=" << C << " T=" << T);
        // Uniform in ±1e4, then three classes per row placed at 1e4, 1e4 − T, 1e4 − 2T so that each
        // softmax has a few non-negligible entries (else most gradients are exactly 0).
        Case c = make_case(3, C, uint32_t(C + 17));
        std::mt19937 gen{uint32_t(C)};
        std::uniform_real_distribution<double> u(-1e4, 1e4);
        std::uniform_int_distribution<int> pick(0, C - 1);
        for (auto* z : {&c.zs, &c.zt}) {
          for (auto& x : *z) x = u(gen);
          for (int r = 0; r < c.rows; ++r)
            for (int k = 0; k < 3; ++k) (*z)[size_t(r) * C + size_t(pick(gen))] = 1e4 - k * T;
        }
        const KlParams p = params_of(m, T);
        for (int which : {1, 2}) {
          const Result<double> got = run<double>(which, c, c.zs, c.zt, p, m.labels);
          ASSERT_TRUE(std::isfinite(got.loss));
          expect_matches(got, run<double>(0, c, c.zs, c.zt, p, m.labels), which == 2,
                         scales_of(c, c.zs, c.zt, p, m.labels), 10.0);
          const std::vector<float> zs = cast<float>(c.zs), zt = cast<float>(c.zt);
          const Result<float> gf = run<float>(which, c, zs, zt, p, m.labels);
          ASSERT_TRUE(std::isfinite(gf.loss));
          expect_matches(gf, reference_on(c, zs, zt, p, m.labels), which == 2,
                         scales_of(c, widen(zs), widen(zt), p, m.labels), 10.0);
        }
      }
}

TEST(Distill, LargeOffsetIsShiftInvariant) {
  for (double beta : {0.0, 0.5, 1.0}) {
    const Case c = make_case(3, 100, 5);
    Case shifted = c;
    for (auto& x : shifted.zs) x += 1e4;
    for (auto& x : shifted.zt) x -= 1e4;
    KlParams p;
    p.T = 3.0;
    p.beta = beta;
    p.alpha = 0.5;
    const Result<double> a = run<double>(1, c, c.zs, c.zt, p, true);
    const Result<double> b = run<double>(1, shifted, shifted.zs, shifted.zt, p, true);
    EXPECT_NEAR(a.loss, b.loss, 1e-9 * std::fabs(a.loss)) << "beta " << beta;
    expect_close(b.dzs, a.dzs, 1e-9 * max_abs(a.dzs), 1e-7, "shifted dzs");
  }
}

// ---- identical inputs ---------------------------------------------------------------------------------
// KL(p‖p) = 0 and its gradient is 0, exactly: both softmaxes see the same numbers through the same ops.
template <typename T>
void check_identical() {
  for (const Mode& m : all_modes()) {
    if (m.labels) continue;
    for (int C : {2, 10, 1000, 4099})
      for (double Tv : {1.0, 3.0, 20.0}) {
        SCOPED_TRACE(::testing::Message() << mode_name(m) << " C=" << C << " T=" << Tv);
        const Case c = make_case(3, C, uint32_t(C));
        const std::vector<T> z = cast<T>(c.zs);
        for (int which : {1, 2}) {
          const Result<T> r = run<T>(which, c, z, z, params_of(m, Tv), false);
          EXPECT_EQ(r.loss, 0.0);
          for (T v : r.rows) ASSERT_EQ(v, T(0));
          for (T v : r.dzs) ASSERT_EQ(v, T(0));
          for (T v : r.dzt) ASSERT_EQ(v, T(0));
        }
      }
  }
}
TEST(Distill, IdenticalInputsGiveZeroDouble) { check_identical<double>(); }
TEST(Distill, IdenticalInputsGiveZeroFloat) { check_identical<float>(); }

// ---- finite differences ---------------------------------------------------------------------------------
// Central differences of the fused kernel's own batchmean loss in double, for student and teacher logits,
// every mode, including the standardised ones (the gradient flows through mean and std).
double fd_loss(const Case& c, const std::vector<double>& zs, const std::vector<double>& zt, const KlParams& p,
               bool labels) {
  return distill_kl_cpu<double>(c.rows, c.cols, zs.data(), zt.data(), labels ? c.labels.data() : nullptr, p,
                                nullptr, nullptr, nullptr);
}

TEST(Distill, GradientsMatchFiniteDifferences) {
  const double h = 1e-5;
  for (const Mode& m : all_modes())
    for (int C : {5, 11})
      for (double T : {1.0, 3.0, 20.0}) {
        SCOPED_TRACE(::testing::Message() << mode_name(m) << " C=" << C << " T=" << T);
        const Case c = make_case(3, C, uint32_t(31 * C + int(T)), 1.5);
        const KlParams p = params_of(m, T);
        std::vector<double> fd_s(c.zs.size()), fd_t(c.zt.size());
        for (size_t i = 0; i < c.zs.size(); ++i) {
          std::vector<double> zp = c.zs, zm = c.zs;
          zp[i] += h;
          zm[i] -= h;
          fd_s[i] = (fd_loss(c, zp, c.zt, p, m.labels) - fd_loss(c, zm, c.zt, p, m.labels)) / (2 * h);
          zp = c.zt;
          zm = c.zt;
          zp[i] += h;
          zm[i] -= h;
          fd_t[i] = (fd_loss(c, c.zs, zp, p, m.labels) - fd_loss(c, c.zs, zm, p, m.labels)) / (2 * h);
        }
        // Truncation error h²·f'''/6 and rounding 1e-16·L/h: both below 1e-8 for these losses.
        const double atol_s = 1e-8 + 1e-7 * max_abs(fd_s), atol_t = 1e-8 + 1e-7 * max_abs(fd_t);
        for (int which : {0, 1, 2}) {
          SCOPED_TRACE(which == 0 ? "reference" : which == 1 ? "fused" : "fused with teacher gradient");
          const Result<double> r = run<double>(which, c, c.zs, c.zt, p, m.labels);
          expect_close(r.dzs, fd_s, atol_s, 1e-6, "dzs vs finite differences");
          if (which != 1) expect_close(r.dzt, fd_t, atol_t, 1e-6, "dzt vs finite differences");
        }
      }
}

// ---- the shared row math --------------------------------------------------------------------------------
TEST(DistillRowMath, ExpAccuracy) {
  // The bounds stated in distill_row.h, over the ranges the kernels use.
  double worst_f = 0, worst_d = 0, worst_f2 = 0, worst_d2 = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float xf = float(-87.0 * i / 200000.0);
    const double rf = std::exp(double(xf));
    worst_f = std::max(worst_f, std::fabs(double(distill::kl_exp(xf)) - rf) / rf);
    const double xd = -708.0 * i / 200000.0;
    const long double rd = std::exp((long double)xd);
    worst_d = std::max(worst_d, double(std::fabs((long double)distill::kl_exp(xd) - rd) / rd));
    const float yf = float(-125.0 * i / 200000.0);
    const double rf2 = std::exp2(double(yf));
    worst_f2 = std::max(worst_f2, std::fabs(double(distill::kl_exp2(yf)) - rf2) / rf2);
    const double yd = -1021.0 * i / 200000.0;
    const long double rd2 = std::exp2((long double)yd);
    worst_d2 = std::max(worst_d2, double(std::fabs((long double)distill::kl_exp2(yd) - rd2) / rd2));
  }
  EXPECT_LE(worst_f, 1.0e-7);
  EXPECT_LE(worst_d, 2.0e-16);
  EXPECT_LE(worst_f2, 1.0e-7);
  EXPECT_LE(worst_d2, 2.0e-16);
  EXPECT_EQ(distill::kl_exp(0.0f), 1.0f);
  EXPECT_EQ(distill::kl_exp(0.0), 1.0);
  EXPECT_EQ(distill::kl_exp2(0.0f), 1.0f);
  EXPECT_EQ(distill::kl_exp2(0.0), 1.0);
  EXPECT_EQ(distill::kl_exp2(-3.0f), 0.125f);
  // Below the clamp (−inf included): a tiny normal number instead of 0, never NaN or a denormal.
  for (float x : {-HUGE_VALF, -1e4f, -200.0f}) {
    EXPECT_GT(distill::kl_exp(x), 0.0f);
    EXPECT_LE(distill::kl_exp(x), 1.3e-38f);
    EXPECT_GE(distill::kl_exp2(x), 1.17549435e-38f);
    EXPECT_LE(distill::kl_exp2(x), 2.4e-38f);
  }
  EXPECT_LE(distill::kl_exp(-HUGE_VAL), 4e-308);
  EXPECT_LE(distill::kl_exp2(-HUGE_VAL), 4.5e-308);
  EXPECT_TRUE(std::isnan(distill::kl_exp(std::nanf(""))));
}

TEST(DistillRowMath, OnlineSoftmaxPushAndMergeAgree) {
  std::mt19937 gen(3);
  std::normal_distribution<double> nd(0.0, 30.0);
  std::vector<double> x(1001), v(1001);
  for (size_t i = 0; i < x.size(); ++i) x[i] = nd(gen), v[i] = nd(gen);
  double mx = *std::max_element(x.begin(), x.end()), s = 0, w = 0;
  for (size_t i = 0; i < x.size(); ++i) s += std::exp(x[i] - mx), w += std::exp(x[i] - mx) * v[i];
  const double lse = mx + std::log(s), mean_v = w / s;
  for (int groups : {1, 2, 7, 32, 1001}) {
    auto st = distill::online_softmax_empty<double>();
    for (int g = 0; g < groups; ++g) {
      auto part = distill::online_softmax_empty<double>();
      for (size_t i = size_t(g); i < x.size(); i += size_t(groups)) distill::online_softmax_push(part, x[i], v[i]);
      st = distill::online_softmax_merge(st, part);
    }
    EXPECT_NEAR(distill::online_softmax_lse(st), lse, 1e-12 * std::fabs(lse)) << groups << " groups";
    EXPECT_NEAR(st.w / st.s, mean_v, 1e-12 * (std::fabs(mean_v) + 1)) << groups << " groups";
  }
}

TEST(DistillRowMath, MomentsMergeMatchesTwoPass) {
  std::mt19937 gen(4);
  std::normal_distribution<double> nd(1e4, 2.0);  // large mean: the naive Σx² formula would cancel
  std::vector<double> x(777);
  for (auto& e : x) e = nd(gen);
  double mean = 0;
  for (double e : x) mean += e;
  mean /= double(x.size());
  double m2 = 0;
  for (double e : x) m2 += (e - mean) * (e - mean);
  for (int groups : {1, 3, 32}) {
    distill::Moments<double> acc{0, 0, 0};
    for (int g = 0; g < groups; ++g)
      acc = distill::moments_merge(acc, distill::lane_moments<double>(g, groups, int(x.size()), x.data()));
    EXPECT_NEAR(acc.mean, mean, 1e-12 * mean);
    EXPECT_NEAR(acc.m2, m2, 1e-9 * m2);
  }
}

// The CUDA kernel's algorithm run on the CPU: lanes strided over the row, the same merge tree as the
// warp shuffles (lane i takes lane i+off, off = 16..1) and the per-warp shared-memory merge.
template <typename S, typename F>
S emulate_allreduce(std::vector<S> v, int row_threads, F combine) {
  for (int w0 = 0; w0 < row_threads; w0 += 32)
    for (int off = 16; off > 0; off >>= 1)
      for (int i = 0; i < off; ++i) v[size_t(w0 + i)] = combine(v[size_t(w0 + i)], v[size_t(w0 + i + off)]);
  S r = v[0];
  for (int w0 = 32; w0 < row_threads; w0 += 32) r = combine(r, v[size_t(w0)]);
  return r;
}

template <typename A>
double emulate_cuda(int rows, int cols, const A* zs, const A* zt, const int64_t* labels, const KlParams& p,
                    A* dzs, A* row_loss) {
  using namespace distill;
  const int L = cols <= 1024 ? 32 : 256;  // distill_cuda.cu's launch rule
  const Weights w = kl_weights(p, labels != nullptr);
  double total = 0;
  for (int r = 0; r < rows; ++r) {
    const A* a = zs + size_t(r) * cols;
    const A* b = zt + size_t(r) * cols;
    Affine<A> fs = norm_affine<A>(LogitNorm::none, p.T, 0, 0), ft = fs;
    if (p.norm != LogitNorm::none) {
      std::vector<Moments<double>> ms(static_cast<size_t>(L)), mt(static_cast<size_t>(L));
      for (int l = 0; l < L; ++l) {
        ms[size_t(l)] = lane_moments<double>(l, L, cols, a);
        mt[size_t(l)] = lane_moments<double>(l, L, cols, b);
      }
      auto mm = [](const Moments<double>& x, const Moments<double>& y) { return moments_merge(x, y); };
      const Moments<double> s = emulate_allreduce(ms, L, mm), t = emulate_allreduce(mt, L, mm);
      fs = norm_affine<A>(p.norm, p.T, s.mean, std::sqrt(s.m2 / cols));
      ft = norm_affine<A>(p.norm, p.T, t.mean, std::sqrt(t.m2 / cols));
    }
    const bool raw = labels && !ce_shares_student_softmax(p);
    std::vector<LaneStats<A>> ls(static_cast<size_t>(L));
    for (int l = 0; l < L; ++l) ls[size_t(l)] = lane_stats(l, L, cols, a, b, fs, ft, raw);
    const LaneStats<A> st = emulate_allreduce(
        ls, L, [](const LaneStats<A>& x, const LaneStats<A>& y) { return lane_stats_merge(x, y); });
    RowPlan<A> rp = row_plan(p, w, fs, ft, st, cols, labels != nullptr, labels ? labels[r] : int64_t(-1), a,
                             A(1.0 / rows));
    row_loss[r] = A(rp.loss);
    total += double(A(rp.loss));
    if (p.norm != LogitNorm::none) {
      std::vector<std::pair<A, A>> g(static_cast<size_t>(L));
      for (int l = 0; l < L; ++l) lane_grad_sums(l, L, cols, a, b, rp, g[size_t(l)].first, g[size_t(l)].second);
      const auto sum = emulate_allreduce(g, L, [](const std::pair<A, A>& x, const std::pair<A, A>& y) {
        return std::make_pair(x.first + y.first, x.second + y.second);
      });
      rp.gbar = sum.first / A(cols);
      rp.gmu = sum.second / A(cols);
    }
    for (int l = 0; l < L; ++l) lane_write(l, L, cols, a, b, rp, dzs + size_t(r) * cols);
  }
  return total / rows;
}

TEST(DistillRowMath, CudaLaneAlgorithmMatchesReference) {
  for (const Mode& m : all_modes())
    for (int C : {2, 10, 1000, 4099})
      for (double T : {1.0, 4.0}) {
        SCOPED_TRACE(::testing::Message() << mode_name(m) << " C=" << C << " T=" << T);
        const Case c = make_case(3, C, uint32_t(C * 3 + 1));
        const KlParams p = params_of(m, T);
        const int64_t* lab = m.labels ? c.labels.data() : nullptr;
        {
          SCOPED_TRACE("double lanes");
          Result<double> got;
          got.dzs.resize(c.zs.size());
          got.rows.resize(size_t(c.rows));
          got.loss = emulate_cuda<double>(c.rows, c.cols, c.zs.data(), c.zt.data(), lab, p, got.dzs.data(),
                                          got.rows.data());
          expect_matches(got, run<double>(0, c, c.zs, c.zt, p, m.labels), false,
                         scales_of(c, c.zs, c.zt, p, m.labels));
        }
        {
          SCOPED_TRACE("float lanes (what the GPU runs)");
          const std::vector<float> zs = cast<float>(c.zs), zt = cast<float>(c.zt);
          Result<float> got;
          got.dzs.resize(c.zs.size());
          got.rows.resize(size_t(c.rows));
          got.loss = emulate_cuda<float>(c.rows, c.cols, zs.data(), zt.data(), lab, p, got.dzs.data(),
                                         got.rows.data());
          expect_matches(got, reference_on(c, zs, zt, p, m.labels), false,
                         scales_of(c, widen(zs), widen(zt), p, m.labels));
        }
      }
}

// ---- threading, argument checks ---------------------------------------------------------------------------
TEST(Distill, ResultIndependentOfThreadCount) {
  const Case c = make_case(128, 1000, 9);
  const std::vector<float> zs = cast<float>(c.zs), zt = cast<float>(c.zt);
  KlParams p;
  p.T = 4.0;
  p.beta = 0.5;
  p.alpha = 0.7;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Result<float> one = run<float>(1, c, zs, zt, p, true);
  omp_set_num_threads(2);
  const Result<float> two = run<float>(1, c, zs, zt, p, true);
  omp_set_num_threads(saved);
  EXPECT_EQ(one.loss, two.loss);
  EXPECT_TRUE(one.dzs == two.dzs);
}

// When inputs + gradients exceed the last-level cache (> 32 MiB), gradients are written with non-temporal
// stores through a staging block: the rows must equal those computed one at a time (which take the cached path).
TEST(Distill, StreamedLargeOutputMatchesRowByRow) {
  const int B = 1100, C = 8000;  // 35 MB of float gradient
  const Case c = make_case(B, C, 77, 2.0);
  const std::vector<float> zs = cast<float>(c.zs), zt = cast<float>(c.zt);
  KlParams p;
  p.T = 4.0;
  p.alpha = 0.5;
  p.beta = 0.5;
  std::vector<float> dzs(zs.size()), rows(static_cast<size_t>(B));
  const double loss = distill_kl_cpu<float>(B, C, zs.data(), zt.data(), c.labels.data(), p, dzs.data(),
                                            nullptr, rows.data());
  ASSERT_TRUE(std::isfinite(loss));
  for (int r : {0, 1, 547, B - 1}) {
    SCOPED_TRACE(::testing::Message() << "row " << r);
    const size_t off = size_t(r) * C;
    std::vector<float> one(static_cast<size_t>(C));
    float one_loss = 0;
    distill_kl_cpu<float>(1, C, zs.data() + off, zt.data() + off, c.labels.data() + r, p, one.data(), nullptr,
                          &one_loss);
    EXPECT_EQ(rows[size_t(r)], one_loss);
    std::vector<float> got(dzs.begin() + long(off), dzs.begin() + long(off + C));
    for (auto& g : got) g *= float(B);  // the batch call carries 1/B
    expect_close(got, one, 1e-6 * max_abs(one), 1e-6, "streamed row vs single-row call");
  }
}

TEST(Distill, RejectsBadArguments) {
  const Case c = make_case(2, 5, 1);
  std::vector<int64_t> bad = {0, 5};
  KlParams p;
  EXPECT_THROW(distill_kl_cpu<double>(2, 5, c.zs.data(), c.zt.data(), bad.data(), p, nullptr, nullptr, nullptr),
               Error);
  EXPECT_THROW(distill_kl_ref_cpu<double>(2, 5, c.zs.data(), c.zt.data(), bad.data(), p, nullptr, nullptr,
                                          nullptr),
               Error);
  p.T = 0.0;
  EXPECT_THROW(distill_kl_cpu<double>(2, 5, c.zs.data(), c.zt.data(), nullptr, p, nullptr, nullptr, nullptr),
               Error);
  p.T = 1.0;
  p.beta = 1.5;
  EXPECT_THROW(distill_kl_cpu<double>(2, 5, c.zs.data(), c.zt.data(), nullptr, p, nullptr, nullptr, nullptr),
               Error);
  EXPECT_EQ(parse_logit_norm("before-T"), LogitNorm::before_T);
  EXPECT_EQ(parse_logit_norm("after-T"), LogitNorm::after_T);
  EXPECT_EQ(parse_logit_norm("none"), LogitNorm::none);
  EXPECT_THROW(parse_logit_norm("sideways"), Error);
}

// ---- CUDA vs CPU ----------------------------------------------------------------------------------------
TEST(DistillCuda, MatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << cuda_unavailable_reason();
#if SPARROW_HAS_CUDA
  for (const Mode& m : all_modes())
    for (int C : {2, 10, 100, 1000, 4099, 32000})
      for (int B : {1, 3, 128})
        for (double T : {1.0, 4.0}) {
          if (C == 32000 && B == 128) continue;
          SCOPED_TRACE(::testing::Message() << mode_name(m) << " B=" << B << " C=" << C << " T=" << T);
          const Case c = make_case(B, C, uint32_t(C + B));
          const std::vector<float> zs = cast<float>(c.zs), zt = cast<float>(c.zt);
          const KlParams p = params_of(m, T);
          const size_t n = zs.size();
          float *d_zs, *d_zt, *d_g, *d_rows;
          int64_t* d_lab;
          ASSERT_EQ(cudaMalloc(&d_zs, n * sizeof(float)), cudaSuccess);
          ASSERT_EQ(cudaMalloc(&d_zt, n * sizeof(float)), cudaSuccess);
          ASSERT_EQ(cudaMalloc(&d_g, n * sizeof(float)), cudaSuccess);
          ASSERT_EQ(cudaMalloc(&d_rows, size_t(B) * sizeof(float)), cudaSuccess);
          ASSERT_EQ(cudaMalloc(&d_lab, size_t(B) * sizeof(int64_t)), cudaSuccess);
          cudaMemcpy(d_zs, zs.data(), n * sizeof(float), cudaMemcpyHostToDevice);
          cudaMemcpy(d_zt, zt.data(), n * sizeof(float), cudaMemcpyHostToDevice);
          cudaMemcpy(d_lab, c.labels.data(), size_t(B) * sizeof(int64_t), cudaMemcpyHostToDevice);
          distill_kl_cuda(B, C, d_zs, d_zt, m.labels ? d_lab : nullptr, p, d_g, d_rows);
          Result<float> got;
          got.dzs.resize(n);
          got.rows.resize(size_t(B));
          ASSERT_EQ(cudaMemcpy(got.dzs.data(), d_g, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
          ASSERT_EQ(cudaMemcpy(got.rows.data(), d_rows, size_t(B) * sizeof(float), cudaMemcpyDeviceToHost),
                    cudaSuccess);
          for (float v : got.rows) got.loss += v;
          got.loss /= B;
          cudaFree(d_zs);
          cudaFree(d_zt);
          cudaFree(d_g);
          cudaFree(d_rows);
          cudaFree(d_lab);
          // Against the CPU float kernel's inputs in double; the CPU float kernel itself is held to the same.
          expect_matches(got, reference_on(c, zs, zt, p, m.labels), false,
                         scales_of(c, widen(zs), widen(zt), p, m.labels));
        }
#endif
}

}  // namespace
}  // namespace sparrow
