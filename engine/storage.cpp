// Storage: aligned host allocation, pooled device allocation, cross-device copies.
#include "engine/storage.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/base/error.h"
#include "engine/cuda_runtime.h"

namespace sparrow {

namespace {
// A caching host allocator: large blocks freed by one training step are reused by the next instead of
// going back to the OS (each fresh multi-megabyte block costs a page fault per 4 KiB on first touch,
// which dominated the memory-bound ops). Blocks are binned by exact rounded size; the cache is capped.
constexpr size_t kCacheMinBytes = 64 * 1024;
constexpr size_t kCacheMaxBytes = size_t(4) << 30;

struct HostCache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  size_t cached = 0;
  ~HostCache() {
    for (auto& [size, blocks] : free_blocks)
      for (void* p : blocks) std::free(p);
  }
};

HostCache& host_cache() {
  static HostCache* cache = new HostCache();  // leaked on purpose: storages may die after static teardown
  return *cache;
}

size_t round_host_bytes(size_t bytes) {
  if (bytes < kCacheMinBytes) return (bytes + 63) / 64 * 64;
  return (bytes + 4095) / 4096 * 4096;
}

void* host_alloc(size_t bytes) {
  const size_t rounded = round_host_bytes(bytes);
  if (rounded >= kCacheMinBytes) {
    HostCache& c = host_cache();
    std::lock_guard<std::mutex> lk(c.mu);
    auto it = c.free_blocks.find(rounded);
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.cached -= rounded;
      return p;
    }
  }
  void* p = std::aligned_alloc(64, rounded);
  SPARROW_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes");
  return p;
}

void host_free(void* p, size_t bytes) noexcept {
  const size_t rounded = round_host_bytes(bytes);
  if (rounded >= kCacheMinBytes) {
    HostCache& c = host_cache();
    std::lock_guard<std::mutex> lk(c.mu);
    if (c.cached + rounded <= kCacheMaxBytes) {
      c.free_blocks[rounded].push_back(p);
      c.cached += rounded;
      return;
    }
  }
  std::free(p);
}
}  // namespace

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device == Device::CPU) {
    ptr_ = host_alloc(bytes);
  } else {
    ptr_ = cuda_alloc(bytes);
  }
}

Storage::~Storage() { release(); }

Storage::Storage(Storage&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)), device_(o.device_) {}

Storage& Storage::operator=(Storage&& o) noexcept {
  if (this != &o) {
    release();
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    device_ = o.device_;
  }
  return *this;
}

void Storage::release() noexcept {
  if (!ptr_) return;
  if (device_ == Device::CPU) host_free(ptr_, bytes_);
  else cuda_free(ptr_);
  ptr_ = nullptr;
}

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev == Device::CPU && src_dev == Device::CPU) std::memcpy(dst, src, bytes);
  else if (dst_dev == Device::CUDA && src_dev == Device::CPU) cuda_copy(dst, src, bytes, 0);
  else if (dst_dev == Device::CPU && src_dev == Device::CUDA) cuda_copy(dst, src, bytes, 1);
  else cuda_copy(dst, src, bytes, 2);
}

}  // namespace sparrow
