#pragma once
// Node: one cluster member. It glues Raft to a state machine and to the world through
// the Env: it ticks Raft on a timer, turns Ready into storage writes (one Sync per
// Ready: group commit), messages and applied commands, and answers clients.
//
// Batching: requests are not handed to Raft one by one. Proposals and linearizable reads
// made in one turn of the host's event loop are collected and flushed together by a
// zero-delay timer: the proposals as one Raft proposal (one append, one message per
// follower, one Sync), the reads as one ReadIndex (one heartbeat round) whose read point
// serves them all. Under load, the requests that arrive while a Sync runs form the next
// batch: group commit across clients, as etcd's raft loop does.
//
// Client requests: Propose() appends a command through Raft and reports once this node
// has applied it; Read() confirms a linearizable read point via ReadIndex and reports
// once the state machine has caught up to it. Every request ends exactly once: OK,
// an error that guarantees nothing happened (Unavailable: no leader; ResourceExhausted:
// too many pending; InvalidArgument: too large), or DeadlineExceeded (indeterminate: it
// may still commit). A Done callback may issue new requests: it never runs in the middle
// of a Ready.
//
// Failure model: a storage error stops the node for good (fail-stop); it then drops
// every event until it is rebuilt from its durable state.
//
// Space (etcd's NOSPACE alarm): when its disk's free space falls below
// space_reserve_bytes, a node raises the alarm through Raft, so every member sees it at
// the same log index. While any member's alarm is active, commands that need space are
// refused before they are proposed, and those already in the log are rejected when
// applied (both with NoSpaceError()); reads are served and nothing is lost. The reserve
// is headroom for what still gets written: Raft's own entries and commands in flight.
// Only an operator disarms an alarm (DisarmAlarm, etcd's `alarm disarm`); a member still
// short of space raises it again. The alarms are replicated state: in the log, and in
// every snapshot, which wraps the state machine's:
//   "KNS1" | u32 alarm count | u64 member id per alarm | the state machine's snapshot
//
// Entry framing: u64 request id (little-endian), one byte of kind (0: a command for the
// state machine, 1: a Node command such as an alarm), the payload. An empty entry is a
// leader's no-op.

#include <cstdint>
#include <any>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "core/raft/raft.h"
#include "core/server/env.h"
#include "core/server/snapshot_stream.h"
#include "core/server/state_machine.h"

namespace keel::server {

struct NodeConfig {
  raft::Config raft;
  Nanos tick_interval = Millis(100);      // one Raft tick; etcd's 100 ms heartbeat
  Nanos request_timeout = Millis(5000);   // a request undecided by then times out
  uint64_t snapshot_entries = 10000;      // etcd --snapshot-count
  uint64_t snapshot_catchup_entries = 5000;  // entries kept after a snapshot for followers
  size_t pending_requests_max = 10000;
  size_t request_bytes_max = 1536 * 1024;  // etcd --max-request-bytes (1.5 MiB)
  uint64_t space_reserve_bytes = 64ull << 20;  // free disk below this: NOSPACE alarm
  SnapshotStreamConfig snapshot_stream;        // snapshots to and from peers, in chunks
};

class Node {
 public:
  using Done = std::function<void(absl::Status)>;
  // With the state machine's response (ApplyContext::response), empty if it gave none.
  using ResultDone = std::function<void(absl::Status, std::any response)>;

  Node(NodeConfig config, Env& env, StateMachine& state_machine);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Loads the durable state and starts ticking. An error leaves the node stopped.
  absl::Status Start();

  // A message from a peer (untrusted bytes).
  void Receive(std::string_view bytes);

  void Propose(std::string command, Done done);
  void ProposeForResult(std::string command, ResultDone done);
  void Read(Done done);
  absl::Status TransferLeadership(NodeId to);
  // Proposes clearing `member`'s NOSPACE alarm (etcd's AlarmRequest DEACTIVATE).
  void DisarmAlarm(NodeId member, Done done);

  bool stopped() const { return stopped_; }
  // Members whose NOSPACE alarm is active, as of this node's applied index.
  const std::set<NodeId>& nospace_alarms() const { return nospace_alarms_; }
  const raft::Raft& raft() const { return *raft_; }
  const NodeConfig& config() const { return config_; }

 private:
  struct Pending {
    ResultDone done;
  };

  void Tick();
  void ProcessReady();
  void PersistReady(const raft::Ready& rd);
  struct Outcome {
    uint64_t request_id;
    absl::Status status;
    std::any response;
  };
  using Outcomes = std::vector<Outcome>;
  void ApplyCommitted(const raft::Ready& rd, Outcomes* outcomes);
  absl::Status ApplyNodeCommand(std::string_view payload);
  void CheckSpace();
  void ProposeEntry(uint64_t id, std::string entry);
  void ScheduleFlush();
  void FlushRequests();
  void ForgetAnsweredReadBatches();
  std::string WrapSnapshot(std::string state_machine_snapshot) const;
  absl::Status RestoreSnapshot(const raft::Snapshot& snapshot);
  bool AcceptableSnapshot(const raft::Message& m) const;
  void StepPeerMessage(raft::Message m);
  void ReceiveSnapshotChunk(const raft::Message& m);
  void MaybeSnapshot();
  void FinishReads();
  void ExpireRequests();
  void SendAll(const std::vector<raft::Message>& messages);
  void Finish(uint64_t request_id, absl::Status status, std::any response = {});
  uint64_t AddPending(ResultDone done);
  std::string ForPeer(const raft::Snapshot& snapshot) const;
  void FailStop(const absl::Status& status, std::string_view what);

  NodeConfig config_;
  Env& env_;
  StateMachine& state_machine_;
  Logger log_;
  std::unique_ptr<raft::Raft> raft_;
  TimerId tick_timer_ = 0;
  bool stopped_ = true;
  LogIndex last_snapshot_index_;

  std::map<uint64_t, Pending> pending_;               // by request id
  std::deque<std::pair<Nanos, uint64_t>> deadlines_;  // FIFO: timeouts are uniform
  std::multimap<LogIndex, uint64_t> confirmed_reads_;  // read point -> request id

  // Collected until the next flush (all pending, so bounded by pending_requests_max).
  std::vector<std::pair<uint64_t, std::string>> proposals_;  // request id, framed entry
  std::vector<uint64_t> reads_;                               // request ids
  TimerId flush_timer_ = 0;
  // Read batches waiting for their read point, by ReadIndex context (the id of the
  // batch's first read: random, so a late answer from before a restart matches nothing),
  // and in the order they were asked (their deadlines are in the same order).
  std::map<uint64_t, std::vector<uint64_t>> read_batches_;
  std::deque<uint64_t> read_batch_order_;

  SnapshotSender snapshot_sender_;
  SnapshotReceiver snapshot_receiver_;

  std::set<NodeId> nospace_alarms_;  // replicated: members with an active NOSPACE alarm
  Nanos next_alarm_raise_{0};         // a raise in flight is not repeated before this
};

}  // namespace keel::server
