#!/usr/bin/env bash
# The demo: installs what is missing, builds, then on Fashion-MNIST (CPU, 2 threads):
#   1. trains ResNet-8 densely and prints its test accuracy;
#   2. prunes ResNet-8 at 90% and 95% with EPSD and with SNIP, trains each sparse net with DLB
#      self-distillation, and prints the comparison table (runs/demo/epsd/results.md, accuracy.svg).
# Short runs on data subsets so the whole demo takes a few minutes after the build.
# Env: BUILD_DIR (default build), DEMO_OUT (default runs/demo), DEMO_THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${BUILD_DIR:-build}
out=${DEMO_OUT:-runs/demo}
threads=${DEMO_THREADS:-2}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target sparrow-train sparrow-epsd
rm -rf "$out"
start=$(date +%s)
echo
echo "== 1/2 dense ResNet-8 on Fashion-MNIST (20k training images, 2 epochs)"
"$build/bin/sparrow-train" --dataset fashion-mnist --model resnet8 --epochs 2 --limit-train 20000 \
  --augment none --threads "$threads" --out "$out/dense"
echo
echo "== 2/2 EPSD vs SNIP, each + DLB self-distillation, at 90% and 95% sparsity (8k images, 2 epochs)"
"$build/bin/sparrow-epsd" --dataset fashion-mnist --model resnet8 --sweep \
  --sweep-methods epsd+dlb,snip+dlb --sweep-sparsities 0.9,0.95 --sweep-seeds 0 \
  --epochs 2 --limit-train 8000 --batch-size 64 --lr 0.05 --nesterov --augment none \
  --threads "$threads" --quiet --out "$out/epsd"
echo "demo finished in $(( $(date +%s) - start ))s; run folders under $out"
