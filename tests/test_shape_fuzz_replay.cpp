// Replays the shape fuzzer's inputs through the harness it runs (tests/fuzz/shape_attack.hpp),
// in every ctest configuration: the seed corpus (tests/fuzz/shape_corpus/) and every input
// that once failed it and has since been fixed (tests/fuzz/shape_regressions/). Each must
// end in a documented exception or a clean run that passes the harness's checks (canary
// around the output, inputs unchanged, fused vs reference, ...); the sanitizer
// configuration adds the out-of-bounds and undefined-behaviour checks. Inputs of findings
// not fixed yet wait in tests/fuzz/shape_findings/, which is not replayed.

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz/shape_attack.hpp"

#ifndef DIFFATTN_TEST_SOURCE_DIR
#error "tests/CMakeLists.txt defines DIFFATTN_TEST_SOURCE_DIR (the tests/ folder)"
#endif

namespace {

using diffattn_fuzz::AttackResult;

const std::filesystem::path test_source_dir = DIFFATTN_TEST_SOURCE_DIR;

std::vector<std::uint8_t> read_bytes(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(file), {});
}

const char* result_name(AttackResult result) {
  switch (result) {
    case AttackResult::ran:
      return "ran";
    case AttackResult::rejected:
      return "rejected";
    case AttackResult::skipped:
      break;
  }
  return "skipped";
}

/// Replays every file of `folder` (README.md aside). A file named ran_* or rejected_*
/// must end that way, so a seed cannot silently stop exercising what it was made for.
void replay_folder(const std::filesystem::path& folder, std::size_t minimum_files) {
  ASSERT_TRUE(std::filesystem::is_directory(folder)) << folder;
  std::size_t replayed = 0;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name == "README.md") continue;
    SCOPED_TRACE(entry.path().string());
    ++replayed;
    const std::vector<std::uint8_t> bytes = read_bytes(entry.path());
    try {
      const AttackResult result = diffattn_fuzz::run_shape_attack(bytes.data(), bytes.size());
      for (const AttackResult expected : {AttackResult::ran, AttackResult::rejected}) {
        if (name.rfind(std::string(result_name(expected)) + "_", 0) == 0) {
          EXPECT_EQ(result_name(result), std::string(result_name(expected)));
        }
      }
    } catch (const diffattn_fuzz::Finding& finding) {
      ADD_FAILURE() << finding.what();
    } catch (const std::exception& error) {
      ADD_FAILURE() << "the harness let an exception escape: " << error.what();
    }
  }
  EXPECT_GE(replayed, minimum_files) << folder;
}

TEST(ShapeFuzz, SeedCorpusReplays) { replay_folder(test_source_dir / "fuzz/shape_corpus", 10); }

TEST(ShapeFuzz, RegressionsReplay) { replay_folder(test_source_dir / "fuzz/shape_regressions", 0); }

// The harness itself: a short input decodes (missing bytes read as 0) and a call it
// cannot finish quickly is skipped rather than run.
TEST(ShapeFuzz, HarnessHandlesShortAndHugeInputs) {
  EXPECT_NO_THROW((void)diffattn_fuzz::run_shape_attack(nullptr, 0));
  // float softmax_attention, B = Hq = Nq = D = Dv = 1 and Nk = 2^20 over stride-0 keys and
  // values: valid, but about 3·2^20 multiply-adds (more than kWorkLimit).
  const std::vector<std::uint8_t> huge = {0, 0, 1, 1, 1, 1, 236, 1, 1};
  EXPECT_EQ(result_name(diffattn_fuzz::run_shape_attack(huge.data(), huge.size())),
            std::string("skipped"));
}

TEST(ShapeFuzz, KnownDefectTagsAreDocumented) {
  for (const auto& tag : diffattn_fuzz::known_defect_tags()) {
    EXPECT_NE(std::string(tag.first), "");
    EXPECT_NE(std::string(tag.second), "");
  }
}

}  // namespace
