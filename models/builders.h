// Internal to models/: the per-family builders the registry dispatches to.
#pragma once
#include <string>
#include <vector>

#include "models/models.h"

namespace sparrow {

// VGG conv widths and the conv indices followed by a max-pool; empty for unknown names.
struct VggCfg {
  std::vector<int> widths, pools_after;
};
VggCfg vgg_cfg(const std::string& name);

ModelPtr make_resnet18(ModelSpec spec, Rng& rng);
ModelPtr make_vgg(ModelSpec spec, Rng& rng);

}  // namespace sparrow
