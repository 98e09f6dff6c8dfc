// Dataset loaders on small files written into a temp dir (CIFAR-10/100 records, Fashion-MNIST IDX via
// zlib, Tiny-ImageNet JPEG/PNG via stb_image_write), bad files producing one-line errors naming the file,
// the synthetic set's learnability, subsets/splits, the real Fashion-MNIST test split when installed, and
// the in-memory parsers with the regression inputs fuzzing found (tests/fuzz/corpus).
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#define STB_IMAGE_WRITE_IMPLEMENTATION  // test-only: writes the Tiny-ImageNet fixture images
#include <stb/stb_image_write.h>

#include "engine/base/error.h"
#include "engine/data/dataset.h"
#include "engine/data/parse.h"
#include "tests/data/data_test_util.h"

namespace fs = std::filesystem;
using namespace sparrow;
using sparrow_test::expect_error;
using sparrow_test::read_all;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "sparrow_data_XXXXXX").string();
    char* p = mkdtemp(tmpl.data());
    if (!p) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& rel) const { return (fs::path(path_) / rel).string(); }
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

uint8_t pixel_value(int file, int record, int p) { return uint8_t((file * 31 + record * 7 + p * 13) & 0xFF); }

// CIFAR records: `label_bytes` leading bytes then 3072 pixel bytes.
std::vector<uint8_t> cifar_records(int file, const std::vector<std::vector<uint8_t>>& labels) {
  std::vector<uint8_t> out;
  for (size_t r = 0; r < labels.size(); ++r) {
    out.insert(out.end(), labels[r].begin(), labels[r].end());
    for (int p = 0; p < 3072; ++p) out.push_back(pixel_value(file, int(r), p));
  }
  return out;
}

void put_be32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(uint8_t(x >> s));
}

std::vector<uint8_t> idx_images(uint32_t magic, uint32_t count, uint32_t rows, uint32_t cols, int actual) {
  std::vector<uint8_t> v;
  put_be32(v, magic);
  put_be32(v, count);
  put_be32(v, rows);
  put_be32(v, cols);
  for (int i = 0; i < actual; ++i)
    for (uint32_t p = 0; p < rows * cols; ++p) v.push_back(uint8_t((i * 17 + p * 3) & 0xFF));
  return v;
}

std::vector<uint8_t> idx_labels(uint32_t magic, uint32_t count, const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> v;
  put_be32(v, magic);
  put_be32(v, count);
  v.insert(v.end(), labels.begin(), labels.end());
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// CIFAR-10

TEST(Cifar10, LoadsAllTrainBatchesInOrderAndTheTestBatch) {
  TempDir d;
  const int counts[5] = {3, 2, 4, 1, 2};
  std::vector<std::pair<int, int>> expect;  // (file, record) per loaded image
  std::vector<int> expect_label;
  for (int b = 1; b <= 5; ++b) {
    std::vector<std::vector<uint8_t>> labels;
    for (int r = 0; r < counts[b - 1]; ++r) {
      labels.push_back({uint8_t((r + b) % 10)});
      expect.emplace_back(b, r);
      expect_label.push_back((r + b) % 10);
    }
    write_bytes(d / ("data_batch_" + std::to_string(b) + ".bin"), cifar_records(b, labels));
  }
  write_bytes(d / "test_batch.bin", cifar_records(9, {{7}, {0}, {9}}));

  const ImageSet tr = load_dataset("cifar10", d.str(), true);
  ASSERT_EQ(tr.n, 12);
  EXPECT_EQ(tr.channels, 3);
  EXPECT_EQ(tr.height, 32);
  EXPECT_EQ(tr.width, 32);
  EXPECT_EQ(tr.classes, 10);
  for (int i = 0; i < tr.n; ++i) {
    EXPECT_EQ(tr.labels[i], expect_label[i]) << i;
    for (int p = 0; p < 3072; ++p)
      ASSERT_EQ(tr.image(i)[p], pixel_value(expect[i].first, expect[i].second, p))
          << "image " << i << " px " << p;
  }
  const ImageSet te = load_dataset("cifar10", d.str(), false);
  ASSERT_EQ(te.n, 3);
  EXPECT_EQ(te.labels, (std::vector<int32_t>{7, 0, 9}));
  EXPECT_EQ(te.image(2)[100], pixel_value(9, 2, 100));
  EXPECT_EQ(te.image(1)[3071], pixel_value(9, 1, 3071));
}

TEST(Cifar10, AcceptsTheParentOfTheExtractedFolder) {
  TempDir d;
  write_bytes(d / "cifar-10-batches-bin/test_batch.bin", cifar_records(1, {{3}, {4}}));
  const ImageSet te = load_cifar10(d.str(), false);
  EXPECT_EQ(te.n, 2);
  EXPECT_EQ(te.labels[1], 4);
}

TEST(Cifar10, BadFilesNameTheFileAndTheProblem) {
  TempDir d;
  for (int b = 1; b <= 5; ++b)
    write_bytes(d / ("data_batch_" + std::to_string(b) + ".bin"), cifar_records(b, {{1}}));
  // truncated: one byte short of two records
  auto rec = cifar_records(0, {{1}, {2}});
  rec.pop_back();
  write_bytes(d / "test_batch.bin", rec);
  expect_error([&] { load_cifar10(d.str(), false); },
               {d / "test_batch.bin", "whole number of 3073-byte records"});
  // label out of range
  write_bytes(d / "test_batch.bin", cifar_records(0, {{1}, {10}}));
  expect_error([&] { load_cifar10(d.str(), false); },
               {d / "test_batch.bin", "record 1", "label 10 out of range"});
  // empty file
  write_bytes(d / "test_batch.bin", {});
  expect_error([&] { load_cifar10(d.str(), false); }, {d / "test_batch.bin", "empty"});
  // a missing training batch is an error, not a silent partial load
  fs::remove(d / "data_batch_3.bin");
  expect_error([&] { load_cifar10(d.str(), true); }, {"missing file", d / "data_batch_3.bin"});
  // missing directory
  expect_error([&] { load_dataset("cifar10", d / "nope", true); }, {"cifar10", d / "nope", "does not exist"});
}

// ---------------------------------------------------------------------------------------------------------
// CIFAR-100

TEST(Cifar100, UsesTheFineLabelAndValidatesBoth) {
  TempDir d;
  write_bytes(d / "train.bin", cifar_records(2, {{19, 99}, {0, 0}, {5, 42}}));
  write_bytes(d / "test.bin", cifar_records(3, {{1, 57}}));
  const ImageSet tr = load_dataset("cifar100", d.str(), true);
  ASSERT_EQ(tr.n, 3);
  EXPECT_EQ(tr.classes, 100);
  EXPECT_EQ(tr.labels, (std::vector<int32_t>{99, 0, 42}));
  for (int i = 0; i < 3; ++i)
    for (int p = 0; p < 3072; p += 97) ASSERT_EQ(tr.image(i)[p], pixel_value(2, i, p));
  const ImageSet te = load_dataset("cifar100", d.str(), false);
  ASSERT_EQ(te.n, 1);
  EXPECT_EQ(te.labels[0], 57);
  EXPECT_EQ(te.image(0)[5], pixel_value(3, 0, 5));

  write_bytes(d / "test.bin", cifar_records(3, {{1, 100}}));
  expect_error([&] { load_cifar100(d.str(), false); }, {d / "test.bin", "label 100 out of range [0, 100)"});
  write_bytes(d / "test.bin", cifar_records(3, {{20, 1}}));
  expect_error([&] { load_cifar100(d.str(), false); }, {d / "test.bin", "coarse label 20"});
  auto rec = cifar_records(3, {{1, 1}});
  rec.resize(3073);  // a CIFAR-10-sized record in a CIFAR-100 file
  write_bytes(d / "test.bin", rec);
  expect_error([&] { load_cifar100(d.str(), false); }, {d / "test.bin", "3074-byte records"});
}

// ---------------------------------------------------------------------------------------------------------
// Fashion-MNIST (IDX)

TEST(FashionMnist, ReadsGzipAndPlainIdx) {
  TempDir d;
  const std::vector<uint8_t> labels = {9, 0, 3, 3, 7, 1};
  write_gz(d / "gz/train-images-idx3-ubyte.gz", idx_images(2051, 6, 28, 28, 6));
  write_gz(d / "gz/train-labels-idx1-ubyte.gz", idx_labels(2049, 6, labels));
  write_bytes(d / "plain/t10k-images-idx3-ubyte", idx_images(2051, 6, 28, 28, 6));
  write_bytes(d / "plain/t10k-labels-idx1-ubyte", idx_labels(2049, 6, labels));
  for (const auto& [sub, train] : {std::pair<std::string, bool>{"gz", true}, {"plain", false}}) {
    const ImageSet s = load_dataset("fashion-mnist", d / sub, train);
    ASSERT_EQ(s.n, 6) << sub;
    EXPECT_EQ(s.channels, 1);
    EXPECT_EQ(s.height, 28);
    EXPECT_EQ(s.width, 28);
    EXPECT_EQ(s.classes, 10);
    for (int i = 0; i < 6; ++i) {
      EXPECT_EQ(s.labels[i], labels[i]);
      for (int p = 0; p < 784; ++p)
        ASSERT_EQ(s.image(i)[p], uint8_t((i * 17 + p * 3) & 0xFF)) << sub << i << "," << p;
    }
  }
}

TEST(FashionMnist, BadFilesNameTheFileAndTheProblem) {
  TempDir d;
  const std::string img = d / "train-images-idx3-ubyte.gz", lbl = d / "train-labels-idx1-ubyte.gz";
  const std::vector<uint8_t> labels = {1, 2, 3};
  auto good = [&] {
    write_gz(img, idx_images(2051, 3, 28, 28, 3));
    write_gz(lbl, idx_labels(2049, 3, labels));
  };
  auto load = [&] { load_fashion_mnist(d.str(), true); };

  good();
  write_gz(img, idx_images(2049, 3, 28, 28, 3));
  expect_error(load, {img, "bad magic 2049", "expected 2051"});
  good();
  write_gz(lbl, idx_labels(2051, 3, labels));
  expect_error(load, {lbl, "bad magic 2051", "expected 2049"});
  good();
  write_gz(img, idx_images(2051, 4, 28, 28, 3));  // header says 4, data for 3
  expect_error(load, {img, "truncated", "4 images"});
  good();
  write_gz(img, idx_images(2051, 2, 28, 28, 3));  // header says 2, data for 3
  expect_error(load, {img, "trailing data"});
  good();
  write_gz(lbl, idx_labels(2049, 4, {1, 2, 3, 4}));
  expect_error(load, {lbl, "label count 4 does not match image count 3"});
  good();
  write_gz(img, idx_images(2051, 3, 27, 28, 3));
  expect_error(load, {img, "image size 27x28", "expected 28x28"});
  good();
  write_gz(lbl, idx_labels(2049, 3, {1, 10, 3}));
  expect_error(load, {lbl, "label 10 of item 1 out of range"});
  good();
  write_gz(lbl, idx_labels(2049, 3, {1, 2}));
  expect_error(load, {lbl, "truncated", "3 labels"});
  good();
  {  // a gzip stream cut in the middle
    std::ifstream in(img, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bytes.resize(bytes.size() / 2);
    write_bytes(img, bytes);
  }
  expect_error(load, {img});
  good();
  write_gz(img, {0, 0, 8});
  expect_error(load, {img, "truncated header"});
  fs::remove(lbl);
  expect_error(load, {"missing file", lbl});
  expect_error([&] { load_fashion_mnist(d / "absent", false); }, {d / "absent", "does not exist"});
}

TEST(FashionMnist, RealTestSplitWhenInstalled) {
  const std::string dir = default_data_dir("fashion-mnist");
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " not found (Debian package dataset-fashion-mnist)";
  const ImageSet s = load_dataset("fashion-mnist", "", false);
  ASSERT_EQ(s.n, 10000);
  EXPECT_EQ(class_counts(s), std::vector<int64_t>(10, 1000));
  // The normalisation constants describe this data (train-set statistics; the test split is close).
  double sum = 0, sq = 0;
  for (uint8_t v : s.pixels) {
    sum += v / 255.0;
    sq += (v / 255.0) * (v / 255.0);
  }
  const double mean = sum / double(s.pixels.size()),
               sd = std::sqrt(sq / double(s.pixels.size()) - mean * mean);
  const Normalization n = dataset_normalization("fashion-mnist", 1);
  EXPECT_NEAR(mean, n.mean[0], 0.005);
  EXPECT_NEAR(sd, n.std[0], 0.005);
}

// ---------------------------------------------------------------------------------------------------------
// Tiny-ImageNet

namespace {

// A smooth 64×64 RGB image (HWC, as stb writes it): JPEG reproduces smooth content closely.
std::vector<uint8_t> smooth_rgb(int seed) {
  std::vector<uint8_t> px(64 * 64 * 3);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x)
      for (int c = 0; c < 3; ++c)
        px[(y * 64 + x) * 3 + c] = uint8_t(128 + 90 * std::sin(0.05 * (x + 2 * y) + seed + 1.7 * c));
  return px;
}

void write_jpeg(const std::string& path, int w, int h, const std::vector<uint8_t>& hwc) {
  fs::create_directories(fs::path(path).parent_path());
  ASSERT_TRUE(stbi_write_jpg(path.c_str(), w, h, 3, hwc.data(), 95)) << path;
}

// Mean and max absolute difference between a decoded CHW image and an HWC original.
std::pair<double, int> compare_chw_hwc(const uint8_t* chw, const std::vector<uint8_t>& hwc) {
  double sum = 0;
  int worst = 0;
  for (int c = 0; c < 3; ++c)
    for (int p = 0; p < 64 * 64; ++p) {
      const int d = std::abs(int(chw[c * 4096 + p]) - int(hwc[p * 3 + c]));
      sum += d;
      worst = std::max(worst, d);
    }
  return {sum / (3 * 4096), worst};
}

// wnids (deliberately unsorted), 2 train images per class, 3 val images, one grayscale image.
void write_tiny(const TempDir& d) {
  write_bytes(d / "tiny-imagenet-200/wnids.txt",
              {'n', '0', '3', '\n', 'n', '0', '1', '\n', '\n', 'n', '0', '2', '\r', '\n'});
  const std::string root = d / "tiny-imagenet-200";
  const char* wnids[3] = {"n01", "n02", "n03"};
  for (int k = 0; k < 3; ++k)
    for (int j = 0; j < 2; ++j)
      write_jpeg(root + "/train/" + wnids[k] + "/images/" + wnids[k] + "_" + std::to_string(j) + ".JPEG", 64,
                 64, smooth_rgb(k * 2 + j));
  // A one-channel image must come out as 3 equal channels. stb_image_write always emits 3-component
  // JPEGs, so the grayscale case is a 1-channel PNG (stb_image detects the format from the content).
  std::vector<uint8_t> gray(64 * 64);
  for (int p = 0; p < 64 * 64; ++p) gray[p] = uint8_t(p % 251);
  ASSERT_TRUE(stbi_write_png((root + "/train/n02/images/n02_9.JPEG").c_str(), 64, 64, 1, gray.data(), 64));
  write_jpeg(root + "/val/images/val_0.JPEG", 64, 64, smooth_rgb(10));
  write_jpeg(root + "/val/images/val_1.JPEG", 64, 64, smooth_rgb(11));
  write_jpeg(root + "/val/images/val_2.JPEG", 64, 64, smooth_rgb(12));
  const std::string ann =
      "val_0.JPEG\tn03\t0\t0\t10\t10\nval_1.JPEG\tn01\t1\t2\t3\t4\nval_2.JPEG\tn03\t5\t5\t9\t9\n";
  write_bytes(root + "/val/val_annotations.txt", std::vector<uint8_t>(ann.begin(), ann.end()));
}

}  // namespace

TEST(TinyImageNet, DecodesTrainAndValWithSortedClassIds) {
  TempDir d;
  write_tiny(d);
  const ImageSet tr = load_dataset("tiny-imagenet", d.str(), true);  // parent of tiny-imagenet-200
  ASSERT_EQ(tr.n, 7);
  EXPECT_EQ(tr.classes, 3);
  EXPECT_EQ(tr.channels, 3);
  EXPECT_EQ(tr.height, 64);
  EXPECT_EQ(tr.width, 64);
  EXPECT_EQ(tr.class_names, (std::vector<std::string>{"n01", "n02", "n03"}));
  EXPECT_EQ(tr.labels, (std::vector<int32_t>{0, 0, 1, 1, 1, 2, 2}));
  // Train order: class by class, file names sorted: n01_0, n01_1, n02_0, n02_1, n02_9 (gray), n03_0, n03_1.
  const int seeds[7] = {0, 1, 2, 3, -1, 4, 5};
  for (int i = 0; i < 7; ++i) {
    if (seeds[i] < 0) continue;
    const auto [mean, worst] = compare_chw_hwc(tr.image(i), smooth_rgb(seeds[i]));
    EXPECT_LT(mean, 3.0) << "image " << i;
    EXPECT_LT(worst, 40) << "image " << i;
  }
  const uint8_t* g = tr.image(4);
  for (int p = 0; p < 4096; ++p) {
    ASSERT_EQ(g[p], uint8_t(p % 251)) << p;  // PNG is lossless
    ASSERT_EQ(g[4096 + p], g[p]);
    ASSERT_EQ(g[8192 + p], g[p]);
  }
  const ImageSet va = load_dataset("tiny-imagenet", d / "tiny-imagenet-200", false);
  ASSERT_EQ(va.n, 3);
  EXPECT_EQ(va.labels, (std::vector<int32_t>{2, 0, 2}));
  for (int i = 0; i < 3; ++i) EXPECT_LT(compare_chw_hwc(va.image(i), smooth_rgb(10 + i)).first, 3.0);
}

TEST(TinyImageNet, BadFilesNameTheFileAndTheProblem) {
  TempDir d;
  write_tiny(d);
  const std::string root = d / "tiny-imagenet-200";
  // an annotation naming an unknown class
  const std::string ann = "val_0.JPEG\tn03\t0\t0\t1\t1\nval_1.JPEG\tn99\t0\t0\t1\t1\n";
  write_bytes(root + "/val/val_annotations.txt", std::vector<uint8_t>(ann.begin(), ann.end()));
  expect_error([&] { load_tiny_imagenet(root, false); },
               {root + "/val/val_annotations.txt", "line 2", "'n99'"});
  // an annotated image that does not exist
  const std::string ann2 = "val_7.JPEG\tn03\t0\t0\t1\t1\n";
  write_bytes(root + "/val/val_annotations.txt", std::vector<uint8_t>(ann2.begin(), ann2.end()));
  expect_error([&] { load_tiny_imagenet(root, false); }, {"missing file", root + "/val/images/val_7.JPEG"});
  // wrong image size
  std::vector<uint8_t> small(32 * 32 * 3, 100);
  ASSERT_TRUE(stbi_write_jpg((root + "/train/n01/images/n01_0.JPEG").c_str(), 32, 32, 3, small.data(), 90));
  expect_error([&] { load_tiny_imagenet(root, true); },
               {root + "/train/n01/images/n01_0.JPEG", "32x32", "expected 64x64"});
  // size limit checked from the header, before decoding
  write_jpeg(root + "/train/n01/images/n01_0.JPEG", 64, 64, smooth_rgb(0));
  expect_error([&] { load_tiny_imagenet(root, true, 1000); }, {"n01_0.JPEG", "exceeds the size limit"});
  // not an image: the lowest-numbered bad file is reported even though decoding runs in parallel
  write_bytes(root + "/train/n02/images/n02_1.JPEG", {'n', 'o', 't', ' ', 'a', 'n', ' ', 'i', 'm', 'g'});
  write_bytes(root + "/train/n03/images/n03_0.JPEG", {1, 2, 3});
  expect_error([&] { load_tiny_imagenet(root, true); },
               {root + "/train/n02/images/n02_1.JPEG", "not a readable"});
  // a class folder without images/
  fs::remove_all(root + "/train/n03");
  expect_error([&] { load_tiny_imagenet(root, true); }, {"missing directory", root + "/train/n03/images"});
  fs::remove(root + "/wnids.txt");
  expect_error([&] { load_tiny_imagenet(root, true); }, {"missing file", root + "/wnids.txt"});
}

// ---------------------------------------------------------------------------------------------------------
// synthetic

TEST(Synthetic, SeededBalancedAndLearnable) {
  SyntheticSpec spec;
  spec.classes = 10;
  spec.channels = 3;
  spec.size = 16;
  spec.train_count = 500;
  spec.test_count = 200;
  spec.seed = 7;
  LoadOptions opt;
  opt.synthetic = spec;
  const ImageSet tr = load_dataset("synthetic", "", true, opt);
  const ImageSet te = load_dataset("synthetic", "", false, opt);
  EXPECT_EQ(tr.n, 500);
  EXPECT_EQ(te.n, 200);
  EXPECT_EQ(class_counts(tr), std::vector<int64_t>(10, 50));
  EXPECT_EQ(load_dataset("synthetic", "", true, opt).pixels, tr.pixels);  // same seed, same bytes
  LoadOptions other = opt;
  other.synthetic.seed = 8;
  EXPECT_NE(load_dataset("synthetic", "", true, other).pixels, tr.pixels);
  EXPECT_NE(std::vector<uint8_t>(tr.pixels.begin(), tr.pixels.begin() + 768),
            std::vector<uint8_t>(te.pixels.begin(), te.pixels.begin() + 768));  // splits differ in noise

  // Nearest class mean (trained on train, scored on test) must be far above chance (10%): the classes are
  // what a CNN will learn quickly.
  const int64_t img = tr.image_bytes();
  std::vector<double> means(size_t(10 * img), 0.0);
  for (int i = 0; i < tr.n; ++i)
    for (int64_t p = 0; p < img; ++p) means[size_t(tr.labels[i] * img + p)] += tr.image(i)[p] / 50.0;
  int correct = 0;
  for (int i = 0; i < te.n; ++i) {
    int best = -1;
    double best_d = 1e300;
    for (int k = 0; k < 10; ++k) {
      double dist = 0;
      for (int64_t p = 0; p < img; ++p) {
        const double e = te.image(i)[p] - means[size_t(k * img + p)];
        dist += e * e;
      }
      if (dist < best_d) best_d = dist, best = k;
    }
    correct += best == te.labels[i];
  }
  EXPECT_GT(correct, 190) << "nearest-mean accuracy " << correct << "/200";

  SyntheticSpec bad = spec;
  bad.size = 4;  // too small for 10 distinct patterns
  expect_error([&] { make_synthetic(bad, true); }, {"synthetic", "10 classes"});
}

// ---------------------------------------------------------------------------------------------------------
// registry, normalisation, subsets, splits

TEST(Registry, NamesDefaultsAndNormalisation) {
  EXPECT_EQ(dataset_names(),
            (std::vector<std::string>{"cifar10", "cifar100", "tiny-imagenet", "fashion-mnist", "synthetic"}));
  EXPECT_TRUE(is_dataset_name("cifar100"));
  EXPECT_FALSE(is_dataset_name("mnist"));
  EXPECT_EQ(default_data_dir("fashion-mnist"), "/usr/share/datasets/fashion-mnist");
  expect_error([] { load_dataset("mnist", "/tmp", true); }, {"unknown dataset 'mnist'", "fashion-mnist"});
  const Normalization c10 = dataset_normalization("cifar10", 3);
  EXPECT_FLOAT_EQ(c10.mean[0], 0.4914f);
  EXPECT_FLOAT_EQ(c10.std[2], 0.2616f);
  EXPECT_FLOAT_EQ(dataset_normalization("cifar100", 3).mean[1], 0.4865f);
  EXPECT_FLOAT_EQ(dataset_normalization("tiny-imagenet", 3).std[0], 0.2770f);
  EXPECT_FLOAT_EQ(dataset_normalization("fashion-mnist", 1).mean[0], 0.2860f);
  EXPECT_EQ(dataset_normalization("synthetic", 2).mean, (std::vector<float>{0.5f, 0.5f}));
  EXPECT_EQ(dataset_normalization("synthetic", 2).std, (std::vector<float>{0.5f, 0.5f}));
  expect_error([] { dataset_normalization("cifar10", 1); }, {"cifar10", "3 channels", "have 1"});
}

namespace {
ImageSet numbered_set(int n, int classes) {
  ImageSet s;
  s.name = "t";
  s.n = n;
  s.channels = 1;
  s.height = s.width = 2;
  s.classes = classes;
  for (int i = 0; i < n; ++i) {
    s.labels.push_back(i % classes);
    for (int p = 0; p < 4; ++p) s.pixels.push_back(uint8_t(i));
  }
  return s;
}
}  // namespace

TEST(Subsets, TakeSubsetIsDeterministicSortedAndConsistent) {
  const ImageSet s = numbered_set(100, 10);
  const ImageSet a = take_subset(s, 30, 5), b = take_subset(s, 30, 5), c = take_subset(s, 30, 6);
  ASSERT_EQ(a.n, 30);
  EXPECT_EQ(a.pixels, b.pixels);
  EXPECT_NE(a.pixels, c.pixels);
  for (int i = 0; i < a.n; ++i) {
    const int src = a.image(i)[0];
    EXPECT_EQ(a.labels[i], src % 10);
    if (i > 0) {
      EXPECT_LT(a.image(i - 1)[0], src);  // dataset order kept, no duplicates
    }
  }
  EXPECT_GT(a.image(a.n - 1)[0], 50);  // drawn from the whole set, not the first 30
  EXPECT_EQ(take_subset(s, 0, 5).n, 100);
  EXPECT_EQ(take_subset(s, 1000, 5).n, 100);
}

TEST(Subsets, SplitValidationIsStratifiedDisjointAndDeterministic) {
  const ImageSet s = numbered_set(200, 10);
  const auto [tr, va] = split_validation(s, 0.1, 3);
  EXPECT_EQ(va.n, 20);
  EXPECT_EQ(tr.n, 180);
  EXPECT_EQ(class_counts(va), std::vector<int64_t>(10, 2));
  std::set<int> seen;
  for (const ImageSet* part : {&tr, &va})
    for (int i = 0; i < part->n; ++i) {
      EXPECT_TRUE(seen.insert(part->image(i)[0]).second);
      EXPECT_EQ(part->labels[i], part->image(i)[0] % 10);
    }
  EXPECT_EQ(seen.size(), 200u);
  EXPECT_EQ(split_validation(s, 0.1, 3).second.pixels, va.pixels);
  EXPECT_NE(split_validation(s, 0.1, 4).second.pixels, va.pixels);
  EXPECT_EQ(split_validation(s, 0.0, 3).first.n, 200);
  expect_error([&] { split_validation(s, 1.0, 3); }, {"validation fraction 1"});
}

// ---------------------------------------------------------------------------------------------------------
// in-memory parsers (engine/data/parse.h): the code the loaders run on file bytes and the fuzz targets
// (tests/fuzz) run on arbitrary bytes; regressions for what fuzzing found; the committed fuzz corpora

namespace {

std::vector<uint8_t> gz_bytes(const std::vector<uint8_t>& plain) {
  TempDir d;
  write_gz(d / "x.gz", plain);
  return read_all(d / "x.gz");
}

std::vector<std::string> corpus_files(const std::string& target) {
  const std::string dir = std::string(SPARROW_SOURCE_DIR) + "/tests/fuzz/corpus/" + target;
  std::vector<std::string> files;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

TEST(Parsers, GzipMembersGarbageTruncationAndBombs) {
  const std::vector<uint8_t> plain = idx_labels(2049, 4, {1, 2, 3, 4});
  // Two concatenated members decode to the concatenation (as gzip(1) and gzread do).
  std::vector<uint8_t> two = gz_bytes({plain.begin(), plain.begin() + 5});
  const auto tail = gz_bytes({plain.begin() + 5, plain.end()});
  two.insert(two.end(), tail.begin(), tail.end());
  EXPECT_EQ(gunzip_bytes(two.data(), two.size(), "two", gunzip_limit(two.size())), plain);
  const IdxArray a = parse_idx_bytes(two.data(), two.size(), "two", 2049, "labels");
  EXPECT_EQ(a.dims, std::vector<uint32_t>{4});
  EXPECT_EQ(a.data, (std::vector<uint8_t>{1, 2, 3, 4}));
  // Bytes after the last member are damage, not silently ignored.
  std::vector<uint8_t> junk = gz_bytes(plain);
  junk.push_back('x');
  expect_error([&] { gunzip_bytes(junk.data(), junk.size(), "junk", 1 << 20); }, {"junk", "trailing garbage"});
  // A cut stream.
  std::vector<uint8_t> cut = gz_bytes(plain);
  cut.resize(cut.size() - 6);
  expect_error([&] { gunzip_bytes(cut.data(), cut.size(), "cut", 1 << 20); }, {"cut", "truncated"});
  // Output beyond the cap is refused while decompressing (a small file cannot claim gigabytes).
  const auto big = gz_bytes(std::vector<uint8_t>(100000, 0));
  expect_error([&] { gunzip_bytes(big.data(), big.size(), "bomb", 50000); }, {"bomb", "expands beyond 50000"});
}

TEST(Parsers, IdxHeadersThatLieAreErrors) {
  // Dimensions whose product overflows 64 bits, with no data behind them.
  std::vector<uint8_t> v = {0, 0, 8, 4};
  for (int i = 0; i < 4; ++i) put_be32(v, 0xFFFFFFFFu);
  expect_error([&] { parse_idx_bytes(v.data(), v.size(), "huge"); }, {"huge", "truncated", "more than 2^64"});
  std::vector<uint8_t> f32 = {0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0};
  expect_error([&] { parse_idx_bytes(f32.data(), f32.size(), "float"); }, {"float", "element type 13"});
  std::vector<uint8_t> five = {0, 0, 8, 5};
  expect_error([&] { parse_idx_bytes(five.data(), five.size(), "5d"); }, {"5d", "5 dimensions"});
  std::vector<uint8_t> bad = {1, 2, 8, 1, 0, 0, 0, 0};
  expect_error([&] { parse_idx_bytes(bad.data(), bad.size(), "magic"); }, {"magic", "not an IDX file"});
}

TEST(Parsers, TinyImageNetTextFilesCannotEscapeTheirFolders) {
  const std::vector<std::string> wnids = parse_wnids("n02\n n01 \r\n\nn03\n", "w");
  EXPECT_EQ(wnids, (std::vector<std::string>{"n01", "n02", "n03"}));
  expect_error([&] { parse_wnids("n01\n../../etc\n", "w"); }, {"w", "line 2", "cannot be a folder name"});
  expect_error([&] { parse_wnids("n01\n..\n", "w"); }, {"line 2", "folder name"});
  expect_error([&] { parse_wnids("n01\nn01\n", "w"); }, {"duplicate class id n01"});
  expect_error([&] { parse_wnids(" \n\n", "w"); }, {"no class ids"});
  const auto a = parse_val_annotations("v0.JPEG\tn03\t1\t2\t3\t4\nv1.JPEG\tn01\n", "ann", wnids);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].file, "v0.JPEG");
  EXPECT_EQ(a[0].label, 2);
  EXPECT_EQ(a[1].label, 0);
  expect_error([&] { parse_val_annotations("../../secret\tn01\n", "ann", wnids); },
               {"ann", "line 1", "not a plain file name"});
  expect_error([&] { parse_val_annotations("/etc/passwd\tn01\n", "ann", wnids); }, {"not a plain file name"});
  expect_error([&] { parse_val_annotations("v.JPEG n01\n", "ann", wnids); }, {"expected 'file<TAB>wnid...'"});
  expect_error([&] { parse_val_annotations("v.JPEG\tn7\n", "ann", wnids); }, {"class id 'n7'"});
}

// Found by fuzz_tiny_imagenet: JPEGs whose Huffman table (DHT) declares more than 256 codes made
// stb_image 2.27 write past its 257-entry size table (UBSan: index 257 out of bounds), in the decoder (a
// progressive JPEG's second-scan table) and already in the header pass stbi_info runs (a table before the
// frame header, among junk bytes stb skips). decode_image_bytes now validates the marker structure before
// stb_image reads anything, including inputs stb takes for JPEGs because of leading FF fill bytes.
TEST(FuzzRegressions, JpegHuffmanTablesWithTooManyCodesAreCleanErrors) {
  const std::string dir = std::string(SPARROW_SOURCE_DIR) + "/tests/fuzz/corpus/fuzz_tiny_imagenet/";
  std::vector<uint8_t> dst(3 * 64 * 64);
  auto decode = [&](const std::vector<uint8_t>& b) {
    return [&dst, b] { decode_image_bytes(b.data(), b.size(), "evil.jpg", 1 << 24, 64, dst.data()); };
  };
  const auto in_scan = read_all(dir + "crash-stb-dht-over-256-codes.jpg");
  ASSERT_FALSE(in_scan.empty());
  expect_error(decode(in_scan), {"evil.jpg", "Huffman table declares 450 codes, at most 255"});
  std::vector<uint8_t> filled = {0xFF, 0xFF};
  filled.insert(filled.end(), in_scan.begin(), in_scan.end());
  expect_error(decode(filled), {"evil.jpg", "Huffman table declares 450 codes, at most 255"});
  const auto in_header = read_all(dir + "crash-stb-dht-in-header-pass.jpg");
  ASSERT_FALSE(in_header.empty());
  expect_error(decode(in_header), {"evil.jpg", "corrupt JPEG"});
  // A valid JPEG with the same structure still decodes.
  const auto ok = read_all(dir + "progressive.jpg");
  EXPECT_NO_THROW(decode(ok)());
}

// Found by fuzz_tiny_imagenet: a PNG with an empty IDAT chunk made stb_image 2.27 memcpy through a null
// pointer (UBSan: null pointer passed as argument 1). The chunk structure is now checked first.
TEST(FuzzRegressions, PngWithAnEmptyIdatChunkIsACleanError) {
  const auto bytes = read_all(std::string(SPARROW_SOURCE_DIR) +
                              "/tests/fuzz/corpus/fuzz_tiny_imagenet/crash-stb-png-empty-idat.png");
  ASSERT_FALSE(bytes.empty());
  std::vector<uint8_t> dst(3 * 64 * 64);
  expect_error([&] { decode_image_bytes(bytes.data(), bytes.size(), "evil.png", 1 << 24, 64, dst.data()); },
               {"evil.png", "empty IDAT chunk"});
  // A chunk length pointing past the end of the file.
  std::vector<uint8_t> cut = read_all(std::string(SPARROW_SOURCE_DIR) + "/tests/fuzz/corpus/fuzz_tiny_imagenet/rgb.png");
  ASSERT_GT(cut.size(), 40u);
  cut.resize(cut.size() - 20);
  expect_error([&] { decode_image_bytes(cut.data(), cut.size(), "cut.png", 1 << 24, 64, dst.data()); },
               {"cut.png", "corrupt PNG"});
}

// Every committed corpus file (valid seeds and the inputs of past crashes) goes through the same calls as
// the fuzz targets: each loads or fails with a one-line sparrow::Error, and the valid seeds load.
TEST(FuzzCorpus, DataParsersHandleEveryCorpusFile) {
  int loaded = 0, files = 0;
  for (const std::string& f : corpus_files("fuzz_cifar")) {
    const auto b = read_all(f);
    ++files;
    for (int label_bytes : {1, 2}) {
      ImageSet s;
      try {
        parse_cifar_bytes(b.data(), b.size(), f, label_bytes, label_bytes == 1 ? 10 : 100, s);
        ++loaded;
      } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
      }
    }
  }
  EXPECT_GE(loaded, 2);
  for (const std::string& f : corpus_files("fuzz_idx")) {
    const auto b = read_all(f);
    ++files;
    try {
      const IdxArray a = parse_idx_bytes(b.data(), b.size(), f);
      EXPECT_EQ(a.data.size(), std::accumulate(a.dims.begin(), a.dims.end(), size_t(1), std::multiplies<size_t>()));
      ++loaded;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
  EXPECT_GE(loaded, 2 + 5);
  std::vector<uint8_t> dst(3 * 64 * 64);
  int images = 0;
  for (const std::string& f : corpus_files("fuzz_tiny_imagenet")) {
    const auto b = read_all(f);
    ++files;
    const std::string text(b.begin(), b.end());
    try {
      parse_wnids(text, f);
    } catch (const Error&) {
    }
    try {
      parse_val_annotations(text, f, {"n01443537", "n01629819", "n01641577"});
    } catch (const Error&) {
    }
    try {
      decode_image_bytes(b.data(), b.size(), f, 1 << 24, 64, dst.data());
      ++images;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
  EXPECT_GE(images, 9);  // the JPEG and PNG seeds
  EXPECT_GE(files, 15);
}
