// A deterministic stand-in for the real Launcher of cd/fanout.hpp: virtual
// time that jumps from event to event, and processes that do what the test
// scripts, so the fan-out policy is tested without processes or sleeps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cd/fanout.hpp"

namespace cd::fanout::fake {

constexpr double kForever = std::numeric_limits<double>::infinity();
constexpr int kKilledExitCode = 128 + 9;  // SIGKILL, as the real launcher reports it

// What one process does: runs for `seconds` of virtual time, then exits.
struct Script {
  double seconds = 1.0;  // kForever: until killed
  int exit_code = 0;
  std::string stdout_data;
  std::string stderr_data;
  std::string start_error;  // set: start() fails with this reason
  std::string exit_error;   // set: the exit status is "lost"
  // Its exit is reported this long after it: a daemon it left holds its
  // output open (the real launcher drains the pipes first). A kill then
  // ends the daemon: the exit is reported at once, with its own code.
  double report_delay = 0.0;
};

struct Launch {
  LaunchRequest request;
  double started_at = 0.0;
  double ended_at = -1.0;  // -1 while running
  bool killed = false;
};

class World {
 public:
  // Decides each process from its argv and how often that argv ran before.
  std::function<Script(const std::vector<std::string>& argv, int earlier_runs)> script =
      [](const std::vector<std::string>&, int) { return Script{}; };

  double now = 0.0;
  std::vector<Launch> launches;  // every start() that returned a process
  int running = 0;
  int max_running = 0;

  // Runs `action` at virtual time `at`, in order with the engine's events.
  void at(double when, std::function<void()> action) { schedule(when, std::move(action)); }

  LauncherFactory factory();

  std::vector<double> start_times() const {
    std::vector<double> times;
    for (const auto& launch : launches) times.push_back(launch.started_at);
    return times;
  }

 private:
  friend class FakeLauncher;
  using Key = std::pair<double, std::uint64_t>;  // time, then order of scheduling

  Key schedule(double when, std::function<void()> action) {
    Key key{when, next_sequence_++};
    events_.emplace(key, std::move(action));
    return key;
  }

  void run() {
    for (;;) {
      std::deque<std::function<void()>> posted;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        posted.swap(posted_);
      }
      if (!posted.empty()) {
        for (auto& handler : posted) handler();
        continue;
      }
      if (events_.empty()) return;
      auto first = events_.begin();
      now = first->first.first;
      std::function<void()> action = std::move(first->second);
      events_.erase(first);  // before running it: it may cancel its own timer
      action();
    }
  }

  std::map<Key, std::function<void()>> events_;
  std::uint64_t next_sequence_ = 0;
  std::map<std::vector<std::string>, int> runs_by_argv_;
  std::mutex mutex_;
  std::deque<std::function<void()>> posted_;
};

class FakeLauncher final : public Launcher {
 public:
  explicit FakeLauncher(World& world) : world_(world) {}

  std::unique_ptr<ProcessHandle> start(const LaunchRequest& request, ExitHandler on_exit,
                                       std::string& error) override {
    Script script = world_.script(request.argv, world_.runs_by_argv_[request.argv]++);
    if (!script.start_error.empty()) {
      error = script.start_error;
      return nullptr;
    }
    auto process = std::make_shared<Process>();
    process->world = &world_;
    process->index = world_.launches.size();
    process->script = std::move(script);
    process->request = request;
    process->on_exit = std::move(on_exit);
    world_.launches.push_back(Launch{request, world_.now});
    world_.max_running = std::max(world_.max_running, ++world_.running);
    if (std::isfinite(process->script.seconds)) process->exit_at(world_.now + process->script.seconds);
    return std::make_unique<Handle>(process);
  }

  double now() const override { return world_.now; }

  std::unique_ptr<Timer> start_timer(double seconds, std::function<void()> on_fire) override {
    return std::make_unique<FakeTimer>(world_, world_.schedule(world_.now + seconds, std::move(on_fire)));
  }

  void post(std::function<void()> handler) override {
    std::lock_guard<std::mutex> lock(world_.mutex_);
    world_.posted_.push_back(std::move(handler));
  }

  void run() override { world_.run(); }

 private:
  struct Process : std::enable_shared_from_this<Process> {
    World* world = nullptr;
    std::size_t index = 0;
    Script script;
    LaunchRequest request;
    ExitHandler on_exit;
    std::optional<World::Key> exit_event;
    bool ended = false;  // the process itself; its exit may not be reported yet
    bool exited = false;

    void exit_at(double when) {
      exit_event = world->schedule(when, [self = shared_from_this()] { self->end(); });
    }
    void end() {
      ended = true;
      world->launches[index].ended_at = world->now;
      if (script.report_delay <= 0.0) return exit();
      exit_event =
          world->schedule(world->now + script.report_delay, [self = shared_from_this()] { self->exit(); });
    }
    void exit() {
      exited = true;
      --world->running;
      auto tail = [](const std::string& text, std::size_t limit) {
        return text.size() <= limit ? text : text.substr(text.size() - limit);
      };
      ExitHandler handler = std::move(on_exit);
      handler(ProcessExit{script.exit_code, tail(script.stdout_data, request.stdout_limit),
                          tail(script.stderr_data, request.stderr_limit), script.exit_error});
    }
  };

  class Handle final : public ProcessHandle {
   public:
    explicit Handle(std::shared_ptr<Process> process) : process_(std::move(process)) {}
    void kill() override {
      Launch& launch = process_->world->launches[process_->index];
      if (process_->exited || launch.killed) return;
      launch.killed = true;
      if (process_->exit_event) process_->world->events_.erase(*process_->exit_event);
      if (process_->ended) {  // only its daemon was left: the exit is its own
        process_->exit();
        return;
      }
      process_->script = Script{0.0, kKilledExitCode};
      process_->exit_at(process_->world->now);
    }

   private:
    std::shared_ptr<Process> process_;
  };

  class FakeTimer final : public Timer {
   public:
    FakeTimer(World& world, World::Key key) : world_(world), key_(key) {}
    ~FakeTimer() override { cancel(); }
    void cancel() override { world_.events_.erase(key_); }

   private:
    World& world_;
    World::Key key_;
  };

  World& world_;
};

inline LauncherFactory World::factory() {
  return [this] { return std::make_unique<FakeLauncher>(*this); };
}

}  // namespace cd::fanout::fake
