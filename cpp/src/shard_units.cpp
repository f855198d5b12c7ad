// The units the static plan and the dispatcher schedule: whole files, split
// into single tests where one file would hold up the rest.
#include "shard_units.hpp"

#include <algorithm>
#include <string_view>
#include <unordered_map>

#include "cd/error.hpp"
#include "cd/shard.hpp"

namespace cd::shard {

bool longer_first(const Unit& a, const Unit& b) {
  if (a.estimate_s != b.estimate_s) return a.estimate_s > b.estimate_s;
  return a.tests.front() < b.tests.front();
}

void check_estimates(const std::vector<TestEstimate>& tests) {
  if (tests.empty()) throw InvalidInput("no tests to schedule: the suite is empty");
  for (const auto& test : tests) {
    check_duration(test.seconds, test.id, "estimate");
    if (test.spread_s) check_duration(*test.spread_s, test.id, "spread");
  }
  check_unique(tests, [](const TestEstimate& test) -> const std::string& { return test.id; });
}

namespace {

std::vector<Unit> split_into_singles(const Unit& unit, const std::vector<TestEstimate>& tests) {
  std::vector<Unit> singles;
  for (auto index : unit.tests) singles.push_back({{index}, tests[index].seconds});
  return singles;
}

}  // namespace

std::vector<Unit> make_units(const std::vector<TestEstimate>& tests, double split_threshold_s,
                             std::size_t min_units) {
  std::unordered_map<std::string_view, std::size_t> unit_of_file;
  unit_of_file.reserve(tests.size());
  std::vector<Unit> files;
  for (std::size_t index = 0; index < tests.size(); ++index) {
    auto [slot, added] = unit_of_file.try_emplace(file_view(tests[index].id), files.size());
    if (added) files.emplace_back();
    files[slot->second].tests.push_back(index);
    files[slot->second].estimate_s += tests[index].seconds;
  }
  std::vector<Unit> units;
  units.reserve(files.size());
  for (auto& file : files) {
    if (file.tests.size() > 1 && file.estimate_s > split_threshold_s) {
      for (auto& single : split_into_singles(file, tests)) units.push_back(std::move(single));
    } else {
      units.push_back(std::move(file));
    }
  }
  std::sort(units.begin(), units.end(), longer_first);
  while (units.size() < min_units) {
    auto splittable =
        std::find_if(units.begin(), units.end(), [](const Unit& u) { return u.tests.size() > 1; });
    if (splittable == units.end()) break;
    auto singles = split_into_singles(*splittable, tests);
    units.erase(splittable);
    for (auto& single : singles) units.push_back(std::move(single));
    std::sort(units.begin(), units.end(), longer_first);
  }
  return units;
}

double total_estimate(const std::vector<TestEstimate>& tests) {
  double total = 0.0;
  for (const auto& test : tests) total += test.seconds;
  return total;
}

}  // namespace cd::shard
