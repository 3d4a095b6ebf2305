#pragma once
// SqliteStorage: the durable state of one node in one SQLite database: the Raft log
// (server::Storage) and the keyspace (kv::Backend), in one file so that one
// transaction, one fsync, holds a Ready's entries and what applying them changed.
//
// Schema (version 2):
//   meta(key TEXT PRIMARY KEY, value INTEGER)     'schema_version' = 2, and the
//                                                  keyspace's named integers (kv::Backend)
//   hard_state(id = 0, term, vote, commit_index)   at most one row
//   snapshot(id = 0, idx, term, data BLOB)         the latest snapshot, at most one row
//   raft_log(idx INTEGER PRIMARY KEY, term, type, data BLOB)
//   kv(main, sub, data BLOB, PRIMARY KEY (main, sub)) WITHOUT ROWID
//                                                  one mvccpb.KeyValue per revision
//   lease(id INTEGER PRIMARY KEY, data BLOB)       one record per lease
//   request(id INTEGER PRIMARY KEY, idx)           recently applied request ids, by index
// Raft's integers are uint64s stored bit for bit in SQLite's int64; the keyspace's are
// etcd's int64s. Reads validate them. Version 1 (no keyspace tables) is upgraded in
// place at open.
//
// Connection: journal_mode=WAL, synchronous=FULL, locking_mode=EXCLUSIVE (one process
// owns the file; WAL then needs no shared-memory file).
//
// Group commit: the first write after a Sync opens a transaction; Sync commits it: one
// transaction, one WAL fsync (synchronous=FULL syncs the WAL at commit) for everything
// staged since, which is one Ready, or several when the earlier ones changed only the
// commit index (they need no sync of their own).
//
// What survives a crash, at each point:
//   before COMMIT              nothing of the open transaction (the WAL frames written so
//                              far have no commit frame and are ignored on recovery);
//   after the WAL write, before its fsync returns
//                              either all of the transaction or none of it: the commit
//                              frame is checksummed, a torn tail is discarded;
//   after the fsync            all of it (this is when Sync returns OK);
//   during a checkpoint        all committed transactions: the WAL is only reset after
//                              the database file is synced, and recovery replays it.
// A failed write or sync is fatal (fail-stop, server/storage.h): the transaction is
// abandoned and the node must not continue with this connection.
//
// Opening validates: a database from a newer keel (schema_version > 1) or one that is
// not a keel database is refused with a clear error, never reset. A missing file is
// created empty. Opening then fsyncs the database and its WAL: what a killed process
// wrote but never synced is still in the page cache and visible to this one, and must
// be durable before the node acts on it.

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/kv/backend.h"
#include "core/server/storage.h"

struct sqlite3;
struct sqlite3_stmt;

namespace keel::storage {

class SqliteStorage : public server::Storage, public kv::Backend {
 public:
  struct Options {
    std::string vfs;  // empty: SQLite's default VFS (the real disk)
    // Free bytes on the database's disk. Null: statvfs(2) of the database's directory.
    std::function<uint64_t()> available_bytes;
    // WAL pages before an automatic checkpoint (SQLite's default: 1000 pages, ~4 MiB).
    // The simulator checkpoints more often: more crash points, and smaller files.
    int wal_autocheckpoint_pages = 1000;
    // Compaction drops at most this many log entries per Sync (in the transaction that
    // Sync commits anyway), so that no one commit pays for a whole snapshot's worth of
    // entries (100,000 with etcd's --snapshot-count: a stall of a few hundred ms).
    int compact_entries_per_sync = 1000;
  };
  static absl::StatusOr<std::unique_ptr<SqliteStorage>> Open(const std::string& path,
                                                             const Options& options);
  ~SqliteStorage() override;

  absl::StatusOr<raft::RecoveredState> Load() override;
  absl::Status Append(std::span<const raft::Entry> entries) override;
  absl::Status SaveHardState(const raft::HardState& state) override;
  absl::Status SaveSnapshot(const raft::Snapshot& snapshot) override;
  absl::Status InstallSnapshot(const raft::Snapshot& snapshot) override;
  absl::Status Compact(LogIndex through) override;
  absl::Status Sync() override;
  absl::StatusOr<uint64_t> AvailableBytes() override;

  // kv::Backend (storage/sqlite_backend.cc). Writes join the open transaction. A scan's
  // visitor must not call back into this object.
  absl::Status PutRevision(kv::Revision rev, std::string_view kv_bytes) override;
  absl::StatusOr<std::string> GetRevision(kv::Revision rev) const override;
  absl::Status DeleteRevision(kv::Revision rev) override;
  absl::Status ScanRevisions(int64_t from, int64_t to, RevisionVisitor visit) const override;
  absl::Status PutMeta(std::string_view name, int64_t value) override;
  absl::StatusOr<std::optional<int64_t>> GetMeta(std::string_view name) const override;
  absl::Status PutLease(int64_t id, std::string_view lease_bytes) override;
  absl::Status DeleteLease(int64_t id) override;
  absl::Status ScanLeases(LeaseVisitor visit) const override;
  absl::Status PutRequestId(uint64_t request_id, int64_t index) override;
  absl::Status DeleteRequestIdsThrough(int64_t index) override;
  absl::Status ScanRequestIds(RequestVisitor visit) const override;
  absl::Status ClearKeyspace() override;

 private:
  struct Statements;  // prepared once, reused for every write
  SqliteStorage(sqlite3* db, std::string path, Options options);
  absl::Status Initialize();
  absl::Status Prepare();
  absl::Status SyncFiles();
  absl::Status Exec(const char* sql);
  absl::Status Begin();
  // Drops the next compact_entries_per_sync entries of a pending compaction.
  absl::Status CompactSlice();
  absl::Status Upgrade(int64_t from_version);
  absl::Status WriteSnapshotRow(const raft::Snapshot& snapshot);
  absl::Status Error(const char* what) const;

  sqlite3* db_;
  std::string path_;
  Options options_;
  std::unique_ptr<Statements> stmts_;
  bool in_transaction_ = false;
  uint64_t compact_through_ = 0;  // entries at or below it are due to be dropped
  bool compacting_ = false;       // some may be left
  mutable bool failed_ = false;  // after any error, reads included: fail-stop
};

}  // namespace keel::storage
