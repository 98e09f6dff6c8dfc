// libFuzzer target: Tiny-ImageNet's text files and images. The input is parsed as wnids.txt, as
// val_annotations.txt (against a fixed class list) and decoded as a 64x64 JPEG/PNG through stb_image with
// the loader's size limit (decode_image_bytes), exactly as load_tiny_imagenet does for each file.
#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/data/parse.h"

using namespace sparrow;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    parse_wnids(text, "fuzz wnids");
  } catch (const Error&) {
  }
  static const std::vector<std::string> wnids = {"n01443537", "n01629819", "n01641577", "n02", "n03"};
  try {
    for (const auto& a : parse_val_annotations(text, "fuzz annotations", wnids))
      if (a.label < 0 || a.label >= int(wnids.size()) || a.file.find('/') != std::string::npos) __builtin_trap();
  } catch (const Error&) {
  }
  static std::vector<uint8_t> dst(3 * 64 * 64);
  try {
    decode_image_bytes(data, size, "fuzz image", LoadOptions{}.max_image_pixels, 64, dst.data());
  } catch (const Error&) {
  }
  return 0;
}
