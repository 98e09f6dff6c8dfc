// Sweep tables and the SVG plot (hand-written SVG: no plotting dependency).
#include "apps/common/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "apps/common/options.h"
#include "engine/base/error.h"
#include "engine/io/atomic_file.h"

namespace sparrow {

std::vector<SweepSummary> summarize(const std::vector<SweepRow>& rows) {
  std::map<std::pair<std::string, double>, std::vector<double>> groups;
  std::vector<std::pair<std::string, double>> order;
  for (const auto& r : rows) {
    if (!r.error.empty()) continue;
    auto key = std::make_pair(r.method, r.sparsity);
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(r.test_accuracy);
  }
  std::vector<SweepSummary> out;
  for (const auto& key : order) {
    const auto& v = groups[key];
    SweepSummary s{key.first, key.second, 0, 0, int(v.size())};
    for (double a : v) s.mean += a / double(v.size());
    if (v.size() > 1) {
      double ss = 0;
      for (double a : v) ss += (a - s.mean) * (a - s.mean);
      s.std = std::sqrt(ss / double(v.size() - 1));
    }
    out.push_back(s);
  }
  return out;
}

std::string sweep_csv(const std::vector<SweepRow>& rows) {
  std::ostringstream os;
  os << "method,sparsity,seed,achieved_sparsity,test_accuracy,wall_seconds,error\n";
  char buf[256];
  for (const auto& r : rows) {
    std::snprintf(buf, sizeof buf, "%s,%.4f,%llu,%.6f,%.6f,%.1f,", r.method.c_str(), r.sparsity,
                  (unsigned long long)r.seed, r.achieved_sparsity, r.test_accuracy, r.wall_seconds);
    os << buf;
    if (!r.error.empty()) {  // quoted, as RFC 4180: embedded quotes doubled
      os << '"';
      for (char ch : r.error) os << (ch == '"' ? "\"\"" : std::string(1, ch));
      os << '"';
    }
    os << "\n";
  }
  return os.str();
}

namespace {
// In first-seen order (methods) or ascending (sparsities), over summaries or rows.
template <typename Item>
std::vector<double> sparsities_of(const std::vector<Item>& s) {
  std::set<double> set;
  for (auto& x : s) set.insert(x.sparsity);
  return {set.begin(), set.end()};
}
template <typename Item>
std::vector<std::string> methods_of(const std::vector<Item>& s) {
  std::vector<std::string> m;
  for (auto& x : s)
    if (std::find(m.begin(), m.end(), x.method) == m.end()) m.push_back(x.method);
  return m;
}
}  // namespace

std::string sweep_markdown(const std::vector<SweepRow>& rows) {
  const auto sum = summarize(rows);
  const auto sps = sparsities_of(rows);  // rows, not summaries: a cell where every seed failed still shows
  std::ostringstream os;
  char buf[128];
  os << "| method |";
  for (double s : sps) {
    std::snprintf(buf, sizeof buf, " %.1f%% |", 100 * s);
    os << buf;
  }
  os << "\n|---|";
  for (size_t i = 0; i < sps.size(); ++i) os << "---|";
  os << "\n";
  for (const auto& m : methods_of(rows)) {
    os << "| " << m << " |";
    for (double s : sps) {
      auto it = std::find_if(sum.begin(), sum.end(), [&](auto& x) { return x.method == m && x.sparsity == s; });
      const bool failed = std::any_of(rows.begin(), rows.end(), [&](const SweepRow& r) {
        return r.method == m && r.sparsity == s && !r.error.empty();
      });
      if (it == sum.end()) {
        os << (failed ? " failed |" : " – |");
      } else if (it->seeds > 1) {
        std::snprintf(buf, sizeof buf, " %.2f ± %.2f |", 100 * it->mean, 100 * it->std);
        os << buf;
      } else {
        std::snprintf(buf, sizeof buf, " %.2f |", 100 * it->mean);
        os << buf;
      }
    }
    os << "\n";
  }
  os << "\nTest accuracy (%), mean ± sample std over seeds.\n";
  for (const auto& r : rows)
    if (!r.error.empty()) {
      std::snprintf(buf, sizeof buf, "%.1f%%, seed %llu", 100 * r.sparsity, (unsigned long long)r.seed);
      os << "\nFailed: " << r.method << " at " << buf << " (left out of the mean): " << r.error << "\n";
    }
  return os.str();
}

std::string sweep_svg(const std::vector<SweepRow>& rows, const std::string& title) {
  const auto sum = summarize(rows);
  const auto sps = sparsities_of(sum);
  const auto methods = methods_of(sum);
  const double W = 640, H = 420, L = 70, R = 170, T = 40, B = 60;
  double lo = 1, hi = 0;
  for (auto& s : sum) lo = std::min(lo, s.mean - s.std), hi = std::max(hi, s.mean + s.std);
  if (sum.empty()) lo = 0, hi = 1;
  const double pad = std::max(0.01, (hi - lo) * 0.1);
  lo = std::max(0.0, lo - pad), hi = std::min(1.0, hi + pad);
  if (hi <= lo) hi = lo + 0.01;
  // x: sparsities evenly spaced (the grids are geometric, 36..98%).
  auto xpos = [&](double s) {
    const auto it = std::find(sps.begin(), sps.end(), s);
    const double i = double(it - sps.begin());
    return sps.size() > 1 ? L + i * (W - L - R) / double(sps.size() - 1) : L + (W - L - R) / 2;
  };
  auto ypos = [&](double a) { return T + (hi - a) / (hi - lo) * (H - T - B); };
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  std::ostringstream os;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
                "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                W, H);
  os << buf;
  std::snprintf(buf, sizeof buf, "<text x=\"%.0f\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n",
                (W - R + L) / 2, title.c_str());
  os << buf;
  std::snprintf(buf, sizeof buf,
                "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n"
                "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n",
                L, H - B, W - R, H - B, L, T, L, H - B);
  os << buf;
  for (int i = 0; i <= 5; ++i) {
    const double a = lo + (hi - lo) * i / 5.0, y = ypos(a);
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                  "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n",
                  L, y, W - R, y, L - 6, y + 4, 100 * a);
    os << buf;
  }
  for (double s : sps) {
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.1f</text>\n", xpos(s),
                  H - B + 18, 100 * s);
    os << buf;
  }
  std::snprintf(buf, sizeof buf,
                "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">sparsity (%%)</text>\n"
                "<text transform=\"translate(18 %.0f) rotate(-90)\" text-anchor=\"middle\">test accuracy (%%)</text>\n",
                (W - R + L) / 2, H - 18, (H - B + T) / 2);
  os << buf;
  for (size_t mi = 0; mi < methods.size(); ++mi) {
    const char* c = colors[mi % 8];
    std::string pts;
    for (auto& s : sum)
      if (s.method == methods[mi]) {
        std::snprintf(buf, sizeof buf, "%.1f,%.1f ", xpos(s.sparsity), ypos(s.mean));
        pts += buf;
        std::snprintf(buf, sizeof buf,
                      "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>"
                      "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n",
                      xpos(s.sparsity), ypos(s.mean), c, xpos(s.sparsity), ypos(s.mean - s.std), xpos(s.sparsity),
                      ypos(s.mean + s.std), c);
        os << buf;
      }
    std::snprintf(buf, sizeof buf, "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"/>\n",
                  pts.c_str(), c);
    os << buf;
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%.0f\" y=\"%.0f\" width=\"14\" height=\"3\" fill=\"%s\"/>"
                  "<text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
                  W - R + 12, T + 10 + 18.0 * double(mi), c, W - R + 30, T + 14 + 18.0 * double(mi), methods[mi].c_str());
    os << buf;
  }
  os << "</svg>\n";
  return os.str();
}

void write_sweep_reports(const std::string& dir, const std::vector<SweepRow>& rows, const std::string& title) {
  auto put = [&](const std::string& name, const std::string& text) {
    write_file_atomic(dir + "/" + name, text);
  };
  put("results.csv", sweep_csv(rows));
  put("results.md", sweep_markdown(rows));
  put("accuracy.svg", sweep_svg(rows, title));
}

std::vector<double> parse_double_list(const std::string& s, const std::string& what) {
  std::vector<double> out;
  for (const auto& item : parse_string_list(s)) {
    try {
      size_t used = 0;
      const double v = std::stod(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      SPARROW_FAIL(what, ": '", item, "' is not a number (in '", s, "')");
    }
  }
  SPARROW_CHECK(!out.empty(), what, ": empty list");
  return out;
}

std::vector<std::string> parse_string_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

void run_sweep_cell(const std::string& app, SweepRow& row, const std::function<void()>& run) {
  try {
    run();
  } catch (const Error& e) {
    row.error = user_message(e);
    std::fprintf(stderr, "%s: %s at sparsity %.4g, seed %llu failed (the sweep goes on): %s\n", app.c_str(),
                 row.method.c_str(), row.sparsity, (unsigned long long)row.seed, row.error.c_str());
  }
}

int finish_sweep(const std::string& app, const std::string& out, const std::vector<SweepRow>& rows) {
  std::printf("\n%s\nreports: %s/results.csv, results.md, accuracy.svg\n", sweep_markdown(rows).c_str(), out.c_str());
  const auto failed = std::count_if(rows.begin(), rows.end(), [](const SweepRow& r) { return !r.error.empty(); });
  if (failed == 0) return 0;
  std::fprintf(stderr, "%s: %ld of %zu sweep runs failed (listed in %s/results.md)\n", app.c_str(), long(failed),
               rows.size(), out.c_str());
  return 1;
}

}  // namespace sparrow
