#pragma once
// Register: the replicated append-only register, the state machine of the foundation
// (the MVCC keyspace replaces it). Each applied command appends its value once; a
// request seen before (a duplicated forward) is ignored, so every value appears at most
// once and in commit order on every node.
//
// Under the NOSPACE alarm a command is rejected instead, and its request id remembered,
// so that a duplicate of it is rejected too.
//
// Snapshot format: u64 count, then per value: u64 request id, u64 index, u64 length,
// bytes; then u64 count of rejected requests, and their u64 ids. Little-endian. The
// snapshot's index is Raft's, passed to Restore.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "core/server/state_machine.h"

namespace keel::server {

class Register : public StateMachine {
 public:
  struct Value {
    uint64_t request_id;
    LogIndex index;
    std::string data;
    bool operator==(const Value&) const = default;
  };
  // Called after each value is appended (the simulator's State Machine Safety checker).
  using ApplyObserver = std::function<void(const Value&)>;

  void SetObserver(ApplyObserver observer) { observer_ = std::move(observer); }

  absl::Status Apply(LogIndex index, uint64_t request_id, std::string_view command,
                     const ApplyContext& context) override;
  LogIndex applied() const override { return applied_; }
  bool NeedsSpace(std::string_view) const override { return true; }  // every write appends
  std::string TakeSnapshot() const override;
  absl::Status CheckSnapshot(LogIndex index, std::string_view data) const override;
  absl::Status Restore(LogIndex index, std::string_view data) override;

  const std::vector<Value>& values() const { return values_; }

 private:
  struct State {
    std::vector<Value> values;
    absl::btree_map<uint64_t, bool> seen;
    std::vector<uint64_t> rejected;
  };
  static absl::Status Parse(LogIndex index, std::string_view data, State* state);

  LogIndex applied_;
  std::vector<Value> values_;
  absl::btree_map<uint64_t, bool> seen_;  // request id -> rejected (else applied)
  std::vector<uint64_t> rejected_;     // request ids rejected under the NOSPACE alarm
  ApplyObserver observer_;
};

}  // namespace keel::server
