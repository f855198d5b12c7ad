// The release fan-out policy (see cd/fanout.hpp and DESIGN.md section 4): a
// sliding window over the hosts, a timeout per host, retries of transient
// exit codes with doubling back-off, a failure budget, cancellation, progress
// and the per-host report.
//
// It runs on the thread that calls run() and touches processes and time only
// through a Launcher (the real one is in fanout_process.cpp), so it needs no
// locks except for cancel(), which only posts a handler to that thread.
#include "cd/fanout.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <utility>

#include "cd/error.hpp"

namespace cd::fanout {

const char* to_string(HostStatus status) {
  switch (status) {
    case HostStatus::Ok:
      return "ok";
    case HostStatus::Failed:
      return "failed";
    case HostStatus::TimedOut:
      return "timed_out";
    case HostStatus::Skipped:
      return "skipped";
    case HostStatus::Cancelled:
      return "cancelled";
  }
  return "unknown";
}

// rsync groups digits with the locale's separator (",", "." or "'"), so a
// separator followed by exactly three digits is skipped. Human-readable
// output (-h, "1.23K") is not supported: the caller builds the rsync command.
std::int64_t parse_rsync_bytes_sent(std::string_view output) {
  constexpr std::string_view kLabel = "Total bytes sent:";
  std::size_t at = output.rfind(kLabel);
  if (at == std::string_view::npos) return 0;
  std::size_t i = at + kLabel.size();
  while (i < output.size() && output[i] == ' ') ++i;
  auto is_digit = [&](std::size_t k) { return k < output.size() && output[k] >= '0' && output[k] <= '9'; };
  std::int64_t value = 0;
  while (i < output.size()) {
    char c = output[i];
    if (is_digit(i)) {
      int digit = c - '0';
      if (value > (INT64_MAX - digit) / 10) return 0;  // nonsense, not a byte count
      value = value * 10 + digit;
      ++i;
    } else if ((c == ',' || c == '.' || c == '\'') && is_digit(i + 1) && is_digit(i + 2) && is_digit(i + 3) &&
               !is_digit(i + 4)) {
      ++i;
    } else {
      break;
    }
  }
  return value;
}

namespace {

// rsync prints its whole --stats block (about 1 KiB) at the very end, so this
// much of stdout is kept for parsing even when output_tail_bytes is smaller.
constexpr std::size_t kRsyncStatsTailBytes = 4096;

// Prefix of the lines the engine itself adds to a host's stderr tail, so a
// reader of the report can tell them from the command's own output.
constexpr const char* kNotePrefix = "[fanout] ";

std::string last_bytes(const std::string& text, std::size_t limit) {
  return text.size() <= limit ? text : text.substr(text.size() - limit);
}

// The state of one host across its steps and retries.
struct HostRun {
  explicit HostRun(const HostJob& job) : job(job) { result.host = job.host; }

  const HostJob& job;
  HostResult result;
  std::string stderr_log;  // every attempt's stderr and the engine's notes
  std::size_t step = 0;
  int retries = 0;                      // of the current step
  std::optional<HostStatus> interrupt;  // TimedOut or Cancelled, once decided
  bool started = false;
  bool finished = false;
  double start_time = 0.0;
  std::unique_ptr<Timer> deadline;
  std::unique_ptr<Timer> backoff;          // set while waiting to retry
  std::unique_ptr<ProcessHandle> process;  // the attempt in flight, if any
};

// Far more than a host's log is worth, and well below where twice it (the
// trimming threshold) would wrap around.
constexpr std::size_t kMaxOutputTailBytes = std::size_t{1} << 30;

// Bytes a host's attempts sent, as rsync reports each: never wrapping round.
std::int64_t saturating_add(std::int64_t total, std::int64_t more) {
  return more > std::numeric_limits<std::int64_t>::max() - total ? std::numeric_limits<std::int64_t>::max()
                                                                 : total + more;
}

void validate(const FanoutOptions& options, const std::vector<HostJob>& jobs) {
  if (options.concurrency < 1)
    throw InvalidInput(fmt::format("concurrency must be at least 1, got {}", options.concurrency));
  if (!(options.host_timeout_s > 0))
    throw InvalidInput(fmt::format("host_timeout_s must be positive, got {}", options.host_timeout_s));
  if (options.max_retries < 0)
    throw InvalidInput(fmt::format("max_retries must not be negative, got {}", options.max_retries));
  if (!(options.retry_backoff_s >= 0) || !std::isfinite(options.retry_backoff_s))
    throw InvalidInput(
        fmt::format("retry_backoff_s must be a finite number >= 0, got {}", options.retry_backoff_s));
  if (!(options.max_fail_fraction >= 0 && options.max_fail_fraction <= 1))
    throw InvalidInput(
        fmt::format("max_fail_fraction must be within [0, 1], got {}", options.max_fail_fraction));
  if (options.output_tail_bytes > kMaxOutputTailBytes)
    throw InvalidInput(fmt::format("output_tail_bytes must be at most {}, got {}", kMaxOutputTailBytes,
                                   options.output_tail_bytes));
  for (const HostJob& job : jobs) {
    for (std::size_t i = 0; i < job.steps.size(); ++i) {
      const auto& argv = job.steps[i].argv;
      if (argv.empty() || argv[0].empty())
        throw InvalidInput(fmt::format("host '{}': step {} has an empty argv", job.host, i));
    }
  }
}

class Engine {
 public:
  Engine(Launcher& launcher, const FanoutOptions& options, const std::vector<HostJob>& jobs,
         const ProgressCallback& progress)
      : launcher_(launcher), options_(options), progress_(progress) {
    hosts_.reserve(jobs.size());
    for (const HostJob& job : jobs) hosts_.push_back(std::make_unique<HostRun>(job));
  }

  void start(bool cancelled) {
    if (cancelled) cancel_all();
    refill();
  }

  // Kills what runs, cancels what waits; killed hosts finish through their
  // exit handlers, so every child is still reaped.
  void cancel_all() {
    if (cancelled_) return;
    cancelled_ = true;
    for (auto& host : hosts_) {
      if (host->started && !host->finished) interrupt(*host, HostStatus::Cancelled, "cancelled; killed");
    }
    refill();
  }

  std::exception_ptr callback_error() const { return callback_error_; }

  std::vector<HostResult> results() const {
    std::vector<HostResult> out;
    out.reserve(hosts_.size());
    for (const auto& host : hosts_) out.push_back(host->result);
    return out;
  }

 private:
  // Starts hosts while the window has room; settles hosts that will never
  // start (cancelled, or over the failure budget). Re-entrant calls (a host
  // finishing while we start others) are folded into the running loop.
  void refill() {
    if (refilling_) return;
    refilling_ = true;
    struct Reset {
      bool& flag;
      ~Reset() { flag = false; }
    } reset{refilling_};
    while (next_ < hosts_.size()) {
      HostRun& host = *hosts_[next_];
      if (cancelled_) {
        ++next_;
        settle_unstarted(host, HostStatus::Cancelled, "cancelled before start");
      } else if (over_failure_budget()) {
        ++next_;
        settle_unstarted(host, HostStatus::Skipped,
                         fmt::format("skipped: {} of {} hosts failed, over the failure budget of {:g}%",
                                     failed_, hosts_.size(), options_.max_fail_fraction * 100));
      } else if (running_ < static_cast<std::size_t>(options_.concurrency)) {
        ++next_;
        start_host(host);
      } else {
        break;
      }
    }
  }

  bool over_failure_budget() const {
    return static_cast<double>(failed_) > options_.max_fail_fraction * static_cast<double>(hosts_.size());
  }

  void settle_unstarted(HostRun& host, HostStatus status, const std::string& note) {
    add_note(host, note);
    finish_host(host, status);
  }

  void start_host(HostRun& host) {
    host.started = true;
    host.start_time = launcher_.now();
    ++running_;
    host.deadline = launcher_.start_timer(options_.host_timeout_s, [this, &host] {
      interrupt(host, HostStatus::TimedOut,
                fmt::format("timed out after {:g} s; killed", options_.host_timeout_s));
    });
    run_step(host);
  }

  void run_step(HostRun& host) {
    if (host.step >= host.job.steps.size()) return finish_host(host, HostStatus::Ok);
    launch(host);
  }

  // Starts the current step of `host`. Failing to start is a failed step,
  // never an exception: one bad host must not abort the others.
  void launch(HostRun& host) {
    const Command& command = host.job.steps[host.step];
    LaunchRequest request{command.argv, command.stdin_data, options_.output_tail_bytes,
                          options_.output_tail_bytes};
    if (command.parse_rsync_stats)
      request.stdout_limit = std::max(request.stdout_limit, kRsyncStatsTailBytes);
    std::string error;
    try {
      host.process = launcher_.start(
          request, [this, &host](ProcessExit exit) { attempt_done(host, std::move(exit)); }, error);
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (host.process) {
      ++host.result.attempts;
      return;
    }
    add_note(host,
             fmt::format("cannot start '{}': {}", command.argv[0], error.empty() ? "unknown error" : error));
    host.result.failed_step = static_cast<int>(host.step);
    finish_host(host, HostStatus::Failed);
  }

  void attempt_done(HostRun& host, ProcessExit exit) {
    host.process.reset();
    const Command& command = host.job.steps[host.step];
    host.result.exit_code = exit.exit_code;
    host.result.stdout_tail = last_bytes(exit.stdout_tail, options_.output_tail_bytes);
    append_log(host, exit.stderr_tail);
    // Every attempt counts: its bytes crossed the network.
    if (command.parse_rsync_stats)
      host.result.bytes_sent =
          saturating_add(host.result.bytes_sent, parse_rsync_bytes_sent(exit.stdout_tail));
    if (!exit.error.empty()) add_note(host, fmt::format("lost the exit status: {}", exit.error));
    // A last step that had exited 0 when the deadline or a cancel struck
    // (what was killed is a daemon holding its output) did its work.
    const bool last_step_done = exit.exit_code == 0 && host.step + 1 == host.job.steps.size();
    if (host.interrupt && !last_step_done) return finish_host(host, *host.interrupt);
    if (exit.exit_code == 0) {
      ++host.step;
      host.retries = 0;
      return run_step(host);
    }
    if (is_transient(exit.exit_code) && host.retries < options_.max_retries) return schedule_retry(host);
    host.result.failed_step = static_cast<int>(host.step);
    finish_host(host, HostStatus::Failed);
  }

  bool is_transient(int exit_code) const {
    const auto& codes = options_.transient_exit_codes;
    return std::find(codes.begin(), codes.end(), exit_code) != codes.end();
  }

  // Back-off doubles per retry of the same step: a host that is rebooting or
  // an sshd that hit MaxStartups needs a moment, not a hammering.
  void schedule_retry(HostRun& host) {
    double delay = options_.retry_backoff_s * std::ldexp(1.0, host.retries);
    ++host.retries;
    add_note(host, fmt::format("step {} exited {}, a transient code: retry {} of {} in {:g} s", host.step,
                               host.result.exit_code, host.retries, options_.max_retries, delay));
    host.backoff = launcher_.start_timer(delay, [this, &host] {
      host.backoff.reset();
      launch(host);
    });
  }

  // Timeout or cancel: kill what runs (its exit then finishes the host), or
  // end a host that waits for a retry.
  void interrupt(HostRun& host, HostStatus status, const std::string& note) {
    if (host.finished || host.interrupt) return;
    host.interrupt = status;
    add_note(host, note);
    if (host.process) {
      host.process->kill();
    } else if (host.backoff) {
      host.backoff.reset();
      finish_host(host, status);
    }
  }

  void finish_host(HostRun& host, HostStatus status) {
    if (host.finished) return;
    host.finished = true;
    host.deadline.reset();
    HostResult& result = host.result;
    result.status = status;
    result.stderr_tail = last_bytes(host.stderr_log, options_.output_tail_bytes);
    if (host.started) {
      result.duration_s = launcher_.now() - host.start_time;
      --running_;
    }
    ++done_;
    if (status == HostStatus::Failed || status == HostStatus::TimedOut) ++failed_;
    report(result);
    refill();
  }

  // A throwing callback (a Python exception, say) ends the run: everything
  // is cancelled and run() rethrows once every child is reaped.
  void report(const HostResult& result) {
    if (!progress_) return;
    Progress progress{hosts_.size(), done_, failed_, running_};
    try {
      progress_(result, progress);
    } catch (...) {
      if (!callback_error_) callback_error_ = std::current_exception();
      cancel_all();
    }
  }

  // Keeps the last output_tail_bytes of the log; trimming only at twice that
  // makes appends amortised O(1).
  void append_log(HostRun& host, const std::string& text) {
    std::string& log = host.stderr_log;
    log += text;
    std::size_t limit = options_.output_tail_bytes;
    if (log.size() > 2 * limit) log.erase(0, log.size() - limit);
  }

  void add_note(HostRun& host, const std::string& note) {
    append_log(host, fmt::format("{}{}\n", kNotePrefix, note));
  }

  Launcher& launcher_;
  const FanoutOptions& options_;
  const ProgressCallback& progress_;
  std::vector<std::unique_ptr<HostRun>> hosts_;
  std::size_t next_ = 0;  // first host not started or settled
  std::size_t running_ = 0;
  std::size_t done_ = 0;
  std::size_t failed_ = 0;
  bool cancelled_ = false;
  bool refilling_ = false;
  std::exception_ptr callback_error_;
};

// What cancel() needs to reach a run in progress from another thread.
struct SharedRunState {
  std::mutex mutex;
  bool running = false;
  bool cancel_requested = false;  // sticky: a cancelled Fanout stays cancelled
  Launcher* launcher = nullptr;
  Engine* engine = nullptr;
};

// Publishes a run to cancel() for its duration, and withdraws it on every
// exit path so that a later run() is possible and cancel() never reaches a
// destroyed launcher.
class RunRegistration {
 public:
  explicit RunRegistration(SharedRunState& state) : state_(state) {
    std::lock_guard<std::mutex> lock(state_.mutex);
    if (state_.running) throw InvalidState("Fanout::run is already running on this object");
    state_.running = true;
  }
  // Returns whether cancel() was called before the run could be reached.
  bool publish(Launcher& launcher, Engine& engine) {
    std::lock_guard<std::mutex> lock(state_.mutex);
    state_.launcher = &launcher;
    state_.engine = &engine;
    return state_.cancel_requested;
  }
  void withdraw() {
    std::lock_guard<std::mutex> lock(state_.mutex);
    state_.launcher = nullptr;
    state_.engine = nullptr;
  }
  ~RunRegistration() {
    withdraw();
    std::lock_guard<std::mutex> lock(state_.mutex);
    state_.running = false;
  }
  RunRegistration(const RunRegistration&) = delete;
  RunRegistration& operator=(const RunRegistration&) = delete;

 private:
  SharedRunState& state_;
};

}  // namespace

struct Fanout::State : SharedRunState {
  FanoutOptions options;
  LauncherFactory make_launcher;
};

Fanout::Fanout(FanoutOptions options) : Fanout(std::move(options), make_process_launcher) {}

Fanout::Fanout(FanoutOptions options, LauncherFactory make_launcher) : state_(std::make_unique<State>()) {
  if (!make_launcher) throw InvalidInput("Fanout needs a launcher factory");
  state_->options = std::move(options);
  state_->make_launcher = std::move(make_launcher);
}

Fanout::~Fanout() = default;

std::vector<HostResult> Fanout::run(const std::vector<HostJob>& jobs, const ProgressCallback& progress) {
  validate(state_->options, jobs);
  RunRegistration registration(*state_);
  // Declaration order is destruction order in reverse: the engine's process
  // handles and timers go before the launcher that made them.
  std::unique_ptr<Launcher> launcher = state_->make_launcher();
  if (!launcher) throw InvalidState("the launcher factory returned no launcher");
  Engine engine(*launcher, state_->options, jobs, progress);
  bool cancelled = registration.publish(*launcher, engine);
  std::exception_ptr error;
  try {
    engine.start(cancelled);
  } catch (...) {
    error = std::current_exception();
    engine.cancel_all();
  }
  // Handlers do not throw on purpose; should one (bad_alloc), cancel and keep
  // running until every child is reaped rather than leave zombies behind.
  for (;;) {
    try {
      launcher->run();
      break;
    } catch (...) {
      if (!error) error = std::current_exception();
      engine.cancel_all();
    }
  }
  registration.withdraw();
  if (!error) error = engine.callback_error();
  if (error) std::rethrow_exception(error);
  return engine.results();
}

void Fanout::cancel() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->cancel_requested = true;
  if (state_->launcher != nullptr)
    state_->launcher->post([engine = state_->engine] { engine->cancel_all(); });
}

}  // namespace cd::fanout
