#include "net/peer_transport.h"

#include <algorithm>
#include <array>
#include <boost/asio.hpp>
#include <chrono>
#include <cstring>
#include <deque>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/bytes.h"

namespace keel::net {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

// Reserve at most this much for a frame body up front: the length prefix is the peer's
// claim, and the bytes may never come.
constexpr size_t kBodyReserveBytesMax = 64 << 10;
constexpr size_t kReadBufferBytes = 64 << 10;
// One gathered write carries at most this much; the rest waits for the next write, so a
// long queue cannot pin an unbounded iovec array.
constexpr size_t kWriteBatchFramesMax = 1024;
constexpr size_t kWriteBatchBytesMax = 4 << 20;
// After a failed accept (EMFILE, ENOBUFS) retrying at once would spin.
constexpr Nanos kAcceptRetryDelay = Millis(100);

std::string AddressText(const PeerAddress& a) { return absl::StrCat(a.host, ":", a.port); }

std::string EndpointText(const tcp::endpoint& e) {
  error_code ec;
  std::string host = e.address().to_string(ec);
  return absl::StrCat(ec ? "?" : host, ":", e.port());
}

uint32_t LoadU32(const char* p) {
  uint32_t v = 0;
  for (int k = 0; k < 4; ++k) v |= static_cast<uint32_t>(static_cast<uint8_t>(p[k])) << (8 * k);
  return v;
}

void StoreU32(char* p, uint32_t v) {
  for (int k = 0; k < 4; ++k) p[k] = static_cast<char>(v >> (8 * k));
}

// A queued outbound message: its length prefix kept apart so the payload is never copied.
struct OutFrame {
  std::array<char, kFrameHeaderBytes> header;
  std::string payload;
};

// One outbound connection attempt. Shared with its pending completions, which keep the
// socket and the bytes in flight alive until they have run; a completion whose OutConn is
// no longer its peer's `conn` is stale and does nothing.
struct OutConn {
  explicit OutConn(asio::io_context& io) : socket(io) {}
  tcp::socket socket;
  bool connected = false;      // TCP is up
  bool hello_written = false;  // the first write, which leads with the hello, completed
  std::chrono::steady_clock::time_point up_since;  // when hello_written became true
  Nanos backoff_at_dial{0};  // the peer's backoff before this connection reset it
  bool write_in_flight = false;
  std::vector<OutFrame> writing;  // the batch in flight; untouched until its completion
  size_t writing_bytes = 0;
  char probe = 0;  // the acceptor never writes: a read completing means it closed
};

// The sending side of one peer. Held by shared_ptr so completions can outlive RemovePeer.
struct PeerOut {
  PeerOut(asio::io_context& io, NodeId id, PeerAddress address)
      : id(id), address(std::move(address)), resolver(io), redial_timer(io) {}
  NodeId id;
  PeerAddress address;
  tcp::resolver resolver;
  asio::steady_timer redial_timer;
  bool removed = false;
  bool in_use = false;             // set by the first Send; from then on the connection is kept up
  uint64_t redial_generation = 0;  // bumped by each schedule or dial: older timers are stale
  bool queue_full_logged = false;  // one Warn per episode of a full queue, not per drop
  std::shared_ptr<OutConn> conn;   // null while waiting to redial (or never dialed)
  std::deque<OutFrame> queue;
  size_t queue_bytes = 0;  // payload bytes of `queue` and of conn->writing
  Nanos backoff{0};
  uint32_t dial_failures_in_row = 0;

  // Messages in the write in flight (the hello is not one).
  size_t in_flight_frames() const {
    if (conn == nullptr || !conn->write_in_flight) return 0;
    return conn->writing.size() - (conn->hello_written ? 0 : 1);
  }
};

// One accepted connection; receive-only.
struct InConn {
  InConn(asio::io_context& io, tcp::socket s, size_t frame_bytes_max)
      : socket(std::move(s)), hello_timer(io), decoder(frame_bytes_max) {}
  uint64_t serial = 0;
  tcp::socket socket;
  asio::steady_timer hello_timer;
  FrameDecoder decoder;
  std::string remote;
  bool closed = false;
  bool hello_done = false;
  NodeId from;  // valid once hello_done
  std::array<char, kReadBufferBytes> buffer;
};

}  // namespace

// ---------------------------------------------------------------------------------------
// Wire helpers

std::string EncodePeerHello(const PeerHello& hello) {
  std::string out;
  out.reserve(kPeerHelloFixedBytes + hello.info.size());
  out.append(kPeerHelloMagic);
  PutU32(&out, kPeerHelloVersion);
  PutU64(&out, hello.cluster_id);
  PutU64(&out, hello.from.value);
  PutU64(&out, hello.to.value);
  out.append(hello.info);
  return out;
}

absl::StatusOr<PeerHello> DecodePeerHello(std::string_view payload) {
  if (payload.size() < kPeerHelloFixedBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello of ", payload.size(), " bytes is shorter than ", kPeerHelloFixedBytes));
  }
  if (payload.substr(0, kPeerHelloMagic.size()) != kPeerHelloMagic) {
    return absl::InvalidArgumentError("hello magic is not KEEL");
  }
  ByteReader r(payload.substr(kPeerHelloMagic.size()));
  uint32_t version = 0;
  PeerHello hello;
  bool fixed_fields_read = r.U32(&version) && r.U64(&hello.cluster_id) &&
                           r.U64(&hello.from.value) && r.U64(&hello.to.value);
  KEEL_ASSERT(fixed_fields_read);  // the size check above covers every fixed field
  if (version != kPeerHelloVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello version ", version, " is not ", kPeerHelloVersion));
  }
  hello.info.assign(payload.substr(kPeerHelloFixedBytes));
  return hello;
}

void AppendFrame(std::string* out, std::string_view payload) {
  KEEL_ASSERT(payload.size() <= UINT32_MAX);
  PutU32(out, static_cast<uint32_t>(payload.size()));
  out->append(payload);
}

// ---------------------------------------------------------------------------------------
// FrameDecoder

FrameDecoder::FrameDecoder(size_t frame_bytes_max) : frame_bytes_max_(frame_bytes_max) {
  KEEL_ASSERT(frame_bytes_max > 0);
}

absl::Status FrameDecoder::Feed(std::string_view bytes, std::vector<std::string>* frames) {
  KEEL_ASSERT(frames != nullptr);
  if (!error_.ok()) return error_;
  while (!bytes.empty()) {
    if (!in_body_) {
      size_t n = std::min(kFrameHeaderBytes - header_have_, bytes.size());
      std::memcpy(header_ + header_have_, bytes.data(), n);
      header_have_ += n;
      bytes.remove_prefix(n);
      if (header_have_ < kFrameHeaderBytes) break;
      header_have_ = 0;
      uint32_t length = LoadU32(header_);
      if (length == 0) {
        error_ = absl::InvalidArgumentError("zero-length frame");
        return error_;
      }
      if (length > frame_bytes_max_) {
        error_ = absl::ResourceExhaustedError(
            absl::StrCat("frame of ", length, " bytes is above the limit of ", frame_bytes_max_));
        return error_;
      }
      in_body_ = true;
      body_need_ = length;
      body_.clear();
      body_.reserve(std::min<size_t>(length, kBodyReserveBytesMax));
    }
    size_t n = std::min(body_need_ - body_.size(), bytes.size());
    body_.append(bytes.data(), n);
    bytes.remove_prefix(n);
    if (body_.size() == body_need_) {
      frames->push_back(std::move(body_));
      body_ = std::string();
      in_body_ = false;
    }
  }
  return absl::OkStatus();
}

size_t FrameDecoder::buffered_bytes() const {
  return in_body_ ? kFrameHeaderBytes + body_.size() : header_have_;
}

// ---------------------------------------------------------------------------------------
// PeerTransport::Impl
//
// Every completion handler captures `alive` and returns at once if it is false: Stop()
// clears it, so handlers queued before Stop (or before the transport is destroyed) run as
// no-ops. Only after that check may a handler touch `this`.

struct PeerTransport::Impl {
  Impl(asio::io_context& io, PeerTransportConfig config, Handlers handlers, Logger log)
      : io_(io),
        config_(std::move(config)),
        handlers_(std::move(handlers)),
        log_(log),
        acceptor_(io),
        accept_retry_timer_(io) {}

  // Outbound
  void AddPeer(NodeId id, PeerAddress address);
  void Send(NodeId to, std::string bytes);
  void DropQueueFull(PeerOut& p, std::string_view reason, size_t bytes);
  void DialAll();
  void StartDial(const std::shared_ptr<PeerOut>& p);
  void Connect(const std::shared_ptr<PeerOut>& p, const std::shared_ptr<OutConn>& conn,
               std::vector<tcp::endpoint> endpoints);
  void OnConnected(const std::shared_ptr<PeerOut>& p, const std::shared_ptr<OutConn>& conn);
  void WatchForClose(const std::shared_ptr<PeerOut>& p, const std::shared_ptr<OutConn>& conn);
  void MaybeWrite(const std::shared_ptr<PeerOut>& p);
  void OnWritten(const std::shared_ptr<PeerOut>& p, const error_code& ec);
  void CloseOut(const std::shared_ptr<PeerOut>& p, std::string_view reason);
  void ScheduleRedial(const std::shared_ptr<PeerOut>& p);
  Nanos NextBackoff(PeerOut& p);
  void SetPeer(NodeId id, PeerAddress address);
  void RemovePeer(NodeId id);

  // Inbound
  absl::Status Listen(std::string_view host, uint16_t port);
  void StartAccept();
  void OnAccepted(tcp::socket socket);
  void StartRead(const std::shared_ptr<InConn>& conn);
  void OnRead(const std::shared_ptr<InConn>& conn, const error_code& ec, size_t n);
  bool AcceptHello(const std::shared_ptr<InConn>& conn, std::string_view payload);
  void Reject(const std::shared_ptr<InConn>& conn, std::string_view reason);
  void CloseIn(const std::shared_ptr<InConn>& conn);

  void Stop();

  asio::io_context& io_;
  PeerTransportConfig config_;
  Handlers handlers_;
  Logger log_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  Stats stats_;
  std::mt19937 rng_{std::random_device{}()};

  tcp::acceptor acceptor_;
  asio::steady_timer accept_retry_timer_;
  bool listening_ = false;
  uint16_t port_ = 0;

  std::map<NodeId, std::shared_ptr<PeerOut>> peers_;
  std::map<uint64_t, std::shared_ptr<InConn>> inbound_;  // by serial
  uint64_t next_inbound_serial_ = 1;
};

// ----- Outbound -------------------------------------------------------------------------

void PeerTransport::Impl::AddPeer(NodeId id, PeerAddress address) {
  KEEL_ASSERT(!id.IsZero() && id != config_.self);
  auto p = std::make_shared<PeerOut>(io_, id, std::move(address));
  p->backoff = config_.dial_backoff_min;
  peers_[id] = std::move(p);
}

void PeerTransport::Impl::DropQueueFull(PeerOut& p, std::string_view reason, size_t bytes) {
  ++stats_.dropped_frames;
  if (p.queue_full_logged) return;
  p.queue_full_logged = true;
  log_.Warn("PeerSendDropped").Field("peer", p.id).Field("reason", reason).Field("bytes", bytes);
}

void PeerTransport::Impl::Send(NodeId to, std::string bytes) {
  if (!*alive_) {
    ++stats_.dropped_frames;
    return;
  }
  auto it = peers_.find(to);
  if (it == peers_.end()) {
    ++stats_.dropped_frames;
    log_.Debug("PeerSendDropped").Field("peer", to).Field("reason", "unknown peer");
    return;
  }
  const std::shared_ptr<PeerOut>& p = it->second;
  if (bytes.empty() || bytes.size() > config_.frame_bytes_max) {
    // The receiver would close the connection over it, losing everything queued behind.
    ++stats_.dropped_frames;
    log_.Warn("PeerSendDropped")
        .Field("peer", to)
        .Field("reason", "message size")
        .Field("bytes", bytes.size());
    return;
  }
  if (p->queue.size() + p->in_flight_frames() >= config_.queue_messages_max) {
    DropQueueFull(*p, "queue full (messages)", bytes.size());
    return;
  }
  if (p->queue_bytes + bytes.size() > config_.queue_bytes_max) {
    DropQueueFull(*p, "queue full (bytes)", bytes.size());
    return;
  }
  OutFrame frame;
  StoreU32(frame.header.data(), static_cast<uint32_t>(bytes.size()));
  p->queue_bytes += bytes.size();
  frame.payload = std::move(bytes);
  p->queue.push_back(std::move(frame));
  if (!p->in_use) {
    p->in_use = true;
    StartDial(p);
    return;
  }
  MaybeWrite(p);
}

void PeerTransport::Impl::DialAll() {
  if (!*alive_) return;
  for (auto& [id, p] : peers_) {
    if (p->in_use || p->removed) continue;
    p->in_use = true;
    StartDial(p);
  }
}

void PeerTransport::Impl::StartDial(const std::shared_ptr<PeerOut>& p) {
  KEEL_ASSERT(p->conn == nullptr && !p->removed);
  ++p->redial_generation;
  auto conn = std::make_shared<OutConn>(io_);
  conn->backoff_at_dial = p->backoff;
  p->conn = conn;
  error_code ec;
  asio::ip::address address = asio::ip::make_address(p->address.host, ec);
  if (!ec) {
    Connect(p, conn, {tcp::endpoint(address, p->address.port)});
    return;
  }
  p->resolver.async_resolve(
      p->address.host, std::to_string(p->address.port),
      [this, alive = alive_, p, conn](const error_code& ec, tcp::resolver::results_type r) {
        if (!*alive || p->removed || p->conn != conn) return;
        if (ec) {
          CloseOut(p, absl::StrCat("resolve: ", ec.message()));
          return;
        }
        Connect(p, conn, std::vector<tcp::endpoint>(r.begin(), r.end()));
      });
}

void PeerTransport::Impl::Connect(const std::shared_ptr<PeerOut>& p,
                                  const std::shared_ptr<OutConn>& conn,
                                  std::vector<tcp::endpoint> endpoints) {
  asio::async_connect(conn->socket, std::move(endpoints),
                      [this, alive = alive_, p, conn](const error_code& ec, const tcp::endpoint&) {
                        if (!*alive || p->removed || p->conn != conn) return;
                        if (ec) {
                          CloseOut(p, absl::StrCat("connect: ", ec.message()));
                          return;
                        }
                        OnConnected(p, conn);
                      });
}

void PeerTransport::Impl::OnConnected(const std::shared_ptr<PeerOut>& p,
                                      const std::shared_ptr<OutConn>& conn) {
  error_code ec;
  // Raft messages are small and latency-bound; batching is ours to do (MaybeWrite).
  conn->socket.set_option(tcp::no_delay(true), ec);
  if (ec) log_.Warn("PeerSocketOption").Field("peer", p->id).Field("reason", ec.message());
  conn->connected = true;
  WatchForClose(p, conn);
  MaybeWrite(p);
}

void PeerTransport::Impl::WatchForClose(const std::shared_ptr<PeerOut>& p,
                                        const std::shared_ptr<OutConn>& conn) {
  // Without a pending read, a peer that restarted goes unnoticed until a write fails,
  // and the messages written into the dead connection before that are lost silently.
  conn->socket.async_read_some(asio::buffer(&conn->probe, 1),
                               [this, alive = alive_, p, conn](const error_code& ec, size_t) {
                                 if (!*alive || p->removed || p->conn != conn) return;
                                 if (ec == asio::error::eof) {
                                   CloseOut(p, "closed by peer");
                                 } else if (ec) {
                                   CloseOut(p, ec.message());
                                 } else {
                                   CloseOut(p, "peer wrote on a send-only connection");
                                 }
                               });
}

void PeerTransport::Impl::MaybeWrite(const std::shared_ptr<PeerOut>& p) {
  const std::shared_ptr<OutConn>& conn = p->conn;
  if (conn == nullptr || !conn->connected || conn->write_in_flight) return;
  if (conn->hello_written && p->queue.empty()) return;
  KEEL_ASSERT(conn->writing.empty());
  std::vector<asio::const_buffer> buffers;
  std::string hello;
  if (!conn->hello_written) {
    AppendFrame(&hello, EncodePeerHello({.cluster_id = config_.cluster_id,
                                         .from = config_.self,
                                         .to = p->id,
                                         .info = config_.hello_info}));
  }
  conn->writing_bytes = 0;
  while (!p->queue.empty() && conn->writing.size() < kWriteBatchFramesMax &&
         conn->writing_bytes < kWriteBatchBytesMax) {
    conn->writing_bytes += p->queue.front().payload.size();
    conn->writing.push_back(std::move(p->queue.front()));
    p->queue.pop_front();
  }
  // The hello rides in the batch's OutFrame list so that it lives as long as the write.
  if (!hello.empty()) {
    conn->writing.insert(conn->writing.begin(), OutFrame{{}, std::move(hello)});
  }
  buffers.reserve(2 * conn->writing.size());
  for (size_t k = 0; k < conn->writing.size(); ++k) {
    const OutFrame& f = conn->writing[k];
    if (!(k == 0 && !conn->hello_written)) buffers.push_back(asio::buffer(f.header));
    buffers.push_back(asio::buffer(f.payload));
  }
  conn->write_in_flight = true;
  asio::async_write(conn->socket, buffers,
                    [this, alive = alive_, p, conn](const error_code& ec, size_t) {
                      if (!*alive || p->removed || p->conn != conn) return;
                      OnWritten(p, ec);
                    });
}

void PeerTransport::Impl::OnWritten(const std::shared_ptr<PeerOut>& p, const error_code& ec) {
  OutConn& conn = *p->conn;
  KEEL_ASSERT(conn.write_in_flight);
  if (ec) {
    CloseOut(p, absl::StrCat("write: ", ec.message()));  // counts the batch as dropped
    return;
  }
  conn.write_in_flight = false;
  size_t messages = conn.writing.size();
  if (!conn.hello_written) {
    KEEL_ASSERT(messages >= 1);
    --messages;  // the hello
    conn.hello_written = true;
    conn.up_since = std::chrono::steady_clock::now();
    p->backoff = config_.dial_backoff_min;
    p->dial_failures_in_row = 0;
    log_.Info("PeerConnected").Field("peer", p->id).Field("address", AddressText(p->address));
  }
  stats_.sent_frames += messages;
  KEEL_ASSERT(p->queue_bytes >= conn.writing_bytes);
  p->queue_bytes -= conn.writing_bytes;
  conn.writing.clear();
  conn.writing_bytes = 0;
  p->queue_full_logged = false;
  MaybeWrite(p);
}

void PeerTransport::Impl::CloseOut(const std::shared_ptr<PeerOut>& p, std::string_view reason) {
  // Moving the connection out makes all its pending completions stale.
  std::shared_ptr<OutConn> conn = std::move(p->conn);
  KEEL_ASSERT(conn != nullptr);
  if (conn->write_in_flight) {
    // Its bytes may be half written; Raft retransmits what matters. conn->writing stays
    // intact: the cancelled write owns references into it until its completion runs.
    stats_.dropped_frames += conn->writing.size() - (conn->hello_written ? 0 : 1);
    KEEL_ASSERT(p->queue_bytes >= conn->writing_bytes);
    p->queue_bytes -= conn->writing_bytes;
  }
  error_code ignored;
  conn->socket.shutdown(tcp::socket::shutdown_both, ignored);
  conn->socket.close(ignored);
  if (conn->hello_written &&
      std::chrono::steady_clock::now() - conn->up_since < config_.dial_backoff_max) {
    // Closed right after our hello: most likely the acceptor refused it (another cluster,
    // a removed member). Keep backing off as after a failed dial rather than redialing at
    // the minimum interval forever.
    p->backoff = std::max(p->backoff, conn->backoff_at_dial);
  }
  if (conn->connected) {
    // The acceptor's close can be seen before our own hello write completes.
    log_.Info("PeerDisconnected")
        .Field("peer", p->id)
        .Field("address", AddressText(p->address))
        .Field("reason", reason);
  } else {
    // A peer that is down fails every dial: say so once, not every backoff period.
    log_.Event(p->dial_failures_in_row == 0 ? Severity::kWarn : Severity::kDebug, "PeerDialFailed")
        .Field("peer", p->id)
        .Field("address", AddressText(p->address))
        .Field("reason", reason)
        .Field("failures", p->dial_failures_in_row + 1);
    ++p->dial_failures_in_row;
  }
  ScheduleRedial(p);
}

Nanos PeerTransport::Impl::NextBackoff(PeerOut& p) {
  // Equal jitter: somewhere in [backoff/2, backoff], never below the minimum, so that
  // members restarted together do not dial in lockstep.
  Nanos backoff = std::clamp(p.backoff, config_.dial_backoff_min, config_.dial_backoff_max);
  Nanos low = std::max(config_.dial_backoff_min, backoff / 2);
  std::uniform_int_distribution<int64_t> pick(low.count(), std::max(low, backoff).count());
  p.backoff = std::min(backoff * 2, config_.dial_backoff_max);
  return Nanos(pick(rng_));
}

void PeerTransport::Impl::ScheduleRedial(const std::shared_ptr<PeerOut>& p) {
  KEEL_ASSERT(p->conn == nullptr);
  uint64_t generation = ++p->redial_generation;
  p->redial_timer.expires_after(NextBackoff(*p));
  p->redial_timer.async_wait([this, alive = alive_, p, generation](const error_code& ec) {
    // A timer that fired just before a reschedule or an early dial has its completion
    // queued with success: the generation tells it apart.
    if (!*alive || ec || p->removed || p->redial_generation != generation) return;
    StartDial(p);
  });
}

void PeerTransport::Impl::SetPeer(NodeId id, PeerAddress address) {
  KEEL_ASSERT(!id.IsZero() && id != config_.self);
  auto it = peers_.find(id);
  if (it == peers_.end()) {
    AddPeer(id, std::move(address));
    return;
  }
  const std::shared_ptr<PeerOut>& p = it->second;
  if (p->address.host == address.host && p->address.port == address.port) return;
  log_.Info("PeerAddressChanged")
      .Field("peer", id)
      .Field("from", AddressText(p->address))
      .Field("to", AddressText(address));
  p->address = std::move(address);
  if (!p->in_use || !*alive_) return;
  error_code ignored;
  p->redial_timer.cancel(ignored);
  p->resolver.cancel();
  if (p->conn != nullptr) CloseOut(p, "address changed");
  p->redial_timer.cancel(ignored);
  p->backoff = config_.dial_backoff_min;
  StartDial(p);  // bumps the generation: the redial CloseOut scheduled is stale
}

void PeerTransport::Impl::RemovePeer(NodeId id) {
  auto it = peers_.find(id);
  if (it == peers_.end()) return;
  std::shared_ptr<PeerOut> p = it->second;
  peers_.erase(it);
  p->removed = true;  // every pending completion for it is now a no-op
  error_code ignored;
  p->redial_timer.cancel(ignored);
  p->resolver.cancel();
  stats_.dropped_frames += p->queue.size() + p->in_flight_frames();
  if (p->conn != nullptr) {
    p->conn->socket.close(ignored);
    p->conn.reset();
  }
  std::vector<std::shared_ptr<InConn>> from_removed;
  for (const auto& [serial, conn] : inbound_) {
    if (conn->hello_done && conn->from == id) from_removed.push_back(conn);
  }
  for (const auto& conn : from_removed) CloseIn(conn);
  log_.Info("PeerRemoved").Field("peer", id);
}

// ----- Inbound --------------------------------------------------------------------------

absl::Status PeerTransport::Impl::Listen(std::string_view host, uint16_t port) {
  if (!*alive_) return absl::FailedPreconditionError("peer transport is stopped");
  if (listening_) return absl::FailedPreconditionError("peer transport is already listening");
  std::string where = absl::StrCat(std::string(host), ":", port);
  error_code ec;
  asio::ip::address address = asio::ip::make_address(std::string(host), ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer listen address ", where, ": not a numeric IP address"));
  }
  tcp::endpoint endpoint(address, port);
  acceptor_.open(endpoint.protocol(), ec);
  // A restarted member must rebind its port while old connections sit in TIME_WAIT.
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  tcp::endpoint bound;
  if (!ec) bound = acceptor_.local_endpoint(ec);
  if (ec) {
    error_code ignored;
    acceptor_.close(ignored);
    std::string message = absl::StrCat("peer listen ", where, ": ", ec.message());
    if (ec == asio::error::address_in_use) return absl::UnavailableError(message);
    if (ec == asio::error::access_denied) return absl::PermissionDeniedError(message);
    if (ec == boost::system::errc::address_not_available)
      return absl::InvalidArgumentError(message);
    return absl::InternalError(message);
  }
  listening_ = true;
  port_ = bound.port();
  log_.Info("PeerListening").Field("address", EndpointText(bound));
  StartAccept();
  return absl::OkStatus();
}

void PeerTransport::Impl::StartAccept() {
  acceptor_.async_accept([this, alive = alive_](const error_code& ec, tcp::socket socket) {
    if (!*alive) return;
    if (ec) {
      log_.Warn("PeerAcceptFailed").Field("reason", ec.message());
      accept_retry_timer_.expires_after(kAcceptRetryDelay);
      accept_retry_timer_.async_wait([this, alive](const error_code& ec) {
        if (*alive && !ec) StartAccept();
      });
      return;
    }
    OnAccepted(std::move(socket));
    StartAccept();
  });
}

void PeerTransport::Impl::OnAccepted(tcp::socket socket) {
  error_code ec;
  tcp::endpoint remote = socket.remote_endpoint(ec);
  std::string remote_text = ec ? "?" : EndpointText(remote);
  if (inbound_.size() >= config_.inbound_connections_max) {
    ++stats_.rejected_connections;
    log_.Warn("PeerRejected")
        .Field("reason", "too many inbound connections")
        .Field("address", remote_text);
    socket.close(ec);
    return;
  }
  socket.set_option(tcp::no_delay(true), ec);
  auto conn = std::make_shared<InConn>(io_, std::move(socket), config_.frame_bytes_max);
  conn->serial = next_inbound_serial_++;
  conn->remote = std::move(remote_text);
  inbound_[conn->serial] = conn;
  log_.Debug("PeerInboundOpened").Field("address", conn->remote);
  // An idle unauthenticated connection would hold a descriptor and a slot forever.
  conn->hello_timer.expires_after(config_.hello_timeout);
  conn->hello_timer.async_wait([this, alive = alive_, conn](const error_code& ec) {
    if (!*alive || ec || conn->closed || conn->hello_done) return;
    Reject(conn, "no hello in time");
  });
  StartRead(conn);
}

void PeerTransport::Impl::StartRead(const std::shared_ptr<InConn>& conn) {
  conn->socket.async_read_some(asio::buffer(conn->buffer),
                               [this, alive = alive_, conn](const error_code& ec, size_t n) {
                                 if (!*alive || conn->closed) return;
                                 OnRead(conn, ec, n);
                               });
}

void PeerTransport::Impl::OnRead(const std::shared_ptr<InConn>& conn, const error_code& ec,
                                 size_t n) {
  if (ec) {
    std::string reason = ec == asio::error::eof ? "closed by peer" : ec.message();
    if (conn->hello_done) {
      log_.Info("PeerInboundClosed")
          .Field("peer", conn->from)
          .Field("address", conn->remote)
          .Field("reason", reason);
    }
    CloseIn(conn);
    return;
  }
  std::vector<std::string> frames;
  absl::Status decoded = conn->decoder.Feed(std::string_view(conn->buffer.data(), n), &frames);
  // A handler may call Stop() or even destroy the transport: hold our own token.
  std::shared_ptr<bool> alive = alive_;
  for (std::string& frame : frames) {
    if (!conn->hello_done) {
      if (!AcceptHello(conn, frame) || !*alive) return;
      continue;
    }
    ++stats_.received_frames;
    if (handlers_.message) handlers_.message(conn->from, std::move(frame));
    if (!*alive || conn->closed) return;
  }
  if (!decoded.ok()) {
    ++stats_.malformed_frames;
    log_.Warn("PeerFrameMalformed")
        .Field("reason", std::string(decoded.message()))
        .Field("peer", conn->from)
        .Field("address", conn->remote);
    CloseIn(conn);
    return;
  }
  StartRead(conn);
}

bool PeerTransport::Impl::AcceptHello(const std::shared_ptr<InConn>& conn,
                                      std::string_view payload) {
  absl::StatusOr<PeerHello> hello = DecodePeerHello(payload);
  std::string reason;
  if (!hello.ok()) {
    reason = std::string(hello.status().message());
  } else if (hello->cluster_id != config_.cluster_id) {
    reason =
        absl::StrCat("cluster id ", hello->cluster_id, " is not ours (", config_.cluster_id, ")");
  } else if (hello->to != config_.self) {
    reason = absl::StrCat("hello is for member ", hello->to.value, ", not for us (",
                          config_.self.value, ")");
  } else if (!peers_.contains(hello->from)) {
    reason = absl::StrCat("member ", hello->from.value, " is not a peer");
  }
  if (!reason.empty()) {
    Reject(conn, reason);
    return false;
  }
  conn->hello_done = true;
  conn->from = hello->from;
  error_code ignored;
  conn->hello_timer.cancel(ignored);
  // A peer that restarted or redialed dials anew; its old connection is dead or dying,
  // and two live ones would let its messages interleave out of order.
  std::vector<std::shared_ptr<InConn>> older;
  for (const auto& [serial, other] : inbound_) {
    if (other != conn && other->hello_done && other->from == conn->from) older.push_back(other);
  }
  for (const auto& other : older) {
    log_.Info("PeerInboundReplaced").Field("peer", other->from).Field("address", other->remote);
    CloseIn(other);
  }
  log_.Info("PeerAccepted").Field("peer", conn->from).Field("address", conn->remote);
  if (handlers_.hello) handlers_.hello(conn->from, std::move(hello->info));
  return true;
}

void PeerTransport::Impl::Reject(const std::shared_ptr<InConn>& conn, std::string_view reason) {
  ++stats_.rejected_connections;
  log_.Warn("PeerRejected").Field("reason", reason).Field("address", conn->remote);
  CloseIn(conn);
}

void PeerTransport::Impl::CloseIn(const std::shared_ptr<InConn>& conn) {
  if (conn->closed) return;
  conn->closed = true;
  inbound_.erase(conn->serial);
  error_code ignored;
  conn->hello_timer.cancel(ignored);
  conn->socket.shutdown(tcp::socket::shutdown_both, ignored);
  conn->socket.close(ignored);
}

void PeerTransport::Impl::Stop() {
  if (!*alive_) return;
  *alive_ = false;
  error_code ignored;
  acceptor_.close(ignored);
  accept_retry_timer_.cancel(ignored);
  for (const auto& [id, p] : peers_) {
    p->redial_timer.cancel(ignored);
    p->resolver.cancel();
    if (p->conn != nullptr) p->conn->socket.close(ignored);
    p->conn.reset();
  }
  std::map<uint64_t, std::shared_ptr<InConn>> inbound = std::move(inbound_);
  for (const auto& [serial, conn] : inbound) CloseIn(conn);
  log_.Info("PeerTransportStopped").Field("self", config_.self);
}

// ---------------------------------------------------------------------------------------
// PeerTransport

PeerTransport::PeerTransport(boost::asio::io_context& io, PeerTransportConfig config,
                             Handlers handlers, Logger log) {
  KEEL_ASSERT(!config.self.IsZero());
  KEEL_ASSERT(!config.peers.contains(config.self));
  KEEL_ASSERT(config.dial_backoff_min > Nanos(0));
  KEEL_ASSERT(config.dial_backoff_min <= config.dial_backoff_max);
  KEEL_ASSERT(config.frame_bytes_max > 0 && config.frame_bytes_max <= UINT32_MAX);
  std::map<NodeId, PeerAddress> peers = std::move(config.peers);
  config.peers.clear();
  impl_ = std::make_unique<Impl>(io, std::move(config), std::move(handlers), log);
  for (auto& [id, address] : peers) impl_->AddPeer(id, std::move(address));
}

PeerTransport::~PeerTransport() { impl_->Stop(); }

absl::Status PeerTransport::Listen(std::string_view host, uint16_t port) {
  return impl_->Listen(host, port);
}

uint16_t PeerTransport::port() const { return impl_->port_; }

void PeerTransport::Send(NodeId to, std::string bytes) { impl_->Send(to, std::move(bytes)); }

void PeerTransport::SetPeer(NodeId id, PeerAddress address) {
  impl_->SetPeer(id, std::move(address));
}

void PeerTransport::RemovePeer(NodeId id) { impl_->RemovePeer(id); }

void PeerTransport::Stop() { impl_->Stop(); }

void PeerTransport::DialAll() { impl_->DialAll(); }

PeerTransport::Stats PeerTransport::stats() const { return impl_->stats_; }

bool PeerTransport::Connected(NodeId peer) const {
  auto it = impl_->peers_.find(peer);
  return it != impl_->peers_.end() && it->second->conn != nullptr &&
         it->second->conn->hello_written;
}

}  // namespace keel::net
