#pragma once
// keeld's configuration: etcd's flag names and defaults (DESIGN.md "Real mode"), so that
// deploy habits and tooling carry over, parsed and validated before anything starts.
// Every bad value is a clear error naming the flag; nothing is created on disk here.
//
// Member and cluster ids are etcd's: a member's id is the first 8 bytes (big-endian) of
// SHA-1(its sorted peer URLs, concatenated, then --initial-cluster-token); the cluster's
// is the same over the sorted member ids. The same flags give the same ids as etcd.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/server/auto_compactor.h"
#include "core/types.h"

namespace keel::net {

struct Url {
  std::string text;  // as given, normalized: scheme://host:port
  std::string host;
  uint16_t port = 0;
  std::string HostPort() const;  // "host:port" ([v6]:port for IPv6 literals)
};
// http://host:port only: keel does not speak TLS yet, and says so.
absl::StatusOr<Url> ParseUrl(std::string_view text);
absl::StatusOr<std::vector<Url>> ParseUrls(std::string_view flag, std::string_view comma_list);

struct ClusterMember {
  std::string name;
  std::vector<std::string> peer_urls;  // sorted, as etcd hashes them
  NodeId id;
};
// "n1=http://a:2380,n2=http://b:2380,n1=http://c:2380" (a name may repeat for more URLs).
absl::StatusOr<std::vector<ClusterMember>> ParseInitialCluster(std::string_view text,
                                                               std::string_view token);

NodeId MemberIdFor(const std::vector<std::string>& sorted_peer_urls, std::string_view token);
uint64_t ClusterIdFor(std::vector<NodeId> members);

struct KeeldConfig {
  std::string name = "default";
  std::string data_dir;  // default: "<name>.keel" (etcd: "<name>.etcd")
  std::vector<Url> listen_client_urls;
  std::vector<Url> advertise_client_urls;
  std::vector<Url> listen_peer_urls;
  std::vector<Url> initial_advertise_peer_urls;
  std::vector<Url> listen_metrics_urls;  // HTTP /metrics and /health
  std::vector<ClusterMember> initial_cluster;  // sorted by id
  std::string initial_cluster_state = "new";
  std::string initial_cluster_token = "etcd-cluster";
  int64_t heartbeat_interval_ms = 100;
  int64_t election_timeout_ms = 1000;
  uint64_t snapshot_count = 100'000;
  std::string auto_compaction_mode = "periodic";
  std::string auto_compaction_retention = "0";
  int64_t quota_backend_bytes = 0;  // 0: etcd's default, 2 GiB
  uint64_t max_request_bytes = 1536 * 1024;
  std::string log_level = "info";

  NodeId self;
  uint64_t cluster_id = 0;
  const ClusterMember& SelfMember() const;
  int64_t QuotaBytes() const { return quota_backend_bytes > 0 ? quota_backend_bytes : 2LL << 30; }
};

// The outcome of reading the command line: run with a config, or exit (help, version)
// with the text to print and the status to exit with.
struct ParsedFlags {
  bool exit = false;
  int exit_code = 0;
  std::string output;
  KeeldConfig config;
};
ParsedFlags ParseKeeldFlags(int argc, const char* const* argv);

// --auto-compaction-mode/-retention as the core's compactor takes them.
absl::StatusOr<server::AutoCompactionConfig> AutoCompactionFor(const KeeldConfig& config);

// Checks the cross-flag rules (the member is in --initial-cluster with the URLs it
// advertises, timings, modes) and derives the ids. ParseKeeldFlags calls it.
absl::Status Finalize(KeeldConfig* config);

}  // namespace keel::net
