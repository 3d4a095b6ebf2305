#include "core/lease/lease_table.h"

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/kv/errors.h"
#include "core/lease/lease.pb.h"

namespace keel::lease {
namespace {

absl::Status Fatal(const absl::Status& st) {
  if (st.ok() || kv::IsStorageFailure(st)) return st;
  return absl::InternalError(absl::StrCat("storage: ", st.ToString()));
}

}  // namespace

LeaseTable::LeaseTable(kv::Backend* backend, LeaseConfig config)
    : backend_(backend), config_(config) {
  KEEL_ASSERT(backend_ != nullptr && config_.min_ttl_seconds > 0);
}

absl::Status LeaseTable::LoadLeases() {
  leases_.clear();
  by_expiry_.clear();
  lease_of_.clear();
  unknown_lease_of_.clear();
  absl::StatusOr<std::optional<int64_t>> clock = backend_->GetMeta(kv::kMetaLeaseClock);
  if (!clock.ok()) return Fatal(clock.status());
  clock_ms_ = clock->value_or(0);
  std::string bad;
  absl::Status st = backend_->ScanLeases([&](int64_t id, std::string_view bytes) {
    leasepb::Record r;
    if (!r.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())) || r.id() != id ||
        id <= 0 || r.ttl_seconds() <= 0) {
      if (bad.empty()) bad = absl::StrCat("lease record ", id, " is malformed");
      return;
    }
    Lease& l = leases_[id];
    l.ttl_seconds = r.ttl_seconds();
    l.expiry_ms = r.expiry_ms();
    l.granted_index = r.granted_index();
    by_expiry_.emplace(l.expiry_ms, id);
  });
  if (!st.ok()) return Fatal(st);
  if (!bad.empty()) return absl::DataLossError(bad);
  return absl::OkStatus();
}

absl::Status LeaseTable::CheckLoaded() const {
  if (unknown_lease_of_.empty()) return absl::OkStatus();
  const auto& [key, lease] = *unknown_lease_of_.begin();
  return absl::DataLossError(absl::StrCat("live key '", key, "' is bound to lease ", lease,
                                          ", which does not exist"));
}

absl::Status LeaseTable::Persist(int64_t id, const Lease& lease) {
  leasepb::Record r;
  r.set_id(id);
  r.set_ttl_seconds(lease.ttl_seconds);
  r.set_expiry_ms(lease.expiry_ms);
  r.set_granted_index(lease.granted_index);
  return Fatal(backend_->PutLease(id, r.SerializeAsString()));
}

absl::Status LeaseTable::SetExpiry(int64_t id, Lease& lease, int64_t expiry_ms) {
  by_expiry_.erase({lease.expiry_ms, id});
  lease.expiry_ms = expiry_ms;
  by_expiry_.emplace(expiry_ms, id);
  return Persist(id, lease);
}

absl::StatusOr<int64_t> LeaseTable::Grant(int64_t id, int64_t ttl_seconds,
                                          uint64_t granted_index) {
  KEEL_ASSERT(id > 0);
  if (ttl_seconds > config_.max_ttl_seconds) return kv::ErrLeaseTTLTooLarge();
  if (leases_.contains(id)) return kv::ErrLeaseExist();
  if (leases_.size() >= config_.leases_max) {
    return absl::ResourceExhaustedError(
        absl::StrCat("etcdserver: too many leases (at most ", config_.leases_max, ")"));
  }
  Lease& l = leases_[id];
  l.ttl_seconds = std::max(ttl_seconds, config_.min_ttl_seconds);
  l.expiry_ms = clock_ms_ + l.ttl_seconds * 1000;
  l.granted_index = granted_index;
  by_expiry_.emplace(l.expiry_ms, id);
  if (absl::Status st = Persist(id, l); !st.ok()) return st;
  return l.ttl_seconds;
}

absl::Status LeaseTable::Revoke(int64_t id, kv::Store* store, std::vector<mvccpb::Event>* events) {
  auto it = leases_.find(id);
  if (it == leases_.end()) return kv::ErrLeaseNotFound();
  // Copied: deleting a key detaches it from the set under the walk.
  const std::vector<std::string> keys(it->second.keys.begin(), it->second.keys.end());
  kv::Store::Writer w = store->Write();
  absl::Status st;
  for (const std::string& key : keys) {
    absl::StatusOr<int64_t> n = w.DeleteRange(kv::KeyRange{key, ""}, nullptr);
    if (!n.ok()) {
      st = n.status();
      break;
    }
  }
  std::vector<mvccpb::Event> changes = w.End();
  events->insert(events->end(), changes.begin(), changes.end());
  if (!st.ok()) return st;
  KEEL_ASSERT(it->second.keys.empty());
  by_expiry_.erase({it->second.expiry_ms, id});
  leases_.erase(it);
  return Fatal(backend_->DeleteLease(id));
}

absl::Status LeaseTable::ApplyCheckpoint(const leasepb::Checkpoint& checkpoint, kv::Store* store,
                                         std::vector<mvccpb::Event>* events,
                                         std::vector<int64_t>* revoked) {
  for (const leasepb::Renewal& r : checkpoint.renewals()) {
    auto it = leases_.find(r.id());
    if (it == leases_.end() || r.expiry_ms() <= it->second.expiry_ms) continue;
    if (absl::Status st = SetExpiry(r.id(), it->second, r.expiry_ms()); !st.ok()) return st;
  }
  if (checkpoint.clock_ms() > clock_ms_) {
    clock_ms_ = checkpoint.clock_ms();
    if (absl::Status st = Fatal(backend_->PutMeta(kv::kMetaLeaseClock, clock_ms_)); !st.ok()) return st;
  }
  // Work in proportion to what expires, not to all leases. A lease granted after the
  // leader proposed this is not its to expire: that leader's clock reading did not know
  // it (its renewal, on the leader's clock, comes with a later checkpoint).
  std::vector<int64_t> due;
  for (auto it = by_expiry_.begin(); it != by_expiry_.end() && it->first <= clock_ms_; ++it) {
    if (leases_.at(it->second).granted_index <= checkpoint.applied_index()) due.push_back(it->second);
  }
  for (int64_t id : due) {
    if (absl::Status st = Revoke(id, store, events); !st.ok()) return st;
    revoked->push_back(id);
  }
  return absl::OkStatus();
}

void LeaseTable::Attach(std::string_view key, int64_t lease) {
  if (auto unknown = unknown_lease_of_.find(key); unknown != unknown_lease_of_.end()) {
    unknown_lease_of_.erase(unknown);
  }
  auto bound = lease_of_.find(key);
  if (bound != lease_of_.end() && bound->second == lease) return;
  if (bound != lease_of_.end()) {
    auto old = leases_.find(bound->second);
    if (old != leases_.end()) old->second.keys.erase(key);
    lease_of_.erase(bound);
  }
  if (lease == 0) return;
  auto it = leases_.find(lease);
  if (it == leases_.end()) {
    // Applied puts name existing leases (the applier checks); only a load gets here.
    unknown_lease_of_.emplace(std::string(key), lease);
    return;
  }
  it->second.keys.emplace(key);
  lease_of_.emplace(std::string(key), lease);
}

void LeaseTable::Detach(std::string_view key) { Attach(key, 0); }

const LeaseTable::Lease* LeaseTable::Find(int64_t id) const {
  auto it = leases_.find(id);
  return it == leases_.end() ? nullptr : &it->second;
}

std::optional<int64_t> LeaseTable::next_expiry_ms() const {
  if (by_expiry_.empty()) return std::nullopt;
  return by_expiry_.begin()->first;
}

void LeaseTable::CheckInvariants() const {
  KEEL_ASSERT(by_expiry_.size() == leases_.size());
  size_t bound = 0;
  for (const auto& [id, l] : leases_) {
    KEEL_ASSERT(id > 0 && l.ttl_seconds > 0);
    KEEL_ASSERT(by_expiry_.contains({l.expiry_ms, id}));
    for (const std::string& key : l.keys) {
      auto it = lease_of_.find(key);
      KEEL_ASSERT(it != lease_of_.end() && it->second == id);
    }
    bound += l.keys.size();
  }
  KEEL_ASSERT(bound == lease_of_.size());
}

}  // namespace keel::lease
