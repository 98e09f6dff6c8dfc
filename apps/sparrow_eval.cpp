// sparrow-eval: test accuracy of a checkpoint (any sparrow checkpoint: dense, masked, sparse or a narrowed
// PDD model — the architecture comes from its metadata) and the per-layer table of shapes, parameters,
// nonzeros and MACs.
#include "apps/common/summary.h"
#include "apps/common/trainer.h"

using namespace sparrow;

int main(int argc, char** argv) {
  AppCli cli("sparrow-eval", "sparrow-eval: test accuracy and per-layer costs of a checkpoint");
  std::string checkpoint, json_out;
  bool no_data = false;
  cli.app().add_option("checkpoint,--checkpoint", checkpoint, "checkpoint file (.safetensors) or a run folder")->required();
  cli.app().add_option("--json", json_out, "also write the summary object to this file");
  cli.app().add_flag("--costs-only", no_data, "print the layer table without evaluating (no dataset needed)");
  if (int rc = cli.parse(argc, argv); rc >= 0) return rc;
  return run_app("sparrow-eval", [&] {
    const CommonOptions& o = cli.opts();
    std::string path = checkpoint;
    if (std::filesystem::is_directory(path)) {
      // A run folder: take its most advanced checkpoint (the apps name them by phase).
      std::string best;
      for (const char* name : {"final.safetensors", "finetune.safetensors", "retrain.safetensors", "train.safetensors"})
        if (best.empty() && std::filesystem::exists(path + "/" + name)) best = path + "/" + name;
      SPARROW_CHECK(!best.empty(), path, ": no checkpoint (final/finetune/retrain/train.safetensors) in this folder");
      path = best;
    }
    SPARROW_CHECK(std::filesystem::exists(path), path, ": no such checkpoint");
    ModelPtr model = load_model_from_checkpoint(path);
    const ModelSpec& spec = model->spec();
    std::printf("%s: %s widths [%s], %d classes, %d input channels\n", path.c_str(), spec.name.c_str(),
                widths_to_string(spec.widths).c_str(), spec.classes, spec.in_channels);
    double acc = 0;
    int h = 32, w = 32;
    if (!no_data) {
      DataBundle data = load_data(o);
      SPARROW_CHECK(data.channels == spec.in_channels && data.classes == spec.classes, path, ": model takes ",
                    spec.in_channels, " channels / ", spec.classes, " classes, dataset ", o.dataset, " has ",
                    data.channels, " / ", data.classes);
      h = data.height, w = data.width;
      model->to(o.resolved_device);
      EvalResult ev = evaluate(*model, data.test, data.test_aug, std::max(o.batch_size, 256), o.resolved_device);
      acc = ev.accuracy;
      std::printf("test_accuracy %.4f  test_loss %.4f  (%lld images of %s)\n", ev.accuracy, ev.loss,
                  (long long)ev.n, o.dataset.c_str());
      model->to(Device::CPU);
    } else if (o.dataset == "fashion-mnist") {
      h = w = 28;
    }
    const CostReport c = count_costs(*model, {1, spec.in_channels, h, w});
    std::printf("%s", format_layer_table(c).c_str());
    if (!json_out.empty()) write_json_atomic(json_out, summary_from_costs(c, acc, 0.0));
    return 0;
  });
}
