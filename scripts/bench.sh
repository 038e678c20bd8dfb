#!/usr/bin/env bash
# The main job: installs missing Debian packages, builds an optimized Release
# (-O3 -march=native) into build-bench and runs the benchmarks. Until the benchmark
# suite (bench/bench_*.cpp) exists, it runs the quickstart example instead.
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

shopt -s nullglob
bench_programs=("$build_dir"/bench/diffattn_bench_*)
shopt -u nullglob

# The run line: every benchmark program, or the quickstart while there is none.
if ((${#bench_programs[@]} > 0)); then
  for program in "${bench_programs[@]}"; do "$program"; done
else
  echo "bench: no bench/bench_*.cpp yet; running examples/quickstart"
  "$build_dir/examples/quickstart"
fi
