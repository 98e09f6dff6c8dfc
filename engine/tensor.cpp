// Tensor factories, views, copies and conversions.
#include "engine/tensor.h"

#include <cstring>

#include "engine/autograd.h"
#include "engine/base/rng.h"
#include "kernels/elementwise/elementwise.h"

namespace sparrow {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

TensorImpl& Tensor::impl() const {
  SPARROW_CHECK(impl_ != nullptr, "use of an undefined tensor");
  return *impl_;
}

int64_t Tensor::size(int64_t d) const {
  const int64_t n = dim();
  if (d < 0) d += n;
  SPARROW_CHECK(d >= 0 && d < n, "dimension ", d, " out of range for a tensor of shape ", shape_str());
  return shape()[size_t(d)];
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) SPARROW_CHECK(d >= 0, "negative dimension in shape ", sparrow::shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->dtype = dtype;
  impl->device = device;
  return Tensor(impl);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

template <typename T>
Tensor Tensor::from_vector(const Shape& shape, const std::vector<T>& values, Device device) {
  SPARROW_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
                " values for shape ", sparrow::shape_str(shape));
  Tensor t = empty(shape, dtype_of<T>::value, device);
  copy_bytes(t.raw_data(), device, values.data(), Device::CPU, values.size() * sizeof(T));
  return t;
}
template Tensor Tensor::from_vector<float>(const Shape&, const std::vector<float>&, Device);
template Tensor Tensor::from_vector<double>(const Shape&, const std::vector<double>&, Device);
template Tensor Tensor::from_vector<int32_t>(const Shape&, const std::vector<int32_t>&, Device);
template Tensor Tensor::from_vector<int64_t>(const Shape&, const std::vector<int64_t>&, Device);
template Tensor Tensor::from_vector<uint8_t>(const Shape&, const std::vector<uint8_t>&, Device);

Tensor Tensor::randn(const Shape& shape, Rng& rng, double mean, double std, DType dtype) {
  Tensor t = empty(shape, dtype);
  const int64_t n = t.numel();
  if (dtype == DType::F64) {
    double* p = t.data<double>();
    for (int64_t i = 0; i < n; ++i) p[i] = mean + std * rng.normal();
  } else {
    float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = float(mean + std * rng.normal());
  }
  return t;
}

Tensor Tensor::uniform(const Shape& shape, Rng& rng, double lo, double hi, DType dtype) {
  Tensor t = empty(shape, dtype);
  const int64_t n = t.numel();
  if (dtype == DType::F64) {
    double* p = t.data<double>();
    for (int64_t i = 0; i < n; ++i) p[i] = rng.uniform(lo, hi);
  } else {
    float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = float(rng.uniform(lo, hi));
  }
  return t;
}

template <typename T>
T* Tensor::data() {
  SPARROW_CHECK(dtype() == dtype_of<T>::value, "tensor of dtype ", dtype_name(dtype()), " accessed as ",
                dtype_name(dtype_of<T>::value));
  return static_cast<T*>(raw_data());
}
template <typename T>
const T* Tensor::data() const {
  SPARROW_CHECK(dtype() == dtype_of<T>::value, "tensor of dtype ", dtype_name(dtype()), " accessed as ",
                dtype_name(dtype_of<T>::value));
  return static_cast<const T*>(raw_data());
}
#define SPARROW_INST_DATA(T) \
  template T* Tensor::data<T>(); \
  template const T* Tensor::data<T>() const;
SPARROW_INST_DATA(float)
SPARROW_INST_DATA(double)
SPARROW_INST_DATA(int32_t)
SPARROW_INST_DATA(int64_t)
SPARROW_INST_DATA(uint8_t)
#undef SPARROW_INST_DATA

void* Tensor::raw_data() {
  auto& i = impl();
  return static_cast<char*>(i.storage->data()) + i.offset * int64_t(dtype_size(i.dtype));
}
const void* Tensor::raw_data() const {
  auto& i = impl();
  return static_cast<const char*>(i.storage->data()) + i.offset * int64_t(dtype_size(i.dtype));
}

Tensor Tensor::view(const Shape& shape) const {
  SPARROW_CHECK(shape_numel(shape) == numel(), "cannot view a tensor of shape ", shape_str(), " as ",
                sparrow::shape_str(shape));
  auto v = std::make_shared<TensorImpl>(impl());
  v->shape = shape;
  v->requires_grad = false;
  v->grad = nullptr;
  v->grad_fn = nullptr;
  return Tensor(v);
}

Tensor Tensor::slice_batch(int64_t begin, int64_t end) const {
  SPARROW_CHECK(dim() >= 1 && begin >= 0 && begin <= end && end <= size(0), "slice_batch [", begin, ", ", end,
                ") out of range for shape ", shape_str());
  auto v = std::make_shared<TensorImpl>(impl());
  const int64_t row = size(0) ? numel() / size(0) : 0;
  v->offset += begin * row;
  v->shape[0] = end - begin;
  v->requires_grad = false;
  v->grad = nullptr;
  v->grad_fn = nullptr;
  return Tensor(v);
}

Tensor Tensor::to(Device device) const {
  if (device == this->device()) return *this;
  Tensor t = empty(shape(), dtype(), device);
  copy_bytes(t.raw_data(), device, raw_data(), this->device(), nbytes());
  return t;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor t = empty(shape(), dt, device());
  t.copy_(*this);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape(), dtype(), device());
  copy_bytes(t.raw_data(), device(), raw_data(), device(), nbytes());
  return t;
}

Tensor Tensor::detach() const {
  auto v = std::make_shared<TensorImpl>(impl());
  v->requires_grad = false;
  v->grad = nullptr;
  v->grad_fn = nullptr;
  return Tensor(v);
}

namespace {
template <typename D, typename S>
void convert(int64_t n, const S* s, D* d) {
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[i]);
}
template <typename D>
void convert_from(const Tensor& src, int64_t n, D* d) {
  switch (src.dtype()) {
    case DType::F32: convert(n, src.data<float>(), d); break;
    case DType::F64: convert(n, src.data<double>(), d); break;
    case DType::I32: convert(n, src.data<int32_t>(), d); break;
    case DType::I64: convert(n, src.data<int64_t>(), d); break;
    case DType::U8: convert(n, src.data<uint8_t>(), d); break;
  }
}
}  // namespace

void Tensor::copy_(const Tensor& src) {
  SPARROW_CHECK(src.numel() == numel(), "copy_: source shape ", src.shape_str(), " does not match ",
                shape_str());
  if (src.dtype() == dtype()) {
    copy_bytes(raw_data(), device(), src.raw_data(), src.device(), nbytes());
    return;
  }
  SPARROW_CHECK(device() == Device::CPU && src.device() == Device::CPU,
                "copy_ with dtype conversion is CPU-only (", dtype_name(src.dtype()), " -> ", dtype_name(dtype()),
                ")");
  const int64_t n = numel();
  switch (dtype()) {
    case DType::F32: convert_from(src, n, data<float>()); break;
    case DType::F64: convert_from(src, n, data<double>()); break;
    case DType::I32: convert_from(src, n, data<int32_t>()); break;
    case DType::I64: convert_from(src, n, data<int64_t>()); break;
    case DType::U8: convert_from(src, n, data<uint8_t>()); break;
  }
}

void Tensor::fill_(double v) {
  const int64_t n = numel();
  if (n == 0) return;
  if (device() == Device::CUDA) {
#if SPARROW_HAS_CUDA
    SPARROW_CHECK(dtype() == DType::F32, "fill_ on CUDA supports F32 only, got ", dtype_name(dtype()));
    fill_cuda(n, float(v), data<float>());
    return;
#endif
  }
  switch (dtype()) {
    case DType::F32: fill_cpu<float>(n, float(v), data<float>()); break;
    case DType::F64: fill_cpu<double>(n, v, data<double>()); break;
    case DType::I32: { auto* p = data<int32_t>(); for (int64_t i = 0; i < n; ++i) p[i] = int32_t(v); } break;
    case DType::I64: { auto* p = data<int64_t>(); for (int64_t i = 0; i < n; ++i) p[i] = int64_t(v); } break;
    case DType::U8: std::memset(raw_data(), int(v), size_t(n)); break;
  }
}

void Tensor::move_to_(Device dev) {
  if (dev == device()) return;
  Tensor moved = to(dev);
  auto& i = impl();
  i.storage = moved.impl().storage;
  i.offset = 0;
  i.device = dev;
  if (i.grad) Tensor(i.grad).move_to_(dev);
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = device() == Device::CPU ? *this : to(Device::CPU);
  if (c.dtype() != dtype_of<T>::value) c = c.to(dtype_of<T>::value);
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;

double Tensor::item() const {
  SPARROW_CHECK(numel() == 1, "item() on a tensor of shape ", shape_str());
  return to_vector<double>()[0];
}

Tensor& Tensor::set_requires_grad(bool on) {
  SPARROW_CHECK(!on || is_floating(dtype()), "only floating tensors can require gradients");
  impl().requires_grad = on;
  return *this;
}

void Tensor::backward() const {
  SPARROW_CHECK(numel() == 1, "backward() without a gradient needs a scalar, got shape ", shape_str());
  run_backward(*this, Tensor::ones(shape(), dtype(), device()));
}

void Tensor::backward(const Tensor& grad_output) const { run_backward(*this, grad_output); }

void check_float(const Tensor& t, const char* op, const char* arg) {
  SPARROW_CHECK(t.defined(), op, ": argument '", arg, "' is undefined");
  SPARROW_CHECK(is_floating(t.dtype()), op, ": argument '", arg, "' must be F32 or F64, got ",
                dtype_name(t.dtype()));
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  SPARROW_CHECK(a.device() == b.device() && a.dtype() == b.dtype(), op, ": arguments on different devices or dtypes (",
                device_name(a.device()), "/", dtype_name(a.dtype()), " vs ", device_name(b.device()), "/",
                dtype_name(b.dtype()), ")");
}

}  // namespace sparrow
