// The CUDA runtime plumbing the engine needs: the compute stream, pool allocation with a readable
// out-of-memory error, copies, pinned host buffers with asynchronous host-to-device copies, and the
// profiler window. Declared always; defined for CUDA builds (CPU builds throw, or do nothing where noted).
// Every device op runs on the one compute stream, so device work is ordered without explicit events.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sparrow {

class Tensor;
enum class DType : uint8_t;

void* cuda_alloc(size_t bytes);           // throws with requested and free bytes on OOM
void cuda_free(void* ptr) noexcept;
void cuda_copy(void* dst, const void* src, size_t bytes, int kind);  // kind: 0 H2D, 1 D2H, 2 D2D
void* cuda_stream_handle();               // the one compute stream (cudaStream_t), created lazily

// Whether float GEMMs and convolutions may use TF32 tensor cores (SPARROW_TF32=1 in the environment,
// read once). Off by default, so the CUDA path matches the CPU path to float rounding.
bool cuda_tf32_enabled();

// cudaProfilerStart/Stop around a window of training steps (--profile-steps A:B), so
// `nsys profile --capture-range=cudaProfilerApi` and `ncu --profile-from-start off` capture only that
// window. No-ops without CUDA or without a device.
void cuda_profiler_start();
void cuda_profiler_stop();

// Page-locked host memory for input batches. A copy from it to the device (copy_to_device_async) returns
// at once and runs on the compute stream, so the loader can fill the next batch while the GPU computes.
// Before writing into a buffer again, call wait_copies(): it blocks until the copies issued from it have
// read it. Without CUDA (or without a device) the memory is ordinary aligned host memory.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes);
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;

  void* data() { return ptr_; }
  const void* data() const { return ptr_; }
  template <typename T> T* as() { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  bool pinned() const { return pinned_; }
  // Blocks until every copy issued from this buffer so far has finished reading it.
  void wait_copies() const;
  // Marks "a copy from this buffer was issued on the compute stream just now" (used by the copy helpers).
  void record_copy() const;

 private:
  void release() noexcept;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  bool pinned_ = false;
  mutable void* event_ = nullptr;  // cudaEvent_t recorded after the last copy from this buffer
};

// Asynchronous copy of dst.nbytes() bytes from src (starting at src_offset bytes) into the device tensor
// dst, on the compute stream. Throws when dst is not a CUDA tensor or src is too small.
void copy_to_device_async(Tensor& dst, const PinnedBuffer& src, size_t src_offset = 0);
// Allocates a CUDA tensor of the given shape and dtype and fills it from src asynchronously.
Tensor to_device_async(const PinnedBuffer& src, const std::vector<int64_t>& shape, DType dtype,
                       size_t src_offset = 0);

}  // namespace sparrow
