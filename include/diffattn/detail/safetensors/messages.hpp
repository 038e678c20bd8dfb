#pragma once
/// The wording of safetensors errors: shapes, quoted names, and the "safetensors:
/// <source>: " prefix every reader message starts with.

#include <cstddef>
#include <string>
#include <vector>

#include "diffattn/errors.hpp"
#include "diffattn/safetensors_format.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn::detail {

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

/// Throws safetensors_error for the file or buffer called `source` (a path, or the name
/// given to SafeTensors::parse), so that every message names where it came from.
class ReaderErrors {
 public:
  explicit ReaderErrors(const std::string& source) noexcept : source_(source) {}

  /// "safetensors: <source>: <parts>".
  template <class... Parts>
  [[noreturn]] void fail_file(const Parts&... parts) const {
    throw safetensors_error(concat("safetensors: ", source_, ": ", parts...));
  }

  /// "safetensors: <source>: tensor '<name>' <parts>".
  template <class... Parts>
  [[noreturn]] void fail(const std::string& name, const Parts&... parts) const {
    fail_file("tensor ", quote_for_message(name), " ", parts...);
  }

 private:
  const std::string& source_;
};

}  // namespace diffattn::detail
