#include "core/raft/progress.h"

#include <algorithm>

#include "core/assert.h"

namespace keel::raft {

void Inflights::Add(LogIndex last, size_t bytes) {
  KEEL_ASSERT(!Full());
  KEEL_ASSERT(items_.empty() || items_.back().last < last);
  items_.push_back({last, bytes});
  bytes_ += bytes;
}

void Inflights::FreeTo(LogIndex index) {
  while (!items_.empty() && items_.front().last <= index) {
    bytes_ -= items_.front().bytes;
    items_.pop_front();
  }
}

void Inflights::FreeFirst() {
  if (items_.empty()) return;
  bytes_ -= items_.front().bytes;
  items_.pop_front();
}

void Progress::BecomeProbe() {
  // Coming back from a snapshot, the follower's log is at least the snapshot.
  if (state == ProgressState::kSnapshot) {
    next = std::max(match + 1, pending_snapshot + 1);
  } else {
    next = match + 1;
  }
  state = ProgressState::kProbe;
  probe_sent = false;
  pending_snapshot = LogIndex(0);
  inflights.Reset();
}

void Progress::BecomeReplicate() {
  state = ProgressState::kReplicate;
  next = match + 1;
  probe_sent = false;
  pending_snapshot = LogIndex(0);
  inflights.Reset();
}

void Progress::BecomeSnapshot(LogIndex snapshot_index) {
  state = ProgressState::kSnapshot;
  pending_snapshot = snapshot_index;
  snapshot_elapsed_ticks = 0;
  probe_sent = false;
  inflights.Reset();
}

bool Progress::MaybeUpdate(LogIndex index) {
  bool updated = false;
  if (match < index) {
    match = index;
    updated = true;
    probe_sent = false;
  }
  next = std::max(next, index + 1);
  return updated;
}

bool Progress::MaybeDecreaseTo(LogIndex rejected, LogIndex match_hint) {
  if (state == ProgressState::kReplicate) {
    // Appends are pipelined: a rejection at or below match is from an older round.
    if (rejected <= match) return false;
    next = match + 1;
    return true;
  }
  // In probe (or snapshot), only the rejection of the one outstanding probe counts.
  if (next - 1 != rejected) return false;
  next = std::max(std::min(rejected, match_hint + 1), match + 1);
  probe_sent = false;
  return true;
}

void Progress::SentEntries(LogIndex last, size_t bytes) {
  switch (state) {
    case ProgressState::kReplicate:
      if (last >= next) {
        next = last + 1;
        inflights.Add(last, bytes);
      }
      break;
    case ProgressState::kProbe:
      probe_sent = true;
      break;
    case ProgressState::kSnapshot:
      KEEL_ASSERT(false && "no appends while a snapshot is in flight");
  }
}

bool Progress::IsPaused() const {
  switch (state) {
    case ProgressState::kProbe: return probe_sent;
    case ProgressState::kReplicate: return inflights.Full();
    case ProgressState::kSnapshot: return true;
  }
  return true;
}

}  // namespace keel::raft
