#include "core/lease/lessor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/etcdpb/kv.pb.h"
#include "core/kv/memory_backend.h"
#include "core/kv/store.h"
#include "core/lease/lease.pb.h"
#include "core/lease/lease_table.h"
#include "core/types.h"
#include "tests/core/kv/kv_test_util.h"

// The leader's side of leases (core/lease/lessor.h): the running lease clock with its
// promotion pause, keepalives held in memory until a checkpoint carrying them commits,
// and when checkpoints go out. Time is explicit: `now` in Millis.

namespace keel::lease {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

using test::kNul;

Nanos Ms(int64_t ms) { return Millis(ms); }

LessorConfig TestLessorConfig() {
  return LessorConfig{.promotion_pause = Millis(1000),
                      .checkpoint_interval = Millis(500),
                      .renewals_per_checkpoint_max = 10000,
                      .checkpoints_in_flight_max = 4};
}

std::vector<std::pair<int64_t, int64_t>> Renewals(const leasepb::Checkpoint& cp) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const leasepb::Renewal& r : cp.renewals()) out.emplace_back(r.id(), r.expiry_ms());
  return out;
}

using test::LiveKeys;

class LessorTest : public ::testing::Test {
 protected:
  void Grant(int64_t id, int64_t ttl) {
    absl::StatusOr<int64_t> g = table.Grant(id, ttl);
    ASSERT_TRUE(g.ok()) << g.status();
  }
  void Put(std::string_view key, int64_t lease) {
    kv::Store::Writer w = store.Write();
    absl::Status st = w.Put(key, "v", lease);
    w.End();
    ASSERT_TRUE(st.ok()) << st;
  }
  // Applies `cp` on the table only (as any member does); returns the ids revoked.
  std::vector<int64_t> ApplyToTable(const leasepb::Checkpoint& cp) {
    std::vector<int64_t> revoked;
    std::vector<mvccpb::Event> events;
    absl::Status st = table.ApplyCheckpoint(cp, &store, &events, &revoked);
    EXPECT_TRUE(st.ok()) << st;
    table.CheckInvariants();
    return revoked;
  }
  // Commits `cp`: the table applies it, then the lessor hears of it.
  std::vector<int64_t> Commit(const leasepb::Checkpoint& cp) {
    std::vector<int64_t> revoked = ApplyToTable(cp);
    lessor.OnApplied(cp);
    return revoked;
  }
  leasepb::Checkpoint Take(Nanos now) {
    std::optional<leasepb::Checkpoint> cp = lessor.TakeCheckpoint(now);
    EXPECT_TRUE(cp.has_value()) << "no checkpoint at " << now.count() << "ns";
    return cp.value_or(leasepb::Checkpoint());
  }
  void Reconfigure(LessorConfig config) { lessor = Lessor(&table, config); }

  kv::MemoryBackend backend;
  LeaseTable table{&backend, LeaseConfig{}};
  kv::Store store{&backend, &table};
  Lessor lessor{&table, TestLessorConfig()};
};

// ---- primary ----

TEST_F(LessorTest, ALessorIsNotPrimaryUntilPromoted) {
  EXPECT_FALSE(lessor.primary());
  lessor.Promote(Term(3), Ms(100));
  EXPECT_TRUE(lessor.primary());
  EXPECT_EQ(lessor.term(), Term(3));
  lessor.Demote();
  EXPECT_FALSE(lessor.primary());
  lessor.Promote(Term(5), Ms(200));
  EXPECT_TRUE(lessor.primary());
  EXPECT_EQ(lessor.term(), Term(5));
}

// ---- the clock ----

TEST_F(LessorTest, TheClockPausesForThePromotionPauseThenRunsFromTheTablesClock) {
  lessor.Promote(Term(1), Ms(10'000));
  EXPECT_EQ(lessor.ClockMs(Ms(10'000)), 0);
  EXPECT_EQ(lessor.ClockMs(Ms(10'999)), 0);
  EXPECT_EQ(lessor.ClockMs(Ms(11'000)), 0);
  EXPECT_EQ(lessor.ClockMs(Ms(11'000) + Nanos(999'999)), 0) << "whole milliseconds";
  EXPECT_EQ(lessor.ClockMs(Ms(11'001)), 1);
  EXPECT_EQ(lessor.ClockMs(Ms(13'500)), 2500);
  lessor.Demote();

  ApplyToTable([] {
    leasepb::Checkpoint cp;
    cp.set_term(1);
    cp.set_sequence(1);
    cp.set_clock_ms(7000);
    return cp;
  }());
  ASSERT_EQ(table.clock_ms(), 7000);
  lessor.Promote(Term(2), Ms(20'000));
  EXPECT_EQ(lessor.ClockMs(Ms(20'000)), 7000);
  EXPECT_EQ(lessor.ClockMs(Ms(21'000)), 7000);
  EXPECT_EQ(lessor.ClockMs(Ms(21'250)), 7250);
  EXPECT_EQ(lessor.ClockMs(Ms(30'000)), 16'000);
}

TEST_F(LessorTest, TheClockNeverFallsBelowTheTablesClock) {
  lessor.Promote(Term(2), Ms(0));
  EXPECT_EQ(lessor.ClockMs(Ms(500)), 0);
  // A checkpoint of an earlier leader, committed after this one's promotion.
  leasepb::Checkpoint old;
  old.set_term(1);
  old.set_sequence(9);
  old.set_clock_ms(50'000);
  ApplyToTable(old);
  EXPECT_EQ(lessor.ClockMs(Ms(500)), 50'000);
  EXPECT_EQ(lessor.ClockMs(Ms(3000)), 50'000) << "base + 2000 is behind the table";
  EXPECT_EQ(lessor.ClockMs(Ms(51'000)), 50'000);
  EXPECT_EQ(lessor.ClockMs(Ms(52'000)), 51'000);
}

// ---- renewals ----

TEST_F(LessorTest, RenewReturnsTheClockPlusTheTtlAndTheNextCheckpointCarriesIt) {
  Grant(1, 10);  // expiry 10'000
  lessor.Promote(Term(1), Ms(0));
  ASSERT_EQ(lessor.ClockMs(Ms(3000)), 2000);
  EXPECT_EQ(lessor.Renew(1, Ms(3000)), 12'000);
  EXPECT_EQ(lessor.ExpiryMs(1), 12'000) << "the pending renewal";
  EXPECT_EQ(table.Find(1)->expiry_ms, 10'000) << "not yet replicated";
  EXPECT_EQ(lessor.renewals_waiting(), 1u);

  leasepb::Checkpoint cp = Take(Ms(3000));
  EXPECT_EQ(cp.term(), 1u);
  EXPECT_EQ(cp.sequence(), 1u);
  EXPECT_EQ(cp.clock_ms(), 2000);
  EXPECT_THAT(Renewals(cp), ElementsAre(Pair(1, 12'000)));
  EXPECT_EQ(lessor.renewals_waiting(), 0u);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 1u);
  EXPECT_EQ(lessor.ExpiryMs(1), 12'000) << "proposed, not applied: still pending";

  EXPECT_THAT(Commit(cp), IsEmpty());
  EXPECT_EQ(table.Find(1)->expiry_ms, 12'000);
  EXPECT_EQ(table.clock_ms(), 2000);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 0u);
  EXPECT_EQ(lessor.ExpiryMs(1), 12'000);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(3000)), std::nullopt);
}

TEST_F(LessorTest, RenewalsOfOneLeaseBeforeACheckpointAreCarriedAsTheNewestOne) {
  Grant(1, 10);
  Grant(2, 5);
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.Renew(1, Ms(4000)), 13'000);
  EXPECT_EQ(lessor.Renew(1, Ms(4000)), 13'000);
  EXPECT_EQ(lessor.Renew(2, Ms(4200)), 8200);
  EXPECT_EQ(lessor.Renew(1, Ms(4500)), 13'500);
  EXPECT_EQ(lessor.renewals_waiting(), 2u);
  EXPECT_EQ(lessor.ExpiryMs(1), 13'500);
  EXPECT_EQ(lessor.ExpiryMs(2), 8200);
  leasepb::Checkpoint cp = Take(Ms(4500));
  EXPECT_EQ(cp.clock_ms(), 3500);
  // Soonest to expire first (lease 2's table expiry is earlier).
  EXPECT_THAT(Renewals(cp), ElementsAre(Pair(2, 8200), Pair(1, 13'500)));
}

// ---- when checkpoints go out ----

TEST_F(LessorTest, NoCheckpointIsDueWithoutLeasesRenewalsOrExpiries) {
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(0)), std::nullopt);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(10'000)), std::nullopt);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(3'600'000)), std::nullopt) << "no leases: no interval";
  EXPECT_EQ(lessor.checkpoints_in_flight(), 0u);
}

TEST_F(LessorTest, NoCheckpointIsDueBeforeTheIntervalWhileLeasesExist) {
  Grant(1, 100);
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(0)), std::nullopt);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(499)), std::nullopt);
}

TEST_F(LessorTest, ACheckpointGoesOutEveryIntervalWhileLeasesExist) {
  Grant(1, 100);
  lessor.Promote(Term(1), Ms(0));
  leasepb::Checkpoint cp1 = Take(Ms(500));
  EXPECT_EQ(cp1.sequence(), 1u);
  EXPECT_EQ(cp1.clock_ms(), 0) << "still in the promotion pause";
  EXPECT_THAT(Renewals(cp1), IsEmpty());
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(600)), std::nullopt);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(999)), std::nullopt);
  leasepb::Checkpoint cp2 = Take(Ms(1000));
  EXPECT_EQ(cp2.sequence(), 2u);
  EXPECT_EQ(cp2.clock_ms(), 0);
  EXPECT_THAT(Commit(cp1), IsEmpty());
  EXPECT_THAT(Commit(cp2), IsEmpty());
  // A renewal's checkpoint counts as one: the interval runs from it.
  EXPECT_EQ(lessor.Renew(1, Ms(1300)), 100'300);
  leasepb::Checkpoint cp3 = Take(Ms(1300));
  EXPECT_EQ(cp3.clock_ms(), 300);
  EXPECT_THAT(Commit(cp3), IsEmpty());
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(1500)), std::nullopt);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(1799)), std::nullopt);
  leasepb::Checkpoint cp4 = Take(Ms(1800));
  EXPECT_EQ(cp4.sequence(), 4u);
  EXPECT_EQ(cp4.clock_ms(), 800);
  EXPECT_THAT(Commit(cp4), IsEmpty());
  EXPECT_EQ(table.clock_ms(), 800);
}

TEST_F(LessorTest, ACheckpointGoesOutWhenTheClockReachesTheEarliestExpiryExactlyOnce) {
  Reconfigure(LessorConfig{.promotion_pause = Millis(1000), .checkpoint_interval = Millis(3'600'000)});
  Grant(1, 2);  // expiry 2000
  Grant(3, 3);  // expiry 3000
  Put("a", 1);
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(2999)), std::nullopt) << "clock 1999";
  EXPECT_FALSE(lessor.Expired(1, Ms(2999)));
  EXPECT_TRUE(lessor.Expired(1, Ms(3000)));
  leasepb::Checkpoint cp = Take(Ms(3000));
  EXPECT_EQ(cp.clock_ms(), 2000);
  EXPECT_EQ(cp.sequence(), 1u);
  EXPECT_THAT(Renewals(cp), IsEmpty());
  // Proposed with clock >= expiry: not again, even before it commits.
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(3001)), std::nullopt);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(3500)), std::nullopt);
  EXPECT_THAT(Commit(cp), ElementsAre(1));
  EXPECT_THAT(LiveKeys(store), IsEmpty());
  EXPECT_EQ(table.next_expiry_ms(), 3000);
  // The next expiry gets its own checkpoint when the clock reaches it.
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(3999)), std::nullopt);
  leasepb::Checkpoint cp2 = Take(Ms(4000));
  EXPECT_EQ(cp2.clock_ms(), 3000);
  EXPECT_EQ(cp2.sequence(), 2u);
  EXPECT_THAT(Commit(cp2), ElementsAre(3));
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(10'000)), std::nullopt);
}

TEST_F(LessorTest, AnExpiryCheckpointIsDueEvenAfterACheckpointWithAnEarlierClock) {
  Reconfigure(LessorConfig{.promotion_pause = Millis(1000), .checkpoint_interval = Millis(3'600'000)});
  Grant(1, 2);    // 2000
  Grant(2, 100);  // 100'000
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.Renew(2, Ms(2500)), 101'500);
  leasepb::Checkpoint cp1 = Take(Ms(2500));
  EXPECT_EQ(cp1.clock_ms(), 1500);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(2999)), std::nullopt);
  leasepb::Checkpoint cp2 = Take(Ms(3000));
  EXPECT_EQ(cp2.clock_ms(), 2000);
  EXPECT_EQ(cp2.sequence(), 2u);
  EXPECT_THAT(Commit(cp1), IsEmpty());
  EXPECT_THAT(Commit(cp2), ElementsAre(1));
}

TEST_F(LessorTest, AtMostCheckpointsInFlightMaxAreInFlight) {
  Reconfigure(LessorConfig{.promotion_pause = Millis(1000),
                           .checkpoint_interval = Millis(3'600'000),
                           .checkpoints_in_flight_max = 2});
  Grant(1, 100);
  Grant(2, 100);
  Grant(3, 100);
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.Renew(1, Ms(1100)), 100'100);
  leasepb::Checkpoint cp1 = Take(Ms(1100));
  EXPECT_EQ(lessor.Renew(2, Ms(1200)), 100'200);
  leasepb::Checkpoint cp2 = Take(Ms(1200));
  EXPECT_EQ(lessor.Renew(3, Ms(1300)), 100'300);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 2u);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(1300)), std::nullopt) << "two in flight";
  EXPECT_EQ(lessor.renewals_waiting(), 1u);

  // A checkpoint of another term frees nothing.
  leasepb::Checkpoint other = cp1;
  other.set_term(7);
  lessor.OnApplied(other);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 2u);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(1300)), std::nullopt);

  EXPECT_THAT(Commit(cp1), IsEmpty());
  EXPECT_EQ(lessor.checkpoints_in_flight(), 1u);
  leasepb::Checkpoint cp3 = Take(Ms(1300));
  EXPECT_EQ(cp3.sequence(), 3u);
  EXPECT_EQ(cp3.clock_ms(), 300);
  EXPECT_THAT(Renewals(cp3), ElementsAre(Pair(3, 100'300)));
  EXPECT_EQ(lessor.checkpoints_in_flight(), 2u);
  EXPECT_EQ(lessor.renewals_waiting(), 0u);
  // Applying a later one frees the earlier ones too (the log applies in order).
  ApplyToTable(cp2);
  ApplyToTable(cp3);
  lessor.OnApplied(cp3);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 0u);
  EXPECT_EQ(table.Find(1)->expiry_ms, 100'100);
  EXPECT_EQ(table.Find(2)->expiry_ms, 100'200);
  EXPECT_EQ(table.Find(3)->expiry_ms, 100'300);
}

TEST_F(LessorTest, AtMostCheckpointsInFlightMaxHoldsBackAnExpiryCheckpointToo) {
  Reconfigure(LessorConfig{.promotion_pause = Millis(1000),
                           .checkpoint_interval = Millis(3'600'000),
                           .checkpoints_in_flight_max = 1});
  Grant(1, 2);    // 2000
  Grant(2, 100);
  lessor.Promote(Term(1), Ms(0));
  lessor.Renew(2, Ms(2900));
  leasepb::Checkpoint cp1 = Take(Ms(2900));
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(3000)), std::nullopt);
  EXPECT_THAT(Commit(cp1), IsEmpty());
  leasepb::Checkpoint cp2 = Take(Ms(3000));
  EXPECT_EQ(cp2.clock_ms(), 2000);
  EXPECT_THAT(Commit(cp2), ElementsAre(1));
}

TEST_F(LessorTest, RenewalsPerCheckpointMaxCapsEachCheckpointAndTheRestGoInTheNext) {
  Reconfigure(LessorConfig{.promotion_pause = Millis(1000),
                           .checkpoint_interval = Millis(500),
                           .renewals_per_checkpoint_max = 2});
  for (int64_t id = 1; id <= 5; ++id) Grant(id, 10);
  lessor.Promote(Term(1), Ms(0));
  for (int64_t id = 5; id >= 1; --id) EXPECT_EQ(lessor.Renew(id, Ms(2000)), 11'000);
  EXPECT_EQ(lessor.renewals_waiting(), 5u);
  leasepb::Checkpoint cp1 = Take(Ms(2000));
  EXPECT_THAT(Renewals(cp1), ElementsAre(Pair(1, 11'000), Pair(2, 11'000)));
  EXPECT_EQ(lessor.renewals_waiting(), 3u);
  leasepb::Checkpoint cp2 = Take(Ms(2000));
  EXPECT_THAT(Renewals(cp2), ElementsAre(Pair(3, 11'000), Pair(4, 11'000)));
  leasepb::Checkpoint cp3 = Take(Ms(2000));
  EXPECT_THAT(Renewals(cp3), ElementsAre(Pair(5, 11'000)));
  EXPECT_EQ(lessor.renewals_waiting(), 0u);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(2000)), std::nullopt);
  EXPECT_EQ(cp1.sequence(), 1u);
  EXPECT_EQ(cp2.sequence(), 2u);
  EXPECT_EQ(cp3.sequence(), 3u);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 3u);
  Commit(cp1);
  Commit(cp2);
  Commit(cp3);
  for (int64_t id = 1; id <= 5; ++id) EXPECT_EQ(table.Find(id)->expiry_ms, 11'000) << id;
  EXPECT_EQ(lessor.checkpoints_in_flight(), 0u);
}

// A renewal accepted while its lease was live must not be expired by a checkpoint it
// did not fit in: the checkpoint's clock stops short of the earliest such expiry.
TEST_F(LessorTest, ACappedCheckpointsClockStopsShortOfTheRenewalsLeftWaiting) {
  Reconfigure(LessorConfig{.promotion_pause = Millis(1000),
                           .checkpoint_interval = Millis(500),
                           .renewals_per_checkpoint_max = 1});
  Grant(1, 3);  // expires at clock 3000
  Grant(2, 4);  // expires at clock 4000
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.Renew(2, Ms(3900)), 6900);  // clock 2900: both live
  EXPECT_EQ(lessor.Renew(1, Ms(3950)), 5950);  // clock 2950
  // At clock 4500 both table expiries have passed. Lease 1's (3000) is sooner: it goes
  // first; lease 2 waits, so the clock stops at 3999, short of its table expiry.
  leasepb::Checkpoint cp1 = Take(Ms(5500));
  EXPECT_THAT(Renewals(cp1), ElementsAre(Pair(1, 5950)));
  EXPECT_EQ(cp1.clock_ms(), 3999);
  EXPECT_THAT(Commit(cp1), IsEmpty()) << "lease 2 lives: its renewal was accepted";
  leasepb::Checkpoint cp2 = Take(Ms(5500));
  EXPECT_THAT(Renewals(cp2), ElementsAre(Pair(2, 6900)));
  EXPECT_EQ(cp2.clock_ms(), 4500);
  EXPECT_THAT(Commit(cp2), IsEmpty());
  EXPECT_EQ(table.Find(1)->expiry_ms, 5950);
  EXPECT_EQ(table.Find(2)->expiry_ms, 6900);
}

// An expiry checkpoint that Raft refused is proposed again, not left to the interval.
TEST_F(LessorTest, ADroppedExpiryCheckpointIsProposedAgain) {
  Reconfigure(LessorConfig{.promotion_pause = Millis(1000),
                           .checkpoint_interval = Millis(60'000),
                           .renewals_per_checkpoint_max = 10000});
  Grant(1, 2);  // expires at clock 2000
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(2500)), std::nullopt) << "clock 1500: nothing due";
  leasepb::Checkpoint cp1 = Take(Ms(3000));
  EXPECT_EQ(cp1.clock_ms(), 2000);
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(3050)), std::nullopt) << "one is on its way";
  lessor.OnDropped(cp1);
  leasepb::Checkpoint cp2 = Take(Ms(3100));
  EXPECT_EQ(cp2.clock_ms(), 2100);
  EXPECT_THAT(Commit(cp2), ElementsAre(1));
}

TEST_F(LessorTest, ADroppedCheckpointsRenewalsGoWithTheNextOne) {
  Grant(1, 10);
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.Renew(1, Ms(2000)), 11'000);
  leasepb::Checkpoint cp1 = Take(Ms(2000));
  lessor.OnDropped(cp1);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 0u);
  EXPECT_EQ(lessor.renewals_waiting(), 1u);
  EXPECT_EQ(lessor.ExpiryMs(1), 11'000);
  leasepb::Checkpoint cp2 = Take(Ms(2000));
  EXPECT_EQ(cp2.sequence(), 2u);
  EXPECT_THAT(Renewals(cp2), ElementsAre(Pair(1, 11'000)));
  EXPECT_THAT(Commit(cp2), IsEmpty());
  EXPECT_EQ(table.Find(1)->expiry_ms, 11'000);

  // A newer renewal made meanwhile is what goes, not the dropped one's.
  EXPECT_EQ(lessor.Renew(1, Ms(3000)), 12'000);
  leasepb::Checkpoint cp3 = Take(Ms(3000));
  EXPECT_EQ(lessor.Renew(1, Ms(3500)), 12'500);
  lessor.OnDropped(cp3);
  EXPECT_EQ(lessor.renewals_waiting(), 1u);
  leasepb::Checkpoint cp4 = Take(Ms(3500));
  EXPECT_THAT(Renewals(cp4), ElementsAre(Pair(1, 12'500)));
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(3500)), std::nullopt);

  // A drop of another term is ignored.
  leasepb::Checkpoint other = cp4;
  other.set_term(9);
  lessor.OnDropped(other);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 1u);
  EXPECT_EQ(lessor.renewals_waiting(), 0u);
  EXPECT_THAT(Commit(cp4), IsEmpty());
  EXPECT_EQ(table.Find(1)->expiry_ms, 12'500);
}

TEST_F(LessorTest, AnAppliedCheckpointKeepsANewerRenewalOfTheSameLease) {
  Grant(1, 10);
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.Renew(1, Ms(4000)), 13'000);
  leasepb::Checkpoint cp1 = Take(Ms(4000));
  EXPECT_EQ(lessor.Renew(1, Ms(4200)), 13'200);
  EXPECT_THAT(Commit(cp1), IsEmpty());
  EXPECT_EQ(table.Find(1)->expiry_ms, 13'000);
  EXPECT_EQ(lessor.ExpiryMs(1), 13'200);
  EXPECT_EQ(lessor.renewals_waiting(), 1u);
  leasepb::Checkpoint cp2 = Take(Ms(4200));
  EXPECT_THAT(Renewals(cp2), ElementsAre(Pair(1, 13'200)));
  EXPECT_THAT(Commit(cp2), IsEmpty());
  EXPECT_EQ(lessor.ExpiryMs(1), 13'200);
}

TEST_F(LessorTest, DemoteForgetsPendingRenewals) {
  Grant(1, 10);  // 10'000
  lessor.Promote(Term(1), Ms(0));
  EXPECT_EQ(lessor.Renew(1, Ms(2000)), 11'000);
  leasepb::Checkpoint cp1 = Take(Ms(2000));
  EXPECT_EQ(lessor.Renew(1, Ms(2500)), 11'500);
  lessor.Demote();
  EXPECT_FALSE(lessor.primary());
  EXPECT_EQ(lessor.renewals_waiting(), 0u);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 0u);
  lessor.OnApplied(cp1);  // not primary: ignored
  lessor.Promote(Term(2), Ms(3000));
  EXPECT_EQ(lessor.renewals_waiting(), 0u);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 0u);
  EXPECT_EQ(lessor.ExpiryMs(1), 10'000) << "only the table's";
  EXPECT_EQ(lessor.TakeCheckpoint(Ms(3000)), std::nullopt);
  // The old term's checkpoint commits after all: the table has it, the lessor ignores it.
  EXPECT_THAT(ApplyToTable(cp1), IsEmpty());
  lessor.OnApplied(cp1);
  EXPECT_EQ(lessor.checkpoints_in_flight(), 0u);
  EXPECT_EQ(lessor.ExpiryMs(1), 11'000);
}

TEST_F(LessorTest, SequenceNumbersIncreaseFromOnePerTerm) {
  Grant(1, 100);
  lessor.Promote(Term(1), Ms(0));
  leasepb::Checkpoint a = Take(Ms(500));
  leasepb::Checkpoint b = Take(Ms(1000));
  leasepb::Checkpoint c = Take(Ms(1500));
  EXPECT_EQ(a.sequence(), 1u);
  EXPECT_EQ(b.sequence(), 2u);
  EXPECT_EQ(c.sequence(), 3u);
  EXPECT_EQ(a.term(), 1u);
  EXPECT_EQ(c.term(), 1u);
  lessor.Demote();
  lessor.Promote(Term(4), Ms(2000));
  EXPECT_EQ(lessor.checkpoints_in_flight(), 0u);
  leasepb::Checkpoint d = Take(Ms(2500));
  EXPECT_EQ(d.term(), 4u);
  EXPECT_EQ(d.sequence(), 1u);
  leasepb::Checkpoint e = Take(Ms(3000));
  EXPECT_EQ(e.sequence(), 2u);
}

TEST_F(LessorTest, ALeaseIsExpiredOnceTheClockReachesItsExpiry) {
  Grant(1, 2);  // 2000
  lessor.Promote(Term(1), Ms(0));
  EXPECT_FALSE(lessor.Expired(1, Ms(0)));
  EXPECT_FALSE(lessor.Expired(1, Ms(2999)));  // clock 1999
  EXPECT_TRUE(lessor.Expired(1, Ms(3000)));   // clock 2000 == expiry
  EXPECT_TRUE(lessor.Expired(1, Ms(9000)));
  // A pending renewal counts.
  EXPECT_EQ(lessor.Renew(1, Ms(2500)), 3500);
  EXPECT_FALSE(lessor.Expired(1, Ms(3000)));
  EXPECT_FALSE(lessor.Expired(1, Ms(4499)));
  EXPECT_TRUE(lessor.Expired(1, Ms(4500)));
}

// ---- table and lessor together ----

// Lease 1 is renewed every second until 4 s and then abandoned; lease 2 is renewed
// every second throughout. Checkpoints commit at once. With `leader_change`, the leader
// is replaced at 5 s (a new Lessor over the same replicated table, no leaderless time).
struct ScenarioResult {
  int64_t revoked_at_ms = -1;     // real time the checkpoint revoking lease 1 committed
  int64_t revoked_clock_ms = -1;  // its clock
  std::vector<std::string> keys_after;
  bool lease2_alive = false;
};

ScenarioResult RunScenario(bool leader_change) {
  const LessorConfig config = TestLessorConfig();
  kv::MemoryBackend backend;
  LeaseTable table(&backend, LeaseConfig{});
  kv::Store store(&backend, &table);
  EXPECT_EQ(table.Grant(1, 3).value_or(-1), 3);  // 3000
  EXPECT_EQ(table.Grant(2, 3).value_or(-1), 3);
  for (auto [key, lease] : {std::pair<const char*, int64_t>{"a", 1}, {"b", 2}}) {
    kv::Store::Writer w = store.Write();
    EXPECT_TRUE(w.Put(key, "v", lease).ok());
    w.End();
  }
  auto leader = std::make_unique<Lessor>(&table, config);
  leader->Promote(Term(1), Ms(0));
  ScenarioResult run;
  for (int64_t t = 0; t <= 12'000; t += 100) {
    if (leader_change && t == 5000) {
      leader->Demote();
      leader = std::make_unique<Lessor>(&table, config);
      leader->Promote(Term(2), Ms(t));
      EXPECT_EQ(leader->ClockMs(Ms(t)), table.clock_ms());
    }
    if (t >= 1000 && t % 1000 == 0) {
      EXPECT_FALSE(leader->Expired(2, Ms(t))) << t;
      leader->Renew(2, Ms(t));
      if (t <= 4000) leader->Renew(1, Ms(t));
    }
    while (std::optional<leasepb::Checkpoint> cp = leader->TakeCheckpoint(Ms(t))) {
      std::vector<int64_t> revoked;
      std::vector<mvccpb::Event> events;
      const int64_t expiry = table.Exists(1) ? table.Find(1)->expiry_ms : -1;
      absl::Status st = table.ApplyCheckpoint(*cp, &store, &events, &revoked);
      EXPECT_TRUE(st.ok()) << st;
      leader->OnApplied(*cp);
      for (int64_t id : revoked) {
        EXPECT_EQ(id, 1) << "only the abandoned lease is revoked, at " << t;
        if (id != 1) continue;
        run.revoked_at_ms = t;
        run.revoked_clock_ms = cp->clock_ms();
        EXPECT_GE(cp->clock_ms(), expiry) << "not before its replicated expiry";
      }
    }
    table.CheckInvariants();
    store.CheckInvariants();
  }
  run.keys_after = LiveKeys(store);
  run.lease2_alive = table.Exists(2);
  return run;
}

TEST(LeaseEndToEndTest, ARenewedLeaseStaysAndAnAbandonedOneIsRevokedWhenTheClockPassesItsExpiry) {
  // The last renewal of lease 1, at 4 s (clock 3000), asks for 6000; the clock reaches
  // it at 7 s (the first second was the promotion pause).
  ScenarioResult run = RunScenario(false);
  EXPECT_EQ(run.revoked_at_ms, 7000);
  EXPECT_EQ(run.revoked_clock_ms, 6000);
  EXPECT_THAT(run.keys_after, ElementsAre("b"));
  EXPECT_TRUE(run.lease2_alive);
}

TEST(LeaseEndToEndTest, ANewLeaderResumesFromTheReplicatedClockAfterThePromotionPause) {
  const LessorConfig config = TestLessorConfig();
  ScenarioResult base = RunScenario(false);
  ScenarioResult changed = RunScenario(true);
  // At 5 s the table's clock is 3500 (the 4.5 s checkpoint); the new leader pauses until
  // 6 s, then runs: it reaches 6000 at 8.5 s.
  EXPECT_EQ(changed.revoked_at_ms, 8500);
  EXPECT_EQ(changed.revoked_clock_ms, 6000);
  EXPECT_GE(changed.revoked_at_ms, base.revoked_at_ms) << "never earlier";
  const int64_t slack_ms =
      std::chrono::duration_cast<Millis>(config.promotion_pause + config.checkpoint_interval).count();
  EXPECT_LE(changed.revoked_at_ms, base.revoked_at_ms + slack_ms);
  EXPECT_THAT(changed.keys_after, ElementsAre("b"));
  EXPECT_TRUE(changed.lease2_alive);
}

}  // namespace
}  // namespace keel::lease
