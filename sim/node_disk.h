#pragma once
// NodeDisk: the durable store of one simulated node, which outlives the node's crashes:
// the real SQLite storage (storage::SqliteStorage) on a simulated disk (storage::SimDisk).
// The node sees it through ObservedStorage, which shows the simulator's checkers every
// write as it is staged and tells the fault injector whether a sync carries a new term
// or vote. The disk's faults: the next write or sync fails with EIO, and the disk fills
// up (writes that grow its files fail with SQLITE_FULL). The node goes down by power
// loss (Crash: what was not durable is gone) or by its process dying (Kill: the page
// cache, unsynced writes included, survives).

#include <functional>
#include <memory>
#include <span>
#include <string>

#include "core/kv/backend.h"
#include "core/rng.h"
#include "core/server/storage.h"
#include "storage/sim_vfs.h"

namespace keel::storage {
class SqliteStorage;
}

namespace keel::sim {

class ObservedStorage : public server::Storage {
 public:
  struct Hooks {
    std::function<void(const raft::RecoveredState&)> on_load;  // after a successful Load
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
  absl::StatusOr<uint64_t> AvailableBytes() override { return inner_.AvailableBytes(); }

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
    // A sync starts now; returns when it completes (the node is busy until then), which
    // is not before `not_before`.
    std::function<Nanos(bool vote_changed, Nanos not_before)> begin_sync;
    ObservedStorage::Hooks observe;
  };
  struct Options {
    bool torn_writes = true;         // a crash may tear the last write not yet durable
    bool planted_skip_sync = false;  // test-only planted bug: fsync makes nothing durable
  };

  // `rng` feeds SQLite's randomness.
  NodeDisk(Hooks hooks, Rng* rng, Options options);
  ~NodeDisk();

  // (Re)opens the store after a start or a crash; errors are the storage's own.
  absl::Status Open();
  // The store, between Open and Crash.
  server::Storage& storage() { return *observed_; }
  // The same database as the keyspace's backend, between Open and Crash.
  kv::Backend& backend();
  // Power loss at the simulator's now: what was not durable is gone; the store closes.
  void Crash();
  // The process is killed: the store closes, what it wrote stays in the page cache.
  void Kill();

  // Faults. The next write (or sync) fails with an I/O error.
  void FailNextWrite() { fail_next_write_ = true; }
  void FailNextSync() { fail_next_sync_ = true; }
  // The disk fills up: `headroom` more bytes fit, then writes fail with SQLITE_FULL.
  void Fill(uint64_t headroom) { disk_.SetCapacity(disk_.used_bytes() + headroom); }
  // Space again (an operator freed some).
  void Free() { disk_.SetCapacity(UINT64_MAX); }
  // Whether an armed I/O error has failed an operation since the last Open.
  bool io_error_fired() const { return io_error_fired_; }
  // Every fault off: room on the disk, no armed I/O error.
  void Heal() {
    Free();
    fail_next_write_ = fail_next_sync_ = false;
  }
  bool filled() const { return disk_.capacity() != UINT64_MAX; }  // Fill, no Free since

 private:
  int Fault(storage::SimDisk::Op op);

  Hooks hooks_;
  storage::SimDisk disk_;
  std::unique_ptr<storage::SqliteStorage> sqlite_;
  std::unique_ptr<ObservedStorage> observed_;
  bool torn_writes_;
  bool fail_next_write_ = false;
  bool fail_next_sync_ = false;
  bool io_error_fired_ = false;
};

}  // namespace keel::sim
