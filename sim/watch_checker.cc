#include "sim/watch_checker.h"

#include "absl/strings/str_cat.h"
#include "core/kv/store.h"

namespace keel::sim {

size_t WatchChecker::Begin(Session session) {
  Record r;
  r.info = std::move(session);
  r.last_revision = r.info.start - 1;
  sessions_.push_back(std::move(r));
  return sessions_.size() - 1;
}

void WatchChecker::OnResponse(size_t session, const etcdserverpb::WatchResponse& response) {
  Record& s = sessions_[session];
  if (response.created()) {
    // A watch from "now" starts after the revision its created response carries.
    if (s.info.start == 0 && !response.canceled()) {
      s.info.start = response.header().revision() + 1;
      s.last_revision = s.info.start - 1;
    }
    return;
  }
  if (response.canceled()) return;
  Received got;
  got.events.assign(response.events().begin(), response.events().end());
  if (got.events.empty()) got.progress_revision = response.header().revision();
  for (const mvccpb::Event& e : got.events) {
    s.last_revision = std::max(s.last_revision, e.kv().mod_revision());
  }
  s.responses.push_back(std::move(got));
}

int64_t WatchChecker::last_revision(size_t session) const {
  return sessions_[session].last_revision;
}

size_t WatchChecker::events() const {
  size_t n = 0;
  for (const Record& s : sessions_) {
    for (const Received& r : s.responses) n += r.events.size();
  }
  return n;
}

std::vector<std::string> WatchChecker::Check(const KvReference& reference) const {
  std::vector<std::string> failures;
  for (size_t i = 0; i < sessions_.size() && failures.size() < 10; ++i) {
    std::string f = CheckSession(sessions_[i], reference);
    if (!f.empty()) {
      failures.push_back(absl::StrCat("Watch: session ", i, " of watcher ",
                                      sessions_[i].info.watcher, " from revision ",
                                      sessions_[i].info.start, ": ", f));
    }
  }
  return failures;
}

std::string WatchChecker::CheckSession(const Record& s, const KvReference& ref) const {
  if (s.info.start <= 0) return "";  // never created
  const kv::KeyRange range{s.info.key, s.info.end};
  // The committed events of the range at revision r.
  auto committed_at = [&](int64_t r) {
    std::vector<const mvccpb::Event*> out;
    for (const mvccpb::Event& e : ref.EventsAt(r)) {
      if (range.Contains(e.kv().key())) out.push_back(&e);
    }
    return out;
  };
  // The first revision after `after`, up to `upto`, with events in range (0: none).
  auto next_in_range = [&](int64_t after, int64_t upto) -> int64_t {
    for (int64_t r = after + 1; r <= upto; ++r) {
      if (!committed_at(r).empty()) return r;
    }
    return 0;
  };
  int64_t seen = s.info.start - 1;  // every event of the range at or below it was received
  for (const Received& got : s.responses) {
    if (got.events.empty()) {
      if (const int64_t missed = next_in_range(seen, got.progress_revision); missed != 0) {
        return absl::StrCat("Progress: a progress notification at revision ",
                            got.progress_revision, " came before the events of revision ",
                            missed);
      }
      seen = std::max(seen, got.progress_revision);
      continue;
    }
    size_t k = 0;
    while (k < got.events.size()) {
      const int64_t rev = got.events[k].kv().mod_revision();
      if (rev <= seen) {
        return absl::StrCat("Ordered: revision ", rev, " again, after revision ", seen);
      }
      if (const int64_t missed = next_in_range(seen, rev - 1); missed != 0) {
        return absl::StrCat("Reliable: the events of revision ", missed,
                            " were skipped (next received: ", rev, ")");
      }
      const std::vector<const mvccpb::Event*> want = committed_at(rev);
      size_t n = 0;
      for (; k < got.events.size() && got.events[k].kv().mod_revision() == rev; ++k, ++n) {
        const mvccpb::Event& e = got.events[k];
        if (n >= want.size() || e.type() != want[n]->type() ||
            e.kv().SerializeAsString() != want[n]->kv().SerializeAsString()) {
          return absl::StrCat("Reliable: event ", n, " of revision ", rev,
                              " is not the committed one: ", e.ShortDebugString(), " vs ",
                              n < want.size() ? want[n]->ShortDebugString() : "none");
        }
        if (s.info.prev_kv && e.has_prev_kv()) {
          etcdserverpb::RangeRequest before;
          before.set_key(e.kv().key());
          absl::StatusOr<etcdserverpb::RangeResponse> prev = ref.RangeAt(before, rev - 1);
          if (!prev.ok() || prev->kvs_size() != 1 ||
              prev->kvs(0).SerializeAsString() != e.prev_kv().SerializeAsString()) {
            return absl::StrCat("Reliable: prev_kv of ", e.kv().key(), " at revision ", rev,
                                " is not the key just before");
          }
        }
      }
      if (n != want.size()) {
        return absl::StrCat("Atomic: revision ", rev, " arrived with ", n, " of its ",
                            want.size(), " events in one response");
      }
      seen = rev;
    }
  }
  return "";
}

}  // namespace keel::sim
