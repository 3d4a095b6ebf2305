#include "core/lease/lease_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/etcdpb/kv.pb.h"
#include "core/kv/errors.h"
#include "core/kv/memory_backend.h"
#include "core/kv/store.h"
#include "core/lease/lease.pb.h"
#include "tests/core/kv/kv_test_util.h"

// The replicated lease state against etcd's lessor (lease/lessor.go: Grant, Revoke,
// Attach/Detach, minimum TTL, MaxLeaseTTL), on the replicated lease clock of
// core/lease/lease_table.h. As etcd's, a new store is at revision 1: the first write of
// a test makes revision 2.

namespace keel::lease {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

using test::kNul;

LeaseConfig TestConfig() {
  return LeaseConfig{.min_ttl_seconds = 2, .max_ttl_seconds = 1000, .leases_max = 100};
}

leasepb::Checkpoint Cp(int64_t clock_ms, std::vector<std::pair<int64_t, int64_t>> renewals = {}) {
  return test::MakeCheckpoint(1, 1, clock_ms, renewals);
}

// "PUT k@rev" / "DELETE k@rev": what a test needs of an event.
std::vector<std::string> Summary(const std::vector<mvccpb::Event>& events) {
  std::vector<std::string> out;
  for (const mvccpb::Event& ev : events) {
    out.push_back(absl::StrCat(ev.type() == mvccpb::Event::PUT ? "PUT " : "DELETE ",
                               ev.kv().key(), "@", ev.kv().mod_revision()));
  }
  return out;
}

std::vector<std::string> KeysOf(const LeaseTable& table, int64_t id) {
  const LeaseTable::Lease* l = table.Find(id);
  EXPECT_NE(l, nullptr) << "lease " << id;
  if (l == nullptr) return {};
  return std::vector<std::string>(l->keys.begin(), l->keys.end());
}

using test::LiveKeys;

// A table and store over an existing backend, loaded as the state machine does.
struct Reloaded {
  Reloaded(kv::Backend* backend, LeaseConfig config) : table(backend, config), store(backend, &table) {}
  absl::Status Load() {
    if (absl::Status st = table.LoadLeases(); !st.ok()) return st;
    if (absl::Status st = store.Load(); !st.ok()) return st;
    return table.CheckLoaded();
  }
  LeaseTable table;
  kv::Store store;
};

class LeaseTableTest : public ::testing::Test {
 protected:
  void Check() {
    table.CheckInvariants();
    store.CheckInvariants();
  }
  int64_t Grant(int64_t id, int64_t ttl) {
    absl::StatusOr<int64_t> g = table.Grant(id, ttl);
    EXPECT_TRUE(g.ok()) << g.status();
    Check();
    return g.value_or(-1);
  }
  void Put(std::string_view key, int64_t lease) {
    kv::Store::Writer w = store.Write();
    absl::Status st = w.Put(key, "v", lease);
    w.End();
    ASSERT_TRUE(st.ok()) << st;
    Check();
  }
  void Delete(std::string_view key) {
    kv::Store::Writer w = store.Write();
    absl::StatusOr<int64_t> n = w.DeleteRange({key, ""}, nullptr);
    w.End();
    ASSERT_TRUE(n.ok()) << n.status();
    Check();
  }
  absl::Status Apply(const leasepb::Checkpoint& cp, std::vector<int64_t>* revoked,
                     std::vector<mvccpb::Event>* events) {
    absl::Status st = table.ApplyCheckpoint(cp, &store, events, revoked);
    Check();
    return st;
  }
  // Applies a checkpoint that must succeed; returns the ids it revoked.
  std::vector<int64_t> Apply(const leasepb::Checkpoint& cp) {
    std::vector<int64_t> revoked;
    std::vector<mvccpb::Event> events;
    absl::Status st = Apply(cp, &revoked, &events);
    EXPECT_TRUE(st.ok()) << st;
    return revoked;
  }

  kv::MemoryBackend backend;
  LeaseTable table{&backend, TestConfig()};
  kv::Store store{&backend, &table};
};

// ---- Grant ----

TEST_F(LeaseTableTest, AGrantBelowTheMinimumTtlIsRaisedToTheMinimum) {
  EXPECT_EQ(Grant(1, 1), 2);
  EXPECT_EQ(Grant(2, 0), 2);
  EXPECT_EQ(Grant(3, -7), 2);
  EXPECT_EQ(Grant(4, 2), 2);
  EXPECT_EQ(Grant(5, 3), 3);
  ASSERT_NE(table.Find(1), nullptr);
  EXPECT_EQ(table.Find(1)->ttl_seconds, 2);
  EXPECT_EQ(table.Find(1)->expiry_ms, 2000);
  EXPECT_EQ(table.Find(2)->expiry_ms, 2000);
  EXPECT_EQ(table.Find(3)->expiry_ms, 2000);
  EXPECT_EQ(table.Find(5)->ttl_seconds, 3);
  EXPECT_EQ(table.Find(5)->expiry_ms, 3000);
  EXPECT_EQ(table.size(), 5u);
}

TEST_F(LeaseTableTest, AGrantAboveTheMaximumTtlIsRefusedWithErrLeaseTTLTooLarge) {
  EXPECT_EQ(table.Grant(1, 1001).status(), kv::ErrLeaseTTLTooLarge());
  Check();
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(table.Find(1), nullptr);
  EXPECT_FALSE(table.Exists(1));
  EXPECT_EQ(Grant(1, 1000), 1000) << "the maximum itself is allowed";
  EXPECT_EQ(table.Find(1)->expiry_ms, 1'000'000);

  Reloaded fresh(&backend, TestConfig());
  ASSERT_TRUE(fresh.Load().ok());
  EXPECT_EQ(fresh.table.size(), 1u) << "the refused grant left no record";
}

TEST_F(LeaseTableTest, AGrantOfAnIdInUseIsRefusedWithErrLeaseExistAndChangesNothing) {
  EXPECT_EQ(Grant(7, 10), 10);
  EXPECT_EQ(table.Grant(7, 20).status(), kv::ErrLeaseExist());
  Check();
  EXPECT_EQ(table.size(), 1u);
  EXPECT_EQ(table.Find(7)->ttl_seconds, 10);
  EXPECT_EQ(table.Find(7)->expiry_ms, 10'000);
  // The TTL check comes first, as in etcd's LeaseGrant (checked before the lessor).
  EXPECT_EQ(table.Grant(7, 5000).status(), kv::ErrLeaseTTLTooLarge());
}

TEST_F(LeaseTableTest, AGrantBeyondLeasesMaxIsRefusedWithResourceExhausted) {
  kv::MemoryBackend b;
  LeaseTable t(&b, LeaseConfig{.min_ttl_seconds = 2, .max_ttl_seconds = 1000, .leases_max = 2});
  kv::Store s(&b, &t);
  ASSERT_TRUE(t.Grant(1, 10).ok());
  ASSERT_TRUE(t.Grant(2, 10).ok());
  absl::StatusOr<int64_t> third = t.Grant(3, 10);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  EXPECT_FALSE(kv::IsStorageFailure(third.status()));
  t.CheckInvariants();
  EXPECT_EQ(t.size(), 2u);
  EXPECT_FALSE(t.Exists(3));
  // Room again once one is revoked.
  std::vector<mvccpb::Event> events;
  ASSERT_TRUE(t.Revoke(1, &s, &events).ok());
  absl::StatusOr<int64_t> again = t.Grant(3, 10);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 10);
  EXPECT_EQ(t.size(), 2u);
  t.CheckInvariants();
}

TEST_F(LeaseTableTest, AGrantExpiresAtTheLeaseClockPlusItsTtl) {
  EXPECT_THAT(Apply(Cp(1234)), IsEmpty());
  EXPECT_EQ(table.clock_ms(), 1234);
  EXPECT_EQ(Grant(1, 10), 10);
  EXPECT_EQ(table.Find(1)->expiry_ms, 11'234);
  EXPECT_EQ(Grant(2, 1), 2);
  EXPECT_EQ(table.Find(2)->expiry_ms, 3234);
  EXPECT_EQ(table.next_expiry_ms(), 3234);
}

TEST_F(LeaseTableTest, ANewTableHasNoLeasesAndAClockAtZero) {
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(table.clock_ms(), 0);
  EXPECT_EQ(table.next_expiry_ms(), std::nullopt);
  ASSERT_TRUE(table.LoadLeases().ok());
  EXPECT_EQ(table.clock_ms(), 0);
  EXPECT_EQ(table.size(), 0u);
  Check();
}

TEST_F(LeaseTableTest, GrantedLeasesArePersistedAndReloadedByLoadLeasesIntoAFreshTable) {
  EXPECT_EQ(Grant(1, 10), 10);
  EXPECT_EQ(Grant(2, 1), 2);
  EXPECT_THAT(Apply(Cp(500, {{1, 20'000}})), IsEmpty());
  EXPECT_EQ(Grant(3, 30), 30);  // 500 + 30'000

  LeaseTable fresh(&backend, TestConfig());
  ASSERT_TRUE(fresh.LoadLeases().ok());
  fresh.CheckInvariants();
  EXPECT_EQ(fresh.size(), 3u);
  EXPECT_EQ(fresh.clock_ms(), 500);
  ASSERT_NE(fresh.Find(1), nullptr);
  EXPECT_EQ(fresh.Find(1)->ttl_seconds, 10);
  EXPECT_EQ(fresh.Find(1)->expiry_ms, 20'000);
  ASSERT_NE(fresh.Find(2), nullptr);
  EXPECT_EQ(fresh.Find(2)->ttl_seconds, 2);
  EXPECT_EQ(fresh.Find(2)->expiry_ms, 2000);
  ASSERT_NE(fresh.Find(3), nullptr);
  EXPECT_EQ(fresh.Find(3)->ttl_seconds, 30);
  EXPECT_EQ(fresh.Find(3)->expiry_ms, 30'500);
  EXPECT_EQ(fresh.next_expiry_ms(), 2000);
  // LoadLeases replaces what the table held.
  ASSERT_TRUE(table.LoadLeases().ok());
  Check();
  EXPECT_EQ(table.size(), 3u);
}

// ---- Attach / Detach through the Store ----

TEST_F(LeaseTableTest, APutWithALeaseBindsTheKeyToIt) {
  Grant(1, 10);
  Put("a", 1);
  EXPECT_THAT(KeysOf(table, 1), ElementsAre("a"));
  Put("a", 1);  // the same lease again: still bound once
  EXPECT_THAT(KeysOf(table, 1), ElementsAre("a"));
  Put("b", 0);  // no lease: bound to nothing
  EXPECT_THAT(KeysOf(table, 1), ElementsAre("a"));
}

TEST_F(LeaseTableTest, APutWithAnotherLeaseMovesTheKeyAndAPutWithoutOneUnbindsIt) {
  Grant(1, 10);
  Grant(2, 10);
  Put("a", 1);
  Put("a", 2);
  EXPECT_THAT(KeysOf(table, 1), IsEmpty());
  EXPECT_THAT(KeysOf(table, 2), ElementsAre("a"));
  Put("a", 0);
  EXPECT_THAT(KeysOf(table, 1), IsEmpty());
  EXPECT_THAT(KeysOf(table, 2), IsEmpty());
  Put("a", 1);
  EXPECT_THAT(KeysOf(table, 1), ElementsAre("a"));
}

TEST_F(LeaseTableTest, ADeleteUnbindsTheKey) {
  Grant(1, 10);
  Put("a", 1);
  Put("b", 1);
  Delete("a");
  EXPECT_THAT(KeysOf(table, 1), ElementsAre("b"));
  Delete("b");
  EXPECT_THAT(KeysOf(table, 1), IsEmpty());
  Put("a", 0);  // re-created without a lease: stays unbound
  EXPECT_THAT(KeysOf(table, 1), IsEmpty());
}

TEST_F(LeaseTableTest, EachLeaseListsItsKeysInKeyOrder) {
  Grant(1, 10);
  Grant(2, 10);
  Put("c", 1);
  Put("a", 1);
  Put("d", 2);
  Put("b", 1);
  Put("e", 0);
  EXPECT_THAT(KeysOf(table, 1), ElementsAre("a", "b", "c"));
  EXPECT_THAT(KeysOf(table, 2), ElementsAre("d"));
}

// ---- Revoke ----

TEST_F(LeaseTableTest, RevokeDeletesEveryAttachedKeyInOneRevisionAndRemovesTheLease) {
  Grant(1, 10);
  Grant(2, 10);
  Put("c", 1);  // revision 2
  Put("a", 1);  // 3
  Put("b", 1);  // 4
  Put("d", 2);  // 5
  Put("e", 0);  // 6
  ASSERT_EQ(store.revision(), 6);
  std::vector<mvccpb::Event> events;
  ASSERT_TRUE(table.Revoke(1, &store, &events).ok());
  Check();
  EXPECT_EQ(store.revision(), 7);
  EXPECT_THAT(Summary(events), ElementsAre("DELETE a@7", "DELETE b@7", "DELETE c@7"));
  EXPECT_THAT(LiveKeys(store), ElementsAre("d", "e"));
  EXPECT_EQ(table.Find(1), nullptr);
  EXPECT_FALSE(table.Exists(1));
  EXPECT_EQ(table.size(), 1u);
  EXPECT_THAT(KeysOf(table, 2), ElementsAre("d"));
  EXPECT_EQ(table.next_expiry_ms(), 10'000);

  LeaseTable fresh(&backend, TestConfig());
  ASSERT_TRUE(fresh.LoadLeases().ok());
  EXPECT_EQ(fresh.size(), 1u);
  EXPECT_EQ(fresh.Find(1), nullptr) << "the record is deleted too";
  EXPECT_NE(fresh.Find(2), nullptr);
}

TEST_F(LeaseTableTest, RevokeOfALeaseWithoutKeysMakesNoRevision) {
  Grant(1, 10);
  Put("a", 0);
  std::vector<mvccpb::Event> events;
  ASSERT_TRUE(table.Revoke(1, &store, &events).ok());
  Check();
  EXPECT_EQ(store.revision(), 2);
  EXPECT_THAT(Summary(events), IsEmpty());
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(table.next_expiry_ms(), std::nullopt);
}

TEST_F(LeaseTableTest, RevokeOfAnUnknownLeaseIsErrLeaseNotFoundAndChangesNothing) {
  Grant(1, 10);
  Put("a", 1);
  std::vector<mvccpb::Event> events;
  EXPECT_EQ(table.Revoke(2, &store, &events), kv::ErrLeaseNotFound());
  Check();
  EXPECT_THAT(Summary(events), IsEmpty());
  EXPECT_EQ(store.revision(), 2);
  EXPECT_EQ(table.size(), 1u);
  EXPECT_THAT(KeysOf(table, 1), ElementsAre("a"));
  EXPECT_THAT(LiveKeys(store), ElementsAre("a"));
  // Revoking twice: the second is not found.
  ASSERT_TRUE(table.Revoke(1, &store, &events).ok());
  EXPECT_EQ(table.Revoke(1, &store, &events), kv::ErrLeaseNotFound());
  EXPECT_EQ(store.revision(), 3);
  Check();
}

// ---- ApplyCheckpoint ----

TEST_F(LeaseTableTest, ACheckpointRenewalRaisesTheExpiryButNeverLowersIt) {
  Grant(1, 10);  // 10'000
  Grant(2, 10);
  EXPECT_THAT(Apply(Cp(100, {{1, 15'000}, {2, 9000}})), IsEmpty());
  EXPECT_EQ(table.Find(1)->expiry_ms, 15'000);
  EXPECT_EQ(table.Find(2)->expiry_ms, 10'000) << "a lower renewal is ignored";
  EXPECT_THAT(Apply(Cp(100, {{1, 12'000}})), IsEmpty());
  EXPECT_EQ(table.Find(1)->expiry_ms, 15'000);
  EXPECT_EQ(table.next_expiry_ms(), 10'000);
  // The TTL is unchanged by renewals.
  EXPECT_EQ(table.Find(1)->ttl_seconds, 10);

  LeaseTable fresh(&backend, TestConfig());
  ASSERT_TRUE(fresh.LoadLeases().ok());
  EXPECT_EQ(fresh.Find(1)->expiry_ms, 15'000) << "the renewal is persisted";
  EXPECT_EQ(fresh.Find(2)->expiry_ms, 10'000);
}

TEST_F(LeaseTableTest, ARenewalOfAnUnknownLeaseIsSkipped) {
  Grant(1, 10);
  EXPECT_THAT(Apply(Cp(100, {{5, 50'000}, {1, 11'000}})), IsEmpty());
  EXPECT_EQ(table.size(), 1u);
  EXPECT_EQ(table.Find(5), nullptr);
  EXPECT_EQ(table.Find(1)->expiry_ms, 11'000) << "the renewals after it still apply";
  LeaseTable fresh(&backend, TestConfig());
  ASSERT_TRUE(fresh.LoadLeases().ok());
  EXPECT_EQ(fresh.size(), 1u);
}

TEST_F(LeaseTableTest, TheLeaseClockNeverGoesBackwards) {
  EXPECT_THAT(Apply(Cp(5000)), IsEmpty());
  EXPECT_EQ(table.clock_ms(), 5000);
  EXPECT_THAT(Apply(Cp(3000)), IsEmpty());
  EXPECT_EQ(table.clock_ms(), 5000);
  EXPECT_THAT(Apply(Cp(5000)), IsEmpty());
  EXPECT_EQ(table.clock_ms(), 5000);
  EXPECT_THAT(Apply(Cp(5001)), IsEmpty());
  EXPECT_EQ(table.clock_ms(), 5001);
  LeaseTable fresh(&backend, TestConfig());
  ASSERT_TRUE(fresh.LoadLeases().ok());
  EXPECT_EQ(fresh.clock_ms(), 5001);
}

TEST_F(LeaseTableTest, ACheckpointRevokesEveryExpiredLeaseInExpiryOrderEachInItsOwnRevision) {
  Grant(1, 5);   // 5000
  Grant(2, 3);   // 3000
  Grant(3, 4);   // 4000
  Grant(4, 10);  // 10'000
  Grant(5, 4);   // 4000, no keys
  Put("k1", 1);  // 2
  Put("k2", 2);  // 3
  Put("k3a", 3);  // 4
  Put("k3b", 3);  // 5
  Put("k4", 4);  // 6
  ASSERT_EQ(store.revision(), 6);
  std::vector<int64_t> revoked;
  std::vector<mvccpb::Event> events;
  ASSERT_TRUE(Apply(Cp(5000), &revoked, &events).ok());
  // Oldest expiry first; equal expiries by id. A lease whose expiry equals the clock
  // is expired (etcd: remaining TTL <= 0).
  EXPECT_THAT(revoked, ElementsAre(2, 3, 5, 1));
  EXPECT_THAT(Summary(events),
              ElementsAre("DELETE k2@7", "DELETE k3a@8", "DELETE k3b@8", "DELETE k1@9"));
  EXPECT_EQ(store.revision(), 9) << "lease 5 had no keys: no revision";
  EXPECT_EQ(table.clock_ms(), 5000);
  EXPECT_EQ(table.size(), 1u);
  ASSERT_NE(table.Find(4), nullptr) << "expiry 10'000 > clock 5000: it survives";
  EXPECT_THAT(KeysOf(table, 4), ElementsAre("k4"));
  EXPECT_THAT(LiveKeys(store), ElementsAre("k4"));
  EXPECT_EQ(table.next_expiry_ms(), 10'000);

  LeaseTable fresh(&backend, TestConfig());
  ASSERT_TRUE(fresh.LoadLeases().ok());
  EXPECT_EQ(fresh.size(), 1u);
  EXPECT_NE(fresh.Find(4), nullptr);

  // One millisecond before its expiry it lives; at it, it goes.
  EXPECT_THAT(Apply(Cp(9999)), IsEmpty());
  EXPECT_EQ(table.size(), 1u);
  EXPECT_THAT(Apply(Cp(10'000)), ElementsAre(4));
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(store.revision(), 10);
}

TEST_F(LeaseTableTest, ARenewalInTheSameCheckpointSavesALeaseTheClockWouldExpire) {
  Grant(1, 3);  // 3000
  Grant(2, 3);
  Put("a", 1);
  Put("b", 2);
  EXPECT_THAT(Apply(Cp(4000, {{1, 7000}})), ElementsAre(2));
  EXPECT_EQ(table.Find(1)->expiry_ms, 7000);
  EXPECT_THAT(LiveKeys(store), ElementsAre("a"));
}

TEST_F(LeaseTableTest, ACheckpointWithNothingExpiredChangesNoRevision) {
  Grant(1, 3);
  Put("a", 1);
  std::vector<int64_t> revoked;
  std::vector<mvccpb::Event> events;
  ASSERT_TRUE(Apply(Cp(2999), &revoked, &events).ok());
  EXPECT_THAT(revoked, IsEmpty());
  EXPECT_THAT(Summary(events), IsEmpty());
  EXPECT_EQ(store.revision(), 2);
}

TEST_F(LeaseTableTest, TheLeaseClockIsPersistedInMetaAndReloaded) {
  EXPECT_THAT(Apply(Cp(4321)), IsEmpty());
  absl::StatusOr<std::optional<int64_t>> meta = backend.GetMeta(kv::kMetaLeaseClock);
  ASSERT_TRUE(meta.ok());
  EXPECT_EQ(*meta, std::optional<int64_t>(4321));
  LeaseTable fresh(&backend, TestConfig());
  ASSERT_TRUE(fresh.LoadLeases().ok());
  EXPECT_EQ(fresh.clock_ms(), 4321);
  // A grant on the reloaded table expires on the reloaded clock.
  absl::StatusOr<int64_t> g = fresh.Grant(9, 5);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(fresh.Find(9)->expiry_ms, 9321);
}

// ---- Loading ----

TEST_F(LeaseTableTest, AReloadedStoreRebindsItsKeysToTheirLeases) {
  Grant(1, 10);
  Grant(2, 10);
  Put("a", 1);
  Put("b", 1);
  Put("b", 2);  // moved
  Put("c", 1);
  Delete("c");  // unbound by the delete
  Put("d", 2);
  Put("d", 0);  // unbound by a put without a lease
  Put("e", 2);

  Reloaded fresh(&backend, TestConfig());
  absl::Status st = fresh.Load();
  ASSERT_TRUE(st.ok()) << st;
  fresh.table.CheckInvariants();
  EXPECT_THAT(KeysOf(fresh.table, 1), ElementsAre("a"));
  EXPECT_THAT(KeysOf(fresh.table, 2), ElementsAre("b", "e"));
  EXPECT_EQ(fresh.store.revision(), store.revision());
}

TEST_F(LeaseTableTest, CheckLoadedRefusesAStoreThatBindsAKeyToALeaseThatDoesNotExist) {
  kv::MemoryBackend b;
  mvccpb::KeyValue kv;
  kv.set_key("k");
  kv.set_value("v");
  kv.set_create_revision(2);
  kv.set_mod_revision(2);
  kv.set_version(1);
  kv.set_lease(7);
  ASSERT_TRUE(b.PutRevision(kv::Revision{2, 0}, kv.SerializeAsString()).ok());
  LeaseTable t(&b, TestConfig());
  kv::Store s(&b, &t);
  ASSERT_TRUE(t.LoadLeases().ok());
  ASSERT_TRUE(s.Load().ok());
  absl::Status st = t.CheckLoaded();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_TRUE(kv::IsStorageFailure(st));
  EXPECT_FALSE(t.Exists(7));
}

TEST_F(LeaseTableTest, CheckLoadedAcceptsAStoreWhoseKeysNameExistingLeases) {
  kv::MemoryBackend b;
  leasepb::Record r;
  r.set_id(7);
  r.set_ttl_seconds(10);
  r.set_expiry_ms(12'000);
  ASSERT_TRUE(b.PutLease(7, r.SerializeAsString()).ok());
  mvccpb::KeyValue kv;
  kv.set_key("k");
  kv.set_value("v");
  kv.set_create_revision(2);
  kv.set_mod_revision(2);
  kv.set_version(1);
  kv.set_lease(7);
  ASSERT_TRUE(b.PutRevision(kv::Revision{2, 0}, kv.SerializeAsString()).ok());
  Reloaded fresh(&b, TestConfig());
  absl::Status st = fresh.Load();
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_THAT(KeysOf(fresh.table, 7), ElementsAre("k"));
  EXPECT_EQ(fresh.table.Find(7)->expiry_ms, 12'000);
  fresh.table.CheckInvariants();
}

// The store's history keeps the puts of keys a revoked lease held (until compaction):
// they name a lease that no longer exists, but no live key is bound to it. A restart
// (or a snapshot's load) after any revocation must load; only a *live* key bound to a
// missing lease is corruption.
TEST_F(LeaseTableTest, AStoreWhoseHistoryNamesALeaseRevokedWithItsKeysReloads) {
  Grant(1, 10);
  Put("a", 1);
  std::vector<mvccpb::Event> events;
  ASSERT_TRUE(table.Revoke(1, &store, &events).ok());  // deletes "a"
  Check();

  Reloaded fresh(&backend, TestConfig());
  absl::Status st = fresh.Load();
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(fresh.table.size(), 0u);
  EXPECT_THAT(LiveKeys(fresh.store), IsEmpty());
}

TEST_F(LeaseTableTest, AStoreWhoseHistoryNamesARevokedLeaseItsKeyHadLeftReloads) {
  Grant(2, 10);
  Put("b", 2);
  Put("b", 0);  // "b" no longer on lease 2
  std::vector<mvccpb::Event> events;
  ASSERT_TRUE(table.Revoke(2, &store, &events).ok());  // no keys left to delete
  Check();

  Reloaded fresh(&backend, TestConfig());
  absl::Status st = fresh.Load();
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(fresh.table.size(), 0u);
  EXPECT_THAT(LiveKeys(fresh.store), ElementsAre("b"));
}

TEST_F(LeaseTableTest, LoadLeasesRefusesMalformedRecordsWithDataLoss) {
  auto load = [](const std::function<void(kv::MemoryBackend&)>& corrupt) {
    kv::MemoryBackend b;
    corrupt(b);
    LeaseTable t(&b, TestConfig());
    return t.LoadLeases();
  };
  auto record = [](int64_t id, int64_t ttl, int64_t expiry) {
    leasepb::Record r;
    r.set_id(id);
    r.set_ttl_seconds(ttl);
    r.set_expiry_ms(expiry);
    return r.SerializeAsString();
  };
  EXPECT_TRUE(load([&](kv::MemoryBackend& b) { ASSERT_TRUE(b.PutLease(1, record(1, 5, 5000)).ok()); }).ok());
  absl::Status st = load([](kv::MemoryBackend& b) {
    ASSERT_TRUE(b.PutLease(1, std::string("\xff", 1)).ok());
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "unparseable: " << st;
  st = load([&](kv::MemoryBackend& b) { ASSERT_TRUE(b.PutLease(1, record(2, 5, 5000)).ok()); });
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "id differs from its key: " << st;
  st = load([&](kv::MemoryBackend& b) { ASSERT_TRUE(b.PutLease(1, record(1, 0, 5000)).ok()); });
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "ttl 0: " << st;
  st = load([&](kv::MemoryBackend& b) { ASSERT_TRUE(b.PutLease(1, record(1, -3, 5000)).ok()); });
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "negative ttl: " << st;
  st = load([&](kv::MemoryBackend& b) { ASSERT_TRUE(b.PutLease(-4, record(-4, 5, 5000)).ok()); });
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "negative id: " << st;
  st = load([&](kv::MemoryBackend& b) { ASSERT_TRUE(b.PutLease(0, record(0, 5, 5000)).ok()); });
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "id 0: " << st;
  // A malformed record among good ones is still refused.
  st = load([&](kv::MemoryBackend& b) {
    ASSERT_TRUE(b.PutLease(1, record(1, 5, 5000)).ok());
    ASSERT_TRUE(b.PutLease(2, record(3, 5, 5000)).ok());
    ASSERT_TRUE(b.PutLease(4, record(4, 5, 5000)).ok());
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
}

// ---- storage failures ----

TEST_F(LeaseTableTest, AFailedWriteInGrantSurfacesAsAStorageFailure) {
  backend.FailNextWrite();
  absl::StatusOr<int64_t> g = table.Grant(1, 10);
  EXPECT_TRUE(kv::IsStorageFailure(g.status())) << g.status();
  Check();
}

TEST_F(LeaseTableTest, AFailedWriteInRevokeSurfacesAsAStorageFailure) {
  Grant(1, 10);
  Grant(2, 10);
  Put("a", 1);
  std::vector<mvccpb::Event> events;
  backend.FailNextWrite();  // the tombstone of "a"
  absl::Status st = table.Revoke(1, &store, &events);
  EXPECT_TRUE(kv::IsStorageFailure(st)) << st;
  Check();
  backend.FailNextWrite();  // lease 2 has no keys: its record's delete
  st = table.Revoke(2, &store, &events);
  EXPECT_TRUE(kv::IsStorageFailure(st)) << st;
  Check();
}

TEST_F(LeaseTableTest, AFailedWriteInApplyCheckpointSurfacesAsAStorageFailure) {
  Grant(1, 10);
  std::vector<int64_t> revoked;
  std::vector<mvccpb::Event> events;
  backend.FailNextWrite();  // the renewal's record
  absl::Status st = Apply(Cp(100, {{1, 20'000}}), &revoked, &events);
  EXPECT_TRUE(kv::IsStorageFailure(st)) << st;
  backend.FailNextWrite();  // the clock's meta
  st = Apply(Cp(200), &revoked, &events);
  EXPECT_TRUE(kv::IsStorageFailure(st)) << st;
  Put("a", 1);
  EXPECT_THAT(Apply(Cp(300)), IsEmpty());
  backend.FailNextWrite();  // the clock's meta, before the revocation it would cause
  st = Apply(Cp(100'000), &revoked, &events);
  EXPECT_TRUE(kv::IsStorageFailure(st)) << st;
  EXPECT_THAT(revoked, IsEmpty());
}

}  // namespace
}  // namespace keel::lease

namespace keel::lease {
namespace {

// A checkpoint the leader proposed before it knew of a grant cannot expire that lease,
// however far its clock (a lagging table clock gave the lease an early expiry; the
// leader's renewal, on its own clock, comes with a later checkpoint).
TEST_F(LeaseTableTest, ACheckpointCannotExpireALeaseGrantedAfterItWasProposed) {
  ASSERT_TRUE(table.Grant(1, 2, /*granted_index=*/10).ok());  // expires at clock 2000
  ASSERT_TRUE(table.Grant(2, 2, /*granted_index=*/20).ok());
  Check();
  leasepb::Checkpoint cp = test::MakeCheckpoint(1, 1, 5000);
  cp.set_applied_index(15);  // the leader had applied up to 15: it knew of lease 1 only
  EXPECT_THAT(Apply(cp), ElementsAre(1));
  EXPECT_NE(table.Find(2), nullptr) << "granted at 20, after the checkpoint's 15";
  cp.set_sequence(2);
  cp.set_applied_index(20);
  EXPECT_THAT(Apply(cp), ElementsAre(2));
}

TEST_F(LeaseTableTest, TheGrantIndexSurvivesAReload) {
  ASSERT_TRUE(table.Grant(1, 2, /*granted_index=*/42).ok());
  LeaseTable reloaded(&backend, TestConfig());
  ASSERT_TRUE(reloaded.LoadLeases().ok());
  EXPECT_EQ(reloaded.Find(1)->granted_index, 42u);
}

}  // namespace
}  // namespace keel::lease
