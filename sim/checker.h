#pragma once
// RaftChecker: the Raft paper's safety properties (Figure 3), checked on every run from
// what the nodes persist, commit and apply. One class holds them all (as LogCabin keeps
// its invariants in one place); each violation is a sentence naming nodes and indexes.
//
//  Election Safety       at most one leader per term.
//  Leader Append-Only    a leader never overwrites or deletes entries in its log.
//  Log Matching          two logs with an entry of the same index and term are identical
//                        up to it. Checked with a hash chain: every entry's chain hash
//                        covers all entries before it, and (index, term) -> chain hash
//                        must be a function across all nodes and all time.
//  Leader Completeness   a newly elected leader holds every entry committed before.
//  State Machine Safety  no two nodes apply different commands at one index.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "core/raft/raft.h"

namespace keel::sim {

class RaftChecker {
 public:
  explicit RaftChecker(int node_count);

  // node: 0-based. `is_leader`: the node's role when it persisted these entries.
  void OnAppend(int node, bool is_leader, Term leader_term, std::span<const raft::Entry> entries);
  void OnSnapshotInstalled(int node, const raft::Snapshot& snapshot);
  void OnRestart(int node, const raft::RecoveredState& recovered);
  // After every event on a node: its role and term, at once (leadership acts before
  // any fsync: a leader's first appends leave before its own write is durable).
  void ObserveRole(int node, raft::Role role, Term term);
  // Its commit index, once the event's fsync completed (a crash first undoes it).
  void ObserveCommit(int node, LogIndex commit);
  // The node applied request `request_id` at `index` (0: a command no client sent).
  void OnApply(int node, LogIndex index, uint64_t request_id);

  const std::vector<std::string>& violations() const { return violations_; }
  LogIndex max_committed() const { return max_committed_; }

 private:
  struct NodeLog {
    LogIndex base;                // chain[0] is the chain hash at index `base`
    std::vector<uint64_t> chain;  // chain hashes of indexes base, base+1, ...
    LogIndex last() const { return base + (chain.size() - 1); }
    std::optional<uint64_t> HashAt(LogIndex i) const;
  };

  void Violation(std::string text);
  void ResetLog(int node, LogIndex base, uint64_t base_hash);
  std::optional<uint64_t> KnownHash(LogIndex index, Term term) const;
  void ForgetLostEntries(int node, const NodeLog& before);

  std::vector<NodeLog> logs_;
  std::vector<LogIndex> commit_seen_;
  std::vector<raft::Role> role_seen_;
  std::vector<Term> term_seen_;
  absl::btree_map<std::pair<uint64_t, uint64_t>, uint64_t> chain_by_entry_;  // (index, term)
  absl::btree_map<uint64_t, uint64_t> committed_chain_;   // index -> chain hash
  absl::btree_map<uint64_t, NodeId> leader_of_term_;
  absl::btree_map<uint64_t, uint64_t> committed_by_term_;  // term -> highest index
  absl::btree_map<uint64_t, uint64_t> applied_request_;   // index -> request id
  LogIndex max_committed_;
  std::vector<std::string> violations_;
};

}  // namespace keel::sim
