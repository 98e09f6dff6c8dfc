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

// Per-channel affine of the normalisation, computed the same way by every forward and by the fused
// backward (which recomputes the ReLU mask from x and must reproduce the forward's decision bit for bit):
// z = fma(x − mean, scale, bias) with mean and invstd as saved (rounded to T).
template <typename T>
T bn_scale(const T* gamma, int c, T invstd) {
  return T((gamma ? double(gamma[c]) : 1.0) * double(invstd));
}
template <typename T>
T bn_bias(const T* beta, int c) {
  return beta ? beta[c] : T(0);
}

// y = [relu](fma(x − mean, scale, bias) [+ r]) over one channel of every image. relu: x < 0 ? 0 : x lets
// NaN through, as relu_forward_cpu does.
template <typename T, bool kRelu>
void normalise_channel(const BatchNormShape& s, int c, const T* x, const T* r, T mean, T scale, T bias, T* y) {
  const int64_t plane = int64_t(s.c) * s.hw;
  for (int n = 0; n < s.n; ++n) {
    const int64_t o = n * plane + int64_t(c) * s.hw;
    const T* xc = x + o;
    T* yc = y + o;
    if (r) {
      const T* rc = r + o;
#pragma omp simd
      for (int i = 0; i < s.hw; ++i) {
        const T z = std::fma(xc[i] - mean, scale, bias) + rc[i];
        yc[i] = kRelu ? (z < T(0) ? T(0) : z) : z;
      }
    } else {
#pragma omp simd
      for (int i = 0; i < s.hw; ++i) {
        const T z = std::fma(xc[i] - mean, scale, bias);
        yc[i] = kRelu ? (z < T(0) ? T(0) : z) : z;
      }
    }
  }
}

template <typename T, bool kRelu>
void forward_train(const BatchNormShape& s, const T* x, const T* r, const T* gamma, const T* beta, T* y,
                   T* save_mean, T* save_invstd, T* running_mean, T* running_var, double momentum, double eps,
                   const char* op, const ChannelMoments* given = nullptr) {
  check_shape(s, op);
  const int64_t count = int64_t(s.n) * s.hw;
  SPARROW_CHECK(count > 1, op, ": need more than one value per channel (n=", s.n, " hw=", s.hw, ")");
  SPARROW_CHECK(!given || (given->count == count && int64_t(given->mean.size()) == s.c &&
                           int64_t(given->m2.size()) == s.c),
                op, ": given moments (", given ? given->count : 0, " values of ", given ? given->mean.size() : 0,
                " channels) do not describe x (", count, " values of ", s.c, " channels)");
  const int64_t plane = int64_t(s.c) * s.hw;
#pragma omp parallel for schedule(static) if (total(s) > kParallelMin)
  for (int c = 0; c < s.c; ++c) {
    double mean, var;
    if (given) {
      mean = given->mean[size_t(c)];
      var = std::max(0.0, given->m2[size_t(c)] / double(count));
    } else {
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
      var = std::max(0.0, sumsq / double(count) - mean_d * mean_d);
      mean = shift + mean_d;
    }
    save_mean[c] = T(mean);
    save_invstd[c] = T(1.0 / std::sqrt(var + eps));
    update_running(running_mean, running_var, c, mean, var, count, momentum);
    // (x − mean) before scaling, not x·scale + (β − mean·scale): no cancellation when |mean| ≫ std.
    normalise_channel<T, kRelu>(s, c, x, r, save_mean[c], bn_scale(gamma, c, save_invstd[c]), bn_bias(beta, c), y);
  }
}

template <typename T, bool kRelu>
void forward_eval(const BatchNormShape& s, const T* x, const T* r, const T* gamma, const T* beta,
                  const T* running_mean, const T* running_var, double eps, T* y, const char* op) {
  check_shape(s, op);
#pragma omp parallel for schedule(static) if (total(s) > kParallelMin)
  for (int c = 0; c < s.c; ++c) {
    const T invstd = T(1.0 / std::sqrt(double(running_var[c]) + eps));
    normalise_channel<T, kRelu>(s, c, x, r, running_mean[c], bn_scale(gamma, c, invstd), bn_bias(beta, c), y);
  }
}

// The backward's per-channel sums run over chunks of this many values in T lanes, then in double.
constexpr int kSumChunk = 256;

// dy where the forward's z = fma(x − mean, scale, bias) was positive (kRelu), else 0; dy itself without the
// ReLU (z is then unused and optimised away). Both operands are loaded unconditionally so the select
// vectorises.
template <typename T, bool kRelu>
inline T relu_masked(T dy, T z) {
  if constexpr (kRelu) return z > T(0) ? dy : T(0);
  return dy;
}

// How the training backward masks dy: not at all (plain BN), by the ReLU mask recomputed from x with the
// forward's own expression (y = max(bn(x), 0): y is never read), or by y > 0 (y = max(bn(x) + r, 0): the
// masked dy is written to dr, the residual's gradient, and pass 2 reads it back instead of dy and y).
enum class Mask { None, FromX, FromY };

template <typename T, Mask M>
void backward_train(const BatchNormShape& s, const T* x, const T* y, const T* dy, const T* gamma, const T* beta,
                    const T* save_mean, const T* save_invstd, T* dx, T* dr, T* dgamma, T* dbeta, const char* op) {
  check_shape(s, op);
  const int64_t count = int64_t(s.n) * s.hw;
  const int64_t plane = int64_t(s.c) * s.hw;
#pragma omp parallel for schedule(static) if (total(s) > kParallelMin)
  for (int c = 0; c < s.c; ++c) {
    const T mean = save_mean[c];
    const T scale = bn_scale(gamma, c, save_invstd[c]), bias = bn_bias(beta, c);
    const double invstd = double(save_invstd[c]);
    double sum_dy = 0.0, sum_dy_xc = 0.0;  // Σdy and Σdy·(x − mean), dy after the ReLU mask
    for (int n = 0; n < s.n; ++n) {
      const int64_t o = n * plane + int64_t(c) * s.hw;
      const T* xc = x + o;
      const T* dyc = dy + o;
      // Chunks of kSumChunk summed in T lanes, then in double: GCC does not vectorise a select that feeds
      // double sums from float data (the ReLU mask), and 16 values per lane lose nothing that matters.
      for (int i0 = 0; i0 < s.hw; i0 += kSumChunk) {
        const int i1 = std::min(s.hw, i0 + kSumChunk);
        T part_dy = T(0), part_dy_xc = T(0);
        if constexpr (M == Mask::FromY) {
          const T* yc = y + o;
          T* drc = dr + o;
#pragma omp simd reduction(+ : part_dy, part_dy_xc)
          for (int i = i0; i < i1; ++i) {
            const T d = relu_masked<T, true>(dyc[i], yc[i]);
            drc[i] = d;
            part_dy += d;
            part_dy_xc += d * (xc[i] - mean);
          }
        } else {
#pragma omp simd reduction(+ : part_dy, part_dy_xc)
          for (int i = i0; i < i1; ++i) {
            const T xm = xc[i] - mean;
            const T d = relu_masked<T, M == Mask::FromX>(dyc[i], std::fma(xm, scale, bias));
            part_dy += d;
            part_dy_xc += d * xm;
          }
        }
        sum_dy += double(part_dy);
        sum_dy_xc += double(part_dy_xc);
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
    const T* src = M == Mask::FromY ? dr : dy;  // FromY: the masked dy written above
    for (int n = 0; n < s.n; ++n) {
      const T* xc = x + n * plane + int64_t(c) * s.hw;
      const T* dyc = src + n * plane + int64_t(c) * s.hw;
      T* dxc = dx + n * plane + int64_t(c) * s.hw;
#pragma omp simd
      for (int i = 0; i < s.hw; ++i) {
        const T d = relu_masked<T, M == Mask::FromX>(dyc[i], std::fma(xc[i] - mean, scale, bias));
        dxc[i] = (d - mean_dy) * a + (xc[i] - mean) * b;
      }
    }
  }
}

}  // namespace

template <typename T>
void batchnorm_forward_train_cpu(const BatchNormShape& s, const T* x, const T* gamma, const T* beta, T* y,
                                 T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                                 double momentum, double eps) {
  forward_train<T, false>(s, x, nullptr, gamma, beta, y, save_mean, save_invstd, running_mean, running_var,
                          momentum, eps, "batchnorm_forward_train_cpu");
}

template <typename T>
void batchnorm_relu_forward_train_cpu(const BatchNormShape& s, const T* x, const T* r, const T* gamma,
                                      const T* beta, T* y, T* save_mean, T* save_invstd, T* running_mean,
                                      T* running_var, double momentum, double eps, const ChannelMoments* moments) {
  forward_train<T, true>(s, x, r, gamma, beta, y, save_mean, save_invstd, running_mean, running_var, momentum,
                         eps, "batchnorm_relu_forward_train_cpu", moments);
}

template <typename T>
void batchnorm_forward_eval_cpu(const BatchNormShape& s, const T* x, const T* gamma, const T* beta,
                                const T* running_mean, const T* running_var, double eps, T* y) {
  forward_eval<T, false>(s, x, nullptr, gamma, beta, running_mean, running_var, eps, y,
                         "batchnorm_forward_eval_cpu");
}

template <typename T>
void batchnorm_relu_forward_eval_cpu(const BatchNormShape& s, const T* x, const T* r, const T* gamma,
                                     const T* beta, const T* running_mean, const T* running_var, double eps,
                                     T* y) {
  forward_eval<T, true>(s, x, r, gamma, beta, running_mean, running_var, eps, y,
                        "batchnorm_relu_forward_eval_cpu");
}

template <typename T>
void batchnorm_backward_train_cpu(const BatchNormShape& s, const T* x, const T* dy, const T* gamma,
                                  const T* save_mean, const T* save_invstd, T* dx, T* dgamma, T* dbeta) {
  backward_train<T, Mask::None>(s, x, nullptr, dy, gamma, nullptr, save_mean, save_invstd, dx, nullptr, dgamma,
                                dbeta, "batchnorm_backward_train_cpu");
}

template <typename T>
void batchnorm_relu_backward_train_cpu(const BatchNormShape& s, const T* x, const T* dy, const T* gamma,
                                       const T* beta, const T* save_mean, const T* save_invstd, T* dx, T* dgamma,
                                       T* dbeta) {
  backward_train<T, Mask::FromX>(s, x, nullptr, dy, gamma, beta, save_mean, save_invstd, dx, nullptr, dgamma,
                                 dbeta, "batchnorm_relu_backward_train_cpu");
}

template <typename T>
void batchnorm_relu_residual_backward_train_cpu(const BatchNormShape& s, const T* x, const T* y, const T* dy,
                                                const T* gamma, const T* save_mean, const T* save_invstd, T* dx,
                                                T* dr, T* dgamma, T* dbeta) {
  backward_train<T, Mask::FromY>(s, x, y, dy, gamma, nullptr, save_mean, save_invstd, dx, dr, dgamma, dbeta,
                                 "batchnorm_relu_residual_backward_train_cpu");
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
  template void batchnorm_relu_forward_train_cpu<T>(const BatchNormShape&, const T*, const T*, const T*,     \
                                                    const T*, T*, T*, T*, T*, T*, double, double,            \
                                                    const ChannelMoments*);                                  \
  template void batchnorm_relu_forward_eval_cpu<T>(const BatchNormShape&, const T*, const T*, const T*,      \
                                                   const T*, const T*, const T*, double, T*);                \
  template void batchnorm_relu_backward_train_cpu<T>(const BatchNormShape&, const T*, const T*, const T*,    \
                                                     const T*, const T*, const T*, T*, T*, T*);              \
  template void batchnorm_relu_residual_backward_train_cpu<T>(const BatchNormShape&, const T*, const T*,      \
                                                              const T*, const T*, const T*, const T*, T*, T*, \
                                                              T*, T*);                                        \
  template void batchnorm_forward_train_ref_cpu<T>(const BatchNormShape&, const T*, const T*, const T*, T*,  \
                                                   T*, T*, T*, T*, double, double);                          \
  template void batchnorm_backward_train_ref_cpu<T>(const BatchNormShape&, const T*, const T*, const T*,     \
                                                    const T*, const T*, T*, T*, T*);

SPARROW_BN_INSTANTIATE(float)
SPARROW_BN_INSTANTIATE(double)

}  // namespace sparrow
