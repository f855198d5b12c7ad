// DurationHistory's table: test ids interned once each in an open-addressing
// index, their durations in one column per run.
#include "shard_history.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "cd/error.hpp"
#include "cd/shard.hpp"

namespace cd::shard {

namespace {

// At most half the slots in use: linear probing stays short.
constexpr std::size_t kSlotsPerId = 2;
// Ids are copied into blocks of this size (a larger id gets its own).
constexpr std::size_t kTextBlockBytes = 1 << 20;
// The index keeps a test's position + 1 in 32 bits.
constexpr std::size_t kMaxTests = std::numeric_limits<std::uint32_t>::max() - 1;

constexpr std::uint64_t kIndexMask = 0xffffffffu;

std::uint64_t hash_of(std::string_view id) { return std::hash<std::string_view>{}(id); }

std::uint64_t tag_of(std::uint64_t hash) { return hash & ~kIndexMask; }

}  // namespace

void DurationHistory::Table::begin_run(std::size_t expected_tests) {
  // Runs of one suite mostly share their tests: room for this run's as if
  // none were known, and more only as new ones come.
  grow_slots(std::max(ids.size(), expected_tests));
  ids.reserve(std::max(ids.size(), expected_tests));
  seconds.emplace_back(ids.size(), kAbsent);
  seconds.back().reserve(ids.capacity());
  order.emplace_back();
  order.back().reserve(expected_tests);
  previous_ = kNotFound;
}

void DurationHistory::Table::add(std::string_view id, double seconds_in_run) {
  const std::uint32_t test = intern(id);
  auto& column = seconds.back();
  if (test >= column.size()) column.resize(test + 1, kAbsent);
  if (std::isnan(column[test])) order.back().push_back(test);
  column[test] = seconds_in_run;
}

void DurationHistory::Table::finish() {
  for (auto& column : seconds) column.resize(ids.size(), kAbsent);
}

std::uint32_t DurationHistory::Table::intern(std::string_view id) {
  const std::size_t guess = previous_ + 1;  // kNotFound + 1 is 0
  if (guess < ids.size() && ids[guess] == id) return static_cast<std::uint32_t>(previous_ = guess);
  if (ids.size() >= kMaxTests) throw InvalidInput(fmt::format("more than {} distinct test ids", kMaxTests));
  if ((ids.size() + 1) * kSlotsPerId > slots_.size()) grow_slots(ids.size() + 1);
  const std::uint64_t hash = hash_of(id);
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t slot = hash & mask;; slot = (slot + 1) & mask) {
    const std::uint64_t entry = slots_[slot];
    if (entry == 0) {
      slots_[slot] = tag_of(hash) | (ids.size() + 1);
      ids.push_back(keep(id));
      return static_cast<std::uint32_t>(previous_ = ids.size() - 1);
    }
    const std::size_t test = (entry & kIndexMask) - 1;
    if (tag_of(entry) == tag_of(hash) && ids[test] == id) return static_cast<std::uint32_t>(previous_ = test);
  }
}

std::size_t DurationHistory::Table::find(std::string_view id) const {
  if (slots_.empty()) return kNotFound;
  const std::uint64_t hash = hash_of(id);
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t slot = hash & mask;; slot = (slot + 1) & mask) {
    const std::uint64_t entry = slots_[slot];
    if (entry == 0) return kNotFound;
    const std::size_t test = (entry & kIndexMask) - 1;
    if (tag_of(entry) == tag_of(hash) && ids[test] == id) return test;
  }
}

// Room for `min_ids` ids at the load the index keeps; every id placed anew.
void DurationHistory::Table::grow_slots(std::size_t min_ids) {
  std::size_t size = std::max<std::size_t>(slots_.size(), 16);
  while (size < min_ids * kSlotsPerId) size *= 2;
  if (size == slots_.size()) return;
  slots_.assign(size, 0);
  const std::size_t mask = size - 1;
  for (std::size_t test = 0; test < ids.size(); ++test) {
    const std::uint64_t hash = hash_of(ids[test]);
    std::size_t slot = hash & mask;
    while (slots_[slot] != 0) slot = (slot + 1) & mask;
    slots_[slot] = tag_of(hash) | (test + 1);
  }
}

std::string_view DurationHistory::Table::keep(std::string_view text) {
  if (text.size() > block_left_) {
    const std::size_t size = std::max(kTextBlockBytes, text.size());
    text_blocks_.push_back(std::make_unique<char[]>(size));
    block_free_ = text_blocks_.back().get();
    block_left_ = size;
  }
  std::memcpy(block_free_, text.data(), text.size());
  std::string_view kept(block_free_, text.size());
  block_free_ += text.size();
  block_left_ -= text.size();
  return kept;
}

// ------------------------------------------------------------ the accessors

DurationHistory::DurationHistory(std::unique_ptr<Table> table) : table_(std::move(table)) {}
DurationHistory::DurationHistory(DurationHistory&&) noexcept = default;
DurationHistory& DurationHistory::operator=(DurationHistory&&) noexcept = default;
DurationHistory::~DurationHistory() = default;

std::size_t DurationHistory::runs() const { return table_->seconds.size(); }

std::size_t DurationHistory::tests() const { return table_->ids.size(); }

std::string_view DurationHistory::id(std::size_t test) const { return table_->ids.at(test); }

std::optional<std::size_t> DurationHistory::find(std::string_view id) const {
  const std::size_t test = table_->find(id);
  if (test == Table::kNotFound) return std::nullopt;
  return test;
}

std::optional<double> DurationHistory::seconds(std::size_t run, std::size_t test) const {
  const double value = table_->seconds.at(run).at(test);
  if (std::isnan(value)) return std::nullopt;
  return value;
}

const std::vector<std::uint32_t>& DurationHistory::tests_of(std::size_t run) const {
  return table_->order.at(run);
}

}  // namespace cd::shard
