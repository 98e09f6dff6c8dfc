// libFuzzer target: Tiny-ImageNet's text files and images. The input is parsed as wnids.txt, as
// val_annotations.txt (against a fixed class list) and decoded as a 64x64 JPEG/PNG through stb_image with
// the loader's size limit (decode_image_bytes), exactly as load_tiny_imagenet does for each file.
// With SPARROW_FUZZ_JPEG_ORACLE=1 in the environment it also checks the claim of engine/data/jpeg_check.cpp
// that stb_image decodes every JPEG the walk accepts: stb failing on one aborts (a divergence to look at).
#include <cstdint>
#include <cstdlib>
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
  static const bool jpeg_oracle = std::getenv("SPARROW_FUZZ_JPEG_ORACLE") != nullptr;
  try {
    decode_image_bytes(data, size, "fuzz image", LoadOptions{}.max_image_pixels, 64, dst.data());
  } catch (const Error& e) {
    if (jpeg_oracle) {
      size_t p = 0;
      while (p < size && data[p] == 0xFF) ++p;
      const bool jpeg = p > 0 && p < size && data[p] == 0xD8;  // what stb (and the walk) take for a JPEG
      const std::string msg = e.what();
      if (jpeg && (msg.find("decode failed") != std::string::npos || msg.find("not a readable") != std::string::npos))
        __builtin_trap();  // the walk accepted a JPEG that stb_image then could not read
    }
  }
  return 0;
}
