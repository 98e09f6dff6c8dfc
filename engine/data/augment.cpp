// Augmentation primitives on CHW uint8 images and the per-sample pipeline (crop → flip → rotate →
// normalise to float CHW). Every function is a pure function of its inputs and the AugmentDraw.
#include "engine/data/augment.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/base/error.h"
#include "engine/data/dataset.h"

namespace sparrow {

AugmentConfig default_augment(const std::string& dataset, int channels, bool train) {
  AugmentConfig a;
  const Normalization n = dataset_normalization(dataset, channels);
  a.mean = n.mean;
  a.std = n.std;
  if (!train) return a;
  if (dataset == "cifar10" || dataset == "cifar100" || dataset == "tiny-imagenet") {
    a.crop_pad = 4;
    a.flip = true;
  } else if (dataset == "fashion-mnist") {
    a.crop_pad = 2;
    a.flip = false;
  } else if (dataset == "synthetic") {
    // No flip: mirroring a sinusoid with frequency (a, b) gives (−a, b), which is another class's pattern.
    a.crop_pad = 2;
  }
  return a;
}

void check_augment(const AugmentConfig& cfg, int channels, int height, int width) {
  SPARROW_CHECK(cfg.crop_pad >= 0 && cfg.crop_pad < std::min(height, width), "augment: crop padding ",
                cfg.crop_pad, " must be in [0, ", std::min(height, width), ") for ", height, "x", width,
                " images");
  SPARROW_CHECK(cfg.rotate_degrees >= 0.f && cfg.rotate_degrees <= 180.f, "augment: rotation ",
                cfg.rotate_degrees, " degrees must be in [0, 180]");
  SPARROW_CHECK(cfg.mean.size() == cfg.std.size() && (cfg.mean.empty() || int(cfg.mean.size()) == channels),
                "augment: normalisation has ", cfg.mean.size(), " means and ", cfg.std.size(), " stds for ",
                channels, "-channel images");
  for (float s : cfg.std) SPARROW_CHECK(s > 0.f, "augment: normalisation std ", s, " must be > 0");
}

void crop_padded(const uint8_t* src, int c, int h, int w, int pad, int dy, int dx, uint8_t* dst) {
  for (int ch = 0; ch < c; ++ch)
    for (int y = 0; y < h; ++y) {
      uint8_t* row = dst + (size_t(ch) * h + y) * w;
      const int sy = y + dy - pad;
      if (sy < 0 || sy >= h) {
        std::memset(row, 0, size_t(w));
        continue;
      }
      const uint8_t* srow = src + (size_t(ch) * h + sy) * w;
      // Valid x range: 0 <= x + dx − pad < w.
      const int x0 = std::clamp(pad - dx, 0, w), x1 = std::clamp(w + pad - dx, 0, w);
      if (x0 > 0) std::memset(row, 0, size_t(x0));
      if (x1 > x0) std::memcpy(row + x0, srow + (x0 + dx - pad), size_t(x1 - x0));
      if (x1 < w) std::memset(row + x1, 0, size_t(w - x1));
    }
}

void flip_horizontal(const uint8_t* src, int c, int h, int w, uint8_t* dst) {
  for (int r = 0; r < c * h; ++r) {
    const uint8_t* s = src + size_t(r) * w;
    uint8_t* d = dst + size_t(r) * w;
    if (s == d) {
      std::reverse(d, d + w);
    } else {
      for (int x = 0; x < w; ++x) d[x] = s[w - 1 - x];
    }
  }
}

void rotate_bilinear(const uint8_t* src, int c, int h, int w, float degrees, uint8_t* dst) {
  double cs, sn;
  const double quarter = double(degrees) / 90.0;
  if (std::abs(quarter - std::round(quarter)) < 1e-9) {
    // Exact for multiples of 90°, where cos/sin of a rounded π would leave 1e-17 residues.
    const long q = ((std::lround(quarter) % 4) + 4) % 4;
    static const double kCos[4] = {1, 0, -1, 0}, kSin[4] = {0, 1, 0, -1};
    cs = kCos[q];
    sn = kSin[q];
  } else {
    const double rad = double(degrees) * 3.14159265358979323846 / 180.0;
    cs = std::cos(rad);
    sn = std::sin(rad);
  }
  const double cx = 0.5 * (w - 1), cy = 0.5 * (h - 1);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      // Inverse map: the source point that lands on (x, y).
      const double ox = x - cx, oy = y - cy;
      const double sx = cx + ox * cs - oy * sn, sy = cy + ox * sn + oy * cs;
      const double fx0 = std::floor(sx), fy0 = std::floor(sy);
      const int x0 = int(fx0), y0 = int(fy0);
      const double ax = sx - fx0, ay = sy - fy0;
      const double wts[4] = {(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay};
      const int xs[4] = {x0, x0 + 1, x0, x0 + 1}, ys[4] = {y0, y0, y0 + 1, y0 + 1};
      for (int ch = 0; ch < c; ++ch) {
        const uint8_t* plane = src + size_t(ch) * h * w;
        double v = 0;
        for (int k = 0; k < 4; ++k)
          if (wts[k] != 0 && xs[k] >= 0 && xs[k] < w && ys[k] >= 0 && ys[k] < h)
            v += wts[k] * plane[size_t(ys[k]) * w + xs[k]];
        dst[(size_t(ch) * h + y) * w + x] = uint8_t(std::clamp(std::lround(v), 0L, 255L));
      }
    }
}

void normalize_image(const uint8_t* src, int c, int h, int w, const std::vector<float>& mean,
                     const std::vector<float>& std, float* dst) {
  const size_t plane = size_t(h) * w;
  for (int ch = 0; ch < c; ++ch) {
    const float m = mean.empty() ? 0.f : mean[ch];
    const float s = std.empty() ? 1.f : std[ch];
    const float scale = 1.f / (255.f * s), bias = -m / s;
    const uint8_t* p = src + ch * plane;
    float* d = dst + ch * plane;
    for (size_t i = 0; i < plane; ++i) d[i] = float(p[i]) * scale + bias;
  }
}

AugmentDraw draw_augment(const AugmentConfig& cfg, Rng& rng) {
  AugmentDraw d;
  if (cfg.crop_pad > 0) {
    d.dy = int(rng.below(uint64_t(2 * cfg.crop_pad + 1)));
    d.dx = int(rng.below(uint64_t(2 * cfg.crop_pad + 1)));
  } else {
    d.dy = d.dx = cfg.crop_pad;  // = 0: the identity crop
  }
  if (cfg.flip) d.flip = (rng.next_u64() >> 63) != 0;
  if (cfg.rotate_degrees > 0.f)
    d.degrees = float(rng.uniform(-double(cfg.rotate_degrees), double(cfg.rotate_degrees)));
  return d;
}

void augment_image(const uint8_t* src, int c, int h, int w, const AugmentConfig& cfg, const AugmentDraw& d,
                   float* dst, std::vector<uint8_t>& scratch) {
  const size_t img = size_t(c) * h * w;
  if (scratch.size() < 2 * img) scratch.resize(2 * img);
  uint8_t* a = scratch.data();
  uint8_t* b = scratch.data() + img;
  const uint8_t* cur = src;
  if (cfg.crop_pad > 0) {
    crop_padded(cur, c, h, w, cfg.crop_pad, d.dy, d.dx, a);
    cur = a;
  }
  if (d.flip) {
    uint8_t* out = (cur == a) ? a : b;  // in place when we already own the buffer
    flip_horizontal(cur, c, h, w, out);
    cur = out;
  }
  if (d.degrees != 0.f) {
    uint8_t* out = (cur == a) ? b : a;
    rotate_bilinear(cur, c, h, w, d.degrees, out);
    cur = out;
  }
  normalize_image(cur, c, h, w, cfg.mean, cfg.std, dst);
}

}  // namespace sparrow
