// sparrow-bench-train-step: images/s of one SGD training step (forward + backward + update) on
// random input (CIFAR-shaped 3x32x32 unless --input, e.g. 1x28x28 as Fashion-MNIST), one JSON line per
// configuration in the shape of shared/tools/torch_baseline.py, plus an optional per-op breakdown
// (--breakdown).
// Sparsity > 0 applies a global magnitude mask to conv and linear weights (as torch.nn.utils.prune does),
// unstructured or in b×b tiles of the GEMM view (--granularity block:32: the BSR kernels train those layers);
// --scope layer prunes each layer to the same sparsity (global block pruning of a fresh VGG-11 at 0.9 would
// leave its large-fan-in layers, whose initial weights are the smallest, one kept weight each).
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "engine/base/nvtx.h"
#include "kernels/gemm/gemm.h"
#include "engine/optim.h"
#include "compress/criteria.h"
#include "compress/mask.h"
#include "engine/sparse.h"
#include "models/models.h"

using namespace sparrow;

namespace {
// Global magnitude pruning of conv and linear weights (what torch.nn.utils.prune.global_unstructured with
// L1 does); then either fixed-pattern sparse layers (the optimizer is built afterwards: nnz-sized state)
// or dense weights held by optimizer masks (the reference path, PyTorch's situation).
std::unique_ptr<Sgd> prune_and_make_optimizer(Model& m, double sparsity, const std::string& kernels,
                                              const MaskGranularity& granularity, Scope scope) {
  const SgdConfig cfg{0.1, 0.9, 0.0, 5e-4, false};
  if (sparsity == 0) return std::make_unique<Sgd>(m.parameters(), cfg);
  auto params = prunable_params(m);
  PruneConfig pc;
  pc.sparsity = sparsity;
  pc.granularity = granularity;
  pc.scope = scope;
  // Global magnitude pruning of a fresh VGG at >= 95% would empty its large-fan-in layers (PyTorch's global
  // L1 leaves them all-zero and computes them densely); such a layer keeps its largest weight here.
  pc.min_keep = true;
  PruneResult pr = prune(params, score_magnitude(params), pc);
  apply_masks(params, pr.masks);
  if (kernels == "off") {
    auto opt = std::make_unique<Sgd>(m.parameters(), cfg);
    enforce_masks(*opt, params, pr.masks);
    return opt;
  }
  set_sparse_kernel_mode(parse_sparse_kernel_mode(kernels));
  make_sparse(params, pr.masks);
  return std::make_unique<Sgd>(m.parameters(), cfg);
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sparrow-bench-train-step: images/s of a training step on random images (CIFAR-shaped by "
               "default), JSON lines"};
  std::string model = "resnet20";
  int batch = 128, threads = 2, steps = 8, warmup = 2, classes = 10;
  std::vector<double> sparsities{0.0};
  bool breakdown = false;
  std::string device_name_opt = "cpu";
  std::string kernels = "auto";
  std::string granularity = "unstructured";
  std::string scope = "global";
  double crossover = -1;
  std::string input = "3x32x32";
  app.add_option("--model", model, "model name")->capture_default_str();
  app.add_option("--batch", batch, "batch size")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "OpenMP threads")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->capture_default_str();
  app.add_option("--input", input, "image shape CxHxW: 3x32x32 (CIFAR) or 1x28x28 (Fashion-MNIST, the apps' default)")
      ->capture_default_str();
  app.add_option("--sparsity", sparsities, "fractions of conv/linear weights masked to zero")->expected(1, -1);
  app.add_flag("--breakdown", breakdown, "also print the time per op (inclusive, ms per step)");
  app.add_option("--device", device_name_opt, "cpu, cuda or auto")->capture_default_str();
  app.add_option("--sparse-kernels", kernels, "auto, on (direct sparse conv) or off (dense weights + masks)")
      ->capture_default_str();
  app.add_option("--granularity", granularity, "mask granularity: unstructured, block:16, block:32, ...")
      ->capture_default_str();
  app.add_option("--scope", scope, "global or layer (top-k over all prunable weights or per layer)")
      ->capture_default_str();
  app.add_option("--sparse-crossover", crossover,
                 "with --sparse-kernels auto: the density at or below which every conv layer takes the sparse "
                 "kernel (default: the measured per-shape table, engine/sparse.cpp)")
      ->check(CLI::Range(0.0, 1.0));
  CLI11_PARSE(app, argc, argv);
  try {
    omp_set_num_threads(threads);
    if (crossover >= 0) set_sparse_kernel_crossover(crossover);
    const MaskGranularity gran = parse_granularity(granularity);
    const Scope prune_scope = parse_scope(scope);
    const Device dev = parse_device(device_name_opt);
    int ic = 0, ih = 0, iw = 0;
    char tail = 0;
    SPARROW_CHECK(std::sscanf(input.c_str(), "%dx%dx%d%c", &ic, &ih, &iw, &tail) == 3 && ic > 0 && ih > 0 && iw > 0,
                  "--input: expected CxHxW with positive sizes (e.g. 1x28x28), got '", input, "'");
    for (double s : sparsities) {
      SPARROW_CHECK(s >= 0 && s < 1, "--sparsity ", s, " outside [0, 1)");
      ModelPtr m = make_model({model, classes, ic, {}, ""}, 0);
      m->train();
      std::unique_ptr<Sgd> optp = prune_and_make_optimizer(*m, s, kernels, gran, prune_scope);  // on the host, before the move
      Sgd& opt = *optp;
      m->to(dev);
      Rng rng(0);
      Tensor x = Tensor::randn({batch, ic, ih, iw}, rng);
      Tensor y = Tensor::empty({batch}, DType::I64);
      for (int i = 0; i < batch; ++i) y.data<int64_t>()[i] = int64_t(rng.below(uint64_t(classes)));
      x = x.to(dev);
      y = y.to(dev);
      double t0 = 0;
      for (int i = 0; i < warmup + steps; ++i) {
        if (i == warmup) {
          cuda_synchronize();
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
      cuda_synchronize();
      const double dt = profiler_now() - t0;
      profiler_enable(false);
      nlohmann::json j{{"engine", "sparrow"}, {"model", model}, {"sparsity", s}, {"batch", batch}, {"input", input},
                       {"threads", threads}, {"device", device_name(dev)}, {"sparse_kernels", s > 0 ? kernels : "none"},
                       {"granularity", s > 0 ? gran.str() : "none"},
                       {"scope", s > 0 ? scope : "none"},
                       {"sparse_crossover", crossover >= 0 ? nlohmann::json(crossover) : nlohmann::json("table")},
                       {"img_per_s", std::round(10.0 * steps * batch / dt) / 10.0}};
      if (dev == Device::CPU) j["blas"] = blas_info();  // the dense layers' GEMMs
      std::printf("%s\n", j.dump().c_str());
      if (breakdown) {
        nlohmann::json b{{"engine", "sparrow"}, {"model", model}, {"sparsity", s}, {"breakdown_ms_per_step", {}}};
        // Each conv layer's density and the kernel it ran (the crossover's choice; "direct (all kept)": a dense
        // layer on the sparse kernel with its full pattern).
        nlohmann::json layers = nlohmann::json::array();
        for (auto& [name, mod] : m->named_modules())
          if (auto* conv = dynamic_cast<Conv2d*>(mod))
            layers.push_back({{"layer", name},
                              {"density", conv->is_sparse() ? std::round(1e3 * conv->sparse().density()) / 1e3 : 1.0},
                              {"kernel", conv->uses_bsr_kernel(dev)             ? "bsr"
                                         : conv->uses_sparse_kernel(dev)        ? "sparse"
                                         : conv->uses_direct_dense_kernel(dev) ? "direct (all kept)"
                                                                                : "dense"}});
        b["conv_layers"] = layers;
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
