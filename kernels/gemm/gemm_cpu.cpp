// Dense GEMM on row-major raw pointers: gemm_cpu forwards to CBLAS (OpenBLAS), gemm_ref_cpu is the
// plain loop oracle. C (m×n, ldc) = alpha·op(A)·op(B) + beta·C; beta == 0 means C is not read.
//
// The BLAS library is opened here with dlopen rather than linked. A DYNAMIC_ARCH OpenBLAS picks its kernel
// family in a library constructor, which for a linked library runs before main, from a table of the CPU
// models it knows; Debian's 0.3.21 falls back to its SSE3 "Prescott" kernels on newer ones (an Emerald
// Rapids Xeon, family 6 model 207: 32 GFLOP/s a core in sgemm, against 145 with its AVX-512 "SkylakeX"
// kernels, measured with OPENBLAS_CORETYPE set). So unless OPENBLAS_CORETYPE is already set, the family is
// named from the instruction sets the CPU and OS support, for the length of the dlopen only.
#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "engine/base/error.h"
#include "kernels/gemm/gemm.h"

#ifndef SPARROW_BLAS_LIBRARY
#error "SPARROW_BLAS_LIBRARY (the path of the CBLAS library to dlopen) is set by cmake/SparrowDeps.cmake"
#endif

namespace sparrow {

const char* blas_kernel_family_for_cpu() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  // The set OpenBLAS's own SkylakeX check asks for (it also needs the OS to save the zmm state, which
  // __builtin_cpu_supports checks through XCR0).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512cd"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;
}

namespace {

struct Blas {
  decltype(&cblas_sgemm) sgemm = nullptr;
  decltype(&cblas_dgemm) dgemm = nullptr;
  std::string info;
};

Blas load_blas() {
  const char* path = SPARROW_BLAS_LIBRARY;
  const char* user_core = std::getenv("OPENBLAS_CORETYPE");
  const char* chosen = user_core ? nullptr : blas_kernel_family_for_cpu();
  // Runs once, at the first GEMM (other callers wait on the static's guard; sparrow's other getenv calls run
  // on the model's thread, not beside it). The variable is removed again once the library's constructor has
  // read it, so children and later code see the environment the process was started with.
  if (chosen) setenv("OPENBLAS_CORETYPE", chosen, 0);
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  const std::string err = lib ? "" : dlerror();
  if (chosen) unsetenv("OPENBLAS_CORETYPE");
  SPARROW_CHECK(lib, "BLAS: cannot load ", path, ": ", err, " (run scripts/install-deps.sh)");
  Blas b;
  b.sgemm = reinterpret_cast<decltype(&cblas_sgemm)>(dlsym(lib, "cblas_sgemm"));
  b.dgemm = reinterpret_cast<decltype(&cblas_dgemm)>(dlsym(lib, "cblas_dgemm"));
  SPARROW_CHECK(b.sgemm && b.dgemm, "BLAS: ", path, " has no cblas_sgemm/cblas_dgemm");
  using NameFn = char* (*)();
  const auto config = reinterpret_cast<NameFn>(dlsym(lib, "openblas_get_config"));
  const auto core = reinterpret_cast<NameFn>(dlsym(lib, "openblas_get_corename"));
  if (config && core) {
    const std::string cfg = config();  // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..."
    const bool dynamic = cfg.find("DYNAMIC_ARCH") != std::string::npos;
    b.info = cfg.substr(0, cfg.find(' ', cfg.find(' ') + 1)) + " " + core() +
             (!dynamic   ? " (built for one kernel family)"
              : user_core ? std::string(" (OPENBLAS_CORETYPE=") + user_core + ")"
              : chosen    ? " (kernel family chosen by sparrow from the CPU's instruction sets)"
                          : " (the library's own CPU detection)");
  } else {
    b.info = path;
  }
  return b;
}

const Blas& blas() {
  static const Blas b = load_blas();
  return b;
}

CBLAS_TRANSPOSE trans(bool t) { return t ? CblasTrans : CblasNoTrans; }

// BLAS leaves C alone when m or n is 0 and, with k == 0, only scales C; we do the k == 0 case ourselves so
// that beta == 0 clears C (NaNs included) on every BLAS build.
template <typename T>
bool trivial_gemm(int m, int n, int k, T beta, T* c, int ldc) {
  if (m <= 0 || n <= 0) return true;
  if (k > 0) return false;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      c[int64_t(i) * ldc + j] = beta == T(0) ? T(0) : beta * c[int64_t(i) * ldc + j];
  return true;
}

void blas_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
               int ldb, float beta, float* c, int ldc) {
  blas().sgemm(CblasRowMajor, trans(ta), trans(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void blas_gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
               int ldb, double beta, double* c, int ldc) {
  blas().dgemm(CblasRowMajor, trans(ta), trans(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace

const std::string& blas_info() { return blas().info; }

template <typename T>
void gemm_cpu(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
              T beta, T* c, int ldc) {
  if (trivial_gemm(m, n, k, beta, c, ldc)) return;
  // Called from inside an active OpenMP region (conv runs one GEMM per thread), Debian's OpenBLAS 0.3.21
  // OpenMP build still tries to run threaded: two threads each calling sgemm ran 2–3× slower than with
  // OPENBLAS_NUM_THREADS=1 (measured on the ResNet-20 conv shapes). Lowering this thread's nthreads ICV to 1
  // for the call makes OpenBLAS take its single-threaded path; the ICV is restored afterwards.
  if (omp_in_parallel() && omp_get_max_threads() > 1) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    blas_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    omp_set_num_threads(saved);
    return;
  }
  blas_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
void gemm_ref_cpu(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
                  T beta, T* c, int ldc) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double acc = 0.0;  // double accumulation keeps the oracle well below the tolerance of the fast path
      for (int p = 0; p < k; ++p) {
        const T av = ta ? a[int64_t(p) * lda + i] : a[int64_t(i) * lda + p];
        const T bv = tb ? b[int64_t(j) * ldb + p] : b[int64_t(p) * ldb + j];
        acc += double(av) * double(bv);
      }
      T& cij = c[int64_t(i) * ldc + j];
      cij = beta == T(0) ? T(alpha * acc) : T(alpha * acc + double(beta) * double(cij));
    }
  }
}

template void gemm_cpu<float>(bool, bool, int, int, int, float, const float*, int, const float*, int, float,
                              float*, int);
template void gemm_cpu<double>(bool, bool, int, int, int, double, const double*, int, const double*, int,
                               double, double*, int);
template void gemm_ref_cpu<float>(bool, bool, int, int, int, float, const float*, int, const float*, int,
                                  float, float*, int);
template void gemm_ref_cpu<double>(bool, bool, int, int, int, double, const double*, int, const double*, int,
                                   double, double*, int);

}  // namespace sparrow
