#include "tests/net/member_harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/assert.h"
#include "core/etcdpb/rpc.pb.h"
#include "gtest/gtest.h"
#include "net/keeld_config.h"

namespace keel::client::testing {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

TestDeadline::TestDeadline(seconds limit)
    : thread_([this, limit] {
        std::unique_lock lock(mu_);
        if (cv_.wait_for(lock, limit, [this] { return done_; })) return;
        const ::testing::TestInfo* t = ::testing::UnitTest::GetInstance()->current_test_info();
        std::fprintf(stderr, "%s.%s exceeded its deadline of %lld s\n",
                     t ? t->test_suite_name() : "?", t ? t->name() : "?",
                     static_cast<long long>(limit.count()));
        std::fflush(stderr);
        std::abort();
      }) {}

TestDeadline::~TestDeadline() {
  {
    std::lock_guard lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

bool WaitFor(const std::function<bool()>& cond, Nanos timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  while (!cond()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return true;
}

std::vector<uint16_t> FreePorts(size_t count) {
  std::vector<int> fds;
  std::vector<uint16_t> ports;
  for (size_t i = 0; i < count; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    KEEL_ASSERT(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    KEEL_ASSERT(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    socklen_t len = sizeof(addr);
    KEEL_ASSERT(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    ports.push_back(ntohs(addr.sin_port));
    fds.push_back(fd);
  }
  for (int fd : fds) ::close(fd);
  return ports;
}

void TestLogSink::Write(Severity severity, std::string_view name, std::string_view fields) {
  static const bool all = std::getenv("KEEL_TEST_LOG") != nullptr;
  if (!all && severity < Severity::kError) return;
  std::lock_guard lock(mu_);
  std::fprintf(stderr, "[member %s] %.*s%.*s\n", std::string(SeverityName(severity)).c_str(),
               static_cast<int>(name.size()), name.data(), static_cast<int>(fields.size()),
               fields.data());
}

TestCluster::TestCluster(std::string_view name, size_t size) : name_(name) {
  KEEL_ASSERT(!name_.empty());
  std::string tmpl = (fs::temp_directory_path() / absl::StrCat(name_, "-XXXXXX")).string();
  KEEL_ASSERT(::mkdtemp(tmpl.data()) != nullptr);
  dir_ = tmpl;
  const std::vector<uint16_t> ports = FreePorts(3 * size);
  std::vector<std::string> cluster;
  for (size_t i = 0; i < size; ++i) {
    Member& m = members_.emplace_back();
    m.name = absl::StrCat("n", i + 1);
    m.client_port = ports[3 * i];
    m.peer_port = ports[3 * i + 1];
    m.metrics_port = ports[3 * i + 2];
    cluster.push_back(absl::StrCat(m.name, "=http://127.0.0.1:", m.peer_port));
  }
  initial_cluster_ = absl::StrJoin(cluster, ",");
}

TestCluster::~TestCluster() {
  for (size_t i = 0; i < members_.size(); ++i) Stop(i);
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

std::string TestCluster::Endpoint(size_t i) const {
  return absl::StrCat("127.0.0.1:", members_[i].client_port);
}

std::vector<std::string> TestCluster::Endpoints() const {
  std::vector<std::string> out;
  for (size_t i = 0; i < members_.size(); ++i) out.push_back(Endpoint(i));
  return out;
}

size_t TestCluster::IndexOf(const std::string& endpoint) const {
  for (size_t i = 0; i < members_.size(); ++i) {
    if (Endpoint(i) == endpoint) return i;
  }
  KEEL_ASSERT(false);
  return 0;
}

absl::Status TestCluster::Start(size_t i) {
  Member& m = members_[i];
  KEEL_ASSERT(!m.member);
  const std::string client = absl::StrCat("http://127.0.0.1:", m.client_port);
  const std::string peer = absl::StrCat("http://127.0.0.1:", m.peer_port);
  // Flags and their values, a pair a line.
  // clang-format off
  const std::vector<std::string> args = {
      "keeld",
      "--name", m.name,
      "--data-dir", (dir_ / m.name).string(),
      "--listen-client-urls", client,
      "--advertise-client-urls", client,
      "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer,
      "--listen-metrics-urls", absl::StrCat("http://127.0.0.1:", m.metrics_port),
      "--initial-cluster", initial_cluster_,
      "--initial-cluster-token", name_,
      "--heartbeat-interval", "50",
      "--election-timeout", "500",
      "--log-level", std::getenv("KEEL_TEST_LOG") != nullptr ? "info" : "error",
  };
  // clang-format on
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  net::ParsedFlags flags = net::ParseKeeldFlags(static_cast<int>(argv.size()), argv.data());
  if (flags.exit) return absl::InvalidArgumentError(flags.output);
  m.member = std::make_unique<net::KeelMember>(std::move(flags.config), sink_);
  if (absl::Status st = m.member->Start(); !st.ok()) {
    m.member.reset();
    return st;
  }
  m.thread = std::thread([member = m.member.get()] { member->Run(); });
  return absl::OkStatus();
}

absl::Status TestCluster::StartAll() {
  for (size_t i = 0; i < members_.size(); ++i) {
    if (absl::Status st = Start(i); !st.ok()) return st;
  }
  return absl::OkStatus();
}

void TestCluster::Stop(size_t i) {
  Member& m = members_[i];
  if (!m.member) return;
  m.member->RequestStop();
  m.thread.join();
  m.member.reset();
}

bool TestCluster::WaitForLeader(Nanos timeout) {
  std::vector<std::string> endpoints;
  for (size_t i = 0; i < members_.size(); ++i) {
    if (running(i)) endpoints.push_back(Endpoint(i));
  }
  auto client = Client::Connect({.endpoints = endpoints});
  KEEL_ASSERT(client.ok());
  return WaitFor(
      [&] {
        uint64_t leader = 0;
        for (const std::string& e : endpoints) {
          auto status = (*client)->Status(e, {.timeout = milliseconds(500)});
          if (!status.ok() || status->leader() == 0) return false;
          if (leader != 0 && status->leader() != leader) return false;
          leader = status->leader();
        }
        // The leader is one of the running members (its member id is in a header).
        for (const std::string& e : endpoints) {
          auto status = (*client)->Status(e, {.timeout = milliseconds(500)});
          if (status.ok() && status->header().member_id() == leader) return true;
        }
        return false;
      },
      timeout);
}

namespace {

TestCluster* shared_member = nullptr;

class SharedMemberEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    delete shared_member;
    shared_member = nullptr;
  }
};
const auto* const kSharedMemberEnvironment =
    ::testing::AddGlobalTestEnvironment(new SharedMemberEnvironment);

}  // namespace

TestCluster& SharedMember(std::string_view name) {
  if (shared_member == nullptr) {
    shared_member = new TestCluster(name, 1);
    absl::Status st = shared_member->StartAll();
    KEEL_ASSERT(st.ok());
    KEEL_ASSERT(shared_member->WaitForLeader());
  }
  KEEL_ASSERT(shared_member->name() == name);  // one shared member per test binary
  return *shared_member;
}

std::unique_ptr<Client> Connect(std::vector<std::string> endpoints, ClientConfig config) {
  config.endpoints = std::move(endpoints);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(std::move(config));
  KEEL_ASSERT(client.ok());
  return *std::move(client);
}

}  // namespace keel::client::testing
