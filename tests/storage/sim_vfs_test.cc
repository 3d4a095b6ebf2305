// The simulated disk under the real SQLite and SqliteStorage: durability exactly at
// Sync, recovery from torn writes, injected errors, and determinism.
#include "storage/sim_vfs.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include "absl/strings/str_cat.h"
#include "storage/sqlite_storage.h"

namespace keel::storage {
namespace {

using raft::Entry;

std::vector<Entry> Entries(uint64_t first, uint64_t count, uint64_t term, size_t bytes = 100) {
  std::vector<Entry> out;
  for (uint64_t k = 0; k < count; ++k) {
    out.push_back({Term(term), LogIndex(first + k), raft::EntryType::kNormal,
                   absl::StrCat(first + k, ":", std::string(bytes, 'x'))});
  }
  return out;
}

struct Fixture {
  explicit Fixture(uint64_t seed) : rng(seed) {}
  Rng rng;
  Nanos now{0};
  int fail_next_sync = 0;  // an SQLite error code to fail the next sync with
  int fail_writes = 0;     // an SQLite error code to fail every write with
  Nanos fsync_latency{0};
  SimDisk disk{SimDisk::Hooks{
      .rng = &rng,
      .now = [this] { return now; },
      .begin_sync = [this](const std::string&) { return now + fsync_latency; },
      .fault = [this](SimDisk::Op op, const std::string&) {
        if (op == SimDisk::Op::kWrite) return fail_writes;
        const int rc = fail_next_sync;
        fail_next_sync = SQLITE_OK;
        return rc;
      }}};

  std::unique_ptr<SqliteStorage> Open() {
    disk.PowerOn();
    absl::StatusOr<std::unique_ptr<SqliteStorage>> s =
        SqliteStorage::Open("/node.db", {.vfs = disk.vfs_name()});
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
};

raft::RecoveredState LoadOk(SqliteStorage& s) {
  absl::StatusOr<raft::RecoveredState> r = s.Load();
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : raft::RecoveredState{};
}

TEST(SimDisk, SyncedWritesSurviveACrashAndUnsyncedOnesDoNot) {
  Fixture f(1);
  auto s = f.Open();
  ASSERT_TRUE(s->Append(Entries(1, 3, 1)).ok());
  ASSERT_TRUE(s->SaveHardState({Term(1), NodeId(1), LogIndex(2)}).ok());
  ASSERT_TRUE(s->Sync().ok());
  ASSERT_TRUE(s->Append(Entries(4, 3, 1)).ok());  // never synced
  f.disk.Crash(/*tear=*/false);
  s.reset();  // the old connection is dead: closing it writes nothing
  s = f.Open();
  raft::RecoveredState r = LoadOk(*s);
  EXPECT_EQ(r.entries, Entries(1, 3, 1));
  EXPECT_EQ(r.hard_state, (raft::HardState{Term(1), NodeId(1), LogIndex(2)}));
}

TEST(SimDisk, ASyncIsDurableOnlyOnceItCompletes) {
  for (const bool crash_before : {true, false}) {
    Fixture f(3);
    f.fsync_latency = Millis(5);
    auto s = f.Open();
    ASSERT_TRUE(s->Append(Entries(1, 3, 1)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(1), NodeId(1), LogIndex(0)}).ok());
    ASSERT_TRUE(s->Sync().ok());  // the commit's fsyncs complete 5 ms from now
    f.now = crash_before ? Millis(4) : Millis(5);
    f.disk.Crash(/*tear=*/false);
    s.reset();
    s = f.Open();
    raft::RecoveredState r = LoadOk(*s);
    EXPECT_EQ(r.entries.size(), crash_before ? 0u : 3u) << "crash_before=" << crash_before;
  }
}

// Regression: a checkpoint that SQLite believes finished (its database fsync returned)
// but that was not yet durable at the power cut, then the old connection's close, which
// deletes the WAL after a finished checkpoint. The disk being off keeps the WAL.
TEST(SimDisk, ClosingTheOldConnectionAfterACrashKeepsTheWal) {
  Fixture f(5);
  f.fsync_latency = Millis(5);
  f.disk.PowerOn();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2("/raw.db", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                            f.disk.vfs_name()), SQLITE_OK);
  auto exec = [](sqlite3* d, const char* sql) {
    return sqlite3_exec(d, sql, nullptr, nullptr, nullptr);
  };
  ASSERT_EQ(exec(db, "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; "
                     "PRAGMA synchronous=FULL; CREATE TABLE t (v INTEGER); "
                     "INSERT INTO t VALUES (42);"), SQLITE_OK);
  f.now = Millis(100);  // everything so far is durable
  ASSERT_EQ(exec(db, "PRAGMA wal_checkpoint(PASSIVE)"), SQLITE_OK);  // its fsyncs: in flight
  f.disk.Crash(/*tear=*/false);
  sqlite3_close_v2(db);  // would checkpoint (a no-op) and delete the WAL
  f.disk.PowerOn();
  ASSERT_EQ(sqlite3_open_v2("/raw.db", &db, SQLITE_OPEN_READWRITE, f.disk.vfs_name()),
            SQLITE_OK);
  ASSERT_EQ(exec(db, "PRAGMA locking_mode=EXCLUSIVE"), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT v FROM t", -1, &stmt, nullptr), SQLITE_OK)
      << sqlite3_errmsg(db);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(stmt, 0), 42);
  sqlite3_finalize(stmt);
  sqlite3_close_v2(db);
}

TEST(SimDisk, AFailedFsyncThenATornCrashRecoversTheLastSyncedState) {
  // The commit's WAL frames are written but their fsync fails (EIO); the power then
  // goes out mid-write. SQLite's checksummed WAL must discard the torn tail.
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    Fixture f(seed);
    auto s = f.Open();
    ASSERT_TRUE(s->Append(Entries(1, 20, 1, 700)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(1), NodeId(1), LogIndex(20)}).ok());
    ASSERT_TRUE(s->Sync().ok());
    ASSERT_TRUE(s->Append(Entries(21, 20, 2, 700)).ok());
    ASSERT_TRUE(s->SaveHardState({Term(2), NodeId(2), LogIndex(40)}).ok());
    f.fail_next_sync = SQLITE_IOERR_FSYNC;
    absl::Status st = s->Sync();
    ASSERT_FALSE(st.ok()) << "seed " << seed;
    EXPECT_FALSE(s->Append(Entries(41, 1, 2)).ok()) << "fail-stop: no writes after a failed sync";
    f.disk.Crash(/*tear=*/true);
    s.reset();
    s = f.Open();
    raft::RecoveredState r = LoadOk(*s);
    EXPECT_EQ(r.entries, Entries(1, 20, 1, 700)) << "seed " << seed;
    EXPECT_EQ(r.hard_state, (raft::HardState{Term(1), NodeId(1), LogIndex(20)}));
  }
}

TEST(SimDisk, ADiskFullWriteIsReportedAsResourceExhausted) {
  Fixture f(2);
  auto s = f.Open();
  f.fail_writes = SQLITE_FULL;
  absl::Status st = s->Append(Entries(1, 2000, 1, 2000));  // spills pages: must write
  if (st.ok()) st = s->Sync();
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
}

TEST(SimDisk, TheSameSeedWritesTheSameBytes) {
  auto run = [](uint64_t seed) {
    SimDisk::SeedSqlite(seed);
    Fixture f(seed);
    auto s = f.Open();
    for (uint64_t k = 0; k < 5; ++k) {
      EXPECT_TRUE(s->Append(Entries(1 + 10 * k, 10, 1)).ok());
      EXPECT_TRUE(s->SaveHardState({Term(1), NodeId(1), LogIndex(10 * k)}).ok());
      EXPECT_TRUE(s->Sync().ok());
    }
    const uint64_t digest = f.disk.DurableDigest();  // with the WAL, before the close
    f.disk.Crash(false);
    return digest;
  };
  EXPECT_EQ(run(9), run(9));
  EXPECT_NE(run(9), run(10)) << "SQLite's randomness (WAL salts) must come from the seed";
}

}  // namespace
}  // namespace keel::storage
