// sparrow-bench-bsr: block-sparse (BSR) GEMM against dense GEMM on the decompressed weight, per shape
// (square GEMMs and the linear/conv GEMM views of ResNet-20, VGG-11 and a ViT-B MLP), block size, block
// density and pass (fwd Y = X·Wᵀ, bwd_input dX = dY·W, bwd_weight = block SDDMM). Shapes: m = rows of X,
// n = Out, k = In. Two modes:
//   default        one JSON line per configuration (dense_ms, sparse_ms, η = dense_ms·density / sparse_ms),
//                  then the crossover density per shape, block and pass. CPU baseline: OpenBLAS sgemm.
//                  --device cuda: ours per precision (TF32, FP16, BF16) vs cuBLAS FP32/TF32/FP16 and the
//                  cuSPARSE BSR SpMM baseline.
//   --benchmark_*  the Google Benchmark suite (CPU), with FLOP/s counters.
// Every configuration is verified once against the dense result before it is timed. Timings are the fastest
// of several runs (wall clock; --threads 1 --cpu-clock uses the thread's CPU clock, which a shared machine
// disturbs far less).
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/base/device.h"
#include "engine/base/error.h"
#include "kernels/gemm/gemm.h"
#include "kernels/sparse/bsr.h"

#if SPARROW_HAS_CUDA
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusparse.h>

#include "engine/base/cuda_check.h"
#endif

using namespace sparrow;

namespace {

// ---------------------------------------------------------------------------------------------------
// Shapes, densities, passes.

struct Shape {
  std::string name;
  int m, n, k;  // rows of X, Out, In
};

// Conv GEMM views: rows = N·OH·OW for the batch N in the name; ViT-B MLP: rows = sequences × 197 tokens.
std::vector<Shape> shapes(bool quick) {
  if (quick)
    return {
        {"gemm1024", 1024, 1024, 1024},
        {"gemm2048", 2048, 2048, 2048},
        {"resnet20.s3 conv 64x(64*9) N128", 128 * 8 * 8, 64, 576},
        {"vgg11.conv4 256x(256*9) N32", 32 * 8 * 8, 256, 2304},
        {"vit-b.fc1 3072x768 8x197", 8 * 197, 3072, 768},
        {"vit-b.fc2 768x3072 8x197", 8 * 197, 768, 3072},
    };
  return {
      {"gemm1024", 1024, 1024, 1024},
      {"gemm2048", 2048, 2048, 2048},
      {"gemm4096", 4096, 4096, 4096},
      {"resnet20.s1 conv 16x(16*9) N128", 128 * 32 * 32, 16, 144},
      {"resnet20.s2 conv 32x(32*9) N128", 128 * 16 * 16, 32, 288},
      {"resnet20.s3 conv 64x(64*9) N128", 128 * 8 * 8, 64, 576},
      {"resnet20.fc 10x64 N128", 128, 10, 64},
      {"vgg11.conv2 128x(64*9) N128", 128 * 16 * 16, 128, 576},
      {"vgg11.conv3 256x(128*9) N128", 128 * 8 * 8, 256, 1152},
      {"vgg11.conv4 256x(256*9) N128", 128 * 8 * 8, 256, 2304},
      {"vgg11.conv5 512x(256*9) N128", 128 * 4 * 4, 512, 2304},
      {"vgg11.conv6 512x(512*9) N128", 128 * 4 * 4, 512, 4608},
      {"vgg11.conv8 512x(512*9) N128", 128 * 2 * 2, 512, 4608},
      {"vgg11.fc 512x512 N128", 128, 512, 512},
      {"vit-b.fc1 3072x768 128x197", 128 * 197, 3072, 768},
      {"vit-b.fc2 768x3072 128x197", 128 * 197, 768, 3072},
  };
}

const std::vector<double> kDensities = {0.5, 0.25, 0.1, 0.05, 0.02};
// Extra points (full grid only) so the crossover is bracketed by measurements.
const std::vector<double> kCrossoverDensities = {1.0, 0.75};

enum class Pass { Fwd, BwdInput, BwdWeight };
const Pass kPasses[] = {Pass::Fwd, Pass::BwdInput, Pass::BwdWeight};
const char* pass_name(Pass p) {
  switch (p) {
    case Pass::Fwd: return "fwd";
    case Pass::BwdInput: return "bwd_input";
    case Pass::BwdWeight: return "bwd_weight";
  }
  return "?";
}

// A block mask with exactly round(density · blocks) kept blocks (at least one), uniformly placed: block
// rows get binomially uneven lengths, and some are empty at low density.
BsrPattern make_pattern(const Shape& s, int block, double density, uint32_t seed) {
  const int nbr = (s.n + block - 1) / block, nbc = (s.k + block - 1) / block;
  const int64_t total = int64_t(nbr) * nbc;
  const int64_t keep = std::max<int64_t>(1, std::llround(density * double(total)));
  std::vector<int64_t> idx(static_cast<size_t>(total));
  std::iota(idx.begin(), idx.end(), 0);
  std::mt19937_64 gen(seed);
  std::shuffle(idx.begin(), idx.end(), gen);
  std::vector<uint8_t> bm(size_t(total), 0);
  for (int64_t i = 0; i < keep; ++i) bm[size_t(idx[size_t(i)])] = 1;
  return bsr_pattern_from_block_mask(s.n, s.k, block, bm.data());
}

std::vector<float> random_floats(int64_t n, uint32_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& e : v) e = u(gen);
  return v;
}

double gflop(const Shape& s, double density) { return 2.0 * s.m * double(s.n) * s.k * density * 1e-9; }

// Crossover density: where sparse and dense take the same time (sparse time is close to affine in the
// density). Bracketed by two measured points: linear interpolation of the sparse time between them
// ("interpolated"); sparse faster at every measured density: the line through the two densest points,
// extended to the dense time ("extrapolated", reported as 1 when the line stays below it up to density 1),
// or ">=1" ("measured") when density 1 itself was measured; slower at every one: "< smallest density"
// ("bound").
struct Crossover {
  std::string value, method;  // value: a JSON number or string
  std::string json() const { return "\"crossover_density\": " + value + ", \"crossover_method\": \"" + method + "\""; }
  std::string text() const { return (value[0] == '"' ? value.substr(1, value.size() - 2) : value) + " (" + method + ")"; }
};

Crossover crossover(std::vector<std::pair<double, double>> density_ratio /* dense_ms / sparse_ms */) {
  std::sort(density_ratio.begin(), density_ratio.end());
  char buf[96];
  if (density_ratio.empty()) return {"null", "none"};
  if (density_ratio.front().second < 1.0) {
    std::snprintf(buf, sizeof buf, "\"<%.3g\"", density_ratio.front().first);
    return {buf, "bound"};
  }
  // Sparse time in units of the dense time: 1/ratio.
  for (size_t i = 1; i < density_ratio.size(); ++i)
    if (density_ratio[i].second < 1.0) {
      const double d0 = density_ratio[i - 1].first, d1 = density_ratio[i].first;
      const double t0 = 1.0 / density_ratio[i - 1].second, t1 = 1.0 / density_ratio[i].second;
      std::snprintf(buf, sizeof buf, "%.3f", d0 + (d1 - d0) * (1.0 - t0) / (t1 - t0));
      return {buf, "interpolated"};
    }
  if (density_ratio.back().first >= 0.999) return {"\">=1\"", "measured"};  // wins even fully dense
  double x = 1.0;
  if (density_ratio.size() >= 2) {
    const auto& a = density_ratio[density_ratio.size() - 2];
    const auto& b = density_ratio.back();
    const double slope = (1.0 / b.second - 1.0 / a.second) / (b.first - a.first);
    if (slope > 0) x = std::min(1.0, b.first + (1.0 - 1.0 / b.second) / slope);
  }
  std::snprintf(buf, sizeof buf, "%.3f", x);
  return {buf, "extrapolated"};
}

struct Options {
  bool quick = false;
  int threads = 0;
  std::string device = "cpu", filter;
  std::vector<int> blocks;
  std::vector<double> densities;
  double min_seconds = 0.2;
  bool cpu_clock = false;  // time with the calling thread's CPU clock (single-threaded runs only)
};

using Clock = std::chrono::steady_clock;

// Fastest of >= 3 timed runs spanning >= min_seconds, after one warm-up (the machines these run on are
// shared, so the minimum is the stable statistic). Milliseconds per call. With thread_cpu the clock is the
// calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID): single-threaded runs then exclude the time the
// thread was descheduled by other tenants.
bool g_thread_cpu_clock = false;

double now_seconds() {
  if (g_thread_cpu_clock) {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

double time_ms(const std::function<void()>& f, double min_seconds) {
  f();
  double best = 1e300, spent = 0.0;
  for (int rep = 0; rep < 3 || (spent < min_seconds && rep < 1000); ++rep) {
    const double t0 = now_seconds();
    f();
    const double dt = now_seconds() - t0;
    best = std::min(best, dt);
    spent += dt;
  }
  return best * 1e3;
}

// |got − ref| ≤ 1e-3·max|ref| + 1e-5 everywhere (fp32 sums of up to a few thousand O(1) products).
bool close_enough(const float* got, const float* ref, int64_t n, double* rel_err) {
  double mx = 0.0, err = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    mx = std::max(mx, double(std::fabs(ref[i])));
    err = std::max(err, double(std::fabs(got[i] - ref[i])));
    if (std::isnan(got[i])) err = HUGE_VAL;
  }
  *rel_err = mx > 0 ? err / mx : err;
  return err <= 1e-3 * mx + 1e-5;
}

// ---------------------------------------------------------------------------------------------------
// CPU.

// 64-byte aligned buffers, as the engine's tensors are (engine/storage.cpp): the kernels stream large outputs
// with non-temporal stores only to aligned rows, so a std::vector's 16-byte alignment would time a store
// path that training never takes.
template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const Aligned64<U>&) const { return true; }
  template <class U>
  bool operator!=(const Aligned64<U>&) const { return false; }
};
using Floats = std::vector<float, Aligned64<float>>;

Floats aligned(const std::vector<float>& v) { return Floats(v.begin(), v.end()); }

struct CpuData {
  Shape s;
  Floats x, dy, w, y, dx, dw;
  explicit CpuData(const Shape& sh)
      : s(sh),
        x(aligned(random_floats(int64_t(sh.m) * sh.k, 1))),
        dy(aligned(random_floats(int64_t(sh.m) * sh.n, 2))),
        w(aligned(random_floats(int64_t(sh.n) * sh.k, 3))),
        y(size_t(sh.m) * sh.n),
        dx(size_t(sh.m) * sh.k),
        dw(size_t(sh.n) * sh.k) {}
};

void dense_pass(CpuData& d, const float* w, Pass pass) {
  const Shape& s = d.s;
  switch (pass) {
    case Pass::Fwd:
      gemm_cpu<float>(false, true, s.m, s.n, s.k, 1.0f, d.x.data(), s.k, w, s.k, 0.0f, d.y.data(), s.n);
      break;
    case Pass::BwdInput:
      gemm_cpu<float>(false, false, s.m, s.k, s.n, 1.0f, d.dy.data(), s.n, w, s.k, 0.0f, d.dx.data(), s.k);
      break;
    case Pass::BwdWeight:
      gemm_cpu<float>(true, false, s.n, s.k, s.m, 1.0f, d.dy.data(), s.n, d.x.data(), s.k, 0.0f, d.dw.data(), s.k);
      break;
  }
}

void sparse_pass(CpuData& d, const BsrPattern& p, const float* values, float* dvalues, Pass pass) {
  switch (pass) {
    case Pass::Fwd: bsr_linear_forward_cpu(p, values, d.x.data(), d.s.m, nullptr, d.y.data()); break;
    case Pass::BwdInput: bsr_linear_backward_input_cpu(p, values, d.dy.data(), d.s.m, d.dx.data()); break;
    case Pass::BwdWeight: bsr_linear_backward_weight_cpu(p, d.x.data(), d.dy.data(), d.s.m, dvalues); break;
  }
}

// The sparse result against dense sgemm on the decompressed weight. Forward and input gradient: the first
// kVerifyRows rows (the kernels treat every row alike; this keeps the check cheap on the big shapes); weight
// gradient: the kept blocks of the dense dyᵀ·x, which does not depend on the pattern and is computed once
// per shape (dw_full).
constexpr int kVerifyRows = 96;

bool verify_cpu(CpuData& d, const BsrPattern& p, const std::vector<float>& values, const std::vector<float>& dw_full,
                Pass pass, double* rel) {
  const Shape& s = d.s;
  const int vr = std::min(s.m, kVerifyRows);
  std::vector<float> wd(size_t(s.n) * s.k), dv(values.size());
  bsr_to_dense(p, values.data(), wd.data());
  sparse_pass(d, p, values.data(), dv.data(), pass);
  if (pass == Pass::Fwd) {
    std::vector<float> ref(size_t(vr) * s.n);
    gemm_cpu<float>(false, true, vr, s.n, s.k, 1.0f, d.x.data(), s.k, wd.data(), s.k, 0.0f, ref.data(), s.n);
    return close_enough(d.y.data(), ref.data(), int64_t(ref.size()), rel);
  }
  if (pass == Pass::BwdInput) {
    std::vector<float> ref(size_t(vr) * s.k);
    gemm_cpu<float>(false, false, vr, s.k, s.n, 1.0f, d.dy.data(), s.n, wd.data(), s.k, 0.0f, ref.data(), s.k);
    return close_enough(d.dx.data(), ref.data(), int64_t(ref.size()), rel);
  }
  std::vector<float> dv_ref(values.size());
  bsr_from_dense(p, dw_full.data(), dv_ref.data());
  *rel = 0;
  return dv.empty() || close_enough(dv.data(), dv_ref.data(), int64_t(dv.size()), rel);
}

// "# load average ..." so a reader can tell a quiet machine from a shared one.
std::string loadavg() {
  char buf[128] = "";
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (!std::fgets(buf, sizeof buf, f)) buf[0] = 0;
    std::fclose(f);
  }
  std::string s(buf);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s.empty() ? "n/a" : s;
}

int run_json_cpu(const Options& o) {
  const int threads = omp_get_max_threads();
  std::printf("# sparrow-bench-bsr: cpu (%s micro-kernels), %d threads, sgemm baseline %s, fastest of >= 3 "
              "runs over >= %.2f s (%s clock); load average at start: %s\n",
              bsr_isa_name(bsr_isa_default()), threads, blas_info().c_str(), o.min_seconds,
              o.cpu_clock ? "thread CPU" : "wall", loadavg().c_str());
  std::vector<std::string> summary;
  for (const Shape& s : shapes(o.quick)) {
    if (!o.filter.empty() && s.name.find(o.filter) == std::string::npos) continue;
    CpuData d(s);
    std::map<Pass, double> dense_ms;
    for (Pass pass : kPasses)
      dense_ms[pass] = time_ms([&] { dense_pass(d, d.w.data(), pass); }, o.min_seconds);
    const std::vector<float> dw_full(d.dw.begin(), d.dw.end());  // dyᵀ·x from the last dense weight-gradient run
    for (int block : o.blocks) {
      std::map<Pass, std::vector<std::pair<double, double>>> curve;
      uint32_t seed = 7;
      for (double target : o.densities) {
        const BsrPattern p = make_pattern(s, block, target, seed++);
        std::vector<float> values(size_t(p.value_count())), dvalues(values.size());
        bsr_from_dense(p, d.w.data(), values.data());
        const double density = p.density();
        for (Pass pass : kPasses) {
          double rel = 0;
          if (!verify_cpu(d, p, values, dw_full, pass, &rel))
            SPARROW_FAIL("verification failed: ", s.name, " block ", block, " density ", density, " ",
                         pass_name(pass), ": max error / max |ref| = ", rel);
          const double ms =
              time_ms([&] { sparse_pass(d, p, values.data(), dvalues.data(), pass); }, o.min_seconds);
          const double eta = dense_ms[pass] * density / ms;
          curve[pass].push_back({density, dense_ms[pass] / ms});
          std::printf(
              "{\"engine\": \"sparrow\", \"op\": \"bsr_gemm\", \"pass\": \"%s\", \"device\": \"cpu\", \"threads\": "
              "%d, \"clock\": \"%s\", \"shape\": \"%s\", \"m\": %d, \"n\": %d, \"k\": %d, \"block\": %d, \"density\": %.4f, "
              "\"dense_ms\": %.4f, \"sparse_ms\": %.4f, \"eta\": %.3f, \"speedup\": %.3f, \"sparse_gflops\": %.2f, "
              "\"dense_gflops\": %.2f, \"verify_rel_err\": %.2e}\n",
              pass_name(pass), threads, o.cpu_clock ? "thread_cpu" : "wall", s.name.c_str(), s.m, s.n, s.k, block,
              density, dense_ms[pass], ms, eta,
              dense_ms[pass] / ms, gflop(s, density) / (ms * 1e-3), gflop(s, 1.0) / (dense_ms[pass] * 1e-3), rel);
          std::fflush(stdout);
        }
      }
      for (Pass pass : kPasses) {
        const Crossover c = crossover(curve[pass]);
        std::printf("{\"engine\": \"sparrow\", \"op\": \"bsr_crossover\", \"pass\": \"%s\", \"device\": \"cpu\", "
                    "\"threads\": %d, \"shape\": \"%s\", \"m\": %d, \"n\": %d, \"k\": %d, \"block\": %d, "
                    "%s}\n",
                    pass_name(pass), threads, s.name.c_str(), s.m, s.n, s.k, block, c.json().c_str());
        summary.push_back(s.name + " block " + std::to_string(block) + " " + pass_name(pass) + ": " + c.text());
      }
      std::fflush(stdout);
    }
  }
  std::printf("# crossover density (sparse faster than OpenBLAS below it)\n");
  for (const std::string& line : summary) std::printf("# %s\n", line.c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// CUDA.

#if SPARROW_HAS_CUDA
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Dev(size_t b) : bytes(b) { SPARROW_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(b, 16))); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  float* f() const { return static_cast<float*>(p); }
};

template <class Vec>
void upload(Dev& d, const Vec& h) {
  SPARROW_CUDA_CHECK(cudaMemcpy(d.p, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
}
std::vector<float> download(const Dev& d, size_t n) {
  std::vector<float> h(n);
  SPARROW_CUDA_CHECK(cudaMemcpy(h.data(), d.p, n * 4, cudaMemcpyDeviceToHost));
  return h;
}

// Per-call milliseconds: fastest of 5 windows of `reps` calls (reps sized to >= ~5 ms per window).
double cuda_time_ms(const std::function<void()>& f) {
  cudaEvent_t a, b;
  SPARROW_CUDA_CHECK(cudaEventCreate(&a));
  SPARROW_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  SPARROW_CUDA_CHECK(cudaEventRecord(a));
  f();
  SPARROW_CUDA_CHECK(cudaEventRecord(b));
  SPARROW_CUDA_CHECK(cudaEventSynchronize(b));
  float one = 0;
  SPARROW_CUDA_CHECK(cudaEventElapsedTime(&one, a, b));
  const int reps = std::clamp(int(5.0 / std::max(one, 1e-3f)), 1, 1000);
  double best = 1e300;
  for (int w = 0; w < 5; ++w) {
    SPARROW_CUDA_CHECK(cudaEventRecord(a));
    for (int i = 0; i < reps; ++i) f();
    SPARROW_CUDA_CHECK(cudaEventRecord(b));
    SPARROW_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    SPARROW_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    best = std::min(best, double(ms) / reps);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

enum class DenseMath { FP32, TF32, FP16 };
const char* dense_math_name(DenseMath m) {
  return m == DenseMath::FP32 ? "fp32" : m == DenseMath::TF32 ? "tf32" : "fp16";
}

// cuBLAS on the row-major contracts (column-major views: Yᵀ = W·Xᵀ etc.). FP16: inputs half, output fp32.
void cublas_pass(cublasHandle_t h, DenseMath math, Pass pass, const Shape& s, const void* w, const void* x,
                 const void* dy, float* y, float* dx, float* dw) {
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType in_t = math == DenseMath::FP16 ? CUDA_R_16F : CUDA_R_32F;
  const cublasComputeType_t ct = math == DenseMath::TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  switch (pass) {
    case Pass::Fwd:
      SPARROW_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.n, s.m, s.k, &one, w, in_t, s.k, x, in_t,
                                        s.k, &zero, y, CUDA_R_32F, s.n, ct, CUBLAS_GEMM_DEFAULT));
      break;
    case Pass::BwdInput:
      SPARROW_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, s.k, s.m, s.n, &one, w, in_t, s.k, dy, in_t,
                                        s.n, &zero, dx, CUDA_R_32F, s.k, ct, CUBLAS_GEMM_DEFAULT));
      break;
    case Pass::BwdWeight:
      SPARROW_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, s.k, s.n, s.m, &one, x, in_t, s.k, dy, in_t,
                                        s.n, &zero, dw, CUDA_R_32F, s.k, ct, CUBLAS_GEMM_DEFAULT));
      break;
  }
}

// cuSPARSE BSR baseline for the forward pass: Yᵀ (Out_pad × rows, column-major) = W_bsr · Xᵀ, where Xᵀ in
// column-major is X row-major. cuSPARSE needs the dense dimensions padded to whole blocks, so shapes that are
// not block multiples run on padded copies. cusparseSpMM with a BSR descriptor first; cusparseSbsrmm when
// this cuSPARSE rejects that combination.
struct CusparseBsr {
  cusparseHandle_t h = nullptr;
  cusparseSpMatDescr_t a = nullptr;
  cusparseDnMatDescr_t b = nullptr, c = nullptr;
  cusparseMatDescr_t legacy = nullptr;
  Dev* buffer = nullptr;
  bool spmm = false;
  int mb = 0, kb = 0, block = 0, rows = 0, nnzb = 0, in_pad = 0, out_pad = 0;
  const void* vals = nullptr;
  const int32_t *row_ptr = nullptr, *col_idx = nullptr;
  const float* x = nullptr;
  float* y = nullptr;

  CusparseBsr(const BsrPatternDevice& p, const float* values, const float* x_pad, float* y_pad, int rows_) {
    SPARROW_CUSPARSE_CHECK(cusparseCreate(&h));
    mb = p.block_rows;
    kb = p.block_cols;
    block = p.block;
    rows = rows_;
    nnzb = int(p.nnzb);
    in_pad = kb * block;
    out_pad = mb * block;
    vals = values;
    row_ptr = p.row_ptr;
    col_idx = p.col_idx;
    x = x_pad;
    y = y_pad;
    const float one = 1.0f, zero = 0.0f;
    bool ok = cusparseCreateBsr(&a, mb, kb, nnzb, block, block, p.row_ptr, p.col_idx, const_cast<void*>(vals),
                                CUSPARSE_INDEX_32I, CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO, CUDA_R_32F,
                                CUSPARSE_ORDER_COL) == CUSPARSE_STATUS_SUCCESS;
    ok = ok && cusparseCreateDnMat(&b, in_pad, rows, in_pad, const_cast<float*>(x), CUDA_R_32F,
                                   CUSPARSE_ORDER_COL) == CUSPARSE_STATUS_SUCCESS;
    ok = ok && cusparseCreateDnMat(&c, out_pad, rows, out_pad, y, CUDA_R_32F, CUSPARSE_ORDER_COL) ==
                   CUSPARSE_STATUS_SUCCESS;
    size_t bytes = 0;
    ok = ok && cusparseSpMM_bufferSize(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE, &one,
                                       a, b, &zero, c, CUDA_R_32F, CUSPARSE_SPMM_BSR_ALG1, &bytes) ==
                   CUSPARSE_STATUS_SUCCESS;
    if (ok) {
      buffer = new Dev(bytes);
      ok = cusparseSpMM(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE, &one, a, b, &zero,
                        c, CUDA_R_32F, CUSPARSE_SPMM_BSR_ALG1, buffer->p) == CUSPARSE_STATUS_SUCCESS;
    }
    spmm = ok;
    if (!spmm) SPARROW_CUSPARSE_CHECK(cusparseCreateMatDescr(&legacy));
  }
  ~CusparseBsr() {
    delete buffer;
    if (a) cusparseDestroySpMat(a);
    if (b) cusparseDestroyDnMat(b);
    if (c) cusparseDestroyDnMat(c);
    if (legacy) cusparseDestroyMatDescr(legacy);
    cusparseDestroy(h);
  }
  const char* name() const { return spmm ? "cusparseSpMM(BSR)" : "cusparseSbsrmm"; }
  void run() {
    const float one = 1.0f, zero = 0.0f;
    if (spmm) {
      SPARROW_CUSPARSE_CHECK(cusparseSpMM(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                          &one, a, b, &zero, c, CUDA_R_32F, CUSPARSE_SPMM_BSR_ALG1, buffer->p));
    } else {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
      SPARROW_CUSPARSE_CHECK(cusparseSbsrmm(h, CUSPARSE_DIRECTION_COLUMN, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                            CUSPARSE_OPERATION_NON_TRANSPOSE, mb, rows, kb, nnzb, &one, legacy,
                                            static_cast<const float*>(vals), row_ptr, col_idx, block, x, in_pad,
                                            &zero, y, out_pad));
#pragma GCC diagnostic pop
    }
  }
};

int run_json_cuda(const Options& o) {
  if (!cuda_available()) {
    std::printf("# --device cuda: no CUDA device (%s); nothing timed\n", cuda_unavailable_reason().c_str());
    return 0;
  }
  cudaDeviceProp prop{};
  SPARROW_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# sparrow-bench-bsr: cuda (%s), ours per precision vs cuBLAS FP32/TF32/FP16 and cuSPARSE BSR\n",
              prop.name);
  cublasHandle_t cub;
  SPARROW_CUBLAS_CHECK(cublasCreate(&cub));
  const BsrCudaType types[] = {BsrCudaType::kF32, BsrCudaType::kF16, BsrCudaType::kBF16};
  std::vector<std::string> summary;
  for (const Shape& s : shapes(o.quick)) {
    if (!o.filter.empty() && s.name.find(o.filter) == std::string::npos) continue;
    CpuData h(s);
    const size_t nx = size_t(s.m) * s.k, ny = size_t(s.m) * s.n, nw = size_t(s.n) * s.k;
    Dev x(nx * 4), dy(ny * 4), w(nw * 4), y(ny * 4), dx(nx * 4), dw(nw * 4);
    Dev x16(nx * 2), dy16(ny * 2), w16(nw * 2), xb(nx * 2), dyb(ny * 2);
    upload(x, h.x);
    upload(dy, h.dy);
    upload(w, h.w);
    bsr_convert_from_float_cuda(x.f(), x16.p, int64_t(nx), BsrCudaType::kF16);
    bsr_convert_from_float_cuda(dy.f(), dy16.p, int64_t(ny), BsrCudaType::kF16);
    bsr_convert_from_float_cuda(w.f(), w16.p, int64_t(nw), BsrCudaType::kF16);
    bsr_convert_from_float_cuda(x.f(), xb.p, int64_t(nx), BsrCudaType::kBF16);
    bsr_convert_from_float_cuda(dy.f(), dyb.p, int64_t(ny), BsrCudaType::kBF16);
    // Dense baselines per pass and math mode.
    std::map<std::pair<Pass, DenseMath>, double> dense_ms;
    for (Pass pass : kPasses)
      for (DenseMath m : {DenseMath::FP32, DenseMath::TF32, DenseMath::FP16}) {
        const bool half = m == DenseMath::FP16;
        dense_ms[{pass, m}] = cuda_time_ms([&] {
          cublas_pass(cub, m, pass, s, half ? w16.p : w.p, half ? x16.p : x.p, half ? dy16.p : dy.p, y.f(), dx.f(),
                      dw.f());
        });
      }
    for (int block : o.blocks) {
      std::map<std::pair<Pass, BsrCudaType>, std::vector<std::pair<double, double>>> curve;
      uint32_t seed = 7;
      for (double target : o.densities) {
        const BsrPattern p = make_pattern(s, block, target, seed++);
        const BsrPatternDevice pd(p);
        std::vector<float> values(size_t(p.value_count()));
        bsr_from_dense(p, h.w.data(), values.data());
        const double density = p.density();
        Dev v(values.size() * 4), v16(values.size() * 2), vb(values.size() * 2), dv(values.size() * 4);
        upload(v, values);
        bsr_convert_from_float_cuda(v.f(), v16.p, int64_t(values.size()), BsrCudaType::kF16);
        bsr_convert_from_float_cuda(v.f(), vb.p, int64_t(values.size()), BsrCudaType::kBF16);
        // CPU references for the verification (fast CPU path, checked by the tests against the oracle).
        std::vector<float> y_ref(ny), dx_ref(nx), dv_ref(values.size());
        bsr_linear_forward_cpu(p, values.data(), h.x.data(), s.m, nullptr, y_ref.data());
        bsr_linear_backward_input_cpu(p, values.data(), h.dy.data(), s.m, dx_ref.data());
        bsr_linear_backward_weight_cpu(p, h.x.data(), h.dy.data(), s.m, dv_ref.data());
        // cuSPARSE (forward, fp32) on padded copies.
        const int in_pad = p.block_cols() * block, out_pad = p.block_rows() * block;
        Dev xp(size_t(s.m) * in_pad * 4), yp(size_t(s.m) * out_pad * 4);
        SPARROW_CUDA_CHECK(cudaMemset(xp.p, 0, xp.bytes));
        SPARROW_CUDA_CHECK(cudaMemcpy2D(xp.p, size_t(in_pad) * 4, x.p, size_t(s.k) * 4, size_t(s.k) * 4, s.m,
                                        cudaMemcpyDeviceToDevice));
        CusparseBsr cs(pd, v.f(), xp.f(), yp.f(), s.m);
        cs.run();
        SPARROW_CUDA_CHECK(cudaDeviceSynchronize());
        bool cusparse_ok = true;  // its output (rows × Out_pad) against the CPU forward, as a sanity check
        {
          const std::vector<float> got = download(yp, size_t(s.m) * out_pad);
          double mx = 0, err = 0;
          for (int r = 0; r < s.m; ++r)
            for (int c = 0; c < s.n; ++c) {
              const double ref = y_ref[size_t(r) * s.n + c];
              mx = std::max(mx, std::fabs(ref));
              err = std::max(err, std::fabs(double(got[size_t(r) * out_pad + c]) - ref));
            }
          cusparse_ok = err <= 1e-3 * std::max(mx, 1.0);
        }
        const double cusparse_ms = cuda_time_ms([&] { cs.run(); });
        for (BsrCudaType t : types) {
          const void* vv = t == BsrCudaType::kF32 ? v.p : t == BsrCudaType::kF16 ? v16.p : vb.p;
          const void* xx = t == BsrCudaType::kF32 ? x.p : t == BsrCudaType::kF16 ? x16.p : xb.p;
          const void* gg = t == BsrCudaType::kF32 ? dy.p : t == BsrCudaType::kF16 ? dy16.p : dyb.p;
          const double u = t == BsrCudaType::kBF16 ? 1.0 / 256 : 1.0 / 2048;
          for (Pass pass : kPasses) {
            auto run = [&] {
              if (pass == Pass::Fwd) bsr_linear_forward_cuda(pd, t, vv, xx, s.m, nullptr, y.f());
              if (pass == Pass::BwdInput) bsr_linear_backward_input_cuda(pd, t, vv, gg, s.m, dx.f());
              if (pass == Pass::BwdWeight) bsr_linear_backward_weight_cuda(pd, t, xx, gg, s.m, dv.f());
            };
            run();
            SPARROW_CUDA_CHECK(cudaDeviceSynchronize());
            const std::vector<float>& ref = pass == Pass::Fwd ? y_ref : pass == Pass::BwdInput ? dx_ref : dv_ref;
            const std::vector<float> got =
                download(pass == Pass::Fwd ? y : pass == Pass::BwdInput ? dx : dv, ref.size());
            double mx = 0, err = 0;
            for (size_t i = 0; i < ref.size(); ++i) {
              mx = std::max(mx, double(std::fabs(ref[i])));
              err = std::max(err, std::isnan(got[i]) ? HUGE_VAL : double(std::fabs(got[i] - ref[i])));
            }
            // Input rounding (unit roundoff u) over sums with random signs: error ≲ 4u·√terms relative to max.
            const double terms = pass == Pass::Fwd ? s.k : pass == Pass::BwdInput ? s.n : s.m;
            if (!(err <= 4 * u * std::sqrt(terms) * std::max(mx, 1.0)))
              SPARROW_FAIL("verification failed: cuda ", bsr_cuda_type_name(t), " ", s.name, " block ", block,
                           " density ", density, " ", pass_name(pass), ": max error ", err, " (max |ref| ", mx, ")");
            const double ms = cuda_time_ms(run);
            const DenseMath base = t == BsrCudaType::kF32 ? DenseMath::TF32 : DenseMath::FP16;
            const double dms = dense_ms[{pass, base}];
            curve[{pass, t}].push_back({density, dms / ms});
            char extra[192] = "";
            if (pass == Pass::Fwd)
              std::snprintf(extra, sizeof extra,
                            ", \"cusparse_ms\": %.4f, \"cusparse_api\": \"%s\", \"cusparse_verified\": %s, "
                            "\"vs_cusparse\": %.2f",
                            cusparse_ms, cs.name(), cusparse_ok ? "true" : "false", cusparse_ms / ms);
            std::printf(
                "{\"engine\": \"sparrow\", \"op\": \"bsr_gemm\", \"pass\": \"%s\", \"device\": \"cuda\", \"gpu\": "
                "\"%s\", \"precision\": \"%s\", \"shape\": \"%s\", \"m\": %d, \"n\": %d, \"k\": %d, \"block\": %d, "
                "\"density\": %.4f, \"dense_ms\": %.4f, \"dense_baseline\": \"cublas_%s\", \"cublas_fp32_ms\": %.4f, "
                "\"cublas_tf32_ms\": %.4f, \"cublas_fp16_ms\": %.4f, \"sparse_ms\": %.4f, \"eta\": %.3f, "
                "\"speedup\": %.3f%s}\n",
                pass_name(pass), prop.name, bsr_cuda_type_name(t), s.name.c_str(), s.m, s.n, s.k, block, density, dms,
                dense_math_name(base), dense_ms[{pass, DenseMath::FP32}], dense_ms[{pass, DenseMath::TF32}],
                dense_ms[{pass, DenseMath::FP16}], ms, dms * density / ms, dms / ms, extra);
            std::fflush(stdout);
          }
        }
      }
      for (auto& [key, c] : curve) {
        const Crossover x = crossover(c);
        std::printf("{\"engine\": \"sparrow\", \"op\": \"bsr_crossover\", \"pass\": \"%s\", \"device\": \"cuda\", "
                    "\"precision\": \"%s\", \"shape\": \"%s\", \"block\": %d, %s}\n",
                    pass_name(key.first), bsr_cuda_type_name(key.second), s.name.c_str(), block, x.json().c_str());
        summary.push_back(s.name + " block " + std::to_string(block) + " " + pass_name(key.first) + " " +
                          bsr_cuda_type_name(key.second) + ": " + x.text());
      }
    }
  }
  cublasDestroy(cub);
  std::printf("# crossover density vs cuBLAS (TF32 for fp32 data, FP16 for half inputs)\n");
  for (const std::string& line : summary) std::printf("# %s\n", line.c_str());
  return 0;
}
#endif

// ---------------------------------------------------------------------------------------------------
// Google Benchmark suite (CPU): args (shape index, block, density in 1/1000, pass).

void BM_bsr(benchmark::State& st) {
  const std::vector<Shape> all = shapes(true);
  const Shape& s = all[size_t(st.range(0))];
  const int block = int(st.range(1));
  const double target = double(st.range(2)) / 1000.0;
  const Pass pass = Pass(st.range(3));
  CpuData d(s);
  const BsrPattern p = make_pattern(s, block, target, 7);
  std::vector<float> values(size_t(p.value_count())), dv(values.size());
  bsr_from_dense(p, d.w.data(), values.data());
  for (auto _ : st) sparse_pass(d, p, values.data(), dv.data(), pass);
  st.SetLabel(s.name + " " + pass_name(pass));
  st.counters["density"] = p.density();
  st.counters["FLOP/s"] = benchmark::Counter(gflop(s, p.density()) * 1e9 * double(st.iterations()),
                                             benchmark::Counter::kIsRate);
}
void BM_dense(benchmark::State& st) {
  const std::vector<Shape> all = shapes(true);
  const Shape& s = all[size_t(st.range(0))];
  const Pass pass = Pass(st.range(1));
  CpuData d(s);
  for (auto _ : st) dense_pass(d, d.w.data(), pass);
  st.SetLabel(s.name + " " + pass_name(pass));
  st.counters["FLOP/s"] =
      benchmark::Counter(gflop(s, 1.0) * 1e9 * double(st.iterations()), benchmark::Counter::kIsRate);
}
void bsr_args(benchmark::internal::Benchmark* b) {
  for (int si = 0; si < int(shapes(true).size()); ++si)
    for (int block : {16, 32})
      for (int dens : {500, 100, 20})
        for (int pass = 0; pass < 3; ++pass) b->Args({si, block, dens, pass});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
void dense_args(benchmark::internal::Benchmark* b) {
  for (int si = 0; si < int(shapes(true).size()); ++si)
    for (int pass = 0; pass < 3; ++pass) b->Args({si, pass});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_bsr)->Apply(bsr_args);
BENCHMARK(BM_dense)->Apply(dense_args);

void usage() {
  std::printf(
      "usage: sparrow-bench-bsr [--quick] [--device cpu|cuda] [--threads N] [--blocks b1,b2,...]\n"
      "                         [--densities d1,d2,...] [--shape SUBSTRING] [--min-time SECONDS]\n"
      "                         [--cpu-clock (with --threads 1: thread CPU time, robust on a shared machine)]\n"
      "                         [--benchmark_* flags: run the Google Benchmark suite (CPU) instead]\n"
      "  --quick   reduced grid (smaller shapes, blocks 16 and 32, densities 50/25/10/5/2%%), < 60 s on 2 cores\n"
      "  default   full grid: GEMM 1024²/2048²/4096², ResNet-20, VGG-11 and ViT-B MLP GEMM shapes, blocks\n"
      "            8/16/32 (cpu) or 16/32/64 (cuda), densities 100/75/50/25/10/5/2%%\n");
}

std::vector<double> parse_list(const std::string& v) {
  std::vector<double> out;
  size_t pos = 0;
  while (pos < v.size()) {
    const size_t end = std::min(v.find(',', pos), v.size());
    out.push_back(std::stod(v.substr(pos, end - pos)));
    pos = end + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool gbench = false;
  std::vector<char*> rest{argv[0]};
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&](const char* flag) -> std::string {
        SPARROW_CHECK(i + 1 < argc, flag, " needs a value");
        return argv[++i];
      };
      if (a == "--quick") {
        o.quick = true;
      } else if (a == "--threads") {
        o.threads = std::stoi(value("--threads"));
        SPARROW_CHECK(o.threads > 0, "--threads must be a positive integer");
      } else if (a == "--device") {
        o.device = value("--device");
      } else if (a == "--shape") {
        o.filter = value("--shape");
      } else if (a == "--cpu-clock") {
        o.cpu_clock = true;
      } else if (a == "--min-time") {
        o.min_seconds = std::stod(value("--min-time"));
      } else if (a == "--blocks") {
        for (double b : parse_list(value("--blocks"))) o.blocks.push_back(int(b));
      } else if (a == "--densities") {
        o.densities = parse_list(value("--densities"));
      } else if (a == "--help" || a == "-h") {
        usage();
        return 0;
      } else if (a.rfind("--benchmark_", 0) == 0) {
        gbench = true;
        rest.push_back(argv[i]);
      } else {
        usage();
        SPARROW_FAIL("unknown option ", a);
      }
    }
    SPARROW_CHECK(o.device == "cpu" || o.device == "cuda", "--device must be cpu or cuda, not ", o.device);
    for (double d : o.densities) SPARROW_CHECK(d > 0.0 && d <= 1.0, "--densities: ", d, " outside (0, 1]");
    if (o.threads > 0) omp_set_num_threads(o.threads);
    SPARROW_CHECK(!o.cpu_clock || (o.threads == 1 && o.device == "cpu"),
                  "--cpu-clock needs --threads 1 and --device cpu (it reads the calling thread's CPU clock)");
    g_thread_cpu_clock = o.cpu_clock;
    if (gbench) {
      int n = int(rest.size());
      benchmark::Initialize(&n, rest.data());
      benchmark::RunSpecifiedBenchmarks();
      benchmark::Shutdown();
      return 0;
    }
    const bool cuda = o.device == "cuda";
    if (o.blocks.empty()) o.blocks = o.quick ? std::vector<int>{16, 32} : cuda ? std::vector<int>{16, 32, 64}
                                                                                : std::vector<int>{8, 16, 32};
    for (int b : o.blocks)
      SPARROW_CHECK(cuda ? bsr_block_supported_cuda(b) : bsr_block_supported_cpu(b), "--blocks: block size ", b,
                    " is not supported on ", o.device);
    if (o.densities.empty()) {
      o.densities = kDensities;
      if (!o.quick) o.densities.insert(o.densities.begin(), kCrossoverDensities.begin(), kCrossoverDensities.end());
    }
    if (o.quick) o.min_seconds = std::min(o.min_seconds, 0.05);
    if (cuda) {
#if SPARROW_HAS_CUDA
      return run_json_cuda(o);
#else
      std::printf("# --device cuda: this build has no CUDA (%s); nothing timed\n", cuda_unavailable_reason().c_str());
      return 2;
#endif
    }
    return run_json_cpu(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sparrow-bench-bsr: %s\n", e.what());
    return 1;
  }
}
