// Parity tests for 2-D convolution (NCHW, OIHW): the optimised im2row + GEMM path against the plain-loop
// references over awkward shapes, in float and double, forward and both backwards, at 1 and 3 threads;
// plus independent checks: adjointness in double, im2col/col2im semantics, and shape errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/base/error.h"
#include "kernels/conv/conv.h"
#include "kernels/gemm/gemm.h"
#include "tests/kernels/check.h"

namespace sparrow {
namespace {

using test::dot;
using test::expect_close;
using test::random_vector;

// n, cin, h, w, cout, kh, kw, stride, pad
const Conv2dShape kShapes[] = {
    {1, 3, 7, 5, 16, 3, 3, 1, 1},     // batch 1, stem-like Cin = 3, non-square input
    {2, 16, 8, 8, 16, 3, 3, 1, 1},    // ResNet block shape, small
    {3, 17, 11, 13, 3, 3, 3, 2, 1},   // odd channels, stride 2
    {2, 5, 13, 11, 7, 5, 5, 1, 2},    // 5×5, pad 2
    {2, 5, 13, 11, 7, 5, 5, 2, 2},    // 5×5, stride 2
    {4, 16, 7, 7, 17, 1, 1, 1, 0},    // pointwise (the zero-copy path)
    {3, 16, 9, 9, 32, 1, 1, 2, 0},    // 1×1 stride 2 (projection shortcut)
    {2, 3, 5, 5, 4, 1, 1, 1, 2},      // 1×1 with padding: an all-zero border
    {2, 4, 6, 9, 3, 3, 5, 1, 2},      // non-square kernel
    {9, 16, 8, 8, 16, 3, 3, 1, 1},    // 8×8 maps: several images per GEMM, ragged last group
    {20, 8, 4, 4, 8, 3, 3, 1, 1},     // 4×4 maps: many images per GEMM
    {2, 3, 5, 5, 2, 3, 3, 2, 2},      // stride 2, pad 2
    {1, 1, 1, 1, 1, 1, 1, 1, 0},      // scalar
    {2, 6, 3, 3, 5, 5, 5, 1, 1},      // kernel as large as the padded input (1×1 output)
    {2, 16, 32, 32, 16, 3, 3, 1, 1},  // CIFAR stage 1
};

template <typename T>
struct ConvTol {
  static constexpr double tol = std::is_same<T, float>::value ? 3e-4 : 1e-11;
};

std::string describe(const Conv2dShape& s) {
  return str("n=", s.n, " cin=", s.cin, " ", s.h, "x", s.w, " cout=", s.cout, " k=", s.kh, "x", s.kw,
             " stride=", s.stride, " pad=", s.pad);
}

template <typename T>
void check_parity(const Conv2dShape& s) {
  SCOPED_TRACE(describe(s) + " threads=" + std::to_string(omp_get_max_threads()) +
               (std::is_same<T, float>::value ? " float" : " double"));
  const double tol = ConvTol<T>::tol;
  const auto x = random_vector<T>(s.x_size(), 11);
  const auto w = random_vector<T>(s.w_size(), 12);
  const auto b = random_vector<T>(s.cout, 13);
  const auto dy = random_vector<T>(s.y_size(), 14);

  std::vector<T> y(size_t(s.y_size()), T(-7)), y_ref(size_t(s.y_size()));
  conv2d_forward_ref_cpu<T>(s, x.data(), w.data(), b.data(), y_ref.data());
  conv2d_forward_cpu<T>(s, x.data(), w.data(), b.data(), y.data());
  expect_close(y, y_ref, tol, tol, "forward with bias");
  conv2d_forward_ref_cpu<T>(s, x.data(), w.data(), nullptr, y_ref.data());
  conv2d_forward_cpu<T>(s, x.data(), w.data(), nullptr, y.data());
  expect_close(y, y_ref, tol, tol, "forward without bias");

  // Outputs start as garbage: every kernel must write, not accumulate.
  std::vector<T> dx(size_t(s.x_size()), T(5)), dx_ref(size_t(s.x_size()));
  conv2d_backward_input_ref_cpu<T>(s, dy.data(), w.data(), dx_ref.data());
  conv2d_backward_input_cpu<T>(s, dy.data(), w.data(), dx.data());
  expect_close(dx, dx_ref, tol, tol, "backward input");

  std::vector<T> dw(size_t(s.w_size()), T(3)), dw_ref(size_t(s.w_size()));
  std::vector<T> db(size_t(s.cout), T(9)), db_ref(size_t(s.cout));
  conv2d_backward_weight_ref_cpu<T>(s, x.data(), dy.data(), dw_ref.data(), db_ref.data());
  conv2d_backward_weight_cpu<T>(s, x.data(), dy.data(), dw.data(), db.data());
  expect_close(dw, dw_ref, tol, tol, "backward weight");
  expect_close(db, db_ref, tol, tol, "backward bias");
  std::fill(dw.begin(), dw.end(), T(3));
  conv2d_backward_weight_cpu<T>(s, x.data(), dy.data(), dw.data(), nullptr);
  expect_close(dw, dw_ref, tol, tol, "backward weight without bias");
}

class ConvThreads : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    saved_ = omp_get_max_threads();
    omp_set_num_threads(GetParam());
  }
  void TearDown() override { omp_set_num_threads(saved_); }
  int saved_ = 1;
};

TEST_P(ConvThreads, FloatMatchesReference) {
  for (const auto& s : kShapes) check_parity<float>(s);
}

TEST_P(ConvThreads, DoubleMatchesReference) {
  for (const auto& s : kShapes) check_parity<double>(s);
}

INSTANTIATE_TEST_SUITE_P(Threads, ConvThreads, ::testing::Values(1, 3));

// ⟨conv(x, w), dy⟩ = ⟨x, dx⟩ = ⟨w, dw⟩: the backwards are the adjoints of the forward, checked on
// the optimised path and the references alike, independent of either implementation.
TEST(Conv, BackwardsAreAdjointsOfForward) {
  for (const auto& s : kShapes) {
    SCOPED_TRACE(describe(s));
    const auto x = random_vector<double>(s.x_size(), 21);
    const auto w = random_vector<double>(s.w_size(), 22);
    const auto dy = random_vector<double>(s.y_size(), 23);
    std::vector<double> y(size_t(s.y_size())), dx(size_t(s.x_size())), dw(size_t(s.w_size()));
    for (int impl = 0; impl < 2; ++impl) {
      if (impl == 0) {
        conv2d_forward_cpu<double>(s, x.data(), w.data(), nullptr, y.data());
        conv2d_backward_input_cpu<double>(s, dy.data(), w.data(), dx.data());
        conv2d_backward_weight_cpu<double>(s, x.data(), dy.data(), dw.data(), nullptr);
      } else {
        conv2d_forward_ref_cpu<double>(s, x.data(), w.data(), nullptr, y.data());
        conv2d_backward_input_ref_cpu<double>(s, dy.data(), w.data(), dx.data());
        conv2d_backward_weight_ref_cpu<double>(s, x.data(), dy.data(), dw.data(), nullptr);
      }
      const double lhs = dot(y.data(), dy.data(), s.y_size());
      const double via_x = dot(x.data(), dx.data(), s.x_size());
      const double via_w = dot(w.data(), dw.data(), s.w_size());
      const double scale = 1e-12 * (1.0 + std::fabs(lhs)) * std::sqrt(double(s.y_size()));
      EXPECT_NEAR(via_x, lhs, scale) << (impl ? "reference" : "optimised") << " backward input";
      EXPECT_NEAR(via_w, lhs, scale) << (impl ? "reference" : "optimised") << " backward weight";
    }
  }
}

// im2col followed by the reference GEMM is the convolution; col2im is the adjoint of im2col.
TEST(Conv, Im2colAndCol2imSemantics) {
  for (const auto& s1 : kShapes) {
    Conv2dShape s = s1;
    s.n = 1;
    SCOPED_TRACE(describe(s));
    const int64_t k = int64_t(s.cin) * s.kh * s.kw, p = int64_t(s.oh()) * s.ow();
    const auto x = random_vector<double>(s.x_size(), 31);
    const auto w = random_vector<double>(s.w_size(), 32);
    std::vector<double> col(size_t(k * p), 99.0), y(size_t(s.y_size())), y_ref(size_t(s.y_size()));
    im2col_cpu<double>(s, x.data(), col.data());
    gemm_ref_cpu<double>(false, false, s.cout, int(p), int(k), 1.0, w.data(), int(k), col.data(), int(p), 0.0,
                         y.data(), int(p));
    conv2d_forward_ref_cpu<double>(s, x.data(), w.data(), nullptr, y_ref.data());
    expect_close(y, y_ref, 1e-12, 1e-12, "W·im2col(x) vs conv");

    const auto c = random_vector<double>(k * p, 33);
    std::vector<double> xc(size_t(s.x_size()), 42.0);  // col2im must zero it first
    col2im_cpu<double>(s, c.data(), xc.data());
    const double lhs = dot(col.data(), c.data(), k * p), rhs = dot(x.data(), xc.data(), s.x_size());
    EXPECT_NEAR(lhs, rhs, 1e-11 * (1.0 + std::fabs(lhs)));
  }
}

TEST(Conv, RepeatedCallsAreDeterministic) {
  const Conv2dShape s{9, 16, 8, 8, 16, 3, 3, 1, 1};
  const auto x = random_vector<float>(s.x_size(), 41);
  const auto dy = random_vector<float>(s.y_size(), 42);
  std::vector<float> dw1(size_t(s.w_size())), dw2(size_t(s.w_size()));
  conv2d_backward_weight_cpu<float>(s, x.data(), dy.data(), dw1.data(), nullptr);
  conv2d_backward_weight_cpu<float>(s, x.data(), dy.data(), dw2.data(), nullptr);
  expect_close(dw2, dw1, 0.0, 0.0, "second call bit-identical");
}

TEST(Conv, RejectsBadShapes) {
  float v = 0;
  const Conv2dShape too_big{1, 1, 2, 2, 1, 5, 5, 1, 1};  // 5×5 kernel on a 4×4 padded input
  EXPECT_THROW(conv2d_forward_cpu<float>(too_big, &v, &v, nullptr, &v), Error);
  const Conv2dShape zero_stride{1, 1, 4, 4, 1, 3, 3, 0, 1};
  EXPECT_THROW(conv2d_backward_input_cpu<float>(zero_stride, &v, &v, &v), Error);
  const Conv2dShape no_channels{1, 0, 4, 4, 1, 3, 3, 1, 1};
  try {
    conv2d_backward_weight_cpu<float>(no_channels, &v, &v, &v, nullptr);
    ADD_FAILURE() << "expected sparrow::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cin=0"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sparrow
