#pragma once
// StateMachine: what the replicated log drives. Apply is deterministic: the same
// commands in the same order give the same state on every node.

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
  };
  // Applies one committed command and returns its outcome for the client; `request_id`
  // is unique per client request and lets the machine ignore a command that the network
  // duplicated (a duplicate of a rejected command stays rejected).
  virtual absl::Status Apply(LogIndex index, uint64_t request_id, std::string_view command,
                             const ApplyContext& context) = 0;
  virtual LogIndex applied() const = 0;
  // Whether `command` needs disk space: refused under the NOSPACE alarm (etcd refuses
  // puts, txns with puts and lease grants; deletes and compaction still pass).
  virtual bool NeedsSpace(std::string_view command) const = 0;
  virtual std::string TakeSnapshot() const = 0;
  // Whether `data` is a snapshot this machine can restore, without changing anything.
  // Node asks before Raft accepts a snapshot from a peer, so a bad one is dropped there.
  virtual absl::Status CheckSnapshot(LogIndex index, std::string_view data) const = 0;
  // Replaces the whole state. The bytes came from a peer or the disk: validate, never
  // assert; on error nothing changes.
  virtual absl::Status Restore(LogIndex index, std::string_view data) = 0;
};

}  // namespace keel::server
