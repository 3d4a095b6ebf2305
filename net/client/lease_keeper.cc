#include "net/client/lease_keeper.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/etcdpb/rpc.grpc.pb.h"
#include "core/etcdpb/rpc.pb.h"
#include "net/client/client_impl.h"

namespace keel::client {
namespace pb = etcdserverpb;

namespace {
// TTLs from the server are bytes from the network: timing math uses at most this much
// (etcd's largest TTL, 9e9 s, would overflow a steady_clock time_point).
constexpr int64_t kTtlForTimingMaxSeconds = 100'000'000;
constexpr auto kForever = std::chrono::hours(24 * 365);
}  // namespace

struct LeaseKeeper::Impl : StreamWorker {
  explicit Impl(Client& c) : client(c) {}

  using Lost = std::function<void(absl::Status)>;
  struct Kept {
    int64_t ttl_seconds = 0;          // what a renewal restores: the server's, once answered
    std::optional<int64_t> last_ttl;  // the server's last answer
    Clock::time_point expires;        // when it may be gone, unless renewed before
    Clock::time_point next_renewal;
    std::optional<Clock::time_point> sent_at;  // a renewal unanswered on the open stream
    Lost lost;
  };
  using Stream = grpc::ClientReaderWriter<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>;
  enum class End { kIdle, kFailed, kStopping };

  void Run();
  End RunStream(size_t index, bool* answered);
  // The stream's reader (a second thread while a stream is open: the sync API's Read
  // blocks, and renewals must go out meanwhile).
  void ReadAnswers(Stream* stream);
  // Under mu: moves leases past their local expiry to lost_queue; lowers *wake to the
  // earliest expiry left.
  void ExpireLocked(Clock::time_point now, Clock::time_point* wake);
  // Not under mu: expires leases and runs the lost callbacks queued. Returns stopping.
  bool Housekeep();
  // Waits `pause`, housekeeping, unless stopped first.
  void Pause(Nanos pause);

  Client& client;
  const Nanos answer_timeout = client.config().request_timeout;

  // Guarded by mu (StreamWorker's, as are stopping and the open stream's context):
  bool rescan = false;  // a lease was added or answered: the writer looks again
  std::map<int64_t, Kept> leases;
  std::vector<std::pair<Lost, absl::Status>> lost_queue;  // at most one per kept lease
  bool broken = false;                                    // the open stream ended
  bool answered = false;                                  // the open stream answered once
};

void LeaseKeeper::Impl::ExpireLocked(Clock::time_point now, Clock::time_point* wake) {
  for (auto it = leases.begin(); it != leases.end();) {
    if (now < it->second.expires) {
      *wake = std::min(*wake, it->second.expires);
      ++it;
      continue;
    }
    lost_queue.emplace_back(
        std::move(it->second.lost),
        absl::DeadlineExceededError(absl::StrCat("keel client: lease ", it->first,
                                                 " was not renewed within its TTL of ",
                                                 it->second.ttl_seconds, " s (it may be gone)")));
    it = leases.erase(it);
  }
}

bool LeaseKeeper::Impl::Housekeep() {
  std::vector<std::pair<Lost, absl::Status>> lost;
  {
    std::lock_guard lock(mu);
    if (stopping) return true;
    Clock::time_point wake = Clock::now() + kForever;
    ExpireLocked(Clock::now(), &wake);
    lost.swap(lost_queue);
  }
  for (auto& [callback, why] : lost) {
    if (callback) callback(why);
  }
  return false;
}

void LeaseKeeper::Impl::Pause(Nanos pause) {
  const Clock::time_point until = Clock::now() + pause;
  while (!Housekeep()) {
    std::unique_lock lock(mu);
    const Clock::time_point now = Clock::now();
    if (now >= until) return;
    Clock::time_point wake = until;
    for (const auto& [id, k] : leases) wake = std::min(wake, k.expires);
    cv.wait_until(lock, wake, [this] { return stopping || !lost_queue.empty(); });
  }
}

void LeaseKeeper::Impl::Run() {
  int round = 0;
  while (true) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [this] { return stopping || !leases.empty() || !lost_queue.empty(); });
      if (stopping) return;
    }
    if (Housekeep()) return;
    const size_t index = client.impl().current();
    bool answered_once = false;
    const End end = RunStream(index, &answered_once);
    if (end == End::kStopping) return;
    if (end == End::kIdle || answered_once) round = 0;
    if (end == End::kIdle) continue;
    // The stream failed: the next one goes to the client's next endpoint.
    client.impl().ReportFailure(index);
    Pause(client.impl().Backoff(round++));
  }
}

LeaseKeeper::Impl::End LeaseKeeper::Impl::RunStream(size_t index, bool* answered_once) {
  Client::Impl& ci = client.impl();
  const absl::Status connected = ci.AwaitConnected(index, Clock::now() + ci.config.dial_timeout,
                                                   [this] { return Housekeep(); });
  if (!connected.ok()) return absl::IsCancelled(connected) ? End::kStopping : End::kFailed;
  grpc::ClientContext ctx;
  {
    std::lock_guard lock(mu);
    if (stopping) return End::kStopping;
    context = &ctx;
    broken = false;
    answered = false;
    // Renewals in flight on the old stream are lost with it: those due go again now.
    for (auto& [id, k] : leases) k.sent_at.reset();
  }
  std::unique_ptr<Stream> stream = ci.endpoints[index].lease->LeaseKeepAlive(&ctx);
  std::thread reader([this, s = stream.get()] { ReadAnswers(s); });
  End end = End::kFailed;
  while (true) {
    std::vector<int64_t> due;
    std::vector<std::pair<Lost, absl::Status>> lost;
    {
      std::unique_lock lock(mu);
      const Clock::time_point now = Clock::now();
      Clock::time_point wake = now + kForever;
      ExpireLocked(now, &wake);
      if (stopping) {
        end = End::kStopping;
        break;
      }
      if (broken) break;
      if (leases.empty() && lost_queue.empty()) {
        end = End::kIdle;
        break;
      }
      bool stuck = false;
      for (auto& [id, k] : leases) {
        if (k.sent_at) {
          // Unanswered for a whole request timeout: this stream is not working.
          stuck = stuck || now - *k.sent_at >= answer_timeout;
          wake = std::min(wake, *k.sent_at + answer_timeout);
        } else if (k.next_renewal <= now) {
          k.sent_at = now;
          due.push_back(id);
        } else {
          wake = std::min(wake, k.next_renewal);
        }
      }
      if (stuck) break;
      if (due.empty() && lost_queue.empty()) {
        rescan = false;
        cv.wait_until(lock, wake,
                      [this] { return stopping || broken || rescan || !lost_queue.empty(); });
        continue;
      }
      lost.swap(lost_queue);
    }
    for (auto& [callback, why] : lost) {
      if (callback) callback(why);
    }
    bool written = true;
    for (int64_t id : due) {
      pb::LeaseKeepAliveRequest request;
      request.set_id(id);
      if (!(written = stream->Write(request))) break;
    }
    if (!written) break;
  }
  ctx.TryCancel();
  reader.join();
  const grpc::Status status = stream->Finish();
  (void)status;  // why it ended does not change what follows: renew elsewhere
  std::lock_guard lock(mu);
  context = nullptr;
  *answered_once = answered;
  return end;
}

void LeaseKeeper::Impl::ReadAnswers(Stream* stream) {
  pb::LeaseKeepAliveResponse response;
  while (stream->Read(&response)) {
    std::lock_guard lock(mu);
    answered = true;
    auto it = leases.find(response.id());
    if (it == leases.end()) continue;  // forgotten meanwhile (or not ours)
    Kept& k = it->second;
    const Clock::time_point sent = k.sent_at.value_or(Clock::now());
    k.sent_at.reset();
    rescan = true;
    cv.notify_all();
    if (response.ttl() <= 0) {
      lost_queue.emplace_back(std::move(k.lost),
                              absl::NotFoundError(absl::StrCat(
                                  "etcdserver: requested lease not found (lease ", it->first,
                                  " was answered with TTL ", response.ttl(), ")")));
      leases.erase(it);
      continue;
    }
    const int64_t ttl = std::min(response.ttl(), kTtlForTimingMaxSeconds);
    k.ttl_seconds = response.ttl();
    k.last_ttl = response.ttl();
    // The server renewed it no earlier than the request was sent: count from then.
    k.expires = sent + std::chrono::seconds(ttl);
    k.next_renewal = sent + std::chrono::milliseconds(ttl * 1000 / 3);
  }
  std::lock_guard lock(mu);
  broken = true;
  cv.notify_all();
}

LeaseKeeper::LeaseKeeper(Client& client) : impl_(std::make_unique<Impl>(client)) {
  impl_->thread = std::thread([impl = impl_.get()] { impl->Run(); });
}

LeaseKeeper::~LeaseKeeper() { impl_->Stop(); }

absl::Status LeaseKeeper::Keep(int64_t lease, int64_t ttl_seconds,
                               std::function<void(absl::Status why)> lost) {
  if (lease <= 0) return absl::InvalidArgumentError(absl::StrCat("bad lease id ", lease));
  if (ttl_seconds <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("lease ", lease, ": TTL must be > 0"));
  }
  std::lock_guard lock(impl_->mu);
  auto it = impl_->leases.find(lease);
  if (it != impl_->leases.end()) {
    it->second.lost = std::move(lost);
    return absl::OkStatus();
  }
  if (impl_->leases.size() >= kLeasesMax) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the keeper keeps at most ", kLeasesMax, " leases"));
  }
  const Clock::time_point now = Clock::now();
  const int64_t ttl = std::min(ttl_seconds, kTtlForTimingMaxSeconds);
  impl_->leases.emplace(lease, Impl::Kept{.ttl_seconds = ttl_seconds,
                                          .expires = now + std::chrono::seconds(ttl),
                                          .next_renewal = now,
                                          .lost = std::move(lost)});
  impl_->rescan = true;
  impl_->cv.notify_all();
  return absl::OkStatus();
}

void LeaseKeeper::Forget(int64_t lease) {
  std::lock_guard lock(impl_->mu);
  impl_->leases.erase(lease);
}

absl::StatusOr<int64_t> LeaseKeeper::LastTtl(int64_t lease) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->leases.find(lease);
  if (it == impl_->leases.end()) {
    return absl::NotFoundError(absl::StrCat("lease ", lease, " is not kept"));
  }
  if (!it->second.last_ttl) {
    return absl::NotFoundError(absl::StrCat("lease ", lease, ": no answer yet"));
  }
  return *it->second.last_ttl;
}

size_t LeaseKeeper::kept() const {
  std::lock_guard lock(impl_->mu);
  return impl_->leases.size();
}

}  // namespace keel::client
