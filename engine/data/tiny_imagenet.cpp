// Tiny-ImageNet loader: root/wnids.txt, root/train/<wnid>/images/*.JPEG, root/val/val_annotations.txt +
// root/val/images/*.JPEG; 64×64 images decoded with stb_image (JPEG/PNG only) into 3×64×64 CHW uint8.
// Class ids follow the sorted wnids (PyTorch ImageFolder order), so labels match torchvision-trained models.
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#include <stb_image.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/base/error.h"
#include "engine/data/dataset.h"
#include "engine/data/file_util.h"

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

std::vector<std::string> read_lines(const std::string& path) {
  std::error_code ec;
  SPARROW_CHECK(fs::is_regular_file(path, ec), kName, ": missing file ", path);
  std::ifstream in(path);
  SPARROW_CHECK(in, kName, ": ", path, ": cannot open");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Decodes one image file into `dst` (3×64×64 CHW). The header is checked before decoding so an oversized
// or foreign file is rejected without allocating its pixels.
void decode_into(const std::string& path, int64_t max_pixels, uint8_t* dst) {
  const std::vector<uint8_t> bytes = read_file_bytes(kName, path);
  SPARROW_CHECK(!bytes.empty(), kName, ": ", path, ": file is empty");
  SPARROW_CHECK(bytes.size() < (size_t(1) << 31), kName, ": ", path, ": file too large");
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(bytes.data(), int(bytes.size()), &w, &h, &comp))
    SPARROW_FAIL(kName, ": ", path, ": not a readable JPEG/PNG image (", stbi_failure_reason(), ")");
  SPARROW_CHECK(int64_t(w) * h <= max_pixels, kName, ": ", path, ": image ", w, "x", h,
                " exceeds the size limit of ", max_pixels, " pixels");
  SPARROW_CHECK(w == kTinySide && h == kTinySide, kName, ": ", path, ": image is ", w, "x", h,
                " (expected 64x64)");
  int dw = 0, dh = 0, dc = 0;
  // req_comp = 3 expands grayscale (and drops alpha) so every image is RGB.
  stbi_uc* px = stbi_load_from_memory(bytes.data(), int(bytes.size()), &dw, &dh, &dc, 3);
  if (!px) SPARROW_FAIL(kName, ": ", path, ": decode failed (", stbi_failure_reason(), ")");
  const int plane = kTinySide * kTinySide;
  for (int p = 0; p < plane; ++p)
    for (int c = 0; c < 3; ++c) dst[c * plane + p] = px[p * 3 + c];  // HWC -> CHW
  stbi_image_free(px);
}

}  // namespace

ImageSet load_tiny_imagenet(const std::string& dir, bool train, int64_t max_image_pixels) {
  const std::string root = data_detail::resolve_dir(kName, dir, "wnids.txt", "tiny-imagenet-200");
  const std::string wnids_path = join_path(root, "wnids.txt");

  std::vector<std::string> wnids;
  for (const auto& line : read_lines(wnids_path)) {
    const std::string w = trim(line);
    if (!w.empty()) wnids.push_back(w);
  }
  SPARROW_CHECK(!wnids.empty(), kName, ": ", wnids_path, ": no class ids");
  std::sort(wnids.begin(), wnids.end());
  for (size_t i = 1; i < wnids.size(); ++i)
    SPARROW_CHECK(wnids[i] != wnids[i - 1], kName, ": ", wnids_path, ": duplicate class id ", wnids[i]);
  std::map<std::string, int> class_of;
  for (size_t i = 0; i < wnids.size(); ++i) class_of[wnids[i]] = int(i);

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
    const auto lines = read_lines(ann);
    for (size_t i = 0; i < lines.size(); ++i) {
      if (trim(lines[i]).empty()) continue;
      std::istringstream fields(lines[i]);
      std::string file, wnid;
      std::getline(fields, file, '\t');
      std::getline(fields, wnid, '\t');
      file = trim(file);
      wnid = trim(wnid);
      SPARROW_CHECK(!file.empty() && !wnid.empty(), kName, ": ", ann, ": line ", i + 1,
                    ": expected 'file<TAB>wnid...'");
      const auto it = class_of.find(wnid);
      SPARROW_CHECK(it != class_of.end(), kName, ": ", ann, ": line ", i + 1, ": class id '", wnid,
                    "' is not in ", wnids_path);
      files.push_back(join_path(img_dir, file));
      labels.push_back(it->second);
    }
    SPARROW_CHECK(!files.empty(), kName, ": ", ann, ": no annotations");
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
