// The dispatcher's state, shared by the two halves of its work: choosing what
// a worker gets next (shard_dispatch_queue.cpp) and recording what comes back
// (shard_dispatch.cpp). Internal to cpp/src; the public interface is cd/shard.hpp.
// Every member is used under `mutex`.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cd/shard.hpp"

namespace cd::shard {

struct Item {
  std::vector<std::size_t> tests;
  double estimate_s = 0.0;  // as estimated before the run, unscaled
  bool retry = false;
  // Re-runs after a batch failed as a whole: a batch of their own, never
  // merged with other items nor split (kIsolatedRunsPerWorker).
  bool isolated = false;
  double guessed_s = 0.0;         // the part of estimate_s that is guessed, not history
  std::size_t guessed_tests = 0;  // how many of `tests` that part holds
};

inline bool guessed(const TestEstimate& test) { return test.source != EstimateSource::History; }

// A worker's share of `count` tests: ceil(count / workers), at least 1.
inline std::size_t share_by_count(std::size_t count, int workers) {
  const auto by = static_cast<std::size_t>(std::max(1, workers));
  return std::max<std::size_t>(1, (count + by - 1) / by);
}

struct InFlight {
  std::string worker;
  std::vector<std::size_t> tests;
  double started_s = 0.0;
  double estimate_s = 0.0;
  bool speculative = false;
  bool copied = false;    // a straggler copy of it runs elsewhere
  bool isolated = false;  // an isolated item (Item::isolated)
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
  // A batch holding it alone failed as a whole: it hangs or crashes its runner.
  bool failed_alone = false;
  std::vector<Attempt> attempts;
};

// How a failed attempt's re-run is queued (Dispatcher::State::record).
enum class Rerun {
  Together,  // a re-run item of its own, which batches may merge with others
  Isolated,  // an isolated item while the budget lasts: a culprit, which failed a batch alone
  InSearch,  // in an isolated run of the search for a culprit, cut by the caller (fail_as_a_whole)
};

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
  // Live workers told Wait when they last asked: idle until they ask again.
  std::unordered_set<std::string> waiting;
  // Workers that have asked at least once, and when the first and the last
  // of them first asked: shard builds start one after another, and the pace
  // of those arrivals says when the others will ask.
  std::unordered_set<std::string> arrived;
  double first_arrival_s = 0.0;
  double last_arrival_s = 0.0;
  std::uint64_t next_batch_id = 1;
  // Isolated runs left to cut this build (kIsolatedRunsPerWorker).
  std::size_t isolated_runs_left = 0;
  DispatchStats stats;
  BatchCostModel cost;
  // The suite's variance per estimated second (its tests' spreads squared,
  // summed, over their estimates): how unpredictable a share of it is.
  // Unknown when too little of the suite has a known spread.
  std::optional<double> variance_per_s;
  // The history shows surprises (kSurprisesSeenShare): batches are capped by
  // count, and a batch far past its estimate is taken to have met one.
  bool surprises_expected = false;
  // Queued work, split so that the guessed part can be rescaled.
  double queued_known_s = 0.0;
  double queued_guessed_s = 0.0;
  // Queued tests, and how many of them have a guessed estimate (batch_cap).
  std::size_t queued_tests = 0;
  std::size_t queued_guessed_tests = 0;
  // The cap on tests per batch decided when the first guesses were rescaled:
  // a worker's share by count of the queue then, or max_batch_tests (batch_cap).
  std::optional<std::size_t> guessed_share_tests;

  void accept(const std::string& worker, std::uint64_t batch_id, const std::vector<TestResult>& results,
              std::optional<double> wall_s);

  double scale() const { return options.recalibrate ? cost.guess_scale() : 1.0; }

  double estimate_of(const Item& item) const {
    return item.estimate_s - item.guessed_s + item.guessed_s * scale();
  }

  double queued_estimate_s() const { return queued_known_s + queued_guessed_s * scale(); }

  void enqueue_figures(const Item& item, double sign) {
    queued_known_s = std::max(0.0, queued_known_s + sign * (item.estimate_s - item.guessed_s));
    queued_guessed_s = std::max(0.0, queued_guessed_s + sign * item.guessed_s);
    if (sign > 0.0) {
      queued_tests += item.tests.size();
      queued_guessed_tests += item.guessed_tests;
    } else {
      queued_tests -= std::min(queued_tests, item.tests.size());
      queued_guessed_tests -= std::min(queued_guessed_tests, item.guessed_tests);
    }
  }

  // An item's guessed part (guessed_s, guessed_tests) from its tests.
  void add_guessed_part(Item& item) const {
    for (auto test : item.tests) {
      if (!guessed(tests[test])) continue;
      item.guessed_s += tests[test].seconds;
      ++item.guessed_tests;
    }
  }

  // Choosing work (shard_dispatch_queue.cpp).
  bool tried_by(std::size_t test, const std::string& worker) const;
  bool running(std::size_t test, const std::string& worker) const;
  bool may_run(const Item& item, const std::string& worker) const;
  std::optional<std::multimap<double, Item, std::greater<>>::iterator> peek_longest(
      const std::string& worker, bool with_isolated = false);
  const Item& peeked(std::multimap<double, Item, std::greater<>>::iterator where) const;
  Item take(std::multimap<double, Item, std::greater<>>::iterator where);
  Item take_shortest_fresh();
  Item dequeued(Item item);
  double estimate_of_test(std::size_t test) const;
  std::size_t batch_cap();
  void append(InFlight& flight, const Item& item) const;
  void top_up(double target, std::size_t cap, InFlight& flight);
  enum class Fit { Below, Nearest };
  void take_fitting(std::multimap<double, Item, std::greater<>>::iterator where, double target,
                    std::size_t cap, InFlight& flight, Fit fit_rule, bool& retry);
  std::optional<std::vector<std::size_t>> split_off(const Item& item, double target, std::size_t cap,
                                                    InFlight& flight, Fit fit_rule);
  void requeue_rest(std::vector<std::size_t> rest, bool retry);
  void take_crumbs(const std::string& worker, std::size_t cap, InFlight& flight, bool& retry);
  double remaining_work_s(double now_s) const;
  double tests_end_s(const InFlight& flight) const;
  // A batch's size in estimated seconds; whether it is the worker's whole
  // part because the suite is predictable (one_batch_is_enough); whether it
  // is a part meant to end with the others' (part_for_equal_finish), which is
  // cut to the test, not to the file; and whether it may be topped up from
  // the shortest items (top_up: a predictable suite).
  struct BatchTarget {
    double seconds = 0.0;
    bool whole_part_of_predictable = false;
    bool to_the_test = false;
    bool top_up_ok = false;
  };
  BatchTarget batch_target(const std::string& worker, double now_s) const;
  void note_arrival(const std::string& worker, double now_s);
  double arrival_pace_s() const;
  double part_for_equal_finish(const std::string& asking, double now_s) const;
  bool one_batch_is_enough(double share_s, double overhead_s) const;
  bool second_batch_repays(double variance, double share_s, double overhead_s) const;
  Assignment hand_out(const std::string& worker, double now_s, InFlight flight, bool retry);
  Assignment hand_out_isolated(const std::string& worker, double now_s,
                               std::multimap<double, Item, std::greater<>>::iterator where);
  std::optional<Assignment> from_queue(const std::string& worker, double now_s);
  std::vector<std::size_t> unresolved(const std::vector<std::size_t>& batch_tests) const;
  std::optional<Assignment> straggler_copy(const std::string& worker, double now_s);
  bool release_idle(const std::string& worker);
  InFlight* straggler(const std::string& worker, double now_s);

  // Recording results (shard_dispatch.cpp).
  void resolve(std::size_t test, Verdict verdict);
  void record(std::size_t test, Attempt attempt, Rerun rerun = Rerun::Together);
  void requeue(std::vector<std::size_t> batch_tests, bool retry, bool isolated = false);
  void requeue_rerun(std::size_t test);
  void fail_as_a_whole(const InFlight& flight, const std::vector<std::size_t>& without_result,
                       const std::string& worker, const std::string& message);
  void queue_not_run(const std::vector<std::size_t>& not_run);
  std::size_t isolated_groups(std::size_t reruns, bool recut) const;
  bool take_isolated_run();
  void give_back(const InFlight& flight);
  bool in_isolated_run(std::size_t test) const;
  std::unordered_map<std::uint64_t, InFlight>::iterator find_in_flight(const std::string& worker,
                                                                       std::uint64_t batch_id);
  InFlight finish(const std::string& worker, std::uint64_t batch_id);
  void drop_queued(std::size_t test);
};

}  // namespace cd::shard
