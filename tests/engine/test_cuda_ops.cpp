// CUDA parity of every dense op: each op's forward output and the gradients of every float input on the
// GPU against the same op on the CPU (the reference), over the awkward shapes of test_ops_grad.cpp, plus
// the im2col conv fallback, the fused SGD update, pinned-buffer copies and a full ResNet-20 training
// step. GPU tests skip with the probe's reason when there is no device, and touch CUDA only after it.
//
// Tolerance rule everywhere: |cuda − cpu| ≤ atol·max(1, max|cpu|) + rtol·|cpu| per element (the atol is
// scaled by the tensor's magnitude so that large sums are judged relative to their size). Both sides run
// float32; differences come from summation order, FMA contraction and libm vs CUDA exp (≤ 2 ulp).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/base/device.h"
#include "engine/base/rng.h"
#include "engine/cuda_runtime.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "kernels/conv/conv.h"
#include "kernels/optim/optim.h"
#include "models/models.h"
#include "tests/kernels/check.h"

using namespace sparrow;

#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << cuda_unavailable_reason()

namespace {

struct Tol {
  double atol, rtol;
};

// Ops that sum O(100) products of O(1) values, compared in float.
constexpr Tol kSum{1e-5, 1e-4};
// Pure data movement or a single rounding: must agree to an ulp.
constexpr Tol kExact{1e-7, 1e-6};

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::fabs(x)));
  return m;
}

bool close(const Tensor& got, const Tensor& ref, Tol tol, const std::string& what) {
  EXPECT_EQ(got.shape(), ref.shape()) << what;
  const auto g = got.to_vector<float>(), r = ref.to_vector<float>();
  return test::expect_close(g, r, tol.atol * std::max(1.0, max_abs(r)), tol.rtol, what.c_str());
}

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

struct OpRun {
  std::vector<Tensor> cpu, gpu;  // the inputs as each side used them (state such as running stats)
};

// Runs f on CPU copies and CUDA copies of `inputs`; float inputs flagged in `grad` require gradients.
// Compares the outputs (fwd) and, after backward with the same random output gradient, every input
// gradient (bwd).
OpRun check_op(const std::string& what, const Fn& f, const std::vector<Tensor>& inputs, Tol fwd, Tol bwd,
             std::vector<bool> grad = {}) {
  if (grad.empty()) grad.assign(inputs.size(), true);
  OpRun run;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor c = inputs[i].clone(), g = inputs[i].to(Device::CUDA);
    if (grad[i]) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    run.cpu.push_back(c);
    run.gpu.push_back(g);
  }
  Tensor yc = f(run.cpu), yg = f(run.gpu);
  EXPECT_EQ(yg.device(), Device::CUDA) << what << ": output left the device";
  close(yg, yc, fwd, what + " forward");
  bool any = false;
  for (bool b : grad) any |= b;
  if (!any) return run;
  Rng rng(5);
  Tensor r = Tensor::randn(yc.shape(), rng);
  yc.backward(r);
  yg.backward(r.to(Device::CUDA));
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!grad[i]) continue;
    if (!run.cpu[i].grad().defined()) {
      EXPECT_FALSE(run.gpu[i].grad().defined()) << what << ": input " << i;
      continue;
    }
    EXPECT_TRUE(run.gpu[i].grad().defined()) << what << ": input " << i << " got no CUDA gradient";
    if (run.gpu[i].grad().defined()) {
      EXPECT_EQ(run.gpu[i].grad().device(), Device::CUDA);
      close(run.gpu[i].grad(), run.cpu[i].grad(), bwd, what + " backward, input " + std::to_string(i));
    }
  }
  return run;
}

Tensor uni(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  Rng rng(seed);
  return Tensor::uniform(s, rng, lo, hi);
}

// Values pushed at least `gap` away from 0 (ReLU's kink) and a shuffled ramp (unique max-pool argmax).
Tensor away_from_zero(const Shape& s, uint64_t seed, float gap = 0.05f) {
  Tensor t = uni(s, seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = p[i] >= 0 ? p[i] + gap : p[i] - gap;
  return t;
}
Tensor distinct(const Shape& s, uint64_t seed) {
  Tensor t = Tensor::empty(s);
  Rng rng(seed);
  float* p = t.data<float>();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) p[i] = float(i) / float(n);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[int64_t(rng.below(uint64_t(i + 1)))]);
  return t;
}

}  // namespace

// ---------------------------------------------------------------- errors (run without a device too)

TEST(CudaOpsErrors, UnsupportedDeviceCallsSayWhy) {
  if (!cuda_available()) {
    // Allocating on a missing device names the reason instead of crashing.
    try {
      Tensor::empty({4}, DType::F32, Device::CUDA);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("CUDA"), std::string::npos) << msg;
      EXPECT_NE(msg.find(cuda_unavailable_reason()), std::string::npos) << msg;
    }
    EXPECT_THROW(parse_device("cuda"), Error);
    // Pinned buffers degrade to host memory; the profiler window is a no-op.
    PinnedBuffer buf(100);
    EXPECT_FALSE(buf.pinned());
    buf.as<uint8_t>()[99] = 7;
    EXPECT_EQ(buf.as<uint8_t>()[99], 7);
    buf.wait_copies();
    EXPECT_NO_THROW(cuda_profiler_start());
    EXPECT_NO_THROW(cuda_profiler_stop());
    return;
  }
  // With a device: a dtype the CUDA kernels do not take is an error naming the op.
  Tensor x = Tensor::empty({1, 1, 5, 5}, DType::F64, Device::CUDA), w = Tensor::empty({1, 1, 3, 3}, DType::F64, Device::CUDA);
  try {
    conv2d(x, w, Tensor(), 1, 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("conv2d"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("F32"), std::string::npos) << e.what();
  }
  // Mixed devices are refused.
  EXPECT_THROW(add(Tensor::zeros({3}), Tensor::zeros({3}, DType::F32, Device::CUDA)), Error);
  EXPECT_THROW(linear(Tensor::zeros({2, 3}, DType::F32, Device::CUDA), Tensor::zeros({4, 3}), Tensor()), Error);
}

// ---------------------------------------------------------------- conv / linear

struct ConvCase {
  int n, cin, h, w, cout, k, stride, pad;
  bool bias;
};

const ConvCase kConvCases[] = {
    {1, 1, 5, 5, 1, 3, 1, 1, false},  {2, 3, 7, 5, 4, 3, 1, 1, true},   {1, 3, 7, 7, 5, 3, 2, 1, true},
    {2, 4, 6, 9, 3, 1, 1, 0, false},  {1, 2, 11, 7, 3, 1, 2, 0, true},  {3, 2, 5, 6, 2, 5, 1, 2, false},
    {1, 5, 13, 13, 2, 3, 2, 0, false}, {8, 16, 32, 32, 16, 3, 1, 1, false}, {4, 16, 32, 32, 32, 3, 2, 1, true},
};

TEST(CudaOps, Conv2dMatchesCpu) {
  SKIP_WITHOUT_CUDA();
#if SPARROW_HAS_CUDA
  std::printf("conv2d CUDA backend: %s\n", conv2d_cuda_backend());
#endif
  for (const ConvCase& c : kConvCases) {
    const std::string what = str("conv2d n", c.n, " cin", c.cin, " ", c.h, "x", c.w, " cout", c.cout, " k", c.k, " s",
                                 c.stride, " p", c.pad, c.bias ? " bias" : "");
    std::vector<Tensor> in{uni({c.n, c.cin, c.h, c.w}, 1), uni({c.cout, c.cin, c.k, c.k}, 2)};
    if (c.bias) in.push_back(uni({c.cout}, 3));
    check_op(what, [&](const std::vector<Tensor>& v) { return conv2d(v[0], v[1], c.bias ? v[2] : Tensor(), c.stride, c.pad); },
             in, kSum, kSum);
  }
}

// The im2col + cuBLAS path (the fallback when cuDNN is missing) against the plain CPU loops directly.
TEST(CudaOps, Conv2dIm2colPathMatchesReference) {
  SKIP_WITHOUT_CUDA();
#if SPARROW_HAS_CUDA
  for (const ConvCase& c : kConvCases) {
    SCOPED_TRACE(str("n", c.n, " cin", c.cin, " ", c.h, "x", c.w, " cout", c.cout, " k", c.k, " s", c.stride, " p", c.pad));
    const Conv2dShape s{c.n, c.cin, c.h, c.w, c.cout, c.k, c.k, c.stride, c.pad};
    Tensor x = uni({c.n, c.cin, c.h, c.w}, 11), w = uni({c.cout, c.cin, c.k, c.k}, 12), b = uni({c.cout}, 13);
    Tensor dy = uni({c.n, c.cout, s.oh(), s.ow()}, 14);
    Tensor y_ref = Tensor::empty(dy.shape()), dx_ref = Tensor::empty(x.shape()), dw_ref = Tensor::empty(w.shape()),
           db_ref = Tensor::empty({c.cout});
    conv2d_forward_ref_cpu<float>(s, x.data<float>(), w.data<float>(), c.bias ? b.data<float>() : nullptr, y_ref.data<float>());
    conv2d_backward_input_ref_cpu<float>(s, dy.data<float>(), w.data<float>(), dx_ref.data<float>());
    conv2d_backward_weight_ref_cpu<float>(s, x.data<float>(), dy.data<float>(), dw_ref.data<float>(), db_ref.data<float>());
    Tensor xg = x.to(Device::CUDA), wg = w.to(Device::CUDA), bg = b.to(Device::CUDA), dyg = dy.to(Device::CUDA);
    Tensor y = Tensor::empty(dy.shape(), DType::F32, Device::CUDA), dx = Tensor::empty(x.shape(), DType::F32, Device::CUDA),
           dw = Tensor::empty(w.shape(), DType::F32, Device::CUDA), db = Tensor::empty({c.cout}, DType::F32, Device::CUDA);
    conv2d_forward_im2col_cuda(s, xg.data<float>(), wg.data<float>(), c.bias ? bg.data<float>() : nullptr, y.data<float>());
    conv2d_backward_input_im2col_cuda(s, dyg.data<float>(), wg.data<float>(), dx.data<float>());
    conv2d_backward_weight_im2col_cuda(s, xg.data<float>(), dyg.data<float>(), dw.data<float>(), db.data<float>());
    close(y, y_ref, kSum, "im2col forward");
    close(dx, dx_ref, kSum, "im2col backward input");
    close(dw, dw_ref, kSum, "im2col backward weight");
    close(db, db_ref, kSum, "im2col backward bias");
  }
#endif
}

TEST(CudaOps, LinearMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  auto with_bias = [](const std::vector<Tensor>& v) { return linear(v[0], v[1], v[2]); };
  auto no_bias = [](const std::vector<Tensor>& v) { return linear(v[0], v[1], Tensor()); };
  check_op("linear 5x7·3x7ᵀ+b", with_bias, {uni({5, 7}, 1), uni({3, 7}, 2), uni({3}, 3)}, kSum, kSum);
  check_op("linear 1x4·6x4ᵀ", no_bias, {uni({1, 4}, 4), uni({6, 4}, 5)}, kSum, kSum);
  check_op("linear 128x64·10x64ᵀ+b", with_bias, {uni({128, 64}, 6), uni({10, 64}, 7), uni({10}, 8)}, kSum, kSum);
}

// ---------------------------------------------------------------- batch norm

TEST(CudaOps, BatchNormTrainMatchesCpuIncludingRunningStats) {
  SKIP_WITHOUT_CUDA();
  for (const Shape& xs : {Shape{2, 3, 5, 3}, Shape{7, 4}, Shape{1, 2, 3, 5}, Shape{16, 16, 8, 8}, Shape{128, 16, 4, 4}}) {
    const int c = int(xs[1]);
    OpRun run = check_op(
        "batch_norm train " + shape_str(xs),
        [](const std::vector<Tensor>& v) { return batch_norm(v[0], v[1], v[2], v[3], v[4], true, 0.1, 1e-5); },
        {uni(xs, 1, -2, 3), uni({c}, 2, 0.5, 1.5), uni({c}, 3), uni({c}, 4, -0.5, 0.5), uni({c}, 5, 0.5, 2)}, kSum, kSum,
        {true, true, true, false, false});
    close(run.gpu[3], run.cpu[3], kExact, "running_mean " + shape_str(xs));
    close(run.gpu[4], run.cpu[4], kSum, "running_var " + shape_str(xs));
  }
  // Affine off and no running statistics.
  check_op("batch_norm train, no affine", [](const std::vector<Tensor>& v) {
    return batch_norm(v[0], Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
  }, {uni({3, 5, 2, 7}, 6)}, kSum, kSum);
}

// batch_norm_relu: the composition on CUDA against the fused CPU kernel (with and without a residual).
TEST(CudaOps, BatchNormReluMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const Shape xs{4, 3, 5, 6};
  OpRun run = check_op(
      "batch_norm_relu train",
      [](const std::vector<Tensor>& v) { return batch_norm_relu(v[0], Tensor(), v[1], v[2], v[3], v[4], true, 0.1, 1e-5); },
      {uni(xs, 1, -2, 3), uni({3}, 2, 0.5, 1.5), uni({3}, 3), uni({3}, 4, -0.5, 0.5), uni({3}, 5, 0.5, 2)}, kSum, kSum,
      {true, true, true, false, false});
  close(run.gpu[3], run.cpu[3], kExact, "batch_norm_relu running_mean");
  check_op(
      "batch_norm_relu train, residual",
      [](const std::vector<Tensor>& v) { return batch_norm_relu(v[0], v[1], v[2], v[3], Tensor(), Tensor(), true, 0.1, 1e-5); },
      {uni(xs, 6, -2, 3), uni(xs, 7), uni({3}, 8, 0.5, 1.5), uni({3}, 9)}, kSum, kSum);
  check_op(
      "batch_norm_relu eval, residual",
      [](const std::vector<Tensor>& v) { return batch_norm_relu(v[0], v[1], v[2], v[3], v[4], v[5], false, 0.1, 1e-5); },
      {uni(xs, 10), uni(xs, 11), uni({3}, 12), uni({3}, 13), uni({3}, 14, -0.5, 0.5), uni({3}, 15, 0.5, 2)}, kSum, kSum,
      {true, true, true, true, false, false});
}

TEST(CudaOps, BatchNormEvalMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (const Shape& xs : {Shape{2, 3, 4, 5}, Shape{5, 3}}) {
    check_op(
        "batch_norm eval " + shape_str(xs),
        [](const std::vector<Tensor>& v) { return batch_norm(v[0], v[1], v[2], v[3], v[4], false, 0.1, 1e-5); },
        {uni(xs, 1), uni({3}, 2), uni({3}, 3), uni({3}, 4, -0.5, 0.5), uni({3}, 5, 0.5, 2)}, kSum, kSum,
        {true, true, true, false, false});
  }
}

// ---------------------------------------------------------------- elementwise, pools, shortcut

TEST(CudaOps, ElementwiseAndReductionsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  check_op("relu", [](const std::vector<Tensor>& v) { return relu(v[0]); }, {away_from_zero({3, 5, 7}, 1)}, kExact, kExact);
  check_op("add", [](const std::vector<Tensor>& v) { return add(v[0], v[1]); }, {uni({4, 5}, 1), uni({4, 5}, 2)}, kExact, kExact);
  check_op("sub", [](const std::vector<Tensor>& v) { return sub(v[0], v[1]); }, {uni({3, 3}, 3), uni({3, 3}, 4)}, kExact, kExact);
  check_op("mul", [](const std::vector<Tensor>& v) { return mul(v[0], v[1]); }, {uni({2, 7}, 5), uni({2, 7}, 6)}, kExact, kExact);
  check_op("scale", [](const std::vector<Tensor>& v) { return scale(v[0], -2.5); }, {uni({11}, 7)}, kExact, kExact);
  check_op("sum", [](const std::vector<Tensor>& v) { return sum(v[0]); }, {uni({3, 4}, 8)}, kSum, kExact);
  check_op("sum 100003", [](const std::vector<Tensor>& v) { return sum(v[0]); }, {uni({100003}, 9)}, kSum, kExact);
  check_op("mean", [](const std::vector<Tensor>& v) { return mean(v[0]); }, {uni({5, 13}, 10)}, kSum, kExact);
}

TEST(CudaOps, PoolsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  for (auto [k, s, p] : {std::tuple{2, 2, 0}, std::tuple{3, 2, 1}, std::tuple{3, 1, 1}, std::tuple{2, 1, 0}}) {
    const std::string w = str(" k", k, " s", s, " p", p);
    check_op("max_pool2d" + w, [&](const std::vector<Tensor>& v) { return max_pool2d(v[0], k, s, p); },
             {distinct({2, 3, 7, 6}, 1)}, kExact, kExact);
    check_op("avg_pool2d" + w, [&](const std::vector<Tensor>& v) { return avg_pool2d(v[0], k, s, p); },
             {uni({1, 2, 5, 7}, 2)}, kExact, kExact);
  }
  check_op("global_avg_pool", [](const std::vector<Tensor>& v) { return global_avg_pool(v[0]); }, {uni({3, 4, 5, 3}, 3)},
           kExact, kExact);
  check_op("global_avg_pool 128x64x8x8", [](const std::vector<Tensor>& v) { return global_avg_pool(v[0]); },
           {uni({128, 64, 8, 8}, 4)}, kExact, kExact);
}

TEST(CudaOps, ShortcutAMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  check_op("shortcut_a pad 4->8 s2", [](const std::vector<Tensor>& v) { return shortcut_a(v[0], 8, 2); },
           {uni({2, 4, 7, 5}, 1)}, kExact, kExact);
  check_op("shortcut_a crop 5->3 s2", [](const std::vector<Tensor>& v) { return shortcut_a(v[0], 3, 2); },
           {uni({1, 5, 6, 6}, 2)}, kExact, kExact);
  check_op("shortcut_a pad 4->7 s1", [](const std::vector<Tensor>& v) { return shortcut_a(v[0], 7, 1); },
           {uni({2, 4, 3, 5}, 3)}, kExact, kExact);
}

// ---------------------------------------------------------------- softmax family and cross-entropy

TEST(CudaOps, SoftmaxFamilyMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const Tol t{1e-6, 1e-5};
  check_op("softmax 3x7", [](const std::vector<Tensor>& v) { return softmax(v[0]); }, {uni({3, 7}, 1, -3, 3)}, t, t);
  check_op("log_softmax 4x5", [](const std::vector<Tensor>& v) { return log_softmax(v[0]); }, {uni({4, 5}, 2, -3, 3)}, t, t);
  check_op("softmax 2x1000", [](const std::vector<Tensor>& v) { return softmax(v[0]); }, {uni({2, 1000}, 3, -8, 8)}, t, t);
  check_op("log_softmax 3x1001", [](const std::vector<Tensor>& v) { return log_softmax(v[0]); },
           {uni({3, 1001}, 4, -8, 8)}, t, t);
}

TEST(CudaOps, CrossEntropyMatchesCpuWithHostOrDeviceLabels) {
  SKIP_WITHOUT_CUDA();
  const Tol t{1e-6, 1e-5};
  Tensor y5 = Tensor::from_vector<int64_t>({5}, {0, 3, 2, 3, 1});
  check_op("cross_entropy 5x4, host labels", [&](const std::vector<Tensor>& v) { return cross_entropy(v[0], y5); },
           {uni({5, 4}, 3, -3, 3)}, t, t);
  // Labels already on the device (the training loop's case): same result.
  check_op("cross_entropy 5x4, device labels", [&](const std::vector<Tensor>& v) {
    return cross_entropy(v[0], v[0].device() == Device::CUDA ? y5.to(Device::CUDA) : y5);
  }, {uni({5, 4}, 3, -3, 3)}, t, t);
  Rng rng(4);
  std::vector<int64_t> lab(128);
  for (auto& l : lab) l = int64_t(rng.below(10));
  Tensor y128 = Tensor::from_vector<int64_t>({128}, lab);
  check_op("cross_entropy 128x10", [&](const std::vector<Tensor>& v) { return cross_entropy(v[0], y128); },
           {uni({128, 10}, 5, -5, 5)}, t, t);
  // count_correct reads device logits.
  Tensor z = uni({128, 10}, 6);
  EXPECT_EQ(count_correct(z.to(Device::CUDA), y128.to(Device::CUDA)), count_correct(z, y128));
}

TEST(CudaOps, CrossEntropyBadLabels) {
  SKIP_WITHOUT_CUDA();
  Tensor z = uni({2, 3}, 1).to(Device::CUDA);
  // Host labels are checked before anything runs.
  EXPECT_THROW(cross_entropy(z, Tensor::from_vector<int64_t>({2}, {0, 3})), Error);
  // Device labels cannot be checked without a host round trip: the loss turns NaN instead.
  Tensor loss = cross_entropy(z, Tensor::from_vector<int64_t>({2}, {0, 3}).to(Device::CUDA));
  EXPECT_TRUE(std::isnan(loss.item()));
}

// ---------------------------------------------------------------- shape ops and dropout

TEST(CudaOps, ShapesSliceCatDropoutMatchCpu) {
  SKIP_WITHOUT_CUDA();
  check_op("flatten", [](const std::vector<Tensor>& v) { return flatten(v[0]); }, {uni({2, 3, 2, 2}, 1)}, kExact, kExact);
  check_op("slice_rows", [](const std::vector<Tensor>& v) { return slice_rows(v[0], 1, 3); }, {uni({4, 3}, 2)}, kExact,
           kExact);
  check_op("cat_rows", [](const std::vector<Tensor>& v) { return cat_rows({v[0], v[1]}); },
           {uni({2, 3}, 3), uni({1, 3}, 4)}, kExact, kExact);
  // Same seed, same mask on either device.
  check_op("dropout", [](const std::vector<Tensor>& v) {
    Rng rng(3);
    return dropout(v[0], 0.3, true, rng);
  }, {uni({1000}, 5)}, kExact, kExact);
}

// ---------------------------------------------------------------- optimizer

TEST(CudaOps, FusedSgdKernelMatchesReference) {
  SKIP_WITHOUT_CUDA();
#if SPARROW_HAS_CUDA
  // Odd sizes, one spanning several chunks, momentum first and later steps, masks, Nesterov.
  const int64_t sizes[] = {1, 7, 4097, 10000};
  const SgdHyper h{0.05, 0.9, 0.1, false};
  std::vector<Tensor> p, g, buf, mask, pg, gg, bufg, maskg;
  for (int i = 0; i < 4; ++i) {
    p.push_back(uni({sizes[i]}, 10 + i));
    g.push_back(uni({sizes[i]}, 20 + i));
    buf.push_back(uni({sizes[i]}, 30 + i));
    Tensor m = Tensor::empty({sizes[i]});
    for (int64_t j = 0; j < sizes[i]; ++j) m.data<float>()[j] = (j % 3 == 1) ? 0.f : 1.f;
    mask.push_back(m);
    pg.push_back(p.back().to(Device::CUDA));
    gg.push_back(g.back().to(Device::CUDA));
    bufg.push_back(buf.back().to(Device::CUDA));
    maskg.push_back(m.to(Device::CUDA));
  }
  std::vector<SgdTensor> ts;
  for (int i = 0; i < 4; ++i) {
    const bool with_buf = i != 0, with_mask = i % 2 == 1, first = i == 2;
    sgd_update_ref_cpu<float>(sizes[i], p[size_t(i)].data<float>(), g[size_t(i)].data<float>(),
                              with_buf ? buf[size_t(i)].data<float>() : nullptr,
                              with_mask ? mask[size_t(i)].data<float>() : nullptr, first, h, 1e-3 * (i + 1));
    ts.push_back(SgdTensor{pg[size_t(i)].data<float>(), gg[size_t(i)].data<float>(),
                           with_buf ? bufg[size_t(i)].data<float>() : nullptr,
                           with_mask ? maskg[size_t(i)].data<float>() : nullptr, sizes[i], float(1e-3 * (i + 1)),
                           first ? 1 : 0});
  }
  sgd_update_multi_cuda(ts.data(), int(ts.size()), h);
  for (int i = 0; i < 4; ++i) {
    close(pg[size_t(i)], p[size_t(i)], kExact, str("sgd param ", i));
    if (i != 0) close(bufg[size_t(i)], buf[size_t(i)], kExact, str("sgd momentum ", i));
  }
  // Masked entries are exactly zero.
  const auto v = pg[3].to_vector<float>();
  for (size_t j = 1; j < v.size(); j += 3) ASSERT_EQ(v[j], 0.0f) << j;
#endif
}

TEST(CudaOps, SgdOptimizerOnCudaMatchesCpuOverSteps) {
  SKIP_WITHOUT_CUDA();
  for (bool nesterov : {false, true}) {
    SCOPED_TRACE(nesterov ? "nesterov" : "momentum");
    Tensor a = uni({7, 5}, 1), b = uni({4097}, 2);
    Tensor ac = a.clone().set_requires_grad(true), bc = b.clone().set_requires_grad(true);
    Tensor ag = a.to(Device::CUDA).set_requires_grad(true), bg = b.to(Device::CUDA).set_requires_grad(true);
    const SgdConfig cfg{0.1, 0.9, 0.0, 5e-4, nesterov};
    Sgd oc({ac, bc}, cfg), og({ag, bg}, cfg);
    Tensor mask = Tensor::empty({4097});
    for (int64_t j = 0; j < 4097; ++j) mask.data<float>()[j] = (j % 5 == 0) ? 0.f : 1.f;
    oc.set_mask(bc, mask);
    og.set_mask(bg, mask);  // a host mask for a CUDA parameter is moved over
    oc.set_weight_decay(ac, 0.0);
    og.set_weight_decay(ag, 0.0);
    for (int step = 0; step < 3; ++step) {
      Tensor ga = uni({7, 5}, 100 + step), gb = uni({4097}, 200 + step);
      ac.set_grad(ga);
      bc.set_grad(gb);
      ag.set_grad(ga.to(Device::CUDA));
      bg.set_grad(gb.to(Device::CUDA));
      oc.step();
      og.step();
      close(ag, ac, kExact, str("param a after step ", step));
      close(bg, bc, kExact, str("param b after step ", step));
      close(og.momentum_buffers()[1], oc.momentum_buffers()[1], kExact, str("momentum b after step ", step));
    }
    for (int64_t j = 0; j < 4097; j += 5) ASSERT_EQ(bg.to_vector<float>()[size_t(j)], 0.0f) << j;
  }
}

// ---------------------------------------------------------------- pinned input buffers

TEST(CudaOps, PinnedBufferAsyncCopy) {
  SKIP_WITHOUT_CUDA();
  PinnedBuffer buf(3 * 1000 * sizeof(float));
  EXPECT_TRUE(buf.pinned());
  for (int i = 0; i < 3000; ++i) buf.as<float>()[i] = float(i) * 0.5f;
  Tensor t = to_device_async(buf, {3, 1000}, DType::F32);
  Tensor second = Tensor::empty({1000}, DType::F32, Device::CUDA);
  copy_to_device_async(second, buf, 1000 * sizeof(float));
  buf.wait_copies();  // the loader may now overwrite the buffer
  for (int i = 0; i < 3000; ++i) buf.as<float>()[i] = -1.f;
  const auto v = t.to_vector<float>(), w = second.to_vector<float>();
  for (int i = 0; i < 3000; ++i) ASSERT_EQ(v[size_t(i)], float(i) * 0.5f) << i;
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(w[size_t(i)], float(i + 1000) * 0.5f) << i;
  EXPECT_THROW(copy_to_device_async(second, buf, 2500 * sizeof(float)), Error);
  Tensor host = Tensor::empty({10});
  EXPECT_THROW(copy_to_device_async(host, buf), Error);
}

// ---------------------------------------------------------------- a full ResNet-20 training step

// Same weights, same batch, two SGD steps (momentum 0.9, Nesterov, weight decay) on both devices.
// Tolerances: loss |Δ| ≤ 1e-4·(1 + |loss|); logits atol 1e-3·max|ref|, rtol 1e-3; gradients atol
// 1e-3·max|ref|, rtol 1e-3; parameters after each step atol 2e-5·max(1, max|ref|), rtol 1e-4; BN running
// statistics atol 1e-5·max(1, max|ref|), rtol 1e-4.
TEST(CudaOps, ResNet20TrainingStepMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  ModelPtr mc = make_model({"resnet20", 10, 3, {}, ""}, 7), mg = make_model({"resnet20", 10, 3, {}, ""}, 7);
  mg->to(Device::CUDA);
  mc->train();
  mg->train();
  const SgdConfig cfg{0.1, 0.9, 0.0, 5e-4, true};
  Sgd oc(mc->parameters(), cfg), og(mg->parameters(), cfg);
  Rng rng(11);
  const int batch = 8;
  Tensor x = Tensor::randn({batch, 3, 32, 32}, rng);
  std::vector<int64_t> lab(batch);
  for (auto& l : lab) l = int64_t(rng.below(10));
  Tensor y = Tensor::from_vector<int64_t>({batch}, lab);
  Tensor xg = x.to(Device::CUDA), yg = y.to(Device::CUDA);
  const std::vector<std::string> watched{"stem.0.weight", "stem.1.weight", "blocks.0.c1.weight", "blocks.4.b2.bias",
                                         "blocks.8.c2.weight", "fc.weight", "fc.bias"};
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE(str("step ", step));
    oc.zero_grad();
    og.zero_grad();
    Tensor zc = mc->forward(x), zg = mg->forward(xg);
    ASSERT_EQ(zg.device(), Device::CUDA);
    close(zg, zc, Tol{1e-3, 1e-3}, "logits");
    Tensor lc = cross_entropy(zc, y), lg = cross_entropy(zg, yg);
    EXPECT_NEAR(lg.item(), lc.item(), 1e-4 * (1 + std::fabs(lc.item())));
    lc.backward();
    lg.backward();
    auto pc = mc->named_parameters(), pg = mg->named_parameters();
    ASSERT_EQ(pc.size(), pg.size());
    for (size_t i = 0; i < pc.size(); ++i)
      for (const auto& name : watched)
        if (pc[i].first == name) close(pg[i].second.grad(), pc[i].second.grad(), Tol{1e-3, 1e-3}, name + " grad");
    oc.step();
    og.step();
    for (size_t i = 0; i < pc.size(); ++i) close(pg[i].second, pc[i].second, Tol{2e-5, 1e-4}, pc[i].first + " after step");
    auto bc = mc->named_buffers(), bg = mg->named_buffers();
    for (size_t i = 0; i < bc.size(); ++i)
      if (bc[i].second.dtype() == DType::F32) close(bg[i].second, bc[i].second, Tol{1e-5, 1e-4}, bc[i].first);
  }
}
