// RAII, move-only byte buffers on a device. CPU memory is 64-byte aligned; CUDA memory comes from the
// stream-ordered pool (cudaMallocAsync on the compute stream). Destructors never throw.
#pragma once
#include <cstddef>

#include "engine/base/device.h"

namespace sparrow {

class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  Storage(Storage&& o) noexcept;
  Storage& operator=(Storage&& o) noexcept;

  void* data() { return ptr_; }
  const void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void release() noexcept;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::CPU;
};

// Byte copies between any two devices (synchronous with respect to the host for device->host).
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);

}  // namespace sparrow
