#include "sim/sim_storage.h"

#include <gtest/gtest.h>

namespace keel::sim {
namespace {

using raft::Entry;

struct Disk {
  Nanos now{0};
  Nanos latency{Millis(5)};
  Nanos busy_until{0};
  SimStorage storage{SimStorage::Hooks{
      .now = [this] { return now; },
      .begin_sync = [this] {
        busy_until = std::max(now, busy_until) + latency;
        return busy_until;
      }}};
};

std::vector<Entry> Entries(uint64_t first, uint64_t count, uint64_t term) {
  std::vector<Entry> out;
  for (uint64_t k = 0; k < count; ++k) {
    out.push_back({Term(term), LogIndex(first + k), raft::EntryType::kNormal, "v"});
  }
  return out;
}

TEST(SimStorage, UnsyncedWritesAreLostInACrash) {
  Disk d;
  ASSERT_TRUE(d.storage.Append(Entries(1, 3, 1)).ok());
  d.storage.Crash(Millis(100));
  EXPECT_TRUE(d.storage.Load()->entries.empty());
}

TEST(SimStorage, ASyncStillInFlightIsLostInACrash) {
  Disk d;
  ASSERT_TRUE(d.storage.Append(Entries(1, 3, 1)).ok());
  ASSERT_TRUE(d.storage.SaveHardState({Term(1), NodeId(2), LogIndex(0)}).ok());
  ASSERT_TRUE(d.storage.Sync().ok());  // completes at 5 ms
  d.storage.Crash(Millis(4));
  absl::StatusOr<raft::RecoveredState> r = d.storage.Load();
  EXPECT_TRUE(r->entries.empty());
  EXPECT_EQ(r->hard_state.vote, NodeId(0));
}

TEST(SimStorage, ACompletedSyncSurvivesACrash) {
  Disk d;
  ASSERT_TRUE(d.storage.Append(Entries(1, 3, 1)).ok());
  ASSERT_TRUE(d.storage.SaveHardState({Term(1), NodeId(2), LogIndex(2)}).ok());
  ASSERT_TRUE(d.storage.Sync().ok());
  ASSERT_TRUE(d.storage.Append(Entries(4, 1, 1)).ok());  // staged, never synced
  d.storage.Crash(Millis(5));
  absl::StatusOr<raft::RecoveredState> r = d.storage.Load();
  EXPECT_EQ(r->entries.size(), 3u);
  EXPECT_EQ(r->hard_state, (raft::HardState{Term(1), NodeId(2), LogIndex(2)}));
}

TEST(SimStorage, SecondSyncInOneEventCompletesAfterTheFirst) {
  Disk d;
  ASSERT_TRUE(d.storage.Append(Entries(1, 1, 1)).ok());
  ASSERT_TRUE(d.storage.Sync().ok());  // 0 -> 5 ms
  ASSERT_TRUE(d.storage.Append(Entries(2, 1, 1)).ok());
  ASSERT_TRUE(d.storage.Sync().ok());  // 5 -> 10 ms
  d.storage.Crash(Millis(7));
  EXPECT_EQ(d.storage.Load()->entries.size(), 1u);
}

TEST(SimStorage, AppendOverwritesTheConflictingSuffix) {
  Disk d;
  ASSERT_TRUE(d.storage.Append(Entries(1, 5, 1)).ok());
  ASSERT_TRUE(d.storage.Append(Entries(3, 1, 2)).ok());
  ASSERT_TRUE(d.storage.Sync().ok());
  d.now = Millis(10);
  d.storage.Crash(d.now);
  absl::StatusOr<raft::RecoveredState> r = d.storage.Load();
  ASSERT_EQ(r->entries.size(), 3u);
  EXPECT_EQ(r->entries[2].term, Term(2));
}

TEST(SimStorage, InstalledSnapshotReplacesTheLogAndLoadStartsAfterIt) {
  Disk d;
  ASSERT_TRUE(d.storage.Append(Entries(1, 5, 1)).ok());
  ASSERT_TRUE(d.storage.InstallSnapshot({LogIndex(10), Term(3), "state"}).ok());
  ASSERT_TRUE(d.storage.Append(Entries(11, 2, 3)).ok());
  ASSERT_TRUE(d.storage.Sync().ok());
  d.storage.Crash(Millis(10));
  absl::StatusOr<raft::RecoveredState> r = d.storage.Load();
  ASSERT_TRUE(r->snapshot.has_value());
  EXPECT_EQ(r->snapshot->index, LogIndex(10));
  ASSERT_EQ(r->entries.size(), 2u);
  EXPECT_EQ(r->entries[0].index, LogIndex(11));
}

}  // namespace
}  // namespace keel::sim
