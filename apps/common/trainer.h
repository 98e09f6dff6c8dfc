// The training loop every app shares: epochs of SGD over a DataLoader with an LR schedule, a live
// progress line (terminal) or plain log lines, per-epoch evaluation and metrics rows, atomic checkpoints
// at epoch ends (and every N steps), --resume that reproduces the uninterrupted run on CPU, SIGINT that
// saves and stops cleanly, and a clear stop on a non-finite loss. The loss is a callback so the SD and
// KD methods plug in with whatever batch extras they need.
#pragma once
#include <functional>
#include <string>

#include "apps/common/checkpoint.h"
#include "apps/common/data.h"
#include "engine/io/run_folder.h"

namespace sparrow {

struct StepOutput {
  Tensor loss;    // scalar to backpropagate
  Tensor logits;  // optional: for the running training accuracy (rows = labels of view x)
};

struct TrainHooks {
  // Loss for one batch (default: cross-entropy on view x). Called in train mode, grad enabled.
  std::function<StepOutput(const Batch&)> loss;
  // Extra checkpoint content (method state such as DLB's stored batch or PS-KD's table) and its restore.
  std::function<void(StFile&)> save_extra;
  std::function<void(const StFile&)> load_extra;
  // After each epoch's evaluation: may add fields to the metrics row; return true to stop early.
  std::function<bool(int epoch, nlohmann::json& row)> on_epoch_end;
  // After every optimiser step (e.g. to re-apply a moving mask).
  std::function<void()> after_step;
};

struct TrainSetup {
  std::string phase = "train";  // names the checkpoint (<out>/<phase>.safetensors) and metrics rows
  BatchSpec spec;               // batch extras the loss needs
  bool evaluate_each_epoch = true;
};

struct TrainResult {
  double test_accuracy = 0, test_loss = 0, train_loss = 0, seconds = 0;
  int epochs_run = 0;
  bool interrupted = false;
};

class Trainer {
 public:
  Trainer(const AppCli& cli, const DataBundle& data, Model& model, Sgd& opt, const LrSchedule& schedule,
          TrainSetup setup, TrainHooks hooks);
  TrainResult run();
  std::string checkpoint_path() const;

 private:
  void save(const LoopPosition& pos);
  const CommonOptions& o_;
  const DataBundle& data_;
  Model& model_;
  Sgd& opt_;
  LrSchedule schedule_;
  TrainSetup setup_;
  TrainHooks hooks_;
  std::unique_ptr<RunFolder> run_;
};

// Installs a SIGINT handler for the trainer (the first Ctrl-C asks for a clean save-and-stop).
void install_interrupt_handler();
bool interrupt_requested();

// Exit code for a run that stopped on SIGINT after saving.
constexpr int kExitInterrupted = 130;

}  // namespace sparrow
