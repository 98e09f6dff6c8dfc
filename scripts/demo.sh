#!/usr/bin/env bash
# The demo: installs what is missing, builds, and trains ResNet-8 on Fashion-MNIST for a couple of minutes
# on CPU, printing test accuracy. Env: BUILD_DIR (default build), DEMO_OUT (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${BUILD_DIR:-build}
out=${DEMO_OUT:-runs/demo}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target sparrow-train
echo
echo "== dense ResNet-8 on Fashion-MNIST (60k train / 10k test images, 3 epochs, 2 CPU threads)"
"$build/bin/sparrow-train" --dataset fashion-mnist --model resnet8 --epochs 3 --threads 2 --out "$out/train"
