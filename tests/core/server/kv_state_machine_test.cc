// Tests for KvStateMachine (core/server/kv_state_machine.h): etcd's keyspace and leases
// driven by serverpb.Command entries, over a kv::MemoryBackend. Each test applies
// commands at consecutive log indexes itself (no Node): what the machine answers in
// ApplyContext::response, what it reports to its Listener, what it keeps in the backend
// (a fresh machine Open()ed over the same backend is a restart), and its snapshots
// (the "KKM1" marker and the "KKV1" dump, whose byte format the header documents).

#include "core/server/kv_state_machine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <any>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "core/bytes.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/errors.h"
#include "core/kv/memory_backend.h"
#include "core/lease/lease.pb.h"
#include "core/server/command.pb.h"
#include "tests/core/kv/kv_test_util.h"

namespace keel::server {
namespace {

using etcdserverpb::CompactionResponse;
using etcdserverpb::Compare;
using etcdserverpb::DeleteRangeResponse;
using etcdserverpb::LeaseGrantResponse;
using etcdserverpb::LeaseRevokeResponse;
using etcdserverpb::PutRequest;
using etcdserverpb::PutResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using etcdserverpb::RequestOp;
using etcdserverpb::TxnRequest;
using etcdserverpb::TxnResponse;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

using test::kNul;

// ---- commands ---------------------------------------------------------------------

std::string Serialize(const serverpb::Command& c) { return c.SerializeAsString(); }

PutRequest PutReq(const std::string& key, const std::string& value, int64_t lease = 0) {
  PutRequest r;
  r.set_key(key);
  r.set_value(value);
  r.set_lease(lease);
  return r;
}

std::string PutCmd(const std::string& key, const std::string& value, int64_t lease = 0,
                   bool prev_kv = false) {
  serverpb::Command c;
  *c.mutable_put() = PutReq(key, value, lease);
  c.mutable_put()->set_prev_kv(prev_kv);
  return Serialize(c);
}

std::string DeleteCmd(const std::string& key, const std::string& end = "") {
  serverpb::Command c;
  c.mutable_delete_range()->set_key(key);
  c.mutable_delete_range()->set_range_end(end);
  return Serialize(c);
}

std::string TxnCmd(const TxnRequest& txn) {
  serverpb::Command c;
  *c.mutable_txn() = txn;
  return Serialize(c);
}

std::string CompactCmd(int64_t revision) {
  serverpb::Command c;
  c.mutable_compaction()->set_revision(revision);
  return Serialize(c);
}

std::string GrantCmd(int64_t id, int64_t ttl) {
  serverpb::Command c;
  c.mutable_lease_grant()->set_id(id);
  c.mutable_lease_grant()->set_ttl(ttl);
  return Serialize(c);
}

std::string RevokeCmd(int64_t id) {
  serverpb::Command c;
  c.mutable_lease_revoke()->set_id(id);
  return Serialize(c);
}

leasepb::Checkpoint Checkpoint(uint64_t term, int64_t clock_ms,
                               std::vector<std::pair<int64_t, int64_t>> renewals = {}) {
  return test::MakeCheckpoint(term, 1, clock_ms, renewals);
}

std::string CheckpointCmd(const leasepb::Checkpoint& cp) {
  serverpb::Command c;
  *c.mutable_lease_checkpoint() = cp;
  return Serialize(c);
}

RequestOp PutOp(const std::string& key, const std::string& value) {
  RequestOp op;
  *op.mutable_request_put() = PutReq(key, value);
  return op;
}

RequestOp DeleteOp(const std::string& key) {
  RequestOp op;
  op.mutable_request_delete_range()->set_key(key);
  return op;
}

RequestOp RangeOp(const std::string& key) {
  RequestOp op;
  op.mutable_request_range()->set_key(key);
  return op;
}

RequestOp TxnOp(const TxnRequest& txn) {
  RequestOp op;
  *op.mutable_request_txn() = txn;
  return op;
}

// A txn whose compare "key's version is 0" holds exactly when the key does not exist.
TxnRequest IfAbsent(const std::string& key, std::vector<RequestOp> success,
                    std::vector<RequestOp> failure = {}) {
  TxnRequest t;
  Compare* c = t.add_compare();
  c->set_key(key);
  c->set_target(Compare::VERSION);
  c->set_result(Compare::EQUAL);
  c->set_version(0);
  for (RequestOp& op : success) *t.add_success() = std::move(op);
  for (RequestOp& op : failure) *t.add_failure() = std::move(op);
  return t;
}

// ---- a listener that records everything -------------------------------------------

class RecordingListener : public KvStateMachine::Listener {
 public:
  void OnEvents(const std::vector<mvccpb::Event>& e) override { events.push_back(e); }
  void OnLeaseCheckpoint(const leasepb::Checkpoint& checkpoint,
                         const std::vector<int64_t>& revoked) override {
    checkpoints.emplace_back(checkpoint, revoked);
  }
  void OnLeaseRevoked(int64_t id) override { revoked.push_back(id); }
  void OnRestored() override { ++restored; }

  bool Silent() const {
    return events.empty() && checkpoints.empty() && revoked.empty() && restored == 0;
  }

  std::vector<std::vector<mvccpb::Event>> events;
  std::vector<std::pair<leasepb::Checkpoint, std::vector<int64_t>>> checkpoints;
  std::vector<int64_t> revoked;
  int restored = 0;
};

// ---- the machine under test ---------------------------------------------------------

// What one Apply gave.
struct Applied {
  absl::Status status;
  std::any response;
};

struct ApplyOptions {
  uint64_t request_id = 0;
  bool nospace = false;
  uint64_t term = 1;
};

// A machine over its own backend, and the next index to apply at.
struct Machine {
  explicit Machine(KvConfig config = {}) : config(config) { Reopen(); }

  // A fresh machine over the same backend (a restart).
  void Reopen() {
    m = std::make_unique<KvStateMachine>(&backend, config, Logger());
    m->SetListener(&listener);
    open_status = m->Open();
    EXPECT_TRUE(open_status.ok()) << open_status;
    next = m->applied() + 1;
  }

  Applied Apply(std::string_view command, ApplyOptions o = {}) {
    Applied out;
    const StateMachine::ApplyContext context{
        .nospace = o.nospace, .term = Term(o.term), .response = &out.response};
    out.status = m->Apply(next, o.request_id, command, context);
    next = next + 1;
    return out;
  }

  // Applies, expecting success.
  std::any Ok(std::string_view command, ApplyOptions o = {}) {
    Applied a = Apply(command, o);
    EXPECT_TRUE(a.status.ok()) << a.status;
    return a.response;
  }

  // Every live key with its value, as of now.
  std::map<std::string, std::string> Keys() const {
    std::map<std::string, std::string> out;
    RangeRequest r;
    r.set_key(kNul);
    r.set_range_end(kNul);
    RangeResponse resp;
    absl::Status st = m->applier().Range(r, &resp);
    EXPECT_TRUE(st.ok()) << st;
    for (const mvccpb::KeyValue& kv : resp.kvs()) out[kv.key()] = kv.value();
    return out;
  }

  int64_t revision() const { return m->store().revision(); }

  KvConfig config;
  kv::MemoryBackend backend;
  RecordingListener listener;
  std::unique_ptr<KvStateMachine> m;
  absl::Status open_status;
  LogIndex next{1};
};

template <typename T>
T As(const std::any& response) {
  const T* r = std::any_cast<T>(&response);
  EXPECT_NE(r, nullptr) << "the response is not a " << T::descriptor()->full_name()
                        << (response.has_value() ? "" : " (no response at all)");
  return r != nullptr ? *r : T();
}

std::map<uint64_t, int64_t> RequestIds(const kv::Backend& b) {
  std::map<uint64_t, int64_t> out;
  EXPECT_TRUE(b.ScanRequestIds([&](uint64_t id, int64_t index) { out[id] = index; }).ok());
  return out;
}

std::map<int64_t, std::string> LeaseRecords(const kv::Backend& b) {
  std::map<int64_t, std::string> out;
  EXPECT_TRUE(b.ScanLeases([&](int64_t id, std::string_view bytes) { out[id] = bytes; }).ok());
  return out;
}

// The whole observable state of a machine, to show that something changed nothing.
struct State {
  LogIndex applied;
  int64_t revision = 0;
  int64_t compacted = 0;
  int64_t lease_clock = 0;
  std::map<kv::Revision, std::string> records;
  std::map<int64_t, std::string> leases;
  std::map<uint64_t, int64_t> requests;
  bool operator==(const State&) const = default;
};

State Capture(Machine& x) {
  return State{x.m->applied(), x.m->store().revision(), x.m->store().compacted(),
               x.m->leases().clock_ms(), x.backend.revisions(), LeaseRecords(x.backend),
               RequestIds(x.backend)};
}

// ---- "KKV1" dumps, built by hand from the format in kv_state_machine.h -------------

struct DumpSpec {
  uint64_t applied = 0;
  std::vector<std::pair<kv::Revision, std::string>> revisions;
  std::vector<std::pair<int64_t, std::string>> leases;
  std::vector<std::pair<uint64_t, int64_t>> requests;
  int64_t compacted = -1;
  int64_t lease_clock_ms = 0;

  std::string Encode() const {
    std::string out = "KKV1";
    PutU64(&out, applied);
    PutU64(&out, revisions.size());
    for (const auto& [rev, bytes] : revisions) {
      PutI64(&out, rev.main);
      PutI64(&out, rev.sub);
      PutU32(&out, static_cast<uint32_t>(bytes.size()));
      out += bytes;
    }
    PutU64(&out, leases.size());
    for (const auto& [id, bytes] : leases) {
      PutI64(&out, id);
      PutU32(&out, static_cast<uint32_t>(bytes.size()));
      out += bytes;
    }
    PutU64(&out, requests.size());
    for (const auto& [id, index] : requests) {
      PutU64(&out, id);
      PutI64(&out, index);
    }
    PutI64(&out, compacted);
    PutI64(&out, lease_clock_ms);
    return out;
  }
};

std::string KeyValueBytes(const std::string& key, const std::string& value, int64_t create,
                          int64_t mod, int64_t version, int64_t lease = 0) {
  mvccpb::KeyValue kv;
  kv.set_key(key);
  kv.set_value(value);
  kv.set_create_revision(create);
  kv.set_mod_revision(mod);
  kv.set_version(version);
  kv.set_lease(lease);
  return kv.SerializeAsString();
}

std::string LeaseRecordBytes(int64_t id, int64_t ttl, int64_t expiry,
                             uint64_t granted_index = 0) {
  leasepb::Record r;
  r.set_id(id);
  r.set_ttl_seconds(ttl);
  r.set_expiry_ms(expiry);
  r.set_granted_index(granted_index);
  return r.SerializeAsString();
}

// A small valid dump: lease 7 (ttl 10 s, expiring at 10000) holding key "a" (put at
// revision 2), request id 99 applied at index 3, applied index 4.
DumpSpec SmallDump() {
  DumpSpec d;
  d.applied = 4;
  d.revisions.push_back({kv::Revision{2, 0}, KeyValueBytes("a", "1", 2, 2, 1, 7)});
  d.leases.push_back({7, LeaseRecordBytes(7, 10, 10000)});
  d.requests.push_back({99, 3});
  return d;
}

// ---- Apply: one test per command type --------------------------------------------

TEST(KvStateMachineApply, PutAnswersEtcdsPutResponseAtTheNewRevision) {
  Machine x;
  const PutResponse first = As<PutResponse>(x.Ok(PutCmd("k", "v1")));
  EXPECT_EQ(first.header().revision(), 2);  // a new store is at 1; the first write is 2
  EXPECT_FALSE(first.has_prev_kv());
  const PutResponse second = As<PutResponse>(x.Ok(PutCmd("k", "v2", 0, /*prev_kv=*/true)));
  EXPECT_EQ(second.header().revision(), 3);
  EXPECT_EQ(second.prev_kv().value(), "v1");
  EXPECT_EQ(second.prev_kv().mod_revision(), 2);
  EXPECT_EQ(x.m->applied(), LogIndex(2));
  EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"k", "v2"}}));
  x.m->CheckInvariants();
}

TEST(KvStateMachineApply, DeleteRangeAnswersTheCountDeletedAtTheNewRevision) {
  Machine x;
  x.Ok(PutCmd("a", "1"));
  x.Ok(PutCmd("b", "2"));
  x.Ok(PutCmd("c", "3"));
  const DeleteRangeResponse r = As<DeleteRangeResponse>(x.Ok(DeleteCmd("a", "c")));
  EXPECT_EQ(r.deleted(), 2);
  EXPECT_EQ(r.header().revision(), 5);
  EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"c", "3"}}));
  // Deleting nothing is no revision.
  const DeleteRangeResponse none = As<DeleteRangeResponse>(x.Ok(DeleteCmd("zz")));
  EXPECT_EQ(none.deleted(), 0);
  EXPECT_EQ(none.header().revision(), 5);
  x.m->CheckInvariants();
}

TEST(KvStateMachineApply, TxnAnswersEtcdsTxnResponseForTheBranchTaken) {
  Machine x;
  const TxnResponse created =
      As<TxnResponse>(x.Ok(TxnCmd(IfAbsent("k", {PutOp("k", "new")}, {RangeOp("k")}))));
  EXPECT_TRUE(created.succeeded());
  EXPECT_EQ(created.header().revision(), 2);
  ASSERT_EQ(created.responses_size(), 1);
  EXPECT_TRUE(created.responses(0).has_response_put());

  const TxnResponse exists =
      As<TxnResponse>(x.Ok(TxnCmd(IfAbsent("k", {PutOp("k", "again")}, {RangeOp("k")}))));
  EXPECT_FALSE(exists.succeeded());
  EXPECT_EQ(exists.header().revision(), 2);  // a read-only branch writes nothing
  ASSERT_EQ(exists.responses_size(), 1);
  ASSERT_EQ(exists.responses(0).response_range().kvs_size(), 1);
  EXPECT_EQ(exists.responses(0).response_range().kvs(0).value(), "new");
  x.m->CheckInvariants();
}

TEST(KvStateMachineApply, CompactionAnswersAtTheCurrentRevisionAndDropsOldHistory) {
  Machine x;
  x.Ok(PutCmd("k", "v1"));
  x.Ok(PutCmd("k", "v2"));
  x.Ok(PutCmd("k", "v3"));
  const CompactionResponse r = As<CompactionResponse>(x.Ok(CompactCmd(3)));
  EXPECT_EQ(r.header().revision(), 4);
  EXPECT_EQ(x.m->store().compacted(), 3);
  RangeRequest old;
  old.set_key("k");
  old.set_revision(2);
  RangeResponse resp;
  EXPECT_EQ(x.m->applier().Range(old, &resp), kv::ErrCompacted());
  // Compacting again at or below is etcd's error, and the command still counts as applied.
  Applied again = x.Apply(CompactCmd(3));
  EXPECT_EQ(again.status, kv::ErrCompacted());
  EXPECT_EQ(x.m->applied(), LogIndex(5));
  x.m->CheckInvariants();
}

TEST(KvStateMachineApply, LeaseGrantAnswersTheIdAndTheTtlRaisedToTheMinimum) {
  Machine x;
  const LeaseGrantResponse g = As<LeaseGrantResponse>(x.Ok(GrantCmd(5, 1)));
  EXPECT_EQ(g.id(), 5);
  EXPECT_EQ(g.ttl(), 2);  // LeaseConfig::min_ttl_seconds
  EXPECT_EQ(g.header().revision(), 1);
  ASSERT_NE(x.m->leases().Find(5), nullptr);
  EXPECT_EQ(x.m->leases().Find(5)->expiry_ms, 2000);  // on the lease clock, from 0

  EXPECT_EQ(x.Apply(GrantCmd(5, 10)).status, kv::ErrLeaseExist());
  EXPECT_EQ(x.Apply(GrantCmd(6, lease::LeaseConfig().max_ttl_seconds + 1)).status,
            kv::ErrLeaseTTLTooLarge());
  // The server picks an id before proposing: 0 or a negative id never applies.
  EXPECT_TRUE(absl::IsInvalidArgument(x.Apply(GrantCmd(0, 10)).status));
  EXPECT_TRUE(absl::IsInvalidArgument(x.Apply(GrantCmd(-3, 10)).status));
  EXPECT_EQ(x.m->leases().size(), 1u);
  EXPECT_EQ(x.m->applied(), LogIndex(5));
  x.m->CheckInvariants();
}

TEST(KvStateMachineApply, LeaseRevokeDeletesItsKeysInOneRevisionAndAnswersIt) {
  Machine x;
  x.Ok(GrantCmd(5, 10));
  x.Ok(PutCmd("a", "1", 5));
  x.Ok(PutCmd("b", "2", 5));
  x.Ok(PutCmd("c", "3"));
  ASSERT_EQ(x.revision(), 4);
  const LeaseRevokeResponse r = As<LeaseRevokeResponse>(x.Ok(RevokeCmd(5)));
  EXPECT_EQ(r.header().revision(), 5);
  EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"c", "3"}}));
  EXPECT_EQ(x.m->leases().Find(5), nullptr);
  EXPECT_THAT(LeaseRecords(x.backend), IsEmpty());
  EXPECT_EQ(x.Apply(RevokeCmd(5)).status, kv::ErrLeaseNotFound());
  x.m->CheckInvariants();
}

TEST(KvStateMachineApply, LeaseCheckpointRenewsAdvancesTheClockAndRevokesWhatExpired) {
  Machine x;
  x.Ok(GrantCmd(5, 10));  // expires at 10000
  x.Ok(GrantCmd(6, 10));  // expires at 10000, renewed below
  x.Ok(PutCmd("a", "1", 5));
  x.Ok(PutCmd("b", "2", 6));
  Applied a = x.Apply(CheckpointCmd(Checkpoint(1, 10000, {{6, 30000}})), {.term = 1});
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_FALSE(a.response.has_value());  // no client waits for a checkpoint's answer
  EXPECT_EQ(x.m->leases().clock_ms(), 10000);
  EXPECT_EQ(x.m->leases().Find(5), nullptr);
  ASSERT_NE(x.m->leases().Find(6), nullptr);
  EXPECT_EQ(x.m->leases().Find(6)->expiry_ms, 30000);
  EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"b", "2"}}));
  // A clock never goes back, and a renewal to an earlier expiry is ignored.
  x.Ok(CheckpointCmd(Checkpoint(1, 5000, {{6, 20000}})), {.term = 1});
  EXPECT_EQ(x.m->leases().clock_ms(), 10000);
  EXPECT_EQ(x.m->leases().Find(6)->expiry_ms, 30000);
  x.m->CheckInvariants();
}

// ---- malformed commands -------------------------------------------------------------

TEST(KvStateMachineApply, AMalformedCommandIsInvalidArgumentChangesNothingButIsApplied) {
  Machine x;
  x.Ok(PutCmd("k", "v"));
  const State before = Capture(x);
  for (std::string_view garbage : {std::string_view("\xff\xff\xff"), std::string_view("\x0a\x05k")}) {
    Applied a = x.Apply(garbage);
    EXPECT_TRUE(absl::IsInvalidArgument(a.status)) << a.status;
    EXPECT_FALSE(a.response.has_value());
  }
  // An empty command parses, but names no request.
  EXPECT_TRUE(absl::IsInvalidArgument(x.Apply("").status));
  EXPECT_EQ(x.m->applied(), LogIndex(4));
  EXPECT_TRUE(x.m->health().ok());
  State after = Capture(x);
  after.applied = before.applied;
  EXPECT_TRUE(after == before);
  x.Reopen();  // the applied index was written with them
  EXPECT_EQ(x.m->applied(), LogIndex(4));
}

// ---- the NOSPACE alarm --------------------------------------------------------------

TEST(KvStateMachineNoSpace, PutsTxnsThatPutAndLeaseGrantsAreRefusedAndChangeNothing) {
  Machine x;
  x.Ok(PutCmd("k", "v"));
  const TxnRequest nested_put =
      IfAbsent("x", {RangeOp("k")}, {TxnOp(IfAbsent("y", {RangeOp("k")}, {PutOp("y", "1")}))});
  const std::vector<std::string> refused = {
      PutCmd("k", "v2"),
      TxnCmd(IfAbsent("k", {PutOp("n", "1")})),  // a put in the branch not taken counts too
      TxnCmd(nested_put),
      GrantCmd(5, 10),
  };
  for (const std::string& command : refused) {
    const State before = Capture(x);
    EXPECT_TRUE(x.m->NeedsSpace(command));
    Applied a = x.Apply(command, {.nospace = true});
    EXPECT_EQ(a.status, NoSpaceError());
    EXPECT_FALSE(a.response.has_value());
    State after = Capture(x);
    EXPECT_EQ(after.applied, before.applied + 1);
    after.applied = before.applied;
    EXPECT_TRUE(after == before);
  }
  EXPECT_TRUE(x.listener.checkpoints.empty());
  EXPECT_EQ(x.listener.events.size(), 1u);  // the first put's only
  EXPECT_TRUE(x.m->health().ok());
}

TEST(KvStateMachineNoSpace, DeletesCompactionRevokesAndCheckpointsStillApply) {
  Machine x;
  x.Ok(GrantCmd(5, 10));
  x.Ok(PutCmd("a", "1"));
  x.Ok(PutCmd("b", "2"));
  const std::string del = DeleteCmd("a");
  const std::string del_txn = TxnCmd(IfAbsent("zz", {DeleteOp("b")}));
  const std::string read_txn = TxnCmd(IfAbsent("zz", {RangeOp("b")}));
  const std::string compact = CompactCmd(2);
  const std::string revoke = RevokeCmd(5);
  const std::string checkpoint = CheckpointCmd(Checkpoint(1, 100));
  for (const std::string* c : {&del, &del_txn, &read_txn, &compact, &revoke, &checkpoint}) {
    EXPECT_FALSE(x.m->NeedsSpace(*c));
    Applied a = x.Apply(*c, {.nospace = true});
    EXPECT_TRUE(a.status.ok()) << a.status;
  }
  EXPECT_THAT(x.Keys(), IsEmpty());
  EXPECT_EQ(x.m->leases().size(), 0u);
  EXPECT_EQ(x.m->store().compacted(), 2);
  EXPECT_EQ(x.m->leases().clock_ms(), 100);
}

TEST(KvStateMachineNoSpace, NeedsSpaceIsFalseForWhatDoesNotParse) {
  Machine x;
  EXPECT_FALSE(x.m->NeedsSpace("\xff\xff\xff"));
  EXPECT_FALSE(x.m->NeedsSpace(""));
  // And such a command is InvalidArgument under the alarm too, not NOSPACE.
  EXPECT_TRUE(absl::IsInvalidArgument(x.Apply("\xff\xff\xff", {.nospace = true}).status));
}

TEST(KvStateMachineNoSpace, ADuplicateOfARefusedCommandStaysRefused) {
  Machine x;
  EXPECT_EQ(x.Apply(PutCmd("k", "v"), {.request_id = 42, .nospace = true}).status,
            NoSpaceError());
  // The alarm was disarmed; the network then delivers the proposal again.
  EXPECT_TRUE(absl::IsDeadlineExceeded(x.Apply(PutCmd("k", "v"), {.request_id = 42}).status));
  EXPECT_THAT(x.Keys(), IsEmpty());
}

// ---- lease checkpoints of another term ------------------------------------------------

TEST(KvStateMachineLeases, ACheckpointOfAnotherTermThanItsEntryIsIgnored) {
  Machine x;
  x.Ok(GrantCmd(5, 10));  // expires at 10000
  x.Ok(PutCmd("a", "1", 5));
  const State before = Capture(x);
  for (uint64_t cp_term : {1u, 3u}) {
    // A deposed leader's checkpoint, re-proposed in term 2: its renewal, its clock and
    // the revocation that clock would cause must all be ignored.
    Applied a = x.Apply(CheckpointCmd(Checkpoint(cp_term, 50000, {{5, 90000}})), {.term = 2});
    EXPECT_TRUE(a.status.ok()) << a.status;
  }
  EXPECT_EQ(x.m->leases().clock_ms(), 0);
  ASSERT_NE(x.m->leases().Find(5), nullptr);
  EXPECT_EQ(x.m->leases().Find(5)->expiry_ms, 10000);
  EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"a", "1"}}));
  State after = Capture(x);
  EXPECT_EQ(after.applied, before.applied + 2);
  after.applied = before.applied;
  EXPECT_TRUE(after == before);
  EXPECT_TRUE(x.listener.checkpoints.empty());
  EXPECT_TRUE(x.listener.revoked.empty());

  // The same checkpoint in an entry of its own term applies.
  x.Ok(CheckpointCmd(Checkpoint(2, 50000, {{5, 90000}})), {.term = 2});
  EXPECT_EQ(x.m->leases().clock_ms(), 50000);
  EXPECT_EQ(x.m->leases().Find(5)->expiry_ms, 90000);
  EXPECT_EQ(x.listener.checkpoints.size(), 1u);
}

// ---- the listener -------------------------------------------------------------------

TEST(KvStateMachineListener, GetsEachCommandsEventsInRevisionOrder) {
  Machine x;
  x.Ok(PutCmd("a", "1"));
  x.Ok(TxnCmd(IfAbsent("b", {PutOp("b", "2"), PutOp("c", "3"), DeleteOp("a")})));
  x.Ok(DeleteCmd("nothing"));  // no change: no events
  x.Ok(CompactCmd(2));         // no events either
  ASSERT_EQ(x.listener.events.size(), 2u);
  ASSERT_EQ(x.listener.events[0].size(), 1u);
  EXPECT_EQ(x.listener.events[0][0].type(), mvccpb::Event::PUT);
  EXPECT_EQ(x.listener.events[0][0].kv().key(), "a");
  EXPECT_EQ(x.listener.events[0][0].kv().mod_revision(), 2);
  const std::vector<mvccpb::Event>& txn = x.listener.events[1];
  ASSERT_EQ(txn.size(), 3u);
  EXPECT_EQ(txn[0].type(), mvccpb::Event::PUT);
  EXPECT_EQ(txn[0].kv().key(), "b");
  EXPECT_EQ(txn[1].kv().key(), "c");
  EXPECT_EQ(txn[2].type(), mvccpb::Event::DELETE);
  EXPECT_EQ(txn[2].kv().key(), "a");
  for (const mvccpb::Event& e : txn) EXPECT_EQ(e.kv().mod_revision(), 3);
  EXPECT_TRUE(x.listener.checkpoints.empty());
  EXPECT_TRUE(x.listener.revoked.empty());
  EXPECT_EQ(x.listener.restored, 0);
}

TEST(KvStateMachineListener, GetsRevocationsAndCheckpointsWithTheLeasesTheyExpired) {
  Machine x;
  x.Ok(GrantCmd(5, 10));
  x.Ok(GrantCmd(6, 20));
  x.Ok(PutCmd("a", "1", 5));
  x.listener.events.clear();
  x.Ok(RevokeCmd(6));  // holds no key: no events
  EXPECT_THAT(x.listener.revoked, ElementsAre(6));
  EXPECT_TRUE(x.listener.events.empty());

  x.Ok(CheckpointCmd(Checkpoint(1, 10000)));
  ASSERT_EQ(x.listener.checkpoints.size(), 1u);
  EXPECT_EQ(x.listener.checkpoints[0].first.clock_ms(), 10000);
  EXPECT_THAT(x.listener.checkpoints[0].second, ElementsAre(5));
  EXPECT_THAT(x.listener.revoked, ElementsAre(6));  // a revocation by expiry is no LeaseRevoke
  ASSERT_EQ(x.listener.events.size(), 1u);
  ASSERT_EQ(x.listener.events[0].size(), 1u);
  EXPECT_EQ(x.listener.events[0][0].type(), mvccpb::Event::DELETE);
  EXPECT_EQ(x.listener.events[0][0].kv().key(), "a");

  // A command that fails reports nothing.
  x.listener = RecordingListener();
  EXPECT_EQ(x.Apply(RevokeCmd(6)).status, kv::ErrLeaseNotFound());
  EXPECT_EQ(x.Apply(PutCmd("b", "2", 77)).status, kv::ErrLeaseNotFound());
  EXPECT_TRUE(x.listener.Silent());
}

// ---- duplicates ---------------------------------------------------------------------

TEST(KvStateMachineDedup, ADuplicateWithinTheWindowIsDroppedAndChangesNothing) {
  Machine x(KvConfig{.dedup_window_entries = 3});
  x.Ok(PutCmd("k", "v1"), {.request_id = 42});  // index 1
  x.Ok(PutCmd("other", "x"));                    // 2
  x.listener = RecordingListener();
  const State before = Capture(x);
  // Index 3 and 4 are within 3 entries of 1: the same id is a duplicate, whatever it says.
  for (const std::string& dup : {PutCmd("k", "v1"), PutCmd("k", "different")}) {
    Applied a = x.Apply(dup, {.request_id = 42});
    EXPECT_TRUE(absl::IsDeadlineExceeded(a.status)) << a.status;
    EXPECT_FALSE(a.response.has_value());
  }
  EXPECT_EQ(x.m->applied(), LogIndex(4));
  EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"k", "v1"}, {"other", "x"}}));
  EXPECT_TRUE(x.listener.Silent());
  State after = Capture(x);
  after.applied = before.applied;
  EXPECT_EQ(after.revision, before.revision);
  EXPECT_EQ(after.records, before.records);
  // "Change nothing" includes the window: the id stays recorded at its application.
  EXPECT_EQ(after.requests, before.requests);
  EXPECT_EXIT(
      {
        x.m->CheckInvariants();
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "")
      << "KvStateMachine::CheckInvariants fails after a dropped duplicate";
}

TEST(KvStateMachineDedup, AnIdIsAppliedAgainOnceOutsideTheWindow) {
  Machine x(KvConfig{.dedup_window_entries = 3});
  x.Ok(PutCmd("k", "v1"), {.request_id = 42});  // index 1
  x.Ok(PutCmd("a", "x"));                        // 2
  x.Ok(PutCmd("b", "x"));                        // 3
  EXPECT_TRUE(absl::IsDeadlineExceeded(x.Apply(PutCmd("k", "v2"), {.request_id = 42}).status));
  // Index 5: index 1 is no longer among the last 3 entries.
  const PutResponse r = As<PutResponse>(x.Ok(PutCmd("k", "v3"), {.request_id = 42}));
  EXPECT_EQ(r.header().revision(), 5);
  EXPECT_EQ(x.Keys().at("k"), "v3");
  // Id 0 is "no id": never a duplicate.
  x.Ok(PutCmd("z", "1"), {.request_id = 0});
  x.Ok(PutCmd("z", "2"), {.request_id = 0});
  EXPECT_EQ(x.Keys().at("z"), "2");
}

TEST(KvStateMachineDedup, AnIdReappliedAfterADroppedDuplicateIsRememberedFromItsNewIndex) {
  Machine x(KvConfig{.dedup_window_entries = 3});
  x.Ok(PutCmd("k", "v1"), {.request_id = 42});  // 1
  x.Ok(PutCmd("a", "x"));                        // 2
  EXPECT_TRUE(absl::IsDeadlineExceeded(x.Apply(PutCmd("k", "dup"), {.request_id = 42}).status));  // 3
  x.Ok(PutCmd("b", "x"));                                                                        // 4
  x.Ok(PutCmd("k", "v2"), {.request_id = 42});  // 5: outside 1's window, applied again
  x.Ok(PutCmd("c", "x"));                        // 6
  // Index 7 is within 3 entries of 5, where 42 was last applied: a duplicate.
  Applied a = x.Apply(PutCmd("k", "v3"), {.request_id = 42});
  EXPECT_TRUE(absl::IsDeadlineExceeded(a.status))
      << "got " << a.status << "; the id was forgotten when the dropped duplicate at 3 left the window";
  EXPECT_EQ(x.Keys().at("k"), "v2");
}

// A machine that restarts after every entry must decide every entry as one that never
// restarted: the window is replicated state, and so is what a restart reloads of it.
TEST(KvStateMachineDedup, ARestartingMachineDecidesDuplicatesAsARunningOne) {
  const KvConfig config{.dedup_window_entries = 3};
  Machine running(config);
  Machine restarting(config);
  // (request id, value): 7 repeats inside and outside its window, with duplicates between.
  const std::vector<std::pair<uint64_t, std::string>> entries = {
      {7, "a"}, {8, "b"}, {7, "c"}, {9, "d"}, {10, "e"}, {7, "f"}, {11, "g"},
      {12, "h"}, {7, "i"}, {7, "j"}, {13, "k"}, {14, "l"}, {15, "m"}, {7, "n"}};
  for (size_t k = 0; k < entries.size(); ++k) {
    const auto& [id, value] = entries[k];
    const Applied a = running.Apply(PutCmd("k", value), {.request_id = id});
    restarting.Reopen();
    const Applied b = restarting.Apply(PutCmd("k", value), {.request_id = id});
    EXPECT_EQ(a.status.code(), b.status.code())
        << "entry " << k + 1 << " (id " << id << "): running " << a.status << ", restarted "
        << b.status;
  }
  EXPECT_EQ(running.Keys(), restarting.Keys());
  EXPECT_EQ(running.revision(), restarting.revision());
}

TEST(KvStateMachineDedup, TheWindowSurvivesARestart) {
  Machine x(KvConfig{.dedup_window_entries = 3});
  x.Ok(PutCmd("k", "v1"), {.request_id = 42});  // 1
  x.Ok(PutCmd("a", "x"), {.request_id = 43});   // 2
  x.Ok(PutCmd("b", "x"));                        // 3
  x.Reopen();
  EXPECT_EQ(x.m->applied(), LogIndex(3));
  EXPECT_EQ(x.next, LogIndex(4));
  EXPECT_EQ(x.revision(), 4);
  EXPECT_TRUE(absl::IsDeadlineExceeded(x.Apply(PutCmd("a", "y"), {.request_id = 43}).status));  // 4
  x.Ok(PutCmd("c", "x"));  // 5
  x.Reopen();
  x.Ok(PutCmd("k", "v2"), {.request_id = 42});  // 6: index 1 is outside the window
  EXPECT_EQ(x.Keys(),
            (std::map<std::string, std::string>{{"a", "x"}, {"b", "x"}, {"c", "x"}, {"k", "v2"}}));
}

TEST(KvStateMachineDedup, TheDatabasesWindowIsTrimmed) {
  Machine x(KvConfig{.dedup_window_entries = 3});
  for (uint64_t id = 1; id <= 3000; ++id) x.Ok(DeleteCmd("k"), {.request_id = id});
  const std::map<uint64_t, int64_t> ids = RequestIds(x.backend);
  EXPECT_LT(ids.size(), 3000u);
  EXPECT_GE(ids.size(), 3u);
  // What is left still holds the window, and a restart finds it.
  for (uint64_t id = 2998; id <= 3000; ++id) EXPECT_TRUE(ids.contains(id)) << id;
  x.Reopen();
  EXPECT_TRUE(absl::IsDeadlineExceeded(x.Apply(DeleteCmd("k"), {.request_id = 2998}).status));
  x.Ok(DeleteCmd("k"), {.request_id = 2997});
}

// ---- restart ------------------------------------------------------------------------

TEST(KvStateMachineOpen, AFreshMachineOverTheSameBackendHasTheSameState) {
  Machine x;
  x.Ok(GrantCmd(5, 10));
  x.Ok(PutCmd("a", "1", 5));
  x.Ok(PutCmd("b", "2"));
  x.Ok(PutCmd("b", "3"));
  x.Ok(CompactCmd(3));
  x.Ok(CheckpointCmd(Checkpoint(1, 700)));
  const State before = Capture(x);
  const std::map<std::string, std::string> keys = x.Keys();
  x.Reopen();
  EXPECT_TRUE(Capture(x) == before);
  EXPECT_EQ(x.Keys(), keys);
  EXPECT_EQ(x.m->applied(), LogIndex(6));
  EXPECT_EQ(x.m->store().compacted(), 3);
  EXPECT_EQ(x.m->leases().clock_ms(), 700);
  ASSERT_NE(x.m->leases().Find(5), nullptr);
  EXPECT_THAT(x.m->leases().Find(5)->keys, ElementsAre("a"));
  x.m->CheckInvariants();
}

TEST(KvStateMachineOpen, AnEmptyBackendIsIndexZeroAtRevisionOne) {
  Machine x;
  EXPECT_EQ(x.m->applied(), LogIndex(0));
  EXPECT_EQ(x.revision(), 1);
  EXPECT_EQ(x.m->store().compacted(), -1);
  EXPECT_TRUE(x.m->health().ok());
  EXPECT_TRUE(x.m->KeepsStateOnDisk());
}

// ---- snapshots: the marker ------------------------------------------------------------

TEST(KvStateMachineSnapshot, TakeSnapshotIsAMarkerOfTheAppliedIndex) {
  Machine x;
  x.Ok(PutCmd("k", "v"));
  x.Ok(PutCmd("k", "w"));
  std::string want = "KKM1";
  PutU64(&want, 2);
  EXPECT_EQ(x.m->TakeSnapshot(), want);
}

TEST(KvStateMachineSnapshot, RestoringTheMarkerChecksTheDatabaseIsAtLeastAsNew) {
  Machine x;
  x.Ok(PutCmd("k", "v"));
  x.Ok(PutCmd("k", "w"));
  const std::string marker = x.m->TakeSnapshot();
  const State before = Capture(x);
  EXPECT_TRUE(x.m->Restore(LogIndex(2), marker).ok());
  // Raft's snapshot may sit past the marker: the entries between carried no command.
  EXPECT_TRUE(x.m->Restore(LogIndex(3), marker).ok());
  // A marker newer than the database: applied state was lost.
  std::string newer("KKM1");
  for (int k = 0; k < 8; ++k) newer.push_back(k == 0 ? '\x05' : '\0');
  EXPECT_TRUE(absl::IsDataLoss(x.m->Restore(LogIndex(5), newer)));
  // A marker past its Raft snapshot's index is whole: the machine restored a peer's
  // newer dump, and Raft's applied index had not caught up when the log was compacted.
  EXPECT_TRUE(x.m->Restore(LogIndex(1), marker).ok());
  EXPECT_TRUE(absl::IsDataLoss(x.m->Restore(LogIndex(2), marker.substr(0, 8))));
  EXPECT_TRUE(absl::IsDataLoss(x.m->Restore(LogIndex(2), marker + "x")));
  EXPECT_TRUE(Capture(x) == before);
  EXPECT_EQ(x.listener.restored, 0);
  EXPECT_TRUE(x.m->health().ok());
}

// ---- snapshots: the dump --------------------------------------------------------------

// A machine with history, a compaction, leases with keys, a moved lease clock and
// request ids in its window.
void BuildRichState(Machine& x) {
  x.Ok(GrantCmd(5, 10), {.request_id = 1001});
  x.Ok(GrantCmd(6, 30), {.request_id = 1002});
  x.Ok(PutCmd("a", "1", 5), {.request_id = 1003});
  x.Ok(PutCmd("b", "1"), {.request_id = 1004});
  x.Ok(PutCmd("b", "2"));
  x.Ok(PutCmd("c", "1", 6));
  x.Ok(DeleteCmd("b"));
  x.Ok(PutCmd("b", "3", 5));
  x.Ok(CompactCmd(4));
  x.Ok(CheckpointCmd(Checkpoint(1, 1500, {{6, 40000}})));
  x.Ok(PutCmd("d", "1"), {.request_id = 1005});
}

TEST(KvStateMachineSnapshot, ExportCheckRestoreReproducesTheWholeState) {
  Machine source;
  BuildRichState(source);
  const std::string dump = source.m->ExportSnapshot();
  ASSERT_EQ(dump.substr(0, 4), "KKV1");

  Machine target;
  target.Ok(PutCmd("stale", "gone"));  // replaced by the snapshot
  ASSERT_TRUE(target.m->CheckSnapshot(LogIndex(11), dump).ok());
  ASSERT_TRUE(target.m->Restore(LogIndex(11), dump).ok());
  EXPECT_EQ(target.listener.restored, 1);
  EXPECT_TRUE(Capture(target) == Capture(source));
  EXPECT_EQ(target.m->applied(), LogIndex(11));
  EXPECT_EQ(target.Keys(), source.Keys());
  EXPECT_EQ(target.revision(), source.revision());
  EXPECT_EQ(target.m->store().compacted(), 4);
  EXPECT_EQ(target.m->leases().clock_ms(), 1500);
  ASSERT_EQ(target.m->leases().size(), 2u);
  EXPECT_THAT(target.m->leases().Find(5)->keys, ElementsAre("a", "b"));
  EXPECT_THAT(target.m->leases().Find(6)->keys, ElementsAre("c"));
  EXPECT_EQ(target.m->leases().Find(6)->expiry_ms, 40000);
  EXPECT_EQ(target.m->leases().Find(6)->ttl_seconds, 30);
  target.m->CheckInvariants();

  // History: reads at old revisions agree, and below the compaction both refuse.
  for (int64_t rev = 3; rev <= source.revision(); ++rev) {
    RangeRequest r;
    r.set_key(kNul);
    r.set_range_end(kNul);
    r.set_revision(rev);
    RangeResponse a, b;
    const absl::Status sa = source.m->applier().Range(r, &a);
    const absl::Status sb = target.m->applier().Range(r, &b);
    EXPECT_EQ(sa, sb) << "revision " << rev;
    EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString()) << "revision " << rev;
  }

  // The dedup window came along: a duplicate is dropped on the restorer too.
  target.next = LogIndex(12);
  source.next = LogIndex(12);
  EXPECT_TRUE(absl::IsDeadlineExceeded(target.Apply(PutCmd("d", "2"), {.request_id = 1005}).status));
  EXPECT_TRUE(absl::IsDeadlineExceeded(source.Apply(PutCmd("d", "2"), {.request_id = 1005}).status));

  // A restart of the restorer keeps all of it.
  target.Reopen();
  EXPECT_TRUE(Capture(target) == Capture(source));

  // And both go on alike: the lease clock, the revocation of lease 5 and its keys.
  target.Ok(CheckpointCmd(Checkpoint(1, 10000)));
  source.Ok(CheckpointCmd(Checkpoint(1, 10000)));
  EXPECT_EQ(target.Keys(), (std::map<std::string, std::string>{{"c", "1"}, {"d", "1"}}));
  EXPECT_TRUE(Capture(target) == Capture(source));
}

// The history keeps the puts of a revoked lease's keys (until a compaction drops them):
// loading that history must not take them for keys bound to a lease that does not exist.
TEST(KvStateMachineOpen, ARestartAfterALeaseWithKeysWasRevokedLoads) {
  Machine x;
  x.Ok(GrantCmd(5, 10));
  x.Ok(PutCmd("a", "1", 5));
  x.Ok(PutCmd("b", "1"));
  x.Ok(RevokeCmd(5));
  ASSERT_EQ(x.Keys(), (std::map<std::string, std::string>{{"b", "1"}}));
  const State before = Capture(x);
  x.Reopen();  // expects Open() OK
  EXPECT_TRUE(x.open_status.ok()) << x.open_status;
  EXPECT_TRUE(Capture(x) == before);
  EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"b", "1"}}));
}

TEST(KvStateMachineOpen, ARestartAfterAKeyMovedOffARevokedLeaseLoads) {
  Machine x;
  x.Ok(GrantCmd(5, 10));
  x.Ok(PutCmd("a", "1", 5));
  x.Ok(PutCmd("a", "2"));  // no longer bound to 5
  x.Ok(RevokeCmd(5));
  x.Reopen();
  EXPECT_TRUE(x.open_status.ok()) << x.open_status;
  EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"a", "2"}}));
}

TEST(KvStateMachineSnapshot, ADumpTakenAfterALeaseExpiredWithItsKeysIsAccepted) {
  Machine source;
  source.Ok(GrantCmd(5, 10));
  source.Ok(PutCmd("a", "1", 5));
  source.Ok(CheckpointCmd(Checkpoint(1, 10000)));  // lease 5 expires, "a" is deleted
  ASSERT_THAT(source.Keys(), IsEmpty());
  const std::string dump = source.m->ExportSnapshot();
  Machine target;
  const absl::Status checked = target.m->CheckSnapshot(LogIndex(3), dump);
  EXPECT_TRUE(checked.ok()) << checked;
  if (checked.ok()) {
    ASSERT_TRUE(target.m->Restore(LogIndex(3), dump).ok());
    EXPECT_TRUE(Capture(target) == Capture(source));
  }
}

TEST(KvStateMachineSnapshot, ADumpNewerThanTheRaftSnapshotIsRestoredAtItsOwnIndex) {
  Machine source;
  BuildRichState(source);
  const std::string dump = source.m->ExportSnapshot();
  Machine target;
  ASSERT_TRUE(target.m->CheckSnapshot(LogIndex(5), dump).ok());
  ASSERT_TRUE(target.m->Restore(LogIndex(5), dump).ok());
  EXPECT_EQ(target.m->applied(), LogIndex(11));  // the node then skips 6..11
}

TEST(KvStateMachineSnapshot, TheDumpIsExactlyTheDocumentedFormat) {
  Machine x(KvConfig{.dedup_window_entries = 10});
  x.Ok(GrantCmd(7, 10));                          // 1
  x.Ok(PutCmd("a", "1", 7));                      // 2: revision 2
  x.Ok(PutCmd("b", "1"), {.request_id = 99});     // 3: revision 3
  x.Ok(DeleteCmd("b"));                           // 4: revision 4, a tombstone
  x.Ok(CheckpointCmd(Checkpoint(1, 250)));        // 5
  DumpSpec want;
  want.applied = 5;
  want.revisions = {{kv::Revision{2, 0}, x.backend.revisions().at(kv::Revision{2, 0})},
                    {kv::Revision{3, 0}, x.backend.revisions().at(kv::Revision{3, 0})},
                    {kv::Revision{4, 0}, x.backend.revisions().at(kv::Revision{4, 0})}};
  want.leases = {{7, LeaseRecordBytes(7, 10, 10000, /*granted_index=*/1)}};
  want.requests = {{99, 3}};
  want.compacted = -1;
  want.lease_clock_ms = 250;
  EXPECT_EQ(x.m->ExportSnapshot(), want.Encode());
}

TEST(KvStateMachineSnapshot, CheckSnapshotAcceptsAHandBuiltDump) {
  Machine x;
  const std::string dump = SmallDump().Encode();
  ASSERT_TRUE(x.m->CheckSnapshot(LogIndex(4), dump).ok());
  ASSERT_TRUE(x.m->Restore(LogIndex(4), dump).ok());
  EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"a", "1"}}));
  EXPECT_THAT(x.m->leases().Find(7)->keys, ElementsAre("a"));
  EXPECT_EQ(x.m->applied(), LogIndex(4));
  EXPECT_EQ(x.revision(), 2);
}

// What a rejected snapshot must leave alone: a machine with some state.
struct Bystander {
  Bystander() {
    x.Ok(GrantCmd(3, 10));
    x.Ok(PutCmd("mine", "1", 3), {.request_id = 5});
    before = Capture(x);
  }
  void ExpectUnchanged() {
    EXPECT_TRUE(Capture(x) == before);
    EXPECT_EQ(x.Keys(), (std::map<std::string, std::string>{{"mine", "1"}}));
    EXPECT_EQ(x.listener.restored, 0);
    EXPECT_TRUE(x.m->health().ok());
  }
  Machine x;
  State before;
};

TEST(KvStateMachineSnapshot, CheckSnapshotRejectsABadMagic) {
  Bystander b;
  const std::string dump = SmallDump().Encode();
  for (const std::string& bad : {std::string("KKV2") + dump.substr(4),
                                 std::string("kkv1") + dump.substr(4), std::string(),
                                 std::string("KKV")}) {
    EXPECT_TRUE(absl::IsDataLoss(b.x.m->CheckSnapshot(LogIndex(1), bad))) << absl::CEscape(bad);
    EXPECT_TRUE(absl::IsDataLoss(b.x.m->Restore(LogIndex(1), bad))) << absl::CEscape(bad);
  }
  // A marker is this node's own snapshot, never one a peer can send.
  EXPECT_TRUE(absl::IsDataLoss(b.x.m->CheckSnapshot(LogIndex(1), b.x.m->TakeSnapshot())));
  b.ExpectUnchanged();
}

TEST(KvStateMachineSnapshot, CheckSnapshotRejectsEveryTruncationOfAValidDump) {
  Bystander b;
  const std::string dump = SmallDump().Encode();
  ASSERT_TRUE(b.x.m->CheckSnapshot(LogIndex(4), dump).ok());
  for (size_t n = 0; n < dump.size(); ++n) {
    const std::string prefix = dump.substr(0, n);
    EXPECT_TRUE(absl::IsDataLoss(b.x.m->CheckSnapshot(LogIndex(0), prefix))) << "prefix " << n;
    EXPECT_TRUE(absl::IsDataLoss(b.x.m->Restore(LogIndex(0), prefix))) << "prefix " << n;
  }
  b.ExpectUnchanged();
}

TEST(KvStateMachineSnapshot, CheckSnapshotRejectsTrailingBytes) {
  Bystander b;
  const std::string dump = SmallDump().Encode();
  for (std::string extra : {std::string(1, '\0'), std::string("x"), std::string(16, '\0')}) {
    EXPECT_TRUE(absl::IsDataLoss(b.x.m->CheckSnapshot(LogIndex(4), dump + extra)));
    EXPECT_TRUE(absl::IsDataLoss(b.x.m->Restore(LogIndex(4), dump + extra)));
  }
  b.ExpectUnchanged();
}

// The leader's machine may have applied its last command before the Raft snapshot's
// index (the entries after it were no-ops or alarms): such a dump is whole.
TEST(KvStateMachineSnapshot, ADumpBehindItsRaftSnapshotIsWholeWhenTheEntriesBetweenCarriedNoCommand) {
  Bystander b;
  const std::string dump = SmallDump().Encode();  // applied 4
  EXPECT_TRUE(b.x.m->CheckSnapshot(LogIndex(4), dump).ok());
  EXPECT_TRUE(b.x.m->CheckSnapshot(LogIndex(5), dump).ok());
}

TEST(KvStateMachineSnapshot, CheckSnapshotRejectsInconsistentRecords) {
  std::vector<std::pair<std::string, DumpSpec>> cases;
  {
    DumpSpec d = SmallDump();  // a KeyValue whose mod_revision is not its revision
    d.revisions[0].second = KeyValueBytes("a", "1", 2, 3, 1, 7);
    cases.emplace_back("mod_revision != revision", d);
  }
  {
    DumpSpec d = SmallDump();  // a record that is not a KeyValue
    d.revisions[0].second = "\xff\xff\xff";
    cases.emplace_back("record does not parse", d);
  }
  {
    DumpSpec d = SmallDump();  // a key bound to a lease the dump does not have
    d.leases.clear();
    cases.emplace_back("key bound to a missing lease", d);
  }
  {
    DumpSpec d = SmallDump();  // a lease record under another id
    d.leases[0].second = LeaseRecordBytes(8, 10, 10000);
    cases.emplace_back("lease record id mismatch", d);
  }
  {
    DumpSpec d = SmallDump();  // a request applied after the dump's applied index
    d.requests[0].second = 5;
    cases.emplace_back("request id beyond the applied index", d);
  }
  {
    DumpSpec d = SmallDump();  // revisions out of order
    d.revisions.push_back({kv::Revision{1, 0}, KeyValueBytes("b", "1", 1, 1, 1)});
    cases.emplace_back("revisions out of order", d);
  }
  {
    DumpSpec d = SmallDump();  // a tombstone of a key that is not live
    d.revisions.push_back({kv::Revision{3, 0}, KeyValueBytes("zz", "", 0, 3, 0)});
    cases.emplace_back("tombstone of a dead key", d);
  }
  for (const auto& [what, spec] : cases) {
    Bystander b;
    const std::string dump = spec.Encode();
    EXPECT_TRUE(absl::IsDataLoss(b.x.m->CheckSnapshot(LogIndex(4), dump))) << what;
    b.ExpectUnchanged();
  }
}

// StateMachine::Restore: "validate, never assert; on error nothing changes". Node checks
// a peer's snapshot before Raft adopts it, but the contract is Restore's own.
TEST(KvStateMachineSnapshot, RestoreOfAnInconsistentDumpFailsAndChangesNothing) {
  Bystander b;
  DumpSpec d = SmallDump();
  d.revisions[0].second = KeyValueBytes("a", "1", 2, 3, 1, 7);  // mod_revision 3 at revision 2
  const absl::Status st = b.x.m->Restore(LogIndex(4), d.Encode());
  EXPECT_FALSE(st.ok());
  b.ExpectUnchanged();
}

// ---- storage failures ---------------------------------------------------------------

TEST(KvStateMachineHealth, AFailedBackendWriteIsAStorageFailureThatSticks) {
  Machine x;
  x.Ok(PutCmd("k", "v"));
  x.listener = RecordingListener();
  x.backend.FailNextWrite();
  const Applied a = x.Apply(PutCmd("k", "w"));
  EXPECT_TRUE(kv::IsStorageFailure(a.status)) << a.status;
  EXPECT_FALSE(x.m->health().ok());
  EXPECT_TRUE(kv::IsStorageFailure(x.m->health())) << x.m->health();
  EXPECT_TRUE(x.listener.events.empty());
  // Every later command gets the first failure: the node must stop.
  const Applied b = x.Apply(PutCmd("other", "x"));
  EXPECT_EQ(b.status, x.m->health());
  EXPECT_FALSE(b.response.has_value());
  EXPECT_TRUE(x.listener.events.empty());
}

TEST(KvStateMachineHealth, AFailureToRecordTheAppliedIndexIsAStorageFailure) {
  Machine x;
  x.backend.FailNextWrite();
  // A malformed command writes nothing but the applied index: that write fails.
  const Applied a = x.Apply("\xff\xff");
  EXPECT_TRUE(kv::IsStorageFailure(a.status)) << a.status;
  EXPECT_TRUE(kv::IsStorageFailure(x.m->health()));
}

TEST(KvStateMachineHealth, AFailedLeaseWriteIsAStorageFailure) {
  Machine x;
  x.backend.FailNextWrite();
  const Applied a = x.Apply(GrantCmd(5, 10));
  EXPECT_TRUE(kv::IsStorageFailure(a.status)) << a.status;
  EXPECT_TRUE(kv::IsStorageFailure(x.m->health()));
}

}  // namespace
}  // namespace keel::server
