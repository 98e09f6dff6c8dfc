// Tensor basics: factories, views sharing storage, batch slices, conversions, copies, errors.
#include <gtest/gtest.h>

#include "engine/base/rng.h"
#include "engine/tensor.h"

using namespace sparrow;

TEST(Tensor, FactoriesAndShape) {
  Tensor t = Tensor::full({2, 3}, 1.5);
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.dim(), 2);
  EXPECT_EQ(t.size(-1), 3);
  EXPECT_EQ(t.shape_str(), "[2,3]");
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, 1.5f);
  EXPECT_EQ(Tensor::zeros({4}, DType::I64).to_vector<int64_t>(), std::vector<int64_t>(4, 0));
  EXPECT_EQ(Tensor::scalar(2.5, DType::F64).item(), 2.5);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(Tensor::empty({17}).raw_data()) % 64, 0u) << "CPU storage is 64-byte aligned";
}

TEST(Tensor, ViewsAndSlicesShareStorage) {
  Tensor t = Tensor::from_vector<float>({3, 2}, {0, 1, 2, 3, 4, 5});
  Tensor v = t.view({6});
  Tensor s = t.slice_batch(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2}));
  EXPECT_EQ(s.to_vector<float>(), (std::vector<float>{2, 3, 4, 5}));
  s.data<float>()[0] = 42;
  EXPECT_EQ(t.to_vector<float>()[2], 42);
  EXPECT_EQ(v.to_vector<float>()[2], 42);
  EXPECT_THROW(t.view({4}), Error);
  EXPECT_THROW(t.slice_batch(2, 4), Error);
}

TEST(Tensor, CloneDetachConvertCopy) {
  Tensor t = Tensor::from_vector<double>({2}, {1.25, -2});
  Tensor c = t.clone();
  c.data<double>()[0] = 9;
  EXPECT_EQ(t.to_vector<double>()[0], 1.25);
  EXPECT_EQ(t.to(DType::F32).to_vector<float>(), (std::vector<float>{1.25f, -2.f}));
  EXPECT_EQ(t.to(DType::I64).to_vector<int64_t>(), (std::vector<int64_t>{1, -2}));
  Tensor d = Tensor::zeros({2});
  d.copy_(t);
  EXPECT_EQ(d.to_vector<float>(), (std::vector<float>{1.25f, -2.f}));
  EXPECT_THROW(d.copy_(Tensor::zeros({3})), Error);
}

TEST(Tensor, DtypeMismatchIsAnError) {
  Tensor t = Tensor::zeros({2});
  EXPECT_THROW(t.data<double>(), Error);
  EXPECT_THROW(Tensor::zeros({2}, DType::I64).set_requires_grad(true), Error);
  EXPECT_THROW(Tensor::empty({2, -1}), Error);
}

TEST(Tensor, RandnIsSeededAndHasTheRightMoments) {
  Rng a(5), b(5);
  Tensor x = Tensor::randn({20000}, a, 0, 2, DType::F64);
  EXPECT_EQ(x.to_vector<double>(), Tensor::randn({20000}, b, 0, 2, DType::F64).to_vector<double>());
  double m = 0, v = 0;
  for (double e : x.to_vector<double>()) m += e;
  m /= 20000;
  for (double e : x.to_vector<double>()) v += (e - m) * (e - m);
  v /= 20000;
  EXPECT_NEAR(m, 0, 0.05);
  EXPECT_NEAR(v, 4, 0.15);
}

TEST(Tensor, CudaRequestWithoutDeviceIsAClearError) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present; this checks the no-device path";
  try {
    Tensor::zeros({2}, DType::F32, Device::CUDA);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
  }
}
