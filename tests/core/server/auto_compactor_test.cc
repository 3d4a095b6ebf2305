// etcd's automatic compaction (etcdserver/api/v3compactor): when the leader compacts, and
// to which revision, in periodic and revision mode.
#include "core/server/auto_compactor.h"

#include <gtest/gtest.h>

namespace keel::server {
namespace {

using Mode = AutoCompactionConfig::Mode;
Nanos S(int64_t s) { return std::chrono::seconds(s); }

TEST(AutoCompactor, OffDoesNothing) {
  AutoCompactor c({});
  for (int64_t t = 0; t < 1000; t += 10) EXPECT_EQ(c.Tick(S(t), t, true), std::nullopt);
}

// Periodic, 10 s of history: samples every second; the first compaction after 10 s
// targets the revision sampled then 10 s ago; then one every 10 s.
TEST(AutoCompactor, PeriodicKeepsItsRetentionOfHistory) {
  AutoCompactor c({.mode = Mode::kPeriodic, .retention_period = S(10)});
  std::optional<int64_t> first;
  int64_t t = 0;
  for (; t <= 10 && !first; ++t) first = c.Tick(S(t), 100 + t, true);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(t - 1, 10) << "not before the retention has passed";
  EXPECT_EQ(*first, 100) << "the revision sampled at the start, 10 s ago";
  EXPECT_EQ(c.Tick(S(11), 111, true), std::nullopt) << "one on its way";
  c.OnResult(S(11), true);
  std::optional<int64_t> second;
  for (t = 12; t <= 25 && !second; ++t) second = c.Tick(S(t), 100 + t, true);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(t - 1, 21) << "every retention after a success";
  EXPECT_EQ(*second, 111) << "the window slid: the sample from 10 s before";
}

TEST(AutoCompactor, PeriodicCompactsEveryHourAtMostForALongRetention) {
  AutoCompactor c({.mode = Mode::kPeriodic, .retention_period = std::chrono::hours(24)});
  int64_t compactions = 0;
  for (int64_t minute = 0; minute <= 26 * 60; ++minute) {
    if (auto target = c.Tick(S(60 * minute), minute, true)) {
      ++compactions;
      c.OnResult(S(60 * minute), true);
      if (compactions == 1) EXPECT_EQ(minute, 24 * 60) << "after a day of history";
      if (compactions == 1) EXPECT_EQ(*target, 0);
    }
  }
  EXPECT_EQ(compactions, 3) << "at 24h, 25h and 26h";
}

TEST(AutoCompactor, OnlyTheLeaderCompactsButEveryoneSamples) {
  AutoCompactor c({.mode = Mode::kPeriodic, .retention_period = S(10)});
  for (int64_t t = 0; t <= 15; ++t) EXPECT_EQ(c.Tick(S(t), 100 + t, false), std::nullopt);
  EXPECT_EQ(c.Tick(S(16), 116, true), 106) << "the sample from 10 s before, kept meanwhile";
}

TEST(AutoCompactor, AFailedCompactionIsRetriedAtTheNextSample) {
  AutoCompactor c({.mode = Mode::kPeriodic, .retention_period = S(10)});
  std::optional<int64_t> first;
  for (int64_t t = 0; t <= 10 && !first; ++t) first = c.Tick(S(t), 100 + t, true);
  ASSERT_TRUE(first.has_value());
  c.OnResult(S(10), false);
  EXPECT_TRUE(c.Tick(S(11), 111, true).has_value());
}

// Revision, 50 revisions of history, every 5 minutes (etcd's fixed interval).
TEST(AutoCompactor, RevisionModeKeepsItsRetentionOfRevisions) {
  AutoCompactor c({.mode = Mode::kRevision, .retention_revisions = 50});
  EXPECT_EQ(c.Tick(S(0), 30, true), std::nullopt) << "30 - 50 <= 0: nothing to compact";
  EXPECT_EQ(c.Tick(S(299), 400, true), std::nullopt) << "not yet 5 minutes";
  EXPECT_EQ(c.Tick(S(300), 400, true), 350);
  c.OnResult(S(300), true);
  EXPECT_EQ(c.Tick(S(600), 400, true), std::nullopt) << "nothing moved";
  EXPECT_EQ(c.Tick(S(900), 460, true), 410);
}

}  // namespace
}  // namespace keel::server
