#include "cd/shard.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <queue>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "cd/error.hpp"

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

const char* to_string(Verdict verdict) {
  switch (verdict) {
    case Verdict::Pending:
      return "pending";
    case Verdict::Passed:
      return "passed";
    case Verdict::Flaky:
      return "flaky";
    case Verdict::Failed:
      return "failed";
    case Verdict::Skipped:
      return "skipped";
  }
  return "unknown";
}

namespace {

std::string_view file_view(std::string_view test_id) { return test_id.substr(0, test_id.find("::")); }

}  // namespace

std::string file_of(const std::string& test_id) { return std::string(file_view(test_id)); }

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

void check_duration(double seconds, const std::string& test_id, const char* where) {
  if (!std::isfinite(seconds) || seconds < 0.0) {
    throw InvalidInput(fmt::format("{}: test '{}' has duration {} (must be a finite number of seconds >= 0)",
                                   where, test_id, seconds));
  }
}

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

// ------------------------------------------------------------------ units

namespace {

// What is scheduled: a whole file (its set-up paid once) or a single test of
// a file too long to keep together. Indices point into the estimates.
struct Unit {
  std::vector<std::size_t> tests;
  double estimate_s = 0.0;
};

// Longest first; ties by first test index so that plans are reproducible.
bool longer_first(const Unit& a, const Unit& b) {
  if (a.estimate_s != b.estimate_s) return a.estimate_s > b.estimate_s;
  return a.tests.front() < b.tests.front();
}

void check_estimates(const std::vector<TestEstimate>& tests) {
  if (tests.empty()) throw InvalidInput("no tests to schedule: the suite is empty");
  for (const auto& test : tests) check_duration(test.seconds, test.id, "estimate");
  check_unique(tests, [](const TestEstimate& test) -> const std::string& { return test.id; });
}

std::vector<Unit> split_into_singles(const Unit& unit, const std::vector<TestEstimate>& tests) {
  std::vector<Unit> singles;
  for (auto index : unit.tests) singles.push_back({{index}, tests[index].seconds});
  return singles;
}

// Files in order of first appearance; a file over `split_threshold_s` is
// split into its tests, and then the largest files are split until there are
// at least `min_units` units (no shard or worker need stay empty).
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

double longest_test(const std::vector<TestEstimate>& tests) {
  double longest = 0.0;
  for (const auto& test : tests) longest = std::max(longest, test.seconds);
  return longest;
}

double total_estimate(const std::vector<TestEstimate>& tests) {
  double total = 0.0;
  for (const auto& test : tests) total += test.seconds;
  return total;
}

// ------------------------------------------------------------ static plan

struct PlanShard {
  std::vector<std::size_t> units;
  double load = 0.0;
};

// Longest processing time first: each unit onto the least-loaded shard,
// ties to the shard with fewer units, then the lower index.
std::vector<PlanShard> assign_longest_first(const std::vector<Unit>& units, std::size_t shard_count) {
  using Key = std::tuple<double, std::size_t, std::size_t>;  // load, units, shard
  std::priority_queue<Key, std::vector<Key>, std::greater<>> least_loaded;
  for (std::size_t shard = 0; shard < shard_count; ++shard) least_loaded.emplace(0.0, 0, shard);
  std::vector<PlanShard> shards(shard_count);
  for (std::size_t unit = 0; unit < units.size(); ++unit) {
    auto [load, count, shard] = least_loaded.top();
    least_loaded.pop();
    shards[shard].units.push_back(unit);
    shards[shard].load = load + units[unit].estimate_s;
    least_loaded.emplace(shards[shard].load, count + 1, shard);
  }
  return shards;
}

// Below this, a change of makespan is rounding noise, not an improvement.
constexpr double kImprovementEpsilon = 1e-9;
// Partners tried for the fullest shard per pass, emptiest first: past the
// first few, a partner's gap is too small to help.
constexpr std::size_t kPartnersPerPass = 8;

struct Exchange {
  std::ptrdiff_t from_full = -1;   // position in the full shard's units
  std::ptrdiff_t from_other = -1;  // position in the partner's units, -1 for a move
  double pair_max = 0.0;
};

// The best move or swap between `full` and `other`: it shifts d = a - b from
// full to other, and the pair's new maximum is max(full - d, other + d).
Exchange best_exchange(const PlanShard& full, const PlanShard& other, const std::vector<Unit>& units) {
  Exchange best;
  best.pair_max = full.load;
  auto consider = [&](double shift, std::ptrdiff_t a, std::ptrdiff_t b) {
    double pair_max = std::max(full.load - shift, other.load + shift);
    if (pair_max < best.pair_max - kImprovementEpsilon) best = {a, b, pair_max};
  };
  std::vector<std::pair<double, std::ptrdiff_t>> partner_sizes;
  partner_sizes.reserve(other.units.size());
  for (std::size_t b = 0; b < other.units.size(); ++b) {
    partner_sizes.emplace_back(units[other.units[b]].estimate_s, static_cast<std::ptrdiff_t>(b));
  }
  std::sort(partner_sizes.begin(), partner_sizes.end());
  const double ideal_shift = (full.load - other.load) / 2.0;
  for (std::size_t a = 0; a < full.units.size(); ++a) {
    double size = units[full.units[a]].estimate_s;
    consider(size, static_cast<std::ptrdiff_t>(a), -1);
    // Swap partners whose size is nearest to size - ideal_shift.
    auto nearest = std::lower_bound(partner_sizes.begin(), partner_sizes.end(),
                                    std::make_pair(size - ideal_shift, std::ptrdiff_t{-1}));
    for (auto candidate : {nearest, nearest == partner_sizes.begin() ? nearest : std::prev(nearest)}) {
      if (candidate != partner_sizes.end()) {
        consider(size - candidate->first, static_cast<std::ptrdiff_t>(a), candidate->second);
      }
    }
  }
  return best;
}

void apply_exchange(PlanShard& full, PlanShard& other, const Exchange& exchange,
                    const std::vector<Unit>& units) {
  auto moved = full.units[static_cast<std::size_t>(exchange.from_full)];
  if (exchange.from_other >= 0) {
    auto swapped = other.units[static_cast<std::size_t>(exchange.from_other)];
    full.units[static_cast<std::size_t>(exchange.from_full)] = swapped;
    other.units[static_cast<std::size_t>(exchange.from_other)] = moved;
    double shift = units[moved].estimate_s - units[swapped].estimate_s;
    full.load -= shift;
    other.load += shift;
  } else {
    full.units.erase(full.units.begin() + exchange.from_full);
    other.units.push_back(moved);
    full.load -= units[moved].estimate_s;
    other.load += units[moved].estimate_s;
  }
}

// Moves and swaps between the fullest shard and the emptiest ones, while they
// lower the fullest shard. A move never empties a shard of its last unit, so
// the no-empty-shard guarantee of LPT holds.
void improve(std::vector<PlanShard>& shards, const std::vector<Unit>& units, int max_passes) {
  std::vector<std::size_t> order(shards.size());
  for (int pass = 0; pass < max_passes; ++pass) {
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](auto a, auto b) { return std::tie(shards[a].load, a) < std::tie(shards[b].load, b); });
    PlanShard& full = shards[order.back()];
    bool improved = false;
    for (std::size_t k = 0; k < std::min(kPartnersPerPass, order.size() - 1) && !improved; ++k) {
      PlanShard& other = shards[order[k]];
      auto exchange = best_exchange(full, other, units);
      bool would_empty = exchange.from_other < 0 && full.units.size() == 1;
      if (exchange.from_full >= 0 && !would_empty) {
        apply_exchange(full, other, exchange, units);
        improved = true;
      }
    }
    if (!improved) return;
  }
}

}  // namespace

double Plan::makespan_s() const {
  double makespan = 0.0;
  for (const auto& shard : shards) makespan = std::max(makespan, shard.estimate_s);
  return makespan;
}

Plan plan_static(const std::vector<TestEstimate>& tests, const PlanOptions& options) {
  if (options.shards < 1)
    throw InvalidInput(fmt::format("shards must be at least 1, got {}", options.shards));
  check_estimates(tests);
  const auto shard_count = static_cast<std::size_t>(options.shards);
  const double total = total_estimate(tests);
  const double share = total / static_cast<double>(shard_count);

  auto units = make_units(tests, options.split_file_fraction * share, shard_count);
  auto shards = assign_longest_first(units, shard_count);
  improve(shards, units, options.max_improvement_passes);

  Plan plan;
  plan.lower_bound_s = std::max(longest_test(tests), share);
  plan.shards.resize(shard_count);
  for (std::size_t shard = 0; shard < shard_count; ++shard) {
    auto& unit_indices = shards[shard].units;
    // Within a shard, longest first too: a failure in a long file shows early.
    std::sort(unit_indices.begin(), unit_indices.end());
    for (auto unit : unit_indices) {
      for (auto test : units[unit].tests) plan.shards[shard].tests.push_back(tests[test].id);
      plan.shards[shard].estimate_s += units[unit].estimate_s;
    }
  }
  return plan;
}

// ------------------------------------------------------------- dispatcher

namespace {

constexpr char kNoResultMessage[] = "no result reported for this test";

struct Item {
  std::vector<std::size_t> tests;
  double estimate_s = 0.0;  // as estimated before the run, unscaled
  bool retry = false;
  double guessed_s = 0.0;  // the part of estimate_s that is guessed, not history
};

bool guessed(const TestEstimate& test) { return test.source != EstimateSource::History; }

// Units of more than `max_tests` tests (a file of thousands of cases) become
// runs of at most `max_tests` consecutive tests, still longest first.
std::vector<Unit> cap_unit_sizes(std::vector<Unit> units, const std::vector<TestEstimate>& tests,
                                 std::size_t max_tests) {
  std::vector<Unit> capped;
  bool split = false;
  for (auto& unit : units) {
    if (unit.tests.size() <= max_tests) {
      capped.push_back(std::move(unit));
      continue;
    }
    split = true;
    for (std::size_t first = 0; first < unit.tests.size(); first += max_tests) {
      Unit part;
      for (std::size_t i = first; i < std::min(unit.tests.size(), first + max_tests); ++i) {
        part.tests.push_back(unit.tests[i]);
        part.estimate_s += tests[unit.tests[i]].seconds;
      }
      capped.push_back(std::move(part));
    }
  }
  if (split) std::sort(capped.begin(), capped.end(), longer_first);
  return capped;
}

struct InFlight {
  std::string worker;
  std::vector<std::size_t> tests;
  double started_s = 0.0;
  double estimate_s = 0.0;
  bool speculative = false;
  bool copied = false;  // a straggler copy of it runs elsewhere
  // estimate_s split as the queue keeps it, so that a recalibration applies
  // to batches already running too.
  double known_s = 0.0;
  double guessed_s = 0.0;
};

struct TestState {
  Verdict verdict = Verdict::Pending;
  int failures = 0;
  int copies_in_flight = 0;
  bool queued = false;  // waiting in the requeued list
  std::vector<Attempt> attempts;
};

}  // namespace

struct Dispatcher::State {
  mutable std::mutex mutex;
  DispatchOptions options;
  std::vector<TestEstimate> tests;
  std::vector<TestState> test_states;
  std::vector<Item> fresh;  // longest first; consumed from next_fresh
  std::size_t next_fresh = 0;
  // Retries and lost batches, longest first; the first eligible one is
  // almost always at the front, since only re-runs exclude workers.
  std::multimap<double, Item, std::greater<>> requeued;
  std::unordered_map<std::uint64_t, InFlight> in_flight;
  std::unordered_set<std::string> live_workers;
  std::uint64_t next_batch_id = 1;
  DispatchStats stats;
  BatchCostModel cost;
  // Queued work, split so that the guessed part can be rescaled.
  double queued_known_s = 0.0;
  double queued_guessed_s = 0.0;

  void accept(const std::string& worker, std::uint64_t batch_id, const std::vector<TestResult>& results,
              std::optional<double> wall_s);

  double scale() const { return options.recalibrate ? cost.guess_scale() : 1.0; }

  double estimate_of(std::size_t test) const {
    return guessed(tests[test]) ? tests[test].seconds * scale() : tests[test].seconds;
  }

  double estimate_of(const Item& item) const {
    return item.estimate_s - item.guessed_s + item.guessed_s * scale();
  }

  double queued_estimate_s() const { return queued_known_s + queued_guessed_s * scale(); }

  void enqueue_figures(const Item& item, double sign) {
    queued_known_s = std::max(0.0, queued_known_s + sign * (item.estimate_s - item.guessed_s));
    queued_guessed_s = std::max(0.0, queued_guessed_s + sign * item.guessed_s);
  }

  bool tried_by(std::size_t test, const std::string& worker) const {
    const auto& attempts = test_states[test].attempts;
    return std::any_of(attempts.begin(), attempts.end(),
                       [&](const Attempt& a) { return a.worker == worker; });
  }

  // A re-run goes to a worker that has not run the test yet, unless every
  // live worker has: then any worker beats waiting for ever.
  bool may_run(const Item& item, const std::string& worker) const {
    if (!item.retry) return true;
    for (auto test : item.tests) {
      if (!tried_by(test, worker)) continue;
      bool someone_else =
          std::any_of(live_workers.begin(), live_workers.end(),
                      [&](const std::string& other) { return other != worker && !tried_by(test, other); });
      if (someone_else) return false;
    }
    return true;
  }

  // The longest eligible item, fresh or requeued, without taking it: the
  // requeued entry, or requeued.end() for the next fresh one; nullopt if none.
  std::optional<std::multimap<double, Item, std::greater<>>::iterator> peek_longest(
      const std::string& worker) {
    auto eligible = std::find_if(requeued.begin(), requeued.end(),
                                 [&](const auto& entry) { return may_run(entry.second, worker); });
    bool have_fresh = next_fresh < fresh.size();
    if (eligible != requeued.end() && (!have_fresh || eligible->first >= fresh[next_fresh].estimate_s)) {
      return eligible;
    }
    if (have_fresh) return requeued.end();
    return std::nullopt;
  }

  const Item& peeked(std::multimap<double, Item, std::greater<>>::iterator where) const {
    return where == requeued.end() ? fresh[next_fresh] : where->second;
  }

  Item take(std::multimap<double, Item, std::greater<>>::iterator where) {
    Item taken;
    if (where == requeued.end()) {
      taken = std::move(fresh[next_fresh++]);
    } else {
      taken = std::move(where->second);
      requeued.erase(where);
    }
    enqueue_figures(taken, -1.0);
    for (auto test : taken.tests) test_states[test].queued = false;
    return taken;
  }

  // Work not yet done: the queue, and what running batches have left.
  double remaining_work_s(double now_s) const {
    double work = queued_estimate_s();
    for (const auto& [id, flight] : in_flight) {
      if (flight.speculative) continue;  // its tests are counted in the original
      work += std::max(0.0, flight.started_s + flight.known_s + flight.guessed_s * scale() - now_s);
    }
    return work;
  }

  // Guided self-scheduling: a share of what is left, shrinking as it drains.
  // With a start-up to pay, a worker's share of the remaining work is cut
  // into equal batches each worth kBatchWorthFactor start-ups (one batch if
  // the share is smaller): equal cuts end every worker's last batch together,
  // where a fixed size would leave a remainder to one worker.
  double batch_target_s(const std::string& worker, double now_s) const {
    const double workers = std::max(1, options.workers);
    double target = std::max(options.min_batch_s, queued_estimate_s() / (kGuidedDivisor * workers));
    const double overhead = cost.overhead_s(worker);
    if (overhead > 0.0) {
      const double share = remaining_work_s(now_s) / workers;
      const double batches = std::max(1.0, std::floor(share / (kBatchWorthFactor * overhead)));
      target = std::max(target, share / batches);
    }
    return target;
  }

  Assignment hand_out(const std::string& worker, double now_s, InFlight flight, bool retry) {
    Assignment assignment;
    assignment.kind = Assignment::Kind::Run;
    flight.known_s = flight.guessed_s = 0.0;
    for (auto test : flight.tests)
      (guessed(tests[test]) ? flight.guessed_s : flight.known_s) += tests[test].seconds;
    flight.estimate_s = flight.known_s + flight.guessed_s * scale();
    assignment.batch.id = next_batch_id++;
    assignment.batch.estimate_s = flight.estimate_s;
    assignment.batch.speculative = flight.speculative;
    assignment.batch.retry = retry;
    for (auto test : flight.tests) {
      assignment.batch.tests.push_back(tests[test].id);
      ++test_states[test].copies_in_flight;
    }
    flight.worker = worker;
    flight.started_s = now_s;
    in_flight.emplace(assignment.batch.id, std::move(flight));
    ++stats.batches_handed_out;
    stats.batches_in_flight = in_flight.size();
    return assignment;
  }

  // Longest first up to the target, never past max_batch_tests (no unit is
  // larger than that: see cap_unit_sizes), and at least one item.
  std::optional<Assignment> from_queue(const std::string& worker, double now_s) {
    const double target = batch_target_s(worker, now_s);
    const auto cap = static_cast<std::size_t>(options.max_batch_tests);
    InFlight flight;
    bool retry = false;
    while (flight.tests.empty() || flight.estimate_s < target) {
      auto where = peek_longest(worker);
      if (!where) break;
      if (!flight.tests.empty() && flight.tests.size() + peeked(*where).tests.size() > cap) break;
      Item item = take(*where);
      flight.tests.insert(flight.tests.end(), item.tests.begin(), item.tests.end());
      flight.estimate_s += estimate_of(item);
      retry = retry || item.retry;
    }
    if (flight.tests.empty()) return std::nullopt;
    return hand_out(worker, now_s, std::move(flight), retry);
  }

  std::vector<std::size_t> unresolved(const std::vector<std::size_t>& batch_tests) const {
    std::vector<std::size_t> open;
    for (auto test : batch_tests) {
      if (test_states[test].verdict == Verdict::Pending) open.push_back(test);
    }
    return open;
  }

  // Nothing queued: copy the in-flight batch expected to finish last, if it
  // is still far enough from done to be worth a second worker.
  std::optional<Assignment> straggler_copy(const std::string& worker, double now_s) {
    if (!options.speculate) return std::nullopt;
    while (InFlight* latest = latest_finishing(worker, now_s)) {
      auto open = unresolved(latest->tests);
      bool tried_here =
          std::any_of(open.begin(), open.end(), [&](auto test) { return tried_by(test, worker); });
      if (open.empty() || tried_here) {
        latest->copied = true;  // not worth copying; do not look at it again
        continue;
      }
      InFlight copy;
      copy.tests = std::move(open);
      copy.speculative = true;
      latest->copied = true;
      ++stats.speculative_batches;
      return hand_out(worker, now_s, std::move(copy), false);
    }
    return std::nullopt;
  }

  // The in-flight batch of another worker expected to finish last, if it is
  // far enough from done to be worth a second worker.
  InFlight* latest_finishing(const std::string& worker, double now_s) {
    InFlight* latest = nullptr;
    for (auto& [id, flight] : in_flight) {
      if (flight.speculative || flight.copied || flight.worker == worker) continue;
      // The copy pays this worker's start-up first: it can only win against
      // an original expected to need longer than that (its own start-up included).
      double finish = flight.started_s + flight.estimate_s + cost.overhead_s(flight.worker);
      if (finish - now_s < options.min_speculation_s + cost.overhead_s(worker)) continue;
      if (latest == nullptr || finish > latest->started_s + latest->estimate_s ||
          (finish == latest->started_s + latest->estimate_s && flight.tests < latest->tests)) {
        latest = &flight;
      }
    }
    return latest;
  }

  void resolve(std::size_t test, Verdict verdict) {
    test_states[test].verdict = verdict;
    ++stats.resolved;
    if (verdict == Verdict::Passed) ++stats.passed;
    if (verdict == Verdict::Flaky) ++stats.flaky;
    if (verdict == Verdict::Failed) ++stats.failed;
    if (verdict == Verdict::Skipped) ++stats.skipped;
  }

  void record(std::size_t test, Attempt attempt) {
    auto& state = test_states[test];
    if (state.verdict != Verdict::Pending) return;  // another copy decided it first
    bool passed = attempt.passed;
    bool skipped = attempt.skipped;
    state.attempts.push_back(std::move(attempt));
    if (skipped) {
      resolve(test, state.failures > 0 ? Verdict::Flaky : Verdict::Skipped);
      return;
    }
    if (passed) {
      resolve(test, state.failures > 0 ? Verdict::Flaky : Verdict::Passed);
      return;
    }
    ++state.failures;
    if (state.copies_in_flight > 0) return;  // the copy still running is the re-run
    if (static_cast<int>(state.attempts.size()) >= options.max_attempts) {
      resolve(test, Verdict::Failed);
    } else {
      requeue({test}, true);
    }
  }

  void requeue(std::vector<std::size_t> batch_tests, bool retry) {
    Item item;
    item.retry = retry;
    for (auto test : batch_tests) {
      item.estimate_s += tests[test].seconds;
      if (guessed(tests[test])) item.guessed_s += tests[test].seconds;
      test_states[test].queued = true;
    }
    item.tests = std::move(batch_tests);
    enqueue_figures(item, 1.0);
    double estimate = item.estimate_s;
    requeued.emplace(estimate, std::move(item));
  }

  std::unordered_map<std::uint64_t, InFlight>::iterator find_in_flight(const std::string& worker,
                                                                       std::uint64_t batch_id) {
    auto found = in_flight.find(batch_id);
    if (found == in_flight.end() || found->second.worker != worker) {
      throw InvalidState(fmt::format("batch {} is not in flight on worker '{}'", batch_id, worker));
    }
    return found;
  }

  InFlight finish(const std::string& worker, std::uint64_t batch_id) {
    auto found = find_in_flight(worker, batch_id);
    InFlight flight = std::move(found->second);
    in_flight.erase(found);
    stats.batches_in_flight = in_flight.size();
    for (auto test : flight.tests) --test_states[test].copies_in_flight;
    return flight;
  }

  // A test whose failed attempt waited on a copy that has now gone away
  // (lost, or failed too) needs its re-run or its verdict now.
  void settle_after_copy(std::size_t test) {
    auto& state = test_states[test];
    if (state.verdict != Verdict::Pending || state.copies_in_flight > 0 || state.failures == 0) return;
    if (static_cast<int>(state.attempts.size()) >= options.max_attempts) {
      resolve(test, Verdict::Failed);
    } else if (!state.queued) {
      requeue({test}, true);
    }
  }
};

Dispatcher::Dispatcher(std::vector<TestEstimate> tests, DispatchOptions options)
    : state_(std::make_unique<State>()) {
  if (options.workers < 1)
    throw InvalidInput(fmt::format("workers must be at least 1, got {}", options.workers));
  if (options.max_attempts < 1) {
    throw InvalidInput(fmt::format("max_attempts must be at least 1, got {}", options.max_attempts));
  }
  if (!std::isfinite(options.batch_overhead_s) || options.batch_overhead_s < 0.0) {
    throw InvalidInput(fmt::format("batch_overhead_s must be a finite number of seconds >= 0, got {}",
                                   options.batch_overhead_s));
  }
  if (options.max_batch_tests < 1) {
    throw InvalidInput(fmt::format("max_batch_tests must be at least 1, got {}", options.max_batch_tests));
  }
  check_estimates(tests);
  auto& state = *state_;
  state.options = options;
  const double share = total_estimate(tests) / options.workers;
  auto units = cap_unit_sizes(
      make_units(tests, options.split_file_fraction * share, static_cast<std::size_t>(options.workers)),
      tests, static_cast<std::size_t>(options.max_batch_tests));
  state.cost = BatchCostModel(options.batch_overhead_s);
  for (auto& unit : units) {
    Item item{std::move(unit.tests), unit.estimate_s, false};
    for (auto test : item.tests) {
      if (guessed(tests[test])) item.guessed_s += tests[test].seconds;
    }
    state.enqueue_figures(item, 1.0);
    state.fresh.push_back(std::move(item));
  }
  state.test_states.resize(tests.size());
  state.stats.tests = tests.size();
  state.tests = std::move(tests);
}

Dispatcher::~Dispatcher() = default;

Assignment Dispatcher::next_batch(const std::string& worker, double now_s) {
  std::lock_guard lock(state_->mutex);
  auto& state = *state_;
  state.live_workers.insert(worker);
  if (state.stats.resolved == state.stats.tests) return Assignment{Assignment::Kind::Done, {}};
  if (auto assignment = state.from_queue(worker, now_s)) return std::move(*assignment);
  if (auto assignment = state.straggler_copy(worker, now_s)) return std::move(*assignment);
  return Assignment{Assignment::Kind::Wait, {}};
}

void Dispatcher::report(const std::string& worker, std::uint64_t batch_id,
                        const std::vector<TestResult>& results) {
  std::lock_guard lock(state_->mutex);
  state_->accept(worker, batch_id, results, std::nullopt);
}

void Dispatcher::report(const std::string& worker, std::uint64_t batch_id,
                        const std::vector<TestResult>& results, double wall_s) {
  std::lock_guard lock(state_->mutex);
  state_->accept(worker, batch_id, results, wall_s);
}

// The results of a batch; `wall_s` when the caller timed it. Under the lock.
void Dispatcher::State::accept(const std::string& worker, std::uint64_t batch_id,
                               const std::vector<TestResult>& results, std::optional<double> wall_s) {
  auto& state = *this;
  // Everything is checked before anything changes: a refused report leaves
  // the batch in flight, so the caller can still fail it with report_error
  // instead of its tests being neither recorded nor queued (a stalled run).
  state.find_in_flight(worker, batch_id);
  for (const auto& result : results) check_duration(result.seconds, result.id, "result");
  if (wall_s && (!std::isfinite(*wall_s) || *wall_s < 0.0)) {
    throw InvalidInput(
        fmt::format("batch {}: wall time {} (must be a finite number of seconds >= 0)", batch_id, *wall_s));
  }
  InFlight flight = state.finish(worker, batch_id);
  std::unordered_map<std::string_view, const TestResult*> by_id;
  for (const auto& result : results) by_id.emplace(result.id, &result);
  double tests_s = 0.0;
  std::size_t answered = 0;
  for (auto test : flight.tests) {
    auto found = by_id.find(state.tests[test].id);
    if (found == by_id.end()) {
      state.record(test, {worker, false, 0.0, kNoResultMessage});
    } else {
      const TestResult& result = *found->second;
      tests_s += result.seconds;
      ++answered;
      if (guessed(state.tests[test])) state.cost.observe_guessed(state.tests[test].seconds, result.seconds);
      state.record(
          test, {worker, result.passed && !result.skipped, result.seconds, result.message, result.skipped});
    }
    state.settle_after_copy(test);
  }
  // Only a batch that ran to the end says what its start-up costs.
  if (wall_s && answered == flight.tests.size()) state.cost.observe_batch(worker, *wall_s, tests_s);
}

void Dispatcher::report_error(const std::string& worker, std::uint64_t batch_id, const std::string& message) {
  std::lock_guard lock(state_->mutex);
  auto& state = *state_;
  InFlight flight = state.finish(worker, batch_id);
  for (auto test : flight.tests) {
    state.record(test, {worker, false, 0.0, message});
    state.settle_after_copy(test);
  }
}

void Dispatcher::worker_lost(const std::string& worker) {
  std::lock_guard lock(state_->mutex);
  auto& state = *state_;
  state.live_workers.erase(worker);
  std::vector<std::uint64_t> lost;
  for (const auto& [id, flight] : state.in_flight) {
    if (flight.worker == worker) lost.push_back(id);
  }
  std::sort(lost.begin(), lost.end());
  for (auto id : lost) {
    InFlight flight = state.finish(worker, id);
    std::vector<std::size_t> orphaned;
    for (auto test : flight.tests) {
      const auto& test_state = state.test_states[test];
      if (test_state.verdict != Verdict::Pending || test_state.copies_in_flight > 0) continue;
      if (test_state.failures > 0) {
        state.settle_after_copy(test);  // it was this batch's job to re-run it
      } else {
        orphaned.push_back(test);
      }
    }
    if (!orphaned.empty()) {
      state.requeue(std::move(orphaned), false);
      ++state.stats.requeued_batches;
    }
  }
}

bool Dispatcher::batch_obsolete(std::uint64_t batch_id) const {
  std::lock_guard lock(state_->mutex);
  auto found = state_->in_flight.find(batch_id);
  return found == state_->in_flight.end() || state_->unresolved(found->second.tests).empty();
}

bool Dispatcher::done() const {
  std::lock_guard lock(state_->mutex);
  return state_->stats.resolved == state_->stats.tests;
}

DispatchStats Dispatcher::stats() const {
  std::lock_guard lock(state_->mutex);
  DispatchStats stats = state_->stats;
  stats.queued_estimate_s = state_->queued_estimate_s();
  stats.batch_overhead_s = state_->cost.overhead_s();
  stats.estimate_scale = state_->scale();
  return stats;
}

std::unordered_map<std::string, double> Dispatcher::overhead_by_worker() const {
  std::lock_guard lock(state_->mutex);
  return state_->cost.overhead_by_worker();
}

std::vector<TestOutcome> Dispatcher::outcomes() const {
  std::lock_guard lock(state_->mutex);
  const auto& state = *state_;
  std::vector<TestOutcome> outcomes;
  outcomes.reserve(state.tests.size());
  for (std::size_t test = 0; test < state.tests.size(); ++test) {
    const auto& test_state = state.test_states[test];
    outcomes.push_back(
        {state.tests[test].id, test_state.verdict, state.tests[test].seconds, test_state.attempts});
  }
  return outcomes;
}

}  // namespace cd::shard
