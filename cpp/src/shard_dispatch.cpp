// The dynamic dispatcher: workers pull batches and report results; this file
// keeps the books (attempts, verdicts, re-runs, lost workers) and the public
// Dispatcher interface. What goes into a batch is shard_dispatch_queue.cpp.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "cd/error.hpp"
#include "cd/shard.hpp"
#include "shard_dispatch_state.hpp"
#include "shard_units.hpp"

namespace cd::shard {

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

constexpr char kNoResultMessage[] = "no result reported for this test";

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

// The suite's variance per estimated second, over the tests whose spread is
// known; unknown when they carry less than `known_share` of the suite (or it
// has no seconds at all).
std::optional<double> variance_per_s(const std::vector<TestEstimate>& tests, double known_share) {
  double total_s = 0.0, known_s = 0.0, variance = 0.0;
  for (const auto& test : tests) {
    total_s += test.seconds;
    if (!test.spread_s) continue;
    known_s += test.seconds;
    variance += *test.spread_s * *test.spread_s;
  }
  if (known_s <= 0.0 || known_s < known_share * total_s) return std::nullopt;
  return variance / known_s;
}

}  // namespace

void Dispatcher::State::resolve(std::size_t test, Verdict verdict) {
  test_states[test].verdict = verdict;
  if (test_states[test].queued) drop_queued(test);
  ++stats.resolved;
  if (verdict == Verdict::Passed) ++stats.passed;
  if (verdict == Verdict::Flaky) ++stats.flaky;
  if (verdict == Verdict::Failed) ++stats.failed;
  if (verdict == Verdict::Skipped) ++stats.skipped;
}

void Dispatcher::State::record(std::size_t test, Attempt attempt, Rerun rerun) {
  auto& state = test_states[test];
  if (state.verdict != Verdict::Pending) return;  // another copy decided it first
  const bool passed = attempt.passed;
  const bool skipped = attempt.skipped;
  const bool own_result = attempt.timed;
  state.attempts.push_back(std::move(attempt));
  if (skipped && state.failures == 0) {
    resolve(test, Verdict::Skipped);
    return;
  }
  if (passed) {
    resolve(test, state.failures > 0 ? Verdict::Flaky : Verdict::Passed);
    return;
  }
  // A failure, a batch that failed as a whole (no result of the test's own:
  // one hanging or crashing test takes every test of its batch with it, so
  // it is no failure of this test, and a later pass makes it Passed, not
  // Flaky), or a skip after a failure (a worker that cannot run the test has
  // not seen it pass).
  if (!skipped && own_result) ++state.failures;
  if (rerun == Rerun::InSearch) return;  // the caller queues it, whatever max_attempts says
  // No result of its own while another run of it waits or runs (a re-run
  // queued, a straggler copy, an isolated run): that run decides.
  if (!own_result && (state.queued || state.copies_in_flight > 0)) return;
  // Re-run while attempts are left, else Failed.
  if (static_cast<int>(state.attempts.size()) >= options.max_attempts) {
    resolve(test, Verdict::Failed);
  } else if (!state.queued) {
    // A failure of its own is re-run now, even while another copy of the test
    // still runs: that copy may be the one held by a surprise, and waiting
    // for it would hold the verdict (and the build) as long. Whichever
    // answers first decides.
    requeue({test}, true, rerun == Rerun::Isolated && take_isolated_run());
  }
}

// A batch that failed as a whole (no result at all): `without_result`, its
// tests, get a failed attempt each, and their re-runs are isolated
// (kIsolatedRunsPerWorker). A test whose re-run is queued, or running in an
// isolated run, is left to it. A test alone in its batch, or one that failed
// alone before, is a culprit: its attempts count as any failure's, and its
// re-run stays alone while the budget lasts. The others are searched: cut
// into isolated runs by isolated_groups, and re-run even past max_attempts
// when it allows re-runs at all (the budget bounds them); once the budget is
// spent, re-run as after any failure.
void Dispatcher::State::fail_as_a_whole(const InFlight& flight,
                                        const std::vector<std::size_t>& without_result,
                                        const std::string& worker, const std::string& message) {
  const Attempt failed{worker, false, 0.0, message};
  const bool alone = flight.tests.size() <= 1;
  std::vector<std::size_t> searched;
  for (auto test : without_result) {
    auto& state = test_states[test];
    if (state.verdict != Verdict::Pending) continue;  // another copy decided it first
    if (state.queued || in_isolated_run(test)) {
      record(test, failed);
    } else if (alone || state.failed_alone) {
      state.failed_alone = true;
      record(test, failed, Rerun::Isolated);
    } else {
      searched.push_back(test);
    }
  }
  // With one attempt allowed, nothing is re-run, nor isolated.
  const std::size_t runs = options.max_attempts <= 1 ? 0 : isolated_groups(searched.size(), flight.isolated);
  for (auto test : searched) record(test, failed, runs > 0 ? Rerun::InSearch : Rerun::Together);
  if (runs == 0) return;
  // An isolated run cut again hands its own run on to one of its parts.
  isolated_runs_left = isolated_runs_left + (flight.isolated ? 1 : 0) - runs;
  // Consecutive tests of the batch: most of a file's tests share a run.
  for (std::size_t run = 0; run < runs; ++run) {
    const auto first = searched.begin() + static_cast<std::ptrdiff_t>(run * searched.size() / runs);
    const auto last = searched.begin() + static_cast<std::ptrdiff_t>((run + 1) * searched.size() / runs);
    requeue({first, last}, true, true);
  }
}

// Tests that a runner did not run, queued again as they were: a re-run stays
// one (for a worker that has not run it), the others go back as fresh work.
// A test queued already, or still running elsewhere, is left to that run.
void Dispatcher::State::queue_not_run(const std::vector<std::size_t>& not_run) {
  std::vector<std::size_t> never_run;
  for (auto test : not_run) {
    const auto& state = test_states[test];
    if (state.verdict != Verdict::Pending || state.queued || state.copies_in_flight > 0) continue;
    if (state.attempts.empty()) {
      never_run.push_back(test);
    } else {
      requeue_rerun(test);
    }
  }
  if (!never_run.empty()) requeue(std::move(never_run), false);
}

// How many isolated runs the `reruns` tests of a batch that failed as a
// whole are cut into: one each while the budget holds them all (one round
// finds the culprit); else half of what is left, at least two, so that the
// run holding the culprit, failing again, can be cut again; none once fewer
// than two are left. An isolated run cut again (`recut`) hands its own run on,
// and its parts that pass give theirs back (give_back): a search for one
// culprit keeps about one run of the budget, though each cut pays a runner
// start-up per run.
std::size_t Dispatcher::State::isolated_groups(std::size_t reruns, bool recut) const {
  const std::size_t available = isolated_runs_left + (recut ? 1 : 0);
  if (reruns <= available) return reruns;
  if (available >= 2) return std::max<std::size_t>(2, available / 2);
  return 0;
}

// An isolated run that needed no search (it passed, or another copy decided
// its tests first, or it was never run) gives its run back to the budget: a
// commit that fails every batch gets none back.
void Dispatcher::State::give_back(const InFlight& flight) {
  if (flight.isolated) ++isolated_runs_left;
}

// A test's re-run, for a worker that has not run it: alone for a known
// culprit while the budget lasts.
void Dispatcher::State::requeue_rerun(std::size_t test) {
  requeue({test}, true, test_states[test].failed_alone && take_isolated_run());
}

// One run of the budget for a culprit's re-run alone; false when spent.
bool Dispatcher::State::take_isolated_run() {
  if (isolated_runs_left == 0) return false;
  --isolated_runs_left;
  return true;
}

bool Dispatcher::State::in_isolated_run(std::size_t test) const {
  if (test_states[test].copies_in_flight == 0) return false;
  return std::any_of(in_flight.begin(), in_flight.end(), [&](const auto& entry) {
    const InFlight& flight = entry.second;
    return flight.isolated && std::find(flight.tests.begin(), flight.tests.end(), test) != flight.tests.end();
  });
}

// A test decided while its re-run still waits in the queue: the re-run goes.
void Dispatcher::State::drop_queued(std::size_t test) {
  for (auto where = requeued.begin(); where != requeued.end(); ++where) {
    const auto& queued_tests = where->second.tests;
    if (std::find(queued_tests.begin(), queued_tests.end(), test) == queued_tests.end()) continue;
    Item item = take(where);
    item.tests.erase(std::find(item.tests.begin(), item.tests.end(), test));
    if (!item.tests.empty()) {
      requeue(std::move(item.tests), item.retry, item.isolated);
    } else if (item.isolated) {
      ++isolated_runs_left;  // never run (give_back)
    }
    return;
  }
}

void Dispatcher::State::requeue(std::vector<std::size_t> batch_tests, bool retry, bool isolated) {
  Item item;
  item.retry = retry;
  item.isolated = isolated;
  for (auto test : batch_tests) {
    item.estimate_s += tests[test].seconds;
    test_states[test].queued = true;
  }
  item.tests = std::move(batch_tests);
  add_guessed_part(item);
  enqueue_figures(item, 1.0);
  double estimate = item.estimate_s;
  requeued.emplace(estimate, std::move(item));
}

std::unordered_map<std::uint64_t, InFlight>::iterator Dispatcher::State::find_in_flight(
    const std::string& worker, std::uint64_t batch_id) {
  auto found = in_flight.find(batch_id);
  if (found == in_flight.end() || found->second.worker != worker) {
    throw InvalidState(fmt::format("batch {} is not in flight on worker '{}'", batch_id, worker));
  }
  return found;
}

InFlight Dispatcher::State::finish(const std::string& worker, std::uint64_t batch_id) {
  auto found = find_in_flight(worker, batch_id);
  InFlight flight = std::move(found->second);
  in_flight.erase(found);
  stats.batches_in_flight = in_flight.size();
  for (auto test : flight.tests) --test_states[test].copies_in_flight;
  return flight;
}

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
  state.variance_per_s = variance_per_s(tests, kSpreadKnownShare);
  // A surprise-prone suite (the tests whose spread is known, kSurprisesSeenShare
  // of it at least, make a second batch per worker repay its start-up; with
  // no start-up recorded, any spread at all): at most a worker's share by
  // count per batch. A test far slower than its estimate can then be any test
  // (the real hypha suite: ~10 tests of ~0.1 s take ~40 s each run), so a
  // batch's risk grows with its count, and parts cut in seconds put the many
  // short tests in a few batches: one of 163 of its 922 tests on 32 workers
  // held 4 surprises and ran 163 s against a bound of 41. Over 500 runs with
  // the surprises moved at random (bench/shard_bench.py --start-up-s 2), mean
  // makespan / bound at 32 workers 2.08 -> 1.65 (static 1.84). Not on every
  // suite: networkx's (a few long tests, thousands of tiny ones), capped, ran
  // in 8-10 batches instead of 6 on 6 workers, 30 s instead of 22 (simulated).
  const auto seen = variance_per_s(tests, kSurprisesSeenShare);
  if (seen && state.second_batch_repays(*seen, share, options.batch_overhead_s)) {
    state.surprises_expected = true;
    const auto by_count = share_by_count(tests.size(), options.workers);
    if (by_count < static_cast<std::size_t>(state.options.max_batch_tests))
      state.options.max_batch_tests = static_cast<int>(by_count);
  }
  state.stats.batch_tests_cap = static_cast<std::size_t>(state.options.max_batch_tests);
  auto units = cap_unit_sizes(
      make_units(tests, options.split_file_fraction * share, static_cast<std::size_t>(options.workers)),
      tests, static_cast<std::size_t>(state.options.max_batch_tests));
  state.cost = BatchCostModel(options.batch_overhead_s);
  state.isolated_runs_left = kIsolatedRunsPerWorker * static_cast<std::size_t>(options.workers);
  state.test_states.resize(tests.size());
  state.stats.tests = tests.size();
  state.tests = std::move(tests);
  for (auto& unit : units) {
    Item item{std::move(unit.tests), unit.estimate_s, false};
    state.add_guessed_part(item);
    state.enqueue_figures(item, 1.0);
    state.fresh.push_back(std::move(item));
  }
}

Dispatcher::~Dispatcher() = default;

Assignment Dispatcher::next_batch(const std::string& worker, double now_s) {
  std::lock_guard lock(state_->mutex);
  auto& state = *state_;
  state.live_workers.insert(worker);
  state.note_arrival(worker, now_s);
  if (state.stats.resolved == state.stats.tests) return Assignment{Assignment::Kind::Done, {}};
  auto assignment = state.from_queue(worker, now_s);
  if (!assignment) assignment = state.straggler_copy(worker, now_s);
  if (assignment) {
    state.waiting.erase(worker);
    return std::move(*assignment);
  }
  if (state.release_idle(worker)) return Assignment{Assignment::Kind::Done, {}};
  state.waiting.insert(worker);
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
  const bool decided_before = state.unresolved(flight.tests).empty();
  std::unordered_map<std::string_view, const TestResult*> by_id;
  for (const auto& result : results) by_id.emplace(result.id, &result);
  double tests_s = 0.0;
  std::size_t answered = 0, passed_or_skipped = 0;
  std::vector<std::size_t> without_result;
  for (auto test : flight.tests) {
    auto found = by_id.find(state.tests[test].id);
    if (found == by_id.end()) {
      without_result.push_back(test);
    } else {
      const TestResult& result = *found->second;
      tests_s += result.seconds;
      ++answered;
      if (result.passed || result.skipped) ++passed_or_skipped;
      if (guessed(state.tests[test])) state.cost.observe_guessed(state.tests[test].seconds, result.seconds);
      state.record(test, {worker, result.passed && !result.skipped, result.seconds, result.message,
                          result.skipped, true});
    }
  }
  if (answered == 0) {
    state.fail_as_a_whole(flight, without_result, worker, kNoResultMessage);
  } else if (answered > passed_or_skipped) {
    // Left out of a report with a failure of its own: the runner stopped
    // there (-x, --maxfail), so they were not run. Queued again at no cost
    // of an attempt (charged, a re-run behind the failing test's re-run met
    // -x again at every attempt); the failure's own attempts bound the rounds.
    state.queue_not_run(without_result);
  } else {
    // Left out of a report with no failure (a module that did not import):
    // a failure with no result, re-run as after any failure.
    for (auto test : without_result) state.record(test, {worker, false, 0.0, kNoResultMessage});
  }
  // Only a batch that ran to the end says what its start-up costs.
  if (wall_s && answered == flight.tests.size()) state.cost.observe_batch(worker, *wall_s, tests_s);
  if (passed_or_skipped == flight.tests.size() || decided_before) state.give_back(flight);
}

void Dispatcher::report_error(const std::string& worker, std::uint64_t batch_id, const std::string& message) {
  std::lock_guard lock(state_->mutex);
  auto& state = *state_;
  InFlight flight = state.finish(worker, batch_id);
  if (state.unresolved(flight.tests).empty()) state.give_back(flight);
  state.fail_as_a_whole(flight, flight.tests, worker, message);
}

void Dispatcher::worker_lost(const std::string& worker) {
  std::lock_guard lock(state_->mutex);
  auto& state = *state_;
  state.live_workers.erase(worker);
  state.waiting.erase(worker);
  std::vector<std::uint64_t> lost;
  for (const auto& [id, flight] : state.in_flight) {
    if (flight.worker == worker) lost.push_back(id);
  }
  std::sort(lost.begin(), lost.end());
  for (auto id : lost) {
    InFlight flight = state.finish(worker, id);
    std::vector<std::size_t> orphaned, isolated;
    for (auto test : flight.tests) {
      const auto& test_state = state.test_states[test];
      if (test_state.verdict != Verdict::Pending || test_state.queued) continue;
      if (!test_state.attempts.empty()) {
        // Its re-run, lost (after a failure, or after a batch that failed as
        // a whole): re-run now, on a worker that has not run it yet; an
        // isolated run stays one.
        if (flight.isolated) {
          isolated.push_back(test);
        } else {
          state.requeue_rerun(test);
        }
      } else if (test_state.copies_in_flight == 0) {
        orphaned.push_back(test);  // else the copy still running answers for it
      }
    }
    if (!isolated.empty()) {
      state.requeue(std::move(isolated), true, true);
    } else {
      state.give_back(flight);
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
