// NVTX ranges (header-only NVTX3 from the CUDA toolkit) so nsys/ncu timelines read like the model.
// The same ranges feed the opt-in wall-clock profiler (engine/base/profiler.h) on any build.
// Usage: SPARROW_NVTX_RANGE("conv2d_fwd");  the name must outlive the range (a literal).
#pragma once

#include "engine/base/profiler.h"
#if SPARROW_HAS_CUDA
#include <nvtx3/nvToolsExt.h>
#endif

namespace sparrow {
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) : name_(name) {
#if SPARROW_HAS_CUDA
    nvtxRangePushA(name);
#endif
    if (profiler_enabled()) t0_ = profiler_now();
  }
  ~NvtxRange() {
#if SPARROW_HAS_CUDA
    nvtxRangePop();
#endif
    if (t0_ >= 0) profiler_add(name_, profiler_now() - t0_);
  }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;

 private:
  const char* name_;
  double t0_ = -1;
};
}  // namespace sparrow

#define SPARROW_NVTX_CAT2(a, b) a##b
#define SPARROW_NVTX_CAT(a, b) SPARROW_NVTX_CAT2(a, b)
#define SPARROW_NVTX_RANGE(name) ::sparrow::NvtxRange SPARROW_NVTX_CAT(sparrow_nvtx_, __LINE__)(name)
