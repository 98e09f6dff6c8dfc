// CPU block-sparse (BSR) linear passes: pattern construction and conversions, the plain-loop references,
// and the register-blocked fast path. Layouts as kernels/sparse/bsr.h: W Out×In, X Rows×In, Y Rows×Out,
// all row-major; each value block stored column-major (entry (r, c) of a block at c·b + r).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "engine/base/error.h"
#include "engine/base/nvtx.h"
#include "kernels/sparse/bsr.h"

namespace sparrow {

// ---------------------------------------------------------------------------------------------------
// Pattern.

bool bsr_block_supported_cpu(int block) { return block == 8 || block == 16 || block == 32; }
bool bsr_block_supported_cuda(int block) { return block == 16 || block == 32 || block == 64; }

namespace {

void check_dims(int out, int in, int block, const char* op) {
  SPARROW_CHECK(out > 0 && in > 0, op, ": invalid weight shape ", out, "x", in);
  SPARROW_CHECK(block > 0 && block <= 256, op, ": invalid block size ", block, " (expected 1..256)");
}

// Fills the transposed index from row_ptr/col_idx (counting sort by block column; stable, so each block
// column lists its blocks in ascending block row).
void build_transpose(BsrPattern& p) {
  const int nbc = p.block_cols(), nbr = p.block_rows();
  p.col_ptr.assign(size_t(nbc) + 1, 0);
  for (int32_t c : p.col_idx) ++p.col_ptr[size_t(c) + 1];
  for (int j = 0; j < nbc; ++j) p.col_ptr[size_t(j) + 1] += p.col_ptr[size_t(j)];
  p.t_row.assign(p.col_idx.size(), 0);
  p.t_block.assign(p.col_idx.size(), 0);
  std::vector<int32_t> next(p.col_ptr.begin(), p.col_ptr.end() - 1);
  for (int bi = 0; bi < nbr; ++bi)
    for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) {
      const int32_t t = next[size_t(p.col_idx[size_t(k)])]++;
      p.t_row[size_t(t)] = bi;
      p.t_block[size_t(t)] = k;
    }
}

}  // namespace

void bsr_pattern_validate(const BsrPattern& p) {
  const char* op = "bsr_pattern";
  check_dims(p.out, p.in, p.block, op);
  const int nbr = p.block_rows(), nbc = p.block_cols();
  SPARROW_CHECK(p.row_ptr.size() == size_t(nbr) + 1, op, ": row_ptr has ", p.row_ptr.size(),
                " entries, expected block_rows + 1 = ", nbr + 1, " for ", p.out, "x", p.in, " block ", p.block);
  SPARROW_CHECK(p.row_ptr[0] == 0 && size_t(p.row_ptr.back()) == p.col_idx.size(), op, ": row_ptr spans [",
                p.row_ptr[0], ", ", p.row_ptr.back(), "] but col_idx has ", p.col_idx.size(), " entries");
  for (int bi = 0; bi < nbr; ++bi) {
    SPARROW_CHECK(p.row_ptr[size_t(bi)] <= p.row_ptr[size_t(bi) + 1], op, ": row_ptr decreases at block row ",
                  bi);
    for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) {
      const int32_t c = p.col_idx[size_t(k)];
      SPARROW_CHECK(c >= 0 && c < nbc, op, ": block column ", c, " at block row ", bi, " is outside [0, ", nbc,
                    ")");
      SPARROW_CHECK(k == p.row_ptr[size_t(bi)] || p.col_idx[size_t(k) - 1] < c, op,
                    ": block columns of block row ", bi, " are not strictly ascending");
    }
  }
  SPARROW_CHECK(p.col_ptr.size() == size_t(nbc) + 1 && p.t_row.size() == p.col_idx.size() &&
                    p.t_block.size() == p.col_idx.size(),
                op, ": transposed index missing or of the wrong size (build patterns with bsr_pattern_from_*)");
  for (int bj = 0; bj < nbc; ++bj)
    for (int32_t t = p.col_ptr[size_t(bj)]; t < p.col_ptr[size_t(bj) + 1]; ++t) {
      const int32_t k = p.t_block[size_t(t)], bi = p.t_row[size_t(t)];
      SPARROW_CHECK(k >= 0 && size_t(k) < p.col_idx.size() && p.col_idx[size_t(k)] == bj && bi >= 0 &&
                        bi < nbr && k >= p.row_ptr[size_t(bi)] && k < p.row_ptr[size_t(bi) + 1],
                    op, ": transposed index entry ", t, " is inconsistent with the block rows");
    }
}

BsrPattern bsr_pattern_from_csr(int out, int in, int block, std::vector<int32_t> row_ptr,
                                std::vector<int32_t> col_idx) {
  check_dims(out, in, block, "bsr_pattern_from_csr");
  BsrPattern p;
  p.out = out;
  p.in = in;
  p.block = block;
  p.row_ptr = std::move(row_ptr);
  p.col_idx = std::move(col_idx);
  SPARROW_CHECK(p.row_ptr.size() == size_t(p.block_rows()) + 1, "bsr_pattern_from_csr: row_ptr has ",
                p.row_ptr.size(), " entries, expected ", p.block_rows() + 1);
  SPARROW_CHECK(p.row_ptr.back() >= 0 && size_t(p.row_ptr.back()) == p.col_idx.size(),
                "bsr_pattern_from_csr: row_ptr ends at ", p.row_ptr.back(), " but col_idx has ",
                p.col_idx.size(), " entries");
  for (size_t i = 0; i + 1 < p.row_ptr.size(); ++i)
    SPARROW_CHECK(p.row_ptr[i] >= 0 && p.row_ptr[i] <= p.row_ptr[i + 1], "bsr_pattern_from_csr: row_ptr[",
                  i, "] = ", p.row_ptr[i], " is out of order");
  for (size_t k = 0; k < p.col_idx.size(); ++k)
    SPARROW_CHECK(p.col_idx[k] >= 0 && p.col_idx[k] < p.block_cols(), "bsr_pattern_from_csr: col_idx[", k,
                  "] = ", p.col_idx[k], " is outside [0, ", p.block_cols(), ")");
  build_transpose(p);
  bsr_pattern_validate(p);
  return p;
}

BsrPattern bsr_pattern_from_block_mask(int out, int in, int block, const uint8_t* block_mask) {
  check_dims(out, in, block, "bsr_pattern_from_block_mask");
  const int nbr = (out + block - 1) / block, nbc = (in + block - 1) / block;
  SPARROW_CHECK(int64_t(nbr) * nbc < INT32_MAX, "bsr_pattern_from_block_mask: ", nbr, "x", nbc,
                " blocks overflow int32 indices");
  std::vector<int32_t> row_ptr(size_t(nbr) + 1, 0), col_idx;
  for (int bi = 0; bi < nbr; ++bi) {
    for (int bj = 0; bj < nbc; ++bj)
      if (block_mask[int64_t(bi) * nbc + bj]) col_idx.push_back(bj);
    row_ptr[size_t(bi) + 1] = int32_t(col_idx.size());
  }
  return bsr_pattern_from_csr(out, in, block, std::move(row_ptr), std::move(col_idx));
}

template <typename T>
BsrPattern bsr_pattern_from_dense(int out, int in, int block, const T* dense) {
  check_dims(out, in, block, "bsr_pattern_from_dense");
  const int nbr = (out + block - 1) / block, nbc = (in + block - 1) / block;
  std::vector<uint8_t> bm(size_t(nbr) * nbc, 0);
  for (int o = 0; o < out; ++o)
    for (int i = 0; i < in; ++i)
      if (dense[int64_t(o) * in + i] != T(0)) bm[size_t(o / block) * nbc + size_t(i / block)] = 1;
  return bsr_pattern_from_block_mask(out, in, block, bm.data());
}

template <typename T>
void bsr_from_dense(const BsrPattern& p, const T* w, T* values) {
  const int b = p.block;
  for (int bi = 0; bi < p.block_rows(); ++bi) {
    const int re = bsr_extent(p.out, bi, b);
    for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) {
      const int bj = p.col_idx[size_t(k)], ce = bsr_extent(p.in, bj, b);
      for (int r = 0; r < b; ++r)
        for (int c = 0; c < b; ++c)
          values[bsr_value_offset(k, b, r, c)] =
              (r < re && c < ce) ? w[int64_t(bi * b + r) * p.in + bj * b + c] : T(0);
    }
  }
}

template <typename T>
void bsr_to_dense(const BsrPattern& p, const T* values, T* w) {
  const int b = p.block;
  std::fill(w, w + int64_t(p.out) * p.in, T(0));
  for (int bi = 0; bi < p.block_rows(); ++bi) {
    const int re = bsr_extent(p.out, bi, b);
    for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) {
      const int bj = p.col_idx[size_t(k)], ce = bsr_extent(p.in, bj, b);
      for (int r = 0; r < re; ++r)
        for (int c = 0; c < ce; ++c)
          w[int64_t(bi * b + r) * p.in + bj * b + c] = values[bsr_value_offset(k, b, r, c)];
    }
  }
}

template <typename T>
BsrPattern bsr_from_dense(int out, int in, int block, const T* w, std::vector<T>* values) {
  BsrPattern p = bsr_pattern_from_dense(out, in, block, w);
  values->assign(size_t(p.value_count()), T(0));
  bsr_from_dense(p, w, values->data());
  return p;
}

// ---------------------------------------------------------------------------------------------------
// References: plain loops over the pattern, double accumulation.

template <typename T>
void bsr_linear_forward_ref_cpu(const BsrPattern& p, const T* values, const T* x, int rows, const T* bias,
                                T* y) {
  const int b = p.block;
  std::vector<double> acc(static_cast<size_t>(b));
  for (int r = 0; r < rows; ++r) {
    const T* xr = x + int64_t(r) * p.in;
    for (int bi = 0; bi < p.block_rows(); ++bi) {
      const int re = bsr_extent(p.out, bi, b);
      for (int o = 0; o < re; ++o) acc[size_t(o)] = bias ? double(bias[bi * b + o]) : 0.0;
      for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) {
        const int bj = p.col_idx[size_t(k)], ce = bsr_extent(p.in, bj, b);
        for (int o = 0; o < re; ++o)
          for (int c = 0; c < ce; ++c)
            acc[size_t(o)] += double(values[bsr_value_offset(k, b, o, c)]) * double(xr[bj * b + c]);
      }
      for (int o = 0; o < re; ++o) y[int64_t(r) * p.out + bi * b + o] = T(acc[size_t(o)]);
    }
  }
}

template <typename T>
void bsr_linear_backward_input_ref_cpu(const BsrPattern& p, const T* values, const T* dy, int rows, T* dx) {
  const int b = p.block;
  std::vector<double> acc(size_t(p.in));
  for (int r = 0; r < rows; ++r) {
    std::fill(acc.begin(), acc.end(), 0.0);
    const T* dyr = dy + int64_t(r) * p.out;
    for (int bi = 0; bi < p.block_rows(); ++bi) {
      const int re = bsr_extent(p.out, bi, b);
      for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) {
        const int bj = p.col_idx[size_t(k)], ce = bsr_extent(p.in, bj, b);
        for (int o = 0; o < re; ++o)
          for (int c = 0; c < ce; ++c)
            acc[size_t(bj * b + c)] += double(values[bsr_value_offset(k, b, o, c)]) * double(dyr[bi * b + o]);
      }
    }
    for (int i = 0; i < p.in; ++i) dx[int64_t(r) * p.in + i] = T(acc[size_t(i)]);
  }
}

template <typename T>
void bsr_linear_backward_weight_ref_cpu(const BsrPattern& p, const T* x, const T* dy, int rows, T* dvalues) {
  const int b = p.block;
  for (int bi = 0; bi < p.block_rows(); ++bi) {
    const int re = bsr_extent(p.out, bi, b);
    for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) {
      const int bj = p.col_idx[size_t(k)], ce = bsr_extent(p.in, bj, b);
      for (int o = 0; o < b; ++o)
        for (int c = 0; c < b; ++c) {
          double acc = 0.0;
          if (o < re && c < ce)
            for (int r = 0; r < rows; ++r)
              acc += double(dy[int64_t(r) * p.out + bi * b + o]) * double(x[int64_t(r) * p.in + bj * b + c]);
          dvalues[bsr_value_offset(k, b, o, c)] = T(acc);
        }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Fast path: vector primitives. Each V is one SIMD register of W floats with unaligned loads, a broadcast
// (folded into the FMA's memory operand by the compiler) and partial (masked) loads/stores for edge blocks.

namespace {

#if defined(__AVX512F__)
struct V512 {
  using T = __m512;
  static constexpr int W = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T bcast(const float* p) { return _mm512_set1_ps(*p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  // Non-temporal when the line is aligned (large outputs: no read-for-ownership, no cache pollution).
  static void store_stream(float* p, T v) {
    if ((reinterpret_cast<uintptr_t>(p) & 63) == 0)
      _mm512_stream_ps(p, v);
    else
      _mm512_storeu_ps(p, v);
  }
  static __mmask16 mask(int n) {
    return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
  }
  static T load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store_n(float* p, T v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
};
#endif

#if defined(__AVX2__) && defined(__FMA__)
struct V256 {
  using T = __m256;
  static constexpr int W = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static void store_stream(float* p, T v) {
    if ((reinterpret_cast<uintptr_t>(p) & 31) == 0)
      _mm256_stream_ps(p, v);
    else
      _mm256_storeu_ps(p, v);
  }
  static __m256i mask(int n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
  }
  static T load_n(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store_n(float* p, T v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
};
#endif

// Portable fallback: a GCC vector of 4 floats (16 bytes: the baseline SIMD width of x86-64 and AArch64).
struct VPortable {
  typedef float T __attribute__((vector_size(16)));
  static constexpr int W = 4;
  static T zero() { return T{}; }
  static T load(const float* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
  }
  static T bcast(const float* p) { return T{} + *p; }
  static T fma(T a, T b, T c) { return a * b + c; }
  static T add(T a, T b) { return a + b; }
  static void store(float* p, T v) { std::memcpy(p, &v, sizeof(T)); }
  static void store_stream(float* p, T v) { store(p, v); }
  static T load_n(const float* p, int n) {
    T v{};
    for (int i = 0; i < n && i < W; ++i) v[i] = p[i];
    return v;
  }
  static void store_n(float* p, T v, int n) {
    for (int i = 0; i < n && i < W; ++i) p[i] = v[i];
  }
};

// Tile shapes per (vector, block). R: rows of A per micro-tile in the SpMM (R × b/W accumulators);
// IT: block input columns per SDDMM tile (IT × b/W accumulators). Chosen so accumulators plus the
// weight (or dy) vectors fit the register file: 32 zmm for AVX-512, 16 ymm for AVX2.
template <class V, int B>
struct Tile;
#if defined(__AVX512F__)
template <>
struct Tile<V512, 16> {
  static constexpr int R = 12, IT = 16;
};
template <>
struct Tile<V512, 32> {
  static constexpr int R = 8, IT = 8;
};
#endif
#if defined(__AVX2__) && defined(__FMA__)
template <>
struct Tile<V256, 8> {
  static constexpr int R = 12, IT = 8;
};
template <>
struct Tile<V256, 16> {
  static constexpr int R = 6, IT = 4;
};
template <>
struct Tile<V256, 32> {
  static constexpr int R = 3, IT = 2;
};
#endif
template <int B>
struct Tile<VPortable, B> {
  static constexpr int R = 4, IT = 2;
};

// ---------------------------------------------------------------------------------------------------
// SpMM: C (rows × N) = A (rows × K) · S, S block-sparse K×N given by "output block columns" cb, each a
// list of blocks blocks[t] (b×b, row-major [k][n] — a vector of b outputs per k) at k-block kidx[t].
// The forward pass is S = Wᵀ in block-row order (value blocks as stored); the input gradient is S = W in
// block-column order (value blocks transposed once per call).
//
// Cache plan: a task is (row chunk, group of output block columns). The task first packs the A segments
// its blocks use into micro-panels [tile of R rows][k-block][row][b] (plain row copies; zero rows past the
// end). The packed chunk stays in L2 while the task walks its block columns, every weight block is
// read once per row chunk (rc/2 flops per weight byte) and stays in L1 across the chunk's tiles; the
// micro-kernel broadcasts from one contiguous panel (no row pointers, no 4 KiB-stride set conflicts).
struct SpmmArgs {
  int rows, K, N, nb_out;     // nb_out = number of output block columns
  const float* a;             // rows × K, leading dim K
  float* c;                   // rows × N, leading dim N
  const int32_t* ptr;         // nb_out + 1
  const int32_t* kidx;        // block k-index of each block
  const float* blocks;        // b×b per block, in ptr order
  const float* bias;          // N or null
  bool stream;                // output larger than the caches: non-temporal stores
};

// Outputs above this size are written with non-temporal stores: they cannot stay cached for the next op
// anyway, and skipping the read-for-ownership halves their memory traffic (it dominates at low density).
constexpr int64_t kStreamBytes = int64_t(16) << 20;

void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();  // order the non-temporal stores before the OpenMP barrier publishes the output
#endif
}

constexpr int64_t kChunkBytes = 384 * 1024;

// Requests the b-wide pieces `segs` of rows [r0, r1) of a row-major matrix into L2, a slice per call of
// issue(): the next chunk's pack inputs, fetched while the current chunk computes. Packing reads pieces
// scattered along each row, which the hardware prefetchers do not follow, so without this the copy waits
// on memory with the FMA units idle (perf: nearly all the pack's time on its first store).
template <int B>
class SegmentPrefetch {
 public:
  static constexpr int kLines = (B * 4 + 63) / 64;  // cache lines per piece (B * 4 bytes)

  void start(const float* a, int64_t ld, const int32_t* segs, int nseg, int r0, int r1) {
    a_ = a;
    ld_ = ld;
    segs_ = segs;
    nseg_ = nseg;
    row_ = r0;
    end_ = nseg > 0 ? r1 : r0;
    seg_ = 0;
  }
  void stop() { end_ = row_; }
  // Lines per issue() call that spread the remaining rows over `calls` calls.
  int64_t share(int64_t calls) const { return int64_t(end_ - row_) * nseg_ * kLines / calls + 1; }
  // About n lines; nothing once the rows are done.
  void issue(int64_t n) {
    for (; n > 0 && row_ < end_; n -= kLines) {
      const char* p = reinterpret_cast<const char*>(a_ + int64_t(row_) * ld_ + int64_t(segs_[seg_]) * B);
      for (int l = 0; l < kLines; ++l) __builtin_prefetch(p + l * 64, 0, 2);
      if (++seg_ == nseg_) {
        seg_ = 0;
        ++row_;
      }
    }
  }

 private:
  const float* a_ = nullptr;
  int64_t ld_ = 0;
  const int32_t* segs_ = nullptr;
  int nseg_ = 0, row_ = 0, end_ = 0, seg_ = 0;
};

// The distinct values of idx[k0, k1) (each in [0, n)), ascending: the segments a range of blocks packs.
std::vector<int32_t> distinct_sorted(const int32_t* idx, int64_t k0, int64_t k1, int n) {
  std::vector<uint8_t> seen(static_cast<size_t>(n), 0);
  std::vector<int32_t> out;
  for (int64_t k = k0; k < k1; ++k)
    if (!seen[size_t(idx[k])]) {
      seen[size_t(idx[k])] = 1;
      out.push_back(idx[k]);
    }
  std::sort(out.begin(), out.end());
  return out;
}

// Tasks [0, n) split into one contiguous range per thread. A thread takes its own range in order, so it
// knows its likely next task and can fetch that task's inputs early; then it helps with the other ranges,
// through the same counters, so a thread that starts late (a sleeping OpenMP worker takes tens of
// microseconds to wake) or runs slowly on a shared machine does not hold the call up.
class TaskRanges {
 public:
  TaskRanges(int n, int parts) : parts_(std::max(1, parts)), r_(new Range[size_t(parts_)]) {
    for (int i = 0; i < parts_; ++i) {
      r_[size_t(i)].begin = int(int64_t(n) * i / parts_);
      r_[size_t(i)].end = int(int64_t(n) * (i + 1) / parts_);
      r_[size_t(i)].next.store(r_[size_t(i)].begin, std::memory_order_relaxed);
    }
  }
  // The next task for thread tid (its own range first), or -1 once every task is taken.
  int take(int tid) {
    for (int i = 0; i < parts_; ++i) {
      Range& r = r_[size_t((tid + i) % parts_)];
      if (r.next.load(std::memory_order_relaxed) >= r.end) continue;
      const int t = r.next.fetch_add(1, std::memory_order_relaxed);
      if (t < r.end) return t;
    }
    return -1;
  }
  // The task thread tid most likely takes after `task` (the next one of its own range), or -1.
  int likely_next(int tid, int task) const {
    const Range& r = r_[size_t(tid % parts_)];
    return task >= r.begin && task + 1 < r.end ? task + 1 : -1;
  }

 private:
  struct alignas(64) Range {  // a cache line each: the counters are written by different threads
    std::atomic<int> next{0};
    int begin = 0, end = 0;
  };
  int parts_;
  std::unique_ptr<Range[]> r_;
};

// One micro-tile: R packed rows (rr of them real, stored at row r0), output block column cb. The
// accumulators live in registers across the whole block list, so C is written exactly once.
template <class V, int B, int R>
void spmm_tile(const SpmmArgs& s, const float* panel, const int32_t* slot, int r0, int rr, int cb) {
  constexpr int NV = B / V::W;
  constexpr int SEG = B * R;  // floats per packed k-block segment
  typename V::T acc[R][NV];
  const int n0 = cb * B, ne = bsr_extent(s.N, cb, B);
  if (s.bias) {
    for (int v = 0; v < NV; ++v) {
      const typename V::T bv =
          ne == B ? V::load(s.bias + n0 + v * V::W) : V::load_n(s.bias + n0 + v * V::W, ne - v * V::W);
      for (int r = 0; r < R; ++r) acc[r][v] = bv;
    }
  } else {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  }
  const int t0 = s.ptr[cb], t1 = s.ptr[cb + 1];
  auto step = [&](const float* w, const float* a0, int k) {
    typename V::T wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = V::load(w + k * B + v * V::W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const typename V::T xv = V::bcast(a0 + r * B + k);
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(xv, wv[v], acc[r][v]);
    }
  };
  // Only the last block of a list can be the partial edge block (K not a multiple of b): the main loop
  // runs whole blocks with a compile-time trip count, so the accumulators never leave the registers.
  const int t_full = (t1 > t0 && bsr_extent(s.K, s.kidx[t1 - 1], B) < B) ? t1 - 1 : t1;
  for (int t = t0; t < t_full; ++t) {
    const float* w = s.blocks + int64_t(t) * B * B;
    const float* a0 = panel + int64_t(slot[s.kidx[t]]) * SEG;
    if (t + 1 < t1) {  // the next block's panel segment: a jump the hardware prefetcher cannot predict
      const char* an = reinterpret_cast<const char*>(panel + int64_t(slot[s.kidx[t + 1]]) * SEG);
      for (int l = 0; l < SEG * 4; l += 64) __builtin_prefetch(an + l, 0, 3);
    }
#pragma GCC unroll 4
    for (int k = 0; k < B; ++k) step(w, a0, k);
  }
  if (t_full < t1) {
    const int kb = s.kidx[t_full], ke = bsr_extent(s.K, kb, B);
    const float* w = s.blocks + int64_t(t_full) * B * B;
    const float* a0 = panel + int64_t(slot[kb]) * SEG;
    for (int k = 0; k < ke; ++k) step(w, a0, k);
  }
  float* crow = s.c + int64_t(r0) * s.N + n0;
  for (int r = 0; r < R; ++r) {
    if (r >= rr) break;
    for (int v = 0; v < NV; ++v) {
      if (ne == B && s.stream)
        V::store_stream(crow + int64_t(r) * s.N + v * V::W, acc[r][v]);
      else if (ne == B)
        V::store(crow + int64_t(r) * s.N + v * V::W, acc[r][v]);
      else if (ne > v * V::W)
        V::store_n(crow + int64_t(r) * s.N + v * V::W, acc[r][v], ne - v * V::W);
    }
  }
}

// Splits [0, n) items with prefix costs cost(i) into `parts` contiguous ranges of about equal cost.
template <typename Cost>
std::vector<int> balanced_split(int n, int parts, Cost cost_prefix) {
  std::vector<int> cut(size_t(parts) + 1, n);
  cut[0] = 0;
  const double total = double(cost_prefix(n));
  int i = 0;
  for (int g = 1; g < parts; ++g) {
    const double target = total * g / parts;
    while (i < n && double(cost_prefix(i)) < target) ++i;
    cut[size_t(g)] = i;
  }
  return cut;
}

template <class V, int B>
void spmm_run(const SpmmArgs& s) {
  constexpr int R = Tile<V, B>::R;
  if (s.rows <= 0) return;
  const int threads = omp_get_max_threads();
  const int nkb = (s.K + B - 1) / B;
  // Row chunks: at most kChunkBytes of A each, at least one tile, a multiple of the thread count when
  // there are several, split evenly.
  const int rc_max = int(std::clamp<int64_t>(kChunkBytes / (int64_t(s.K) * 4) / R * R, R, 480 / R * R));
  int nrc = (s.rows + rc_max - 1) / rc_max;
  if (nrc > 1 && threads > 1) nrc = (nrc + threads - 1) / threads * threads;
  const int rc = ((s.rows + nrc - 1) / nrc + R - 1) / R * R;
  nrc = (s.rows + rc - 1) / rc;
  // Enough tasks for balance (>= 8 per thread): split the block columns too when there are few row chunks
  // (each group then packs its own copy of the chunk's A segments).
  int ncg = 1;
  if (threads > 1 && nrc < 8 * threads) ncg = std::max(1, std::min(s.nb_out, (8 * threads + nrc - 1) / nrc));
  const std::vector<int> cut = balanced_split(s.nb_out, ncg, [&](int i) { return int64_t(s.ptr[i]) * 4 + i; });
  const int ntasks = nrc * ncg;
  // The k-blocks each group of block columns reads, ascending: the A segments its tasks pack.
  std::vector<std::vector<int32_t>> used_of(static_cast<size_t>(ncg));
  for (int g = 0; g < ncg; ++g)
    used_of[size_t(g)] = distinct_sorted(s.kidx, s.ptr[cut[size_t(g)]], s.ptr[cut[size_t(g) + 1]], nkb);
  TaskRanges tasks(ntasks, threads);
#pragma omp parallel if (threads > 1 && ntasks > 1)
  {
    thread_local std::vector<float> pack;  // kept across calls: no page faults on every call
    std::vector<int32_t> slot(size_t(nkb), -1);
    SegmentPrefetch<B> ahead;
    const int tid = omp_get_thread_num();
    for (int task = tasks.take(tid); task >= 0; task = tasks.take(tid)) {
      const int ic = task / ncg, g = task % ncg;
      const int c0 = cut[size_t(g)], c1 = cut[size_t(g) + 1];
      const std::vector<int32_t>& used = used_of[size_t(g)];
      if (c0 == c1) continue;
      const int r0 = ic * rc, r1 = std::min(s.rows, r0 + rc), ntile = (r1 - r0 + R - 1) / R;
      for (size_t j = 0; j < used.size(); ++j) slot[size_t(used[j])] = int32_t(j);
      const int64_t tile_floats = int64_t(used.size()) * B * R;
      if (!used.empty()) {
        pack.resize(size_t(ntile * tile_floats));
        for (int tile = 0; tile < ntile; ++tile) {
          float* pt = pack.data() + tile * tile_floats;
          for (int r = 0; r < R; ++r) {  // row by row: each A row is read front to back
            const int row = r0 + tile * R + r;
            const float* arow = s.a + int64_t(row) * s.K;
            for (size_t j = 0; j < used.size(); ++j) {
              const int kb = used[j], n = row < r1 ? bsr_extent(s.K, kb, B) : 0;
              float* dst = pt + (int64_t(j) * R + r) * B;
              if (n == B) {
                std::memcpy(dst, arow + int64_t(kb) * B, sizeof(float) * B);
              } else {
                if (n > 0) std::memcpy(dst, arow + int64_t(kb) * B, sizeof(float) * size_t(n));
                std::fill(dst + n, dst + B, 0.0f);
              }
            }
          }
        }
      }
      if (const int next = tasks.likely_next(tid, task); next >= 0) {
        const int nic = next / ncg, ng = next % ncg;
        const std::vector<int32_t>& nused = used_of[size_t(ng)];
        ahead.start(s.a, s.K, nused.data(), int(nused.size()), nic * rc, std::min(s.rows, (nic + 1) * rc));
      } else {
        ahead.stop();  // no known next task: nothing left over from an earlier one
      }
      const int64_t quota = ahead.share(int64_t(c1 - c0) * ntile);
      for (int cb = c0; cb < c1; ++cb)
        for (int tile = 0; tile < ntile; ++tile) {
          const int row = r0 + tile * R;
          spmm_tile<V, B, R>(s, pack.data() + tile * tile_floats, slot.data(), row, std::min(R, r1 - row), cb);
          ahead.issue(quota);
        }
    }
    if (s.stream) stream_fence();
  }
}

// ---------------------------------------------------------------------------------------------------
// SDDMM (weight gradient): for each kept block k = (bi, bj), dT[c][o] = Σ_r x[r][bj·b + c] · dy[r][bi·b + o]
// (the value layout: column c of W's block is the contiguous run at c·b). A task owns a range of blocks
// (and, with few blocks, a share of the rows, reduced afterwards without atomics). Per chunk of rows it
// packs the dy and x segments its blocks read into contiguous zero-padded [segment][row][b] panels (edge
// blocks then need no masking and their padding comes out exactly zero), and each block accumulates
// IT input columns × the b outputs in registers over the chunk.
struct SddmmArgs {
  int rows, out, in;
  const float* x;   // rows × in
  const float* dy;  // rows × out
  const BsrPattern* p;
  float* dv;        // value array (or a partial-sum buffer of the same shape)
};

template <class V, int B, int IT>
void sddmm_tile(const float* xp, const float* gp, int nrows, float* d, bool accumulate) {
  constexpr int NV = B / V::W;
  typename V::T acc[IT][NV];
  if (accumulate) {
    for (int i = 0; i < IT; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = V::load(d + i * B + v * V::W);
  } else {
    for (int i = 0; i < IT; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  }
  for (int r = 0; r < nrows; ++r, xp += B, gp += B) {
    typename V::T g[NV];
    for (int v = 0; v < NV; ++v) g[v] = V::load(gp + v * V::W);
#pragma GCC unroll 16
    for (int i = 0; i < IT; ++i) {
      const typename V::T xv = V::bcast(xp + i);
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(xv, g[v], acc[i][v]);
    }
  }
  for (int i = 0; i < IT; ++i)
    for (int v = 0; v < NV; ++v) V::store(d + i * B + v * V::W, acc[i][v]);
}

// Copies the b-wide column segments `segs` of rows [r0, r1) of a (leading dim ld, width total) into
// panel[j][r − r0][0..b), zero past the matrix edge.
template <int B>
void pack_segments(const float* a, int64_t ld, int total, int r0, int r1, const std::vector<int32_t>& segs,
                   float* panel) {
  const int n = r1 - r0;
  for (int r = 0; r < n; ++r) {  // row by row: each source row is read front to back
    const float* src = a + int64_t(r0 + r) * ld;
    for (size_t j = 0; j < segs.size(); ++j) {
      const int e = bsr_extent(total, segs[j], B);
      float* dst = panel + (int64_t(j) * n + r) * B;
      if (e == B) {
        std::memcpy(dst, src + int64_t(segs[j]) * B, sizeof(float) * B);
      } else {
        std::memcpy(dst, src + int64_t(segs[j]) * B, sizeof(float) * size_t(e));
        std::fill(dst + e, dst + B, 0.0f);
      }
    }
  }
}

// Rows per L1 slice of the SDDMM's panels (x and dy: 2 · rows · b floats; 32 KiB at b = 32, of L1's 48).
// Against whole chunks (sparrow-bench-bsr --quick --threads 2 --blocks 32, binaries interleaved, 3 rounds):
// ResNet-20 stage-3 weight gradient 0.89–0.94× at 3–50% block density, the other shapes 0.97–1.05×.
constexpr int kSddmmL1Rows = 128;

template <class V, int B>
void sddmm_run(const SddmmArgs& s) {
  constexpr int IT = Tile<V, B>::IT;
  static_assert(B % IT == 0, "SDDMM tile must divide the block");
  const BsrPattern& p = *s.p;
  const int64_t nnzb = p.nnzb();
  if (nnzb == 0) return;
  const int threads = omp_get_max_threads();
  if (s.rows <= 0) {
    std::fill(s.dv, s.dv + p.value_count(), 0.0f);
    return;
  }
  std::vector<int32_t> brow(static_cast<size_t>(nnzb));
  for (int bi = 0; bi < p.block_rows(); ++bi)
    for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) brow[size_t(k)] = bi;
  // The x block columns and dy block rows that each of `groups` block ranges of about equal count packs
  // (every block costs the same: b²·rows).
  struct Ranges {
    std::vector<int64_t> cut;
    std::vector<std::vector<int32_t>> xsegs, gsegs;
    int64_t segments() const {  // segments per row, summed over the ranges
      int64_t n = 0;
      for (size_t g = 0; g < xsegs.size(); ++g) n += int64_t(xsegs[g].size() + gsegs[g].size());
      return n;
    }
  };
  auto block_ranges = [&](int groups) {
    Ranges r;
    r.cut.resize(size_t(groups) + 1);
    for (int g = 0; g <= groups; ++g) r.cut[size_t(g)] = nnzb * g / groups;
    for (int g = 0; g < groups; ++g) {
      r.xsegs.push_back(distinct_sorted(p.col_idx.data(), r.cut[size_t(g)], r.cut[size_t(g) + 1], p.block_cols()));
      r.gsegs.push_back(distinct_sorted(brow.data(), r.cut[size_t(g)], r.cut[size_t(g) + 1], p.block_rows()));
    }
    return r;
  };
  // Two ways to share the work. One block range per thread: each thread packs the x columns (dy rows) its
  // blocks read, over all rows, so columns read by both ranges are packed twice. One row range per thread:
  // every segment is packed once, into per-thread partial sums (no atomics) reduced at the end. The rows
  // are split when that packs less, counting the reduction, and always with few blocks.
  constexpr int kMinChunkRows = 32;
  const int groups_if_blocks = int(std::min<int64_t>(nnzb, threads));
  Ranges ranges;
  int splits = 1;
  if (threads > 1 && s.rows >= 64 * threads) {
    if (nnzb < 8 * threads) {
      splits = threads;
    } else {
      Ranges by_blocks = block_ranges(groups_if_blocks), by_rows = block_ranges(1);
      const int64_t seg_rows = by_rows.segments(), seg_blocks = by_blocks.segments();
      if (double(s.rows) * seg_rows * B + 2.0 * threads * p.value_count() < double(s.rows) * seg_blocks * B) {
        splits = threads;
        ranges = std::move(by_rows);
      } else {
        ranges = std::move(by_blocks);
      }
    }
  }
  const int groups = splits > 1 ? 1 : groups_if_blocks;
  if (ranges.cut.empty()) ranges = block_ranges(groups);
  // Partial sums of the row ranges after the first, kept across calls: every range has rows, so its first
  // chunk overwrites every value (no zeroing needed).
  thread_local std::vector<float> partial_cache;
  if (splits > 1 && partial_cache.size() < size_t(splits - 1) * size_t(p.value_count()))
    partial_cache.resize(size_t(splits - 1) * size_t(p.value_count()));
  float* const partial = partial_cache.data();
  const int ntasks = splits * groups;
#pragma omp parallel if (threads > 1 && ntasks > 1)
  {
    thread_local std::vector<float> xpan, gpan;  // kept across calls
    std::vector<int32_t> xslot(size_t(p.block_cols()), -1), gslot(size_t(p.block_rows()), -1);
    SegmentPrefetch<B> xahead, gahead;
#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < ntasks; ++task) {
      const int sp = task / groups, g = task % groups;
      float* dv = sp == 0 ? s.dv : partial + size_t(sp - 1) * size_t(p.value_count());
      const int rs0 = int(int64_t(s.rows) * sp / splits), rs1 = int(int64_t(s.rows) * (sp + 1) / splits);
      const int64_t k0 = ranges.cut[size_t(g)], k1 = ranges.cut[size_t(g) + 1];
      const std::vector<int32_t>&xsegs = ranges.xsegs[size_t(g)], &gsegs = ranges.gsegs[size_t(g)];
      for (size_t j = 0; j < xsegs.size(); ++j) xslot[size_t(xsegs[j])] = int32_t(j);
      for (size_t j = 0; j < gsegs.size(); ++j) gslot[size_t(gsegs[j])] = int32_t(j);
      // Row chunk: as long as the kChunkBytes budget allows (the packed panels, rc × b per segment, stay
      // in L2 while the task walks its blocks), and at least 32 rows per block per segment. Every block's
      // b² sums are loaded and stored once per chunk: with many blocks on few segments (a 2048² gradient at
      // 5%, the ViT-B MLP, VGG-11 conv6) 32-row chunks spent more time moving the sums through L3 than
      // packing, and longer chunks win even when their panels outgrow L2 (they are read in order, a
      // segment at a time, which the hardware prefetchers follow). Measured at blocks 8, 16 and 32
      // (sparrow-bench-bsr, 2 threads): 16 rows per block per segment left half the gain at block 16, 64
      // cost 5–15% at block 32.
      const int64_t nseg = int64_t(xsegs.size() + gsegs.size()), seg_bytes = nseg * B * 4;
      const int rc_l2 = int(std::clamp<int64_t>(kChunkBytes / seg_bytes, kMinChunkRows, 512));
      const int64_t rc_sums = 32 * (k1 - k0) / nseg;
      const int rc = int(std::clamp<int64_t>(std::max<int64_t>(rc_l2, rc_sums), kMinChunkRows, 512));
      for (int r0 = rs0; r0 < rs1; r0 += rc) {
        const int r1 = std::min(rs1, r0 + rc), n = r1 - r0;
        xpan.resize(xsegs.size() * size_t(n) * B);
        gpan.resize(gsegs.size() * size_t(n) * B);
        pack_segments<B>(s.x, s.in, s.in, r0, r1, xsegs, xpan.data());
        pack_segments<B>(s.dy, s.out, s.out, r0, r1, gsegs, gpan.data());
        // The next chunk's segments come in while this one computes: its first rc_l2 rows, what fits L2
        // beside the current panels.
        const int nr1 = std::min(rs1, r1 + rc_l2);
        xahead.start(s.x, s.in, xsegs.data(), int(xsegs.size()), r1, nr1);
        gahead.start(s.dy, s.out, gsegs.data(), int(gsegs.size()), r1, nr1);
        const int64_t slices = (n + kSddmmL1Rows - 1) / kSddmmL1Rows;
        const int64_t calls = (k1 - k0) * (B / IT) * slices, qx = xahead.share(calls), qg = gahead.share(calls);
        for (int64_t k = k0; k < k1; ++k) {
          const float* xp = xpan.data() + int64_t(xslot[size_t(p.col_idx[size_t(k)])]) * n * B;
          const float* gp = gpan.data() + int64_t(gslot[size_t(brow[size_t(k)])]) * n * B;
          float* d = dv + k * B * B;
          // The b / IT tiles of a block all read the same dy rows: in slices of kSddmmL1Rows rows, a slice's
          // two panels stay in L1 across those tiles, instead of streaming from L2 once per tile.
          for (int q0 = 0; q0 < n; q0 += kSddmmL1Rows) {
            const int nq = std::min(kSddmmL1Rows, n - q0);
            for (int c = 0; c < B; c += IT) {
              sddmm_tile<V, B, IT>(xp + int64_t(q0) * B + c, gp + int64_t(q0) * B, nq, d + c * B,
                                   r0 != rs0 || q0 > 0);
              xahead.issue(qx);
              gahead.issue(qg);
            }
          }
        }
      }
    }
    // The row ranges' partial sums, in the same parallel region (after the loop's barrier).
    if (splits > 1) {
      const int64_t n = p.value_count();
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        float acc = s.dv[i];
        for (int sp = 1; sp < splits; ++sp) acc += partial[size_t(sp - 1) * size_t(n) + size_t(i)];
        s.dv[i] = acc;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Dispatch on (isa, block).

BsrIsa resolve(BsrIsa isa, const char* op) {
  if (isa == BsrIsa::kAuto) {
#if defined(__AVX512F__)
    return BsrIsa::kAvx512;
#elif defined(__AVX2__) && defined(__FMA__)
    return BsrIsa::kAvx2;
#else
    return BsrIsa::kPortable;
#endif
  }
  SPARROW_CHECK(bsr_isa_available(isa), op, ": micro-kernel family ", bsr_isa_name(isa),
                " is not compiled into this build (build with -march=native / SPARROW_NATIVE=ON)");
  return isa;
}

template <template <class, int> class Fn, class Args>
void dispatch(BsrIsa isa, int block, const Args& a) {
  switch (isa) {
#if defined(__AVX512F__)
    case BsrIsa::kAvx512:
      // b = 8 is one 256-bit vector: AVX-512VL ymm code (Zen 4 issues two ymm FMAs per cycle).
      if (block == 8) return Fn<V256, 8>::run(a);
      if (block == 16) return Fn<V512, 16>::run(a);
      return Fn<V512, 32>::run(a);
#endif
#if defined(__AVX2__) && defined(__FMA__)
    case BsrIsa::kAvx2:
      if (block == 8) return Fn<V256, 8>::run(a);
      if (block == 16) return Fn<V256, 16>::run(a);
      return Fn<V256, 32>::run(a);
#endif
    default:
      if (block == 8) return Fn<VPortable, 8>::run(a);
      if (block == 16) return Fn<VPortable, 16>::run(a);
      return Fn<VPortable, 32>::run(a);
  }
}

template <class V, int B>
struct SpmmFn {
  static void run(const SpmmArgs& a) { spmm_run<V, B>(a); }
};
template <class V, int B>
struct SddmmFn {
  static void run(const SddmmArgs& a) { sddmm_run<V, B>(a); }
};

void check_pass(const BsrPattern& p, int rows, const char* op) {
  SPARROW_CHECK(bsr_block_supported_cpu(p.block), op, ": block size ", p.block,
                " is not supported on the CPU (8, 16 or 32)");
  SPARROW_CHECK(p.row_ptr.size() == size_t(p.block_rows()) + 1 && p.col_ptr.size() == size_t(p.block_cols()) + 1,
                op, ": pattern ", p.out, "x", p.in, " block ", p.block, " is not built (use bsr_pattern_from_*)");
  SPARROW_CHECK(rows >= 0, op, ": negative row count ", rows);
}

}  // namespace

bool bsr_isa_available(BsrIsa isa) {
  switch (isa) {
    case BsrIsa::kAuto:
    case BsrIsa::kPortable:
      return true;
    case BsrIsa::kAvx512:
#if defined(__AVX512F__)
      return true;
#else
      return false;
#endif
    case BsrIsa::kAvx2:
#if defined(__AVX2__) && defined(__FMA__)
      return true;
#else
      return false;
#endif
  }
  return false;
}

BsrIsa bsr_isa_default() { return resolve(BsrIsa::kAuto, "bsr_isa_default"); }

const char* bsr_isa_name(BsrIsa isa) {
  switch (isa) {
    case BsrIsa::kAuto: return "auto";
    case BsrIsa::kAvx512: return "avx512";
    case BsrIsa::kAvx2: return "avx2";
    case BsrIsa::kPortable: return "portable";
  }
  return "?";
}

void bsr_linear_forward_cpu(const BsrPattern& p, const float* values, const float* x, int rows,
                            const float* bias, float* y, BsrIsa isa) {
  SPARROW_NVTX_RANGE("bsr_linear_fwd");
  check_pass(p, rows, "bsr_linear_forward_cpu");
  SpmmArgs a{rows, p.in, p.out, p.block_rows(), x, y, p.row_ptr.data(), p.col_idx.data(), values, bias,
             int64_t(rows) * p.out * 4 > kStreamBytes};
  dispatch<SpmmFn>(resolve(isa, "bsr_linear_forward_cpu"), p.block, a);
}

void bsr_linear_backward_input_cpu(const BsrPattern& p, const float* values, const float* dy, int rows,
                                   float* dx, BsrIsa isa) {
  SPARROW_NVTX_RANGE("bsr_linear_bwd_input");
  check_pass(p, rows, "bsr_linear_backward_input_cpu");
  if (rows == 0) return;
  // Blocks in block-column order, each transposed to [o][c] so that one k = o step is a vector over c.
  const int b = p.block;
  const int64_t nnzb = p.nnzb(), bb = int64_t(b) * b;
  // Kept across calls (a training step calls this every step). Thread-local to the calling thread: the
  // OpenMP workers below reach it only through `tv`, never by name (their own instance would be empty).
  thread_local std::vector<float> tv_cache;
  if (tv_cache.size() < size_t(nnzb * bb)) tv_cache.resize(size_t(nnzb * bb));
  float* tv = tv_cache.data();
#pragma omp parallel for schedule(static) if (nnzb * bb > 65536)
  for (int64_t t = 0; t < nnzb; ++t) {
    const float* src = values + int64_t(p.t_block[size_t(t)]) * bb;
    float* dst = tv + t * bb;
    for (int o = 0; o < b; ++o)
      for (int c = 0; c < b; ++c) dst[o * b + c] = src[c * b + o];
  }
  SpmmArgs a{rows,    p.out, p.in, p.block_cols(), dy, dx, p.col_ptr.data(), p.t_row.data(), tv, nullptr,
             int64_t(rows) * p.in * 4 > kStreamBytes};
  dispatch<SpmmFn>(resolve(isa, "bsr_linear_backward_input_cpu"), p.block, a);
}

void bsr_linear_backward_weight_cpu(const BsrPattern& p, const float* x, const float* dy, int rows,
                                    float* dvalues, BsrIsa isa) {
  SPARROW_NVTX_RANGE("bsr_linear_bwd_weight");
  check_pass(p, rows, "bsr_linear_backward_weight_cpu");
  SddmmArgs a{rows, p.out, p.in, x, dy, &p, dvalues};
  dispatch<SddmmFn>(resolve(isa, "bsr_linear_backward_weight_cpu"), p.block, a);
}

// ---------------------------------------------------------------------------------------------------
// Instantiations.

template BsrPattern bsr_pattern_from_dense<float>(int, int, int, const float*);
template BsrPattern bsr_pattern_from_dense<double>(int, int, int, const double*);
template BsrPattern bsr_pattern_from_dense<uint8_t>(int, int, int, const uint8_t*);
template void bsr_from_dense<float>(const BsrPattern&, const float*, float*);
template void bsr_from_dense<double>(const BsrPattern&, const double*, double*);
template void bsr_to_dense<float>(const BsrPattern&, const float*, float*);
template void bsr_to_dense<double>(const BsrPattern&, const double*, double*);
template BsrPattern bsr_from_dense<float>(int, int, int, const float*, std::vector<float>*);
template BsrPattern bsr_from_dense<double>(int, int, int, const double*, std::vector<double>*);
template void bsr_linear_forward_ref_cpu<float>(const BsrPattern&, const float*, const float*, int,
                                                const float*, float*);
template void bsr_linear_forward_ref_cpu<double>(const BsrPattern&, const double*, const double*, int,
                                                 const double*, double*);
template void bsr_linear_backward_input_ref_cpu<float>(const BsrPattern&, const float*, const float*, int,
                                                       float*);
template void bsr_linear_backward_input_ref_cpu<double>(const BsrPattern&, const double*, const double*, int,
                                                        double*);
template void bsr_linear_backward_weight_ref_cpu<float>(const BsrPattern&, const float*, const float*, int,
                                                        float*);
template void bsr_linear_backward_weight_ref_cpu<double>(const BsrPattern&, const double*, const double*,
                                                         int, double*);

}  // namespace sparrow
