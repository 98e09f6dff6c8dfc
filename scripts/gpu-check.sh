#!/usr/bin/env bash
# The whole CUDA check in one command, for a machine with an NVIDIA GPU, the CUDA toolkit, CMake, Ninja and
# a C++ compiler but none of our Debian packages and no network: unpacks the .deb files that
# scripts/fetch-gpu-debs.sh downloaded beforehand (.deps/debs) into a private prefix (never into /),
# configures for the local GPU's architecture, builds, runs every test (GPU ones included), runs
# compute-sanitizer memcheck and racecheck over the CUDA test cases (time-boxed), runs the
# training-step benchmark on CUDA and on the CPU and every other build/bin/sparrow-bench-* (with
# --device cuda where the binary has that flag), and writes a short report (test summary + benchmark
# table) to REPORT. Sized for one 10-minute command on an H100 with 16 cores.
#
# Usage: scripts/gpu-check.sh REPORT
# Environment: BUILD_DIR (default build-gpu), DEPS_PREFIX (default .deps/prefix, recreated each run),
#   SPARROW_CUDA_ARCHS (default: the GPU's compute capability from nvidia-smi, e.g. 9.0 -> 90),
#   STEPS (comma list of unpack,configure,build,test,sanitize,bench; default all), JOBS (default nproc),
#   SANITIZE_BUDGET (seconds for compute-sanitizer memcheck + racecheck over the CUDA tests, default 150),
#   CMAKE_EXTRA (more configure arguments), CTEST_ARGS (more ctest arguments).
set -uo pipefail

usage() { sed -n '2,16p' "$0"; }
[ $# -eq 1 ] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; esac
report=$(realpath -m "$1")
cd "$(dirname "$0")/.."
root=$(pwd)
build=$(realpath -m "${BUILD_DIR:-build-gpu}")
prefix=$(realpath -m "${DEPS_PREFIX:-.deps/prefix}")
steps=",${STEPS:-unpack,configure,build,test,sanitize,bench},"
jobs=${JOBS:-$(nproc)}
logdir="$build/gpu-check-logs"
t_start=$SECONDS
status=0

want() { [[ "$steps" == *",$1,"* ]]; }
say() { echo "gpu-check [$((SECONDS - t_start))s]: $*"; }
fail() { say "FAILED: $*"; status=1; }

mkdir -p "$(dirname "$report")"
: >"$report"
rep() { printf '%s\n' "$*" >>"$report"; }

rep "# sparrow gpu-check — $(date -u '+%Y-%m-%d %H:%M UTC')"
if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
  rep "GPU: $(nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader | head -1)"
else
  rep "GPU: none visible (nvidia-smi missing or failing); GPU tests will skip"
fi
nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
rep "nvcc: $("$nvcc_bin" --version 2>/dev/null | grep -o 'release [0-9.]*' || echo missing)  cmake: $(cmake --version | head -1 | awk '{print $3}')  compiler: $(${CXX:-c++} --version | head -1)  cores: $(nproc)"

# ---------------------------------------------------------------- unpack
# Each .deb goes into the private prefix; dpkg-deb when present, else ar/tar, else Python (a .deb is an
# ar archive holding data.tar.*).
extract_deb() {
  local deb=$1 dest=$2
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$deb" "$dest"
  else
    python3 - "$deb" "$dest" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
data = open(deb, 'rb').read()
assert data[:8] == b'!<arch>\n', f'{deb}: not a .deb'
pos = 8
while pos < len(data):
    name = data[pos:pos + 16].decode().strip().rstrip('/')
    size = int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith('data.tar'):
        tarfile.open(fileobj=io.BytesIO(body), mode='r:*').extractall(dest)
        break
    pos += 60 + size + (size & 1)
else:
    sys.exit(f'{deb}: no data.tar member')
PY
  fi
}

if want unpack; then
  debs=(.deps/debs/*.deb)
  if [ ! -e "${debs[0]}" ]; then
    fail "no .deb files in .deps/debs: run scripts/fetch-gpu-debs.sh on a machine with apt first (and carry .deps)"
  else
    rm -rf "$prefix"
    mkdir -p "$prefix"
    for d in "${debs[@]}"; do extract_deb "$d" "$prefix" || fail "could not unpack $d"; done
    say "unpacked ${#debs[@]} packages into $prefix"
  fi
fi

# Runtime libraries the prefix's libraries need (OpenBLAS -> libgfortran): used only where the system has
# none, through a folder holding just those, so no system library is ever shadowed.
fallback="$prefix/runtime-fallback"
mkdir -p "$fallback"
known_libs=$(ldconfig -p 2>/dev/null || true)
for lib in libgfortran.so.5 libquadmath.so.0 libgomp.so.1; do
  if ! grep -q "$lib" <<<"$known_libs"; then
    src=$(find "$prefix/usr/lib" -name "$lib" 2>/dev/null | head -1)
    [ -n "$src" ] && ln -sf "$src" "$fallback/$lib" && say "using $lib from the prefix (the system has none)"
  fi
done
export LD_LIBRARY_PATH="$fallback${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ---------------------------------------------------------------- preflight
# The prebuilt libgtest.a and libbenchmark.so come from Debian's g++; if this machine's compiler cannot
# link them, GoogleTest is rebuilt from the sources in the prefix (googletest package) and the
# benchmarks are left out.
dep_args=()
cxx=${CXX:-c++}
pre="$prefix/preflight"
if want configure && [ -d "$prefix/usr/include/gtest" ]; then
  mkdir -p "$pre"
  ml="$prefix/usr/lib/x86_64-linux-gnu"
  printf '#include <gtest/gtest.h>\nTEST(P, Q) { EXPECT_EQ(1, 1); }\n' >"$pre/gt.cpp"
  if ! "$cxx" -std=c++17 -isystem "$prefix/usr/include" "$pre/gt.cpp" "$ml/libgtest_main.a" "$ml/libgtest.a" -pthread \
      -o "$pre/gt" >"$pre/gt.log" 2>&1 || ! "$pre/gt" >>"$pre/gt.log" 2>&1; then
    say "prebuilt GoogleTest does not link here ($(tail -1 "$pre/gt.log" | cut -c1-100)); rebuilding it from source"
    if cmake -S "$prefix/usr/src/googletest" -B "$pre/gtest-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_GMOCK=OFF -DCMAKE_INSTALL_PREFIX="$pre/gtest" >"$pre/gtest.log" 2>&1 &&
       cmake --build "$pre/gtest-build" -j "$jobs" >>"$pre/gtest.log" 2>&1 &&
       cmake --install "$pre/gtest-build" >>"$pre/gtest.log" 2>&1; then
      dep_args+=("-DGTest_DIR=$(dirname "$(find "$pre/gtest" -name GTestConfig.cmake | head -1)")")
    else
      fail "could not build GoogleTest from source (log: $pre/gtest.log)"
    fi
  fi
  printf '#include <benchmark/benchmark.h>\nstatic void B(benchmark::State& s) { for (auto _ : s) {} }\nBENCHMARK(B);\nBENCHMARK_MAIN();\n' >"$pre/bm.cpp"
  if ! "$cxx" -std=c++17 -isystem "$prefix/usr/include" "$pre/bm.cpp" "$ml/libbenchmark.so.1.7.1" -pthread \
      -Wl,-rpath,"$ml" -o "$pre/bm" >"$pre/bm.log" 2>&1 || ! "$pre/bm" --benchmark_min_time=0.001 >>"$pre/bm.log" 2>&1; then
    say "prebuilt Google Benchmark does not work here ($(tail -1 "$pre/bm.log" | cut -c1-100)); benchmarks left out"
    dep_args+=(-DSPARROW_BUILD_BENCH=OFF)
  fi
fi

# ---------------------------------------------------------------- configure
cuda_args=()
cudnn_note="cuDNN: from the CUDA toolkit or the system"
if want configure; then
  archs=${SPARROW_CUDA_ARCHS:-}
  if [ -z "$archs" ] && command -v nvidia-smi >/dev/null; then
    archs=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  fi
  archs=${archs:-90}
  cuda_args+=(-DSPARROW_CUDA=ON "-DSPARROW_CUDA_ARCHS=$archs" "-DCMAKE_CUDA_COMPILER=$nvcc_bin")
  # cuDNN: the toolkit's, else the one PyTorch's wheels carry (nvidia-cudnn-*), else none (im2col path).
  cuda_home=$(dirname "$(dirname "$(realpath "$nvcc_bin")")")
  if [ ! -e "$cuda_home/include/cudnn.h" ] && [ ! -e /usr/include/cudnn.h ] && [ ! -e /usr/include/x86_64-linux-gnu/cudnn.h ]; then
    hdr=$(python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null |
          while read -r d; do find "$d/nvidia" -name cudnn.h 2>/dev/null; done | head -1)
    if [ -n "$hdr" ]; then
      inc=$(dirname "$hdr")
      libdir=$(realpath -m "$inc/../lib")
      lib=$(ls "$libdir"/libcudnn.so* 2>/dev/null | head -1)
      if [ -n "$lib" ]; then
        cuda_args+=("-DSPARROW_CUDNN_LIB=$lib" "-DCMAKE_CXX_FLAGS=-isystem $inc" "-DCMAKE_CUDA_FLAGS=-isystem $inc")
        export LD_LIBRARY_PATH="$libdir:$LD_LIBRARY_PATH"
        cudnn_note="cuDNN: $lib (Python wheel)"
      fi
    else
      cudnn_note="cuDNN: not found (convolutions use im2col + cuBLAS)"
    fi
  fi
  say "configuring $build (archs $archs; $cudnn_note)"
  mkdir -p "$logdir"
  # shellcheck disable=SC2086
  if ! cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "-DSPARROW_DEPS_PREFIX=$prefix" \
      -DSPARROW_BUILD_TESTS=ON -DSPARROW_BUILD_BENCH=ON "${cuda_args[@]}" "${dep_args[@]}" ${CMAKE_EXTRA:-} \
      >"$logdir/configure.log" 2>&1; then
    tail -30 "$logdir/configure.log"
    fail "configure (log: $logdir/configure.log)"
  else
    grep -E "sparrow:|Found GTest|Found ZLIB|CBLAS" "$logdir/configure.log" || true
  fi
fi
rep "$cudnn_note"
mkdir -p "$logdir"

# ---------------------------------------------------------------- build
configured=0
[ -f "$build/build.ninja" ] && configured=1
if want build && [ $configured -eq 1 ]; then
  say "building with $jobs jobs"
  # -k 0: one broken target must not hide the results of every other test and benchmark.
  if ! cmake --build "$build" -j "$jobs" -- -k 0 >"$logdir/build.log" 2>&1; then
    grep -E "error|FAILED" "$logdir/build.log" | head -40
    fail "build, continuing with what was built (log: $logdir/build.log)"
    rep "build: FAILED for $(grep -c '^FAILED:' "$logdir/build.log") target(s): $(grep '^FAILED:' "$logdir/build.log" | cut -d' ' -f2 | tr '\n' ' ')"
  fi
  say "build done"
fi

# ---------------------------------------------------------------- tests
if want test && [ $configured -eq 1 ]; then
  say "running ctest"
  # Several binaries at a time, two OpenMP threads each (the suite's convention, as scripts/test.sh).
  (cd "$build" && OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} ctest --output-on-failure -j "$(( jobs > 2 ? jobs / 2 : 1 ))" \
      --timeout 300 ${CTEST_ARGS:-}) >"$logdir/ctest.log" 2>&1
  ctest_rc=$?
  rep ""
  rep "## Tests"
  rep '```'
  grep -E "tests passed|tests failed|Total Test time" "$logdir/ctest.log" >>"$report" || rep "(no ctest summary: see $logdir/ctest.log)"
  skipped=$(grep -c "\*\*\*Skipped" "$logdir/ctest.log" || true)
  rep "skipped: $skipped"
  if [ "$skipped" -gt 0 ]; then
    rep "skipped tests: $(grep "\*\*\*Skipped" "$logdir/ctest.log" | sed -E 's/.*Test +#[0-9]+: ([^ .]+(\.[^ .]+)?).*/\1/' | head -30 | tr '\n' ' ')"
  fi
  sed -n '/The following tests FAILED/,$p' "$logdir/ctest.log" >>"$report"
  rep '```'
  # Which conv path the CUDA ops took (cuDNN or the im2col fallback), and any cuDNN fallback notes.
  if [ -x "$build/bin/test_cuda_ops" ]; then
    "$build/bin/test_cuda_ops" --gtest_filter=CudaOps.Conv2dMatchesCpu >"$logdir/conv-backend.log" 2>&1 || true
    grep -h -E "conv2d CUDA backend|cuDNN has no|Skipped|^no usable|built without" "$logdir/conv-backend.log" | head -5 >>"$report" || true
  fi
  [ $ctest_rc -eq 0 ] || fail "ctest (log: $logdir/ctest.log)"
  say "tests done (rc $ctest_rc)"
fi

# ---------------------------------------------------------------- compute-sanitizer
# memcheck (out-of-bounds and misaligned device accesses, API errors) and racecheck (shared-memory races)
# over the CUDA test cases of the GPU-labelled binaries (suites named *Cuda*; the CPU parity parts already
# ran under ASan in scripts/sanitize.sh), each run bounded so the whole script keeps its 10 minutes.
if want sanitize && [ -d "$build/bin" ] && nvidia-smi >/dev/null 2>&1; then
  csan=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  [ -x "$csan" ] || csan=$(dirname "$nvcc_bin")/compute-sanitizer
  rep ""
  rep "## compute-sanitizer (CUDA test cases)"
  rep ""
  if [ ! -x "$csan" ]; then
    rep "compute-sanitizer not found next to nvcc: skipped"
  else
    budget=${SANITIZE_BUDGET:-150}
    t_san=$SECONDS
    rep "| tool | binary | result | seconds |"
    rep "| --- | --- | --- | --- |"
    # The heaviest case (a whole ResNet-20 step) and the CPU-emulated kernels are left out.
    filter='*Cuda*:-*ResNet20*:*Emulated*'
    for tool in memcheck racecheck; do
      for t in test_cuda_ops test_cuda_storage test_elementwise test_distill test_gate test_gates test_sparse_conv test_bsr; do
        bin="$build/bin/$t"
        [ -x "$bin" ] || continue
        left=$((budget - (SECONDS - t_san)))
        if [ $left -lt 15 ] || [ $((SECONDS - t_start)) -gt 480 ]; then rep "| $tool | $t | skipped (time budget) | - |"; continue; fi
        limit=$((left < 90 ? left : 90))
        t_one=$SECONDS
        timeout "$limit" "$csan" --tool "$tool" --error-exitcode 99 --print-limit 20 \
          "$bin" --gtest_filter="$filter" >"$logdir/$tool-$t.log" 2>&1
        rc=$?
        errs=$(grep -oE "ERROR SUMMARY: [0-9]+ error" "$logdir/$tool-$t.log" | tail -1)
        case $rc in
          0) result="clean (${errs:-no summary})" ;;
          99) result="ERRORS: ${errs:-see log}"; fail "compute-sanitizer $tool $t (log: $logdir/$tool-$t.log)" ;;
          124) result="timed out after ${limit}s (no error before that)" ;;
          *) result="test failed under the tool (rc $rc)"; fail "compute-sanitizer $tool $t rc $rc (log: $logdir/$tool-$t.log)" ;;
        esac
        [ $rc -eq 124 ] && grep -q "========= Invalid\|========= Race" "$logdir/$tool-$t.log" &&
          { result="ERRORS before the timeout"; fail "compute-sanitizer $tool $t"; }
        rep "| $tool | $t | $result | $((SECONDS - t_one)) |"
      done
    done
    say "compute-sanitizer done ($((SECONDS - t_san)) s)"
  fi
fi

# ---------------------------------------------------------------- benchmarks
if want bench && [ -d "$build/bin" ]; then
  rep ""
  rep "## Training step (batch 128, img/s)"
  rep ""
  rep "| model | device | threads | img/s |"
  rep "| --- | --- | --- | --- |"
  step_bin="$build/bin/sparrow-bench-train-step"
  if [ -x "$step_bin" ]; then
    has_device=0
    grep -q -- "--device" <<<"$("$step_bin" --help 2>&1)" && has_device=1
    for model in resnet20 resnet56; do
      devices=(cpu)
      [ $has_device -eq 1 ] && devices=(cuda cpu)
      for dev in "${devices[@]}"; do
        if [ $((SECONDS - t_start)) -gt 540 ]; then rep "| $model | $dev | - | skipped (time budget) |"; continue; fi
        args=(--model "$model" --batch 128)
        if [ "$dev" = cuda ]; then args+=(--device cuda --steps 20 --warmup 3); else args+=(--threads "$jobs" --steps 3 --warmup 1); fi
        [ $has_device -eq 1 ] && [ "$dev" = cpu ] && args+=(--device cpu)
        out=$(timeout 120 "$step_bin" "${args[@]}" 2>&1)
        rc=$?
        echo "$out" >>"$logdir/bench-train-step.log"
        line=$(echo "$out" | grep '"img_per_s"' | head -1)
        if [ $rc -eq 0 ] && [ -n "$line" ]; then
          ips=$(echo "$line" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["img_per_s"])' 2>/dev/null || echo "?")
          thr=$([ "$dev" = cpu ] && echo "$jobs" || echo "-")
          rep "| $model | $dev | $thr | $ips |"
        else
          rep "| $model | $dev | - | failed (rc $rc): $(echo "$out" | tail -1 | cut -c1-120) |"
          fail "sparrow-bench-train-step --model $model ($dev)"
        fi
      done
    done
    [ $has_device -eq 1 ] || rep "(sparrow-bench-train-step has no --device flag yet: CUDA step not measured)"
  else
    rep "(sparrow-bench-train-step was not built)"
  fi
  # Every other benchmark binary, briefly; Google Benchmark ones get a short minimum time.
  for b in "$build"/bin/sparrow-bench-*; do
    [ -x "$b" ] || continue
    name=$(basename "$b")
    [ "$name" = sparrow-bench-train-step ] && continue
    if [ $((SECONDS - t_start)) -gt 560 ]; then rep "- $name: skipped (time budget)"; continue; fi
    help=$("$b" --help 2>&1 || true)
    args=()
    grep -q -- "--device" <<<"$help" && args+=(--device cuda)
    grep -q -- "benchmark_min_time" <<<"$help" && args+=(--benchmark_min_time=0.05)
    timeout 60 "$b" "${args[@]}" >"$logdir/$name.log" 2>&1
    rc=$?
    rep ""
    rep "### $name ${args[*]} (rc $rc)"
    rep '```'
    grep -v '^\s*$' "$logdir/$name.log" | tail -25 >>"$report"
    rep '```'
    [ $rc -eq 0 ] || fail "$name (rc $rc)"
  done
fi

rep ""
rep "total: $((SECONDS - t_start)) s; status: $([ $status -eq 0 ] && echo OK || echo FAILED); logs: $logdir"
say "report written to $report (status $status)"
exit $status
