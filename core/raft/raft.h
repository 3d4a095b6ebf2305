#pragma once
// Raft: a pure, single-threaded Raft state machine in the style of etcd-raft's RawNode.
// It never touches a clock, a socket or a disk. The host drives it:
//
//   Step(msg)   a message arrived from a peer
//   Tick()      one heartbeat interval of the host's clock passed
//   Propose()   a client wants entries replicated (forwarded to the leader if needed)
//   ReadIndex() a client wants a linearizable read point
//   GetReady()  what the host must do now; then Advance(ready) when it is done.
//
// Features: PreVote (thesis §9.6), CheckQuorum (a leader that heard from no quorum for
// an election timeout steps down; followers that heard from a leader within it ignore
// vote requests), the §5.4.1 up-to-date rule, one vote per term persisted before it is
// sent, AppendEntries with conflict truncation (never of committed entries), fast
// backtracking (reject hints by term), flow control (in-flight window, bytes per
// message), pipelining, commit by counting current-term entries only (§5.4.2),
// proposal forwarding, ReadIndex, snapshots (opaque bytes), and leadership transfer.
//
// ReadIndex safety. A read point is confirmed by a heartbeat round: the leader records
// its commit index, sends heartbeats carrying the request's context, and answers once a
// quorum (itself included) has answered at its term. Any leader of a later term must
// have been elected by a quorum that intersects this one, and those nodes would have
// adopted the higher term and refused to answer, so the read index is at least every
// committed index at the time the read arrived. The argument uses message causality
// only, never elapsed time, so it holds under any clock skew or drift and under GC
// pauses of the leader. We deliberately do not use the CheckQuorum-based lease
// (etcd's ReadOnlyLeaseBased): it is only safe if clocks drift by less than the margin
// between the election timeout and the lease, which the simulator violates on purpose.
//
// Reference: Ongaro, "Consensus: Bridging Theory and Practice" (the thesis), and the
// Raft paper, Figure 2. Threading: none; all calls from the host's one thread.

#include <cstddef>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/log.h"
#include "core/raft/message.h"
#include "core/raft/progress.h"
#include "core/raft/raft_log.h"
#include "core/rng.h"

namespace keel::raft {

// Bugs planted on purpose so tests can prove the simulator's checkers catch them.
// Test-only: production code never sets these; keel-sim sets them through --plant.
struct PlantedBugs {
  bool grant_vote_without_log_check = false;  // breaks Raft §5.4.1
  bool commit_previous_term_entries = false;  // breaks Raft §5.4.2 (Figure 8)
  bool send_vote_before_persist = false;      // breaks "persist before you speak"
  bool read_index_without_heartbeat = false;  // a leader answers reads on its own word
};

struct Config {
  NodeId id;
  std::vector<NodeId> voters;  // every member, this node included; no duplicates
  int heartbeat_ticks = 1;     // etcd: 100 ms heartbeat = 1 tick of 100 ms
  int election_ticks = 10;     // etcd: 1000 ms election timeout = 10 ticks
  bool pre_vote = true;
  bool check_quorum = true;
  size_t message_bytes_max = 1 << 20;           // entries per append, in bytes
  size_t inflight_messages_max = 256;           // appends in flight per follower
  size_t inflight_bytes_max = 32 << 20;         // bytes in flight per follower
  size_t uncommitted_bytes_max = 64 << 20;      // leader: proposals beyond are refused
  size_t apply_bytes_max = 4 << 20;             // committed entries per Ready
  size_t pending_reads_max = 4096;              // read-index requests waiting at a leader
  PlantedBugs bugs;
};

enum class Role : uint8_t { kFollower, kPreCandidate, kCandidate, kLeader };
std::string_view RoleName(Role r);

struct ReadState {
  LogIndex index;  // serve the read once applied >= index
  std::string context;
};

// Everything the host must do, in this order:
//  1. If `snapshot` is set, install it in the state machine and persist it.
//  2. Persist `entries` (the first may overwrite: drop everything from its index on)
//     and `hard_state`, then, if `must_sync`, make them durable (fsync). A Ready whose
//     only change is the commit index need not be synced (etcd's MustSync): a commit
//     index lost in a crash is learnt again from the leader, so it may ride along with
//     the next sync.
//     `messages` may be sent BEFORE or while this happens (thesis §10.2.1: the leader
//     writes its log in parallel with replicating it).
//  3. Only AFTER step 2 is durable: send `messages_after_persist`, then apply
//     `committed_entries` in order.
//  4. Call Advance(ready). No other call into Raft may happen between GetReady and
//     Advance.
struct Ready {
  std::optional<Snapshot> snapshot;
  std::vector<Entry> entries;
  std::optional<HardState> hard_state;
  std::vector<Message> messages;
  std::vector<Message> messages_after_persist;
  std::vector<Entry> committed_entries;
  std::vector<ReadState> read_states;
  bool must_sync = false;  // a snapshot, entries, or a new term or vote

  bool MustPersist() const { return snapshot || !entries.empty() || hard_state; }
};

// What storage recovered at start-up (empty for a brand-new node).
struct RecoveredState {
  HardState hard_state;
  std::optional<Snapshot> snapshot;
  std::vector<Entry> entries;  // contiguous, after the snapshot
};

class Raft {
 public:
  Raft(Config config, RecoveredState recovered, Rng* rng, Logger logger);

  // A message from a peer. Returns an error (and changes nothing) for a message that
  // is malformed for this cluster: unknown sender, wrong recipient.
  absl::Status Step(Message m);
  void Tick();

  // Replicates `data` entries. On a follower, forwards them to the leader (the caller
  // learns the outcome when they are applied, or by timing out). Errors: Unavailable
  // when there is no leader or a leadership transfer is in progress; ResourceExhausted
  // when the leader's uncommitted bytes would pass uncommitted_bytes_max.
  absl::Status Propose(std::vector<std::string> data);

  // Requests a linearizable read point; it arrives as a ReadState in a later Ready.
  // `context` must be unique among outstanding reads. Errors: Unavailable (no leader),
  // ResourceExhausted (too many pending reads).
  absl::Status ReadIndex(std::string context);

  // Leader: hands leadership to `to` (thesis §3.10). Follower: asks the leader to hand
  // leadership to this node.
  absl::Status TransferLeadership(NodeId to);

  // Starts an election now (as if the election timer fired).
  void Campaign();

  bool HasReady() const;
  Ready GetReady();
  void Advance(const Ready& ready);

  // The host took a snapshot of its state machine at `index` (<= applied).
  void CreateSnapshot(LogIndex index, std::string data);
  // Drops log entries at or below `through` (<= the latest snapshot's index).
  void Compact(LogIndex through);

  NodeId id() const { return config_.id; }
  Term term() const { return term_; }
  NodeId vote() const { return vote_; }
  Role role() const { return role_; }
  NodeId leader() const { return lead_; }
  const RaftLog& log() const { return log_; }
  const Config& config() const { return config_; }
  const Progress* ProgressOf(NodeId peer) const;
  HardState CurrentHardState() const { return {term_, vote_, log_.committed()}; }

  // Asserts the invariants of this node's state; the simulator runs it after every step.
  void CheckInvariants() const;

 private:
  enum class CampaignType { kPreElection, kElection, kTransfer };
  struct PendingRead {
    std::string context;
    LogIndex index;
    NodeId requester;
    std::set<NodeId> acks;
  };

  size_t Quorum() const { return config_.voters.size() / 2 + 1; }
  bool IsVoter(NodeId id) const;
  void ResetElectionTimeout();
  void Reset(Term term);
  void BecomeFollower(Term term, NodeId leader);
  void BecomePreCandidate();
  void BecomeCandidate();
  void BecomeLeader();
  void CampaignAs(CampaignType type);
  void RecordVote(NodeId from, bool granted);

  bool HandleTerm(const Message& m);  // false: the message is done with (dropped/answered)
  void HandleVoteRequest(const Message& m);
  void StepLeader(Message&& m);
  void StepCandidate(Message&& m);
  void StepFollower(Message&& m);
  void HandleAppend(Message&& m);
  void HandleHeartbeat(const Message& m);
  void HandleSnapshot(Message&& m);
  void HandleAppendResponse(const Message& m);
  void HandleHeartbeatResponse(const Message& m);
  void HandleReadIndexRequest(std::string context, NodeId requester);
  void AnswerRead(const PendingRead& read);
  void ReleaseReadsWaitingForCommit();

  void TickElection();
  void TickHeartbeat();
  bool MaybeCommit();
  bool SendAppend(NodeId to, bool send_if_empty);
  bool SendSnapshot(NodeId to, Progress& pr);
  void BroadcastAppend();
  void BroadcastHeartbeat(const std::string& context);
  void SendTimeoutNow(NodeId to);
  void Send(Message m);
  bool CommittedEntryInCurrentTerm() const;
  absl::Status AppendProposal(std::vector<std::string>&& data);

  Config config_;
  Rng* rng_;
  Logger logger_;
  RaftLog log_;

  Term term_;
  NodeId vote_;
  NodeId lead_;
  Role role_ = Role::kFollower;
  int election_elapsed_ = 0;
  int heartbeat_elapsed_ = 0;
  int randomized_election_ticks_ = 0;
  std::map<NodeId, bool> votes_;          // candidate: who answered, granted or not
  std::map<NodeId, Progress> progress_;   // leader: one per voter, this node included
  NodeId lead_transferee_;
  size_t uncommitted_bytes_ = 0;
  std::deque<PendingRead> pending_reads_;          // leader: in a heartbeat round
  std::deque<PendingRead> reads_before_commit_;    // leader: waiting for a current-term commit

  HardState persisted_hard_state_;
  bool snapshot_pending_install_ = false;
  bool ready_outstanding_ = false;
  std::vector<Message> messages_;
  std::vector<Message> messages_after_persist_;
  std::vector<ReadState> read_states_;
};

}  // namespace keel::raft
