#pragma once
// LeaseTable: the replicated lease state, the same on every member at the same applied
// index (etcd's lessor, minus its clock). Leases live on the *lease clock*: a replicated
// millisecond count that only committed checkpoints of a leader advance (lessor.h). A
// lease expires when the lease clock reaches its expiry; that happens only by applying
// a checkpoint, so only a leader with a quorum can make a lease expire (etcd #15247),
// and every member revokes it at the same index.
//
// Durable in the kv::Backend: one Record per lease, and meta "lease_clock_ms". The keys
// bound to each lease are not stored: the Store reports them as it loads (Attach).
//
// Requires: LoadLeases() before the Store's Load(), CheckLoaded() after it.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/status/statusor.h"
#include "core/kv/applier.h"
#include "core/kv/backend.h"
#include "core/kv/store.h"

namespace keel::leasepb {
class Checkpoint;
}

namespace keel::lease {

struct LeaseConfig {
  int64_t min_ttl_seconds = 2;  // etcd: ceil(1.5 x election timeout); shorter TTLs are raised
  int64_t max_ttl_seconds = 9'000'000'000;  // etcd's MaxLeaseTTL
  size_t leases_max = 1'000'000;            // a grant beyond it is refused
};

class LeaseTable : public kv::LeaseAttachments, public kv::LeaseLookup {
 public:
  struct Lease {
    int64_t ttl_seconds = 0;
    int64_t expiry_ms = 0;  // on the lease clock
    uint64_t granted_index = 0;  // the log index that granted it
    absl::btree_set<std::string, std::less<>> keys;
  };

  // Requires: backend outlives the table.
  LeaseTable(kv::Backend* backend, LeaseConfig config);

  absl::Status LoadLeases();
  // After the Store loaded: every key it bound must name a lease.
  absl::Status CheckLoaded() const;

  // Replicated operations, applied at the same index on every member.
  //
  // Grants a lease expiring at clock + ttl (raised to the minimum). Returns the TTL
  // granted. ErrLeaseExist, ErrLeaseTTLTooLarge, or ResourceExhausted past leases_max.
  // `granted_index`: the entry's log index (a checkpoint proposed before the leader knew
  // of the grant cannot expire it: Checkpoint.applied_index).
  absl::StatusOr<int64_t> Grant(int64_t id, int64_t ttl_seconds, uint64_t granted_index = 0);
  // Deletes the lease's keys in one revision, then the lease. ErrLeaseNotFound.
  absl::Status Revoke(int64_t id, kv::Store* store, std::vector<mvccpb::Event>* events);
  // Renews what `checkpoint` names (a lease already gone is skipped), advances the clock
  // to its clock_ms (never backwards), then revokes every lease whose expiry the clock
  // reached and that was granted at or below the checkpoint's applied_index, oldest
  // expiry first, each in its own revision. Appends their ids.
  absl::Status ApplyCheckpoint(const leasepb::Checkpoint& checkpoint, kv::Store* store,
                               std::vector<mvccpb::Event>* events, std::vector<int64_t>* revoked);

  // kv::LeaseAttachments, kv::LeaseLookup.
  void Attach(std::string_view key, int64_t lease) override;
  void Detach(std::string_view key) override;
  bool Exists(int64_t lease) const override { return leases_.contains(lease); }

  const Lease* Find(int64_t id) const;
  int64_t clock_ms() const { return clock_ms_; }
  // The earliest expiry of any lease.
  std::optional<int64_t> next_expiry_ms() const;
  size_t size() const { return leases_.size(); }
  const absl::btree_map<int64_t, Lease>& leases() const { return leases_; }
  void CheckInvariants() const;

 private:
  absl::Status Persist(int64_t id, const Lease& lease);
  absl::Status SetExpiry(int64_t id, Lease& lease, int64_t expiry_ms);

  kv::Backend* backend_;
  LeaseConfig config_;
  int64_t clock_ms_ = 0;
  absl::btree_map<int64_t, Lease> leases_;
  absl::btree_set<std::pair<int64_t, int64_t>> by_expiry_;  // (expiry_ms, id)
  absl::btree_map<std::string, int64_t, std::less<>> lease_of_;  // key -> lease
  // Keys whose latest put names a lease that does not exist. Only a load can make one
  // (history may name leases revoked since; a later delete or put clears the key): a
  // live key left here after the load is corruption.
  absl::btree_map<std::string, int64_t, std::less<>> unknown_lease_of_;
};

}  // namespace keel::lease
