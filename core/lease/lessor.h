#pragma once
// Lessor: the leader's side of leases (etcd's primary lessor): the running lease clock,
// keepalives in memory, and the checkpoints that replicate them through Raft.
//
// The lease clock. The replicated clock (LeaseTable::clock_ms) moves only when a
// checkpoint commits. A leader runs it on from where it found it:
//   clock(now) = max(replicated, base + max(0, now - promoted_at - promotion_pause))
// so a new leader first pauses for `promotion_pause` (the election timeout: etcd's
// lease extension on promotion, time for keepalives to find the new leader), then runs
// at its own clock's rate. Leaderless time does not count, and a leader change can take
// the clock back by at most what the old leader had not yet checkpointed.
//
// Keepalives. A renewal sets the lease's expiry to clock(now) + TTL and is answered
// only once a checkpoint carrying it has committed (the table's expiry reached the
// renewal's), so an acknowledged keepalive survives any leader change. Checkpoints go out at once when
// renewals wait and fewer than `checkpoints_in_flight_max` are in flight (group
// commit), at least every `checkpoint_interval` while leases exist, and as soon as the
// clock reaches a lease's expiry (the checkpoint that revokes it).
//
// The bound. A lease whose holder stopped renewing, last acknowledged at real time r,
// is revoked (the revoking checkpoint applied on the leader) by
//   r + TTL + checkpoint_interval + commit latency
//     + the time in which no leader could commit (none elected, or none with a quorum)
//     + for each leader change after r: promotion_pause + checkpoint_interval
//       + commit latency (the clock pauses, and goes back by what was not checkpointed)
// with TTL scaled by the slowest leader clock's rate (the simulator checks it:
// sim/lease_checker.h). The lease clock moves only while a leader with a quorum runs;
// no bound can hold through time without one.
// It is never revoked before r' + TTL - 1 ms, r' the time its last acknowledged keepalive
// or its grant was sent (the clock counts whole milliseconds), for no clock runs faster
// than real time beyond the drift the simulator allows. A grant starts its TTL on the
// leader's clock when the leader applies it (RenewGranted), and a checkpoint cannot
// expire a lease granted after the leader proposed it (Checkpoint.applied_index): the
// table's clock may lag the leader's, and a lease must not be born expired.
//
// Single-threaded; all time through the Env (`now` arguments).

#include <cstdint>
#include <optional>

#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "core/lease/lease_table.h"
#include "core/types.h"

namespace keel::leasepb {
class Checkpoint;
}

namespace keel::lease {

struct LessorConfig {
  Nanos promotion_pause = Millis(1000);     // the election timeout
  Nanos checkpoint_interval = Millis(500);  // the clock is checkpointed at least this often
  size_t renewals_per_checkpoint_max = 10000;
  uint64_t checkpoints_in_flight_max = 4;  // beyond, renewals batch until one commits
};

class Lessor {
 public:
  // Requires: table outlives the lessor.
  Lessor(const LeaseTable* table, LessorConfig config);

  // This node became leader of `term` at `now` / stopped being leader. Demote forgets
  // every renewal not yet applied (its keepalive must be failed by the caller).
  void Promote(Term term, Nanos now);
  void Demote();
  bool primary() const { return primary_; }
  Term term() const { return term_; }

  // While no lease exists the clock has nothing to time: it stops where the table's is,
  // so that a lease granted after a quiet spell is not born expired (the table's clock
  // moves only with checkpoints, and there are none without leases). Requires: primary().
  void RestIfIdle(Nanos now);
  // Requires: primary().
  int64_t ClockMs(Nanos now) const;
  // The lease's expiry as the leader knows it: the table's, or a newer renewal's.
  // Requires: primary(), the lease exists.
  int64_t ExpiryMs(int64_t id) const;
  bool Expired(int64_t id, Nanos now) const { return ExpiryMs(id) <= ClockMs(now); }
  // Renews a live lease; returns the expiry it asks for: the keepalive is durable once
  // the table's expiry for the lease reaches it.
  // Requires: primary(), the lease exists and has not expired.
  int64_t Renew(int64_t id, Nanos now);

  // The checkpoint to propose now, if one is due (see above). Requires: primary().
  // `applied`: this node's applied index (Checkpoint.applied_index).
  std::optional<leasepb::Checkpoint> TakeCheckpoint(Nanos now, uint64_t applied = UINT64_MAX);
  // A lease this leader just granted: its TTL starts now, on the leader's clock (the
  // table's clock may lag by what is not yet checkpointed). Requires: primary().
  void RenewGranted(int64_t id, Nanos now);
  // A checkpoint of this leader's term was applied.
  void OnApplied(const leasepb::Checkpoint& checkpoint);
  // Raft refused to propose `checkpoint`: its renewals go with the next one.
  void OnDropped(const leasepb::Checkpoint& checkpoint);
  size_t renewals_waiting() const { return waiting_.size(); }
  size_t checkpoints_in_flight() const { return in_flight_.size(); }

 private:
  struct Renewal {
    int64_t expiry_ms;
    uint64_t sequence;  // 0 while it waits for a checkpoint
  };

  const LeaseTable* table_;
  LessorConfig config_;
  bool primary_ = false;
  Term term_;
  int64_t base_ms_ = 0;
  Nanos promoted_at_{0};
  uint64_t proposed_sequence_ = 0;
  absl::btree_map<uint64_t, int64_t> in_flight_;  // sequence -> clock: proposed, not yet
                                                   // applied or dropped
  int64_t proposed_clock_ms_ = 0;  // the highest clock in flight (or applied) this term
  Nanos last_proposed_at_{0};
  absl::btree_map<int64_t, Renewal> renewals_;  // by lease: not yet applied, newest
  absl::btree_map<int64_t, int64_t> waiting_;   // by lease: expiry, not yet proposed
};

}  // namespace keel::lease
