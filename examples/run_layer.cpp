// run_layer: loads one attention layer from a .safetensors checkpoint, runs it on the
// tensor `x` [B, N, E] of another .safetensors file and writes the output as tensor `y`.
// With --expect it also compares y with the tensor `y` of a reference file (ctest runs
// it that way on the PyTorch fixtures in tests/fixtures/blocks).
//
//   run_layer --weights FILE --input FILE --output FILE --embed-dim E --heads H
//             [--kv-heads K] [--head-dim D] [--layer L] [--causal]
//             [--rope none|interleaved|half] [--rope-theta T]
//             [--lambda reference|per-head|v2] [--standard] [--prefix P]
//             [--expect FILE] [--tolerance T]
//
// Every error is one line on stderr starting with "run_layer: ", and a non-zero exit.

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>

#include <diffattn/diffattn.hpp>
#include <diffattn/safetensors.hpp>

namespace {

constexpr const char* usage_text =
    "usage: run_layer --weights FILE --input FILE --output FILE --embed-dim E --heads H\n"
    "                 [--kv-heads K] [--head-dim D] [--layer L] [--causal]\n"
    "                 [--rope none|interleaved|half] [--rope-theta T]\n"
    "                 [--lambda reference|per-head|v2] [--standard] [--prefix P]\n"
    "                 [--expect FILE] [--tolerance T]\n"
    "\n"
    "Runs one attention layer stored in --weights (nn.Linear layout, reference names:\n"
    "P + q_proj.weight, k_proj.weight, v_proj.weight, out_proj.weight, lambda_q1, ...,\n"
    "subln.weight; v2: lambda_proj.weight, out_proj or o_proj) on the tensor `x`\n"
    "[B, N, E] of --input, and writes the output as tensor `y` to --output (F32).\n"
    "\n"
    "  --heads H        differential heads; the head width is E / H / 2 unless --head-dim\n"
    "  --kv-heads K     kv heads (grouped-query attention), a divisor of H; default H\n"
    "  --layer L        1-based layer index for lambda_init (default 1)\n"
    "  --lambda MODE    reference (default): one lambda from vectors [d]; per-head:\n"
    "                   vectors [H, d]; v2: sigmoid(x * lambda_proj^T) per token and head\n"
    "  --standard       a standard block of the same size: 2H heads, 2K kv heads of width d\n"
    "  --rope-theta T   RoPE base (default 10000)\n"
    "  --expect FILE    compare y with tensor `y` of FILE; exit 1 if max |difference|\n"
    "                   exceeds --tolerance (default 1e-5)\n";

/// A usage error: reported with a pointer to --help, exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

long long parse_integer(const std::string& flag, const std::string& text, long long minimum,
                        long long maximum = std::numeric_limits<long long>::max()) {
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || value < minimum || value > maximum) {
    const std::string range =
        maximum == std::numeric_limits<long long>::max()
            ? ">= " + std::to_string(minimum)
            : "in [" + std::to_string(minimum) + ", " + std::to_string(maximum) + "]";
    throw usage_error(flag + ": expected an integer " + range + ", got '" + text + "'");
  }
  return value;
}

double parse_positive(const std::string& flag, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(value) || value <= 0) {
    throw usage_error(flag + ": expected a finite number > 0, got '" + text + "'");
  }
  return value;
}

diffattn::RopeStyle parse_rope(const std::string& text) {
  for (auto style :
       {diffattn::RopeStyle::none, diffattn::RopeStyle::interleaved, diffattn::RopeStyle::half}) {
    if (text == diffattn::rope_style_name(style)) return style;
  }
  throw usage_error("--rope: expected none, interleaved or half, got '" + text + "'");
}

diffattn::LambdaMode parse_lambda(const std::string& text) {
  for (auto mode : {diffattn::LambdaMode::reference, diffattn::LambdaMode::per_head,
                    diffattn::LambdaMode::v2}) {
    if (text == diffattn::lambda_mode_name(mode)) return mode;
  }
  throw usage_error("--lambda: expected reference, per-head or v2, got '" + text + "'");
}

struct Options {
  std::string weights, input, output, prefix, expect;
  diffattn::DiffAttentionConfig config;
  bool standard = false;
  double tolerance = 1e-5;
};

Options parse_options(int argc, char** argv) {
  std::map<std::string, std::string> values;  // flag -> value, for flags that take one
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--causal") {
      options.config.causal = true;
      continue;
    }
    if (flag == "--standard") {
      options.standard = true;
      continue;
    }
    static const char* const with_value[] = {
        "--weights",  "--input",    "--output", "--embed-dim", "--heads",
        "--kv-heads", "--head-dim", "--layer",  "--rope",      "--rope-theta",
        "--lambda",   "--prefix",   "--expect", "--tolerance"};
    bool known = false;
    for (const char* name : with_value) known = known || flag == name;
    if (!known) throw usage_error("unknown option '" + flag + "'");
    if (i + 1 >= argc) throw usage_error(flag + ": missing value");
    if (values.count(flag) != 0) throw usage_error(flag + " given twice");
    values[flag] = argv[++i];
  }
  for (const char* required : {"--weights", "--input", "--output", "--embed-dim", "--heads"}) {
    if (values.count(required) == 0) throw usage_error(std::string(required) + " is required");
  }
  auto& c = options.config;
  for (const auto& [flag, value] : values) {
    if (flag == "--weights") options.weights = value;
    if (flag == "--input") options.input = value;
    if (flag == "--output") options.output = value;
    if (flag == "--prefix") options.prefix = value;
    if (flag == "--expect") options.expect = value;
    if (flag == "--embed-dim") c.embed_dim = parse_integer(flag, value, 1);
    if (flag == "--heads") c.num_heads = parse_integer(flag, value, 1);
    if (flag == "--kv-heads") c.num_kv_heads = parse_integer(flag, value, 1);
    if (flag == "--head-dim") c.head_dim = parse_integer(flag, value, 1);
    if (flag == "--layer") c.layer = static_cast<int>(parse_integer(flag, value, 1, INT_MAX));
    if (flag == "--rope") c.rope = parse_rope(value);
    if (flag == "--rope-theta") c.rope_theta = parse_positive(flag, value);
    if (flag == "--lambda") c.lambda = parse_lambda(value);
    if (flag == "--tolerance") options.tolerance = parse_positive(flag, value);
  }
  if (options.standard && values.count("--lambda") != 0) {
    throw usage_error("--lambda does not apply to a --standard block");
  }
  return options;
}

/// The layer's output for x [B, N, E], in float (checkpoints are F32/F16/BF16).
diffattn::Tensor<float, 3> run(const Options& options, const diffattn::SafeTensors& weights,
                               const diffattn::Tensor<float, 3>& x) {
  if (options.standard) {
    const auto block = diffattn::MultiHeadAttention<float>::from_safetensors(
        options.config.standard(), weights, options.prefix);
    return block.forward(x);
  }
  const auto block = diffattn::MultiHeadDiffAttention<float>::from_safetensors(
      options.config, weights, options.prefix);
  return block.forward(x);
}

int run_layer(int argc, char** argv) {
  const Options options = parse_options(argc, argv);
  const auto weights = diffattn::SafeTensors::load(options.weights);
  const auto input = diffattn::SafeTensors::load(options.input);
  const auto x = input.tensor<float, 3>("x");
  const auto y = run(options, weights, x);

  diffattn::SafeTensorsWriter writer;
  writer.add("y", y);
  writer.set_metadata("weights", options.weights);
  writer.set_metadata("block", options.standard ? "standard" : "diff");
  writer.save(options.output);
  std::printf("run_layer: y [%td, %td, %td] written to %s\n", y.extent(0), y.extent(1), y.extent(2),
              options.output.c_str());

  if (options.expect.empty()) return 0;
  const auto expected = diffattn::SafeTensors::load(options.expect).tensor<float, 3>("y");
  if (expected.shape() != y.shape()) {
    std::fprintf(stderr, "run_layer: --expect %s: y has another shape\n", options.expect.c_str());
    return 1;
  }
  double worst = 0;
  for (diffattn::index_t i = 0; i < y.size(); ++i) {
    const double difference = std::abs(double(y.data()[i]) - double(expected.data()[i]));
    worst = std::isnan(difference) ? difference : std::max(worst, difference);
    if (std::isnan(worst)) break;
  }
  const bool ok = worst <= options.tolerance;
  std::fprintf(ok ? stdout : stderr, "run_layer: max |y - expected| = %.3g (tolerance %.3g)%s\n",
               worst, options.tolerance, ok ? "" : ": MISMATCH");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(usage_text, stdout);
      return 0;
    }
  }
  try {
    return run_layer(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "run_layer: %s (see run_layer --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    // diffattn's messages start with "diffattn: " or "safetensors: " and name the
    // argument, tensor or file.
    std::fprintf(stderr, "run_layer: %s\n", e.what());
    return 1;
  }
}
