// libFuzzer target for the kernels' argument handling: tests/fuzz/shape_attack.hpp turns
// the bytes into views with adversarial extents, strides, options and λ shapes over small
// buffers and calls every public kernel. A call must throw a documented exception or run
// clean under AddressSanitizer and UndefinedBehaviorSanitizer; any other outcome (an
// undocumented exception, a write outside the output, a fused/reference disagreement,
// ...) is printed and ends in a trap, so libFuzzer keeps the input.
//
// DIFFATTN_SHAPE_FUZZ_KNOWN=tag,... steps around known defects (shape_attack.hpp lists
// the tags), so that a long run can look for new ones.
//
// Built by scripts/fuzz.sh (clang, -DDIFFATTN_BUILD_FUZZ=ON).

#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "shape_attack.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const diffattn_fuzz::AttackOptions options = diffattn_fuzz::options_from_environment();
  try {
    (void)diffattn_fuzz::run_shape_attack(data, size, options);
  } catch (const diffattn_fuzz::Finding& finding) {
    std::fprintf(stderr, "%s\n", finding.what());
    std::fflush(stderr);
    __builtin_trap();
  }
  return 0;
}
