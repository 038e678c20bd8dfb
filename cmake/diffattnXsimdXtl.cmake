# Debian 12's xsimd 8.1 was built with ENABLE_XTL_COMPLEX, so its exported target `xsimd`
# links `xtl`, but its config file never looks for xtl (xsimd issue #869, fixed upstream
# in PR #875) and the package does not depend on xtl-dev. Without a target named `xtl`,
# CMake passes `-lxtl` to the linker and every program that links xsimd fails to link.
#
# xsimd's headers need xtl only when XSIMD_ENABLE_XTL_COMPLEX is defined, which diffattn
# never does. So: use the real xtl package when it is installed, otherwise define an
# empty stand-in target. Included after xsimd is found, by CMakeLists.txt and by the
# installed diffattnConfig.cmake.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_diffattn_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
  if("xtl" IN_LIST _diffattn_xsimd_links)
    find_package(xtl CONFIG QUIET)
    if(NOT TARGET xtl)
      add_library(xtl INTERFACE IMPORTED)
    endif()
  endif()
  unset(_diffattn_xsimd_links)
endif()
