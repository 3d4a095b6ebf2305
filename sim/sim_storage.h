#pragma once
// SimStorage: the in-memory durable store of one simulated node, with explicit volatile
// and durable state. Writes are staged; Sync() hands the staged batch to the simulated
// disk, which completes it after a latency drawn from the seed (the node is busy until
// then). A crash keeps only batches that completed before it; staged writes and a batch
// still in flight are lost. SQLite on a simulated VFS replaces this in the storage issue,
// behind the same server::Storage interface.
//
// Crash points: before Sync (staged writes lost) | during the sync (the whole batch
// lost: no torn writes here) | after completion (everything kept).

#include <deque>
#include <functional>
#include <optional>
#include <variant>
#include <vector>

#include "core/server/storage.h"

namespace keel::sim {

class SimStorage : public server::Storage {
 public:
  struct Hooks {
    // The virtual time now, and when a sync started now would complete.
    std::function<Nanos()> now;
    std::function<Nanos()> begin_sync;
  };
  explicit SimStorage(Hooks hooks);

  absl::StatusOr<raft::RecoveredState> Load() override;
  absl::Status Append(std::span<const raft::Entry> entries) override;
  absl::Status SaveHardState(const raft::HardState& state) override;
  absl::Status SaveSnapshot(const raft::Snapshot& snapshot) override;
  absl::Status InstallSnapshot(const raft::Snapshot& snapshot) override;
  absl::Status Compact(LogIndex through) override;
  absl::Status Sync() override;

  // The node crashed at `now`: keep what completed, drop the rest.
  void Crash(Nanos now);

 private:
  struct AppendOp { std::vector<raft::Entry> entries; };
  struct HardStateOp { raft::HardState state; };
  struct SaveSnapshotOp { raft::Snapshot snapshot; };
  struct InstallSnapshotOp { raft::Snapshot snapshot; };
  struct CompactOp { LogIndex through; };
  using Op = std::variant<AppendOp, HardStateOp, SaveSnapshotOp, InstallSnapshotOp, CompactOp>;

  struct Image {
    raft::HardState hard_state;
    std::optional<raft::Snapshot> snapshot;
    std::deque<raft::Entry> entries;  // contiguous; may start at or below the snapshot
    void Apply(Op& op);
  };
  struct Batch {
    std::vector<Op> ops;
    Nanos completes_at;
  };

  void FoldCompleted(Nanos now);

  Hooks hooks_;
  Image durable_;
  std::deque<Batch> in_flight_;  // in completion order
  std::vector<Op> staged_;
};

}  // namespace keel::sim
