// CPU masked convolution over NCHW activations and a fixed-pattern Cout×Cin×Kh×Kw weight (value vector in
// ascending flat-index order): pattern construction, the plain-loop references and the direct sparse path.
// The direct path never forms im2col; every pass costs O(nnz · pixels) plus one padded copy per image.
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "engine/base/error.h"
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
template <typename T>
inline T hsum(const Vec<T>& v) {
  T s = T(0);
  for (int i = 0; i < kLanes<T>; ++i) s += v[i];
  return s;
}

// out[j] = init + Σ_t val[t]·src[off[t] + j] for NV vectors starting at out. The NV accumulators stay in
// registers across all taps: one broadcast and NV load-FMAs per tap.
template <typename T, int NV>
inline void taps_block(const T* src, const int32_t* off, const T* val, int64_t ntaps, T init, T* out) {
  Vec<T> acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = Vec<T>{} + init;
  for (int64_t t = 0; t < ntaps; ++t) {
    const T v = val[t];
    const T* p = src + off[t];
    for (int i = 0; i < NV; ++i) acc[i] += v * vload(p + i * kLanes<T>);
  }
  for (int i = 0; i < NV; ++i) vstore(out + i * kLanes<T>, acc[i]);
}

// Accumulator blocks of 8 vectors: 128 floats of output per pass over the taps. More accumulators did
// not help (the loads of the shifted rows, not the FMAs, bound the loop).
constexpr int kBlockVecs = 8;

// out[j] = init + Σ_t val[t]·src[off[t] + j] for j in [0, len). Reads src[off[t] + j] for exactly those j.
template <typename T>
void taps_accumulate(const T* src, const int32_t* off, const T* val, int64_t ntaps, T init, int64_t len,
                     T* out) {
  constexpr int W = kLanes<T>;
  int64_t j = 0;
  for (; j + kBlockVecs * W <= len; j += kBlockVecs * W)
    taps_block<T, kBlockVecs>(src + j, off, val, ntaps, init, out + j);
  switch ((len - j) / W) {
    case 7: taps_block<T, 7>(src + j, off, val, ntaps, init, out + j); j += 7 * W; break;
    case 6: taps_block<T, 6>(src + j, off, val, ntaps, init, out + j); j += 6 * W; break;
    case 5: taps_block<T, 5>(src + j, off, val, ntaps, init, out + j); j += 5 * W; break;
    case 4: taps_block<T, 4>(src + j, off, val, ntaps, init, out + j); j += 4 * W; break;
    case 3: taps_block<T, 3>(src + j, off, val, ntaps, init, out + j); j += 3 * W; break;
    case 2: taps_block<T, 2>(src + j, off, val, ntaps, init, out + j); j += 2 * W; break;
    case 1: taps_block<T, 1>(src + j, off, val, ntaps, init, out + j); j += W; break;
    default: break;
  }
  for (; j < len; ++j) {
    T acc = init;
    for (int64_t t = 0; t < ntaps; ++t) acc += val[t] * src[off[t] + j];
    out[j] = acc;
  }
}

// res[t] = Σ_j a[j]·src[off[t] + j] over j in [0, len), NT taps at once so each load of `a` is shared.
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
  if (j + W <= len) {
    const Vec<T> a0 = vload(a + j);
    for (int t = 0; t < NT; ++t) acc0[t] += a0 * vload(p[t] + j);
    j += W;
  }
  for (int t = 0; t < NT; ++t) {
    T sum = hsum<T>(acc0[t] + acc1[t]);
    for (int64_t i = j; i < len; ++i) sum += a[i] * p[t][i];
    res[t] = sum;
  }
}

template <typename T>
void dots_all(const T* a, const T* src, const int32_t* off, int64_t ntaps, int64_t len, T* res) {
  constexpr int kTaps = 4;
  int64_t t = 0;
  for (; t + kTaps <= ntaps; t += kTaps) dots<T, kTaps>(a, src, off + t, len, res + t);
  for (; t < ntaps; ++t) dots<T, 1>(a, src, off + t, len, res + t);
}

// ---------------------------------------------------------------------------------------------------
// Scratch and work splitting.

// Per-thread growable scratch (OpenMP keeps its workers alive, so steady-state calls do not allocate).
// New elements are zero, and only finite copies of the inputs are ever written, so reads that land in
// discarded columns never meet NaN.
template <typename T>
T* thread_scratch(size_t n, int slot) {
  static thread_local std::vector<T> bufs[4];
  std::vector<T>& b = bufs[slot];
  if (b.size() < n) b.resize(n);
  return b.data();
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
// Forward / weight-gradient source: each image copied zero-padded and split into stride phases,
// xp[ci][py][px][qy][qx] = x[ci][qy·s + py − pad][qx·s + px − pad] (0 outside), hq × wq per phase plane.
// Output (oy, ox) under tap (ci, ky, kx) reads xp[ci][ky%s][kx%s][oy + ky/s][ox + kx/s], so with the output
// plane flattened at row pitch wq (columns ox ≥ OW are computed and discarded) every tap is one constant
// offset and the whole plane one contiguous vector loop, whatever the stride and the map size.
struct SrcGeom {
  bool direct = false;     // pointwise stride 1 pad 0: read x itself (hq = H, wq = W)
  bool out_direct = false; // wq == OW: the flattened plane is the NCHW plane
  int s = 1, hq = 0, wq = 0;
  int64_t plane = 0, img = 0, len = 0;  // phase-plane size, buffer size per image (with slack), OH·wq
  std::vector<char> phase_used;         // s² flags: phases some tap reads
};

SrcGeom src_geom(const Conv2dShape& s, const SparseConvPattern& p) {
  SrcGeom g;
  g.s = s.stride;
  g.direct = s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0;
  if (g.direct) {
    g.hq = s.h;
    g.wq = s.w;
  } else {
    g.hq = s.oh() + (s.kh - 1) / s.stride;
    g.wq = s.ow() + (s.kw - 1) / s.stride;
  }
  g.out_direct = g.wq == s.ow();
  g.plane = int64_t(g.hq) * g.wq;
  // A tap's last read is (kw−1)/s past its phase plane (discarded columns of the last row).
  g.img = int64_t(s.cin) * g.s * g.s * g.plane + (s.kw - 1) / s.stride + 1;
  g.len = int64_t(s.oh()) * g.wq;
  SPARROW_CHECK(g.img < INT32_MAX, "sparse_conv2d: padded image ", s.cin, "x", s.h, "x", s.w,
                " has 2^31 or more elements (int32 tap offsets)");
  g.phase_used.assign(size_t(g.s) * g.s, 0);
  for (int64_t k = 0; k < p.nnz; ++k) g.phase_used[size_t((p.tap_ky[k] % g.s) * g.s + p.tap_kx[k] % g.s)] = 1;
  return g;
}

std::vector<int32_t> src_offsets(const SrcGeom& g, const SparseConvPattern& p) {
  std::vector<int32_t> off(size_t(p.nnz));
  const int s = g.s;
  for (int64_t k = 0; k < p.nnz; ++k) {
    const int ci = p.tap_ci[k], ky = p.tap_ky[k], kx = p.tap_kx[k];
    off[size_t(k)] =
        int32_t(((int64_t(ci) * s + ky % s) * s + kx % s) * g.plane + int64_t(ky / s) * g.wq + kx / s);
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

template <typename T>
void fill_src(const Conv2dShape& s, const SrcGeom& g, const T* x_img, T* xp) {
  const int st = g.s;
  for (int ci = 0; ci < s.cin; ++ci) {
    const T* xc = x_img + int64_t(ci) * s.h * s.w;
    for (int py = 0; py < st; ++py)
      for (int px = 0; px < st; ++px) {
        if (!g.phase_used[size_t(py * st + px)]) continue;
        T* dst = xp + ((int64_t(ci) * st + py) * st + px) * g.plane;
        int lo, hi;
        valid_range(g.wq, st, px, s.pad, s.w, lo, hi);
        for (int qy = 0; qy < g.hq; ++qy) {
          T* d = dst + int64_t(qy) * g.wq;
          const int r = qy * st + py - s.pad;
          if (r < 0 || r >= s.h) {
            std::fill(d, d + g.wq, T(0));
            continue;
          }
          const T* row = xc + int64_t(r) * s.w;
          const int c0 = px - s.pad;  // source column of qx is qx·s + c0
          std::fill(d, d + lo, T(0));
          if (st == 1)
            std::memcpy(d + lo, row + lo + c0, sizeof(T) * size_t(hi - lo));
          else
            for (int qx = lo; qx < hi; ++qx) d[qx] = row[qx * st + c0];
          std::fill(d + hi, d + g.wq, T(0));
        }
      }
  }
  const int64_t body = int64_t(s.cin) * st * st * g.plane;
  std::fill(xp + body, xp + g.img, T(0));
}

// ---------------------------------------------------------------------------------------------------
// Input-gradient source: dy of one image zero-padded (pt rows on top, pl columns on the left) to hd × wd
// per channel. Input-gradient phase (ry, rx) (pixels iy ≡ ry, ix ≡ rx mod s) receives exactly the taps with
// ky ≡ ry + pad, kx ≡ rx + pad (mod s), and its pixel (qy, qx) (iy = qy·s + ry) reads
// dy[qy − ⌊(ky − pad)/s⌋][qx − ⌊(kx − pad)/s⌋]: again one constant offset per tap over a plane flattened at
// row pitch wd. Out-of-range dy rows/columns read the zero border, which is exactly the transposed conv.
struct GradGeom {
  bool direct = false;  // pointwise stride 1 pad 0: read dy itself and write dx planes directly
  int s = 1, pt = 0, pl = 0, hd = 0, wd = 0;
  int64_t plane = 0, img = 0;
};

GradGeom grad_geom(const Conv2dShape& s) {
  GradGeom g;
  g.s = s.stride;
  const int oh = s.oh(), ow = s.ow();
  g.direct = s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0;
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
  g.plane = int64_t(g.hd) * g.wd;
  g.img = int64_t(s.cout) * g.plane + std::max(0, g.pl + max_x) + 1;
  SPARROW_CHECK(g.img < INT32_MAX, "sparse_conv2d_backward_input: padded gradient ", s.cout, "x", oh, "x", ow,
                " has 2^31 or more elements (int32 tap offsets)");
  return g;
}

template <typename T>
void fill_grad(const Conv2dShape& s, const GradGeom& g, const T* dy_img, T* dyp) {
  const int oh = s.oh(), ow = s.ow();
  for (int co = 0; co < s.cout; ++co) {
    const T* src = dy_img + int64_t(co) * oh * ow;
    T* dst = dyp + int64_t(co) * g.plane;
    std::fill(dst, dst + int64_t(g.pt) * g.wd, T(0));
    for (int oy = 0; oy < oh; ++oy) {
      T* d = dst + int64_t(g.pt + oy) * g.wd;
      std::fill(d, d + g.pl, T(0));
      std::memcpy(d + g.pl, src + int64_t(oy) * ow, sizeof(T) * size_t(ow));
      std::fill(d + g.pl + ow, d + g.wd, T(0));
    }
    std::fill(dst + int64_t(g.pt + oh) * g.wd, dst + g.plane, T(0));
  }
  std::fill(dyp + int64_t(s.cout) * g.plane, dyp + g.img, T(0));
}

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
// Fast path. Each thread takes a contiguous range of (image, channel) items of near-equal kept-weight
// count, so it copies each of its images once (an image split between two threads is copied by both).

template <typename T>
void sparse_conv2d_forward_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values, const T* x,
                               const T* bias, T* y) {
  sparse_conv_check_shape(s, p, "sparse_conv2d_forward_cpu");
  const SrcGeom g = src_geom(s, p);
  const std::vector<int32_t> off = src_offsets(g, p);
  const int oh = s.oh(), ow = s.ow();
  const int64_t P = int64_t(oh) * ow, xs = int64_t(s.cin) * s.h * s.w;
  const std::vector<double> prefix = cost_prefix(s.cout, p.row_ptr, 1);
  parallel_ranges(s.n, prefix, [&](int, int, int64_t first, int64_t last) {
    T* xp = g.direct ? nullptr : thread_scratch<T>(size_t(g.img), 0);
    T* obuf = g.out_direct ? nullptr : thread_scratch<T>(size_t(g.len), 1);
    int cur = -1;
    for (int64_t item = first; item < last; ++item) {
      const int n = int(item / s.cout), co = int(item % s.cout);
      if (n != cur && !g.direct) fill_src(s, g, x + n * xs, xp);
      cur = n;
      const T* src = g.direct ? x + n * xs : xp;
      const int64_t k0 = p.row_ptr[size_t(co)], nt = p.row_ptr[size_t(co) + 1] - k0;
      T* yp = y + (int64_t(n) * s.cout + co) * P;
      T* out = g.out_direct ? yp : obuf;
      taps_accumulate(src, off.data() + k0, values + k0, nt, bias ? bias[co] : T(0), g.len, out);
      if (!g.out_direct)
        for (int oy = 0; oy < oh; ++oy) std::memcpy(yp + int64_t(oy) * ow, out + int64_t(oy) * g.wq, sizeof(T) * size_t(ow));
    }
  });
}

template <typename T>
void sparse_conv2d_backward_input_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* values,
                                      const T* dy, T* dx) {
  sparse_conv_check_shape(s, p, "sparse_conv2d_backward_input_cpu");
  const GradGeom g = grad_geom(s);
  const int st = s.stride, ss = st * st;
  const int64_t khw = int64_t(s.kh) * s.kw, k_row = s.cin * khw;
  // Per call, O(nnz): offsets into the padded dy and the values, both in transposed (col_entry) order.
  std::vector<int32_t> off(size_t(p.nnz));
  std::vector<T> val(size_t(p.nnz));
  for (int64_t e = 0; e < p.nnz; ++e) {
    const int32_t k = p.col_entry[size_t(e)];
    const int co = int(p.index[size_t(k)] / k_row);
    const int dyo = -floordiv(p.tap_ky[size_t(k)] - s.pad, st), dxo = -floordiv(p.tap_kx[size_t(k)] - s.pad, st);
    off[size_t(e)] = int32_t(co * g.plane + int64_t(dyo + g.pt) * g.wd + dxo + g.pl);
    val[size_t(e)] = values[k];
  }
  const int oh = s.oh(), ow = s.ow();
  const int64_t hw = int64_t(s.h) * s.w, ys = int64_t(s.cout) * oh * ow;
  const std::vector<double> prefix = cost_prefix(s.cin, p.col_ptr, ss);
  parallel_ranges(s.n, prefix, [&](int, int, int64_t first, int64_t last) {
    T* dyp = g.direct ? nullptr : thread_scratch<T>(size_t(g.img), 0);
    T* obuf = g.direct ? nullptr : thread_scratch<T>(size_t(g.hd) * g.wd, 1);
    int cur = -1;
    for (int64_t item = first; item < last; ++item) {
      const int n = int(item / s.cin), ci = int(item % s.cin);
      if (n != cur && !g.direct) fill_grad(s, g, dy + n * ys, dyp);
      cur = n;
      T* dxp = dx + (int64_t(n) * s.cin + ci) * hw;
      if (g.direct) {
        const int64_t e0 = p.col_ptr[size_t(ci)], nt = p.col_ptr[size_t(ci) + 1] - e0;
        taps_accumulate(dy + n * ys, off.data() + e0, val.data() + e0, nt, T(0), hw, dxp);
        continue;
      }
      for (int ry = 0; ry < std::min(st, s.h); ++ry)
        for (int rx = 0; rx < std::min(st, s.w); ++rx) {
          const int qh = (s.h - ry + st - 1) / st, qw = (s.w - rx + st - 1) / st;
          const size_t b = size_t(ci) * ss + size_t(ry * st + rx);
          const int64_t e0 = p.col_ptr[b], nt = p.col_ptr[b + 1] - e0;
          if (nt == 0) {
            for (int qy = 0; qy < qh; ++qy)
              for (int qx = 0; qx < qw; ++qx) dxp[int64_t(qy * st + ry) * s.w + qx * st + rx] = T(0);
            continue;
          }
          taps_accumulate(dyp, off.data() + e0, val.data() + e0, nt, T(0), int64_t(qh) * g.wd, obuf);
          if (st == 1) {
            for (int qy = 0; qy < qh; ++qy)
              std::memcpy(dxp + int64_t(qy) * s.w, obuf + int64_t(qy) * g.wd, sizeof(T) * size_t(qw));
          } else {
            for (int qy = 0; qy < qh; ++qy) {
              T* d = dxp + int64_t(qy * st + ry) * s.w + rx;
              const T* o = obuf + int64_t(qy) * g.wd;
              for (int qx = 0; qx < qw; ++qx) d[int64_t(qx) * st] = o[qx];
            }
          }
        }
    }
  });
}

template <typename T>
void sparse_conv2d_backward_weight_cpu(const Conv2dShape& s, const SparseConvPattern& p, const T* x,
                                       const T* dy, T* dvalues, T* dbias) {
  sparse_conv_check_shape(s, p, "sparse_conv2d_backward_weight_cpu");
  const SrcGeom g = src_geom(s, p);
  const std::vector<int32_t> off = src_offsets(g, p);
  const int oh = s.oh(), ow = s.ow();
  const int64_t P = int64_t(oh) * ow, xs = int64_t(s.cin) * s.h * s.w;
  const std::vector<double> prefix = cost_prefix(s.cout, p.row_ptr, 1);
  const int max_threads = omp_get_max_threads();
  // Per-thread partial sums (dvalues and dbias), reduced in thread order: deterministic for a thread count.
  std::vector<T*> partial(size_t(max_threads), nullptr);
  std::vector<double> db_partial(dbias ? size_t(max_threads) * s.cout : 0, 0.0);
  int team = 1;
  parallel_ranges(s.n, prefix, [&](int tid, int parts, int64_t first, int64_t last) {
    if (tid == 0) team = parts;
    T* acc = thread_scratch<T>(size_t(p.nnz) + 1, 2);
    std::fill(acc, acc + p.nnz, T(0));
    partial[size_t(tid)] = acc;
    T* xp = g.direct ? nullptr : thread_scratch<T>(size_t(g.img), 0);
    T* dyb = g.out_direct ? nullptr : thread_scratch<T>(size_t(g.len), 1);
    T* res = thread_scratch<T>(size_t(s.cin) * s.kh * s.kw, 3);
    if (dyb) std::fill(dyb, dyb + g.len, T(0));  // discarded columns stay zero
    double* dbt = dbias ? db_partial.data() + size_t(tid) * s.cout : nullptr;
    int cur = -1;
    for (int64_t item = first; item < last; ++item) {
      const int n = int(item / s.cout), co = int(item % s.cout);
      const T* dyp = dy + (int64_t(n) * s.cout + co) * P;
      if (dbt) {
        double sum = 0.0;
        for (int64_t q = 0; q < P; ++q) sum += double(dyp[q]);
        dbt[co] += sum;
      }
      const int64_t k0 = p.row_ptr[size_t(co)], nt = p.row_ptr[size_t(co) + 1] - k0;
      if (nt == 0) continue;
      if (n != cur && !g.direct) fill_src(s, g, x + n * xs, xp);
      cur = n;
      const T* a = dyp;
      if (dyb) {
        for (int oy = 0; oy < oh; ++oy) std::memcpy(dyb + int64_t(oy) * g.wq, dyp + int64_t(oy) * ow, sizeof(T) * size_t(ow));
        a = dyb;
      }
      dots_all(a, g.direct ? x + n * xs : xp, off.data() + k0, nt, g.len, res);
      for (int64_t t = 0; t < nt; ++t) acc[k0 + t] += res[t];
    }
  });
  const int64_t nnz = p.nnz;
#pragma omp parallel for schedule(static) if (nnz > 16384)
  for (int64_t k = 0; k < nnz; ++k) {
    T sum = partial[0][k];
    for (int t = 1; t < team; ++t) sum += partial[size_t(t)][k];
    dvalues[k] = sum;
  }
  if (dbias)
    for (int co = 0; co < s.cout; ++co) {
      double sum = 0.0;
      for (int t = 0; t < team; ++t) sum += db_partial[size_t(t) * s.cout + co];
      dbias[co] = T(sum);
    }
}

#define SPARROW_SPARSE_CONV_INSTANTIATE(T)                                                                   \
  template void sparse_conv_gather_values<T>(const SparseConvPattern&, const T*, T*);                        \
  template void sparse_conv_scatter_values<T>(const SparseConvPattern&, const T*, T*);                       \
  template void sparse_conv2d_forward_cpu<T>(const Conv2dShape&, const SparseConvPattern&, const T*, const T*, \
                                             const T*, T*);                                                  \
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
