#pragma once
// keel::client::Client: a C++ client of etcd's v3 gRPC API (keeld, or etcd itself) with
// several endpoints. What every user of a registry would otherwise write by hand:
//
// Failover. One channel per endpoint; calls go to the current endpoint, and a call that
// fails because that member cannot serve it (connection refused or lost, "no leader",
// "not leader", too many requests, shutting down) moves the client to the next endpoint.
//
// Retries. Each call has one deadline (CallOptions::timeout, default request_timeout)
// that covers every attempt. Idempotent calls (Range, LeaseTimeToLive, LeaseLeases,
// MemberList, Status, and LeaseRevoke, whose repeat is at worst "not found") are retried
// on any of the errors above and on "request timed out" / "leader changed", with
// exponential backoff and jitter, until the deadline. Mutations (Put, DeleteRange, Txn
// with writes, Compact, LeaseGrant) are retried only when the error guarantees the
// request was not applied (refused before it was proposed: no leader, not leader, too
// many requests, or no connection at all); an indeterminate error (timed out, leader
// changed) is returned: the caller decides (a registrar's put of its own key is safe to
// repeat; a counter's increment is not).
//
// Errors are absl::Status with the server's gRPC code and message (etcd's words), or
// DeadlineExceeded when the call's deadline passed.
//
// Threads: every method may be called from any thread; calls block until answered.
// Streams (leases kept alive, watches) live in net/client/lease_keeper.h and watcher.h.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/etcdpb/forward.h"
#include "core/types.h"

namespace etcdserverpb {
class MemberListResponse;
class StatusResponse;
class LeaseLeasesResponse;
}  // namespace etcdserverpb

namespace keel::client {

struct ClientConfig {
  std::vector<std::string> endpoints;          // "host:port", as etcdctl's --endpoints
  Nanos dial_timeout = Millis(2000);           // a member that does not answer by then is skipped
  Nanos request_timeout = Millis(5000);        // default deadline of one call, retries included
  Nanos retry_backoff_min = Millis(25);
  Nanos retry_backoff_max = Millis(1000);
  Nanos keepalive_time = Millis(2000);         // gRPC pings on idle connections (etcdctl's)
  Nanos keepalive_timeout = Millis(6000);
};

struct CallOptions {
  Nanos timeout{0};  // 0: the client's request_timeout
};

// Validates the endpoint list: non-empty (at most 64), no repeats, each "host:port" or
// "[ipv6]:port" with a port in [1, 65535].
absl::Status ValidateEndpoints(const std::vector<std::string>& endpoints);
// Splits etcdctl's comma-separated --endpoints (an optional http:// prefix and trailing
// slash are dropped; https:// is refused: keel speaks no TLS yet), then validates.
absl::StatusOr<std::vector<std::string>> ParseEndpoints(std::string_view comma_list);

// What a failed attempt means (the rules above), for the client's retry loop, its
// streams, and callers that retry on their own.
struct FailureClass {
  bool endpoint_failed = false;   // the member cannot serve now: move to the next endpoint
  bool not_applied = false;       // refused before it was proposed: any call may be repeated
  bool retry_idempotent = false;  // an idempotent call may be repeated (not_applied implies it)
};
FailureClass ClassifyFailure(const absl::Status& status);
// Whether a call that failed with `status` is attempted again (before its deadline).
bool ShouldRetry(const absl::Status& status, bool idempotent);
// A Txn with no put or delete in any branch, nested txns included: a read, idempotent.
bool IsReadOnlyTxn(const etcdserverpb::TxnRequest& r);
// The message prefix of the Unavailable error for an attempt that never left the client
// (its endpoint had no connection): not applied, so any call may be repeated.
inline constexpr char kNoConnection[] = "keel client: no connection to ";

class Client {
 public:
  // Validates `config` (InvalidArgument names the bad field) and creates one channel per
  // endpoint. It does not wait for a member: each call waits for its endpoint's
  // connection at most dial_timeout (and never past its deadline), then moves on.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(ClientConfig config);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  absl::StatusOr<etcdserverpb::RangeResponse> Range(const etcdserverpb::RangeRequest& r,
                                                    CallOptions options = {});
  absl::StatusOr<etcdserverpb::PutResponse> Put(const etcdserverpb::PutRequest& r,
                                                CallOptions options = {});
  absl::StatusOr<etcdserverpb::DeleteRangeResponse> DeleteRange(
      const etcdserverpb::DeleteRangeRequest& r, CallOptions options = {});
  absl::StatusOr<etcdserverpb::TxnResponse> Txn(const etcdserverpb::TxnRequest& r,
                                                CallOptions options = {});
  absl::StatusOr<etcdserverpb::CompactionResponse> Compact(
      const etcdserverpb::CompactionRequest& r, CallOptions options = {});
  absl::StatusOr<etcdserverpb::LeaseGrantResponse> LeaseGrant(
      const etcdserverpb::LeaseGrantRequest& r, CallOptions options = {});
  absl::StatusOr<etcdserverpb::LeaseRevokeResponse> LeaseRevoke(
      const etcdserverpb::LeaseRevokeRequest& r, CallOptions options = {});
  absl::StatusOr<etcdserverpb::LeaseTimeToLiveResponse> LeaseTimeToLive(
      const etcdserverpb::LeaseTimeToLiveRequest& r, CallOptions options = {});
  absl::StatusOr<etcdserverpb::LeaseLeasesResponse> LeaseLeases(CallOptions options = {});
  absl::StatusOr<etcdserverpb::MemberListResponse> MemberList(CallOptions options = {});
  // Status of the member at `endpoint` (one of the configured ones), without failover.
  absl::StatusOr<etcdserverpb::StatusResponse> Status(const std::string& endpoint,
                                                      CallOptions options = {});

  const ClientConfig& config() const;
  // The endpoint calls go to now.
  std::string current_endpoint() const;

  // For the streams (lease_keeper.h, watcher.h): the channel to the current endpoint,
  // and a report that it failed (the client moves on to the next endpoint).
  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::client
