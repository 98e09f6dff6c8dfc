// Summary and per-layer table from compress/accounting's cost report.
#include "apps/common/summary.h"

#include <cstdio>

namespace sparrow {

nlohmann::json summary_from_costs(const CostReport& c, double test_accuracy, double wall_seconds) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : c.layers)
    layers.push_back({{"name", l.name}, {"type", l.type}, {"shape", l.shape}, {"params", l.params},
                      {"nonzeros", l.nonzeros}, {"macs", l.macs}, {"dense_macs", l.dense_macs}});
  return {{"test_accuracy", test_accuracy}, {"sparsity", c.sparsity},       {"params", c.params},
          {"nonzero_params", c.nonzeros},   {"macs", c.macs},               {"dense_macs", c.dense_macs},
          {"wall_seconds", wall_seconds},   {"layers", layers}};
}

nlohmann::json make_summary(Model& model, const DataBundle& data, double test_accuracy, double wall_seconds,
                            const PrunableSpec& prunable) {
  const CostReport c = count_costs(model, {1, data.channels, data.height, data.width}, prunable);
  return summary_from_costs(c, test_accuracy, wall_seconds);
}

std::string format_layer_table(const CostReport& c) {
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-28s %-12s %-18s %12s %12s %14s\n", "layer", "type", "shape", "params",
                "nonzeros", "MACs");
  out += buf;
  for (const auto& l : c.layers) {
    std::snprintf(buf, sizeof buf, "%-28s %-12s %-18s %12lld %12lld %14lld\n", l.name.c_str(), l.type.c_str(),
                  shape_str(l.shape).c_str(), (long long)l.params, (long long)l.nonzeros, (long long)l.macs);
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "%-28s %-12s %-18s %12lld %12lld %14lld\n", "total", "", "", (long long)c.params,
                (long long)c.nonzeros, (long long)c.macs);
  out += buf;
  std::snprintf(buf, sizeof buf, "sparsity of prunable weights: %.4f (%lld of %lld nonzero)\n", c.sparsity,
                (long long)c.prunable_nonzeros, (long long)c.prunable);
  out += buf;
  return out;
}

}  // namespace sparrow
