#include "core/server/auto_compactor.h"

#include <algorithm>

#include "core/assert.h"

namespace keel::server {
namespace {
constexpr Nanos kHour = std::chrono::hours(1);
constexpr int kSamplesPerPeriod = 10;  // etcd's retryDivisor
}  // namespace

AutoCompactor::AutoCompactor(AutoCompactionConfig config) : config_(config) {
  using Mode = AutoCompactionConfig::Mode;
  KEEL_ASSERT(config_.mode != Mode::kPeriodic || config_.retention_period > Nanos(0));
  KEEL_ASSERT(config_.mode != Mode::kRevision ||
              (config_.retention_revisions > 0 && config_.revision_interval > Nanos(0)));
  if (config_.mode == Mode::kPeriodic) {
    samples_max_ = static_cast<size_t>(config_.retention_period / SampleInterval()) + 1;
  }
}

Nanos AutoCompactor::CompactInterval() const { return std::min(config_.retention_period, kHour); }

Nanos AutoCompactor::SampleInterval() const {
  return std::max<Nanos>(CompactInterval() / kSamplesPerPeriod, Nanos(1));
}

std::optional<int64_t> AutoCompactor::Tick(Nanos now, int64_t current_revision, bool leader) {
  using Mode = AutoCompactionConfig::Mode;
  if (config_.mode == Mode::kNone) return std::nullopt;
  if (!started_) {
    started_ = true;
    last_success_ = now;
    next_sample_ = now;
    base_interval_ = config_.mode == Mode::kPeriodic ? config_.retention_period
                                                     : config_.revision_interval;
  }
  if (now < next_sample_) return std::nullopt;
  // etcd samples whether or not it leads; it compacts only as the leader.
  next_sample_ = now + (config_.mode == Mode::kPeriodic ? SampleInterval()
                                                        : config_.revision_interval);
  if (config_.mode == Mode::kPeriodic) {
    samples_.push_back(current_revision);
    if (samples_.size() > samples_max_) samples_.pop_front();
  }
  if (!leader || in_flight_) return std::nullopt;
  if (config_.mode == Mode::kRevision) {
    const int64_t target = current_revision - config_.retention_revisions;
    if (target <= 0 || target == last_compacted_) return std::nullopt;
    in_flight_ = true;
    pending_ = target;
    return target;
  }
  if (now - last_success_ < base_interval_) return std::nullopt;
  base_interval_ = CompactInterval();  // after the first: every min(retention, 1h)
  in_flight_ = true;
  pending_ = samples_.front();
  return pending_;
}

void AutoCompactor::OnResult(Nanos now, bool done) {
  if (!in_flight_) return;
  in_flight_ = false;
  if (!done) return;  // retried at the next sample
  last_success_ = now;
  last_compacted_ = pending_;
}

}  // namespace keel::server
