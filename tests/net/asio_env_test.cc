// AsioEnv: the real clock and timers behind the core's Env.
#include "net/asio_env.h"

#include <chrono>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace keel::net {
namespace {

using ::testing::ElementsAre;

// The env only hands its storage out; these tests never touch it.
class UnusedStorage : public server::Storage {
 public:
  absl::StatusOr<raft::RecoveredState> Load() override { return Unused(); }
  absl::Status Append(std::span<const raft::Entry>) override { return Unused(); }
  absl::Status SaveHardState(const raft::HardState&) override { return Unused(); }
  absl::Status SaveSnapshot(const raft::Snapshot&) override { return Unused(); }
  absl::Status InstallSnapshot(const raft::Snapshot&) override { return Unused(); }
  absl::Status Compact(LogIndex) override { return Unused(); }
  absl::Status Sync() override { return Unused(); }
  absl::StatusOr<uint64_t> AvailableBytes() override { return Unused(); }

 private:
  static absl::Status Unused() { return absl::UnimplementedError("not in this test"); }
};

struct Fixture {
  boost::asio::io_context io{1};
  UnusedStorage storage;
  std::vector<std::pair<NodeId, std::string>> sent;
  AsioEnv env{io, storage, [this](NodeId to, std::string bytes) { sent.emplace_back(to, bytes); },
              Logger()};

  // Runs the loop until `done` or 5 s of wall time.
  template <typename Pred>
  void RunUntil(Pred done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      io.restart();
      io.run_one_for(std::chrono::milliseconds(10));
    }
  }
};

TEST(AsioEnv, TimersFireOnceInDeadlineOrderNotInOrderOfSetting) {
  Fixture f;
  std::vector<int> fired;
  f.env.SetTimer(Millis(30), [&] { fired.push_back(3); });
  f.env.SetTimer(Millis(10), [&] { fired.push_back(1); });
  f.env.SetTimer(Millis(20), [&] { fired.push_back(2); });
  f.RunUntil([&] { return fired.size() == 3; });
  EXPECT_THAT(fired, ElementsAre(1, 2, 3));
  EXPECT_EQ(f.env.timers(), 0u);
}

TEST(AsioEnv, ACanceledTimerNeverFires) {
  Fixture f;
  bool canceled_fired = false;
  bool other_fired = false;
  const server::TimerId id = f.env.SetTimer(Millis(5), [&] { canceled_fired = true; });
  f.env.SetTimer(Millis(20), [&] { other_fired = true; });
  f.env.CancelTimer(id);
  f.env.CancelTimer(id);  // twice: harmless
  f.RunUntil([&] { return other_fired; });
  EXPECT_TRUE(other_fired);
  EXPECT_FALSE(canceled_fired);
}

TEST(AsioEnv, ATimerMaySetAndCancelTimersFromItsCallback) {
  Fixture f;
  std::vector<int> fired;
  server::TimerId later = 0;
  f.env.SetTimer(Millis(1), [&] {
    fired.push_back(1);
    f.env.SetTimer(Nanos(0), [&] { fired.push_back(2); });
    f.env.CancelTimer(later);
  });
  later = f.env.SetTimer(Millis(15), [&] { fired.push_back(99); });
  f.RunUntil([&] { return fired.size() >= 2; });
  f.io.restart();
  f.io.run_for(std::chrono::milliseconds(30));
  EXPECT_THAT(fired, ElementsAre(1, 2));
}

TEST(AsioEnv, CancelAllTimersSilencesEverythingScheduled) {
  Fixture f;
  int fired = 0;
  for (int i = 0; i < 5; ++i) f.env.SetTimer(Millis(1), [&] { ++fired; });
  f.env.CancelAllTimers();
  f.io.restart();
  f.io.run_for(std::chrono::milliseconds(20));
  EXPECT_EQ(fired, 0);
}

TEST(AsioEnv, TimersOfADestroyedEnvDoNothing) {
  boost::asio::io_context io{1};
  UnusedStorage storage;
  bool fired = false;
  {
    AsioEnv env(io, storage, [](NodeId, std::string) {}, Logger());
    env.SetTimer(Millis(1), [&] { fired = true; });
  }
  io.run_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(fired);
}

TEST(AsioEnv, NowIsMonotonicAndSendGoesToTheTransport) {
  Fixture f;
  const Nanos a = f.env.Now();
  const Nanos b = f.env.Now();
  EXPECT_LE(a, b);
  f.env.Send(NodeId(7), "bytes");
  ASSERT_EQ(f.sent.size(), 1u);
  EXPECT_EQ(f.sent[0].first, NodeId(7));
  EXPECT_EQ(f.sent[0].second, "bytes");
}

TEST(AsioEnv, TwoEnvsDrawDifferentRequestIds) {
  Fixture a;
  Fixture b;
  // Seeded from the OS: two starts must not share a sequence (Env::Random's contract).
  EXPECT_NE(a.env.Random().Next(), b.env.Random().Next());
}

}  // namespace
}  // namespace keel::net
