// Data glue for the apps: load the dataset the options name (with subsets and an optional validation
// split), build loader configs, turn batches into tensors on the run's device, and evaluate a model.
#pragma once
#include "apps/common/options.h"
#include "engine/data/augment.h"
#include "engine/data/dataset.h"
#include "engine/data/loader.h"
#include "models/models.h"

namespace sparrow {

struct DataBundle {
  ImageSet train, val, test;  // val is empty unless a validation fraction was asked for
  AugmentConfig train_aug, test_aug;
  int classes = 0, channels = 0, height = 0, width = 0;
};

DataBundle load_data(const CommonOptions& o, double val_fraction = 0.0);
// Training loader settings; batch_size > 0 overrides --batch-size (EPSD's pruning batches). The last partial
// batch is dropped unless it is the only one.
LoaderConfig train_loader_config(const DataBundle& d, const CommonOptions& o, BatchSpec spec = {}, int batch_size = 0);

// N×C×H×W float tensor from a batch's view (x, x2 or x_pair) and I64 labels, on `device`.
Tensor images_tensor(const Batch& b, const std::vector<float>& view, Device device);
Tensor labels_tensor(const std::vector<int64_t>& y, Device device);

struct EvalResult {
  double accuracy = 0, loss = 0;
  int64_t n = 0;
};
// Eval-mode accuracy and mean CE over a whole set (no augmentation); restores the model's train flag.
EvalResult evaluate(Model& model, const ImageSet& set, const AugmentConfig& test_aug, int batch_size, Device device);

ModelSpec model_spec_from(const CommonOptions& o, const DataBundle& d);

}  // namespace sparrow
