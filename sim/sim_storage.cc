#include "sim/sim_storage.h"

#include "core/assert.h"

namespace keel::sim {

SimStorage::SimStorage(Hooks hooks) : hooks_(std::move(hooks)) {
  KEEL_ASSERT(hooks_.now != nullptr && hooks_.begin_sync != nullptr);
}

void SimStorage::Image::Apply(Op& op) {
  if (auto* a = std::get_if<AppendOp>(&op)) {
    if (a->entries.empty()) return;
    const LogIndex first = a->entries.front().index;
    while (!entries.empty() && entries.back().index >= first) entries.pop_back();
    KEEL_ASSERT(entries.empty() || entries.back().index + 1 == first);
    for (raft::Entry& e : a->entries) entries.push_back(std::move(e));
  } else if (auto* h = std::get_if<HardStateOp>(&op)) {
    hard_state = h->state;
  } else if (auto* s = std::get_if<SaveSnapshotOp>(&op)) {
    if (!snapshot || snapshot->index < s->snapshot.index) snapshot = std::move(s->snapshot);
  } else if (auto* i = std::get_if<InstallSnapshotOp>(&op)) {
    entries.clear();
    snapshot = std::move(i->snapshot);
  } else if (auto* c = std::get_if<CompactOp>(&op)) {
    KEEL_ASSERT(snapshot && c->through <= snapshot->index);
    while (!entries.empty() && entries.front().index <= c->through) entries.pop_front();
  }
}

void SimStorage::FoldCompleted(Nanos now) {
  while (!in_flight_.empty() && in_flight_.front().completes_at <= now) {
    for (Op& op : in_flight_.front().ops) durable_.Apply(op);
    in_flight_.pop_front();
  }
}

absl::StatusOr<raft::RecoveredState> SimStorage::Load() {
  KEEL_ASSERT(staged_.empty() && in_flight_.empty());
  raft::RecoveredState out;
  out.hard_state = durable_.hard_state;
  out.snapshot = durable_.snapshot;
  const LogIndex after = durable_.snapshot ? durable_.snapshot->index : LogIndex(0);
  for (const raft::Entry& e : durable_.entries) {
    if (e.index <= after) continue;  // the retained tail below the snapshot
    if (e.index != after + 1 + out.entries.size()) {
      return absl::DataLossError("log has a gap after the snapshot");
    }
    out.entries.push_back(e);
  }
  return out;
}

absl::Status SimStorage::Append(std::span<const raft::Entry> entries) {
  staged_.push_back(AppendOp{{entries.begin(), entries.end()}});
  return absl::OkStatus();
}

absl::Status SimStorage::SaveHardState(const raft::HardState& state) {
  staged_.push_back(HardStateOp{state});
  return absl::OkStatus();
}

absl::Status SimStorage::SaveSnapshot(const raft::Snapshot& snapshot) {
  staged_.push_back(SaveSnapshotOp{snapshot});
  return absl::OkStatus();
}

absl::Status SimStorage::InstallSnapshot(const raft::Snapshot& snapshot) {
  staged_.push_back(InstallSnapshotOp{snapshot});
  return absl::OkStatus();
}

absl::Status SimStorage::Compact(LogIndex through) {
  staged_.push_back(CompactOp{through});
  return absl::OkStatus();
}

absl::Status SimStorage::Sync() {
  FoldCompleted(hooks_.now());
  if (staged_.empty()) return absl::OkStatus();
  // Syncs complete in order: begin_sync starts this one after any still in flight.
  const Nanos completes_at = hooks_.begin_sync();
  KEEL_ASSERT(in_flight_.empty() || in_flight_.back().completes_at <= completes_at);
  in_flight_.push_back(Batch{std::move(staged_), completes_at});
  staged_.clear();
  return absl::OkStatus();
}

void SimStorage::Crash(Nanos now) {
  FoldCompleted(now);
  in_flight_.clear();
  staged_.clear();
}

}  // namespace keel::sim
