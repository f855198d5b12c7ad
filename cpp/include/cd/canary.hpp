// The canary judge: after a release goes live on a few canary hosts, compare
// their metrics with control hosts at every look and decide FAIL / PASS /
// INCONCLUSIVE / CONTINUE, keeping the promised false-rollback rate over all
// metrics and all looks (DESIGN.md section 5).
//
// Data shapes, in the order a caller uses them:
//   metrics : [{name, kind, worse direction, min_effect}]   fixed for a deploy
//   look    : [{metric, canary: [HostData], control: [HostData]}]
//             one aggregate per host over the window so far (not time points)
//   result  : {verdict, failed metric, per metric: estimate, interval,
//              p valid over all looks, Holm level, hosts used and missing}
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace cd::canary {

// ------------------------------------------------------------------- enums

// Which way a metric gets worse: errors and latency increase, throughput
// and success counts decrease.
enum class Direction { Increase, Decrease };

// Continuous metrics (latency, load) are compared with Welch's t on host
// values; counts (errors, crashes) with an exact conditional binomial test of
// their rate: sparse counts are not Welch material.
enum class MetricKind { Continuous, Count };

// SameWindow: canary vs control over the same window (the default: time is
// the biggest source of change). BeforeAfter: the canary hosts against their
// own baseline from before the flip. DiffInDiff: each host's change against
// its own baseline, canary vs control (removes fixed per-host levels and the
// fleet-wide trend).
enum class Design { SameWindow, BeforeAfter, DiffInDiff };

enum class Verdict {
  Continue,      // not decided yet: look again
  Pass,          // window over, every arm had enough data, nothing worse
  Fail,          // a metric is significantly worse than allowed: roll back
  Inconclusive,  // window over without enough data to pass
};

// How the error budget of one metric is shared over the looks of the window.
// GroupSequential (the default): Lan-DeMets alpha spending with the
// Pocock-type function alpha * ln(1 + (e - 1) t), t = look / looks_in_window
// (early looks get a fair share, so a clear regression stops early), each
// look's boundary chosen so that the probability of crossing by that look
// under the null is exactly the budget spent so far, for the joint normal of
// the look statistics (corr(Z_i, Z_j) = sqrt(i / j): cumulative data, equal
// information per look); p_n = the smallest budget whose boundaries were
// crossed by look n. The fixed-look p (Student's t or the binomial) enters as
// its normal z. If a look adds less information than that (a host's own level
// stays in every look), looks are more correlated and the boundary only
// conservative (Slepian). Windows longer than kMaxGroupSequentialLooks use
// Spending (the boundary's cost grows as looks squared).
// Spending: look k of N may spend alpha * 2k / (N (N + 1)) (later looks see
// more data, so they get more), a Bonferroni split that is valid whatever
// the correlation between looks and needs only each look's own p to be
// exact; p_n = min over k <= n of p_k / share_k. Mixture: the mixture SPRT
// (normal mixture, p_n = min(p_{n-1}, 1/Lambda_n)), valid for any number of
// looks, but paying for that: over a 12-look window its boundary is higher
// than the spending one at every look (bench/judge_bench.py measures all three).
enum class Sequential { Spending, Mixture, GroupSequential };

// Longest window the group-sequential boundary is computed for (a monitor
// phase of 10 minutes at 5 s looks; its table takes about a second once per
// process); longer windows fall back to Spending.
inline constexpr int kMaxGroupSequentialLooks = 120;

const char* to_string(Direction direction);
const char* to_string(MetricKind kind);
const char* to_string(Design design);
const char* to_string(Verdict verdict);
const char* to_string(Sequential sequential);

// --------------------------------------------------------------- two tests

// Sufficient statistics of one arm: count, mean, sample standard deviation.
struct Summary {
  double n = 0.0;
  double mean = 0.0;
  double sd = 0.0;
};

// Throws InvalidInput for an empty sample or a non-finite value.
Summary summarize(const std::vector<double>& values);

// Welch's unequal-variance t on difference = canary - control.
// `margin` is the difference allowed in the worse direction (>= 0): the null
// hypothesis is "canary - control <= margin" for Increase, ">= -margin" for
// Decrease. `p_value` is one-sided in the worse direction; the interval is the
// two-sided `confidence` interval of the difference.
struct TTest {
  double statistic = 0.0;  // (difference -/+ margin) / std_error
  double df = 0.0;         // Welch-Satterthwaite, fractional
  double p_value = 1.0;
  double difference = 0.0;
  double std_error = 0.0;
  double ci_low = 0.0;
  double ci_high = 0.0;
};

// Each arm needs n >= 2. Throws InvalidInput otherwise or for a bad value.
TTest welch_from_summary(const Summary& canary, const Summary& control, Direction worse, double margin = 0.0,
                         double confidence = 0.95);
TTest welch_test(const std::vector<double>& canary, const std::vector<double>& control, Direction worse,
                 double margin = 0.0, double confidence = 0.95);

// Exact conditional test of the rate ratio (canary rate / control rate):
// given k = k_canary + k_control, k_canary ~ Binomial(k, p0) with
// p0 = e_canary*R0 / (e_canary*R0 + e_control), R0 the allowed ratio.
// `dispersion` >= 1 divides both counts (quasi-binomial: host-to-host rate
// differences make counts vary more than Poisson); counts may then be
// fractional, which ibeta handles exactly. One-sided in the worse direction.
struct RateTest {
  double ratio = 0.0;       // observed canary rate / control rate
  double null_share = 0.0;  // p0
  double p_value = 1.0;
  double ci_low = 0.0;  // Clopper-Pearson on the share, as a ratio
  double ci_high = 0.0;
};

// Throws InvalidInput for negative or non-finite counts or exposures, a zero
// exposure, a non-positive allowed ratio or a dispersion below 1.
RateTest rate_ratio_test(double canary_events, double canary_exposure, double control_events,
                         double control_exposure, Direction worse, double allowed_ratio = 1.0,
                         double dispersion = 1.0, double confidence = 0.95);

// ------------------------------------------------- group-sequential boundary

// One-sided group-sequential boundaries in the z scale for looks at
// cumulative information `information` (increasing, > 0; only the ratios
// matter), by the recursive numerical integration of Armitage, McPherson and
// Rowe (1969) as laid out in Jennison & Turnbull, "Group Sequential Methods
// with Applications to Clinical Trials" (2000), chapter 19.

// P(Z_j >= boundaries[j] for some j <= k) under the null, for each look k.
// A boundary may be +infinity (nothing spent at that look).
std::vector<double> crossing_probabilities(const std::vector<double>& information,
                                           const std::vector<double>& boundaries);

// The boundaries whose crossing probabilities are `cumulative_alpha`
// (non-decreasing, in [0, 1)); a look that spends nothing gets +infinity.
// Throws InvalidInput for mismatched sizes or bad values.
std::vector<double> spending_boundaries(const std::vector<double>& information,
                                        const std::vector<double>& cumulative_alpha);

// Lan & DeMets (1983) Pocock-type spending: alpha * ln(1 + (e - 1) t).
double pocock_spending(double alpha, double information_fraction);

// ------------------------------------------------------------------- judge

struct MetricSpec {
  std::string name;
  MetricKind kind = MetricKind::Continuous;
  Direction worse = Direction::Increase;
  // Relative change worth acting on (0.2 = 20% worse; Kayenta's allowed
  // increase): so that a trivial shift at large n does not roll back.
  double min_effect = 0.0;
};

// One host's aggregate for one metric over the window so far. A host whose
// data did not arrive is marked `missing`: it is left out and counted, never
// taken as a good sample. Any value the design needs that is NaN or infinite
// on a host not marked missing is an error, not a missing host.
struct HostData {
  bool missing = false;
  double value = 0.0;     // Continuous: e.g. the host's mean latency
  double events = 0.0;    // Count: e.g. errors
  double exposure = 0.0;  // Count: e.g. requests or host-seconds
  // The same host before the flip (BeforeAfter and DiffInDiff only).
  double baseline_value = 0.0;
  double baseline_events = 0.0;
  double baseline_exposure = 0.0;
};

struct MetricLook {
  std::string metric;
  std::vector<HostData> canary;
  std::vector<HostData> control;  // may be empty for BeforeAfter only
};

// Default overall budget: false rollbacks per deploy over all metrics and
// looks. A rollback costs a deploy; at fifty deploys a day 1% is one
// needless rollback every two days.
inline constexpr double kDefaultAlpha = 0.01;

// Below this many hosts per arm a variance estimated from the hosts is too
// uncertain to decide on (the mixture SPRT's plug-in variance gave 6.5% at a
// promised 5% from n = 3, DESIGN.md); 5 is the smallest canary for which
// bench/judge_bench.py shows the budget holding.
inline constexpr int kDefaultMinHostsPerArm = 5;

// More missing hosts than this in an arm and the rest may not represent it
// (the missing ones may be the sick ones).
inline constexpr double kDefaultMaxMissingFraction = 0.2;

// Sequential::Mixture only: the mixture variance tau^2 as a multiple of the
// estimate's variance at the last look of the window. The boundary (1+r)/r * (2 ln(1/alpha) + ln(1+r))
// is lowest near r = 10..20 for alpha/metrics ~ 0.003, and flat around it
// (Howard et al. 2021 give 7.9 at alpha 0.05).
inline constexpr double kDefaultMixtureRatio = 12.0;

struct JudgeOptions {
  Design design = Design::SameWindow;
  double alpha = kDefaultAlpha;
  // Looks in the canary window (60 s at 5 s intervals); PASS or
  // INCONCLUSIVE is decided at the last one.
  int looks_in_window = 12;
  int min_hosts_per_arm = kDefaultMinHostsPerArm;
  double max_missing_fraction = kDefaultMaxMissingFraction;
  Sequential sequential = Sequential::GroupSequential;
  double mixture_ratio = kDefaultMixtureRatio;
};

enum class MetricStatus { Tested, InsufficientData };
const char* to_string(MetricStatus status);

struct MetricResult {
  std::string name;
  MetricKind kind = MetricKind::Continuous;
  MetricStatus status = MetricStatus::InsufficientData;
  std::string reason;  // why the data was insufficient
  // Continuous: canary - control difference (per design); Count: rate ratio
  // canary / control. The interval is this look's two-sided (1 - alpha) one.
  double estimate = 0.0;
  double ci_low = 0.0;
  double ci_high = 0.0;
  // What the estimate must exceed to matter: the allowed difference
  // (Continuous, signed in the worse direction) or the allowed ratio (Count).
  double threshold = 0.0;
  double p_fixed = 1.0;  // this look alone, one-sided (not valid across looks)
  double p_value = 1.0;  // valid over every look of the window (see Sequential)
  double level = 0.0;    // Holm level p_value was compared with at this look
  bool failed = false;
  int canary_hosts = 0;  // hosts used
  int control_hosts = 0;
  int canary_missing = 0;
  int control_missing = 0;
};

struct LookResult {
  int look = 0;  // 1-based
  Verdict verdict = Verdict::Continue;
  std::string failed_metric;  // the most significant failing metric
  std::string reason;
  std::vector<MetricResult> metrics;  // in the order of the specs
};

// Stateful across the looks of one deploy. Not thread-safe: one deploy, one
// caller at a time.
class Judge {
 public:
  // Throws InvalidInput for no metrics, a duplicate or empty name, a
  // min_effect outside [0, 1) (or not finite), or bad options.
  Judge(std::vector<MetricSpec> metrics, JudgeOptions options = {});
  ~Judge();
  Judge(Judge&&) noexcept;
  Judge& operator=(Judge&&) noexcept;
  Judge(const Judge&) = delete;
  Judge& operator=(const Judge&) = delete;

  // One look: every metric's aggregates over the window so far. A metric
  // absent from the look counts as having no data. Throws InvalidInput for
  // an unknown or repeated metric, an empty arm, or a bad value (naming the
  // metric, the arm and the host index); InvalidState after a final verdict.
  LookResult look(const std::vector<MetricLook>& data);

  int looks() const;
  Verdict verdict() const;  // Continue until a final one
  const std::vector<MetricSpec>& metrics() const;
  const JudgeOptions& options() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace cd::canary
