// The private extension module buildbot_steps._core: conversion and exception
// translation only; behaviour lives in the C++ core.
#include <pybind11/pybind11.h>

#include "bindings.hpp"
#include "cd/error.hpp"

namespace py = pybind11;

namespace {

// Exception classes live as long as the interpreter; holding them as borrowed
// pointers avoids destroying Python objects after it has shut down.
PyObject* cd_error = nullptr;
PyObject* invalid_input_error = nullptr;
PyObject* invalid_state_error = nullptr;

PyObject* new_exception(py::module_& module, const char* name, py::handle bases) {
  std::string qualified = std::string("buildbot_steps._core.") + name;
  PyObject* type = PyErr_NewException(qualified.c_str(), bases.ptr(), nullptr);
  if (type == nullptr) throw py::error_already_set();
  module.add_object(name, py::handle(type));  // the module keeps a reference
  return type;
}

}  // namespace

PYBIND11_MODULE(_core, module) {
  module.doc() = "buildbot-cd C++ core: shard scheduler, release fan-out, canary judge";

  // Our own exception classes, so that callers can tell bad input apart from
  // other errors; InvalidInputError is also a ValueError.
  cd_error = new_exception(module, "CdError", PyExc_RuntimeError);
  invalid_input_error = new_exception(module, "InvalidInputError",
                                      py::make_tuple(py::handle(cd_error), py::handle(PyExc_ValueError)));
  invalid_state_error = new_exception(module, "InvalidStateError", cd_error);
  py::register_exception_translator([](std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const cd::InvalidInput& e) {
      PyErr_SetString(invalid_input_error, e.what());
    } catch (const cd::InvalidState& e) {
      PyErr_SetString(invalid_state_error, e.what());
    } catch (const cd::Error& e) {
      PyErr_SetString(cd_error, e.what());
    }
  });

  cd::bindings::bind_shard(module);
  cd::bindings::bind_fanout(module);
  cd::bindings::bind_canary(module);
}
