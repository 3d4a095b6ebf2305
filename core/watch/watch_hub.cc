#include "core/watch/watch_hub.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/errors.h"

namespace keel::watch {
namespace {

const std::string kNul(1, '\0');
constexpr int kCatchUpReadsPerCall = 16;  // history reads per catch-up pass

}  // namespace

EncodedEvent EncodeEvent(const mvccpb::Event& event, const mvccpb::KeyValue* prev_kv) {
  // A response holding just this event serializes to exactly the bytes of its `events`
  // field (tag, length, event): no hand-made framing.
  etcdserverpb::WatchResponse only;
  mvccpb::Event* e = only.add_events();
  *e = event;
  if (prev_kv != nullptr) *e->mutable_prev_kv() = *prev_kv;
  auto bytes = std::make_shared<std::string>();
  KEEL_ASSERT(only.SerializeToString(bytes.get()));
  return bytes;
}

// The events of one delivery round: one OnEvents, or one read of history. Each event's
// prev_kv is looked up, and each event encoded without and with prev_kv, at most once,
// however many watchers it goes to. Lives for the round only: the store does not change
// meanwhile (the hub never writes it), so a lookup holds for every watcher.
class WatchHub::Batch {
 public:
  Batch(const kv::Store* store, const std::vector<mvccpb::Event>& events, uint64_t* encoded_count)
      : store_(store), events_(events), slots_(events.size()), encoded_count_(encoded_count) {}

  const mvccpb::Event& event(size_t i) const { return events_.at(i); }

  // The key as it was just before event i; null if it did not exist, or if that revision
  // was compacted meanwhile (as in etcd).
  const mvccpb::KeyValue* PrevKv(size_t i) {
    Slot& slot = slots_.at(i);
    if (!slot.prev_looked_up) {
      slot.prev_looked_up = true;
      const mvccpb::Event& e = events_[i];
      absl::StatusOr<kv::RangeResult> prev =
          store_->Range(kv::KeyRange{e.kv().key(), ""}, {.revision = e.kv().mod_revision() - 1});
      if (prev.ok() && !prev->kvs.empty()) slot.prev = std::move(prev->kvs.front());
    }
    return slot.prev ? &*slot.prev : nullptr;
  }

  const EncodedEvent& Encoded(size_t i, bool prev_kv) {
    Slot& slot = slots_.at(i);
    EncodedEvent& encoded = prev_kv ? slot.with_prev : slot.plain;
    if (!encoded) {
      encoded = EncodeEvent(events_[i], prev_kv ? PrevKv(i) : nullptr);
      ++*encoded_count_;
    }
    return encoded;
  }

 private:
  struct Slot {
    bool prev_looked_up = false;
    std::optional<mvccpb::KeyValue> prev;
    EncodedEvent plain;      // without prev_kv
    EncodedEvent with_prev;  // with prev_kv (if the key had one)
  };

  const kv::Store* store_;
  const std::vector<mvccpb::Event>& events_;
  std::vector<Slot> slots_;  // by event index
  uint64_t* encoded_count_;
};

WatchHub::WatchHub(const kv::Store* store, WatchConfig config, HeaderFiller fill_header)
    : store_(store), config_(config), fill_header_(std::move(fill_header)) {
  KEEL_ASSERT(store_ != nullptr && config_.catchup_revisions_max > 0);
  delivered_through_ = store_->revision();
}

absl::StatusOr<WatchHub::StreamId> WatchHub::OpenStream(Sink sink, EncodedSink encoded) {
  KEEL_ASSERT(sink != nullptr);
  if (streams_.size() >= config_.streams_max) {
    return absl::ResourceExhaustedError("etcdserver: too many watch streams");
  }
  const StreamId id = next_stream_++;
  streams_.emplace(id, Stream{.sink = std::move(sink), .encoded = std::move(encoded)});
  return id;
}

void WatchHub::CloseStream(StreamId stream) {
  auto first = watchers_.lower_bound(WatcherKey{stream, INT64_MIN});
  std::vector<WatcherKey> gone;
  for (auto it = first; it != watchers_.end() && it->first.stream == stream; ++it) {
    gone.push_back(it->first);
  }
  for (const WatcherKey& w : gone) Remove(w);
  streams_.erase(stream);
}

void WatchHub::FillHeader(etcdserverpb::WatchResponse& response) const {
  if (fill_header_) fill_header_(response.mutable_header());
  response.mutable_header()->set_revision(store_->revision());
}

bool WatchHub::Send(StreamId stream, etcdserverpb::WatchResponse& response) {
  auto it = streams_.find(stream);
  if (it == streams_.end()) return false;
  FillHeader(response);
  return it->second.sink(response);
}

void WatchHub::Index(const WatcherKey& w, Watcher& watcher) {
  if (watcher.end.empty()) {
    by_key_[watcher.key].insert(w);
  } else {
    ranges_.emplace(watcher.key, RangeEntry{w, &watcher});
  }
}

void WatchHub::Unindex(const WatcherKey& w, const Watcher& watcher) {
  if (watcher.end.empty()) {
    auto it = by_key_.find(watcher.key);
    if (it == by_key_.end()) return;
    it->second.erase(w);
    if (it->second.empty()) by_key_.erase(it);
    return;
  }
  auto [first, last] = ranges_.equal_range(watcher.key);
  for (auto it = first; it != last; ++it) {
    if (it->second.w == w) {
      ranges_.erase(it);
      return;
    }
  }
}

void WatchHub::Remove(const WatcherKey& w) {
  auto it = watchers_.find(w);
  if (it == watchers_.end()) return;
  if (it->second.synced) {
    Unindex(w, it->second);
  } else {
    unsynced_.erase(w);
  }
  watchers_.erase(it);
}

void WatchHub::Unsync(const WatcherKey& w, Watcher& watcher, int64_t next_rev) {
  if (watcher.synced) Unindex(w, watcher);
  watcher.synced = false;
  watcher.next_rev = next_rev;
  unsynced_.insert(w);
}

void WatchHub::Create(StreamId stream, const etcdserverpb::WatchCreateRequest& request) {
  auto s = streams_.find(stream);
  if (s == streams_.end()) return;
  etcdserverpb::WatchResponse response;
  response.set_created(true);
  // etcd: an empty key is the smallest key; range_end "\0" is every key >= key.
  std::string key = request.key().empty() ? kNul : request.key();
  const std::string& end = request.range_end();
  std::string refused;
  int64_t id = request.watch_id();  // 0: the hub picks (etcd's AutoWatchID)
  if (!end.empty() && end != kNul && end <= key) {
    refused = "mvcc: watcher range is empty";
  } else if (id < 0 || (id != 0 && watchers_.contains(WatcherKey{stream, id}))) {
    refused = "mvcc: duplicate watch ID provided on the WatchStream";
  } else {
    size_t count = 0;
    for (auto it = watchers_.lower_bound(WatcherKey{stream, INT64_MIN});
         it != watchers_.end() && it->first.stream == stream; ++it) {
      ++count;
    }
    if (count >= config_.watchers_per_stream_max) {
      refused = absl::StrCat("etcdserver: too many watchers on the stream (at most ",
                             config_.watchers_per_stream_max, ")");
    }
  }
  if (!refused.empty()) {
    response.set_watch_id(-1);
    response.set_canceled(true);
    response.set_cancel_reason(refused);
    Send(stream, response);
    return;
  }
  if (id == 0) {
    while (watchers_.contains(WatcherKey{stream, s->second.next_id})) ++s->second.next_id;
    id = s->second.next_id++;
  }
  Watcher watcher;
  watcher.key = std::move(key);
  watcher.end = end;
  watcher.prev_kv = request.prev_kv();
  watcher.progress_notify = request.progress_notify();
  for (int f : request.filters()) {
    if (f == etcdserverpb::WatchCreateRequest::NOPUT) watcher.no_put = true;
    if (f == etcdserverpb::WatchCreateRequest::NODELETE) watcher.no_delete = true;
  }
  const int64_t current = store_->revision();
  const int64_t start = request.start_revision();
  const WatcherKey w{stream, id};
  // etcd: a watch from 0 or from the future is synced at once (events below its start
  // are skipped); one from the past catches up from history first.
  watcher.synced = start <= 0 || start > current;
  watcher.next_rev = start <= 0 ? current + 1 : start;
  Watcher& stored = watchers_.emplace(w, std::move(watcher)).first->second;
  if (stored.synced) {
    Index(w, stored);
  } else {
    unsynced_.insert(w);
  }
  response.set_watch_id(id);
  Send(stream, response);
  if (!stored.synced) CatchUp();
}

void WatchHub::Cancel(StreamId stream, int64_t watch_id) {
  const WatcherKey w{stream, watch_id};
  if (!watchers_.contains(w)) return;
  Remove(w);
  etcdserverpb::WatchResponse response;
  response.set_watch_id(watch_id);
  response.set_canceled(true);
  Send(stream, response);
}

void WatchHub::RequestProgress(StreamId stream) {
  auto s = streams_.find(stream);
  if (s == streams_.end()) return;
  s->second.progress_wanted = true;
  AnswerProgress(stream);
}

void WatchHub::AnswerProgress(StreamId stream) {
  auto s = streams_.find(stream);
  if (s == streams_.end() || !s->second.progress_wanted) return;
  for (const WatcherKey& w : unsynced_) {
    if (w.stream == stream) return;  // not yet: a watcher is behind
  }
  s->second.progress_wanted = false;
  etcdserverpb::WatchResponse response;
  response.set_watch_id(-1);  // etcd: for every watcher of the stream
  Send(stream, response);
}

bool WatchHub::Deliver(const WatcherKey& w, Watcher& watcher, Batch& batch,
                       const std::vector<size_t>& mine) {
  auto s = streams_.find(w.stream);
  const EncodedSink* encoded =
      s != streams_.end() && s->second.encoded ? &s->second.encoded : nullptr;
  // Sinks never call back into the hub: the scratch list is this call's alone.
  KEEL_ASSERT(encoded_scratch_.empty());
  etcdserverpb::WatchResponse response;
  response.set_watch_id(w.id);
  int64_t last = watcher.next_rev - 1;
  for (size_t i : mine) {
    const mvccpb::Event& e = batch.event(i);
    const int64_t rev = e.kv().mod_revision();
    if (rev < watcher.next_rev) continue;
    last = std::max(last, rev);
    const bool put = e.type() == mvccpb::Event::PUT;
    if ((put && watcher.no_put) || (!put && watcher.no_delete)) continue;
    if (encoded != nullptr) {
      encoded_scratch_.push_back(batch.Encoded(i, watcher.prev_kv));
      continue;
    }
    mvccpb::Event* out = response.add_events();
    *out = e;
    if (watcher.prev_kv) {
      if (const mvccpb::KeyValue* prev = batch.PrevKv(i)) *out->mutable_prev_kv() = *prev;
    }
  }
  bool taken = true;
  if (!encoded_scratch_.empty()) {
    FillHeader(response);
    taken = (*encoded)(response, encoded_scratch_);
    encoded_scratch_.clear();
  } else if (response.events_size() > 0) {
    taken = Send(w.stream, response);
  }
  if (!taken) return false;
  watcher.next_rev = last + 1;
  return true;
}

void WatchHub::OnEvents(const std::vector<mvccpb::Event>& events) {
  if (events.empty()) return;
  delivered_through_ = std::max(delivered_through_, events.back().kv().mod_revision());
  Batch batch(store_, events, &events_encoded_);
  // Each matched watcher once, with its events (indices, in revision order) as one of
  // `lists`: watchers of the same range share theirs.
  std::vector<std::vector<size_t>> lists;
  struct Match {
    WatcherKey w;
    Watcher* watcher;
    size_t list;  // index into lists
  };
  std::vector<Match> matched;
  std::map<WatcherKey, std::vector<size_t>> single;  // single-key watchers
  std::string_view largest;
  for (size_t i = 0; i < events.size(); ++i) {
    const std::string& k = events[i].kv().key();
    largest = std::max(largest, std::string_view(k));
    if (auto it = by_key_.find(k); it != by_key_.end()) {
      for (const WatcherKey& w : it->second) single[w].push_back(i);
    }
  }
  // Range watchers: one pass over those that start at or below the largest key, each
  // range tested against the batch once (ranges with the same start are adjacent).
  constexpr size_t kNoList = SIZE_MAX;  // the last range matched nothing
  const Watcher* last_range = nullptr;
  size_t last_list = kNoList;
  for (auto it = ranges_.begin(); it != ranges_.end() && it->first <= largest; ++it) {
    Watcher& watcher = *it->second.watcher;
    if (last_range == nullptr || last_range->key != watcher.key || last_range->end != watcher.end) {
      last_range = &watcher;
      const kv::KeyRange range{watcher.key, watcher.end};
      std::vector<size_t> mine;
      for (size_t i = 0; i < events.size(); ++i) {
        if (range.Contains(events[i].kv().key())) mine.push_back(i);
      }
      last_list = kNoList;
      if (!mine.empty()) {
        last_list = lists.size();
        lists.push_back(std::move(mine));
      }
    }
    if (last_list != kNoList) matched.push_back(Match{it->second.w, &watcher, last_list});
  }
  for (auto& [w, evs] : single) {
    matched.push_back(Match{w, &watchers_.at(w), lists.size()});
    lists.push_back(std::move(evs));
  }
  std::sort(matched.begin(), matched.end(),
            [](const Match& a, const Match& b) { return a.w < b.w; });  // by stream, id
  for (const Match& m : matched) {
    const WatcherKey& w = m.w;
    Watcher& watcher = *m.watcher;
    const std::vector<size_t>& evs = lists[m.list];
    const int64_t first = events[evs.front()].kv().mod_revision();
    if (!Deliver(w, watcher, batch, evs)) {
      // A slow client: it catches up from history, from the first event it missed.
      Unsync(w, watcher, std::max(first, watcher.next_rev));
    }
  }
}

void WatchHub::OnRestored() {
  std::vector<WatcherKey> synced;
  for (auto& [w, watcher] : watchers_) {
    if (watcher.synced) synced.push_back(w);
  }
  for (const WatcherKey& w : synced) {
    // A synced watcher has every event the hub was told of, quiet keys included.
    Watcher& watcher = watchers_.at(w);
    Unsync(w, watcher, std::max(watcher.next_rev, delivered_through_ + 1));
  }
}

void WatchHub::Tick(Nanos now) {
  CatchUp();
  if (now - last_progress_ < config_.progress_interval) return;
  last_progress_ = now;
  for (auto& [w, watcher] : watchers_) {
    if (!watcher.synced || !watcher.progress_notify) continue;
    etcdserverpb::WatchResponse response;
    response.set_watch_id(w.id);
    Send(w.stream, response);
  }
}

void WatchHub::CatchUp() {
  const int64_t compacted = store_->compacted();
  // History at or below the compacted revision is incomplete: those watchers end.
  std::vector<WatcherKey> too_old;
  for (const WatcherKey& w : unsynced_) {
    if (watchers_.at(w).next_rev <= compacted) too_old.push_back(w);
  }
  for (const WatcherKey& w : too_old) {
    Remove(w);
    etcdserverpb::WatchResponse response;
    response.set_watch_id(w.id);
    response.set_canceled(true);
    response.set_compact_revision(compacted + 1);
    response.set_cancel_reason(std::string(kv::ErrCompacted().message()));
    Send(w.stream, response);
  }
  // Watchers behind by the same revision share one read of history. Each group moves on
  // by itself: a slow client holds back no one but itself. A few passes per call, a
  // bounded number of reads: catch-up is work in proportion to history, done in slices.
  int reads = 0;
  for (int pass = 0; pass < 4 && !unsynced_.empty(); ++pass) {
    std::map<int64_t, std::vector<WatcherKey>> by_next;
    for (const WatcherKey& w : unsynced_) by_next[watchers_.at(w).next_rev].push_back(w);
    bool progressed = false;
    for (const auto& [from, group] : by_next) {
      if (reads++ >= kCatchUpReadsPerCall) break;
      progressed |= CatchUpGroup(from, group);
    }
    if (!progressed) break;
  }
  for (auto& [stream, s] : streams_) {
    if (s.progress_wanted) AnswerProgress(stream);
  }
}

bool WatchHub::CatchUpGroup(int64_t from, const std::vector<WatcherKey>& group) {
  const int64_t current = store_->revision();
  const int64_t upto = std::min(current + 1, from + config_.catchup_revisions_max);  // [from, upto)
  std::vector<mvccpb::Event> history;
  if (from < upto && !store_->Events(from, upto, &history).ok()) {
    return false;  // a storage failure: the node stops on its own
  }
  Batch batch(store_, history, &events_encoded_);
  bool progressed = false;
  for (const WatcherKey& w : group) {
    Watcher& watcher = watchers_.at(w);
    const kv::KeyRange range{watcher.key, watcher.end};
    std::vector<size_t> mine;
    for (size_t i = 0; i < history.size(); ++i) {
      if (range.Contains(history[i].kv().key())) mine.push_back(i);
    }
    if (!Deliver(w, watcher, batch, mine)) continue;  // still slow: next time
    progressed = true;
    watcher.next_rev = std::max(watcher.next_rev, upto);
    if (config_.bugs.skip_first_event_after_batch && upto <= current) ++watcher.next_rev;
    if (watcher.next_rev > current) {
      watcher.synced = true;
      Index(w, watcher);
      unsynced_.erase(w);
    }
  }
  return progressed;
}

size_t WatchHub::unsynced() const { return unsynced_.size(); }

void WatchHub::CheckInvariants() const {
  for (const auto& [key, entry] : ranges_) {
    auto it = watchers_.find(entry.w);
    KEEL_ASSERT(it != watchers_.end() && &it->second == entry.watcher && key == it->second.key);
  }
  size_t indexed = ranges_.size();
  for (const auto& [key, ws] : by_key_) indexed += ws.size();
  size_t synced = 0;
  for (const auto& [w, watcher] : watchers_) {
    KEEL_ASSERT(streams_.contains(w.stream));
    KEEL_ASSERT(watcher.synced != unsynced_.contains(w));
    if (watcher.synced) ++synced;
  }
  KEEL_ASSERT(indexed == synced);
}

}  // namespace keel::watch
