# Builds and runs the consumer program in tests/consumer. Run by ctest as
#   cmake -DMODE=<mode> -DDIFFATTN_SOURCE_DIR=... -DDIFFATTN_BUILD_DIR=...
#         -DCONSUMER_SOURCE_DIR=... -DWORK_DIR=... [-DGENERATOR=...] [-DCXX_COMPILER=...]
#         [-DPKG_CONFIG=...] [-DBUILD_TYPE=...] -P run_consumer.cmake
# Modes find_package, kernels_only and pkg_config first install the configured diffattn
# build in DIFFATTN_BUILD_DIR to WORK_DIR/prefix. find_package, kernels_only,
# add_subdirectory and fetchcontent build the CMake project in CONSUMER_SOURCE_DIR (its
# CMakeLists.txt says what each does); pkg_config compiles main.cpp with the compiler
# alone and the flags of `pkg-config --cflags`: once against diffattn.pc with a poisoned
# <nlohmann/json.hpp> first on the include path, once against diffattn-safetensors.pc.

foreach(var IN ITEMS MODE DIFFATTN_SOURCE_DIR DIFFATTN_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run_step description)
  message(STATUS "consumer (${MODE}): ${description}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer (${MODE}): ${description} failed (${result})")
  endif()
endfunction()

# Start clean so a stale install or cache cannot hide a packaging bug.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(configure_args -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
                   "-DDIFFATTN_CONSUMER_MODE=${MODE}")
if(GENERATOR)
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(BUILD_TYPE)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()

set(config_args "")
if(BUILD_TYPE)
  set(config_args --config "${BUILD_TYPE}")
endif()

set(prefix "${WORK_DIR}/prefix")
if(MODE MATCHES "^(find_package|kernels_only|pkg_config)$")
  run_step("install diffattn to ${prefix}"
           "${CMAKE_COMMAND}" --install "${DIFFATTN_BUILD_DIR}" --prefix "${prefix}" ${config_args})
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${prefix}")
elseif(MODE MATCHES "^(add_subdirectory|fetchcontent)$")
  list(APPEND configure_args "-DDIFFATTN_SOURCE_DIR=${DIFFATTN_SOURCE_DIR}")
else()
  message(FATAL_ERROR "run_consumer.cmake: MODE must be find_package, kernels_only, "
                      "add_subdirectory, fetchcontent or pkg_config, got '${MODE}'")
endif()

if(MODE STREQUAL "pkg_config")
  include("${CMAKE_CURRENT_LIST_DIR}/run_pkg_config_consumer.cmake")
  return()
endif()

run_step("configure" "${CMAKE_COMMAND}" ${configure_args})

if(MODE MATCHES "^(find_package|kernels_only)$")
  # The package must come from the prefix we just installed to, not from a copy
  # installed elsewhere on the machine.
  file(STRINGS "${WORK_DIR}/build/CMakeCache.txt" found_dir REGEX "^diffattn_DIR:")
  string(REGEX REPLACE "^diffattn_DIR:[A-Z]+=" "" found_dir "${found_dir}")
  cmake_path(IS_PREFIX prefix "${found_dir}" NORMALIZE found_in_prefix)
  if(NOT found_in_prefix)
    message(FATAL_ERROR "consumer (${MODE}): find_package found diffattn in '${found_dir}', "
                        "expected a directory under ${prefix}")
  endif()
endif()

run_step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build" --parallel 1 ${config_args})

# Single-config generators put the program in the build directory, multi-config ones
# in a per-configuration subdirectory.
set(consumer_exe "")
foreach(candidate IN ITEMS "${WORK_DIR}/build/consumer" "${WORK_DIR}/build/consumer.exe"
                           "${WORK_DIR}/build/${BUILD_TYPE}/consumer"
                           "${WORK_DIR}/build/${BUILD_TYPE}/consumer.exe")
  if(NOT consumer_exe AND EXISTS "${candidate}" AND NOT IS_DIRECTORY "${candidate}")
    set(consumer_exe "${candidate}")
  endif()
endforeach()
if(NOT consumer_exe)
  message(FATAL_ERROR "consumer (${MODE}): built, but no consumer executable in ${WORK_DIR}/build")
endif()
run_step("run" "${consumer_exe}")
