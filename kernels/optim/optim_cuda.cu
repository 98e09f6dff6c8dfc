// Fused CUDA SGD over all parameter tensors in one launch (compute stream). The host packs one
// descriptor per tensor and the prefix sums of their chunk counts into a single device block; each CUDA
// block finds its tensor by binary search over those prefix sums and updates one chunk of it. Every float
// operation is an explicitly rounded intrinsic (no FMA contraction), so results are reproducible and
// within an ulp or two of the CPU loop.
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/optim/optim.h"

namespace sparrow {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements per block

struct SgdScalars {
  float lr, mom, damp;
  int nesterov;
};

__global__ void sgd_multi_kernel(const SgdTensor* __restrict__ ts, const int64_t* __restrict__ chunk_start, int count,
                                 SgdScalars h) {
  const int64_t b = blockIdx.x;
  int lo = 0, hi = count - 1;  // last t with chunk_start[t] <= b
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (chunk_start[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  const SgdTensor t = ts[lo];
  const int64_t begin = (b - chunk_start[lo]) * kChunk;
  const int64_t end = begin + kChunk < t.n ? begin + kChunk : t.n;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    if (t.mask && t.mask[i] == 0.0f) {
      t.p[i] = 0.0f;
      if (t.buf) t.buf[i] = 0.0f;
      continue;
    }
    const float p = t.p[i];
    float d = __fadd_rn(t.g[i], __fmul_rn(t.wd, p));
    if (t.buf) {
      const float nb = t.first ? d : __fadd_rn(__fmul_rn(h.mom, t.buf[i]), __fmul_rn(h.damp, d));
      t.buf[i] = nb;
      d = h.nesterov ? __fadd_rn(d, __fmul_rn(h.mom, nb)) : nb;
    }
    t.p[i] = __fsub_rn(p, __fmul_rn(h.lr, d));
  }
}

}  // namespace

void sgd_update_multi_cuda(const SgdTensor* tensors, int count, const SgdHyper& h) {
  SPARROW_CHECK(count >= 0, "sgd_update_multi_cuda: negative tensor count ", count);
  // Skip empty tensors: every block must own at least one element.
  std::vector<SgdTensor> ts;
  ts.reserve(size_t(count));
  for (int i = 0; i < count; ++i) {
    SPARROW_CHECK(tensors[i].n >= 0 && (tensors[i].n == 0 || (tensors[i].p && tensors[i].g)),
                  "sgd_update_multi_cuda: tensor ", i, " has no data or gradient");
    if (tensors[i].n > 0) ts.push_back(tensors[i]);
  }
  if (ts.empty()) return;
  const int m = int(ts.size());
  std::vector<int64_t> starts(size_t(m) + 1, 0);
  for (int i = 0; i < m; ++i) starts[size_t(i) + 1] = starts[size_t(i)] + (ts[size_t(i)].n + kChunk - 1) / kChunk;
  const int64_t blocks = starts[size_t(m)];
  SPARROW_CHECK(blocks <= int64_t(0x7fffffff), "sgd_update_multi_cuda: ", blocks, " blocks is too many for one launch");
  // One host block (descriptors, then prefix sums) -> one device block.
  const size_t table_bytes = ts.size() * sizeof(SgdTensor), bytes = table_bytes + starts.size() * sizeof(int64_t);
  std::vector<unsigned char> host(bytes);
  std::memcpy(host.data(), ts.data(), table_bytes);
  std::memcpy(host.data() + table_bytes, starts.data(), starts.size() * sizeof(int64_t));
  auto stream = static_cast<cudaStream_t>(cuda_stream_handle());
  void* dev = cuda_alloc(bytes);
  // Pageable source: cudaMemcpyAsync has staged it by the time it returns, so `host` may go out of scope.
  cudaError_t err = cudaMemcpyAsync(dev, host.data(), bytes, cudaMemcpyHostToDevice, stream);
  if (err == cudaSuccess) {
    const SgdScalars sc{float(h.lr), float(h.momentum), float(1 - h.dampening), h.nesterov ? 1 : 0};
    sgd_multi_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(
        static_cast<const SgdTensor*>(dev), reinterpret_cast<const int64_t*>(static_cast<unsigned char*>(dev) + table_bytes),
        m, sc);
    err = cudaGetLastError();
  }
  cuda_free(dev);
  SPARROW_CUDA_CHECK(err);
  SPARROW_CUDA_LAUNCH_CHECK("sgd_multi_kernel");
}

}  // namespace sparrow
