// CPU batch normalisation over N×C×HW (NCHW: channel c of image n is the contiguous run at (n·C + c)·HW).
// Fast versions read the data once per phase (statistics, then normalise) with OpenMP over channels and
// double accumulators; the *_ref_cpu versions are the plain two-pass formulas used as the oracle.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/base/error.h"
#include "kernels/batchnorm/batchnorm.h"

namespace sparrow {

namespace {

// Below this many elements the OpenMP fork/join costs more than the loop.
constexpr int64_t kParallelMin = 1 << 15;
// The per-channel sums use `omp simd reduction`: a plain double accumulation is one long dependency chain
// (about 4 cycles per element) that the compiler may not reorder; the simd reduction keeps one partial
// sum per vector lane.

void check_shape(const BatchNormShape& s, const char* op) {
  SPARROW_CHECK(s.n > 0 && s.c > 0 && s.hw > 0, op, ": invalid shape n=", s.n, " c=", s.c, " hw=", s.hw);
}

int64_t total(const BatchNormShape& s) { return int64_t(s.n) * s.c * s.hw; }

// Running-statistics update shared by the fast path and the reference: r = (1−m)·r + m·stat, with the
// unbiased variance (count/(count−1)·biased var) as PyTorch does.
template <typename T>
void update_running(T* running_mean, T* running_var, int c, double mean, double var_biased, int64_t count,
                    double momentum) {
  if (running_mean) running_mean[c] = T((1.0 - momentum) * double(running_mean[c]) + momentum * mean);
  if (running_var) {
    const double unbiased = var_biased * double(count) / double(count - 1);
    running_var[c] = T((1.0 - momentum) * double(running_var[c]) + momentum * unbiased);
  }
}

}  // namespace

template <typename T>
void batchnorm_forward_train_cpu(const BatchNormShape& s, const T* x, const T* gamma, const T* beta, T* y,
                                 T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                                 double momentum, double eps) {
  check_shape(s, "batchnorm_forward_train_cpu");
  const int64_t count = int64_t(s.n) * s.hw;
  SPARROW_CHECK(count > 1, "batchnorm_forward_train_cpu: need more than one value per channel (n=", s.n,
                " hw=", s.hw, ")");
  const int64_t plane = int64_t(s.c) * s.hw;
#pragma omp parallel for schedule(static) if (total(s) > kParallelMin)
  for (int c = 0; c < s.c; ++c) {
    // Shifted sums (shift = the channel's first value) keep Σx² − (Σx)²/m free of cancellation when the
    // mean is large against the spread, in a single pass.
    const double shift = double(x[int64_t(c) * s.hw]);
    double sum = 0.0, sumsq = 0.0;
    for (int n = 0; n < s.n; ++n) {
      const T* xc = x + n * plane + int64_t(c) * s.hw;
#pragma omp simd reduction(+ : sum, sumsq)
      for (int i = 0; i < s.hw; ++i) {
        const double d = double(xc[i]) - shift;
        sum += d;
        sumsq += d * d;
      }
    }
    const double mean_d = sum / double(count);
    const double var = std::max(0.0, sumsq / double(count) - mean_d * mean_d);
    const double mean = shift + mean_d;
    const double invstd = 1.0 / std::sqrt(var + eps);
    save_mean[c] = T(mean);
    save_invstd[c] = T(invstd);
    update_running(running_mean, running_var, c, mean, var, count, momentum);
    // (x − mean) before scaling, not x·scale + (β − mean·scale): no cancellation when |mean| ≫ std.
    const T scale = T((gamma ? double(gamma[c]) : 1.0) * invstd);
    const T bias = beta ? beta[c] : T(0), mean_t = T(mean);
    for (int n = 0; n < s.n; ++n) {
      const T* xc = x + n * plane + int64_t(c) * s.hw;
      T* yc = y + n * plane + int64_t(c) * s.hw;
      for (int i = 0; i < s.hw; ++i) yc[i] = (xc[i] - mean_t) * scale + bias;
    }
  }
}

template <typename T>
void batchnorm_forward_eval_cpu(const BatchNormShape& s, const T* x, const T* gamma, const T* beta,
                                const T* running_mean, const T* running_var, double eps, T* y) {
  check_shape(s, "batchnorm_forward_eval_cpu");
  const int64_t plane = int64_t(s.c) * s.hw;
#pragma omp parallel for schedule(static) if (total(s) > kParallelMin)
  for (int c = 0; c < s.c; ++c) {
    const double invstd = 1.0 / std::sqrt(double(running_var[c]) + eps);
    const T scale = T((gamma ? double(gamma[c]) : 1.0) * invstd);
    const T bias = beta ? beta[c] : T(0), mean = running_mean[c];
    for (int n = 0; n < s.n; ++n) {
      const T* xc = x + n * plane + int64_t(c) * s.hw;
      T* yc = y + n * plane + int64_t(c) * s.hw;
      for (int i = 0; i < s.hw; ++i) yc[i] = (xc[i] - mean) * scale + bias;
    }
  }
}

template <typename T>
void batchnorm_backward_train_cpu(const BatchNormShape& s, const T* x, const T* dy, const T* gamma,
                                  const T* save_mean, const T* save_invstd, T* dx, T* dgamma, T* dbeta) {
  check_shape(s, "batchnorm_backward_train_cpu");
  const int64_t count = int64_t(s.n) * s.hw;
  const int64_t plane = int64_t(s.c) * s.hw;
#pragma omp parallel for schedule(static) if (total(s) > kParallelMin)
  for (int c = 0; c < s.c; ++c) {
    const T mean = save_mean[c];
    const double invstd = double(save_invstd[c]);
    double sum_dy = 0.0, sum_dy_xc = 0.0;  // Σdy and Σdy·(x − mean)
    for (int n = 0; n < s.n; ++n) {
      const T* xc = x + n * plane + int64_t(c) * s.hw;
      const T* dyc = dy + n * plane + int64_t(c) * s.hw;
#pragma omp simd reduction(+ : sum_dy, sum_dy_xc)
      for (int i = 0; i < s.hw; ++i) {
        sum_dy += double(dyc[i]);
        sum_dy_xc += double(dyc[i]) * double(xc[i] - mean);
      }
    }
    if (dgamma) dgamma[c] = T(sum_dy_xc * invstd);
    if (dbeta) dbeta[c] = T(sum_dy);
    // dx = γ·invstd·(dy − mean(dy) − x̂·mean(dy·x̂)), x̂ = (x − mean)·invstd, folded into
    // (dy − mean(dy))·a + (x − mean)·b.
    const double g = gamma ? double(gamma[c]) : 1.0;
    const T a = T(g * invstd);
    const T b = T(-g * invstd * invstd * invstd * sum_dy_xc / double(count));
    const T mean_dy = T(sum_dy / double(count));
    for (int n = 0; n < s.n; ++n) {
      const T* xc = x + n * plane + int64_t(c) * s.hw;
      const T* dyc = dy + n * plane + int64_t(c) * s.hw;
      T* dxc = dx + n * plane + int64_t(c) * s.hw;
      for (int i = 0; i < s.hw; ++i) dxc[i] = (dyc[i] - mean_dy) * a + (xc[i] - mean) * b;
    }
  }
}

template <typename T>
void batchnorm_backward_eval_cpu(const BatchNormShape& s, const T* x, const T* dy, const T* gamma,
                                 const T* running_mean, const T* running_var, double eps, T* dx, T* dgamma,
                                 T* dbeta) {
  check_shape(s, "batchnorm_backward_eval_cpu");
  const int64_t plane = int64_t(s.c) * s.hw;
#pragma omp parallel for schedule(static) if (total(s) > kParallelMin)
  for (int c = 0; c < s.c; ++c) {
    const double invstd = 1.0 / std::sqrt(double(running_var[c]) + eps);
    const T mean = running_mean[c];
    const T scale = T((gamma ? double(gamma[c]) : 1.0) * invstd);
    double sum_dy = 0.0, sum_dy_xc = 0.0;
    for (int n = 0; n < s.n; ++n) {
      const T* xc = x + n * plane + int64_t(c) * s.hw;
      const T* dyc = dy + n * plane + int64_t(c) * s.hw;
      T* dxc = dx + n * plane + int64_t(c) * s.hw;
#pragma omp simd reduction(+ : sum_dy, sum_dy_xc)
      for (int i = 0; i < s.hw; ++i) {
        sum_dy += double(dyc[i]);
        sum_dy_xc += double(dyc[i]) * double(xc[i] - mean);
        dxc[i] = dyc[i] * scale;
      }
    }
    if (dgamma) dgamma[c] = T(sum_dy_xc * invstd);
    if (dbeta) dbeta[c] = T(sum_dy);
  }
}

// ---------------------------------------------------------------------------------------------------
// References: textbook two-pass statistics and the explicit x̂ form of the backward, all in double.

template <typename T>
void batchnorm_forward_train_ref_cpu(const BatchNormShape& s, const T* x, const T* gamma, const T* beta, T* y,
                                     T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                                     double momentum, double eps) {
  check_shape(s, "batchnorm_forward_train_ref_cpu");
  const int64_t count = int64_t(s.n) * s.hw;
  SPARROW_CHECK(count > 1, "batchnorm_forward_train_ref_cpu: need more than one value per channel (n=", s.n,
                " hw=", s.hw, ")");
  auto at = [&](int n, int c, int i) { return (int64_t(n) * s.c + c) * s.hw + i; };
  for (int c = 0; c < s.c; ++c) {
    double mean = 0.0;
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.hw; ++i) mean += double(x[at(n, c, i)]);
    mean /= double(count);
    double var = 0.0;
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.hw; ++i) var += (double(x[at(n, c, i)]) - mean) * (double(x[at(n, c, i)]) - mean);
    var /= double(count);
    const double invstd = 1.0 / std::sqrt(var + eps);
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.hw; ++i) {
        const double xhat = (double(x[at(n, c, i)]) - mean) * invstd;
        y[at(n, c, i)] = T(xhat * (gamma ? double(gamma[c]) : 1.0) + (beta ? double(beta[c]) : 0.0));
      }
    save_mean[c] = T(mean);
    save_invstd[c] = T(invstd);
    update_running(running_mean, running_var, c, mean, var, count, momentum);
  }
}

template <typename T>
void batchnorm_backward_train_ref_cpu(const BatchNormShape& s, const T* x, const T* dy, const T* gamma,
                                      const T* save_mean, const T* save_invstd, T* dx, T* dgamma, T* dbeta) {
  check_shape(s, "batchnorm_backward_train_ref_cpu");
  const double count = double(int64_t(s.n) * s.hw);
  auto at = [&](int n, int c, int i) { return (int64_t(n) * s.c + c) * s.hw + i; };
  for (int c = 0; c < s.c; ++c) {
    const double mean = double(save_mean[c]), invstd = double(save_invstd[c]);
    const double g = gamma ? double(gamma[c]) : 1.0;
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.hw; ++i) {
        sum_dy += double(dy[at(n, c, i)]);
        sum_dy_xhat += double(dy[at(n, c, i)]) * (double(x[at(n, c, i)]) - mean) * invstd;
      }
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.hw; ++i) {
        const double xhat = (double(x[at(n, c, i)]) - mean) * invstd;
        dx[at(n, c, i)] =
            T(g * invstd * (double(dy[at(n, c, i)]) - sum_dy / count - xhat * sum_dy_xhat / count));
      }
    if (dgamma) dgamma[c] = T(sum_dy_xhat);
    if (dbeta) dbeta[c] = T(sum_dy);
  }
}

#define SPARROW_BN_INSTANTIATE(T)                                                                            \
  template void batchnorm_forward_train_cpu<T>(const BatchNormShape&, const T*, const T*, const T*, T*, T*,  \
                                               T*, T*, T*, double, double);                                  \
  template void batchnorm_forward_eval_cpu<T>(const BatchNormShape&, const T*, const T*, const T*, const T*, \
                                              const T*, double, T*);                                         \
  template void batchnorm_backward_train_cpu<T>(const BatchNormShape&, const T*, const T*, const T*,         \
                                                const T*, const T*, T*, T*, T*);                             \
  template void batchnorm_backward_eval_cpu<T>(const BatchNormShape&, const T*, const T*, const T*,          \
                                               const T*, const T*, double, T*, T*, T*);                      \
  template void batchnorm_forward_train_ref_cpu<T>(const BatchNormShape&, const T*, const T*, const T*, T*,  \
                                                   T*, T*, T*, T*, double, double);                          \
  template void batchnorm_backward_train_ref_cpu<T>(const BatchNormShape&, const T*, const T*, const T*,     \
                                                    const T*, const T*, T*, T*, T*);

SPARROW_BN_INSTANTIATE(float)
SPARROW_BN_INSTANTIATE(double)

}  // namespace sparrow
