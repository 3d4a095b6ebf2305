#pragma once
// EtcdApi: etcd's v3 gRPC API (KV, Watch, Lease, Cluster, Maintenance) over one member's
// KvServer, for real clients (etcdctl, clientv3, python3-etcd3).
//
// Threads. gRPC's threads receive calls; each call is posted into the io_context, whose
// one thread owns the Node and the KvServer, and completed from there (DESIGN.md "Real
// mode"). Streams (Watch, LeaseKeepAlive) keep a bounded outbox that the io thread fills
// and gRPC drains one write at a time; a watch stream whose outbox is full refuses
// events, and the watch hub catches it up from history later (a slow client never
// blocks writes or holds unbounded memory).
//
// Errors. Core errors become etcd's gRPC codes and messages, which clients match on:
// a timeout is Unavailable "etcdserver: request timed out", no leader is Unavailable
// "etcdserver: no leader", overload is ResourceExhausted "etcdserver: too many
// requests"; errors already in etcd's words pass through.
//
// Leases at followers. KeepAlive and TimeToLive are the leader's (core/server/
// kv_server.h); a follower forwards them to the leader's client URL (Forwarder), as
// etcd forwards them over its peer port.
//
// The remaining RPCs (Auth, MemberAdd/Remove/Update/Promote, Defragment, Hash, HashKV,
// Snapshot, MoveLeader) answer Unimplemented.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/etcdpb/forward.h"
#include "core/types.h"

namespace boost::asio {
class io_context;
}
namespace grpc {
class ServerBuilder;
class Status;
}
namespace keel::server {
class KvServer;
class Node;
}

namespace keel::net {

class Metrics;

// Maps a core status to etcd's gRPC status (code and message).
grpc::Status ToGrpcStatus(const absl::Status& status);

struct MemberInfo {
  NodeId id;
  std::string name;
  std::vector<std::string> peer_urls;
  std::vector<std::string> client_urls;  // empty until the member said them (etcd too)
};

struct EtcdApiContext {
  boost::asio::io_context& io;
  server::KvServer& server;
  server::Node& node;
  Metrics& metrics;
  // Called on the io thread.
  std::function<std::vector<MemberInfo>()> members;
  // Fills Maintenance.Status's storage fields (db_size, db_size_in_use) on the io thread.
  std::function<void(etcdserverpb::StatusResponse*)> fill_storage_status;
  std::string version;  // etcd's API version this member speaks, for Status
  size_t watch_outbox_responses_max = 1024;
  size_t watch_outbox_bytes_max = 16 << 20;
};

class EtcdApi {
 public:
  // Requires: everything in `context` outlives the api.
  explicit EtcdApi(EtcdApiContext context);
  ~EtcdApi();
  EtcdApi(const EtcdApi&) = delete;
  EtcdApi& operator=(const EtcdApi&) = delete;

  // Adds the services to a server being built.
  void RegisterServices(grpc::ServerBuilder& builder);

  // io thread: finishes every open stream with Unavailable "etcdserver: server stopped"
  // (graceful stop; the clients reconnect elsewhere). New streams are refused after it.
  void CloseStreams();

  // io thread: streams open now.
  size_t watch_streams() const;
  size_t keepalive_streams() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::net
