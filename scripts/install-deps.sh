#!/usr/bin/env bash
# Installs the Debian 12 packages diffattn's build, tests and benchmarks need, if any
# are missing. Does nothing (and needs no root) when all are present.
set -euo pipefail

packages=(
  cmake
  ninja-build
  g++
  libeigen3-dev
  libxsimd-dev
  libgtest-dev
  libbenchmark-dev
  nlohmann-json3-dev
  clang              # scripts/fuzz.sh: clang++ with libFuzzer
  libclang-rt-14-dev # libclang_rt.fuzzer (only recommended by clang, so named here)
  python3-matplotlib # scripts/plot_bench.py (ctest plot_bench_script)
  pkg-config         # ctest consumer_pkg_config: builds against the installed diffattn.pc
  doxygen            # cmake/diffattnDocs.cmake: docs target, ctest doxygen_docs
)

missing=()
for package in "${packages[@]}"; do
  # dpkg -s also succeeds for removed-but-not-purged packages, so read its status line.
  if ! dpkg -s "$package" 2>/dev/null | grep -q '^Status: install ok installed$'; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages and not root; run as root or install them:" >&2
  echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
