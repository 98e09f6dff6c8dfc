// Devices and the one cached CUDA probe. Nothing here touches CUDA until cuda_device_count() is called,
// and any CUDA error during the probe counts as "zero devices" (toolkit without a GPU is supported).
#pragma once
#include <string>

namespace sparrow {

enum class Device { CPU, CUDA };

const char* device_name(Device d);
// Parses "cpu", "cuda", "auto" (auto = cuda when a device is present, else cpu); throws on anything else.
Device parse_device(const std::string& name);

bool built_with_cuda();
int cuda_device_count();          // cached; 0 when built without CUDA or on any probe error
bool cuda_available();            // built_with_cuda() && cuda_device_count() > 0
std::string cuda_unavailable_reason();  // one line for GTEST_SKIP and error messages
void cuda_synchronize();          // no-op without CUDA

}  // namespace sparrow
