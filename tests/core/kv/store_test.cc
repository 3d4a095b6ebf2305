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

TEST_F(StoreTest, EachWriteRequestIsOneRevisionAndCarriesVersions) {
  Put("a", "1");
  Put("a", "2");
  Put("b", "x");
  EXPECT_EQ(store.revision(), 3);
  absl::StatusOr<RangeResult> rr = store.Range(KeyRange{"a", ""}, {});
  ASSERT_TRUE(rr.ok());
  ASSERT_EQ(rr->kvs.size(), 1u);
  EXPECT_EQ(rr->kvs[0].value(), "2");
  EXPECT_EQ(rr->kvs[0].create_revision(), 1);
  EXPECT_EQ(rr->kvs[0].mod_revision(), 2);
  EXPECT_EQ(rr->kvs[0].version(), 2);
  EXPECT_EQ(rr->revision, 3);
}

TEST_F(StoreTest, ChangesInOneWriterShareAMainRevisionWithOrderedSubs) {
  Store::Writer w = store.Write();
  ASSERT_TRUE(w.Put("a", "1", 0).ok());
  ASSERT_TRUE(w.Put("b", "2", 0).ok());
  absl::StatusOr<RangeResult> inside = w.Range(KeyRange{"a", "c"}, {});
  ASSERT_TRUE(inside.ok());
  EXPECT_EQ(inside->kvs.size(), 2u) << "a writer reads its own writes";
  EXPECT_EQ(inside->revision, 1);
  std::vector<mvccpb::Event> events = w.End();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(store.revision(), 1);
  EXPECT_TRUE(backend.revisions().contains(Revision{1, 0}));
  EXPECT_TRUE(backend.revisions().contains(Revision{1, 1}));
}

TEST_F(StoreTest, AWriterThatChangesNothingTakesNoRevision) {
  Put("a", "1");
  EXPECT_EQ(Delete("zzz"), 0);
  EXPECT_EQ(store.revision(), 1);
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
  Put("a", "1");  // 1
  Put("a", "2");  // 2
  Delete("a");    // 3
  Put("a", "3");  // 4
  auto value_at = [&](int64_t rev) -> std::string {
    absl::StatusOr<RangeResult> rr = store.Range({"a", ""}, {.revision = rev});
    if (!rr.ok()) return rr.status().ToString();
    return rr->kvs.empty() ? "<none>" : rr->kvs[0].value();
  };
  EXPECT_EQ(value_at(1), "1");
  EXPECT_EQ(value_at(2), "2");
  EXPECT_EQ(value_at(3), "<none>");
  EXPECT_EQ(value_at(4), "3");
  EXPECT_EQ(value_at(0), "3");
  EXPECT_EQ(store.Range({"a", ""}, {.revision = 5}).status(), ErrFutureRev());
  ASSERT_TRUE(store.Compact(2).ok());
  EXPECT_EQ(store.Range({"a", ""}, {.revision = 1}).status(), ErrCompacted());
  EXPECT_EQ(value_at(2), "2") << "the compaction point itself stays readable";
  EXPECT_EQ(store.Compact(2), ErrCompacted());
  EXPECT_EQ(store.Compact(1), ErrCompacted());
  EXPECT_EQ(store.Compact(5), ErrFutureRev());
}

TEST_F(StoreTest, CompactionDeletesExactlyTheInvisibleRevisions) {
  Put("a", "1");  // 1
  Put("a", "2");  // 2
  Put("b", "1");  // 3
  Delete("b");    // 4
  Put("c", "1");  // 5
  ASSERT_TRUE(store.Compact(4).ok());
  std::vector<Revision> left;
  for (const auto& [rev, bytes] : backend.revisions()) left.push_back(rev);
  EXPECT_THAT(left, ElementsAre(Revision{2, 0}, Revision{5, 0}));
  EXPECT_EQ(store.key_count(), 2u) << "b's history is gone";
  store.CheckInvariants();
}

TEST_F(StoreTest, EventsReplayHistoryFromTheBackend) {
  Put("a", "1");
  Delete("a");
  Put("b", "2");
  std::vector<mvccpb::Event> events;
  ASSERT_TRUE(store.Events(2, 4, &events).ok());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type(), mvccpb::Event::DELETE);
  EXPECT_EQ(events[0].kv().key(), "a");
  EXPECT_EQ(events[0].kv().mod_revision(), 2);
  EXPECT_EQ(events[1].type(), mvccpb::Event::PUT);
  EXPECT_EQ(events[1].kv().value(), "2");
}

TEST_F(StoreTest, LoadRebuildsTheSameKeyspace) {
  Put("a", "1", 7);
  Put("b", "1");
  Delete("b");
  Put("c", "1", 8);
  Put("c", "2", 9);
  ASSERT_TRUE(store.Compact(3).ok());
  RecordingLeases reloaded_leases;
  Store reloaded(&backend, &reloaded_leases);
  ASSERT_TRUE(reloaded.Load().ok());
  EXPECT_EQ(reloaded.revision(), 5);
  EXPECT_EQ(reloaded.compacted(), 3);
  EXPECT_EQ(reloaded_leases.bound, (std::map<std::string, int64_t>{{"a", 7}, {"c", 9}}));
  EXPECT_EQ(reloaded_leases.bound, leases.bound);
  absl::StatusOr<RangeResult> rr = reloaded.Range({"a", std::string_view("\0", 1)}, {});
  ASSERT_TRUE(rr.ok());
  ASSERT_EQ(rr->kvs.size(), 2u);
  EXPECT_EQ(rr->kvs[1].version(), 2);
  reloaded.CheckInvariants();
}

TEST_F(StoreTest, LoadKeepsTheRevisionOfACompactedAwayDelete) {
  Put("a", "1");
  Delete("a");
  ASSERT_TRUE(store.Compact(2).ok());
  EXPECT_EQ(backend.revision_count(), 0u);
  Store reloaded(&backend, nullptr);
  ASSERT_TRUE(reloaded.Load().ok());
  EXPECT_EQ(reloaded.revision(), 2);
}

TEST_F(StoreTest, LoadRefusesCorruptRecords) {
  Put("a", "1");
  backend.revisions()[Revision{1, 0}] = "\xff\xff not a protobuf";
  Store reloaded(&backend, nullptr);
  EXPECT_EQ(reloaded.Load().code(), absl::StatusCode::kDataLoss);
  backend.revisions().clear();
  mvccpb::KeyValue tomb;
  tomb.set_key("ghost");
  tomb.set_mod_revision(1);
  backend.revisions()[Revision{1, 0}] = tomb.SerializeAsString();
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
