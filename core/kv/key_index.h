#pragma once
// KeyIndex: the history of one key's revisions, as etcd's keyIndex. A key lives through
// generations: a generation starts with the put that creates the key and ends with the
// tombstone that deletes it; the last generation is the current one, empty while the
// key is deleted. Example: put@1, put@2, delete@3, put@4 gives
//   generations: {created 1, versions 3, revs [1, 2, 3(tombstone)]}, {created 4, revs [4]}
// The version of a key is its count of puts since creation (1 for the creating put).
//
// Compaction at revision r drops every revision at or below r that no read at or after
// r can see: everything before the revision visible at r, and a whole generation whose
// tombstone is at or below r. The visible revision itself stays (reads at r need it).
//
// Invariant: revisions strictly ascend across generations; every generation but the
// last ends with a tombstone and is not empty; the index is empty (and may be dropped)
// when only one empty generation remains.

#include <cstdint>
#include <optional>
#include <vector>

#include "core/kv/revision.h"

namespace keel::kv {

class KeyIndex {
 public:
  // The key as one read at a revision sees it.
  struct Visible {
    Revision modified;  // the revision that wrote the value
    Revision created;   // the revision that created this generation
    int64_t version = 0;
  };

  // Records a put. Requires: rev > every revision recorded.
  void Put(Revision rev);
  // Records a put that starts the current generation as loaded after a compaction
  // dropped its beginning: created and version come from the put's record (etcd's
  // keyIndex.restore). Requires: the current generation is empty, rev > every revision.
  void Restore(Revision created, Revision rev, int64_t version);
  // Records a delete. Requires: the key is live (its current generation is not empty)
  // and rev > every revision recorded.
  void Tombstone(Revision rev);

  // The value a read at main revision `at` sees; nullopt if the key did not exist then
  // (never created, deleted, or its history at `at` compacted away).
  std::optional<Visible> Get(int64_t at) const;
  // Compacts at main revision `at` (see above) and appends each dropped revision to
  // `dropped`, oldest first.
  void Compact(int64_t at, std::vector<Revision>* dropped);

  bool live() const { return !generations_.back().revs.empty(); }
  bool empty() const { return generations_.size() == 1 && generations_[0].revs.empty(); }
  // The latest revision recorded. Requires: !empty().
  Revision modified() const;
  void CheckInvariants() const;

 private:
  struct Generation {
    int64_t versions = 0;  // puts ever recorded in it, the tombstone included (etcd)
    Revision created;
    std::vector<Revision> revs;  // ascending; may have lost its front to compaction
  };
  std::vector<Generation> generations_ = std::vector<Generation>(1);
};

}  // namespace keel::kv
