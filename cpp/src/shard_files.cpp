// The shard engine's file formats: pytest-split duration files in, the plan
// as JSON out. Apart from the scheduler's files so the scheduler's policy does not mix
// with parsing.
#include <fmt/format.h>
#include <simdjson.h>
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <memory>
#include <new>
#include <string_view>
#include <system_error>
#include <vector>

#include "cd/error.hpp"
#include "cd/shard.hpp"
#include "shard_history.hpp"

namespace cd::shard {

namespace {

[[noreturn]] void refuse(const std::string& path, std::string_view why) {
  throw InvalidInput(fmt::format("{}: {}", path, why));
}

[[noreturn]] void cannot_read(const std::string& path) {
  throw InvalidInput(fmt::format("cannot read duration file {}: {}", path, std::strerror(errno)));
}

// Every file is read into one buffer and parsed by one parser, both sized
// for the largest file first: grown file by file they would map fresh memory
// for each (a page fault every 4 KiB, a third of the reading time at a
// million tests).
class JsonReader {
 public:
  explicit JsonReader(const std::vector<std::string>& paths) {
    std::size_t largest = 0;
    for (const auto& path : paths) {
      std::error_code error;  // an unreadable file is reported when it is read
      const auto size = std::filesystem::file_size(path, error);
      if (!error) largest = std::max<std::size_t>(largest, size);
    }
    text_.resize(largest + simdjson::SIMDJSON_PADDING);
    if (parser_.allocate(largest)) throw std::bad_alloc();
  }

  // The DOM parser (not On-Demand): it picks the best SIMD kernel at run time
  // and checks the whole document, UTF-8 included, before we read a value.
  // Valid until the next call.
  simdjson::dom::object parse_object(const std::string& path) {
    const std::size_t length = read(path);
    simdjson::dom::element document;
    if (auto error = parser_.parse(text_.data(), length, false).get(document)) {
      refuse(path, fmt::format("is not valid JSON ({})", simdjson::error_message(error)));
    }
    simdjson::dom::object object;
    if (document.get_object().get(object)) refuse(path, "must hold a JSON object of test id to seconds");
    return object;
  }

 private:
  std::size_t read(const std::string& path) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
    struct stat status {};
    if (!file || fstat(fileno(file.get()), &status) != 0) cannot_read(path);
    // A directory opens too (its size then reads as LONG_MAX), a pipe has none.
    if (!S_ISREG(status.st_mode)) {
      throw InvalidInput(fmt::format("cannot read duration file {}: not a regular file", path));
    }
    const auto size = static_cast<std::size_t>(status.st_size);
    if (text_.size() < size + simdjson::SIMDJSON_PADDING) text_.resize(size + simdjson::SIMDJSON_PADDING);
    if (std::fread(text_.data(), 1, size, file.get()) != size) cannot_read(path);
    return size;
  }

  std::vector<char> text_;
  simdjson::dom::parser parser_;
};

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

DurationHistory DurationHistory::read(const std::vector<std::string>& paths) {
  if (paths.empty()) throw InvalidInput("no history files given: pass at least one duration file");
  auto table = std::make_unique<Table>();
  JsonReader reader(paths);
  for (const auto& path : paths) {
    simdjson::dom::object object = reader.parse_object(path);
    table->begin_run(object.size());
    for (auto [key, value] : object) table->add(key, seconds_of(value, path, key));
  }
  table->finish();
  return DurationHistory(std::move(table));
}

DurationFile read_duration_file(const std::string& path) {
  const DurationHistory history = DurationHistory::read({path});
  DurationFile file{path, {}, {}};
  const auto& tests = history.tests_of(0);
  file.ids.reserve(tests.size());
  file.durations.reserve(tests.size());
  for (auto test : tests) {
    file.ids.emplace_back(history.id(test));
    file.durations.emplace(file.ids.back(), *history.seconds(0, test));
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
