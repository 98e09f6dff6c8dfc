// Scatter/gather between a fixed sparse pattern (sorted flat indices) and the dense weight, on CPU
// (float and double). The sparse kernels replace the masked-dense path later; these ops stay its oracle.
#include "engine/sparse.h"

namespace sparrow {

namespace {

void check_pattern(const Tensor& pattern, int64_t dense_numel, const char* op) {
  SPARROW_CHECK(pattern.dtype() == DType::I64 && pattern.dim() == 1, op, ": pattern must be a 1-D I64 tensor, got ",
                dtype_name(pattern.dtype()), " ", pattern.shape_str());
  SPARROW_CHECK(pattern.device() == Device::CPU, op, " has no CUDA path in this build yet; run it with --device cpu");
  const int64_t* p = pattern.data<int64_t>();
  for (int64_t i = 0, n = pattern.numel(); i < n; ++i)
    SPARROW_CHECK(p[i] >= 0 && p[i] < dense_numel && (i == 0 || p[i] > p[i - 1]), op, ": pattern entry ", i, " = ",
                  p[i], " is out of range [0, ", dense_numel, ") or not strictly ascending");
}

template <typename F>
void dispatch(const Tensor& t, const char* op, F&& f) {
  if (t.dtype() == DType::F32) f(float{});
  else if (t.dtype() == DType::F64) f(double{});
  else SPARROW_FAIL(op, ": unsupported dtype ", dtype_name(t.dtype()), " (expected F32 or F64)");
}

Tensor scatter_raw(const Tensor& values, const Tensor& pattern, const Shape& shape) {
  SPARROW_CHECK(values.device() == Device::CPU && pattern.device() == Device::CPU,
                "sparse weights have no CUDA path in this build yet (scatter); run with --device cpu");
  Tensor d = Tensor::zeros(shape, values.dtype());
  dispatch(values, "scatter_to_dense", [&](auto t) {
    using T = decltype(t);
    const int64_t* p = pattern.data<int64_t>();
    const T* v = values.data<T>();
    T* out = d.data<T>();
    for (int64_t i = 0, n = pattern.numel(); i < n; ++i) out[p[i]] = v[i];
  });
  return d;
}

Tensor gather_raw(const Tensor& dense, const Tensor& pattern) {
  SPARROW_CHECK(dense.device() == Device::CPU && pattern.device() == Device::CPU,
                "sparse weights have no CUDA path in this build yet (gather); run with --device cpu");
  Tensor v = Tensor::empty({pattern.numel()}, dense.dtype());
  dispatch(dense, "gather_at", [&](auto t) {
    using T = decltype(t);
    const int64_t* p = pattern.data<int64_t>();
    const T* in = dense.data<T>();
    T* out = v.data<T>();
    for (int64_t i = 0, n = pattern.numel(); i < n; ++i) out[i] = in[p[i]];
  });
  return v;
}

}  // namespace

Tensor scatter_to_dense(const Tensor& values, const Tensor& pattern, const Shape& dense_shape) {
  check_float(values, "scatter_to_dense", "values");
  SPARROW_CHECK(values.dim() == 1 && values.numel() == pattern.numel(), "scatter_to_dense: ", values.numel(),
                " values for a pattern of ", pattern.numel(), " entries");
  SPARROW_CHECK(values.device() == Device::CPU, "scatter_to_dense has no CUDA path in this build yet; run it with --device cpu");
  check_pattern(pattern, shape_numel(dense_shape), "scatter_to_dense");
  Tensor y = scatter_raw(values, pattern, dense_shape);
  return record(y, "scatter_to_dense", {values}, [pattern](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{gather_raw(g, pattern)};
  });
}

Tensor gather_at(const Tensor& dense, const Tensor& pattern) {
  check_float(dense, "gather_at", "dense");
  SPARROW_CHECK(dense.device() == Device::CPU, "gather_at has no CUDA path in this build yet; run it with --device cpu");
  check_pattern(pattern, dense.numel(), "gather_at");
  Tensor y = gather_raw(dense, pattern);
  Shape shape = dense.shape();
  return record(y, "gather_at", {dense}, [pattern, shape](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{scatter_raw(g, pattern, shape)};
  });
}

std::shared_ptr<SparseWeight> sparse_from_dense(const Tensor& w, const Tensor& mask) {
  check_float(w, "sparse_from_dense", "w");
  SPARROW_CHECK(mask.shape() == w.shape(), "sparse_from_dense: mask ", mask.shape_str(), " for a weight of shape ",
                w.shape_str());
  SPARROW_CHECK(w.device() == Device::CPU, "sparse_from_dense has no CUDA path in this build yet");
  const std::vector<double> m = mask.to_vector<double>();
  std::vector<int64_t> idx;
  for (size_t i = 0; i < m.size(); ++i)
    if (m[i] != 0.0) idx.push_back(int64_t(i));
  auto s = std::make_shared<SparseWeight>();
  s->dense_shape = w.shape();
  s->pattern = Tensor::from_vector<int64_t>({int64_t(idx.size())}, idx);
  s->values = gather_raw(w.detach(), s->pattern);
  return s;
}

Tensor SparseWeight::to_dense() const { return scatter_raw(values.detach(), pattern, dense_shape); }

Tensor SparseWeight::mask() const {
  return scatter_raw(Tensor::ones({nnz()}, values.dtype()), pattern, dense_shape);
}

Tensor SparseWeight::row_offsets() const {
  SPARROW_CHECK(!dense_shape.empty(), "SparseWeight::row_offsets of a 0-d weight");
  const int64_t rows = dense_shape[0], row_len = rows ? dense_numel() / rows : 0;
  std::vector<int64_t> off(size_t(rows) + 1, 0);
  const int64_t* p = pattern.data<int64_t>();
  for (int64_t i = 0; i < nnz(); ++i) ++off[size_t(p[i] / row_len) + 1];
  for (size_t r = 1; r < off.size(); ++r) off[r] += off[r - 1];
  return Tensor::from_vector<int64_t>({rows + 1}, off);
}

}  // namespace sparrow

namespace sparrow {

namespace {
SparseKernelMode g_mode = SparseKernelMode::Auto;
double g_crossover = -1.0;  // < 0: the shape table below
}  // namespace

void set_sparse_kernel_mode(SparseKernelMode mode) { g_mode = mode; }
SparseKernelMode sparse_kernel_mode() { return g_mode; }
SparseKernelMode parse_sparse_kernel_mode(const std::string& s) {
  if (s == "auto") return SparseKernelMode::Auto;
  if (s == "on") return SparseKernelMode::On;
  if (s == "off") return SparseKernelMode::Off;
  SPARROW_FAIL("--sparse-kernels: expected auto, on or off, got '", s, "'");
}
// Step crossovers (forward + input gradient + weight gradient) measured with
//   OPENBLAS_CORETYPE=SkylakeX build/bin/sparrow-bench-sparse-conv --threads 2
//     --densities 1.0,0.7,0.5,0.35,0.2,0.1 --min-time 0.3
// (batch 128, the OpenBLAS SkylakeX GEMMs for the dense path) on two AVX-512 machines, 2 cores each: a Xeon
// and a Zen 5 EPYC (first figure Xeon, second Zen 5):
// - cin·9 = 27 (ResNet-20 stem 3-16 32×32, VGG-11 conv0 3-64 32×32) and 144 (ResNet-20 stage 1, 16-16
//   32×32): sparse faster in every pass even at density 1 (Zen 5 stage 1: 0.99).
// - maps 8 and 16 wide (batch-minor strip kernels for all three passes): ResNet-20 32-32 16×16 (288 inputs
//   per output) 0.93, ≥1; 64-64 8×8 (576) 0.71, 0.85 and VGG-11 64-128 16×16 (576) 0.66, 0.79; VGG-11
//   128-256 8×8 and 16×16 (1152) 0.59, 0.71 and 0.61, 0.54; 256-256 8×8 (2304) 0.57, 0.58.
//   After the strip passes' eight-image write-back (Zen 5, two rounds): VGG-11 128-256 8×8 0.685, 0.705
//   (so 0.55 there: VGG-11's third conv keeps 0.52 of its weights under 90% global magnitude pruning),
//   64-128 16×16 0.66, 0.70.
// - elsewhere: VGG-11 512-512 4×4 0.42, 0.37, 2×2 0.39, 0.39; the stride-2 ResNet-20 entry 0.56, 0.41.
// - Fashion-MNIST's 28×28 ResNet-20 (Zen 5, --densities 1.0,0.9,0.8,0.7,0.6,0.5, one round): on the half-row
//   strips (rows of 32) the stem 1-16 28×28 and stage 1 16-16 28×28 ≥1 (at density 1: stem 2.2–3.9× in each
//   pass, stage 1 1.06–1.51×, two rounds); on the padded strips (maps 7 and 14 wide run in rows of 8 and 16)
//   32-32 14×14 between 0.7 and 0.8, 64-64 7×7 between 0.6 and 0.7. Wider layers on those maps are
//   unmeasured and keep the general entry.
// Each entry sits below the measured crossovers it covers. Where OpenBLAS is held to its AVX2 kernels on an
// AVX-512 machine (OPENBLAS_CORETYPE=Haswell) the dense GEMM runs 1.8-1.9x slower and the sparse kernels win
// at density 1 on most of these layers; the table stays the one for the faster dense path.
double sparse_kernel_crossover(int cin, int k, int stride, int width) {
  if (g_crossover >= 0) return g_crossover;
  if (k != 3 || stride != 1) return 0.35;
  const int64_t fan_in = int64_t(cin) * k * k;
  if (fan_in <= 160) return 1.0;
  if (width == 8 && fan_in > 640 && fan_in <= 1152) return 0.55;
  if (width == 8 || width == 16) return fan_in <= 320 ? 0.9 : fan_in <= 640 ? 0.65 : 0.5;
  if (width == 7 || width == 14 || width == 15) return fan_in <= 320 ? 0.7 : fan_in <= 640 ? 0.55 : 0.35;
  return 0.35;
}
void set_sparse_kernel_crossover(double density) {
  SPARROW_CHECK(density >= 0 && density <= 1, "sparse kernel crossover density ", density, " outside [0, 1]");
  g_crossover = density;
}
void clear_sparse_kernel_crossover() { g_crossover = -1.0; }

}  // namespace sparrow
