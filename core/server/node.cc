#include "core/server/node.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/raft/codec.h"

namespace keel::server {
namespace {

// Entry framing (node.h): request id, kind, payload. Read contexts use the same frame.
enum class EntryKind : uint8_t { kCommand = 0, kNode = 1 };

std::string Frame(uint64_t request_id, EntryKind kind, std::string_view payload) {
  std::string out(9, '\0');
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>(request_id >> (8 * k));
  out[8] = static_cast<char>(kind);
  out.append(payload);
  return out;
}

bool Unframe(std::string_view data, uint64_t* request_id, EntryKind* kind,
             std::string_view* payload) {
  if (data.size() < 9) return false;
  uint64_t id = 0;
  for (int k = 0; k < 8; ++k) id |= static_cast<uint64_t>(static_cast<uint8_t>(data[k])) << (8 * k);
  const uint8_t k = static_cast<uint8_t>(data[8]);
  if (k > static_cast<uint8_t>(EntryKind::kNode)) return false;
  *request_id = id;
  *kind = static_cast<EntryKind>(k);
  *payload = data.substr(9);
  return true;
}

// Node commands: one byte of action, u64 member id.
enum class AlarmAction : uint8_t { kActivateNoSpace = 1, kDeactivateNoSpace = 2 };

std::string AlarmCommand(AlarmAction action, NodeId member) {
  std::string out(1, static_cast<char>(action));
  for (int k = 0; k < 8; ++k) out.push_back(static_cast<char>(member.value >> (8 * k)));
  return out;
}

uint64_t ReadU64(std::string_view bytes) {
  uint64_t v = 0;
  for (int k = 0; k < 8; ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[k])) << (8 * k);
  return v;
}

constexpr std::string_view kSnapshotMagic = "KNS1";
constexpr uint32_t kSnapshotAlarmsMax = 1024;

// Splits a Node snapshot into its alarms and the state machine's bytes; validates.
absl::Status ParseSnapshot(std::string_view data, std::set<NodeId>* alarms,
                           std::string_view* state_machine) {
  if (data.size() < 8 || data.substr(0, 4) != kSnapshotMagic) {
    return absl::DataLossError("not a keel node snapshot (bad magic)");
  }
  uint32_t count = 0;
  for (int k = 0; k < 4; ++k) count |= static_cast<uint32_t>(static_cast<uint8_t>(data[4 + k])) << (8 * k);
  if (count > kSnapshotAlarmsMax || data.size() - 8 < 8ull * count) {
    return absl::DataLossError("node snapshot: alarm list is truncated or too long");
  }
  for (uint32_t k = 0; k < count; ++k) {
    const NodeId member(ReadU64(data.substr(8 + 8 * k, 8)));
    if (member.value == 0 || !alarms->insert(member).second) {
      return absl::DataLossError("node snapshot: bad or repeated alarm member");
    }
  }
  *state_machine = data.substr(8 + 8ull * count);
  return absl::OkStatus();
}
}  // namespace

Node::Node(NodeConfig config, Env& env, StateMachine& state_machine)
    : config_(std::move(config)),
      env_(env),
      state_machine_(state_machine),
      log_(env.Log()),
      snapshot_sender_(config_.snapshot_stream),
      snapshot_receiver_(config_.snapshot_stream) {}

Node::~Node() {
  if (tick_timer_ != 0) env_.CancelTimer(tick_timer_);
  if (flush_timer_ != 0) env_.CancelTimer(flush_timer_);
}

absl::Status Node::Start() {
  KEEL_ASSERT(stopped_ && raft_ == nullptr);
  absl::StatusOr<raft::RecoveredState> recovered = env_.Disk().Load();
  if (!recovered.ok()) {
    FailStop(recovered.status(), "load");
    return recovered.status();
  }
  if (recovered->snapshot) {
    if (absl::Status st = RestoreSnapshot(*recovered->snapshot); !st.ok()) {
      FailStop(st, "restore snapshot");
      return st;
    }
  }
  raft_ = std::make_unique<raft::Raft>(config_.raft, std::move(*recovered), &env_.Random(),
                                       log_);
  stopped_ = false;
  tick_timer_ = env_.SetTimer(config_.tick_interval, [this] { Tick(); });
  // A sole voter cannot lose an election: it campaigns at once rather than after an
  // election timeout (etcd advances a single member's election ticks likewise).
  if (config_.raft.voters.size() == 1 && raft_->role() != raft::Role::kLeader) raft_->Campaign();
  ProcessReady();
  if (stopped_) return absl::DataLossError("storage failed while replaying the log");
  return absl::OkStatus();
}

void Node::Tick() {
  tick_timer_ = 0;
  if (stopped_) return;
  tick_timer_ = env_.SetTimer(config_.tick_interval, [this] { Tick(); });
  raft_->Tick();
  SendAll(snapshot_sender_.Tick());
  snapshot_receiver_.Tick();
  ExpireRequests();
  CheckSpace();
  ProcessReady();
}

void Node::CheckSpace() {
  absl::StatusOr<uint64_t> available = env_.Disk().AvailableBytes();
  if (!available.ok()) {
    log_.Warn("FreeSpaceUnknown").Field("id", raft_->id()).Field("status", available.status().ToString());
    return;
  }
  if (*available >= config_.space_reserve_bytes || nospace_alarms_.contains(raft_->id())) return;
  const Nanos now = env_.Now();
  if (now < next_alarm_raise_) return;  // the last raise may still commit
  next_alarm_raise_ = now + config_.tick_interval * config_.raft.election_ticks;
  log_.Warn("RaisingNoSpaceAlarm").Field("id", raft_->id()).Field("available", *available)
      .Field("reserve", config_.space_reserve_bytes);
  // No client waits for it (id 0); if it is lost (no leader), the next check retries.
  std::vector<std::string> data;
  data.push_back(Frame(0, EntryKind::kNode, AlarmCommand(AlarmAction::kActivateNoSpace, raft_->id())));
  (void)raft_->Propose(std::move(data));
}

void Node::Receive(std::string_view bytes) {
  if (stopped_) return;
  raft::DecodeLimits limits;
  limits.snapshot_bytes_max = config_.snapshot_stream.snapshot_bytes_max;
  absl::StatusOr<raft::Message> m = raft::DecodeMessage(bytes, limits);
  if (!m.ok()) {
    log_.Warn("DroppedBadMessage").Field("id", raft_->id()).Field("reason", m.status().message());
    return;
  }
  if (m->to != raft_->id()) {
    log_.Warn("DroppedMessage").Field("id", raft_->id()).Field("reason", "addressed to another node");
    return;
  }
  const bool chunk = m->type == raft::MessageType::kSnapshotChunk ||
                     m->type == raft::MessageType::kSnapshotChunkAck;
  if (chunk && (m->from == raft_->id() || std::find(config_.raft.voters.begin(),
                                                    config_.raft.voters.end(),
                                                    m->from) == config_.raft.voters.end())) {
    // Raft drops strangers' messages; chunks bypass it, and a stranger must not be
    // able to make this node hold streams.
    log_.Warn("DroppedMessage").Field("id", raft_->id()).Field("reason", "chunk from a non-member");
    return;
  }
  switch (m->type) {
    case raft::MessageType::kSnapshotChunk: return ReceiveSnapshotChunk(*m);
    case raft::MessageType::kSnapshotChunkAck: return SendAll(snapshot_sender_.OnAck(*m));
    default: return StepPeerMessage(std::move(*m));
  }
}

void Node::StepPeerMessage(raft::Message m) {
  if (!AcceptableSnapshot(m)) return;
  if (absl::Status st = raft_->Step(std::move(m)); !st.ok()) {
    log_.Warn("DroppedMessage").Field("id", raft_->id()).Field("reason", st.message());
    return;
  }
  ProcessReady();
}

void Node::ReceiveSnapshotChunk(const raft::Message& m) {
  SnapshotReceiver::Result r = snapshot_receiver_.OnChunk(m, raft_->id());
  if (r.ack) env_.Send(r.ack->to, raft::EncodeMessage(*r.ack));
  if (!r.complete) return;
  // The whole stream: it must be the snapshot message that the chunks announced.
  raft::DecodeLimits limits;
  limits.message_bytes_max = config_.snapshot_stream.snapshot_bytes_max;
  absl::StatusOr<raft::Message> snap = raft::DecodeMessage(*r.complete, limits);
  if (!snap.ok() || snap->type != raft::MessageType::kSnapshot || snap->from != m.from ||
      snap->to != raft_->id() || snap->term != m.term || snap->snapshot->index != m.index ||
      snap->snapshot->term != m.log_term) {
    log_.Warn("DroppedBadSnapshot").Field("id", raft_->id()).Field("from", m.from)
        .Field("reason", snap.ok() ? "the stream does not match its snapshot message"
                                   : snap.status().message());
    return;
  }
  StepPeerMessage(std::move(*snap));
}

bool Node::AcceptableSnapshot(const raft::Message& m) const {
  if (!m.snapshot) return true;
  // A snapshot the state machine cannot restore is dropped here, before Raft adopts
  // it: a bad peer must not be able to stop this node.
  std::set<NodeId> alarms;
  std::string_view state;
  absl::Status st = ParseSnapshot(m.snapshot->data, &alarms, &state);
  if (st.ok()) st = state_machine_.CheckSnapshot(m.snapshot->index, state);
  if (st.ok()) return true;
  log_.Warn("DroppedBadSnapshot").Field("id", raft_->id()).Field("from", m.from)
      .Field("index", m.snapshot->index).Field("reason", st.message());
  return false;
}

uint64_t Node::AddPending(ResultDone done) {
  uint64_t id = 0;
  while (id == 0 || pending_.contains(id)) id = env_.Random().Next();
  const Nanos deadline = env_.Now() + config_.request_timeout;
  pending_.emplace(id, Pending{std::move(done)});
  deadlines_.emplace_back(deadline, id);
  return id;
}

void Node::Propose(std::string command, Done done) {
  ProposeForResult(std::move(command),
                   [done = std::move(done)](absl::Status st, std::any) { done(std::move(st)); });
}

void Node::ProposeForResult(std::string command, ResultDone done) {
  if (stopped_) return done(absl::UnavailableError("node stopped"), {});
  if (command.size() > config_.request_bytes_max) {
    return done(absl::InvalidArgumentError("etcdserver: request is too large"), {});
  }
  if (pending_.size() >= config_.pending_requests_max) {
    return done(absl::ResourceExhaustedError("too many pending requests"), {});
  }
  if (!nospace_alarms_.empty() && state_machine_.NeedsSpace(command)) {
    return done(NoSpaceError(), {});
  }
  const uint64_t id = AddPending(std::move(done));
  ProposeEntry(id, Frame(id, EntryKind::kCommand, command));
}

void Node::DisarmAlarm(NodeId member, Done done) {
  if (stopped_) return done(absl::UnavailableError("node stopped"));
  if (pending_.size() >= config_.pending_requests_max) {
    return done(absl::ResourceExhaustedError("too many pending requests"));
  }
  const uint64_t id = AddPending([done = std::move(done)](absl::Status st, std::any) { done(std::move(st)); });
  ProposeEntry(id, Frame(id, EntryKind::kNode, AlarmCommand(AlarmAction::kDeactivateNoSpace, member)));
}

void Node::ProposeEntry(uint64_t id, std::string entry) {
  proposals_.emplace_back(id, std::move(entry));
  ScheduleFlush();
}

void Node::Read(Done done) {
  if (stopped_) return done(absl::UnavailableError("node stopped"));
  if (pending_.size() >= config_.pending_requests_max) {
    return done(absl::ResourceExhaustedError("too many pending requests"));
  }
  reads_.push_back(AddPending([done = std::move(done)](absl::Status st, std::any) { done(std::move(st)); }));
  ScheduleFlush();
}

void Node::ScheduleFlush() {
  if (flush_timer_ == 0) flush_timer_ = env_.SetTimer(Nanos(0), [this] { FlushRequests(); });
}

void Node::FlushRequests() {
  flush_timer_ = 0;
  if (stopped_) return;  // FailStop answered them all
  // Proposals: as few Raft proposals as fit in request_bytes_max each (a follower
  // forwards each as one message), all in the Ready below: one append, one Sync.
  std::vector<std::pair<uint64_t, std::string>> proposals;
  proposals.swap(proposals_);
  for (size_t begin = 0; begin < proposals.size();) {
    std::vector<std::string> data;
    size_t bytes = 0;
    size_t end = begin;
    while (end < proposals.size() &&
           (data.empty() || bytes + proposals[end].second.size() <= config_.request_bytes_max)) {
      bytes += proposals[end].second.size();
      data.push_back(std::move(proposals[end].second));
      ++end;
    }
    if (absl::Status st = raft_->Propose(std::move(data)); !st.ok()) {
      for (size_t k = begin; k < end; ++k) Finish(proposals[k].first, st);
    }
    begin = end;
  }
  // Reads: one ReadIndex for the batch; its read point is at or after every read's
  // arrival, which is all linearizability asks of each.
  if (!reads_.empty()) {
    std::vector<uint64_t> reads;
    reads.swap(reads_);
    const uint64_t context = reads.front();
    if (absl::Status st = raft_->ReadIndex(Frame(context, EntryKind::kCommand, "")); !st.ok()) {
      for (uint64_t id : reads) Finish(id, st);
    } else {
      read_batches_.emplace(context, std::move(reads));
      read_batch_order_.push_back(context);
    }
  }
  ProcessReady();
}

void Node::ForgetAnsweredReadBatches() {
  // A batch whose ReadIndex is never answered (its leader lost office) leaves once its
  // newest read has timed out; deadlines are in arrival order, so the rest did too.
  while (!read_batch_order_.empty()) {
    auto it = read_batches_.find(read_batch_order_.front());
    if (it != read_batches_.end() && pending_.contains(it->second.back())) return;
    if (it != read_batches_.end()) read_batches_.erase(it);
    read_batch_order_.pop_front();
  }
}

absl::Status Node::TransferLeadership(NodeId to) {
  if (stopped_) return absl::UnavailableError("node stopped");
  absl::Status st = raft_->TransferLeadership(to);
  ProcessReady();
  return st;
}

void Node::Finish(uint64_t request_id, absl::Status status, std::any response) {
  auto it = pending_.find(request_id);
  if (it == pending_.end()) return;
  ResultDone done = std::move(it->second.done);
  pending_.erase(it);
  done(std::move(status), std::move(response));
}

void Node::ExpireRequests() {
  const Nanos now = env_.Now();
  while (!deadlines_.empty() && deadlines_.front().first <= now) {
    const uint64_t id = deadlines_.front().second;
    deadlines_.pop_front();
    Finish(id, absl::DeadlineExceededError("request timed out"));
  }
  ForgetAnsweredReadBatches();
}

void Node::ProcessReady() {
  while (!stopped_ && raft_->HasReady()) {
    raft::Ready rd = raft_->GetReady();
    SendAll(rd.messages);  // leader appends: in parallel with our own write (§10.2.1)
    PersistReady(rd);
    if (stopped_) return;  // fail-stop: nothing after a failed write is said or applied
    SendAll(rd.messages_after_persist);
    Outcomes outcomes;
    ApplyCommitted(rd, &outcomes);
    if (stopped_) return;
    for (const raft::ReadState& rs : rd.read_states) {
      uint64_t id = 0;
      EntryKind kind;
      std::string_view rest;
      if (!Unframe(rs.context, &id, &kind, &rest)) continue;
      auto batch = read_batches_.find(id);
      if (batch == read_batches_.end()) continue;  // timed out, or from before a restart
      for (uint64_t read : batch->second) {
        if (pending_.contains(read)) confirmed_reads_.emplace(rs.index, read);
      }
      read_batches_.erase(batch);  // its place in read_batch_order_ goes at the next tick
    }
    raft_->Advance(rd);
    MaybeSnapshot();
    // Callbacks run only now, outside the Ready: they may call back into this Node.
    for (Outcome& o : outcomes) Finish(o.request_id, std::move(o.status), std::move(o.response));
    FinishReads();
  }
}

void Node::PersistReady(const raft::Ready& rd) {
  if (!rd.MustPersist()) return;
  Storage& disk = env_.Disk();
  absl::Status st;
  if (rd.snapshot) {
    st = RestoreSnapshot(*rd.snapshot);
    if (!st.ok()) return FailStop(st, "restore snapshot");
    // On disk in this node's own form: a machine whose state is durable by itself
    // keeps only a marker in the log (StateMachine::TakeSnapshot).
    raft::Snapshot local = *rd.snapshot;
    if (state_machine_.KeepsStateOnDisk()) {
      local.data = WrapSnapshot(state_machine_.TakeSnapshot());
    }
    st = disk.InstallSnapshot(local);
    if (!st.ok()) return FailStop(st, "install snapshot");
  }
  if (!rd.entries.empty()) {
    st = disk.Append(rd.entries);
    if (!st.ok()) return FailStop(st, "append");
  }
  if (rd.hard_state) {
    st = disk.SaveHardState(*rd.hard_state);
    if (!st.ok()) return FailStop(st, "save hard state");
  }
  if (!rd.must_sync) return;  // a commit index alone rides along with the next sync
  st = disk.Sync();  // group commit: one sync for everything this Ready produced
  if (!st.ok()) return FailStop(st, "sync");
}

void Node::ApplyCommitted(const raft::Ready& rd, Outcomes* outcomes) {
  for (const raft::Entry& e : rd.committed_entries) {
    if (e.data.empty()) continue;  // a leader's no-op
    uint64_t id = 0;
    EntryKind kind;
    std::string_view payload;
    if (!Unframe(e.data, &id, &kind, &payload)) {
      // Only Nodes write entries, and all frame them: a bad frame is corruption.
      log_.Error("MalformedEntry").Field("id", raft_->id()).Field("index", e.index);
      continue;
    }
    absl::Status result;
    std::any response;
    if (kind == EntryKind::kNode) {
      result = ApplyNodeCommand(payload);
    } else if (e.index <= state_machine_.applied()) {
      // Applied before: the state came from a peer's newer snapshot, or survived a
      // restart. Its client's response is lost; the request times out (indeterminate).
      continue;
    } else {
      const bool wanted = pending_.contains(id);
      const StateMachine::ApplyContext context{.nospace = !nospace_alarms_.empty(),
                                               .term = e.term,
                                               .response = wanted ? &response : nullptr};
      result = state_machine_.Apply(e.index, id, payload, context);
      if (absl::Status health = state_machine_.health(); !health.ok()) {
        return FailStop(health, "apply");
      }
    }
    if (pending_.contains(id)) outcomes->push_back({id, std::move(result), std::move(response)});
  }
}

absl::Status Node::ApplyNodeCommand(std::string_view payload) {
  if (payload.size() != 9) {
    log_.Error("MalformedNodeCommand").Field("id", raft_->id()).Field("bytes", payload.size());
    return absl::InvalidArgumentError("malformed node command");
  }
  const NodeId member(ReadU64(payload.substr(1)));
  switch (static_cast<AlarmAction>(payload[0])) {
    case AlarmAction::kActivateNoSpace:
      if (member.value != 0 && nospace_alarms_.insert(member).second) {
        log_.Warn("AlarmActivated").Field("id", raft_->id()).Field("member", member)
            .Field("alarm", "NOSPACE");
      }
      return absl::OkStatus();
    case AlarmAction::kDeactivateNoSpace:
      if (nospace_alarms_.erase(member) > 0) {
        log_.Info("AlarmDeactivated").Field("id", raft_->id()).Field("member", member)
            .Field("alarm", "NOSPACE");
        if (member == raft_->id()) next_alarm_raise_ = Nanos(0);  // re-check at once
      }
      return absl::OkStatus();
  }
  log_.Error("MalformedNodeCommand").Field("id", raft_->id()).Field("action", static_cast<int>(payload[0]));
  return absl::InvalidArgumentError("unknown node command");
}

std::string Node::WrapSnapshot(std::string state_machine_snapshot) const {
  std::string out(kSnapshotMagic);
  const uint32_t count = static_cast<uint32_t>(nospace_alarms_.size());
  for (int k = 0; k < 4; ++k) out.push_back(static_cast<char>(count >> (8 * k)));
  for (NodeId member : nospace_alarms_) {
    for (int k = 0; k < 8; ++k) out.push_back(static_cast<char>(member.value >> (8 * k)));
  }
  out += state_machine_snapshot;
  return out;
}

absl::Status Node::RestoreSnapshot(const raft::Snapshot& snapshot) {
  std::set<NodeId> alarms;
  std::string_view state;
  if (absl::Status st = ParseSnapshot(snapshot.data, &alarms, &state); !st.ok()) return st;
  if (absl::Status st = state_machine_.Restore(snapshot.index, state); !st.ok()) return st;
  nospace_alarms_ = std::move(alarms);
  last_snapshot_index_ = snapshot.index;
  return absl::OkStatus();
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
  raft_->CreateSnapshot(applied, WrapSnapshot(state_machine_.TakeSnapshot()));
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

std::string Node::ForPeer(const raft::Snapshot& snapshot) const {
  KEEL_ASSERT(state_machine_.KeepsStateOnDisk());
  // The alarms as of the snapshot's index (the receiver replays the log after it), the
  // machine's state as of now (it skips what it already has).
  std::set<NodeId> alarms;
  std::string_view local;
  KEEL_ASSERT(ParseSnapshot(snapshot.data, &alarms, &local).ok());  // we wrote it
  std::string out(snapshot.data.substr(0, snapshot.data.size() - local.size()));
  out += state_machine_.ExportSnapshot();
  return out;
}

void Node::SendAll(const std::vector<raft::Message>& messages) {
  for (const raft::Message& original : messages) {
    const raft::Message* to_send = &original;
    raft::Message exported;
    if (original.type == raft::MessageType::kSnapshot && original.snapshot &&
        state_machine_.KeepsStateOnDisk()) {
      exported = original;
      exported.snapshot->data = ForPeer(*original.snapshot);
      to_send = &exported;
    }
    const raft::Message& m = *to_send;
    std::string bytes = raft::EncodeMessage(m);
    if (m.type == raft::MessageType::kSnapshot && snapshot_sender_.NeedsStream(bytes)) {
      for (const raft::Message& chunk : snapshot_sender_.Start(m, std::move(bytes))) {
        env_.Send(chunk.to, raft::EncodeMessage(chunk));
      }
      continue;
    }
    env_.Send(m.to, std::move(bytes));
  }
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
  proposals_.clear();
  reads_.clear();
  read_batches_.clear();
  read_batch_order_.clear();
  for (auto& [id, p] : pending) {
    p.done(absl::DeadlineExceededError("node stopped after a storage failure"), {});
  }
}

}  // namespace keel::server
