// WatchHub: etcd's watch on one member, tested over a real kv::Store on a MemoryBackend,
// as the server drives it (write a command, then OnEvents with its events; Tick often).
// Covers the created/canceled responses (ids, etcd's refusal reasons, limits), delivery
// to synced watchers (keys, ranges, filters, prev_kv, future starts), catch-up from
// history (at Create and on Tick, in batches), slow clients, compaction, progress
// (RequestProgress and progress_notify), Cancel, CloseStream, OnRestored, and the planted
// catch-up bug. Every response is compared exactly, and the hub's invariants are checked
// after every step.
//
// Every test runs twice: with streams that take whole responses (Sink), and with streams
// that take event responses encoded (EncodedSink: the response without events, then the
// events' shared bytes), whose client parses the concatenation back: both deliveries
// must be the same responses. The encoded path's own promises (each event encoded once
// per round, its bytes shared) have their tests at the end.

#include "core/watch/watch_hub.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/etcdpb/kv.pb.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/store.h"
#include "tests/core/kv/memory_backend.h"

namespace keel::watch {
namespace {

using etcdserverpb::WatchCreateRequest;
using etcdserverpb::WatchResponse;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using StreamId = WatchHub::StreamId;

const std::string kNul("\0", 1);  // range_end "\0": every key >= key
constexpr uint64_t kCluster = 77;
constexpr uint64_t kMember = 5;
constexpr uint64_t kTerm = 3;
const std::string kCompacted = "etcdserver: mvcc: required revision has been compacted";
const std::string kDuplicate = "mvcc: duplicate watch ID provided on the WatchStream";
const std::string kEmptyRange = "mvcc: watcher range is empty";

std::string KvStr(const mvccpb::KeyValue& kv) {
  return absl::StrCat(kv.key(), "=", kv.value(), "@", kv.mod_revision());
}

std::string EventStr(const mvccpb::Event& e) {
  std::string s = e.type() == mvccpb::Event::PUT
                      ? absl::StrCat("PUT ", KvStr(e.kv()))
                      : absl::StrCat("DEL ", e.kv().key(), "@", e.kv().mod_revision());
  if (e.has_prev_kv()) absl::StrAppend(&s, " prev ", KvStr(e.prev_kv()));
  return s;
}

// A response in one line: "w<id> [created] [canceled] [compact=N] [reason=...] @<header
// revision>[: event, event...]".
std::string Str(const WatchResponse& r) {
  std::string s = absl::StrCat("w", r.watch_id());
  if (r.created()) absl::StrAppend(&s, " created");
  if (r.canceled()) absl::StrAppend(&s, " canceled");
  if (r.compact_revision() != 0) absl::StrAppend(&s, " compact=", r.compact_revision());
  if (!r.cancel_reason().empty()) absl::StrAppend(&s, " reason=", r.cancel_reason());
  absl::StrAppend(&s, " @", r.header().revision());
  if (r.events_size() > 0) {
    std::vector<std::string> evs;
    for (const mvccpb::Event& e : r.events()) evs.push_back(EventStr(e));
    absl::StrAppend(&s, ": ", absl::StrJoin(evs, ", "));
  }
  return s;
}

// A client at the end of one stream: keeps what it takes; while slow, it refuses every
// event response (control responses are always taken).
struct Client {
  std::vector<WatchResponse> got;
  bool slow = false;
  int refused = 0;
  // Encoded streams: the bytes each taken event response's events pointed at.
  std::vector<std::vector<const std::string*>> event_bytes;

  // The responses taken since the last Take, as strings.
  std::vector<std::string> Take() {
    std::vector<std::string> out;
    for (const WatchResponse& r : got) out.push_back(Str(r));
    got.clear();
    return out;
  }
  // The event revisions taken for `id` since the last Take, one vector per response.
  std::vector<std::vector<int64_t>> RevisionsPerResponse(int64_t id) const {
    std::vector<std::vector<int64_t>> out;
    for (const WatchResponse& r : got) {
      if (r.watch_id() != id || r.events_size() == 0) continue;
      std::vector<int64_t> revs;
      for (const mvccpb::Event& e : r.events()) revs.push_back(e.kv().mod_revision());
      out.push_back(revs);
    }
    return out;
  }
  // Every event revision taken for `id` since the last Take, in order of arrival.
  std::vector<int64_t> Revisions(int64_t id) const {
    std::vector<int64_t> out;
    for (const auto& revs : RevisionsPerResponse(id)) out.insert(out.end(), revs.begin(), revs.end());
    return out;
  }
};

WatchCreateRequest Watch(std::string key, std::string end = "", int64_t start = 0) {
  WatchCreateRequest req;
  req.set_key(std::move(key));
  req.set_range_end(std::move(end));
  req.set_start_revision(start);
  return req;
}

WatchCreateRequest WithId(WatchCreateRequest req, int64_t id) {
  req.set_watch_id(id);
  return req;
}

std::vector<int64_t> Range(int64_t from, int64_t to) {  // [from, to]
  std::vector<int64_t> out;
  for (int64_t r = from; r <= to; ++r) out.push_back(r);
  return out;
}

// How the tests' streams take event responses.
enum class Delivery { kWhole, kEncoded };

std::string DeliveryName(const ::testing::TestParamInfo<Delivery>& info) {
  return info.param == Delivery::kWhole ? "Whole" : "Encoded";
}

// What an encoded sink's client reads: the response's bytes, then its events' bytes.
WatchResponse Concatenated(const WatchResponse& meta, std::span<const EncodedEvent> events) {
  std::string wire = meta.SerializeAsString();
  for (const EncodedEvent& e : events) wire += *e;
  WatchResponse parsed;
  EXPECT_TRUE(parsed.ParseFromString(wire));
  return parsed;
}

class WatchHubTest : public ::testing::TestWithParam<Delivery> {
 protected:
  void SetUp() override { Init({}); }

  void Init(WatchConfig config) {
    hub = std::make_unique<WatchHub>(&store, config, [](etcdserverpb::ResponseHeader* h) {
      h->set_cluster_id(kCluster);
      h->set_member_id(kMember);
      h->set_raft_term(kTerm);
    });
    Check();
  }

  StreamId Open(Client& c) { return Open(c, GetParam()); }
  StreamId Open(Client& c, Delivery delivery) {
    const bool encoded = delivery == Delivery::kEncoded;
    auto take = [&c](const WatchResponse& r) {
      if (c.slow && r.events_size() > 0) {
        ++c.refused;
        return false;
      }
      c.got.push_back(r);
      return true;
    };
    WatchHub::EncodedSink encoded_sink;
    if (encoded) {
      encoded_sink = [take, &c](WatchResponse& meta, std::span<const EncodedEvent> events) {
        EXPECT_EQ(meta.events_size(), 0);
        EXPECT_FALSE(events.empty());
        if (!take(Concatenated(meta, events))) return false;
        std::vector<const std::string*> bytes;
        for (const EncodedEvent& e : events) bytes.push_back(e.get());
        c.event_bytes.push_back(std::move(bytes));
        return true;
      };
    }
    absl::StatusOr<StreamId> s = hub->OpenStream(
        [take, encoded](const WatchResponse& r) {
          if (encoded) {
            EXPECT_EQ(r.events_size(), 0) << "events bypassed the encoded sink";
          }
          return take(r);
        },
        std::move(encoded_sink));
    EXPECT_TRUE(s.ok()) << s.status();
    Check();
    return s.value_or(0);
  }

  void Create(StreamId s, const WatchCreateRequest& req) {
    hub->Create(s, req);
    Check();
  }
  void Cancel(StreamId s, int64_t id) {
    hub->Cancel(s, id);
    Check();
  }
  void RequestProgress(StreamId s) {
    hub->RequestProgress(s);
    Check();
  }
  void CloseStream(StreamId s) {
    hub->CloseStream(s);
    Check();
  }
  void Tick(Nanos now = Nanos(0)) {
    hub->Tick(now);
    Check();
  }
  void Restored() {
    hub->OnRestored();
    Check();
  }

  // One command of puts (one revision); the hub is told. Returns the store's revision.
  int64_t Apply(const std::vector<std::pair<std::string, std::string>>& puts, bool tell = true) {
    kv::Store::Writer w = store.Write();
    for (const auto& [k, v] : puts) EXPECT_TRUE(w.Put(k, v, 0).ok());
    std::vector<mvccpb::Event> events = w.End();
    if (tell) hub->OnEvents(events);
    Check();
    return store.revision();
  }
  int64_t Put(const std::string& key, const std::string& value) { return Apply({{key, value}}); }
  // A write the hub never hears of (a snapshot brings it); OnRestored follows.
  int64_t PutUnseen(const std::string& key, const std::string& value) {
    return Apply({{key, value}}, /*tell=*/false);
  }
  int64_t Delete(const std::string& key, const std::string& end = "") {
    kv::Store::Writer w = store.Write();
    absl::StatusOr<int64_t> n = w.DeleteRange(kv::KeyRange{key, end}, nullptr);
    EXPECT_TRUE(n.ok() && *n > 0);
    std::vector<mvccpb::Event> events = w.End();
    hub->OnEvents(events);
    Check();
    return store.revision();
  }
  void Compact(int64_t rev) {
    ASSERT_TRUE(store.Compact(rev).ok());
    Check();
  }

  void Check() {
    store.CheckInvariants();
    if (hub) hub->CheckInvariants();
  }

  kv::MemoryBackend backend;
  kv::Store store{&backend, nullptr};
  std::unique_ptr<WatchHub> hub;
};

// ---------------------------------------------------------------- created responses

TEST_P(WatchHubTest, AutomaticIdsAreZeroOneTwoOnEachStreamAndEveryResponseHasAFullHeader) {
  Client a, b;
  StreamId sa = Open(a), sb = Open(b);
  EXPECT_NE(sa, sb);
  Create(sa, Watch("x"));
  Create(sa, Watch("y"));
  Create(sa, Watch("z", "\x7f"));
  Create(sb, Watch("x"));
  for (const WatchResponse& r : a.got) {
    EXPECT_EQ(r.header().cluster_id(), kCluster);
    EXPECT_EQ(r.header().member_id(), kMember);
    EXPECT_EQ(r.header().raft_term(), kTerm);
  }
  EXPECT_THAT(a.Take(), ElementsAre("w0 created @1", "w1 created @1", "w2 created @1"));
  EXPECT_THAT(b.Take(), ElementsAre("w0 created @1"));
  EXPECT_EQ(hub->watchers(), 4u);
  EXPECT_EQ(hub->unsynced(), 0u);
}

TEST_P(WatchHubTest, AClientChosenIdIsKeptAndAutomaticIdsSkipIt) {
  Client a;
  StreamId s = Open(a);
  Create(s, WithId(Watch("x"), 1));
  Create(s, Watch("x"));
  Create(s, Watch("x"));
  Create(s, WithId(Watch("x"), 100));
  EXPECT_THAT(a.Take(), ElementsAre("w1 created @1", "w0 created @1", "w2 created @1",
                                    "w100 created @1"));
  Put("x", "v");
  EXPECT_THAT(a.Take(), ElementsAre("w0 @2: PUT x=v@2", "w1 @2: PUT x=v@2", "w2 @2: PUT x=v@2",
                                    "w100 @2: PUT x=v@2"));
}

TEST_P(WatchHubTest, ADuplicateIdIsAnsweredCreatedAndCanceledWithEtcdsReasonAndChangesNothing) {
  Client a, b;
  StreamId sa = Open(a), sb = Open(b);
  Create(sa, WithId(Watch("x"), 5));
  Create(sa, WithId(Watch("y"), 5));
  Create(sb, WithId(Watch("y"), 5));  // the same id on another stream is another watcher
  EXPECT_THAT(a.Take(), ElementsAre("w5 created @1",
                                    "w-1 created canceled reason=" + kDuplicate + " @1"));
  EXPECT_THAT(b.Take(), ElementsAre("w5 created @1"));
  EXPECT_EQ(hub->watchers(), 2u);
  Put("x", "1");
  Put("y", "2");
  EXPECT_THAT(a.Take(), ElementsAre("w5 @2: PUT x=1@2"));  // still the first watcher's key
  EXPECT_THAT(b.Take(), ElementsAre("w5 @3: PUT y=2@3"));
}

TEST_P(WatchHubTest, AnEmptyRangeIsAnsweredCreatedAndCanceledWithEtcdsReason) {
  Client a;
  StreamId s = Open(a);
  Create(s, Watch("b", "a"));
  Create(s, Watch("b", "b"));
  EXPECT_THAT(a.Take(), ElementsAre("w-1 created canceled reason=" + kEmptyRange + " @1",
                                    "w-1 created canceled reason=" + kEmptyRange + " @1"));
  EXPECT_EQ(hub->watchers(), 0u);
  // Not empty: "\0" as the end (every key >= key), and an empty key with it (every key).
  Create(s, Watch("b", kNul));
  Create(s, Watch("", kNul));
  Create(s, Watch("b", "c"));
  EXPECT_THAT(a.Take(), ElementsAre("w0 created @1", "w1 created @1", "w2 created @1"));
  EXPECT_EQ(hub->watchers(), 3u);
}

TEST_P(WatchHubTest, WatchersPerStreamMaxRefusesTheNextWatcherOnThatStreamOnly) {
  Init({.watchers_per_stream_max = 2});
  Client a, b;
  StreamId sa = Open(a), sb = Open(b);
  Create(sa, Watch("x"));
  Create(sa, Watch("x"));
  Create(sa, Watch("x"));
  Create(sb, Watch("x"));
  EXPECT_THAT(a.Take(),
              ElementsAre("w0 created @1", "w1 created @1",
                          "w-1 created canceled reason=etcdserver: too many watchers on the "
                          "stream (at most 2) @1"));
  EXPECT_THAT(b.Take(), ElementsAre("w0 created @1"));
  EXPECT_EQ(hub->watchers(), 3u);
  Cancel(sa, 0);
  Create(sa, Watch("x"));
  EXPECT_THAT(a.Take(), ElementsAre("w0 canceled @1", "w2 created @1"));
}

TEST_P(WatchHubTest, StreamsMaxRefusesAnotherStreamWithResourceExhaustedUntilOneCloses) {
  Init({.streams_max = 2});
  Client a, b, c;
  StreamId sa = Open(a);
  Open(b);
  absl::StatusOr<StreamId> refused = hub->OpenStream([](const WatchResponse&) { return true; });
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  CloseStream(sa);
  StreamId sc = Open(c);
  Create(sc, Watch("x"));
  EXPECT_THAT(c.Take(), ElementsAre("w0 created @1"));
}

// ---------------------------------------------------------------- synced delivery

TEST_P(WatchHubTest, ASyncedWatchOfAKeySeesLaterPutsAndDeletesOfThatKeyOnly) {
  Client a;
  StreamId s = Open(a);
  Create(s, Watch("a"));
  a.Take();
  Put("a", "1");
  Put("ab", "2");
  Put("b", "3");
  Put("0", "4");
  Put("a", "5");
  Delete("a");
  EXPECT_THAT(a.Take(), ElementsAre("w0 @2: PUT a=1@2", "w0 @6: PUT a=5@6", "w0 @7: DEL a@7"));
  EXPECT_EQ(hub->unsynced(), 0u);
}

TEST_P(WatchHubTest, APrefixRangeWatchSeesTheKeysOfItsRangeOnly) {
  Client a;
  StreamId s = Open(a);
  Create(s, Watch("a/", "a0"));  // the prefix "a/"
  a.Take();
  Put("a", "1");
  Put("a/", "2");
  Put("a/x", "3");
  Put("a0", "4");
  Put("a/y/z", "5");
  Put("b", "6");
  Delete("a/", "a0");
  EXPECT_THAT(a.Take(), ElementsAre("w0 @3: PUT a/=2@3", "w0 @4: PUT a/x=3@4",
                                    "w0 @6: PUT a/y/z=5@6",
                                    "w0 @8: DEL a/@8, DEL a/x@8, DEL a/y/z@8"));
}

TEST_P(WatchHubTest, ANulRangeEndWatchesEveryKeyFromTheKeyAndWithAnEmptyKeyEveryKey) {
  Client a;
  StreamId s = Open(a);
  Create(s, Watch("m", kNul));
  Create(s, Watch("", kNul));
  a.Take();
  Put("a", "1");
  Put("m", "2");
  Put("zz", "3");
  EXPECT_THAT(a.Take(), ElementsAre("w1 @2: PUT a=1@2", "w0 @3: PUT m=2@3", "w1 @3: PUT m=2@3",
                                    "w0 @4: PUT zz=3@4", "w1 @4: PUT zz=3@4"));
}

TEST_P(WatchHubTest, TheEventsOfOneCommandArriveTogetherInOneResponse) {
  Client a;
  StreamId s = Open(a);
  Create(s, Watch("", kNul));
  Create(s, Watch("b"));
  a.Take();
  Apply({{"a", "1"}, {"b", "2"}, {"c", "3"}});
  Apply({{"d", "4"}, {"e", "5"}});
  EXPECT_THAT(a.Take(), ElementsAre("w0 @2: PUT a=1@2, PUT b=2@2, PUT c=3@2", "w1 @2: PUT b=2@2",
                                    "w0 @3: PUT d=4@3, PUT e=5@3"));
}

TEST_P(WatchHubTest, NoPutAndNoDeleteFiltersDropThoseEventsOnly) {
  Client a;
  StreamId s = Open(a);
  WatchCreateRequest no_put = Watch("", kNul);
  no_put.add_filters(WatchCreateRequest::NOPUT);
  WatchCreateRequest no_delete = Watch("", kNul);
  no_delete.add_filters(WatchCreateRequest::NODELETE);
  Create(s, no_put);
  Create(s, no_delete);
  a.Take();
  Put("a", "1");
  Put("b", "2");
  Delete("a");
  // One command with a put and a delete: each filter keeps its half of it.
  kv::Store::Writer w = store.Write();
  ASSERT_TRUE(w.Put("c", "3", 0).ok());
  ASSERT_TRUE(w.DeleteRange(kv::KeyRange{"b", ""}, nullptr).ok());
  hub->OnEvents(w.End());
  Check();
  EXPECT_THAT(a.Take(), ElementsAre("w1 @2: PUT a=1@2", "w1 @3: PUT b=2@3", "w0 @4: DEL a@4",
                                    "w0 @5: DEL b@5", "w1 @5: PUT c=3@5"));
}

TEST_P(WatchHubTest, PrevKvIsTheKeyAsItWasJustBeforeAndAbsentForANewKey) {
  Client a;
  StreamId s = Open(a);
  WatchCreateRequest req = Watch("a");
  req.set_prev_kv(true);
  Create(s, req);
  Create(s, Watch("a"));  // without prev_kv
  a.Take();
  Put("a", "1");
  Put("b", "x");
  Put("a", "2");
  Delete("a");
  Put("a", "3");
  EXPECT_THAT(a.Take(),
              ElementsAre("w0 @2: PUT a=1@2", "w1 @2: PUT a=1@2",
                          "w0 @4: PUT a=2@4 prev a=1@2", "w1 @4: PUT a=2@4",
                          "w0 @5: DEL a@5 prev a=2@4", "w1 @5: DEL a@5",
                          "w0 @6: PUT a=3@6", "w1 @6: PUT a=3@6"));
}

TEST_P(WatchHubTest, AWatchFromAFutureRevisionSkipsEventsBelowItsStart) {
  Client a;
  StreamId s = Open(a);
  Create(s, Watch("a", "", 4));
  EXPECT_THAT(a.Take(), ElementsAre("w0 created @1"));
  EXPECT_EQ(hub->unsynced(), 0u);
  Put("a", "1");
  Put("a", "2");
  Tick();
  EXPECT_THAT(a.Take(), IsEmpty());
  Put("a", "3");
  Put("a", "4");
  EXPECT_THAT(a.Take(), ElementsAre("w0 @4: PUT a=3@4", "w0 @5: PUT a=4@5"));
}

// ---------------------------------------------------------------- catch-up

TEST_P(WatchHubTest, AWatchFromThePastCatchesUpAtCreateThenGetsLiveEventsWithoutGapOrDuplicate) {
  Put("a", "1");  // 2
  Put("b", "2");  // 3
  Put("a", "3");  // 4
  Put("a", "4");  // 5
  Client a;
  StreamId s = Open(a);
  WatchCreateRequest req = Watch("a", "", 3);
  req.set_prev_kv(true);
  Create(s, req);
  Create(s, Watch("a", "", 5));  // from the store's revision itself
  EXPECT_THAT(a.Take(), ElementsAre("w0 created @5", "w0 @5: PUT a=3@4 prev a=1@2, PUT a=4@5 prev a=3@4",
                                    "w1 created @5", "w1 @5: PUT a=4@5"));
  EXPECT_EQ(hub->unsynced(), 0u);
  Put("a", "5");
  Tick();
  EXPECT_THAT(a.Take(), ElementsAre("w0 @6: PUT a=5@6 prev a=4@5", "w1 @6: PUT a=5@6"));
}

TEST_P(WatchHubTest, AWatchFromThePastWhoseClientIsBusyCatchesUpOnTickThenGoesLive) {
  for (int i = 2; i <= 6; ++i) Put("k", absl::StrCat(i));
  Client a;
  StreamId s = Open(a);
  a.slow = true;
  Create(s, Watch("k", "", 2));
  EXPECT_THAT(a.Take(), ElementsAre("w0 created @6"));
  EXPECT_EQ(hub->unsynced(), 1u);
  Put("k", "7");  // not live yet: the watcher is behind
  EXPECT_THAT(a.Take(), IsEmpty());
  a.slow = false;
  Tick();
  EXPECT_THAT(a.Take(), ElementsAre("w0 @7: PUT k=2@2, PUT k=3@3, PUT k=4@4, PUT k=5@5, "
                                    "PUT k=6@6, PUT k=7@7"));
  EXPECT_EQ(hub->unsynced(), 0u);
  Put("k", "8");
  EXPECT_THAT(a.Take(), ElementsAre("w0 @8: PUT k=8@8"));
}

TEST_P(WatchHubTest, SmallCatchUpBatchesDeliverEveryRevisionExactlyOnceInOrder) {
  Init({.catchup_revisions_max = 2});
  for (int r = 2; r <= 13; ++r) Put(r % 2 == 0 ? "a" : "b", absl::StrCat(r));
  Client c;
  StreamId s = Open(c);
  Create(s, Watch("", kNul, 2));
  // Create does four batches of two revisions; the rest waits for Tick.
  EXPECT_THAT(c.RevisionsPerResponse(0),
              ElementsAre(ElementsAre(2, 3), ElementsAre(4, 5), ElementsAre(6, 7),
                          ElementsAre(8, 9)));
  EXPECT_EQ(hub->unsynced(), 1u);
  c.Take();
  Put("c", "14");  // written while the watcher is behind
  EXPECT_THAT(c.Take(), IsEmpty());
  Tick();
  EXPECT_THAT(c.RevisionsPerResponse(0),
              ElementsAre(ElementsAre(10, 11), ElementsAre(12, 13), ElementsAre(14)));
  EXPECT_THAT(c.Take(), ElementsAre("w0 @14: PUT a=10@10, PUT b=11@11",
                                    "w0 @14: PUT a=12@12, PUT b=13@13", "w0 @14: PUT c=14@14"));
  EXPECT_EQ(hub->unsynced(), 0u);
  Put("a", "15");
  EXPECT_THAT(c.Take(), ElementsAre("w0 @15: PUT a=15@15"));
}

TEST_P(WatchHubTest, ManyPastWatchersAtDifferentRevisionsEachGetEveryRevisionOnce) {
  Init({.catchup_revisions_max = 3});
  for (int r = 2; r <= 20; ++r) Put(absl::StrCat("k", r % 3), absl::StrCat(r));
  Client c;
  StreamId s = Open(c);
  for (int start : {2, 5, 11, 19, 20}) Create(s, Watch("", kNul, start));
  for (int i = 0; i < 5; ++i) {
    Put(absl::StrCat("k", i), "live");  // 21..25, interleaved with catch-up
    Tick();
  }
  EXPECT_EQ(hub->unsynced(), 0u);
  EXPECT_EQ(c.Revisions(0), Range(2, 25));
  EXPECT_EQ(c.Revisions(1), Range(5, 25));
  EXPECT_EQ(c.Revisions(2), Range(11, 25));
  EXPECT_EQ(c.Revisions(3), Range(19, 25));
  EXPECT_EQ(c.Revisions(4), Range(20, 25));
}

// ---------------------------------------------------------------- slow clients

TEST_P(WatchHubTest, ASlowClientFallsBehindAndCatchesUpExactlyFromTheFirstRefusedRevision) {
  Client a;
  StreamId s = Open(a);
  Create(s, Watch("a"));
  Put("a", "1");  // 2
  EXPECT_THAT(a.Take(), ElementsAre("w0 created @1", "w0 @2: PUT a=1@2"));
  a.slow = true;
  Put("a", "2");  // 3: refused
  EXPECT_EQ(a.refused, 1);
  EXPECT_EQ(hub->unsynced(), 1u);
  // Writes go on; the watcher is no longer offered live events.
  Put("a", "3");  // 4
  Put("b", "x");  // 5
  Put("a", "4");  // 6
  EXPECT_EQ(store.revision(), 6);
  EXPECT_EQ(a.refused, 1);
  Tick();  // still slow: the catch-up is refused, nothing is lost
  EXPECT_EQ(hub->unsynced(), 1u);
  EXPECT_THAT(a.Take(), IsEmpty());
  a.slow = false;
  Tick();
  EXPECT_THAT(a.Take(), ElementsAre("w0 @6: PUT a=2@3, PUT a=3@4, PUT a=4@6"));
  EXPECT_EQ(hub->unsynced(), 0u);
  Put("a", "5");
  EXPECT_THAT(a.Take(), ElementsAre("w0 @7: PUT a=5@7"));
}

TEST_P(WatchHubTest, ASlowClientNeverGetsARevisionSplitAcrossResponses) {
  Init({.catchup_revisions_max = 1});
  Client a;
  StreamId s = Open(a);
  Create(s, Watch("", kNul));
  a.Take();
  a.slow = true;
  Apply({{"a", "1"}, {"b", "2"}, {"c", "3"}});  // 2
  Apply({{"d", "4"}, {"e", "5"}});              // 3
  Put("f", "6");                                 // 4
  EXPECT_EQ(hub->unsynced(), 1u);
  a.slow = false;
  Tick();
  EXPECT_THAT(a.Take(), ElementsAre("w0 @4: PUT a=1@2, PUT b=2@2, PUT c=3@2",
                                    "w0 @4: PUT d=4@3, PUT e=5@3", "w0 @4: PUT f=6@4"));
  EXPECT_EQ(hub->unsynced(), 0u);
}

TEST_P(WatchHubTest, ASlowClientDoesNotHoldBackLiveEventsOfAnotherStream) {
  Client slow, fast;
  StreamId s1 = Open(slow), s2 = Open(fast);
  Create(s1, Watch("a"));
  Create(s2, Watch("a"));
  slow.Take();
  fast.Take();
  slow.slow = true;
  Put("a", "1");
  Put("a", "2");
  Tick();
  EXPECT_THAT(fast.Take(), ElementsAre("w0 @2: PUT a=1@2", "w0 @3: PUT a=2@3"));
  EXPECT_THAT(slow.Take(), IsEmpty());
  EXPECT_EQ(hub->unsynced(), 1u);
  slow.slow = false;
  Tick();
  EXPECT_THAT(slow.Take(), ElementsAre("w0 @3: PUT a=1@2, PUT a=2@3"));
}

// etcd moves a slow watcher aside (its victims) so the other watchers' catch-up goes on;
// the header promises a catch-up for every unsynced watcher, whatever another client does.
TEST_P(WatchHubTest, ASlowClientDoesNotHoldBackTheCatchUpOfAnotherStreamsWatcher) {
  Init({.catchup_revisions_max = 2});
  Client slow, fast;
  StreamId s1 = Open(slow), s2 = Open(fast);
  Create(s1, Watch("a"));
  slow.slow = true;
  Put("a", "1");  // 2: refused, the slow watcher needs history from 2
  for (int r = 3; r <= 12; ++r) Put("b", absl::StrCat(r));
  Create(s2, Watch("b", "", 10));
  for (int i = 0; i < 10; ++i) Tick();  // plenty: [10, 12] is two batches
  EXPECT_EQ(fast.Revisions(0), Range(10, 12));
  EXPECT_THAT(fast.Take(), ::testing::Contains("w0 created @12"));
  EXPECT_EQ(hub->unsynced(), 1u);  // only the slow one
  slow.slow = false;
  Tick();  // 2..9
  Tick();  // 10..12
  EXPECT_THAT(slow.Take(), ElementsAre("w0 created @1", "w0 @12: PUT a=1@2"));
  EXPECT_EQ(hub->unsynced(), 0u);
}

// ---------------------------------------------------------------- compaction

TEST_P(WatchHubTest, AWatchFromACompactedRevisionIsCanceledWithTheFirstRevisionItMayWatchFrom) {
  for (int r = 2; r <= 6; ++r) Put("a", absl::StrCat(r));
  Compact(4);
  Client c;
  StreamId s = Open(c);
  Create(s, Watch("a", "", 2));
  Create(s, Watch("a", "", 4));  // the compacted revision itself: refused (see the header)
  EXPECT_THAT(c.Take(),
              ElementsAre("w0 created @6", "w0 canceled compact=5 reason=" + kCompacted + " @6",
                          "w1 created @6", "w1 canceled compact=5 reason=" + kCompacted + " @6"));
  EXPECT_EQ(hub->watchers(), 0u);
  Create(s, Watch("a", "", 5));  // compacted + 1: served
  EXPECT_THAT(c.Take(), ElementsAre("w2 created @6", "w2 @6: PUT a=5@5, PUT a=6@6"));
  EXPECT_EQ(hub->unsynced(), 0u);
}

TEST_P(WatchHubTest, ASlowWatcherOvertakenByACompactionIsCanceledWithCompactedPlusOne) {
  Client c, d;
  StreamId s = Open(c), t = Open(d);
  Create(s, Watch("a"));
  Create(t, Watch("a"));
  c.Take();
  d.Take();
  c.slow = true;
  Put("a", "1");  // 2: c refuses, needs history from 2
  d.slow = true;
  Put("a", "2");  // 3
  Put("a", "3");  // 4
  Put("a", "4");  // 5
  EXPECT_THAT(d.Take(), ElementsAre("w0 @2: PUT a=1@2"));  // d refused from 3
  EXPECT_EQ(hub->unsynced(), 2u);
  Compact(2);  // history from 3 is still whole: only c is overtaken
  c.slow = false;
  d.slow = false;
  Tick();
  EXPECT_THAT(c.Take(), ElementsAre("w0 canceled compact=3 reason=" + kCompacted + " @5"));
  EXPECT_THAT(d.Take(), ElementsAre("w0 @5: PUT a=2@3, PUT a=3@4, PUT a=4@5"));
  EXPECT_EQ(hub->watchers(), 1u);
  EXPECT_EQ(hub->unsynced(), 0u);
}

TEST_P(WatchHubTest, ASyncedWatcherIsUnaffectedByACompactionAndCanStillFallBehindAfterIt) {
  Client c;
  StreamId s = Open(c);
  Create(s, Watch("a"));
  for (int r = 2; r <= 5; ++r) Put("b", absl::StrCat(r));  // nothing for the watcher
  Compact(5);
  c.slow = true;
  Put("a", "1");  // 6: refused
  c.slow = false;
  Tick();
  EXPECT_THAT(c.Take(), ElementsAre("w0 created @1", "w0 @6: PUT a=1@6"));
  EXPECT_EQ(hub->watchers(), 1u);
  EXPECT_EQ(hub->unsynced(), 0u);
}

// ---------------------------------------------------------------- progress

TEST_P(WatchHubTest, RequestProgressIsAnsweredAtOnceWhenEveryWatcherOfTheStreamIsSynced) {
  Client c;
  StreamId s = Open(c);
  RequestProgress(s);  // no watchers: nothing to wait for
  Create(s, Watch("a"));
  Put("b", "1");
  Put("b", "2");
  RequestProgress(s);
  EXPECT_THAT(c.Take(), ElementsAre("w-1 @1", "w0 created @1", "w-1 @3"));
  Tick();
  EXPECT_THAT(c.Take(), IsEmpty());  // answered once
}

TEST_P(WatchHubTest, RequestProgressWaitsUntilEveryWatcherOfTheStreamHasCaughtUp) {
  Client c, other;
  StreamId s = Open(c), t = Open(other);
  Create(s, Watch("a"));
  Create(s, Watch("b"));
  Create(t, Watch("a"));
  c.Take();
  other.Take();
  c.slow = true;
  Put("a", "1");  // 2: stream s's w0 falls behind
  RequestProgress(s);
  RequestProgress(t);  // the other stream is synced: answered at once
  EXPECT_THAT(other.Take(), ElementsAre("w0 @2: PUT a=1@2", "w-1 @2"));
  EXPECT_THAT(c.Take(), IsEmpty());
  Put("a", "2");  // 3
  Tick();
  EXPECT_THAT(c.Take(), IsEmpty());  // still behind
  c.slow = false;
  Tick();
  // The events first, then the promise that everything at or below 3 was delivered.
  EXPECT_THAT(c.Take(), ElementsAre("w0 @3: PUT a=1@2, PUT a=2@3", "w-1 @3"));
  Tick();
  EXPECT_THAT(c.Take(), IsEmpty());
}

TEST_P(WatchHubTest,
       ProgressNotifySendsAnEmptyResponseEveryIntervalToSyncedWatchersThatAskedForIt) {
  Init({.progress_interval = std::chrono::seconds(10)});
  Client c, slow;
  StreamId s = Open(c), t = Open(slow);
  WatchCreateRequest notify = Watch("a");
  notify.set_progress_notify(true);
  Create(s, notify);
  Create(s, Watch("a"));  // did not ask
  Create(t, notify);      // asked, but will be behind
  c.Take();
  slow.Take();
  slow.slow = true;
  Put("a", "1");  // 2
  EXPECT_THAT(c.Take(), ElementsAre("w0 @2: PUT a=1@2", "w1 @2: PUT a=1@2"));
  EXPECT_EQ(hub->unsynced(), 1u);
  Tick(std::chrono::seconds(9));
  EXPECT_THAT(c.Take(), IsEmpty());
  Tick(std::chrono::seconds(10));
  EXPECT_THAT(c.Take(), ElementsAre("w0 @2"));
  EXPECT_THAT(slow.Take(), IsEmpty());
  Tick(std::chrono::seconds(15));
  EXPECT_THAT(c.Take(), IsEmpty());
  slow.slow = false;
  Tick(std::chrono::seconds(20));
  EXPECT_THAT(c.Take(), ElementsAre("w0 @2"));
  EXPECT_THAT(slow.Take(), ElementsAre("w0 @2: PUT a=1@2", "w0 @2"));
}

// ---------------------------------------------------------------- cancel, close

TEST_P(WatchHubTest, CancelAnswersCanceledAndStopsEventsAndAnUnknownIdIsIgnored) {
  Client c, other;
  StreamId s = Open(c), t = Open(other);
  Create(s, Watch("a"));
  Create(s, Watch("a"));
  Create(t, Watch("a"));
  c.Take();
  other.Take();
  Cancel(s, 0);
  Cancel(s, 7);  // unknown
  Cancel(t, 1);  // s's id, not t's
  EXPECT_THAT(c.Take(), ElementsAre("w0 canceled @1"));
  EXPECT_THAT(other.Take(), IsEmpty());
  EXPECT_EQ(hub->watchers(), 2u);
  Put("a", "1");
  EXPECT_THAT(c.Take(), ElementsAre("w1 @2: PUT a=1@2"));
  EXPECT_THAT(other.Take(), ElementsAre("w0 @2: PUT a=1@2"));
  Cancel(s, 0);  // twice: already gone
  EXPECT_THAT(c.Take(), IsEmpty());
}

TEST_P(WatchHubTest, CancelOfAWatcherThatIsBehindRemovesItFromTheCatchUp) {
  Client c;
  StreamId s = Open(c);
  Create(s, Watch("a"));
  c.slow = true;
  Put("a", "1");
  EXPECT_EQ(hub->unsynced(), 1u);
  Cancel(s, 0);
  EXPECT_EQ(hub->unsynced(), 0u);
  c.slow = false;
  Tick();
  EXPECT_THAT(c.Take(), ElementsAre("w0 created @1", "w0 canceled @2"));
}

TEST_P(WatchHubTest, CloseStreamRemovesItsWatchersAndLeavesOtherStreamsAlone) {
  Client c, other;
  StreamId s = Open(c), t = Open(other);
  Create(s, Watch("a"));
  Create(s, Watch("", kNul));
  Create(t, Watch("a"));
  c.slow = true;
  Put("a", "1");  // s's watchers fall behind
  EXPECT_EQ(hub->unsynced(), 2u);
  CloseStream(s);
  EXPECT_EQ(hub->watchers(), 1u);
  EXPECT_EQ(hub->unsynced(), 0u);
  Create(s, Watch("a"));  // a closed stream: ignored
  EXPECT_EQ(hub->watchers(), 1u);
  c.slow = false;
  Put("a", "2");
  Tick();
  EXPECT_THAT(c.Take(), ElementsAre("w0 created @1", "w1 created @1"));
  EXPECT_THAT(other.Take(),
              ElementsAre("w0 created @1", "w0 @2: PUT a=1@2", "w0 @3: PUT a=2@3"));
}

// ---------------------------------------------------------------- restore

TEST_P(WatchHubTest, OnRestoredMakesEveryWatcherCatchUpWithoutLosingOrRepeatingAnEvent) {
  Client c;
  StreamId s = Open(c);
  Create(s, Watch("a"));
  Create(s, Watch("", kNul));
  Create(s, Watch("z", "", 6));  // from the future
  Put("a", "1");  // 2
  c.Take();
  // A snapshot brings revisions 3..5 the hub never heard of.
  PutUnseen("a", "2");  // 3
  PutUnseen("b", "3");  // 4
  PutUnseen("a", "4");  // 5
  Restored();
  EXPECT_EQ(hub->unsynced(), 3u);
  Tick();
  EXPECT_EQ(hub->unsynced(), 0u);
  EXPECT_THAT(c.Take(), ElementsAre("w0 @5: PUT a=2@3, PUT a=4@5",
                                    "w1 @5: PUT a=2@3, PUT b=3@4, PUT a=4@5"));
  Put("a", "5");  // 6
  Put("z", "6");  // 7
  EXPECT_THAT(c.Take(), ElementsAre("w0 @6: PUT a=5@6", "w1 @6: PUT a=5@6", "w1 @7: PUT z=6@7",
                                    "w2 @7: PUT z=6@7"));
}

TEST_P(WatchHubTest, OnRestoredKeepsAWatcherThatWasBehindAtItsOwnRevision) {
  Client c;
  StreamId s = Open(c);
  Create(s, Watch("a"));
  c.Take();
  c.slow = true;
  Put("a", "1");        // 2: refused
  PutUnseen("a", "2");  // 3
  Restored();
  EXPECT_EQ(hub->unsynced(), 1u);
  c.slow = false;
  Tick();
  EXPECT_THAT(c.Take(), ElementsAre("w0 @3: PUT a=1@2, PUT a=2@3"));
  EXPECT_EQ(hub->unsynced(), 0u);
}

// A synced watcher has been given everything up to the store's revision (the header: it
// "is at the store's revision"), so it needs no history at or below a compaction made at
// that revision; the restored state's history from there on is whole.
TEST_P(WatchHubTest, OnRestoredDoesNotCancelASyncedWatcherThatNeedsNoCompactedHistory) {
  Client c;
  StreamId s = Open(c);
  Create(s, Watch("a"));
  Put("b", "1");  // 2: not the watcher's key
  Put("b", "2");  // 3
  c.Take();
  // The snapshot: one more write for the watcher, compacted at 3 (what the hub had seen).
  PutUnseen("a", "3");  // 4
  Compact(3);
  Restored();
  Tick();
  EXPECT_THAT(c.Take(), ElementsAre("w0 @4: PUT a=3@4"));
  EXPECT_EQ(hub->watchers(), 1u);
  EXPECT_EQ(hub->unsynced(), 0u);
}

// ---------------------------------------------------------------- planted bug

class PlantedBugTest : public WatchHubTest {
 protected:
  // Revisions 2..7 all of "a"; a watch of "a" from 2 with batches of 2 revisions.
  std::vector<int64_t> CatchUp(bool bug) {
    Init({.catchup_revisions_max = 2,
          .bugs = WatchPlantedBugs{.skip_first_event_after_batch = bug}});
    for (int r = 2; r <= 7; ++r) Put("a", absl::StrCat(r));
    Client c;
    StreamId s = Open(c);
    Create(s, Watch("a", "", 2));
    Tick();
    EXPECT_EQ(hub->unsynced(), 0u);
    std::vector<int64_t> revs = c.Revisions(0);
    CloseStream(s);
    return revs;
  }
};

TEST_P(PlantedBugTest, TheCorrectHubDeliversEveryRevisionAcrossBatchBoundaries) {
  EXPECT_EQ(CatchUp(false), Range(2, 7));
}

TEST_P(PlantedBugTest, SkipFirstEventAfterBatchLosesTheFirstEventAfterEachBatchBoundary) {
  // Batch [2,4) ends on a boundary: 4 is lost; the next batch starts at 5, [5,7), and 7 is
  // lost in the same way.
  EXPECT_EQ(CatchUp(true), (std::vector<int64_t>{2, 3, 5, 6}));
}

// ---------------------------------------------------------------- encoded delivery

using EncodedDeliveryTest = WatchHubTest;

TEST_P(EncodedDeliveryTest, EachEventIsEncodedOncePerRoundAndItsBytesAreSharedByEveryWatcher) {
  Put("p/a", "0");  // 2: p/a has a previous value at 3
  Client a, b, c;
  StreamId sa = Open(a), sb = Open(b), sc = Open(c);
  for (StreamId s : {sa, sb, sc}) {
    for (int i = 0; i < 4; ++i) Create(s, Watch("p/", "p0"));  // ids 0..3
    Create(s, Watch("p/a"));                                   // 4
  }
  WatchCreateRequest with_prev = Watch("p/", "p0");
  with_prev.set_prev_kv(true);
  Create(sc, with_prev);  // 5
  Create(sc, with_prev);  // 6
  a.Take();
  b.Take();
  c.Take();
  const uint64_t before = hub->events_encoded();
  Apply({{"p/a", "1"}, {"p/b", "2"}, {"p/c", "3"}});  // 3: one round, 17 watchers
  // Three events without prev_kv, three with: six, not one per watcher and event.
  EXPECT_EQ(hub->events_encoded() - before, 6u);
  EXPECT_THAT(c.Take(),
              ElementsAre("w0 @3: PUT p/a=1@3, PUT p/b=2@3, PUT p/c=3@3",
                          "w1 @3: PUT p/a=1@3, PUT p/b=2@3, PUT p/c=3@3",
                          "w2 @3: PUT p/a=1@3, PUT p/b=2@3, PUT p/c=3@3",
                          "w3 @3: PUT p/a=1@3, PUT p/b=2@3, PUT p/c=3@3", "w4 @3: PUT p/a=1@3",
                          "w5 @3: PUT p/a=1@3 prev p/a=0@2, PUT p/b=2@3, PUT p/c=3@3",
                          "w6 @3: PUT p/a=1@3 prev p/a=0@2, PUT p/b=2@3, PUT p/c=3@3"));
  // The same bytes, not copies, wherever an event went.
  std::set<const std::string*> plain, prev;
  for (Client* client : {&a, &b, &c}) {
    for (size_t r = 0; r < client->event_bytes.size(); ++r) {
      std::set<const std::string*>& into = client == &c && r >= 5 ? prev : plain;
      into.insert(client->event_bytes[r].begin(), client->event_bytes[r].end());
    }
  }
  EXPECT_EQ(plain.size(), 3u);
  EXPECT_EQ(prev.size(), 3u);
  // Another round encodes its own events.
  Put("p/b", "4");
  EXPECT_EQ(hub->events_encoded() - before, 8u);
}

TEST_P(EncodedDeliveryTest, ACatchUpReadIsEncodedOnceForEveryWatcherBehindByTheSameRevision) {
  for (int r = 2; r <= 6; ++r) Put("k", absl::StrCat(r));
  Client a, b;
  StreamId sa = Open(a), sb = Open(b);
  a.slow = true;
  b.slow = true;
  for (int i = 0; i < 3; ++i) {
    Create(sa, Watch("k", "", 2));
    Create(sb, Watch("k", "", 2));
  }
  EXPECT_EQ(hub->unsynced(), 6u);
  const uint64_t before = hub->events_encoded();
  a.slow = false;
  b.slow = false;
  Tick();  // one read of [2, 7) for the six of them
  EXPECT_EQ(hub->unsynced(), 0u);
  EXPECT_EQ(hub->events_encoded() - before, 5u);
  for (int64_t id = 0; id < 3; ++id) {
    EXPECT_EQ(a.Revisions(id), Range(2, 6));
    EXPECT_EQ(b.Revisions(id), Range(2, 6));
  }
}

TEST_P(EncodedDeliveryTest, WholeAndEncodedStreamsOfOneHubGetTheSameResponses) {
  Client whole, encoded;
  StreamId sw = Open(whole, Delivery::kWhole), se = Open(encoded, Delivery::kEncoded);
  for (StreamId s : {sw, se}) {
    WatchCreateRequest prev = Watch("", kNul);
    prev.set_prev_kv(true);
    WatchCreateRequest no_put = Watch("a", "c");
    no_put.add_filters(WatchCreateRequest::NOPUT);
    Create(s, prev);
    Create(s, no_put);
    Create(s, Watch("b"));
  }
  Put("a", "1");
  Apply({{"b", "2"}, {"c", "3"}});
  Delete("a");
  Put("b", "4");
  const std::vector<std::string> got = whole.Take();
  EXPECT_EQ(got.size(), 10u);
  EXPECT_EQ(encoded.Take(), got);
  EXPECT_THAT(whole.event_bytes, IsEmpty());
  EXPECT_EQ(encoded.event_bytes.size(), 7u);
}

TEST_P(EncodedDeliveryTest, OnlyEncodedStreamsCostAnEncoding) {
  Client whole;
  StreamId s = Open(whole, Delivery::kWhole);
  Create(s, Watch("a"));
  Put("a", "1");
  EXPECT_EQ(hub->events_encoded(), 0u);
  EXPECT_THAT(whole.Take(), ElementsAre("w0 created @1", "w0 @2: PUT a=1@2"));
}

TEST(EncodeEvent, IsTheEventsFieldOfAWatchResponseAndParsesBackWithAndWithoutPrevKv) {
  mvccpb::Event e;
  e.set_type(mvccpb::Event::DELETE);
  e.mutable_kv()->set_key("k");
  e.mutable_kv()->set_mod_revision(9);
  mvccpb::KeyValue prev;
  prev.set_key("k");
  prev.set_value(std::string(300, 'v'));  // a length of two varint bytes
  prev.set_mod_revision(8);
  WatchResponse expected;
  expected.set_watch_id(4);
  expected.mutable_header()->set_revision(9);
  *expected.add_events() = e;
  *expected.add_events() = e;
  *expected.mutable_events(1)->mutable_prev_kv() = prev;
  WatchResponse meta;
  meta.set_watch_id(4);
  meta.mutable_header()->set_revision(9);
  const std::vector<EncodedEvent> events = {EncodeEvent(e), EncodeEvent(e, &prev)};
  const WatchResponse parsed = Concatenated(meta, events);
  EXPECT_EQ(parsed.SerializeAsString(), expected.SerializeAsString());
  EXPECT_EQ(meta.SerializeAsString() + *events[0] + *events[1], expected.SerializeAsString());
}

INSTANTIATE_TEST_SUITE_P(Delivery, EncodedDeliveryTest, ::testing::Values(Delivery::kEncoded),
                         DeliveryName);

INSTANTIATE_TEST_SUITE_P(Delivery, WatchHubTest,
                         ::testing::Values(Delivery::kWhole, Delivery::kEncoded), DeliveryName);
INSTANTIATE_TEST_SUITE_P(Delivery, PlantedBugTest,
                         ::testing::Values(Delivery::kWhole, Delivery::kEncoded), DeliveryName);

}  // namespace
}  // namespace keel::watch
