#!/usr/bin/env bash
# The main job: installs missing Debian packages, builds an optimized Release
# (-O3 -march=native) into build-bench and runs the differential-vs-standard benchmark
# comparison (bench/bench_attention.cpp, short sweep). Extra arguments go to the
# benchmark binary (e.g. --full, --benchmark_out=results.json).
#
#   bash scripts/bench.sh --plot run1.json [run2.json ...] DIR
# instead draws the figure of saved runs (Google Benchmark JSON, or a bench.json this
# writes): DIR/bench.svg, DIR/bench.md and DIR/bench.json, with scripts/plot_bench.py.
# It builds nothing; it installs matplotlib (Debian python3-matplotlib) when missing.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

if [[ ${1-} == --plot ]]; then
  shift
  if (($# < 2)); then
    echo "usage: bash scripts/bench.sh --plot run1.json [run2.json ...] DIR" >&2
    exit 2
  fi
  runs=("${@:1:$#-1}")
  out_dir=${!#}
  # Debian's interpreter: the one that sees python3-matplotlib, whatever python3 is on PATH.
  python=/usr/bin/python3
  [[ -x $python ]] || python=python3
  if ! "$python" -c 'import matplotlib' 2>/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
      echo "bench.sh: matplotlib missing; run as root or: apt-get install -y python3-matplotlib" >&2
      exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-matplotlib
  fi
  mkdir -p "$out_dir"
  # Written to a temporary file first: DIR/bench.json may be one of the inputs.
  medians=$(mktemp)
  trap 'rm -f "$medians"' EXIT
  "$python" scripts/plot_bench.py "${runs[@]}" "$out_dir/bench.svg" --medians "$medians" >"$out_dir/bench.md"
  cp "$medians" "$out_dir/bench.json"
  echo "bench.sh: wrote $out_dir/bench.svg, $out_dir/bench.md and $out_dir/bench.json"
  exit 0
fi

bash scripts/install-deps.sh

build_dir=build-bench
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O3 -DNDEBUG" \
  -DDIFFATTN_NATIVE=ON -DDIFFATTN_SANITIZE=OFF \
  -DDIFFATTN_BUILD_BENCH=ON -DDIFFATTN_BUILD_EXAMPLES=ON -DDIFFATTN_BUILD_TESTS=OFF
cmake --build "$build_dir" -j 2

# The main job: the short sweep of standard vs differential attention against the
# plain-softmax baselines, with the ratio table at the end.
"$build_dir/bench/diffattn_bench_attention" "$@"
