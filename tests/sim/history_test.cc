// The client-history checks catch each kind of violation, and accept what is allowed.
#include "sim/history.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace keel::sim {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using Outcome = ClientHistory::Outcome;
using Value = server::Register::Value;

Nanos Ms(int64_t ms) { return Millis(ms); }

// One operation, [start, end] in milliseconds.
size_t Write(ClientHistory& h, std::string value, int64_t start, int64_t end, Outcome o) {
  const size_t id = h.Begin({.write = true, .value = std::move(value), .start = Ms(start)});
  h.Resolve(id, o, 0, Ms(end));
  return id;
}
size_t Read(ClientHistory& h, size_t length, int64_t start, int64_t end) {
  const size_t id = h.Begin({.write = false, .start = Ms(start)});
  h.Resolve(id, Outcome::kOk, length, Ms(end));
  return id;
}

std::vector<Value> Register(std::vector<std::string> values) {
  std::vector<Value> out;
  uint64_t k = 1;
  for (std::string& v : values) out.push_back({k, LogIndex(k), std::move(v)}), ++k;
  return out;
}

std::string Joined(const std::vector<std::string>& failures) {
  std::string out;
  for (const std::string& f : failures) out += f + "\n";
  return out;
}

TEST(ClientHistory, AcceptsALinearizableHistoryWithConcurrencyAndTimeouts) {
  ClientHistory h;
  Write(h, "a", 0, 10, Outcome::kOk);
  Write(h, "b", 5, 30, Outcome::kOk);       // concurrent with c: either order is fine
  Write(h, "c", 6, 20, Outcome::kOk);
  Write(h, "lost", 7, 50, Outcome::kTimedOut);  // indeterminate: absent is fine
  Read(h, 1, 11, 12);                       // sees a
  Read(h, 3, 31, 40);
  EXPECT_THAT(h.Check(Register({"a", "c", "b"})), IsEmpty());
}

TEST(ClientHistory, CatchesALostAcknowledgedWrite) {
  ClientHistory h;
  Write(h, "a", 0, 10, Outcome::kOk);
  EXPECT_THAT(Joined(h.Check(Register({}))), HasSubstr("Durability"));
}

TEST(ClientHistory, CatchesADefinitelyFailedWriteThatWasApplied) {
  ClientHistory h;
  Write(h, "a", 0, 10, Outcome::kFailed);
  EXPECT_THAT(Joined(h.Check(Register({"a"}))), HasSubstr("Integrity"));
}

TEST(ClientHistory, CatchesAWriteOrderedBeforeAWriteAcknowledgedEarlier) {
  ClientHistory h;
  Write(h, "a", 0, 10, Outcome::kOk);
  Write(h, "b", 20, 30, Outcome::kOk);  // started after a was acknowledged
  EXPECT_THAT(Joined(h.Check(Register({"b", "a"}))), HasSubstr("Linearizability: write b"));
}

TEST(ClientHistory, CatchesAReadMissingAnAcknowledgedWrite) {
  ClientHistory h;
  Write(h, "a", 0, 10, Outcome::kOk);
  Read(h, 0, 20, 30);
  EXPECT_THAT(Joined(h.Check(Register({"a"}))), HasSubstr("Linearizability: read"));
}

TEST(ClientHistory, CatchesAReadSeeingLessThanAnEarlierRead) {  // a stale read
  ClientHistory h;
  Write(h, "a", 0, 100, Outcome::kTimedOut);
  Read(h, 1, 10, 20);
  Read(h, 0, 30, 40);
  EXPECT_THAT(Joined(h.Check(Register({"a"}))), HasSubstr("an operation that ended before"));
}

TEST(ClientHistory, CatchesAReadSeeingAWriteFromItsFuture) {
  ClientHistory h;
  Read(h, 1, 0, 10);
  Write(h, "a", 20, 30, Outcome::kOk);
  EXPECT_THAT(Joined(h.Check(Register({"a"}))), HasSubstr("started after it"));
}

TEST(ClientHistory, ResolveTakesOnlyTheFirstOutcome) {
  ClientHistory h;
  const size_t id = h.Begin({.write = true, .value = "a", .start = Ms(0)});
  EXPECT_EQ(h.pending(), 1u);
  EXPECT_TRUE(h.Resolve(id, Outcome::kOk, 0, Ms(5)));
  EXPECT_FALSE(h.Resolve(id, Outcome::kTimedOut, 0, Ms(9)));
  EXPECT_EQ(h.at(id).outcome, Outcome::kOk);
  EXPECT_EQ(h.pending(), 0u);
}

}  // namespace
}  // namespace keel::sim
