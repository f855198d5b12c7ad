// The shard engine's duration estimates: each test's from its own recent
// runs, else from the median of its file or of the whole suite.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <boost/math/statistics/univariate_statistics.hpp>
#include <cmath>
#include <numeric>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

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

// One test's durations in the recent runs, oldest first: on the stack, since
// every test of a million has them.
struct RecentRuns {
  std::array<double, kRecentRunsConsidered> seconds{};
  std::size_t count = 0;
  void add(double value) { seconds[count++] = value; }
};

// The lower of the two middle values: a median that is one of the values.
double lower_median(std::vector<double> values) {
  auto middle = values.begin() + static_cast<std::ptrdiff_t>((values.size() - 1) / 2);
  std::nth_element(values.begin(), middle, values.end());
  return *middle;
}

// The mean of the recent runs without the slowest one: a single slow outlier
// is dropped, but a test that is often slow keeps that risk in its estimate.
double trimmed_mean(RecentRuns runs) {
  const auto begin = runs.seconds.begin();
  const auto end = begin + static_cast<std::ptrdiff_t>(runs.count);
  if (runs.count <= 2) return *std::min_element(begin, end);  // nothing to average
  std::iter_swap(std::max_element(begin, end), end - 1);
  double sum = std::accumulate(begin, end - 1, 0.0);
  return sum / static_cast<double>(runs.count - 1);
}

// The standard deviation of the recent runs, slowest included (a test that
// is sometimes far slower is what makes a suite unpredictable); unknown
// with fewer than two.
std::optional<double> spread_of(const RecentRuns& runs) {
  if (runs.count < 2) return std::nullopt;
  const auto begin = runs.seconds.begin();
  return std::sqrt(
      boost::math::statistics::sample_variance(begin, begin + static_cast<std::ptrdiff_t>(runs.count)));
}

// The runs an estimate looks at: the most recent ones.
std::size_t first_recent_run(std::size_t runs) {
  return runs > kRecentRunsConsidered ? runs - kRecentRunsConsidered : 0;
}

// A malformed file is an error wherever it sits in the history.
void check_history(const std::vector<DurationMap>& history) {
  for (std::size_t run = 0; run < history.size(); ++run) {
    auto where = fmt::format("history run {}", run + 1);
    for (const auto& [test_id, seconds] : history[run]) check_duration(seconds, test_id, where.c_str());
  }
}

// Lookups only: at a million tests, building a map of every test's runs
// costs more than this.
RecentRuns recent_runs(const std::string& test_id, const std::vector<DurationMap>& history) {
  RecentRuns runs;
  for (auto run = first_recent_run(history.size()); run < history.size(); ++run) {
    if (auto hit = history[run].find(test_id); hit != history[run].end()) runs.add(hit->second);
  }
  return runs;
}

RecentRuns recent_runs(std::size_t test, const DurationHistory& history) {
  RecentRuns runs;
  for (auto run = first_recent_run(history.runs()); run < history.runs(); ++run) {
    if (auto seconds = history.seconds(run, test)) runs.add(*seconds);
  }
  return runs;
}

// Estimates for tests with no runs of their own: the median of the known
// tests of their file, else of all known tests. Built only when a test needs
// it, from `for_each_known(visit)`, which calls visit(test id, recent runs)
// once for each test that has any.
class NewTestEstimates {
 public:
  template <typename ForEachKnown>
  explicit NewTestEstimates(const ForEachKnown& for_each_known) {
    std::unordered_map<std::string_view, std::vector<double>> known_by_file;
    std::vector<double> all_known;
    for_each_known([&](std::string_view test_id, RecentRuns runs) {
      double seconds = trimmed_mean(runs);
      known_by_file[file_view(test_id)].push_back(seconds);
      all_known.push_back(seconds);
    });
    for (auto& [file, seconds] : known_by_file) file_median_.emplace(file, lower_median(std::move(seconds)));
    if (!all_known.empty()) global_median_ = lower_median(std::move(all_known));
  }

  TestEstimate estimate(std::string_view test_id) const {
    if (auto file = file_median_.find(std::string(file_view(test_id))); file != file_median_.end()) {
      return {std::string(test_id), file->second, EstimateSource::FileMedian, std::nullopt};
    }
    if (global_median_)
      return {std::string(test_id), *global_median_, EstimateSource::GlobalMedian, std::nullopt};
    return {std::string(test_id), kDefaultEstimateSeconds, EstimateSource::Default, std::nullopt};
  }

 private:
  std::unordered_map<std::string, double> file_median_;
  std::optional<double> global_median_;
};

// One estimate for each of `count` tests: test k is id_of(k), its recent
// runs runs_of(k); `for_each_known` as NewTestEstimates takes it.
template <typename IdOf, typename RunsOf, typename ForEachKnown>
std::vector<TestEstimate> estimate_each(std::size_t count, const IdOf& id_of, const RunsOf& runs_of,
                                        const ForEachKnown& for_each_known) {
  std::optional<NewTestEstimates> new_tests;
  std::vector<TestEstimate> estimates;
  estimates.reserve(count);
  for (std::size_t k = 0; k < count; ++k) {
    const RecentRuns runs = runs_of(k);
    if (runs.count > 0) {
      estimates.push_back(
          {std::string(id_of(k)), trimmed_mean(runs), EstimateSource::History, spread_of(runs)});
      continue;
    }
    if (!new_tests) new_tests.emplace(for_each_known);
    estimates.push_back(new_tests->estimate(id_of(k)));
  }
  return estimates;
}

// The known tests of a history read by the core, for NewTestEstimates.
auto known_tests_of(const DurationHistory& history) {
  return [&history](const auto& visit) {
    for (std::size_t test = 0; test < history.tests(); ++test) {
      const RecentRuns runs = recent_runs(test, history);
      if (runs.count > 0) visit(history.id(test), runs);
    }
  };
}

}  // namespace

std::vector<TestEstimate> estimate_durations(const std::vector<std::string>& tests,
                                             const std::vector<DurationMap>& history) {
  check_unique(tests, [](const std::string& id) -> const std::string& { return id; });
  check_history(history);
  auto known = [&history](const auto& visit) {
    std::unordered_set<std::string_view> seen;
    for (auto run = first_recent_run(history.size()); run < history.size(); ++run) {
      for (const auto& [test_id, ignored] : history[run]) {
        if (seen.insert(test_id).second) visit(test_id, recent_runs(test_id, history));
      }
    }
  };
  return estimate_each(
      tests.size(), [&](std::size_t k) -> const std::string& { return tests[k]; },
      [&](std::size_t k) { return recent_runs(tests[k], history); }, known);
}

std::vector<TestEstimate> estimate_durations(const std::vector<std::string>& tests,
                                             const DurationHistory& history) {
  check_unique(tests, [](const std::string& id) -> const std::string& { return id; });
  auto runs_of = [&](std::size_t k) {
    auto test = history.find(tests[k]);
    return test ? recent_runs(*test, history) : RecentRuns{};
  };
  return estimate_each(
      tests.size(), [&](std::size_t k) -> const std::string& { return tests[k]; }, runs_of,
      known_tests_of(history));
}

std::vector<TestEstimate> estimate_durations(const DurationHistory& history) {
  const auto& newest = history.tests_of(history.runs() - 1);
  return estimate_each(
      newest.size(), [&](std::size_t k) { return history.id(newest[k]); },
      [&](std::size_t k) { return recent_runs(newest[k], history); }, known_tests_of(history));
}

}  // namespace cd::shard
