#include "sim/node_disk.h"

#include <sqlite3.h>

#include "core/assert.h"
#include "storage/sqlite_storage.h"

namespace keel::sim {
namespace {
// Small WALs: the simulated disk holds every file twice in memory (current and durable
// images), and touching that memory dominated a run's cost with SQLite's default 4 MiB
// WAL (3x slower, measured on seed 7). Frequent checkpoints also test more crash points.
constexpr int kWalAutocheckpointPages = 64;
}  // namespace

absl::StatusOr<raft::RecoveredState> ObservedStorage::Load() {
  absl::StatusOr<raft::RecoveredState> r = inner_.Load();
  if (r.ok()) {
    last_hard_state_ = r->hard_state;
    if (hooks_.on_load) hooks_.on_load(*r);
  }
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

NodeDisk::NodeDisk(Hooks hooks, Rng* rng, Options options)
    : hooks_(std::move(hooks)),
      disk_(storage::SimDisk::Hooks{
          .rng = rng,
          .now = hooks_.now,
          .begin_sync = [this](const std::string&, Nanos not_before) {
            return hooks_.begin_sync(observed_ != nullptr && observed_->syncing_vote(),
                                     not_before);
          },
          .fault = [this](storage::SimDisk::Op op, const std::string&) { return Fault(op); },
          .planted_skip_sync = options.planted_skip_sync}),
      torn_writes_(options.torn_writes) {}

NodeDisk::~NodeDisk() {
  observed_.reset();
  sqlite_.reset();
}

int NodeDisk::Fault(storage::SimDisk::Op op) {
  bool& armed = op == storage::SimDisk::Op::kWrite ? fail_next_write_ : fail_next_sync_;
  if (!armed) return SQLITE_OK;
  armed = false;
  io_error_fired_ = true;
  return op == storage::SimDisk::Op::kWrite ? SQLITE_IOERR_WRITE : SQLITE_IOERR_FSYNC;
}

absl::Status NodeDisk::Open() {
  KEEL_ASSERT(sqlite_ == nullptr);
  io_error_fired_ = false;
  absl::StatusOr<std::unique_ptr<storage::SqliteStorage>> s = storage::SqliteStorage::Open(
      "/keel.db", {.vfs = disk_.vfs_name(),
                   .available_bytes = [this] { return disk_.free_bytes(); },
                   .wal_autocheckpoint_pages = kWalAutocheckpointPages});
  if (!s.ok()) return s.status();
  sqlite_ = std::move(*s);
  observed_ = std::make_unique<ObservedStorage>(*sqlite_, hooks_.observe);
  return absl::OkStatus();
}

void NodeDisk::Kill() {
  disk_.ProcessExit();
  observed_.reset();
  sqlite_.reset();
  disk_.PowerOn();
}

void NodeDisk::Crash() {
  disk_.Crash(torn_writes_);
  observed_.reset();
  sqlite_.reset();  // the disk is off: closing the old connection changes nothing
  disk_.PowerOn();
}

kv::Backend& NodeDisk::backend() {
  KEEL_ASSERT(sqlite_ != nullptr);
  return *sqlite_;
}

}  // namespace keel::sim
