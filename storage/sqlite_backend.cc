// SqliteStorage as kv::Backend: the keyspace's tables (kv, lease, meta) in the node's
// database. Writes join the transaction the next Storage::Sync commits.

#include <string>

#include "absl/strings/str_cat.h"
#include "storage/sqlite_statement.h"
#include "storage/sqlite_storage.h"

namespace keel::storage {

absl::Status SqliteStorage::PutRevision(kv::Revision rev, std::string_view kv_bytes) {
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& put = stmts_->put_revision;
  put.Reset();
  put.BindI64(1, rev.main).BindI64(2, rev.sub).Bind(3, kv_bytes).Step();
  if (!put.ok()) return failed_ = true, Error("put kv revision");
  return absl::OkStatus();
}

absl::StatusOr<std::string> SqliteStorage::GetRevision(kv::Revision rev) const {
  if (failed_) return absl::FailedPreconditionError("storage failed earlier (fail-stop)");
  Stmt& get = stmts_->get_revision;
  get.Reset();
  const bool found = get.BindI64(1, rev.main).BindI64(2, rev.sub).Step();
  std::string out = found ? get.Blob(0) : std::string();
  if (!get.ok()) return failed_ = true, Error("get kv revision");
  get.Reset();  // holds no read open
  if (!found) return absl::NotFoundError(absl::StrCat("no kv revision ", rev.main, ".", rev.sub));
  return out;
}

absl::Status SqliteStorage::DeleteRevision(kv::Revision rev) {
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& del = stmts_->delete_revision;
  del.Reset();
  del.BindI64(1, rev.main).BindI64(2, rev.sub).Step();
  if (!del.ok()) return failed_ = true, Error("delete kv revision");
  return absl::OkStatus();
}

absl::Status SqliteStorage::ScanRevisions(int64_t from, int64_t to,
                                          RevisionVisitor visit) const {
  if (failed_) return absl::FailedPreconditionError("storage failed earlier (fail-stop)");
  Stmt& scan = stmts_->scan_revisions;
  scan.Reset();
  scan.BindI64(1, from).BindI64(2, to);
  while (scan.Step()) {
    if (!visit(kv::Revision{scan.I64(0), scan.I64(1)}, scan.BlobView(2))) break;
  }
  if (!scan.ok()) return failed_ = true, Error("scan kv revisions");
  scan.Reset();
  return absl::OkStatus();
}

absl::Status SqliteStorage::PutMeta(std::string_view name, int64_t value) {
  KEEL_ASSERT(name != "schema_version");
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& put = stmts_->put_meta;
  put.Reset();
  put.Bind(1, name).BindI64(2, value).Step();
  if (!put.ok()) return failed_ = true, Error("put meta");
  return absl::OkStatus();
}

absl::StatusOr<std::optional<int64_t>> SqliteStorage::GetMeta(std::string_view name) const {
  if (failed_) return absl::FailedPreconditionError("storage failed earlier (fail-stop)");
  Stmt& get = stmts_->get_meta;
  get.Reset();
  std::optional<int64_t> out;
  if (get.Bind(1, name).Step()) {
    if (get.Type(0) != SQLITE_INTEGER) {
      get.Reset();
      return absl::DataLossError(absl::StrCat("meta ", std::string(name), " is not an integer"));
    }
    out = get.I64(0);
  }
  if (!get.ok()) return failed_ = true, Error("get meta");
  get.Reset();
  return out;
}

absl::Status SqliteStorage::PutLease(int64_t id, std::string_view lease_bytes) {
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& put = stmts_->put_lease;
  put.Reset();
  put.BindI64(1, id).Bind(2, lease_bytes).Step();
  if (!put.ok()) return failed_ = true, Error("put lease");
  return absl::OkStatus();
}

absl::Status SqliteStorage::DeleteLease(int64_t id) {
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& del = stmts_->delete_lease;
  del.Reset();
  del.BindI64(1, id).Step();
  if (!del.ok()) return failed_ = true, Error("delete lease");
  return absl::OkStatus();
}

absl::Status SqliteStorage::ScanLeases(LeaseVisitor visit) const {
  if (failed_) return absl::FailedPreconditionError("storage failed earlier (fail-stop)");
  Stmt& scan = stmts_->scan_leases;
  scan.Reset();
  while (scan.Step()) visit(scan.I64(0), scan.BlobView(1));
  if (!scan.ok()) return failed_ = true, Error("scan leases");
  scan.Reset();
  return absl::OkStatus();
}

absl::Status SqliteStorage::PutRequestId(uint64_t request_id, int64_t index) {
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& put = stmts_->put_request;
  put.Reset();
  put.Bind(1, request_id).BindI64(2, index).Step();
  if (!put.ok()) return failed_ = true, Error("put request id");
  return absl::OkStatus();
}

absl::Status SqliteStorage::DeleteRequestIdsThrough(int64_t index) {
  if (absl::Status st = Begin(); !st.ok()) return st;
  Stmt& del = stmts_->delete_requests;
  del.Reset();
  del.BindI64(1, index).Step();
  if (!del.ok()) return failed_ = true, Error("delete request ids");
  return absl::OkStatus();
}

absl::Status SqliteStorage::ScanRequestIds(RequestVisitor visit) const {
  if (failed_) return absl::FailedPreconditionError("storage failed earlier (fail-stop)");
  Stmt& scan = stmts_->scan_requests;
  scan.Reset();
  while (scan.Step()) visit(scan.U64(0), scan.I64(1));
  if (!scan.ok()) return failed_ = true, Error("scan request ids");
  scan.Reset();
  return absl::OkStatus();
}

absl::Status SqliteStorage::ClearKeyspace() {
  if (absl::Status st = Begin(); !st.ok()) return st;
  for (const char* sql : {"DELETE FROM kv", "DELETE FROM lease", "DELETE FROM request",
                          "DELETE FROM meta WHERE key != 'schema_version'"}) {
    if (absl::Status st = Exec(sql); !st.ok()) return failed_ = true, st;
  }
  return absl::OkStatus();
}

}  // namespace keel::storage
