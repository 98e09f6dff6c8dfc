// The shared training loop.
#include "apps/common/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "engine/base/nvtx.h"
#include "engine/base/profiler.h"
#include "engine/cuda_runtime.h"
#include "engine/io/atomic_file.h"

namespace sparrow {

namespace {
std::atomic<bool> g_interrupt{false};
extern "C" void on_sigint(int) {
  if (g_interrupt.exchange(true)) std::_Exit(kExitInterrupted);  // second Ctrl-C: leave now
}

std::string fmt_seconds(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const int t = int(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, (t / 60) % 60);
  else std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  return buf;
}
// True when every element of a floating-point tensor is finite (integer tensors always are).
bool all_finite(const Tensor& t) {
  if (!t.defined() || t.numel() == 0) return true;
  if (t.dtype() != DType::F32 && t.dtype() != DType::F64) return true;
  const Tensor c = t.device() == Device::CPU ? t : t.to(Device::CPU);
  const int64_t n = c.numel();
  if (c.dtype() == DType::F32) {
    const float* p = c.data<float>();
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p[i])) return false;
  } else {
    const double* p = c.data<double>();
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p[i])) return false;
  }
  return true;
}

std::string module_of(const std::string& tensor_name) {
  const size_t dot = tensor_name.rfind('.');
  return dot == std::string::npos ? std::string() : tensor_name.substr(0, dot);
}
}  // namespace

std::string first_non_finite(Model& model) {
  const auto modules = model.named_modules();
  auto layer = [&](const std::string& tensor_name) {
    const std::string m = module_of(tensor_name);
    for (const auto& [name, mod] : modules)
      if (name == m) return str(mod->type_name(), " '", m.empty() ? "(model)" : m, "'");
    return str("'", m, "'");
  };
  for (const auto& [name, t] : model.named_parameters())
    if (!all_finite(t)) return str("parameter '", name, "' of ", layer(name));
  for (const auto& [name, t] : model.named_buffers()) {
    if (all_finite(t)) continue;
    // A BatchNorm's running statistics turn non-finite when its input batch did: name the weight layer
    // before it in module order (the one feeding it in every sparrow model) as well.
    const std::string m = module_of(name);
    std::string feeder;
    for (const auto& [mname, mod] : modules) {
      if (mname == m) break;
      if (dynamic_cast<WeightLayer*>(mod)) feeder = str(mod->type_name(), " '", mname, "'");
    }
    return str("buffer '", name, "' of ", layer(name),
               feeder.empty() ? std::string() : str(" (its input comes from ", feeder, ")"));
  }
  return "";
}

void install_interrupt_handler() {
  std::signal(SIGINT, on_sigint);
  // A write past the file-size limit (ulimit -f) then fails with EFBIG, which the atomic checkpoint
  // write reports as one line keeping the previous file, instead of the signal killing the run.
  std::signal(SIGXFSZ, SIG_IGN);
}
bool interrupt_requested() { return g_interrupt.load(); }

Trainer::Trainer(const AppCli& cli, const DataBundle& data, Model& model, Sgd& opt, const LrSchedule& schedule,
                 TrainSetup setup, TrainHooks hooks)
    : o_(const_cast<AppCli&>(cli).opts()), data_(data), model_(model), opt_(opt), schedule_(schedule),
      setup_(std::move(setup)), hooks_(std::move(hooks)) {
  if (!o_.out.empty()) run_ = std::make_unique<RunFolder>(o_.out);
  if (setup_.label.empty()) setup_.label = setup_.phase;
  if (!hooks_.loss) {
    const Device dev = o_.resolved_device;
    hooks_.loss = [this, dev](const Batch& b) {
      StepOutput out;
      out.logits = model_.forward(images_tensor(b, b.x, dev));
      out.loss = cross_entropy(out.logits, labels_tensor(b.y, dev));
      return out;
    };
  }
}

std::string Trainer::checkpoint_path() const {
  return run_ ? run_->path(setup_.phase + ".safetensors") : std::string();
}

std::string Trainer::last_good_checkpoint() const {
  if (!run_) return "no checkpoint is kept (no --out)";
  if (!have_checkpoint_) return str("no checkpoint was written yet (", checkpoint_path(), ")");
  return str("the last good checkpoint is ", checkpoint_path(), " (step ", checkpoint_pos_.global_step,
             "; resumes at epoch ", checkpoint_pos_.epoch + 1, ", batch ", checkpoint_pos_.batches_done, ")");
}

void Trainer::save(const LoopPosition& pos) {
  if (!run_) return;
  SPARROW_NVTX_RANGE("checkpoint");
  StFile f = make_checkpoint(model_, &opt_, pos, {{"phase", setup_.phase}});
  if (hooks_.save_extra) hooks_.save_extra(f);
  // Never replace a good checkpoint with non-finite weights (a step can overflow the weights while its own
  // loss was still finite); the entries are on the host already, so this costs one pass over them.
  for (const auto& [name, e] : f.tensors) {
    if (e.dtype != "F32") continue;
    const std::vector<float> v = st_values<float>(e, name);
    if (std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); })) continue;
    std::string where = first_non_finite(model_);
    if (where.empty()) where = str("'", name, "'");
    SPARROW_FAIL("non-finite values in ", where, " after step ", pos.global_step, " of phase '", setup_.phase,
                 "': checkpoint not written; ", last_good_checkpoint());
  }
  try {
    save_checkpoint(checkpoint_path(), f);
  } catch (const Error& e) {
    // The atomic write left the previous file as it was (disk full, file-size limit, permissions ...).
    throw Error(str(user_message(e), "; ", last_good_checkpoint(), " and is unchanged"));
  }
  have_checkpoint_ = true;
  checkpoint_pos_ = pos;
}

TrainResult Trainer::run() {
  TrainResult res;
  const Device dev = o_.resolved_device;
  LoopPosition pos;
  // Temp files of a writer killed mid-checkpoint (SIGKILL, power cut) are garbage: the rename never happened.
  if (run_) remove_stale_temp_files(checkpoint_path());
  if (o_.resume && run_ && std::filesystem::exists(checkpoint_path())) {
    StFile f = read_safetensors(checkpoint_path());
    restore_checkpoint(f, checkpoint_path(), model_, &opt_, &pos);
    have_checkpoint_ = true;
    checkpoint_pos_ = pos;
    if (hooks_.load_extra) hooks_.load_extra(f);
    // Drop metrics rows of this phase written after the checkpoint (they will be produced again).
    std::vector<nlohmann::json> keep;
    for (auto& row : run_->read_metrics())
      if (row.value("phase", "") != setup_.phase || row.value("epoch", 0) < pos.epoch) keep.push_back(row);
    run_->rewrite_metrics(keep);
    if (!o_.quiet)
      std::printf("[%s] resuming at epoch %d, batch %lld\n", setup_.label.c_str(), pos.epoch + 1,
                  (long long)pos.batches_done);
  }
  LoaderConfig lc = train_loader_config(data_, o_, setup_.spec);
  DataLoader loader(data_.train, lc);
  const int64_t steps_per_epoch = loader.batches_per_epoch();
  const bool tty = isatty(fileno(stdout)) && !o_.quiet;
  const double t_start = profiler_now();
  model_.train();
  for (int epoch = pos.epoch; epoch < o_.epochs; ++epoch) {
    SPARROW_NVTX_RANGE("epoch");
    opt_.set_lr(schedule_.lr_at(epoch));
    loader.start_epoch(epoch, pos.batches_done);
    const double t_epoch = profiler_now();
    double loss_sum = 0, last_print = 0;
    int64_t seen = 0, correct = 0, counted = 0, step = pos.batches_done;
    Batch b;
    while (true) {
      {
        SPARROW_NVTX_RANGE("data_wait");
        if (!loader.next(b)) break;
      }
      if (pos.global_step == o_.profile_begin) cuda_profiler_start();
      if (pos.global_step == o_.profile_end) cuda_profiler_stop();
      SPARROW_NVTX_RANGE("train_step");
      opt_.zero_grad();
      StepOutput out = hooks_.loss(b);
      const double lv = out.loss.item();
      if (!std::isfinite(lv)) {
        // Off the hot path: only now look for where it started. The failing forward pass has updated the
        // BatchNorm statistics, so the first non-finite buffer marks the first layer that saw bad values.
        std::string where = first_non_finite(model_);
        if (where.empty() && out.logits.defined() && !all_finite(out.logits)) {
          std::string last;
          for (const auto& [name, m] : model_.named_modules())
            if (dynamic_cast<WeightLayer*>(m)) last = str(m->type_name(), " '", name, "'");
          where = str("the logits (output of ", last.empty() ? std::string("the model") : last, ")");
        }
        if (where.empty()) where = "the loss itself (weights, statistics and logits are finite)";
        SPARROW_FAIL("non-finite loss (", lv, ") at epoch ", epoch + 1, " step ", step + 1, " of phase '",
                     setup_.phase, "': first non-finite values in ", where, "; the run stopped and ",
                     last_good_checkpoint());
      }
      out.loss.backward();
      if (hooks_.before_step) hooks_.before_step();
      opt_.step();
      if (hooks_.after_step) hooks_.after_step();
      ++step;
      ++pos.global_step;
      loss_sum += lv * b.n;
      seen += b.n;
      if (out.logits.defined()) {
        NoGradGuard ng;
        const int64_t rows = std::min<int64_t>(out.logits.size(0), b.n);
        correct += count_correct(out.logits.slice_batch(0, rows), labels_tensor(b.y, Device::CPU).slice_batch(0, rows));
        counted += rows;
      }
      const double now = profiler_now();
      const double ips = seen / std::max(1e-9, now - t_epoch);
      const double eta = (steps_per_epoch - step) * (now - t_epoch) / std::max<int64_t>(1, step - pos.batches_done);
      if (tty && (now - last_print > 0.25 || step == steps_per_epoch)) {
        std::printf("\r[%s] epoch %d/%d step %lld/%lld loss %.4f acc %.3f %.0f img/s ETA %s   ",
                    setup_.label.c_str(), epoch + 1, o_.epochs, (long long)step, (long long)steps_per_epoch,
                    loss_sum / seen, counted ? double(correct) / counted : 0.0, ips, fmt_seconds(eta).c_str());
        std::fflush(stdout);
        last_print = now;
      } else if (!tty && !o_.quiet && steps_per_epoch >= 10 && step % (steps_per_epoch / 5) == 0 &&
                 step != steps_per_epoch) {
        std::printf("[%s] epoch %d/%d step %lld/%lld loss %.4f %.0f img/s\n", setup_.label.c_str(), epoch + 1,
                    o_.epochs, (long long)step, (long long)steps_per_epoch, loss_sum / seen, ips);
        std::fflush(stdout);
      }
      const bool mid = o_.checkpoint_every > 0 && pos.global_step % o_.checkpoint_every == 0;
      if (mid || interrupt_requested()) {
        LoopPosition p{epoch, step, pos.global_step};
        save(p);
        if (interrupt_requested()) {
          std::printf("\n[%s] interrupted: saved %s (epoch %d, batch %lld); continue with --resume\n",
                      setup_.label.c_str(), run_ ? checkpoint_path().c_str() : "(no --out: nothing saved)", epoch + 1,
                      (long long)step);
          res.interrupted = true;
          res.seconds = profiler_now() - t_start;
          return res;
        }
      }
    }
    if (tty) std::printf("\n");
    pos.batches_done = 0;
    const double epoch_seconds = profiler_now() - t_epoch;
    nlohmann::json row{{"phase", setup_.phase}, {"epoch", epoch},         {"lr", opt_.lr()},
                       {"train_loss", seen ? loss_sum / seen : 0.0},    {"seconds", epoch_seconds},
                       {"img_per_s", seen / std::max(1e-9, epoch_seconds)}};
    if (counted) row["train_accuracy"] = double(correct) / counted;
    res.train_loss = seen ? loss_sum / seen : 0.0;
    if (setup_.evaluate_each_epoch || epoch + 1 == o_.epochs) {
      EvalResult ev = evaluate(model_, data_.test, data_.test_aug, std::max(o_.batch_size, 256), dev);
      row["test_accuracy"] = ev.accuracy;
      row["test_loss"] = ev.loss;
      res.test_accuracy = ev.accuracy;
      res.test_loss = ev.loss;
    }
    bool stop = hooks_.on_epoch_end ? hooks_.on_epoch_end(epoch, row) : false;
    if (run_) run_->append_metrics(row);
    if (!o_.quiet) {
      std::printf("[%s] epoch %d/%d loss %.4f", setup_.label.c_str(), epoch + 1, o_.epochs, res.train_loss);
      if (row.contains("train_accuracy")) std::printf(" train_acc %.4f", row["train_accuracy"].get<double>());
      if (row.contains("val_accuracy")) std::printf(" val_acc %.4f", row["val_accuracy"].get<double>());
      if (row.contains("test_accuracy")) std::printf(" test_acc %.4f", row["test_accuracy"].get<double>());
      std::printf(" (%.1fs, %.0f img/s)\n", epoch_seconds, row["img_per_s"].get<double>());
      std::fflush(stdout);
    }
    res.epochs_run = epoch + 1;
    save(LoopPosition{epoch + 1, 0, pos.global_step});
    if (stop) break;
  }
  if (o_.profile_end > 0 && pos.global_step < o_.profile_end) cuda_profiler_stop();
  res.seconds = profiler_now() - t_start;
  return res;
}

}  // namespace sparrow
