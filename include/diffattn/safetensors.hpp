#pragma once
/// Reading and writing .safetensors checkpoints (the format of Hugging Face's
/// `safetensors` library, which PyTorch and JAX checkpoints are published in).
///
/// Layout of a file: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON
///   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
///    "__metadata__": {"<key>": "<value>", ...}}
/// then the data buffer. Offsets are relative to the start of the data buffer, tensors
/// are row-major and little-endian, and together they cover the buffer exactly (no
/// overlaps, no holes), as the format's reference implementation requires.
///
/// Errors: every malformed input throws diffattn::safetensors_error naming the source
/// (file path or the name given to parse()), the tensor and what is wrong. Parsing
/// validates the whole header up front, so tensor() never reads outside the buffer.
///
/// Limits beyond the format's own, so that a crafted header costs neither the stack nor
/// memory out of proportion: a tensor's rank is at most SafeTensors::max_rank (16), no
/// JSON array anywhere in the header is longer than that (the format has no longer ones),
/// and arrays and objects nest at most SafeTensors::max_header_depth (8) deep (a valid
/// header needs 3). All three are checked while the JSON is parsed, so an oversized
/// array stops at its 17th element instead of being built. The reference implementation
/// ignores unknown fields in a tensor's entry; here they are ignored too, but held to
/// the same two JSON limits.

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffattn/errors.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

/// Thrown for a malformed or unreadable .safetensors file, or a request (name, rank,
/// shape, dtype) the file cannot satisfy. The message names the source and the tensor.
class safetensors_error : public std::runtime_error {
 public:
  using runtime_error::runtime_error;
};

/// Element types of the safetensors format that diffattn knows. Only the floating
/// types convert to float/double tensors; the others can be listed and inspected.
enum class DType { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean };

/// The format's spelling of a dtype: "F64", "F32", "F16", "BF16", "I64", ..., "BOOL".
constexpr std::string_view dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::f64:
      return "F64";
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::i64:
      return "I64";
    case DType::i32:
      return "I32";
    case DType::i16:
      return "I16";
    case DType::i8:
      return "I8";
    case DType::u8:
      return "U8";
    case DType::boolean:
      return "BOOL";
  }
  return "?";
}

/// Bytes per element of a dtype.
constexpr std::size_t dtype_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::f16:
    case DType::bf16:
    case DType::i16:
      return 2;
    case DType::i8:
    case DType::u8:
    case DType::boolean:
      return 1;
  }
  return 0;
}

namespace detail {

// Numbers are assembled from bytes with shifts rather than memcpy'd, so the file's
// little-endian layout is read and written correctly on a big-endian host too. The
// float <-> integer bit copies assume floats share the integers' byte order, which holds
// on every platform with IEEE-754 floats that C++ compilers target.
static_assert(std::numeric_limits<float>::is_iec559 && std::numeric_limits<double>::is_iec559,
              "safetensors conversion assumes IEEE-754 float and double");

template <class U>
U load_le(const std::uint8_t* bytes) noexcept {
  U value = 0;
  for (std::size_t i = sizeof(U); i-- > 0;) value = static_cast<U>((value << 8) | bytes[i]);
  return value;
}

template <class U>
void store_le(U value, std::uint8_t* bytes) noexcept {
  for (std::size_t i = 0; i < sizeof(U); ++i) {
    bytes[i] = static_cast<std::uint8_t>(value & 0xFFu);
    value = static_cast<U>(value >> 8);
  }
}

inline float float_from_bits(std::uint32_t bits) noexcept {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline double double_from_bits(std::uint64_t bits) noexcept {
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

/// float to double keeping a signaling NaN signaling and its payload (a conversion
/// instruction would quiet it), so that F16/BF16/F32 -> double is exact bit for bit.
inline double float_to_double(float value) noexcept {
  if (!std::isnan(value)) return static_cast<double>(value);
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const std::uint64_t sign = static_cast<std::uint64_t>(bits >> 31) << 63;
  const std::uint64_t payload = static_cast<std::uint64_t>(bits & 0x7FFFFFu) << (52 - 23);
  return double_from_bits(sign | (std::uint64_t{0x7FF} << 52) | payload);
}

/// float to T (float or double), exactly.
template <class T>
T widen_float(float value) noexcept {
  if constexpr (std::is_same_v<T, double>) {
    return float_to_double(value);
  } else {
    return value;
  }
}

/// IEEE binary16 to float, exactly: every half (subnormals, ±0, ±inf, NaN payloads) is
/// representable in float.
inline float half_to_float(std::uint16_t half) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1Fu;
  const std::uint32_t mantissa = half & 0x3FFu;
  if (exponent == 0x1F) {  // inf (mantissa 0) or NaN, payload kept in the top bits
    return float_from_bits(sign | 0x7F800000u | (mantissa << 13));
  }
  if (exponent == 0) {
    // ±0 and subnormals: mantissa · 2^-24, exact since mantissa < 2^10.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  return float_from_bits(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

/// bfloat16 is the top half of a float, so widening is a shift (NaNs stay NaN).
inline float bfloat16_to_float(std::uint16_t bits) noexcept {
  return float_from_bits(static_cast<std::uint32_t>(bits) << 16);
}

inline bool parse_dtype(std::string_view name, DType& dtype) noexcept {
  for (DType candidate : {DType::f64, DType::f32, DType::f16, DType::bf16, DType::i64, DType::i32,
                          DType::i16, DType::i8, DType::u8, DType::boolean}) {
    if (dtype_name(candidate) == name) {
      dtype = candidate;
      return true;
    }
  }
  return false;
}

inline std::string format_shape(const std::vector<index_t>& shape) {
  std::string text = "[";
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (d > 0) text += ", ";
    text += std::to_string(shape[d]);
  }
  return text + "]";
}

/// The header's JSON text for an error message: short, and valid UTF-8 even if cut.
inline std::string quote_for_message(const std::string& text, char quote = '\'') {
  constexpr std::size_t max_length = 80;
  std::string shown = text.substr(0, max_length);
  // Never end inside a multi-byte UTF-8 sequence.
  if (shown.size() < text.size()) {
    while (!shown.empty() && (static_cast<unsigned char>(shown.back()) & 0xC0u) == 0x80u) {
      shown.pop_back();
    }
    if (!shown.empty() && (static_cast<unsigned char>(shown.back()) & 0x80u) != 0) shown.pop_back();
    shown += "...";
  }
  return quote + shown + quote;
}

/// A header value for an error message, without dumping it: nlohmann's dump() recurses
/// into arrays and objects, and the value is untrusted, so containers are named by type
/// and strings cut short.
inline std::string describe_json(const nlohmann::json& value) {
  if (value.is_array()) return "a JSON array";
  if (value.is_object()) return "a JSON object";
  if (value.is_string()) {
    return "the string " + quote_for_message(value.get_ref<const std::string&>());
  }
  return value.dump();  // a number, boolean or null: a few characters
}

/// True if `text` survives nlohmann's dump(), i.e. is valid UTF-8.
inline bool is_valid_utf8(const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

struct SafeTensorEntry {
  DType dtype = DType::f32;
  std::vector<index_t> shape;
  index_t element_count = 0;
  std::uint64_t begin = 0;  // offsets into the data buffer
  std::uint64_t end = 0;
};

}  // namespace detail

/// A parsed .safetensors file held in memory. Tensors are converted on request.
class SafeTensors {
 public:
  /// The largest header accepted, as in the format's reference implementation: a JSON
  /// header this big already describes millions of tensors.
  static constexpr std::uint64_t max_header_size = 100'000'000;

  /// The largest tensor rank accepted: far above any real checkpoint's, and small enough
  /// that the parser can stop an absurd "shape" array at once instead of building it.
  static constexpr std::size_t max_rank = 16;

  /// How deep JSON arrays and objects may nest in the header; a valid one needs 3. Keeps
  /// any recursive walk of the parsed header (copy, comparison, dump) far from the stack's
  /// end, whatever the file holds.
  static constexpr std::size_t max_header_depth = 8;

  /// Reads and parses the whole file at `path`.
  static SafeTensors load(const std::string& path) {
    // A directory opens as a stream on Linux and seeks to a "size" of 2^63 - 1, and
    // opening a FIFO blocks; only a regular file's size is the number of bytes to read.
    // A path that cannot be examined is left to the open below, which names the errno.
    std::error_code status_error;
    const std::filesystem::file_status status = std::filesystem::status(path, status_error);
    if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
      throw safetensors_error(detail::concat("safetensors: ", path, ": not a regular file (",
                                             describe_file_type(status.type()), ")"));
    }
    std::ifstream file(path, std::ios::binary);
    if (!file) {
      const int error = errno;
      throw safetensors_error(detail::concat("safetensors: ", path, ": cannot open file",
                                             error != 0 ? ": " : "",
                                             error != 0 ? std::strerror(error) : ""));
    }
    file.seekg(0, std::ios::end);
    const std::streamoff size = file.tellg();
    file.seekg(0, std::ios::beg);
    if (size < 0 || !file) {
      throw safetensors_error(
          detail::concat("safetensors: ", path, ": cannot determine the file size"));
    }
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
    if (size > 0 && !file.read(reinterpret_cast<char*>(bytes.data()), size)) {
      throw safetensors_error(detail::concat("safetensors: ", path, ": read error after ",
                                             file.gcount(), " of ", size, " bytes"));
    }
    return parse(std::move(bytes), path);
  }

  /// Parses a whole file held in `bytes`; `source_name` stands for it in error messages.
  static SafeTensors parse(std::vector<std::uint8_t> bytes, std::string source_name = "<memory>") {
    SafeTensors result;
    result.source_ = std::move(source_name);
    result.bytes_ = std::move(bytes);
    result.parse_header();
    return result;
  }

  /// True if the file has a tensor called `name`.
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }

  /// Every tensor name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> result;
    result.reserve(entries_.size());
    for (const auto& entry : entries_) result.push_back(entry.first);
    return result;
  }

  /// The shape of tensor `name` (empty for a scalar).
  std::vector<index_t> shape(const std::string& name) const { return entry(name).shape; }

  /// The stored element type of tensor `name`.
  DType dtype(const std::string& name) const { return entry(name).dtype; }

  /// The file's "__metadata__" string map (empty if it has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// Converts F32/F16/BF16 (and F64) to T; throws if rank differs.
  /// F16, BF16 and F32 convert exactly; F64 to float rounds to nearest.
  template <class T, std::size_t Rank>
  Tensor<T, Rank> tensor(const std::string& name) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "SafeTensors::tensor converts to float or double");
    const detail::SafeTensorEntry& found = entry(name);
    if (found.shape.size() != Rank) {
      fail(name, "has rank ", found.shape.size(), " (shape ", detail::format_shape(found.shape),
           "), requested rank ", Rank);
    }
    check_float_dtype(name, found);
    std::array<index_t, Rank> shape{};
    std::copy(found.shape.begin(), found.shape.end(), shape.begin());
    Tensor<T, Rank> result(shape);
    convert(found, result.data());
    return result;
  }

  /// Same, and throws unless the shape is exactly `expected`.
  template <class T, std::size_t Rank>
  Tensor<T, Rank> tensor(const std::string& name, const std::array<index_t, Rank>& expected) const {
    const detail::SafeTensorEntry& found = entry(name);
    const std::vector<index_t> wanted(expected.begin(), expected.end());
    if (found.shape != wanted) {
      fail(name, "has shape ", detail::format_shape(found.shape), ", expected ",
           detail::format_shape(wanted));
    }
    return tensor<T, Rank>(name);
  }

 private:
  SafeTensors() = default;

  static const char* describe_file_type(std::filesystem::file_type type) noexcept {
    switch (type) {
      case std::filesystem::file_type::directory:
        return "a directory";
      case std::filesystem::file_type::fifo:
        return "a FIFO";
      case std::filesystem::file_type::socket:
        return "a socket";
      case std::filesystem::file_type::block:
        return "a block device";
      case std::filesystem::file_type::character:
        return "a character device";
      default:
        return "of an unknown kind";
    }
  }

  template <class... Parts>
  [[noreturn]] void fail_file(const Parts&... parts) const {
    throw safetensors_error(detail::concat("safetensors: ", source_, ": ", parts...));
  }

  template <class... Parts>
  [[noreturn]] void fail(const std::string& name, const Parts&... parts) const {
    fail_file("tensor ", detail::quote_for_message(name), " ", parts...);
  }

  const detail::SafeTensorEntry& entry(const std::string& name) const {
    const auto found = entries_.find(name);
    if (found == entries_.end()) fail_missing(name);
    return found->second;
  }

  // Lists the names closest to the one asked for (longest common prefix first), which
  // is usually a typo in a layer index or a missing "model." prefix.
  [[noreturn]] void fail_missing(const std::string& name) const {
    if (entries_.empty()) fail(name, "not found: the file has no tensors");
    std::vector<std::pair<std::size_t, const std::string*>> ranked;
    for (const auto& candidate : entries_) {
      const std::string& other = candidate.first;
      const auto limit = std::min(other.size(), name.size());
      std::size_t common = 0;
      while (common < limit && other[common] == name[common]) ++common;
      ranked.emplace_back(common, &other);
    }
    std::stable_sort(ranked.begin(), ranked.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    constexpr std::size_t shown = 5;
    std::string list;
    for (std::size_t i = 0; i < std::min(shown, ranked.size()); ++i) {
      if (i > 0) list += ", ";
      list += detail::quote_for_message(*ranked[i].second);
    }
    if (ranked.size() > shown) list += detail::concat(", ... (", ranked.size(), " in all)");
    fail(name, "not found; the file has ", list);
  }

  void check_float_dtype(const std::string& name, const detail::SafeTensorEntry& found) const {
    switch (found.dtype) {
      case DType::f64:
      case DType::f32:
      case DType::f16:
      case DType::bf16:
        return;
      default:
        fail(name, "has dtype ", dtype_name(found.dtype),
             ", which does not convert to a floating-point tensor (F64, F32, F16 or BF16 do)");
    }
  }

  const std::uint8_t* tensor_bytes(const detail::SafeTensorEntry& found) const noexcept {
    return bytes_.data() + data_start_ + found.begin;
  }

  template <class T>
  void convert(const detail::SafeTensorEntry& found, T* out) const noexcept {
    const std::uint8_t* in = tensor_bytes(found);
    const index_t count = found.element_count;
    switch (found.dtype) {
      case DType::f64:
        for (index_t i = 0; i < count; ++i) {
          out[i] =
              static_cast<T>(detail::double_from_bits(detail::load_le<std::uint64_t>(in + 8 * i)));
        }
        break;
      case DType::f32:
        for (index_t i = 0; i < count; ++i) {
          out[i] = detail::widen_float<T>(
              detail::float_from_bits(detail::load_le<std::uint32_t>(in + 4 * i)));
        }
        break;
      case DType::f16:
        for (index_t i = 0; i < count; ++i) {
          out[i] = detail::widen_float<T>(
              detail::half_to_float(detail::load_le<std::uint16_t>(in + 2 * i)));
        }
        break;
      case DType::bf16:
        for (index_t i = 0; i < count; ++i) {
          out[i] = detail::widen_float<T>(
              detail::bfloat16_to_float(detail::load_le<std::uint16_t>(in + 2 * i)));
        }
        break;
      default:
        break;  // rejected by check_float_dtype
    }
  }

  void parse_header() {
    constexpr std::size_t length_size = 8;
    if (bytes_.size() < length_size) {
      fail_file("file is ", bytes_.size(),
                " bytes, too short for the 8-byte header length that starts the format");
    }
    const std::uint64_t header_size = detail::load_le<std::uint64_t>(bytes_.data());
    const std::uint64_t available = bytes_.size() - length_size;
    if (header_size > max_header_size) {
      fail_file("header length ", header_size, " is larger than the ", max_header_size,
                "-byte limit (is this a .safetensors file?)");
    }
    if (header_size > available) {
      fail_file("header length ", header_size, " runs past the end of the file (", available,
                " bytes follow the length)");
    }
    data_start_ = length_size + static_cast<std::size_t>(header_size);
    const std::uint64_t data_size = bytes_.size() - data_start_;

    const nlohmann::json header =
        parse_json(bytes_.data() + length_size, bytes_.data() + data_start_);
    std::vector<std::pair<const std::string*, const detail::SafeTensorEntry*>> by_offset;
    for (const auto& item : header.items()) {
      const std::string& name = item.key();
      if (name == "__metadata__") {
        read_metadata(item.value());
        continue;
      }
      auto inserted = entries_.emplace(name, read_entry(name, item.value(), data_size));
      by_offset.emplace_back(&inserted.first->first, &inserted.first->second);
    }

    // The reference implementation requires the tensors to tile the buffer exactly, so
    // that no bytes hide between or after them; overlaps would alias two tensors.
    // Ties broken by name so that the message for two equal ranges is deterministic.
    std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
      return std::tie(a.second->begin, a.second->end, *a.first) <
             std::tie(b.second->begin, b.second->end, *b.first);
    });
    std::uint64_t covered = 0;
    const std::string* previous = nullptr;
    for (const auto& [name, found] : by_offset) {
      if (found->begin < covered) {
        fail(*name, "at bytes [", found->begin, ", ", found->end, ") overlap tensor ",
             detail::quote_for_message(*previous), " which ends at ", covered);
      }
      if (found->begin > covered) {
        fail(*name, "starts at byte ", found->begin, " of the data buffer, leaving bytes [",
             covered, ", ", found->begin, ") unused",
             previous != nullptr
                 ? detail::concat(" after tensor ", detail::quote_for_message(*previous))
                 : std::string(" at its start"),
             "; the format requires tensors to cover the buffer with no gaps");
      }
      covered = found->end;
      previous = name;
    }
    if (covered != data_size) {
      fail_file("data buffer is ", data_size, " bytes but its tensors cover only ", covered,
                previous != nullptr
                    ? detail::concat(" (the last, ", detail::quote_for_message(*previous),
                                     ", ends there)")
                    : std::string(" (the header lists no tensors)"),
                "; the format forbids trailing bytes");
    }
  }

  // nlohmann keeps one value of a duplicated key without a word, so a parser callback
  // watches every object's keys as they are read. The same callback enforces the JSON
  // limits (max_header_depth, arrays of at most max_rank elements) and rejects an array
  // header at its "[": nlohmann's parser is iterative and calls it at every array or
  // object start and every scalar, so nothing deep or long is built before it throws.
  nlohmann::json parse_json(const std::uint8_t* first, const std::uint8_t* last) const {
    // nlohmann stops at a NUL byte as if the input ended there, which would let
    // anything hide after one. Valid JSON never contains a raw NUL.
    if (const auto* nul = std::find(first, last, std::uint8_t{0}); nul != last) {
      fail_file("header has a NUL byte at offset ", nul - first + 8,
                " of the file; JSON text cannot contain one");
    }
    struct Container {
      bool is_object;
      std::set<std::string> keys;
      std::string last_key;      // objects: the key whose value is being read
      std::size_t elements = 0;  // arrays: elements so far
    };
    // open[0] is the header object: an array header is rejected at its start.
    std::vector<Container> open;
    std::string duplicate;
    std::string duplicate_parent;
    // `problem` reads after "has": where in the header it is comes from the open stack.
    auto fail_limit = [&](const std::string& problem) {
      const std::string& name = open.front().last_key;  // a tensor or "__metadata__"
      if (name == "__metadata__") {
        fail_file("\"__metadata__\" has ", problem, ", expected an object of strings");
      }
      if (open.size() >= 3 && open[1].is_object) {
        fail(name, "has ", problem, " in its ", detail::quote_for_message(open[1].last_key, '"'));
      }
      fail(name, "has ", problem, " in its header entry");
    };
    auto count_element = [&] {
      if (open.empty() || open.back().is_object || ++open.back().elements <= max_rank) return;
      if (open.size() == 3 && open[1].is_object && open[1].last_key == "shape" &&
          open[0].last_key != "__metadata__") {
        fail(open[0].last_key, "has a \"shape\" of more than ", max_rank, " entries; ranks above ",
             max_rank, " are not supported");
      }
      fail_limit(detail::concat("a JSON array of more than ", max_rank, " elements"));
    };
    auto watch = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      using event_t = nlohmann::json::parse_event_t;
      switch (event) {
        case event_t::object_start:
        case event_t::array_start: {
          const bool is_object = event == event_t::object_start;
          if (open.empty() && !is_object) fail_file("header is a JSON array, expected an object");
          if (open.size() >= max_header_depth) {
            fail_limit(detail::concat("JSON arrays and objects nested more than ", max_header_depth,
                                      " deep"));
          }
          count_element();
          open.push_back({is_object, {}, {}, 0});
          break;
        }
        case event_t::object_end:
        case event_t::array_end:
          if (!open.empty()) open.pop_back();
          break;
        case event_t::key: {
          if (open.empty() || !parsed.is_string()) break;
          const std::string& key = parsed.get_ref<const std::string&>();
          if (!open.back().keys.insert(key).second && duplicate.empty()) {
            duplicate = key;
            duplicate_parent = open.size() == 1 ? std::string() : open.front().last_key;
          }
          open.back().last_key = key;
          break;
        }
        case event_t::value:
          count_element();
          break;
      }
      return true;
    };
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(first, last, watch);
    } catch (const nlohmann::json::exception& error) {
      fail_file("header is not valid JSON: ", error.what());
    }
    if (!header.is_object()) {
      fail_file("header is a JSON ", header.type_name(), ", expected an object");
    }
    if (!duplicate.empty()) {
      if (duplicate_parent.empty()) {
        fail_file("the header lists tensor ", detail::quote_for_message(duplicate),
                  " more than once");
      }
      fail_file("the header entry of ", detail::quote_for_message(duplicate_parent),
                " has the key ", detail::quote_for_message(duplicate), " more than once");
    }
    return header;
  }

  void read_metadata(const nlohmann::json& value) {
    if (!value.is_object()) {
      fail_file("\"__metadata__\" is a JSON ", value.type_name(),
                ", expected an object of strings");
    }
    for (const auto& item : value.items()) {
      if (!item.value().is_string()) {
        fail_file("\"__metadata__\" key ", detail::quote_for_message(item.key()), " is a JSON ",
                  item.value().type_name(), ", expected a string");
      }
      metadata_.emplace(item.key(), item.value().get<std::string>());
    }
  }

  detail::SafeTensorEntry read_entry(const std::string& name, const nlohmann::json& value,
                                     std::uint64_t data_size) const {
    if (!value.is_object()) {
      fail(name, "has a header entry of JSON type ", value.type_name(),
           ", expected an object with dtype, shape and data_offsets");
    }
    detail::SafeTensorEntry result;

    const auto dtype = value.find("dtype");
    if (dtype == value.end()) fail(name, "has no \"dtype\"");
    if (!dtype->is_string())
      fail(name, "has a \"dtype\" of JSON type ", dtype->type_name(), ", expected a string");
    if (!detail::parse_dtype(dtype->get_ref<const std::string&>(), result.dtype)) {
      fail(name, "has unknown dtype ", detail::quote_for_message(dtype->get<std::string>()),
           " (known: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    }

    const auto shape = value.find("shape");
    if (shape == value.end()) fail(name, "has no \"shape\"");
    if (!shape->is_array())
      fail(name, "has a \"shape\" of JSON type ", shape->type_name(), ", expected an array");
    // The count is a product of extents that each fit index_t; any zero extent makes it
    // zero, otherwise it must not overflow. It is bounded by the buffer size below.
    bool any_zero = false;
    std::uint64_t count = 1;
    bool overflow = false;
    for (std::size_t d = 0; d < shape->size(); ++d) {
      const nlohmann::json& extent = (*shape)[d];
      if (!extent.is_number_unsigned()) {
        fail(name, "has \"shape\" entry ", d, " that is ", detail::describe_json(extent),
             ", expected a non-negative integer");
      }
      const std::uint64_t e = extent.get<std::uint64_t>();
      if (e > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max())) {
        fail(name, "has \"shape\" entry ", d, " = ", e, ", too large for an index");
      }
      result.shape.push_back(static_cast<index_t>(e));
      if (e == 0) any_zero = true;
      if (!overflow && e != 0 && count > std::numeric_limits<std::uint64_t>::max() / e)
        overflow = true;
      if (!overflow) count *= e;
    }
    if (any_zero) {
      count = 0;
      overflow = false;
    }
    const std::uint64_t element_size = dtype_size(result.dtype);
    if (overflow || count > std::numeric_limits<std::uint64_t>::max() / element_size) {
      fail(name, "shape ", detail::format_shape(result.shape),
           " has more elements than fit in memory");
    }
    const std::uint64_t byte_count = count * element_size;

    const auto offsets = value.find("data_offsets");
    if (offsets == value.end()) fail(name, "has no \"data_offsets\"");
    constexpr const char* offsets_wanted = ", expected [begin, end] with non-negative integers";
    if (!offsets->is_array()) {
      fail(name, "has \"data_offsets\" that is ", detail::describe_json(*offsets), offsets_wanted);
    }
    if (offsets->size() != 2) {
      fail(name, "has \"data_offsets\" of length ", offsets->size(), offsets_wanted);
    }
    for (std::size_t i = 0; i < 2; ++i) {
      if (!(*offsets)[i].is_number_unsigned()) {
        fail(name, "has \"data_offsets\" entry ", i, " that is ",
             detail::describe_json((*offsets)[i]), offsets_wanted);
      }
    }
    result.begin = (*offsets)[0].get<std::uint64_t>();
    result.end = (*offsets)[1].get<std::uint64_t>();
    if (result.begin > result.end) {
      fail(name, "has \"data_offsets\" [", result.begin, ", ", result.end, "] with begin > end");
    }
    if (result.end > data_size) {
      fail(name, "has \"data_offsets\" [", result.begin, ", ", result.end, "] past the end of the ",
           data_size, "-byte data buffer");
    }
    if (result.end - result.begin != byte_count) {
      fail(name, "has \"data_offsets\" [", result.begin, ", ", result.end, "] spanning ",
           result.end - result.begin, " bytes, but shape ", detail::format_shape(result.shape),
           " of ", dtype_name(result.dtype), " needs ", count, " x ", element_size, " = ",
           byte_count);
    }
    // count <= data_size, so it fits index_t.
    result.element_count = static_cast<index_t>(count);
    return result;
  }

  std::string source_;
  std::vector<std::uint8_t> bytes_;
  std::size_t data_start_ = 0;
  std::map<std::string, detail::SafeTensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// Builds a .safetensors file: add tensors (copied at once, so views may be released),
/// set metadata, then bytes() or save(). Tensors are written in name order.
class SafeTensorsWriter {
 public:
  /// Copies `tensor` as F32 (T = float) or F64 (T = double). Any strides; the file
  /// stores it row-major. Throws safetensors_error for a duplicate, reserved or
  /// non-UTF-8 name.
  template <class T, std::size_t Rank>
  void add(const std::string& name, TensorView<const T, Rank> tensor) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "SafeTensorsWriter::add writes float (F32) or double (F64) tensors");
    check_name(name);
    Stored stored;
    stored.dtype = std::is_same_v<T, float> ? DType::f32 : DType::f64;
    stored.shape.assign(tensor.shape().begin(), tensor.shape().end());
    stored.data.resize(static_cast<std::size_t>(tensor.size()) * sizeof(T));
    std::uint8_t* out = stored.data.data();
    std::array<index_t, Rank> index{};
    for (index_t i = 0; i < tensor.size(); ++i) {
      index_t offset = 0;
      for (std::size_t d = 0; d < Rank; ++d) offset += index[d] * tensor.stride(d);
      store_element(tensor.data()[offset], out + static_cast<std::size_t>(i) * sizeof(T));
      // Row-major odometer over the view's indices.
      for (std::size_t d = Rank; d-- > 0;) {
        if (++index[d] < tensor.extent(d)) break;
        index[d] = 0;
      }
    }
    tensors_.emplace(name, std::move(stored));
  }

  /// Same, for a mutable view.
  template <class T, std::size_t Rank, std::enable_if_t<!std::is_const_v<T>, int> = 0>
  void add(const std::string& name, TensorView<T, Rank> tensor) {
    add<T, Rank>(name, TensorView<const T, Rank>(tensor));
  }

  /// Same, for a whole tensor.
  template <class T, std::size_t Rank>
  void add(const std::string& name, const Tensor<T, Rank>& tensor) {
    add<T, Rank>(name, tensor.view());
  }

  /// Sets (or replaces) a "__metadata__" entry.
  void set_metadata(std::string key, std::string value) {
    if (!detail::is_valid_utf8(key) || !detail::is_valid_utf8(value)) {
      throw safetensors_error(detail::concat("safetensors: metadata key ",
                                             detail::quote_for_message(key),
                                             ": key or value is not valid UTF-8"));
    }
    metadata_[std::move(key)] = std::move(value);
  }

  /// The complete file. The header is padded with spaces to a multiple of 8 bytes, as
  /// the reference implementation does, so the data buffer stays 8-byte aligned.
  std::vector<std::uint8_t> bytes() const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (const auto& [name, stored] : tensors_) {
      const std::uint64_t end = offset + stored.data.size();
      header[name] = {{"dtype", std::string(dtype_name(stored.dtype))},
                      {"shape", stored.shape},
                      {"data_offsets", {offset, end}}};
      offset = end;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');

    std::vector<std::uint8_t> file(8 + text.size() + offset);
    detail::store_le<std::uint64_t>(text.size(), file.data());
    std::memcpy(file.data() + 8, text.data(), text.size());
    std::uint8_t* data = file.data() + 8 + text.size();
    for (const auto& entry : tensors_) {
      const std::vector<std::uint8_t>& stored = entry.second.data;
      if (!stored.empty()) std::memcpy(data, stored.data(), stored.size());
      data += stored.size();
    }
    return file;
  }

  /// Writes bytes() to `path`, replacing the file.
  void save(const std::string& path) const {
    const std::vector<std::uint8_t> file = bytes();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) {
      const int error = errno;
      throw safetensors_error(detail::concat("safetensors: ", path, ": cannot open for writing",
                                             error != 0 ? ": " : "",
                                             error != 0 ? std::strerror(error) : ""));
    }
    out.write(reinterpret_cast<const char*>(file.data()),
              static_cast<std::streamsize>(file.size()));
    out.close();
    if (!out) throw safetensors_error(detail::concat("safetensors: ", path, ": write failed"));
  }

 private:
  struct Stored {
    DType dtype = DType::f32;
    std::vector<index_t> shape;
    std::vector<std::uint8_t> data;  // little-endian elements, row-major
  };

  static void store_element(float value, std::uint8_t* out) noexcept {
    std::uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    detail::store_le(bits, out);
  }
  static void store_element(double value, std::uint8_t* out) noexcept {
    std::uint64_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    detail::store_le(bits, out);
  }

  void check_name(const std::string& name) const {
    if (name == "__metadata__") {
      throw safetensors_error("safetensors: '__metadata__' is reserved and cannot name a tensor");
    }
    if (!detail::is_valid_utf8(name)) {
      throw safetensors_error(detail::concat(
          "safetensors: tensor ", detail::quote_for_message(name), ": name is not valid UTF-8"));
    }
    if (tensors_.count(name) != 0) {
      throw safetensors_error(
          detail::concat("safetensors: tensor ", detail::quote_for_message(name), " added twice"));
    }
  }

  std::map<std::string, Stored> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace diffattn
