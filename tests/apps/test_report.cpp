// Sweep reports: means and sample std over seeds, failed cells left out of the means but shown, CSV quoting,
// and run_sweep_cell turning a cell's error into a recorded failure instead of ending the sweep.
#include <gtest/gtest.h>

#include <cmath>

#include "apps/common/report.h"
#include "engine/base/error.h"

using namespace sparrow;

namespace {
std::vector<SweepRow> grid() {
  std::vector<SweepRow> rows;
  auto add = [&](const char* m, double s, uint64_t seed, double acc, const char* err = "") {
    SweepRow r;
    r.method = m, r.sparsity = s, r.seed = seed;
    r.test_accuracy = acc, r.achieved_sparsity = s, r.wall_seconds = 1.5, r.error = err;
    rows.push_back(r);
  };
  add("epsd+dlb", 0.9, 0, 0.60);
  add("epsd+dlb", 0.9, 1, 0.70);
  add("epsd+dlb", 0.9, 2, 0.80);
  add("epsd+none", 0.98, 0, 0.30);
  add("epsd+none", 0.98, 1, 0.0, "pruning removes every weight of layer \"c2\", or pass --min-keep");
  add("snip+dlb", 0.98, 0, 0.0, "boom");
  return rows;
}
}  // namespace

TEST(SweepReport, MeansSkipFailedCells) {
  const auto sum = summarize(grid());
  ASSERT_EQ(sum.size(), 2u);  // snip+dlb at 98% has no successful seed
  EXPECT_EQ(sum[0].method, "epsd+dlb");
  EXPECT_EQ(sum[0].seeds, 3);
  EXPECT_NEAR(sum[0].mean, 0.70, 1e-12);
  EXPECT_NEAR(sum[0].std, 0.10, 1e-12);  // sample std of 0.6, 0.7, 0.8
  EXPECT_EQ(sum[1].method, "epsd+none");
  EXPECT_EQ(sum[1].seeds, 1);
  EXPECT_NEAR(sum[1].mean, 0.30, 1e-12);
}

TEST(SweepReport, CsvQuotesErrorsAndMarkdownNamesFailures) {
  const std::string csv = sweep_csv(grid());
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "method,sparsity,seed,achieved_sparsity,test_accuracy,wall_seconds,error");
  EXPECT_NE(csv.find("epsd+dlb,0.9000,1,0.900000,0.700000,1.5,\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",\"pruning removes every weight of layer \"\"c2\"\", or pass --min-keep\"\n"), std::string::npos)
      << csv;
  const std::string md = sweep_markdown(grid());
  EXPECT_NE(md.find("| epsd+dlb | 70.00 ± 10.00 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| snip+dlb |"), std::string::npos) << md;
  EXPECT_NE(md.find(" failed |"), std::string::npos) << md;
  EXPECT_NE(md.find("Failed: snip+dlb at 98.0%, seed 0 (left out of the mean): boom"), std::string::npos) << md;
}

TEST(SweepReport, ACellErrorIsRecordedAndTheExitCodeSaysSo) {
  std::vector<SweepRow> rows(2);
  rows[0].method = rows[1].method = "epsd+dlb";
  rows[1].seed = 1;
  run_sweep_cell("test", rows[0], [&] { rows[0].test_accuracy = 0.5; });
  run_sweep_cell("test", rows[1], [] { SPARROW_FAIL("layer 'fc' would be empty"); });
  EXPECT_TRUE(rows[0].error.empty());
  EXPECT_EQ(rows[0].test_accuracy, 0.5);
  EXPECT_EQ(rows[1].error, "layer 'fc' would be empty");
  testing::internal::CaptureStdout();
  testing::internal::CaptureStderr();
  const int failed_code = finish_sweep("test", "/nonexistent", rows);
  rows.pop_back();
  const int ok_code = finish_sweep("test", "/nonexistent", rows);
  testing::internal::GetCapturedStdout();
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(failed_code, 1);
  EXPECT_EQ(ok_code, 0);
  EXPECT_NE(err.find("test: 1 of 2 sweep runs failed"), std::string::npos) << err;
}
