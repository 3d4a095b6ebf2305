#pragma once
// StateMachine: what the replicated log drives. Apply is deterministic: the same
// commands in the same order give the same state on every node.

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "core/types.h"

namespace keel::server {

class StateMachine {
 public:
  virtual ~StateMachine() = default;
  // Applies one committed command; `request_id` is unique per client request and lets
  // the machine ignore a command that the network duplicated.
  virtual void Apply(LogIndex index, uint64_t request_id, std::string_view command) = 0;
  virtual LogIndex applied() const = 0;
  virtual std::string TakeSnapshot() const = 0;
  // Whether `data` is a snapshot this machine can restore, without changing anything.
  // Node asks before Raft accepts a snapshot from a peer, so a bad one is dropped there.
  virtual absl::Status CheckSnapshot(LogIndex index, std::string_view data) const = 0;
  // Replaces the whole state. The bytes came from a peer or the disk: validate, never
  // assert; on error nothing changes.
  virtual absl::Status Restore(LogIndex index, std::string_view data) = 0;
};

}  // namespace keel::server
