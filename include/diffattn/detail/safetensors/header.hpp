#pragma once
/// The reader's JSON header: parsed with nlohmann under the size limits SafeTensors
/// states, then each tensor's entry checked against the data buffer.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffattn/detail/safetensors/json_text.hpp"
#include "diffattn/detail/safetensors/messages.hpp"
#include "diffattn/safetensors_format.hpp"
#include "diffattn/tensor.hpp"

namespace diffattn::detail {

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

struct SafeTensorEntry {
  DType dtype = DType::f32;
  std::vector<index_t> shape;
  index_t element_count = 0;
  std::uint64_t begin = 0;  // offsets into the data buffer
  std::uint64_t end = 0;
};

// nlohmann keeps one value of a duplicated key without a word, so a parser callback
// watches every object's keys as they are read. The same callback enforces the JSON
// limits (max_header_depth, arrays of at most max_rank elements) and rejects an array
// header at its "[": nlohmann's parser is iterative and calls it at every array or
// object start and every scalar, so nothing deep or long is built before it throws.
inline nlohmann::json parse_header_json(const ReaderErrors& errors, const std::uint8_t* first,
                                        const std::uint8_t* last, std::size_t max_rank,
                                        std::size_t max_header_depth) {
  // nlohmann stops at a NUL byte as if the input ended there, which would let
  // anything hide after one. Valid JSON never contains a raw NUL.
  if (const auto* nul = std::find(first, last, std::uint8_t{0}); nul != last) {
    errors.fail_file("header has a NUL byte at offset ", nul - first + 8,
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
      errors.fail_file("\"__metadata__\" has ", problem, ", expected an object of strings");
    }
    if (open.size() >= 3 && open[1].is_object) {
      errors.fail(name, "has ", problem, " in its ", quote_for_message(open[1].last_key, '"'));
    }
    errors.fail(name, "has ", problem, " in its header entry");
  };
  auto count_element = [&] {
    if (open.empty() || open.back().is_object || ++open.back().elements <= max_rank) return;
    if (open.size() == 3 && open[1].is_object && open[1].last_key == "shape" &&
        open[0].last_key != "__metadata__") {
      errors.fail(open[0].last_key, "has a \"shape\" of more than ", max_rank,
                  " entries; ranks above ", max_rank, " are not supported");
    }
    fail_limit(concat("a JSON array of more than ", max_rank, " elements"));
  };
  auto watch = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using event_t = nlohmann::json::parse_event_t;
    switch (event) {
      case event_t::object_start:
      case event_t::array_start: {
        const bool is_object = event == event_t::object_start;
        if (open.empty() && !is_object)
          errors.fail_file("header is a JSON array, expected an object");
        if (open.size() >= max_header_depth) {
          fail_limit(
              concat("JSON arrays and objects nested more than ", max_header_depth, " deep"));
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
    errors.fail_file("header is not valid JSON: ", error.what());
  }
  if (!header.is_object()) {
    errors.fail_file("header is a JSON ", header.type_name(), ", expected an object");
  }
  if (!duplicate.empty()) {
    if (duplicate_parent.empty()) {
      errors.fail_file("the header lists tensor ", quote_for_message(duplicate), " more than once");
    }
    errors.fail_file("the header entry of ", quote_for_message(duplicate_parent), " has the key ",
                     quote_for_message(duplicate), " more than once");
  }
  return header;
}

inline void read_metadata(const ReaderErrors& errors, const nlohmann::json& value,
                          std::map<std::string, std::string>& metadata) {
  if (!value.is_object()) {
    errors.fail_file("\"__metadata__\" is a JSON ", value.type_name(),
                     ", expected an object of strings");
  }
  for (const auto& item : value.items()) {
    if (!item.value().is_string()) {
      errors.fail_file("\"__metadata__\" key ", quote_for_message(item.key()), " is a JSON ",
                       item.value().type_name(), ", expected a string");
    }
    metadata.emplace(item.key(), item.value().get<std::string>());
  }
}

inline SafeTensorEntry read_entry(const ReaderErrors& errors, const std::string& name,
                                  const nlohmann::json& value, std::uint64_t data_size) {
  if (!value.is_object()) {
    errors.fail(name, "has a header entry of JSON type ", value.type_name(),
                ", expected an object with dtype, shape and data_offsets");
  }
  SafeTensorEntry result;

  const auto dtype = value.find("dtype");
  if (dtype == value.end()) errors.fail(name, "has no \"dtype\"");
  if (!dtype->is_string())
    errors.fail(name, "has a \"dtype\" of JSON type ", dtype->type_name(), ", expected a string");
  if (!parse_dtype(dtype->get_ref<const std::string&>(), result.dtype)) {
    errors.fail(name, "has unknown dtype ", quote_for_message(dtype->get<std::string>()),
                " (known: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
  }

  const auto shape = value.find("shape");
  if (shape == value.end()) errors.fail(name, "has no \"shape\"");
  if (!shape->is_array())
    errors.fail(name, "has a \"shape\" of JSON type ", shape->type_name(), ", expected an array");
  // The count is a product of extents that each fit index_t; any zero extent makes it
  // zero, otherwise it must not overflow. It is bounded by the buffer size below.
  bool any_zero = false;
  std::uint64_t count = 1;
  bool overflow = false;
  for (std::size_t d = 0; d < shape->size(); ++d) {
    const nlohmann::json& extent = (*shape)[d];
    if (!extent.is_number_unsigned()) {
      errors.fail(name, "has \"shape\" entry ", d, " that is ", describe_json(extent),
                  ", expected a non-negative integer");
    }
    const std::uint64_t e = extent.get<std::uint64_t>();
    if (e > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max())) {
      errors.fail(name, "has \"shape\" entry ", d, " = ", e, ", too large for an index");
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
    errors.fail(name, "shape ", format_shape(result.shape),
                " has more elements than fit in memory");
  }
  const std::uint64_t byte_count = count * element_size;

  const auto offsets = value.find("data_offsets");
  if (offsets == value.end()) errors.fail(name, "has no \"data_offsets\"");
  constexpr const char* offsets_wanted = ", expected [begin, end] with non-negative integers";
  if (!offsets->is_array()) {
    errors.fail(name, "has \"data_offsets\" that is ", describe_json(*offsets), offsets_wanted);
  }
  if (offsets->size() != 2) {
    errors.fail(name, "has \"data_offsets\" of length ", offsets->size(), offsets_wanted);
  }
  for (std::size_t i = 0; i < 2; ++i) {
    if (!(*offsets)[i].is_number_unsigned()) {
      errors.fail(name, "has \"data_offsets\" entry ", i, " that is ", describe_json((*offsets)[i]),
                  offsets_wanted);
    }
  }
  result.begin = (*offsets)[0].get<std::uint64_t>();
  result.end = (*offsets)[1].get<std::uint64_t>();
  if (result.begin > result.end) {
    errors.fail(name, "has \"data_offsets\" [", result.begin, ", ", result.end,
                "] with begin > end");
  }
  if (result.end > data_size) {
    errors.fail(name, "has \"data_offsets\" [", result.begin, ", ", result.end,
                "] past the end of the ", data_size, "-byte data buffer");
  }
  if (result.end - result.begin != byte_count) {
    errors.fail(name, "has \"data_offsets\" [", result.begin, ", ", result.end, "] spanning ",
                result.end - result.begin, " bytes, but shape ", format_shape(result.shape), " of ",
                dtype_name(result.dtype), " needs ", count, " x ", element_size, " = ", byte_count);
  }
  // count <= data_size, so it fits index_t.
  result.element_count = static_cast<index_t>(count);
  return result;
}

}  // namespace diffattn::detail
