#include "sim/checker.h"

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "sim/hash.h"

namespace keel::sim {

RaftChecker::RaftChecker(int node_count)
    : logs_(node_count), commit_seen_(node_count), role_seen_(node_count, raft::Role::kFollower),
      term_seen_(node_count) {
  for (NodeLog& l : logs_) l.chain = {0};
}

std::optional<uint64_t> RaftChecker::NodeLog::HashAt(LogIndex i) const {
  if (i < base || i > last()) return std::nullopt;
  return chain[i - base];
}

void RaftChecker::Violation(std::string text) {
  if (violations_.size() < 20) violations_.push_back(std::move(text));
}

std::optional<uint64_t> RaftChecker::KnownHash(LogIndex index, Term term) const {
  if (index.value == 0) return 0;
  auto it = chain_by_entry_.find({index.value, term.value});
  if (it == chain_by_entry_.end()) return std::nullopt;
  return it->second;
}

void RaftChecker::ResetLog(int node, LogIndex base, uint64_t base_hash) {
  logs_[node].base = base;
  logs_[node].chain = {base_hash};
}

void RaftChecker::OnAppend(int node, bool is_leader, Term leader_term,
                           std::span<const raft::Entry> entries) {
  if (entries.empty()) return;
  NodeLog& log = logs_[node];
  const LogIndex first = entries.front().index;
  KEEL_ASSERT(first > log.base && first <= log.last() + 1);
  if (is_leader && first <= log.last()) {
    Violation(absl::StrCat("Leader Append-Only: leader n", node + 1, " of term ",
                           leader_term.value, " overwrote its log from index ", first.value,
                           " (last ", log.last().value, ")"));
  }
  log.chain.resize(first - log.base);
  for (const raft::Entry& e : entries) {
    const uint64_t h = ChainHash(log.chain.back(), e.term.value, e.data);
    log.chain.push_back(h);
    auto [it, inserted] = chain_by_entry_.try_emplace({e.index.value, e.term.value}, h);
    if (!inserted && it->second != h) {
      Violation(absl::StrCat("Log Matching: n", node + 1, " holds an entry at index ",
                             e.index.value, " term ", e.term.value,
                             " whose log differs from another node's at that entry"));
    }
  }
}

void RaftChecker::OnSnapshotInstalled(int node, const raft::Snapshot& snapshot) {
  std::optional<uint64_t> h = KnownHash(snapshot.index, snapshot.term);
  auto committed = committed_chain_.find(snapshot.index.value);
  if (!h.has_value() || (committed != committed_chain_.end() && committed->second != *h)) {
    Violation(absl::StrCat("State Machine Safety: n", node + 1, " installed a snapshot at ",
                           snapshot.index.value, " term ", snapshot.term.value,
                           " that matches no committed entry"));
  }
  ResetLog(node, snapshot.index, h.value_or(0));
}

void RaftChecker::OnRestart(int node, const raft::RecoveredState& recovered) {
  LogIndex base;
  uint64_t h = 0;
  if (recovered.snapshot) {
    base = recovered.snapshot->index;
    h = KnownHash(base, recovered.snapshot->term).value_or(0);
  }
  const NodeLog before = std::move(logs_[node]);
  ResetLog(node, base, h);
  NodeLog& log = logs_[node];
  for (const raft::Entry& e : recovered.entries) {
    log.chain.push_back(ChainHash(log.chain.back(), e.term.value, e.data));
  }
  ForgetLostEntries(node, before);
  commit_seen_[node] = recovered.hard_state.commit;
  role_seen_[node] = raft::Role::kFollower;
}

void RaftChecker::ForgetLostEntries(int node, const NodeLog& before) {
  // Entries the node had staged but that its crash took (never durable) are forgotten
  // if nobody else holds them and they were not committed: only then may the same index
  // and term come back with other contents. That happens when a single-node cluster's
  // election (its new term) and first entries share an fsync that a crash interrupts:
  // it restarts in the old term, and wins the same term again.
  for (LogIndex i = before.base + 1; i <= before.last(); i = i + 1) {
    const uint64_t lost = *before.HashAt(i);
    if (logs_[node].HashAt(i) == lost) continue;  // still held after the restart
    auto committed = committed_chain_.find(i.value);
    if (committed != committed_chain_.end() && committed->second == lost) continue;
    bool held = false;
    for (size_t other = 0; other < logs_.size() && !held; ++other) {
      held = static_cast<int>(other) != node && logs_[other].HashAt(i) == lost;
    }
    if (held) continue;
    for (auto it = chain_by_entry_.lower_bound({i.value, 0});
         it != chain_by_entry_.end() && it->first.first == i.value;) {
      it = it->second == lost ? chain_by_entry_.erase(it) : std::next(it);
    }
  }
}

void RaftChecker::ObserveRole(int node, raft::Role role, Term term) {
  const NodeLog& log = logs_[node];
  const NodeId id(node + 1);
  if (role == raft::Role::kLeader &&
      (role_seen_[node] != raft::Role::kLeader || term_seen_[node] != term)) {
    auto [it, inserted] = leader_of_term_.try_emplace(term.value, id);
    if (!inserted && it->second != id) {
      Violation(absl::StrCat("Election Safety: n", it->second.value, " and n", node + 1,
                             " are both leaders of term ", term.value));
    }
    // Leader Completeness: the new leader holds the last entry committed in an earlier
    // term (and so, by Log Matching, every committed entry before it). A leader of an
    // older term (one that wakes from a pause, say) owes nothing to later commits.
    LogIndex must_hold;
    for (auto it = committed_by_term_.begin();
         it != committed_by_term_.end() && it->first < term.value; ++it) {
      must_hold = std::max(must_hold, LogIndex(it->second));
    }
    if (must_hold > log.base) {
      std::optional<uint64_t> mine = log.HashAt(must_hold);
      if (!mine || *mine != committed_chain_.at(must_hold.value)) {
        Violation(absl::StrCat("Leader Completeness: n", node + 1, " became leader of term ",
                               term.value, " without entry ", must_hold.value,
                               " committed in an earlier term"));
      }
    }
  }
  role_seen_[node] = role;
  term_seen_[node] = term;
}

void RaftChecker::ObserveCommit(int node, LogIndex commit) {
  const NodeLog& log = logs_[node];
  const Term term = term_seen_[node];
  // Newly committed entries: one committed entry per index, everywhere.
  for (LogIndex i = commit_seen_[node] + 1; i <= commit; ++i) {
    std::optional<uint64_t> h = log.HashAt(i);
    if (!h) continue;  // below a snapshot: checked when the snapshot was installed
    auto [it, inserted] = committed_chain_.try_emplace(i.value, *h);
    if (!inserted && it->second != *h) {
      Violation(absl::StrCat("State Machine Safety: n", node + 1,
                             " committed a different entry at index ", i.value));
    }
    if (i > max_committed_) max_committed_ = i;
    // The term in which the entry was committed is at most the term of the first node
    // seen to know it (a leader knows its commits before its followers do).
    if (inserted) {
      uint64_t& at_term = committed_by_term_[term.value];
      at_term = std::max(at_term, i.value);
    }
  }
  if (commit > commit_seen_[node]) commit_seen_[node] = commit;
}

void RaftChecker::OnApply(int node, LogIndex index, uint64_t request_id) {
  auto [it, inserted] = applied_request_.try_emplace(index.value, request_id);
  if (!inserted && it->second != request_id) {
    Violation(absl::StrCat("State Machine Safety: n", node + 1, " applied request ", request_id,
                           " at index ", index.value, " where another node applied request ",
                           it->second));
  }
}

}  // namespace keel::sim
