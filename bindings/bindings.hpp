// Each engine's bindings live in their own file and register themselves on
// the one module through these functions.
#pragma once

#include <pybind11/pybind11.h>

namespace cd::bindings {

void bind_shard(pybind11::module_& module);
void bind_fanout(pybind11::module_& module);
void bind_canary(pybind11::module_& module);

}  // namespace cd::bindings
