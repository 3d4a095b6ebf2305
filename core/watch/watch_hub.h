#pragma once
// WatchHub: etcd's watch on one member (etcd's watchableStore + serverWatchStream).
// Clients open streams; each stream holds watchers on a key or a range, from a start
// revision, with etcd's options (NOPUT/NODELETE filters, prev_kv, progress_notify).
//
// Delivery. A watcher sees every event of its range at or after its start revision,
// in revision order, each once, a revision's events together in one response. A
// *synced* watcher is at the store's revision: events reach it as they are applied
// (OnEvents). An *unsynced* one is behind: it started in the past, its client could not
// take a response (the stream's Sink said no: a slow client), or the state was replaced
// by a snapshot; it catches up from the store's history in batches of whole revisions
// (Tick), and is synced again once it reaches the store's revision. A slow watcher never
// blocks writes and is never skipped ahead: it falls back to history.
//
// Compaction. A watcher that needs history at or below the compacted revision is canceled
// with compact_revision set to the first revision it may watch from (compacted + 1); its
// client lists again. (etcd also serves a watch from exactly the compacted revision and
// reports compact_revision = compacted; but a compaction drops the deletes made at that
// very revision, so such a watch can miss events. keel refuses it.)
//
// Progress. RequestProgress answers, once every watcher of the stream is synced, with
// watch_id -1 and the store's revision (etcd 3.5's semantics: the promise that every
// event at or below it was delivered). Watchers created with progress_notify get an
// empty response every progress_interval while synced.
//
// Control responses (created, canceled, progress) are always taken by the Sink; only
// event responses may be refused.
//
// Encoded delivery. One put under a prefix that a thousand watchers watch is a thousand
// responses carrying the same event. A stream opened with an EncodedSink gets its event
// responses as the response without its events (watch_id, header) plus the events'
// bytes, each event serialized once per delivery round (one OnEvents, one catch-up read)
// for every watcher and stream it goes to, and once more with prev_kv if a watcher asked
// for it (the prev_kv lookup is the same for every watcher: it is done once too). The
// host writes the response's bytes and then the events' (protobuf's wire format makes the
// concatenation the whole response) without copying an event per watcher. Control
// responses still go through the Sink. A stream opened without one (the simulator,
// tests) gets every response whole, as before; both paths deliver the same responses.
//
// Single-threaded; the hub reads the store, never writes it.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/status/statusor.h"
#include "core/etcdpb/forward.h"
#include "core/etcdpb/kv.pb.h"
#include "core/kv/store.h"
#include "core/types.h"

namespace keel::watch {

struct WatchPlantedBugs {
  // A catch-up batch that ends on a revision boundary resumes one revision too late:
  // the first event after the boundary is lost.
  bool skip_first_event_after_batch = false;
};

struct WatchConfig {
  int64_t catchup_revisions_max = 1000;  // history read per catch-up batch
  size_t watchers_per_stream_max = 10'000;
  size_t streams_max = 100'000;
  Nanos progress_interval = std::chrono::minutes(10);  // etcd's default
  WatchPlantedBugs bugs;
};

// One event as it goes on the wire, shared (read-only, by any thread) by every response
// that carries it: the bytes of a WatchResponse whose only field is this one event (field
// `events`: its tag, its length, the serialized mvccpb::Event with prev_kv if asked). A
// response's bytes without events followed by its events' bytes are the whole response.
using EncodedEvent = std::shared_ptr<const std::string>;

// Encodes `event` (with `prev_kv` set if not null) as above.
EncodedEvent EncodeEvent(const mvccpb::Event& event, const mvccpb::KeyValue* prev_kv = nullptr);

class WatchHub {
 public:
  using StreamId = uint64_t;
  // A stream's way to its client. Returns false if the client cannot take it now (the
  // response was not taken). The sink may move from the response: the hub does not
  // use it after.
  using Sink = std::function<bool(etcdserverpb::WatchResponse&)>;
  // A stream's way to its client for event responses, encoded: `meta` is the response
  // without its events (watch_id, header), `events` (never empty) follow it in order.
  // Returns false if the client cannot take it now, as Sink. The sink may move from
  // `meta`, and keeps what it needs of `events` (a copy of a pointer shares the bytes).
  using EncodedSink =
      std::function<bool(etcdserverpb::WatchResponse& meta, std::span<const EncodedEvent> events)>;
  // Fills a response header's cluster, member and term (the hub sets the revision).
  using HeaderFiller = std::function<void(etcdserverpb::ResponseHeader*)>;

  // Requires: store outlives the hub.
  WatchHub(const kv::Store* store, WatchConfig config, HeaderFiller fill_header);

  // ResourceExhausted beyond streams_max. With `encoded`, event responses go through it
  // (see "Encoded delivery" above), every other response through `sink`.
  // Requires: sink.
  absl::StatusOr<StreamId> OpenStream(Sink sink, EncodedSink encoded = nullptr);
  void CloseStream(StreamId stream);
  // Creates a watcher and answers `created` (or created + canceled with etcd's reason).
  void Create(StreamId stream, const etcdserverpb::WatchCreateRequest& request);
  // Cancels a watcher (answered `canceled`); an unknown id is ignored, as etcd does.
  void Cancel(StreamId stream, int64_t watch_id);
  void RequestProgress(StreamId stream);

  // The store applied these events (one or more commands', in revision order); each
  // watcher gets those it matches in one response.
  void OnEvents(const std::vector<mvccpb::Event>& events);
  // The store's state was replaced (a snapshot): every watcher catches up from history.
  void OnRestored();
  // Catch-up, progress notifications. Call often (every Raft tick).
  void Tick(Nanos now);

  size_t watchers() const { return watchers_.size(); }
  size_t unsynced() const;
  // Events serialized for encoded sinks since the hub started (with and without prev_kv
  // counted apart): at most twice per event per delivery round, whatever the fan-out.
  uint64_t events_encoded() const { return events_encoded_; }
  void CheckInvariants() const;

 private:
  struct WatcherKey {
    StreamId stream;
    int64_t id;
    auto operator<=>(const WatcherKey&) const = default;
  };
  struct Watcher {
    std::string key;
    std::string end;  // etcd's convention: empty = the key; "\0" = every key >= key
    bool prev_kv = false;
    bool no_put = false;
    bool no_delete = false;
    bool progress_notify = false;
    int64_t next_rev = 0;  // the first revision not yet delivered
    bool synced = false;
  };
  struct Stream {
    Sink sink;
    EncodedSink encoded;  // may be empty: events go through `sink`
    int64_t next_id = 0;
    bool progress_wanted = false;
  };
  class Batch;  // the events of one delivery round (watch_hub.cc)

  // The header: the host's fields, and the store's revision.
  void FillHeader(etcdserverpb::WatchResponse& response) const;
  // Fills the header and hands the response to the stream's sink.
  bool Send(StreamId stream, etcdserverpb::WatchResponse& response);
  // Requires: `watcher` is w's, in watchers_.
  void Index(const WatcherKey& w, Watcher& watcher);
  void Unindex(const WatcherKey& w, const Watcher& watcher);
  void Remove(const WatcherKey& w);
  // Delivers the batch's events `mine` (indices: whole revisions, ascending) to one
  // watcher; false if refused.
  bool Deliver(const WatcherKey& w, Watcher& watcher, Batch& batch,
               const std::vector<size_t>& mine);
  void Unsync(const WatcherKey& w, Watcher& watcher, int64_t next_rev);
  void CatchUp();
  bool CatchUpGroup(int64_t from, const std::vector<WatcherKey>& group);
  void AnswerProgress(StreamId stream);

  const kv::Store* store_;
  WatchConfig config_;
  HeaderFiller fill_header_;
  StreamId next_stream_ = 1;
  std::map<StreamId, Stream> streams_;
  std::map<WatcherKey, Watcher> watchers_;
  // Synced watchers by what they watch: single keys, and ranges by their start key (with
  // the watcher itself: watchers_ never moves its elements, and Unindex comes before any
  // erase).
  struct RangeEntry {
    WatcherKey w;
    Watcher* watcher;
  };
  absl::btree_map<std::string, std::set<WatcherKey>, std::less<>> by_key_;
  std::multimap<std::string, RangeEntry, std::less<>> ranges_;
  std::set<WatcherKey> unsynced_;
  Nanos last_progress_{0};
  int64_t delivered_through_ = 0;  // the latest revision OnEvents reported
  uint64_t events_encoded_ = 0;
  std::vector<EncodedEvent> encoded_scratch_;  // one response's events, reused
};

}  // namespace keel::watch
