// Dataset loading with subsets and validation split; batch tensors; evaluation.
#include "apps/common/data.h"

#include <algorithm>
#include <cmath>

#include "apps/common/checkpoint.h"
#include "engine/base/nvtx.h"

namespace sparrow {

DataBundle load_data(const CommonOptions& o, double val_fraction) {
  SPARROW_NVTX_RANGE("load_data");
  SPARROW_CHECK(is_dataset_name(o.dataset), "--dataset: unknown dataset '", o.dataset,
                "' (expected cifar10, cifar100, tiny-imagenet, fashion-mnist or synthetic)");
  SPARROW_CHECK(val_fraction >= 0 && val_fraction < 1, "--val-fraction must be in [0, 1), got ", val_fraction);
  LoadOptions lo;
  lo.synthetic.seed = 1;  // the synthetic task itself is fixed; --seed varies init and order
  DataBundle d;
  ImageSet full = load_dataset(o.dataset, o.data_dir, true, lo);
  d.test = take_subset(load_dataset(o.dataset, o.data_dir, false, lo), o.limit_test, o.seed + 1);
  if (val_fraction > 0) {
    auto [tr, va] = split_validation(full, val_fraction, o.seed + 2);
    d.train = take_subset(tr, o.limit_train, o.seed + 3);
    // With --limit-train the held-out set shrinks with it (the same share of the limited set), so a small
    // run does not validate on ten times more images than it trains on. Always from the held-out part.
    const int val_n = o.limit_train > 0
                          ? std::max(1, int(std::lround(double(d.train.n) * val_fraction / (1.0 - val_fraction))))
                          : 0;
    d.val = take_subset(va, val_n, o.seed + 4);
  } else {
    d.train = take_subset(full, o.limit_train, o.seed + 3);
  }
  d.classes = d.train.classes;
  d.channels = d.train.channels;
  d.height = d.train.height;
  d.width = d.train.width;
  d.train_aug = default_augment(o.dataset, d.channels, o.augment == "default");
  d.test_aug = default_augment(o.dataset, d.channels, false);
  check_augment(d.train_aug, d.channels, d.height, d.width);
  SPARROW_CHECK(d.train.n > 0, "--dataset ", o.dataset, ": the training split is empty");
  return d;
}

LoaderConfig train_loader_config(const DataBundle& d, const CommonOptions& o, BatchSpec spec, int batch_size) {
  LoaderConfig c;
  c.batch_size = batch_size > 0 ? batch_size : o.batch_size;
  c.shuffle = true;
  // BatchNorm needs more than one sample; a trailing batch of 1 would also be a noisy step. A set smaller
  // than one batch is one (short) batch, never none.
  c.drop_last = d.train.n > c.batch_size;
  c.seed = o.seed;
  c.augment = d.train_aug;
  c.spec = spec;
  return c;
}

Tensor images_tensor(const Batch& b, const std::vector<float>& view, Device device) {
  SPARROW_CHECK(int64_t(view.size()) == int64_t(b.n) * b.c * b.h * b.w, "batch view has ", view.size(),
                " floats for ", b.n, "x", b.c, "x", b.h, "x", b.w);
  Tensor t = Tensor::from_vector<float>({b.n, b.c, b.h, b.w}, view);
  return device == Device::CPU ? t : t.to(device);
}

Tensor labels_tensor(const std::vector<int64_t>& y, Device device) {
  Tensor t = Tensor::from_vector<int64_t>({int64_t(y.size())}, y);
  return device == Device::CPU ? t : t.to(device);
}

EvalResult evaluate(Model& model, const ImageSet& set, const AugmentConfig& test_aug, int batch_size, Device device) {
  SPARROW_NVTX_RANGE("evaluate");
  EvalResult r;
  if (set.n == 0) return r;
  const bool was_training = model.is_training();
  model.eval();
  LoaderConfig c;
  c.batch_size = batch_size;
  c.shuffle = false;
  c.augment = test_aug;
  DataLoader loader(set, c);
  loader.start_epoch(0);
  Batch b;
  NoGradGuard ng;
  double loss_sum = 0;
  int64_t correct = 0;
  while (loader.next(b)) {
    Tensor logits = model.forward(images_tensor(b, b.x, device));
    Tensor y = labels_tensor(b.y, device);
    loss_sum += cross_entropy(logits, y).item() * b.n;
    correct += count_correct(logits, y);
    r.n += b.n;
  }
  model.train(was_training);
  r.accuracy = double(correct) / double(r.n);
  r.loss = loss_sum / double(r.n);
  return r;
}

ModelSpec model_spec_from(const CommonOptions& o, const DataBundle& d) {
  ModelSpec s;
  s.name = o.model;
  s.classes = d.classes;
  s.in_channels = d.channels;
  if (!o.widths.empty()) s.widths = parse_widths(o.widths, "--widths");
  s.classifier = o.classifier;
  return s;
}

}  // namespace sparrow
