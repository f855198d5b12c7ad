#include "cd/canary.hpp"

#include <gtest/gtest.h>

#include <boost/math/distributions/students_t.hpp>
#include <cmath>
#include <limits>
#include <random>

#include "cd/error.hpp"

namespace cd::canary {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// ------------------------------------------------------------------ Welch

TEST(Welch, ReproducesBoostsNistExample) {
  TTest t =
      welch_from_summary(Summary{249, 20.14458, 6.4147}, Summary{79, 30.48101, 6.10771}, Direction::Decrease);
  EXPECT_NEAR(t.df, 136.87, 0.005);
  EXPECT_NEAR(t.statistic, -12.946, 0.0005);
  EXPECT_LT(t.p_value, 1e-20);
  EXPECT_LT(t.ci_high, 0.0);
}

// Reference values from scipy.stats.ttest_ind(a, b, equal_var=False, alternative=...).
TEST(Welch, MatchesScipyOnRawSamples) {
  std::vector<double> a = {12.1, 14.3, 11.8, 15.2, 13.9, 12.7};
  std::vector<double> b = {10.2, 11.1, 9.8, 10.9, 11.4, 10.0, 10.6, 12.0};
  TTest up = welch_test(a, b, Direction::Increase);
  EXPECT_NEAR(up.statistic, 4.244425399345112, 1e-12);
  EXPECT_NEAR(up.df, 7.3175682899379035, 1e-12);
  EXPECT_NEAR(up.p_value, 0.0017266889533346086, 1e-14);
  EXPECT_NEAR(up.ci_low, 1.1566902058847786, 1e-12);
  EXPECT_NEAR(up.ci_high, 4.009976460781893, 1e-12);
  EXPECT_NEAR(welch_test(a, b, Direction::Decrease).p_value, 0.9982733110466654, 1e-14);
}

TEST(Welch, MarginShiftsTheNullHypothesis) {
  std::vector<double> a = {10.5, 10.6, 10.4, 10.5};
  std::vector<double> b = {10.0, 10.1, 9.9, 10.0};
  EXPECT_LT(welch_test(a, b, Direction::Increase).p_value, 0.001);
  EXPECT_GT(welch_test(a, b, Direction::Increase, 1.0).p_value, 0.999);
  // Decrease: canary lower by 0.5 with 1.0 allowed is no evidence either.
  EXPECT_GT(welch_test(b, a, Direction::Decrease, 1.0).p_value, 0.999);
}

TEST(Welch, BadInputIsRefusedWithItsName) {
  EXPECT_THROW(welch_test(std::vector<double>{1.0}, {1.0, 2.0}, Direction::Increase), InvalidInput);
  EXPECT_THROW(welch_test(std::vector<double>{}, {1.0, 2.0}, Direction::Increase), InvalidInput);
  EXPECT_THROW(welch_test({1.0, kNaN}, {1.0, 2.0}, Direction::Increase), InvalidInput);
  EXPECT_THROW(welch_test({1.0, 2.0}, {1.0, kInf}, Direction::Increase), InvalidInput);
  EXPECT_THROW(welch_from_summary(Summary{5, 1, -1}, Summary{5, 1, 1}, Direction::Increase), InvalidInput);
  EXPECT_THROW(welch_test({1.0, 2.0}, {1.0, 2.0}, Direction::Increase, -1.0), InvalidInput);
  EXPECT_THROW(welch_test({1.0, 2.0}, {1.0, 2.0}, Direction::Increase, 0.0, 1.0), InvalidInput);
}

TEST(Welch, ConstantSamplesGiveADefiniteAnswer) {
  EXPECT_EQ(welch_test({2.0, 2.0}, {1.0, 1.0}, Direction::Increase).p_value, 0.0);
  EXPECT_EQ(welch_test({1.0, 1.0}, {1.0, 1.0}, Direction::Increase).p_value, 0.5);
  EXPECT_EQ(welch_test({1.0, 1.0}, {2.0, 2.0}, Direction::Increase).p_value, 1.0);
}

// ------------------------------------------------------------ rate ratio

// Reference values from scipy.stats.binomtest.
TEST(RateRatio, MatchesScipyBinomtest) {
  // p0 = 3 / (3 + 7) = 0.3: binomtest(7, 10, 0.3, alternative="greater").
  RateTest up = rate_ratio_test(7, 3, 3, 7, Direction::Increase);
  EXPECT_DOUBLE_EQ(up.null_share, 0.3);
  EXPECT_NEAR(up.p_value, 0.010592078399999996, 1e-15);
  EXPECT_NEAR(up.ratio, (7.0 / 3.0) / (3.0 / 7.0), 1e-12);
  EXPECT_LT(up.ci_low, up.ratio);
  EXPECT_GT(up.ci_high, up.ratio);
  // p0 = 2 / (2 + 3) = 0.4: binomtest(1, 12, 0.4, alternative="less").
  EXPECT_NEAR(rate_ratio_test(1, 2, 11, 3, Direction::Decrease).p_value, 0.019591041023999993, 1e-15);
}

TEST(RateRatio, SmallCasesByHand) {
  // Equal exposures, 3 of 4 events on the canary: P(X >= 3 | 4, 1/2) = 5/16.
  EXPECT_NEAR(rate_ratio_test(3, 1, 1, 1, Direction::Increase).p_value, 5.0 / 16.0, 1e-15);
  // Allowed ratio 3 with equal exposures: p0 = 3/4, P(X >= 3 | 4) = 4*27/256 + 81/256.
  EXPECT_NEAR(rate_ratio_test(3, 1, 1, 1, Direction::Increase, 3.0).p_value, 189.0 / 256.0, 1e-15);
  // No events anywhere is no evidence.
  EXPECT_EQ(rate_ratio_test(0, 1, 0, 1, Direction::Increase).p_value, 1.0);
  EXPECT_EQ(rate_ratio_test(0, 1, 0, 1, Direction::Decrease).p_value, 1.0);
}

TEST(RateRatio, DispersionDividesTheCounts) {
  EXPECT_NEAR(rate_ratio_test(6, 1, 2, 1, Direction::Increase, 1.0, 2.0).p_value,
              rate_ratio_test(3, 1, 1, 1, Direction::Increase).p_value, 1e-14);
  // More dispersion, less evidence.
  EXPECT_GT(rate_ratio_test(60, 1, 20, 1, Direction::Increase, 1.0, 3.0).p_value,
            rate_ratio_test(60, 1, 20, 1, Direction::Increase).p_value);
}

TEST(RateRatio, BadInputIsRefused) {
  EXPECT_THROW(rate_ratio_test(-1, 1, 1, 1, Direction::Increase), InvalidInput);
  EXPECT_THROW(rate_ratio_test(1, 0, 1, 1, Direction::Increase), InvalidInput);
  EXPECT_THROW(rate_ratio_test(1, 1, kNaN, 1, Direction::Increase), InvalidInput);
  EXPECT_THROW(rate_ratio_test(1, 1, 1, kInf, Direction::Increase), InvalidInput);
  EXPECT_THROW(rate_ratio_test(1, 1, 1, 1, Direction::Increase, 0.0), InvalidInput);
  EXPECT_THROW(rate_ratio_test(1, 1, 1, 1, Direction::Increase, 1.0, 0.5), InvalidInput);
}

// ------------------------------------------------------------------ judge

HostData value_host(double value, double baseline = 0.0) {
  HostData host;
  host.value = value;
  host.baseline_value = baseline;
  return host;
}

HostData count_host(double events, double exposure, double baseline_events = 0.0,
                    double baseline_exposure = 0.0) {
  HostData host;
  host.events = events;
  host.exposure = exposure;
  host.baseline_events = baseline_events;
  host.baseline_exposure = baseline_exposure;
  return host;
}

HostData missing_host() {
  HostData host;
  host.missing = true;
  host.value = kNaN;  // never read
  return host;
}

// `hosts` values around `level` with noise `sd`, shifted by `shift`.
std::vector<HostData> values(std::mt19937& rng, int hosts, double level, double sd, double shift = 0.0) {
  std::normal_distribution<double> noise(0.0, sd);
  std::vector<HostData> arm;
  for (int i = 0; i < hosts; ++i) arm.push_back(value_host(level + shift + noise(rng)));
  return arm;
}

std::vector<HostData> counts(std::mt19937& rng, int hosts, double rate, double exposure) {
  std::poisson_distribution<int> events(rate * exposure);
  std::vector<HostData> arm;
  for (int i = 0; i < hosts; ++i) arm.push_back(count_host(events(rng), exposure));
  return arm;
}

JudgeOptions options(int looks, Design design = Design::SameWindow) {
  JudgeOptions o;
  o.looks_in_window = looks;
  o.design = design;
  return o;
}

MetricSpec latency() { return {"latency", MetricKind::Continuous, Direction::Increase, 0.1}; }
MetricSpec errors() { return {"errors", MetricKind::Count, Direction::Increase, 0.2}; }

TEST(Judge, NoChangeContinuesThenPasses) {
  std::mt19937 rng(1);
  Judge judge({latency(), errors()}, options(3));
  for (int look = 1; look <= 3; ++look) {
    LookResult r =
        judge.look({{"latency", values(rng, 10, 100, 5), values(rng, 50, 100, 5)},
                    {"errors", counts(rng, 10, 0.01, 1000 * look), counts(rng, 50, 0.01, 1000 * look)}});
    EXPECT_EQ(r.look, look);
    ASSERT_EQ(r.metrics.size(), 2u);
    EXPECT_EQ(r.metrics[0].status, MetricStatus::Tested);
    EXPECT_EQ(r.metrics[1].status, MetricStatus::Tested);
    EXPECT_EQ(r.verdict, look < 3 ? Verdict::Continue : Verdict::Pass) << r.reason;
  }
  EXPECT_EQ(judge.verdict(), Verdict::Pass);
  EXPECT_THROW(judge.look({}), InvalidState);
}

TEST(Judge, ClearRegressionFailsNamingTheMetric) {
  std::mt19937 rng(2);
  Judge judge({latency(), errors()}, options(12));
  LookResult r = judge.look({{"latency", values(rng, 10, 100, 5, 50), values(rng, 50, 100, 5)},
                             {"errors", counts(rng, 10, 0.01, 1000), counts(rng, 50, 0.01, 1000)}});
  EXPECT_EQ(r.verdict, Verdict::Fail);
  EXPECT_EQ(r.failed_metric, "latency");
  EXPECT_TRUE(r.metrics[0].failed);
  EXPECT_FALSE(r.metrics[1].failed);
  EXPECT_NEAR(r.metrics[0].estimate, 50, 10);
  EXPECT_NEAR(r.metrics[0].threshold, 10, 1);  // 10% of the control's 100
  EXPECT_LT(r.metrics[0].ci_low, r.metrics[0].estimate);
  EXPECT_LE(r.metrics[0].p_value, r.metrics[0].level);
  EXPECT_NE(r.reason.find("latency"), std::string::npos);
  EXPECT_THROW(judge.look({}), InvalidState);
}

TEST(Judge, ErrorCountRegressionFails) {
  std::mt19937 rng(3);
  Judge judge({errors()}, options(12));
  LookResult r = judge.look({{"errors", counts(rng, 10, 0.05, 1000), counts(rng, 50, 0.01, 1000)}});
  EXPECT_EQ(r.verdict, Verdict::Fail);
  EXPECT_NEAR(r.metrics[0].estimate, 5.0, 1.0);
  EXPECT_DOUBLE_EQ(r.metrics[0].threshold, 1.2);
}

TEST(Judge, ATrivialShiftAtLargeNDoesNotFail) {
  std::mt19937 rng(4);
  Judge judge({latency()}, options(1));
  // 5% worse on 1,000 hosts: highly significant, but below the 10% that matters.
  LookResult r = judge.look({{"latency", values(rng, 1000, 100, 1, 5), values(rng, 1000, 100, 1)}});
  EXPECT_LT(
      welch_test(std::vector<double>(1000, 105), std::vector<double>(1000, 100), Direction::Increase).p_value,
      1e-9);
  EXPECT_EQ(r.verdict, Verdict::Pass) << r.reason;
}

TEST(Judge, ZeroTrafficOnTheCanaryIsInconclusiveNotAPass) {
  std::mt19937 rng(5);
  Judge judge({errors()}, options(2));
  LookResult first = judge.look({{"errors", counts(rng, 10, 0.01, 0), counts(rng, 50, 0.01, 1000)}});
  EXPECT_EQ(first.verdict, Verdict::Continue);
  EXPECT_EQ(first.metrics[0].status, MetricStatus::InsufficientData);
  LookResult last = judge.look({{"errors", counts(rng, 10, 0.01, 0), counts(rng, 50, 0.01, 1000)}});
  EXPECT_EQ(last.verdict, Verdict::Inconclusive);
  EXPECT_NE(last.reason.find("canary"), std::string::npos);
}

TEST(Judge, MissingHostsAreCountedAndNeverGoodSamples) {
  std::mt19937 rng(6);
  Judge judge({latency()}, options(1));
  auto canary = values(rng, 10, 100, 5);
  for (int i = 0; i < 3; ++i) canary[i] = missing_host();  // 30% > 20% allowed
  LookResult r = judge.look({{"latency", canary, values(rng, 50, 100, 5)}});
  EXPECT_EQ(r.verdict, Verdict::Inconclusive);
  EXPECT_EQ(r.metrics[0].canary_missing, 3);
  EXPECT_EQ(r.metrics[0].canary_hosts, 7);
  EXPECT_NE(r.metrics[0].reason.find("3 of 10"), std::string::npos);
}

TEST(Judge, AFewMissingHostsAreLeftOut) {
  std::mt19937 rng(7);
  Judge judge({latency()}, options(1));
  auto canary = values(rng, 10, 100, 5);
  canary[0] = missing_host();
  LookResult r = judge.look({{"latency", canary, values(rng, 50, 100, 5)}});
  EXPECT_EQ(r.verdict, Verdict::Pass) << r.reason;
  EXPECT_EQ(r.metrics[0].canary_hosts, 9);
}

TEST(Judge, TooFewHostsPerArmRefusesToDecide) {
  std::mt19937 rng(8);
  JudgeOptions o = options(1);
  o.min_hosts_per_arm = 5;
  Judge judge({latency()}, o);
  LookResult r = judge.look({{"latency", values(rng, 4, 100, 5, 1000), values(rng, 50, 100, 5)}});
  EXPECT_EQ(r.verdict, Verdict::Inconclusive);
}

TEST(Judge, AMetricAbsentFromALookHasNoData) {
  std::mt19937 rng(9);
  Judge judge({latency(), errors()}, options(1));
  LookResult r = judge.look({{"latency", values(rng, 10, 100, 5), values(rng, 50, 100, 5)}});
  EXPECT_EQ(r.verdict, Verdict::Inconclusive);
  EXPECT_EQ(r.metrics[1].status, MetricStatus::InsufficientData);
}

TEST(Judge, BadInputNamesTheThingAndLeavesTheJudgeUsable) {
  std::mt19937 rng(10);
  Judge judge({latency(), errors()}, options(2));
  auto control = values(rng, 20, 100, 5);
  auto nan_canary = values(rng, 10, 100, 5);
  nan_canary[4].value = kNaN;
  try {
    judge.look({{"latency", nan_canary, control}});
    FAIL() << "NaN accepted";
  } catch (const InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("metric 'latency', canary host 4: value"), std::string::npos)
        << e.what();
  }
  auto inf_control = control;
  inf_control[1].value = kInf;
  EXPECT_THROW(judge.look({{"latency", values(rng, 10, 100, 5), inf_control}}), InvalidInput);
  auto negative = counts(rng, 10, 0.01, 100);
  negative[2].events = -1;
  EXPECT_THROW(judge.look({{"errors", negative, counts(rng, 20, 0.01, 100)}}), InvalidInput);
  negative[2] = count_host(1, -5);
  EXPECT_THROW(judge.look({{"errors", negative, counts(rng, 20, 0.01, 100)}}), InvalidInput);
  negative[2] = count_host(3, 0);
  EXPECT_THROW(judge.look({{"errors", negative, counts(rng, 20, 0.01, 100)}}), InvalidInput);
  EXPECT_THROW(judge.look({{"latency", {}, control}}), InvalidInput);
  EXPECT_THROW(judge.look({{"latency", control, {}}}), InvalidInput);
  EXPECT_THROW(judge.look({{"throughput", control, control}}), InvalidInput);
  EXPECT_THROW(judge.look({{"latency", control, control}, {"latency", control, control}}), InvalidInput);
  EXPECT_EQ(judge.looks(), 0);
  EXPECT_EQ(judge.look({{"latency", control, control}}).look, 1);
}

TEST(Judge, BadSpecsAndOptionsAreRefused) {
  EXPECT_THROW(Judge({}), InvalidInput);
  EXPECT_THROW(Judge({latency(), latency()}), InvalidInput);
  EXPECT_THROW(Judge({{"", MetricKind::Count, Direction::Increase, 0.1}}), InvalidInput);
  EXPECT_THROW(Judge({{"x", MetricKind::Count, Direction::Increase, -0.1}}), InvalidInput);
  EXPECT_THROW(Judge({{"x", MetricKind::Count, Direction::Increase, kNaN}}), InvalidInput);
  JudgeOptions o;
  o.alpha = 0.0;
  EXPECT_THROW(Judge({latency()}, o), InvalidInput);
  o = JudgeOptions{};
  o.min_hosts_per_arm = 1;
  EXPECT_THROW(Judge({latency()}, o), InvalidInput);
  o = JudgeOptions{};
  o.looks_in_window = 0;
  EXPECT_THROW(Judge({latency()}, o), InvalidInput);
  o = JudgeOptions{};
  o.max_missing_fraction = 1.0;
  EXPECT_THROW(Judge({latency()}, o), InvalidInput);
  o = JudgeOptions{};
  o.mixture_ratio = kNaN;
  EXPECT_THROW(Judge({latency()}, o), InvalidInput);
}

TEST(Judge, AlwaysValidPNeverRises) {
  std::mt19937 rng(11);
  Judge judge({latency()}, options(12));
  double previous = 1.0;
  for (int look = 0; look < 12; ++look) {
    double shift = look < 3 ? 8.0 : 0.0;  // worse early, then back to normal
    LookResult r = judge.look({{"latency", values(rng, 6, 100, 5, shift), values(rng, 50, 100, 5)}});
    EXPECT_LE(r.metrics[0].p_value, previous);
    EXPECT_LE(r.metrics[0].p_value, 1.0);
    previous = r.metrics[0].p_value;
    if (r.verdict != Verdict::Continue) break;
  }
}

TEST(Judge, SpendingGivesLaterLooksMoreOfTheBudget) {
  std::mt19937 rng(17);
  JudgeOptions o = options(3);
  o.sequential = Sequential::Spending;
  Judge judge({latency()}, o);
  auto canary = values(rng, 10, 100, 5, 5);
  auto control = values(rng, 50, 100, 5);
  double p_fixed = 0.0;
  for (int look = 1; look <= 3; ++look) {
    LookResult r = judge.look({{"latency", canary, control}});
    p_fixed = r.metrics[0].p_fixed;
    // Look k of 3 spends k / 6 of alpha: p_k = p_fixed * 6 / k, the running minimum.
    EXPECT_NEAR(r.metrics[0].p_value, std::min(1.0, p_fixed * 6.0 / look), 1e-12);
  }
  EXPECT_GT(p_fixed, 0.0);
}

TEST(Judge, MixtureSprtIsAvailable) {
  std::mt19937 rng(18);
  JudgeOptions o = options(12);
  o.sequential = Sequential::Mixture;
  Judge judge({latency()}, o);
  LookResult weak = judge.look({{"latency", values(rng, 10, 100, 5), values(rng, 50, 100, 5)}});
  EXPECT_EQ(weak.verdict, Verdict::Continue);
  LookResult strong = judge.look({{"latency", values(rng, 10, 100, 5, 50), values(rng, 50, 100, 5)}});
  EXPECT_EQ(strong.verdict, Verdict::Fail);
  EXPECT_STREQ(to_string(Sequential::Mixture), "mixture");
}

TEST(Judge, HolmLevelsStepDown) {
  std::mt19937 rng(12);
  MetricSpec other = latency();
  other.name = "load";
  Judge judge({latency(), other}, options(12));
  LookResult r = judge.look({{"latency", values(rng, 10, 100, 5, 60), values(rng, 50, 100, 5)},
                             {"load", values(rng, 10, 100, 5, 60), values(rng, 50, 100, 5)}});
  std::vector<double> levels = {r.metrics[0].level, r.metrics[1].level};
  std::sort(levels.begin(), levels.end());
  EXPECT_DOUBLE_EQ(levels[0], kDefaultAlpha / 2);
  EXPECT_DOUBLE_EQ(levels[1], kDefaultAlpha);
  EXPECT_EQ(r.verdict, Verdict::Fail);
}

// Hosts with very different fixed levels, the canaries on the high ones and
// nothing changed: the same window sees a regression, the difference in
// differences does not.
TEST(Judge, DiffInDiffRemovesFixedHostLevels) {
  std::mt19937 rng(13);
  std::normal_distribution<double> noise(0.0, 1.0);
  auto arm = [&](int hosts, double level) {
    std::vector<HostData> out;
    for (int i = 0; i < hosts; ++i) {
      double host_level = level + 5.0 * i;
      out.push_back(value_host(host_level + noise(rng), host_level + noise(rng)));
    }
    return out;
  };
  auto canary = arm(8, 300);
  auto control = arm(40, 100);
  Judge same({latency()}, options(1));
  EXPECT_EQ(same.look({{"latency", canary, control}}).verdict, Verdict::Fail);
  Judge did({latency()}, options(1, Design::DiffInDiff));
  EXPECT_EQ(did.look({{"latency", canary, control}}).verdict, Verdict::Pass);
  Judge before_after({latency()}, options(1, Design::BeforeAfter));
  EXPECT_EQ(before_after.look({{"latency", canary, {}}}).verdict, Verdict::Pass);
}

// Five canaries that happen to agree closely would make Welch's test trust
// a spread measured on 4 degrees of freedom; five that differ (a change
// proportional to each host's level) would hide the change behind those 4.
// The judge takes the larger of the arms' spreads for both, with the
// control's degrees of freedom; with no more control hosts than canaries it
// is plain Welch.
TEST(Judge, TheLargerSpreadStandsForBothArmsOnTheControlsDegreesOfFreedom) {
  std::mt19937 rng(15);
  std::vector<HostData> control = values(rng, 50, 100, 10);
  std::vector<double> control_values;
  for (const auto& host : control) control_values.push_back(host.value);
  const double n_b = 50.0;
  double mean_b = 0.0, ss_b = 0.0;
  for (double v : control_values) mean_b += v / n_b;
  for (double v : control_values) ss_b += (v - mean_b) * (v - mean_b);
  const double variance_b = ss_b / (n_b - 1.0);
  const double margin = 0.1 * mean_b;
  boost::math::students_t_distribution<double> t(n_b - 1.0);
  auto expected_p = [&](double mean_a, double variance) {
    const double statistic = (mean_a - mean_b - margin) / std::sqrt(variance * (1.0 / 5.0 + 1.0 / n_b));
    return boost::math::cdf(boost::math::complement(t, statistic));
  };
  auto tested_p = [&](const std::vector<double>& canary_values, const std::vector<HostData>& control_arm) {
    std::vector<HostData> canary;
    for (double v : canary_values) canary.push_back(value_host(v));
    Judge judge({latency()}, options(12));
    return judge.look({{"latency", canary, control_arm}}).metrics[0].p_fixed;
  };

  const std::vector<double> tight = {125.0, 125.002, 124.998, 125.001, 124.999};
  EXPECT_NEAR(tested_p(tight, control), expected_p(125.0, variance_b), 1e-12);
  EXPECT_GT(tested_p(tight, control),
            10.0 * welch_test(tight, control_values, Direction::Increase, margin).p_value);

  const std::vector<double> spread = {95.0, 160.0, 110.0, 140.0, 125.0};
  double ss_a = 0.0;
  for (double v : spread) ss_a += (v - 126.0) * (v - 126.0);
  ASSERT_GT(ss_a / 4.0, variance_b);
  EXPECT_NEAR(tested_p(spread, control), expected_p(126.0, ss_a / 4.0), 1e-12);
  EXPECT_LT(tested_p(spread, control),
            welch_test(spread, control_values, Direction::Increase, margin).p_value);

  const std::vector<HostData> small_control(control.begin(), control.begin() + 5);
  const std::vector<double> small_values(control_values.begin(), control_values.begin() + 5);
  const double small_mean = std::accumulate(small_values.begin(), small_values.end(), 0.0) / 5.0;
  EXPECT_NEAR(tested_p(spread, small_control),
              welch_test(spread, small_values, Direction::Increase, 0.1 * small_mean).p_value, 1e-12);
}

TEST(Judge, CountDesignsWithABaseline) {
  std::mt19937 rng(14);
  auto arm = [&](int hosts, double rate_before, double rate_after) {
    std::vector<HostData> out;
    for (int i = 0; i < hosts; ++i) {
      double host_rate = (1.0 + 0.1 * (i % 5)) * 0.01;  // fixed per-host differences
      std::poisson_distribution<int> before(host_rate * rate_before * 50000);
      std::poisson_distribution<int> after(host_rate * rate_after * 10000);
      out.push_back(count_host(after(rng), 10000, before(rng), 50000));
    }
    return out;
  };
  Judge did({errors()}, options(1, Design::DiffInDiff));
  EXPECT_EQ(did.look({{"errors", arm(8, 1.0, 3.0), arm(40, 1.0, 1.0)}}).verdict, Verdict::Fail);
  Judge did_aa({errors()}, options(1, Design::DiffInDiff));
  LookResult aa = did_aa.look({{"errors", arm(8, 1.0, 1.0), arm(40, 1.0, 1.0)}});
  EXPECT_EQ(aa.verdict, Verdict::Pass) << aa.reason;
  EXPECT_NEAR(aa.metrics[0].estimate, 1.0, 0.2);
  Judge ba({errors()}, options(1, Design::BeforeAfter));
  EXPECT_EQ(ba.look({{"errors", arm(8, 1.0, 3.0), {}}}).verdict, Verdict::Fail);
  HostData no_baseline = count_host(5, 100, 0, 0);
  auto hosts = arm(8, 1.0, 1.0);
  hosts[0] = no_baseline;  // no traffic before the flip: counted as missing
  Judge ba2({errors()}, options(1, Design::BeforeAfter));
  EXPECT_EQ(ba2.look({{"errors", hosts, {}}}).metrics[0].canary_missing, 1);
}

TEST(Judge, DecreaseIsWorseForThroughput) {
  std::mt19937 rng(15);
  Judge judge({{"throughput", MetricKind::Continuous, Direction::Decrease, 0.1}}, options(12));
  LookResult r = judge.look({{"throughput", values(rng, 10, 100, 2, -40), values(rng, 50, 100, 2)}});
  EXPECT_EQ(r.verdict, Verdict::Fail);
  EXPECT_NEAR(r.metrics[0].threshold, -10, 0.5);
}

// One look over 1,000 hosts and 20 metrics: correctness only; the time is
// measured in bench/judge_bench.py.
TEST(Judge, AThousandHostsTwentyMetrics) {
  std::mt19937 rng(16);
  std::vector<MetricSpec> specs;
  std::vector<MetricLook> look;
  for (int m = 0; m < 20; ++m) {
    bool count = m % 2 == 1;
    specs.push_back({"m" + std::to_string(m), count ? MetricKind::Count : MetricKind::Continuous,
                     Direction::Increase, 0.2});
    look.push_back({"m" + std::to_string(m), count ? counts(rng, 50, 0.01, 1000) : values(rng, 50, 100, 5),
                    count ? counts(rng, 950, 0.01, 1000) : values(rng, 950, 100, 5)});
  }
  Judge judge(specs, options(1));
  LookResult r = judge.look(look);
  ASSERT_EQ(r.metrics.size(), 20u);
  for (const auto& m : r.metrics) {
    EXPECT_EQ(m.canary_hosts, 50);
    EXPECT_EQ(m.control_hosts, 950);
  }
  EXPECT_EQ(r.verdict, Verdict::Pass) << r.reason;
}

TEST(Enums, HaveNames) {
  EXPECT_STREQ(to_string(Verdict::Inconclusive), "inconclusive");
  EXPECT_STREQ(to_string(Design::DiffInDiff), "diff_in_diff");
  EXPECT_STREQ(to_string(MetricKind::Count), "count");
  EXPECT_STREQ(to_string(Direction::Decrease), "decrease");
  EXPECT_STREQ(to_string(MetricStatus::Tested), "tested");
}

}  // namespace
}  // namespace cd::canary
