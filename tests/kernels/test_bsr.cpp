// Parity tests for the block-sparse (BSR) linear passes, W Out×In and X Rows×In row-major: pattern and
// format round trip, then forward / input gradient / block-SDDMM weight gradient (reference loops and every
// compiled micro-kernel family) against the dense GEMM reference on the decompressed weight; the CUDA
// kernels run on CPU threads through a WMMA/cp.async stand-in (every build), and on the device per
// precision against the CPU (skipped without one).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/base/device.h"
#include "engine/base/error.h"
#include "kernels/gemm/gemm.h"
#include "kernels/sparse/bsr.h"
#include "tests/kernels/check.h"

#if SPARROW_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace sparrow {
namespace {

using test::expect_close;
using test::random_vector;

// A random block mask at `density`; `holes` empties every third block row and every fourth block column.
std::vector<uint8_t> make_block_mask(int nbr, int nbc, double density, uint32_t seed, bool holes) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<uint8_t> m(size_t(nbr) * nbc);
  for (int bi = 0; bi < nbr; ++bi)
    for (int bj = 0; bj < nbc; ++bj) {
      const bool hole = holes && (bi % 3 == 1 || bj % 4 == 2);
      m[size_t(bi) * nbc + bj] = (density >= 1.0 || u(gen) < density) && !hole ? 1 : 0;
    }
  return m;
}

struct Shape {
  int out, in, rows, block;
  double density;
  bool holes;
};

std::string name(const Shape& s) {
  return str("W ", s.out, "x", s.in, " rows ", s.rows, " block ", s.block, " density ", s.density,
             s.holes ? " (empty block rows/cols)" : "");
}

// One configuration: the pattern, values from a random dense weight, the decompressed weight, and the dense
// references (gemm_ref_cpu, double accumulation) for all three passes.
struct Case {
  Shape s;
  BsrPattern p;
  std::vector<float> values, w_dense, x, dy, bias, y_ref, dx_ref, dvalues_ref;
};

Case make_case(const Shape& s, uint32_t seed) {
  Case c;
  c.s = s;
  const int nbr = (s.out + s.block - 1) / s.block, nbc = (s.in + s.block - 1) / s.block;
  const std::vector<uint8_t> bm = make_block_mask(nbr, nbc, s.density, seed, s.holes);
  c.p = bsr_pattern_from_block_mask(s.out, s.in, s.block, bm.data());
  const std::vector<float> w = random_vector<float>(int64_t(s.out) * s.in, seed + 1);
  c.values.assign(size_t(c.p.value_count()), 0.0f);
  bsr_from_dense(c.p, w.data(), c.values.data());
  c.w_dense.assign(size_t(s.out) * s.in, 0.0f);
  bsr_to_dense(c.p, c.values.data(), c.w_dense.data());
  c.x = random_vector<float>(int64_t(s.rows) * s.in, seed + 2);
  c.dy = random_vector<float>(int64_t(s.rows) * s.out, seed + 3);
  c.bias = random_vector<float>(s.out, seed + 4);
  c.y_ref.assign(size_t(s.rows) * s.out, 0.0f);
  gemm_ref_cpu<float>(false, true, s.rows, s.out, s.in, 1.0f, c.x.data(), s.in, c.w_dense.data(), s.in, 0.0f,
                      c.y_ref.data(), s.out);
  for (int r = 0; r < s.rows; ++r)
    for (int o = 0; o < s.out; ++o) c.y_ref[size_t(r) * s.out + o] += c.bias[size_t(o)];
  c.dx_ref.assign(size_t(s.rows) * s.in, 0.0f);
  gemm_ref_cpu<float>(false, false, s.rows, s.in, s.out, 1.0f, c.dy.data(), s.out, c.w_dense.data(), s.in, 0.0f,
                      c.dx_ref.data(), s.in);
  std::vector<float> dw(size_t(s.out) * s.in, 0.0f);
  gemm_ref_cpu<float>(true, false, s.out, s.in, s.rows, 1.0f, c.dy.data(), s.out, c.x.data(), s.in, 0.0f,
                      dw.data(), s.in);
  c.dvalues_ref.assign(size_t(c.p.value_count()), 0.0f);
  bsr_from_dense(c.p, dw.data(), c.dvalues_ref.data());  // the dense gradient at the kept blocks
  return c;
}

// got vs ref; an all-zero reference (nothing kept reaches it) must be matched exactly.
void expect_match(const std::vector<float>& got, const std::vector<float>& ref, double atol, double rtol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  if (ref.empty()) return;
  if (std::all_of(ref.begin(), ref.end(), [](float e) { return e == 0.0f; })) {
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i] != 0.0f) {
        ADD_FAILURE() << what << ": reference all zero but element " << i << " = " << got[i];
        return;
      }
    return;
  }
  expect_close(got, ref, atol, rtol, what.c_str());
}

// The padding entries of edge blocks in a weight gradient must be exactly zero.
void expect_zero_padding(const BsrPattern& p, const std::vector<float>& dv, const std::string& what) {
  const int b = p.block;
  for (int bi = 0; bi < p.block_rows(); ++bi)
    for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) {
      const int re = bsr_extent(p.out, bi, b), ce = bsr_extent(p.in, p.col_idx[size_t(k)], b);
      for (int r = 0; r < b; ++r)
        for (int c = 0; c < b; ++c)
          if ((r >= re || c >= ce) && dv[size_t(bsr_value_offset(k, b, r, c))] != 0.0f) {
            ADD_FAILURE() << what << ": padding entry (" << r << ", " << c << ") of block " << k << " is "
                          << dv[size_t(bsr_value_offset(k, b, r, c))];
            return;
          }
    }
}

enum class Path { Ref, Fast };

// Float tolerances: sums of at most a few hundred products of O(1) values.
constexpr double kAtol = 2e-4, kRtol = 1e-4;

void check_case(const Case& c, Path path, BsrIsa isa) {
  const Shape& s = c.s;
  const std::string tag = str(path == Path::Ref ? "ref" : bsr_isa_name(isa), " ", name(s), ": ");
  // Outputs start as NaN: every element must be written (the passes never accumulate into the output).
  const float nan = std::nanf("");
  std::vector<float> y(size_t(s.rows) * s.out, nan), dx(size_t(s.rows) * s.in, nan),
      dv(size_t(c.p.value_count()), nan);
  if (path == Path::Ref) {
    bsr_linear_forward_ref_cpu(c.p, c.values.data(), c.x.data(), s.rows, c.bias.data(), y.data());
    bsr_linear_backward_input_ref_cpu(c.p, c.values.data(), c.dy.data(), s.rows, dx.data());
    bsr_linear_backward_weight_ref_cpu(c.p, c.x.data(), c.dy.data(), s.rows, dv.data());
  } else {
    bsr_linear_forward_cpu(c.p, c.values.data(), c.x.data(), s.rows, c.bias.data(), y.data(), isa);
    bsr_linear_backward_input_cpu(c.p, c.values.data(), c.dy.data(), s.rows, dx.data(), isa);
    bsr_linear_backward_weight_cpu(c.p, c.x.data(), c.dy.data(), s.rows, dv.data(), isa);
  }
  expect_match(y, c.y_ref, kAtol, kRtol, tag + "forward");
  expect_match(dx, c.dx_ref, kAtol, kRtol, tag + "backward input");
  expect_match(dv, c.dvalues_ref, kAtol, kRtol, tag + "backward weight (values)");
  expect_zero_padding(c.p, dv, tag + "backward weight");
  // Without bias the forward is the plain product.
  std::vector<float> y0(y.size(), nan), y0_ref(c.y_ref);
  for (int r = 0; r < s.rows; ++r)
    for (int o = 0; o < s.out; ++o) y0_ref[size_t(r) * s.out + o] -= c.bias[size_t(o)];
  if (path == Path::Ref)
    bsr_linear_forward_ref_cpu<float>(c.p, c.values.data(), c.x.data(), s.rows, nullptr, y0.data());
  else
    bsr_linear_forward_cpu(c.p, c.values.data(), c.x.data(), s.rows, nullptr, y0.data(), isa);
  expect_match(y0, y0_ref, kAtol, kRtol, tag + "forward without bias");
}

std::vector<BsrIsa> compiled_isas() {
  std::vector<BsrIsa> v;
  for (BsrIsa i : {BsrIsa::kAvx512, BsrIsa::kAvx2, BsrIsa::kPortable})
    if (bsr_isa_available(i)) v.push_back(i);
  return v;
}

// The table: M, N, K not multiples of the block, a single row, empty block rows/columns, densities 0 and 1.
std::vector<Shape> shapes() {
  std::vector<Shape> v;
  for (int b : {8, 16, 32}) {
    v.push_back({70, 45, 13, b, 0.5, false});  // the brief's awkward shape
    v.push_back({70, 45, 13, b, 1.0, false});
    v.push_back({70, 45, 13, b, 0.0, false});
    v.push_back({5, 7, 11, b, 1.0, false});    // a single partial block
    v.push_back({96, 200, 37, b, 0.4, true});  // empty block rows and columns
    v.push_back({64, 64, 1, b, 0.6, false});   // batch 1, exact multiples
    v.push_back({33, 100, 29, b, 0.3, false});
    v.push_back({16, 144, 50, b, 1.0, false});  // a ResNet-20 conv GEMM view (16 × 16·3·3)
  }
  return v;
}

TEST(BsrPattern, BuildersAgreeAndTransposeIsConsistent) {
  const int out = 70, in = 45, b = 16, nbr = 5, nbc = 3;
  const std::vector<uint8_t> bm = make_block_mask(nbr, nbc, 0.5, 3, true);
  const BsrPattern a = bsr_pattern_from_block_mask(out, in, b, bm.data());
  ASSERT_EQ(a.block_rows(), nbr);
  ASSERT_EQ(a.block_cols(), nbc);
  // Dense mask: a single nonzero entry anywhere in a block keeps it (here the last valid entry).
  std::vector<float> dm(size_t(out) * in, 0.0f);
  for (int bi = 0; bi < nbr; ++bi)
    for (int bj = 0; bj < nbc; ++bj)
      if (bm[size_t(bi) * nbc + bj]) {
        const int r = bi * b + bsr_extent(out, bi, b) - 1, c = bj * b + bsr_extent(in, bj, b) - 1;
        dm[size_t(r) * in + c] = 1.0f;
      }
  const BsrPattern d = bsr_pattern_from_dense(out, in, b, dm.data());
  EXPECT_EQ(a.row_ptr, d.row_ptr);
  EXPECT_EQ(a.col_idx, d.col_idx);
  const BsrPattern c = bsr_pattern_from_csr(out, in, b, a.row_ptr, a.col_idx);
  EXPECT_EQ(a.col_ptr, c.col_ptr);
  EXPECT_EQ(a.t_row, c.t_row);
  EXPECT_EQ(a.t_block, c.t_block);
  // Holes: block row 1 and 4 and block column 2 are empty.
  EXPECT_EQ(a.row_ptr[2] - a.row_ptr[1], 0);
  EXPECT_EQ(a.row_ptr[5] - a.row_ptr[4], 0);
  EXPECT_EQ(a.col_ptr[3] - a.col_ptr[2], 0);
  // The transposed index lists every block once, by block column, ascending block row.
  std::vector<int32_t> seen(a.t_block);
  std::sort(seen.begin(), seen.end());
  for (int64_t k = 0; k < a.nnzb(); ++k) EXPECT_EQ(seen[size_t(k)], k);
  for (int bj = 0; bj < nbc; ++bj)
    for (int32_t t = a.col_ptr[size_t(bj)]; t < a.col_ptr[size_t(bj) + 1]; ++t) {
      EXPECT_EQ(a.col_idx[size_t(a.t_block[size_t(t)])], bj);
      if (t > a.col_ptr[size_t(bj)]) {
        EXPECT_GT(a.t_row[size_t(t)], a.t_row[size_t(t) - 1]);
      }
    }
  int64_t kept = 0;
  for (uint8_t m : bm) kept += m;
  EXPECT_EQ(a.nnzb(), kept);
  EXPECT_NEAR(a.density(), double(kept) / (nbr * nbc), 1e-12);
  EXPECT_EQ(a.value_count(), kept * b * b);
  EXPECT_NO_THROW(bsr_pattern_validate(a));
}

TEST(BsrPattern, RejectsBadInput) {
  EXPECT_THROW(bsr_pattern_from_csr(32, 32, 16, {0, 1}, {0}), Error);         // row_ptr too short
  EXPECT_THROW(bsr_pattern_from_csr(32, 32, 16, {0, 1, 2}, {0, 2}), Error);   // column outside
  EXPECT_THROW(bsr_pattern_from_csr(32, 32, 16, {0, 2, 2}, {1, 0}), Error);   // not ascending
  EXPECT_THROW(bsr_pattern_from_csr(32, 32, 16, {0, 2, 2}, {1, 1}), Error);   // repeated
  EXPECT_THROW(bsr_pattern_from_csr(32, 32, 16, {0, 1, 3}, {0, 1}), Error);   // row_ptr past col_idx
  EXPECT_THROW(bsr_pattern_from_csr(0, 32, 16, {0}, {}), Error);              // empty shape
  EXPECT_THROW(bsr_pattern_from_csr(32, 32, 0, {0}, {}), Error);              // block 0
  BsrPattern p = bsr_pattern_from_csr(32, 32, 16, {0, 1, 2}, {0, 1});
  p.t_block[0] = 1;  // corrupt the transposed index
  EXPECT_THROW(bsr_pattern_validate(p), Error);
  // Unsupported CPU block size names the size.
  const BsrPattern p12 = bsr_pattern_from_csr(24, 24, 12, {0, 1, 1}, {0});
  std::vector<float> v(size_t(p12.value_count()), 1.0f), x(24, 1.0f), y(24);
  try {
    bsr_linear_forward_cpu(p12, v.data(), x.data(), 1, nullptr, y.data());
    ADD_FAILURE() << "block 12 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("block size 12"), std::string::npos) << e.what();
  }
}

TEST(BsrFormat, RoundTripAndLayout) {
  for (int b : {8, 16, 32, 64}) {
    const int out = 70, in = 45;
    const int nbr = (out + b - 1) / b, nbc = (in + b - 1) / b;
    const std::vector<uint8_t> bm = make_block_mask(nbr, nbc, 0.6, 17, false);
    const BsrPattern p = bsr_pattern_from_block_mask(out, in, b, bm.data());
    const std::vector<float> w = random_vector<float>(int64_t(out) * in, 23);
    std::vector<float> v(size_t(p.value_count()), 5.0f), back(size_t(out) * in, 9.0f);
    bsr_from_dense(p, w.data(), v.data());
    bsr_to_dense(p, v.data(), back.data());
    for (int o = 0; o < out; ++o)
      for (int i = 0; i < in; ++i) {
        const bool kept = bm[size_t(o / b) * nbc + size_t(i / b)] != 0;
        ASSERT_EQ(back[size_t(o) * in + i], kept ? w[size_t(o) * in + i] : 0.0f) << "b " << b << " (" << o << ", " << i << ")";
      }
    // Documented layout: W[bi·b + r][bj·b + c] at k·b² + c·b + r; padding is zero.
    for (int bi = 0; bi < nbr; ++bi)
      for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) {
        const int bj = p.col_idx[size_t(k)];
        for (int r = 0; r < b; ++r)
          for (int c = 0; c < b; ++c) {
            const int o = bi * b + r, i = bj * b + c;
            const float want = (o < out && i < in) ? w[size_t(o) * in + i] : 0.0f;
            ASSERT_EQ(v[size_t(k) * b * b + size_t(c) * b + r], want) << "b " << b;
          }
      }
    // The convenience builder keeps exactly the nonzero blocks of a block-masked weight.
    std::vector<float> vv;
    const BsrPattern q = bsr_from_dense(out, in, b, back.data(), &vv);
    EXPECT_EQ(q.row_ptr, p.row_ptr);
    EXPECT_EQ(q.col_idx, p.col_idx);
    EXPECT_EQ(vv, v);
  }
  // Double precision conversions too.
  const BsrPattern p = bsr_pattern_from_csr(20, 20, 8, {0, 1, 1, 3}, {2, 0, 1});
  const std::vector<double> w = random_vector<double>(400, 4);
  std::vector<double> v(size_t(p.value_count())), back(400);
  bsr_from_dense(p, w.data(), v.data());
  bsr_to_dense(p, v.data(), back.data());
  EXPECT_EQ(back[size_t(16) * 20 + 0], w[size_t(16) * 20 + 0]);  // block (2, 0)
  EXPECT_EQ(back[size_t(0) * 20 + 16], w[size_t(0) * 20 + 16]);  // block (0, 2)
  EXPECT_EQ(back[size_t(8) * 20 + 8], 0.0);                       // block row 1 is empty
}

TEST(BsrCpu, ReferenceMatchesDense) {
  uint32_t seed = 100;
  for (const Shape& s : shapes()) check_case(make_case(s, seed += 10), Path::Ref, BsrIsa::kAuto);
}

TEST(BsrCpu, ReferenceDoubleMatchesDense) {
  const Shape s{70, 45, 13, 16, 0.5, true};
  const int nbr = 5, nbc = 3;
  const std::vector<uint8_t> bm = make_block_mask(nbr, nbc, s.density, 7, s.holes);
  const BsrPattern p = bsr_pattern_from_block_mask(s.out, s.in, s.block, bm.data());
  const std::vector<double> w = random_vector<double>(int64_t(s.out) * s.in, 8);
  std::vector<double> v(size_t(p.value_count())), wd(size_t(s.out) * s.in);
  bsr_from_dense(p, w.data(), v.data());
  bsr_to_dense(p, v.data(), wd.data());
  const std::vector<double> x = random_vector<double>(int64_t(s.rows) * s.in, 9),
                            dy = random_vector<double>(int64_t(s.rows) * s.out, 10);
  std::vector<double> y(size_t(s.rows) * s.out), yr(y.size()), dx(size_t(s.rows) * s.in), dxr(dx.size()),
      dv(v.size()), dvr(v.size()), dw(wd.size());
  bsr_linear_forward_ref_cpu<double>(p, v.data(), x.data(), s.rows, nullptr, y.data());
  gemm_ref_cpu<double>(false, true, s.rows, s.out, s.in, 1.0, x.data(), s.in, wd.data(), s.in, 0.0, yr.data(), s.out);
  bsr_linear_backward_input_ref_cpu<double>(p, v.data(), dy.data(), s.rows, dx.data());
  gemm_ref_cpu<double>(false, false, s.rows, s.in, s.out, 1.0, dy.data(), s.out, wd.data(), s.in, 0.0, dxr.data(), s.in);
  bsr_linear_backward_weight_ref_cpu<double>(p, x.data(), dy.data(), s.rows, dv.data());
  gemm_ref_cpu<double>(true, false, s.out, s.in, s.rows, 1.0, dy.data(), s.out, x.data(), s.in, 0.0, dw.data(), s.in);
  bsr_from_dense(p, dw.data(), dvr.data());
  expect_close(y, yr, 1e-12, 1e-12, "double forward");
  expect_close(dx, dxr, 1e-12, 1e-12, "double backward input");
  expect_close(dv, dvr, 1e-12, 1e-12, "double backward weight");
}

TEST(BsrCpu, FastMatchesDenseEveryIsa) {
  const std::vector<BsrIsa> isas = compiled_isas();
  ASSERT_FALSE(isas.empty());
  uint32_t seed = 100;
  for (const Shape& s : shapes()) {
    const Case c = make_case(s, seed += 10);
    for (BsrIsa isa : isas) check_case(c, Path::Fast, isa);
    check_case(c, Path::Fast, BsrIsa::kAuto);
  }
}

// Larger shapes that exercise several row chunks and block-column groups per thread, the row remainder
// tiles, and the weight gradient's row split into per-thread partial sums (few blocks, many rows), with
// one and two threads.
TEST(BsrCpu, FastMatchesDenseLargeAndThreaded) {
  const std::vector<Shape> big = {
      {256, 320, 301, 16, 0.3, true},
      {192, 1000, 203, 32, 0.25, false},
      {30, 2000, 200, 32, 0.1, false},   // ~6 blocks, 200 rows: the SDDMM row split
      {256, 250, 1001, 16, 0.3, false},  // many blocks sharing x columns: the SDDMM row split, 3 chunks a range
      {40, 1500, 257, 16, 0.05, false},
      {100, 300, 150, 8, 0.5, true},
      {512, 512, 70, 32, 0.5, false},    // > 64 Ki transposed values: the parallel block transpose
      {1100, 24, 4100, 16, 0.5, false},  // forward output > 16 MiB: non-temporal stores (unaligned rows too)
      {24, 1100, 4100, 32, 0.5, false},  // input-gradient output > 16 MiB
      // Many blocks per segment: SDDMM row chunks longer than the L2 budget allows (the blocks' sums set
      // the length), several a task; with two threads split by blocks (the first) and by rows (the second).
      {512, 512, 1000, 16, 0.9, false},
      {128, 1024, 1200, 32, 0.9, false},
  };
  const int saved = omp_get_max_threads();
  uint32_t seed = 900;
  for (const Shape& s : big) {
    const Case c = make_case(s, seed += 10);
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      for (BsrIsa isa : compiled_isas()) check_case(c, Path::Fast, isa);
    }
  }
  omp_set_num_threads(saved);
}

// Called inside a parallel region, the kernels' own region gets a team of one while omp_get_max_threads()
// still says 2: the work is split for two threads, and the one thread must run every share.
TEST(BsrCpu, FastMatchesDenseInsideAParallelRegion) {
  const int saved_threads = omp_get_max_threads(), saved_levels = omp_get_max_active_levels();
  omp_set_num_threads(2);
  omp_set_max_active_levels(1);
  const Case c = make_case({96, 200, 300, 16, 0.4, false}, 950);
#pragma omp parallel num_threads(2)
  {
#pragma omp master
    check_case(c, Path::Fast, bsr_isa_default());
  }
  omp_set_max_active_levels(saved_levels);
  omp_set_num_threads(saved_threads);
}

TEST(BsrCpu, ZeroRowsWritesNothingAndEmptyGradient) {
  const BsrPattern p = bsr_pattern_from_csr(20, 20, 8, {0, 1, 1, 3}, {2, 0, 1});
  std::vector<float> v(size_t(p.value_count()), 1.0f), dv(v.size(), 7.0f);
  bsr_linear_forward_cpu(p, v.data(), nullptr, 0, nullptr, nullptr);
  bsr_linear_backward_input_cpu(p, v.data(), nullptr, 0, nullptr);
  bsr_linear_backward_weight_cpu(p, nullptr, nullptr, 0, dv.data());
  for (float e : dv) EXPECT_EQ(e, 0.0f);  // an empty batch has a zero gradient
}

// ---------------------------------------------------------------------------------------------------
// The CUDA kernels (kernels/sparse/bsr_cuda.cuh) run on the CPU: each CTA is 128 std::threads meeting at a
// pthread barrier for __syncthreads, cp.async copies at once, and a WMMA stand-in where lane 0 of each
// warp does the warp's 16×16 fragment work (fragments held whole). Inputs are rounded like the device
// types (TF32/FP16: 11 significant bits, BF16: 8), shared memory starts as NaN, so the staging, pipeline,
// edge masking, operand layouts, row splits and reduction are all checked without a GPU.
}  // namespace
}  // namespace sparrow

#include <pthread.h>

#include <cstring>
#include <functional>
#include <thread>

#define SPARROW_BSR_EMULATE 1
#define SPARROW_BSR_NAMESPACE bsr_emu
#define SPARROW_BSR_GLOBAL
#define SPARROW_BSR_DEVICE_INLINE inline
#define SPARROW_BSR_LAUNCH_BOUNDS(n)
#define SPARROW_BSR_SHARED(name) unsigned char* name = ::sparrow::bsr_emu::emu_smem
#define SPARROW_BSR_SYNC() ::sparrow::bsr_emu::emu_sync()
#define SPARROW_BSR_UNROLL

namespace sparrow::bsr_emu {
struct EmuDim {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuDim threadIdx, blockIdx;
inline EmuDim blockDim, gridDim;
inline thread_local unsigned char* emu_smem = nullptr;
inline thread_local pthread_barrier_t* emu_barrier = nullptr;
inline void emu_sync() { pthread_barrier_wait(emu_barrier); }
using std::min;

// x rounded to `bits` significant bits, to nearest.
inline float round_bits(float x, int bits) {
  if (x == 0.0f || !std::isfinite(x)) return x;
  int e = 0;
  const float m = std::frexp(x, &e);
  return std::ldexp(std::nearbyint(std::ldexp(m, bits)), e - bits);
}
// 2-byte stand-ins with the device types' precision (sizeof matters: it sets the 16-byte copy chunks).
struct EmuHalf {
  uint16_t bits = 0;  // IEEE binary16, built from the rounded float
  EmuHalf() = default;
  EmuHalf(float f) {  // NOLINT: implicit like __half
    const float r = round_bits(f, 11);
    uint32_t u;
    std::memcpy(&u, &r, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const int exp = int((u >> 23) & 0xff) - 127 + 15;
    if (r == 0.0f || exp <= 0) {
      bits = uint16_t(sign);  // the test data has no half subnormals
    } else if (exp >= 31 || !std::isfinite(r)) {
      bits = uint16_t(sign | 0x7c00u | (std::isnan(r) ? 0x200u : 0u));
    } else {
      bits = uint16_t(sign | uint32_t(exp) << 10 | ((u >> 13) & 0x3ffu));
    }
  }
  operator float() const {
    const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
    const uint32_t exp = (bits >> 10) & 0x1fu, man = bits & 0x3ffu;
    uint32_t u = sign;
    if (exp == 31) u |= 0x7f800000u | man << 13;
    else if (exp != 0) u |= (exp - 15 + 127) << 23 | man << 13;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
struct EmuBf16 {
  uint16_t bits = 0;  // the top half of the rounded float
  EmuBf16() = default;
  EmuBf16(float f) {  // NOLINT: implicit like __nv_bfloat16
    const float r = round_bits(f, 8);
    uint32_t u;
    std::memcpy(&u, &r, 4);
    bits = uint16_t(u >> 16);
  }
  operator float() const {
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
static_assert(sizeof(EmuHalf) == 2 && sizeof(EmuBf16) == 2, "device-sized stand-ins");
using half_t = EmuHalf;
using bf16_t = EmuBf16;

// cp.async stand-ins: the copy completes at once (one legal schedule of an asynchronous copy).
inline void cp_async16_ca(void* s, const void* g, int n) {
  std::memcpy(s, g, size_t(n));
  std::memset(static_cast<char*>(s) + n, 0, size_t(16 - n));
}
inline void cp_async16_cg(void* s, const void* g) { std::memcpy(s, g, 16); }
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };
template <class T>
struct Storage {
  using type = T;
};
template <>
struct Storage<precision::tf32> {
  using type = float;
};
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols;
  typename Storage<T>::type x[num_elements];
};
inline bool leader() { return threadIdx.x % 32 == 0; }
template <class Use, int M, int N, int K, class T, class Layout, class S>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const S* p, unsigned ldm) {
  if (!leader()) return;
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same<Layout, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
}
template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float v) {
  for (float& e : f.x) e = v;
}
template <int M, int N, int K, class T, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  if (!leader()) return;
  float out[M * N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float acc = c.x[m * N + n];
      for (int k = 0; k < K; ++k) acc += float(a.x[m * K + k]) * float(b.x[k * N + n]);
      out[m * N + n] = acc;
    }
  std::memcpy(d.x, out, sizeof out);
}
template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  if (!leader()) return;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) (layout == mem_row_major ? p[m * ldm + n] : p[n * ldm + m]) = f.x[m * N + n];
}
inline float __float_to_tf32(float f) { return round_bits(f, 11); }
}  // namespace wmma

// Runs `body` as a grid of gx × gy CTAs of kThreads threads (one CTA at a time) with `smem` bytes of
// NaN-filled shared memory.
template <class Body>
void emu_launch(unsigned gx, unsigned gy, size_t smem, Body body);
}  // namespace sparrow::bsr_emu

#include "kernels/sparse/bsr_cuda.cuh"

namespace sparrow::bsr_emu {
// kThreads persistent threads; each CTA is one round between a start and an end barrier.
class EmuPool {
 public:
  EmuPool() {
    pthread_barrier_init(&start_, nullptr, unsigned(kThreads) + 1);
    pthread_barrier_init(&end_, nullptr, unsigned(kThreads) + 1);
    pthread_barrier_init(&cta_, nullptr, unsigned(kThreads));
    for (unsigned t = 0; t < unsigned(kThreads); ++t)
      threads_.emplace_back([this, t] {
        threadIdx = {t, 0, 0};
        emu_barrier = &cta_;
        for (;;) {
          pthread_barrier_wait(&start_);
          if (quit_) break;
          blockIdx = block_;
          emu_smem = smem_;
          (*body_)();
          pthread_barrier_wait(&end_);
        }
      });
  }
  ~EmuPool() {
    quit_ = true;
    pthread_barrier_wait(&start_);
    for (auto& th : threads_) th.join();
    pthread_barrier_destroy(&start_);
    pthread_barrier_destroy(&end_);
    pthread_barrier_destroy(&cta_);
  }
  void run(EmuDim block, unsigned char* smem, const std::function<void()>& body) {
    block_ = block;
    smem_ = smem;
    body_ = &body;
    pthread_barrier_wait(&start_);
    pthread_barrier_wait(&end_);
  }

 private:
  pthread_barrier_t start_, end_, cta_;
  std::vector<std::thread> threads_;
  EmuDim block_;
  unsigned char* smem_ = nullptr;
  const std::function<void()>* body_ = nullptr;
  bool quit_ = false;
};

inline EmuPool& emu_pool() {
  static EmuPool pool;  // one pool for every launch (threads joined at exit)
  return pool;
}

template <class Body>
void emu_launch(unsigned gx, unsigned gy, size_t smem, Body body) {
  EmuPool& pool = emu_pool();
  gridDim = {gx, gy, 1};
  blockDim = {unsigned(kThreads), 1, 1};
  std::vector<float> mem((smem + 3) / 4 + 32);
  unsigned char* base =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(mem.data()) + 127) & ~uintptr_t(127));
  const std::function<void()> fn = body;
  for (unsigned by = 0; by < gy; ++by)
    for (unsigned bx = 0; bx < gx; ++bx) {
      std::fill(mem.begin(), mem.end(), std::nanf(""));
      pool.run({bx, by, 0}, base, fn);
    }
}
}  // namespace sparrow::bsr_emu

namespace sparrow {
namespace {

// The three passes as bsr_cuda.cu launches them, on host arrays of element type T.
template <typename T, int B>
struct EmuPasses {
  static bool vec(int ld, const void* a, const void* b) {
    const int ch = int(16 / sizeof(T));
    return ld % ch == 0 && (reinterpret_cast<uintptr_t>(a) & 15) == 0 && (reinterpret_cast<uintptr_t>(b) & 15) == 0;
  }
  static void forward(const BsrPattern& p, const std::vector<T>& v, const std::vector<T>& x, int rows, const float* bias,
                      float* y, bool allow_vec) {
    using namespace bsr_emu;
    const std::vector<int32_t> order = longest_first(p.row_ptr);
    const SpmmParams prm{x.data(), v.data(), y, bias, p.row_ptr.data(), p.col_idx.data(), nullptr, order.data(),
                         rows, p.in, p.out};
    const unsigned tiles = unsigned((rows + SpmmShape<B>::BM - 1) / SpmmShape<B>::BM);
    if (allow_vec && vec(p.in, x.data(), v.data()))
      emu_launch(unsigned(p.block_rows()), tiles, spmm_smem_bytes<T, B>(), [&] { bsr_spmm_kernel<T, B, false, true>(prm); });
    else
      emu_launch(unsigned(p.block_rows()), tiles, spmm_smem_bytes<T, B>(), [&] { bsr_spmm_kernel<T, B, false, false>(prm); });
  }
  static void backward_input(const BsrPattern& p, const std::vector<T>& v, const std::vector<T>& dy, int rows, float* dx,
                             bool allow_vec) {
    using namespace bsr_emu;
    const std::vector<int32_t> order = longest_first(p.col_ptr);
    const SpmmParams prm{dy.data(), v.data(), dx, nullptr, p.col_ptr.data(), p.t_row.data(), p.t_block.data(),
                         order.data(), rows, p.out, p.in};
    const unsigned tiles = unsigned((rows + SpmmShape<B>::BM - 1) / SpmmShape<B>::BM);
    if (allow_vec && vec(p.out, dy.data(), v.data()))
      emu_launch(unsigned(p.block_cols()), tiles, spmm_smem_bytes<T, B>(), [&] { bsr_spmm_kernel<T, B, true, true>(prm); });
    else
      emu_launch(unsigned(p.block_cols()), tiles, spmm_smem_bytes<T, B>(), [&] { bsr_spmm_kernel<T, B, true, false>(prm); });
  }
  static void backward_weight(const BsrPattern& p, const std::vector<T>& x, const std::vector<T>& dy, int rows,
                              float* dv, int sm_count, bool allow_vec, int* splits_used) {
    using namespace bsr_emu;
    const int64_t n = p.value_count();
    std::vector<int32_t> brow(size_t(p.nnzb()));
    for (int bi = 0; bi < p.block_rows(); ++bi)
      for (int32_t k = p.row_ptr[size_t(bi)]; k < p.row_ptr[size_t(bi) + 1]; ++k) brow[size_t(k)] = bi;
    const SddmmPlan plan = sddmm_plan(rows, p.nnzb(), sm_count, B);
    *splits_used = plan.splits;
    std::vector<float> partial(plan.splits > 1 ? size_t(plan.splits) * size_t(n) : 0, std::nanf(""));
    const SddmmParams prm{x.data(), dy.data(), plan.splits > 1 ? partial.data() : dv, p.col_idx.data(), brow.data(),
                          rows, p.in, p.out, int(p.nnzb()), plan.rows_per_split};
    const bool v = allow_vec && vec(p.in, x.data(), dy.data()) && p.out % int(16 / sizeof(T)) == 0;
    if (v)
      emu_launch(unsigned(p.nnzb()), unsigned(plan.splits), sddmm_smem_bytes<T, B>(), [&] { bsr_sddmm_kernel<T, B, true>(prm); });
    else
      emu_launch(unsigned(p.nnzb()), unsigned(plan.splits), sddmm_smem_bytes<T, B>(), [&] { bsr_sddmm_kernel<T, B, false>(prm); });
    if (plan.splits > 1)
      emu_launch(2, 1, 0, [&] { bsr_reduce_splits_kernel(partial.data(), plan.splits, n, dv); });
  }
};

template <typename T>
std::vector<T> convert(const std::vector<float>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T, int B>
void emulated_case(const Shape& s, uint32_t seed, double u, const char* type, bool allow_vec) {
  const Case c = make_case(s, seed);
  const std::vector<T> v = convert<T>(c.values), x = convert<T>(c.x), dy = convert<T>(c.dy);
  const std::string tag = str("emulated cuda ", type, allow_vec ? "" : " (element loads)", " ", name(s), ": ");
  const float nan = std::nanf("");
  std::vector<float> y(c.y_ref.size(), nan), dx(c.dx_ref.size(), nan), dv(c.dvalues_ref.size(), nan);
  EmuPasses<T, B>::forward(c.p, v, x, s.rows, c.bias.data(), y.data(), allow_vec);
  EmuPasses<T, B>::backward_input(c.p, v, dy, s.rows, dx.data(), allow_vec);
  int splits = 0;
  if (c.p.nnzb() > 0) EmuPasses<T, B>::backward_weight(c.p, x, dy, s.rows, dv.data(), 64, allow_vec, &splits);
  const double rtol = 4 * u;
  expect_match(y, c.y_ref, 4 * u * std::sqrt(double(s.in)), rtol, tag + "forward");
  expect_match(dx, c.dx_ref, 4 * u * std::sqrt(double(s.out)), rtol, tag + "backward input");
  expect_match(dv, c.dvalues_ref, 4 * u * std::sqrt(double(s.rows)), rtol, tag + str("backward weight (", splits, " splits)"));
  expect_zero_padding(c.p, dv, tag + "backward weight");
}

template <int B>
void emulated_block(uint32_t& seed) {
  // fp32 operands round to TF32 inside the kernel; FP16/BF16 operands are rounded on conversion.
  const std::vector<Shape> table = {
      {70, 45, 13, B, 0.6, false},   // odd In: element loads
      {96, 200, 37, B, 0.5, true},   // empty block rows and columns; In a multiple of 8: 16-byte copies
      {40, 64, 600, B, 1.0, false},  // several row tiles; few blocks, 600 rows: the weight gradient splits
      {64, 64, 5, B, 0.0, false},    // nothing kept: bias / zeros
  };
  for (const Shape& s : table) {
    seed += 10;
    emulated_case<float, B>(s, seed, 1.0 / 2048, "tf32", true);
    emulated_case<bsr_emu::half_t, B>(s, seed, 1.0 / 2048, "fp16", true);
    emulated_case<bsr_emu::bf16_t, B>(s, seed, 1.0 / 256, "bf16", true);
  }
  seed += 10;
  emulated_case<float, B>(table[1], seed, 1.0 / 2048, "tf32", false);
}

TEST(BsrCudaEmulated, KernelsMatchCpuOnCpuThreads) {
  uint32_t seed = 700;
  emulated_block<16>(seed);
  emulated_block<32>(seed);
  emulated_block<64>(seed);
}

// ---------------------------------------------------------------------------------------------------
// CUDA parity per precision (against the CPU reference on the same fp32 data).

#if SPARROW_HAS_CUDA
struct DeviceBuf {
  void* p = nullptr;
  explicit DeviceBuf(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(bytes, 4)), cudaSuccess); }
  DeviceBuf(DeviceBuf&& o) noexcept : p(o.p) { o.p = nullptr; }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  ~DeviceBuf() {
    if (p) cudaFree(p);
  }
  float* f() const { return static_cast<float*>(p); }
};

DeviceBuf upload(const std::vector<float>& h) {
  DeviceBuf d(h.size() * 4);
  if (!h.empty()) {
    EXPECT_EQ(cudaMemcpy(d.p, h.data(), h.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  }
  return d;
}
#endif

TEST(BsrCuda, MatchesCpuPerPrecision) {
  if (!cuda_available()) GTEST_SKIP() << cuda_unavailable_reason();
#if SPARROW_HAS_CUDA
  // Tolerance per input precision: u = unit roundoff of the inputs (TF32 and FP16 have 10-bit mantissas,
  // BF16 8 bits); errors grow like √K for K-term sums of O(1) products with random signs.
  struct Prec {
    BsrCudaType type;
    double u;
  };
  const Prec precs[] = {{BsrCudaType::kF32, 1.0 / 2048}, {BsrCudaType::kF16, 1.0 / 2048},
                        {BsrCudaType::kBF16, 1.0 / 256}};
  std::vector<Shape> table;
  for (int b : {16, 32, 64}) {
    table.push_back({70, 45, 13, b, 1.0, false});
    table.push_back({96, 200, 37, b, 0.4, true});
    table.push_back({200, 130, 300, b, 0.5, false});
    table.push_back({64, 64, 1, b, 0.0, false});
    table.push_back({40, 700, 1000, b, 0.2, false});  // many rows, few blocks: the split weight gradient
  }
  uint32_t seed = 500;
  for (const Shape& s : table) {
    const Case c = make_case(s, seed += 10);
    const BsrPatternDevice pd(c.p);
    for (const Prec& pr : precs) {
      const std::string tag = str("cuda ", bsr_cuda_type_name(pr.type), " ", name(s), ": ");
      DeviceBuf dvals = upload(c.values), dx_in = upload(c.x), ddy = upload(c.dy), dbias = upload(c.bias);
      // Inputs in the tested precision (the fp32 buffers are used as they are for kF32).
      DeviceBuf hv(c.values.size() * 4), hx(c.x.size() * 4), hdy(c.dy.size() * 4);
      const void *v = dvals.p, *x = dx_in.p, *dy = ddy.p;
      if (pr.type != BsrCudaType::kF32) {
        bsr_convert_from_float_cuda(dvals.f(), hv.p, int64_t(c.values.size()), pr.type);
        bsr_convert_from_float_cuda(dx_in.f(), hx.p, int64_t(c.x.size()), pr.type);
        bsr_convert_from_float_cuda(ddy.f(), hdy.p, int64_t(c.dy.size()), pr.type);
        v = hv.p;
        x = hx.p;
        dy = hdy.p;
      }
      DeviceBuf y(c.y_ref.size() * 4), dx(c.dx_ref.size() * 4), dv(c.dvalues_ref.size() * 4);
      bsr_linear_forward_cuda(pd, pr.type, v, x, s.rows, dbias.f(), y.f());
      bsr_linear_backward_input_cuda(pd, pr.type, v, dy, s.rows, dx.f());
      bsr_linear_backward_weight_cuda(pd, pr.type, x, dy, s.rows, dv.f());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << tag;
      auto down = [](const DeviceBuf& d, size_t n) {
        std::vector<float> h(n);
        if (n) {
          EXPECT_EQ(cudaMemcpy(h.data(), d.p, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        }
        return h;
      };
      const double rtol = 4 * pr.u;
      expect_match(down(y, c.y_ref.size()), c.y_ref, 4 * pr.u * std::sqrt(double(s.in)), rtol, tag + "forward");
      expect_match(down(dx, c.dx_ref.size()), c.dx_ref, 4 * pr.u * std::sqrt(double(s.out)), rtol,
                   tag + "backward input");
      const std::vector<float> dvh = down(dv, c.dvalues_ref.size());
      expect_match(dvh, c.dvalues_ref, 4 * pr.u * std::sqrt(double(s.rows)), rtol, tag + "backward weight");
      expect_zero_padding(c.p, dvh, tag + "backward weight");
    }
  }
#endif
}

}  // namespace
}  // namespace sparrow
