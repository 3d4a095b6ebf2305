#pragma once
// KvStateMachine: the registry's state machine: etcd's keyspace (core/kv), its leases
// (core/lease), in the node's database (kv::Backend), driven by the Raft log.
//
// Commands are serverpb.Command protobufs (command.proto): etcd's Put, DeleteRange,
// Txn, Compaction, LeaseGrant, LeaseRevoke, and keel's lease clock Checkpoint. The
// response for the proposer (ApplyContext::response) is etcd's response message
// (etcdserverpb::PutResponse, ...), header.revision set; errors are etcd's.
//
// Durability: the state and the applied index (meta "consistent_index") are written in
// the transaction that the node's next Sync commits with its Raft entries, so the
// state on disk is always that of some applied index, and a restart re-applies exactly
// the entries after it (etcd's consistent index). TakeSnapshot() is therefore only a
// marker: "KKM1" | u64 applied index. A peer gets the whole keyspace, as of now:
//   "KKV1" | u64 applied index | u64 count, then per revision: i64 main, i64 sub,
//   u32 length, mvccpb.KeyValue | u64 count, then per lease: i64 id, u32 length,
//   leasepb.Record | u64 count, then per request id: u64 id, i64 index |
//   i64 compacted revision | i64 lease clock                        (little-endian)
//
// Duplicates: a command whose request id was applied within the last
// `dedup_window_entries` entries is dropped (the network duplicated a forwarded
// proposal); its proposer, if still waiting, learns DeadlineExceeded (indeterminate).
// The window is replicated state: in the database and in snapshots.
//
// Storage failures: Apply returns them and health() keeps the first; the node must
// fail-stop (Node does).

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "core/kv/applier.h"
#include "core/kv/backend.h"
#include "core/kv/store.h"
#include "core/lease/lease_table.h"
#include "core/log.h"
#include "core/server/state_machine.h"

namespace keel::leasepb {
class Checkpoint;
}
namespace keel::serverpb {
class Command;
}

namespace keel::server {

struct KvConfig {
  kv::ApplierLimits applier;
  lease::LeaseConfig lease;
  int64_t dedup_window_entries = 100'000;
};

class KvStateMachine : public StateMachine {
 public:
  // What applying did, for this node's server layer (watchers, keepalive waiters).
  class Listener {
   public:
    virtual ~Listener() = default;
    // One applied command changed the keyspace: its events, in revision order.
    virtual void OnEvents(const std::vector<mvccpb::Event>& events) = 0;
    // A checkpoint of its leader's term was applied; `revoked` are the leases it expired.
    virtual void OnLeaseCheckpoint(const leasepb::Checkpoint& checkpoint,
                                   const std::vector<int64_t>& revoked) = 0;
    // A LeaseGrant was applied.
    virtual void OnLeaseGranted(int64_t id) {}
    // A LeaseRevoke was applied.
    virtual void OnLeaseRevoked(int64_t id) = 0;
    // The whole state was replaced by a peer's snapshot.
    virtual void OnRestored() = 0;
  };

  // Requires: backend outlives the machine. Call Open() before use.
  KvStateMachine(kv::Backend* backend, KvConfig config, Logger log);
  ~KvStateMachine() override;

  // Loads the keyspace, the leases, the applied index and the dedup window.
  absl::Status Open();
  void SetListener(Listener* listener) { listener_ = listener; }

  absl::Status Apply(LogIndex index, uint64_t request_id, std::string_view command,
                     const ApplyContext& context) override;
  LogIndex applied() const override { return applied_; }
  bool NeedsSpace(std::string_view command) const override;
  std::string TakeSnapshot() const override;
  bool KeepsStateOnDisk() const override { return true; }
  std::string ExportSnapshot() const override;
  absl::Status CheckSnapshot(LogIndex index, std::string_view data) const override;
  absl::Status Restore(LogIndex index, std::string_view data) override;

  absl::Status health() const override { return health_; }

  struct Dump;  // a parsed ExportSnapshot()

  kv::Store& store() { return *store_; }
  const kv::Store& store() const { return *store_; }
  kv::Applier& applier() { return *applier_; }
  const kv::Applier& applier() const { return *applier_; }
  lease::LeaseTable& leases() { return *leases_; }
  const lease::LeaseTable& leases() const { return *leases_; }
  void CheckInvariants() const;

 private:
  absl::Status Dispatch(const serverpb::Command& command, const ApplyContext& context,
                        std::vector<mvccpb::Event>* events);
  absl::Status ApplyLease(const serverpb::Command& command, const ApplyContext& context,
                          std::vector<mvccpb::Event>* events);
  void Remember(uint64_t request_id, LogIndex index);
  // Drops from the window the ids applied at or below through_applied - window.
  void Forget(LogIndex through_applied);
  static absl::Status ParseDump(std::string_view data, Dump* out);
  absl::Status Load(kv::Backend* backend);

  kv::Backend* backend_;
  KvConfig config_;
  Logger log_;
  std::unique_ptr<lease::LeaseTable> leases_;
  std::unique_ptr<kv::Store> store_;
  std::unique_ptr<kv::Applier> applier_;
  Listener* listener_ = nullptr;
  LogIndex applied_;
  LogIndex applying_;  // the index being applied
  absl::Status health_;
  // The dedup window: ids applied at indexes in (applied - window, applied].
  absl::flat_hash_set<uint64_t> recent_ids_;
  std::deque<std::pair<LogIndex, uint64_t>> recent_order_;
  int64_t trimmed_through_ = 0;  // the database's window starts after this index
};

}  // namespace keel::server
