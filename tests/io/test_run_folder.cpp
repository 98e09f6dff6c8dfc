// The run folder: mkdir -p, config.json and summary.json written atomically and read back, metrics.jsonl
// appended and flushed one line per row, and JSON errors that name the file (and line).
#include "engine/io/run_folder.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>

#include "engine/base/error.h"
#include "engine/io/atomic_file.h"

namespace sparrow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    std::string m = e.what();
    size_t at = m.rfind(" [");
    return at == std::string::npos ? m : m.substr(0, at);
  }
  return "";
}

size_t count_lines(const std::string& text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

class RunFolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sparrow_run_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override { fs::remove_all(root_); }

  void put(const std::string& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

  std::vector<std::string> listing(const std::string& dir) const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string root_;
};

TEST_F(RunFolderTest, CreatesNestedFolderAndAcceptsExisting) {
  std::string dir = root_ + "/runs/exp1/seed0";
  RunFolder run(dir);
  EXPECT_TRUE(fs::is_directory(dir));
  EXPECT_EQ(run.path("config.json"), dir + "/config.json");
  RunFolder again(dir + "/");  // existing folder, trailing slash
  EXPECT_EQ(again.path("summary.json"), dir + "/summary.json");
  EXPECT_TRUE(run.read_metrics().empty());

  put(root_ + "/file", "x");
  EXPECT_EQ(error_of([&] { RunFolder bad(root_ + "/file/sub"); }),
            "cannot create directory " + root_ + "/file/sub: " + root_ + "/file exists and is not a directory");
}

TEST_F(RunFolderTest, ConfigAndSummaryRoundTrip) {
  RunFolder run(root_ + "/r");
  json config = {{"model", "resnet56"}, {"lr", 0.1},       {"epochs", 160},         {"seed", 0},
                 {"device", "cpu"},      {"limit_train", nullptr}, {"widths", {16, 32, 64}}, {"kl", false}};
  run.write_config(config);
  EXPECT_EQ(run.read_config(), config);
  std::string text = read_file_text(run.path("config.json"));
  EXPECT_EQ(text.back(), '\n');
  EXPECT_NE(text.find("\n  \"epochs\": 160"), std::string::npos) << text;  // indented for people

  json layer = {{"name", "conv1"}, {"shape", {16, 3, 3, 3}}, {"params", 432}, {"nonzeros", 40}, {"macs", 442368}};
  json summary = {{"test_accuracy", 0.9312}, {"sparsity", 0.9},     {"params", 853018}, {"nonzero_params", 85302},
                  {"macs", 125485706},      {"wall_seconds", 12.5}, {"layers", {layer}}};
  run.write_summary(summary);
  json back = run.read_summary();
  EXPECT_EQ(back, summary);
  EXPECT_EQ(back["test_accuracy"].get<double>(), 0.9312);  // doubles survive the text round trip exactly
  // Overwrite: the new document replaces the old one whole, no temp files left behind.
  summary["test_accuracy"] = 0.5;
  run.write_summary(summary);
  EXPECT_EQ(run.read_summary()["test_accuracy"].get<double>(), 0.5);
  EXPECT_EQ(listing(run.dir()), (std::vector<std::string>{"config.json", "summary.json"}));
}

TEST_F(RunFolderTest, MetricsAppendedLineByLine) {
  RunFolder run(root_ + "/r");
  std::vector<json> rows;
  for (int epoch = 0; epoch < 4; ++epoch) {
    json row = {{"epoch", epoch}, {"phase", "train"}, {"loss", 2.3 / (epoch + 1)}, {"accuracy", 0.1 * epoch}};
    run.append_metrics(row);
    rows.push_back(row);
    // Flushed per row: the file already holds every row written so far, one per line.
    std::string text = read_file_text(run.path("metrics.jsonl"));
    EXPECT_EQ(count_lines(text), rows.size());
    EXPECT_EQ(text.back(), '\n');
  }
  EXPECT_EQ(run.read_metrics(), rows);
  EXPECT_EQ(read_jsonl(run.path("metrics.jsonl")), rows);

  // A second writer (a resumed run) appends to the same file.
  RunFolder resumed(root_ + "/r");
  json extra = {{"epoch", 4}, {"phase", "test"}, {"accuracy", 0.55}};
  resumed.append_metrics(extra);
  rows.push_back(extra);
  EXPECT_EQ(run.read_metrics(), rows);

  // Resume from an earlier checkpoint: keep the first rows only.
  rows.resize(2);
  run.rewrite_metrics(rows);
  EXPECT_EQ(run.read_metrics(), rows);
  EXPECT_EQ(count_lines(read_file_text(run.path("metrics.jsonl"))), 2u);

  EXPECT_EQ(error_of([&] { run.append_metrics(json::array({1, 2})); }),
            run.path("metrics.jsonl") + ": a metrics row must be a JSON object, got array");
  EXPECT_EQ(listing(run.dir()), std::vector<std::string>{"metrics.jsonl"});
}

TEST_F(RunFolderTest, BadJsonErrorsNameTheFile) {
  RunFolder run(root_ + "/r");
  put(run.path("config.json"), "{\"lr\": 0.1,,}");
  std::string msg = error_of([&] { run.read_config(); });
  EXPECT_EQ(msg.rfind(run.path("config.json") + ": not valid JSON: ", 0), 0u) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;

  put(run.path("metrics.jsonl"), "{\"epoch\": 0}\n{\"epoch\": 1\n{\"epoch\": 2}\n");
  msg = error_of([&] { run.read_metrics(); });
  EXPECT_EQ(msg.rfind(run.path("metrics.jsonl") + ":2: not valid JSON: ", 0), 0u) << msg;

  put(run.path("summary.json"), "");
  msg = error_of([&] { run.read_summary(); });
  EXPECT_EQ(msg.rfind(run.path("summary.json") + ": not valid JSON: ", 0), 0u) << msg;

  std::string missing = root_ + "/nope.json";
  EXPECT_EQ(error_of([&] { read_json(missing); }), "cannot open " + missing + ": No such file or directory");
}

TEST_F(RunFolderTest, UnwritableJsonNamesTheFileAndLeavesNoTemp) {
  RunFolder run(root_ + "/r");
  json config = {{"name", "\xff\xfe"}};  // not UTF-8: cannot be written as JSON
  std::string msg = error_of([&] { run.write_config(config); });
  EXPECT_EQ(msg.rfind(run.path("config.json") + ": cannot write JSON: ", 0), 0u) << msg;
  msg = error_of([&] { write_json_atomic(root_ + "/missing/dir/config.json", json::object()); });
  EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
  EXPECT_TRUE(listing(run.dir()).empty());
}

}  // namespace
}  // namespace sparrow
