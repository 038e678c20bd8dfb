# API reference: `cmake --build <build> --target docs` runs Doxygen (Debian: doxygen) over
# the public headers into <build>/docs/html. The ctest test doxygen_docs runs the same
# configuration and fails on any warning, so an undocumented public name fails CI.
# Without Doxygen neither the target nor the test exists.

# Off under add_subdirectory by default: a parent project may have its own `docs` target.
option(DIFFATTN_BUILD_DOCS "Add the docs target (Doxygen API reference) and its test"
       ${PROJECT_IS_TOP_LEVEL})
if(NOT DIFFATTN_BUILD_DOCS)
  return()
endif()

find_package(Doxygen QUIET)
if(NOT DOXYGEN_FOUND)
  message(STATUS "diffattn: Doxygen not found; no `docs` target")
  return()
endif()

set(DIFFATTN_DOCS_OUTPUT_DIR "${CMAKE_CURRENT_BINARY_DIR}/docs")
configure_file("${PROJECT_SOURCE_DIR}/docs/Doxyfile.in" "${DIFFATTN_DOCS_OUTPUT_DIR}/Doxyfile" @ONLY)

# Always out of date, like every custom target: it reruns doxygen on each build of it.
add_custom_target(docs
  COMMAND Doxygen::doxygen "${DIFFATTN_DOCS_OUTPUT_DIR}/Doxyfile"
  WORKING_DIRECTORY "${DIFFATTN_DOCS_OUTPUT_DIR}"
  COMMENT "Doxygen: API reference in ${DIFFATTN_DOCS_OUTPUT_DIR}/html"
  VERBATIM)

# The test runs doxygen itself rather than building the target, so that it needs no
# build-tool lock while ctest runs other tests beside it.
if(DIFFATTN_BUILD_TESTS)
  add_test(NAME doxygen_docs
           COMMAND Doxygen::doxygen "${DIFFATTN_DOCS_OUTPUT_DIR}/Doxyfile"
           WORKING_DIRECTORY "${DIFFATTN_DOCS_OUTPUT_DIR}")
endif()
