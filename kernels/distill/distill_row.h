// Row math of the fused KL-distillation kernel shared by the CPU kernel and the CUDA kernel (DESIGN.md
// rule 2): the exp polynomial, the online softmax and moment states with their merges, the standardisation
// affine map and its backward, the per-element gradients and the row loss. One row = C contiguous logits.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/common/hd.h"
#include "kernels/distill/distill.h"

namespace sparrow {
namespace distill {

// ---- exp ------------------------------------------------------------------------------------------
// Explicit fused multiply-adds: the exp must not depend on whether the compiler contracts a·b + c
// (nvcc does by default; distill_cpu.cpp turns contraction off so its differences stay exact).
SPARROW_HD float kl_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return fmaf(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
SPARROW_HD double kl_fma(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return ::fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

SPARROW_HD float bits_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}
SPARROW_HD double bits_to_double(int64_t i) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(i));
#else
  double d;
  std::memcpy(&d, &i, sizeof d);
  return d;
#endif
}
SPARROW_HD int32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
#endif
}
SPARROW_HD int64_t double_to_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__double_as_longlong(d));
#else
  int64_t i;
  std::memcpy(&i, &d, sizeof i);
  return i;
#endif
}

// e^x by Cody–Waite range reduction x = n·ln2 + r, |r| ≤ ln2/2, and a Taylor polynomial in Horner form,
// written as straight-line arithmetic so g++ vectorises it inside `omp simd` loops (libm's exp does not
// vectorise without -ffast-math) and nvcc runs the same formula. Meant for x ≤ 0 (the kernels only take
// e^{x − max}); fine up to ~88 (float) / ~709 (double). Accuracy over [−87, 0] (measured on a 2M-point
// grid against libm, checked by test_distill): float degree-6 minimax, relative error ≤ 1e-7 (≈1.5
// ulp); double degree-13 Taylor, ≤ 1.4e-16 (≈1 ulp). Arguments below −87.3 (float) / −708 (double), −inf included, are
// clamped there: the result is ≈1.2e-38 / 2.2e-308 instead of 0, which no probability sum can notice
// and which saves the compare-and-select per element. 2^n is built from the rounding constant's own
// bits (the low mantissa bits of x·log2e + 1.5·2^23 hold n), no float→int conversion.
SPARROW_HD float kl_exp(float x) {
  const float xc = -87.3f > x ? -87.3f : x;  // one max instruction; −inf clamps too, NaN stays NaN
  // Round-to-nearest by the 1.5·2^23 trick (exact for |x·log2e| < 2^22): t's low bits hold n.
  const float t = kl_fma(xc, 1.44269504088896341f, 12582912.0f);
  const float n = t - 12582912.0f;
  const float r = kl_fma(-n, 1.42860682030941723212e-6f, kl_fma(-n, 0.693145751953125f, xc));
  // Degree-6 minimax fit of e^r on [−ln2/2, ln2/2] (relative error 1.9e-9 before rounding).
  float p = 0.0013841403610304144f;
  p = kl_fma(p, r, 0.0083748424420633308f);
  p = kl_fma(p, r, 0.041668144233561105f);
  p = kl_fma(p, r, 0.16666419770790436f);
  p = kl_fma(p, r, 0.49999992440315877f);
  p = kl_fma(p, r, 1.0000000364423189f);
  p = kl_fma(p, r, 1.000000000530944f);
  // (bits(t) << 23) = n << 23 (the constant's own bits shift out); + 127 << 23 makes the exponent.
  const int32_t e = static_cast<int32_t>((static_cast<uint32_t>(float_to_bits(t)) << 23) + 0x3f800000u);
  return p * bits_to_float(e);
}

SPARROW_HD double kl_exp(double x) {
  const double xc = -708.0 > x ? -708.0 : x;
  const double t = kl_fma(xc, 1.4426950408889634074, 6755399441055744.0);  // 1.5·2^52
  const double n = t - 6755399441055744.0;
  const double r = kl_fma(-n, 1.90821492927058770002e-10, kl_fma(-n, 6.93147180369123816490e-01, xc));
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = kl_fma(p, r, 1.0 / 479001600.0);
  p = kl_fma(p, r, 1.0 / 39916800.0);
  p = kl_fma(p, r, 1.0 / 3628800.0);
  p = kl_fma(p, r, 1.0 / 362880.0);
  p = kl_fma(p, r, 1.0 / 40320.0);
  p = kl_fma(p, r, 1.0 / 5040.0);
  p = kl_fma(p, r, 1.0 / 720.0);
  p = kl_fma(p, r, 1.0 / 120.0);
  p = kl_fma(p, r, 1.0 / 24.0);
  p = kl_fma(p, r, 1.0 / 6.0);
  p = kl_fma(p, r, 0.5);
  p = kl_fma(p, r, 1.0);
  p = kl_fma(p, r, 1.0);
  const int64_t e = static_cast<int64_t>((static_cast<uint64_t>(double_to_bits(t)) << 52) +
                                         0x3ff0000000000000ull);
  return p * bits_to_double(e);
}

// 2^x for the CPU kernel's hot loops, where the softmax argument comes out of one fma already in base-2
// units (z·(log2e/T) − m): no Cody–Waite step (r = x − round(x) is exact), degree-6 minimax fit of 2^r
// on [−1/2, 1/2] (1.9e-9 before rounding; ≤ 1e-7 relative after, checked by test_distill), and the
// exponent added to p's bits as an integer instead of a multiply. Arguments below −125 (float) /
// −1021 (double) are clamped there, which keeps that integer add inside the normal range (result
// ≈2.4e-38 / 4.5e-308 instead of 0). Double: degree-13 Taylor series of e^{r·ln2}.
SPARROW_HD float kl_exp2(float x) {
  const float xc = -125.0f > x ? -125.0f : x;
  const float t = xc + 12582912.0f;      // 1.5·2^23: t's low mantissa bits hold n = round(x)
  const float r = xc - (t - 12582912.0f);  // exact
  float p = 0.00015350866670027293f;
  p = kl_fma(p, r, 0.0013399973840096289f);
  p = kl_fma(p, r, 0.0096184701817889837f);
  p = kl_fma(p, r, 0.055503286440727752f);
  p = kl_fma(p, r, 0.24022647063829081f);
  p = kl_fma(p, r, 0.69314720581986067f);
  p = kl_fma(p, r, 1.0000000005307363f);
  return bits_to_float(static_cast<int32_t>(static_cast<uint32_t>(float_to_bits(p)) +
                                            (static_cast<uint32_t>(float_to_bits(t)) << 23)));
}

SPARROW_HD double kl_exp2(double x) {
  const double xc = -1021.0 > x ? -1021.0 : x;
  const double t = xc + 6755399441055744.0;  // 1.5·2^52
  const double r = (xc - (t - 6755399441055744.0)) * 0.69314718055994530942;
  double p = 1.0 / 6227020800.0;
  p = kl_fma(p, r, 1.0 / 479001600.0);
  p = kl_fma(p, r, 1.0 / 39916800.0);
  p = kl_fma(p, r, 1.0 / 3628800.0);
  p = kl_fma(p, r, 1.0 / 362880.0);
  p = kl_fma(p, r, 1.0 / 40320.0);
  p = kl_fma(p, r, 1.0 / 5040.0);
  p = kl_fma(p, r, 1.0 / 720.0);
  p = kl_fma(p, r, 1.0 / 120.0);
  p = kl_fma(p, r, 1.0 / 24.0);
  p = kl_fma(p, r, 1.0 / 6.0);
  p = kl_fma(p, r, 0.5);
  p = kl_fma(p, r, 1.0);
  p = kl_fma(p, r, 1.0);
  return bits_to_double(static_cast<int64_t>(static_cast<uint64_t>(double_to_bits(p)) +
                                             (static_cast<uint64_t>(double_to_bits(t)) << 52)));
}

constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;

// −inf without numeric_limits (usable in device code without --expt-relaxed-constexpr).
template <typename A>
SPARROW_HD A neg_inf();
template <>
SPARROW_HD float neg_inf<float>() {
  return -HUGE_VALF;
}
template <>
SPARROW_HD double neg_inf<double>() {
  return -HUGE_VAL;
}

// ---- online softmax state ---------------------------------------------------------------------------
// For values x_i with side values v_i: m = max x, s = Σ e^{x−m}, w = Σ e^{x−m}·v. push() takes one element
// (one exp either way: rescale the old sums or weight the new term); merge() combines two partial states,
// in any order and any grouping (lanes of a warp, blocks of a CPU row). Empty state: m = −inf, s = w = 0.
template <typename A>
struct OnlineSoftmax {
  A m, s, w;
};

template <typename A>
SPARROW_HD OnlineSoftmax<A> online_softmax_empty() {
  return OnlineSoftmax<A>{neg_inf<A>(), A(0), A(0)};
}

template <typename A>
SPARROW_HD void online_softmax_push(OnlineSoftmax<A>& st, A x, A v) {
  if (x > st.m) {
    const A c = kl_exp(st.m - x);  // empty state: s = w = 0, so the exp of −inf needs no care
    st.s = st.s * c + A(1);
    st.w = st.w * c + v;
    st.m = x;
  } else {
    const A e = kl_exp(x - st.m);
    st.s += e;
    st.w += e * v;
  }
}

template <typename A>
SPARROW_HD OnlineSoftmax<A> online_softmax_merge(const OnlineSoftmax<A>& a, const OnlineSoftmax<A>& b) {
  if (b.m == neg_inf<A>()) return a;
  if (a.m == neg_inf<A>()) return b;
  const A m = a.m > b.m ? a.m : b.m;
  const A ca = kl_exp(a.m - m), cb = kl_exp(b.m - m);
  return OnlineSoftmax<A>{m, a.s * ca + b.s * cb, a.w * ca + b.w * cb};
}

// log Σ e^x of a finished state.
template <typename A>
SPARROW_HD A online_softmax_lse(const OnlineSoftmax<A>& st) {
  return st.m + log(st.s);
}

// ---- row moments (for the standardisation) ------------------------------------------------------------
// Count, mean and Σ(x−mean)² merged by Chan's parallel rule (Welford for one element): stable for rows
// of ±1e4 logits where Σx² − (Σx)²/C would cancel catastrophically. Both kernels keep them in double:
// the mean must be accurate to a small fraction of σ, not of |μ| (see affine_apply).
template <typename A>
struct Moments {
  A n, mean, m2;
};

template <typename A>
SPARROW_HD void moments_push(Moments<A>& st, A x) {
  st.n += A(1);
  const A delta = x - st.mean;
  st.mean += delta / st.n;
  st.m2 += delta * (x - st.mean);
}

template <typename A>
SPARROW_HD Moments<A> moments_merge(const Moments<A>& a, const Moments<A>& b) {
  if (b.n == A(0)) return a;
  if (a.n == A(0)) return b;
  const A n = a.n + b.n;
  const A delta = b.mean - a.mean;
  return Moments<A>{n, a.mean + delta * (b.n / n), a.m2 + b.m2 + delta * delta * (a.n * b.n / n)};
}

// ---- the map from raw logits to the softmax argument -----------------------------------------------
// u = (z − center)·scale. none: center 0, scale 1/T. Standardised: u = (z − μ)/s with s = a·σ + b
// (before_T: a = T, b = T·eps; after_T: a = 1, b = T·eps). Subtracting the centre before scaling keeps
// u accurate to a few ulp of u itself even when |μ| ≫ σ (z·(1/s) − μ/s would cancel two large
// products). back = a·s/σ enters the backward (0 for a constant row, where σ has no derivative and
// u ≡ 0 anyway).
template <typename A>
struct Affine {
  A center, center_lo, scale, back;  // center + center_lo = μ to twice the precision of A
};

template <typename A>
SPARROW_HD Affine<A> norm_affine(LogitNorm norm, double T, double mean, double std_pop) {
  if (norm == LogitNorm::none) return Affine<A>{A(0), A(0), A(1.0 / T), A(0)};
  const double a = norm == LogitNorm::before_T ? T : 1.0;
  const double s = a * std_pop + T * kLogitNormEps;
  const A hi = A(mean);
  return Affine<A>{hi, A(mean - double(hi)), A(1.0 / s), A(std_pop > 0.0 ? a * s / std_pop : 0.0)};
}

// The backward below needs Σ_j u_j = 0 to the precision of u itself (it multiplies u_j, not differences
// of u), so μ is subtracted in two parts: z − hi is exact for z near μ, and lo restores what rounding μ
// to A lost (for float logits ≈ 6 with σ ≈ 0.005 that is 5e-5 of u).
template <typename A>
SPARROW_HD A affine_apply(const Affine<A>& f, A z) {
  return ((z - f.center) - f.center_lo) * f.scale;
}

// ∂L/∂z_j from g_j = ∂L/∂u_j: scale·(g_j − ḡ − u_j·back·mean(g⊙u)). Pass gbar = Σg/C and
// gu = Σ g⊙u / C (both 0 for norm none).
template <typename A>
SPARROW_HD A affine_backward(const Affine<A>& f, A g, A u, A gbar, A gu) {
  return f.scale * (g - gbar - u * (f.back * gu));
}

// ---- loss weights and the row statistics -------------------------------------------------------------
// Without labels the CE term is absent and the KL weight is T² (α treated as 1).
struct Weights {
  double kl;    // α·T² (or T²)
  double ce;    // 1 − α (or 0)
  double beta;  // weight of the reverse KL inside the mix
};

SPARROW_HD Weights kl_weights(const KlParams& p, bool has_labels) {
  const double t2 = p.T * p.T;
  return has_labels ? Weights{p.alpha * t2, 1.0 - p.alpha, p.beta} : Weights{t2, 0.0, p.beta};
}

// From the finished online states (student state carrying w = Σ e^{u_s−m}(u_s − u_t), teacher state
// carrying w = Σ e^{u_t−m}(u_t − u_s)): lse = m + log s kept as its two parts, dl = lse_s − lse_t, and
//   KL(p_t‖p_s) = E_pt[u_t − u_s] + dl,   KL(p_s‖p_t) = E_ps[u_s − u_t] − dl.
// Keeping m and log s apart lets p = e^{(u − m) − log s} stay accurate to a few ulp for logits of 1e4
// (u − m is exact near the max; m + log s rounded to one float near 1e4 would cost 5e-4 of p).
// Identical inputs give exactly 0 (same operations on the same numbers).
template <typename A>
struct RowStats {
  A m_s, log_ss, m_t, log_st, dl, k_fwd, k_rev;
};

template <typename A>
SPARROW_HD RowStats<A> row_stats(const OnlineSoftmax<A>& s, const OnlineSoftmax<A>& t) {
  RowStats<A> r;
  r.m_s = s.m;
  r.m_t = t.m;
  r.log_ss = log(s.s);
  r.log_st = log(t.s);
  r.dl = (r.m_s - r.m_t) + (r.log_ss - r.log_st);
  r.k_fwd = t.w / t.s + r.dl;
  r.k_rev = s.w / s.s - r.dl;
  return r;
}

// L_row = w_ce·CE + w_kl·(β·KL(p_s‖p_t) + (1−β)·KL(p_t‖p_s)); ce = lse(z_s) − z_s[y] (0 without labels).
template <typename A>
SPARROW_HD double row_loss(const Weights& w, const RowStats<A>& st, double ce) {
  return w.ce * ce + w.kl * (w.beta * double(st.k_rev) + (1.0 - w.beta) * double(st.k_fwd));
}

// ---- per-element gradients w.r.t. the softmax arguments (before the weight w_kl) -----------------------
// d = log p_s − log p_t = (u_s − u_t) − dl.
//   ∂KL(p_t‖p_s)/∂u_s = p_s − p_t            ∂KL(p_s‖p_t)/∂u_s = p_s·(d − KL(p_s‖p_t))
//   ∂KL(p_t‖p_s)/∂u_t = p_t·(−d − KL(p_t‖p_s))   ∂KL(p_s‖p_t)/∂u_t = p_t − p_s
// (reverse: ∂/∂u_j Σ p_c d_c = Σ_c p_c(δ_cj − p_j)d_c + Σ_c p_c(δ_cj − p_j) = p_j(d_j − KL) + 0).
template <typename A>
SPARROW_HD A grad_student_u(A ps, A pt, A d, A beta, A k_rev) {
  return beta * (ps * (d - k_rev)) + (A(1) - beta) * (ps - pt);
}

template <typename A>
SPARROW_HD A grad_teacher_u(A ps, A pt, A d, A beta, A k_fwd) {
  return beta * (pt - ps) + (A(1) - beta) * (pt * (-d - k_fwd));
}


// ---- one row split over `stride` lanes (the CUDA kernel's structure) --------------------------------
// Lane `lane` of a row takes elements lane, lane + stride, ... (coalesced on the GPU). Between the phases
// the lanes' partial states are merged (warp shuffles / shared memory on the GPU; the CPU test emulates
// the same merge tree), so these are the exact per-element formulas the GPU runs.
template <typename A>
struct LaneStats {
  OnlineSoftmax<A> s, t, raw;  // student (side value u_s − u_t), teacher (u_t − u_s), raw z_s for CE
};

template <typename Acc, typename D>
SPARROW_HD Moments<Acc> lane_moments(int lane, int stride, int C, const D* z) {
  Moments<Acc> m{Acc(0), Acc(0), Acc(0)};
  for (int j = lane; j < C; j += stride) moments_push(m, Acc(z[j]));
  return m;
}

template <typename A>
SPARROW_HD LaneStats<A> lane_stats(int lane, int stride, int C, const A* zs, const A* zt,
                                   const Affine<A>& fs, const Affine<A>& ft, bool raw) {
  LaneStats<A> r{online_softmax_empty<A>(), online_softmax_empty<A>(), online_softmax_empty<A>()};
  for (int j = lane; j < C; j += stride) {
    const A us = affine_apply(fs, zs[j]), ut = affine_apply(ft, zt[j]);
    online_softmax_push(r.s, us, us - ut);
    online_softmax_push(r.t, ut, ut - us);
    if (raw) online_softmax_push(r.raw, zs[j], A(0));
  }
  return r;
}

template <typename A>
SPARROW_HD LaneStats<A> lane_stats_merge(const LaneStats<A>& a, const LaneStats<A>& b) {
  return LaneStats<A>{online_softmax_merge(a.s, b.s), online_softmax_merge(a.t, b.t),
                      online_softmax_merge(a.raw, b.raw)};
}

// Everything the gradient sweep needs for one row, built from the merged statistics.
template <typename A>
struct RowPlan {
  Affine<A> fs, ft;
  RowStats<A> st;
  A m_raw, log_sraw;  // softmax(z_s) for the CE term: m and log s of the raw logits
  A wkl, wce, beta, inv_rows;
  A gbar, gmu;     // Σg/C and Σg·u_s/C for the standardisation backward (0 for norm none)
  int64_t y;       // label; −1 without labels or when out of range (no one-hot term then)
  bool has_ce;
  double loss;     // L_row (NaN for an out-of-range label)
};

// Raw-logit softmax is p_s itself when u_s = z_s (no standardisation, T = 1): no third softmax.
SPARROW_HD bool ce_shares_student_softmax(const KlParams& p) {
  return p.norm == LogitNorm::none && p.T == 1.0;
}

// zs_row: the row's student logits (to read z_s[y]); y is ignored without labels.
template <typename A>
SPARROW_HD RowPlan<A> row_plan(const KlParams& p, const Weights& w, const Affine<A>& fs,
                               const Affine<A>& ft, const LaneStats<A>& st, int C, bool has_labels,
                               int64_t y, const A* zs_row, A inv_rows) {
  RowPlan<A> rp;
  rp.fs = fs;
  rp.ft = ft;
  rp.st = row_stats(st.s, st.t);
  rp.has_ce = has_labels;
  if (ce_shares_student_softmax(p)) {
    rp.m_raw = rp.st.m_s;
    rp.log_sraw = rp.st.log_ss;
  } else {
    rp.m_raw = st.raw.m;
    rp.log_sraw = log(st.raw.s);
  }
  rp.wkl = A(w.kl);
  rp.wce = A(w.ce);
  rp.beta = A(w.beta);
  rp.inv_rows = inv_rows;
  rp.gbar = A(0);
  rp.gmu = A(0);
  const bool valid = !rp.has_ce || (y >= 0 && y < C);
  rp.y = rp.has_ce && valid ? y : -1;
  const double ce =
      rp.has_ce && valid ? (double(rp.m_raw) - double(zs_row[y])) + double(rp.log_sraw) : 0.0;
  rp.loss = valid ? row_loss(w, rp.st, ce) : HUGE_VAL - HUGE_VAL;
  return rp;
}

// ∂L_row/∂u_s at one element (also returns u_s).
template <typename A>
SPARROW_HD A plan_grad_u(const RowPlan<A>& rp, A zs_j, A zt_j, A& us) {
  us = affine_apply(rp.fs, zs_j);
  const A ut = affine_apply(rp.ft, zt_j);
  const A ps = kl_exp((us - rp.st.m_s) - rp.st.log_ss), pt = kl_exp((ut - rp.st.m_t) - rp.st.log_st);
  return rp.wkl * grad_student_u(ps, pt, (us - ut) - rp.st.dl, rp.beta, rp.st.k_rev);
}

// Partial Σg and Σg·u_s of one lane (standardised modes only).
template <typename A>
SPARROW_HD void lane_grad_sums(int lane, int stride, int C, const A* zs, const A* zt,
                               const RowPlan<A>& rp, A& g1, A& g2) {
  g1 = A(0);
  g2 = A(0);
  for (int j = lane; j < C; j += stride) {
    A us;
    const A g = plan_grad_u(rp, zs[j], zt[j], us);
    g1 += g;
    g2 += g * us;
  }
}

// Writes dzs[j] = ∂(batchmean)/∂z_s[j] for this lane's elements.
template <typename A>
SPARROW_HD void lane_write(int lane, int stride, int C, const A* zs, const A* zt, const RowPlan<A>& rp,
                           A* dzs) {
  for (int j = lane; j < C; j += stride) {
    A us;
    const A g = plan_grad_u(rp, zs[j], zt[j], us);
    A v = affine_backward(rp.fs, g, us, rp.gbar, rp.gmu);
    if (rp.has_ce) {
      const A q = kl_exp((zs[j] - rp.m_raw) - rp.log_sraw);
      v += rp.wce * (j == rp.y ? q - A(1) : q);
    }
    dzs[j] = v * rp.inv_rows;
  }
}

}  // namespace distill
}  // namespace sparrow
