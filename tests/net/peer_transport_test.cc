// PeerTransport over real loopback sockets, all in one io_context driven by this thread.
// Every wait is "run the io_context until a condition, or fail at a deadline": no sleeps.

#include "net/peer_transport.h"

#include <array>
#include <boost/asio.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace keel::net {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using ::testing::HasSubstr;

constexpr auto kDeadline = std::chrono::seconds(10);
constexpr uint64_t kClusterId = 7;
constexpr char kLoopback[] = "127.0.0.1";

// Runs `io` until `done()` holds or the deadline passes; returns done(). Each turn runs
// one ready handler or waits up to 10 ms for one.
bool RunUntil(asio::io_context& io, const std::function<bool()>& done,
              std::chrono::nanoseconds timeout = kDeadline) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    if (io.stopped()) io.restart();
    io.run_one_for(std::chrono::milliseconds(10));
  }
  return true;
}

class RecordingSink : public LogSink {
 public:
  void Write(Severity severity, std::string_view name, std::string_view fields) override {
    lines.push_back(std::string(SeverityName(severity)) + " " + std::string(name) +
                    std::string(fields));
  }
  // Whether some event line contains both `name` and `fragment`.
  bool Has(std::string_view name, std::string_view fragment = "") const {
    for (const std::string& line : lines) {
      if (line.find(name) != std::string::npos && line.find(fragment) != std::string::npos) {
        return true;
      }
    }
    return false;
  }
  std::vector<std::string> lines;
};

PeerAddress Local(uint16_t port) { return {.host = kLoopback, .port = port}; }

// A port nothing listens on right now (bound once by the kernel's choice, then freed).
uint16_t UnusedPort() {
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address(kLoopback), 0));
  return acceptor.local_endpoint().port();
}

PeerTransportConfig Config(uint64_t self, std::map<NodeId, PeerAddress> peers = {}) {
  return {.cluster_id = kClusterId,
          .self = NodeId(self),
          .peers = std::move(peers),
          .hello_info = "info-" + std::to_string(self),
          .dial_backoff_min = Millis(10),
          .dial_backoff_max = Millis(100)};
}

// One cluster member: a transport plus everything its handlers saw.
class Member {
 public:
  Member(asio::io_context& io, PeerTransportConfig config) {
    PeerTransport::Handlers handlers{
        .message =
            [this](NodeId from, std::string bytes) {
              messages.emplace_back(from, std::move(bytes));
              if (on_message) on_message();
            },
        .hello = [this](NodeId from, std::string info) { hellos.emplace_back(from, info); }};
    transport = std::make_unique<PeerTransport>(io, std::move(config), std::move(handlers),
                                                Logger(&log, Severity::kDebug));
  }
  // Listens on an ephemeral loopback port and returns it.
  uint16_t Listen() {
    absl::Status status = transport->Listen(kLoopback, 0);
    EXPECT_TRUE(status.ok()) << status;
    return transport->port();
  }
  std::vector<std::string> MessagesFrom(NodeId from) const {
    std::vector<std::string> out;
    for (const auto& [who, bytes] : messages) {
      if (who == from) out.push_back(bytes);
    }
    return out;
  }

  RecordingSink log;  // outlives the transport, which logs while stopping
  std::vector<std::pair<NodeId, std::string>> messages;
  std::vector<std::pair<NodeId, std::string>> hellos;
  std::function<void()> on_message;
  std::unique_ptr<PeerTransport> transport;  // last: destroyed first
};

std::vector<std::string> Numbered(std::string_view prefix, int count) {
  std::vector<std::string> out;
  for (int k = 0; k < count; ++k) out.push_back(std::string(prefix) + std::to_string(k));
  return out;
}

// ----- FrameDecoder and hello encoding (no sockets) -------------------------------------

std::string Framed(std::string_view payload) {
  std::string out;
  AppendFrame(&out, payload);
  return out;
}

std::string LengthPrefix(uint32_t length) {
  std::string out(4, '\0');
  for (int k = 0; k < 4; ++k) out[k] = static_cast<char>(length >> (8 * k));
  return out;
}

TEST(PeerTransportFrameDecoder, WholeFrameIsDecoded) {
  FrameDecoder decoder(1024);
  std::vector<std::string> frames;
  ASSERT_TRUE(decoder.Feed(Framed("hello"), &frames).ok());
  EXPECT_THAT(frames, ::testing::ElementsAre("hello"));
  EXPECT_EQ(decoder.buffered_bytes(), 0u);
}

TEST(PeerTransportFrameDecoder, FrameArrivingOneByteAtATimeIsReassembled) {
  FrameDecoder decoder(1024);
  std::string stream = Framed("split across many reads");
  std::vector<std::string> frames;
  for (size_t k = 0; k < stream.size(); ++k) {
    ASSERT_TRUE(decoder.Feed(stream.substr(k, 1), &frames).ok());
    if (k + 1 < stream.size()) {
      EXPECT_TRUE(frames.empty());
      EXPECT_EQ(decoder.buffered_bytes(), k + 1);
    }
  }
  EXPECT_THAT(frames, ::testing::ElementsAre("split across many reads"));
  EXPECT_EQ(decoder.buffered_bytes(), 0u);
}

TEST(PeerTransportFrameDecoder, SeveralFramesInOneChunkAreAllDecodedAndATailIsKept) {
  FrameDecoder decoder(1024);
  std::string tail = Framed("third");
  std::string chunk = Framed("first") + Framed("second") + tail.substr(0, 6);
  std::vector<std::string> frames;
  ASSERT_TRUE(decoder.Feed(chunk, &frames).ok());
  EXPECT_THAT(frames, ::testing::ElementsAre("first", "second"));
  EXPECT_EQ(decoder.buffered_bytes(), 6u);
  ASSERT_TRUE(decoder.Feed(tail.substr(6), &frames).ok());
  EXPECT_THAT(frames, ::testing::ElementsAre("first", "second", "third"));
}

TEST(PeerTransportFrameDecoder, ZeroLengthFrameIsAnError) {
  FrameDecoder decoder(1024);
  std::vector<std::string> frames;
  absl::Status status = decoder.Feed(Framed("ok") + LengthPrefix(0), &frames);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(frames, ::testing::ElementsAre("ok"));  // frames before the error still count
}

TEST(PeerTransportFrameDecoder, OversizedLengthIsAnErrorBeforeTheBodyArrives) {
  FrameDecoder decoder(1024);
  std::vector<std::string> frames;
  absl::Status status = decoder.Feed(LengthPrefix(1025), &frames);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(status.message()), HasSubstr("1025"));
  // The decoder is dead from then on, whatever comes next.
  EXPECT_FALSE(decoder.Feed(Framed("x"), &frames).ok());
  EXPECT_TRUE(frames.empty());
}

TEST(PeerTransportFrameDecoder, FrameExactlyAtTheLimitIsAccepted) {
  FrameDecoder decoder(8);
  std::vector<std::string> frames;
  ASSERT_TRUE(decoder.Feed(Framed("12345678"), &frames).ok());
  EXPECT_THAT(frames, ::testing::ElementsAre("12345678"));
}

TEST(PeerTransportHello, RoundTripsAndRejectsBadMagicVersionAndShortInput) {
  std::string encoded =
      EncodePeerHello({.cluster_id = 9, .from = NodeId(2), .to = NodeId(5), .info = "peer-urls"});
  ASSERT_EQ(encoded.size(), kPeerHelloFixedBytes + 9);
  absl::StatusOr<PeerHello> decoded = DecodePeerHello(encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->cluster_id, 9u);
  EXPECT_EQ(decoded->from, NodeId(2));
  EXPECT_EQ(decoded->to, NodeId(5));
  EXPECT_EQ(decoded->info, "peer-urls");

  std::string bad_magic = encoded;
  bad_magic[0] = 'X';
  EXPECT_FALSE(DecodePeerHello(bad_magic).ok());
  std::string bad_version = encoded;
  bad_version[4] = 2;
  EXPECT_THAT(std::string(DecodePeerHello(bad_version).status().message()), HasSubstr("version 2"));
  EXPECT_FALSE(DecodePeerHello(encoded.substr(0, kPeerHelloFixedBytes - 1)).ok());
}

// ----- Two transports ------------------------------------------------------------------

TEST(PeerTransport, MessagesFlowBothWaysInOrderAndTheHelloCarriesTheInfo) {
  asio::io_context io;
  Member a(io, Config(1));
  Member b(io, Config(2));
  uint16_t a_port = a.Listen();
  uint16_t b_port = b.Listen();
  a.transport->SetPeer(NodeId(2), Local(b_port));
  b.transport->SetPeer(NodeId(1), Local(a_port));

  std::vector<std::string> to_b = Numbered("a->b ", 3000);
  std::vector<std::string> to_a = Numbered("b->a ", 3000);
  for (const std::string& m : to_b) a.transport->Send(NodeId(2), m);
  for (const std::string& m : to_a) b.transport->Send(NodeId(1), m);
  std::string big(1 << 20, 'x');  // spans many reads on the receiving side
  big.back() = 'y';
  a.transport->Send(NodeId(2), big);
  to_b.push_back(big);

  ASSERT_TRUE(RunUntil(
      io, [&] { return b.messages.size() == to_b.size() && a.messages.size() == to_a.size(); }))
      << "b got " << b.messages.size() << ", a got " << a.messages.size();
  EXPECT_EQ(b.MessagesFrom(NodeId(1)), to_b);
  EXPECT_EQ(a.MessagesFrom(NodeId(2)), to_a);
  ASSERT_THAT(b.hellos, ::testing::ElementsAre(std::make_pair(NodeId(1), "info-1")));
  ASSERT_THAT(a.hellos, ::testing::ElementsAre(std::make_pair(NodeId(2), "info-2")));
  EXPECT_TRUE(a.transport->Connected(NodeId(2)));
  EXPECT_TRUE(b.transport->Connected(NodeId(1)));
  EXPECT_EQ(a.transport->stats().sent_frames, to_b.size());
  EXPECT_EQ(b.transport->stats().received_frames, to_b.size());
  EXPECT_EQ(a.transport->stats().dropped_frames, 0u);
  EXPECT_TRUE(a.log.Has("PeerConnected", "peer=2"));
}

TEST(PeerTransport, MessagesSentBeforeThePeerListensArriveOnceItDoes) {
  asio::io_context io;
  uint16_t b_port = UnusedPort();
  Member a(io, Config(1, {{NodeId(2), Local(b_port)}}));
  std::vector<std::string> sent = Numbered("early ", 10);
  for (const std::string& m : sent) a.transport->Send(NodeId(2), m);
  // Several refused dials, so the backoff has really been exercised.
  ASSERT_TRUE(RunUntil(io, [&] { return a.log.Has("PeerDialFailed", "failures=3"); }));
  EXPECT_FALSE(a.transport->Connected(NodeId(2)));

  Member b(io, Config(2, {{NodeId(1), Local(1)}}));  // b never dials a here
  ASSERT_TRUE(b.transport->Listen(kLoopback, b_port).ok());
  ASSERT_TRUE(RunUntil(io, [&] { return b.messages.size() == sent.size(); }));
  EXPECT_EQ(b.MessagesFrom(NodeId(1)), sent);
  EXPECT_TRUE(a.transport->Connected(NodeId(2)));
  EXPECT_EQ(a.transport->stats().dropped_frames, 0u);
}

TEST(PeerTransport, RestartedPeerOnTheSamePortGetsLaterMessages) {
  asio::io_context io;
  Member a(io, Config(1));
  uint16_t a_port = a.Listen();
  auto b = std::make_unique<Member>(io, Config(2, {{NodeId(1), Local(a_port)}}));
  uint16_t b_port = b->Listen();
  a.transport->SetPeer(NodeId(2), Local(b_port));

  a.transport->Send(NodeId(2), "before");
  ASSERT_TRUE(RunUntil(io, [&] { return b->messages.size() == 1; }));
  b.reset();  // the member process dies without a word
  // a notices the closed connection by itself (it keeps a read pending), before sending.
  ASSERT_TRUE(RunUntil(io, [&] { return !a.transport->Connected(NodeId(2)); }));
  EXPECT_TRUE(a.log.Has("PeerDisconnected", "peer=2"));

  Member b2(io, Config(2, {{NodeId(1), Local(a_port)}}));
  ASSERT_TRUE(b2.transport->Listen(kLoopback, b_port).ok());
  std::vector<std::string> later = Numbered("after ", 20);
  for (const std::string& m : later) a.transport->Send(NodeId(2), m);
  ASSERT_TRUE(RunUntil(io, [&] { return b2.messages.size() == later.size(); }));
  EXPECT_EQ(b2.MessagesFrom(NodeId(1)), later);
  EXPECT_THAT(b2.hellos, ::testing::ElementsAre(std::make_pair(NodeId(1), "info-1")));
}

TEST(PeerTransport, ListeningOnAPortInUseFailsWithAClearError) {
  asio::io_context io;
  Member a(io, Config(1));
  uint16_t port = a.Listen();
  Member b(io, Config(2));
  absl::Status status = b.transport->Listen(kLoopback, port);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()), HasSubstr("in use"));
  EXPECT_EQ(b.transport->Listen("not-an-ip", 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.transport->Listen(kLoopback, 0).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(PeerTransport, QueueBoundsDropAndCountMessagesBeyondTheLimit) {
  asio::io_context io;
  PeerTransportConfig config =
      Config(1, {{NodeId(2), Local(UnusedPort())}, {NodeId(3), Local(UnusedPort())}});
  config.queue_messages_max = 8;
  config.queue_bytes_max = 100;
  Member a(io, std::move(config));
  for (int k = 0; k < 20; ++k) a.transport->Send(NodeId(2), "m");
  EXPECT_EQ(a.transport->stats().dropped_frames, 12u);
  for (int k = 0; k < 3; ++k) a.transport->Send(NodeId(3), std::string(40, 'b'));
  EXPECT_EQ(a.transport->stats().dropped_frames, 13u);  // 40 + 40 fit in 100, 120 not
  // Nor do unknown peers, self, empty or oversized messages get queued.
  a.transport->Send(NodeId(9), "m");
  a.transport->Send(NodeId(1), "m");
  a.transport->Send(NodeId(2), "");
  EXPECT_EQ(a.transport->stats().dropped_frames, 16u);
  EXPECT_TRUE(a.log.Has("PeerSendDropped", "queue full (messages)"));
  EXPECT_TRUE(a.log.Has("PeerSendDropped", "queue full (bytes)"));

  // Refused dials keep what is queued: no more drops while the peers are down.
  ASSERT_TRUE(RunUntil(io, [&] { return a.log.Has("PeerDialFailed", "failures=2"); }));
  EXPECT_EQ(a.transport->stats().dropped_frames, 16u);
  EXPECT_EQ(a.transport->stats().sent_frames, 0u);
}

TEST(PeerTransport, StopSilencesHandlersAndSendDrops) {
  asio::io_context io;
  Member a(io, Config(1));
  Member b(io, Config(2));
  uint16_t a_port = a.Listen();
  a.transport->SetPeer(NodeId(2), Local(b.Listen()));
  b.transport->SetPeer(NodeId(1), Local(a_port));
  b.transport->Send(NodeId(1), "first");
  ASSERT_TRUE(RunUntil(io, [&] { return a.messages.size() == 1; }));

  for (int k = 0; k < 10; ++k) b.transport->Send(NodeId(1), "late");
  a.transport->Stop();
  a.transport->Stop();  // idempotent
  // b sees its connection closed and its redials refused; a hears none of it.
  ASSERT_TRUE(RunUntil(io, [&] { return b.log.Has("PeerDialFailed", "peer=1"); }));
  EXPECT_EQ(a.messages.size(), 1u);
  a.transport->Send(NodeId(2), "after stop");
  EXPECT_EQ(a.transport->stats().dropped_frames, 1u);
  EXPECT_FALSE(a.transport->Connected(NodeId(2)));
}

TEST(PeerTransport, StopFromInsideAMessageHandlerDeliversNothingMore) {
  asio::io_context io;
  Member a(io, Config(1));
  Member b(io, Config(2));
  uint16_t a_port = a.Listen();
  a.transport->SetPeer(NodeId(2), Local(b.Listen()));
  b.transport->SetPeer(NodeId(1), Local(a_port));
  a.on_message = [&] { a.transport->Stop(); };
  // Queued before the connection is up, so they leave in one write and mostly arrive in
  // one read: the rest of that read must not be delivered.
  for (const std::string& m : Numbered("m", 50)) b.transport->Send(NodeId(1), m);
  ASSERT_TRUE(RunUntil(io, [&] { return b.log.Has("PeerDisconnected", "peer=1"); }))
      << ::testing::PrintToString(b.log.lines) << ::testing::PrintToString(a.log.lines);
  EXPECT_EQ(a.messages.size(), 1u);
}

TEST(PeerTransport, DestroyingWithoutStopWhileConnectionsAreBusyIsSafe) {
  asio::io_context io;
  auto a = std::make_unique<Member>(io, Config(1));
  Member b(io, Config(2));
  uint16_t a_port = a->Listen();
  uint16_t b_port = b.Listen();
  a->transport->SetPeer(NodeId(2), Local(b_port));
  b.transport->SetPeer(NodeId(1), Local(a_port));
  a->transport->Send(NodeId(2), "hi");
  ASSERT_TRUE(RunUntil(io, [&] { return b.messages.size() == 1; }));
  // Writes, reads, timers and dials of a are all pending when it goes.
  for (int k = 0; k < 100; ++k) a->transport->Send(NodeId(2), std::string(1000, 'z'));
  for (int k = 0; k < 100; ++k) b.transport->Send(NodeId(1), "to a");
  a.reset();
  // b's dial to a was under way; it fails now, and keeps failing.
  ASSERT_TRUE(RunUntil(io, [&] { return b.log.Has("PeerDialFailed", "peer=1"); }));
  EXPECT_FALSE(b.transport->Connected(NodeId(1)));
}

TEST(PeerTransport, RemovedPeerIsNoLongerSentToNorAccepted) {
  asio::io_context io;
  Member a(io, Config(1));
  Member b(io, Config(2));
  uint16_t a_port = a.Listen();
  uint16_t b_port = b.Listen();
  a.transport->SetPeer(NodeId(2), Local(b_port));
  b.transport->SetPeer(NodeId(1), Local(a_port));
  b.transport->Send(NodeId(1), "hi");
  ASSERT_TRUE(RunUntil(io, [&] { return a.messages.size() == 1; }));

  a.transport->RemovePeer(NodeId(2));
  a.transport->Send(NodeId(2), "gone");
  EXPECT_EQ(a.transport->stats().dropped_frames, 1u);
  // b redials, and a now refuses its hello.
  b.transport->Send(NodeId(1), "ignored");
  ASSERT_TRUE(RunUntil(io, [&] { return a.transport->stats().rejected_connections >= 1; }));
  EXPECT_TRUE(a.log.Has("PeerRejected", "member 2 is not a peer"));
  EXPECT_EQ(a.messages.size(), 1u);
}

// ----- Bad connections next to a good peer ---------------------------------------------

// A raw client socket in the test's io_context, playing a broken or hostile dialer.
class RawClient {
 public:
  RawClient(asio::io_context& io, uint16_t port) : io_(io), socket_(io) {
    error_code ec;
    // The kernel completes the handshake from the listen backlog: no need to run io.
    socket_.connect(tcp::endpoint(asio::ip::make_address(kLoopback), port), ec);
    EXPECT_FALSE(ec) << ec.message();
    socket_.async_read_some(asio::buffer(buffer_), [this](const error_code& ec, size_t n) {
      done_ = true;
      closed_ = ec == asio::error::eof || ec == asio::error::connection_reset;
      bytes_read_ = n;
    });
  }
  void Write(std::string_view bytes) {
    error_code ec;
    asio::write(socket_, asio::buffer(bytes), ec);  // small: fits the socket buffer
    EXPECT_FALSE(ec) << ec.message();
  }
  // Runs io until the transport closes this connection; false if it never does (or
  // wrote to us, which an acceptor must not).
  bool RunUntilClosedByPeer() {
    return RunUntil(io_, [&] { return done_; }) && closed_ && bytes_read_ == 0;
  }
  bool closed() const { return done_; }

 private:
  asio::io_context& io_;
  tcp::socket socket_;
  std::array<char, 64> buffer_;
  bool done_ = false;
  bool closed_ = false;
  size_t bytes_read_ = 0;
};

std::string HelloFrame(uint64_t cluster_id, uint64_t from, uint64_t to) {
  return Framed(EncodePeerHello(
      {.cluster_id = cluster_id, .from = NodeId(from), .to = NodeId(to), .info = "raw"}));
}

// a (member 1) knows members 2 (b, a real transport) and 3 (played by raw sockets, so that
// b's own inbound connection is never replaced by a test's hello).
class PeerTransportRejects : public ::testing::Test {
 protected:
  void SetUp() override {
    PeerTransportConfig config = Config(1);
    config.frame_bytes_max = 1024;
    config.hello_timeout = Millis(200);
    a_ = std::make_unique<Member>(io_, std::move(config));
    b_ = std::make_unique<Member>(io_, Config(2));
    a_port_ = a_->Listen();
    uint16_t b_port = b_->Listen();
    a_->transport->SetPeer(NodeId(2), Local(b_port));
    a_->transport->SetPeer(NodeId(3), Local(UnusedPort()));
    b_->transport->SetPeer(NodeId(1), Local(a_port_));
    b_->transport->Send(NodeId(1), "warm up");
    ASSERT_TRUE(RunUntil(io_, [&] { return a_->messages.size() == 1; }));
  }

  // The bad connection harmed nothing else: b's connection is the same one, and its
  // messages still arrive.
  void ExpectTheGoodPeerStillDelivers() {
    size_t before = a_->messages.size();
    b_->transport->Send(NodeId(1), "still here");
    ASSERT_TRUE(RunUntil(io_, [&] { return a_->messages.size() == before + 1; }));
    EXPECT_EQ(a_->messages.back(), std::make_pair(NodeId(2), std::string("still here")));
    EXPECT_FALSE(b_->log.Has("PeerDisconnected"));
    EXPECT_EQ(b_->transport->stats().dropped_frames, 0u);
  }

  PeerTransport::Stats AStats() const { return a_->transport->stats(); }

  asio::io_context io_;
  std::unique_ptr<Member> a_;
  std::unique_ptr<Member> b_;
  uint16_t a_port_ = 0;
};

TEST_F(PeerTransportRejects, HelloWithAnotherClusterIdClosesThatConnection) {
  RawClient raw(io_, a_port_);
  raw.Write(HelloFrame(kClusterId + 1, 3, 1));
  ASSERT_TRUE(raw.RunUntilClosedByPeer());
  EXPECT_EQ(AStats().rejected_connections, 1u);
  EXPECT_TRUE(a_->log.Has("WARN PeerRejected", "cluster id 8 is not ours"));
  ExpectTheGoodPeerStillDelivers();
}

TEST_F(PeerTransportRejects, HelloAddressedToAnotherMemberClosesThatConnection) {
  RawClient raw(io_, a_port_);
  raw.Write(HelloFrame(kClusterId, 3, 9));
  ASSERT_TRUE(raw.RunUntilClosedByPeer());
  EXPECT_EQ(AStats().rejected_connections, 1u);
  EXPECT_TRUE(a_->log.Has("PeerRejected", "hello is for member 9"));
  ExpectTheGoodPeerStillDelivers();
}

TEST_F(PeerTransportRejects, HelloFromAnUnknownMemberClosesThatConnection) {
  RawClient raw(io_, a_port_);
  raw.Write(HelloFrame(kClusterId, 42, 1) + Framed("sneaky"));
  ASSERT_TRUE(raw.RunUntilClosedByPeer());
  EXPECT_EQ(AStats().rejected_connections, 1u);
  EXPECT_TRUE(a_->log.Has("PeerRejected", "member 42 is not a peer"));
  EXPECT_EQ(a_->messages.size(), 1u);  // the frame after the bad hello was not delivered
  ExpectTheGoodPeerStillDelivers();
}

TEST_F(PeerTransportRejects, GarbageBytesCloseThatConnectionAsMalformed) {
  RawClient raw(io_, a_port_);
  // Read as a length prefix, "GET " is about 540 MB.
  raw.Write("GET / HTTP/1.1\r\nHost: keel\r\n\r\n");
  ASSERT_TRUE(raw.RunUntilClosedByPeer());
  EXPECT_EQ(AStats().malformed_frames, 1u);
  EXPECT_TRUE(a_->log.Has("PeerFrameMalformed", "above the limit of 1024"));
  ExpectTheGoodPeerStillDelivers();
}

TEST_F(PeerTransportRejects, GarbageFrameInPlaceOfTheHelloClosesThatConnection) {
  RawClient raw(io_, a_port_);
  raw.Write(Framed("definitely not a hello, but long enough to be one"));
  ASSERT_TRUE(raw.RunUntilClosedByPeer());
  EXPECT_EQ(AStats().rejected_connections, 1u);
  EXPECT_TRUE(a_->log.Has("PeerRejected", "magic"));
  ExpectTheGoodPeerStillDelivers();
}

TEST_F(PeerTransportRejects, OversizedFrameAfterAGoodHelloClosesThatConnection) {
  RawClient raw(io_, a_port_);
  // Only the prefix is sent: the transport must not wait for 1025 bytes of body.
  raw.Write(HelloFrame(kClusterId, 3, 1) + Framed("fine") + LengthPrefix(1025));
  ASSERT_TRUE(raw.RunUntilClosedByPeer());
  EXPECT_EQ(AStats().malformed_frames, 1u);
  EXPECT_EQ(a_->MessagesFrom(NodeId(3)), std::vector<std::string>{"fine"});
  EXPECT_TRUE(a_->log.Has("PeerFrameMalformed", "peer=3"));
  ExpectTheGoodPeerStillDelivers();
}

TEST_F(PeerTransportRejects, ZeroLengthFrameClosesThatConnection) {
  RawClient raw(io_, a_port_);
  raw.Write(HelloFrame(kClusterId, 3, 1) + LengthPrefix(0));
  ASSERT_TRUE(raw.RunUntilClosedByPeer());
  EXPECT_EQ(AStats().malformed_frames, 1u);
  EXPECT_TRUE(a_->log.Has("PeerFrameMalformed", "zero-length"));
  ExpectTheGoodPeerStillDelivers();
}

TEST_F(PeerTransportRejects, ConnectionWithoutAHelloIsClosedAfterTheHelloTimeout) {
  RawClient raw(io_, a_port_);
  raw.Write(std::string_view("\x40\x00", 2));  // half a length prefix, then silence
  ASSERT_TRUE(raw.RunUntilClosedByPeer());
  EXPECT_EQ(AStats().rejected_connections, 1u);
  EXPECT_TRUE(a_->log.Has("PeerRejected", "no hello in time"));
  ExpectTheGoodPeerStillDelivers();
}

TEST_F(PeerTransportRejects, NewerConnectionFromTheSamePeerReplacesTheOlder) {
  RawClient first(io_, a_port_);
  first.Write(HelloFrame(kClusterId, 3, 1));
  ASSERT_TRUE(RunUntil(io_, [&] { return a_->hellos.size() == 2; }));  // b's, then 3's
  RawClient second(io_, a_port_);
  second.Write(HelloFrame(kClusterId, 3, 1) + Framed("from the newer one"));
  ASSERT_TRUE(first.RunUntilClosedByPeer());
  ASSERT_TRUE(RunUntil(io_, [&] { return a_->MessagesFrom(NodeId(3)).size() == 1; }));
  EXPECT_EQ(a_->MessagesFrom(NodeId(3)), std::vector<std::string>{"from the newer one"});
  EXPECT_FALSE(second.closed());
  EXPECT_TRUE(a_->log.Has("PeerInboundReplaced", "peer=3"));
  EXPECT_EQ(AStats().rejected_connections, 0u);
  ExpectTheGoodPeerStillDelivers();
}

}  // namespace
}  // namespace keel::net
