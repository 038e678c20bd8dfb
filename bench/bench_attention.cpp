// Standard vs differential attention, against plain softmax attention baselines.
//
// Matched configuration: h differential heads (Q/K width d, V width 2d) against 2h
// standard heads of width d: the same parameters and, for the fused kernels, the same
// 8·N²·d FLOPs per differential head. Both fused kernels also run on bf16 inputs (…Bf16 rows),
// and decoding on bf16 and f16 K/V (DecodeBf16, DecodeF16). The fused backward passes run on
// the same problem (StandardBackward, DifferentialBackward). Baselines in the same binary:
//   - naive: materialized attention, Eigen GEMMs and a full softmax over N×N;
//   - composed differential: two standard calls plus a subtraction, as GPU code does.
// The machine's FMA peak and read bandwidth are measured at start-up by this binary, so
// every "% of peak" comes from one run. At the end a table gives the ratios.
//
//   diffattn_bench_attention                  short sweep (the README's main command)
//   diffattn_bench_attention --full           the whole sweep (minutes)
//   ... --benchmark_format=json --benchmark_out=results.json   for scripts/plot_bench.py

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <diffattn/diffattn.hpp>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

using diffattn::bf16;
using diffattn::f16;
using diffattn::index_t;
using diffattn::Tensor;
using diffattn::TensorView;
using Clock = std::chrono::steady_clock;

// ---- machine limits, measured once ------------------------------------------------

/// Peak fp32 FMA rate of one core: 12 independent FMA chains of the widest batch the
/// build targets. 12 covers latency × pipes (4 × 2 on current x86) with room to spare and,
/// with the two constant operands, fits AVX2's 16 vector registers: 16 chains spilled to
/// the stack there and measured 56 GFLOP/s on a Zen 3 core that does 100.
/// The best of 10 runs of ~40 ms: on a 2-core Xeon VM (AVX-512, two FMA pipes) the best
/// of 3 read 146–214 GFLOP/s in nine start-ups, while 30 runs in a row stayed within
/// 199–208; a low reading overstates every "% of peak", so the end of the run
/// measures it again (RatioReporter).
double measure_fma_peak_gflops() {
  using B = diffattn::detail::native_batch<float>;
  constexpr int chains = 12;
  B acc[chains];
  for (int i = 0; i < chains; ++i) acc[i] = B(0.001f * static_cast<float>(i));
  const B a(0.999f), b(0.001f);
  const long iterations = 20'000'000;
  double best = 1e30;
  for (int repeat = 0; repeat < 10; ++repeat) {
    const auto start = Clock::now();
    for (long it = 0; it < iterations; ++it) {
      for (int i = 0; i < chains; ++i) acc[i] = diffattn::detail::simd_fma(acc[i], a, b);
    }
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  float sink = 0;
  for (int i = 0; i < chains; ++i) sink += diffattn::detail::simd_sum(acc[i]);
  benchmark::DoNotOptimize(sink);
  return 2.0 * chains * static_cast<double>(B::size) * static_cast<double>(iterations) / best * 1e-9;
}

/// One thread's pass over `streams` equal parts of its slice, read side by side: per step
/// four batches from each part, one accumulator per batch. On a 2-core Zen 5 (AVX-512)
/// the earlier form, each part read in 16 KB turns from a buffer 16 bytes past a line,
/// read 59–64 GB/s while decoding read 73–83 (130% "of the bandwidth"). In standalone
/// tests there, 64-byte alignment alone took the turns to 60–80 GB/s, and this plain
/// loop to 82–93.
template <int Streams>
float read_parts(const float* slice, std::size_t part) {
  using B = diffattn::detail::native_batch<float>;
  constexpr std::size_t step = 4 * B::size;
  B acc[4 * Streams];
  for (B& a : acc) a = B(0.0f);
  for (std::size_t i = 0; i + step <= part; i += step) {
    for (int s = 0; s < Streams; ++s) {
      const float* p = slice + static_cast<std::size_t>(s) * part + i;
      for (int u = 0; u < 4; ++u) acc[4 * s + u] = acc[4 * s + u] + B::load_unaligned(p + u * B::size);
    }
  }
  B total = acc[0];
  for (int i = 1; i < 4 * Streams; ++i) total = total + acc[i];
  return diffattn::detail::simd_sum(total);
}

/// Elements of the read-bandwidth buffer: 512 MiB, far past the caches.
constexpr std::size_t bandwidth_elements = std::size_t{1} << 27;

/// One pass over `data` with all threads, each thread's slice split into `streams` parts
/// read side by side; returns the bytes read (the sum goes to DoNotOptimize).
std::size_t read_pass(const float* data, std::size_t n, int threads, int streams) {
  float total = 0;
  std::size_t read = 0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(+ : total, read)
#endif
  {
    const std::size_t thread = static_cast<std::size_t>(diffattn::detail::current_thread());
#if defined(_OPENMP)
    const std::size_t team = static_cast<std::size_t>(omp_get_num_threads());
#else
    const std::size_t team = 1;
#endif
    constexpr std::size_t step = 4 * diffattn::detail::native_batch<float>::size;
    const std::size_t part = n / team / static_cast<std::size_t>(streams) / step * step;
    const float* slice = data + thread * (n / team);
    total += streams == 1 ? read_parts<1>(slice, part) : streams == 2 ? read_parts<2>(slice, part)
                                                                      : read_parts<4>(slice, part);
    read += part * static_cast<std::size_t>(streams);
  }
  benchmark::DoNotOptimize(total);
  return read * sizeof(float);
}

/// A read buffer, 64-byte aligned as the kernels' tensors are (new[] gave 16 mod 64, so
/// every 64-byte load straddled two lines), written once by every thread before it is read.
diffattn::Tensor<float, 1> bandwidth_buffer(int threads) {
  diffattn::Tensor<float, 1> buffer({static_cast<index_t>(bandwidth_elements)});
  float* const data = buffer.data();
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
  for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(bandwidth_elements); ++i) data[i] = 1.0f;
  return buffer;
}

/// Read bandwidth with all threads: a vectorized sum over 512 MiB, the best of 1, 2 and
/// 4 streams per thread (each thread's slice split into that many parts, read side by
/// side), 3 times each. Decoding reads two streams per thread (K and V), and which
/// pattern reads fastest changes from run to run on a shared host: on a 2-core Zen 4, two
/// streams per thread read 45 GB/s against 32 for one in one back-to-back pair, 27
/// against 37 in another. The best of all keeps the denominator of "% of read bandwidth"
/// the most the machine showed.
double measure_read_bandwidth_gbs(int threads, int* best_streams) {
  const diffattn::Tensor<float, 1> buffer = bandwidth_buffer(threads);
  double best = 1e30;
  for (int streams : {1, 2, 4}) {
    for (int repeat = 0; repeat < 3; ++repeat) {
      const auto start = Clock::now();
      const std::size_t bytes = read_pass(buffer.data(), bandwidth_elements, threads, streams);
      const double per_byte = std::chrono::duration<double>(Clock::now() - start).count() / static_cast<double>(bytes);
      if (per_byte < best) {
        best = per_byte;
        *best_streams = streams;
      }
    }
  }
  return 1e-9 / best;
}

int all_threads() { return diffattn::detail::resolve_threads(0, 1 << 20); }

struct Machine {
  double fma_peak_gflops = 0;  // one core
  double read_gbs = 0;         // all cores
  int read_streams = 1;        // streams per thread of the best read
};
Machine machine;

// ---- problems -----------------------------------------------------------------------

Tensor<float, 4> random_tensor(const std::array<index_t, 4>& shape, unsigned seed) {
  Tensor<float, 4> t(shape);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (index_t i = 0; i < t.size(); ++i) t.data()[i] = dist(rng);
  return t;
}

/// `from` rounded to T (bf16 or f16).
template <class T>
Tensor<T, 4> converted(const Tensor<float, 4>& from) {
  Tensor<T, 4> to(from.shape());
  diffattn::convert(from.view(), to.view());
  return to;
}

template <class T>
Tensor<T, 4> random_tensor_as(const std::array<index_t, 4>& shape, unsigned seed) {
  if constexpr (std::is_same_v<T, float>) {
    return random_tensor(shape, seed);
  } else {
    return converted<T>(random_tensor(shape, seed));
  }
}

/// h = 2 differential heads of width d (V 2d) and the matched 4 standard heads.
constexpr index_t diff_heads = 2;

/// The matched problem's inputs and outputs in bf16: the fp32 inputs rounded, so both
/// rows time the same problem.
struct MatchedBf16 {
  Tensor<bf16, 4> q, k, v, out;
  Tensor<bf16, 4> q1, q2, k1, k2, v2, out2;
};

/// The backward rows' loss gradients (dout, random) and gradient outputs, shaped as the
/// matched problem's outputs and inputs.
struct MatchedGradients {
  Tensor<float, 4> dout, dq, dk, dv;                 // standard
  Tensor<float, 4> dout2, dq1, dq2, dk1, dk2, dv2;  // differential
  Tensor<float, 1> dlambda;
};

struct Matched {
  index_t n, d;
  Tensor<float, 4> q, k, v, out;                 // standard: [1, 2h, N, d]
  Tensor<float, 4> q1, q2, k1, k2, v2, out2, tmp;  // differential: [1, h, N, d], v [1, h, N, 2d]
  Tensor<float, 1> lambda;
  Matched(index_t n_, index_t d_)
      : n(n_), d(d_),
        q(random_tensor({1, 2 * diff_heads, n, d}, 1)), k(random_tensor({1, 2 * diff_heads, n, d}, 2)),
        v(random_tensor({1, 2 * diff_heads, n, d}, 3)), out({1, 2 * diff_heads, n, d}),
        q1(random_tensor({1, diff_heads, n, d}, 4)), q2(random_tensor({1, diff_heads, n, d}, 5)),
        k1(random_tensor({1, diff_heads, n, d}, 6)), k2(random_tensor({1, diff_heads, n, d}, 7)),
        v2(random_tensor({1, diff_heads, n, 2 * d}, 8)), out2({1, diff_heads, n, 2 * d}),
        tmp({1, diff_heads, n, 2 * d}), lambda({diff_heads}, 0.5f) {}
  /// Made on first use, so the fp32 rows' resident memory does not count it before then.
  MatchedBf16& bf16_inputs() {
    if (!half) {
      half = std::make_unique<MatchedBf16>(MatchedBf16{
          converted<bf16>(q), converted<bf16>(k), converted<bf16>(v), Tensor<bf16, 4>(out.shape()),
          converted<bf16>(q1), converted<bf16>(q2), converted<bf16>(k1), converted<bf16>(k2),
          converted<bf16>(v2), Tensor<bf16, 4>(out2.shape())});
    }
    return *half;
  }
  /// Made on first use, as the bf16 inputs are.
  MatchedGradients& gradients() {
    if (!grads) {
      grads = std::make_unique<MatchedGradients>(MatchedGradients{
          random_tensor(out.shape(), 9), Tensor<float, 4>(q.shape()), Tensor<float, 4>(k.shape()),
          Tensor<float, 4>(v.shape()), random_tensor(out2.shape(), 10), Tensor<float, 4>(q1.shape()),
          Tensor<float, 4>(q2.shape()), Tensor<float, 4>(k1.shape()), Tensor<float, 4>(k2.shape()),
          Tensor<float, 4>(v2.shape()), Tensor<float, 1>(lambda.shape())});
    }
    return *grads;
  }
  /// Frees the gradients and the kernels' scratch (the backward's holds Nk scores per tile
  /// row, map and thread, and the dK/dV sums), so that a forward row run after a backward
  /// one reports the resident memory it would without them.
  void release_backward() {
    grads.reset();
    diffattn::release_scratch();
  }

 private:
  std::unique_ptr<MatchedBf16> half;
  std::unique_ptr<MatchedGradients> grads;
};

/// FLOPs of the matched problem: 2·N²·(D + Dv) per standard head, halved by causality
/// (counting only the unmasked work).
double matched_flops(index_t n, index_t d, bool causal) {
  const double full = 2.0 * static_cast<double>(2 * diff_heads) * static_cast<double>(n) *
                      static_cast<double>(n) * static_cast<double>(2 * d);
  return causal ? full * (static_cast<double>(n) + 1) / (2.0 * static_cast<double>(n)) : full;
}

/// FLOPs of the matched problem's backward pass: 2.5× the forward's, 10·N²·d per standard
/// head of width d (scores again, dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K and dK = dSᵀ·Q, each
/// 2·N²·d), halved by causality as the forward's. A differential head (Q/K d, V 2d) counts
/// as its two matched standard heads: 20·N²·d, what its kernel computes.
double matched_backward_flops(index_t n, index_t d, bool causal) { return 2.5 * matched_flops(n, d, causal); }

/// A field of /proc/self/status in MiB ("VmRSS": resident now, "VmHWM": peak).
double status_mib(const char* field) {
  std::FILE* status = std::fopen("/proc/self/status", "r");
  if (status == nullptr) return 0;
  char line[256];
  double kib = 0;
  const std::size_t length = std::strlen(field);
  while (std::fgets(line, sizeof line, status) != nullptr) {
    if (std::strncmp(line, field, length) == 0 && line[length] == ':') kib = std::atof(line + length + 1);
  }
  std::fclose(status);
  return kib / 1024.0;
}

/// Restarts the peak-RSS count (Linux >= 4.0), so each benchmark reports its own peak
/// rather than the start-up bandwidth buffer's.
void reset_peak_rss() {
  if (std::FILE* refs = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", refs);
    std::fclose(refs);
  }
}

double peak_rss_mib() { return status_mib("VmHWM"); }

void set_compute_counters(benchmark::State& state, double flops, int threads) {
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
  state.counters["RSS_MiB"] = peak_rss_mib();
}

struct Args {
  index_t n, d;
  bool causal;
  int threads;
  explicit Args(const benchmark::State& state)
      : n(state.range(0)), d(state.range(1)), causal(state.range(2) != 0),
        threads(state.range(3) == 0 ? all_threads() : static_cast<int>(state.range(3))) {}
  diffattn::AttentionOptions<float> options() const {
    diffattn::AttentionOptions<float> o;
    o.causal = causal;
    o.threads = threads;
    return o;
  }
};

std::unique_ptr<Matched> current;
/// The matched problem of size (n, d), made again when either changes.
Matched& matched(index_t n, index_t d) {
  if (!current || current->n != n || current->d != d) {
    current.reset();
    current = std::make_unique<Matched>(n, d);
  }
  return *current;
}

/// The forward rows' problem: the matched one without the backward rows' memory.
Matched& problem(index_t n, index_t d) {
  Matched& m = matched(n, d);
  m.release_backward();
  return m;
}

void BM_Standard(benchmark::State& state) {
  const Args args(state);
  Matched& m = problem(args.n, args.d);
  const auto options = args.options();
  reset_peak_rss();
  for (auto _ : state) {
    diffattn::softmax_attention<float>(m.q, m.k, m.v, m.out, options);
    benchmark::ClobberMemory();
  }
  set_compute_counters(state, matched_flops(args.n, args.d, args.causal), args.threads);
}

void BM_Differential(benchmark::State& state) {
  const Args args(state);
  Matched& m = problem(args.n, args.d);
  const auto options = args.options();
  reset_peak_rss();
  for (auto _ : state) {
    diffattn::diff_attention<float>(m.q1, m.q2, m.k1, m.k2, m.v2, m.lambda, m.out2, options);
    benchmark::ClobberMemory();
  }
  set_compute_counters(state, matched_flops(args.n, args.d, args.causal), args.threads);
}

/// The bf16 rows: q, k, v and out of bf16 (lambda and the mask float), as a model kept
/// in bf16 calls attention (PyTorch's attention returns q's type). The output's bytes are
/// 1/(2·Nk) of the work, so a float output would time the same.
void BM_StandardBf16(benchmark::State& state) {
  const Args args(state);
  MatchedBf16& m = problem(args.n, args.d).bf16_inputs();
  const auto options = args.options();
  reset_peak_rss();
  for (auto _ : state) {
    diffattn::softmax_attention(m.q, m.k, m.v, m.out.view(), options);
    benchmark::ClobberMemory();
  }
  set_compute_counters(state, matched_flops(args.n, args.d, args.causal), args.threads);
}

void BM_DifferentialBf16(benchmark::State& state) {
  const Args args(state);
  Matched& problem_fp32 = problem(args.n, args.d);
  MatchedBf16& m = problem_fp32.bf16_inputs();
  const auto options = args.options();
  reset_peak_rss();
  for (auto _ : state) {
    diffattn::diff_attention(m.q1, m.q2, m.k1, m.k2, m.v2, problem_fp32.lambda.view(), m.out2.view(), options);
    benchmark::ClobberMemory();
  }
  set_compute_counters(state, matched_flops(args.n, args.d, args.causal), args.threads);
}

/// The fused backward passes: the matched problem's gradients for a random dout, with
/// nothing kept from the forward (the kernel recomputes the scores). The gradient tensors
/// are made before the timed loop (again when a forward row has freed them).
void BM_StandardBackward(benchmark::State& state) {
  const Args args(state);
  Matched& m = matched(args.n, args.d);
  MatchedGradients& g = m.gradients();
  const auto options = args.options();
  reset_peak_rss();
  for (auto _ : state) {
    diffattn::softmax_attention_backward<float>(m.q, m.k, m.v, g.dout, g.dq, g.dk, g.dv, options);
    benchmark::ClobberMemory();
  }
  set_compute_counters(state, matched_backward_flops(args.n, args.d, args.causal), args.threads);
}

void BM_DifferentialBackward(benchmark::State& state) {
  const Args args(state);
  Matched& m = matched(args.n, args.d);
  MatchedGradients& g = m.gradients();
  const auto options = args.options();
  reset_peak_rss();
  for (auto _ : state) {
    diffattn::diff_attention_backward<float>(m.q1, m.q2, m.k1, m.k2, m.v2, m.lambda, g.dout2, g.dq1, g.dq2, g.dk1,
                                             g.dk2, g.dv2, g.dlambda, options);
    benchmark::ClobberMemory();
  }
  set_compute_counters(state, matched_backward_flops(args.n, args.d, args.causal), args.threads);
}

/// Differential attention as two standard calls and a subtraction (12·N²·d per head).
void BM_DifferentialComposed(benchmark::State& state) {
  const Args args(state);
  Matched& m = problem(args.n, args.d);
  const auto options = args.options();
  reset_peak_rss();
  for (auto _ : state) {
    diffattn::softmax_attention<float>(m.q1, m.k1, m.v2, m.out2, options);
    diffattn::softmax_attention<float>(m.q2, m.k2, m.v2, m.tmp, options);
    float* out = m.out2.data();
    const float* second = m.tmp.data();
    const index_t per_head = args.n * 2 * args.d;
    for (index_t h = 0; h < diff_heads; ++h) {
      const float lambda = m.lambda(h);
      for (index_t i = h * per_head; i < (h + 1) * per_head; ++i) out[i] -= lambda * second[i];
    }
    benchmark::ClobberMemory();
  }
  // The same useful work as the fused kernel, so GFLOP/s compare like for like.
  set_compute_counters(state, matched_flops(args.n, args.d, args.causal), args.threads);
}

/// Plain materialized attention: S = scale·Q·Kᵀ with Eigen (N×N per head), a full
/// row softmax, O = P·V with Eigen. One thread: built with OpenMP, Eigen's GEMM would
/// otherwise use every core (it did, and ran 1.8× faster than the 1-thread runs it is
/// compared with).
void BM_NaiveMaterialized(benchmark::State& state) {
  const Args args(state);
  Matched& m = problem(args.n, args.d);
  const int eigen_threads = Eigen::nbThreads();
  Eigen::setNbThreads(1);
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMajor scores(args.n, args.n);
  reset_peak_rss();
  const float scale = 1.0f / std::sqrt(static_cast<float>(args.d));
  for (auto _ : state) {
    for (index_t h = 0; h < 2 * diff_heads; ++h) {
      const auto q = diffattn::as_eigen(m.q.view().select(0, 0).select(0, h));
      const auto k = diffattn::as_eigen(m.k.view().select(0, 0).select(0, h));
      const auto v = diffattn::as_eigen(m.v.view().select(0, 0).select(0, h));
      auto out = diffattn::as_eigen(m.out.view().select(0, 0).select(0, h));
      scores.noalias() = scale * (q * k.transpose());
      for (index_t i = 0; i < args.n; ++i) {
        auto row = scores.row(i);
        if (args.causal) row.tail(args.n - i - 1).setConstant(-std::numeric_limits<float>::infinity());
        row = (row.array() - row.maxCoeff()).exp();
        row /= row.sum();
      }
      out.noalias() = scores * v;
    }
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(eigen_threads);
  set_compute_counters(state, matched_flops(args.n, args.d, args.causal), 1);
}

/// One query token per head (8 heads, d = 128) against K/V [1, Hkv, Nk, d] views,
/// grouped-query; counts the bytes of K and V read, in their element type.
/// With a half-precision cache the query is of the cache's type, as a model kept in that
/// type projects it, and the output is float, as the fp32 rows write: the query and output
/// are 1/Nk of the bytes, so only the cache's type tells the rows apart.
template <class KV>
void run_decode(benchmark::State& state, TensorView<const KV, 4> k, TensorView<const KV, 4> v) {
  const index_t q_heads = 8, d = k.extent(3), kv_heads = k.extent(1), kv_len = k.extent(2);
  const int threads = state.range(2) == 0 ? all_threads() : static_cast<int>(state.range(2));
  const auto q = random_tensor_as<KV>({1, q_heads, 1, d}, 11);
  Tensor<float, 4> out({1, q_heads, 1, d});
  diffattn::AttentionOptions<float> options;
  options.threads = threads;
  reset_peak_rss();
  for (auto _ : state) {
    if constexpr (std::is_same_v<KV, float>) {
      diffattn::softmax_attention<float>(q, k, v, out, options);
    } else {
      diffattn::softmax_attention(q, k, v, out.view(), options);
    }
    benchmark::ClobberMemory();
  }
  const double bytes = static_cast<double>(2 * kv_heads * kv_len * d) * sizeof(KV);
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
  state.counters["RSS_MiB"] = peak_rss_mib();
}

/// Decoding: K/V as [1, Hkv, Nk, d] tensors of KV (the head-major layout KVCache stores).
template <class KV>
void BM_Decode(benchmark::State& state) {
  const index_t kv_len = state.range(0), d = 128, kv_heads = state.range(1);
  const auto k = random_tensor_as<KV>({1, kv_heads, kv_len, d}, 12);
  const auto v = random_tensor_as<KV>({1, kv_heads, kv_len, d}, 13);
  run_decode<KV>(state, k.view(), v.view());
}

/// Decoding from a diffattn::KVCache filled with Nk tokens, the way the blocks decode.
void BM_DecodeKVCache(benchmark::State& state) {
  const index_t kv_len = state.range(0), d = 128, kv_heads = state.range(1);
  diffattn::KVCache<float> cache(1, kv_len, kv_heads, d, kv_heads, d);
  {
    const auto k = random_tensor({1, kv_len, kv_heads, d}, 12);
    const auto v = random_tensor({1, kv_len, kv_heads, d}, 13);
    cache.append(k, v);
  }
  run_decode<float>(state, diffattn::bnhd_to_bhnd(cache.keys()), diffattn::bnhd_to_bhnd(cache.values()));
}

/// Decoding from K/V kept in the projection layout [1, Nk, Hkv, d] (a head's rows
/// Hkv·d apart), read through [B, H, N, D] views: what a cache in that layout costs.
void BM_DecodeProjectionLayout(benchmark::State& state) {
  const index_t kv_len = state.range(0), d = 128, kv_heads = state.range(1);
  const auto k = random_tensor({1, kv_len, kv_heads, d}, 12);
  const auto v = random_tensor({1, kv_len, kv_heads, d}, 13);
  run_decode<float>(state, diffattn::bnhd_to_bhnd(k.view()), diffattn::bnhd_to_bhnd(v.view()));
}

/// The start-up bandwidth loop again, as a benchmark among the decoding runs (arg: streams
/// per thread): on a shared host the bandwidth moves while the sweep runs (the start-up
/// loop read 92 and 49 GB/s in two start-ups 25 minutes apart on a 2-core Zen 5), and
/// the decoding rates with it, so "% of read bandwidth" is taken against the larger of
/// the start-up figure and the best median of these, sampled in the same run and, with
/// --benchmark_enable_random_interleaving, between the decoding runs.
void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = all_threads(), streams = static_cast<int>(state.range(0));
  const diffattn::Tensor<float, 1> buffer = bandwidth_buffer(threads);
  std::size_t bytes = 0;
  for (auto _ : state) bytes = read_pass(buffer.data(), bandwidth_elements, threads, streams);
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

/// N = 65536, one differential head: the memory target (resident memory beyond inputs).
void BM_LongSequenceMemory(benchmark::State& state) {
  const index_t n = state.range(0), d = 64;
  auto q1 = random_tensor({1, 1, n, d}, 21), q2 = random_tensor({1, 1, n, d}, 22);
  auto k1 = random_tensor({1, 1, n, d}, 23), k2 = random_tensor({1, 1, n, d}, 24);
  auto v = random_tensor({1, 1, n, 2 * d}, 25);
  Tensor<float, 4> out({1, 1, n, 2 * d});
  Tensor<float, 1> lambda({1}, 0.5f);
  diffattn::AttentionOptions<float> options;
  options.causal = true;
  diffattn::release_scratch();
#if defined(__GLIBC__)
  // Earlier benchmarks leave freed blocks resident in malloc's heap, where the scratch
  // would be placed without raising the RSS: hand them back to the kernel first.
  malloc_trim(0);
#endif
  const double before = status_mib("VmRSS");  // inputs and output are resident (zeroed or filled)
  reset_peak_rss();
  for (auto _ : state) {
    diffattn::diff_attention<float>(q1, q2, k1, k2, v, lambda, out, options);
    benchmark::ClobberMemory();
  }
  // One differential head (V width 2d) is the work of two standard heads: 1/h of the
  // matched problem.
  set_compute_counters(state, matched_flops(n, d, true) / diff_heads, all_threads());
  state.counters["RSS_beyond_io_MiB"] = peak_rss_mib() - before;
}

// ---- the sweep ----------------------------------------------------------------------

void register_prefill(const std::vector<int64_t>& args, bool baselines, bool naive) {
  auto add = [&](const char* name, void (*fn)(benchmark::State&)) {
    benchmark::RegisterBenchmark(name, fn)->Args(args)->Unit(benchmark::kMillisecond)->UseRealTime();
  };
  add("Standard", BM_Standard);
  add("Differential", BM_Differential);
  if (baselines) add("DifferentialComposed", BM_DifferentialComposed);
  if (naive) add("NaiveMaterialized", BM_NaiveMaterialized);
  add("StandardBf16", BM_StandardBf16);
  add("DifferentialBf16", BM_DifferentialBf16);
}

void register_backward(const std::vector<int64_t>& args) {
  for (auto [name, fn] : {std::pair{"StandardBackward", BM_StandardBackward},
                          std::pair{"DifferentialBackward", BM_DifferentialBackward}}) {
    benchmark::RegisterBenchmark(name, fn)->Args(args)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
}

void register_benchmarks(bool full) {
  const std::vector<index_t> sizes = full ? std::vector<index_t>{128, 512, 1024, 2048, 4096, 8192, 16384}
                                          : std::vector<index_t>{512, 2048};
  const std::vector<index_t> widths = full ? std::vector<index_t>{64, 128} : std::vector<index_t>{64};
  for (index_t n : sizes) {
    for (index_t d : widths) {
      for (int causal : {0, 1}) {
        if (!full && causal && n != 2048) continue;
        for (int threads : {1, 0}) {
          register_prefill({n, d, causal, threads}, true, threads == 1 && n <= (full ? 8192 : 2048));
          // The backward rows after their cell's forward ones, for the backward/forward ratio.
          if (full && n >= 512 && n <= 8192) register_backward({n, d, causal, threads});
        }
      }
    }
  }
  if (!full) {
    // The bf16 speed-up target's other width (N = 2048, d = 128, one thread), without the
    // baselines, to keep the short sweep short.
    for (int causal : {0, 1}) register_prefill({2048, 128, causal, 1}, false, false);
    // The backward rows at N = 2048 for both widths. Their backward/forward ratio needs the
    // standard forward of each cell, which the rows above lack at d = 128 on all threads.
    for (index_t d : {64, 128}) {
      for (int causal : {0, 1}) {
        for (int threads : {1, 0}) {
          if (d == 128 && threads == 0) {
            benchmark::RegisterBenchmark("Standard", BM_Standard)->Args({2048, d, causal, threads})
                ->Unit(benchmark::kMillisecond)->UseRealTime();
          }
          register_backward({2048, d, causal, threads});
        }
      }
    }
  }
  const std::vector<index_t> decode_lengths = full ? std::vector<index_t>{4096, 32768, 65536} : std::vector<index_t>{32768};
  for (index_t kv_len : decode_lengths) {
    for (index_t kv_heads : {8, 2}) {
      const std::vector<int64_t> args{kv_len, kv_heads, 0};
      benchmark::RegisterBenchmark("Decode", BM_Decode<float>)->Args(args)->Unit(benchmark::kMillisecond)->UseRealTime();
      benchmark::RegisterBenchmark("DecodeBf16", BM_Decode<bf16>)->Args(args)->Unit(benchmark::kMillisecond)->UseRealTime();
      benchmark::RegisterBenchmark("DecodeF16", BM_Decode<f16>)->Args(args)->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
  for (int streams : {1, 2, 4}) {
    benchmark::RegisterBenchmark("ReadBandwidth", BM_ReadBandwidth)->Arg(streams)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  for (index_t kv_heads : {8, 2}) {  // the same decode, K/V stored two other ways
    const std::vector<int64_t> args{32768, kv_heads, 0};
    benchmark::RegisterBenchmark("DecodeKVCache", BM_DecodeKVCache)->Args(args)->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark("DecodeProjectionLayout", BM_DecodeProjectionLayout)->Args(args)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  if (full) {
    benchmark::RegisterBenchmark("LongSequenceMemory", BM_LongSequenceMemory)->Arg(65536)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
  }
}

/// Collects every run so the ratios can be printed after the usual console output.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      // Single runs, or with --benchmark_repetitions the median of the repetitions.
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (run.error_occurred || (run.run_type != Run::RT_Iteration && !median)) continue;
      if (run.run_type == Run::RT_Iteration && run.repetitions > 1) continue;
      std::string name = run.run_name.str();
      const std::string suffix = "/real_time";
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        name.resize(name.size() - suffix.size());
      }
      results_[name] = run.GetAdjustedRealTime();  // in the benchmark's unit, ms
      order_.push_back(name);
      auto counter = [&](const char* key) {
        const auto it = run.counters.find(key);
        return it == run.counters.end() ? 0.0 : static_cast<double>(it->second);
      };
      rates_[name] = {counter("GFLOP/s"), counter("GB/s"), counter("threads")};
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\nMachine (measured at start-up): fp32 FMA peak %.1f GFLOP/s per core, %d threads, "
                "read bandwidth %.1f GB/s (%d stream%s per thread)\n",
                machine.fma_peak_gflops, all_threads(), machine.read_gbs, machine.read_streams,
                machine.read_streams == 1 ? "" : "s");
    const double peak_after = measure_fma_peak_gflops();
    std::printf("FMA peak measured again after the runs: %.1f GFLOP/s%s\n", peak_after,
                peak_after > 1.05 * machine.fma_peak_gflops ? " (over 5% above start-up: every % of peak below is overstated)" : "");
    int streams_after = 1;
    const double read_after = measure_read_bandwidth_gbs(all_threads(), &streams_after);
    double read_in_run = 0;
    for (const auto& [name, rates] : rates_) {
      if (name.rfind("ReadBandwidth/", 0) == 0) read_in_run = std::max(read_in_run, rates.gbs);
    }
    const double read_reference = std::max(machine.read_gbs, read_in_run);
    std::printf("Read bandwidth measured again after the runs: %.1f GB/s; best in-run median (ReadBandwidth): %.1f GB/s\n"
                "%% of read bandwidth below is against the larger of start-up and in-run: %.1f GB/s\n",
                read_after, read_in_run, read_reference);
    std::printf("%-48s %10s %10s %8s\n", "benchmark (N/d/causal/threads; decode: Nk/Hkv)", "time ms", "rate", "% peak");
    for (const std::string& name : order_) {
      const Rates& r = rates_[name];
      const double ms = results_[name];
      if (r.gflops > 0) {
        const double peak = machine.fma_peak_gflops * std::max(r.threads, 1.0);
        std::printf("%-48s %10.3f %7.1f GF %7.1f%%\n", name.c_str(), ms, r.gflops, 100 * r.gflops / peak);
      } else if (r.gbs > 0) {
        std::printf("%-48s %10.3f %7.1f GB %7.1f%%\n", name.c_str(), ms, r.gbs, 100 * r.gbs / read_reference);
      }
    }
    std::printf("(%% peak is against the fp32 FMA peak for the bf16 rows too.)\n");
    std::printf("\n%-30s %9s %15s %12s | %13s %10s %10s\n", "problem (N/d/causal/threads)", "diff/std",
                "fused/composed", "naive/fused", "bf16 diff/std", "bf16x std", "bf16x diff");
    for (const auto& [name, time] : results_) {
      const std::string prefix = "Differential/";
      if (name.rfind(prefix, 0) != 0) continue;
      const std::string key = name.substr(prefix.size());
      const double standard = lookup("Standard/" + key);
      const double composed = lookup("DifferentialComposed/" + key);
      const double naive = lookup("NaiveMaterialized/" + key);
      const double standard_bf16 = lookup("StandardBf16/" + key);
      const double diff_bf16 = lookup("DifferentialBf16/" + key);
      std::printf("%-30s %9s %15s %12s | %13s %10s %10s\n", key.c_str(), ratio(time, standard).c_str(),
                  ratio(composed, time).c_str(), ratio(naive, standard).c_str(), ratio(diff_bf16, standard_bf16).c_str(),
                  ratio(standard, standard_bf16).c_str(), ratio(time, diff_bf16).c_str());
    }
    std::printf("diff/std: time of differential over standard attention at the matched size (target <= 1.05; bf16 too)\n"
                "fused/composed: speed-up of the fused differential kernel over two standard calls (target >= 1.4)\n"
                "naive/fused: speed-up of the fused standard kernel over materialized attention (target >= 4 at N = 4096)\n"
                "bf16x: speed-up of bf16 q/k/v/out over fp32, fp32 time / bf16 time (target >= 1.5 at N = 2048, 1 thread)\n");
    print_backward_table();
    std::printf("\n%-30s %9s | %10s %8s | %10s %8s\n", "decode (Nk/Hkv/threads)", "fp32 % bw", "bf16x", "% bw",
                "f16x", "% bw");
    for (const auto& [name, time] : results_) {
      const std::string prefix = "Decode/";
      if (name.rfind(prefix, 0) != 0) continue;
      const std::string key = name.substr(prefix.size());
      const double bf16_time = lookup("DecodeBf16/" + key), f16_time = lookup("DecodeF16/" + key);
      std::printf("%-30s %9s | %10s %8s | %10s %8s\n", key.c_str(), share(name, read_reference).c_str(),
                  ratio(time, bf16_time).c_str(), share("DecodeBf16/" + key, read_reference).c_str(),
                  ratio(time, f16_time).c_str(), share("DecodeF16/" + key, read_reference).c_str());
    }
    std::printf("bf16x, f16x: speed-up of a bf16 or f16 K/V over fp32, fp32 time / half time (target >= 1.8 at Hkv 8,\n"
                "  >= 1.5 at Hkv 2, Nk = 32768); %% bw: GB/s of the K/V bytes in their own type over the read bandwidth\n"
                "  (target >= 70%%)\n");
  }

 private:
  /// The backward rows, one line per N/d/causal/threads cell in the sweep's order.
  void print_backward_table() const {
    std::vector<std::array<long, 4>> cells;
    for (const auto& entry : results_) {
      for (const char* prefix : {"StandardBackward/", "DifferentialBackward/"}) {
        std::array<long, 4> cell{};
        if (entry.first.rfind(prefix, 0) == 0 &&
            std::sscanf(entry.first.c_str() + std::strlen(prefix), "%ld/%ld/%ld/%ld", &cell[0], &cell[1], &cell[2],
                        &cell[3]) == 4) {
          cells.push_back(cell);
        }
      }
    }
    if (cells.empty()) return;
    // Threads 1 before 0 (all cores), so each speed-up sits under its one-thread line.
    const auto order = [](const std::array<long, 4>& c) {
      return std::array<long, 4>{c[0], c[1], c[2], c[3] == 0 ? 1L << 30 : c[3]};
    };
    std::sort(cells.begin(), cells.end(), [&](const auto& a, const auto& b) { return order(a) < order(b); });
    cells.erase(std::unique(cells.begin(), cells.end()), cells.end());
    const std::string speedup = std::to_string(all_threads()) + "T/1T";
    std::printf("\n%-30s %10s %8s %9s | %13s %13s\n", "backward (N/d/causal/threads)", "std % peak", "bwd/fwd",
                "diff/std", (speedup + " std").c_str(), (speedup + " diff").c_str());
    for (const auto& cell : cells) {
      char key[96];
      std::snprintf(key, sizeof key, "%ld/%ld/%ld/%ld", cell[0], cell[1], cell[2], cell[3]);
      char one_thread[96];
      std::snprintf(one_thread, sizeof one_thread, "%ld/%ld/%ld/1", cell[0], cell[1], cell[2]);
      const std::string standard = "StandardBackward/" + std::string(key);
      const std::string differential = "DifferentialBackward/" + std::string(key);
      const bool threaded = cell[3] != 1;
      std::printf("%-30s %10s %8s %9s | %13s %13s\n", key, peak_share(standard).c_str(),
                  ratio(lookup(standard), lookup("Standard/" + std::string(key))).c_str(),
                  ratio(lookup(differential), lookup(standard)).c_str(),
                  threaded ? ratio(lookup("StandardBackward/" + std::string(one_thread)), lookup(standard)).c_str() : "",
                  threaded ? ratio(lookup("DifferentialBackward/" + std::string(one_thread)), lookup(differential)).c_str()
                           : "");
    }
    std::printf("std %% peak: the standard backward's GFLOP/s over the FMA peak × threads, counting 2.5× the\n"
                "  forward's FLOPs (10·N²·d per standard head of width d; causal: the unmasked half)\n"
                "bwd/fwd: time of the standard backward over the standard forward (2.5 at equal GFLOP/s)\n"
                "diff/std: time of the differential backward over the standard backward at the matched size\n"
                "%s: speed-up of each backward from 1 thread to %d (1-thread time / %d-thread time)\n",
                speedup.c_str(), all_threads(), all_threads());
  }
  /// A compute row's GFLOP/s as a share of the FMA peak times its threads, or "-".
  std::string peak_share(const std::string& name) const {
    const auto it = rates_.find(name);
    if (it == rates_.end() || it->second.gflops <= 0 || machine.fma_peak_gflops <= 0) return "-";
    char text[32];
    std::snprintf(text, sizeof text, "%.1f%%",
                  100 * it->second.gflops / (machine.fma_peak_gflops * std::max(it->second.threads, 1.0)));
    return text;
  }
  double lookup(const std::string& name) const {
    const auto it = results_.find(name);
    return it == results_.end() ? 0 : it->second;
  }
  /// A decoding row's GB/s as a share of the read bandwidth, or "-" if it did not run.
  std::string share(const std::string& name, double read_reference) const {
    const auto it = rates_.find(name);
    if (it == rates_.end() || it->second.gbs <= 0 || read_reference <= 0) return "-";
    char text[32];
    std::snprintf(text, sizeof text, "%.0f%%", 100 * it->second.gbs / read_reference);
    return text;
  }
  static std::string ratio(double a, double b) {
    if (a <= 0 || b <= 0) return "-";
    char text[32];
    std::snprintf(text, sizeof text, "%.2f", a / b);
    return text;
  }
  struct Rates {
    double gflops, gbs, threads;
  };
  std::map<std::string, double> results_;  // ms per iteration
  std::map<std::string, Rates> rates_;
  std::vector<std::string> order_;
};

}  // namespace

int main(int argc, char** argv) {
  bool full = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--full") == 0) {
      full = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  int count = static_cast<int>(args.size());
  benchmark::Initialize(&count, args.data());
  machine.fma_peak_gflops = measure_fma_peak_gflops();
  machine.read_gbs = measure_read_bandwidth_gbs(all_threads(), &machine.read_streams);
  benchmark::AddCustomContext("fma_peak_gflops_per_core", std::to_string(machine.fma_peak_gflops));
  benchmark::AddCustomContext("read_bandwidth_gbs", std::to_string(machine.read_gbs));
  benchmark::AddCustomContext("read_bandwidth_streams_per_thread", std::to_string(machine.read_streams));
  register_benchmarks(full);
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
