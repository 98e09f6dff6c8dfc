// sparrow-bench-sparse-conv: masked (fixed-pattern) convolution against dense convolution on W⊙M, per
// layer (ResNet-20 and VGG-11 conv shapes, NCHW, batch 128 by default), density and pass (forward, input
// gradient, weight gradient). Two modes:
//   default / --json     one JSON line per layer, density and pass (dense_ms, sparse_ms, speedup), then the
//                        measured crossover density per layer; --device cuda compares ours, cuDNN (dense
//                        on W⊙M) and cuSPARSE (CSR weights × im2col) instead.
//   --benchmark_*        a Google Benchmark suite (CPU) with dense-equivalent and actual FLOP/s counters.
// Every configuration is verified once against the plain-loop dense reference before it is timed.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <time.h>

#include "engine/base/device.h"
#include "engine/base/error.h"
#include "kernels/conv/conv.h"
#include "kernels/gemm/gemm.h"
#include "kernels/sparse/sparse_conv.h"

#if SPARROW_HAS_CUDA
#include <cuda_runtime.h>
#include <cusparse.h>

#include "engine/base/cuda_check.h"
#if SPARROW_HAS_CUDNN
#include <cudnn.h>
#endif
#endif

using namespace sparrow;

namespace {

// ---------------------------------------------------------------------------------------------------
// Layers, densities, data.

struct Layer {
  std::string name;
  Conv2dShape s;
};

std::vector<Layer> bench_layers(int batch) {
  auto L = [batch](const char* name, int cin, int cout, int hw, int k, int stride, int pad) {
    return Layer{name, Conv2dShape{batch, cin, hw, hw, cout, k, k, stride, pad}};
  };
  return {
      L("resnet20.stem 3-16 32x32", 3, 16, 32, 3, 1, 1),
      L("resnet20.s1 16-16 32x32", 16, 16, 32, 3, 1, 1),
      L("resnet20.s2 32-32 16x16", 32, 32, 16, 3, 1, 1),
      L("resnet20.s3 64-64 8x8", 64, 64, 8, 3, 1, 1),
      L("resnet20.down 16-32 32x32 s2", 16, 32, 32, 3, 2, 1),
      L("resnet20.down 32-64 16x16 s2", 32, 64, 16, 3, 2, 1),
      // The same net on Fashion-MNIST's 28×28 images (the apps' default data set).
      L("fmnist.resnet20.stem 1-16 28x28", 1, 16, 28, 3, 1, 1),
      L("fmnist.resnet20.s1 16-16 28x28", 16, 16, 28, 3, 1, 1),
      L("fmnist.resnet20.s2 32-32 14x14", 32, 32, 14, 3, 1, 1),
      L("fmnist.resnet20.s3 64-64 7x7", 64, 64, 7, 3, 1, 1),
      L("fmnist.resnet20.down 16-32 28x28 s2", 16, 32, 28, 3, 2, 1),
      L("fmnist.resnet20.down 32-64 14x14 s2", 32, 64, 14, 3, 2, 1),
      L("vgg11.conv0 3-64 32x32", 3, 64, 32, 3, 1, 1),
      L("vgg11.conv1 64-128 16x16", 64, 128, 16, 3, 1, 1),
      L("vgg11.conv2 128-256 8x8", 128, 256, 8, 3, 1, 1),
      L("vgg11 128-256 16x16", 128, 256, 16, 3, 1, 1),
      L("vgg11 256-256 8x8", 256, 256, 8, 3, 1, 1),
      L("vgg11 512-512 4x4", 512, 512, 4, 3, 1, 1),
      L("vgg11 512-512 2x2", 512, 512, 2, 3, 1, 1),
  };
}

const std::vector<double> kTableDensities = {0.5, 0.2, 0.1, 0.05, 0.02};
// Extra points (timed in the JSON mode only) that bracket the crossover.
const std::vector<double> kCrossoverDensities = {1.0, 0.7, 0.5, 0.35, 0.2, 0.1, 0.05, 0.02};

enum class Pass { Fwd, Dgrad, Wgrad };
const char* pass_name(Pass p) { return p == Pass::Fwd ? "fwd" : p == Pass::Dgrad ? "dgrad" : "wgrad"; }
const Pass kPasses[] = {Pass::Fwd, Pass::Dgrad, Pass::Wgrad};

std::vector<float> uniform(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& e : v) e = d(gen);
  return v;
}

// Unstructured Bernoulli(density) mask, like global magnitude pruning of random weights.
std::vector<float> bernoulli_mask(const Conv2dShape& s, double density, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> m(size_t(s.w_size()));
  for (auto& e : m) e = u(gen) < density ? 1.0f : 0.0f;
  return m;
}

struct Data {
  Conv2dShape s;
  SparseConvPattern p;
  std::vector<float> values, wm, x, dy, bias;
};

Data make_data(const Conv2dShape& s, double density, uint32_t seed) {
  Data d;
  d.s = s;
  const std::vector<float> mask = bernoulli_mask(s, density, seed);
  d.p = sparse_conv_pattern_from_mask(s, mask.data());
  const std::vector<float> w = uniform(s.w_size(), seed + 1);
  d.values.resize(size_t(d.p.nnz));
  sparse_conv_gather_values(d.p, w.data(), d.values.data());
  d.wm.resize(size_t(s.w_size()));
  sparse_conv_scatter_values(d.p, d.values.data(), d.wm.data());
  d.x = uniform(s.x_size(), seed + 2);
  d.dy = uniform(s.y_size(), seed + 3);
  d.bias = uniform(s.cout, seed + 4);
  return d;
}

double dense_flops(const Conv2dShape& s) {
  return 2.0 * s.n * s.cout * s.cin * s.kh * s.kw * double(s.oh()) * s.ow();
}
double sparse_flops(const Conv2dShape& s, int64_t nnz) { return 2.0 * s.n * double(nnz) * s.oh() * s.ow(); }

// ---------------------------------------------------------------------------------------------------
// Verification: the sparse CPU path on a two-image slice against the plain-loop dense reference on W⊙M.

double max_rel_err(const std::vector<float>& got, const std::vector<float>& ref) {
  double worst = 0.0, scale = 1e-6;
  for (float r : ref) scale = std::max(scale, double(std::fabs(r)));
  for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(double(got[i]) - ref[i]) / scale);
  return worst;
}

// Returns the error relative to the largest reference magnitude; throws if it exceeds 1e-4.
double verify_cpu(const Conv2dShape& full, double density, Pass pass, uint32_t seed) {
  Conv2dShape s = full;
  s.n = std::min(full.n, 2);
  const Data d = make_data(s, density, seed);
  std::vector<float> got, ref;
  if (pass == Pass::Fwd) {
    got.resize(size_t(s.y_size()));
    ref.resize(got.size());
    sparse_conv2d_forward_cpu(s, d.p, d.values.data(), d.x.data(), d.bias.data(), got.data());
    conv2d_forward_ref_cpu(s, d.x.data(), d.wm.data(), d.bias.data(), ref.data());
  } else if (pass == Pass::Dgrad) {
    got.resize(size_t(s.x_size()));
    ref.resize(got.size());
    sparse_conv2d_backward_input_cpu(s, d.p, d.values.data(), d.dy.data(), got.data());
    conv2d_backward_input_ref_cpu(s, d.dy.data(), d.wm.data(), ref.data());
  } else {
    std::vector<float> dw(size_t(s.w_size()));
    got.resize(size_t(d.p.nnz));
    ref.resize(got.size());
    sparse_conv2d_backward_weight_cpu(s, d.p, d.x.data(), d.dy.data(), got.data(), static_cast<float*>(nullptr));
    conv2d_backward_weight_ref_cpu(s, d.x.data(), d.dy.data(), dw.data(), static_cast<float*>(nullptr));
    sparse_conv_gather_values(d.p, dw.data(), ref.data());
  }
  const double err = ref.empty() ? 0.0 : max_rel_err(got, ref);
  SPARROW_CHECK(err <= 1e-4, "verification failed: ", pass_name(pass), " density ", density, " shape ", s.cin,
                "->", s.cout, " ", s.h, "x", s.w, ": max error ", err, " of the largest reference value");
  return err;
}

// ---------------------------------------------------------------------------------------------------
// CPU timing.

using Clock = std::chrono::steady_clock;

// --clock cpu: process CPU time divided by the thread count instead of wall time. On a shared, loaded
// machine a preempted thread stalls the others at the next barrier for a scheduler tick, which wall time
// charges to the kernel; CPU time does not (exact with --threads 1, an idealised parallel time above).
bool g_cpu_clock = false;

double now_ms() {
  if (!g_cpu_clock) return std::chrono::duration<double, std::milli>(Clock::now().time_since_epoch()).count();
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6) / omp_get_max_threads();
}

// One warm-up call, then repetitions until min_seconds of wall time have passed (at least 3, at most 50);
// the fastest in ms (the machines these run on are shared, so the minimum is the stable statistic).
double time_ms(const std::function<void()>& f, double min_seconds) {
  f();
  std::vector<double> t;
  const auto start = Clock::now();
  while (t.size() < 3 || std::chrono::duration<double>(Clock::now() - start).count() < min_seconds) {
    const double t0 = now_ms();
    f();
    t.push_back(now_ms() - t0);
    if (t.size() >= 50) break;
  }
  return *std::min_element(t.begin(), t.end());
}

struct CpuBuffers {
  std::vector<float> y, dx, dw, dv, db;
  explicit CpuBuffers(const Data& d)
      : y(size_t(d.s.y_size())), dx(size_t(d.s.x_size())), dw(size_t(d.s.w_size())),
        dv(size_t(std::max<int64_t>(1, d.p.nnz))), db(size_t(d.s.cout)) {}
};

void run_dense_cpu(const Data& d, Pass pass, CpuBuffers& b) {
  if (pass == Pass::Fwd)
    conv2d_forward_cpu(d.s, d.x.data(), d.wm.data(), d.bias.data(), b.y.data());
  else if (pass == Pass::Dgrad)
    conv2d_backward_input_cpu(d.s, d.dy.data(), d.wm.data(), b.dx.data());
  else
    conv2d_backward_weight_cpu(d.s, d.x.data(), d.dy.data(), b.dw.data(), b.db.data());
}

void run_sparse_cpu(const Data& d, Pass pass, CpuBuffers& b) {
  if (pass == Pass::Fwd)
    sparse_conv2d_forward_cpu(d.s, d.p, d.values.data(), d.x.data(), d.bias.data(), b.y.data());
  else if (pass == Pass::Dgrad)
    sparse_conv2d_backward_input_cpu(d.s, d.p, d.values.data(), d.dy.data(), b.dx.data());
  else
    sparse_conv2d_backward_weight_cpu(d.s, d.p, d.x.data(), d.dy.data(), b.dv.data(), b.db.data());
}

// Crossover: the density at which sparse and dense take the same time, interpolated (in log density)
// between the two measured points around it; 1.0 when sparse wins everywhere measured, the smallest
// density with a "<" when it loses everywhere.
std::string crossover(const std::vector<std::pair<double, double>>& density_speedup) {
  std::vector<std::pair<double, double>> v = density_speedup;
  std::sort(v.begin(), v.end());
  if (v.empty()) return "n/a";
  if (v.front().second < 1.0) return "<" + std::to_string(v.front().first).substr(0, 5);
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i].second < 1.0) {
      const double d0 = std::log(v[i - 1].first), d1 = std::log(v[i].first);
      const double s0 = std::log(v[i - 1].second), s1 = std::log(v[i].second);
      const double d = std::exp(d0 + (d1 - d0) * s0 / (s0 - s1));
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.3f", d);
      return buf;
    }
  return ">=" + std::to_string(v.back().first).substr(0, 4);
}

struct Options {
  int threads = 0, batch = 128;
  std::string device = "cpu", filter;
  double min_seconds = 0.5;
  std::vector<double> densities;
};

int run_json_cpu(const Options& o) {
  std::printf("# sparrow-bench-sparse-conv: cpu, %d threads, batch %d, %s (fastest of >= 3 runs over >= %.2f s); "
              "dense path: GEMM through %s\n",
              omp_get_max_threads(), o.batch, g_cpu_clock ? "process CPU time / threads" : "wall time",
              o.min_seconds, blas_info().c_str());
  std::vector<std::string> summary;
  for (const Layer& layer : bench_layers(o.batch)) {
    if (!o.filter.empty() && layer.name.find(o.filter) == std::string::npos) continue;
    std::map<Pass, double> dense_ms;
    std::map<Pass, std::vector<std::pair<double, double>>> curve;
    std::vector<std::pair<double, double>> step_curve;
    uint32_t seed = 1;
    for (double density : o.densities) {
      const Data d = make_data(layer.s, density, seed += 17);
      CpuBuffers dense_out(d), sparse_out(d);
      double step_dense = 0.0, step_sparse = 0.0;
      for (Pass pass : kPasses) {
        const double err = verify_cpu(layer.s, density, pass, seed + 1000);
        if (!dense_ms.count(pass))  // dense cost does not depend on the values: timed once per layer
          dense_ms[pass] = time_ms([&] { run_dense_cpu(d, pass, dense_out); }, o.min_seconds);
        const double ms = time_ms([&] { run_sparse_cpu(d, pass, sparse_out); }, o.min_seconds);
        const double speedup = dense_ms[pass] / ms;
        curve[pass].push_back({density, speedup});
        step_dense += dense_ms[pass];
        step_sparse += ms;
        std::printf(
            "{\"engine\":\"sparrow\",\"op\":\"sparse_conv\",\"device\":\"cpu\",\"threads\":%d,\"pass\":\"%s\","
            "\"layer\":\"%s\",\"batch\":%d,\"density\":%.4f,\"nnz\":%lld,\"dense_ms\":%.4f,\"sparse_ms\":%.4f,"
            "\"speedup\":%.3f,\"sparse_gflops\":%.2f,\"dense_equiv_gflops\":%.2f,\"verify_err\":%.2e}\n",
            omp_get_max_threads(), pass_name(pass), layer.name.c_str(), o.batch, d.p.density(),
            (long long)d.p.nnz, dense_ms[pass], ms, speedup, sparse_flops(layer.s, d.p.nnz) / ms * 1e-6,
            dense_flops(layer.s) / ms * 1e-6, err);
        std::fflush(stdout);
      }
      step_curve.push_back({density, step_dense / step_sparse});
    }
    summary.push_back(layer.name + ": fwd " + crossover(curve[Pass::Fwd]) + ", dgrad " +
                      crossover(curve[Pass::Dgrad]) + ", wgrad " + crossover(curve[Pass::Wgrad]) +
                      ", step (sum of the three) " + crossover(step_curve));
  }
  std::printf("# crossover density per layer (sparse is faster below it; interpolated in log density)\n");
  for (const std::string& line : summary) std::printf("# %s\n", line.c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// Google Benchmark suite (CPU).

void bm_conv(benchmark::State& state, Conv2dShape s, double density, Pass pass, bool sparse) {
  static std::set<std::string> verified;
  const std::string key = std::to_string(s.cin) + "-" + std::to_string(s.cout) + "-" + std::to_string(s.h) +
                          "-" + std::to_string(s.stride) + "-" + std::to_string(density) + pass_name(pass);
  if (sparse && !verified.count(key)) {
    try {
      verify_cpu(s, density, pass, 99);
    } catch (const Error& e) {
      state.SkipWithError(e.what());
      return;
    }
    verified.insert(key);
  }
  const Data d = make_data(s, density, 7);
  CpuBuffers b(d);
  for (auto _ : state) {
    if (sparse)
      run_sparse_cpu(d, pass, b);
    else
      run_dense_cpu(d, pass, b);
    benchmark::ClobberMemory();
  }
  state.counters["dense_equiv_FLOP/s"] =
      benchmark::Counter(dense_flops(s), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["actual_FLOP/s"] = benchmark::Counter(
      sparse ? sparse_flops(s, d.p.nnz) : dense_flops(s), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["density"] = d.p.density();
}

void register_benchmarks(const Options& o) {
  for (const Layer& layer : bench_layers(o.batch)) {
    if (!o.filter.empty() && layer.name.find(o.filter) == std::string::npos) continue;
    for (Pass pass : kPasses) {
      benchmark::RegisterBenchmark((std::string("dense/") + pass_name(pass) + "/" + layer.name).c_str(), bm_conv,
                                   layer.s, 1.0, pass, false)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      for (double density : o.densities)
        benchmark::RegisterBenchmark(
            (std::string("sparse/") + pass_name(pass) + "/" + layer.name + "/d" + std::to_string(density).substr(0, 4))
                .c_str(),
            bm_conv, layer.s, density, pass, true)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// CUDA: ours vs cuDNN (dense on W⊙M) vs cuSPARSE (CSR weights × im2col), timed with CUDA events.

#if SPARROW_HAS_CUDA
struct DevBuf {
  float* p = nullptr;
  explicit DevBuf(size_t n) { SPARROW_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(float))); }
  DevBuf(const std::vector<float>& h) : DevBuf(h.size()) {
    if (!h.empty()) SPARROW_CUDA_CHECK(cudaMemcpy(p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  std::vector<float> get(size_t n) const {
    std::vector<float> h(n);
    if (n) SPARROW_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
  }
};

double time_cuda_ms(const std::function<void()>& f, int reps = 20) {
  cudaEvent_t a, b;
  SPARROW_CUDA_CHECK(cudaEventCreate(&a));
  SPARROW_CUDA_CHECK(cudaEventCreate(&b));
  f();
  SPARROW_CUDA_CHECK(cudaDeviceSynchronize());
  SPARROW_CUDA_CHECK(cudaEventRecord(a));
  for (int i = 0; i < reps; ++i) f();
  SPARROW_CUDA_CHECK(cudaEventRecord(b));
  SPARROW_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0.0f;
  SPARROW_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return double(ms) / reps;
}

// cuSPARSE baseline for one layer: A = CSR weights (Cout × K), B = im2col (K × N·P), all three passes.
struct CusparseConv {
  const Data& d;
  cusparseHandle_t h = nullptr;
  int32_t *rp = nullptr, *ci = nullptr;
  float* workspace = nullptr;
  size_t ws_bytes = 0;
  int64_t K, NP;
  DevBuf col, ycn, dycn;  // im2col / dcol (K × NP), y and dy in C×N×P layout

  CusparseConv(const Data& data, const float* d_values)
      : d(data), K(int64_t(data.s.cin) * data.s.kh * data.s.kw),
        NP(int64_t(data.s.n) * data.s.oh() * data.s.ow()), col(size_t(K * NP)), ycn(size_t(data.s.y_size())),
        dycn(size_t(data.s.y_size())) {
    SPARROW_CUSPARSE_CHECK(cusparseCreate(&h));
    std::vector<int32_t> hrp(size_t(d.s.cout) + 1), hci(size_t(std::max<int64_t>(1, d.p.nnz)));
    for (size_t i = 0; i < hrp.size(); ++i) hrp[i] = int32_t(d.p.row_ptr[i]);
    for (int64_t k = 0; k < d.p.nnz; ++k) hci[size_t(k)] = int32_t(d.p.index[size_t(k)] % K);
    SPARROW_CUDA_CHECK(cudaMalloc(&rp, hrp.size() * 4));
    SPARROW_CUDA_CHECK(cudaMalloc(&ci, hci.size() * 4));
    SPARROW_CUDA_CHECK(cudaMemcpy(rp, hrp.data(), hrp.size() * 4, cudaMemcpyHostToDevice));
    SPARROW_CUDA_CHECK(cudaMemcpy(ci, hci.data(), hci.size() * 4, cudaMemcpyHostToDevice));
    values = d_values;
  }
  ~CusparseConv() {
    cudaFree(rp);
    cudaFree(ci);
    cudaFree(workspace);
    cusparseDestroy(h);
  }
  const float* values = nullptr;

  void ensure_workspace(size_t bytes) {
    if (bytes <= ws_bytes) return;
    cudaFree(workspace);
    SPARROW_CUDA_CHECK(cudaMalloc(&workspace, bytes));
    ws_bytes = bytes;
  }
  cusparseSpMatDescr_t csr(float* vals) {
    cusparseSpMatDescr_t a;
    SPARROW_CUSPARSE_CHECK(cusparseCreateCsr(&a, d.s.cout, K, d.p.nnz, rp, ci, vals, CUSPARSE_INDEX_32I,
                                             CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO, CUDA_R_32F));
    return a;
  }
  cusparseDnMatDescr_t dense(int64_t rows, int64_t cols, float* p) {
    cusparseDnMatDescr_t m;
    SPARROW_CUSPARSE_CHECK(cusparseCreateDnMat(&m, rows, cols, cols, p, CUDA_R_32F, CUSPARSE_ORDER_ROW));
    return m;
  }
  void spmm(cusparseOperation_t op, cusparseSpMatDescr_t a, cusparseDnMatDescr_t b, cusparseDnMatDescr_t c) {
    const float one = 1.0f, zero = 0.0f;
    size_t bytes = 0;
    SPARROW_CUSPARSE_CHECK(cusparseSpMM_bufferSize(h, op, CUSPARSE_OPERATION_NON_TRANSPOSE, &one, a, b, &zero, c,
                                                   CUDA_R_32F, CUSPARSE_SPMM_ALG_DEFAULT, &bytes));
    ensure_workspace(bytes);
    SPARROW_CUSPARSE_CHECK(cusparseSpMM(h, op, CUSPARSE_OPERATION_NON_TRANSPOSE, &one, a, b, &zero, c, CUDA_R_32F,
                                        CUSPARSE_SPMM_ALG_DEFAULT, workspace));
  }
  // y = permute(A · im2col(x)) (+ bias omitted: cuSPARSE has no fused bias; ours adds it).
  void forward(const float* x, float* y) {
    sparse_conv_im2col_cuda(d.s, x, col.p);
    cusparseSpMatDescr_t a = csr(const_cast<float*>(values));
    cusparseDnMatDescr_t b = dense(K, NP, col.p), c = dense(d.s.cout, NP, ycn.p);
    spmm(CUSPARSE_OPERATION_NON_TRANSPOSE, a, b, c);
    cusparseDestroySpMat(a);
    cusparseDestroyDnMat(b);
    cusparseDestroyDnMat(c);
    sparse_conv_swap_leading_cuda(d.s.cout, d.s.n, int64_t(d.s.oh()) * d.s.ow(), ycn.p, y);
  }
  // dx = col2im(Aᵀ · permute(dy)).
  void backward_input(const float* dy, float* dx) {
    sparse_conv_swap_leading_cuda(d.s.n, d.s.cout, int64_t(d.s.oh()) * d.s.ow(), dy, dycn.p);
    cusparseSpMatDescr_t a = csr(const_cast<float*>(values));
    cusparseDnMatDescr_t b = dense(d.s.cout, NP, dycn.p), c = dense(K, NP, col.p);
    spmm(CUSPARSE_OPERATION_TRANSPOSE, a, b, c);
    cusparseDestroySpMat(a);
    cusparseDestroyDnMat(b);
    cusparseDestroyDnMat(c);
    sparse_conv_col2im_cuda(d.s, col.p, dx);
  }
  // dvalues = (permute(dy) · im2col(x)ᵀ) sampled at the pattern (SDDMM).
  void backward_weight(const float* x, const float* dy, float* dvalues) {
    sparse_conv_im2col_cuda(d.s, x, col.p);
    sparse_conv_swap_leading_cuda(d.s.n, d.s.cout, int64_t(d.s.oh()) * d.s.ow(), dy, dycn.p);
    cusparseSpMatDescr_t c = csr(dvalues);
    cusparseDnMatDescr_t a = dense(d.s.cout, NP, dycn.p), b = dense(K, NP, col.p);
    const float one = 1.0f, zero = 0.0f;
    size_t bytes = 0;
    SPARROW_CUSPARSE_CHECK(cusparseSDDMM_bufferSize(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE,
                                                    &one, a, b, &zero, c, CUDA_R_32F, CUSPARSE_SDDMM_ALG_DEFAULT,
                                                    &bytes));
    ensure_workspace(bytes);
    SPARROW_CUSPARSE_CHECK(cusparseSDDMM(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE, &one, a,
                                         b, &zero, c, CUDA_R_32F, CUSPARSE_SDDMM_ALG_DEFAULT, workspace));
    cusparseDestroySpMat(c);
    cusparseDestroyDnMat(a);
    cusparseDestroyDnMat(b);
  }
};

#if SPARROW_HAS_CUDNN
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#define BENCH_CUDNN_CHECK(call) SPARROW_CUDNN_CHECK(call)
// cuDNN dense convolution (legacy API, fastest algorithm by cudnnFind*) on the masked dense weight.
struct CudnnConv {
  cudnnHandle_t h = nullptr;
  cudnnTensorDescriptor_t xd = nullptr, yd = nullptr;
  cudnnFilterDescriptor_t wd = nullptr;
  cudnnConvolutionDescriptor_t cd = nullptr;
  cudnnConvolutionFwdAlgo_t fwd_algo{};
  cudnnConvolutionBwdDataAlgo_t bwd_data_algo{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo{};
  void* ws = nullptr;
  size_t ws_bytes = 0;

  explicit CudnnConv(const Conv2dShape& s) {
    BENCH_CUDNN_CHECK(cudnnCreate(&h));
    BENCH_CUDNN_CHECK(cudnnCreateTensorDescriptor(&xd));
    BENCH_CUDNN_CHECK(cudnnCreateTensorDescriptor(&yd));
    BENCH_CUDNN_CHECK(cudnnCreateFilterDescriptor(&wd));
    BENCH_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&cd));
    BENCH_CUDNN_CHECK(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s.n, s.cin, s.h, s.w));
    BENCH_CUDNN_CHECK(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s.n, s.cout, s.oh(), s.ow()));
    BENCH_CUDNN_CHECK(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, s.cout, s.cin, s.kh, s.kw));
    BENCH_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(cd, s.pad, s.pad, s.stride, s.stride, 1, 1,
                                                      CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    int got = 0;
    cudnnConvolutionFwdAlgoPerf_t fp[8];
    BENCH_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, xd, wd, cd, yd, 8, &got, fp));
    fwd_algo = fp[0].algo;
    cudnnConvolutionBwdDataAlgoPerf_t dp[8];
    BENCH_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(h, wd, yd, cd, xd, 8, &got, dp));
    bwd_data_algo = dp[0].algo;
    cudnnConvolutionBwdFilterAlgoPerf_t wp[8];
    BENCH_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(h, xd, yd, cd, wd, 8, &got, wp));
    bwd_filter_algo = wp[0].algo;
    size_t a = 0, b = 0, c = 0;
    BENCH_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, xd, wd, cd, yd, fwd_algo, &a));
    BENCH_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, wd, yd, cd, xd, bwd_data_algo, &b));
    BENCH_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, xd, yd, cd, wd, bwd_filter_algo, &c));
    ws_bytes = std::max({a, b, c, size_t(1)});
    SPARROW_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  }
  ~CudnnConv() {
    cudaFree(ws);
    cudnnDestroyConvolutionDescriptor(cd);
    cudnnDestroyFilterDescriptor(wd);
    cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyTensorDescriptor(xd);
    cudnnDestroy(h);
  }
  void forward(const float* x, const float* w, float* y) {
    const float one = 1.0f, zero = 0.0f;
    BENCH_CUDNN_CHECK(cudnnConvolutionForward(h, &one, xd, x, wd, w, cd, fwd_algo, ws, ws_bytes, &zero, yd, y));
  }
  void backward_input(const float* dy, const float* w, float* dx) {
    const float one = 1.0f, zero = 0.0f;
    BENCH_CUDNN_CHECK(
        cudnnConvolutionBackwardData(h, &one, wd, w, yd, dy, cd, bwd_data_algo, ws, ws_bytes, &zero, xd, dx));
  }
  void backward_weight(const float* x, const float* dy, float* dw) {
    const float one = 1.0f, zero = 0.0f;
    BENCH_CUDNN_CHECK(
        cudnnConvolutionBackwardFilter(h, &one, xd, x, yd, dy, cd, bwd_filter_algo, ws, ws_bytes, &zero, wd, dw));
  }
};
#pragma GCC diagnostic pop
#endif

int run_json_cuda(const Options& o) {
  if (!cuda_available()) {
    std::printf("# --device cuda skipped: %s\n", cuda_unavailable_reason().c_str());
    return 0;
  }
#if !SPARROW_HAS_CUDNN
  std::printf("# cuDNN not found at configure time: the dense baseline column is absent\n");
#endif
  std::printf("# sparrow-bench-sparse-conv: cuda, batch %d (CUDA events, mean of 20 runs)\n", o.batch);
  std::vector<std::string> summary;
  for (const Layer& layer : bench_layers(o.batch)) {
    if (!o.filter.empty() && layer.name.find(o.filter) == std::string::npos) continue;
    const Conv2dShape& s = layer.s;
    std::map<Pass, std::vector<std::pair<double, double>>> curve;
#if SPARROW_HAS_CUDNN
    CudnnConv cudnn(s);
#endif
    uint32_t seed = 1;
    for (double density : o.densities) {
      const Data d = make_data(s, density, seed += 17);
      const SparseConvPatternDevice pd(d.p);
      DevBuf values(d.values), wm(d.wm), x(d.x), dy(d.dy), bias(d.bias);
      DevBuf y(size_t(s.y_size())), dx(size_t(s.x_size())), dw(size_t(s.w_size())),
          dv(size_t(std::max<int64_t>(1, d.p.nnz))), db(size_t(s.cout));
      CusparseConv csp(d, values.p);
      // Verify ours once against the CPU sparse path (itself checked against the dense reference).
      CpuBuffers cpu(d);
      for (Pass pass : kPasses) run_sparse_cpu(d, pass, cpu);
      sparse_conv2d_forward_cuda(s, pd, values.p, x.p, bias.p, y.p);
      sparse_conv2d_backward_input_cuda(s, pd, values.p, dy.p, dx.p);
      sparse_conv2d_backward_weight_cuda(s, pd, x.p, dy.p, dv.p, db.p);
      SPARROW_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> cpu_dv(cpu.dv.begin(), cpu.dv.begin() + d.p.nnz);
      const double err = std::max({max_rel_err(y.get(cpu.y.size()), cpu.y), max_rel_err(dx.get(cpu.dx.size()), cpu.dx),
                                   d.p.nnz ? max_rel_err(dv.get(size_t(d.p.nnz)), cpu_dv) : 0.0});
      SPARROW_CHECK(err <= 1e-3, "cuda verification failed for ", layer.name, " density ", density, ": ", err);
      for (Pass pass : kPasses) {
        double ours = 0.0, vendor_dense = -1.0, vendor_sparse = 0.0;
        if (pass == Pass::Fwd) {
          ours = time_cuda_ms([&] { sparse_conv2d_forward_cuda(s, pd, values.p, x.p, bias.p, y.p); });
          vendor_sparse = time_cuda_ms([&] { csp.forward(x.p, y.p); });
#if SPARROW_HAS_CUDNN
          vendor_dense = time_cuda_ms([&] { cudnn.forward(x.p, wm.p, y.p); });
#endif
        } else if (pass == Pass::Dgrad) {
          ours = time_cuda_ms([&] { sparse_conv2d_backward_input_cuda(s, pd, values.p, dy.p, dx.p); });
          vendor_sparse = time_cuda_ms([&] { csp.backward_input(dy.p, dx.p); });
#if SPARROW_HAS_CUDNN
          vendor_dense = time_cuda_ms([&] { cudnn.backward_input(dy.p, wm.p, dx.p); });
#endif
        } else {
          ours = time_cuda_ms([&] { sparse_conv2d_backward_weight_cuda(s, pd, x.p, dy.p, dv.p, nullptr); });
          vendor_sparse = time_cuda_ms([&] { csp.backward_weight(x.p, dy.p, dv.p); });
#if SPARROW_HAS_CUDNN
          vendor_dense = time_cuda_ms([&] { cudnn.backward_weight(x.p, dy.p, dw.p); });
#endif
        }
        if (vendor_dense > 0) curve[pass].push_back({density, vendor_dense / ours});
        std::printf(
            "{\"engine\":\"sparrow\",\"op\":\"sparse_conv\",\"device\":\"cuda\",\"pass\":\"%s\",\"layer\":\"%s\","
            "\"batch\":%d,\"density\":%.4f,\"nnz\":%lld,\"dense_ms\":%.4f,\"sparse_ms\":%.4f,\"cusparse_ms\":%.4f,"
            "\"speedup\":%.3f,\"speedup_vs_cusparse\":%.3f,\"verify_err\":%.2e}\n",
            pass_name(pass), layer.name.c_str(), o.batch, d.p.density(), (long long)d.p.nnz, vendor_dense, ours,
            vendor_sparse, vendor_dense > 0 ? vendor_dense / ours : 0.0, vendor_sparse / ours, err);
        std::fflush(stdout);
      }
    }
    summary.push_back(layer.name + ": fwd " + crossover(curve[Pass::Fwd]) + ", dgrad " +
                      crossover(curve[Pass::Dgrad]) + ", wgrad " + crossover(curve[Pass::Wgrad]));
  }
  std::printf("# crossover density per layer vs cuDNN (ours is faster below it)\n");
  for (const std::string& line : summary) std::printf("# %s\n", line.c_str());
  return 0;
}
#endif

void usage() {
  std::printf(
      "usage: sparrow-bench-sparse-conv [--json] [--device cpu|cuda] [--threads N] [--batch N]\n"
      "                                 [--layer SUBSTRING] [--densities d1,d2,...] [--min-time SECONDS]\n"
      "                                 [--clock wall|cpu]  (cpu: process CPU time / threads, for loaded hosts)\n"
      "                                 [--benchmark_* flags: run the Google Benchmark suite instead]\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool gbench = false, densities_set = false;
  std::vector<char*> rest{argv[0]};
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&](const char* flag) -> std::string {
        SPARROW_CHECK(i + 1 < argc, flag, " needs a value");
        return argv[++i];
      };
      if (a == "--json") {
      } else if (a == "--threads") {
        o.threads = std::stoi(value("--threads"));
      } else if (a == "--batch") {
        o.batch = std::stoi(value("--batch"));
      } else if (a == "--device") {
        o.device = value("--device");
      } else if (a == "--layer") {
        o.filter = value("--layer");
      } else if (a == "--clock") {
        const std::string c = value("--clock");
        SPARROW_CHECK(c == "wall" || c == "cpu", "--clock must be wall or cpu, not ", c);
        g_cpu_clock = c == "cpu";
      } else if (a == "--min-time") {
        o.min_seconds = std::stod(value("--min-time"));
      } else if (a == "--densities") {
        const std::string v = value("--densities");
        size_t pos = 0;
        while (pos < v.size()) {
          const size_t end = std::min(v.find(',', pos), v.size());
          o.densities.push_back(std::stod(v.substr(pos, end - pos)));
          pos = end + 1;
        }
        densities_set = true;
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
    SPARROW_CHECK(o.batch > 0, "--batch must be positive");
    SPARROW_CHECK(o.device == "cpu" || o.device == "cuda", "--device must be cpu or cuda, not ", o.device);
    for (double d : o.densities) SPARROW_CHECK(d > 0.0 && d <= 1.0, "--densities: ", d, " outside (0, 1]");
    if (o.threads > 0) omp_set_num_threads(o.threads);
    if (gbench) {
      if (!densities_set) o.densities = kTableDensities;
      register_benchmarks(o);
      int n = int(rest.size());
      benchmark::Initialize(&n, rest.data());
      benchmark::RunSpecifiedBenchmarks();
      benchmark::Shutdown();
      return 0;
    }
    if (!densities_set) o.densities = kCrossoverDensities;
    if (o.device == "cuda") {
#if SPARROW_HAS_CUDA
      return run_json_cuda(o);
#else
      std::printf("# --device cuda skipped: %s\n", cuda_unavailable_reason().c_str());
      return 0;
#endif
    }
    return run_json_cpu(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sparrow-bench-sparse-conv: %s\n", e.what());
    return 1;
  }
}
