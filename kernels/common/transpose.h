// One full 8×8 tile transpose, d[c·ldd + r] = s[r·lds + c], shared by the conv kernels' pixel-major copies and
// the BSR ops' row layouts (forced inline so a tile is never a function call), and transpose_matrix built
// from it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kernels/common/inline.h"

namespace sparrow {

template <typename T>
SPARROW_ALWAYS_INLINE void transpose_tile8(const T* s, int64_t lds, T* d, int64_t ldd) {
  for (int64_t c = 0; c < 8; ++c)
    for (int64_t r = 0; r < 8; ++r) d[c * ldd + r] = s[r * lds + c];
}

#if defined(__AVX2__)
// Rows r[0..7] of an 8×8 float tile in registers become its columns: column c in r[c] (unpack / shuffle /
// lane permute).
SPARROW_ALWAYS_INLINE void transpose8_regs(__m256* r) {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u0..u7 as rows {0,1,2,3} × {lo, hi} of each 4-row half; then the 128-bit halves are recombined.
  const __m256 u[8] = {_mm256_shuffle_ps(t[0], t[2], 0x44), _mm256_shuffle_ps(t[0], t[2], 0xEE),
                       _mm256_shuffle_ps(t[1], t[3], 0x44), _mm256_shuffle_ps(t[1], t[3], 0xEE),
                       _mm256_shuffle_ps(t[4], t[6], 0x44), _mm256_shuffle_ps(t[4], t[6], 0xEE),
                       _mm256_shuffle_ps(t[5], t[7], 0x44), _mm256_shuffle_ps(t[5], t[7], 0xEE)};
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// The float tile through those registers: about twice as fast as the loops above, which the compiler leaves
// as scalar moves; with those the transposes were ~15% of a CIFAR conv's time, and VGG's 32×32 maps ran at a
// fifth of this speed in the BSR ops (power-of-two strides thrash L1).
SPARROW_ALWAYS_INLINE void transpose_tile8(const float* s, int64_t lds, float* d, int64_t ldd) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * lds);
  transpose8_regs(r);
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(d + i * ldd, r[i]);
}
#endif

#if defined(__AVX512VL__)
// A partial tile (rn ≤ 8 rows of cn ≤ 8 columns) through the same register transpose, with masked loads
// and stores that touch only the tile's elements. The scalar edge loop it replaces ran every tile of maps
// 7 wide and the last columns of 14- and 28-wide rows in the conv kernels' batch-minor copies, where
// transposes took about a fifth of a Fashion-MNIST ResNet-20 step at 90% sparsity (perf, cpu-clock). On
// its 64-64 7×7 layer at 5% (sparrow-bench-sparse-conv --threads 1 --clock cpu, 2 rounds) all three
// passes ran in 0.57–0.79 of the time, on 32-32 14×14 in 0.82–1.0.
SPARROW_ALWAYS_INLINE void transpose_tile8_masked(const float* s, int64_t lds, float* d, int64_t ldd, int rn,
                                                  int cn) {
  const __mmask8 cm = __mmask8((1u << cn) - 1), rm = __mmask8((1u << rn) - 1);
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = i < rn ? _mm256_maskz_loadu_ps(cm, s + i * lds) : _mm256_setzero_ps();
  transpose8_regs(r);
  for (int i = 0; i < cn; ++i) _mm256_mask_storeu_ps(d + i * ldd, rm, r[i]);
}
#endif

// dst (cols × rows, leading dim ldd) = srcᵀ, src rows × cols with leading dim lds, in 8×8 tiles (partial
// tiles at the edges masked on AVX-512VL, as loops otherwise): 8 source rows stay within L1 associativity
// even when lds is a power of two (16-row tiles thrashed at lds = 1024).
template <typename T>
inline void transpose_matrix(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int64_t kTile = 8;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile)
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const T* s = src + r0 * lds + c0;
      T* d = dst + c0 * ldd + r0;
      if (r0 + kTile <= rows && c0 + kTile <= cols) {
        transpose_tile8(s, lds, d, ldd);
        continue;
      }
      const int64_t rn = std::min(kTile, rows - r0), cn = std::min(kTile, cols - c0);
#if defined(__AVX512VL__)
      if constexpr (std::is_same_v<T, float>) {
        transpose_tile8_masked(s, lds, d, ldd, int(rn), int(cn));
        continue;
      }
#endif
      for (int64_t c = 0; c < cn; ++c)
        for (int64_t r = 0; r < rn; ++r) d[c * ldd + r] = s[r * lds + c];
    }
}

}  // namespace sparrow
