// CPU KL-distillation: the composed double-precision reference and the fused kernel. Row-major B×C logits;
// one row is processed start to finish by one thread (OpenMP over rows above kParallelMinWork).
// The fused row reads each input from memory once and writes dzs once (see "Fused kernel" below).

// Evaluate exactly as written (no a·b + c → fma contraction, which g++ applies by default): identical
// student and teacher logits then give bitwise-identical p_s and p_t, so KL and gradient are exactly 0.
// The fmas that matter for speed are explicit (distill::kl_fma).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "engine/base/error.h"
#include "kernels/distill/distill.h"
#include "kernels/distill/distill_row.h"

namespace sparrow {

const char* logit_norm_name(LogitNorm n) {
  switch (n) {
    case LogitNorm::none: return "none";
    case LogitNorm::before_T: return "before-T";
    case LogitNorm::after_T: return "after-T";
  }
  return "?";
}

LogitNorm parse_logit_norm(const char* name) {
  const std::string s = name ? name : "";
  if (s == "none") return LogitNorm::none;
  if (s == "before-T" || s == "before_T") return LogitNorm::before_T;
  if (s == "after-T" || s == "after_T") return LogitNorm::after_T;
  SPARROW_FAIL("--logit-norm: unknown value '", s, "' (expected none, before-T or after-T)");
}

namespace {

using namespace distill;

void check_args(const char* who, int rows, int cols, const void* zs, const void* zt,
                const int64_t* labels, const KlParams& p) {
  SPARROW_CHECK(rows >= 0 && cols >= 1, who, ": bad shape ", rows, "x", cols);
  SPARROW_CHECK(rows == 0 || (zs && zt), who, ": null logits for ", rows, "x", cols);
  SPARROW_CHECK(p.T > 0.0 && std::isfinite(p.T), who, ": temperature T = ", p.T, " must be > 0");
  SPARROW_CHECK(p.alpha >= 0.0 && p.alpha <= 1.0, who, ": alpha = ", p.alpha, " outside [0, 1]");
  SPARROW_CHECK(p.beta >= 0.0 && p.beta <= 1.0, who, ": beta = ", p.beta, " outside [0, 1]");
  if (labels)
    for (int r = 0; r < rows; ++r)
      SPARROW_CHECK(labels[r] >= 0 && labels[r] < cols, who, ": label ", labels[r], " of row ", r,
                    " outside [0, ", cols, ")");
}

// ---------------------------------------------------------------------------------------------------
// Reference: the loss written out the way an autograd engine would evaluate it, one primitive at a time
// (standardise, divide by T, log_softmax, softmax, Σ p·(log p − log q)), and the gradient by the
// chain rule through those same primitives, all in double.

void log_softmax_row(int n, const double* x, double* y) {
  double m = -HUGE_VAL;
  for (int i = 0; i < n; ++i) m = std::max(m, x[i]);
  double s = 0.0;
  for (int i = 0; i < n; ++i) s += std::exp(x[i] - m);
  // (x − m) − log s, not x − (m + log s): the latter rounds log s away next to logits of 1e4.
  const double ls = std::log(s);
  for (int i = 0; i < n; ++i) y[i] = (x[i] - m) - ls;
}

// dx = dy − softmax(x)·Σdy, from the log-softmax output y.
void log_softmax_backward_row(int n, const double* y, const double* dy, double* dx) {
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += dy[i];
  for (int i = 0; i < n; ++i) dx[i] = dy[i] - std::exp(y[i]) * sum;
}

// y = (x − mean)/(std + eps), population std. Keeps what the backward needs.
struct StandardiseCache {
  double mean = 0, sd = 0;
};
StandardiseCache standardise_row(int n, const double* x, double* y) {
  StandardiseCache c;
  for (int i = 0; i < n; ++i) c.mean += x[i];
  c.mean /= n;
  double var = 0.0;
  for (int i = 0; i < n; ++i) var += (x[i] - c.mean) * (x[i] - c.mean);
  c.sd = std::sqrt(var / n);
  for (int i = 0; i < n; ++i) y[i] = (x[i] - c.mean) / (c.sd + kLogitNormEps);
  return c;
}

// Through y = (x − μ)/(σ + eps): dx = dy/(σ+eps) + dμ/n + dσ·(x − μ)/(n·σ), with
// dσ = −Σ dy·(x − μ)/(σ+eps)², dμ = −Σ dy/(σ+eps) (σ's own dependence on μ sums to zero).
void standardise_backward_row(int n, const double* x, const StandardiseCache& c, const double* dy,
                              double* dx) {
  const double den = c.sd + kLogitNormEps;
  double dsd = 0.0, dmean = 0.0;
  for (int i = 0; i < n; ++i) {
    dsd -= dy[i] * (x[i] - c.mean) / (den * den);
    dmean -= dy[i] / den;
  }
  for (int i = 0; i < n; ++i) {
    const double via_sd = c.sd > 0.0 ? dsd * (x[i] - c.mean) / (n * c.sd) : 0.0;
    dx[i] = dy[i] / den + dmean / n + via_sd;
  }
}

// z → u for one row, keeping the intermediates; backward maps du → dz.
struct RefTransform {
  LogitNorm norm;
  double T;
  std::vector<double> x;  // the standardised tensor's input (z or z/T)
  StandardiseCache cache;

  void forward(int n, const double* z, double* u) {
    x.assign(z, z + n);
    if (norm == LogitNorm::none) {
      for (int i = 0; i < n; ++i) u[i] = z[i] / T;
    } else if (norm == LogitNorm::before_T) {
      cache = standardise_row(n, x.data(), u);
      for (int i = 0; i < n; ++i) u[i] /= T;
    } else {
      for (int i = 0; i < n; ++i) x[i] = z[i] / T;
      cache = standardise_row(n, x.data(), u);
    }
  }
  void backward(int n, const double* du, double* dz) {
    if (norm == LogitNorm::none) {
      for (int i = 0; i < n; ++i) dz[i] = du[i] / T;
    } else if (norm == LogitNorm::before_T) {
      std::vector<double> dv(du, du + n);
      for (int i = 0; i < n; ++i) dv[i] /= T;
      standardise_backward_row(n, x.data(), cache, dv.data(), dz);
    } else {
      standardise_backward_row(n, x.data(), cache, du, dz);
      for (int i = 0; i < n; ++i) dz[i] /= T;
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// Fused kernel. Per row:
//  [norm only] moments of z_s and z_t in double, blockwise (two sweeps of an L1-resident block);
//  pass 1, per block of kBlock elements: block maxima, then e_s = e^{u_s − m_blk}, e_t likewise (kept in
//    a per-thread scratch row), their sums and the KL side sums, merged into the row's online softmax
//    state in double (distill_row.h); the next block is prefetched meanwhile;
//  pass 2: p = e·e^{m_blk − m}/s and the gradient, written once (inputs and scratch are in L1/L2).
// Two exps per element (three with a CE term whose softmax is not p_s). Without standardisation and
// teacher gradient ("fast path") the exps are base-2 straight from one fma (kl_exp2), every per-row
// factor folds into two constants, rows shorter than a block are padded to whole vectors, and
// gradients larger than the last-level cache go out with non-temporal stores.
constexpr int kBlock = 512;
// OpenMP over rows only for batches where a fork/join cannot dominate. Work is counted in
// element-equivalents: a row costs ~0.75 ns per class plus ~100 ns of fixed work (logs, merges), i.e.
// cols + 128. On an idle machine two threads already pay off from ~12K (~10 µs serial), but every
// parallel region also waits for the slowest thread to be scheduled, and on a shared machine that can
// be a whole scheduler time slice (measured: 128×10 and 128×100 batches fell from ~8M to ~5K rows/s
// while other processes were running). 64K (~50 µs serial, PyTorch's grain size is 32K elements)
// keeps the CIFAR-sized batches serial and the large ones parallel.
constexpr int64_t kRowOverheadElems = 128;
constexpr int64_t kParallelMinWork = 65536;

// A 64-byte-aligned growable array: whole-vector stores into it never split a cache line, so the
// loads that follow (the next pass) are forwarded from the store buffer instead of stalling.
template <typename T>
class AlignedBuf {
 public:
  AlignedBuf() = default;
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  ~AlignedBuf() { std::free(p_); }
  // Grows to at least n elements; false when the allocation fails (called inside OpenMP regions,
  // where an exception could not propagate).
  bool fit(size_t n) {
    if (n <= n_) return true;
    std::free(p_);
    p_ = static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64));
    n_ = p_ ? n : 0;
    return p_ != nullptr;
  }
  T* data() { return p_; }
  T& operator[](size_t i) { return p_[i]; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

template <typename T>
struct Scratch {
  AlignedBuf<T> es, et;        // [cols]: e^{u − m_blk}, later overwritten by ∂L/∂u in the generic path
  AlignedBuf<double> bms, bmt;  // [blocks]: the block maxima of u_s, u_t (natural units)
  alignas(64) T stage[kBlock];    // one block of dzs on its way to a streaming store or a short row
  alignas(64) T pad_s[kBlock], pad_t[kBlock];  // a short row padded to whole vectors
  bool fit(int cols) {
    const size_t len = (size_t(cols) + 63) / 64 * 64;  // room for a row padded to whole vectors
    const size_t nb = size_t((cols + kBlock - 1) / kBlock);
    return es.fit(len) && et.fit(len) && bms.fit(nb) && bmt.fit(nb);
  }
};

template <typename T>
Scratch<T>& thread_scratch() {
  static thread_local Scratch<T> s;
  return s;
}

// Row mean and Σ(z − mean)² in double, blockwise (two sweeps of an L1-resident block, Chan merge).
template <typename T>
Moments<double> row_moments(int n, const T* z) {
  Moments<double> acc{0.0, 0.0, 0.0};
  for (int j0 = 0; j0 < n; j0 += kBlock) {
    const int nb = std::min(kBlock, n - j0);
    const T* x = z + j0;
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < nb; ++j) sum += double(x[j]);
    const double mean = sum / nb;
    double m2 = 0;
#pragma omp simd reduction(+ : m2)
    for (int j = 0; j < nb; ++j) m2 += (double(x[j]) - mean) * (double(x[j]) - mean);
    acc = moments_merge(acc, Moments<double>{double(nb), mean, m2});
  }
  return acc;
}

// Prefetch hints (never fault, so running past the end of the data is harmless).
template <typename T>
inline void prefetch_block(const T* p) {
#if defined(__GNUC__)
  for (int k = 0; k < kBlock; k += int(64 / sizeof(T))) __builtin_prefetch(p + k, 0, 3);
#endif
}

template <typename T>
T block_max(int n, const T* x) {
  T m = neg_inf<T>();
#pragma omp simd reduction(max : m)
  for (int j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// Pass 1 over one block: e_s = e^{u_s − ms}, e_t = e^{u_t − mt} into the scratch, and their sums
// [Σe_s, Σe_t, Σe_s·(u_s − u_t), Σe_t·(u_t − u_s), Σe^{z_s − zmax_s}].
// kPlain (no standardisation, u = z/T): ms, mt and the scales are in base-2 units (x·log2e), so
// u − m is one fma feeding kl_exp2, and Σe·(z_s − z_t) is scaled by 1/T once afterwards.
// kRaw: also the raw-logit sum for a CE term whose softmax is not p_s.
template <typename T, bool kPlain, bool kRaw>
void stats_block(int n, const T* zs, const T* zt, const Affine<T>& fs, const Affine<T>& ft, T scale2,
                 T* es, T* et, T ms, T mt, T zmax_s, T sums[5]) {
  T ss = 0, st = 0, ws = 0, wt = 0, sr = 0;
  const T neg_ms = -ms, neg_mt = -mt, log2e = T(kLog2e);
#pragma omp simd reduction(+ : ss, st, ws, wt, sr)
  for (int j = 0; j < n; ++j) {
    T a, b, diff;
    if (kPlain) {
      a = kl_exp2(kl_fma(zs[j], scale2, neg_ms));
      b = kl_exp2(kl_fma(zt[j], scale2, neg_mt));
      diff = zs[j] - zt[j];
    } else {
      const T us = affine_apply(fs, zs[j]), ut = affine_apply(ft, zt[j]);
      a = kl_exp(us - ms);
      b = kl_exp(ut - mt);
      diff = us - ut;
    }
    es[j] = a;
    et[j] = b;
    ss += a;
    st += b;
    ws = kl_fma(a, diff, ws);
    wt = kl_fma(-b, diff, wt);
    if (kRaw) sr += kl_exp2((zs[j] - zmax_s) * log2e);
  }
  if (kPlain) {
    ws *= fs.scale;
    wt *= fs.scale;
  }
  sums[0] = ss, sums[1] = st, sums[2] = ws, sums[3] = wt, sums[4] = sr;
}

// Pass 2, plain logits and no teacher gradient: dzs = (w_kl/T·∂KL/∂u_s + w_ce·softmax(z_s))/B
// (the −w_ce/B at the label is added by the caller). kCe: 0 none, 1 softmax(z_s) = p_s, 2 recompute it.
// a_fwd = c_fwd·cs and b_fwd = c_fwd·ct: the forward term e_s·a_fwd − e_t·b_fwd is two products and a
// difference, so identical rows give exactly 0.
template <typename T, bool kRev, int kCe>
void write_block_plain(int n, const T* zs, const T* zt, const T* es, const T* et, T cs, T a_fwd, T b_fwd,
                       T scale, T c_rev, T c_ce, T dl, T k_rev, T m_raw, T log_sraw, T* dzs) {
#pragma omp simd
  for (int j = 0; j < n; ++j) {
    const T ps = es[j] * cs;
    T g = es[j] * a_fwd - et[j] * b_fwd;
    if (kRev) {
      const T d = (zs[j] - zt[j]) * scale - dl;
      g = kl_fma(c_rev * ps, d - k_rev, g);
    }
    if (kCe == 1) g = kl_fma(c_ce, ps, g);
    if (kCe == 2) g = kl_fma(c_ce, kl_exp2(((zs[j] - m_raw) - log_sraw) * T(kLog2e)), g);
    dzs[j] = g;
  }
}

// Copies n values to dst with non-temporal stores (no read-for-ownership of dst's lines, no cache
// pollution): used when the gradient is larger than the last-level cache and would be written back to
// memory anyway. The caller fences (stream_fence) before anyone else reads dst.
template <typename T>
void stream_store(T* dst, const T* src, int n) {
#if defined(__SSE2__)
  int i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
  if constexpr (sizeof(T) == 4) {
    for (; i + 4 <= n; i += 4) _mm_stream_ps(reinterpret_cast<float*>(dst + i), _mm_loadu_ps(reinterpret_cast<const float*>(src + i)));
  } else {
    for (; i + 2 <= n; i += 2) _mm_stream_pd(reinterpret_cast<double*>(dst + i), _mm_loadu_pd(reinterpret_cast<const double*>(src + i)));
  }
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::memcpy(dst, src, sizeof(T) * size_t(n));
#endif
}
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// When the whole working set (both logit inputs and the gradient outputs) is above this size, the outputs
// bypass the caches (stream_store): they would only evict the inputs, and a cached store reads each line
// before writing it. 32 MiB = this machine class's L3.
constexpr double kStreamWorkingSetBytes = 32.0 * 1024 * 1024;

// p = e·c for the block whose exps were taken relative to m_blk: c = e^{m_blk − m}/s. The block holding
// the row maximum (every block of a short row) gets 1/s without an exp: that exp would sit on the
// latency chain between the row's sums and its first gradient store.
template <typename T>
T block_scale(double m_blk, const OnlineSoftmax<double>& st) {
  const double inv_s = 1.0 / st.s;
  return T(m_blk == st.m ? inv_s : kl_exp(m_blk - st.m) * inv_s);
}

template <typename T>
struct RowConfig {
  Weights w;
  KlParams p;
  T inv_rows;
  bool stream_out;  // write dzs with non-temporal stores (fast path only)
};

template <typename T>
double fused_row(int C, const T* zs, const T* zt, int64_t y, const RowConfig<T>& cfg, T* dzs, T* dzt,
                 Scratch<T>& sc) {
  const KlParams& p = cfg.p;
  const bool plain = p.norm == LogitNorm::none;
  Affine<T> fs = norm_affine<T>(LogitNorm::none, p.T, 0.0, 0.0), ft = fs;
  if (!plain) {
    const Moments<double> ms = row_moments(C, zs), mt = row_moments(C, zt);
    fs = norm_affine<T>(p.norm, p.T, ms.mean, std::sqrt(ms.m2 / C));
    ft = norm_affine<T>(p.norm, p.T, mt.mean, std::sqrt(mt.m2 / C));
  }
  const bool has_ce = y >= 0;
  const bool ce_shared = has_ce && ce_shares_student_softmax(p);
  const bool ce_raw = has_ce && !ce_shared;

  // Short rows on the fast path are padded to whole SIMD vectors (the vectorised loops then have no
  // scalar remainder, which would otherwise dominate at C = 10). The pad value is finite and far below
  // any logit: its e^{u − m} is the exp's clamp value (~1e-38), and z_s − z_t = 0 there.
  const bool fast = plain && !dzt;
  constexpr int kVec = int(64 / sizeof(T));
  const bool pad = fast && C < kBlock && C % kVec != 0;
  const int Cw = pad ? (C + kVec - 1) / kVec * kVec : C;
  const T *zsw = zs, *ztw = zt;
  if (pad) {
    const T kPad = T(-1e30);
    std::copy(zs, zs + C, sc.pad_s);
    std::copy(zt, zt + C, sc.pad_t);
    std::fill(sc.pad_s + C, sc.pad_s + Cw, kPad);
    std::fill(sc.pad_t + C, sc.pad_t + Cw, kPad);
    zsw = sc.pad_s;
    ztw = sc.pad_t;
  }

  T* es = sc.es.data();
  T* et = sc.et.data();
  const T scale2 = T(kLog2e / p.T);  // plain path: u·log2e = z·scale2
  OnlineSoftmax<double> S = online_softmax_empty<double>(), Tt = S, R = S;
  for (int b = 0, j0 = 0; j0 < Cw; ++b, j0 += kBlock) {
    const int n = std::min(kBlock, Cw - j0);
    const T zmax_s = block_max(n, zsw + j0), zmax_t = block_max(n, ztw + j0);
    // The exps below are compute-bound and leave the memory system idle: request the next block
    // (of this row or the next one, which follows in memory) now, so it arrives while they run.
    prefetch_block(zs + j0 + kBlock);
    prefetch_block(zt + j0 + kBlock);
    // Block maxima of u (in base-2 units on the plain path): z → u is monotone (scale > 0).
    const T ms = plain ? zmax_s * scale2 : affine_apply(fs, zmax_s);
    const T mt = plain ? zmax_t * scale2 : affine_apply(ft, zmax_t);
    const double ms_nat = plain ? double(ms) * kLn2 : double(ms), mt_nat = plain ? double(mt) * kLn2 : double(mt);
    T sums[5] = {0, 0, 0, 0, 0};
    const T *a = zsw + j0, *bt = ztw + j0;
    T *e1 = es + j0, *e2 = et + j0;
    if (plain && ce_raw) stats_block<T, true, true>(n, a, bt, fs, ft, scale2, e1, e2, ms, mt, zmax_s, sums);
    if (plain && !ce_raw) stats_block<T, true, false>(n, a, bt, fs, ft, scale2, e1, e2, ms, mt, zmax_s, sums);
    if (!plain && ce_raw) stats_block<T, false, true>(n, a, bt, fs, ft, scale2, e1, e2, ms, mt, zmax_s, sums);
    if (!plain && !ce_raw) stats_block<T, false, false>(n, a, bt, fs, ft, scale2, e1, e2, ms, mt, zmax_s, sums);
    S = online_softmax_merge(S, OnlineSoftmax<double>{ms_nat, double(sums[0]), double(sums[2])});
    Tt = online_softmax_merge(Tt, OnlineSoftmax<double>{mt_nat, double(sums[1]), double(sums[3])});
    if (ce_raw) R = online_softmax_merge(R, OnlineSoftmax<double>{double(zmax_s), double(sums[4]), 0.0});
    sc.bms[size_t(b)] = ms_nat;
    sc.bmt[size_t(b)] = mt_nat;
  }
  const RowStats<double> st = row_stats(S, Tt);
  // softmax(z_s) for CE as m and log s (see distill_row.h, RowStats): exact z − m near the max.
  const double m_raw = ce_raw ? R.m : st.m_s, log_sraw = ce_raw ? std::log(R.s) : st.log_ss;
  const double ce = has_ce ? (m_raw - double(zs[y])) + log_sraw : 0.0;
  const double loss = row_loss(cfg.w, st, ce);
  if (!dzs && !dzt) return loss;

  const double beta = cfg.w.beta;
  const T inv_rows = cfg.inv_rows;
  const T dl = T(st.dl), k_rev = T(st.k_rev), k_fwd = T(st.k_fwd);
  const T c_ce = T(cfg.w.ce) * inv_rows;

  if (fast) {
    // Fast path: everything folds into per-row constants.
    const T scale = fs.scale;
    const T c_fwd = T((1.0 - beta) * cfg.w.kl) * scale * inv_rows;
    const T c_rev = T(beta * cfg.w.kl) * scale * inv_rows;
    const int ce_mode = ce_shared ? 1 : ce_raw ? 2 : 0;
    const T mr = T(m_raw), lr = T(log_sraw);
    for (int b = 0, j0 = 0; j0 < Cw; ++b, j0 += kBlock) {
      const int n = std::min(kBlock, Cw - j0);
      const T cs = block_scale<T>(sc.bms[size_t(b)], S), ct = block_scale<T>(sc.bmt[size_t(b)], Tt);
      const T af = c_fwd * cs, bf = c_fwd * ct;
      const T *a = zsw + j0, *bt = ztw + j0, *e1 = es + j0, *e2 = et + j0;
      T* out = cfg.stream_out || pad ? sc.stage : dzs + j0;
#define SPARROW_KL_WRITE(REV, CE) \
  write_block_plain<T, REV, CE>(n, a, bt, e1, e2, cs, af, bf, scale, c_rev, c_ce, dl, k_rev, mr, lr, out)
      if (beta != 0.0) {
        if (ce_mode == 0) SPARROW_KL_WRITE(true, 0);
        if (ce_mode == 1) SPARROW_KL_WRITE(true, 1);
        if (ce_mode == 2) SPARROW_KL_WRITE(true, 2);
      } else {
        if (ce_mode == 0) SPARROW_KL_WRITE(false, 0);
        if (ce_mode == 1) SPARROW_KL_WRITE(false, 1);
        if (ce_mode == 2) SPARROW_KL_WRITE(false, 2);
      }
#undef SPARROW_KL_WRITE
      if (has_ce && y >= j0 && y < j0 + n) out[y - j0] -= c_ce;
      const int n_out = std::min(n, C - j0);
      if (cfg.stream_out)
        stream_store(dzs + j0, out, n_out);
      else if (pad)
        for (int j = 0; j < n_out; ++j) dzs[j0 + j] = out[j];
    }
    return loss;
  }

  // Generic path (standardisation and/or the teacher gradient): ∂L/∂u into the scratch, the sums the
  // standardisation backward needs, then one sweep mapping ∂L/∂u → ∂L/∂z.
  const T tb = T(beta), wkl = T(cfg.w.kl);
  double gsum = 0, gu = 0, hsum = 0, hu = 0;
  for (int b = 0, j0 = 0; j0 < C; ++b, j0 += kBlock) {
    const int n = std::min(kBlock, C - j0);
    const T cs = block_scale<T>(sc.bms[size_t(b)], S), ct = block_scale<T>(sc.bmt[size_t(b)], Tt);
    T* e1 = es + j0;
    T* e2 = et + j0;
    const T *a = zs + j0, *bt = zt + j0;
    T g1 = 0, g2 = 0, h1 = 0, h2 = 0;
#pragma omp simd reduction(+ : g1, g2, h1, h2)
    for (int j = 0; j < n; ++j) {
      const T us = affine_apply(fs, a[j]), ut = affine_apply(ft, bt[j]);
      const T ps = e1[j] * cs, pt = e2[j] * ct;
      const T d = (us - ut) - dl;
      const T g = wkl * grad_student_u(ps, pt, d, tb, k_rev);
      const T h = wkl * grad_teacher_u(ps, pt, d, tb, k_fwd);
      e1[j] = g;
      e2[j] = h;
      g1 += g;
      g2 += g * us;
      h1 += h;
      h2 += h * ut;
    }
    gsum += g1, gu += g2, hsum += h1, hu += h2;
  }
  const T gbar = plain ? T(0) : T(gsum / C), gmu = plain ? T(0) : T(gu / C);
  const T hbar = plain ? T(0) : T(hsum / C), hmu = plain ? T(0) : T(hu / C);
  const T mr = T(m_raw), lr = T(log_sraw);
  for (int j0 = 0; j0 < C; j0 += kBlock) {
    const int n = std::min(kBlock, C - j0);
    const T *a = zs + j0, *bt = zt + j0, *e1 = es + j0, *e2 = et + j0;
    if (dzs) {
      T* out = dzs + j0;
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T us = affine_apply(fs, a[j]);
        T v = affine_backward(fs, e1[j], us, gbar, gmu);
        if (has_ce) v += T(cfg.w.ce) * kl_exp((a[j] - mr) - lr);
        out[j] = v * inv_rows;
      }
    }
    if (dzt) {
      T* out = dzt + j0;
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T ut = affine_apply(ft, bt[j]);
        out[j] = affine_backward(ft, e2[j], ut, hbar, hmu) * inv_rows;
      }
    }
  }
  if (has_ce && dzs) dzs[y] -= c_ce;
  return loss;
}

}  // namespace

template <typename T>
double distill_kl_ref_cpu(int rows, int cols, const T* zs, const T* zt, const int64_t* labels,
                          const KlParams& params, T* dzs, T* dzt, T* row_loss_out) {
  check_args("distill_kl_ref_cpu", rows, cols, zs, zt, labels, params);
  const Weights w = kl_weights(params, labels != nullptr);
  const int C = cols;
  std::vector<double> z_s(C), z_t(C), u_s(C), u_t(C), ls(C), lt(C), lr(C), dls(C), dlt(C), du(C),
      dz(C);
  double total = 0.0;
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < C; ++i) {
      z_s[i] = double(zs[size_t(r) * C + i]);
      z_t[i] = double(zt[size_t(r) * C + i]);
    }
    RefTransform fs{params.norm, params.T, {}, {}}, ft{params.norm, params.T, {}, {}};
    fs.forward(C, z_s.data(), u_s.data());
    ft.forward(C, z_t.data(), u_t.data());
    log_softmax_row(C, u_s.data(), ls.data());
    log_softmax_row(C, u_t.data(), lt.data());
    double k_fwd = 0.0, k_rev = 0.0;
    for (int i = 0; i < C; ++i) {
      const double ps = std::exp(ls[i]), pt = std::exp(lt[i]);
      k_fwd += pt * (lt[i] - ls[i]);
      k_rev += ps * (ls[i] - lt[i]);
    }
    double ce = 0.0;
    if (labels) {
      log_softmax_row(C, z_s.data(), lr.data());
      ce = -lr[size_t(labels[r])];
    }
    const double loss = w.ce * ce + w.kl * (w.beta * k_rev + (1.0 - w.beta) * k_fwd);
    total += loss;
    if (row_loss_out) row_loss_out[r] = T(loss);

    // Backward with the batchmean's 1/rows as the upstream gradient.
    const double up = 1.0 / rows;
    for (int i = 0; i < C; ++i) {
      const double ps = std::exp(ls[i]), pt = std::exp(lt[i]);
      // L_kl = β Σ exp(ls)(ls − lt) + (1−β) Σ exp(lt)(lt − ls), differentiated in ls and lt.
      dls[i] = up * w.kl * (w.beta * (ps * (ls[i] - lt[i]) + ps) - (1.0 - w.beta) * pt);
      dlt[i] = up * w.kl * (-w.beta * ps + (1.0 - w.beta) * (pt * (lt[i] - ls[i]) + pt));
    }
    if (dzs) {
      log_softmax_backward_row(C, ls.data(), dls.data(), du.data());
      fs.backward(C, du.data(), dz.data());
      if (labels) {
        std::vector<double> dlr(C, 0.0), dzr(C);
        dlr[size_t(labels[r])] = -up * w.ce;
        log_softmax_backward_row(C, lr.data(), dlr.data(), dzr.data());
        for (int i = 0; i < C; ++i) dz[i] += dzr[i];
      }
      for (int i = 0; i < C; ++i) dzs[size_t(r) * C + i] = T(dz[i]);
    }
    if (dzt) {
      log_softmax_backward_row(C, lt.data(), dlt.data(), du.data());
      ft.backward(C, du.data(), dz.data());
      for (int i = 0; i < C; ++i) dzt[size_t(r) * C + i] = T(dz[i]);
    }
  }
  return rows > 0 ? total / rows : 0.0;
}

template <typename T>
double distill_kl_cpu(int rows, int cols, const T* zs, const T* zt, const int64_t* labels,
                      const KlParams& params, T* dzs, T* dzt, T* row_loss_out) {
  check_args("distill_kl_cpu", rows, cols, zs, zt, labels, params);
  if (rows == 0) return 0.0;
  RowConfig<T> cfg{kl_weights(params, labels != nullptr), params, T(1.0 / rows),
                   dzs != nullptr && double(rows) * cols * sizeof(T) * (3 + (dzt ? 1 : 0)) > kStreamWorkingSetBytes};
  auto row = [&](int r, Scratch<T>& sc) {
    const size_t off = size_t(r) * size_t(cols);
    return fused_row(cols, zs + off, zt + off, labels ? labels[r] : int64_t(-1), cfg,
                     dzs ? dzs + off : nullptr, dzt ? dzt + off : nullptr, sc);
  };
  double total = 0.0;
  const bool parallel = rows > 1 && int64_t(rows) * (cols + kRowOverheadElems) >= kParallelMinWork;
  if (!parallel) {
    // Small batches: no OpenMP region at all (its fork/join would cost more than the rows).
    Scratch<T>& sc = thread_scratch<T>();
    SPARROW_CHECK(sc.fit(cols), "distill_kl_cpu: out of memory for ", cols, "-class scratch rows");
    for (int r = 0; r < rows; ++r) {
      const double l = row(r, sc);
      total += l;
      if (row_loss_out) row_loss_out[r] = T(l);
    }
    if (cfg.stream_out) stream_fence();
    return total / rows;
  }
  // Per-row losses summed in row order afterwards: the result does not depend on the thread count
  // (and equals the serial path's).
  std::vector<double> losses(static_cast<size_t>(rows));
  bool scratch_failed = false;
#pragma omp parallel
  {
    Scratch<T>& sc = thread_scratch<T>();
    const bool ok = sc.fit(cols);
    if (!ok) {
#pragma omp atomic write
      scratch_failed = true;
    }
    // Dynamic chunks of rows: a thread that is descheduled for a while does not hold its static share
    // hostage (rows are independent, so results do not depend on who computes which).
#pragma omp for schedule(dynamic, 4)
    for (int r = 0; r < rows; ++r) losses[size_t(r)] = ok ? row(r, sc) : 0.0;
    if (cfg.stream_out) stream_fence();  // before the region's closing barrier
  }
  SPARROW_CHECK(!scratch_failed, "distill_kl_cpu: out of memory for ", cols, "-class scratch rows");
  for (int r = 0; r < rows; ++r) {
    total += losses[size_t(r)];
    if (row_loss_out) row_loss_out[r] = T(losses[size_t(r)]);
  }
  return total / rows;
}

#define SPARROW_DISTILL_INSTANTIATE(T)                                                               \
  template double distill_kl_ref_cpu<T>(int, int, const T*, const T*, const int64_t*,             \
                                        const KlParams&, T*, T*, T*);                             \
  template double distill_kl_cpu<T>(int, int, const T*, const T*, const int64_t*, const KlParams&, \
                                    T*, T*, T*);
SPARROW_DISTILL_INSTANTIATE(float)
SPARROW_DISTILL_INSTANTIATE(double)
#undef SPARROW_DISTILL_INSTANTIATE

}  // namespace sparrow
