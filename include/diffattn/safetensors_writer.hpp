#pragma once
/// \file
/// SafeTensorsWriter: builds a .safetensors checkpoint (format in
/// safetensors_format.hpp) from float and double tensors. Writes the JSON header with
/// nlohmann-json.

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffattn/detail/safetensors/elements.hpp"
#include "diffattn/detail/safetensors/json_text.hpp"
#include "diffattn/detail/safetensors/messages.hpp"
#include "diffattn/errors.hpp"
#include "diffattn/safetensors_format.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn {

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
