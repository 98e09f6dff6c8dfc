// Parity tests for the dense GEMM: gemm_cpu (CBLAS) against gemm_ref_cpu over all four transpose
// combinations, awkward sizes, padded leading dimensions and alpha/beta cases; plus a hand-computed case.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/gemm/gemm.h"
#include "tests/kernels/check.h"

namespace sparrow {
namespace {

using test::expect_close;
using test::random_vector;

struct GemmCase {
  int m, n, k;
  bool ta, tb;
  double alpha, beta;
  int pad;  // extra elements per row of every operand (leading dimension > logical width)
};

const GemmCase kCases[] = {
    {1, 1, 1, false, false, 1.0, 0.0, 0},    {5, 7, 11, false, false, 1.0, 0.0, 0},
    {5, 7, 11, true, false, 1.0, 0.0, 0},    {5, 7, 11, false, true, 1.0, 0.0, 0},
    {5, 7, 11, true, true, 1.0, 0.0, 0},     {13, 1, 7, false, false, 0.5, 1.0, 3},
    {1, 13, 7, true, true, -2.0, 0.25, 1},   {16, 144, 17, false, true, 1.0, 1.0, 0},
    {64, 65, 63, true, false, 1.5, -1.0, 5}, {33, 31, 129, false, false, 1.0, 0.0, 2},
    {7, 5, 1, true, true, 1.0, 0.0, 0},      {128, 96, 80, false, false, 1.0, 0.5, 0},
    // Large enough for the library's packed, cache-blocked kernels, with edges in every dimension.
    {300, 257, 515, false, true, 1.0, 0.0, 1}, {517, 130, 200, true, false, 1.0, 0.5, 0},
};

template <typename T>
void run_case(const GemmCase& c) {
  const int a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
  const int b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
  const int lda = a_cols + c.pad, ldb = b_cols + c.pad, ldc = c.n + c.pad;
  auto a = random_vector<T>(int64_t(a_rows) * lda, 1);
  auto b = random_vector<T>(int64_t(b_rows) * ldb, 2);
  auto c0 = random_vector<T>(int64_t(c.m) * ldc, 3);
  auto got = c0, ref = c0;
  gemm_cpu<T>(c.ta, c.tb, c.m, c.n, c.k, T(c.alpha), a.data(), lda, b.data(), ldb, T(c.beta), got.data(),
              ldc);
  gemm_ref_cpu<T>(c.ta, c.tb, c.m, c.n, c.k, T(c.alpha), a.data(), lda, b.data(), ldb, T(c.beta), ref.data(),
                  ldc);
  // The padding columns of C must be left alone, so compare the whole buffer.
  const double tol = std::is_same<T, float>::value ? 1e-5 * std::sqrt(double(c.k)) * 4 : 1e-13 * c.k;
  SCOPED_TRACE(::testing::Message() << "m=" << c.m << " n=" << c.n << " k=" << c.k << " ta=" << c.ta
                                    << " tb=" << c.tb << " alpha=" << c.alpha << " beta=" << c.beta
                                    << " pad=" << c.pad);
  expect_close(got, ref, tol, tol, "gemm_cpu vs gemm_ref_cpu");
}

TEST(Gemm, FloatMatchesReference) {
  for (const auto& c : kCases) run_case<float>(c);
}

TEST(Gemm, DoubleMatchesReference) {
  for (const auto& c : kCases) run_case<double>(c);
}

TEST(Gemm, HandComputed2x2) {
  // [1 2; 3 4]·[5 6; 7 8] = [19 22; 43 50]; with beta = 1 on C = ones: +1.
  const double a[] = {1, 2, 3, 4}, b[] = {5, 6, 7, 8}, want[] = {20, 23, 44, 51};
  for (int impl = 0; impl < 2; ++impl) {
    double c[] = {1, 1, 1, 1};
    (impl ? gemm_ref_cpu<double> : gemm_cpu<double>)(false, false, 2, 2, 2, 1.0, a, 2, b, 2, 1.0, c, 2);
    expect_close(c, want, 4, 0, 0, impl ? "gemm_ref_cpu 2x2" : "gemm_cpu 2x2");
  }
}

TEST(Gemm, BetaZeroIgnoresNaNInC) {
  const float a[] = {1, 2}, b[] = {3, 4};
  float c[] = {NAN};
  gemm_cpu<float>(false, false, 1, 1, 2, 1.0f, a, 2, b, 1, 0.0f, c, 1);
  EXPECT_EQ(c[0], 11.0f);
}

TEST(Gemm, KZeroScalesC) {
  float c[] = {2, NAN, 4, 8};
  gemm_cpu<float>(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.5f, c, 2);
  EXPECT_EQ(c[0], 1.0f);
  EXPECT_EQ(c[2], 2.0f);
  float z[] = {NAN, NAN};
  gemm_cpu<float>(false, false, 1, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.0f, z, 2);
  EXPECT_EQ(z[0], 0.0f);
  EXPECT_EQ(z[1], 0.0f);
}

TEST(Gemm, InsideParallelRegionMatchesReference) {
  // Every thread runs its own GEMM at once (the conv pattern); results must match the serial oracle.
  const int m = 16, n = 96, k = 40;
  auto a = random_vector<float>(int64_t(m) * k, 4);
  auto b = random_vector<float>(int64_t(k) * n, 5);
  const int slots = 4;
  std::vector<float> got(size_t(slots) * m * n), ref(size_t(m) * n);
  std::vector<int> icv_before(slots), icv_after(slots);
  gemm_ref_cpu<float>(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, ref.data(), n);
#pragma omp parallel for num_threads(2)
  for (int s = 0; s < slots; ++s) {
    icv_before[s] = omp_get_max_threads();
    gemm_cpu<float>(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, got.data() + s * m * n, n);
    icv_after[s] = omp_get_max_threads();
  }
  for (int s = 0; s < slots; ++s) {
    expect_close(got.data() + s * m * n, ref.data(), m * n, 1e-5, 1e-5, "gemm_cpu in a parallel region");
    EXPECT_EQ(icv_after[s], icv_before[s]) << "gemm_cpu must restore the thread's nthreads ICV";
  }
}

// The library's constructor must have seen the kernel family sparrow named (a library loaded before main, as
// a linked one is, would report its own fallback), and the environment must be left as the process got it.
TEST(Gemm, BlasUsesTheKernelFamilyOfTheCpu) {
  const char* before = std::getenv("OPENBLAS_CORETYPE");
  const std::string before_value = before ? before : "";
  const std::string& info = blas_info();
  const char* after = std::getenv("OPENBLAS_CORETYPE");
  EXPECT_EQ(before != nullptr, after != nullptr) << "OPENBLAS_CORETYPE left changed by loading the BLAS";
  if (before && after) {
    EXPECT_EQ(before_value, after);
  }
  if (info.find("chosen by sparrow") == std::string::npos)
    GTEST_SKIP() << "sparrow did not name the kernels here: " << info;
  const char* family = blas_kernel_family_for_cpu();
  ASSERT_NE(family, nullptr) << info;
  EXPECT_NE(info.find(std::string(" ") + family + " "), std::string::npos)
      << "asked OpenBLAS for " << family << ", it runs: " << info;
}

// The shared helper itself: it must fail on a mismatch, on NaN and on an all-zero reference.
TEST(CheckHelper, FailsWhenItShould) {
  static const double ref[] = {1.0, 2.0, 3.0}, off[] = {1.0, 2.5, 3.0}, nan_got[] = {1.0, NAN, 3.0};
  static const float zeros[] = {0.0f, 0.0f};
  EXPECT_NONFATAL_FAILURE(test::expect_close(off, ref, 3, 1e-3, 1e-3, "mismatch"), "worst index 1");
  EXPECT_NONFATAL_FAILURE(test::expect_close(nan_got, ref, 3, 1e-3, 1e-3, "nan"), "worst index 1");
  EXPECT_NONFATAL_FAILURE(test::expect_close(zeros, zeros, 2, 1e-3, 1e-3, "zeros"), "all zeros");
  EXPECT_TRUE(test::expect_close(ref, ref, 3, 0.0, 0.0, "identical"));
}

}  // namespace
}  // namespace sparrow
