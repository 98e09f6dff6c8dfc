// sparrow-epsd, sparrow-tgosp and sparrow-pdd end to end on the synthetic set (tiny runs): achieved
// sparsity, pruned weights exactly zero after training, the loss falls, EPSD with zero inner steps equals
// SNIP on the same SD loss, retraining never revives a pruned weight, early stopping restores the best
// weights, and a narrowed PDD model is an ordinary checkpoint that sparrow-eval and sparrow-train load.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/io/run_folder.h"
#include "engine/io/safetensors.h"
#include "tests/apps/app_runner.h"

using namespace sparrow;
using namespace sparrow::testing;
namespace fs = std::filesystem;

namespace {
const std::vector<std::string> kData = {"--dataset", "synthetic", "--limit-train", "128", "--limit-test", "64",
                                        "--batch-size", "32", "--threads", "2", "--quiet"};

std::vector<std::string> cat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::vector<float> floats(const StEntry& e) {
  std::vector<float> v(e.data.size() / 4);
  std::memcpy(v.data(), e.data.data(), e.data.size());
  return v;
}

// Pruned entries (mask 0) of every sparse layer in a checkpoint are exactly zero; returns the layer count.
int expect_masked_zero(const std::string& path) {
  StFile f = read_safetensors(path);
  int layers = 0;
  for (auto& [name, e] : f.tensors) {
    const std::string suffix = ".weight_mask";
    if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string wname = name.substr(0, name.size() - suffix.size()) + ".weight";
    const auto m = floats(e), w = floats(f.tensors.at(wname));
    for (size_t i = 0; i < m.size(); ++i) {
      if (m[i] == 0) {
        EXPECT_EQ(w[i], 0.f) << wname << " index " << i << " was pruned but is nonzero";
      }
    }
    ++layers;
  }
  return layers;
}

class AlgorithmApps : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    RunResult r = run_app("sparrow-train", cat(kData, {"--model", "resnet8", "--epochs", "1", "--out", dir_->path + "/teacher"}),
                          dir_->path);
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string teacher() { return dir_->path + "/teacher/train.safetensors"; }
  static TempDir* dir_;
};
TempDir* AlgorithmApps::dir_ = nullptr;
}  // namespace

TEST_F(AlgorithmApps, EpsdEveryCriterionAndSdMethodPrunesExactlyAndTrains) {
  TempDir t;
  const std::vector<std::pair<std::string, std::string>> runs = {
      {"epsd", "dlb"},   {"epsd", "cskd"},  {"epsd", "pskd"}, {"epsd", "none"},    {"snip", "dlb"},
      {"random", "none"}, {"magnitude", "none"}, {"grasp", "none"}, {"synflow", "none"}, {"prospr", "none"}};
  for (auto& [crit, sd] : runs) {
    SCOPED_TRACE(crit + "+" + sd);
    const std::string out = t.path + "/" + crit + "_" + sd;
    RunResult r = run_app("sparrow-epsd", cat(kData, {"--model", "resnet8", "--epochs", "2", "--lr", "0.05",
                                                      "--criterion", crit, "--sd", sd, "--sparsity", "0.8",
                                                      "--epsd-steps", "2", "--synflow-rounds", "3",
                                                      "--prune-batch-size", "32", "--out", out}),
                          t.path);
    ASSERT_EQ(r.code, 0) << r.err;
    auto s = read_json(out + "/summary.json");
    // Global unstructured top-k: ⌊0.8·N⌋ of N prunable weights removed, so within 1/N of 0.8.
    EXPECT_NEAR(s["sparsity"].get<double>(), 0.8, 1e-4);
    EXPECT_GT(expect_masked_zero(out + "/train.safetensors"), 0);
    auto rows = read_jsonl(out + "/metrics.jsonl");
    std::vector<double> losses;
    for (auto& row : rows)
      if (row["phase"] == "train") losses.push_back(row["train_loss"]);
    ASSERT_EQ(losses.size(), 2u);
    EXPECT_LT(losses[1], losses[0]) << "training loss did not fall";
  }
}

TEST_F(AlgorithmApps, EpsdWithZeroInnerStepsIsSnipOnTheSameSdLoss) {
  TempDir t;
  const auto common = cat(kData, {"--model", "resnet8", "--epochs", "0", "--sd", "cskd", "--sparsity", "0.9",
                                  "--prune-batch-size", "32", "--seed", "3"});
  ASSERT_EQ(run_app("sparrow-epsd", cat(common, {"--criterion", "epsd", "--epsd-steps", "0", "--out", t.path + "/e"}), t.path).code, 0);
  ASSERT_EQ(run_app("sparrow-epsd", cat(common, {"--criterion", "snip", "--score-loss", "sd", "--out", t.path + "/s"}), t.path).code, 0);
  StFile a = read_safetensors(t.path + "/e/pruned.safetensors"), b = read_safetensors(t.path + "/s/pruned.safetensors");
  int masks = 0;
  for (auto& [name, e] : a.tensors)
    if (name.find("weight_mask") != std::string::npos) {
      EXPECT_EQ(e.data, b.tensors.at(name).data) << name;
      ++masks;
    }
  EXPECT_GT(masks, 5);
  // And a different loss gives a different mask (the comparison above can fail).
  ASSERT_EQ(run_app("sparrow-epsd", cat(common, {"--criterion", "snip", "--score-loss", "ce", "--out", t.path + "/c"}), t.path).code, 0);
  StFile c = read_safetensors(t.path + "/c/pruned.safetensors");
  bool differs = false;
  for (auto& [name, e] : a.tensors)
    if (name.find("weight_mask") != std::string::npos) differs |= e.data != c.tensors.at(name).data;
  EXPECT_TRUE(differs) << "SNIP on CE gave the same mask as on the CS-KD loss";
}

// Regression: a pruning batch (--prune-batch-size, default 128) larger than the training set used to give
// an epoch of zero batches (drop_last was set for the training batch size) and the batch-collecting loop
// spun forever. Now the pruning batch is the whole set.
TEST_F(AlgorithmApps, EpsdPruningBatchLargerThanTheTrainingSetFinishes) {
  TempDir t;
  RunResult r = run_app("sparrow-epsd", {"--dataset", "synthetic", "--limit-train", "48", "--limit-test", "32",
                                         "--batch-size", "16", "--threads", "2", "--quiet", "--model", "resnet8",
                                         "--epochs", "0", "--criterion", "snip", "--sparsity", "0.5",
                                         "--out", t.path + "/run"},
                        t.path, 120);
  ASSERT_EQ(r.code, 0) << (r.code == 137 ? std::string("hung (killed after 120 s)") : r.err);
  EXPECT_GT(expect_masked_zero(t.path + "/run/pruned.safetensors"), 5);
}

TEST_F(AlgorithmApps, EpsdSweepWritesTheReports) {
  TempDir t;
  RunResult r = run_app("sparrow-epsd", cat(kData, {"--model", "resnet8", "--epochs", "1", "--sweep", "--sweep-methods",
                                                    "epsd+none,random+none", "--sweep-sparsities", "0.5,0.9",
                                                    "--sweep-seeds", "0,1", "--epsd-steps", "1", "--out", t.path + "/sw"}),
                        t.path);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string csv = slurp(t.path + "/sw/results.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 2 * 2 * 2) << csv;
  EXPECT_NE(slurp(t.path + "/sw/results.md").find("±"), std::string::npos);
  EXPECT_NE(slurp(t.path + "/sw/accuracy.svg").find("<polyline"), std::string::npos);

  // A cell that cannot run (99.99% global pruning empties a layer) is recorded and the sweep goes on.
  r = run_app("sparrow-epsd", cat(kData, {"--model", "resnet8", "--epochs", "1", "--sweep", "--sweep-methods",
                                          "random+none", "--sweep-sparsities", "0.9999,0.5", "--sweep-seeds", "0",
                                          "--out", t.path + "/bad"}),
              t.path);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("1 of 2 sweep runs failed"), std::string::npos) << r.err;
  const std::string bad = slurp(t.path + "/bad/results.csv");
  EXPECT_EQ(std::count(bad.begin(), bad.end(), '\n'), 3) << bad;
  EXPECT_NE(bad.find("removes every weight"), std::string::npos) << bad;
  EXPECT_NE(bad.find("random+none,0.5000,0,"), std::string::npos) << bad;
}

TEST_F(AlgorithmApps, TgospRetrainingNeverRevivesAndKeepsTheBestWeights) {
  for (const char* kernels : {"on", "off"}) {
    SCOPED_TRACE(std::string("--sparse-kernels ") + kernels);
    TempDir t;
    const std::string out = t.path + "/run";
    RunResult r = run_app("sparrow-tgosp", cat(kData, {"--teacher-checkpoint", teacher(), "--student", "resnet8",
                                                       "--kd-epochs", "1", "--score-epochs", "1", "--retrain-epochs", "4",
                                                       "--patience", "2", "--sparsity", "0.9", "--sparse-kernels",
                                                       kernels, "--val-fraction", "0.25", "--out", out}),
                          t.path);
    ASSERT_EQ(r.code, 0) << r.err;
    double best = -1;
    int epochs = 0;
    for (auto& row : read_jsonl(out + "/metrics.jsonl"))
      if (row["phase"] == "retrain") {
        EXPECT_EQ(row["revived_weights"].get<int64_t>(), 0) << "epoch " << row["epoch"];
        best = std::max(best, row["val_accuracy"].get<double>());
        ++epochs;
      }
    EXPECT_GE(epochs, 1);
    auto s = read_json(out + "/summary.json");
    EXPECT_DOUBLE_EQ(s["val_accuracy"].get<double>(), best) << "--keep best must restore the best-validation weights";
    EXPECT_NEAR(s["sparsity"].get<double>(), 0.9, 1e-3);
    // The final weights are the best epoch's, bit for bit.
    StFile fin = read_safetensors(out + "/final.safetensors"), bst = read_safetensors(out + "/best.safetensors");
    for (auto& [name, e] : bst.tensors) {
      if (name.rfind("optim.", 0) != 0) {
        EXPECT_EQ(e.data, fin.tensors.at(name).data) << name;
      }
    }
    // FC and BN are not pruned by default: no mask on the classifier, BN untouched by masks.
    StFile ck = read_safetensors(out + "/pruned.safetensors");
    EXPECT_FALSE(ck.tensors.count("fc.weight_mask"));
    for (auto& [name, e] : ck.tensors)
      EXPECT_TRUE(name.find("weight_mask") == std::string::npos || name.find(".c") != std::string::npos ||
                  name.rfind("stem.0", 0) == 0)
          << name;
  }
}

TEST_F(AlgorithmApps, PddNarrowModelIsAnOrdinaryCheckpoint) {
  TempDir t;
  const std::string out = t.path + "/pdd";
  RunResult r = run_app("sparrow-pdd", cat(kData, {"--teacher-checkpoint", teacher(), "--student", "resnet8",
                                                   "--search-epochs", "2", "--finetune-epochs", "1", "--search-lr", "0.05",
                                                   "--search-schedule", "cosine", "--finetune-schedule", "cosine",
                                                   "--val-fraction", "0.25", "--inherit-bn", "--out", out}),
                        t.path);
  ASSERT_EQ(r.code, 0) << r.err;
  auto s = read_json(out + "/summary.json");
  ASSERT_TRUE(s.contains("gates"));
  EXPECT_EQ(s["gates"].size(), 3u) << "ResNet-8: one gate per basic block";
  EXPECT_TRUE(s.contains("unpruned_student_test_accuracy"));
  std::vector<int> after = s["widths_after"];
  // Each gate's record names it and lists its kept channels; their count is the narrowed block's width.
  for (size_t k = 0; k < s["gates"].size(); ++k) {
    EXPECT_EQ(s["gates"][k]["gate"], "blocks." + std::to_string(k) + ".gate");
    EXPECT_EQ(s["gates"][k]["kept"].get<size_t>(), s["gates"][k]["channels"].size());
    EXPECT_EQ(s["gates"][k]["kept"].get<int>(), after.at(k + 1)) << "gate " << k;
  }
  // sparrow-eval and sparrow-train load the narrowed model from its metadata, without knowing it was pruned.
  RunResult ev = run_app("sparrow-eval", cat(kData, {out + "/final.safetensors"}), t.path);
  EXPECT_EQ(ev.code, 0) << ev.err;
  RunResult tr = run_app("sparrow-train", cat(kData, {"--out", out + "/finetune", "--resume", "--epochs", "2"}), t.path);
  EXPECT_EQ(tr.code, 0) << tr.err;
  StFile f = read_safetensors(out + "/finetune/train.safetensors");
  EXPECT_EQ(f.metadata.at("epoch"), "2");
  std::string w;
  for (size_t i = 0; i < after.size(); ++i) w += (i ? "," : "") + std::to_string(after[i]);
  EXPECT_EQ(f.metadata.at("widths"), w);
}
