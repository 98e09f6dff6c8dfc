// CUDA runtime plumbing (runtime API only; compiled by the host compiler). CPU-only builds get stubs
// that throw a clear error, so a missing CUDA path never crashes. Pinned buffers fall back to plain host
// memory whenever CUDA cannot give page-locked memory, so data loaders use them unconditionally.
#include "engine/cuda_runtime.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "engine/base/device.h"
#include "engine/base/error.h"
#include "engine/tensor.h"

#if SPARROW_HAS_CUDA
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include "engine/base/cuda_check.h"

namespace sparrow {

void* cuda_stream_handle() {
  static cudaStream_t stream = [] {
    SPARROW_CHECK(cuda_available(), "CUDA requested but ", cuda_unavailable_reason());
    // Keep freed blocks in the stream-ordered pool instead of returning them to the driver at every
    // synchronisation (the default threshold 0 would make each step re-map its activations).
    int dev = 0;
    SPARROW_CUDA_CHECK(cudaGetDevice(&dev));
    cudaMemPool_t pool;
    SPARROW_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    uint64_t threshold = UINT64_MAX;
    SPARROW_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    // A blocking stream: it orders with the legacy default stream that simple kernels launch on.
    cudaStream_t s;
    SPARROW_CUDA_CHECK(cudaStreamCreate(&s));
    return s;
  }();
  return stream;
}

void* cuda_alloc(size_t bytes) {
  auto stream = static_cast<cudaStream_t>(cuda_stream_handle());
  void* p = nullptr;
  cudaError_t err = cudaMallocAsync(&p, bytes, stream);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    SPARROW_FAIL("CUDA out of memory: asked for ", bytes, " bytes, ", free_b, " of ", total_b, " bytes free");
  }
  SPARROW_CUDA_CHECK(err);
  return p;
}

void cuda_free(void* ptr) noexcept {
  if (ptr) cudaFreeAsync(ptr, static_cast<cudaStream_t>(cuda_stream_handle()));
}

void cuda_copy(void* dst, const void* src, size_t bytes, int kind) {
  auto stream = static_cast<cudaStream_t>(cuda_stream_handle());
  const cudaMemcpyKind k = kind == 0 ? cudaMemcpyHostToDevice
                         : kind == 1 ? cudaMemcpyDeviceToHost
                                     : cudaMemcpyDeviceToDevice;
  SPARROW_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, k, stream));
  if (kind == 1) SPARROW_CUDA_CHECK(cudaStreamSynchronize(stream));
}

bool cuda_tf32_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("SPARROW_TF32");
    return v && v[0] != '\0' && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void cuda_profiler_start() {
  if (cuda_available()) SPARROW_CUDA_CHECK(cudaProfilerStart());
}

void cuda_profiler_stop() {
  if (!cuda_available()) return;
  // Let the captured window's kernels finish inside it.
  SPARROW_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(cuda_stream_handle())));
  SPARROW_CUDA_CHECK(cudaProfilerStop());
}

// ---------------------------------------------------------------- pinned buffers

PinnedBuffer::PinnedBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  if (cuda_available()) {
    cuda_stream_handle();  // the context and pool settings exist before the first page-locked block
    if (cudaHostAlloc(&ptr_, bytes, cudaHostAllocDefault) == cudaSuccess) {
      pinned_ = true;
      return;
    }
    cudaGetLastError();  // fall back to pageable memory: copies are then synchronous, still correct
    ptr_ = nullptr;
  }
  ptr_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  SPARROW_CHECK(ptr_ != nullptr, "out of host memory allocating a ", bytes, "-byte input buffer");
}

PinnedBuffer::~PinnedBuffer() { release(); }

PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)),
      pinned_(std::exchange(o.pinned_, false)), event_(std::exchange(o.event_, nullptr)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    release();
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    pinned_ = std::exchange(o.pinned_, false);
    event_ = std::exchange(o.event_, nullptr);
  }
  return *this;
}

void PinnedBuffer::release() noexcept {
  if (event_) {
    // A copy may still be reading the memory: wait for it before giving the memory back.
    cudaEventSynchronize(static_cast<cudaEvent_t>(event_));
    cudaEventDestroy(static_cast<cudaEvent_t>(event_));
    event_ = nullptr;
  }
  if (!ptr_) return;
  if (pinned_) cudaFreeHost(ptr_);
  else std::free(ptr_);
  ptr_ = nullptr;
  pinned_ = false;
}

void PinnedBuffer::record_copy() const {
  if (!event_) {
    cudaEvent_t e;
    SPARROW_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    event_ = e;
  }
  SPARROW_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(cuda_stream_handle())));
}

void PinnedBuffer::wait_copies() const {
  if (event_) SPARROW_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
}

void copy_to_device_async(Tensor& dst, const PinnedBuffer& src, size_t src_offset) {
  SPARROW_CHECK(dst.device() == Device::CUDA, "copy_to_device_async: destination tensor is on ",
                device_name(dst.device()), ", expected cuda");
  const size_t n = dst.nbytes();
  SPARROW_CHECK(src_offset <= src.bytes() && n <= src.bytes() - src_offset, "copy_to_device_async: ", n,
                " bytes at offset ", src_offset, " from a ", src.bytes(), "-byte pinned buffer");
  if (n == 0) return;
  auto stream = static_cast<cudaStream_t>(cuda_stream_handle());
  SPARROW_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), static_cast<const char*>(src.data()) + src_offset, n,
                                     cudaMemcpyHostToDevice, stream));
  src.record_copy();
}

Tensor to_device_async(const PinnedBuffer& src, const std::vector<int64_t>& shape, DType dtype, size_t src_offset) {
  Tensor t = Tensor::empty(shape, dtype, Device::CUDA);
  copy_to_device_async(t, src, src_offset);
  return t;
}

}  // namespace sparrow

#else

namespace sparrow {
void* cuda_stream_handle() { SPARROW_FAIL("CUDA requested but ", cuda_unavailable_reason()); }
void* cuda_alloc(size_t) { SPARROW_FAIL("CUDA allocation requested but ", cuda_unavailable_reason()); }
void cuda_free(void*) noexcept {}
void cuda_copy(void*, const void*, size_t, int) {
  SPARROW_FAIL("CUDA copy requested but ", cuda_unavailable_reason());
}
bool cuda_tf32_enabled() { return false; }
void cuda_profiler_start() {}
void cuda_profiler_stop() {}

PinnedBuffer::PinnedBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  ptr_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  SPARROW_CHECK(ptr_ != nullptr, "out of host memory allocating a ", bytes, "-byte input buffer");
}
PinnedBuffer::~PinnedBuffer() { release(); }
PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    release();
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}
void PinnedBuffer::release() noexcept {
  std::free(ptr_);
  ptr_ = nullptr;
}
void PinnedBuffer::record_copy() const {}
void PinnedBuffer::wait_copies() const {}

void copy_to_device_async(Tensor&, const PinnedBuffer&, size_t) {
  SPARROW_FAIL("copy_to_device_async: ", cuda_unavailable_reason());
}
Tensor to_device_async(const PinnedBuffer&, const std::vector<int64_t>&, DType, size_t) {
  SPARROW_FAIL("to_device_async: ", cuda_unavailable_reason());
}
}  // namespace sparrow

#endif
