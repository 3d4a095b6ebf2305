#include "core/lease/lessor.h"

#include <algorithm>
#include <vector>

#include "core/assert.h"
#include "core/lease/lease.pb.h"

namespace keel::lease {

Lessor::Lessor(const LeaseTable* table, LessorConfig config) : table_(table), config_(config) {
  KEEL_ASSERT(table_ != nullptr && config_.renewals_per_checkpoint_max > 0 &&
              config_.checkpoints_in_flight_max > 0);
}

void Lessor::Promote(Term term, Nanos now) {
  KEEL_ASSERT(!primary_ || term > term_);
  primary_ = true;
  term_ = term;
  base_ms_ = table_->clock_ms();
  promoted_at_ = now;
  proposed_sequence_ = 0;
  in_flight_.clear();
  proposed_clock_ms_ = base_ms_;
  last_proposed_at_ = now;
  renewals_.clear();
  waiting_.clear();
}

void Lessor::Demote() {
  primary_ = false;
  in_flight_.clear();
  renewals_.clear();
  waiting_.clear();
}

void Lessor::RestIfIdle(Nanos now) {
  KEEL_ASSERT(primary_);
  if (table_->size() > 0 || !renewals_.empty() || !in_flight_.empty()) return;
  base_ms_ = table_->clock_ms();
  promoted_at_ = now - config_.promotion_pause;  // no pause left: it runs from here
  last_proposed_at_ = now;
}

int64_t Lessor::ClockMs(Nanos now) const {
  KEEL_ASSERT(primary_);
  const Nanos ran = now - promoted_at_ - config_.promotion_pause;
  const int64_t ran_ms =
      ran.count() <= 0 ? 0 : std::chrono::duration_cast<Millis>(ran).count();
  return std::max(table_->clock_ms(), base_ms_ + ran_ms);
}

int64_t Lessor::ExpiryMs(int64_t id) const {
  KEEL_ASSERT(primary_);
  const LeaseTable::Lease* l = table_->Find(id);
  KEEL_ASSERT(l != nullptr);
  int64_t expiry = l->expiry_ms;
  if (auto it = renewals_.find(id); it != renewals_.end()) expiry = std::max(expiry, it->second.expiry_ms);
  return expiry;
}

int64_t Lessor::Renew(int64_t id, Nanos now) {
  KEEL_ASSERT(primary_ && !Expired(id, now));
  const int64_t expiry = ClockMs(now) + table_->Find(id)->ttl_seconds * 1000;
  Renewal& r = renewals_[id];
  r.expiry_ms = std::max(r.expiry_ms, expiry);
  r.sequence = 0;  // carried by the next checkpoint proposed
  waiting_[id] = r.expiry_ms;
  return r.expiry_ms;
}

void Lessor::RenewGranted(int64_t id, Nanos now) {
  KEEL_ASSERT(primary_ && table_->Find(id) != nullptr);
  Renewal& r = renewals_[id];
  r.expiry_ms = std::max(r.expiry_ms, ClockMs(now) + table_->Find(id)->ttl_seconds * 1000);
  r.sequence = 0;
  waiting_[id] = r.expiry_ms;
}

std::optional<leasepb::Checkpoint> Lessor::TakeCheckpoint(Nanos now, uint64_t applied) {
  KEEL_ASSERT(primary_);
  if (in_flight_.size() >= config_.checkpoints_in_flight_max) {
    return std::nullopt;  // commit is slow or stalled: batch, and bound the log's growth
  }
  const int64_t clock = ClockMs(now);
  const std::optional<int64_t> next_expiry = table_->next_expiry_ms();
  const bool expiry_due = next_expiry && *next_expiry <= clock && proposed_clock_ms_ < *next_expiry;
  const bool interval_due =
      table_->size() > 0 && now - last_proposed_at_ >= config_.checkpoint_interval;
  if (waiting_.empty() && !expiry_due && !interval_due) return std::nullopt;
  leasepb::Checkpoint cp;
  cp.set_term(term_.value);
  cp.set_sequence(++proposed_sequence_);
  cp.set_applied_index(applied);
  // The soonest to expire go first; see below for the ones that do not fit.
  std::vector<std::pair<int64_t, int64_t>> order;  // (table expiry, id)
  order.reserve(waiting_.size());
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    const LeaseTable::Lease* l = table_->Find(it->first);
    if (l == nullptr) {  // revoked meanwhile: nothing to renew
      renewals_.erase(it->first);
      it = waiting_.erase(it);
      continue;
    }
    order.emplace_back(l->expiry_ms, it->first);
    ++it;
  }
  std::sort(order.begin(), order.end());
  const size_t carried = std::min(order.size(), config_.renewals_per_checkpoint_max);
  int64_t clock_cap = clock;
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t id = order[k].second;
    if (k >= carried) {
      // Left for the next checkpoint: this one must not expire it meanwhile, for its
      // renewal was accepted while it was live.
      clock_cap = std::min(clock_cap, order[k].first - 1);
      continue;
    }
    leasepb::Renewal* r = cp.add_renewals();
    r->set_id(id);
    r->set_expiry_ms(waiting_[id]);
    renewals_[id].sequence = cp.sequence();
    waiting_.erase(id);
  }
  cp.set_clock_ms(std::max(table_->clock_ms(), clock_cap));
  in_flight_.emplace(cp.sequence(), cp.clock_ms());
  proposed_clock_ms_ = std::max(proposed_clock_ms_, cp.clock_ms());
  last_proposed_at_ = now;
  return cp;
}

void Lessor::OnApplied(const leasepb::Checkpoint& checkpoint) {
  if (!primary_ || checkpoint.term() != term_.value) return;
  in_flight_.erase(in_flight_.begin(), in_flight_.upper_bound(checkpoint.sequence()));
  // Its clock is the table's now; proposed_clock_ms_ stays (it is at most that).
  for (const leasepb::Renewal& r : checkpoint.renewals()) {
    auto it = renewals_.find(r.id());
    // A newer renewal of the same lease may be on its way: keep it.
    if (it != renewals_.end() && it->second.sequence == checkpoint.sequence()) renewals_.erase(it);
  }
}

void Lessor::OnDropped(const leasepb::Checkpoint& checkpoint) {
  if (!primary_ || checkpoint.term() != term_.value) return;
  in_flight_.erase(checkpoint.sequence());
  // Its clock never lands: an expiry it was to reach must be proposed again.
  proposed_clock_ms_ = table_->clock_ms();
  for (const auto& [sequence, clock] : in_flight_) proposed_clock_ms_ = std::max(proposed_clock_ms_, clock);
  for (const leasepb::Renewal& r : checkpoint.renewals()) {
    auto it = renewals_.find(r.id());
    if (it == renewals_.end() || it->second.sequence != checkpoint.sequence()) continue;
    it->second.sequence = 0;
    waiting_[r.id()] = it->second.expiry_ms;
  }
}

}  // namespace keel::lease
