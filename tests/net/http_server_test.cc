#include "net/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "net/metrics.h"

namespace keel::net {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Every test finishes well inside this; a hang fails the test instead of the run.
constexpr auto kTestDeadline = 10s;
// The raw client's socket timeout: a blocking read never outlives it.
constexpr int kClientTimeoutSeconds = 5;

struct RawResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lowercased
  std::string body;
};

// A blocking HTTP client on plain sockets, independent of Beast, so that the tests check
// the bytes on the wire. Used on the client thread only.
class RawClient {
 public:
  explicit RawClient(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval timeout{.tv_sec = kClientTimeoutSeconds, .tv_usec = 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~RawClient() { ::close(fd_); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // One response; nullopt if the connection closes or times out first. A HEAD response
  // has a Content-Length but no body.
  std::optional<RawResponse> ReadResponse(bool head = false) {
    size_t header_end;
    while ((header_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return std::nullopt;
    }
    RawResponse response;
    const std::string header = buffer_.substr(0, header_end);
    if (header.size() < 12 || header.compare(0, 5, "HTTP/") != 0) return std::nullopt;
    response.status = std::stoi(header.substr(9, 3));
    size_t line_start = header.find("\r\n");
    while (line_start != std::string::npos) {
      line_start += 2;
      const size_t line_end = std::min(header.find("\r\n", line_start), header.size());
      const std::string line = header.substr(line_start, line_end - line_start);
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return std::tolower(c); });
        response.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
      }
      line_start = line_end < header.size() ? line_end : std::string::npos;
    }
    const size_t body_start = header_end + 4;
    const size_t length = head || !response.headers.contains("content-length")
                              ? 0
                              : std::stoul(response.headers["content-length"]);
    while (buffer_.size() < body_start + length) {
      if (!Fill()) return std::nullopt;
    }
    response.body = buffer_.substr(body_start, length);
    buffer_.erase(0, body_start + length);
    return response;
  }

  // Reads (and drops) until the server closes the connection: true on EOF or reset,
  // false if the socket timeout passes first.
  bool WaitUntilClosed() {
    char chunk[4096];
    while (true) {
      const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }

  // Whatever arrived but was not read as a response.
  const std::string& unread() const { return buffer_; }

 private:
  bool Fill() {
    char chunk[4096];
    const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buffer_;
};

std::string Get(std::string_view target, std::string_view extra_headers = "") {
  return "GET " + std::string(target) + " HTTP/1.1\r\nHost: test\r\n" + std::string(extra_headers) +
         "\r\n";
}

class EventRecorder : public LogSink {
 public:
  void Write(Severity severity, std::string_view name, std::string_view fields) override {
    events_.push_back(std::string(name));
  }
  bool Saw(std::string_view name) const {
    return std::find(events_.begin(), events_.end(), name) != events_.end();
  }

 private:
  std::vector<std::string> events_;
};

class HttpServerTest : public ::testing::Test {
 protected:
  // Answers /metrics, /health and /throw; anything else is 404. Records what it saw.
  HttpResponse Handle(std::string_view method, std::string_view target) {
    ++handler_calls_;
    last_method_ = std::string(method);
    connections_seen_max_ = std::max(connections_seen_max_, server_->connection_count());
    if (target == "/metrics") {
      return {
          .status = 200, .content_type = std::string(kMetricsContentType), .body = "keel_up 1\n"};
    }
    if (target == "/health") {
      return {.status = 200, .content_type = "application/json", .body = "{\"health\":\"true\"}"};
    }
    if (target == "/throw") throw std::runtime_error("handler bug");
    return {.status = 404, .body = "not found\n"};
  }

  void StartServer(HttpServerConfig config = {}) {
    server_ = std::make_unique<HttpServer>(
        io_, [this](std::string_view m, std::string_view t) { return Handle(m, t); },
        Logger(&events_, Severity::kDebug), config);
    const absl::Status status = server_->Listen("127.0.0.1", 0);
    ASSERT_TRUE(status.ok()) << status;
    ASSERT_NE(server_->port(), 0);
  }

  // Runs `client` on a second thread while this thread runs the io_context (the server's
  // thread), until the client returns; its result is returned.
  template <typename ClientFn>
  auto WithClient(ClientFn client) {
    auto result = std::async(std::launch::async, std::move(client));
    const auto deadline = Clock::now() + kTestDeadline;
    while (result.wait_for(0s) != std::future_status::ready) {
      if (Clock::now() > deadline) {
        ADD_FAILURE() << "the client did not finish by the deadline";
        break;
      }
      RunFor(2ms);
    }
    return result.get();  // the client's socket timeouts bound this wait
  }

  void RunFor(std::chrono::milliseconds d) {
    io_.restart();  // run_for returns for good once the io_context runs out of work
    io_.run_for(d);
  }

  boost::asio::io_context io_;
  EventRecorder events_;
  std::unique_ptr<HttpServer> server_;
  int handler_calls_ = 0;
  std::string last_method_;
  size_t connections_seen_max_ = 0;
};

TEST_F(HttpServerTest, GetMetricsReturnsTheHandlersStatusAndBodyWithContentLength) {
  StartServer();
  const uint16_t port = server_->port();
  auto [metrics, missing] = WithClient([port] {
    RawClient client(port);
    client.Send(Get("/metrics"));
    auto metrics = client.ReadResponse();
    client.Send(Get("/no/such/path"));
    return std::pair(metrics, client.ReadResponse());
  });
  ASSERT_TRUE(metrics.has_value());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->body, "keel_up 1\n");
  EXPECT_EQ(metrics->headers["content-length"], "10");
  EXPECT_EQ(metrics->headers["content-type"], kMetricsContentType);
  EXPECT_EQ(metrics->headers["server"], "keel");
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(missing->body, "not found\n");
  EXPECT_EQ(handler_calls_, 2);
  EXPECT_EQ(last_method_, "GET");
}

TEST_F(HttpServerTest, TwoRequestsShareOneKeepAliveConnection) {
  StartServer();
  const uint16_t port = server_->port();
  auto [first, second] = WithClient([port] {
    RawClient client(port);
    client.Send(Get("/metrics"));
    auto first = client.ReadResponse();
    client.Send(Get("/health"));
    return std::pair(first, client.ReadResponse());
  });
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(first->body, "keel_up 1\n");
  EXPECT_EQ(second->body, "{\"health\":\"true\"}");
  EXPECT_EQ(second->headers["content-type"], "application/json");
  EXPECT_FALSE(first->headers.contains("connection"));  // HTTP/1.1: keep-alive by default
  EXPECT_EQ(connections_seen_max_, 1u);
}

TEST_F(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  StartServer();
  const uint16_t port = server_->port();
  auto responses = WithClient([port] {
    RawClient client(port);
    client.Send(Get("/health") + Get("/metrics") + Get("/nope"));
    std::vector<std::optional<RawResponse>> responses;
    for (int i = 0; i < 3; ++i) responses.push_back(client.ReadResponse());
    return responses;
  });
  ASSERT_TRUE(responses[0] && responses[1] && responses[2]);
  EXPECT_EQ(responses[0]->body, "{\"health\":\"true\"}");
  EXPECT_EQ(responses[1]->body, "keel_up 1\n");
  EXPECT_EQ(responses[2]->status, 404);
}

TEST_F(HttpServerTest, ConnectionCloseIsHonouredAndHttp10ClosesByDefault) {
  StartServer();
  const uint16_t port = server_->port();
  auto [http11_close, http10] = WithClient([port] {
    RawClient first(port);
    first.Send(Get("/health", "Connection: close\r\n"));
    const bool http11_close = first.ReadResponse().has_value() && first.WaitUntilClosed();
    RawClient second(port);
    second.Send("GET /health HTTP/1.0\r\n\r\n");
    const bool http10 = second.ReadResponse().has_value() && second.WaitUntilClosed();
    return std::pair(http11_close, http10);
  });
  EXPECT_TRUE(http11_close);
  EXPECT_TRUE(http10);
}

TEST_F(HttpServerTest, GarbageRequestGets400AndTheNextConnectionStillWorks) {
  StartServer();
  const uint16_t port = server_->port();
  auto [rejected, closed, next] = WithClient([port] {
    RawClient garbage(port);
    garbage.Send("\x16\x03\x01 this is not HTTP at all\r\n\r\n");
    auto rejected = garbage.ReadResponse();
    const bool closed = garbage.WaitUntilClosed();
    RawClient client(port);
    client.Send(Get("/metrics"));
    return std::tuple(rejected, closed, client.ReadResponse());
  });
  ASSERT_TRUE(rejected.has_value());
  EXPECT_EQ(rejected->status, 400);
  EXPECT_EQ(rejected->headers["connection"], "close");
  EXPECT_TRUE(closed);
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->status, 200);
  EXPECT_EQ(handler_calls_, 1);  // the garbage never reached the handler
  EXPECT_TRUE(events_.Saw("HttpBadRequest"));
}

TEST_F(HttpServerTest, AHeaderOverTheLimitGets431AndClosesTheConnection) {
  StartServer({.header_bytes_max = 1024});
  const uint16_t port = server_->port();
  auto [rejected, closed] = WithClient([port] {
    RawClient client(port);
    client.Send(Get("/metrics", "X-Padding: " + std::string(4096, 'p') + "\r\n"));
    auto rejected = client.ReadResponse();
    return std::pair(rejected, client.WaitUntilClosed());
  });
  ASSERT_TRUE(rejected.has_value());
  EXPECT_EQ(rejected->status, 431);
  EXPECT_TRUE(closed);
  EXPECT_EQ(handler_calls_, 0);
}

TEST_F(HttpServerTest, ARequestBodyIsReadAndIgnored) {
  StartServer();
  const uint16_t port = server_->port();
  auto [post, get] = WithClient([port] {
    RawClient client(port);
    const std::string body(1000, 'b');
    client.Send("POST /health HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n" + body);
    auto post = client.ReadResponse();
    client.Send(Get("/metrics"));
    return std::pair(post, client.ReadResponse());
  });
  ASSERT_TRUE(post.has_value());
  EXPECT_EQ(post->status, 200);
  ASSERT_TRUE(get.has_value());
  EXPECT_EQ(get->body, "keel_up 1\n");
  EXPECT_EQ(last_method_, "GET");
  EXPECT_EQ(handler_calls_, 2);
}

TEST_F(HttpServerTest, ABodyOverTheLimitGets413) {
  StartServer();
  const uint16_t port = server_->port();
  auto rejected = WithClient([port] {
    RawClient client(port);
    client.Send("POST /health HTTP/1.1\r\nHost: test\r\nContent-Length: " +
                std::to_string(kRequestBodyBytesMax + 1) + "\r\n\r\n");
    return client.ReadResponse();
  });
  ASSERT_TRUE(rejected.has_value());
  EXPECT_EQ(rejected->status, 413);
  EXPECT_EQ(handler_calls_, 0);
}

TEST_F(HttpServerTest, HeadGetsTheHeadersWithoutTheBody) {
  StartServer();
  const uint16_t port = server_->port();
  auto [head, get] = WithClient([port] {
    RawClient client(port);
    client.Send("HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    auto head = client.ReadResponse(/*head=*/true);
    // Had the body been sent, this response would be read from its bytes and fail.
    client.Send(Get("/health"));
    return std::pair(head, client.ReadResponse());
  });
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->headers["content-length"], "10");
  ASSERT_TRUE(get.has_value());
  EXPECT_EQ(get->body, "{\"health\":\"true\"}");
  EXPECT_EQ(last_method_, "GET");
}

TEST_F(HttpServerTest, AHandlerThatThrowsGets500AndTheConnectionLives) {
  StartServer();
  const uint16_t port = server_->port();
  auto [failed, next] = WithClient([port] {
    RawClient client(port);
    client.Send(Get("/throw"));
    auto failed = client.ReadResponse();
    client.Send(Get("/metrics"));
    return std::pair(failed, client.ReadResponse());
  });
  ASSERT_TRUE(failed.has_value());
  EXPECT_EQ(failed->status, 500);
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->status, 200);
  EXPECT_TRUE(events_.Saw("HttpHandlerThrew"));
}

TEST_F(HttpServerTest, ConnectionsOverTheLimitAreClosedAtOnce) {
  StartServer({.connections_max = 2, .idle_timeout = 60s});
  const uint16_t port = server_->port();
  struct Outcome {
    bool first_two_served = false;
    bool third_closed = false;
    std::chrono::milliseconds third_closed_after{0};
    bool served_after_one_left = false;
  };
  Outcome outcome = WithClient([port] {
    Outcome outcome;
    auto first = std::make_unique<RawClient>(port);
    RawClient second(port);
    first->Send(Get("/health"));
    second.Send(Get("/health"));
    outcome.first_two_served = first->ReadResponse() && second.ReadResponse();
    const auto start = Clock::now();
    RawClient third(port);
    third.Send(Get("/health"));
    outcome.third_closed = !third.ReadResponse() && third.WaitUntilClosed();
    outcome.third_closed_after =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    // Once one leaves, a newcomer is served (after the server has noticed the leaving).
    first.reset();
    for (int attempt = 0; attempt < 100 && !outcome.served_after_one_left; ++attempt) {
      RawClient newcomer(port);
      newcomer.Send(Get("/health"));
      outcome.served_after_one_left = newcomer.ReadResponse().has_value();
      if (!outcome.served_after_one_left) std::this_thread::sleep_for(20ms);
    }
    return outcome;
  });
  EXPECT_TRUE(outcome.first_two_served);
  EXPECT_TRUE(outcome.third_closed);
  EXPECT_LT(outcome.third_closed_after, 3s);  // at once, not at the 60 s idle timeout
  EXPECT_TRUE(outcome.served_after_one_left);
  EXPECT_EQ(connections_seen_max_, 2u);
  EXPECT_TRUE(events_.Saw("HttpConnectionRejected"));
}

TEST_F(HttpServerTest, IdleConnectionsCloseAfterTheIdleTimeout) {
  StartServer({.idle_timeout = 200ms});
  const uint16_t port = server_->port();
  auto [idle_after_request, half_request] = WithClient([port] {
    RawClient idle(port);
    idle.Send(Get("/health"));
    const bool served = idle.ReadResponse().has_value();
    auto start = Clock::now();
    const bool idle_closed = idle.WaitUntilClosed();
    const auto idle_after_request = Clock::now() - start;
    // A request that never finishes is bounded by the same timeout.
    RawClient slow(port);
    slow.Send("GET /health HTTP/1.1\r\nHost: te");
    start = Clock::now();
    const bool slow_closed = slow.WaitUntilClosed();
    const auto half_request = Clock::now() - start;
    using D = std::optional<Clock::duration>;
    return std::pair(served && idle_closed ? D(idle_after_request) : std::nullopt,
                     slow_closed ? D(half_request) : std::nullopt);
  });
  ASSERT_TRUE(idle_after_request.has_value());
  EXPECT_GE(*idle_after_request, 150ms);
  EXPECT_LT(*idle_after_request, 3s);
  ASSERT_TRUE(half_request.has_value());
  EXPECT_GE(*half_request, 150ms);
  EXPECT_LT(*half_request, 3s);
  EXPECT_EQ(handler_calls_, 1);
}

TEST_F(HttpServerTest, StopClosesOpenConnectionsAndRefusesNewOnes) {
  StartServer();
  const uint16_t port = server_->port();
  // Two connections: one between requests, one with half a request in flight.
  auto [between, midway] = WithClient([port] {
    auto between = std::make_unique<RawClient>(port);
    between->Send(Get("/health"));
    EXPECT_TRUE(between->ReadResponse().has_value());
    auto midway = std::make_unique<RawClient>(port);
    midway->Send("GET /health HTTP/1.1\r\n");
    return std::pair(std::move(between), std::move(midway));
  });
  RunFor(20ms);  // let the server read the half request
  EXPECT_EQ(server_->connection_count(), 2u);
  server_->Stop();
  server_->Stop();  // idempotent
  auto [both_closed, refused] = WithClient([&] {
    const bool both_closed = between->WaitUntilClosed() && midway->WaitUntilClosed();
    RawClient late(port);
    return std::pair(both_closed, !late.connected());
  });
  EXPECT_TRUE(both_closed);
  EXPECT_TRUE(refused);
  RunFor(20ms);
  EXPECT_EQ(server_->connection_count(), 0u);
  EXPECT_EQ(handler_calls_, 1);
  server_.reset();  // the destructor after Stop is fine too
}

TEST_F(HttpServerTest, DestroyingTheServerWithOpenConnectionsClosesThem) {
  StartServer();
  const uint16_t port = server_->port();
  auto client = WithClient([port] {
    auto client = std::make_unique<RawClient>(port);
    client->Send(Get("/health"));
    EXPECT_TRUE(client->ReadResponse().has_value());
    return client;
  });
  server_.reset();
  // The pending handlers still hold the connection; they finish on the next run.
  const bool closed = WithClient([&] { return client->WaitUntilClosed(); });
  EXPECT_TRUE(closed);
  RunFor(20ms);
}

TEST_F(HttpServerTest, ListeningOnAPortInUseFailsWithAClearError) {
  StartServer();
  HttpServer second(
      io_, [](std::string_view, std::string_view) { return HttpResponse{}; }, Logger());
  const absl::Status status = second.Listen("127.0.0.1", server_->port());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("in use"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("127.0.0.1:" + std::to_string(server_->port())),
            absl::string_view::npos)
      << status;
  EXPECT_EQ(second.port(), 0);
  // Listening twice on one server is a mistake the caller sees.
  EXPECT_EQ(server_->Listen("127.0.0.1", 0).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace keel::net

namespace keel::net {
namespace {

// keeld's /health answers only once a read went through Raft: the handler responds later,
// from the io thread, and the connection carries on with the next request afterwards.
TEST_F(HttpServerTest, AnAsynchronousHandlerAnswersLaterAndTheConnectionCarriesOn) {
  boost::asio::steady_timer later(io_);
  int calls = 0;
  server_ = std::make_unique<HttpServer>(
      io_,
      HttpAsyncHandler([&](std::string_view, std::string_view target, HttpRespond respond) {
        ++calls;
        later.expires_after(std::chrono::milliseconds(30));
        later.async_wait([respond, path = std::string(target)](const boost::system::error_code&) {
          respond({.body = "late " + path});
          respond({.body = "twice"});  // a second answer is ignored
        });
      }),
      Logger(&events_, Severity::kDebug));
  ASSERT_TRUE(server_->Listen("127.0.0.1", 0).ok());
  const uint16_t port = server_->port();
  auto [first, second] = WithClient([port] {
    RawClient client(port);
    client.Send(Get("/a"));
    auto first = client.ReadResponse();
    client.Send(Get("/b"));
    return std::pair(first, client.ReadResponse());
  });
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->body, "late /a");
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->body, "late /b");
  EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace keel::net
