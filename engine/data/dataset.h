// Image datasets held in memory as raw bytes: CIFAR-10/100, Tiny-ImageNet, Fashion-MNIST and a seeded
// synthetic set. Layout: pixels are n×C×H×W uint8 (CHW per image, row-major), labels int32 in [0, classes).
// No Tensor here: the data library builds and tests on its own (see engine/data/loader.h for batches).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sparrow {

struct ImageSet {
  std::string name;  // dataset name ("cifar10", ...), plus the split it came from ("cifar10/train")
  int n = 0, channels = 0, height = 0, width = 0, classes = 0;
  std::vector<uint8_t> pixels;           // n×C×H×W
  std::vector<int32_t> labels;           // n
  std::vector<std::string> class_names;  // optional (Tiny-ImageNet wnids, Fashion-MNIST names)

  int64_t image_bytes() const { return int64_t(channels) * height * width; }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * image_bytes(); }
  // Throws sparrow::Error if sizes and labels are inconsistent (used after every load and split).
  void validate() const;
};

// Parameters of the synthetic set. Each class is a distinct smooth pattern (a 2-D sinusoid with its own
// integer frequency vector and per-channel phase, all fixed by `seed`) plus per-pixel noise; train and test
// share the patterns and differ in noise, so a small CNN (or even a nearest-mean classifier) learns it fast.
struct SyntheticSpec {
  int classes = 10, channels = 3, size = 32;
  int64_t train_count = 2000, test_count = 500;
  uint64_t seed = 1;
  float amplitude = 80.f;  // pattern amplitude around 128, in pixel levels
  float noise = 30.f;      // noise standard deviation, in pixel levels
};

struct LoadOptions {
  SyntheticSpec synthetic;
  // Tiny-ImageNet: images whose header announces more pixels than this are rejected before decoding.
  int64_t max_image_pixels = 4096 * 4096;
};

// "cifar10", "cifar100", "tiny-imagenet", "fashion-mnist", "synthetic".
const std::vector<std::string>& dataset_names();
bool is_dataset_name(const std::string& name);
// Default directory when --data-dir is empty ("" when there is none, e.g. CIFAR).
std::string default_data_dir(const std::string& name);

// Loads the train or test split (Tiny-ImageNet: test = the labelled val split). `dir` may be the folder
// holding the files or its parent holding the archive's folder (cifar-10-batches-bin, cifar-100-binary,
// tiny-imagenet-200). Empty `dir` uses default_data_dir(name). Every file is validated; a missing or bad
// file throws sparrow::Error naming the file and the problem.
ImageSet load_dataset(const std::string& name, const std::string& dir, bool train,
                      const LoadOptions& options = {});

// The individual loaders (load_dataset dispatches to these).
ImageSet load_cifar10(const std::string& dir, bool train);
ImageSet load_cifar100(const std::string& dir, bool train);
ImageSet load_fashion_mnist(const std::string& dir, bool train);
ImageSet load_tiny_imagenet(const std::string& dir, bool train, int64_t max_image_pixels = 4096 * 4096);
ImageSet make_synthetic(const SyntheticSpec& spec, bool train);

// Per-channel normalisation constants (on [0,1] pixel values): x' = (x/255 − mean[c]) / std[c].
struct Normalization {
  std::vector<float> mean, std;
};
Normalization dataset_normalization(const std::string& name, int channels);

// The images at `indices` (in that order), as a new set with the same metadata.
ImageSet select_images(const ImageSet& set, const std::vector<int64_t>& indices, const std::string& suffix);
// A deterministic subset of min(limit, n) images chosen with `seed` (kept in dataset order), for
// --limit-train / --limit-test. limit <= 0 or >= n returns a copy of the whole set.
ImageSet take_subset(const ImageSet& set, int64_t limit, uint64_t seed);
// Splits off a validation set, stratified: round(fraction × class count) images of each class, chosen with
// `seed`; both parts keep dataset order. Returns {train, val}. fraction in [0, 1).
std::pair<ImageSet, ImageSet> split_validation(const ImageSet& set, double fraction, uint64_t seed);
// Number of images per class (size = classes).
std::vector<int64_t> class_counts(const ImageSet& set);

}  // namespace sparrow
