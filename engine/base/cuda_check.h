// Checked CUDA / cuBLAS / cuSPARSE / cuDNN calls: each failure names the call, file and line.
// SPARROW_CUDA_SYNC=1 in the environment synchronises after every launch to pin asynchronous faults.
// Include only from code compiled with SPARROW_HAS_CUDA.
#pragma once
#include <cuda_runtime.h>

#include "engine/base/error.h"

namespace sparrow {
bool cuda_sync_after_launch();  // reads SPARROW_CUDA_SYNC once
}

#define SPARROW_CUDA_CHECK(call)                                                              \
  do {                                                                                        \
    cudaError_t sparrow_err_ = (call);                                                        \
    if (sparrow_err_ != cudaSuccess)                                                          \
      ::sparrow::throw_error(__FILE__, __LINE__, ::sparrow::str("CUDA error in ", #call, ": ", \
                                                                cudaGetErrorString(sparrow_err_))); \
  } while (0)

// After a <<<...>>> launch: checks the launch and, with SPARROW_CUDA_SYNC=1, the kernel's completion.
#define SPARROW_CUDA_LAUNCH_CHECK(name)                                                          \
  do {                                                                                           \
    cudaError_t sparrow_err_ = cudaGetLastError();                                               \
    if (sparrow_err_ == cudaSuccess && ::sparrow::cuda_sync_after_launch())                      \
      sparrow_err_ = cudaDeviceSynchronize();                                                    \
    if (sparrow_err_ != cudaSuccess)                                                             \
      ::sparrow::throw_error(__FILE__, __LINE__, ::sparrow::str("CUDA kernel ", name, " failed: ", \
                                                                cudaGetErrorString(sparrow_err_))); \
  } while (0)

#define SPARROW_CUBLAS_CHECK(call)                                                            \
  do {                                                                                        \
    int sparrow_st_ = static_cast<int>(call);                                                 \
    if (sparrow_st_ != 0)                                                                     \
      ::sparrow::throw_error(__FILE__, __LINE__, ::sparrow::str("cuBLAS error ", sparrow_st_,  \
                                                                " in ", #call));              \
  } while (0)

#define SPARROW_CUSPARSE_CHECK(call)                                                          \
  do {                                                                                        \
    int sparrow_st_ = static_cast<int>(call);                                                 \
    if (sparrow_st_ != 0)                                                                     \
      ::sparrow::throw_error(__FILE__, __LINE__, ::sparrow::str("cuSPARSE error ", sparrow_st_, \
                                                                " in ", #call));              \
  } while (0)

#define SPARROW_CUDNN_CHECK(call)                                                             \
  do {                                                                                        \
    int sparrow_st_ = static_cast<int>(call);                                                 \
    if (sparrow_st_ != 0)                                                                     \
      ::sparrow::throw_error(__FILE__, __LINE__, ::sparrow::str("cuDNN error ", sparrow_st_,   \
                                                                " in ", #call));              \
  } while (0)
