#include "core/kv/key_index.h"

#include <algorithm>

#include "core/assert.h"

namespace keel::kv {

void KeyIndex::Put(Revision rev) {
  KEEL_ASSERT(empty() || rev > modified());
  Generation& g = generations_.back();
  if (g.revs.empty()) g.created = rev;
  g.revs.push_back(rev);
  ++g.versions;
}

void KeyIndex::Restore(Revision created, Revision rev, int64_t version) {
  KEEL_ASSERT(!live() && (empty() || rev > modified()) && version >= 1 && created <= rev);
  Generation& g = generations_.back();
  g.created = created;
  g.revs.push_back(rev);
  g.versions = version;
}

void KeyIndex::Tombstone(Revision rev) {
  KEEL_ASSERT(live());
  Put(rev);
  generations_.emplace_back();
}

Revision KeyIndex::modified() const {
  KEEL_ASSERT(!empty());
  for (auto g = generations_.rbegin(); g != generations_.rend(); ++g) {
    if (!g->revs.empty()) return g->revs.back();
  }
  KEEL_ASSERT(false);
  return {};
}

std::optional<KeyIndex::Visible> KeyIndex::Get(int64_t at) const {
  // The newest generation that started at or before `at`; if it had already ended by
  // then (its tombstone is at or below `at`), the key was deleted at `at`.
  for (size_t i = generations_.size(); i-- > 0;) {
    const Generation& g = generations_[i];
    if (g.revs.empty() || g.revs.front().main > at) continue;
    const bool closed = i + 1 < generations_.size();
    if (closed && g.revs.back().main <= at) return std::nullopt;
    // The last revision at or below `at` in this generation.
    auto it = std::upper_bound(g.revs.begin(), g.revs.end(), at,
                               [](int64_t a, Revision r) { return a < r.main; });
    const size_t n = static_cast<size_t>(it - g.revs.begin()) - 1;
    const int64_t version = g.versions - static_cast<int64_t>(g.revs.size() - 1 - n);
    return Visible{.modified = g.revs[n], .created = g.created, .version = version};
  }
  return std::nullopt;
}

void KeyIndex::Compact(int64_t at, std::vector<Revision>* dropped) {
  // Generations that ended at or below `at` are invisible to every read at or after it.
  size_t first = 0;
  while (first + 1 < generations_.size() && generations_[first].revs.back().main <= at) {
    const std::vector<Revision>& revs = generations_[first].revs;
    dropped->insert(dropped->end(), revs.begin(), revs.end());
    ++first;
  }
  generations_.erase(generations_.begin(), generations_.begin() + static_cast<ptrdiff_t>(first));
  // In the generation alive at `at`, keep the revision visible at `at` and what follows.
  std::vector<Revision>& revs = generations_.front().revs;
  auto visible = std::upper_bound(revs.begin(), revs.end(), at,
                                  [](int64_t a, Revision r) { return a < r.main; });
  if (visible != revs.begin()) {
    --visible;
    dropped->insert(dropped->end(), revs.begin(), visible);
    revs.erase(revs.begin(), visible);
  }
}

void KeyIndex::CheckInvariants() const {
  KEEL_ASSERT(!generations_.empty());
  const Revision* last = nullptr;
  for (size_t i = 0; i < generations_.size(); ++i) {
    const Generation& g = generations_[i];
    if (i + 1 < generations_.size()) KEEL_ASSERT(!g.revs.empty());
    KEEL_ASSERT(g.versions >= static_cast<int64_t>(g.revs.size()));
    for (const Revision& r : g.revs) {
      KEEL_ASSERT(last == nullptr || *last < r);
      last = &r;
    }
  }
}

}  // namespace keel::kv
