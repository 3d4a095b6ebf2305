#pragma once
// RaftLog: the in-memory Raft log of one node, as etcd keeps its log in MemoryStorage
// next to the WAL. It holds every entry after the compaction point, knows which prefix
// is stable (persisted), committed and applied, and the latest snapshot.
//
// Invariant: offset < first entry; applied <= committed <= last; stable <= last;
//            offset <= snapshot.index when a snapshot exists, and entries are contiguous.
// Positions: entries_[k] has index offset_ + 1 + k.

#include <algorithm>
#include <deque>
#include <optional>
#include <vector>

#include "core/raft/message.h"

namespace keel::raft {

class RaftLog {
 public:
  // Starts from what storage recovered: an optional snapshot, the entries after it
  // (contiguous), and the persisted commit index. Everything given is stable.
  RaftLog(std::optional<Snapshot> snapshot, std::vector<Entry> entries, LogIndex commit);

  LogIndex FirstIndex() const { return offset_ + 1; }
  LogIndex LastIndex() const { return offset_ + entries_.size(); }
  Term LastTerm() const;
  LogIndex committed() const { return committed_; }
  LogIndex applied() const { return applied_; }
  LogIndex stable() const { return stable_; }
  const std::optional<Snapshot>& snapshot() const { return snapshot_; }

  // The term of the entry at `i`, or nullopt if `i` is compacted away or beyond the end.
  // Index 0 (the empty prefix) has term 0.
  std::optional<Term> TermAt(LogIndex i) const;
  bool MatchTerm(LogIndex i, Term t) const;

  // Raft §5.4.1: a log ending in (last_term, last_index) is at least as up-to-date as ours.
  bool IsUpToDate(LogIndex last_index, Term last_term) const;

  // Follower side of AppendEntries. If (prev_index, prev_term) matches, removes entries
  // that conflict with `entries`, appends the new ones and returns the last index that
  // the leader's message proves matches. Returns nullopt on a mismatch. Sets
  // *conflict_below_commit when the leader asks to overwrite a committed entry (a Raft
  // safety violation by the sender): nothing changes in that case.
  std::optional<LogIndex> MaybeAppend(LogIndex prev_index, Term prev_term,
                                      std::vector<Entry>&& entries,
                                      bool* conflict_below_commit);

  // Leader side: appends entries that follow LastIndex(). Returns the new last index.
  LogIndex Append(std::vector<Entry>&& entries);

  // etcd's findConflictByTerm: the largest index <= `index` whose term is <= `term`
  // (or the first index we cannot see), with its term. Used for fast backtracking.
  std::pair<LogIndex, Term> FindConflictByTerm(LogIndex index, Term term) const;

  // Entries in [lo, hi) up to max_bytes (always at least one if any). Requires:
  // FirstIndex() <= lo <= hi <= LastIndex() + 1.
  std::vector<Entry> Slice(LogIndex lo, LogIndex hi, size_t max_bytes) const;

  // Entries not yet persisted: (stable, last].
  std::vector<Entry> UnstableEntries() const;
  // Entries committed but not applied: (applied, committed], at most max_bytes.
  std::vector<Entry> NextCommitted(size_t max_bytes) const;
  bool HasNextCommitted() const { return committed_ > std::max(applied_, offset_); }

  void CommitTo(LogIndex i);   // never moves backwards; requires i <= LastIndex()
  void AppliedTo(LogIndex i);  // requires applied <= i <= committed
  void StableTo(LogIndex i);   // requires i <= LastIndex()

  // Replaces the whole log by `snapshot` (follower install): committed = snapshot.index.
  void Restore(Snapshot snapshot);
  // The host made a snapshot of the applied state. Requires: index <= applied.
  void SetSnapshot(Snapshot snapshot);
  // Drops entries at or below `through`. Requires: through <= applied and <= stable.
  void CompactTo(LogIndex through);

  void CheckInvariants() const;

 private:
  const Entry& At(LogIndex i) const { return entries_[i - offset_ - 1]; }
  void TruncateAfter(LogIndex i);

  std::deque<Entry> entries_;
  LogIndex offset_;   // index of the entry before entries_.front()
  Term offset_term_;  // its term
  LogIndex committed_;
  LogIndex applied_;
  LogIndex stable_;
  std::optional<Snapshot> snapshot_;
};

}  // namespace keel::raft
