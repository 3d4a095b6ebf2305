#pragma once
// Revision: etcd's revision pair, the MVCC clock. `main` is the store's revision: it
// grows by one with every write request that changes something (a put, a delete that
// deleted, a txn that wrote). `sub` orders the changes inside one request: the first
// change of a txn is sub 0, the next sub 1. Revisions are int64 because etcd's API
// carries them as int64; they are never negative.

#include <compare>
#include <cstdint>
#include <ostream>

namespace keel::kv {

struct Revision {
  int64_t main = 0;
  int64_t sub = 0;

  constexpr auto operator<=>(const Revision&) const = default;
  friend std::ostream& operator<<(std::ostream& os, Revision r) {
    return os << r.main << "." << r.sub;
  }
};

}  // namespace keel::kv
