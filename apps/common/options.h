// The options every app shares (DESIGN.md "Interfaces users rely on"), presets, and the one-line error
// convention: apps print "<app>: <message>" and exit non-zero on any bad input.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/base/device.h"

namespace sparrow {

struct CommonOptions {
  std::string dataset = "fashion-mnist";
  std::string data_dir;
  std::string model = "resnet8";
  std::string widths;  // comma-separated per-layer widths ("" = the model's defaults)
  std::string classifier;  // VGG: "" (512->classes) or "pdd" (PDD's 3-layer classifier)
  std::string device = "auto";
  int epochs = 3;
  int batch_size = 128;
  double lr = 0.1;
  double momentum = 0.9;
  double weight_decay = 5e-4;
  bool nesterov = false;
  std::string schedule = "cosine";
  std::string augment = "default";  // default: the dataset's (crop/flip); none: normalisation only
  uint64_t seed = 0;
  int threads = 2;
  int64_t limit_train = 0;
  int64_t limit_test = 0;
  std::string preset;
  std::string out;
  bool resume = false;
  int checkpoint_every = 0;  // steps between mid-epoch checkpoints (0: at epoch ends only)
  std::string profile_steps; // "A:B": CUDA profiler capture window (nsys --capture-range=cudaProfilerApi)
  bool quiet = false;

  Device resolved_device = Device::CPU;
  int profile_begin = -1, profile_end = -1;
};

// A preset fills options the user did not set on the command line.
using Preset = std::function<void(CommonOptions&)>;

class AppCli {
 public:
  AppCli(std::string app_name, std::string description);
  CLI::App& app() { return app_; }
  CommonOptions& opts() { return opts_; }
  void add_preset(const std::string& name, const std::string& help, Preset fn);
  // Parses argv. Returns -1 to continue, or the exit code (after --help, or a one-line error).
  int parse(int argc, char** argv);
  bool given(const std::string& option) const { return app_.count(option) > 0; }
  nlohmann::json config_json() const;  // every resolved option
  const std::string& name() const { return name_; }

 private:
  void validate();
  std::string name_;
  CLI::App app_;
  CommonOptions opts_;
  std::map<std::string, std::pair<std::string, Preset>> presets_;
};

// e.what() without the " [file:line]" suffix unless SPARROW_DEBUG=1.
std::string user_message(const std::exception& e);
// Runs body() and turns any exception into "<app>: <message>" on stderr and exit code 1.
int run_app(const std::string& app_name, const std::function<int()>& body);

}  // namespace sparrow
