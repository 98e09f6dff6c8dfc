// sparrow-train end to end: bad input gives one-line errors and non-zero exits; a run killed with
// SIGKILL mid-epoch and resumed ends with exactly the weights of an uninterrupted run (CPU, same seed).
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "engine/io/safetensors.h"
#include "tests/apps/app_runner.h"
#include <zlib.h>

using namespace sparrow;
using namespace sparrow::testing;
namespace fs = std::filesystem;

namespace {
void expect_one_line_error(const RunResult& r, const std::string& needle) {
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "error must be one line: " << r.err;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), unsigned(bytes.size()));
  gzclose(f);
}

std::vector<uint8_t> idx_header(uint32_t magic, std::vector<uint32_t> dims) {
  std::vector<uint8_t> b;
  auto put = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
  };
  put(magic);
  for (auto d : dims) put(d);
  return b;
}

// A tiny valid Fashion-MNIST folder (n images), which tests then damage one file at a time.
void write_fashion(const std::string& dir, uint32_t n) {
  fs::create_directories(dir);
  for (const char* split : {"train", "t10k"}) {
    auto img = idx_header(2051, {n, 28, 28});
    img.resize(img.size() + size_t(n) * 784, 7);
    write_gz(dir + "/" + split + "-images-idx3-ubyte.gz", img);
    auto lab = idx_header(2049, {n});
    for (uint32_t i = 0; i < n; ++i) lab.push_back(uint8_t(i % 10));
    write_gz(dir + "/" + split + "-labels-idx1-ubyte.gz", lab);
  }
}

const std::vector<std::string> kQuick = {"--epochs", "1", "--limit-train", "64", "--limit-test", "32", "--quiet"};

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
}  // namespace

TEST(TrainApp, HelpWorks) {
  TempDir t;
  RunResult r = run_app("sparrow-train", {"--help"}, t.path);
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--dataset"), std::string::npos);
  EXPECT_NE(r.out.find("--preset"), std::string::npos);
}

TEST(TrainApp, BadOptionsAreOneLineErrors) {
  TempDir t;
  expect_one_line_error(run_app("sparrow-train", {"--batch-size", "-4"}, t.path), "--batch-size");
  expect_one_line_error(run_app("sparrow-train", with({"--dataset", "synthetic", "--model", "resnet21"}, kQuick), t.path),
                        "unknown model 'resnet21'");
  expect_one_line_error(run_app("sparrow-train", {"--dataset", "imagenet"}, t.path), "unknown dataset 'imagenet'");
  expect_one_line_error(run_app("sparrow-train", {"--device", "tpu"}, t.path), "unknown device 'tpu'");
  expect_one_line_error(run_app("sparrow-train", {"--preset", "nope"}, t.path), "unknown preset 'nope'");
  expect_one_line_error(run_app("sparrow-train", {"--epochs", "many"}, t.path), "--epochs");
}

TEST(TrainApp, BadDatasetFilesAreOneLineErrorsNamingTheFile) {
  TempDir t;
  const std::string missing = t.path + "/nowhere";
  expect_one_line_error(run_app("sparrow-train", with({"--dataset", "fashion-mnist", "--data-dir", missing}, kQuick), t.path),
                        "nowhere");
  // Truncated image file.
  const std::string d1 = t.path + "/trunc";
  write_fashion(d1, 20);
  {
    auto img = idx_header(2051, {20, 28, 28});
    img.resize(img.size() + 784 * 5);
    write_gz(d1 + "/train-images-idx3-ubyte.gz", img);
  }
  expect_one_line_error(run_app("sparrow-train", with({"--dataset", "fashion-mnist", "--data-dir", d1}, kQuick), t.path),
                        "train-images-idx3-ubyte.gz");
  // Wrong magic.
  const std::string d2 = t.path + "/magic";
  write_fashion(d2, 20);
  {
    auto lab = idx_header(2051, {20});
    lab.resize(lab.size() + 20);
    write_gz(d2 + "/train-labels-idx1-ubyte.gz", lab);
  }
  expect_one_line_error(run_app("sparrow-train", with({"--dataset", "fashion-mnist", "--data-dir", d2}, kQuick), t.path),
                        "train-labels-idx1-ubyte.gz");
  // Image and label counts disagree.
  const std::string d3 = t.path + "/count";
  write_fashion(d3, 20);
  {
    auto lab = idx_header(2049, {19});
    lab.resize(lab.size() + 19);
    write_gz(d3 + "/train-labels-idx1-ubyte.gz", lab);
  }
  expect_one_line_error(run_app("sparrow-train", with({"--dataset", "fashion-mnist", "--data-dir", d3}, kQuick), t.path),
                        "fashion-mnist");
  // A valid tiny folder trains (the damaged ones above failed for the stated reason, not another).
  const std::string ok = t.path + "/ok";
  write_fashion(ok, 20);
  RunResult r = run_app("sparrow-train", with({"--dataset", "fashion-mnist", "--data-dir", ok, "--batch-size", "8"}, kQuick), t.path);
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST(TrainApp, RunFolderHasConfigMetricsSummaryAndCheckpoint) {
  TempDir t;
  const std::string out = t.path + "/run";
  RunResult r = run_app("sparrow-train", with({"--dataset", "synthetic", "--model", "resnet8", "--batch-size", "16",
                                              "--epochs", "2", "--out", out},
                                             {"--limit-train", "64", "--limit-test", "32", "--quiet"}),
                        t.path);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"config.json", "metrics.jsonl", "summary.json", "train.safetensors"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  const std::string summary = slurp(out + "/summary.json");
  for (const char* k : {"\"test_accuracy\"", "\"sparsity\"", "\"params\"", "\"nonzero_params\"", "\"macs\"",
                        "\"wall_seconds\"", "\"layers\""})
    EXPECT_NE(summary.find(k), std::string::npos) << k;
  const std::string metrics = slurp(out + "/metrics.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 2) << metrics;
  StFile ck = read_safetensors(out + "/train.safetensors");
  EXPECT_EQ(ck.metadata.at("model"), "resnet8");
  EXPECT_EQ(ck.metadata.at("epoch"), "2");
  EXPECT_TRUE(ck.tensors.count("blocks.0.c1.weight"));
  EXPECT_TRUE(ck.tensors.count("optim.momentum.blocks.0.c1.weight"));
}

TEST(TrainApp, KilledRunResumesToTheSameFinalWeights) {
  TempDir t;
  const std::vector<std::string> common = {"--dataset", "synthetic", "--model", "resnet8", "--batch-size", "16",
                                           "--epochs", "2", "--limit-train", "160", "--limit-test", "32",
                                           "--threads", "2", "--checkpoint-every", "3", "--quiet", "--seed", "5"};
  const std::string ref = t.path + "/ref", killed = t.path + "/killed";
  ASSERT_EQ(run_app("sparrow-train", with(common, {"--out", ref}), t.path).code, 0);

  // Start the same run, SIGKILL it once its first mid-epoch checkpoint exists, then resume.
  const std::string exe = std::string(SPARROW_BIN_DIR) + "/sparrow-train";
  std::vector<std::string> args = with(common, {"--out", killed});
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(exe.c_str())};
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    freopen("/dev/null", "w", stdout);
    // Each checkpoint write takes ~0.1 s more, so the run outlasts the poll below on any machine.
    setenv("SPARROW_FAULT_WRITE_DELAY_US", "2000", 1);
    execv(exe.c_str(), argv.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(killed + "/train.safetensors") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run finished before it could be killed; make it longer";
  StFile mid = read_safetensors(killed + "/train.safetensors");
  EXPECT_LT(std::stoi(mid.metadata.at("epoch")) * 10 + std::stoi(mid.metadata.at("batches_done")), 20)
      << "the checkpoint we resume from must be mid-run";

  RunResult r = run_app("sparrow-train", with(with(common, {"--out", killed}), {"--resume"}), t.path);
  ASSERT_EQ(r.code, 0) << r.err;
  StFile a = read_safetensors(ref + "/train.safetensors");
  StFile b = read_safetensors(killed + "/train.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  int compared = 0;
  for (auto& [name, e] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << name;
    EXPECT_EQ(e.data, b.tensors.at(name).data) << "tensor " << name << " differs after resume";
    ++compared;
  }
  EXPECT_GT(compared, 20);
  // metrics.jsonl has one row per epoch, no duplicates from the killed attempt.
  const std::string metrics = slurp(killed + "/metrics.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 2) << metrics;
}
