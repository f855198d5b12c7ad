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
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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

class Fanout {
 public:
  explicit Fanout(FanoutOptions options);
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

}  // namespace cd::fanout
