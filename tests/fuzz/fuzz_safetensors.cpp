// libFuzzer target for the safetensors reader: parse arbitrary bytes and, when they
// parse, convert every tensor. A malformed file must end in diffattn::safetensors_error;
// any other exception escapes and libFuzzer reports it, and AddressSanitizer and
// UndefinedBehaviorSanitizer report any out-of-bounds read or undefined operation.
// Beyond "no crash", two oracles check the values: float and double conversions of
// the same tensor agree bit for bit (both are exact for F32/F16/BF16), and a converted
// F32/F64 tensor survives SafeTensorsWriter -> parse unchanged.
//
// Built by scripts/fuzz.sh (clang, -DDIFFATTN_BUILD_FUZZ=ON).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "diffattn/safetensors_reader.hpp"
#include "diffattn/safetensors_writer.hpp"

namespace {

using diffattn::DType;
using diffattn::SafeTensors;
using diffattn::safetensors_error;

// An oracle failure is a crash, so that libFuzzer saves the input.
void check(bool condition) {
  if (!condition) __builtin_trap();
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

template <std::size_t Rank>
void convert_at_rank(const SafeTensors& st, const std::string& name) {
  const DType dtype = st.dtype(name);
  const bool floating =
      dtype == DType::f64 || dtype == DType::f32 || dtype == DType::f16 || dtype == DType::bf16;
  if (!floating) {
    try {
      (void)st.tensor<float, Rank>(name);
      check(false);  // integer tensors must not convert
    } catch (const safetensors_error&) {
    }
    return;
  }
  const auto as_double = st.tensor<double, Rank>(name);
  const auto as_float = st.tensor<float, Rank>(name);
  check(as_double.size() == as_float.size());
  if (dtype != DType::f64) {
    for (diffattn::index_t i = 0; i < as_double.size(); ++i) {
      check(same_bits(static_cast<double>(as_float.data()[i]), as_double.data()[i]) ||
            as_float.data()[i] != as_float.data()[i]);  // NaN: widening may quiet it
    }
  }
  // Write what was read and read it again: the writer's output must parse to the same.
  diffattn::SafeTensorsWriter writer;
  writer.add(name, as_double);
  writer.set_metadata("fuzz", "1");
  const SafeTensors again = SafeTensors::parse(writer.bytes(), "rewritten");
  const auto reread = again.tensor<double, Rank>(name, as_double.shape());
  // An empty tensor has no storage (a null pointer, which memcmp must not see).
  check(as_double.empty() ||
        std::memcmp(reread.data(), as_double.data(),
                    static_cast<std::size_t>(as_double.size()) * sizeof(double)) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const SafeTensors st = SafeTensors::parse(std::vector<std::uint8_t>(data, data + size), "fuzz");
    // Metadata strings are decoded from the header, so they cannot outgrow it.
    for (const auto& entry : st.metadata()) check(entry.first.size() + entry.second.size() < size);
    for (const std::string& name : st.names()) {
      check(st.contains(name));
      switch (st.shape(name).size()) {
        case 1:
          convert_at_rank<1>(st, name);
          break;
        case 2:
          convert_at_rank<2>(st, name);
          break;
        case 3:
          convert_at_rank<3>(st, name);
          break;
        case 4:
          convert_at_rank<4>(st, name);
          break;
        default:
          try {
            (void)st.tensor<float, 1>(name);  // rank 0 or > 4: a rank error
            check(false);
          } catch (const safetensors_error&) {
          }
      }
    }
    try {
      (void)st.tensor<float, 1>(std::string("\x01 not a tensor", 14));
      check(st.contains(std::string("\x01 not a tensor", 14)));
    } catch (const safetensors_error&) {
    }
  } catch (const safetensors_error&) {
    // A clean rejection of a malformed file.
  }
  return 0;
}
