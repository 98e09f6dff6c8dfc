// Epoch order, same-class pair sampling, batch assembly and the background DataLoader. Determinism: every
// random choice is drawn from an Rng derived from (seed, epoch, position in epoch, stream), never from a
// running stream, so results do not depend on thread timing, thread count or where an epoch was resumed.
#include "engine/data/loader.h"

#include <algorithm>
#include <numeric>

#include "engine/base/error.h"

namespace sparrow {

namespace {
// Stream tags for Rng::derive(seed, epoch, position, tag).
constexpr uint64_t kStreamView0 = 1, kStreamView1 = 2, kStreamPairChoice = 3, kStreamPairView = 4,
                   kStreamShuffle = 0x5AFF1E;
}  // namespace

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int epoch, bool shuffle) {
  std::vector<int64_t> order(size_t(std::max<int64_t>(n, 0)));
  std::iota(order.begin(), order.end(), 0);
  if (!shuffle) return order;
  Rng r = Rng::derive(seed, uint64_t(epoch), 0, kStreamShuffle);
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[r.below(uint64_t(i + 1))]);
  return order;
}

PairSampler::PairSampler(const std::vector<int32_t>& labels, int classes)
    : labels_(labels), members_(size_t(std::max(classes, 0))), rank_(labels.size()) {
  for (size_t i = 0; i < labels.size(); ++i) {
    SPARROW_CHECK(labels[i] >= 0 && labels[i] < classes, "pair sampler: label ", labels[i], " of sample ", i,
                  " out of range [0, ", classes, ")");
    rank_[i] = int64_t(members_[labels[i]].size());
    members_[labels[i]].push_back(int64_t(i));
  }
}

int64_t PairSampler::partner(int64_t i, Rng& rng) const {
  const auto& m = members_[labels_[i]];
  if (m.size() <= 1) return i;
  // Uniform over the other members: draw among size−1 slots and skip over i's own slot.
  int64_t k = int64_t(rng.below(uint64_t(m.size() - 1)));
  if (k >= rank_[i]) ++k;
  return m[k];
}

void build_batch(const ImageSet& data, const LoaderConfig& cfg, const PairSampler* pairs,
                 const std::vector<int64_t>& order, int epoch, int64_t batch_index, Batch& out) {
  const int64_t start = batch_index * cfg.batch_size;
  SPARROW_CHECK(start >= 0 && start < int64_t(order.size()), "loader: batch ", batch_index,
                " is past the end of an epoch of ", order.size(), " samples");
  const int64_t count = std::min<int64_t>(cfg.batch_size, int64_t(order.size()) - start);
  const int c = data.channels, h = data.height, w = data.width;
  const size_t img = size_t(data.image_bytes());
  out.n = int(count);
  out.c = c;
  out.h = h;
  out.w = w;
  out.epoch = epoch;
  out.batch_index = batch_index;
  out.x.resize(size_t(count) * img);
  out.y.resize(size_t(count));
  out.index.resize(size_t(count));
  const bool two = cfg.spec.two_views, pair = cfg.spec.pair;
  SPARROW_CHECK(!pair || pairs != nullptr, "loader: pair sampling requested without a pair sampler");
  if (two)
    out.x2.resize(size_t(count) * img);
  else
    out.x2.clear();
  if (pair) {
    out.x_pair.resize(size_t(count) * img);
    out.y_pair.resize(size_t(count));
    out.pair_index.resize(size_t(count));
  } else {
    out.x_pair.clear();
    out.y_pair.clear();
    out.pair_index.clear();
  }
  const int threads = std::max(cfg.threads, 1);
#pragma omp parallel num_threads(threads) if (threads > 1 && count > 1)
  {
    std::vector<uint8_t> scratch;
#pragma omp for schedule(static)
    for (int64_t j = 0; j < count; ++j) {
      const uint64_t pos = uint64_t(start + j);
      const int64_t i = order[size_t(start + j)];
      out.index[j] = i;
      out.y[j] = data.labels[i];
      Rng r0 = Rng::derive(cfg.seed, uint64_t(epoch), pos, kStreamView0);
      augment_image(data.image(i), c, h, w, cfg.augment, draw_augment(cfg.augment, r0),
                    out.x.data() + j * img, scratch);
      if (two) {
        Rng r1 = Rng::derive(cfg.seed, uint64_t(epoch), pos, kStreamView1);
        augment_image(data.image(i), c, h, w, cfg.augment, draw_augment(cfg.augment, r1),
                      out.x2.data() + j * img, scratch);
      }
      if (pair) {
        Rng rc = Rng::derive(cfg.seed, uint64_t(epoch), pos, kStreamPairChoice);
        const int64_t p = pairs->partner(i, rc);
        out.pair_index[j] = p;
        out.y_pair[j] = data.labels[p];
        Rng rv = Rng::derive(cfg.seed, uint64_t(epoch), pos, kStreamPairView);
        augment_image(data.image(p), c, h, w, cfg.augment, draw_augment(cfg.augment, rv),
                      out.x_pair.data() + j * img, scratch);
      }
    }
  }
}

DataLoader::DataLoader(const ImageSet& data, LoaderConfig cfg) : data_(data), cfg_(std::move(cfg)) {
  data_.validate();
  SPARROW_CHECK(data_.n > 0, data_.name, ": cannot load batches from an empty image set");
  SPARROW_CHECK(cfg_.batch_size >= 1, "loader: batch size must be >= 1, got ", cfg_.batch_size);
  SPARROW_CHECK(cfg_.prefetch >= 1, "loader: prefetch depth must be >= 1, got ", cfg_.prefetch);
  SPARROW_CHECK(cfg_.threads >= 1, "loader: threads must be >= 1, got ", cfg_.threads);
  check_augment(cfg_.augment, data_.channels, data_.height, data_.width);
  if (cfg_.spec.pair) pairs_ = std::make_unique<PairSampler>(data_.labels, data_.classes);
  if (cfg_.background) worker_ = std::thread([this] { worker_loop(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lk(m_);
    stop_ = true;
  }
  work_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

int64_t DataLoader::batches_per_epoch() const {
  const int64_t n = data_.n, b = cfg_.batch_size;
  return cfg_.drop_last ? n / b : (n + b - 1) / b;
}

void DataLoader::start_epoch(int epoch, int64_t skip_batches) {
  SPARROW_CHECK(epoch >= 0, "loader: epoch must be >= 0, got ", epoch);
  const int64_t total = batches_per_epoch();
  SPARROW_CHECK(skip_batches >= 0 && skip_batches <= total, "loader: cannot skip ", skip_batches,
                " batches of an epoch of ", total);
  auto order =
      std::make_shared<const std::vector<int64_t>>(epoch_order(data_.n, cfg_.seed, epoch, cfg_.shuffle));
  {
    std::lock_guard<std::mutex> lk(m_);
    ++generation_;
    for (auto& b : ready_) spare_.push_back(std::move(b));
    ready_.clear();
    error_ = nullptr;
    epoch_ = epoch;
    order_ = std::move(order);
    next_build_ = next_take_ = skip_batches;
    end_ = total;
    active_ = true;
  }
  work_cv_.notify_all();
}

bool DataLoader::next(Batch& out) {
  std::unique_lock<std::mutex> lk(m_);
  SPARROW_CHECK(active_, "loader: next() called without start_epoch() (or after a failed batch)");
  if (next_take_ >= end_) return false;
  if (!cfg_.background) {
    const int64_t b = next_take_++;
    lk.unlock();
    try {
      build_batch(data_, cfg_, pairs_.get(), *order_, epoch_, b, out);
      if (cfg_.on_batch) cfg_.on_batch(out);
    } catch (...) {
      active_ = false;  // as in the background path: the epoch cannot continue past a failed batch
      throw;
    }
    return true;
  }
  ready_cv_.wait(lk, [&] { return !ready_.empty() || error_; });
  if (ready_.empty()) {
    // Batches before the failing one were delivered first; the epoch cannot continue past it.
    std::exception_ptr e = error_;
    error_ = nullptr;
    active_ = false;
    std::rethrow_exception(e);
  }
  std::swap(out, ready_.front());
  spare_.push_back(std::move(ready_.front()));  // the caller's previous buffers, reused for a later batch
  ready_.pop_front();
  ++next_take_;
  lk.unlock();
  work_cv_.notify_all();
  return true;
}

void DataLoader::worker_loop() {
  std::unique_lock<std::mutex> lk(m_);
  for (;;) {
    work_cv_.wait(lk, [&] {
      return stop_ || (active_ && !error_ && next_build_ < end_ && int64_t(ready_.size()) < cfg_.prefetch);
    });
    if (stop_) return;
    const uint64_t gen = generation_;
    const int64_t b = next_build_++;
    const int epoch = epoch_;
    const std::shared_ptr<const std::vector<int64_t>> order = order_;
    Batch batch;
    if (!spare_.empty()) {
      batch = std::move(spare_.back());
      spare_.pop_back();
    }
    lk.unlock();
    std::exception_ptr err;
    try {
      build_batch(data_, cfg_, pairs_.get(), *order, epoch, b, batch);
      if (cfg_.on_batch) cfg_.on_batch(batch);
    } catch (...) {
      err = std::current_exception();
    }
    lk.lock();
    if (gen != generation_) {  // start_epoch ran meanwhile: this batch belongs to an abandoned epoch
      spare_.push_back(std::move(batch));
      continue;
    }
    if (err) {
      error_ = err;
    } else {
      ready_.push_back(std::move(batch));
    }
    ready_cv_.notify_all();
  }
}

}  // namespace sparrow
