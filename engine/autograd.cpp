// Graph recording and the backward pass (reverse topological order, graph freed node by node).
#include "engine/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "engine/base/nvtx.h"
#include "kernels/elementwise/elementwise.h"

namespace sparrow {

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }

bool needs_grad(const Tensor& t) { return t.defined() && (t.requires_grad() || t.grad_fn() != nullptr); }

Tensor record(Tensor out, const char* name, std::vector<Tensor> inputs, BackwardFn fn) {
  if (!g_grad_enabled) return out;
  std::vector<bool> needs(inputs.size());
  bool any = false;
  for (size_t i = 0; i < inputs.size(); ++i) any |= (needs[i] = needs_grad(inputs[i]));
  if (!any) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->inputs = std::move(inputs);
  node->needs = std::move(needs);
  node->backward = std::move(fn);
  out.impl().grad_fn = std::move(node);
  return out;
}

namespace {
// a += b, same shape/dtype/device.
void add_into(Tensor& a, const Tensor& b) {
  SPARROW_CHECK(a.numel() == b.numel(), "gradient shape ", b.shape_str(), " does not match ", a.shape_str());
  const int64_t n = a.numel();
  if (a.device() == Device::CUDA) {
#if SPARROW_HAS_CUDA
    axpy_cuda(n, 1.0f, b.data<float>(), a.data<float>());
    return;
#endif
  }
  if (a.dtype() == DType::F64) axpy_cpu<double>(n, 1.0, b.data<double>(), a.data<double>());
  else axpy_cpu<float>(n, 1.0f, b.data<float>(), a.data<float>());
}

// a + b into a new tensor (same shape/dtype/device as a): one pass that reads both and writes the sum,
// where a clone of a and then a += b made two.
Tensor sum_of(const Tensor& a, const Tensor& b) {
  SPARROW_CHECK(a.numel() == b.numel(), "gradient shape ", b.shape_str(), " does not match ", a.shape_str());
  Tensor c = Tensor::empty(a.shape(), a.dtype(), a.device());
  const int64_t n = a.numel();
  if (a.device() == Device::CUDA) {
#if SPARROW_HAS_CUDA
    add_cuda(n, a.data<float>(), b.data<float>(), c.data<float>());
    return c;
#endif
  }
  if (a.dtype() == DType::F64) add_cpu<double>(n, a.data<double>(), b.data<double>(), c.data<double>());
  else add_cpu<float>(n, a.data<float>(), b.data<float>(), c.data<float>());
  return c;
}
}  // namespace

void accumulate_grad(const Tensor& t, const Tensor& g) {
  auto& impl = t.impl();
  if (!impl.grad) {
    // Own a private copy so later accumulation never writes into a tensor the graph still uses.
    Tensor c = g.clone().view(t.shape());
    impl.grad = c.impl_ptr();
  } else {
    Tensor acc(impl.grad);
    add_into(acc, g);
  }
}

void run_backward(const Tensor& root, const Tensor& grad_root) {
  SPARROW_NVTX_RANGE("autograd_backward");
  SPARROW_CHECK(grad_root.numel() == root.numel(), "backward: gradient shape ", grad_root.shape_str(),
                " does not match output shape ", root.shape_str());
  if (!root.grad_fn()) {
    SPARROW_CHECK(root.requires_grad(), "backward() on a tensor that does not require grad");
    accumulate_grad(root, grad_root);
    return;
  }
  // Topological order by iterative DFS (deep ResNets would overflow a recursive one). The order owns
  // its nodes: freeing a node's inputs below may drop the last other reference to an upstream node.
  std::vector<std::shared_ptr<Node>> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack{{root.grad_fn(), 0}};
  seen.insert(root.grad_fn().get());
  while (!stack.empty()) {
    auto& top = stack.back();
    if (top.second < top.first->inputs.size()) {
      const Tensor& in = top.first->inputs[top.second++];
      const std::shared_ptr<Node>& child = in.defined() ? in.grad_fn() : nullptr;
      if (child && seen.insert(child.get()).second) stack.push_back({child, 0});
    } else {
      order.push_back(std::move(top.first));
      stack.pop_back();
    }
  }
  std::unordered_map<Node*, Tensor> grads;
  grads[root.grad_fn().get()] = grad_root.view(root.shape());
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* node = it->get();
    auto git = grads.find(node);
    if (git == grads.end()) continue;  // no gradient reached this node
    Tensor g = git->second;
    grads.erase(git);
    std::vector<Tensor> gin;
    {
      SPARROW_NVTX_RANGE(node->name);
      gin = node->backward(g, node->needs);
    }
    SPARROW_CHECK(gin.size() == node->inputs.size(), "autograd node '", node->name, "' returned ", gin.size(),
                  " gradients for ", node->inputs.size(), " inputs");
    for (size_t i = 0; i < gin.size(); ++i) {
      if (!node->needs[i] || !gin[i].defined()) continue;
      const Tensor& in = node->inputs[i];
      SPARROW_CHECK(gin[i].numel() == in.numel(), "autograd node '", node->name, "' gradient ", i, " has shape ",
                    gin[i].shape_str(), ", input has ", in.shape_str());
      if (in.grad_fn()) {
        auto [slot, fresh] = grads.try_emplace(in.grad_fn().get(), Tensor());
        if (fresh) slot->second = gin[i].view(in.shape());
        else {
          // Accumulate into a new tensor, never into a gradient that another node may still hold.
          slot->second = sum_of(slot->second, gin[i].view(in.shape()));
        }
      } else if (in.requires_grad()) {
        accumulate_grad(in, gin[i]);
      }
    }
    // Free this node's part of the graph now: saved tensors go with the closure.
    node->backward = nullptr;
    node->inputs.clear();
  }
}

}  // namespace sparrow
