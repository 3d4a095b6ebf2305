// The simulated disk under the real SQLite and SqliteStorage: durability exactly at
// Sync, recovery from torn writes, injected errors, determinism, space (capacity, used
// bytes, SQLITE_FULL), and the planted lying fsync.
#include "storage/sim_vfs.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <stdlib.h>

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

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
  explicit Fixture(uint64_t seed, bool planted_skip_sync = false)
      : rng(seed), skip_sync(planted_skip_sync) {}
  Rng rng;
  Nanos now{0};
  int fail_next_sync = 0;  // an SQLite error code to fail the next sync with
  int fail_writes = 0;     // an SQLite error code to fail every write with
  Nanos fsync_latency{0};
  bool skip_sync;          // Hooks::planted_skip_sync
  SimDisk disk{SimDisk::Hooks{
      .rng = &rng,
      .now = [this] { return now; },
      .begin_sync = [this](const std::string&, Nanos not_before) {
        return std::max(now + fsync_latency, not_before);
      },
      .fault = [this](SimDisk::Op op, const std::string&) {
        if (op == SimDisk::Op::kWrite) return fail_writes;
        const int rc = fail_next_sync;
        fail_next_sync = SQLITE_OK;
        return rc;
      },
      .planted_skip_sync = skip_sync}};

  std::unique_ptr<SqliteStorage> Open(SqliteStorage::Options options = {}) {
    disk.PowerOn();
    options.vfs = disk.vfs_name();
    absl::StatusOr<std::unique_ptr<SqliteStorage>> s = SqliteStorage::Open("/node.db", options);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
};

raft::RecoveredState LoadOk(SqliteStorage& s) {
  absl::StatusOr<raft::RecoveredState> r = s.Load();
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : raft::RecoveredState{};
}

// A killed process's writes stay in the page cache: the next process sees them, even a
// transaction whose fsync never succeeded (SQLite's WAL recovery trusts checksums, not
// fsyncs). What it sees must be durable before it acts on it, so opening the store
// syncs the files: a power cut right after the open loses nothing the open showed.
TEST(SimDisk, WhatAKilledProcessWroteIsVisibleAndOpeningMakesItDurable) {
  Fixture f(1);
  auto s = f.Open();
  ASSERT_TRUE(s->Append(Entries(1, 3, 1)).ok());
  ASSERT_TRUE(s->SaveHardState({Term(2), NodeId(3), LogIndex(0)}).ok());
  f.fail_next_sync = SQLITE_IOERR_FSYNC;
  ASSERT_FALSE(s->Sync().ok());  // the frames are written, the fsync failed
  f.disk.ProcessExit();          // the node stops (fail-stop); the machine stays up
  s.reset();
  s = f.Open();
  const raft::RecoveredState seen = LoadOk(*s);
  ASSERT_EQ(seen.entries.size(), 3u);  // from the page cache
  EXPECT_EQ(seen.hard_state.term, Term(2));
  f.disk.Crash(/*tear=*/false);
  s.reset();
  s = f.Open();
  const raft::RecoveredState after = LoadOk(*s);
  EXPECT_EQ(after.entries.size(), 3u) << "the open showed entries that a power cut then took";
  EXPECT_EQ(after.hard_state.term, Term(2));
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

// ---- space: capacity, used bytes, SQLITE_FULL ------------------------------------

// One file opened straight through the disk's VFS, as SQLite opens it, so that a test
// controls every byte written.
class RawFile {
 public:
  RawFile(SimDisk& disk, const char* name, int extra_flags = 0)
      : vfs_(sqlite3_vfs_find(disk.vfs_name())),
        handle_((static_cast<size_t>(vfs_->szOsFile) + sizeof(std::max_align_t) - 1) /
                sizeof(std::max_align_t)) {
    int out = 0;
    open_rc_ = vfs_->xOpen(vfs_, name, file(),
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_MAIN_DB |
                               extra_flags,
                           &out);
    EXPECT_EQ(open_rc_, SQLITE_OK) << name;
  }
  ~RawFile() { Close(); }
  RawFile(const RawFile&) = delete;
  RawFile& operator=(const RawFile&) = delete;

  // Writes `n` bytes of `c` at `offset`.
  int Write(uint64_t offset, size_t n, char c = 'x') {
    const std::string bytes(n, c);
    return file()->pMethods->xWrite(file(), bytes.data(), static_cast<int>(n),
                                    static_cast<sqlite3_int64>(offset));
  }
  int Truncate(uint64_t size) {
    return file()->pMethods->xTruncate(file(), static_cast<sqlite3_int64>(size));
  }
  int Sync() { return file()->pMethods->xSync(file(), SQLITE_SYNC_NORMAL); }
  uint64_t Size() {
    sqlite3_int64 size = -1;
    EXPECT_EQ(file()->pMethods->xFileSize(file(), &size), SQLITE_OK);
    return static_cast<uint64_t>(size);
  }
  void Close() {
    if (file()->pMethods != nullptr) file()->pMethods->xClose(file());
    file()->pMethods = nullptr;
  }

 private:
  sqlite3_file* file() { return reinterpret_cast<sqlite3_file*>(handle_.data()); }
  sqlite3_vfs* vfs_;
  std::vector<std::max_align_t> handle_;  // szOsFile bytes, suitably aligned
  int open_rc_ = SQLITE_OK;
};

int DeleteFile(SimDisk& disk, const char* name) {
  sqlite3_vfs* vfs = sqlite3_vfs_find(disk.vfs_name());
  return vfs->xDelete(vfs, name, /*syncDir=*/0);
}

TEST(SimDiskSpace, UsedBytesIsTheSumOfTheFilesCurrentSizes) {
  Fixture f(1);
  EXPECT_EQ(f.disk.used_bytes(), 0u);
  EXPECT_EQ(f.disk.capacity(), UINT64_MAX);
  RawFile a(f.disk, "/a");
  RawFile b(f.disk, "/b");
  ASSERT_EQ(a.Write(0, 1000), SQLITE_OK);
  EXPECT_EQ(f.disk.used_bytes(), 1000u);
  ASSERT_EQ(b.Write(0, 300), SQLITE_OK);
  EXPECT_EQ(f.disk.used_bytes(), 1300u);
  ASSERT_EQ(a.Write(500, 100), SQLITE_OK);  // inside the file: no growth
  EXPECT_EQ(f.disk.used_bytes(), 1300u);
  ASSERT_EQ(a.Write(2000, 10), SQLITE_OK);  // past the end: the hole counts too
  EXPECT_EQ(a.Size(), 2010u);
  EXPECT_EQ(f.disk.used_bytes(), 2310u);
  ASSERT_EQ(a.Truncate(100), SQLITE_OK);
  EXPECT_EQ(f.disk.used_bytes(), 400u);
  ASSERT_EQ(a.Sync(), SQLITE_OK);  // durability does not change the size
  EXPECT_EQ(f.disk.used_bytes(), 400u);
  EXPECT_EQ(f.disk.free_bytes(), UINT64_MAX - 400u);
}

TEST(SimDiskSpace, DeletingAFileFreesItsBytes) {
  Fixture f(1);
  {
    RawFile a(f.disk, "/a");
    RawFile b(f.disk, "/b");
    ASSERT_EQ(a.Write(0, 1000), SQLITE_OK);
    ASSERT_EQ(b.Write(0, 300), SQLITE_OK);
  }
  ASSERT_EQ(f.disk.used_bytes(), 1300u);
  EXPECT_EQ(DeleteFile(f.disk, "/b"), SQLITE_OK);
  EXPECT_EQ(f.disk.used_bytes(), 1000u);
  (void)DeleteFile(f.disk, "/missing");
  EXPECT_EQ(f.disk.used_bytes(), 1000u);

  // A temporary file goes away when closed.
  RawFile temp(f.disk, "/temp", SQLITE_OPEN_DELETEONCLOSE);
  ASSERT_EQ(temp.Write(0, 700), SQLITE_OK);
  EXPECT_EQ(f.disk.used_bytes(), 1700u);
  temp.Close();
  EXPECT_EQ(f.disk.used_bytes(), 1000u);
}

TEST(SimDiskSpace, AWriteThatWouldGrowTheFilesPastTheCapacityFailsWithSqliteFull) {
  Fixture f(1);
  RawFile a(f.disk, "/a");
  RawFile b(f.disk, "/b");
  ASSERT_EQ(a.Write(0, 1000), SQLITE_OK);
  f.disk.SetCapacity(1500);
  EXPECT_EQ(f.disk.capacity(), 1500u);
  EXPECT_EQ(f.disk.free_bytes(), 500u);

  EXPECT_EQ(a.Write(1000, 501), SQLITE_FULL);
  EXPECT_EQ(a.Size(), 1000u);  // a refused write changes nothing
  EXPECT_EQ(f.disk.used_bytes(), 1000u);
  EXPECT_EQ(b.Write(0, 501), SQLITE_FULL);  // the capacity is the whole disk's
  EXPECT_EQ(f.disk.used_bytes(), 1000u);

  EXPECT_EQ(a.Write(1000, 500), SQLITE_OK);  // exactly full
  EXPECT_EQ(f.disk.used_bytes(), 1500u);
  EXPECT_EQ(f.disk.free_bytes(), 0u);
  EXPECT_EQ(a.Write(0, 1500, 'y'), SQLITE_OK);  // overwriting needs no room
  EXPECT_EQ(a.Write(1499, 2), SQLITE_FULL);     // one byte of growth does
  EXPECT_EQ(b.Write(0, 1), SQLITE_FULL);

  ASSERT_EQ(a.Truncate(1000), SQLITE_OK);  // shrinking frees room
  EXPECT_EQ(f.disk.free_bytes(), 500u);
  EXPECT_EQ(b.Write(0, 500), SQLITE_OK);
  EXPECT_EQ(f.disk.used_bytes(), 1500u);
}

TEST(SimDiskSpace, LoweringTheCapacityBelowWhatIsUsedFailsOnlyLaterGrowth) {
  Fixture f(1);
  RawFile a(f.disk, "/a");
  ASSERT_EQ(a.Write(0, 1000), SQLITE_OK);
  f.disk.SetCapacity(100);
  EXPECT_EQ(f.disk.used_bytes(), 1000u);
  EXPECT_EQ(f.disk.free_bytes(), 0u);
  EXPECT_EQ(a.Write(10, 100, 'z'), SQLITE_OK);
  EXPECT_EQ(a.Write(1000, 1), SQLITE_FULL);
  f.disk.SetCapacity(UINT64_MAX);
  EXPECT_EQ(a.Write(1000, 1), SQLITE_OK);
}

TEST(SimDiskSpace, UsedBytesIsRecomputedFromTheDurableImagesAfterACrash) {
  Fixture f(1);
  {
    RawFile a(f.disk, "/a");
    RawFile b(f.disk, "/b");
    ASSERT_EQ(a.Write(0, 1000), SQLITE_OK);
    ASSERT_EQ(a.Sync(), SQLITE_OK);  // durable at once (no fsync latency)
    ASSERT_EQ(a.Write(1000, 500), SQLITE_OK);  // not synced
    ASSERT_EQ(b.Write(0, 300), SQLITE_OK);     // not synced: b stays, empty
    ASSERT_EQ(f.disk.used_bytes(), 1800u);
    f.disk.Crash(/*tear=*/false);
    EXPECT_EQ(f.disk.used_bytes(), 1000u);
  }
  f.disk.PowerOn();
  RawFile a(f.disk, "/a");
  EXPECT_EQ(a.Size(), 1000u);
  f.disk.SetCapacity(1200);  // the room the lost writes took is free again
  EXPECT_EQ(a.Write(1000, 200), SQLITE_OK);
  EXPECT_EQ(a.Write(1200, 1), SQLITE_FULL);
}

TEST(SimDiskSpace, AFullDiskUnderSqliteStorageIsResourceExhaustedAndLosesNoSyncedWrite) {
  Fixture f(2);
  auto s = f.Open();
  ASSERT_TRUE(s->Append(Entries(1, 3, 1)).ok());
  ASSERT_TRUE(s->SaveHardState({Term(1), NodeId(1), LogIndex(3)}).ok());
  ASSERT_TRUE(s->Sync().ok());
  f.disk.SetCapacity(f.disk.used_bytes());  // not one more byte

  absl::Status st = s->Append(Entries(4, 200, 1, 1000));
  if (st.ok()) st = s->Sync();
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  EXPECT_LE(f.disk.used_bytes(), f.disk.capacity());
  EXPECT_FALSE(s->Sync().ok()) << "fail-stop: the failed transaction is not retried";

  f.disk.Crash(/*tear=*/false);
  s.reset();
  f.disk.SetCapacity(UINT64_MAX);
  s = f.Open();
  const raft::RecoveredState r = LoadOk(*s);
  EXPECT_EQ(r.entries, Entries(1, 3, 1));
  EXPECT_EQ(r.hard_state, (raft::HardState{Term(1), NodeId(1), LogIndex(3)}));
}

TEST(SimDiskSpace, SqliteStorageReportsTheAvailableBytesItIsGiven) {
  Fixture f(2);
  auto s = f.Open({.available_bytes = [&f] { return f.disk.free_bytes(); }});
  const uint64_t used = f.disk.used_bytes();
  ASSERT_GT(used, 0u);
  f.disk.SetCapacity(used + 12345);
  absl::StatusOr<uint64_t> available = s->AvailableBytes();
  ASSERT_TRUE(available.ok()) << available.status();
  EXPECT_EQ(*available, 12345u);
  f.disk.SetCapacity(used);
  EXPECT_EQ(*s->AvailableBytes(), 0u);
}

TEST(SimDiskSpace, SqliteStorageOnTheRealDiskReportsItsDirectorysFreeSpace) {
  char dir[] = "/tmp/keel-sim-vfs-test-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  {
    absl::StatusOr<std::unique_ptr<SqliteStorage>> s =
        SqliteStorage::Open(std::string(dir) + "/node.db", {});
    ASSERT_TRUE(s.ok()) << s.status();
    absl::StatusOr<uint64_t> available = (*s)->AvailableBytes();
    ASSERT_TRUE(available.ok()) << available.status();
    EXPECT_GT(*available, 0u);
    EXPECT_LT(*available, UINT64_MAX);
  }
  std::filesystem::remove_all(dir);
}

// ---- the planted bug: an fsync that lies ------------------------------------------

// Loads what a crash at `crash_at` leaves of three entries synced at 10s.
size_t EntriesAfterACrashAt(Nanos crash_at, bool planted_skip_sync) {
  Fixture f(4, planted_skip_sync);
  f.fsync_latency = Millis(5);
  auto s = f.Open();
  f.now = std::chrono::seconds(10);  // everything Open wrote is durable by now
  EXPECT_TRUE(s->Append(Entries(1, 3, 1)).ok());
  EXPECT_TRUE(s->SaveHardState({Term(1), NodeId(1), LogIndex(3)}).ok());
  EXPECT_TRUE(s->Sync().ok());  // the lie returns OK at once, too
  f.now = crash_at;
  f.disk.Crash(/*tear=*/false);
  s.reset();
  s = f.Open();
  return LoadOk(*s).entries.size();
}

TEST(SimDiskPlantedBugs, ASkippedSyncLosesAcknowledgedWritesToACrashWithinOneSecond) {
  using std::chrono::seconds;
  EXPECT_EQ(EntriesAfterACrashAt(seconds(10) + Millis(999), /*planted_skip_sync=*/true), 0u);
  EXPECT_EQ(EntriesAfterACrashAt(seconds(11), /*planted_skip_sync=*/true), 3u);
  // Without the bug, the same writes are durable once the 5 ms fsync completes.
  EXPECT_EQ(EntriesAfterACrashAt(seconds(10) + Millis(5), /*planted_skip_sync=*/false), 3u);
  EXPECT_EQ(EntriesAfterACrashAt(seconds(10) + Millis(4), /*planted_skip_sync=*/false), 0u);
}

}  // namespace
}  // namespace keel::storage
