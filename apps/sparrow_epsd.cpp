// sparrow-epsd: Early Pruning with Self-Distillation (ALGORITHMS.md §1). Step 1 prunes a randomly
// initialised network once, scoring weights by the meta-gradient of the self-distillation loss through
// a few unrolled SGD steps; step 2 restarts from M ⊙ W0 (initial other parameters, fresh BN statistics)
// and trains the sparse network with the SD method. --criterion swaps in the baselines (random,
// magnitude, SNIP, GraSP, SynFlow, ProsPr) for the "simple combination"; --sweep runs a grid.
#include <filesystem>

#include "apps/common/epsd_loss.h"
#include "apps/common/pruning.h"
#include "apps/common/report.h"
#include "apps/common/summary.h"
#include "engine/base/nvtx.h"

using namespace sparrow;

namespace {

struct EpsdOptions {
  PruneOptions prune;
  std::string criterion = "epsd";
  std::string meta_grad = "full";
  int epsd_steps = 3;
  double epsd_inner_lr = 0.1;
  std::string epsd_loss = "sd-total";
  double hvp_eps = 0.01;
  std::string sd = "dlb";
  std::string score_loss = "ce";  // loss SNIP / GraSP differentiate: ce (the baselines) or sd
  int prune_batches = 1;
  int prune_batch_size = 128;
  int synflow_rounds = 100;
  bool sweep = false;
  std::string sweep_methods = "epsd+dlb,snip+dlb,random+dlb,epsd+none,dense+dlb";
  std::string sweep_sparsities = "0.9,0.95,0.98";
  std::string sweep_seeds = "0,1,2";
};

// One run: (criterion, sd, sparsity, seed) -> a run folder and its test accuracy.
struct RunOutcome {
  double test_accuracy = 0, achieved_sparsity = 0, seconds = 0;
  bool interrupted = false;
};

RunOutcome run_one(const AppCli& cli, const DataBundle& data, const EpsdOptions& e, const std::string& criterion,
                   const std::string& sd_name, double sparsity, uint64_t seed, const std::string& out) {
  CommonOptions o = const_cast<AppCli&>(cli).opts();
  o.seed = seed;
  o.out = out;
  const Device dev = o.resolved_device;
  const double t0 = profiler_now();
  std::unique_ptr<RunFolder> run;
  if (!out.empty()) {
    run = std::make_unique<RunFolder>(out);
    nlohmann::json cfg = cli.config_json();
    cfg["run"] = {{"criterion", criterion}, {"sd", sd_name}, {"sparsity", sparsity}, {"seed", seed}};
    if (!o.resume) run->write_config(cfg);
  }
  ModelPtr model = make_model(model_spec_from(o, data), seed);
  model->to(dev);
  PruneOptions po = e.prune;
  po.sparsity = sparsity;
  const PrunableSpec pspec = prunable_spec(po);
  std::vector<PrunableParam> params = prunable_params(*model, pspec);
  const std::string ckpt = out.empty() ? std::string() : out + "/train.safetensors";
  const bool resuming = o.resume && !ckpt.empty() && std::filesystem::exists(ckpt);
  const SgdConfig sgd{o.lr, o.momentum, 0.0, o.weight_decay, o.nesterov};
  std::unique_ptr<Sgd> opt;
  nlohmann::json prune_info;
  if (resuming) {
    prepare_from_checkpoint(*model, ckpt, po.sparse_kernels);
    opt = std::make_unique<Sgd>(model->parameters(), sgd);
  } else if (criterion == "dense" || sparsity == 0) {
    opt = std::make_unique<Sgd>(model->parameters(), sgd);
  } else {
    SPARROW_NVTX_RANGE("epsd_step1_prune");
    ModelSnapshot init(*model);  // W0, P0 and the initial BN statistics
    // Pruning batches: a separate seeded stream over the training set (two views and pairs included so
    // every SD loss finds what it needs).
    // A pruning batch larger than the training set is the whole set (drop_last is decided for this batch
    // size: decided for --batch-size, it once left an epoch of no batches and the loop below spun forever).
    LoaderConfig lc = train_loader_config(data, o, BatchSpec{true, true}, e.prune_batch_size);
    lc.seed = seed + 1000;
    lc.background = false;
    DataLoader loader(data.train, lc);
    SPARROW_CHECK(loader.batches_per_epoch() > 0, "--prune-batch-size ", lc.batch_size, ": the training set (",
                  data.train.n, " images) gives no pruning batch");
    const int needed = criterion == "epsd" || criterion == "prospr" ? e.epsd_steps + 1 : std::max(1, e.prune_batches);
    std::vector<Batch> batches;
    for (int epoch = 0; int(batches.size()) < needed; ++epoch) {
      loader.start_epoch(epoch);
      Batch b;
      while (int(batches.size()) < needed && loader.next(b)) batches.push_back(b);
    }
    model->train();
    const PruneConfig pc = prune_config(po);
    auto ce_loss = [&](int k) {
      const Batch& b = batches[size_t(k)];
      return cross_entropy(model->forward(images_tensor(b, b.x, dev)), labels_tensor(b.y, dev));
    };
    SdLossClosure sd_loss(*model, batches, sd_name, e.epsd_loss == "sd-kl-only", dev);
    LossFn score_fn = e.score_loss == "sd" ? LossFn(std::ref(sd_loss)) : LossFn(ce_loss);
    const double tp = profiler_now();
    PruneResult pr;
    if (criterion == "synflow") {
      pr = synflow_prune(*model, params, {1, data.channels, data.height, data.width}, e.synflow_rounds, pc);
    } else {
      Scores scores;
      if (criterion == "random") scores = score_random(params, seed);
      else if (criterion == "magnitude") scores = score_magnitude(params);
      else if (criterion == "snip") scores = score_snip(*model, params, score_fn, e.prune_batches);
      else if (criterion == "grasp") {
        auto grasp_fn = [&](int k) {
          const Batch& b = batches[size_t(k)];
          Tensor z = scale(model->forward(images_tensor(b, b.x, dev)), 1.0 / kGraspTemperature);
          return cross_entropy(z, labels_tensor(b.y, dev));
        };
        scores = grasp(*model, params, grasp_fn, e.prune_batches, e.hvp_eps).scores;
      } else {
        MetaGradConfig mc{e.epsd_steps, e.epsd_inner_lr, parse_meta_grad(e.meta_grad), e.hvp_eps};
        scores = criterion == "prospr" ? score_meta(*model, params, ce_loss, mc)
                                       : score_meta(*model, params, std::ref(sd_loss), mc);
      }
      pr = prune(params, scores, pc);
    }
    init.restore();  // step 2 restarts from W0 and P0 with fresh BN statistics
    opt = sparse_training_setup(*model, params, pr.masks, po, sgd);
    if (run) save_checkpoint(out + "/pruned.safetensors", make_checkpoint(*model, nullptr, {}));
    prune_info = {{"criterion", criterion}, {"seconds", profiler_now() - tp}, {"kept", pr.kept}, {"total", pr.total},
                  {"achieved_sparsity", pr.sparsity}};
    nlohmann::json layers = nlohmann::json::array();
    for (auto& l : pr.layers)
      layers.push_back({{"name", l.name}, {"total", l.total}, {"kept", l.kept},
                        {"sparsity", l.total ? 1.0 - double(l.kept) / double(l.total) : 0.0}});
    prune_info["layers"] = layers;
    if (!o.quiet)
      std::printf("[prune] %s: kept %lld of %lld prunable weights (sparsity %.4f) in %.1fs\n", criterion.c_str(),
                  (long long)pr.kept, (long long)pr.total, pr.sparsity, profiler_now() - tp);
    if (run) run->append_metrics({{"phase", "prune"}, {"epoch", -1}, {"criterion", criterion},
                                  {"achieved_sparsity", pr.sparsity}, {"seconds", profiler_now() - tp}});
  }
  std::unique_ptr<SdMethod> sd = make_sd_method(sd_name);
  if (auto* ps = dynamic_cast<PsKd*>(sd.get())) ps->init_table(data.train.labels, data.classes);
  LrSchedule sched = parse_schedule(o.schedule, o.lr, o.epochs);
  AppCli& mcli = const_cast<AppCli&>(cli);
  const CommonOptions saved = mcli.opts();
  mcli.opts() = o;  // the Trainer reads the run's seed and folder from the options
  Trainer trainer(cli, data, *model, *opt, sched, TrainSetup{"train", "", sd_batch_spec(*sd), true},
                  sd_train_hooks(*sd, *model, dev, o.epochs));
  TrainResult r = trainer.run();
  mcli.opts() = saved;
  RunOutcome res;
  res.interrupted = r.interrupted;
  if (r.interrupted) return res;
  if (r.epochs_run == 0) r.test_accuracy = evaluate(*model, data.test, data.test_aug, 256, dev).accuracy;
  const CostReport c = count_costs(*model, {1, data.channels, data.height, data.width}, pspec);
  res.test_accuracy = r.test_accuracy;
  res.achieved_sparsity = c.sparsity;
  res.seconds = profiler_now() - t0;
  if (run) {
    nlohmann::json s = summary_from_costs(c, r.test_accuracy, res.seconds);
    s["criterion"] = criterion;
    s["sd"] = sd_name;
    s["requested_sparsity"] = sparsity;
    s["seed"] = seed;
    if (!prune_info.is_null()) s["prune"] = prune_info;
    else if (run && std::filesystem::exists(out + "/summary.json")) s["prune"] = run->read_summary().value("prune", nlohmann::json());
    run->write_summary(s);
  }
  return res;
}

void check_options(const EpsdOptions& e) {
  static const std::vector<std::string> criteria{"epsd", "random", "magnitude", "snip", "grasp", "synflow", "prospr", "dense"};
  SPARROW_CHECK(std::find(criteria.begin(), criteria.end(), e.criterion) != criteria.end(), "--criterion: unknown '",
                e.criterion, "' (expected epsd, random, magnitude, snip, grasp, synflow, prospr or dense)");
  parse_meta_grad(e.meta_grad);
  make_sd_method(e.sd);
  SPARROW_CHECK(e.epsd_loss == "sd-total" || e.epsd_loss == "sd-kl-only", "--epsd-loss: expected sd-total or sd-kl-only, got '",
                e.epsd_loss, "'");
  SPARROW_CHECK(e.score_loss == "ce" || e.score_loss == "sd", "--score-loss: expected ce or sd, got '", e.score_loss, "'");
  SPARROW_CHECK(e.epsd_steps >= 0, "--epsd-steps must be >= 0");
  SPARROW_CHECK(e.hvp_eps > 0, "--hvp-eps must be positive");
  SPARROW_CHECK(e.prune_batches >= 1 && e.prune_batch_size >= 1, "--prune-batches and --prune-batch-size must be >= 1");
  SPARROW_CHECK(e.synflow_rounds >= 1, "--synflow-rounds must be >= 1");
  prune_config(e.prune);
}

}  // namespace

int main(int argc, char** argv) {
  AppCli cli("sparrow-epsd", "sparrow-epsd: early pruning with self-distillation (EPSD) and its baselines");
  EpsdOptions e;
  auto& app = cli.app();
  add_prune_options(app, e.prune);
  app.add_option("--criterion", e.criterion, "epsd, random, magnitude, snip, grasp, synflow, prospr, or dense (no pruning)");
  app.add_option("--meta-grad", e.meta_grad, "full (reverse accumulation, finite-difference HVPs) or first-order");
  app.add_option("--epsd-steps", e.epsd_steps, "unrolled SGD steps i in step 1 (0: SNIP on the SD loss)");
  app.add_option("--epsd-inner-lr", e.epsd_inner_lr, "inner learning rate η of step 1");
  app.add_option("--epsd-loss", e.epsd_loss, "sd-total (SD loss with its CE term) or sd-kl-only");
  app.add_option("--hvp-eps", e.hvp_eps, "relative finite-difference step of the Hessian-vector products");
  app.add_option("--sd", e.sd, "self-distillation for step 2 (and EPSD's score): dlb, cskd, pskd or none");
  app.add_option("--score-loss", e.score_loss, "loss SNIP/GraSP differentiate: ce (the baselines) or sd");
  app.add_option("--prune-batches", e.prune_batches, "batches SNIP/GraSP sum over");
  app.add_option("--prune-batch-size", e.prune_batch_size, "batch size of the pruning step");
  app.add_option("--synflow-rounds", e.synflow_rounds, "SynFlow iterations");
  app.add_flag("--sweep", e.sweep, "run the grid --sweep-methods x --sweep-sparsities x --sweep-seeds");
  app.add_option("--sweep-methods", e.sweep_methods, "criterion+sd pairs, e.g. epsd+dlb,snip+dlb,dense+dlb");
  app.add_option("--sweep-sparsities", e.sweep_sparsities, "comma-separated sparsities");
  app.add_option("--sweep-seeds", e.sweep_seeds, "comma-separated seeds");
  cli.add_preset("quick", "Fashion-MNIST ResNet-8, 2 epochs on 12k images (minutes on 2 cores)", [](CommonOptions& o) {
    o.dataset = "fashion-mnist", o.model = "resnet8", o.epochs = 2, o.limit_train = 12000, o.batch_size = 64;
    o.lr = 0.05, o.nesterov = true, o.schedule = "cosine", o.augment = "none";
  });
  cli.add_preset("cifar10", "paper setting: CIFAR-10 ResNet-56, SGD Nesterov 0.9, lr 0.1, wd 5e-4, batch 128, 200 epochs, x0.1 at 100/150",
                 [](CommonOptions& o) {
                   o.dataset = "cifar10", o.model = "resnet56", o.epochs = 200, o.batch_size = 128, o.lr = 0.1;
                   o.momentum = 0.9, o.weight_decay = 5e-4, o.nesterov = true, o.schedule = "multistep:100,150";
                 });
  cli.add_preset("cifar100", "as cifar10 on CIFAR-100", [](CommonOptions& o) {
    o.dataset = "cifar100", o.model = "resnet56", o.epochs = 200, o.batch_size = 128, o.lr = 0.1;
    o.momentum = 0.9, o.weight_decay = 5e-4, o.nesterov = true, o.schedule = "multistep:100,150";
  });
  cli.add_preset("cifar10-dlb", "DLB's protocol: batch 64, lr 0.05, 240 epochs, x0.1 at 150/180/210", [](CommonOptions& o) {
    o.dataset = "cifar10", o.model = "resnet56", o.epochs = 240, o.batch_size = 64, o.lr = 0.05;
    o.momentum = 0.9, o.weight_decay = 5e-4, o.nesterov = true, o.schedule = "multistep:150,180,210";
  });
  cli.add_preset("cifar100-dlb", "DLB's protocol on CIFAR-100", [](CommonOptions& o) {
    o.dataset = "cifar100", o.model = "resnet56", o.epochs = 240, o.batch_size = 64, o.lr = 0.05;
    o.momentum = 0.9, o.weight_decay = 5e-4, o.nesterov = true, o.schedule = "multistep:150,180,210";
  });
  cli.add_preset("tiny-imagenet", "Tiny-ImageNet ResNet-18 (64 px), SGD Nesterov 0.1, 200 epochs, x0.1 at 100/150",
                 [](CommonOptions& o) {
                   o.dataset = "tiny-imagenet", o.model = "resnet18", o.epochs = 200, o.batch_size = 128, o.lr = 0.1;
                   o.momentum = 0.9, o.weight_decay = 5e-4, o.nesterov = true, o.schedule = "multistep:100,150";
                 });
  if (int rc = cli.parse(argc, argv); rc >= 0) return rc;
  return run_app("sparrow-epsd", [&] {
    check_options(e);
    install_interrupt_handler();
    const CommonOptions& o = cli.opts();
    DataBundle data = load_data(o);
    if (!o.quiet)
      std::printf("sparrow-epsd: %s on %s (%d train / %d test images), %d epochs, %s\n", o.model.c_str(),
                  o.dataset.c_str(), data.train.n, data.test.n, o.epochs, device_name(o.resolved_device));
    if (!e.sweep) {
      RunOutcome r = run_one(cli, data, e, e.criterion, e.sd, e.prune.sparsity, o.seed, o.out);
      if (r.interrupted) return kExitInterrupted;
      std::printf("test_accuracy %.4f  sparsity %.4f  wall %.1fs%s%s\n", r.test_accuracy, r.achieved_sparsity, r.seconds,
                  o.out.empty() ? "" : "  run folder ", o.out.c_str());
      return 0;
    }
    SPARROW_CHECK(!o.out.empty(), "--sweep needs --out (the grid writes one run folder per configuration)");
    const auto methods = parse_string_list(e.sweep_methods);
    const auto sparsities = parse_double_list(e.sweep_sparsities, "--sweep-sparsities");
    std::vector<uint64_t> seeds;
    for (double s : parse_double_list(e.sweep_seeds, "--sweep-seeds")) seeds.push_back(uint64_t(s));
    for (const auto& m : methods) {
      const auto plus = m.find('+');
      SPARROW_CHECK(plus != std::string::npos, "--sweep-methods: '", m, "' is not criterion+sd (e.g. epsd+dlb)");
      EpsdOptions chk = e;
      chk.criterion = m.substr(0, plus), chk.sd = m.substr(plus + 1);
      check_options(chk);
    }
    std::vector<SweepRow> rows;
    RunFolder root(o.out);
    for (double s : sparsities)
      for (const auto& m : methods)
        for (uint64_t seed : seeds) {
          const auto plus = m.find('+');
          const std::string crit = m.substr(0, plus), sdm = m.substr(plus + 1);
          char name[128];
          // The dense baseline does not depend on the sparsity: one run per seed, shown in every column.
          if (crit == "dense") std::snprintf(name, sizeof name, "%s_seed%llu", m.c_str(), (unsigned long long)seed);
          else std::snprintf(name, sizeof name, "%s_s%.4g_seed%llu", m.c_str(), s, (unsigned long long)seed);
          const std::string dir = o.out + "/" + name;
          SweepRow row;
          row.method = m, row.sparsity = crit == "dense" ? 0.0 : s, row.seed = seed;
          if (std::filesystem::exists(dir + "/summary.json")) {  // finished earlier: reuse (resumable sweeps)
            auto sj = read_json(dir + "/summary.json");
            row.test_accuracy = sj["test_accuracy"], row.achieved_sparsity = sj["sparsity"];
            row.wall_seconds = sj["wall_seconds"];
            row.sparsity = s;
          } else {
            if (!o.quiet) std::printf("== %s (sparsity %.4g, seed %llu)\n", m.c_str(), s, (unsigned long long)seed);
            row.sparsity = s;
            bool interrupted = false;
            run_sweep_cell("sparrow-epsd", row, [&] {
              RunOutcome r = run_one(cli, data, e, crit, sdm, crit == "dense" ? 0.0 : s, seed, dir);
              interrupted = r.interrupted;
              row.test_accuracy = r.test_accuracy, row.achieved_sparsity = r.achieved_sparsity, row.wall_seconds = r.seconds;
            });
            if (interrupted) return kExitInterrupted;
          }
          rows.push_back(row);
          write_sweep_reports(o.out, rows, "EPSD: " + o.model + " on " + o.dataset);
        }
    return finish_sweep("sparrow-epsd", o.out, rows);
  });
}
