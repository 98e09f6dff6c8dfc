// The training loop every app shares: epochs of SGD over a DataLoader with an LR schedule, a live
// progress line (terminal) or plain log lines, per-epoch evaluation and metrics rows, atomic checkpoints
// at epoch ends (and every N steps), --resume that reproduces the uninterrupted run on CPU, SIGINT that
// saves and stops cleanly, and a clear stop on a non-finite loss naming the step and the layer (a
// checkpoint is never written from non-finite weights, so the last one on disk is always good). The loss
// is a callback so the SD and KD methods plug in with whatever batch extras they need.
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
  // Between backward and the optimiser step (e.g. gradient clipping), and after the step.
  std::function<void()> before_step;
  std::function<void()> after_step;
};

struct TrainSetup {
  std::string phase = "train";  // names the checkpoint (<out>/<phase>.safetensors) and metrics rows
  std::string label;            // shown in progress lines ("" = phase)
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
  // "the last good checkpoint is <path> (epoch E, batch B)" or why there is none, for error messages.
  std::string last_good_checkpoint() const;
  const CommonOptions& o_;
  const DataBundle& data_;
  Model& model_;
  Sgd& opt_;
  LrSchedule schedule_;
  TrainSetup setup_;
  TrainHooks hooks_;
  std::unique_ptr<RunFolder> run_;
  bool have_checkpoint_ = false;  // a checkpoint file of this phase exists (written or resumed from)
  LoopPosition checkpoint_pos_;   // ... and the position it holds
};

// Where a non-finite value first shows in a model, in module order: the first parameter, then the first
// buffer (BatchNorm running statistics, which the failing forward pass has just updated), holding one;
// "" when all are finite. Names the tensor and its layer ("parameter 'blocks.0.c1.weight' of Conv2d
// 'blocks.0.c1'"; for BatchNorm statistics also the weight layer feeding it). Copies CUDA tensors to the
// host: for diagnostics and checkpoint checks, never on the per-step path.
std::string first_non_finite(Model& model);

// Installs a SIGINT handler for the trainer (the first Ctrl-C asks for a clean save-and-stop) and ignores
// SIGXFSZ (a file-size limit then fails the write with a clear error, as a full disk does).
void install_interrupt_handler();
bool interrupt_requested();

// Exit code for a run that stopped on SIGINT after saving.
constexpr int kExitInterrupted = 130;

}  // namespace sparrow
