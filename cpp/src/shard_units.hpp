// What the shard engine's estimates, static plan and dispatcher share: the
// checks on test ids and durations, and the units (a whole file, or a single
// test of a file too long to keep together) that plan and dispatcher schedule.
// Internal to cpp/src; the public interface is cd/shard.hpp.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cd/error.hpp"
#include "cd/shard.hpp"

namespace cd::shard {

// The file part of a test id, as a view into it (see file_of).
std::string_view file_view(std::string_view test_id);

// Throws InvalidInput naming `where` and the test for a negative or
// non-finite duration.
void check_duration(double seconds, const std::string& test_id, const char* where);

// `id_of` projects an element to its test id, so callers need not copy ids.
// Sorting hashes beats a hash set here: one flat allocation instead of a node
// per id, which matters at a million tests.
template <typename Items, typename IdOf>
void check_unique(const Items& items, IdOf id_of) {
  std::vector<std::pair<std::size_t, std::size_t>> hashes;  // hash, index
  hashes.reserve(items.size());
  for (std::size_t index = 0; index < items.size(); ++index) {
    hashes.emplace_back(std::hash<std::string_view>{}(id_of(items[index])), index);
  }
  std::sort(hashes.begin(), hashes.end());
  for (std::size_t first = 0; first < hashes.size();) {
    std::size_t last = first + 1;
    while (last < hashes.size() && hashes[last].first == hashes[first].first) ++last;
    for (std::size_t a = first; a < last; ++a) {
      for (std::size_t b = a + 1; b < last; ++b) {
        const std::string& id = id_of(items[hashes[a].second]);
        if (id == id_of(items[hashes[b].second]))
          throw InvalidInput(fmt::format("test '{}' is listed twice", id));
      }
    }
    first = last;
  }
}

// What is scheduled: a whole file (its set-up paid once) or a single test of
// a file too long to keep together. Indices point into the estimates.
struct Unit {
  std::vector<std::size_t> tests;
  double estimate_s = 0.0;
};

// Longest first; ties by first test index so that plans are reproducible.
bool longer_first(const Unit& a, const Unit& b);

// Throws InvalidInput for an empty suite, a bad estimate or a duplicate id.
void check_estimates(const std::vector<TestEstimate>& tests);

// Files in order of first appearance; a file over `split_threshold_s` is
// split into its tests, and then the largest files are split until there are
// at least `min_units` units (no shard or worker need stay empty).
std::vector<Unit> make_units(const std::vector<TestEstimate>& tests, double split_threshold_s,
                             std::size_t min_units);

double total_estimate(const std::vector<TestEstimate>& tests);

}  // namespace cd::shard
