#!/usr/bin/env bash
# Downloads (never installs) the Debian packages a GPU machine without network needs to build sparrow,
# into .deps/debs (git-ignored; it travels with the working tree to the GPU machine, where
# scripts/gpu-check.sh unpacks it into a private prefix). Run here, on a Debian machine with apt access.
# Usage: scripts/fetch-gpu-debs.sh [--clean]   (--clean empties .deps/debs first)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.deps/debs

# Build-time packages (headers, static/shared libraries, CMake configs) and the runtime libraries they
# pull in. A generic Linux with the CUDA toolkit, CMake, Ninja and a compiler may lack any of them, so the
# list is generous; gpu-check.sh only uses a runtime library when the system has none.
pkgs=(
  libopenblas-openmp-dev libopenblas0-openmp   # CBLAS (OpenMP flavour): headers, libopenblas.so
  libgfortran5 libquadmath0 libgomp1           # OpenBLAS's runtime needs (fallbacks only)
  libgtest-dev googletest                      # GoogleTest: prebuilt libgtest.a + sources (rebuilt if the .a does not link)
  libbenchmark-dev libbenchmark1debian         # Google Benchmark
  libcli11-dev nlohmann-json3-dev              # header-only
  libstb-dev libstb0                           # stb_image (header used by the Tiny-ImageNet reader)
  zlib1g-dev zlib1g                            # Fashion-MNIST .gz
)

case "${1:-}" in
  --clean) rm -rf "$dest" ;;
  "") ;;
  -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
  *) echo "fetch-gpu-debs.sh: unknown option '$1' (expected --clean)" >&2; exit 2 ;;
esac
command -v apt-get >/dev/null || { echo "fetch-gpu-debs.sh: needs apt-get (a Debian/Ubuntu machine)" >&2; exit 1; }
mkdir -p "$dest"
# apt-get download writes into the current directory and needs the package lists.
if ! apt-cache show libgtest-dev >/dev/null 2>&1; then
  echo "fetch-gpu-debs: package lists missing, running apt-get update"
  apt-get update -qq
fi
(cd "$dest" && apt-get download -q -o APT::Sandbox::User=root "${pkgs[@]}")
echo "fetch-gpu-debs: $(ls "$dest"/*.deb | wc -l) packages, $(du -sh "$dest" | cut -f1) in $dest"
ls "$dest"
