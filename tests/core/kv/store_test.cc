#include "core/kv/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include "core/kv/errors.h"
#include "tests/core/kv/memory_backend.h"

namespace keel::kv {
namespace {

using ::testing::ElementsAre;

class RecordingLeases : public LeaseAttachments {
 public:
  void Attach(std::string_view key, int64_t lease) override {
    if (lease == 0) {
      bound.erase(std::string(key));
    } else {
      bound[std::string(key)] = lease;
    }
  }
  void Detach(std::string_view key) override { bound.erase(std::string(key)); }
  std::map<std::string, int64_t> bound;
};

class StoreTest : public ::testing::Test {
 protected:
  void Put(std::string_view key, std::string_view value, int64_t lease = 0) {
    Store::Writer w = store.Write();
    ASSERT_TRUE(w.Put(key, value, lease).ok());
    w.End();
  }
  int64_t Delete(std::string_view key, std::string_view end = "") {
    Store::Writer w = store.Write();
    absl::StatusOr<int64_t> n = w.DeleteRange(KeyRange{key, end}, nullptr);
    w.End();
    EXPECT_TRUE(n.ok());
    return n.value_or(-1);
  }
  std::vector<std::string> Keys(KeyRange range, RangeOptions options = {}) {
    absl::StatusOr<RangeResult> rr = store.Range(range, options);
    EXPECT_TRUE(rr.ok()) << rr.status();
    std::vector<std::string> keys;
    if (rr.ok()) {
      for (const mvccpb::KeyValue& kv : rr->kvs) keys.push_back(kv.key());
    }
    return keys;
  }

  MemoryBackend backend;
  RecordingLeases leases;
  Store store{&backend, &leases};
};

// etcd's mvcc store: a new store is at revision 1 and has never been compacted
// (compactMainRev -1); its first write makes revision 2.
TEST_F(StoreTest, ANewStoreIsAtRevisionOneAndItsFirstWriteMakesRevisionTwo) {
  EXPECT_EQ(store.revision(), 1);
  EXPECT_EQ(store.compacted(), -1);
  EXPECT_EQ(store.key_count(), 0u);
  absl::StatusOr<RangeResult> empty = store.Range({"a", std::string_view("\0", 1)}, {});
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->kvs.empty());
  EXPECT_EQ(empty->revision, 1);
  EXPECT_TRUE(store.Range({"a", ""}, {.revision = 1}).ok()) << "revision 1 is readable";
  EXPECT_EQ(store.Range({"a", ""}, {.revision = 2}).status(), ErrFutureRev());

  Put("a", "1");
  EXPECT_EQ(store.revision(), 2);
  EXPECT_EQ(store.compacted(), -1);
  absl::StatusOr<RangeResult> rr = store.Range({"a", ""}, {});
  ASSERT_TRUE(rr.ok()) << rr.status();
  ASSERT_EQ(rr->kvs.size(), 1u);
  EXPECT_EQ(rr->kvs[0].create_revision(), 2);
  EXPECT_EQ(rr->kvs[0].mod_revision(), 2);
  EXPECT_EQ(rr->kvs[0].version(), 1);
  EXPECT_EQ(rr->revision, 2);
  std::vector<Revision> records;
  for (const auto& [rev, bytes] : backend.revisions()) records.push_back(rev);
  EXPECT_THAT(records, ElementsAre(Revision{2, 0}));
  absl::StatusOr<RangeResult> at1 = store.Range({"a", ""}, {.revision = 1});
  ASSERT_TRUE(at1.ok()) << at1.status();
  EXPECT_TRUE(at1->kvs.empty()) << "nothing at revision 1";
  store.CheckInvariants();
}

// etcd's store.compact refuses rev <= compactMainRev (ErrCompacted) and rev > currentRev
// (ErrFutureRev): on a new store (-1, 1) that accepts 0 and 1, and refuses 2.
TEST_F(StoreTest, ANewStoreCompactsAtOneButNotAtTwo) {
  EXPECT_EQ(store.Compact(2), ErrFutureRev());
  EXPECT_EQ(store.compacted(), -1);
  EXPECT_EQ(store.Compact(1), absl::OkStatus());
  EXPECT_EQ(store.compacted(), 1);
  EXPECT_EQ(store.revision(), 1);
  EXPECT_EQ(store.Compact(1), ErrCompacted());
  EXPECT_EQ(store.Compact(0), ErrCompacted());
  EXPECT_EQ(store.Compact(2), ErrFutureRev());
  Put("a", "1");
  EXPECT_EQ(store.revision(), 2) << "compaction takes no revision";
  EXPECT_EQ(store.Compact(2), absl::OkStatus());
  EXPECT_EQ(store.compacted(), 2);
  store.CheckInvariants();

  MemoryBackend other_backend;
  Store other(&other_backend, nullptr);
  EXPECT_EQ(other.Compact(0), absl::OkStatus()) << "0 > -1: accepted, as in etcd";
  EXPECT_EQ(other.compacted(), 0);
  EXPECT_EQ(other.Compact(0), ErrCompacted());
  EXPECT_EQ(other.Compact(1), absl::OkStatus());
  EXPECT_EQ(other.compacted(), 1);
}

// Load of an empty backend gives a new store: revision 1, never compacted.
TEST_F(StoreTest, LoadOfAnEmptyBackendIsANewStore) {
  Store loaded(&backend, nullptr);
  ASSERT_TRUE(loaded.Load().ok());
  EXPECT_EQ(loaded.revision(), 1);
  EXPECT_EQ(loaded.compacted(), -1);
  // A compaction at 1 with no record: revision max(last record, compacted, 1) = 1.
  ASSERT_TRUE(loaded.Compact(1).ok());
  Store reloaded(&backend, nullptr);
  ASSERT_TRUE(reloaded.Load().ok());
  EXPECT_EQ(reloaded.revision(), 1);
  EXPECT_EQ(reloaded.compacted(), 1);
}

TEST_F(StoreTest, EachWriteRequestIsOneRevisionAndCarriesVersions) {
  Put("a", "1");  // 2
  Put("a", "2");  // 3
  Put("b", "x");  // 4
  EXPECT_EQ(store.revision(), 4);
  absl::StatusOr<RangeResult> rr = store.Range(KeyRange{"a", ""}, {});
  ASSERT_TRUE(rr.ok());
  ASSERT_EQ(rr->kvs.size(), 1u);
  EXPECT_EQ(rr->kvs[0].value(), "2");
  EXPECT_EQ(rr->kvs[0].create_revision(), 2);
  EXPECT_EQ(rr->kvs[0].mod_revision(), 3);
  EXPECT_EQ(rr->kvs[0].version(), 2);
  EXPECT_EQ(rr->revision, 4);
}

TEST_F(StoreTest, ChangesInOneWriterShareAMainRevisionWithOrderedSubs) {
  Store::Writer w = store.Write();
  ASSERT_TRUE(w.Put("a", "1", 0).ok());
  ASSERT_TRUE(w.Put("b", "2", 0).ok());
  absl::StatusOr<RangeResult> inside = w.Range(KeyRange{"a", "c"}, {});
  ASSERT_TRUE(inside.ok());
  EXPECT_EQ(inside->kvs.size(), 2u) << "a writer reads its own writes";
  EXPECT_EQ(inside->revision, 2);
  std::vector<mvccpb::Event> events = w.End();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(store.revision(), 2);
  EXPECT_TRUE(backend.revisions().contains(Revision{2, 0}));
  EXPECT_TRUE(backend.revisions().contains(Revision{2, 1}));
}

TEST_F(StoreTest, AWriterThatChangesNothingTakesNoRevision) {
  Put("a", "1");  // 2
  EXPECT_EQ(Delete("zzz"), 0);
  EXPECT_EQ(store.revision(), 2);
}

TEST_F(StoreTest, RangeEndConventions) {
  for (const char* k : {"a", "ab", "abc", "b", "c"}) Put(k, "v");
  EXPECT_THAT(Keys({"ab", ""}), ElementsAre("ab"));
  EXPECT_THAT(Keys({"ab", "ac"}), ElementsAre("ab", "abc"));
  EXPECT_THAT(Keys({"ab", std::string_view("\0", 1)}), ElementsAre("ab", "abc", "b", "c"));
  EXPECT_THAT(Keys({"b", "a"}), ElementsAre()) << "end before key: empty";
  EXPECT_THAT(Keys({"a", "c"}, {.limit = 2}), ElementsAre("a", "ab"));
  absl::StatusOr<RangeResult> counted = store.Range({"a", "c"}, {.limit = 2});
  EXPECT_EQ(counted->count, 4) << "count ignores the limit";
  absl::StatusOr<RangeResult> count_only = store.Range({"a", "c"}, {.count_only = true});
  EXPECT_EQ(count_only->count, 4);
  EXPECT_TRUE(count_only->kvs.empty());
}

TEST_F(StoreTest, HistoricalReadsAndTheirErrors) {
  Put("a", "1");  // 2
  Put("a", "2");  // 3
  Delete("a");    // 4
  Put("a", "3");  // 5
  auto value_at = [&](int64_t rev) -> std::string {
    absl::StatusOr<RangeResult> rr = store.Range({"a", ""}, {.revision = rev});
    if (!rr.ok()) return rr.status().ToString();
    return rr->kvs.empty() ? "<none>" : rr->kvs[0].value();
  };
  EXPECT_EQ(value_at(1), "<none>");
  EXPECT_EQ(value_at(2), "1");
  EXPECT_EQ(value_at(3), "2");
  EXPECT_EQ(value_at(4), "<none>");
  EXPECT_EQ(value_at(5), "3");
  EXPECT_EQ(value_at(0), "3");
  EXPECT_EQ(store.Range({"a", ""}, {.revision = 6}).status(), ErrFutureRev());
  ASSERT_TRUE(store.Compact(3).ok());
  EXPECT_EQ(store.Range({"a", ""}, {.revision = 2}).status(), ErrCompacted());
  EXPECT_EQ(store.Range({"a", ""}, {.revision = 1}).status(), ErrCompacted());
  EXPECT_EQ(value_at(3), "2") << "the compaction point itself stays readable";
  EXPECT_EQ(store.Compact(3), ErrCompacted());
  EXPECT_EQ(store.Compact(2), ErrCompacted());
  EXPECT_EQ(store.Compact(6), ErrFutureRev());
}

TEST_F(StoreTest, CompactionDeletesExactlyTheInvisibleRevisions) {
  Put("a", "1");  // 2
  Put("a", "2");  // 3
  Put("b", "1");  // 4
  Delete("b");    // 5
  Put("c", "1");  // 6
  ASSERT_TRUE(store.Compact(5).ok());
  std::vector<Revision> left;
  for (const auto& [rev, bytes] : backend.revisions()) left.push_back(rev);
  EXPECT_THAT(left, ElementsAre(Revision{3, 0}, Revision{6, 0}));
  EXPECT_EQ(store.key_count(), 2u) << "b's history is gone";
  store.CheckInvariants();
}

TEST_F(StoreTest, EventsReplayHistoryFromTheBackend) {
  Put("a", "1");  // 2
  Delete("a");    // 3
  Put("b", "2");  // 4
  std::vector<mvccpb::Event> events;
  ASSERT_TRUE(store.Events(3, 5, &events).ok());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type(), mvccpb::Event::DELETE);
  EXPECT_EQ(events[0].kv().key(), "a");
  EXPECT_EQ(events[0].kv().mod_revision(), 3);
  EXPECT_EQ(events[1].type(), mvccpb::Event::PUT);
  EXPECT_EQ(events[1].kv().value(), "2");
}

TEST_F(StoreTest, LoadRebuildsTheSameKeyspace) {
  Put("a", "1", 7);  // 2
  Put("b", "1");     // 3
  Delete("b");       // 4
  Put("c", "1", 8);  // 5
  Put("c", "2", 9);  // 6
  ASSERT_TRUE(store.Compact(4).ok());
  RecordingLeases reloaded_leases;
  Store reloaded(&backend, &reloaded_leases);
  ASSERT_TRUE(reloaded.Load().ok());
  EXPECT_EQ(reloaded.revision(), 6);
  EXPECT_EQ(reloaded.compacted(), 4);
  EXPECT_EQ(reloaded_leases.bound, (std::map<std::string, int64_t>{{"a", 7}, {"c", 9}}));
  EXPECT_EQ(reloaded_leases.bound, leases.bound);
  absl::StatusOr<RangeResult> rr = reloaded.Range({"a", std::string_view("\0", 1)}, {});
  ASSERT_TRUE(rr.ok());
  ASSERT_EQ(rr->kvs.size(), 2u);
  EXPECT_EQ(rr->kvs[1].version(), 2);
  reloaded.CheckInvariants();
}

TEST_F(StoreTest, LoadKeepsTheRevisionOfACompactedAwayDelete) {
  Put("a", "1");  // 2
  Delete("a");    // 3
  ASSERT_TRUE(store.Compact(3).ok());
  EXPECT_EQ(backend.revision_count(), 0u);
  Store reloaded(&backend, nullptr);
  ASSERT_TRUE(reloaded.Load().ok());
  EXPECT_EQ(reloaded.revision(), 3);
  EXPECT_EQ(reloaded.compacted(), 3);
}

TEST_F(StoreTest, LoadRefusesCorruptRecords) {
  Put("a", "1");  // 2
  ASSERT_TRUE(backend.revisions().contains(Revision{2, 0}));
  backend.revisions()[Revision{2, 0}] = "\xff\xff not a protobuf";
  Store reloaded(&backend, nullptr);
  EXPECT_EQ(reloaded.Load().code(), absl::StatusCode::kDataLoss);
  backend.revisions().clear();
  mvccpb::KeyValue tomb;
  tomb.set_key("ghost");
  tomb.set_mod_revision(2);
  backend.revisions()[Revision{2, 0}] = tomb.SerializeAsString();
  EXPECT_EQ(reloaded.Load().code(), absl::StatusCode::kDataLoss) << "delete of a non-live key";
}

TEST_F(StoreTest, AStorageFailureSurfacesAsAStorageFailure) {
  backend.FailNextWrite();
  Store::Writer w = store.Write();
  absl::Status st = w.Put("a", "1", 0);
  w.End();
  EXPECT_TRUE(IsStorageFailure(st)) << st;
}

TEST_F(StoreTest, LeasesFollowPutsAndDeletes) {
  Put("a", "1", 5);
  EXPECT_EQ(leases.bound["a"], 5);
  Put("a", "2", 0);
  EXPECT_FALSE(leases.bound.contains("a")) << "a put without lease detaches";
  Put("a", "3", 6);
  Delete("a");
  EXPECT_FALSE(leases.bound.contains("a"));
}

}  // namespace
}  // namespace keel::kv
