// The test-shard scheduler: duration estimates from history, a static plan of
// N shards, and a dynamic dispatcher that workers pull batches from.
//
// Data shapes, in the order a caller uses them:
//   history  : [{test id: seconds}, ...] oldest run first
//   estimate : [{id, seconds, source}]   one per test to run
//   plan     : [{tests: [id...], estimate_s}] x N shards
//   dispatch : next_batch(worker, now) -> {Batch | Wait | Done};
//              report(worker, batch, [{id, passed, seconds, message, skipped}])
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cd::shard {

// ---------------------------------------------------------------- estimates

using DurationMap = std::unordered_map<std::string, double>;

// Where a test's estimate came from, most trustworthy first.
enum class EstimateSource {
  History,       // its own recent runs, the slowest one dropped, averaged
  FileMedian,    // new test: median of the known tests in its file
  GlobalMedian,  // new test in a new file: median of all known tests
  Default,       // nothing is known about any test: a flat guess
};

const char* to_string(EstimateSource source);

struct TestEstimate {
  std::string id;
  double seconds = 0.0;
  EstimateSource source = EstimateSource::Default;
  // How far its recent runs stray from one another (their standard
  // deviation), when it has two or more; unknown otherwise. The dispatcher
  // reads from it how predictable the suite is.
  std::optional<double> spread_s;
};

// Runs looked at per test: enough that dropping the slowest leaves a mean,
// few enough to follow a test whose duration really changed.
inline constexpr std::size_t kRecentRunsConsidered = 5;

// With no history at all every test gets the same weight; the unit is moot.
inline constexpr double kDefaultEstimateSeconds = 1.0;

// The file (setup unit) a test id belongs to: the part before the first "::"
// for pytest-style ids, else the id itself.
std::string file_of(const std::string& test_id);

// One estimate per test, in the order of `tests`. Throws InvalidInput for a
// negative or non-finite duration in the history (naming the test) and for
// duplicate test ids.
std::vector<TestEstimate> estimate_durations(const std::vector<std::string>& tests,
                                             const std::vector<DurationMap>& history);

class DurationHistory;  // below, with the duration files

// The same from a history read by the core, and for the tests of its newest
// run (in that file's order). The durations were checked as they were read.
std::vector<TestEstimate> estimate_durations(const std::vector<std::string>& tests,
                                             const DurationHistory& history);
std::vector<TestEstimate> estimate_durations(const DurationHistory& history);

// ------------------------------------------------------------ duration files

// One pytest-split `.test_durations` file: a JSON object {"test id": seconds}.
struct DurationFile {
  std::string path;
  std::vector<std::string> ids;  // in the file's order (a later duplicate key wins, as in Python)
  DurationMap durations;
};

// No test runs for a week: a larger figure is a corrupt file, and the bound
// keeps every sum of durations finite.
inline constexpr double kMaxTestDurationSeconds = 7 * 24 * 3600.0;

// Reads and checks one file: valid UTF-8, a JSON object whose values are
// numbers of seconds between 0 and kMaxTestDurationSeconds. Parsed with simdjson, so that a history of
// a million tests reads in a fraction of a second. Throws InvalidInput with
// a message that names the file and, where there is one, the test.
DurationFile read_duration_file(const std::string& path);

// The durations of several files, oldest first, as estimate_durations takes them.
std::vector<DurationMap> durations_of(const std::vector<DurationFile>& files);

// Several duration files, oldest first, read into one table: each test id
// once, with its duration in each run. A million tests in five files are
// then a million ids and five columns of numbers, not five hash maps of a
// million nodes each.
class DurationHistory {
 public:
  // Reads and checks each file as read_duration_file does; throws
  // InvalidInput naming the file, or for an empty list.
  static DurationHistory read(const std::vector<std::string>& paths);

  DurationHistory(DurationHistory&&) noexcept;
  DurationHistory& operator=(DurationHistory&&) noexcept;
  ~DurationHistory();

  std::size_t runs() const;   // files read
  std::size_t tests() const;  // distinct test ids over all runs
  std::string_view id(std::size_t test) const;
  // The test's index, for `seconds`; nullopt for an id in no run.
  std::optional<std::size_t> find(std::string_view id) const;
  // Its duration in that run (0 is the oldest); nullopt when absent there.
  std::optional<double> seconds(std::size_t run, std::size_t test) const;
  // The tests of one run in its file's order (a later duplicate key wins,
  // as in Python, and keeps the first one's place).
  const std::vector<std::uint32_t>& tests_of(std::size_t run) const;

 private:
  struct Table;
  explicit DurationHistory(std::unique_ptr<Table> table);
  std::unique_ptr<Table> table_;
};

// --------------------------------------------------------------- static plan

struct PlanOptions {
  int shards = 1;
  // A file whose estimate exceeds this share of the per-shard average is
  // split into its test cases: a single long file would otherwise cap the
  // makespan (DESIGN.md section 3).
  double split_file_fraction = 0.5;
  // Bound on the move/swap passes after LPT; each pass is cheap, and LPT is
  // already within a fraction of a percent of the bound on real suites.
  int max_improvement_passes = 2000;
};

struct Shard {
  std::vector<std::string> tests;
  double estimate_s = 0.0;
};

struct Plan {
  std::vector<Shard> shards;
  double lower_bound_s = 0.0;  // max(longest unit, total / shards)
  double makespan_s() const;
};

// The plan as `buildbot-cd plan --json` prints it:
//   {"shards": [{"tests": [...], "estimate_s": x}, ...], "makespan_s": x, "lower_bound_s": x}
// Strings are escaped as JSON requires; numbers are finite by construction.
std::string plan_to_json(const Plan& plan);

// Longest-first onto the least-loaded shard, then a move/swap pass between
// the fullest shard and the emptiest ones. Deterministic for the same input;
// no shard is empty while there are at least `shards` tests. Throws
// InvalidInput for shards < 1, an empty suite, or a negative estimate.
Plan plan_static(const std::vector<TestEstimate>& tests, const PlanOptions& options);

// ---------------------------------------------------------------- dispatcher

struct DispatchOptions {
  // Workers expected to pull; sizes the first batches (guided self-scheduling
  // hands out remaining / (kGuidedDivisor * workers) at a time).
  int workers = 1;
  // Runs of a test before it is called failed; 1 disables re-runs.
  int max_attempts = 2;
  // Batches smaller than this (estimated seconds) are topped up: each batch
  // costs a round trip and a runner start on the worker.
  double min_batch_s = 0.0;
  // Hard cap on tests per batch: it bounds a batch's ids file and report. A
  // file with more tests than this is split into runs of at most this many.
  // Batches are sized in seconds; a cap that binds costs a runner start-up.
  // A history that shows surprises caps batches further, at a worker's share
  // of the suite by count (DispatchStats::batch_tests_cap).
  int max_batch_tests = 10000;
  // When nothing is queued, an idle worker may re-run a straggling batch:
  // where the history shows surprises, one running well past its estimate
  // (kOverdueShare) first; else the one whose expected finish is latest. The
  // first result wins; a test that fails in either copy is re-run at once.
  bool speculate = true;
  // Only straggle-copy a batch expected to need at least this much longer
  // (copying a nearly finished batch wastes a worker and gains nothing), or
  // one running at least this much past its estimate and kOverdueShare.
  double min_speculation_s = 1.0;
  // Same splitting rule as the static plan, against total / workers.
  double split_file_fraction = 0.5;
  // What a batch costs beyond its tests (runner start-up, collection,
  // fixtures), as learned by earlier builds; 0 when unknown. Each worker's
  // own figure replaces it once that worker has finished a batch.
  double batch_overhead_s = 0.0;
  // Scale the guessed estimates (file or global median, default) of the
  // tests still queued by observed / estimated over the guessed tests that
  // have finished: a first build then sizes its batches from what it sees.
  bool recalibrate = true;
};

// A batch is worth its start-up only when its tests take at least this many
// times as long: the start-up is then at most a fifth of a worker's time,
// while a worker's share still comes in several batches (a share of 12
// start-ups is 3 batches) that the tail can balance. A worker's whole share
// is one batch when it is smaller, or when the history shows the suite
// predictable enough that a second batch would not repay its start-up (see
// kSecondBatchGain). Measured in bench/shard_buildbot_bench.py.
inline constexpr double kBatchWorthFactor = 4.0;

// What one worker's batches cost beyond their tests, learned from each
// finished batch's wall time against the durations its report gives, and
// how far the guessed estimates are from what the tests really take.
// Not thread-safe: the Dispatcher calls it under its lock.
class BatchCostModel {
 public:
  explicit BatchCostModel(double prior_overhead_s = 0.0);

  // A finished batch: `wall_s` from its command's start to its end,
  // `tests_s` the sum of its tests' reported durations. Overhead is never
  // negative (a runner may time its tests a little generously).
  void observe_batch(const std::string& worker, double wall_s, double tests_s);
  // Finished tests whose estimate was a guess (not their own history).
  void observe_guessed(double estimated_s, double observed_s);

  // This worker's mean overhead; a worker not yet observed gets the mean of
  // those that are, else the prior.
  double overhead_s(const std::string& worker) const;
  double overhead_s() const;  // the mean over observed workers, else the prior
  std::unordered_map<std::string, double> overhead_by_worker() const;
  // observed / estimated over the guessed tests seen so far; 1 before any.
  double guess_scale() const;
  // Whether a guessed test has finished: guess_scale() is a measurement.
  bool guesses_observed() const { return guessed_estimated_s_ > 0.0; }

 private:
  struct Observed {
    double overhead_sum_s = 0.0;
    std::size_t batches = 0;
  };
  double prior_overhead_s_;
  std::unordered_map<std::string, Observed> by_worker_;
  double guessed_estimated_s_ = 0.0;
  double guessed_observed_s_ = 0.0;
};

// A worker's share sent as one batch ends late by about z * sigma: sigma the
// spread of the share's tests (independent, so their variances add) and z
// the expected largest of the workers' deviations in units of sigma,
// sqrt(2 ln workers). Sent as two, the second is cut once the first has shown
// how far off it was, and only its own spread is left: sigma / sqrt(2). So a
// second batch takes back this share of the lateness, for one more start-up.
inline const double kSecondBatchGain = 1.0 - 1.0 / std::sqrt(2.0);

// The spread of a suite is known when the tests whose spread is known carry
// at least this share of its estimated seconds: a few new tests do not make
// a predictable suite unpredictable, a history of one run does.
inline constexpr double kSpreadKnownShare = 0.9;

// Surprises are expected when the tests whose spread is known show them and
// carry at least this share of the suite's estimated seconds: where one batch
// per worker needs nearly the whole suite shown predictable, surprises seen
// in half of it are enough to expect more (the real hypha suite's versions
// add up to 40 % new tests, with the same ~10 surprises per run).
inline constexpr double kSurprisesSeenShare = 0.5;

// Where the history shows surprises (kSurprisesSeenShare), a batch whose
// tests have run this share of their estimate past it (and
// min_speculation_s) has met one, a test far slower than its history says:
// tests vary 15-20 % from run to run (DESIGN.md section 3), and a batch's
// deviation averages down over its tests. How much longer it will
// run is unknown, so an idle worker copies it: a copy rarely meets the same
// surprise (the real hypha suite's land on a different test each run), and
// the original's command is stopped when the copy's results decide it.
inline constexpr double kOverdueShare = 0.2;

// Guided self-scheduling classically divides by the worker count alone; a
// larger divisor keeps batches small enough that a test far slower than its
// estimate (the real hypha suite has ~10 such per run, 40 s of database
// set-up each) holds up little else. Measured in bench/shard_bench.py.
inline constexpr double kGuidedDivisor = 8.0;

// A batch that fails as a whole (a test hangs past the batch timeout, or
// crashes its runner) says nothing of which of its tests did it: re-run
// together, the culprit takes its batch-mates down again, and at
// max_attempts every one of them is failed. So their re-runs go in batches
// of their own ("isolated"): one test each while the budget holds them all,
// else fewer runs, and the run that fails again is cut again. Each run pays
// a runner start-up: the budget is this many runs per worker, a run that
// passes (it held no culprit) goes back to it, and a run cut again hands its
// own on. A commit that fails every batch (a conftest.py that no longer
// imports) gets none back, and costs at most twice that many start-ups per
// worker more, not one per test of the suite; past the budget, re-runs go as
// after any failure. Eight: with a 2 s start-up that is at most about 30 s
// more per worker for a build that fails anyway, and one worker still finds
// a culprit among 10,000 tests (28 runs, all but a few giving theirs back).
inline constexpr std::size_t kIsolatedRunsPerWorker = 8;

struct Batch {
  std::uint64_t id = 0;
  std::vector<std::string> tests;
  double estimate_s = 0.0;
  bool speculative = false;  // a second copy of a straggling batch
  bool retry = false;        // re-runs of tests that failed elsewhere
};

struct Assignment {
  enum class Kind { Run, Wait, Done };
  Kind kind = Kind::Done;
  Batch batch;  // meaningful when kind == Run
};

struct TestResult {
  std::string id;
  bool passed = false;
  double seconds = 0.0;
  std::string message;  // failure text, kept for the report
  // The runner did not run the test (pytest's skip, skipif, xfail): it is
  // decided, not re-run, and neither passes nor gates. `passed` is ignored.
  bool skipped = false;
};

enum class Verdict {
  Pending,  // not yet decided
  Passed,   // passed on its first attempt
  Flaky,    // failed, then passed on another attempt
  Failed,   // failed, and no attempt passed (a skip is no pass)
  Skipped,  // the runner skipped it on its first attempt: resolved, never gates
};

const char* to_string(Verdict verdict);

struct Attempt {
  std::string worker;
  bool passed = false;
  double seconds = 0.0;
  std::string message;
  bool skipped = false;
  // `seconds` is the runner's own time for the test. False for a test with
  // no result (its batch failed as a whole, or its report left it out):
  // seconds is then 0, which is no duration to learn from.
  bool timed = false;
};

struct TestOutcome {
  std::string id;
  Verdict verdict = Verdict::Pending;
  double estimate_s = 0.0;
  std::vector<Attempt> attempts;  // in the order their results arrived
};

struct DispatchStats {
  std::size_t tests = 0;
  std::size_t resolved = 0;
  std::size_t passed = 0;
  std::size_t flaky = 0;
  std::size_t failed = 0;
  std::size_t skipped = 0;
  std::size_t batches_handed_out = 0;
  std::size_t batches_in_flight = 0;
  std::size_t speculative_batches = 0;
  std::size_t requeued_batches = 0;  // given back by lost workers
  // Workers told Done while others still ran: idle, with nothing queued,
  // and enough others already waiting (see idle_workers_kept).
  std::size_t workers_released = 0;
  // Batches cut as the asking worker's whole part of what was left because
  // the history showed the suite predictable: a second batch per worker
  // would not have repaid its start-up (see kSecondBatchGain).
  std::size_t whole_part_batches = 0;
  // Tests per batch at most: max_batch_tests, or a worker's share of the
  // suite by count when the history showed the suite surprise-prone (a
  // second batch per worker would repay its start-up: see kSecondBatchGain
  // and kSurprisesSeenShare).
  std::size_t batch_tests_cap = 0;
  // Times a file's queued tests were divided between two batches so that a
  // part meant to end with the others could be cut to the test: each time,
  // the file's import and module fixtures are paid once more.
  std::size_t files_split = 0;
  // Isolated runs handed out: re-runs cut from batches that failed as a whole,
  // to find the test that did it without taking its batch-mates down again
  // (kIsolatedRunsPerWorker).
  std::size_t isolated_runs = 0;
  // Queued work, the guessed estimates scaled by estimate_scale.
  double queued_estimate_s = 0.0;
  // The cost model's figures: mean overhead per batch over the workers seen
  // (the prior until a batch with a wall time is reported), and the factor
  // applied to guessed estimates.
  double batch_overhead_s = 0.0;
  double estimate_scale = 1.0;
};

// Idle workers kept waiting, once nothing is queued, for what may still
// come: re-runs of tests that fail (each must go to a worker that has not
// run the test nor runs it now, so a test's last re-run can start at once
// on a waiting one when max_attempts - 1 wait) and batches given back by a
// lost worker. Any other idle worker is told Done: held until the end, every
// shard would end at the same moment, and the master would then wrap up all
// their builds at once after the last test (16 shard builds: about 3 s on a
// 2-core master).
inline int idle_workers_kept(const DispatchOptions& options) { return std::max(1, options.max_attempts - 1); }

// Thread-safe: any number of threads may call any member concurrently.
class Dispatcher {
 public:
  Dispatcher(std::vector<TestEstimate> tests, DispatchOptions options);
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // The next batch for `worker`, longest first. Wait means "ask again once
  // another worker reports": work is in flight elsewhere or a re-run must go
  // to a different worker. Done means "ask no more": every test is decided,
  // or nothing is queued and enough other workers already wait for what may
  // still come (see idle_workers_kept). `now_s` is any monotonic clock (the
  // simulator passes its virtual one); it orders arrivals and straggler copies.
  Assignment next_batch(const std::string& worker, double now_s);

  // Results for a batch this worker was given. Tests of the batch missing
  // from `results` count as attempts without a result ("no result reported"),
  // as in report_error. Results
  // for a test already decided by another copy are ignored. A skipped result
  // decides its test as Skipped; after an earlier failure it is no pass: it
  // counts as an attempt that did not pass (the test is re-run while attempts
  // are left, else Failed), so a broken test skipped elsewhere still gates. Throws InvalidState for a batch
  // not in flight on this worker, and InvalidInput for a result whose
  // seconds are negative or not finite; either way nothing is recorded and
  // the batch stays in flight, so the caller can still report_error it.
  void report(const std::string& worker, std::uint64_t batch_id, const std::vector<TestResult>& results);

  // The same, with the batch's wall time on the worker (its runner's start
  // to its end): the cost model learns the batch's overhead from it, when
  // every test of the batch has a result. Throws InvalidInput for a wall
  // time that is negative or not finite, recording nothing.
  void report(const std::string& worker, std::uint64_t batch_id, const std::vector<TestResult>& results,
              double wall_s);

  // The batch failed as a whole (runner crashed, unreadable report): every
  // test in it counts as an attempt that did not pass, with `message`, but as
  // no failure of its own (as a test missing from a report): re-run while
  // attempts are left, Passed (not Flaky) if it then passes, else Failed.
  void report_error(const std::string& worker, std::uint64_t batch_id, const std::string& message);

  // The worker is gone: its batches go back to the queue (no attempt is
  // counted) and it is given nothing more.
  void worker_lost(const std::string& worker);

  // True once every test of a batch is decided, so a straggler copy still
  // running elsewhere may be cancelled.
  bool batch_obsolete(std::uint64_t batch_id) const;

  bool done() const;
  DispatchStats stats() const;
  std::vector<TestOutcome> outcomes() const;
  // Each worker's learned overhead per batch, in seconds.
  std::unordered_map<std::string, double> overhead_by_worker() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace cd::shard
