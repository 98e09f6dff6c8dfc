// sparrow-pdd: Pruning During Distillation with differentiable channel gates (ALGORITHMS.md §3).
// Search: gates in the student at PDD's placements, KD from a frozen teacher (0.6·CE + 0.4·KD, T=3),
// weight decay on gates too, gates of the best epoch kept. Surgery: the narrower model of the same
// architecture with the kept channels' weights. Fine-tune: CE. Reports kept channels, MACs and params
// before/after and the accuracy change against the unpruned student trained the same way.
#include <filesystem>

#include "apps/common/pruning.h"
#include "apps/common/summary.h"
#include "compress/gates.h"
#include "compress/surgery.h"
#include "engine/base/nvtx.h"

using namespace sparrow;
namespace fs = std::filesystem;

namespace {

struct PddOptions {
  std::string teacher_checkpoint;
  std::string student = "resnet20";
  std::string pdd_kd = "hinton";
  std::string select_on = "val";
  bool inherit_bn = false;
  int search_epochs = 50, finetune_epochs = 150;
  std::string search_schedule = "multistep:20,40", finetune_schedule = "multistep:50,100";
  double search_lr = 0.01, finetune_lr = 0.01, wd = 5e-3;
  double T = 3.0, ce_weight = 0.6, kd_weight = 0.4;
  double val_fraction = 0.1;
  bool baseline = true;
};

// The search-phase loss. hinton: 0.6·CE + 0.4·T²·KL(p_t‖p_s) (batchmean). The public code's term is
// kl_div(log_softmax(s/T), log_softmax(t/T)) — log-probabilities passed as the target — which old PyTorch
// evaluates as identically zero (entries with target ≤ 0 are dropped: no gradient either, "zero") and newer
// PyTorch as NaN through xlogy, while its gradient w.r.t. the input stays −target/(B·C)
// ("torch-xlogy": sparrow applies that gradient, ×T² and the 0.4 weight, and reports the finite value
// Σ −target·input/(B·C) in place of PyTorch's NaN).
Tensor pdd_loss(const PddOptions& p, const Tensor& zs, const Tensor& zt, const Tensor& y) {
  Tensor ce = scale(cross_entropy(zs, y), p.ce_weight);
  if (p.pdd_kd == "zero") return ce;
  if (p.pdd_kd == "hinton") {
    Tensor kl = kd_loss(zs, zt, {p.T, 1.0, 0.0, LogitNorm::none});  // T²·KL(p_t ‖ p_s)
    return add(ce, scale(kl, p.kd_weight));
  }
  Tensor target;
  {
    NoGradGuard ng;
    target = scale(log_softmax(scale(zt, 1.0 / p.T)), -1.0 / double(zs.numel()));
  }
  Tensor term = sum(mul(log_softmax(scale(zs, 1.0 / p.T)), target));
  return add(ce, scale(term, p.kd_weight * p.T * p.T));
}

Tensor teacher_logits(Model& teacher, const Tensor& x) {
  NoGradGuard ng;
  return teacher.forward(x);
}

struct PhaseResult {
  double test_accuracy = 0;
  bool interrupted = false;
};

// Trains `model` (gated or not) with the search loss, then returns; used for the gated search and for the
// ungated baseline's first phase.
PhaseResult run_phase(AppCli& cli, const DataBundle& data, Model& model, Sgd& opt, const std::string& phase,
                      const std::string& out, int epochs, double lr, const std::string& schedule, TrainHooks hooks) {
  const CommonOptions saved = cli.opts();
  CommonOptions o = saved;
  o.out = out;
  o.epochs = epochs;
  o.lr = lr;
  cli.opts() = o;
  opt.set_lr(lr);
  Trainer tr(cli, data, model, opt, parse_schedule(schedule, lr, epochs), TrainSetup{"train", phase, {}, true}, hooks);
  TrainResult r = tr.run();
  cli.opts() = saved;
  return {r.test_accuracy, r.interrupted};
}

void check_options(const PddOptions& p) {
  SPARROW_CHECK(!p.teacher_checkpoint.empty(), "--teacher-checkpoint is required (train one with sparrow-train)");
  SPARROW_CHECK(fs::exists(p.teacher_checkpoint), "--teacher-checkpoint: no such file '", p.teacher_checkpoint, "'");
  SPARROW_CHECK(p.student == "resnet20" || p.student == "resnet20-pdd" || p.student.rfind("vgg", 0) == 0 ||
                    p.student.rfind("resnet", 0) == 0,
                "--student: expected resnet20, resnet20-pdd, a CIFAR ResNet or a VGG, got '", p.student, "'");
  SPARROW_CHECK(p.student != "resnet18", "--student resnet18: PDD's gates and surgery support the option-A CIFAR ResNets and VGG");
  SPARROW_CHECK(p.pdd_kd == "hinton" || p.pdd_kd == "zero" || p.pdd_kd == "torch-xlogy",
                "--pdd-kd: expected hinton, zero or torch-xlogy, got '", p.pdd_kd, "'");
  SPARROW_CHECK(p.select_on == "val" || p.select_on == "test", "--select-on: expected val or test, got '", p.select_on, "'");
  SPARROW_CHECK(p.search_epochs >= 1 && p.finetune_epochs >= 0, "--search-epochs must be >= 1, --finetune-epochs >= 0");
  SPARROW_CHECK(p.T > 0 && p.val_fraction >= 0 && p.val_fraction < 1, "-T must be positive, --val-fraction in [0, 1)");
  SPARROW_CHECK(p.select_on == "test" || p.val_fraction > 0, "--select-on val needs --val-fraction > 0");
}

}  // namespace

int main(int argc, char** argv) {
  AppCli cli("sparrow-pdd", "sparrow-pdd: pruning during distillation with differentiable channel gates (PDD)");
  PddOptions p;
  auto& app = cli.app();
  app.add_option("--teacher-checkpoint", p.teacher_checkpoint, "teacher checkpoint (from sparrow-train)");
  app.add_option("--student", p.student, "resnet20, resnet20-pdd (the public code's variant) or vgg11 (PDD classifier)");
  app.add_option("--pdd-kd", p.pdd_kd, "hinton (proper KD), zero or torch-xlogy (the public code's behaviours)");
  app.add_option("--select-on", p.select_on, "choose the gates of the best epoch on: val (held-out split) or test (the code)");
  app.add_flag("--inherit-bn", p.inherit_bn, "surgery copies BN, conv biases and the classifier (default: re-initialise)");
  app.add_option("--search-epochs", p.search_epochs, "search phase epochs");
  app.add_option("--search-schedule", p.search_schedule, "search phase LR schedule");
  app.add_option("--search-lr", p.search_lr, "search phase learning rate");
  app.add_option("--finetune-epochs", p.finetune_epochs, "fine-tune epochs of the narrowed model");
  app.add_option("--finetune-schedule", p.finetune_schedule, "fine-tune LR schedule");
  app.add_option("--finetune-lr", p.finetune_lr, "fine-tune learning rate");
  app.add_option("--pdd-wd", p.wd, "weight decay of both phases (gates included)");
  app.add_option("-T,--temperature", p.T, "KD temperature of the search phase");
  app.add_option("--val-fraction", p.val_fraction, "share of the training set held out to select the gates (scaled with --limit-train)");
  app.add_flag("!--no-baseline", p.baseline, "skip training the unpruned student the same way (the accuracy reference)");
  cli.add_preset("quick", "Fashion-MNIST, 12k images, batch 128: 3 search + 3 fine-tune epochs", [&p](CommonOptions& o) {
    o.dataset = "fashion-mnist", o.limit_train = 12000, o.batch_size = 128;
    p.search_epochs = 3, p.finetune_epochs = 3, p.search_schedule = "cosine", p.finetune_schedule = "cosine";
    p.search_lr = 0.05, p.finetune_lr = 0.05;
  });
  cli.add_preset("cifar10", "the paper's CIFAR-10 setting: batch 256, search 50 epochs (x0.1 at 20/40), fine-tune 150 (x0.1 at 50/100)",
                 [&p](CommonOptions& o) {
                   o.dataset = "cifar10", o.batch_size = 256;
                   p.search_epochs = 50, p.finetune_epochs = 150;
                   p.search_schedule = "multistep:20,40", p.finetune_schedule = "multistep:50,100";
                   p.search_lr = 0.01, p.finetune_lr = 0.01, p.wd = 5e-3, p.T = 3;
                 });
  cli.opts().batch_size = 256;
  if (int rc = cli.parse(argc, argv); rc >= 0) return rc;
  return run_app("sparrow-pdd", [&] {
    check_options(p);
    install_interrupt_handler();
    const CommonOptions& o = cli.opts();
    SPARROW_CHECK(!o.out.empty(), "--out is required (each phase writes its run folder under it)");
    const Device dev = o.resolved_device;
    const double t0 = profiler_now();
    DataBundle data = load_data(o, p.select_on == "val" ? p.val_fraction : 0.0);
    ModelPtr teacher = load_model_from_checkpoint(p.teacher_checkpoint);
    SPARROW_CHECK(teacher->spec().in_channels == data.channels && teacher->spec().classes == data.classes,
                  p.teacher_checkpoint, ": teacher takes ", teacher->spec().in_channels, " channels / ",
                  teacher->spec().classes, " classes; ", o.dataset, " has ", data.channels, " / ", data.classes);
    teacher->to(dev);
    teacher->eval();
    RunFolder run(o.out);
    if (!o.resume) run.write_config(cli.config_json());
    const double teacher_acc = evaluate(*teacher, data.test, data.test_aug, 256, dev).accuracy;
    ModelSpec sspec{p.student, data.classes, data.channels, {}, p.student.rfind("vgg", 0) == 0 ? "pdd" : ""};
    const Shape probe{1, data.channels, data.height, data.width};
    if (!o.quiet)
      std::printf("sparrow-pdd: teacher %s (test accuracy %.4f) -> student %s on %s (%d train / %d val / %d test)\n",
                  teacher->spec().name.c_str(), teacher_acc, p.student.c_str(), o.dataset.c_str(), data.train.n,
                  data.val.n, data.test.n);

    // ---- search phase: gated student distilled from the teacher
    ModelPtr student = make_model(sspec, o.seed);
    student->to(dev);
    const CostReport before = count_costs(*student, probe);
    GatedModel gated = insert_gates(student, o.seed + 1);
    std::vector<Tensor> params = student->parameters();
    for (auto& g : gated.gate_parameters()) params.push_back(g);
    Sgd opt(params, {p.search_lr, 0.9, 0.0, p.wd, false});
    const ImageSet& select_set = p.select_on == "val" ? data.val : data.test;
    double best = -1;
    int best_epoch = -1;
    StateDict best_gates;
    const std::string best_path = o.out + "/best_gates.safetensors";
    TrainHooks h;
    h.loss = [&](const Batch& b) {
      Tensor x = images_tensor(b, b.x, dev);
      StepOutput so;
      so.logits = gated.forward(x);
      so.loss = pdd_loss(p, so.logits, teacher_logits(*teacher, x), labels_tensor(b.y, dev));
      return so;
    };
    h.on_epoch_end = [&](int epoch, nlohmann::json& row) {
      const double acc = evaluate(*student, select_set, data.test_aug, 256, dev).accuracy;
      row[p.select_on == "val" ? "val_accuracy" : "select_accuracy"] = acc;
      std::vector<int64_t> kept;
      for (auto& k : kept_channels(gated)) kept.push_back(int64_t(k.size()));
      row["kept_channels"] = kept;
      if (acc > best) {
        best = acc, best_epoch = epoch, best_gates.clear();
        for (auto& [n, t] : gated.gate_state_dict()) best_gates[n] = t.clone();
        StFile f;
        for (auto& [n, t] : best_gates) f.tensors[n] = tensor_to_entry(t);
        f.metadata["epoch"] = std::to_string(epoch);
        f.metadata["accuracy"] = str(acc);
        write_safetensors(best_path, f);
      }
      return false;
    };
    h.save_extra = [&](StFile& f) {
      for (auto& [n, t] : gated.gate_state_dict()) f.tensors["extra.gate." + n] = tensor_to_entry(t);
    };
    h.load_extra = [&](const StFile& f) {
      StateDict sd;
      for (auto& [n, e] : f.tensors)
        if (n.rfind("extra.gate.", 0) == 0) sd[n.substr(11)] = entry_to_tensor(e, n).to(dev);
      if (!sd.empty()) gated.load_gate_state_dict(sd);
      if (fs::exists(best_path)) {
        StFile b = read_safetensors(best_path);
        best_gates.clear();
        for (auto& [n, e] : b.tensors) best_gates[n] = entry_to_tensor(e, best_path);
        best = std::stod(b.metadata.at("accuracy"));
        best_epoch = std::stoi(b.metadata.at("epoch"));
      }
    };
    {
      SPARROW_NVTX_RANGE("pdd_search");
      PhaseResult r = run_phase(cli, data, *student, opt, "search", o.out + "/search", p.search_epochs, p.search_lr,
                                p.search_schedule, h);
      if (r.interrupted) return kExitInterrupted;
    }
    SPARROW_CHECK(!best_gates.empty(), "the search phase selected no gates");
    gated.load_gate_state_dict(best_gates);
    const auto keep = kept_channels(gated);
    const std::vector<std::string> gate_names = gated.names;  // remove_gates() below clears gated.names
    // ---- surgery and fine-tune (a plain sparrow-train run folder: --resume works on it)
    ModelPtr narrow;
    {
      SPARROW_NVTX_RANGE("pdd_surgery");
      student->to(Device::CPU);
      narrow = narrow_from_gates(gated, {p.inherit_bn, o.seed + 2});
    }
    remove_gates(gated);
    const CostReport after = count_costs(*narrow, probe);
    if (!o.quiet) {
      std::printf("[surgery] gates of epoch %d (%s accuracy %.4f): widths [%s] -> [%s]\n", best_epoch + 1,
                  p.select_on.c_str(), best, widths_to_string(student->spec().widths).c_str(),
                  widths_to_string(narrow->spec().widths).c_str());
      std::printf("[surgery] MACs %.2fM -> %.2fM (%.2f%%), params %.4fM -> %.4fM (%.2f%%)\n", before.macs / 1e6,
                  after.macs / 1e6, 100.0 * (after.macs - before.macs) / before.macs, before.params / 1e6,
                  after.params / 1e6, 100.0 * (after.params - before.params) / before.params);
    }
    narrow->to(dev);
    Sgd fopt(narrow->parameters(), {p.finetune_lr, 0.9, 0.0, p.wd, false});
    PhaseResult fr{0, false};
    {
      SPARROW_NVTX_RANGE("pdd_finetune");
      const std::string fdir = o.out + "/finetune";
      if (o.resume && fs::exists(fdir + "/train.safetensors")) {
        ModelPtr resumed = make_model(checkpoint_model_spec(read_safetensors(fdir + "/train.safetensors"), fdir), 0);
        SPARROW_CHECK(resumed->spec().widths == narrow->spec().widths, fdir, ": the fine-tune checkpoint has widths [",
                      widths_to_string(resumed->spec().widths), "], the search selected [",
                      widths_to_string(narrow->spec().widths), "]");
      }
      fr = p.finetune_epochs > 0 ? run_phase(cli, data, *narrow, fopt, "finetune", fdir, p.finetune_epochs, p.finetune_lr,
                                             p.finetune_schedule, TrainHooks{})
                                 : PhaseResult{evaluate(*narrow, data.test, data.test_aug, 256, dev).accuracy, false};
      if (fr.interrupted) return kExitInterrupted;
      save_checkpoint(o.out + "/final.safetensors", make_checkpoint(*narrow, nullptr, {}, {{"pruned_by", "sparrow-pdd"}}));
    }
    // ---- the unpruned student trained the same way (search loss, then fine-tune), the accuracy reference
    double baseline_acc = -1;
    if (p.baseline) {
      SPARROW_NVTX_RANGE("pdd_baseline");
      ModelPtr base = make_model(sspec, o.seed);
      base->to(dev);
      Sgd bopt(base->parameters(), {p.search_lr, 0.9, 0.0, p.wd, false});
      TrainHooks bh;
      bh.loss = [&](const Batch& b) {
        Tensor x = images_tensor(b, b.x, dev);
        StepOutput so;
        so.logits = base->forward(x);
        so.loss = pdd_loss(p, so.logits, teacher_logits(*teacher, x), labels_tensor(b.y, dev));
        return so;
      };
      PhaseResult r1 = run_phase(cli, data, *base, bopt, "baseline-search", o.out + "/baseline_search", p.search_epochs,
                                 p.search_lr, p.search_schedule, bh);
      if (r1.interrupted) return kExitInterrupted;
      Sgd bfopt(base->parameters(), {p.finetune_lr, 0.9, 0.0, p.wd, false});
      PhaseResult r2 = p.finetune_epochs > 0
                           ? run_phase(cli, data, *base, bfopt, "baseline-finetune", o.out + "/baseline_finetune", p.finetune_epochs,
                                       p.finetune_lr, p.finetune_schedule, TrainHooks{})
                           : r1;
      if (r2.interrupted) return kExitInterrupted;
      baseline_acc = r2.test_accuracy;
    }
    nlohmann::json s = summary_from_costs(after, fr.test_accuracy, profiler_now() - t0);
    std::vector<nlohmann::json> gates;
    for (size_t i = 0; i < keep.size(); ++i)
      gates.push_back({{"gate", gate_names[i]}, {"kept", keep[i].size()}, {"channels", keep[i]}});
    s["gates"] = gates;
    s["best_search_epoch"] = best_epoch;
    s["teacher_test_accuracy"] = teacher_acc;
    s["widths_before"] = student->spec().widths;
    s["widths_after"] = narrow->spec().widths;
    s["macs_before"] = before.macs;
    s["params_before"] = before.params;
    s["macs_reduction"] = 1.0 - double(after.macs) / double(before.macs);
    s["params_reduction"] = 1.0 - double(after.params) / double(before.params);
    if (baseline_acc >= 0) {
      s["unpruned_student_test_accuracy"] = baseline_acc;
      s["accuracy_change"] = fr.test_accuracy - baseline_acc;
    }
    run.write_summary(s);
    std::printf("test_accuracy %.4f", fr.test_accuracy);
    if (baseline_acc >= 0) std::printf(" (unpruned student %.4f, change %+.4f)", baseline_acc, fr.test_accuracy - baseline_acc);
    std::printf("  MACs -%.2f%%  params -%.2f%%  wall %.1fs  run folder %s\n", 100 * s["macs_reduction"].get<double>(),
                100 * s["params_reduction"].get<double>(), profiler_now() - t0, o.out.c_str());
    return 0;
  });
}
