// The group-sequential boundary (cpp/src/canary_boundary.cpp) against
// published constants and a simulation, and the judge that uses it.
#include <gtest/gtest.h>

#include <boost/math/distributions/normal.hpp>
#include <cmath>
#include <functional>
#include <random>

#include "cd/canary.hpp"
#include "cd/error.hpp"

namespace cd::canary {
namespace {

std::vector<double> equal_information(int looks) {
  std::vector<double> information;
  for (int k = 1; k <= looks; ++k) information.push_back(k);
  return information;
}

// The constant c with P(cross c * shape_k by the last look) = alpha, by bisection.
double constant_for(double alpha, int looks, const std::function<double(int)>& shape) {
  double low = 1.0, high = 4.0;
  for (int i = 0; i < 60; ++i) {
    const double c = 0.5 * (low + high);
    std::vector<double> boundaries;
    for (int k = 1; k <= looks; ++k) boundaries.push_back(c * shape(k));
    (crossing_probabilities(equal_information(looks), boundaries).back() > alpha ? low : high) = c;
  }
  return 0.5 * (low + high);
}

// Jennison & Turnbull (2000), Table 2.1 (Pocock's constants C_P(K, 0.05) of
// the two-sided test, Pocock 1977): K = 5 gives 2.413, K = 10 gives 2.555.
// One-sided at alpha / 2 = 0.025 gives the same to 3 decimals (the chance of
// crossing both boundaries is negligible, J&T section 4.2).
TEST(Boundary, ReproducesPococksConstants) {
  auto constant = [](int) { return 1.0; };
  EXPECT_NEAR(constant_for(0.025, 5, constant), 2.413, 0.0015);
  EXPECT_NEAR(constant_for(0.025, 10, constant), 2.555, 0.0015);
  EXPECT_NEAR(constant_for(0.025, 1, constant), 1.960, 0.0015);
}

// Jennison & Turnbull (2000), Table 2.3 (O'Brien & Fleming 1979, boundary
// C_B sqrt(K / k)): C_B(5, 0.05) = 2.040, C_B(10, 0.05) = 2.087.
TEST(Boundary, ReproducesOBrienFlemingsConstants) {
  EXPECT_NEAR(constant_for(0.025, 5, [](int k) { return std::sqrt(5.0 / k); }), 2.040, 0.0015);
  EXPECT_NEAR(constant_for(0.025, 10, [](int k) { return std::sqrt(10.0 / k); }), 2.087, 0.0015);
}

TEST(Boundary, SpendingInvertsTheCrossingProbabilities) {
  const auto information = equal_information(12);
  std::vector<double> spent;
  for (int k = 1; k <= 12; ++k) spent.push_back(pocock_spending(0.01, k / 12.0));
  const auto boundaries = spending_boundaries(information, spent);
  // The first look is a single normal: its boundary is the plain quantile.
  boost::math::normal normal;
  EXPECT_NEAR(boundaries[0], quantile(complement(normal, spent[0])), 1e-6);
  const auto crossed = crossing_probabilities(information, boundaries);
  for (int k = 0; k < 12; ++k) EXPECT_NEAR(crossed[k], spent[k], 1e-8) << "look " << k + 1;
  // Pocock-like: the boundary falls only a little over the window.
  EXPECT_GT(boundaries[0], boundaries[11]);
  EXPECT_LT(boundaries[0] - boundaries[11], 0.6);
}

// The joint law the recursion integrates, simulated: partial sums of
// independent normals standardized at each look.
TEST(Boundary, SimulatedFalseCrossingsMatchTheBudget) {
  constexpr int kLooks = 12;
  constexpr int kPaths = 400000;
  constexpr double kAlpha = 0.01;
  std::vector<double> spent;
  for (int k = 1; k <= kLooks; ++k) spent.push_back(pocock_spending(kAlpha, static_cast<double>(k) / kLooks));
  const auto boundaries = spending_boundaries(equal_information(kLooks), spent);
  std::mt19937_64 rng(2024);
  std::normal_distribution<double> step(0.0, 1.0);
  int crossed = 0;
  for (int path = 0; path < kPaths; ++path) {
    double score = 0.0;
    for (int k = 1; k <= kLooks; ++k) {
      score += step(rng);
      if (score / std::sqrt(k) >= boundaries[k - 1]) {
        ++crossed;
        break;
      }
    }
  }
  const double rate = static_cast<double>(crossed) / kPaths;
  const double standard_error = std::sqrt(kAlpha * (1 - kAlpha) / kPaths);
  EXPECT_NEAR(rate, kAlpha, 4 * standard_error);
}

TEST(Boundary, NothingSpentMeansNoBoundary) {
  const auto boundaries = spending_boundaries({1, 2, 3}, {0.0, 0.01, 0.01});
  EXPECT_TRUE(std::isinf(boundaries[0]));
  EXPECT_TRUE(std::isinf(boundaries[2]));
  boost::math::normal normal;
  EXPECT_NEAR(boundaries[1], quantile(complement(normal, 0.01)) / 1.0, 1e-6);  // Z_2 alone
}

TEST(Boundary, BadInputIsRefused) {
  EXPECT_THROW(spending_boundaries({1, 2}, {0.01}), InvalidInput);
  EXPECT_THROW(spending_boundaries({2, 1}, {0.005, 0.01}), InvalidInput);
  EXPECT_THROW(spending_boundaries({1, 2}, {0.01, 0.005}), InvalidInput);
  EXPECT_THROW(spending_boundaries({1, 2}, {0.01, 1.0}), InvalidInput);
  EXPECT_THROW(crossing_probabilities({0, 1}, {2, 2}), InvalidInput);
  EXPECT_NEAR(pocock_spending(0.05, 1.0), 0.05, 1e-15);
  EXPECT_EQ(pocock_spending(0.05, 0.0), 0.0);
}

// ------------------------------------------------------------------ judge

MetricSpec latency() { return {"latency", MetricKind::Continuous, Direction::Increase, 0.1}; }
MetricSpec errors() { return {"errors", MetricKind::Count, Direction::Increase, 0.2}; }

std::vector<HostData> values(std::mt19937& rng, int hosts, double level, double sd, double shift = 0.0) {
  std::normal_distribution<double> noise(0.0, sd);
  std::vector<HostData> arm(hosts);
  for (auto& host : arm) host.value = level + shift + noise(rng);
  return arm;
}

std::vector<HostData> counts(std::mt19937& rng, int hosts, double rate, double exposure) {
  std::poisson_distribution<int> events(rate * exposure);
  std::vector<HostData> arm(hosts);
  for (auto& host : arm) {
    host.events = events(rng);
    host.exposure = exposure;
  }
  return arm;
}

JudgeOptions options(int looks, Sequential sequential) {
  JudgeOptions o;
  o.looks_in_window = looks;
  o.sequential = sequential;
  return o;
}

TEST(GroupSequentialJudge, IsTheDefault) {
  EXPECT_EQ(JudgeOptions{}.sequential, Sequential::GroupSequential);
  EXPECT_STREQ(to_string(Sequential::GroupSequential), "group_sequential");
}

// At the first look the boundary is the normal quantile of the budget spent
// there, so the valid p is the fixed-look p over that share (to the table's
// interpolation, ~1 %).
TEST(GroupSequentialJudge, FirstLookSpendsItsShare) {
  std::mt19937 rng(31);
  Judge judge({latency()}, options(12, Sequential::GroupSequential));
  LookResult r = judge.look({{"latency", values(rng, 10, 100, 5, 18), values(rng, 50, 100, 5)}});
  const double share = pocock_spending(1.0, 1.0 / 12.0);
  ASSERT_LT(r.metrics[0].p_fixed, 1e-3);
  EXPECT_NEAR(r.metrics[0].p_value / (r.metrics[0].p_fixed / share), 1.0, 0.01);
}

// Same data through both methods: the boundary that knows the looks are
// correlated gives a smaller valid p from the third look on.
TEST(GroupSequentialJudge, IsMorePowerfulThanTheUnionBound) {
  for (MetricSpec spec : {latency(), errors()}) {
    std::mt19937 rng(32);
    Judge grouped({spec}, options(12, Sequential::GroupSequential));
    Judge spending({spec}, options(12, Sequential::Spending));
    for (int look = 1; look <= 12; ++look) {
      std::vector<MetricLook> data;
      if (spec.kind == MetricKind::Continuous)
        data = {{"latency", values(rng, 6, 100, 5, 16), values(rng, 50, 100, 5)}};
      else
        data = {{"errors", counts(rng, 6, 0.014, 1000 * look), counts(rng, 50, 0.01, 1000 * look)}};
      const MetricResult a = grouped.look(data).metrics[0];
      const MetricResult b = spending.look(data).metrics[0];
      EXPECT_DOUBLE_EQ(a.p_fixed, b.p_fixed);
      if (look >= 3) EXPECT_LT(a.p_value, b.p_value) << spec.name << " look " << look;
      if (grouped.verdict() != Verdict::Continue || spending.verdict() != Verdict::Continue) break;
    }
  }
}

TEST(GroupSequentialJudge, ACountRegressionFails) {
  std::mt19937 rng(33);
  Judge judge({errors()}, options(12, Sequential::GroupSequential));
  LookResult r = judge.look({{"errors", counts(rng, 10, 0.05, 1000), counts(rng, 50, 0.01, 1000)}});
  EXPECT_EQ(r.verdict, Verdict::Fail) << r.reason;
}

TEST(GroupSequentialJudge, LongWindowsUseSpending) {
  std::mt19937 rng(34);
  const int looks = kMaxGroupSequentialLooks + 1;
  Judge grouped({latency()}, options(looks, Sequential::GroupSequential));
  Judge spending({latency()}, options(looks, Sequential::Spending));
  auto data = std::vector<MetricLook>{{"latency", values(rng, 10, 100, 5, 8), values(rng, 50, 100, 5)}};
  EXPECT_DOUBLE_EQ(grouped.look(data).metrics[0].p_value, spending.look(data).metrics[0].p_value);
}

}  // namespace
}  // namespace cd::canary
