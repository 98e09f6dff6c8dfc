// transpose_matrix (the conv kernels' batch-minor copies, the BSR row layouts) against its definition
// dst[c·ldd + r] = src[r·lds + c], over every size up to 19×19 (whole and partial 8×8 tiles, the masked
// AVX-512 edge tiles among them), leading dimensions past the sizes, in float and double; elements of
// dst outside the cols × rows block must keep their sentinel.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common/transpose.h"

namespace sparrow {
namespace {

template <typename T>
void check_sizes() {
  for (int rows = 1; rows <= 19; ++rows)
    for (int cols = 1; cols <= 19; ++cols) {
      SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols));
      const int64_t lds = cols + 3, ldd = rows + 5;
      std::vector<T> src(size_t(rows * lds + 8));
      for (size_t i = 0; i < src.size(); ++i) src[i] = T(int64_t(i) * 7 % 1009) + T(0.25);
      std::vector<T> dst(size_t(cols * ldd + 8), T(-1));
      transpose_matrix<T>(rows, cols, src.data(), lds, dst.data(), ldd);
      for (int64_t c = 0; c < cols; ++c)
        for (int64_t r = 0; r < ldd; ++r) {
          const T got = dst[size_t(c * ldd + r)];
          if (r < rows) ASSERT_EQ(got, src[size_t(r * lds + c)]) << "dst row " << c << " col " << r;
          else ASSERT_EQ(got, T(-1)) << "padding of dst row " << c << " col " << r << " written";
        }
      for (size_t i = size_t(cols * ldd); i < dst.size(); ++i) ASSERT_EQ(dst[i], T(-1)) << "past dst at " << i;
    }
}

TEST(Transpose, MatchesDefinitionFloat) { check_sizes<float>(); }
TEST(Transpose, MatchesDefinitionDouble) { check_sizes<double>(); }

}  // namespace
}  // namespace sparrow
