// Group-sequential boundaries: the recursive numerical integration of
// Armitage, McPherson and Rowe (1969) in the score scale (Jennison & Turnbull
// 2000, chapter 19), Lan-DeMets spending, and the table of boundaries the
// judge turns into p-values valid over the looks of a window.
#include "canary_boundary.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/math/tools/roots.hpp>
#include <cmath>
#include <map>
#include <mutex>

#include "canary_stats.hpp"
#include "cd/error.hpp"

namespace cd::canary {

namespace {

// The score S_k = Z_k sqrt(I_k) below -kTail standard deviations carries a
// mass under 1e-9 (Phi(-6)): left out of the grid, it cannot matter for
// budgets of 1e-3 and up.
constexpr double kTail = 6.0;
// Grid spacing in standard deviations of one look's increment: Simpson's
// error on a Gaussian integrand is ~h^4/180 (1e-5 here), and the published
// Pocock and O'Brien-Fleming constants come out to 3 decimals
// (cpp/tests/canary_boundary_test.cpp).
constexpr double kStep = 0.2;
// A boundary above this is "never": the normal tail there is below 1e-300.
constexpr double kNever = 37.0;
// Boundaries are solved to this precision in z.
constexpr int kRootBits = 40;

double upper_tail(double x) { return 0.5 * std::erfc(x / std::sqrt(2.0)); }

// The sub-density of the score at one look over the paths that have not
// crossed yet, as Simpson-weighted point masses: sum(mass) = P(not crossed).
class Recursion {
 public:
  // P(first crossing at the next look) for boundary z at information `next`.
  double crossing(double z, double next) const {
    const double sd = std::sqrt(next - information_);
    const double score = z * std::sqrt(next);
    double total = 0.0;
    for (std::size_t j = 0; j < points_.size(); ++j)
      total += mass_[j] * upper_tail((score - points_[j]) / sd);
    return total;
  }

  // Moves to the next look, keeping the paths below boundary z. `spacing_sd`
  // is the smaller of this and the following increment's standard deviation.
  void advance(double z, double next, double spacing_sd) {
    const double sd = std::sqrt(next - information_);
    const double low = -kTail * std::sqrt(next);
    const double high = std::min(z, kTail) * std::sqrt(next);
    std::vector<double> points, mass;
    double spacing = 0.0;
    if (high > low) {
      int intervals = static_cast<int>(std::ceil((high - low) / (kStep * spacing_sd)));
      intervals += intervals % 2;  // Simpson needs an even number
      const double h = (high - low) / intervals;
      spacing = h;
      for (int i = 0; i <= intervals; ++i) {
        const double s = low + h * i;
        const double simpson = (i == 0 || i == intervals) ? 1.0 : (i % 2 ? 4.0 : 2.0);
        points.push_back(s);
        mass.push_back(simpson * h / 3.0 * density(s, sd));
      }
    }
    points_ = std::move(points);
    mass_ = std::move(mass);
    spacing_ = spacing;
    information_ = next;
  }

 private:
  // Density of the score at s: the previous masses convolved with N(0, sd^2).
  // The grid is uniform, so along it the kernel exp(-x^2 / 2) follows a
  // recurrence of two products (x_j = x_0 - j d): an exp per point only,
  // not per pair, which is most of the table's cost.
  double density(double s, double sd) const {
    constexpr double kReach = 8.5;  // kernel terms beyond 8.5 sd are below 1e-16
    constexpr double kInvSqrt2Pi = 0.3989422804014327;
    if (points_.empty()) return 0.0;  // every path crossed already
    const double x0 = (s - points_.front()) / sd;
    if (points_.size() == 1) return mass_.front() * std::exp(-0.5 * x0 * x0) * kInvSqrt2Pi / sd;
    const double d = spacing_ / sd;
    const auto last = static_cast<double>(points_.size() - 1);
    const double first = std::max(0.0, std::ceil((x0 - kReach) / d));
    const double end = std::min(last, std::floor((x0 + kReach) / d));
    if (first > end) return 0.0;
    double x = x0 - first * d;
    double kernel = std::exp(-0.5 * x * x);
    double ratio = std::exp(x * d - 0.5 * d * d);  // kernel(x - d) / kernel(x)
    const double ratio_step = std::exp(-d * d);
    double total = 0.0;
    for (auto j = static_cast<std::size_t>(first); j <= static_cast<std::size_t>(end); ++j) {
      total += mass_[j] * kernel;
      kernel *= ratio;
      ratio *= ratio_step;
    }
    return total * kInvSqrt2Pi / sd;
  }

  double information_ = 0.0;
  double spacing_ = 0.0;             // of the grid of points_
  std::vector<double> points_{0.0};  // before the first look: S = 0 surely
  std::vector<double> mass_{1.0};
};

void check_information(const std::vector<double>& information) {
  double previous = 0.0;
  for (std::size_t k = 0; k < information.size(); ++k) {
    if (!(information[k] > previous) || !std::isfinite(information[k]))
      throw InvalidInput(fmt::format("information at look {} is {} (must be finite and increase from 0)",
                                     k + 1, information[k]));
    previous = information[k];
  }
}

double spacing_sd(const std::vector<double>& information, std::size_t k) {
  const double before = k == 0 ? 0.0 : information[k - 1];
  double sd = std::sqrt(information[k] - before);
  if (k + 1 < information.size()) sd = std::min(sd, std::sqrt(information[k + 1] - information[k]));
  return sd;
}

// The boundary whose first-crossing probability at the next look is `target`.
double solve_boundary(const Recursion& recursion, double next, double target) {
  if (target <= 0.0) return kInfinity;
  auto excess = [&](double z) { return recursion.crossing(z, next) - target; };
  if (excess(kNever) >= 0.0) return kNever;
  if (excess(-kNever) <= 0.0) return -kNever;
  boost::math::tools::eps_tolerance<double> tolerance(kRootBits);
  std::uintmax_t iterations = 200;
  auto [low, high] = boost::math::tools::toms748_solve(excess, -kNever, kNever, tolerance, iterations);
  return 0.5 * (low + high);
}

}  // namespace

std::vector<double> crossing_probabilities(const std::vector<double>& information,
                                           const std::vector<double>& boundaries) {
  check_information(information);
  if (boundaries.size() != information.size())
    throw InvalidInput(fmt::format("{} boundaries for {} looks", boundaries.size(), information.size()));
  Recursion recursion;
  std::vector<double> cumulative;
  double crossed = 0.0;
  for (std::size_t k = 0; k < information.size(); ++k) {
    const double z = std::isinf(boundaries[k]) && boundaries[k] > 0 ? kNever : boundaries[k];
    crossed += recursion.crossing(z, information[k]);
    cumulative.push_back(std::min(1.0, crossed));
    recursion.advance(z, information[k], spacing_sd(information, k));
  }
  return cumulative;
}

std::vector<double> spending_boundaries(const std::vector<double>& information,
                                        const std::vector<double>& cumulative_alpha) {
  check_information(information);
  if (cumulative_alpha.size() != information.size())
    throw InvalidInput(
        fmt::format("{} spent budgets for {} looks", cumulative_alpha.size(), information.size()));
  Recursion recursion;
  std::vector<double> boundaries;
  double spent = 0.0;
  for (std::size_t k = 0; k < information.size(); ++k) {
    const double alpha = cumulative_alpha[k];
    if (!(alpha >= spent && alpha < 1.0))
      throw InvalidInput(fmt::format("spent budget at look {} is {} (must be in [{}, 1) and not decrease)",
                                     k + 1, alpha, spent));
    const double z = solve_boundary(recursion, information[k], alpha - spent);
    boundaries.push_back(z);
    spent = alpha;
    recursion.advance(std::min(z, kNever), information[k], spacing_sd(information, k));
  }
  return boundaries;
}

double pocock_spending(double alpha, double information_fraction) {
  const double t = std::clamp(information_fraction, 0.0, 1.0);
  return alpha * std::log1p((std::exp(1.0) - 1.0) * t);
}

namespace {

// The table's overall budgets, as the normal z of each (z = 0 is a budget of
// 0.5, 6.5 of 4e-11); boundaries are close to linear in it, so linear
// interpolation between neighbours 0.125 apart is within ~1e-3 in z.
constexpr double kLowestLevelZ = -1.0;
constexpr double kHighestLevelZ = 6.5;
constexpr double kLevelStep = 0.125;

SpendingTable build_table(int looks) {
  SpendingTable table;
  std::vector<double> information;
  for (int k = 1; k <= looks; ++k) information.push_back(static_cast<double>(k));
  Normal normal;
  for (double level = kLowestLevelZ; level <= kHighestLevelZ + 1e-9; level += kLevelStep) {
    const double alpha = cdf(complement(normal, level));
    std::vector<double> spent;
    for (int k = 1; k <= looks; ++k) spent.push_back(pocock_spending(alpha, static_cast<double>(k) / looks));
    table.level_z.push_back(level);
    table.boundaries.push_back(spending_boundaries(information, spent));
  }
  return table;
}

}  // namespace

std::shared_ptr<const SpendingTable> spending_table(int looks) {
  static std::mutex mutex;
  static std::map<int, std::shared_ptr<const SpendingTable>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[looks];
  if (!entry) entry = std::make_shared<const SpendingTable>(build_table(looks));
  return entry;
}

double SpendingTable::p_value(double z, int look) const {
  const std::size_t k = static_cast<std::size_t>(look - 1);
  if (z < boundaries.front()[k]) return 1.0;  // not even the loosest budget's boundary
  std::size_t i = 1;
  while (i + 1 < level_z.size() && boundaries[i][k] <= z) ++i;
  // Interpolate (or, past the strictest budget, extrapolate) between i-1 and i.
  const double b0 = boundaries[i - 1][k], b1 = boundaries[i][k];
  const double level =
      b1 > b0 ? level_z[i - 1] + (z - b0) / (b1 - b0) * (level_z[i] - level_z[i - 1]) : level_z[i];
  Normal normal;
  return std::min(1.0, cdf(complement(normal, level)));
}

}  // namespace cd::canary
