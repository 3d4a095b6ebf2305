// The checkers must bite: each property is shown to catch a history that breaks it.
#include "sim/checker.h"

#include <gtest/gtest.h>

namespace keel::sim {
namespace {

using raft::Entry;
using raft::Role;

std::vector<Entry> Entries(uint64_t first, std::vector<uint64_t> terms) {
  std::vector<Entry> out;
  for (uint64_t t : terms) {
    out.push_back({Term(t), LogIndex(first), raft::EntryType::kNormal, "x" + std::to_string(first)});
    ++first;
  }
  return out;
}

bool Mentions(const RaftChecker& c, std::string_view what) {
  for (const std::string& v : c.violations()) {
    if (v.find(what) != std::string::npos) return true;
  }
  return false;
}

TEST(RaftChecker, AcceptsAConsistentHistory) {
  RaftChecker c(3);
  for (int n = 0; n < 3; ++n) c.OnAppend(n, n == 0, Term(1), Entries(1, {1, 1}));
  c.ObserveRole(0, Role::kLeader, Term(1));
  c.ObserveCommit(0, LogIndex(2));
  c.ObserveRole(1, Role::kFollower, Term(1));
  c.ObserveCommit(1, LogIndex(2));
  EXPECT_TRUE(c.violations().empty());
}

TEST(RaftChecker, CatchesTwoLeadersInOneTerm) {  // Election Safety
  RaftChecker c(3);
  c.ObserveRole(0, Role::kLeader, Term(2));
  c.ObserveCommit(0, LogIndex(0));
  c.ObserveRole(1, Role::kLeader, Term(2));
  c.ObserveCommit(1, LogIndex(0));
  EXPECT_TRUE(Mentions(c, "Election Safety"));
}

TEST(RaftChecker, CatchesALeaderOverwritingItsLog) {  // Leader Append-Only
  RaftChecker c(1);
  c.OnAppend(0, true, Term(1), Entries(1, {1, 1, 1}));
  c.OnAppend(0, true, Term(1), Entries(2, {1}));
  EXPECT_TRUE(Mentions(c, "Leader Append-Only"));
}

TEST(RaftChecker, CatchesLogsThatAgreeOnAnEntryButNotBeforeIt) {  // Log Matching
  RaftChecker c(2);
  c.OnAppend(0, false, Term(0), Entries(1, {1, 2}));
  std::vector<Entry> other = Entries(1, {1, 2});
  other[0].data = "different";
  c.OnAppend(1, false, Term(0), other);
  EXPECT_TRUE(Mentions(c, "Log Matching"));
}

std::vector<Entry> WithData(uint64_t index, uint64_t term, std::string data) {
  return {{Term(term), LogIndex(index), raft::EntryType::kNormal, std::move(data)}};
}

// A single node's election and first entry share an fsync that a crash interrupts: it
// restarts in the old term and may win the same term again with another entry at that
// index. Nobody ever held the lost entry, so that is no Log Matching violation.
TEST(RaftChecker, ForgetsAnEntryThatACrashTookBeforeAnyoneElseHeldIt) {
  RaftChecker c(1);
  c.OnAppend(0, true, Term(6), WithData(1, 6, "lost"));
  c.OnRestart(0, raft::RecoveredState{});
  c.OnAppend(0, true, Term(6), WithData(1, 6, "other"));
  EXPECT_TRUE(c.violations().empty()) << c.violations().front();
}

// ... but an entry another node still holds, or one that was committed, is not forgotten.
TEST(RaftChecker, StillCatchesAnEntryReplacedWhileAnotherNodeHoldsItOrItWasCommitted) {
  RaftChecker held(2);
  held.OnAppend(0, true, Term(6), WithData(1, 6, "first"));
  held.OnAppend(1, false, Term(6), WithData(1, 6, "first"));
  held.OnRestart(0, raft::RecoveredState{});
  held.OnAppend(0, true, Term(6), WithData(1, 6, "other"));
  EXPECT_TRUE(Mentions(held, "Log Matching"));

  RaftChecker committed(1);
  committed.OnAppend(0, true, Term(6), WithData(1, 6, "first"));
  committed.ObserveCommit(0, LogIndex(1));
  committed.OnRestart(0, raft::RecoveredState{});
  committed.OnAppend(0, true, Term(6), WithData(1, 6, "other"));
  EXPECT_TRUE(Mentions(committed, "Log Matching"));
}

TEST(RaftChecker, CatchesALeaderElectedWithoutACommittedEntry) {  // Leader Completeness
  RaftChecker c(3);
  c.OnAppend(0, true, Term(1), Entries(1, {1, 1}));
  c.OnAppend(1, false, Term(1), Entries(1, {1, 1}));
  c.ObserveRole(0, Role::kLeader, Term(1));
  c.ObserveCommit(0, LogIndex(2));
  c.OnAppend(2, false, Term(1), Entries(1, {1}));
  c.ObserveRole(2, Role::kLeader, Term(2));
  c.ObserveCommit(2, LogIndex(0));
  EXPECT_TRUE(Mentions(c, "Leader Completeness"));
}

TEST(RaftChecker, CatchesTwoDifferentEntriesCommittedAtOneIndex) {  // State Machine Safety
  RaftChecker c(2);
  c.OnAppend(0, false, Term(0), Entries(1, {1}));
  c.OnAppend(1, false, Term(0), Entries(1, {2}));
  c.ObserveRole(0, Role::kFollower, Term(2));
  c.ObserveCommit(0, LogIndex(1));
  c.ObserveRole(1, Role::kFollower, Term(2));
  c.ObserveCommit(1, LogIndex(1));
  EXPECT_TRUE(Mentions(c, "State Machine Safety"));
}

TEST(RaftChecker, CatchesTwoDifferentRequestsAppliedAtOneIndex) {
  RaftChecker c(2);
  c.OnApply(0, LogIndex(3), 7);
  c.OnApply(1, LogIndex(3), 8);
  EXPECT_TRUE(Mentions(c, "applied request"));
}

}  // namespace
}  // namespace keel::sim
