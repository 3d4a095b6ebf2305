// Unit tests for RaftLog: the in-memory log of one node (core/raft/raft_log.h).
// Each test builds a small log from literal (index, term) pairs and checks one rule.

#include "core/raft/raft_log.h"
#include "tests/core/raft/raft_test_util.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace keel::raft {
namespace {


// The terms of every entry the log still holds, FirstIndex() through LastIndex().
std::vector<uint64_t> Terms(const RaftLog& log) {
  std::vector<uint64_t> out;
  for (LogIndex i = log.FirstIndex(); i <= log.LastIndex(); ++i) {
    const std::optional<Term> t = log.TermAt(i);
    out.push_back(t.has_value() ? t->value : UINT64_MAX);
  }
  return out;
}

std::vector<uint64_t> Indexes(const std::vector<Entry>& entries) {
  std::vector<uint64_t> out;
  for (const Entry& e : entries) out.push_back(e.index.value);
  return out;
}

RaftLog LogWithTerms(const std::vector<uint64_t>& terms, uint64_t commit = 0) {
  return RaftLog(std::nullopt, EntriesWithTerms(terms), LogIndex(commit));
}

// ---------------------------------------------------------------------------------------
// Construction

TEST(RaftLogRecovery, RecoveredEntriesAreStableAndCommitIsClampedToTheLog) {
  RaftLog log = LogWithTerms({1, 1, 2}, /*commit=*/7);
  EXPECT_EQ(log.FirstIndex(), LogIndex(1));
  EXPECT_EQ(log.LastIndex(), LogIndex(3));
  EXPECT_EQ(log.LastTerm(), Term(2));
  EXPECT_EQ(log.stable(), LogIndex(3));
  EXPECT_EQ(log.committed(), LogIndex(3));
  EXPECT_EQ(log.applied(), LogIndex(0));
  EXPECT_TRUE(log.UnstableEntries().empty());
}

TEST(RaftLogRecovery, AnEmptyLogHasTermZeroAtIndexZero) {
  RaftLog log(std::nullopt, {}, LogIndex(0));
  EXPECT_EQ(log.LastIndex(), LogIndex(0));
  EXPECT_EQ(log.LastTerm(), Term(0));
  EXPECT_EQ(log.TermAt(LogIndex(0)), Term(0));
  EXPECT_EQ(log.TermAt(LogIndex(1)), std::nullopt);
  EXPECT_TRUE(log.MatchTerm(LogIndex(0), Term(0)));
}

// ---------------------------------------------------------------------------------------
// MaybeAppend (the follower side of AppendEntries)

// Raft Figure 2, AppendEntries receiver rule 2 (log matching): entries are accepted only
// after an entry matching (prevLogIndex, prevLogTerm).
TEST(RaftLogMaybeAppend, AppendsAfterAMatchingPrevEntry) {
  RaftLog log = LogWithTerms({1, 1, 2});
  bool conflict = true;
  const std::optional<LogIndex> last =
      log.MaybeAppend(LogIndex(3), Term(2), {E(4, 2), E(5, 3)}, &conflict);
  EXPECT_EQ(last, LogIndex(5));
  EXPECT_FALSE(conflict);
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{1, 1, 2, 2, 3}));
  EXPECT_EQ(Indexes(log.UnstableEntries()), (std::vector<uint64_t>{4, 5}));
}

TEST(RaftLogMaybeAppend, AHeartbeatLikeAppendWithNoEntriesReturnsThePrevIndex) {
  RaftLog log = LogWithTerms({1, 1, 2});
  bool conflict = true;
  EXPECT_EQ(log.MaybeAppend(LogIndex(2), Term(1), {}, &conflict), LogIndex(2));
  EXPECT_FALSE(conflict);
  // The entries after prev are not evidence of anything: they stay.
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{1, 1, 2}));
}

// Raft Figure 2, AppendEntries receiver rule 2: reply false if the log does not contain
// an entry at prevLogIndex whose term matches prevLogTerm.
TEST(RaftLogMaybeAppend, RejectsWhenThePrevTermDiffers) {
  RaftLog log = LogWithTerms({1, 1, 2});
  bool conflict = true;
  EXPECT_EQ(log.MaybeAppend(LogIndex(3), Term(3), {E(4, 3)}, &conflict), std::nullopt);
  EXPECT_FALSE(conflict);
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{1, 1, 2}));
}

TEST(RaftLogMaybeAppend, RejectsWhenThePrevIndexIsBeyondTheEnd) {
  RaftLog log = LogWithTerms({1, 1, 2});
  bool conflict = true;
  EXPECT_EQ(log.MaybeAppend(LogIndex(5), Term(2), {E(6, 2)}, &conflict), std::nullopt);
  EXPECT_FALSE(conflict);
  EXPECT_EQ(log.LastIndex(), LogIndex(3));
}

// Raft Figure 2, AppendEntries receiver rule 3: only a conflicting entry (same index,
// different term) truncates; a delayed, shorter append must not cut the log.
TEST(RaftLogMaybeAppend, AStaleAppendOfEntriesWeAlreadyHoldTruncatesNothing) {
  RaftLog log = LogWithTerms({1, 1, 2, 2});
  bool conflict = true;
  EXPECT_EQ(log.MaybeAppend(LogIndex(1), Term(1), {E(2, 1), E(3, 2)}, &conflict), LogIndex(3));
  EXPECT_FALSE(conflict);
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{1, 1, 2, 2}));
  EXPECT_TRUE(log.UnstableEntries().empty());
}

// Raft Figure 2, AppendEntries receiver rules 3 and 4: delete the conflicting entry and
// all that follow it, then append the new entries.
TEST(RaftLogMaybeAppend, AConflictingEntryTruncatesTheSuffixAndIsReplaced) {
  RaftLog log = LogWithTerms({1, 1, 2, 2, 2}, /*commit=*/1);
  bool conflict = true;
  EXPECT_EQ(log.MaybeAppend(LogIndex(1), Term(1), {E(2, 1), E(3, 3)}, &conflict), LogIndex(3));
  EXPECT_FALSE(conflict);
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{1, 1, 3}));
  EXPECT_EQ(log.LastIndex(), LogIndex(3));
  // The replacement is not on disk yet; the overwritten tail no longer counts as stable.
  EXPECT_EQ(log.stable(), LogIndex(2));
  EXPECT_EQ(Indexes(log.UnstableEntries()), (std::vector<uint64_t>{3}));
}

// Raft §5.4 (Leader Completeness): a committed entry is never overwritten. A leader that
// asks for it is broken; the log refuses and reports it.
TEST(RaftLogMaybeAppend, RefusesToOverwriteACommittedEntry) {
  RaftLog log = LogWithTerms({1, 1, 2}, /*commit=*/2);
  bool conflict = false;
  EXPECT_EQ(log.MaybeAppend(LogIndex(1), Term(1), {E(2, 3), E(3, 3)}, &conflict), std::nullopt);
  EXPECT_TRUE(conflict);
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{1, 1, 2}));
  EXPECT_EQ(log.committed(), LogIndex(2));
}

TEST(RaftLogMaybeAppend, OverwritingTheFirstUncommittedEntryIsAllowed) {
  RaftLog log = LogWithTerms({1, 1, 2}, /*commit=*/2);
  bool conflict = true;
  EXPECT_EQ(log.MaybeAppend(LogIndex(2), Term(1), {E(3, 3)}, &conflict), LogIndex(3));
  EXPECT_FALSE(conflict);
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{1, 1, 3}));
}

// ---------------------------------------------------------------------------------------
// FindConflictByTerm (fast backtracking)

TEST(RaftLogFindConflictByTerm, FindsTheLastIndexWhoseTermIsAtMostTheGivenTerm) {
  RaftLog log = LogWithTerms({1, 1, 2, 2, 3});
  using P = std::pair<LogIndex, Term>;
  EXPECT_EQ(log.FindConflictByTerm(LogIndex(5), Term(3)), P(LogIndex(5), Term(3)));
  EXPECT_EQ(log.FindConflictByTerm(LogIndex(5), Term(2)), P(LogIndex(4), Term(2)));
  EXPECT_EQ(log.FindConflictByTerm(LogIndex(5), Term(1)), P(LogIndex(2), Term(1)));
  EXPECT_EQ(log.FindConflictByTerm(LogIndex(3), Term(1)), P(LogIndex(2), Term(1)));
  EXPECT_EQ(log.FindConflictByTerm(LogIndex(5), Term(0)), P(LogIndex(0), Term(0)));
  // A term between ours skips the whole run of higher terms at once.
  EXPECT_EQ(log.FindConflictByTerm(LogIndex(5), Term(9)), P(LogIndex(5), Term(3)));
}

TEST(RaftLogFindConflictByTerm, StopsAtTheFirstIndexItCannotSeeAfterCompaction) {
  RaftLog log(Snapshot{.index = LogIndex(3), .term = Term(2), .data = ""}, {E(4, 3), E(5, 3)},
              LogIndex(5));
  using P = std::pair<LogIndex, Term>;
  // Index 3 is the snapshot: its term is known.
  EXPECT_EQ(log.FindConflictByTerm(LogIndex(5), Term(2)), P(LogIndex(3), Term(2)));
  // Below the snapshot nothing is known: the answer is that index with term 0.
  EXPECT_EQ(log.FindConflictByTerm(LogIndex(5), Term(1)), P(LogIndex(2), Term(0)));
}

// ---------------------------------------------------------------------------------------
// IsUpToDate

// Raft §5.4.1: the log with the later last term is more up-to-date; with equal last
// terms, the longer log is.
TEST(RaftLogIsUpToDate, ComparesLastTermFirstThenLength) {
  RaftLog log = LogWithTerms({1, 1, 2});                // last (3, 2)
  EXPECT_TRUE(log.IsUpToDate(LogIndex(3), Term(2)));    // identical
  EXPECT_TRUE(log.IsUpToDate(LogIndex(4), Term(2)));    // same term, longer
  EXPECT_FALSE(log.IsUpToDate(LogIndex(2), Term(2)));   // same term, shorter
  EXPECT_FALSE(log.IsUpToDate(LogIndex(10), Term(1)));  // longer but older term
  EXPECT_TRUE(log.IsUpToDate(LogIndex(1), Term(3)));    // shorter but newer term
}

TEST(RaftLogIsUpToDate, AnyLogIsUpToDateAgainstAnEmptyOne) {
  RaftLog log(std::nullopt, {}, LogIndex(0));
  EXPECT_TRUE(log.IsUpToDate(LogIndex(0), Term(0)));
  EXPECT_TRUE(log.IsUpToDate(LogIndex(1), Term(1)));
}

// ---------------------------------------------------------------------------------------
// Slice

TEST(RaftLogSlice, StopsBeforeTheEntryThatWouldPassTheByteLimit) {
  // Each entry is 100 bytes: 76 bytes of data + 24 of overhead (Entry::ByteSize).
  const std::string data(76, 'x');
  RaftLog log(std::nullopt, {E(1, 1, data), E(2, 1, data), E(3, 1, data), E(4, 1, data)},
              LogIndex(0));
  ASSERT_EQ(E(1, 1, data).ByteSize(), 100u);
  EXPECT_EQ(Indexes(log.Slice(LogIndex(1), LogIndex(5), 250)), (std::vector<uint64_t>{1, 2}));
  // A limit exactly at a boundary includes the entry that reaches it.
  EXPECT_EQ(Indexes(log.Slice(LogIndex(1), LogIndex(5), 300)), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(Indexes(log.Slice(LogIndex(2), LogIndex(4), SIZE_MAX)), (std::vector<uint64_t>{2, 3}));
}

// Always at least one entry, or an entry bigger than the limit could never be sent.
TEST(RaftLogSlice, ReturnsOneEntryEvenIfItAlonePassesTheByteLimit) {
  RaftLog log(std::nullopt, {E(1, 1, std::string(1000, 'x')), E(2, 1)}, LogIndex(0));
  const std::vector<Entry> out = log.Slice(LogIndex(1), LogIndex(3), 10);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].index, LogIndex(1));
  EXPECT_EQ(out[0].data.size(), 1000u);
}

TEST(RaftLogSlice, AnEmptyRangeGivesNoEntries) {
  RaftLog log = LogWithTerms({1, 1});
  EXPECT_TRUE(log.Slice(LogIndex(2), LogIndex(2), 0).empty());
  EXPECT_TRUE(log.Slice(LogIndex(3), LogIndex(3), SIZE_MAX).empty());
}

// ---------------------------------------------------------------------------------------
// UnstableEntries / StableTo

TEST(RaftLogStable, AppendedEntriesAreUnstableUntilStableTo) {
  RaftLog log = LogWithTerms({1});
  EXPECT_EQ(log.Append({E(2, 1), E(3, 2)}), LogIndex(3));
  EXPECT_EQ(Indexes(log.UnstableEntries()), (std::vector<uint64_t>{2, 3}));
  log.StableTo(LogIndex(2));
  EXPECT_EQ(Indexes(log.UnstableEntries()), (std::vector<uint64_t>{3}));
  log.StableTo(LogIndex(3));
  EXPECT_TRUE(log.UnstableEntries().empty());
  EXPECT_EQ(log.stable(), LogIndex(3));
}

TEST(RaftLogStable, StableToNeverMovesBackwards) {
  RaftLog log = LogWithTerms({1});
  log.Append({E(2, 1), E(3, 1)});
  log.StableTo(LogIndex(3));
  log.StableTo(LogIndex(2));  // a late acknowledgement of an older write
  EXPECT_EQ(log.stable(), LogIndex(3));
  EXPECT_TRUE(log.UnstableEntries().empty());
}

// ---------------------------------------------------------------------------------------
// NextCommitted / CommitTo / AppliedTo

TEST(RaftLogNextCommitted, GivesCommittedButUnappliedEntriesInOrder) {
  RaftLog log = LogWithTerms({1, 1, 2, 2});
  EXPECT_FALSE(log.HasNextCommitted());
  EXPECT_TRUE(log.NextCommitted(SIZE_MAX).empty());

  log.CommitTo(LogIndex(3));
  EXPECT_TRUE(log.HasNextCommitted());
  EXPECT_EQ(Indexes(log.NextCommitted(SIZE_MAX)), (std::vector<uint64_t>{1, 2, 3}));

  log.AppliedTo(LogIndex(2));
  EXPECT_EQ(Indexes(log.NextCommitted(SIZE_MAX)), (std::vector<uint64_t>{3}));

  log.AppliedTo(LogIndex(3));
  EXPECT_FALSE(log.HasNextCommitted());
  EXPECT_TRUE(log.NextCommitted(SIZE_MAX).empty());
}

TEST(RaftLogNextCommitted, RespectsTheByteLimitButGivesAtLeastOneEntry) {
  RaftLog log = LogWithTerms({1, 1, 1}, /*commit=*/3);
  EXPECT_EQ(Indexes(log.NextCommitted(1)), (std::vector<uint64_t>{1}));
  EXPECT_EQ(Indexes(log.NextCommitted(2 * E(1, 1).ByteSize())), (std::vector<uint64_t>{1, 2}));
}

TEST(RaftLogNextCommitted, CommitToNeverMovesBackwards) {
  RaftLog log = LogWithTerms({1, 1, 1});
  log.CommitTo(LogIndex(3));
  log.CommitTo(LogIndex(1));  // a stale heartbeat's commit
  EXPECT_EQ(log.committed(), LogIndex(3));
}

// ---------------------------------------------------------------------------------------
// Restore (a follower installs a snapshot)

TEST(RaftLogRestore, ReplacesTheWholeLogAndCommitsTheSnapshot) {
  RaftLog log = LogWithTerms({1, 1, 2}, /*commit=*/1);
  log.Restore(Snapshot{.index = LogIndex(10), .term = Term(5), .data = "state"});
  EXPECT_EQ(log.FirstIndex(), LogIndex(11));
  EXPECT_EQ(log.LastIndex(), LogIndex(10));
  EXPECT_EQ(log.LastTerm(), Term(5));
  EXPECT_EQ(log.committed(), LogIndex(10));
  EXPECT_EQ(log.stable(), LogIndex(10));
  EXPECT_EQ(log.TermAt(LogIndex(10)), Term(5));
  EXPECT_EQ(log.TermAt(LogIndex(3)), std::nullopt);
  ASSERT_TRUE(log.snapshot().has_value());
  EXPECT_EQ(log.snapshot()->data, "state");
  // The entries the snapshot covers are not handed out as committed entries.
  EXPECT_TRUE(log.NextCommitted(SIZE_MAX).empty());
  // Appends continue right after the snapshot.
  bool conflict = true;
  EXPECT_EQ(log.MaybeAppend(LogIndex(10), Term(5), {E(11, 5)}, &conflict), LogIndex(11));
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{5}));
}

// ---------------------------------------------------------------------------------------
// SetSnapshot + CompactTo (the host snapshotted its state machine)

TEST(RaftLogCompaction, TermAtAfterCompactionKnowsTheSnapshotIndexButNothingBelow) {
  RaftLog log = LogWithTerms({1, 1, 2, 2, 3}, /*commit=*/5);
  log.AppliedTo(LogIndex(4));
  log.SetSnapshot(Snapshot{.index = LogIndex(4), .term = Term(2), .data = "s4"});
  log.CompactTo(LogIndex(4));

  EXPECT_EQ(log.FirstIndex(), LogIndex(5));
  EXPECT_EQ(log.LastIndex(), LogIndex(5));
  EXPECT_EQ(log.LastTerm(), Term(3));
  EXPECT_EQ(log.TermAt(LogIndex(0)), Term(0));
  EXPECT_EQ(log.TermAt(LogIndex(3)), std::nullopt);
  EXPECT_EQ(log.TermAt(LogIndex(4)), Term(2));
  EXPECT_EQ(log.TermAt(LogIndex(5)), Term(3));
  EXPECT_EQ(log.TermAt(LogIndex(6)), std::nullopt);
  EXPECT_TRUE(log.MatchTerm(LogIndex(4), Term(2)));
  ASSERT_TRUE(log.snapshot().has_value());
  EXPECT_EQ(log.snapshot()->index, LogIndex(4));
  EXPECT_EQ(Indexes(log.Slice(LogIndex(5), LogIndex(6), SIZE_MAX)), (std::vector<uint64_t>{5}));
  EXPECT_EQ(Indexes(log.NextCommitted(SIZE_MAX)), (std::vector<uint64_t>{5}));
  log.CheckInvariants();
}

TEST(RaftLogCompaction, CompactingToOrBelowTheCurrentOffsetChangesNothing) {
  RaftLog log = LogWithTerms({1, 1, 2}, /*commit=*/3);
  log.AppliedTo(LogIndex(3));
  log.CompactTo(LogIndex(2));
  log.CompactTo(LogIndex(1));
  log.CompactTo(LogIndex(2));
  EXPECT_EQ(log.FirstIndex(), LogIndex(3));
  EXPECT_EQ(log.TermAt(LogIndex(2)), Term(1));
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{2}));
}

TEST(RaftLogCompaction, AnOlderSnapshotDoesNotReplaceANewerOne) {
  RaftLog log = LogWithTerms({1, 1, 2}, /*commit=*/3);
  log.AppliedTo(LogIndex(3));
  log.SetSnapshot(Snapshot{.index = LogIndex(3), .term = Term(2), .data = "new"});
  log.SetSnapshot(Snapshot{.index = LogIndex(2), .term = Term(1), .data = "old"});
  ASSERT_TRUE(log.snapshot().has_value());
  EXPECT_EQ(log.snapshot()->data, "new");
}

// Entries below the compaction point are committed, hence identical to the leader's: an
// append that overlaps them must not be treated as a conflict.
TEST(RaftLogCompaction, AnAppendOverlappingTheCompactedPrefixIsAccepted) {
  RaftLog log = LogWithTerms({1, 1, 2}, /*commit=*/3);
  log.AppliedTo(LogIndex(3));
  log.SetSnapshot(Snapshot{.index = LogIndex(2), .term = Term(1), .data = ""});
  log.CompactTo(LogIndex(2));
  bool conflict = true;
  EXPECT_EQ(log.MaybeAppend(LogIndex(2), Term(1), {E(3, 2), E(4, 2)}, &conflict), LogIndex(4));
  EXPECT_FALSE(conflict);
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{2, 2}));
}

TEST(RaftLogCompaction, ALogRecoveredFromASnapshotStartsAfterIt) {
  RaftLog log(Snapshot{.index = LogIndex(7), .term = Term(3), .data = "s"}, {E(8, 3), E(9, 4)},
              LogIndex(8));
  EXPECT_EQ(log.FirstIndex(), LogIndex(8));
  EXPECT_EQ(log.LastIndex(), LogIndex(9));
  EXPECT_EQ(log.committed(), LogIndex(8));
  EXPECT_EQ(log.applied(), LogIndex(7));
  EXPECT_EQ(log.TermAt(LogIndex(7)), Term(3));
  EXPECT_EQ(Indexes(log.NextCommitted(SIZE_MAX)), (std::vector<uint64_t>{8}));
}

}  // namespace
}  // namespace keel::raft
