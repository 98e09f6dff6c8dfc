// Tensor: a shared handle to a contiguous, row-major (NCHW for images) array on a device, with the
// autograd fields (requires_grad, grad, grad_fn). Copies of a Tensor share the same impl; views
// (reshape, batch slices) share storage with an offset.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/device.h"
#include "engine/dtype.h"
#include "engine/storage.h"

namespace sparrow {

using Shape = std::vector<int64_t>;
struct Node;
class Rng;

int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<Node> grad_fn;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Factories (contents uninitialised for empty()).
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU) {
    return full(shape, 1.0, dtype, device);
  }
  template <typename T>
  static Tensor from_vector(const Shape& shape, const std::vector<T>& values, Device device = Device::CPU);
  static Tensor randn(const Shape& shape, Rng& rng, double mean = 0, double std = 1,
                      DType dtype = DType::F32);
  static Tensor uniform(const Shape& shape, Rng& rng, double lo, double hi, DType dtype = DType::F32);
  static Tensor scalar(double v, DType dtype = DType::F32) { return full({}, v, dtype); }

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  int64_t dim() const { return int64_t(shape().size()); }
  int64_t size(int64_t d) const;
  int64_t numel() const { return shape_numel(shape()); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().device; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype()); }
  std::string shape_str() const { return sparrow::shape_str(shape()); }

  // Typed pointer to the first element; checks the dtype.
  template <typename T> T* data();
  template <typename T> const T* data() const;
  void* raw_data();
  const void* raw_data() const;

  // Views sharing storage (no autograd edge: use ops::reshape inside a graph).
  Tensor view(const Shape& shape) const;
  Tensor slice_batch(int64_t begin, int64_t end) const;  // rows [begin, end) of dimension 0

  Tensor to(Device device) const;   // copy (or this tensor when already there)
  Tensor to(DType dtype) const;     // converting copy (CPU)
  Tensor clone() const;             // deep copy, no autograd history
  Tensor detach() const;            // shares storage, no autograd history
  void copy_(const Tensor& src);    // same numel, any devices, converts dtype on CPU
  void fill_(double v);
  void zero_() { fill_(0.0); }
  // Moves this impl's storage to device in place (every handle sees it): used by Module::to.
  void move_to_(Device device);

  template <typename T> std::vector<T> to_vector() const;
  double item() const;  // numel()==1, any dtype and device

  // Autograd.
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& set_requires_grad(bool on);
  Tensor grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
  void set_grad(const Tensor& g) { impl().grad = g.impl_; }
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  // Backward from a scalar (gradient 1) or with an explicit output gradient of the same shape.
  void backward() const;
  void backward(const Tensor& grad_output) const;

  TensorImpl& impl() const;
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Throws a readable error when a tensor is not what an op needs.
void check_float(const Tensor& t, const char* op, const char* arg);
void check_same_device(const Tensor& a, const Tensor& b, const char* op);

}  // namespace sparrow
