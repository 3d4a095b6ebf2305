#pragma once
// Storage: the durable state of one node, as the core sees it. Writes are staged and
// become durable together at Sync() (group commit: at most one Sync per Ready; a Ready
// that changes only the commit index stages its write for the next Sync). A crash loses
// every write after the last completed Sync. Every error is fatal to the node
// (fail-stop): after a failed write or sync the node must not continue, because it can
// no longer know what it promised (fsyncgate).
//
// Implementation: storage::SqliteStorage, on the real disk or (in the simulator) on
// storage::SimDisk; unit tests may use an in-memory one.

#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/raft/message.h"
#include "core/raft/raft.h"

namespace keel::server {

class Storage {
 public:
  virtual ~Storage() = default;

  // The durable state: hard state, the latest snapshot, and the entries after it
  // (contiguous). An empty store yields the empty state. Validates what it reads.
  // Requires: no staged writes (it is called once, at start).
  virtual absl::StatusOr<raft::RecoveredState> Load() = 0;

  // Drops every entry at or after entries[0].index, then appends `entries`.
  virtual absl::Status Append(std::span<const raft::Entry> entries) = 0;
  virtual absl::Status SaveHardState(const raft::HardState& state) = 0;
  // A snapshot this node took of its own applied state: the log is kept.
  virtual absl::Status SaveSnapshot(const raft::Snapshot& snapshot) = 0;
  // A snapshot received from the leader: replaces the whole log.
  virtual absl::Status InstallSnapshot(const raft::Snapshot& snapshot) = 0;
  // Drops entries at or below `through`. Requires: through <= the snapshot's index.
  virtual absl::Status Compact(LogIndex through) = 0;
  // Makes every staged write durable. Blocks (in the simulator: the node is busy).
  virtual absl::Status Sync() = 0;
  // Bytes the store can still grow by on its disk (free space for an unprivileged
  // user). The node raises the NOSPACE alarm before this reaches zero.
  virtual absl::StatusOr<uint64_t> AvailableBytes() = 0;
};

}  // namespace keel::server
