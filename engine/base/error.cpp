// Out-of-line error construction, so every throw site stays one small call.
#include "engine/base/error.h"

#include <cstring>

namespace sparrow {

[[noreturn]] void throw_error(const char* file, int line, const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  throw Error(str(msg, " [", base ? base + 1 : file, ":", line, "]"));
}

}  // namespace sparrow
