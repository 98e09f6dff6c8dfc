#!/usr/bin/env bash
# The test command: install what is missing, configure (CUDA on when nvcc is found), build, run ctest.
# Usage: scripts/test.sh [extra cmake args, e.g. -DSPARROW_CUDA=OFF]   env: BUILD_DIR (default build),
# CTEST_ARGS (e.g. "-L unit" or "-LE slow").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${BUILD_DIR:-build}
jobs=$(nproc)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build" -j "$jobs"
cd "$build"
# Each test binary uses at most two OpenMP threads; run two binaries at a time on two cores. Threads that
# wait sleep instead of spinning: with more threads than cores, spinning barriers starve the other test.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
# shellcheck disable=SC2086
ctest --output-on-failure -j 2 --timeout 900 ${CTEST_ARGS:-}
