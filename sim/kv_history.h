#pragma once
// KvHistory: what the simulated clients asked of the keyspace and what they were told,
// and the end-of-run checks against the reference keyspace (kv_reference.h), which
// holds every committed revision:
//
//  Agreement        every acknowledged response is the reference's at its revision: a
//                   put is the put at its header revision; a delete deleted what the
//                   reference deleted there; a txn took the branch the state before it
//                   dictates; a read returned exactly the reference's range at its
//                   header revision (kvs, count, more).
//  Freshness        a linearizable read (or read-only txn) at header revision R started
//                   after every revision below R... precisely: R is at least every
//                   revision that existed (was applied by any node) before the read
//                   started. With revisions as the witness order, this and Agreement
//                   make the history linearizable; serializable reads need only
//                   Agreement.
//  Durability       an acknowledged put is in the reference, exactly once (values are
//                   unique); a put that failed definitely is not; a timed-out one at
//                   most once.
//
// Outcomes: OK; failed (the request was refused: nothing was or will be applied); timed
// out (indeterminate: DeadlineExceeded, as Node reports an unknown fate).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/types.h"
#include "sim/kv_reference.h"

namespace keel::sim {

enum class KvOp { kPut, kGet, kSerializableGet, kRange, kDelete, kCas, kCompact };
const char* KvOpName(KvOp op);

class KvHistory {
 public:
  struct Request;
  // The etcd request a history entry stands for (the simulator sends these).
  static etcdserverpb::RangeRequest RangeRequestFor(const Request& r);
  static etcdserverpb::PutRequest PutRequestFor(const Request& r);
  static etcdserverpb::DeleteRangeRequest DeleteRequestFor(const Request& r);
  static etcdserverpb::TxnRequest CasRequestFor(const Request& r);

  enum class Outcome { kPending, kOk, kFailed, kTimedOut };
  struct Request {
    int client = 0;
    int node = 0;
    KvOp op = KvOp::kGet;
    std::string key;       // kRange: the prefix
    std::string value;     // kPut, kCas: the value written (unique across the run)
    std::string expected;  // kCas: the value compared against
    bool expect_missing = false;  // kCas: compare on version == 0 instead
    int64_t revision = 0;  // kCompact: the revision compacted at
    Nanos start{0};
    Nanos end{-1};
    Outcome outcome = Outcome::kPending;
    std::string error;     // the status, when not OK
    std::string response;  // the serialized etcd response, when OK
    bool write() const { return op == KvOp::kPut || op == KvOp::kDelete || op == KvOp::kCas; }
    bool read() const { return op == KvOp::kGet || op == KvOp::kSerializableGet || op == KvOp::kRange; }
  };

  size_t Begin(Request request);
  // Records the outcome; false (and nothing changes) if it had one already.
  bool Resolve(size_t id, const absl::Status& status, std::string response, Nanos end);
  // A reply that never arrived (the client gave up).
  bool TimeOut(size_t id, Nanos end);

  const Request& at(size_t id) const { return requests_[id]; }
  const std::vector<Request>& requests() const { return requests_; }
  size_t pending() const { return pending_; }

  // The end-of-run checks; one sentence per violation.
  std::vector<std::string> Check(const KvReference& reference) const;
  // Black-box linearizability of the single-key operations (puts, linearizable gets,
  // deletes, compare-and-swaps), key by key (P-compositionality), by a Wing & Gong /
  // Porcupine search that ignores revisions: it does not trust the store's own witness
  // order. A search that runs out of `budget` steps on a key is reported in `gave_up`.
  std::vector<std::string> CheckPerKey(uint64_t budget, std::vector<std::string>* gave_up) const;

 private:
  std::string CheckOne(const Request& r, const KvReference& reference) const;

  std::vector<Request> requests_;
  size_t pending_ = 0;
};

}  // namespace keel::sim
