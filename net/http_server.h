#pragma once
// A small HTTP/1.1 server for keeld's operational endpoints, /health and /metrics, the
// paths etcd serves and that its probes and Prometheus scrape configs expect. It is not
// a general web server: requests are GET-shaped, request bodies are read and dropped,
// and every answer is one string.
//
// Threading: everything runs on the io_context's thread, the handler included, because
// keeld's handler reads the Node's state, which lives on that thread. Construct, Listen,
// Stop and destroy the server on that thread too, or while the io_context is not
// running.
//
// Limits (STYLE.md rule 5), each of which harms only the connection that hits it:
//   - connections_max: a connection accepted beyond it is closed at once;
//   - header_bytes_max: a larger request header gets 431 and the connection closes;
//   - kRequestBodyBytesMax: a larger request body gets 413 and the connection closes;
//   - idle_timeout: a connection that sends no complete request (or does not read its
//     response) for this long is closed. It bounds slow senders as well as idle ones.
// A malformed request gets 400 and the connection closes. Keep-alive follows the
// request (HTTP/1.1 default on, "Connection: close" off; HTTP/1.0 the reverse).
// Pipelined requests are answered in order.
//
// Boost stays out of this header: the implementation is behind a pointer.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "core/log.h"
#include "core/types.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace keel::net {

struct HttpResponse {
  int status = 200;  // Requires: in [100, 599]
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// Answers one request. `method` is the request's method, except that HEAD arrives as
// "GET" (the server then sends the headers without the body); `target` is the raw
// request target, query string included. Unknown targets are the handler's to answer
// (404). If it throws, the client gets 500. The server adds Content-Length, Server and
// Connection headers.
using HttpHandler = std::function<HttpResponse(std::string_view method, std::string_view target)>;
// The same, answered later: `respond` is called once, on the io_context's thread (a
// health check that waits for a quorum). Calls after the server stopped are ignored.
using HttpRespond = std::function<void(HttpResponse)>;
using HttpAsyncHandler =
    std::function<void(std::string_view method, std::string_view target, HttpRespond respond)>;

struct HttpServerConfig {
  size_t connections_max = 64;
  size_t header_bytes_max = 8 << 10;
  Nanos idle_timeout = Millis(10'000);
};

// Request bodies are read and dropped; this bounds what a client can make us read.
inline constexpr size_t kRequestBodyBytesMax = 64 << 10;

class HttpServer {
 public:
  // Requires: `io` outlives the server; config limits are positive.
  HttpServer(boost::asio::io_context& io, HttpHandler handler, Logger log,
             HttpServerConfig config = {});
  HttpServer(boost::asio::io_context& io, HttpAsyncHandler handler, Logger log,
             HttpServerConfig config = {});
  // Stops the server (see Stop). Handlers already queued on the io_context finish with
  // errors when it next runs and never call `handler`.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts accepting. `host` is an IP address or a resolvable name ("" and
  // "0.0.0.0" mean every IPv4 interface); port 0 picks a free port (see port()).
  // Errors: UnavailableError naming the address if it is in use; InvalidArgumentError
  // for a host that does not resolve; FailedPreconditionError if already listening or
  // stopped. Call at most once successfully.
  absl::Status Listen(std::string_view host, uint16_t port);

  // The bound port; 0 before a successful Listen.
  uint16_t port() const;

  // Closes the acceptor and every open connection; the handler is not called again.
  // Idempotent; the server cannot Listen again afterwards.
  void Stop();

  // Open connections right now (for tests and a keeld gauge).
  size_t connection_count() const;

 private:
  class Impl;
  // Shared with every connection, so that a completion that runs after the server is
  // gone still finds the state it needs to drop itself.
  std::shared_ptr<Impl> impl_;
};

}  // namespace keel::net
