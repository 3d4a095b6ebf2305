// The simulator is deterministic, finds each planted bug, and passes clean seeds.
#include "sim/simulator.h"

#include <gtest/gtest.h>

#include <cstdio>

#include "sim/swarm.h"

namespace keel::sim {
namespace {

RunResult RunSeed(uint64_t seed, raft::PlantedBugs bugs = {}, bool skip_fsync = false) {
  RunOptions options;
  options.seed = seed;
  options.bugs = bugs;
  options.planted_skip_fsync = skip_fsync;
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
uint64_t FindPlantedBug(raft::PlantedBugs bugs, const char* name, bool skip_fsync = false) {
  for (uint64_t seed = 1; seed <= 1000; ++seed) {
    const RunResult r = RunSeed(seed, bugs, skip_fsync);
    if (!r.ok) {
      std::printf("[planted %s] found by seed %llu: %s\n", name,
                  static_cast<unsigned long long>(seed), r.failures[0].c_str());
      // The failure reproduces exactly from its seed.
      const RunResult again = RunSeed(seed, bugs, skip_fsync);
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

}  // namespace
}  // namespace keel::sim
