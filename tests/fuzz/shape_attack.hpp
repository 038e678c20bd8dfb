#pragma once
// The shape attack: decodes fuzzer bytes into tensor views with adversarial extents
// (0, small, huge), strides (contiguous, permuted, padded, 0 = broadcast, huge),
// options, GQA ratios and λ shapes over small buffers, and calls the public kernels
// (softmax_attention, both diff_attention overloads and their diffattn::reference twins,
// KVCache, apply_rope, rms_norm, the λ helpers, the layout views, as_eigen and the two
// blocks). Each call must either throw a documented exception or run clean; a failure
// is thrown as a Finding. Consumed by tests/fuzz/fuzz_shapes.cpp (libFuzzer, ASan +
// UBSan) and by tests/test_shape_fuzz_replay.cpp (ctest replay of saved inputs).
//
// What the harness guarantees and checks:
// - It never hands the library a view that addresses memory outside its buffer: each
//   view's largest offset is computed with overflow-checked arithmetic, and a view that
//   does not fit is passed only when the TensorView constructor must reject it (negative
//   extent or stride, element count or largest offset overflowing std::ptrdiff_t);
//   otherwise the input is skipped. Each view has a buffer of its own, sized to its
//   largest offset, so ASan sees a read past it; under ASan the whole 8-byte granules a
//   view cannot reach (padding) are poisoned during the calls, and padding holds NaN.
// - The arguments are checked by a mirror of the documented rules (validation.hpp's
//   extents, GQA, contiguity, overlap and aliasing; scale and threads); a valid call must
//   run, an invalid one must throw diffattn::shape_error (shape problems) or
//   std::invalid_argument (scale, threads). Any other exception is a finding.
// - Work B·Hq·Nq·Nk·(D + Dv) that overflows std::int64_t must be rejected with
//   shape_error; a call whose work is merely large is skipped (kWorkLimit).
// - An output buffer is filled with a canary around and between the output's elements:
//   a call may change only the output's own elements, must write every one of them when
//   it succeeds, and must write none when it throws. Inputs must be unchanged.
// - Oracles where cheap: fused vs reference per output row (tolerance 1e-3·(1+|λ|)·max|V|
//   in float, 1e-9·(1+|λ|)·max|V| in double; NaN where the reference has NaN), leaving
//   unchecked only the rows the contract leaves open (logits beyond ±1e30, ±inf in q or
//   k, ±inf in a visible V row or a non-finite one behind a −inf mask, infinite λ);
//   RoPE keeps pair norms; rms_norm and lambda_reparam against a plain double loop;
//   KVCache reads back what was appended and is unchanged by a rejected append; layout
//   views address the elements their formulas say.
//
// Known defects can be stepped around so that a long run looks for new ones: the
// environment variable DIFFATTN_SHAPE_FUZZ_KNOWN lists tags (comma separated) from
// known_defect_tags below. Without it (CI, ctest) every defect is a finding.
//
// Byte format (a missing byte reads as 0, so short inputs are valid): byte 0 bit 0 picks
// double over float, byte 1 the entry point (kEntries); each entry point's decoder reads
// its fields in order (see attack_attention, ...). tests/fuzz/make_shape_corpus.py
// writes seeds in this format.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <diffattn/diffattn.hpp>
#include <diffattn/eigen.hpp>
#include <initializer_list>
#include <limits>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "random_weights.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define DIFFATTN_SHAPE_FUZZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DIFFATTN_SHAPE_FUZZ_ASAN 1
#endif
#endif
#if defined(DIFFATTN_SHAPE_FUZZ_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace diffattn_fuzz {

using diffattn::index_t;
using diffattn::TensorView;

constexpr index_t kIndexMax = std::numeric_limits<index_t>::max();
constexpr index_t kIndexMin = std::numeric_limits<index_t>::min();
/// Largest buffer (elements) one view may need; bigger views are skipped.
constexpr index_t kBufferLimit = index_t{1} << 14;
/// Largest estimated work (multiply-adds) a call may do; bigger calls are skipped. Keeps
/// an execution under ~50 ms with ASan, so the fuzzer runs hundreds per second.
constexpr index_t kWorkLimit = 2'000'000;
/// Elements around an output's reach that hold the canary.
constexpr index_t kCanaryMargin = 16;

/// A failed check: not a diffattn exception, so it escapes to the fuzzer or the test.
class Finding : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Thrown to abandon an input the harness cannot run safely or quickly.
struct Skip {};

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Finding(diffattn::detail::concat("shape fuzz finding: ", parts...));
}

/// Tags of the defects DIFFATTN_SHAPE_FUZZ_KNOWN may list, each with what it steps around.
inline const std::array<std::pair<const char*, const char*>, 14>& known_defect_tags() {
  static const std::array<std::pair<const char*, const char*>, 14> tags = {{
      {"view_overflow", "a TensorView whose largest offset overflows is accepted"},
      {"work_overflow", "B·Hq·Nq·Nk·(D+Dv) overflows int64 and the call is not rejected"},
      {"float_scale", "a scale finite in double but not in float is accepted"},
      {"head_dim_zero", "fused kernels with D = 0 (UB in pack_queries/score_keys)"},
      {"huge_kv_len", "fused kernels with Nk >= 2^24 (workspace size overflow)"},
      {"lowest_mask", "rows whose mask holds lowest(): fused and reference disagree"},
      {"nan_lambda_no_key", "NaN λ on a row that sees no key: fused and reference disagree"},
      {"hidden_v_nonfinite", "±inf/NaN in V rows a causal query cannot see"},
      {"empty_view_offset",
       "TensorView::select/slice of an empty view add index·stride to its "
       "pointer (null + offset, or an offset that overflows): "
       "interleaved_pairs, half_split_pairs, per-head lambda_reparam, a "
       "block's forward of an empty x, KVCache::append to empty storage"},
      {"row_major_overflow",
       "row_major_strides overflows for a shape with a 0 extent whose "
       "other extents overflow (TensorView(data, shape), Tensor::view, KVCache)"},
      {"empty_count_prefix",
       "half_split_pairs/interleaved_pairs reject an empty x whose split "
       "shape's running element count overflows before its 0 extent"},
      {"rope_position_overflow", "apply_rope: position_offset + n overflows (signed overflow)"},
      {"kv_cache_alloc_before_check",
       "KVCache allocates the key storage before it checks the "
       "value extents (huge allocation, then invalid_argument)"},
      {"flop_count_prefix",
       "the FLOP-count check multiplies 2·B·Hq·Nq·Nk·(D+Dv) left to right and rejects a "
       "call whose count is 0 (B = 2^62, Hq = 0)"},
  }};
  return tags;
}

struct AttackOptions {
  std::set<std::string> known;
  bool knows(const char* tag) const { return known.count(tag) != 0; }
};

inline AttackOptions options_from_environment() {
  AttackOptions options;
  const char* list = std::getenv("DIFFATTN_SHAPE_FUZZ_KNOWN");
  if (list == nullptr) return options;
  std::string text(list);
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    const std::string tag = text.substr(start, comma - start);
    if (!tag.empty()) {
      bool valid = false;
      for (const auto& entry : known_defect_tags()) valid = valid || tag == entry.first;
      if (!valid) {
        std::fprintf(stderr, "DIFFATTN_SHAPE_FUZZ_KNOWN: unknown tag '%s'\n", tag.c_str());
        std::abort();
      }
      options.known.insert(tag);
    }
    start = comma + 1;
  }
  return options;
}

/// What run_shape_attack did with an input.
enum class AttackResult { ran, rejected, skipped };

// ---------------------------------------------------------------------------------------
// Bytes, extents, strides and special values

class Bytes {
 public:
  Bytes(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  // Little endian; each read its own statement, so that every compiler reads in order.
  std::uint16_t u16() {
    const unsigned low = u8();
    return static_cast<std::uint16_t>(low | (unsigned{u8()} << 8));
  }
  std::uint32_t u32() {
    const std::uint32_t low = u16();
    return low | (std::uint32_t{u16()} << 16);
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

inline constexpr index_t pow2(int n) { return index_t{1} << n; }

/// Bytes 0..223 give 0..9; 224..255 the edge values (huge, near-overflow, negative).
inline index_t decode_extent(std::uint8_t b) {
  static constexpr index_t table[32] = {0,
                                        1,
                                        2,
                                        15,
                                        16,
                                        17,
                                        31,
                                        33,
                                        64,
                                        65,
                                        1000,
                                        pow2(16),
                                        pow2(20),
                                        pow2(24),
                                        pow2(31),
                                        pow2(32),
                                        3037000499,
                                        3037000500,
                                        pow2(40),
                                        pow2(48),
                                        pow2(59),
                                        pow2(61),
                                        pow2(62),
                                        kIndexMax / 2 + 1,
                                        kIndexMax - 1,
                                        kIndexMax,
                                        -1,
                                        -2,
                                        -pow2(40),
                                        kIndexMin,
                                        pow2(31) - 1,
                                        3};
  return b < 224 ? b % 10 : table[b - 224];
}

/// Bytes 0..223 give 0..11; 224..255 the edge strides.
inline index_t decode_stride(std::uint8_t b) {
  static constexpr index_t table[32] = {0,
                                        1,
                                        2,
                                        3,
                                        16,
                                        1000,
                                        pow2(20),
                                        pow2(31),
                                        pow2(32),
                                        pow2(40),
                                        pow2(59),
                                        pow2(61),
                                        pow2(62),
                                        pow2(62) + 1,
                                        kIndexMax / 2,
                                        kIndexMax / 2 + 1,
                                        kIndexMax - 1,
                                        kIndexMax,
                                        -1,
                                        -2,
                                        kIndexMin,
                                        17,
                                        pow2(30),
                                        pow2(63 - 3),
                                        1 + pow2(32),
                                        7,
                                        9,
                                        4096,
                                        8192,
                                        16383,
                                        16384,
                                        -pow2(62)};
  return b < 224 ? b % 12 : table[b - 224];
}

/// Special element values a specials byte can plant.
template <class T>
T special_value(std::uint8_t kind) {
  using L = std::numeric_limits<T>;
  switch (kind % 12) {
    case 0:
      return L::quiet_NaN();
    case 1:
      return L::infinity();
    case 2:
      return -L::infinity();
    case 3:
      return L::lowest();
    case 4:
      return L::max();
    case 5:
      return static_cast<T>(1e30);
    case 6:
      return static_cast<T>(-1e30);
    case 7:
      return T(0);
    case 8:
      return static_cast<T>(1e4);
    case 9:
      return -T(0);
    case 10:
      return L::denorm_min();
    default:
      return static_cast<T>(-1e4);
  }
}

/// splitmix64: fills buffers from a seed in the input, so inputs stay short.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) {
    return lo + (hi - lo) * static_cast<double>(next() >> 11) * 0x1.0p-53;
  }

 private:
  std::uint64_t state_;
};

// ---------------------------------------------------------------------------------------
// Checked arithmetic

/// a·b for non-negative a, b, or -1 when it overflows.
inline index_t checked_mul(index_t a, index_t b) {
  index_t r = 0;
  return __builtin_mul_overflow(a, b, &r) ? -1 : r;
}
inline index_t checked_add(index_t a, index_t b) {
  index_t r = 0;
  return __builtin_add_overflow(a, b, &r) ? -1 : r;
}
/// The product of non-negative factors (0 if any is 0), or -1 when it overflows.
inline index_t checked_product(std::initializer_list<index_t> factors) {
  for (index_t f : factors) {
    if (f == 0) return 0;
  }
  index_t r = 1;
  for (index_t f : factors) {
    if (f < 0) return -1;
    r = checked_mul(r, f);
    if (r < 0) return -1;
  }
  return r;
}

/// Iterations of nested loops with these trip counts, outermost first: e0·(1 + e1·(1 +
/// ...)), or -1 when it overflows. Counts the empty outer loops too (B = 2^31 with Hq = 0
/// still runs 2^31 times in a plain loop nest).
inline index_t nested_cost(std::initializer_list<index_t> trips) {
  index_t cost = 1;
  for (auto it = trips.end(); it != trips.begin();) {
    --it;
    if (*it < 0) return -1;
    const index_t inner = it + 1 == trips.end() ? cost : checked_add(cost, 1);
    if (inner < 0) return -1;
    cost = checked_mul(*it, inner);
    if (cost < 0) return -1;
  }
  return cost;
}

// ---------------------------------------------------------------------------------------
// View geometry: what a shape and strides address, and whether TensorView accepts them

template <std::size_t R>
struct Geometry {
  std::array<index_t, R> shape{}, strides{};
  bool null_if_empty = false;
  bool row_major = false;  // built with TensorView(data, shape), which computes the strides
  index_t base = 0;        // elements before the view's first element in its buffer

  bool negative() const {
    for (std::size_t d = 0; d < R; ++d) {
      if (shape[d] < 0 || strides[d] < 0) return true;
    }
    return false;
  }
  bool empty() const {
    for (index_t e : shape) {
      if (e == 0) return true;
    }
    return false;
  }
  /// The element count overflows: never for an empty shape (tensor.hpp counts 0 whatever
  /// the other extents), else when the product of the extents does.
  bool prefix_overflow() const {
    if (empty()) return false;
    index_t count = 1;
    for (index_t e : shape) {
      if (e < 0) return false;
      count = checked_mul(count, e);
      if (count < 0) return true;
    }
    return false;
  }
  /// Σ max(e − 1, 0)·s, or -1 when it overflows (extents and strides >= 0).
  index_t max_offset() const {
    index_t offset = 0;
    for (std::size_t d = 0; d < R; ++d) {
      if (shape[d] <= 1) continue;
      const index_t step = checked_mul(shape[d] - 1, strides[d]);
      if (step < 0) return -1;
      offset = checked_add(offset, step);
      if (offset < 0) return -1;
    }
    return offset;
  }
  index_t count() const {
    if (empty()) return 0;  // the other extents may multiply past index_t
    index_t c = 1;
    for (index_t e : shape) c *= e;
    return c;
  }
  std::string describe() const {
    std::string s = "[";
    for (std::size_t d = 0; d < R; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
    s += "] strides [";
    for (std::size_t d = 0; d < R; ++d) s += (d ? ", " : "") + std::to_string(strides[d]);
    return s + "]";
  }
};

enum class Construct { must_accept, may_throw, must_throw_overflow, must_throw };

template <class T, std::size_t R>
Construct construct_expectation(const Geometry<R>& g) {
  if (g.negative()) return Construct::must_throw;
  if (g.empty()) return Construct::must_accept;  // no element, so no offset to overflow
  if (g.prefix_overflow()) return Construct::must_throw;  // a true count overflow
  const index_t last = g.max_offset();
  if (last < 0) return Construct::must_throw_overflow;
  // Offsets fit in elements but not in bytes: no real memory is that large.
  if (last == kIndexMax || checked_mul(last + 1, static_cast<index_t>(sizeof(T))) < 0)
    return Construct::may_throw;
  return Construct::must_accept;
}

/// Decodes a view's geometry around `base_shape`: a mutation byte (>= 0xf0 replaces one
/// extent), a layout byte and the bytes it asks for.
///   layout bits 0-1: 0 row-major, 1 permuted row-major (+ order byte), 2 padded row-major
///                    (+ one pad byte per dim), 3 explicit (+ one stride byte per dim)
///   bit 2: + a broadcast byte, bit d set → stride 0 in dim d
///   bit 3: do not broadcast extents > 64 automatically (modes 0-2)
///   bits 4-5: last dim stride: 1 → 2, 2 → 0
///   bit 6: a null data pointer when the view is empty
///   bit 7: + a base-offset byte (0..7 elements before the data in the buffer)
/// True when TensorView's row-major stride computation (running products from the last
/// extent, before any check) overflows, as it can for a shape with a 0 extent and huge
/// others, or with negative extents.
template <std::size_t R>
bool row_major_overflows(const std::array<index_t, R>& shape) {
  index_t running = 1;
  for (std::size_t d = R; d-- > 0;) {
    if (__builtin_mul_overflow(running, shape[d], &running)) return true;
  }
  return false;
}

template <std::size_t R>
Geometry<R> decode_geometry(Bytes& in, std::array<index_t, R> base_shape) {
  Geometry<R> g;
  g.shape = base_shape;
  const std::uint8_t mutation = in.u8();
  if (mutation >= 0xf0) g.shape[(mutation & 0x0f) % R] = decode_extent(in.u8());
  const std::uint8_t layout = in.u8();
  const int mode = layout & 3;
  std::array<bool, R> broadcast{};
  if (layout & 4) {
    const std::uint8_t bits = in.u8();
    for (std::size_t d = 0; d < R; ++d) broadcast[d] = (bits >> d) & 1;
  }
  if (!(layout & 8) && mode != 3) {
    for (std::size_t d = 0; d < R; ++d) broadcast[d] = broadcast[d] || g.shape[d] > 64;
  }
  if (mode == 3) {
    for (std::size_t d = 0; d < R; ++d) g.strides[d] = broadcast[d] ? 0 : decode_stride(in.u8());
  } else {
    std::array<std::size_t, R> order{};  // outermost first
    for (std::size_t d = 0; d < R; ++d) order[d] = d;
    if (mode == 1) {
      unsigned code = in.u8();
      std::vector<std::size_t> left(order.begin(), order.end());
      for (std::size_t d = 0; d < R; ++d) {
        const std::size_t pick = code % left.size();
        code /= static_cast<unsigned>(left.size());
        order[d] = left[pick];
        left.erase(left.begin() + static_cast<std::ptrdiff_t>(pick));
      }
    }
    index_t running = 1;
    for (std::size_t o = R; o-- > 0;) {
      const std::size_t d = order[o];
      const index_t pad = mode == 2 ? in.u8() % 4 : 0;
      if (broadcast[d]) {
        g.strides[d] = 0;
        continue;
      }
      g.strides[d] = running;
      // Saturates: a layout that overflows gives strides whose offsets overflow too.
      const index_t next = g.shape[d] < 0 ? running : checked_mul(running, g.shape[d]);
      running = next < 0 ? kIndexMax : checked_add(next, pad) < 0 ? kIndexMax : next + pad;
    }
  }
  g.row_major = mode == 0 && !(layout & 4) &&
                std::none_of(broadcast.begin(), broadcast.end(), [](bool b) { return b; });
  const int last_tweak = (layout >> 4) & 3;
  if (last_tweak == 1) g.strides[R - 1] = 2;
  if (last_tweak == 2) g.strides[R - 1] = 0;
  g.row_major = g.row_major && last_tweak != 1 && last_tweak != 2;
  g.null_if_empty = (layout & 64) != 0;
  if (layout & 128) g.base = in.u8() % 8;
  return g;
}

// ---------------------------------------------------------------------------------------
// Buffers, operands, poisoning and canaries

template <class T>
T canary_value() {
  return static_cast<T>(-31337.3125);
}

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

/// A view's own allocation: [base elements][reach of the view][margin], with a map of
/// which elements the view can address.
template <class T>
struct Buffer {
  std::vector<T> storage;
  std::vector<unsigned char> reachable;  // per element of storage
  index_t base = 0;
  index_t margin = 0;  // canary elements before base and after the reach (outputs)
};

template <class T, std::size_t R>
struct Operand {
  const char* name = "";
  Geometry<R> geometry;
  std::shared_ptr<Buffer<T>> buffer;  // null when the view was never placed
  TensorView<T, R> view;
  index_t offset_in_buffer = 0;  // element 0 of the view within buffer->storage
  bool placed = false;

  TensorView<const T, R> cview() const { return view; }
  std::string describe() const { return std::string(name) + " " + geometry.describe(); }
};

/// Calls f(offset) for every index of the view (an offset may repeat with stride 0; only
/// dimensions with a non-zero stride are walked). Returns false when that is too many.
template <std::size_t R, class F>
bool for_each_offset(const Geometry<R>& g, F&& f, index_t limit = index_t{1} << 20) {
  if (g.empty()) return true;
  std::array<index_t, R> extent{}, stride{};
  std::size_t dims = 0;
  index_t count = 1;
  for (std::size_t d = 0; d < R; ++d) {
    if (g.shape[d] > 1 && g.strides[d] != 0) {
      extent[dims] = g.shape[d];
      stride[dims++] = g.strides[d];
      count = checked_mul(count, g.shape[d]);
      if (count < 0 || count > limit) return false;
    }
  }
  std::array<index_t, R> idx{};
  for (index_t n = 0; n < count; ++n) {
    index_t offset = 0;
    for (std::size_t d = 0; d < dims; ++d) offset += idx[d] * stride[d];
    f(offset);
    for (std::size_t d = dims; d-- > 0;) {
      if (++idx[d] < extent[d]) break;
      idx[d] = 0;
    }
  }
  return true;
}

/// A Skip-or-Finding aware TensorView construction. Returns false when the constructor
/// rejected the view as it had to.
template <class T, std::size_t R>
bool construct_view(Operand<T, R>& op, T* data, const AttackOptions& options) {
  const Construct expect = construct_expectation<T>(op.geometry);
  try {
    if (op.geometry.row_major) {
      if (row_major_overflows(op.geometry.shape) && options.knows("row_major_overflow"))
        throw Skip{};
      op.view = TensorView<T, R>(data, op.geometry.shape);
      if (op.view.strides() != op.geometry.strides && !op.geometry.negative()) {
        fail("TensorView(data, shape) computed strides other than row-major for ", op.describe());
      }
    } else {
      op.view = TensorView<T, R>(data, op.geometry.shape, op.geometry.strides);
    }
  } catch (const diffattn::shape_error& error) {
    if (expect == Construct::must_accept) {
      fail("TensorView rejected the constructible view ", op.describe(), ": ", error.what());
    }
    return false;
  } catch (const std::exception& error) {
    fail("TensorView threw an undocumented exception for ", op.describe(), ": ", error.what());
  }
  if (expect == Construct::must_throw) {
    fail("TensorView accepted ", op.describe(), " (negative or overflowing extents)");
  }
  if (expect == Construct::must_throw_overflow) {
    if (options.knows("view_overflow")) throw Skip{};
    fail("TensorView accepted ", op.describe(),
         ", whose largest offset overflows std::ptrdiff_t (known: view_overflow)");
  }
  return true;
}

/// Places an operand in a fresh buffer of its own (margin = canary elements on each side,
/// for outputs) and constructs its view. Returns false when the view was (rightly)
/// rejected; throws Skip when it is valid but does not fit kBufferLimit.
template <class T, std::size_t R>
bool place(Operand<T, R>& op, index_t margin, const AttackOptions& options) {
  static T dummy[1] = {};
  const Construct expect = construct_expectation<T>(op.geometry);
  if (expect != Construct::must_accept) {
    // Nothing of it may be touched: the constructor must (or may) throw.
    if (!construct_view(op, dummy, options)) return false;
    if (!op.geometry.empty()) throw Skip{};
  }
  const bool empty = op.geometry.empty();
  const index_t reach = empty ? 0 : op.geometry.max_offset() + 1;
  if (reach > kBufferLimit) throw Skip{};
  auto buffer = std::make_shared<Buffer<T>>();
  buffer->base = margin + op.geometry.base;
  buffer->margin = margin;
  const auto size = static_cast<std::size_t>(buffer->base + std::max<index_t>(reach, 1) + margin);
  buffer->storage.assign(size, T(0));
  buffer->reachable.assign(size, 0);
  if (!for_each_offset(op.geometry, [&](index_t o) {
        buffer->reachable[static_cast<std::size_t>(buffer->base + o)] = 1;
      })) {
    // Too many indices to walk: take the whole reach as reachable.
    std::fill(buffer->reachable.begin() + buffer->base,
              buffer->reachable.begin() + buffer->base + reach, 1);
  }
  op.buffer = buffer;
  op.offset_in_buffer = buffer->base;
  T* data = empty && op.geometry.null_if_empty ? nullptr : buffer->storage.data() + buffer->base;
  if (!construct_view(op, data, options)) return false;
  op.placed = true;
  return true;
}

/// Places `op` inside another operand's buffer at element `at` (an output aliasing an
/// input). Returns false when it does not fit there (the caller then places it alone).
template <class T, std::size_t R, class U, std::size_t RU>
bool place_inside(Operand<T, R>& op, const Operand<U, RU>& host, index_t at,
                  const AttackOptions& options) {
  if (!host.placed || construct_expectation<T>(op.geometry) != Construct::must_accept) return false;
  const index_t reach = op.geometry.empty() ? 0 : op.geometry.max_offset() + 1;
  const index_t start = host.offset_in_buffer + at;
  if (start + reach > static_cast<index_t>(host.buffer->storage.size())) return false;
  op.buffer = host.buffer;
  op.offset_in_buffer = start;
  if (!construct_view(op, host.buffer->storage.data() + start, options)) {
    fail("TensorView rejected ", op.describe());
  }
  op.placed = true;
  return true;
}

/// Fills what the view reaches with uniform values in ±bound and what it does not reach
/// with NaN.
template <class T, std::size_t R>
void fill_values(Operand<T, R>& op, Rng& rng, double bound) {
  if (!op.placed) return;
  Buffer<T>& b = *op.buffer;
  for (std::size_t i = 0; i < b.storage.size(); ++i) {
    b.storage[i] = b.reachable[i] ? static_cast<T>(rng.uniform(-bound, bound))
                                  : std::numeric_limits<T>::quiet_NaN();
  }
}

/// Plants up to 8 special values (NaN, ±inf, lowest, ...) when the byte read is >= 0xe0.
template <class T, std::size_t R>
void plant_specials(Operand<T, R>& op, Bytes& in) {
  const std::uint8_t specials = in.u8();
  if (!op.placed || specials < 0xe0 || op.geometry.empty()) return;
  Buffer<T>& b = *op.buffer;
  const index_t reach = op.geometry.max_offset() + 1;
  for (int s = 0; s <= (specials & 7); ++s) {
    const auto at = static_cast<std::size_t>(op.offset_in_buffer + in.u16() % reach);
    const std::uint8_t kind = in.u8();
    if (b.reachable[at]) b.storage[at] = special_value<T>(kind);
  }
}

/// Both of the above: the usual way an input gets its values.
template <class T, std::size_t R>
void fill_input(Operand<T, R>& op, Bytes& in, Rng& rng, double bound) {
  fill_values(op, rng, bound);
  plant_specials(op, in);
}

/// Poisons (ASan) every 8-byte granule of the input buffers that no view reaches, for
/// the duration of the library calls.
template <class T>
class PoisonGaps {
 public:
  explicit PoisonGaps(std::vector<std::shared_ptr<Buffer<T>>> buffers) {
    for (auto& b : buffers) {
      if (b) buffers_.push_back(std::move(b));
    }
#if defined(DIFFATTN_SHAPE_FUZZ_ASAN)
    constexpr std::size_t per_granule = 8 / sizeof(T) > 0 ? 8 / sizeof(T) : 1;
    for (const auto& b : buffers_) {
      const auto address = reinterpret_cast<std::uintptr_t>(b->storage.data());
      if (address % 8 != 0) continue;
      for (std::size_t g = 0; g + per_granule <= b->storage.size(); g += per_granule) {
        bool gap = true;
        for (std::size_t e = g; e < g + per_granule; ++e) gap = gap && !b->reachable[e];
        if (gap) ASAN_POISON_MEMORY_REGION(b->storage.data() + g, 8);
      }
    }
#endif
  }
  ~PoisonGaps() {
#if defined(DIFFATTN_SHAPE_FUZZ_ASAN)
    for (const auto& b : buffers_) {
      ASAN_UNPOISON_MEMORY_REGION(b->storage.data(), b->storage.size() * sizeof(T));
    }
#endif
  }
  PoisonGaps(const PoisonGaps&) = delete;
  PoisonGaps& operator=(const PoisonGaps&) = delete;

 private:
  std::vector<std::shared_ptr<Buffer<T>>> buffers_;
};

/// Fills an output's whole buffer with the canary.
template <class T, std::size_t R>
void arm_canary(Operand<T, R>& out) {
  if (out.placed)
    std::fill(out.buffer->storage.begin(), out.buffer->storage.end(), canary_value<T>());
}

/// After a call: elements the output cannot reach keep the canary; its own elements keep
/// it too when the call threw, and none keeps it when the call succeeded.
template <class T, std::size_t R>
void check_canary(const char* fn, const Operand<T, R>& out, bool succeeded,
                  const std::string& call) {
  if (!out.placed) return;
  const Buffer<T>& b = *out.buffer;
  const T canary = canary_value<T>();
  for (std::size_t i = 0; i < b.storage.size(); ++i) {
    const bool own = out.offset_in_buffer >= 0 && b.reachable[i];
    const bool untouched = same_bits(b.storage[i], canary);
    if (!own && !untouched) {
      fail(fn, " wrote outside its output (element ",
           static_cast<index_t>(i) - out.offset_in_buffer, " relative to out.data()): ", call);
    }
    if (own && !succeeded && !untouched) fail(fn, " threw but wrote its output: ", call);
    if (own && succeeded && untouched) {
      fail(fn, " left output element ", static_cast<index_t>(i) - out.offset_in_buffer,
           " unwritten: ", call);
    }
  }
}

template <class T>
std::vector<T> snapshot(const std::shared_ptr<Buffer<T>>& b) {
  return b ? b->storage : std::vector<T>{};
}

template <class T>
void check_unchanged(const char* fn, const char* name, const std::shared_ptr<Buffer<T>>& b,
                     const std::vector<T>& before, const std::string& call) {
  if (!b) return;
  if (b->storage.size() != before.size() ||
      std::memcmp(b->storage.data(), before.data(), before.size() * sizeof(T)) != 0) {
    fail(fn, " changed its input '", name, "': ", call);
  }
}

// ---------------------------------------------------------------------------------------
// Outcomes and expectations

struct Outcome {
  enum Kind { ok, shape, argument } kind = ok;
  std::string message;
};

/// DIFFATTN_SHAPE_FUZZ_TRACE=1 prints each call before it is made: a sanitizer report
/// ends the process before a Finding could describe the call.
inline bool tracing() {
  static const bool trace = std::getenv("DIFFATTN_SHAPE_FUZZ_TRACE") != nullptr;
  return trace;
}

template <class F>
Outcome invoke(const char* fn, const std::string& call, F&& f) {
  if (tracing()) std::fprintf(stderr, "shape fuzz call: %s: %s\n", fn, call.c_str());
  try {
    f();
    return {};
  } catch (const diffattn::shape_error& error) {
    return {Outcome::shape, error.what()};
  } catch (const std::invalid_argument& error) {
    return {Outcome::argument, error.what()};
  } catch (const Finding&) {
    throw;
  } catch (const Skip&) {
    throw;
  } catch (const std::exception& error) {
    fail(fn, " threw an undocumented exception (", error.what(), "): ", call);
  } catch (...) {
    fail(fn, " threw a non-standard exception: ", call);
  }
}

/// Why a call must be rejected: shape reasons expect shape_error, argument reasons
/// std::invalid_argument (not a shape_error); both: either.
struct Expect {
  std::string shape_reason, argument_reason;
  bool valid() const { return shape_reason.empty() && argument_reason.empty(); }
  void shape(const std::string& why) {
    if (shape_reason.empty()) shape_reason = why;
  }
  void argument(const std::string& why) {
    if (argument_reason.empty()) argument_reason = why;
  }
};

inline void check_outcome(const char* fn, const Outcome& outcome, const Expect& expect,
                          const std::string& call) {
  const bool shape_bad = !expect.shape_reason.empty(),
             argument_bad = !expect.argument_reason.empty();
  switch (outcome.kind) {
    case Outcome::ok:
      if (shape_bad) fail(fn, " accepted an invalid call (", expect.shape_reason, "): ", call);
      if (argument_bad)
        fail(fn, " accepted an invalid call (", expect.argument_reason, "): ", call);
      return;
    case Outcome::shape:
      if (!shape_bad) {
        fail(fn, " threw shape_error (", outcome.message, ") for ",
             argument_bad ? "a call with a bad argument (" + expect.argument_reason + ")"
                          : "a valid call",
             ": ", call);
      }
      return;
    case Outcome::argument:
      if (!argument_bad) {
        fail(fn, " threw std::invalid_argument (", outcome.message, ") for ",
             shape_bad ? "a shape problem (" + expect.shape_reason + ")" : "a valid call", ": ",
             call);
      }
      return;
  }
}

/// [first byte, last byte] a view touches, as validation.hpp's address_range; empty → none.
struct Hull {
  bool empty = true;
  std::uintptr_t first = 0, last = 0;
  bool intersects(const Hull& other) const {
    return !empty && !other.empty && first <= other.last && other.first <= last;
  }
};

template <class T, std::size_t R>
Hull hull_of(const TensorView<T, R>& view) {
  Hull h;
  if (view.empty()) return h;
  index_t last = 0;
  for (std::size_t d = 0; d < R; ++d) last += (view.extent(d) - 1) * view.stride(d);
  h.empty = false;
  h.first = reinterpret_cast<std::uintptr_t>(view.data());
  h.last = h.first + static_cast<std::uintptr_t>(last) * sizeof(T) + sizeof(T) - 1;
  return h;
}

/// validation.hpp's sufficient test for distinct elements, restated.
template <std::size_t R>
bool elements_distinct(const std::array<index_t, R>& shape, const std::array<index_t, R>& strides) {
  for (index_t e : shape) {
    if (e == 0) return true;
  }
  std::array<std::size_t, R> order{};
  for (std::size_t d = 0; d < R; ++d) order[d] = d;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return strides[a] < strides[b]; });
  index_t span = 0;
  for (std::size_t d : order) {
    if (shape[d] == 1) continue;
    if (strides[d] <= span) return false;
    span += (shape[d] - 1) * strides[d];
  }
  return true;
}

template <std::size_t R>
bool last_dim_contiguous(const Geometry<R>& g) {
  return g.shape[R - 1] <= 1 || g.strides[R - 1] == 1;
}

inline double decode_scale(std::uint8_t b) {
  static const double table[20] = {0,
                                   1,
                                   0.5,
                                   -1,
                                   -0.125,
                                   1e-30,
                                   1e30,
                                   1e38,
                                   3.5e38,
                                   1e300,
                                   HUGE_VAL,
                                   -HUGE_VAL,
                                   NAN,
                                   4,
                                   1e4,
                                   4.9e-324,
                                   -0.0,
                                   1.7976931348623157e308,
                                   3.4028234663852886e38,
                                   6.8e38};
  return b < 128 ? 0 : table[(b - 128) % 20];
}

inline int decode_threads(std::uint8_t b) {
  static const int table[6] = {-1, -2, std::numeric_limits<int>::min(), 5, 8, 7};
  return b < 192 ? b % 4 : table[(b - 192) % 6];
}

inline std::size_t decode_workspace(std::uint8_t b) {
  static const std::size_t table[9] = {0,
                                       1,
                                       64,
                                       4096,
                                       std::size_t{1} << 16,
                                       std::size_t{1} << 20,
                                       std::numeric_limits<std::size_t>::max(),
                                       std::numeric_limits<std::size_t>::max() / 2,
                                       100};
  return b < 128 ? std::size_t{64} << 20 : table[(b - 128) % 9];
}

/// validation.hpp's rule: the kernels of element type T work in base 2, so the scale times
/// log2(e) must be finite in T (1e300 is not, in float).
template <class T>
bool scale_is_finite_in(double scale) {
  return std::isfinite(scale) && std::isfinite(static_cast<T>(scale * 1.4426950408889634074));
}

// ---------------------------------------------------------------------------------------
// Attention: softmax_attention, diff_attention (λ rank 1 and 3), and their references

enum class AttentionKind { softmax, diff_head_lambda, diff_token_lambda };

template <class T>
struct AttentionCase {
  AttentionKind kind = AttentionKind::softmax;
  bool diff() const { return kind != AttentionKind::softmax; }
  Operand<T, 4> q1, q2, k1, k2, v, out, mask;
  Operand<T, 1> lambda1;
  Operand<T, 3> lambda3;
  bool k2_is_k1 = false, has_mask = false, out_aliased = false;
  const char* alias_target = "";
  diffattn::AttentionOptions<T> options;

  std::string describe() const {
    std::string s =
        std::string(std::is_same_v<T, float> ? "float " : "double ") +
        (kind == AttentionKind::softmax            ? "softmax_attention"
         : kind == AttentionKind::diff_head_lambda ? "diff_attention (lambda [Hq])"
                                                   : "diff_attention (lambda [B, Hq, Nq])");
    s += ": " + q1.describe() + "; " + k1.describe() + "; " + v.describe() + "; " + out.describe();
    if (diff()) {
      s += "; " + q2.describe() + "; " + (k2_is_k1 ? std::string("k2 = k1") : k2.describe());
      s += "; " +
           (kind == AttentionKind::diff_head_lambda ? lambda1.describe() : lambda3.describe());
    }
    if (has_mask) s += "; " + mask.describe();
    if (out_aliased) s += std::string("; out inside ") + alias_target + "'s buffer";
    s += diffattn::detail::concat("; causal=", options.causal, " scale=", options.scale,
                                  " threads=", options.threads,
                                  " workspace_limit=", options.workspace_limit);
    return s;
  }
};

template <class T>
void fill_lambda_values(std::vector<T>& storage, const std::vector<unsigned char>& reachable,
                        Bytes& in, Rng& rng) {
  static const double table[12] = {0,    0.8,  -0.5, 1,        2,         1e10,
                                   1e30, 1e38, NAN,  HUGE_VAL, -HUGE_VAL, -1e30};
  const std::uint8_t mode = in.u8();
  for (std::size_t i = 0; i < storage.size(); ++i) {
    if (!reachable[i]) continue;
    storage[i] = static_cast<T>(mode < 128 ? rng.uniform(0, 1) : table[(mode - 128) % 12]);
  }
}

template <class T>
void fill_mask_values(Operand<T, 4>& mask, Bytes& in, Rng& rng) {
  const std::uint8_t mode = in.u8() % 8;
  if (!mask.placed) return;
  auto& s = mask.buffer->storage;
  const auto& r = mask.buffer->reachable;
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!r[i] || mode < 4) continue;
    s[i] = mode == 4   ? minus_inf
           : mode == 5 ? std::numeric_limits<T>::lowest()
           : mode == 6 ? ((rng.next() & 1) ? minus_inf : static_cast<T>(rng.uniform(-4, 4)))
                       : T(0);
  }
}

/// The documented rules for an attention call, restated from the header comments and
/// validation.hpp (see the file comment).
template <class T>
Expect expect_attention(const AttentionCase<T>& c) {
  Expect e;
  const auto& q = c.q1.geometry.shape;
  const auto& k = c.k1.geometry.shape;
  const auto& v = c.v.geometry.shape;
  const auto& o = c.out.geometry.shape;
  const index_t B = q[0], Hq = q[1], Nq = q[2], D = q[3], Hkv = k[1], Nk = k[2], Dv = v[3];
  if (k[0] != B) e.shape("k B");
  if (k[3] != D) e.shape("k D");
  if (Hkv == 0 ? Hq != 0 : Hq % Hkv != 0) e.shape("GQA ratio");
  if (v[0] != B || v[1] != Hkv || v[2] != Nk) e.shape("v extents");
  if (o[0] != B || o[1] != Hq || o[2] != Nq || o[3] != Dv) e.shape("out extents");
  if (!last_dim_contiguous(c.q1.geometry) || !last_dim_contiguous(c.k1.geometry) ||
      !last_dim_contiguous(c.v.geometry) || !last_dim_contiguous(c.out.geometry)) {
    e.shape("a non-contiguous last dimension");
  }
  if (!elements_distinct(o, c.out.geometry.strides)) e.shape("overlapping output elements");
  const Hull out_hull = hull_of(c.out.view);
  if (out_hull.intersects(hull_of(c.q1.view)) || out_hull.intersects(hull_of(c.k1.view)) ||
      out_hull.intersects(hull_of(c.v.view))) {
    e.shape("out overlaps an input");
  }
  if (!std::isfinite(c.options.scale)) e.argument("a non-finite scale");
  if (c.options.threads < 0) e.argument("negative threads");
  if (c.has_mask) {
    const auto& m = c.mask.geometry.shape;
    if (m[3] != Nk) e.shape("mask Nk");
    const index_t target[3] = {B, Hq, Nq};
    for (int d = 0; d < 3; ++d) {
      if (m[d] != target[d] && m[d] != 1) e.shape("mask broadcast extents");
    }
    Geometry<4> widened;
    widened.shape = {B, Hq, Nq, Nk};
    if (widened.prefix_overflow()) e.shape("mask [B, Hq, Nq, Nk] element count overflows");
    if (!last_dim_contiguous(c.mask.geometry)) e.shape("mask last dimension");
    if (out_hull.intersects(hull_of(c.mask.view))) e.shape("out overlaps the mask");
  }
  if (c.diff()) {
    if (c.q2.geometry.shape != q) e.shape("q2 extents");
    if (c.k2.geometry.shape != k) e.shape("k2 extents");
    if (!last_dim_contiguous(c.q2.geometry) || !last_dim_contiguous(c.k2.geometry)) {
      e.shape("q2/k2 last dimension");
    }
    if (out_hull.intersects(hull_of(c.q2.view)) || out_hull.intersects(hull_of(c.k2.view))) {
      e.shape("out overlaps q2/k2");
    }
    Geometry<3> widened;
    widened.shape = {B, Hq, Nq};
    if (widened.prefix_overflow()) e.shape("lambda [B, Hq, Nq] element count overflows");
    if (c.kind == AttentionKind::diff_head_lambda) {
      const index_t n = c.lambda1.geometry.shape[0];
      if (n != Hq && n != 1) e.shape("lambda extent");
      // widen_lambda: {B, Hq, Nq} with strides {0, s, 0}
      if (e.valid() && !widened.empty() && c.lambda1.view.data() != nullptr) {
        Hull h;
        h.empty = false;
        h.first = reinterpret_cast<std::uintptr_t>(c.lambda1.view.data());
        const index_t s = n == 1 ? 0 : c.lambda1.view.stride(0);
        h.last = h.first + static_cast<std::uintptr_t>((Hq - 1) * s) * sizeof(T) + sizeof(T) - 1;
        if (out_hull.intersects(h)) e.shape("out overlaps lambda");
      }
    } else {
      const auto& l = c.lambda3.geometry.shape;
      for (int d = 0; d < 3; ++d) {
        if (l[d] != widened.shape[d] && l[d] != 1) e.shape("lambda broadcast extents");
      }
      if (e.valid() && !widened.empty()) {
        Hull h;
        h.empty = false;
        h.first = reinterpret_cast<std::uintptr_t>(c.lambda3.view.data());
        index_t last = 0;
        for (int d = 0; d < 3; ++d) {
          if (l[d] == widened.shape[d] && l[d] > 1) last += (l[d] - 1) * c.lambda3.view.stride(d);
        }
        h.last = h.first + static_cast<std::uintptr_t>(last) * sizeof(T) + sizeof(T) - 1;
        if (out_hull.intersects(h)) e.shape("out overlaps lambda");
      }
    }
  }
  return e;
}

/// Contiguous copy of an output, for comparing two calls that write the same view.
template <class T>
std::vector<T> read_output(TensorView<T, 4> out) {
  std::vector<T> values;
  values.reserve(static_cast<std::size_t>(out.size()));
  for (index_t b = 0; b < out.extent(0); ++b)
    for (index_t h = 0; h < out.extent(1); ++h)
      for (index_t i = 0; i < out.extent(2); ++i)
        for (index_t c = 0; c < out.extent(3); ++c) values.push_back(out(b, h, i, c));
  return values;
}

/// Fused against reference, row by row; rows the contract leaves open are skipped.
template <class T>
void compare_with_reference(const AttentionCase<T>& c, const std::vector<T>& fused,
                            const std::vector<T>& reference, const AttackOptions& options,
                            const std::string& call) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  const auto q1 = c.q1.cview(), k1 = c.k1.cview(), v = c.v.cview();
  const auto q2 = c.diff() ? c.q2.cview() : q1;
  const auto k2 = c.diff() ? c.k2.cview() : k1;
  const index_t B = q1.extent(0), Hq = q1.extent(1), Nq = q1.extent(2), D = q1.extent(3),
                Hkv = k1.extent(1), Nk = k1.extent(2), Dv = v.extent(3);
  if (checked_product({B, Hq, Nq, Dv}) == 0) return;
  const index_t group = Hq / Hkv;
  const double scale = c.options.scale != 0 ? c.options.scale
                       : D > 0              ? 1.0 / std::sqrt(static_cast<double>(D))
                                            : 1.0;
  const double numeric_limit = std::is_same_v<T, float> ? 1e3 : 1e6;
  const double relative = std::is_same_v<T, float> ? 1e-3 : 1e-9;
  double max_v = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hkv; ++h)
      for (index_t j = 0; j < Nk; ++j)
        for (index_t x = 0; x < Dv; ++x) {
          const double value = std::fabs(static_cast<double>(v(b, h, j, x)));
          if (std::isfinite(value)) max_v = std::max(max_v, value);
        }
  std::vector<char> masked(static_cast<std::size_t>(Nk));
  std::size_t at = 0;
  for (index_t b = 0; b < B; ++b) {
    for (index_t h = 0; h < Hq; ++h) {
      const index_t kv = h / group;
      for (index_t i = 0; i < Nq; ++i, at += static_cast<std::size_t>(Dv)) {
        const index_t limit = !c.options.causal ? Nk : std::clamp<index_t>(i + 1 + Nk - Nq, 0, Nk);
        bool open = false, sees_key = false;
        double magnitude = 0;
        std::fill(masked.begin(), masked.end(), 0);
        for (int map = 0; map < (c.diff() ? 2 : 1); ++map) {
          const auto& q = map == 0 ? q1 : q2;
          const auto& k = map == 0 ? k1 : k2;
          for (index_t j = 0; j < limit; ++j) {
            double dot = 0, absdot = 0;
            bool qk_inf = false;
            for (index_t x = 0; x < D; ++x) {
              const double a = static_cast<double>(q(b, h, i, x)),
                           bk = static_cast<double>(k(b, kv, j, x));
              // attention.hpp: q is pre-scaled by scale·log2 e, which must not overflow.
              const bool q_overflows =
                  std::fabs(a) * std::fabs(scale) * 1.4426950408889634 >= static_cast<double>(std::numeric_limits<T>::max());
              qk_inf = qk_inf || std::isinf(a) || std::isinf(bk) || q_overflows;
              dot += a * bk;
              absdot += std::fabs(a * bk);
            }
            if (qk_inf) open = true;
            double m = 0;
            if (c.has_mask) {
              const auto& mv = c.mask.view;
              m = static_cast<double>(mv(mv.extent(0) == 1 ? 0 : b, mv.extent(1) == 1 ? 0 : h,
                                         mv.extent(2) == 1 ? 0 : i, j));
            }
            // scale·q·k beyond ±1e30 is outside the contract even where the mask then
            // adds −inf (in float it may overflow to inf, and inf − inf is NaN).
            const double qk = std::fabs(scale) * absdot;
            // Products past the double range make the reference's dot NaN (inf − inf)
            // where the fused one may be ±inf and then masked: beyond ±1e30 either way.
            if (m == -inf) magnitude = std::max(magnitude, qk);
            if (m == -inf && !std::isnan(dot)) {
              masked[static_cast<std::size_t>(j)] = 1;
              magnitude = std::max(magnitude, qk);
              continue;
            }
            sees_key = true;
            if (m == static_cast<double>(std::numeric_limits<T>::lowest())) {
              if (options.knows("lowest_mask")) open = true;
              magnitude = std::max(magnitude, qk);
            } else if (std::isfinite(m)) {
              magnitude = std::max(magnitude, qk + std::fabs(m));
            }
          }
        }
        // A key masked by −inf in one map only (q·k NaN in the other) counts as seen.
        double v_max = 0;
        for (index_t j = 0; j < Nk; ++j) {
          for (index_t x = 0; x < Dv; ++x) {
            const double value = static_cast<double>(v(b, kv, j, x));
            if (std::isfinite(value)) {
              v_max = std::max(v_max, std::fabs(value));
              continue;
            }
            if (j >= limit) {
              open = true;  // attention.hpp: it may or may not reach rows that cannot see key j
            } else if (masked[static_cast<std::size_t>(j)] || std::isinf(value)) {
              open = true;
            }
          }
        }
        double lambda = 0;
        if (c.kind == AttentionKind::diff_head_lambda) {
          const auto& l = c.lambda1.view;
          lambda = static_cast<double>(l(l.extent(0) == 1 ? 0 : h));
        } else if (c.kind == AttentionKind::diff_token_lambda) {
          const auto& l = c.lambda3.view;
          lambda = static_cast<double>(
              l(l.extent(0) == 1 ? 0 : b, l.extent(1) == 1 ? 0 : h, l.extent(2) == 1 ? 0 : i));
        }
        if (std::isinf(lambda) || std::fabs(lambda) > 1e30) open = true;
        // attention.hpp: outputs stay finite while 64·max|V| and (1 + |λ|)·max|V| do.
        const double largest = static_cast<double>(std::numeric_limits<T>::max());
        if (64 * v_max >= largest || (1 + std::fabs(lambda)) * v_max >= largest) open = true;
        if (std::isnan(lambda) && !sees_key && options.knows("nan_lambda_no_key")) open = true;
        if (!(magnitude <= 1e30)) open = true;
        if (open) continue;
        const double lam = std::isnan(lambda) ? 0 : std::fabs(lambda);
        const double tolerance = relative * (1 + lam) * max_v + 1e-30;
        for (index_t x = 0; x < Dv; ++x) {
          const double f = static_cast<double>(fused[at + static_cast<std::size_t>(x)]);
          const double r = static_cast<double>(reference[at + static_cast<std::size_t>(x)]);
          bool agree;
          if (std::isnan(f) || std::isnan(r)) {
            agree = std::isnan(f) && std::isnan(r);
          } else if (std::isinf(f) || std::isinf(r)) {
            agree = f == r;
          } else if (magnitude <= numeric_limit) {
            agree = std::fabs(f - r) <= tolerance;
          } else {
            agree = std::fabs(f) <= (1 + lam) * max_v * (1 + relative) + 1e-30;
          }
          if (!agree) {
            fail("fused and reference disagree at out(", b, ", ", h, ", ", i, ", ", x, "): fused ",
                 f, ", reference ", r, " (tolerance ", tolerance, ", row max |logit| ", magnitude,
                 ", lambda ", lambda, ", keys visible ", limit, ", sees a key ", sees_key,
                 "): ", call);
          }
        }
      }
    }
  }
}

template <class T>
AttackResult attack_attention(Bytes& in, AttentionKind kind, const AttackOptions& opts) {
  AttentionCase<T> c;
  c.kind = kind;
  const index_t B = decode_extent(in.u8()), Hkv = decode_extent(in.u8()),
                group = decode_extent(in.u8()), Nq = decode_extent(in.u8()),
                Nk = decode_extent(in.u8()), D = decode_extent(in.u8()),
                Dv = decode_extent(in.u8());
  const index_t product = checked_mul(Hkv, group);
  const index_t Hq = Hkv >= 0 && group >= 0 && product >= 0 ? product : group;
  c.options.causal = in.u8() & 1;
  c.options.scale = decode_scale(in.u8());
  c.options.threads = decode_threads(in.u8());
  c.options.workspace_limit = decode_workspace(in.u8());

  c.q1.name = "q1";
  c.k1.name = "k1";
  c.v.name = "v";
  c.out.name = "out";
  c.q2.name = "q2";
  c.k2.name = "k2";
  c.mask.name = "mask";
  c.lambda1.name = "lambda";
  c.lambda3.name = "lambda";
  c.q1.geometry = decode_geometry<4>(in, {B, Hq, Nq, D});
  c.k1.geometry = decode_geometry<4>(in, {B, Hkv, Nk, D});
  c.v.geometry = decode_geometry<4>(in, {B, Hkv, Nk, Dv});
  c.out.geometry = decode_geometry<4>(in, {B, Hq, Nq, Dv});
  if (c.diff()) {
    c.q2.geometry = decode_geometry<4>(in, {B, Hq, Nq, D});
    c.k2_is_k1 = in.u8() & 1;
    if (!c.k2_is_k1) c.k2.geometry = decode_geometry<4>(in, {B, Hkv, Nk, D});
  }
  const std::uint8_t mask_bits = in.u8();
  c.has_mask = mask_bits & 1;
  if (c.has_mask) {
    c.mask.geometry = decode_geometry<4>(
        in, {(mask_bits & 2) ? 1 : B, (mask_bits & 4) ? 1 : Hq, (mask_bits & 8) ? 1 : Nq, Nk});
  }
  if (kind == AttentionKind::diff_head_lambda) {
    c.lambda1.geometry = decode_geometry<1>(in, {(in.u8() & 1) ? 1 : Hq});
  } else if (kind == AttentionKind::diff_token_lambda) {
    const std::uint8_t bits = in.u8();
    c.lambda3.geometry =
        decode_geometry<3>(in, {(bits & 1) ? 1 : B, (bits & 2) ? 1 : Hq, (bits & 4) ? 1 : Nq});
  }
  const std::uint8_t alias = in.u8();
  const std::uint8_t alias_at = in.u8();

  // Inputs first, so that the output can be placed inside one of them.
  if (!place(c.q1, 0, opts) || !place(c.k1, 0, opts) || !place(c.v, 0, opts))
    return AttackResult::rejected;
  if (c.diff()) {
    if (!place(c.q2, 0, opts)) return AttackResult::rejected;
    if (c.k2_is_k1) {
      c.k2 = c.k1;
      c.k2.name = "k2";
    } else if (!place(c.k2, 0, opts)) {
      return AttackResult::rejected;
    }
  }
  if (c.has_mask && !place(c.mask, 0, opts)) return AttackResult::rejected;
  if (kind == AttentionKind::diff_head_lambda && !place(c.lambda1, 0, opts))
    return AttackResult::rejected;
  if (kind == AttentionKind::diff_token_lambda && !place(c.lambda3, 0, opts))
    return AttackResult::rejected;
  if (alias >= 0xe0) {
    const index_t at = alias_at % 8;
    bool inside = false;
    switch (alias & 7) {
      case 0:
        inside = place_inside(c.out, c.q1, at, opts), c.alias_target = "q1";
        break;
      case 1:
        inside = place_inside(c.out, c.k1, at, opts), c.alias_target = "k1";
        break;
      case 2:
        inside = place_inside(c.out, c.v, at, opts), c.alias_target = "v";
        break;
      case 3:
        inside = c.has_mask && place_inside(c.out, c.mask, at, opts), c.alias_target = "mask";
        break;
      case 4:
        inside = c.diff() && (kind == AttentionKind::diff_head_lambda
                                  ? place_inside(c.out, c.lambda1, at, opts)
                                  : place_inside(c.out, c.lambda3, at, opts));
        c.alias_target = "lambda";
        break;
      case 5:
        inside = c.diff() && place_inside(c.out, c.q2, at, opts), c.alias_target = "q2";
        break;
      case 6:
        inside = c.diff() && place_inside(c.out, c.k2, at, opts), c.alias_target = "k2";
        break;
      default:
        inside = place_inside(c.out, c.q1, 0, opts), c.alias_target = "q1";
        break;
    }
    c.out_aliased = inside;
  }
  if (!c.out_aliased && !place(c.out, kCanaryMargin, opts)) return AttackResult::rejected;

  Rng rng(in.u32());
  fill_input(c.q1, in, rng, 2);
  fill_input(c.k1, in, rng, 2);
  fill_input(c.v, in, rng, 2);
  if (c.diff()) {
    fill_input(c.q2, in, rng, 2);
    if (!c.k2_is_k1) fill_input(c.k2, in, rng, 2);
  }
  if (c.has_mask) {
    fill_values(c.mask, rng, 4);
    fill_mask_values(c.mask, in, rng);
    plant_specials(c.mask, in);
  }
  if (kind == AttentionKind::diff_head_lambda) {
    fill_values(c.lambda1, rng, 1);
    fill_lambda_values(c.lambda1.buffer->storage, c.lambda1.buffer->reachable, in, rng);
    plant_specials(c.lambda1, in);
  } else if (kind == AttentionKind::diff_token_lambda) {
    fill_values(c.lambda3, rng, 1);
    fill_lambda_values(c.lambda3.buffer->storage, c.lambda3.buffer->reachable, in, rng);
    plant_specials(c.lambda3, in);
  }
  if (c.has_mask) c.options.mask = c.mask.view;
  // An empty mask with a null pointer is "no mask" (validation.hpp).
  c.has_mask = c.has_mask && (c.mask.view.data() != nullptr || !c.mask.view.empty());

  Expect expect = expect_attention(c);
  const auto& qs = c.q1.geometry.shape;
  const index_t D_ = qs[3], Nk_ = c.k1.geometry.shape[2], Dv_ = c.v.geometry.shape[3];
  const index_t width = checked_add(std::max<index_t>(D_, 0), std::max<index_t>(Dv_, 0));
  // validation.hpp: the FLOP count 2·B·Hq·Nq·Nk·(D+Dv) must fit std::ptrdiff_t.
  // A zero factor means no work, however large (or overflowing) the others.
  const bool no_work = qs[0] == 0 || qs[1] == 0 || qs[2] == 0 || Nk_ == 0 || width == 0;
  const index_t work = no_work ? 0 : width < 0 ? -1 : checked_product({2, qs[0], qs[1], qs[2], Nk_, width});
  if (work >= 0 && opts.knows("flop_count_prefix")) {
    index_t running = 2;
    for (index_t f : {qs[0], qs[1], qs[2], Nk_, width}) {
      if (f < 0 || __builtin_mul_overflow(running, f, &running)) throw Skip{};
    }
  }
  const index_t cost =
      width < 0 || width == kIndexMax || Nk_ == kIndexMax
          ? -1
          : checked_mul(nested_cost({qs[0], std::max(qs[1], c.k1.geometry.shape[1]), qs[2], Nk_ + 1,
                                     width + 1}),
                        c.diff() ? 2 : 1);
  if (work < 0) {  // a shape_error, as is any other error this call has
    if (expect.valid() && opts.knows("work_overflow")) throw Skip{};
    expect.shape("2·B·Hq·Nq·Nk·(D+Dv) overflows std::int64_t");
  }
  if (expect.valid() && (cost < 0 || cost > kWorkLimit)) throw Skip{};
  if (std::isfinite(c.options.scale) && !scale_is_finite_in<T>(c.options.scale)) {
    if (opts.knows("float_scale")) throw Skip{};
    expect.argument("scale·log2(e) is not finite in the element type (known: float_scale)");
  }
  const bool skip_fused =
      expect.valid() &&
      ((D_ == 0 && checked_product({qs[0], qs[1], qs[2]}) != 0 && opts.knows("head_dim_zero")) ||
       (Nk_ >= pow2(24) && opts.knows("huge_kv_len")));

  const std::string call = c.describe();
  std::vector<std::shared_ptr<Buffer<T>>> inputs;
  std::vector<std::vector<T>> before;
  for (const auto* b : {&c.q1.buffer, &c.k1.buffer, &c.v.buffer, &c.q2.buffer, &c.k2.buffer,
                        &c.mask.buffer, &c.lambda1.buffer, &c.lambda3.buffer}) {
    if (*b && std::find(inputs.begin(), inputs.end(), *b) == inputs.end()) {
      inputs.push_back(*b);
      before.push_back((*b)->storage);
    }
  }
  auto run = [&](bool fused) {
    if (c.kind == AttentionKind::softmax) {
      if (fused)
        diffattn::softmax_attention<T>(c.q1.view, c.k1.view, c.v.view, c.out.view, c.options);
      else
        diffattn::reference::softmax_attention<T>(c.q1.view, c.k1.view, c.v.view, c.out.view,
                                                  c.options);
    } else if (c.kind == AttentionKind::diff_head_lambda) {
      const TensorView<const T, 1> lambda = c.lambda1.view;
      if (fused)
        diffattn::diff_attention<T>(c.q1.view, c.q2.view, c.k1.view, c.k2.view, c.v.view, lambda,
                                    c.out.view, c.options);
      else
        diffattn::reference::diff_attention<T>(c.q1.view, c.q2.view, c.k1.view, c.k2.view, c.v.view,
                                               lambda, c.out.view, c.options);
    } else {
      const TensorView<const T, 3> lambda = c.lambda3.view;
      if (fused)
        diffattn::diff_attention<T>(c.q1.view, c.q2.view, c.k1.view, c.k2.view, c.v.view, lambda,
                                    c.out.view, c.options);
      else
        diffattn::reference::diff_attention<T>(c.q1.view, c.q2.view, c.k1.view, c.k2.view, c.v.view,
                                               lambda, c.out.view, c.options);
    }
  };
  std::vector<T> results[2];
  bool succeeded[2] = {false, false};
  for (int pass = 0; pass < 2; ++pass) {
    const bool fused = pass == 0;
    if (fused && skip_fused) continue;
    const char* fn = fused ? "fused" : "reference";
    if (!c.out_aliased) arm_canary(c.out);
    Outcome outcome;
    {
      PoisonGaps<T> poison(inputs);
      outcome = invoke(fn, call, [&] { run(fused); });
    }
    check_outcome(fn, outcome, expect, call);
    for (std::size_t n = 0; n < inputs.size(); ++n) {
      if (!(c.out_aliased && inputs[n] == c.out.buffer && outcome.kind == Outcome::ok)) {
        check_unchanged(fn, "an input", inputs[n], before[n], call);
      }
    }
    succeeded[pass] = outcome.kind == Outcome::ok;
    if (!c.out_aliased) check_canary(fn, c.out, succeeded[pass], call);
    if (succeeded[pass]) results[pass] = read_output(c.out.view);
  }
  if (succeeded[0] && succeeded[1]) compare_with_reference(c, results[0], results[1], opts, call);
  return expect.valid() ? AttackResult::ran : AttackResult::rejected;
}

// ---------------------------------------------------------------------------------------
// KVCache: construction, append (including the cache's own views), keys()/values()

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

template <class T>
std::vector<T> read_all(TensorView<const T, 4> view) {
  std::vector<T> values;
  if (view.empty()) return values;  // its other extents may be huge
  for (index_t b = 0; b < view.extent(0); ++b)
    for (index_t n = 0; n < view.extent(1); ++n)
      for (index_t h = 0; h < view.extent(2); ++h)
        for (index_t c = 0; c < view.extent(3); ++c) values.push_back(view(b, n, h, c));
  return values;
}

template <class T>
AttackResult attack_kv_cache(Bytes& in, const AttackOptions& opts) {
  const index_t batch = decode_extent(in.u8()), capacity = decode_extent(in.u8()),
                key_heads = decode_extent(in.u8()), key_dim = decode_extent(in.u8()),
                value_heads = decode_extent(in.u8()), value_dim = decode_extent(in.u8());
  std::string call = diffattn::detail::concat(
      type_name<T>(), " KVCache(batch=", batch, ", capacity=", capacity, ", key_heads=", key_heads,
      ", key_dim=", key_dim, ", value_heads=", value_heads, ", value_dim=", value_dim, ")");
  // Documented: std::invalid_argument for a negative extent. The key storage is built
  // (and its element count checked, shape_error) before the value extents are looked at,
  // so with both problems either exception is right.
  Expect expect;
  for (index_t e : {batch, capacity, key_heads, key_dim, value_heads, value_dim}) {
    if (e < 0) expect.argument("a negative extent");
  }
  // Storage is head-major [B, heads, capacity, width]; Tensor counts it in that order.
  Geometry<4> key_storage, value_storage;
  key_storage.shape = {batch, key_heads, capacity, key_dim};
  value_storage.shape = {batch, value_heads, capacity, value_dim};
  if (key_storage.prefix_overflow() || value_storage.prefix_overflow()) {
    expect.shape("the storage's element count overflows");
  }
  const index_t key_count = checked_product({batch, key_heads, capacity, key_dim});
  const index_t value_count = checked_product({batch, value_heads, capacity, value_dim});
  const auto too_big = [](index_t count) { return count < 0 || count > kBufferLimit * 4; };
  if (expect.valid() && (too_big(key_count) || too_big(value_count))) {
    throw Skip{};  // valid, but more memory than a fuzz input deserves
  }
  // When the call is invalid nothing should be allocated, but the key storage is built
  // before the value extents are checked.
  const bool keys_valid = key_count >= 0 && !key_storage.prefix_overflow();
  if (!expect.valid() && keys_valid && too_big(key_count) &&
      opts.knows("kv_cache_alloc_before_check")) {
    throw Skip{};
  }
  std::unique_ptr<diffattn::KVCache<T>> cache;
  const Outcome built = invoke("KVCache", call, [&] {
    cache = std::make_unique<diffattn::KVCache<T>>(batch, capacity, key_heads, key_dim, value_heads,
                                                   value_dim);
  });
  check_outcome("KVCache", built, expect, call);
  if (built.kind != Outcome::ok) return AttackResult::rejected;
  const bool storage_empty = key_storage.empty() || value_storage.empty();
  if (opts.knows("row_major_overflow") &&
      (row_major_overflows(std::array<index_t, 4>{batch, key_heads, capacity, key_dim}) ||
       row_major_overflows(std::array<index_t, 4>{batch, value_heads, capacity, value_dim}))) {
    throw Skip{};
  }

  Rng rng(in.u32());
  const int rounds = in.u8() % 4 + 1;
  for (int round = 0; round < rounds; ++round) {
    const std::uint8_t mode = in.u8();
    if (mode & 2) cache->clear();
    if (cache->length() != ((mode & 2) ? 0 : cache->length()))
      fail("KVCache::clear left tokens: ", call);
    const index_t length = cache->length();
    if (storage_empty && length > 0 && opts.knows("empty_view_offset")) throw Skip{};
    // Reading the cache back costs as much as its tokens; B = 2^62 with no heads too.
    const index_t read_cost = checked_add(nested_cost({batch, length, key_heads, key_dim}),
                                          nested_cost({batch, length, value_heads, value_dim}));
    if (read_cost < 0 || read_cost > kWorkLimit) throw Skip{};
    const auto keys_before = read_all(cache->keys());
    const auto values_before = read_all(cache->values());
    if (cache->keys().shape() != std::array<index_t, 4>{batch, length, key_heads, key_dim} ||
        cache->values().shape() != std::array<index_t, 4>{batch, length, value_heads, value_dim}) {
      fail("KVCache::keys()/values() have the wrong shape: ", call);
    }
    Operand<T, 4> keys, values;
    keys.name = "keys";
    values.name = "values";
    TensorView<const T, 4> key_view, value_view;
    std::string round_call = call;
    Expect e;
    if (mode & 1) {
      // The cache's own tokens appended again: they alias its storage.
      key_view = cache->keys();
      value_view = cache->values();
      round_call += "; append(cache.keys(), cache.values())";
      if (length > cache->remaining()) e.shape("no room");
      // copy_rows walks B·heads even for no token: 2^48 heads of width 0 never end.
      const index_t cost = checked_add(nested_cost({batch, key_heads, length, key_dim}),
                                       nested_cost({batch, value_heads, length, value_dim}));
      if (cost < 0 || cost > kWorkLimit) throw Skip{};
      if (!key_view.empty() || !value_view.empty()) e.shape("keys/values alias the cache");
    } else {
      const index_t n = decode_extent(in.u8());
      keys.geometry = decode_geometry<4>(in, {batch, n, key_heads, key_dim});
      values.geometry = decode_geometry<4>(in, {batch, n, value_heads, value_dim});
      if (!place(keys, 0, opts) || !place(values, 0, opts)) return AttackResult::rejected;
      fill_input(keys, in, rng, 2);
      fill_input(values, in, rng, 2);
      key_view = keys.view;
      value_view = values.view;
      round_call += "; append(" + keys.describe() + ", " + values.describe() + ")";
      const auto& k = keys.geometry.shape;
      const auto& v = values.geometry.shape;
      if (k[0] != batch || k[2] != key_heads || k[3] != key_dim) e.shape("keys extents");
      if (v[0] != batch || v[2] != value_heads || v[3] != value_dim) e.shape("values extents");
      if (v[1] != k[1]) e.shape("values n");
      if (k[1] > cache->remaining()) e.shape("no room");
      if (e.valid()) {
        const index_t cost = checked_add(nested_cost({k[0], k[2], k[1], k[3]}),
                                         nested_cost({v[0], v[2], v[1], v[3]}));
        if (cost < 0 || cost > kWorkLimit) throw Skip{};
      }
    }
    // Only a valid append's tokens are read back (an invalid one may be 2^62 tokens long).
    const auto appended_keys = e.valid() ? read_all(key_view) : std::vector<T>{};
    const auto appended_values = e.valid() ? read_all(value_view) : std::vector<T>{};
    Outcome outcome;
    {
      PoisonGaps<T> poison({keys.buffer, values.buffer});
      outcome = invoke("KVCache::append", round_call, [&] { cache->append(key_view, value_view); });
    }
    check_outcome("KVCache::append", outcome, e, round_call);
    const index_t added = outcome.kind == Outcome::ok ? key_view.extent(1) : 0;
    if (cache->length() != length + added)
      fail("KVCache::append: length is wrong afterwards: ", round_call);
    const auto keys_after = read_all(cache->keys());
    const auto values_after = read_all(cache->values());
    // Token t of sequence b, head h, channel c sits at ((b·length + t)·heads + h)·width + c.
    auto check = [&](const std::vector<T>& after, const std::vector<T>& before,
                     const std::vector<T>& added_values, index_t heads, index_t width,
                     const char* what) {
      const index_t total = length + added;
      if (batch == 0 || total == 0 || heads == 0 || width == 0) return;  // nothing stored
      for (index_t b = 0; b < batch; ++b)
        for (index_t t = 0; t < total; ++t)
          for (index_t h = 0; h < heads; ++h)
            for (index_t c = 0; c < width; ++c) {
              const auto at = static_cast<std::size_t>(((b * total + t) * heads + h) * width + c);
              const T expected =
                  t < length
                      ? before[static_cast<std::size_t>(((b * length + t) * heads + h) * width + c)]
                      : added_values[static_cast<std::size_t>(
                            ((b * added + t - length) * heads + h) * width + c)];
              if (!same_bits(after[at], expected)) {
                fail("KVCache ", what, "(", b, ", ", t, ", ", h, ", ", c,
                     ") reads back wrong after ",
                     outcome.kind == Outcome::ok ? "an append" : "a rejected append", ": ",
                     round_call);
              }
            }
    };
    check(keys_after, keys_before, appended_keys, key_heads, key_dim, "keys");
    check(values_after, values_before, appended_values, value_heads, value_dim, "values");
  }
  return AttackResult::ran;
}

// ---------------------------------------------------------------------------------------
// apply_rope

inline index_t decode_position(std::uint8_t b) {
  static constexpr index_t table[10] = {1,         7,  pow2(20),  pow2(31), pow2(53), kIndexMax - 3,
                                        kIndexMax, -1, kIndexMin, pow2(62)};
  return b < 160 ? 0 : table[(b - 160) % 10];
}

inline double decode_theta(std::uint8_t b) {
  static const double table[10] = {1, 0.5, 1e-300, 1e300, 0, -1, HUGE_VAL, NAN, 500000, 4.9e-324};
  return b < 128 ? 10000 : table[(b - 128) % 10];
}

template <class T>
AttackResult attack_rope(Bytes& in, const AttackOptions& opts) {
  Operand<T, 4> x;
  x.name = "x";
  const index_t B = decode_extent(in.u8()), N = decode_extent(in.u8()), H = decode_extent(in.u8()),
                d = decode_extent(in.u8());
  const index_t offset = decode_position(in.u8());
  const auto style = static_cast<diffattn::RopeStyle>(in.u8() % 3);
  const double theta = decode_theta(in.u8());
  x.geometry = decode_geometry<4>(in, {B, N, H, d});
  if (!place(x, kCanaryMargin, opts)) return AttackResult::rejected;
  Rng rng(in.u32());
  fill_input(x, in, rng, 2);
  Buffer<T>& buffer = *x.buffer;
  for (std::size_t i = 0; i < buffer.storage.size(); ++i) {
    if (!buffer.reachable[i]) buffer.storage[i] = canary_value<T>();
  }
  const std::string call = diffattn::detail::concat(
      type_name<T>(), " apply_rope(", x.describe(), ", offset=", offset,
      ", style=", diffattn::rope_style_name(style), ", theta=", theta, ")");
  const auto& s = x.geometry.shape;
  Expect expect;
  if (style != diffattn::RopeStyle::none && s[3] % 2 != 0) expect.shape("odd d");
  if (offset < 0) expect.argument("negative offset");
  if (!(std::isfinite(theta) && theta > 0)) expect.argument("bad theta");
  // rope.hpp: the largest angle, (offset + N − 1)·max(1, θ^(−2(d/2 − 1)/d)), must be finite.
  if (std::isfinite(theta) && theta > 0 && style != diffattn::RopeStyle::none && s[3] >= 2 && s[1] > 0 &&
      offset >= 0) {
    const double frequency = std::max(
        1.0, std::pow(theta, -2.0 * static_cast<double>(s[3] / 2 - 1) / static_cast<double>(s[3])));
    if (!std::isfinite(frequency * (static_cast<double>(offset) + static_cast<double>(s[1] - 1)))) {
      expect.argument("rotation angle overflows");
    }
  }
  // rope.hpp: the last position, offset + N − 1, must fit (whatever the other extents).
  if (offset >= 0 && s[1] > 0 && checked_add(offset, s[1] - 1) < 0) expect.argument("position overflow");
  if (expect.valid() && !x.geometry.empty()) {
    const index_t pairs = s[3] / 2;
    const index_t cost =
        checked_add(nested_cost({s[0], s[1], s[2], pairs}), nested_cost({s[1], pairs}));
    if (cost < 0 || cost > kWorkLimit) throw Skip{};
  }
  const std::vector<T> before = buffer.storage;
  const Outcome outcome =
      invoke("apply_rope", call, [&] { diffattn::apply_rope<T>(x.view, offset, style, theta); });
  check_outcome("apply_rope", outcome, expect, call);
  for (std::size_t i = 0; i < buffer.storage.size(); ++i) {
    if (!buffer.reachable[i] && !same_bits(buffer.storage[i], canary_value<T>())) {
      fail("apply_rope wrote outside x: ", call);
    }
  }
  if (outcome.kind != Outcome::ok || !elements_distinct(s, x.geometry.strides) ||
      x.geometry.empty()) {
    if (outcome.kind != Outcome::ok &&
        std::memcmp(before.data(), buffer.storage.data(), before.size() * sizeof(T)) != 0) {
      fail("apply_rope threw but changed x: ", call);
    }
    return expect.valid() ? AttackResult::ran : AttackResult::rejected;
  }
  // Each rotated pair keeps its norm; style none changes nothing.
  const index_t pairs = s[3] / 2;
  const double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const auto& st = x.geometry.strides;
  auto old_value = [&](index_t b, index_t n, index_t h, index_t c) {
    return static_cast<double>(before[static_cast<std::size_t>(x.offset_in_buffer + b * st[0] +
                                                               n * st[1] + h * st[2] + c * st[3])]);
  };
  for (index_t b = 0; b < s[0]; ++b)
    for (index_t n = 0; n < s[1]; ++n)
      for (index_t h = 0; h < s[2]; ++h) {
        if (style == diffattn::RopeStyle::none) {
          for (index_t c = 0; c < s[3]; ++c) {
            if (!same_bits(static_cast<T>(old_value(b, n, h, c)), x.view(b, n, h, c)))
              fail("apply_rope(none) changed x: ", call);
          }
          continue;
        }
        for (index_t i = 0; i < pairs; ++i) {
          const index_t first = style == diffattn::RopeStyle::interleaved ? 2 * i : i;
          const index_t second = style == diffattn::RopeStyle::interleaved ? 2 * i + 1 : i + pairs;
          const double a = old_value(b, n, h, first), c2 = old_value(b, n, h, second);
          const double ra = static_cast<double>(x.view(b, n, h, first)),
                       rc = static_cast<double>(x.view(b, n, h, second));
          const double norm = a * a + c2 * c2, rotated = ra * ra + rc * rc;
          if (!std::isfinite(norm) || norm > 1e300) continue;
          if (!(std::fabs(rotated - norm) <= tolerance * norm + 1e-300)) {
            fail("apply_rope changed the norm of pair ", i, " at (", b, ", ", n, ", ", h,
                 "): ", norm, " -> ", rotated, ": ", call);
          }
        }
      }
  return AttackResult::ran;
}

// ---------------------------------------------------------------------------------------
// rms_norm

inline double decode_eps(std::uint8_t b) {
  static const double table[8] = {0, 1e-300, 1, 1e300, -1, HUGE_VAL, NAN, -0.0};
  return b < 128 ? 1e-5 : table[(b - 128) % 8];
}

template <class T>
AttackResult attack_rms_norm(Bytes& in, const AttackOptions& opts) {
  const index_t R = decode_extent(in.u8()), D = decode_extent(in.u8());
  const double eps = decode_eps(in.u8());
  const std::uint8_t out_mode =
      in.u8() % 8;  // 0-4 own buffer, 5 in place, 6 inside x, 7 inside weight
  Operand<T, 2> x, out;
  Operand<T, 1> weight;
  x.name = "x";
  out.name = "out";
  weight.name = "weight";
  x.geometry = decode_geometry<2>(in, {R, D});
  weight.geometry = decode_geometry<1>(in, {D});
  out.geometry = decode_geometry<2>(in, {R, D});
  const std::uint8_t at = in.u8() % 8;
  Rng rng(in.u32());
  TensorView<const T, 2> x_view;
  bool in_place = false, aliased = false;
  if (out_mode == 5) {
    out.geometry = x.geometry;
    out.geometry.base = 0;
    if (!place(out, kCanaryMargin, opts) || !place(weight, 0, opts)) return AttackResult::rejected;
    fill_input(out, in, rng, 2);
    x_view = out.view;
    x = out;
    x.name = "x (= out)";
    in_place = true;
  } else {
    if (!place(x, 0, opts) || !place(weight, 0, opts)) return AttackResult::rejected;
    aliased = out_mode == 6 ? place_inside(out, x, at, opts)
                            : out_mode == 7 && place_inside(out, weight, at, opts);
    if (!aliased && !place(out, kCanaryMargin, opts)) return AttackResult::rejected;
    fill_input(x, in, rng, 2);
    x_view = x.view;
  }
  fill_input(weight, in, rng, 2);
  const std::string call =
      diffattn::detail::concat(type_name<T>(), " rms_norm(", x.describe(), ", ", weight.describe(),
                               ", eps=", eps, ", ", out.describe(),
                               in_place  ? " (in place)"
                               : aliased ? " (inside an input)"
                                         : "",
                               ")");
  const auto& xs = x.geometry.shape;
  Expect expect;
  if (weight.geometry.shape[0] != xs[1]) expect.shape("weight D");
  if (out.geometry.shape != xs) expect.shape("out extents");
  if (!(std::isfinite(eps) && eps >= 0)) expect.argument("bad eps");
  if (!elements_distinct(out.geometry.shape, out.geometry.strides)) expect.shape("overlapping out");
  const bool same = static_cast<const T*>(out.view.data()) == x_view.data() &&
                    out.view.strides() == x_view.strides();
  if (!same && hull_of(out.view).intersects(hull_of(x_view))) expect.shape("out overlaps x");
  if (hull_of(out.view).intersects(hull_of(weight.view))) expect.shape("out overlaps weight");
  if (expect.valid()) {
    const index_t cost = nested_cost({xs[0], xs[1]});
    if (cost < 0 || cost > kWorkLimit) throw Skip{};
  }
  // The expected output, from x and weight before the call (x may be out).
  std::vector<double> expected;
  if (expect.valid()) {
    for (index_t r = 0; r < xs[0]; ++r) {
      double sum = 0;
      for (index_t c = 0; c < xs[1]; ++c)
        sum += static_cast<double>(x_view(r, c)) * static_cast<double>(x_view(r, c));
      const double inverse =
          1.0 / std::sqrt((xs[1] > 0 ? sum / static_cast<double>(xs[1]) : 0.0) + eps);
      for (index_t c = 0; c < xs[1]; ++c) {
        expected.push_back(static_cast<double>(x_view(r, c)) * inverse *
                           static_cast<double>(weight.view(c)));
      }
    }
  }
  const auto x_before = snapshot(x.buffer);
  const auto weight_before = snapshot(weight.buffer);
  if (!in_place && !aliased) arm_canary(out);
  std::vector<T> out_before;
  if (in_place) {
    for (std::size_t i = 0; i < out.buffer->storage.size(); ++i) {
      if (!out.buffer->reachable[i]) out.buffer->storage[i] = canary_value<T>();
    }
    out_before = out.buffer->storage;
  }
  Outcome outcome;
  {
    PoisonGaps<T> poison(in_place
                             ? std::vector<std::shared_ptr<Buffer<T>>>{weight.buffer}
                             : std::vector<std::shared_ptr<Buffer<T>>>{x.buffer, weight.buffer});
    outcome = invoke("rms_norm", call,
                     [&] { diffattn::rms_norm<T>(x_view, weight.view, eps, out.view); });
  }
  check_outcome("rms_norm", outcome, expect, call);
  if (!in_place && !(aliased && outcome.kind == Outcome::ok)) {
    check_unchanged("rms_norm", "x", x.buffer, x_before, call);
    check_unchanged("rms_norm", "weight", weight.buffer, weight_before, call);
  }
  if (!in_place && !aliased) check_canary("rms_norm", out, outcome.kind == Outcome::ok, call);
  if (in_place) {
    for (std::size_t i = 0; i < out.buffer->storage.size(); ++i) {
      const bool changed = !same_bits(out.buffer->storage[i], out_before[i]);
      if (changed && (!out.buffer->reachable[i] || outcome.kind != Outcome::ok)) {
        fail("rms_norm wrote where it may not: ", call);
      }
    }
  }
  if (outcome.kind != Outcome::ok) return AttackResult::rejected;
  const double tolerance = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  std::size_t n = 0;
  for (index_t r = 0; r < xs[0]; ++r)
    for (index_t c = 0; c < xs[1]; ++c, ++n) {
      const double e = expected[n], got = static_cast<double>(out.view(r, c));
      const double rounded = static_cast<double>(static_cast<T>(e));
      const bool agree =
          std::isnan(rounded) ? std::isnan(got)
          : std::isinf(rounded)
              ? got == rounded
              : std::fabs(got - e) <= tolerance * std::fabs(e) + 1e-300 || got == rounded;
      if (!agree) fail("rms_norm out(", r, ", ", c, ") = ", got, ", expected ", e, ": ", call);
    }
  return AttackResult::ran;
}

// ---------------------------------------------------------------------------------------
// lambda_init, lambda_reparam (rank 1 and rank 2)

template <class T>
AttackResult attack_lambda(Bytes& in, const AttackOptions& opts) {
  static constexpr int layers[8] = {
      1, 2, 12, 0, -1, std::numeric_limits<int>::min(), std::numeric_limits<int>::max(), 100};
  const int layer = layers[in.u8() % 8];
  double init = 0;
  {
    const std::string call = diffattn::detail::concat("lambda_init(", layer, ")");
    Expect e;
    if (layer < 1) e.argument("layer < 1");
    const Outcome outcome =
        invoke("lambda_init", call, [&] { init = diffattn::lambda_init(layer); });
    check_outcome("lambda_init", outcome, e, call);
    if (outcome.kind == Outcome::ok && !(init >= 0.2 - 1e-12 && init <= 0.8 + 1e-12)) {
      fail("lambda_init(", layer, ") = ", init, ", outside [0.2, 0.8]");
    }
  }
  const bool per_head = in.u8() & 1;
  const index_t H = decode_extent(in.u8()), d = decode_extent(in.u8());
  Rng rng(in.u32());
  const char* names[4] = {"lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"};
  auto reference = [](const TensorView<const T, 1>* v, double init_value) {
    double dots[2] = {0, 0};
    for (int pair = 0; pair < 2; ++pair) {
      for (index_t i = 0; i < v[2 * pair].extent(0); ++i) {
        dots[pair] += static_cast<double>(v[2 * pair](i)) * static_cast<double>(v[2 * pair + 1](i));
      }
    }
    return std::exp(dots[0]) - std::exp(dots[1]) + init_value;
  };
  auto agree = [](double got, double expected, double tolerance) {
    if (std::isnan(expected)) return std::isnan(got);
    if (std::isinf(expected)) return got == expected;
    return std::fabs(got - expected) <= tolerance * (std::fabs(expected) + 1);
  };
  if (!per_head) {
    Operand<T, 1> v[4];
    std::string call = std::string(type_name<T>()) + " lambda_reparam(";
    for (int i = 0; i < 4; ++i) {
      v[i].name = names[i];
      v[i].geometry = decode_geometry<1>(in, {d});
      if (!place(v[i], 0, opts)) return AttackResult::rejected;
      fill_input(v[i], in, rng, 1);
      call += v[i].describe() + ", ";
    }
    call += diffattn::detail::concat("init=", init, ")");
    Expect e;
    for (int i = 1; i < 4; ++i) {
      if (v[i].geometry.shape[0] != v[0].geometry.shape[0]) e.shape("widths differ");
    }
    if (e.valid() && v[0].geometry.shape[0] > kWorkLimit) throw Skip{};
    double got = 0;
    const Outcome outcome = invoke("lambda_reparam", call, [&] {
      got = diffattn::lambda_reparam(v[0].cview(), v[1].cview(), v[2].cview(), v[3].cview(), init);
    });
    check_outcome("lambda_reparam", outcome, e, call);
    if (outcome.kind == Outcome::ok) {
      const TensorView<const T, 1> views[4] = {v[0].view, v[1].view, v[2].view, v[3].view};
      const double expected = reference(views, init);
      if (!agree(got, expected, 1e-12))
        fail("lambda_reparam = ", got, ", expected ", expected, ": ", call);
    }
    return outcome.kind == Outcome::ok ? AttackResult::ran : AttackResult::rejected;
  }
  Operand<T, 2> v[4];
  Operand<T, 1> out;
  out.name = "out";
  std::string call = std::string(type_name<T>()) + " lambda_reparam(";
  for (int i = 0; i < 4; ++i) {
    v[i].name = names[i];
    v[i].geometry = decode_geometry<2>(in, {H, d});
    if (!place(v[i], 0, opts)) return AttackResult::rejected;
    fill_input(v[i], in, rng, 1);
    call += v[i].describe() + ", ";
  }
  out.geometry = decode_geometry<1>(in, {H});
  if (!place(out, kCanaryMargin, opts)) return AttackResult::rejected;
  for (const auto& op : v) {
    if (op.geometry.empty() && op.geometry.shape[0] > 1 && opts.knows("empty_view_offset"))
      throw Skip{};
  }
  call += diffattn::detail::concat("init=", init, ", ", out.describe(), ")");
  Expect e;
  for (int i = 1; i < 4; ++i) {
    if (v[i].geometry.shape != v[0].geometry.shape) e.shape("shapes differ");
  }
  if (out.geometry.shape[0] != v[0].geometry.shape[0]) e.shape("out H");
  if (e.valid()) {
    const index_t cost =
        checked_mul(nested_cost({v[0].geometry.shape[0], v[0].geometry.shape[1]}), 4);
    if (cost < 0 || cost > kWorkLimit) throw Skip{};
  }
  arm_canary(out);
  std::vector<std::vector<T>> before;
  for (auto& op : v) before.push_back(op.buffer->storage);
  Outcome outcome;
  {
    PoisonGaps<T> poison({v[0].buffer, v[1].buffer, v[2].buffer, v[3].buffer});
    outcome = invoke("lambda_reparam", call, [&] {
      diffattn::lambda_reparam(v[0].cview(), v[1].cview(), v[2].cview(), v[3].cview(), init,
                               out.view);
    });
  }
  check_outcome("lambda_reparam", outcome, e, call);
  for (int i = 0; i < 4; ++i)
    check_unchanged("lambda_reparam", names[i], v[i].buffer, before[static_cast<std::size_t>(i)],
                    call);
  check_canary("lambda_reparam", out, outcome.kind == Outcome::ok, call);
  if (outcome.kind != Outcome::ok) return AttackResult::rejected;
  if (elements_distinct(out.geometry.shape, out.geometry.strides)) {
    for (index_t h = 0; h < out.geometry.shape[0]; ++h) {
      const TensorView<const T, 1> rows[4] = {v[0].cview().select(0, h), v[1].cview().select(0, h),
                                              v[2].cview().select(0, h), v[3].cview().select(0, h)};
      const double expected = static_cast<double>(static_cast<T>(reference(rows, init)));
      const double got = static_cast<double>(out.view(h));
      if (!agree(got, expected, std::is_same_v<T, float> ? 1e-6 : 1e-12)) {
        fail("lambda_reparam out(", h, ") = ", got, ", expected ", expected, ": ", call);
      }
    }
  }
  return AttackResult::ran;
}

// ---------------------------------------------------------------------------------------
// Layout views (bnhd_to_bhnd, interleaved_pairs, half_split_pairs) and as_eigen/as_view

/// Indices 0, 1 and e−1 of an extent: enough to see a wrong stride or offset.
inline std::vector<index_t> probe_indices(index_t extent) {
  std::vector<index_t> out;
  for (index_t i : {index_t{0}, index_t{1}, extent - 1}) {
    if (i >= 0 && i < extent && std::find(out.begin(), out.end(), i) == out.end()) out.push_back(i);
  }
  return out;
}

template <class T>
AttackResult attack_layouts(Bytes& in, const AttackOptions& opts) {
  Operand<T, 4> x;
  x.name = "x";
  const index_t B = decode_extent(in.u8()), N = decode_extent(in.u8()), H2 = decode_extent(in.u8()),
                d = decode_extent(in.u8());
  x.geometry = decode_geometry<4>(in, {B, N, H2, d});
  if (!place(x, 0, opts)) return AttackResult::rejected;
  const std::string call = std::string(type_name<T>()) + " layouts of " + x.describe();
  const auto& s = x.geometry.shape;
  // bnhd_to_bhnd: a permutation, addresses unchanged.
  const auto bhnd = diffattn::bnhd_to_bhnd(x.view);
  for (index_t b : probe_indices(s[0]))
    for (index_t n : probe_indices(s[1]))
      for (index_t h : probe_indices(s[2]))
        for (index_t c : probe_indices(s[3])) {
          if (&bhnd(b, h, n, c) != &x.view(b, n, h, c))
            fail("bnhd_to_bhnd addresses the wrong element: ", call);
        }
  for (int style = 0; style < 2; ++style) {
    const char* fn = style == 0 ? "interleaved_pairs" : "half_split_pairs";
    Expect e;
    if (s[2] % 2 != 0) e.shape("odd heads");
    Geometry<5> split;
    split.shape = style == 0 ? std::array<index_t, 5>{s[0], s[1], s[2] / 2, 2, s[3]}
                             : std::array<index_t, 5>{s[0], s[1], 2, s[2] / 2, s[3]};
    if (e.valid() && split.prefix_overflow()) {
      if (opts.knows("empty_count_prefix")) continue;
    }
    diffattn::HeadPairs<T> pairs;
    if (x.geometry.empty() && opts.knows("empty_view_offset")) continue;
    const Outcome outcome = invoke(fn, call, [&] {
      pairs = style == 0 ? diffattn::interleaved_pairs(x.view) : diffattn::half_split_pairs(x.view);
    });
    check_outcome(fn, outcome, e, call);
    if (outcome.kind != Outcome::ok) continue;
    const index_t H = s[2] / 2;
    const std::array<index_t, 4> expected_shape = {s[0], H, s[1], s[3]};
    if (pairs.first.shape() != expected_shape || pairs.second.shape() != expected_shape) {
      fail(fn, " returned the wrong shape: ", call);
    }
    for (index_t b : probe_indices(s[0]))
      for (index_t h : probe_indices(H))
        for (index_t n : probe_indices(s[1]))
          for (index_t c : probe_indices(s[3])) {
            const index_t h1 = style == 0 ? 2 * h : h, h2 = style == 0 ? 2 * h + 1 : H + h;
            if (&pairs.first(b, h, n, c) != &x.view(b, n, h1, c) ||
                &pairs.second(b, h, n, c) != &x.view(b, n, h2, c)) {
              fail(fn, " addresses the wrong element at (", b, ", ", h, ", ", n, ", ", c,
                   "): ", call);
            }
          }
  }
  // as_eigen / as_view on the 2-D view x[0, 0] (when there is one).
  if (s[0] > 0 && s[1] > 0) {
    const TensorView<T, 2> plane = x.view.select(0, 0).select(0, 0);
    const auto map = diffattn::as_eigen(plane);
    for (index_t r : probe_indices(plane.extent(0)))
      for (index_t c : probe_indices(plane.extent(1))) {
        if (&map(r, c) != &plane(r, c)) fail("as_eigen addresses the wrong element: ", call);
      }
    if (map.rows() != plane.extent(0) || map.cols() != plane.extent(1))
      fail("as_eigen has the wrong size: ", call);
  }
  return AttackResult::ran;
}

// ---------------------------------------------------------------------------------------
// MultiHeadAttention and MultiHeadDiffAttention: forward(x) and forward(x, cache)

template <class T, class Block>
void check_cached_equals_full(const Block& block, TensorView<const T, 3> x, index_t split,
                              const std::string& call) {
  const auto full = block.forward(x);
  auto cache = block.make_cache(x.extent(0), x.extent(1));
  const auto first = block.forward(x.slice(1, 0, split), cache);
  const auto second = block.forward(x.slice(1, split, x.extent(1)), cache);
  double scale = 1;
  for (index_t i = 0; i < full.size(); ++i)
    scale = std::max(scale, std::fabs(static_cast<double>(full.data()[i])));
  const double tolerance = (std::is_same_v<T, float> ? 1e-3 : 1e-9) * scale;
  for (index_t b = 0; b < x.extent(0); ++b)
    for (index_t n = 0; n < x.extent(1); ++n)
      for (index_t c = 0; c < x.extent(2); ++c) {
        const double a = static_cast<double>(full(b, n, c));
        const double got =
            static_cast<double>(n < split ? first(b, n, c) : second(b, n - split, c));
        if (!(std::fabs(a - got) <= tolerance)) {
          fail("forward(x, cache) in two steps (split at ", split, ") differs from forward(x) at (",
               b, ", ", n, ", ", c, "): ", got, " vs ", a, ": ", call);
        }
      }
}

template <class T>
AttackResult attack_block(Bytes& in, const AttackOptions& opts) {
  static constexpr int layers[5] = {1, 2, 5, 0, -1};
  const bool differential = in.u8() & 1;
  const index_t E = in.u8() % 17, heads = in.u8() % 5, kv_heads = in.u8() % 5,
                head_dim = in.u8() % 7;
  const bool causal = in.u8() & 1;
  const auto rope = static_cast<diffattn::RopeStyle>(in.u8() % 3);
  const double theta = decode_theta(in.u8());
  const int threads = decode_threads(in.u8());
  const auto lambda_mode = static_cast<diffattn::LambdaMode>(in.u8() % 3);
  const int layer = layers[in.u8() % 5];
  const std::uint32_t seed = in.u32();
  const index_t B = decode_extent(in.u8()), N = decode_extent(in.u8());
  std::string call = diffattn::detail::concat(
      type_name<T>(), differential ? " MultiHeadDiffAttention" : " MultiHeadAttention", "(E=", E,
      ", heads=", heads, ", kv_heads=", kv_heads, ", head_dim=", head_dim, ", causal=", causal,
      ", rope=", diffattn::rope_style_name(rope), ", theta=", theta, ", threads=", threads,
      ", lambda=", diffattn::lambda_mode_name(lambda_mode), ", layer=", layer, ")");
  Operand<T, 3> x;
  x.name = "x";
  x.geometry = decode_geometry<3>(in, {B, N, E});
  const index_t cache_batch = (in.u8() & 1) ? decode_extent(in.u8()) : B;
  const index_t capacity = decode_extent(in.u8());
  const index_t split = in.u8();
  if (!place(x, 0, opts)) return AttackResult::rejected;
  Rng rng(in.u32());
  fill_input(x, in, rng, 2);
  call += "; x " + x.describe();
  const auto& s = x.geometry.shape;
  // Projections E·(widths) per token, attention N·N·d per head: both bounded by this.
  const index_t cost =
      s[1] == kIndexMax ? -1
                        : checked_add(nested_cost({s[0], s[1], std::max<index_t>(s[2], 16 * 32)}),
                                      nested_cost({s[0], s[1], s[1] + 1, 16 * 8}));
  if (cost < 0 || cost > kWorkLimit) throw Skip{};

  if (checked_product({s[0], s[1]}) == 0 && opts.knows("empty_view_offset")) throw Skip{};
  auto run = [&](const auto& block) {
    const index_t E_ = block.config().embed_dim;
    Expect e;
    if (s[2] != E_) e.shape("x E");
    bool finite = true;
    for (index_t b = 0; b < s[0]; ++b)
      for (index_t n = 0; n < s[1]; ++n)
        for (index_t c = 0; c < s[2]; ++c) finite = finite && std::fabs(x.view(b, n, c)) <= 1e4;
    Outcome outcome = invoke("forward", call, [&] {
      const auto y = block.forward(x.cview());
      if (y.shape() != std::array<index_t, 3>{s[0], s[1], E_})
        fail("forward returned the wrong shape: ", call);
      // Random weights are bounded, so a bounded x gives a finite y (1e30 or lowest() in x
      // may overflow the projections).
      for (index_t i = 0; finite && i < y.size(); ++i) {
        if (!std::isfinite(y.data()[i]))
          fail("forward gave a non-finite y(", i, ") = ", y.data()[i], " for a finite x: ", call);
      }
    });
    check_outcome("forward", outcome, e, call);
    // A cache of another batch or too small a capacity is a shape_error.
    Expect cache_expect;
    if (cache_batch < 0 || capacity < 0) cache_expect.argument("negative cache extent");
    Geometry<4> storage;
    storage.shape = {cache_batch, std::max<index_t>(block.make_cache(0, 0).key_heads(), 1),
                     capacity, 8};
    if (cache_expect.valid() && (storage.prefix_overflow() || storage.count() > kBufferLimit * 4))
      return;
    std::unique_ptr<diffattn::KVCache<T>> cache;
    outcome = invoke("make_cache", call, [&] {
      cache = std::make_unique<diffattn::KVCache<T>>(block.make_cache(cache_batch, capacity));
    });
    check_outcome("make_cache", outcome, cache_expect, call);
    if (outcome.kind != Outcome::ok) return;
    for (int step = 0; step < 2; ++step) {
      Expect step_expect = e;
      if (cache_batch != s[0]) step_expect.shape("cache batch");
      if (s[1] > cache->remaining()) step_expect.shape("no room in the cache");
      const index_t length = cache->length();
      outcome = invoke("forward(x, cache)", call, [&] { (void)block.forward(x.cview(), *cache); });
      check_outcome("forward(x, cache)", outcome, step_expect, call);
      if (cache->length() != length + (outcome.kind == Outcome::ok ? s[1] : 0)) {
        fail("forward(x, cache) left the cache at the wrong length: ", call);
      }
    }
    // Decoding in two steps gives the rows of one causal forward (bounded x only).
    index_t at = split % (s[1] + 1);
    if (opts.knows("empty_view_offset"))
      at = s[1] >= 2 ? 1 + split % (s[1] - 1) : -1;  // no empty step
    if (block.config().causal && e.valid() && finite && s[1] > 0 && at >= 0) {
      check_cached_equals_full<T>(block, x.cview(), at, call);
    }
  };
  // Builds a block of type Block from `config` (the fields both configs share set here)
  // and its own random weights, then runs it.
  auto build_and_run = [&](auto config, auto block_type, const char* name) {
    using Block = typename decltype(block_type)::type;
    config.embed_dim = E;
    config.num_heads = heads;
    config.num_kv_heads = kv_heads;
    config.head_dim = head_dim;
    config.causal = causal;
    config.rope = rope;
    config.rope_theta = theta;
    config.threads = threads;
    std::unique_ptr<Block> block;
    const Outcome built = invoke(name, call, [&] {
      block = std::make_unique<Block>(config, examples::random_weights<T>(config, seed));
    });
    if (built.kind == Outcome::shape)
      fail(name, ": shape_error for its own random weights: ", built.message, ": ", call);
    if (built.kind == Outcome::ok) run(*block);
    return built.kind;
  };
  Outcome::Kind built;
  if (differential) {
    diffattn::DiffAttentionConfig config;
    config.layer = layer;
    config.lambda = lambda_mode;
    built = build_and_run(config, diffattn::detail::type_identity<diffattn::MultiHeadDiffAttention<T>>{},
                          "MultiHeadDiffAttention");
  } else {
    built = build_and_run(diffattn::AttentionConfig{},
                          diffattn::detail::type_identity<diffattn::MultiHeadAttention<T>>{}, "MultiHeadAttention");
  }
  return built == Outcome::ok ? AttackResult::ran : AttackResult::rejected;
}

// ---------------------------------------------------------------------------------------
// Entry

/// Byte 1 (mod 16) picks the entry point; attention gets the most, as it has the most
/// surface.
enum Entry : std::uint8_t {
  kSoftmax = 0,          // also 1, 2, 13
  kDiffHeadLambda = 3,   // also 4, 14
  kDiffTokenLambda = 5,  // also 6, 15
  kKVCache = 7,
  kRope = 8,
  kRmsNorm = 9,
  kLambda = 10,
  kLayouts = 11,
  kBlock = 12,
};

template <class T>
AttackResult dispatch(Bytes& in, std::uint8_t entry, const AttackOptions& options) {
  switch (entry) {
    case 0:
    case 1:
    case 2:
    case 13:
      return attack_attention<T>(in, AttentionKind::softmax, options);
    case 3:
    case 4:
    case 14:
      return attack_attention<T>(in, AttentionKind::diff_head_lambda, options);
    case 5:
    case 6:
    case 15:
      return attack_attention<T>(in, AttentionKind::diff_token_lambda, options);
    case kKVCache:
      return attack_kv_cache<T>(in, options);
    case kRope:
      return attack_rope<T>(in, options);
    case kRmsNorm:
      return attack_rms_norm<T>(in, options);
    case kLambda:
      return attack_lambda<T>(in, options);
    case kLayouts:
      return attack_layouts<T>(in, options);
    default:
      return attack_block<T>(in, options);
  }
}

/// Runs one fuzz input. Throws Finding on a failed check; returns what it did otherwise.
inline AttackResult run_shape_attack(const std::uint8_t* data, std::size_t size,
                                     const AttackOptions& options = {}) {
  Bytes in(data, size);
  const bool use_double = in.u8() & 1;
  const std::uint8_t entry = in.u8() % 16;
  try {
    return use_double ? dispatch<double>(in, entry, options) : dispatch<float>(in, entry, options);
  } catch (const Skip&) {
    return AttackResult::skipped;
  }
}

}  // namespace diffattn_fuzz
