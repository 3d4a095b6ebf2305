#pragma once
// The in-process keeld harness shared by the client tests (client_test.cc,
// registry_test.cc): keeld members run in this process (KeelMember on its own thread,
// loopback ports, data in a fresh temporary directory, removed afterwards), a deadline
// for every test, and "poll until a condition, or fail at a deadline".
//
// Each test file names its clusters (`name`: the temporary directory's prefix and the
// cluster token), so that two test binaries running at once are told apart.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "core/log.h"
#include "core/types.h"
#include "net/client/client.h"
#include "net/member.h"

namespace keel::client::testing {

// Aborts the whole run, naming the test, if the test outlives `limit` (a hung stream or
// a member that never stops must not hang CI).
class TestDeadline {
 public:
  explicit TestDeadline(std::chrono::seconds limit);
  ~TestDeadline();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;  // last: starts once the rest is built
};

// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
bool WaitFor(const std::function<bool()>& cond, Nanos timeout);

// Free loopback ports: all bound at once (so they differ), then released for the member.
std::vector<uint16_t> FreePorts(size_t count);

// Members log errors only (KEEL_TEST_LOG=1: everything), to stderr.
class TestLogSink : public LogSink {
 public:
  void Write(Severity severity, std::string_view name, std::string_view fields) override;

 private:
  std::mutex mu_;
};

// keeld members n1..nN in this process, configured through keeld's own flag parser.
// Fast timings (50 ms heartbeats, 500 ms elections) keep the tests short. `name` is the
// temporary directory's prefix and the cluster token.
class TestCluster {
 public:
  TestCluster(std::string_view name, size_t size);
  ~TestCluster();

  const std::string& name() const { return name_; }
  size_t size() const { return members_.size(); }
  std::string Endpoint(size_t i) const;
  std::vector<std::string> Endpoints() const;
  // The member whose client endpoint is `endpoint`.
  size_t IndexOf(const std::string& endpoint) const;

  // Starts member i (again, after a Stop: same ports, same data).
  absl::Status Start(size_t i);
  absl::Status StartAll();
  // Stops member i gracefully (as SIGTERM does) and waits until it has.
  void Stop(size_t i);
  bool running(size_t i) const { return members_[i].member != nullptr; }

  // Waits until every running member names the same leader, itself running.
  bool WaitForLeader(Nanos timeout = std::chrono::seconds(15));

 private:
  struct Member {
    std::string name;
    uint16_t client_port = 0, peer_port = 0, metrics_port = 0;
    std::unique_ptr<net::KeelMember> member;
    std::thread thread;
  };
  const std::string name_;
  std::filesystem::path dir_;
  std::string initial_cluster_;
  TestLogSink sink_;
  std::deque<Member> members_;
};

// One single-member cluster shared by the tests that need nothing else (each uses its
// own keys): started on first use (named `name`), stopped after the last test.
TestCluster& SharedMember(std::string_view name);

// A client of `endpoints` (config.endpoints is replaced); the config must be valid.
std::unique_ptr<Client> Connect(std::vector<std::string> endpoints, ClientConfig config = {});

}  // namespace keel::client::testing
