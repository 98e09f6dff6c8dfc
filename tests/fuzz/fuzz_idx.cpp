// libFuzzer target: IDX files, plain or gzip (parse_idx_bytes and fashion_mnist_from_idx, what
// load_fashion_mnist runs). The input is tried as any IDX array, as the images file and as the labels
// file of a Fashion-MNIST split (its partner is a small valid array of the matching count).
#include <cstdint>

#include "engine/base/error.h"
#include "engine/data/parse.h"

using namespace sparrow;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    parse_idx_bytes(data, size, "fuzz");
  } catch (const Error&) {
  }
  try {
    IdxArray images = parse_idx_bytes(data, size, "fuzz images", 2051, "images");
    IdxArray labels;
    labels.magic = 2049;
    const uint32_t n = images.dims.empty() ? 0 : images.dims[0];
    if (n <= (1u << 16)) {
      labels.dims = {n};
      labels.data.assign(n, 3);
      ImageSet s = fashion_mnist_from_idx(std::move(images), "fuzz images", labels, "fuzz labels", "fuzz");
      s.validate();
    }
  } catch (const Error&) {
  }
  try {
    IdxArray labels = parse_idx_bytes(data, size, "fuzz labels", 2049, "labels");
    const uint32_t n = labels.dims.empty() ? 0 : labels.dims[0];
    if (n <= (1u << 12)) {
      IdxArray images;
      images.magic = 2051;
      images.dims = {n, 28, 28};
      images.data.assign(size_t(n) * 784, 1);
      ImageSet s = fashion_mnist_from_idx(std::move(images), "fuzz images", labels, "fuzz labels", "fuzz");
      s.validate();
    }
  } catch (const Error&) {
  }
  return 0;
}
