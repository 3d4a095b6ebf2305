// The simulator is deterministic, finds each planted bug, and passes clean seeds.
#include "sim/simulator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "sim/swarm.h"

namespace keel::sim {
namespace {

RunResult RunSeed(uint64_t seed, raft::PlantedBugs bugs = {}, bool skip_fsync = false,
                  server::KvServerPlantedBugs server_bugs = {},
                  watch::WatchPlantedBugs watch_bugs = {}) {
  RunOptions options;
  options.seed = seed;
  options.bugs = bugs;
  options.planted_skip_fsync = skip_fsync;
  options.server_bugs = server_bugs;
  options.watch_bugs = watch_bugs;
  return RunScenario(SwarmScenario(seed), options);
}

TEST(Simulator, TheSameSeedGivesTheSameTraceHash) {
  for (uint64_t seed : {7u, 424242u, 99u}) {
    const RunResult a = RunSeed(seed);
    const RunResult b = RunSeed(seed);
    EXPECT_EQ(a.trace_hash, b.trace_hash) << "seed " << seed;
    EXPECT_EQ(a.summary, b.summary);
  }
}

TEST(Simulator, DifferentSeedsGiveDifferentRuns) {
  EXPECT_NE(RunSeed(1).trace_hash, RunSeed(2).trace_hash);
}

TEST(Simulator, CleanSeedsPass) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    const RunResult r = RunSeed(seed);
    EXPECT_TRUE(r.ok) << r.summary << "\n" << (r.failures.empty() ? "" : r.failures[0]);
  }
}

// Runs seeds 1..1000 with the bug planted until one fails; returns that seed (0: none).
uint64_t FindPlantedBug(raft::PlantedBugs bugs, const char* name, bool skip_fsync = false,
                        server::KvServerPlantedBugs server_bugs = {},
                        watch::WatchPlantedBugs watch_bugs = {}) {
  for (uint64_t seed = 1; seed <= 1000; ++seed) {
    const RunResult r = RunSeed(seed, bugs, skip_fsync, server_bugs, watch_bugs);
    if (!r.ok) {
      std::printf("[planted %s] found by seed %llu: %s\n", name,
                  static_cast<unsigned long long>(seed), r.failures[0].c_str());
      // The failure reproduces exactly from its seed.
      const RunResult again = RunSeed(seed, bugs, skip_fsync, server_bugs, watch_bugs);
      EXPECT_FALSE(again.ok);
      EXPECT_EQ(again.trace_hash, r.trace_hash);
      return seed;
    }
  }
  return 0;
}

TEST(PlantedBugs, VoteWithoutUpToDateLogCheckIsFound) {  // Raft §5.4.1
  EXPECT_NE(FindPlantedBug({.grant_vote_without_log_check = true}, "vote-without-log-check"), 0u);
}

TEST(PlantedBugs, CommitByCountingPreviousTermEntriesIsFound) {  // Raft §5.4.2
  EXPECT_NE(FindPlantedBug({.commit_previous_term_entries = true}, "commit-previous-term"), 0u);
}

TEST(PlantedBugs, VoteSentBeforeItIsPersistedIsFound) {
  EXPECT_NE(FindPlantedBug({.send_vote_before_persist = true}, "vote-before-persist"), 0u);
}

// The linearizability checker bites: a leader that answers read-index requests without
// confirming it still leads (no heartbeat round) serves stale reads once deposed.
TEST(PlantedBugs, ReadIndexWithoutAHeartbeatRoundIsFound) {
  EXPECT_NE(FindPlantedBug({.read_index_without_heartbeat = true}, "read-without-heartbeat"), 0u);
}

// The disk lies: fsync returns before the writes are durable, so a node acknowledges
// entries and votes that a crash then takes back.
TEST(PlantedBugs, AcknowledgingBeforeTheFsyncIsFound) {
  EXPECT_NE(FindPlantedBug({}, "skip-fsync", /*skip_fsync=*/true), 0u);
}

// Freshness bites: a follower that answers a linearizable read from its own state,
// without a ReadIndex round, serves reads that miss revisions committed before them.
TEST(PlantedBugs, AFollowerAnsweringALinearizableReadLocallyIsFound) {
  EXPECT_NE(FindPlantedBug({}, "follower-read", false, {.follower_reads_locally = true}), 0u);
}

// The per-key Wing & Gong search finds it too, by itself: it reads no revisions, so it
// does not rest on the store's own witness order.
TEST(PlantedBugs, ThePerKeySearchFindsAStaleFollowerReadByItself) {
  // Seed 2 draws three members (seed 1 draws a sole member, which has no followers once
  // it started: it campaigns at once).
  const RunResult r = RunSeed(2, {}, false, {.follower_reads_locally = true});
  ASSERT_FALSE(r.ok);
  EXPECT_TRUE(std::any_of(r.failures.begin(), r.failures.end(), [](const std::string& f) {
    return f.find("Linearizability (per-key search)") != std::string::npos;
  }));
}

// Lease truth bites: a leader that reports a lease gone from its own view, without
// confirming it still leads, tells a registrar its lease is gone while the cluster
// (a newer leader) keeps it alive: a deposed leader revoking leases (etcd #15247).
TEST(PlantedBugs, ADeposedLeaderRevokingLeasesIsFound) {
  EXPECT_NE(FindPlantedBug({}, "lease-gone", false, {.lease_gone_without_confirmation = true}),
            0u);
}

// Lease bound bites: a new leader that gives every lease a fresh TTL (etcd before lease
// checkpoints, #9888) keeps an abandoned lease alive across leader changes.
TEST(PlantedBugs, ANewLeaderRenewingEveryLeaseIsFound) {
  EXPECT_NE(FindPlantedBug({}, "fresh-ttl-on-promotion", false, {.fresh_ttl_on_promotion = true}),
            0u);
}

// The watch checker bites: a hub whose catch-up resumes one revision late after a batch
// boundary drops the first event after it (Reliable).
TEST(PlantedBugs, AWatchDroppingTheFirstEventAfterABatchBoundaryIsFound) {
  EXPECT_NE(FindPlantedBug({}, "watch-skip", false, {}, {.skip_first_event_after_batch = true}),
            0u);
}

}  // namespace
}  // namespace keel::sim
