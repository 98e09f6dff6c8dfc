// Fused knowledge-distillation loss on B×C row-major logits (student z_s, teacher z_t): one call writes the
// per-row loss and ∂(batchmean loss)/∂z_s for forward, reverse and β-mixed KL, optionally mixed with
// hard-label cross-entropy and with per-row logit standardisation (ALGORITHMS.md §0.1).
#pragma once
#include <cstdint>

namespace sparrow {

// Where the optional per-row standardisation (z − mean)/(std + eps) sits relative to the division by T.
// std is the population std (divide by C); kLogitNormEps = 1e-7 is added to the std of whatever is being
// standardised, so before_T gives u = (z − μ)/(T·(σ + eps)) and after_T gives u = (z − μ)/(σ + T·eps)
// (the T cancels up to the eps: the teacher-guided paper's public code does this).
enum class LogitNorm { none, before_T, after_T };
constexpr double kLogitNormEps = 1e-7;

// T > 0 temperature; alpha ∈ [0,1] weight of the KL term against CE (ignored without labels: the loss is
// then the KL term alone, weight T²); beta ∈ [0,1]: 0 = forward KL(p_t‖p_s) (Hinton), 1 = reverse KL(p_s‖p_t).
struct KlParams {
  double T = 1.0;
  double alpha = 1.0;
  double beta = 0.0;
  LogitNorm norm = LogitNorm::none;
};

const char* logit_norm_name(LogitNorm n);           // "none", "before-T", "after-T"
LogitNorm parse_logit_norm(const char* name);       // the names above (and before_T/after_T); throws otherwise

// Loss per row, with p^T = softmax(u), u = z/T after the optional standardisation:
//   L_row = (1−α)·CE(z_s, y) + α·T²·[β·KL(p_s^T‖p_t^T) + (1−β)·KL(p_t^T‖p_s^T)]
// CE uses the raw student logits. Returns the batchmean Σ L_row / rows.
// zs, zt: [rows, cols]; labels: [rows] in [0, cols) (checked) or nullptr (no CE term, KL weight T²);
// dzs: [rows, cols] or nullptr, WRITTEN with ∂(batchmean)/∂z_s (carries the 1/rows);
// dzt: [rows, cols] or nullptr, WRITTEN with ∂(batchmean)/∂z_t (teacher gradient, for tests);
// row_loss: [rows] or nullptr, WRITTEN with L_row (not divided by rows).
// distill_kl_ref_cpu composes log-softmax, softmax and the standardisation step by step, in double
// whatever T is: the oracle. distill_kl_cpu is the fused kernel (OpenMP over rows above a size threshold).
template <typename T>
double distill_kl_ref_cpu(int rows, int cols, const T* zs, const T* zt, const int64_t* labels,
                          const KlParams& params, T* dzs, T* dzt, T* row_loss);
template <typename T>
double distill_kl_cpu(int rows, int cols, const T* zs, const T* zt, const int64_t* labels,
                      const KlParams& params, T* dzs, T* dzt, T* row_loss);

#if SPARROW_HAS_CUDA
// Same loss on device pointers (float only), default stream, no teacher gradient. dzs and row_loss may be
// null; the batchmean is the host sum of row_loss / rows. One warp per row for cols ≤ 1024, one 256-thread
// block per row above. A label outside [0, cols) makes that row's loss NaN (no device-side trap).
void distill_kl_cuda(int rows, int cols, const float* zs, const float* zt, const int64_t* labels,
                     const KlParams& params, float* dzs, float* row_loss);
#endif

}  // namespace sparrow
