#include "net/etcd_api.h"

#include <array>
#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/etcdpb/rpc.grpc.pb.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/server/kv_server.h"
#include "core/server/node.h"
#include "net/metrics.h"

namespace keel::net {
namespace pb = etcdserverpb;

grpc::Status ToGrpcStatus(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  const std::string message(st.message());
  const auto code = static_cast<grpc::StatusCode>(st.code());
  // Already etcd's words (the keyspace's and the lease errors, "not leader", ...).
  if (absl::StartsWith(message, "etcdserver: ")) return grpc::Status(code, message);
  switch (st.code()) {
    case absl::StatusCode::kDeadlineExceeded:
      // The outcome is unknown: etcd's ErrTimeout, which clients retry or report.
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "etcdserver: request timed out");
    case absl::StatusCode::kUnavailable:
      // Refused before it was proposed (Raft's "no leader; term=N", or a leadership
      // transfer under way): etcd's ErrNoLeader, which clients may retry even for writes.
      if (absl::StartsWith(message, "no leader") || absl::StrContains(message, "leadership transfer")) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "etcdserver: no leader");
      }
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "etcdserver: server stopped");
    case absl::StatusCode::kResourceExhausted:
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "etcdserver: too many requests");
    default:
      return grpc::Status(code, message);
  }
}

namespace {

// A slice over an encoded event's bytes (no copy) that holds them alive: a reference of
// its own, dropped when gRPC drops the slice's last one, on whatever thread that is.
grpc::Slice SharedSlice(const watch::EncodedEvent& bytes) {
  KEEL_ASSERT(bytes != nullptr && !bytes->empty());
  auto* owner = new watch::EncodedEvent(bytes);
  return grpc::Slice(
      const_cast<char*>((*owner)->data()), (*owner)->size(),
      [](void* p) { delete static_cast<watch::EncodedEvent*>(p); }, owner);
}

grpc::Slice SerializedSlice(const pb::WatchResponse& response) {
  const size_t size = response.ByteSizeLong();
  grpc::Slice slice(size);  // fresh: this is its only reference, writing to it is fine
  KEEL_ASSERT(response.SerializeWithCachedSizesToArray(const_cast<uint8_t*>(slice.begin())) ==
              slice.end());
  return slice;
}

}  // namespace

WatchWire WatchWire::Whole(const pb::WatchResponse& response) {
  WatchWire wire;
  wire.slices_.push_back(SerializedSlice(response));
  wire.bytes_ = wire.slices_.front().size();
  return wire;
}

grpc::Slice WatchWire::Slices::Get(const watch::EncodedEvent& event) {
  auto it = slices_.find(event.get());
  if (it != slices_.end()) return it->second;
  if (slices_.size() >= kSlicesMax || bytes_ + event->size() > kBytesMax) {
    slices_.clear();  // the rounds that needed them are over, or nearly
    bytes_ = 0;
  }
  bytes_ += event->size();
  return slices_.emplace(event.get(), SharedSlice(event)).first->second;
}

WatchWire WatchWire::Events(const pb::WatchResponse& meta,
                            std::span<const watch::EncodedEvent> events, Slices* slices) {
  KEEL_ASSERT(meta.events_size() == 0 && !events.empty());
  WatchWire wire;
  wire.meta_size_ = meta.ByteSizeLong();
  KEEL_ASSERT(wire.meta_size_ > 0 && wire.meta_size_ <= kMetaMax);
  KEEL_ASSERT(meta.SerializeWithCachedSizesToArray(wire.meta_.data()) ==
              wire.meta_.data() + wire.meta_size_);
  wire.bytes_ = wire.meta_size_;
  // Room for a few merges before the array moves.
  wire.slices_.reserve(std::max<size_t>(8, 1 + events.size()));
  wire.slices_.emplace_back();  // meta_'s, once written
  for (const watch::EncodedEvent& e : events) {
    wire.slices_.push_back(slices != nullptr ? slices->Get(e) : SharedSlice(e));
    wire.bytes_ += e->size();
  }
  if (!meta.created() && !meta.canceled() && meta.compact_revision() == 0 && !meta.fragment()) {
    wire.merge_key_ = meta.watch_id();
  }
  return wire;
}

void WatchWire::Merge(WatchWire&& later) {
  KEEL_ASSERT(merge_key_ && later.merge_key_ == merge_key_ && !buffer_ && !later.buffer_);
  KEEL_ASSERT(meta_size_ > 0 && later.meta_size_ > 0);
  // Both heads are responses without events: the later one replaces this one's (its
  // header wins); the events append, this one's first.
  bytes_ += later.bytes_ - meta_size_;
  meta_ = later.meta_;
  meta_size_ = later.meta_size_;
  slices_.insert(slices_.end(), std::make_move_iterator(later.slices_.begin() + 1),
                 std::make_move_iterator(later.slices_.end()));
  later.slices_.clear();
  later.bytes_ = 0;
}

const grpc::ByteBuffer& WatchWire::buffer() {
  if (!buffer_) {
    if (meta_size_ > 0) slices_.front() = grpc::Slice(meta_.data(), meta_size_);
    buffer_.emplace(slices_.data(), slices_.size());
  }
  return *buffer_;
}

namespace {

// grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}: the
// counters are created on first use of each code and cached (the hot path is one atomic
// load and one atomic add).
class HandledCounter {
 public:
  HandledCounter(Metrics& metrics, std::string type, std::string service, std::string method)
      : metrics_(metrics), type_(std::move(type)), service_(std::move(service)),
        method_(std::move(method)),
        started_(metrics_.AddCounter("grpc_server_started_total",
                                     "Total number of RPCs started on the server.",
                                     MethodLabels())) {}
  void Started() { started_.Inc(); }
  void Handled(grpc::StatusCode code) {
    const size_t i = static_cast<size_t>(code) < kCodes ? static_cast<size_t>(code) : 2;
    Counter* c = counters_[i].load(std::memory_order_acquire);
    if (c == nullptr) {
      Labels labels = MethodLabels();
      labels.emplace_back("grpc_code", CodeName(static_cast<grpc::StatusCode>(i)));
      c = &metrics_.AddCounter("grpc_server_handled_total",
                               "Total number of RPCs completed on the server, regardless of "
                               "success or failure.",
                               labels);
      counters_[i].store(c, std::memory_order_release);
    }
    c->Inc();
  }

 private:
  static constexpr size_t kCodes = 17;
  static std::string CodeName(grpc::StatusCode code) {
    static const std::array<const char*, kCodes> names = {
        "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
        "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
        "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
        "Unauthenticated"};
    return names[static_cast<size_t>(code)];
  }
  Labels MethodLabels() const {
    return {{"grpc_type", type_}, {"grpc_service", service_}, {"grpc_method", method_}};
  }

  Metrics& metrics_;
  std::string type_, service_, method_;
  Counter& started_;  // the registry keeps its counters alive
  std::array<std::atomic<Counter*>, kCodes> counters_{};
};

// What every service shares: the io thread to post to, the member's parts, and the
// registry of open streams (for a graceful stop).
struct Shared {
  explicit Shared(EtcdApiContext c) : context(std::move(c)) {}

  void Post(std::function<void()> fn) { boost::asio::post(context.io, std::move(fn)); }

  server::KvServer& server() { return context.server; }
  int64_t Revision() const;

  EtcdApiContext context;
  // io thread only:
  struct StreamHooks {
    std::function<void(grpc::Status)> finish;  // asks the stream to finish
  };
  std::map<uint64_t, StreamHooks> watch_streams;
  std::map<uint64_t, StreamHooks> keepalive_streams;
  WatchWire::Slices event_slices;  // the watch fan-out's
  // Any thread: the thread unary calls are finished on (Completion). Drained before the
  // API goes (EtcdApi's destructor), after gRPC's server, which waits for every call.
  boost::asio::thread_pool replies{1};
  uint64_t next_stream_key = 1;
  bool closing = false;

  // Where a leader-only lease call (KeepAlive, TimeToLive) goes: served here, forwarded
  // to the leader's client URL, or refused (no leader, or its URL is not known yet).
  struct LeaderRoute {
    NodeId leader;
    pb::Lease::Stub* stub = nullptr;  // null: serve here
    absl::Status refusal;
  };
  LeaderRoute RouteToLeader();
  std::map<std::string, std::unique_ptr<pb::Lease::Stub>> lease_stubs;  // by host:port
};

Shared::LeaderRoute Shared::RouteToLeader() {
  const server::Node& node = context.node;
  LeaderRoute route{.leader = node.raft().leader()};
  if (route.leader.IsZero()) {
    route.refusal = absl::UnavailableError("etcdserver: no leader");
    return route;
  }
  if (route.leader == node.raft().id()) return route;
  for (const MemberInfo& m : context.members()) {
    if (m.id != route.leader || m.client_urls.empty()) continue;
    // The URLs were validated when the peer said them (http://host:port).
    std::string target = m.client_urls.front().substr(std::string_view("http://").size());
    std::unique_ptr<pb::Lease::Stub>& stub = lease_stubs[target];
    if (!stub) {
      stub = pb::Lease::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
    }
    route.stub = stub.get();
    return route;
  }
  route.refusal = absl::UnavailableError("etcdserver: leader changed");
  return route;
}

// Completes one unary call: the response and the call's metric on the io thread, then
// Finish with etcd's status on the reply thread (gRPC's Finish sends inline, on the
// calling thread: a fifth of the io thread's time under a write load).
template <typename Response>
server::KvServer::Reply<Response> Completion(Shared& shared, grpc::ServerUnaryReactor* reactor,
                                             Response* out, HandledCounter* counter) {
  return [&shared, reactor, out, counter](absl::StatusOr<Response> result) {
    grpc::Status status = grpc::Status::OK;
    if (result.ok()) {
      *out = std::move(*result);
    } else {
      status = ToGrpcStatus(result.status());
    }
    counter->Handled(status.error_code());
    boost::asio::post(shared.replies, [reactor, status = std::move(status)] {
      reactor->Finish(status);
    });
  };
}

// A unary call served by one KvServer method on the io thread.
template <typename Request, typename Response>
grpc::ServerUnaryReactor* ServeUnary(
    Shared& shared, grpc::CallbackServerContext* ctx, const Request* request, Response* out,
    void (server::KvServer::*method)(const Request&, server::KvServer::Reply<Response>),
    HandledCounter& counter) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  counter.Started();
  shared.Post([&shared, request, out, method, reactor, &counter] {
    (shared.server().*method)(*request, Completion(shared, reactor, out, &counter));
  });
  return reactor;
}

// ---- bidi streams ---------------------------------------------------------------------
//
// Coalescing: while a write is in flight, responses queue; a watch's event response may
// be merged into the same watch's last queued, unsent one, so that a busy stream writes
// a few large responses instead of one per applied batch (etcd's watch batches in its
// send loop likewise). A watcher's events stay in revision order: they only ever join
// the latest queued response of that watcher, and no merge crosses a control response
// (created, canceled, progress), which could promise a revision.
//
// Outgoing<Message>: how a stream's queued messages are measured, merged and written.
// By default a typed protobuf response, written as it is, never merged.
template <typename Message>
struct Outgoing {
  using Wire = Message;  // what gRPC writes
  static size_t Bytes(const Message& m) { return m.ByteSizeLong(); }
  // Messages with the same key may merge (Coalescing above); no key: it never merges.
  static std::optional<int64_t> MergeKey(const Message&) { return std::nullopt; }
  static void Merge(Message&, Message&&) {}
  // Valid until the message is dropped; once called, the message no longer merges.
  static const Wire& ForWrite(Message& m) { return m; }
};

// The watch stream's responses: bytes (WatchWire), merged by concatenation.
template <>
struct Outgoing<WatchWire> {
  using Wire = grpc::ByteBuffer;
  static size_t Bytes(const WatchWire& m) { return m.bytes(); }
  static std::optional<int64_t> MergeKey(const WatchWire& m) { return m.merge_key(); }
  // Requires: equal keys; `later` came after `into`.
  static void Merge(WatchWire& into, WatchWire&& later) { into.Merge(std::move(later)); }
  static const Wire& ForWrite(WatchWire& m) { return m.buffer(); }
};
//
// A bidi stream's outbox: the io thread pushes responses, gRPC writes them one at a time.
// The reactor is deleted in OnDone, which gRPC calls only after Finish and after every
// operation completed; Finish is called only when no write is in flight, so a push that
// started a write always finds the reactor alive. After OnDone the outbox (shared with
// the io thread) drops everything. `WireRequest` is what gRPC reads (a request, or its
// bytes), `Message` what the outbox queues (Outgoing<Message>::Wire is what it writes).
template <typename WireRequest, typename Message>
class BidiStream : public grpc::ServerBidiReactor<WireRequest, typename Outgoing<Message>::Wire> {
 public:
  using Out = Outgoing<Message>;

  BidiStream(Shared& shared, size_t responses_max, size_t bytes_max, HandledCounter& counter)
      : shared_(shared), outbox_(std::make_shared<Outbox>()), counter_(counter) {
    outbox_->reactor = this;
    outbox_->responses_max = responses_max;
    outbox_->bytes_max = bytes_max;
    counter_.Started();
  }

  struct Queued {
    Message message;
    size_t bytes;  // its size when queued (merges add theirs)
  };
  struct Outbox {
    std::mutex mu;
    BidiStream* reactor = nullptr;  // null once done
    std::deque<Queued> queue;       // front() is being written while `writing`
    uint64_t popped = 0;            // responses ever taken off the front
    // Coalescing: by Key, the position (popped + index) of its last queued response.
    std::unordered_map<int64_t, uint64_t> mergeable;
    size_t bytes = 0;
    size_t responses_max = 0;
    size_t bytes_max = 0;
    bool writing = false;
    bool finish_requested = false;
    bool finished = false;
    grpc::Status finish_status;
  };

  // Any thread. Returns false (the response was not taken) when `droppable` and the
  // outbox is full; otherwise takes it (or drops it silently if the stream is ending).
  static bool Push(const std::shared_ptr<Outbox>& box, Message message, bool droppable) {
    BidiStream* start = nullptr;
    const typename Out::Wire* first = nullptr;
    const size_t size = Out::Bytes(message);
    const std::optional<int64_t> key = Out::MergeKey(message);
    {
      std::lock_guard lock(box->mu);
      if (box->reactor == nullptr || box->finish_requested) return true;
      if (droppable && !box->queue.empty() &&
          (box->queue.size() >= box->responses_max || box->bytes + size > box->bytes_max)) {
        return false;
      }
      box->bytes += size;
      if (!key) box->mergeable.clear();  // no merge crosses it
      if (key) {
        auto it = box->mergeable.find(*key);
        const uint64_t unsent_from = box->popped + (box->writing ? 1 : 0);
        if (it != box->mergeable.end() && it->second >= unsent_from) {
          Queued& into = box->queue[it->second - box->popped];
          Out::Merge(into.message, std::move(message));
          into.bytes += size;
          return true;
        }
        box->mergeable[*key] = box->popped + box->queue.size();
      }
      box->queue.push_back(Queued{std::move(message), size});
      if (!box->writing) {
        box->writing = true;
        start = box->reactor;
        // deque push_back keeps references valid; being written, it takes no more merges
        first = &Out::ForWrite(box->queue.front().message);
      }
    }
    if (start != nullptr) start->StartWrite(first);
    return true;
  }

  // Any thread: finishes the stream. `drain`: after every response already queued was
  // written (a clean end); otherwise only the write in flight completes and the rest is
  // dropped (the stream is being torn down).
  static void RequestFinish(const std::shared_ptr<Outbox>& box, grpc::Status status,
                            bool drain = false) {
    BidiStream* finish_now = nullptr;
    {
      std::lock_guard lock(box->mu);
      if (box->reactor == nullptr || box->finish_requested) return;
      box->finish_requested = true;
      box->finish_status = std::move(status);
      if (!drain) DropUnsent(*box);
      // Responses are written back to back: nothing queued means nothing in flight.
      if (!box->writing) {
        box->finished = true;
        finish_now = box->reactor;
      }
    }
    if (finish_now != nullptr) finish_now->FinishWith(box->finish_status);
  }

  void OnWriteDone(bool ok) override {
    const typename Out::Wire* next = nullptr;
    bool finish = false;
    {
      std::lock_guard lock(outbox_->mu);
      outbox_->bytes -= std::min(outbox_->bytes, outbox_->queue.front().bytes);
      outbox_->queue.pop_front();
      ++outbox_->popped;
      if (!ok) {
        // The client is gone: nothing more can be written.
        if (!outbox_->finish_requested) {
          outbox_->finish_requested = true;
          outbox_->finish_status = grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
        }
        outbox_->popped += outbox_->queue.size();
        outbox_->queue.clear();
        outbox_->mergeable.clear();
        outbox_->bytes = 0;
      }
      if (!outbox_->queue.empty()) {
        next = &Out::ForWrite(outbox_->queue.front().message);
      } else {
        outbox_->writing = false;
        if (outbox_->finish_requested && !outbox_->finished) {
          outbox_->finished = true;
          finish = true;
        }
      }
    }
    if (next != nullptr) this->StartWrite(next);
    if (finish) FinishWith(outbox_->finish_status);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client closed its side (or the call ended).
      ClientHalfClosed();
      return;
    }
    // Handled (posted to the io thread) before the next read starts, so that the end of
    // the stream, which that read may report at once on another thread, comes after it.
    const bool more = HandleRequest(std::move(request_));
    request_.Clear();
    if (more) this->StartRead(&request_);
  }

  void OnCancel() override {
    RequestFinish(outbox_, grpc::Status(grpc::StatusCode::CANCELLED, "canceled by the client"));
  }

  void OnDone() override {
    {
      std::lock_guard lock(outbox_->mu);
      outbox_->reactor = nullptr;
      outbox_->queue.clear();
      outbox_->mergeable.clear();
    }
    Closed();
    delete this;
  }

 protected:
  void Begin() { this->StartRead(&request_); }
  // gRPC thread: one request from the client. Returns false if the stream reads no more
  // (it was refused: the handler asked the stream to finish).
  virtual bool HandleRequest(WireRequest request) = 0;
  // gRPC thread, from OnDone: the stream is over (release io-thread state by posting).
  virtual void Closed() = 0;
  // gRPC thread: the client will send nothing more. etcd keeps serving a half-closed
  // watch stream (it ends when the client cancels it), so by default nothing happens.
  virtual void ClientHalfClosed() {}

  Shared& shared_;
  std::shared_ptr<Outbox> outbox_;

 private:
  // Drops every queued response but the one being written (gRPC holds a pointer to it).
  static void DropUnsent(Outbox& box) {
    box.mergeable.clear();
    if (box.writing) {
      box.queue.erase(box.queue.begin() + 1, box.queue.end());
      box.bytes = box.queue.front().bytes;
    } else {
      box.popped += box.queue.size();
      box.queue.clear();
      box.bytes = 0;
    }
  }

  void FinishWith(const grpc::Status& status) {
    counter_.Handled(status.error_code());
    this->Finish(status);
  }

  HandledCounter& counter_;
  WireRequest request_;
};

grpc::Status StoppedStatus() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "etcdserver: server stopped");
}

// Watch, served raw: requests are parsed here, responses written as WatchWire bytes.
class WatchStream final : public BidiStream<grpc::ByteBuffer, WatchWire> {
 public:
  using Base = BidiStream<grpc::ByteBuffer, WatchWire>;

  WatchStream(Shared& shared, HandledCounter& counter)
      : Base(shared, shared.context.watch_outbox_responses_max,
             shared.context.watch_outbox_bytes_max, counter) {
    shared_.Post([&shared = shared_, box = outbox_, state = state_] {
      if (shared.closing) return RequestFinish(box, StoppedStatus());
      // Only event responses may be refused (the hub catches the watcher up later); they
      // come encoded, everything else whole.
      absl::StatusOr<watch::WatchHub::StreamId> id = shared.server().OpenWatchStream(
          [box](pb::WatchResponse& response) {
            const bool droppable = !response.created() && !response.canceled() &&
                                   response.events_size() > 0;
            return Push(box, WatchWire::Whole(response), droppable);
          },
          [&shared, box](pb::WatchResponse& meta, std::span<const watch::EncodedEvent> events) {
            return Push(box, WatchWire::Events(meta, events, &shared.event_slices),
                        /*droppable=*/true);
          });
      if (!id.ok()) return RequestFinish(box, ToGrpcStatus(id.status()));
      state->hub_stream = *id;
      state->key = shared.next_stream_key++;
      shared.watch_streams[state->key] = {
          [box](grpc::Status status) { RequestFinish(box, std::move(status)); }};
    });
    Begin();
  }

 private:
  // io-thread state, shared with the posted work (which may run after OnDone).
  struct State {
    std::optional<watch::WatchHub::StreamId> hub_stream;
    uint64_t key = 0;
  };

  bool HandleRequest(grpc::ByteBuffer bytes) override {
    // Untrusted bytes: a request that does not parse ends the stream (InvalidArgument:
    // the client's fault), and nothing more is read from it.
    pb::WatchRequest request;
    if (!grpc::SerializationTraits<pb::WatchRequest>::Deserialize(&bytes, &request).ok()) {
      RequestFinish(outbox_, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                          "etcdserver: malformed watch request"));
      return false;
    }
    shared_.Post([&shared = shared_, state = state_, request = std::move(request)] {
      if (!state->hub_stream) return;  // refused or closed
      server::KvServer& server = shared.server();
      switch (request.request_union_case()) {
        case pb::WatchRequest::kCreateRequest:
          server.WatchCreate(*state->hub_stream, request.create_request());
          break;
        case pb::WatchRequest::kCancelRequest:
          server.WatchCancel(*state->hub_stream, request.cancel_request().watch_id());
          break;
        case pb::WatchRequest::kProgressRequest:
          server.WatchProgress(*state->hub_stream);
          break;
        default:
          break;  // etcd ignores an empty request
      }
    });
    return true;
  }

  void Closed() override {
    shared_.Post([&shared = shared_, state = state_] {
      if (!state->hub_stream) return;
      shared.server().CloseWatchStream(*state->hub_stream);
      shared.watch_streams.erase(state->key);
      state->hub_stream.reset();
    });
  }

  std::shared_ptr<State> state_ = std::make_shared<State>();
};

using KeepAliveBase = BidiStream<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>;

// A follower's keepalive stream forwarded to the leader: one upstream stream per client
// stream, so ordering and flow control carry through. The leader's answers go straight
// to the client's outbox. If the upstream ends (the leader stopped or lost leadership),
// the client's stream ends with Unavailable and the client opens a new one, which goes
// to whoever leads then (clientv3 retries keepalive streams).
class KeepAliveUpstream final
    : public grpc::ClientBidiReactor<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse> {
 public:
  // The io thread's handle: the reactor deletes itself when done, so every use goes
  // through the handle, under its mutex.
  struct Handle {
    std::mutex mu;
    KeepAliveUpstream* reactor = nullptr;
  };

  static std::shared_ptr<Handle> Open(pb::Lease::Stub* stub,
                                      std::shared_ptr<KeepAliveBase::Outbox> client) {
    auto handle = std::make_shared<Handle>();
    auto* reactor = new KeepAliveUpstream(handle, std::move(client));
    handle->reactor = reactor;
    stub->async()->LeaseKeepAlive(&reactor->context_, reactor);
    reactor->StartRead(&reactor->response_);
    reactor->StartCall();
    return handle;
  }

  // io thread. False if the upstream is gone or too far behind.
  static bool Send(const std::shared_ptr<Handle>& handle, int64_t id) {
    std::lock_guard handle_lock(handle->mu);
    KeepAliveUpstream* r = handle->reactor;
    if (r == nullptr) return false;
    const pb::LeaseKeepAliveRequest* start = nullptr;
    {
      std::lock_guard lock(r->mu_);
      if (r->writes_done_ || r->pending_.size() >= kPendingMax) return false;
      r->pending_.emplace_back().set_id(id);
      if (!r->writing_) {
        r->writing_ = true;
        start = &r->pending_.front();
      }
    }
    if (start != nullptr) r->StartWrite(start);
    return true;
  }

  // io thread: the client half-closed: so does the upstream, once its writes are out;
  // the leader then ends it with OK, and so ends the client's stream.
  static void CloseWrites(const std::shared_ptr<Handle>& handle) {
    std::lock_guard handle_lock(handle->mu);
    KeepAliveUpstream* r = handle->reactor;
    if (r == nullptr) return;
    bool now = false;
    {
      std::lock_guard lock(r->mu_);
      if (r->writes_done_) return;
      r->writes_done_ = true;
      now = !r->writing_;
    }
    if (now) r->StartWritesDone();
  }

  // io thread: ends the upstream (the client's stream closed, or the leader changed).
  static void Cancel(const std::shared_ptr<Handle>& handle) {
    std::lock_guard handle_lock(handle->mu);
    if (handle->reactor != nullptr) {
      handle->reactor->canceled_ = true;
      handle->reactor->context_.TryCancel();
    }
  }

  void OnWriteDone(bool ok) override {
    const pb::LeaseKeepAliveRequest* next = nullptr;
    bool writes_done = false;
    {
      std::lock_guard lock(mu_);
      pending_.pop_front();
      if (ok && !pending_.empty()) {
        next = &pending_.front();
      } else {
        writing_ = false;
        writes_done = ok && writes_done_;
      }
    }
    if (next != nullptr) StartWrite(next);
    if (writes_done) StartWritesDone();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows with the status
    KeepAliveBase::Push(client_, response_, /*droppable=*/false);
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    {
      std::lock_guard handle_lock(handle_->mu);
      handle_->reactor = nullptr;
    }
    if (!canceled_) {
      bool writes_done;
      {
        std::lock_guard lock(mu_);
        writes_done = writes_done_;
      }
      if (status.ok() && writes_done) {
        KeepAliveBase::RequestFinish(client_, grpc::Status::OK, /*drain=*/true);  // as asked
      } else {
        // The leader went away under this stream: the client retries elsewhere.
        KeepAliveBase::RequestFinish(
            client_, status.ok() || status.error_code() == grpc::StatusCode::CANCELLED
                         ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "etcdserver: leader changed")
                         : status);
      }
    }
    delete this;
  }

 private:
  static constexpr size_t kPendingMax = 4096;

  KeepAliveUpstream(std::shared_ptr<Handle> handle, std::shared_ptr<KeepAliveBase::Outbox> client)
      : handle_(std::move(handle)), client_(std::move(client)) {}

  std::shared_ptr<Handle> handle_;
  std::shared_ptr<KeepAliveBase::Outbox> client_;
  grpc::ClientContext context_;
  pb::LeaseKeepAliveResponse response_;
  std::mutex mu_;
  std::deque<pb::LeaseKeepAliveRequest> pending_;  // front() is being written while writing_
  bool writing_ = false;
  bool writes_done_ = false;  // the client half-closed
  std::atomic<bool> canceled_{false};
};

class KeepAliveStream final
    : public BidiStream<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse> {
 public:
  using Base = BidiStream<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>;

  // Keepalives in flight per stream are bounded by the outbox: a client that floods
  // without reading gets ResourceExhausted.
  static constexpr size_t kOutboxMax = 4096;

  KeepAliveStream(Shared& shared, HandledCounter& counter)
      : Base(shared, kOutboxMax, 16 << 20, counter) {
    shared_.Post([&shared = shared_, box = outbox_, state = state_] {
      if (shared.closing) return RequestFinish(box, StoppedStatus());
      state->key = shared.next_stream_key++;
      state->open = true;
      shared.keepalive_streams[state->key] = {
          [box](grpc::Status status) { RequestFinish(box, std::move(status)); }};
    });
    Begin();
  }

 private:
  struct State {
    uint64_t key = 0;
    bool open = false;
    std::shared_ptr<KeepAliveUpstream::Handle> upstream;  // while forwarding
    NodeId upstream_leader;
    size_t local_in_flight = 0;  // keepalives this member is answering
    bool client_done = false;    // half-closed: finish once everything is answered
  };

  // etcd ends a keepalive stream with OK when the client half-closes, after answering
  // what it sent (python3-etcd3's refresh sends one request and reads to the end).
  void ClientHalfClosed() override {
    shared_.Post([box = outbox_, state = state_] {
      if (!state->open || state->client_done) return;
      state->client_done = true;
      if (state->upstream) return KeepAliveUpstream::CloseWrites(state->upstream);
      if (state->local_in_flight == 0) RequestFinish(box, grpc::Status::OK, /*drain=*/true);
    });
  }

  bool HandleRequest(pb::LeaseKeepAliveRequest request) override {
    const int64_t id = request.id();
    shared_.Post([&shared = shared_, box = outbox_, state = state_, id] {
      if (!state->open) return;
      Shared::LeaderRoute route = shared.RouteToLeader();
      if (!route.refusal.ok()) return RequestFinish(box, ToGrpcStatus(route.refusal));
      if (state->upstream && route.leader != state->upstream_leader) {
        // Leadership moved: the old upstream's answers would come from a deposed leader.
        KeepAliveUpstream::Cancel(state->upstream);
        state->upstream.reset();
      }
      if (route.stub != nullptr) {
        if (!state->upstream) {
          state->upstream = KeepAliveUpstream::Open(route.stub, box);
          state->upstream_leader = route.leader;
        }
        if (!KeepAliveUpstream::Send(state->upstream, id)) {
          RequestFinish(box, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                          "etcdserver: leader changed"));
        }
        return;
      }
      ++state->local_in_flight;
      shared.server().LeaseKeepAlive(id, [&shared, box, state, id](absl::StatusOr<int64_t> ttl) {
        --state->local_in_flight;
        AnswerKeepAlive(shared, box, id, ttl);
        // The last answer for a half-closed client ends the stream, after that answer.
        if (state->client_done && state->local_in_flight == 0 && !state->upstream) {
          RequestFinish(box, grpc::Status::OK, /*drain=*/true);
        }
      });
    });
    return true;
  }

  static void AnswerKeepAlive(Shared& shared, const std::shared_ptr<KeepAliveBase::Outbox>& box,
                              int64_t id, const absl::StatusOr<int64_t>& ttl) {
    if (!ttl.ok() && !absl::IsNotFound(ttl.status())) {
      return RequestFinish(box, ToGrpcStatus(ttl.status()));
    }
    // etcd answers a keepalive for a lease that is gone with TTL 0, not an error.
    pb::LeaseKeepAliveResponse response;
    shared.server().FillHeader(response.mutable_header());
    response.mutable_header()->set_revision(shared.Revision());
    response.set_id(id);
    response.set_ttl(ttl.ok() ? *ttl : 0);
    Push(box, std::move(response), /*droppable=*/false);
  }

  void Closed() override {
    shared_.Post([&shared = shared_, state = state_] {
      if (!state->open) return;
      state->open = false;
      if (state->upstream) KeepAliveUpstream::Cancel(state->upstream);
      state->upstream.reset();
      shared.keepalive_streams.erase(state->key);
    });
  }

  std::shared_ptr<State> state_ = std::make_shared<State>();
};

int64_t Shared::Revision() const {
  // The member's applied revision: what etcd puts in headers it fills itself.
  return context.server.revision();
}

// ---- services ---------------------------------------------------------------------------

class KvService final : public pb::KV::CallbackService {
 public:
  explicit KvService(Shared& shared)
      : shared_(shared),
        range_(shared.context.metrics, "unary", "etcdserverpb.KV", "Range"),
        put_(shared.context.metrics, "unary", "etcdserverpb.KV", "Put"),
        delete_range_(shared.context.metrics, "unary", "etcdserverpb.KV", "DeleteRange"),
        txn_(shared.context.metrics, "unary", "etcdserverpb.KV", "Txn"),
        compact_(shared.context.metrics, "unary", "etcdserverpb.KV", "Compact") {}

  grpc::ServerUnaryReactor* Range(grpc::CallbackServerContext* ctx, const pb::RangeRequest* r,
                                  pb::RangeResponse* out) override {
    return ServeUnary(shared_, ctx, r, out, &server::KvServer::Range, range_);
  }
  grpc::ServerUnaryReactor* Put(grpc::CallbackServerContext* ctx, const pb::PutRequest* r,
                                pb::PutResponse* out) override {
    return ServeUnary(shared_, ctx, r, out, &server::KvServer::Put, put_);
  }
  grpc::ServerUnaryReactor* DeleteRange(grpc::CallbackServerContext* ctx,
                                        const pb::DeleteRangeRequest* r,
                                        pb::DeleteRangeResponse* out) override {
    return ServeUnary(shared_, ctx, r, out, &server::KvServer::DeleteRange, delete_range_);
  }
  grpc::ServerUnaryReactor* Txn(grpc::CallbackServerContext* ctx, const pb::TxnRequest* r,
                                pb::TxnResponse* out) override {
    return ServeUnary(shared_, ctx, r, out, &server::KvServer::Txn, txn_);
  }
  grpc::ServerUnaryReactor* Compact(grpc::CallbackServerContext* ctx,
                                    const pb::CompactionRequest* r,
                                    pb::CompactionResponse* out) override {
    return ServeUnary(shared_, ctx, r, out, &server::KvServer::Compact, compact_);
  }

 private:
  Shared& shared_;
  HandledCounter range_, put_, delete_range_, txn_, compact_;
};

// Watch's one method, raw: bytes in and out (WatchStream).
class WatchService final : public pb::Watch::WithRawCallbackMethod_Watch<pb::Watch::Service> {
 public:
  explicit WatchService(Shared& shared)
      : shared_(shared), watch_(shared.context.metrics, "bidi_stream", "etcdserverpb.Watch",
                                "Watch") {}

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Watch(
      grpc::CallbackServerContext*) override {
    return new WatchStream(shared_, watch_);
  }

 private:
  Shared& shared_;
  HandledCounter watch_;
};

class LeaseService final : public pb::Lease::CallbackService {
 public:
  explicit LeaseService(Shared& shared)
      : shared_(shared),
        grant_(shared.context.metrics, "unary", "etcdserverpb.Lease", "LeaseGrant"),
        revoke_(shared.context.metrics, "unary", "etcdserverpb.Lease", "LeaseRevoke"),
        keepalive_(shared.context.metrics, "bidi_stream", "etcdserverpb.Lease",
                   "LeaseKeepAlive"),
        ttl_(shared.context.metrics, "unary", "etcdserverpb.Lease", "LeaseTimeToLive"),
        leases_(shared.context.metrics, "unary", "etcdserverpb.Lease", "LeaseLeases") {}

  grpc::ServerUnaryReactor* LeaseGrant(grpc::CallbackServerContext* ctx,
                                       const pb::LeaseGrantRequest* r,
                                       pb::LeaseGrantResponse* out) override {
    return ServeUnary(shared_, ctx, r, out, &server::KvServer::LeaseGrant, grant_);
  }
  grpc::ServerUnaryReactor* LeaseRevoke(grpc::CallbackServerContext* ctx,
                                        const pb::LeaseRevokeRequest* r,
                                        pb::LeaseRevokeResponse* out) override {
    return ServeUnary(shared_, ctx, r, out, &server::KvServer::LeaseRevoke, revoke_);
  }
  grpc::ServerUnaryReactor* LeaseTimeToLive(grpc::CallbackServerContext* ctx,
                                            const pb::LeaseTimeToLiveRequest* r,
                                            pb::LeaseTimeToLiveResponse* out) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    ttl_.Started();
    shared_.Post([&shared = shared_, r, out, reactor, &counter = ttl_] {
      // etcd's gRPC layer answers a lease that is gone with TTL -1, not an error, and
      // fills the header with this member's view, wherever the answer came from.
      auto finish = [&shared, r, out, reactor, &counter](absl::Status status) {
        if (absl::IsNotFound(status)) {
          out->Clear();
          out->set_id(r->id());
          out->set_ttl(-1);
          status = absl::OkStatus();
        }
        if (status.ok()) {
          shared.server().FillHeader(out->mutable_header());
          out->mutable_header()->set_revision(shared.Revision());
        }
        Completion(shared, reactor, out, &counter)(status.ok() ? absl::StatusOr<pb::LeaseTimeToLiveResponse>(std::move(*out)) : status);
      };
      Shared::LeaderRoute route = shared.RouteToLeader();
      if (route.stub == nullptr) {
        // Served here (this member leads), or refused with the route's reason.
        if (!route.refusal.ok()) return finish(route.refusal);
        return shared.server().LeaseTimeToLive(
            *r, [out, finish](absl::StatusOr<pb::LeaseTimeToLiveResponse> result) {
              if (result.ok()) *out = *std::move(result);
              finish(result.status());
            });
      }
      // Forwarded. The call carries its own deadline (etcd's request timeout) so a
      // vanished leader cannot hold it.
      auto call = std::make_shared<grpc::ClientContext>();
      call->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      route.stub->async()->LeaseTimeToLive(
          call.get(), r, out, [&shared, call, finish](grpc::Status status) {
            absl::Status st = status.ok() ? absl::OkStatus()
                                          : absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                                                         status.error_message());
            shared.Post([finish, st] { finish(st); });
          });
    });
    return reactor;
  }
  grpc::ServerUnaryReactor* LeaseLeases(grpc::CallbackServerContext* ctx,
                                        const pb::LeaseLeasesRequest*,
                                        pb::LeaseLeasesResponse* out) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    leases_.Started();
    shared_.Post([&shared = shared_, out, reactor, &counter = leases_] {
      shared.server().FillHeader(out->mutable_header());
      out->mutable_header()->set_revision(shared.Revision());
      for (int64_t id : shared.server().Leases()) out->add_leases()->set_id(id);
      counter.Handled(grpc::StatusCode::OK);
      reactor->Finish(grpc::Status::OK);
    });
    return reactor;
  }
  grpc::ServerBidiReactor<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>*
  LeaseKeepAlive(grpc::CallbackServerContext*) override {
    return new KeepAliveStream(shared_, keepalive_);
  }

 private:
  Shared& shared_;
  HandledCounter grant_, revoke_, keepalive_, ttl_, leases_;
};

class ClusterService final : public pb::Cluster::CallbackService {
 public:
  explicit ClusterService(Shared& shared)
      : shared_(shared),
        member_list_(shared.context.metrics, "unary", "etcdserverpb.Cluster", "MemberList") {}

  grpc::ServerUnaryReactor* MemberList(grpc::CallbackServerContext* ctx,
                                       const pb::MemberListRequest*,
                                       pb::MemberListResponse* out) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    member_list_.Started();
    shared_.Post([&shared = shared_, out, reactor, &counter = member_list_] {
      // etcd's cluster service fills no revision in its headers.
      shared.server().FillHeader(out->mutable_header());
      for (const MemberInfo& m : shared.context.members()) {
        pb::Member* member = out->add_members();
        member->set_id(m.id.value);
        member->set_name(m.name);
        for (const std::string& url : m.peer_urls) member->add_peerurls(url);
        for (const std::string& url : m.client_urls) member->add_clienturls(url);
      }
      counter.Handled(grpc::StatusCode::OK);
      reactor->Finish(grpc::Status::OK);
    });
    return reactor;
  }

 private:
  Shared& shared_;
  HandledCounter member_list_;
};

class MaintenanceService final : public pb::Maintenance::CallbackService {
 public:
  explicit MaintenanceService(Shared& shared)
      : shared_(shared),
        status_(shared.context.metrics, "unary", "etcdserverpb.Maintenance", "Status"),
        alarm_(shared.context.metrics, "unary", "etcdserverpb.Maintenance", "Alarm") {}

  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* ctx, const pb::StatusRequest*,
                                   pb::StatusResponse* out) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    status_.Started();
    shared_.Post([&shared = shared_, out, reactor, &counter = status_] {
      server::Node& node = shared.context.node;
      shared.server().FillHeader(out->mutable_header());
      out->mutable_header()->set_revision(shared.Revision());
      out->set_version(shared.context.version);
      out->set_leader(node.raft().leader().value);
      out->set_raftindex(node.raft().log().committed().value);
      out->set_raftterm(node.raft().term().value);
      out->set_raftappliedindex(node.raft().log().applied().value);
      if (shared.context.fill_storage_status) shared.context.fill_storage_status(out);
      if (node.raft().leader().IsZero()) out->add_errors("etcdserver: no leader");
      for (NodeId member : node.nospace_alarms()) {
        out->add_errors("memberID:" + std::to_string(member.value) + " alarm:NOSPACE ");
      }
      counter.Handled(grpc::StatusCode::OK);
      reactor->Finish(grpc::Status::OK);
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* Alarm(grpc::CallbackServerContext* ctx, const pb::AlarmRequest* r,
                                  pb::AlarmResponse* out) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    alarm_.Started();
    shared_.Post([&shared = shared_, r, out, reactor, &counter = alarm_] {
      server::Node& node = shared.context.node;
      auto finish = [&shared, out, reactor, &counter](const absl::Status& st) {
        grpc::Status status = ToGrpcStatus(st);
        if (status.ok()) {
          shared.server().FillHeader(out->mutable_header());
          out->mutable_header()->set_revision(shared.Revision());
          for (NodeId member : shared.context.node.nospace_alarms()) {
            pb::AlarmMember* alarm = out->add_alarms();
            alarm->set_memberid(member.value);
            alarm->set_alarm(pb::NOSPACE);
          }
        }
        counter.Handled(status.error_code());
        reactor->Finish(status);
      };
      switch (r->action()) {
        case pb::AlarmRequest::GET:
          return finish(absl::OkStatus());
        case pb::AlarmRequest::DEACTIVATE: {
          // etcd: member 0 or alarm NONE mean "every member" / "every alarm".
          if (r->alarm() != pb::NONE && r->alarm() != pb::NOSPACE) return finish(absl::OkStatus());
          std::vector<NodeId> members;
          for (NodeId m : node.nospace_alarms()) {
            if (r->memberid() == 0 || r->memberid() == m.value) members.push_back(m);
          }
          if (members.empty()) return finish(absl::OkStatus());
          // One proposal per member; the reply waits for the last one.
          auto left = std::make_shared<size_t>(members.size());
          auto first_error = std::make_shared<absl::Status>();
          for (NodeId m : members) {
            node.DisarmAlarm(m, [left, first_error, finish](absl::Status st) {
              if (!st.ok() && first_error->ok()) *first_error = st;
              if (--*left == 0) finish(*first_error);
            });
          }
          return;
        }
        default:
          return finish(absl::UnimplementedError("etcdserver: keel raises alarms itself"));
      }
    });
    return reactor;
  }

 private:
  Shared& shared_;
  HandledCounter status_, alarm_;
};

}  // namespace

struct EtcdApi::Impl {
  explicit Impl(EtcdApiContext context)
      : shared(std::move(context)), kv(shared), watch(shared), lease(shared), cluster(shared),
        maintenance(shared) {}

  Shared shared;
  KvService kv;
  WatchService watch;
  LeaseService lease;
  ClusterService cluster;
  MaintenanceService maintenance;
};

EtcdApi::EtcdApi(EtcdApiContext context) : impl_(std::make_unique<Impl>(std::move(context))) {}
EtcdApi::~EtcdApi() { impl_->shared.replies.join(); }

void EtcdApi::RegisterServices(grpc::ServerBuilder& builder) {
  builder.RegisterService(&impl_->kv);
  builder.RegisterService(&impl_->watch);
  builder.RegisterService(&impl_->lease);
  builder.RegisterService(&impl_->cluster);
  builder.RegisterService(&impl_->maintenance);
}

void EtcdApi::CloseStreams() {
  Shared& shared = impl_->shared;
  shared.closing = true;
  // Finishing only asks: each stream's Closed() erases it later, on this thread.
  for (auto& [key, hooks] : shared.watch_streams) hooks.finish(StoppedStatus());
  for (auto& [key, hooks] : shared.keepalive_streams) hooks.finish(StoppedStatus());
}

size_t EtcdApi::watch_streams() const { return impl_->shared.watch_streams.size(); }
size_t EtcdApi::keepalive_streams() const { return impl_->shared.keepalive_streams.size(); }

}  // namespace keel::net
