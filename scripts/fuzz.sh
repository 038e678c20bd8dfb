#!/usr/bin/env bash
# Fuzzes for a bounded time:  scripts/fuzz.sh [seconds] [safetensors|shapes|all]  (60, all)
# Each target runs for `seconds` (FUZZ_TARGETS may name the target instead of $2):
# - safetensors: the safetensors reader. Builds tests/fuzz/fuzz_safetensors.cpp with
#   clang++ and libFuzzer + ASan + UBSan in build-fuzz/, then runs it from the seed corpus
#   in tests/fuzz/corpus/ plus the corpus it grew on earlier runs (build-fuzz/corpus/,
#   never committed). A crash, sanitizer report, exception other than safetensors_error,
#   or oracle failure stops it with a non-zero exit and leaves the input in
#   build-fuzz/artifacts/: copy it to tests/fuzz/regressions/ (replayed by every ctest
#   run), then fix the reader.
# - shapes: the kernels' shapes, strides and options (tests/fuzz/shape_attack.hpp), from
#   tests/fuzz/shape_corpus/ plus build-fuzz/shape_corpus/. A failure leaves the input in
#   build-fuzz/shape_artifacts/: copy it to tests/fuzz/shape_findings/ with a name saying
#   what it hits; once the library is fixed, move it to tests/fuzz/shape_regressions/
#   (replayed by every ctest run). DIFFATTN_SHAPE_FUZZ_KNOWN=tag,... steps around known
#   defects (tags in shape_attack.hpp); FUZZ_ARGS adds libFuzzer arguments (e.g.
#   "-fork=1 -ignore_crashes=1" to keep going past failures).
# FUZZ_JOBS sets the build parallelism (default 2).
set -euo pipefail

seconds=${1:-60}
targets=${2:-${FUZZ_TARGETS:-all}}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "usage: $0 [seconds] [safetensors|shapes|all]   (seconds a whole number >= 1; default 60 all)" >&2
  exit 2
fi
case $targets in
  all) targets="safetensors shapes" ;;
  safetensors | shapes) ;;
  *)
    echo "usage: $0 [seconds] [safetensors|shapes|all]   (unknown target '$targets')" >&2
    exit 2
    ;;
esac

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

bash scripts/install-deps.sh

build_dir=build-fuzz
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DDIFFATTN_BUILD_FUZZ=ON -DDIFFATTN_BUILD_TESTS=OFF -DDIFFATTN_BUILD_BENCH=OFF \
  -DDIFFATTN_BUILD_EXAMPLES=OFF -DDIFFATTN_INSTALL=OFF -DDIFFATTN_WERROR=ON
build_targets=()
for target in $targets; do build_targets+=("diffattn_fuzz_$target"); done
cmake --build "$build_dir" -j "${FUZZ_JOBS:-2}" --target "${build_targets[@]}"

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# run_fuzzer NAME ARTIFACTS WHERE_TO_KEEP MAX_LEN [libFuzzer arguments and corpus folders...]
# Runs build-fuzz/tests/fuzz/NAME for `seconds`; on a failure it says where the input is
# and exits with the fuzzer's status. The first corpus folder is the grown one it writes.
run_fuzzer() {
  local name=$1 artifacts=$2 keep=$3 max_len=$4
  shift 4
  mkdir -p "$artifacts"
  echo "fuzz: running $name for ${seconds} s"
  local status=0
  "$build_dir/tests/fuzz/$name" \
    -max_total_time="$seconds" \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -max_len="$max_len" \
    -print_final_stats=1 \
    -artifact_prefix="$artifacts/" \
    "$@" || status=$?
  if ((status != 0)); then
    echo "fuzz: FAILED (exit $status); the input is in $artifacts/:" >&2
    ls -l "$artifacts/" >&2 || true
    echo "fuzz: $keep" >&2
    exit "$status"
  fi
}

mkdir -p "$build_dir/corpus" "$build_dir/shape_corpus"
if [[ " $targets " == *" safetensors "* ]]; then
  # -max_len reaches headers like the 200 KB one nesting arrays 100,000 deep that once
  # overflowed the stack; the regressions seed the run with such inputs (read, not written).
  run_fuzzer fuzz_safetensors "$build_dir/artifacts" \
    "copy it to tests/fuzz/regressions/ so ctest replays it, then fix the reader" 262144 \
    -dict=tests/fuzz/safetensors.dict "$build_dir/corpus" tests/fuzz/corpus tests/fuzz/regressions
fi
if [[ " $targets " == *" shapes "* ]]; then
  # Inputs are a few hundred bytes of decoded fields; longer ones add nothing.
  [[ -n ${DIFFATTN_SHAPE_FUZZ_KNOWN:-} ]] && echo "fuzz: stepping around known: $DIFFATTN_SHAPE_FUZZ_KNOWN"
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of arguments
  run_fuzzer fuzz_shapes "$build_dir/shape_artifacts" \
    "copy it to tests/fuzz/shape_findings/ (named after what it hits); once fixed, move it to tests/fuzz/shape_regressions/ so ctest replays it" \
    512 ${FUZZ_ARGS:-} "$build_dir/shape_corpus" tests/fuzz/shape_corpus
fi
echo "fuzz: no failure in ${seconds} s per target ($targets)"
