#pragma once
// Client::Impl: what the client's streams (lease_keeper.cc, watcher.cc) share with its
// unary calls: the endpoints with their channels and stubs, which one calls go to now,
// and the backoff. Internal to net/client/.
//
// Invariant: `endpoints` is fixed after construction (read without the lock); the current
// endpoint and the random source are guarded by `mu_`.

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "core/assert.h"
#include "core/etcdpb/rpc.grpc.pb.h"
#include "net/client/client.h"

namespace keel::client {

using Clock = std::chrono::steady_clock;

// gRPC deadlines are on the system clock; keel's are on the steady clock.
std::chrono::system_clock::time_point ToSystemDeadline(Clock::time_point deadline);
absl::Status FromGrpc(const grpc::Status& status);

struct Client::Impl {
  struct Endpoint {
    std::string target;  // host:port
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<etcdserverpb::KV::Stub> kv;
    std::unique_ptr<etcdserverpb::Watch::Stub> watch;
    std::unique_ptr<etcdserverpb::Lease::Stub> lease;
    std::unique_ptr<etcdserverpb::Cluster::Stub> cluster;
    std::unique_ptr<etcdserverpb::Maintenance::Stub> maintenance;
  };

  // Requires: config was validated (Client::Connect does).
  explicit Impl(ClientConfig config);

  const ClientConfig config;
  std::vector<Endpoint> endpoints;  // one per config.endpoints entry, same order

  // The index of the endpoint calls and new streams go to.
  size_t current() const;
  // The endpoint at `index` failed; if calls still go there, they move to the next one
  // (another caller may have moved them already: then nothing changes).
  void ReportFailure(size_t index);

  // Waits until the endpoint's channel is connected: at most dial_timeout, never past
  // `deadline`, and returns early (Cancelled) once `stopped` says so. Unavailable with
  // kNoConnection's prefix when it is not connected (a failed connection fails at once).
  absl::Status AwaitConnected(size_t index, Clock::time_point deadline,
                              const std::function<bool()>& stopped = nullptr) const;

  // The pause before retry round `round` (0, 1, ...): exponential from retry_backoff_min
  // to retry_backoff_max, jittered into [half, whole] so that clients spread out.
  Nanos Backoff(int round);

 private:
  mutable std::mutex mu_;
  size_t current_ = 0;
  std::mt19937 rng_;  // jitter only: seeded from std::random_device (not the sim's core)
};

// The thread behind one of the client's streams (LeaseKeeper's, Watcher's) and what its
// owner needs to stop it; each one's Impl derives from this. The owner starts `thread`
// once its Impl is built and calls Stop() before destroying it.
struct StreamWorker {
  // Sets `stopping`, cancels the open stream (if any), wakes the thread and waits until it
  // has returned. Requires: not called on `thread` itself.
  void Stop() {
    {
      std::lock_guard lock(mu);
      stopping = true;
      if (context != nullptr) context->TryCancel();
    }
    cv.notify_all();
    KEEL_ASSERT(thread.get_id() != std::this_thread::get_id());
    thread.join();
  }

  mutable std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;                   // guarded by mu
  grpc::ClientContext* context = nullptr;  // the open stream's (for TryCancel), by mu
  std::thread thread;
};

}  // namespace keel::client
