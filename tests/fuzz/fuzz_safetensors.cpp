// libFuzzer target: safetensors files, through both readers a checkpoint can take: parse_safetensors on a
// buffer and read_safetensors / read_safetensors_header on a path (here a memfd, so no disk I/O per run).
// Every input must parse or fail with sparrow::Error; a parsed file must re-serialise and parse back equal.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "engine/base/error.h"
#include "engine/io/safetensors.h"

using namespace sparrow;

namespace {
const std::string& memfd_path() {
  static const std::string path = [] {
    const int fd = memfd_create("fuzz_safetensors", 0);
    if (fd < 0) __builtin_trap();
    return "/proc/self/fd/" + std::to_string(fd);
  }();
  return path;
}
int memfd() { return std::stoi(memfd_path().substr(14)); }
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bool parsed = false;
  StFile a;
  try {
    a = parse_safetensors(data, size, "fuzz");
    parsed = true;
  } catch (const Error&) {
  }
  if (parsed) {
    // Round trip: what we accept we can write, and it reads back the same.
    std::vector<uint8_t> bytes;
    try {
      bytes = serialize_safetensors(a);
    } catch (const Error&) {
      return 0;  // e.g. a name that is not valid UTF-8: refused by the writer, cleanly
    }
    StFile b = parse_safetensors(bytes.data(), bytes.size(), "round trip");
    if (b.tensors.size() != a.tensors.size() || b.metadata != a.metadata) __builtin_trap();
    for (const auto& [name, e] : a.tensors) {
      const auto it = b.tensors.find(name);
      if (it == b.tensors.end() || it->second.data != e.data || it->second.shape != e.shape) __builtin_trap();
    }
  }
  const int fd = memfd();
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != ssize_t(size)) __builtin_trap();
  bool read_ok = false;
  try {
    read_safetensors_header(memfd_path());
    StFile c = read_safetensors(memfd_path());
    read_ok = true;
    if (parsed && c.tensors.size() != a.tensors.size()) __builtin_trap();
  } catch (const Error&) {
  }
  if (read_ok != parsed) __builtin_trap();  // both readers must agree on what is valid
  return 0;
}
