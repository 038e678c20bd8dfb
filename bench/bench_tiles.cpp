// The two tile products of the fused kernels, diffattn's register-blocked micro-kernels
// against Eigen's GEMM on the same tiles (through Eigen::Map, no copies): the
// measurement behind the choice of micro-kernels in include/diffattn/detail/kernels/.
// With AVX512_BF16, the bf16 forms (detail/simd/avx512_bf16.hpp) run on the same tiles,
// counted with the same FLOPs, next to the fp32 rows.
//
//   Sᵀ [keys, rows]  = K [keys, D] · Qᵀ [D, rows]
//   O  [rows, width] += Pᵀᵀ · V, with Pᵀ [keys, rows] and V [keys, width]
//
// Counters: GFLOP/s (2 FLOPs per multiply-add).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <Eigen/Core>
#include <diffattn/detail/simd/avx512_bf16.hpp>
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

#if defined(DIFFATTN_HAS_BF16_DOT)
std::vector<diffattn::bf16> random_bf16_vector(std::size_t n, unsigned seed) {
  const auto values = random_vector(n, seed);
  return std::vector<diffattn::bf16>(values.begin(), values.end());
}

// Q comes packed as depth pairs (once per query tile in a fused kernel, so not timed).
void BM_ScoreTile_Bf16(benchmark::State& state) {
  const TileShape s(state);
  const auto k = random_bf16_vector(static_cast<std::size_t>(s.keys * s.depth), 1);
  // Pairs of random bf16: the packing of a [rows, depth] Q, with its values made up.
  const auto q = random_bf16_vector(static_cast<std::size_t>(s.depth * s.rows), 2);
  std::vector<std::uint32_t> qp(static_cast<std::size_t>(s.depth / 2 * s.rows));
  std::memcpy(qp.data(), q.data(), qp.size() * sizeof(std::uint32_t));
  std::vector<float> st(static_cast<std::size_t>(s.keys * s.rows));
  for (auto _ : state) {
    diffattn::detail::score_tile_bf16(k.data(), s.depth, s.keys, qp.data(), s.rows, s.depth, 1.0f, st.data(),
                                      s.rows);
    benchmark::DoNotOptimize(st.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, s.flops());
}

struct ValuePairs {
  std::vector<float> pt;
  std::vector<std::uint32_t> pp, vp;
  explicit ValuePairs(const TileShape& s)
      : pt(random_vector(static_cast<std::size_t>(s.keys * s.rows), 3)),
        pp(static_cast<std::size_t>((s.keys + 1) / 2 * s.rows)),
        vp(static_cast<std::size_t>((s.keys + 1) / 2 * s.depth)) {
    const auto v = random_bf16_vector(static_cast<std::size_t>(s.keys * s.depth), 4);
    diffattn::detail::pack_weight_pairs(pt.data(), s.rows, s.keys, s.rows, pp.data());
    diffattn::detail::pack_value_pairs(v.data(), s.depth, s.keys, s.depth, s.depth, vp.data());
  }
};

// P and V packed as key pairs beforehand: the kernel alone.
void BM_ValueTile_Bf16(benchmark::State& state) {
  const TileShape s(state);
  const ValuePairs in(s);
  std::vector<float> o(static_cast<std::size_t>(s.rows * s.depth));
  for (auto _ : state) {
    diffattn::detail::value_tile_bf16(in.pp.data(), s.rows, s.rows, s.keys, in.vp.data(), s.depth, s.depth,
                                      o.data(), s.depth, nullptr, nullptr);
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, s.flops());
}

// With P packed from fp32 in the loop, as a fused kernel would for every tile (V's pairs
// can be packed once per K/V tile and shared).
void BM_ValueTile_Bf16_PackWeights(benchmark::State& state) {
  const TileShape s(state);
  ValuePairs in(s);
  std::vector<float> o(static_cast<std::size_t>(s.rows * s.depth));
  for (auto _ : state) {
    diffattn::detail::pack_weight_pairs(in.pt.data(), s.rows, s.keys, s.rows, in.pp.data());
    diffattn::detail::value_tile_bf16(in.pp.data(), s.rows, s.rows, s.keys, in.vp.data(), s.depth, s.depth,
                                      o.data(), s.depth, nullptr, nullptr);
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, s.flops());
}
#endif

// {keys, rows, depth or value width}: the fused kernels' 64-key tiles with 64 query rows.
#define TILE_ARGS ->Args({64, 64, 64})->Args({64, 64, 128})->Args({64, 64, 256})->Args({64, 16, 128})
BENCHMARK(BM_ScoreTile_MicroKernel) TILE_ARGS;
#if defined(DIFFATTN_HAS_BF16_DOT)
BENCHMARK(BM_ScoreTile_Bf16) TILE_ARGS;
#endif
BENCHMARK(BM_ScoreTile_Eigen) TILE_ARGS;
BENCHMARK(BM_ValueTile_MicroKernel) TILE_ARGS;
#if defined(DIFFATTN_HAS_BF16_DOT)
BENCHMARK(BM_ValueTile_Bf16) TILE_ARGS;
BENCHMARK(BM_ValueTile_Bf16_PackWeights) TILE_ARGS;
#endif
BENCHMARK(BM_ValueTile_Eigen) TILE_ARGS;

}  // namespace

BENCHMARK_MAIN();
