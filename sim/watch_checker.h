#pragma once
// WatchChecker: etcd's watch guarantees, from what the simulated watchers received, against
// the committed keyspace's events (kv_reference.h). A session is one watch, from its
// start revision until it was canceled or its stream closed. One sentence per violation.
//
//  Ordered     a session's revisions ascend; no event repeats.
//  Atomic      a revision's events arrive together, in one response.
//  Reliable    a session's events are exactly the committed events of its range from its
//              start to the last revision it received: none skipped, none invented, each
//              as committed (and prev_kv, when sent, is the key just before).
//  Resumable   a session that resumes at r + 1 after one that last saw r continues exactly
//              (each session is checked from its own start).
//  Progress    a progress response at revision R arrives only after every event of the
//              range at or below R.

#include <cstdint>
#include <string>
#include <vector>

#include "core/etcdpb/rpc.pb.h"
#include "core/types.h"
#include "sim/kv_reference.h"

namespace keel::sim {

class WatchChecker {
 public:
  struct Session {
    int watcher = 0;
    std::string key;
    std::string end;
    int64_t start = 0;  // the first revision it may see (0: set by its created response)
    bool prev_kv = false;
  };
  size_t Begin(Session session);
  // A response of the session's watch, in the order the client received them.
  void OnResponse(size_t session, const etcdserverpb::WatchResponse& response);
  // The last revision the session received an event of (start - 1 if none yet).
  int64_t last_revision(size_t session) const;
  int64_t start(size_t session) const { return sessions_[session].info.start; }

  std::vector<std::string> Check(const KvReference& reference) const;
  size_t sessions() const { return sessions_.size(); }
  size_t events() const;

 private:
  struct Received {
    std::vector<mvccpb::Event> events;  // empty: a progress notification
    int64_t progress_revision = 0;      // header revision of an empty response
  };
  struct Record {
    Session info;
    std::vector<Received> responses;
    int64_t last_revision = 0;
  };
  std::string CheckSession(const Record& s, const KvReference& reference) const;

  std::vector<Record> sessions_;
};

}  // namespace keel::sim
