// Tests for Node (core/server/node.h): Raft glued to the Register and to the world
// through a fake Env. The fake owns a manual clock (timers fire only when a test
// advances it), records every message sent, and an in-memory Storage that records every
// call in order, treats writes as durable at once but counts those not yet covered by a
// Sync, fails the next Append or Sync on demand, and reports the free space a test sets.
// Everything is deterministic: fixed seeds, no real time, no threads.

#include "core/server/node.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/raft/codec.h"
#include "core/server/register.h"
#include "gtest/gtest.h"

namespace keel::server {
namespace {

using raft::Message;
using raft::MessageType;
using raft::Role;

// ---- fakes ------------------------------------------------------------------------

class MemStorage : public Storage {
 public:
  enum class Op { kAppend, kHardState, kSaveSnapshot, kInstallSnapshot, kCompact, kSync };

  absl::StatusOr<raft::RecoveredState> Load() override {
    if (!fail_load.ok()) return fail_load;
    raft::RecoveredState out;
    out.hard_state = hard_state;
    out.snapshot = snapshot;
    const LogIndex after = snapshot ? snapshot->index : LogIndex(0);
    for (const raft::Entry& e : entries) {
      if (e.index <= after) continue;  // the tail kept below the snapshot for followers
      if (e.index != after + 1 + out.entries.size()) {
        return absl::DataLossError("log has a gap after the snapshot");
      }
      out.entries.push_back(e);
    }
    return out;
  }

  absl::Status Append(std::span<const raft::Entry> batch) override {
    ops.push_back(Op::kAppend);
    if (!fail_next_append.ok()) return std::exchange(fail_next_append, absl::OkStatus());
    if (batch.empty()) return absl::OkStatus();
    while (!entries.empty() && entries.back().index >= batch.front().index) entries.pop_back();
    if (!entries.empty() && entries.back().index + 1 != batch.front().index) {
      ADD_FAILURE() << "Append leaves a gap before index " << batch.front().index;
    }
    entries.insert(entries.end(), batch.begin(), batch.end());
    ++unsynced_writes;
    return absl::OkStatus();
  }

  absl::Status SaveHardState(const raft::HardState& state) override {
    ops.push_back(Op::kHardState);
    hard_state = state;
    ++unsynced_writes;
    return absl::OkStatus();
  }

  absl::Status SaveSnapshot(const raft::Snapshot& s) override {
    ops.push_back(Op::kSaveSnapshot);
    ++save_snapshot_count;
    if (!snapshot || snapshot->index < s.index) snapshot = s;
    ++unsynced_writes;
    return absl::OkStatus();
  }

  absl::Status InstallSnapshot(const raft::Snapshot& s) override {
    ops.push_back(Op::kInstallSnapshot);
    entries.clear();
    snapshot = s;
    ++unsynced_writes;
    return absl::OkStatus();
  }

  absl::Status Compact(LogIndex through) override {
    ops.push_back(Op::kCompact);
    ++compact_count;
    compacted_through = through;
    if (!snapshot || through > snapshot->index) {
      ADD_FAILURE() << "Compact(" << through << ") beyond the snapshot";
    }
    while (!entries.empty() && entries.front().index <= through) entries.pop_front();
    ++unsynced_writes;
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> AvailableBytes() override { return available_bytes; }

  absl::Status Sync() override {
    ops.push_back(Op::kSync);
    ++sync_count;
    if (!fail_next_sync.ok()) return std::exchange(fail_next_sync, absl::OkStatus());
    unsynced_writes = 0;
    return absl::OkStatus();
  }

  // The durable image.
  raft::HardState hard_state;
  std::optional<raft::Snapshot> snapshot;
  std::deque<raft::Entry> entries;

  // What the node did.
  std::vector<Op> ops;
  int sync_count = 0;
  int save_snapshot_count = 0;
  int compact_count = 0;
  LogIndex compacted_through;
  int unsynced_writes = 0;  // writes since the last successful Sync

  // Faults on demand (OK: no fault).
  absl::Status fail_load;
  absl::Status fail_next_append;
  absl::Status fail_next_sync;
  uint64_t available_bytes = UINT64_MAX;
};

class RecordingSink : public LogSink {
 public:
  struct Event {
    Severity severity;
    std::string name;
    std::string fields;
  };
  void Write(Severity severity, std::string_view name, std::string_view fields) override {
    events.push_back({severity, std::string(name), std::string(fields)});
  }
  int CountAtLeast(Severity s) const {
    int n = 0;
    for (const Event& e : events) n += e.severity >= s ? 1 : 0;
    return n;
  }
  std::vector<Event> events;
};

class FakeEnv : public Env {
 public:
  FakeEnv(MemStorage& storage, uint64_t seed, LogSink* sink = nullptr)
      : storage_(storage), rng_(seed), sink_(sink) {}

  Nanos Now() override { return now_; }
  TimerId SetTimer(Nanos after, std::function<void()> fn) override {
    const TimerId id = ++last_timer_id_;
    timers_.emplace(now_ + after, std::make_pair(id, std::move(fn)));
    return id;
  }
  void CancelTimer(TimerId id) override {
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->second.first == id) {
        timers_.erase(it);
        return;
      }
    }
  }
  void Send(NodeId to, std::string bytes) override { sent.emplace_back(to, std::move(bytes)); }
  Rng& Random() override { return rng_; }
  Storage& Disk() override { return storage_; }
  Logger Log() override { return Logger(sink_, Severity::kDebug); }

  // Moves the clock forward by `d`, firing every timer due by then in deadline order.
  void AdvanceBy(Nanos d) {
    const Nanos target = now_ + d;
    while (!timers_.empty() && timers_.begin()->first <= target) {
      auto it = timers_.begin();
      now_ = it->first;
      std::function<void()> fn = std::move(it->second.second);
      timers_.erase(it);
      fn();
    }
    now_ = target;
  }
  void Ticks(int n) { AdvanceBy(Millis(100) * n); }
  // Runs what is due now without moving the clock: the node's zero-delay request flush
  // (node.h, "Batching"), as the host's event loop would in its next turn.
  void RunDue() { AdvanceBy(Nanos(0)); }
  size_t timer_count() const { return timers_.size(); }

  // Every message sent, decoded (the node only sends what it encoded itself).
  std::vector<Message> SentMessages() const {
    std::vector<Message> out;
    for (const auto& [to, bytes] : sent) {
      absl::StatusOr<Message> m = raft::DecodeMessage(bytes);
      EXPECT_TRUE(m.ok()) << m.status();
      if (m.ok()) {
        EXPECT_EQ(m->to, to);
        out.push_back(std::move(*m));
      }
    }
    return out;
  }

  std::vector<std::pair<NodeId, std::string>> sent;

 private:
  MemStorage& storage_;
  Rng rng_;
  LogSink* sink_;
  Nanos now_{0};
  TimerId last_timer_id_ = 0;
  std::multimap<Nanos, std::pair<TimerId, std::function<void()>>> timers_;
};

// ---- helpers ----------------------------------------------------------------------

NodeConfig Config(std::vector<uint64_t> voters) {
  NodeConfig c;
  c.raft.id = NodeId(1);
  for (uint64_t v : voters) c.raft.voters.push_back(NodeId(v));
  return c;
}

// The outcome of one request: how many times its callback ran, and the last status.
struct Outcome {
  int calls = 0;
  absl::Status status = absl::UnknownError("never completed");
};

Node::Done Capture(Outcome* out) {
  return [out](absl::Status st) {
    ++out->calls;
    out->status = std::move(st);
  };
}

// A message's header; tests fill in the rest.
Message PeerMessage(MessageType type, uint64_t from, uint64_t to, uint64_t term) {
  return Message{.type = type, .from = NodeId(from), .to = NodeId(to), .term = Term(term)};
}

std::string Heartbeat(uint64_t from, uint64_t term) {
  return raft::EncodeMessage(PeerMessage(MessageType::kHeartbeat, from, 1, term));
}

// The storage calls between two Syncs: one group commit each.
std::vector<std::vector<MemStorage::Op>> Batches(const std::vector<MemStorage::Op>& ops) {
  std::vector<std::vector<MemStorage::Op>> out(1);
  for (MemStorage::Op op : ops) {
    if (op == MemStorage::Op::kSync) {
      out.emplace_back();
    } else {
      out.back().push_back(op);
    }
  }
  out.pop_back();  // writes after the last Sync are not a finished batch
  return out;
}

// A single-node cluster, started and elected.
struct SingleNode {
  explicit SingleNode(NodeConfig config = Config({1}), LogSink* sink = nullptr)
      : env(storage, 1, sink), node(std::move(config), env, reg) {
    EXPECT_TRUE(node.Start().ok());
    env.Ticks(20);
    EXPECT_EQ(node.raft().role(), Role::kLeader);
  }
  MemStorage storage;
  FakeEnv env;
  Register reg;
  Node node;
};

// A node with its own Env, log sink and Register over `storage`, which outlives it: a
// restart builds another one over the same storage. Not started.
struct NodeOn {
  NodeOn(MemStorage& storage, NodeConfig config, uint64_t seed = 1)
      : env(storage, seed, &sink), node(std::move(config), env, reg) {}

  // Starts the node of a single-node cluster and lets it elect itself.
  void StartAndLead() {
    ASSERT_TRUE(node.Start().ok());
    env.Ticks(20);
    ASSERT_EQ(node.raft().role(), Role::kLeader);
  }

  // Start fails for bad durable state: DataLoss, and the node stays stopped with no
  // timer and an error logged.
  void ExpectStartFailsWithDataLoss() {
    EXPECT_TRUE(absl::IsDataLoss(node.Start()));
    EXPECT_TRUE(node.stopped());
    EXPECT_EQ(env.timer_count(), 0u);
    EXPECT_GE(sink.CountAtLeast(Severity::kError), 1);
  }

  RecordingSink sink;
  FakeEnv env;
  Register reg;
  Node node;
};

// Node 1 of a three-node cluster that has heard from no one: a follower with no leader.
class LonelyFollower : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(node.Start().ok()); }
  MemStorage storage;
  RecordingSink sink;
  FakeEnv env{storage, 1, &sink};
  Register reg;
  Node node{Config({1, 2, 3}), env, reg};
};

// ---- election and proposals on a single node ---------------------------------------

TEST(NodeElection, ASoleVoterElectsItselfAtStartWithoutWaitingForATimeout) {
  MemStorage storage;
  FakeEnv env(storage, 1);
  Register reg;
  Node node(Config({1}), env, reg);
  ASSERT_TRUE(node.Start().ok());
  EXPECT_FALSE(node.stopped());

  // No tick has passed: nobody else could win, so it did not wait an election timeout.
  EXPECT_EQ(node.raft().role(), Role::kLeader);
  EXPECT_EQ(node.raft().term(), Term(1));
  // Raft Figure 2: the term and the vote are durable before the node acts as leader.
  EXPECT_EQ(storage.hard_state.term, Term(1));
  EXPECT_EQ(storage.hard_state.vote, NodeId(1));
  // Synced: the term, the vote and the no-op. Staged for the next sync: the commit index
  // of the no-op, which needs no sync of its own (etcd's MustSync).
  using Op = MemStorage::Op;
  const std::vector<Op> want = {Op::kAppend, Op::kHardState, Op::kSync, Op::kHardState};
  EXPECT_EQ(storage.ops, want);
  EXPECT_TRUE(env.sent.empty());  // nobody to talk to
}

TEST(NodePropose, SingleNodeLeaderCompletesAProposalOnceTheRegisterAppliedIt) {
  SingleNode n;
  Outcome out;
  size_t values_when_done = 0;
  n.node.Propose("hello", [&](absl::Status st) {
    values_when_done = n.reg.values().size();
    ++out.calls;
    out.status = std::move(st);
  });
  n.env.RunDue();

  EXPECT_EQ(out.calls, 1);
  EXPECT_TRUE(out.status.ok()) << out.status;
  EXPECT_EQ(values_when_done, 1u);  // applied first, then reported
  ASSERT_EQ(n.reg.values().size(), 1u);
  EXPECT_EQ(n.reg.values()[0].data, "hello");
  EXPECT_EQ(n.reg.values()[0].index, LogIndex(2));  // after the leader's no-op at 1

  n.env.Ticks(100);  // past request_timeout: a finished request never ends twice
  EXPECT_EQ(out.calls, 1);
}

TEST(NodePropose, SingleNodeLeaderAppliesProposalsInTheOrderProposed) {
  SingleNode n;
  std::vector<Outcome> outs(5);
  for (int k = 0; k < 5; ++k) n.node.Propose(absl::StrCat("v", k), Capture(&outs[k]));
  n.env.RunDue();

  ASSERT_EQ(n.reg.values().size(), 5u);
  for (int k = 0; k < 5; ++k) {
    EXPECT_EQ(outs[k].calls, 1);
    EXPECT_TRUE(outs[k].status.ok());
    EXPECT_EQ(n.reg.values()[k].data, absl::StrCat("v", k));
  }
}

TEST(NodePropose, ProposalIsReportedOnlyAfterItsEntryIsSynced) {
  SingleNode n;
  n.storage.ops.clear();
  std::vector<MemStorage::Op> ops_when_done;
  bool entry_written_when_done = false;
  n.node.Propose("durable", [&](absl::Status st) {
    EXPECT_TRUE(st.ok());
    ops_when_done = n.storage.ops;
    for (const raft::Entry& e : n.storage.entries) {
      entry_written_when_done |= e.data.ends_with("durable");
    }
  });
  n.env.RunDue();
  EXPECT_TRUE(entry_written_when_done);
  // The entry's append was synced before the reply; the commit index that followed is
  // only staged (a crash may lose it: the leader tells the node again).
  using Op = MemStorage::Op;
  const std::vector<Op> want = {Op::kAppend, Op::kSync, Op::kHardState};
  EXPECT_EQ(ops_when_done, want);
  EXPECT_GE(n.storage.hard_state.commit, LogIndex(2));
}

// ---- group commit -----------------------------------------------------------------

TEST(NodeGroupCommit, ElectionWritesItsEntryAndHardStateUnderOneSync) {
  MemStorage storage;
  FakeEnv env(storage, 1);
  Register reg;
  Node node(Config({1}), env, reg);
  ASSERT_TRUE(node.Start().ok());
  env.Ticks(20);
  ASSERT_EQ(node.raft().role(), Role::kLeader);

  using Op = MemStorage::Op;
  // Ready 1: the no-op entry and the new term/vote, one Sync for both.
  // Ready 2: the commit index that the leader's own durable write allowed: staged, not
  // synced (it rides along with the next sync).
  const std::vector<std::vector<Op>> want = {{Op::kAppend, Op::kHardState}};
  EXPECT_EQ(Batches(storage.ops), want);
  EXPECT_EQ(storage.ops.back(), Op::kHardState);
  EXPECT_EQ(storage.sync_count, 1);
}

TEST(NodeGroupCommit, OneProposalOnASingleNodeLeaderSyncsOncePerReady) {
  SingleNode n;
  n.storage.ops.clear();
  const int syncs_before = n.storage.sync_count;
  Outcome out;
  n.node.Propose("x", Capture(&out));
  n.env.RunDue();
  ASSERT_TRUE(out.status.ok());

  // Two Readies: the entry, synced (then it counts toward the quorum and commits), then
  // the commit index with the entry to apply, staged without a sync of its own.
  using Op = MemStorage::Op;
  EXPECT_EQ(n.storage.sync_count - syncs_before, 1);
  const std::vector<Op> want = {Op::kAppend, Op::kSync, Op::kHardState};
  EXPECT_EQ(n.storage.ops, want);
}

TEST(NodeGroupCommit, TicksOfAnIdleLeaderWriteAndSyncNothing) {
  SingleNode n;
  n.storage.ops.clear();
  n.env.Ticks(50);
  EXPECT_TRUE(n.storage.ops.empty());  // no Sync without a write to make durable
}

// ---- reads ------------------------------------------------------------------------

TEST(NodeRead, ReadOnASingleNodeLeaderCompletesOkWithoutTouchingTheDisk) {
  SingleNode n;
  Outcome w;
  n.node.Propose("before the read", Capture(&w));
  n.env.RunDue();
  ASSERT_TRUE(w.status.ok());
  n.storage.ops.clear();

  Outcome r;
  size_t values_when_done = 0;
  n.node.Read([&](absl::Status st) {
    values_when_done = n.reg.values().size();
    ++r.calls;
    r.status = std::move(st);
  });
  n.env.RunDue();

  EXPECT_EQ(r.calls, 1);
  EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(values_when_done, 1u);  // the read point covers the acknowledged write
  EXPECT_TRUE(n.storage.ops.empty());
  n.env.Ticks(100);
  EXPECT_EQ(r.calls, 1);
}

TEST_F(LonelyFollower, ReadOnAFollowerWithNoKnownLeaderIsUnavailableAtOnce) {

  Outcome r;
  node.Read(Capture(&r));
  env.RunDue();
  EXPECT_EQ(r.calls, 1);
  EXPECT_TRUE(absl::IsUnavailable(r.status)) << r.status;
  EXPECT_TRUE(env.sent.empty());
}

// ---- requests on a follower ---------------------------------------------------------

TEST_F(LonelyFollower, FollowerWithNoKnownLeaderRefusesAProposalAtOnceAsUnavailable) {

  Outcome out;
  node.Propose("x", Capture(&out));
  env.RunDue();

  EXPECT_EQ(out.calls, 1);
  EXPECT_TRUE(absl::IsUnavailable(out.status)) << out.status;
  EXPECT_TRUE(env.sent.empty());  // nothing forwarded: the refusal guarantees nothing
  EXPECT_TRUE(storage.ops.empty());
  EXPECT_TRUE(reg.values().empty());

  env.Ticks(60);  // past request_timeout: the refused request does not also time out
  EXPECT_EQ(out.calls, 1);
  EXPECT_TRUE(absl::IsUnavailable(out.status));
}

TEST_F(LonelyFollower, FollowerForwardsAProposalToTheLeaderItHeardAHeartbeatFrom) {
  node.Receive(Heartbeat(2, 1));
  ASSERT_EQ(node.raft().leader(), NodeId(2));
  ASSERT_EQ(node.raft().term(), Term(1));
  env.sent.clear();

  Outcome out;
  node.Propose("forwarded", Capture(&out));
  env.RunDue();

  EXPECT_EQ(out.calls, 0);  // undecided until applied or timed out
  const std::vector<Message> sent = env.SentMessages();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].type, MessageType::kPropose);
  EXPECT_EQ(sent[0].to, NodeId(2));
  ASSERT_EQ(sent[0].entries.size(), 1u);
  EXPECT_TRUE(sent[0].entries[0].data.ends_with("forwarded"));
  EXPECT_TRUE(reg.values().empty());
}

TEST_F(LonelyFollower, UndecidedForwardedProposalEndsWithDeadlineExceededAfterTheTimeout) {
  node.Receive(Heartbeat(2, 1));
  ASSERT_EQ(node.raft().leader(), NodeId(2));

  Outcome propose;
  Outcome read;
  node.Propose("lost", Capture(&propose));
  env.RunDue();
  node.Read(Capture(&read));  // forwarded as a ReadIndex, never answered either
  ASSERT_EQ(propose.calls, 0);
  ASSERT_EQ(read.calls, 0);

  const Nanos timeout = node.config().request_timeout;
  env.AdvanceBy(timeout - Millis(1));
  EXPECT_EQ(propose.calls, 0);  // not before request_timeout
  EXPECT_EQ(read.calls, 0);

  env.AdvanceBy(node.config().tick_interval + Millis(1));  // expiry runs on a tick
  EXPECT_EQ(propose.calls, 1);
  EXPECT_TRUE(absl::IsDeadlineExceeded(propose.status)) << propose.status;
  EXPECT_EQ(read.calls, 1);
  EXPECT_TRUE(absl::IsDeadlineExceeded(read.status)) << read.status;

  env.AdvanceBy(timeout * 2);
  EXPECT_EQ(propose.calls, 1);  // exactly once
  EXPECT_EQ(read.calls, 1);
  EXPECT_TRUE(reg.values().empty());
}

TEST(NodeRequestTimeout, PendingRequestsAreLimitedAndTheLimitIsAnError) {
  NodeConfig config = Config({1, 2, 3});
  config.pending_requests_max = 2;
  MemStorage storage;
  FakeEnv env(storage, 1);
  Register reg;
  Node node(config, env, reg);
  ASSERT_TRUE(node.Start().ok());
  node.Receive(Heartbeat(2, 1));
  env.sent.clear();

  Outcome a, b, c;
  node.Propose("a", Capture(&a));
  node.Read(Capture(&b));
  node.Propose("c", Capture(&c));
  EXPECT_EQ(c.calls, 1);  // refused at once, before the batch is flushed
  env.RunDue();

  EXPECT_EQ(a.calls, 0);
  EXPECT_EQ(b.calls, 0);
  EXPECT_EQ(c.calls, 1);
  EXPECT_TRUE(absl::IsResourceExhausted(c.status)) << c.status;
  EXPECT_EQ(env.sent.size(), 2u);  // the refused one was not forwarded
}

// ---- untrusted bytes ----------------------------------------------------------------

using NodeReceive = LonelyFollower;

TEST_F(NodeReceive, GarbageBytesChangeNothing) {
  node.Receive(Heartbeat(2, 1));
  env.sent.clear();
  storage.ops.clear();
  const raft::HardState hard_state = node.raft().CurrentHardState();

  std::vector<std::string> inputs = {"", "garbage", std::string(64, '\xff'), std::string(8, '\0')};
  // Well-formed but for node 3; well-formed, a higher term, from a node not in the cluster.
  inputs.push_back(raft::EncodeMessage(PeerMessage(MessageType::kHeartbeat, 2, 3, 9)));
  inputs.push_back(raft::EncodeMessage(PeerMessage(MessageType::kVote, 9, 1, 9)));
  Rng rng(7);
  for (int k = 0; k < 200; ++k) {
    std::string s(rng.Uniform(64), '\0');
    for (char& ch : s) ch = static_cast<char>(rng.Next());
    inputs.push_back(std::move(s));
  }

  for (const std::string& bytes : inputs) node.Receive(bytes);

  EXPECT_FALSE(node.stopped());
  EXPECT_EQ(node.raft().CurrentHardState(), hard_state);
  EXPECT_EQ(node.raft().role(), Role::kFollower);
  EXPECT_EQ(node.raft().leader(), NodeId(2));
  EXPECT_TRUE(env.sent.empty());
  EXPECT_TRUE(storage.ops.empty());
  EXPECT_TRUE(reg.values().empty());
  EXPECT_EQ(sink.CountAtLeast(Severity::kError), 0);  // a peer's garbage is a warning
}

// ---- fail-stop --------------------------------------------------------------------

TEST(NodeFailStop, SyncErrorStopsTheNodeLogsAnErrorAndIgnoresEverythingAfter) {
  RecordingSink sink;
  SingleNode n(Config({1}), &sink);
  ASSERT_EQ(sink.CountAtLeast(Severity::kError), 0);

  n.storage.fail_next_sync = absl::DataLossError("fsync: EIO");
  Outcome first;
  n.node.Propose("never applied", Capture(&first));
  n.env.RunDue();

  EXPECT_TRUE(n.node.stopped());
  EXPECT_TRUE(n.reg.values().empty());  // nothing is applied after a failed sync
  ASSERT_GE(sink.CountAtLeast(Severity::kError), 1);
  bool named = false;
  for (const RecordingSink::Event& e : sink.events) {
    named |= e.severity == Severity::kError && e.name == "StorageFailed";
  }
  EXPECT_TRUE(named);

  // Later events: no timer left, and nothing reaches the disk, the network or Raft.
  EXPECT_EQ(n.env.timer_count(), 0u);
  n.storage.ops.clear();
  n.env.sent.clear();
  const Term term = n.node.raft().term();
  const LogIndex last = n.node.raft().log().LastIndex();

  Outcome later;
  n.node.Propose("after the failure", Capture(&later));
  n.env.RunDue();
  EXPECT_EQ(later.calls, 1);
  EXPECT_TRUE(absl::IsUnavailable(later.status)) << later.status;
  Outcome read;
  n.node.Read(Capture(&read));
  n.env.RunDue();
  EXPECT_EQ(read.calls, 1);
  EXPECT_TRUE(absl::IsUnavailable(read.status)) << read.status;
  EXPECT_TRUE(absl::IsUnavailable(n.node.TransferLeadership(NodeId(1))));
  n.node.Receive(Heartbeat(2, 5));
  n.env.Ticks(100);

  EXPECT_TRUE(n.node.stopped());
  EXPECT_TRUE(n.storage.ops.empty());
  EXPECT_TRUE(n.env.sent.empty());
  EXPECT_EQ(n.node.raft().term(), term);
  EXPECT_EQ(n.node.raft().log().LastIndex(), last);
  EXPECT_TRUE(n.reg.values().empty());
}

TEST(NodeFailStop, AppendErrorStopsTheNodeBeforeItSyncsOrApplies) {
  RecordingSink sink;
  SingleNode n(Config({1}), &sink);
  n.storage.ops.clear();

  n.storage.fail_next_append = absl::InternalError("write: ENOSPC");
  Outcome out;
  n.node.Propose("x", Capture(&out));
  n.env.RunDue();

  EXPECT_TRUE(n.node.stopped());
  EXPECT_EQ(n.storage.ops, std::vector<MemStorage::Op>{MemStorage::Op::kAppend});
  EXPECT_TRUE(n.reg.values().empty());
  EXPECT_GE(sink.CountAtLeast(Severity::kError), 1);
}

// Node's header: "Every request ends exactly once". A request in flight when the node
// fail-stops can no longer be decided by it; it must still end (as indeterminate, since
// its entry may already be on disk or at peers), or its client waits forever.
TEST(NodeFailStop, RequestPendingWhenTheNodeFailStopsStillEndsAsIndeterminate) {
  SingleNode n;
  n.storage.fail_next_sync = absl::DataLossError("fsync: EIO");
  Outcome out;
  n.node.Propose("in flight", Capture(&out));
  n.env.RunDue();
  ASSERT_TRUE(n.node.stopped());

  n.env.Ticks(100);  // well past request_timeout
  EXPECT_EQ(out.calls, 1);
  EXPECT_TRUE(absl::IsDeadlineExceeded(out.status)) << out.status;
}

TEST(NodeStart, LoadErrorLeavesTheNodeStoppedWithNoTimer) {
  MemStorage storage;
  storage.fail_load = absl::DataLossError("bad page");
  NodeOn n(storage, Config({1}));
  n.ExpectStartFailsWithDataLoss();
  Outcome out;
  n.node.Propose("x", Capture(&out));
  n.env.RunDue();
  EXPECT_TRUE(absl::IsUnavailable(out.status));
}

TEST(NodeStart, CorruptSnapshotOnDiskStopsTheNodeAndLeavesTheRegisterAlone) {
  MemStorage storage;
  storage.hard_state = {Term(1), NodeId(1), LogIndex(3)};
  storage.snapshot = raft::Snapshot{LogIndex(3), Term(1), "not a register snapshot"};
  FakeEnv env(storage, 1);
  Register reg;
  EXPECT_TRUE(reg.Apply(LogIndex(1), 5, "kept", {}).ok());
  Node node(Config({1}), env, reg);

  EXPECT_FALSE(node.Start().ok());
  EXPECT_TRUE(node.stopped());
  EXPECT_EQ(env.timer_count(), 0u);
  ASSERT_EQ(reg.values().size(), 1u);
  EXPECT_EQ(reg.values()[0].data, "kept");
}

// ---- snapshots --------------------------------------------------------------------

NodeConfig SnapshottingConfig() {
  NodeConfig c = Config({1});
  c.snapshot_entries = 5;
  c.snapshot_catchup_entries = 2;
  return c;
}

// Index 1 is the leader's no-op; proposals k = 0..11 land at indexes 2..13.
void ProposeTwelve(Node& node, FakeEnv& env, const Register& reg) {
  for (int k = 0; k < 12; ++k) {
    Outcome out;
    node.Propose(absl::StrCat("value-", k), Capture(&out));
    env.RunDue();
    ASSERT_TRUE(out.status.ok()) << k << ": " << out.status;
  }
  ASSERT_EQ(reg.values().size(), 12u);
}

TEST(NodeSnapshot, TakesASnapshotEverySnapshotEntriesAndKeepsCatchupEntries) {
  SingleNode n(SnapshottingConfig());
  ProposeTwelve(n.node, n.env, n.reg);

  // Applied reaches 5 and 10: a snapshot each, then compaction through applied - 2.
  EXPECT_EQ(n.storage.save_snapshot_count, 2);
  EXPECT_EQ(n.storage.compact_count, 2);
  ASSERT_TRUE(n.storage.snapshot.has_value());
  EXPECT_EQ(n.storage.snapshot->index, LogIndex(10));
  EXPECT_EQ(n.storage.snapshot->term, Term(1));
  EXPECT_EQ(n.storage.compacted_through, LogIndex(8));
  ASSERT_FALSE(n.storage.entries.empty());
  EXPECT_EQ(n.storage.entries.front().index, LogIndex(9));
  EXPECT_EQ(n.storage.entries.back().index, LogIndex(13));
  EXPECT_EQ(n.node.raft().log().FirstIndex(), LogIndex(9));

  // The snapshot holds exactly the values applied through its index.
  // The Node's snapshot: "KNS1", no alarms (u32 0), then the register's own.
  const std::string& data = n.storage.snapshot->data;
  ASSERT_EQ(data.substr(0, 8), std::string("KNS1\0\0\0\0", 8));
  Register from_snapshot;
  ASSERT_TRUE(from_snapshot.Restore(LogIndex(10), data.substr(8)).ok());
  const std::vector<Register::Value> want(n.reg.values().begin(),
                                          n.reg.values().begin() + 9);  // indexes 2..10
  EXPECT_EQ(from_snapshot.values(), want);
}

TEST(NodeSnapshot, CompactionIsWrittenRightAfterTheSnapshotThatCoversItAndThenSynced) {
  SingleNode n(SnapshottingConfig());
  n.storage.ops.clear();
  ProposeTwelve(n.node, n.env, n.reg);

  using Op = MemStorage::Op;
  const std::vector<Op>& ops = n.storage.ops;
  int pairs = 0;
  for (size_t k = 0; k < ops.size(); ++k) {
    if (ops[k] != Op::kCompact) continue;
    // A crash must never keep a compaction without the snapshot that covers it.
    ASSERT_GT(k, 0u);
    EXPECT_EQ(ops[k - 1], Op::kSaveSnapshot);
    // Durable with the next Ready's Sync (no extra Sync of its own is required).
    EXPECT_NE(std::find(ops.begin() + k, ops.end(), Op::kSync), ops.end());
    ++pairs;
  }
  EXPECT_EQ(pairs, 2);
}

TEST(NodeSnapshot, RestartRestoresTheRegisterFromTheSnapshotThenAppliesTheRestOfTheLog) {
  MemStorage storage;
  std::vector<Register::Value> before;
  {
    NodeOn first(storage, SnapshottingConfig());
    ASSERT_NO_FATAL_FAILURE(first.StartAndLead());
    ProposeTwelve(first.node, first.env, first.reg);
    before = first.reg.values();
  }  // the node, its Env and its Register are gone; the storage stays
  ASSERT_EQ(storage.save_snapshot_count, 2);
  ASSERT_TRUE(storage.snapshot.has_value());
  const LogIndex snapshot_index = storage.snapshot->index;
  ASSERT_EQ(snapshot_index, LogIndex(10));

  NodeOn restarted(storage, SnapshottingConfig(), /*seed=*/2);
  FakeEnv& env = restarted.env;
  Register& reg = restarted.reg;
  Node& node = restarted.node;
  std::vector<Register::Value> applied_after_restore;
  size_t values_at_first_apply = 0;
  reg.SetObserver([&](const Register::Value& v) {
    if (applied_after_restore.empty()) values_at_first_apply = reg.values().size();
    applied_after_restore.push_back(v);
  });
  ASSERT_TRUE(node.Start().ok());

  // Values through the snapshot came from Restore (no observer call); the log after it
  // was applied on top, in order.
  EXPECT_EQ(reg.values(), before);
  ASSERT_FALSE(applied_after_restore.empty());
  EXPECT_EQ(values_at_first_apply, 10u);  // 9 restored + the first replayed one
  for (const Register::Value& v : applied_after_restore) EXPECT_GT(v.index, snapshot_index);
  const std::vector<Register::Value> tail(before.begin() + 9, before.end());
  EXPECT_EQ(applied_after_restore, tail);

  // And it carries on: re-elected at a new term, it appends after the restored log.
  env.Ticks(20);
  ASSERT_EQ(node.raft().role(), Role::kLeader);
  Outcome out;
  node.Propose("after restart", Capture(&out));
  env.RunDue();
  ASSERT_TRUE(out.status.ok()) << out.status;
  ASSERT_EQ(reg.values().size(), before.size() + 1);
  EXPECT_EQ(reg.values().back().data, "after restart");
  EXPECT_EQ(reg.values().back().index, LogIndex(15));  // 14 is the new term's no-op
}

}  // namespace
}  // namespace keel::server

namespace keel::server {
namespace {

// Regression (review): callbacks run outside the Ready, so the usual client loop (issue
// the next request from the completion of the last) is safe.
TEST(NodeRequests, ADoneCallbackMayIssueTheNextRequest) {
  SingleNode n;
  Outcome second;
  n.node.Propose("first", [&](absl::Status st) {
    n.node.Propose("second", Capture(&second));
  });
  n.env.RunDue();  // the first; its callback proposes the second, flushed in turn
  EXPECT_EQ(second.calls, 1);
}

}  // namespace
}  // namespace keel::server
namespace keel::server {
namespace {
// Regression (review): a peer's snapshot that the state machine cannot restore is dropped
// before Raft adopts it; it must not fail-stop the node.
TEST_F(LonelyFollower, ASnapshotThatDoesNotParseFromAPeerIsDroppedNotFatal) {
  Message m = PeerMessage(MessageType::kSnapshot, 2, 1, 1);
  m.snapshot = raft::Snapshot{LogIndex(5), Term(1), "not a register snapshot"};
  node.Receive(raft::EncodeMessage(m));
  EXPECT_FALSE(node.stopped()) << "one bad snapshot message fail-stopped the node";
  EXPECT_EQ(node.raft().log().committed(), LogIndex(0));
}
}  // namespace
}  // namespace keel::server

namespace keel::server {
namespace {
TEST(NodeRequests, ARequestOverTheSizeLimitIsRefusedAndNothingIsProposed) {
  SingleNode n;
  Outcome big;
  n.node.Propose(std::string(n.node.config().request_bytes_max + 1, 'x'), Capture(&big));
  n.env.RunDue();
  EXPECT_EQ(big.calls, 1);
  EXPECT_TRUE(absl::IsInvalidArgument(big.status)) << big.status;
}
}  // namespace
}  // namespace keel::server

namespace keel::server {
namespace {

// ---- the NOSPACE alarm ------------------------------------------------------------
//
// The entry and snapshot formats below are written from node.h, independently of the
// code under test, so that the tests can play a leader that commits alarm entries and
// a peer that sends (possibly malformed) snapshots.

void PutU64(std::string* out, uint64_t v) {
  for (int k = 0; k < 8; ++k) out->push_back(static_cast<char>(v >> (8 * k)));
}

uint64_t GetU64(std::string_view bytes) {
  uint64_t v = 0;
  for (int k = 0; k < 8; ++k) v |= uint64_t{static_cast<uint8_t>(bytes[k])} << (8 * k);
  return v;
}

constexpr uint8_t kCommandKind = 0;
constexpr uint8_t kNodeKind = 1;
constexpr uint8_t kActivate = 1;
constexpr uint8_t kDeactivate = 2;

// An entry's data: u64 request id, one byte of kind, the payload.
std::string Frame(uint64_t request_id, uint8_t kind, std::string_view payload) {
  std::string out;
  PutU64(&out, request_id);
  out.push_back(static_cast<char>(kind));
  out.append(payload);
  return out;
}

// A Node command: one byte of action, u64 member id; framed with no request id.
std::string AlarmEntry(uint8_t action, uint64_t member) {
  std::string payload(1, static_cast<char>(action));
  PutU64(&payload, member);
  return Frame(0, kNodeKind, payload);
}

// "KNS1" | u32 alarm count | u64 member id per alarm | the state machine's snapshot.
std::string NodeSnapshot(const std::vector<uint64_t>& alarms, std::string_view state) {
  std::string out = "KNS1";
  for (int k = 0; k < 4; ++k) out.push_back(static_cast<char>(alarms.size() >> (8 * k)));
  for (uint64_t member : alarms) PutU64(&out, member);
  out.append(state);
  return out;
}

// Node 2, leader at term 1, appends `data` after (prev, term 1) and commits all of it
// (or through `commit`).
std::string AppendFromLeader(uint64_t prev, const std::vector<std::string>& data,
                             std::optional<uint64_t> commit = std::nullopt) {
  Message m = PeerMessage(MessageType::kAppend, 2, 1, 1);
  m.index = LogIndex(prev);
  m.log_term = Term(prev == 0 ? 0 : 1);
  for (size_t k = 0; k < data.size(); ++k) {
    m.entries.push_back({Term(1), LogIndex(prev + 1 + k), raft::EntryType::kNormal, data[k]});
  }
  m.commit = LogIndex(commit.value_or(prev + data.size()));
  return raft::EncodeMessage(m);
}

std::string SnapshotFromLeader(uint64_t index, std::string data) {
  Message m = PeerMessage(MessageType::kSnapshot, 2, 1, 1);
  m.snapshot = raft::Snapshot{LogIndex(index), Term(1), std::move(data)};
  return raft::EncodeMessage(m);
}

// The data of the one proposal a follower forwarded to the leader since `sent` was last
// cleared ("" if there is not exactly one).
std::string ForwardedProposal(const FakeEnv& env) {
  std::vector<std::string> out;
  for (const Message& m : env.SentMessages()) {
    if (m.type != MessageType::kPropose) continue;
    for (const raft::Entry& e : m.entries) out.push_back(e.data);
  }
  EXPECT_EQ(out.size(), 1u);
  return out.size() == 1 ? out[0] : std::string();
}

int CountEvents(const RecordingSink& sink, Severity severity, std::string_view name) {
  int n = 0;
  for (const RecordingSink::Event& e : sink.events) {
    n += e.severity == severity && e.name == name ? 1 : 0;
  }
  return n;
}

const std::set<NodeId> kNoAlarm;

TEST(NodeNoSpace, ANodeShortOfSpaceRaisesTheAlarmThroughTheLogAtItsNextTick) {
  RecordingSink sink;
  SingleNode n(Config({1}), &sink);
  n.storage.available_bytes = n.node.config().space_reserve_bytes - 1;
  EXPECT_EQ(n.node.nospace_alarms(), kNoAlarm);  // the disk is checked on a tick

  n.env.Ticks(1);

  EXPECT_EQ(n.node.nospace_alarms(), std::set<NodeId>{NodeId(1)});
  // Replicated: a committed entry of kind 1, "activate NOSPACE for member 1".
  ASSERT_FALSE(n.storage.entries.empty());
  EXPECT_EQ(n.storage.entries.back().data, AlarmEntry(kActivate, 1));
  EXPECT_EQ(n.node.raft().log().applied(), n.storage.entries.back().index);
  EXPECT_EQ(CountEvents(sink, Severity::kWarn, "AlarmActivated"), 1);
  EXPECT_EQ(sink.CountAtLeast(Severity::kError), 0);
  EXPECT_TRUE(n.reg.values().empty());  // a Node command is not the register's

  const LogIndex last = n.node.raft().log().LastIndex();
  n.env.Ticks(50);  // an active alarm is not raised again
  EXPECT_EQ(n.node.raft().log().LastIndex(), last);
}

TEST(NodeNoSpace, ExactlyTheReserveFreeRaisesNoAlarm) {
  SingleNode n;
  n.storage.available_bytes = n.node.config().space_reserve_bytes;
  const LogIndex last = n.node.raft().log().LastIndex();
  n.env.Ticks(50);
  EXPECT_EQ(n.node.nospace_alarms(), kNoAlarm);
  EXPECT_EQ(n.node.raft().log().LastIndex(), last);
}

TEST(NodeNoSpace, UnderTheAlarmAWriteIsRefusedAtOnceAndChangesNothingButReadsAreServed) {
  SingleNode n;
  Outcome before;
  n.node.Propose("before", Capture(&before));
  n.env.RunDue();
  ASSERT_TRUE(before.status.ok());
  n.storage.available_bytes = 0;
  n.env.Ticks(1);
  ASSERT_EQ(n.node.nospace_alarms(), std::set<NodeId>{NodeId(1)});
  n.storage.ops.clear();
  const LogIndex last = n.node.raft().log().LastIndex();

  Outcome write;
  n.node.Propose("refused", Capture(&write));
  n.env.RunDue();

  EXPECT_EQ(write.calls, 1);
  EXPECT_EQ(write.status, NoSpaceError());
  EXPECT_TRUE(absl::IsResourceExhausted(write.status));
  ASSERT_EQ(n.reg.values().size(), 1u);
  EXPECT_EQ(n.reg.values()[0].data, "before");
  EXPECT_EQ(n.node.raft().log().LastIndex(), last);  // never proposed
  EXPECT_TRUE(n.storage.ops.empty());

  Outcome read;
  n.node.Read(Capture(&read));
  n.env.RunDue();
  EXPECT_EQ(read.calls, 1);
  EXPECT_TRUE(read.status.ok()) << read.status;

  n.env.Ticks(100);  // the refused request does not also time out
  EXPECT_EQ(write.calls, 1);
}

TEST(NodeNoSpace, DisarmingTheAlarmWithSpaceBackLetsWritesThroughAgain) {
  SingleNode n;
  n.storage.available_bytes = 0;
  n.env.Ticks(1);
  ASSERT_EQ(n.node.nospace_alarms(), std::set<NodeId>{NodeId(1)});

  n.storage.available_bytes = UINT64_MAX;  // the operator made room
  n.env.Ticks(20);
  EXPECT_EQ(n.node.nospace_alarms(), std::set<NodeId>{NodeId(1)});  // only a disarm clears it

  Outcome disarm;
  n.node.DisarmAlarm(NodeId(1), Capture(&disarm));
  n.env.RunDue();
  EXPECT_EQ(disarm.calls, 1);
  EXPECT_TRUE(disarm.status.ok()) << disarm.status;
  EXPECT_EQ(n.node.nospace_alarms(), kNoAlarm);
  EXPECT_EQ(n.storage.entries.back().data.substr(8), AlarmEntry(kDeactivate, 1).substr(8));

  Outcome write;
  n.node.Propose("after the disarm", Capture(&write));
  n.env.RunDue();
  EXPECT_TRUE(write.status.ok()) << write.status;
  ASSERT_EQ(n.reg.values().size(), 1u);
  EXPECT_EQ(n.reg.values()[0].data, "after the disarm");

  n.env.Ticks(50);
  EXPECT_EQ(n.node.nospace_alarms(), kNoAlarm);
}

TEST(NodeNoSpace, DisarmingWhileStillShortOfSpaceRaisesTheAlarmAgainAtTheNextTick) {
  SingleNode n;
  n.storage.available_bytes = 0;
  n.env.Ticks(1);
  ASSERT_EQ(n.node.nospace_alarms(), std::set<NodeId>{NodeId(1)});

  Outcome disarm;
  n.node.DisarmAlarm(NodeId(1), Capture(&disarm));
  n.env.RunDue();
  ASSERT_TRUE(disarm.status.ok()) << disarm.status;
  ASSERT_EQ(n.node.nospace_alarms(), kNoAlarm);

  n.env.Ticks(1);  // not a whole election timeout: the disarm re-armed the check
  EXPECT_EQ(n.node.nospace_alarms(), std::set<NodeId>{NodeId(1)});
  Outcome write;
  n.node.Propose("refused", Capture(&write));
  n.env.RunDue();
  EXPECT_EQ(write.status, NoSpaceError());
  EXPECT_TRUE(n.reg.values().empty());
}

TEST(NodeNoSpace, DisarmingAnotherMembersAlarmLeavesThisOne) {
  SingleNode n;
  n.storage.available_bytes = 0;
  n.env.Ticks(1);
  Outcome disarm;
  n.node.DisarmAlarm(NodeId(7), Capture(&disarm));
  n.env.RunDue();
  EXPECT_TRUE(disarm.status.ok()) << disarm.status;  // nothing to clear is not an error
  EXPECT_EQ(n.node.nospace_alarms(), std::set<NodeId>{NodeId(1)});
}

TEST(NodeNoSpace, TheAlarmIsInTheSnapshotAndARestartRestoresIt) {
  MemStorage storage;
  {
    NodeOn first(storage, SnapshottingConfig());
    ASSERT_NO_FATAL_FAILURE(first.StartAndLead());
    for (int k = 0; k < 3; ++k) {  // indexes 2..4, after the no-op at 1
      Outcome out;
      first.node.Propose(absl::StrCat("v", k), Capture(&out));
      first.env.RunDue();
      ASSERT_TRUE(out.status.ok()) << out.status;
    }
    ASSERT_EQ(storage.save_snapshot_count, 0);
    storage.available_bytes = 0;
    first.env.Ticks(1);  // the alarm at index 5: applied, then the snapshot at 5
    ASSERT_EQ(first.node.nospace_alarms(), std::set<NodeId>{NodeId(1)});
  }
  ASSERT_EQ(storage.save_snapshot_count, 1);
  ASSERT_TRUE(storage.snapshot.has_value());
  ASSERT_EQ(storage.snapshot->index, LogIndex(5));
  const std::string& data = storage.snapshot->data;
  ASSERT_GE(data.size(), 16u);
  EXPECT_EQ(data.substr(0, 16), NodeSnapshot({1}, ""));
  // Only the snapshot can bring the alarm back: Load drops entries at or below it.
  storage.available_bytes = UINT64_MAX;

  NodeOn restarted(storage, SnapshottingConfig(), /*seed=*/2);
  Register& reg = restarted.reg;
  Node& node = restarted.node;
  ASSERT_TRUE(node.Start().ok());
  EXPECT_EQ(node.nospace_alarms(), std::set<NodeId>{NodeId(1)});
  ASSERT_EQ(reg.values().size(), 3u);
  EXPECT_EQ(reg.values()[2].data, "v2");

  restarted.env.Ticks(20);
  ASSERT_EQ(node.raft().role(), Role::kLeader);
  Outcome refused;
  node.Propose("refused", Capture(&refused));
  restarted.env.RunDue();
  EXPECT_EQ(refused.status, NoSpaceError());
  Outcome disarm;
  node.DisarmAlarm(NodeId(1), Capture(&disarm));
  restarted.env.RunDue();
  ASSERT_TRUE(disarm.status.ok()) << disarm.status;
  Outcome write;
  node.Propose("accepted", Capture(&write));
  restarted.env.RunDue();
  EXPECT_TRUE(write.status.ok()) << write.status;
  EXPECT_EQ(reg.values().back().data, "accepted");
}

TEST_F(LonelyFollower, AFollowerShortOfSpaceForwardsItsAlarmOncePerElectionTimeout) {
  node.Receive(Heartbeat(2, 1));
  storage.available_bytes = 0;
  env.sent.clear();
  auto raises = [&] {
    int n = 0;
    for (const Message& m : env.SentMessages()) {
      if (m.type != MessageType::kPropose) continue;
      for (const raft::Entry& e : m.entries) n += e.data == AlarmEntry(kActivate, 1) ? 1 : 0;
    }
    return n;
  };

  env.Ticks(1);
  EXPECT_EQ(raises(), 1);
  // The leader has not committed it yet: not repeated within an election timeout...
  for (int k = 0; k < node.config().raft.election_ticks - 1; ++k) {
    node.Receive(Heartbeat(2, 1));
    env.Ticks(1);
  }
  EXPECT_EQ(raises(), 1);
  // ... and retried once it has passed (the first one may have been lost).
  node.Receive(Heartbeat(2, 1));
  env.Ticks(1);
  EXPECT_EQ(raises(), 2);
  EXPECT_EQ(node.nospace_alarms(), kNoAlarm);  // only a committed alarm counts
}

TEST_F(LonelyFollower, AWriteAlreadyInTheLogWhenTheAlarmAppliesIsRejectedAtApply) {
  node.Receive(Heartbeat(2, 1));
  env.sent.clear();
  Outcome write;
  node.Propose("in flight", Capture(&write));
  env.RunDue();
  const std::string forwarded = ForwardedProposal(env);
  ASSERT_TRUE(forwarded.ends_with("in flight"));

  // The leader commits node 3's alarm, then the forwarded write.
  node.Receive(AppendFromLeader(0, {AlarmEntry(kActivate, 3), forwarded}));

  EXPECT_EQ(node.raft().log().applied(), LogIndex(2));
  EXPECT_EQ(node.nospace_alarms(), std::set<NodeId>{NodeId(3)});
  EXPECT_EQ(write.calls, 1);
  EXPECT_EQ(write.status, NoSpaceError());
  EXPECT_TRUE(reg.values().empty());
  EXPECT_FALSE(node.stopped());

  Outcome next;  // and the next one is refused before it is proposed
  env.sent.clear();
  node.Propose("next", Capture(&next));
  env.RunDue();
  EXPECT_EQ(next.status, NoSpaceError());
  EXPECT_TRUE(env.sent.empty());
}

TEST_F(LonelyFollower, ARejectedWritesDuplicateIsNotAppliedAfterTheDisarm) {
  node.Receive(AppendFromLeader(0, {AlarmEntry(kActivate, 3), Frame(77, kCommandKind, "dup"),
                                    AlarmEntry(kDeactivate, 3), Frame(77, kCommandKind, "dup"),
                                    Frame(78, kCommandKind, "fresh")}));
  EXPECT_EQ(node.raft().log().applied(), LogIndex(5));
  EXPECT_EQ(node.nospace_alarms(), kNoAlarm);
  const std::vector<Register::Value> want = {{78, LogIndex(5), "fresh"}};
  EXPECT_EQ(reg.values(), want);
}

TEST_F(LonelyFollower, MalformedNodeEntriesAreLoggedAsErrorsAndSkipped) {
  std::string unknown_action(1, '\x09');
  PutU64(&unknown_action, 3);
  node.Receive(AppendFromLeader(0, {
      Frame(0, kNodeKind, "\x01"),                  // too short for a Node command
      Frame(0, kNodeKind, unknown_action),          // an action that does not exist
      AlarmEntry(kActivate, 3) + "x",               // too long
      Frame(0, 7, AlarmEntry(kActivate, 3).substr(9)),  // a kind that does not exist
      std::string(5, '\x01'),                        // shorter than a frame
      AlarmEntry(kActivate, 0),                      // member 0 is nobody
      Frame(88, kCommandKind, "after"),
  }));

  EXPECT_FALSE(node.stopped());
  EXPECT_EQ(node.raft().log().applied(), LogIndex(7));
  EXPECT_EQ(node.nospace_alarms(), kNoAlarm);
  const std::vector<Register::Value> want = {{88, LogIndex(7), "after"}};
  EXPECT_EQ(reg.values(), want);
  EXPECT_EQ(CountEvents(sink, Severity::kError, "MalformedNodeCommand"), 3);
  EXPECT_EQ(CountEvents(sink, Severity::kError, "MalformedEntry"), 2);
  EXPECT_EQ(CountEvents(sink, Severity::kError, "StorageFailed"), 0);

  // It carries on: the next entries apply.
  node.Receive(AppendFromLeader(7, {AlarmEntry(kActivate, 2)}));
  EXPECT_EQ(node.nospace_alarms(), std::set<NodeId>{NodeId(2)});
}

// etcd's MustSync: new entries are synced before the follower acknowledges them; a
// commit index alone is written for the next sync to carry.
TEST_F(LonelyFollower, AFollowerSyncsNewEntriesButNotACommitIndexAlone) {
  node.Receive(AppendFromLeader(0, {Frame(1, kCommandKind, "a"), Frame(2, kCommandKind, "b")},
                                /*commit=*/0));
  using Op = MemStorage::Op;
  EXPECT_EQ(storage.ops, (std::vector<Op>{Op::kAppend, Op::kHardState, Op::kSync}));
  EXPECT_TRUE(reg.values().empty());
  storage.ops.clear();
  env.sent.clear();

  Message hb = PeerMessage(MessageType::kHeartbeat, 2, 1, 1);
  hb.commit = LogIndex(2);
  node.Receive(raft::EncodeMessage(hb));

  EXPECT_EQ(storage.ops, std::vector<Op>{Op::kHardState});
  EXPECT_EQ(storage.hard_state.commit, LogIndex(2));
  EXPECT_EQ(storage.unsynced_writes, 1);
  EXPECT_EQ(reg.values().size(), 2u);  // applied: the entries themselves were synced
  EXPECT_EQ(env.SentMessages().size(), 1u);  // the heartbeat's answer
}

TEST_F(LonelyFollower, DisarmAlarmWithNoKnownLeaderIsUnavailableAtOnce) {
  Outcome disarm;
  node.DisarmAlarm(NodeId(3), Capture(&disarm));
  env.RunDue();
  EXPECT_EQ(disarm.calls, 1);
  EXPECT_TRUE(absl::IsUnavailable(disarm.status)) << disarm.status;
  EXPECT_TRUE(env.sent.empty());
}

TEST_F(LonelyFollower, ASnapshotFromThePeerRestoresItsAlarms) {
  Register source;
  ASSERT_TRUE(source.Apply(LogIndex(3), 41, "kept", {}).ok());
  node.Receive(SnapshotFromLeader(5, NodeSnapshot({2, 3}, source.TakeSnapshot())));

  EXPECT_FALSE(node.stopped());
  EXPECT_EQ(node.raft().log().committed(), LogIndex(5));
  EXPECT_EQ(node.nospace_alarms(), (std::set<NodeId>{NodeId(2), NodeId(3)}));
  EXPECT_EQ(reg.values(), source.values());
  ASSERT_TRUE(storage.snapshot.has_value());
  EXPECT_EQ(storage.snapshot->index, LogIndex(5));

  Outcome write;
  node.Propose("refused", Capture(&write));
  env.RunDue();
  EXPECT_EQ(write.status, NoSpaceError());

  // A later snapshot without alarms clears them.
  node.Receive(SnapshotFromLeader(9, NodeSnapshot({}, source.TakeSnapshot())));
  EXPECT_EQ(node.raft().log().committed(), LogIndex(9));
  EXPECT_EQ(node.nospace_alarms(), kNoAlarm);
}

TEST_F(LonelyFollower, AMalformedNodeSnapshotFromAPeerIsDroppedNotFatal) {
  const std::string state = Register().TakeSnapshot();
  std::string too_many = NodeSnapshot({}, "");
  too_many[4] = 0x01;  // 1025 alarms, each present
  too_many[5] = 0x04;
  for (uint64_t k = 1; k <= 1025; ++k) PutU64(&too_many, k);
  too_many += state;
  std::string short_list = NodeSnapshot({2, 3}, "");
  short_list.resize(short_list.size() - 1);  // the last member id is cut
  const std::vector<std::string> bad = {
      "KNS1",                                       // no count
      "KNS2" + NodeSnapshot({}, state).substr(4),   // bad magic
      short_list,
      NodeSnapshot({2, 2}, state),                  // a member twice
      NodeSnapshot({0}, state),                     // member 0
      too_many,
      NodeSnapshot({2}, "not a register snapshot"),
      NodeSnapshot({2}, state + "x"),               // the register's bytes are corrupt
  };
  for (size_t k = 0; k < bad.size(); ++k) {
    node.Receive(SnapshotFromLeader(5, bad[k]));
    EXPECT_FALSE(node.stopped()) << k;
    EXPECT_EQ(node.raft().log().committed(), LogIndex(0)) << k;
    EXPECT_EQ(node.nospace_alarms(), kNoAlarm) << k;
    EXPECT_FALSE(storage.snapshot.has_value()) << k;
  }
  // The same message with well-formed bytes is taken: the drops were about the bytes.
  node.Receive(SnapshotFromLeader(5, NodeSnapshot({2}, state)));
  EXPECT_EQ(node.raft().log().committed(), LogIndex(5));
  EXPECT_EQ(node.nospace_alarms(), std::set<NodeId>{NodeId(2)});
}

TEST(NodeStart, AMalformedNodeSnapshotOnDiskIsAnError) {
  const std::string state = Register().TakeSnapshot();
  // A disk holding a snapshot at 3 (term 1) with `data`, committed.
  auto disk = [](std::string data) {
    MemStorage storage;
    storage.hard_state = {Term(1), NodeId(1), LogIndex(3)};
    storage.snapshot = raft::Snapshot{LogIndex(3), Term(1), std::move(data)};
    return storage;
  };
  for (const std::string& data :
       {NodeSnapshot({1, 1}, state), NodeSnapshot({1}, "garbage"), std::string("KNS1\x01")}) {
    MemStorage storage = disk(data);
    NodeOn n(storage, Config({1}));
    n.ExpectStartFailsWithDataLoss();
    EXPECT_EQ(n.node.nospace_alarms(), kNoAlarm);
  }
  // The well-formed one starts, with its alarm.
  MemStorage storage = disk(NodeSnapshot({1}, state));
  NodeOn n(storage, Config({1}));
  ASSERT_TRUE(n.node.Start().ok());
  EXPECT_EQ(n.node.nospace_alarms(), std::set<NodeId>{NodeId(1)});
}

// Regression (Register::Apply, fixed): a follower forwards a write; the network
// duplicates the forward, so the leader commits two copies. The first is rejected under
// the alarm. The follower was behind: it skips the first copy by installing a snapshot
// (its register remembers the request as refused), then applies the second copy.
// Register::Apply returned OK for any duplicate, so Node reported OK to the client for a
// write that is in no register anywhere. A duplicate of a refused request must report
// the refusal (StateMachine::Apply: "a duplicate of a rejected command stays rejected").
TEST_F(LonelyFollower, ADuplicateOfARequestRefusedInsideASnapshotIsNotReportedAsApplied) {
  node.Receive(Heartbeat(2, 1));
  env.sent.clear();
  Outcome write;
  node.Propose("duplicated", Capture(&write));
  env.RunDue();
  const std::string forwarded = ForwardedProposal(env);
  ASSERT_GE(forwarded.size(), 9u);
  const uint64_t request_id = GetU64(forwarded);

  // What the leader's snapshot at 5 holds: node 3's alarm, and the first copy refused.
  Register leader_state;
  ASSERT_EQ(leader_state.Apply(LogIndex(4), request_id, "duplicated", {.nospace = true}),
            NoSpaceError());
  node.Receive(SnapshotFromLeader(5, NodeSnapshot({3}, leader_state.TakeSnapshot())));
  ASSERT_EQ(node.raft().log().committed(), LogIndex(5));
  ASSERT_EQ(write.calls, 0);

  node.Receive(AppendFromLeader(5, {forwarded}));  // the second copy, at 6

  ASSERT_EQ(node.raft().log().applied(), LogIndex(6));
  EXPECT_TRUE(reg.values().empty());
  EXPECT_EQ(write.calls, 1);
  EXPECT_EQ(write.status, NoSpaceError()) << "the client was told its write was applied";
}

// ---- snapshots streamed in chunks (core/server/snapshot_stream.h) -------------------

Message Decoded(std::string_view bytes) {
  absl::StatusOr<Message> m = raft::DecodeMessage(bytes);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : Message();
}

// The chunks in which a peer streams `encoded`, `chunk_bytes` each, announcing
// `header`'s snapshot: SnapshotSender's (tested in snapshot_stream_test.cc), with a window
// that holds them all.
std::vector<Message> ChunksOf(const Message& header, std::string encoded, size_t chunk_bytes = 16) {
  SnapshotSender sender({.chunk_bytes = chunk_bytes, .window_chunks = 1 << 20});
  return sender.Start(header, std::move(encoded));
}

void ReceiveAll(Node& node, const std::vector<Message>& messages) {
  for (const Message& m : messages) node.Receive(raft::EncodeMessage(m));
}

TEST_F(LonelyFollower, AStreamedSnapshotIsInstalledOnceCompleteAndEveryChunkIsAcked) {
  Register source;
  ASSERT_TRUE(source.Apply(LogIndex(3), 41, "kept", {}).ok());
  const std::string data = NodeSnapshot({3}, source.TakeSnapshot());
  const std::string encoded = SnapshotFromLeader(5, data);
  const std::vector<Message> chunks = ChunksOf(Decoded(encoded), encoded);
  ASSERT_GE(chunks.size(), 3u);

  for (size_t k = 0; k < chunks.size(); ++k) {
    SCOPED_TRACE(k);
    env.sent.clear();
    node.Receive(raft::EncodeMessage(chunks[k]));
    const std::vector<Message> sent = env.SentMessages();
    ASSERT_FALSE(sent.empty());
    Message want_ack = PeerMessage(MessageType::kSnapshotChunkAck, 1, 2, 1);
    want_ack.index = LogIndex(5);
    want_ack.log_term = Term(1);
    want_ack.chunk = raft::SnapshotChunk{chunks[k].chunk->offset + chunks[k].chunk->data.size(),
                                         encoded.size(), ""};
    EXPECT_TRUE(sent[0] == want_ack) << "not the ack of the bytes so far";
    if (k + 1 == chunks.size()) break;
    EXPECT_EQ(sent.size(), 1u);
    EXPECT_TRUE(storage.ops.empty());  // nothing before the stream is whole
    EXPECT_EQ(node.raft().log().committed(), LogIndex(0));
  }

  EXPECT_FALSE(node.stopped());
  EXPECT_EQ(node.raft().term(), Term(1));
  EXPECT_EQ(node.raft().log().committed(), LogIndex(5));
  EXPECT_EQ(reg.values(), source.values());
  EXPECT_EQ(node.nospace_alarms(), std::set<NodeId>{NodeId(3)});
  ASSERT_FALSE(storage.ops.empty());
  EXPECT_EQ(storage.ops.front(), MemStorage::Op::kInstallSnapshot);
  EXPECT_EQ(storage.ops.back(), MemStorage::Op::kSync);
  EXPECT_EQ(storage.snapshot, (raft::Snapshot{LogIndex(5), Term(1), data}));
  // After the last ack, Raft's answer to the snapshot message: the follower is at 5.
  const std::vector<Message> sent = env.SentMessages();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[1].type, MessageType::kAppendResponse);
  EXPECT_EQ(sent[1].to, NodeId(2));
  EXPECT_FALSE(sent[1].reject);
  EXPECT_EQ(sent[1].index, LogIndex(5));
  EXPECT_EQ(sink.CountAtLeast(Severity::kWarn), 0);
}

TEST_F(LonelyFollower, AStreamThatIsNotTheSnapshotMessageItAnnouncesIsDroppedWithAWarning) {
  const Message header =
      Decoded(SnapshotFromLeader(5, NodeSnapshot({}, Register().TakeSnapshot())));
  auto changed = [&](const std::function<void(Message&)>& change) {
    Message m = header;
    change(m);
    return raft::EncodeMessage(m);
  };
  struct Case {
    const char* what;
    std::string encoded;
  };
  const std::vector<Case> cases = {
      {"another snapshot index", changed([](Message& m) { m.snapshot->index = LogIndex(6); })},
      {"another snapshot term", changed([](Message& m) { m.snapshot->term = Term(2); })},
      {"another leader term", changed([](Message& m) { m.term = Term(2); })},
      {"another sender", changed([](Message& m) { m.from = NodeId(3); })},
      {"another recipient", changed([](Message& m) { m.to = NodeId(3); })},
      {"not a snapshot message", AppendFromLeader(0, {std::string(100, 'x')})},
      {"not a message at all", std::string(100, '\xff')},
  };
  ASSERT_FALSE(raft::DecodeMessage(cases.back().encoded).ok());
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::vector<Message> chunks = ChunksOf(header, c.encoded);
    ASSERT_GE(chunks.size(), 2u);
    env.sent.clear();
    const int warnings = CountEvents(sink, Severity::kWarn, "DroppedBadSnapshot");

    ReceiveAll(node, chunks);

    EXPECT_EQ(CountEvents(sink, Severity::kWarn, "DroppedBadSnapshot"), warnings + 1);
    // The stream itself was fine, so every chunk was acked; nothing else was said.
    const std::vector<Message> sent = env.SentMessages();
    ASSERT_EQ(sent.size(), chunks.size());
    for (const Message& m : sent) EXPECT_EQ(m.type, MessageType::kSnapshotChunkAck);
    EXPECT_EQ(sent.back().chunk->offset, c.encoded.size());
    EXPECT_FALSE(node.stopped());
    EXPECT_EQ(node.raft().term(), Term(0));
    EXPECT_EQ(node.raft().log().LastIndex(), LogIndex(0));
    EXPECT_TRUE(storage.ops.empty());
    EXPECT_TRUE(reg.values().empty());
  }
  EXPECT_EQ(sink.CountAtLeast(Severity::kError), 0);
  // The stream of the message it announces is taken: the drops were about the contents.
  ReceiveAll(node, ChunksOf(header, raft::EncodeMessage(header)));
  EXPECT_EQ(node.raft().log().committed(), LogIndex(5));
}

// As for a snapshot message sent whole: bytes the state machine cannot restore are
// dropped before Raft adopts them, so a bad peer cannot stop this node.
TEST_F(LonelyFollower, AStreamedSnapshotThatDoesNotParseIsDroppedNotFatal) {
  const std::string encoded = SnapshotFromLeader(5, NodeSnapshot({2}, "not a register"));
  ReceiveAll(node, ChunksOf(Decoded(encoded), encoded));
  EXPECT_FALSE(node.stopped());
  EXPECT_EQ(node.raft().log().committed(), LogIndex(0));
  EXPECT_TRUE(storage.ops.empty());
  EXPECT_EQ(node.nospace_alarms(), kNoAlarm);
  EXPECT_EQ(CountEvents(sink, Severity::kWarn, "DroppedBadSnapshot"), 1);
  EXPECT_EQ(sink.CountAtLeast(Severity::kError), 0);
}

TEST_F(LonelyFollower, AStreamIdleForIdleTicksMaxIsForgotten) {
  const std::string encoded = SnapshotFromLeader(5, NodeSnapshot({}, Register().TakeSnapshot()));
  const std::vector<Message> chunks = ChunksOf(Decoded(encoded), encoded);
  ASSERT_GE(chunks.size(), 3u);
  auto acks = [&] {
    int n = 0;
    for (const Message& m : env.SentMessages()) {
      n += m.type == MessageType::kSnapshotChunkAck ? 1 : 0;
    }
    return n;
  };
  ReceiveAll(node, {chunks[0]});
  env.Ticks(node.config().snapshot_stream.idle_ticks_max - 1);
  ReceiveAll(node, {chunks[1]});
  EXPECT_EQ(acks(), 2);  // still there

  env.Ticks(node.config().snapshot_stream.idle_ticks_max);
  env.sent.clear();
  ReceiveAll(node, std::vector<Message>(chunks.begin() + 2, chunks.end()));
  EXPECT_EQ(acks(), 0);  // the middle of a stream it no longer knows
  EXPECT_EQ(node.raft().log().committed(), LogIndex(0));
}

TEST_F(LonelyFollower, ChunksAndAcksAddressedToAnotherNodeAreDropped) {
  const std::string encoded = SnapshotFromLeader(5, NodeSnapshot({}, Register().TakeSnapshot()));
  Message header = Decoded(encoded);
  header.to = NodeId(3);
  std::vector<Message> messages = ChunksOf(header, encoded);
  Message ack = messages[0];
  ack.type = MessageType::kSnapshotChunkAck;
  ack.chunk->data.clear();
  messages.push_back(ack);

  ReceiveAll(node, messages);

  EXPECT_TRUE(env.sent.empty());  // not even acked
  EXPECT_EQ(CountEvents(sink, Severity::kWarn, "DroppedMessage"),
            static_cast<int>(messages.size()));
  EXPECT_EQ(node.raft().log().committed(), LogIndex(0));
  EXPECT_TRUE(storage.ops.empty());
  EXPECT_TRUE(reg.values().empty());
}

NodeConfig StreamingConfig(uint64_t id, size_t chunk_bytes) {
  NodeConfig c = Config({1, 2, 3});
  c.raft.id = NodeId(id);
  c.raft.pre_vote = false;  // one vote round to elect node 1
  c.snapshot_entries = 5;
  c.snapshot_catchup_entries = 0;
  c.snapshot_stream.chunk_bytes = chunk_bytes;
  c.snapshot_stream.window_chunks = 2;
  return c;
}

// Node 1 of {1, 2, 3}, elected at term 1 by node 2, which then acknowledges every entry;
// node 3 has been silent. After six proposals (indexes 2..7) the leader snapshots at 7
// and keeps no entry, so node 3 can only catch up from the snapshot.
struct LeaderWithALaggingPeer {
  explicit LeaderWithALaggingPeer(size_t chunk_bytes)
      : leader(storage, StreamingConfig(1, chunk_bytes)) {}

  void Prepare() {
    Node& node = leader.node;
    ASSERT_TRUE(node.Start().ok());
    for (int k = 0; k < 30 && node.raft().role() != Role::kCandidate; ++k) leader.env.Ticks(1);
    ASSERT_EQ(node.raft().term(), Term(1));
    node.Receive(raft::EncodeMessage(PeerMessage(MessageType::kVoteResponse, 2, 1, 1)));
    ASSERT_EQ(node.raft().role(), Role::kLeader);
    std::vector<Outcome> outs(6);
    for (int k = 0; k < 6; ++k) node.Propose(absl::StrCat("value-", k), Capture(&outs[k]));
    leader.env.RunDue();
    Message ack = PeerMessage(MessageType::kAppendResponse, 2, 1, 1);
    ack.index = node.raft().log().LastIndex();
    ASSERT_EQ(ack.index, LogIndex(7));
    node.Receive(raft::EncodeMessage(ack));
    for (const Outcome& out : outs) ASSERT_TRUE(out.status.ok()) << out.status;
    ASSERT_TRUE(storage.snapshot.has_value());
    ASSERT_EQ(storage.snapshot->index, LogIndex(7));
    ASSERT_EQ(node.raft().log().FirstIndex(), LogIndex(8));
  }

  // Node 3 answers a heartbeat: the leader learns it is there and sends it the snapshot.
  std::vector<Message> NodeThreeShowsUp() {
    leader.env.sent.clear();
    leader.node.Receive(raft::EncodeMessage(PeerMessage(MessageType::kHeartbeatResponse, 3, 1, 1)));
    std::vector<Message> to_three;
    for (Message& m : leader.env.SentMessages()) {
      if (m.to == NodeId(3)) to_three.push_back(std::move(m));
    }
    return to_three;
  }

  MemStorage storage;
  NodeOn leader;
};

// Carries messages between `a` and `b` until neither has more to say to the other;
// what they send anybody else is dropped. Returns the messages `a` sent `b`.
std::vector<Message> Exchange(NodeOn& a, NodeOn& b) {
  std::vector<Message> a_to_b;
  for (int round = 0; round < 1000; ++round) {
    bool quiet = true;
    for (auto [from, to] : {std::pair(&a, &b), std::pair(&b, &a)}) {
      for (auto& [dest, bytes] : std::exchange(from->env.sent, {})) {
        if (dest != to->node.raft().id()) continue;
        quiet = false;
        if (from == &a) a_to_b.push_back(Decoded(bytes));
        to->node.Receive(bytes);
      }
    }
    if (quiet) return a_to_b;
  }
  ADD_FAILURE() << "the nodes never went quiet";
  return a_to_b;
}

TEST(NodeSnapshotStream, ALeaderStreamsASnapshotLargerThanAChunkAndTheFollowerInstallsIt) {
  constexpr size_t kChunkBytes = 32;
  LeaderWithALaggingPeer l(kChunkBytes);
  ASSERT_NO_FATAL_FAILURE(l.Prepare());

  // The first window: two chunks of the snapshot message's encoding, not the message.
  const std::vector<Message> first = l.NodeThreeShowsUp();
  ASSERT_EQ(first.size(), 2u);
  for (size_t k = 0; k < first.size(); ++k) {
    EXPECT_EQ(first[k].type, MessageType::kSnapshotChunk);
    EXPECT_EQ(first[k].from, NodeId(1));
    EXPECT_EQ(first[k].term, Term(1));
    EXPECT_EQ(first[k].index, LogIndex(7));  // the snapshot's index and term
    EXPECT_EQ(first[k].log_term, Term(1));
    ASSERT_TRUE(first[k].chunk.has_value());
    EXPECT_EQ(first[k].chunk->offset, k * kChunkBytes);
    EXPECT_EQ(first[k].chunk->data.size(), kChunkBytes);
  }
  const uint64_t total = first[0].chunk->total;
  EXPECT_GT(total, 2 * kChunkBytes);

  // Node 3, fresh, takes the stream; its acks pull the rest of it.
  MemStorage follower_storage;
  NodeOn follower(follower_storage, StreamingConfig(3, kChunkBytes), /*seed=*/3);
  ASSERT_TRUE(follower.node.Start().ok());
  l.leader.env.sent.clear();  // `first`, delivered by hand
  ReceiveAll(follower.node, first);
  std::vector<Message> sent = first;
  for (Message& m : Exchange(l.leader, follower)) sent.push_back(std::move(m));

  ASSERT_TRUE(follower_storage.snapshot.has_value());
  EXPECT_EQ(follower_storage.snapshot->index, LogIndex(7));
  EXPECT_EQ(follower_storage.snapshot->data, l.storage.snapshot->data);
  EXPECT_EQ(std::count(follower_storage.ops.begin(), follower_storage.ops.end(),
                       MemStorage::Op::kInstallSnapshot),
            1);
  EXPECT_EQ(follower.reg.values(), l.leader.reg.values());
  EXPECT_EQ(follower.node.raft().log().committed(), LogIndex(7));
  EXPECT_EQ(follower.node.raft().term(), Term(1));
  EXPECT_FALSE(follower.node.stopped());
  EXPECT_EQ(follower.sink.CountAtLeast(Severity::kWarn), 0);
  EXPECT_EQ(l.leader.node.raft().ProgressOf(NodeId(3))->match, LogIndex(7));

  // What the leader sent: each chunk once, in order, and never the snapshot message
  // itself; the chunks make up the encoding of the snapshot message.
  std::string joined;
  for (const Message& m : sent) {
    ASSERT_NE(m.type, MessageType::kSnapshot);
    if (m.type != MessageType::kSnapshotChunk) continue;
    EXPECT_EQ(m.chunk->offset, joined.size());
    EXPECT_EQ(m.chunk->total, total);
    joined += m.chunk->data;
  }
  EXPECT_EQ(joined.size(), total);
  const Message snapshot = Decoded(joined);
  EXPECT_EQ(snapshot.type, MessageType::kSnapshot);
  EXPECT_EQ(snapshot.to, NodeId(3));
  EXPECT_EQ(snapshot.snapshot, l.storage.snapshot);

  // Delivered: the final ack ended the stream, so the resend timer finds nothing to send.
  l.leader.env.sent.clear();
  l.leader.env.Ticks(6);
  for (const Message& m : l.leader.env.SentMessages()) {
    EXPECT_NE(m.type, MessageType::kSnapshotChunk);
  }
}

TEST(NodeSnapshotStream, ALeaderWithoutAcksResendsTheWindowAfterThreeTicks) {
  LeaderWithALaggingPeer l(/*chunk_bytes=*/32);
  ASSERT_NO_FATAL_FAILURE(l.Prepare());
  const std::vector<Message> first = l.NodeThreeShowsUp();
  ASSERT_EQ(first.size(), 2u);
  auto chunks_sent = [&] {
    std::vector<uint64_t> offsets;
    for (const Message& m : l.leader.env.SentMessages()) {
      if (m.type == MessageType::kSnapshotChunk) offsets.push_back(m.chunk->offset);
    }
    return offsets;
  };
  l.leader.env.sent.clear();
  l.leader.env.Ticks(2);
  EXPECT_TRUE(chunks_sent().empty());
  l.leader.env.Ticks(1);
  EXPECT_EQ(chunks_sent(), (std::vector<uint64_t>{0, 32}));
}

// The threshold: a snapshot message whose encoding fits in one chunk is sent whole.
TEST(NodeSnapshotStream, ASnapshotMessageOfExactlyOneChunkIsSentWholeAndOneByteMoreStreamed) {
  size_t encoded_bytes = 0;
  {
    LeaderWithALaggingPeer l(/*chunk_bytes=*/1 << 20);
    ASSERT_NO_FATAL_FAILURE(l.Prepare());
    const std::vector<Message> sent = l.NodeThreeShowsUp();
    ASSERT_EQ(sent.size(), 1u);
    ASSERT_EQ(sent[0].type, MessageType::kSnapshot);
    EXPECT_EQ(sent[0].snapshot, l.storage.snapshot);
    encoded_bytes = raft::EncodeMessage(sent[0]).size();
  }
  {
    LeaderWithALaggingPeer l(encoded_bytes);
    ASSERT_NO_FATAL_FAILURE(l.Prepare());
    const std::vector<Message> sent = l.NodeThreeShowsUp();
    ASSERT_EQ(sent.size(), 1u);
    EXPECT_EQ(sent[0].type, MessageType::kSnapshot);
  }
  LeaderWithALaggingPeer l(encoded_bytes - 1);
  ASSERT_NO_FATAL_FAILURE(l.Prepare());
  const std::vector<Message> sent = l.NodeThreeShowsUp();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].type, MessageType::kSnapshotChunk);
  EXPECT_EQ(sent[0].chunk->data.size(), encoded_bytes - 1);
  EXPECT_EQ(sent[1].chunk->data.size(), 1u);
}

// The first chunk of a stream from node 2 at term 1 of snapshot (5, term 1), declaring
// `total` bytes.
Message FirstChunk(uint64_t total) {
  Message m = PeerMessage(MessageType::kSnapshotChunk, 2, 1, 1);
  m.index = LogIndex(5);
  m.log_term = Term(1);
  m.chunk = raft::SnapshotChunk{0, total, std::string(16, 's')};
  return m;
}

// Regression: Node::Receive once decoded chunks with the codec's default limit (8 GiB),
// not NodeConfig::snapshot_stream.snapshot_bytes_max, so a node configured for larger
// snapshots dropped their chunks as malformed and such a follower never caught up.
TEST(NodeSnapshotStream, AStreamUpToTheConfiguredLimitAboveTheCodecsDefaultIsAcked) {
  MemStorage storage;
  NodeConfig config = Config({1, 2, 3});
  config.snapshot_stream.snapshot_bytes_max = 16ull << 30;
  NodeOn n(storage, config);
  ASSERT_TRUE(n.node.Start().ok());
  n.node.Receive(raft::EncodeMessage(FirstChunk(8ull << 30)));
  ASSERT_EQ(n.env.sent.size(), 1u);  // the codec's own limit: acked

  n.env.sent.clear();
  n.node.Receive(raft::EncodeMessage(FirstChunk(9ull << 30)));

  EXPECT_EQ(CountEvents(n.sink, Severity::kWarn, "DroppedBadMessage"), 0);
  ASSERT_EQ(n.env.sent.size(), 1u) << "a chunk within the configured limit was not acked";
  const absl::StatusOr<Message> ack =
      raft::DecodeMessage(n.env.sent[0].second, {.snapshot_bytes_max = 16ull << 30});
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->type, MessageType::kSnapshotChunkAck);
  EXPECT_EQ(ack->chunk, (raft::SnapshotChunk{16, 9ull << 30, ""}));
}

// Raft drops every message from a node that is not a voter, but chunks skip Raft: they
// are dropped on arrival, or anyone naming many sender ids could make the node hold
// that many streams (regression: they once were taken and acked).
TEST_F(LonelyFollower, ChunksFromANodeOutsideTheClusterAreDroppedUnacked) {
  node.Receive(raft::EncodeMessage(FirstChunk(1000)));
  ASSERT_EQ(env.sent.size(), 1u);  // node 2 is a peer: acked

  env.sent.clear();
  Message from_stranger = FirstChunk(1000);
  from_stranger.from = NodeId(9);
  node.Receive(raft::EncodeMessage(from_stranger));
  EXPECT_TRUE(env.sent.empty()) << "a stream from node 9 was taken and acked";
}

}  // namespace
}  // namespace keel::server

namespace keel::server {
namespace {

// ---- batching (node.h): the requests of one event-loop turn share one flush ----------

// A three-node leader at term 1 (node 2 voted for it), its no-op not yet acknowledged.
NodeConfig ThreeNodeConfig() {
  NodeConfig c = Config({1, 2, 3});
  c.raft.pre_vote = false;  // one vote round to elect node 1
  return c;
}

struct ThreeNodeLeader {
  ThreeNodeLeader() : env(storage, 1), node(ThreeNodeConfig(), env, reg) {
    EXPECT_TRUE(node.Start().ok());
    for (int k = 0; k < 30 && node.raft().role() != Role::kCandidate; ++k) env.Ticks(1);
    node.Receive(raft::EncodeMessage(PeerMessage(MessageType::kVoteResponse, 2, 1, 1)));
    EXPECT_EQ(node.raft().role(), Role::kLeader);
  }
  // Node `from` acknowledges the whole log: the leader commits it.
  void Acknowledge(uint64_t from) {
    Message ack = PeerMessage(MessageType::kAppendResponse, from, 1, 1);
    ack.index = node.raft().log().LastIndex();
    node.Receive(raft::EncodeMessage(ack));
  }
  std::vector<Message> SentOfType(MessageType type) const {
    std::vector<Message> out;
    for (Message& m : env.SentMessages()) {
      if (m.type == type) out.push_back(std::move(m));
    }
    return out;
  }
  MemStorage storage;
  FakeEnv env;
  Register reg;
  Node node;
};

TEST(NodeBatching, ProposalsOfOneTurnShareOneAppendOneSyncAndOneMessagePerFollower) {
  ThreeNodeLeader n;
  n.Acknowledge(2);
  n.Acknowledge(3);  // both followers replicating (not probing): each gets appends
  n.storage.ops.clear();
  n.env.sent.clear();
  const int syncs_before = n.storage.sync_count;

  std::vector<Outcome> outs(5);
  for (int k = 0; k < 5; ++k) n.node.Propose(absl::StrCat("v", k), Capture(&outs[k]));
  EXPECT_TRUE(n.storage.ops.empty());  // nothing before the flush
  n.env.RunDue();

  using Op = MemStorage::Op;
  EXPECT_EQ(n.storage.sync_count - syncs_before, 1);
  EXPECT_EQ(n.storage.ops, (std::vector<Op>{Op::kAppend, Op::kSync}));
  const std::vector<Message> appends = n.SentOfType(MessageType::kAppend);
  ASSERT_EQ(appends.size(), 2u);  // one to each follower, all five entries in it
  for (const Message& m : appends) {
    ASSERT_EQ(m.entries.size(), 5u);
    for (int k = 0; k < 5; ++k) EXPECT_TRUE(m.entries[k].data.ends_with(absl::StrCat("v", k)));
  }

  n.Acknowledge(2);
  for (int k = 0; k < 5; ++k) {
    EXPECT_EQ(outs[k].calls, 1);
    EXPECT_TRUE(outs[k].status.ok()) << k << ": " << outs[k].status;
    EXPECT_EQ(n.reg.values()[k].data, absl::StrCat("v", k));  // in the order proposed
  }
}

TEST(NodeBatching, ReadsOfOneTurnShareOneReadIndexAndOneHeartbeatRound) {
  ThreeNodeLeader n;
  n.Acknowledge(2);  // the no-op commits: the leader may serve reads
  n.env.sent.clear();

  std::vector<Outcome> reads(4);
  for (Outcome& r : reads) n.node.Read(Capture(&r));
  n.env.RunDue();
  const std::vector<Message> heartbeats = n.SentOfType(MessageType::kHeartbeat);
  ASSERT_EQ(heartbeats.size(), 2u);  // one round, to each follower, for all four
  EXPECT_EQ(heartbeats[0].context, heartbeats[1].context);
  EXPECT_FALSE(heartbeats[0].context.empty());
  for (const Outcome& r : reads) EXPECT_EQ(r.calls, 0);  // not before a quorum answers

  Message answer = PeerMessage(MessageType::kHeartbeatResponse, 3, 1, 1);
  answer.context = heartbeats[0].context;
  n.node.Receive(raft::EncodeMessage(answer));
  for (const Outcome& r : reads) {
    EXPECT_EQ(r.calls, 1);
    EXPECT_TRUE(r.status.ok()) << r.status;
  }
  n.node.Receive(raft::EncodeMessage(answer));  // a repeated answer ends nothing twice
  for (const Outcome& r : reads) EXPECT_EQ(r.calls, 1);
}

TEST_F(LonelyFollower, AFollowerForwardsTheRequestsOfOneTurnAsOneProposalAndOneReadIndex) {
  node.Receive(Heartbeat(2, 1));
  env.sent.clear();
  std::vector<Outcome> writes(3), reads(3);
  for (int k = 0; k < 3; ++k) {
    node.Propose(absl::StrCat("w", k), Capture(&writes[k]));
    node.Read(Capture(&reads[k]));
  }
  env.RunDue();
  const std::vector<Message> sent = env.SentMessages();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].type, MessageType::kPropose);
  ASSERT_EQ(sent[0].entries.size(), 3u);
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(sent[0].entries[k].data.ends_with(absl::StrCat("w", k)));
  EXPECT_EQ(sent[1].type, MessageType::kReadIndex);
}

TEST(NodeBatching, AFlushSplitsProposalsSoThatNoForwardedMessageExceedsTheRequestLimit) {
  MemStorage storage;
  FakeEnv env(storage, 1);
  Register reg;
  NodeConfig config = Config({1, 2, 3});
  config.request_bytes_max = 1000;
  Node node(config, env, reg);
  ASSERT_TRUE(node.Start().ok());
  node.Receive(Heartbeat(2, 1));
  env.sent.clear();

  std::vector<Outcome> outs(5);
  for (Outcome& out : outs) node.Propose(std::string(400, 'x'), Capture(&out));  // 409 framed
  env.RunDue();
  std::vector<size_t> sizes;
  for (const Message& m : env.SentMessages()) {
    ASSERT_EQ(m.type, MessageType::kPropose);
    sizes.push_back(m.entries.size());
  }
  EXPECT_EQ(sizes, (std::vector<size_t>{2, 2, 1}));
}

TEST(NodeBatching, AReadBatchNeverAnsweredTimesOutOnceAndALateAnswerEndsNothing) {
  ThreeNodeLeader n;
  n.Acknowledge(2);
  n.env.sent.clear();
  Outcome read;
  n.node.Read(Capture(&read));
  n.env.RunDue();
  const std::vector<Message> heartbeats = n.SentOfType(MessageType::kHeartbeat);
  ASSERT_FALSE(heartbeats.empty());

  n.env.AdvanceBy(n.node.config().request_timeout + n.node.config().tick_interval);
  EXPECT_EQ(read.calls, 1);
  EXPECT_TRUE(absl::IsDeadlineExceeded(read.status)) << read.status;
  Message late = PeerMessage(MessageType::kHeartbeatResponse, 3, 1, 1);
  late.context = heartbeats[0].context;
  n.node.Receive(raft::EncodeMessage(late));
  EXPECT_EQ(read.calls, 1);
}

}  // namespace
}  // namespace keel::server
