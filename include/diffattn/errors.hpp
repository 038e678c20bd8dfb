#pragma once
/// \file
/// Exceptions thrown by diffattn and the helpers that word their messages.

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>

namespace diffattn {

/// Thrown when a tensor's rank, shape, strides or aliasing do not fit a call.
/// The message names the function, the argument, the dimension, expected and got.
class shape_error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <class... Parts>
[[noreturn]] void throw_shape_error(const Parts&... parts) {
  throw shape_error(concat("diffattn: ", parts...));
}

/// "softmax_attention: 'k' dimension 3 (D): expected 64, got 32".
[[noreturn]] inline void throw_extent_mismatch(const char* function, const char* argument,
                                               std::size_t dim, const char* dim_name,
                                               std::ptrdiff_t expected, std::ptrdiff_t got) {
  throw_shape_error(function, ": '", argument, "' dimension ", dim, " (", dim_name,
                    "): expected ", expected, ", got ", got);
}

inline void check_extent(const char* function, const char* argument, std::size_t dim,
                         const char* dim_name, std::ptrdiff_t expected, std::ptrdiff_t got) {
  if (expected != got) throw_extent_mismatch(function, argument, dim, dim_name, expected, got);
}

}  // namespace detail
}  // namespace diffattn
