// Tests of cd/fanout.hpp, the policy and the parsers. FanoutPolicy drives
// the window, timeouts, retries, budget and cancellation through a fake
// launcher on virtual time: no processes, no sleeps, and every time below is
// exact. FanoutParsers reach the parsers directly. The real launcher has its
// own file, fanout_process_test.cpp, as it has its own source.
#include "cd/fanout.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "cd/error.hpp"
#include "fake_launcher.hpp"
#include "fanout_jobs.hpp"

namespace cd::fanout {
namespace {

using fake::kForever;
using fake::Script;
using testing_support::cmd;
using testing_support::job;

// Hosts h0..h<count-1>, each one step {"push", host}.
std::vector<HostJob> hosts(std::size_t count) {
  std::vector<HostJob> jobs;
  for (std::size_t i = 0; i < count; ++i) {
    std::string host = "h" + std::to_string(i);
    jobs.push_back(job(host, {cmd({"push", host})}));
  }
  return jobs;
}

int index_of(const std::vector<std::string>& argv) { return std::stoi(argv.back().substr(1)); }

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" not found in:\n" << text;
}

FanoutOptions options(int concurrency = 32) {
  FanoutOptions options;
  options.concurrency = concurrency;
  options.host_timeout_s = 100;
  options.retry_backoff_s = 0.5;
  return options;
}

using Statuses = std::vector<HostStatus>;
Statuses statuses(const std::vector<HostResult>& results) {
  Statuses out;
  for (const auto& r : results) out.push_back(r.status);
  return out;
}

// ------------------------------------------------------------ the policy

TEST(FanoutPolicy, WindowIsKeptFullButNeverExceeded) {
  fake::World world;  // every process takes 1 s
  std::size_t max_running_reported = 0;
  auto results =
      Fanout(options(3), world.factory()).run(hosts(10), [&](const HostResult&, const Progress& p) {
        max_running_reported = std::max(max_running_reported, p.running);
      });
  EXPECT_EQ(world.max_running, 3);
  EXPECT_EQ(world.start_times(), (std::vector<double>{0, 0, 0, 1, 1, 1, 2, 2, 2, 3}));
  EXPECT_EQ(max_running_reported, 2u);  // reported after one finished, before the next starts
  EXPECT_EQ(statuses(results), Statuses(10, HostStatus::Ok));
}

TEST(FanoutPolicy, ResultsComeInJobOrderWhateverTheFinishOrder) {
  fake::World world;
  world.script = [](const std::vector<std::string>& argv, int) {
    return Script{5.0 - index_of(argv), 0, "out " + argv[1] + "\n", "err " + argv[1] + "\n"};
  };
  std::vector<std::string> reported;
  auto results = Fanout(options(), world.factory()).run(hosts(5), [&](const HostResult& r, const Progress&) {
    reported.push_back(r.host);
  });
  EXPECT_EQ(reported, (std::vector<std::string>{"h4", "h3", "h2", "h1", "h0"}));
  for (int i = 0; i < 5; ++i) {
    const HostResult& r = results[i];
    std::string host = "h" + std::to_string(i);
    EXPECT_EQ(r.host, host);
    EXPECT_EQ(r.status, HostStatus::Ok);
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.attempts, 1);
    EXPECT_EQ(r.failed_step, -1);
    EXPECT_EQ(r.stdout_tail, "out " + host + "\n");
    EXPECT_EQ(r.stderr_tail, "err " + host + "\n");
    EXPECT_EQ(r.duration_s, 5.0 - i);
  }
}

TEST(FanoutPolicy, RetriesTransientCodesWithDoublingBackoff) {
  fake::World world;  // 23 (partial transfer) twice, then success
  world.script = [](const std::vector<std::string>&, int runs) {
    return runs < 2 ? Script{1.0, 23, "", "partial " + std::to_string(runs) + "\n"} : Script{};
  };
  auto r = Fanout(options(), world.factory()).run(hosts(1))[0];
  EXPECT_EQ(world.start_times(), (std::vector<double>{0, 1.5, 3.5}));  // waits of 0.5 s, then 1 s
  EXPECT_EQ(r.status, HostStatus::Ok);
  EXPECT_EQ(r.attempts, 3);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.stderr_tail,
            "partial 0\n[fanout] step 0 exited 23, a transient code: retry 1 of 2 in 0.5 s\n"
            "partial 1\n[fanout] step 0 exited 23, a transient code: retry 2 of 2 in 1 s\n");
}

TEST(FanoutPolicy, GivesUpAfterMaxRetries) {
  fake::World world;
  world.script = [](const std::vector<std::string>&, int) { return Script{1.0, 255}; };  // ssh failed
  FanoutOptions opts = options();
  opts.max_retries = 3;
  auto r = Fanout(opts, world.factory()).run(hosts(1))[0];
  EXPECT_EQ(world.start_times(), (std::vector<double>{0, 1.5, 3.5, 6.5}));
  EXPECT_EQ(r.status, HostStatus::Failed);
  EXPECT_EQ(r.attempts, 4);
  EXPECT_EQ(r.exit_code, 255);
  EXPECT_EQ(r.failed_step, 0);
}

TEST(FanoutPolicy, RetriesOnlyTheConfiguredCodes) {
  fake::World world;
  world.script = [](const std::vector<std::string>&, int) { return Script{1.0, 11}; };  // disk full
  auto r = Fanout(options(), world.factory()).run(hosts(1))[0];
  EXPECT_EQ(r.status, HostStatus::Failed);
  EXPECT_EQ(r.attempts, 1);
  EXPECT_EQ(r.exit_code, 11);

  FanoutOptions opts = options();
  opts.transient_exit_codes = {11};
  EXPECT_EQ(Fanout(opts, world.factory()).run(hosts(1))[0].attempts, 3);
}

TEST(FanoutPolicy, TimeoutKillsTheRunningProcess) {
  fake::World world;
  world.script = [](const std::vector<std::string>& argv, int) {
    return Script{argv[1] == "h0" ? kForever : 1.0};
  };
  FanoutOptions opts = options();
  opts.host_timeout_s = 10;
  auto results = Fanout(opts, world.factory()).run(hosts(2));
  EXPECT_EQ(results[0].status, HostStatus::TimedOut);
  EXPECT_EQ(results[0].exit_code, fake::kKilledExitCode);
  EXPECT_EQ(results[0].duration_s, 10.0);
  EXPECT_EQ(results[0].failed_step, -1);
  EXPECT_TRUE(Contains(results[0].stderr_tail, "[fanout] timed out after 10 s; killed"));
  EXPECT_TRUE(world.launches[0].killed);
  EXPECT_EQ(world.launches[0].ended_at, 10.0);
  EXPECT_EQ(results[1].status, HostStatus::Ok);
  EXPECT_FALSE(world.launches[1].killed);
}

// The deadline struck after the host's last step had exited 0, while a daemon
// it left still held its output: the step is done, and so is the host.
TEST(FanoutPolicy, ALastStepThatExitedZeroBeforeTheDeadlineIsOk) {
  fake::World world;
  world.script = [](const std::vector<std::string>&, int) {
    Script script{1.0, 0};
    script.report_delay = 30.0;
    return script;
  };
  FanoutOptions opts = options();
  opts.host_timeout_s = 10;
  auto results = Fanout(opts, world.factory()).run(hosts(1));
  EXPECT_EQ(results[0].status, HostStatus::Ok);
  EXPECT_EQ(results[0].exit_code, 0);
  EXPECT_TRUE(world.launches[0].killed);  // the daemon: the host is not held for its pipes
}

TEST(FanoutPolicy, TimeoutCoversRetriesAndEndsABackoff) {
  fake::World world;
  world.script = [](const std::vector<std::string>&, int) { return Script{2.0, 23}; };
  FanoutOptions opts = options();
  opts.host_timeout_s = 10;
  opts.retry_backoff_s = 3;  // attempts at 0 and 5; the second back-off (6 s) outlives the deadline
  auto r = Fanout(opts, world.factory()).run(hosts(1))[0];
  EXPECT_EQ(world.start_times(), (std::vector<double>{0, 5}));
  EXPECT_EQ(r.status, HostStatus::TimedOut);
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(r.exit_code, 23);
  EXPECT_EQ(r.duration_s, 10.0);
  EXPECT_FALSE(world.launches[1].killed);
}

TEST(FanoutPolicy, StepsRunInOrderAndStopAtTheFirstFailure) {
  fake::World world;
  world.script = [](const std::vector<std::string>& argv, int) {
    return Script{1.0, argv[0] == "fail" ? 1 : 0, argv[0] + " out\n"};
  };
  auto results = Fanout(options(), world.factory())
                     .run({job("a", {cmd({"ok"}), cmd({"fail"}), cmd({"never"})}),
                           job("b", {cmd({"ok"}), cmd({"ok2"})}), job("idle", {})});
  EXPECT_EQ(results[0].status, HostStatus::Failed);
  EXPECT_EQ(results[0].failed_step, 1);
  EXPECT_EQ(results[0].exit_code, 1);
  EXPECT_EQ(results[0].attempts, 2);
  EXPECT_EQ(results[0].stdout_tail, "fail out\n");  // of the last step run
  EXPECT_EQ(results[1].status, HostStatus::Ok);
  EXPECT_EQ(results[1].duration_s, 2.0);
  EXPECT_EQ(results[2].status, HostStatus::Ok);  // no steps: nothing to do
  EXPECT_EQ(results[2].attempts, 0);
  EXPECT_EQ(results[2].exit_code, -1);
  for (const auto& launch : world.launches) EXPECT_NE(launch.request.argv[0], "never");
}

TEST(FanoutPolicy, FailureBudgetSkipsHostsNotYetStarted) {
  fake::World world;
  world.script = [](const std::vector<std::string>& argv, int) { return Script{1.0, index_of(argv) < 3}; };
  FanoutOptions opts = options(1);
  opts.max_fail_fraction = 0.2;  // more than 2 of 10 failed: stop
  auto results = Fanout(opts, world.factory()).run(hosts(10));
  EXPECT_EQ(world.launches.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(results[i].status, HostStatus::Failed);
  for (int i = 3; i < 10; ++i) {
    EXPECT_EQ(results[i].status, HostStatus::Skipped);
    EXPECT_EQ(results[i].attempts, 0);
    EXPECT_TRUE(Contains(results[i].stderr_tail, "3 of 10 hosts failed, over the failure budget of 20%"));
  }
  // Hosts already running when the budget runs out are finished, not killed.
  opts.concurrency = 5;
  results = Fanout(opts, world.factory()).run(hosts(10));
  // h0..h4 start together and h0..h2 fail at 1 s: h5 and h6 took the first
  // two freed slots; after the third failure nothing else starts.
  using S = HostStatus;
  EXPECT_EQ(statuses(results), (Statuses{S::Failed, S::Failed, S::Failed, S::Ok, S::Ok, S::Ok, S::Ok,
                                         S::Skipped, S::Skipped, S::Skipped}));
  EXPECT_EQ(world.launches.size(), 3u + 7u);
  for (const auto& launch : world.launches) EXPECT_FALSE(launch.killed);
}

TEST(FanoutPolicy, CancelKillsRunningHostsAndCancelsTheRest) {
  fake::World world;
  world.script = [](const std::vector<std::string>& argv, int) {
    return Script{argv[1] == "h0" ? 1.0 : kForever};
  };
  Fanout fanout(options(3), world.factory());
  world.at(5, [&] { fanout.cancel(); });  // as from another thread: through post()
  auto results = fanout.run(hosts(6));
  EXPECT_EQ(statuses(results),
            (Statuses{HostStatus::Ok, HostStatus::Cancelled, HostStatus::Cancelled, HostStatus::Cancelled,
                      HostStatus::Cancelled, HostStatus::Cancelled}));
  EXPECT_EQ(world.launches.size(), 4u);  // h0..h3
  for (int i = 1; i < 4; ++i) {
    EXPECT_EQ(results[i].exit_code, fake::kKilledExitCode);
    EXPECT_EQ(results[i].attempts, 1);
    EXPECT_TRUE(world.launches[i].killed);
  }
  EXPECT_EQ(results[1].duration_s, 5.0);
  EXPECT_EQ(results[3].duration_s, 4.0);
  EXPECT_EQ(results[5].attempts, 0);
  EXPECT_TRUE(Contains(results[5].stderr_tail, "cancelled before start"));
  // A cancelled Fanout stays cancelled.
  EXPECT_EQ(statuses(fanout.run(hosts(2))), Statuses(2, HostStatus::Cancelled));
  EXPECT_EQ(world.launches.size(), 4u);
}

TEST(FanoutPolicy, CancelEndsABackoffWithoutAnotherAttempt) {
  fake::World world;
  world.script = [](const std::vector<std::string>&, int) { return Script{1.0, 23}; };
  FanoutOptions opts = options();
  opts.retry_backoff_s = 10;
  Fanout fanout(opts, world.factory());
  world.at(3, [&] { fanout.cancel(); });
  auto r = fanout.run(hosts(1))[0];
  EXPECT_EQ(r.status, HostStatus::Cancelled);
  EXPECT_EQ(r.attempts, 1);
  EXPECT_EQ(r.duration_s, 3.0);
}

TEST(FanoutPolicy, ProgressCountsEveryHost) {
  fake::World world;  // h1 and h3 fail; h0, h1 take 1 s, h2, h3 take 2 s
  world.script = [](const std::vector<std::string>& argv, int) {
    int i = index_of(argv);
    return Script{i < 2 ? 1.0 : 2.0, i % 2};
  };
  std::vector<std::string> seen;
  Fanout(options(2), world.factory()).run(hosts(4), [&](const HostResult& r, const Progress& p) {
    seen.push_back(r.host + " " + std::to_string(p.total) + "/" + std::to_string(p.done) + "/" +
                   std::to_string(p.failed) + "/" + std::to_string(p.running));
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"h0 4/1/0/1", "h1 4/2/1/1", "h2 4/3/1/1", "h3 4/4/2/0"}));
}

TEST(FanoutPolicy, ThrowingProgressCallbackCancelsAndRethrows) {
  fake::World world;
  world.script = [](const std::vector<std::string>& argv, int) {
    return Script{argv[1] == "h0" ? 1.0 : kForever};
  };
  auto observer = [](const HostResult&, const Progress&) { throw std::runtime_error("observer failed"); };
  EXPECT_THROW(Fanout(options(), world.factory()).run(hosts(3), observer), std::runtime_error);
  EXPECT_TRUE(world.launches[1].killed);
  EXPECT_TRUE(world.launches[2].killed);
  EXPECT_EQ(world.running, 0);  // every process was waited for
}

TEST(FanoutPolicy, AProgramThatCannotStartIsAFailedStep) {
  fake::World world;
  world.script = [](const std::vector<std::string>& argv, int) {
    Script script;
    if (argv[1] == "h0") script.start_error = "No such file or directory";
    return script;
  };
  auto results = Fanout(options(), world.factory()).run(hosts(2));
  EXPECT_EQ(results[0].status, HostStatus::Failed);
  EXPECT_EQ(results[0].failed_step, 0);
  EXPECT_EQ(results[0].attempts, 0);
  EXPECT_EQ(results[0].exit_code, -1);
  EXPECT_EQ(results[0].stderr_tail, "[fanout] cannot start 'push': No such file or directory\n");
  EXPECT_EQ(results[1].status, HostStatus::Ok);
}

TEST(FanoutPolicy, TailsAreBoundedAndBytesSentSumsEveryAttempt) {
  fake::World world;
  world.script = [](const std::vector<std::string>& argv, int runs) {
    std::string stats =
        std::string(5000, '.') + "\nTotal bytes sent: " + argv.back() + "\nTotal bytes received: 9\n";
    Script script{1.0, argv[0] == "flaky" && runs == 0 ? 23 : 0, stats, std::string(300, 'e')};
    if (argv[0] == "lost") script.exit_error = "No child processes";
    return script;
  };
  Command flaky = cmd({"flaky", "1,000"}), plain = cmd({"plain", "234"}), ignored = cmd({"ignored", "99"});
  flaky.parse_rsync_stats = plain.parse_rsync_stats = true;
  FanoutOptions opts = options();
  opts.output_tail_bytes = 40;  // parsing does not depend on the visible tail
  auto results =
      Fanout(opts, world.factory()).run({job("a", {flaky, plain, ignored}), job("b", {cmd({"lost"})})});
  EXPECT_EQ(results[0].bytes_sent, 2234);  // 1,000 twice (the retry sent it again) and 234
  EXPECT_EQ(results[0].stdout_tail, " bytes sent: 99\nTotal bytes received: 9\n");
  EXPECT_EQ(results[0].stderr_tail, std::string(40, 'e'));
  for (const auto& launch : world.launches) {
    const std::string& program = launch.request.argv[0];
    EXPECT_EQ(launch.request.stdout_limit, program == "flaky" || program == "plain" ? 4096u : 40u) << program;
    EXPECT_EQ(launch.request.stderr_limit, 40u);
  }
  const std::string note = "[fanout] lost the exit status: No child processes\n";
  EXPECT_EQ(results[1].stderr_tail, note.substr(note.size() - 40));
}

TEST(FanoutPolicy, BytesSentStopsAtItsLargestValue) {
  fake::World world;
  world.script = [](const std::vector<std::string>&, int) {
    return Script{1.0, 0, "Total bytes sent: 9223372036854775807\n"};
  };
  Command step = cmd({"rsync"});
  step.parse_rsync_stats = true;
  auto results = Fanout(options(), world.factory()).run({job("a", {step, step})});
  EXPECT_EQ(results[0].bytes_sent, std::numeric_limits<std::int64_t>::max());
}

TEST(FanoutPolicy, RejectsInvalidInputBeforeStartingAnything) {
  fake::World world;
  auto with = [](auto change) {
    FanoutOptions opts = options();
    change(opts);
    return opts;
  };
  EXPECT_THROW(Fanout(options(0), world.factory()).run(hosts(1)), InvalidInput);
  EXPECT_THROW(Fanout(options(), world.factory()).run({job("a", {cmd({})})}), InvalidInput);
  EXPECT_THROW(Fanout(options(), world.factory()).run({job("a", {cmd({""})})}), InvalidInput);
  EXPECT_THROW(Fanout(with([](auto& o) { o.max_fail_fraction = 1.5; }), world.factory()).run({}),
               InvalidInput);
  EXPECT_THROW(Fanout(with([](auto& o) { o.host_timeout_s = 0; }), world.factory()).run({}), InvalidInput);
  EXPECT_THROW(Fanout(with([](auto& o) { o.max_retries = -1; }), world.factory()).run({}), InvalidInput);
  EXPECT_THROW(Fanout(with([](auto& o) { o.retry_backoff_s = -1; }), world.factory()).run({}), InvalidInput);
  // Twice it, the trimming threshold, would wrap round and erase every tail.
  EXPECT_THROW(Fanout(with([](auto& o) { o.output_tail_bytes = SIZE_MAX; }), world.factory()).run({}),
               InvalidInput);
  EXPECT_TRUE(world.launches.empty());
  EXPECT_TRUE(Fanout(options(), world.factory()).run({}).empty());
}

// ----------------------------------------------------------- the parsers

TEST(FanoutParsers, StatusNames) {
  EXPECT_STREQ(to_string(HostStatus::Ok), "ok");
  EXPECT_STREQ(to_string(HostStatus::Failed), "failed");
  EXPECT_STREQ(to_string(HostStatus::TimedOut), "timed_out");
  EXPECT_STREQ(to_string(HostStatus::Skipped), "skipped");
  EXPECT_STREQ(to_string(HostStatus::Cancelled), "cancelled");
}

TEST(FanoutParsers, RsyncBytesSentWithAnyDigitGrouping) {
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: 42\n"), 42);
  EXPECT_EQ(
      parse_rsync_bytes_sent("Number of files: 3\nTotal bytes sent: 1,234,567\nTotal bytes received: 35\n"),
      1234567);
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: 1.234.567"), 1234567);
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: 12'345"), 12345);
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: 7\nTotal bytes sent: 8\n"), 8);  // the last one
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent:9223372036854775807"), INT64_MAX);
}

TEST(FanoutParsers, RsyncBytesSentFromMalformedOutput) {
  EXPECT_EQ(parse_rsync_bytes_sent(""), 0);
  EXPECT_EQ(parse_rsync_bytes_sent("rsync error: some files could not be transferred (code 23)"), 0);
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent:"), 0);
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: \n"), 0);
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: -5"), 0);
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: 1.23K"), 1);   // -h output is not supported
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: 1,2345"), 1);  // not a group of three
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: 12,"), 12);
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: 9223372036854775808"), 0);  // INT64_MAX + 1
  EXPECT_EQ(parse_rsync_bytes_sent("Total bytes sent: 99999999999999999999"), 0);
  EXPECT_EQ(parse_rsync_bytes_sent("total bytes sent: 5"), 0);
  EXPECT_EQ(parse_rsync_bytes_sent(std::string_view("Total bytes sent: 31", 19)), 3);  // view, not C string
}

TEST(FanoutParsers, ShellExitCodeFromWaitStatus) {
  EXPECT_EQ(shell_exit_code(W_EXITCODE(0, 0)), 0);
  EXPECT_EQ(shell_exit_code(W_EXITCODE(23, 0)), 23);
  EXPECT_EQ(shell_exit_code(W_EXITCODE(255, 0)), 255);
  EXPECT_EQ(shell_exit_code(W_EXITCODE(0, SIGKILL)), 137);
  EXPECT_EQ(shell_exit_code(W_EXITCODE(0, SIGTERM)), 128 + SIGTERM);
  EXPECT_EQ(shell_exit_code(W_STOPCODE(SIGSTOP)), -1);  // stopped, not exited
}

}  // namespace
}  // namespace cd::fanout
