// sparrow-tgosp: Teacher-Guided One-Shot Pruning via context-aware KD (ALGORITHMS.md §2). Four stages,
// each skippable with a checkpoint: (1) dense KD fine-tune of the student from a teacher, (2) importance
// scores S ← 0.9·S + 0.1·|w ⊙ ∂L/∂w| (bias-corrected EMA) over --score-epochs with the KD loss, (3) global
// one-shot pruning of conv weights at the k-th smallest score, (4) sparsity-aware retraining with KD (or
// CE) and early stopping on a validation split, keeping the best-validation weights.
#include <filesystem>

#include "apps/common/pruning.h"
#include "apps/common/report.h"
#include "apps/common/summary.h"
#include "compress/score_accumulator.h"
#include "engine/base/nvtx.h"
#include "engine/io/atomic_file.h"

using namespace sparrow;
namespace fs = std::filesystem;

namespace {

struct TgospOptions {
  PruneOptions prune;
  std::string teacher_checkpoint, student_checkpoint, scores_path;
  std::string student = "resnet20";
  std::string criterion = "tgosp";  // tgosp (KD-loss saliency) | magnitude
  std::string score_loss = "kd";    // kd | ce
  std::string retrain = "kd";       // kd | ce
  std::string keep = "best";        // best | last
  std::string logit_norm = "before-T";
  double alpha = 0.7, beta = 0.5, T = 5.0;
  double kd_alpha = 0.5;   // stage 1
  int kd_epochs = 10;      // stage 1 (0 with --student-checkpoint)
  int score_epochs = 3;
  int retrain_epochs = 0;  // 0: 50 with KD, 200 with CE
  int patience = 0;        // 0: 5, or 7 at >= 97% sparsity
  double val_fraction = 0.1;
  double retrain_lr = 0.01;
  bool sweep = false;
  std::string sweep_methods = "tgosp+kd,magnitude+kd,ce+kd,tgosp+ce,magnitude+ce,ce+ce";
  std::string sweep_sparsities = "0.36,0.59,0.79,0.9,0.95,0.974,0.984";
  std::string sweep_seeds = "0";
};

// Teacher logits for a batch (frozen, eval mode, no gradient).
Tensor teacher_logits(Model& teacher, const Tensor& x) {
  NoGradGuard ng;
  return teacher.forward(x);
}

// Stage 1: dense KD fine-tune (or training from scratch) of the student; returns the student.
ModelPtr stage_student(const AppCli& cli, const DataBundle& data, const TgospOptions& t, Model& teacher, uint64_t seed,
                       const std::string& dir) {
  CommonOptions o = const_cast<AppCli&>(cli).opts();
  const Device dev = o.resolved_device;
  if (!t.student_checkpoint.empty()) {
    ModelPtr s = load_model_from_checkpoint(t.student_checkpoint);
    s->to(dev);
    return s;
  }
  ModelSpec spec{t.student, data.classes, data.channels, {}, ""};
  ModelPtr s = make_model(spec, seed);
  s->to(dev);
  if (t.kd_epochs == 0) return s;
  const std::string path = dir + "/student.safetensors";
  if (fs::exists(dir + "/student.done")) {  // finished earlier (shared across a sweep's runs)
    return load_model_from_checkpoint(path);
  }
  SPARROW_NVTX_RANGE("tgosp_stage1_kd");
  AppCli& mcli = const_cast<AppCli&>(cli);
  const CommonOptions saved = mcli.opts();
  o.epochs = t.kd_epochs;
  o.seed = seed;
  o.out = dir;
  mcli.opts() = o;
  Sgd opt(s->parameters(), {o.lr, o.momentum, 0.0, o.weight_decay, o.nesterov});
  const KlParams kp{t.T, t.kd_alpha, t.beta, LogitNorm::none};
  TrainHooks h;
  h.loss = [&](const Batch& b) {
    Tensor x = images_tensor(b, b.x, dev);
    StepOutput out;
    out.logits = s->forward(x);
    out.loss = kd_loss(out.logits, teacher_logits(teacher, x), kp, labels_tensor(b.y, dev));
    return out;
  };
  Trainer tr(cli, data, *s, opt, parse_schedule(o.schedule, o.lr, o.epochs), TrainSetup{"student", "", {}, true}, h);
  TrainResult r = tr.run();
  mcli.opts() = saved;
  SPARROW_CHECK(!r.interrupted, "interrupted during the student's KD fine-tune; rerun with --resume");
  save_checkpoint(path, make_checkpoint(*s, nullptr, {}));
  write_file_atomic(dir + "/student.done", std::string("ok\n"));
  return s;
}

// Stage 2: EMA of |w ⊙ ∂L/∂w| over every batch of score_epochs epochs (weights are not updated).
Scores stage_scores(const AppCli& cli, const DataBundle& data, const TgospOptions& t, const std::string& score_loss,
                    Model& teacher, Model& student, const std::vector<PrunableParam>& params, uint64_t seed) {
  SPARROW_NVTX_RANGE("tgosp_stage2_scores");
  const CommonOptions& o = const_cast<AppCli&>(cli).opts();
  const Device dev = o.resolved_device;
  ModelSnapshot snap(student);  // BN statistics move in train mode; restore them afterwards
  student.train();
  ScoreAccumulator acc(ScoreAccumulator::Kind::Ema, 0.9, true);
  LoaderConfig lc = train_loader_config(data, o);
  lc.seed = seed + 2000;
  DataLoader loader(data.train, lc);
  const KlParams kp{t.T, t.alpha, t.beta, LogitNorm::none};  // no logit standardisation while scoring
  std::vector<Tensor> ws;
  for (auto& p : params) ws.push_back(p.layer->weight);
  for (int epoch = 0; epoch < t.score_epochs; ++epoch) {
    loader.start_epoch(epoch);
    Batch b;
    while (loader.next(b)) {
      Tensor x = images_tensor(b, b.x, dev), y = labels_tensor(b.y, dev);
      LossFn fn = [&](int) {
        Tensor z = student.forward(x);
        return score_loss == "ce" ? cross_entropy(z, y) : kd_loss(z, teacher_logits(teacher, x), kp, y);
      };
      std::vector<Tensor> g = loss_gradients(student, fn, 0, ws);
      Scores s;
      for (size_t i = 0; i < ws.size(); ++i) {
        NoGradGuard ng;
        Tensor w = ws[i].to(Device::CPU).to(DType::F64), gi = g[i].to(Device::CPU).to(DType::F64);
        Tensor prod = mul(w, gi);
        double* p = prod.data<double>();
        for (int64_t j = 0; j < prod.numel(); ++j) p[j] = std::fabs(p[j]);
        s.push_back(prod);
      }
      acc.add(s);
    }
    if (!o.quiet) std::printf("[score] epoch %d/%d done (%d batches so far)\n", epoch + 1, t.score_epochs, acc.count());
  }
  snap.restore();
  return acc.value();
}

void save_scores(const std::string& path, const std::vector<PrunableParam>& params, const Scores& s) {
  StFile f;
  f.metadata["format"] = "sparrow-scores-1";
  for (size_t i = 0; i < params.size(); ++i) f.tensors[params[i].name] = tensor_to_entry(s[i]);
  write_safetensors(path, f);
}

Scores load_scores(const std::string& path, const std::vector<PrunableParam>& params) {
  StFile f = read_safetensors(path);
  Scores s;
  for (auto& p : params) {
    auto it = f.tensors.find(p.name);
    SPARROW_CHECK(it != f.tensors.end(), path, ": no scores for '", p.name, "'");
    Tensor t = entry_to_tensor(it->second, path);
    SPARROW_CHECK(t.shape() == p.weight().shape(), path, ": scores for '", p.name, "' have shape ", t.shape_str(),
                  ", the weight is ", p.weight().shape_str());
    s.push_back(t.to(DType::F64));
  }
  return s;
}

struct RunOutcome {
  double test_accuracy = 0, val_accuracy = 0, achieved_sparsity = 0, seconds = 0;
  bool interrupted = false;
};

RunOutcome run_one(const AppCli& cli, const DataBundle& data, const TgospOptions& t, Model& teacher,
                   const std::string& criterion, const std::string& retrain, double sparsity, uint64_t seed,
                   const std::string& out, const std::string& shared_dir) {
  CommonOptions o = const_cast<AppCli&>(cli).opts();
  o.seed = seed;
  o.out = out;
  const Device dev = o.resolved_device;
  const double t0 = profiler_now();
  RunFolder run(out);
  nlohmann::json cfg = cli.config_json();
  cfg["run"] = {{"criterion", criterion}, {"retrain", retrain}, {"sparsity", sparsity}, {"seed", seed}};
  if (!o.resume) run.write_config(cfg);

  ModelPtr student = stage_student(cli, data, t, teacher, seed, shared_dir);
  const double dense_val = evaluate(*student, data.val, data.test_aug, 256, dev).accuracy;
  PruneOptions po = t.prune;
  po.sparsity = sparsity;
  po.prune_linear = t.prune.prune_linear;
  const PrunableSpec pspec = prunable_spec(po);
  std::vector<PrunableParam> params = prunable_params(*student, pspec);
  const std::string ckpt = out + "/retrain.safetensors";
  const bool resuming = o.resume && fs::exists(ckpt);
  const double lr = t.retrain_lr;
  std::unique_ptr<Sgd> opt;
  nlohmann::json prune_info;
  if (resuming) {
    prepare_from_checkpoint(*student, ckpt, po.sparse_kernels);
    opt = std::make_unique<Sgd>(student->parameters(), SgdConfig{lr, 0.9, 0.0, 0.0, false});
  } else {
    Scores scores;
    const std::string score_loss = criterion == "ce" ? "ce" : t.score_loss;
    if (criterion == "magnitude") {
      scores = score_magnitude(params);
    } else if (!t.scores_path.empty()) {
      scores = load_scores(t.scores_path, params);
    } else {
      const std::string cache = shared_dir + "/scores_" + score_loss + ".safetensors";
      if (fs::exists(cache)) scores = load_scores(cache, params);
      else {
        scores = stage_scores(cli, data, t, score_loss, teacher, *student, params, seed);
        save_scores(cache, params, scores);
      }
    }
    PruneResult pr = prune_above_threshold(params, scores, sparsity);
    opt = sparse_training_setup(*student, params, pr.masks, po, SgdConfig{lr, 0.9, 0.0, 0.0, false});
    prune_info = {{"criterion", criterion}, {"score_loss", score_loss}, {"kept", pr.kept}, {"total", pr.total},
                  {"achieved_sparsity", pr.sparsity}};
    if (!o.quiet)
      std::printf("[prune] %s: kept %lld of %lld conv weights (sparsity %.4f)\n", criterion.c_str(), (long long)pr.kept,
                  (long long)pr.total, pr.sparsity);
    save_checkpoint(out + "/pruned.safetensors", make_checkpoint(*student, nullptr, {}));
  }
  const double pruned_val = evaluate(*student, data.val, data.test_aug, 256, dev).accuracy;

  // Stage 4: retraining with early stopping on the validation split.
  const bool kd = retrain == "kd";
  o.epochs = t.retrain_epochs > 0 ? t.retrain_epochs : (kd ? 50 : 200);
  o.lr = lr;
  const int patience = t.patience > 0 ? t.patience : (sparsity >= 0.97 ? 7 : 5);
  const KlParams kp{t.T, t.alpha, t.beta, parse_logit_norm(t.logit_norm.c_str())};
  struct Early {
    double best = -1;
    int best_epoch = -1, bad = 0;
  } early;
  const std::string best_path = out + "/best.safetensors";
  TrainHooks h;
  h.loss = [&](const Batch& b) {
    Tensor x = images_tensor(b, b.x, dev);
    StepOutput so;
    so.logits = student->forward(x);
    Tensor y = labels_tensor(b.y, dev);
    so.loss = kd ? kd_loss(so.logits, teacher_logits(teacher, x), kp, y) : cross_entropy(so.logits, y);
    return so;
  };
  if (!kd) h.before_step = [&] { clip_grad_norm(opt->params(), 1.0); };
  h.on_epoch_end = [&](int epoch, nlohmann::json& row) {
    const double va = evaluate(*student, data.val, data.test_aug, 256, dev).accuracy;
    row["val_accuracy"] = va;
    row["revived_weights"] = revived_weights(*student, *opt);
    if (va > early.best) {
      early.best = va, early.best_epoch = epoch, early.bad = 0;
      save_checkpoint(best_path, make_checkpoint(*student, nullptr, {epoch + 1, 0, 0}));
    } else {
      ++early.bad;
    }
    return early.bad >= patience;
  };
  h.save_extra = [&](StFile& f) {
    f.tensors["extra.early"] = tensor_to_entry(
        Tensor::from_vector<double>({3}, {early.best, double(early.best_epoch), double(early.bad)}));
  };
  h.load_extra = [&](const StFile& f) {
    auto it = f.tensors.find("extra.early");
    if (it == f.tensors.end()) return;
    auto v = entry_to_tensor(it->second, ckpt).to_vector<double>();
    early.best = v[0], early.best_epoch = int(v[1]), early.bad = int(v[2]);
  };
  AppCli& mcli = const_cast<AppCli&>(cli);
  const CommonOptions saved = mcli.opts();
  mcli.opts() = o;
  Trainer tr(cli, data, *student, *opt, parse_schedule("constant", lr, o.epochs), TrainSetup{"retrain", "", {}, false}, h);
  TrainResult r = tr.run();
  mcli.opts() = saved;
  RunOutcome res;
  if (r.interrupted) {
    res.interrupted = true;
    return res;
  }
  if (t.keep == "best" && fs::exists(best_path)) {
    StFile f = read_safetensors(best_path);
    restore_checkpoint(f, best_path, *student, nullptr, nullptr);
  }
  save_checkpoint(out + "/final.safetensors", make_checkpoint(*student, nullptr, {}));
  res.val_accuracy = evaluate(*student, data.val, data.test_aug, 256, dev).accuracy;
  res.test_accuracy = evaluate(*student, data.test, data.test_aug, 256, dev).accuracy;
  const CostReport c = count_costs(*student, {1, data.channels, data.height, data.width}, pspec);
  res.achieved_sparsity = c.sparsity;
  res.seconds = profiler_now() - t0;
  nlohmann::json s = summary_from_costs(c, res.test_accuracy, res.seconds);
  s["val_accuracy"] = res.val_accuracy;
  s["dense_student_val_accuracy"] = dense_val;
  s["pruned_val_accuracy_before_retraining"] = pruned_val;
  s["best_epoch"] = early.best_epoch;
  s["keep"] = t.keep;
  s["criterion"] = criterion;
  s["retrain"] = retrain;
  s["requested_sparsity"] = sparsity;
  s["seed"] = seed;
  if (!prune_info.is_null()) s["prune"] = prune_info;
  run.write_summary(s);
  return res;
}

void check_options(const TgospOptions& t) {
  SPARROW_CHECK(!t.teacher_checkpoint.empty(), "--teacher-checkpoint is required (train one with sparrow-train)");
  SPARROW_CHECK(fs::exists(t.teacher_checkpoint), "--teacher-checkpoint: no such file '", t.teacher_checkpoint, "'");
  SPARROW_CHECK(t.criterion == "tgosp" || t.criterion == "magnitude" || t.criterion == "ce",
                "--criterion: expected tgosp, magnitude or ce, got '", t.criterion, "'");
  SPARROW_CHECK(t.score_loss == "kd" || t.score_loss == "ce", "--score-loss: expected kd or ce, got '", t.score_loss, "'");
  SPARROW_CHECK(t.retrain == "kd" || t.retrain == "ce", "--retrain: expected kd or ce, got '", t.retrain, "'");
  SPARROW_CHECK(t.keep == "best" || t.keep == "last", "--keep: expected best or last, got '", t.keep, "'");
  parse_logit_norm(t.logit_norm.c_str());
  SPARROW_CHECK(t.alpha >= 0 && t.alpha <= 1 && t.beta >= 0 && t.beta <= 1 && t.kd_alpha >= 0 && t.kd_alpha <= 1,
                "--alpha, --beta and --kd-alpha must be in [0, 1]");
  SPARROW_CHECK(t.T > 0, "-T must be positive");
  SPARROW_CHECK(t.val_fraction > 0 && t.val_fraction < 1, "--val-fraction must be in (0, 1)");
  SPARROW_CHECK(t.score_epochs >= 1 && t.kd_epochs >= 0 && t.retrain_epochs >= 0 && t.patience >= 0,
                "--score-epochs must be >= 1; --kd-epochs, --retrain-epochs, --patience >= 0");
  prune_config(t.prune);
}

}  // namespace

int main(int argc, char** argv) {
  AppCli cli("sparrow-tgosp", "sparrow-tgosp: teacher-guided one-shot pruning with context-aware KD (TGOSP)");
  TgospOptions t;
  t.prune.prune_linear = false;
  t.prune.sparsity = 0.9;
  auto& app = cli.app();
  add_prune_options(app, t.prune);
  app.add_option("--teacher-checkpoint", t.teacher_checkpoint, "teacher checkpoint (from sparrow-train)");
  app.add_option("--student", t.student, "student model (stage 1 starts it from scratch)");
  app.add_option("--student-checkpoint", t.student_checkpoint, "skip stage 1: a trained (dense) student checkpoint");
  app.add_option("--scores", t.scores_path, "skip stage 2: importance scores saved by an earlier run (scores_*.safetensors)");
  app.add_option("--criterion", t.criterion, "tgosp (KD-loss saliency EMA), ce (the same with the CE loss) or magnitude");
  app.add_option("--score-loss", t.score_loss, "loss of the saliency: kd (teacher-guided) or ce");
  app.add_flag("--prune-linear", t.prune.prune_linear, "also prune linear layers (default: conv weights only)");
  app.add_option("--retrain", t.retrain, "kd (CA-KLD + CE, <= 50 epochs) or ce (CE with grad-norm clip 1.0, <= 200 epochs)");
  app.add_option("--keep", t.keep, "best (restore the best-validation weights) or last (the public code's behaviour)");
  app.add_option("--logit-norm", t.logit_norm, "standardisation in KD retraining: none, before-T (paper) or after-T (code)");
  app.add_option("--alpha", t.alpha, "KD weight in scoring and retraining");
  app.add_option("--beta", t.beta, "reverse-KL share of CA-KLD (0: forward KL, 1: reverse)");
  app.add_option("-T,--temperature", t.T, "distillation temperature");
  app.add_option("--kd-alpha", t.kd_alpha, "KD weight of stage 1");
  app.add_option("--kd-epochs", t.kd_epochs, "stage 1 epochs (dense KD of the student)");
  app.add_option("--score-epochs", t.score_epochs, "stage 2 epochs of saliency accumulation");
  app.add_option("--retrain-epochs", t.retrain_epochs, "stage 4 epoch cap (0: 50 with KD, 200 with CE)");
  app.add_option("--retrain-lr", t.retrain_lr, "stage 4 learning rate (constant, momentum 0.9, no weight decay)");
  app.add_option("--patience", t.patience, "early-stopping patience in epochs (0: 5, or 7 at >= 97% sparsity)");
  app.add_option("--val-fraction", t.val_fraction, "share of the training set held out for early stopping (scaled with --limit-train)");
  app.add_flag("--sweep", t.sweep, "run the grid --sweep-methods x --sweep-sparsities x --sweep-seeds");
  app.add_option("--sweep-methods", t.sweep_methods, "criterion+retrain pairs, e.g. tgosp+kd,magnitude+kd,ce+kd");
  app.add_option("--sweep-sparsities", t.sweep_sparsities, "comma-separated sparsities");
  app.add_option("--sweep-seeds", t.sweep_seeds, "comma-separated seeds");
  cli.add_preset("quick", "Fashion-MNIST ResNet-20 student, 12k images, 2 KD epochs, 1 score epoch, <= 3 retrain epochs",
                 [&t](CommonOptions& o) {
                   o.dataset = "fashion-mnist", o.epochs = 2, o.limit_train = 12000, o.batch_size = 128, o.lr = 0.1;
                   o.schedule = "cosine";
                   t.kd_epochs = 2, t.score_epochs = 1, t.retrain_epochs = 3;
                 });
  cli.add_preset("cifar10", "CIFAR-scale public-code setting: teacher ResNet-56 checkpoint, student ResNet-20, 32 px",
                 [&t](CommonOptions& o) {
                   o.dataset = "cifar10", o.batch_size = 128, o.lr = 0.1, o.momentum = 0.9, o.weight_decay = 5e-4;
                   o.schedule = "cosine";
                   t.student = "resnet20", t.kd_epochs = 100, t.score_epochs = 3;
                 });
  if (int rc = cli.parse(argc, argv); rc >= 0) return rc;
  return run_app("sparrow-tgosp", [&] {
    check_options(t);
    install_interrupt_handler();
    const CommonOptions& o = cli.opts();
    DataBundle data = load_data(o, t.val_fraction);
    ModelPtr teacher = load_model_from_checkpoint(t.teacher_checkpoint);
    SPARROW_CHECK(teacher->spec().in_channels == data.channels && teacher->spec().classes == data.classes,
                  t.teacher_checkpoint, ": teacher takes ", teacher->spec().in_channels, " channels / ",
                  teacher->spec().classes, " classes; ", o.dataset, " has ", data.channels, " / ", data.classes);
    teacher->to(o.resolved_device);
    teacher->eval();
    SPARROW_CHECK(!o.out.empty(), "--out is required (stages write their checkpoints into the run folder)");
    if (!o.quiet) {
      const double ta = evaluate(*teacher, data.test, data.test_aug, 256, o.resolved_device).accuracy;
      std::printf("sparrow-tgosp: teacher %s (test accuracy %.4f) -> student %s on %s (%d train / %d val / %d test)\n",
                  teacher->spec().name.c_str(), ta, t.student.c_str(), o.dataset.c_str(), data.train.n, data.val.n,
                  data.test.n);
    }
    if (!t.sweep) {
      RunOutcome r = run_one(cli, data, t, *teacher, t.criterion, t.retrain, t.prune.sparsity, o.seed, o.out, o.out);
      if (r.interrupted) return kExitInterrupted;
      std::printf("test_accuracy %.4f  val_accuracy %.4f  sparsity %.4f  wall %.1fs  run folder %s\n", r.test_accuracy,
                  r.val_accuracy, r.achieved_sparsity, r.seconds, o.out.c_str());
      return 0;
    }
    std::vector<SweepRow> rows;
    RunFolder root(o.out);
    const auto methods = parse_string_list(t.sweep_methods);
    const auto sparsities = parse_double_list(t.sweep_sparsities, "--sweep-sparsities");
    for (const auto& m : methods) {
      const auto plus = m.find('+');
      SPARROW_CHECK(plus != std::string::npos, "--sweep-methods: '", m, "' is not criterion+retrain (e.g. tgosp+kd)");
      TgospOptions chk = t;
      chk.criterion = m.substr(0, plus), chk.retrain = m.substr(plus + 1);
      check_options(chk);
    }
    for (double sd : parse_double_list(t.sweep_seeds, "--sweep-seeds")) {
      const uint64_t seed = uint64_t(sd);
      const std::string shared = o.out + "/seed" + std::to_string(seed);
      for (double s : sparsities)
        for (const auto& m : methods) {
          const auto plus = m.find('+');
          char name[128];
          std::snprintf(name, sizeof name, "%s_s%.4g", m.c_str(), s);
          const std::string dir = shared + "/" + name;
          SweepRow row;
          row.method = m, row.sparsity = s, row.seed = seed;
          if (fs::exists(dir + "/summary.json")) {
            auto sj = read_json(dir + "/summary.json");
            row.test_accuracy = sj["test_accuracy"], row.achieved_sparsity = sj["sparsity"], row.wall_seconds = sj["wall_seconds"];
          } else {
            if (!o.quiet) std::printf("== %s (sparsity %.4g, seed %llu)\n", m.c_str(), s, (unsigned long long)seed);
            bool interrupted = false;
            run_sweep_cell("sparrow-tgosp", row, [&] {
              RunOutcome r =
                  run_one(cli, data, t, *teacher, m.substr(0, plus), m.substr(plus + 1), s, seed, dir, shared);
              interrupted = r.interrupted;
              row.test_accuracy = r.test_accuracy, row.achieved_sparsity = r.achieved_sparsity, row.wall_seconds = r.seconds;
            });
            if (interrupted) return kExitInterrupted;
          }
          rows.push_back(row);
          write_sweep_reports(o.out, rows, "TGOSP: " + t.student + " on " + o.dataset);
        }
    }
    return finish_sweep("sparrow-tgosp", o.out, rows);
  });
}
