// The static plan: N shards, longest unit first onto the least-loaded shard
// (LPT), then a move/swap pass between the fullest shard and the emptiest.
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <queue>
#include <tuple>

#include "cd/error.hpp"
#include "cd/shard.hpp"
#include "shard_units.hpp"

namespace cd::shard {

namespace {

double longest_test(const std::vector<TestEstimate>& tests) {
  double longest = 0.0;
  for (const auto& test : tests) longest = std::max(longest, test.seconds);
  return longest;
}

struct PlanShard {
  std::vector<std::size_t> units;
  double load = 0.0;
};

// Longest processing time first: each unit onto the least-loaded shard,
// ties to the shard with fewer units, then the lower index.
std::vector<PlanShard> assign_longest_first(const std::vector<Unit>& units, std::size_t shard_count) {
  using Key = std::tuple<double, std::size_t, std::size_t>;  // load, units, shard
  std::priority_queue<Key, std::vector<Key>, std::greater<>> least_loaded;
  for (std::size_t shard = 0; shard < shard_count; ++shard) least_loaded.emplace(0.0, 0, shard);
  std::vector<PlanShard> shards(shard_count);
  for (std::size_t unit = 0; unit < units.size(); ++unit) {
    auto [load, count, shard] = least_loaded.top();
    least_loaded.pop();
    shards[shard].units.push_back(unit);
    shards[shard].load = load + units[unit].estimate_s;
    least_loaded.emplace(shards[shard].load, count + 1, shard);
  }
  return shards;
}

// Below this, a change of makespan is rounding noise, not an improvement.
constexpr double kImprovementEpsilon = 1e-9;
// Partners tried for the fullest shard per pass, emptiest first: past the
// first few, a partner's gap is too small to help.
constexpr std::size_t kPartnersPerPass = 8;

struct Exchange {
  std::ptrdiff_t from_full = -1;   // position in the full shard's units
  std::ptrdiff_t from_other = -1;  // position in the partner's units, -1 for a move
  double pair_max = 0.0;
};

// The best move or swap between `full` and `other`: it shifts d = a - b from
// full to other, and the pair's new maximum is max(full - d, other + d).
Exchange best_exchange(const PlanShard& full, const PlanShard& other, const std::vector<Unit>& units) {
  Exchange best;
  best.pair_max = full.load;
  auto consider = [&](double shift, std::ptrdiff_t a, std::ptrdiff_t b) {
    double pair_max = std::max(full.load - shift, other.load + shift);
    if (pair_max < best.pair_max - kImprovementEpsilon) best = {a, b, pair_max};
  };
  std::vector<std::pair<double, std::ptrdiff_t>> partner_sizes;
  partner_sizes.reserve(other.units.size());
  for (std::size_t b = 0; b < other.units.size(); ++b) {
    partner_sizes.emplace_back(units[other.units[b]].estimate_s, static_cast<std::ptrdiff_t>(b));
  }
  std::sort(partner_sizes.begin(), partner_sizes.end());
  const double ideal_shift = (full.load - other.load) / 2.0;
  for (std::size_t a = 0; a < full.units.size(); ++a) {
    double size = units[full.units[a]].estimate_s;
    consider(size, static_cast<std::ptrdiff_t>(a), -1);
    // Swap partners whose size is nearest to size - ideal_shift.
    auto nearest = std::lower_bound(partner_sizes.begin(), partner_sizes.end(),
                                    std::make_pair(size - ideal_shift, std::ptrdiff_t{-1}));
    for (auto candidate : {nearest, nearest == partner_sizes.begin() ? nearest : std::prev(nearest)}) {
      if (candidate != partner_sizes.end()) {
        consider(size - candidate->first, static_cast<std::ptrdiff_t>(a), candidate->second);
      }
    }
  }
  return best;
}

void apply_exchange(PlanShard& full, PlanShard& other, const Exchange& exchange,
                    const std::vector<Unit>& units) {
  auto moved = full.units[static_cast<std::size_t>(exchange.from_full)];
  if (exchange.from_other >= 0) {
    auto swapped = other.units[static_cast<std::size_t>(exchange.from_other)];
    full.units[static_cast<std::size_t>(exchange.from_full)] = swapped;
    other.units[static_cast<std::size_t>(exchange.from_other)] = moved;
    double shift = units[moved].estimate_s - units[swapped].estimate_s;
    full.load -= shift;
    other.load += shift;
  } else {
    full.units.erase(full.units.begin() + exchange.from_full);
    other.units.push_back(moved);
    full.load -= units[moved].estimate_s;
    other.load += units[moved].estimate_s;
  }
}

// Moves and swaps between the fullest shard and the emptiest ones, while they
// lower the fullest shard. A move never empties a shard of its last unit, so
// the no-empty-shard guarantee of LPT holds.
void improve(std::vector<PlanShard>& shards, const std::vector<Unit>& units, int max_passes) {
  std::vector<std::size_t> order(shards.size());
  for (int pass = 0; pass < max_passes; ++pass) {
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](auto a, auto b) { return std::tie(shards[a].load, a) < std::tie(shards[b].load, b); });
    PlanShard& full = shards[order.back()];
    bool improved = false;
    for (std::size_t k = 0; k < std::min(kPartnersPerPass, order.size() - 1) && !improved; ++k) {
      PlanShard& other = shards[order[k]];
      auto exchange = best_exchange(full, other, units);
      bool would_empty = exchange.from_other < 0 && full.units.size() == 1;
      if (exchange.from_full >= 0 && !would_empty) {
        apply_exchange(full, other, exchange, units);
        improved = true;
      }
    }
    if (!improved) return;
  }
}

}  // namespace

double Plan::makespan_s() const {
  double makespan = 0.0;
  for (const auto& shard : shards) makespan = std::max(makespan, shard.estimate_s);
  return makespan;
}

Plan plan_static(const std::vector<TestEstimate>& tests, const PlanOptions& options) {
  if (options.shards < 1)
    throw InvalidInput(fmt::format("shards must be at least 1, got {}", options.shards));
  check_estimates(tests);
  const auto shard_count = static_cast<std::size_t>(options.shards);
  const double total = total_estimate(tests);
  const double share = total / static_cast<double>(shard_count);

  auto units = make_units(tests, options.split_file_fraction * share, shard_count);
  auto shards = assign_longest_first(units, shard_count);
  improve(shards, units, options.max_improvement_passes);

  Plan plan;
  plan.lower_bound_s = std::max(longest_test(tests), share);
  plan.shards.resize(shard_count);
  for (std::size_t shard = 0; shard < shard_count; ++shard) {
    auto& unit_indices = shards[shard].units;
    // Within a shard, longest first too: a failure in a long file shows early.
    std::sort(unit_indices.begin(), unit_indices.end());
    for (auto unit : unit_indices) {
      for (auto test : units[unit].tests) plan.shards[shard].tests.push_back(tests[test].id);
      plan.shards[shard].estimate_s += units[unit].estimate_s;
    }
  }
  return plan;
}

}  // namespace cd::shard
