#pragma once
// A black-box linearizability check of one key's history, as a register (Wing & Gong /
// Lowe, with Porcupine's memoization). It looks only at what clients sent, what they got
// back, and when: never at revisions, so it is independent of the revision-witness check in
// sim/kv_history.h. Single-key operations on different keys are independent
// (P-compositionality), so a caller splits its history by key and checks each key alone.
//
// The model: the key's value, or absent.
//   Put(v)          value = v.                                  Output: none.
//   Get             reads the value.                            Output: observed.
//   Delete          value = absent.                             Output: deleted (1 iff it
//                                                               existed; -1 = not known).
//   Cas(expected,v) if value == expected (nullopt: absent), value = v and succeeded; else
//                   not succeeded, and observed is the value it saw.
//
// Real time: an op whose return is before another's call precedes it; ops whose intervals
// touch or overlap (ret == call included) are concurrent and may go in either order.
// An indeterminate op (timed out) may take effect at any time after its call, or never; its
// output is unknown. A definitely failed op never took effect and is dropped.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/types.h"

namespace keel::sim {

struct RegisterOp {
  enum class Kind { kPut, kGet, kDelete, kCas };
  enum class Outcome {
    kOk,             // returned at `ret` with the outputs below
    kIndeterminate,  // timed out: `ret` and the outputs are ignored
    kFailed,         // definitely never took effect: dropped before the search
  };
  Kind kind = Kind::kGet;
  Outcome outcome = Outcome::kOk;
  Nanos call{0};
  Nanos ret{0};
  std::string value;                    // put, cas: the value written
  std::optional<std::string> expected;  // cas: the value required (nullopt: absent)
  std::optional<std::string> observed;  // get: the value read; failed cas: the value seen
  bool succeeded = false;               // cas
  int deleted = -1;                     // delete: 0 or 1; -1 if not known
  size_t id = 0;                        // the caller's name for it, used in explanations
};

struct LinearizabilityResult {
  bool ok = true;        // a linearization exists (or the search gave up)
  bool gave_up = false;  // the budget ran out first; ok is then true
  uint64_t steps = 0;    // search steps taken
  std::string explanation;  // why not, when !ok
};

// Searches for an order of the ops, consistent with real time, in which each op is legal
// for the model starting from `initial`, every kOk op appears, and indeterminate ops may be
// left out. Gives up after `budget` steps (each a linearization tried or undone).
LinearizabilityResult CheckRegister(std::vector<RegisterOp> ops,
                                    std::optional<std::string> initial, uint64_t budget);

// "op 7 (put \"a\", [10, 20])": for explanations and test messages.
std::string DescribeRegisterOp(const RegisterOp& op);

}  // namespace keel::sim
