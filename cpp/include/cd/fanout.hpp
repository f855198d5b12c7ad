// The release fan-out engine: runs a short sequence of commands per host over
// many hosts at once, in a bounded sliding window, with a timeout per host,
// retries on transient exit codes, a failure budget and cancellation.
//
// Data shapes:
//   jobs    : [{host, steps: [{argv: [...], stdin_data, parse_rsync_stats}]}]
//   results : [{host, status, exit_code, attempts, failed_step, stdout,
//               stderr_tail, duration_s, bytes_sent}]  in the order of jobs
//
// Commands are argument vectors handed to the OS as they are: no shell is
// involved on this side, so host names and paths are never re-parsed.
//
// The policy (window, timeouts, retries, budget, cancellation: fanout.cpp)
// reaches processes and time only through the Launcher declared at the end of
// this header; the real one (Boost.Process and Boost.Asio) lives in
// fanout_process.cpp, and tests inject a fake with a virtual clock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace cd::fanout {

struct Command {
  std::vector<std::string> argv;   // argv[0] is looked up on PATH
  std::string stdin_data;          // written to the process, then closed
  bool parse_rsync_stats = false;  // read "Total bytes sent" from stdout
};

// Steps run in order; the first failing step (after its retries) ends the
// host's sequence.
struct HostJob {
  std::string host;  // a label for the report; not interpreted here
  std::vector<Command> steps;
};

// rsync's partial-transfer, socket and timeout codes, and ssh's connection
// failure: worth a retry, unlike a syntax error or a full disk (11).
inline const std::vector<int> kDefaultTransientExitCodes = {10, 12, 23, 30, 35, 255};

struct FanoutOptions {
  int concurrency = 32;           // pssh's default window
  double host_timeout_s = 600.0;  // whole sequence of one host, retries included
  int max_retries = 2;            // per step, on a transient exit code only
  double retry_backoff_s = 0.5;   // doubled on each retry of the same step
  std::vector<int> transient_exit_codes = kDefaultTransientExitCodes;
  // Once more than this share of all hosts has failed, hosts not yet started
  // are skipped (Ansible's max_fail_percentage). 1.0 never aborts.
  double max_fail_fraction = 1.0;
  std::size_t output_tail_bytes = 4096;  // stderr (and stdout) kept per host
};

enum class HostStatus { Ok, Failed, TimedOut, Skipped, Cancelled };
const char* to_string(HostStatus status);

struct HostResult {
  std::string host;
  HostStatus status = HostStatus::Skipped;
  int exit_code = -1;       // of the last process run; -1 if none ran
  int attempts = 0;         // processes started for this host
  int failed_step = -1;     // index of the step that failed, -1 if none
  std::string stdout_tail;  // stdout of the last step
  std::string stderr_tail;
  double duration_s = 0.0;
  std::int64_t bytes_sent = 0;  // summed over steps with parse_rsync_stats
};

struct Progress {
  std::size_t total = 0;
  std::size_t done = 0;    // finished, whatever the status
  std::size_t failed = 0;  // Failed or TimedOut
  std::size_t running = 0;
};

// Called from the engine's thread after each host finishes.
using ProgressCallback = std::function<void(const HostResult&, const Progress&)>;

class Launcher;
using LauncherFactory = std::function<std::unique_ptr<Launcher>()>;

class Fanout {
 public:
  // Runs real processes (make_process_launcher).
  explicit Fanout(FanoutOptions options);
  // Runs through launchers made by `make_launcher`, one per run().
  Fanout(FanoutOptions options, LauncherFactory make_launcher);
  ~Fanout();
  Fanout(const Fanout&) = delete;
  Fanout& operator=(const Fanout&) = delete;

  // Blocks until every host is finished, skipped or cancelled. Throws
  // InvalidInput for an empty argv or concurrency < 1.
  std::vector<HostResult> run(const std::vector<HostJob>& jobs, const ProgressCallback& progress = {});

  // Thread-safe: running processes are killed, hosts not started are
  // Cancelled, and run() returns promptly.
  void cancel();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// ------------------------------------------------------------------ parsers

// The number after the last "Total bytes sent:" in rsync --stats output, with
// the locale's digit grouping ("1,234,567", "1.234.567", "1'234'567")
// skipped; 0 when there is no such line or the number is not a byte count.
std::int64_t parse_rsync_bytes_sent(std::string_view rsync_output);

// A raw waitpid(2) status as a shell reports it: the exit code, 128 + N for
// a death by signal N (a SIGKILL reads 137, never 9), -1 for anything else.
int shell_exit_code(int wait_status);

// ------------------------------------------------- the process boundary
//
// What the policy needs from the operating system, and nothing more. One
// Launcher serves one run(), on the thread that calls run(); handlers are
// called from run() only, never from inside start(), kill() or cancel(), and
// a handler may destroy the ProcessHandle or Timer it belongs to.

struct LaunchRequest {
  std::vector<std::string> argv;  // argv[0] is looked up on PATH; no shell
  std::string stdin_data;         // written to the process, then closed
  std::size_t stdout_limit = 0;   // bytes kept of the end of stdout
  std::size_t stderr_limit = 0;   // and of stderr
};

struct ProcessExit {
  int exit_code = -1;       // shell_exit_code(); -1 if the status was lost
  std::string stdout_tail;  // at most stdout_limit bytes
  std::string stderr_tail;  // at most stderr_limit bytes
  std::string error;        // why the status was lost; empty normally
};

class ProcessHandle {
 public:
  virtual ~ProcessHandle() = default;
  // Kills the process's whole group, or stops waiting for pipes that a
  // descendant still holds after it exited. The exit handler still runs.
  virtual void kill() = 0;
};

class Timer {
 public:
  virtual ~Timer() = default;  // destruction cancels, too
  // The handler will not run (if it has not already).
  virtual void cancel() = 0;
};

class Launcher {
 public:
  using ExitHandler = std::function<void(ProcessExit)>;

  virtual ~Launcher() = default;
  // Starts a process; `on_exit` runs exactly once, when it has exited and its
  // output is read. Returns null, with the reason in `error`, if it cannot be
  // started (no such program, not executable).
  virtual std::unique_ptr<ProcessHandle> start(const LaunchRequest& request, ExitHandler on_exit,
                                               std::string& error) = 0;
  // Seconds on a monotonic clock.
  virtual double now() const = 0;
  // Runs `on_fire` once, `seconds` from now, unless the Timer is cancelled.
  virtual std::unique_ptr<Timer> start_timer(double seconds, std::function<void()> on_fire) = 0;
  // Thread-safe: runs `handler` on the run() thread. Ignored once run() has
  // returned for good.
  virtual void post(std::function<void()> handler) = 0;
  // Runs handlers until no process, timer or posted handler is pending. An
  // exception from a handler propagates; calling run() again continues.
  virtual void run() = 0;
};

// The real launcher: Boost.Process children in their own process group (a kill
// reaches the whole tree), close-on-exec pipes, Boost.Asio timers. It holds
// SIGPIPE blocked on the calling thread and restores the SIGCHLD handler
// that was installed before it, once the last one is destroyed.
std::unique_ptr<Launcher> make_process_launcher();

}  // namespace cd::fanout
