#include "sim/history.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/assert.h"

namespace keel::sim {
namespace {

std::string Seconds(Nanos t) {
  return absl::StrFormat("%.6fs", static_cast<double>(t.count()) / 1e9);
}

}  // namespace

size_t ClientHistory::Begin(Request request) {
  KEEL_ASSERT(request.outcome == Outcome::kPending);
  requests_.push_back(std::move(request));
  ++pending_;
  return requests_.size() - 1;
}

bool ClientHistory::Resolve(size_t id, Outcome outcome, size_t read_length, Nanos end) {
  KEEL_ASSERT(id < requests_.size() && outcome != Outcome::kPending);
  Request& r = requests_[id];
  if (r.outcome != Outcome::kPending) return false;
  --pending_;
  r.outcome = outcome;
  r.end = end;
  r.read_length = read_length;
  return true;
}

std::vector<std::string> ClientHistory::Check(
    const std::vector<server::Register::Value>& reference) const {
  std::vector<std::string> failures;
  absl::btree_map<std::string, size_t> position;
  for (size_t k = 0; k < reference.size(); ++k) position[reference[k].data] = k;
  for (const Request& r : requests_) {
    if (!r.write) continue;
    const bool present = position.contains(r.value);
    if (r.outcome == Outcome::kOk && !present) {
      failures.push_back(
          absl::StrCat("Durability: acknowledged write ", r.value, " is not in the register"));
    }
    if (r.outcome == Outcome::kFailed && present) {
      failures.push_back(
          absl::StrCat("Integrity: write ", r.value, " failed definitely but was applied"));
    }
  }
  if (!failures.empty()) return failures;  // the order checks need every acked write
  CheckLinearizable(reference, position, &failures);
  return failures;
}

void ClientHistory::CheckLinearizable(const std::vector<server::Register::Value>& reference,
                                      const absl::btree_map<std::string, size_t>& position,
                                      std::vector<std::string>* failures) const {
  // Linearizability of the append-only register. Every successful operation proves a
  // prefix of the final register existed when it took effect: a write at position p
  // proves p + 1 values, a read of length L proves L. An operation that starts after
  // another ended must take effect later, so it must see at least that prefix: a later
  // write lands at a position >= it, a later read returns a length >= it. Conversely a
  // read of length L must not include a write that started after the read ended.
  auto seen = [&](const Request& r) -> size_t {
    return r.write ? position.at(r.value) + 1 : r.read_length;
  };
  std::vector<size_t> ok_by_end;
  for (size_t id = 0; id < requests_.size(); ++id) {
    if (requests_[id].outcome == Outcome::kOk) ok_by_end.push_back(id);
  }
  std::sort(ok_by_end.begin(), ok_by_end.end(), [&](size_t x, size_t y) {
    return requests_[x].end != requests_[y].end ? requests_[x].end < requests_[y].end : x < y;
  });
  std::vector<size_t> seen_max;  // over the prefix of ok_by_end
  for (size_t id : ok_by_end) {
    seen_max.push_back(std::max(seen_max.empty() ? 0 : seen_max.back(), seen(requests_[id])));
  }
  std::vector<Nanos> prefix_start_max(reference.size() + 1, Nanos(INT64_MIN));
  absl::btree_map<std::string, Nanos> start_of;
  for (const Request& r : requests_) {
    if (r.write) start_of[r.value] = r.start;
  }
  for (size_t k = 0; k < reference.size(); ++k) {
    auto it = start_of.find(reference[k].data);
    const Nanos s = it == start_of.end() ? Nanos(INT64_MAX) : it->second;
    prefix_start_max[k + 1] = std::max(prefix_start_max[k], s);
  }
  for (size_t id : ok_by_end) {
    const Request& r = requests_[id];
    // Operations that ended strictly before r started.
    const auto cut = std::lower_bound(ok_by_end.begin(), ok_by_end.end(), r.start,
        [&](size_t other, Nanos t) { return requests_[other].end < t; });
    const size_t count = static_cast<size_t>(cut - ok_by_end.begin());
    const size_t must_see = count == 0 ? 0 : seen_max[count - 1];
    if (r.write && position.at(r.value) < must_see) {
      failures->push_back(absl::StrCat("Linearizability: write ", r.value, " started at ",
                        Seconds(r.start), " landed before a prefix of ", must_see,
                        " values that an earlier operation had already seen"));
      return;
    }
    if (!r.write && r.read_length < must_see) {
      failures->push_back(absl::StrCat("Linearizability: read at n", r.node + 1, " started at ",
                        Seconds(r.start), " saw ", r.read_length,
                        " values; an operation that ended before it saw ", must_see));
      return;
    }
    if (!r.write &&
        (r.read_length > reference.size() || prefix_start_max[r.read_length] > r.end)) {
      failures->push_back(absl::StrCat("Linearizability: read at n", r.node + 1, " ended at ",
                        Seconds(r.end), " saw a write that started after it"));
      return;
    }
  }
}

}  // namespace keel::sim
