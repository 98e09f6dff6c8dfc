// Gradient-norm clipping (TGOSP's CE retraining clips at 1.0), as torch.nn.utils.clip_grad_norm_.
#include <cmath>

#include "engine/ops.h"
#include "engine/optim.h"

namespace sparrow {

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  SPARROW_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got ", max_norm);
  double sq = 0;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    for (double v : g.to_vector<double>()) sq += v * v;
  }
  const double norm = std::sqrt(sq);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1) {
    NoGradGuard ng;
    for (const Tensor& p : params) {
      Tensor g = p.grad();
      if (g.defined()) g.copy_(scale(g, coef));
    }
  }
  return norm;
}

}  // namespace sparrow
