// Tensor-level ops: shape checks, output allocation, kernel dispatch (CPU float/double, CUDA float), and
// the backward closures. Backward closures capture inputs and saved buffers only, never their own
// output's graph node (no reference cycles). Each op picks its backend from its main input's device
// (use_cuda); the CPU branches are the reference and the CUDA branches call the *_cuda kernels, which run
// on the one compute stream and never wait for the host (scalars such as the loss stay on the device).
#include "engine/ops.h"

#include <cmath>
#include <cstring>

#include "engine/base/nvtx.h"
#include "engine/base/rng.h"
#include "kernels/batchnorm/batchnorm.h"
#include "kernels/conv/conv.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/gemm/gemm.h"
#include "kernels/pool/pool.h"
#include "kernels/softmax/softmax.h"

namespace sparrow {

namespace {

template <typename F>
void dispatch_float(const Tensor& t, const char* op, F&& f) {
  if (t.dtype() == DType::F32) f(float{});
  else if (t.dtype() == DType::F64) f(double{});
  else SPARROW_FAIL(op, ": unsupported dtype ", dtype_name(t.dtype()), " (expected F32 or F64)");
}

// True when the op runs on CUDA, false for CPU tensors. CUDA kernels take float32 only; a CUDA tensor of
// another dtype, or one in a build without CUDA, is an error naming the op.
bool use_cuda(const Tensor& t, const char* op) {
  if (t.device() == Device::CPU) return false;
  SPARROW_CHECK(SPARROW_HAS_CUDA, "op '", op, "' got a CUDA tensor but sparrow was built without CUDA");
  SPARROW_CHECK(t.dtype() == DType::F32, "op '", op, "' on CUDA supports F32 only, got ", dtype_name(t.dtype()),
                " (convert with .to(DType::F32) or run on the CPU)");
  return true;
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* op) {
  SPARROW_CHECK(a.shape() == b.shape(), op, ": shapes ", a.shape_str(), " and ", b.shape_str(), " differ");
  check_same_device(a, b, op);
}

Tensor like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); }

}  // namespace

// ---------------------------------------------------------------- elementwise

Tensor add(const Tensor& a, const Tensor& b) {
  SPARROW_NVTX_RANGE("add");
  check_same_shape(a, b, "add");
  Tensor y = like(a);
  const int64_t n = a.numel();
  if (use_cuda(a, "add")) {
#if SPARROW_HAS_CUDA
    add_cuda(n, a.data<float>(), b.data<float>(), y.data<float>());
#endif
  } else {
    dispatch_float(a, "add", [&](auto t) {
      using T = decltype(t);
      add_cpu<T>(n, a.data<T>(), b.data<T>(), y.data<T>());
    });
  }
  return record(y, "add", {a, b}, [](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g, g};
  });
}

Tensor scale(const Tensor& a, double s) {
  SPARROW_NVTX_RANGE("scale");
  check_float(a, "scale", "a");
  Tensor y = like(a);
  const int64_t n = a.numel();
  if (use_cuda(a, "scale")) {
#if SPARROW_HAS_CUDA
    scale_cuda(n, float(s), a.data<float>(), y.data<float>());
#endif
  } else {
    dispatch_float(a, "scale", [&](auto t) {
      using T = decltype(t);
      scale_cpu<T>(n, T(s), a.data<T>(), y.data<T>());
    });
  }
  return record(y, "scale", {a}, [s](const Tensor& g, const std::vector<bool>&) {
    NoGradGuard ng;
    return std::vector<Tensor>{scale(g, s)};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) { return add(a, scale(b, -1.0)); }

Tensor mul(const Tensor& a, const Tensor& b) {
  SPARROW_NVTX_RANGE("mul");
  check_same_shape(a, b, "mul");
  Tensor y = like(a);
  const int64_t n = a.numel();
  if (use_cuda(a, "mul")) {
#if SPARROW_HAS_CUDA
    mul_cuda(n, a.data<float>(), b.data<float>(), y.data<float>());
#endif
  } else {
    dispatch_float(a, "mul", [&](auto t) {
      using T = decltype(t);
      mul_cpu<T>(n, a.data<T>(), b.data<T>(), y.data<T>());
    });
  }
  Tensor ad = a.detach(), bd = b.detach();
  return record(y, "mul", {a, b}, [ad, bd](const Tensor& g, const std::vector<bool>& needs) {
    NoGradGuard ng;
    return std::vector<Tensor>{needs[0] ? mul(g, bd) : Tensor(), needs[1] ? mul(g, ad) : Tensor()};
  });
}

Tensor relu(const Tensor& x) {
  SPARROW_NVTX_RANGE("relu");
  check_float(x, "relu", "x");
  Tensor y = like(x);
  const int64_t n = x.numel();
  if (use_cuda(x, "relu")) {
#if SPARROW_HAS_CUDA
    relu_forward_cuda(n, x.data<float>(), y.data<float>());
#endif
  } else {
    dispatch_float(x, "relu", [&](auto t) {
      using T = decltype(t);
      relu_forward_cpu<T>(n, x.data<T>(), y.data<T>());
    });
  }
  Tensor yd = y.detach();
  return record(y, "relu", {x}, [yd](const Tensor& g, const std::vector<bool>&) {
    Tensor dx = like(g);
    const int64_t n = g.numel();
    if (use_cuda(g, "relu_backward")) {
#if SPARROW_HAS_CUDA
      relu_backward_cuda(n, yd.data<float>(), g.data<float>(), dx.data<float>());
#endif
    } else {
      dispatch_float(g, "relu_backward", [&](auto t) {
        using T = decltype(t);
        relu_backward_cpu<T>(n, yd.data<T>(), g.data<T>(), dx.data<T>());
      });
    }
    return std::vector<Tensor>{dx};
  });
}

Tensor sum(const Tensor& x) {
  SPARROW_NVTX_RANGE("sum");
  check_float(x, "sum", "x");
  Tensor y = Tensor::empty({}, x.dtype(), x.device());
  if (use_cuda(x, "sum")) {
#if SPARROW_HAS_CUDA
    sum_cuda(x.numel(), x.data<float>(), y.data<float>());
#endif
  } else {
    dispatch_float(x, "sum", [&](auto t) {
      using T = decltype(t);
      const T* p = x.data<T>();
      double s = 0;
      for (int64_t i = 0, n = x.numel(); i < n; ++i) s += p[i];
      y.data<T>()[0] = T(s);
    });
  }
  Shape shape = x.shape();
  return record(y, "sum", {x}, [shape](const Tensor& g, const std::vector<bool>&) {
    if (use_cuda(g, "sum_backward")) {
      // Broadcast the device scalar on the device: no host round trip inside a backward pass.
      Tensor dx = Tensor::empty(shape, g.dtype(), g.device());
#if SPARROW_HAS_CUDA
      fill_from_scalar_cuda(dx.numel(), g.data<float>(), dx.data<float>());
#endif
      return std::vector<Tensor>{dx};
    }
    return std::vector<Tensor>{Tensor::full(shape, g.item(), g.dtype(), g.device())};
  });
}

Tensor mean(const Tensor& x) {
  const int64_t n = x.numel();
  SPARROW_CHECK(n > 0, "mean of an empty tensor");
  return scale(sum(x), 1.0 / double(n));
}

// ---------------------------------------------------------------- shape

Tensor reshape(const Tensor& x, const Shape& shape) {
  Tensor y = x.view(shape);
  Shape in_shape = x.shape();
  return record(y, "reshape", {x}, [in_shape](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.view(in_shape)};
  });
}

Tensor flatten(const Tensor& x) {
  SPARROW_CHECK(x.dim() >= 1, "flatten of a 0-d tensor");
  const int64_t n = x.size(0);
  return reshape(x, {n, n ? x.numel() / n : 0});
}

Tensor slice_rows(const Tensor& x, int64_t begin, int64_t end) {
  SPARROW_NVTX_RANGE("slice_rows");
  Tensor y = x.slice_batch(begin, end).clone();
  Shape shape = x.shape();
  return record(y, "slice_rows", {x}, [shape, begin, end](const Tensor& g, const std::vector<bool>&) {
    Tensor dx = Tensor::zeros(shape, g.dtype(), g.device());
    dx.slice_batch(begin, end).copy_(g);
    return std::vector<Tensor>{dx};
  });
}

Tensor cat_rows(const std::vector<Tensor>& xs) {
  SPARROW_NVTX_RANGE("cat_rows");
  SPARROW_CHECK(!xs.empty(), "cat_rows of nothing");
  Shape shape = xs[0].shape();
  int64_t rows = 0;
  for (const Tensor& x : xs) {
    SPARROW_CHECK(x.dim() == xs[0].dim() && x.dtype() == xs[0].dtype() && x.device() == xs[0].device(),
                  "cat_rows: incompatible tensors ", x.shape_str(), " and ", xs[0].shape_str());
    for (int64_t d = 1; d < x.dim(); ++d)
      SPARROW_CHECK(x.size(d) == xs[0].size(d), "cat_rows: shapes ", x.shape_str(), " and ", xs[0].shape_str());
    rows += x.size(0);
  }
  shape[0] = rows;
  Tensor y = Tensor::empty(shape, xs[0].dtype(), xs[0].device());
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& x : xs) {
    starts.push_back(at);
    y.slice_batch(at, at + x.size(0)).copy_(x);
    at += x.size(0);
  }
  starts.push_back(at);
  return record(y, "cat_rows", xs, [starts](const Tensor& g, const std::vector<bool>& needs) {
    std::vector<Tensor> out(needs.size());
    for (size_t i = 0; i < needs.size(); ++i)
      if (needs[i]) out[i] = g.slice_batch(starts[i], starts[i + 1]).clone();
    return out;
  });
}

// ---------------------------------------------------------------- conv / linear

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, int stride, int pad) {
  SPARROW_NVTX_RANGE("conv2d_fwd");
  check_float(x, "conv2d", "x");
  check_float(w, "conv2d", "w");
  SPARROW_CHECK(x.dim() == 4 && w.dim() == 4, "conv2d: expected x N×C×H×W and w Cout×Cin×Kh×Kw, got ",
                x.shape_str(), " and ", w.shape_str());
  SPARROW_CHECK(x.size(1) == w.size(1), "conv2d: input has ", x.size(1), " channels, weight ", w.shape_str(),
                " expects ", w.size(1));
  SPARROW_CHECK(stride >= 1 && pad >= 0, "conv2d: bad stride ", stride, " or padding ", pad);
  check_same_device(x, w, "conv2d");
  if (b.defined()) {
    check_same_device(x, b, "conv2d");
    SPARROW_CHECK(b.numel() == w.size(0), "conv2d: bias of ", b.numel(), " for ", w.size(0), " filters");
  }
  const bool cuda = use_cuda(x, "conv2d");
  Conv2dShape s{int(x.size(0)), int(x.size(1)), int(x.size(2)), int(x.size(3)), int(w.size(0)),
                int(w.size(2)), int(w.size(3)), stride, pad};
  SPARROW_CHECK(s.h + 2 * pad >= s.kh && s.w + 2 * pad >= s.kw, "conv2d: output would be empty for input ", x.shape_str(),
                " and kernel ", w.shape_str());
  Tensor y = Tensor::empty({s.n, s.cout, s.oh(), s.ow()}, x.dtype(), x.device());
  if (cuda) {
#if SPARROW_HAS_CUDA
    conv2d_forward_cuda(s, x.data<float>(), w.data<float>(), b.defined() ? b.data<float>() : nullptr, y.data<float>());
#endif
  } else {
    dispatch_float(x, "conv2d", [&](auto t) {
      using T = decltype(t);
      conv2d_forward_cpu<T>(s, x.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr, y.data<T>());
    });
  }
  Tensor xd = x.detach(), wd = w.detach();
  const bool has_bias = b.defined();
  std::vector<Tensor> inputs{x, w};
  if (has_bias) inputs.push_back(b);
  return record(y, "conv2d", inputs, [s, xd, wd, has_bias](const Tensor& g, const std::vector<bool>& needs) {
    SPARROW_NVTX_RANGE("conv2d_bwd");
    std::vector<Tensor> out(needs.size());
    if (use_cuda(g, "conv2d_backward")) {
#if SPARROW_HAS_CUDA
      if (needs[0]) {
        out[0] = like(xd);
        conv2d_backward_input_cuda(s, g.data<float>(), wd.data<float>(), out[0].data<float>());
      }
      if (needs[1] || (has_bias && needs[2])) {
        Tensor dw = like(wd);
        Tensor db = has_bias ? Tensor::empty({s.cout}, g.dtype(), g.device()) : Tensor();
        conv2d_backward_weight_cuda(s, xd.data<float>(), g.data<float>(), dw.data<float>(),
                                    has_bias ? db.data<float>() : nullptr);
        if (needs[1]) out[1] = dw;
        if (has_bias && needs[2]) out[2] = db;
      }
#endif
      return out;
    }
    dispatch_float(g, "conv2d_backward", [&](auto t) {
      using T = decltype(t);
      if (needs[0]) {
        out[0] = like(xd);
        conv2d_backward_input_cpu<T>(s, g.data<T>(), wd.data<T>(), out[0].data<T>());
      }
      if (needs[1] || (has_bias && needs[2])) {
        Tensor dw = like(wd);
        Tensor db = has_bias ? Tensor::empty({s.cout}, g.dtype()) : Tensor();
        conv2d_backward_weight_cpu<T>(s, xd.data<T>(), g.data<T>(), dw.data<T>(),
                                      has_bias ? db.data<T>() : nullptr);
        if (needs[1]) out[1] = dw;
        if (has_bias && needs[2]) out[2] = db;
      }
    });
    return out;
  });
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  SPARROW_NVTX_RANGE("linear_fwd");
  check_float(x, "linear", "x");
  check_float(w, "linear", "w");
  SPARROW_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear: x ", x.shape_str(),
                " does not match weight ", w.shape_str(), " (expected x B×In, w Out×In)");
  check_same_device(x, w, "linear");
  if (b.defined()) SPARROW_CHECK(b.numel() == w.size(0), "linear: bias of ", b.numel(), " for ", w.size(0), " outputs");
  const bool cuda = use_cuda(x, "linear");
  if (cuda && b.defined()) check_same_device(x, b, "linear");
  const int B = int(x.size(0)), In = int(x.size(1)), Out = int(w.size(0));
  Tensor y = Tensor::empty({B, Out}, x.dtype(), x.device());
  if (cuda) {
#if SPARROW_HAS_CUDA
    gemm_cuda(false, true, B, Out, In, 1.0f, x.data<float>(), In, w.data<float>(), In, 0.0f, y.data<float>(), Out);
    if (b.defined()) bias_add_rows_cuda(B, Out, b.data<float>(), y.data<float>());
#endif
  } else {
    dispatch_float(x, "linear", [&](auto t) {
      using T = decltype(t);
      gemm_cpu<T>(false, true, B, Out, In, T(1), x.data<T>(), In, w.data<T>(), In, T(0), y.data<T>(), Out);
      if (b.defined()) {
        T* py = y.data<T>();
        const T* pb = b.data<T>();
        for (int i = 0; i < B; ++i)
          for (int j = 0; j < Out; ++j) py[int64_t(i) * Out + j] += pb[j];
      }
    });
  }
  Tensor xd = x.detach(), wd = w.detach();
  const bool has_bias = b.defined();
  std::vector<Tensor> inputs{x, w};
  if (has_bias) inputs.push_back(b);
  return record(y, "linear", inputs, [xd, wd, has_bias, B, In, Out](const Tensor& g, const std::vector<bool>& needs) {
    SPARROW_NVTX_RANGE("linear_bwd");
    std::vector<Tensor> out(needs.size());
    if (use_cuda(g, "linear_backward")) {
#if SPARROW_HAS_CUDA
      if (needs[0]) {
        out[0] = like(xd);
        gemm_cuda(false, false, B, In, Out, 1.0f, g.data<float>(), Out, wd.data<float>(), In, 0.0f,
                  out[0].data<float>(), In);
      }
      if (needs[1]) {
        out[1] = like(wd);
        gemm_cuda(true, false, Out, In, B, 1.0f, g.data<float>(), Out, xd.data<float>(), In, 0.0f,
                  out[1].data<float>(), In);
      }
      if (has_bias && needs[2]) {
        out[2] = Tensor::empty({Out}, g.dtype(), g.device());
        bias_grad_rows_cuda(B, Out, g.data<float>(), out[2].data<float>());
      }
#endif
      return out;
    }
    dispatch_float(g, "linear_backward", [&](auto t) {
      using T = decltype(t);
      if (needs[0]) {
        out[0] = like(xd);
        gemm_cpu<T>(false, false, B, In, Out, T(1), g.data<T>(), Out, wd.data<T>(), In, T(0), out[0].data<T>(), In);
      }
      if (needs[1]) {
        out[1] = like(wd);
        gemm_cpu<T>(true, false, Out, In, B, T(1), g.data<T>(), Out, xd.data<T>(), In, T(0), out[1].data<T>(), In);
      }
      if (has_bias && needs[2]) {
        out[2] = Tensor::zeros({Out}, g.dtype());
        T* db = out[2].data<T>();
        const T* pg = g.data<T>();
        for (int i = 0; i < B; ++i)
          for (int j = 0; j < Out; ++j) db[j] += pg[int64_t(i) * Out + j];
      }
    });
    return out;
  });
}

// ---------------------------------------------------------------- batch norm

namespace {
// Validates batch_norm's arguments (op names the caller in messages) and returns the kernel shape.
BatchNormShape batch_norm_shape(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                                const Tensor& running_var, bool training, const char* op) {
  check_float(x, op, "x");
  SPARROW_CHECK(x.dim() == 4 || x.dim() == 2, op, ": expected N×C×H×W or N×C, got ", x.shape_str());
  const bool cuda = use_cuda(x, op);
  BatchNormShape s{int(x.size(0)), int(x.size(1)), x.dim() == 4 ? int(x.size(2) * x.size(3)) : 1};
  for (const Tensor* p : {&gamma, &beta, &running_mean, &running_var})
    if (p->defined()) {
      SPARROW_CHECK(p->numel() == s.c && p->dtype() == x.dtype(), op, ": parameter of shape ", p->shape_str(),
                    " for ", s.c, " channels");
      if (cuda) check_same_device(x, *p, op);
    }
  SPARROW_CHECK(training || (running_mean.defined() && running_var.defined()),
                op, ": eval mode needs running statistics");
  if (training) SPARROW_CHECK(int64_t(s.n) * s.hw > 1, op, ": training needs more than one value per channel, got input ",
                              x.shape_str());
  return s;
}

template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? const_cast<T*>(t.data<T>()) : nullptr;
}
}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum, double eps) {
  SPARROW_NVTX_RANGE("batch_norm_fwd");
  const BatchNormShape s = batch_norm_shape(x, gamma, beta, running_mean, running_var, training, "batch_norm");
  const bool cuda = use_cuda(x, "batch_norm");
  Tensor y = like(x);
  Tensor save_mean = Tensor::empty({s.c}, x.dtype(), x.device()), save_invstd = Tensor::empty({s.c}, x.dtype(), x.device());
  if (cuda) {
#if SPARROW_HAS_CUDA
    const float* g = data_or_null<float>(gamma);
    const float* b = data_or_null<float>(beta);
    if (training)
      batchnorm_forward_train_cuda(s, x.data<float>(), g, b, y.data<float>(), save_mean.data<float>(),
                                   save_invstd.data<float>(), data_or_null<float>(running_mean),
                                   data_or_null<float>(running_var), momentum, eps);
    else
      batchnorm_forward_eval_cuda(s, x.data<float>(), g, b, running_mean.data<float>(), running_var.data<float>(), eps,
                                  y.data<float>());
#endif
  } else dispatch_float(x, "batch_norm", [&](auto t) {
    using T = decltype(t);
    const T* g = data_or_null<T>(gamma);
    const T* b = data_or_null<T>(beta);
    if (training) {
      batchnorm_forward_train_cpu<T>(s, x.data<T>(), g, b, y.data<T>(), save_mean.data<T>(), save_invstd.data<T>(),
                                     data_or_null<T>(running_mean), data_or_null<T>(running_var), momentum, eps);
    } else {
      batchnorm_forward_eval_cpu<T>(s, x.data<T>(), g, b, running_mean.data<T>(), running_var.data<T>(), eps,
                                    y.data<T>());
    }
  });
  Tensor xd = x.detach();
  Tensor gd = gamma.defined() ? gamma.detach() : Tensor();
  // Eval-mode backward treats the statistics as constants: snapshot them now.
  Tensor rm = training ? Tensor() : running_mean.clone(), rv = training ? Tensor() : running_var.clone();
  std::vector<Tensor> inputs{x, gamma, beta};
  return record(y, "batch_norm", inputs,
                [s, xd, gd, save_mean, save_invstd, rm, rv, training, eps](const Tensor& g, const std::vector<bool>& needs) {
    SPARROW_NVTX_RANGE("batch_norm_bwd");
    Tensor dx = like(xd);
    Tensor dgamma = Tensor::empty({s.c}, g.dtype(), g.device()), dbeta = Tensor::empty({s.c}, g.dtype(), g.device());
    if (use_cuda(g, "batch_norm_backward")) {
#if SPARROW_HAS_CUDA
      const float* gp = gd.defined() ? gd.data<float>() : nullptr;
      if (training)
        batchnorm_backward_train_cuda(s, xd.data<float>(), g.data<float>(), gp, save_mean.data<float>(),
                                      save_invstd.data<float>(), dx.data<float>(), dgamma.data<float>(),
                                      dbeta.data<float>());
      else
        batchnorm_backward_eval_cuda(s, xd.data<float>(), g.data<float>(), gp, rm.data<float>(), rv.data<float>(), eps,
                                     dx.data<float>(), dgamma.data<float>(), dbeta.data<float>());
#endif
    } else dispatch_float(g, "batch_norm_backward", [&](auto t) {
      using T = decltype(t);
      const T* gp = gd.defined() ? gd.data<T>() : nullptr;
      if (training)
        batchnorm_backward_train_cpu<T>(s, xd.data<T>(), g.data<T>(), gp, save_mean.data<T>(), save_invstd.data<T>(),
                                        dx.data<T>(), dgamma.data<T>(), dbeta.data<T>());
      else
        batchnorm_backward_eval_cpu<T>(s, xd.data<T>(), g.data<T>(), gp, rm.data<T>(), rv.data<T>(), eps, dx.data<T>(),
                                       dgamma.data<T>(), dbeta.data<T>());
    });
    return std::vector<Tensor>{needs[0] ? dx : Tensor(), needs[1] ? dgamma : Tensor(), needs[2] ? dbeta : Tensor()};
  });
}

Tensor batch_norm_relu(const Tensor& x, const Tensor& residual, const Tensor& gamma, const Tensor& beta,
                       const Tensor& running_mean, const Tensor& running_var, bool training, double momentum,
                       double eps, const ChannelMoments* moments) {
  const BatchNormShape s = batch_norm_shape(x, gamma, beta, running_mean, running_var, training, "batch_norm_relu");
  if (residual.defined()) check_same_shape(x, residual, "batch_norm_relu");
  if (use_cuda(x, "batch_norm_relu")) {
    // No fused CUDA kernel: the composition (same results as the separate ops).
    Tensor y = batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps);
    return relu(residual.defined() ? add(y, residual) : y);
  }
  SPARROW_NVTX_RANGE("batch_norm_relu_fwd");
  Tensor y = like(x);
  Tensor save_mean = Tensor::empty({s.c}, x.dtype(), x.device()), save_invstd = Tensor::empty({s.c}, x.dtype(), x.device());
  dispatch_float(x, "batch_norm_relu", [&](auto t) {
    using T = decltype(t);
    if (training)
      batchnorm_relu_forward_train_cpu<T>(s, x.data<T>(), data_or_null<T>(residual), data_or_null<T>(gamma),
                                          data_or_null<T>(beta), y.data<T>(), save_mean.data<T>(), save_invstd.data<T>(),
                                          data_or_null<T>(running_mean), data_or_null<T>(running_var), momentum, eps,
                                          moments && moments->count > 0 ? moments : nullptr);
    else
      batchnorm_relu_forward_eval_cpu<T>(s, x.data<T>(), data_or_null<T>(residual), data_or_null<T>(gamma),
                                         data_or_null<T>(beta), running_mean.data<T>(), running_var.data<T>(), eps,
                                         y.data<T>());
  });
  Tensor xd = x.detach();
  Tensor gd = gamma.defined() ? gamma.detach() : Tensor(), bd = beta.defined() ? beta.detach() : Tensor();
  // Without a residual, training backward recomputes the ReLU mask from x (no pass over y); otherwise the
  // mask comes from y and the masked gradient is also the residual's.
  const bool with_res = residual.defined();
  Tensor yd = (with_res || !training) ? y.detach() : Tensor();
  Tensor rm = training ? Tensor() : running_mean.clone(), rv = training ? Tensor() : running_var.clone();
  return record(y, "batch_norm_relu", {x, residual, gamma, beta},
                [s, xd, gd, bd, yd, save_mean, save_invstd, rm, rv, training, with_res, eps](
                    const Tensor& g, const std::vector<bool>& needs) {
    SPARROW_NVTX_RANGE("batch_norm_relu_bwd");
    Tensor dx = like(xd), dz;
    Tensor dgamma = Tensor::empty({s.c}, g.dtype(), g.device()), dbeta = Tensor::empty({s.c}, g.dtype(), g.device());
    dispatch_float(g, "batch_norm_relu_backward", [&](auto t) {
      using T = decltype(t);
      if (training && !with_res) {
        batchnorm_relu_backward_train_cpu<T>(s, xd.data<T>(), g.data<T>(), data_or_null<T>(gd), data_or_null<T>(bd),
                                             save_mean.data<T>(), save_invstd.data<T>(), dx.data<T>(), dgamma.data<T>(),
                                             dbeta.data<T>());
        return;
      }
      dz = like(g);  // the gradient after the ReLU mask: also the residual's
      if (training) {
        batchnorm_relu_residual_backward_train_cpu<T>(s, xd.data<T>(), yd.data<T>(), g.data<T>(), data_or_null<T>(gd),
                                                      save_mean.data<T>(), save_invstd.data<T>(), dx.data<T>(),
                                                      dz.data<T>(), dgamma.data<T>(), dbeta.data<T>());
        return;
      }
      relu_backward_cpu<T>(g.numel(), yd.data<T>(), g.data<T>(), dz.data<T>());
      batchnorm_backward_eval_cpu<T>(s, xd.data<T>(), dz.data<T>(), data_or_null<T>(gd), rm.data<T>(), rv.data<T>(), eps,
                                     dx.data<T>(), dgamma.data<T>(), dbeta.data<T>());
    });
    return std::vector<Tensor>{needs[0] ? dx : Tensor(), needs[1] ? dz : Tensor(), needs[2] ? dgamma : Tensor(),
                               needs[3] ? dbeta : Tensor()};
  });
}

// ---------------------------------------------------------------- pooling

Tensor max_pool2d(const Tensor& x, int k, int stride, int pad) {
  SPARROW_NVTX_RANGE("max_pool2d_fwd");
  check_float(x, "max_pool2d", "x");
  SPARROW_CHECK(x.dim() == 4, "max_pool2d: expected N×C×H×W, got ", x.shape_str());
  SPARROW_CHECK(k >= 1 && stride >= 1 && pad >= 0 && 2 * pad <= k, "max_pool2d: bad window ", k, "/", stride, "/", pad);
  const bool cuda = use_cuda(x, "max_pool2d");
  Pool2dShape s{int(x.size(0)), int(x.size(1)), int(x.size(2)), int(x.size(3)), k, stride, pad};
  SPARROW_CHECK(s.h + 2 * pad >= k && s.w + 2 * pad >= k, "max_pool2d: input ", x.shape_str(), " too small for window ", k);
  Tensor y = Tensor::empty({s.n, s.c, s.oh(), s.ow()}, x.dtype(), x.device());
  Tensor argmax = Tensor::empty(y.shape(), DType::I32, x.device());
  if (cuda) {
#if SPARROW_HAS_CUDA
    max_pool2d_forward_cuda(s, x.data<float>(), y.data<float>(), argmax.data<int32_t>());
#endif
  } else dispatch_float(x, "max_pool2d", [&](auto t) {
    using T = decltype(t);
    max_pool2d_forward_cpu<T>(s, x.data<T>(), y.data<T>(), argmax.data<int32_t>());
  });
  Shape xs = x.shape();
  return record(y, "max_pool2d", {x}, [s, argmax, xs](const Tensor& g, const std::vector<bool>&) {
    SPARROW_NVTX_RANGE("max_pool2d_bwd");
    Tensor dx = Tensor::empty(xs, g.dtype(), g.device());
    if (use_cuda(g, "max_pool2d_backward")) {
#if SPARROW_HAS_CUDA
      max_pool2d_backward_cuda(s, g.data<float>(), argmax.data<int32_t>(), dx.data<float>());
#endif
    } else dispatch_float(g, "max_pool2d_backward", [&](auto t) {
      using T = decltype(t);
      max_pool2d_backward_cpu<T>(s, g.data<T>(), argmax.data<int32_t>(), dx.data<T>());
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor avg_pool2d(const Tensor& x, int k, int stride, int pad) {
  SPARROW_NVTX_RANGE("avg_pool2d_fwd");
  check_float(x, "avg_pool2d", "x");
  SPARROW_CHECK(x.dim() == 4, "avg_pool2d: expected N×C×H×W, got ", x.shape_str());
  SPARROW_CHECK(k >= 1 && stride >= 1 && pad >= 0 && 2 * pad <= k, "avg_pool2d: bad window ", k, "/", stride, "/", pad);
  const bool cuda = use_cuda(x, "avg_pool2d");
  Pool2dShape s{int(x.size(0)), int(x.size(1)), int(x.size(2)), int(x.size(3)), k, stride, pad};
  SPARROW_CHECK(s.h + 2 * pad >= k && s.w + 2 * pad >= k, "avg_pool2d: input ", x.shape_str(), " too small for window ", k);
  Tensor y = Tensor::empty({s.n, s.c, s.oh(), s.ow()}, x.dtype(), x.device());
  if (cuda) {
#if SPARROW_HAS_CUDA
    avg_pool2d_forward_cuda(s, x.data<float>(), y.data<float>());
#endif
  } else dispatch_float(x, "avg_pool2d", [&](auto t) {
    using T = decltype(t);
    avg_pool2d_forward_cpu<T>(s, x.data<T>(), y.data<T>());
  });
  Shape xs = x.shape();
  return record(y, "avg_pool2d", {x}, [s, xs](const Tensor& g, const std::vector<bool>&) {
    SPARROW_NVTX_RANGE("avg_pool2d_bwd");
    Tensor dx = Tensor::empty(xs, g.dtype(), g.device());
    if (use_cuda(g, "avg_pool2d_backward")) {
#if SPARROW_HAS_CUDA
      avg_pool2d_backward_cuda(s, g.data<float>(), dx.data<float>());
#endif
    } else dispatch_float(g, "avg_pool2d_backward", [&](auto t) {
      using T = decltype(t);
      avg_pool2d_backward_cpu<T>(s, g.data<T>(), dx.data<T>());
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor global_avg_pool(const Tensor& x) {
  SPARROW_NVTX_RANGE("global_avg_pool_fwd");
  check_float(x, "global_avg_pool", "x");
  SPARROW_CHECK(x.dim() == 4, "global_avg_pool: expected N×C×H×W, got ", x.shape_str());
  const bool cuda = use_cuda(x, "global_avg_pool");
  const int n = int(x.size(0)), c = int(x.size(1)), hw = int(x.size(2) * x.size(3));
  Tensor y = Tensor::empty({n, c}, x.dtype(), x.device());
  if (cuda) {
#if SPARROW_HAS_CUDA
    global_avg_pool_forward_cuda(n, c, hw, x.data<float>(), y.data<float>());
#endif
  } else dispatch_float(x, "global_avg_pool", [&](auto t) {
    using T = decltype(t);
    global_avg_pool_forward_cpu<T>(n, c, hw, x.data<T>(), y.data<T>());
  });
  Shape xs = x.shape();
  return record(y, "global_avg_pool", {x}, [n, c, hw, xs](const Tensor& g, const std::vector<bool>&) {
    SPARROW_NVTX_RANGE("global_avg_pool_bwd");
    Tensor dx = Tensor::empty(xs, g.dtype(), g.device());
    if (use_cuda(g, "global_avg_pool_backward")) {
#if SPARROW_HAS_CUDA
      global_avg_pool_backward_cuda(n, c, hw, g.data<float>(), dx.data<float>());
#endif
    } else dispatch_float(g, "global_avg_pool_backward", [&](auto t) {
      using T = decltype(t);
      global_avg_pool_backward_cpu<T>(n, c, hw, g.data<T>(), dx.data<T>());
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor shortcut_a(const Tensor& x, int cout, int stride) {
  SPARROW_NVTX_RANGE("shortcut_a_fwd");
  check_float(x, "shortcut_a", "x");
  SPARROW_CHECK(x.dim() == 4 && cout > 0 && stride >= 1, "shortcut_a: bad input ", x.shape_str(), " cout ", cout,
                " stride ", stride);
  const bool cuda = use_cuda(x, "shortcut_a");
  const int n = int(x.size(0)), cin = int(x.size(1)), h = int(x.size(2)), w = int(x.size(3));
  const int oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
  Tensor y = Tensor::empty({n, cout, oh, ow}, x.dtype(), x.device());
  if (cuda) {
#if SPARROW_HAS_CUDA
    shortcut_a_forward_cuda(n, cin, h, w, cout, stride, x.data<float>(), y.data<float>());
#endif
  } else dispatch_float(x, "shortcut_a", [&](auto t) {
    using T = decltype(t);
    shortcut_a_forward_cpu<T>(n, cin, h, w, cout, stride, x.data<T>(), y.data<T>());
  });
  Shape xs = x.shape();
  return record(y, "shortcut_a", {x}, [=](const Tensor& g, const std::vector<bool>&) {
    SPARROW_NVTX_RANGE("shortcut_a_bwd");
    Tensor dx = Tensor::empty(xs, g.dtype(), g.device());
    if (use_cuda(g, "shortcut_a_backward")) {
#if SPARROW_HAS_CUDA
      shortcut_a_backward_cuda(n, cin, h, w, cout, stride, g.data<float>(), dx.data<float>());
#endif
    } else dispatch_float(g, "shortcut_a_backward", [&](auto t) {
      using T = decltype(t);
      shortcut_a_backward_cpu<T>(n, cin, h, w, cout, stride, g.data<T>(), dx.data<T>());
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor dropout(const Tensor& x, double p, bool training, Rng& rng) {
  SPARROW_CHECK(p >= 0 && p < 1, "dropout: probability ", p, " outside [0, 1)");
  if (!training || p == 0) return x;
  SPARROW_NVTX_RANGE("dropout");
  check_float(x, "dropout", "x");
  if (use_cuda(x, "dropout")) {
    // The mask comes from the same host random stream as on the CPU (so a seed means the same mask on
    // either device), then travels to the device.
    Tensor mask = Tensor::empty(x.shape(), DType::F32);
    float* m = mask.data<float>();
    const float keep = float(1.0 / (1.0 - p));
    for (int64_t i = 0, n = x.numel(); i < n; ++i) m[i] = rng.uniform() >= p ? keep : 0.0f;
    return mul(x, mask.to(x.device()));
  }
  Tensor mask = like(x);
  dispatch_float(x, "dropout", [&](auto t) {
    using T = decltype(t);
    T* m = mask.data<T>();
    const T keep = T(1.0 / (1.0 - p));
    for (int64_t i = 0, n = x.numel(); i < n; ++i) m[i] = rng.uniform() >= p ? keep : T(0);
  });
  return mul(x, mask);
}

// ---------------------------------------------------------------- softmax family

Tensor softmax(const Tensor& x) {
  SPARROW_NVTX_RANGE("softmax");
  check_float(x, "softmax", "x");
  SPARROW_CHECK(x.dim() == 2, "softmax: expected B×C, got ", x.shape_str());
  const bool cuda = use_cuda(x, "softmax");
  const int r = int(x.size(0)), c = int(x.size(1));
  Tensor y = like(x);
  if (cuda) {
#if SPARROW_HAS_CUDA
    softmax_forward_cuda(r, c, x.data<float>(), y.data<float>());
#endif
  } else dispatch_float(x, "softmax", [&](auto t) {
    using T = decltype(t);
    softmax_forward_cpu<T>(r, c, x.data<T>(), y.data<T>());
  });
  Tensor yd = y.detach();
  return record(y, "softmax", {x}, [yd, r, c](const Tensor& g, const std::vector<bool>&) {
    Tensor dx = like(g);
    if (use_cuda(g, "softmax_backward")) {
#if SPARROW_HAS_CUDA
      softmax_backward_cuda(r, c, yd.data<float>(), g.data<float>(), dx.data<float>());
#endif
    } else dispatch_float(g, "softmax_backward", [&](auto t) {
      using T = decltype(t);
      softmax_backward_cpu<T>(r, c, yd.data<T>(), g.data<T>(), dx.data<T>());
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor log_softmax(const Tensor& x) {
  SPARROW_NVTX_RANGE("log_softmax");
  check_float(x, "log_softmax", "x");
  SPARROW_CHECK(x.dim() == 2, "log_softmax: expected B×C, got ", x.shape_str());
  const bool cuda = use_cuda(x, "log_softmax");
  const int r = int(x.size(0)), c = int(x.size(1));
  Tensor y = like(x);
  if (cuda) {
#if SPARROW_HAS_CUDA
    log_softmax_forward_cuda(r, c, x.data<float>(), y.data<float>());
#endif
  } else dispatch_float(x, "log_softmax", [&](auto t) {
    using T = decltype(t);
    log_softmax_forward_cpu<T>(r, c, x.data<T>(), y.data<T>());
  });
  Tensor yd = y.detach();
  return record(y, "log_softmax", {x}, [yd, r, c](const Tensor& g, const std::vector<bool>&) {
    Tensor dx = like(g);
    if (use_cuda(g, "log_softmax_backward")) {
#if SPARROW_HAS_CUDA
      log_softmax_backward_cuda(r, c, yd.data<float>(), g.data<float>(), dx.data<float>());
#endif
    } else dispatch_float(g, "log_softmax_backward", [&](auto t) {
      using T = decltype(t);
      log_softmax_backward_cpu<T>(r, c, yd.data<T>(), g.data<T>(), dx.data<T>());
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor cross_entropy(const Tensor& logits, const Tensor& labels) {
  SPARROW_NVTX_RANGE("cross_entropy");
  check_float(logits, "cross_entropy", "logits");
  SPARROW_CHECK(logits.dim() == 2, "cross_entropy: expected logits B×C, got ", logits.shape_str());
  SPARROW_CHECK(labels.dtype() == DType::I64 && labels.numel() == logits.size(0), "cross_entropy: labels must be I64 of ",
                logits.size(0), " entries, got ", dtype_name(labels.dtype()), " ", labels.shape_str());
  const bool cuda = use_cuda(logits, "cross_entropy");
  const int r = int(logits.size(0)), c = int(logits.size(1));
  SPARROW_CHECK(r > 0, "cross_entropy of an empty batch");
  const bool want_grad = grad_enabled() && needs_grad(logits);
  Tensor dlogits = want_grad ? like(logits) : Tensor();
  if (cuda) {
    Tensor lab = labels;
    if (labels.device() == Device::CPU) {
      // Host labels are checked here for free, then uploaded; device labels cannot be checked without a
      // host round trip, so a bad one makes the loss NaN instead (softmax_xent_cuda).
      const int64_t* pl = labels.data<int64_t>();
      for (int i = 0; i < r; ++i)
        SPARROW_CHECK(pl[i] >= 0 && pl[i] < c, "cross_entropy: label ", pl[i], " of row ", i, " is out of range [0, ", c,
                      ")");
      lab = labels.to(logits.device());
    }
    Tensor loss = Tensor::empty({}, logits.dtype(), logits.device());
#if SPARROW_HAS_CUDA
    softmax_xent_cuda(r, c, logits.data<float>(), lab.data<int64_t>(), loss.data<float>(),
                      want_grad ? dlogits.data<float>() : nullptr);
#endif
    return record(loss, "cross_entropy", {logits}, [dlogits](const Tensor& g, const std::vector<bool>&) {
      Tensor dx = like(dlogits);
      SPARROW_CHECK(g.device() == dlogits.device() && g.dtype() == DType::F32,
                    "cross_entropy backward: output gradient on ", device_name(g.device()), "/", dtype_name(g.dtype()),
                    ", logits on cuda/F32");
#if SPARROW_HAS_CUDA
      scale_by_scalar_cuda(dx.numel(), g.data<float>(), dlogits.data<float>(), dx.data<float>());
#endif
      return std::vector<Tensor>{dx};
    });
  }
  SPARROW_CHECK(labels.device() == Device::CPU, "cross_entropy: labels on ", device_name(labels.device()),
                " for logits on the CPU");
  Tensor loss = Tensor::empty({}, logits.dtype());
  dispatch_float(logits, "cross_entropy", [&](auto t) {
    using T = decltype(t);
    const double l = softmax_xent_cpu<T>(r, c, logits.data<T>(), labels.data<int64_t>(),
                                         want_grad ? dlogits.data<T>() : nullptr);
    loss.data<T>()[0] = T(l);
  });
  return record(loss, "cross_entropy", {logits}, [dlogits](const Tensor& g, const std::vector<bool>&) {
    NoGradGuard ng;
    return std::vector<Tensor>{scale(dlogits, g.item())};
  });
}

int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  SPARROW_CHECK(logits.dim() == 2 && labels.numel() == logits.size(0), "count_correct: logits ", logits.shape_str(),
                " and labels ", labels.shape_str());
  const std::vector<double> z = logits.to_vector<double>();
  const std::vector<int64_t> y = labels.to_vector<int64_t>();
  const int64_t r = logits.size(0), c = logits.size(1);
  int64_t correct = 0;
  for (int64_t i = 0; i < r; ++i) {
    int64_t best = 0;
    for (int64_t j = 1; j < c; ++j)
      if (z[size_t(i * c + j)] > z[size_t(i * c + best)]) best = j;
    correct += best == y[size_t(i)];
  }
  return correct;
}

}  // namespace sparrow
