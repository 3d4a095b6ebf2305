#pragma once
// KeelMember: one keeld process. It owns the io_context whose one thread runs the Node,
// the KvServer and every timer (the core, unchanged from the simulator), and around it
// the real world: SQLite in the data directory, the peer transport, etcd's gRPC API, and
// HTTP /metrics and /health.
//
// Start() opens everything in order and fails with a clear error, leaving nothing
// running: a data directory that cannot be used or is in use by another keeld, a member
// identity that does not match the flags, a port that cannot be bound.
//
// Stop (SIGINT, SIGTERM or RequestStop): new calls are refused, streams are finished with
// Unavailable "etcdserver: server stopped", calls in flight finish (each ends within the
// request timeout), then the node stops, staged writes are synced, and Run returns 0.

#include <memory>

#include "absl/status/status.h"
#include "net/keeld_config.h"

namespace keel {
class LogSink;
}

namespace keel::net {

class KeelMember {
 public:
  KeelMember(KeeldConfig config, LogSink& sink);
  ~KeelMember();
  KeelMember(const KeelMember&) = delete;
  KeelMember& operator=(const KeelMember&) = delete;

  absl::Status Start();
  // Runs the event loop on this thread until the member stopped. Returns the exit code.
  int Run();
  // Any thread: begins the graceful stop.
  void RequestStop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::net
