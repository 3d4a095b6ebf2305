// Unit tests for Progress and Inflights: the leader's flow control towards one follower
// (core/raft/progress.h).

#include "core/raft/progress.h"

#include <cstdint>

#include "gtest/gtest.h"

namespace keel::raft {
namespace {

constexpr size_t kCountMax = 3;
constexpr size_t kBytesMax = 1 << 20;

// A follower whose log the leader believes matches up to `match`, to be sent from `next`.
Progress MakeProgress(uint64_t match, uint64_t next, size_t count_max = kCountMax,
                      size_t bytes_max = kBytesMax) {
  Progress pr(LogIndex(next), count_max, bytes_max);
  pr.match = LogIndex(match);
  return pr;
}

// ---------------------------------------------------------------------------------------
// Inflights

TEST(Inflights, IsFullAtTheMessageCount) {
  Inflights in(3, kBytesMax);
  in.Add(LogIndex(1), 10);
  in.Add(LogIndex(2), 10);
  EXPECT_FALSE(in.Full());
  in.Add(LogIndex(3), 10);
  EXPECT_TRUE(in.Full());
  EXPECT_EQ(in.Count(), 3u);
}

TEST(Inflights, IsFullAtTheByteLimit) {
  Inflights in(100, 250);
  in.Add(LogIndex(1), 100);
  in.Add(LogIndex(2), 100);
  EXPECT_FALSE(in.Full());
  in.Add(LogIndex(3), 100);
  EXPECT_TRUE(in.Full());
  in.FreeTo(LogIndex(1));
  EXPECT_FALSE(in.Full());
}

TEST(Inflights, FreeToReleasesEveryAppendAtOrBelowTheIndex) {
  Inflights in(10, kBytesMax);
  in.Add(LogIndex(3), 1);
  in.Add(LogIndex(5), 1);
  in.Add(LogIndex(8), 1);
  in.FreeTo(LogIndex(2));  // acknowledges nothing in flight
  EXPECT_EQ(in.Count(), 3u);
  in.FreeTo(LogIndex(4));  // an append is freed only once its last entry is acknowledged
  EXPECT_EQ(in.Count(), 2u);
  in.FreeTo(LogIndex(5));
  EXPECT_EQ(in.Count(), 1u);
  in.FreeTo(LogIndex(100));
  EXPECT_EQ(in.Count(), 0u);
  in.FreeTo(LogIndex(100));  // idempotent on an empty window
  EXPECT_EQ(in.Count(), 0u);
}

TEST(Inflights, FreeingMakesRoomAgain) {
  Inflights in(2, kBytesMax);
  in.Add(LogIndex(1), 1);
  in.Add(LogIndex(2), 1);
  ASSERT_TRUE(in.Full());
  in.FreeTo(LogIndex(1));
  EXPECT_FALSE(in.Full());
  in.Add(LogIndex(3), 1);
  EXPECT_TRUE(in.Full());
}

// ---------------------------------------------------------------------------------------
// Probe

TEST(ProgressProbe, PausesAfterOneSendUntilTheFollowerAnswers) {
  Progress pr = MakeProgress(0, 5);
  EXPECT_EQ(pr.state, ProgressState::kProbe);
  EXPECT_FALSE(pr.IsPaused());
  pr.SentEntries(LogIndex(7), 100);
  EXPECT_TRUE(pr.probe_sent);
  EXPECT_TRUE(pr.IsPaused());
  // A probe does not move next optimistically: the leader does not know the match.
  EXPECT_EQ(pr.next, LogIndex(5));

  EXPECT_TRUE(pr.MaybeUpdate(LogIndex(7)));
  EXPECT_FALSE(pr.IsPaused());
  EXPECT_EQ(pr.match, LogIndex(7));
  EXPECT_EQ(pr.next, LogIndex(8));
}

TEST(ProgressProbe, ARejectionOfTheOutstandingProbeUnpausesAndMovesNextToTheHint) {
  Progress pr = MakeProgress(0, 10);
  pr.SentEntries(LogIndex(12), 10);  // probe of prev index 9
  ASSERT_TRUE(pr.IsPaused());
  EXPECT_TRUE(pr.MaybeDecreaseTo(LogIndex(9), /*match_hint=*/LogIndex(3)));
  EXPECT_EQ(pr.next, LogIndex(4));
  EXPECT_FALSE(pr.IsPaused());
}

TEST(ProgressProbe, IgnoresARejectionOfAnOlderProbe) {
  Progress pr = MakeProgress(0, 10);
  pr.SentEntries(LogIndex(10), 10);
  EXPECT_FALSE(pr.MaybeDecreaseTo(LogIndex(5), LogIndex(3)));
  EXPECT_EQ(pr.next, LogIndex(10));
  EXPECT_TRUE(pr.IsPaused());
}

TEST(ProgressProbe, NextNeverFallsToOrBelowMatch) {
  Progress pr = MakeProgress(2, 10);
  EXPECT_TRUE(pr.MaybeDecreaseTo(LogIndex(9), /*match_hint=*/LogIndex(0)));
  EXPECT_EQ(pr.next, LogIndex(3));
  EXPECT_LT(pr.match, pr.next);
}

TEST(ProgressProbe, AHintBeyondTheRejectedIndexDoesNotMoveNextForward) {
  Progress pr = MakeProgress(0, 10);
  EXPECT_TRUE(pr.MaybeDecreaseTo(LogIndex(9), /*match_hint=*/LogIndex(50)));
  EXPECT_EQ(pr.next, LogIndex(9));
}

// ---------------------------------------------------------------------------------------
// Replicate

TEST(ProgressReplicate, PipelinesAppendsUntilTheWindowIsFull) {
  Progress pr = MakeProgress(4, 5);
  pr.BecomeReplicate();
  EXPECT_EQ(pr.next, LogIndex(5));
  pr.SentEntries(LogIndex(5), 10);
  EXPECT_FALSE(pr.IsPaused());
  EXPECT_EQ(pr.next, LogIndex(6));  // optimistic: the next append follows immediately
  pr.SentEntries(LogIndex(7), 10);
  EXPECT_FALSE(pr.IsPaused());
  pr.SentEntries(LogIndex(8), 10);
  EXPECT_EQ(pr.next, LogIndex(9));
  EXPECT_EQ(pr.inflights.Count(), kCountMax);
  EXPECT_TRUE(pr.IsPaused());

  // An acknowledgement frees the window (the leader calls FreeTo after MaybeUpdate).
  EXPECT_TRUE(pr.MaybeUpdate(LogIndex(7)));
  pr.inflights.FreeTo(LogIndex(7));
  EXPECT_FALSE(pr.IsPaused());
  EXPECT_EQ(pr.match, LogIndex(7));
  EXPECT_EQ(pr.next, LogIndex(9));
}

TEST(ProgressReplicate, PausesWhenTheInflightBytesAreUsedUp) {
  Progress pr = MakeProgress(0, 1, /*count_max=*/100, /*bytes_max=*/1000);
  pr.BecomeReplicate();
  pr.SentEntries(LogIndex(1), 600);
  EXPECT_FALSE(pr.IsPaused());
  pr.SentEntries(LogIndex(2), 600);
  EXPECT_TRUE(pr.IsPaused());
}

TEST(ProgressReplicate, AnEmptyAppendTakesNoRoomInTheWindow) {
  Progress pr = MakeProgress(4, 5);
  pr.BecomeReplicate();
  pr.SentEntries(LogIndex(4), 0);  // nothing new: only a commit update
  EXPECT_EQ(pr.inflights.Count(), 0u);
  EXPECT_EQ(pr.next, LogIndex(5));
}

TEST(ProgressReplicate, MaybeDecreaseToIgnoresARejectionAtOrBelowMatch) {
  Progress pr = MakeProgress(5, 6);
  pr.BecomeReplicate();
  pr.SentEntries(LogIndex(9), 10);
  ASSERT_EQ(pr.next, LogIndex(10));
  // A rejection of an append sent before the one that established match=5.
  EXPECT_FALSE(pr.MaybeDecreaseTo(LogIndex(4), LogIndex(3)));
  EXPECT_FALSE(pr.MaybeDecreaseTo(LogIndex(5), LogIndex(3)));
  EXPECT_EQ(pr.next, LogIndex(10));
  EXPECT_EQ(pr.match, LogIndex(5));
}

TEST(ProgressReplicate, AFreshRejectionFallsBackToJustAfterMatch) {
  Progress pr = MakeProgress(5, 6);
  pr.BecomeReplicate();
  pr.SentEntries(LogIndex(9), 10);
  EXPECT_TRUE(pr.MaybeDecreaseTo(LogIndex(7), LogIndex(6)));
  EXPECT_EQ(pr.next, LogIndex(6));
}

TEST(ProgressReplicate, MaybeUpdateIgnoresAnOldAcknowledgement) {
  Progress pr = MakeProgress(5, 6);
  pr.BecomeReplicate();
  pr.SentEntries(LogIndex(9), 10);
  EXPECT_FALSE(pr.MaybeUpdate(LogIndex(3)));
  EXPECT_EQ(pr.match, LogIndex(5));
  EXPECT_EQ(pr.next, LogIndex(10));
}

TEST(ProgressReplicate, BecomingReplicateEmptiesTheWindowAndRestartsAfterMatch) {
  Progress pr = MakeProgress(3, 4);
  pr.BecomeReplicate();
  pr.SentEntries(LogIndex(5), 1);
  pr.SentEntries(LogIndex(6), 1);
  pr.BecomeProbe();
  EXPECT_EQ(pr.next, LogIndex(4));
  EXPECT_EQ(pr.inflights.Count(), 0u);
  pr.BecomeReplicate();
  EXPECT_EQ(pr.next, LogIndex(4));
  EXPECT_EQ(pr.inflights.Count(), 0u);
}

// ---------------------------------------------------------------------------------------
// Snapshot

TEST(ProgressSnapshot, PausesWhileTheSnapshotIsInFlight) {
  Progress pr = MakeProgress(0, 1);
  pr.BecomeSnapshot(LogIndex(20));
  EXPECT_EQ(pr.state, ProgressState::kSnapshot);
  EXPECT_EQ(pr.pending_snapshot, LogIndex(20));
  EXPECT_TRUE(pr.IsPaused());
}

TEST(ProgressSnapshot, ProbingAfterASnapshotStartsAfterTheSnapshot) {
  Progress pr = MakeProgress(0, 1);
  pr.BecomeSnapshot(LogIndex(20));
  pr.BecomeProbe();
  EXPECT_EQ(pr.state, ProgressState::kProbe);
  EXPECT_EQ(pr.next, LogIndex(21));
  EXPECT_FALSE(pr.IsPaused());
}

TEST(ProgressSnapshot, ProbingAfterASnapshotKeepsAHigherMatch) {
  Progress pr = MakeProgress(0, 1);
  pr.BecomeSnapshot(LogIndex(20));
  pr.MaybeUpdate(LogIndex(25));
  pr.BecomeProbe();
  EXPECT_EQ(pr.next, LogIndex(26));
}

}  // namespace
}  // namespace keel::raft
