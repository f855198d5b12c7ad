// The canary judge: per metric, the fixed-look test on the arms, made valid
// over repeated looks (alpha spending or a normal mixture), Holm's correction
// across metrics, and the verdict.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include "canary_arms.hpp"
#include "canary_boundary.hpp"
#include "canary_stats.hpp"
#include "cd/canary.hpp"
#include "cd/error.hpp"

namespace cd::canary {

const char* to_string(Direction direction) {
  switch (direction) {
    case Direction::Increase:
      return "increase";
    case Direction::Decrease:
      return "decrease";
  }
  return "unknown";
}

const char* to_string(MetricKind kind) {
  switch (kind) {
    case MetricKind::Continuous:
      return "continuous";
    case MetricKind::Count:
      return "count";
  }
  return "unknown";
}

const char* to_string(Design design) {
  switch (design) {
    case Design::SameWindow:
      return "same_window";
    case Design::BeforeAfter:
      return "before_after";
    case Design::DiffInDiff:
      return "diff_in_diff";
  }
  return "unknown";
}

const char* to_string(Verdict verdict) {
  switch (verdict) {
    case Verdict::Continue:
      return "continue";
    case Verdict::Pass:
      return "pass";
    case Verdict::Fail:
      return "fail";
    case Verdict::Inconclusive:
      return "inconclusive";
  }
  return "unknown";
}

const char* to_string(Sequential sequential) {
  switch (sequential) {
    case Sequential::Spending:
      return "spending";
    case Sequential::Mixture:
      return "mixture";
    case Sequential::GroupSequential:
      return "group_sequential";
  }
  return "unknown";
}

const char* to_string(MetricStatus status) {
  switch (status) {
    case MetricStatus::Tested:
      return "tested";
    case MetricStatus::InsufficientData:
      return "insufficient_data";
  }
  return "unknown";
}

namespace {

// A z beyond this is "certain" in double precision (the normal tail at 38 is
// below the smallest double); it keeps exp() and logs finite.
constexpr double kMaxZ = 38.0;

void check_options(const JudgeOptions& options) {
  if (!(options.alpha > 0.0 && options.alpha < 1.0))
    throw InvalidInput(fmt::format("alpha is {} (must be in (0, 1))", options.alpha));
  if (options.looks_in_window < 1)
    throw InvalidInput(fmt::format("looks_in_window is {} (must be at least 1)", options.looks_in_window));
  if (options.min_hosts_per_arm < 2)
    throw InvalidInput(fmt::format("min_hosts_per_arm is {} (a variance needs at least 2 hosts per arm)",
                                   options.min_hosts_per_arm));
  if (!(options.max_missing_fraction >= 0.0 && options.max_missing_fraction < 1.0))
    throw InvalidInput(
        fmt::format("max_missing_fraction is {} (must be in [0, 1))", options.max_missing_fraction));
  if (!(options.mixture_ratio > 0.0) || !std::isfinite(options.mixture_ratio))
    throw InvalidInput(fmt::format("mixture_ratio is {} (must be > 0)", options.mixture_ratio));
}

void check_spec(const MetricSpec& spec) {
  if (spec.name.empty()) throw InvalidInput("a metric has an empty name");
  if (!(spec.min_effect >= 0.0 && spec.min_effect < 1.0))
    throw InvalidInput(
        fmt::format("metric '{}': min_effect is {} (must be in [0, 1))", spec.name, spec.min_effect));
}

// The quasi-binomial dispersion of an arm: Pearson's chi-square of its hosts'
// events around the arm's pooled rate over its degrees of freedom, never
// below 1 (Poisson). Host-to-host rate differences show up here; a pooled
// binomial that ignores them fires far too often (DESIGN.md section 5).
double dispersion(const std::vector<double>& events, const std::vector<double>& exposure) {
  const double total_events = std::accumulate(events.begin(), events.end(), 0.0);
  const double total_exposure = std::accumulate(exposure.begin(), exposure.end(), 0.0);
  if (total_events <= 0.0 || events.size() < 2) return 1.0;
  const double rate = total_events / total_exposure;
  double pearson = 0.0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    const double expected = exposure[i] * rate;
    pearson += (events[i] - expected) * (events[i] - expected) / expected;
  }
  return std::max(1.0, pearson / static_cast<double>(events.size() - 1));
}

// A one-sided p taken as a t statistic with `df` (the dispersion's own
// degrees of freedom, as quasi-likelihood tests do) and mapped back to p.
double with_dispersion_df(double p, double df) {
  if (p <= 0.0 || p >= 1.0 || p == 0.5) return p;
  Normal normal;
  StudentsT t(df);
  return cdf(complement(t, quantile(complement(normal, p))));
}

double sum(const std::vector<double>& values) { return std::accumulate(values.begin(), values.end(), 0.0); }

struct Tested {
  double estimate, ci_low, ci_high, threshold, p_fixed;
};

double signed_margin(const MetricSpec& spec, double reference) {
  const double margin = spec.min_effect * std::fabs(reference);
  return spec.worse == Direction::Increase ? margin : -margin;
}

// A few canaries estimate their own spread poorly: 5 hosts give 4 degrees
// of freedom, where Student's t needs a statistic of 8 for what a normal
// reaches at 3.3. The test asks whether these canaries got worse on average;
// each one's value is its share of the release's effect plus how far a host
// wanders without it, and the control measures that wander on many more
// hosts. So the larger of the two arms' spreads stands for both, on the
// control's degrees of freedom: exact when the arms vary alike, and never
// less spread than the canary shows. A change proportional to each host's
// own level (latency +30 %) widens the canary's spread, and Welch's 4
// degrees of freedom then hid it in a quarter of the bench's deploys
// (bench/judge_bench.py). The price is on a release exactly at the allowed
// change that also makes each host noisier: the bench's stress row.
TTest t_test_on_the_larger_spread(double difference, const Summary& canary, const Summary& control,
                                  Direction worse, double margin, double confidence) {
  if (control.n <= canary.n)  // the control measures no better than the canary: Welch
    return t_test(difference, canary.sd * canary.sd, canary.n, control.sd * control.sd, control.n, worse,
                  margin, confidence);
  const double spread = std::max(canary.sd * canary.sd, control.sd * control.sd);
  return t_test(difference, spread, canary.n, spread, control.n, worse, margin, confidence, control.n - 1.0);
}

// Continuous metrics, the host as the unit: a t test on host values (or on each
// host's change from its baseline), the allowed change relative to the
// reference level.
Tested test_continuous(const MetricSpec& spec, const Arm& canary, const Arm& control, Design design,
                       double confidence) {
  const Summary a = summarize(canary.values);
  TTest t;
  double reference = 0.0;
  if (design == Design::BeforeAfter) {
    reference = canary.baseline_sum / a.n;
    const double margin = spec.min_effect * std::fabs(reference);
    t = t_test(a.mean, a.sd * a.sd, a.n, 0.0, 0.0, spec.worse, margin, confidence);
  } else {
    const Summary b = summarize(control.values);
    reference = design == Design::SameWindow ? b.mean : b.mean + control.baseline_sum / b.n;
    const double margin = spec.min_effect * std::fabs(reference);
    t = t_test_on_the_larger_spread(a.mean - b.mean, a, b, spec.worse, margin, confidence);
  }
  return {t.difference, t.ci_low, t.ci_high, signed_margin(spec, reference), t.p_value};
}

// Counts: the exact conditional binomial on the arms' totals, the counts
// divided by the dispersion measured on the reference arm's hosts.
Tested test_count(const MetricSpec& spec, const Arm& canary, const Arm& control, Design design,
                  double confidence) {
  const double allowed = spec.worse == Direction::Increase ? 1.0 + spec.min_effect : 1.0 - spec.min_effect;
  const double canary_events = sum(canary.events);
  double canary_exposure = sum(canary.exposure);
  double reference_events = 0.0, reference_exposure = 0.0, phi = 1.0, hosts = 0.0;
  if (design == Design::BeforeAfter) {
    // The reference is the same hosts' own past, in total; their spread
    // around their own baseline rates gives the dispersion.
    phi = dispersion(canary.events, canary.exposure);
    hosts = static_cast<double>(canary.events.size());
    canary_exposure = canary.raw_exposure;
    reference_events = canary.baseline_events;
    reference_exposure = canary.baseline_exposure;
  } else {
    reference_events = sum(control.events);
    reference_exposure = sum(control.exposure);
    phi = dispersion(control.events, control.exposure);
    hosts = static_cast<double>(control.events.size());
  }
  RateTest r = rate_ratio_test(canary_events, canary_exposure, reference_events, reference_exposure,
                               spec.worse, allowed, phi, confidence);
  return {r.ratio, r.ci_low, r.ci_high, allowed, with_dispersion_df(r.p_value, hosts - 1.0)};
}

// ln of the normal-mixture likelihood ratio for a standardized estimate z
// with tau^2 / V = r (DESIGN.md section 5, divided through by V). One-sided:
// an estimate in the good direction is no evidence.
double log_mixture_ratio(double z, double r) {
  if (z <= 0.0) return -kInfinity;
  return -0.5 * std::log1p(r) + r * z * z / (2.0 * (1.0 + r));
}

// The fixed-look p as a standard normal z: the exact distribution of the
// test (Student's t with its real df, or the binomial) carries over into the
// sequential boundary.
double z_of(double p) {
  if (p <= 0.0) return kMaxZ;
  if (p >= 1.0) return -kMaxZ;
  Normal normal;
  return std::min(kMaxZ, quantile(complement(normal, p)));
}

// The method a window actually uses: the group-sequential table is not
// computed for windows longer than kMaxGroupSequentialLooks.
Sequential effective_sequential(const JudgeOptions& options) {
  if (options.sequential == Sequential::GroupSequential && options.looks_in_window > kMaxGroupSequentialLooks)
    return Sequential::Spending;
  return options.sequential;
}

// This look's contribution to the p-value valid over the window.
double sequential_p(double p_fixed, int look, const JudgeOptions& options, const SpendingTable* table) {
  const double n = static_cast<double>(options.looks_in_window);
  switch (effective_sequential(options)) {
    case Sequential::GroupSequential:
      return table->p_value(z_of(p_fixed), look);
    case Sequential::Mixture:
      return std::exp(-log_mixture_ratio(z_of(p_fixed), options.mixture_ratio * look / n));
    case Sequential::Spending:
      break;
  }
  return p_fixed * n * (n + 1.0) / (2.0 * look);
}

}  // namespace

struct Judge::State {
  std::vector<MetricSpec> metrics;
  JudgeOptions options;
  std::unordered_map<std::string, std::size_t> index;
  std::vector<double> always_valid_p;          // per metric, running minimum
  std::shared_ptr<const SpendingTable> table;  // GroupSequential only
  int looks = 0;
  Verdict verdict = Verdict::Continue;

  MetricResult judge_metric(std::size_t i, const MetricLook* data) const;
  void holm(std::vector<MetricResult>& results) const;
};

namespace {

MetricResult insufficient(MetricResult result, std::string reason) {
  result.status = MetricStatus::InsufficientData;
  result.reason = std::move(reason);
  return result;
}

}  // namespace

MetricResult Judge::State::judge_metric(std::size_t i, const MetricLook* data) const {
  const MetricSpec& spec = metrics[i];
  MetricResult result;
  result.name = spec.name;
  result.kind = spec.kind;
  result.p_value = always_valid_p[i];
  if (data == nullptr) return insufficient(std::move(result), "no data in this look");

  const Design design = options.design;
  if (data->canary.empty())
    throw InvalidInput(fmt::format("metric '{}': the canary arm is empty", spec.name));
  if (data->control.empty() && design != Design::BeforeAfter)
    throw InvalidInput(fmt::format("metric '{}': the control arm is empty", spec.name));
  const Arm canary = collect(data->canary, spec, "canary", design);
  const Arm control = design == Design::BeforeAfter ? Arm{} : collect(data->control, spec, "control", design);
  result.canary_hosts = canary.used();
  result.canary_missing = canary.missing;
  result.control_hosts = control.used();
  result.control_missing = control.missing;

  std::string problem = arm_problem(canary, "canary", options);
  if (problem.empty() && design != Design::BeforeAfter) problem = arm_problem(control, "control", options);
  if (!problem.empty()) return insufficient(std::move(result), std::move(problem));

  const double confidence = 1.0 - options.alpha;
  const Tested tested = spec.kind == MetricKind::Continuous
                            ? test_continuous(spec, canary, control, design, confidence)
                            : test_count(spec, canary, control, design, confidence);
  result.status = MetricStatus::Tested;
  result.estimate = tested.estimate;
  result.ci_low = tested.ci_low;
  result.ci_high = tested.ci_high;
  result.threshold = tested.threshold;
  result.p_fixed = tested.p_fixed;
  const double p_now = sequential_p(tested.p_fixed, looks, options, table.get());
  result.p_value = std::min(result.p_value, std::min(1.0, p_now));
  return result;
}

// Holm's step-down over all configured metrics (those without data count in
// m, which only makes the others' levels stricter).
void Judge::State::holm(std::vector<MetricResult>& results) const {
  std::vector<std::size_t> order;
  for (std::size_t i = 0; i < results.size(); ++i)
    if (results[i].status == MetricStatus::Tested) order.push_back(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return results[a].p_value < results[b].p_value; });
  const double m = static_cast<double>(metrics.size());
  bool rejecting = true;
  for (std::size_t rank = 0; rank < order.size(); ++rank) {
    MetricResult& result = results[order[rank]];
    result.level = options.alpha / (m - static_cast<double>(rank));
    rejecting = rejecting && result.p_value <= result.level;
    result.failed = rejecting;
  }
}

Judge::Judge(std::vector<MetricSpec> metrics, JudgeOptions options) : state_(std::make_unique<State>()) {
  check_options(options);
  if (metrics.empty()) throw InvalidInput("the judge needs at least one metric");
  for (std::size_t i = 0; i < metrics.size(); ++i) {
    check_spec(metrics[i]);
    if (!state_->index.emplace(metrics[i].name, i).second)
      throw InvalidInput(fmt::format("metric '{}' is listed twice", metrics[i].name));
  }
  state_->always_valid_p.assign(metrics.size(), 1.0);
  state_->metrics = std::move(metrics);
  state_->options = options;
  if (effective_sequential(options) == Sequential::GroupSequential)
    state_->table = spending_table(options.looks_in_window);
}

Judge::~Judge() = default;
Judge::Judge(Judge&&) noexcept = default;
Judge& Judge::operator=(Judge&&) noexcept = default;

namespace {

std::string describe_failure(const MetricResult& m) {
  return fmt::format(
      "{} worse than allowed: estimate {:.6g} (interval {:.6g} .. {:.6g}), allowed {:.6g}, "
      "always-valid p {:.3g} <= {:.3g}",
      m.name, m.estimate, m.ci_low, m.ci_high, m.threshold, m.p_value, m.level);
}

std::string describe_missing(const std::vector<MetricResult>& results) {
  std::string reason;
  for (const auto& m : results) {
    if (m.status != MetricStatus::InsufficientData) continue;
    if (!reason.empty()) reason += "; ";
    reason += m.name + ": " + m.reason;
  }
  return reason;
}

}  // namespace

LookResult Judge::look(const std::vector<MetricLook>& data) {
  State& s = *state_;
  if (s.verdict != Verdict::Continue)
    throw InvalidState(
        fmt::format("the judge already decided '{}' at look {}", to_string(s.verdict), s.looks));
  std::vector<const MetricLook*> by_metric(s.metrics.size(), nullptr);
  for (const auto& entry : data) {
    auto hit = s.index.find(entry.metric);
    if (hit == s.index.end()) throw InvalidInput(fmt::format("unknown metric '{}'", entry.metric));
    if (by_metric[hit->second] != nullptr)
      throw InvalidInput(fmt::format("metric '{}' appears twice in one look", entry.metric));
    by_metric[hit->second] = &entry;
  }
  LookResult result;
  result.look = s.looks + 1;
  const int previous_looks = s.looks;
  s.looks = result.look;  // the mixture's weight grows with the look index
  try {
    for (std::size_t i = 0; i < s.metrics.size(); ++i)
      result.metrics.push_back(s.judge_metric(i, by_metric[i]));
  } catch (...) {
    s.looks = previous_looks;  // bad input leaves the judge as it was
    throw;
  }
  s.holm(result.metrics);
  for (std::size_t i = 0; i < s.metrics.size(); ++i) s.always_valid_p[i] = result.metrics[i].p_value;

  const MetricResult* worst = nullptr;
  for (const auto& m : result.metrics)
    if (m.failed && (worst == nullptr || m.p_value < worst->p_value)) worst = &m;
  if (worst != nullptr) {
    result.verdict = Verdict::Fail;
    result.failed_metric = worst->name;
    result.reason = describe_failure(*worst);
  } else if (result.look >= s.options.looks_in_window) {
    result.reason = describe_missing(result.metrics);
    result.verdict = result.reason.empty() ? Verdict::Pass : Verdict::Inconclusive;
    if (result.reason.empty()) result.reason = "window over; no metric worse than allowed";
  }
  s.verdict = result.verdict;
  return result;
}

int Judge::looks() const { return state_->looks; }
Verdict Judge::verdict() const { return state_->verdict; }
const std::vector<MetricSpec>& Judge::metrics() const { return state_->metrics; }
const JudgeOptions& Judge::options() const { return state_->options; }

}  // namespace cd::canary
