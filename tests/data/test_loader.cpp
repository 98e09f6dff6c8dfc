// DataLoader: every sample once per epoch, seeded per-epoch order, same-class pairs, two views of one
// sample, exact mid-epoch resume, identical batches whatever the threads/timing, worker exceptions
// rethrown by next(), and (when installed) one real Fashion-MNIST epoch with timings printed.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <thread>
#include <vector>

#include "engine/base/error.h"
#include "engine/data/loader.h"

using namespace sparrow;

namespace {

// n images of C×H×W whose pixels identify the image (pixel = (i·7 + p) mod 251 + 1); label i mod classes.
ImageSet numbered_set(int n, int classes, int C = 1, int H = 4, int W = 5) {
  ImageSet s;
  s.name = "numbered";
  s.n = n;
  s.channels = C;
  s.height = H;
  s.width = W;
  s.classes = classes;
  for (int i = 0; i < n; ++i) {
    s.labels.push_back(i % classes);
    for (int p = 0; p < C * H * W; ++p) s.pixels.push_back(uint8_t((i * 7 + p) % 251 + 1));
  }
  return s;
}

std::vector<Batch> run_epoch(DataLoader& loader, int epoch, int64_t skip = 0) {
  std::vector<Batch> out;
  loader.start_epoch(epoch, skip);
  Batch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

void expect_same(const std::vector<Batch>& a, const std::vector<Batch>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].n, b[i].n) << what << " batch " << i;
    EXPECT_EQ(a[i].batch_index, b[i].batch_index) << what << " batch " << i;
    EXPECT_EQ(a[i].index, b[i].index) << what << " batch " << i;
    EXPECT_EQ(a[i].y, b[i].y) << what << " batch " << i;
    EXPECT_EQ(a[i].x, b[i].x) << what << " batch " << i;
    EXPECT_EQ(a[i].x2, b[i].x2) << what << " batch " << i;
    EXPECT_EQ(a[i].x_pair, b[i].x_pair) << what << " batch " << i;
    EXPECT_EQ(a[i].y_pair, b[i].y_pair) << what << " batch " << i;
    EXPECT_EQ(a[i].pair_index, b[i].pair_index) << what << " batch " << i;
  }
}

std::vector<int64_t> all_indices(const std::vector<Batch>& batches) {
  std::vector<int64_t> idx;
  for (const auto& b : batches) idx.insert(idx.end(), b.index.begin(), b.index.end());
  return idx;
}

// Whether `x` (one C×H×W float image) is some crop/flip draw of image `i` under cfg.
bool is_augmentation_of(const ImageSet& s, int64_t i, const AugmentConfig& cfg, const float* x) {
  const size_t img = size_t(s.image_bytes());
  std::vector<float> cand(img);
  std::vector<uint8_t> scratch;
  for (int dy = 0; dy <= 2 * cfg.crop_pad; ++dy)
    for (int dx = 0; dx <= 2 * cfg.crop_pad; ++dx)
      for (bool flip : {false, true}) {
        AugmentDraw d;
        d.dy = dy;
        d.dx = dx;
        d.flip = flip;
        augment_image(s.image(i), s.channels, s.height, s.width, cfg, d, cand.data(), scratch);
        if (std::equal(cand.begin(), cand.end(), x)) return true;
      }
  return false;
}

LoaderConfig full_config(const ImageSet& s) {
  LoaderConfig cfg;
  cfg.batch_size = 6;
  cfg.seed = 11;
  cfg.augment.crop_pad = 1;
  cfg.augment.flip = true;
  cfg.augment.rotate_degrees = 10.f;
  cfg.augment.mean.assign(size_t(s.channels), 0.5f);
  cfg.augment.std.assign(size_t(s.channels), 0.25f);
  cfg.spec.two_views = true;
  cfg.spec.pair = true;
  return cfg;
}

}  // namespace

TEST(Loader, EverySampleOncePerEpochWithItsPixelsAndLabel) {
  const ImageSet s = numbered_set(37, 5, 3, 4, 5);
  LoaderConfig cfg;
  cfg.batch_size = 8;
  cfg.seed = 3;
  DataLoader loader(s, cfg);
  EXPECT_EQ(loader.batches_per_epoch(), 5);
  const auto batches = run_epoch(loader, 0);
  ASSERT_EQ(batches.size(), 5u);
  EXPECT_EQ(batches.back().n, 5);
  auto idx = all_indices(batches);
  std::sort(idx.begin(), idx.end());
  for (int i = 0; i < 37; ++i) ASSERT_EQ(idx[i], i);
  for (const auto& b : batches) {
    EXPECT_EQ(b.c, 3);
    EXPECT_EQ(b.h, 4);
    EXPECT_EQ(b.w, 5);
    EXPECT_TRUE(b.x2.empty());
    EXPECT_TRUE(b.x_pair.empty());
    ASSERT_EQ(b.x.size(), size_t(b.n) * 60);
    for (int j = 0; j < b.n; ++j) {
      EXPECT_EQ(b.y[j], s.labels[b.index[j]]);
      for (int p = 0; p < 60; ++p) ASSERT_FLOAT_EQ(b.x[j * 60 + p], s.image(b.index[j])[p] / 255.f);
    }
  }
  cfg.drop_last = true;
  DataLoader dropper(s, cfg);
  EXPECT_EQ(dropper.batches_per_epoch(), 4);
  const auto dropped = run_epoch(dropper, 0);
  ASSERT_EQ(dropped.size(), 4u);
  auto di = all_indices(dropped);
  EXPECT_EQ(std::set<int64_t>(di.begin(), di.end()).size(), 32u);
  for (const auto& b : dropped) EXPECT_EQ(b.n, 8);
}

TEST(Loader, OrderIsSeededPerEpochAndIndependentOfHistory) {
  const ImageSet s = numbered_set(50, 5);
  LoaderConfig cfg = full_config(s);
  DataLoader a(s, cfg), b(s, cfg);
  const auto a0 = run_epoch(a, 0), a1 = run_epoch(a, 1), a2 = run_epoch(a, 2);
  EXPECT_NE(all_indices(a0), all_indices(a1));
  EXPECT_NE(all_indices(a1), all_indices(a2));
  expect_same(run_epoch(b, 2), a2, "epoch 2 alone vs after epochs 0 and 1");
  expect_same(run_epoch(b, 0), a0, "epoch 0 again");
  LoaderConfig other = cfg;
  other.seed = 12;
  DataLoader c(s, other);
  EXPECT_NE(all_indices(run_epoch(c, 0)), all_indices(a0));
  // Without shuffle the order is the dataset order every epoch.
  LoaderConfig plain = cfg;
  plain.shuffle = false;
  DataLoader d(s, plain);
  const auto idx = all_indices(run_epoch(d, 4));
  for (int i = 0; i < 50; ++i) ASSERT_EQ(idx[i], i);
  EXPECT_EQ(epoch_order(50, 11, 2, true), all_indices(a2));
}

TEST(Loader, PairsShareTheClassAndCarryThePartnersPixels) {
  ImageSet s = numbered_set(41, 4);  // classes 0..3 with 10 members each, plus sample 40 ...
  s.classes = 5;
  s.labels[40] = 4;  // ... alone in class 4
  LoaderConfig cfg;
  cfg.batch_size = 7;
  cfg.seed = 5;
  cfg.spec.pair = true;
  DataLoader loader(s, cfg);
  std::vector<std::set<int64_t>> partners(41);
  for (int e = 0; e < 30; ++e)
    for (const auto& b : run_epoch(loader, e)) {
      ASSERT_EQ(b.x_pair.size(), b.x.size());
      for (int j = 0; j < b.n; ++j) {
        const int64_t i = b.index[j], p = b.pair_index[j];
        EXPECT_EQ(b.y_pair[j], b.y[j]);
        EXPECT_EQ(s.labels[p], s.labels[i]);
        if (i == 40) {
          EXPECT_EQ(p, 40);  // alone in its class
        } else {
          EXPECT_NE(p, i);
        }
        for (int q = 0; q < 20; ++q) ASSERT_FLOAT_EQ(b.x_pair[j * 20 + q], s.image(p)[q] / 255.f);
        partners[i].insert(p);
      }
    }
  // Over 30 epochs sample 0 (class 0, 9 classmates) has seen most of its classmates.
  EXPECT_GE(partners[0].size(), 8u);
}

TEST(Loader, TwoViewsDifferButComeFromTheSameSample) {
  const ImageSet s = numbered_set(30, 3, 3, 6, 6);
  LoaderConfig cfg;
  cfg.batch_size = 8;
  cfg.seed = 9;
  cfg.augment.crop_pad = 2;
  cfg.augment.flip = true;
  cfg.spec.two_views = true;
  DataLoader loader(s, cfg);
  int differ = 0, total = 0;
  for (const auto& b : run_epoch(loader, 1)) {
    ASSERT_EQ(b.x2.size(), b.x.size());
    const size_t img = 108;
    for (int j = 0; j < b.n; ++j) {
      const float* v0 = b.x.data() + j * img;
      const float* v1 = b.x2.data() + j * img;
      EXPECT_TRUE(is_augmentation_of(s, b.index[j], cfg.augment, v0)) << "view 0 of sample " << b.index[j];
      EXPECT_TRUE(is_augmentation_of(s, b.index[j], cfg.augment, v1)) << "view 1 of sample " << b.index[j];
      differ += !std::equal(v0, v0 + img, v1);
      ++total;
    }
  }
  EXPECT_EQ(total, 30);
  EXPECT_GE(differ, 25);  // 50 equally likely draws: a coincidence is rare
}

TEST(Loader, ResumeWithSkipReproducesTheTailExactly) {
  const ImageSet s = numbered_set(45, 5, 2, 5, 7);
  const LoaderConfig cfg = full_config(s);
  DataLoader full(s, cfg);
  const auto whole = run_epoch(full, 3);
  ASSERT_EQ(whole.size(), 8u);
  for (int64_t skip : {0, 1, 2, 7, 8}) {
    DataLoader resumed(s, cfg);
    const auto tail = run_epoch(resumed, 3, skip);
    expect_same(tail, std::vector<Batch>(whole.begin() + skip, whole.end()), "resumed tail");
  }
  // Restarting mid-epoch on the same loader drops what was prefetched for the abandoned epoch.
  DataLoader again(s, cfg);
  again.start_epoch(1);
  Batch b;
  ASSERT_TRUE(again.next(b));
  expect_same(run_epoch(again, 3, 5), std::vector<Batch>(whole.begin() + 5, whole.end()), "restart");
  EXPECT_THROW(again.start_epoch(3, 9), Error);
}

TEST(Loader, IdenticalWhateverThreadsPrefetchOrTiming) {
  const ImageSet s = numbered_set(64, 4, 3, 8, 8);
  const LoaderConfig base = full_config(s);
  DataLoader ref_loader(s, base);
  const auto ref = run_epoch(ref_loader, 2);

  LoaderConfig fg = base;
  fg.background = false;
  DataLoader a(s, fg);
  expect_same(run_epoch(a, 2), ref, "foreground");

  LoaderConfig mt = base;
  mt.threads = 2;
  mt.prefetch = 1;
  DataLoader b(s, mt);
  expect_same(run_epoch(b, 2), ref, "2 threads, prefetch 1");

  LoaderConfig deep = base;
  deep.prefetch = 5;
  deep.on_batch = [](Batch&) { std::this_thread::sleep_for(std::chrono::milliseconds(1)); };  // slow worker
  DataLoader c(s, deep);
  c.start_epoch(2);
  std::vector<Batch> got;
  Batch bb;
  while (c.next(bb)) {
    got.push_back(bb);
    std::this_thread::sleep_for(std::chrono::milliseconds(got.size() % 2 ? 3 : 0));  // uneven consumer
  }
  expect_same(got, ref, "slow worker, uneven consumer");
}

TEST(Loader, WorkerExceptionsPropagateAfterTheGoodBatches) {
  const ImageSet s = numbered_set(40, 4);
  for (bool background : {true, false}) {
    LoaderConfig cfg;
    cfg.batch_size = 5;
    cfg.background = background;
    int fail_once = 1;
    cfg.on_batch = [&fail_once](Batch& b) {
      if (b.batch_index == 3 && fail_once-- > 0) SPARROW_FAIL("boom in batch ", b.batch_index);
    };
    DataLoader loader(s, cfg);
    loader.start_epoch(0);
    Batch b;
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(loader.next(b));
      EXPECT_EQ(b.batch_index, i);
    }
    try {
      loader.next(b);
      ADD_FAILURE() << "expected the worker's exception";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("boom in batch 3"), std::string::npos) << e.what();
    }
    EXPECT_THROW(loader.next(b), Error);  // the epoch is over until start_epoch
    // A fresh epoch works again (the hook fails only once).
    const auto batches = run_epoch(loader, 1);
    EXPECT_EQ(batches.size(), 8u);
  }
}

TEST(Loader, MisuseIsAClearErrorAndShutdownIsClean) {
  const ImageSet s = numbered_set(20, 2);
  LoaderConfig cfg;
  cfg.batch_size = 4;
  {
    DataLoader loader(s, cfg);
    Batch b;
    EXPECT_THROW(loader.next(b), Error);  // before start_epoch
    EXPECT_THROW(loader.start_epoch(-1), Error);
    loader.start_epoch(0);
    ASSERT_TRUE(loader.next(b));
    // destroyed here with a full queue and the worker possibly mid-batch
  }
  { DataLoader idle(s, cfg); }  // never started
  LoaderConfig bad = cfg;
  bad.batch_size = 0;
  EXPECT_THROW(DataLoader(s, bad), Error);
  bad = cfg;
  bad.augment.mean = {0.5f, 0.5f, 0.5f};
  bad.augment.std = {0.5f, 0.5f, 0.5f};
  EXPECT_THROW(DataLoader(s, bad), Error);  // 3 channels of constants for 1-channel images
  ImageSet broken = s;
  broken.labels[3] = 7;
  EXPECT_THROW(DataLoader(broken, cfg), Error);
}

TEST(Loader, RealFashionMnistEpochWhenInstalled) {
  if (!std::filesystem::is_directory(default_data_dir("fashion-mnist")))
    GTEST_SKIP() << default_data_dir("fashion-mnist") << " not found (Debian package dataset-fashion-mnist)";
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const ImageSet s = load_dataset("fashion-mnist", "", true);
  const auto t1 = clock::now();
  ASSERT_EQ(s.n, 60000);
  EXPECT_EQ(class_counts(s), std::vector<int64_t>(10, 6000));
  LoaderConfig cfg;
  cfg.batch_size = 128;
  cfg.seed = 1;
  cfg.augment = default_augment("fashion-mnist", 1, true);
  DataLoader loader(s, cfg);
  loader.start_epoch(0);
  Batch b;
  std::vector<uint8_t> seen(60000, 0);
  int64_t batches = 0;
  double checksum = 0;
  while (loader.next(b)) {
    ++batches;
    for (int j = 0; j < b.n; ++j) ++seen[b.index[j]];
    checksum += b.x[0];
  }
  const auto t2 = clock::now();
  EXPECT_EQ(batches, 469);
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 60000);
  const double load_s = std::chrono::duration<double>(t1 - t0).count();
  const double epoch_s = std::chrono::duration<double>(t2 - t1).count();
  std::printf(
      "[timing] fashion-mnist train load %.3f s; one epoch of %lld batches of 128 (crop pad 2) %.3f s "
      "(%.0f img/s); checksum %.3f\n",
      load_s, (long long)batches, epoch_s, 60000 / epoch_s, checksum);
}
