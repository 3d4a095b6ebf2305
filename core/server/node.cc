#include "core/server/node.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/raft/codec.h"

namespace keel::server {
namespace {

// Entry and read-context framing: 8 bytes of request id (little-endian), then the
// command. An empty entry is a leader's no-op.
std::string Frame(uint64_t request_id, std::string_view command) {
  std::string out(8, '\0');
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>(request_id >> (8 * k));
  out.append(command);
  return out;
}

bool Unframe(std::string_view data, uint64_t* request_id, std::string_view* command) {
  if (data.size() < 8) return false;
  uint64_t id = 0;
  for (int k = 0; k < 8; ++k) id |= static_cast<uint64_t>(static_cast<uint8_t>(data[k])) << (8 * k);
  *request_id = id;
  *command = data.substr(8);
  return true;
}

}  // namespace

Node::Node(NodeConfig config, Env& env, StateMachine& state_machine)
    : config_(std::move(config)), env_(env), state_machine_(state_machine), log_(env.Log()) {}

Node::~Node() {
  if (tick_timer_ != 0) env_.CancelTimer(tick_timer_);
}

absl::Status Node::Start() {
  KEEL_ASSERT(stopped_ && raft_ == nullptr);
  absl::StatusOr<raft::RecoveredState> recovered = env_.Disk().Load();
  if (!recovered.ok()) {
    FailStop(recovered.status(), "load");
    return recovered.status();
  }
  if (recovered->snapshot) {
    const raft::Snapshot& s = *recovered->snapshot;
    if (absl::Status st = state_machine_.Restore(s.index, s.data); !st.ok()) {
      FailStop(st, "restore snapshot");
      return st;
    }
    last_snapshot_index_ = s.index;
  }
  raft_ = std::make_unique<raft::Raft>(config_.raft, std::move(*recovered), &env_.Random(),
                                       log_);
  stopped_ = false;
  tick_timer_ = env_.SetTimer(config_.tick_interval, [this] { Tick(); });
  ProcessReady();
  if (stopped_) return absl::DataLossError("storage failed while replaying the log");
  return absl::OkStatus();
}

void Node::Tick() {
  tick_timer_ = 0;
  if (stopped_) return;
  tick_timer_ = env_.SetTimer(config_.tick_interval, [this] { Tick(); });
  raft_->Tick();
  ExpireRequests();
  ProcessReady();
}

void Node::Receive(std::string_view bytes) {
  if (stopped_) return;
  absl::StatusOr<raft::Message> m = raft::DecodeMessage(bytes);
  if (!m.ok()) {
    log_.Warn("DroppedBadMessage").Field("id", raft_->id()).Field("reason", m.status().message());
    return;
  }
  if (!AcceptableSnapshot(*m)) return;
  if (absl::Status st = raft_->Step(std::move(*m)); !st.ok()) {
    log_.Warn("DroppedMessage").Field("id", raft_->id()).Field("reason", st.message());
    return;
  }
  ProcessReady();
}

bool Node::AcceptableSnapshot(const raft::Message& m) const {
  if (!m.snapshot) return true;
  // A snapshot the state machine cannot restore is dropped here, before Raft adopts
  // it: a bad peer must not be able to stop this node.
  absl::Status st = state_machine_.CheckSnapshot(m.snapshot->index, m.snapshot->data);
  if (st.ok()) return true;
  log_.Warn("DroppedBadSnapshot").Field("id", raft_->id()).Field("from", m.from)
      .Field("index", m.snapshot->index).Field("reason", st.message());
  return false;
}

uint64_t Node::AddPending(Done done) {
  uint64_t id = 0;
  while (id == 0 || pending_.contains(id)) id = env_.Random().Next();
  const Nanos deadline = env_.Now() + config_.request_timeout;
  pending_.emplace(id, Pending{std::move(done)});
  deadlines_.emplace_back(deadline, id);
  return id;
}

void Node::Propose(std::string command, Done done) {
  if (stopped_) return done(absl::UnavailableError("node stopped"));
  if (command.size() > config_.request_bytes_max) {
    return done(absl::InvalidArgumentError("request is too large"));
  }
  if (pending_.size() >= config_.pending_requests_max) {
    return done(absl::ResourceExhaustedError("too many pending requests"));
  }
  const uint64_t id = AddPending(std::move(done));
  std::vector<std::string> data;
  data.push_back(Frame(id, command));
  if (absl::Status st = raft_->Propose(std::move(data)); !st.ok()) {
    Finish(id, st);
    return;
  }
  ProcessReady();
}

void Node::Read(Done done) {
  if (stopped_) return done(absl::UnavailableError("node stopped"));
  if (pending_.size() >= config_.pending_requests_max) {
    return done(absl::ResourceExhaustedError("too many pending requests"));
  }
  const uint64_t id = AddPending(std::move(done));
  if (absl::Status st = raft_->ReadIndex(Frame(id, "")); !st.ok()) {
    Finish(id, st);
    return;
  }
  ProcessReady();
}

absl::Status Node::TransferLeadership(NodeId to) {
  if (stopped_) return absl::UnavailableError("node stopped");
  absl::Status st = raft_->TransferLeadership(to);
  ProcessReady();
  return st;
}

void Node::Finish(uint64_t request_id, absl::Status status) {
  auto it = pending_.find(request_id);
  if (it == pending_.end()) return;
  Done done = std::move(it->second.done);
  pending_.erase(it);
  done(std::move(status));
}

void Node::ExpireRequests() {
  const Nanos now = env_.Now();
  while (!deadlines_.empty() && deadlines_.front().first <= now) {
    const uint64_t id = deadlines_.front().second;
    deadlines_.pop_front();
    Finish(id, absl::DeadlineExceededError("request timed out"));
  }
}

void Node::ProcessReady() {
  while (!stopped_ && raft_->HasReady()) {
    raft::Ready rd = raft_->GetReady();
    SendAll(rd.messages);  // leader appends: in parallel with our own write (§10.2.1)
    PersistReady(rd);
    if (stopped_) return;  // fail-stop: nothing after a failed write is said or applied
    SendAll(rd.messages_after_persist);
    std::vector<uint64_t> applied_requests;
    ApplyCommitted(rd, &applied_requests);
    if (stopped_) return;
    for (const raft::ReadState& rs : rd.read_states) {
      uint64_t id = 0;
      std::string_view rest;
      if (!Unframe(rs.context, &id, &rest)) continue;
      if (pending_.contains(id)) confirmed_reads_.emplace(rs.index, id);
    }
    raft_->Advance(rd);
    MaybeSnapshot();
    // Callbacks run only now, outside the Ready: they may call back into this Node.
    for (uint64_t id : applied_requests) Finish(id, absl::OkStatus());
    FinishReads();
  }
}

void Node::PersistReady(const raft::Ready& rd) {
  if (!rd.MustPersist()) return;
  Storage& disk = env_.Disk();
  absl::Status st;
  if (rd.snapshot) {
    st = state_machine_.Restore(rd.snapshot->index, rd.snapshot->data);
    if (!st.ok()) return FailStop(st, "restore snapshot");
    st = disk.InstallSnapshot(*rd.snapshot);
    if (!st.ok()) return FailStop(st, "install snapshot");
    last_snapshot_index_ = rd.snapshot->index;
  }
  if (!rd.entries.empty()) {
    st = disk.Append(rd.entries);
    if (!st.ok()) return FailStop(st, "append");
  }
  if (rd.hard_state) {
    st = disk.SaveHardState(*rd.hard_state);
    if (!st.ok()) return FailStop(st, "save hard state");
  }
  st = disk.Sync();  // group commit: one sync for everything this Ready produced
  if (!st.ok()) return FailStop(st, "sync");
}

void Node::ApplyCommitted(const raft::Ready& rd, std::vector<uint64_t>* applied_requests) {
  for (const raft::Entry& e : rd.committed_entries) {
    if (e.data.empty()) continue;  // a leader's no-op
    uint64_t id = 0;
    std::string_view command;
    if (!Unframe(e.data, &id, &command)) {
      // Only Nodes write entries, and all frame them: a short entry is corruption.
      log_.Error("MalformedEntry").Field("id", raft_->id()).Field("index", e.index);
      continue;
    }
    state_machine_.Apply(e.index, id, command);
    if (pending_.contains(id)) applied_requests->push_back(id);
  }
}

void Node::FinishReads() {
  const LogIndex applied = raft_->log().applied();
  while (!confirmed_reads_.empty() && confirmed_reads_.begin()->first <= applied) {
    const uint64_t id = confirmed_reads_.begin()->second;
    confirmed_reads_.erase(confirmed_reads_.begin());
    Finish(id, absl::OkStatus());  // no-op if it timed out meanwhile
  }
}

void Node::MaybeSnapshot() {
  const LogIndex applied = raft_->log().applied();
  if (applied - last_snapshot_index_ < config_.snapshot_entries) return;
  raft_->CreateSnapshot(applied, state_machine_.TakeSnapshot());
  const raft::Snapshot& snap = *raft_->log().snapshot();
  Storage& disk = env_.Disk();
  // Durable with the next Sync; a crash before it just keeps the longer log.
  if (absl::Status st = disk.SaveSnapshot(snap); !st.ok()) return FailStop(st, "snapshot");
  last_snapshot_index_ = applied;
  const uint64_t keep = config_.snapshot_catchup_entries;
  if (applied.value > keep) {
    const LogIndex through = std::min(applied - keep, raft_->log().stable());
    raft_->Compact(through);
    if (absl::Status st = disk.Compact(through); !st.ok()) return FailStop(st, "compact");
  }
  log_.Info("TookSnapshot").Field("id", raft_->id()).Field("index", applied);
}

void Node::SendAll(const std::vector<raft::Message>& messages) {
  for (const raft::Message& m : messages) env_.Send(m.to, raft::EncodeMessage(m));
}

void Node::FailStop(const absl::Status& status, std::string_view what) {
  log_.Error("StorageFailed").Field("what", what).Field("status", status.ToString());
  stopped_ = true;
  if (tick_timer_ != 0) {
    env_.CancelTimer(tick_timer_);
    tick_timer_ = 0;
  }
  // Every request still ends exactly once. Its entry may already be on disk or at a
  // peer, so the outcome is unknown: DeadlineExceeded, as for a timeout.
  std::map<uint64_t, Pending> pending;
  pending.swap(pending_);
  deadlines_.clear();
  confirmed_reads_.clear();
  for (auto& [id, p] : pending) {
    p.done(absl::DeadlineExceededError("node stopped after a storage failure"));
  }
}

}  // namespace keel::server
