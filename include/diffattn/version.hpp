#pragma once
/// \file
/// Library version.

/// Major version number.
#define DIFFATTN_VERSION_MAJOR 0
/// Minor version number.
#define DIFFATTN_VERSION_MINOR 1
/// Patch version number.
#define DIFFATTN_VERSION_PATCH 0
