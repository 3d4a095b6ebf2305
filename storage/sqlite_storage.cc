#include "storage/sqlite_storage.h"

#include <sqlite3.h>
#include <sys/statvfs.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "storage/sqlite_statement.h"

namespace keel::storage {
namespace {

constexpr int64_t kSchemaVersion = 2;

constexpr const char* kSchema = R"sql(
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER NOT NULL,
                         vote INTEGER NOT NULL, commit_index INTEGER NOT NULL);
CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 0), idx INTEGER NOT NULL,
                       term INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,
                       type INTEGER NOT NULL, data BLOB NOT NULL);
INSERT INTO meta (key, value) VALUES ('schema_version', 1);
)sql";

// Version 1 -> 2: the keyspace's tables.
constexpr const char* kUpgradeTo2 = R"sql(
CREATE TABLE kv (main INTEGER NOT NULL, sub INTEGER NOT NULL, data BLOB NOT NULL,
                 PRIMARY KEY (main, sub)) WITHOUT ROWID;
CREATE TABLE lease (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE request (id INTEGER PRIMARY KEY, idx INTEGER NOT NULL);
CREATE INDEX request_by_idx ON request (idx);
UPDATE meta SET value = 2 WHERE key = 'schema_version';
)sql";

}  // namespace


SqliteStorage::SqliteStorage(sqlite3* db, std::string path, Options options)
    : db_(db), path_(std::move(path)), options_(std::move(options)) {}

SqliteStorage::~SqliteStorage() {
  stmts_.reset();  // finalized before the close
  // An open transaction is rolled back: unsynced writes are lost, as after a crash.
  sqlite3_close_v2(db_);
}

absl::StatusOr<std::unique_ptr<SqliteStorage>> SqliteStorage::Open(const std::string& path,
                                                                   const Options& options) {
  if (options.compact_entries_per_sync < 1) {
    return absl::InvalidArgumentError("compact_entries_per_sync must be at least 1");
  }
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                     SQLITE_OPEN_NOMUTEX,
                                 options.vfs.empty() ? nullptr : options.vfs.c_str());
  if (rc != SQLITE_OK) {
    absl::Status st = StatusFor(rc, absl::StrCat("open ", path), db);
    sqlite3_close_v2(db);
    return st;
  }
  std::unique_ptr<SqliteStorage> storage(new SqliteStorage(db, path, options));
  if (absl::Status st = storage->Initialize(); !st.ok()) return st;
  return storage;
}

absl::Status SqliteStorage::Error(const char* what) const {
  return StatusFor(sqlite3_errcode(db_), what, db_);
}

absl::Status SqliteStorage::Exec(const char* sql) {
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
    failed_ = true;
    return Error(sql);
  }
  return absl::OkStatus();
}

absl::Status SqliteStorage::Initialize() {
  // EXCLUSIVE before WAL: the WAL index then lives in heap memory, no -shm file.
  if (absl::Status st = Exec("PRAGMA locking_mode=EXCLUSIVE"); !st.ok()) return st;
  {
    Stmt wal(db_, "PRAGMA journal_mode=WAL");
    if (!wal.Step() || wal.Blob(0) != "wal") {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot use WAL journal mode: ", sqlite3_errmsg(db_)));
    }
  }
  if (absl::Status st = Exec("PRAGMA synchronous=FULL"); !st.ok()) return st;
  if (absl::Status st = Exec(absl::StrCat("PRAGMA wal_autocheckpoint=",
                                         options_.wal_autocheckpoint_pages).c_str());
      !st.ok()) {
    return st;
  }

  Stmt tables(db_, "SELECT count(*) FROM sqlite_schema");
  if (!tables.Step()) return Error("read the schema");
  if (tables.U64(0) == 0) {
    if (absl::Status st = Exec("BEGIN"); !st.ok()) return st;
    if (absl::Status st = Exec(kSchema); !st.ok()) return st;
    if (absl::Status st = Exec(kUpgradeTo2); !st.ok()) return st;
    if (absl::Status st = Exec("COMMIT"); !st.ok()) return st;
    return Prepare();
  }
  Stmt version(db_, "SELECT value FROM meta WHERE key = 'schema_version'");
  if (!version.Step() || version.Type(0) != SQLITE_INTEGER) {
    return absl::FailedPreconditionError(
        "not a keel database (no schema version); refusing to touch it");
  }
  const int64_t v = static_cast<int64_t>(version.U64(0));
  version.Reset();
  if (v == 1) {
    if (absl::Status st = Upgrade(v); !st.ok()) return st;
    return Prepare();
  }
  if (v != kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "database schema version ", v, v > kSchemaVersion ? " is newer than" : " differs from",
        " this keel's (", kSchemaVersion, "); refusing to open it"));
  }
  return Prepare();
}

absl::Status SqliteStorage::Upgrade(int64_t from_version) {
  KEEL_ASSERT(from_version == 1);
  // One transaction: a crash leaves version 1 or version 2, never half of it.
  if (absl::Status st = Exec("BEGIN"); !st.ok()) return st;
  if (absl::Status st = Exec(kUpgradeTo2); !st.ok()) return st;
  return Exec("COMMIT");
}

absl::Status SqliteStorage::Prepare() {
  stmts_ = std::make_unique<Statements>(db_);
  if (!stmts_->ok()) return Error("prepare statements");
  return SyncFiles();
}

absl::Status SqliteStorage::SyncFiles() {
  // What this process read may still be only in the page cache: written by a process
  // that was killed before its fsync returned. Acting on it (acknowledging entries, say)
  // and then losing it to a power cut would break Raft, so it is made durable first.
  for (int op : {SQLITE_FCNTL_FILE_POINTER, SQLITE_FCNTL_JOURNAL_POINTER}) {
    sqlite3_file* file = nullptr;
    if (sqlite3_file_control(db_, "main", op, &file) != SQLITE_OK || file == nullptr ||
        file->pMethods == nullptr) {
      continue;  // no WAL file open (an empty WAL was deleted): nothing to sync
    }
    if (const int rc = file->pMethods->xSync(file, SQLITE_SYNC_FULL); rc != SQLITE_OK) {
      failed_ = true;
      return StatusFor(rc, "sync the database files at open", nullptr);
    }
  }
  return absl::OkStatus();
}

absl::Status SqliteStorage::Begin() {
  if (failed_) return absl::FailedPreconditionError("storage failed earlier (fail-stop)");
  if (in_transaction_) return absl::OkStatus();
  if (!RunOnce(stmts_->begin)) return failed_ = true, Error("BEGIN");
  in_transaction_ = true;
  return absl::OkStatus();
}

absl::StatusOr<raft::RecoveredState> SqliteStorage::Load() {
  if (in_transaction_) return absl::FailedPreconditionError("Load with unsynced writes");
  raft::RecoveredState out;
  Stmt hs(db_, "SELECT term, vote, commit_index FROM hard_state WHERE id = 0");
  if (hs.Step()) out.hard_state = {Term(hs.U64(0)), NodeId(hs.U64(1)), LogIndex(hs.U64(2))};
  if (!hs.ok()) return Error("read hard_state");

  Stmt snap(db_, "SELECT idx, term, data FROM snapshot WHERE id = 0");
  if (snap.Step()) {
    out.snapshot = raft::Snapshot{LogIndex(snap.U64(0)), Term(snap.U64(1)), snap.Blob(2)};
    if (out.snapshot->index.value == 0 || out.snapshot->term.IsZero()) {
      return absl::DataLossError("snapshot row without index or term");
    }
  }
  if (!snap.ok()) return Error("read snapshot");

  const LogIndex after = out.snapshot ? out.snapshot->index : LogIndex(0);
  Stmt log(db_, "SELECT idx, term, type, data FROM raft_log WHERE idx > ? ORDER BY idx");
  log.Bind(1, after.value);
  Term previous = out.snapshot ? out.snapshot->term : Term(0);
  while (log.Step()) {
    const LogIndex index(log.U64(0));
    const Term term(log.U64(1));
    if (index != after + 1 + out.entries.size()) {
      return absl::DataLossError(absl::StrCat("raft log has a gap before index ", index.value));
    }
    if (term.IsZero() || term < previous || log.U64(2) != 0) {
      return absl::DataLossError(absl::StrCat("raft log entry ", index.value, " is malformed"));
    }
    previous = term;
    out.entries.push_back({term, index, raft::EntryType::kNormal, log.Blob(3)});
  }
  if (!log.ok()) return Error("read raft_log");
  if (out.hard_state.term < previous) {
    return absl::DataLossError("hard state term is behind the log");
  }
  return out;
}

absl::Status SqliteStorage::Append(std::span<const raft::Entry> entries) {
  if (entries.empty()) return absl::OkStatus();
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& drop = stmts_->truncate;
  drop.Reset();
  drop.Bind(1, entries.front().index.value).Step();
  if (!drop.ok()) return failed_ = true, Error("truncate raft_log");
  Stmt& row = stmts_->insert;
  for (const raft::Entry& e : entries) {
    row.Reset();
    row.Bind(1, e.index.value).Bind(2, e.term.value).Bind(3, static_cast<uint64_t>(e.type))
        .Bind(4, e.data).Step();
    if (!row.ok()) return failed_ = true, Error("append to raft_log");
  }
  return absl::OkStatus();
}

absl::Status SqliteStorage::SaveHardState(const raft::HardState& state) {
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& upsert = stmts_->hard_state;
  upsert.Reset();
  upsert.Bind(1, state.term.value).Bind(2, state.vote.value).Bind(3, state.commit.value).Step();
  if (!upsert.ok()) return failed_ = true, Error("save hard_state");
  return absl::OkStatus();
}

absl::Status SqliteStorage::WriteSnapshotRow(const raft::Snapshot& snapshot) {
  Stmt& upsert = stmts_->snapshot;
  upsert.Reset();
  upsert.Bind(1, snapshot.index.value).Bind(2, snapshot.term.value).Bind(3, snapshot.data)
      .Step();
  if (!upsert.ok()) return failed_ = true, Error("save snapshot");
  return absl::OkStatus();
}

absl::Status SqliteStorage::SaveSnapshot(const raft::Snapshot& snapshot) {
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& current = stmts_->snapshot_index;
  current.Reset();
  const bool newer_exists = current.Step() && current.U64(0) >= snapshot.index.value;
  if (!current.ok()) return failed_ = true, Error("read snapshot");
  current.Reset();  // ends the read before the commit
  if (newer_exists) return absl::OkStatus();
  return WriteSnapshotRow(snapshot);
}

absl::Status SqliteStorage::InstallSnapshot(const raft::Snapshot& snapshot) {
  if (absl::Status st = Begin(); !st.ok()) return st;
  if (absl::Status st = Exec("DELETE FROM raft_log"); !st.ok()) return st;
  return WriteSnapshotRow(snapshot);
}

absl::Status SqliteStorage::Compact(LogIndex through) {
  if (failed_) return absl::FailedPreconditionError("storage failed earlier (fail-stop)");
  // Dropped in slices by the next Syncs. Until then the entries are still in the file,
  // but nothing reads them: Load returns only entries after the snapshot, and
  // `through` is at or below it.
  compact_through_ = std::max(compact_through_, through.value);
  compacting_ = true;
  return absl::OkStatus();
}

absl::Status SqliteStorage::CompactSlice() {
  Stmt& drop = stmts_->compact;
  drop.Reset();
  drop.Bind(1, compact_through_)
      .Bind(2, static_cast<uint64_t>(options_.compact_entries_per_sync))
      .Step();
  if (!drop.ok()) return failed_ = true, Error("compact raft_log");
  compacting_ = sqlite3_changes(db_) >= options_.compact_entries_per_sync;  // maybe more
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> SqliteStorage::AvailableBytes() {
  if (options_.available_bytes) return options_.available_bytes();
  std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  if (dir.empty()) dir = ".";
  struct statvfs fs;
  if (statvfs(dir.c_str(), &fs) != 0) {
    return absl::InternalError(absl::StrCat("statvfs ", dir.string(), ": ", std::strerror(errno)));
  }
  return static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
}

absl::Status SqliteStorage::Sync() {
  if (failed_) return absl::FailedPreconditionError("storage failed earlier (fail-stop)");
  if (!in_transaction_) return absl::OkStatus();
  if (compacting_) {
    if (absl::Status st = CompactSlice(); !st.ok()) return st;
  }
  in_transaction_ = false;
  // synchronous=FULL: the WAL is fsynced before COMMIT returns.
  if (!RunOnce(stmts_->commit)) return failed_ = true, Error("COMMIT");
  return absl::OkStatus();
}

}  // namespace keel::storage
