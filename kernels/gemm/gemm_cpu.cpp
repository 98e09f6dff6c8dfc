// Dense GEMM on row-major raw pointers: gemm_cpu forwards to CBLAS (OpenBLAS), gemm_ref_cpu is the
// plain loop oracle. C (m×n, ldc) = alpha·op(A)·op(B) + beta·C; beta == 0 means C is not read.
#include <cblas.h>
#include <omp.h>

#include <cstdint>

#include "kernels/gemm/gemm.h"

namespace sparrow {

namespace {

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
  cblas_sgemm(CblasRowMajor, trans(ta), trans(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void blas_gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
               int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, trans(ta), trans(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace

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
