// KvStateMachine (core/server/kv_state_machine.h) over storage::SqliteStorage, the node's
// real database: the keyspace, its leases, the dedup window and the applied index are
// written in the transaction that the next Sync commits, so a crash keeps all of them
// or none ("the state on disk is always that of some applied index"). A crash is the
// storage object destroyed without a Sync (its open transaction is rolled back).

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <any>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/memory_backend.h"
#include "core/lease/lease.pb.h"
#include "core/server/command.pb.h"
#include "core/server/kv_state_machine.h"
#include "storage/sqlite_storage.h"

namespace keel::storage {
namespace {

using server::KvConfig;
using server::KvStateMachine;
using server::StateMachine;
using ::testing::ElementsAre;

std::string PutCmd(const std::string& key, const std::string& value, int64_t lease = 0) {
  serverpb::Command c;
  c.mutable_put()->set_key(key);
  c.mutable_put()->set_value(value);
  c.mutable_put()->set_lease(lease);
  return c.SerializeAsString();
}

std::string GrantCmd(int64_t id, int64_t ttl) {
  serverpb::Command c;
  c.mutable_lease_grant()->set_id(id);
  c.mutable_lease_grant()->set_ttl(ttl);
  return c.SerializeAsString();
}

std::string RevokeCmd(int64_t id) {
  serverpb::Command c;
  c.mutable_lease_revoke()->set_id(id);
  return c.SerializeAsString();
}

std::string CheckpointCmd(uint64_t term, int64_t clock_ms) {
  serverpb::Command c;
  c.mutable_lease_checkpoint()->set_term(term);
  c.mutable_lease_checkpoint()->set_sequence(1);
  c.mutable_lease_checkpoint()->set_clock_ms(clock_ms);
  return c.SerializeAsString();
}

std::map<std::string, std::string> Keys(const KvStateMachine& m) {
  const std::string nul("\0", 1);
  etcdserverpb::RangeRequest r;
  r.set_key(nul);
  r.set_range_end(nul);
  etcdserverpb::RangeResponse resp;
  EXPECT_TRUE(m.applier().Range(r, &resp).ok());
  std::map<std::string, std::string> out;
  for (const mvccpb::KeyValue& kv : resp.kvs()) out[kv.key()] = kv.value();
  return out;
}

class KvDurability : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/keel-kv-durability-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/node.db";
    Reopen();
  }
  void TearDown() override {
    machine_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A crash (and restart): whatever was not synced is lost.
  void Reopen() {
    machine_.reset();
    db_.reset();
    absl::StatusOr<std::unique_ptr<SqliteStorage>> db = SqliteStorage::Open(path_, {});
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = std::move(*db);
    machine_ = std::make_unique<KvStateMachine>(db_.get(), config_, Logger());
    const absl::Status st = machine_->Open();
    ASSERT_TRUE(st.ok()) << st;
  }

  absl::Status Apply(uint64_t index, std::string_view command, uint64_t request_id = 0) {
    std::any response;
    const StateMachine::ApplyContext context{.term = Term(1), .response = &response};
    return machine_->Apply(LogIndex(index), request_id, command, context);
  }

  void Sync() { ASSERT_TRUE(db_->Sync().ok()); }

  KvConfig config_{.dedup_window_entries = 3};
  std::string dir_;
  std::string path_;
  std::unique_ptr<SqliteStorage> db_;
  std::unique_ptr<KvStateMachine> machine_;
};

TEST_F(KvDurability, ASyncedStateSurvivesARestart) {
  ASSERT_TRUE(Apply(1, GrantCmd(5, 10)).ok());
  ASSERT_TRUE(Apply(2, PutCmd("a", "1", 5), 42).ok());
  ASSERT_TRUE(Apply(3, PutCmd("b", "2")).ok());
  ASSERT_TRUE(Apply(4, CheckpointCmd(1, 700)).ok());
  Sync();
  Reopen();
  EXPECT_EQ(machine_->applied(), LogIndex(4));
  EXPECT_EQ(machine_->store().revision(), 3);
  EXPECT_EQ(Keys(*machine_), (std::map<std::string, std::string>{{"a", "1"}, {"b", "2"}}));
  ASSERT_NE(machine_->leases().Find(5), nullptr);
  EXPECT_THAT(machine_->leases().Find(5)->keys, ElementsAre("a"));
  EXPECT_EQ(machine_->leases().clock_ms(), 700);
  machine_->CheckInvariants();
  // The window: 42 was applied at 2, so index 5 is within 3 entries of it.
  EXPECT_TRUE(absl::IsDeadlineExceeded(Apply(5, PutCmd("a", "again"), 42)));
  EXPECT_EQ(Keys(*machine_).at("a"), "1");
}

TEST_F(KvDurability, ACrashBeforeTheSyncLosesTheChangesAndTheirAppliedIndexTogether) {
  ASSERT_TRUE(Apply(1, PutCmd("a", "1")).ok());
  Sync();
  ASSERT_TRUE(Apply(2, PutCmd("a", "2"), 42).ok());
  ASSERT_TRUE(Apply(3, GrantCmd(5, 10)).ok());
  Reopen();  // no Sync: 2 and 3 are gone, and the machine says so
  EXPECT_EQ(machine_->applied(), LogIndex(1));
  EXPECT_EQ(machine_->store().revision(), 2);
  EXPECT_EQ(Keys(*machine_), (std::map<std::string, std::string>{{"a", "1"}}));
  EXPECT_EQ(machine_->leases().size(), 0u);
  // The node re-applies them from its log: the request id is no duplicate of itself.
  EXPECT_TRUE(Apply(2, PutCmd("a", "2"), 42).ok());
  EXPECT_TRUE(Apply(3, GrantCmd(5, 10)).ok());
  EXPECT_EQ(Keys(*machine_).at("a"), "2");
  EXPECT_EQ(machine_->store().revision(), 3);
}

TEST_F(KvDurability, ARevokedLeasesHistoryReloads) {
  ASSERT_TRUE(Apply(1, GrantCmd(5, 10)).ok());
  ASSERT_TRUE(Apply(2, PutCmd("a", "1", 5)).ok());
  ASSERT_TRUE(Apply(3, RevokeCmd(5)).ok());
  Sync();
  Reopen();
  EXPECT_EQ(machine_->applied(), LogIndex(3));
  EXPECT_TRUE(Keys(*machine_).empty());
}

TEST_F(KvDurability, APeersSnapshotRestoredIntoTheDatabaseIsDurableOnceSynced) {
  kv::MemoryBackend peer_backend;
  KvStateMachine peer(&peer_backend, config_, Logger());
  ASSERT_TRUE(peer.Open().ok());
  std::any ignored;
  const StateMachine::ApplyContext context{.term = Term(1), .response = &ignored};
  ASSERT_TRUE(peer.Apply(LogIndex(1), 0, GrantCmd(9, 20), context).ok());
  ASSERT_TRUE(peer.Apply(LogIndex(2), 77, PutCmd("x", "1", 9), context).ok());
  ASSERT_TRUE(peer.Apply(LogIndex(3), 0, PutCmd("y", "1"), context).ok());
  const std::string dump = peer.ExportSnapshot();

  ASSERT_TRUE(Apply(1, PutCmd("mine", "1")).ok());
  Sync();
  ASSERT_TRUE(machine_->CheckSnapshot(LogIndex(3), dump).ok());
  ASSERT_TRUE(machine_->Restore(LogIndex(3), dump).ok());
  Sync();
  Reopen();
  EXPECT_EQ(machine_->applied(), LogIndex(3));
  EXPECT_EQ(Keys(*machine_), (std::map<std::string, std::string>{{"x", "1"}, {"y", "1"}}));
  ASSERT_NE(machine_->leases().Find(9), nullptr);
  EXPECT_THAT(machine_->leases().Find(9)->keys, ElementsAre("x"));
  EXPECT_TRUE(absl::IsDeadlineExceeded(Apply(4, PutCmd("x", "2"), 77)));
}

// The dedup window is replicated state: a member that restarted must decide each entry
// as one that kept running (see kv_state_machine_test.cc for the same on MemoryBackend).
TEST_F(KvDurability, ARestartDecidesADuplicateAsTheRunningMachineWould) {
  ASSERT_TRUE(Apply(1, PutCmd("k", "a"), 7).ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(Apply(2, PutCmd("k", "dup"), 7)));
  ASSERT_TRUE(Apply(3, PutCmd("o", "1")).ok());
  ASSERT_TRUE(Apply(4, PutCmd("o", "2")).ok());
  Sync();
  Reopen();
  // Index 5 is 4 entries after 7's application at 1: outside the window of 3.
  const absl::Status st = Apply(5, PutCmd("k", "b"), 7);
  EXPECT_TRUE(st.ok()) << st << " (the dropped duplicate at 2 moved 7's index in the database)";
}

}  // namespace
}  // namespace keel::storage
