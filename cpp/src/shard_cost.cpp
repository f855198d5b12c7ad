// The dispatcher's cost model: what a batch costs beyond its tests, per
// worker, and how far guessed estimates are from the observed durations.
#include <algorithm>

#include "cd/shard.hpp"

namespace cd::shard {

BatchCostModel::BatchCostModel(double prior_overhead_s)
    : prior_overhead_s_(std::max(0.0, prior_overhead_s)) {}

void BatchCostModel::observe_batch(const std::string& worker, double wall_s, double tests_s) {
  auto& observed = by_worker_[worker];
  observed.overhead_sum_s += std::max(0.0, wall_s - tests_s);
  ++observed.batches;
}

void BatchCostModel::observe_guessed(double estimated_s, double observed_s) {
  guessed_estimated_s_ += estimated_s;
  guessed_observed_s_ += observed_s;
}

double BatchCostModel::overhead_s(const std::string& worker) const {
  if (auto found = by_worker_.find(worker); found != by_worker_.end()) {
    return found->second.overhead_sum_s / static_cast<double>(found->second.batches);
  }
  return overhead_s();
}

double BatchCostModel::overhead_s() const {
  if (by_worker_.empty()) return prior_overhead_s_;
  double sum = 0.0;
  for (const auto& [worker, observed] : by_worker_) {
    sum += observed.overhead_sum_s / static_cast<double>(observed.batches);
  }
  return sum / static_cast<double>(by_worker_.size());
}

std::unordered_map<std::string, double> BatchCostModel::overhead_by_worker() const {
  std::unordered_map<std::string, double> overheads;
  for (const auto& [worker, observed] : by_worker_) overheads.emplace(worker, overhead_s(worker));
  return overheads;
}

double BatchCostModel::guess_scale() const {
  // Tests whose guess was 0 s tell nothing about the ratio.
  if (guessed_estimated_s_ <= 0.0) return 1.0;
  return guessed_observed_s_ / guessed_estimated_s_;
}

}  // namespace cd::shard
