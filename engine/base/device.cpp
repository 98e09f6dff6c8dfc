// The device probe: called lazily, cached, and forgiving (every error means "no CUDA device").
#include "engine/base/device.h"

#include <mutex>

#include "engine/base/error.h"
#if SPARROW_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace sparrow {

const char* device_name(Device d) { return d == Device::CUDA ? "cuda" : "cpu"; }

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") {
    SPARROW_CHECK(cuda_available(), "--device cuda: ", cuda_unavailable_reason());
    return Device::CUDA;
  }
  if (name == "auto") return cuda_available() ? Device::CUDA : Device::CPU;
  SPARROW_FAIL("unknown device '", name, "' (expected auto, cpu or cuda)");
}

bool built_with_cuda() { return SPARROW_HAS_CUDA != 0; }

namespace {
int g_count = -1;
std::string g_reason;
std::once_flag g_once;

void probe() {
#if SPARROW_HAS_CUDA
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    g_count = 0;
    g_reason = str("no usable CUDA device (", cudaGetErrorString(err), ")");
    cudaGetLastError();  // clear the sticky error so later probes are clean
  } else {
    g_count = n;
    if (n == 0) g_reason = "no CUDA device present";
  }
#else
  g_count = 0;
  g_reason = "sparrow was built without CUDA (SPARROW_CUDA=OFF or no nvcc)";
#endif
}
}  // namespace

int cuda_device_count() {
  std::call_once(g_once, probe);
  return g_count;
}

bool cuda_available() { return cuda_device_count() > 0; }

std::string cuda_unavailable_reason() {
  cuda_device_count();
  return g_reason.empty() ? "CUDA available" : g_reason;
}

void cuda_synchronize() {
#if SPARROW_HAS_CUDA
  if (cuda_available()) cudaDeviceSynchronize();
#endif
}

}  // namespace sparrow
