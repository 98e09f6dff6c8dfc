// sparrow-train: dense training of any registered model on any dataset — the teacher and baseline
// trainer. Run folder: config.json, metrics.jsonl, summary.json, train.safetensors (checkpoint).
#include <filesystem>

#include "apps/common/pruning.h"
#include "apps/common/summary.h"
#include "apps/common/trainer.h"

using namespace sparrow;

int main(int argc, char** argv) {
  AppCli cli("sparrow-train", "sparrow-train: dense training of a model (teachers, baselines)");
  std::string init_checkpoint;
  cli.app().add_option("--checkpoint", init_checkpoint,
                       "start from this checkpoint's weights (its architecture and widths are used)");
  cli.add_preset("quick", "Fashion-MNIST ResNet-8, 3 epochs, cosine LR, no augmentation (90.7% test accuracy)",
                 [](CommonOptions& o) {
                   o.dataset = "fashion-mnist", o.model = "resnet8", o.epochs = 3, o.lr = 0.1, o.schedule = "cosine";
                   o.augment = "none";
                 });
  cli.add_preset("cifar-resnet", "CIFAR ResNet teacher recipe: SGD 0.1, momentum 0.9, wd 5e-4, 200 epochs, x0.1 at 100/150",
                 [](CommonOptions& o) {
                   o.dataset = "cifar10", o.model = "resnet56", o.epochs = 200, o.batch_size = 128, o.lr = 0.1;
                   o.momentum = 0.9, o.weight_decay = 5e-4, o.schedule = "multistep:100,150";
                 });
  cli.add_preset("cifar-vgg", "CIFAR VGG-16-BN teacher: SGD 0.05, momentum 0.9, wd 5e-4, 200 epochs, x0.1 at 100/150",
                 [](CommonOptions& o) {
                   o.dataset = "cifar10", o.model = "vgg16", o.epochs = 200, o.batch_size = 128, o.lr = 0.05;
                   o.momentum = 0.9, o.weight_decay = 5e-4, o.schedule = "multistep:100,150";
                 });
  if (int rc = cli.parse(argc, argv); rc >= 0) return rc;
  return run_app("sparrow-train", [&] {
    const CommonOptions& o = cli.opts();
    install_interrupt_handler();
    DataBundle data = load_data(o);
    ModelPtr model;
    const std::string resume_path = o.out.empty() ? std::string() : o.out + "/train.safetensors";
    // A checkpoint brings its own architecture; --model / --widths given as well must agree with it.
    auto check_given = [&](const ModelSpec& ck, const std::string& path) {
      ModelSpec asked = ck;
      if (cli.given("--model")) asked.name = o.model, asked.widths.clear();
      if (cli.given("--widths")) asked.widths = parse_widths(o.widths, "--widths");
      const std::string diff = spec_differences(ck, asked);
      SPARROW_CHECK(diff.empty(), path, ": checkpoint does not match the options (checkpoint vs options) - ", diff);
    };
    if (o.resume && std::filesystem::exists(resume_path)) {
      // The architecture comes from the checkpoint: a narrowed (PDD) model resumes like any other.
      StFile f = read_safetensors(resume_path);
      const ModelSpec spec = checkpoint_model_spec(f, resume_path);
      check_given(spec, resume_path);
      model = make_model(spec, o.seed);
      prepare_from_checkpoint(*model, resume_path);
    } else if (!init_checkpoint.empty()) {
      model = load_model_from_checkpoint(init_checkpoint);
      check_given(model->spec(), init_checkpoint);
      SPARROW_CHECK(model->spec().in_channels == data.channels && model->spec().classes == data.classes,
                    init_checkpoint, ": model takes ", model->spec().in_channels, " channels and ",
                    model->spec().classes, " classes, the dataset has ", data.channels, " and ", data.classes);
    } else {
      model = make_model(model_spec_from(o, data), o.seed);
    }
    model->to(o.resolved_device);
    std::unique_ptr<RunFolder> run;
    if (!o.out.empty()) {
      run = std::make_unique<RunFolder>(o.out);
      nlohmann::json cfg = cli.config_json();
      cfg["model_spec"] = {{"name", model->spec().name}, {"widths", model->spec().widths},
                           {"classes", model->spec().classes}, {"in_channels", model->spec().in_channels}};
      if (!o.resume) run->write_config(cfg);
    }
    Sgd opt(model->parameters(), {o.lr, o.momentum, 0.0, o.weight_decay, o.nesterov});
    LrSchedule sched = parse_schedule(o.schedule, o.lr, o.epochs);
    if (!o.quiet)
      std::printf("sparrow-train: %s (%s) on %s: %d train / %d test images, %d epochs, batch %d, %s\n",
                  model->spec().name.c_str(), widths_to_string(model->spec().widths).c_str(), o.dataset.c_str(),
                  data.train.n, data.test.n, o.epochs, o.batch_size, device_name(o.resolved_device));
    Trainer trainer(cli, data, *model, opt, sched, TrainSetup{}, TrainHooks{});
    TrainResult r = trainer.run();
    if (r.interrupted) return kExitInterrupted;
    if (r.epochs_run == 0 || r.test_accuracy == 0) {
      EvalResult ev = evaluate(*model, data.test, data.test_aug, 256, o.resolved_device);
      r.test_accuracy = ev.accuracy;
    }
    nlohmann::json summary = make_summary(*model, data, r.test_accuracy, r.seconds);
    summary["train_loss"] = r.train_loss;
    summary["epochs"] = r.epochs_run;
    if (run) run->write_summary(summary);
    std::printf("test_accuracy %.4f  wall %.1fs%s%s\n", r.test_accuracy, r.seconds, run ? "  run folder " : "",
                run ? o.out.c_str() : "");
    return 0;
  });
}
