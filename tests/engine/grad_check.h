// Central finite-difference gradient check in double: L = Σ f(inputs) ⊙ R for a fixed random R, the
// analytic dL/dinput from autograd against (L(x+ε) − L(x−ε)) / 2ε on every (or a sampled set of) element.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "engine/base/rng.h"
#include "engine/ops.h"

namespace sparrow::testing {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

inline double weighted_sum(const Tensor& y, const Tensor& r) {
  const auto a = y.to_vector<double>(), b = r.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks every input that requires grad. max_elems samples elements of big inputs deterministically.
inline void check_gradients(const Fn& f, std::vector<Tensor> inputs, double eps = 1e-6, double atol = 1e-7,
                            double rtol = 1e-5, int max_elems = 400, uint64_t seed = 7) {
  Tensor y0 = f(inputs);
  Rng rng(seed);
  Tensor r = Tensor::randn(y0.shape(), rng, 0, 1, DType::F64);
  for (auto& t : inputs)
    if (t.requires_grad()) t.impl().grad = nullptr;
  Tensor loss = sum(mul(f(inputs), r));
  loss.backward();
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor x = inputs[k];
    if (!x.requires_grad()) continue;
    ASSERT_TRUE(x.grad().defined()) << "input " << k << " got no gradient";
    const auto analytic = x.grad().to_vector<double>();
    double* p = x.data<double>();
    const int64_t n = x.numel();
    const int64_t step = n > max_elems ? (n + max_elems - 1) / max_elems : 1;
    double max_abs = 0;
    for (int64_t i = 0; i < n; i += step) {
      const double orig = p[i];
      double lp, lm;
      {
        NoGradGuard ng;
        p[i] = orig + eps;
        lp = weighted_sum(f(inputs), r);
        p[i] = orig - eps;
        lm = weighted_sum(f(inputs), r);
        p[i] = orig;
      }
      const double numeric = (lp - lm) / (2 * eps);
      max_abs = std::max(max_abs, std::fabs(numeric));
      EXPECT_LE(std::fabs(numeric - analytic[size_t(i)]), atol + rtol * std::fabs(numeric))
          << "input " << k << " element " << i << ": numeric " << numeric << " analytic " << analytic[size_t(i)];
    }
    EXPECT_GT(max_abs, 0.0) << "input " << k << ": all sampled numeric gradients are zero (vacuous check)";
  }
}

inline Tensor rand_input(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  Rng rng(seed);
  Tensor t = Tensor::uniform(s, rng, lo, hi, DType::F64);
  t.set_requires_grad(true);
  return t;
}

}  // namespace sparrow::testing
