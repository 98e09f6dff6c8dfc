// The PDD channel-gate kernels: the OpenMP CPU kernel against the plain reference (over awkward shapes, both
// precisions, 1 and 2 threads; bit for bit except double dm), the reference against hand values at PDD's probe points, and
// the CUDA kernels against the reference (skipped without a device).
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "engine/base/device.h"
#include "kernels/gate/gate.h"
#include "tests/kernels/check.h"

#if SPARROW_HAS_CUDA
#include <cuda_runtime.h>
#endif

using namespace sparrow;

namespace {

struct Shape3 {
  int64_t n, c, hw;
};
// Awkward: single image, one channel, HW = 1 (the N×C case), odd sizes, a plane larger than the OpenMP
// threshold, many channels with tiny planes.
const std::vector<Shape3> kShapes = {{1, 1, 1}, {3, 5, 1}, {2, 7, 9}, {5, 3, 49}, {1, 17, 33},
                                     {4, 64, 196}, {2, 3, 40000}, {64, 512, 1}, {7, 129, 13}};
// PDD's probe points and beyond: exactly 0 gives g = ½; |m| ≥ 1 has a zero straight-through slope.
const std::vector<double> kProbe = {-1.5, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.5, -1.0, 1.0, 0.999};

template <typename T>
struct Data {
  std::vector<T> x, m, dy;
};

template <typename T>
Data<T> make(const Shape3& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  Data<T> d;
  const size_t total = size_t(s.n * s.c * s.hw);
  for (size_t i = 0; i < total; ++i) d.x.push_back(T(nd(rng)));
  for (size_t i = 0; i < total; ++i) d.dy.push_back(T(nd(rng)));
  // From −0.5 on, so every shape has a channel with a nonzero slope (−1.5 comes 7th).
  for (int64_t ch = 0; ch < s.c; ++ch) d.m.push_back(T(kProbe[size_t(ch + 1) % kProbe.size()]));
  return d;
}

template <typename T>
void cpu_matches_reference_bit_for_bit() {
  for (int threads : {1, 2})
    for (const Shape3& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << "n=" << s.n << " c=" << s.c << " hw=" << s.hw << " threads=" << threads);
      omp_set_num_threads(threads);
      const Data<T> d = make<T>(s, uint32_t(s.n * 131 + s.c * 7 + s.hw));
      const size_t total = d.x.size();
      std::vector<T> y_ref(total), y(total), dx_ref(total), dx(total), dm_ref(size_t(s.c)), dm(size_t(s.c));
      gate_forward_ref_cpu<T>(s.n, s.c, s.hw, d.x.data(), d.m.data(), y_ref.data());
      gate_forward_cpu<T>(s.n, s.c, s.hw, d.x.data(), d.m.data(), y.data());
      gate_backward_ref_cpu<T>(s.n, s.c, s.hw, d.x.data(), d.m.data(), d.dy.data(), dx_ref.data(), dm_ref.data());
      gate_backward_cpu<T>(s.n, s.c, s.hw, d.x.data(), d.m.data(), d.dy.data(), dx.data(), dm.data());
      EXPECT_EQ(y, y_ref);
      EXPECT_EQ(dx, dx_ref);
      std::vector<T> dm_only(size_t(s.c));  // dm alone gives the same values
      gate_backward_cpu<T>(s.n, s.c, s.hw, d.x.data(), d.m.data(), d.dy.data(), nullptr, dm_only.data());
      if (std::is_same<T, float>::value) {
        // float·float is exact in double, so the double sums agree bit for bit whatever the compiler fuses.
        EXPECT_EQ(dm, dm_ref);
        EXPECT_EQ(dm_only, dm_ref);
      } else {
        // double·double rounds, and the compiler may fuse it into an FMA in one loop and not the other.
        T scale = 0;
        for (T v : dm_ref) scale = std::max(scale, std::fabs(v));
        test::expect_close(dm.data(), dm_ref.data(), s.c, 1e-14 * double(scale), 1e-14, "dm");
        test::expect_close(dm_only.data(), dm_ref.data(), s.c, 1e-14 * double(scale), 1e-14, "dm alone");
      }
    }
  omp_set_num_threads(2);
}

}  // namespace

TEST(GateKernel, CpuMatchesReferenceBitForBitFloat) { cpu_matches_reference_bit_for_bit<float>(); }
TEST(GateKernel, CpuMatchesReferenceBitForBitDouble) { cpu_matches_reference_bit_for_bit<double>(); }

// The reference against §3's formulas written out by hand at one element per channel.
TEST(GateKernel, ReferenceIsTheFormulaAtTheProbePoints) {
  const int64_t c = int64_t(kProbe.size());
  const size_t nc = kProbe.size();
  std::vector<double> x(nc, 2.0), dy(nc, 3.0), y(nc, 0.0), dx(nc, 0.0), dm(nc, 0.0);
  gate_forward_ref_cpu<double>(1, c, 1, x.data(), kProbe.data(), y.data());
  gate_backward_ref_cpu<double>(1, c, 1, x.data(), kProbe.data(), dy.data(), dx.data(), dm.data());
  // g:      0    0    0    ½    1    1    1    0    1    1
  // slope:  0    ½  .999   1  .999   ½    0    0    0  .001   (½·max(0, 2 − 2|m|))
  const std::vector<double> g = {0, 0, 0, 0.5, 1, 1, 1, 0, 1, 1};
  for (int64_t ch = 0; ch < c; ++ch) {
    SCOPED_TRACE(::testing::Message() << "m = " << kProbe[size_t(ch)]);
    const double m = kProbe[size_t(ch)];
    EXPECT_EQ(y[size_t(ch)], 2.0 * g[size_t(ch)]);
    EXPECT_EQ(dx[size_t(ch)], 3.0 * g[size_t(ch)]);
    EXPECT_DOUBLE_EQ(dm[size_t(ch)], 0.5 * std::max(0.0, 2.0 - 2.0 * std::fabs(m)) * 6.0);
  }
  EXPECT_EQ(dm[0], 0.0);
  EXPECT_DOUBLE_EQ(dm[1], 3.0);
  EXPECT_DOUBLE_EQ(dm[3], 6.0);
}

TEST(GateCuda, MatchesCpuReference) {
  if (!cuda_available()) GTEST_SKIP() << cuda_unavailable_reason();
#if SPARROW_HAS_CUDA
  for (const Shape3& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "n=" << s.n << " c=" << s.c << " hw=" << s.hw);
    const Data<float> d = make<float>(s, uint32_t(s.n * 31 + s.c * 3 + s.hw));
    const size_t total = d.x.size(), c = size_t(s.c);
    std::vector<float> y_ref(total), dx_ref(total), dm_ref(c);
    gate_forward_ref_cpu<float>(s.n, s.c, s.hw, d.x.data(), d.m.data(), y_ref.data());
    gate_backward_ref_cpu<float>(s.n, s.c, s.hw, d.x.data(), d.m.data(), d.dy.data(), dx_ref.data(), dm_ref.data());
    float *x, *m, *dy, *y, *dx, *dm;
    ASSERT_EQ(cudaMalloc(&x, total * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dy, total * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&y, total * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dx, total * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&m, c * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dm, c * 4), cudaSuccess);
    cudaMemcpy(x, d.x.data(), total * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dy, d.dy.data(), total * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(m, d.m.data(), c * 4, cudaMemcpyHostToDevice);
    gate_forward_cuda(s.n, s.c, s.hw, x, m, y);
    gate_backward_cuda(s.n, s.c, s.hw, x, m, dy, dx, dm);
    std::vector<float> y_got(total), dx_got(total), dm_got(c);
    ASSERT_EQ(cudaMemcpy(y_got.data(), y, total * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dx_got.data(), dx, total * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dm_got.data(), dm, c * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    // Forward and dx are a single multiply by 0, ½ or 1: exact.
    EXPECT_EQ(y_got, y_ref);
    EXPECT_EQ(dx_got, dx_ref);
    // dm: a double sum in another order, rounded to float once. Channels with a zero slope are exactly 0.
    for (size_t ch = 0; ch < c; ++ch) {
      if (dm_ref[ch] == 0.0f) {
        EXPECT_EQ(dm_got[ch], 0.0f) << "channel " << ch;
      }
    }
    double scale = 0;
    for (float v : dm_ref) scale = std::max(scale, double(std::fabs(v)));
    if (scale > 0) test::expect_close(dm_got.data(), dm_ref.data(), int64_t(c), 1e-6 * scale, 1e-6, "dm");
    for (float* p : {x, m, dy, y, dx, dm}) cudaFree(p);
  }
#endif
}
