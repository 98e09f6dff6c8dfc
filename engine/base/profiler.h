// A tiny opt-in wall-clock profiler behind the NVTX ranges: when enabled, every SPARROW_NVTX_RANGE also
// adds its inclusive time to a per-name total, so benchmarks can print where a training step goes.
#pragma once
#include <map>
#include <string>

namespace sparrow {

struct ProfileEntry {
  double seconds = 0;
  long calls = 0;
};

void profiler_enable(bool on);
bool profiler_enabled();
void profiler_reset();
void profiler_add(const char* name, double seconds);
std::map<std::string, ProfileEntry> profiler_snapshot();
double profiler_now();  // monotonic seconds

}  // namespace sparrow
