// Augmentation primitives on hand-made CHW uint8 images with known outputs (crop shifts, flips, exact
// 90° rotations, a hand-computed bilinear sample), the composed pipeline, seeded draws and normalisation.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "engine/base/error.h"
#include "engine/data/augment.h"

using namespace sparrow;

namespace {

// Distinct values per (c, y, x), never 0, so zero fill is distinguishable from content.
std::vector<uint8_t> ramp(int c, int h, int w) {
  std::vector<uint8_t> v(size_t(c) * h * w);
  for (int ch = 0; ch < c; ++ch)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) v[(size_t(ch) * h + y) * w + x] = uint8_t(1 + (ch * 97 + y * 13 + x) % 250);
  return v;
}

uint8_t at(const std::vector<uint8_t>& v, int h, int w, int c, int y, int x) {
  return v[(size_t(c) * h + y) * w + x];
}

}  // namespace

TEST(Crop, OffsetZeroWithPadFourMovesPixelsByFour) {
  const int C = 3, H = 7, W = 11;  // odd, non-square
  const auto src = ramp(C, H, W);
  std::vector<uint8_t> dst(src.size(), 77);
  crop_padded(src.data(), C, H, W, 4, 0, 0, dst.data());
  for (int c = 0; c < C; ++c)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const uint8_t want = (y >= 4 && x >= 4) ? at(src, H, W, c, y - 4, x - 4) : 0;
        ASSERT_EQ(at(dst, H, W, c, y, x), want) << c << "," << y << "," << x;
      }
}

TEST(Crop, EveryOffsetMatchesTheDefinition) {
  const int C = 2, H = 5, W = 13, pad = 4;
  const auto src = ramp(C, H, W);
  std::vector<uint8_t> dst(src.size());
  for (int dy = 0; dy <= 2 * pad; ++dy)
    for (int dx = 0; dx <= 2 * pad; ++dx) {
      crop_padded(src.data(), C, H, W, pad, dy, dx, dst.data());
      for (int c = 0; c < C; ++c)
        for (int y = 0; y < H; ++y)
          for (int x = 0; x < W; ++x) {
            const int sy = y + dy - pad, sx = x + dx - pad;
            const uint8_t want = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? at(src, H, W, c, sy, sx) : 0;
            ASSERT_EQ(at(dst, H, W, c, y, x), want)
                << "dy=" << dy << " dx=" << dx << " at " << c << "," << y << "," << x;
          }
    }
  crop_padded(src.data(), C, H, W, pad, pad, pad, dst.data());  // centre offset = identity
  EXPECT_EQ(dst, src);
}

TEST(Flip, MirrorsColumnsAndTwiceIsIdentity) {
  const int C = 3, H = 5, W = 7;
  const auto src = ramp(C, H, W);
  std::vector<uint8_t> once(src.size()), twice(src.size());
  flip_horizontal(src.data(), C, H, W, once.data());
  for (int c = 0; c < C; ++c)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) ASSERT_EQ(at(once, H, W, c, y, x), at(src, H, W, c, y, W - 1 - x));
  EXPECT_NE(once, src);
  flip_horizontal(once.data(), C, H, W, twice.data());
  EXPECT_EQ(twice, src);
  std::vector<uint8_t> inplace = src;  // in place gives the same result
  flip_horizontal(inplace.data(), C, H, W, inplace.data());
  EXPECT_EQ(inplace, once);
}

TEST(Rotate, ZeroIsIdentityAndQuarterTurnsAreExact) {
  for (int S : {5, 6}) {  // odd and even sides (centre on a pixel / between pixels)
    const int C = 2;
    const auto src = ramp(C, S, S);
    std::vector<uint8_t> out(src.size()), back(src.size());
    rotate_bilinear(src.data(), C, S, S, 0.f, out.data());
    EXPECT_EQ(out, src) << S;
    // Counter-clockwise 90°: out(y, x) = in(x, S−1−y) — the input's right column becomes the top row.
    rotate_bilinear(src.data(), C, S, S, 90.f, out.data());
    for (int c = 0; c < C; ++c)
      for (int y = 0; y < S; ++y)
        for (int x = 0; x < S; ++x) ASSERT_EQ(at(out, S, S, c, y, x), at(src, S, S, c, x, S - 1 - y)) << S;
    // 180° = both flips; −90° undoes 90°; 270° = −90°.
    rotate_bilinear(src.data(), C, S, S, 180.f, out.data());
    for (int c = 0; c < C; ++c)
      for (int y = 0; y < S; ++y)
        for (int x = 0; x < S; ++x) ASSERT_EQ(at(out, S, S, c, y, x), at(src, S, S, c, S - 1 - y, S - 1 - x));
    rotate_bilinear(src.data(), C, S, S, 90.f, out.data());
    rotate_bilinear(out.data(), C, S, S, -90.f, back.data());
    EXPECT_EQ(back, src);
    std::vector<uint8_t> a(src.size()), b(src.size());
    rotate_bilinear(src.data(), C, S, S, 270.f, a.data());
    rotate_bilinear(src.data(), C, S, S, -90.f, b.data());
    EXPECT_EQ(a, b);
  }
}

TEST(Rotate, BilinearSampleAndZeroFillMatchHandComputation) {
  // 3×3 single channel, 45°: output (x=0, y=1) samples the source at (1 − √½, 1 − √½).
  const std::vector<uint8_t> src = {10, 20, 30, 40, 50, 60, 70, 80, 90};
  std::vector<uint8_t> out(9);
  rotate_bilinear(src.data(), 1, 3, 3, 45.f, out.data());
  const double a = 1.0 - std::sqrt(0.5);  // fractional position inside the top-left 2×2 cell
  const double want = (1 - a) * (1 - a) * 10 + a * (1 - a) * (20 + 40) + a * a * 50;
  EXPECT_EQ(out[3], uint8_t(std::lround(want)));
  EXPECT_EQ(out[4], 50);  // the centre is fixed under any rotation
  // Corners of a constant image fall partly outside the source: zero fill darkens them, the centre stays.
  const std::vector<uint8_t> flat(7 * 7, 200);
  std::vector<uint8_t> r(49);
  rotate_bilinear(flat.data(), 1, 7, 7, 30.f, r.data());
  EXPECT_EQ(r[3 * 7 + 3], 200);
  EXPECT_EQ(r[2 * 7 + 3], 200);
  EXPECT_LT(r[0], 100);
  EXPECT_LT(r[48], 100);
}

TEST(Normalize, MatchesTheFormulaPerChannel) {
  const std::vector<uint8_t> src = {0, 51, 255, 128, 7, 200};  // 2 channels of 1×3
  std::vector<float> out(6);
  const std::vector<float> mean = {0.4914f, 0.2f}, sd = {0.2470f, 0.5f};
  normalize_image(src.data(), 2, 1, 3, mean, sd, out.data());
  for (int i = 0; i < 6; ++i) {
    const double ref = (src[i] / 255.0 - mean[i / 3]) / sd[i / 3];
    EXPECT_NEAR(out[i], ref, 1e-6 + 1e-6 * std::abs(ref)) << i;
  }
  EXPECT_NEAR(out[2], (1.0 - 0.4914) / 0.2470, 1e-5);
  normalize_image(src.data(), 2, 1, 3, {}, {}, out.data());  // no constants: x/255
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(out[i], src[i] / 255.f);
}

TEST(Pipeline, EqualsTheComposedPrimitives) {
  const int C = 3, H = 9, W = 9;
  const auto src = ramp(C, H, W);
  AugmentConfig cfg;
  cfg.crop_pad = 2;
  cfg.flip = true;
  cfg.rotate_degrees = 15.f;
  cfg.mean = {0.5f, 0.4f, 0.3f};
  cfg.std = {0.2f, 0.25f, 0.3f};
  AugmentDraw d;
  d.dy = 1;
  d.dx = 3;
  d.flip = true;
  d.degrees = 7.5f;
  std::vector<uint8_t> a(src.size()), b(src.size()), c(src.size()), scratch;
  crop_padded(src.data(), C, H, W, 2, 1, 3, a.data());
  flip_horizontal(a.data(), C, H, W, b.data());
  rotate_bilinear(b.data(), C, H, W, 7.5f, c.data());
  std::vector<float> want(src.size()), got(src.size());
  normalize_image(c.data(), C, H, W, cfg.mean, cfg.std, want.data());
  augment_image(src.data(), C, H, W, cfg, d, got.data(), scratch);
  EXPECT_EQ(got, want);
  // With no augmentation the pipeline is plain normalisation.
  AugmentConfig plain;
  plain.mean = cfg.mean;
  plain.std = cfg.std;
  normalize_image(src.data(), C, H, W, cfg.mean, cfg.std, want.data());
  augment_image(src.data(), C, H, W, plain, AugmentDraw{}, got.data(), scratch);
  EXPECT_EQ(got, want);
}

TEST(Draws, DeterministicForASeedAndCoverTheRanges) {
  AugmentConfig cfg;
  cfg.crop_pad = 4;
  cfg.flip = true;
  cfg.rotate_degrees = 15.f;
  std::set<int> dys, dxs;
  int flips = 0, neg = 0;
  bool any_diff = false;
  for (uint64_t pos = 0; pos < 2000; ++pos) {
    Rng r1 = Rng::derive(42, 3, pos, 1), r2 = Rng::derive(42, 3, pos, 1), r3 = Rng::derive(43, 3, pos, 1);
    const AugmentDraw a = draw_augment(cfg, r1), b = draw_augment(cfg, r2), c = draw_augment(cfg, r3);
    EXPECT_EQ(a.dy, b.dy);
    EXPECT_EQ(a.dx, b.dx);
    EXPECT_EQ(a.flip, b.flip);
    EXPECT_EQ(a.degrees, b.degrees);
    any_diff |= (a.dy != c.dy || a.dx != c.dx || a.degrees != c.degrees);
    dys.insert(a.dy);
    dxs.insert(a.dx);
    flips += a.flip;
    neg += a.degrees < 0;
    ASSERT_GE(a.degrees, -15.f);
    ASSERT_LE(a.degrees, 15.f);
  }
  EXPECT_TRUE(any_diff);
  EXPECT_EQ(dys.size(), 9u);
  EXPECT_EQ(dxs.size(), 9u);
  EXPECT_EQ(*dys.begin(), 0);
  EXPECT_EQ(*dys.rbegin(), 8);
  EXPECT_NEAR(flips, 1000, 150);
  EXPECT_NEAR(neg, 1000, 150);
  AugmentConfig off;  // nothing enabled: the identity draw
  Rng r(1);
  const AugmentDraw z = draw_augment(off, r);
  EXPECT_EQ(z.dy, 0);
  EXPECT_FALSE(z.flip);
  EXPECT_EQ(z.degrees, 0.f);
}

TEST(Defaults, PerDatasetAndValidation) {
  const AugmentConfig c10 = default_augment("cifar10", 3, true);
  EXPECT_EQ(c10.crop_pad, 4);
  EXPECT_TRUE(c10.flip);
  EXPECT_EQ(c10.rotate_degrees, 0.f);
  EXPECT_EQ(c10.mean.size(), 3u);
  EXPECT_EQ(default_augment("tiny-imagenet", 3, true).crop_pad, 4);
  const AugmentConfig fm = default_augment("fashion-mnist", 1, true);
  EXPECT_EQ(fm.crop_pad, 2);
  EXPECT_FALSE(fm.flip);
  const AugmentConfig test = default_augment("cifar100", 3, false);
  EXPECT_EQ(test.crop_pad, 0);
  EXPECT_FALSE(test.flip);
  EXPECT_FLOAT_EQ(test.std[0], 0.2673f);

  EXPECT_NO_THROW(check_augment(c10, 3, 32, 32));
  EXPECT_THROW(check_augment(c10, 1, 28, 28), Error);  // 3 means for 1 channel
  AugmentConfig bad = c10;
  bad.crop_pad = 32;
  EXPECT_THROW(check_augment(bad, 3, 32, 32), Error);
  bad = c10;
  bad.rotate_degrees = -1.f;
  EXPECT_THROW(check_augment(bad, 3, 32, 32), Error);
  bad = c10;
  bad.std[1] = 0.f;
  EXPECT_THROW(check_augment(bad, 3, 32, 32), Error);
}
