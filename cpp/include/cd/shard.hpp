// The test-shard scheduler: duration estimates from history, a static plan of
// N shards, and a dynamic dispatcher that workers pull batches from.
//
// Data shapes, in the order a caller uses them:
//   history  : [{test id: seconds}, ...] oldest run first
//   estimate : [{id, seconds, source}]   one per test to run
//   plan     : [{tests: [id...], estimate_s}] x N shards
//   dispatch : next_batch(worker, now) -> {Batch | Wait | Done};
//              report(worker, batch, [{id, passed, seconds}])
#pragma once

#include <cstdint>
#include <memory>
#include <string>
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

// ------------------------------------------------------------ duration files

// One pytest-split `.test_durations` file: a JSON object {"test id": seconds}.
struct DurationFile {
  std::string path;
  std::vector<std::string> ids;  // in the file's order (a later duplicate key wins, as in Python)
  DurationMap durations;
};

// Reads and checks one file: valid UTF-8, a JSON object whose values are
// finite numbers of seconds >= 0. Parsed with simdjson, so that a history of
// a million tests reads in a fraction of a second. Throws InvalidInput with
// a message that names the file and, where there is one, the test.
DurationFile read_duration_file(const std::string& path);

// The durations of several files, oldest first, as estimate_durations takes them.
std::vector<DurationMap> durations_of(const std::vector<DurationFile>& files);

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
  // Hard cap on tests per batch, so that one lost worker costs little.
  int max_batch_tests = 1000;
  // When nothing is queued, an idle worker may re-run the straggling batch
  // whose expected finish is latest; the first result wins.
  bool speculate = true;
  // Only straggle-copy a batch expected to need at least this much longer:
  // copying a nearly finished batch wastes a worker and gains nothing.
  double min_speculation_s = 1.0;
  // Same splitting rule as the static plan, against total / workers.
  double split_file_fraction = 0.5;
};

// Guided self-scheduling classically divides by the worker count alone; a
// larger divisor keeps batches small enough that a test far slower than its
// estimate (the real hypha suite has ~10 such per run, 40 s of database
// set-up each) holds up little else. Measured in bench/shard_bench.py.
inline constexpr double kGuidedDivisor = 8.0;

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
};

enum class Verdict {
  Pending,  // not yet decided
  Passed,   // passed on its first attempt
  Flaky,    // failed, then passed on another attempt
  Failed,   // failed on every attempt
};

const char* to_string(Verdict verdict);

struct Attempt {
  std::string worker;
  bool passed = false;
  double seconds = 0.0;
  std::string message;
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
  std::size_t batches_handed_out = 0;
  std::size_t batches_in_flight = 0;
  std::size_t speculative_batches = 0;
  std::size_t requeued_batches = 0;  // given back by lost workers
  double queued_estimate_s = 0.0;
};

// Thread-safe: any number of threads may call any member concurrently.
class Dispatcher {
 public:
  Dispatcher(std::vector<TestEstimate> tests, DispatchOptions options);
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // The next batch for `worker`, longest first. Wait means "ask again once
  // another worker reports": work is in flight elsewhere or a re-run must go
  // to a different worker. `now_s` is any monotonic clock (the simulator
  // passes its virtual one); it only orders straggler copies.
  Assignment next_batch(const std::string& worker, double now_s);

  // Results for a batch this worker was given. Tests of the batch missing
  // from `results` count as failed attempts ("no result reported"). Results
  // for a test already decided by another copy are ignored. Throws
  // InvalidState for a batch not in flight on this worker.
  void report(const std::string& worker, std::uint64_t batch_id, const std::vector<TestResult>& results);

  // The batch failed as a whole (runner crashed, unreadable report): every
  // test in it counts as a failed attempt with `message`.
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

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace cd::shard
