// The shard engine's file formats: pytest-split duration files in, the plan
// as JSON out. Apart from the scheduler's files so the scheduler's policy does not mix
// with parsing.
#include <fmt/format.h>
#include <simdjson.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <iterator>
#include <string_view>

#include "cd/error.hpp"
#include "cd/shard.hpp"

namespace cd::shard {

namespace {

[[noreturn]] void refuse(const std::string& path, std::string_view why) {
  throw InvalidInput(fmt::format("{}: {}", path, why));
}

// The DOM parser (not On-Demand): it picks the best SIMD kernel at run time
// and checks the whole document, UTF-8 included, before we read a value.
simdjson::dom::object parse_object(simdjson::dom::parser& parser, const std::string& path) {
  simdjson::dom::element document;
  if (auto error = parser.load(path).get(document)) {
    if (error == simdjson::IO_ERROR) {
      throw InvalidInput(fmt::format("cannot read duration file {}: {}", path, std::strerror(errno)));
    }
    refuse(path, fmt::format("is not valid JSON ({})", simdjson::error_message(error)));
  }
  simdjson::dom::object object;
  if (document.get_object().get(object)) refuse(path, "must hold a JSON object of test id to seconds");
  return object;
}

// A test id as a message shows it: control characters escaped, so that an
// id with a newline cannot split the one-line error it appears in.
std::string shown(std::string_view test_id) {
  std::string out;
  for (char c : test_id) {
    auto byte = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (byte < 0x20 || byte == 0x7f) {
      out += fmt::format("\\x{:02x}", byte);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

double seconds_of(simdjson::dom::element value, const std::string& path, std::string_view test_id) {
  double seconds = 0.0;
  if (!value.is_number() || value.get_double().get(seconds)) {
    refuse(path,
           fmt::format("test '{}' has a non-numeric duration {}", shown(test_id), simdjson::minify(value)));
  }
  if (!(seconds >= 0.0 && seconds <= kMaxTestDurationSeconds)) {
    refuse(path, fmt::format("test '{}' has duration {}; durations are seconds between 0 and {}",
                             shown(test_id), simdjson::minify(value), kMaxTestDurationSeconds));
  }
  return seconds;
}

// JSON string escaping: quotes, backslashes and control characters. Test ids
// are arbitrary text; the output must stay one valid JSON document.
void append_json_string(fmt::memory_buffer& out, std::string_view text) {
  out.push_back('"');
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (byte < 0x20) {
      fmt::format_to(std::back_inserter(out), "\\u{:04x}", byte);
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
}

}  // namespace

DurationFile read_duration_file(const std::string& path) {
  simdjson::dom::parser parser;
  simdjson::dom::object object = parse_object(parser, path);
  DurationFile file{path, {}, {}};
  file.ids.reserve(object.size());
  file.durations.reserve(object.size());
  for (auto [key, value] : object) {
    std::string id(key);
    double seconds = seconds_of(value, path, id);
    auto [entry, inserted] = file.durations.insert_or_assign(id, seconds);
    if (inserted) file.ids.push_back(std::move(id));
  }
  return file;
}

std::vector<DurationMap> durations_of(const std::vector<DurationFile>& files) {
  std::vector<DurationMap> history;
  history.reserve(files.size());
  for (const auto& file : files) history.push_back(file.durations);
  return history;
}

std::string plan_to_json(const Plan& plan) {
  fmt::memory_buffer out;
  fmt::format_to(std::back_inserter(out), "{{\"shards\": [");
  for (std::size_t index = 0; index < plan.shards.size(); ++index) {
    const Shard& shard = plan.shards[index];
    fmt::format_to(std::back_inserter(out), "{}\n {{\"tests\": [", index ? "," : "");
    for (std::size_t test = 0; test < shard.tests.size(); ++test) {
      if (test) out.push_back(',');
      append_json_string(out, shard.tests[test]);
    }
    fmt::format_to(std::back_inserter(out), "], \"estimate_s\": {}}}", shard.estimate_s);
  }
  fmt::format_to(std::back_inserter(out), "\n], \"makespan_s\": {}, \"lower_bound_s\": {}}}\n",
                 plan.makespan_s(), plan.lower_bound_s);
  return fmt::to_string(out);
}

}  // namespace cd::shard
