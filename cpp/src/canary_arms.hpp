// One arm (canary or control) of a canary look, its hosts checked and reduced
// to what the judge's tests need. Internal to cpp/src; the public interface
// is cd/canary.hpp.
#pragma once

#include <string>
#include <vector>

#include "cd/canary.hpp"

namespace cd::canary {

// One arm's hosts reduced to what the tests need.
struct Arm {
  int hosts = 0;                 // given
  int missing = 0;               // marked missing, or (counts) without any traffic
  std::vector<double> values;    // Continuous: one per used host
  std::vector<double> events;    // Count: one per used host
  std::vector<double> exposure;  // Count: one per used host (expected events with a baseline)
  double baseline_sum = 0.0;     // Continuous: sum of used hosts' baselines
  // Count, BeforeAfter: the used hosts' own totals after and before the flip.
  double raw_exposure = 0.0;
  double baseline_events = 0.0;
  double baseline_exposure = 0.0;
  int used() const { return hosts - missing; }
};

// The arm's hosts of `spec`'s metric; throws InvalidInput naming the metric,
// arm, host and field for a value that is not finite (or, for counts, negative).
Arm collect(const std::vector<HostData>& hosts, const MetricSpec& spec, const char* arm_name, Design design);

// Empty when the arm is usable, else why not.
std::string arm_problem(const Arm& arm, const char* name, const JudgeOptions& options);

}  // namespace cd::canary
