// Unit tests for include/diffattn/safetensors.hpp: writer -> reader round trips,
// hand-built files for the format's example and for every malformed input the reader
// must reject (each message checked for the source, the tensor and the problem), exact
// F16/BF16 conversion over every bit pattern, and replay of the fuzzer's corpus and
// regressions.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "diffattn/safetensors.hpp"
#include "diffattn/tensor.hpp"
#include "helpers.hpp"

#ifndef DIFFATTN_TEST_SOURCE_DIR
#error "tests/CMakeLists.txt defines DIFFATTN_TEST_SOURCE_DIR (the tests/ folder)"
#endif

namespace {

using diffattn::DType;
using diffattn::index_t;
using diffattn::SafeTensors;
using diffattn::safetensors_error;
using diffattn::SafeTensorsWriter;
using diffattn::Tensor;
using diffattn::TensorView;
using diffattn_test::bits_of;

using Bytes = std::vector<std::uint8_t>;

const std::filesystem::path test_source_dir = DIFFATTN_TEST_SOURCE_DIR;

/// A file from its header text and data buffer, with the 8-byte little-endian length.
Bytes make_file(const std::string& header, const Bytes& data = {}) {
  // Reserved up front: growing an 8-byte vector by insert trips GCC 12's -Warray-bounds
  // at -O3 (a false positive in the inlined memmove).
  Bytes file;
  file.reserve(8 + header.size() + data.size());
  std::uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<std::uint8_t>(length >> (8 * i)));
  file.insert(file.end(), header.begin(), header.end());
  file.insert(file.end(), data.begin(), data.end());
  return file;
}

Bytes zeros(std::size_t count) { return Bytes(count, 0); }

template <class U>
void append_le(Bytes& bytes, U value) {
  for (std::size_t i = 0; i < sizeof(U); ++i) {
    bytes.push_back(static_cast<std::uint8_t>(value & 0xFFu));
    value = static_cast<U>(value >> 8);
  }
}

Bytes read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// Runs `fn`, expecting a safetensors_error whose message contains every part.
template <class F>
void expect_error(F&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected diffattn::safetensors_error, nothing was thrown";
  } catch (const safetensors_error& error) {
    const std::string message = error.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" lacks \"" << part << "\"";
    }
  } catch (const std::exception& error) {
    ADD_FAILURE() << "expected diffattn::safetensors_error, got: " << error.what();
  }
}

/// Expects parse() to reject `file`, naming the source "bad.safetensors" and each part.
void expect_parse_error(const Bytes& file, std::initializer_list<std::string> parts) {
  SCOPED_TRACE(
      std::string(file.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(8, file.size())),
                  file.end()));
  expect_error([&] { (void)SafeTensors::parse(file, "bad.safetensors"); }, parts);
  // The source name is in every message.
  expect_error([&] { (void)SafeTensors::parse(file, "bad.safetensors"); }, {"bad.safetensors"});
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

// ---------------------------------------------------------------------------------------
// Writer -> reader round trips.

template <class T>
class SafeTensorsRoundTrip : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SafeTensorsRoundTrip, FloatTypes);

template <class T, std::size_t R>
Tensor<T, R> counting_tensor(const std::array<index_t, R>& shape, std::mt19937_64& rng) {
  Tensor<T, R> t(shape);
  std::uniform_real_distribution<double> dist(-3, 3);
  for (index_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(dist(rng));
  return t;
}

template <class T, std::size_t R>
void expect_bitwise_equal(const Tensor<T, R>& got, const Tensor<T, R>& want) {
  ASSERT_EQ(got.shape(), want.shape());
  for (index_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(bits_of(got.data()[i]), bits_of(want.data()[i])) << "element " << i;
  }
}

TYPED_TEST(SafeTensorsRoundTrip, RanksOneToFourIncludingEmptyTensors) {
  using T = TypeParam;
  const std::uint64_t seed = 20250401;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const auto r1 = counting_tensor<T, 1>({7}, rng);
  const auto r2 = counting_tensor<T, 2>({3, 5}, rng);
  const auto r3 = counting_tensor<T, 3>({2, 3, 4}, rng);
  const auto r4 = counting_tensor<T, 4>({1, 2, 3, 2}, rng);
  const auto empty = counting_tensor<T, 3>({2, 0, 3}, rng);

  SafeTensorsWriter writer;
  writer.add("r1", r1);
  writer.add("r2", r2.view());
  writer.add<T, 3>("r3", r3.view());
  writer.add("r4", r4);
  writer.add("empty", empty);
  writer.set_metadata("format", "pt");
  writer.set_metadata("note", "änderung ✓");
  const Bytes file = writer.bytes();

  const SafeTensors st = SafeTensors::parse(file);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"empty", "r1", "r2", "r3", "r4"}));
  const DType expected_dtype = std::is_same_v<T, float> ? DType::f32 : DType::f64;
  for (const auto& name : st.names()) EXPECT_EQ(st.dtype(name), expected_dtype) << name;
  EXPECT_EQ(st.shape("r3"), (std::vector<index_t>{2, 3, 4}));
  EXPECT_EQ(st.shape("empty"), (std::vector<index_t>{2, 0, 3}));
  EXPECT_EQ(st.metadata().size(), 2u);
  EXPECT_EQ(st.metadata().at("note"), "änderung ✓");

  expect_bitwise_equal(st.tensor<T, 1>("r1"), r1);
  expect_bitwise_equal(st.tensor<T, 2>("r2", {3, 5}), r2);
  expect_bitwise_equal(st.tensor<T, 3>("r3"), r3);
  expect_bitwise_equal(st.tensor<T, 4>("r4", {1, 2, 3, 2}), r4);
  EXPECT_EQ((st.tensor<T, 3>("empty").size()), 0);
}

TYPED_TEST(SafeTensorsRoundTrip, StridedViewsAreWrittenRowMajor) {
  using T = TypeParam;
  std::mt19937_64 rng(7);
  const auto base = counting_tensor<T, 3>({4, 5, 6}, rng);
  const TensorView<const T, 3> view = base.view();
  const auto permuted = view.permute({2, 0, 1});                  // [6, 4, 5]
  const auto stepped = view.slice(1, 1, 5, 2).slice(2, 0, 6, 3);  // [4, 2, 2]
  const auto broadcast = view.slice(0, 2, 3, 1).broadcast(0, 3);  // [3, 5, 6], stride 0

  SafeTensorsWriter writer;
  writer.add("permuted", permuted);
  writer.add("stepped", stepped);
  writer.add("broadcast", broadcast);
  const SafeTensors st = SafeTensors::parse(writer.bytes());

  for (const auto& [name, source] : {std::pair{"permuted", permuted}, std::pair{"stepped", stepped},
                                     std::pair{"broadcast", broadcast}}) {
    SCOPED_TRACE(name);
    const auto got = st.tensor<T, 3>(name, source.shape());
    for (index_t i = 0; i < source.extent(0); ++i) {
      for (index_t j = 0; j < source.extent(1); ++j) {
        for (index_t k = 0; k < source.extent(2); ++k) {
          ASSERT_EQ(bits_of(got(i, j, k)), bits_of(source(i, j, k))) << i << "," << j << "," << k;
        }
      }
    }
  }
}

TEST(SafeTensorsWriter, LayoutFollowsTheReferenceImplementation) {
  Tensor<float, 1> a({2}, 1.5f);
  Tensor<double, 2> b({1, 1}, -2.0);
  SafeTensorsWriter writer;
  writer.add("b", b);
  writer.add("a", a);
  writer.set_metadata("format", "pt");
  const Bytes file = writer.bytes();

  // Name order, offsets relative to the data buffer, header padded with spaces to 8.
  const std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"a\":{\"data_offsets\":[0,8],\"dtype\":\"F32\",\"shape\":[2]},"
      "\"b\":{\"data_offsets\":[8,16],\"dtype\":\"F64\",\"shape\":[1,1]}}";
  std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  Bytes data;
  append_le(data, bits_of(1.5f));
  append_le(data, bits_of(1.5f));
  append_le(data, bits_of(-2.0));
  EXPECT_EQ(file, make_file(padded, data));
  EXPECT_EQ((file.size() - 8 - 16) % 8, 0u);
}

TEST(SafeTensorsWriter, RejectsDuplicateReservedAndNonUtf8Names) {
  Tensor<float, 1> t({2});
  SafeTensorsWriter writer;
  writer.add("w", t);
  expect_error([&] { writer.add("w", t); }, {"'w'", "twice"});
  expect_error([&] { writer.add("__metadata__", t); }, {"__metadata__", "reserved"});
  expect_error([&] { writer.add("bad\xff", t); }, {"UTF-8"});
  expect_error([&] { writer.set_metadata("k", "\xc3"); }, {"'k'", "UTF-8"});
  // The failed calls left the writer as it was.
  EXPECT_EQ(SafeTensors::parse(writer.bytes()).names(), std::vector<std::string>{"w"});
}

TEST(SafeTensorsWriter, EmptyWriterGivesAValidFile) {
  const SafeTensors st = SafeTensors::parse(SafeTensorsWriter().bytes());
  EXPECT_TRUE(st.names().empty());
  EXPECT_TRUE(st.metadata().empty());
}

TEST(SafeTensorsFile, SaveThenLoad) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("diffattn_test_safetensors_" +
       std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + ".safetensors");
  Tensor<float, 2> t({2, 3});
  for (index_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(i) - 2.5f;
  SafeTensorsWriter writer;
  writer.add("layers.0.w", t);
  writer.save(path.string());
  const SafeTensors st = SafeTensors::load(path.string());
  expect_bitwise_equal(st.tensor<float, 2>("layers.0.w", {2, 3}), t);
  // Errors name the file they came from.
  expect_error([&] { (void)st.tensor<float, 2>("layers.1.w"); }, {path.string(), "'layers.1.w'"});
  std::filesystem::remove(path);

  expect_error([&] { (void)SafeTensors::load(path.string()); }, {path.string(), "cannot open"});
  expect_error([&] { writer.save((path / "not_a_dir" / "x.safetensors").string()); },
               {"not_a_dir", "cannot open"});
}

TEST(SafeTensorsFile, LoadOfADirectoryIsAnError) {
  // A directory opens as a stream on Linux and reports a size of 2^63 - 1; the reader
  // must not try to allocate that.
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("diffattn_test_safetensors_dir_" +
       std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  std::filesystem::create_directory(dir);
  expect_error([&] { (void)SafeTensors::load(dir.string()); },
               {dir.string(), "not a regular file", "directory"});
  std::filesystem::remove(dir);
}

// ---------------------------------------------------------------------------------------
// Files built byte by byte.

TEST(SafeTensorsFormat, ReferenceImplementationsTestFile) {
  // The bytes of the format's reference implementation's own deserialization test:
  // length 0x3c, a 2x2 I32 tensor "test" of zeros.
  const std::string raw = std::string("<\x00\x00\x00\x00\x00\x00\x00", 8) +
                          "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}" +
                          std::string(16, '\0');
  const SafeTensors st = SafeTensors::parse(Bytes(raw.begin(), raw.end()));
  EXPECT_EQ(st.names(), std::vector<std::string>{"test"});
  EXPECT_EQ(st.dtype("test"), DType::i32);
  EXPECT_EQ(st.shape("test"), (std::vector<index_t>{2, 2}));
  expect_error([&] { (void)st.tensor<float, 2>("test"); },
               {"'test'", "dtype I32", "does not convert"});
}

TEST(SafeTensorsFormat, FileAsPyTorchWritesIt) {
  // What safetensors.torch.save_file({"embed.weight": f32 [2, 2], "norm.weight": f16 [3],
  // "proj.bias": bf16 [1]}) writes: "__metadata__" {"format": "pt"} first, tensors ordered
  // by alignment then name, no spaces, header padded with spaces to a multiple of 8.
  std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"embed.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
      "\"norm.weight\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]},"
      "\"proj.bias\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[22,24]}}";
  header.append((8 - header.size() % 8) % 8, ' ');
  const Bytes data = {
      0x00, 0x00, 0x80, 0x3F,  // 1.0f
      0x00, 0x00, 0x00, 0xC0,  // -2.0f
      0x00, 0x00, 0x40, 0x40,  // 3.0f
      0x00, 0x00, 0x00, 0x3F,  // 0.5f
      0x00, 0x3C,              // half 1.0
      0x00, 0xB8,              // half -0.5
      0x01, 0x00,              // half 2^-24, the smallest subnormal
      0x49, 0x40,              // bfloat16 3.140625
  };
  const SafeTensors st = SafeTensors::parse(make_file(header, data), "model.safetensors");
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_EQ(st.dtype("norm.weight"), DType::f16);
  EXPECT_EQ(st.dtype("proj.bias"), DType::bf16);
  const auto embed = st.tensor<float, 2>("embed.weight", {2, 2});
  EXPECT_EQ(embed(0, 0), 1.0f);
  EXPECT_EQ(embed(0, 1), -2.0f);
  EXPECT_EQ(embed(1, 0), 3.0f);
  EXPECT_EQ(embed(1, 1), 0.5f);
  const auto norm = st.tensor<double, 1>("norm.weight", {3});
  EXPECT_EQ(norm(0), 1.0);
  EXPECT_EQ(norm(1), -0.5);
  EXPECT_EQ(norm(2), std::ldexp(1.0, -24));
  EXPECT_EQ((st.tensor<float, 1>("proj.bias")(0)), 3.140625f);
}

TEST(SafeTensorsFormat, FileWrittenByNumpy) {
  // Written once by tests/fixtures/safetensors/make_numpy_fixture.py, whose float16
  // conversion is numpy's, independent of ours.
  const Bytes file = read_file(test_source_dir / "fixtures/safetensors/numpy.safetensors");
  ASSERT_FALSE(file.empty()) << "missing tests/fixtures/safetensors/numpy.safetensors";
  const SafeTensors st = SafeTensors::parse(file, "numpy.safetensors");
  EXPECT_EQ(st.names(),
            (std::vector<std::string>{"layers.0.attn.lambda_k1", "layers.0.attn.lambda_q1",
                                      "layers.0.attn.q_proj.weight",
                                      "layers.0.attn.q_proj.weight.f16", "scalar", "tokens"}));
  EXPECT_EQ(st.metadata().at("writer"), "numpy");
  EXPECT_EQ(st.dtype("tokens"), DType::i64);
  EXPECT_EQ(st.dtype("scalar"), DType::f64);
  EXPECT_EQ(st.shape("scalar"), std::vector<index_t>{});
  // The script stores w[i][j] = (i·4 + j − 5) / 8, exact in F32 and F16.
  const auto w = st.tensor<double, 2>("layers.0.attn.q_proj.weight", {3, 4});
  const auto w16 = st.tensor<float, 2>("layers.0.attn.q_proj.weight.f16", {3, 4});
  for (index_t i = 0; i < 3; ++i) {
    for (index_t j = 0; j < 4; ++j) {
      EXPECT_EQ(w(i, j), (static_cast<double>(i * 4 + j) - 5) / 8);
      EXPECT_EQ(w16(i, j), (static_cast<float>(i * 4 + j) - 5) / 8);
    }
  }
  // numpy rounds [0.1, 1e-7] to the nearest halves, 0x2E66 and the subnormal 0x0002.
  const auto lambda_q1 = st.tensor<double, 1>("layers.0.attn.lambda_q1", {2});
  EXPECT_EQ(lambda_q1(0), 0.0999755859375);
  EXPECT_EQ(lambda_q1(1), std::ldexp(1.0, -23));
  // The script rounds float32 [0.1, -3] to nearest-even bfloat16: 0x3DCD, 0xC040.
  const auto lambda_k1 = st.tensor<float, 1>("layers.0.attn.lambda_k1", {2});
  EXPECT_EQ(lambda_k1(0), 0.10009765625f);
  EXPECT_EQ(lambda_k1(1), -3.0f);
}

TEST(SafeTensorsFormat, DottedNamesThatArePrefixesOfEachOther) {
  Tensor<float, 1> a({1}, 1.0f), b({1}, 2.0f), c({1}, 3.0f);
  SafeTensorsWriter writer;
  writer.add("layers.3.attn.q_proj.weight", a);
  writer.add("layers.3.attn.q_proj.weight_scale", b);
  writer.add("layers.3.attn.q", c);
  const SafeTensors st = SafeTensors::parse(writer.bytes());
  EXPECT_EQ((st.tensor<float, 1>("layers.3.attn.q_proj.weight")(0)), 1.0f);
  EXPECT_EQ((st.tensor<float, 1>("layers.3.attn.q_proj.weight_scale")(0)), 2.0f);
  EXPECT_EQ((st.tensor<float, 1>("layers.3.attn.q")(0)), 3.0f);
  EXPECT_FALSE(st.contains("layers.3.attn.q_proj"));
  EXPECT_FALSE(st.contains("layers.3"));
  // The closest names come first in the "not found" message.
  expect_error([&] { (void)st.tensor<float, 1>("layers.3.attn.q_proj.wieght"); },
               {"'layers.3.attn.q_proj.wieght' not found", "'layers.3.attn.q_proj.weight'"});
}

TEST(SafeTensorsFormat, WhitespaceScalarsEmptyTensorsAndEmptyFiles) {
  // Padding around the JSON is allowed; a scalar has shape []; zero-size tensors take
  // no bytes and may share an offset.
  const std::string header = "  {" + entry("s", "F32", "[]", "[0,4]") + "," +
                             entry("e1", "F16", "[0,5]", "[4,4]") + "," +
                             entry("e2", "BF16", "[3,0]", "[4,4]") + "}    ";
  Bytes data;
  append_le(data, bits_of(-7.25f));
  const SafeTensors st = SafeTensors::parse(make_file(header, data));
  EXPECT_TRUE(st.shape("s").empty());
  EXPECT_EQ((st.tensor<float, 2>("e1", {0, 5}).size()), 0);
  EXPECT_EQ((st.tensor<double, 2>("e2", {3, 0}).size()), 0);
  expect_error([&] { (void)st.tensor<float, 1>("s"); }, {"'s'", "rank 0", "requested rank 1"});

  EXPECT_TRUE(SafeTensors::parse(make_file("{}")).names().empty());
  EXPECT_TRUE(SafeTensors::parse(make_file("{\"__metadata__\":{}}")).metadata().empty());
}

TEST(SafeTensorsFormat, F64ToFloatRoundsAndF32ToDoubleIsExact) {
  const double third = 1.0 / 3.0;
  Tensor<double, 1> d({3});
  d(0) = third;
  d(1) = 1e300;  // overflows float
  d(2) = -0.0;
  Tensor<float, 1> f({1}, 0.1f);
  SafeTensorsWriter writer;
  writer.add("d", d);
  writer.add("f", f);
  const SafeTensors st = SafeTensors::parse(writer.bytes());
  const auto as_float = st.tensor<float, 1>("d");
  EXPECT_EQ(as_float(0), static_cast<float>(third));
  EXPECT_TRUE(std::isinf(as_float(1)));
  EXPECT_TRUE(std::signbit(as_float(2)));
  EXPECT_EQ((st.tensor<double, 1>("f")(0)), static_cast<double>(0.1f));
}

TEST(SafeTensorsFormat, IntegerTensorsAreListedButDoNotConvert) {
  for (const char* dtype : {"I64", "I32", "I16", "I8", "U8", "BOOL"}) {
    SCOPED_TRACE(dtype);
    DType parsed{};
    ASSERT_TRUE(diffattn::detail::parse_dtype(dtype, parsed));
    const std::size_t size = diffattn::dtype_size(parsed);
    const std::string header =
        "{" + entry("ids", dtype, "[2]", "[0," + std::to_string(2 * size) + "]") + "}";
    const SafeTensors st =
        SafeTensors::parse(make_file(header, zeros(2 * size)), "ids.safetensors");
    EXPECT_EQ(st.dtype("ids"), parsed);
    EXPECT_EQ(diffattn::dtype_name(parsed), dtype);
    expect_error([&] { (void)st.tensor<float, 1>("ids"); },
                 {"ids.safetensors", "'ids'", std::string("dtype ") + dtype, "does not convert"});
    expect_error([&] { (void)st.tensor<double, 1>("ids", {2}); }, {"'ids'", "does not convert"});
  }
}

// ---------------------------------------------------------------------------------------
// Exact F16 and BF16 conversion, every bit pattern.

/// binary16 from its definition: (−1)^s · 2^(e−15) · (1 + m/1024), subnormals
/// (−1)^s · 2^−14 · (m/1024), e = 31 inf or NaN.
double half_reference(std::uint16_t bits, bool& is_nan) {
  const int sign = bits >> 15, exponent = (bits >> 10) & 0x1F, mantissa = bits & 0x3FF;
  is_nan = exponent == 31 && mantissa != 0;
  double magnitude;
  if (exponent == 31) {
    magnitude = std::numeric_limits<double>::infinity();
  } else if (exponent == 0) {
    magnitude = std::ldexp(mantissa / 1024.0, -14);
  } else {
    magnitude = std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
  }
  return sign ? -magnitude : magnitude;
}

/// bfloat16 from its definition: 8 exponent bits (bias 127), 7 mantissa bits.
double bfloat16_reference(std::uint16_t bits, bool& is_nan) {
  const int sign = bits >> 15, exponent = (bits >> 7) & 0xFF, mantissa = bits & 0x7F;
  is_nan = exponent == 255 && mantissa != 0;
  double magnitude;
  if (exponent == 255) {
    magnitude = std::numeric_limits<double>::infinity();
  } else if (exponent == 0) {
    magnitude = std::ldexp(mantissa / 128.0, -126);
  } else {
    magnitude = std::ldexp(1.0 + mantissa / 128.0, exponent - 127);
  }
  return sign ? -magnitude : magnitude;
}

/// A file with one tensor holding all 65536 16-bit patterns, in order.
SafeTensors all_patterns_file(const std::string& dtype) {
  Bytes data;
  for (std::uint32_t bits = 0; bits <= 0xFFFF; ++bits)
    append_le(data, static_cast<std::uint16_t>(bits));
  const std::string header = "{" + entry("all", dtype, "[65536]", "[0,131072]") + "}";
  return SafeTensors::parse(make_file(header, data));
}

template <class T>
void check_all_patterns(const Tensor<T, 1>& got, double (*reference)(std::uint16_t, bool&),
                        int mantissa_bits) {
  for (std::uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    bool is_nan = false;
    const double want = reference(static_cast<std::uint16_t>(bits), is_nan);
    const T value = got(static_cast<index_t>(bits));
    if (is_nan) {
      ASSERT_TRUE(std::isnan(value)) << std::hex << "pattern 0x" << bits;
      // Sign and payload survive: the payload's bits sit at the top of T's mantissa.
      EXPECT_EQ(std::signbit(value), (bits & 0x8000) != 0) << std::hex << "pattern 0x" << bits;
      const std::uint64_t payload_mask = (std::uint64_t{1} << mantissa_bits) - 1;
      const std::uint64_t payload =
          std::is_same_v<T, float>
              ? (bits_of(static_cast<float>(value)) >> (23 - mantissa_bits)) & payload_mask
              : (bits_of(static_cast<double>(value)) >> (52 - mantissa_bits)) & payload_mask;
      EXPECT_EQ(payload, bits & payload_mask) << std::hex << "pattern 0x" << bits;
    } else {
      // Exact, signed zeros included.
      ASSERT_EQ(static_cast<double>(value), want) << std::hex << "pattern 0x" << bits;
      ASSERT_EQ(std::signbit(value), std::signbit(want)) << std::hex << "pattern 0x" << bits;
    }
  }
}

TEST(SafeTensorsConversion, EveryHalfPatternIsExact) {
  const SafeTensors st = all_patterns_file("F16");
  check_all_patterns(st.tensor<float, 1>("all"), half_reference, 10);
  check_all_patterns(st.tensor<double, 1>("all"), half_reference, 10);
  // Landmarks, spelled out.
  EXPECT_EQ(diffattn::detail::half_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(diffattn::detail::half_to_float(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(diffattn::detail::half_to_float(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(diffattn::detail::half_to_float(0xFC00), -std::numeric_limits<float>::infinity());
}

TEST(SafeTensorsConversion, EveryBfloat16PatternIsExact) {
  const SafeTensors st = all_patterns_file("BF16");
  check_all_patterns(st.tensor<float, 1>("all"), bfloat16_reference, 7);
  check_all_patterns(st.tensor<double, 1>("all"), bfloat16_reference, 7);
  EXPECT_EQ(diffattn::detail::bfloat16_to_float(0x0001), std::ldexp(1.0f, -133));
}

// Read as its own type, a half tensor is its bits: every pattern, NaN payloads included.
TEST(SafeTensorsConversion, HalfTensorsReadAsTheirTypeKeepEveryBit) {
  const Tensor<diffattn::f16, 1> halves = all_patterns_file("F16").tensor<diffattn::f16, 1>("all");
  const Tensor<diffattn::bf16, 1> bfloats = all_patterns_file("BF16").tensor<diffattn::bf16, 1>("all");
  for (std::uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    ASSERT_EQ(bits_of(halves(static_cast<index_t>(bits))), bits) << std::hex << "F16 0x" << bits;
    ASSERT_EQ(bits_of(bfloats(static_cast<index_t>(bits))), bits) << std::hex << "BF16 0x" << bits;
  }
}

// Any other stored type reaches bf16 or f16 as diffattn::convert takes it from float.
template <class Half>
void expect_converted_from_float(const Tensor<Half, 1>& got, const Tensor<float, 1>& as_float) {
  Tensor<Half, 1> want(as_float.shape());
  diffattn::convert(as_float.view(), want.view());
  for (index_t i = 0; i < got.size(); ++i) {
    if (std::isnan(static_cast<float>(want(i)))) {
      ASSERT_TRUE(std::isnan(static_cast<float>(got(i)))) << i;
    } else {
      ASSERT_EQ(bits_of(got(i)), bits_of(want(i))) << i;
    }
  }
}

TEST(SafeTensorsConversion, OtherTypesRoundToHalfAsConvertDoes) {
  const SafeTensors f16_file = all_patterns_file("F16");
  const SafeTensors bf16_file = all_patterns_file("BF16");
  expect_converted_from_float(f16_file.tensor<diffattn::bf16, 1>("all"), f16_file.tensor<float, 1>("all"));
  expect_converted_from_float(bf16_file.tensor<diffattn::f16, 1>("all"), bf16_file.tensor<float, 1>("all"));
  // F32 and F64, spanning f16's overflow and subnormals and bf16's rounding.
  std::mt19937_64 rng(23);
  Tensor<float, 1> floats({600});
  Tensor<double, 1> doubles({600});
  std::uniform_real_distribution<double> exponent(-30, 20);
  for (index_t i = 0; i < floats.size(); ++i) {
    doubles(i) = (i % 2 ? -1 : 1) * std::exp2(exponent(rng));
    floats(i) = static_cast<float>(doubles(i));
  }
  SafeTensorsWriter writer;
  writer.add("f", floats.view());
  writer.add("d", doubles.view());
  const SafeTensors st = SafeTensors::parse(writer.bytes());
  expect_converted_from_float(st.tensor<diffattn::bf16, 1>("f"), floats);
  expect_converted_from_float(st.tensor<diffattn::f16, 1>("f"), floats);
  expect_converted_from_float(st.tensor<diffattn::bf16, 1>("d"), floats);  // F64 through float
  EXPECT_THROW((st.tensor<diffattn::f16, 2>("f")), diffattn::safetensors_error);  // rank as for float
}

// ---------------------------------------------------------------------------------------
// Malformed files: one clear safetensors_error each, naming the file, tensor and problem.

TEST(SafeTensorsErrors, FileTooShortForTheLength) {
  expect_parse_error({}, {"0 bytes", "too short", "8-byte header length"});
  expect_parse_error(Bytes(7, 0), {"7 bytes", "too short"});
}

TEST(SafeTensorsErrors, HeaderLengthPastTheEndOrAbsurd) {
  Bytes file = make_file("{}");
  file[0] = 3;  // claims 3 bytes, has 2
  expect_parse_error(file, {"header length 3", "past the end", "2 bytes follow"});
  Bytes huge(16, 0xFF);  // 2^64 − 1
  expect_parse_error(huge, {"header length 18446744073709551615", "limit"});
  Bytes just_over(8, 0);
  const std::uint64_t over = SafeTensors::max_header_size + 1;
  for (int i = 0; i < 8; ++i)
    just_over[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(over >> (8 * i));
  expect_parse_error(just_over, {"100000001", "limit"});
}

TEST(SafeTensorsErrors, InvalidJson) {
  expect_parse_error(make_file("{\"a\":"), {"not valid JSON"});
  expect_parse_error(make_file(""), {"not valid JSON"});
  expect_parse_error(make_file("{} {}"), {"not valid JSON"});
  expect_parse_error(make_file("{\"a\xff\":1}"), {"not valid JSON"});  // not UTF-8
  // nlohmann alone would stop at the NUL and accept this.
  expect_parse_error(make_file(std::string("{}\0\0", 4)), {"NUL byte at offset 10"});
  expect_parse_error(make_file(std::string("{\"a\0\":1}", 8)), {"NUL byte at offset 11"});
}

TEST(SafeTensorsErrors, HeaderNotAnObject) {
  expect_parse_error(make_file("[]"), {"header is a JSON array", "expected an object"});
  expect_parse_error(make_file("42"), {"header is a JSON number"});
  expect_parse_error(make_file("[{\"a\":1,\"a\":2}]"), {"header is a JSON array"});
}

TEST(SafeTensorsErrors, EntryNotAnObject) {
  expect_parse_error(make_file("{\"w\":[1,2]}"), {"'w'", "JSON type array", "expected an object"});
}

TEST(SafeTensorsErrors, MissingOrIllTypedFields) {
  expect_parse_error(make_file("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", zeros(4)),
                     {"'w'", "no \"dtype\""});
  expect_parse_error(make_file("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", zeros(4)),
                     {"'w'", "no \"shape\""});
  expect_parse_error(make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", zeros(4)),
                     {"'w'", "no \"data_offsets\""});
  expect_parse_error(
      make_file("{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", zeros(4)),
      {"'w'", "\"dtype\" of JSON type number", "expected a string"});
  expect_parse_error(
      make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", zeros(4)),
      {"'w'", "\"shape\" of JSON type number", "expected an array"});
  for (const char* offsets : {"4", "[4]", "[0,4,8]", "[0,\"4\"]", "[-1,4]", "[0,4.0]", "null"}) {
    SCOPED_TRACE(offsets);
    expect_parse_error(make_file("{" + entry("w", "F32", "[1]", offsets) + "}", zeros(4)),
                       {"'w'", "\"data_offsets\"", "expected [begin, end]"});
  }
}

TEST(SafeTensorsErrors, UnknownDtype) {
  for (const char* dtype : {"F8_E4M3", "U32", "f32", "", "C64"}) {
    SCOPED_TRACE(dtype);
    expect_parse_error(make_file("{" + entry("w", dtype, "[1]", "[0,1]") + "}", zeros(1)),
                       {"'w'", "unknown dtype '" + std::string(dtype) + "'", "known: F64"});
  }
}

TEST(SafeTensorsErrors, NegativeNonIntegerOrHugeShape) {
  for (const char* shape :
       {"[-1]", "[2,-3]", "[1.5]", "[2.0]", "[\"2\"]", "[null]", "[[2]]", "[1e3]"}) {
    SCOPED_TRACE(shape);
    expect_parse_error(make_file("{" + entry("w", "F32", shape, "[0,4]") + "}", zeros(4)),
                       {"'w'", "\"shape\" entry", "expected a non-negative integer"});
  }
  expect_parse_error(
      make_file("{" + entry("w", "F32", "[9223372036854775808]", "[0,4]") + "}", zeros(4)),
      {"'w'", "9223372036854775808", "too large"});
  // 2^62 · 2^62 overflows the element count; 2^62 · 4 bytes overflows the byte count.
  expect_parse_error(
      make_file("{" + entry("w", "F32", "[4611686018427387904,4611686018427387904]", "[0,4]") + "}",
                zeros(4)),
      {"'w'", "more elements than fit"});
  expect_parse_error(
      make_file("{" + entry("w", "F32", "[4611686018427387904]", "[0,4]") + "}", zeros(4)),
      {"'w'", "more elements than fit"});
  // A zero extent makes any other extent harmless.
  EXPECT_NO_THROW(SafeTensors::parse(make_file(
      "{" + entry("w", "F32", "[0,9223372036854775807,9223372036854775807]", "[0,0]") + "}")));
}

/// `depth` nested empty arrays: "[[[...]]]".
std::string nested_arrays(std::size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

/// A JSON array of `count` ones: "[1,1,...]".
std::string ones(std::size_t count) {
  std::string text = "[";
  for (std::size_t i = 0; i < count; ++i) text += i == 0 ? "1" : ",1";
  return text + "]";
}

TEST(SafeTensorsErrors, DeeplyNestedArraysAreRejectedWithoutRecursion) {
  // 100,000 levels overflowed the stack of a recursive walk (an error message dumped
  // the value); the header is ~200 KB, far under max_header_size.
  constexpr std::size_t deep = 100'000;
  expect_parse_error(make_file("{" + entry("w", "F32", "[1]", nested_arrays(deep)) + "}", zeros(4)),
                     {"'w'", "\"data_offsets\"", "more than 8 deep"});
  expect_parse_error(
      make_file("{" + entry("w", "F32", "[" + nested_arrays(deep) + "]", "[0,4]") + "}", zeros(4)),
      {"'w'", "\"shape\"", "more than 8 deep"});
  expect_parse_error(make_file("{\"w\":" + nested_arrays(deep) + "}"),
                     {"'w'", "header entry", "more than 8 deep"});
  expect_parse_error(make_file("{\"__metadata__\":{\"k\":" + nested_arrays(deep) + "}}"),
                     {"\"__metadata__\"", "more than 8 deep"});
  expect_parse_error(make_file(nested_arrays(deep)), {"header is a JSON array"});
  // The limit itself: 8 levels parse as far as the entry check, 9 do not.
  static_assert(SafeTensors::max_header_depth == 8);
  // (the header object, the entry, data_offsets and 5 more arrays make 8).
  expect_parse_error(
      make_file("{" + entry("w", "F32", "[1]", "[0," + nested_arrays(5) + "]") + "}", zeros(4)),
      {"'w'", "\"data_offsets\" entry 1 that is a JSON array", "expected [begin, end]"});
  expect_parse_error(
      make_file("{" + entry("w", "F32", "[1]", "[0," + nested_arrays(6) + "]") + "}", zeros(4)),
      {"'w'", "\"data_offsets\"", "more than 8 deep"});
}

TEST(SafeTensorsErrors, ShapeEntriesAndOffsetsAreDescribedNotDumped) {
  // Error messages describe an ill-typed value by its type or a short preview, never by
  // a recursive dump of untrusted JSON.
  expect_parse_error(make_file("{" + entry("w", "F32", "[[2]]", "[0,4]") + "}", zeros(4)),
                     {"'w'", "\"shape\" entry 0 that is a JSON array"});
  expect_parse_error(make_file("{" + entry("w", "F32", "[{\"a\":1}]", "[0,4]") + "}", zeros(4)),
                     {"'w'", "\"shape\" entry 0 that is a JSON object"});
  expect_parse_error(make_file("{" + entry("w", "F32", "[1,-3]", "[0,4]") + "}", zeros(4)),
                     {"'w'", "\"shape\" entry 1 that is -3"});
  expect_parse_error(
      make_file("{" + entry("w", "F32", "[\"" + std::string(1000, 'x') + "\"]", "[0,4]") + "}",
                zeros(4)),
      {"'w'", "\"shape\" entry 0 that is the string 'xxxx", "...'"});
  expect_parse_error(make_file("{" + entry("w", "F32", "[1]", "[0,[4]]") + "}", zeros(4)),
                     {"'w'", "\"data_offsets\" entry 1 that is a JSON array"});
  expect_parse_error(make_file("{" + entry("w", "F32", "[1]", "[0,4,8]") + "}", zeros(4)),
                     {"'w'", "\"data_offsets\" of length 3"});
  expect_parse_error(make_file("{" + entry("w", "F32", "[1]", "{\"a\":[]}") + "}", zeros(4)),
                     {"'w'", "\"data_offsets\" that is a JSON object"});
}

TEST(SafeTensorsErrors, RankAboveTheLimit) {
  static_assert(SafeTensors::max_rank == 16);
  const SafeTensors st =
      SafeTensors::parse(make_file("{" + entry("w", "F32", ones(16), "[0,4]") + "}", zeros(4)));
  EXPECT_EQ(st.shape("w"), std::vector<index_t>(16, 1));
  expect_parse_error(make_file("{" + entry("w", "F32", ones(17), "[0,4]") + "}", zeros(4)),
                     {"'w'", "\"shape\" of more than 16 entries"});
  // No array in a valid header is longer than a shape, so none may be, wherever it is.
  expect_parse_error(make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],"
                               "\"extra\":" +
                                   ones(17) + "}}",
                               zeros(4)),
                     {"'w'", "\"extra\"", "array of more than 16 elements"});
  expect_parse_error(make_file("{\"w\":" + ones(17) + "}"), {"'w'", "more than 16 elements"});
  expect_parse_error(make_file("{\"__metadata__\":{\"k\":" + ones(17) + "}}"),
                     {"\"__metadata__\"", "more than 16 elements"});
  expect_parse_error(make_file(ones(17)), {"header is a JSON array"});
}

TEST(SafeTensorsErrors, HugeShapeIsRejectedBeforeItIsBuilt) {
  // A million-entry shape followed by a syntax error: the rank error comes first, so the
  // parser stopped at entry 17 instead of building the whole array (a 33-million-entry
  // shape took 1.4 GB and 20 s before the cap).
  const std::string huge = ones(1'000'000);
  expect_parse_error(
      make_file("{" + entry("w", "F32", huge.substr(0, huge.size() - 1) + ",}", "[0,4]") + "}"),
      {"'w'", "\"shape\" of more than 16 entries"});
}

TEST(SafeTensorsErrors, ShapeTimesDtypeSizeIsNotTheByteLength) {
  expect_parse_error(
      make_file("{" + entry("layers.0.w", "F16", "[2,3]", "[0,8]") + "}", zeros(8)),
      {"'layers.0.w'", "[0, 8]", "spanning 8 bytes", "shape [2, 3] of F16 needs 6 x 2 = 12"});
}

TEST(SafeTensorsErrors, OffsetsOutOfRangeOrReversed) {
  expect_parse_error(make_file("{" + entry("w", "F32", "[2]", "[0,8]") + "}", zeros(4)),
                     {"'w'", "[0, 8]", "past the end of the 4-byte data buffer"});
  expect_parse_error(
      make_file("{" + entry("w", "F32", "[1]", "[18446744073709551615,4]") + "}", zeros(4)),
      {"'w'", "begin > end"});
  expect_parse_error(make_file("{" + entry("w", "F32", "[1]", "[8,4]") + "}", zeros(4)),
                     {"'w'", "begin > end"});
  expect_parse_error(
      make_file("{" + entry("w", "F32", "[1]", "[18446744073709551612,18446744073709551615]") + "}",
                zeros(4)),
      {"'w'", "past the end"});
}

TEST(SafeTensorsErrors, OverlappingTensors) {
  expect_parse_error(make_file("{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                                   entry("b", "F32", "[2]", "[4,12]") + "}",
                               zeros(12)),
                     {"'b'", "[4, 12)", "overlap tensor 'a'", "ends at 8"});
  // The same range twice.
  expect_parse_error(make_file("{" + entry("a", "F32", "[1]", "[0,4]") + "," +
                                   entry("b", "F32", "[1]", "[0,4]") + "}",
                               zeros(4)),
                     {"overlap tensor 'a'"});
}

TEST(SafeTensorsErrors, GapsAndTrailingBytes) {
  expect_parse_error(make_file("{" + entry("w", "F32", "[1]", "[4,8]") + "}", zeros(8)),
                     {"'w'", "starts at byte 4", "[0, 4) unused", "at its start"});
  expect_parse_error(make_file("{" + entry("a", "F32", "[1]", "[0,4]") + "," +
                                   entry("b", "F32", "[1]", "[8,12]") + "}",
                               zeros(12)),
                     {"'b'", "[4, 8) unused after tensor 'a'"});
  expect_parse_error(make_file("{" + entry("w", "F32", "[1]", "[0,4]") + "}", zeros(6)),
                     {"6 bytes", "cover only 4", "'w'", "trailing bytes"});
  expect_parse_error(make_file("{}", zeros(1)), {"1 bytes", "lists no tensors"});
}

TEST(SafeTensorsErrors, DuplicateNames) {
  // nlohmann would silently keep one of the two; the reader must not.
  expect_parse_error(make_file("{" + entry("w", "F32", "[1]", "[0,4]") + "," +
                                   entry("w", "F32", "[1]", "[4,8]") + "}",
                               zeros(8)),
                     {"tensor 'w'", "more than once"});
  expect_parse_error(
      make_file(
          "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}",
          zeros(4)),
      {"entry of 'w'", "key 'dtype' more than once"});
  expect_parse_error(make_file("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}"),
                     {"'__metadata__'", "key 'k' more than once"});
  // Equal keys in different objects are fine.
  EXPECT_NO_THROW(SafeTensors::parse(make_file(
      "{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[4,8]") + "}",
      zeros(8))));
}

TEST(SafeTensorsErrors, BadMetadata) {
  expect_parse_error(make_file("{\"__metadata__\":[1]}"), {"\"__metadata__\" is a JSON array"});
  expect_parse_error(make_file("{\"__metadata__\":{\"step\":1000}}"),
                     {"\"__metadata__\" key 'step'", "JSON number", "expected a string"});
}

TEST(SafeTensorsErrors, MissingTensorListsSomeNames) {
  std::string header = "{";
  for (int i = 0; i < 8; ++i) {
    if (i > 0) header += ",";
    header += entry("layers." + std::to_string(i) + ".w", "F32", "[1]",
                    "[" + std::to_string(4 * i) + "," + std::to_string(4 * i + 4) + "]");
  }
  header += "}";
  const SafeTensors st = SafeTensors::parse(make_file(header, zeros(32)), "model.safetensors");
  expect_error([&] { (void)st.tensor<float, 1>("layers.9.w"); },
               {"model.safetensors", "'layers.9.w' not found", "'layers.0.w'", "(8 in all)"});
  expect_error([&] { (void)st.shape("model.layers.0.w"); }, {"'model.layers.0.w' not found"});
  expect_error([&] { (void)st.dtype("x"); }, {"'x' not found"});
  expect_error([&] { (void)SafeTensors::parse(make_file("{}")).tensor<float, 1>("x"); },
               {"'x' not found", "no tensors"});
}

TEST(SafeTensorsErrors, WrongRankOrShapeRequested) {
  const SafeTensors st = SafeTensors::parse(
      make_file("{" + entry("layers.2.attn.k_proj.weight", "F32", "[2,3]", "[0,24]") + "}",
                zeros(24)),
      "model.safetensors");
  expect_error([&] { (void)st.tensor<float, 3>("layers.2.attn.k_proj.weight"); },
               {"model.safetensors", "'layers.2.attn.k_proj.weight'", "has rank 2", "shape [2, 3]",
                "requested rank 3"});
  expect_error(
      [&] {
        (void)st.tensor<float, 2>("layers.2.attn.k_proj.weight", {3, 2});
      },
      {"'layers.2.attn.k_proj.weight'", "has shape [2, 3], expected [3, 2]"});
  expect_error([&] { (void)st.tensor<double, 1>("layers.2.attn.k_proj.weight", {6}); },
               {"has shape [2, 3], expected [6]"});
}

// ---------------------------------------------------------------------------------------
// Replays of the fuzzer's seed corpus and of every input that ever crashed it: each
// must parse, or fail with safetensors_error, and never crash (the sanitizer build
// checks the "never read out of bounds" part).

void replay_folder(const std::filesystem::path& folder, std::size_t minimum_files) {
  ASSERT_TRUE(std::filesystem::is_directory(folder)) << folder;
  std::size_t replayed = 0;
  for (const auto& file : std::filesystem::directory_iterator(folder)) {
    if (!file.is_regular_file() || file.path().filename() == "README.md") continue;
    SCOPED_TRACE(file.path().string());
    ++replayed;
    // The seed corpus names its well-formed files valid_*; those must load.
    const bool must_parse = file.path().filename().string().rfind("valid_", 0) == 0;
    try {
      const SafeTensors st = SafeTensors::parse(read_file(file.path()), file.path().string());
      for (const std::string& name : st.names()) {
        const std::size_t rank = st.shape(name).size();
        try {
          // The fuzzer converts at the file's rank; rank 1..4 covers what it writes.
          if (rank == 1) (void)st.tensor<float, 1>(name);
          if (rank == 2) (void)st.tensor<double, 2>(name);
          if (rank == 3) (void)st.tensor<float, 3>(name);
          if (rank == 4) (void)st.tensor<double, 4>(name);
        } catch (const safetensors_error&) {
          // integer dtypes do not convert: expected
        }
      }
    } catch (const safetensors_error& error) {
      if (must_parse) ADD_FAILURE() << "a valid_* file was rejected: " << error.what();
    } catch (const std::exception& error) {
      ADD_FAILURE() << "an exception other than safetensors_error: " << error.what();
    }
  }
  EXPECT_GE(replayed, minimum_files) << folder;
}

TEST(SafeTensorsFuzz, SeedCorpusReplays) { replay_folder(test_source_dir / "fuzz/corpus", 5); }

TEST(SafeTensorsFuzz, RegressionsReplay) { replay_folder(test_source_dir / "fuzz/regressions", 0); }

}  // namespace
