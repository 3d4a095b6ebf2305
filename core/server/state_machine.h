#pragma once
// StateMachine: what the replicated log drives. Apply is deterministic: the same
// commands in the same order give the same state on every node.

#include <any>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "core/types.h"

namespace keel::server {

// etcd's error for a write refused under the NOSPACE alarm (gRPC ResourceExhausted).
inline absl::Status NoSpaceError() {
  return absl::ResourceExhaustedError("etcdserver: mvcc: database space exceeded");
}

class StateMachine {
 public:
  virtual ~StateMachine() = default;
  // The cluster-wide conditions under which a command is applied; the same on every
  // node at the same index (they are replicated state of the Node).
  struct ApplyContext {
    // The NOSPACE alarm is active: commands that need space fail with
    // NoSpaceError() and change nothing (etcd's capped applier).
    bool nospace = false;
    // The term of the entry: a command may be valid only in the term its proposer led
    // (a lease clock checkpoint forwarded by a deposed leader, etcd #15247).
    Term term;
    // Where the machine puts its response for the client, if any (null: nobody asks).
    std::any* response = nullptr;
  };
  // Applies one committed command and returns its outcome for the client; `request_id`
  // is unique per client request and lets the machine ignore a command that the network
  // duplicated (a duplicate of a rejected command stays rejected).
  // Requires: index > applied(). Node skips entries at or below applied(): a machine
  // that keeps its state on disk may have applied them before a restart or a snapshot.
  virtual absl::Status Apply(LogIndex index, uint64_t request_id, std::string_view command,
                             const ApplyContext& context) = 0;
  virtual LogIndex applied() const = 0;
  // OK, or the first storage failure the machine met (its state on disk is then
  // unknown): the node must fail-stop.
  virtual absl::Status health() const { return absl::OkStatus(); }
  // Whether `command` needs disk space: refused under the NOSPACE alarm (etcd refuses
  // puts, txns with puts and lease grants; deletes and compaction still pass).
  virtual bool NeedsSpace(std::string_view command) const = 0;
  // The snapshot kept in this node's own log (Raft's snapshot at the applied index).
  // A machine whose state is durable on its own may return just a marker of it.
  virtual std::string TakeSnapshot() const = 0;
  // Whether the state is durable on its own (in the node's database, with its applied
  // index), so that TakeSnapshot() is only a marker and peers get ExportSnapshot().
  // Otherwise TakeSnapshot() is the whole state and the log's snapshot is sent as is.
  virtual bool KeepsStateOnDisk() const { return false; }
  // The whole state, for a peer that needs a snapshot (only if KeepsStateOnDisk()). It
  // may be newer than the snapshot's index (etcd sends its current database): its
  // restorer then reports that newer index as applied() and skips the entries between.
  virtual std::string ExportSnapshot() const { return TakeSnapshot(); }
  // Whether `data` is a snapshot from a peer (as sent: see above) that this machine can
  // restore, without changing anything. Node asks
  // before Raft accepts a snapshot from a peer, so a bad one is dropped there.
  virtual absl::Status CheckSnapshot(LogIndex index, std::string_view data) const = 0;
  // Replaces the whole state with a peer's snapshot, or (at start) confirms the state
  // against this node's own TakeSnapshot(). The bytes came from a peer or the disk:
  // validate, never assert; on error nothing changes.
  virtual absl::Status Restore(LogIndex index, std::string_view data) = 0;
};

}  // namespace keel::server
