// The table behind DurationHistory, filled by the duration-file reader
// (shard_files.cpp) and read through DurationHistory's accessors
// (shard_history.cpp). Internal to cpp/src; the public interface is cd/shard.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string_view>
#include <vector>

#include "cd/shard.hpp"

namespace cd::shard {

struct DurationHistory::Table {
  // Test ids in order of first appearance, views into `text_blocks`.
  std::vector<std::string_view> ids;
  // Per run, per test: seconds, or kAbsent where the run lacks the test.
  std::vector<std::vector<double>> seconds;
  // Per run, its tests in its file's order.
  std::vector<std::vector<std::uint32_t>> order;

  // Starts a run (a file) expected to hold about `expected_tests` tests.
  void begin_run(std::size_t expected_tests);
  // Records one key of the current run: a later duplicate key's value wins
  // and keeps the first one's place, as in Python.
  void add(std::string_view id, double seconds_in_run);
  // Pads every run to the final number of tests.
  void finish();

  std::size_t find(std::string_view id) const;  // kNotFound when absent

  static constexpr std::size_t kNotFound = static_cast<std::size_t>(-1);
  // No duration is NaN: the reader refuses it.
  static constexpr double kAbsent = std::numeric_limits<double>::quiet_NaN();

 private:
  std::uint32_t intern(std::string_view id);
  std::string_view keep(std::string_view text);
  void grow_slots(std::size_t min_ids);

  // Open addressing with linear probing over a power-of-two array: a slot
  // holds the test's index + 1 (0 is empty) in its low half and the id's hash
  // in its high half, so that a probe past another id rarely reads its text.
  std::vector<std::uint64_t> slots_;
  // Copies of the ids in large blocks: one allocation per block, not per id.
  std::vector<std::unique_ptr<char[]>> text_blocks_;
  char* block_free_ = nullptr;
  std::size_t block_left_ = 0;
  // Where the previous key of this run was found: files of one suite list
  // their tests in much the same order, so the key after it is usually the
  // next test, checked by one comparison without hashing.
  std::size_t previous_ = kNotFound;
};

}  // namespace cd::shard
