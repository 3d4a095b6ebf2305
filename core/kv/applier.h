#pragma once
// Applier: etcd 3.4's v3 key-value requests on the Store, with etcd's semantics
// (etcdserver/apply.go and the checks of etcdserver/api/v3rpc/key.go):
//   Range        limit (with `more` and `count`), revision, sort order and target,
//                keys_only, count_only, min/max mod and create revision;
//   Put          lease, prev_kv, ignore_value, ignore_lease;
//   DeleteRange  prev_kv;
//   Txn          compares (VERSION, CREATE, MOD, VALUE, LEASE; =, >, <, !=; over a
//                range), success and failure branches, nested txns;
//   Compact      revision (physical or not: compaction is done when it returns).
//
// Every request is validated completely before anything is written: a request that
// fails comes back with etcd's error (kv/errors.h) and changes nothing. Validate*()
// are the same checks, for the server to run before it proposes a request.
//
// One divergence from etcd 3.4, on purpose: a txn that deletes a range open to the
// end (range_end "\0") and puts a key inside it is refused as "duplicate key given in
// txn request". etcd 3.4 compares range ends as plain strings, accepts it, and panics
// when such a put has ignore_value or ignore_lease.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/etcdpb/forward.h"
#include "core/etcdpb/kv.pb.h"
#include "core/kv/store.h"

namespace keel::kv {

// Whether a lease exists (the lease table answers).
class LeaseLookup {
 public:
  virtual ~LeaseLookup() = default;
  virtual bool Exists(int64_t lease) const = 0;
};

struct ApplierLimits {
  int64_t txn_ops_max = 128;  // etcd --max-txn-ops
};

absl::Status ValidateRange(const etcdserverpb::RangeRequest& r);
absl::Status ValidatePut(const etcdserverpb::PutRequest& r);
absl::Status ValidateDeleteRange(const etcdserverpb::DeleteRangeRequest& r);
// Also refuses a txn that writes one key twice on one path (ErrDuplicateKey).
absl::Status ValidateTxn(const etcdserverpb::TxnRequest& r, int64_t txn_ops_max);
// A txn of ranges only (at any depth): served as a read, never proposed.
bool IsReadOnlyTxn(const etcdserverpb::TxnRequest& r);

class Applier {
 public:
  // Requires: store and leases (may be null: no lease exists) outlive the applier.
  Applier(Store* store, const LeaseLookup* leases, ApplierLimits limits);

  // Reads at the store's current state; header.revision is the store's revision.
  absl::Status Range(const etcdserverpb::RangeRequest& r, etcdserverpb::RangeResponse* out) const;
  // A read-only txn (IsReadOnlyTxn) as a read.
  absl::Status ReadTxn(const etcdserverpb::TxnRequest& r, etcdserverpb::TxnResponse* out) const;

  // Write requests: each is one revision if it changes anything. The events it made
  // are appended to `events`, in order.
  absl::Status Put(const etcdserverpb::PutRequest& r, etcdserverpb::PutResponse* out,
                   std::vector<mvccpb::Event>* events);
  absl::Status DeleteRange(const etcdserverpb::DeleteRangeRequest& r,
                           etcdserverpb::DeleteRangeResponse* out,
                           std::vector<mvccpb::Event>* events);
  absl::Status Txn(const etcdserverpb::TxnRequest& r, etcdserverpb::TxnResponse* out,
                   std::vector<mvccpb::Event>* events);
  absl::Status Compact(const etcdserverpb::CompactionRequest& r,
                       etcdserverpb::CompactionResponse* out);

  const ApplierLimits& limits() const { return limits_; }

 private:
  template <typename Reader>
  absl::Status DoRange(const Reader& reader, const etcdserverpb::RangeRequest& r,
                       etcdserverpb::RangeResponse* out) const;
  absl::Status DoPut(Store::Writer& w, const etcdserverpb::PutRequest& r,
                     etcdserverpb::PutResponse* out);
  absl::Status DoDeleteRange(Store::Writer& w, const etcdserverpb::DeleteRangeRequest& r,
                             etcdserverpb::DeleteRangeResponse* out);
  absl::Status CheckPutLease(const etcdserverpb::PutRequest& r) const;
  absl::Status CheckPutPrevious(const etcdserverpb::PutRequest& r) const;
  // Checks the puts (puts = true) or the ranges of the taken path, on the state before
  // the txn.
  absl::Status CheckTxnOps(const etcdserverpb::TxnRequest& r, const std::vector<bool>& path,
                           size_t* at, bool puts) const;
  template <typename Reader>
  absl::Status ApplyTxnOps(Reader& reader, Store::Writer* w, const etcdserverpb::TxnRequest& r,
                           const std::vector<bool>& path, size_t* at,
                           etcdserverpb::TxnResponse* out);

  Store* store_;
  const LeaseLookup* leases_;
  ApplierLimits limits_;
};

}  // namespace keel::kv
