// The shard engine's duration estimates: each test's from its own recent
// runs, else from the median of its file or of the whole suite.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "cd/error.hpp"
#include "cd/shard.hpp"
#include "shard_units.hpp"

namespace cd::shard {

const char* to_string(EstimateSource source) {
  switch (source) {
    case EstimateSource::History:
      return "history";
    case EstimateSource::FileMedian:
      return "file_median";
    case EstimateSource::GlobalMedian:
      return "global_median";
    case EstimateSource::Default:
      return "default";
  }
  return "unknown";
}

std::string_view file_view(std::string_view test_id) { return test_id.substr(0, test_id.find("::")); }

std::string file_of(const std::string& test_id) { return std::string(file_view(test_id)); }

void check_duration(double seconds, const std::string& test_id, const char* where) {
  if (!std::isfinite(seconds) || seconds < 0.0) {
    throw InvalidInput(fmt::format("{}: test '{}' has duration {} (must be a finite number of seconds >= 0)",
                                   where, test_id, seconds));
  }
}

namespace {

// The lower of the two middle values: a median that is one of the values.
double lower_median(std::vector<double> values) {
  auto middle = values.begin() + static_cast<std::ptrdiff_t>((values.size() - 1) / 2);
  std::nth_element(values.begin(), middle, values.end());
  return *middle;
}

// The mean of the recent runs without the slowest one: a single slow outlier
// is dropped, but a test that is often slow keeps that risk in its estimate.
double trimmed_mean(std::vector<double> values) {
  if (values.size() <= 2) return *std::min_element(values.begin(), values.end());  // nothing to average
  std::iter_swap(std::max_element(values.begin(), values.end()), values.end() - 1);
  double sum = std::accumulate(values.begin(), values.end() - 1, 0.0);
  return sum / static_cast<double>(values.size() - 1);
}

// The runs an estimate looks at: the most recent ones.
std::size_t first_recent_run(const std::vector<DurationMap>& history) {
  return history.size() > kRecentRunsConsidered ? history.size() - kRecentRunsConsidered : 0;
}

// A malformed file is an error wherever it sits in the history.
void check_history(const std::vector<DurationMap>& history) {
  for (std::size_t run = 0; run < history.size(); ++run) {
    auto where = fmt::format("history run {}", run + 1);
    for (const auto& [test_id, seconds] : history[run]) check_duration(seconds, test_id, where.c_str());
  }
}

// A test's estimate from its recent runs, if it has any. Lookups only: at a
// million tests, building a map of every test's runs costs more than this.
std::optional<double> estimate_from_runs(const std::string& test_id,
                                         const std::vector<DurationMap>& history) {
  std::vector<double> seconds;
  for (auto run = first_recent_run(history); run < history.size(); ++run) {
    if (auto hit = history[run].find(test_id); hit != history[run].end()) seconds.push_back(hit->second);
  }
  if (seconds.empty()) return std::nullopt;
  return trimmed_mean(std::move(seconds));
}

// Estimates for tests with no runs of their own: the median of the known
// tests of their file, else of all known tests. Built only when a test needs it.
class NewTestEstimates {
 public:
  explicit NewTestEstimates(const std::vector<DurationMap>& history) {
    std::unordered_map<std::string_view, bool> seen;
    std::unordered_map<std::string_view, std::vector<double>> known_by_file;
    std::vector<double> all_known;
    for (auto run = first_recent_run(history); run < history.size(); ++run) {
      for (const auto& [test_id, ignored] : history[run]) {
        if (!seen.emplace(test_id, true).second) continue;
        double seconds = *estimate_from_runs(test_id, history);
        known_by_file[file_view(test_id)].push_back(seconds);
        all_known.push_back(seconds);
      }
    }
    for (auto& [file, seconds] : known_by_file) file_median_.emplace(file, lower_median(std::move(seconds)));
    if (!all_known.empty()) global_median_ = lower_median(std::move(all_known));
  }

  TestEstimate estimate(const std::string& test_id) const {
    if (auto file = file_median_.find(std::string(file_view(test_id))); file != file_median_.end()) {
      return {test_id, file->second, EstimateSource::FileMedian};
    }
    if (global_median_) return {test_id, *global_median_, EstimateSource::GlobalMedian};
    return {test_id, kDefaultEstimateSeconds, EstimateSource::Default};
  }

 private:
  std::unordered_map<std::string, double> file_median_;
  std::optional<double> global_median_;
};

}  // namespace

std::vector<TestEstimate> estimate_durations(const std::vector<std::string>& tests,
                                             const std::vector<DurationMap>& history) {
  check_unique(tests, [](const std::string& id) -> const std::string& { return id; });
  check_history(history);
  std::optional<NewTestEstimates> new_tests;
  std::vector<TestEstimate> estimates;
  estimates.reserve(tests.size());
  for (const auto& test_id : tests) {
    if (auto seconds = estimate_from_runs(test_id, history)) {
      estimates.push_back({test_id, *seconds, EstimateSource::History});
      continue;
    }
    if (!new_tests) new_tests.emplace(history);
    estimates.push_back(new_tests->estimate(test_id));
  }
  return estimates;
}

}  // namespace cd::shard
