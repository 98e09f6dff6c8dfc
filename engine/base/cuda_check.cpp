// SPARROW_CUDA_SYNC is read once; compiled only for CUDA builds (guarded so the CPU build skips it).
#if SPARROW_HAS_CUDA
#include "engine/base/cuda_check.h"

#include <cstdlib>
#include <cstring>

namespace sparrow {
bool cuda_sync_after_launch() {
  static const bool on = [] {
    const char* v = std::getenv("SPARROW_CUDA_SYNC");
    return v && std::strcmp(v, "0") != 0 && v[0] != '\0';
  }();
  return on;
}
}  // namespace sparrow
#endif
