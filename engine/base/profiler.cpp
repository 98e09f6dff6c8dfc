// Profiler storage: a mutex-protected map (ranges are per op, so the lock is far off any inner loop).
#include "engine/base/profiler.h"

#include <atomic>
#include <chrono>
#include <mutex>

namespace sparrow {

namespace {
std::atomic<bool> g_on{false};
std::mutex g_mu;
std::map<std::string, ProfileEntry>& table() {
  static std::map<std::string, ProfileEntry> t;
  return t;
}
}  // namespace

void profiler_enable(bool on) { g_on = on; }
bool profiler_enabled() { return g_on.load(std::memory_order_relaxed); }
void profiler_reset() {
  std::lock_guard<std::mutex> lk(g_mu);
  table().clear();
}
void profiler_add(const char* name, double seconds) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto& e = table()[name];
  e.seconds += seconds;
  e.calls += 1;
}
std::map<std::string, ProfileEntry> profiler_snapshot() {
  std::lock_guard<std::mutex> lk(g_mu);
  return table();
}
double profiler_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace sparrow
