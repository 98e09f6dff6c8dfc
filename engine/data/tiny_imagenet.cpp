// Tiny-ImageNet loader: root/wnids.txt, root/train/<wnid>/images/*.JPEG, root/val/val_annotations.txt +
// root/val/images/*.JPEG; 64×64 images decoded with stb_image (JPEG/PNG only) into 3×64×64 CHW uint8.
// Class ids follow the sorted wnids (PyTorch ImageFolder order), so labels match torchvision-trained models.
// The byte-level parsers (wnids, annotations, image decoding; declared in parse.h) are here with stb_image.
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#include <stb_image.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>

#include "engine/base/error.h"
#include "engine/data/dataset.h"
#include "engine/data/file_util.h"
#include "engine/data/parse.h"

namespace fs = std::filesystem;

namespace sparrow {

using data_detail::join_path;
using data_detail::read_file_bytes;

namespace {

constexpr int kTinySide = 64;
constexpr const char* kName = "tiny-imagenet";

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".jpeg" || ext == ".jpg" || ext == ".png";
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

std::string read_text(const std::string& path) {
  std::error_code ec;
  SPARROW_CHECK(fs::is_regular_file(path, ec), kName, ": missing file ", path);
  const std::vector<uint8_t> bytes = read_file_bytes(kName, path);
  return std::string(bytes.begin(), bytes.end());
}

// Lines of a text file ('\n'-separated; a '\r' before it is dropped by trim()).
std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return lines;
}

// A name that is safe to join under a folder: not empty, no separator or NUL, not "." or "..".
bool is_plain_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\0') == std::string::npos;
}

// Untrusted text quoted in a message: one line, short.
std::string shown(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < 80; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    out += (c < 0x20 || c >= 0x7f) ? '?' : s[i];
  }
  return s.size() > 80 ? out + "..." : out;
}

// The PNG chunk structure, checked before stb_image runs: every chunk inside the file, and
// no empty IDAT chunk (stb_image 2.27 copies an empty IDAT through a null buffer pointer: undefined
// behaviour found by fuzz_tiny_imagenet, harmless in practice but not something to rely on).
void check_png_structure(const uint8_t* b, size_t size, const std::string& name) {
  static const uint8_t kSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (size < 8 || std::memcmp(b, kSig, 8) != 0) return;
  auto be32 = [](const uint8_t* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
  };
  size_t pos = 8;
  while (pos < size) {
    SPARROW_CHECK(size - pos >= 12, name, ": corrupt PNG (truncated chunk header at byte ", pos, ")");
    const uint32_t len = be32(b + pos);
    const std::string type(reinterpret_cast<const char*>(b + pos + 4), 4);
    SPARROW_CHECK(len <= size - pos - 12, name, ": corrupt PNG (chunk ", shown(type), " at byte ", pos,
                  " runs past the end of the file)");
    SPARROW_CHECK(!(type == "IDAT" && len == 0), name, ": corrupt PNG (empty IDAT chunk at byte ", pos, ")");
    if (type == "IEND") return;
    pos += 12 + size_t(len);
  }
}

// Reads one image file and decodes it into `dst` (3×64×64 CHW).
void decode_into(const std::string& path, int64_t max_pixels, uint8_t* dst) {
  const std::vector<uint8_t> bytes = read_file_bytes(kName, path);
  decode_image_bytes(bytes.data(), bytes.size(), str(kName, ": ", path), max_pixels, kTinySide, dst);
}

}  // namespace

std::vector<std::string> parse_wnids(const std::string& text, const std::string& name) {
  std::vector<std::string> wnids;
  const auto lines = split_lines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string w = trim(lines[i]);
    if (w.empty()) continue;
    SPARROW_CHECK(is_plain_name(w), name, ": line ", i + 1, ": class id '", shown(w),
                  "' cannot be a folder name");
    wnids.push_back(w);
  }
  SPARROW_CHECK(!wnids.empty(), name, ": no class ids");
  std::sort(wnids.begin(), wnids.end());
  for (size_t i = 1; i < wnids.size(); ++i)
    SPARROW_CHECK(wnids[i] != wnids[i - 1], name, ": duplicate class id ", shown(wnids[i]));
  return wnids;
}

std::vector<ValAnnotation> parse_val_annotations(const std::string& text, const std::string& name,
                                                 const std::vector<std::string>& sorted_wnids) {
  std::vector<ValAnnotation> out;
  const auto lines = split_lines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (trim(lines[i]).empty()) continue;
    const size_t tab1 = lines[i].find('\t');
    const size_t tab2 = tab1 == std::string::npos ? std::string::npos : lines[i].find('\t', tab1 + 1);
    const std::string file = trim(lines[i].substr(0, tab1));
    const std::string wnid =
        tab1 == std::string::npos ? std::string() : trim(lines[i].substr(tab1 + 1, tab2 == std::string::npos ? std::string::npos : tab2 - tab1 - 1));
    SPARROW_CHECK(!file.empty() && !wnid.empty(), name, ": line ", i + 1, ": expected 'file<TAB>wnid...'");
    SPARROW_CHECK(is_plain_name(file), name, ": line ", i + 1, ": image '", shown(file),
                  "' is not a plain file name in val/images");
    const auto it = std::lower_bound(sorted_wnids.begin(), sorted_wnids.end(), wnid);
    SPARROW_CHECK(it != sorted_wnids.end() && *it == wnid, name, ": line ", i + 1, ": class id '", shown(wnid),
                  "' is not in wnids.txt");
    out.push_back({file, int32_t(it - sorted_wnids.begin())});
  }
  SPARROW_CHECK(!out.empty(), name, ": no annotations");
  return out;
}

void decode_image_bytes(const uint8_t* bytes, size_t size, const std::string& name, int64_t max_pixels, int side,
                        uint8_t* dst) {
  SPARROW_CHECK(size > 0, name, ": file is empty");
  SPARROW_CHECK(size < (size_t(1) << 31), name, ": file too large");
  SPARROW_CHECK(side > 0 && side <= 4096, name, ": bad expected image side ", side);
  // Before stb_image reads anything: stb 2.27 trusts JPEG tables and scan data more than untrusted files
  // allow (see jpeg_check.cpp), and its header pass (stbi_info) already builds Huffman tables.
  check_jpeg_stream(bytes, size, name, max_pixels);
  check_png_structure(bytes, size, name);
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(bytes, int(size), &w, &h, &comp))
    SPARROW_FAIL(name, ": not a readable JPEG/PNG image (", stbi_failure_reason(), ")");
  SPARROW_CHECK(int64_t(w) * h <= max_pixels, name, ": image ", w, "x", h, " exceeds the size limit of ",
                max_pixels, " pixels");
  SPARROW_CHECK(w == side && h == side, name, ": image is ", w, "x", h, " (expected ", side, "x", side, ")");
  int dw = 0, dh = 0, dc = 0;
  // req_comp = 3 expands grayscale (and drops alpha) so every image is RGB.
  stbi_uc* px = stbi_load_from_memory(bytes, int(size), &dw, &dh, &dc, 3);
  if (!px) SPARROW_FAIL(name, ": decode failed (", stbi_failure_reason(), ")");
  if (dw != side || dh != side) {  // the header and the decoder disagree: never index past the buffer
    stbi_image_free(px);
    SPARROW_FAIL(name, ": decoded ", dw, "x", dh, " but the header said ", w, "x", h);
  }
  const int plane = side * side;
  for (int p = 0; p < plane; ++p)
    for (int c = 0; c < 3; ++c) dst[c * plane + p] = px[p * 3 + c];  // HWC -> CHW
  stbi_image_free(px);
}

ImageSet load_tiny_imagenet(const std::string& dir, bool train, int64_t max_image_pixels) {
  const std::string root = data_detail::resolve_dir(kName, dir, "wnids.txt", "tiny-imagenet-200");
  const std::string wnids_path = join_path(root, "wnids.txt");

  const std::vector<std::string> wnids = parse_wnids(read_text(wnids_path), str(kName, ": ", wnids_path));
  std::vector<std::string> files;
  std::vector<int32_t> labels;
  std::error_code ec;
  if (train) {
    for (size_t k = 0; k < wnids.size(); ++k) {
      const std::string img_dir = join_path(join_path(join_path(root, "train"), wnids[k]), "images");
      SPARROW_CHECK(fs::is_directory(img_dir, ec), kName, ": missing directory ", img_dir);
      std::vector<std::string> names;
      for (const auto& e : fs::directory_iterator(img_dir))
        if (e.is_regular_file() && is_image_file(e.path())) names.push_back(e.path().filename().string());
      SPARROW_CHECK(!names.empty(), kName, ": ", img_dir, ": no images");
      std::sort(names.begin(), names.end());  // directory order is not portable
      for (const auto& n : names) {
        files.push_back(join_path(img_dir, n));
        labels.push_back(int32_t(k));
      }
    }
  } else {
    const std::string ann = join_path(join_path(root, "val"), "val_annotations.txt");
    const std::string img_dir = join_path(join_path(root, "val"), "images");
    SPARROW_CHECK(fs::is_directory(img_dir, ec), kName, ": missing directory ", img_dir);
    for (const auto& a : parse_val_annotations(read_text(ann), str(kName, ": ", ann), wnids)) {
      files.push_back(join_path(img_dir, a.file));
      labels.push_back(a.label);
    }
  }

  ImageSet s;
  s.name = train ? "tiny-imagenet/train" : "tiny-imagenet/test";
  s.channels = 3;
  s.height = s.width = kTinySide;
  s.classes = int(wnids.size());
  s.class_names = wnids;
  s.n = int(files.size());
  s.labels = std::move(labels);
  s.pixels.resize(size_t(s.n) * s.image_bytes());

  // Decode in parallel; the error reported is the one of the lowest-numbered bad file, whatever the timing.
  const int64_t n = s.n, img = s.image_bytes();
  int64_t first_bad = n;
  std::string first_error;
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t i = 0; i < n; ++i) {
    try {
      decode_into(files[i], max_image_pixels, s.pixels.data() + i * img);
    } catch (const std::exception& e) {
#pragma omp critical(sparrow_tiny_imagenet_error)
      if (i < first_bad) {
        first_bad = i;
        first_error = e.what();
      }
    }
  }
  if (first_bad < n) throw Error(first_error);
  s.validate();
  return s;
}

}  // namespace sparrow
