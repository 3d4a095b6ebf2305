#include "net/member.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/server/kv_server.h"
#include "core/server/kv_state_machine.h"
#include "core/server/node.h"
#include "net/asio_env.h"
#include "net/etcd_api.h"
#include "net/http_server.h"
#include "net/metrics.h"
#include "net/peer_transport.h"
#include "storage/sqlite_storage.h"

namespace keel::net {
namespace {

namespace fs = std::filesystem;

// etcd's 3.4 API is what keel speaks; clients gate features on this version.
constexpr const char* kApiVersion = "3.4.0";
// gRPC framing around a request of --max-request-bytes (etcd's grpcOverheadBytes).
constexpr int kGrpcOverheadBytes = 512 * 1024;

std::string Errno(const char* what, const std::string& path) {
  return absl::StrCat(what, " ", path, ": ", std::strerror(errno));
}

// Storage that times every fsync for etcd_disk_wal_fsync_duration_seconds (one Sync is
// etcd's WAL fsync and backend commit at once: keel's group commit).
class TimedStorage : public server::Storage {
 public:
  TimedStorage(server::Storage& inner, Histogram& fsync, Histogram& commit)
      : inner_(inner), fsync_(fsync), commit_(commit) {}
  absl::StatusOr<raft::RecoveredState> Load() override { return inner_.Load(); }
  absl::Status Append(std::span<const raft::Entry> entries) override {
    return inner_.Append(entries);
  }
  absl::Status SaveHardState(const raft::HardState& state) override {
    return inner_.SaveHardState(state);
  }
  absl::Status SaveSnapshot(const raft::Snapshot& snapshot) override {
    return inner_.SaveSnapshot(snapshot);
  }
  absl::Status InstallSnapshot(const raft::Snapshot& snapshot) override {
    return inner_.InstallSnapshot(snapshot);
  }
  absl::Status Compact(LogIndex through) override { return inner_.Compact(through); }
  absl::Status Sync() override {
    const auto start = std::chrono::steady_clock::now();
    absl::Status st = inner_.Sync();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fsync_.Observe(seconds);
    commit_.Observe(seconds);
    return st;
  }
  absl::StatusOr<uint64_t> AvailableBytes() override { return inner_.AvailableBytes(); }

 private:
  server::Storage& inner_;
  Histogram& fsync_;
  Histogram& commit_;
};

uint64_t FileSize(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  return ec ? 0 : static_cast<uint64_t>(size);
}

Severity SeverityFor(const std::string& level) {
  if (level == "debug") return Severity::kDebug;
  if (level == "warn") return Severity::kWarn;
  if (level == "error") return Severity::kError;
  return Severity::kInfo;
}

}  // namespace

struct KeelMember::Impl {
  Impl(KeeldConfig c, LogSink& sink)
      : config(std::move(c)), log(&sink, SeverityFor(config.log_level)) {}
  ~Impl();

  absl::Status Start();
  absl::Status PrepareDataDir();
  absl::Status CheckIdentity();
  absl::Status StartGrpc();
  absl::Status StartHttp();
  void RegisterMetrics();
  void SampleLeadership();
  void BeginStop(const char* why);
  void HandOverLeadership(Nanos budget);
  void WaitForHandOver();
  void CloseAndStop();
  void FinishStop();
  uint64_t DbBytes() const;
  void ServeHttp(std::string_view method, std::string_view target, HttpRespond respond);
  void CheckHealth(HttpRespond respond);
  std::vector<MemberInfo> Members() const;
  void OnHello(NodeId from, const std::string& info);

  KeeldConfig config;
  Logger log;
  fs::path data_dir;
  fs::path db_path;
  int lock_fd = -1;

  boost::asio::io_context io{1};
  boost::asio::signal_set signals{io};
  Metrics metrics;
  Histogram* fsync_seconds = nullptr;
  Histogram* commit_seconds = nullptr;
  Counter* leader_changes = nullptr;
  Counter* leases_expired = nullptr;
  Counter* health_success = nullptr;
  Counter* health_failures = nullptr;
  NodeId last_leader;
  uint64_t leases_expired_seen = 0;

  std::unique_ptr<storage::SqliteStorage> sqlite;
  std::unique_ptr<TimedStorage> disk;
  std::unique_ptr<PeerTransport> transport;
  std::unique_ptr<AsioEnv> env;
  std::unique_ptr<server::KvStateMachine> machine;
  std::unique_ptr<server::Node> node;
  std::unique_ptr<server::KvServer> server;
  std::unique_ptr<EtcdApi> api;
  std::unique_ptr<grpc::Server> grpc_server;
  std::vector<std::unique_ptr<HttpServer>> http;
  std::map<NodeId, std::vector<std::string>> client_urls;  // from the peers' hellos
  server::TimerId sample_timer = 0;
  bool stopping = false;
  bool stopped = false;
  Nanos handover_deadline{0};
  std::thread grpc_stopper;
};

KeelMember::Impl::~Impl() {
  if (grpc_stopper.joinable()) grpc_stopper.join();
  if (grpc_server) grpc_server->Shutdown(std::chrono::system_clock::now());
  if (lock_fd >= 0) ::close(lock_fd);
}

absl::Status KeelMember::Impl::PrepareDataDir() {
  data_dir = fs::absolute(config.data_dir);
  std::error_code ec;
  if (fs::exists(data_dir, ec) && !fs::is_directory(data_dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data-dir ", data_dir.string(), " exists and is not a directory"));
  }
  fs::create_directories(data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--data-dir ", data_dir.string(), ": cannot create it: ", ec.message()));
  }
  // etcd keeps its data private to its user.
  fs::permissions(data_dir, fs::perms::owner_all, fs::perm_options::replace, ec);
  const fs::path lock_path = data_dir / "keeld.lock";
  lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data-dir: ", Errno("cannot open", lock_path.string())));
  }
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--data-dir ", data_dir.string(), " is in use by another keeld (", lock_path.string(),
        " is locked)"));
  }
  db_path = data_dir / "keel.db";
  return CheckIdentity();
}

// The data directory remembers whose it is: a restart with flags naming another member
// or cluster is refused, never silently merged (it would vote under a new id).
absl::Status KeelMember::Impl::CheckIdentity() {
  const fs::path path = data_dir / "member.id";
  const std::string want = absl::StrCat("cluster ", absl::Hex(config.cluster_id), " member ",
                                        absl::Hex(config.self.value), "\n");
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    if (fs::exists(db_path, ec)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--data-dir ", data_dir.string(), " has a database but no member.id: not keeld's"));
    }
    if (config.initial_cluster_state == "existing") {
      return absl::FailedPreconditionError(absl::StrCat(
          "--initial-cluster-state=existing but --data-dir ", data_dir.string(),
          " holds no member (keel joins members only through --initial-cluster yet)"));
    }
    const fs::path tmp = data_dir / "member.id.tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << want;
      out.flush();
      if (!out) return absl::FailedPreconditionError(Errno("cannot write", tmp.string()));
    }
    const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
    fs::rename(tmp, path, ec);
    if (ec) return absl::FailedPreconditionError(absl::StrCat("cannot write ", path.string()));
    return absl::OkStatus();
  }
  std::ifstream in(path);
  std::string have((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (have != want) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--data-dir ", data_dir.string(), " belongs to ", absl::StripTrailingAsciiWhitespace(have),
        ", but the flags make this ", absl::StripTrailingAsciiWhitespace(want),
        " (check --name, --initial-cluster, --initial-advertise-peer-urls, "
        "--initial-cluster-token)"));
  }
  return absl::OkStatus();
}

uint64_t KeelMember::Impl::DbBytes() const {
  return FileSize(db_path) + FileSize(fs::path(db_path.string() + "-wal"));
}

void KeelMember::Impl::RegisterMetrics() {
  fsync_seconds = &metrics.AddHistogram(
      "etcd_disk_wal_fsync_duration_seconds",
      "The latency distributions of fsync called by WAL.",
      Metrics::ExponentialBuckets(0.001, 2, 14));
  commit_seconds = &metrics.AddHistogram(
      "etcd_disk_backend_commit_duration_seconds",
      "The latency distributions of commit called by backend.",
      Metrics::ExponentialBuckets(0.001, 2, 14));
  leader_changes = &metrics.AddCounter("etcd_server_leader_changes_seen_total",
                                       "The number of leader changes seen.");
  health_success = &metrics.AddCounter("etcd_server_health_success",
                                       "The total number of successful health checks");
  health_failures = &metrics.AddCounter("etcd_server_health_failures",
                                        "The total number of failed health checks");
  leases_expired = &metrics.AddCounter("keel_lease_expired_total",
                                       "Leases expired (revoked by a committed lease checkpoint).");
  // Gauge functions run where /metrics is served: on the io thread, beside the node.
  metrics.AddGaugeFunc("etcd_server_has_leader",
                       "Whether or not a leader exists. 1 is existence, 0 is not.",
                       [this] { return node && !node->raft().leader().IsZero() ? 1.0 : 0.0; });
  metrics.AddGaugeFunc("etcd_server_is_leader",
                       "Whether or not this member is a leader. 1 if is, 0 otherwise.", [this] {
                         return node && node->raft().leader() == node->raft().id() ? 1.0 : 0.0;
                       });
  metrics.AddGaugeFunc("etcd_server_proposals_committed_total",
                       "The total number of consensus proposals committed.", [this] {
                         return node ? static_cast<double>(node->raft().log().committed().value)
                                     : 0.0;
                       });
  metrics.AddGaugeFunc("etcd_server_proposals_applied_total",
                       "The total number of consensus proposals applied.", [this] {
                         return node ? static_cast<double>(node->raft().log().applied().value)
                                     : 0.0;
                       });
  metrics.AddGaugeFunc("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                       [] { return 1.0; },
                       {{"server_id", absl::StrCat(absl::Hex(config.self.value))}});
  metrics.AddGaugeFunc("etcd_mvcc_db_total_size_in_bytes",
                       "Total size of the underlying database physically allocated in bytes.",
                       [this] { return static_cast<double>(DbBytes()); });
  metrics.AddGaugeFunc("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
                       [this] { return static_cast<double>(config.QuotaBytes()); });
  metrics.AddGaugeFunc("etcd_debugging_mvcc_current_revision",
                       "The current revision of store.",
                       [this] { return server ? static_cast<double>(server->revision()) : 0.0; });
  metrics.AddGaugeFunc("keel_leases", "Leases held by the keyspace, as of this member's applied index.",
                       [this] { return server ? static_cast<double>(server->Leases().size()) : 0.0; });
  metrics.AddGaugeFunc("keel_watchers", "Watchers open on this member.",
                       [this] { return server ? static_cast<double>(server->watches().watchers()) : 0.0; });
  metrics.AddGaugeFunc("keel_watchers_unsynced",
                       "Watchers behind the store (slow clients, or catching up from history).",
                       [this] { return server ? static_cast<double>(server->watches().unsynced()) : 0.0; });
  metrics.AddGaugeFunc("keel_lease_renewals_waiting",
                       "Keepalives waiting for their renewal to be checkpointed (leader).",
                       [this] { return server ? static_cast<double>(server->lessor().renewals_waiting()) : 0.0; });
  metrics.AddGaugeFunc("keel_watch_streams", "Watch streams open on this member.",
                       [this] { return api ? static_cast<double>(api->watch_streams()) : 0.0; });
  metrics.AddGaugeFunc("keel_lease_keepalive_streams", "Lease keepalive streams open on this member.",
                       [this] { return api ? static_cast<double>(api->keepalive_streams()) : 0.0; });
  metrics.AddGaugeFunc("keel_nospace_alarms", "Members whose NOSPACE alarm is active.",
                       [this] { return node ? static_cast<double>(node->nospace_alarms().size()) : 0.0; });
}

// Once a tick: counts leader changes as etcd does (a new, known leader), and expiries.
void KeelMember::Impl::SampleLeadership() {
  sample_timer = 0;
  if (stopping || !node) return;
  leases_expired->Inc(static_cast<double>(server->leases_expired() - leases_expired_seen));
  leases_expired_seen = server->leases_expired();
  const NodeId leader = node->raft().leader();
  if (!leader.IsZero() && leader != last_leader) {
    leader_changes->Inc();
    log.Info("LeaderChanged").Field("leader", absl::StrCat(absl::Hex(leader.value)))
        .Field("term", node->raft().term());
  }
  if (!leader.IsZero()) last_leader = leader;
  sample_timer = env->SetTimer(Millis(config.heartbeat_interval_ms), [this] { SampleLeadership(); });
}

std::vector<MemberInfo> KeelMember::Impl::Members() const {
  std::vector<MemberInfo> out;
  for (const ClusterMember& m : config.initial_cluster) {
    MemberInfo info{.id = m.id, .name = m.name, .peer_urls = m.peer_urls};
    if (m.id == config.self) {
      for (const Url& u : config.advertise_client_urls) info.client_urls.push_back(u.text);
    } else if (auto it = client_urls.find(m.id); it != client_urls.end()) {
      info.client_urls = it->second;
    }
    out.push_back(std::move(info));
  }
  return out;
}

// A peer's hello carries its etcd Member record (name, client URLs): untrusted bytes,
// validated before use.
void KeelMember::Impl::OnHello(NodeId from, const std::string& info) {
  etcdserverpb::Member m;
  if (!m.ParseFromString(info) || m.id() != from.value || m.clienturls_size() > 16) {
    log.Warn("PeerHelloIgnored").Field("peer", absl::StrCat(absl::Hex(from.value)))
        .Field("reason", "malformed member record");
    return;
  }
  std::vector<std::string> urls;
  for (const std::string& u : m.clienturls()) {
    if (ParseUrl(u).ok()) urls.push_back(u);
  }
  client_urls[from] = std::move(urls);
}

void KeelMember::Impl::ServeHttp(std::string_view method, std::string_view target,
                                 HttpRespond respond) {
  const std::string_view path = target.substr(0, target.find('?'));
  if (method != "GET") return respond({.status = 405, .body = "method not allowed\n"});
  if (path == "/metrics") {
    return respond({.content_type = std::string(kMetricsContentType), .body = metrics.Render()});
  }
  if (path == "/version") {
    return respond({.content_type = "application/json",
                    .body = absl::StrCat("{\"etcdserver\":\"", kApiVersion,
                                         "\",\"etcdcluster\":\"3.4.0\"}")});
  }
  if (path == "/health") return CheckHealth(std::move(respond));
  respond({.status = 404, .body = "404 page not found\n"});
}

// etcd 3.4's /health: unhealthy with an alarm raised or no leader; otherwise healthy only
// if a linearizable read completes within a second (a leader cut off from its quorum
// still believes it leads until CheckQuorum steps it down).
void KeelMember::Impl::CheckHealth(HttpRespond respond) {
  auto answer = [this](HttpRespond& respond, bool healthy) {
    (healthy ? health_success : health_failures)->Inc();
    respond({.status = healthy ? 200 : 503,
             .content_type = "application/json",
             .body = healthy ? "{\"health\":\"true\"}" : "{\"health\":\"false\"}"});
  };
  if (stopping || !node || node->stopped() || !node->nospace_alarms().empty() ||
      node->raft().leader().IsZero()) {
    return answer(respond, false);
  }
  // Whichever comes first, the read or the second, answers; the other finds it done.
  struct Check {
    HttpRespond respond;
    server::TimerId timer = 0;
    bool done = false;
  };
  auto check = std::make_shared<Check>(Check{.respond = std::move(respond)});
  check->timer = env->SetTimer(std::chrono::seconds(1), [check, answer] {
    if (check->done) return;
    check->done = true;
    answer(check->respond, false);
  });
  node->Read([this, check, answer](absl::Status st) {
    if (check->done) return;
    check->done = true;
    if (env) env->CancelTimer(check->timer);
    answer(check->respond, st.ok());
  });
}

absl::Status KeelMember::Impl::StartGrpc() {
  EtcdApiContext context{
      .io = io,
      .server = *server,
      .node = *node,
      .metrics = metrics,
      .members = [this] { return Members(); },
      .fill_storage_status =
          [this](etcdserverpb::StatusResponse* out) {
            const uint64_t bytes = DbBytes();
            out->set_dbsize(static_cast<int64_t>(bytes));
            out->set_dbsizeinuse(static_cast<int64_t>(bytes));
          },
      .version = kApiVersion,
  };
  api = std::make_unique<EtcdApi>(std::move(context));
  grpc::ServerBuilder builder;
  std::vector<std::unique_ptr<int>> ports;
  for (const Url& url : config.listen_client_urls) {
    ports.push_back(std::make_unique<int>(0));
    builder.AddListeningPort(url.HostPort(), grpc::InsecureServerCredentials(), ports.back().get());
  }
  api->RegisterServices(builder);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_request_bytes) + kGrpcOverheadBytes);
  builder.SetMaxSendMessageSize(INT32_MAX);
  // etcdctl pings every 2 s (--keepalive-time): never answer pings with GOAWAY.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // etcd's server-side keepalive: a ping after 2 h of silence, 20 s to answer.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 2 * 3600 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  grpc_server = builder.BuildAndStart();
  if (!grpc_server) {
    return absl::UnavailableError("cannot serve clients: gRPC could not bind --listen-client-urls");
  }
  for (size_t i = 0; i < ports.size(); ++i) {
    if (*ports[i] == 0) {
      return absl::UnavailableError(absl::StrCat(
          "cannot listen for clients on ", config.listen_client_urls[i].text,
          " (in use, or not an address of this host)"));
    }
  }
  return absl::OkStatus();
}

absl::Status KeelMember::Impl::StartHttp() {
  for (const Url& url : config.listen_metrics_urls) {
    auto server = std::make_unique<HttpServer>(
        io,
        HttpAsyncHandler([this](std::string_view method, std::string_view target,
                                HttpRespond respond) { ServeHttp(method, target, std::move(respond)); }),
        log);
    if (absl::Status st = server->Listen(url.host, url.port); !st.ok()) {
      return absl::UnavailableError(absl::StrCat("--listen-metrics-urls ", url.text, ": ", st.message()));
    }
    http.push_back(std::move(server));
  }
  return absl::OkStatus();
}

absl::Status KeelMember::Impl::Start() {
  if (config.listen_peer_urls.size() != 1) {
    return absl::InvalidArgumentError("--listen-peer-urls: keel listens on one peer URL");
  }
  if (absl::Status st = PrepareDataDir(); !st.ok()) return st;
  RegisterMetrics();

  storage::SqliteStorage::Options options;
  // The NOSPACE alarm fires at etcd's quota (--quota-backend-bytes) or when the disk
  // runs out, whichever comes first.
  options.available_bytes = [this] {
    uint64_t free_disk = UINT64_MAX;
    struct statvfs vfs;
    if (statvfs(data_dir.c_str(), &vfs) == 0) free_disk = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    const uint64_t quota = static_cast<uint64_t>(config.QuotaBytes());
    const uint64_t used = DbBytes();
    return std::min(free_disk, used >= quota ? 0 : quota - used);
  };
  absl::StatusOr<std::unique_ptr<storage::SqliteStorage>> opened =
      storage::SqliteStorage::Open(db_path.string(), options);
  if (!opened.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", db_path.string(), ": ", opened.status().message()));
  }
  sqlite = *std::move(opened);
  disk = std::make_unique<TimedStorage>(*sqlite, *fsync_seconds, *commit_seconds);

  PeerTransportConfig transport_config{.cluster_id = config.cluster_id, .self = config.self};
  for (const ClusterMember& m : config.initial_cluster) {
    if (m.id == config.self) continue;
    absl::StatusOr<Url> url = ParseUrl(m.peer_urls.front());
    if (!url.ok()) return url.status();
    transport_config.peers[m.id] = PeerAddress{.host = url->host, .port = url->port};
  }
  etcdserverpb::Member self;
  self.set_id(config.self.value);
  self.set_name(config.name);
  for (const std::string& u : config.SelfMember().peer_urls) self.add_peerurls(u);
  for (const Url& u : config.advertise_client_urls) self.add_clienturls(u.text);
  transport_config.hello_info = self.SerializeAsString();
  transport = std::make_unique<PeerTransport>(
      io, transport_config,
      PeerTransport::Handlers{
          .message = [this](NodeId, std::string bytes) { if (node) node->Receive(bytes); },
          .hello = [this](NodeId from, std::string info) { OnHello(from, info); }},
      log);
  const Url& peer_url = config.listen_peer_urls.front();
  if (absl::Status st = transport->Listen(peer_url.host, peer_url.port); !st.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for peers on ", peer_url.text, ": ", st.message()));
  }
  transport->DialAll();

  env = std::make_unique<AsioEnv>(
      io, *disk, [this](NodeId to, std::string bytes) { transport->Send(to, std::move(bytes)); },
      log);

  const int64_t election_ticks = config.election_timeout_ms / config.heartbeat_interval_ms;
  server::KvConfig kv_config;
  kv_config.lease.min_ttl_seconds = std::max<int64_t>(1, (3 * config.election_timeout_ms / 2 + 999) / 1000);
  machine = std::make_unique<server::KvStateMachine>(sqlite.get(), kv_config, log);
  if (absl::Status st = machine->Open(); !st.ok()) {
    return absl::DataLossError(absl::StrCat("cannot load the keyspace: ", st.message()));
  }

  server::NodeConfig node_config;
  node_config.raft.id = config.self;
  for (const ClusterMember& m : config.initial_cluster) node_config.raft.voters.push_back(m.id);
  node_config.raft.heartbeat_ticks = 1;
  node_config.raft.election_ticks = static_cast<int>(election_ticks);
  node_config.tick_interval = Millis(config.heartbeat_interval_ms);
  node_config.snapshot_entries = config.snapshot_count;
  node_config.snapshot_catchup_entries = std::max<uint64_t>(1, std::min<uint64_t>(5000, config.snapshot_count / 2));
  node_config.request_bytes_max = config.max_request_bytes;
  node = std::make_unique<server::Node>(node_config, *env, *machine);
  if (absl::Status st = node->Start(); !st.ok()) {
    return absl::DataLossError(absl::StrCat("cannot recover the Raft log: ", st.message()));
  }

  server::KvServerConfig server_config;
  server_config.cluster_id = config.cluster_id;
  server_config.lessor.promotion_pause = Millis(config.election_timeout_ms);
  server_config.lessor.checkpoint_interval = Millis(config.election_timeout_ms / 2);
  absl::StatusOr<server::AutoCompactionConfig> compaction = AutoCompactionFor(config);
  if (!compaction.ok()) return compaction.status();
  server_config.auto_compaction = *compaction;
  server = std::make_unique<server::KvServer>(server_config, *env, *node, *machine);
  server->Start();

  if (absl::Status st = StartGrpc(); !st.ok()) return st;
  if (absl::Status st = StartHttp(); !st.ok()) return st;

  signals.add(SIGINT);
  signals.add(SIGTERM);
  signals.async_wait([this](const boost::system::error_code& ec, int signal) {
    if (!ec) BeginStop(signal == SIGINT ? "SIGINT" : "SIGTERM");
  });
  SampleLeadership();
  log.Info("ServingClients")
      .Field("name", config.name)
      .Field("member_id", absl::StrCat(absl::Hex(config.self.value)))
      .Field("cluster_id", absl::StrCat(absl::Hex(config.cluster_id)))
      .Field("client_urls", config.listen_client_urls.front().text)
      .Field("peer_url", peer_url.text)
      .Field("data_dir", data_dir.string());
  return absl::OkStatus();
}

void KeelMember::Impl::BeginStop(const char* why) {
  if (stopping) return;
  stopping = true;
  log.Info("Stopping").Field("reason", why);
  signals.cancel();
  HandOverLeadership(Millis(config.election_timeout_ms));
}

// A leader that stops hands leadership to its most caught-up follower first (etcd does
// too), so the cluster writes again within a round trip rather than an election timeout.
// Requests keep being served meanwhile. Gives up after `budget`.
void KeelMember::Impl::HandOverLeadership(Nanos budget) {
  const raft::Raft& raft = node->raft();
  if (node->stopped() || raft.role() != raft::Role::kLeader || raft.config().voters.size() < 2) {
    return CloseAndStop();
  }
  NodeId best;
  LogIndex best_match;
  for (NodeId peer : raft.config().voters) {
    const raft::Progress* p = raft.ProgressOf(peer);
    if (peer == raft.id() || p == nullptr) continue;
    if (best.IsZero() || p->match > best_match) {
      best = peer;
      best_match = p->match;
    }
  }
  if (absl::Status st = node->TransferLeadership(best); !st.ok()) {
    log.Warn("LeadershipNotHandedOver").Field("to", best).Field("status", st.ToString());
    return CloseAndStop();
  }
  log.Info("HandingOverLeadership").Field("to", best);
  handover_deadline = env->Now() + budget;
  WaitForHandOver();
}

void KeelMember::Impl::WaitForHandOver() {
  const bool moved = node->stopped() || node->raft().role() != raft::Role::kLeader;
  if (moved || env->Now() >= handover_deadline) {
    if (!moved) log.Warn("LeadershipNotHandedOver").Field("reason", "timed out");
    return CloseAndStop();
  }
  env->SetTimer(Millis(10), [this] { WaitForHandOver(); });
}

void KeelMember::Impl::CloseAndStop() {
  // Streams end now; unary calls in flight end within the request timeout, which gRPC's
  // Shutdown waits for (on its own thread: the calls complete on this one).
  api->CloseStreams();
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(7);
  grpc_stopper = std::thread([this, deadline] {
    grpc_server->Shutdown(deadline);
    boost::asio::post(io, [this] { FinishStop(); });
  });
}

void KeelMember::Impl::FinishStop() {
  for (auto& h : http) h->Stop();
  transport->Stop();
  server.reset();
  node.reset();
  env->CancelAllTimers();
  // A Ready that only moved the commit index staged its write for the next Sync.
  if (absl::Status st = sqlite->Sync(); !st.ok()) {
    log.Error("FinalSyncFailed").Field("status", st.ToString());
  }
  stopped = true;
  log.Info("Stopped");
  io.stop();
}

KeelMember::KeelMember(KeeldConfig config, LogSink& sink)
    : impl_(std::make_unique<Impl>(std::move(config), sink)) {}
KeelMember::~KeelMember() = default;

absl::Status KeelMember::Start() { return impl_->Start(); }

int KeelMember::Run() {
  impl_->io.run();
  if (impl_->grpc_stopper.joinable()) impl_->grpc_stopper.join();
  return impl_->stopped ? 0 : 1;
}

void KeelMember::RequestStop() {
  boost::asio::post(impl_->io, [impl = impl_.get()] { impl->BeginStop("requested"); });
}

}  // namespace keel::net
