# pkg_config mode of run_consumer.cmake (which has installed diffattn to `prefix`): a
# Makefile user's build, the compiler and `pkg-config --cflags` alone.

if(NOT PKG_CONFIG)
  message(FATAL_ERROR "consumer (pkg_config): -DPKG_CONFIG=<pkg-config program> is required")
endif()
if(NOT CXX_COMPILER)
  set(CXX_COMPILER c++)
endif()

file(GLOB_RECURSE pc_files "${prefix}/*/diffattn.pc")
list(LENGTH pc_files pc_count)
if(NOT pc_count EQUAL 1)
  message(FATAL_ERROR "consumer (pkg_config): expected one diffattn.pc under ${prefix}, "
                      "found ${pc_count}: ${pc_files}")
endif()
get_filename_component(pc_dir "${pc_files}" DIRECTORY)
# Only the prefix's .pc files and the system's, never a diffattn installed elsewhere.
set(ENV{PKG_CONFIG_PATH} "${pc_dir}")

# Compiles main.cpp with `pkg-config --cflags <package>` and the extra arguments, runs it.
function(build_and_run package)
  execute_process(COMMAND "${PKG_CONFIG}" --cflags "${package}"
                  OUTPUT_VARIABLE cflags OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer (pkg_config): pkg-config --cflags ${package} failed (${result})")
  endif()
  message(STATUS "consumer (pkg_config): pkg-config --cflags ${package}: ${cflags}")
  # The headers must come from the prefix just installed to.
  cmake_path(NORMAL_PATH prefix OUTPUT_VARIABLE normal_prefix)
  string(REGEX REPLACE "/$" "" normal_prefix "${normal_prefix}")
  separate_arguments(cflags UNIX_COMMAND "${cflags}")
  set(from_prefix FALSE)
  foreach(flag IN LISTS cflags)
    if(flag MATCHES "^-I(.*)$")
      cmake_path(NORMAL_PATH CMAKE_MATCH_1 OUTPUT_VARIABLE dir)
      cmake_path(IS_PREFIX normal_prefix "${dir}" NORMALIZE inside)
      if(inside)
        set(from_prefix TRUE)
      endif()
    endif()
  endforeach()
  if(NOT from_prefix)
    message(FATAL_ERROR "consumer (pkg_config): no -I under ${prefix} in '${cflags}'")
  endif()
  set(program "${WORK_DIR}/consumer_${package}")
  run_step("compile against ${package}.pc"
           "${CXX_COMPILER}" ${ARGN} ${cflags} -O2 -Wall -Wextra -Wpedantic -Werror
           "${CONSUMER_SOURCE_DIR}/main.cpp" -o "${program}")
  run_step("run (${package})" "${program}")
endfunction()

build_and_run(diffattn "-I${CONSUMER_SOURCE_DIR}/no_nlohmann")
build_and_run(diffattn-safetensors -DDIFFATTN_CONSUMER_SAFETENSORS)
