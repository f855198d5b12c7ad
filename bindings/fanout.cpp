// Bindings of the release fan-out engine: inputs are plain attribute objects
// (constructible empty or by keyword), statuses travel as strings, results
// are read-only. Fanout.run releases the GIL for the whole run and takes it
// back only inside the progress callback.
#include "cd/fanout.hpp"

#include <Python.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"

namespace py = pybind11;

namespace cd::bindings {

namespace {

using namespace cd::fanout;

// Output tails are cut at a byte count, possibly inside a UTF-8 sequence, and
// commands may print anything: decode leniently rather than raise.
py::str lenient_text(const std::string& bytes) {
  PyObject* text = PyUnicode_DecodeUTF8(bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "replace");
  if (text == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(text);
}

void bind_inputs(py::module_& module) {
  py::class_<Command>(module, "Command")
      .def(py::init([](std::vector<std::string> argv, std::string stdin_data, bool parse_rsync_stats) {
             return Command{std::move(argv), std::move(stdin_data), parse_rsync_stats};
           }),
           py::arg("argv") = std::vector<std::string>{}, py::arg("stdin_data") = std::string{},
           py::arg("parse_rsync_stats") = false)
      .def_readwrite("argv", &Command::argv)
      // bytes out, str or bytes in: stdin may be any data.
      .def_property(
          "stdin_data", [](const Command& c) { return py::bytes(c.stdin_data); },
          [](Command& c, std::string data) { c.stdin_data = std::move(data); })
      .def_readwrite("parse_rsync_stats", &Command::parse_rsync_stats)
      .def("__repr__", [](const Command& c) {
        return "Command(" + py::repr(py::cast(c.argv)).cast<std::string>() + ")";
      });

  py::class_<HostJob>(module, "HostJob")
      .def(py::init([](std::string host, std::vector<Command> steps) {
             return HostJob{std::move(host), std::move(steps)};
           }),
           py::arg("host") = std::string{}, py::arg("steps") = std::vector<Command>{})
      .def_readwrite("host", &HostJob::host)
      .def_readwrite("steps", &HostJob::steps)
      .def("__repr__", [](const HostJob& j) {
        return "HostJob(" + j.host + ", " + std::to_string(j.steps.size()) + " steps)";
      });

  const FanoutOptions defaults;
  py::class_<FanoutOptions>(module, "FanoutOptions")
      .def(py::init([](int concurrency, double host_timeout_s, int max_retries, double retry_backoff_s,
                       std::vector<int> transient_exit_codes, double max_fail_fraction,
                       std::size_t output_tail_bytes) {
             return FanoutOptions{concurrency,
                                  host_timeout_s,
                                  max_retries,
                                  retry_backoff_s,
                                  std::move(transient_exit_codes),
                                  max_fail_fraction,
                                  output_tail_bytes};
           }),
           py::arg("concurrency") = defaults.concurrency, py::arg("host_timeout_s") = defaults.host_timeout_s,
           py::arg("max_retries") = defaults.max_retries,
           py::arg("retry_backoff_s") = defaults.retry_backoff_s,
           py::arg("transient_exit_codes") = defaults.transient_exit_codes,
           py::arg("max_fail_fraction") = defaults.max_fail_fraction,
           py::arg("output_tail_bytes") = defaults.output_tail_bytes)
      .def_readwrite("concurrency", &FanoutOptions::concurrency)
      .def_readwrite("host_timeout_s", &FanoutOptions::host_timeout_s)
      .def_readwrite("max_retries", &FanoutOptions::max_retries)
      .def_readwrite("retry_backoff_s", &FanoutOptions::retry_backoff_s)
      .def_readwrite("transient_exit_codes", &FanoutOptions::transient_exit_codes)
      .def_readwrite("max_fail_fraction", &FanoutOptions::max_fail_fraction)
      .def_readwrite("output_tail_bytes", &FanoutOptions::output_tail_bytes);

  module.attr("DEFAULT_TRANSIENT_EXIT_CODES") = py::tuple(py::cast(kDefaultTransientExitCodes));
}

void bind_outputs(py::module_& module) {
  py::class_<HostResult>(module, "HostResult")
      .def_readonly("host", &HostResult::host)
      .def_property_readonly("status", [](const HostResult& r) { return to_string(r.status); })
      .def_readonly("exit_code", &HostResult::exit_code)
      .def_readonly("attempts", &HostResult::attempts)
      .def_readonly("failed_step", &HostResult::failed_step)
      .def_property_readonly("stdout_tail", [](const HostResult& r) { return lenient_text(r.stdout_tail); })
      .def_property_readonly("stderr_tail", [](const HostResult& r) { return lenient_text(r.stderr_tail); })
      .def_readonly("duration_s", &HostResult::duration_s)
      .def_readonly("bytes_sent", &HostResult::bytes_sent)
      .def("__repr__", [](const HostResult& r) {
        return "HostResult(" + r.host + ", " + to_string(r.status) +
               ", exit_code=" + std::to_string(r.exit_code) + ", attempts=" + std::to_string(r.attempts) +
               ")";
      });

  py::class_<Progress>(module, "Progress")
      .def_readonly("total", &Progress::total)
      .def_readonly("done", &Progress::done)
      .def_readonly("failed", &Progress::failed)
      .def_readonly("running", &Progress::running)
      .def("__repr__", [](const Progress& p) {
        return "Progress(done=" + std::to_string(p.done) + "/" + std::to_string(p.total) +
               ", failed=" + std::to_string(p.failed) + ", running=" + std::to_string(p.running) + ")";
      });
}

std::vector<HostResult> run_fanout(Fanout& fanout, const std::vector<HostJob>& jobs,
                                   const py::object& progress) {
  ProgressCallback callback;
  if (!progress.is_none()) {
    // Copies, not references: Python may keep the objects after the call.
    callback = [progress](const HostResult& result, const Progress& counts) {
      py::gil_scoped_acquire gil;
      progress(HostResult(result), Progress(counts));
    };
  }
  // `callback` holds a Python reference, so it is declared before `release`
  // and destroyed after the GIL is back.
  py::gil_scoped_release release;
  return fanout.run(jobs, callback);
}

void bind_engine(py::module_& module) {
  // Exposed for property tests of the parser of untrusted rsync output.
  module.def("parse_rsync_bytes_sent", &parse_rsync_bytes_sent, py::arg("rsync_output"),
             "The number after the last 'Total bytes sent:' in rsync --stats output (bytes or str), "
             "or 0 when there is none.");
  py::class_<Fanout>(module, "Fanout")
      .def(py::init<FanoutOptions>(), py::arg("options") = FanoutOptions{})
      .def("run", &run_fanout, py::arg("jobs"), py::arg("progress") = py::none(),
           "Run every job; returns a HostResult per job, in order. progress(result, counts) is called "
           "from the engine's thread (with the GIL) after each host; an exception in it cancels the run "
           "and is re-raised.")
      .def("cancel", &Fanout::cancel, py::call_guard<py::gil_scoped_release>(),
           "Thread-safe: kill running commands, cancel hosts not started; run() returns promptly.");
}

}  // namespace

void bind_fanout(py::module_& module) {
  bind_inputs(module);
  bind_outputs(module);
  bind_engine(module);
}

}  // namespace cd::bindings
