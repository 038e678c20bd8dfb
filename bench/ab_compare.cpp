// In-process A/B of the attention kernels: an older diffattn (its headers copied with the
// namespace renamed to diffattn_old by scripts/ab.sh) against the working tree, in one
// binary. Each round times both, alternating which goes first, and the report is the
// median of the per-round ratios new/old, so a noisy shared machine slows both sides
// alike. The cases are the short sweep of bench_attention.cpp (prefill N = 512 and 2048,
// d = 64, causal at 2048, 1 and 2 threads; decoding Nk = 32768, d = 128, head-major and
// [B, N, H, D] K/V).
//
//   bash scripts/ab.sh <commit> [rounds] [name filter]
//   AB_ONLY=old|new ...   runs one side `rounds` times untimed (for perf or callgrind)

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include DIFFATTN_AB_OLD_HEADER  // the old attention.hpp, namespace diffattn_old
#include <diffattn/attention.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using diffattn::index_t;
using Shape = std::array<index_t, 4>;

/// The same calls written once for both libraries.
template <template <class, std::size_t> class View, class Options, class Kernels>
struct Library {
  template <class T, std::size_t R>
  using view = View<T, R>;
  using options = Options;
  using kernels = Kernels;
};
struct OldKernels {
  template <class... A> static void diff(A... a) { diffattn_old::diff_attention<float>(a...); }
  template <class... A> static void standard(A... a) { diffattn_old::softmax_attention<float>(a...); }
};
struct NewKernels {
  template <class... A> static void diff(A... a) { diffattn::diff_attention<float>(a...); }
  template <class... A> static void standard(A... a) { diffattn::softmax_attention<float>(a...); }
};
using Old = Library<diffattn_old::TensorView, diffattn_old::AttentionOptions<float>, OldKernels>;
using New = Library<diffattn::TensorView, diffattn::AttentionOptions<float>, NewKernels>;

std::vector<float> random_data(index_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

/// One call's inputs and output, shared by both sides.
struct Problem {
  std::string name;
  bool diff = false, causal = false, heads_interleaved = false;
  int threads = 1;
  index_t q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, d = 0, dv = 0;
  std::vector<float> q1, q2, k1, k2, v, out, lambda;

  void allocate() {
    q1 = random_data(q_heads * q_len * d, 1);
    q2 = random_data(q_heads * q_len * d, 2);
    k1 = random_data(kv_heads * kv_len * d, 3);
    k2 = random_data(kv_heads * kv_len * d, 4);
    v = random_data(kv_heads * kv_len * dv, 5);
    out.assign(static_cast<std::size_t>(q_heads * q_len * dv), 0);
    lambda.assign(static_cast<std::size_t>(q_heads), 0.5f);
  }

  template <class L>
  void run() const {
    using V = typename L::template view<const float, 4>;
    using O = typename L::template view<float, 4>;
    using Lambda = typename L::template view<const float, 1>;
    typename L::options options;
    options.causal = causal;
    options.threads = threads;
    auto kv = [&](const float* data, index_t width) {
      return heads_interleaved ? V(data, Shape{1, kv_len, kv_heads, width}).permute({0, 2, 1, 3})
                               : V(data, Shape{1, kv_heads, kv_len, width});
    };
    const V q1_view(q1.data(), Shape{1, q_heads, q_len, d}), q2_view(q2.data(), Shape{1, q_heads, q_len, d});
    const O out_view(const_cast<float*>(out.data()), Shape{1, q_heads, q_len, dv});
    if (diff) {
      L::kernels::diff(q1_view, q2_view, kv(k1.data(), d), kv(k2.data(), d), kv(v.data(), dv),
                       Lambda(lambda.data(), {q_heads}), out_view, options);
    } else {
      L::kernels::standard(q1_view, kv(k1.data(), d), kv(v.data(), dv), out_view, options);
    }
  }
};

/// bench_attention's matched prefill: 4 standard heads of width d, or 2 differential heads
/// (Q/K width d, V width 2d).
Problem prefill(bool diff, index_t n, index_t d, bool causal, int threads) {
  Problem p;
  p.name = std::string(diff ? "Differential" : "Standard") + "/" + std::to_string(n) + "/" + std::to_string(d) +
           "/" + std::to_string(causal) + "/" + std::to_string(threads);
  p.diff = diff;
  p.causal = causal;
  p.threads = threads;
  p.q_heads = p.kv_heads = diff ? 2 : 4;
  p.q_len = p.kv_len = n;
  p.d = d;
  p.dv = diff ? 2 * d : d;
  return p;
}

/// Decoding one token: 8 query heads at d = 128 (differential: 4 heads, d = 64, Dv = 128).
Problem decode(bool diff, index_t kv_len, index_t kv_heads, bool interleaved, int threads) {
  Problem p;
  p.name = std::string(diff ? "DiffDecode" : "Decode") + "/" + std::to_string(kv_len) + "/" +
           std::to_string(kv_heads) + (interleaved ? "/bnhd/" : "/bhnd/") + std::to_string(threads);
  p.diff = diff;
  p.threads = threads;
  p.heads_interleaved = interleaved;
  p.q_heads = diff ? 4 : 8;
  p.kv_heads = kv_heads;
  p.q_len = 1;
  p.kv_len = kv_len;
  p.d = diff ? 64 : 128;
  p.dv = 128;
  return p;
}

/// Seconds per call, repeating for at least `min_seconds`.
double seconds_per_call(const std::function<void()>& call, double min_seconds) {
  int calls = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    call();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < min_seconds);
  return elapsed / calls;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 15;
  const std::string filter = argc > 2 ? argv[2] : "";
  const char* only = std::getenv("AB_ONLY");
  std::vector<Problem> problems;
  for (int threads : {1, 2}) {
    for (bool diff : {false, true}) {
      problems.push_back(prefill(diff, 512, 64, false, threads));
      problems.push_back(prefill(diff, 2048, 64, false, threads));
      problems.push_back(prefill(diff, 2048, 64, true, threads));
    }
  }
  for (int threads : {1, 2}) {
    for (index_t kv_heads : {8, 2}) {
      for (bool interleaved : {false, true}) problems.push_back(decode(false, 32768, kv_heads, interleaved, threads));
    }
    problems.push_back(decode(true, 32768, 2, false, threads));
  }
  for (Problem& p : problems) {
    if (!filter.empty() && p.name.find(filter) == std::string::npos) continue;
    p.allocate();
    const std::function<void()> run_old = [&p] { p.run<Old>(); };
    const std::function<void()> run_new = [&p] { p.run<New>(); };
    if (only != nullptr) {
      for (int r = 0; r < rounds; ++r) (std::string(only) == "old" ? run_old : run_new)();
      continue;
    }
    run_old();  // warm up both: scratch, page faults, caches
    run_new();
    std::vector<double> ratios, old_times, new_times;
    for (int r = 0; r < rounds; ++r) {
      const bool old_first = r % 2 == 0;
      const double first = seconds_per_call(old_first ? run_old : run_new, 0.15);
      const double second = seconds_per_call(old_first ? run_new : run_old, 0.15);
      old_times.push_back(old_first ? first : second);
      new_times.push_back(old_first ? second : first);
      ratios.push_back(new_times.back() / old_times.back());
    }
    std::printf("%-32s old %9.3f ms  new %9.3f ms  new/old median x%.3f  (rounds %d, min x%.3f, max x%.3f)\n",
                p.name.c_str(), 1e3 * median(old_times), 1e3 * median(new_times), median(ratios), rounds,
                *std::min_element(ratios.begin(), ratios.end()), *std::max_element(ratios.begin(), ratios.end()));
    std::fflush(stdout);
  }
}
