// The kernels called from several std::threads at once: each thread with its own outputs,
// its own OpenMP team (options.threads 1, 2 and 0) and its own scratch, which it releases
// between calls at random. Every output must equal, bit for bit, a run of the same
// problem on the main thread with options.threads = 1 (attention.hpp promises results
// independent of the thread count; the scratch cache is thread_local, so one thread's
// release_scratch() must not touch another's).

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "helpers.hpp"
#include "random_weights.hpp"

// Passes over every problem per thread, each in its own random order; fewer under
// AddressSanitizer, where the kernels run about 20 times slower.
#if defined(__SANITIZE_ADDRESS__)
#define DIFFATTN_THREADS_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DIFFATTN_THREADS_UNDER_ASAN 1
#endif
#endif
#ifndef DIFFATTN_THREAD_ROUNDS
#ifdef DIFFATTN_THREADS_UNDER_ASAN
#define DIFFATTN_THREAD_ROUNDS 2
#else
#define DIFFATTN_THREAD_ROUNDS 4
#endif
#endif

namespace diffattn_test {
namespace {

using diffattn::AttentionOptions;

constexpr int kWorkers = 4;

/// One call with fixed, shared, read-only inputs. run(threads, out) writes the whole
/// contiguous output (out_bytes) with options.threads = threads (or the block's threads).
struct Problem {
  std::string name;
  std::size_t element_bytes = 0;
  std::size_t out_bytes = 0;
  std::function<void(int threads, void* out)> run;
  std::vector<unsigned char> expected;  // run(1, ·) on the main thread
};

enum class Kernel { softmax, diff_per_head, diff_per_token };

struct KernelCase {
  Kernel kernel;
  index_t batch, kv_heads, group, q_len, kv_len, head_dim, value_dim;
  bool causal = false;
  bool key_padding_mask = false;
  bool heads_interleaved = false;  // K and V stored [B, N, H, D], seen as [B, H, N, D]
  std::size_t workspace_limit = AttentionOptions<float>{}.workspace_limit;
};

/// The tensors behind a KernelCase; the views are what the kernels read.
template <class T>
struct KernelInputs {
  Tensor<T, 4> q1, q2, k1, k2, v, mask;
  TensorView<const T, 4> k1_view, k2_view, v_view;
  Tensor<T, 1> lambda_head;
  Tensor<T, 3> lambda_token;

  KernelInputs(const KernelCase& c, std::mt19937_64& rng) {
    const index_t q_heads = c.kv_heads * c.group;
    q1 = random_tensor<T, 4>({c.batch, q_heads, c.q_len, c.head_dim}, rng);
    q2 = random_tensor<T, 4>({c.batch, q_heads, c.q_len, c.head_dim}, rng);
    auto kv = [&](Tensor<T, 4>& storage, index_t width, double bound) {
      if (c.heads_interleaved) {
        storage = random_tensor<T, 4>({c.batch, c.kv_len, c.kv_heads, width}, rng, -bound, bound);
        return diffattn::bnhd_to_bhnd(TensorView<const T, 4>(storage.view()));
      }
      storage = random_tensor<T, 4>({c.batch, c.kv_heads, c.kv_len, width}, rng, -bound, bound);
      return TensorView<const T, 4>(storage.view());
    };
    k1_view = kv(k1, c.head_dim, 1);
    k2_view = kv(k2, c.head_dim, 1);
    v_view = kv(v, c.value_dim, 2);
    lambda_head = random_tensor<T, 1>({q_heads}, rng, -0.2, 1.0);
    lambda_token = random_tensor<T, 3>({c.batch, q_heads, c.q_len}, rng, -0.2, 1.0);
    if (c.key_padding_mask) {  // [B, 1, 1, Nk]: every fifth key masked, the rest a bias
      mask = random_tensor<T, 4>({c.batch, 1, 1, c.kv_len}, rng, -2, 2);
      for (index_t b = 0; b < c.batch; ++b) {
        for (index_t j = 0; j < c.kv_len; j += 5) mask(b, 0, 0, j) = -std::numeric_limits<T>::infinity();
      }
    }
  }
};

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

template <class T>
Problem kernel_problem(const std::string& what, const KernelCase& c, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto in = std::make_shared<const KernelInputs<T>>(c, rng);
  const std::array<index_t, 4> out_shape{c.batch, c.kv_heads * c.group, c.q_len, c.value_dim};
  Problem p;
  std::ostringstream name;
  name << type_name<T>() << " " << what << " (B=" << c.batch << " Hkv=" << c.kv_heads
       << " group=" << c.group << " Nq=" << c.q_len << " Nk=" << c.kv_len << " D=" << c.head_dim
       << " Dv=" << c.value_dim << " causal=" << c.causal << " seed=" << seed << ")";
  p.name = name.str();
  p.element_bytes = sizeof(T);
  p.out_bytes = static_cast<std::size_t>(out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3]) * sizeof(T);
  p.run = [in, c, out_shape](int threads, void* out) {
    AttentionOptions<T> options;
    options.causal = c.causal;
    options.threads = threads;
    options.workspace_limit = c.workspace_limit;
    if (c.key_padding_mask) options.mask = in->mask.view();
    const TensorView<T, 4> out_view(static_cast<T*>(out), out_shape);
    switch (c.kernel) {
      case Kernel::softmax:
        diffattn::softmax_attention<T>(in->q1.view(), in->k1_view, in->v_view, out_view, options);
        break;
      case Kernel::diff_per_head:
        diffattn::diff_attention<T>(in->q1.view(), in->q2.view(), in->k1_view, in->k2_view, in->v_view,
                                    in->lambda_head.view(), out_view, options);
        break;
      case Kernel::diff_per_token:
        diffattn::diff_attention<T>(in->q1.view(), in->q2.view(), in->k1_view, in->k2_view, in->v_view,
                                    in->lambda_token.view(), out_view, options);
        break;
    }
  };
  return p;
}

/// One decoding step of a block through a KVCache that already holds a prompt. Each
/// call appends to its own copy of the cache; the blocks' kernel threads are fixed at
/// construction, so there is one block per thread count, all with the same weights.
template <class T, class Block, class Config>
Problem block_decode_problem(const std::string& what, Config config, index_t batch, index_t prompt,
                             std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  struct State {
    std::vector<Block> blocks;  // threads 1, 2, 0
    diffattn::KVCache<T> cache;
    Tensor<T, 3> token;
  };
  auto state = std::make_shared<State>();
  const auto weights = examples::random_weights<T>(config, seed);
  for (int threads : {1, 2, 0}) {
    config.threads = threads;
    state->blocks.emplace_back(config, weights);
  }
  state->cache = state->blocks.front().make_cache(batch, prompt + 1);
  const Tensor<T, 3> prompt_tokens = random_tensor<T, 3>({batch, prompt, config.embed_dim}, rng);
  state->blocks.front().forward(prompt_tokens.view(), state->cache);
  state->token = random_tensor<T, 3>({batch, 1, config.embed_dim}, rng);
  Problem p;
  std::ostringstream name;
  name << type_name<T>() << " " << what << " (B=" << batch << " cached=" << prompt << " seed=" << seed << ")";
  p.name = name.str();
  p.element_bytes = sizeof(T);
  p.out_bytes = static_cast<std::size_t>(batch * config.embed_dim) * sizeof(T);
  const std::size_t out_bytes = p.out_bytes;
  std::shared_ptr<const State> shared = state;
  p.run = [shared, out_bytes](int threads, void* out) {
    const Block& block = shared->blocks[threads == 1 ? 0 : threads == 2 ? 1 : 2];
    diffattn::KVCache<T> cache = shared->cache;
    const Tensor<T, 3> y = block.forward(shared->token.view(), cache);
    std::memcpy(out, y.data(), out_bytes);
  };
  return p;
}

template <class T>
void add_problems(std::vector<Problem>& problems) {
  const std::size_t small_limit = 4096;  // below one tile's two-pass workspace: streaming
  // Prefill: many query tiles, keys in one chunk. Sizes avoid multiples of the SIMD width.
  problems.push_back(kernel_problem<T>("softmax GQA", {Kernel::softmax, 2, 2, 3, 37, 53, 36, 23}, 11));
  problems.push_back(kernel_problem<T>("softmax causal GQA key-padding mask",
                                       {Kernel::softmax, 1, 3, 2, 70, 90, 20, 20, true, true}, 12));
  problems.push_back(kernel_problem<T>("diff per-head λ two-pass causal",
                                       {Kernel::diff_per_head, 2, 2, 2, 45, 77, 24, 48, true}, 13));
  problems.push_back(kernel_problem<T>("diff per-token λ two-pass",
                                       {Kernel::diff_per_token, 2, 1, 3, 29, 61, 17, 34}, 14));
  problems.push_back(kernel_problem<T>(
      "diff per-head λ streaming",
      {Kernel::diff_per_head, 1, 2, 2, 33, 100, 24, 40, false, false, false, small_limit}, 15));
  problems.push_back(kernel_problem<T>(
      "diff per-token λ streaming causal",
      {Kernel::diff_per_token, 1, 1, 4, 19, 70, 40, 33, true, false, false, small_limit}, 16));
  // A two-pass tile whose workspace (rows × Nk, both maps) reaches 4 MiB streams it with
  // non-temporal stores: 256 query heads on one kv head make a 256-row tile, and Nk a
  // little above 4 MiB / (2 · 256 · sizeof(T)) keeps the work small (one tile: the
  // slowest problem here under AddressSanitizer).
  const index_t streamed_keys = static_cast<index_t>((std::size_t{4} << 20) / (2 * 256 * sizeof(T))) + 40;
  problems.push_back(kernel_problem<T>("diff per-head λ two-pass streamed workspace",
                                       {Kernel::diff_per_head, 1, 1, 256, 1, streamed_keys, 4, 5}, 24));
  // Decoding: Nq = 1 against Nk >= 4096 splits the keys in chunks merged in order (8 of
  // 1024 keys at 8192; 5 at 4133, the last one short); with K/V stored [B, N, H, D] one
  // work item takes every kv head (Method::split_heads).
  problems.push_back(kernel_problem<T>("softmax decode split keys",
                                       {Kernel::softmax, 1, 2, 4, 1, 8192, 40, 40}, 17));
  problems.push_back(kernel_problem<T>("softmax decode split keys [B,N,H,D]",
                                       {Kernel::softmax, 1, 2, 4, 1, 8192, 40, 40, false, false, true}, 18));
  problems.push_back(kernel_problem<T>("diff decode split keys",
                                       {Kernel::diff_per_head, 1, 2, 2, 1, 4133, 40, 80}, 19));
  problems.push_back(kernel_problem<T>("diff decode split keys [B,N,H,D]",
                                       {Kernel::diff_per_token, 1, 2, 2, 1, 4133, 40, 80, false, false, true}, 20));
  problems.push_back(kernel_problem<T>("diff decode 3 tokens causal [B,N,H,D]",
                                       {Kernel::diff_per_head, 1, 2, 1, 3, 4133, 24, 48, true, false, true}, 21));

  diffattn::DiffAttentionConfig diff;
  diff.embed_dim = 40;
  diff.num_heads = 4;
  diff.num_kv_heads = 2;
  diff.head_dim = 20;
  diff.causal = true;
  diff.rope = diffattn::RopeStyle::interleaved;
  diff.lambda = diffattn::LambdaMode::per_head;
  problems.push_back(
      block_decode_problem<T, diffattn::MultiHeadDiffAttention<T>>("differential block decode step", diff, 2, 150, 22));
  diffattn::AttentionConfig standard;
  standard.embed_dim = 40;
  standard.num_heads = 4;
  standard.num_kv_heads = 2;
  standard.causal = true;
  standard.rope = diffattn::RopeStyle::half;
  problems.push_back(
      block_decode_problem<T, diffattn::MultiHeadAttention<T>>("standard block decode step", standard, 1, 200, 23));
}

template <class T>
bool all_finite(const std::vector<unsigned char>& bytes) {
  std::vector<T> values(bytes.size() / sizeof(T));
  std::memcpy(values.data(), bytes.data(), bytes.size());
  return std::all_of(values.begin(), values.end(), [](T x) { return std::isfinite(x); });
}

/// Calls every problem `rounds` times in random orders, checking each output; returns a
/// line per mismatch or exception.
std::vector<std::string> run_worker(int worker, const std::vector<Problem>& problems, int rounds) {
  std::vector<std::string> failures;
  std::mt19937_64 rng(1000 + static_cast<std::uint64_t>(worker));
  std::vector<std::vector<unsigned char>> outputs;
  for (const Problem& p : problems) outputs.emplace_back(p.out_bytes);
  std::vector<std::size_t> order(problems.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  const int thread_counts[] = {1, 2, 0};
  int call = worker;  // the workers start at different thread counts
  for (int round = 0; round < rounds; ++round) {
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t index : order) {
      if (rng() % 3 == 0) diffattn::release_scratch();
      const Problem& p = problems[index];
      std::vector<unsigned char>& out = outputs[index];
      const int threads = thread_counts[call % 3];
      // A fill no kernel produces (NaN, or 3.4e38 / 1.4e306), different on every call, so
      // an element left unwritten cannot pass for the previous call's.
      std::memset(out.data(), call % 2 == 0 ? 0xFF : 0x7F, out.size());
      ++call;
      std::ostringstream where;
      where << "worker " << worker << " round " << round << " threads " << threads << ": " << p.name;
      try {
        p.run(threads, out.data());
      } catch (const std::exception& e) {
        failures.push_back(where.str() + ": threw " + e.what());
        continue;
      }
      if (std::memcmp(out.data(), p.expected.data(), out.size()) != 0) {
        std::size_t byte = 0;
        while (out[byte] == p.expected[byte]) ++byte;
        where << ": differs from the single-threaded result, first at element " << byte / p.element_bytes
              << " of " << out.size() / p.element_bytes;
        failures.push_back(where.str());
      }
    }
  }
  return failures;
}

TEST(Threads, ConcurrentCallsMatchSingleThreadedBitForBit) {
  std::vector<Problem> problems;
  add_problems<float>(problems);
  add_problems<double>(problems);
  for (Problem& p : problems) {
    p.expected.assign(p.out_bytes, 0xFF);
    p.run(1, p.expected.data());
    const bool finite = p.element_bytes == sizeof(float) ? all_finite<float>(p.expected) : all_finite<double>(p.expected);
    ASSERT_TRUE(finite) << p.name;
  }
  // Frees the main thread's scratch only: each worker has a cache of its own.
  diffattn::release_scratch();

  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::vector<std::string>> failures(kWorkers);
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      try {
        failures[static_cast<std::size_t>(w)] = run_worker(w, problems, DIFFATTN_THREAD_ROUNDS);
      } catch (const std::exception& e) {
        failures[static_cast<std::size_t>(w)].push_back(std::string("worker threw: ") + e.what());
      }
    });
  }
  // Start together, so the calls overlap from the first one.
  while (ready.load() < kWorkers) std::this_thread::yield();
  go.store(true);
  for (std::thread& t : workers) t.join();

  for (int w = 0; w < kWorkers; ++w) {
    const auto& list = failures[static_cast<std::size_t>(w)];
    if (list.empty()) continue;
    std::ostringstream report;
    report << list.size() << " failing calls on worker " << w << ":";
    for (std::size_t i = 0; i < std::min<std::size_t>(list.size(), 5); ++i) report << "\n  " << list[i];
    ADD_FAILURE() << report.str();
  }
}

}  // namespace
}  // namespace diffattn_test
