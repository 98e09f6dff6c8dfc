// CPU SGD updates: the plain reference (the oracle of the fused CUDA update) and the OpenMP loop.
#include "kernels/optim/optim.h"

namespace sparrow {

template <typename T>
void sgd_update_ref_cpu(int64_t n, T* p, const T* g, T* buf, const T* mask, bool first, const SgdHyper& h, double wd) {
  const T lr = T(h.lr), mom = T(h.momentum), damp = T(1 - h.dampening), decay = T(wd);
  for (int64_t i = 0; i < n; ++i)
    sgd_element(p[i], g[i], buf ? buf + i : nullptr, mask && mask[i] == T(0), first, lr, mom, damp, decay, h.nesterov);
}

template <typename T>
void sgd_update_cpu(int64_t n, T* p, const T* g, T* buf, const T* mask, bool first, const SgdHyper& h, double wd) {
  const T lr = T(h.lr), mom = T(h.momentum), damp = T(1 - h.dampening), decay = T(wd);
#pragma omp parallel for if (n > 65536) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    sgd_element(p[i], g[i], buf ? buf + i : nullptr, mask && mask[i] == T(0), first, lr, mom, damp, decay, h.nesterov);
}

#define SPARROW_SGD_INSTANTIATE(T)                                                                            \
  template void sgd_update_ref_cpu<T>(int64_t, T*, const T*, T*, const T*, bool, const SgdHyper&, double); \
  template void sgd_update_cpu<T>(int64_t, T*, const T*, T*, const T*, bool, const SgdHyper&, double);
SPARROW_SGD_INSTANTIATE(float)
SPARROW_SGD_INSTANTIATE(double)
#undef SPARROW_SGD_INSTANTIATE

}  // namespace sparrow
