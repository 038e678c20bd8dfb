// The two tile products of the fused kernels, diffattn's register-blocked micro-kernels
// against Eigen's GEMM on the same tiles (through Eigen::Map, no copies): the
// measurement behind the choice of micro-kernels in include/diffattn/detail/kernels/.
//
//   Sᵀ [keys, rows]  = K [keys, D] · Qᵀ [D, rows]
//   O  [rows, width] += Pᵀᵀ · V, with Pᵀ [keys, rows] and V [keys, width]
//
// Counters: GFLOP/s (2 FLOPs per multiply-add).

#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include <Eigen/Core>
#include <diffattn/diffattn.hpp>

namespace {

using diffattn::index_t;
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

std::vector<float> random_vector(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

struct TileShape {
  index_t keys, rows, depth;
  explicit TileShape(const benchmark::State& state)
      : keys(state.range(0)), rows(state.range(1)), depth(state.range(2)) {}
  double flops() const { return 2.0 * static_cast<double>(keys * rows * depth); }
};

void set_rate(benchmark::State& state, double flops) {
  state.counters["GFLOP/s"] = benchmark::Counter(flops * static_cast<double>(state.iterations()) * 1e-9,
                                                 benchmark::Counter::kIsRate);
}

void BM_ScoreTile_MicroKernel(benchmark::State& state) {
  const TileShape s(state);
  const auto k = random_vector(static_cast<std::size_t>(s.keys * s.depth), 1);
  const auto qt = random_vector(static_cast<std::size_t>(s.depth * s.rows), 2);
  std::vector<float> st(static_cast<std::size_t>(s.keys * s.rows));
  for (auto _ : state) {
    diffattn::detail::score_tile(k.data(), s.depth, s.keys, qt.data(), s.rows, s.rows, s.depth,
                                 st.data(), s.rows);
    benchmark::DoNotOptimize(st.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, s.flops());
}

void BM_ScoreTile_Eigen(benchmark::State& state) {
  const TileShape s(state);
  const auto k = random_vector(static_cast<std::size_t>(s.keys * s.depth), 1);
  const auto qt = random_vector(static_cast<std::size_t>(s.depth * s.rows), 2);
  std::vector<float> st(static_cast<std::size_t>(s.keys * s.rows));
  Eigen::Map<const RowMajor> k_map(k.data(), s.keys, s.depth);
  Eigen::Map<const RowMajor> qt_map(qt.data(), s.depth, s.rows);
  Eigen::Map<RowMajor> st_map(st.data(), s.keys, s.rows);
  for (auto _ : state) {
    st_map.noalias() = k_map * qt_map;
    benchmark::DoNotOptimize(st.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, s.flops());
}

// For the value product, range(2) is the value width.
void BM_ValueTile_MicroKernel(benchmark::State& state) {
  const TileShape s(state);
  const auto pt = random_vector(static_cast<std::size_t>(s.keys * s.rows), 3);
  const auto v = random_vector(static_cast<std::size_t>(s.keys * s.depth), 4);
  std::vector<float> o(static_cast<std::size_t>(s.rows * s.depth));
  for (auto _ : state) {
    diffattn::detail::value_tile(pt.data(), s.rows, 1, s.rows, s.keys, v.data(), s.depth, s.depth,
                                 o.data(), s.depth);
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, s.flops());
}

void BM_ValueTile_Eigen(benchmark::State& state) {
  const TileShape s(state);
  const auto pt = random_vector(static_cast<std::size_t>(s.keys * s.rows), 3);
  const auto v = random_vector(static_cast<std::size_t>(s.keys * s.depth), 4);
  std::vector<float> o(static_cast<std::size_t>(s.rows * s.depth));
  Eigen::Map<const RowMajor> pt_map(pt.data(), s.keys, s.rows);
  Eigen::Map<const RowMajor> v_map(v.data(), s.keys, s.depth);
  Eigen::Map<RowMajor> o_map(o.data(), s.rows, s.depth);
  for (auto _ : state) {
    o_map.noalias() += pt_map.transpose() * v_map;
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, s.flops());
}

// {keys, rows, depth or value width}: the fused kernels' 64-key tiles with 64 query rows.
#define TILE_ARGS ->Args({64, 64, 64})->Args({64, 64, 128})->Args({64, 64, 256})->Args({64, 16, 128})
BENCHMARK(BM_ScoreTile_MicroKernel) TILE_ARGS;
BENCHMARK(BM_ScoreTile_Eigen) TILE_ARGS;
BENCHMARK(BM_ValueTile_MicroKernel) TILE_ARGS;
BENCHMARK(BM_ValueTile_Eigen) TILE_ARGS;

}  // namespace

BENCHMARK_MAIN();
