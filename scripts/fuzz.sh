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

mkdir -p "$build_dir/corpus" "$build_dir/artifacts" "$build_dir/shape_corpus" "$build_dir/shape_artifacts"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
if [[ " $targets " == *" safetensors "* ]]; then
echo "fuzz: running fuzz_safetensors for ${seconds} s"
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
fi

if [[ " $targets " == *" shapes "* ]]; then
  echo "fuzz: running fuzz_shapes for ${seconds} s${DIFFATTN_SHAPE_FUZZ_KNOWN:+ (stepping around known: $DIFFATTN_SHAPE_FUZZ_KNOWN)}"
  # Inputs are a few hundred bytes of decoded fields; longer ones add nothing.
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of arguments
  "$build_dir/tests/fuzz/fuzz_shapes" \
    -max_total_time="$seconds" \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -max_len=512 \
    -print_final_stats=1 \
    -artifact_prefix="$build_dir/shape_artifacts/" \
    ${FUZZ_ARGS:-} \
    "$build_dir/shape_corpus" tests/fuzz/shape_corpus || status=$?

  if ((status != 0)); then
    echo "fuzz: FAILED (exit $status); the input is in $build_dir/shape_artifacts/:" >&2
    ls -l "$build_dir/shape_artifacts/" >&2 || true
    echo "fuzz: copy it to tests/fuzz/shape_findings/ (named after what it hits); once fixed," \
      "move it to tests/fuzz/shape_regressions/ so ctest replays it" >&2
    exit "$status"
  fi
fi
echo "fuzz: no failure in ${seconds} s per target ($targets)"
