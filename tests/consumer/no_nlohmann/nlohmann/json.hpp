// Put first on the include path of the consumer tests that must not need nlohmann-json
// (kernels_only, and pkg_config's diffattn.pc build): any diffattn header outside the
// .safetensors part that includes <nlohmann/json.hpp> stops the build here.
#error "diffattn's kernels and blocks must not include <nlohmann/json.hpp>"
