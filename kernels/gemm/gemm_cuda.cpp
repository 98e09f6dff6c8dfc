// Dense float GEMM on device pointers through cuBLAS, row-major by the transpose trick: a row-major
// m×n C is a column-major n×m Cᵀ = op(B)ᵀ·op(A)ᵀ, so cuBLAS is called with A and B swapped. One handle,
// bound to the compute stream; FP32 math (TF32 only with SPARROW_TF32=1).
#if SPARROW_HAS_CUDA
#include <cublas_v2.h>

#include <mutex>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/gemm/gemm.h"

namespace sparrow {

void* cublas_handle() {
  // Created on first use (never in a static initialiser) and kept for the process: destroying it at exit
  // would race the CUDA context's own teardown.
  static cublasHandle_t handle = [] {
    cublasHandle_t h;
    SPARROW_CUBLAS_CHECK(cublasCreate(&h));
    SPARROW_CUBLAS_CHECK(cublasSetStream(h, static_cast<cudaStream_t>(cuda_stream_handle())));
    SPARROW_CUBLAS_CHECK(cublasSetMathMode(h, cuda_tf32_enabled() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    return h;
  }();
  return handle;
}

namespace {
void check_gemm_args(bool ta, bool tb, int m, int n, int k, int lda, int ldb, int ldc) {
  SPARROW_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm_cuda: negative size m=", m, " n=", n, " k=", k);
  const int a_cols = ta ? m : k, b_cols = tb ? k : n;
  SPARROW_CHECK(lda >= (a_cols > 1 ? a_cols : 1) && ldb >= (b_cols > 1 ? b_cols : 1) && ldc >= (n > 1 ? n : 1),
                "gemm_cuda: leading dimensions lda=", lda, " ldb=", ldb, " ldc=", ldc, " too small for m=", m,
                " n=", n, " k=", k);
}
}  // namespace

void gemm_cuda(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
               int ldb, float beta, float* c, int ldc) {
  check_gemm_args(ta, tb, m, n, k, lda, ldb, ldc);
  if (m == 0 || n == 0) return;
  auto h = static_cast<cublasHandle_t>(cublas_handle());
  SPARROW_CUBLAS_CHECK(cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k,
                                   &alpha, b, ldb, a, lda, &beta, c, ldc));
  SPARROW_CUDA_LAUNCH_CHECK("cublasSgemm");
}

void gemm_strided_batched_cuda(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
                               int64_t stride_a, const float* b, int ldb, int64_t stride_b, float beta, float* c,
                               int ldc, int64_t stride_c, int batch) {
  check_gemm_args(ta, tb, m, n, k, lda, ldb, ldc);
  SPARROW_CHECK(batch >= 0, "gemm_strided_batched_cuda: negative batch ", batch);
  if (m == 0 || n == 0 || batch == 0) return;
  auto h = static_cast<cublasHandle_t>(cublas_handle());
  SPARROW_CUBLAS_CHECK(cublasSgemmStridedBatched(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                                 n, m, k, &alpha, b, ldb, stride_b, a, lda, stride_a, &beta, c,
                                                 ldc, stride_c, batch));
  SPARROW_CUDA_LAUNCH_CHECK("cublasSgemmStridedBatched");
}

}  // namespace sparrow
#endif
