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
// Watch fan-out. Watch is served raw (bytes in, bytes out): the hub encodes each event
// once for every watcher it goes to (core/watch/watch_hub.h, "Encoded delivery"), and a
// response is written as gRPC slices, the response without its events and then the
// events' shared bytes, referenced and never copied (WatchWire below). Requests are
// parsed here; one that does not parse ends its stream with InvalidArgument.
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

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "core/etcdpb/forward.h"
#include "core/types.h"
#include "core/watch/watch_hub.h"

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

// A WatchResponse on its way to a client, as gRPC slices: the response's bytes without
// its events, then each event's bytes as the hub encoded them (each the response's field
// `events` for that one event), shared with every other response that carries the event
// (a slice holds its bytes alive until gRPC is done with it). Written back to back, the
// slices are the whole response (protobuf's wire format: fields may come in any order, a
// repeated field's entries append). Built on the io thread; any thread may then merge,
// measure and write it (one at a time: the outbox's lock).
class WatchWire {
 public:
  // One slice per encoded event, whose copies (a reference count each) go to every
  // response that carries it: the fan-out of one event costs no allocation per watcher.
  // Keyed by the event's bytes, which each entry holds alive: a key cannot be reused
  // while it is in. Bounded: once full, it starts over (an event met again then gets a
  // second slice over the same bytes). One thread at a time (the io thread).
  class Slices {
   public:
    grpc::Slice Get(const watch::EncodedEvent& event);
    size_t size() const { return slices_.size(); }

   private:
    static constexpr size_t kSlicesMax = 4096;
    static constexpr size_t kBytesMax = 4 << 20;
    absl::flat_hash_map<const std::string*, grpc::Slice> slices_;
    size_t bytes_ = 0;  // of the events in slices_
  };

  // A response as it is: the control responses (created, canceled, progress), never
  // merged.
  static WatchWire Whole(const etcdserverpb::WatchResponse& response);
  // An event response from the hub's encoded sink: `meta` is the response without its
  // events; their slices come from `slices` if given. Requires: meta has no events;
  // events is not empty.
  static WatchWire Events(const etcdserverpb::WatchResponse& meta,
                          std::span<const watch::EncodedEvent> events, Slices* slices = nullptr);

  // The watch whose events this carries, if it carries nothing else (no created,
  // canceled, compaction, fragment): two such of the same watch may merge.
  std::optional<int64_t> merge_key() const { return merge_key_; }
  // Appends `later`'s events after this one's, and takes its header: what protobuf's
  // merge of the two responses gives (as the typed merge before it: the later header
  // wins). Requires: both have merge_key() set and equal; `later` came after.
  void Merge(WatchWire&& later);
  // The size of the response on the wire (a ByteBuffer's Length()).
  size_t bytes() const { return bytes_; }
  // The response to write, built on first use (it references the events' slices: no
  // event byte is copied) and valid as long as this; no Merge after it.
  const grpc::ByteBuffer& buffer();

 private:
  WatchWire() = default;

  // An event response's bytes without its events (watch_id, header: at most 57 bytes),
  // kept here until it is written: a merge replaces them, and only the response written
  // costs a slice.
  static constexpr size_t kMetaMax = 64;

  // [0]: the whole response (Whole), or, once written, meta_'s bytes (Events); then one
  // slice per event.
  std::vector<grpc::Slice> slices_;
  std::array<uint8_t, kMetaMax> meta_{};
  size_t meta_size_ = 0;  // 0: slices_[0] is the whole response
  std::optional<int64_t> merge_key_;
  size_t bytes_ = 0;
  std::optional<grpc::ByteBuffer> buffer_;  // once written
};

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
