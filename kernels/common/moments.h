// Per-channel moments of an N×C×HW activation, gathered in pieces by a kernel that writes the activation
// anyway (the sparse convolution, from cache right after each output plane) so that the batch norm after it
// need not read it again.
// Each piece keeps shifted sums (shift = its first value: no cancellation when |mean| ≫ std) and pieces
// merge with Chan's pairwise update of (count, mean, M2 = Σ(v − mean)²), in a fixed order.
#pragma once
#include <cstdint>
#include <vector>

namespace sparrow {

// Moments of every channel over N·HW values: count 0 means "not gathered".
struct ChannelMoments {
  int64_t count = 0;
  std::vector<double> mean, m2;  // C each; biased variance = m2 / count
};

// One piece of one channel: Σ(v − shift) and Σ(v − shift)² over n values.
struct MomentPiece {
  int64_t n = 0;
  double shift = 0.0, s = 0.0, q = 0.0;
  // Adds the len values v[0, len): T partial sums per vector lane (shifted, so a plane of a few thousand
  // values loses nothing that matters), then double.
  template <typename T>
  void add(const T* v, int64_t len) {
    if (len <= 0) return;
    if (n == 0) shift = double(v[0]);
    const T sh = T(shift);
    T ps = T(0), pq = T(0);
#if defined(_OPENMP)
#pragma omp simd reduction(+ : ps, pq)
#endif
    for (int64_t i = 0; i < len; ++i) {
      const T d = v[i] - sh;
      ps += d;
      pq += d * d;
    }
    s += double(ps);
    q += double(pq);
    n += len;
  }
};

// Chan's update: (n, mean, m2) ← (n, mean, m2) ∪ piece.
inline void merge_moment(int64_t& n, double& mean, double& m2, const MomentPiece& p) {
  if (p.n == 0) return;
  const double pn = double(p.n), pmean_d = p.s / pn;
  const double pmean = p.shift + pmean_d, pm2 = p.q - p.s * pmean_d;
  if (n == 0) {
    n = p.n;
    mean = pmean;
    m2 = pm2 > 0.0 ? pm2 : 0.0;
    return;
  }
  const double na = double(n), tot = na + pn, delta = pmean - mean;
  mean += delta * pn / tot;
  m2 += (pm2 > 0.0 ? pm2 : 0.0) + delta * delta * na * pn / tot;
  n += p.n;
}

}  // namespace sparrow
