#pragma once
// KvServer: etcd's v3 KV and Lease services on one member, over its Node and its
// KvStateMachine. net/ serves it over gRPC; the simulator's clients call it directly.
// Every call answers exactly once through its Reply, never inside the call's own
// stack when it came from Raft (callbacks are deferred to a fresh event).
//
// Reads. Range and read-only Txn are linearizable by default: a ReadIndex round confirms
// the read point, then the local state machine serves it once applied there (etcd's
// linearizable read); serializable=true reads the local state at once (possibly stale).
//
// Writes. Put, DeleteRange, write Txn, Compact, LeaseGrant and LeaseRevoke go through
// Raft; the reply carries the state machine's response (kv_state_machine.h). Errors
// with etcd's codes and messages; DeadlineExceeded means the outcome is unknown.
//
// Leases. KeepAlive and TimeToLive are served by the leader (FailedPrecondition
// "etcdserver: not leader" elsewhere, and at a new leader until it applied the first
// entry of its term; the caller retries) from the lessor's memory (core/lease/lessor.h). A keepalive is acknowledged once the checkpoint
// carrying its renewal committed. A lease the leader believes gone (unknown, or
// expired on its clock) is reported gone only after a ReadIndex round confirmed this
// node still leads and its state is current (a deposed leader's view is stale: etcd
// #15247), and an expired one only once its revocation applied.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <vector>

#include "absl/status/statusor.h"
#include "core/etcdpb/forward.h"
#include "core/lease/lessor.h"
#include "core/server/auto_compactor.h"
#include "core/server/env.h"
#include "core/server/kv_state_machine.h"
#include "core/server/node.h"
#include "core/watch/watch_hub.h"

namespace keel::server {

// etcd's errors for requests a member cannot serve now.
absl::Status ErrNotLeader();    // FailedPrecondition "etcdserver: not leader"
absl::Status ErrLeaderChanged();  // Unavailable "etcdserver: leader changed"

struct KvServerPlantedBugs {
  // A follower serves a linearizable read from its own state, without a ReadIndex
  // round (it may be behind the leader: a stale read).
  bool follower_reads_locally = false;
  // A leader reports a lease gone on its own view, without confirming it still leads
  // (a deposed leader, paused or partitioned, revokes leases its successor kept alive).
  bool lease_gone_without_confirmation = false;
  // A new leader renews every lease for a whole TTL (etcd before lease checkpoints,
  // #9888): leader changes keep an abandoned lease alive.
  bool fresh_ttl_on_promotion = false;
};

struct KvServerConfig {
  uint64_t cluster_id = 0;
  lease::LessorConfig lessor;
  watch::WatchConfig watch;
  AutoCompactionConfig auto_compaction;  // etcd's --auto-compaction-mode/-retention
  Nanos request_timeout = Millis(5000);  // keepalive and lease waits end by then
  size_t lease_waiters_max = 100'000;    // keepalives waiting for their checkpoint
  KvServerPlantedBugs bugs;
};

class KvServer : public KvStateMachine::Listener {
 public:
  template <typename T>
  using Reply = std::function<void(absl::StatusOr<T>)>;

  // Requires: env, node and machine outlive the server; the machine is the node's.
  KvServer(KvServerConfig config, Env& env, Node& node, KvStateMachine& machine);
  ~KvServer() override;
  KvServer(const KvServer&) = delete;
  KvServer& operator=(const KvServer&) = delete;

  // Starts the server's tick (leadership, lease checkpoints). Requires: node started.
  void Start();

  void Range(const etcdserverpb::RangeRequest& r, Reply<etcdserverpb::RangeResponse> reply);
  void Put(const etcdserverpb::PutRequest& r, Reply<etcdserverpb::PutResponse> reply);
  void DeleteRange(const etcdserverpb::DeleteRangeRequest& r,
                   Reply<etcdserverpb::DeleteRangeResponse> reply);
  void Txn(const etcdserverpb::TxnRequest& r, Reply<etcdserverpb::TxnResponse> reply);
  void Compact(const etcdserverpb::CompactionRequest& r,
               Reply<etcdserverpb::CompactionResponse> reply);
  void LeaseGrant(const etcdserverpb::LeaseGrantRequest& r,
                  Reply<etcdserverpb::LeaseGrantResponse> reply);
  void LeaseRevoke(const etcdserverpb::LeaseRevokeRequest& r,
                   Reply<etcdserverpb::LeaseRevokeResponse> reply);
  // Returns the lease's granted TTL in seconds once the renewal is durable.
  void LeaseKeepAlive(int64_t id, Reply<int64_t> reply);
  void LeaseTimeToLive(const etcdserverpb::LeaseTimeToLiveRequest& r,
                       Reply<etcdserverpb::LeaseTimeToLiveResponse> reply);
  // The leases this member knows, as of its applied index (etcd serves it locally).
  std::vector<int64_t> Leases() const;

  // Watch streams (core/watch/watch_hub.h), served from this member's applied state.
  // Events applied in one turn of the event loop (a Ready's commands) reach the hub
  // together, after the turn: each watcher gets them in one response, not one per
  // command. Every other watch call hands the hub what is pending first, so a progress
  // answer or a new watcher never overtakes an applied event. The sink must not call
  // back into the server.
  absl::StatusOr<watch::WatchHub::StreamId> OpenWatchStream(
      watch::WatchHub::Sink sink, watch::WatchHub::EncodedSink encoded = nullptr);
  void CloseWatchStream(watch::WatchHub::StreamId stream);
  void WatchCreate(watch::WatchHub::StreamId stream, const etcdserverpb::WatchCreateRequest& r);
  void WatchCancel(watch::WatchHub::StreamId stream, int64_t watch_id);
  void WatchProgress(watch::WatchHub::StreamId stream);
  const watch::WatchHub& watches() const { return watches_; }

  // KvStateMachine::Listener (called while the node applies; nothing here calls back).
  void OnEvents(const std::vector<mvccpb::Event>& events) override;
  void OnLeaseCheckpoint(const leasepb::Checkpoint& checkpoint,
                         const std::vector<int64_t>& revoked) override;
  void OnLeaseGranted(int64_t id) override;
  void OnLeaseRevoked(int64_t id) override;
  void OnRestored() override;
  void FlushWatchEvents();

  const lease::Lessor& lessor() const { return lessor_; }
  // Leases this member saw expire (revoked by applied checkpoints), since it started.
  uint64_t leases_expired() const { return leases_expired_; }
  // The revision of this member's applied keyspace.
  int64_t revision() const { return machine_.store().revision(); }
  // etcd's response header: cluster, member, term (callers set the revision).
  void FillHeader(etcdserverpb::ResponseHeader* header) const;

 private:
  struct LeaseWaiter {
    int64_t lease;
    int64_t expiry_ms;  // answered once the table's expiry reaches it; max: its revocation
    Reply<int64_t> reply;
  };

  void Tick();
  void FollowLeadership();
  void ProposeCheckpoint();
  void MaybeAutoCompact();
  template <typename Response>
  void ProposeCommand(std::string command, Reply<Response> reply);
  void Defer(std::function<void()> fn);
  void RunDeferred();
  void RenewNow(int64_t id, Reply<int64_t> reply);
  void ConfirmThenKeepAlive(int64_t id, Reply<int64_t> reply);
  void FinishKeepAlive(const absl::Status& confirmed, int64_t id, Reply<int64_t> reply);
  void FinishTimeToLive(const absl::Status& confirmed,
                        const etcdserverpb::LeaseTimeToLiveRequest& r,
                        Reply<etcdserverpb::LeaseTimeToLiveResponse> reply);
  void AddLeaseWaiter(int64_t lease, int64_t expiry_ms, Reply<int64_t> reply);
  void AnswerLeaseWaiters(int64_t lease, const absl::StatusOr<int64_t>& answer,
                          int64_t expiry_reached_ms);
  void FailLeaseWaiters(const absl::Status& status);
  void ExpireLeaseWaiters();

  KvServerConfig config_;
  Env& env_;
  Node& node_;
  KvStateMachine& machine_;
  Logger log_;
  lease::Lessor lessor_;
  watch::WatchHub watches_;
  std::vector<mvccpb::Event> watch_events_;  // applied, not yet handed to the hub
  bool watch_flush_deferred_ = false;
  AutoCompactor auto_compactor_;
  TimerId tick_timer_ = 0;
  // Keepalives waiting for their renewal to commit, or for their expired lease's
  // revocation: by waiter id, by lease, and in deadline order (deadlines are uniform).
  uint64_t next_waiter_id_ = 1;
  std::map<uint64_t, LeaseWaiter> waiters_;
  std::multimap<int64_t, uint64_t> waiters_by_lease_;
  std::deque<std::pair<Nanos, uint64_t>> waiter_deadlines_;
  uint64_t leases_expired_ = 0;
  std::deque<std::function<void()>> deferred_;
  TimerId deferred_timer_ = 0;
  // Guards callbacks that outlive the server (Node requests in flight).
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace keel::server
