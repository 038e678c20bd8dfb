#pragma once
/// Library version.

#define DIFFATTN_VERSION_MAJOR 0
#define DIFFATTN_VERSION_MINOR 1
#define DIFFATTN_VERSION_PATCH 0
