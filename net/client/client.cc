#include "net/client/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <climits>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/assert.h"
#include "core/etcdpb/rpc.grpc.pb.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/applier.h"
#include "net/client/client_impl.h"

namespace keel::client {
namespace pb = etcdserverpb;

namespace {

constexpr size_t kEndpointsMax = 64;
// A wait for a connection checks `stopped` this often.
constexpr Nanos kAwaitSlice = Millis(50);

// etcd's words (etcdserver/api/v3rpc/rpctypes). Matched by prefix: etcd has longer
// variants ("etcdserver: request timed out, possibly due to previous leader failure").
constexpr char kNoLeader[] = "etcdserver: no leader";
constexpr char kNotLeader[] = "etcdserver: not leader";
constexpr char kTooManyRequests[] = "etcdserver: too many requests";
constexpr char kTimedOut[] = "etcdserver: request timed out";
constexpr char kLeaderChanged[] = "etcdserver: leader changed";
constexpr char kStopped[] = "etcdserver: server stopped";
// gRPC's own words for a fail-fast call on a channel that could not connect: the call
// was never sent.
constexpr char kGrpcConnectFailed[] = "failed to connect to all addresses";

absl::Status ValidateEndpoint(absl::string_view e) {
  absl::string_view host, port;
  if (absl::StartsWith(e, "[")) {
    const size_t close = e.find("]:");
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("endpoint \"", e, "\" is not [ipv6]:port"));
    }
    host = e.substr(1, close - 1);
    port = e.substr(close + 2);
  } else {
    const size_t colon = e.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("endpoint \"", e, "\" has no :port"));
    }
    host = e.substr(0, colon);
    port = e.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("endpoint \"", e, "\": write an IPv6 host in brackets, [::1]:2379"));
    }
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint \"", e, "\" has no host"));
  }
  uint32_t number = 0;
  const bool digits = !port.empty() && std::all_of(port.begin(), port.end(), absl::ascii_isdigit);
  if (!digits || !absl::SimpleAtoi(port, &number) || number == 0 || number > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint \"", e, "\": the port must be a number in [1, 65535]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateConfig(const ClientConfig& c) {
  if (absl::Status st = ValidateEndpoints(c.endpoints); !st.ok()) return st;
  const struct {
    const char* name;
    Nanos value;
  } durations[] = {
      {"dial_timeout", c.dial_timeout},           {"request_timeout", c.request_timeout},
      {"retry_backoff_min", c.retry_backoff_min}, {"retry_backoff_max", c.retry_backoff_max},
      {"keepalive_time", c.keepalive_time},       {"keepalive_timeout", c.keepalive_timeout}};
  for (const auto& d : durations) {
    if (d.value <= Nanos(0)) {
      return absl::InvalidArgumentError(absl::StrCat("ClientConfig.", d.name, " must be > 0"));
    }
  }
  if (c.retry_backoff_min > c.retry_backoff_max) {
    return absl::InvalidArgumentError(
        "ClientConfig.retry_backoff_min must be <= retry_backoff_max");
  }
  return absl::OkStatus();
}

int ToMillisArg(Nanos d) {
  const int64_t ms = std::chrono::duration_cast<Millis>(d).count();
  return static_cast<int>(std::clamp<int64_t>(ms, 1, INT_MAX));
}

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, const ClientConfig& c) {
  grpc::ChannelArguments args;
  // Dead connections are found by pings (etcdctl's --keepalive-time/-timeout), on
  // streams that carry no data too (a quiet watch): no limit on pings without data.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ToMillisArg(c.keepalive_time));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ToMillisArg(c.keepalive_timeout));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Reconnects: the first soon, then no slower than our own backoff, so that a member
  // that comes back is used again within about retry_backoff_max. One connection
  // attempt lasts at least dial_timeout (gRPC's minimum connect timeout).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, ToMillisArg(c.retry_backoff_min));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, ToMillisArg(c.retry_backoff_max));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, ToMillisArg(c.dial_timeout));
  // Each client has its own connections (not gRPC's process-wide pool): one client's
  // endpoint failure is not another's.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // etcd's clients take responses of any size (a large range).
  args.SetMaxReceiveMessageSize(INT_MAX);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

}  // namespace

std::chrono::system_clock::time_point ToSystemDeadline(Clock::time_point deadline) {
  const auto left = deadline - Clock::now();
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(left);
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // gRPC's and absl's codes are both the canonical codes, number for number.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// ---- endpoints ------------------------------------------------------------------------

absl::Status ValidateEndpoints(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) return absl::InvalidArgumentError("no endpoints");
  if (endpoints.size() > kEndpointsMax) {
    return absl::InvalidArgumentError(
        absl::StrCat(endpoints.size(), " endpoints: at most ", kEndpointsMax));
  }
  for (size_t i = 0; i < endpoints.size(); ++i) {
    if (absl::Status st = ValidateEndpoint(endpoints[i]); !st.ok()) return st;
    for (size_t j = 0; j < i; ++j) {
      if (endpoints[j] == endpoints[i]) {
        return absl::InvalidArgumentError(
            absl::StrCat("endpoint \"", endpoints[i], "\" is given twice"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ParseEndpoints(std::string_view comma_list) {
  std::vector<std::string> out;
  for (absl::string_view part :
       absl::StrSplit(absl::string_view(comma_list.data(), comma_list.size()), ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) return absl::InvalidArgumentError("an endpoint in the list is empty");
    if (absl::StartsWithIgnoreCase(part, "https://")) {
      return absl::InvalidArgumentError(
          absl::StrCat("endpoint \"", part, "\": keel speaks no TLS yet (use http://)"));
    }
    if (absl::StartsWithIgnoreCase(part, "http://")) part.remove_prefix(7);
    if (absl::EndsWith(part, "/")) part.remove_suffix(1);
    out.emplace_back(part);
  }
  if (absl::Status st = ValidateEndpoints(out); !st.ok()) return st;
  return out;
}

// ---- failure classes ----------------------------------------------------------------

FailureClass ClassifyFailure(const absl::Status& status) {
  const absl::string_view m = status.message();
  auto starts = [&m](absl::string_view prefix) { return absl::StartsWith(m, prefix); };
  if (status.ok()) return {};
  // Refused before it was proposed (or never sent): the member cannot serve now.
  if (starts(kNoLeader) || starts(kNotLeader) || starts(kTooManyRequests)) {
    return {.endpoint_failed = true, .not_applied = true, .retry_idempotent = true};
  }
  if (absl::IsUnavailable(status) && (starts(kNoConnection) || starts(kGrpcConnectFailed))) {
    return {.endpoint_failed = true, .not_applied = true, .retry_idempotent = true};
  }
  // Its fate is unknown: proposed, then the member lost track of it.
  if (starts(kTimedOut) || starts(kLeaderChanged)) {
    return {.endpoint_failed = false, .not_applied = false, .retry_idempotent = true};
  }
  // The member is going away, or the connection broke under the call.
  if (starts(kStopped) || (absl::IsUnavailable(status) && !starts("etcdserver: "))) {
    return {.endpoint_failed = true, .not_applied = false, .retry_idempotent = true};
  }
  // Anything else is the answer (not found, compacted, invalid, deadline passed...).
  return {};
}

bool ShouldRetry(const absl::Status& status, bool idempotent) {
  const FailureClass c = ClassifyFailure(status);
  return idempotent ? c.retry_idempotent : c.not_applied;
}

bool IsReadOnlyTxn(const pb::TxnRequest& r) { return kv::IsReadOnlyTxn(r); }

// ---- Client::Impl -----------------------------------------------------------------------

Client::Impl::Impl(ClientConfig c) : config(std::move(c)), rng_(std::random_device{}()) {
  for (const std::string& target : config.endpoints) {
    Endpoint& e = endpoints.emplace_back();
    e.target = target;
    e.channel = NewChannel(target, config);
    e.kv = pb::KV::NewStub(e.channel);
    e.watch = pb::Watch::NewStub(e.channel);
    e.lease = pb::Lease::NewStub(e.channel);
    e.cluster = pb::Cluster::NewStub(e.channel);
    e.maintenance = pb::Maintenance::NewStub(e.channel);
  }
  KEEL_ASSERT(!endpoints.empty());
  // Begin connecting to the first endpoint now: the first call is quicker.
  endpoints.front().channel->GetState(/*try_to_connect=*/true);
}

size_t Client::Impl::current() const {
  std::lock_guard lock(mu_);
  return current_;
}

void Client::Impl::ReportFailure(size_t index) {
  KEEL_ASSERT(index < endpoints.size());
  std::lock_guard lock(mu_);
  if (current_ == index) current_ = (index + 1) % endpoints.size();
}

absl::Status Client::Impl::AwaitConnected(size_t index, Clock::time_point deadline,
                                          const std::function<bool()>& stopped) const {
  KEEL_ASSERT(index < endpoints.size());
  const Endpoint& e = endpoints[index];
  const Clock::time_point dial_deadline = std::min(deadline, Clock::now() + config.dial_timeout);
  while (true) {
    const grpc_connectivity_state state = e.channel->GetState(/*try_to_connect=*/true);
    if (state == GRPC_CHANNEL_READY) return absl::OkStatus();
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) {
      return absl::UnavailableError(absl::StrCat(kNoConnection, e.target, " (connection failed)"));
    }
    if (stopped && stopped()) return absl::CancelledError("stopped");
    const Clock::time_point now = Clock::now();
    if (now >= dial_deadline) {
      return absl::UnavailableError(absl::StrCat(kNoConnection, e.target,
                                                 deadline <= dial_deadline
                                                     ? " (deadline passed while connecting)"
                                                     : " (no answer within the dial timeout)"));
    }
    const Clock::time_point slice = std::min(dial_deadline, now + kAwaitSlice);
    e.channel->WaitForStateChange(state, ToSystemDeadline(slice));
  }
}

Nanos Client::Impl::Backoff(int round) {
  KEEL_ASSERT(round >= 0);
  Nanos whole = config.retry_backoff_min;
  for (int i = 0; i < round && whole < config.retry_backoff_max; ++i) whole *= 2;
  whole = std::min(whole, config.retry_backoff_max);
  const uint64_t half = static_cast<uint64_t>(whole.count() / 2);
  std::lock_guard lock(mu_);
  // Uniform enough for jitter: the modulo bias of a 32-bit draw over ~1e9 ns is small.
  const uint64_t draw = (static_cast<uint64_t>(rng_()) << 32) | rng_();
  return Nanos(static_cast<int64_t>(half + (half == 0 ? 0 : draw % (half + 1))));
}

// ---- Client -----------------------------------------------------------------------------

namespace {

// One call: attempts on the current endpoint, moving on and backing off as the failure
// class says, until an answer, an error to return, or the deadline. `attempt(endpoint,
// context, response)` makes one gRPC call.
template <typename Response, typename Attempt>
absl::StatusOr<Response> Invoke(Client::Impl& impl, bool idempotent, CallOptions options,
                                const Attempt& attempt) {
  const Nanos timeout = options.timeout > Nanos(0) ? options.timeout : impl.config.request_timeout;
  const Clock::time_point deadline = Clock::now() + timeout;
  const size_t endpoint_count = impl.endpoints.size();
  absl::Status last;
  int round = 0;
  size_t tried_in_round = 0;
  int attempts = 0;
  while (true) {
    const size_t index = impl.current();
    absl::Status st = impl.AwaitConnected(index, deadline);
    if (st.ok()) {
      grpc::ClientContext context;
      context.set_deadline(ToSystemDeadline(deadline));
      context.set_wait_for_ready(false);
      Response response;
      ++attempts;
      st = FromGrpc(attempt(impl.endpoints[index], &context, &response));
      if (st.ok()) return response;
    }
    last = st;
    const FailureClass failure = ClassifyFailure(st);
    if (failure.endpoint_failed) impl.ReportFailure(index);
    if (!(idempotent ? failure.retry_idempotent : failure.not_applied)) return st;
    // Every endpoint once without a pause, then a backoff between rounds.
    ++tried_in_round;
    if (!failure.endpoint_failed || tried_in_round >= endpoint_count) {
      const Clock::time_point now = Clock::now();
      if (now >= deadline) break;
      std::this_thread::sleep_for(std::min<Nanos>(impl.Backoff(round++), deadline - now));
      tried_in_round = 0;
    }
    if (Clock::now() >= deadline) break;
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "keel client: the call's deadline (", std::chrono::duration_cast<Millis>(timeout).count(),
      " ms) passed after ", attempts, " attempts; last error: ", last.ToString()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(ClientConfig config) {
  if (absl::Status st = ValidateConfig(config); !st.ok()) return st;
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(std::move(config))));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

const ClientConfig& Client::config() const { return impl_->config; }

std::string Client::current_endpoint() const { return impl_->endpoints[impl_->current()].target; }

using Endpoint = Client::Impl::Endpoint;

absl::StatusOr<pb::RangeResponse> Client::Range(const pb::RangeRequest& r, CallOptions options) {
  return Invoke<pb::RangeResponse>(*impl_, /*idempotent=*/true, options,
                                   [&r](const Endpoint& e, grpc::ClientContext* c,
                                        pb::RangeResponse* out) { return e.kv->Range(c, r, out); });
}

absl::StatusOr<pb::PutResponse> Client::Put(const pb::PutRequest& r, CallOptions options) {
  return Invoke<pb::PutResponse>(*impl_, /*idempotent=*/false, options,
                                 [&r](const Endpoint& e, grpc::ClientContext* c,
                                      pb::PutResponse* out) { return e.kv->Put(c, r, out); });
}

absl::StatusOr<pb::DeleteRangeResponse> Client::DeleteRange(const pb::DeleteRangeRequest& r,
                                                            CallOptions options) {
  return Invoke<pb::DeleteRangeResponse>(
      *impl_, /*idempotent=*/false, options,
      [&r](const Endpoint& e, grpc::ClientContext* c, pb::DeleteRangeResponse* out) {
        return e.kv->DeleteRange(c, r, out);
      });
}

absl::StatusOr<pb::TxnResponse> Client::Txn(const pb::TxnRequest& r, CallOptions options) {
  return Invoke<pb::TxnResponse>(*impl_, IsReadOnlyTxn(r), options,
                                 [&r](const Endpoint& e, grpc::ClientContext* c,
                                      pb::TxnResponse* out) { return e.kv->Txn(c, r, out); });
}

absl::StatusOr<pb::CompactionResponse> Client::Compact(const pb::CompactionRequest& r,
                                                       CallOptions options) {
  return Invoke<pb::CompactionResponse>(
      *impl_, /*idempotent=*/false, options,
      [&r](const Endpoint& e, grpc::ClientContext* c, pb::CompactionResponse* out) {
        return e.kv->Compact(c, r, out);
      });
}

absl::StatusOr<pb::LeaseGrantResponse> Client::LeaseGrant(const pb::LeaseGrantRequest& r,
                                                          CallOptions options) {
  return Invoke<pb::LeaseGrantResponse>(
      *impl_, /*idempotent=*/false, options,
      [&r](const Endpoint& e, grpc::ClientContext* c, pb::LeaseGrantResponse* out) {
        return e.lease->LeaseGrant(c, r, out);
      });
}

absl::StatusOr<pb::LeaseRevokeResponse> Client::LeaseRevoke(const pb::LeaseRevokeRequest& r,
                                                            CallOptions options) {
  // A repeat is at worst "lease not found": retried as a read is.
  return Invoke<pb::LeaseRevokeResponse>(
      *impl_, /*idempotent=*/true, options,
      [&r](const Endpoint& e, grpc::ClientContext* c, pb::LeaseRevokeResponse* out) {
        return e.lease->LeaseRevoke(c, r, out);
      });
}

absl::StatusOr<pb::LeaseTimeToLiveResponse> Client::LeaseTimeToLive(
    const pb::LeaseTimeToLiveRequest& r, CallOptions options) {
  return Invoke<pb::LeaseTimeToLiveResponse>(
      *impl_, /*idempotent=*/true, options,
      [&r](const Endpoint& e, grpc::ClientContext* c, pb::LeaseTimeToLiveResponse* out) {
        return e.lease->LeaseTimeToLive(c, r, out);
      });
}

absl::StatusOr<pb::LeaseLeasesResponse> Client::LeaseLeases(CallOptions options) {
  return Invoke<pb::LeaseLeasesResponse>(
      *impl_, /*idempotent=*/true, options,
      [](const Endpoint& e, grpc::ClientContext* c, pb::LeaseLeasesResponse* out) {
        return e.lease->LeaseLeases(c, pb::LeaseLeasesRequest(), out);
      });
}

absl::StatusOr<pb::MemberListResponse> Client::MemberList(CallOptions options) {
  return Invoke<pb::MemberListResponse>(
      *impl_, /*idempotent=*/true, options,
      [](const Endpoint& e, grpc::ClientContext* c, pb::MemberListResponse* out) {
        return e.cluster->MemberList(c, pb::MemberListRequest(), out);
      });
}

absl::StatusOr<pb::StatusResponse> Client::Status(const std::string& endpoint,
                                                  CallOptions options) {
  const auto it =
      std::find(impl_->config.endpoints.begin(), impl_->config.endpoints.end(), endpoint);
  if (it == impl_->config.endpoints.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint \"", endpoint, "\" is not one of the client's"));
  }
  const size_t index = static_cast<size_t>(it - impl_->config.endpoints.begin());
  const Nanos timeout =
      options.timeout > Nanos(0) ? options.timeout : impl_->config.request_timeout;
  const Clock::time_point deadline = Clock::now() + timeout;
  // One attempt, on that member only: the answer is about it.
  if (absl::Status st = impl_->AwaitConnected(index, deadline); !st.ok()) return st;
  grpc::ClientContext context;
  context.set_deadline(ToSystemDeadline(deadline));
  context.set_wait_for_ready(false);
  pb::StatusResponse out;
  absl::Status st =
      FromGrpc(impl_->endpoints[index].maintenance->Status(&context, pb::StatusRequest(), &out));
  if (!st.ok()) return st;
  return out;
}

}  // namespace keel::client
