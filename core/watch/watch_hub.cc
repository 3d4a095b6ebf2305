#include "core/watch/watch_hub.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/errors.h"

namespace keel::watch {
namespace {

const std::string kNul(1, '\0');
constexpr int kCatchUpReadsPerCall = 16;  // history reads per catch-up pass

}  // namespace

WatchHub::WatchHub(const kv::Store* store, WatchConfig config, HeaderFiller fill_header)
    : store_(store), config_(config), fill_header_(std::move(fill_header)) {
  KEEL_ASSERT(store_ != nullptr && config_.catchup_revisions_max > 0);
  delivered_through_ = store_->revision();
}

absl::StatusOr<WatchHub::StreamId> WatchHub::OpenStream(Sink sink) {
  if (streams_.size() >= config_.streams_max) {
    return absl::ResourceExhaustedError("etcdserver: too many watch streams");
  }
  const StreamId id = next_stream_++;
  streams_.emplace(id, Stream{.sink = std::move(sink)});
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

bool WatchHub::Send(StreamId stream, etcdserverpb::WatchResponse& response) {
  auto it = streams_.find(stream);
  if (it == streams_.end()) return false;
  if (fill_header_) fill_header_(response.mutable_header());
  response.mutable_header()->set_revision(store_->revision());
  return it->second.sink(response);
}

void WatchHub::Index(const WatcherKey& w, const Watcher& watcher) {
  if (watcher.end.empty()) {
    by_key_[watcher.key].insert(w);
  } else {
    ranges_.emplace(watcher.key, w);
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
    if (it->second == w) {
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

bool WatchHub::Deliver(const WatcherKey& w, Watcher& watcher,
                       const std::vector<const mvccpb::Event*>& events) {
  etcdserverpb::WatchResponse response;
  response.set_watch_id(w.id);
  int64_t last = watcher.next_rev - 1;
  for (const mvccpb::Event* e : events) {
    const int64_t rev = e->kv().mod_revision();
    if (rev < watcher.next_rev) continue;
    last = std::max(last, rev);
    const bool put = e->type() == mvccpb::Event::PUT;
    if ((put && watcher.no_put) || (!put && watcher.no_delete)) continue;
    mvccpb::Event* out = response.add_events();
    *out = *e;
    if (watcher.prev_kv) {
      // The key as it was just before: gone if compacted meanwhile (as in etcd).
      absl::StatusOr<kv::RangeResult> prev =
          store_->Range(kv::KeyRange{e->kv().key(), ""}, {.revision = rev - 1});
      if (prev.ok() && !prev->kvs.empty()) *out->mutable_prev_kv() = prev->kvs.front();
    }
  }
  if (response.events_size() > 0 && !Send(w.stream, response)) return false;
  watcher.next_rev = last + 1;
  return true;
}

void WatchHub::OnEvents(const std::vector<mvccpb::Event>& events) {
  if (events.empty()) return;
  delivered_through_ = std::max(delivered_through_, events.back().kv().mod_revision());
  // Each matched watcher once, with its events in revision order.
  std::vector<std::pair<WatcherKey, std::vector<const mvccpb::Event*>>> matched;
  std::map<WatcherKey, std::vector<const mvccpb::Event*>> single;  // single-key watchers
  std::string_view largest;
  for (const mvccpb::Event& e : events) {
    const std::string& k = e.kv().key();
    largest = std::max(largest, std::string_view(k));
    if (auto it = by_key_.find(k); it != by_key_.end()) {
      for (const WatcherKey& w : it->second) single[w].push_back(&e);
    }
  }
  // Range watchers: one pass over those that start at or below the largest key, each
  // tested against the batch.
  for (auto it = ranges_.begin(); it != ranges_.end() && it->first <= largest; ++it) {
    const Watcher& watcher = watchers_.at(it->second);
    const kv::KeyRange range{watcher.key, watcher.end};
    std::vector<const mvccpb::Event*> mine;
    for (const mvccpb::Event& e : events) {
      if (range.Contains(e.kv().key())) mine.push_back(&e);
    }
    if (!mine.empty()) matched.emplace_back(it->second, std::move(mine));
  }
  for (auto& [w, evs] : single) matched.emplace_back(w, std::move(evs));
  std::sort(matched.begin(), matched.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });  // by stream, id
  for (auto& [w, evs] : matched) {
    Watcher& watcher = watchers_.at(w);
    const int64_t first = evs.front()->kv().mod_revision();
    if (!Deliver(w, watcher, evs)) {
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
  bool progressed = false;
  for (const WatcherKey& w : group) {
    Watcher& watcher = watchers_.at(w);
    std::vector<const mvccpb::Event*> mine;
    for (const mvccpb::Event& e : history) {
      if (kv::KeyRange{watcher.key, watcher.end}.Contains(e.kv().key())) mine.push_back(&e);
    }
    if (!Deliver(w, watcher, mine)) continue;  // still slow: next time
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
