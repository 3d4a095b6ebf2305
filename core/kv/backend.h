#pragma once
// Backend: where the keyspace's durable state lives (etcd's bbolt "key", "meta" and
// "lease" buckets). One record per revision: the key's mvccpb.KeyValue as of that
// revision, serialized. A put's record carries the whole KeyValue; a delete's record
// (a tombstone) carries only the key and mod_revision = the deleting revision, and is
// recognised by create_revision == 0 (every put has create_revision >= 1).
//
// Writes are staged in the node's open storage transaction and become durable with
// the next Storage::Sync, together with the Raft entries of that Ready and the applied
// index (recorded as meta "consistent_index" by the state machine): a crash keeps all
// of them or none.
//
// Every error is a storage failure (Internal or DataLoss, kv/errors.h): the node
// fail-stops. Implementations: storage::SqliteBackend (the node's database) and
// kv::MemoryBackend (tests).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/kv/revision.h"

namespace keel::kv {

// The named integers (meta) the keyspace keeps, one place for every writer of them.
inline constexpr std::string_view kMetaConsistentIndex = "consistent_index";  // applied
inline constexpr std::string_view kMetaCompactedRevision = "compacted_revision";
inline constexpr std::string_view kMetaLeaseClock = "lease_clock_ms";

class Backend {
 public:
  // Returns false to stop the scan.
  using RevisionVisitor = absl::FunctionRef<bool(Revision, std::string_view kv_bytes)>;
  using LeaseVisitor = absl::FunctionRef<void(int64_t id, std::string_view lease_bytes)>;
  using RequestVisitor = absl::FunctionRef<void(uint64_t request_id, int64_t index)>;

  virtual ~Backend() = default;

  // Requires: no record at `rev` yet.
  virtual absl::Status PutRevision(Revision rev, std::string_view kv_bytes) = 0;
  // NotFound if there is no record at `rev` (a caller that expected one has found
  // corruption).
  virtual absl::StatusOr<std::string> GetRevision(Revision rev) const = 0;
  virtual absl::Status DeleteRevision(Revision rev) = 0;
  // Visits the records with from <= main < to, in revision order.
  virtual absl::Status ScanRevisions(int64_t from, int64_t to, RevisionVisitor visit) const = 0;

  // Small named integers: the applied index, the compacted revision.
  virtual absl::Status PutMeta(std::string_view name, int64_t value) = 0;
  virtual absl::StatusOr<std::optional<int64_t>> GetMeta(std::string_view name) const = 0;

  // Leases (core/lease): one record per lease, serialized by the lease table.
  virtual absl::Status PutLease(int64_t id, std::string_view lease_bytes) = 0;
  virtual absl::Status DeleteLease(int64_t id) = 0;
  virtual absl::Status ScanLeases(LeaseVisitor visit) const = 0;

  // Recently applied request ids and their log indexes: the state machine's window
  // for dropping a command the network duplicated.
  virtual absl::Status PutRequestId(uint64_t request_id, int64_t index) = 0;
  // Forgets the request ids applied at or below `index`.
  virtual absl::Status DeleteRequestIdsThrough(int64_t index) = 0;
  virtual absl::Status ScanRequestIds(RequestVisitor visit) const = 0;

  // Deletes every record above: revisions, meta values, leases, request ids (before a
  // snapshot from a peer replaces the keyspace).
  virtual absl::Status ClearKeyspace() = 0;
};

}  // namespace keel::kv
