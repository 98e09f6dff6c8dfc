// CPU 2-D convolution over NCHW input/output and OIHW weights (row-major): plain-loop references (the
// oracle), im2col/col2im, and the optimised GEMM path. The optimised path works on pixel-major ("NHWC")
// copies of each image so every GEMM has the pixel count as its long M dimension (see the block below).
#include <omp.h>
#include <algorithm>
#include <vector>

#include "engine/base/error.h"
#include "kernels/common/transpose.h"
#include "kernels/conv/conv.h"
#include "kernels/gemm/gemm.h"

namespace sparrow {

namespace {

// GEMMs with fewer rows than this run well below OpenBLAS's peak; images with small output maps (8×8 in
// the last ResNet stage) are stacked into one GEMM until it has this many rows.
constexpr int64_t kMinGemmRows = 512;

void check_shape(const Conv2dShape& s, const char* op) {
  SPARROW_CHECK(s.n > 0 && s.cin > 0 && s.h > 0 && s.w > 0 && s.cout > 0 && s.kh > 0 && s.kw > 0 &&
                    s.stride > 0 && s.pad >= 0,
                op, ": invalid shape n=", s.n, " cin=", s.cin, " h=", s.h, " w=", s.w, " cout=", s.cout,
                " k=", s.kh, "x", s.kw, " stride=", s.stride, " pad=", s.pad);
  SPARROW_CHECK(s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw, op, ": kernel ", s.kh, "x", s.kw,
                " larger than the padded input ", s.h + 2 * s.pad, "x", s.w + 2 * s.pad);
}

// Per-thread growable scratch. OpenMP keeps its worker threads alive, so after the first step of a
// training run no call allocates; `slot` separates buffers a thread needs at the same time.
template <typename T>
T* thread_scratch(size_t n, int slot) {
  static thread_local std::vector<T> bufs[4];
  std::vector<T>& b = bufs[slot];
  if (b.size() < n) b.resize(n);
  return b.data();
}

bool is_pointwise(const Conv2dShape& s) { return s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0; }

// Images per GEMM: enough for ≥ kMinGemmRows rows, but leave every thread at least one group.
int images_per_group(const Conv2dShape& s) {
  const int64_t p = int64_t(s.oh()) * s.ow();
  int64_t g = (kMinGemmRows + p - 1) / p;
  const int threads = omp_get_max_threads();
  g = std::min<int64_t>(g, (s.n + threads - 1) / threads);
  return int(std::max<int64_t>(1, std::min<int64_t>(g, s.n)));
}

// Output columns [ox_lo, ox_hi) whose input column ox·stride − pad + kx lies inside [0, w).
void valid_ox(const Conv2dShape& s, int kx, int& ox_lo, int& ox_hi) {
  const int ow = s.ow();
  const int lo_num = s.pad - kx;  // need ox·stride ≥ pad − kx
  ox_lo = lo_num > 0 ? (lo_num + s.stride - 1) / s.stride : 0;
  const int hi_num = s.w - 1 + s.pad - kx;  // need ox·stride ≤ w − 1 + pad − kx
  ox_hi = hi_num >= 0 ? std::min(ow, hi_num / s.stride + 1) : 0;
  ox_lo = std::min(ox_lo, ow);
  ox_hi = std::max(ox_hi, ox_lo);
}

// Runs are short (Kw·Cin elements): copied inline, since a memcpy call per run showed up as 10% of the
// forward's profile.
template <typename T>
inline void copy_run(const T* src, int64_t n, T* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

// ---------------------------------------------------------------------------------------------------
// Pixel-major ("row") formulation. For one image, xt = xᵀ is H·W × Cin and the patch matrix R is
// P × K (P = OH·OW, K = Kh·Kw·Cin in (ky, kx, ci) order), so one patch row is Kh runs of Kw·Cin
// contiguous xt elements. With Wr = W permuted to Cout × (ky, kx, ci):
//   forward:          Yᵀ (P × Cout) = R · Wrᵀ
//   backward input:   dR (P × K) = dYᵀ · Wr, then row2im (scatter-add into dxᵀ)
//   backward weight:  dWr (Cout × K) += (dYᵀ)ᵀ · R
// so the pixel count is the GEMM's M (or its reduction) dimension instead of Cout. Measured with
// OpenBLAS on one core, CIFAR stage 1 (Cin = Cout = 16, 32×32): the column (im2col) form ran its three
// GEMMs at 49 / 54 / 35 GFLOP/s, this form at 85 / 83 / 76. Images are stacked along P (rows) for small
// maps, which needs no copying in this layout.

// Patch rows of one image from its transposed copy xt (H·W × Cin); writes P × K rows into r.
template <typename T>
void im2row(const Conv2dShape& s, const T* xt, T* r) {
  const int oh = s.oh(), ow = s.ow(), cin = s.cin;
  const int64_t run = int64_t(s.kw) * cin;  // one (ky) run: taps kx = 0..Kw−1, all channels
  for (int oy = 0; oy < oh; ++oy)
    for (int ox = 0; ox < ow; ++ox) {
      const int ix0 = conv_in_x(s, ox, 0);
      const bool x_inside = ix0 >= 0 && ix0 + s.kw <= s.w;
      for (int ky = 0; ky < s.kh; ++ky, r += run) {
        const int iy = conv_in_y(s, oy, ky);
        if (iy < 0 || iy >= s.h) {
          std::fill(r, r + run, T(0));
          continue;
        }
        const T* src = xt + (int64_t(iy) * s.w + ix0) * cin;
        if (x_inside) {
          copy_run(src, run, r);
          continue;
        }
        for (int kx = 0; kx < s.kw; ++kx) {
          const int ix = ix0 + kx;
          if (ix < 0 || ix >= s.w)
            std::fill(r + kx * cin, r + (kx + 1) * cin, T(0));
          else
            copy_run(src + kx * cin, cin, r + kx * cin);
        }
      }
    }
}

// Adjoint of im2row: zeroes dxt (H·W × Cin) and adds every patch entry back to the pixel it came from.
template <typename T>
void row2im(const Conv2dShape& s, const T* dr, T* dxt) {
  const int oh = s.oh(), ow = s.ow(), cin = s.cin;
  const int64_t run = int64_t(s.kw) * cin;
  std::fill(dxt, dxt + int64_t(s.h) * s.w * cin, T(0));
  for (int oy = 0; oy < oh; ++oy)
    for (int ox = 0; ox < ow; ++ox) {
      const int ix0 = conv_in_x(s, ox, 0);
      const bool x_inside = ix0 >= 0 && ix0 + s.kw <= s.w;
      for (int ky = 0; ky < s.kh; ++ky, dr += run) {
        const int iy = conv_in_y(s, oy, ky);
        if (iy < 0 || iy >= s.h) continue;
        T* dst = dxt + (int64_t(iy) * s.w + ix0) * cin;
        if (x_inside) {
          for (int64_t i = 0; i < run; ++i) dst[i] += dr[i];
          continue;
        }
        for (int kx = 0; kx < s.kw; ++kx) {
          const int ix = ix0 + kx;
          if (ix < 0 || ix >= s.w) continue;
          for (int c = 0; c < cin; ++c) dst[kx * cin + c] += dr[kx * cin + c];
        }
      }
    }
}

// Index of OIHW element (co, ci, ky, kx) in the Cout × (ky, kx, ci) weight layout Wr.
inline int64_t wr_index(const Conv2dShape& s, int co, int ci, int ky, int kx) {
  return (int64_t(co) * s.kh * s.kw + int64_t(ky) * s.kw + kx) * s.cin + ci;
}

template <typename T>
void permute_weight_to_wr(const Conv2dShape& s, const T* w, T* wr) {
  for (int co = 0; co < s.cout; ++co)
    for (int ci = 0; ci < s.cin; ++ci)
      for (int ky = 0; ky < s.kh; ++ky)
        for (int kx = 0; kx < s.kw; ++kx)
          wr[wr_index(s, co, ci, ky, kx)] = w[((int64_t(co) * s.cin + ci) * s.kh + ky) * s.kw + kx];
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// im2col / col2im (column form, one image): row (ci·Kh + ky)·Kw + kx, column oy·OW + ox.

template <typename T>
void im2col_cpu(const Conv2dShape& s, const T* x_img, T* col) {
  check_shape(s, "im2col_cpu");
  const int oh = s.oh(), ow = s.ow();
  const int64_t p = int64_t(oh) * ow;
  for (int ci = 0; ci < s.cin; ++ci) {
    const T* xc = x_img + int64_t(ci) * s.h * s.w;
    for (int ky = 0; ky < s.kh; ++ky)
      for (int kx = 0; kx < s.kw; ++kx) {
        T* row = col + (int64_t(ci * s.kh + ky) * s.kw + kx) * p;
        int lo, hi;
        valid_ox(s, kx, lo, hi);
        for (int oy = 0; oy < oh; ++oy) {
          T* dst = row + int64_t(oy) * ow;
          const int iy = conv_in_y(s, oy, ky);
          if (iy < 0 || iy >= s.h) {
            std::fill(dst, dst + ow, T(0));
            continue;
          }
          const T* src = xc + int64_t(iy) * s.w;
          std::fill(dst, dst + lo, T(0));
          for (int ox = lo; ox < hi; ++ox) dst[ox] = src[conv_in_x(s, ox, kx)];
          std::fill(dst + hi, dst + ow, T(0));
        }
      }
  }
}

template <typename T>
void col2im_cpu(const Conv2dShape& s, const T* col, T* x_img) {
  check_shape(s, "col2im_cpu");
  const int oh = s.oh(), ow = s.ow();
  const int64_t p = int64_t(oh) * ow;
  std::fill(x_img, x_img + int64_t(s.cin) * s.h * s.w, T(0));
  for (int ci = 0; ci < s.cin; ++ci) {
    T* xc = x_img + int64_t(ci) * s.h * s.w;
    for (int ky = 0; ky < s.kh; ++ky)
      for (int kx = 0; kx < s.kw; ++kx) {
        const T* row = col + (int64_t(ci * s.kh + ky) * s.kw + kx) * p;
        int lo, hi;
        valid_ox(s, kx, lo, hi);
        for (int oy = 0; oy < oh; ++oy) {
          const int iy = conv_in_y(s, oy, ky);
          if (iy < 0 || iy >= s.h) continue;
          const T* src = row + int64_t(oy) * ow;
          T* dst = xc + int64_t(iy) * s.w;
          for (int ox = lo; ox < hi; ++ox) dst[conv_in_x(s, ox, kx)] += src[ox];
        }
      }
  }
}

// ---------------------------------------------------------------------------------------------------
// References: direct loops, double accumulation, gather form everywhere (no scatter), so they share no
// index arithmetic with im2col/col2im beyond conv_in_y / conv_in_x.

template <typename T>
void conv2d_forward_ref_cpu(const Conv2dShape& s, const T* x, const T* w, const T* b, T* y) {
  check_shape(s, "conv2d_forward_ref_cpu");
  const int oh = s.oh(), ow = s.ow();
  for (int n = 0; n < s.n; ++n)
    for (int co = 0; co < s.cout; ++co)
      for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox) {
          double acc = b ? double(b[co]) : 0.0;
          for (int ci = 0; ci < s.cin; ++ci)
            for (int ky = 0; ky < s.kh; ++ky) {
              const int iy = conv_in_y(s, oy, ky);
              if (iy < 0 || iy >= s.h) continue;
              for (int kx = 0; kx < s.kw; ++kx) {
                const int ix = conv_in_x(s, ox, kx);
                if (ix < 0 || ix >= s.w) continue;
                acc += double(x[((int64_t(n) * s.cin + ci) * s.h + iy) * s.w + ix]) *
                       double(w[((int64_t(co) * s.cin + ci) * s.kh + ky) * s.kw + kx]);
              }
            }
          y[((int64_t(n) * s.cout + co) * oh + oy) * ow + ox] = T(acc);
        }
}

template <typename T>
void conv2d_backward_input_ref_cpu(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  check_shape(s, "conv2d_backward_input_ref_cpu");
  const int oh = s.oh(), ow = s.ow();
  for (int n = 0; n < s.n; ++n)
    for (int ci = 0; ci < s.cin; ++ci)
      for (int iy = 0; iy < s.h; ++iy)
        for (int ix = 0; ix < s.w; ++ix) {
          double acc = 0.0;
          for (int ky = 0; ky < s.kh; ++ky) {
            const int ty = iy + s.pad - ky;  // = oy·stride
            if (ty < 0 || ty % s.stride != 0 || ty / s.stride >= oh) continue;
            const int oy = ty / s.stride;
            for (int kx = 0; kx < s.kw; ++kx) {
              const int tx = ix + s.pad - kx;
              if (tx < 0 || tx % s.stride != 0 || tx / s.stride >= ow) continue;
              const int ox = tx / s.stride;
              for (int co = 0; co < s.cout; ++co)
                acc += double(dy[((int64_t(n) * s.cout + co) * oh + oy) * ow + ox]) *
                       double(w[((int64_t(co) * s.cin + ci) * s.kh + ky) * s.kw + kx]);
            }
          }
          dx[((int64_t(n) * s.cin + ci) * s.h + iy) * s.w + ix] = T(acc);
        }
}

template <typename T>
void conv2d_backward_weight_ref_cpu(const Conv2dShape& s, const T* x, const T* dy, T* dw, T* db) {
  check_shape(s, "conv2d_backward_weight_ref_cpu");
  const int oh = s.oh(), ow = s.ow();
  for (int co = 0; co < s.cout; ++co) {
    for (int ci = 0; ci < s.cin; ++ci)
      for (int ky = 0; ky < s.kh; ++ky)
        for (int kx = 0; kx < s.kw; ++kx) {
          double acc = 0.0;
          for (int n = 0; n < s.n; ++n)
            for (int oy = 0; oy < oh; ++oy) {
              const int iy = conv_in_y(s, oy, ky);
              if (iy < 0 || iy >= s.h) continue;
              for (int ox = 0; ox < ow; ++ox) {
                const int ix = conv_in_x(s, ox, kx);
                if (ix < 0 || ix >= s.w) continue;
                acc += double(dy[((int64_t(n) * s.cout + co) * oh + oy) * ow + ox]) *
                       double(x[((int64_t(n) * s.cin + ci) * s.h + iy) * s.w + ix]);
              }
            }
          dw[((int64_t(co) * s.cin + ci) * s.kh + ky) * s.kw + kx] = T(acc);
        }
    if (db) {
      double acc = 0.0;
      for (int n = 0; n < s.n; ++n)
        for (int64_t p = 0; p < int64_t(oh) * ow; ++p)
          acc += double(dy[(int64_t(n) * s.cout + co) * oh * ow + p]);
      db[co] = T(acc);
    }
  }
}

// Optimised path (pixel-major formulation above). OpenMP over groups of images, each thread with its own
// scratch; gemm_cpu runs single-threaded inside the region. With a single group (batch 1) there is no
// region and OpenBLAS threads the one GEMM instead. Pointwise convs (1×1, stride 1, pad 0) skip the
// copies: the NCHW image already is the Cin × P column matrix.

template <typename T>
void conv2d_forward_cpu(const Conv2dShape& s, const T* x, const T* w, const T* b, T* y) {
  check_shape(s, "conv2d_forward_cpu");
  const int64_t p = int64_t(s.oh()) * s.ow(), hw = int64_t(s.h) * s.w, k = int64_t(s.cin) * s.kh * s.kw;
  const int64_t xs = s.cin * hw, ys = s.cout * p;
  auto add_bias = [&](T* yn) {
    if (b)
      for (int co = 0; co < s.cout; ++co)
        for (int64_t j = 0; j < p; ++j) yn[co * p + j] += b[co];
  };
  if (is_pointwise(s)) {
#pragma omp parallel for schedule(static) if (s.n > 1)
    for (int n = 0; n < s.n; ++n) {
      gemm_cpu<T>(false, false, s.cout, int(p), s.cin, T(1), w, s.cin, x + n * xs, int(p), T(0), y + n * ys,
                  int(p));
      add_bias(y + n * ys);
    }
    return;
  }
  std::vector<T> wr(size_t(s.cout * k));
  permute_weight_to_wr(s, w, wr.data());
  const int g_max = images_per_group(s);
  const int groups = (s.n + g_max - 1) / g_max;
#pragma omp parallel if (groups > 1)
  {
    T* xt = thread_scratch<T>(size_t(hw * s.cin), 0);
    T* r = thread_scratch<T>(size_t(g_max * p * k), 1);
    T* yt = thread_scratch<T>(size_t(g_max * p * s.cout), 2);
#pragma omp for schedule(static)
    for (int g = 0; g < groups; ++g) {
      const int n0 = g * g_max, gn = std::min(g_max, s.n - n0);
      for (int i = 0; i < gn; ++i) {
        transpose_matrix(s.cin, hw, x + (n0 + i) * xs, hw, xt, s.cin);
        im2row(s, xt, r + i * p * k);
      }
      gemm_cpu<T>(false, true, int(gn * p), s.cout, int(k), T(1), r, int(k), wr.data(), int(k), T(0), yt,
                  s.cout);
      for (int i = 0; i < gn; ++i) {
        T* yn = y + (n0 + i) * ys;
        transpose_matrix(p, s.cout, yt + i * p * s.cout, s.cout, yn, p);
        add_bias(yn);
      }
    }
  }
}

template <typename T>
void conv2d_backward_input_cpu(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  check_shape(s, "conv2d_backward_input_cpu");
  const int64_t p = int64_t(s.oh()) * s.ow(), hw = int64_t(s.h) * s.w, k = int64_t(s.cin) * s.kh * s.kw;
  const int64_t xs = s.cin * hw, ys = s.cout * p;
  if (is_pointwise(s)) {
#pragma omp parallel for schedule(static) if (s.n > 1)
    for (int n = 0; n < s.n; ++n)
      gemm_cpu<T>(true, false, s.cin, int(p), s.cout, T(1), w, s.cin, dy + n * ys, int(p), T(0), dx + n * xs,
                  int(p));
    return;
  }
  std::vector<T> wr(size_t(s.cout * k));
  permute_weight_to_wr(s, w, wr.data());
  const int g_max = images_per_group(s);
  const int groups = (s.n + g_max - 1) / g_max;
#pragma omp parallel if (groups > 1)
  {
    T* dyt = thread_scratch<T>(size_t(g_max * p * s.cout), 0);
    T* dr = thread_scratch<T>(size_t(g_max * p * k), 1);
    T* dxt = thread_scratch<T>(size_t(hw * s.cin), 2);
#pragma omp for schedule(static)
    for (int g = 0; g < groups; ++g) {
      const int n0 = g * g_max, gn = std::min(g_max, s.n - n0);
      for (int i = 0; i < gn; ++i)
        transpose_matrix(s.cout, p, dy + (n0 + i) * ys, p, dyt + i * p * s.cout, s.cout);
      gemm_cpu<T>(false, false, int(gn * p), int(k), s.cout, T(1), dyt, s.cout, wr.data(), int(k), T(0), dr,
                  int(k));
      for (int i = 0; i < gn; ++i) {
        row2im(s, dr + i * p * k, dxt);
        transpose_matrix(hw, s.cin, dxt, s.cin, dx + (n0 + i) * xs, hw);
      }
    }
  }
}

template <typename T>
void conv2d_backward_weight_cpu(const Conv2dShape& s, const T* x, const T* dy, T* dw, T* db) {
  check_shape(s, "conv2d_backward_weight_cpu");
  const int64_t p = int64_t(s.oh()) * s.ow(), hw = int64_t(s.h) * s.w, k = int64_t(s.cin) * s.kh * s.kw;
  const int64_t xs = s.cin * hw, ys = s.cout * p, wsize = s.cout * k;
  const bool pointwise = is_pointwise(s);
  const int g_max = pointwise ? 1 : images_per_group(s);
  const int groups = (s.n + g_max - 1) / g_max;
  const int max_threads = omp_get_max_threads();
  // Per-thread partial sums in the Wr layout (equal to OIHW for pointwise), reduced and permuted at the end.
  std::vector<T*> partial(size_t(max_threads), nullptr);
  std::vector<double> db_partial(db ? size_t(max_threads) * s.cout : 0, 0.0);
  int team = 1;
#pragma omp parallel if (groups > 1)
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    team = omp_get_num_threads();
    T* acc = thread_scratch<T>(size_t(wsize), 3);
    std::fill(acc, acc + wsize, T(0));
    partial[size_t(tid)] = acc;
    T* xt = pointwise ? nullptr : thread_scratch<T>(size_t(hw * s.cin), 0);
    T* r = pointwise ? nullptr : thread_scratch<T>(size_t(g_max * p * k), 1);
    T* dyt = pointwise ? nullptr : thread_scratch<T>(size_t(g_max * p * s.cout), 2);
    double* dbt = db ? db_partial.data() + size_t(tid) * s.cout : nullptr;
#pragma omp for schedule(static)
    for (int g = 0; g < groups; ++g) {
      const int n0 = g * g_max, gn = std::min(g_max, s.n - n0);
      if (pointwise) {
        // dW (Cout × Cin) += dY_n (Cout × P) · X_nᵀ
        gemm_cpu<T>(false, true, s.cout, s.cin, int(p), T(1), dy + n0 * ys, int(p), x + n0 * xs, int(p), T(1),
                    acc, s.cin);
      } else {
        for (int i = 0; i < gn; ++i) {
          transpose_matrix(s.cin, hw, x + (n0 + i) * xs, hw, xt, s.cin);
          im2row(s, xt, r + i * p * k);
          transpose_matrix(s.cout, p, dy + (n0 + i) * ys, p, dyt + i * p * s.cout, s.cout);
        }
        gemm_cpu<T>(true, false, s.cout, int(k), int(gn * p), T(1), dyt, s.cout, r, int(k), T(1), acc,
                    int(k));
      }
      if (dbt)
        for (int i = 0; i < gn; ++i)
          for (int co = 0; co < s.cout; ++co) {
            const T* d = dy + (n0 + i) * ys + co * p;
            double sum = 0.0;
            for (int64_t j = 0; j < p; ++j) sum += double(d[j]);
            dbt[co] += sum;
          }
    }
    // The loop's implicit barrier completes every partial before the reduction reads them.
#pragma omp for schedule(static)
    for (int co = 0; co < s.cout; ++co)
      for (int ci = 0; ci < s.cin; ++ci)
        for (int ky = 0; ky < s.kh; ++ky)
          for (int kx = 0; kx < s.kw; ++kx) {
            const int64_t src = wr_index(s, co, ci, ky, kx);
            T sum = partial[0][src];
            for (int t = 1; t < team; ++t) sum += partial[size_t(t)][src];
            dw[((int64_t(co) * s.cin + ci) * s.kh + ky) * s.kw + kx] = sum;
          }
  }
  if (db)
    for (int co = 0; co < s.cout; ++co) {
      double sum = 0.0;
      for (int t = 0; t < team; ++t) sum += db_partial[size_t(t) * s.cout + co];
      db[co] = T(sum);
    }
}

#define SPARROW_CONV_INSTANTIATE(T)                                                                \
  template void conv2d_forward_ref_cpu<T>(const Conv2dShape&, const T*, const T*, const T*, T*);   \
  template void conv2d_backward_input_ref_cpu<T>(const Conv2dShape&, const T*, const T*, T*);      \
  template void conv2d_backward_weight_ref_cpu<T>(const Conv2dShape&, const T*, const T*, T*, T*); \
  template void conv2d_forward_cpu<T>(const Conv2dShape&, const T*, const T*, const T*, T*);       \
  template void conv2d_backward_input_cpu<T>(const Conv2dShape&, const T*, const T*, T*);          \
  template void conv2d_backward_weight_cpu<T>(const Conv2dShape&, const T*, const T*, T*, T*);     \
  template void im2col_cpu<T>(const Conv2dShape&, const T*, T*);                                   \
  template void col2im_cpu<T>(const Conv2dShape&, const T*, T*);

SPARROW_CONV_INSTANTIATE(float)
SPARROW_CONV_INSTANTIATE(double)

}  // namespace sparrow
