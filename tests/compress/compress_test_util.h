// Helpers for the compress tests: a smooth activation (tanh, so finite differences are a valid oracle
// for second-order quantities, ALGORITHMS.md §1), tiny double-precision nets, and a tolerance check
// that fails on an all-zero reference and reports the worst index.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "compress/prunable.h"
#include "engine/nn.h"

namespace sparrow::testing {

inline Tensor tanh_op(const Tensor& x) {
  std::vector<double> v = x.to_vector<double>();
  for (double& e : v) e = std::tanh(e);
  Tensor y = Tensor::from_vector<double>(x.shape(), v).to(x.dtype());
  Tensor yd = y.detach();
  return record(y, "tanh", {x}, [yd](const Tensor& g, const std::vector<bool>&) {
    std::vector<double> gy = g.to_vector<double>(), yy = yd.to_vector<double>();
    for (size_t i = 0; i < gy.size(); ++i) gy[i] *= 1.0 - yy[i] * yy[i];
    return std::vector<Tensor>{Tensor::from_vector<double>(g.shape(), gy).to(g.dtype())};
  });
}

class Tanh : public Module {
 public:
  Tensor forward(const Tensor& x) override { return tanh_op(x); }
  const char* type_name() const override { return "Tanh"; }
};

// Conv(2→3, 3×3, pad 1) → BN → tanh → global average pool → Linear(3→4), in double. Input N×2×5×5.
inline std::shared_ptr<Sequential> tiny_conv_net(uint64_t seed) {
  Rng rng(seed);
  auto s = std::make_shared<Sequential>();
  s->push_back(std::make_shared<Conv2d>(2, 3, 3, 1, 1, true, rng));
  s->push_back(std::make_shared<BatchNorm2d>(3));
  s->push_back(std::make_shared<Tanh>());
  s->push_back(std::make_shared<GlobalAvgPool>());
  s->push_back(std::make_shared<Linear>(3, 4, true, rng));
  convert_module_dtype(*s, DType::F64);
  return s;
}

// Linear(5→6) → BN → tanh → Linear(6→4), in double. Input N×5.
inline std::shared_ptr<Sequential> tiny_mlp(uint64_t seed) {
  Rng rng(seed);
  auto s = std::make_shared<Sequential>();
  s->push_back(std::make_shared<Linear>(5, 6, true, rng));
  s->push_back(std::make_shared<BatchNorm2d>(6));
  s->push_back(std::make_shared<Tanh>());
  s->push_back(std::make_shared<Linear>(6, 4, true, rng));
  convert_module_dtype(*s, DType::F64);
  return s;
}

inline Tensor random_labels(int64_t n, int classes, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (auto& v : y) v = int64_t(rng.below(uint64_t(classes)));
  return Tensor::from_vector<int64_t>({n}, y);
}

// |got − ref| ≤ atol + rtol·|ref| everywhere; fails on an all-zero reference.
inline void expect_close(const std::vector<double>& got, const std::vector<double>& ref, double atol, double rtol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double ref_max = 0, worst = -1e300;
  size_t worst_i = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    ref_max = std::max(ref_max, std::fabs(ref[i]));
    const double excess = std::fabs(got[i] - ref[i]) - (atol + rtol * std::fabs(ref[i]));
    if (excess > worst) worst = excess, worst_i = i;
  }
  EXPECT_GT(ref_max, 0.0) << what << ": all-zero reference";
  EXPECT_LE(worst, 0.0) << what << ": worst index " << worst_i << " got " << got[worst_i] << " ref " << ref[worst_i];
}

inline std::vector<double> flat(const std::vector<Tensor>& ts) {
  std::vector<double> out;
  for (const Tensor& t : ts) {
    auto v = t.to_vector<double>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

}  // namespace sparrow::testing
