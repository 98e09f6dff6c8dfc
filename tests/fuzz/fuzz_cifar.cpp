// libFuzzer target: CIFAR-10 and CIFAR-100 binary record files (parse_cifar_bytes, what load_cifar10/100
// run on each file). Any input must load or fail with sparrow::Error; a loaded set must validate.
#include <cstdint>

#include "engine/base/error.h"
#include "engine/data/parse.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (int label_bytes : {1, 2}) {
    sparrow::ImageSet s;
    s.name = "fuzz";
    s.channels = 3;
    s.height = s.width = 32;
    s.classes = label_bytes == 1 ? 10 : 100;
    try {
      sparrow::parse_cifar_bytes(data, size, "fuzz", label_bytes, s.classes, s);
      s.n = int(s.labels.size());
      s.validate();
    } catch (const sparrow::Error&) {
    }
  }
  return 0;
}
