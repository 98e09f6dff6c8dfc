// Shared comparison and data helpers for the parity tests (flat arrays of float or double).
// expect_close checks |got−ref| ≤ atol + rtol·|ref| element by element and reports the worst element;
// it fails on an all-zero or empty reference so a broken oracle can never pass vacuously.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace sparrow::test {

// Returns true when every element is within tolerance; otherwise records one GoogleTest failure naming
// `what`, the number of bad elements, the worst index (largest excess over its tolerance) and its values.
template <typename T>
bool expect_close(const T* got, const T* ref, int64_t n, double atol, double rtol, const char* what) {
  if (n <= 0) {
    ADD_FAILURE() << what << ": nothing to compare (n = " << n << ")";
    return false;
  }
  int64_t bad = 0, worst = -1, nonzero = 0;
  double worst_excess = 0.0, max_abs = 0.0, max_rel = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double g = double(got[i]), r = double(ref[i]);
    if (r != 0.0) ++nonzero;
    const double err = std::fabs(g - r);
    const double tol = atol + rtol * std::fabs(r);
    // NaN in either array counts as the worst possible mismatch (a NaN comparison is otherwise false).
    const bool ok = err <= tol;
    const double excess = ok ? 0.0 : (std::isnan(err) ? HUGE_VAL : err - tol);
    if (!std::isnan(err)) {
      max_abs = std::max(max_abs, err);
      if (r != 0.0) max_rel = std::max(max_rel, err / std::fabs(r));
    }
    if (!ok) {
      ++bad;
      if (worst < 0 || excess > worst_excess) {
        worst = i;
        worst_excess = excess;
      }
    }
  }
  if (nonzero == 0) {
    ADD_FAILURE() << what << ": the reference is all zeros over " << n
                  << " elements (a vacuous comparison; the test data or the oracle is wrong)";
    return false;
  }
  if (bad > 0) {
    ADD_FAILURE() << what << ": " << bad << " of " << n << " elements out of tolerance (atol " << atol
                  << ", rtol " << rtol << "); worst index " << worst << ": got " << double(got[worst])
                  << ", ref " << double(ref[worst]) << "; max abs err " << max_abs << ", max rel err "
                  << max_rel;
    return false;
  }
  return true;
}

template <typename T>
bool expect_close(const std::vector<T>& got, const std::vector<T>& ref, double atol, double rtol,
                  const char* what) {
  if (got.size() != ref.size()) {
    ADD_FAILURE() << what << ": size mismatch, got " << got.size() << " vs ref " << ref.size();
    return false;
  }
  return expect_close(got.data(), ref.data(), int64_t(ref.size()), atol, rtol, what);
}

// Deterministic uniform data in [lo, hi) (seeded, so a failure reproduces).
template <typename T>
std::vector<T> random_vector(int64_t n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(size_t(n > 0 ? n : 0));
  for (auto& e : v) e = T(dist(gen));
  return v;
}

// ⟨a, b⟩ accumulated in double.
template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

// Default tolerances per precision for results of O(100)-term sums of O(1) values.
template <typename T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double atol = 1e-4, rtol = 1e-4;
};
template <>
struct Tol<double> {
  static constexpr double atol = 1e-11, rtol = 1e-11;
};

}  // namespace sparrow::test
