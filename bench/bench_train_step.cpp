// sparrow-bench-train-step: images/s of one SGD training step (forward + backward + update) on
// CIFAR-shaped random input, one JSON line per configuration in the shape of
// shared/tools/torch_baseline.py, plus an optional per-op breakdown (--breakdown).
// Sparsity > 0 applies a global magnitude mask to conv and linear weights (as torch.nn.utils.prune does).
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "engine/base/nvtx.h"
#include "engine/optim.h"
#include "models/models.h"

using namespace sparrow;

namespace {
void apply_global_magnitude_mask(Model& m, Sgd& opt, double sparsity) {
  std::vector<Tensor> ws;
  std::vector<float> all;
  for (auto& [name, p] : m.named_parameters())
    if (p.dim() == 4 || (p.dim() == 2 && name.find("weight") != std::string::npos)) {
      ws.push_back(p);
      for (float v : p.to_vector<float>()) all.push_back(std::fabs(v));
    }
  const size_t k = size_t(sparsity * double(all.size()));
  if (k == 0) return;
  std::nth_element(all.begin(), all.begin() + long(k - 1), all.end());
  const float thr = all[k - 1];
  for (auto& w : ws) {
    Tensor mask = Tensor::empty(w.shape());
    const float* pw = w.data<float>();
    for (int64_t i = 0; i < w.numel(); ++i) mask.data<float>()[i] = std::fabs(pw[i]) > thr ? 1.f : 0.f;
    opt.set_mask(w, mask);
  }
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sparrow-bench-train-step: images/s of a CIFAR training step, JSON lines"};
  std::string model = "resnet20";
  int batch = 128, threads = 2, steps = 8, warmup = 2, classes = 10;
  std::vector<double> sparsities{0.0};
  bool breakdown = false;
  app.add_option("--model", model, "model name")->capture_default_str();
  app.add_option("--batch", batch, "batch size")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "OpenMP threads")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->capture_default_str();
  app.add_option("--sparsity", sparsities, "fractions of conv/linear weights masked to zero")->expected(1, -1);
  app.add_flag("--breakdown", breakdown, "also print the time per op (inclusive, ms per step)");
  CLI11_PARSE(app, argc, argv);
  try {
    omp_set_num_threads(threads);
    for (double s : sparsities) {
      SPARROW_CHECK(s >= 0 && s < 1, "--sparsity ", s, " outside [0, 1)");
      ModelPtr m = make_model({model, classes, 3, {}, ""}, 0);
      m->train();
      Sgd opt(m->parameters(), {0.1, 0.9, 0.0, 5e-4, false});
      apply_global_magnitude_mask(*m, opt, s);
      Rng rng(0);
      Tensor x = Tensor::randn({batch, 3, 32, 32}, rng);
      Tensor y = Tensor::empty({batch}, DType::I64);
      for (int i = 0; i < batch; ++i) y.data<int64_t>()[i] = int64_t(rng.below(uint64_t(classes)));
      double t0 = 0;
      for (int i = 0; i < warmup + steps; ++i) {
        if (i == warmup) {
          t0 = profiler_now();
          profiler_reset();
          profiler_enable(breakdown);
        }
        SPARROW_NVTX_RANGE("train_step");
        opt.zero_grad();
        Tensor loss;
        {
          SPARROW_NVTX_RANGE("forward");
          loss = cross_entropy(m->forward(x), y);
        }
        loss.backward();
        opt.step();
      }
      const double dt = profiler_now() - t0;
      profiler_enable(false);
      nlohmann::json j{{"engine", "sparrow"}, {"model", model}, {"sparsity", s}, {"batch", batch},
                       {"threads", threads}, {"img_per_s", std::round(10.0 * steps * batch / dt) / 10.0}};
      std::printf("%s\n", j.dump().c_str());
      if (breakdown) {
        nlohmann::json b{{"engine", "sparrow"}, {"model", model}, {"sparsity", s}, {"breakdown_ms_per_step", {}}};
        for (auto& [name, e] : profiler_snapshot())
          b["breakdown_ms_per_step"][name] = std::round(1e4 * e.seconds / steps) / 10.0;
        std::printf("%s\n", b.dump().c_str());
      }
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sparrow-bench-train-step: %s\n", e.what());
    return 1;
  }
  return 0;
}
