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
  // Replaces the whole state. The bytes came from a peer: validate, never assert.
  virtual absl::Status Restore(LogIndex index, std::string_view data) = 0;
};

}  // namespace keel::server
