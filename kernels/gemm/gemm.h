// Dense GEMM on raw row-major pointers: C = alpha·op(A)·op(B) + beta·C, op = transpose or not.
// gemm_cpu goes to CBLAS (OpenBLAS); gemm_ref_cpu is the plain triple loop kept for tests.
#pragma once

#include <string>

namespace sparrow {

// The BLAS behind gemm_cpu, for benchmark output: e.g. "OpenBLAS 0.3.21 SkylakeX (kernel family chosen by
// sparrow from the CPU's instruction sets)". Loads the library on first use, like the first gemm_cpu call.
const std::string& blas_info();
// The OpenBLAS kernel family sparrow asks for when OPENBLAS_CORETYPE is unset: "SkylakeX" on AVX-512
// (F/BW/DQ/VL/CD), "Haswell" on AVX2 + FMA, null elsewhere (the library's own detection decides).
const char* blas_kernel_family_for_cpu();

// A: (ta ? k×m : m×k) with leading dim lda; B: (tb ? n×k : k×n) with ldb; C: m×n with ldc.
template <typename T>
void gemm_cpu(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
              T beta, T* c, int ldc);
template <typename T>
void gemm_ref_cpu(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
                  T beta, T* c, int ldc);

}  // namespace sparrow

#if SPARROW_HAS_CUDA
#include <cstdint>

namespace sparrow {
// Device pointers, float, on the compute stream (cuBLAS, FP32 math unless SPARROW_TF32=1). Same
// row-major contract as gemm_cpu.
void gemm_cuda(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
               int ldb, float beta, float* c, int ldc);
// `batch` independent GEMMs, matrix i at a + i·stride_a, b + i·stride_b, c + i·stride_c (elements).
void gemm_strided_batched_cuda(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
                               int64_t stride_a, const float* b, int ldb, int64_t stride_b, float beta, float* c,
                               int ldc, int64_t stride_c, int batch);
// The cuBLAS handle (cublasHandle_t) bound to the compute stream, created on first use.
void* cublas_handle();
// Linear-layer bias on row-major rows×cols: y[r][c] += b[c]; db[c] = Σ_r dy[r][c] (written).
void bias_add_rows_cuda(int rows, int cols, const float* b, float* y);
void bias_grad_rows_cuda(int rows, int cols, const float* dy, float* db);
}  // namespace sparrow
#endif
