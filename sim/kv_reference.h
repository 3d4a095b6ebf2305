#pragma once
// KvReference: the keyspace as the cluster committed it, for the checkers. It runs the
// same state machine code over memory, fed every committed command once, in index
// order, from the first node that applies it (every node applies the same commands at
// the same indexes: State Machine Safety, checked by the RaftChecker). Compactions are
// not applied to it, so every revision stays readable for the checks.
//
// It also records when each revision first existed anywhere (the simulated time a node
// first applied it): a linearizable read that starts later must see it.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/status/statusor.h"
#include "core/kv/memory_backend.h"
#include "core/server/kv_state_machine.h"
#include "core/types.h"

namespace keel::sim {

class KvReference {
 public:
  explicit KvReference(const server::KvConfig& config);
  ~KvReference();

  // A node applied `command` at `index`. Returns a violation, or "".
  std::string OnApply(LogIndex index, uint64_t request_id, std::string_view command,
                      const server::StateMachine::ApplyContext& context, Nanos now);

  int64_t revision() const;
  // The revision after the command at `index` was applied (nullopt: not seen).
  std::optional<int64_t> RevisionAfter(LogIndex index) const;
  LogIndex applied() const { return machine_->applied(); }
  // The highest revision that existed before time t (0 if none).
  int64_t RevisionBefore(Nanos t) const;
  // Reads as of revision `rev` (never compacted here).
  absl::StatusOr<etcdserverpb::RangeResponse> RangeAt(const etcdserverpb::RangeRequest& r,
                                                      int64_t rev) const;
  // The events of revision `rev` (empty if none).
  const std::vector<mvccpb::Event>& EventsAt(int64_t rev) const;
  // How many revisions put `value` into `key` (values written by the workload are unique).
  int PutsOf(const std::string& key, const std::string& value) const;
  const server::KvStateMachine& machine() const { return *machine_; }
  struct Revocation {
    int64_t lease;
    Nanos at;      // when the revoking command first applied anywhere
    bool expired;  // by a lease clock checkpoint (else a LeaseRevoke)
  };
  const std::vector<Revocation>& revocations() const { return revocations_; }

 private:
  class Recorder;

  kv::MemoryBackend backend_;
  std::unique_ptr<server::KvStateMachine> machine_;
  std::unique_ptr<Recorder> recorder_;
  std::vector<Nanos> first_seen_;  // by revision - 2 (revision 1 is the empty store)
  absl::btree_map<int64_t, std::vector<mvccpb::Event>> events_;
  absl::btree_map<std::pair<std::string, std::string>, int> puts_;
  absl::btree_map<uint64_t, std::string> command_at_;  // index -> command, to compare
  absl::btree_map<uint64_t, int64_t> revision_after_;  // index -> revision
  std::vector<Revocation> revocations_;
  Nanos feeding_at_{0};  // the time of the command being applied
};

}  // namespace keel::sim
