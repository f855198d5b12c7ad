// Errors shared by every engine. The binding layer maps each class to a
// Python exception of the same name, so callers can tell bad input (their
// fault, fix the input) from a failure of the engine's environment.
#pragma once

#include <stdexcept>
#include <string>

namespace cd {

// Base class of everything the core throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The caller handed us something malformed: a negative duration, zero shards,
// an unsafe host name. The message names the offending value.
class InvalidInput : public Error {
 public:
  using Error::Error;
};

// The caller used an object out of order: a report for a batch that was never
// handed out, a rollback with nothing to roll back to.
class InvalidState : public Error {
 public:
  using Error::Error;
};

}  // namespace cd
