// Tests for KvServer (core/server/kv_server.h): etcd's KV and Lease services over a
// Node and its KvStateMachine. Members run in a small deterministic world: one manual
// clock whose timers fire only when a test advances it, an in-memory Raft Storage and a
// kv::MemoryBackend per member, and a network that delivers every message after 1 ms
// unless the test cut the link. Most tests use a single-node cluster (the node elects
// itself); a three-node cluster gives real followers and a leader that can be cut off.
//
// The harness follows tests/core/server/node_test.cc (a fake Env with a manual clock and
// timers, an in-memory Storage); that file keeps its harness in an anonymous namespace,
// so the parts needed here are copied, with one clock shared by all members.

#include "core/server/kv_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/errors.h"
#include "core/kv/memory_backend.h"
#include "core/server/node.h"

namespace keel::server {
namespace {

using etcdserverpb::CompactionRequest;
using etcdserverpb::CompactionResponse;
using etcdserverpb::DeleteRangeRequest;
using etcdserverpb::DeleteRangeResponse;
using etcdserverpb::LeaseGrantRequest;
using etcdserverpb::LeaseGrantResponse;
using etcdserverpb::LeaseRevokeRequest;
using etcdserverpb::LeaseRevokeResponse;
using etcdserverpb::LeaseTimeToLiveRequest;
using etcdserverpb::LeaseTimeToLiveResponse;
using etcdserverpb::PutRequest;
using etcdserverpb::PutResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using etcdserverpb::RequestOp;
using etcdserverpb::ResponseHeader;
using etcdserverpb::TxnRequest;
using etcdserverpb::TxnResponse;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr uint64_t kClusterId = 0x6b65656c;

// ---- Raft storage in memory (after node_test.cc's MemStorage) -------------------------

class MemStorage : public Storage {
 public:
  absl::StatusOr<raft::RecoveredState> Load() override {
    raft::RecoveredState out;
    out.hard_state = hard_state;
    out.snapshot = snapshot;
    const LogIndex after = snapshot ? snapshot->index : LogIndex(0);
    for (const raft::Entry& e : entries) {
      if (e.index > after) out.entries.push_back(e);
    }
    return out;
  }
  absl::Status Append(std::span<const raft::Entry> batch) override {
    if (batch.empty()) return absl::OkStatus();
    while (!entries.empty() && entries.back().index >= batch.front().index) entries.pop_back();
    entries.insert(entries.end(), batch.begin(), batch.end());
    return absl::OkStatus();
  }
  absl::Status SaveHardState(const raft::HardState& state) override {
    hard_state = state;
    return absl::OkStatus();
  }
  absl::Status SaveSnapshot(const raft::Snapshot& s) override {
    if (!snapshot || snapshot->index < s.index) snapshot = s;
    return absl::OkStatus();
  }
  absl::Status InstallSnapshot(const raft::Snapshot& s) override {
    entries.clear();
    snapshot = s;
    return absl::OkStatus();
  }
  absl::Status Compact(LogIndex through) override {
    while (!entries.empty() && entries.front().index <= through) entries.pop_front();
    return absl::OkStatus();
  }
  absl::Status Sync() override { return absl::OkStatus(); }
  absl::StatusOr<uint64_t> AvailableBytes() override { return UINT64_MAX; }

  raft::HardState hard_state;
  std::optional<raft::Snapshot> snapshot;
  std::deque<raft::Entry> entries;
};

// ---- the world: one clock, timers, a network -----------------------------------------

class World {
 public:
  using Deliver = std::function<void(std::string)>;

  Nanos Now() const { return now_; }
  TimerId SetTimer(Nanos after, std::function<void()> fn) {
    const TimerId id = ++last_timer_id_;
    timers_.emplace(now_ + after, std::make_pair(id, std::move(fn)));
    return id;
  }
  void CancelTimer(TimerId id) {
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->second.first == id) {
        timers_.erase(it);
        return;
      }
    }
  }

  void Attach(uint64_t id, Deliver deliver) { inboxes_[id] = std::move(deliver); }
  // A message is lost if its link is cut when it is sent or when it arrives.
  void Send(uint64_t from, uint64_t to, std::string bytes) {
    if (!Up(from, to)) return;
    SetTimer(Millis(1), [this, from, to, bytes = std::move(bytes)] {
      if (!Up(from, to)) return;
      auto it = inboxes_.find(to);
      if (it != inboxes_.end()) it->second(bytes);
    });
  }
  bool Up(uint64_t from, uint64_t to) const { return !cut_.contains({from, to}); }
  // Cuts (or heals) every link between `id` and the others, both ways.
  void Isolate(uint64_t id, bool isolated = true) {
    for (const auto& [other, _] : inboxes_) {
      if (other == id) continue;
      for (auto link : {std::pair(id, other), std::pair(other, id)}) {
        if (isolated) {
          cut_.insert(link);
        } else {
          cut_.erase(link);
        }
      }
    }
  }

  // Moves the clock forward by `d`, firing every timer due by then in deadline order.
  void AdvanceBy(Nanos d) {
    RunUntil([] { return false; }, d);
  }
  // Fires timers in order until `done()` holds (checked before each) or `limit` passed.
  // Returns whether done() holds.
  template <typename Pred>
  bool RunUntil(Pred done, Nanos limit) {
    const Nanos target = now_ + limit;
    while (!done()) {
      if (timers_.empty() || timers_.begin()->first > target) {
        now_ = target;
        return done();
      }
      auto it = timers_.begin();
      now_ = it->first;
      std::function<void()> fn = std::move(it->second.second);
      timers_.erase(it);
      fn();
    }
    return true;
  }
  // Runs the events due now (a deferred reply is a timer of zero delay).
  void Settle() { AdvanceBy(Nanos(0)); }

 private:
  Nanos now_{0};
  TimerId last_timer_id_ = 0;
  std::multimap<Nanos, std::pair<TimerId, std::function<void()>>> timers_;
  std::map<uint64_t, Deliver> inboxes_;
  std::set<std::pair<uint64_t, uint64_t>> cut_;
};

class MemberEnv : public Env {
 public:
  MemberEnv(World& world, uint64_t id, Storage& storage)
      : world_(world), id_(id), storage_(storage), rng_(0x5eed0000 + id) {}
  Nanos Now() override { return world_.Now(); }
  TimerId SetTimer(Nanos after, std::function<void()> fn) override {
    return world_.SetTimer(after, std::move(fn));
  }
  void CancelTimer(TimerId id) override { world_.CancelTimer(id); }
  void Send(NodeId to, std::string bytes) override { world_.Send(id_, to.value, std::move(bytes)); }
  Rng& Random() override { return rng_; }
  Storage& Disk() override { return storage_; }
  Logger Log() override { return Logger(); }

 private:
  World& world_;
  uint64_t id_;
  Storage& storage_;
  Rng rng_;
};

NodeConfig MemberConfig(uint64_t id, const std::vector<uint64_t>& voters, bool check_quorum) {
  NodeConfig c;
  c.raft.check_quorum = check_quorum;
  c.raft.id = NodeId(id);
  for (uint64_t v : voters) c.raft.voters.push_back(NodeId(v));
  return c;
}

KvServerConfig ServerConfig(KvServerPlantedBugs bugs = {}) {
  KvServerConfig c;
  c.cluster_id = kClusterId;
  c.bugs = bugs;
  return c;
}

// One member: Raft storage, keyspace backend, state machine, node and server.
struct Member {
  Member(World& world, uint64_t id, const std::vector<uint64_t>& voters, KvServerConfig config,
         bool check_quorum)
      : env(world, id, storage),
        machine(&backend, KvConfig{}, Logger()),
        node(MemberConfig(id, voters, check_quorum), env, machine),
        server(std::move(config), env, node, machine) {
    world.Attach(id, [this](std::string bytes) { node.Receive(bytes); });
  }
  void Start() {
    ASSERT_TRUE(machine.Open().ok());
    ASSERT_TRUE(node.Start().ok());
    server.Start();
  }
  bool Leads() const { return node.raft().role() == raft::Role::kLeader; }
  uint64_t id() const { return node.raft().id().value; }

  MemStorage storage;
  kv::MemoryBackend backend;
  MemberEnv env;
  KvStateMachine machine;
  Node node;
  KvServer server;
};

struct Cluster {
  // check_quorum = false: a leader cut off from the others goes on believing it leads.
  explicit Cluster(size_t n, KvServerConfig config = ServerConfig(), bool check_quorum = true) {
    std::vector<uint64_t> voters;
    for (uint64_t id = 1; id <= n; ++id) voters.push_back(id);
    for (uint64_t id : voters) {
      members.push_back(std::make_unique<Member>(world, id, voters, config, check_quorum));
    }
    for (auto& m : members) m->Start();
  }

  Member* FindLeader() {
    for (auto& m : members) {
      if (m->Leads()) return m.get();
    }
    return nullptr;
  }

  // Runs until one member leads with its lessor promoted and its term's first entry
  // applied (reads are served from then on).
  Member& Elect() {
    const bool elected = world.RunUntil(
        [&] {
          Member* l = FindLeader();
          return l != nullptr && l->server.lessor().primary() &&
                 l->server.lessor().term() == l->node.raft().term() &&
                 l->node.raft().log().applied() >= l->node.raft().log().LastIndex();
        },
        Millis(20000));
    EXPECT_TRUE(elected) << "no leader elected";
    Member* l = FindLeader();
    KEEL_ASSERT(l != nullptr);
    return *l;
  }

  Member& Follower() {
    for (auto& m : members) {
      if (!m->Leads()) return *m;
    }
    KEEL_ASSERT(false);
    return *members[0];
  }

  World world;
  std::vector<std::unique_ptr<Member>> members;
};

// ---- replies -------------------------------------------------------------------------

template <typename T>
struct Result {
  int calls = 0;
  std::optional<absl::StatusOr<T>> value;

  KvServer::Reply<T> Capture() {
    return [this](absl::StatusOr<T> v) {
      ++calls;
      value = std::move(v);
    };
  }
  bool done() const { return calls > 0; }
  absl::Status status() const { return value ? value->status() : absl::UnknownError("no reply"); }
  const T& operator*() const { return **value; }
};

// Issues a request through `start` and runs the world until its reply (at most `limit`).
template <typename T, typename Start>
absl::StatusOr<T> Call(World& world, Start start, Nanos limit = Millis(10000)) {
  auto r = std::make_shared<Result<T>>();
  // The reply owns the result: it may come after this function gave up on it.
  start(KvServer::Reply<T>([r](absl::StatusOr<T> v) {
    ++r->calls;
    r->value = std::move(v);
  }));
  if (!world.RunUntil([&] { return r->done(); }, limit)) {
    return absl::UnknownError("the server never replied");
  }
  EXPECT_EQ(r->calls, 1);
  return *r->value;
}

absl::StatusOr<PutResponse> Put(World& w, Member& m, const std::string& key,
                                const std::string& value, int64_t lease = 0) {
  PutRequest r;
  r.set_key(key);
  r.set_value(value);
  r.set_lease(lease);
  return Call<PutResponse>(w, [&](auto reply) { m.server.Put(r, std::move(reply)); });
}

RangeRequest RangeReq(const std::string& key, const std::string& end = "",
                      bool serializable = false) {
  RangeRequest r;
  r.set_key(key);
  r.set_range_end(end);
  r.set_serializable(serializable);
  return r;
}

absl::StatusOr<RangeResponse> Range(World& w, Member& m, const RangeRequest& r) {
  return Call<RangeResponse>(w, [&](auto reply) { m.server.Range(r, std::move(reply)); });
}

// Every live key and its value, read linearizably at `m`.
std::map<std::string, std::string> Keys(World& w, Member& m) {
  const std::string nul("\0", 1);
  absl::StatusOr<RangeResponse> r = Range(w, m, RangeReq(nul, nul));
  EXPECT_TRUE(r.ok()) << r.status();
  std::map<std::string, std::string> out;
  if (r.ok()) {
    for (const mvccpb::KeyValue& kv : r->kvs()) out[kv.key()] = kv.value();
  }
  return out;
}

absl::StatusOr<LeaseGrantResponse> Grant(World& w, Member& m, int64_t ttl, int64_t id = 0) {
  LeaseGrantRequest r;
  r.set_ttl(ttl);
  r.set_id(id);
  return Call<LeaseGrantResponse>(w, [&](auto reply) { m.server.LeaseGrant(r, std::move(reply)); });
}

absl::StatusOr<int64_t> KeepAlive(World& w, Member& m, int64_t id, Nanos limit = Millis(10000)) {
  return Call<int64_t>(w, [&](auto reply) { m.server.LeaseKeepAlive(id, std::move(reply)); }, limit);
}

absl::StatusOr<LeaseTimeToLiveResponse> TimeToLive(World& w, Member& m, int64_t id, bool keys) {
  LeaseTimeToLiveRequest r;
  r.set_id(id);
  r.set_keys(keys);
  return Call<LeaseTimeToLiveResponse>(
      w, [&](auto reply) { m.server.LeaseTimeToLive(r, std::move(reply)); });
}

void ExpectHeader(const ResponseHeader& h, const Member& m) {
  EXPECT_EQ(h.cluster_id(), kClusterId);
  EXPECT_EQ(h.member_id(), m.id());
  EXPECT_EQ(h.raft_term(), m.node.raft().term().value);
  EXPECT_GT(h.raft_term(), 0u);
}

RequestOp PutOp(const std::string& key, const std::string& value) {
  RequestOp op;
  op.mutable_request_put()->set_key(key);
  op.mutable_request_put()->set_value(value);
  return op;
}

RequestOp RangeOp(const std::string& key) {
  RequestOp op;
  op.mutable_request_range()->set_key(key);
  return op;
}

// A txn whose compare holds exactly when `key` does not exist.
TxnRequest IfAbsent(const std::string& key, std::vector<RequestOp> success,
                    std::vector<RequestOp> failure = {}) {
  TxnRequest t;
  etcdserverpb::Compare* c = t.add_compare();
  c->set_key(key);
  c->set_target(etcdserverpb::Compare::VERSION);
  c->set_result(etcdserverpb::Compare::EQUAL);
  c->set_version(0);
  for (RequestOp& op : success) *t.add_success() = std::move(op);
  for (RequestOp& op : failure) *t.add_failure() = std::move(op);
  return t;
}

LogIndex LastIndex(const Member& m) { return m.node.raft().log().LastIndex(); }

// A single-node cluster whose node leads and whose lessor is promoted.
class KvServerSingle : public ::testing::Test {
 protected:
  void SetUp() override { leader = &cluster.Elect(); }
  World& w() { return cluster.world; }
  Cluster cluster{1};
  Member* leader = nullptr;
};

// ---- KV ------------------------------------------------------------------------------

TEST_F(KvServerSingle, PutThenRangeLinearizableAndSerializable) {
  absl::StatusOr<PutResponse> put = Put(w(), *leader, "k", "v");
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->header().revision(), 2);
  ExpectHeader(put->header(), *leader);

  for (bool serializable : {false, true}) {
    absl::StatusOr<RangeResponse> r = Range(w(), *leader, RangeReq("k", "", serializable));
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectHeader(r->header(), *leader);
    EXPECT_EQ(r->header().revision(), 2);
    EXPECT_EQ(r->count(), 1);
    ASSERT_EQ(r->kvs_size(), 1);
    EXPECT_EQ(r->kvs(0).key(), "k");
    EXPECT_EQ(r->kvs(0).value(), "v");
    EXPECT_EQ(r->kvs(0).create_revision(), 2);
    EXPECT_EQ(r->kvs(0).mod_revision(), 2);
    EXPECT_EQ(r->kvs(0).version(), 1);
  }
  // A read proposes nothing.
  const LogIndex last = LastIndex(*leader);
  ASSERT_TRUE(Range(w(), *leader, RangeReq("k")).ok());
  EXPECT_EQ(LastIndex(*leader), last);
}

TEST_F(KvServerSingle, DeleteRangeRemovesTheKeysAndAnswersTheCount) {
  ASSERT_TRUE(Put(w(), *leader, "a", "1").ok());
  ASSERT_TRUE(Put(w(), *leader, "b", "2").ok());
  ASSERT_TRUE(Put(w(), *leader, "c", "3").ok());
  DeleteRangeRequest d;
  d.set_key("a");
  d.set_range_end("c");
  d.set_prev_kv(true);
  absl::StatusOr<DeleteRangeResponse> r =
      Call<DeleteRangeResponse>(w(), [&](auto reply) { leader->server.DeleteRange(d, reply); });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->deleted(), 2);
  EXPECT_EQ(r->header().revision(), 5);
  ExpectHeader(r->header(), *leader);
  ASSERT_EQ(r->prev_kvs_size(), 2);
  EXPECT_EQ(r->prev_kvs(0).key(), "a");
  EXPECT_EQ(r->prev_kvs(1).key(), "b");
  EXPECT_EQ(Keys(w(), *leader), (std::map<std::string, std::string>{{"c", "3"}}));
}

TEST_F(KvServerSingle, AWriteTxnGoesThroughRaftAndAReadOnlyTxnDoesNot) {
  TxnRequest create = IfAbsent("k", {PutOp("k", "1"), PutOp("j", "2")}, {RangeOp("k")});
  absl::StatusOr<TxnResponse> w1 =
      Call<TxnResponse>(w(), [&](auto reply) { leader->server.Txn(create, reply); });
  ASSERT_TRUE(w1.ok()) << w1.status();
  EXPECT_TRUE(w1->succeeded());
  EXPECT_EQ(w1->header().revision(), 2);
  ExpectHeader(w1->header(), *leader);
  ASSERT_EQ(w1->responses_size(), 2);

  // The same txn again takes its failure branch, a read: the txn still was a write
  // request (it could have written), so it went through Raft.
  const LogIndex before_write_txn = LastIndex(*leader);
  absl::StatusOr<TxnResponse> w2 =
      Call<TxnResponse>(w(), [&](auto reply) { leader->server.Txn(create, reply); });
  ASSERT_TRUE(w2.ok()) << w2.status();
  EXPECT_FALSE(w2->succeeded());
  EXPECT_EQ(w2->header().revision(), 2);
  EXPECT_EQ(LastIndex(*leader), before_write_txn + 1);

  const TxnRequest read = IfAbsent("k", {RangeOp("j")}, {RangeOp("k")});
  const LogIndex before_read_txn = LastIndex(*leader);
  absl::StatusOr<TxnResponse> r =
      Call<TxnResponse>(w(), [&](auto reply) { leader->server.Txn(read, reply); });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(LastIndex(*leader), before_read_txn);  // served as a read
  EXPECT_FALSE(r->succeeded());
  ExpectHeader(r->header(), *leader);
  EXPECT_EQ(r->header().revision(), 2);
  ASSERT_EQ(r->responses_size(), 1);
  ASSERT_EQ(r->responses(0).response_range().kvs_size(), 1);
  EXPECT_EQ(r->responses(0).response_range().kvs(0).value(), "1");
}

TEST_F(KvServerSingle, CompactAnswersAndOldRevisionsAreGone) {
  ASSERT_TRUE(Put(w(), *leader, "k", "1").ok());
  ASSERT_TRUE(Put(w(), *leader, "k", "2").ok());
  ASSERT_TRUE(Put(w(), *leader, "k", "3").ok());
  CompactionRequest c;
  c.set_revision(3);
  absl::StatusOr<CompactionResponse> r =
      Call<CompactionResponse>(w(), [&](auto reply) { leader->server.Compact(c, reply); });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->header().revision(), 4);
  ExpectHeader(r->header(), *leader);
  RangeRequest old = RangeReq("k");
  old.set_revision(2);
  EXPECT_EQ(Range(w(), *leader, old).status(), kv::ErrCompacted());
  old.set_revision(3);
  absl::StatusOr<RangeResponse> at3 = Range(w(), *leader, old);
  ASSERT_TRUE(at3.ok()) << at3.status();
  EXPECT_EQ(at3->kvs(0).value(), "2");
  // Compacting at a future revision is etcd's error, from the state machine.
  c.set_revision(100);
  EXPECT_EQ((Call<CompactionResponse>(w(), [&](auto reply) { leader->server.Compact(c, reply); })
                 .status()),
            kv::ErrFutureRev());
}

TEST_F(KvServerSingle, InvalidRequestsAreRefusedWithoutProposing) {
  const LogIndex last = LastIndex(*leader);
  EXPECT_EQ(Put(w(), *leader, "", "v").status(), kv::ErrEmptyKey());
  EXPECT_EQ(Range(w(), *leader, RangeReq("")).status(), kv::ErrEmptyKey());
  DeleteRangeRequest d;
  EXPECT_EQ((Call<DeleteRangeResponse>(w(), [&](auto reply) { leader->server.DeleteRange(d, reply); })
                 .status()),
            kv::ErrEmptyKey());
  TxnRequest twice;
  *twice.add_success() = PutOp("k", "1");
  *twice.add_success() = PutOp("k", "2");
  EXPECT_EQ((Call<TxnResponse>(w(), [&](auto reply) { leader->server.Txn(twice, reply); }).status()),
            kv::ErrDuplicateKey());
  TxnRequest many;
  for (int k = 0; k < 129; ++k) *many.add_success() = PutOp(absl::StrCat("k", k), "v");
  EXPECT_EQ((Call<TxnResponse>(w(), [&](auto reply) { leader->server.Txn(many, reply); }).status()),
            kv::ErrTooManyOps());
  PutRequest ignore_value;
  ignore_value.set_key("k");
  ignore_value.set_value("v");
  ignore_value.set_ignore_value(true);
  EXPECT_EQ((Call<PutResponse>(w(), [&](auto reply) { leader->server.Put(ignore_value, reply); })
                 .status()),
            kv::ErrValueProvided());
  EXPECT_EQ(LastIndex(*leader), last);
  EXPECT_EQ(leader->machine.store().revision(), 1);
}

TEST_F(KvServerSingle, ErrorsFromTheStateMachineComeBackWithEtcdsCodes) {
  // A put with a lease that does not exist passes validation but fails at apply.
  EXPECT_EQ(Put(w(), *leader, "k", "v", 12345).status(), kv::ErrLeaseNotFound());
  EXPECT_THAT(Keys(w(), *leader), IsEmpty());
}

// kv_server.h: "Every call answers exactly once through its Reply, never inside the
// call's own stack when it came from Raft (callbacks are deferred to a fresh event)."
TEST_F(KvServerSingle, RepliesThatCameFromRaftNeverRunInsideTheCallsOwnStack) {
  PutRequest p;
  p.set_key("k");
  p.set_value("v");
  Result<PutResponse> put;
  leader->server.Put(p, put.Capture());
  const bool put_inline = put.done();
  Result<RangeResponse> range;
  leader->server.Range(RangeReq("k"), range.Capture());
  const bool range_inline = range.done();
  Result<int64_t> unknown_lease;
  leader->server.LeaseKeepAlive(31337, unknown_lease.Capture());
  const bool keepalive_inline = unknown_lease.done();
  w().Settle();
  EXPECT_FALSE(put_inline) << "Put's reply ran inside Put() on a single-node leader";
  EXPECT_FALSE(range_inline) << "a linearizable Range's reply ran inside Range()";
  EXPECT_FALSE(keepalive_inline) << "an unknown lease's keepalive reply ran inside LeaseKeepAlive()";
  EXPECT_EQ(put.calls, 1);
  EXPECT_EQ(range.calls, 1);
  EXPECT_EQ(unknown_lease.calls, 1);
  EXPECT_EQ(unknown_lease.status(), kv::ErrLeaseNotFound());
  EXPECT_TRUE(put.status().ok()) << put.status();
  EXPECT_TRUE(range.status().ok()) << range.status();
}

TEST_F(KvServerSingle, EveryRequestIsAnsweredExactlyOnce) {
  std::vector<std::unique_ptr<Result<PutResponse>>> puts;
  for (int k = 0; k < 10; ++k) {
    PutRequest p;
    p.set_key(absl::StrCat("k", k));
    p.set_value("v");
    puts.push_back(std::make_unique<Result<PutResponse>>());
    leader->server.Put(p, puts.back()->Capture());
  }
  w().AdvanceBy(Millis(20000));  // beyond every timeout
  for (const auto& r : puts) {
    EXPECT_EQ(r->calls, 1);
    EXPECT_TRUE(r->status().ok()) << r->status();
  }
}

// ---- leases: grant, revoke, time to live, list --------------------------------------

TEST_F(KvServerSingle, LeaseGrantWithIdZeroGetsAPositiveServerPickedId) {
  absl::StatusOr<LeaseGrantResponse> a = Grant(w(), *leader, 10);
  absl::StatusOr<LeaseGrantResponse> b = Grant(w(), *leader, 1);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_GT(a->id(), 0);
  EXPECT_GT(b->id(), 0);
  EXPECT_NE(a->id(), b->id());
  EXPECT_EQ(a->ttl(), 10);
  EXPECT_EQ(b->ttl(), 2);  // raised to the minimum TTL
  ExpectHeader(a->header(), *leader);
  EXPECT_EQ(a->header().revision(), 1);
  EXPECT_THAT(leader->server.Leases(), UnorderedElementsAre(a->id(), b->id()));
}

TEST_F(KvServerSingle, LeaseGrantWithAnIdKeepsItAndAnExistingIdIsRefused) {
  absl::StatusOr<LeaseGrantResponse> a = Grant(w(), *leader, 10, 777);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->id(), 777);
  EXPECT_EQ(Grant(w(), *leader, 10, 777).status(), kv::ErrLeaseExist());
  EXPECT_THAT(leader->server.Leases(), ElementsAre(777));
}

TEST_F(KvServerSingle, LeaseGrantWithATtlTooLargeOrANegativeIdIsRefusedBeforeProposing) {
  const LogIndex last = LastIndex(*leader);
  EXPECT_EQ(Grant(w(), *leader, lease::LeaseConfig().max_ttl_seconds + 1).status(),
            kv::ErrLeaseTTLTooLarge());
  EXPECT_TRUE(absl::IsInvalidArgument(Grant(w(), *leader, 10, -5).status()));
  EXPECT_EQ(LastIndex(*leader), last);
  EXPECT_THAT(leader->server.Leases(), IsEmpty());
}

TEST_F(KvServerSingle, LeaseRevokeDeletesTheLeaseAndItsKeys) {
  absl::StatusOr<LeaseGrantResponse> g = Grant(w(), *leader, 30);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE(Put(w(), *leader, "a", "1", g->id()).ok());
  ASSERT_TRUE(Put(w(), *leader, "b", "2", g->id()).ok());
  ASSERT_TRUE(Put(w(), *leader, "c", "3").ok());
  LeaseRevokeRequest r;
  r.set_id(g->id());
  absl::StatusOr<LeaseRevokeResponse> rv =
      Call<LeaseRevokeResponse>(w(), [&](auto reply) { leader->server.LeaseRevoke(r, reply); });
  ASSERT_TRUE(rv.ok()) << rv.status();
  EXPECT_EQ(rv->header().revision(), 5);
  ExpectHeader(rv->header(), *leader);
  EXPECT_EQ(Keys(w(), *leader), (std::map<std::string, std::string>{{"c", "3"}}));
  EXPECT_THAT(leader->server.Leases(), IsEmpty());
  EXPECT_EQ((Call<LeaseRevokeResponse>(w(), [&](auto reply) { leader->server.LeaseRevoke(r, reply); })
                 .status()),
            kv::ErrLeaseNotFound());
  EXPECT_EQ(KeepAlive(w(), *leader, g->id()).status(), kv::ErrLeaseNotFound());
}

TEST_F(KvServerSingle, LeaseTimeToLiveReportsTheGrantedTtlTheRemainingTtlAndTheKeys) {
  absl::StatusOr<LeaseGrantResponse> g = Grant(w(), *leader, 10);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE(Put(w(), *leader, "b", "1", g->id()).ok());
  ASSERT_TRUE(Put(w(), *leader, "a", "1", g->id()).ok());
  absl::StatusOr<LeaseTimeToLiveResponse> t = TimeToLive(w(), *leader, g->id(), true);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->id(), g->id());
  EXPECT_EQ(t->grantedttl(), 10);
  EXPECT_GT(t->ttl(), 0);
  EXPECT_LE(t->ttl(), 10);
  EXPECT_THAT(t->keys(), ElementsAre("a", "b"));
  ExpectHeader(t->header(), *leader);
  EXPECT_EQ(t->header().revision(), 3);

  absl::StatusOr<LeaseTimeToLiveResponse> no_keys = TimeToLive(w(), *leader, g->id(), false);
  ASSERT_TRUE(no_keys.ok()) << no_keys.status();
  EXPECT_THAT(no_keys->keys(), IsEmpty());

  EXPECT_EQ(TimeToLive(w(), *leader, g->id() + 1, true).status(), kv::ErrLeaseNotFound());
}

// ---- keepalives -----------------------------------------------------------------------

TEST(KvServerLeases, KeepAliveBeforeTheNodeLeadsIsNotLeader) {
  Cluster c(3);  // before any election (a sole voter would lead at once)
  Member& m = *c.members[0];
  ASSERT_FALSE(m.Leads());
  EXPECT_EQ(KeepAlive(c.world, m, 1).status(), ErrNotLeader());
  EXPECT_EQ(ErrNotLeader(), absl::FailedPreconditionError("etcdserver: not leader"));
  EXPECT_EQ(TimeToLive(c.world, m, 1, false).status(), ErrNotLeader());
}

TEST_F(KvServerSingle, KeepAliveAnswersTheGrantedTtlOnceTheCheckpointCarryingItApplied) {
  absl::StatusOr<LeaseGrantResponse> g = Grant(w(), *leader, 7);
  ASSERT_TRUE(g.ok()) << g.status();
  w().AdvanceBy(Millis(3000));  // the lease clock runs (past the promotion pause)
  const int64_t asked = leader->server.lessor().ClockMs(w().Now()) + 7000;
  const uint64_t applied_before = leader->node.raft().log().applied().value;
  Result<int64_t> ka;
  int64_t table_expiry_at_reply = -1;
  uint64_t applied_at_reply = 0;
  leader->server.LeaseKeepAlive(g->id(), [&](absl::StatusOr<int64_t> v) {
    ++ka.calls;
    ka.value = std::move(v);
    table_expiry_at_reply = leader->machine.leases().Find(g->id())->expiry_ms;
    applied_at_reply = leader->node.raft().log().applied().value;
  });
  EXPECT_FALSE(ka.done());  // never inside the call
  ASSERT_TRUE(w().RunUntil([&] { return ka.done(); }, Millis(1000)));
  ASSERT_TRUE(ka.value->ok()) << ka.value->status();
  EXPECT_EQ(**ka.value, 7);
  EXPECT_GE(table_expiry_at_reply, asked);  // the renewal was applied before the reply
  EXPECT_GT(applied_at_reply, applied_before);
  w().AdvanceBy(Millis(20000));
  EXPECT_EQ(ka.calls, 1);
}

TEST_F(KvServerSingle, KeepAlivesKeepALeaseAliveLongPastItsTtl) {
  absl::StatusOr<LeaseGrantResponse> g = Grant(w(), *leader, 3);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE(Put(w(), *leader, "held", "1", g->id()).ok());
  for (int k = 0; k < 20; ++k) {
    w().AdvanceBy(Millis(1000));
    absl::StatusOr<int64_t> ttl = KeepAlive(w(), *leader, g->id());
    ASSERT_TRUE(ttl.ok()) << "keepalive " << k << ": " << ttl.status();
    EXPECT_EQ(*ttl, 3);
  }
  EXPECT_EQ(Keys(w(), *leader), (std::map<std::string, std::string>{{"held", "1"}}));
}

TEST_F(KvServerSingle, KeepAliveOfAnUnknownLeaseIsLeaseNotFoundAfterAReadRound) {
  const LogIndex last = LastIndex(*leader);
  Result<int64_t> ka;
  leader->server.LeaseKeepAlive(4242, ka.Capture());
  ASSERT_TRUE(w().RunUntil([&] { return ka.done(); }, Millis(1000)));
  EXPECT_EQ(ka.status(), kv::ErrLeaseNotFound());
  EXPECT_EQ(LastIndex(*leader), last);  // a read round, no entry
  w().AdvanceBy(Millis(10000));
  EXPECT_EQ(ka.calls, 1);
}

// A lease nobody keeps alive is revoked once the lease clock passes its TTL: the clock
// of a new leader pauses for promotion_pause first, then it is checkpointed at least every
// checkpoint_interval, and the checkpoint that reaches the expiry revokes it.
TEST_F(KvServerSingle, AnAbandonedLeaseIsRevokedAfterItsTtlAndItsKeysDisappear) {
  const Nanos granted_at = w().Now();
  absl::StatusOr<LeaseGrantResponse> g = Grant(w(), *leader, 5);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE(Put(w(), *leader, "ephemeral", "1", g->id()).ok());
  ASSERT_TRUE(Put(w(), *leader, "stays", "1").ok());

  const lease::LessorConfig lc;
  w().RunUntil([] { return false; }, granted_at + Millis(5000) - Millis(1) - w().Now());
  EXPECT_THAT(leader->server.Leases(), ElementsAre(g->id())) << "revoked before its TTL";

  const Nanos bound = granted_at + Millis(5000) + lc.promotion_pause + lc.checkpoint_interval +
                      Millis(200);
  const bool revoked =
      w().RunUntil([&] { return leader->server.Leases().empty(); }, bound - w().Now());
  EXPECT_TRUE(revoked) << "not revoked by TTL + promotion pause + checkpoint interval";
  EXPECT_EQ(Keys(w(), *leader), (std::map<std::string, std::string>{{"stays", "1"}}));
  EXPECT_EQ(KeepAlive(w(), *leader, g->id()).status(), kv::ErrLeaseNotFound());
  EXPECT_EQ(TimeToLive(w(), *leader, g->id(), false).status(), kv::ErrLeaseNotFound());
}

// The same with a leader that has led for a while before the grant, with no lease yet
// (so no checkpoint moved the replicated lease clock): the lease must still live its TTL.
TEST_F(KvServerSingle, ALeaseGrantedByALongStandingLeaderLivesItsTtl) {
  w().AdvanceBy(Millis(10000));
  const int64_t lessor_clock = leader->server.lessor().ClockMs(w().Now());
  const int64_t table_clock = leader->machine.leases().clock_ms();
  const Nanos granted_at = w().Now();
  absl::StatusOr<LeaseGrantResponse> g = Grant(w(), *leader, 5);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE(Put(w(), *leader, "ephemeral", "1", g->id()).ok());
  absl::StatusOr<LeaseTimeToLiveResponse> t = TimeToLive(w(), *leader, g->id(), false);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_GE(t->ttl(), 4) << "a fresh 5 s lease reports " << t->ttl() << " s left";

  const bool revoked_early = w().RunUntil([&] { return leader->server.Leases().empty(); },
                                          granted_at + Millis(4900) - w().Now());
  EXPECT_FALSE(revoked_early)
      << "a 5 s lease was revoked " << (w().Now() - granted_at).count() / 1000000
      << " ms after its grant; at the grant the leader's lease clock was " << lessor_clock
      << " ms but the replicated one (which the grant's expiry counts from) " << table_clock
      << " ms";
  EXPECT_EQ(Keys(w(), *leader), (std::map<std::string, std::string>{{"ephemeral", "1"}}));
}

// ---- three members: followers, quorum, a cut-off leader ------------------------------

TEST(KvServerCluster, KeepAliveAndTimeToLiveOnAFollowerAreNotLeader) {
  Cluster c(3);
  Member& leader = c.Elect();
  absl::StatusOr<LeaseGrantResponse> g = Grant(c.world, leader, 10);
  ASSERT_TRUE(g.ok()) << g.status();
  c.world.AdvanceBy(Millis(50));  // the followers apply the grant
  Member& follower = c.Follower();
  ASSERT_NE(follower.machine.leases().Find(g->id()), nullptr);
  EXPECT_EQ(KeepAlive(c.world, follower, g->id()).status(), ErrNotLeader());
  EXPECT_EQ(TimeToLive(c.world, follower, g->id(), true).status(), ErrNotLeader());
  // Leases() is served locally, on any member.
  EXPECT_THAT(follower.server.Leases(), ElementsAre(g->id()));
}

TEST(KvServerCluster, AFollowerServesWritesAndLinearizableReadsThroughTheLeader) {
  Cluster c(3);
  Member& leader = c.Elect();
  Member& follower = c.Follower();
  absl::StatusOr<PutResponse> put = Put(c.world, follower, "k", "v");
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->header().revision(), 2);
  ExpectHeader(put->header(), follower);  // the member that answered
  absl::StatusOr<RangeResponse> r = Range(c.world, follower, RangeReq("k"));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->kvs_size(), 1);
  EXPECT_EQ(r->kvs(0).value(), "v");
  ExpectHeader(r->header(), follower);
  EXPECT_EQ(Keys(c.world, leader), (std::map<std::string, std::string>{{"k", "v"}}));
}

TEST(KvServerCluster, AKeepAliveIsAnsweredOnlyOnceItsCheckpointCommitted) {
  Cluster c(3);
  Member& leader = c.Elect();
  absl::StatusOr<LeaseGrantResponse> g = Grant(c.world, leader, 10);
  ASSERT_TRUE(g.ok()) << g.status();
  c.world.AdvanceBy(Millis(2000));

  // Cut off from its followers, the leader can propose the checkpoint but not commit it.
  c.world.Isolate(leader.id());
  Result<int64_t> ka;
  leader.server.LeaseKeepAlive(g->id(), ka.Capture());
  c.world.AdvanceBy(Millis(400));
  EXPECT_FALSE(ka.done()) << "acknowledged a renewal that has not committed: " << ka.status();
  ASSERT_TRUE(leader.Leads());

  c.world.Isolate(leader.id(), false);
  ASSERT_TRUE(c.world.RunUntil([&] { return ka.done(); }, Millis(2000)));
  ASSERT_TRUE(ka.value->ok()) << ka.status();
  EXPECT_EQ(**ka.value, 10);
}

// A deposed leader, cut off from the majority that elected a successor, must not report
// a lease gone on its own stale view: the keepalive is checked by a read round first,
// which a cut-off leader cannot complete.
TEST(KvServerCluster, ACutOffLeaderDoesNotReportAnUnknownLeaseGone) {
  Cluster c(3);
  Member& old_leader = c.Elect();
  c.world.Isolate(old_leader.id());
  Result<int64_t> ka;
  old_leader.server.LeaseKeepAlive(99, ka.Capture());
  EXPECT_FALSE(ka.done());
  c.world.AdvanceBy(Millis(6000));  // the majority elects another leader meanwhile
  ASSERT_TRUE(ka.done());
  EXPECT_FALSE(ka.value->ok());
  EXPECT_NE(ka.status(), kv::ErrLeaseNotFound()) << "answered on an unconfirmed view";
  EXPECT_TRUE(absl::IsDeadlineExceeded(ka.status()) || absl::IsUnavailable(ka.status()) ||
              ka.status() == ErrNotLeader())
      << ka.status();
  EXPECT_EQ(ka.calls, 1);
}

// KvServerPlantedBugs::lease_gone_without_confirmation: the leader answers an
// unknown-lease keepalive from its own view at once, with no read round; cut off from the
// majority, it says "lease not found" though it may no longer lead (the difference from
// the test above).
TEST(KvServerCluster, PlantedBugAnswersAnUnknownLeaseGoneAtOnceEvenWhenCutOff) {
  Cluster c(3, ServerConfig({.lease_gone_without_confirmation = true}));
  Member& old_leader = c.Elect();
  c.world.Isolate(old_leader.id());
  Result<int64_t> ka;
  old_leader.server.LeaseKeepAlive(99, ka.Capture());
  EXPECT_TRUE(ka.done());  // inside the call: no read round
  EXPECT_EQ(ka.status(), kv::ErrLeaseNotFound());
}

// And what the planted bug breaks. Without CheckQuorum the cut-off leader goes on
// leading its old term while the majority elects a successor, which grants a lease: the
// deposed leader has never heard of it. Correct: it cannot confirm its view (the read
// round fails), so it never says "not found". Planted: "not found" at once.
TEST(KvServerCluster, PlantedBugReportsALiveLeaseOfTheNewLeaderGone) {
  for (bool planted : {false, true}) {
    SCOPED_TRACE(planted ? "planted bug" : "correct server");
    Cluster c(3, ServerConfig({.lease_gone_without_confirmation = planted}),
              /*check_quorum=*/false);
    Member& old_leader = c.Elect();
    c.world.Isolate(old_leader.id());
    Member* new_leader = nullptr;
    ASSERT_TRUE(c.world.RunUntil(
        [&] {
          for (auto& m : c.members) {
            if (m.get() != &old_leader && m->Leads() && m->server.lessor().primary()) {
              new_leader = m.get();
            }
          }
          return new_leader != nullptr;
        },
        Millis(10000)));
    absl::StatusOr<LeaseGrantResponse> g = Grant(c.world, *new_leader, 30);
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_TRUE(old_leader.Leads());
    ASSERT_LT(old_leader.node.raft().term(), new_leader->node.raft().term());

    Result<int64_t> ka;
    old_leader.server.LeaseKeepAlive(g->id(), ka.Capture());
    if (planted) {
      EXPECT_TRUE(ka.done());
      EXPECT_EQ(ka.status(), kv::ErrLeaseNotFound());  // wrong: the lease lives
    } else {
      c.world.AdvanceBy(Millis(6000));
      ASSERT_TRUE(ka.done());
      EXPECT_FALSE(ka.value->ok());
      EXPECT_NE(ka.status(), kv::ErrLeaseNotFound()) << "answered on an unconfirmed view";
    }
    // The lease is alive at the new leader all along.
    absl::StatusOr<int64_t> ttl = KeepAlive(c.world, *new_leader, g->id());
    EXPECT_TRUE(ttl.ok()) << ttl.status();
  }
}

}  // namespace
}  // namespace keel::server
