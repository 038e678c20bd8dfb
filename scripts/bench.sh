#!/usr/bin/env bash
# The main job: installs missing Debian packages, builds an optimized Release
# (-O3 -march=native) into build-bench and runs the differential-vs-standard benchmark
# comparison (bench/bench_attention.cpp, short sweep).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

bash scripts/install-deps.sh

build_dir=build-bench
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O3 -DNDEBUG" \
  -DDIFFATTN_NATIVE=ON -DDIFFATTN_SANITIZE=OFF \
  -DDIFFATTN_BUILD_BENCH=ON -DDIFFATTN_BUILD_EXAMPLES=ON -DDIFFATTN_BUILD_TESTS=OFF
cmake --build "$build_dir" -j 2

# The main job: the short sweep of standard vs differential attention against the
# plain-softmax baselines, with the ratio table at the end. Extra arguments go to the
# benchmark binary (e.g. --full, --benchmark_out=results.json).
"$build_dir/bench/diffattn_bench_attention" "$@"
