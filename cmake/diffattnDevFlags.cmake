# Compiler flags for diffattn's own tests, benchmarks and examples. Never linked into
# the `diffattn` target itself, so downstream users do not inherit them.
#
#   diffattn_dev_flags       warnings (+ -Werror), -march=native with DIFFATTN_NATIVE,
#                            and OpenMP with DIFFATTN_OPENMP (when the compiler has it)
#   diffattn_sanitize_flags  ASan + UBSan with DIFFATTN_SANITIZE, otherwise nothing
#
# diffattn_add_dev_target(<target> [SANITIZE]) links the right ones.

add_library(diffattn_dev_flags INTERFACE)
target_compile_options(diffattn_dev_flags INTERFACE
  $<$<CXX_COMPILER_ID:GNU,Clang,AppleClang>:-Wall -Wextra -Wpedantic>
  $<$<AND:$<BOOL:${DIFFATTN_WERROR}>,$<CXX_COMPILER_ID:GNU,Clang,AppleClang>>:-Werror>
  $<$<BOOL:${DIFFATTN_NATIVE}>:-march=native>)

# The kernels run options.threads workers only when the program that includes them is
# compiled with OpenMP; the library target leaves that choice to its users. Our tests and
# benchmarks must exercise the threaded paths, so they use it whenever it is available.
if(DIFFATTN_OPENMP)
  find_package(OpenMP COMPONENTS CXX)
  if(OpenMP_CXX_FOUND)
    target_link_libraries(diffattn_dev_flags INTERFACE OpenMP::OpenMP_CXX)
  else()
    message(WARNING "diffattn: no OpenMP for ${CMAKE_CXX_COMPILER_ID}; tests, benchmarks "
                    "and examples run the kernels on one thread")
  endif()
endif()

# GCC 12.0-12.2 report their own AVX-512 intrinsics (the `__Y = __Y` in
# _mm512_undefined_*) as used uninitialized once inlined, e.g. into Eigen's AVX-512
# ptranspose; with -Werror that fails any -march=native build on an AVX-512 machine.
# Only the native build can reach AVX-512 code, so only it loses these two warnings;
# the baseline and sanitizer builds keep checking our code with them.
if(DIFFATTN_NATIVE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU"
   AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12
   AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 12.3)
  target_compile_options(diffattn_dev_flags INTERFACE
    -Wno-uninitialized -Wno-maybe-uninitialized)
endif()

add_library(diffattn_sanitize_flags INTERFACE)
if(DIFFATTN_SANITIZE)
  set(_diffattn_sanitize
      -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_compile_options(diffattn_sanitize_flags INTERFACE ${_diffattn_sanitize})
  target_link_options(diffattn_sanitize_flags INTERFACE ${_diffattn_sanitize})
endif()

function(diffattn_add_dev_target target)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "SANITIZE" "" "")
  target_link_libraries(${target} PRIVATE diffattn::diffattn diffattn_dev_flags)
  if(ARG_SANITIZE)
    target_link_libraries(${target} PRIVATE diffattn_sanitize_flags)
  endif()
endfunction()
