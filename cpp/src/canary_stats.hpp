// The canary judge's statistics shared between the fixed-look tests
// (canary_stats.cpp) and the judge (canary_judge.cpp): Boost's Student's t and
// normal distributions and the t test behind Welch and the one-sample case.
// Internal to cpp/src; the public interface is cd/canary.hpp.
#pragma once

#include <boost/math/distributions/normal.hpp>
#include <boost/math/distributions/students_t.hpp>
#include <limits>
#include <optional>

#include "cd/canary.hpp"

namespace cd::canary {

inline constexpr double kInfinity = std::numeric_limits<double>::infinity();

// Boost computes double functions in long double by default; double is
// accurate to ~1e-15 here and several times faster (a look over 1,000 hosts
// and 20 metrics is dominated by these calls).
using Policy = boost::math::policies::policy<boost::math::policies::promote_double<false>>;
using StudentsT = boost::math::students_t_distribution<double, Policy>;
using Normal = boost::math::normal_distribution<double, Policy>;

// The t test behind both designs: `variance_b` = 0 and `n_b` = 0 is the
// one-sample case (df = n_a - 1), otherwise Welch-Satterthwaite, unless
// `df` gives the degrees of freedom of the standard error's estimate.
TTest t_test(double difference, double variance_a, double n_a, double variance_b, double n_b, Direction worse,
             double margin, double confidence, std::optional<double> df = std::nullopt);

}  // namespace cd::canary
