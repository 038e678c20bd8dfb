// Bitwise behaviour lock: a fixed set of kernel calls (every method of the fused plan,
// float and double, causal, GQA, masks, both λ forms, decoding) whose outputs are hashed
// and compared with tests/golden/outputs.txt, recorded before a refactor. A change that
// should not change behaviour (issue 18's restructure) must keep every hash; a change
// that means to, re-records them with DIFFATTN_GOLDEN_WRITE=<file> and says why.
//
// Hashes depend on the instruction set the kernels were compiled for, so each line names
// its build variant ("scalar" or xsimd's architecture name, "+fma" when the compiler may
// contract a·b + c); a variant with no recorded line is skipped, not passed.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <diffattn/attention.hpp>
#include <diffattn/layouts.hpp>
#include <diffattn/tensor.hpp>

namespace {

using diffattn::index_t;
using diffattn::Tensor;
using diffattn::TensorView;

std::string build_variant() {
#if defined(DIFFATTN_NO_SIMD)
  std::string variant = "scalar";
#else
  std::string variant = xsimd::default_arch::name();
#endif
#if defined(__FMA__)
  variant += "+fma";  // the compiler may contract a·b + c in scalar code
#endif
  return variant;
}

/// Inputs from a fixed integer generator (not <random>'s distributions, whose output
/// may differ between standard libraries): uniform in [-1, 1) on a 2^-20 grid.
class Inputs {
 public:
  explicit Inputs(std::uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  double next() {
    state_ = state_ * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(static_cast<std::int64_t>(state_ >> 43) - (1 << 20)) / double(1 << 20);
  }
  template <class T, std::size_t R>
  Tensor<T, R> tensor(const std::array<index_t, R>& shape, double scale = 1) {
    Tensor<T, R> t(shape);
    T* p = t.view().data();
    for (index_t i = 0; i < t.view().size(); ++i) p[i] = static_cast<T>(next() * scale);
    return t;
  }

 private:
  std::uint64_t state_;
};

std::uint64_t fnv1a(const void* data, std::size_t bytes, std::uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

template <class T>
std::string hash_of(const Tensor<T, 4>& out) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx",
                static_cast<unsigned long long>(fnv1a(out.view().data(), sizeof(T) * out.view().size())));
  return text;
}

struct Shape {
  index_t b, hq, hkv, nq, nk, d, dv;
};

template <class T>
struct Call {
  Shape s;
  bool interleaved = false;  // K/V (and Q) views over [B, N, H, D] storage
  bool causal = false;
  int mask = 0;               // 0 none, 1 broadcast over batch with −inf rows and lowest()
  int lambda_form = 0;        // 0 standard attention, 1 per-head λ, 2 per-token λ
  bool shared_keys = false;   // k2 is k1
  int threads = 1;
  std::size_t workspace_limit = std::size_t{64} << 20;
};

template <class T>
std::string run(const Call<T>& c, std::uint64_t seed) {
  Inputs in(seed);
  const Shape s = c.s;
  auto qkv = [&](index_t heads, index_t n, index_t width) {
    return c.interleaved ? in.tensor<T, 4>({s.b, n, heads, width}) : in.tensor<T, 4>({s.b, heads, n, width});
  };
  auto view = [&](const Tensor<T, 4>& t) {
    return c.interleaved ? diffattn::bnhd_to_bhnd(t.view()) : t.view();
  };
  const Tensor<T, 4> q1 = qkv(s.hq, s.nq, s.d), q2 = qkv(s.hq, s.nq, s.d);
  const Tensor<T, 4> k1 = qkv(s.hkv, s.nk, s.d), k2 = qkv(s.hkv, s.nk, s.d);
  const Tensor<T, 4> v = qkv(s.hkv, s.nk, s.dv);
  Tensor<T, 4> mask;
  diffattn::AttentionOptions<T> options;
  options.causal = c.causal;
  options.threads = c.threads;
  options.workspace_limit = c.workspace_limit;
  if (c.mask == 1) {
    mask = in.tensor<T, 4>({1, s.hq, s.nq, s.nk}, 4);
    auto m = mask.view();
    for (index_t h = 0; h < s.hq; ++h) {
      for (index_t i = 0; i < s.nq; ++i) {
        for (index_t j = 0; j < s.nk; ++j) {
          if ((i + 2 * j + h) % 7 == 0) m(0, h, i, j) = -std::numeric_limits<T>::infinity();
          if (i % 11 == 3) m(0, h, i, j) = -std::numeric_limits<T>::infinity();  // fully masked rows
          if (i % 13 == 5) m(0, h, i, j) = std::numeric_limits<T>::lowest();
        }
      }
    }
    options.mask = mask.view();
  }
  Tensor<T, 4> out({s.b, s.hq, s.nq, s.dv});
  if (c.lambda_form == 0) {
    diffattn::softmax_attention<T>(view(q1), view(k1), view(v), out.view(), options);
  } else {
    const TensorView<const T, 4> k2_view = c.shared_keys ? view(k1) : view(k2);
    if (c.lambda_form == 1) {
      const Tensor<T, 1> lambda = in.tensor<T, 1>({s.hq});
      diffattn::diff_attention<T>(view(q1), view(q2), view(k1), k2_view, view(v), lambda.view(), out.view(), options);
    } else {
      const Tensor<T, 3> lambda = in.tensor<T, 3>({s.b, 1, s.nq});
      diffattn::diff_attention<T>(view(q1), view(q2), view(k1), k2_view, view(v), lambda.view(), out.view(), options);
    }
  }
  return hash_of(out);
}

/// The recorded calls. Names are stable: the outputs file is keyed by them.
template <class T>
std::vector<std::pair<std::string, Call<T>>> golden_calls() {
  std::vector<std::pair<std::string, Call<T>>> calls;
  auto add = [&](const std::string& name, Call<T> c) { calls.emplace_back(name, c); };
  const Shape prefill{2, 4, 2, 77, 93, 40, 24};
  const Shape causal_short{1, 2, 1, 300, 300, 64, 64};
  const Shape causal_long{1, 2, 2, 600, 640, 32, 48};
  const Shape decode{2, 8, 2, 1, 5000, 64, 64};
  const Shape decode_short{1, 8, 4, 1, 300, 64, 40};
  const Shape decode_heads{1, 8, 4, 1, 5000, 32, 32};
  const Shape diff_prefill{2, 4, 2, 70, 130, 32, 64};
  const Shape streamed_workspace{1, 1, 1, 64, 8200, 16, 16};
  add("flash", {prefill});
  add("flash_threads", {prefill, false, false, 0, 0, false, 2});
  add("flash_interleaved", {prefill, true});
  add("flash_mask", {prefill, false, false, 1});
  add("flash_causal_short", {causal_short, false, true});
  add("flash_causal_long", {causal_long, false, true, 0, 0, false, 2});
  add("flash_causal_mask_interleaved", {causal_long, true, true, 1});
  add("decode_split", {decode});
  add("decode_split_threads", {decode, false, false, 0, 0, false, 2});
  add("decode_rows", {decode_short});
  add("decode_heads", {decode_heads, true});
  add("decode_heads_causal", {decode_heads, true, true, 0, 0, false, 2});
  add("diff_two_pass", {diff_prefill, false, false, 0, 1});
  add("diff_two_pass_threads", {diff_prefill, false, false, 0, 1, false, 2});
  add("diff_two_pass_token_lambda", {diff_prefill, false, false, 0, 2});
  add("diff_two_pass_causal_mask", {causal_long, false, true, 1, 2});
  add("diff_two_pass_shared_keys", {diff_prefill, true, false, 0, 1, true});
  add("diff_two_pass_streamed", {streamed_workspace, false, false, 0, 1});
  add("diff_streaming", {diff_prefill, false, false, 0, 1, false, 1, 4096});
  add("diff_streaming_causal_mask", {causal_long, false, true, 1, 2, false, 2, 4096});
  add("diff_decode_split", {decode, false, false, 0, 1});
  add("diff_decode_split_token_lambda", {decode, false, true, 0, 2, true, 2});
  add("diff_decode_rows", {decode_short, false, false, 0, 1});
  add("diff_decode_heads", {decode_heads, true, false, 0, 1});
  add("diff_decode_heads_shared_keys", {decode_heads, true, false, 0, 2, true, 2});
  return calls;
}

template <class T>
void hash_all(const char* type, std::map<std::string, std::string>& hashes) {
  std::uint64_t seed = 1;
  for (const auto& [name, call] : golden_calls<T>()) hashes[std::string(type) + "." + name] = run<T>(call, seed++);
}

std::map<std::string, std::string> current_hashes() {
  std::map<std::string, std::string> hashes;
  hash_all<float>("float", hashes);
  hash_all<double>("double", hashes);
  return hashes;
}

TEST(Golden, OutputsMatchTheRecordedHashes) {
  const std::string variant = build_variant();
  const std::map<std::string, std::string> hashes = current_hashes();
  if (const char* write = std::getenv("DIFFATTN_GOLDEN_WRITE")) {
    std::ofstream file(write, std::ios::app);
    for (const auto& [name, hash] : hashes) file << variant << ' ' << name << ' ' << hash << '\n';
    GTEST_SKIP() << "recorded " << hashes.size() << " hashes for " << variant << " in " << write;
  }
  std::ifstream file(DIFFATTN_TEST_SOURCE_DIR "/golden/outputs.txt");
  ASSERT_TRUE(file) << "tests/golden/outputs.txt is missing";
  std::map<std::string, std::string> recorded;
  std::string line;
  while (std::getline(file, line)) {
    std::istringstream fields(line);
    std::string line_variant, name, hash;
    if (fields >> line_variant >> name >> hash && line_variant == variant) recorded[name] = hash;
  }
  if (recorded.empty()) GTEST_SKIP() << "no hashes recorded for the " << variant << " build";
  EXPECT_EQ(recorded.size(), hashes.size()) << "the recorded and current call sets differ";
  for (const auto& [name, hash] : hashes) {
    const auto it = recorded.find(name);
    if (it == recorded.end()) {
      ADD_FAILURE() << name << " has no recorded hash for " << variant;
      continue;
    }
    EXPECT_EQ(it->second, hash) << name << " (" << variant << ") changed its output bits";
  }
}

}  // namespace
