// Reducing an arm's hosts to values, events and exposures: every field
// checked, missing hosts counted, baselines applied as the design asks.
#include "canary_arms.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "cd/canary.hpp"
#include "cd/error.hpp"

namespace cd::canary {

namespace {

// Added to a host's baseline events before its rate is used as an expected
// count, so that a host quiet before the flip still has a comparable rate
// (the Jeffreys prior's half event).
constexpr double kBaselinePriorEvents = 0.5;

// Where a value came from, for error messages: "metric 'x', canary host 3".
struct Where {
  const std::string& metric;
  const char* arm;
  std::size_t host;
  std::string operator()(const char* field) const {
    return fmt::format("metric '{}', {} host {}: {}", metric, arm, host, field);
  }
};

// Kept out of line: the checks below run for every host and every field, and
// only the rare failure needs to build a message.
[[noreturn, gnu::noinline]] void bad_value(double value, const Where& where, const char* field,
                                           const char* rule) {
  throw InvalidInput(fmt::format("{} is {} (must be {})", where(field), value, rule));
}

inline double checked(double value, const Where& where, const char* field) {
  if (!std::isfinite(value)) bad_value(value, where, field, "finite");
  return value;
}

inline double checked_count(double value, const Where& where, const char* field) {
  if (!(value >= 0.0 && value <= std::numeric_limits<double>::max()))
    bad_value(value, where, field, "finite and >= 0");
  return value;
}

void add_continuous(const HostData& host, const Where& where, Design design, Arm& arm) {
  const double value = checked(host.value, where, "value");
  if (design == Design::SameWindow) {
    arm.values.push_back(value);
    return;
  }
  const double baseline = checked(host.baseline_value, where, "baseline_value");
  arm.values.push_back(value - baseline);
  arm.baseline_sum += baseline;
}

// Counts: in SameWindow the exposure is the host's own (requests,
// host-seconds); with a baseline it becomes the events the host would have
// had at its own rate before the flip, so fixed per-host rate differences
// cancel. A host without traffic tells nothing and counts as missing.
void add_count(const HostData& host, const Where& where, Design design, Arm& arm) {
  const double events = checked_count(host.events, where, "events");
  const double exposure = checked_count(host.exposure, where, "exposure");
  if (events > 0.0 && exposure <= 0.0)
    throw InvalidInput(fmt::format("{} {} events with exposure 0", where("events"), events));
  double weight = exposure;
  if (design != Design::SameWindow) {
    const double baseline_events = checked_count(host.baseline_events, where, "baseline_events");
    const double baseline_exposure = checked_count(host.baseline_exposure, where, "baseline_exposure");
    if (baseline_events > 0.0 && baseline_exposure <= 0.0)
      throw InvalidInput(
          fmt::format("{} {} events with exposure 0", where("baseline_events"), baseline_events));
    weight = baseline_exposure > 0.0 ? exposure * (baseline_events + kBaselinePriorEvents) / baseline_exposure
                                     : 0.0;
    if (weight > 0.0) {
      arm.baseline_events += baseline_events;
      arm.baseline_exposure += baseline_exposure;
    }
  }
  if (weight <= 0.0) {
    ++arm.missing;
    return;
  }
  arm.raw_exposure += exposure;
  arm.events.push_back(events);
  arm.exposure.push_back(weight);
}

}  // namespace

Arm collect(const std::vector<HostData>& hosts, const MetricSpec& spec, const char* arm_name, Design design) {
  Arm arm;
  arm.hosts = static_cast<int>(hosts.size());
  (spec.kind == MetricKind::Continuous ? arm.values : arm.events).reserve(hosts.size());
  if (spec.kind == MetricKind::Count) arm.exposure.reserve(hosts.size());
  for (std::size_t i = 0; i < hosts.size(); ++i) {
    if (hosts[i].missing) {
      ++arm.missing;
      continue;
    }
    Where where{spec.name, arm_name, i};
    if (spec.kind == MetricKind::Continuous) {
      add_continuous(hosts[i], where, design, arm);
    } else {
      add_count(hosts[i], where, design, arm);
    }
  }
  return arm;
}

std::string arm_problem(const Arm& arm, const char* name, const JudgeOptions& options) {
  if (arm.hosts > 0 && static_cast<double>(arm.missing) > options.max_missing_fraction * arm.hosts)
    return fmt::format("{}: {} of {} hosts missing or without traffic (at most {:.0f}% allowed)", name,
                       arm.missing, arm.hosts, 100.0 * options.max_missing_fraction);
  if (arm.used() < options.min_hosts_per_arm)
    return fmt::format("{}: {} hosts with data (need {})", name, arm.used(), options.min_hosts_per_arm);
  return {};
}

}  // namespace cd::canary
