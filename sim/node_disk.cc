#include "sim/node_disk.h"

#include "core/assert.h"
#include "sim/sim_storage.h"
#include "storage/sim_vfs.h"
#include "storage/sqlite_storage.h"

namespace keel::sim {

absl::StatusOr<raft::RecoveredState> ObservedStorage::Load() {
  absl::StatusOr<raft::RecoveredState> r = inner_.Load();
  if (r.ok()) last_hard_state_ = r->hard_state;
  vote_pending_ = false;
  return r;
}

absl::Status ObservedStorage::Append(std::span<const raft::Entry> entries) {
  if (hooks_.on_append) hooks_.on_append(entries);
  return inner_.Append(entries);
}

absl::Status ObservedStorage::SaveHardState(const raft::HardState& state) {
  vote_pending_ |= state.term != last_hard_state_.term || state.vote != last_hard_state_.vote;
  last_hard_state_ = state;
  return inner_.SaveHardState(state);
}

absl::Status ObservedStorage::SaveSnapshot(const raft::Snapshot& snapshot) {
  return inner_.SaveSnapshot(snapshot);
}

absl::Status ObservedStorage::InstallSnapshot(const raft::Snapshot& snapshot) {
  if (hooks_.on_install_snapshot) hooks_.on_install_snapshot(snapshot);
  return inner_.InstallSnapshot(snapshot);
}

absl::Status ObservedStorage::Compact(LogIndex through) { return inner_.Compact(through); }

absl::Status ObservedStorage::Sync() {
  syncing_vote_ = vote_pending_;
  vote_pending_ = false;
  absl::Status st = inner_.Sync();
  syncing_vote_ = false;
  return st;
}

namespace {

class MemoryNodeDisk : public NodeDisk {
 public:
  explicit MemoryNodeDisk(Hooks hooks)
      : now_(hooks.now),
        memory_(SimStorage::Hooks{
            .now = hooks.now,
            .begin_sync = [this, begin = hooks.begin_sync] {
              return begin(observed_.syncing_vote());
            }}),
        observed_(memory_, std::move(hooks.observe)) {}

  absl::Status Open() override { return absl::OkStatus(); }
  server::Storage& storage() override { return observed_; }
  void Crash() override { memory_.Crash(now_()); }

 private:
  std::function<Nanos()> now_;
  SimStorage memory_;
  ObservedStorage observed_;
};

class SqliteNodeDisk : public NodeDisk {
 public:
  SqliteNodeDisk(Hooks hooks, Rng* rng, bool torn_writes)
      : hooks_(std::move(hooks)),
        torn_writes_(torn_writes),
        disk_(storage::SimDisk::Hooks{
            .rng = rng,
            .now = hooks_.now,
            .begin_sync = [this](const std::string&) {
              return hooks_.begin_sync(observed_ != nullptr && observed_->syncing_vote());
            }}) {}

  absl::Status Open() override {
    KEEL_ASSERT(sqlite_ == nullptr);
    absl::StatusOr<std::unique_ptr<storage::SqliteStorage>> s =
        storage::SqliteStorage::Open("/keel.db", {.vfs = disk_.vfs_name()});
    if (!s.ok()) return s.status();
    sqlite_ = std::move(*s);
    observed_ = std::make_unique<ObservedStorage>(*sqlite_, hooks_.observe);
    return absl::OkStatus();
  }
  server::Storage& storage() override { return *observed_; }
  void Crash() override {
    disk_.Crash(torn_writes_);
    observed_.reset();
    sqlite_.reset();  // the disk is off: closing the old connection changes nothing
    disk_.PowerOn();
  }

 private:
  Hooks hooks_;
  bool torn_writes_;
  storage::SimDisk disk_;
  std::unique_ptr<storage::SqliteStorage> sqlite_;
  std::unique_ptr<ObservedStorage> observed_;
};

}  // namespace

std::unique_ptr<NodeDisk> NodeDisk::Make(Kind kind, Hooks hooks, Rng* rng, bool torn_writes) {
  if (kind == Kind::kSqlite) return std::make_unique<SqliteNodeDisk>(std::move(hooks), rng,
                                                                     torn_writes);
  return std::make_unique<MemoryNodeDisk>(std::move(hooks));
}

}  // namespace keel::sim
