#pragma once
/// \file
/// SafeTensors: reads a .safetensors checkpoint (format in safetensors_format.hpp) and
/// converts its tensors to diffattn::Tensor. Parses the JSON header with nlohmann-json.
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
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffattn/detail/safetensors/elements.hpp"
#include "diffattn/detail/safetensors/header.hpp"
#include "diffattn/detail/safetensors/messages.hpp"
#include "diffattn/errors.hpp"
#include "diffattn/half.hpp"
#include "diffattn/safetensors_format.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

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

  /// Converts F32/F16/BF16 (and F64) to T (float, double, bf16 or f16); throws if rank
  /// differs. To float and double, F16, BF16 and F32 convert exactly, F64 to float rounds
  /// to nearest. F16 to f16 and BF16 to bf16 copy the bits; other types to bf16 or f16
  /// round to nearest, ties to even, as diffattn::convert (F64 through float).
  template <class T, std::size_t Rank>
  Tensor<T, Rank> tensor(const std::string& name) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || is_half_v<T>,
                  "SafeTensors::tensor converts to float, double, bf16 or f16");
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
    detail::ReaderErrors(source_).fail_file(parts...);
  }

  template <class... Parts>
  [[noreturn]] void fail(const std::string& name, const Parts&... parts) const {
    detail::ReaderErrors(source_).fail(name, parts...);
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
    if constexpr (is_half_v<T>) {
      const DType same = std::is_same_v<T, bf16> ? DType::bf16 : DType::f16;
      if (found.dtype == same) {  // stored as T: the bits as they are
        for (index_t i = 0; i < count; ++i) {
          out[i] = Eigen::numext::bit_cast<T>(detail::load_le<std::uint16_t>(in + 2 * i));
        }
        return;
      }
      // Otherwise each element goes through float (exact for F16, BF16 and F32).
      constexpr index_t block = 256;
      const index_t element_bytes = static_cast<index_t>(dtype_size(found.dtype));
      float widened[block];
      for (index_t first = 0; first < count; first += block) {
        const index_t n = std::min(block, count - first);
        convert_elements(found.dtype, in + first * element_bytes, n, widened);
        for (index_t i = 0; i < n; ++i) out[first + i] = detail::convert_element<T>(widened[i]);
      }
    } else {
      convert_elements(found.dtype, in, count, out);
    }
  }

  /// `count` stored elements of type `dtype` at `in`, as float or double.
  template <class T>
  static void convert_elements(DType dtype, const std::uint8_t* in, index_t count, T* out) noexcept {
    switch (dtype) {
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

    const detail::ReaderErrors errors(source_);
    const nlohmann::json header =
        detail::parse_header_json(errors, bytes_.data() + length_size, bytes_.data() + data_start_,
                                  max_rank, max_header_depth);
    std::vector<std::pair<const std::string*, const detail::SafeTensorEntry*>> by_offset;
    for (const auto& item : header.items()) {
      const std::string& name = item.key();
      if (name == "__metadata__") {
        detail::read_metadata(errors, item.value(), metadata_);
        continue;
      }
      auto inserted =
          entries_.emplace(name, detail::read_entry(errors, name, item.value(), data_size));
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

  std::string source_;
  std::vector<std::uint8_t> bytes_;
  std::size_t data_start_ = 0;
  std::map<std::string, detail::SafeTensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace diffattn
