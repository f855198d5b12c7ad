// The canary judge's fixed-look tests: summaries, Welch's t, and the exact
// conditional binomial rate-ratio test with its Clopper-Pearson interval.
#include "canary_stats.hpp"

#include <fmt/format.h>

#include <boost/math/special_functions/beta.hpp>
#include <cmath>
#include <utility>

#include "cd/canary.hpp"
#include "cd/error.hpp"

namespace cd::canary {

namespace {

void check_finite(double value, const char* what) {
  if (!std::isfinite(value)) throw InvalidInput(fmt::format("{} is {} (must be finite)", what, value));
}

void check_non_negative(double value, const char* what) {
  check_finite(value, what);
  if (value < 0.0) throw InvalidInput(fmt::format("{} is {} (must be >= 0)", what, value));
}

void check_confidence(double confidence) {
  if (!(confidence > 0.0 && confidence < 1.0))
    throw InvalidInput(fmt::format("confidence is {} (must be in (0, 1))", confidence));
}

void check_summary(const Summary& arm, const char* name) {
  check_finite(arm.mean, name);
  check_non_negative(arm.sd, name);
  if (!(arm.n >= 2.0) || !std::isfinite(arm.n))
    throw InvalidInput(fmt::format("{} has n = {} (Welch's t needs at least 2 values per arm)", name, arm.n));
}

// One-sided p of a t statistic in the worse direction.
double one_sided_p(double statistic, double df, Direction worse) {
  if (std::isinf(statistic)) return (statistic > 0) == (worse == Direction::Increase) ? 0.0 : 1.0;
  StudentsT t(df);
  return worse == Direction::Increase ? cdf(complement(t, statistic)) : cdf(t, statistic);
}

}  // namespace

TTest t_test(double difference, double variance_a, double n_a, double variance_b, double n_b, Direction worse,
             double margin, double confidence, std::optional<double> df) {
  TTest result;
  const double share_a = variance_a / n_a;
  const double share_b = n_b > 0.0 ? variance_b / n_b : 0.0;
  const double se2 = share_a + share_b;
  const double denominator =
      share_a * share_a / (n_a - 1.0) + (n_b > 1.0 ? share_b * share_b / (n_b - 1.0) : 0.0);
  result.difference = difference;
  result.std_error = std::sqrt(se2);
  // With no spread at all the df is undefined; any value gives the same
  // (degenerate) answer, so take the one-sample one.
  result.df = df ? *df : (denominator > 0.0 ? se2 * se2 / denominator : n_a - 1.0);
  const double shifted = worse == Direction::Increase ? difference - margin : difference + margin;
  if (result.std_error > 0.0) {
    result.statistic = shifted / result.std_error;
  } else {
    result.statistic = shifted > 0.0 ? kInfinity : (shifted < 0.0 ? -kInfinity : 0.0);
  }
  result.p_value = one_sided_p(result.statistic, result.df, worse);
  StudentsT t(result.df);
  const double half_width = quantile(complement(t, (1.0 - confidence) / 2.0)) * result.std_error;
  result.ci_low = difference - half_width;
  result.ci_high = difference + half_width;
  return result;
}

namespace {

// P(X >= k) and P(X <= k) for X ~ Binomial(n, p), for real k and n through
// the regularized incomplete beta (exact for integers, continuous between).
double binomial_upper_tail(double k, double n, double p) {
  return k <= 0.0 ? 1.0 : boost::math::ibeta(k, n - k + 1.0, p, Policy());
}

double binomial_lower_tail(double k, double n, double p) {
  return k >= n ? 1.0 : boost::math::ibetac(k + 1.0, n - k, p, Policy());
}

// Clopper-Pearson interval of a binomial share.
std::pair<double, double> share_interval(double k, double n, double confidence) {
  const double tail = (1.0 - confidence) / 2.0;
  const double low = k <= 0.0 ? 0.0 : boost::math::ibeta_inv(k, n - k + 1.0, tail, Policy());
  const double high = k >= n ? 1.0 : boost::math::ibeta_inv(k + 1.0, n - k, 1.0 - tail, Policy());
  return {low, high};
}

double share_to_ratio(double share, double canary_exposure, double control_exposure) {
  if (share >= 1.0) return kInfinity;
  return share / (1.0 - share) * control_exposure / canary_exposure;
}

}  // namespace

Summary summarize(const std::vector<double>& values) {
  if (values.empty()) throw InvalidInput("cannot summarize an empty sample");
  double sum = 0.0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i]))
      throw InvalidInput(fmt::format("value {} is {} (must be finite)", i, values[i]));
    sum += values[i];
  }
  const double n = static_cast<double>(values.size());
  const double mean = sum / n;
  double squares = 0.0;  // two passes: the one-pass formula cancels badly
  for (double value : values) squares += (value - mean) * (value - mean);
  return {n, mean, values.size() > 1 ? std::sqrt(squares / (n - 1.0)) : 0.0};
}

TTest welch_from_summary(const Summary& canary, const Summary& control, Direction worse, double margin,
                         double confidence) {
  check_summary(canary, "canary");
  check_summary(control, "control");
  check_non_negative(margin, "margin");
  check_confidence(confidence);
  return t_test(canary.mean - control.mean, canary.sd * canary.sd, canary.n, control.sd * control.sd,
                control.n, worse, margin, confidence);
}

TTest welch_test(const std::vector<double>& canary, const std::vector<double>& control, Direction worse,
                 double margin, double confidence) {
  return welch_from_summary(summarize(canary), summarize(control), worse, margin, confidence);
}

RateTest rate_ratio_test(double canary_events, double canary_exposure, double control_events,
                         double control_exposure, Direction worse, double allowed_ratio, double dispersion,
                         double confidence) {
  check_non_negative(canary_events, "canary events");
  check_non_negative(canary_exposure, "canary exposure");
  check_non_negative(control_events, "control events");
  check_non_negative(control_exposure, "control exposure");
  if (canary_exposure <= 0.0 || control_exposure <= 0.0)
    throw InvalidInput("an exposure is 0: no traffic, nothing to compare");
  check_finite(allowed_ratio, "allowed ratio");
  if (allowed_ratio <= 0.0)
    throw InvalidInput(fmt::format("allowed ratio is {} (must be > 0)", allowed_ratio));
  check_finite(dispersion, "dispersion");
  if (dispersion < 1.0) throw InvalidInput(fmt::format("dispersion is {} (must be >= 1)", dispersion));
  check_confidence(confidence);

  RateTest result;
  result.ratio = (canary_events / canary_exposure) / (control_events / control_exposure);
  const double k = canary_events / dispersion;
  const double n = (canary_events + control_events) / dispersion;
  result.null_share = canary_exposure * allowed_ratio / (canary_exposure * allowed_ratio + control_exposure);
  result.p_value = worse == Direction::Increase ? binomial_upper_tail(k, n, result.null_share)
                                                : binomial_lower_tail(k, n, result.null_share);
  if (n <= 0.0) {
    result.ci_low = 0.0;
    result.ci_high = kInfinity;
  } else {
    auto [low, high] = share_interval(k, n, confidence);
    result.ci_low = share_to_ratio(low, canary_exposure, control_exposure);
    result.ci_high = share_to_ratio(high, canary_exposure, control_exposure);
  }
  return result;
}

}  // namespace cd::canary
