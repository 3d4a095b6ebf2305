#pragma once
// AutoCompactor: etcd's automatic history compaction (etcdserver/api/v3compactor), as a
// decision the leader's server takes on each tick: when to propose a Compact, and to
// which revision. Only the leader compacts (etcd pauses the compactor elsewhere).
//
//   periodic (--auto-compaction-mode=periodic --auto-compaction-retention=D): keep D of
//     history. Every D/10 (D capped at 1h for the interval) the current revision is
//     sampled; once D has passed since the start (or the last success), the revision
//     sampled D ago is compacted; then every min(D, 1h).
//   revision (--auto-compaction-mode=revision --auto-compaction-retention=N): every
//     revision_interval (etcd: 5 minutes), compact current - N, if that moved.
//
// A compaction refused with ErrCompacted counts as done (someone compacted further).

#include <cstdint>
#include <deque>
#include <optional>

#include "core/types.h"

namespace keel::server {

struct AutoCompactionConfig {
  enum class Mode { kNone, kPeriodic, kRevision };
  Mode mode = Mode::kNone;
  Nanos retention_period{0};        // periodic
  int64_t retention_revisions = 0;  // revision
  Nanos revision_interval = std::chrono::minutes(5);  // etcd's fixed revInterval
};

class AutoCompactor {
 public:
  explicit AutoCompactor(AutoCompactionConfig config);

  // Called every tick. Returns the revision to compact now, if one is due; the caller
  // proposes it and reports the outcome. Nothing is due while a compaction is on its way.
  std::optional<int64_t> Tick(Nanos now, int64_t current_revision, bool leader);
  // The proposed compaction succeeded (or was refused as already compacted): true; it
  // failed otherwise (retried at the next sample).
  void OnResult(Nanos now, bool done);

 private:
  Nanos SampleInterval() const;
  Nanos CompactInterval() const;

  AutoCompactionConfig config_;
  bool started_ = false;
  bool in_flight_ = false;
  Nanos next_sample_{0};
  Nanos last_success_{0};
  Nanos base_interval_{0};
  std::deque<int64_t> samples_;  // periodic: front = the revision one retention ago
  size_t samples_max_ = 0;
  int64_t last_compacted_ = 0;   // revision: the last target compacted
  int64_t pending_ = 0;
};

}  // namespace keel::server
