// Bindings of the canary judge: enums as Python enum.Enum classes, structs as
// read-only attribute objects, options as keyword arguments. MetricLook has
// two array constructors (continuous, count) so that callers holding columns
// (numpy, Prometheus results) need not build one HostData per host in Python.
#include "cd/canary.hpp"

#include <fmt/format.h>
#include <pybind11/native_enum.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "bindings.hpp"
#include "cd/error.hpp"

namespace py = pybind11;

namespace cd::bindings {

namespace {

using namespace cd::canary;

using Column = std::optional<std::vector<double>>;
using Flags = std::optional<std::vector<bool>>;

void bind_enums(py::module_& module) {
  py::native_enum<Direction>(module, "Direction", "enum.Enum")
      .value("INCREASE", Direction::Increase)
      .value("DECREASE", Direction::Decrease)
      .finalize();
  py::native_enum<MetricKind>(module, "MetricKind", "enum.Enum")
      .value("CONTINUOUS", MetricKind::Continuous)
      .value("COUNT", MetricKind::Count)
      .finalize();
  py::native_enum<Design>(module, "Design", "enum.Enum")
      .value("SAME_WINDOW", Design::SameWindow)
      .value("BEFORE_AFTER", Design::BeforeAfter)
      .value("DIFF_IN_DIFF", Design::DiffInDiff)
      .finalize();
  py::native_enum<Sequential>(module, "Sequential", "enum.Enum")
      .value("SPENDING", Sequential::Spending)
      .value("MIXTURE", Sequential::Mixture)
      .value("GROUP_SEQUENTIAL", Sequential::GroupSequential)
      .finalize();
  py::native_enum<Verdict>(module, "CanaryVerdict", "enum.Enum")
      .value("CONTINUE", Verdict::Continue)
      .value("PASS", Verdict::Pass)
      .value("FAIL", Verdict::Fail)
      .value("INCONCLUSIVE", Verdict::Inconclusive)
      .finalize();
  py::native_enum<MetricStatus>(module, "MetricStatus", "enum.Enum")
      .value("TESTED", MetricStatus::Tested)
      .value("INSUFFICIENT_DATA", MetricStatus::InsufficientData)
      .finalize();
}

void bind_tests(py::module_& module) {
  py::class_<Summary>(module, "Summary")
      .def(py::init([](double n, double mean, double sd) {
             return Summary{n, mean, sd};
           }),
           py::arg("n"), py::arg("mean"), py::arg("sd"))
      .def_readonly("n", &Summary::n)
      .def_readonly("mean", &Summary::mean)
      .def_readonly("sd", &Summary::sd);
  py::class_<TTest>(module, "TTest")
      .def_readonly("statistic", &TTest::statistic)
      .def_readonly("df", &TTest::df)
      .def_readonly("p_value", &TTest::p_value)
      .def_readonly("difference", &TTest::difference)
      .def_readonly("std_error", &TTest::std_error)
      .def_readonly("ci_low", &TTest::ci_low)
      .def_readonly("ci_high", &TTest::ci_high);
  py::class_<RateTest>(module, "RateTest")
      .def_readonly("ratio", &RateTest::ratio)
      .def_readonly("null_share", &RateTest::null_share)
      .def_readonly("p_value", &RateTest::p_value)
      .def_readonly("ci_low", &RateTest::ci_low)
      .def_readonly("ci_high", &RateTest::ci_high);
  module.def("summarize", &summarize, py::arg("values"));
  module.def(
      "welch_test",
      py::overload_cast<const std::vector<double>&, const std::vector<double>&, Direction, double, double>(
          &welch_test),
      py::arg("canary"), py::arg("control"), py::arg("worse"), py::arg("margin") = 0.0,
      py::arg("confidence") = 0.95, py::call_guard<py::gil_scoped_release>());
  module.def("welch_from_summary", &welch_from_summary, py::arg("canary"), py::arg("control"),
             py::arg("worse"), py::arg("margin") = 0.0, py::arg("confidence") = 0.95);
  module.def("rate_ratio_test", &rate_ratio_test, py::arg("canary_events"), py::arg("canary_exposure"),
             py::arg("control_events"), py::arg("control_exposure"), py::arg("worse"),
             py::arg("allowed_ratio") = 1.0, py::arg("dispersion") = 1.0, py::arg("confidence") = 0.95);
}

// Columns of one arm must have one entry per host.
void check_length(std::size_t expected, std::size_t actual, const char* column) {
  if (expected != actual)
    throw InvalidInput(fmt::format("column '{}' has {} entries for {} hosts", column, actual, expected));
}

template <typename Value>
const Value* column_data(const std::optional<std::vector<Value>>& column, std::size_t hosts,
                         const char* name) {
  if (!column) return nullptr;
  check_length(hosts, column->size(), name);
  return column->data();
}

std::vector<HostData> continuous_arm(const std::vector<double>& values, const Column& baseline,
                                     const Flags& missing, const char* arm) {
  const std::string prefix(arm);
  const double* base = column_data(baseline, values.size(), (prefix + "_baseline").c_str());
  if (missing) check_length(values.size(), missing->size(), (prefix + "_missing").c_str());
  std::vector<HostData> hosts(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    hosts[i].value = values[i];
    if (base != nullptr) hosts[i].baseline_value = base[i];
    hosts[i].missing = missing && (*missing)[i];
  }
  return hosts;
}

std::vector<HostData> count_arm(const std::vector<double>& events, const std::vector<double>& exposure,
                                const Column& baseline_events, const Column& baseline_exposure,
                                const Flags& missing, const char* arm) {
  const std::string prefix(arm);
  check_length(events.size(), exposure.size(), (prefix + "_exposure").c_str());
  const double* base_events =
      column_data(baseline_events, events.size(), (prefix + "_baseline_events").c_str());
  const double* base_exposure =
      column_data(baseline_exposure, events.size(), (prefix + "_baseline_exposure").c_str());
  if (missing) check_length(events.size(), missing->size(), (prefix + "_missing").c_str());
  std::vector<HostData> hosts(events.size());
  for (std::size_t i = 0; i < events.size(); ++i) {
    hosts[i].events = events[i];
    hosts[i].exposure = exposure[i];
    if (base_events != nullptr) hosts[i].baseline_events = base_events[i];
    if (base_exposure != nullptr) hosts[i].baseline_exposure = base_exposure[i];
    hosts[i].missing = missing && (*missing)[i];
  }
  return hosts;
}

void bind_inputs(py::module_& module) {
  py::class_<MetricSpec>(module, "MetricSpec")
      .def(py::init([](std::string name, MetricKind kind, Direction worse, double min_effect) {
             return MetricSpec{std::move(name), kind, worse, min_effect};
           }),
           py::arg("name"), py::arg("kind"), py::arg("worse"), py::arg("min_effect") = 0.0)
      .def_readonly("name", &MetricSpec::name)
      .def_readonly("kind", &MetricSpec::kind)
      .def_readonly("worse", &MetricSpec::worse)
      .def_readonly("min_effect", &MetricSpec::min_effect);
  py::class_<HostData>(module, "HostData")
      .def(py::init([](double value, double events, double exposure, double baseline_value,
                       double baseline_events, double baseline_exposure, bool missing) {
             return HostData{missing,        value,           events,           exposure,
                             baseline_value, baseline_events, baseline_exposure};
           }),
           py::kw_only(), py::arg("value") = 0.0, py::arg("events") = 0.0, py::arg("exposure") = 0.0,
           py::arg("baseline_value") = 0.0, py::arg("baseline_events") = 0.0,
           py::arg("baseline_exposure") = 0.0, py::arg("missing") = false)
      .def_readonly("missing", &HostData::missing)
      .def_readonly("value", &HostData::value)
      .def_readonly("events", &HostData::events)
      .def_readonly("exposure", &HostData::exposure)
      .def_readonly("baseline_value", &HostData::baseline_value)
      .def_readonly("baseline_events", &HostData::baseline_events)
      .def_readonly("baseline_exposure", &HostData::baseline_exposure);
  py::class_<MetricLook>(module, "MetricLook")
      .def(py::init([](std::string metric, std::vector<HostData> canary, std::vector<HostData> control) {
             return MetricLook{std::move(metric), std::move(canary), std::move(control)};
           }),
           py::arg("metric"), py::arg("canary"), py::arg("control") = std::vector<HostData>{})
      .def_static(
          "continuous",
          [](std::string metric, const std::vector<double>& canary, const std::vector<double>& control,
             const Column& canary_baseline, const Column& control_baseline, const Flags& canary_missing,
             const Flags& control_missing) {
            return MetricLook{std::move(metric),
                              continuous_arm(canary, canary_baseline, canary_missing, "canary"),
                              continuous_arm(control, control_baseline, control_missing, "control")};
          },
          py::arg("metric"), py::arg("canary"), py::arg("control"), py::kw_only(),
          py::arg("canary_baseline") = py::none(), py::arg("control_baseline") = py::none(),
          py::arg("canary_missing") = py::none(), py::arg("control_missing") = py::none())
      .def_static(
          "count",
          [](std::string metric, const std::vector<double>& canary_events,
             const std::vector<double>& canary_exposure, const std::vector<double>& control_events,
             const std::vector<double>& control_exposure, const Column& canary_baseline_events,
             const Column& canary_baseline_exposure, const Column& control_baseline_events,
             const Column& control_baseline_exposure, const Flags& canary_missing,
             const Flags& control_missing) {
            return MetricLook{std::move(metric),
                              count_arm(canary_events, canary_exposure, canary_baseline_events,
                                        canary_baseline_exposure, canary_missing, "canary"),
                              count_arm(control_events, control_exposure, control_baseline_events,
                                        control_baseline_exposure, control_missing, "control")};
          },
          py::arg("metric"), py::arg("canary_events"), py::arg("canary_exposure"), py::arg("control_events"),
          py::arg("control_exposure"), py::kw_only(), py::arg("canary_baseline_events") = py::none(),
          py::arg("canary_baseline_exposure") = py::none(), py::arg("control_baseline_events") = py::none(),
          py::arg("control_baseline_exposure") = py::none(), py::arg("canary_missing") = py::none(),
          py::arg("control_missing") = py::none())
      .def_readonly("metric", &MetricLook::metric)
      .def_readonly("canary", &MetricLook::canary)
      .def_readonly("control", &MetricLook::control);
}

void bind_results(py::module_& module) {
  py::class_<MetricResult>(module, "MetricResult")
      .def_readonly("name", &MetricResult::name)
      .def_readonly("kind", &MetricResult::kind)
      .def_readonly("status", &MetricResult::status)
      .def_readonly("reason", &MetricResult::reason)
      .def_readonly("estimate", &MetricResult::estimate)
      .def_readonly("ci_low", &MetricResult::ci_low)
      .def_readonly("ci_high", &MetricResult::ci_high)
      .def_readonly("threshold", &MetricResult::threshold)
      .def_readonly("p_fixed", &MetricResult::p_fixed)
      .def_readonly("p_value", &MetricResult::p_value)
      .def_readonly("level", &MetricResult::level)
      .def_readonly("failed", &MetricResult::failed)
      .def_readonly("canary_hosts", &MetricResult::canary_hosts)
      .def_readonly("control_hosts", &MetricResult::control_hosts)
      .def_readonly("canary_missing", &MetricResult::canary_missing)
      .def_readonly("control_missing", &MetricResult::control_missing);
  py::class_<LookResult>(module, "LookResult")
      .def_readonly("look", &LookResult::look)
      .def_readonly("verdict", &LookResult::verdict)
      .def_readonly("failed_metric", &LookResult::failed_metric)
      .def_readonly("reason", &LookResult::reason)
      .def_readonly("metrics", &LookResult::metrics);
}

void bind_judge(py::module_& module) {
  const JudgeOptions defaults;
  py::class_<Judge>(module, "Judge")
      .def(py::init([](std::vector<MetricSpec> metrics, Design design, double alpha, int looks_in_window,
                       int min_hosts_per_arm, double max_missing_fraction, Sequential sequential,
                       double mixture_ratio) {
             JudgeOptions options;
             options.design = design;
             options.alpha = alpha;
             options.looks_in_window = looks_in_window;
             options.min_hosts_per_arm = min_hosts_per_arm;
             options.max_missing_fraction = max_missing_fraction;
             options.sequential = sequential;
             options.mixture_ratio = mixture_ratio;
             return std::make_unique<Judge>(std::move(metrics), options);
           }),
           py::arg("metrics"), py::kw_only(), py::arg("design") = defaults.design,
           py::arg("alpha") = defaults.alpha, py::arg("looks_in_window") = defaults.looks_in_window,
           py::arg("min_hosts_per_arm") = defaults.min_hosts_per_arm,
           py::arg("max_missing_fraction") = defaults.max_missing_fraction,
           py::arg("sequential") = defaults.sequential, py::arg("mixture_ratio") = defaults.mixture_ratio)
      .def("look", &Judge::look, py::arg("data"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("looks", &Judge::looks)
      .def_property_readonly("verdict", &Judge::verdict)
      .def_property_readonly("metrics", &Judge::metrics)
      .def_property_readonly("design", [](const Judge& judge) { return judge.options().design; })
      .def_property_readonly("sequential", [](const Judge& judge) { return judge.options().sequential; })
      .def_property_readonly("alpha", [](const Judge& judge) { return judge.options().alpha; })
      .def_property_readonly("looks_in_window",
                             [](const Judge& judge) { return judge.options().looks_in_window; })
      .def_property_readonly("min_hosts_per_arm",
                             [](const Judge& judge) { return judge.options().min_hosts_per_arm; });
}

}  // namespace

void bind_canary(py::module_& module) {
  bind_enums(module);
  bind_tests(module);
  bind_inputs(module);
  bind_results(module);
  bind_judge(module);
}

}  // namespace cd::bindings
