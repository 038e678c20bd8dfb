#pragma once
/// JSON values in error messages, and the UTF-8 check the writer makes before nlohmann
/// would refuse to dump a name.

#include <string>

#include <nlohmann/json.hpp>

#include "diffattn/detail/safetensors/messages.hpp"

namespace diffattn::detail {

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

}  // namespace diffattn::detail
