#!/usr/bin/env bash
# The test suite: installs missing Debian packages, then configures, builds and runs
# ctest, stopping at the first failure.
#
#   bash scripts/test.sh         the whole suite in the native configuration:
#                                  build-test/native    -O2 -march=native
#   bash scripts/test.sh --all   that, then (what CI runs, .ci/run):
#                                  build-test/baseline  -O2, no -march (the compiler's
#                                                       default ISA, SSE2 on x86-64)
#                                  build-test/sanitize  -O1 -g with AddressSanitizer and
#                                                       UndefinedBehaviorSanitizer
#                                and 30 s of each scripts/fuzz.sh target (build-fuzz).
#
# All with -Wall -Wextra -Wpedantic -Werror. Build directories are reused between runs.
set -euo pipefail

all=false
case "${1-}" in
  "") ;;
  --all) all=true ;;
  *)
    echo "usage: bash scripts/test.sh [--all]" >&2
    exit 2
    ;;
esac

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

bash scripts/install-deps.sh

jobs=2
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

common_args=(
  -G Ninja
  -DDIFFATTN_BUILD_TESTS=ON
  -DDIFFATTN_BUILD_EXAMPLES=ON
  -DDIFFATTN_BUILD_BENCH=ON
  -DDIFFATTN_WERROR=ON
)

banner() {
  printf '\n==================================================================\n'
  printf '== %s\n' "$*"
  printf '==================================================================\n'
}

run_configuration() {
  local name=$1
  shift
  local build_dir="build-test/$name"
  local start=$SECONDS
  banner "configuration '$name' in $build_dir"
  cmake -S . -B "$build_dir" "${common_args[@]}" "$@"
  cmake --build "$build_dir" -j "$jobs"
  ctest --test-dir "$build_dir" --output-on-failure -j "$jobs"
  banner "configuration '$name' passed in $((SECONDS - start)) s"
}

total_start=$SECONDS

run_configuration native \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DDIFFATTN_NATIVE=ON -DDIFFATTN_SANITIZE=OFF

if ! $all; then
  banner "native configuration passed in $((SECONDS - total_start)) s (--all adds baseline, sanitize and fuzzing)"
  exit 0
fi

run_configuration baseline \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DDIFFATTN_NATIVE=OFF -DDIFFATTN_SANITIZE=OFF

run_configuration sanitize \
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DDIFFATTN_NATIVE=OFF -DDIFFATTN_SANITIZE=ON

# Short fuzz runs of the safetensors reader and of the kernels' shapes (clang +
# libFuzzer); scripts/fuzz.sh runs longer ones. Inputs that ever failed are replayed by
# ctest above.
# A finding not fixed yet can be stepped around by naming its tag in
# DIFFATTN_SHAPE_FUZZ_KNOWN (tests/fuzz/shape_findings/README.md); none is open.
banner "fuzzing the safetensors reader and the kernels' shapes for 30 s each"
FUZZ_JOBS=$jobs bash scripts/fuzz.sh 30 all

banner "all configurations passed in $((SECONDS - total_start)) s"
