// CPU pooling over NCHW: max (with argmax = iy·W + ix inside the input plane), average (padding counted in
// the divisor, k·k) and global average. OpenMP over the N·C planes, which are independent in every op
// (backward scatters stay inside their own plane, so no two threads write the same element).
#include <cstdint>
#include <limits>
#include <type_traits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "engine/base/error.h"
#include "kernels/pool/pool.h"

namespace sparrow {

namespace {

constexpr int64_t kParallelMin = 1 << 15;

void check_shape(const Pool2dShape& s, const char* op) {
  SPARROW_CHECK(s.n > 0 && s.c > 0 && s.h > 0 && s.w > 0 && s.k > 0 && s.stride > 0 && s.pad >= 0, op,
                ": invalid shape n=", s.n, " c=", s.c, " h=", s.h, " w=", s.w, " k=", s.k,
                " stride=", s.stride, " pad=", s.pad);
  SPARROW_CHECK(s.oh() > 0 && s.ow() > 0, op, ": window ", s.k, " larger than the padded input ",
                s.h + 2 * s.pad, "x", s.w + 2 * s.pad);
}

// Takes v over the running (best, arg) under the max-pool rule: larger wins, the first NaN wins and
// sticks (PyTorch propagates NaN through max pooling), ties keep the earlier element. Branch-free, so the
// 2×2 loop below vectorises (a data-dependent branch mispredicted on every other random window).
template <typename T>
inline void take_max(T v, int32_t at, T& best, int32_t& arg) {
  const bool take = v > best || (v != v && best == best);
  best = take ? v : best;
  arg = take ? at : arg;
}

// The VGG pool (k = 2, stride 2, no padding): every window is inside the plane, so no bounds tests.
template <typename T>
void max_pool2x2_forward(const Pool2dShape& s, const T* x, T* y, int32_t* argmax) {
  const int oh = s.oh(), ow = s.ow(), w = s.w;
  const int64_t planes = int64_t(s.n) * s.c;
#pragma omp parallel for schedule(static) if (planes * s.h * s.w > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl)
    for (int oy = 0; oy < oh; ++oy) {
      const T* r0 = x + pl * s.h * w + int64_t(2 * oy) * w;
      const T* r1 = r0 + w;
      T* yr = y + (pl * oh + oy) * ow;
      int32_t* ar = argmax + (pl * oh + oy) * ow;
      const int32_t base = 2 * oy * w;
#pragma omp simd
      for (int ox = 0; ox < ow; ++ox) {
        T best = r0[2 * ox];
        int32_t arg = base + 2 * ox;
        take_max(r0[2 * ox + 1], base + 2 * ox + 1, best, arg);
        take_max(r1[2 * ox], base + w + 2 * ox, best, arg);
        take_max(r1[2 * ox + 1], base + w + 2 * ox + 1, best, arg);
        yr[ox] = best;
        ar[ox] = arg;
      }
    }
}

#if defined(__AVX512F__)
// The same pool on float planes at most 32 wide whose output rows are a power of two ≤ 16 long (VGG's
// 16×16, 8×8 and 4×4 maps, where the loop above has fewer than 16 outputs a row and runs scalar): 16
// outputs come from 64 consecutive inputs (16 / ow output rows), so each of a window's four candidates is
// one gather from four vectors by a fixed index (two permutes and a blend), and take_max's rule runs on
// masks. Needs h·w even both ways and a whole number of 16-output groups per plane.
bool max_pool2x2_avx512_eligible(const Pool2dShape& s) {
  const int ow = s.ow();
  return s.k == 2 && s.stride == 2 && s.pad == 0 && s.h % 2 == 0 && s.w % 2 == 0 && s.w <= 32 &&
         16 % ow == 0 && (int64_t(s.oh()) * ow) % 16 == 0;
}

inline __m512 gather64(__m512 v0, __m512 v1, __m512 v2, __m512 v3, __m512i idx) {
  const __m512 lo = _mm512_permutex2var_ps(v0, idx, v1), hi = _mm512_permutex2var_ps(v2, idx, v3);
  return _mm512_mask_blend_ps(_mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi);
}

void max_pool2x2_forward_avx512(const Pool2dShape& s, const float* x, float* y, int32_t* argmax) {
  const int ow = s.ow(), w = s.w;
  const int64_t planes = int64_t(s.n) * s.c, in_plane = int64_t(s.h) * w, groups = int64_t(s.oh()) * ow / 16;
  alignas(64) int32_t tl[16];
  for (int i = 0; i < 16; ++i) tl[i] = (i / ow) * 2 * w + (i % ow) * 2;
  const __m512i c0 = _mm512_load_si512(tl), c1 = _mm512_add_epi32(c0, _mm512_set1_epi32(1)),
                c2 = _mm512_add_epi32(c0, _mm512_set1_epi32(w)), c3 = _mm512_add_epi32(c2, _mm512_set1_epi32(1));
#pragma omp parallel for schedule(static) if (planes * in_plane > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl)
    for (int64_t g = 0; g < groups; ++g) {
      const float* xs = x + pl * in_plane + g * 64;
      const __m512 v0 = _mm512_loadu_ps(xs), v1 = _mm512_loadu_ps(xs + 16), v2 = _mm512_loadu_ps(xs + 32),
                   v3 = _mm512_loadu_ps(xs + 48);
      const __m512i base = _mm512_set1_epi32(int32_t(g * 64));
      __m512 best = gather64(v0, v1, v2, v3, c0);
      __m512i arg = _mm512_add_epi32(base, c0);
      for (const __m512i c : {c1, c2, c3}) {  // take_max's order: r0[2ox + 1], r1[2ox], r1[2ox + 1]
        const __m512 v = gather64(v0, v1, v2, v3, c);
        const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) |
                               (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q));
        best = _mm512_mask_mov_ps(best, take, v);
        arg = _mm512_mask_mov_epi32(arg, take, _mm512_add_epi32(base, c));
      }
      const int64_t o = (pl * groups + g) * 16;
      _mm512_storeu_ps(y + o, best);
      _mm512_storeu_si512(argmax + o, arg);
    }
}
#endif

}  // namespace

template <typename T>
void max_pool2d_forward_cpu(const Pool2dShape& s, const T* x, T* y, int32_t* argmax) {
  check_shape(s, "max_pool2d_forward_cpu");
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    if (max_pool2x2_avx512_eligible(s)) return max_pool2x2_forward_avx512(s, x, y, argmax);
#endif
  if (s.k == 2 && s.stride == 2 && s.pad == 0) return max_pool2x2_forward(s, x, y, argmax);
  max_pool2d_forward_ref_cpu(s, x, y, argmax);
}

template <typename T>
void max_pool2d_forward_ref_cpu(const Pool2dShape& s, const T* x, T* y, int32_t* argmax) {
  check_shape(s, "max_pool2d_forward_ref_cpu");
  const int oh = s.oh(), ow = s.ow();
  const int64_t planes = int64_t(s.n) * s.c;
#pragma omp parallel for schedule(static) if (planes * s.h * s.w > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * s.h * s.w;
    T* yp = y + pl * oh * ow;
    int32_t* ap = argmax + pl * oh * ow;
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        T best = -std::numeric_limits<T>::infinity();
        int32_t arg = -1;
        for (int ky = 0; ky < s.k; ++ky) {
          const int iy = oy * s.stride - s.pad + ky;
          if (iy < 0 || iy >= s.h) continue;
          for (int kx = 0; kx < s.k; ++kx) {
            const int ix = ox * s.stride - s.pad + kx;
            if (ix < 0 || ix >= s.w) continue;
            const T v = xp[iy * s.w + ix];
            // Written out here, not through take_max: the oracle shares no code with the fast path.
            if (arg < 0 || v > best || (v != v && best == best)) {
              best = v;
              arg = iy * s.w + ix;
            }
          }
        }
        yp[oy * ow + ox] = arg < 0 ? T(0) : best;
        ap[oy * ow + ox] = arg;
      }
  }
}

template <typename T>
void max_pool2d_backward_cpu(const Pool2dShape& s, const T* dy, const int32_t* argmax, T* dx) {
  check_shape(s, "max_pool2d_backward_cpu");
  const int64_t out_plane = int64_t(s.oh()) * s.ow(), in_plane = int64_t(s.h) * s.w;
  const int64_t planes = int64_t(s.n) * s.c;
#pragma omp parallel for schedule(static) if (planes * in_plane > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* dxp = dx + pl * in_plane;
    for (int64_t i = 0; i < in_plane; ++i) dxp[i] = T(0);
    const T* dyp = dy + pl * out_plane;
    const int32_t* ap = argmax + pl * out_plane;
    for (int64_t o = 0; o < out_plane; ++o)
      if (ap[o] >= 0) dxp[ap[o]] += dyp[o];
  }
}

template <typename T>
void avg_pool2d_forward_cpu(const Pool2dShape& s, const T* x, T* y) {
  check_shape(s, "avg_pool2d_forward_cpu");
  const int oh = s.oh(), ow = s.ow();
  const int64_t planes = int64_t(s.n) * s.c;
  const T inv = T(1) / T(s.k * s.k);
#pragma omp parallel for schedule(static) if (planes * s.h * s.w > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * s.h * s.w;
    T* yp = y + pl * oh * ow;
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        T sum = T(0);
        for (int ky = 0; ky < s.k; ++ky) {
          const int iy = oy * s.stride - s.pad + ky;
          if (iy < 0 || iy >= s.h) continue;
          for (int kx = 0; kx < s.k; ++kx) {
            const int ix = ox * s.stride - s.pad + kx;
            if (ix >= 0 && ix < s.w) sum += xp[iy * s.w + ix];
          }
        }
        yp[oy * ow + ox] = sum * inv;
      }
  }
}

template <typename T>
void avg_pool2d_backward_cpu(const Pool2dShape& s, const T* dy, T* dx) {
  check_shape(s, "avg_pool2d_backward_cpu");
  const int oh = s.oh(), ow = s.ow();
  const int64_t planes = int64_t(s.n) * s.c;
  const T inv = T(1) / T(s.k * s.k);
#pragma omp parallel for schedule(static) if (planes * s.h * s.w > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* dxp = dx + pl * s.h * s.w;
    for (int64_t i = 0; i < int64_t(s.h) * s.w; ++i) dxp[i] = T(0);
    const T* dyp = dy + pl * oh * ow;
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        const T g = dyp[oy * ow + ox] * inv;
        for (int ky = 0; ky < s.k; ++ky) {
          const int iy = oy * s.stride - s.pad + ky;
          if (iy < 0 || iy >= s.h) continue;
          for (int kx = 0; kx < s.k; ++kx) {
            const int ix = ox * s.stride - s.pad + kx;
            if (ix >= 0 && ix < s.w) dxp[iy * s.w + ix] += g;
          }
        }
      }
  }
}

template <typename T>
void global_avg_pool_forward_cpu(int n, int c, int hw, const T* x, T* y) {
  SPARROW_CHECK(n > 0 && c > 0 && hw > 0, "global_avg_pool_forward_cpu: invalid shape n=", n, " c=", c,
                " hw=", hw);
  const int64_t planes = int64_t(n) * c;
#pragma omp parallel for schedule(static) if (planes * hw > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * hw;
    double sum = 0.0;
    for (int i = 0; i < hw; ++i) sum += double(xp[i]);
    y[pl] = T(sum / double(hw));
  }
}

template <typename T>
void global_avg_pool_backward_cpu(int n, int c, int hw, const T* dy, T* dx) {
  SPARROW_CHECK(n > 0 && c > 0 && hw > 0, "global_avg_pool_backward_cpu: invalid shape n=", n, " c=", c,
                " hw=", hw);
  const int64_t planes = int64_t(n) * c;
  const T inv = T(1) / T(hw);
#pragma omp parallel for schedule(static) if (planes * hw > kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T g = dy[pl] * inv;
    T* dxp = dx + pl * hw;
    for (int i = 0; i < hw; ++i) dxp[i] = g;
  }
}

#define SPARROW_POOL_INSTANTIATE(T)                                                           \
  template void max_pool2d_forward_cpu<T>(const Pool2dShape&, const T*, T*, int32_t*);        \
  template void max_pool2d_forward_ref_cpu<T>(const Pool2dShape&, const T*, T*, int32_t*);    \
  template void max_pool2d_backward_cpu<T>(const Pool2dShape&, const T*, const int32_t*, T*); \
  template void avg_pool2d_forward_cpu<T>(const Pool2dShape&, const T*, T*);                  \
  template void avg_pool2d_backward_cpu<T>(const Pool2dShape&, const T*, T*);                 \
  template void global_avg_pool_forward_cpu<T>(int, int, int, const T*, T*);                  \
  template void global_avg_pool_backward_cpu<T>(int, int, int, const T*, T*);

SPARROW_POOL_INSTANTIATE(float)
SPARROW_POOL_INSTANTIATE(double)

}  // namespace sparrow
