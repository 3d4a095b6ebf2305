// keel-bench: a load generator for etcd's v3 gRPC API. It speaks nothing but that API
// (the generated stubs of etcd's rpc.proto), as etcd's tools/benchmark does, so the same
// workloads measure keeld and etcd alike.
//
//   keel-bench [global flags] <workload> [workload flags]        (keel-bench --help)
//
//   put               Put; --key-size --val-size --key-space-size --sequential-keys
//   range KEY [END]   Range; --consistency l|s --limit --prefix
//   txn-put           a Txn of --txn-ops puts; the put flags
//   watch             --watchers on --streams watch one prefix; --puts puts under it
//   lease-keepalive   --leases granted, then --total keepalives on LeaseKeepAlive streams
//   load              fills the store: --total keys, in Txns of --txn-ops puts
//
// Global flags may also follow the workload. Exit codes: 0 every request succeeded;
// 1 something failed (the report still prints, with the errors); 2 bad usage.
//
// Keys are made as etcd's benchmark makes them, so that runs compare with it: --key-size
// bytes, zero but for the key's number written at the front as a zig-zag varint (Go's
// binary.PutVarint), so keys are binary and key number i is the same key in every run.
// (etcd's tool reuses one buffer, so after a longer number its keys keep stray bytes;
// ours are always zero-padded.)
// put draws numbers in [0, --key-space-size) at random, or in turn with
// --sequential-keys; txn-put's Txn number i puts keys i*ops .. i*ops+ops-1 (modulo the
// key space; at random: from a random first key on); load puts keys 0 .. --total-1.
// Values are random bytes, drawn once per run.
//
// How it runs. --clients closed loops (each sends its next request when the previous
// one is answered) share --total requests through one counter. RPCs are asynchronous
// (gRPC's CompletionQueue API): loops are spread round-robin over --workers threads,
// each polling its own completion queue, so 1000 clients are 1000 small state machines,
// not 1000 threads. Loops are spread round-robin over --conns channels, each its own
// TCP connection, and channels round-robin over --endpoints. --rate spaces sends evenly
// over all loops (golang.org/x/time/rate with burst 1, as etcd's tool): a loop reserves
// the next free slot of a shared atomic clock and, if it is not due, waits for it on a
// gRPC alarm; nothing spins. A latency is steady_clock from just before the request is
// handed to gRPC (after its --rate slot) to its answer; it goes into the worker's own
// histogram (bench_stats.h), merged at the end. As in etcd's report, only requests
// answered OK have a latency; throughput counts them over the time from the first
// request sent to the last answer received. A request that fails is counted with its
// message, and its client goes on with the next one. Once requests have failed and none
// has succeeded for 2 * --timeout (a server paused or cut off), the run is abandoned:
// the requests not yet sent are errors too, so a dead server never holds the tool for
// total / clients * --timeout.
//
// watch: --streams Watch streams (round-robin over the conns) carry --watchers watches
// of one fresh prefix (/keel-bench/watch/<random>/); every watch is created, and its
// `created` answer received, before the first put. Then --clients loops put --puts
// values under the prefix (paced by --put-rate; 0: closed loops). A value's first 8
// bytes are its put's send time (steady clock, this process), so every event received
// gives a put-to-event latency. Events must number watchers * puts, each watcher seeing
// every put once and in revision order; anything else is an error. events/s is that
// number over the time from the first put sent to the last event received. The wait for
// the last events lasts --timeout at most. The prefix is deleted at the end.
//
// lease-keepalive: --leases leases (TTL 60 s) are granted first, then each client opens
// a LeaseKeepAlive stream and, closed-loop, sends a keepalive for its next lease and
// waits for the answer; a keepalive not answered within --timeout cancels its stream (a
// new one is opened for the next). The leases are revoked at the end. Grants and
// revokes are not timed.

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/assert.h"
#include "core/etcdpb/rpc.grpc.pb.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/types.h"
#include "net/client/bench_stats.h"
#include "net/client/client.h"

namespace keel::bench {
namespace {

namespace pb = etcdserverpb;
using Clock = std::chrono::steady_clock;

// ---- limits -------------------------------------------------------------------------

constexpr int64_t kClientsMax = 100'000;
constexpr int64_t kConnsMax = 10'000;
constexpr int64_t kWorkersMax = 64;
constexpr int64_t kTotalMax = int64_t{1} << 40;
constexpr int64_t kKeySizeMax = 1 << 20;
constexpr int64_t kValSizeMax = 64 << 20;
constexpr int64_t kTxnOpsMax = 1 << 16;
constexpr int64_t kWatchersMax = 1'000'000;
constexpr int64_t kLeasesMax = 1'000'000;
constexpr double kRateMax = 1e9;
constexpr int64_t kLeaseTtlSeconds = 60;
constexpr size_t kSendTimeBytes = 8;  // a watch put's value starts with its send time

constexpr Nanos kWatchdogPeriod = Millis(100);  // how often streams' deadlines are checked
constexpr Nanos kProgressPeriod = Millis(250);
constexpr Nanos kPollPeriod = Millis(5);                     // watch: waiting for created / events
constexpr Nanos kPaceSlack = std::chrono::microseconds(20);  // a slot this close is due
constexpr int kStalledTimeouts = 2;  // no success for this many --timeouts: abandon a run
constexpr Nanos kQuietAfterFailure = Millis(500);  // watch: a watcher failed; no events since

// ---- small helpers --------------------------------------------------------------------

// splitmix64: small and fast; enough to pick keys and fill values.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) by multiply-shift (bias below n / 2^64). Requires: n > 0.
  uint64_t Below(uint64_t n) {
    KEEL_ASSERT(n > 0);
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }

 private:
  uint64_t state_;
};

uint64_t SeedFromDevice() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

std::string RandomBytes(size_t n, Rng& rng) {
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng.Next());
  return out;
}

// How many distinct keys `key_size` bytes hold: numbers whose zig-zag varint (2n, 7 bits
// a byte) fits, n < 2^(7 * key_size - 1).
int64_t KeysThatFit(int64_t key_size) {
  KEEL_ASSERT(key_size >= 1);
  if (7 * key_size - 1 >= 63) return INT64_MAX;
  return int64_t{1} << (7 * key_size - 1);
}

// etcd's benchmark key: `key` (its size kept) zeroed, then binary.PutVarint(n) at the
// front. Requires: 0 <= n < KeysThatFit(key->size()).
void EncodeKey(int64_t n, std::string* key) {
  KEEL_ASSERT(n >= 0 && n < KeysThatFit(static_cast<int64_t>(key->size())));
  std::fill(key->begin(), key->end(), '\0');
  uint64_t v = static_cast<uint64_t>(n) << 1;  // zig-zag of a non-negative number
  size_t i = 0;
  for (; v >= 0x80; v >>= 7) (*key)[i++] = static_cast<char>((v & 0x7f) | 0x80);
  (*key)[i] = static_cast<char>(v);
}

// The end of the range of keys that start with `prefix` (etcd's GetPrefixRangeEnd): the
// prefix with its last byte below 0xff incremented and what follows dropped; "\0" (every
// key from `prefix` on) when every byte is 0xff.
std::string PrefixEnd(std::string prefix) {
  while (!prefix.empty()) {
    if (static_cast<unsigned char>(prefix.back()) < 0xff) {
      prefix.back() = static_cast<char>(static_cast<unsigned char>(prefix.back()) + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');
}

int64_t SteadyNanos(Clock::time_point t) {
  return std::chrono::duration_cast<Nanos>(t.time_since_epoch()).count();
}

// A watch put's value: its first kSendTimeBytes are the send time, little-endian.
void WriteSendTime(Clock::time_point t, std::string* value) {
  KEEL_ASSERT(value->size() >= kSendTimeBytes);
  const uint64_t ns = static_cast<uint64_t>(SteadyNanos(t));
  for (size_t i = 0; i < kSendTimeBytes; ++i) (*value)[i] = static_cast<char>(ns >> (8 * i));
}

std::optional<Clock::time_point> ReadSendTime(std::string_view value) {
  if (value.size() < kSendTimeBytes) return std::nullopt;
  uint64_t ns = 0;
  for (size_t i = 0; i < kSendTimeBytes; ++i) {
    ns |= uint64_t{static_cast<unsigned char>(value[i])} << (8 * i);
  }
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(Nanos(ns)));
}

// gRPC's deadlines: a monotonic gpr_timespec `t - now` from gRPC's own now.
gpr_timespec GprDeadline(Clock::time_point t) {
  const int64_t left_ns = std::max<int64_t>(0, (t - Clock::now()).count());
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(left_ns, GPR_TIMESPAN));
}

std::string FormatNanos(Nanos d) { return absl::FormatDuration(absl::FromChrono(d)); }

// "UNAVAILABLE: failed to connect to all addresses", as the report lists errors.
std::string Describe(const grpc::Status& s) {
  return absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())), ": ",
                      s.error_message());
}

// ---- connections --------------------------------------------------------------------

// One --conns connection: a channel with a TCP connection of its own, and its stubs.
struct Conn {
  std::string endpoint;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Watch::Stub> watch;
  std::unique_ptr<pb::Lease::Stub> lease;
};

Conn OpenConn(const std::string& endpoint, int64_t index) {
  grpc::ChannelArguments args;
  // gRPC shares a subchannel (one TCP connection) between channels whose arguments are
  // equal, through its global pool. A local pool, and an argument no two of our
  // channels share, give each channel its own connection, as etcd's --conns does.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("keel_bench.conn_index", static_cast<int>(index));
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);  // every attempt is measured: no hidden retries
  args.SetMaxReceiveMessageSize(INT_MAX);   // a large range
  Conn conn;
  conn.endpoint = endpoint;
  conn.channel = grpc::CreateCustomChannel(endpoint, grpc::InsecureChannelCredentials(), args);
  conn.kv = pb::KV::NewStub(conn.channel);
  conn.watch = pb::Watch::NewStub(conn.channel);
  conn.lease = pb::Lease::NewStub(conn.channel);
  return conn;
}

const char* StateName(grpc_connectivity_state state) {
  switch (state) {
    case GRPC_CHANNEL_IDLE:
      return "idle";
    case GRPC_CHANNEL_CONNECTING:
      return "connecting";
    case GRPC_CHANNEL_READY:
      return "ready";
    case GRPC_CHANNEL_TRANSIENT_FAILURE:
      return "failing to connect";
    case GRPC_CHANNEL_SHUTDOWN:
      return "shut down";
  }
  return "unknown";
}

// Every channel connected, or the first that is not within `dial_timeout` (all try at once).
absl::Status AwaitConnected(const std::vector<Conn>& conns, Nanos dial_timeout) {
  for (const Conn& c : conns) c.channel->GetState(/*try_to_connect=*/true);
  const auto deadline = std::chrono::system_clock::now() + dial_timeout;
  for (size_t i = 0; i < conns.size(); ++i) {
    if (conns[i].channel->WaitForConnected(deadline)) continue;
    return absl::UnavailableError(
        absl::StrFormat("cannot connect to %s within %s (conn %d of %d: %s)", conns[i].endpoint,
                        FormatNanos(dial_timeout), i + 1, conns.size(),
                        StateName(conns[i].channel->GetState(false))));
  }
  return absl::OkStatus();
}

// ---- completion-queue plumbing --------------------------------------------------------

// A completion-queue tag: the handler of one kind of completion of one object.
class Tag {
 public:
  virtual void Done(bool ok) = 0;

 protected:
  ~Tag() = default;
};

template <typename T>
class Handler final : public Tag {
 public:
  Handler(T* self, void (T::*method)(bool)) : self_(self), method_(method) {}
  void Done(bool ok) override { (self_->*method_)(ok); }

 private:
  T* const self_;
  void (T::*const method_)(bool);
};

// A stream loop whose requests have a deadline the stream itself cannot carry.
class Deadlined {
 public:
  // On its worker's thread, every kWatchdogPeriod: cancels what is overdue.
  virtual void CheckDeadline(Clock::time_point now) = 0;

 protected:
  ~Deadlined() = default;
};

// One thread polling one completion queue; every handler of its loops runs on it.
class Worker {
 public:
  explicit Worker(size_t index) : index_(index) {}
  ~Worker() { KEEL_ASSERT(!thread_.joinable()); }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  // Requires: no operation of any loop pending on cq() (every loop finished).
  void Stop() {
    cq_.Shutdown();
    thread_.join();
  }
  grpc::CompletionQueue* cq() { return &cq_; }
  size_t index() const { return index_; }

  // This worker's thread only.
  void AddDeadlined(Deadlined* d) { deadlined_.push_back(d); }
  void RemoveDeadlined(Deadlined* d) { std::erase(deadlined_, d); }

 private:
  void Run();

  const size_t index_;
  grpc::CompletionQueue cq_;
  std::thread thread_;
  std::vector<Deadlined*> deadlined_;
};

void Worker::Run() {
  Clock::time_point next_check = Clock::now() + kWatchdogPeriod;
  gpr_timespec next_check_gpr = GprDeadline(next_check);
  for (;;) {
    void* tag = nullptr;
    bool ok = false;
    const grpc::CompletionQueue::NextStatus status = cq_.AsyncNext(&tag, &ok, next_check_gpr);
    if (status == grpc::CompletionQueue::SHUTDOWN) return;
    if (status == grpc::CompletionQueue::GOT_EVENT) static_cast<Tag*>(tag)->Done(ok);
    const Clock::time_point now = Clock::now();
    if (now < next_check) continue;
    // CheckDeadline only cancels: the completions come later, so the list stays as is.
    for (Deadlined* d : deadlined_) d->CheckDeadline(now);
    next_check = now + kWatchdogPeriod;
    next_check_gpr = GprDeadline(next_check);
  }
}

// Pacer: at most `rate` sends a second over every loop that shares it, evenly spaced
// (golang.org/x/time/rate with burst 1). A send reserves the next free slot with one
// compare-and-swap; an idle pacer's next slot is now (no catching up in a burst).
class Pacer {
 public:
  explicit Pacer(double rate)
      : interval_ns_(std::max<int64_t>(1, static_cast<int64_t>(1e9 / rate + 0.5))) {
    KEEL_ASSERT(rate > 0);
  }
  Clock::time_point Reserve(Clock::time_point now) {
    const int64_t now_ns = SteadyNanos(now);
    int64_t next = next_ns_.load(std::memory_order_relaxed);
    int64_t slot = 0;
    do {
      slot = std::max(next, now_ns);
    } while (!next_ns_.compare_exchange_weak(next, slot + interval_ns_, std::memory_order_relaxed));
    return Clock::time_point(std::chrono::duration_cast<Clock::duration>(Nanos(slot)));
  }

 private:
  const int64_t interval_ns_;
  std::atomic<int64_t> next_ns_{INT64_MIN};  // steady-clock ns of the next free slot
};

// What the loops on one worker measured in one phase. Only that worker writes it (ok
// and failed are atomics for the progress line); read by the main thread once the
// phase's loops have all finished.
struct alignas(64) LoopStats {
  LatencyHistogram latency;
  ErrorTally errors;
  uint64_t units_ok = 0;  // keys for load; else requests
  Clock::time_point first_send = Clock::time_point::max();
  Clock::time_point last_done = Clock::time_point::min();
  std::atomic<uint64_t> ok{0};
  std::atomic<uint64_t> failed{0};

  void Sent(Clock::time_point t) { first_send = std::min(first_send, t); }
  void Succeeded(Clock::time_point sent, Clock::time_point done, uint64_t units) {
    latency.Record(done - sent);
    units_ok += units;
    last_done = std::max(last_done, done);
    ok.store(ok.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  void Failed(Clock::time_point done, std::string_view message) {
    last_done = std::max(last_done, done);
    Error(message);
  }
  // A failure that is no request's (a watch canceled): counted, with no time.
  void Error(std::string_view message) {
    errors.Add(message);
    failed.store(failed.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
};

// The loops of one step of a workload (the timed run, or a setup step such as granting
// leases): the request counter they share, their pacer, one LoopStats per worker, and
// how many loops have not finished.
class Phase {
 public:
  Phase(int64_t total, size_t worker_count, Pacer* pacer) : total_(total), pacer_(pacer) {
    KEEL_ASSERT(total >= 0 && worker_count >= 1);
    for (size_t i = 0; i < worker_count; ++i) stats_.push_back(std::make_unique<LoopStats>());
  }

  // The next request number in [0, total), or -1 once every one is taken.
  int64_t Claim() {
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    return i < total_ ? i : -1;
  }
  // The main thread: no request is handed out any more (the loops end after their
  // current one); those never handed out count as errors, `why`.
  void Abandon(std::string_view why) {
    const int64_t claimed = next_.exchange(total_, std::memory_order_relaxed);
    not_sent_.Add(why, static_cast<uint64_t>(total_ - std::min(claimed, total_)));
  }
  int64_t total() const { return total_; }
  Pacer* pacer() const { return pacer_; }
  LoopStats& stats(size_t worker) { return *stats_.at(worker); }

  // Before the loops start: how many will report LoopFinished.
  void AddLoops(int64_t n) {
    std::lock_guard lock(mu_);
    active_ += n;
  }
  // Under the lock, decrement included: the main thread may destroy the phase as soon
  // as it sees the count reach 0, so nothing of it may be touched after the unlock.
  void LoopFinished() {
    std::lock_guard lock(mu_);
    KEEL_ASSERT(active_ > 0);
    if (--active_ == 0) cv_.notify_all();
  }
  // True once every loop finished (then all they wrote is visible to the caller).
  bool WaitFor(Nanos max) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, max, [this] { return active_ == 0; });
  }

  // For the progress line, from any thread.
  uint64_t ok() const;
  uint64_t failed() const;

  struct Totals {
    LatencyHistogram latency;
    ErrorTally errors;
    uint64_t ok = 0;
    uint64_t failed = 0;
    uint64_t units_ok = 0;
    Clock::time_point first_send = Clock::time_point::max();  // max: nothing sent
    Clock::time_point last_done = Clock::time_point::min();   // min: nothing answered
    double elapsed_s = 0;  // first send -> last answer; 0 if nothing was sent
  };
  // Requires: WaitFor returned true.
  Totals Merge();

 private:
  const int64_t total_;
  Pacer* const pacer_;  // null: unpaced
  std::vector<std::unique_ptr<LoopStats>> stats_;
  std::atomic<int64_t> next_{0};
  ErrorTally not_sent_;  // the main thread's: requests Abandon() kept from being sent
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t active_ = 0;  // loops not finished; guarded by mu_
};

uint64_t Phase::ok() const {
  uint64_t n = 0;
  for (const auto& s : stats_) n += s->ok.load(std::memory_order_relaxed);
  return n;
}

uint64_t Phase::failed() const {
  uint64_t n = 0;
  for (const auto& s : stats_) n += s->failed.load(std::memory_order_relaxed);
  return n;
}

Phase::Totals Phase::Merge() {
  {
    std::lock_guard lock(mu_);
    KEEL_ASSERT(active_ == 0);
  }
  Totals t;
  t.errors.Merge(not_sent_);
  for (const auto& s : stats_) {
    t.latency.Merge(s->latency);
    t.errors.Merge(s->errors);
    t.ok += s->ok.load(std::memory_order_relaxed);
    t.failed += s->failed.load(std::memory_order_relaxed);
    t.units_ok += s->units_ok;
    t.first_send = std::min(t.first_send, s->first_send);
    t.last_done = std::max(t.last_done, s->last_done);
  }
  if (t.first_send < t.last_done) {
    t.elapsed_s = std::chrono::duration<double>(t.last_done - t.first_send).count();
  }
  return t;
}

// Where a loop runs and what it shares.
struct LoopEnv {
  Worker* worker;
  Phase* phase;
  const Conn* conn;
  int64_t id;     // [0, loops in the phase)
  Nanos timeout;  // of one request
};

// A client: a state machine whose handlers all run on its worker's thread.
class Loop {
 public:
  explicit Loop(const LoopEnv& env) : env_(env), stats_(env.phase->stats(env.worker->index())) {}
  virtual ~Loop() = default;
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Any thread, once (after the phase's AddLoops): posts Begin() to the worker.
  void Start() { alarm_.Set(cq(), gpr_now(GPR_CLOCK_MONOTONIC), &begin_); }

 protected:
  virtual void Begin() = 0;
  // The loop's last act: it may be destroyed as soon as this returns.
  void Finished() { env_.phase->LoopFinished(); }
  grpc::CompletionQueue* cq() const { return env_.worker->cq(); }

  const LoopEnv env_;
  LoopStats& stats_;
  grpc::Alarm alarm_;  // Start's post, then PacedLoop's waits

 private:
  void OnBegin(bool ok) {
    KEEL_ASSERT(ok);  // never cancelled
    Begin();
  }
  Handler<Loop> begin_{this, &Loop::OnBegin};
};

// A loop that sends at the pace of its phase's pacer.
class PacedLoop : public Loop {
 protected:
  using Loop::Loop;

  // Calls Send() at the next free slot of the pacer (at once without one, or when due).
  void PaceThenSend() {
    if (Pacer* pacer = env_.phase->pacer(); pacer != nullptr) {
      const Clock::time_point now = Clock::now();
      const Clock::time_point slot = pacer->Reserve(now);
      if (slot - now > kPaceSlack) {
        alarm_.Set(cq(), GprDeadline(slot), &paced_);
        return;
      }
    }
    Send();
  }
  virtual void Send() = 0;

 private:
  void OnPaced(bool ok) {
    KEEL_ASSERT(ok);  // never cancelled
    Send();
  }
  Handler<PacedLoop> paced_{this, &PacedLoop::OnPaced};
};

// ---- unary loops --------------------------------------------------------------------

// A unary workload: one request prototype, and how request number i differs from it.
template <typename Req, typename Resp>
struct UnaryCall {
  using Reader = std::unique_ptr<grpc::ClientAsyncResponseReader<Resp>>;
  Req prototype;
  std::function<Reader(const Conn&, grpc::ClientContext*, const Req&, grpc::CompletionQueue*)>
      prepare;
  // Rewrites what differs in request `index` (each loop reuses its own copy of the
  // prototype). Empty: every request is the prototype.
  std::function<void(int64_t index, Clock::time_point send, Rng& rng, Req* r)> fill;
  // An answer the server gave with status OK that is still a failure. Empty: none.
  std::function<absl::Status(int64_t index, const Resp& r)> check;
  // What request `index` counts for in LoopStats::units_ok. Empty: 1.
  std::function<uint64_t(int64_t index)> units;
};

template <typename Req, typename Resp>
class UnaryLoop final : public PacedLoop {
 public:
  // Requires: `call` outlives the loop.
  UnaryLoop(const LoopEnv& env, const UnaryCall<Req, Resp>& call)
      : PacedLoop(env),
        call_(call),
        request_(call.prototype),
        rng_(SeedFromDevice() ^ static_cast<uint64_t>(env.id)) {}

 private:
  void Begin() override { Next(); }

  void Next() {
    index_ = env_.phase->Claim();
    if (index_ < 0) {
      Finished();
      return;
    }
    PaceThenSend();
  }

  void Send() override {
    sent_ = Clock::now();
    if (call_.fill) call_.fill(index_, sent_, rng_, &request_);
    context_ = std::make_unique<grpc::ClientContext>();
    context_->set_deadline(std::chrono::system_clock::now() + env_.timeout);
    stats_.Sent(sent_);
    // gRPC serializes the request here: request_ may change once this returns.
    reader_ = call_.prepare(*env_.conn, context_.get(), request_, cq());
    reader_->StartCall();
    reader_->Finish(&response_, &status_, &done_);
  }

  void OnDone(bool ok) {
    KEEL_ASSERT(ok);  // gRPC: a unary Finish always completes with ok
    const Clock::time_point now = Clock::now();
    if (!status_.ok()) {
      stats_.Failed(now, Describe(status_));
    } else if (absl::Status st = call_.check ? call_.check(index_, response_) : absl::OkStatus();
               !st.ok()) {
      stats_.Failed(now, st.ToString());
    } else {
      stats_.Succeeded(sent_, now, call_.units ? call_.units(index_) : 1);
    }
    Next();
  }

  const UnaryCall<Req, Resp>& call_;
  Req request_;
  Resp response_;
  Rng rng_;
  int64_t index_ = -1;
  Clock::time_point sent_;
  grpc::Status status_;
  std::unique_ptr<grpc::ClientContext> context_;
  typename UnaryCall<Req, Resp>::Reader reader_;
  Handler<UnaryLoop> done_{this, &UnaryLoop::OnDone};
};

// ---- lease keepalive loops ------------------------------------------------------------

// One client of lease-keepalive: one LeaseKeepAlive stream, one keepalive in flight.
// Its n-th keepalive is for lease (id + n * loops) mod leases, so the clients' turns
// cover every lease evenly.
class KeepAliveLoop final : public PacedLoop, public Deadlined {
 public:
  // Requires: `leases` (not empty) outlives the loop.
  KeepAliveLoop(const LoopEnv& env, const std::vector<int64_t>& leases, int64_t loops)
      : PacedLoop(env), leases_(leases), loops_(loops) {
    KEEL_ASSERT(!leases.empty() && loops >= 1);
  }

 private:
  void Begin() override {
    env_.worker->AddDeadlined(this);
    Next();
  }
  void Next();
  void Send() override;
  void Transmit();
  void OnOpened(bool ok);
  void OnWritten(bool ok);
  void OnRead(bool ok);
  void OnFinished(bool ok);
  // The stream failed, timed out (`why`), or is closing: marks it broken, cancels it if
  // `cancel` (when this side ends it: a failed operation means gRPC ended it already, and
  // a cancellation now would hide its status), and finishes it once gRPC has given back
  // every pending operation. Called again by each completion while broken.
  void Break(std::string_view why, bool cancel);
  void CheckDeadline(Clock::time_point now) override;

  const std::vector<int64_t>& leases_;
  const int64_t loops_;
  int64_t turn_ = 0;
  pb::LeaseKeepAliveRequest request_;
  pb::LeaseKeepAliveResponse response_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<
      grpc::ClientAsyncReaderWriter<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>>
      stream_;
  grpc::Status status_;
  Clock::time_point sent_;
  bool opening_ = false;
  bool write_pending_ = false;
  bool read_pending_ = false;
  bool finishing_ = false;
  bool transmit_after_write_ = false;  // the answer came before the write's completion
  bool in_flight_ = false;             // request_ was sent and is not answered
  bool broken_ = false;
  bool closing_ = false;  // no requests left: end with the stream
  std::string why_;       // of broken_, when the status will not say it
  Handler<KeepAliveLoop> opened_{this, &KeepAliveLoop::OnOpened};
  Handler<KeepAliveLoop> written_{this, &KeepAliveLoop::OnWritten};
  Handler<KeepAliveLoop> read_{this, &KeepAliveLoop::OnRead};
  Handler<KeepAliveLoop> finished_{this, &KeepAliveLoop::OnFinished};
};

void KeepAliveLoop::Next() {
  KEEL_ASSERT(!in_flight_ && !broken_);
  if (env_.phase->Claim() < 0) {
    closing_ = true;
    if (stream_ != nullptr) {
      Break("", /*cancel=*/true);
      return;
    }
    env_.worker->RemoveDeadlined(this);
    Finished();
    return;
  }
  const int64_t n = static_cast<int64_t>(leases_.size());
  request_.set_id(leases_[static_cast<size_t>((env_.id + turn_ * loops_) % n)]);
  turn_ = (turn_ + 1) % n;
  PaceThenSend();
}

void KeepAliveLoop::Send() {
  sent_ = Clock::now();
  stats_.Sent(sent_);
  in_flight_ = true;
  if (stream_ != nullptr) {
    Transmit();
    return;
  }
  context_ = std::make_unique<grpc::ClientContext>();
  stream_ = env_.conn->lease->PrepareAsyncLeaseKeepAlive(context_.get(), cq());
  opening_ = true;
  stream_->StartCall(&opened_);
}

void KeepAliveLoop::OnOpened(bool ok) {
  opening_ = false;
  if (!ok || broken_) {
    Break("", /*cancel=*/false);
    return;
  }
  Transmit();
}

void KeepAliveLoop::Transmit() {
  KEEL_ASSERT(in_flight_ && !read_pending_);
  if (write_pending_) {  // one write at a time on a stream
    transmit_after_write_ = true;
    return;
  }
  write_pending_ = true;
  stream_->Write(request_, &written_);
  read_pending_ = true;
  stream_->Read(&response_, &read_);
}

void KeepAliveLoop::OnWritten(bool ok) {
  write_pending_ = false;
  if (!ok || broken_) {
    Break("", /*cancel=*/false);
    return;
  }
  if (transmit_after_write_) {
    transmit_after_write_ = false;
    Transmit();
  }
}

void KeepAliveLoop::OnRead(bool ok) {
  read_pending_ = false;
  if (!ok || broken_) {
    Break("", /*cancel=*/false);
    return;
  }
  const Clock::time_point now = Clock::now();
  in_flight_ = false;
  const uint64_t id = static_cast<uint64_t>(request_.id());
  if (response_.ttl() <= 0) {
    // etcd answers a keepalive for an unknown lease with TTL 0.
    stats_.Failed(now, absl::StrFormat("lease %016x not found (keepalive answered TTL %d)", id,
                                       response_.ttl()));
  } else if (response_.id() != request_.id()) {
    stats_.Failed(now, absl::StrFormat("keepalive for lease %016x answered for lease %016x", id,
                                       static_cast<uint64_t>(response_.id())));
  } else {
    stats_.Succeeded(sent_, now, 1);
  }
  Next();
}

void KeepAliveLoop::Break(std::string_view why, bool cancel) {
  KEEL_ASSERT(stream_ != nullptr);
  if (!broken_) {
    broken_ = true;
    why_ = std::string(why);
    if (cancel) context_->TryCancel();
  }
  if (opening_ || write_pending_ || read_pending_ || finishing_) return;
  finishing_ = true;
  stream_->Finish(&status_, &finished_);
}

void KeepAliveLoop::OnFinished(bool ok) {
  KEEL_ASSERT(finishing_);
  finishing_ = false;
  if (in_flight_) {
    in_flight_ = false;
    std::string message = why_;
    if (message.empty()) {
      message = status_.ok() ? "LeaseKeepAlive stream ended with a keepalive unanswered"
                             : Describe(status_);
    }
    stats_.Failed(Clock::now(), message);
  }
  stream_.reset();
  context_.reset();
  broken_ = false;
  transmit_after_write_ = false;
  why_.clear();
  if (closing_) {
    env_.worker->RemoveDeadlined(this);
    Finished();
    return;
  }
  Next();  // the next keepalive opens a new stream
}

void KeepAliveLoop::CheckDeadline(Clock::time_point now) {
  if (!in_flight_ || broken_ || stream_ == nullptr || now - sent_ < env_.timeout) return;
  Break(absl::StrCat("DEADLINE_EXCEEDED: no keepalive answer within ", FormatNanos(env_.timeout)),
        /*cancel=*/true);
}

// ---- watch stream loops ---------------------------------------------------------------

// What the watch streams of one run share with the main thread.
struct WatchShared {
  std::string key;                          // the prefix every watcher watches
  std::string range_end;                    // PrefixEnd(key)
  std::atomic<int64_t> created{0};          // watches whose `created` answer came
  std::atomic<int64_t> events{0};           // put events received, over every watcher
  std::atomic<int64_t> event_responses{0};  // WatchResponses that carried them
  std::atomic<int64_t> failures{0};         // watches refused, streams lost
  std::atomic<bool> closing{false};         // set before the streams are cancelled at the end
};

// One Watch stream carrying `watchers` watches of shared->key. Its LoopStats gather the
// put-to-event latencies, ok counts events, last_done is the last event's arrival.
class WatchStreamLoop final : public Loop {
 public:
  // Requires: `shared` outlives the loop; watchers >= 1.
  WatchStreamLoop(const LoopEnv& env, WatchShared* shared, int64_t watchers)
      : Loop(env), shared_(shared), watchers_(watchers) {
    KEEL_ASSERT(watchers >= 1);
  }

  // Any thread: ends the stream (gRPC cancellation); the loop finishes once gRPC has
  // given back every operation. Requires: shared->closing is set (the end of a stream
  // closed on purpose is not an error).
  void Close() {
    KEEL_ASSERT(shared_->closing.load());
    context_.TryCancel();
  }
  int64_t watchers() const { return watchers_; }
  struct Watched {
    int64_t events = 0;         // put events received
    int64_t last_revision = 0;  // of the last one; each must be above the one before
  };
  // Once the loop finished: by watch id, the watches created.
  const std::unordered_map<int64_t, Watched>& watches() const { return watches_; }

 private:
  void Begin() override {
    stream_ = env_.conn->watch->PrepareAsyncWatch(&context_, cq());
    opening_ = true;
    stream_->StartCall(&opened_);
  }
  void OnOpened(bool ok);
  void WriteCreate();
  void OnWritten(bool ok);
  void Read() {
    read_pending_ = true;
    stream_->Read(&response_, &read_);
  }
  void OnRead(bool ok);
  void Handle(const pb::WatchResponse& r);
  void RecordEvents(const pb::WatchResponse& r);
  // An operation failed: gRPC ended the stream (or Close() cancelled it). Finishes it
  // once every pending operation is back; called again by each completion meanwhile.
  void Break();
  void OnFinished(bool ok);

  WatchShared* const shared_;
  const int64_t watchers_;
  int64_t creates_sent_ = 0;
  std::unordered_map<int64_t, Watched> watches_;
  grpc::ClientContext context_;  // built here, on the main thread, so that Close may cancel
  std::unique_ptr<grpc::ClientAsyncReaderWriter<pb::WatchRequest, pb::WatchResponse>> stream_;
  pb::WatchRequest request_;
  pb::WatchResponse response_;
  grpc::Status status_;
  bool opening_ = false;
  bool write_pending_ = false;
  bool read_pending_ = false;
  bool finishing_ = false;
  bool broken_ = false;
  bool lost_ = false;  // broken before the end: an error
  Handler<WatchStreamLoop> opened_{this, &WatchStreamLoop::OnOpened};
  Handler<WatchStreamLoop> written_{this, &WatchStreamLoop::OnWritten};
  Handler<WatchStreamLoop> read_{this, &WatchStreamLoop::OnRead};
  Handler<WatchStreamLoop> finished_{this, &WatchStreamLoop::OnFinished};
};

void WatchStreamLoop::OnOpened(bool ok) {
  opening_ = false;
  if (!ok || broken_) {
    Break();
    return;
  }
  Read();
  WriteCreate();
}

// Creates go one at a time (one write pending per stream); etcd answers them in order.
void WatchStreamLoop::WriteCreate() {
  KEEL_ASSERT(creates_sent_ < watchers_ && !write_pending_);
  pb::WatchCreateRequest* create = request_.mutable_create_request();
  create->set_key(shared_->key);
  create->set_range_end(shared_->range_end);
  ++creates_sent_;
  write_pending_ = true;
  stream_->Write(request_, &written_);
}

void WatchStreamLoop::OnWritten(bool ok) {
  write_pending_ = false;
  if (!ok || broken_) {
    Break();
    return;
  }
  if (creates_sent_ < watchers_) WriteCreate();
}

void WatchStreamLoop::OnRead(bool ok) {
  read_pending_ = false;
  if (!ok || broken_) {
    Break();
    return;
  }
  Handle(response_);
  Read();
}

void WatchStreamLoop::Handle(const pb::WatchResponse& r) {
  if (r.created()) {
    if (r.canceled()) {
      stats_.Error(absl::StrCat("watch not created: ", r.cancel_reason()));
      shared_->failures.fetch_add(1);
      return;
    }
    if (!watches_.emplace(r.watch_id(), Watched{}).second) {
      stats_.Error(absl::StrCat("watch id ", r.watch_id(), " created twice"));
    }
    shared_->created.fetch_add(1);
    return;
  }
  if (r.canceled()) {
    stats_.Error(absl::StrCat(
        "watch canceled by the server",
        r.compact_revision() != 0 ? absl::StrCat(" (compacted at ", r.compact_revision(), ")") : "",
        ": ", r.cancel_reason()));
    shared_->failures.fetch_add(1);
    return;
  }
  if (r.events_size() > 0) RecordEvents(r);
}

void WatchStreamLoop::RecordEvents(const pb::WatchResponse& r) {
  const Clock::time_point now = Clock::now();
  auto it = watches_.find(r.watch_id());
  if (it == watches_.end()) {
    stats_.Error(absl::StrCat("events for watch id ", r.watch_id(), ", never created"));
    return;
  }
  int64_t n = 0;
  for (const mvccpb::Event& e : r.events()) {
    if (e.type() != mvccpb::Event::PUT) continue;
    const std::optional<Clock::time_point> sent = ReadSendTime(e.kv().value());
    if (!sent.has_value()) {
      stats_.Error("a put event whose value holds no send time");
      continue;
    }
    // etcd's watch guarantee: ordered, no duplicates (a count alone would let a duplicate
    // hide a missing event).
    if (e.kv().mod_revision() <= it->second.last_revision) {
      stats_.Error(absl::StrCat("watch id ", r.watch_id(), " saw revision ", e.kv().mod_revision(),
                                " after ", it->second.last_revision));
    }
    it->second.last_revision = std::max(it->second.last_revision, e.kv().mod_revision());
    stats_.Succeeded(*sent, std::max(now, *sent), 1);
    ++n;
  }
  it->second.events += n;
  shared_->events.fetch_add(n, std::memory_order_relaxed);
  shared_->event_responses.fetch_add(1, std::memory_order_relaxed);
}

void WatchStreamLoop::Break() {
  if (!broken_) {  // gRPC ended the stream (a failed operation), or Close() cancelled it
    broken_ = true;
    lost_ = !shared_->closing.load();
    if (lost_) shared_->failures.fetch_add(1);
  }
  if (opening_ || write_pending_ || read_pending_ || finishing_) return;
  finishing_ = true;
  stream_->Finish(&status_, &finished_);
}

void WatchStreamLoop::OnFinished(bool ok) {
  if (lost_) {
    stats_.Error(absl::StrCat("watch stream lost: ",
                              status_.ok() ? "ended by the server" : Describe(status_)));
  }
  Finished();
}

// ---- runs -----------------------------------------------------------------------------

struct Options {
  std::vector<std::string> endpoints;
  int64_t clients = 1;
  int64_t conns = 1;
  int64_t workers = 1;
  int64_t total = 10000;
  double rate = 0;
  bool json = false;
  bool progress = false;
  Nanos dial_timeout = Millis(5000);
  Nanos timeout = Millis(10000);
};

// A progress line on stderr: "put [=====>    ]  42.0% 4213/10000  3510/s  errors 0".
class Progress {
 public:
  Progress(bool enabled, std::string label, uint64_t total)
      : enabled_(enabled), label_(std::move(label)), total_(total), start_(Clock::now()) {}
  void Draw(uint64_t done, uint64_t failed) {
    if (!enabled_) return;
    constexpr int kWidth = 30;
    const double f = total_ == 0 ? 1 : std::min(1.0, static_cast<double>(done) / total_);
    const int filled = static_cast<int>(f * kWidth);
    const double s = std::chrono::duration<double>(Clock::now() - start_).count();
    std::fprintf(stderr, "\r%-16s [%s%s] %5.1f%% %llu/%llu %8.0f/s errors %llu\x1b[K",
                 label_.c_str(), std::string(filled, '=').c_str(),
                 std::string(kWidth - filled, ' ').c_str(), 100 * f,
                 static_cast<unsigned long long>(done), static_cast<unsigned long long>(total_),
                 s > 0 ? done / s : 0.0, static_cast<unsigned long long>(failed));
    drawn_ = true;
  }
  void End(uint64_t done, uint64_t failed) {
    Draw(done, failed);
    if (drawn_) std::fputc('\n', stderr);
  }

 private:
  const bool enabled_;
  const std::string label_;
  const uint64_t total_;
  const Clock::time_point start_;
  bool drawn_ = false;
};

// The connections and worker threads of a run; the phases come and go over them.
class Bench {
 public:
  // Opens --conns connections, waits for each (--dial-timeout), starts the workers.
  static absl::StatusOr<std::unique_ptr<Bench>> Open(const Options& options);
  // Requires: every phase's loops finished.
  ~Bench() {
    for (auto& w : workers_) w->Stop();
  }

  const Options& options() const { return options_; }
  const Conn& conn(size_t i) const { return conns_.at(i); }
  size_t worker_count() const { return workers_.size(); }
  // Loop `id` of `phase`: workers and connections taken round-robin.
  LoopEnv Env(Phase* phase, int64_t id) const {
    const size_t i = static_cast<size_t>(id);
    return LoopEnv{workers_[i % workers_.size()].get(), phase, &conns_[i % conns_.size()], id,
                   options_.timeout};
  }

 private:
  explicit Bench(const Options& options) : options_(options) {}

  const Options options_;
  std::vector<Conn> conns_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

absl::StatusOr<std::unique_ptr<Bench>> Bench::Open(const Options& options) {
  KEEL_ASSERT(!options.endpoints.empty() && options.conns >= 1 && options.workers >= 1);
  std::unique_ptr<Bench> bench(new Bench(options));
  for (int64_t i = 0; i < options.conns; ++i) {
    const size_t e = static_cast<size_t>(i) % options.endpoints.size();
    bench->conns_.push_back(OpenConn(options.endpoints[e], i));
  }
  if (absl::Status st = AwaitConnected(bench->conns_, options.dial_timeout); !st.ok()) return st;
  for (int64_t i = 0; i < options.workers; ++i) {
    bench->workers_.push_back(std::make_unique<Worker>(static_cast<size_t>(i)));
    bench->workers_.back()->Start();
  }
  return bench;
}

// Starts `loops` and waits until every one finished, drawing `progress` meanwhile.
//
// A server that stops answering (paused, partitioned) would hold each loop for --timeout
// per request, total / clients times over. So once requests have failed and none has
// succeeded for kStalledTimeouts * `timeout`, the phase is abandoned: the requests not
// yet handed out count as errors, and the loops end with their current request.
template <typename L>
void RunLoops(const std::vector<std::unique_ptr<L>>& loops, Phase& phase, Progress& progress,
              Nanos timeout) {
  phase.AddLoops(static_cast<int64_t>(loops.size()));
  for (const auto& loop : loops) loop->Start();
  uint64_t ok_seen = 0, failed_at_last_ok = 0;
  Clock::time_point last_ok = Clock::now();
  bool abandoned = false;
  while (!phase.WaitFor(kProgressPeriod)) {
    const uint64_t ok = phase.ok(), failed = phase.failed();
    const Clock::time_point now = Clock::now();
    if (ok != ok_seen) {
      ok_seen = ok;
      last_ok = now;
      failed_at_last_ok = failed;
    }
    if (!abandoned && failed > failed_at_last_ok && now - last_ok > kStalledTimeouts * timeout) {
      abandoned = true;
      phase.Abandon(absl::StrCat("not sent: requests failed and none succeeded for ",
                                 FormatNanos(kStalledTimeouts * timeout),
                                 ", so the run was abandoned"));
    }
    progress.Draw(ok + failed, failed);
  }
  progress.End(phase.ok() + phase.failed(), phase.failed());
}

// Runs `call` `total` times over `loops` closed loops.
template <typename Req, typename Resp>
Phase::Totals RunUnary(const Bench& bench, const UnaryCall<Req, Resp>& call, int64_t total,
                       int64_t loops, Pacer* pacer, Progress& progress) {
  KEEL_ASSERT(total >= 0 && loops >= 1);
  Phase phase(total, bench.worker_count(), pacer);
  std::vector<std::unique_ptr<UnaryLoop<Req, Resp>>> clients;
  for (int64_t i = 0; i < loops; ++i) {
    clients.push_back(std::make_unique<UnaryLoop<Req, Resp>>(bench.Env(&phase, i), call));
  }
  RunLoops(clients, phase, progress, bench.options().timeout);
  return phase.Merge();
}

std::unique_ptr<Pacer> NewPacer(double rate) {
  return rate > 0 ? std::make_unique<Pacer>(rate) : nullptr;
}

RunReport NewReport(const Options& o, std::string workload, int64_t total) {
  RunReport r;
  r.workload = std::move(workload);
  r.endpoints = o.endpoints;
  r.clients = o.clients;
  r.conns = o.conns;
  r.workers = o.workers;
  r.rate = o.rate;
  r.total = total;
  return r;
}

void AddTotals(const Phase::Totals& t, RunReport* r) {
  r->requests = t.ok + t.failed;
  r->ok = t.ok;
  r->errors.Merge(t.errors);
  r->elapsed_s = t.elapsed_s;
  r->throughput = t.elapsed_s > 0 ? static_cast<double>(t.units_ok) / t.elapsed_s : 0;
  r->latency = t.latency;
}

// Prints the report (stdout); the exit code: 1 if anything failed.
int Print(const RunReport& r, const Options& o) {
  const std::string out = o.json ? FormatJson(r) + "\n" : FormatText(r);
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  return r.errors.count() > 0 ? 1 : 0;
}

int Fail(absl::string_view message) {
  std::fprintf(stderr, "keel-bench: %.*s\n", static_cast<int>(message.size()), message.data());
  return 1;
}

// ---- put, range, txn-put, load ----------------------------------------------------------

struct KeyFlags {
  int64_t key_size = 8;
  int64_t val_size = 8;
  int64_t key_space_size = 1;
  bool sequential = false;
  int64_t txn_ops = 1;
};

struct RangeFlags {
  std::string key;
  std::string end;
  bool prefix = false;
  std::string consistency = "l";
  int64_t limit = 0;
};

int64_t PickKey(const KeyFlags& k, int64_t i, Rng& rng) {
  return k.sequential ? i % k.key_space_size
                      : static_cast<int64_t>(rng.Below(static_cast<uint64_t>(k.key_space_size)));
}

// Runs `call` --total times over --clients loops at --rate, and prints the report.
template <typename Req, typename Resp>
int RunSimple(const Bench& bench, const char* workload, const UnaryCall<Req, Resp>& call) {
  const Options& o = bench.options();
  std::unique_ptr<Pacer> pacer = NewPacer(o.rate);
  Progress progress(o.progress, workload, static_cast<uint64_t>(o.total));
  const Phase::Totals t = RunUnary(bench, call, o.total, o.clients, pacer.get(), progress);
  RunReport r = NewReport(o, workload, o.total);
  AddTotals(t, &r);
  return Print(r, o);
}

int RunPut(const Bench& bench, const KeyFlags& k) {
  Rng rng(SeedFromDevice());
  UnaryCall<pb::PutRequest, pb::PutResponse> call;
  call.prototype.set_key(std::string(static_cast<size_t>(k.key_size), '\0'));
  call.prototype.set_value(RandomBytes(static_cast<size_t>(k.val_size), rng));
  call.prepare = [](const Conn& c, grpc::ClientContext* ctx, const pb::PutRequest& r,
                    grpc::CompletionQueue* cq) { return c.kv->PrepareAsyncPut(ctx, r, cq); };
  call.fill = [k](int64_t i, Clock::time_point, Rng& rng, pb::PutRequest* r) {
    EncodeKey(PickKey(k, i, rng), r->mutable_key());
  };
  return RunSimple(bench, "put", call);
}

int RunRange(const Bench& bench, const RangeFlags& f) {
  UnaryCall<pb::RangeRequest, pb::RangeResponse> call;
  if (f.prefix) {
    // etcdctl get --prefix: an empty prefix is every key ("\0" to "\0").
    call.prototype.set_key(f.key.empty() ? std::string(1, '\0') : f.key);
    call.prototype.set_range_end(PrefixEnd(f.key));
  } else {
    call.prototype.set_key(f.key);
    call.prototype.set_range_end(f.end);
  }
  call.prototype.set_limit(f.limit);
  call.prototype.set_serializable(f.consistency == "s");
  call.prepare = [](const Conn& c, grpc::ClientContext* ctx, const pb::RangeRequest& r,
                    grpc::CompletionQueue* cq) { return c.kv->PrepareAsyncRange(ctx, r, cq); };
  return RunSimple(bench, "range", call);
}

// A Txn with no compares whose success branch puts `ops` keys.
pb::TxnRequest TxnOfPuts(int64_t ops, int64_t key_size, const std::string& value) {
  pb::TxnRequest txn;
  for (int64_t j = 0; j < ops; ++j) {
    pb::PutRequest* put = txn.add_success()->mutable_request_put();
    put->set_key(std::string(static_cast<size_t>(key_size), '\0'));
    put->set_value(value);
  }
  return txn;
}

UnaryCall<pb::TxnRequest, pb::TxnResponse>::Reader PrepareTxn(const Conn& c,
                                                              grpc::ClientContext* ctx,
                                                              const pb::TxnRequest& r,
                                                              grpc::CompletionQueue* cq) {
  return c.kv->PrepareAsyncTxn(ctx, r, cq);
}

int RunTxnPut(const Bench& bench, const KeyFlags& k) {
  Rng rng(SeedFromDevice());
  UnaryCall<pb::TxnRequest, pb::TxnResponse> call;
  call.prototype =
      TxnOfPuts(k.txn_ops, k.key_size, RandomBytes(static_cast<size_t>(k.val_size), rng));
  call.prepare = PrepareTxn;
  // Keys i*ops .. i*ops+ops-1 in turn (etcd's txn-put), or from a random first key; ops
  // <= key space keeps them distinct (etcd refuses a Txn that puts one key twice).
  call.fill = [k](int64_t i, Clock::time_point, Rng& rng, pb::TxnRequest* r) {
    const int64_t first =
        k.sequential ? (i % k.key_space_size) * k.txn_ops % k.key_space_size : PickKey(k, i, rng);
    for (int64_t j = 0; j < k.txn_ops; ++j) {
      EncodeKey((first + j) % k.key_space_size,
                r->mutable_success(static_cast<int>(j))->mutable_request_put()->mutable_key());
    }
  };
  return RunSimple(bench, "txn-put", call);
}

int RunLoad(const Bench& bench, const KeyFlags& k) {
  const Options& o = bench.options();
  const int64_t keys = o.total;
  const int64_t txns = (keys + k.txn_ops - 1) / k.txn_ops;
  Rng rng(SeedFromDevice());
  UnaryCall<pb::TxnRequest, pb::TxnResponse> call;
  call.prototype =
      TxnOfPuts(k.txn_ops, k.key_size, RandomBytes(static_cast<size_t>(k.val_size), rng));
  call.prepare = PrepareTxn;
  const int64_t ops = k.txn_ops;
  const auto ops_in = [keys, ops](int64_t i) { return std::min(ops, keys - i * ops); };
  // Txn i puts keys i*ops .. i*ops+ops-1; the last one may be short.
  call.fill = [ops, ops_in, op = call.prototype.success(0)](int64_t i, Clock::time_point, Rng&,
                                                            pb::TxnRequest* r) {
    const int n = static_cast<int>(ops_in(i));
    KEEL_ASSERT(n >= 1 && n <= ops);
    if (r->success_size() > n) r->mutable_success()->DeleteSubrange(n, r->success_size() - n);
    while (r->success_size() < n) *r->add_success() = op;
    for (int j = 0; j < n; ++j) {
      EncodeKey(i * ops + j, r->mutable_success(j)->mutable_request_put()->mutable_key());
    }
  };
  call.units = [ops_in](int64_t i) { return static_cast<uint64_t>(ops_in(i)); };
  std::unique_ptr<Pacer> pacer = NewPacer(o.rate);
  Progress progress(o.progress, "load (txns)", static_cast<uint64_t>(txns));
  const Phase::Totals t = RunUnary(bench, call, txns, o.clients, pacer.get(), progress);
  RunReport r = NewReport(o, "load", keys);
  AddTotals(t, &r);
  r.throughput_unit = "keys";
  r.load = LoadFigures{.txn_ops = k.txn_ops, .keys = t.units_ok};
  return Print(r, o);
}

// ---- lease-keepalive --------------------------------------------------------------------

// Grants leases.size() leases (TTL kLeaseTtlSeconds), their IDs into `leases`; an ID
// stays 0 where the grant failed.
Phase::Totals GrantLeases(const Bench& bench, std::vector<int64_t>* leases) {
  UnaryCall<pb::LeaseGrantRequest, pb::LeaseGrantResponse> call;
  call.prototype.set_ttl(kLeaseTtlSeconds);
  call.prepare = [](const Conn& c, grpc::ClientContext* ctx, const pb::LeaseGrantRequest& r,
                    grpc::CompletionQueue* cq) {
    return c.lease->PrepareAsyncLeaseGrant(ctx, r, cq);
  };
  // Each index is one loop's alone: no two threads write one element.
  call.check = [leases](int64_t i, const pb::LeaseGrantResponse& r) {
    if (!r.error().empty()) return absl::UnknownError(absl::StrCat("LeaseGrant: ", r.error()));
    (*leases)[static_cast<size_t>(i)] = r.id();
    return absl::OkStatus();
  };
  const int64_t n = static_cast<int64_t>(leases->size());
  Progress quiet(false, "", 0);
  return RunUnary(bench, call, n, std::min(bench.options().clients, n), nullptr, quiet);
}

// Revokes the granted (non-zero) leases; returns the failures.
ErrorTally RevokeLeases(const Bench& bench, const std::vector<int64_t>& leases) {
  std::vector<int64_t> granted;
  for (int64_t id : leases) {
    if (id != 0) granted.push_back(id);
  }
  if (granted.empty()) return {};
  UnaryCall<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse> call;
  call.prepare = [](const Conn& c, grpc::ClientContext* ctx, const pb::LeaseRevokeRequest& r,
                    grpc::CompletionQueue* cq) {
    return c.lease->PrepareAsyncLeaseRevoke(ctx, r, cq);
  };
  call.fill = [&granted](int64_t i, Clock::time_point, Rng&, pb::LeaseRevokeRequest* r) {
    r->set_id(granted[static_cast<size_t>(i)]);
  };
  const int64_t n = static_cast<int64_t>(granted.size());
  Progress quiet(false, "", 0);
  const Phase::Totals t =
      RunUnary(bench, call, n, std::min(bench.options().clients, n), nullptr, quiet);
  ErrorTally errors;
  for (const ErrorTally::Sample& s : t.errors.samples()) {
    errors.Add(absl::StrCat("revoking leases at the end: ", s.message), s.count);
  }
  errors.Add("revoking leases at the end: (other messages)", t.errors.unsampled_count());
  return errors;
}

int RunLeaseKeepAlive(const Bench& bench, int64_t lease_count) {
  const Options& o = bench.options();
  std::vector<int64_t> leases(static_cast<size_t>(lease_count), 0);
  const Phase::Totals grants = GrantLeases(bench, &leases);
  if (grants.failed > 0) {
    RevokeLeases(bench, leases);
    const ErrorTally::Sample& first = grants.errors.samples().front();
    return Fail(absl::StrCat("granting ", lease_count, " leases: ", grants.failed,
                             " failed; first: ", first.message));
  }
  std::unique_ptr<Pacer> pacer = NewPacer(o.rate);
  Phase phase(o.total, bench.worker_count(), pacer.get());
  std::vector<std::unique_ptr<KeepAliveLoop>> clients;
  for (int64_t i = 0; i < o.clients; ++i) {
    clients.push_back(std::make_unique<KeepAliveLoop>(bench.Env(&phase, i), leases, o.clients));
  }
  Progress progress(o.progress, "lease-keepalive", static_cast<uint64_t>(o.total));
  RunLoops(clients, phase, progress, o.timeout);
  RunReport r = NewReport(o, "lease-keepalive", o.total);
  AddTotals(phase.Merge(), &r);
  r.throughput_unit = "keepalives";
  r.leases = lease_count;
  r.errors.Merge(RevokeLeases(bench, leases));
  return Print(r, o);
}

// ---- watch ---------------------------------------------------------------------------

struct WatchFlags {
  int64_t watchers = 100;
  int64_t streams = 10;
  int64_t puts = 1000;
  double put_rate = 0;
  int64_t val_size = kSendTimeBytes;
};

// Polls `done` every kPollPeriod until it holds or `deadline` passes, drawing `progress`
// with `count()`. True if `done` held.
bool PollUntil(const std::function<bool()>& done, Clock::time_point deadline, Progress& progress,
               const std::function<uint64_t()>& count) {
  Clock::time_point next_draw = Clock::now();
  while (!done()) {
    const Clock::time_point now = Clock::now();
    if (now >= deadline) return false;
    if (now >= next_draw) {
      progress.Draw(count(), 0);
      next_draw = now + kProgressPeriod;
    }
    std::this_thread::sleep_for(kPollPeriod);
  }
  return true;
}

// The watchers' failures: watches never created, and watchers that did not see every
// put exactly once (`puts_ok` of them were answered OK).
void CheckWatchers(const std::vector<std::unique_ptr<WatchStreamLoop>>& streams, int64_t puts_ok,
                   ErrorTally* errors) {
  int64_t missing = 0, wrong = 0;
  std::string first_wrong;
  for (size_t s = 0; s < streams.size(); ++s) {
    const auto& watches = streams[s]->watches();
    missing += streams[s]->watchers() - static_cast<int64_t>(watches.size());
    for (const auto& [id, watched] : watches) {
      if (watched.events == puts_ok) continue;
      if (wrong++ == 0) {
        first_wrong = absl::StrFormat("watch id %d on stream %d saw %d", id, s, watched.events);
      }
    }
  }
  if (missing > 0) {
    errors->Add(absl::StrCat(missing, " watchers were never created"),
                static_cast<uint64_t>(missing));
  }
  if (wrong > 0) {
    errors->Add(absl::StrCat(wrong, " watchers did not see each of the ", puts_ok,
                             " puts answered OK exactly once (first: ", first_wrong, ")"),
                static_cast<uint64_t>(wrong));
  }
}

// Deletes the run's prefix; a failure is a warning (the run's figures stand).
void DeletePrefix(const Bench& bench, const WatchShared& shared) {
  pb::DeleteRangeRequest request;
  request.set_key(shared.key);
  request.set_range_end(shared.range_end);
  pb::DeleteRangeResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + bench.options().timeout);
  const grpc::Status st = bench.conn(0).kv->DeleteRange(&context, request, &response);
  if (!st.ok()) {
    std::fprintf(stderr, "keel-bench: warning: deleting %s at the end: %s\n", shared.key.c_str(),
                 Describe(st).c_str());
  }
}

// Opens the streams and creates every watch. The streams are started even on failure
// (so that the caller closes them all).
absl::Status OpenWatches(const Bench& bench, const WatchFlags& w, WatchShared& shared, Phase& phase,
                         std::vector<std::unique_ptr<WatchStreamLoop>>* streams) {
  for (int64_t s = 0; s < w.streams; ++s) {
    const int64_t watchers = w.watchers / w.streams + (s < w.watchers % w.streams ? 1 : 0);
    streams->push_back(std::make_unique<WatchStreamLoop>(bench.Env(&phase, s), &shared, watchers));
  }
  phase.AddLoops(w.streams);
  for (const auto& s : *streams) s->Start();
  Progress quiet(false, "", 0);
  const bool ready =
      PollUntil([&] { return shared.created.load() == w.watchers || shared.failures.load() > 0; },
                Clock::now() + bench.options().timeout, quiet, [] { return 0; });
  if (ready && shared.failures.load() == 0) return absl::OkStatus();
  std::string message =
      absl::StrFormat("creating %d watches on %d streams: %d created, %d failed", w.watchers,
                      w.streams, shared.created.load(), shared.failures.load());
  if (!ready) {
    absl::StrAppend(&message, ", the rest not within ", FormatNanos(bench.options().timeout));
  }
  return absl::UnavailableError(message);
}

void CloseWatches(WatchShared& shared, const std::vector<std::unique_ptr<WatchStreamLoop>>& streams,
                  Phase& phase) {
  shared.closing.store(true);
  for (const auto& s : streams) s->Close();
  while (!phase.WaitFor(kProgressPeriod)) continue;  // gRPC completes cancelled calls promptly
}

int ReportWatch(const Bench& bench, const WatchFlags& w, const WatchShared& shared,
                const std::vector<std::unique_ptr<WatchStreamLoop>>& streams,
                const Phase::Totals& puts, const Phase::Totals& events) {
  const Options& o = bench.options();
  RunReport r = NewReport(o, "watch", w.puts);
  r.rate = w.put_rate;
  AddTotals(puts, &r);
  r.throughput_unit = "puts";
  r.errors.Merge(events.errors);
  WatchFigures f;
  f.watchers = w.watchers;
  f.streams = w.streams;
  f.events_expected = static_cast<uint64_t>(w.watchers * w.puts);
  f.events = events.ok;
  f.event_responses = static_cast<uint64_t>(shared.event_responses.load());
  if (puts.first_send < events.last_done) {
    const double s = std::chrono::duration<double>(events.last_done - puts.first_send).count();
    f.events_per_s = static_cast<double>(f.events) / s;
  }
  f.event_latency = events.latency;
  if (f.events != f.events_expected) {
    r.errors.Add(absl::StrFormat("%d events delivered, not %d watchers x %d puts = %d", f.events,
                                 w.watchers, w.puts, f.events_expected));
  }
  CheckWatchers(streams, static_cast<int64_t>(puts.ok), &r.errors);
  r.watch = std::move(f);
  DeletePrefix(bench, shared);
  return Print(r, o);
}

int RunWatch(const Bench& bench, const WatchFlags& w) {
  const Options& o = bench.options();
  Rng rng(SeedFromDevice());
  WatchShared shared;
  shared.key = absl::StrFormat("/keel-bench/watch/%016x/", rng.Next());
  shared.range_end = PrefixEnd(shared.key);
  Phase stream_phase(0, bench.worker_count(), nullptr);
  std::vector<std::unique_ptr<WatchStreamLoop>> streams;
  if (absl::Status st = OpenWatches(bench, w, shared, stream_phase, &streams); !st.ok()) {
    CloseWatches(shared, streams, stream_phase);
    ErrorTally errors = stream_phase.Merge().errors;
    return Fail(absl::StrCat(st.message(), errors.samples().empty()
                                               ? ""
                                               : "; first error: " + errors.samples()[0].message));
  }

  UnaryCall<pb::PutRequest, pb::PutResponse> call;
  call.prototype.set_key(shared.key + "k");
  call.prototype.set_value(RandomBytes(static_cast<size_t>(w.val_size), rng));
  call.prepare = [](const Conn& c, grpc::ClientContext* ctx, const pb::PutRequest& r,
                    grpc::CompletionQueue* cq) { return c.kv->PrepareAsyncPut(ctx, r, cq); };
  call.fill = [](int64_t, Clock::time_point send, Rng&, pb::PutRequest* r) {
    WriteSendTime(send, r->mutable_value());
  };
  std::unique_ptr<Pacer> pacer = NewPacer(w.put_rate);
  Progress put_progress(o.progress, "watch: puts", static_cast<uint64_t>(w.puts));
  const Phase::Totals puts = RunUnary(bench, call, w.puts, o.clients, pacer.get(), put_progress);

  // Wait for every event of every put answered OK, for --timeout at most; once a watch
  // or stream failed (its events will never all come), only until the others go quiet.
  const int64_t expected_ok = w.watchers * static_cast<int64_t>(puts.ok);
  Progress event_progress(o.progress, "watch: events", static_cast<uint64_t>(expected_ok));
  int64_t events_seen = -1;
  Clock::time_point last_event = Clock::now();
  const auto done = [&] {
    const int64_t events = shared.events.load();
    if (events >= expected_ok) return true;
    if (events != events_seen) {
      events_seen = events;
      last_event = Clock::now();
    }
    return shared.failures.load() > 0 && Clock::now() - last_event > kQuietAfterFailure;
  };
  PollUntil(done, Clock::now() + o.timeout, event_progress,
            [&] { return static_cast<uint64_t>(shared.events.load()); });
  event_progress.End(static_cast<uint64_t>(shared.events.load()), 0);
  CloseWatches(shared, streams, stream_phase);
  return ReportWatch(bench, w, shared, streams, puts, stream_phase.Merge());
}

// ---- flags ---------------------------------------------------------------------------

constexpr absl::Duration kTimeoutMax = absl::Hours(24);

struct Flags {
  std::string endpoints = "127.0.0.1:2379";
  Options options;  // all but endpoints and the durations, bound directly
  std::string dial_timeout = "5s";
  std::string timeout = "10s";
  KeyFlags put;
  KeyFlags txn_put;
  KeyFlags load{.txn_ops = 128};  // etcd's --max-txn-ops
  RangeFlags range;
  WatchFlags watch;
  int64_t leases = 0;  // 0: --clients
};

// A bad flag, found before anything is sent: exit 2, as a parse error.
int Usage(absl::string_view message) {
  std::fprintf(stderr, "keel-bench: %.*s\nRun with --help for more information.\n",
               static_cast<int>(message.size()), message.data());
  return 2;
}

// Go's durations, as etcd's flags take them: "500ms", "5s", "1m30s".
absl::StatusOr<Nanos> ParseDurationFlag(absl::string_view flag, const std::string& text) {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d <= absl::ZeroDuration() || d > kTimeoutMax) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " \"", text, "\": want a duration in (0, 24h], such as 500ms, 5s or 1m"));
  }
  return absl::ToChronoNanoseconds(d);
}

void AddGlobalFlags(CLI::App& app, Flags& f) {
  Options& o = f.options;
  app.add_option("--endpoints", f.endpoints, "gRPC endpoints (host:port), comma-separated")
      ->capture_default_str();
  app.add_option("--clients", o.clients, "concurrent closed-loop clients")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, kClientsMax));
  app.add_option("--conns", o.conns,
                 "gRPC connections, each its own TCP connection; clients round-robin over "
                 "them, they round-robin over the endpoints")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, kConnsMax));
  app.add_option("--workers", o.workers,
                 "threads polling the completion queues (one is plenty on a small machine)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, kWorkersMax));
  app.add_option("--total", o.total, "requests in all (load: keys; watch ignores it: --puts)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, kTotalMax));
  app.add_option("--rate", o.rate,
                 "at most this many requests per second over all clients; 0: no limit "
                 "(watch ignores it: --put-rate)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--json", o.json, "print one JSON object instead of the text report");
  app.add_flag("--progress,!--no-progress", o.progress,
               "a progress line on stderr (default: when stderr is a terminal)");
  app.add_option("--dial-timeout", f.dial_timeout, "how long to wait for the connections")
      ->capture_default_str();
  app.add_option("--timeout", f.timeout, "deadline of one request")->capture_default_str();
}

void AddKeyFlags(CLI::App* sub, KeyFlags& k, bool key_space, bool txn_ops) {
  sub->add_option("--key-size", k.key_size, "key size in bytes")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, kKeySizeMax));
  sub->add_option("--val-size", k.val_size, "value size in bytes")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, kValSizeMax));
  if (key_space) {
    sub->add_option("--key-space-size", k.key_space_size, "how many distinct keys")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, INT64_MAX));
    sub->add_flag("--sequential-keys", k.sequential, "keys in turn, not at random");
  }
  if (txn_ops) {
    sub->add_option("--txn-ops", k.txn_ops, "puts per Txn")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, kTxnOpsMax));
  }
}

void AddRangeFlags(CLI::App* sub, RangeFlags& r) {
  sub->add_option("key", r.key, "the key (with --prefix: the prefix; empty: every key)")
      ->required();
  sub->add_option("end", r.end, "the end of the range [KEY, END)");
  sub->add_option("--consistency", r.consistency, "l: linearizable; s: serializable")
      ->capture_default_str()
      ->check(CLI::IsMember({"l", "s"}));
  sub->add_option("--limit", r.limit, "at most this many keys per answer; 0: no limit")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, INT64_MAX));
  sub->add_flag("--prefix", r.prefix, "every key that starts with KEY");
}

void AddWatchFlags(CLI::App* sub, WatchFlags& w) {
  sub->add_option("--watchers", w.watchers, "watchers, all of one prefix")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, kWatchersMax));
  sub->add_option("--streams", w.streams, "Watch streams; the watchers round-robin over them")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, kWatchersMax));
  sub->add_option("--puts", w.puts, "puts under the prefix, by --clients closed loops")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, kTotalMax));
  sub->add_option("--put-rate", w.put_rate, "at most this many puts per second; 0: no limit")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--val-size", w.val_size, "value size in bytes (the first 8: the send time)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{kSendTimeBytes}, kValSizeMax));
}

absl::StatusOr<Options> MakeOptions(const Flags& f) {
  Options o = f.options;
  absl::StatusOr<std::vector<std::string>> endpoints = client::ParseEndpoints(f.endpoints);
  if (!endpoints.ok()) return endpoints.status();
  o.endpoints = *std::move(endpoints);
  absl::StatusOr<Nanos> dial = ParseDurationFlag("--dial-timeout", f.dial_timeout);
  if (!dial.ok()) return dial.status();
  absl::StatusOr<Nanos> timeout = ParseDurationFlag("--timeout", f.timeout);
  if (!timeout.ok()) return timeout.status();
  o.dial_timeout = *dial;
  o.timeout = *timeout;
  if (o.rate > kRateMax || f.watch.put_rate > kRateMax) {
    return absl::InvalidArgumentError(absl::StrCat("--rate and --put-rate: at most ", kRateMax));
  }
  return o;
}

absl::Status CheckKeys(const KeyFlags& k, int64_t keys, absl::string_view what) {
  if (keys <= KeysThatFit(k.key_size)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--key-size ", k.key_size, " holds ",
                                                 KeysThatFit(k.key_size),
                                                 " distinct keys, fewer than ", what, " ", keys));
}

absl::Status CheckTxnPut(const KeyFlags& k) {
  if (absl::Status st = CheckKeys(k, k.key_space_size, "--key-space-size"); !st.ok()) return st;
  if (k.txn_ops > k.key_space_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("--txn-ops ", k.txn_ops,
                     " puts in one Txn need as many distinct keys; --key-space-size is ",
                     k.key_space_size, " (etcd refuses a Txn that puts one key twice)"));
  }
  return absl::OkStatus();
}

absl::Status CheckRange(const RangeFlags& r, bool end_given) {
  if (r.prefix && end_given)
    return absl::InvalidArgumentError("range: END and --prefix exclude each other");
  if (r.key.empty() && !r.prefix) {
    return absl::InvalidArgumentError(
        "range: KEY is empty (--prefix with an empty KEY: every key)");
  }
  return absl::OkStatus();
}

// Global flags that do not apply to watch are warned about, not refused, so that a
// driver may pass the same global flags to every workload.
absl::Status CheckWatch(const WatchFlags& w, const CLI::App& app) {
  if (w.streams > w.watchers) {
    return absl::InvalidArgumentError(
        absl::StrCat("watch: --streams ", w.streams, " is more than --watchers ", w.watchers));
  }
  if (app.get_option("--total")->count() > 0) {
    std::fprintf(stderr, "keel-bench: warning: watch ignores --total (--puts sets its puts)\n");
  }
  if (app.get_option("--rate")->count() > 0) {
    std::fprintf(stderr, "keel-bench: warning: watch ignores --rate (--put-rate paces its puts)\n");
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  // Debian's absl checks every Mutex acquisition for lock-order cycles, a few percent
  // of this tool's CPU spent inside gRPC's locks: a load generator cannot afford it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app("keel-bench: a load generator for etcd's v3 gRPC API (keeld or etcd)", "keel-bench");
  app.require_subcommand(1);
  app.fallthrough();  // global flags after the workload too
  Flags f;
  f.options.progress = isatty(STDERR_FILENO) == 1;
  AddGlobalFlags(app, f);
  CLI::App* put = app.add_subcommand("put", "Put --total keys");
  AddKeyFlags(put, f.put, /*key_space=*/true, /*txn_ops=*/false);
  CLI::App* range = app.add_subcommand("range", "Range [KEY, END) --total times");
  AddRangeFlags(range, f.range);
  CLI::App* txn_put = app.add_subcommand("txn-put", "--total Txns of --txn-ops puts");
  AddKeyFlags(txn_put, f.txn_put, /*key_space=*/true, /*txn_ops=*/true);
  CLI::App* watch = app.add_subcommand("watch", "put-to-event latency of many watchers");
  AddWatchFlags(watch, f.watch);
  CLI::App* lease = app.add_subcommand("lease-keepalive", "--total lease keepalives");
  lease->add_option("--leases", f.leases, "leases to keep alive (default: --clients)")
      ->check(CLI::Range(int64_t{1}, kLeasesMax));
  CLI::App* load = app.add_subcommand("load", "fill the store with --total keys");
  AddKeyFlags(load, f.load, /*key_space=*/false, /*txn_ops=*/true);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  absl::StatusOr<Options> options = MakeOptions(f);
  if (!options.ok()) return Usage(options.status().message());
  absl::Status valid = absl::OkStatus();
  if (*put) valid = CheckKeys(f.put, f.put.key_space_size, "--key-space-size");
  if (*txn_put) valid = CheckTxnPut(f.txn_put);
  if (*load) valid = CheckKeys(f.load, options->total, "--total");
  if (*range) valid = CheckRange(f.range, range->get_option("end")->count() > 0);
  if (*watch) valid = CheckWatch(f.watch, app);
  if (!valid.ok()) return Usage(valid.message());

  absl::StatusOr<std::unique_ptr<Bench>> bench = Bench::Open(*options);
  if (!bench.ok()) return Fail(bench.status().message());
  if (*put) return RunPut(**bench, f.put);
  if (*range) return RunRange(**bench, f.range);
  if (*txn_put) return RunTxnPut(**bench, f.txn_put);
  if (*load) return RunLoad(**bench, f.load);
  if (*watch) return RunWatch(**bench, f.watch);
  if (*lease) return RunLeaseKeepAlive(**bench, f.leases > 0 ? f.leases : options->clients);
  return 2;
}

}  // namespace
}  // namespace keel::bench

int main(int argc, char** argv) { return keel::bench::Main(argc, argv); }
