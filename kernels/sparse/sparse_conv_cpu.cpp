// CPU masked convolution over NCHW activations and a fixed-pattern Cout×Cin×Kh×Kw weight (value vector in
// ascending flat-index order): pattern construction, the plain-loop references and the direct sparse path.
// The direct path never forms im2col; every pass costs O(nnz · pixels) plus one copy of its source per
// image: padded and phase-split in general, row-padded on same-size stride-1 maps 8–32 wide, batch-minor
// (16 images per vector) on 3×3 maps of at most 4×4, none on the masked variant (activations read in place).
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/base/error.h"
#include "kernels/common/inline.h"
#include "kernels/common/transpose.h"
#include "kernels/sparse/sparse_conv.h"

namespace sparrow {

namespace {

// ---------------------------------------------------------------------------------------------------
// Shapes and the pattern.

void check_filter(const Conv2dShape& s, const char* op) {
  SPARROW_CHECK(s.cin > 0 && s.cout > 0 && s.kh > 0 && s.kw > 0 && s.stride > 0 && s.pad >= 0, op,
                ": invalid filter cin=", s.cin, " cout=", s.cout, " k=", s.kh, "x", s.kw, " stride=", s.stride,
                " pad=", s.pad);
  SPARROW_CHECK(int64_t(s.cout) * s.cin * s.kh * s.kw < INT32_MAX, op, ": weight ", s.cout, "x", s.cin, "x",
                s.kh, "x", s.kw, " has 2^31 or more elements (int32 tap offsets)");
}

int pmod(int a, int m) { return ((a % m) + m) % m; }
int floordiv(int a, int m) { return (a - pmod(a, m)) / m; }

SparseConvPattern build_pattern(const Conv2dShape& s, const std::vector<int64_t>& idx) {
  SparseConvPattern p;
  p.cout = s.cout;
  p.cin = s.cin;
  p.kh = s.kh;
  p.kw = s.kw;
  p.stride = s.stride;
  p.pad = s.pad;
  p.nnz = int64_t(idx.size());
  p.index = idx;
  const int64_t khw = int64_t(s.kh) * s.kw, k_row = s.cin * khw;
  p.row_ptr.assign(size_t(s.cout) + 1, 0);
  p.tap_ci.resize(idx.size());
  p.tap_ky.resize(idx.size());
  p.tap_kx.resize(idx.size());
  const int ss = s.stride * s.stride;
  p.col_ptr.assign(size_t(s.cin) * ss + 1, 0);
  std::vector<int64_t> bucket(idx.size());
  for (size_t k = 0; k < idx.size(); ++k) {
    const int64_t f = idx[k];
    const int co = int(f / k_row);
    const int64_t r = f - co * k_row;
    const int ci = int(r / khw), ky = int((r % khw) / s.kw), kx = int(r % s.kw);
    p.tap_ci[k] = ci;
    p.tap_ky[k] = ky;
    p.tap_kx[k] = kx;
    ++p.row_ptr[size_t(co) + 1];
    const int ph = pmod(ky - s.pad, s.stride) * s.stride + pmod(kx - s.pad, s.stride);
    bucket[k] = int64_t(ci) * ss + ph;
    ++p.col_ptr[size_t(bucket[k]) + 1];
  }
  for (int co = 0; co < s.cout; ++co) p.row_ptr[size_t(co) + 1] += p.row_ptr[size_t(co)];
  for (size_t b = 1; b < p.col_ptr.size(); ++b) p.col_ptr[b] += p.col_ptr[b - 1];
  // Counting sort by (ci, phase); CSR order is (co, ci, ky, kx) so each bucket ends up (co, ky, kx).
  p.col_entry.resize(idx.size());
  std::vector<int64_t> next(p.col_ptr.begin(), p.col_ptr.end() - 1);
  for (size_t k = 0; k < idx.size(); ++k) p.col_entry[size_t(next[size_t(bucket[k])]++)] = int32_t(k);
  return p;
}

// ---------------------------------------------------------------------------------------------------
// Vector primitives. GCC/Clang vector extensions: 64-byte vectors (one AVX-512 register, two AVX2 ones),
// unaligned loads through memcpy (compiled to vmovups / folded into the FMA's memory operand).

template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int kLanes = int(64 / sizeof(T));

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void vstore(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}
// Σ of the lanes, as a tree of half-width adds (a lane-by-lane sum is a chain of kLanes dependent scalar
// adds, which cost as much as a 32-vector dot product in the weight gradient).
template <typename T>
inline T hsum(const Vec<T>& v) {
  typedef T Half __attribute__((vector_size(32)));
  typedef T Quarter __attribute__((vector_size(16)));
  Half lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  const Half h = lo + hi;
  Quarter qlo, qhi;
  std::memcpy(&qlo, &h, sizeof(qlo));
  std::memcpy(&qhi, reinterpret_cast<const char*>(&h) + sizeof(qlo), sizeof(qhi));
  const Quarter q = qlo + qhi;
  T s = q[0];
  for (int i = 1; i < int(16 / sizeof(T)); ++i) s += q[i];
  return s;
}

#if defined(__AVX512F__)
// The four horizontal sums of v0..v3 at once, lane t of the result = Σ of v_t's 16 lanes: 128-bit quarters
// folded pairwise across the four registers (shuffle_f32x4), then within each quarter: 15 shuffles and adds
// for all four sums.
// The zero-masked intrinsics with a full mask throughout: the plain ones pass _mm512_undefined_ps(), which
// GCC 12 reports as maybe-uninitialized.
constexpr __mmask16 kAllLanes = 0xFFFF;

// The sum of the 128-bit quarters of x and y picked by the shuffle_f32x4 selectors A and B.
template <int A, int B>
inline __m512 add_quarters(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAllLanes, x, y, A),
                       _mm512_maskz_shuffle_f32x4(kAllLanes, x, y, B));
}

inline __m128 hsum4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  constexpr __mmask16 all = kAllLanes;
  // a = [v0 q0+q2, v0 q1+q3, v1 q0+q2, v1 q1+q3], b likewise for v2, v3.
  const __m512 a = add_quarters<_MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2)>(v0, v1);
  const __m512 b = add_quarters<_MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2)>(v2, v3);
  // Quarter t of c holds four partial sums of v_t.
  const __m512 c = add_quarters<_MM_SHUFFLE(2, 0, 2, 0), _MM_SHUFFLE(3, 1, 3, 1)>(a, b);
  const __m512 d = _mm512_add_ps(c, _mm512_maskz_permute_ps(all, c, _MM_SHUFFLE(2, 3, 0, 1)));
  const __m512 e = _mm512_add_ps(d, _mm512_maskz_permute_ps(all, d, _MM_SHUFFLE(1, 0, 3, 2)));
  // Lanes 0, 4, 8, 12 to the bottom quarter.
  const __m512i lanes = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512 f = _mm512_maskz_permutexvar_ps(all, lanes, e);
  return _mm512_maskz_extractf32x4_ps(0xF, f, 0);
}

// res[t] += the lanes of acc0[t] + acc1[t], for the NT taps of a dot-product kernel (four at once by hsum4).
template <int NT>
inline void add_dot_sums(const __m512* acc0, const __m512* acc1, float* res) {
  if constexpr (NT == 4) {
    const __m128 sum = hsum4(_mm512_add_ps(acc0[0], acc1[0]), _mm512_add_ps(acc0[1], acc1[1]),
                             _mm512_add_ps(acc0[2], acc1[2]), _mm512_add_ps(acc0[3], acc1[3]));
    _mm_storeu_ps(res, _mm_add_ps(_mm_loadu_ps(res), sum));
  } else {
    for (int t = 0; t < NT; ++t) res[t] += hsum<float>(_mm512_add_ps(acc0[t], acc1[t]));
  }
}
#endif

// Row-sized copies and fills (a few to a few dozen elements), inline: a libc call per image row cost as
// much as the sparse arithmetic on small maps at low density.
template <typename T>
inline void copy_row(T* __restrict dst, const T* __restrict src, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes<T> <= n; i += kLanes<T>) vstore(dst + i, vload(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}
template <typename T>
inline void zero_row(T* dst, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes<T> <= n; i += kLanes<T>) vstore(dst + i, Vec<T>{});
  for (; i < n; ++i) dst[i] = T(0);
}

// dst[i] = src[i·st] for i in [0, n). Stride 2 on AVX-512 (float) takes the even lanes of two masked
// vector loads (reading nothing past src[(n − 1)·2]); the scalar loop cost as much as a 98%-sparse
// stride-2 convolution's arithmetic.
template <typename T>
inline void copy_strided(T* __restrict dst, const T* __restrict src, int64_t n, int st) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    if (st == 2) {
      const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      for (int64_t i = 0; i < n; i += 16) {
        const int64_t m = std::min<int64_t>(16, n - i), len = 2 * m - 1;  // source elements needed
        const __mmask16 lo = __mmask16((1u << std::min<int64_t>(16, len)) - 1);
        const __mmask16 hi = len > 16 ? __mmask16((1u << (len - 16)) - 1) : __mmask16(0);
        const __m512 a = _mm512_maskz_loadu_ps(lo, src + 2 * i), b = _mm512_maskz_loadu_ps(hi, src + 2 * i + 16);
        _mm512_mask_storeu_ps(dst + i, __mmask16((1u << m) - 1), _mm512_permutex2var_ps(a, even, b));
      }
      return;
    }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i * st];
}

// Σ d[0, n) for the bias gradient, in vector lanes (a scalar FP sum is one dependent add per element,
// which cost more than the sparse arithmetic itself at low density), returned in double.
template <typename T>
double plane_sum(const T* d, int64_t n) {
  Vec<T> a0{}, a1{};
  int64_t i = 0;
  for (; i + 2 * kLanes<T> <= n; i += 2 * kLanes<T>) {
    a0 += vload(d + i);
    a1 += vload(d + i + kLanes<T>);
  }
  double sum = 0.0;
  for (int l = 0; l < kLanes<T>; ++l) sum += double(a0[l]) + double(a1[l]);
  for (; i < n; ++i) sum += double(d[i]);
  return sum;
}

// out[j] = (first ? init : out[j]) + Σ_t val[t]·src[off[t] + j] for NV vectors starting at out. The NV
// accumulators stay in registers across all taps: one broadcast and NV load-FMAs per tap.
template <typename T, int NV>
inline void taps_block(const T* src, const int32_t* off, const T* val, int64_t ntaps, bool first, T init,
                       T* out) {
  Vec<T> acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = first ? Vec<T>{} + init : vload(out + i * kLanes<T>);
  for (int64_t t = 0; t < ntaps; ++t) {
    const T v = val[t];
    const T* p = src + off[t];
    for (int i = 0; i < NV; ++i) acc[i] += v * vload(p + i * kLanes<T>);
  }
  for (int i = 0; i < NV; ++i) vstore(out + i * kLanes<T>, acc[i]);
}

// Up to 8 vectors (128 floats) of output per pass over the taps.
constexpr int kBlockVecs = 8;
// Weight-gradient spans are longer than the forward's: each (tap, span) pays one horizontal sum.
constexpr int kWgradSpanVecs = 32;

// Calls f(std::integral_constant<int, nv>{}) for nv in 1..kBlockVecs, so that the span kernels keep their nv
// accumulators in registers (nv a compile-time constant).
template <typename F>
SPARROW_ALWAYS_INLINE void with_span_vecs(int nv, F&& f) {
  switch (nv) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 1: f(std::integral_constant<int, 1>{}); break;
    default: break;
  }
}

template <typename T>
void taps_span(const T* src, const int32_t* off, const T* val, int64_t ntaps, int nv, bool first, T init,
               T* out) {
  with_span_vecs(nv, [&](auto n) { taps_block<T, decltype(n)::value>(src, off, val, ntaps, first, init, out); });
}

// res[t] += Σ_j a[j]·src[off[t] + j] over j in [0, len), len a multiple of the vector width; NT taps at
// once so each load of `a` is shared.
template <typename T, int NT>
inline void dots(const T* a, const T* src, const int32_t* off, int64_t len, T* res) {
  constexpr int W = kLanes<T>;
  Vec<T> acc0[NT], acc1[NT];
  const T* p[NT];
  for (int t = 0; t < NT; ++t) {
    acc0[t] = Vec<T>{};
    acc1[t] = Vec<T>{};
    p[t] = src + off[t];
  }
  int64_t j = 0;
  for (; j + 2 * W <= len; j += 2 * W) {
    const Vec<T> a0 = vload(a + j), a1 = vload(a + j + W);
    for (int t = 0; t < NT; ++t) {
      acc0[t] += a0 * vload(p[t] + j);
      acc1[t] += a1 * vload(p[t] + j + W);
    }
  }
  if (j < len) {
    const Vec<T> a0 = vload(a + j);
    for (int t = 0; t < NT; ++t) acc0[t] += a0 * vload(p[t] + j);
  }
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {  // Vec<float> and __m512 are the same 64-byte vector
    add_dot_sums<NT>(reinterpret_cast<const __m512*>(acc0), reinterpret_cast<const __m512*>(acc1), res);
    return;
  }
#endif
  for (int t = 0; t < NT; ++t) res[t] += hsum<T>(acc0[t] + acc1[t]);
}

template <typename T>
void dots_all(const T* a, const T* src, const int32_t* off, int64_t ntaps, int64_t len, T* res) {
  constexpr int kTaps = 4;
  int64_t t = 0;
  for (; t + kTaps <= ntaps; t += kTaps) dots<T, kTaps>(a, src, off + t, len, res + t);
  for (; t < ntaps; ++t) dots<T, 1>(a, src, off + t, len, res + t);
}

// ---------------------------------------------------------------------------------------------------
// Masked direct path (AVX-512, float). A stride-1 convolution whose output rows are as wide as its input
// rows (2·pad = kw − 1) maps output j = oy·W + ox of a plane to input j + (ky − pad)·W + (kx − pad) of each
// source plane: one constant offset per kept weight, with no padded copy, provided the lanes that would
// read across a row end, or above the first / below the last row, are masked off. Those lanes depend only
// on the position in the plane and on (ky, kx), so a table of one 16-bit mask per (filter position, output
// vector) is built once per call, and the tap loop uses masked loads (masked-off lanes read nothing and
// cannot fault). x is read and y written in place: at low density the copies in and out cost more than
// the arithmetic (the padded copy alone was 46% of a 98%-sparse ResNet-20 stage-1 forward).
#if defined(__AVX512F__)
constexpr bool kHaveMaskedPath = true;

struct MaskTable {
  int64_t nvec = 0;              // 16-float vectors per output plane
  std::vector<__mmask16> mask;   // (ky·kw + kx)·nvec + v
};

// Masks for planes of out_rows × w read from planes of in_rows × w at offset sign·((ky − pad)·w + kx − pad):
// the forward (sign +1, out_rows = OH, in_rows = H) and the input gradient (sign −1, out_rows = H,
// in_rows = OH). Requires (out_rows·w) % 16 == 0.
MaskTable mask_table(int out_rows, int in_rows, int w, int kh, int kw, int pad, int sign) {
  MaskTable t;
  const int64_t plane = int64_t(out_rows) * w;
  t.nvec = plane / 16;
  t.mask.assign(size_t(kh) * kw * t.nvec, 0);
  for (int ky = 0; ky < kh; ++ky)
    for (int kx = 0; kx < kw; ++kx)
      for (int64_t j = 0; j < plane; ++j) {
        const int iy = int(j / w) + sign * (ky - pad), ix = int(j % w) + sign * (kx - pad);
        if (iy >= 0 && iy < in_rows && ix >= 0 && ix < w)
          t.mask[size_t((ky * kw + kx) * t.nvec + j / 16)] |= __mmask16(1u << (j % 16));
      }
  return t;
}

// out[16i..] = (first ? init : out) + Σ_t val[t]·src[off[t] + 16i + l], lane l loaded only where
// mask[cls[t]·mstride + i] has bit l (mask already offset to the span's first vector).
template <int NV>
inline void masked_taps_block(const float* src, const int32_t* off, const uint8_t* cls, const float* val,
                              int64_t ntaps, const __mmask16* mask, int64_t mstride, bool first, float init,
                              float* out) {
  __m512 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = first ? _mm512_set1_ps(init) : _mm512_loadu_ps(out + 16 * i);
  for (int64_t t = 0; t < ntaps; ++t) {
    const __m512 v = _mm512_set1_ps(val[t]);
    const float* p = src + off[t];
    const __mmask16* m = mask + int64_t(cls[t]) * mstride;
    for (int i = 0; i < NV; ++i) acc[i] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m[i], p + 16 * i), acc[i]);
  }
  for (int i = 0; i < NV; ++i) _mm512_storeu_ps(out + 16 * i, acc[i]);
}

inline void masked_taps_span(const float* src, const int32_t* off, const uint8_t* cls, const float* val,
                             int64_t ntaps, int nv, const __mmask16* mask, int64_t mstride, bool first,
                             float init, float* out) {
  with_span_vecs(nv, [&](auto n) {
    masked_taps_block<decltype(n)::value>(src, off, cls, val, ntaps, mask, mstride, first, init, out);
  });
}

// res[t] += Σ_j a[j]·src[off[t] + j] over j in [0, 16·nv), lane l of vector i read only where
// mask[cls[t]·mstride + i] has bit l; NT taps at once so each load of `a` is shared.
template <int NT>
inline void masked_dots(const float* a, const float* src, const int32_t* off, const uint8_t* cls, int64_t nv,
                        const __mmask16* mask, int64_t mstride, float* res) {
  __m512 acc0[NT], acc1[NT];
  const float* p[NT];
  const __mmask16* m[NT];
  for (int t = 0; t < NT; ++t) {
    acc0[t] = _mm512_setzero_ps();
    acc1[t] = _mm512_setzero_ps();
    p[t] = src + off[t];
    m[t] = mask + int64_t(cls[t]) * mstride;
  }
  int64_t i = 0;
  for (; i + 2 <= nv; i += 2) {
    const __m512 a0 = _mm512_loadu_ps(a + 16 * i), a1 = _mm512_loadu_ps(a + 16 * i + 16);
    for (int t = 0; t < NT; ++t) {
      acc0[t] = _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(m[t][i], p[t] + 16 * i), acc0[t]);
      acc1[t] = _mm512_fmadd_ps(a1, _mm512_maskz_loadu_ps(m[t][i + 1], p[t] + 16 * i + 16), acc1[t]);
    }
  }
  if (i < nv) {
    const __m512 a0 = _mm512_loadu_ps(a + 16 * i);
    for (int t = 0; t < NT; ++t)
      acc0[t] = _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(m[t][i], p[t] + 16 * i), acc0[t]);
  }
  add_dot_sums<NT>(acc0, acc1, res);
}

inline void masked_dots_all(const float* a, const float* src, const int32_t* off, const uint8_t* cls,
                            int64_t ntaps, int64_t nv, const __mmask16* mask, int64_t mstride, float* res) {
  constexpr int kTaps = 4;
  int64_t t = 0;
  for (; t + kTaps <= ntaps; t += kTaps) masked_dots<kTaps>(a, src, off + t, cls + t, nv, mask, mstride, res + t);
  for (; t < ntaps; ++t) masked_dots<1>(a, src, off + t, cls + t, nv, mask, mstride, res + t);
}
#else
constexpr bool kHaveMaskedPath = false;
#endif

// Whether the masked direct path applies: float on AVX-512, stride 1, output rows as wide as the input's,
// whole vectors per input and output plane, images within int32 offsets, and not the pointwise case
// (which reads x directly already).
template <typename T>
bool masked_eligible(const Conv2dShape& s) {
  if constexpr (!kHaveMaskedPath || !std::is_same_v<T, float>) {
    (void)s;
    return false;
  } else {
    const bool pointwise = s.kh == 1 && s.kw == 1 && s.pad == 0;
    return !pointwise && s.stride == 1 && s.ow() == s.w && (int64_t(s.oh()) * s.w) % 16 == 0 &&
           (int64_t(s.h) * s.w) % 16 == 0 && s.kh * s.kw <= 256 &&
           int64_t(s.cin) * s.h * s.w < INT32_MAX && int64_t(s.cout) * s.oh() * s.w < INT32_MAX;
  }
}

// Whether the masked path is the faster one. Per kept weight its masked loads cost more than the row-padded
// path's plain ones (the mask of every vector is loaded from the table), but it saves the copy in, which is
// worth some number of kept weights per source channel (nnz / Cin for the passes that read x, nnz / Cout
// for the input gradient, which reads dy). Crossovers measured with sparrow-bench-sparse-conv --clock cpu
// on the ResNet-20 layers (2 threads, batch 128, binaries interleaved, 3 rounds), in kept weights per source
// channel:
// - forward and input gradient, against the row-padded path: 32-wide maps up to about 6 (0.6–0.9× at 3,
//   even at 7, 1.4–2.1× slower at 14), 16-wide up to about 8 (even at 6, 1.4–2× slower at 14), 8-wide up
//   to about 30 (even at 29, 1.1–1.3× slower at 58);
// - the weight gradient, measured against the padded path before the row-padded one existed (which now
//   matches it at 3–7 kept weights on 16- and 32-wide maps): 32-wide up to about 10 (0.3–0.7× at 3 and 6,
//   1.1–2× at 14), 16-wide up to about 20 (0.4–0.6× at 6, no gain at 29); 8-wide maps pay a horizontal sum
//   per kept weight and 4-vector plane (the padded path puts several images side by side) and gained
//   nothing at 12, so only below 8;
// - 4×4 maps (one vector per plane) lost even at 2% density (they have the tiny-map path now).
enum class MaskedPass { Forward, InputGrad, WeightGrad };

double masked_max_taps_per_channel(const Conv2dShape& s, MaskedPass pass) {
  const bool wgrad = pass == MaskedPass::WeightGrad;
  if (s.w >= 32) return wgrad ? 10.0 : 6.0;
  if (s.w >= 16) return wgrad ? 20.0 : 8.0;
  if (s.w >= 8) return wgrad ? 8.0 : 30.0;
  return 0.0;
}

template <typename T>
bool use_masked(const Conv2dShape& s, const SparseConvPattern& p, MaskedPass pass) {
  const int source_channels = pass == MaskedPass::InputGrad ? s.cout : s.cin;
  return masked_eligible<T>(s) && double(p.nnz) <= masked_max_taps_per_channel(s, pass) * source_channels;
}

// ---------------------------------------------------------------------------------------------------
// Scratch and work splitting.

// Per-thread growable scratch (OpenMP keeps its workers alive, so steady-state calls do not allocate).
// New elements are zero, and only finite copies of the inputs are ever written, so reads that land in
// discarded columns never meet NaN.
// 64-byte aligned, so that offsets that are multiples of the vector width give aligned loads.
template <typename T>
T* thread_scratch(size_t n, int slot) {
  static thread_local std::vector<T> bufs[4];
  std::vector<T>& b = bufs[slot];
  const size_t pad = 64 / sizeof(T);
  if (b.size() < n + pad) b.resize(n + pad);
  T* p = b.data();
  while (reinterpret_cast<uintptr_t>(p) % 64 != 0) ++p;
  return p;
}

// Items (n, c), n < N, c < C, flattened as n·C + c, cost weight[c]. Returns the first item of part
// `part` of `parts` contiguous ranges of near-equal cost (prefix: C + 1 running sums of weight, all > 0).
int64_t split_point(const std::vector<double>& prefix, int n_images, int part, int parts) {
  const int c_count = int(prefix.size()) - 1;
  if (part >= parts) return int64_t(n_images) * c_count;
  const double per_image = prefix.back();
  const double target = per_image * n_images * double(part) / double(parts);
  const int n = std::min(n_images - 1, int(target / per_image));
  const double rem = target - per_image * n;
  int c = int(std::upper_bound(prefix.begin(), prefix.end(), rem) - prefix.begin()) - 1;
  c = std::max(0, std::min(c, c_count - 1));
  return int64_t(n) * c_count + c;
}

std::vector<double> cost_prefix(int count, const std::vector<int64_t>& ptr, int group) {
  // Cost of one item: its kept taps plus one pass over the plane (store / copy-out), in plane passes.
  std::vector<double> prefix(size_t(count) + 1, 0.0);
  for (int c = 0; c < count; ++c)
    prefix[size_t(c) + 1] = prefix[size_t(c)] + 1.0 + double(ptr[size_t(c + 1) * group] - ptr[size_t(c) * group]);
  return prefix;
}

// Runs body(tid, first, last) on every OpenMP thread with its contiguous range of the N·C items.
template <typename Body>
void parallel_ranges(int n_images, const std::vector<double>& prefix, Body body) {
  const int64_t items = int64_t(n_images) * (int64_t(prefix.size()) - 1);
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), items)));
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), parts = omp_get_num_threads();
    body(tid, parts, split_point(prefix, n_images, tid, parts), split_point(prefix, n_images, tid + 1, parts));
  }
}

// ---------------------------------------------------------------------------------------------------
// L1 tiling. Every kept weight costs one load of a shifted source row per output vector, and the loop is
// bound by those loads (an isolated loop ran 2.15 vector FMAs per ns from a 16 KB region, 1.5 from 256 KB,
// on the Zen 4 development machine). So the output is computed in spans of up to kBlockVecs vectors and
// the source channels in blocks small enough that a span's rows of one block stay in L1 while every output
// channel of the range runs its taps from that block; partial sums go through the output buffer between
// blocks. In place this gained about 10% on the VGG layers at 10% density (the rest of the gap to the
// isolated loop is per-call overhead: ~25 taps per call). Blocks are widened when they would hold so few
// kept weights that the extra pass over the output would dominate.
constexpr int64_t kL1TileBytes = 24 << 10;
constexpr double kMinTileTaps = 12.0;

struct Tiling {
  int64_t span = 0;  // output elements per span (a multiple of the vector width)
  int block = 1;     // source channels per block
  int nblk = 1;
};

// extra: source elements a channel's span reaches beyond the span itself (the filter's row reach);
// phases: source planes per channel; taps_per_channel: expected kept weights per (output, source) channel.
template <typename T>
Tiling make_tiling(int64_t span, int64_t extra, int phases, int channels, double taps_per_channel,
                   int64_t budget = kL1TileBytes) {
  Tiling t;
  t.span = span;
  const int64_t per_channel = int64_t(sizeof(T)) * std::max(1, phases) * (span + extra);
  int64_t b = std::max<int64_t>(1, budget / per_channel);
  if (taps_per_channel > 0.0) b = std::max<int64_t>(b, int64_t(std::ceil(kMinTileTaps / taps_per_channel)));
  t.block = int(std::min<int64_t>(b, channels));
  t.nblk = (channels + t.block - 1) / t.block;
  return t;
}

// ptr[r·(nblk+1) + b] = first entry of row r (entries [row_begin(r), row_end(r)), sorted by key) whose key
// is ≥ b·block; ptr[r·(nblk+1) + nblk] = row_end(r).
template <typename RowBegin, typename Key>
std::vector<int64_t> block_pointers(int rows, const Tiling& t, RowBegin row_begin, Key key) {
  std::vector<int64_t> ptr(size_t(rows) * (t.nblk + 1));
  for (int r = 0; r < rows; ++r) {
    int64_t k = row_begin(r);
    const int64_t end = row_begin(r + 1);
    for (int b = 0; b < t.nblk; ++b) {
      while (k < end && key(k) < int64_t(b) * t.block) ++k;
      ptr[size_t(r) * (t.nblk + 1) + b] = k;
    }
    ptr[size_t(r) * (t.nblk + 1) + t.nblk] = end;
  }
  return ptr;
}

// Calls f(group, c_begin, c_end) for the (group, channel) items [first, last), one call per group.
template <typename F>
void for_each_group(int64_t first, int64_t last, int channels, F f) {
  for (int64_t item = first; item < last;) {
    const int grp = int(item / channels);
    const int64_t end = std::min<int64_t>(last, int64_t(grp + 1) * channels);
    f(grp, int(item - int64_t(grp) * channels), int(end - int64_t(grp) * channels));
    item = end;
  }
}

// ---------------------------------------------------------------------------------------------------
// Image groups. Small maps give short flattened planes (8×8 with pad 1: 80 elements, 4×4: 24), which
// waste vector lanes on the rounding and make every weight-gradient dot product pay a horizontal sum for a
// few FMAs. So `group` images are laid side by side in each row of the copies below and processed as one
// plane; groups are sized to reach kGroupTarget elements while the copy stays within L2.
constexpr int64_t kGroupTarget = 256;
constexpr int64_t kGroupMaxBytes = int64_t(768) << 10;
// Aligned variant (see SrcGeom), forward only: used when nnz ≥ kAlignedMinTapsPerChannel · kw · Cin (the
// kw copies are then a few percent of the work) and the unaligned layout keeps less than
// kAlignedBelowEfficiency of its lanes valid (small maps), unless the aligned rounding is much worse.
// Measured in place it lost to the L1-tiled unaligned loop on 8×8 and 16×16 maps (its blocks must be
// sized for L2) and won 1.2–1.4× on 4×4 maps (batch 32). Its groups are capped in size and bytes.
constexpr double kAlignedMinTapsPerChannel = 8.0;
constexpr double kAlignedBelowEfficiency = 0.8;
constexpr double kAlignedMinRatio = 0.9;
constexpr int kAlignedMaxGroup = 16;
constexpr int64_t kAlignedMaxBytes = int64_t(4) << 20;
constexpr int64_t kL2TileBytes = int64_t(256) << 10;

int choose_group(int n_images, int64_t plane_len, int64_t image_bytes) {
  int64_t g = std::max<int64_t>(1, (kGroupTarget + plane_len - 1) / plane_len);
  g = std::min<int64_t>(g, n_images);
  while (g > 1 && g * image_bytes > kGroupMaxBytes) --g;
  return int(g);
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------------
// Forward / weight-gradient source: a group of images copied zero-padded and split into stride phases,
// xp[ci][py][px][qy][g][qx] = x[n0 + g][ci][qy·s + py − pad][qx·s + px − pad] (0 outside), image g's
// columns starting at g·cs in rows of `pitch`. Output (g, oy, ox) under tap (ci, ky, kx) reads
// xp[ci][ky%s][kx%s][oy + ky/s][g·cs + ox + kx/s], so with the output flattened the same way
// (j = oy·pitch + g·cs + ox; columns ox ≥ OW are computed and discarded) every tap is one constant offset and
// the whole group one contiguous vector loop, whatever the stride and the map size.
// Stride 1 shares the zero columns between neighbours (cs = W + pad: image g's data at g·cs + pad, `pad`
// zeros between images and at both ends), so a 3×3 pad-1 filter discards one column per image, not two.
// Aligned variant (stride 1, forward; see kAlignedMinGain for when): the copy is made kw times, copy kx
// shifted left by kx columns, with the row pitch and plane rounded to the vector width, so tap
// (ci, ky, kx) reads copy kx at ci·plane + ky·pitch: every load is 64-byte aligned. Aligned loads ran
// 1.45× faster than unaligned ones in an isolated loop (3.1 vs 2.15 vector FMAs per ns from L1, 1.8 vs
// 1.35 from 512 KB); the group size is chosen to waste the fewest columns to the rounding, and the source
// channels are blocked for L2 rather than L1 (the kw copies triple the footprint).
struct SrcGeom {
  bool direct = false;      // pointwise stride 1 pad 0 with H·W a multiple of the vector: read x itself
  bool out_direct = false;  // the flattened output is the NCHW plane (write y directly)
  bool shared = false;      // stride-1 layout with shared zero columns
  bool aligned = false;     // kw column-shifted copies, pitch and plane multiples of the vector width
  int copies = 1;
  int64_t csize = 0;        // elements per copy (a multiple of the vector width when aligned)
  int s = 1, hq = 0, wq = 0, cs = 0, group = 1;  // wq: phase columns per image; cs: column stride of images
  int64_t pitch = 0, plane = 0, img = 0;  // row pitch, phase-plane size, copy size (with slack)
  int64_t len = 0;                        // computed length OH·pitch rounded up to the vector width
  std::vector<char> phase_used;           // s² flags: phases some tap reads
};

template <typename T>
SrcGeom src_geom(const Conv2dShape& s, const SparseConvPattern& p, bool allow_aligned) {
  constexpr int W = kLanes<T>;
  SrcGeom g;
  g.s = s.stride;
  g.direct = s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0 && (int64_t(s.h) * s.w) % W == 0;
  g.hq = g.direct ? s.h : s.oh() + (s.kh - 1) / s.stride;
  g.wq = g.direct ? s.w : s.ow() + (s.kw - 1) / s.stride;
  g.shared = !g.direct && s.stride == 1 && s.pad <= s.kw - 1;
  g.cs = g.shared ? s.w + s.pad : g.wq;
  // Unaligned layout: groups sized by choose_group.
  const int64_t phase_bytes = int64_t(sizeof(T)) * s.cin * s.stride * s.stride * g.hq * g.wq;
  g.group = g.direct ? 1 : choose_group(s.n, int64_t(s.oh()) * g.cs, phase_bytes);
  g.pitch = int64_t(g.group) * g.cs + (g.wq - g.cs);
  // Share of the computed output that is valid, over all groups (the last group's empty slots count).
  auto efficiency = [&](int gr, int64_t pitch) {
    const int64_t groups = (s.n + gr - 1) / gr;
    return double(s.n) * s.oh() * s.ow() / double(groups * round_up(int64_t(s.oh()) * pitch, W));
  };
  if (allow_aligned && g.shared && s.kw > 1 && double(p.nnz) >= kAlignedMinTapsPerChannel * s.kw * s.cin) {
    const int64_t image_bytes = int64_t(sizeof(T)) * s.kw * s.cin * g.hq * g.cs;
    double best = 0.0;
    int best_group = 1;
    for (int gr = 1; gr <= std::min(s.n, kAlignedMaxGroup); ++gr) {
      if (gr > 1 && gr * image_bytes > kAlignedMaxBytes) break;
      const double eff = efficiency(gr, round_up(int64_t(gr) * g.cs + (g.wq - g.cs), W));
      if (eff > best + 1e-9) {
        best = eff;
        best_group = gr;
      }
    }
    const double unaligned = efficiency(g.group, g.pitch);
    if (unaligned < kAlignedBelowEfficiency && best >= kAlignedMinRatio * unaligned) {
      g.aligned = true;
      g.copies = s.kw;
      g.group = best_group;
      g.pitch = round_up(int64_t(g.group) * g.cs + (g.wq - g.cs), W);
    }
  }
  g.plane = int64_t(g.hq) * g.pitch;
  g.len = round_up(int64_t(s.oh()) * g.pitch, W);
  g.out_direct = g.group == 1 && g.pitch == s.ow() && g.len == int64_t(s.oh()) * s.ow();
  // A tap's last read is (kw−1)/s plus the rounding past its phase plane (discarded columns); aligned
  // copies are read without the column shift, and copy kx is made from copy 0 read kx elements on.
  g.csize = round_up(int64_t(s.cin) * g.s * g.s * g.plane + (s.kw - 1) / s.stride + W + 1, W);
  g.img = g.copies * g.csize + s.kw;
  SPARROW_CHECK(g.img < INT32_MAX, "sparse_conv2d: padded image group ", g.group, "x", s.cin, "x", s.h, "x", s.w,
                " has 2^31 or more elements (int32 tap offsets)");
  g.phase_used.assign(size_t(g.s) * g.s, g.s == 1 ? 1 : 0);
  if (g.s > 1)
    for (int64_t k = 0; k < p.nnz; ++k)
      g.phase_used[size_t((p.tap_ky[size_t(k)] % g.s) * g.s + p.tap_kx[size_t(k)] % g.s)] = 1;
  return g;
}

std::vector<int32_t> src_offsets(const SrcGeom& g, const SparseConvPattern& p) {
  std::vector<int32_t> off(size_t(p.nnz));
  const int s = g.s;
  for (int64_t k = 0; k < p.nnz; ++k) {
    const int ci = p.tap_ci[size_t(k)], ky = p.tap_ky[size_t(k)], kx = p.tap_kx[size_t(k)];
    off[size_t(k)] = g.aligned ? int32_t(kx * g.csize + ci * g.plane + ky * g.pitch)
                     : s == 1  ? int32_t(ci * g.plane + ky * g.pitch + kx)
                               : int32_t(((int64_t(ci) * s + ky % s) * s + kx % s) * g.plane +
                                         int64_t(ky / s) * g.pitch + kx / s);
  }
  return off;
}

// Columns [lo, hi) of a phase row whose source column q·s + phase − pad lies in [0, w).
void valid_range(int count, int s, int phase, int pad, int w, int& lo, int& hi) {
  const int lo_num = pad - phase;
  lo = lo_num > 0 ? (lo_num + s - 1) / s : 0;
  const int hi_num = w - 1 + pad - phase;
  hi = hi_num >= 0 ? std::min(count, hi_num / s + 1) : 0;
  lo = std::min(lo, count);
  hi = std::max(hi, lo);
}

// Copies images [n0, n0 + count) of x into the group layout; slots count..group−1 are zero.
template <typename T>
void fill_src(const Conv2dShape& s, const SrcGeom& g, const T* x, int n0, int count, T* xp) {
  const int st = g.s;
  const int64_t hw = int64_t(s.h) * s.w;
  if (g.shared) {
    for (int ci = 0; ci < s.cin; ++ci) {
      T* dst = xp + int64_t(ci) * g.plane;
      for (int qy = 0; qy < g.hq; ++qy) {
        const int r = qy - s.pad;
        T* d = dst + int64_t(qy) * g.pitch;
        if (r < 0 || r >= s.h) {
          zero_row(d, g.pitch);
          continue;
        }
        for (int gi = 0; gi < g.group; ++gi) {
          T* c = d + int64_t(gi) * g.cs;
          zero_row(c, s.pad);
          if (gi < count)
            copy_row(c + s.pad, x + (int64_t(n0 + gi) * s.cin + ci) * hw + int64_t(r) * s.w, s.w);
          else
            zero_row(c + s.pad, s.w);
        }
        zero_row(d + int64_t(g.group) * g.cs, g.pitch - int64_t(g.group) * g.cs);
      }
    }
    std::fill(xp + int64_t(s.cin) * g.plane, xp + g.csize, T(0));
    // Copy kx = copy 0 read kx elements further on (a row's shifted-in tail lands in discarded columns).
    for (int c = 1; c < g.copies; ++c) std::memcpy(xp + c * g.csize, xp + c, sizeof(T) * size_t(g.csize - c));
    return;
  }
  for (int ci = 0; ci < s.cin; ++ci)
    for (int py = 0; py < st; ++py)
      for (int px = 0; px < st; ++px) {
        if (!g.phase_used[size_t(py * st + px)]) continue;
        T* dst = xp + ((int64_t(ci) * st + py) * st + px) * g.plane;
        int lo, hi;
        valid_range(g.wq, st, px, s.pad, s.w, lo, hi);
        const int c0 = px - s.pad;  // source column of qx is qx·s + c0
        for (int qy = 0; qy < g.hq; ++qy) {
          const int r = qy * st + py - s.pad;
          T* drow = dst + int64_t(qy) * g.pitch;
          if (r < 0 || r >= s.h) {
            zero_row(drow, g.pitch);
            continue;
          }
          for (int gi = 0; gi < g.group; ++gi) {
            T* d = drow + int64_t(gi) * g.cs;
            if (gi >= count) {
              zero_row(d, g.wq);
              continue;
            }
            const T* row = x + (int64_t(n0 + gi) * s.cin + ci) * hw + int64_t(r) * s.w;
            zero_row(d, lo);
            if (st == 1)
              copy_row(d + lo, row + lo + c0, hi - lo);
            else
              copy_strided(d + lo, row + lo * st + c0, hi - lo, st);
            zero_row(d + hi, g.wq - hi);
          }
        }
      }
  const int64_t body = int64_t(s.cin) * st * st * g.plane;
  std::fill(xp + body, xp + g.img, T(0));
}

// ---------------------------------------------------------------------------------------------------
// Input-gradient source: dy of a group of images zero-padded (pt rows on top, pl columns on the left of
// each image) to hd × wd per image and channel, image g's columns starting at g·cs in rows of `pitch`
// (stride 1 shares the zero columns between neighbours as the forward does: cs = OW + pl). Input-gradient
// phase (ry, rx) (pixels iy ≡ ry, ix ≡ rx mod s) receives exactly the taps with ky ≡ ry + pad,
// kx ≡ rx + pad (mod s), and its pixel (qy, qx) (iy = qy·s + ry) reads dy[qy − ⌊(ky − pad)/s⌋][qx −
// ⌊(kx − pad)/s⌋]: again one constant offset per tap over a plane flattened at the row pitch.
// Out-of-range dy rows/columns read the zero border, which is exactly the transposed convolution.
struct GradGeom {
  bool direct = false;  // pointwise stride 1 pad 0, H·W a multiple of the vector: read dy, write dx directly
  int s = 1, pt = 0, pl = 0, hd = 0, wd = 0, cs = 0, group = 1;
  int64_t pitch = 0, plane = 0, img = 0;
};

template <typename T>
GradGeom grad_geom(const Conv2dShape& s) {
  constexpr int W = kLanes<T>;
  GradGeom g;
  g.s = s.stride;
  const int oh = s.oh(), ow = s.ow();
  g.direct = s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0 && (int64_t(s.h) * s.w) % W == 0;
  // Offsets −⌊(k − pad)/s⌋ over all taps; the border must cover the most negative, the extent the largest.
  int min_y = INT_MAX, max_y = INT_MIN, min_x = INT_MAX, max_x = INT_MIN;
  for (int ky = 0; ky < s.kh; ++ky) {
    min_y = std::min(min_y, -floordiv(ky - s.pad, s.stride));
    max_y = std::max(max_y, -floordiv(ky - s.pad, s.stride));
  }
  for (int kx = 0; kx < s.kw; ++kx) {
    min_x = std::min(min_x, -floordiv(kx - s.pad, s.stride));
    max_x = std::max(max_x, -floordiv(kx - s.pad, s.stride));
  }
  const int qh = (s.h + s.stride - 1) / s.stride, qw = (s.w + s.stride - 1) / s.stride;
  g.pt = std::max(0, -min_y);
  g.pl = std::max(0, -min_x);
  g.hd = g.pt + std::max(oh, qh + max_y);
  g.wd = g.pl + std::max(ow, qw + max_x);
  // Shared zero columns need the left border to equal the right reach (stride 1, pad ≤ kw − 1).
  const bool shared = !g.direct && s.stride == 1 && s.pad <= s.kw - 1;
  g.cs = shared ? ow + g.pl : g.wd;
  g.group = g.direct ? 1 : choose_group(s.n, int64_t(qh) * g.cs, int64_t(sizeof(T)) * s.cout * g.hd * g.wd);
  g.pitch = int64_t(g.group) * g.cs + (g.wd - g.cs);
  g.plane = int64_t(g.hd) * g.pitch;
  g.img = int64_t(s.cout) * g.plane + std::max(0, g.pl + max_x) + W + 1;
  SPARROW_CHECK(g.img < INT32_MAX, "sparse_conv2d_backward_input: padded gradient group ", g.group, "x", s.cout,
                "x", oh, "x", ow, " has 2^31 or more elements (int32 tap offsets)");
  return g;
}

template <typename T>
void fill_grad(const Conv2dShape& s, const GradGeom& g, const T* dy, int n0, int count, T* dyp) {
  const int oh = s.oh(), ow = s.ow();
  const int64_t p = int64_t(oh) * ow;
  for (int co = 0; co < s.cout; ++co) {
    T* dst = dyp + int64_t(co) * g.plane;
    zero_row(dst, int64_t(g.pt) * g.pitch);
    for (int oy = 0; oy < oh; ++oy) {
      T* drow = dst + int64_t(g.pt + oy) * g.pitch;
      for (int gi = 0; gi < g.group; ++gi) {
        T* d = drow + int64_t(gi) * g.cs;
        zero_row(d, g.pl);
        if (gi < count)
          copy_row(d + g.pl, dy + (int64_t(n0 + gi) * s.cout + co) * p + int64_t(oy) * ow, ow);
        else
          zero_row(d + g.pl, ow);
        zero_row(d + g.pl + ow, g.cs - g.pl - ow);
      }
      zero_row(drow + int64_t(g.group) * g.cs, g.pitch - int64_t(g.group) * g.cs);
    }
    std::fill(dst + int64_t(g.pt + oh) * g.pitch, dst + g.plane, T(0));
  }
  std::fill(dyp + int64_t(s.cout) * g.plane, dyp + g.img, T(0));
}

// Merges the per-thread moment pieces of every channel in thread order into `moments` (count values each).
void finish_moments(const std::vector<std::vector<MomentPiece>>& pieces, int channels, int64_t count,
                    ChannelMoments* moments, const char* op) {
  moments->count = count;
  moments->mean.assign(size_t(channels), 0.0);
  moments->m2.assign(size_t(channels), 0.0);
  for (int c = 0; c < channels; ++c) {
    int64_t n = 0;
    for (const auto& tp : pieces)
      if (!tp.empty()) merge_moment(n, moments->mean[size_t(c)], moments->m2[size_t(c)], tp[size_t(c)]);
    SPARROW_CHECK(n == count, op, ": moments of channel ", c, " cover ", n, " values, not ", count);
  }
}

// Per-thread partial sums of a weight gradient (the nnz values, and the bias in double), reduced in thread
// order at the end: deterministic for a thread count.
template <typename T>
struct WgradPartials {
  int64_t nnz;
  int cout;
  int team = 1;
  std::vector<T*> partial;
  std::vector<double> db;

  WgradPartials(int64_t nnz_, int cout_, bool bias)
      : nnz(nnz_), cout(cout_), partial(size_t(omp_get_max_threads()), nullptr),
        db(bias ? size_t(omp_get_max_threads()) * cout_ : 0, 0.0) {}

  // On thread tid of the parts running parallel_ranges: its zeroed value sums (scratch slot 2).
  T* values(int tid, int parts) {
    if (tid == 0) team = parts;
    T* acc = thread_scratch<T>(size_t(nnz) + 1, 2);
    std::fill(acc, acc + nnz, T(0));
    partial[size_t(tid)] = acc;
    return acc;
  }
  // Its bias sums, null without a bias.
  double* bias(int tid) { return db.empty() ? nullptr : db.data() + size_t(tid) * cout; }

  void finish(T* dvalues, T* dbias) const {
#pragma omp parallel for schedule(static) if (nnz > 16384)
    for (int64_t k = 0; k < nnz; ++k) {
      T sum = partial[0][k];
      for (int t2 = 1; t2 < team; ++t2) sum += partial[size_t(t2)][k];
      dvalues[k] = sum;
    }
    if (dbias)
      for (int co = 0; co < cout; ++co) {
        double sum = 0.0;
        for (int t2 = 0; t2 < team; ++t2) sum += db[size_t(t2) * cout + co];
        dbias[co] = T(sum);
      }
  }
};

#if defined(__AVX512F__)
// Runs f(channel, j0, nv, block) over one image's work on the masked path: spans of t.span elements
// (nv vectors) of planes of len elements, for the (output-side) channels [ca, cb) and the source blocks.
// With one block (low density: few kept weights per channel) the order is channel-outer, so a channel
// streams only the few source planes its taps read and their reuse across channels comes from L2; with
// several blocks, span-outer for the L1 tiling. Span-outer at low density left 32-wide maps no faster than
// the padded path (a span then reads every source plane at the same offset, 4 KB apart, so they share L1
// sets); channel-outer ran the ResNet-20 stage-1 forward at 2% in 0.2–0.5× the padded path's time.
template <typename F>
void masked_loop(const Tiling& t, int64_t len, int ca, int cb, F f) {
  if (t.nblk == 1) {
    for (int c = ca; c < cb; ++c)
      for (int64_t j0 = 0; j0 < len; j0 += t.span) f(c, j0, int(std::min(t.span, len - j0) / 16), 0);
    return;
  }
  for (int64_t j0 = 0; j0 < len; j0 += t.span)
    for (int b = 0; b < t.nblk; ++b)
      for (int c = ca; c < cb; ++c) f(c, j0, int(std::min(t.span, len - j0) / 16), b);
}

// What the forward and the weight gradient share on the masked path: the mask table, each kept weight's
// offset into x's image (tap (ci, ky, kx) of output j reads x[ci][j + (ky − pad)·W + kx − pad]) and mask
// class, in pattern order, the L1 tiling over source channels for spans of span_vecs vectors, and the
// per-output-channel cost prefix for the work split.
struct MaskedSrcPlan {
  MaskTable mt;
  std::vector<int32_t> off;
  std::vector<uint8_t> cls;
  Tiling t;
  std::vector<int64_t> bp;
  std::vector<double> prefix;
};

MaskedSrcPlan masked_src_plan(const Conv2dShape& s, const SparseConvPattern& p, int span_vecs) {
  MaskedSrcPlan m;
  m.mt = mask_table(s.oh(), s.h, s.w, s.kh, s.kw, s.pad, +1);
  const int64_t hw = int64_t(s.h) * s.w;
  m.off.resize(size_t(p.nnz));
  m.cls.resize(size_t(p.nnz));
  for (int64_t k = 0; k < p.nnz; ++k) {
    const int ci = p.tap_ci[size_t(k)], ky = p.tap_ky[size_t(k)], kx = p.tap_kx[size_t(k)];
    m.off[size_t(k)] = int32_t(ci * hw + int64_t(ky - s.pad) * s.w + (kx - s.pad));
    m.cls[size_t(k)] = uint8_t(ky * s.kw + kx);
  }
  m.t = make_tiling<float>(int64_t(span_vecs) * 16, int64_t(s.kh - 1) * s.w + (s.kw - 1), 1, s.cin,
                           p.density() * s.kh * s.kw);
  m.bp = block_pointers(
      s.cout, m.t, [&](int co) { return p.row_ptr[size_t(co)]; }, [&](int64_t k) { return p.tap_ci[size_t(k)]; });
  m.prefix = cost_prefix(s.cout, p.row_ptr, 1);
  return m;
}

// The forward on the masked direct path (masked_eligible): items (image, output channel), each output
// plane computed in spans of up to kBlockVecs vectors straight from x's planes into y, L1-tiled over source
// channels as the padded path is.
void forward_masked(const Conv2dShape& s, const SparseConvPattern& p, const float* values, const float* x,
                    const float* bias, float* y, ChannelMoments* moments) {
  constexpr int W = 16;
  const MaskedSrcPlan plan = masked_src_plan(s, p, kBlockVecs);
  const MaskTable& mt = plan.mt;
  const Tiling& t = plan.t;
  const std::vector<int64_t>& bp = plan.bp;
  const int64_t P = int64_t(s.oh()) * s.ow(), xs = int64_t(s.cin) * s.h * s.w;
  std::vector<std::vector<MomentPiece>> pieces(moments ? size_t(omp_get_max_threads()) : 0);
  parallel_ranges(s.n, plan.prefix, [&](int tid, int, int64_t first, int64_t last) {
    MomentPiece* piece = nullptr;
    if (moments) {
      pieces[size_t(tid)].assign(size_t(s.cout), MomentPiece{});
      piece = pieces[size_t(tid)].data();
    }
    for_each_group(first, last, s.cout, [&](int n, int ca, int cb) {
      const float* src = x + n * xs;
      float* yn = y + int64_t(n) * s.cout * P;
      masked_loop(t, P, ca, cb, [&](int co, int64_t j0, int nv, int b) {
        const int64_t k0 = bp[size_t(co) * (t.nblk + 1) + b], k1 = bp[size_t(co) * (t.nblk + 1) + b + 1];
        if (b > 0 && k1 == k0) return;
        masked_taps_span(src + j0, plan.off.data() + k0, plan.cls.data() + k0, values + k0, k1 - k0, nv,
                         mt.mask.data() + j0 / W, mt.nvec, b == 0, bias ? bias[co] : 0.0f, yn + co * P + j0);
      });
      if (piece)  // the planes were just written: summed from cache
        for (int co = ca; co < cb; ++co) piece[co].add(yn + co * P, P);
    });
  });
  if (moments) finish_moments(pieces, s.cout, int64_t(s.n) * P, moments, "sparse_conv2d_forward_cpu");
}

// Row-padded forward and input gradient (AVX-512, float), for the densities where the masked path's
// per-vector mask loads cost more than the copies it saves. Each image is copied plane by plane with `pad`
// zero rows above and kh − 1 − pad below (whole contiguous planes: no per-row padding, no phase split), so
// rows outside the map read zeros and only the columns that would wrap across a row end need masking. On maps
// 8, 16 or 32 wide those column masks repeat every one or two vectors, so a kept weight's masks are two
// values held in registers, and the FMA takes its x operand straight from memory with merge masking
// (masked-off lanes keep the accumulator). All reads stay inside the copy (16-float zero guards at both ends;
// kw ≤ 31 keeps the column reach within them). Taps with kx = pad read 64-byte-aligned vectors. Against the
// padded path (sparrow-bench-sparse-conv --clock cpu, 2 threads, batch 128, 3 rounds): VGG-11 128-256 16×16
// at 10% 19.9–21.9 vs 22.8–24.8 ms, 256-256 8×8 11.3–11.8 vs 12.3–13.4 ms; ResNet-20 layers at 20–50%: 16×16
// and 8×8 0.55–0.85×, 32×32 0.5–0.8× at 30% and 0.8–0.95× at 50%; 4×4 maps (one vector per plane, where the
// padded path groups images) 1.8–2.4× slower (they now take the tiny-map path). The input gradient (same command,
// old and new binaries interleaved, 3 rounds): VGG-11 16×16 at 10% 20.3–22.4 vs 24.2–24.4 ms, 8×8 10.9–11.3
// vs 13.2–14.4 ms; ResNet-20 layers at 30% and 50%: 16×16 0.6–0.9×, 32×32 0.8–1.0×, 8×8 0.7–1.4× (two of
// three rounds faster).
inline int rowpad_period(int w) { return w % 16 == 0 ? w / 16 : (16 % w == 0 ? 1 : 0); }

bool rowpad_eligible(const Conv2dShape& s) {
  const int per = rowpad_period(s.w);
  return s.stride == 1 && s.ow() == s.w && s.oh() == s.h && s.w >= 8 && (per == 1 || per == 2) &&
         s.kw <= 31 && (int64_t(s.h) * s.w) % 16 == 0 && !(s.kh == 1 && s.kw == 1 && s.pad == 0) &&
         int64_t(std::max(s.cin, s.cout)) * ((s.h + s.kh) * int64_t(s.w) + 32) + 64 < INT32_MAX;
}

// out[16i..] = (first ? init : out) + Σ_t val[t]·src[off[t] + 16i + l] where bit l of the kept weight's
// column mask for vector i is set: cm[2·kx + (i mod 2)] (PER = 1: both entries equal), cm already rotated
// to the span's first vector. IMG images at once (source copies `is` floats apart, outputs `os` apart):
// each tap's broadcast, offset and masks then serve IMG·NV FMAs (on 8×8 maps a plane is only 4 vectors,
// and per tap those loads cost as much as the 4 FMAs). Two images against one (sparrow-bench-sparse-conv
// --threads 1 --clock cpu --layer 8x8, binaries interleaved, 5 rounds, medians): VGG-11 256-256 at 31%
// forward 51.5 vs 56.5 ms, input gradient 53.3 vs 59.7, at 10% 0.90–0.91×; 128-256 and ResNet-20 64-64
// 0.93–0.96× at 10–50%. The loop stays bound by the unaligned loads (two of three taps' vectors split a
// cache line); the aligned column-shifted copies lost again here (forward at 31% 70 vs 50 ms).
template <int NV, int PER, int IMG = 1>
SPARROW_ALWAYS_INLINE void rowpad_taps_block(const float* src, const int32_t* off, const uint8_t* kxs,
                                             const float* val, int64_t ntaps, const __mmask16* cm, bool first,
                                             float init, float* out, int64_t is = 0, int64_t os = 0) {
  __m512 acc[IMG][NV];
  for (int m = 0; m < IMG; ++m)
    for (int i = 0; i < NV; ++i) acc[m][i] = first ? _mm512_set1_ps(init) : _mm512_loadu_ps(out + m * os + 16 * i);
  for (int64_t t = 0; t < ntaps; ++t) {
    const __m512 v = _mm512_set1_ps(val[t]);
    const float* p = src + off[t];
    const __mmask16 m0 = cm[kxs[t] * 2], m1 = cm[kxs[t] * 2 + 1];
    for (int m = 0; m < IMG; ++m)
      for (int i = 0; i < NV; ++i)
        acc[m][i] = _mm512_mask3_fmadd_ps(v, _mm512_loadu_ps(p + m * is + 16 * i), acc[m][i],
                                          (PER == 1 || i % 2 == 0) ? m0 : m1);
  }
  for (int m = 0; m < IMG; ++m)
    for (int i = 0; i < NV; ++i) _mm512_storeu_ps(out + m * os + 16 * i, acc[m][i]);
}

template <int PER>
SPARROW_ALWAYS_INLINE void rowpad_taps_span(const float* src, const int32_t* off, const uint8_t* kxs,
                                            const float* val, int64_t ntaps, int nv, const __mmask16* cm,
                                            bool first, float init, float* out) {
  with_span_vecs(nv, [&](auto n) {
    rowpad_taps_block<decltype(n)::value, PER>(src, off, kxs, val, ntaps, cm, first, init, out);
  });
}

// The row-padded copy of an image's src_ch planes: plane c at guard + c·ps, its data rows after `pad` zero
// rows; column masks cm[2·kx + phase] for vectors of each phase (index mod 2; with period 1 both entries are
// equal), and the same rotated by one vector for spans that start at an odd vector.
struct RowpadGeom {
  int per = 1;
  int64_t ps = 0, guard = 16, img = 0;
  std::vector<__mmask16> cmv, cmr;
  const __mmask16* masks(int64_t j0) const { return (per == 2 && (j0 / 16) % 2 == 1) ? cmr.data() : cmv.data(); }
};

RowpadGeom rowpad_geom(const Conv2dShape& s, int src_ch) {
  RowpadGeom g;
  g.per = rowpad_period(s.w);
  // Plane stride: whole vectors, and not a multiple of 4 KB (planes that far apart share L1 sets).
  g.ps = round_up(int64_t(s.h + s.kh - 1) * s.w, 16);
  if ((g.ps * int64_t(sizeof(float))) % 4096 == 0) g.ps += 16;
  g.img = g.guard + int64_t(src_ch) * g.ps + g.guard;
  g.cmv.assign(size_t(s.kw) * 2, 0);
  for (int kx = 0; kx < s.kw; ++kx)
    for (int ph = 0; ph < 2; ++ph)
      for (int l = 0; l < 16; ++l) {
        const int ox = int((int64_t(16) * (ph % g.per) + l) % s.w), ix = ox + kx - s.pad;
        if (ix >= 0 && ix < s.w) g.cmv[size_t(kx * 2 + ph)] |= __mmask16(1u << l);
      }
  g.cmr.resize(g.cmv.size());
  for (int kx = 0; kx < s.kw; ++kx) {
    g.cmr[size_t(kx * 2)] = g.cmv[size_t(kx * 2 + 1)];
    g.cmr[size_t(kx * 2 + 1)] = g.cmv[size_t(kx * 2)];
  }
  return g;
}

// Offset in the copy that tap (ch, ky, kx) adds to output element j.
inline int32_t rowpad_offset(const Conv2dShape& s, const RowpadGeom& g, int ch, int ky, int kx) {
  return int32_t(g.guard + ch * g.ps + int64_t(ky) * s.w + (kx - s.pad));
}

// Copies one image's src_ch planes (P = H·W each) into xp's data rows; guards and pad rows are left as they are
// (zeroed once per call).
inline void rowpad_copy(const Conv2dShape& s, const RowpadGeom& g, const float* img, int src_ch, float* xp) {
  const int64_t P = int64_t(s.h) * s.w;
  for (int ch = 0; ch < src_ch; ++ch) copy_row(xp + g.guard + ch * g.ps + int64_t(s.pad) * s.w, img + ch * P, P);
}

// One row-padded pass: for each image n and destination channel c, dst[n][c] = init(c) + Σ over c's taps
// k in [ptr[c], ptr[c + 1]) of val[k]·src[n][ch][j + (ky − pad)·W + kx − pad], with (ch, ky, kx) = tap(k) in
// the forward orientation and taps sorted by ch within c. The forward is src = x, dst = y over the pattern's
// rows; the input gradient (same-size maps: pad = kw − 1 − pad) is src = dy, dst = dx over its columns
// with the filter flipped. Optional bias (init) and moments of dst.
template <typename TapOf>
void rowpad_pass(const Conv2dShape& s, int src_ch, int dst_ch, const float* src, const std::vector<int64_t>& ptr,
                 TapOf tap, const float* val, double density, const float* bias, float* dst,
                 ChannelMoments* moments, const char* op) {
  constexpr int W = 16;
  const RowpadGeom g = rowpad_geom(s, src_ch);
  const int64_t nnz = ptr[size_t(dst_ch)], P = int64_t(s.h) * s.w, ss = int64_t(src_ch) * P;
  std::vector<int32_t> off(static_cast<size_t>(nnz)), ch_of(static_cast<size_t>(nnz));
  std::vector<uint8_t> kxs(static_cast<size_t>(nnz));
  for (int64_t k = 0; k < nnz; ++k) {
    const auto [ch, ky, kx] = tap(k);
    off[size_t(k)] = rowpad_offset(s, g, ch, ky, kx);
    kxs[size_t(k)] = uint8_t(kx);
    ch_of[size_t(k)] = ch;
  }
  const Tiling t =
      make_tiling<float>(kBlockVecs * W, int64_t(s.kh - 1) * s.w + s.kw, 1, src_ch, density * s.kh * s.kw);
  const std::vector<int64_t> bp = block_pointers(
      dst_ch, t, [&](int c) { return ptr[size_t(c)]; }, [&](int64_t k) { return ch_of[size_t(k)]; });
  const std::vector<double> prefix = cost_prefix(dst_ch, ptr, 1);
  std::vector<std::vector<MomentPiece>> pieces(moments ? size_t(omp_get_max_threads()) : 0);
  // The period as a local, and the span kernels forced inline: read through `g`, or called per span, the
  // forward ran about 15% slower (VGG-11 16×16 at 10%, 4 rounds).
  const int per = g.per;
  // Planes of 4 vectors (8×8 maps) run two images per tap loop: the work items are image pairs.
  const bool pairs = P == 4 * W && g.per == 1 && s.n > 1;
  const int groups = pairs ? (s.n + 1) / 2 : s.n;
  parallel_ranges(groups, prefix, [&](int tid, int, int64_t first, int64_t last) {
    // Guards and pad rows are zeroed once per call; each image then overwrites only the planes' data rows.
    float* xp = thread_scratch<float>(size_t(g.img) * (pairs ? 2 : 1), 0);
    std::fill(xp, xp + g.img * (pairs ? 2 : 1), 0.0f);
    MomentPiece* piece = nullptr;
    if (moments) {
      pieces[size_t(tid)].assign(size_t(dst_ch), MomentPiece{});
      piece = pieces[size_t(tid)].data();
    }
    for_each_group(first, last, dst_ch, [&](int grp, int ca, int cb) {
      if (pairs && 2 * grp + 1 < s.n) {
        const int n = 2 * grp;
        rowpad_copy(s, g, src + n * ss, src_ch, xp);
        rowpad_copy(s, g, src + (n + 1) * ss, src_ch, xp + g.img);
        float* dn = dst + int64_t(n) * dst_ch * P;
        const int64_t os = int64_t(dst_ch) * P;
        for (int b = 0; b < t.nblk; ++b)
          for (int c = ca; c < cb; ++c) {
            const int64_t k0 = bp[size_t(c) * (t.nblk + 1) + b], k1 = bp[size_t(c) * (t.nblk + 1) + b + 1];
            if (b > 0 && k1 == k0) continue;
            const float init = bias ? bias[c] : 0.0f;
            rowpad_taps_block<4, 1, 2>(xp, off.data() + k0, kxs.data() + k0, val + k0, k1 - k0, g.masks(0),
                                       b == 0, init, dn + c * P, g.img, os);
          }
        if (piece)
          for (int m = 0; m < 2; ++m)
            for (int c = ca; c < cb; ++c) piece[c].add(dn + m * os + c * P, P);
        return;
      }
      const int n = pairs ? 2 * grp : grp;
      rowpad_copy(s, g, src + n * ss, src_ch, xp);
      float* dn = dst + int64_t(n) * dst_ch * P;
      for (int64_t j0 = 0; j0 < P; j0 += t.span) {
        const int nv = int(std::min(t.span, P - j0) / W);
        const __mmask16* cm = g.masks(j0);
        for (int b = 0; b < t.nblk; ++b)
          for (int c = ca; c < cb; ++c) {
            const int64_t k0 = bp[size_t(c) * (t.nblk + 1) + b], k1 = bp[size_t(c) * (t.nblk + 1) + b + 1];
            if (b > 0 && k1 == k0) continue;
            const float init = bias ? bias[c] : 0.0f;
            if (per == 1)
              rowpad_taps_span<1>(xp + j0, off.data() + k0, kxs.data() + k0, val + k0, k1 - k0, nv, cm, b == 0,
                                  init, dn + c * P + j0);
            else
              rowpad_taps_span<2>(xp + j0, off.data() + k0, kxs.data() + k0, val + k0, k1 - k0, nv, cm, b == 0,
                                  init, dn + c * P + j0);
          }
      }
      if (piece)  // the planes were just written: summed from cache
        for (int c = ca; c < cb; ++c) piece[c].add(dn + c * P, P);
    });
  });
  if (moments) finish_moments(pieces, dst_ch, int64_t(s.n) * P, moments, op);
}

// The pattern's columns as the taps of an input-gradient pass: the output channel of each kept weight (by
// pattern index) and the values in column order (entry e is values[col_entry[e]]).
struct ColumnTaps {
  std::vector<int32_t> row_of;
  std::vector<float> val;
};

ColumnTaps column_taps(const Conv2dShape& s, const SparseConvPattern& p, const float* values) {
  ColumnTaps ct;
  ct.row_of.resize(size_t(p.nnz));
  ct.val.resize(size_t(p.nnz));
  for (int co = 0; co < s.cout; ++co)
    for (int64_t k = p.row_ptr[size_t(co)]; k < p.row_ptr[size_t(co) + 1]; ++k) ct.row_of[size_t(k)] = co;
  for (int64_t e = 0; e < p.nnz; ++e) ct.val[size_t(e)] = values[p.col_entry[size_t(e)]];
  return ct;
}

struct Tap {
  int ch, ky, kx;
};

// {source channel, ky, kx} of kept weight k, for the passes over the pattern's rows.
inline Tap row_tap(const SparseConvPattern& p, int64_t k) {
  return Tap{p.tap_ci[size_t(k)], p.tap_ky[size_t(k)], p.tap_kx[size_t(k)]};
}

void forward_rowpad(const Conv2dShape& s, const SparseConvPattern& p, const float* values, const float* x,
                    const float* bias, float* y, ChannelMoments* moments) {
  auto tap = [&](int64_t k) { return row_tap(p, k); };
  rowpad_pass(s, s.cin, s.cout, x, p.row_ptr, tap, values, p.density(), bias, y, moments,
              "sparse_conv2d_forward_cpu");
}

// The input gradient on the row-padded path: dx[ci][j] = Σ val·dy[co][j + (pad − ky)·W + pad − kx], the
// forward's pass over dy with the filter flipped (ky → kh − 1 − ky, kx → kw − 1 − kx; on same-size maps
// the flipped filter has the same padding) and the pattern's columns as the taps.
void backward_input_rowpad(const Conv2dShape& s, const SparseConvPattern& p, const float* values, const float* dy,
                           float* dx) {
  const ColumnTaps ct = column_taps(s, p, values);
  auto tap = [&](int64_t e) {
    const int32_t k = p.col_entry[size_t(e)];
    return Tap{ct.row_of[size_t(k)], s.kh - 1 - p.tap_ky[size_t(k)], s.kw - 1 - p.tap_kx[size_t(k)]};
  };
  rowpad_pass(s, s.cout, s.cin, dy, p.col_ptr, tap, ct.val.data(), p.density(), nullptr, dx, nullptr,
              "sparse_conv2d_backward_input_cpu");
}

// res[t] += Σ_j a[j]·src[off[t] + j] over j in [0, 16·nv), lane l of vector i counted only where bit l of
// the tap's column mask for i is set (cm[2·kx + (i mod 2)], as rowpad_taps_block); NT taps at once so each
// load of `a` is shared.
template <int NT, int PER>
inline void rowpad_dots(const float* a, const float* src, const int32_t* off, const uint8_t* kxs, int64_t nv,
                        const __mmask16* cm, float* res) {
  __m512 acc0[NT], acc1[NT];
  const float* p[NT];
  __mmask16 m0[NT], m1[NT];
  for (int t = 0; t < NT; ++t) {
    acc0[t] = _mm512_setzero_ps();
    acc1[t] = _mm512_setzero_ps();
    p[t] = src + off[t];
    m0[t] = cm[kxs[t] * 2];
    m1[t] = cm[kxs[t] * 2 + (PER == 1 ? 0 : 1)];
  }
  int64_t i = 0;
  for (; i + 2 <= nv; i += 2) {
    const __m512 a0 = _mm512_loadu_ps(a + 16 * i), a1 = _mm512_loadu_ps(a + 16 * i + 16);
    for (int t = 0; t < NT; ++t) {
      acc0[t] = _mm512_mask3_fmadd_ps(a0, _mm512_loadu_ps(p[t] + 16 * i), acc0[t], m0[t]);
      acc1[t] = _mm512_mask3_fmadd_ps(a1, _mm512_loadu_ps(p[t] + 16 * i + 16), acc1[t], m1[t]);
    }
  }
  if (i < nv) {
    const __m512 a0 = _mm512_loadu_ps(a + 16 * i);
    for (int t = 0; t < NT; ++t)
      acc0[t] = _mm512_mask3_fmadd_ps(a0, _mm512_loadu_ps(p[t] + 16 * i), acc0[t], m0[t]);
  }
  add_dot_sums<NT>(acc0, acc1, res);
}

template <int PER>
inline void rowpad_dots_all(const float* a, const float* src, const int32_t* off, const uint8_t* kxs, int64_t ntaps,
                            int64_t nv, const __mmask16* cm, float* res) {
  int64_t t = 0;
  for (; t + 4 <= ntaps; t += 4) rowpad_dots<4, PER>(a, src, off + t, kxs + t, nv, cm, res + t);
  for (; t < ntaps; ++t) rowpad_dots<1, PER>(a, src, off + t, kxs + t, nv, cm, res + t);
}

// The weight gradient on the row-padded path: dvalues[k] = Σ_n Σ_j dy[n][co][j]·x_copy[ci][j + off_k] over
// the lanes of the tap's column masks, dy read in place, x copied row-padded once per image; spans of up to
// kWgradSpanVecs vectors in masked_loop's order; per-thread partial sums reduced in thread order. Used on
// maps at least 16 wide: on 8-wide ones a plane is four vectors, so every kept weight pays a horizontal sum
// per four vectors, and the padded path (several images side by side) ran 1.5–1.8× faster. Against the
// padded path (sparrow-bench-sparse-conv --clock cpu, 3 rounds interleaved): ResNet-20 16×16 at 10%
// 0.65–0.75×, at 30% 0.93–0.98×; 32×32 within noise of it; VGG-11 128-256 16×16 0.85–0.95× at 5%, about
// equal at 10%, 0.85–1.1× at 30%. The 98%-sparse ResNet-20 step gained about 3% (4 rounds).
void backward_weight_rowpad(const Conv2dShape& s, const SparseConvPattern& p, const float* x, const float* dy,
                            float* dvalues, float* dbias) {
  constexpr int W = 16;
  const RowpadGeom g = rowpad_geom(s, s.cin);
  const int64_t P = int64_t(s.h) * s.w, xs = int64_t(s.cin) * P;
  std::vector<int32_t> off(size_t(p.nnz));
  std::vector<uint8_t> kxs(size_t(p.nnz));
  for (int64_t k = 0; k < p.nnz; ++k) {
    off[size_t(k)] = rowpad_offset(s, g, p.tap_ci[size_t(k)], p.tap_ky[size_t(k)], p.tap_kx[size_t(k)]);
    kxs[size_t(k)] = uint8_t(p.tap_kx[size_t(k)]);
  }
  const Tiling t = make_tiling<float>(kWgradSpanVecs * W, int64_t(s.kh - 1) * s.w + s.kw, 1, s.cin,
                                      p.density() * s.kh * s.kw);
  const std::vector<int64_t> bp = block_pointers(
      s.cout, t, [&](int co) { return p.row_ptr[size_t(co)]; }, [&](int64_t k) { return p.tap_ci[size_t(k)]; });
  const std::vector<double> prefix = cost_prefix(s.cout, p.row_ptr, 1);
  WgradPartials<float> sums(p.nnz, s.cout, dbias != nullptr);
  const int per = g.per;
  parallel_ranges(s.n, prefix, [&](int tid, int parts, int64_t first, int64_t last) {
    float* acc = sums.values(tid, parts);
    float* xp = thread_scratch<float>(size_t(g.img), 0);
    std::fill(xp, xp + g.img, 0.0f);
    double* dbt = sums.bias(tid);
    for_each_group(first, last, s.cout, [&](int n, int ca, int cb) {
      rowpad_copy(s, g, x + n * xs, s.cin, xp);
      const float* dyn = dy + int64_t(n) * s.cout * P;
      if (dbt)
        for (int co = ca; co < cb; ++co) dbt[co] += plane_sum(dyn + co * P, P);
      masked_loop(t, P, ca, cb, [&](int co, int64_t j0, int nv, int b) {
        const int64_t k0 = bp[size_t(co) * (t.nblk + 1) + b], k1 = bp[size_t(co) * (t.nblk + 1) + b + 1];
        if (k1 == k0) return;
        if (per == 1)
          rowpad_dots_all<1>(dyn + co * P + j0, xp + j0, off.data() + k0, kxs.data() + k0, k1 - k0, nv, g.masks(j0),
                             acc + k0);
        else
          rowpad_dots_all<2>(dyn + co * P + j0, xp + j0, off.data() + k0, kxs.data() + k0, k1 - k0, nv, g.masks(j0),
                             acc + k0);
      });
    });
  });
  sums.finish(dvalues, dbias);
}

// The input gradient on the masked direct path: items (image, input channel), taps through the transposed
// pattern (stride 1: one phase per channel), dx[ci][j] = Σ val·dy[co][j + (pad − ky)·W + pad − kx] read in
// place, L1-tiled over output-gradient channels.
void backward_input_masked(const Conv2dShape& s, const SparseConvPattern& p, const float* values,
                           const float* dy, float* dx) {
  constexpr int W = 16;
  const int oh = s.oh();
  const MaskTable mt = mask_table(s.h, oh, s.w, s.kh, s.kw, s.pad, -1);
  const int64_t hw = int64_t(s.h) * s.w, P = int64_t(oh) * s.w, ys = int64_t(s.cout) * P;
  const ColumnTaps ct = column_taps(s, p, values);
  std::vector<int32_t> off(size_t(p.nnz)), co_of(size_t(p.nnz));
  std::vector<uint8_t> cls(size_t(p.nnz));
  for (int64_t e = 0; e < p.nnz; ++e) {
    const int32_t k = p.col_entry[size_t(e)];
    const int co = ct.row_of[size_t(k)], ky = p.tap_ky[size_t(k)], kx = p.tap_kx[size_t(k)];
    off[size_t(e)] = int32_t(co * P + int64_t(s.pad - ky) * s.w + (s.pad - kx));
    cls[size_t(e)] = uint8_t(ky * s.kw + kx);
    co_of[size_t(e)] = co;
  }
  const Tiling t = make_tiling<float>(kBlockVecs * W, int64_t(s.kh - 1) * s.w + (s.kw - 1), 1, s.cout,
                                      p.density() * s.kh * s.kw);
  const std::vector<int64_t> bp = block_pointers(
      s.cin, t, [&](int c) { return p.col_ptr[size_t(c)]; }, [&](int64_t e) { return co_of[size_t(e)]; });
  const std::vector<double> prefix = cost_prefix(s.cin, p.col_ptr, 1);
  parallel_ranges(s.n, prefix, [&](int, int, int64_t first, int64_t last) {
    for_each_group(first, last, s.cin, [&](int n, int ca, int cb) {
      const float* src = dy + n * ys;
      float* dxn = dx + int64_t(n) * s.cin * hw;
      masked_loop(t, hw, ca, cb, [&](int ci, int64_t j0, int nv, int b) {
        const int64_t e0 = bp[size_t(ci) * (t.nblk + 1) + b], e1 = bp[size_t(ci) * (t.nblk + 1) + b + 1];
        if (b > 0 && e1 == e0) return;
        masked_taps_span(src + j0, off.data() + e0, cls.data() + e0, ct.val.data() + e0, e1 - e0, nv,
                         mt.mask.data() + j0 / W, mt.nvec, b == 0, 0.0f, dxn + ci * hw + j0);
      });
    });
  });
}

// The weight gradient on the masked direct path: items (image, output channel), each kept weight's dot
// product of the dy plane with x's source plane read in place through the forward's masks, in spans of up
// to kWgradSpanVecs vectors; per-thread partial sums reduced in thread order (WgradPartials).
void backward_weight_masked(const Conv2dShape& s, const SparseConvPattern& p, const float* x, const float* dy,
                            float* dvalues, float* dbias) {
  constexpr int W = 16;
  const MaskedSrcPlan plan = masked_src_plan(s, p, kWgradSpanVecs);
  const MaskTable& mt = plan.mt;
  const Tiling& t = plan.t;
  const std::vector<int64_t>& bp = plan.bp;
  const int64_t P = int64_t(s.oh()) * s.ow(), xs = int64_t(s.cin) * s.h * s.w;
  WgradPartials<float> sums(p.nnz, s.cout, dbias != nullptr);
  parallel_ranges(s.n, plan.prefix, [&](int tid, int parts, int64_t first, int64_t last) {
    float* acc = sums.values(tid, parts);
    double* dbt = sums.bias(tid);
    for_each_group(first, last, s.cout, [&](int n, int ca, int cb) {
      const float* src = x + n * xs;
      const float* dyn = dy + int64_t(n) * s.cout * P;
      if (dbt)
        for (int co = ca; co < cb; ++co) dbt[co] += plane_sum(dyn + co * P, P);
      masked_loop(t, P, ca, cb, [&](int co, int64_t j0, int nv, int b) {
        const int64_t k0 = bp[size_t(co) * (t.nblk + 1) + b], k1 = bp[size_t(co) * (t.nblk + 1) + b + 1];
        if (k1 == k0) return;
        masked_dots_all(dyn + co * P + j0, src + j0, plan.off.data() + k0, plan.cls.data() + k0, k1 - k0, nv,
                        mt.mask.data() + j0 / W, mt.nvec, acc + k0);
      });
    });
  });
  sums.finish(dvalues, dbias);
}

// ---------------------------------------------------------------------------------------------------
// Tiny-map path (AVX-512, float): stride-1 3×3 pad-1 convolutions on square maps of at most 4×4 (VGG's last
// four layers at 32×32 input). A plane there is at most one vector, so the planar paths spend lanes on
// padding columns and multiply the zeros that the taps falling off the map read. Here the batch is the
// vector: each pass copies blocks of 16 images to [channel][pixel][16 images] (images past N are zero), and
// output pixel p of a kept weight (ky, kx) reads source pixel p + (ky − 1)·W + kx − 1 of its channel as one
// whole, aligned vector. Which output pixels stay on the map is fixed per (ky, kx), so it is resolved at
// compile time (tiny_fma): the H·W accumulators stay in registers and off-map pixels cost nothing. The taps
// of each destination channel are sorted by (ky, kx) (a stable counting sort per call, O(nnz)), so the
// dispatch on (ky, kx) happens once per run of equal taps. Source channels are blocked for L2, not L1: with
// L1 blocks the runs got short enough that their loop exits cost more than the L2 reads saved. Against the
// planar paths (sparrow-bench-sparse-conv --clock cpu, 2 threads, batch 128, binaries interleaved, 2–3
// rounds), VGG-11 512-512 4×4: at 10% forward 8.9–15.2 vs 13.6–15.4 ms (median 10.1), input gradient
// 11.2–12.1 vs 18.2–20.2, weight gradient 11.1–15.2 vs 19.6–25.3; at 2.4% 3.3–3.9 vs 4.5–4.7, 3.5–4.0 vs
// 4.8–9.5, 3.9–4.3 vs 6.5–11.3; at 30% and 50% 0.55–0.8×. 512-512 2×2: 0.3–0.75× at 2–50%.
template <int V>
using IntC = std::integral_constant<int, V>;

bool tiny_eligible(const Conv2dShape& s) {
  return s.stride == 1 && s.kh == 3 && s.kw == 3 && s.pad == 1 && s.h == s.w && s.h >= 1 && s.h <= 4 &&
         int64_t(std::max(s.cin, s.cout)) * 16 * 16 < INT32_MAX;
}

template <typename F>
inline void with_tiny_size(int h, F&& f) {
  switch (h) {
    case 1: f(IntC<1>{}); break;
    case 2: f(IntC<2>{}); break;
    case 3: f(IntC<3>{}); break;
    case 4: f(IntC<4>{}); break;
    default: break;
  }
}

// f(IntC<ky − 1>, IntC<kx − 1>) for class cls = ky·3 + kx.
template <typename F>
inline void with_tiny_class(int cls, F&& f) {
  switch (cls) {
    case 0: f(IntC<-1>{}, IntC<-1>{}); break;
    case 1: f(IntC<-1>{}, IntC<0>{}); break;
    case 2: f(IntC<-1>{}, IntC<1>{}); break;
    case 3: f(IntC<0>{}, IntC<-1>{}); break;
    case 4: f(IntC<0>{}, IntC<0>{}); break;
    case 5: f(IntC<0>{}, IntC<1>{}); break;
    case 6: f(IntC<1>{}, IntC<-1>{}); break;
    case 7: f(IntC<1>{}, IntC<0>{}); break;
    case 8: f(IntC<1>{}, IntC<1>{}); break;
    default: break;
  }
}

// Whether output pixel P of an H×H map, shifted by (DY, DX), reads a source pixel on the map.
template <int H, int DY, int DX, int P>
constexpr bool tiny_on_map() {
  return P / H + DY >= 0 && P / H + DY < H && P % H + DX >= 0 && P % H + DX < H;
}
template <int H, int DY, int DX, int P>
constexpr int tiny_src_pixel() {
  return (P / H + DY) * H + P % H + DX;
}

// acc[P] += v · src[source pixel of P] where that pixel is on the map.
template <int H, int DY, int DX, int P>
inline void tiny_fma(__m512* acc, __m512 v, const float* src) {
  if constexpr (tiny_on_map<H, DY, DX, P>())
    acc[P] = _mm512_fmadd_ps(v, _mm512_load_ps(src + 16 * tiny_src_pixel<H, DY, DX, P>()), acc[P]);
}

// acc[p] += Σ_t val[t]·src[off[t] + 16·(source pixel of p)] for the n taps of one class (DY, DX).
template <int H, int DY, int DX, int... P>
inline void tiny_taps(__m512* acc, const float* src, const int32_t* off, const float* val, int64_t n,
                      std::integer_sequence<int, P...>) {
  for (int64_t t = 0; t < n; ++t) {
    const __m512 v = _mm512_set1_ps(val[t]);
    const float* x = src + off[t];
    (tiny_fma<H, DY, DX, P>(acc, v, x), ...);
  }
}

// d·src over the on-map pixels of one tap, split over two accumulators (even and odd pixels).
template <int H, int DY, int DX, int P>
inline void tiny_dot_fma(const __m512* d, const float* src, __m512* acc2) {
  if constexpr (tiny_on_map<H, DY, DX, P>())
    acc2[P % 2] = _mm512_fmadd_ps(d[P], _mm512_load_ps(src + 16 * tiny_src_pixel<H, DY, DX, P>()), acc2[P % 2]);
}

// res[order[t]] += Σ_p Σ_lanes d[p]·src[off[t] + 16·(source pixel of p)] for the n taps of one class; four
// taps at a time (eight independent FMA chains), reduced together by hsum4.
template <int H, int DY, int DX, int... P>
inline void tiny_dots(const __m512* d, const float* src, const int32_t* off, const int32_t* order, int64_t n,
                      float* res, std::integer_sequence<int, P...>) {
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    __m512 a0[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, a1[2] = {a0[0], a0[0]}, a2[2] = {a0[0], a0[0]},
           a3[2] = {a0[0], a0[0]};
    const float *x0 = src + off[t], *x1 = src + off[t + 1], *x2 = src + off[t + 2], *x3 = src + off[t + 3];
    ((tiny_dot_fma<H, DY, DX, P>(d, x0, a0), tiny_dot_fma<H, DY, DX, P>(d, x1, a1),
      tiny_dot_fma<H, DY, DX, P>(d, x2, a2), tiny_dot_fma<H, DY, DX, P>(d, x3, a3)),
     ...);
    alignas(16) float sum[4];
    _mm_store_ps(sum, hsum4(_mm512_add_ps(a0[0], a0[1]), _mm512_add_ps(a1[0], a1[1]),
                            _mm512_add_ps(a2[0], a2[1]), _mm512_add_ps(a3[0], a3[1])));
    for (int i = 0; i < 4; ++i) res[order[t + i]] += sum[i];
  }
  for (; t < n; ++t) {
    __m512 a[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    (tiny_dot_fma<H, DY, DX, P>(d, src + off[t], a), ...);
    res[order[t]] += hsum<float>(_mm512_add_ps(a[0], a[1]));
  }
}

// A batch-minor plane of h × w pixels stored in rows of `pitch` ≥ w pixels and hp ≥ h rows (the strip path
// pads maps 7 and 14 wide to 8 and 16, and an odd height to even on 8-wide rows); the padding pixels of an
// input copy are zero, those of an output are computed and dropped. Unpadded: pitch = w, hp = h.
struct MinorPlane {
  int h, w, pitch, hp;
  int64_t pixels() const { return int64_t(h) * w; }
  int64_t stored() const { return int64_t(hp) * pitch; }
  bool padded() const { return pitch != w || hp != h; }
};

// One channel's plane of `count` images (src, images lds floats apart) to d[stored pixel][16 images]: the
// padding and the lanes past count zero.
void plane_to_minor(const float* src, int64_t lds, const MinorPlane& g, int count, float* d) {
  if (!g.padded()) {
    transpose_matrix<float>(count, g.pixels(), src, lds, d, 16);
    if (count < 16)
      for (int64_t p = 0; p < g.pixels(); ++p) zero_row(d + p * 16 + count, 16 - count);
    return;
  }
  zero_row(d, g.stored() * 16);
  for (int y = 0; y < g.h; ++y)
    transpose_matrix<float>(count, g.w, src + int64_t(y) * g.w, lds, d + int64_t(y) * g.pitch * 16, 16);
}

// Images [n0, n0 + count) of src (N × ch × h·w) to dst[c][stored pixel][16 images].
void to_batch_minor(const float* src, int ch, const MinorPlane& g, int n0, int count, float* dst) {
  const int64_t P = g.pixels();
  for (int c = 0; c < ch; ++c)
    plane_to_minor(src + (int64_t(n0) * ch + c) * P, int64_t(ch) * P, g, count, dst + int64_t(c) * g.stored() * 16);
}
// The same for unpadded planes of P pixels.
void to_batch_minor(const float* src, int ch, int P, int n0, int count, float* dst) {
  to_batch_minor(src, ch, MinorPlane{1, P, P, 1}, n0, count, dst);
}

// The inverse for channels [ca, cb): src[c − ca][stored pixel][16 images] to images [n0, n0 + count) of dst.
void from_batch_minor(const float* src, int ch, int ca, int cb, const MinorPlane& g, int n0, int count,
                      float* dst) {
  const int64_t P = g.pixels();
  for (int c = ca; c < cb; ++c) {
    const float* sc = src + int64_t(c - ca) * g.stored() * 16;
    float* dc = dst + (int64_t(n0) * ch + c) * P;
    if (!g.padded()) {
      // Eight images at a time: their destination rows are written through (whole lines) before the next
      // eight, rather than all 16 images' lines half written at once, which on power-of-two planes (images
      // ch·P floats apart: 64 KB for 16 channels of 32×32) share an L1 set beyond its ways. Against one
      // transpose of all 16 (sparrow-bench-sparse-conv --threads 1 --clock cpu --layer resnet20.s, 2 rounds):
      // 0.42–0.58 on the 3-16 32×32 stem's forward at 70%; on 16-16 32×32 and 32-32 16×16 at 33–70% 0.80–0.96
      // in the forward and input gradient (one cell 1.08).
      for (int l0 = 0; l0 < count; l0 += 8)
        transpose_matrix<float>(P, std::min(8, count - l0), sc + l0, 16, dc + int64_t(l0) * ch * P,
                                int64_t(ch) * P);
    } else {
      for (int y = 0; y < g.h; ++y)
        transpose_matrix<float>(g.w, count, sc + int64_t(y) * g.pitch * 16, 16, dc + int64_t(y) * g.w,
                                int64_t(ch) * P);
    }
  }
}

// The taps of a batch-minor pass grouped into runs: seg[r] is the first sorted tap of run r (seg.back() =
// nnz), off its offset in the pass's copy of the source, order the caller's index; t the source-channel
// blocking. Filled by sort_taps from each tap's run and offset, stable within a run.
struct TapPlan {
  Tiling t;
  std::vector<int64_t> seg;
  std::vector<int32_t> off, order;
};

void sort_taps(TapPlan& pl, size_t runs, const std::vector<int64_t>& run, const std::vector<int32_t>& off_of) {
  const size_t nnz = run.size();
  pl.seg.assign(runs + 1, 0);
  for (size_t k = 0; k < nnz; ++k) ++pl.seg[size_t(run[k]) + 1];
  for (size_t i = 1; i < pl.seg.size(); ++i) pl.seg[i] += pl.seg[i - 1];
  std::vector<int64_t> pos(pl.seg.begin(), pl.seg.end() - 1);
  pl.off.resize(nnz);
  pl.order.resize(nnz);
  for (size_t k = 0; k < nnz; ++k) {  // in caller order: stable within each run
    const int64_t i = pos[size_t(run[k])]++;
    pl.off[size_t(i)] = off_of[k];
    pl.order[size_t(i)] = int32_t(k);
  }
}

// Source channels per block of the tiny-map passes: an L1's worth where that leaves many taps per
// (destination channel, block) call, more (up to an L2 tile) where it would leave few. Every tap's vectors
// are loads from the block, so a block in L2 holds them to L2 bandwidth: against L2-sized blocks throughout
// (sparrow-bench-sparse-conv --threads 1 --clock cpu --layer 512-512, Zen 5 with 48 KB L1, 2 rounds),
// 48 KB blocks ran VGG-11 512-512 4×4 at 31% in 0.57–0.82 of the time (all passes), at 10% 0.93–1.16, and
// at 3% 1.5–1.9 (13 taps a call); so at least kTinyMinBlockTaps taps a call. On 2×2 maps (192-channel L1
// blocks) the weight gradient ran 1.1–1.7× slower at 10–31% (the forward 0.7–1.05): those keep L2 blocks.
constexpr int64_t kTinyL1Bytes = int64_t(48) << 10;
constexpr double kTinyMinBlockTaps = 128.0;

Tiling tiny_tiling(int P, int src_ch, double density) {
  const int64_t per_channel = int64_t(P) * 16 * int64_t(sizeof(float));
  const double taps = density * 9;
  int64_t b = (P >= 16 ? kTinyL1Bytes : kL2TileBytes) / per_channel;
  if (taps > 0) b = std::max<int64_t>(b, int64_t(std::ceil(kTinyMinBlockTaps / taps)));
  b = std::clamp<int64_t>(b, 1, std::max<int64_t>(1, kL2TileBytes / per_channel));
  return make_tiling<float>(int64_t(P) * 16, 0, 1, src_ch, 0.0, b * per_channel);
}

// Per destination channel, its taps (entries [ptr[c], ptr[c + 1]) of the caller's list, tap(k) = {source
// channel, class}) in runs by (source block, class): run (c·nblk + b)·9 + cls, off the source channel's
// offset in the batch-minor copy.

template <typename TapOf>
TapPlan tiny_plan(int P, int src_ch, int dst_ch, const std::vector<int64_t>& ptr, TapOf tap, double density) {
  TapPlan pl;
  pl.t = tiny_tiling(P, src_ch, density);
  const int nblk = pl.t.nblk;
  const int64_t nnz = ptr[size_t(dst_ch)];
  // Each tap's run and offset, computed once (tap(k) is an indirect lookup for the input gradient).
  std::vector<int64_t> run(static_cast<size_t>(nnz));
  std::vector<int32_t> off_of(static_cast<size_t>(nnz));
  for (int c = 0; c < dst_ch; ++c)
    for (int64_t k = ptr[size_t(c)]; k < ptr[size_t(c) + 1]; ++k) {
      const auto [ch, cls] = tap(k);
      run[size_t(k)] = (int64_t(c) * nblk + ch / pl.t.block) * 9 + cls;
      off_of[size_t(k)] = ch * P * 16;
    }
  sort_taps(pl, size_t(dst_ch) * nblk * 9, run, off_of);
  return pl;
}

// The frame of the batch-minor passes (tiny maps, strips): groups of 16 images split over the threads by the
// cost of their destination channels, each group's source copied into thread scratch (src_floats) by
// copy_in(n0, count, xt), destination channels [ca, cb) computed into yt (g.stored()·16 floats a channel,
// images minor) by body(xt, yt, ca, cb), then written back image-major (g's padding dropped), with dst's
// batch-norm moments when asked.
template <typename CopyIn, typename Body>
void batch_minor_pass(const Conv2dShape& s, int dst_ch, const std::vector<int64_t>& ptr, const MinorPlane& g,
                      size_t src_floats, float* dst, ChannelMoments* moments, const char* op, CopyIn copy_in,
                      Body body) {
  const int64_t P = g.pixels();
  const int blocks = (s.n + 15) / 16;
  const std::vector<double> prefix = cost_prefix(dst_ch, ptr, 1);
  std::vector<std::vector<MomentPiece>> pieces(moments ? size_t(omp_get_max_threads()) : 0);
  parallel_ranges(blocks, prefix, [&](int tid, int, int64_t first, int64_t last) {
    float* xt = thread_scratch<float>(src_floats, 0);
    float* yt = thread_scratch<float>(size_t(dst_ch) * size_t(g.stored()) * 16, 1);
    MomentPiece* piece = nullptr;
    if (moments) {
      pieces[size_t(tid)].assign(size_t(dst_ch), MomentPiece{});
      piece = pieces[size_t(tid)].data();
    }
    for_each_group(first, last, dst_ch, [&](int grp, int ca, int cb) {
      const int n0 = grp * 16, count = std::min(16, s.n - n0);
      copy_in(n0, count, xt);
      body(static_cast<const float*>(xt), yt, ca, cb);
      from_batch_minor(yt, dst_ch, ca, cb, g, n0, count, dst);
      if (piece)
        for (int l = 0; l < count; ++l)
          for (int c = ca; c < cb; ++c) piece[c].add(dst + (int64_t(n0 + l) * dst_ch + c) * P, P);
    });
  });
  if (moments) finish_moments(pieces, dst_ch, int64_t(s.n) * P, moments, op);
}

// dst[n][c][p] = init(c) + Σ over c's taps of val·src[n][ch][source pixel of p], as rowpad_pass: the forward
// (src = x over the pattern's rows) and the input gradient (src = dy over its columns, the filter flipped).
template <int H, typename TapOf>
void tiny_pass(const Conv2dShape& s, int src_ch, int dst_ch, const float* src, const std::vector<int64_t>& ptr,
               TapOf tap, const float* val_of_k, double density, const float* bias, float* dst,
               ChannelMoments* moments, const char* op) {
  constexpr int P = H * H;
  const TapPlan pl = tiny_plan(P, src_ch, dst_ch, ptr, tap, density);
  const Tiling& t = pl.t;
  std::vector<float> val(pl.order.size());
  for (size_t i = 0; i < val.size(); ++i) val[i] = val_of_k[pl.order[i]];
  batch_minor_pass(
      s, dst_ch, ptr, MinorPlane{H, H, H, H}, size_t(src_ch) * P * 16, dst, moments, op,
      [&](int n0, int count, float* xt) { to_batch_minor(src, src_ch, P, n0, count, xt); },
      [&](const float* xt, float* yt, int ca, int cb) {
        for (int b = 0; b < t.nblk; ++b)
          for (int c = ca; c < cb; ++c) {
            const int64_t* sg = pl.seg.data() + (size_t(c) * t.nblk + b) * 9;
            if (b > 0 && sg[9] == sg[0]) continue;
            float* o = yt + int64_t(c - ca) * P * 16;
            __m512 acc[P];
            for (int p = 0; p < P; ++p)
              acc[p] = b > 0 ? _mm512_load_ps(o + 16 * p) : _mm512_set1_ps(bias ? bias[c] : 0.0f);
            for (int cls = 0; cls < 9; ++cls) {
              if (sg[cls + 1] == sg[cls]) continue;
              with_tiny_class(cls, [&](auto dy, auto dx) {
                tiny_taps<H, decltype(dy)::value, decltype(dx)::value>(acc, xt, pl.off.data() + sg[cls],
                                                                       val.data() + sg[cls], sg[cls + 1] - sg[cls],
                                                                       std::make_integer_sequence<int, P>{});
              });
            }
            for (int p = 0; p < P; ++p) _mm512_store_ps(o + 16 * p, acc[p]);
          }
      });
}

// {source channel, class} of kept weight k, for the passes over the pattern's rows.
inline std::pair<int, int> tiny_row_tap(const SparseConvPattern& p, int64_t k) {
  return {p.tap_ci[size_t(k)], p.tap_ky[size_t(k)] * 3 + p.tap_kx[size_t(k)]};
}

void forward_tiny(const Conv2dShape& s, const SparseConvPattern& p, const float* values, const float* x,
                  const float* bias, float* y, ChannelMoments* moments) {
  auto tap = [&](int64_t k) { return tiny_row_tap(p, k); };
  with_tiny_size(s.h, [&](auto h) {
    tiny_pass<decltype(h)::value>(s, s.cin, s.cout, x, p.row_ptr, tap, values, p.density(), bias, y, moments,
                                  "sparse_conv2d_forward_cpu");
  });
}

// dx[ci][p] = Σ val·dy[co][p + (1 − ky)·W + 1 − kx]: the forward's pass over dy with class 8 − cls.
void backward_input_tiny(const Conv2dShape& s, const SparseConvPattern& p, const float* values, const float* dy,
                         float* dx) {
  const ColumnTaps ct = column_taps(s, p, values);
  auto tap = [&](int64_t e) {
    const int32_t k = p.col_entry[size_t(e)];
    return std::pair<int, int>{ct.row_of[size_t(k)], 8 - (p.tap_ky[size_t(k)] * 3 + p.tap_kx[size_t(k)])};
  };
  with_tiny_size(s.h, [&](auto h) {
    tiny_pass<decltype(h)::value>(s, s.cout, s.cin, dy, p.col_ptr, tap, ct.val.data(), p.density(), nullptr, dx,
                                  nullptr, "sparse_conv2d_backward_input_cpu");
  });
}

// dvalues[k] = Σ_n Σ_p dy[n][co][p]·x[n][ci][source pixel of p] over the on-map pixels: per (block of 16
// images, output channel) the dy pixels are held in registers and each tap is one dot product against the
// batch-minor x; per-thread partial sums reduced in thread order (WgradPartials).
template <int H>
void backward_weight_tiny_h(const Conv2dShape& s, const SparseConvPattern& p, const float* x, const float* dy,
                            float* dvalues, float* dbias) {
  constexpr int P = H * H;
  auto tap = [&](int64_t k) { return tiny_row_tap(p, k); };
  const TapPlan pl = tiny_plan(P, s.cin, s.cout, p.row_ptr, tap, p.density());
  const Tiling& t = pl.t;
  const int blocks = (s.n + 15) / 16;
  const std::vector<double> prefix = cost_prefix(s.cout, p.row_ptr, 1);
  WgradPartials<float> sums(p.nnz, s.cout, dbias != nullptr);
  parallel_ranges(blocks, prefix, [&](int tid, int parts, int64_t first, int64_t last) {
    float* acc = sums.values(tid, parts);
    float* xt = thread_scratch<float>(size_t(s.cin) * P * 16, 0);
    float* dyt = thread_scratch<float>(size_t(s.cout) * P * 16, 1);
    double* dbt = sums.bias(tid);
    for_each_group(first, last, s.cout, [&](int g, int ca, int cb) {
      const int n0 = g * 16, count = std::min(16, s.n - n0);
      to_batch_minor(x, s.cin, P, n0, count, xt);
      to_batch_minor(dy, s.cout, P, n0, count, dyt);
      if (dbt)
        for (int l = 0; l < count; ++l)
          for (int co = ca; co < cb; ++co) dbt[co] += plane_sum(dy + (int64_t(n0 + l) * s.cout + co) * P, P);
      for (int b = 0; b < t.nblk; ++b)
        for (int co = ca; co < cb; ++co) {
          const int64_t* sg = pl.seg.data() + (size_t(co) * t.nblk + b) * 9;
          if (sg[9] == sg[0]) continue;
          __m512 d[P];
          for (int q = 0; q < P; ++q) d[q] = _mm512_load_ps(dyt + (int64_t(co) * P + q) * 16);
          for (int cls = 0; cls < 9; ++cls) {
            if (sg[cls + 1] == sg[cls]) continue;
            with_tiny_class(cls, [&](auto ddy, auto ddx) {
              tiny_dots<H, decltype(ddy)::value, decltype(ddx)::value>(d, xt, pl.off.data() + sg[cls],
                                                                       pl.order.data() + sg[cls],
                                                                       sg[cls + 1] - sg[cls], acc,
                                                                       std::make_integer_sequence<int, P>{});
            });
          }
        }
    });
  });
  sums.finish(dvalues, dbias);
}

void backward_weight_tiny(const Conv2dShape& s, const SparseConvPattern& p, const float* x, const float* dy,
                          float* dvalues, float* dbias) {
  with_tiny_size(s.h, [&](auto h) { backward_weight_tiny_h<decltype(h)::value>(s, p, x, dy, dvalues, dbias); });
}

// ---------------------------------------------------------------------------------------------------
// Strip path (AVX-512, float): stride-1 3×3 pad-1 convolutions on maps 8, 16 or 32 wide, batch-minor as the
// tiny-map path (16 images per vector, every load one whole aligned vector) for maps too large to hold in
// registers. The copy [channel][1 + H + 1 rows][W][16 images] has a zero row above and below each plane, so
// the row a kept weight (ky, kx) reads is one offset (ky·W·16 past the strip's first row) and only the
// columns that fall off the map depend on it, at compile time through kx. The output is computed in strips
// of 16 pixels (16 accumulators in registers): 16 / W rows, or half a row of 32. Source channels are
// blocked so that one strip's rows of a block stay in L1 while every destination channel of the range runs
// its taps over them (a
// strip of an 8-wide map reads 4 rows of 8 pixels: 2 KB per channel). The row-padded pass it replaces is
// bound by unaligned loads (two of every three taps' vectors split a cache line); when, in use_strip. All
// three passes: the weight gradient holds a strip's 16 dy vectors in registers and takes one dot product
// per kept weight against the strip copy of x. Maps 7 and 14 wide (Fashion-MNIST's 28×28 ResNet stages 2
// and 3) run in rows of 8 and 16 pixels whose last column is zero in the copies and dropped from the output
// (a zero column reads as the padding it stands for), and 8-wide maps of odd height get a zero row more.
// Maps 28 to 32 wide (Fashion-MNIST's and CIFAR's first ResNet stage) run in half rows: rows of 32 pixels
// (zero columns past the map), strips of 16 pixels starting at column 0 or 16 of a row.
int strip_pitch(int w) {
  return w == 7 || w == 8 ? 8 : w == 14 || w == 15 || w == 16 ? 16 : w >= 28 && w <= 32 ? 32 : 0;
}

// Rows of a strip (one for the half-row strips).
constexpr int strip_rows(int pitch) { return pitch < 16 ? 16 / pitch : 1; }

MinorPlane strip_plane(const Conv2dShape& s) {
  const int pitch = strip_pitch(s.w), r = strip_rows(pitch);
  return MinorPlane{s.h, s.w, pitch, (s.h + r - 1) / r * r};
}

bool strip_eligible(const Conv2dShape& s) {
  if (!(s.stride == 1 && s.kh == 3 && s.kw == 3 && s.pad == 1 && strip_pitch(s.w) > 0)) return false;
  const MinorPlane g = strip_plane(s);
  return int64_t(std::max(s.cin, s.cout)) * (g.hp + 2) * g.pitch * 16 < INT32_MAX;
}

// Whether pixel P of a strip starting at column CB of a W-pitch row reads a stored column at shift DX (the
// columns past the map are zero in the copies, so only the row's ends are checked).
template <int W, int CB, int DX, int P>
constexpr bool strip_reads() {
  return (CB + P) % W + DX >= 0 && (CB + P) % W + DX < W;
}

// acc[p] += Σ_t val[t]·src[off[t] + 16·(p + DX)] for the n taps of one column shift DX = kx − 1, pixels p of
// a strip of 16 pixels from column CB (rows of W) whose column (CB + p) mod W + DX is in the row.
template <int W, int CB, int DX, int P>
SPARROW_ALWAYS_INLINE void strip_fma(__m512* acc, __m512 v, const float* x) {
  if constexpr (strip_reads<W, CB, DX, P>()) acc[P] = _mm512_fmadd_ps(v, _mm512_load_ps(x + 16 * (P + DX)), acc[P]);
}
template <int W, int CB, int DX, int... P>
SPARROW_ALWAYS_INLINE void strip_taps(__m512* acc, const float* src, const int32_t* off, const float* val, int64_t n,
                                      std::integer_sequence<int, P...>) {
  for (int64_t t = 0; t < n; ++t) {
    const __m512 v = _mm512_set1_ps(val[t]);
    const float* x = src + off[t];
    (strip_fma<W, CB, DX, P>(acc, v, x), ...);
  }
}

// f(IntC<CB>) for the first column of strip st (0, or 0 and 16 alternately on 32-pixel rows).
template <int W, typename F>
SPARROW_ALWAYS_INLINE void with_strip_column(int st, F&& f) {
  if constexpr (W == 32) {
    if (st & 1) return f(IntC<16>{});
  }
  f(IntC<0>{});
}

// Images [n0, n0 + count) of src (N × ch × h·w) into the strip copy (data rows 1..h of each plane of
// g.hp + 2 rows; the zero rows, the padding and, past count, the zero lanes are written here too).
void to_strip_copy(const float* src, int ch, const MinorPlane& g, int n0, int count, float* dst) {
  const int64_t P = g.pixels(), row = int64_t(g.pitch) * 16, plane = (g.hp + 2) * row;
  for (int c = 0; c < ch; ++c) {
    float* d = dst + c * plane;
    zero_row(d, row);
    plane_to_minor(src + (int64_t(n0) * ch + c) * P, int64_t(ch) * P, g, count, d + row);
    zero_row(d + (int64_t(g.hp) + 1) * row, row);
  }
}

// Whether the strip path beats the row-padded / masked ones. Few kept weights per call (a destination
// channel's taps in one L1 block of source channels, over one strip) leave the per-call accumulator loads and
// stores and the loop exits to dominate, and at low density the transposes in and out too. Measured against
// them (sparrow-bench-sparse-conv --threads 1 --clock cpu, binaries interleaved, 2 rounds, strip / old; since
// from_batch_minor writes eight images at a time, which sped the strips up most on power-of-two planes):
// - 8 wide (ResNet-20 64-64, VGG-11 128-256 and 256-256 8×8): at 5–10% forward 0.76–0.88, input gradient
//   0.61–1.05, weight gradient 0.49–0.86; at 2% forward 0.91–1.22, input gradient 0.74–0.95, weight
//   gradient 0.43–0.73. So the forward from 0.04, the gradients from 0.02.
// - 16 wide (ResNet-20 32-32, VGG-11 64-128 and 128-256 16×16; the row-padded pass has 8-vector spans
//   there): at 20% forward and input gradient 0.81–0.95, weight gradient 0.63–0.76; at 10% 0.93–1.07 and
//   0.71–0.86; at 5% 0.99–1.29 and 0.84–0.89. So the forward and input gradient from 0.15, the weight
//   gradient from 0.05.
// - padded planes (7 and 14 wide, 8 wide of odd height; without the strips the general passes run: the
//   row-padded ones need whole vectors per plane): Fashion-MNIST ResNet-20 64-64 7×7 and 32-32 14×14 at
//   5–70% (same command, --threads 2, one round each) 0.65–0.70 and 0.64–0.82 in all three passes. So
//   always (8 wide of odd height not measured: no such layer in the benchmark).
// - half-row strips (maps 28–32 wide in rows of 32), ResNet-20 16-16: 28×28 (padded; the general passes
//   otherwise; same command, 2 rounds, and --threads 2 wall time, 2 rounds) at 33–70% 0.64–0.85 in all
//   three passes, at 6.6% 0.52–0.75 (fwd, dgrad) and 0.90–0.99 (wgrad), but with 2 threads at 5% 1.0–1.3
//   and at 9% 0.5–0.9: so from 0.07. 32×32 (against the row-padded passes, whole aligned rows): forward
//   and input gradient at 50% 0.82–0.87, at 35% 0.94–1.15, at 17% 1.17–1.39; the weight gradient at 50%
//   0.71–0.75, at 35% 0.80–0.88, at 17% 0.96–1.10. So from 0.4, and the weight gradient from 0.25.
// Repeated runs of one binary on this shared machine differ by up to 15%, so only the large ratios count.
bool use_strip(const Conv2dShape& s, const SparseConvPattern& p, MaskedPass pass) {
  if (!strip_eligible(s)) return false;
  const MinorPlane g = strip_plane(s);
  const bool wgrad = pass == MaskedPass::WeightGrad;
  if (g.pitch == 32) return p.density() >= (g.padded() ? 0.07 : wgrad ? 0.25 : 0.4);
  if (g.padded()) return true;  // the row-padded passes need whole vectors per plane
  if (g.pitch == 8) return p.density() >= (pass == MaskedPass::Forward ? 0.04 : 0.02);
  return p.density() >= (wgrad ? 0.05 : 0.15);
}

// Per (destination channel, L1 block of source channels) the taps in runs by kx: run (c·nblk + b)·3 + kx,
// off the tap's offset in the strip copy past the strip's first row (source channel plane + ky rows).

template <int W, typename TapOf>
TapPlan strip_plan(const MinorPlane& g, int src_ch, int dst_ch, const std::vector<int64_t>& ptr, TapOf tap,
                   double density) {
  constexpr int R = strip_rows(W);
  const int64_t plane = int64_t(g.hp + 2) * W * 16;
  TapPlan pl;
  pl.t = make_tiling<float>(int64_t(R + 2) * W * 16, 0, 1, src_ch, density * 9);
  const int nblk = pl.t.nblk;
  const int64_t nnz = ptr[size_t(dst_ch)];
  std::vector<int64_t> run(static_cast<size_t>(nnz));
  std::vector<int32_t> off_of(static_cast<size_t>(nnz));
  for (int c = 0; c < dst_ch; ++c)
    for (int64_t k = ptr[size_t(c)]; k < ptr[size_t(c) + 1]; ++k) {
      const auto [ch, ky, kx] = tap(k);
      run[size_t(k)] = (int64_t(c) * nblk + ch / pl.t.block) * 3 + kx;
      off_of[size_t(k)] = int32_t(ch * plane + int64_t(ky) * W * 16);
    }
  sort_taps(pl, size_t(dst_ch) * nblk * 3, run, off_of);
  return pl;
}

// dst[n][c][p] = init(c) + Σ over c's taps of val·src[n][ch][p + (ky − 1)·W + kx − 1] (off the map: 0), for
// the forward (src = x over the pattern's rows) and the input gradient (src = dy over its columns, the
// filter flipped). tap(k) = {source channel, ky, kx} of the caller's entry k; g the destination plane, whose
// geometry the source copy (copy_in(n0, count, xt): src_ch planes of g.hp + 2 rows) shares.
template <int W, typename CopyIn, typename TapOf>
void strip_pass(const Conv2dShape& s, const MinorPlane& g, int src_ch, int dst_ch, CopyIn copy_in,
                const std::vector<int64_t>& ptr, TapOf tap, const float* val_of_k, double density, const float* bias,
                float* dst, ChannelMoments* moments, const char* op) {
  const int strips = int(g.stored() / 16);
  const int64_t P = g.stored(), plane = int64_t(g.hp + 2) * W * 16;
  const TapPlan pl = strip_plan<W>(g, src_ch, dst_ch, ptr, tap, density);
  const int nblk = pl.t.nblk;
  std::vector<float> val(pl.order.size());
  for (size_t i = 0; i < val.size(); ++i) val[i] = val_of_k[pl.order[i]];
  batch_minor_pass(
      s, dst_ch, ptr, g, size_t(src_ch) * size_t(plane), dst, moments, op, copy_in,
      [&](const float* xt, float* yt, int ca, int cb) {
        for (int b = 0; b < nblk; ++b)
          for (int st = 0; st < strips; ++st) with_strip_column<W>(st, [&](auto cb_) {
            constexpr int CB = decltype(cb_)::value;
            const float* xs = xt + int64_t(st) * 16 * 16;
            for (int c = ca; c < cb; ++c) {
              const int64_t* sg = pl.seg.data() + (size_t(c) * nblk + b) * 3;
              if (b > 0 && sg[3] == sg[0]) continue;
              float* o = yt + (int64_t(c - ca) * P + int64_t(st) * 16) * 16;
              __m512 acc[16];
              for (int q = 0; q < 16; ++q)
                acc[q] = b > 0 ? _mm512_load_ps(o + 16 * q) : _mm512_set1_ps(bias ? bias[c] : 0.0f);
              constexpr auto pix = std::make_integer_sequence<int, 16>{};
              const int32_t* off = pl.off.data();
              const float* v = val.data();
              if (sg[1] > sg[0]) strip_taps<W, CB, -1>(acc, xs, off + sg[0], v + sg[0], sg[1] - sg[0], pix);
              if (sg[2] > sg[1]) strip_taps<W, CB, 0>(acc, xs, off + sg[1], v + sg[1], sg[2] - sg[1], pix);
              if (sg[3] > sg[2]) strip_taps<W, CB, 1>(acc, xs, off + sg[2], v + sg[2], sg[3] - sg[2], pix);
              for (int q = 0; q < 16; ++q) _mm512_store_ps(o + 16 * q, acc[q]);
            }
          });
      });
}

template <typename F>
inline void with_strip_width(int w, F&& f) {
  if (strip_pitch(w) == 8) f(IntC<8>{});
  else if (strip_pitch(w) == 16) f(IntC<16>{});
  else if (strip_pitch(w) == 32) f(IntC<32>{});
}

void forward_strip(const Conv2dShape& s, const SparseConvPattern& p, const float* values, const float* x,
                   const float* bias, float* y, ChannelMoments* moments) {
  auto tap = [&](int64_t k) { return row_tap(p, k); };
  const MinorPlane g = strip_plane(s);
  auto copy_in = [&](int n0, int count, float* xt) { to_strip_copy(x, s.cin, g, n0, count, xt); };
  with_strip_width(s.w, [&](auto w) {
    strip_pass<decltype(w)::value>(s, g, s.cin, s.cout, copy_in, p.row_ptr, tap, values, p.density(), bias, y,
                                   moments, "sparse_conv2d_forward_cpu");
  });
}

void backward_input_strip(const Conv2dShape& s, const SparseConvPattern& p, const float* values, const float* dy,
                          float* dx) {
  const ColumnTaps ct = column_taps(s, p, values);
  auto tap = [&](int64_t e) {
    const int32_t k = p.col_entry[size_t(e)];
    return Tap{ct.row_of[size_t(k)], 2 - p.tap_ky[size_t(k)], 2 - p.tap_kx[size_t(k)]};
  };
  const MinorPlane g = strip_plane(s);
  auto copy_in = [&](int n0, int count, float* xt) { to_strip_copy(dy, s.cout, g, n0, count, xt); };
  with_strip_width(s.w, [&](auto w) {
    strip_pass<decltype(w)::value>(s, g, s.cout, s.cin, copy_in, p.col_ptr, tap, ct.val.data(), p.density(),
                                   nullptr, dx, nullptr, "sparse_conv2d_backward_input_cpu");
  });
}

// res[order[t]] += Σ_p Σ_lanes d[p]·src[off[t] + 16·(p + DX)] over a strip's pixels p that read a stored
// column (strip_reads), for the n taps of one column shift; four taps at a time (eight FMA chains), reduced
// together by hsum4.
template <int W, int CB, int DX, int P>
SPARROW_ALWAYS_INLINE void strip_dot_fma(const __m512* d, const float* x, __m512* acc2) {
  if constexpr (strip_reads<W, CB, DX, P>())
    acc2[P % 2] = _mm512_fmadd_ps(d[P], _mm512_load_ps(x + 16 * (P + DX)), acc2[P % 2]);
}
template <int W, int CB, int DX, int... P>
SPARROW_ALWAYS_INLINE void strip_dots(const __m512* d, const float* src, const int32_t* off, const int32_t* order,
                                      int64_t n, float* res, std::integer_sequence<int, P...>) {
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    __m512 a0[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, a1[2] = {a0[0], a0[0]}, a2[2] = {a0[0], a0[0]},
           a3[2] = {a0[0], a0[0]};
    const float *x0 = src + off[t], *x1 = src + off[t + 1], *x2 = src + off[t + 2], *x3 = src + off[t + 3];
    ((strip_dot_fma<W, CB, DX, P>(d, x0, a0), strip_dot_fma<W, CB, DX, P>(d, x1, a1),
      strip_dot_fma<W, CB, DX, P>(d, x2, a2), strip_dot_fma<W, CB, DX, P>(d, x3, a3)),
     ...);
    alignas(16) float sum[4];
    _mm_store_ps(sum, hsum4(_mm512_add_ps(a0[0], a0[1]), _mm512_add_ps(a1[0], a1[1]),
                            _mm512_add_ps(a2[0], a2[1]), _mm512_add_ps(a3[0], a3[1])));
    for (int i = 0; i < 4; ++i) res[order[t + i]] += sum[i];
  }
  for (; t < n; ++t) {
    __m512 a[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    (strip_dot_fma<W, CB, DX, P>(d, src + off[t], a), ...);
    res[order[t]] += hsum<float>(_mm512_add_ps(a[0], a[1]));
  }
}

// dvalues[k] = Σ_n Σ_p dy[n][co][p]·x[n][ci][p + (ky − 1)·W + kx − 1] on the strip layout: per (block of 16
// images, L1 block of input channels, strip, output channel) the strip's 16 dy vectors are held in
// registers and each kept weight is one dot product against the strip copy of x; per-thread partial sums
// reduced in thread order (WgradPartials), as the tiny-map weight gradient.
template <int W, typename CopyX, typename TapOf>
void backward_weight_strip_w(const Conv2dShape& s, const MinorPlane& g, int src_ch, CopyX copy_x, TapOf tap,
                             const SparseConvPattern& p, const float* dy, float* dvalues, float* dbias) {
  const int strips = int(g.stored() / 16);
  const int64_t P = g.pixels(), Pt = g.stored(), plane = int64_t(g.hp + 2) * W * 16;
  const TapPlan pl = strip_plan<W>(g, src_ch, s.cout, p.row_ptr, tap, p.density());
  const int nblk = pl.t.nblk;
  const int blocks = (s.n + 15) / 16;
  const std::vector<double> prefix = cost_prefix(s.cout, p.row_ptr, 1);
  WgradPartials<float> sums(p.nnz, s.cout, dbias != nullptr);
  parallel_ranges(blocks, prefix, [&](int tid, int parts, int64_t first, int64_t last) {
    float* acc = sums.values(tid, parts);
    float* xt = thread_scratch<float>(size_t(src_ch) * size_t(plane), 0);
    float* dyt = thread_scratch<float>(size_t(s.cout) * size_t(Pt) * 16, 1);
    double* dbt = sums.bias(tid);
    for_each_group(first, last, s.cout, [&](int grp, int ca, int cb) {
      const int n0 = grp * 16, count = std::min(16, s.n - n0);
      copy_x(n0, count, xt);
      to_batch_minor(dy, s.cout, g, n0, count, dyt);  // padding zero: it adds nothing to the dot products
      if (dbt)
        for (int l = 0; l < count; ++l)
          for (int co = ca; co < cb; ++co) dbt[co] += plane_sum(dy + (int64_t(n0 + l) * s.cout + co) * P, P);
      constexpr auto pix = std::make_integer_sequence<int, 16>{};
      for (int b = 0; b < nblk; ++b)
        for (int st = 0; st < strips; ++st) with_strip_column<W>(st, [&](auto cb_) {
          constexpr int CB = decltype(cb_)::value;
          const float* xs = xt + int64_t(st) * 16 * 16;
          for (int co = ca; co < cb; ++co) {
            const int64_t* sg = pl.seg.data() + (size_t(co) * nblk + b) * 3;
            if (sg[3] == sg[0]) continue;
            __m512 d[16];
            const float* dp = dyt + (int64_t(co) * Pt + int64_t(st) * 16) * 16;
            for (int q = 0; q < 16; ++q) d[q] = _mm512_load_ps(dp + 16 * q);
            const int32_t *off = pl.off.data(), *order = pl.order.data();
            if (sg[1] > sg[0]) strip_dots<W, CB, -1>(d, xs, off + sg[0], order + sg[0], sg[1] - sg[0], acc, pix);
            if (sg[2] > sg[1]) strip_dots<W, CB, 0>(d, xs, off + sg[1], order + sg[1], sg[2] - sg[1], acc, pix);
            if (sg[3] > sg[2]) strip_dots<W, CB, 1>(d, xs, off + sg[2], order + sg[2], sg[3] - sg[2], acc, pix);
          }
        });
    });
  });
  sums.finish(dvalues, dbias);
}

void backward_weight_strip(const Conv2dShape& s, const SparseConvPattern& p, const float* x, const float* dy,
                           float* dvalues, float* dbias) {
  auto tap = [&](int64_t k) { return row_tap(p, k); };
  const MinorPlane g = strip_plane(s);
  auto copy_x = [&](int n0, int count, float* xt) { to_strip_copy(x, s.cin, g, n0, count, xt); };
  with_strip_width(s.w, [&](auto w) {
    backward_weight_strip_w<decltype(w)::value>(s, g, s.cin, copy_x, tap, p, dy, dvalues, dbias);
  });
}

// Stride-2 strips (the forward and the weight gradient of 3×3 pad-1 stride-2 layers on even maps whose
// output is 7, 8, 14 or 16 wide: ResNet's stage entries): x split into its four stride phases (even/odd
// rows × even/odd columns), each laid out as the strip copy of an output-sized plane, so a tap (ky, kx)
// reads phase ((ky + 1) mod 2, (kx + 1) mod 2) of its channel shifted by −1 or 0 rows and columns (ky = 0
// reads the odd rows one up). The taps become those of a 2×2 stride-1 filter over 4·cin source planes and
// run through the stride-1 passes unchanged. The input gradient keeps the general path. Against the
// general passes (sparrow-bench-sparse-conv --threads 1 --clock cpu --layer " s2", 2 rounds): ResNet-20
// 16-32 32×32 and 32-64 16×16 at 2–60% 0.48–0.77 in both passes, Fashion-MNIST's 16-32 28×28 and 32-64
// 14×14 0.53–0.95; so whenever eligible.
MinorPlane strip_plane_s2(const Conv2dShape& s) {
  const int pitch = strip_pitch(s.ow()), r = strip_rows(pitch);
  return MinorPlane{s.oh(), s.ow(), pitch, (s.oh() + r - 1) / r * r};
}

bool strip_s2_eligible(const Conv2dShape& s) {
  if (!(s.stride == 2 && s.kh == 3 && s.kw == 3 && s.pad == 1 && s.h % 2 == 0 && s.w % 2 == 0)) return false;
  const int pitch = strip_pitch(s.ow());
  if (pitch != 8 && pitch != 16) return false;
  const MinorPlane g = strip_plane_s2(s);
  return int64_t(4) * std::max(s.cin, s.cout) * (g.hp + 2) * g.pitch * 16 < INT32_MAX;
}

inline Tap strip_s2_tap(const SparseConvPattern& p, int64_t k) {
  const Tap t = row_tap(p, k);
  return Tap{t.ch * 4 + (t.ky == 1 ? 0 : 2) + (t.kx == 1 ? 0 : 1), t.ky == 0 ? 0 : 1, t.kx == 0 ? 0 : 1};
}

// Images [n0, n0 + count) of x (N × cin × h × w) into the phase strip copy: plane ci·4 + py·2 + px holds
// x[2·qy + py][2·qx + px] at data row qy (rows 1..oh of g.hp + 2), zero elsewhere. The map is even, so
// every phase is exactly oh × ow (= h/2 × w/2).
void to_strip_copy_s2(const Conv2dShape& s, const float* x, const MinorPlane& g, int n0, int count, float* dst) {
  const int64_t hw = int64_t(s.h) * s.w, row = int64_t(g.pitch) * 16, plane = (g.hp + 2) * row;
  alignas(64) float tmp[16 * 16];
  for (int ci = 0; ci < s.cin; ++ci)
    for (int ph = 0; ph < 4; ++ph) {
      const int py = ph / 2, px = ph % 2;
      float* d = dst + (int64_t(ci) * 4 + ph) * plane;
      zero_row(d, plane);
      for (int qy = 0; qy < g.h; ++qy) {
        const float* xr = x + int64_t(2 * qy + py) * s.w + px;
        for (int l = 0; l < count; ++l) copy_strided(tmp + l * 16, xr + (int64_t(n0 + l) * s.cin + ci) * hw, g.w, 2);
        transpose_matrix<float>(count, g.w, tmp, 16, d + (qy + 1) * row, 16);
      }
    }
}

void forward_strip_s2(const Conv2dShape& s, const SparseConvPattern& p, const float* values, const float* x,
                      const float* bias, float* y, ChannelMoments* moments) {
  auto tap = [&](int64_t k) { return strip_s2_tap(p, k); };
  const MinorPlane g = strip_plane_s2(s);
  auto copy_in = [&](int n0, int count, float* xt) { to_strip_copy_s2(s, x, g, n0, count, xt); };
  with_strip_width(s.ow(), [&](auto w) {
    strip_pass<decltype(w)::value>(s, g, 4 * s.cin, s.cout, copy_in, p.row_ptr, tap, values, p.density(), bias, y,
                                   moments, "sparse_conv2d_forward_cpu");
  });
}

void backward_weight_strip_s2(const Conv2dShape& s, const SparseConvPattern& p, const float* x, const float* dy,
                              float* dvalues, float* dbias) {
  auto tap = [&](int64_t k) { return strip_s2_tap(p, k); };
  const MinorPlane g = strip_plane_s2(s);
  auto copy_x = [&](int n0, int count, float* xt) { to_strip_copy_s2(s, x, g, n0, count, xt); };
  with_strip_width(s.ow(), [&](auto w) {
    backward_weight_strip_w<decltype(w)::value>(s, g, 4 * s.cin, copy_x, tap, p, dy, dvalues, dbias);
  });
}

#endif

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Pattern construction and value conversion.

SparseConvPattern sparse_conv_pattern_from_mask(const Conv2dShape& s, const float* mask) {
  check_filter(s, "sparse_conv_pattern_from_mask");
  const int64_t n = s.w_size();
  SPARROW_CHECK(mask != nullptr || n == 0, "sparse_conv_pattern_from_mask: null mask");
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < n; ++i)
    if (mask[i] != 0.0f) idx.push_back(i);
  return build_pattern(s, idx);
}

SparseConvPattern sparse_conv_pattern_from_indices(const Conv2dShape& s, const int64_t* idx, int64_t nnz) {
  check_filter(s, "sparse_conv_pattern_from_indices");
  const int64_t n = s.w_size();
  SPARROW_CHECK(nnz >= 0 && nnz <= n, "sparse_conv_pattern_from_indices: nnz ", nnz, " outside [0, ", n,
                "] for weight ", s.cout, "x", s.cin, "x", s.kh, "x", s.kw);
  std::vector<int64_t> v(idx, idx + nnz);
  for (int64_t k = 0; k < nnz; ++k) {
    SPARROW_CHECK(v[size_t(k)] >= 0 && v[size_t(k)] < n, "sparse_conv_pattern_from_indices: index ", v[size_t(k)],
                  " at position ", k, " outside [0, ", n, ")");
    SPARROW_CHECK(k == 0 || v[size_t(k)] > v[size_t(k - 1)], "sparse_conv_pattern_from_indices: indices not "
                  "strictly ascending at position ", k, " (", v[size_t(k - 1)], ", ", v[size_t(k)], ")");
  }
  return build_pattern(s, v);
}

template <typename T>
void sparse_conv_gather_values(const SparseConvPattern& p, const T* w, T* values) {
  for (int64_t k = 0; k < p.nnz; ++k) values[k] = w[p.index[size_t(k)]];
}

template <typename T>
void sparse_conv_scatter_values(const SparseConvPattern& p, const T* values, T* w) {
  std::fill(w, w + p.dense_size(), T(0));
  for (int64_t k = 0; k < p.nnz; ++k) w[p.index[size_t(k)]] = values[k];
}

void sparse_conv_check_shape(const Conv2dShape& s, const SparseConvPattern& p, const char* op) {
  SPARROW_CHECK(s.n > 0 && s.cin > 0 && s.h > 0 && s.w > 0 && s.cout > 0 && s.kh > 0 && s.kw > 0 &&
                    s.stride > 0 && s.pad >= 0,
                op, ": invalid shape n=", s.n, " cin=", s.cin, " h=", s.h, " w=", s.w, " cout=", s.cout,
                " k=", s.kh, "x", s.kw, " stride=", s.stride, " pad=", s.pad);
  SPARROW_CHECK(s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw, op, ": kernel ", s.kh, "x", s.kw,
                " larger than the padded input ", s.h + 2 * s.pad, "x", s.w + 2 * s.pad);
  SPARROW_CHECK(s.cout == p.cout && s.cin == p.cin && s.kh == p.kh && s.kw == p.kw && s.stride == p.stride &&
                    s.pad == p.pad,
                op, ": shape cout=", s.cout, " cin=", s.cin, " k=", s.kh, "x", s.kw, " stride=", s.stride,
                " pad=", s.pad, " does not match the pattern's cout=", p.cout, " cin=", p.cin, " k=", p.kh, "x",
                p.kw, " stride=", p.stride, " pad=", p.pad);
  SPARROW_CHECK(int64_t(p.row_ptr.size()) == int64_t(p.cout) + 1 && int64_t(p.col_entry.size()) == p.nnz, op,
                ": pattern arrays inconsistent (build it with sparse_conv_pattern_from_mask/_from_indices)");
}

// ---------------------------------------------------------------------------------------------------
// References: plain loops over the pattern, double accumulation, gather form only.

template <typename T>
void sparse_conv2d_forward_ref_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values,
                                   const T* x, const T* bias, T* y) {
  sparse_conv_check_shape(s, p, "sparse_conv2d_forward_ref_cpu");
  const int oh = s.oh(), ow = s.ow();
  for (int n = 0; n < s.n; ++n)
    for (int co = 0; co < s.cout; ++co)
      for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox) {
          double acc = bias ? double(bias[co]) : 0.0;
          for (int64_t k = p.row_ptr[size_t(co)]; k < p.row_ptr[size_t(co) + 1]; ++k) {
            const int iy = conv_in_y(s, oy, p.tap_ky[size_t(k)]), ix = conv_in_x(s, ox, p.tap_kx[size_t(k)]);
            if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
            acc += double(values[k]) * double(x[((int64_t(n) * s.cin + p.tap_ci[size_t(k)]) * s.h + iy) * s.w + ix]);
          }
          y[((int64_t(n) * s.cout + co) * oh + oy) * ow + ox] = T(acc);
        }
}

template <typename T>
void sparse_conv2d_backward_input_ref_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values,
                                          const T* dy, T* dx) {
  sparse_conv_check_shape(s, p, "sparse_conv2d_backward_input_ref_cpu");
  const int oh = s.oh(), ow = s.ow();
  const int64_t khw = int64_t(s.kh) * s.kw, k_row = s.cin * khw;
  for (int n = 0; n < s.n; ++n)
    for (int ci = 0; ci < s.cin; ++ci)
      for (int iy = 0; iy < s.h; ++iy)
        for (int ix = 0; ix < s.w; ++ix) {
          double acc = 0.0;
          // Every kept weight of input channel ci, found through the transposed pattern (all phases).
          for (int64_t e = p.col_ptr[size_t(ci) * s.stride * s.stride];
               e < p.col_ptr[size_t(ci + 1) * s.stride * s.stride]; ++e) {
            const int32_t k = p.col_entry[size_t(e)];
            const int co = int(p.index[size_t(k)] / k_row);
            const int ty = iy + s.pad - p.tap_ky[size_t(k)], tx = ix + s.pad - p.tap_kx[size_t(k)];
            if (ty < 0 || tx < 0 || ty % s.stride != 0 || tx % s.stride != 0) continue;
            const int oy = ty / s.stride, ox = tx / s.stride;
            if (oy >= oh || ox >= ow) continue;
            acc += double(values[k]) * double(dy[((int64_t(n) * s.cout + co) * oh + oy) * ow + ox]);
          }
          dx[((int64_t(n) * s.cin + ci) * s.h + iy) * s.w + ix] = T(acc);
        }
}

template <typename T>
void sparse_conv2d_backward_weight_ref_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* x,
                                           const T* dy, T* dvalues, T* dbias) {
  sparse_conv_check_shape(s, p, "sparse_conv2d_backward_weight_ref_cpu");
  const int oh = s.oh(), ow = s.ow();
  for (int co = 0; co < s.cout; ++co) {
    for (int64_t k = p.row_ptr[size_t(co)]; k < p.row_ptr[size_t(co) + 1]; ++k) {
      const int ci = p.tap_ci[size_t(k)], ky = p.tap_ky[size_t(k)], kx = p.tap_kx[size_t(k)];
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
      dvalues[k] = T(acc);
    }
    if (dbias) {
      double acc = 0.0;
      for (int n = 0; n < s.n; ++n)
        for (int64_t q = 0; q < int64_t(oh) * ow; ++q) acc += double(dy[(int64_t(n) * s.cout + co) * oh * ow + q]);
      dbias[co] = T(acc);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Fast path. Work items are (image group, channel) pairs; each thread takes a contiguous range of
// near-equal kept-weight count, so it copies each of its image groups once (a group split between two
// threads is copied by both), then runs the L1-tiled loops over its channel range.

template <typename T>
void sparse_conv2d_forward_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values, const T* x,
                               const T* bias, T* y, ChannelMoments* moments) {
  sparse_conv_check_shape(s, p, "sparse_conv2d_forward_cpu");
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (tiny_eligible(s)) return forward_tiny(s, p, values, x, bias, y, moments);
    if (use_strip(s, p, MaskedPass::Forward)) return forward_strip(s, p, values, x, bias, y, moments);
    if (strip_s2_eligible(s)) return forward_strip_s2(s, p, values, x, bias, y, moments);
    if (use_masked<T>(s, p, MaskedPass::Forward)) return forward_masked(s, p, values, x, bias, y, moments);
    if (rowpad_eligible(s)) return forward_rowpad(s, p, values, x, bias, y, moments);
  }
#endif
  constexpr int W = kLanes<T>;
  const SrcGeom g = src_geom<T>(s, p, true);
  const std::vector<int32_t> off = src_offsets(g, p);
  const int oh = s.oh(), ow = s.ow(), groups = (s.n + g.group - 1) / g.group;
  const int64_t P = int64_t(oh) * ow, xs = int64_t(s.cin) * s.h * s.w;
  const int phases = int(std::count(g.phase_used.begin(), g.phase_used.end(), 1));
  const Tiling t = make_tiling<T>(kBlockVecs * W, (s.kh - 1) / s.stride * g.pitch + (s.kw - 1) / s.stride,
                                  phases * g.copies, s.cin, p.density() * s.kh * s.kw,
                                  g.aligned ? kL2TileBytes : kL1TileBytes);
  const std::vector<int64_t> bp = block_pointers(
      s.cout, t, [&](int co) { return p.row_ptr[size_t(co)]; }, [&](int64_t k) { return p.tap_ci[size_t(k)]; });
  const std::vector<double> prefix = cost_prefix(s.cout, p.row_ptr, 1);
  // Moments: one piece per (thread, channel), merged in thread order below.
  std::vector<std::vector<MomentPiece>> pieces(moments ? size_t(omp_get_max_threads()) : 0);
  parallel_ranges(groups, prefix, [&](int tid, int, int64_t first, int64_t last) {
    T* xp = g.direct ? nullptr : thread_scratch<T>(size_t(g.img), 0);
    T* obuf = g.out_direct ? nullptr : thread_scratch<T>(size_t(s.cout) * g.len, 1);
    MomentPiece* piece = nullptr;
    if (moments) {
      pieces[size_t(tid)].assign(size_t(s.cout), MomentPiece{});
      piece = pieces[size_t(tid)].data();
    }
    for_each_group(first, last, s.cout, [&](int grp, int ca, int cb) {
      const int n0 = grp * g.group, count = std::min(g.group, s.n - n0);
      if (!g.direct) fill_src(s, g, x, n0, count, xp);
      const T* src = g.direct ? x + n0 * xs : xp;
      auto out_of = [&](int co) {
        return g.out_direct ? y + (int64_t(n0) * s.cout + co) * P : obuf + (co - ca) * g.len;
      };
      for (int64_t j0 = 0; j0 < g.len; j0 += t.span) {
        const int nv = int(std::min(t.span, g.len - j0) / W);
        for (int b = 0; b < t.nblk; ++b)
          for (int co = ca; co < cb; ++co) {
            const int64_t k0 = bp[size_t(co) * (t.nblk + 1) + b], k1 = bp[size_t(co) * (t.nblk + 1) + b + 1];
            if (b > 0 && k1 == k0) continue;
            taps_span(src + j0, off.data() + k0, values + k0, k1 - k0, nv, b == 0, bias ? bias[co] : T(0),
                      out_of(co) + j0);
          }
      }
      if (g.out_direct) {
        if (piece)  // the planes were just written: summed from cache
          for (int co = ca; co < cb; ++co) piece[co].add(out_of(co), P);
        return;
      }
      for (int co = ca; co < cb; ++co)
        for (int gi = 0; gi < count; ++gi) {
          T* yp = y + (int64_t(n0 + gi) * s.cout + co) * P;
          const T* o = out_of(co) + int64_t(gi) * g.cs;
          for (int oy = 0; oy < oh; ++oy) copy_row(yp + int64_t(oy) * ow, o + oy * g.pitch, ow);
          if (piece) piece[co].add(yp, P);  // the plane just written, from cache
        }
    });
  });
  if (moments) finish_moments(pieces, s.cout, int64_t(s.n) * P, moments, "sparse_conv2d_forward_cpu");
}

template <typename T>
void sparse_conv2d_backward_input_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values,
                                      const T* dy, T* dx) {
  sparse_conv_check_shape(s, p, "sparse_conv2d_backward_input_cpu");
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (tiny_eligible(s)) return backward_input_tiny(s, p, values, dy, dx);
    if (use_strip(s, p, MaskedPass::InputGrad)) return backward_input_strip(s, p, values, dy, dx);
    if (use_masked<T>(s, p, MaskedPass::InputGrad)) return backward_input_masked(s, p, values, dy, dx);
    if (rowpad_eligible(s)) return backward_input_rowpad(s, p, values, dy, dx);
  }
#endif
  constexpr int W = kLanes<T>;
  const GradGeom g = grad_geom<T>(s);
  const int st = s.stride, ss = st * st;
  // Per call, O(nnz): offsets into the padded dy, values and output channels in transposed order.
  std::vector<int32_t> row_of(size_t(p.nnz)), off(size_t(p.nnz)), co_of(size_t(p.nnz));
  std::vector<T> val(size_t(p.nnz));
  for (int co = 0; co < s.cout; ++co)
    for (int64_t k = p.row_ptr[size_t(co)]; k < p.row_ptr[size_t(co) + 1]; ++k) row_of[size_t(k)] = co;
  for (int64_t e = 0; e < p.nnz; ++e) {
    const int32_t k = p.col_entry[size_t(e)];
    const int co = row_of[size_t(k)], ky = p.tap_ky[size_t(k)], kx = p.tap_kx[size_t(k)];
    const int dyo = st == 1 ? s.pad - ky : -floordiv(ky - s.pad, st);
    const int dxo = st == 1 ? s.pad - kx : -floordiv(kx - s.pad, st);
    off[size_t(e)] = int32_t(co * g.plane + int64_t(dyo + g.pt) * g.pitch + dxo + g.pl);
    co_of[size_t(e)] = co;
    val[size_t(e)] = values[k];
  }
  const Tiling t = make_tiling<T>(kBlockVecs * W, ((s.kh + st - 1) / st) * g.pitch + (s.kw + st - 1) / st, 1,
                                  s.cout, p.density() * s.kh * s.kw);
  const int cols = s.cin * ss;  // transposed rows: (ci, phase)
  const std::vector<int64_t> bp = block_pointers(
      cols, t, [&](int c) { return p.col_ptr[size_t(c)]; }, [&](int64_t e) { return co_of[size_t(e)]; });
  const int groups = (s.n + g.group - 1) / g.group;
  const int64_t hw = int64_t(s.h) * s.w, ys = int64_t(s.cout) * s.oh() * s.ow();
  const int64_t max_len = round_up(g.plane, W);
  const std::vector<double> prefix = cost_prefix(s.cin, p.col_ptr, ss);
  parallel_ranges(groups, prefix, [&](int, int, int64_t first, int64_t last) {
    T* dyp = g.direct ? nullptr : thread_scratch<T>(size_t(g.img), 0);
    T* obuf = g.direct ? nullptr : thread_scratch<T>(size_t(s.cin) * max_len, 1);
    for_each_group(first, last, s.cin, [&](int grp, int ca, int cb) {
      const int n0 = grp * g.group, count = std::min(g.group, s.n - n0);
      if (!g.direct) fill_grad(s, g, dy, n0, count, dyp);
      const T* src = g.direct ? dy + n0 * ys : dyp;
      for (int ry = 0; ry < std::min(st, s.h); ++ry)
        for (int rx = 0; rx < std::min(st, s.w); ++rx) {
          const int ph = ry * st + rx;
          const int qh = (s.h - ry + st - 1) / st, qw = (s.w - rx + st - 1) / st;
          const int64_t len = g.direct ? hw : round_up(qh * g.pitch, W);
          auto out_of = [&](int ci) {
            return g.direct ? dx + (int64_t(n0) * s.cin + ci) * hw : obuf + (ci - ca) * len;
          };
          for (int64_t j0 = 0; j0 < len; j0 += t.span) {
            const int nv = int(std::min(t.span, len - j0) / W);
            for (int b = 0; b < t.nblk; ++b)
              for (int ci = ca; ci < cb; ++ci) {
                const size_t r = (size_t(ci) * ss + ph) * (t.nblk + 1) + b;
                const int64_t e0 = bp[r], e1 = bp[r + 1];
                if (b > 0 && e1 == e0) continue;
                taps_span(src + j0, off.data() + e0, val.data() + e0, e1 - e0, nv, b == 0, T(0), out_of(ci) + j0);
              }
          }
          if (g.direct) continue;
          for (int ci = ca; ci < cb; ++ci)
            for (int gi = 0; gi < count; ++gi) {
              T* dxp = dx + (int64_t(n0 + gi) * s.cin + ci) * hw;
              const T* ob = out_of(ci) + int64_t(gi) * g.cs;
              for (int qy = 0; qy < qh; ++qy) {
                T* d = dxp + int64_t(qy * st + ry) * s.w + rx;
                const T* o = ob + qy * g.pitch;
                if (st == 1)
                  copy_row(d, o, qw);
                else
                  for (int qx = 0; qx < qw; ++qx) d[int64_t(qx) * st] = o[qx];
              }
            }
        }
    });
  });
}

template <typename T>
void sparse_conv2d_backward_weight_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* x,
                                       const T* dy, T* dvalues, T* dbias) {
  sparse_conv_check_shape(s, p, "sparse_conv2d_backward_weight_cpu");
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (tiny_eligible(s)) return backward_weight_tiny(s, p, x, dy, dvalues, dbias);
    if (use_strip(s, p, MaskedPass::WeightGrad)) return backward_weight_strip(s, p, x, dy, dvalues, dbias);
    if (strip_s2_eligible(s)) return backward_weight_strip_s2(s, p, x, dy, dvalues, dbias);
    if (use_masked<T>(s, p, MaskedPass::WeightGrad)) return backward_weight_masked(s, p, x, dy, dvalues, dbias);
    if (rowpad_eligible(s) && s.w >= 16) return backward_weight_rowpad(s, p, x, dy, dvalues, dbias);
  }
#endif
  constexpr int W = kLanes<T>;
  const SrcGeom g = src_geom<T>(s, p, false);
  const std::vector<int32_t> off = src_offsets(g, p);
  const int oh = s.oh(), ow = s.ow(), groups = (s.n + g.group - 1) / g.group;
  const int64_t P = int64_t(oh) * ow, xs = int64_t(s.cin) * s.h * s.w;
  const int phases = int(std::count(g.phase_used.begin(), g.phase_used.end(), 1));
  const Tiling t = make_tiling<T>(kWgradSpanVecs * W, (s.kh - 1) / s.stride * g.pitch + (s.kw - 1) / s.stride,
                                  phases * g.copies, s.cin, p.density() * s.kh * s.kw,
                                  g.aligned ? kL2TileBytes : kL1TileBytes);
  const std::vector<int64_t> bp = block_pointers(
      s.cout, t, [&](int co) { return p.row_ptr[size_t(co)]; }, [&](int64_t k) { return p.tap_ci[size_t(k)]; });
  const std::vector<double> prefix = cost_prefix(s.cout, p.row_ptr, 1);
  WgradPartials<T> sums(p.nnz, s.cout, dbias != nullptr);
  parallel_ranges(groups, prefix, [&](int tid, int parts, int64_t first, int64_t last) {
    T* acc = sums.values(tid, parts);
    T* xp = g.direct ? nullptr : thread_scratch<T>(size_t(g.img), 0);
    // dy of the group in the output layout; discarded columns and the rounding stay zero throughout.
    T* dyb = g.out_direct ? nullptr : thread_scratch<T>(size_t(s.cout) * g.len, 1);
    if (dyb) std::fill(dyb, dyb + size_t(s.cout) * g.len, T(0));
    double* dbt = sums.bias(tid);
    for_each_group(first, last, s.cout, [&](int grp, int ca, int cb) {
      const int n0 = grp * g.group, count = std::min(g.group, s.n - n0);
      if (!g.direct) fill_src(s, g, x, n0, count, xp);
      const T* src = g.direct ? x + n0 * xs : xp;
      for (int co = ca; co < cb; ++co)
        for (int gi = 0; gi < count; ++gi) {
          const T* d = dy + (int64_t(n0 + gi) * s.cout + co) * P;
          if (dbt) dbt[co] += plane_sum(d, P);
          // Slots gi ≥ count keep stale values, but their source columns are zero.
          if (dyb)
            for (int oy = 0; oy < oh; ++oy)
              copy_row(dyb + (co - ca) * g.len + oy * g.pitch + int64_t(gi) * g.cs, d + oy * ow, ow);
        }
      auto a_of = [&](int co) { return dyb ? dyb + (co - ca) * g.len : dy + (int64_t(n0) * s.cout + co) * P; };
      for (int64_t j0 = 0; j0 < g.len; j0 += t.span) {
        const int64_t span = std::min(t.span, g.len - j0);
        for (int b = 0; b < t.nblk; ++b)
          for (int co = ca; co < cb; ++co) {
            const int64_t k0 = bp[size_t(co) * (t.nblk + 1) + b], k1 = bp[size_t(co) * (t.nblk + 1) + b + 1];
            if (k1 == k0) continue;
            dots_all(a_of(co) + j0, src + j0, off.data() + k0, k1 - k0, span, acc + k0);
          }
      }
    });
  });
  sums.finish(dvalues, dbias);
}

#define SPARROW_SPARSE_CONV_INSTANTIATE(T)                                                                   \
  template void sparse_conv_gather_values<T>(const SparseConvPattern&, const T*, T*);                        \
  template void sparse_conv_scatter_values<T>(const SparseConvPattern&, const T*, T*);                       \
  template void sparse_conv2d_forward_cpu<T>(const Conv2dShape&, const SparseConvPattern&, const T*, const T*, \
                                             const T*, T*, ChannelMoments*);                                 \
  template void sparse_conv2d_backward_input_cpu<T>(const Conv2dShape&, const SparseConvPattern&, const T*,   \
                                                    const T*, T*);                                           \
  template void sparse_conv2d_backward_weight_cpu<T>(const Conv2dShape&, const SparseConvPattern&, const T*,  \
                                                     const T*, T*, T*);                                      \
  template void sparse_conv2d_forward_ref_cpu<T>(const Conv2dShape&, const SparseConvPattern&, const T*,      \
                                                 const T*, const T*, T*);                                    \
  template void sparse_conv2d_backward_input_ref_cpu<T>(const Conv2dShape&, const SparseConvPattern&,         \
                                                        const T*, const T*, T*);                             \
  template void sparse_conv2d_backward_weight_ref_cpu<T>(const Conv2dShape&, const SparseConvPattern&,        \
                                                         const T*, const T*, T*, T*);

SPARROW_SPARSE_CONV_INSTANTIATE(float)
SPARROW_SPARSE_CONV_INSTANTIATE(double)

}  // namespace sparrow
