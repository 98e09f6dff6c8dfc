// Tests for the elementwise kernels: CPU ops against their one-line definitions over odd and large sizes
// (float and double), the option-A shortcut against its slicing definition and its adjoint, and CUDA
// parity (device results against the CPU ones; skipped without a device).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/base/device.h"
#include "engine/base/error.h"
#include "kernels/elementwise/elementwise.h"
#include "tests/kernels/check.h"
#if SPARROW_HAS_CUDA
#include <cuda_runtime.h>

#include "engine/base/cuda_check.h"
#endif

namespace sparrow {
namespace {

using test::dot;
using test::expect_close;
using test::random_vector;

// Odd sizes, and one above the OpenMP threshold.
const int64_t kSizes[] = {1, 5, 7, 13, 1000, 100003};

template <typename T>
void check_flat_ops(int64_t n) {
  SCOPED_TRACE(str("n=", n, std::is_same<T, float>::value ? " float" : " double"));
  const auto a = random_vector<T>(n, 101), b = random_vector<T>(n, 102);
  const size_t sz = static_cast<size_t>(n);
  std::vector<T> y(sz, T(9)), want(sz);

  fill_cpu<T>(n, T(2.5), y.data());
  std::fill(want.begin(), want.end(), T(2.5));
  expect_close(y, want, 0, 0, "fill");

  relu_forward_cpu<T>(n, a.data(), y.data());
  for (size_t i = 0; i < sz; ++i) want[i] = a[i] > 0 ? a[i] : T(0);
  expect_close(y, want, 0, 0, "relu forward");

  std::vector<T> dx(sz, T(9)), relu_y = want;
  relu_backward_cpu<T>(n, relu_y.data(), b.data(), dx.data());
  for (size_t i = 0; i < sz; ++i) want[i] = relu_y[i] > 0 ? b[i] : T(0);
  if (std::any_of(want.begin(), want.end(), [](T v) { return v != 0; }))
    expect_close(dx, want, 0, 0, "relu backward");
  else
    EXPECT_TRUE(std::all_of(dx.begin(), dx.end(), [](T v) { return v == 0; })) << "relu backward";

  add_cpu<T>(n, a.data(), b.data(), y.data());
  for (size_t i = 0; i < sz; ++i) want[i] = a[i] + b[i];
  expect_close(y, want, 0, 0, "add");

  mul_cpu<T>(n, a.data(), b.data(), y.data());
  for (size_t i = 0; i < sz; ++i) want[i] = a[i] * b[i];
  expect_close(y, want, 0, 0, "mul");

  y = b;
  axpy_cpu<T>(n, T(-0.75), a.data(), y.data());
  for (size_t i = 0; i < sz; ++i) want[i] = T(-0.75) * a[i] + b[i];
  expect_close(y, want, 1e-7, 1e-6, "axpy");  // FMA contraction may round once instead of twice

  scale_cpu<T>(n, T(3), a.data(), y.data());
  for (size_t i = 0; i < sz; ++i) want[i] = T(3) * a[i];
  expect_close(y, want, 0, 0, "scale");
}

TEST(Elementwise, FlatOpsMatchDefinitions) {
  for (int64_t n : kSizes) {
    check_flat_ops<float>(n);
    check_flat_ops<double>(n);
  }
}

TEST(Elementwise, ReluPassesNaNAndZeroLengthIsANoOp) {
  const float x[] = {NAN, -1.0f, 2.0f};
  float y[3];
  relu_forward_cpu<float>(3, x, y);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(y[1], 0.0f);
  EXPECT_EQ(y[2], 2.0f);
  relu_forward_cpu<float>(0, nullptr, nullptr);
  EXPECT_THROW(fill_cpu<float>(-1, 0.0f, y), Error);
}

struct ShortcutCase {
  int n, cin, h, w, cout, stride;
};

const ShortcutCase kShortcuts[] = {
    {2, 16, 32, 32, 32, 2},   // ResNet stage 1 → 2
    {1, 32, 16, 16, 64, 2},   // stage 2 → 3, batch 1
    {3, 16, 8, 8, 16, 1},     // identity
    {2, 3, 7, 5, 8, 2},       // odd pad (2 in front, 3 behind), odd spatial: OH = ceil(7/2) = 4
    {2, 9, 5, 6, 4, 1},       // crop (keep channels 2..5)
    {1, 5, 11, 13, 5, 3},     // stride 3
    {64, 16, 32, 32, 32, 2},  // large enough for the OpenMP path
};

// y[n, co, oy, ox] by the slicing definition: x[:, :, ::s, ::s] then channel pad (front (Cout−Cin)/2) or
// crop.
template <typename T>
std::vector<T> shortcut_reference(const ShortcutCase& c, const std::vector<T>& x) {
  const int oh = (c.h + c.stride - 1) / c.stride, ow = (c.w + c.stride - 1) / c.stride;
  std::vector<T> y(size_t(c.n) * c.cout * oh * ow, T(0));
  for (int n = 0; n < c.n; ++n)
    for (int co = 0; co < c.cout; ++co) {
      const int ci = c.cout >= c.cin ? co - (c.cout - c.cin) / 2 : co + (c.cin - c.cout) / 2;
      if (ci < 0 || ci >= c.cin) continue;
      for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox)
          y[size_t(((int64_t(n) * c.cout + co) * oh + oy) * ow + ox)] =
              x[size_t(((int64_t(n) * c.cin + ci) * c.h + oy * c.stride) * c.w + ox * c.stride)];
    }
  return y;
}

template <typename T>
void check_shortcut(const ShortcutCase& c) {
  SCOPED_TRACE(str("n=", c.n, " cin=", c.cin, " ", c.h, "x", c.w, " cout=", c.cout, " stride=", c.stride,
                   std::is_same<T, float>::value ? " float" : " double"));
  const int oh = (c.h + c.stride - 1) / c.stride, ow = (c.w + c.stride - 1) / c.stride;
  const int64_t xn = int64_t(c.n) * c.cin * c.h * c.w, yn = int64_t(c.n) * c.cout * oh * ow;
  const auto x = random_vector<T>(xn, 111);
  const auto dy = random_vector<T>(yn, 112);
  std::vector<T> y(static_cast<size_t>(yn), T(4)), dx(static_cast<size_t>(xn), T(4));
  shortcut_a_forward_cpu<T>(c.n, c.cin, c.h, c.w, c.cout, c.stride, x.data(), y.data());
  expect_close(y, shortcut_reference(c, x), 0, 0, "shortcut forward");
  shortcut_a_backward_cpu<T>(c.n, c.cin, c.h, c.w, c.cout, c.stride, dy.data(), dx.data());
  const double lhs = dot(y.data(), dy.data(), yn), rhs = dot(x.data(), dx.data(), xn);
  EXPECT_NEAR(lhs, rhs, 1e-9 * (1.0 + std::fabs(lhs))) << "shortcut backward is the adjoint";
}

TEST(Elementwise, ShortcutAMatchesSlicingAndAdjoint) {
  for (const auto& c : kShortcuts) {
    check_shortcut<float>(c);
    check_shortcut<double>(c);
  }
}

TEST(Elementwise, ShortcutAHandExample) {
  // 1×1×2×2 → 1×3×1×1 with stride 2: channel pad 1 in front, 1 behind; keeps x[0,0,0,0].
  const float x[] = {5, 6, 7, 8};
  float y[3] = {9, 9, 9};
  shortcut_a_forward_cpu<float>(1, 1, 2, 2, 3, 2, x, y);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], 5.0f);
  EXPECT_EQ(y[2], 0.0f);
  const float dy[] = {1, 2, 3};
  float dx[4] = {9, 9, 9, 9};
  shortcut_a_backward_cpu<float>(1, 1, 2, 2, 3, 2, dy, dx);
  EXPECT_EQ(dx[0], 2.0f);
  EXPECT_EQ(dx[1], 0.0f);
  EXPECT_EQ(dx[3], 0.0f);
}

#if SPARROW_HAS_CUDA
// A device copy of a host vector, freed on scope exit.
struct DeviceBuffer {
  float* p = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(const std::vector<float>& host) : n(host.size()) {
    SPARROW_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(float)));
    SPARROW_CUDA_CHECK(cudaMemcpy(p, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(p); }
  std::vector<float> to_host() const {
    std::vector<float> host(n);
    SPARROW_CUDA_CHECK(cudaDeviceSynchronize());
    SPARROW_CUDA_CHECK(cudaMemcpy(host.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
  }
};
#endif

TEST(ElementwiseCuda, MatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << cuda_unavailable_reason();
#if SPARROW_HAS_CUDA
  // Sizes straddle a block (256) and the grid cap (4096 blocks), so the grid-stride loop runs.
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(257), int64_t(1000), int64_t(4096) * 256 * 2 + 3}) {
    SCOPED_TRACE(str("n=", n));
    const auto a = random_vector<float>(n, 121), b = random_vector<float>(n, 122);
    std::vector<float> out(static_cast<size_t>(n), 9.0f), want(static_cast<size_t>(n));
    DeviceBuffer da(a), db(b), dout(out);

    fill_cuda(n, 2.5f, dout.p);
    fill_cpu<float>(n, 2.5f, want.data());
    expect_close(dout.to_host(), want, 0, 0, "fill_cuda");

    relu_forward_cuda(n, da.p, dout.p);
    relu_forward_cpu<float>(n, a.data(), want.data());
    expect_close(dout.to_host(), want, 0, 0, "relu_forward_cuda");

    DeviceBuffer dy(want);  // relu output, as the backward expects
    relu_backward_cuda(n, dy.p, db.p, dout.p);
    std::vector<float> want_bwd(static_cast<size_t>(n));
    relu_backward_cpu<float>(n, want.data(), b.data(), want_bwd.data());
    if (std::any_of(want_bwd.begin(), want_bwd.end(), [](float v) { return v != 0; }))
      expect_close(dout.to_host(), want_bwd, 0, 0, "relu_backward_cuda");

    add_cuda(n, da.p, db.p, dout.p);
    add_cpu<float>(n, a.data(), b.data(), want.data());
    expect_close(dout.to_host(), want, 0, 0, "add_cuda");

    mul_cuda(n, da.p, db.p, dout.p);
    mul_cpu<float>(n, a.data(), b.data(), want.data());
    expect_close(dout.to_host(), want, 0, 0, "mul_cuda");

    DeviceBuffer dacc(b);
    axpy_cuda(n, -0.75f, da.p, dacc.p);
    want = b;
    axpy_cpu<float>(n, -0.75f, a.data(), want.data());
    expect_close(dacc.to_host(), want, 1e-7, 1e-6, "axpy_cuda");

    scale_cuda(n, 3.0f, da.p, dout.p);
    scale_cpu<float>(n, 3.0f, a.data(), want.data());
    expect_close(dout.to_host(), want, 0, 0, "scale_cuda");
  }
#endif
}

}  // namespace
}  // namespace sparrow
