// DurationHistory: several duration files read into one table, and the
// estimates from it, which must be those of the same runs as maps.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cd/error.hpp"
#include "cd/shard.hpp"
#include "temp_file.hpp"

namespace cd::shard {
namespace {

using testing_support::TempFile;

// A run as a file's text, keys in the given order.
std::string file_text(const std::vector<std::pair<std::string, double>>& run) {
  std::string text = "{";
  for (const auto& [id, seconds] : run) {
    if (text.size() > 1) text += ", ";
    text += "\"" + id + "\": " + std::to_string(seconds);
  }
  return text + "}";
}

DurationHistory read_runs(const std::vector<std::string>& texts) {
  std::vector<std::unique_ptr<TempFile>> files;
  std::vector<std::string> paths;
  for (const auto& text : texts) {
    files.push_back(std::make_unique<TempFile>(text));
    paths.push_back(files.back()->path());
  }
  return DurationHistory::read(paths);
}

TEST(DurationHistory, EveryRunInOneTableInItsFilesOrder) {
  DurationHistory history = read_runs({
      R"({"a::1": 1, "b::1": 2})",
      R"({"b::1": 3, "c::1": 4, "b::1": 5, "a::1": 6})",
  });
  ASSERT_EQ(history.runs(), 2u);
  ASSERT_EQ(history.tests(), 3u);
  const auto a = *history.find("a::1"), b = *history.find("b::1"), c = *history.find("c::1");
  EXPECT_EQ(history.id(c), "c::1");
  EXPECT_FALSE(history.find("d::1"));
  EXPECT_EQ(history.tests_of(0),
            (std::vector<std::uint32_t>{static_cast<std::uint32_t>(a), static_cast<std::uint32_t>(b)}));
  EXPECT_EQ(history.tests_of(1),
            (std::vector<std::uint32_t>{static_cast<std::uint32_t>(b), static_cast<std::uint32_t>(c),
                                        static_cast<std::uint32_t>(a)}));
  EXPECT_EQ(history.seconds(0, b), 2.0);
  EXPECT_EQ(history.seconds(1, b), 5.0);  // the later duplicate wins
  EXPECT_FALSE(history.seconds(0, c));    // c is not in the first run
  EXPECT_EQ(history.seconds(1, c), 4.0);
}

TEST(DurationHistory, BadFileIsNamedAndNoFilesIsRefused) {
  TempFile good(R"({"a::1": 1})");
  TempFile bad(R"({"a::1": -1})");
  try {
    DurationHistory::read({good.path(), bad.path()});
    ADD_FAILURE() << "accepted a negative duration";
  } catch (const InvalidInput& error) {
    EXPECT_NE(std::string(error.what()).find(bad.path()), std::string::npos) << error.what();
  }
  EXPECT_THROW(DurationHistory::read({}), InvalidInput);
}

// Seven runs of a changing suite (tests added, dropped, reordered, some in
// no recent run), so that only the last five count and every estimate
// source occurs; the table must give exactly what the maps give.
TEST(DurationHistory, EstimatesEqualThoseFromTheSameRunsAsMaps) {
  std::mt19937 rng(7);
  std::lognormal_distribution<double> duration(-1.0, 1.0);
  std::bernoulli_distribution present(0.8);
  std::vector<std::string> texts;
  std::vector<DurationMap> maps;
  std::vector<std::string> newest;
  for (int run = 0; run < 7; ++run) {
    std::vector<std::pair<std::string, double>> entries;
    for (int i = 0; i < 3000 + 500 * run; ++i) {
      if (!present(rng)) continue;
      // Rounded as the file will hold them, so that both sides read the same figure.
      double seconds = std::stod(std::to_string(duration(rng)));
      entries.emplace_back("tests/test_" + std::to_string(i / 40) + ".py::test_" + std::to_string(i),
                           seconds);
    }
    if (run % 2 == 1) std::shuffle(entries.begin(), entries.end(), rng);
    texts.push_back(file_text(entries));
    maps.emplace_back(entries.begin(), entries.end());
    newest.clear();
    for (const auto& entry : entries) newest.push_back(entry.first);
  }
  DurationHistory history = read_runs(texts);
  std::vector<std::string> tests = {"tests/test_1.py::new", "tests/new.py::new"};
  for (int i = 0; i < 7000; i += 3) {
    tests.push_back("tests/test_" + std::to_string(i / 40) + ".py::test_" + std::to_string(i));
  }
  auto same = [](const std::vector<TestEstimate>& table, const std::vector<TestEstimate>& from_maps) {
    ASSERT_EQ(table.size(), from_maps.size());
    for (std::size_t k = 0; k < table.size(); ++k) {
      EXPECT_EQ(table[k].id, from_maps[k].id);
      EXPECT_EQ(table[k].seconds, from_maps[k].seconds) << table[k].id;
      EXPECT_EQ(table[k].source, from_maps[k].source) << table[k].id;
    }
  };
  same(estimate_durations(tests, history), estimate_durations(tests, maps));
  same(estimate_durations(history), estimate_durations(newest, maps));
  auto sources = estimate_durations(tests, history);
  EXPECT_EQ(sources[0].source, EstimateSource::FileMedian);
  EXPECT_EQ(sources[1].source, EstimateSource::GlobalMedian);
}

}  // namespace
}  // namespace cd::shard
