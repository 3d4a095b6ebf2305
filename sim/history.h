#pragma once
// ClientHistory: what the simulated clients asked and what they were told, and the
// end-of-run checks on it against the final register (the same on every node):
//
//  Durability     every acknowledged write is in the register.
//  Integrity      no write that failed definitely (refused: nothing was appended) is.
//  Linearizability of the append-only register, in real time: every successful
//                 operation proves a prefix of the final register existed when it took
//                 effect (a write at position p proves p + 1 values, a read of length L
//                 proves L); an operation that starts after another ended must see at
//                 least that prefix; and a read must not include a write that started
//                 after the read ended. Timed-out operations are indeterminate: they
//                 may or may not have taken effect, and are only ever allowed.

#include <cstddef>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "core/server/register.h"
#include "core/types.h"

namespace keel::sim {

class ClientHistory {
 public:
  enum class Outcome { kPending, kOk, kFailed, kTimedOut };
  struct Request {
    int client = 0;
    int node = 0;
    bool write = true;
    std::string value;  // writes: unique across the run
    Nanos start{0};
    Nanos end{-1};
    Outcome outcome = Outcome::kPending;
    size_t read_length = 0;  // reads: the register length observed
  };

  // Records a request; returns its id.
  size_t Begin(Request request);
  // Records its outcome; false (and nothing changes) if it had one already.
  bool Resolve(size_t id, Outcome outcome, size_t read_length, Nanos end);

  const Request& at(size_t id) const { return requests_[id]; }
  const std::vector<Request>& requests() const { return requests_; }
  size_t pending() const { return pending_; }

  // The end-of-run checks; one sentence per violation.
  std::vector<std::string> Check(const std::vector<server::Register::Value>& reference) const;

 private:
  void CheckLinearizable(const std::vector<server::Register::Value>& reference,
                         const absl::btree_map<std::string, size_t>& position,
                         std::vector<std::string>* failures) const;

  std::vector<Request> requests_;
  size_t pending_ = 0;
};

}  // namespace keel::sim
