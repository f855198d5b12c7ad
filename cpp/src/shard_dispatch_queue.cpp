// The dispatcher's choice of work: which queued tests make the next batch
// and how large it is, and when an idle worker copies a straggling batch.
#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <vector>

#include "cd/shard.hpp"
#include "shard_dispatch_state.hpp"

namespace cd::shard {

bool Dispatcher::State::tried_by(std::size_t test, const std::string& worker) const {
  const auto& attempts = test_states[test].attempts;
  return std::any_of(attempts.begin(), attempts.end(), [&](const Attempt& a) { return a.worker == worker; });
}

bool Dispatcher::State::running(std::size_t test, const std::string& worker) const {
  // The count first: a failed test's re-run rarely has a copy of it in
  // flight, and a broken commit queues thousands of re-runs to look at.
  if (test_states[test].copies_in_flight == 0) return false;
  return std::any_of(in_flight.begin(), in_flight.end(), [&](const auto& entry) {
    const InFlight& flight = entry.second;
    return flight.worker == worker &&
           std::find(flight.tests.begin(), flight.tests.end(), test) != flight.tests.end();
  });
}

// A re-run goes to a worker that has not run its tests yet, unless no other
// live worker has neither run them nor runs them now (a straggler copy's
// original, maybe held by a surprise): then any worker beats waiting for
// ever. Judged for the item as a whole: an isolated run of several tests,
// each tried by other workers, must still find one.
bool Dispatcher::State::may_run(const Item& item, const std::string& worker) const {
  if (!item.retry) return true;
  if (item.tests.size() == 1) {  // most re-runs: the same rule, without the item-wide scans
    const std::size_t test = item.tests.front();
    if (!tried_by(test, worker)) return true;
    return std::none_of(live_workers.begin(), live_workers.end(), [&](const std::string& other) {
      return other != worker && !tried_by(test, other) && !running(test, other);
    });
  }
  const auto none_tried_by = [&](const std::string& candidate, bool or_running) {
    return std::none_of(item.tests.begin(), item.tests.end(), [&](std::size_t test) {
      return tried_by(test, candidate) || (or_running && running(test, candidate));
    });
  };
  if (none_tried_by(worker, false)) return true;
  return std::none_of(live_workers.begin(), live_workers.end(), [&](const std::string& other) {
    return other != worker && none_tried_by(other, true);
  });
}

// The longest eligible item, fresh or requeued, without taking it: the
// requeued entry, or requeued.end() for the next fresh one; nullopt if none.
// Isolated items only `with_isolated` (for a batch still empty).
std::optional<std::multimap<double, Item, std::greater<>>::iterator> Dispatcher::State::peek_longest(
    const std::string& worker, bool with_isolated) {
  auto eligible = std::find_if(requeued.begin(), requeued.end(), [&](const auto& entry) {
    return (with_isolated || !entry.second.isolated) && may_run(entry.second, worker);
  });
  bool have_fresh = next_fresh < fresh.size();
  if (eligible != requeued.end() && (!have_fresh || eligible->first >= fresh[next_fresh].estimate_s)) {
    return eligible;
  }
  if (have_fresh) return requeued.end();
  return std::nullopt;
}

const Item& Dispatcher::State::peeked(std::multimap<double, Item, std::greater<>>::iterator where) const {
  return where == requeued.end() ? fresh[next_fresh] : where->second;
}

Item Dispatcher::State::take(std::multimap<double, Item, std::greater<>>::iterator where) {
  Item taken;
  if (where == requeued.end()) {
    taken = std::move(fresh[next_fresh++]);
  } else {
    taken = std::move(where->second);
    requeued.erase(where);
  }
  return dequeued(std::move(taken));
}

// The shortest fresh item: the last of the fresh queue (longest first).
Item Dispatcher::State::take_shortest_fresh() {
  Item taken = std::move(fresh.back());
  fresh.pop_back();
  return dequeued(std::move(taken));
}

Item Dispatcher::State::dequeued(Item item) {
  enqueue_figures(item, -1.0);
  for (auto test : item.tests) test_states[test].queued = false;
  return item;
}

// Work not yet done: the queue, and what running batches have left. A
// running batch starts its tests only after its worker's start-up: workers
// that ask a few seconds apart, while the first batches are still starting,
// must see the same work (counting those seconds as tests run shrank the
// later workers' shares and left a remainder: one more batch and one more
// start-up at the end).
double Dispatcher::State::remaining_work_s(double now_s) const {
  double work = queued_estimate_s();
  for (const auto& [id, flight] : in_flight) {
    if (flight.speculative) continue;  // its tests are counted in the original
    const double estimate_s = flight.known_s + flight.guessed_s * scale();
    work += std::clamp(tests_end_s(flight) - now_s, 0.0, estimate_s);
  }
  return work;
}

// When a running batch's tests are expected to end: after its worker's
// start-up and its estimate, rescaled as the guesses are.
double Dispatcher::State::tests_end_s(const InFlight& flight) const {
  return flight.started_s + cost.overhead_s(flight.worker) + flight.known_s + flight.guessed_s * scale();
}

void Dispatcher::State::note_arrival(const std::string& worker, double now_s) {
  if (!arrived.insert(worker).second) return;
  if (arrived.size() == 1) first_arrival_s = now_s;
  last_arrival_s = now_s;
}

// Seconds between two workers' first requests so far; 0 until two have asked.
double Dispatcher::State::arrival_pace_s() const {
  if (arrived.size() < 2) return 0.0;
  return (last_arrival_s - first_arrival_s) / static_cast<double>(arrived.size() - 1);
}

// The asking worker's part of the queue when the queue is split so that
// every worker ends together: each can start a batch's tests after its
// start-up, now or once its running batch ends, and the part of each is the
// time from then to the common end (water-filling; a worker busy past that
// end gets nothing). Workers whose shard build has not asked yet arrive at
// the pace of those that have: Buildbot starts shard builds one after
// another (16 took 3-7 s on a loaded master), and counting the last ones as
// starting now gave the first ones too little and the last ones too much.
double Dispatcher::State::part_for_equal_finish(const std::string& asking, double now_s) const {
  std::unordered_map<std::string, double> busy_until;
  for (const auto& [id, flight] : in_flight) {
    if (flight.speculative || flight.worker == asking) continue;
    const double end = std::max(now_s, tests_end_s(flight));
    auto [where, inserted] = busy_until.emplace(flight.worker, end);
    if (!inserted) where->second = std::max(where->second, end);
  }
  const auto workers = static_cast<std::size_t>(options.workers);
  const std::size_t not_arrived = workers - std::min(workers, arrived.size());
  const double own_start = now_s + cost.overhead_s(asking);
  // The asking worker and those idle since their last batch start now.
  std::vector<double> starts(
      std::max<std::size_t>(1, workers - std::min(workers, busy_until.size() + not_arrived)), own_start);
  for (const auto& [worker, end] : busy_until) starts.push_back(end + cost.overhead_s(worker));
  const double pace_s = arrival_pace_s();
  for (std::size_t k = 1; k <= not_arrived; ++k) {
    starts.push_back(now_s + static_cast<double>(k) * pace_s + cost.overhead_s());
  }
  std::sort(starts.begin(), starts.end());
  // The common end: the smallest T with sum over starts below T of (T - start) = queued.
  double queued = queued_estimate_s(), sum_starts = 0.0, end = own_start;
  for (std::size_t k = 0; k < starts.size(); ++k) {
    sum_starts += starts[k];
    end = (queued + sum_starts) / static_cast<double>(k + 1);
    if (k + 1 == starts.size() || end <= starts[k + 1]) break;
  }
  return std::max(0.0, end - own_start);
}

// Guided self-scheduling: a share of what is left, shrinking as it drains.
// With a start-up to pay, a worker's share of the remaining work is cut
// into equal batches each worth kBatchWorthFactor start-ups: equal cuts end
// every worker's last batch together, where a fixed size would leave a
// remainder to one worker. When a share is worth one batch only, or the
// suite is predictable enough that one batch will do, the queue is split so
// that every worker ends together, each taking its part of what is left: a
// batch cut larger or smaller than its part is made up by the next ones,
// and nothing is left over for one more start-up.
Dispatcher::State::BatchTarget Dispatcher::State::batch_target(const std::string& worker,
                                                               double now_s) const {
  const double workers = std::max(1, options.workers);
  const double guided = std::max(options.min_batch_s, queued_estimate_s() / (kGuidedDivisor * workers));
  const double overhead = cost.overhead_s(worker);
  if (overhead <= 0.0) return {guided, false};
  const double share = remaining_work_s(now_s) / workers;
  const double batches = std::floor(share / (kBatchWorthFactor * overhead));
  const bool predictable = one_batch_is_enough(share, overhead);
  if (batches <= 1.0 || predictable)
    return {std::max(guided, part_for_equal_finish(worker, now_s)), batches > 1.0, true, predictable};
  return {std::max(guided, share / batches), false, false, false};
}

// Whether a second batch per worker would cost more start-up than it takes
// back in lateness (see kSecondBatchGain): never when the suite's spread is
// unknown (a first build, a history of one run).
bool Dispatcher::State::one_batch_is_enough(double share_s, double overhead_s) const {
  return variance_per_s && !second_batch_repays(*variance_per_s, share_s, overhead_s);
}

// Whether, at `variance` per second, a second batch per worker takes back
// more lateness than the start-up it costs (see kSecondBatchGain).
bool Dispatcher::State::second_batch_repays(double variance, double share_s, double overhead_s) const {
  const double z = std::sqrt(2.0 * std::log(std::max(1, options.workers)));
  const double sigma = std::sqrt(variance * share_s);
  return kSecondBatchGain * z * sigma > overhead_s;
}

Assignment Dispatcher::State::hand_out(const std::string& worker, double now_s, InFlight flight, bool retry) {
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

// An isolated item (Item::isolated) as a batch of its own.
Assignment Dispatcher::State::hand_out_isolated(const std::string& worker, double now_s,
                                                std::multimap<double, Item, std::greater<>>::iterator where) {
  InFlight flight;
  append(flight, take(where));
  flight.isolated = true;
  ++stats.isolated_runs;
  return hand_out(worker, now_s, std::move(flight), true);
}

// Longest first to the nearest of the target (an item that would overshoot
// it by more than the batch falls short stays queued; a part cut to the test
// takes those of its tests that fit, then is topped up: see top_up), never past
// max_batch_tests (no unit is larger than that: see cap_unit_sizes), and at
// least one item.
std::optional<Assignment> Dispatcher::State::from_queue(const std::string& worker, double now_s) {
  const auto [target, whole_part_of_predictable, to_the_test, top_up_ok] = batch_target(worker, now_s);
  const std::size_t cap = batch_cap();
  InFlight flight;
  bool retry = false;
  while (flight.tests.empty() || flight.estimate_s < target) {
    auto where = peek_longest(worker, flight.tests.empty());
    if (!where) break;
    const Item& next = peeked(*where);
    if (next.isolated) return hand_out_isolated(worker, now_s, *where);
    const double after = flight.estimate_s + estimate_of(next);
    const bool overshoots = after - target > target - flight.estimate_s;
    if (to_the_test && after > target) {
      take_fitting(*where, target, cap, flight, Fit::Below, retry);
      if (top_up_ok) top_up(target, cap, flight);
      // Nothing shorter left to top up from (the last parts): the longest one's tests, to the nearest.
      auto longest = flight.estimate_s < target ? peek_longest(worker) : std::nullopt;
      if (longest) take_fitting(*longest, target, cap, flight, Fit::Nearest, retry);
      if (!flight.tests.empty()) break;
    }
    if (!flight.tests.empty() && (overshoots || flight.tests.size() + next.tests.size() > cap)) break;
    if (next.tests.size() > cap) {  // a unit larger than a share of guesses: its first tests
      take_fitting(*where, std::numeric_limits<double>::infinity(), cap, flight, Fit::Below, retry);
      break;
    }
    Item item = take(*where);
    append(flight, item);
    retry = retry || item.retry;
  }
  if (flight.tests.empty()) return std::nullopt;
  if (to_the_test && arrived.size() >= static_cast<std::size_t>(options.workers)) {
    take_crumbs(worker, cap, flight, retry);
  }
  if (whole_part_of_predictable) ++stats.whole_part_batches;
  return hand_out(worker, now_s, std::move(flight), retry);
}

// Tests per batch: max_batch_tests; and in a first build whose first results
// make the rest look not worth a start-up per worker, a worker's share by
// count of what was queued then, as static splits a suite without history.
// Those results come from the items handed out first, which need not be like
// the rest: on networkx's suite (6,848 tests, 6 workers) the first batches
// ran ~20 times faster per test than the suite's mean, the rest was then
// estimated at 2 s, less than a start-up, and went whole to one worker, which
// ran it for 70 s while five stood idle. When the rescaled rest is worth
// spreading anyway (a suite of like tests), the parts cut in seconds stay:
// capping them too cost the bench's first build of 3,000 tiny tests 2 s of 12.
// (A share of the whole suite left the last worker nothing once the first
// batches had taken theirs; a share of what is queued at each request shrinks
// as the workers ask and leaves a remainder for one more round of start-ups.)
std::size_t Dispatcher::State::batch_cap() {
  const auto cap = static_cast<std::size_t>(options.max_batch_tests);
  if (queued_guessed_tests == 0 || queued_guessed_tests < queued_tests) return cap;
  if (!guessed_share_tests) {
    if (!cost.guesses_observed()) return cap;  // the first batches: guided, small
    const double workers = std::max(1, options.workers);
    const bool rest_looks_negligible = queued_estimate_s() / workers < cost.overhead_s();
    guessed_share_tests = rest_looks_negligible ? share_by_count(queued_tests, options.workers) : cap;
  }
  return std::clamp<std::size_t>(*guessed_share_tests, 1, cap);
}

// A whole item into the batch being cut.
void Dispatcher::State::append(InFlight& flight, const Item& item) const {
  flight.tests.insert(flight.tests.end(), item.tests.begin(), item.tests.end());
  flight.estimate_s += estimate_of(item);
}

double Dispatcher::State::estimate_of_test(std::size_t test) const {
  return guessed(tests[test]) ? tests[test].seconds * scale() : tests[test].seconds;
}

// A part meant to end with the others, once the longest item left would
// overshoot it and its tests that fit are in (take_fitting): the gap left,
// less than one of those tests, is topped up from the shortest fresh items,
// whole while they fit, then with those tests of the next one that bring it
// nearest. Cut at whole files of a few seconds, such parts ended up to half
// a file early or late (5 s apart on the shard bench: 40 files of ~6 s,
// parts of ~15 s); cut at the longest item's tests, up to half of a long
// test. Never takes the longest item: only the gap. Only for a suite whose
// history shows it predictable: on one with surprises the short items are
// what balances the end of the build, and topping parts up with them early
// cost 2 % on the real hypha suite (bench/shard_bench.py, 32 workers, 2 s
// start-ups).
void Dispatcher::State::top_up(double target, std::size_t cap, InFlight& flight) {
  while (flight.estimate_s < target && fresh.size() > next_fresh + 1) {
    const Item& shortest = fresh.back();
    if (flight.tests.size() + shortest.tests.size() <= cap &&
        flight.estimate_s + estimate_of(shortest) <= target) {
      append(flight, take_shortest_fresh());
      continue;
    }
    if (auto rest = split_off(shortest, target, cap, flight, Fit::Nearest)) {
      take_shortest_fresh();
      requeue_rest(std::move(*rest), false);
    }
    return;
  }
}

// Into `flight`, the tests of the item at `where` that fit (see split_off),
// the rest staying queued; `retry` set if the item was a re-run. Nothing
// taken when none fits.
void Dispatcher::State::take_fitting(std::multimap<double, Item, std::greater<>>::iterator where,
                                     double target, std::size_t cap, InFlight& flight, Fit fit_rule,
                                     bool& retry) {
  auto rest = split_off(peeked(where), target, cap, flight, fit_rule);
  if (!rest) return;
  const bool item_retry = peeked(where).retry;
  take(where);
  requeue_rest(std::move(*rest), item_retry);
  retry = retry || item_retry;
}

// Moves into `flight` the tests of `item` that fit, each in turn: below
// `target`, or (Nearest) overshooting it by no more than the batch falls
// short without it; returns the others, or nullopt, and nothing moved, when none
// fits. The caller takes the item off the queue.
std::optional<std::vector<std::size_t>> Dispatcher::State::split_off(const Item& item, double target,
                                                                     std::size_t cap, InFlight& flight,
                                                                     Fit fit_rule) {
  std::vector<std::size_t> fit, rest;
  double estimate = flight.estimate_s;
  for (auto test : item.tests) {
    const double after = estimate + estimate_of_test(test);
    const bool fits = fit_rule == Fit::Nearest ? after - target <= target - estimate : after <= target;
    if (flight.tests.size() + fit.size() < cap && fits) {
      fit.push_back(test);
      estimate = after;
    } else {
      rest.push_back(test);
    }
  }
  if (fit.empty()) return std::nullopt;
  flight.tests.insert(flight.tests.end(), fit.begin(), fit.end());
  flight.estimate_s = estimate;
  return rest;
}

// Parts cut to the test can leave a few tests queued once every worker has
// asked; less than a start-up's worth would cost a start-up more on another
// worker than it costs in this batch, which takes it.
void Dispatcher::State::take_crumbs(const std::string& worker, std::size_t cap, InFlight& flight,
                                    bool& retry) {
  while (queued_estimate_s() < cost.overhead_s(worker)) {
    auto where = peek_longest(worker);
    if (!where || flight.tests.size() + peeked(*where).tests.size() > cap) return;
    Item item = take(*where);
    append(flight, item);
    retry = retry || item.retry;
  }
}

// What is left of a file split between batches goes back to the queue; the
// file then pays its import and module fixtures once more, on one more worker.
void Dispatcher::State::requeue_rest(std::vector<std::size_t> rest, bool retry) {
  if (rest.empty()) return;
  requeue(std::move(rest), retry);
  ++stats.files_split;
}

std::vector<std::size_t> Dispatcher::State::unresolved(const std::vector<std::size_t>& batch_tests) const {
  std::vector<std::size_t> open;
  for (auto test : batch_tests) {
    if (test_states[test].verdict == Verdict::Pending) open.push_back(test);
  }
  return open;
}

// Nothing queued: copy the straggling batch (see straggler()).
std::optional<Assignment> Dispatcher::State::straggler_copy(const std::string& worker, double now_s) {
  if (!options.speculate) return std::nullopt;
  while (InFlight* original = straggler(worker, now_s)) {
    auto open = unresolved(original->tests);
    bool tried_here =
        std::any_of(open.begin(), open.end(), [&](auto test) { return tried_by(test, worker); });
    if (open.empty() || tried_here) {
      original->copied = true;  // not worth copying; do not look at it again
      continue;
    }
    InFlight copy;
    copy.tests = std::move(open);
    copy.speculative = true;
    original->copied = true;
    ++stats.speculative_batches;
    return hand_out(worker, now_s, std::move(copy), false);
  }
  return std::nullopt;
}

// An idle worker with nothing it may run goes home when nothing is queued
// and enough others already wait (idle_workers_kept); it is no longer
// live, so a re-run never waits for it.
bool Dispatcher::State::release_idle(const std::string& worker) {
  if (next_fresh < fresh.size() || !requeued.empty()) return false;
  const std::size_t others_waiting = waiting.size() - waiting.count(worker);
  if (others_waiting < static_cast<std::size_t>(idle_workers_kept(options))) return false;
  waiting.erase(worker);
  live_workers.erase(worker);
  ++stats.workers_released;
  return true;
}

// The in-flight batch of another worker most worth a second copy: the one
// furthest past its estimate, if one has met a surprise (surprises_expected,
// kOverdueShare);
// else the one expected to finish last, if it is far enough from done to be
// worth a second worker.
InFlight* Dispatcher::State::straggler(const std::string& worker, double now_s) {
  InFlight* overdue = nullptr;
  double most_overdue_s = 0.0;
  InFlight* latest = nullptr;
  double latest_finish_s = 0.0;
  for (auto& [id, flight] : in_flight) {
    if (flight.speculative || flight.copied || flight.worker == worker) continue;
    // Only where the history shows surprises, and only a batch of tests with
    // their own history: elsewhere a batch that ran long met a slower machine
    // (six CPU-bound runners on 2 cores ran networkx's third build 59 s, not
    // 53, with copies of three such batches), or a wrong guess.
    const double overdue_s =
        now_s - tests_end_s(flight) - kOverdueShare * flight.known_s - options.min_speculation_s;
    if (surprises_expected && flight.guessed_s == 0.0 && overdue_s > most_overdue_s) {
      overdue = &flight;
      most_overdue_s = overdue_s;
    }
    // The copy pays this worker's start-up first: it can only win against
    // an original expected to need longer than that (its own start-up included).
    const double finish_s = flight.started_s + flight.estimate_s + cost.overhead_s(flight.worker);
    if (finish_s - now_s < options.min_speculation_s + cost.overhead_s(worker)) continue;
    if (latest == nullptr || finish_s > latest_finish_s ||
        (finish_s == latest_finish_s && flight.tests < latest->tests)) {
      latest = &flight;
      latest_finish_s = finish_s;
    }
  }
  return overdue != nullptr ? overdue : latest;
}

}  // namespace cd::shard
