# pkg-config files for users who build without CMake (a Makefile, a plain compiler line):
#   diffattn              the kernels and blocks: Eigen and xsimd
#   diffattn-safetensors  adds the .safetensors reader, writer and from_safetensors,
#                         which need nlohmann-json
# Both are installed to <datadir>/pkgconfig, as the library is header-only and the same
# on every architecture.
#
# diffattn_configure_pkgconfig(<output dir> <install dir>) writes them to <output dir>.
# <install dir> is where they will be installed; when it and CMAKE_INSTALL_INCLUDEDIR are
# relative, the include path is given relative to the .pc file (${pcfiledir}), so the
# tree still works when installed with `cmake --install --prefix <elsewhere>` or moved.

function(diffattn_configure_pkgconfig output_dir install_dir)
  if(IS_ABSOLUTE "${install_dir}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
    set(DIFFATTN_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
    if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
      set(DIFFATTN_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
    else()
      set(DIFFATTN_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
    endif()
  else()
    # "/p" stands for any prefix: only the number of ".." matters.
    file(RELATIVE_PATH to_prefix "/p/${install_dir}" "/p")
    string(REGEX REPLACE "/$" "" to_prefix "${to_prefix}")
    set(DIFFATTN_PC_PREFIX "\${pcfiledir}/${to_prefix}")
    set(DIFFATTN_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
  endif()
  foreach(name IN ITEMS diffattn diffattn-safetensors)
    configure_file("${PROJECT_SOURCE_DIR}/cmake/${name}.pc.in" "${output_dir}/${name}.pc" @ONLY)
  endforeach()
endfunction()
