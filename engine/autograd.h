// Reverse-mode autograd: ops record a Node (inputs + backward closure) on their output when any input
// needs a gradient and grad mode is on. backward() runs the nodes in reverse topological order,
// accumulates into leaf .grad, and frees the graph as it goes.
#pragma once
#include <functional>
#include <vector>

#include "engine/tensor.h"

namespace sparrow {

// Given dL/d(output) and which inputs need a gradient, returns dL/d(input) per input (undefined = none).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out, const std::vector<bool>& needs)>;

struct Node {
  const char* name = "";
  std::vector<Tensor> inputs;
  std::vector<bool> needs;
  BackwardFn backward;
};

bool grad_enabled();

// Disables graph recording in its scope (evaluation, optimizer updates, teacher forwards).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

bool needs_grad(const Tensor& t);  // requires_grad or has a grad_fn

// Attaches a node to `out` if grad mode is on and some input needs a gradient; returns out.
Tensor record(Tensor out, const char* name, std::vector<Tensor> inputs, BackwardFn fn);

void run_backward(const Tensor& root, const Tensor& grad_root);

// Adds g into t.grad (allocating it on first use).
void accumulate_grad(const Tensor& t, const Tensor& g);

}  // namespace sparrow
