// Short ways to write the jobs a fan-out test hands to Fanout: shared by the
// policy tests (fanout_test.cpp) and the real launcher's (fanout_process_test.cpp).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "cd/fanout.hpp"

namespace cd::fanout::testing_support {

inline Command cmd(std::vector<std::string> argv, std::string stdin_data = "") {
  Command command;
  command.argv = std::move(argv);
  command.stdin_data = std::move(stdin_data);
  return command;
}

inline HostJob job(std::string host, std::vector<Command> steps) {
  return HostJob{std::move(host), std::move(steps)};
}

}  // namespace cd::fanout::testing_support
