#pragma once
// PeerTransport: Raft peer traffic over TCP for keeld (DESIGN.md, "Real mode"). It moves
// opaque byte strings between cluster members; it knows nothing of Raft.
//
// Like etcd's rafthttp, each direction has its own stream: a member dials one outbound
// connection per peer and only writes on it, and only reads on the connections peers
// dial to it. So a connection never carries traffic both ways and there is no question
// of which of two simultaneous dials wins.
//
// Wire format (all integers little-endian):
//   frame  = u32 length, then `length` bytes; 0 < length <= frame_bytes_max.
//   The first frame on a connection is the dialer's hello:
//   hello  = "KEEL", u32 version (1), u64 cluster_id, u64 from, u64 to, info bytes.
//   Every later frame is one message for the `message` handler.
// The acceptor never writes. Any violation closes that one connection, is logged with a
// reason and counted; it harms nothing else.
//
// Delivery is best effort, as Raft expects of its network: a message may be dropped
// (queue full, connection lost with the message in flight), but those that arrive from
// one peer arrive in the order they were sent, each exactly once per connection.
//
// Threading: everything, handlers included, runs on the one thread running the
// io_context. Boost stays out of this header (pimpl), so the core never sees it.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/log.h"
#include "core/types.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace keel::net {

inline constexpr std::string_view kPeerHelloMagic = "KEEL";
inline constexpr uint32_t kPeerHelloVersion = 1;
// magic + version + cluster_id + from + to, before the info bytes.
inline constexpr size_t kPeerHelloFixedBytes = 4 + 4 + 8 + 8 + 8;
inline constexpr size_t kFrameHeaderBytes = 4;

struct PeerAddress {
  std::string host;  // a name (resolved asynchronously) or a numeric address
  uint16_t port = 0;
};

struct PeerTransportConfig {
  uint64_t cluster_id = 0;
  NodeId self;
  // Every other member. Requires: does not contain `self`.
  std::map<NodeId, PeerAddress> peers;
  std::string hello_info;             // opaque bytes carried in this member's hello
  size_t frame_bytes_max = 16 << 20;  // a bigger frame closes the connection
  size_t queue_messages_max = 4096;   // per peer, outbound, in flight included
  size_t queue_bytes_max = 64 << 20;  // per peer, outbound, in flight included
  Nanos dial_backoff_min = Millis(50);
  Nanos dial_backoff_max = Millis(2000);
  // An accepted connection must deliver a valid hello within this time.
  Nanos hello_timeout = Millis(5000);
  // Accepted connections held at once (authenticated or not); more are refused, so a
  // flood of idle sockets cannot exhaust file descriptors.
  size_t inbound_connections_max = 256;
};

// The dialer's first frame (payload only, without the length prefix).
struct PeerHello {
  uint64_t cluster_id = 0;
  NodeId from;
  NodeId to;
  std::string info;
};
std::string EncodePeerHello(const PeerHello& hello);
// Validates magic, version and size only; the acceptor checks the ids itself.
absl::StatusOr<PeerHello> DecodePeerHello(std::string_view payload);

// Appends the u32 length prefix and `payload` to `out`.
// Requires: payload.size() <= UINT32_MAX.
void AppendFrame(std::string* out, std::string_view payload);

// FrameDecoder: turns a byte stream, cut anywhere, into length-prefixed frames. Pure (no
// sockets) so that split reads and bad prefixes can be tested directly.
class FrameDecoder {
 public:
  // Requires: frame_bytes_max > 0.
  explicit FrameDecoder(size_t frame_bytes_max);

  // Consumes `bytes`, the next bytes of the stream, and appends each frame it completes
  // to `frames` (payload only). A bad length prefix (zero, or above frame_bytes_max) is
  // reported as soon as its 4 bytes are in, before any of the body arrives, so a peer
  // cannot make us buffer an oversized frame. Frames completed earlier in the same call
  // are still appended. After an error the decoder is dead: every later call returns it.
  absl::Status Feed(std::string_view bytes, std::vector<std::string>* frames);

  // Bytes held of the frame in progress (prefix included); 0 between frames.
  size_t buffered_bytes() const;

 private:
  size_t frame_bytes_max_;
  char header_[kFrameHeaderBytes] = {};
  size_t header_have_ = 0;  // [0, 4]
  bool in_body_ = false;
  size_t body_need_ = 0;  // length of the frame in progress, when in_body_
  std::string body_;
  absl::Status error_;
};

class PeerTransport {
 public:
  struct Handlers {
    // One call per received message frame, in the order the peer sent them.
    std::function<void(NodeId from, std::string bytes)> message;
    // Each accepted hello, before any message of that connection.
    std::function<void(NodeId from, std::string info)> hello;
  };

  // Requires: config.self is not zero and not among config.peers; dial_backoff_min > 0
  // and <= dial_backoff_max. `io` must outlive this object.
  PeerTransport(boost::asio::io_context& io, PeerTransportConfig config, Handlers handlers,
                Logger log);
  // Stops if not stopped. Safe after Stop() and with completions still queued in `io`.
  ~PeerTransport();
  PeerTransport(const PeerTransport&) = delete;
  PeerTransport& operator=(const PeerTransport&) = delete;

  // Binds and starts accepting. `host` is a numeric IPv4 or IPv6 address; port 0 picks
  // any free port (see port()). Fails with UnavailableError when the address is in use,
  // InvalidArgumentError for a bad host, FailedPreconditionError if already listening or
  // stopped.
  absl::Status Listen(std::string_view host, uint16_t port);
  // The bound port; 0 before a successful Listen.
  uint16_t port() const;

  // Queues `bytes` for `to` and returns at once. Dials `to` on first use and keeps the
  // connection up from then on. Drops (and counts) the message if `to` is not a
  // configured peer, the message is empty or above frame_bytes_max, the peer's queue is
  // full, or the transport is stopped. Raft retransmits, so a drop is not an error.
  void Send(NodeId to, std::string bytes);

  // Dials every peer not yet in use, so that each hears this member's hello (its info)
  // before there is anything to send it: etcd keeps a stream to every peer.
  void DialAll();

  // Membership changes (and tests, whose ports are known only after Listen). SetPeer adds
  // a member or changes its address; a connection to the old address is closed and the
  // new one dialed at once if the peer was in use. RemovePeer drops its queue (counted),
  // closes its connections both ways, and refuses its hellos from then on.
  // Requires: id is not zero and not self.
  void SetPeer(NodeId id, PeerAddress address);
  void RemovePeer(NodeId id);

  // Closes the listener and every connection and cancels every timer. From here on no
  // handler is called and Send drops. Idempotent.
  void Stop();

  struct Stats {
    uint64_t sent_frames = 0;           // messages written to an outbound socket
    uint64_t dropped_frames = 0;        // messages refused or lost in flight
    uint64_t received_frames = 0;       // messages handed to the message handler
    uint64_t rejected_connections = 0;  // bad or missing hello, too many connections
    uint64_t malformed_frames = 0;      // zero or oversized length prefix
  };
  Stats stats() const;

  // True while the outbound connection to `peer` is up and has carried our hello.
  bool Connected(NodeId peer) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::net
