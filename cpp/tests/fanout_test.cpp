// Tests of the fan-out engine with real processes: /bin/sh scripts written
// by the tests, sleep, true, false and rsync. Nothing waits with a sleep for
// something to be ready; time appears only as generous upper bounds.
#include "cd/fanout.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cd/error.hpp"

namespace cd::fanout {
namespace {

namespace fs = std::filesystem;

using Seconds = std::chrono::duration<double>;

// "Promptly" for a kill or a cancel of a 60 s sleep: far below 60 s, far
// above any scheduling hiccup on a loaded 2-core machine.
constexpr double kPromptSeconds = 10.0;

// Fast retries keep the tests short; doubling is checked in the notes.
constexpr double kTestBackoffSeconds = 0.01;

class FanoutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "fanout_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }

  void TearDown() override {
    // Every child the engine started must have been reaped: the test
    // process has no other children, so waitpid must find none at all.
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    EXPECT_EQ(pid, -1) << "a child (zombie or running) was left behind: pid " << pid;
    EXPECT_EQ(errno, ECHILD);
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // Writes an executable /bin/sh script with fixed content into the temp dir.
  std::string script(const std::string& name, const std::string& body) {
    fs::path path = dir_ / name;
    std::ofstream(path) << "#!/bin/sh\n" << body;
    fs::permissions(path, fs::perms::owner_all);
    return path.string();
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static std::string read_file(const std::string& file) {
    std::ifstream in(file);
    std::stringstream content;
    content << in.rdbuf();
    return content.str();
  }

  fs::path dir_;
};

Command cmd(std::vector<std::string> argv, std::string stdin_data = "") {
  Command command;
  command.argv = std::move(argv);
  command.stdin_data = std::move(stdin_data);
  return command;
}

HostJob job(std::string host, std::vector<Command> steps) {
  return HostJob{std::move(host), std::move(steps)};
}

std::vector<HostJob> same_job_for(std::size_t count, const Command& step) {
  std::vector<HostJob> jobs;
  for (std::size_t i = 0; i < count; ++i) jobs.push_back(job("host" + std::to_string(i), {step}));
  return jobs;
}

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" not found in:\n" << text;
}

FanoutOptions fast_options() {
  FanoutOptions options;
  options.retry_backoff_s = kTestBackoffSeconds;
  options.host_timeout_s = 60;
  return options;
}

TEST(FanoutNames, StatusNames) {
  EXPECT_STREQ(to_string(HostStatus::Ok), "ok");
  EXPECT_STREQ(to_string(HostStatus::Failed), "failed");
  EXPECT_STREQ(to_string(HostStatus::TimedOut), "timed_out");
  EXPECT_STREQ(to_string(HostStatus::Skipped), "skipped");
  EXPECT_STREQ(to_string(HostStatus::Cancelled), "cancelled");
}

TEST_F(FanoutTest, RunsEveryHostAndReportsInJobOrder) {
  std::string echo = script("echo.sh", "echo \"out $1\"\necho \"err $1\" >&2\n");
  std::vector<HostJob> jobs;
  for (int i = 0; i < 6; ++i) {
    std::string host = "h" + std::to_string(i);
    jobs.push_back(job(host, {cmd({echo, host}), cmd({"true"})}));
  }
  FanoutOptions options = fast_options();
  options.concurrency = 3;
  auto results = Fanout(options).run(jobs);
  ASSERT_EQ(results.size(), jobs.size());
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    const HostResult& r = results[i];
    EXPECT_EQ(r.host, jobs[i].host);
    EXPECT_EQ(r.status, HostStatus::Ok);
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.attempts, 2);
    EXPECT_EQ(r.failed_step, -1);
    EXPECT_EQ(r.stdout_tail, "");  // stdout of the last step (`true`)
    EXPECT_EQ(r.stderr_tail, "err " + r.host + "\n");
    EXPECT_GE(r.duration_s, 0.0);
  }
}

TEST_F(FanoutTest, EmptyJobListAndHostWithoutSteps) {
  Fanout fanout(fast_options());
  EXPECT_TRUE(fanout.run({}).empty());
  auto results = fanout.run({job("idle", {})});
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, HostStatus::Ok);
  EXPECT_EQ(results[0].attempts, 0);
  EXPECT_EQ(results[0].exit_code, -1);
}

TEST_F(FanoutTest, RejectsInvalidInput) {
  FanoutOptions zero_window = fast_options();
  zero_window.concurrency = 0;
  EXPECT_THROW(Fanout(zero_window).run({job("a", {cmd({"true"})})}), InvalidInput);
  EXPECT_THROW(Fanout(fast_options()).run({job("a", {cmd({})})}), InvalidInput);
  EXPECT_THROW(Fanout(fast_options()).run({job("a", {cmd({""})})}), InvalidInput);
  FanoutOptions bad_fraction = fast_options();
  bad_fraction.max_fail_fraction = 1.5;
  EXPECT_THROW(Fanout(bad_fraction).run({}), InvalidInput);
  FanoutOptions bad_timeout = fast_options();
  bad_timeout.host_timeout_s = 0;
  EXPECT_THROW(Fanout(bad_timeout).run({}), InvalidInput);
}

// Each process counts itself in and waits until the window is full (or every
// host has started), then counts itself out: the maximum seen must equal the
// window exactly. An engine exceeding the window shows max > window; one that
// does not keep the window full would hang here until the host timeout.
TEST_F(FanoutTest, SlidingWindowIsFullButNeverExceeded) {
  constexpr int kWindow = 4;
  constexpr int kHosts = 13;  // not a multiple of the window, on purpose
  for (const char* counter : {"running", "started", "max"}) std::ofstream(path(counter)) << "0\n";
  std::string window = script("window.sh", R"SH(d=$1; window=$2; total=$3
exec 9>"$d/lock"
flock 9
running=$(( $(cat "$d/running") + 1 )); echo $running > "$d/running"
echo $(( $(cat "$d/started") + 1 )) > "$d/started"
[ $running -gt $(cat "$d/max") ] && echo $running > "$d/max"
flock -u 9
while :; do
  flock 9
  r=$(cat "$d/running"); s=$(cat "$d/started")
  flock -u 9
  [ $r -ge $window ] && break
  [ $s -ge $total ] && break
  sleep 0.01
done
flock 9
echo $(( $(cat "$d/running") - 1 )) > "$d/running"
flock -u 9
)SH");
  FanoutOptions options = fast_options();
  options.concurrency = kWindow;
  std::size_t max_running_reported = 0;
  auto results = Fanout(options).run(
      same_job_for(kHosts, cmd({window, dir_.string(), std::to_string(kWindow), std::to_string(kHosts)})),
      [&](const HostResult&, const Progress& progress) {
        max_running_reported = std::max(max_running_reported, progress.running);
      });
  for (const auto& r : results) EXPECT_EQ(r.status, HostStatus::Ok) << r.host << ": " << r.stderr_tail;
  EXPECT_EQ(std::stoi(read_file(path("max"))), kWindow);
  EXPECT_EQ(std::stoi(read_file(path("started"))), kHosts);
  EXPECT_LT(max_running_reported, static_cast<std::size_t>(kWindow));  // reported after one finished
}

TEST_F(FanoutTest, TimeoutKillsTheProcessGroupPromptly) {
  // The shell's background sleep holds the pipes too: unless the whole group
  // is killed, EOF would not come for 60 s.
  std::string sleeper = script("sleeper.sh", "sleep 60 &\necho $! > \"$1\"\nwait\n");
  FanoutOptions options = fast_options();
  options.host_timeout_s = 0.5;
  auto start = std::chrono::steady_clock::now();
  auto results = Fanout(options).run({job("slow", {cmd({"sleep", "60"})}),
                                      job("grandchild", {cmd({sleeper, path("bg.pid")})}),
                                      job("fast", {cmd({"true"})})});
  double elapsed = Seconds(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(elapsed, kPromptSeconds);
  for (int i : {0, 1}) {
    EXPECT_EQ(results[i].status, HostStatus::TimedOut);
    EXPECT_EQ(results[i].exit_code, 128 + SIGKILL);
    EXPECT_TRUE(Contains(results[i].stderr_tail, "timed out after 0.5 s"));
    EXPECT_EQ(results[i].failed_step, -1);
    EXPECT_LT(results[i].duration_s, kPromptSeconds);
  }
  EXPECT_EQ(results[2].status, HostStatus::Ok);
  // The background sleep was killed with its group: gone, or a zombie of init.
  pid_t background = std::stoi(read_file(path("bg.pid")));
  std::string stat = read_file("/proc/" + std::to_string(background) + "/stat");
  EXPECT_TRUE(stat.empty() || stat.find(") Z ") != std::string::npos) << stat;
}

TEST_F(FanoutTest, RetriesTransientExitCodesWithDoublingBackoff) {
  // Exits 23 (rsync's partial transfer) twice, then succeeds.
  std::string flaky = script("flaky.sh", R"SH(n=$(cat "$1" 2>/dev/null || echo 0)
echo $((n + 1)) > "$1"
[ "$n" -ge 2 ] && exit 0
echo "partial transfer $n" >&2
exit 23
)SH");
  auto results = Fanout(fast_options()).run({job("flaky", {cmd({flaky, path("state")})})});
  const HostResult& r = results[0];
  EXPECT_EQ(r.status, HostStatus::Ok);
  EXPECT_EQ(r.attempts, 3);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.stderr_tail, "partial transfer 0"));
  EXPECT_TRUE(Contains(r.stderr_tail, "retry 1 of 2 in 0.01 s"));
  EXPECT_TRUE(Contains(r.stderr_tail, "retry 2 of 2 in 0.02 s"));
}

TEST_F(FanoutTest, GivesUpAfterMaxRetries) {
  auto results = Fanout(fast_options()).run({job("always23", {cmd({"sh", "-c", "exit 23"})})});
  EXPECT_EQ(results[0].status, HostStatus::Failed);
  EXPECT_EQ(results[0].attempts, 3);  // one try and max_retries (2) retries
  EXPECT_EQ(results[0].exit_code, 23);
  EXPECT_EQ(results[0].failed_step, 0);
}

TEST_F(FanoutTest, DoesNotRetryOtherExitCodes) {
  std::string counter = script("count.sh", "echo x >> \"$1\"\nexit 11\n");
  auto results = Fanout(fast_options()).run({job("disk-full", {cmd({counter, path("count")})})});
  EXPECT_EQ(results[0].status, HostStatus::Failed);
  EXPECT_EQ(results[0].attempts, 1);
  EXPECT_EQ(results[0].exit_code, 11);
  EXPECT_EQ(read_file(path("count")), "x\n");
}

TEST_F(FanoutTest, ReportsSignalDeathAsShellExitCode) {
  auto results = Fanout(fast_options()).run({job("killed", {cmd({"sh", "-c", "kill -TERM $$"})})});
  EXPECT_EQ(results[0].status, HostStatus::Failed);
  EXPECT_EQ(results[0].exit_code, 128 + SIGTERM);
}

TEST_F(FanoutTest, StepsStopAtTheFirstFailure) {
  std::string marker = path("third-step-ran");
  auto results = Fanout(fast_options())
                     .run({job("h", {cmd({"true"}), cmd({"false"}), cmd({"touch", marker})}),
                           job("ok", {cmd({"true"}), cmd({"true"})})});
  EXPECT_EQ(results[0].status, HostStatus::Failed);
  EXPECT_EQ(results[0].failed_step, 1);
  EXPECT_EQ(results[0].exit_code, 1);
  EXPECT_EQ(results[0].attempts, 2);
  EXPECT_FALSE(fs::exists(marker));
  EXPECT_EQ(results[1].status, HostStatus::Ok);
}

TEST_F(FanoutTest, FailureBudgetSkipsHostsNotYetStarted) {
  std::vector<HostJob> jobs;
  for (int i = 0; i < 10; ++i)
    jobs.push_back(job("h" + std::to_string(i), {cmd({i < 3 ? "false" : "true"})}));
  FanoutOptions options = fast_options();
  options.concurrency = 1;          // makes the order, hence the cut-off, deterministic
  options.max_fail_fraction = 0.2;  // more than 2 of 10 failed: stop
  auto results = Fanout(options).run(jobs);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(results[i].status, HostStatus::Failed);
  for (int i = 3; i < 10; ++i) {
    EXPECT_EQ(results[i].status, HostStatus::Skipped) << i;
    EXPECT_EQ(results[i].attempts, 0);
    EXPECT_EQ(results[i].exit_code, -1);
    EXPECT_TRUE(Contains(results[i].stderr_tail, "failure budget"));
  }

  options.max_fail_fraction = 1.0;  // the default never aborts
  results = Fanout(options).run(jobs);
  for (int i = 3; i < 10; ++i) EXPECT_EQ(results[i].status, HostStatus::Ok);
}

TEST_F(FanoutTest, CancelFromAnotherThreadKillsAndReturnsPromptly) {
  // Host 0 finishes at once; its progress callback lets the canceller go
  // while hosts 1 and 2 are certainly running their 60 s sleeps.
  std::vector<HostJob> jobs = {job("quick", {cmd({"true"})})};
  for (int i = 1; i < 6; ++i) jobs.push_back(job("sleep" + std::to_string(i), {cmd({"sleep", "60"})}));
  FanoutOptions options = fast_options();
  options.concurrency = 3;
  options.host_timeout_s = 600;
  Fanout fanout(options);
  std::mutex mutex;
  std::condition_variable first_done;
  bool go = false;
  std::thread canceller([&] {
    std::unique_lock<std::mutex> lock(mutex);
    first_done.wait(lock, [&] { return go; });
    fanout.cancel();
  });
  auto start = std::chrono::steady_clock::now();
  auto results = fanout.run(jobs, [&](const HostResult&, const Progress&) {
    std::lock_guard<std::mutex> lock(mutex);
    go = true;
    first_done.notify_one();
  });
  double elapsed = Seconds(std::chrono::steady_clock::now() - start).count();
  canceller.join();
  EXPECT_LT(elapsed, kPromptSeconds);
  EXPECT_EQ(results[0].status, HostStatus::Ok);
  for (int i = 1; i < 6; ++i) EXPECT_EQ(results[i].status, HostStatus::Cancelled) << i;
  EXPECT_EQ(results[1].attempts, 1);
  EXPECT_EQ(results[1].exit_code, 128 + SIGKILL);
  EXPECT_EQ(results[5].attempts, 0);
}

TEST_F(FanoutTest, CancelBeforeRunCancelsEverything) {
  Fanout fanout(fast_options());
  fanout.cancel();
  auto results = fanout.run(same_job_for(3, cmd({"sleep", "60"})));
  for (const auto& r : results) {
    EXPECT_EQ(r.status, HostStatus::Cancelled);
    EXPECT_EQ(r.attempts, 0);
  }
}

TEST_F(FanoutTest, MissingExecutableIsAFailedHostNotAnException) {
  std::string not_executable = path("plain.txt");
  std::ofstream(not_executable) << "not a program\n";
  auto results = Fanout(fast_options())
                     .run({
                         job("nowhere", {cmd({"no-such-program-for-fanout-test", "-a"})}),
                         job("bad-path", {cmd({"/nonexistent/rsync"})}),
                         job("no-x-bit", {cmd({not_executable})}),
                         job("directory", {cmd({dir_.string()})}),  // passes access(X_OK), exec fails
                         job("fine", {cmd({"true"})}),
                     });
  EXPECT_TRUE(Contains(results[0].stderr_tail,
                       "cannot start 'no-such-program-for-fanout-test': No such file or directory"));
  EXPECT_TRUE(
      Contains(results[1].stderr_tail, "cannot start '/nonexistent/rsync': No such file or directory"));
  EXPECT_TRUE(Contains(results[2].stderr_tail, "Permission denied"));
  EXPECT_TRUE(Contains(results[3].stderr_tail, "cannot start '" + dir_.string() + "'"));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(results[i].status, HostStatus::Failed) << i;
    EXPECT_EQ(results[i].failed_step, 0);
    EXPECT_EQ(results[i].attempts, 0);
    EXPECT_EQ(results[i].exit_code, -1);
  }
  EXPECT_EQ(results[4].status, HostStatus::Ok);
}

TEST_F(FanoutTest, StdinIsDeliveredThenClosed) {
  std::string big(1 << 20, 'x');  // larger than a pipe buffer
  auto results =
      Fanout(fast_options())
          .run({
              job("cat", {cmd({"cat"}, "revision abc123\n")}), job("count", {cmd({"wc", "-c"}, big)}),
              job("eof", {cmd({"cat"})}),                  // empty stdin: EOF at once, no hang
              job("ignores-stdin", {cmd({"true"}, big)}),  // EPIPE, not a SIGPIPE crash
          });
  EXPECT_EQ(results[0].stdout_tail, "revision abc123\n");
  EXPECT_EQ(results[1].stdout_tail, std::to_string(big.size()) + "\n");
  for (const auto& r : results) EXPECT_EQ(r.status, HostStatus::Ok) << r.host;
}

TEST_F(FanoutTest, OutputTailsAreBounded) {
  std::string noisy = script("noisy.sh", R"SH(head -c 200000 /dev/zero | tr '\0' a
echo STDOUT-END
head -c 200000 /dev/zero | tr '\0' b >&2
echo STDERR-END >&2
)SH");
  FanoutOptions options = fast_options();
  options.output_tail_bytes = 100;
  auto results = Fanout(options).run({job("noisy", {cmd({noisy})})});
  const HostResult& r = results[0];
  EXPECT_EQ(r.status, HostStatus::Ok);
  EXPECT_EQ(r.stdout_tail.size(), 100u);
  EXPECT_EQ(r.stderr_tail.size(), 100u);
  EXPECT_EQ(r.stdout_tail.substr(r.stdout_tail.size() - 11), "STDOUT-END\n");
  EXPECT_EQ(r.stderr_tail.substr(r.stderr_tail.size() - 11), "STDERR-END\n");
}

// The pipes this process already has without close-on-exec (e.g. from the
// harness that started the test): children inherit those legitimately.
std::set<std::string> inherited_pipes() {
  std::set<std::string> pipes;
  for (const auto& entry : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    std::string target = fs::read_symlink(entry.path(), ec).string();
    if (!ec && target.rfind("pipe:", 0) == 0) pipes.insert(target);
  }
  return pipes;
}

TEST_F(FanoutTest, ChildrenDoNotInheritOtherHostsPipes) {
  // Waiters hold their pipes open until the checker, started last, has
  // listed its descriptors. The checker is `ls` itself, exec'd directly, so
  // the listing shows exactly what it inherited (plus its own directory fd).
  std::string done = path("done");
  std::string waiter = script("waiter.sh", "while [ ! -e \"$1\" ]; do sleep 0.01; done\n");
  std::vector<HostJob> jobs = same_job_for(5, cmd({waiter, done}));
  jobs.push_back(job("checker", {cmd({"ls", "-l", "/proc/self/fd"})}));
  FanoutOptions options = fast_options();
  options.concurrency = 6;
  std::set<std::string> allowed = inherited_pipes();
  auto results = Fanout(options).run(jobs, [&](const HostResult& result, const Progress&) {
    if (result.host == "checker") std::ofstream{done};
  });
  for (const auto& r : results) EXPECT_EQ(r.status, HostStatus::Ok) << r.host;
  std::istringstream listing(results.back().stdout_tail);
  int own_pipes = 0;
  for (std::string line; std::getline(listing, line);) {
    std::size_t arrow = line.find(" -> pipe:");
    if (arrow == std::string::npos) continue;
    int fd = std::stoi(line.substr(line.rfind(' ', arrow - 1) + 1));
    std::string pipe = line.substr(arrow + 4);
    if (fd <= 2) {
      ++own_pipes;
      continue;
    }
    EXPECT_EQ(allowed.count(pipe), 1u) << "fd " << fd << " leaked into the child: " << pipe;
  }
  EXPECT_EQ(own_pipes, 3) << results.back().stdout_tail;  // its own stdin, stdout and stderr
}

TEST_F(FanoutTest, DaemonHoldingThePipesDoesNotHangTheHost) {
  // A descendant in its own session (like a ControlPersist ssh master) keeps
  // stdout open after the step exited; the engine stops waiting for EOF.
  std::string daemonizer = script("daemon.sh", R"SH(setsid sh -c 'echo $$ > "$1"; exec sleep 30' sh "$1" &
echo started
)SH");
  auto start = std::chrono::steady_clock::now();
  auto results = Fanout(fast_options()).run({job("daemon", {cmd({daemonizer, path("daemon.pid")})})});
  double elapsed = Seconds(std::chrono::steady_clock::now() - start).count();
  std::string pid_text = read_file(path("daemon.pid"));
  if (!pid_text.empty()) ::kill(std::stoi(pid_text), SIGKILL);  // not our child; init reaps it
  EXPECT_EQ(results[0].status, HostStatus::Ok);
  EXPECT_EQ(results[0].stdout_tail, "started\n");
  EXPECT_LT(elapsed, kPromptSeconds);
}

TEST_F(FanoutTest, ParsesRsyncStatsFromARealTransfer) {
  fs::create_directories(dir_ / "src" / "sub");
  std::ofstream(dir_ / "src" / "a.bin") << std::string(150000, 'a');
  std::ofstream(dir_ / "src" / "sub" / "b.txt") << "hello\n";
  Command rsync = cmd({"rsync", "--stats", "-a", path("src") + "/", path("dst") + "/"});
  rsync.parse_rsync_stats = true;
  auto results = Fanout(fast_options()).run({job("local", {rsync})});
  const HostResult& r = results[0];
  ASSERT_EQ(r.status, HostStatus::Ok) << r.stderr_tail;
  EXPECT_TRUE(Contains(r.stdout_tail, "Total bytes sent:"));
  EXPECT_GT(r.bytes_sent, 1000);  // a's data goes over rsync's stream, possibly compressed by nothing
  EXPECT_TRUE(fs::exists(dir_ / "dst" / "sub" / "b.txt"));

  // The same transfer again sends only the file list: a fraction of it.
  auto again = Fanout(fast_options()).run({job("local", {rsync})});
  EXPECT_GT(again[0].bytes_sent, 0);
  EXPECT_LT(again[0].bytes_sent * 10, r.bytes_sent);
}

TEST_F(FanoutTest, ParsesGroupedNumbersAndSumsOverSteps) {
  std::string fake = script("fake-rsync.sh", R"SH(echo "Number of files: 3 (reg: 2, dir: 1)"
echo "Total bytes sent: $1"
echo "Total bytes received: 35"
)SH");
  auto step = [&](const std::string& printed, bool parse) {
    Command c = cmd({fake, printed});
    c.parse_rsync_stats = parse;
    return c;
  };
  FanoutOptions options = fast_options();
  options.output_tail_bytes = 10;  // parsing does not depend on the visible tail
  auto results = Fanout(options).run({
      job("commas", {step("1,234,567", true)}),
      job("sum", {step("1,000", true), step("234", true), step("999,999", false)}),
      job("apostrophe", {step("12'345", true)}),
      job("plain", {step("42", true)}),
  });
  EXPECT_EQ(results[0].bytes_sent, 1234567);
  EXPECT_EQ(results[1].bytes_sent, 1234);
  EXPECT_EQ(results[2].bytes_sent, 12345);
  EXPECT_EQ(results[3].bytes_sent, 42);
}

TEST_F(FanoutTest, FiveHundredHostsComplete) {
  constexpr std::size_t kHosts = 500;
  std::size_t calls = 0;
  std::size_t last_done = 0;
  bool monotonic = true;
  auto start = std::chrono::steady_clock::now();
  auto results =
      Fanout(fast_options())
          .run(same_job_for(kHosts, cmd({"true"})), [&](const HostResult&, const Progress& progress) {
            ++calls;
            monotonic = monotonic && progress.done == last_done + 1;
            last_done = progress.done;
            EXPECT_EQ(progress.total, kHosts);
            EXPECT_LE(progress.running, 32u);
          });
  double elapsed = Seconds(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(calls, kHosts);
  EXPECT_TRUE(monotonic);
  EXPECT_EQ(last_done, kHosts);
  for (const auto& r : results) ASSERT_EQ(r.status, HostStatus::Ok) << r.host << ": " << r.stderr_tail;
  EXPECT_LT(elapsed, 120.0);
}

TEST_F(FanoutTest, ProgressCountsFailures) {
  std::vector<Progress> seen;
  Fanout(fast_options())
      .run({job("a", {cmd({"false"})}), job("b", {cmd({"true"})})},
           [&](const HostResult&, const Progress& p) { seen.push_back(p); });
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen.back().done, 2u);
  EXPECT_EQ(seen.back().failed, 1u);
  EXPECT_EQ(seen.back().running, 0u);
}

TEST_F(FanoutTest, ThrowingProgressCallbackCancelsAndRethrows) {
  std::vector<HostJob> jobs = {job("quick", {cmd({"true"})}), job("slow", {cmd({"sleep", "60"})})};
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(
      Fanout(fast_options())
          .run(jobs, [](const HostResult&, const Progress&) { throw std::runtime_error("observer failed"); }),
      std::runtime_error);
  EXPECT_LT(Seconds(std::chrono::steady_clock::now() - start).count(), kPromptSeconds);
}

std::atomic<int> sigchld_count{0};
void count_sigchld(int) { ++sigchld_count; }

TEST_F(FanoutTest, RestoresThePreviousSigchldHandler) {
  // A Buildbot master runs Twisted, whose SIGCHLD handler must survive a run.
  struct sigaction mine {
  }, previous{}, after{};
  mine.sa_handler = count_sigchld;
  ASSERT_EQ(::sigaction(SIGCHLD, &mine, &previous), 0);
  Fanout(fast_options()).run(same_job_for(3, cmd({"true"})));
  ::sigaction(SIGCHLD, &previous, &after);
  EXPECT_EQ(after.sa_handler, &count_sigchld);
}

}  // namespace
}  // namespace cd::fanout
