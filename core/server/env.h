#pragma once
// Env: the only door between the deterministic core and the world (DESIGN.md, "The core
// contract"). Time, timers, the network, randomness, storage and logging all arrive
// through it. There are exactly two implementations: sim::SimEnv (virtual everything,
// one seed) and net::AsioEnv (the real thing). There is no third mode.

#include <cstdint>
#include <functional>
#include <string>

#include "core/log.h"
#include "core/rng.h"
#include "core/server/storage.h"
#include "core/types.h"

namespace keel::server {

using TimerId = uint64_t;

class Env {
 public:
  virtual ~Env() = default;

  // Monotonic time of this node's clock. In the simulator it may be skewed and drift.
  virtual Nanos Now() = 0;
  // Calls `fn` once, `after` from now on this node's clock, on the node's thread.
  virtual TimerId SetTimer(Nanos after, std::function<void()> fn) = 0;
  virtual void CancelTimer(TimerId id) = 0;
  // Best effort: the message may be lost, delayed, duplicated or reordered.
  virtual void Send(NodeId to, std::string bytes) = 0;
  // Requires: seeded so that no two node starts share a sequence (the simulator draws
  // from the run's one seed; real mode seeds from the OS). Node draws request ids from
  // it, and a repeated id would be taken for a duplicate of the earlier request.
  virtual Rng& Random() = 0;
  virtual Storage& Disk() = 0;
  virtual Logger Log() = 0;
};

}  // namespace keel::server
