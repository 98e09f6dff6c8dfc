// Sweep reports for the algorithm apps: one row per (method, sparsity, seed) run, written as results.csv,
// a markdown table of mean ± std over seeds (results.md), and an SVG plot of test accuracy against
// sparsity, one line per method (accuracy.svg).
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace sparrow {

struct SweepRow {
  std::string method;
  double sparsity = 0;  // requested
  uint64_t seed = 0;
  double achieved_sparsity = 0;
  double test_accuracy = 0;
  double wall_seconds = 0;
  std::string error;  // non-empty: this cell failed (the one-line message); left out of the means
};

struct SweepSummary {
  std::string method;
  double sparsity = 0;
  double mean = 0, std = 0;  // test accuracy over seeds (std: sample std, 0 with one seed)
  int seeds = 0;
};

std::vector<SweepSummary> summarize(const std::vector<SweepRow>& rows);
std::string sweep_csv(const std::vector<SweepRow>& rows);
std::string sweep_markdown(const std::vector<SweepRow>& rows);  // methods as rows, sparsities as columns
std::string sweep_svg(const std::vector<SweepRow>& rows, const std::string& title);
// Writes results.csv, results.md and accuracy.svg into dir (atomically).
void write_sweep_reports(const std::string& dir, const std::vector<SweepRow>& rows, const std::string& title);

// Runs one sweep cell. An error (e.g. a sparsity that would empty a layer under this seed's scores) is
// printed, recorded in row.error, and the sweep goes on with the next cell.
void run_sweep_cell(const std::string& app, SweepRow& row, const std::function<void()>& run);
// Prints the table and where the reports are; returns the exit code: 0, or 1 when a cell failed (named).
int finish_sweep(const std::string& app, const std::string& out, const std::vector<SweepRow>& rows);

// Comma-separated lists for --sweep options.
std::vector<double> parse_double_list(const std::string& s, const std::string& what);
std::vector<std::string> parse_string_list(const std::string& s);

}  // namespace sparrow
