// libFuzzer target: the command-line parser every app shares (AppCli: CLI11 options, presets, validation)
// and the config.json it produces. The input is split at NUL and newline bytes into arguments. A bad
// command line must end in a non-negative exit code (a one-line message), never an escaping exception; a
// good one must give a config that serialises (json_text, as the run folder writes it).
#include <cstdint>
#include <string>
#include <vector>

#include "apps/common/options.h"
#include "engine/base/error.h"
#include "engine/io/run_folder.h"

using namespace sparrow;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args{"fuzz"};
  std::string cur;
  for (size_t i = 0; i < size && args.size() < 64; ++i) {
    const char c = char(data[i]);
    if (c == '\0' || c == '\n') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) args.push_back(cur);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  AppCli cli("fuzz", "fuzz: the shared option parser");
  std::string checkpoint;
  cli.app().add_option("--checkpoint", checkpoint, "a checkpoint");
  cli.add_preset("quick", "a preset", [](CommonOptions& o) {
    o.dataset = "fashion-mnist", o.model = "resnet8", o.epochs = 3, o.lr = 0.1, o.schedule = "cosine";
  });
  cli.add_preset("cifar", "another preset", [](CommonOptions& o) {
    o.dataset = "cifar10", o.model = "resnet56", o.epochs = 200, o.schedule = "multistep:100,150";
  });
  const int rc = cli.parse(int(args.size()), argv.data());
  if (rc >= 0) return 0;
  try {
    json_text(cli.config_json(), 2);
  } catch (const Error&) {
  }
  return 0;
}
