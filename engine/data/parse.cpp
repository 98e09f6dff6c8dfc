// In-memory parsers for CIFAR records, gzip and IDX arrays (see parse.h). Every size read from the input is
// checked against the bytes actually present before anything is allocated or copied, so a lying header
// is an error, never a huge allocation or an out-of-bounds read.
#include "engine/data/parse.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "engine/base/error.h"

namespace sparrow {

namespace {

constexpr int kCifarPixels = 3 * 32 * 32;
constexpr uint32_t kIdxImagesMagic = 2051, kIdxLabelsMagic = 2049;
constexpr uint32_t kMnistSide = 28;
constexpr int kMnistClasses = 10;
constexpr size_t kMaxImages = size_t(std::numeric_limits<int>::max());  // ImageSet::n is an int

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// CIFAR

void parse_cifar_bytes(const uint8_t* bytes, size_t size, const std::string& name, int label_bytes, int classes,
                       ImageSet& out) {
  SPARROW_CHECK(label_bytes == 1 || label_bytes == 2, name, ": CIFAR records have 1 or 2 label bytes, not ",
                label_bytes);
  SPARROW_CHECK(classes > 0 && classes <= 256, name, ": bad class count ", classes);
  const size_t record = size_t(label_bytes) + kCifarPixels;
  SPARROW_CHECK(size > 0, name, ": file is empty");
  SPARROW_CHECK(size % record == 0, name, ": size ", size, " bytes is not a whole number of ", record,
                "-byte records (truncated or not a CIFAR-", label_bytes == 1 ? "10" : "100", " binary file?)");
  const size_t count = size / record;
  const size_t first = out.labels.size();
  SPARROW_CHECK(count <= kMaxImages - first, name, ": ", count, " records make more than ", kMaxImages,
                " images in all");
  SPARROW_CHECK(out.pixels.size() == first * kCifarPixels, name, ": image set holds ", out.pixels.size(),
                " pixel bytes for ", first, " labels");
  out.labels.resize(first + count);
  out.pixels.resize((first + count) * kCifarPixels);
  for (size_t r = 0; r < count; ++r) {
    const uint8_t* rec = bytes + r * record;
    if (label_bytes == 2)
      SPARROW_CHECK(rec[0] < 20, name, ": record ", r, ": coarse label ", int(rec[0]), " out of range [0, 20)");
    const int label = rec[label_bytes - 1];
    SPARROW_CHECK(label < classes, name, ": record ", r, ": label ", label, " out of range [0, ", classes, ")");
    out.labels[first + r] = label;
    std::memcpy(out.pixels.data() + (first + r) * kCifarPixels, rec + label_bytes, kCifarPixels);
  }
}

// ---------------------------------------------------------------------------------------------------------
// gzip

bool is_gzip(const uint8_t* bytes, size_t size) { return size >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b; }

uint64_t gunzip_limit(size_t size) { return uint64_t(size) * 1040 + 4096; }

std::vector<uint8_t> gunzip_bytes(const uint8_t* bytes, size_t size, const std::string& name, uint64_t max_out) {
  SPARROW_CHECK(is_gzip(bytes, size), name, ": not gzip data (no 1f 8b magic)");
  std::vector<uint8_t> out;
  // The trailer's ISIZE (the last member's size mod 2^32) is a hint for one allocation, never trusted
  // beyond max_out.
  if (size >= 18) {
    const uint32_t isize = uint32_t(bytes[size - 4]) | (uint32_t(bytes[size - 3]) << 8) |
                           (uint32_t(bytes[size - 2]) << 16) | (uint32_t(bytes[size - 1]) << 24);
    out.reserve(size_t(std::min<uint64_t>(isize, max_out)));
  }
  z_stream zs{};
  SPARROW_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, name, ": cannot initialise zlib");
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } end{&zs};
  constexpr size_t kChunkIn = size_t(1) << 30;  // avail_in is 32-bit
  size_t fed = 0;                              // input bytes handed to zlib so far
  std::vector<uint8_t> buf(size_t(1) << 16);
  for (;;) {
    if (zs.avail_in == 0 && fed < size) {
      const size_t n = std::min(size - fed, kChunkIn);
      zs.next_in = const_cast<Bytef*>(bytes + fed);
      zs.avail_in = uInt(n);
      fed += n;
    }
    zs.next_out = buf.data();
    zs.avail_out = uInt(buf.size());
    const int rc = inflate(&zs, Z_NO_FLUSH);
    const size_t produced = buf.size() - zs.avail_out;
    SPARROW_CHECK(out.size() + produced <= max_out, name, ": gzip data expands beyond ", max_out,
                  " bytes (corrupt, or not the expected file)");
    out.insert(out.end(), buf.data(), buf.data() + produced);
    if (rc == Z_STREAM_END) {
      const size_t rest = zs.avail_in + (size - fed);
      if (rest == 0) break;
      // Another gzip member may follow (concatenated files); anything else is damage.
      const uint8_t* next = zs.avail_in ? zs.next_in : bytes + fed;
      const size_t next_avail = zs.avail_in ? zs.avail_in : size - fed;
      SPARROW_CHECK(is_gzip(next, next_avail), name, ": ", rest, " bytes of trailing garbage after the gzip data");
      SPARROW_CHECK(inflateReset(&zs) == Z_OK, name, ": cannot reset zlib");
      continue;
    }
    if (rc == Z_OK) continue;
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && fed == size)
      SPARROW_FAIL(name, ": corrupt gzip data (the stream ends early: truncated file?)");
    if (rc == Z_BUF_ERROR) continue;  // no progress possible with this much output room: go round again
    SPARROW_FAIL(name, ": corrupt gzip data (", zs.msg ? zs.msg : "zlib error", ")");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// IDX

IdxArray parse_idx_bytes(const uint8_t* bytes, size_t size, const std::string& name, uint32_t expected_magic,
                         const char* noun) {
  std::vector<uint8_t> plain;
  const uint8_t* p = bytes;
  size_t n = size;
  if (is_gzip(bytes, size)) {
    plain = gunzip_bytes(bytes, size, name, gunzip_limit(size));
    p = plain.data();
    n = plain.size();
  }
  SPARROW_CHECK(n >= 4, name, ": truncated header (", n, " of at least 4 bytes)");
  IdxArray a;
  a.magic = be32(p);
  if (expected_magic != 0)
    SPARROW_CHECK(a.magic == expected_magic, name, ": bad magic ", a.magic, " (expected ", expected_magic,
                  " for IDX ", noun, ")");
  SPARROW_CHECK(p[0] == 0 && p[1] == 0, name, ": bad magic ", a.magic, " (not an IDX file)");
  SPARROW_CHECK(p[2] == 0x08, name, ": IDX element type ", int(p[2]), " is not unsigned byte (8)");
  const int ndim = p[3];
  SPARROW_CHECK(ndim >= 1 && ndim <= 4, name, ": IDX array has ", ndim, " dimensions (expected 1 to 4)");
  const size_t header = 4 + 4 * size_t(ndim);
  SPARROW_CHECK(n >= header, name, ": truncated header (", n, " of ", header, " bytes)");
  uint64_t total = 1;
  bool overflow = false;
  for (int d = 0; d < ndim; ++d) {
    a.dims.push_back(be32(p + 4 + 4 * d));
    overflow = overflow || __builtin_mul_overflow(total, uint64_t(a.dims.back()), &total);
  }
  const uint64_t have = n - header;
  SPARROW_CHECK(!overflow && total <= have, name, ": truncated: header says ", a.dims[0], " ", noun, " (",
                overflow ? std::string("more than 2^64") : std::to_string(total), " bytes) but only ", have,
                " bytes follow");
  SPARROW_CHECK(total == have, name, ": trailing data after ", a.dims[0], " ", noun, " (", have - total,
                " extra bytes: wrong count in header?)");
  if (plain.empty()) {
    a.data.assign(p + header, p + n);
  } else {
    plain.erase(plain.begin(), plain.begin() + std::ptrdiff_t(header));
    a.data = std::move(plain);
  }
  return a;
}

ImageSet fashion_mnist_from_idx(IdxArray images, const std::string& images_name, const IdxArray& labels,
                                const std::string& labels_name, const std::string& set_name) {
  SPARROW_CHECK(images.magic == kIdxImagesMagic, images_name, ": bad magic ", images.magic, " (expected ",
                kIdxImagesMagic, " for IDX images)");
  SPARROW_CHECK(images.dims.size() == 3, images_name, ": ", images.dims.size(),
                "-dimensional array (expected n x 28 x 28 images)");
  const uint32_t count = images.dims[0], rows = images.dims[1], cols = images.dims[2];
  SPARROW_CHECK(rows == kMnistSide && cols == kMnistSide, images_name, ": image size ", rows, "x", cols,
                " (expected 28x28)");
  SPARROW_CHECK(count > 0, images_name, ": header says 0 images");
  SPARROW_CHECK(count <= kMaxImages, images_name, ": ", count, " images is more than ", kMaxImages);
  SPARROW_CHECK(images.data.size() == size_t(count) * kMnistSide * kMnistSide, images_name, ": ",
                images.data.size(), " pixel bytes for ", count, " images");
  SPARROW_CHECK(labels.magic == kIdxLabelsMagic, labels_name, ": bad magic ", labels.magic, " (expected ",
                kIdxLabelsMagic, " for IDX labels)");
  SPARROW_CHECK(labels.dims.size() == 1, labels_name, ": ", labels.dims.size(),
                "-dimensional array (expected a vector of labels)");
  SPARROW_CHECK(labels.dims[0] == count, labels_name, ": label count ", labels.dims[0],
                " does not match image count ", count, " (", images_name, ")");
  SPARROW_CHECK(labels.data.size() == count, labels_name, ": ", labels.data.size(), " bytes for ", count,
                " labels");
  ImageSet s;
  s.name = set_name;
  s.channels = 1;
  s.height = s.width = int(kMnistSide);
  s.classes = kMnistClasses;
  s.labels.resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    SPARROW_CHECK(labels.data[i] < kMnistClasses, labels_name, ": label ", int(labels.data[i]), " of item ", i,
                  " out of range [0, ", kMnistClasses, ")");
    s.labels[i] = labels.data[i];
  }
  s.pixels = std::move(images.data);
  s.n = int(count);
  return s;
}

}  // namespace sparrow
