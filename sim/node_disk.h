#pragma once
// NodeDisk: the durable store of one simulated node, which outlives the node's crashes.
// Two kinds: the in-memory store (SimStorage) and the real SQLite on a simulated disk
// (SqliteStorage over storage::SimDisk). Either way the node sees a server::Storage
// through ObservedStorage, which shows the simulator's checkers every write as it is
// staged and tells the fault injector whether a sync carries a new term or vote.

#include <functional>
#include <memory>
#include <span>
#include <string>

#include "core/rng.h"
#include "core/server/storage.h"

namespace keel::sim {

class ObservedStorage : public server::Storage {
 public:
  struct Hooks {
    std::function<void(std::span<const raft::Entry>)> on_append;
    std::function<void(const raft::Snapshot&)> on_install_snapshot;
  };
  ObservedStorage(server::Storage& inner, Hooks hooks) : inner_(inner), hooks_(std::move(hooks)) {}

  // True while a Sync whose batch changes the term or the vote is running.
  bool syncing_vote() const { return syncing_vote_; }

  absl::StatusOr<raft::RecoveredState> Load() override;
  absl::Status Append(std::span<const raft::Entry> entries) override;
  absl::Status SaveHardState(const raft::HardState& state) override;
  absl::Status SaveSnapshot(const raft::Snapshot& snapshot) override;
  absl::Status InstallSnapshot(const raft::Snapshot& snapshot) override;
  absl::Status Compact(LogIndex through) override;
  absl::Status Sync() override;

 private:
  server::Storage& inner_;
  Hooks hooks_;
  raft::HardState last_hard_state_;  // the newest staged or loaded
  bool vote_pending_ = false;
  bool syncing_vote_ = false;
};

class NodeDisk {
 public:
  struct Hooks {
    std::function<Nanos()> now;
    // A sync starts now; returns when it completes (the node is busy until then).
    std::function<Nanos(bool vote_changed)> begin_sync;
    ObservedStorage::Hooks observe;
  };
  enum class Kind { kMemory, kSqlite };

  // `rng` feeds SQLite's randomness (kSqlite); `torn_writes`: crashes may tear the last
  // write that was not yet durable (kSqlite).
  static std::unique_ptr<NodeDisk> Make(Kind kind, Hooks hooks, Rng* rng, bool torn_writes);
  virtual ~NodeDisk() = default;

  // (Re)opens the store after a start or a crash; errors are the storage's own.
  virtual absl::Status Open() = 0;
  // The store, between Open and Crash.
  virtual server::Storage& storage() = 0;
  // Power loss at the simulator's now: what was not durable is gone; the store closes.
  virtual void Crash() = 0;
};

}  // namespace keel::sim
