// The judge's side of the group-sequential boundary: boundaries of the
// Pocock-type spending for a range of overall budgets, turned into a p-value
// valid over the looks of a window. Internal to cpp/src; the public
// interface is cd/canary.hpp.
#pragma once

#include <memory>
#include <vector>

#include "cd/canary.hpp"

namespace cd::canary {

// For each overall budget (as its normal z, ascending: budgets descending),
// the boundaries of looks 1..K of equal information.
struct SpendingTable {
  std::vector<double> level_z;
  std::vector<std::vector<double>> boundaries;  // [budget][look - 1]

  // The smallest overall budget whose boundary at `look` (1-based) a z of
  // the look statistic reaches, interpolated between the table's budgets.
  double p_value(double z, int look) const;
};

// Computed once per number of looks in this process (thread-safe).
std::shared_ptr<const SpendingTable> spending_table(int looks);

}  // namespace cd::canary
