// The BSR training ops (CPU, float): block detection, the flat-pattern ↔ BSR value maps, bsr_linear and
// bsr_conv2d. Row matrices are row-major Rows×K (one row per sample or output pixel); activations NCHW.
#include "engine/bsr_op.h"

#include <algorithm>

#include "engine/base/nvtx.h"
#include "engine/sparse.h"
#include "kernels/common/transpose.h"
#include "kernels/conv/conv.h"

namespace sparrow {

namespace {

int64_t g_chunk_floats = int64_t(8) << 20;
double g_bsr_crossover = 0.6;
// Below this many elements a copy loop runs on one thread: a parallel region costs more than it saves on
// small layers, and far more when the cores are shared (a barrier waits out a descheduled thread).
constexpr int64_t kParallelMin = int64_t(1) << 16;

struct GemmView {
  int rows = 0, cols = 0;
};

GemmView gemm_view(const SparseWeight& w) {
  SPARROW_CHECK(w.dense_shape.size() >= 2 && w.dense_shape[0] > 0, "block detection needs a weight of 2+ dimensions, got ",
                shape_str(w.dense_shape));
  const int64_t rows = w.dense_shape[0], cols = w.dense_numel() / rows;
  SPARROW_CHECK(rows < (int64_t(1) << 31) && cols < (int64_t(1) << 31), "weight ", shape_str(w.dense_shape),
                " is too large for the BSR kernels");
  return {int(rows), int(cols)};
}

// Whether every b×b tile of the view holds 0 or all of its (clipped) entries; `kept` (optional) receives the
// block mask, block_rows × block_cols row-major.
bool tiles_whole(const SparseWeight& w, GemmView v, int b, std::vector<uint8_t>* kept) {
  const int br = (v.rows + b - 1) / b, bc = (v.cols + b - 1) / b;
  std::vector<int32_t> count(size_t(br) * bc, 0);
  const int64_t* p = w.pattern.data<int64_t>();
  for (int64_t i = 0, n = w.nnz(); i < n; ++i) {
    const int64_t r = p[i] / v.cols, c = p[i] - r * v.cols;
    ++count[size_t(r / b) * bc + size_t(c / b)];
  }
  if (kept) kept->assign(count.size(), 0);
  for (int bi = 0; bi < br; ++bi)
    for (int bj = 0; bj < bc; ++bj) {
      const int32_t n = count[size_t(bi) * bc + bj];
      if (n == 0) continue;
      if (n != bsr_extent(v.rows, bi, b) * bsr_extent(v.cols, bj, b)) return false;
      if (kept) (*kept)[size_t(bi) * bc + bj] = 1;
    }
  return true;
}

void check_cpu_f32(const Tensor& t, const char* op, const char* arg) {
  SPARROW_CHECK(t.dtype() == DType::F32, op, ": ", arg, " must be F32 (the BSR kernels are float), got ",
                dtype_name(t.dtype()));
  SPARROW_CHECK(t.device() == Device::CPU, op, ": ", arg, " is on ", device_name(t.device()),
                "; the BSR ops are CPU only (use --sparse-kernels off on CUDA)");
}

void check_operands(const Tensor& values, const BsrLayout* L, const Tensor& bias, const char* op) {
  SPARROW_CHECK(L != nullptr, op, ": no layout");
  check_cpu_f32(values, op, "values");
  SPARROW_CHECK(values.dim() == 1 && values.numel() == int64_t(L->slot.size()), op, ": values ", values.shape_str(),
                " for a pattern of ", L->slot.size(), " entries");
  if (bias.defined()) {
    check_cpu_f32(bias, op, "bias");
    SPARROW_CHECK(bias.numel() == L->pattern.out, op, ": bias of ", bias.numel(), " for ", L->pattern.out, " outputs");
  }
}

// Flat-pattern values → the BSR value array (zeros at edge-block padding).
Tensor to_bsr_values(const BsrLayout& L, const Tensor& values) {
  Tensor vb = Tensor::zeros({L.pattern.value_count()});
  const float* v = values.data<float>();
  float* d = vb.data<float>();
  const int64_t* slot = L.slot.data();
  const int64_t n = int64_t(L.slot.size());
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) d[slot[i]] = v[i];
  return vb;
}

// The BSR gradient array → flat-pattern order (padding dropped).
Tensor from_bsr_grad(const BsrLayout& L, const float* dbsr) {
  const int64_t n = int64_t(L.slot.size());
  Tensor dv = Tensor::empty({n});
  float* d = dv.data<float>();
  const int64_t* slot = L.slot.data();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) d[i] = dbsr[slot[i]];
  return dv;
}

// Per image: src r×c → dst c×r, in 8×8 tiles; one task per (image, band of 64 source rows).
void transpose_images(const float* src, int images, int r, int c, float* dst) {
  SPARROW_NVTX_RANGE("bsr_transpose");
  constexpr int kT = 8, kBand = 64;
  const int64_t img = int64_t(r) * c;
#pragma omp parallel for collapse(2) schedule(static) if (images * img > kParallelMin)
  for (int n = 0; n < images; ++n)
    for (int b0 = 0; b0 < r; b0 += kBand) {
      const float* sn = src + n * img;
      float* dn = dst + n * img;
      for (int r0 = b0; r0 < std::min(r, b0 + kBand); r0 += kT)
        for (int c0 = 0; c0 < c; c0 += kT) {
          const float* s = sn + int64_t(r0) * c + c0;
          float* d = dn + int64_t(c0) * r + r0;
          if (r0 + kT <= r && c0 + kT <= c) {
            transpose_tile8(s, c, d, r);
            continue;
          }
          const int rn = std::min(kT, r - r0), cn = std::min(kT, c - c0);
          for (int j = 0; j < cn; ++j)
            for (int i = 0; i < rn; ++i) d[int64_t(j) * r + i] = s[int64_t(i) * c + j];
        }
    }
}

// The used input columns of a conv's compact pattern as runs of consecutive taps kx0 .. kx0+len-1 of one
// (input channel, kernel row), in compact column order; a row of the unfolded matrix is these runs back to
// back. Built per call: O(used columns), nothing next to the unfolding itself.
struct TapRun {
  int ci, ky, kx0, len;
  int dst;  // first compact column
};

std::vector<TapRun> tap_runs(const BsrLayout& L, const Conv2dShape& s) {
  std::vector<TapRun> runs;
  const int b = L.pattern.block, taps = s.kh * s.kw;
  int dst = 0;
  for (int32_t bj : L.used_cols) {
    const int c0 = bj * b, c1 = c0 + bsr_extent(L.pattern.in, bj, b);
    for (int c = c0; c < c1;) {
      const int ci = c / taps, ky = (c % taps) / s.kw, kx = c % s.kw;
      const int len = std::min(s.kw - kx, c1 - c);
      runs.push_back({ci, ky, kx, len, dst});
      dst += len;
      c += len;
    }
  }
  return runs;
}

// Unfolds `images` images of x (Cin×H×W each) into rows (images·OH·OW) × K', row-major: the row of output
// pixel (n, oy, ox) holds the input taps of `runs`, zeros at padding.
void im2row(const Conv2dShape& s, const std::vector<TapRun>& runs, int kc, const float* x, int images, float* rows) {
  SPARROW_NVTX_RANGE("bsr_im2row");
  const int oh = s.oh(), ow = s.ow();
  const int64_t img = int64_t(s.cin) * s.h * s.w;
#pragma omp parallel for collapse(2) schedule(static) if (int64_t(images) * oh * ow * kc > kParallelMin)
  for (int n = 0; n < images; ++n)
    for (int oy = 0; oy < oh; ++oy) {
      const float* xi = x + n * img;
      for (int ox = 0; ox < ow; ++ox) {
        float* dst = rows + ((int64_t(n) * oh + oy) * ow + ox) * kc;
        const int ix0 = conv_in_x(s, ox, 0);
        const bool x_inside = ix0 >= 0 && ix0 + s.kw <= s.w;  // no tap of this pixel falls in the padding
        for (const TapRun& r : runs) {
          float* d = dst + r.dst;
          const int iy = conv_in_y(s, oy, r.ky);
          if (iy < 0 || iy >= s.h) {
            std::fill(d, d + r.len, 0.f);
            continue;
          }
          const float* src = xi + (int64_t(r.ci) * s.h + iy) * s.w;  // input row iy of channel ci
          const int ix = ix0 + r.kx0;
          if (x_inside) {
            for (int t = 0; t < r.len; ++t) d[t] = src[ix + t];
          } else {
            for (int t = 0; t < r.len; ++t) d[t] = ix + t >= 0 && ix + t < s.w ? src[ix + t] : 0.f;
          }
        }
      }
    }
}

// The adjoint of im2row: dx (images × Cin×H×W) = the sum of each row entry into the input tap it came from
// (zero where no run reads). Writes dx. One task per image: it owns that image's dx (so no two tasks add
// into one value), reads the rows once in order, and its scattered adds stay within the image (L2-sized).
void row2im(const Conv2dShape& s, const std::vector<TapRun>& runs, int kc, const float* rows, int images,
            float* dx) {
  SPARROW_NVTX_RANGE("bsr_row2im");
  const int oh = s.oh(), ow = s.ow();
  const int64_t img = int64_t(s.cin) * s.h * s.w;
#pragma omp parallel for schedule(static) if (images > 1 && int64_t(images) * oh * ow * kc > kParallelMin)
  for (int n = 0; n < images; ++n) {
    float* dxi = dx + n * img;
    std::fill(dxi, dxi + img, 0.f);
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        const float* row = rows + ((int64_t(n) * oh + oy) * ow + ox) * kc;
        const int ix0 = conv_in_x(s, ox, 0);
        const bool x_inside = ix0 >= 0 && ix0 + s.kw <= s.w;
        for (const TapRun& r : runs) {
          const int iy = conv_in_y(s, oy, r.ky);
          if (iy < 0 || iy >= s.h) continue;
          float* d = dxi + (int64_t(r.ci) * s.h + iy) * s.w;  // input row iy of channel ci
          const float* g = row + r.dst;
          const int ix = ix0 + r.kx0;
          if (x_inside) {
            for (int t = 0; t < r.len; ++t) d[ix + t] += g[t];
          } else {
            for (int t = 0; t < r.len; ++t)
              if (ix + t >= 0 && ix + t < s.w) d[ix + t] += g[t];
          }
        }
      }
  }
}

// Scratch row matrices for bsr_conv2d, kept per calling thread across calls: at most one chunk's worth
// (bsr_conv_chunk_floats), and reusing them spares the page faults of a fresh 32 MiB buffer per layer pass.
struct ConvScratch {
  std::vector<float> xrows, yrows, dpart;
};
ConvScratch& conv_scratch() {
  thread_local ConvScratch s;
  return s;
}
float* grow(std::vector<float>& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
  return v.data();
}

}  // namespace

int detect_block(const SparseWeight& w) {
  if (w.nnz() == 0) return 0;
  SPARROW_CHECK(w.pattern.device() == Device::CPU && w.pattern.dtype() == DType::I64,
                "detect_block: the pattern must be an I64 tensor on the CPU");
  const GemmView v = gemm_view(w);
  // A pattern of whole 32- or 16-tiles is also one of whole 8-tiles (aligned tiles nest), so an unstructured
  // pattern is rejected by the first, cheapest test.
  if (!tiles_whole(w, v, 8, nullptr)) return 0;
  for (int b : {32, 16})
    if (tiles_whole(w, v, b, nullptr)) return b;
  return 8;
}

std::shared_ptr<const BsrLayout> bsr_layout_from_sparse(const SparseWeight& w, int block) {
  SPARROW_CHECK(bsr_block_supported_cpu(block), "bsr_layout_from_sparse: block ", block,
                " is not supported on the CPU (8, 16 or 32)");
  const GemmView v = gemm_view(w);
  std::vector<uint8_t> kept;
  SPARROW_CHECK(w.nnz() > 0 && tiles_whole(w, v, block, &kept), "bsr_layout_from_sparse: the pattern of weight ",
                shape_str(w.dense_shape), " (", w.nnz(), " entries) is not made of whole ", block, "x", block,
                " tiles of its ", v.rows, "x", v.cols, " GEMM view");
  auto L = std::make_shared<BsrLayout>();
  L->pattern = bsr_pattern_from_block_mask(v.rows, v.cols, block, kept.data());
  const BsrPattern& P = L->pattern;
  const int bc = P.block_cols();
  std::vector<int32_t> position(kept.size(), -1);  // tile → its block index k in the value array
  for (int bi = 0; bi < P.block_rows(); ++bi)
    for (int32_t k = P.row_ptr[bi]; k < P.row_ptr[bi + 1]; ++k) position[size_t(bi) * bc + P.col_idx[k]] = k;
  const int64_t* p = w.pattern.data<int64_t>();
  L->slot.resize(size_t(w.nnz()));
  for (int64_t i = 0; i < w.nnz(); ++i) {
    const int64_t r = p[i] / v.cols, c = p[i] - r * v.cols;
    const int32_t k = position[size_t(r / block) * bc + size_t(c / block)];
    L->slot[size_t(i)] = bsr_value_offset(k, block, int(r % block), int(c % block));
  }
  std::vector<int32_t> renumber(size_t(bc), -1);
  for (int32_t bj : P.col_idx) renumber[size_t(bj)] = 0;
  int compact_in = 0;
  for (int bj = 0; bj < bc; ++bj)
    if (renumber[size_t(bj)] == 0) {
      renumber[size_t(bj)] = int32_t(L->used_cols.size());
      L->used_cols.push_back(bj);
      compact_in += bsr_extent(P.in, bj, block);  // only the last block column can be partial, and stays last
    }
  std::vector<int32_t> col_idx(P.col_idx.size());
  for (size_t k = 0; k < col_idx.size(); ++k) col_idx[k] = renumber[size_t(P.col_idx[k])];
  L->compact = bsr_pattern_from_csr(P.out, compact_in, block, P.row_ptr, std::move(col_idx));
  return L;
}

Tensor bsr_linear(const Tensor& x, const Tensor& values, const std::shared_ptr<const BsrLayout>& layout,
                  const Tensor& bias) {
  SPARROW_NVTX_RANGE("bsr_linear_op_fwd");
  check_operands(values, layout.get(), bias, "bsr_linear");
  check_cpu_f32(x, "bsr_linear", "x");
  const BsrPattern& P = layout->pattern;
  SPARROW_CHECK(x.dim() == 2 && x.size(1) == P.in, "bsr_linear: x ", x.shape_str(), " for a ", P.out, "x", P.in,
                " weight (expected x B×In)");
  const int rows = int(x.size(0));
  Tensor vb = to_bsr_values(*layout, values);
  Tensor y = Tensor::empty({rows, P.out});
  bsr_linear_forward_cpu(P, vb.data<float>(), x.data<float>(), rows, bias.defined() ? bias.data<float>() : nullptr,
                         y.data<float>());
  Tensor xd = x.detach();
  const bool has_bias = bias.defined();
  std::vector<Tensor> inputs{x, values};
  if (has_bias) inputs.push_back(bias);
  return record(y, "bsr_linear", inputs, [layout, xd, vb, has_bias, rows](const Tensor& g, const std::vector<bool>& needs) {
    SPARROW_NVTX_RANGE("bsr_linear_op_bwd");
    const BsrPattern& P = layout->pattern;
    std::vector<Tensor> out(needs.size());
    const float* dy = g.data<float>();
    if (needs[0]) {
      out[0] = Tensor::empty(xd.shape());
      bsr_linear_backward_input_cpu(P, vb.data<float>(), dy, rows, out[0].data<float>());
    }
    if (needs[1]) {
      std::vector<float> dbsr(size_t(P.value_count()));
      bsr_linear_backward_weight_cpu(P, xd.data<float>(), dy, rows, dbsr.data());
      out[1] = from_bsr_grad(*layout, dbsr.data());
    }
    if (has_bias && needs[2]) {
      std::vector<double> acc(size_t(P.out), 0.0);
      for (int r = 0; r < rows; ++r)
        for (int j = 0; j < P.out; ++j) acc[size_t(j)] += dy[int64_t(r) * P.out + j];
      out[2] = Tensor::from_vector<float>({P.out}, std::vector<float>(acc.begin(), acc.end()));
    }
    return out;
  });
}

Tensor bsr_conv2d(const Tensor& x, const Tensor& values, const std::shared_ptr<const BsrLayout>& layout,
                  const Tensor& bias, const BsrConvGeometry& geo) {
  SPARROW_NVTX_RANGE("bsr_conv2d_fwd");
  check_operands(values, layout.get(), bias, "bsr_conv2d");
  check_cpu_f32(x, "bsr_conv2d", "x");
  const BsrPattern& P = layout->compact;
  SPARROW_CHECK(x.dim() == 4 && geo.kh > 0 && geo.kw > 0 && x.size(1) * geo.kh * geo.kw == layout->pattern.in,
                "bsr_conv2d: input ", x.shape_str(), " with a ", geo.kh, "x", geo.kw, " kernel does not match the ",
                P.out, "x", layout->pattern.in, " GEMM view of the weight");
  SPARROW_CHECK(geo.stride > 0 && geo.pad >= 0, "bsr_conv2d: bad stride ", geo.stride, " or padding ", geo.pad);
  const Conv2dShape s{int(x.size(0)), int(x.size(1)), int(x.size(2)), int(x.size(3)), P.out, geo.kh, geo.kw,
                      geo.stride, geo.pad};
  SPARROW_CHECK(s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw, "bsr_conv2d: input ", x.shape_str(),
                " smaller than the kernel");
  const int npix = s.oh() * s.ow(), kc = P.in, cout = P.out;
  // Bounds the row matrices (see set_bsr_conv_chunk_floats); the SDDMM then sums over chunks.
  const int per_chunk = int(std::clamp<int64_t>(g_chunk_floats / (int64_t(npix) * (kc + cout)), 1, s.n));
  const int64_t x_img = int64_t(s.cin) * s.h * s.w, y_img = int64_t(cout) * npix;
  auto runs = std::make_shared<const std::vector<TapRun>>(tap_runs(*layout, s));

  Tensor vb = to_bsr_values(*layout, values);
  Tensor y = Tensor::empty({s.n, cout, s.oh(), s.ow()});
  {
    ConvScratch& sc = conv_scratch();
    float* xr = grow(sc.xrows, int64_t(per_chunk) * npix * kc);
    float* yr = grow(sc.yrows, int64_t(per_chunk) * npix * cout);
    for (int n0 = 0; n0 < s.n; n0 += per_chunk) {
      const int nc = std::min(per_chunk, s.n - n0);
      im2row(s, *runs, kc, x.data<float>() + n0 * x_img, nc, xr);
      bsr_linear_forward_cpu(P, vb.data<float>(), xr, nc * npix, bias.defined() ? bias.data<float>() : nullptr, yr);
      transpose_images(yr, nc, npix, cout, y.data<float>() + n0 * y_img);
    }
  }
  Tensor xd = x.detach();
  const bool has_bias = bias.defined();
  std::vector<Tensor> inputs{x, values};
  if (has_bias) inputs.push_back(bias);
  return record(y, "bsr_conv2d", inputs, [s, layout, runs, xd, vb, has_bias, per_chunk](const Tensor& g,
                                                                                        const std::vector<bool>& needs) {
    SPARROW_NVTX_RANGE("bsr_conv2d_bwd");
    const BsrPattern& P = layout->compact;
    const int npix = s.oh() * s.ow(), kc = P.in, cout = P.out;
    const int64_t x_img = int64_t(s.cin) * s.h * s.w, y_img = int64_t(cout) * npix, nvals = P.value_count();
    std::vector<Tensor> out(needs.size());
    if (needs[0]) out[0] = Tensor::empty(xd.shape());
    Tensor dbsr = needs[1] ? Tensor::empty({nvals}) : Tensor();
    ConvScratch& sc = conv_scratch();
    float* xr = grow(sc.xrows, int64_t(per_chunk) * npix * kc);
    float* yr = grow(sc.yrows, int64_t(per_chunk) * npix * cout);
    float* part = needs[1] && per_chunk < s.n ? grow(sc.dpart, nvals) : nullptr;
    for (int n0 = 0; n0 < s.n; n0 += per_chunk) {
      const int nc = std::min(per_chunk, s.n - n0), rows = nc * npix;
      transpose_images(g.data<float>() + n0 * y_img, nc, cout, npix, yr);  // dY as rows
      if (needs[1]) {
        im2row(s, *runs, kc, xd.data<float>() + n0 * x_img, nc, xr);
        float* d = dbsr.data<float>();
        if (n0 == 0) {
          bsr_linear_backward_weight_cpu(P, xr, yr, rows, d);
        } else {
          bsr_linear_backward_weight_cpu(P, xr, yr, rows, part);
#pragma omp parallel for schedule(static) if (nvals > kParallelMin)
          for (int64_t i = 0; i < nvals; ++i) d[i] += part[i];
        }
      }
      if (needs[0]) {
        bsr_linear_backward_input_cpu(P, vb.data<float>(), yr, rows, xr);  // dX as rows, over the unfolded x
        row2im(s, *runs, kc, xr, nc, out[0].data<float>() + n0 * x_img);
      }
    }
    if (needs[1]) out[1] = from_bsr_grad(*layout, dbsr.data<float>());
    if (has_bias && needs[2]) {
      out[2] = Tensor::empty({cout});
      float* db = out[2].data<float>();
      const float* dy = g.data<float>();
#pragma omp parallel for schedule(static) if (int64_t(s.n) * y_img > kParallelMin)
      for (int co = 0; co < cout; ++co) {
        double acc = 0;
        for (int n = 0; n < s.n; ++n) {
          const float* p = dy + n * y_img + int64_t(co) * npix;
          for (int i = 0; i < npix; ++i) acc += p[i];
        }
        db[co] = float(acc);
      }
    }
    return out;
  });
}

void set_bsr_conv_chunk_floats(int64_t floats) {
  SPARROW_CHECK(floats > 0, "bsr_conv2d chunk size must be positive, got ", floats);
  g_chunk_floats = floats;
}
int64_t bsr_conv_chunk_floats() { return g_chunk_floats; }

double bsr_kernel_crossover() { return g_bsr_crossover; }
void set_bsr_kernel_crossover(double density) {
  SPARROW_CHECK(density >= 0 && density <= 1, "BSR kernel crossover density ", density, " outside [0, 1]");
  g_bsr_crossover = density;
}

}  // namespace sparrow
