#pragma once
// Simulator: one deterministic run of a keel cluster. One thread, one event queue ordered
// by (virtual time, sequence number), one seeded PRNG; every node is the unchanged core
// (server::Node) driven through a SimEnv. The network, clocks and disks are simulated
// and faults are injected from the Scenario's steps.
//
// A run has three phases:
//   1. the scenario: clients issue requests while the steps inject faults, until run_for;
//   2. recovery: every fault heals (links, loss, latency, pauses, churn, disk faults and
//      fsync spikes; crashed nodes restart; the operator disarms NOSPACE alarms). A
//      leader must appear within 10 election timeouts; in the next 10, no
//      request may be refused (no leader) and the cluster must make progress: a write
//      succeeds or entries commit (under overload every client may time out);
//   3. drain: clients stop; every pending request resolves and every node applies the
//      same log, within a bound.
// Then the end-state checks run: every acknowledged write is in every node's register,
// no write that definitely failed is anywhere, and reads were linearizable.
//
// The same seed and scenario always produce the same trace hash, which covers every
// delivered message and every node's (role, term, commit, applied) after every event.

#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <string>
#include <vector>

#include "core/raft/raft.h"
#include "core/rng.h"
#include "core/server/kv_server.h"
#include "sim/hash.h"
#include "sim/scenario.h"

namespace keel::sim {

struct RunOptions {
  uint64_t seed = 1;
  bool trace = false;     // print every event to stdout
  bool progress = false;  // a live progress line on stderr
  raft::PlantedBugs bugs;
  server::KvServerPlantedBugs server_bugs;
  watch::WatchPlantedBugs watch_bugs;
  bool planted_skip_fsync = false;  // test-only: every node's fsync makes nothing durable
};

struct RunResult {
  bool ok = false;
  uint64_t trace_hash = 0;
  std::vector<std::string> failures;  // violations, failed expectations, liveness
  std::string summary;                // one line
  double simulated_seconds = 0;
  uint64_t events = 0;
  uint64_t writes_ok = 0;
};

RunResult RunScenario(const Scenario& scenario, const RunOptions& options);

}  // namespace keel::sim
