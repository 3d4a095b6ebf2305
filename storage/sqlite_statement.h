#pragma once
// Internal to storage/: a prepared SQLite statement with checked binds and steps, and
// the mapping of SQLite result codes to statuses. Not part of any interface.

#include <sqlite3.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "storage/sqlite_storage.h"

namespace keel::storage {

// uint64 <-> SQLite's int64, bit for bit.
inline int64_t ToDb(uint64_t v) {
  int64_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}
inline uint64_t FromDb(int64_t v) {
  uint64_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

// A prepared statement, reset after every use.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool ok() const { return rc_ == SQLITE_OK || rc_ == SQLITE_ROW || rc_ == SQLITE_DONE; }
  int rc() const { return rc_; }
  Stmt& Bind(int i, uint64_t v) {
    if (ok()) rc_ = sqlite3_bind_int64(stmt_, i, ToDb(v));
    return *this;
  }
  Stmt& Bind(int i, std::string_view blob) {
    // SQLITE_STATIC: the bytes outlive the step that reads them (bound per call).
    if (ok()) rc_ = sqlite3_bind_blob64(stmt_, i, blob.data(), blob.size(), SQLITE_STATIC);
    return *this;
  }
  // Ready for the next set of bindings.
  void Reset() {
    if (!ok()) return;
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  // Steps once: true for a row, false when done or on error (check ok()).
  bool Step() {
    if (!ok()) return false;
    rc_ = sqlite3_step(stmt_);
    return rc_ == SQLITE_ROW;
  }
  Stmt& BindI64(int i, int64_t v) {
    if (ok()) rc_ = sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  uint64_t U64(int col) const { return FromDb(sqlite3_column_int64(stmt_, col)); }
  int64_t I64(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string_view BlobView(int col) const {
    const void* p = sqlite3_column_blob(stmt_, col);
    const int n = sqlite3_column_bytes(stmt_, col);
    return p == nullptr ? std::string_view() : std::string_view(static_cast<const char*>(p), n);
  }
  int Type(int col) const { return sqlite3_column_type(stmt_, col); }
  std::string Blob(int col) const {
    const void* p = sqlite3_column_blob(stmt_, col);
    const int n = sqlite3_column_bytes(stmt_, col);
    return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), n);
  }

 private:
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
};

// Steps a statement that returns no rows, and resets it so that it holds nothing open.
inline bool RunOnce(Stmt& stmt) {
  stmt.Reset();
  stmt.Step();
  const bool ok = stmt.ok();
  stmt.Reset();
  return ok;
}

inline absl::Status StatusFor(int rc, std::string_view what, sqlite3* db) {
  const std::string message = absl::StrCat(absl::string_view(what.data(), what.size()), ": ",
                                           db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  switch (rc & 0xff) {
    case SQLITE_FULL: return absl::ResourceExhaustedError(message);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return absl::DataLossError(message);
    default: return absl::InternalError(message);
  }
}

// Every statement SqliteStorage runs more than once, prepared at open.
struct SqliteStorage::Statements {
  explicit Statements(sqlite3* db)
      : truncate(db, "DELETE FROM raft_log WHERE idx >= ?"),
        insert(db, "INSERT INTO raft_log (idx, term, type, data) VALUES (?, ?, ?, ?)"),
        hard_state(db, "INSERT OR REPLACE INTO hard_state (id, term, vote, commit_index) "
                       "VALUES (0, ?, ?, ?)"),
        snapshot_index(db, "SELECT idx FROM snapshot WHERE id = 0"),
        snapshot(db, "INSERT OR REPLACE INTO snapshot (id, idx, term, data) "
                     "VALUES (0, ?, ?, ?)"),
        // The lowest `?2` entries at or below `?1`: one slice of a compaction.
        compact(db, "DELETE FROM raft_log WHERE idx IN "
                    "(SELECT idx FROM raft_log WHERE idx <= ?1 ORDER BY idx LIMIT ?2)"),
        begin(db, "BEGIN"),
        commit(db, "COMMIT"),
        put_revision(db, "INSERT INTO kv (main, sub, data) VALUES (?, ?, ?)"),
        get_revision(db, "SELECT data FROM kv WHERE main = ? AND sub = ?"),
        delete_revision(db, "DELETE FROM kv WHERE main = ? AND sub = ?"),
        scan_revisions(db, "SELECT main, sub, data FROM kv WHERE main >= ? AND main < ? "
                           "ORDER BY main, sub"),
        put_meta(db, "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"),
        get_meta(db, "SELECT value FROM meta WHERE key = ?"),
        put_lease(db, "INSERT OR REPLACE INTO lease (id, data) VALUES (?, ?)"),
        delete_lease(db, "DELETE FROM lease WHERE id = ?"),
        scan_leases(db, "SELECT id, data FROM lease ORDER BY id"),
        put_request(db, "INSERT OR REPLACE INTO request (id, idx) VALUES (?, ?)"),
        delete_requests(db, "DELETE FROM request WHERE idx <= ?"),
        scan_requests(db, "SELECT id, idx FROM request ORDER BY idx, id") {}
  bool ok() const {
    return truncate.ok() && insert.ok() && hard_state.ok() && snapshot_index.ok() &&
           snapshot.ok() && compact.ok() && begin.ok() && commit.ok() && put_revision.ok() &&
           get_revision.ok() && delete_revision.ok() && scan_revisions.ok() && put_meta.ok() &&
           get_meta.ok() && put_lease.ok() && delete_lease.ok() && scan_leases.ok() &&
           put_request.ok() && delete_requests.ok() && scan_requests.ok();
  }
  Stmt truncate;
  Stmt insert;
  Stmt hard_state;
  Stmt snapshot_index;
  Stmt snapshot;
  Stmt compact;
  Stmt begin;   // prepared once: every Ready opens and commits a transaction
  Stmt commit;
  // kv::Backend (sqlite_backend.cc)
  Stmt put_revision;
  Stmt get_revision;
  Stmt delete_revision;
  Stmt scan_revisions;
  Stmt put_meta;
  Stmt get_meta;
  Stmt put_lease;
  Stmt delete_lease;
  Stmt scan_leases;
  Stmt put_request;
  Stmt delete_requests;
  Stmt scan_requests;
};

}  // namespace keel::storage
