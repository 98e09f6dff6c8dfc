// Host/device qualifiers for the math shared by the CPU and CUDA launchers (DESIGN.md rule 2).
// Plain C++ compilers see ordinary inline functions.
#pragma once

#if defined(__CUDACC__)
#define SPARROW_HD __host__ __device__ __forceinline__
#else
#define SPARROW_HD inline
#endif
