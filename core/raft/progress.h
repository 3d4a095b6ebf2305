#pragma once
// Progress: the leader's view of one follower, as etcd-raft's tracker.Progress.
//
//  kProbe     the leader does not know where the follower's log matches; it sends one
//             append per heartbeat interval and waits for the answer (probe_sent).
//  kReplicate the follower is in sync; the leader streams appends optimistically
//             (pipelining), bounded by an in-flight window of messages and bytes.
//  kSnapshot  the follower needs a snapshot; nothing else is sent until it answers or
//             the snapshot is presumed lost after two election timeouts.
//
// Invariant: match < next.

#include <cstddef>
#include <cstdint>
#include <deque>

#include "core/types.h"

namespace keel::raft {

// Inflights: a bounded window of appends sent but not yet acknowledged.
class Inflights {
 public:
  Inflights(size_t count_max, size_t bytes_max) : count_max_(count_max), bytes_max_(bytes_max) {}

  bool Full() const { return items_.size() >= count_max_ || bytes_ >= bytes_max_; }
  size_t Count() const { return items_.size(); }
  void Add(LogIndex last, size_t bytes);
  // Frees every in-flight append whose last index is <= `index`.
  void FreeTo(LogIndex index);
  void FreeFirst();
  void Reset() { items_.clear(); bytes_ = 0; }

 private:
  struct Item {
    LogIndex last;
    size_t bytes;
  };
  size_t count_max_;
  size_t bytes_max_;
  size_t bytes_ = 0;
  std::deque<Item> items_;
};

enum class ProgressState : uint8_t { kProbe, kReplicate, kSnapshot };

struct Progress {
  Progress(LogIndex next_index, size_t inflight_count_max, size_t inflight_bytes_max)
      : next(next_index), inflights(inflight_count_max, inflight_bytes_max) {}

  LogIndex match;
  LogIndex next;
  ProgressState state = ProgressState::kProbe;
  bool probe_sent = false;       // kProbe: one append outstanding
  LogIndex pending_snapshot;     // kSnapshot: the index of the snapshot sent
  int snapshot_elapsed_ticks = 0;
  bool recent_active = false;    // heard from within the current election timeout
  Inflights inflights;

  void BecomeProbe();
  void BecomeReplicate();
  void BecomeSnapshot(LogIndex snapshot_index);

  // A successful append response acknowledging `index`. Returns true if match moved.
  bool MaybeUpdate(LogIndex index);
  // A rejection of the append at `rejected`, with the follower's hint that its log
  // matches at most up to `match_hint`. Returns false for a stale rejection.
  bool MaybeDecreaseTo(LogIndex rejected, LogIndex match_hint);
  // After an append of entries up to `last` (of `bytes`) was sent.
  void SentEntries(LogIndex last, size_t bytes);
  bool IsPaused() const;
};

}  // namespace keel::raft
