// Device code of the CUDA BSR kernels (kernels/sparse/bsr_cuda.cu): tensor-core SpMM (forward and input
// gradient) and block SDDMM (weight gradient), the cp.async staging helpers and the launch planning shared
// with the host side. Layouts as kernels/sparse/bsr.h. Written against a few macros so that the test can also
// run these exact kernels on the CPU (tests/kernels/test_bsr.cpp defines SPARROW_BSR_EMULATE and supplies
// stand-ins for threads, barriers, cp.async and WMMA; the real build maps them to CUDA below).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

// The kernels live in sparrow::SPARROW_BSR_NAMESPACE: bsr_device for the real build, another name for the
// emulation so the two sets of template instances can never be merged by the linker.
#if !defined(SPARROW_BSR_NAMESPACE)
#define SPARROW_BSR_NAMESPACE bsr_device
#endif

#if !defined(SPARROW_BSR_EMULATE)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#define SPARROW_BSR_GLOBAL __global__
#define SPARROW_BSR_DEVICE_INLINE __device__ __forceinline__
#define SPARROW_BSR_LAUNCH_BOUNDS(n) __launch_bounds__(n)
#define SPARROW_BSR_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#define SPARROW_BSR_SYNC() __syncthreads()
#define SPARROW_BSR_UNROLL _Pragma("unroll")

namespace sparrow {
namespace SPARROW_BSR_NAMESPACE {

namespace wmma = nvcuda::wmma;
using half_t = __half;
using bf16_t = __nv_bfloat16;

// ---------------------------------------------------------------------------------------------------
// Asynchronous copies (sm_80+): 16-byte cp.async with zero fill (src_bytes = 0 reads nothing and writes
// zeros; the source pointer is still kept inside the allocation). Activation tiles go through L1 (.ca):
// the CTAs resident on one SM work on the same row tile (grid order), so their A segments overlap; value
// blocks bypass it (.cg): they are reused across row tiles, i.e. by other SMs, through L2.

SPARROW_BSR_DEVICE_INLINE void cp_async16_ca(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
SPARROW_BSR_DEVICE_INLINE void cp_async16_cg(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
SPARROW_BSR_DEVICE_INLINE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
SPARROW_BSR_DEVICE_INLINE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace SPARROW_BSR_NAMESPACE
}  // namespace sparrow
#endif

namespace sparrow {
namespace SPARROW_BSR_NAMESPACE {

constexpr int kThreads = 128;  // four warps per CTA
constexpr int kStages = 3;     // cp.async pipeline depth

// ---------------------------------------------------------------------------------------------------
// Element traits: the WMMA shape and fragment element type per input type, and the shared-memory row
// padding (16 bytes: keeps every fragment pointer 32-byte aligned and spreads the rows over the banks).

template <typename T>
struct Mma;
template <>
struct Mma<float> {
  using elem = wmma::precision::tf32;
  static constexpr int K = 8;
  static constexpr int PAD = 4;
  template <typename Frag>
  SPARROW_BSR_DEVICE_INLINE static void convert(Frag& f) {
SPARROW_BSR_UNROLL
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = wmma::__float_to_tf32(f.x[i]);
  }
};
template <>
struct Mma<half_t> {
  using elem = half_t;
  static constexpr int K = 16;
  static constexpr int PAD = 8;
  template <typename Frag>
  SPARROW_BSR_DEVICE_INLINE static void convert(Frag&) {}
};
template <>
struct Mma<bf16_t> {
  using elem = bf16_t;
  static constexpr int K = 16;
  static constexpr int PAD = 8;
  template <typename Frag>
  SPARROW_BSR_DEVICE_INLINE static void convert(Frag&) {}
};

// Stages a tile of `nr` rows × B columns of a row-major matrix (leading dim ld) into shared memory
// (row stride LDS): rows row0.., columns col0..; rows ≥ row_end and columns ≥ col0 + col_valid are zero.
// VEC: 16-byte asynchronous copies (ld, col0 and col_valid are multiples of 16 bytes, the base is 16-byte
// aligned); otherwise element loads (odd leading dimensions).
template <typename T, int B, int LDS, bool VEC>
SPARROW_BSR_DEVICE_INLINE void stage_tile(T* s, const T* g, int64_t ld, int nr, int row0, int row_end, int col0,
                                           int col_valid) {
  if constexpr (VEC) {
    constexpr int CH = 16 / int(sizeof(T));
    constexpr int CPR = B / CH;
    for (int i = threadIdx.x; i < nr * CPR; i += kThreads) {
      const int r = i / CPR, c = (i % CPR) * CH;
      const bool ok = row0 + r < row_end && c < col_valid;
      const T* src = ok ? g + int64_t(row0 + r) * ld + col0 + c : g;
      cp_async16_ca(s + r * LDS + c, src, ok ? 16 : 0);
    }
  } else {
    for (int i = threadIdx.x; i < nr * B; i += kThreads) {
      const int r = i / B, c = i % B;
      const bool ok = row0 + r < row_end && c < col_valid;
      s[r * LDS + c] = ok ? g[int64_t(row0 + r) * ld + col0 + c] : T(0.0f);
    }
  }
}

// A whole b×b value block (contiguous, b² elements) into shared memory.
template <typename T, int B, int LDS, bool VEC>
SPARROW_BSR_DEVICE_INLINE void stage_block(T* s, const T* g) {
  if constexpr (VEC) {
    constexpr int CH = 16 / int(sizeof(T));
    constexpr int CPR = B / CH;
    for (int i = threadIdx.x; i < B * CPR; i += kThreads) {
      const int r = i / CPR, c = (i % CPR) * CH;
      cp_async16_cg(s + r * LDS + c, g + r * B + c);
    }
  } else {
    for (int i = threadIdx.x; i < B * B; i += kThreads) s[(i / B) * LDS + i % B] = g[i];
  }
}

// ---------------------------------------------------------------------------------------------------
// SpMM on tensor cores: C (rows × N, fp32) = A (rows × K) · S, S block-sparse given by output block columns.
// Forward: A = x, S = Wᵀ, lists = block rows of W (blocks in value order, block k at kidx = col_idx), the
// stored block [c][r] is S's [k][n] tile as it is (row-major B operand). Input gradient: A = dy, S = W,
// lists = block columns (transposed index; block id t_block, k-block t_row), the stored block read as a
// column-major B operand gives W's [o][c] = S's [k][n] without moving data (TRANS).
//
// CTA = BM rows × one output block column (b outputs); blockIdx.x = the block column's rank in `order`
// (longest list first, so the long lists start early and the short ones fill the tail: load balance across
// uneven block rows), blockIdx.y = the row tile (CTAs running together share the same A rows in L2). The
// block list is streamed through a kStages-deep cp.async pipeline of (A tile, value block) pairs.
template <int B>
struct SpmmShape;
template <>
struct SpmmShape<16> {
  static constexpr int BM = 128, WR = 4, WC = 1;
};
template <>
struct SpmmShape<32> {
  static constexpr int BM = 128, WR = 4, WC = 1;
};
template <>
struct SpmmShape<64> {
  static constexpr int BM = 64, WR = 2, WC = 2;
};

struct SpmmParams {
  const void* a;
  const void* vals;
  float* c;
  const float* bias;
  const int32_t* ptr;    // list offsets per output block column
  const int32_t* kidx;   // k-block of each list entry
  const int32_t* blk;    // value-block id of each list entry (null: the entry index itself)
  const int32_t* order;  // output block columns, longest list first
  int rows, K, N;
};

template <typename T, int B>
constexpr size_t spmm_smem_bytes() {
  constexpr int BM = SpmmShape<B>::BM, LDS = B + Mma<T>::PAD;
  constexpr size_t stages = size_t(kStages) * (BM + B) * LDS * sizeof(T);
  constexpr size_t out = size_t(BM) * (B + 4) * sizeof(float);
  return stages > out ? stages : out;
}

template <typename T, int B, bool TRANS, bool VEC>
SPARROW_BSR_GLOBAL void SPARROW_BSR_LAUNCH_BOUNDS(kThreads) bsr_spmm_kernel(SpmmParams p) {
  using Tr = Mma<T>;
  constexpr int BM = SpmmShape<B>::BM, WR = SpmmShape<B>::WR, WC = SpmmShape<B>::WC;
  constexpr int WM = BM / WR, WN = B / WC, FM = WM / 16, FN = WN / 16, KS = Tr::K;
  constexpr int LDS = B + Tr::PAD, LDC = B + 4;
  constexpr int STAGE = (BM + B) * LDS;  // elements per pipeline stage
  SPARROW_BSR_SHARED(smem_raw);
  T* smem = reinterpret_cast<T*>(smem_raw);

  const T* a = static_cast<const T*>(p.a);
  const T* vals = static_cast<const T*>(p.vals);
  const int cb = p.order[blockIdx.x];
  const int r0 = blockIdx.y * BM;
  const int t0 = p.ptr[cb], t1 = p.ptr[cb + 1];
  const int warp = threadIdx.x / 32, wr = warp / WC, wc = warp % WC;

  wmma::fragment<wmma::accumulator, 16, 16, KS, float> acc[FM][FN];
SPARROW_BSR_UNROLL
  for (int i = 0; i < FM; ++i)
SPARROW_BSR_UNROLL
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  auto issue = [&](int t) {
    T* sa = smem + ((t - t0) % kStages) * STAGE;
    T* sw = sa + BM * LDS;
    const int kb = p.kidx[t];
    const int64_t blk = p.blk ? p.blk[t] : t;
    stage_tile<T, B, LDS, VEC>(sa, a, p.K, BM, r0, p.rows, kb * B, min(B, p.K - kb * B));
    stage_block<T, B, LDS, VEC>(sw, vals + blk * B * B);
  };
SPARROW_BSR_UNROLL
  for (int s = 0; s < kStages - 1; ++s) {
    if (t0 + s < t1) issue(t0 + s);
    cp_async_commit();
  }
  for (int t = t0; t < t1; ++t) {
    cp_async_wait<kStages - 2>();
    SPARROW_BSR_SYNC();  // the stage of t has landed for every thread; the stage of t − 1 is free again
    if (t + kStages - 1 < t1) issue(t + kStages - 1);
    cp_async_commit();
    const T* sa = smem + ((t - t0) % kStages) * STAGE;
    T* sw = const_cast<T*>(sa) + BM * LDS;
    const int kvalid = min(B, p.K - p.kidx[t] * B);
    if (kvalid < B) {
      // Edge block: the k-range past the matrix edge is zero in A already; clear the block's padding too so
      // whatever the value array holds there never reaches the output.
      for (int i = threadIdx.x; i < B * B; i += kThreads) {
        const int r = i / B, c = i % B;  // stored block [r][c]
        if ((TRANS ? c : r) >= kvalid) sw[r * LDS + c] = T(0.0f);
      }
      SPARROW_BSR_SYNC();
    }
SPARROW_BSR_UNROLL
    for (int kk = 0; kk < B; kk += KS) {
      wmma::fragment<wmma::matrix_a, 16, 16, KS, typename Tr::elem, wmma::row_major> fa[FM];
      using LayoutB = typename std::conditional<TRANS, wmma::col_major, wmma::row_major>::type;
      wmma::fragment<wmma::matrix_b, 16, 16, KS, typename Tr::elem, LayoutB> fb[FN];
SPARROW_BSR_UNROLL
      for (int i = 0; i < FM; ++i) {
        wmma::load_matrix_sync(fa[i], sa + (wr * WM + i * 16) * LDS + kk, LDS);
        Tr::convert(fa[i]);
      }
SPARROW_BSR_UNROLL
      for (int j = 0; j < FN; ++j) {
        const int n0 = wc * WN + j * 16;
        // Row-major: S[k][n] at sw[k·LDS + n]. Column-major (TRANS): S[k][n] at sw[n·LDS + k].
        wmma::load_matrix_sync(fb[j], TRANS ? sw + n0 * LDS + kk : sw + kk * LDS + n0, LDS);
        Tr::convert(fb[j]);
      }
SPARROW_BSR_UNROLL
      for (int i = 0; i < FM; ++i)
SPARROW_BSR_UNROLL
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
  cp_async_wait<0>();
  SPARROW_BSR_SYNC();  // all warps are done with the pipeline buffers: reuse them for the output tile
  float* sc = reinterpret_cast<float*>(smem_raw);
SPARROW_BSR_UNROLL
  for (int i = 0; i < FM; ++i)
SPARROW_BSR_UNROLL
    for (int j = 0; j < FN; ++j)
      wmma::store_matrix_sync(sc + (wr * WM + i * 16) * LDC + wc * WN + j * 16, acc[i][j], LDC,
                              wmma::mem_row_major);
  SPARROW_BSR_SYNC();
  const int n0 = cb * B, nvalid = min(B, p.N - n0);
  for (int i = threadIdx.x; i < BM * B; i += kThreads) {
    const int r = i / B, c = i % B, row = r0 + r;
    if (row < p.rows && c < nvalid)
      p.c[int64_t(row) * p.N + n0 + c] = sc[r * LDC + c] + (p.bias ? p.bias[n0 + c] : 0.0f);
  }
}

// ---------------------------------------------------------------------------------------------------
// Block SDDMM on tensor cores: for block k = (bi, bj), dT (b × b, [c][o], the value layout) =
// x[:, bj·b ..]ᵀ · dy[:, bi·b ..] over a row range. CTA = (block, row split); chunks of KR rows of both
// segments go through the cp.async pipeline. The x chunk [r][c] read column-major is the A operand (m = c,
// k = r), the dy chunk [r][o] row-major is the B operand. Warps tile the b × b output (b = 32, 64) or, for
// b = 16, split each chunk's rows four ways and add their tiles at the end.
template <int B>
struct SddmmShape;
template <>
struct SddmmShape<16> {
  static constexpr int KR = 64, WO_R = 1, WO_C = 1, WK = 4;
};
template <>
struct SddmmShape<32> {
  static constexpr int KR = 64, WO_R = 2, WO_C = 2, WK = 1;
};
template <>
struct SddmmShape<64> {
  static constexpr int KR = 32, WO_R = 2, WO_C = 2, WK = 1;
};

struct SddmmParams {
  const void* x;
  const void* dy;
  float* out;               // splits × nnzb × b² (splits == 1: the value array itself)
  const int32_t* col_idx;   // block column of each block
  const int32_t* blk_row;   // block row of each block
  int rows, in, out_dim, nnzb, rows_per_split;
};

template <typename T, int B>
constexpr size_t sddmm_smem_bytes() {
  constexpr int KR = SddmmShape<B>::KR, LDS = B + Mma<T>::PAD;
  constexpr size_t stages = size_t(kStages) * 2 * KR * LDS * sizeof(T);
  constexpr size_t out = size_t(SddmmShape<B>::WK) * B * (B + 4) * sizeof(float);
  return stages > out ? stages : out;
}

template <typename T, int B, bool VEC>
SPARROW_BSR_GLOBAL void SPARROW_BSR_LAUNCH_BOUNDS(kThreads) bsr_sddmm_kernel(SddmmParams p) {
  using Tr = Mma<T>;
  constexpr int KR = SddmmShape<B>::KR, WO_R = SddmmShape<B>::WO_R, WO_C = SddmmShape<B>::WO_C;
  constexpr int WK = SddmmShape<B>::WK;
  static_assert(WO_R * WO_C * WK == kThreads / 32, "four warps");
  constexpr int TM = B / WO_R, TN = B / WO_C, FM = TM / 16, FN = TN / 16, KS = Tr::K;
  constexpr int KW = KR / WK;  // chunk rows per warp
  static_assert(KW % KS == 0, "warp row share must be a multiple of the MMA k");
  constexpr int LDS = B + Tr::PAD, LDC = B + 4;
  constexpr int STAGE = 2 * KR * LDS;
  SPARROW_BSR_SHARED(smem_raw);
  T* smem = reinterpret_cast<T*>(smem_raw);

  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  const int k = blockIdx.x, split = blockIdx.y;
  const int bj = p.col_idx[k], bi = p.blk_row[k];
  const int ce = min(B, p.in - bj * B), oe = min(B, p.out_dim - bi * B);
  const int rs0 = split * p.rows_per_split, rs1 = min(p.rows, rs0 + p.rows_per_split);
  const int nchunks = rs1 > rs0 ? (rs1 - rs0 + KR - 1) / KR : 0;
  const int warp = threadIdx.x / 32;
  const int wk = warp % WK, wo = warp / WK, wr = wo / WO_C, wc = wo % WO_C;

  wmma::fragment<wmma::accumulator, 16, 16, KS, float> acc[FM][FN];
SPARROW_BSR_UNROLL
  for (int i = 0; i < FM; ++i)
SPARROW_BSR_UNROLL
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  auto issue = [&](int ch) {
    T* sx = smem + (ch % kStages) * STAGE;
    T* sg = sx + KR * LDS;
    const int row0 = rs0 + ch * KR;
    stage_tile<T, B, LDS, VEC>(sx, x, p.in, KR, row0, rs1, bj * B, ce);
    stage_tile<T, B, LDS, VEC>(sg, dy, p.out_dim, KR, row0, rs1, bi * B, oe);
  };
SPARROW_BSR_UNROLL
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nchunks) issue(s);
    cp_async_commit();
  }
  for (int ch = 0; ch < nchunks; ++ch) {
    cp_async_wait<kStages - 2>();
    SPARROW_BSR_SYNC();
    if (ch + kStages - 1 < nchunks) issue(ch + kStages - 1);
    cp_async_commit();
    const T* sx = smem + (ch % kStages) * STAGE;
    const T* sg = sx + KR * LDS;
SPARROW_BSR_UNROLL
    for (int kk = wk * KW; kk < (wk + 1) * KW; kk += KS) {
      wmma::fragment<wmma::matrix_a, 16, 16, KS, typename Tr::elem, wmma::col_major> fa[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, KS, typename Tr::elem, wmma::row_major> fb[FN];
SPARROW_BSR_UNROLL
      for (int i = 0; i < FM; ++i) {
        // A (m = c, k = r) column-major: element at sx[r·LDS + c].
        wmma::load_matrix_sync(fa[i], sx + kk * LDS + wr * TM + i * 16, LDS);
        Tr::convert(fa[i]);
      }
SPARROW_BSR_UNROLL
      for (int j = 0; j < FN; ++j) {
        wmma::load_matrix_sync(fb[j], sg + kk * LDS + wc * TN + j * 16, LDS);
        Tr::convert(fb[j]);
      }
SPARROW_BSR_UNROLL
      for (int i = 0; i < FM; ++i)
SPARROW_BSR_UNROLL
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
  cp_async_wait<0>();
  SPARROW_BSR_SYNC();
  float* sc = reinterpret_cast<float*>(smem_raw);  // WK tiles of b × LDC
SPARROW_BSR_UNROLL
  for (int i = 0; i < FM; ++i)
SPARROW_BSR_UNROLL
    for (int j = 0; j < FN; ++j)
      wmma::store_matrix_sync(sc + wk * B * LDC + (wr * TM + i * 16) * LDC + wc * TN + j * 16, acc[i][j], LDC,
                              wmma::mem_row_major);
  SPARROW_BSR_SYNC();
  float* out = p.out + (int64_t(split) * p.nnzb + k) * B * B;
  for (int i = threadIdx.x; i < B * B; i += kThreads) {
    const int c = i / B, o = i % B;
    float v = 0.0f;
SPARROW_BSR_UNROLL
    for (int w = 0; w < WK; ++w) v += sc[w * B * LDC + c * LDC + o];
    out[i] = (c < ce && o < oe) ? v : 0.0f;  // padding of edge blocks is exactly zero
  }
}

// dvalues[i] = Σ_s partial[s·n + i] (fixed order: deterministic).
static SPARROW_BSR_GLOBAL void bsr_reduce_splits_kernel(const float* partial, int splits, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += partial[s * n + i];
    out[i] = v;
  }
}

// ---------------------------------------------------------------------------------------------------
// Launch planning (host side, shared with the emulation).

// Weight gradient: rows are split across CTAs when there are too few blocks to fill the device (about two
// CTAs per SM; each split keeps >= 256 rows), rows per split a multiple of the chunk.
struct SddmmPlan {
  int splits, rows_per_split;
};
// Block rows (or columns) by descending list length, given the list offsets (stable for equal lengths):
// the CTA order of the SpMM grid.
inline std::vector<int32_t> longest_first(const std::vector<int32_t>& ptr) {
  const int n = int(ptr.size()) - 1;
  std::vector<int32_t> order(size_t(n > 0 ? n : 0));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return ptr[size_t(a) + 1] - ptr[size_t(a)] > ptr[size_t(b) + 1] - ptr[size_t(b)];
  });
  return order;
}

inline SddmmPlan sddmm_plan(int rows, int64_t nnzb, int sm_count, int b) {
  const int kr = b == 64 ? SddmmShape<64>::KR : b == 32 ? SddmmShape<32>::KR : SddmmShape<16>::KR;
  const int64_t want = (2 * int64_t(sm_count) + nnzb - 1) / nnzb;
  const int max_splits = rows / 256 > 1 ? rows / 256 : 1;
  int64_t splits = want < 1 ? 1 : want;
  if (splits > max_splits) splits = max_splits;
  if (splits > 1024) splits = 1024;
  const int per_split = ((rows + int(splits) - 1) / int(splits) + kr - 1) / kr * kr;
  return {int(splits), per_split};
}

}  // namespace SPARROW_BSR_NAMESPACE
}  // namespace sparrow
