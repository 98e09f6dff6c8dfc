// CPU row-wise softmax family on B×C row-major arrays and the fused softmax cross-entropy.
// Every row subtracts its max before exponentiating (no overflow for any finite logits); OpenMP over rows
// once the array is large.
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/base/error.h"
#include "kernels/softmax/softmax.h"

namespace sparrow {

namespace {

constexpr int64_t kParallelMin = 1 << 14;

void check_shape(int rows, int cols, const char* op) {
  SPARROW_CHECK(rows > 0 && cols > 0, op, ": invalid shape ", rows, "x", cols);
}

bool parallel(int rows, int cols) { return int64_t(rows) * cols > kParallelMin && rows > 1; }

template <typename T>
T row_max(const T* x, int cols) {
  T m = x[0];
  for (int j = 1; j < cols; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// log Σ exp(x_j), computed as max + log Σ exp(x_j − max) in double.
template <typename T>
double row_logsumexp(const T* x, int cols) {
  const double m = double(row_max(x, cols));
  double sum = 0.0;
  for (int j = 0; j < cols; ++j) sum += std::exp(double(x[j]) - m);
  return m + std::log(sum);
}

void check_labels(int rows, int cols, const int64_t* labels, const char* op) {
  for (int r = 0; r < rows; ++r)
    SPARROW_CHECK(labels[r] >= 0 && labels[r] < cols, op, ": label ", labels[r], " of row ", r,
                  " is out of range [0, ", cols, ")");
}

}  // namespace

template <typename T>
void softmax_forward_cpu(int rows, int cols, const T* x, T* y) {
  check_shape(rows, cols, "softmax_forward_cpu");
#pragma omp parallel for schedule(static) if (parallel(rows, cols))
  for (int r = 0; r < rows; ++r) {
    const T* xr = x + int64_t(r) * cols;
    T* yr = y + int64_t(r) * cols;
    const T m = row_max(xr, cols);
    double sum = 0.0;
    for (int j = 0; j < cols; ++j) {
      const T e = std::exp(xr[j] - m);
      yr[j] = e;
      sum += double(e);
    }
    const T inv = T(1.0 / sum);
    for (int j = 0; j < cols; ++j) yr[j] *= inv;
  }
}

template <typename T>
void log_softmax_forward_cpu(int rows, int cols, const T* x, T* y) {
  check_shape(rows, cols, "log_softmax_forward_cpu");
#pragma omp parallel for schedule(static) if (parallel(rows, cols))
  for (int r = 0; r < rows; ++r) {
    const T* xr = x + int64_t(r) * cols;
    T* yr = y + int64_t(r) * cols;
    // Subtract in double: with |x| ≫ 1 a float-rounded logsumexp would cost digits of every output.
    const double lse = row_logsumexp(xr, cols);
    for (int j = 0; j < cols; ++j) yr[j] = T(double(xr[j]) - lse);
  }
}

template <typename T>
void softmax_backward_cpu(int rows, int cols, const T* y, const T* dy, T* dx) {
  check_shape(rows, cols, "softmax_backward_cpu");
#pragma omp parallel for schedule(static) if (parallel(rows, cols))
  for (int r = 0; r < rows; ++r) {
    const T* yr = y + int64_t(r) * cols;
    const T* dyr = dy + int64_t(r) * cols;
    T* dxr = dx + int64_t(r) * cols;
    double dot = 0.0;
    for (int j = 0; j < cols; ++j) dot += double(dyr[j]) * double(yr[j]);
    const T d = T(dot);
    for (int j = 0; j < cols; ++j) dxr[j] = yr[j] * (dyr[j] - d);
  }
}

template <typename T>
void log_softmax_backward_cpu(int rows, int cols, const T* y, const T* dy, T* dx) {
  check_shape(rows, cols, "log_softmax_backward_cpu");
#pragma omp parallel for schedule(static) if (parallel(rows, cols))
  for (int r = 0; r < rows; ++r) {
    const T* yr = y + int64_t(r) * cols;
    const T* dyr = dy + int64_t(r) * cols;
    T* dxr = dx + int64_t(r) * cols;
    double sum = 0.0;
    for (int j = 0; j < cols; ++j) sum += double(dyr[j]);
    const T s = T(sum);
    for (int j = 0; j < cols; ++j) dxr[j] = dyr[j] - std::exp(yr[j]) * s;
  }
}

template <typename T>
double softmax_xent_cpu(int rows, int cols, const T* logits, const int64_t* labels, T* dlogits) {
  check_shape(rows, cols, "softmax_xent_cpu");
  // Checked before the parallel loop: an exception must not leave an OpenMP region.
  check_labels(rows, cols, labels, "softmax_xent_cpu");
  double loss = 0.0;
  const double inv_rows = 1.0 / double(rows);
#pragma omp parallel for schedule(static) reduction(+ : loss) if (parallel(rows, cols))
  for (int r = 0; r < rows; ++r) {
    const T* xr = logits + int64_t(r) * cols;
    const int64_t label = labels[r];
    const double m = double(row_max(xr, cols));
    double sum = 0.0;
    for (int j = 0; j < cols; ++j) sum += std::exp(double(xr[j]) - m);
    loss += m + std::log(sum) - double(xr[label]);
    if (dlogits) {
      // (softmax − onehot)/rows with the softmax rebuilt from the same max and sum.
      T* dr = dlogits + int64_t(r) * cols;
      const double scale = inv_rows / sum;
      for (int j = 0; j < cols; ++j) dr[j] = T(std::exp(double(xr[j]) - m) * scale);
      dr[label] -= T(inv_rows);
    }
  }
  return loss * inv_rows;
}

template <typename T>
double softmax_xent_ref_cpu(int rows, int cols, const T* logits, const int64_t* labels, T* dlogits) {
  check_shape(rows, cols, "softmax_xent_ref_cpu");
  check_labels(rows, cols, labels, "softmax_xent_ref_cpu");
  std::vector<double> logp(static_cast<size_t>(cols));
  double loss = 0.0;
  for (int r = 0; r < rows; ++r) {
    const T* xr = logits + int64_t(r) * cols;
    const double lse = row_logsumexp(xr, cols);
    for (int j = 0; j < cols; ++j) logp[size_t(j)] = double(xr[j]) - lse;
    loss -= logp[size_t(labels[r])];
    if (dlogits)
      for (int j = 0; j < cols; ++j)
        dlogits[int64_t(r) * cols + j] = T((std::exp(logp[size_t(j)]) - (j == labels[r] ? 1.0 : 0.0)) / rows);
  }
  return loss / rows;
}

#define SPARROW_SOFTMAX_INSTANTIATE(T)                                         \
  template void softmax_forward_cpu<T>(int, int, const T*, T*);                \
  template void log_softmax_forward_cpu<T>(int, int, const T*, T*);            \
  template void softmax_backward_cpu<T>(int, int, const T*, const T*, T*);     \
  template void log_softmax_backward_cpu<T>(int, int, const T*, const T*, T*); \
  template double softmax_xent_cpu<T>(int, int, const T*, const int64_t*, T*); \
  template double softmax_xent_ref_cpu<T>(int, int, const T*, const int64_t*, T*);

SPARROW_SOFTMAX_INSTANTIATE(float)
SPARROW_SOFTMAX_INSTANTIATE(double)

}  // namespace sparrow
