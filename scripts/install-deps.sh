#!/usr/bin/env bash
# Installs the Debian packages sparrow's build, tests and demo need; idempotent (only missing packages).
# Not root: prints the apt-get command instead. --with-torch adds python3-torch (the PyTorch CPU peer for
# benchmarks and for regenerating tests/fixtures; the tests themselves never need it).
set -euo pipefail

pkgs=(cmake ninja-build g++ pkg-config
      libopenblas-openmp-dev   # CBLAS sgemm, OpenMP flavour (shares the thread pool with our OpenMP code)
      libgtest-dev libbenchmark-dev
      libcli11-dev             # app options
      nlohmann-json3-dev       # config.json / metrics.jsonl / summary.json, safetensors headers
      libstb-dev               # JPEG decoding for Tiny-ImageNet
      zlib1g-dev               # Fashion-MNIST .gz
      dataset-fashion-mnist)   # the real-data default (/usr/share/datasets/fashion-mnist)
for arg in "$@"; do
  case "$arg" in
    --with-torch) pkgs+=(python3-torch) ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "install-deps.sh: unknown option '$arg' (expected --with-torch)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages; run as root:"
  echo "  apt-get update && $cmd"
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends ${missing[*]} >/dev/null
echo "install-deps: done"
