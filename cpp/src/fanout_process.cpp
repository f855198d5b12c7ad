// The real Launcher of the fan-out (see cd/fanout.hpp): POSIX processes and
// time, nothing of the policy.
//
// Everything runs in one Boost.Asio io_context on the thread that calls
// run(): processes are started with Boost.Process (argument vectors, no
// shell), their pipes are read asynchronously, their exit arrives through
// Boost.Process's on_exit (a SIGCHLD watcher), and timers are steady_timers.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
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
#include <mutex>
#include <optional>
#include <system_error>
#include <utility>

#include "cd/fanout.hpp"

namespace cd::fanout {

// Exit code reported for a process killed by a signal: the shell's
// convention (128 + signal number).
int shell_exit_code(int wait_status) {
  constexpr int kSignalExitBase = 128;
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return kSignalExitBase + WTERMSIG(wait_status);
  return -1;
}

namespace {

namespace asio = boost::asio;
namespace bp = boost::process;
using Clock = std::chrono::steady_clock;

// One page per read: pipes hand over at most what the child wrote, and a
// small buffer keeps memory flat over hundreds of hosts in flight.
constexpr std::size_t kReadChunkBytes = 4096;

// After a process exits, a descendant outside its process group (e.g. a
// daemonised ssh ControlPersist master) may still hold its stdout/stderr
// open; EOF would then never come. Past this grace the pipes are closed.
constexpr auto kPipeDrainGrace = std::chrono::seconds(2);

// steady_timer durations overflow for absurd timeouts; this caps them at
// about 31 years, which is "never" for a deploy.
constexpr double kMaxTimerSeconds = 1e9;

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
  std::string last() const { return buffer_.substr(buffer_.size() - std::min(limit_, buffer_.size())); }

 private:
  std::size_t limit_;
  std::string buffer_;
};

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

// Runs in the child between fork and exec, and in the parent on failure.
struct ChildSetup : bp::extend::handler {
  // Own process group, so a timeout or cancel kills the whole tree the step
  // started (ssh, rsync's sender, a script's children) with one kill(2).
  // Not its own session (pssh's setsid): under the kernel's autogroup
  // scheduling every session is a CPU group of its own, and with one group
  // per child the transfers interleave more finely. A first push to 16 hosts
  // (bench/push_bench.py, the hosts on the same 2 cores) took 30 % longer
  // that way, with 7 % more CPU on the deploying side and 48 % more on the
  // hosts (perf: their sshd spent 3x the kernel time), than with the
  // children in the caller's session.
  // The signal state is reset because the engine's thread blocks SIGPIPE and
  // Python ignores it; rsync, ssh and sh expect the defaults (Python's
  // subprocess restores SIGPIPE for the same reason).
  // Each child dies with its parent: a kill -9 of `buildbot-cd push` (or of
  // the master) must not leave an rsync finishing, and committing, a
  // transfer behind the operator's back. The kernel sends SIGKILL when the
  // thread that forked exits, which is the fan-out's thread: it outlives its
  // children. If the parent died before prctl took effect, nobody would send
  // it: the child checks and leaves.
  explicit ChildSetup(pid_t parent = ::getpid()) : parent_(parent) {}

  template <class Executor>
  void on_exec_setup(Executor&) const {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent_) ::_exit(kExitParentGone);
    ::setpgid(0, 0);
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

 private:
  static constexpr int kExitParentGone = 127;  // as a shell's "could not run"
  pid_t parent_;
};

// Boost.Process's on_exit watches SIGCHLD through an asio::signal_set, and
// asio resets SIGCHLD to SIG_DFL when the last set goes away, discarding
// whatever handler was there before (Twisted's, in a Buildbot master). This
// keeps the handler that was installed before the first concurrent launcher
// and puts it back after the last one, then raises SIGCHLD once so its owner
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

void close_quietly(asio::posix::stream_descriptor& stream) {
  boost::system::error_code ignored;
  stream.close(ignored);
}

// One process, shared by its handle and its pending asio handlers.
struct ProcessState {
  ProcessState(asio::io_context& io, const LaunchRequest& request, Launcher::ExitHandler handler)
      : in(io),
        out(io),
        err(io),
        drain_timer(io),
        stdin_data(request.stdin_data),
        stdout_tail(request.stdout_limit),
        stderr_tail(request.stderr_limit),
        on_exit(std::move(handler)) {}

  bp::child child;
  pid_t pid = -1;
  asio::posix::stream_descriptor in, out, err;
  std::array<char, kReadChunkBytes> out_buffer{};
  std::array<char, kReadChunkBytes> err_buffer{};
  asio::steady_timer drain_timer;
  std::string stdin_data;  // kept alive for the asynchronous write
  Tail stdout_tail;
  Tail stderr_tail;
  int open_streams = 2;  // stdout and stderr, until EOF or closed
  bool exited = false;
  bool completed = false;
  int exit_code = -1;
  std::string exit_error;  // set when the exit status could not be read
  Launcher::ExitHandler on_exit;
};

using ProcessPtr = std::shared_ptr<ProcessState>;

// An attempt is over once the process has exited and both of its output
// pipes are drained, so no output is lost.
void maybe_complete(const ProcessPtr& process) {
  if (!process->exited || process->open_streams > 0 || process->completed) return;
  process->completed = true;
  process->drain_timer.cancel();
  close_quietly(process->in);  // a descendant may still hold stdin unread
  Launcher::ExitHandler handler = std::move(process->on_exit);
  handler(ProcessExit{process->exit_code, process->stdout_tail.last(), process->stderr_tail.last(),
                      process->exit_error});
}

void read(const ProcessPtr& process, asio::posix::stream_descriptor& stream,
          std::array<char, kReadChunkBytes>& buffer, Tail& tail) {
  stream.async_read_some(asio::buffer(buffer), [process, &stream, &buffer, &tail](
                                                   const boost::system::error_code& ec, std::size_t size) {
    tail.append(buffer.data(), size);
    if (!ec) return read(process, stream, buffer, tail);
    --process->open_streams;  // EOF, or closed after the drain grace
    maybe_complete(process);
  });
}

void write_stdin(const ProcessPtr& process) {
  if (process->stdin_data.empty()) return close_quietly(process->in);
  // An error (EPIPE: the child exited without reading) is not the step's
  // failure; its exit code says whether it worked.
  asio::async_write(process->in, asio::buffer(process->stdin_data),
                    [process](const boost::system::error_code&, std::size_t) { close_quietly(process->in); });
}

// What the step left running in its process group (holding its pipes open)
// once it has exited: a daemon in a session of its own, as ssh's
// ControlPersist master, is not in it. The group's id stays reserved while a
// member lives, so it names no other process.
void kill_group(const ProcessState& process) { ::kill(-process.pid, SIGKILL); }

void on_exit(const ProcessPtr& process, const std::error_code& ec) {
  process->exited = true;
  if (ec)
    process->exit_error = ec.message();
  else
    process->exit_code = shell_exit_code(process->child.native_exit_code());
  if (process->open_streams > 0) {
    process->drain_timer.expires_after(kPipeDrainGrace);
    process->drain_timer.async_wait([process](const boost::system::error_code& timer_ec) {
      if (timer_ec || process->completed) return;
      kill_group(*process);
      close_quietly(process->out);  // pending reads end with operation_aborted
      close_quietly(process->err);
    });
  }
  maybe_complete(process);
}

class ProcessGroup final : public ProcessHandle {
 public:
  explicit ProcessGroup(ProcessPtr process) : process_(std::move(process)) {}
  void kill() override {
    if (process_->completed) return;
    if (!process_->exited) {
      if (::kill(-process_->pid, SIGKILL) != 0) ::kill(process_->pid, SIGKILL);
    } else {
      // Exited, but a descendant holds its pipes: end it, stop waiting for EOF.
      kill_group(*process_);
      close_quietly(process_->out);
      close_quietly(process_->err);
    }
  }

 private:
  ProcessPtr process_;
};

struct TimerState {
  explicit TimerState(asio::io_context& io) : timer(io) {}
  asio::steady_timer timer;
  std::function<void()> on_fire;
};

class SteadyTimer final : public Timer {
 public:
  explicit SteadyTimer(std::shared_ptr<TimerState> state) : state_(std::move(state)) {}
  ~SteadyTimer() override { cancel(); }
  void cancel() override {
    state_->on_fire = nullptr;
    state_->timer.cancel();
  }

 private:
  std::shared_ptr<TimerState> state_;
};

std::mutex& launch_mutex() {
  static std::mutex mutex;
  return mutex;
}

class ProcessLauncher final : public Launcher {
 public:
  std::unique_ptr<ProcessHandle> start(const LaunchRequest& request, ExitHandler on_exit,
                                       std::string& error) override {
    auto exe = resolve_executable(request.argv.at(0), error);
    if (!exe) return nullptr;
    int pipe_error = 0;
    auto stdin_pipe = make_pipe(pipe_error);
    auto stdout_pipe = stdin_pipe ? make_pipe(pipe_error) : std::nullopt;
    auto stderr_pipe = stdout_pipe ? make_pipe(pipe_error) : std::nullopt;
    if (!stderr_pipe) {
      error = errno_message(pipe_error);
      return nullptr;
    }
    auto process = std::make_shared<ProcessState>(io_, request, std::move(on_exit));
    std::error_code ec;
    std::vector<std::string> args(request.argv.begin() + 1, request.argv.end());
    // One launch at a time: Boost makes its exec-error pipe without
    // close-on-exec, and a child another fan-out thread forked meanwhile
    // would hold it, blocking this one until that child ends.
    std::lock_guard<std::mutex> launching(launch_mutex());
    process->child =
        bp::child(bp::exe = *exe, bp::args = args, bp::posix::fd.bind(STDIN_FILENO, stdin_pipe->read.get()),
                  bp::posix::fd.bind(STDOUT_FILENO, stdout_pipe->write.get()),
                  bp::posix::fd.bind(STDERR_FILENO, stderr_pipe->write.get()), ChildSetup{}, io_,
                  bp::on_exit([this, process](int, const std::error_code& exit_ec) {
                    // Posted: Boost may call this from inside the
                    // child's constructor, before `child` is set.
                    asio::post(io_, [process, exit_ec] { fanout::on_exit(process, exit_ec); });
                  }),
                  ec);
    if (ec) {
      error = ec.message();
      return nullptr;
    }
    // The child's ends now live in the child only; closing ours lets EOF
    // arrive when the child (and its descendants) are done.
    process->pid = process->child.id();
    process->in.assign(stdin_pipe->write.release());
    process->out.assign(stdout_pipe->read.release());
    process->err.assign(stderr_pipe->read.release());
    read(process, process->out, process->out_buffer, process->stdout_tail);
    read(process, process->err, process->err_buffer, process->stderr_tail);
    write_stdin(process);
    return std::make_unique<ProcessGroup>(process);
  }

  double now() const override {
    return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  }

  std::unique_ptr<Timer> start_timer(double seconds, std::function<void()> on_fire) override {
    auto state = std::make_shared<TimerState>(io_);
    state->on_fire = std::move(on_fire);
    state->timer.expires_after(to_duration(seconds));
    state->timer.async_wait([state](const boost::system::error_code& ec) {
      if (ec || !state->on_fire) return;
      std::function<void()> fire = std::move(state->on_fire);  // it may destroy its Timer
      state->on_fire = nullptr;
      fire();
    });
    return std::make_unique<SteadyTimer>(state);
  }

  void post(std::function<void()> handler) override { asio::post(io_, std::move(handler)); }

  void run() override { io_.run(); }

 private:
  // Destroyed in reverse: the io_context (with asio's SIGCHLD handler) goes
  // before the guard restores the previous handler.
  SigchldGuard sigchld_guard_;
  SigpipeBlock sigpipe_block_;
  asio::io_context io_;
};

}  // namespace

std::unique_ptr<Launcher> make_process_launcher() { return std::make_unique<ProcessLauncher>(); }

}  // namespace cd::fanout
