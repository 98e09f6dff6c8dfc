// Training-time augmentation on one CHW uint8 image: random crop with zero padding, horizontal flip,
// small rotation (bilinear, zero fill), then normalisation to float CHW. Randomness comes from an Rng
// the caller derives per (seed, epoch, sample position, view), so results never depend on thread timing.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/rng.h"

namespace sparrow {

struct AugmentConfig {
  int crop_pad = 0;            // random crop of the original size from the image zero-padded by this (0: off)
  bool flip = false;           // horizontal flip with probability 1/2
  float rotate_degrees = 0.f;  // rotation by a uniform angle in [−deg, +deg] (0: off)
  std::vector<float> mean, std;  // per channel, on [0,1] pixel values; empty = mean 0, std 1
};

// Per-dataset defaults. Train: CIFAR-10/100 and Tiny-ImageNet crop (pad 4) + flip; Fashion-MNIST crop
// (pad 2), flip off; synthetic crop (pad 2), flip off (a mirrored class pattern is another class's).
// Test: normalisation only. Rotation is always off by default (PDD's CIFAR-100 recipe turns it on, 15°).
AugmentConfig default_augment(const std::string& dataset, int channels, bool train);
// Throws sparrow::Error when the config does not fit images of this shape (negative pad, pad >= size,
// angle outside [0, 180], mean/std sizes other than `channels`, std <= 0).
void check_augment(const AugmentConfig& cfg, int channels, int height, int width);

// --- primitives (exposed for tests and for callers that compose their own pipeline) -----------------
// dst(c, y, x) = src(c, y + dy − pad, x + dx − pad), zero outside; dy, dx in [0, 2·pad].
void crop_padded(const uint8_t* src, int c, int h, int w, int pad, int dy, int dx, uint8_t* dst);
// dst(c, y, x) = src(c, y, w − 1 − x). dst may equal src.
void flip_horizontal(const uint8_t* src, int c, int h, int w, uint8_t* dst);
// Counter-clockwise (as displayed, y down) rotation by `degrees` about the image centre, bilinear
// sampling, zero fill, rounded to the nearest level. Multiples of 90° use exact sin/cos, so a square
// image rotated by 90° is an exact transpose-and-flip. dst must not alias src.
void rotate_bilinear(const uint8_t* src, int c, int h, int w, float degrees, uint8_t* dst);
// dst = (src/255 − mean[c]) / std[c]; empty mean/std means mean 0, std 1.
void normalize_image(const uint8_t* src, int c, int h, int w, const std::vector<float>& mean,
                     const std::vector<float>& std, float* dst);

// The random choices for one sample, drawn in a fixed order from `rng` (crop dy, crop dx, flip, angle).
struct AugmentDraw {
  int dy = 0, dx = 0;
  bool flip = false;
  float degrees = 0.f;
};
AugmentDraw draw_augment(const AugmentConfig& cfg, Rng& rng);

// Full pipeline for one image: crop → flip → rotate → normalise, writing C×H×W floats to dst.
// `scratch` is resized as needed (reuse it across calls to avoid allocations).
void augment_image(const uint8_t* src, int c, int h, int w, const AugmentConfig& cfg, const AugmentDraw& d,
                   float* dst, std::vector<uint8_t>& scratch);

}  // namespace sparrow
