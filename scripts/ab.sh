#!/usr/bin/env bash
# In-process A/B of the attention kernels: the headers of <commit> against the working
# tree, in one binary (bench/ab_compare.cpp), on the benchmark's short sweep. Prints, per
# case, the median of per-round time ratios new/old; below 1 the working tree is faster.
#   bash scripts/ab.sh <commit> [rounds] [name filter]
# Build flags as scripts/bench.sh: -O3 -march=native with OpenMP. Needs g++, Eigen, xsimd.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: bash scripts/ab.sh <commit> [rounds] [name filter]" >&2
  exit 2
fi
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
commit=$1
shift
work="$repo_root/build-ab"
rm -rf "$work/old"
mkdir -p "$work/old"
git -C "$repo_root" archive "$commit" include/diffattn | tar -x -C "$work/old"

# The old copy becomes namespace diffattn_old under include/diffattn_old/, its macros
# DIFFATTN_OLD_* (DIFFATTN_NO_SIMD, a user's switch, stays shared), so that both
# libraries fit in one program.
mv "$work/old/include/diffattn" "$work/old/include/diffattn_old"
find "$work/old/include" -name '*.hpp' -exec sed -i -E \
  -e 's/namespace diffattn\b/namespace diffattn_old/g' \
  -e 's/\bdiffattn::/diffattn_old::/g' \
  -e 's#([<"])diffattn/#\1diffattn_old/#g' \
  -e 's/\bDIFFATTN_/DIFFATTN_OLD_/g' \
  -e 's/\bDIFFATTN_OLD_NO_SIMD\b/DIFFATTN_NO_SIMD/g' {} +

g++ -std=gnu++17 -O3 -DNDEBUG -march=native -fopenmp \
  -I"$repo_root/include" -I"$work/old/include" -isystem /usr/include/eigen3 \
  '-DDIFFATTN_AB_OLD_HEADER=<diffattn_old/attention.hpp>' \
  "$repo_root/bench/ab_compare.cpp" -o "$work/ab_compare"
echo "old: $(git -C "$repo_root" rev-parse --short "$commit"), new: working tree"
"$work/ab_compare" "$@"
