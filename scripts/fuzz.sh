#!/usr/bin/env bash
# Fuzzes the safetensors reader for a bounded time:  scripts/fuzz.sh [seconds]  (60)
# Builds tests/fuzz/fuzz_safetensors.cpp with clang++ and libFuzzer + ASan + UBSan in
# build-fuzz/, then runs it from the seed corpus in tests/fuzz/corpus/ plus the corpus it
# grew on earlier runs (build-fuzz/corpus/, never committed). A crash, sanitizer report,
# exception other than safetensors_error, or oracle failure stops it with a non-zero
# exit and leaves the input in build-fuzz/artifacts/: copy it to tests/fuzz/regressions/
# (replayed by every ctest run), then fix the reader.
# FUZZ_JOBS sets the build parallelism (default 2).
set -euo pipefail

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "usage: $0 [seconds]   (a whole number >= 1; default 60)" >&2
  exit 2
fi

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

bash scripts/install-deps.sh

build_dir=build-fuzz
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DDIFFATTN_BUILD_FUZZ=ON -DDIFFATTN_BUILD_TESTS=OFF -DDIFFATTN_BUILD_BENCH=OFF \
  -DDIFFATTN_BUILD_EXAMPLES=OFF -DDIFFATTN_INSTALL=OFF -DDIFFATTN_WERROR=ON
cmake --build "$build_dir" -j "${FUZZ_JOBS:-2}" --target diffattn_fuzz_safetensors

mkdir -p "$build_dir/corpus" "$build_dir/artifacts"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "fuzz: running fuzz_safetensors for ${seconds} s"
status=0
# -max_len reaches headers like the 200 KB one nesting arrays 100,000 deep that once
# overflowed the stack; the regressions seed the run with such inputs (read, not written).
"$build_dir/tests/fuzz/fuzz_safetensors" \
  -max_total_time="$seconds" \
  -timeout=10 \
  -rss_limit_mb=2048 \
  -max_len=262144 \
  -print_final_stats=1 \
  -dict=tests/fuzz/safetensors.dict \
  -artifact_prefix="$build_dir/artifacts/" \
  "$build_dir/corpus" tests/fuzz/corpus tests/fuzz/regressions || status=$?

if ((status != 0)); then
  echo "fuzz: FAILED (exit $status); the input is in $build_dir/artifacts/:" >&2
  ls -l "$build_dir/artifacts/" >&2 || true
  echo "fuzz: copy it to tests/fuzz/regressions/ so ctest replays it, then fix the reader" >&2
  exit "$status"
fi
echo "fuzz: no failure in ${seconds} s"
