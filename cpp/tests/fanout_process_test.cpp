// Tests of the real launcher (cpp/src/fanout_process.cpp) through Fanout,
// with real processes: what only the operating system can show (argv not
// re-parsed by a shell, stdin delivered, a kill reaching the process group,
// pipes not leaking, children reaped). The policy is tested in
// fanout_test.cpp. Nothing here waits with a sleep for something to be ready;
// time appears only as generous upper bounds.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cd/fanout.hpp"
#include "fanout_jobs.hpp"

namespace cd::fanout {
namespace {

namespace fs = std::filesystem;
using Seconds = std::chrono::duration<double>;

// "Promptly" for a kill or a cancel of a 60 s sleep: far below 60 s, far
// above any scheduling hiccup on a loaded 2-core machine.
constexpr double kPromptSeconds = 10.0;

class FanoutProcess : public ::testing::Test {
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

  // A SIGKILLed process may still be runnable for a moment before the kernel
  // ends it, so "dead" is awaited under a deadline. Returns its last
  // /proc/<pid>/stat line: empty once it is gone, with state Z while it is a
  // zombie of init.
  static std::string stat_once_dead(const std::string& pid) {
    std::string stat_file = "/proc/" + pid + "/stat";
    auto deadline = std::chrono::steady_clock::now() + Seconds(kPromptSeconds);
    std::string stat = read_file(stat_file);
    while (!is_dead(stat) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // polling under a deadline
      stat = read_file(stat_file);
    }
    return stat;
  }

  static bool is_dead(const std::string& stat) {
    return stat.empty() || stat.find(") Z ") != std::string::npos;
  }

  fs::path dir_;
};

using testing_support::cmd;
using testing_support::job;

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" not found in:\n" << text;
}

FanoutOptions fast_options() {
  FanoutOptions options;
  options.retry_backoff_s = 0.01;
  options.host_timeout_s = 60;
  return options;
}

TEST_F(FanoutProcess, ArgvReachesTheProgramVerbatim) {
  std::vector<std::string> args = {"a b", "$HOME", "*", "; echo pwned", "", "'q'\"", "-n"};
  std::vector<std::string> argv = {"printf", "[%s]\\n"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = Fanout(fast_options()).run({job("h; rm -rf /", {cmd(argv)})})[0];
  ASSERT_EQ(r.status, HostStatus::Ok) << r.stderr_tail;
  std::string expected;
  for (const auto& arg : args) expected += "[" + arg + "]\n";
  EXPECT_EQ(r.stdout_tail, expected);
}

TEST_F(FanoutProcess, StdinIsDeliveredThenClosed) {
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

TEST_F(FanoutProcess, TimeoutKillsTheProcessGroupPromptly) {
  // The shell's background sleep holds the pipes too: unless the whole group
  // is killed, EOF would not come for 60 s.
  std::string sleeper = script("sleeper.sh", "sleep 60 &\necho $! > \"$1\"\nwait\n");
  FanoutOptions options = fast_options();
  options.host_timeout_s = 0.5;
  auto start = std::chrono::steady_clock::now();
  auto results = Fanout(options).run({job("slow", {cmd({"sleep", "60"})}),
                                      job("grandchild", {cmd({sleeper, path("bg.pid")})}),
                                      job("fast", {cmd({"true"})})});
  EXPECT_LT(Seconds(std::chrono::steady_clock::now() - start).count(), kPromptSeconds);
  for (int i : {0, 1}) {
    EXPECT_EQ(results[i].status, HostStatus::TimedOut);
    EXPECT_EQ(results[i].exit_code, 128 + SIGKILL);
  }
  EXPECT_EQ(results[2].status, HostStatus::Ok);
  // The background sleep was killed with its group: gone, or a zombie of init.
  std::string background = read_file(path("bg.pid"));
  background.erase(background.find_last_not_of('\n') + 1);
  ASSERT_FALSE(background.empty());
  std::string stat = stat_once_dead(background);
  EXPECT_TRUE(is_dead(stat)) << "still running: " << stat;
}

TEST_F(FanoutProcess, CancelFromAnotherThreadKillsAndReturnsPromptly) {
  // Host 0 finishes at once; its progress callback lets the canceller go
  // while hosts 1 and 2 are certainly running their 60 s sleeps.
  std::vector<HostJob> jobs = {job("quick", {cmd({"true"})})};
  for (int i = 1; i < 6; ++i) jobs.push_back(job("sleep" + std::to_string(i), {cmd({"sleep", "60"})}));
  FanoutOptions options = fast_options();
  options.concurrency = 3;
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
  EXPECT_EQ(results[1].exit_code, 128 + SIGKILL);
  EXPECT_EQ(results[5].attempts, 0);
}

TEST_F(FanoutProcess, ChildrenDieWithTheEngine) {
  // A kill -9 of the process running the fan-out (`buildbot-cd push`, a
  // master) must not leave its children running on: they would finish, and
  // commit, a transfer behind the operator's back. The engine runs in a
  // forked process; its child reports its pid through a FIFO (no polling for
  // readiness), then the engine's process is killed.
  std::string fifo = path("pid.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string sleeper = script("sleeper.sh", "echo $$ > \"$1\"\nexec sleep 60\n");
  pid_t engine = ::fork();
  ASSERT_GE(engine, 0);
  if (engine == 0) {
    Fanout(fast_options()).run({job("sleeper", {cmd({sleeper, fifo})})});
    ::_exit(0);
  }
  std::string child_pid;
  std::ifstream(fifo) >> child_pid;  // blocks until the child has written its pid
  ASSERT_FALSE(child_pid.empty());
  ::kill(engine, SIGKILL);
  ASSERT_EQ(::waitpid(engine, nullptr, 0), engine);
  std::string stat = stat_once_dead(child_pid);
  EXPECT_TRUE(is_dead(stat)) << "still running: " << stat;
}

TEST_F(FanoutProcess, ProgramsThatCannotStartAreFailedHosts) {
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
    EXPECT_EQ(results[i].attempts, 0);
  }
  EXPECT_EQ(results[4].status, HostStatus::Ok);
}

TEST_F(FanoutProcess, SignalDeathExitCodeAndBoundedTails) {
  std::string noisy = script("noisy.sh", R"SH(head -c 200000 /dev/zero | tr '\0' a
echo STDOUT-END
head -c 200000 /dev/zero | tr '\0' b >&2
echo STDERR-END >&2
)SH");
  FanoutOptions options = fast_options();
  options.output_tail_bytes = 100;
  auto results =
      Fanout(options).run({job("noisy", {cmd({noisy})}), job("killed", {cmd({"sh", "-c", "kill $$"})})});
  const HostResult& r = results[0];
  EXPECT_EQ(r.status, HostStatus::Ok);
  EXPECT_EQ(r.stdout_tail, std::string(89, 'a') + "STDOUT-END\n");
  EXPECT_EQ(r.stderr_tail, std::string(89, 'b') + "STDERR-END\n");
  EXPECT_EQ(results[1].status, HostStatus::Failed);
  EXPECT_EQ(results[1].exit_code, 128 + SIGTERM);
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

TEST_F(FanoutProcess, ChildrenDoNotInheritOtherHostsPipes) {
  // Five sleepers hold their pipes open while the checker, started last, lists
  // its descriptors; its report cancels the sleepers. The checker is `ls`
  // itself, exec'd directly, so the listing shows exactly what it inherited.
  std::vector<HostJob> jobs;
  for (int i = 0; i < 5; ++i) jobs.push_back(job("sleeper" + std::to_string(i), {cmd({"sleep", "60"})}));
  jobs.push_back(job("checker", {cmd({"ls", "-l", "/proc/self/fd"})}));
  FanoutOptions options = fast_options();
  options.concurrency = 6;
  std::set<std::string> allowed = inherited_pipes();
  Fanout fanout(options);
  auto results = fanout.run(jobs, [&](const HostResult& result, const Progress&) {
    if (result.host == "checker") fanout.cancel();
  });
  ASSERT_EQ(results.back().status, HostStatus::Ok) << results.back().stderr_tail;
  for (int i = 0; i < 5; ++i) EXPECT_EQ(results[i].status, HostStatus::Cancelled);
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

TEST_F(FanoutProcess, DaemonHoldingThePipesDoesNotHangTheHost) {
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

TEST_F(FanoutProcess, WhatAStepLeavesInItsGroupEndsWithIt) {
  // Exited 0, a background sleep of its own group holding its pipes: once the
  // engine stops waiting for them (the drain grace), the group goes too.
  std::string leaver = script("leaver.sh", "sleep 60 &\necho $! > \"$1\"\nexit 0\n");
  auto results = Fanout(fast_options()).run({job("leaver", {cmd({leaver, path("left.pid")})})});
  EXPECT_EQ(results[0].status, HostStatus::Ok);
  std::string left = read_file(path("left.pid"));
  left.erase(left.find_last_not_of('\n') + 1);
  ASSERT_FALSE(left.empty());
  std::string stat = stat_once_dead(left);
  EXPECT_TRUE(is_dead(stat)) << "still running: " << stat;
}

TEST_F(FanoutProcess, ParsesRsyncStatsFromARealTransfer) {
  fs::create_directories(dir_ / "src" / "sub");
  std::ofstream(dir_ / "src" / "a.bin") << std::string(150000, 'a');
  std::ofstream(dir_ / "src" / "sub" / "b.txt") << "hello\n";
  Command rsync = cmd({"rsync", "--stats", "-a", path("src") + "/", path("dst") + "/"});
  rsync.parse_rsync_stats = true;
  auto r = Fanout(fast_options()).run({job("local", {rsync})})[0];
  ASSERT_EQ(r.status, HostStatus::Ok) << r.stderr_tail;
  EXPECT_GT(r.bytes_sent, 1000);
  EXPECT_TRUE(fs::exists(dir_ / "dst" / "sub" / "b.txt"));
  // The same transfer again sends only the file list: a fraction of it.
  auto again = Fanout(fast_options()).run({job("local", {rsync})})[0];
  EXPECT_GT(again.bytes_sent, 0);
  EXPECT_LT(again.bytes_sent * 10, r.bytes_sent);
}

TEST_F(FanoutProcess, FiveHundredHostsComplete) {
  std::vector<HostJob> jobs;
  for (int i = 0; i < 500; ++i) jobs.push_back(job("host" + std::to_string(i), {cmd({"true"})}));
  std::size_t calls = 0;
  auto results = Fanout(fast_options()).run(jobs, [&](const HostResult&, const Progress& progress) {
    EXPECT_EQ(progress.done, ++calls);
    EXPECT_LE(progress.running, 32u);
  });
  EXPECT_EQ(calls, jobs.size());
  for (const auto& r : results) ASSERT_EQ(r.status, HostStatus::Ok) << r.host << ": " << r.stderr_tail;
}

int sigchld_count = 0;
void count_sigchld(int) { ++sigchld_count; }

TEST_F(FanoutProcess, RestoresThePreviousSigchldHandler) {
  // A Buildbot master runs Twisted, whose SIGCHLD handler must survive a run.
  struct sigaction mine {
  }, previous{}, after{};
  mine.sa_handler = count_sigchld;
  ASSERT_EQ(::sigaction(SIGCHLD, &mine, &previous), 0);
  Fanout(fast_options()).run({job("a", {cmd({"true"})}), job("b", {cmd({"true"})})});
  ::sigaction(SIGCHLD, &previous, &after);
  EXPECT_EQ(after.sa_handler, &count_sigchld);
}

}  // namespace
}  // namespace cd::fanout
