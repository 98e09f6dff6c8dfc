// Loaders for CIFAR-10/100 (binary records), Fashion-MNIST (IDX, gzip or plain) and the synthetic set, plus
// subsets, validation splits and normalisation constants. Output layout: n×C×H×W uint8, int32 labels.
// The byte-level parsers live in parse.cpp (shared with the fuzz targets); Tiny-ImageNet (JPEG decoding with
// stb_image) lives in tiny_imagenet.cpp.
#include "engine/data/dataset.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "engine/base/error.h"
#include "engine/base/rng.h"
#include "engine/data/file_util.h"
#include "engine/data/parse.h"

namespace fs = std::filesystem;

namespace sparrow {

// ---------------------------------------------------------------------------------------------------------
// file helpers
namespace data_detail {

std::string join_path(const std::string& a, const std::string& b) { return (fs::path(a) / b).string(); }

std::string resolve_dir(const std::string& dataset, const std::string& dir, const std::string& probe,
                        const std::string& subdir) {
  std::string d = dir.empty() ? default_data_dir(dataset) : dir;
  SPARROW_CHECK(!d.empty(), dataset, ": no data directory given (use --data-dir)");
  std::error_code ec;
  SPARROW_CHECK(fs::is_directory(d, ec), dataset, ": data directory '", d, "' does not exist");
  if (!probe.empty() && !subdir.empty() && !fs::exists(join_path(d, probe), ec) &&
      fs::is_directory(join_path(d, subdir), ec))
    return join_path(d, subdir);
  return d;
}

std::vector<uint8_t> read_file_bytes(const std::string& dataset, const std::string& path) {
  std::error_code ec;
  SPARROW_CHECK(fs::exists(path, ec), dataset, ": missing file ", path);
  SPARROW_CHECK(fs::is_regular_file(path, ec), dataset, ": ", path, " is not a regular file");
  const auto size = fs::file_size(path, ec);
  SPARROW_CHECK(!ec, dataset, ": ", path, ": cannot read size (", ec.message(), ")");
  std::ifstream in(path, std::ios::binary);
  SPARROW_CHECK(in, dataset, ": ", path, ": cannot open (", std::strerror(errno), ")");
  std::vector<uint8_t> bytes(size);
  if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size));
  SPARROW_CHECK(in && uint64_t(in.gcount()) == size, dataset, ": ", path, ": read failed after ", in.gcount(),
                " of ", size, " bytes");
  return bytes;
}

}  // namespace data_detail

using data_detail::join_path;
using data_detail::read_file_bytes;
using data_detail::resolve_dir;

// ---------------------------------------------------------------------------------------------------------
// registry
const std::vector<std::string>& dataset_names() {
  static const std::vector<std::string> names = {"cifar10", "cifar100", "tiny-imagenet", "fashion-mnist",
                                                 "synthetic"};
  return names;
}

bool is_dataset_name(const std::string& name) {
  const auto& n = dataset_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

static std::string names_list() {
  std::string s;
  for (const auto& n : dataset_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::string default_data_dir(const std::string& name) {
  if (name == "fashion-mnist") return "/usr/share/datasets/fashion-mnist";
  return "";
}

void ImageSet::validate() const {
  SPARROW_CHECK(n >= 0 && channels > 0 && height > 0 && width > 0 && classes > 0, name,
                ": bad image set shape n=", n, " C=", channels, " H=", height, " W=", width,
                " classes=", classes);
  SPARROW_CHECK(pixels.size() == size_t(n) * size_t(image_bytes()), name, ": pixel buffer holds ",
                pixels.size(), " bytes, expected ", int64_t(n) * image_bytes());
  SPARROW_CHECK(labels.size() == size_t(n), name, ": ", labels.size(), " labels for ", n, " images");
  for (int64_t i = 0; i < n; ++i)
    SPARROW_CHECK(labels[i] >= 0 && labels[i] < classes, name, ": label ", labels[i], " of image ", i,
                  " out of range [0, ", classes, ")");
}

ImageSet load_dataset(const std::string& name, const std::string& dir, bool train,
                      const LoadOptions& options) {
  if (name == "cifar10") return load_cifar10(dir, train);
  if (name == "cifar100") return load_cifar100(dir, train);
  if (name == "tiny-imagenet") return load_tiny_imagenet(dir, train, options.max_image_pixels);
  if (name == "fashion-mnist") return load_fashion_mnist(dir, train);
  if (name == "synthetic") return make_synthetic(options.synthetic, train);
  SPARROW_FAIL("unknown dataset '", name, "' (expected one of: ", names_list(), ")");
}

// ---------------------------------------------------------------------------------------------------------
// CIFAR: fixed-size records of label byte(s) + 3072 pixel bytes (R plane, G plane, B plane, 32×32 each)
namespace {

// Appends the records of one file. `label_bytes` is 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine).
void append_cifar_file(const std::string& dataset, const std::string& path, int label_bytes, int classes,
                       ImageSet& out) {
  const std::vector<uint8_t> bytes = read_file_bytes(dataset, path);
  parse_cifar_bytes(bytes.data(), bytes.size(), dataset + ": " + path, label_bytes, classes, out);
}

ImageSet empty_set(const std::string& name, int c, int h, int w, int classes) {
  ImageSet s;
  s.name = name;
  s.channels = c;
  s.height = h;
  s.width = w;
  s.classes = classes;
  return s;
}

}  // namespace

ImageSet load_cifar10(const std::string& dir, bool train) {
  const std::string root = resolve_dir("cifar10", dir, "test_batch.bin", "cifar-10-batches-bin");
  ImageSet s = empty_set(train ? "cifar10/train" : "cifar10/test", 3, 32, 32, 10);
  s.class_names = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  if (train) {
    for (int b = 1; b <= 5; ++b)
      append_cifar_file("cifar10", join_path(root, str("data_batch_", b, ".bin")), 1, 10, s);
  } else {
    append_cifar_file("cifar10", join_path(root, "test_batch.bin"), 1, 10, s);
  }
  s.n = int(s.labels.size());
  s.validate();
  return s;
}

ImageSet load_cifar100(const std::string& dir, bool train) {
  const std::string root = resolve_dir("cifar100", dir, "test.bin", "cifar-100-binary");
  ImageSet s = empty_set(train ? "cifar100/train" : "cifar100/test", 3, 32, 32, 100);
  append_cifar_file("cifar100", join_path(root, train ? "train.bin" : "test.bin"), 2, 100, s);
  s.n = int(s.labels.size());
  s.validate();
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Fashion-MNIST: IDX files, big-endian header (magic, count[, rows, cols]) then bytes; gzip or plain
// (parse_idx_bytes tells them apart by the gzip magic, so a plain file named .gz still loads).
namespace {

// `dir/base.gz`, else `dir/base`; an error names both when neither exists.
std::string find_idx_file(const std::string& dir, const std::string& base) {
  std::error_code ec;
  const std::string gz = join_path(dir, base + ".gz"), plain = join_path(dir, base);
  if (fs::is_regular_file(gz, ec)) return gz;
  if (fs::is_regular_file(plain, ec)) return plain;
  SPARROW_FAIL("fashion-mnist: missing file ", gz, " (or uncompressed ", plain, ")");
}

IdxArray read_idx_file(const std::string& path, uint32_t magic, const char* noun) {
  const std::vector<uint8_t> bytes = read_file_bytes("fashion-mnist", path);
  return parse_idx_bytes(bytes.data(), bytes.size(), "fashion-mnist: " + path, magic, noun);
}

}  // namespace

ImageSet load_fashion_mnist(const std::string& dir, bool train) {
  const std::string root = resolve_dir("fashion-mnist", dir, "", "");
  const std::string prefix = train ? "train" : "t10k";
  const std::string img_path = find_idx_file(root, prefix + "-images-idx3-ubyte");
  const std::string lbl_path = find_idx_file(root, prefix + "-labels-idx1-ubyte");
  IdxArray images = read_idx_file(img_path, 2051, "images");
  const IdxArray labels = read_idx_file(lbl_path, 2049, "labels");
  ImageSet s = fashion_mnist_from_idx(std::move(images), "fashion-mnist: " + img_path, labels,
                                      "fashion-mnist: " + lbl_path, train ? "fashion-mnist/train" : "fashion-mnist/test");
  s.class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  s.validate();
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// synthetic
namespace {

// Distinct integer frequency vectors (a, b), smallest first, one per ± pair (a > 0, or a == 0 and b > 0),
// so class patterns are mutually orthogonal sinusoids.
std::vector<std::pair<int, int>> frequency_vectors(int count, int max_freq) {
  std::vector<std::pair<int, int>> out;
  for (int r = 1; r <= max_freq && int(out.size()) < count; ++r)
    for (int a = 0; a <= r && int(out.size()) < count; ++a)
      for (int b = -r; b <= r && int(out.size()) < count; ++b) {
        if (std::max(std::abs(a), std::abs(b)) != r) continue;
        if (a == 0 && b <= 0) continue;
        out.emplace_back(a, b);
      }
  return out;
}

}  // namespace

ImageSet make_synthetic(const SyntheticSpec& spec, bool train) {
  SPARROW_CHECK(spec.classes >= 2 && spec.channels >= 1 && spec.size >= 4,
                "synthetic: bad spec classes=", spec.classes, " channels=", spec.channels,
                " size=", spec.size, " (need classes >= 2, channels >= 1, size >= 4)");
  const int64_t count = train ? spec.train_count : spec.test_count;
  SPARROW_CHECK(count >= 1, "synthetic: ", train ? "train" : "test", " count must be >= 1, got ", count);
  const int side = spec.size, C = spec.channels;
  const auto freqs = frequency_vectors(spec.classes, side / 2 - 1);
  SPARROW_CHECK(int(freqs.size()) == spec.classes, "synthetic: ", spec.classes,
                " classes need more distinct patterns than a ", side, "x", side, " image holds (max ",
                freqs.size(), ")");

  ImageSet s = empty_set(train ? "synthetic/train" : "synthetic/test", C, side, side, spec.classes);
  const int64_t img = s.image_bytes();
  // Class patterns (shared by both splits): amplitude · sin(2π(a·x + b·y)/side + phase[class, channel]).
  std::vector<float> patterns(size_t(spec.classes) * img);
  for (int k = 0; k < spec.classes; ++k)
    for (int c = 0; c < C; ++c) {
      Rng r = Rng::derive(spec.seed, 0x5157A7u, uint64_t(k), uint64_t(c));
      const double phase = r.uniform(0.0, 6.283185307179586);
      for (int y = 0; y < side; ++y)
        for (int x = 0; x < side; ++x) {
          const double t = 6.283185307179586 * (freqs[k].first * x + freqs[k].second * y) / side + phase;
          patterns[size_t(k) * img + (size_t(c) * side + y) * side + x] = float(spec.amplitude * std::sin(t));
        }
    }
  s.n = int(count);
  s.labels.resize(count);
  s.pixels.resize(size_t(count) * img);
  const float kIrwinHallScale = 1.7320508f;  // sum of 4 U(0,1) minus 2 has std 1/sqrt(3)
  for (int64_t i = 0; i < count; ++i) {
    const int label = int(i % spec.classes);
    s.labels[i] = label;
    Rng r = Rng::derive(spec.seed, train ? 0x7A1Au : 0x7E57u, uint64_t(i));
    const float* pat = patterns.data() + size_t(label) * img;
    uint8_t* dst = s.pixels.data() + size_t(i) * img;
    for (int64_t p = 0; p < img; ++p) {
      // Four 16-bit uniforms from one draw: cheap, portable, approximately normal noise.
      const uint64_t u = r.next_u64();
      const float sum =
          float((u & 0xFFFF) + ((u >> 16) & 0xFFFF) + ((u >> 32) & 0xFFFF) + (u >> 48)) / 65536.f;
      const float v = 128.f + pat[p] + spec.noise * (sum - 2.f) * kIrwinHallScale;
      dst[p] = uint8_t(std::lround(std::clamp(v, 0.f, 255.f)));
    }
  }
  s.validate();
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// normalisation
Normalization dataset_normalization(const std::string& name, int channels) {
  Normalization n;
  if (name == "cifar10") {
    // Per-channel statistics of the CIFAR-10 training set.
    n.mean = {0.4914f, 0.4822f, 0.4465f};
    n.std = {0.2470f, 0.2435f, 0.2616f};
  } else if (name == "cifar100") {
    n.mean = {0.5071f, 0.4865f, 0.4409f};
    n.std = {0.2673f, 0.2564f, 0.2762f};
  } else if (name == "tiny-imagenet") {
    n.mean = {0.4802f, 0.4481f, 0.3975f};
    n.std = {0.2770f, 0.2691f, 0.2821f};
  } else if (name == "fashion-mnist") {
    n.mean = {0.2860f};
    n.std = {0.3530f};
  } else if (name == "synthetic") {
    n.mean.assign(size_t(std::max(channels, 1)), 0.5f);
    n.std.assign(size_t(std::max(channels, 1)), 0.5f);
  } else {
    SPARROW_FAIL("unknown dataset '", name, "' (expected one of: ", names_list(), ")");
  }
  SPARROW_CHECK(int(n.mean.size()) == channels, name, ": normalisation has ", n.mean.size(),
                " channels but the images have ", channels);
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// subsets
ImageSet select_images(const ImageSet& set, const std::vector<int64_t>& indices, const std::string& suffix) {
  ImageSet out = empty_set(set.name + suffix, set.channels, set.height, set.width, set.classes);
  out.class_names = set.class_names;
  const int64_t img = set.image_bytes();
  out.n = int(indices.size());
  out.labels.resize(indices.size());
  out.pixels.resize(indices.size() * size_t(img));
  for (size_t j = 0; j < indices.size(); ++j) {
    const int64_t i = indices[j];
    SPARROW_CHECK(i >= 0 && i < set.n, set.name, ": selected index ", i, " out of range [0, ", set.n, ")");
    out.labels[j] = set.labels[i];
    std::memcpy(out.pixels.data() + j * img, set.image(i), size_t(img));
  }
  return out;
}

ImageSet take_subset(const ImageSet& set, int64_t limit, uint64_t seed) {
  if (limit <= 0 || limit >= set.n) return set;
  std::vector<int64_t> idx(set.n);
  std::iota(idx.begin(), idx.end(), 0);
  // Partial Fisher-Yates: the first `limit` positions are a uniform sample without replacement.
  Rng r = Rng::derive(seed, 0x5B5E7u);
  for (int64_t i = 0; i < limit; ++i) std::swap(idx[i], idx[i + int64_t(r.below(uint64_t(set.n - i)))]);
  idx.resize(limit);
  std::sort(idx.begin(), idx.end());
  return select_images(set, idx, str("[limit ", limit, "]"));
}

std::pair<ImageSet, ImageSet> split_validation(const ImageSet& set, double fraction, uint64_t seed) {
  SPARROW_CHECK(fraction >= 0.0 && fraction < 1.0, set.name, ": validation fraction ", fraction,
                " must be in [0, 1)");
  std::vector<std::vector<int64_t>> by_class(set.classes);
  for (int64_t i = 0; i < set.n; ++i) by_class[set.labels[i]].push_back(i);
  std::vector<uint8_t> in_val(set.n, 0);
  for (int k = 0; k < set.classes; ++k) {
    auto& v = by_class[k];
    const int64_t take = std::llround(fraction * double(v.size()));
    Rng r = Rng::derive(seed, 0x5A11Du, uint64_t(k));
    for (int64_t i = 0; i < take; ++i) std::swap(v[i], v[i + int64_t(r.below(uint64_t(v.size() - i)))]);
    for (int64_t i = 0; i < take; ++i) in_val[v[i]] = 1;
  }
  std::vector<int64_t> tr, va;
  for (int64_t i = 0; i < set.n; ++i) (in_val[i] ? va : tr).push_back(i);
  return {select_images(set, tr, "[train part]"), select_images(set, va, "[val part]")};
}

std::vector<int64_t> class_counts(const ImageSet& set) {
  std::vector<int64_t> c(size_t(std::max(set.classes, 0)), 0);
  for (int32_t l : set.labels)
    if (l >= 0 && l < set.classes) ++c[l];
  return c;
}

}  // namespace sparrow
