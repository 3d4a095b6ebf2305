#include "core/raft/raft_log.h"

#include <algorithm>

#include "core/assert.h"

namespace keel::raft {

RaftLog::RaftLog(std::optional<Snapshot> snapshot, std::vector<Entry> entries,
                 LogIndex commit) {
  if (snapshot) {
    offset_ = snapshot->index;
    offset_term_ = snapshot->term;
    snapshot_ = std::move(snapshot);
  }
  // Requires (storage validates it on load): entries follow the snapshot contiguously.
  for (Entry& e : entries) {
    KEEL_ASSERT(e.index == LastIndex() + 1);
    entries_.push_back(std::move(e));
  }
  committed_ = std::clamp(commit, offset_, LastIndex());
  applied_ = offset_;
  stable_ = LastIndex();
  CheckInvariants();
}

Term RaftLog::LastTerm() const {
  return entries_.empty() ? offset_term_ : entries_.back().term;
}

std::optional<Term> RaftLog::TermAt(LogIndex i) const {
  if (i.value == 0) return Term(0);
  if (i == offset_) return offset_term_;
  if (i < offset_ || i > LastIndex()) {
    if (snapshot_ && i == snapshot_->index) return snapshot_->term;
    return std::nullopt;
  }
  return At(i).term;
}

bool RaftLog::MatchTerm(LogIndex i, Term t) const {
  const std::optional<Term> term = TermAt(i);
  return term.has_value() && *term == t;
}

bool RaftLog::IsUpToDate(LogIndex last_index, Term last_term) const {
  const Term our_term = LastTerm();
  return last_term > our_term || (last_term == our_term && last_index >= LastIndex());
}

std::optional<LogIndex> RaftLog::MaybeAppend(LogIndex prev_index, Term prev_term,
                                             std::vector<Entry>&& entries,
                                             bool* conflict_below_commit) {
  *conflict_below_commit = false;
  if (!MatchTerm(prev_index, prev_term)) return std::nullopt;
  const LogIndex last_new = prev_index + entries.size();
  // Find the first entry we do not already hold with the same term.
  size_t k = 0;
  for (; k < entries.size(); ++k) {
    const Entry& e = entries[k];
    if (e.index <= offset_) continue;  // compacted here: committed, hence identical
    if (!MatchTerm(e.index, e.term)) break;
  }
  if (k == entries.size()) return last_new;
  const LogIndex conflict = entries[k].index;
  if (conflict <= committed_) {
    // Raft: committed entries are never overwritten (Leader Completeness). A leader
    // asking for it is broken; refuse and let the caller report it.
    *conflict_below_commit = true;
    return std::nullopt;
  }
  TruncateAfter(conflict - 1);
  for (; k < entries.size(); ++k) entries_.push_back(std::move(entries[k]));
  KEEL_ASSERT(LastIndex() == last_new);
  return last_new;
}

LogIndex RaftLog::Append(std::vector<Entry>&& entries) {
  for (Entry& e : entries) {
    KEEL_ASSERT(e.index == LastIndex() + 1);
    entries_.push_back(std::move(e));
  }
  return LastIndex();
}

std::pair<LogIndex, Term> RaftLog::FindConflictByTerm(LogIndex index, Term term) const {
  for (;;) {
    const std::optional<Term> t = TermAt(index);
    if (!t.has_value()) return {index, Term(0)};
    if (*t <= term) return {index, *t};
    index = index - 1;
  }
}

std::vector<Entry> RaftLog::Slice(LogIndex lo, LogIndex hi, size_t max_bytes) const {
  KEEL_ASSERT(FirstIndex() <= lo && lo <= hi && hi <= LastIndex() + 1);
  std::vector<Entry> out;
  size_t bytes = 0;
  for (LogIndex i = lo; i < hi; ++i) {
    const Entry& e = At(i);
    if (!out.empty() && bytes + e.ByteSize() > max_bytes) break;
    bytes += e.ByteSize();
    out.push_back(e);
  }
  return out;
}

std::vector<Entry> RaftLog::UnstableEntries() const {
  if (stable_ >= LastIndex()) return {};
  return Slice(stable_ + 1, LastIndex() + 1, SIZE_MAX);
}

std::vector<Entry> RaftLog::NextCommitted(size_t max_bytes) const {
  if (committed_ <= applied_) return {};
  const LogIndex lo = std::max(applied_ + 1, FirstIndex());
  return Slice(lo, committed_ + 1, max_bytes);
}

void RaftLog::CommitTo(LogIndex i) {
  KEEL_ASSERT(i <= LastIndex());
  if (i > committed_) committed_ = i;
}

void RaftLog::AppliedTo(LogIndex i) {
  KEEL_ASSERT(applied_ <= i && i <= committed_);
  applied_ = i;
}

void RaftLog::StableTo(LogIndex i) {
  KEEL_ASSERT(i <= LastIndex());
  stable_ = std::max(stable_, i);
}

void RaftLog::Restore(Snapshot snapshot) {
  KEEL_ASSERT(snapshot.index > committed_);
  entries_.clear();
  offset_ = snapshot.index;
  offset_term_ = snapshot.term;
  committed_ = snapshot.index;
  stable_ = snapshot.index;
  snapshot_ = std::move(snapshot);
}

void RaftLog::SetSnapshot(Snapshot snapshot) {
  KEEL_ASSERT(snapshot.index <= applied_);
  KEEL_ASSERT(MatchTerm(snapshot.index, snapshot.term));
  if (snapshot_ && snapshot_->index >= snapshot.index) return;
  snapshot_ = std::move(snapshot);
}

void RaftLog::CompactTo(LogIndex through) {
  KEEL_ASSERT(through <= applied_ && through <= stable_);
  if (through <= offset_) return;
  const std::optional<Term> term = TermAt(through);
  KEEL_ASSERT(term.has_value());
  entries_.erase(entries_.begin(), entries_.begin() + static_cast<long>(through - offset_));
  offset_ = through;
  offset_term_ = *term;
}

void RaftLog::TruncateAfter(LogIndex i) {
  KEEL_ASSERT(i >= committed_ && i >= offset_);
  entries_.resize(i - offset_);
  stable_ = std::min(stable_, i);
}

void RaftLog::CheckInvariants() const {
  KEEL_ASSERT(applied_ <= committed_);
  KEEL_ASSERT(committed_ <= LastIndex());
  KEEL_ASSERT(stable_ <= LastIndex());
  if (!entries_.empty()) {
    KEEL_ASSERT(entries_.front().index == offset_ + 1);
    KEEL_ASSERT(entries_.back().index == LastIndex());
  }
}

}  // namespace keel::raft
