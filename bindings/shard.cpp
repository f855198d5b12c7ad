// Bindings of the shard scheduler: verdicts and assignment kinds are Python
// enums whose member names are the words stored and shown (passed, flaky...),
// the estimate source travels as a string, structs as read-only attribute
// objects; next_batch and report hold the GIL only for conversion since the
// dispatcher has its own lock. buildbot_steps/_core.pyi describes all of it.
#include "cd/shard.hpp"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "bindings.hpp"
#include "cd/error.hpp"

namespace py = pybind11;

namespace cd::bindings {

namespace {

using namespace cd::shard;

// Member names are the core's to_string words: `verdict.name` is the text
// written to Buildbot's database and the report.
void bind_enums(py::module_& module) {
  py::enum_<Verdict>(module, "Verdict")
      .value(to_string(Verdict::Pending), Verdict::Pending)
      .value(to_string(Verdict::Passed), Verdict::Passed)
      .value(to_string(Verdict::Flaky), Verdict::Flaky)
      .value(to_string(Verdict::Failed), Verdict::Failed)
      .value(to_string(Verdict::Skipped), Verdict::Skipped);
  py::enum_<Assignment::Kind>(module, "AssignmentKind")
      .value("run", Assignment::Kind::Run)
      .value("wait", Assignment::Kind::Wait)
      .value("done", Assignment::Kind::Done);
}

void bind_estimates(py::module_& module) {
  py::class_<TestEstimate>(module, "TestEstimate")
      .def(py::init([](std::string id, double seconds, std::optional<double> spread_s) {
             return TestEstimate{std::move(id), seconds, EstimateSource::Default, spread_s};
           }),
           py::arg("id"), py::arg("seconds"), py::arg("spread_s") = py::none())
      .def_readonly("id", &TestEstimate::id)
      .def_readonly("seconds", &TestEstimate::seconds)
      .def_readonly("spread_s", &TestEstimate::spread_s)
      .def_property_readonly("source", [](const TestEstimate& e) { return to_string(e.source); })
      .def("__repr__", [](const TestEstimate& e) {
        return "TestEstimate(" + e.id + ", " + std::to_string(e.seconds) + ", " + to_string(e.source) + ")";
      });
  module.def("estimate_durations",
             static_cast<std::vector<TestEstimate> (*)(const std::vector<std::string>&,
                                                       const std::vector<DurationMap>&)>(&estimate_durations),
             py::arg("tests"), py::arg("history"), py::call_guard<py::gil_scoped_release>(),
             "One estimate per test from past runs (oldest first): {test id: seconds} each.");
  module.def("file_of", &file_of, py::arg("test_id"));
}

// A run of a history as a dict, in its file's order.
py::dict run_as_dict(const DurationHistory& history, std::size_t run) {
  py::dict durations;
  for (auto test : history.tests_of(run)) durations[py::str(history.id(test))] = *history.seconds(run, test);
  return durations;
}

// A history read by the core: the runs stay in C++, so that a million tests
// are never turned into Python dictionaries only to be turned back.
void bind_duration_files(py::module_& module) {
  py::class_<DurationHistory>(module, "DurationHistory")
      .def("__len__", &DurationHistory::runs)
      .def_property_readonly("newest_ids",
                             [](const DurationHistory& history) {
                               py::list ids;
                               for (auto test : history.tests_of(history.runs() - 1))
                                 ids.append(py::str(history.id(test)));
                               return ids;
                             })
      .def_property_readonly("runs", [](const DurationHistory& history) {
        py::list runs;
        for (std::size_t run = 0; run < history.runs(); ++run) runs.append(run_as_dict(history, run));
        return runs;
      });
  module.def("read_duration_files", &DurationHistory::read, py::arg("paths"),
             py::call_guard<py::gil_scoped_release>(),
             "pytest-split duration files, oldest first, read and checked by the core.");
  module.def(
      "estimate_durations",
      [](const std::vector<std::string>& tests, const DurationHistory& history) {
        return estimate_durations(tests, history);
      },
      py::arg("tests"), py::arg("history"), py::call_guard<py::gil_scoped_release>());
  module.def(
      "estimate_durations", [](const DurationHistory& history) { return estimate_durations(history); },
      py::arg("history"), py::call_guard<py::gil_scoped_release>(),
      "Estimates for the tests of the newest file.");
  module.attr("kMaxTestDurationSeconds") = kMaxTestDurationSeconds;
  module.attr("kBatchWorthFactor") = kBatchWorthFactor;
  module.def("plan_to_json", &plan_to_json, py::arg("plan"), py::call_guard<py::gil_scoped_release>());
}

void bind_plan(py::module_& module) {
  py::class_<Shard>(module, "Shard")
      .def_readonly("tests", &Shard::tests)
      .def_readonly("estimate_s", &Shard::estimate_s);
  py::class_<Plan>(module, "Plan")
      .def_readonly("shards", &Plan::shards)
      .def_readonly("lower_bound_s", &Plan::lower_bound_s)
      .def_property_readonly("makespan_s", &Plan::makespan_s);
  module.def(
      "plan_static",
      [](const std::vector<TestEstimate>& tests, int shards, double split_file_fraction,
         int max_improvement_passes) {
        PlanOptions options;
        options.shards = shards;
        options.split_file_fraction = split_file_fraction;
        options.max_improvement_passes = max_improvement_passes;
        return plan_static(tests, options);
      },
      py::arg("tests"), py::arg("shards"), py::arg("split_file_fraction") = PlanOptions{}.split_file_fraction,
      py::arg("max_improvement_passes") = PlanOptions{}.max_improvement_passes,
      py::call_guard<py::gil_scoped_release>());
  // A million estimates as Python objects, made only to be read back, would
  // cost `buildbot-cd plan --json` a second; here they never leave C++.
  module.def(
      "plan_from_history",
      [](const DurationHistory& history, int shards, const std::optional<std::vector<std::string>>& tests) {
        PlanOptions options;
        options.shards = shards;
        return plan_static(tests ? estimate_durations(*tests, history) : estimate_durations(history),
                           options);
      },
      py::arg("history"), py::arg("shards"), py::arg("tests") = py::none(),
      py::call_guard<py::gil_scoped_release>(),
      "estimate_durations and plan_static in one call: for `tests`, else the newest file's tests.");
}

void bind_results(py::module_& module) {
  py::class_<Batch>(module, "Batch")
      .def_readonly("id", &Batch::id)
      .def_readonly("tests", &Batch::tests)
      .def_readonly("estimate_s", &Batch::estimate_s)
      .def_readonly("speculative", &Batch::speculative)
      .def_readonly("retry", &Batch::retry);
  py::class_<Assignment>(module, "Assignment")
      .def_readonly("kind", &Assignment::kind)
      .def_readonly("batch", &Assignment::batch);
  py::class_<TestResult>(module, "TestResult")
      .def(py::init([](std::string id, bool passed, double seconds, std::string message, bool skipped) {
             return TestResult{std::move(id), passed, seconds, std::move(message), skipped};
           }),
           py::arg("id"), py::arg("passed"), py::arg("seconds"), py::arg("message") = "",
           py::arg("skipped") = false)
      .def_readonly("id", &TestResult::id)
      .def_readonly("passed", &TestResult::passed)
      .def_readonly("seconds", &TestResult::seconds)
      .def_readonly("message", &TestResult::message)
      .def_readonly("skipped", &TestResult::skipped);
  py::class_<Attempt>(module, "Attempt")
      .def_readonly("worker", &Attempt::worker)
      .def_readonly("passed", &Attempt::passed)
      .def_readonly("seconds", &Attempt::seconds)
      .def_readonly("message", &Attempt::message)
      .def_readonly("skipped", &Attempt::skipped)
      .def_readonly("timed", &Attempt::timed);
  py::class_<TestOutcome>(module, "TestOutcome")
      .def_readonly("id", &TestOutcome::id)
      .def_readonly("verdict", &TestOutcome::verdict)
      .def_readonly("estimate_s", &TestOutcome::estimate_s)
      .def_readonly("attempts", &TestOutcome::attempts);
  py::class_<DispatchStats>(module, "DispatchStats")
      .def(py::init<>())
      // The sum of several dispatchers' figures (the static mode's shards).
      .def("__add__",
           [](const DispatchStats& a, const DispatchStats& b) {
             DispatchStats sum;
             sum.tests = a.tests + b.tests;
             sum.resolved = a.resolved + b.resolved;
             sum.passed = a.passed + b.passed;
             sum.flaky = a.flaky + b.flaky;
             sum.failed = a.failed + b.failed;
             sum.skipped = a.skipped + b.skipped;
             sum.batches_handed_out = a.batches_handed_out + b.batches_handed_out;
             sum.batches_in_flight = a.batches_in_flight + b.batches_in_flight;
             sum.speculative_batches = a.speculative_batches + b.speculative_batches;
             sum.requeued_batches = a.requeued_batches + b.requeued_batches;
             sum.whole_part_batches = a.whole_part_batches + b.whole_part_batches;
             sum.workers_released = a.workers_released + b.workers_released;
             sum.files_split = a.files_split + b.files_split;
             sum.isolated_runs = a.isolated_runs + b.isolated_runs;
             // A cap, not a count: the loosest of the runs'.
             sum.batch_tests_cap = std::max(a.batch_tests_cap, b.batch_tests_cap);
             sum.queued_estimate_s = a.queued_estimate_s + b.queued_estimate_s;
             // The cost model's figures are per run, not additive: their means
             // weighted by tests (an empty start value weighs nothing).
             auto weighted = [&](double DispatchStats::*figure) {
               if (sum.tests == 0) return a.*figure;
               return (a.*figure * static_cast<double>(a.tests) + b.*figure * static_cast<double>(b.tests)) /
                      static_cast<double>(sum.tests);
             };
             sum.batch_overhead_s = weighted(&DispatchStats::batch_overhead_s);
             sum.estimate_scale = weighted(&DispatchStats::estimate_scale);
             return sum;
           })
      .def_readonly("tests", &DispatchStats::tests)
      .def_readonly("resolved", &DispatchStats::resolved)
      .def_readonly("passed", &DispatchStats::passed)
      .def_readonly("flaky", &DispatchStats::flaky)
      .def_readonly("failed", &DispatchStats::failed)
      .def_readonly("skipped", &DispatchStats::skipped)
      .def_readonly("batches_handed_out", &DispatchStats::batches_handed_out)
      .def_readonly("batches_in_flight", &DispatchStats::batches_in_flight)
      .def_readonly("speculative_batches", &DispatchStats::speculative_batches)
      .def_readonly("requeued_batches", &DispatchStats::requeued_batches)
      .def_readonly("whole_part_batches", &DispatchStats::whole_part_batches)
      .def_readonly("workers_released", &DispatchStats::workers_released)
      .def_readonly("files_split", &DispatchStats::files_split)
      .def_readonly("isolated_runs", &DispatchStats::isolated_runs)
      .def_readonly("batch_tests_cap", &DispatchStats::batch_tests_cap)
      .def_readonly("queued_estimate_s", &DispatchStats::queued_estimate_s)
      .def_readonly("batch_overhead_s", &DispatchStats::batch_overhead_s)
      .def_readonly("estimate_scale", &DispatchStats::estimate_scale);
}

void bind_dispatcher(py::module_& module) {
  const DispatchOptions defaults;
  py::class_<Dispatcher>(module, "Dispatcher")
      .def(py::init([](std::vector<TestEstimate> tests, int workers, int max_attempts, double min_batch_s,
                       int max_batch_tests, bool speculate, double min_speculation_s,
                       double split_file_fraction, double batch_overhead_s, bool recalibrate) {
             DispatchOptions options;
             options.workers = workers;
             options.max_attempts = max_attempts;
             options.min_batch_s = min_batch_s;
             options.max_batch_tests = max_batch_tests;
             options.speculate = speculate;
             options.min_speculation_s = min_speculation_s;
             options.split_file_fraction = split_file_fraction;
             options.batch_overhead_s = batch_overhead_s;
             options.recalibrate = recalibrate;
             return std::make_unique<Dispatcher>(std::move(tests), options);
           }),
           py::arg("tests"), py::arg("workers") = defaults.workers,
           py::arg("max_attempts") = defaults.max_attempts, py::arg("min_batch_s") = defaults.min_batch_s,
           py::arg("max_batch_tests") = defaults.max_batch_tests, py::arg("speculate") = defaults.speculate,
           py::arg("min_speculation_s") = defaults.min_speculation_s,
           py::arg("split_file_fraction") = defaults.split_file_fraction,
           py::arg("batch_overhead_s") = defaults.batch_overhead_s,
           py::arg("recalibrate") = defaults.recalibrate)
      .def("next_batch", &Dispatcher::next_batch, py::arg("worker"), py::arg("now_s"),
           py::call_guard<py::gil_scoped_release>())
      .def(
          "report",
          [](Dispatcher& dispatcher, const std::string& worker, std::uint64_t batch_id,
             const std::vector<TestResult>& results, std::optional<double> wall_s) {
            py::gil_scoped_release release;
            if (wall_s) {
              dispatcher.report(worker, batch_id, results, *wall_s);
            } else {
              dispatcher.report(worker, batch_id, results);
            }
          },
          py::arg("worker"), py::arg("batch_id"), py::arg("results"), py::arg("wall_s") = py::none(),
          "Results of a batch; wall_s (its command's start to end) teaches the batch overhead.")
      .def("report_error", &Dispatcher::report_error, py::arg("worker"), py::arg("batch_id"),
           py::arg("message"), py::call_guard<py::gil_scoped_release>())
      .def("worker_lost", &Dispatcher::worker_lost, py::arg("worker"),
           py::call_guard<py::gil_scoped_release>())
      .def("batch_obsolete", &Dispatcher::batch_obsolete, py::arg("batch_id"))
      .def("done", &Dispatcher::done)
      .def("stats", &Dispatcher::stats)
      .def("outcomes", &Dispatcher::outcomes)
      .def("overhead_by_worker", &Dispatcher::overhead_by_worker);
}

}  // namespace

void bind_shard(py::module_& module) {
  bind_enums(module);
  bind_estimates(module);
  bind_duration_files(module);
  bind_plan(module);
  bind_results(module);
  bind_dispatcher(module);
}

}  // namespace cd::bindings
