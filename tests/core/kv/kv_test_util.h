#pragma once
// Helpers shared by the keyspace, lease and state machine tests.

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/kv/store.h"
#include "core/lease/lease.pb.h"

namespace keel::test {

inline const std::string kNul("\0", 1);  // range_end "\0": every key >= key

// The live keys of the store, in key order.
inline std::vector<std::string> LiveKeys(const kv::Store& store) {
  absl::StatusOr<kv::RangeResult> rr = store.Range({kNul, kNul}, {});
  EXPECT_TRUE(rr.ok()) << rr.status();
  std::vector<std::string> keys;
  if (rr.ok()) {
    for (const mvccpb::KeyValue& kv : rr->kvs) keys.push_back(kv.key());
  }
  return keys;
}

// A lease clock checkpoint with (lease id, expiry) renewals.
inline leasepb::Checkpoint MakeCheckpoint(
    uint64_t term, uint64_t sequence, int64_t clock_ms,
    const std::vector<std::pair<int64_t, int64_t>>& renewals = {}) {
  leasepb::Checkpoint cp;
  cp.set_term(term);
  cp.set_sequence(sequence);
  cp.set_clock_ms(clock_ms);
  cp.set_applied_index(UINT64_MAX);  // from a leader that knew of every grant
  for (const auto& [id, expiry] : renewals) {
    leasepb::Renewal* r = cp.add_renewals();
    r->set_id(id);
    r->set_expiry_ms(expiry);
  }
  return cp;
}

}  // namespace keel::test
