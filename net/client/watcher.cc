#include "net/client/watcher.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/etcdpb/rpc.grpc.pb.h"
#include "core/etcdpb/rpc.pb.h"
#include "net/client/client_impl.h"

namespace keel::client {
namespace pb = etcdserverpb;

std::string PrefixEnd(std::string_view prefix) {
  // etcd's clientv3.GetPrefixRangeEnd: the prefix with its last byte below 0xff
  // incremented and what follows dropped; all 0xff (or empty): every key ("\0").
  std::string end(prefix);
  for (size_t i = end.size(); i > 0; --i) {
    if (static_cast<unsigned char>(end[i - 1]) < 0xff) {
      end[i - 1] = static_cast<char>(static_cast<unsigned char>(end[i - 1]) + 1);
      end.resize(i);
      return end;
    }
  }
  return std::string(1, '\0');
}

struct Watcher::Impl : StreamWorker {
  Impl(Client& c, WatchOptions o, WatchCallbacks cb)
      : client(c),
        options(std::move(o)),
        callbacks(std::move(cb)),
        next_revision(options.start_revision > 0 ? options.start_revision : 0) {}

  // How one stream ended: open another, or the watch is over.
  enum class End { kRetry, kOver };
  // What one response asks for.
  enum class Next { kContinue, kRestart, kOver };

  void Run();
  End RunStream(size_t index, bool* established);
  Next Handle(const pb::WatchResponse& response, size_t index, bool* established);
  pb::WatchRequest CreateRequest() const;
  bool Stopping() {
    std::lock_guard lock(mu);
    return stopping;
  }
  // Sleeps for `pause` unless stopped first.
  void Pause(Nanos pause) {
    std::unique_lock lock(mu);
    cv.wait_for(lock, pause, [this] { return stopping; });
  }

  Client& client;
  const WatchOptions options;
  const WatchCallbacks callbacks;

  std::atomic<int64_t> delivered{0};

  // The watcher's thread only:
  int64_t next_revision = 0;  // the first revision not yet delivered; 0: "now"
  int64_t watch_id = -1;      // the server's id for our watch on the open stream
  bool created = false;       // the open stream answered our create request
};

pb::WatchRequest Watcher::Impl::CreateRequest() const {
  pb::WatchRequest request;
  pb::WatchCreateRequest* create = request.mutable_create_request();
  create->set_key(options.key);
  create->set_range_end(options.range_end);
  // Resumed from the revision after the last one delivered: nothing missed or repeated.
  create->set_start_revision(next_revision);
  create->set_prev_kv(options.prev_kv);
  create->set_progress_notify(options.progress_notify);
  return request;
}

void Watcher::Impl::Run() {
  int round = 0;
  while (!Stopping()) {
    const size_t index = client.impl().current();
    bool established = false;
    if (RunStream(index, &established) == End::kOver) return;
    if (Stopping()) return;
    if (established) round = 0;
    // The stream failed: the next one goes to the client's next endpoint.
    client.impl().ReportFailure(index);
    Pause(client.impl().Backoff(round++));
  }
}

Watcher::Impl::End Watcher::Impl::RunStream(size_t index, bool* established) {
  Client::Impl& ci = client.impl();
  const absl::Status connected = ci.AwaitConnected(index, Clock::now() + ci.config.dial_timeout,
                                                   [this] { return Stopping(); });
  if (!connected.ok()) return End::kRetry;
  grpc::ClientContext ctx;
  {
    std::lock_guard lock(mu);
    if (stopping) return End::kOver;
    context = &ctx;
  }
  created = false;
  watch_id = -1;
  std::unique_ptr<grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>> stream =
      ci.endpoints[index].watch->Watch(&ctx);
  End end = End::kRetry;
  if (stream->Write(CreateRequest())) {
    pb::WatchResponse response;
    while (stream->Read(&response)) {
      const Next next = Handle(response, index, established);
      if (next == Next::kContinue) continue;
      if (next == Next::kOver) end = End::kOver;
      ctx.TryCancel();
      break;
    }
  }
  const grpc::Status status = stream->Finish();
  {
    std::lock_guard lock(mu);
    context = nullptr;
  }
  (void)status;  // why it ended does not change what follows: resume elsewhere
  return end;
}

Watcher::Impl::Next Watcher::Impl::Handle(const pb::WatchResponse& response, size_t index,
                                          bool* established) {
  if (!created) {
    if (!response.created()) return Next::kRestart;  // not the protocol: start over
    if (response.canceled() && response.compact_revision() <= 0) {
      // Refused (an empty range, say): asking again gets the same answer.
      if (callbacks.failed) {
        callbacks.failed(absl::InvalidArgumentError(
            absl::StrCat("etcdserver: watch refused: ", response.cancel_reason())));
      }
      return Next::kOver;
    }
    created = true;
    watch_id = response.watch_id();
    *established = true;
    // A watch from "now" resumes after the revision it was created at.
    if (next_revision == 0) next_revision = response.header().revision() + 1;
    if (!response.canceled() && callbacks.connected) {
      callbacks.connected(client.impl().endpoints[index].target);
    }
  } else if (response.watch_id() != watch_id) {
    return Next::kContinue;  // not about our watch (a stream-wide progress answer)
  }
  if (response.canceled()) {
    if (response.compact_revision() > 0) {
      if (callbacks.compacted) callbacks.compacted(response.compact_revision());
      return Next::kOver;
    }
    return Next::kRestart;  // canceled by the server for another reason: watch again
  }
  if (response.events_size() == 0) return Next::kContinue;  // progress: nothing to do
  std::vector<mvccpb::Event> events;
  events.reserve(static_cast<size_t>(response.events_size()));
  int64_t last = next_revision - 1;
  for (const mvccpb::Event& e : response.events()) {
    const int64_t revision = e.kv().mod_revision();
    // Bytes from the network: an event already delivered, or out of order, is dropped:
    // never delivered twice, never backwards.
    if (revision < next_revision || revision < last) continue;
    last = revision;
    events.push_back(e);
  }
  if (events.empty()) return Next::kContinue;
  next_revision = last + 1;
  delivered.store(last, std::memory_order_release);
  if (callbacks.events) callbacks.events(events, response.header().revision());
  return Next::kContinue;
}

Watcher::Watcher(Client& client, WatchOptions options, WatchCallbacks callbacks)
    : impl_(std::make_unique<Impl>(client, std::move(options), std::move(callbacks))) {
  impl_->thread = std::thread([impl = impl_.get()] { impl->Run(); });
}

Watcher::~Watcher() { impl_->Stop(); }

int64_t Watcher::delivered_revision() const {
  return impl_->delivered.load(std::memory_order_acquire);
}

}  // namespace keel::client
