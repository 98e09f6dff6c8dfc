// Batches from an ImageSet: per-epoch shuffling keyed by (seed, epoch), augmentation keyed by (seed, epoch,
// position in epoch, view), optional second view (DLB) and same-class partner (CS-KD), sample indices
// always (PS-KD). Batch tensors are float n×C×H×W (CHW per sample); a background thread prepares the next
// batches (bounded queue) and the result is identical whatever the thread timing or thread count.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/base/rng.h"
#include "engine/data/augment.h"
#include "engine/data/dataset.h"

namespace sparrow {

// Which extras a batch carries besides x, y and index.
struct BatchSpec {
  bool two_views = false;  // x2: a second, independent augmentation of the same samples (DLB)
  bool pair = false;       // x_pair, y_pair, pair_index: a random other sample of the same class (CS-KD)
};

struct Batch {
  int n = 0, c = 0, h = 0, w = 0;
  std::vector<float> x;         // n×C×H×W, view 0
  std::vector<float> x2;        // n×C×H×W, view 1 (BatchSpec::two_views), else empty
  std::vector<float> x_pair;    // n×C×H×W, same-class partner (BatchSpec::pair), else empty
  std::vector<int64_t> y;       // n labels
  std::vector<int64_t> y_pair;  // n partner labels (== y) when BatchSpec::pair
  std::vector<int64_t> index;   // n sample indices into the ImageSet (always filled)
  std::vector<int64_t> pair_index;
  int epoch = 0;
  int64_t batch_index = 0;  // position of this batch in its epoch
};

struct LoaderConfig {
  int64_t batch_size = 128;
  bool shuffle = true;
  bool drop_last = false;
  uint64_t seed = 0;
  AugmentConfig augment;  // default: no augmentation, x = pixel/255 (use default_augment())
  BatchSpec spec;
  int threads = 1;         // threads preparing one batch (OpenMP); never changes the result
  int prefetch = 2;        // batches prepared ahead (queue depth)
  bool background = true;  // false: next() builds each batch on the calling thread
  // Runs on the thread that built the batch, after it is built (e.g. extra preprocessing). An exception
  // thrown here, like any worker exception, is rethrown by next().
  std::function<void(Batch&)> on_batch;
};

// The order of samples in `epoch`: identity without shuffle, else a Fisher-Yates permutation seeded by
// (seed, epoch) only, so epoch e's order does not depend on how many epochs ran before.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int epoch, bool shuffle);

// For each sample, a uniformly random other sample of the same class (itself when it is alone).
class PairSampler {
 public:
  PairSampler(const std::vector<int32_t>& labels, int classes);
  int64_t partner(int64_t i, Rng& rng) const;

 private:
  std::vector<int32_t> labels_;
  std::vector<std::vector<int64_t>> members_;  // per class, ascending sample indices
  std::vector<int64_t> rank_;                  // position of each sample in its class's member list
};

// Builds batch `batch_index` of `epoch` given that epoch's order (what the background thread runs).
void build_batch(const ImageSet& data, const LoaderConfig& cfg, const PairSampler* pairs,
                 const std::vector<int64_t>& order, int epoch, int64_t batch_index, Batch& out);

// Usage: start_epoch(e[, skip]); while (loader.next(batch)) train(batch);
// The ImageSet must outlive the loader. Not thread-safe: one consumer thread calls start_epoch/next.
class DataLoader {
 public:
  DataLoader(const ImageSet& data, LoaderConfig cfg);
  DataLoader(ImageSet&&, LoaderConfig) = delete;  // the loader keeps a reference: no temporaries
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // Begins (or restarts) an epoch; skip_batches > 0 resumes mid-epoch, yielding exactly the batches an
  // uninterrupted epoch would yield from that batch on. Any batches of a previous epoch are dropped.
  void start_epoch(int epoch, int64_t skip_batches = 0);
  // The next batch of the current epoch into `out` (its buffers are recycled); false at the epoch's end.
  bool next(Batch& out);
  int64_t batches_per_epoch() const;
  int64_t size() const { return data_.n; }
  const LoaderConfig& config() const { return cfg_; }
  const ImageSet& data() const { return data_; }

 private:
  void worker_loop();

  const ImageSet& data_;
  LoaderConfig cfg_;
  std::unique_ptr<PairSampler> pairs_;

  std::mutex m_;
  std::condition_variable work_cv_, ready_cv_;
  uint64_t generation_ = 0;  // bumped by start_epoch so stale batches in flight are discarded
  bool active_ = false, stop_ = false;
  int epoch_ = 0;
  std::shared_ptr<const std::vector<int64_t>> order_;
  int64_t next_build_ = 0, next_take_ = 0, end_ = 0;
  std::deque<Batch> ready_;
  std::vector<Batch> spare_;
  std::exception_ptr error_;
  std::thread worker_;
};

}  // namespace sparrow
