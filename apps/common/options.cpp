// Common options, presets and the top-level error handler.
#include "apps/common/options.h"

#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "engine/base/error.h"

namespace sparrow {

AppCli::AppCli(std::string app_name, std::string description) : name_(std::move(app_name)), app_(description, name_) {
  auto& o = opts_;
  app_.option_defaults()->always_capture_default();
  app_.add_option("--dataset", o.dataset, "cifar10, cifar100, tiny-imagenet, fashion-mnist or synthetic");
  app_.add_option("--data-dir", o.data_dir, "dataset folder (fashion-mnist default: /usr/share/datasets/fashion-mnist)");
  app_.add_option("--model", o.model, "resnet8/20/32/44/56/110, resnet18, vgg11/13/16/19");
  app_.add_option("--widths", o.widths, "per-layer widths, comma-separated (default: the model's)");
  app_.add_option("--classifier", o.classifier, "VGG classifier: empty (512->classes) or pdd (512-512-512 with dropout)");
  app_.add_option("--device", o.device, "auto, cpu or cuda");
  app_.add_option("--epochs", o.epochs, "training epochs");
  app_.add_option("--batch-size", o.batch_size, "batch size");
  app_.add_option("--lr", o.lr, "learning rate");
  app_.add_option("--momentum", o.momentum, "SGD momentum");
  app_.add_option("--wd", o.weight_decay, "weight decay (coupled, as torch.optim.SGD)");
  app_.add_flag("--nesterov", o.nesterov, "Nesterov momentum");
  app_.add_option("--schedule", o.schedule, "constant, cosine or multistep:E1,E2,... (x0.1 at each)");
  app_.add_option("--augment", o.augment, "training augmentation: default (the dataset's crop/flip) or none");
  app_.add_option("--seed", o.seed, "seed for init, data order and augmentation");
  app_.add_option("--threads", o.threads, "CPU threads (OpenMP)");
  app_.add_option("--limit-train", o.limit_train, "use N training images (0: all)");
  app_.add_option("--limit-test", o.limit_test, "use N test images (0: all)");
  app_.add_option("--out", o.out, "run folder (config.json, metrics.jsonl, summary.json, checkpoints)");
  app_.add_flag("--resume", o.resume, "continue the run in --out from its last checkpoint");
  app_.add_option("--checkpoint-every", o.checkpoint_every, "also checkpoint every N steps (0: at epoch ends)");
  app_.add_option("--profile-steps", o.profile_steps, "A:B: CUDA profiler capture window in global steps");
  app_.add_flag("--quiet", o.quiet, "no progress output");
  app_.failure_message([this](const CLI::App*, const CLI::Error& e) {
    return name_ + ": " + e.what() + " (see --help)\n";
  });
}

void AppCli::add_preset(const std::string& name, const std::string& help, Preset fn) {
  presets_[name] = {help, std::move(fn)};
}

int AppCli::parse(int argc, char** argv) {
  if (!presets_.empty()) {
    std::string names;
    for (auto& [n, p] : presets_) names += "\n  " + n + ": " + p.first;
    app_.add_option("--preset", opts_.preset, "paper settings; fills options not given:" + names);
  }
  try {
    app_.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app_.exit(e);
  }
  try {
    if (!opts_.preset.empty()) {
      auto it = presets_.find(opts_.preset);
      SPARROW_CHECK(it != presets_.end(), "--preset: unknown preset '", opts_.preset, "'");
      CommonOptions before = opts_;
      it->second.second(opts_);
      // Options given on the command line win over the preset.
      auto keep = [&](const char* opt, auto member) {
        if (given(opt)) opts_.*member = before.*member;
      };
      keep("--dataset", &CommonOptions::dataset);
      keep("--model", &CommonOptions::model);
      keep("--widths", &CommonOptions::widths);
      keep("--classifier", &CommonOptions::classifier);
      keep("--epochs", &CommonOptions::epochs);
      keep("--batch-size", &CommonOptions::batch_size);
      keep("--lr", &CommonOptions::lr);
      keep("--momentum", &CommonOptions::momentum);
      keep("--wd", &CommonOptions::weight_decay);
      keep("--nesterov", &CommonOptions::nesterov);
      keep("--schedule", &CommonOptions::schedule);
      keep("--augment", &CommonOptions::augment);
      keep("--limit-train", &CommonOptions::limit_train);
      keep("--limit-test", &CommonOptions::limit_test);
    }
    validate();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name_.c_str(), user_message(e).c_str());
    return 2;
  }
  return -1;
}

void AppCli::validate() {
  auto& o = opts_;
  SPARROW_CHECK(o.epochs >= 0, "--epochs must be >= 0, got ", o.epochs);
  SPARROW_CHECK(o.batch_size > 0, "--batch-size must be positive, got ", o.batch_size);
  // NaN fails every comparison, so these also reject "nan"; infinities are named separately.
  SPARROW_CHECK(o.lr >= 0 && std::isfinite(o.lr), "--lr must be a finite number >= 0, got ", o.lr);
  SPARROW_CHECK(o.momentum >= 0 && o.momentum < 1, "--momentum must be in [0, 1), got ", o.momentum);
  SPARROW_CHECK(o.weight_decay >= 0 && std::isfinite(o.weight_decay), "--wd must be a finite number >= 0, got ",
                o.weight_decay);
  SPARROW_CHECK(o.augment == "default" || o.augment == "none", "--augment: expected default or none, got '",
                o.augment, "'");
  // OpenMP aborts the process when it cannot create the threads asked for: keep the request sane.
  SPARROW_CHECK(o.threads > 0 && o.threads <= 1024, "--threads must be in [1, 1024], got ", o.threads);
  SPARROW_CHECK(o.limit_train >= 0 && o.limit_test >= 0, "--limit-train/--limit-test must be >= 0");
  SPARROW_CHECK(o.checkpoint_every >= 0, "--checkpoint-every must be >= 0");
  SPARROW_CHECK(!o.resume || !o.out.empty(), "--resume needs --out (the run folder to resume)");
  if (!o.profile_steps.empty()) {
    const auto colon = o.profile_steps.find(':');
    try {
      SPARROW_CHECK(colon != std::string::npos, "");
      o.profile_begin = std::stoi(o.profile_steps.substr(0, colon));
      o.profile_end = std::stoi(o.profile_steps.substr(colon + 1));
      SPARROW_CHECK(o.profile_begin >= 0 && o.profile_end > o.profile_begin, "");
    } catch (const std::exception&) {
      SPARROW_FAIL("--profile-steps: expected A:B with 0 <= A < B, got '", o.profile_steps, "'");
    }
  }
  o.resolved_device = parse_device(o.device);
  omp_set_num_threads(o.threads);
}

nlohmann::json AppCli::config_json() const {
  nlohmann::json j;
  for (const CLI::Option* opt : app_.get_options()) {
    const std::string name = opt->get_name(false, true);
    if (name.rfind("--", 0) != 0 || name == "--help") continue;
    const auto results = opt->results();
    if (opt->get_type_size_max() == 0) {  // flags
      j[name.substr(2)] = opt->count() > 0;
      continue;
    }
    std::string v = results.empty() ? opt->get_default_str() : CLI::detail::join(results, ",");
    j[name.substr(2)] = v;
  }
  // Preset-resolved values (the parsed strings above show what the user typed or the default).
  const auto& o = opts_;
  j["resolved"] = {{"dataset", o.dataset}, {"model", o.model},       {"widths", o.widths},
                   {"epochs", o.epochs},   {"batch_size", o.batch_size}, {"lr", o.lr},
                   {"momentum", o.momentum}, {"weight_decay", o.weight_decay}, {"nesterov", o.nesterov},
                   {"schedule", o.schedule}, {"augment", o.augment}, {"seed", o.seed}, {"device", device_name(o.resolved_device)},
                   {"threads", o.threads}, {"limit_train", o.limit_train}, {"limit_test", o.limit_test},
                   {"preset", o.preset}};
  return j;
}

std::string user_message(const std::exception& e) {
  std::string msg = e.what();
  // Library errors end in " [file.cpp:123]": useful in bug reports (SPARROW_DEBUG=1), noise otherwise.
  const char* debug = std::getenv("SPARROW_DEBUG");
  if ((!debug || std::string(debug) == "0") && !msg.empty() && msg.back() == ']') {
    const size_t open = msg.rfind(" [");
    if (open != std::string::npos && msg.find(':', open) != std::string::npos) msg.erase(open);
  }
  return msg;
}

int run_app(const std::string& app_name, const std::function<int()>& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: %s\n", app_name.c_str(), user_message(e).c_str());
    return 1;
  }
}

}  // namespace sparrow
