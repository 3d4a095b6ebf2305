#include "storage/sqlite_storage.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace keel::storage {
namespace {

using ::testing::HasSubstr;
using raft::Entry;

std::vector<Entry> Entries(uint64_t first, uint64_t count, uint64_t term) {
  std::vector<Entry> out;
  for (uint64_t k = 0; k < count; ++k) {
    out.push_back({Term(term), LogIndex(first + k), raft::EntryType::kNormal,
                   absl::StrCat("v", first + k)});
  }
  return out;
}

class SqliteStorageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/keel-storage-test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/node.db";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<SqliteStorage> OpenOk() {
    absl::StatusOr<std::unique_ptr<SqliteStorage>> s = SqliteStorage::Open(path_, {});
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  void RawSql(const char* sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  }

  // The first column of the first row of `sql`, read by a connection of its own (the
  // storage must be closed: it holds the database exclusively).
  int64_t RawCount(const char* sql) {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    const int64_t v = sqlite3_step(stmt) == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return v;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(SqliteStorageTest, ANewDatabaseLoadsTheEmptyState) {
  auto s = OpenOk();
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->hard_state, raft::HardState{});
  EXPECT_FALSE(r->snapshot.has_value());
  EXPECT_TRUE(r->entries.empty());
}

TEST_F(SqliteStorageTest, SyncedWritesSurviveAReopen) {
  {
    auto s = OpenOk();
    ASSERT_TRUE(s->Append(Entries(1, 5, 1)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(2), NodeId(3), LogIndex(4)}).ok());
    ASSERT_TRUE(s->Sync().ok());
  }
  auto s = OpenOk();
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->hard_state, (raft::HardState{Term(2), NodeId(3), LogIndex(4)}));
  EXPECT_EQ(r->entries, Entries(1, 5, 1));
}

TEST_F(SqliteStorageTest, WritesNotSyncedAreLostAsInACrash) {
  {
    auto s = OpenOk();
    ASSERT_TRUE(s->Append(Entries(1, 2, 1)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(1), NodeId(1), LogIndex(0)}).ok());
    ASSERT_TRUE(s->Sync().ok());
    ASSERT_TRUE(s->Append(Entries(3, 2, 1)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(1), NodeId(1), LogIndex(4)}).ok());
    // Closed without Sync: the open transaction never committed.
  }
  auto s = OpenOk();
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->entries, Entries(1, 2, 1));
  EXPECT_EQ(r->hard_state, (raft::HardState{Term(1), NodeId(1), LogIndex(0)}));
}

TEST_F(SqliteStorageTest, AppendReplacesTheConflictingSuffix) {
  auto s = OpenOk();
  ASSERT_TRUE(s->Append(Entries(1, 5, 1)).ok());
  ASSERT_TRUE(s->Append(Entries(3, 1, 2)).ok());
  ASSERT_TRUE(s->SaveHardState({Term(2), NodeId(0), LogIndex(0)}).ok());
  ASSERT_TRUE(s->Sync().ok());
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->entries.size(), 3u);
  EXPECT_EQ(r->entries[2].term, Term(2));
}

TEST_F(SqliteStorageTest, AnInstalledSnapshotReplacesTheWholeLog) {
  auto s = OpenOk();
  ASSERT_TRUE(s->Append(Entries(1, 5, 1)).ok());
  ASSERT_TRUE(s->InstallSnapshot({LogIndex(10), Term(3), "state"}).ok());
  ASSERT_TRUE(s->Append(Entries(11, 2, 3)).ok());
  ASSERT_TRUE(s->SaveHardState({Term(3), NodeId(0), LogIndex(10)}).ok());
  ASSERT_TRUE(s->Sync().ok());
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->snapshot.has_value());
  EXPECT_EQ(*r->snapshot, (raft::Snapshot{LogIndex(10), Term(3), "state"}));
  EXPECT_EQ(r->entries, Entries(11, 2, 3));
}

TEST_F(SqliteStorageTest, AnOwnSnapshotKeepsTheLogAndCompactionDropsItsPrefix) {
  auto s = OpenOk();
  ASSERT_TRUE(s->Append(Entries(1, 10, 1)).ok());
  ASSERT_TRUE(s->SaveSnapshot({LogIndex(8), Term(1), "at 8"}).ok());
  ASSERT_TRUE(s->SaveSnapshot({LogIndex(5), Term(1), "older, ignored"}).ok());
  ASSERT_TRUE(s->Compact(LogIndex(6)).ok());
  ASSERT_TRUE(s->SaveHardState({Term(1), NodeId(0), LogIndex(8)}).ok());
  ASSERT_TRUE(s->Sync().ok());
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->snapshot->data, "at 8");
  EXPECT_EQ(r->entries, Entries(9, 2, 1));  // only entries after the snapshot are loaded
}

// Compaction is spread over the Syncs that follow (a slice each), so that no one commit
// stalls on a whole snapshot's worth of entries; what is left is never loaded, and what a
// restart forgot is dropped by the next compaction.
TEST_F(SqliteStorageTest, CompactionDropsItsEntriesASliceAtEachSyncAndLoadNeverSeesThem) {
  SqliteStorage::Options options;
  options.compact_entries_per_sync = 4;
  auto open = [&] {
    absl::StatusOr<std::unique_ptr<SqliteStorage>> s = SqliteStorage::Open(path_, options);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  };
  {
    auto s = open();
    ASSERT_TRUE(s->Append(Entries(1, 20, 1)).ok());
    ASSERT_TRUE(s->SaveSnapshot({LogIndex(12), Term(1), "at 12"}).ok());
    ASSERT_TRUE(s->Compact(LogIndex(10)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(1), NodeId(0), LogIndex(12)}).ok());
    ASSERT_TRUE(s->Sync().ok());  // the first slice: entries 1-4
  }
  EXPECT_EQ(RawCount("SELECT count(*) FROM raft_log"), 16);
  {
    auto s = open();  // the rest of that compaction is forgotten: 5-10 stay for now
    absl::StatusOr<raft::RecoveredState> r = s->Load();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->entries, Entries(13, 8, 1));  // only after the snapshot
    ASSERT_TRUE(s->Compact(LogIndex(11)).ok());  // the next compaction takes them too
    for (uint64_t i = 21; i <= 22; ++i) {        // a slice with each write's Sync
      ASSERT_TRUE(s->Append(Entries(i, 1, 1)).ok());
      ASSERT_TRUE(s->Sync().ok());
    }
    ASSERT_TRUE(s->Sync().ok());  // nothing staged: no transaction, nothing dropped
  }
  EXPECT_EQ(RawCount("SELECT count(*) FROM raft_log"), 11);  // 12..22
  EXPECT_EQ(RawCount("SELECT min(idx) FROM raft_log"), 12);
  auto s = open();
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->entries, Entries(13, 10, 1));
}

TEST_F(SqliteStorageTest, ACompactionSliceOfZeroEntriesIsRefusedAtOpen) {
  SqliteStorage::Options options;
  options.compact_entries_per_sync = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(SqliteStorage::Open(path_, options).status()));
}

TEST_F(SqliteStorageTest, ADatabaseFromANewerKeelIsRefusedNotReset) {
  OpenOk();
  RawSql("UPDATE meta SET value = 3 WHERE key = 'schema_version'");
  absl::StatusOr<std::unique_ptr<SqliteStorage>> s = SqliteStorage::Open(path_, {});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("newer"));
}

TEST_F(SqliteStorageTest, AVersionOneDatabaseIsUpgradedInPlaceKeepingItsLog) {
  {
    auto s = OpenOk();
    ASSERT_TRUE(s->Append(Entries(1, 3, 1)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(1), kNoNode, LogIndex(0)}).ok());
    ASSERT_TRUE(s->Sync().ok());
  }
  RawSql("DROP TABLE kv; DROP TABLE lease; DROP TABLE request; "
         "UPDATE meta SET value = 1 WHERE key = 'schema_version'");
  auto s = OpenOk();
  ASSERT_NE(s, nullptr);
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->entries, Entries(1, 3, 1));
  ASSERT_TRUE(s->PutRevision(kv::Revision{1, 0}, "x").ok());
  ASSERT_TRUE(s->Sync().ok());
}

// The keyspace shares the log's transaction: one Sync makes both durable, and a crash
// before it loses both (DESIGN.md: applied changes and the log in one fsync).
TEST_F(SqliteStorageTest, KeyspaceWritesCommitWithTheLogAndAreLostWithIt) {
  {
    auto s = OpenOk();
    ASSERT_TRUE(s->Append(Entries(1, 1, 1)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(1), kNoNode, LogIndex(0)}).ok());
    ASSERT_TRUE(s->PutRevision(kv::Revision{1, 0}, "one").ok());
    ASSERT_TRUE(s->PutMeta("consistent_index", 1).ok());
    ASSERT_TRUE(s->PutLease(7, "lease seven").ok());
    ASSERT_TRUE(s->Sync().ok());
    ASSERT_TRUE(s->Append(Entries(2, 1, 1)).ok());
    ASSERT_TRUE(s->PutRevision(kv::Revision{2, 0}, "two").ok());
    ASSERT_TRUE(s->PutMeta("consistent_index", 2).ok());
    ASSERT_TRUE(s->DeleteLease(7).ok());
    EXPECT_EQ(*s->GetRevision(kv::Revision{2, 0}), "two") << "reads see staged writes";
    EXPECT_EQ(**s->GetMeta("consistent_index"), 2);
  }  // closed without Sync: as a crash
  auto s = OpenOk();
  EXPECT_EQ(s->Load()->entries, Entries(1, 1, 1));
  EXPECT_EQ(*s->GetRevision(kv::Revision{1, 0}), "one");
  EXPECT_TRUE(absl::IsNotFound(s->GetRevision(kv::Revision{2, 0}).status()));
  EXPECT_EQ(**s->GetMeta("consistent_index"), 1);
  std::vector<std::pair<int64_t, std::string>> leases;
  ASSERT_TRUE(s->ScanLeases([&](int64_t id, std::string_view bytes) {
    leases.emplace_back(id, std::string(bytes));
  }).ok());
  EXPECT_EQ(leases, (std::vector<std::pair<int64_t, std::string>>{{7, "lease seven"}}));
  EXPECT_FALSE(s->GetMeta("never written")->has_value());
}

TEST_F(SqliteStorageTest, RevisionScansAreOrderedAndBounded) {
  auto s = OpenOk();
  for (int64_t main : {3, 1, 2, 5}) {
    for (int64_t sub : {1, 0}) {
      ASSERT_TRUE(s->PutRevision(kv::Revision{main, sub}, absl::StrCat(main, ".", sub)).ok());
    }
  }
  ASSERT_TRUE(s->DeleteRevision(kv::Revision{2, 1}).ok());
  std::vector<std::string> seen;
  ASSERT_TRUE(s->ScanRevisions(2, 5, [&](kv::Revision, std::string_view bytes) {
    seen.emplace_back(bytes);
    return true;
  }).ok());
  EXPECT_THAT(seen, ::testing::ElementsAre("2.0", "3.0", "3.1"));
  seen.clear();
  ASSERT_TRUE(s->ScanRevisions(0, 100, [&](kv::Revision, std::string_view bytes) {
    seen.emplace_back(bytes);
    return seen.size() < 2;
  }).ok());
  EXPECT_THAT(seen, ::testing::ElementsAre("1.0", "1.1")) << "the visitor stops the scan";
  EXPECT_FALSE(s->PutRevision(kv::Revision{1, 0}, "again").ok()) << "a revision is written once";
}

TEST_F(SqliteStorageTest, ADatabaseThatIsNotKeelsIsRefused) {
  RawSql("CREATE TABLE users (name TEXT)");
  absl::StatusOr<std::unique_ptr<SqliteStorage>> s = SqliteStorage::Open(path_, {});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("not a keel database"));
}

TEST_F(SqliteStorageTest, AFileThatIsNotADatabaseIsRefused) {
  std::ofstream(path_) << std::string(8192, 'x');
  absl::StatusOr<std::unique_ptr<SqliteStorage>> s = SqliteStorage::Open(path_, {});
  EXPECT_FALSE(s.ok());
}

TEST_F(SqliteStorageTest, AHardStateBehindItsLogIsReportedAsDataLoss) {
  {
    auto s = OpenOk();
    ASSERT_TRUE(s->Append(Entries(1, 2, 5)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(4), NodeId(0), LogIndex(0)}).ok());
    ASSERT_TRUE(s->Sync().ok());
  }
  auto s = OpenOk();
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
}

TEST_F(SqliteStorageTest, AGapInTheLogIsReportedAsDataLoss) {
  {
    auto s = OpenOk();
    ASSERT_TRUE(s->Append(Entries(1, 5, 1)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(1), NodeId(0), LogIndex(0)}).ok());
    ASSERT_TRUE(s->Sync().ok());
  }
  RawSql("PRAGMA journal_mode=WAL; DELETE FROM raft_log WHERE idx = 3");
  auto s = OpenOk();
  absl::StatusOr<raft::RecoveredState> r = s->Load();
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("gap before index 4"));
}

}  // namespace
}  // namespace keel::storage
