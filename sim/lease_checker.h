#pragma once
// LeaseChecker: the lease guarantees (core/lease/lessor.h), from what the simulated
// registrars were told and when the committed keyspace revoked each lease (the
// reference's apply times). One sentence per violation.
//
//  Safety      a lease is never revoked by expiry sooner than its TTL, on the fastest
//              clock the run allowed, after the send of a grant or keepalive that was
//              acknowledged (kept alive through a majority: never expired);
//  Truth       a keepalive is answered "lease not found" only after the committed
//              keyspace revoked the lease (a deposed leader's stale view is no answer);
//  Bound       a lease whose holder stopped renewing is revoked by
//                last acknowledgement + TTL on the slowest clock + checkpoint interval
//                + commit allowance + the time no leader could commit (none, or one
//                without a quorum) + per leader change after it (the promotion pause
//                + a checkpoint interval + a commit allowance),
//              as lessor.h states; checked for every lease whose deadline fell within
//              the run.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "core/types.h"

namespace keel::sim {

class LeaseChecker {
 public:
  struct Config {
    double drift_max = 0;       // |rate - 1| of the fastest or slowest clock in the run
    Nanos skew_forward{0};      // forward clock jumps the run made, in total
    Nanos election_timeout{0};  // = the lessor's promotion pause
    Nanos checkpoint_interval{0};
    Nanos commit_allowance{0};  // a checkpoint's way through Raft, fsyncs included
  };
  // The leadership of the run: when a leader was elected, and when none could commit.
  struct Leadership {
    std::vector<Nanos> elections;
    // (from, to): spans in which no leader could commit (none, or none with a quorum).
    std::vector<std::pair<Nanos, Nanos>> stalled;
  };

  explicit LeaseChecker(Config config) : config_(config) {}
  // The clocks as the run left them (drift and forward skew are set by its steps).
  void SetClocks(double drift_max, Nanos skew_forward) {
    config_.drift_max = drift_max;
    config_.skew_forward = skew_forward;
  }

  void OnGranted(int64_t id, int64_t ttl_seconds, Nanos sent, Nanos acknowledged);
  void OnKeepAliveOk(int64_t id, Nanos sent, Nanos acknowledged);
  void OnKeepAliveNotFound(int64_t id, Nanos sent, Nanos answered);
  // The holder stopped renewing (it will never send another keepalive).
  void OnAbandoned(int64_t id, Nanos at);
  // The committed keyspace revoked the lease at `at`: by expiry or by a LeaseRevoke.
  void OnRevoked(int64_t id, Nanos at, bool expired);

  std::vector<std::string> Check(Nanos end, const Leadership& leadership) const;
  size_t leases() const { return leases_.size(); }
  size_t expired() const;

 private:
  struct Lease {
    int64_t ttl_seconds = 0;
    Nanos last_ok_sent{-1};          // the latest send of an acknowledged grant/keepalive
    Nanos last_ok_acknowledged{-1};  // the latest acknowledgement
    Nanos abandoned{-1};
    Nanos revoked{-1};
    bool expired = false;
    std::vector<Nanos> not_found;    // when "not found" answers arrived
  };
  Nanos BoundFor(const Lease& l, const Leadership& leadership) const;

  Config config_;
  absl::btree_map<int64_t, Lease> leases_;
};

}  // namespace keel::sim
