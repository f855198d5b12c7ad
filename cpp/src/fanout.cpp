// The release fan-out engine (see cd/fanout.hpp and DESIGN.md section 4).
//
// Everything runs on the thread that calls run(), in one Boost.Asio
// io_context: processes are started with Boost.Process (argument vectors, no
// shell), their pipes are read asynchronously, their exit arrives through
// Boost.Process's on_exit (a SIGCHLD watcher), and timeouts and back-offs are
// steady_timers. Being single-threaded, the engine needs no locks except for
// cancel(), which only posts a handler into the io_context.
#include "cd/fanout.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/posix.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <exception>
#include <mutex>
#include <optional>
#include <system_error>
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

namespace {

namespace asio = boost::asio;
namespace bp = boost::process;
using Clock = std::chrono::steady_clock;

// One page per read: pipes hand over at most what the child wrote, and a
// small buffer keeps memory flat over hundreds of hosts in flight.
constexpr std::size_t kReadChunkBytes = 4096;

// rsync prints its whole --stats block (about 1 KiB) at the very end, so this
// much of stdout is kept for parsing even when output_tail_bytes is smaller.
constexpr std::size_t kRsyncStatsTailBytes = 4096;

// After a process exits, a descendant outside its process group (e.g. a
// daemonised ssh ControlPersist master) may still hold its stdout/stderr
// open; EOF would then never come. Past this grace the pipes are closed.
constexpr auto kPipeDrainGrace = std::chrono::seconds(2);

// Exit code reported for a process killed by a signal: the shell's
// convention (128 + signal number), so a SIGKILL reads 137, never 9.
constexpr int kSignalExitBase = 128;

// steady_timer durations overflow for absurd timeouts; this caps them at
// about 31 years, which is "never" for a deploy.
constexpr double kMaxTimerSeconds = 1e9;

// Prefix of the lines the engine itself adds to a host's stderr tail, so a
// reader of the report can tell them from the command's own output.
constexpr const char* kNotePrefix = "[fanout] ";

Clock::duration to_duration(double seconds) {
  double clamped = std::clamp(seconds, 0.0, kMaxTimerSeconds);
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(clamped));
}

std::string errno_message(int error) { return std::error_code(error, std::generic_category()).message(); }

// Keeps the last `limit` bytes of a stream. Trimming only when the buffer
// holds twice the limit makes appends amortised O(1) instead of O(limit).
class Tail {
 public:
  explicit Tail(std::size_t limit) : limit_(limit) {}

  void append(const char* data, std::size_t size) {
    buffer_.append(data, size);
    if (buffer_.size() > 2 * limit_) buffer_.erase(0, buffer_.size() - limit_);
  }
  void append(const std::string& text) { append(text.data(), text.size()); }

  // The last min(limit, limit_) bytes.
  std::string last(std::size_t limit) const {
    std::size_t keep = std::min({limit, limit_, buffer_.size()});
    return buffer_.substr(buffer_.size() - keep);
  }

 private:
  std::size_t limit_;
  std::string buffer_;
};

// Parses the number after the last "Total bytes sent:" in rsync --stats
// output. rsync groups digits with the locale's separator (",", "." or "'"),
// so a separator followed by three digits is skipped. Human-readable output
// (-h, "1.23K") is not supported: the caller builds the rsync command.
std::int64_t parse_rsync_bytes_sent(const std::string& output) {
  static const std::string kLabel = "Total bytes sent:";
  std::size_t at = output.rfind(kLabel);
  if (at == std::string::npos) return 0;
  std::size_t i = at + kLabel.size();
  while (i < output.size() && output[i] == ' ') ++i;
  std::int64_t value = 0;
  auto is_digit = [&](std::size_t k) { return k < output.size() && output[k] >= '0' && output[k] <= '9'; };
  while (i < output.size()) {
    char c = output[i];
    if (is_digit(i)) {
      if (value > (INT64_MAX - 9) / 10) return 0;  // nonsense, not a byte count
      value = value * 10 + (c - '0');
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

// Exit status as a shell would report it, from waitpid's raw status.
int decode_wait_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return kSignalExitBase + WTERMSIG(status);
  return -1;
}

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    reset();
    fd_ = std::exchange(other.fd_, -1);
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// Both ends are close-on-exec, created atomically by pipe2: a child started
// for one host (or by any other thread of the process) can never inherit the
// pipes of another host. The child's own ends reach fds 0-2 through dup2,
// which clears the flag on the copy only.
struct Pipe {
  Fd read;
  Fd write;
};

std::optional<Pipe> make_pipe(int& error) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    error = errno;
    return std::nullopt;
  }
  return Pipe{Fd(fds[0]), Fd(fds[1])};
}

// Runs in the child between fork and exec, and in the parent on failure.
struct ChildSetup : bp::extend::handler {
  // Own session, hence own process group, so a timeout or cancel kills the
  // whole tree the step started (ssh, rsync's sender, a script's children)
  // with one kill(2). A session is also what pssh gives each child: under
  // the kernel's autogroup scheduling every session gets its own CPU share,
  // so on a busy master the fan-out is not squeezed into one group's share
  // (bench/push_bench.py measured 50 cold ssh logins 2-3x faster at load 25).
  // The signal state is reset because the engine's thread blocks SIGPIPE and
  // Python ignores it; rsync, ssh and sh expect the defaults (Python's
  // subprocess restores SIGPIPE for the same reason).
  template <class Executor>
  void on_exec_setup(Executor&) const {
    ::setsid();
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
  }

  // Boost.Process 1.74 returns an empty child when exec fails after fork and
  // never waits for the forked process: reap it here so no zombie remains.
  // (Later releases reap it themselves, after the on_error handlers; their
  // waitpid then finds nothing, which is harmless.) The kill only guards the
  // case where a launch error is reported for a child that did exec.
  template <class Executor>
  void on_error(Executor& exec, const std::error_code&) const {
    if (exec.pid <= 0) return;  // fork never happened
    ::kill(exec.pid, SIGKILL);
    while (::waitpid(exec.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
};

// Boost.Process's on_exit watches SIGCHLD through an asio::signal_set, and
// asio resets SIGCHLD to SIG_DFL when the last set goes away, discarding
// whatever handler was there before (Twisted's, in a Buildbot master). This
// keeps the handler that was installed before the first concurrent run and
// puts it back after the last one, then raises SIGCHLD once so its owner
// reaps any child that exited meanwhile.
class SigchldGuard {
 public:
  SigchldGuard() {
    std::lock_guard<std::mutex> lock(mutex());
    if (users()++ == 0) ::sigaction(SIGCHLD, nullptr, &saved());
  }
  ~SigchldGuard() {
    std::lock_guard<std::mutex> lock(mutex());
    if (--users() != 0) return;
    ::sigaction(SIGCHLD, &saved(), nullptr);
    bool has_handler = (saved().sa_flags & SA_SIGINFO) != 0 ||
                       (saved().sa_handler != SIG_DFL && saved().sa_handler != SIG_IGN);
    if (has_handler) ::kill(::getpid(), SIGCHLD);
  }
  SigchldGuard(const SigchldGuard&) = delete;
  SigchldGuard& operator=(const SigchldGuard&) = delete;

 private:
  static std::mutex& mutex() {
    static std::mutex instance;
    return instance;
  }
  static int& users() {
    static int count = 0;
    return count;
  }
  static struct sigaction& saved() {
    static struct sigaction action {};
    return action;
  }
};

// Writing stdin to a child that has exited raises SIGPIPE, which kills a
// process that has not ignored it (a C++ program, unlike Python). Blocking it
// on the engine's thread turns it into an EPIPE error; a SIGPIPE left pending
// is consumed before the mask is restored.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&pipe_only_);
    sigaddset(&pipe_only_, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &pipe_only_, &previous_);
  }
  ~SigpipeBlock() {
    if (!sigismember(&previous_, SIGPIPE)) {
      struct timespec no_wait {};
      while (::sigtimedwait(&pipe_only_, nullptr, &no_wait) == SIGPIPE) {
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t pipe_only_;
  sigset_t previous_;
};

struct HostRun;

// One process: one attempt of one step.
struct Process {
  Process(asio::io_context& io, HostRun& host, std::size_t stdout_limit)
      : host(host), in(io), out(io), err(io), drain_timer(io), stdout_tail(stdout_limit) {}

  HostRun& host;
  bp::child child;
  pid_t pid = -1;
  asio::posix::stream_descriptor in, out, err;
  std::array<char, kReadChunkBytes> out_buffer{};
  std::array<char, kReadChunkBytes> err_buffer{};
  asio::steady_timer drain_timer;
  Tail stdout_tail;
  int open_streams = 2;  // stdout and stderr, until EOF or closed
  bool exited = false;
  bool completed = false;
  int exit_code = -1;
  std::string exit_error;  // set when the exit status could not be read
};

// The state of one host across its steps and retries.
struct HostRun {
  HostRun(asio::io_context& io, const HostJob& job, std::size_t tail_limit)
      : job(job), stderr_log(tail_limit), deadline(io), backoff(io) {
    result.host = job.host;
  }

  const HostJob& job;
  HostResult result;
  Tail stderr_log;  // every attempt's stderr and the engine's notes
  std::size_t step = 0;
  int retries = 0;                      // of the current step
  std::optional<HostStatus> interrupt;  // TimedOut or Cancelled, once decided
  bool started = false;
  bool finished = false;
  bool waiting_backoff = false;
  Clock::time_point start_time;
  asio::steady_timer deadline;
  asio::steady_timer backoff;
  std::shared_ptr<Process> process;  // the attempt in flight, if any
};

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
  for (const HostJob& job : jobs) {
    for (std::size_t i = 0; i < job.steps.size(); ++i) {
      const auto& argv = job.steps[i].argv;
      if (argv.empty() || argv[0].empty())
        throw InvalidInput(fmt::format("host '{}': step {} has an empty argv", job.host, i));
    }
  }
}

// argv[0] as an absolute path, or the reason it cannot be run. Checked before
// forking so that the common mistake (a program not installed) is reported
// plainly and costs no fork.
std::optional<std::string> resolve_executable(const std::string& name, std::string& error) {
  if (name.find('/') != std::string::npos) {
    if (::access(name.c_str(), X_OK) == 0) return name;
    error = errno_message(errno);
    return std::nullopt;
  }
  auto path = bp::search_path(name);
  if (path.empty()) {
    error = errno_message(ENOENT);
    return std::nullopt;
  }
  return path.string();
}

class Engine {
 public:
  Engine(asio::io_context& io, const FanoutOptions& options, const std::vector<HostJob>& jobs,
         const ProgressCallback& progress)
      : io_(io), options_(options), progress_(progress) {
    hosts_.reserve(jobs.size());
    for (const HostJob& job : jobs)
      hosts_.push_back(std::make_unique<HostRun>(io, job, options.output_tail_bytes));
  }

  void start(bool cancelled) {
    if (cancelled) cancel_all();
    refill();
  }

  // Kills what runs, cancels what waits; the hosts finish through their
  // usual handlers, so every child is still reaped.
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
    host.start_time = Clock::now();
    ++running_;
    host.deadline.expires_after(to_duration(options_.host_timeout_s));
    host.deadline.async_wait([this, &host](const boost::system::error_code& ec) {
      if (ec || host.finished) return;
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
    std::string error;
    try {
      if (auto exe = resolve_executable(command.argv[0], error)) {
        if (spawn(host, command, *exe, error)) return;
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    add_note(host, fmt::format("cannot start '{}': {}", command.argv[0], error));
    host.result.failed_step = static_cast<int>(host.step);
    finish_host(host, HostStatus::Failed);
  }

  bool spawn(HostRun& host, const Command& command, const std::string& exe, std::string& error) {
    int pipe_error = 0;
    auto stdin_pipe = make_pipe(pipe_error);
    auto stdout_pipe = stdin_pipe ? make_pipe(pipe_error) : std::nullopt;
    auto stderr_pipe = stdout_pipe ? make_pipe(pipe_error) : std::nullopt;
    if (!stderr_pipe) {
      error = errno_message(pipe_error);
      return false;
    }
    std::size_t stdout_limit = options_.output_tail_bytes;
    if (command.parse_rsync_stats) stdout_limit = std::max(stdout_limit, kRsyncStatsTailBytes);
    auto process = std::make_shared<Process>(io_, host, stdout_limit);

    std::error_code ec;
    std::vector<std::string> args(command.argv.begin() + 1, command.argv.end());
    process->child =
        bp::child(bp::exe = exe, bp::args = args, bp::posix::fd.bind(STDIN_FILENO, stdin_pipe->read.get()),
                  bp::posix::fd.bind(STDOUT_FILENO, stdout_pipe->write.get()),
                  bp::posix::fd.bind(STDERR_FILENO, stderr_pipe->write.get()), ChildSetup{}, io_,
                  bp::on_exit([this, process](int, const std::error_code& exit_ec) {
                    // Posted: Boost may call this from inside the
                    // child's constructor, before `child` is set.
                    asio::post(io_, [this, process, exit_ec] { on_exit(process, exit_ec); });
                  }),
                  ec);
    if (ec) {
      error = ec.message();
      return false;
    }
    // The child's ends now live in the child only; closing ours lets EOF
    // arrive when the child (and its descendants) are done.
    process->pid = process->child.id();
    process->in.assign(stdin_pipe->write.release());
    process->out.assign(stdout_pipe->read.release());
    process->err.assign(stderr_pipe->read.release());
    ++host.result.attempts;
    host.process = process;
    read(process, process->out, process->out_buffer);
    read(process, process->err, process->err_buffer);
    write_stdin(process, command.stdin_data);
    return true;
  }

  void read(const std::shared_ptr<Process>& process, asio::posix::stream_descriptor& stream,
            std::array<char, kReadChunkBytes>& buffer) {
    stream.async_read_some(asio::buffer(buffer), [this, process, &stream, &buffer](
                                                     const boost::system::error_code& ec, std::size_t size) {
      if (&stream == &process->out)
        process->stdout_tail.append(buffer.data(), size);
      else
        process->host.stderr_log.append(buffer.data(), size);
      if (!ec) return read(process, stream, buffer);
      --process->open_streams;  // EOF, or closed after the drain grace
      maybe_complete(process);
    });
  }

  void write_stdin(const std::shared_ptr<Process>& process, const std::string& data) {
    if (data.empty()) return close_quietly(process->in);
    // An error (EPIPE: the child exited without reading) is not the step's
    // failure; its exit code says whether it worked.
    asio::async_write(
        process->in, asio::buffer(data),
        [process](const boost::system::error_code&, std::size_t) { close_quietly(process->in); });
  }

  static void close_quietly(asio::posix::stream_descriptor& stream) {
    boost::system::error_code ignored;
    stream.close(ignored);
  }

  void on_exit(const std::shared_ptr<Process>& process, const std::error_code& ec) {
    process->exited = true;
    if (ec)
      process->exit_error = ec.message();
    else
      process->exit_code = decode_wait_status(process->child.native_exit_code());
    if (process->open_streams > 0) {
      process->drain_timer.expires_after(kPipeDrainGrace);
      process->drain_timer.async_wait([process](const boost::system::error_code& timer_ec) {
        if (timer_ec || process->completed) return;
        close_quietly(process->out);  // pending reads end with operation_aborted
        close_quietly(process->err);
      });
    }
    maybe_complete(process);
  }

  // An attempt is over once the process has exited and both of its output
  // pipes are drained, so no output is lost.
  void maybe_complete(const std::shared_ptr<Process>& process) {
    if (!process->exited || process->open_streams > 0 || process->completed) return;
    process->completed = true;
    process->drain_timer.cancel();
    close_quietly(process->in);  // a descendant may still hold stdin unread
    attempt_done(process->host, *process);
  }

  void attempt_done(HostRun& host, const Process& process) {
    host.process.reset();
    const Command& command = host.job.steps[host.step];
    host.result.exit_code = process.exit_code;
    host.result.stdout_tail = process.stdout_tail.last(options_.output_tail_bytes);
    // Every attempt counts: its bytes crossed the network.
    if (command.parse_rsync_stats)
      host.result.bytes_sent += parse_rsync_bytes_sent(process.stdout_tail.last(kRsyncStatsTailBytes));
    if (!process.exit_error.empty())
      add_note(host, fmt::format("lost the exit status: {}", process.exit_error));
    if (host.interrupt) return finish_host(host, *host.interrupt);
    if (process.exit_code == 0) {
      ++host.step;
      host.retries = 0;
      return run_step(host);
    }
    if (is_transient(process.exit_code) && host.retries < options_.max_retries) return schedule_retry(host);
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
    host.waiting_backoff = true;
    host.backoff.expires_after(to_duration(delay));
    host.backoff.async_wait([this, &host](const boost::system::error_code&) {
      host.waiting_backoff = false;
      if (host.interrupt) return finish_host(host, *host.interrupt);
      launch(host);
    });
  }

  // Timeout or cancel: kill what runs (its exit then finishes the host) or
  // wake a host that waits for a retry.
  void interrupt(HostRun& host, HostStatus status, const std::string& note) {
    if (host.finished || host.interrupt) return;
    host.interrupt = status;
    add_note(host, note);
    if (host.process && !host.process->exited) {
      if (::kill(-host.process->pid, SIGKILL) != 0) ::kill(host.process->pid, SIGKILL);
    } else if (host.process) {
      // Exited, but a descendant holds its pipes: stop waiting for EOF.
      close_quietly(host.process->out);
      close_quietly(host.process->err);
    } else if (host.waiting_backoff) {
      host.backoff.cancel();
    }
  }

  void finish_host(HostRun& host, HostStatus status) {
    if (host.finished) return;
    host.finished = true;
    host.deadline.cancel();
    HostResult& result = host.result;
    result.status = status;
    result.stderr_tail = host.stderr_log.last(options_.output_tail_bytes);
    if (host.started) {
      result.duration_s = std::chrono::duration<double>(Clock::now() - host.start_time).count();
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

  static void add_note(HostRun& host, const std::string& note) {
    host.stderr_log.append(fmt::format("{}{}\n", kNotePrefix, note));
  }

  asio::io_context& io_;
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

}  // namespace

namespace {

// What cancel() needs to reach a run in progress from another thread.
struct SharedRunState {
  std::mutex mutex;
  bool running = false;
  bool cancel_requested = false;  // sticky: a cancelled Fanout stays cancelled
  asio::io_context* io = nullptr;
  Engine* engine = nullptr;
};

}  // namespace

struct Fanout::State : SharedRunState {
  FanoutOptions options;
};

Fanout::Fanout(FanoutOptions options) : state_(std::make_unique<State>()) {
  state_->options = std::move(options);
}

Fanout::~Fanout() = default;

namespace {

// Publishes a run to cancel() for its duration, and withdraws it on every
// exit path so that a later run() is possible and cancel() never reaches a
// destroyed io_context.
class RunRegistration {
 public:
  explicit RunRegistration(SharedRunState& state) : state_(state) {
    std::lock_guard<std::mutex> lock(state_.mutex);
    if (state_.running) throw InvalidState("Fanout::run is already running on this object");
    state_.running = true;
  }
  // Returns whether cancel() was called before the run could be reached.
  bool publish(asio::io_context& io, Engine& engine) {
    std::lock_guard<std::mutex> lock(state_.mutex);
    state_.io = &io;
    state_.engine = &engine;
    return state_.cancel_requested;
  }
  void withdraw() {
    std::lock_guard<std::mutex> lock(state_.mutex);
    state_.io = nullptr;
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

std::vector<HostResult> Fanout::run(const std::vector<HostJob>& jobs, const ProgressCallback& progress) {
  validate(state_->options, jobs);
  RunRegistration registration(*state_);
  // Declaration order is destruction order in reverse: the engine's timers
  // and pipes go before the io_context, and the io_context (with asio's
  // SIGCHLD handler) before the guard restores the previous handler.
  SigchldGuard sigchld_guard;
  SigpipeBlock sigpipe_block;
  asio::io_context io;
  Engine engine(io, state_->options, jobs, progress);
  bool cancelled = registration.publish(io, engine);
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
      io.run();
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
  if (state_->io != nullptr) asio::post(*state_->io, [engine = state_->engine] { engine->cancel_all(); });
}

}  // namespace cd::fanout
