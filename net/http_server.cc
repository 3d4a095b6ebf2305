#include "net/http_server.h"

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <exception>
#include <optional>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "core/assert.h"

namespace keel::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

namespace {

// After the last response on a connection we stop sending but keep reading (and
// dropping) for at most this long: closing a socket with unread input makes Linux send
// a reset, which can destroy the response (a 400, say) before the client reads it.
constexpr std::chrono::milliseconds kLingerTimeoutMax{1000};
// An accept that fails (out of file descriptors, say) is retried after this long, not
// at once: the failure would repeat in a busy loop.
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};

std::string_view ToStd(beast::string_view s) { return std::string_view(s.data(), s.size()); }

asio::steady_timer::duration ToTimerDuration(Nanos d) {
  return std::chrono::duration_cast<asio::steady_timer::duration>(d);
}

bool IsHttpParseError(const ErrorCode& ec) {
  return ec.category() == http::make_error_code(http::error::bad_version).category();
}

std::string EndpointString(const tcp::endpoint& endpoint) {
  const asio::ip::address address = endpoint.address();
  const std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return host + ":" + std::to_string(endpoint.port());
}

}  // namespace

class HttpServer::Impl : public std::enable_shared_from_this<HttpServer::Impl> {
 public:
  class Connection;

  Impl(asio::io_context& io, HttpAsyncHandler handler, Logger log, HttpServerConfig config)
      : io_(io),
        handler_(std::move(handler)),
        log_(log),
        config_(config),
        acceptor_(io),
        accept_retry_timer_(io) {}

  absl::Status Listen(std::string_view host, uint16_t port);
  void Stop();
  // The handler's answer; a handler that throws is answered with 500.
  // Calls the handler; `respond` gets its answer once (a 500 if it threw).
  void Answer(std::string_view method, std::string_view target, HttpRespond respond);

  const HttpServerConfig& config() const { return config_; }
  const Logger& log() const { return log_; }
  bool stopped() const { return stopped_; }
  uint16_t port() const { return port_; }
  size_t connection_count() const { return connections_.size(); }
  // Connections add themselves on construction and remove themselves on destruction.
  void AddConnection(Connection* c) { connections_.insert(c); }
  void RemoveConnection(Connection* c) { connections_.erase(c); }

 private:
  absl::StatusOr<tcp::endpoint> Resolve(std::string_view host, uint16_t port);
  void Accept();
  void OnAccept(const ErrorCode& ec, tcp::socket socket);

  asio::io_context& io_;
  HttpAsyncHandler handler_;
  Logger log_;
  HttpServerConfig config_;
  tcp::acceptor acceptor_;
  asio::steady_timer accept_retry_timer_;
  // Every open connection, so that Stop can close them. Invariant: size() is the number
  // of live Connection objects.
  std::unordered_set<Connection*> connections_;
  uint16_t port_ = 0;
  bool stopped_ = false;
};

// One client connection: read a request, answer it, repeat while keep-alive holds.
// Owned by the completion handlers in flight (shared_from_this); the server keeps only
// a raw pointer, removed in the destructor.
class HttpServer::Impl::Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(std::shared_ptr<Impl> server, tcp::socket socket)
      : server_(std::move(server)), stream_(std::move(socket)) {
    server_->AddConnection(this);
  }
  ~Connection() { server_->RemoveConnection(this); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void Start() { ReadRequest(); }
  // Closes the socket at once; every pending operation completes with an error.
  void Close() { stream_.close(); }

 private:
  void ReadRequest();
  void OnRead(const ErrorCode& ec);
  void RejectRequest(const ErrorCode& ec);
  void WriteResponse(HttpResponse response, bool keep_alive, bool head);
  void OnWrite(const ErrorCode& ec, bool keep_alive);
  void Linger();

  std::shared_ptr<Impl> server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  // A fresh parser per request: Beast parsers are single-use.
  std::optional<http::request_parser<http::string_body>> parser_;
  // Kept here, not on the stack: it must outlive the async_write.
  http::response<http::string_body> response_;
  std::array<char, 1024> discard_;
};

void HttpServer::Impl::Connection::ReadRequest() {
  parser_.emplace();
  parser_->header_limit(static_cast<uint32_t>(server_->config().header_bytes_max));
  parser_->body_limit(static_cast<uint64_t>(kRequestBodyBytesMax));
  stream_.expires_after(ToTimerDuration(server_->config().idle_timeout));
  http::async_read(
      stream_, buffer_, *parser_,
      [self = shared_from_this()](const ErrorCode& ec, size_t /*bytes*/) { self->OnRead(ec); });
}

void HttpServer::Impl::Connection::OnRead(const ErrorCode& ec) {
  // A read that completed just before Stop must not reach the handler.
  if (server_->stopped()) return;
  if (ec == http::error::end_of_stream) return;  // the client closed between requests
  if (ec) {
    // partial_message: the client closed mid-request, so nobody would read a 400.
    if (IsHttpParseError(ec) && ec != http::error::partial_message) {
      RejectRequest(ec);
      return;
    }
    server_->log().Debug("HttpConnectionEnded").Field("error", ec.message());
    return;  // timeout or socket error: dropping the last reference closes the socket
  }
  const auto& request = parser_->get();
  const bool head = request.method() == http::verb::head;
  const std::string_view method = head ? "GET" : ToStd(request.method_string());
  const bool keep_alive = request.keep_alive();
  server_->Answer(method, ToStd(request.target()),
                  [self = shared_from_this(), keep_alive, head,
                   answered = false](HttpResponse response) mutable {
                    if (answered || self->server_->stopped()) return;
                    answered = true;
                    self->WriteResponse(std::move(response), keep_alive, head);
                  });
}

void HttpServer::Impl::Connection::RejectRequest(const ErrorCode& ec) {
  server_->log().Debug("HttpBadRequest").Field("error", ec.message());
  HttpResponse response;
  response.status = ec == http::error::header_limit ? 431  // Request Header Fields Too Large
                    : ec == http::error::body_limit ? 413  // Content Too Large
                                                    : 400;
  response.body = "bad request: " + ec.message() + "\n";
  WriteResponse(std::move(response), /*keep_alive=*/false, /*head=*/false);
}

void HttpServer::Impl::Connection::WriteResponse(HttpResponse response, bool keep_alive,
                                                 bool head) {
  KEEL_ASSERT(response.status >= 100 && response.status <= 599);
  response_ = {};
  response_.version(parser_->get().version() == 10 ? 10 : 11);
  response_.result(static_cast<unsigned>(response.status));
  response_.set(http::field::server, "keel");
  response_.set(http::field::content_type, response.content_type);
  // Set by hand, not by prepare_payload: a HEAD answer carries the GET's length.
  response_.content_length(response.body.size());
  response_.keep_alive(keep_alive);
  if (!head) response_.body() = std::move(response.body);
  stream_.expires_after(ToTimerDuration(server_->config().idle_timeout));
  http::async_write(stream_, response_,
                    [self = shared_from_this(), keep_alive](const ErrorCode& ec, size_t) {
                      self->OnWrite(ec, keep_alive);
                    });
}

void HttpServer::Impl::Connection::OnWrite(const ErrorCode& ec, bool keep_alive) {
  if (server_->stopped() || ec) return;
  if (keep_alive) {
    ReadRequest();
  } else {
    Linger();
  }
}

// Half-close, then drop input until the client closes or kLingerTimeoutMax passes.
void HttpServer::Impl::Connection::Linger() {
  ErrorCode ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  stream_.expires_after(
      ToTimerDuration(std::min<Nanos>(server_->config().idle_timeout, Nanos(kLingerTimeoutMax))));
  struct Drain {
    std::shared_ptr<Connection> self;
    void operator()(const ErrorCode& ec, size_t /*bytes*/) {
      if (ec || self->server_->stopped()) return;  // EOF, timeout or Stop: all done
      self->stream_.async_read_some(asio::buffer(self->discard_), std::move(*this));
    }
  };
  stream_.async_read_some(asio::buffer(discard_), Drain{shared_from_this()});
}

absl::StatusOr<tcp::endpoint> HttpServer::Impl::Resolve(std::string_view host, uint16_t port) {
  const std::string host_string(host.empty() ? "0.0.0.0" : host);
  ErrorCode ec;
  const asio::ip::address address = asio::ip::make_address(host_string, ec);
  if (!ec) return tcp::endpoint(address, port);
  // A name: resolved once, here, on the io_context's thread (keeld does this at start).
  tcp::resolver resolver(io_);
  const auto results = resolver.resolve(host_string, std::to_string(port), ec);
  if (ec || results.empty()) {
    return absl::InvalidArgumentError("http server: cannot resolve host \"" + host_string +
                                      "\": " + ec.message());
  }
  return results.begin()->endpoint();
}

absl::Status HttpServer::Impl::Listen(std::string_view host, uint16_t port) {
  if (stopped_) return absl::FailedPreconditionError("http server: stopped");
  if (acceptor_.is_open()) return absl::FailedPreconditionError("http server: already listening");
  absl::StatusOr<tcp::endpoint> endpoint = Resolve(host, port);
  if (!endpoint.ok()) return endpoint.status();
  const std::string where = EndpointString(*endpoint);
  ErrorCode ec;
  acceptor_.open(endpoint->protocol(), ec);
  // SO_REUSEADDR lets a restarted keeld bind while old connections sit in TIME_WAIT; on
  // Linux it does not let two listeners share a port, so "in use" is still reported.
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(*endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) port_ = acceptor_.local_endpoint(ec).port();
  if (ec) {
    ErrorCode ignored;
    acceptor_.close(ignored);
    port_ = 0;
    const std::string message = "http server: listen on " + where + ": " + ec.message();
    if (ec == asio::error::access_denied) return absl::PermissionDeniedError(message);
    return absl::UnavailableError(message);  // address_in_use among others
  }
  log_.Info("HttpServerListening").Field("address", where).Field("port", port_);
  Accept();
  return absl::OkStatus();
}

void HttpServer::Impl::Accept() {
  acceptor_.async_accept([self = shared_from_this()](const ErrorCode& ec, tcp::socket socket) {
    self->OnAccept(ec, std::move(socket));
  });
}

void HttpServer::Impl::OnAccept(const ErrorCode& ec, tcp::socket socket) {
  if (stopped_ || ec == asio::error::operation_aborted) return;  // `socket` closes itself
  if (ec) {
    log_.Warn("HttpAcceptFailed").Field("error", ec.message());
    accept_retry_timer_.expires_after(kAcceptRetryDelay);
    accept_retry_timer_.async_wait([self = shared_from_this()](const ErrorCode& wait_ec) {
      if (!wait_ec && !self->stopped_) self->Accept();
    });
    return;
  }
  if (connections_.size() >= config_.connections_max) {
    ErrorCode ignored;
    log_.Warn("HttpConnectionRejected")
        .Field("peer", EndpointString(socket.remote_endpoint(ignored)))
        .Field("connections_max", config_.connections_max);
    socket.close(ignored);
  } else {
    std::make_shared<Connection>(shared_from_this(), std::move(socket))->Start();
  }
  Accept();
}

void HttpServer::Impl::Stop() {
  if (stopped_) return;
  stopped_ = true;
  ErrorCode ignored;
  acceptor_.close(ignored);
  // Close only cancels: handlers run later, so the set does not change under the loop.
  // Copied anyway, so that this stays true if Close ever destroys synchronously.
  const std::vector<Connection*> open(connections_.begin(), connections_.end());
  for (Connection* connection : open) connection->Close();
  log_.Info("HttpServerStopped").Field("connections_closed", open.size());
}

void HttpServer::Impl::Answer(std::string_view method, std::string_view target,
                              HttpRespond respond) {
  // No exception may escape into io_context::run: it would take down every other
  // component sharing the loop.
  std::string what = "unknown exception";
  try {
    handler_(method, target, respond);
    return;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  log_.Error("HttpHandlerThrew").Field("target", target).Field("what", what);
  respond(HttpResponse{.status = 500, .body = "internal server error\n"});
}

namespace {
HttpAsyncHandler Asynchronous(HttpHandler handler) {
  KEEL_ASSERT(handler != nullptr);
  return [handler = std::move(handler)](std::string_view method, std::string_view target,
                                        HttpRespond respond) {
    respond(handler(method, target));
  };
}
}  // namespace

HttpServer::HttpServer(asio::io_context& io, HttpHandler handler, Logger log,
                       HttpServerConfig config)
    : HttpServer(io, Asynchronous(std::move(handler)), log, config) {}

HttpServer::HttpServer(asio::io_context& io, HttpAsyncHandler handler, Logger log,
                       HttpServerConfig config) {
  KEEL_ASSERT(handler != nullptr);
  KEEL_ASSERT(config.connections_max > 0);
  KEEL_ASSERT(config.header_bytes_max > 0 && config.header_bytes_max <= UINT32_MAX);
  KEEL_ASSERT(config.idle_timeout > Nanos(0));
  impl_ = std::make_shared<Impl>(io, std::move(handler), log, config);
}

HttpServer::~HttpServer() { impl_->Stop(); }

absl::Status HttpServer::Listen(std::string_view host, uint16_t port) {
  return impl_->Listen(host, port);
}

uint16_t HttpServer::port() const { return impl_->port(); }

void HttpServer::Stop() { impl_->Stop(); }

size_t HttpServer::connection_count() const { return impl_->connection_count(); }

}  // namespace keel::net
