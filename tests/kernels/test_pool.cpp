// Tests for pooling over NCHW: max / average / global-average forward and backward against direct
// per-window definitions written here, over awkward shapes in float and double; max-pool backward must
// route each gradient to its window's argmax; each backward is the adjoint of its forward.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/base/error.h"
#include "kernels/pool/pool.h"
#include "tests/kernels/check.h"

namespace sparrow {
namespace {

using test::dot;
using test::expect_close;
using test::random_vector;

// n, c, h, w, k, stride, pad
const Pool2dShape kShapes[] = {
    {1, 1, 4, 4, 2, 2, 0},     {2, 3, 7, 5, 3, 2, 1},  {1, 16, 32, 32, 2, 2, 0}, {3, 5, 11, 13, 3, 1, 1},
    {2, 4, 13, 7, 5, 3, 2},    {4, 17, 8, 8, 2, 2, 0}, {1, 2, 5, 5, 5, 1, 0},    {2, 3, 6, 9, 4, 2, 2},
    {64, 16, 16, 16, 2, 2, 0},  // large enough for the OpenMP path
};

std::string describe(const Pool2dShape& s) {
  return str("n=", s.n, " c=", s.c, " ", s.h, "x", s.w, " k=", s.k, " stride=", s.stride, " pad=", s.pad);
}

template <typename T>
void check_max_pool(const Pool2dShape& s) {
  SCOPED_TRACE(describe(s) + (std::is_same<T, float>::value ? " float" : " double"));
  const int oh = s.oh(), ow = s.ow();
  const int64_t xn = int64_t(s.n) * s.c * s.h * s.w, yn = int64_t(s.n) * s.c * oh * ow;
  const auto x = random_vector<T>(xn, 91);  // continuous values: ties have probability zero
  const auto dy = random_vector<T>(yn, 92);
  std::vector<T> y(static_cast<size_t>(yn)), want(static_cast<size_t>(yn));
  std::vector<int32_t> arg(static_cast<size_t>(yn));
  max_pool2d_forward_cpu<T>(s, x.data(), y.data(), arg.data());
  std::vector<T> dx_want(static_cast<size_t>(xn), T(0));
  for (int64_t pl = 0; pl < int64_t(s.n) * s.c; ++pl)
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        T best = -std::numeric_limits<T>::infinity();
        int64_t best_at = -1;
        for (int iy = oy * s.stride - s.pad; iy < oy * s.stride - s.pad + s.k; ++iy)
          for (int ix = ox * s.stride - s.pad; ix < ox * s.stride - s.pad + s.k; ++ix)
            if (iy >= 0 && iy < s.h && ix >= 0 && ix < s.w &&
                x[size_t(pl * s.h * s.w + iy * s.w + ix)] > best) {
              best = x[size_t(pl * s.h * s.w + iy * s.w + ix)];
              best_at = iy * s.w + ix;
            }
        const size_t o = size_t((pl * oh + oy) * ow + ox);
        want[o] = best;
        EXPECT_EQ(arg[o], best_at) << "argmax at output " << o;
        dx_want[size_t(pl * s.h * s.w + best_at)] += dy[o];  // backward routes to the argmax
      }
  expect_close(y, want, 0.0, 0.0, "max pool forward");
  std::vector<T> dx(static_cast<size_t>(xn), T(5));
  max_pool2d_backward_cpu<T>(s, dy.data(), arg.data(), dx.data());
  expect_close(dx, dx_want, 1e-6, 1e-6, "max pool backward routes to argmax");
}

template <typename T>
void check_avg_pool(const Pool2dShape& s) {
  SCOPED_TRACE(describe(s) + (std::is_same<T, float>::value ? " float" : " double"));
  const int oh = s.oh(), ow = s.ow();
  const int64_t xn = int64_t(s.n) * s.c * s.h * s.w, yn = int64_t(s.n) * s.c * oh * ow;
  const auto x = random_vector<T>(xn, 93);
  const auto dy = random_vector<T>(yn, 94);
  std::vector<T> y(static_cast<size_t>(yn)), want(static_cast<size_t>(yn));
  avg_pool2d_forward_cpu<T>(s, x.data(), y.data());
  for (int64_t pl = 0; pl < int64_t(s.n) * s.c; ++pl)
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        double sum = 0;
        for (int iy = oy * s.stride - s.pad; iy < oy * s.stride - s.pad + s.k; ++iy)
          for (int ix = ox * s.stride - s.pad; ix < ox * s.stride - s.pad + s.k; ++ix)
            if (iy >= 0 && iy < s.h && ix >= 0 && ix < s.w)
              sum += double(x[size_t(pl * s.h * s.w + iy * s.w + ix)]);
        want[size_t((pl * oh + oy) * ow + ox)] = T(sum / (s.k * s.k));  // padding counts in the divisor
      }
  const double tol = std::is_same<T, float>::value ? 1e-6 : 1e-14;
  expect_close(y, want, tol, tol, "avg pool forward");
  // Backward is the adjoint: ⟨avg(x), dy⟩ = ⟨x, dx⟩, and dx must be written (not accumulated).
  std::vector<T> dx(static_cast<size_t>(xn), T(5));
  avg_pool2d_backward_cpu<T>(s, dy.data(), dx.data());
  const double lhs = dot(want.data(), dy.data(), yn), rhs = dot(x.data(), dx.data(), xn);
  EXPECT_NEAR(lhs, rhs, (std::is_same<T, float>::value ? 1e-4 : 1e-11) * (1.0 + std::fabs(lhs)));
}

TEST(Pool, MaxPoolMatchesDefinition) {
  for (const auto& s : kShapes) {
    check_max_pool<float>(s);
    check_max_pool<double>(s);
  }
}

TEST(Pool, AvgPoolMatchesDefinition) {
  for (const auto& s : kShapes) {
    check_avg_pool<float>(s);
    check_avg_pool<double>(s);
  }
}

TEST(Pool, MaxPoolHandExample) {
  // 1×1×3×3, k=2, stride 1: windows pick 5, 6, 8, 9 at flat indices 4, 5, 7, 8.
  const Pool2dShape s{1, 1, 3, 3, 2, 1, 0};
  const float x[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  float y[4];
  int32_t arg[4];
  max_pool2d_forward_cpu<float>(s, x, y, arg);
  const float want[] = {5, 6, 8, 9};
  expect_close(y, want, 4, 0, 0, "max pool 3x3");
  EXPECT_EQ(arg[0], 4);
  EXPECT_EQ(arg[3], 8);
  // Overlapping windows that share an argmax accumulate into it.
  const float x2[] = {0, 0, 0, 0, 9, 0, 0, 0, 0};
  max_pool2d_forward_cpu<float>(s, x2, y, arg);
  const float dy[] = {1, 2, 3, 4};
  float dx[9];
  max_pool2d_backward_cpu<float>(s, dy, arg, dx);
  EXPECT_EQ(dx[4], 10.0f);
  EXPECT_EQ(dx[0], 0.0f);
}

TEST(Pool, MaxPoolPropagatesNaN) {
  const Pool2dShape s{1, 1, 2, 2, 2, 2, 0};
  const float x[] = {1, NAN, 3, 2};
  float y[1];
  int32_t arg[1];
  max_pool2d_forward_cpu<float>(s, x, y, arg);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(arg[0], 1);
}

// The 2×2 stride-2 fast path against the per-window reference on values full of ties, NaNs and
// infinities (ties keep the first element, the first NaN sticks), odd sizes (last row/column dropped)
// included, bit for bit with the same argmax.
TEST(Pool, MaxPool2x2FastPathMatchesReferenceOnTiesAndNaN) {
  const Pool2dShape shapes[] = {{1, 1, 2, 2, 2, 2, 0},  {2, 3, 7, 9, 2, 2, 0},   {3, 5, 33, 31, 2, 2, 0},
                                {1, 2, 1024, 2, 2, 2, 0}, {128, 4, 16, 16, 2, 2, 0}, {1, 1, 3, 3, 2, 2, 0},
                                // VGG's 32-, 16- and 8-wide maps on the AVX-512 path (16 outputs from 64
                                // inputs), non-square and 2-wide planes, and planes of fewer than 16 outputs
                                // (4×4, 2×2) that keep the loop.
                                {2, 3, 32, 32, 2, 2, 0},  {5, 7, 8, 8, 2, 2, 0},    {9, 6, 4, 4, 2, 2, 0},
                                {3, 4, 16, 8, 2, 2, 0},   {4, 8, 2, 2, 2, 2, 0},    {2, 3, 64, 2, 2, 2, 0}};
  const float pool[] = {0.0f, 1.0f, 1.0f, -2.0f, NAN, INFINITY, -INFINITY, 3.0f};
  for (const auto& s : shapes) {
    SCOPED_TRACE(describe(s));
    const int64_t xn = int64_t(s.n) * s.c * s.h * s.w, yn = int64_t(s.n) * s.c * s.oh() * s.ow();
    std::vector<float> x(static_cast<size_t>(xn));
    uint32_t r = 12345;
    for (auto& v : x) {
      r = r * 1664525u + 1013904223u;
      v = pool[(r >> 24) % 8];
    }
    std::vector<float> y(static_cast<size_t>(yn)), y_ref(static_cast<size_t>(yn));
    std::vector<int32_t> a(static_cast<size_t>(yn)), a_ref(static_cast<size_t>(yn));
    max_pool2d_forward_cpu<float>(s, x.data(), y.data(), a.data());
    max_pool2d_forward_ref_cpu<float>(s, x.data(), y_ref.data(), a_ref.data());
    for (int64_t o = 0; o < yn; ++o) {
      ASSERT_EQ(a[size_t(o)], a_ref[size_t(o)]) << "argmax at output " << o;
      const float u = y[size_t(o)], v = y_ref[size_t(o)];
      ASSERT_TRUE((std::isnan(u) && std::isnan(v)) || u == v) << "output " << o << ": " << u << " vs " << v;
    }
    std::vector<double> xd(x.begin(), x.end()), yd(static_cast<size_t>(yn)), yd_ref(static_cast<size_t>(yn));
    max_pool2d_forward_cpu<double>(s, xd.data(), yd.data(), a.data());
    max_pool2d_forward_ref_cpu<double>(s, xd.data(), yd_ref.data(), a_ref.data());
    EXPECT_EQ(a, a_ref) << "double argmax";
  }
  // Hand example of the rules: window [1, NaN; NaN, 5] picks its first NaN (flat index 1), window
  // [2, 2; 2, 2] its first 2 (flat index 2).
  const Pool2dShape s{1, 1, 2, 4, 2, 2, 0};
  const float x[] = {1, NAN, 2, 2, NAN, 5, 2, 2};
  float y[2];
  int32_t arg[2];
  max_pool2d_forward_cpu<float>(s, x, y, arg);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(arg[0], 1);
  EXPECT_EQ(y[1], 2.0f);
  EXPECT_EQ(arg[1], 2);
}

TEST(Pool, GlobalAvgPool) {
  for (const auto& dims : {std::vector<int>{1, 1, 1}, {2, 3, 5}, {3, 17, 49}, {128, 64, 64}}) {
    const int n = dims[0], c = dims[1], hw = dims[2];
    SCOPED_TRACE(str("n=", n, " c=", c, " hw=", hw));
    const auto x = random_vector<double>(int64_t(n) * c * hw, 95);
    const auto dy = random_vector<double>(int64_t(n) * c, 96);
    std::vector<double> y(size_t(n) * c), want(size_t(n) * c), dx(size_t(n) * c * hw, 7.0),
        dx_want(dx.size());
    global_avg_pool_forward_cpu<double>(n, c, hw, x.data(), y.data());
    global_avg_pool_backward_cpu<double>(n, c, hw, dy.data(), dx.data());
    for (int64_t pl = 0; pl < int64_t(n) * c; ++pl) {
      double sum = 0;
      for (int i = 0; i < hw; ++i) sum += x[size_t(pl * hw + i)];
      want[size_t(pl)] = sum / hw;
      for (int i = 0; i < hw; ++i) dx_want[size_t(pl * hw + i)] = dy[size_t(pl)] / hw;
    }
    expect_close(y, want, 1e-14, 1e-12, "global avg forward");
    expect_close(dx, dx_want, 1e-14, 1e-12, "global avg backward");
    std::vector<float> xf(x.begin(), x.end()), yf(y.size()), wantf(want.begin(), want.end());
    global_avg_pool_forward_cpu<float>(n, c, hw, xf.data(), yf.data());
    expect_close(yf, wantf, 1e-6, 1e-5, "global avg forward float");
  }
}

TEST(Pool, RejectsBadShapes) {
  float v = 0;
  int32_t a = 0;
  EXPECT_THROW(max_pool2d_forward_cpu<float>({1, 1, 2, 2, 5, 1, 0}, &v, &v, &a), Error);
  EXPECT_THROW(avg_pool2d_forward_cpu<float>({1, 1, 2, 2, 2, 0, 0}, &v, &v), Error);
  EXPECT_THROW(global_avg_pool_forward_cpu<float>(1, 0, 4, &v, &v), Error);
}

}  // namespace
}  // namespace sparrow
