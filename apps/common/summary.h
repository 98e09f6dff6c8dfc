// summary.json and the per-layer table (DESIGN.md): test_accuracy, sparsity, params, nonzero_params,
// macs, wall_seconds and layers [{name, shape, params, nonzeros, macs}], counted at one input image.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "apps/common/data.h"
#include "compress/accounting.h"

namespace sparrow {

nlohmann::json make_summary(Model& model, const DataBundle& data, double test_accuracy, double wall_seconds,
                            const PrunableSpec& prunable = {});
nlohmann::json summary_from_costs(const CostReport& c, double test_accuracy, double wall_seconds);
// A fixed-width table of the layers for terminals.
std::string format_layer_table(const CostReport& c);

}  // namespace sparrow
