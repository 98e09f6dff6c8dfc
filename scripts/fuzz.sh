#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) in a separate clang build and runs each one for N seconds on a
# copy of its committed seed corpus (tests/fuzz/corpus/<target>), one target at a time. Prints one line per
# target (executions, coverage, corpus size) and fails when any target crashes, leaks, times out or runs
# out of memory; the crashing input is kept under BUILD_DIR/fuzz-work/<target>/ and the command to
# reproduce it is printed.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 10)] [BUILD_DIR (default build-fuzz)]
# Environment: TARGETS (space-separated subset, default all five), JOBS (build jobs, default 1),
#   FUZZ_ARGS (more libFuzzer flags, e.g. "-max_len=65536"), SPARROW_FUZZ_JPEG_ORACLE=1 (fuzz_tiny_imagenet
#   also fails when stb_image cannot decode a JPEG that engine/data/jpeg_check.cpp accepted).
# Needs clang with libFuzzer (Debian: clang, libclang-rt-14-dev); installs them with apt when root.
set -euo pipefail

usage() { sed -n '2,12p' "$0"; }
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
secs=${1:-10}
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS_PER_TARGET must be a whole number, got '$secs'" >&2; exit 2; }
cd "$(dirname "$0")/.."
root=$(pwd)
build=$(realpath -m "${2:-build-fuzz}")
targets=${TARGETS:-"fuzz_cifar fuzz_idx fuzz_tiny_imagenet fuzz_safetensors fuzz_options"}
jobs=${JOBS:-1}

# ---------------------------------------------------------------- toolchain
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
have_libfuzzer() {
  command -v clang++ >/dev/null &&
    printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' >"$probe/p.cpp" &&
    clang++ -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" >/dev/null 2>&1
}
if ! have_libfuzzer; then
  pkgs="clang libclang-rt-14-dev"
  if [ "$(id -u)" -ne 0 ]; then
    echo "fuzz.sh: clang with libFuzzer is missing; run as root: apt-get update && apt-get install -y $pkgs" >&2
    exit 1
  fi
  echo "fuzz.sh: installing $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  have_libfuzzer || { echo "fuzz.sh: clang still cannot link -fsanitize=fuzzer" >&2; exit 1; }
fi

# ---------------------------------------------------------------- build
if [ ! -f "$build/build.ninja" ] || ! grep -q "SPARROW_FUZZ:BOOL=ON" "$build/CMakeCache.txt" 2>/dev/null; then
  CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSPARROW_CUDA=OFF -DSPARROW_FUZZ=ON -DSPARROW_BUILD_TESTS=OFF -DSPARROW_BUILD_BENCH=OFF >"$probe/configure.log" 2>&1 ||
    { tail -30 "$probe/configure.log"; echo "fuzz.sh: configure failed" >&2; exit 1; }
fi
# shellcheck disable=SC2086
ninja -C "$build" -j "$jobs" $targets >"$probe/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$probe/build.log" | head -30; echo "fuzz.sh: build failed" >&2; exit 1; }

# ---------------------------------------------------------------- run
status=0
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for t in $targets; do
  bin="$build/bin/$t"
  work="$build/fuzz-work/$t"
  rm -rf "$work"
  mkdir -p "$work/corpus"
  cp -r "tests/fuzz/corpus/$t/." "$work/corpus/"
  args=(-max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -close_fd_mask=3
        -artifact_prefix="$work/")
  [ -f "tests/fuzz/dict/$t.dict" ] && args+=(-dict="tests/fuzz/dict/$t.dict")
  # shellcheck disable=SC2086
  if "$bin" "${args[@]}" ${FUZZ_ARGS:-} "$work/corpus" >"$work/log.txt" 2>&1; then rc=0; else rc=$?; fi
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/log.txt" | awk '{print $2}' | tail -1)
  rate=$([ -n "$execs" ] && [ "$secs" -gt 0 ] && echo $((execs / secs)) || echo "?")
  seed=$(grep -m1 -E '^#[0-9]+\s+INITED' "$work/log.txt" | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
  last=$(grep -E '^#[0-9]+\s+(NEW|REDUCE|pulse|DONE|RELOAD)' "$work/log.txt" | tail -1 |
         grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' || true)
  printf '%-20s %ss  execs %s (%s/s)  %s  [seeds: %s]\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" \
    "${last:-no coverage line}" "${seed:-?}"
  if [ "$rc" -ne 0 ]; then
    status=1
    crash=$(ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* 2>/dev/null | head -1 || true)
    echo "fuzz.sh: $t FAILED (rc $rc); input: ${crash:-none saved}; log: $work/log.txt"
    grep -m3 -E 'ERROR: |runtime error|SUMMARY' "$work/log.txt" | sed 's/^/    /' || true
    [ -n "$crash" ] && echo "    reproduce: $bin $crash"
  fi
done
exit $status
