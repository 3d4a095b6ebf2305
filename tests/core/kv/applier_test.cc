#include "core/kv/applier.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <iterator>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/errors.h"
#include "tests/core/kv/memory_backend.h"
#include "tests/core/kv/kv_test_util.h"

// The Applier against etcd 3.4's semantics: etcdserver/apply.go (Range, Put, DeleteRange,
// Txn, compareToPath, applyCompare, checkRequestPut, checkRequestRange, Compaction),
// etcdserver/api/v3rpc/key.go (checkRangeRequest, checkPutRequest, checkTxnRequest,
// checkIntervals) and mvcc/kvstore_txn.go (rangeKeys, storeTxnWrite.DeleteRange).
// As etcd's, a new store is at revision 1: the first write of a test makes revision 2.

namespace keel::kv {
namespace {

using etcdserverpb::CompactionRequest;
using etcdserverpb::CompactionResponse;
using etcdserverpb::Compare;
using etcdserverpb::DeleteRangeRequest;
using etcdserverpb::DeleteRangeResponse;
using etcdserverpb::PutRequest;
using etcdserverpb::PutResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using etcdserverpb::RequestOp;
using etcdserverpb::ResponseOp;
using etcdserverpb::TxnRequest;
using etcdserverpb::TxnResponse;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

using test::kNul;

class FakeLeases : public LeaseLookup {
 public:
  bool Exists(int64_t lease) const override { return ids.contains(lease); }
  std::set<int64_t> ids;
};

// ---- requests ----

RangeRequest RangeReq(const std::string& key, const std::string& end = "") {
  RangeRequest r;
  r.set_key(key);
  r.set_range_end(end);
  return r;
}

RangeRequest Sorted(RangeRequest r, RangeRequest::SortTarget target,
                    RangeRequest::SortOrder order) {
  r.set_sort_target(target);
  r.set_sort_order(order);
  return r;
}

RangeRequest AtRevision(RangeRequest r, int64_t revision) {
  r.set_revision(revision);
  return r;
}

PutRequest PutReq(const std::string& key, const std::string& value, int64_t lease = 0) {
  PutRequest r;
  r.set_key(key);
  r.set_value(value);
  r.set_lease(lease);
  return r;
}

PutRequest IgnoringValue(PutRequest r) {
  r.set_ignore_value(true);
  return r;
}

PutRequest IgnoringLease(PutRequest r) {
  r.set_ignore_lease(true);
  return r;
}

DeleteRangeRequest DelReq(const std::string& key, const std::string& end = "") {
  DeleteRangeRequest r;
  r.set_key(key);
  r.set_range_end(end);
  return r;
}

RequestOp Op(const RangeRequest& r) {
  RequestOp op;
  *op.mutable_request_range() = r;
  return op;
}
RequestOp Op(const PutRequest& r) {
  RequestOp op;
  *op.mutable_request_put() = r;
  return op;
}
RequestOp Op(const DeleteRangeRequest& r) {
  RequestOp op;
  *op.mutable_request_delete_range() = r;
  return op;
}
RequestOp Op(const TxnRequest& r) {
  RequestOp op;
  *op.mutable_request_txn() = r;
  return op;
}

// A compare of `key`'s target with n (result =; Holds tries every result).
Compare Cmp(const std::string& key, Compare::CompareTarget target, int64_t n) {
  Compare c;
  c.set_key(key);
  c.set_target(target);
  switch (target) {
    case Compare::VERSION:
      c.set_version(n);
      break;
    case Compare::CREATE:
      c.set_create_revision(n);
      break;
    case Compare::MOD:
      c.set_mod_revision(n);
      break;
    case Compare::LEASE:
      c.set_lease(n);
      break;
    default:
      ADD_FAILURE() << "CmpValue compares values";
      break;
  }
  return c;
}

Compare CmpValue(const std::string& key, const std::string& value) {
  Compare c;
  c.set_key(key);
  c.set_target(Compare::VALUE);
  c.set_value(value);
  return c;
}

Compare Is(Compare c, Compare::CompareResult result) {
  c.set_result(result);
  return c;
}

Compare Over(Compare c, const std::string& range_end) {
  c.set_range_end(range_end);
  return c;
}

TxnRequest TxnReq(std::vector<Compare> compares, std::vector<RequestOp> then,
                  std::vector<RequestOp> otherwise = {}) {
  TxnRequest t;
  for (Compare& c : compares) *t.add_compare() = std::move(c);
  for (RequestOp& op : then) *t.add_success() = std::move(op);
  for (RequestOp& op : otherwise) *t.add_failure() = std::move(op);
  return t;
}

// n puts of distinct keys `prefix`0, `prefix`1, ...
std::vector<RequestOp> Puts(int n, const std::string& prefix) {
  std::vector<RequestOp> ops;
  for (int i = 0; i < n; ++i) ops.push_back(Op(PutReq(prefix + std::to_string(i), "v")));
  return ops;
}

// ---- responses ----

// "key=value c<create> m<mod> v<version>", then " l<lease>" if it has one.
std::string Str(const mvccpb::KeyValue& kv) {
  std::string s = kv.key() + "=" + kv.value() + " c" + std::to_string(kv.create_revision()) + " m" +
                  std::to_string(kv.mod_revision()) + " v" + std::to_string(kv.version());
  if (kv.lease() != 0) s += " l" + std::to_string(kv.lease());
  return s;
}

template <typename KeyValues>
std::vector<std::string> Strs(const KeyValues& kvs) {
  std::vector<std::string> out;
  for (const mvccpb::KeyValue& kv : kvs) out.push_back(Str(kv));
  return out;
}

std::vector<std::string> Keys(const RangeResponse& r) {
  std::vector<std::string> keys;
  for (const mvccpb::KeyValue& kv : r.kvs()) keys.push_back(kv.key());
  return keys;
}

// "PUT <kv>" or "DELETE <kv>".
std::vector<std::string> EventStrs(const std::vector<mvccpb::Event>& events) {
  std::vector<std::string> out;
  for (const mvccpb::Event& ev : events) {
    out.push_back((ev.type() == mvccpb::Event::PUT ? "PUT " : "DELETE ") + Str(ev.kv()));
  }
  return out;
}

class ApplierTest : public ::testing::Test {
 protected:
  // key=value (with lease) as a request of its own; returns its revision.
  int64_t Write(const std::string& key, const std::string& value, int64_t lease = 0) {
    PutResponse resp;
    std::vector<mvccpb::Event> ignored;
    absl::Status st = applier.Put(PutReq(key, value, lease), &resp, &ignored);
    EXPECT_TRUE(st.ok()) << st;
    return resp.header().revision();
  }
  void Erase(const std::string& key, const std::string& end = "") {
    DeleteRangeResponse resp;
    std::vector<mvccpb::Event> ignored;
    absl::Status st = applier.DeleteRange(DelReq(key, end), &resp, &ignored);
    EXPECT_TRUE(st.ok()) << st;
  }
  void CompactAt(int64_t revision) {
    CompactionRequest r;
    r.set_revision(revision);
    CompactionResponse resp;
    absl::Status st = applier.Compact(r, &resp);
    EXPECT_TRUE(st.ok()) << st;
  }
  RangeResponse Read(const RangeRequest& r) {
    RangeResponse resp;
    absl::Status st = applier.Range(r, &resp);
    EXPECT_TRUE(st.ok()) << st;
    return resp;
  }
  // The one kv of `key` (as Str), or "missing".
  std::string KvOf(const std::string& key) {
    RangeResponse resp = Read(RangeReq(key));
    return resp.kvs_size() == 1 ? Str(resp.kvs(0)) : "missing";
  }
  TxnResponse RunTxn(const TxnRequest& r) {
    TxnResponse resp;
    absl::Status st = applier.Txn(r, &resp, &events);
    EXPECT_TRUE(st.ok()) << st;
    return resp;
  }
  absl::Status TryTxn(const TxnRequest& r) {
    TxnResponse resp;
    return applier.Txn(r, &resp, &events);
  }
  absl::Status TryPut(const PutRequest& r) {
    PutResponse resp;
    return applier.Put(r, &resp, &events);
  }
  // The results (= > < !=) for which `c` holds as the compare of a txn.
  std::string Holds(Compare c) {
    const std::pair<Compare::CompareResult, const char*> results[] = {{Compare::EQUAL, "="},
                                                                      {Compare::GREATER, ">"},
                                                                      {Compare::LESS, "<"},
                                                                      {Compare::NOT_EQUAL, "!="}};
    std::string out;
    for (const auto& [result, name] : results) {
      if (!RunTxn(TxnReq({Is(c, result)}, {})).succeeded()) continue;
      if (!out.empty()) out += ' ';
      out += name;
    }
    return out;
  }
  // The store as a string: revision, compaction point, records, and every live key.
  std::string State() const {
    std::string s = "revision " + std::to_string(store.revision()) + ", compacted " +
                    std::to_string(store.compacted()) + ", records " +
                    std::to_string(backend.revision_count()) + "\n";
    absl::StatusOr<RangeResult> all = store.Range(KeyRange{kNul, kNul}, {});
    if (!all.ok()) return s + all.status().ToString();
    for (const mvccpb::KeyValue& kv : all->kvs) s += Str(kv) + "\n";
    return s;
  }
  // A refused request: it answered `want`, and nothing changed since `before` (State()).
  void ExpectRefused(const absl::Status& st, const absl::Status& want, const std::string& before) {
    EXPECT_EQ(st, want);
    EXPECT_EQ(State(), before);
    EXPECT_THAT(EventStrs(events), IsEmpty());
  }

  MemoryBackend backend;
  Store store{&backend, nullptr};
  FakeLeases leases;
  Applier applier{&store, &leases, ApplierLimits{}};
  std::vector<mvccpb::Event> events;  // what the requests under test made
};

// ================================ Range ================================

class ApplierRange : public ApplierTest {
 protected:
  // a: c2 m6 v3 "c"; b: c5 m5 v1 "b"; c: c3 m7 v2 "a": each target orders them differently.
  void WriteSortData() {
    Write("a", "x");  // 2
    Write("c", "x");  // 3
    Write("a", "x");  // 4
    Write("b", "b");  // 5
    Write("a", "c");  // 6
    Write("c", "a");  // 7
  }
};

struct SortCase {
  RangeRequest::SortTarget target;
  std::vector<std::string> ascending;  // of WriteSortData's keys
};
const SortCase kSortCases[] = {
    {RangeRequest::KEY, {"a", "b", "c"}},    {RangeRequest::VERSION, {"b", "c", "a"}},
    {RangeRequest::CREATE, {"a", "c", "b"}}, {RangeRequest::MOD, {"b", "a", "c"}},
    {RangeRequest::VALUE, {"c", "b", "a"}},
};

TEST_F(ApplierRange, ReadsOneKeyWithItsRevisionsAndVersion) {
  Write("a", "1");  // 2
  Write("a", "2");  // 3
  Write("b", "x");  // 4
  RangeResponse resp = Read(RangeReq("a"));
  EXPECT_THAT(Strs(resp.kvs()), ElementsAre("a=2 c2 m3 v2"));
  EXPECT_EQ(resp.count(), 1);
  EXPECT_FALSE(resp.more());
  EXPECT_EQ(resp.header().revision(), 4);
}

TEST_F(ApplierRange, AMissingKeyHasNoKvsAndCountZero) {
  Write("a", "1");  // 2
  RangeResponse resp = Read(RangeReq("b"));
  EXPECT_THAT(Strs(resp.kvs()), IsEmpty());
  EXPECT_EQ(resp.count(), 0);
  EXPECT_FALSE(resp.more());
  EXPECT_EQ(resp.header().revision(), 2);
}

TEST_F(ApplierRange, HeaderRevisionIsTheStoreRevision) {
  EXPECT_EQ(Read(RangeReq("a")).header().revision(), store.revision());
  EXPECT_EQ(store.revision(), 1);
  Write("a", "1");  // 2
  Write("b", "1");  // 3
  Erase("b");       // 4
  EXPECT_EQ(store.revision(), 4);
  EXPECT_EQ(Read(RangeReq("a")).header().revision(), 4);
  EXPECT_EQ(Read(RangeReq("zzz")).header().revision(), 4);
}

TEST_F(ApplierRange, APrefixIsTheKeyToTheKeyPlusOne) {
  for (const char* key : {"fo", "foo", "foo/a", "foo/b", "fop", "fopa"}) Write(key, "v");
  RangeResponse resp = Read(RangeReq("foo", "fop"));
  EXPECT_THAT(Keys(resp), ElementsAre("foo", "foo/a", "foo/b"));
  EXPECT_EQ(resp.count(), 3);
}

TEST_F(ApplierRange, RangeEndNulReadsEveryKeyFromTheKeyOn) {
  for (const char* key : {"a", "b", "c", "d"}) Write(key, "v");
  EXPECT_THAT(Keys(Read(RangeReq("b", kNul))), ElementsAre("b", "c", "d"));
  EXPECT_THAT(Keys(Read(RangeReq(kNul, kNul))), ElementsAre("a", "b", "c", "d"));
  EXPECT_EQ(Read(RangeReq("b", kNul)).count(), 3);
}

TEST_F(ApplierRange, ARangeEndAtOrBeforeTheKeyIsEmpty) {
  for (const char* key : {"a", "b", "c"}) Write(key, "v");
  EXPECT_THAT(Keys(Read(RangeReq("c", "a"))), IsEmpty());
  EXPECT_THAT(Keys(Read(RangeReq("b", "b"))), IsEmpty());
  EXPECT_EQ(Read(RangeReq("c", "a")).count(), 0);
}

TEST_F(ApplierRange, LimitTruncatesSetsMoreAndCountIsTheTotalBeforeTheLimit) {
  for (const char* key : {"k1", "k2", "k3", "k4", "k5"}) Write(key, "v");
  RangeRequest r = RangeReq("k", "l");
  r.set_limit(2);
  RangeResponse resp = Read(r);
  EXPECT_THAT(Keys(resp), ElementsAre("k1", "k2"));
  EXPECT_TRUE(resp.more());
  EXPECT_EQ(resp.count(), 5);
  for (int64_t limit : {5, 6, 0, -1}) {
    SCOPED_TRACE(limit);
    r.set_limit(limit);
    resp = Read(r);
    EXPECT_EQ(resp.kvs_size(), 5);
    EXPECT_FALSE(resp.more());
    EXPECT_EQ(resp.count(), 5);
  }
  r.set_limit(4);
  EXPECT_TRUE(Read(r).more());
}

TEST_F(ApplierRange, RevisionReadsTheKeyspaceAsOfThatRevision) {
  Write("a", "1");  // 2
  Write("b", "1");  // 3
  Write("a", "2");  // 4
  Erase("b");       // 5
  RangeResponse at3 = Read(AtRevision(RangeReq("a", kNul), 3));
  EXPECT_THAT(Strs(at3.kvs()), ElementsAre("a=1 c2 m2 v1", "b=1 c3 m3 v1"));
  EXPECT_EQ(at3.count(), 2);
  EXPECT_EQ(at3.header().revision(), 5) << "the header is the current revision";
  EXPECT_THAT(Strs(Read(AtRevision(RangeReq("a", kNul), 4)).kvs()),
              ElementsAre("a=2 c2 m4 v2", "b=1 c3 m3 v1"));
  EXPECT_THAT(Strs(Read(AtRevision(RangeReq("a", kNul), 5)).kvs()), ElementsAre("a=2 c2 m4 v2"));
  EXPECT_THAT(Keys(Read(AtRevision(RangeReq("b"), 2))), IsEmpty());
  EXPECT_THAT(Keys(Read(AtRevision(RangeReq("a", kNul), 1))), IsEmpty()) << "a new store's";
  // 0 or less: the current revision (rangeKeys: rev <= 0 -> curRev).
  EXPECT_THAT(Keys(Read(AtRevision(RangeReq("a", kNul), 0))), ElementsAre("a"));
  EXPECT_THAT(Keys(Read(AtRevision(RangeReq("a", kNul), -1))), ElementsAre("a"));
}

TEST_F(ApplierRange, ARevisionInTheFutureIsErrFutureRev) {
  Write("a", "1");  // 2
  const std::string before = State();
  RangeResponse resp;
  ExpectRefused(applier.Range(AtRevision(RangeReq("a"), 3), &resp), ErrFutureRev(), before);
  EXPECT_TRUE(applier.Range(AtRevision(RangeReq("a"), 2), &resp).ok());
}

TEST_F(ApplierRange, ARevisionBelowTheCompactionIsErrCompacted) {
  Write("a", "1");  // 2
  Write("a", "2");  // 3
  Write("a", "3");  // 4
  CompactAt(3);
  const std::string before = State();
  RangeResponse resp;
  ExpectRefused(applier.Range(AtRevision(RangeReq("a"), 2), &resp), ErrCompacted(), before);
  // The compacted revision itself is still readable (rangeKeys: rev < compactMainRev).
  EXPECT_THAT(Strs(Read(AtRevision(RangeReq("a"), 3)).kvs()), ElementsAre("a=2 c2 m3 v2"));
}

TEST_F(ApplierRange, AscendSortsByEachTarget) {
  WriteSortData();
  for (const SortCase& c : kSortCases) {
    SCOPED_TRACE(RangeRequest::SortTarget_Name(c.target));
    RangeRequest r = Sorted(RangeReq("a", kNul), c.target, RangeRequest::ASCEND);
    EXPECT_EQ(Keys(Read(r)), c.ascending);
  }
}

TEST_F(ApplierRange, DescendSortsByEachTargetInReverse) {
  WriteSortData();
  for (const SortCase& c : kSortCases) {
    SCOPED_TRACE(RangeRequest::SortTarget_Name(c.target));
    RangeRequest r = Sorted(RangeReq("a", kNul), c.target, RangeRequest::DESCEND);
    EXPECT_EQ(Keys(Read(r)), std::vector<std::string>(c.ascending.rbegin(), c.ascending.rend()));
  }
}

TEST_F(ApplierRange, OrderNoneKeepsKeyOrderForKeyAndSortsAscendingForAnotherTarget) {
  WriteSortData();
  for (const SortCase& c : kSortCases) {
    SCOPED_TRACE(RangeRequest::SortTarget_Name(c.target));
    RangeRequest r = Sorted(RangeReq("a", kNul), c.target, RangeRequest::NONE);
    EXPECT_EQ(Keys(Read(r)), c.ascending);
  }
}

TEST_F(ApplierRange, ValuesSortAsUnsignedBytes) {
  Write("a", "\x80");
  Write("b", "a");
  Write("c", "");
  RangeRequest r = Sorted(RangeReq("a", kNul), RangeRequest::VALUE, RangeRequest::ASCEND);
  EXPECT_THAT(Keys(Read(r)), ElementsAre("c", "b", "a"));
}

TEST_F(ApplierRange, ASortWithALimitSortsEveryKeyThenTruncatesAndSetsMore) {
  WriteSortData();
  RangeRequest r = Sorted(RangeReq("a", kNul), RangeRequest::MOD, RangeRequest::DESCEND);
  r.set_limit(2);
  RangeResponse resp = Read(r);
  EXPECT_THAT(Keys(resp), ElementsAre("c", "a"));
  EXPECT_TRUE(resp.more());
  EXPECT_EQ(resp.count(), 3);
  r = Sorted(RangeReq("a", kNul), RangeRequest::CREATE, RangeRequest::ASCEND);
  r.set_limit(1);
  resp = Read(r);
  EXPECT_THAT(Keys(resp), ElementsAre("a"));
  EXPECT_TRUE(resp.more());
  r.set_limit(3);
  EXPECT_FALSE(Read(r).more());
  // The last key: KEY descending, limit 1.
  r = Sorted(RangeReq("a", kNul), RangeRequest::KEY, RangeRequest::DESCEND);
  r.set_limit(1);
  resp = Read(r);
  EXPECT_THAT(Keys(resp), ElementsAre("c"));
  EXPECT_TRUE(resp.more());
}

// etcd fetches everything only when sort_order is not NONE: a non-KEY target with order
// NONE and a limit sorts just the first limit+1 keys (in key order), then truncates.
TEST_F(ApplierRange, ANonKeyTargetWithOrderNoneAndALimitSortsOnlyTheFirstLimitPlusOneKeys) {
  WriteSortData();
  RangeRequest r = Sorted(RangeReq("a", kNul), RangeRequest::VALUE, RangeRequest::NONE);
  r.set_limit(1);
  RangeResponse resp = Read(r);
  EXPECT_THAT(Keys(resp), ElementsAre("b")) << "a (\"c\") and b (\"b\") fetched, sorted";
  EXPECT_TRUE(resp.more());
  EXPECT_EQ(resp.count(), 3);
}

TEST_F(ApplierRange, KeysOnlyClearsTheValues) {
  WriteSortData();
  RangeRequest r = RangeReq("a", kNul);
  r.set_keys_only(true);
  RangeResponse resp = Read(r);
  EXPECT_THAT(Strs(resp.kvs()), ElementsAre("a= c2 m6 v3", "b= c5 m5 v1", "c= c3 m7 v2"));
  EXPECT_EQ(resp.count(), 3);
}

TEST_F(ApplierRange, CountOnlyReturnsTheCountWithoutKvs) {
  WriteSortData();
  RangeRequest r = RangeReq("a", kNul);
  r.set_count_only(true);
  RangeResponse resp = Read(r);
  EXPECT_THAT(Strs(resp.kvs()), IsEmpty());
  EXPECT_EQ(resp.count(), 3);
  EXPECT_FALSE(resp.more());
  EXPECT_EQ(resp.header().revision(), 7);
  r.set_limit(1);
  resp = Read(r);
  EXPECT_THAT(Strs(resp.kvs()), IsEmpty());
  EXPECT_EQ(resp.count(), 3);
  EXPECT_FALSE(resp.more());
  EXPECT_EQ(Read(AtRevision(r, 3)).count(), 2);
}

TEST_F(ApplierRange, ModRevisionFiltersKeepKeysModifiedInTheBoundsAndCountIsUnfiltered) {
  WriteSortData();  // mod: a 6, b 5, c 7
  RangeRequest r = RangeReq("a", kNul);
  r.set_min_mod_revision(6);
  RangeResponse resp = Read(r);
  EXPECT_THAT(Keys(resp), ElementsAre("a", "c"));
  EXPECT_EQ(resp.count(), 3) << "etcd's count is taken before the filters";
  r = RangeReq("a", kNul);
  r.set_max_mod_revision(6);
  EXPECT_THAT(Keys(Read(r)), ElementsAre("a", "b"));
  r.set_min_mod_revision(6);
  EXPECT_THAT(Keys(Read(r)), ElementsAre("a"));
  r.set_min_mod_revision(8);
  EXPECT_THAT(Keys(Read(r)), IsEmpty());
}

TEST_F(ApplierRange, CreateRevisionFiltersKeepKeysCreatedInTheBoundsAndCountIsUnfiltered) {
  WriteSortData();  // create: a 2, b 5, c 3
  RangeRequest r = RangeReq("a", kNul);
  r.set_min_create_revision(3);
  RangeResponse resp = Read(r);
  EXPECT_THAT(Keys(resp), ElementsAre("b", "c"));
  EXPECT_EQ(resp.count(), 3);
  r = RangeReq("a", kNul);
  r.set_max_create_revision(3);
  EXPECT_THAT(Keys(Read(r)), ElementsAre("a", "c"));
  r.set_min_create_revision(3);
  EXPECT_THAT(Keys(Read(r)), ElementsAre("c"));
}

TEST_F(ApplierRange, FiltersApplyBeforeTheLimit) {
  WriteSortData();  // mod: a 6, b 5, c 7
  RangeRequest r = RangeReq("a", kNul);
  r.set_min_mod_revision(6);
  r.set_limit(1);
  RangeResponse resp = Read(r);
  EXPECT_THAT(Keys(resp), ElementsAre("a"));
  EXPECT_TRUE(resp.more());
  EXPECT_EQ(resp.count(), 3);
  r.set_limit(2);
  resp = Read(r);
  EXPECT_THAT(Keys(resp), ElementsAre("a", "c"));
  EXPECT_FALSE(resp.more()) << "two keys pass the filter";
}

TEST_F(ApplierRange, AnEmptyKeyIsErrEmptyKey) {
  Write("a", "1");
  const std::string before = State();
  RangeResponse resp;
  ExpectRefused(applier.Range(RangeReq("", kNul), &resp), ErrEmptyKey(), before);
  EXPECT_EQ(ValidateRange(RangeReq("")), ErrEmptyKey());
}

TEST_F(ApplierRange, InvalidSortOrderOrTargetIsInvalidArgument) {
  WriteSortData();
  const std::string before = State();
  RangeRequest bad_order = RangeReq("a", kNul);
  bad_order.set_sort_order(static_cast<RangeRequest::SortOrder>(3));
  RangeRequest bad_target = RangeReq("a", kNul);
  bad_target.set_sort_target(static_cast<RangeRequest::SortTarget>(5));
  for (const RangeRequest& r : {bad_order, bad_target}) {
    RangeResponse resp;
    absl::Status st = applier.Range(r, &resp);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_EQ(ValidateRange(r).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Strs(resp.kvs()), IsEmpty());
  }
  EXPECT_EQ(State(), before);
}

// ================================ Put ================================

class ApplierPut : public ApplierTest {};

TEST_F(ApplierPut, ReturnsItsRevisionAndAppendsItsEvent) {
  Write("x", "0");  // 2
  events.emplace_back();  // an earlier event: Put appends after it
  PutResponse resp;
  ASSERT_TRUE(applier.Put(PutReq("a", "1"), &resp, &events).ok());
  EXPECT_EQ(resp.header().revision(), 3);
  EXPECT_FALSE(resp.has_prev_kv());
  EXPECT_EQ(store.revision(), 3);
  EXPECT_EQ(KvOf("a"), "a=1 c3 m3 v1");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_THAT(EventStrs({events[1]}), ElementsAre("PUT a=1 c3 m3 v1"));
}

TEST_F(ApplierPut, OverwritingKeepsTheCreateRevisionAndBumpsTheVersion) {
  Write("a", "1");  // 2
  Write("b", "1");  // 3
  PutResponse resp;
  ASSERT_TRUE(applier.Put(PutReq("a", "2"), &resp, &events).ok());
  EXPECT_EQ(resp.header().revision(), 4);
  EXPECT_EQ(KvOf("a"), "a=2 c2 m4 v2");
  EXPECT_THAT(EventStrs(events), ElementsAre("PUT a=2 c2 m4 v2"));
  Write("a", "");
  EXPECT_EQ(KvOf("a"), "a= c2 m5 v3") << "an empty value is a value";
}

TEST_F(ApplierPut, PrevKvReturnsTheKeyAsItWasBefore) {
  Write("a", "1");  // 2
  PutRequest r = PutReq("a", "2");
  r.set_prev_kv(true);
  PutResponse resp;
  ASSERT_TRUE(applier.Put(r, &resp, &events).ok());
  ASSERT_TRUE(resp.has_prev_kv());
  EXPECT_EQ(Str(resp.prev_kv()), "a=1 c2 m2 v1");
  r = PutReq("new", "1");
  r.set_prev_kv(true);
  PutResponse fresh;
  ASSERT_TRUE(applier.Put(r, &fresh, &events).ok());
  EXPECT_FALSE(fresh.has_prev_kv()) << "no previous kv for a new key";
  PutResponse without;
  ASSERT_TRUE(applier.Put(PutReq("a", "3"), &without, &events).ok());
  EXPECT_FALSE(without.has_prev_kv());
}

TEST_F(ApplierPut, ALeaseIsKeptOnTheKeyAndAPutWithoutOneClearsIt) {
  leases.ids = {7};
  PutResponse resp;
  ASSERT_TRUE(applier.Put(PutReq("a", "1", 7), &resp, &events).ok());
  EXPECT_EQ(KvOf("a"), "a=1 c2 m2 v1 l7");
  EXPECT_THAT(EventStrs(events), ElementsAre("PUT a=1 c2 m2 v1 l7"));
  Write("a", "2");
  EXPECT_EQ(KvOf("a"), "a=2 c2 m3 v2");
}

TEST_F(ApplierPut, AnUnknownLeaseIsErrLeaseNotFoundAndChangesNothing) {
  leases.ids = {7};
  Write("a", "1");  // 2
  const std::string before = State();
  ExpectRefused(TryPut(PutReq("a", "2", 8)), ErrLeaseNotFound(), before);
  ExpectRefused(TryPut(PutReq("b", "2", 8)), ErrLeaseNotFound(), before);
  EXPECT_EQ(store.revision(), 2);
}

TEST_F(ApplierPut, WithoutALeaseLookupEveryLeaseIsUnknown) {
  Applier no_leases(&store, nullptr, ApplierLimits{});
  const std::string before = State();
  PutResponse resp;
  ExpectRefused(no_leases.Put(PutReq("a", "1", 7), &resp, &events), ErrLeaseNotFound(), before);
  EXPECT_TRUE(no_leases.Put(PutReq("a", "1"), &resp, &events).ok());
}

TEST_F(ApplierPut, IgnoreValueKeepsTheValueAndTakesTheNewLease) {
  leases.ids = {7};
  Write("a", "1");  // 2
  PutRequest r = IgnoringValue(PutReq("a", "", 7));
  r.set_prev_kv(true);
  PutResponse resp;
  ASSERT_TRUE(applier.Put(r, &resp, &events).ok());
  EXPECT_EQ(resp.header().revision(), 3);
  EXPECT_EQ(Str(resp.prev_kv()), "a=1 c2 m2 v1");
  EXPECT_EQ(KvOf("a"), "a=1 c2 m3 v2 l7");
  EXPECT_THAT(EventStrs(events), ElementsAre("PUT a=1 c2 m3 v2 l7"));
}

TEST_F(ApplierPut, IgnoreValueWithAValueIsErrValueProvided) {
  Write("a", "1");
  const std::string before = State();
  ExpectRefused(TryPut(IgnoringValue(PutReq("a", "2"))), ErrValueProvided(), before);
  EXPECT_EQ(ValidatePut(IgnoringValue(PutReq("a", "2"))), ErrValueProvided());
}

TEST_F(ApplierPut, IgnoreValueOnAMissingKeyIsErrKeyNotFound) {
  Write("a", "1");
  Write("gone", "1");
  Erase("gone");
  const std::string before = State();
  ExpectRefused(TryPut(IgnoringValue(PutReq("b", ""))), ErrKeyNotFound(), before);
  ExpectRefused(TryPut(IgnoringValue(PutReq("gone", ""))), ErrKeyNotFound(), before);
}

TEST_F(ApplierPut, IgnoreLeaseKeepsTheLeaseAndTakesTheNewValue) {
  leases.ids = {7};
  Write("a", "1", 7);  // 2
  PutResponse resp;
  ASSERT_TRUE(applier.Put(IgnoringLease(PutReq("a", "2")), &resp, &events).ok());
  EXPECT_EQ(resp.header().revision(), 3);
  EXPECT_EQ(KvOf("a"), "a=2 c2 m3 v2 l7");
  // Both: a new version of the same value and lease.
  PutRequest both = IgnoringLease(IgnoringValue(PutReq("a", "")));
  ASSERT_TRUE(applier.Put(both, &resp, &events).ok());
  EXPECT_EQ(KvOf("a"), "a=2 c2 m4 v3 l7");
}

TEST_F(ApplierPut, IgnoreLeaseWithALeaseIsErrLeaseProvided) {
  leases.ids = {7};
  Write("a", "1", 7);
  const std::string before = State();
  ExpectRefused(TryPut(IgnoringLease(PutReq("a", "2", 7))), ErrLeaseProvided(), before);
  EXPECT_EQ(ValidatePut(IgnoringLease(PutReq("a", "2", 7))), ErrLeaseProvided());
}

TEST_F(ApplierPut, IgnoreLeaseOnAMissingKeyIsErrKeyNotFound) {
  Write("a", "1");
  const std::string before = State();
  ExpectRefused(TryPut(IgnoringLease(PutReq("b", "2"))), ErrKeyNotFound(), before);
}

TEST_F(ApplierPut, AnEmptyKeyIsErrEmptyKey) {
  Write("a", "1");
  const std::string before = State();
  ExpectRefused(TryPut(PutReq("", "1")), ErrEmptyKey(), before);
  EXPECT_EQ(ValidatePut(PutReq("", "1")), ErrEmptyKey());
}

// etcd's Put (apply.go, txn == nil) looks the lease up before it opens the write txn,
// so before the ignore_value/ignore_lease check of the previous kv.
TEST_F(ApplierPut, AnUnknownLeaseIsReportedBeforeAMissingKeyOfIgnoreValue) {
  Write("a", "1");
  const std::string before = State();
  ExpectRefused(TryPut(IgnoringValue(PutReq("missing", "", 99))), ErrLeaseNotFound(), before);
}

// ============================= DeleteRange =============================

class ApplierDeleteRange : public ApplierTest {};

TEST_F(ApplierDeleteRange, DeletesOneKeyAtANewRevision) {
  Write("a", "1");  // 2
  Write("b", "2");  // 3
  Write("c", "3");  // 4
  DeleteRangeResponse resp;
  ASSERT_TRUE(applier.DeleteRange(DelReq("b"), &resp, &events).ok());
  EXPECT_EQ(resp.deleted(), 1);
  EXPECT_EQ(resp.header().revision(), 5);
  EXPECT_THAT(Strs(resp.prev_kvs()), IsEmpty()) << "no prev_kv asked";
  EXPECT_EQ(store.revision(), 5);
  EXPECT_THAT(Keys(Read(RangeReq("a", kNul))), ElementsAre("a", "c"));
  EXPECT_THAT(Keys(Read(AtRevision(RangeReq("b"), 4))), ElementsAre("b"));
  // A DELETE event: the key and the delete's revision (watchableStoreTxnWrite.End).
  EXPECT_THAT(EventStrs(events), ElementsAre("DELETE b= c0 m5 v0"));
}

TEST_F(ApplierDeleteRange, DeletesAPrefixInOneRevision) {
  for (const char* key : {"fo", "foo", "foo/a", "foo/b", "fop"}) Write(key, "v");  // 2..6
  DeleteRangeResponse resp;
  ASSERT_TRUE(applier.DeleteRange(DelReq("foo", "fop"), &resp, &events).ok());
  EXPECT_EQ(resp.deleted(), 3);
  EXPECT_EQ(resp.header().revision(), 7);
  EXPECT_EQ(store.revision(), 7);
  EXPECT_THAT(Keys(Read(RangeReq("a", kNul))), ElementsAre("fo", "fop"));
  EXPECT_THAT(EventStrs(events), ElementsAre("DELETE foo= c0 m7 v0", "DELETE foo/a= c0 m7 v0",
                                             "DELETE foo/b= c0 m7 v0"));
}

TEST_F(ApplierDeleteRange, RangeEndNulDeletesEveryKeyFromTheKeyOn) {
  for (const char* key : {"a", "b", "c"}) Write(key, "v");
  DeleteRangeResponse resp;
  ASSERT_TRUE(applier.DeleteRange(DelReq("b", kNul), &resp, &events).ok());
  EXPECT_EQ(resp.deleted(), 2);
  EXPECT_THAT(Keys(Read(RangeReq(kNul, kNul))), ElementsAre("a"));
  EXPECT_EQ(events.size(), 2u);
}

TEST_F(ApplierDeleteRange, PrevKvReturnsTheDeletedKeysAsTheyWere) {
  leases.ids = {7};
  Write("a", "1");     // 2
  Write("b", "2", 7);  // 3
  Write("a", "3");     // 4
  Write("c", "4");     // 5
  DeleteRangeRequest r = DelReq("a", "c");
  r.set_prev_kv(true);
  DeleteRangeResponse resp;
  ASSERT_TRUE(applier.DeleteRange(r, &resp, &events).ok());
  EXPECT_EQ(resp.deleted(), 2);
  EXPECT_THAT(Strs(resp.prev_kvs()), ElementsAre("a=3 c2 m4 v2", "b=2 c3 m3 v1 l7"));
}

TEST_F(ApplierDeleteRange, DeletingNothingTakesNoRevision) {
  Write("a", "1");  // 2
  Write("b", "1");  // 3
  Erase("b");       // 4
  const std::string before = State();
  for (const DeleteRangeRequest& r : {DelReq("b"), DelReq("zzz"), DelReq("c", kNul)}) {
    DeleteRangeRequest with_prev = r;
    with_prev.set_prev_kv(true);
    DeleteRangeResponse resp;
    ASSERT_TRUE(applier.DeleteRange(with_prev, &resp, &events).ok());
    EXPECT_EQ(resp.deleted(), 0);
    EXPECT_THAT(Strs(resp.prev_kvs()), IsEmpty());
    EXPECT_EQ(resp.header().revision(), 4) << "the current revision (DeleteRange: beginRev)";
  }
  EXPECT_EQ(State(), before);
  EXPECT_THAT(EventStrs(events), IsEmpty());
}

TEST_F(ApplierDeleteRange, AKeyPutAgainAfterItsDeleteStartsANewGeneration) {
  Write("a", "1");  // 2
  Write("a", "2");  // 3
  Erase("a");       // 4
  Write("a", "3");  // 5
  EXPECT_EQ(KvOf("a"), "a=3 c5 m5 v1");
}

TEST_F(ApplierDeleteRange, AnEmptyKeyIsErrEmptyKey) {
  Write("a", "1");
  const std::string before = State();
  DeleteRangeResponse resp;
  ExpectRefused(applier.DeleteRange(DelReq("", kNul), &resp, &events), ErrEmptyKey(), before);
  EXPECT_EQ(ValidateDeleteRange(DelReq("")), ErrEmptyKey());
}

// ================================ Txn ================================

class ApplierTxn : public ApplierTest {
 protected:
  // k: created at 2, modified at 3, version 2, value "m", lease 7.
  void WriteCompareData() {
    leases.ids = {7};
    Write("k", "v1");
    Write("k", "m", 7);
  }
};

TEST_F(ApplierTxn, VersionComparesWithEachResult) {
  WriteCompareData();
  EXPECT_EQ(Holds(Cmp("k", Compare::VERSION, 2)), "=");
  EXPECT_EQ(Holds(Cmp("k", Compare::VERSION, 1)), "> !=");
  EXPECT_EQ(Holds(Cmp("k", Compare::VERSION, 3)), "< !=");
}

TEST_F(ApplierTxn, CreateRevisionComparesWithEachResult) {
  WriteCompareData();
  EXPECT_EQ(Holds(Cmp("k", Compare::CREATE, 2)), "=");
  EXPECT_EQ(Holds(Cmp("k", Compare::CREATE, 1)), "> !=");
  EXPECT_EQ(Holds(Cmp("k", Compare::CREATE, 3)), "< !=");
}

TEST_F(ApplierTxn, ModRevisionComparesWithEachResult) {
  WriteCompareData();
  EXPECT_EQ(Holds(Cmp("k", Compare::MOD, 3)), "=");
  EXPECT_EQ(Holds(Cmp("k", Compare::MOD, 2)), "> !=");
  EXPECT_EQ(Holds(Cmp("k", Compare::MOD, 4)), "< !=");
}

TEST_F(ApplierTxn, ValueComparesAsBytesWithEachResult) {
  WriteCompareData();
  EXPECT_EQ(Holds(CmpValue("k", "m")), "=");
  EXPECT_EQ(Holds(CmpValue("k", "a")), "> !=");
  EXPECT_EQ(Holds(CmpValue("k", "")), "> !=");
  EXPECT_EQ(Holds(CmpValue("k", "z")), "< !=");
  EXPECT_EQ(Holds(CmpValue("k", "m" + kNul)), "< !=");
  EXPECT_EQ(Holds(CmpValue("k", "\x80")), "< !=") << "bytes.Compare: unsigned";
}

TEST_F(ApplierTxn, LeaseComparesWithEachResult) {
  WriteCompareData();
  EXPECT_EQ(Holds(Cmp("k", Compare::LEASE, 7)), "=");
  EXPECT_EQ(Holds(Cmp("k", Compare::LEASE, 0)), "> !=");
  EXPECT_EQ(Holds(Cmp("k", Compare::LEASE, 8)), "< !=");
}

TEST_F(ApplierTxn, ACompareOnAMissingKeyComparesZeroButAValueCompareFails) {
  WriteCompareData();
  for (Compare::CompareTarget target :
       {Compare::VERSION, Compare::CREATE, Compare::MOD, Compare::LEASE}) {
    SCOPED_TRACE(Compare::CompareTarget_Name(target));
    EXPECT_EQ(Holds(Cmp("missing", target, 0)), "=");
    EXPECT_EQ(Holds(Cmp("missing", target, 1)), "< !=");
    EXPECT_EQ(Holds(Cmp("missing", target, -1)), "> !=");
    EXPECT_EQ(Holds(Over(Cmp("x", target, 0), "y")), "=") << "a range with no key";
  }
  // "no way to represent missing value": every result fails.
  EXPECT_EQ(Holds(CmpValue("missing", "")), "");
  EXPECT_EQ(Holds(CmpValue("missing", "x")), "");
  EXPECT_EQ(Holds(Over(CmpValue("x", ""), "y")), "");
  Write("gone", "1");
  Erase("gone");
  EXPECT_EQ(Holds(Cmp("gone", Compare::CREATE, 0)), "=") << "a deleted key is missing";
}

TEST_F(ApplierTxn, ACompareOverARangeHoldsOnlyIfEveryKeyHolds) {
  Write("r1", "x");
  Write("r2", "x");
  Write("r2", "y");  // r1: version 1, r2: version 2
  Write("s", "x");
  EXPECT_EQ(Holds(Over(Cmp("r1", Compare::VERSION, 1), "r3")), "");
  EXPECT_EQ(Holds(Over(Cmp("r1", Compare::VERSION, 0), "r3")), "> !=");
  EXPECT_EQ(Holds(Over(Cmp("r1", Compare::VERSION, 3), "r3")), "< !=");
  EXPECT_EQ(Holds(Over(Cmp("r2", Compare::VERSION, 2), "r3")), "=");
  EXPECT_EQ(Holds(Over(CmpValue("r", "x"), "s")), "");
  EXPECT_EQ(Holds(Over(CmpValue("r", "a"), "s")), "> !=");
  // range_end "\0": every key from the key on, s included.
  EXPECT_EQ(Holds(Over(Cmp("r2", Compare::VERSION, 2), kNul)), "");
  EXPECT_EQ(Holds(Over(Cmp("r2", Compare::VERSION, 3), kNul)), "< !=");
  EXPECT_EQ(Holds(Over(Cmp("s", Compare::VERSION, 1), kNul)), "=");
}

TEST_F(ApplierTxn, ACompareWhoseUnionHoldsAnotherTargetComparesAgainstZero) {
  WriteCompareData();
  Compare c = Cmp("k", Compare::CREATE, 5);
  c.set_target(Compare::VERSION);  // version 2 against 0
  EXPECT_EQ(Holds(c), "> !=");
  c.set_target(Compare::VALUE);  // "m" against ""
  EXPECT_EQ(Holds(c), "> !=");
}

TEST_F(ApplierTxn, AnUnknownResultHoldsAndAnUnknownTargetComparesEqual) {
  WriteCompareData();
  Compare c = Cmp("k", Compare::VERSION, 100);
  c.set_result(static_cast<Compare::CompareResult>(9));
  EXPECT_TRUE(RunTxn(TxnReq({c}, {})).succeeded());
  c = Cmp("k", Compare::VERSION, 100);
  c.set_target(static_cast<Compare::CompareTarget>(9));
  EXPECT_EQ(Holds(c), "=");
}

TEST_F(ApplierTxn, EveryCompareMustHoldForTheSuccessBranch) {
  WriteCompareData();
  const TxnRequest r = TxnReq({Cmp("k", Compare::VERSION, 2), Cmp("k", Compare::MOD, 2)},
                              {Op(PutReq("then", "1"))}, {Op(PutReq("else", "1"))});
  TxnResponse resp = RunTxn(r);
  EXPECT_FALSE(resp.succeeded());
  EXPECT_EQ(KvOf("then"), "missing");
  EXPECT_EQ(KvOf("else"), "else=1 c4 m4 v1");
}

TEST_F(ApplierTxn, TheSuccessAndFailureBranchesRunTheirOpsAndReportSucceeded) {
  WriteCompareData();
  const std::vector<RequestOp> then = {Op(PutReq("then", "1")), Op(RangeReq("k"))};
  const std::vector<RequestOp> otherwise = {Op(DelReq("k"))};
  TxnResponse resp = RunTxn(TxnReq({CmpValue("k", "m")}, then, otherwise));
  EXPECT_TRUE(resp.succeeded());
  ASSERT_EQ(resp.responses_size(), 2);
  EXPECT_EQ(resp.responses(0).response_case(), ResponseOp::kResponsePut);
  EXPECT_EQ(resp.responses(1).response_case(), ResponseOp::kResponseRange);
  EXPECT_EQ(KvOf("then"), "then=1 c4 m4 v1");

  resp = RunTxn(TxnReq({CmpValue("k", "other")}, then, otherwise));
  EXPECT_FALSE(resp.succeeded());
  ASSERT_EQ(resp.responses_size(), 1);
  EXPECT_EQ(resp.responses(0).response_delete_range().deleted(), 1);
  EXPECT_EQ(KvOf("k"), "missing");
  EXPECT_EQ(KvOf("then"), "then=1 c4 m4 v1") << "then did not run again";

  resp = RunTxn(TxnReq({}, {Op(PutReq("none", "1"))}, {Op(PutReq("never", "1"))}));
  EXPECT_TRUE(resp.succeeded()) << "no compares: success";
  EXPECT_EQ(KvOf("never"), "missing");
}

TEST_F(ApplierTxn, EachOpTypeHasItsResponse) {
  Write("a", "1");  // 2
  Write("b", "2");  // 3
  PutRequest put = PutReq("a", "3");
  put.set_prev_kv(true);
  DeleteRangeRequest del = DelReq("b");
  del.set_prev_kv(true);
  TxnResponse resp = RunTxn(
      TxnReq({}, {Op(put), Op(RangeReq("a")), Op(del), Op(TxnReq({}, {Op(RangeReq("b"))}))}));
  EXPECT_TRUE(resp.succeeded());
  EXPECT_EQ(resp.header().revision(), 4);
  ASSERT_EQ(resp.responses_size(), 4);

  ASSERT_EQ(resp.responses(0).response_case(), ResponseOp::kResponsePut);
  const etcdserverpb::PutResponse& p = resp.responses(0).response_put();
  EXPECT_EQ(p.header().revision(), 4);
  EXPECT_EQ(Str(p.prev_kv()), "a=1 c2 m2 v1");

  ASSERT_EQ(resp.responses(1).response_case(), ResponseOp::kResponseRange);
  const etcdserverpb::RangeResponse& r = resp.responses(1).response_range();
  EXPECT_EQ(r.header().revision(), 4);
  EXPECT_THAT(Strs(r.kvs()), ElementsAre("a=3 c2 m4 v2"));
  EXPECT_EQ(r.count(), 1);

  ASSERT_EQ(resp.responses(2).response_case(), ResponseOp::kResponseDeleteRange);
  const etcdserverpb::DeleteRangeResponse& d = resp.responses(2).response_delete_range();
  EXPECT_EQ(d.header().revision(), 4);
  EXPECT_EQ(d.deleted(), 1);
  EXPECT_THAT(Strs(d.prev_kvs()), ElementsAre("b=2 c3 m3 v1"));

  ASSERT_EQ(resp.responses(3).response_case(), ResponseOp::kResponseTxn);
  const etcdserverpb::TxnResponse& t = resp.responses(3).response_txn();
  EXPECT_TRUE(t.succeeded());
  EXPECT_EQ(t.header().revision(), 0) << "newTxnResp: a nested txn's header is empty";
  ASSERT_EQ(t.responses_size(), 1);
  EXPECT_THAT(Strs(t.responses(0).response_range().kvs()), IsEmpty()) << "b is deleted";
  EXPECT_EQ(t.responses(0).response_range().header().revision(), 4);

  EXPECT_THAT(EventStrs(events), ElementsAre("PUT a=3 c2 m4 v2", "DELETE b= c0 m4 v0"));
}

TEST_F(ApplierTxn, AllWritesOfATxnShareOneRevisionAndItsEventsAreInOrder) {
  Write("b", "1");  // 2
  Write("c", "1");  // 3
  TxnResponse resp = RunTxn(
      TxnReq({}, {Op(PutReq("a", "1")), Op(DelReq("b")), Op(PutReq("d", "1")), Op(DelReq("c"))}));
  EXPECT_EQ(resp.header().revision(), 4);
  EXPECT_EQ(store.revision(), 4);
  EXPECT_THAT(EventStrs(events), ElementsAre("PUT a=1 c4 m4 v1", "DELETE b= c0 m4 v0",
                                             "PUT d=1 c4 m4 v1", "DELETE c= c0 m4 v0"));
  EXPECT_THAT(Keys(Read(RangeReq("a", kNul))), ElementsAre("a", "d"));
}

TEST_F(ApplierTxn, AReadOnlyTxnKeepsTheRevision) {
  Write("a", "1");  // 2
  Write("b", "1");  // 3
  const std::string before = State();
  TxnResponse resp = RunTxn(TxnReq({CmpValue("a", "1")}, {Op(RangeReq("a"))}));
  EXPECT_EQ(resp.header().revision(), 3);
  EXPECT_EQ(resp.responses(0).response_range().header().revision(), 3);
  resp = RunTxn(TxnReq({}, {}));
  EXPECT_TRUE(resp.succeeded());
  EXPECT_EQ(resp.header().revision(), 3);
  EXPECT_EQ(State(), before);
  EXPECT_THAT(EventStrs(events), IsEmpty());
}

TEST_F(ApplierTxn, AWriteTxnThatTakesABranchWithoutWritesKeepsTheRevision) {
  Write("a", "1");  // 2
  const std::string before = State();
  TxnResponse resp = RunTxn(
      TxnReq({CmpValue("a", "1")}, {Op(RangeReq("a")), Op(DelReq("zzz"))}, {Op(PutReq("a", "2"))}));
  EXPECT_TRUE(resp.succeeded());
  EXPECT_EQ(resp.header().revision(), 2);
  EXPECT_EQ(resp.responses(1).response_delete_range().header().revision(), 2);
  EXPECT_EQ(State(), before);
  EXPECT_THAT(EventStrs(events), IsEmpty());
}

TEST_F(ApplierTxn, ADeleteOfNothingReportsTheNewRevisionOnlyAfterAWriteOfTheTxn) {
  Write("a", "1");  // 2
  TxnResponse resp = RunTxn(TxnReq({}, {Op(DelReq("x")), Op(PutReq("b", "1")), Op(DelReq("y"))}));
  EXPECT_EQ(resp.header().revision(), 3);
  // storeTxnWrite.DeleteRange: beginRev + 1 once the txn has changes, else beginRev.
  EXPECT_EQ(resp.responses(0).response_delete_range().header().revision(), 2);
  EXPECT_EQ(resp.responses(2).response_delete_range().header().revision(), 3);
}

TEST_F(ApplierTxn, ARangeInsideTheTxnSeesTheEarlierWritesOfTheTxn) {
  Write("a", "1");  // 2
  Write("b", "1");  // 3
  TxnResponse resp =
      RunTxn(TxnReq({}, {Op(RangeReq("a", kNul)), Op(PutReq("a", "2")), Op(DelReq("b")),
                         Op(RangeReq("a", kNul)), Op(AtRevision(RangeReq("a", kNul), 3))}));
  ASSERT_EQ(resp.responses_size(), 5);
  const etcdserverpb::RangeResponse& before = resp.responses(0).response_range();
  EXPECT_THAT(Strs(before.kvs()), ElementsAre("a=1 c2 m2 v1", "b=1 c3 m3 v1"));
  EXPECT_EQ(before.header().revision(), 3);
  const etcdserverpb::RangeResponse& after = resp.responses(3).response_range();
  EXPECT_THAT(Strs(after.kvs()), ElementsAre("a=2 c2 m4 v2"));
  EXPECT_EQ(after.header().revision(), 4);
  // At the revision before the txn: its writes are not there yet.
  EXPECT_THAT(Strs(resp.responses(4).response_range().kvs()),
              ElementsAre("a=1 c2 m2 v1", "b=1 c3 m3 v1"));
}

TEST_F(ApplierTxn, NestedTxnsTakeTheirOwnBranches) {
  Write("a", "1");  // 2
  const TxnRequest inner = TxnReq({CmpValue("a", "other")}, {Op(PutReq("inner-then", "1"))},
                                  {Op(PutReq("inner-else", "1"))});
  TxnResponse resp = RunTxn(TxnReq({CmpValue("a", "1")}, {Op(inner)}, {Op(PutReq("outer", "1"))}));
  EXPECT_TRUE(resp.succeeded());
  ASSERT_EQ(resp.responses_size(), 1);
  const etcdserverpb::TxnResponse& nested = resp.responses(0).response_txn();
  EXPECT_FALSE(nested.succeeded());
  ASSERT_EQ(nested.responses_size(), 1);
  EXPECT_EQ(nested.responses(0).response_put().header().revision(), 3);
  EXPECT_EQ(KvOf("inner-else"), "inner-else=1 c3 m3 v1");
  EXPECT_EQ(KvOf("inner-then"), "missing");
  EXPECT_EQ(KvOf("outer"), "missing");

  // In the failure branch, two deep.
  const TxnRequest deep =
      TxnReq({}, {Op(TxnReq({Cmp("a", Compare::VERSION, 1)}, {Op(PutReq("deep", "1"))}))});
  resp = RunTxn(TxnReq({CmpValue("a", "other")}, {}, {Op(deep)}));
  EXPECT_FALSE(resp.succeeded());
  EXPECT_TRUE(resp.responses(0).response_txn().succeeded());
  EXPECT_TRUE(resp.responses(0).response_txn().responses(0).response_txn().succeeded());
  EXPECT_EQ(KvOf("deep"), "deep=1 c4 m4 v1");
}

// compareToPath decides every branch on the read view before the txn writes.
TEST_F(ApplierTxn, NestedComparesSeeTheStateBeforeTheTxnWrites) {
  Write("a", "old");  // 2
  const TxnRequest inner = TxnReq({CmpValue("a", "new")}, {Op(PutReq("b", "saw new"))},
                                  {Op(PutReq("b", "saw old")), Op(RangeReq("a"))});
  TxnResponse resp = RunTxn(TxnReq({}, {Op(PutReq("a", "new")), Op(inner)}));
  const etcdserverpb::TxnResponse& nested = resp.responses(1).response_txn();
  EXPECT_FALSE(nested.succeeded());
  EXPECT_EQ(KvOf("b"), "b=saw old c3 m3 v1");
  // A range does see the write.
  EXPECT_THAT(Strs(nested.responses(1).response_range().kvs()), ElementsAre("a=new c2 m3 v2"));
}

TEST_F(ApplierTxn, MoreOpsThanTheLimitAreErrTooManyOps) {
  Applier small(&store, &leases, ApplierLimits{.txn_ops_max = 2});
  Write("k", "1");  // 2
  const std::string before = State();
  const Compare c = Cmp("k", Compare::VERSION, 1);
  const TxnRequest too_many[] = {
      TxnReq({c, c, c}, {}),
      TxnReq({}, Puts(3, "s")),
      TxnReq({}, {}, Puts(3, "f")),
  };
  for (const TxnRequest& r : too_many) {
    TxnResponse resp;
    ExpectRefused(small.Txn(r, &resp, &events), ErrTooManyOps(), before);
    EXPECT_EQ(ValidateTxn(r, 2), ErrTooManyOps());
  }
  TxnResponse resp;
  EXPECT_TRUE(small.Txn(TxnReq({c, c}, Puts(2, "s"), Puts(2, "f")), &resp, &events).ok());
  EXPECT_EQ(KvOf("s1"), "s1=v c3 m3 v1");
  // The default limit is etcd's 128.
  EXPECT_EQ(TryTxn(TxnReq({}, Puts(129, "x"))), ErrTooManyOps());
  EXPECT_TRUE(TryTxn(TxnReq({}, Puts(128, "x"))).ok());
}

TEST_F(ApplierTxn, ANestedTxnGetsWhatIsLeftOfTheOpsBudget) {
  Applier small(&store, &leases, ApplierLimits{.txn_ops_max = 3});
  const std::string before = State();
  // The outer txn has 2 ops: 1 left for the nested one.
  for (const TxnRequest& nested :
       {TxnReq({}, Puts(2, "n")), TxnReq({}, {}, Puts(2, "n")),
        TxnReq({Cmp("k", Compare::CREATE, 0), Cmp("j", Compare::CREATE, 0)}, {})}) {
    TxnResponse resp;
    const TxnRequest r = TxnReq({}, {Op(PutReq("a", "1")), Op(nested)});
    ExpectRefused(small.Txn(r, &resp, &events), ErrTooManyOps(), before);
  }
  TxnResponse resp;
  const TxnRequest r = TxnReq({}, {Op(PutReq("a", "1")), Op(TxnReq({}, Puts(1, "n")))});
  EXPECT_TRUE(small.Txn(r, &resp, &events).ok());
  EXPECT_EQ(KvOf("n0"), "n0=v c2 m2 v1");
}

TEST_F(ApplierTxn, AnEmptyCompareKeyIsErrEmptyKey) {
  Write("a", "1");
  const std::string before = State();
  ExpectRefused(TryTxn(TxnReq({Cmp("", Compare::CREATE, 0)}, {Op(PutReq("a", "2"))})),
                ErrEmptyKey(), before);
  ExpectRefused(TryTxn(TxnReq({}, {Op(TxnReq({CmpValue("", "")}, {}))})), ErrEmptyKey(), before);
}

TEST_F(ApplierTxn, AnEmptyKeyInAnyOpIsErrEmptyKey) {
  Write("a", "1");
  const std::string before = State();
  for (const RequestOp& op : {Op(RangeReq("")), Op(PutReq("", "1")), Op(DelReq(""))}) {
    ExpectRefused(TryTxn(TxnReq({}, {Op(PutReq("b", "1")), op})), ErrEmptyKey(), before);
    // Also in the branch not taken, and in a nested txn.
    ExpectRefused(TryTxn(TxnReq({}, {Op(PutReq("b", "1"))}, {op})), ErrEmptyKey(), before);
    ExpectRefused(TryTxn(TxnReq({}, {Op(TxnReq({}, {op}))})), ErrEmptyKey(), before);
  }
}

TEST_F(ApplierTxn, AnEmptyRequestOpIsErrKeyNotFound) {
  Write("a", "1");
  const std::string before = State();
  ExpectRefused(TryTxn(TxnReq({}, {Op(PutReq("b", "1")), RequestOp()})), ErrKeyNotFound(), before);
  ExpectRefused(TryTxn(TxnReq({}, {Op(PutReq("b", "1"))}, {RequestOp()})), ErrKeyNotFound(),
                before);
  ExpectRefused(TryTxn(TxnReq({}, {Op(TxnReq({}, {RequestOp()}))})), ErrKeyNotFound(), before);
  EXPECT_EQ(ValidateTxn(TxnReq({}, {RequestOp()}), 128), ErrKeyNotFound());
}

TEST_F(ApplierTxn, PuttingOneKeyTwiceIsErrDuplicateKey) {
  Write("a", "1");
  const std::string before = State();
  const TxnRequest r = TxnReq({}, {Op(PutReq("b", "1")), Op(RangeReq("a")), Op(PutReq("b", "2"))});
  ExpectRefused(TryTxn(r), ErrDuplicateKey(), before);
  EXPECT_EQ(ValidateTxn(r, 128), ErrDuplicateKey());
  // Also in the branch not taken.
  ExpectRefused(TryTxn(TxnReq({}, {}, {Op(PutReq("b", "1")), Op(PutReq("b", "2"))})),
                ErrDuplicateKey(), before);
}

TEST_F(ApplierTxn, APutAndADeleteCoveringItOnOnePathAreErrDuplicateKey) {
  Write("b", "1");  // 2
  const std::string before = State();
  const TxnRequest refused[] = {
      TxnReq({}, {Op(PutReq("b", "2")), Op(DelReq("b"))}),
      TxnReq({}, {Op(DelReq("b")), Op(PutReq("b", "2"))}),
      TxnReq({}, {Op(DelReq("a", "c")), Op(PutReq("b", "2"))}),
      TxnReq({}, {Op(PutReq("a", "2")), Op(DelReq("a", "c"))}),
  };
  for (const TxnRequest& r : refused) ExpectRefused(TryTxn(r), ErrDuplicateKey(), before);
  // The range end is not in the range.
  TxnResponse resp = RunTxn(TxnReq({}, {Op(DelReq("a", "c")), Op(PutReq("c", "2"))}));
  EXPECT_EQ(KvOf("c"), "c=2 c3 m3 v1");
  EXPECT_EQ(KvOf("b"), "missing");
}

TEST_F(ApplierTxn, APutAndADeleteCoveringItAcrossNestingAreErrDuplicateKey) {
  Write("b", "1");
  const std::string before = State();
  const RequestOp put_b = Op(PutReq("b", "2"));
  const RequestOp del_b = Op(DelReq("a", "c"));
  const TxnRequest refused[] = {
      // A delete above a nested put, either order.
      TxnReq({}, {del_b, Op(TxnReq({}, {put_b}))}),
      TxnReq({}, {Op(TxnReq({}, {}, {put_b})), del_b}),
      // A put above a nested delete.
      TxnReq({}, {put_b, Op(TxnReq({}, {del_b}))}),
      // A put above a nested put, and two nested puts.
      TxnReq({}, {put_b, Op(TxnReq({}, {}, {put_b}))}),
      TxnReq({}, {Op(TxnReq({}, {put_b})), Op(TxnReq({}, {put_b}))}),
      // A nested delete, then a sibling nested put.
      TxnReq({}, {Op(TxnReq({}, {del_b})), Op(TxnReq({}, {}, {put_b}))}),
      // Two deep.
      TxnReq({}, {del_b, Op(TxnReq({}, {Op(TxnReq({}, {put_b}))}))}),
      TxnReq({}, {Op(TxnReq({}, {Op(TxnReq({}, {put_b}))})), put_b}),
  };
  for (size_t i = 0; i < std::size(refused); ++i) {
    SCOPED_TRACE(i);
    ExpectRefused(TryTxn(refused[i]), ErrDuplicateKey(), before);
  }
}

TEST_F(ApplierTxn, TheBranchesOfOneNestedTxnMayWriteTheSameKey) {
  Write("b", "1");  // 2
  // Then and else exclude each other: a put in both, or a put and a delete.
  TxnResponse resp = RunTxn(TxnReq({}, {Op(TxnReq({CmpValue("b", "1")}, {Op(PutReq("b", "then"))},
                                                  {Op(PutReq("b", "else"))}))}));
  EXPECT_EQ(KvOf("b"), "b=then c2 m3 v2");
  resp = RunTxn(TxnReq(
      {}, {Op(TxnReq({CmpValue("b", "1")}, {Op(PutReq("b", "then"))}, {Op(DelReq("a", "c"))}))}));
  EXPECT_FALSE(resp.responses(0).response_txn().succeeded());
  EXPECT_EQ(KvOf("b"), "missing");
  // The top-level branches are checked one at a time.
  resp = RunTxn(
      TxnReq({Cmp("b", Compare::CREATE, 0)}, {Op(PutReq("b", "x"))}, {Op(PutReq("b", "y"))}));
  EXPECT_EQ(KvOf("b"), "b=x c5 m5 v1");
}

// checkIntervals compares puts with deletes, never deletes with deletes.
TEST_F(ApplierTxn, TwoDeletesOfOneKeyAreAllowed) {
  Write("b", "1");  // 2
  TxnResponse resp = RunTxn(TxnReq({}, {Op(DelReq("b")), Op(DelReq("a", "c"))}));
  EXPECT_EQ(resp.header().revision(), 3);
  EXPECT_EQ(resp.responses(0).response_delete_range().deleted(), 1);
  EXPECT_EQ(resp.responses(1).response_delete_range().deleted(), 0);
  EXPECT_EQ(resp.responses(1).response_delete_range().header().revision(), 3);
  EXPECT_THAT(EventStrs(events), ElementsAre("DELETE b= c0 m3 v0"));
}

// checkIntervals checks a nested txn's puts against the deletes collected so far only: a
// nested delete after a sibling nested put of the key is accepted, and applied in order.
TEST_F(ApplierTxn, ANestedDeleteAfterASiblingNestedPutOfTheKeyIsAllowed) {
  Write("b", "1");  // 2
  const TxnRequest r =
      TxnReq({}, {Op(TxnReq({}, {Op(PutReq("b", "2"))})), Op(TxnReq({}, {Op(DelReq("b"))}))});
  EXPECT_TRUE(ValidateTxn(r, 128).ok());
  RunTxn(r);
  EXPECT_EQ(KvOf("b"), "missing");
  EXPECT_THAT(EventStrs(events), ElementsAre("PUT b=2 c2 m3 v2", "DELETE b= c0 m3 v0"));
}

// The divergence documented in applier.h: etcd 3.4's checkIntervals takes range_end "\0"
// as the string "\x00" (an empty interval), keel as open to the end.
TEST_F(ApplierTxn, AnOpenEndedDeleteAndAPutInsideItAreErrDuplicateKey) {
  Write("m", "1");
  const std::string before = State();
  ExpectRefused(TryTxn(TxnReq({}, {Op(DelReq("a", kNul)), Op(PutReq("z", "1"))})),
                ErrDuplicateKey(), before);
  ExpectRefused(TryTxn(TxnReq({}, {Op(DelReq("a", kNul)), Op(TxnReq({}, {Op(PutReq("a", "1"))}))})),
                ErrDuplicateKey(), before);
  // A key below the range is fine.
  RunTxn(TxnReq({}, {Op(DelReq("b", kNul)), Op(PutReq("a", "1"))}));
  EXPECT_THAT(Keys(Read(RangeReq(kNul, kNul))), ElementsAre("a"));
}

TEST_F(ApplierTxn, AnUnknownLeaseFailsTheWholeTxnAndChangesNothing) {
  leases.ids = {7};
  Write("a", "1");  // 2
  const std::string before = State();
  ExpectRefused(TryTxn(TxnReq({}, {Op(PutReq("a", "2")), Op(PutReq("b", "1", 8))})),
                ErrLeaseNotFound(), before);
  ExpectRefused(
      TryTxn(TxnReq({}, {Op(PutReq("a", "2")), Op(TxnReq({}, {Op(PutReq("b", "1", 8))}))})),
      ErrLeaseNotFound(), before);
  EXPECT_EQ(store.revision(), 2);
  EXPECT_EQ(KvOf("a"), "a=1 c2 m2 v1");
  // A known lease is fine.
  RunTxn(TxnReq({}, {Op(PutReq("b", "1", 7))}));
  EXPECT_EQ(KvOf("b"), "b=1 c3 m3 v1 l7");
}

TEST_F(ApplierTxn, OnlyTheTakenPathIsChecked) {
  Write("a", "1");  // 2
  // checkRequests follows the path: the failure branch's unknown lease is never looked at.
  TxnResponse resp = RunTxn(TxnReq({CmpValue("a", "1")}, {Op(PutReq("b", "1"))},
                                   {Op(PutReq("c", "1", 99)), Op(AtRevision(RangeReq("a"), 50))}));
  EXPECT_TRUE(resp.succeeded());
  const TxnRequest nested_not_taken =
      TxnReq({}, {Op(TxnReq({CmpValue("a", "other")}, {Op(IgnoringValue(PutReq("zz", "")))},
                            {Op(PutReq("c", "1"))}))});
  resp = RunTxn(nested_not_taken);
  EXPECT_EQ(KvOf("c"), "c=1 c4 m4 v1");
}

TEST_F(ApplierTxn, ARangeRevisionInTheFutureFailsTheWholeTxn) {
  Write("a", "1");  // 2
  const std::string before = State();
  for (int64_t rev : {3, 100}) {
    ExpectRefused(TryTxn(TxnReq({}, {Op(PutReq("a", "2")), Op(AtRevision(RangeReq("a"), rev))})),
                  ErrFutureRev(), before);
    // Read-only, and nested.
    ExpectRefused(TryTxn(TxnReq({}, {Op(AtRevision(RangeReq("a"), rev))})), ErrFutureRev(), before);
    ExpectRefused(TryTxn(TxnReq({}, {Op(PutReq("a", "2")),
                                     Op(TxnReq({}, {Op(AtRevision(RangeReq("a"), rev))}))})),
                  ErrFutureRev(), before);
  }
}

TEST_F(ApplierTxn, ACompactedRangeRevisionFailsTheWholeTxn) {
  Write("a", "1");  // 2
  Write("a", "2");  // 3
  Write("a", "3");  // 4
  CompactAt(3);
  const std::string before = State();
  ExpectRefused(TryTxn(TxnReq({}, {Op(PutReq("a", "4")), Op(AtRevision(RangeReq("a"), 2))})),
                ErrCompacted(), before);
  ExpectRefused(TryTxn(TxnReq({}, {Op(AtRevision(RangeReq("a"), 2))})), ErrCompacted(), before);
  // The compaction point itself is readable.
  TxnResponse resp = RunTxn(TxnReq({}, {Op(AtRevision(RangeReq("a"), 3))}));
  EXPECT_THAT(Strs(resp.responses(0).response_range().kvs()), ElementsAre("a=2 c2 m3 v2"));
}

TEST_F(ApplierTxn, IgnoreValueOrLeaseOnAMissingKeyFailsTheWholeTxn) {
  Write("a", "1");
  const std::string before = State();
  ExpectRefused(
      TryTxn(TxnReq({}, {Op(PutReq("a", "2")), Op(IgnoringValue(PutReq("missing", "")))})),
      ErrKeyNotFound(), before);
  ExpectRefused(
      TryTxn(TxnReq({}, {Op(PutReq("a", "2")), Op(IgnoringLease(PutReq("missing", "x")))})),
      ErrKeyNotFound(), before);
  // In a txn, checkRequestPut checks the previous kv before the lease.
  ExpectRefused(TryTxn(TxnReq({}, {Op(IgnoringValue(PutReq("missing", "", 99)))})),
                ErrKeyNotFound(), before);
  ExpectRefused(TryTxn(TxnReq({}, {Op(IgnoringValue(PutReq("a", "2")))})), ErrValueProvided(),
                before);
  ExpectRefused(TryTxn(TxnReq({}, {Op(IgnoringLease(PutReq("a", "2", 7)))})), ErrLeaseProvided(),
                before);
}

TEST_F(ApplierTxn, IgnoreValueAndIgnoreLeaseInATxnKeepThePreviousOnes) {
  leases.ids = {7, 8};
  Write("a", "1", 7);  // 2
  Write("b", "2", 8);  // 3
  RunTxn(TxnReq({}, {Op(IgnoringValue(PutReq("a", ""))), Op(IgnoringLease(PutReq("b", "3")))}));
  EXPECT_EQ(KvOf("a"), "a=1 c2 m4 v2");
  EXPECT_EQ(KvOf("b"), "b=3 c3 m4 v2 l8");
}

TEST_F(ApplierTxn, IsReadOnlyTxnIsRangesOnlyAtAnyDepth) {
  EXPECT_TRUE(IsReadOnlyTxn(TxnReq({}, {})));
  EXPECT_TRUE(
      IsReadOnlyTxn(TxnReq({CmpValue("a", "1")}, {Op(RangeReq("a"))}, {Op(RangeReq("b"))})));
  EXPECT_FALSE(IsReadOnlyTxn(TxnReq({}, {Op(RangeReq("a"))}, {Op(PutReq("a", "1"))})));
  EXPECT_FALSE(IsReadOnlyTxn(TxnReq({}, {Op(DelReq("a"))})));
  EXPECT_FALSE(IsReadOnlyTxn(TxnReq({}, {RequestOp()})));
  // applier.h: nested ranges count as reads (etcd 3.4's isTxnReadonly is not recursive).
  EXPECT_TRUE(IsReadOnlyTxn(TxnReq({}, {Op(TxnReq({}, {Op(RangeReq("a"))}))})));
  EXPECT_FALSE(IsReadOnlyTxn(TxnReq({}, {Op(TxnReq({}, {}, {Op(PutReq("a", "1"))}))})));
}

TEST_F(ApplierTxn, ReadTxnAnswersAsTxnDoesAndChangesNothing) {
  Write("a", "1");  // 2
  Write("b", "2");  // 3
  const TxnRequest r =
      TxnReq({CmpValue("a", "1")},
             {Op(RangeReq("a", kNul)), Op(TxnReq({CmpValue("b", "x")}, {}, {Op(RangeReq("b"))}))},
             {Op(RangeReq("b"))});
  const std::string before = State();
  TxnResponse read;
  ASSERT_TRUE(applier.ReadTxn(r, &read).ok());
  EXPECT_EQ(State(), before);
  EXPECT_TRUE(read.succeeded());
  EXPECT_EQ(read.header().revision(), 3);
  EXPECT_THAT(Keys(read.responses(0).response_range()), ElementsAre("a", "b"));
  EXPECT_FALSE(read.responses(1).response_txn().succeeded());
  TxnResponse txn = RunTxn(r);
  EXPECT_EQ(read.ShortDebugString(), txn.ShortDebugString());
  EXPECT_EQ(State(), before);
  EXPECT_THAT(EventStrs(events), IsEmpty());
}

TEST_F(ApplierTxn, ReadTxnRefusesAsTxnDoes) {
  Write("a", "1");  // 2
  const std::string before = State();
  TxnResponse resp;
  EXPECT_EQ(applier.ReadTxn(TxnReq({}, {Op(AtRevision(RangeReq("a"), 6))}), &resp), ErrFutureRev());
  EXPECT_EQ(applier.ReadTxn(TxnReq({}, {Op(RangeReq(""))}), &resp), ErrEmptyKey());
  EXPECT_EQ(applier.ReadTxn(TxnReq({CmpValue("", "")}, {}), &resp), ErrEmptyKey());
  EXPECT_EQ(State(), before);
}

// etcd's Txn runs checkRequests(checkPut) over the whole path before
// checkRequests(checkRange) (apply.go applierV3backend.Txn): a bad put is reported before
// a bad range, whatever their order in the txn.
TEST_F(ApplierTxn, PutChecksComeBeforeRangeChecks) {
  Write("a", "1");
  const std::string before = State();
  ExpectRefused(TryTxn(TxnReq({}, {Op(AtRevision(RangeReq("a"), 100)), Op(PutReq("b", "1", 99))})),
                ErrLeaseNotFound(), before);
}

// etcd's checkTxnRequest validates every op (a nested txn: its ops only) before
// checkIntervals looks for duplicates (key.go kvServer.Txn).
TEST_F(ApplierTxn, EveryOpIsValidatedBeforeDuplicatesAreLookedFor) {
  Write("a", "1");
  const std::string before = State();
  const TxnRequest r =
      TxnReq({}, {Op(TxnReq({}, {Op(PutReq("b", "1")), Op(PutReq("b", "2"))})), Op(RangeReq(""))});
  ExpectRefused(TryTxn(r), ErrEmptyKey(), before);
  EXPECT_EQ(ValidateTxn(r, 128), ErrEmptyKey());
}

// checkRequestRange refuses rev < rv.FirstRev(), etcd's compactMainRev, which is -1 until
// the first compaction: a txn's range at revision -1 reads the current revision then.
TEST_F(ApplierTxn, ARangeAtRevisionMinusOneReadsTheCurrentRevisionBeforeAnyCompaction) {
  Write("a", "1");  // 2
  TxnResponse resp;
  absl::Status st = applier.Txn(TxnReq({}, {Op(AtRevision(RangeReq("a"), -1))}), &resp, &events);
  EXPECT_TRUE(st.ok()) << st;
  if (st.ok()) {
    EXPECT_THAT(Strs(resp.responses(0).response_range().kvs()), ElementsAre("a=1 c2 m2 v1"));
  }
}

// ============================== Compact ==============================

class ApplierCompact : public ApplierTest {};

TEST_F(ApplierCompact, CompactsAtTheRevisionAndAnswersTheCurrentRevision) {
  Write("a", "1");  // 2
  Write("a", "2");  // 3
  Write("b", "1");  // 4
  Erase("b");       // 5
  CompactionRequest r;
  r.set_revision(4);
  CompactionResponse resp;
  ASSERT_TRUE(applier.Compact(r, &resp).ok());
  EXPECT_EQ(resp.header().revision(), 5);
  EXPECT_EQ(store.revision(), 5);
  EXPECT_EQ(store.compacted(), 4);
  RangeResponse range;
  EXPECT_EQ(applier.Range(AtRevision(RangeReq("a", kNul), 3), &range), ErrCompacted());
  EXPECT_THAT(Strs(Read(AtRevision(RangeReq("a", kNul), 4)).kvs()),
              ElementsAre("a=2 c2 m3 v2", "b=1 c4 m4 v1"));
  EXPECT_THAT(Keys(Read(RangeReq("a", kNul))), ElementsAre("a"));
  // Up to the current revision.
  r.set_revision(5);
  ASSERT_TRUE(applier.Compact(r, &resp).ok());
  EXPECT_EQ(store.compacted(), 5);
  EXPECT_EQ(KvOf("a"), "a=2 c2 m3 v2");
}

TEST_F(ApplierCompact, AtOrBelowTheCompactedRevisionIsErrCompacted) {
  Write("a", "1");  // 2
  Write("a", "2");  // 3
  Write("a", "3");  // 4
  CompactAt(3);
  const std::string before = State();
  for (int64_t rev : {3, 2, 1, 0}) {
    CompactionRequest r;
    r.set_revision(rev);
    CompactionResponse resp;
    ExpectRefused(applier.Compact(r, &resp), ErrCompacted(), before);
  }
}

TEST_F(ApplierCompact, AboveTheCurrentRevisionIsErrFutureRev) {
  Write("a", "1");  // 2
  Write("a", "2");  // 3
  const std::string before = State();
  CompactionRequest r;
  r.set_revision(4);
  CompactionResponse resp;
  ExpectRefused(applier.Compact(r, &resp), ErrFutureRev(), before);
}

}  // namespace
}  // namespace keel::kv
