#include "core/kv/key_index.h"

#include <gtest/gtest.h>

namespace keel::kv {
namespace {

Revision R(int64_t main, int64_t sub = 0) { return Revision{main, sub}; }

// put@1, put@2, delete@3, put@4: the example of key_index.h.
KeyIndex Example() {
  KeyIndex ki;
  ki.Put(R(1));
  ki.Put(R(2));
  ki.Tombstone(R(3));
  ki.Put(R(4));
  ki.CheckInvariants();
  return ki;
}

TEST(KeyIndex, GetSeesTheValueOfEachRevision) {
  KeyIndex ki = Example();
  EXPECT_FALSE(ki.Get(0));
  ASSERT_TRUE(ki.Get(1));
  EXPECT_EQ(ki.Get(1)->modified, R(1));
  EXPECT_EQ(ki.Get(1)->created, R(1));
  EXPECT_EQ(ki.Get(1)->version, 1);
  EXPECT_EQ(ki.Get(2)->modified, R(2));
  EXPECT_EQ(ki.Get(2)->version, 2);
  EXPECT_FALSE(ki.Get(3)) << "deleted at 3";
  ASSERT_TRUE(ki.Get(4));
  EXPECT_EQ(ki.Get(4)->created, R(4));
  EXPECT_EQ(ki.Get(4)->version, 1) << "a new generation starts at version 1";
  EXPECT_EQ(ki.Get(100)->modified, R(4));
  EXPECT_TRUE(ki.live());
  EXPECT_EQ(ki.modified(), R(4));
}

TEST(KeyIndex, SubRevisionsOfOneMainAreOrdered) {
  KeyIndex ki;
  ki.Put(R(5, 0));
  ki.Tombstone(R(5, 1));
  ki.Put(R(5, 2));
  EXPECT_EQ(ki.Get(5)->modified, R(5, 2));
  EXPECT_EQ(ki.Get(5)->version, 1);
  EXPECT_FALSE(ki.Get(4));
}

TEST(KeyIndex, CompactKeepsTheRevisionVisibleAtThePoint) {
  KeyIndex ki = Example();
  std::vector<Revision> dropped;
  ki.Compact(2, &dropped);
  EXPECT_EQ(dropped, std::vector<Revision>({R(1)}));
  EXPECT_EQ(ki.Get(2)->modified, R(2));
  EXPECT_EQ(ki.Get(2)->version, 2) << "versions survive compaction";
  EXPECT_FALSE(ki.Get(3));
  ki.CheckInvariants();
}

TEST(KeyIndex, CompactAtOrAfterATombstoneDropsTheWholeGeneration) {
  KeyIndex ki = Example();
  std::vector<Revision> dropped;
  ki.Compact(3, &dropped);
  EXPECT_EQ(dropped, std::vector<Revision>({R(1), R(2), R(3)}));
  EXPECT_EQ(ki.Get(4)->modified, R(4));
  EXPECT_FALSE(ki.empty());
  ki.CheckInvariants();
}

TEST(KeyIndex, ADeletedKeyCompactedPastItsTombstoneIsEmpty) {
  KeyIndex ki;
  ki.Put(R(1));
  ki.Tombstone(R(2));
  std::vector<Revision> dropped;
  ki.Compact(1, &dropped);
  EXPECT_TRUE(dropped.empty());
  EXPECT_FALSE(ki.empty());
  ki.Compact(2, &dropped);
  EXPECT_EQ(dropped, std::vector<Revision>({R(1), R(2)}));
  EXPECT_TRUE(ki.empty());
}

TEST(KeyIndex, CompactBeforeAKeyExistedDropsNothing) {
  KeyIndex ki;
  ki.Put(R(7));
  std::vector<Revision> dropped;
  ki.Compact(5, &dropped);
  EXPECT_TRUE(dropped.empty());
  EXPECT_EQ(ki.Get(7)->modified, R(7));
}

TEST(KeyIndex, RepeatedCompactionsDropEachRevisionOnce) {
  KeyIndex ki;
  for (int64_t r = 1; r <= 10; ++r) ki.Put(R(r));
  std::vector<Revision> dropped;
  ki.Compact(4, &dropped);
  ki.Compact(4, &dropped);
  ki.Compact(8, &dropped);
  ASSERT_EQ(dropped.size(), 7u);
  for (int64_t r = 1; r <= 7; ++r) EXPECT_EQ(dropped[static_cast<size_t>(r - 1)], R(r));
  EXPECT_EQ(ki.Get(8)->version, 8);
  EXPECT_EQ(ki.Get(10)->version, 10);
  ki.CheckInvariants();
}

}  // namespace
}  // namespace keel::kv
