#!/usr/bin/env bash
# Memory and undefined-behaviour checks on the CPU build.
#   scripts/sanitize.sh [BUILD_DIR]      AddressSanitizer + UndefinedBehaviorSanitizer build (default
#                                        build-asan; CUDA and benchmarks off, -O1 -g1), then the unit and
#                                        parity tests (ctest -L "unit|parity" -LE slow); any report fails.
#   scripts/sanitize.sh --valgrind [DIR] A short training run under valgrind's leak checker, on a build
#                                        without -march=native (default build-valgrind): valgrind cannot
#                                        run AVX-512 code. Definite and indirect leaks and invalid memory
#                                        accesses fail; "still reachable" blocks (OpenMP/OpenBLAS thread
#                                        pools alive at exit) do not.
# Environment: JOBS (build jobs, default nproc), CTEST_ARGS (more ctest arguments), CXX (compiler).
set -euo pipefail

usage() { sed -n '2,11p' "$0"; }
mode=asan
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --valgrind) mode=valgrind; shift ;;
esac
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-$(nproc)}
t0=$SECONDS

if [ "$mode" = valgrind ]; then
  build=$(realpath -m "${1:-build-valgrind}")
  command -v valgrind >/dev/null || { echo "sanitize.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
  mkdir -p "$build"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPARROW_CUDA=OFF -DSPARROW_NATIVE=OFF \
    -DSPARROW_BUILD_TESTS=OFF -DSPARROW_BUILD_BENCH=OFF >"$build/configure.log" 2>&1 ||
    { tail -20 "$build/configure.log"; exit 1; }
  ninja -C "$build" -j "$jobs" sparrow-train >/dev/null
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  echo "sanitize.sh: valgrind --leak-check=full on a 1-epoch training run (takes a minute or two)"
  set +e
  OMP_NUM_THREADS=1 valgrind --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --error-exitcode=3 --num-callers=30 \
    "$build/bin/sparrow-train" --dataset synthetic --limit-train 64 --limit-test 32 --epochs 1 --batch-size 16 \
    --threads 1 --out "$out/run" --quiet >"$out/valgrind.log" 2>&1
  rc=$?
  set -e
  grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|Invalid|uninitialised" \
    "$out/valgrind.log" | sed 's/^==[0-9]*== */  /' | sort | uniq -c | sort -rn | head -20
  echo "sanitize.sh: valgrind exit $rc ($((SECONDS - t0)) s)"
  [ $rc -eq 0 ] || { echo "sanitize.sh: valgrind found errors or leaks; full log:"; cat "$out/valgrind.log"; exit 1; }
  exit 0
fi

build=$(realpath -m "${1:-build-asan}")
logs="$build/sanitize-logs"
mkdir -p "$logs"
# UB checks stay recoverable so scripts/ubsan.supp can silence third-party test-only code; halt_on_error
# below makes every other report fatal.
san="-fsanitize=address,undefined -fno-omit-frame-pointer"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSPARROW_CUDA=OFF -DSPARROW_BUILD_TESTS=ON \
  -DSPARROW_BUILD_BENCH=OFF -DCMAKE_CXX_FLAGS_DEBUG= -DCMAKE_C_FLAGS_DEBUG= \
  "-DCMAKE_CXX_FLAGS=-O1 -g1 $san" "-DCMAKE_C_FLAGS=-O1 -g1 $san" \
  "-DCMAKE_EXE_LINKER_FLAGS=$san" "-DCMAKE_SHARED_LINKER_FLAGS=$san" >"$logs/configure.log" 2>&1 ||
  { tail -20 "$logs/configure.log"; exit 1; }
echo "sanitize.sh: building $build with $jobs jobs"
# Only the unit and parity test binaries and the apps they run (target check-targets); -g1 (line tables, no
# variable info) is enough for the reports' stack traces: 345 s on two cores against 717 s for all targets
# with -g.
# Test discovery runs each test binary at build time: the sanitizer options below must hold then too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:suppressions=$root/scripts/ubsan.supp}
ninja -C "$build" -j "$jobs" check-targets >"$logs/build.log" 2>&1 || { grep -E "error|FAILED" "$logs/build.log" | head -30; exit 1; }
t_build=$((SECONDS - t0))
echo "sanitize.sh: build done in ${t_build} s; running ctest -L \"unit|parity\" -LE slow"
cd "$build"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
set +e
# shellcheck disable=SC2086
ctest -L "unit|parity" -LE slow --output-on-failure -j 2 --timeout 1800 ${CTEST_ARGS:-} >"$logs/ctest.log" 2>&1
rc=$?
set -e
grep -E "tests passed|tests failed|Total Test time" "$logs/ctest.log" || true
sed -n '/The following tests FAILED/,$p' "$logs/ctest.log"
grep -m5 -E "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:" "$logs/ctest.log" || true
echo "sanitize.sh: build ${t_build} s, tests $((SECONDS - t0 - t_build)) s, total $((SECONDS - t0)) s (rc $rc; log $logs/ctest.log)"
exit $rc
