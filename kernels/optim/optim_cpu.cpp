// Plain CPU SGD update (the reference the fused CUDA update is tested against).
#include "kernels/optim/optim.h"

namespace sparrow {

template <typename T>
void sgd_update_ref_cpu(int64_t n, T* p, const T* g, T* buf, const T* mask, bool first, const SgdHyper& h, double wd) {
  const T lr = T(h.lr), mom = T(h.momentum), damp = T(1 - h.dampening), decay = T(wd);
  for (int64_t i = 0; i < n; ++i) {
    if (mask && mask[i] == T(0)) {
      p[i] = T(0);
      if (buf) buf[i] = T(0);
      continue;
    }
    T d = g[i] + decay * p[i];
    if (buf) {
      buf[i] = first ? d : mom * buf[i] + damp * d;
      d = h.nesterov ? d + mom * buf[i] : buf[i];
    }
    p[i] -= lr * d;
  }
}

template void sgd_update_ref_cpu<float>(int64_t, float*, const float*, float*, const float*, bool, const SgdHyper&,
                                        double);
template void sgd_update_ref_cpu<double>(int64_t, double*, const double*, double*, const double*, bool,
                                         const SgdHyper&, double);

}  // namespace sparrow
