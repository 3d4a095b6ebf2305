#pragma once
// Store: the MVCC keyspace (etcd's mvcc.store): an in-memory key index (key -> its
// generations of revisions, an ordered map) over a Backend that holds one record per
// revision. Every read names a main revision and sees the keyspace as of it; a write
// request is one Writer, whose changes share the main revision current + 1 with sub
// revisions 0, 1, ... in order.
//
// As etcd's, a new store is at revision 1 (its first write makes revision 2) and has
// compacted() = -1 (never compacted). Reads at a revision below the compacted one fail
// with ErrCompacted, above the current one with ErrFutureRev (etcd's rangeKeys). Writes cannot fail but for storage
// failures: the caller validates a request completely before it opens a Writer, so a
// bad request changes nothing (etcd's applier does the same).
//
// Single-threaded: at most one Writer at a time; reads between writes.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/status/statusor.h"
#include "core/etcdpb/kv.pb.h"
#include "core/kv/backend.h"
#include "core/kv/key_index.h"

namespace keel::kv {

// What the store tells the lease table as keys change (etcd's lessor Attach/Detach).
class LeaseAttachments {
 public:
  virtual ~LeaseAttachments() = default;
  // `key` is now bound to `lease` (0: to none); any earlier binding is gone.
  virtual void Attach(std::string_view key, int64_t lease) = 0;
  // `key` was deleted.
  virtual void Detach(std::string_view key) = 0;
};

// A key range in etcd's convention: end empty = the one key; end "\0" = every key >=
// key; otherwise [key, end), empty if end <= key.
struct KeyRange {
  std::string_view key;
  std::string_view end;
  bool Contains(std::string_view k) const;
};

struct RangeOptions {
  int64_t limit = 0;        // at most this many kvs (0: no limit); count is unaffected
  int64_t revision = 0;     // read as of this main revision (0 or less: the current one)
  bool count_only = false;  // count only, no kvs
};

struct RangeResult {
  std::vector<mvccpb::KeyValue> kvs;  // in key order
  int64_t count = 0;                  // keys in range at the revision, before the limit
  int64_t revision = 0;               // the store's revision when read (etcd: rr.Rev)
};

class Store {
 public:
  class Writer;

  // Requires: backend and leases (may be null) outlive the store.
  Store(Backend* backend, LeaseAttachments* leases);
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Rebuilds the index, revision and compaction point from the backend (at start and
  // after the backend was replaced). Validates what it reads: DataLoss on corruption.
  absl::Status Load();

  int64_t revision() const { return revision_; }
  int64_t compacted() const { return compacted_; }
  size_t key_count() const { return index_.size(); }  // keys with history, live or not

  absl::StatusOr<RangeResult> Range(KeyRange range, const RangeOptions& options) const;

  // Opens the write request. Requires: no other Writer open.
  Writer Write();

  // Compacts at main revision `rev` (etcd's Compact with physical=true: done when this
  // returns): reads below `rev` fail from now on; every revision no read at or after
  // `rev` can see is deleted from the backend. ErrCompacted if rev <= compacted(),
  // ErrFutureRev if rev > revision().
  absl::Status Compact(int64_t rev);

  // The events of main revisions [from, to), in revision order, read from the backend
  // (watch catch-up). Requires: compacted() < from.
  absl::Status Events(int64_t from, int64_t to, std::vector<mvccpb::Event>* out) const;

  void CheckInvariants() const;

 private:
  friend class Writer;
  absl::Status RangeAt(KeyRange range, int64_t at, const RangeOptions& options,
                       RangeResult* out) const;
  absl::Status ReadRevision(Revision rev, mvccpb::KeyValue* kv) const;
  // Calls visit(key, index) for each indexed key in range, in key order, until an error.
  template <typename Fn>
  absl::Status VisitRange(KeyRange range, Fn visit) const;

  Backend* backend_;
  LeaseAttachments* leases_;
  // std::less<>: lookups by std::string_view (absl 20220623 knows only absl::string_view).
  absl::btree_map<std::string, KeyIndex, std::less<>> index_;
  int64_t revision_ = 1;
  int64_t compacted_ = -1;  // never compacted
  bool writing_ = false;
};

// One write request. Its changes are visible to its own reads at once (etcd's
// storeTxnWrite) and to everyone once it ends.
class Store::Writer {
 public:
  Writer(Writer&& other) noexcept;
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
  ~Writer();

  // Reads as of this request: the store's revision plus this request's changes.
  absl::StatusOr<RangeResult> Range(KeyRange range, const RangeOptions& options) const;
  // Writes `key`. Requires: key not empty.
  absl::Status Put(std::string_view key, std::string_view value, int64_t lease);
  // Deletes the live keys in range; returns how many, and appends their KeyValues as
  // they were before the delete to `previous` if not null.
  absl::StatusOr<int64_t> DeleteRange(KeyRange range, std::vector<mvccpb::KeyValue>* previous);

  // The revision this request writes at (the store's revision + 1).
  int64_t write_revision() const { return store_->revision_ + 1; }
  bool changed() const { return !changes_.empty(); }
  // Ends the request: the store's revision moves to write_revision() if anything
  // changed. Returns its events in order (a delete's kv: key and mod_revision only).
  std::vector<mvccpb::Event> End();

 private:
  friend class Store;
  explicit Writer(Store* store) : store_(store) {}

  Store* store_;
  std::vector<mvccpb::Event> changes_;
  bool ended_ = false;
};

}  // namespace keel::kv
