#pragma once
// Watcher: one watch (a key or a range) that survives disconnects, as a registry's
// discovery needs: events arrive in revision order, each once, with no gap.
//
// It watches from `start_revision` (0: now). When its stream fails (endpoint lost,
// member stopped), it reopens one on the client's next endpoint from the revision after
// the last one it delivered (before any event: after the revision its first stream was
// created at, or from start_revision), so nothing is missed or repeated (a revision's
// events arrive together, so resuming after the last delivered revision is exact).
// When the server cancels the watch because that revision was compacted, it calls
// `compacted` with the server's compact_revision and stops: the caller lists again and
// starts a new Watcher from the list's revision + 1.
//
// Callbacks run on the watcher's thread, one at a time; they must not destroy the
// watcher. Destruction cancels the watch (and waits for a callback that is running).
//
// Bounded: events are handed to `events` as they are read; while a callback runs, the
// stream is not read, and gRPC's flow control holds the server back (which then serves
// the watch from its history: nothing is lost).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/etcdpb/kv.pb.h"
#include "net/client/client.h"

namespace keel::client {

struct WatchOptions {
  std::string key;
  std::string range_end;    // etcd's convention: empty = the key alone; "\0" = every key >= key
  int64_t start_revision = 0;
  bool prev_kv = false;
  bool progress_notify = false;
};

struct WatchCallbacks {
  // The events of one or more whole revisions, ascending; `revision` is the header's.
  std::function<void(const std::vector<mvccpb::Event>& events, int64_t revision)> events;
  // The watch can no longer continue from where it was: compaction passed it.
  std::function<void(int64_t compact_revision)> compacted;
  // The watch is (re)established on an endpoint (after a disconnect too).
  std::function<void(const std::string& endpoint)> connected;
  // The server refused the watch itself (an empty range, say): asking again would get
  // the same answer, so the watcher stops. Called at most once, instead of `connected`.
  std::function<void(const absl::Status& why)> failed;
};

class Watcher {
 public:
  // Requires: client outlives the watcher.
  Watcher(Client& client, WatchOptions options, WatchCallbacks callbacks);
  ~Watcher();
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  // The revision through which events were delivered (0 before the first).
  int64_t delivered_revision() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The range_end that makes a watch or a range cover every key with `prefix`.
std::string PrefixEnd(std::string_view prefix);

}  // namespace keel::client
