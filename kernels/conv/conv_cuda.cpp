// Dense 2-D convolution on the GPU through cuDNN (NCHW float, compute stream). Descriptors and the chosen
// algorithm of each direction are cached per shape: the first call of a (shape, direction) times every
// algorithm with cudnnFind*AlgorithmEx on the real buffers and keeps the fastest FP32 one; later calls
// only allocate its workspace from the stream-ordered pool and run it. Builds without cuDNN, and shapes
// for which cuDNN offers no acceptable algorithm, use the im2col + cuBLAS path of conv_cuda.cu.
#if SPARROW_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "engine/base/cuda_check.h"
#include "engine/cuda_runtime.h"
#include "kernels/conv/conv.h"

#if SPARROW_HAS_CUDNN
#include <cudnn.h>
#endif

namespace sparrow {

#if SPARROW_HAS_CUDNN

namespace {

bool im2col_forced() {
  static const bool forced = [] {
    const char* v = std::getenv("SPARROW_CONV");
    return v && std::strcmp(v, "im2col") == 0;
  }();
  return forced;
}

// cuDNN status with its name, the call, file and line.
#define SPARROW_CUDNN_CALL(call)                                                                        \
  do {                                                                                                  \
    cudnnStatus_t sparrow_st_ = (call);                                                                 \
    if (sparrow_st_ != CUDNN_STATUS_SUCCESS)                                                            \
      ::sparrow::throw_error(__FILE__, __LINE__, ::sparrow::str("cuDNN error ", int(sparrow_st_), " (", \
                                                                cudnnGetErrorString(sparrow_st_), ") in ", #call)); \
  } while (0)

cudnnHandle_t cudnn() {
  static cudnnHandle_t handle = [] {
    cudnnHandle_t h;
    SPARROW_CUDNN_CALL(cudnnCreate(&h));
    SPARROW_CUDNN_CALL(cudnnSetStream(h, static_cast<cudaStream_t>(cuda_stream_handle())));
    return h;
  }();
  return handle;
}

// What one direction of one shape runs: an algorithm with its math type and workspace, or the fallback.
template <typename Algo>
struct Choice {
  bool decided = false;
  bool use_im2col = false;
  Algo algo{};
  cudnnMathType_t math = CUDNN_FMA_MATH;
  size_t workspace = 0;
};

struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  Choice<cudnnConvolutionFwdAlgo_t> fwd;
  Choice<cudnnConvolutionBwdDataAlgo_t> bwd_data;
  Choice<cudnnConvolutionBwdFilterAlgo_t> bwd_filter;
};

// The shape, and whether every pointer of the call is 16-byte aligned (an algorithm timed on aligned
// buffers may require it; views into a batch can start anywhere).
using Key = std::tuple<int, int, int, int, int, int, int, int, int, bool>;

bool aligned16(const void* a, const void* b, const void* c) {
  return ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) | reinterpret_cast<uintptr_t>(c)) & 15u) == 0;
}

Key key_of(const Conv2dShape& s, bool aligned) {
  return Key{s.n, s.cin, s.h, s.w, s.cout, s.kh, s.kw, s.stride, s.pad, aligned};
}

std::mutex g_mu;
// Plans live for the process (handles are not destroyed at exit, where the context may already be gone).
std::map<Key, std::unique_ptr<Plan>>& plans() {
  static auto* m = new std::map<Key, std::unique_ptr<Plan>>();
  return *m;
}

Plan& plan_for(const Conv2dShape& s, bool aligned) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto& slot = plans()[key_of(s, aligned)];
  if (slot) return *slot;
  auto p = std::make_unique<Plan>();
  SPARROW_CUDNN_CALL(cudnnCreateTensorDescriptor(&p->x));
  SPARROW_CUDNN_CALL(cudnnCreateTensorDescriptor(&p->y));
  SPARROW_CUDNN_CALL(cudnnCreateFilterDescriptor(&p->w));
  SPARROW_CUDNN_CALL(cudnnCreateConvolutionDescriptor(&p->conv));
  SPARROW_CUDNN_CALL(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s.n, s.cin, s.h, s.w));
  SPARROW_CUDNN_CALL(cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, s.cout, s.cin, s.kh, s.kw));
  SPARROW_CUDNN_CALL(cudnnSetConvolution2dDescriptor(p->conv, s.pad, s.pad, s.stride, s.stride, 1, 1,
                                                     CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  int n = 0, c = 0, oh = 0, ow = 0;
  SPARROW_CUDNN_CALL(cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &n, &c, &oh, &ow));
  SPARROW_CHECK(n == s.n && c == s.cout && oh == s.oh() && ow == s.ow(), "conv2d (cuDNN): output ", n, "x", c, "x", oh,
                "x", ow, " differs from the expected ", s.n, "x", s.cout, "x", s.oh(), "x", s.ow());
  SPARROW_CUDNN_CALL(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, oh, ow));
  slot = std::move(p);
  return *slot;
}

cudnnMathType_t requested_math() { return cuda_tf32_enabled() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH; }

// Workspace offered to the algorithm search: at most 512 MiB and at most half of what is free.
size_t search_workspace_bytes() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return size_t(64) << 20;
  }
  return std::min(size_t(512) << 20, free_b / 2);
}

// Stream-ordered pool memory for a workspace; freed (stream-ordered) at scope end.
struct Workspace {
  explicit Workspace(size_t bytes) : bytes(bytes), p(bytes ? cuda_alloc(bytes) : nullptr) {}
  ~Workspace() { cuda_free(p); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  size_t bytes;
  void* p;
};

// Picks the first (fastest) successful result with an acceptable math type; none: the im2col fallback,
// said once on stderr so a slow run can be explained.
template <typename Perf, typename Algo>
void choose(Choice<Algo>& ch, const Perf* perf, int count, const Conv2dShape& s, const char* direction) {
  ch.decided = true;
  ch.use_im2col = true;
  for (int i = 0; i < count; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    if (!cuda_tf32_enabled() && perf[i].mathType != CUDNN_FMA_MATH) continue;
    ch.use_im2col = false;
    ch.algo = perf[i].algo;
    ch.math = perf[i].mathType;
    ch.workspace = perf[i].memory;
    return;
  }
  std::fprintf(stderr, "sparrow: cuDNN has no FP32 %s algorithm for conv n=%d cin=%d %dx%d cout=%d k=%dx%d s=%d p=%d; "
               "using im2col + cuBLAS\n", direction, s.n, s.cin, s.h, s.w, s.cout, s.kh, s.kw, s.stride, s.pad);
}

// The search runs cuDNN on the handle's stream with a workspace just taken from the stream-ordered pool:
// wait for the allocation (and the inputs) first. Once per shape and direction, so the wait is free.
void sync_before_search() {
  SPARROW_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(cuda_stream_handle())));
}

}  // namespace

const char* conv2d_cuda_backend() { return im2col_forced() ? "im2col" : "cudnn"; }

void conv2d_forward_cuda(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  if (im2col_forced()) return conv2d_forward_im2col_cuda(s, x, w, b, y);
  Plan& p = plan_for(s, aligned16(x, w, y));
  cudnnHandle_t h = cudnn();
  if (!p.fwd.decided) {
    SPARROW_CUDNN_CALL(cudnnSetConvolutionMathType(p.conv, requested_math()));
    constexpr int kMax = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    cudnnConvolutionFwdAlgoPerf_t perf[kMax];
    int count = 0;
    Workspace ws(search_workspace_bytes());
    sync_before_search();
    SPARROW_CUDNN_CALL(cudnnFindConvolutionForwardAlgorithmEx(h, p.x, x, p.w, w, p.conv, p.y, y, kMax, &count, perf,
                                                              ws.p, ws.bytes));
    choose(p.fwd, perf, count, s, "forward");
  }
  if (p.fwd.use_im2col) return conv2d_forward_im2col_cuda(s, x, w, b, y);
  SPARROW_CUDNN_CALL(cudnnSetConvolutionMathType(p.conv, p.fwd.math));
  Workspace ws(p.fwd.workspace);
  const float one = 1.0f, zero = 0.0f;
  SPARROW_CUDNN_CALL(cudnnConvolutionForward(h, &one, p.x, x, p.w, w, p.conv, p.fwd.algo, ws.p, ws.bytes, &zero, p.y, y));
  SPARROW_CUDA_LAUNCH_CHECK("cudnnConvolutionForward");
  if (b) conv2d_bias_add_cuda(s, b, y);
}

void conv2d_backward_input_cuda(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  if (im2col_forced()) return conv2d_backward_input_im2col_cuda(s, dy, w, dx);
  Plan& p = plan_for(s, aligned16(dy, w, dx));
  cudnnHandle_t h = cudnn();
  if (!p.bwd_data.decided) {
    SPARROW_CUDNN_CALL(cudnnSetConvolutionMathType(p.conv, requested_math()));
    constexpr int kMax = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
    cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
    int count = 0;
    Workspace ws(search_workspace_bytes());
    sync_before_search();
    SPARROW_CUDNN_CALL(cudnnFindConvolutionBackwardDataAlgorithmEx(h, p.w, w, p.y, dy, p.conv, p.x, dx, kMax, &count,
                                                                   perf, ws.p, ws.bytes));
    choose(p.bwd_data, perf, count, s, "backward-data");
  }
  if (p.bwd_data.use_im2col) return conv2d_backward_input_im2col_cuda(s, dy, w, dx);
  SPARROW_CUDNN_CALL(cudnnSetConvolutionMathType(p.conv, p.bwd_data.math));
  Workspace ws(p.bwd_data.workspace);
  const float one = 1.0f, zero = 0.0f;
  SPARROW_CUDNN_CALL(cudnnConvolutionBackwardData(h, &one, p.w, w, p.y, dy, p.conv, p.bwd_data.algo, ws.p, ws.bytes,
                                                  &zero, p.x, dx));
  SPARROW_CUDA_LAUNCH_CHECK("cudnnConvolutionBackwardData");
}

void conv2d_backward_weight_cuda(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* db) {
  if (im2col_forced()) return conv2d_backward_weight_im2col_cuda(s, x, dy, dw, db);
  Plan& p = plan_for(s, aligned16(x, dy, dw));
  cudnnHandle_t h = cudnn();
  if (!p.bwd_filter.decided) {
    SPARROW_CUDNN_CALL(cudnnSetConvolutionMathType(p.conv, requested_math()));
    constexpr int kMax = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
    cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
    int count = 0;
    Workspace ws(search_workspace_bytes());
    sync_before_search();
    SPARROW_CUDNN_CALL(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, p.x, x, p.y, dy, p.conv, p.w, dw, kMax, &count,
                                                                     perf, ws.p, ws.bytes));
    choose(p.bwd_filter, perf, count, s, "backward-filter");
  }
  if (p.bwd_filter.use_im2col) return conv2d_backward_weight_im2col_cuda(s, x, dy, dw, db);
  SPARROW_CUDNN_CALL(cudnnSetConvolutionMathType(p.conv, p.bwd_filter.math));
  Workspace ws(p.bwd_filter.workspace);
  const float one = 1.0f, zero = 0.0f;
  SPARROW_CUDNN_CALL(cudnnConvolutionBackwardFilter(h, &one, p.x, x, p.y, dy, p.conv, p.bwd_filter.algo, ws.p, ws.bytes,
                                                    &zero, p.w, dw));
  SPARROW_CUDA_LAUNCH_CHECK("cudnnConvolutionBackwardFilter");
  if (db) conv2d_bias_grad_cuda(s, dy, db);
}

#else  // no cuDNN in this build: the im2col path throughout

const char* conv2d_cuda_backend() { return "im2col"; }

void conv2d_forward_cuda(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  conv2d_forward_im2col_cuda(s, x, w, b, y);
}
void conv2d_backward_input_cuda(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  conv2d_backward_input_im2col_cuda(s, dy, w, dx);
}
void conv2d_backward_weight_cuda(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* db) {
  conv2d_backward_weight_im2col_cuda(s, x, dy, dw, db);
}

#endif  // SPARROW_HAS_CUDNN

}  // namespace sparrow
#endif  // SPARROW_HAS_CUDA
