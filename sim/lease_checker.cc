#include "sim/lease_checker.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace keel::sim {
namespace {

std::string Time(Nanos t) { return absl::StrFormat("%.3fs", static_cast<double>(t.count()) / 1e9); }

Nanos Scale(Nanos d, double factor) {
  return Nanos(static_cast<int64_t>(static_cast<double>(d.count()) * factor));
}

}  // namespace

void LeaseChecker::OnGranted(int64_t id, int64_t ttl_seconds, Nanos sent, Nanos acknowledged) {
  Lease& l = leases_[id];
  l.ttl_seconds = ttl_seconds;
  l.last_ok_sent = std::max(l.last_ok_sent, sent);
  l.last_ok_acknowledged = std::max(l.last_ok_acknowledged, acknowledged);
}

void LeaseChecker::OnKeepAliveOk(int64_t id, Nanos sent, Nanos acknowledged) {
  Lease& l = leases_[id];
  l.last_ok_sent = std::max(l.last_ok_sent, sent);
  l.last_ok_acknowledged = std::max(l.last_ok_acknowledged, acknowledged);
}

void LeaseChecker::OnKeepAliveNotFound(int64_t id, Nanos sent, Nanos answered) {
  leases_[id].not_found.push_back(answered);
}

void LeaseChecker::OnAbandoned(int64_t id, Nanos at) {
  Lease& l = leases_[id];
  if (l.abandoned < Nanos(0)) l.abandoned = at;
}

void LeaseChecker::OnRevoked(int64_t id, Nanos at, bool expired) {
  Lease& l = leases_[id];
  if (l.revoked >= Nanos(0)) return;
  l.revoked = at;
  l.expired = expired;
}

size_t LeaseChecker::expired() const {
  return static_cast<size_t>(std::count_if(leases_.begin(), leases_.end(),
                                           [](const auto& e) { return e.second.expired; }));
}

Nanos LeaseChecker::BoundFor(const Lease& l, const Leadership& leadership) const {
  const Nanos from = l.last_ok_acknowledged;
  const Nanos base = from +
                     Scale(std::chrono::seconds(l.ttl_seconds), 1.0 / (1.0 - config_.drift_max)) +
                     config_.checkpoint_interval + config_.commit_allowance;
  const Nanos per_change =
      config_.election_timeout + config_.checkpoint_interval + config_.commit_allowance;
  // Leader changes and stalls count only while the lease is still due; each one pushes
  // its due time later, so the bound is the fixpoint of adding what falls before it.
  Nanos bound = base;
  for (;;) {
    Nanos next = base;
    for (Nanos e : leadership.elections) {
      if (e > from && e <= bound) next += per_change;
    }
    for (const auto& [a, b] : leadership.stalled) {
      const Nanos lo = std::max(a, from);
      const Nanos hi = std::min(b, bound);
      if (hi > lo) next += hi - lo;
    }
    if (next <= bound) break;
    bound = next;
  }
  return bound;
}

std::vector<std::string> LeaseChecker::Check(Nanos end, const Leadership& leadership) const {
  std::vector<std::string> failures;
  auto fail = [&](std::string f) {
    if (failures.size() < 10) failures.push_back(std::move(f));
  };
  for (const auto& [id, l] : leases_) {
    if (l.ttl_seconds == 0) continue;  // never granted to a client we know
    const Nanos ttl = std::chrono::seconds(l.ttl_seconds);
    if (l.expired && l.last_ok_sent >= Nanos(0)) {
      // Less a millisecond: the lease clock counts whole milliseconds (lessor.h).
      const Nanos earliest = l.last_ok_sent + Scale(ttl, 1.0 / (1.0 + config_.drift_max)) -
                             config_.skew_forward - Millis(1);
      if (l.revoked < earliest) {
        fail(absl::StrCat("Lease safety: lease ", id, " (TTL ", l.ttl_seconds,
                          "s) expired at ", Time(l.revoked), ", before ", Time(earliest),
                          ": a keepalive sent at ", Time(l.last_ok_sent),
                          " was acknowledged"));
      }
    }
    for (Nanos answered : l.not_found) {
      if (l.revoked < Nanos(0) || l.revoked > answered) {
        fail(absl::StrCat("Lease truth: a keepalive of lease ", id, " was answered 'not found' at ",
                          Time(answered), " while the committed keyspace still had it",
                          l.revoked < Nanos(0) ? "" : absl::StrCat(" (revoked at ", Time(l.revoked), ")")));
        break;
      }
    }
    if (l.abandoned >= Nanos(0) && l.last_ok_acknowledged >= Nanos(0)) {
      const Nanos bound = BoundFor(l, leadership);
      const bool late = l.revoked >= Nanos(0) ? l.revoked > bound : bound < end;
      if (late) {
        fail(absl::StrCat("Lease bound: lease ", id, " (TTL ", l.ttl_seconds,
                          "s), last acknowledged at ", Time(l.last_ok_acknowledged),
                          " and then abandoned, was ",
                          l.revoked >= Nanos(0) ? absl::StrCat("revoked at ", Time(l.revoked))
                                                : "still alive at the end",
                          ", past its bound ", Time(bound)));
      }
    }
  }
  return failures;
}

}  // namespace keel::sim
