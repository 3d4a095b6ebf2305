#include "core/kv/applier.h"

#include <algorithm>
#include <set>
#include <string>

#include "core/assert.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/errors.h"

namespace keel::kv {
namespace {

using etcdserverpb::Compare;
using etcdserverpb::RangeRequest;
using etcdserverpb::RequestOp;
using etcdserverpb::TxnRequest;
using Ops = google::protobuf::RepeatedPtrField<RequestOp>;

KeyRange RangeOf(const std::string& key, const std::string& end) { return KeyRange{key, end}; }

// ---- validation (etcd's v3rpc/key.go) ----

absl::Status ValidateTxnOps(const TxnRequest& r, int64_t txn_ops_max);

// etcd's checkRequestOp: a nested txn gets checkTxnRequest only; duplicates are looked
// for once every op passed (checkIntervals, from the top).
absl::Status ValidateOp(const RequestOp& op, int64_t txn_ops_max) {
  switch (op.request_case()) {
    case RequestOp::kRequestRange: return ValidateRange(op.request_range());
    case RequestOp::kRequestPut: return ValidatePut(op.request_put());
    case RequestOp::kRequestDeleteRange: return ValidateDeleteRange(op.request_delete_range());
    case RequestOp::kRequestTxn: return ValidateTxnOps(op.request_txn(), txn_ops_max);
    case RequestOp::REQUEST_NOT_SET: break;
  }
  return ErrKeyNotFound();  // etcd's answer to an empty op
}

// The keys a branch puts and the ranges it deletes (etcd's checkIntervals), to refuse a
// txn that writes one key twice on one path. Unlike etcd 3.4, a range end of "\0" is
// open to the end (see applier.h).
struct Writes {
  std::set<std::string> puts;
  std::vector<std::pair<std::string, std::string>> deletes;  // (key, range_end)

  bool Deletes(const std::string& key) const {
    for (const auto& [k, end] : deletes) {
      if (RangeOf(k, end).Contains(key)) return true;
    }
    return false;
  }
};

absl::Status CheckWrites(const Ops& ops, Writes* out) {
  for (const RequestOp& op : ops) {
    if (!op.has_request_delete_range()) continue;
    out->deletes.emplace_back(op.request_delete_range().key(),
                              op.request_delete_range().range_end());
  }
  for (const RequestOp& op : ops) {
    if (!op.has_request_txn()) continue;
    Writes then, otherwise;
    if (absl::Status st = CheckWrites(op.request_txn().success(), &then); !st.ok()) return st;
    if (absl::Status st = CheckWrites(op.request_txn().failure(), &otherwise); !st.ok()) {
      return st;
    }
    for (const std::string& k : then.puts) {
      if (out->puts.contains(k) || out->Deletes(k)) return ErrDuplicateKey();
      out->puts.insert(k);
    }
    for (const std::string& k : otherwise.puts) {
      // The two branches of one txn exclude each other: both may put k.
      if (out->puts.contains(k) && !then.puts.contains(k)) return ErrDuplicateKey();
      if (out->Deletes(k)) return ErrDuplicateKey();
      out->puts.insert(k);
    }
    for (auto* branch : {&then, &otherwise}) {
      out->deletes.insert(out->deletes.end(), branch->deletes.begin(), branch->deletes.end());
    }
  }
  for (const RequestOp& op : ops) {
    if (!op.has_request_put()) continue;
    const std::string& k = op.request_put().key();
    if (out->puts.contains(k) || out->Deletes(k)) return ErrDuplicateKey();
    out->puts.insert(k);
  }
  return absl::OkStatus();
}

absl::Status ValidateTxnOps(const TxnRequest& r, int64_t txn_ops_max) {
  const int64_t ops = std::max({r.compare_size(), r.success_size(), r.failure_size()});
  if (ops > txn_ops_max) return ErrTooManyOps();
  for (const Compare& c : r.compare()) {
    if (c.key().empty()) return ErrEmptyKey();
  }
  // etcd: a nested txn gets what is left of the budget.
  for (const Ops* branch : {&r.success(), &r.failure()}) {
    for (const RequestOp& op : *branch) {
      if (absl::Status st = ValidateOp(op, txn_ops_max - ops); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

// ---- compares (etcd's applyCompare) ----

template <typename T>
int Order(const T& a, const T& b) { return a < b ? -1 : (b < a ? 1 : 0); }

bool CompareKv(const Compare& c, const mvccpb::KeyValue& kv) {
  int order = 0;
  switch (c.target()) {
    case Compare::VALUE:
      order = Order<std::string>(kv.value(), c.has_value() ? c.value() : std::string());
      break;
    case Compare::CREATE:
      order = Order(kv.create_revision(), c.has_create_revision() ? c.create_revision() : 0);
      break;
    case Compare::MOD:
      order = Order(kv.mod_revision(), c.has_mod_revision() ? c.mod_revision() : 0);
      break;
    case Compare::VERSION:
      order = Order(kv.version(), c.has_version() ? c.version() : 0);
      break;
    case Compare::LEASE:
      order = Order(kv.lease(), c.has_lease() ? c.lease() : 0);
      break;
    default: break;  // etcd: an unknown target compares equal
  }
  switch (c.result()) {
    case Compare::EQUAL: return order == 0;
    case Compare::NOT_EQUAL: return order != 0;
    case Compare::GREATER: return order > 0;
    case Compare::LESS: return order < 0;
    default: return true;  // etcd: an unknown result holds
  }
}

// Every key in the compare's range must satisfy it; a range with no key compares a
// zero KeyValue, except on VALUE, which fails (no way to tell a missing value).
absl::StatusOr<bool> Holds(const Store& store, const Compare& c) {
  absl::StatusOr<RangeResult> rr = store.Range(RangeOf(c.key(), c.range_end()), {});
  if (!rr.ok()) return IsStorageFailure(rr.status()) ? rr.status() : absl::StatusOr<bool>(false);
  if (rr->kvs.empty()) return c.target() != Compare::VALUE && CompareKv(c, mvccpb::KeyValue());
  return std::all_of(rr->kvs.begin(), rr->kvs.end(),
                     [&](const mvccpb::KeyValue& kv) { return CompareKv(c, kv); });
}

// The branch each txn takes, in pre-order (the txn, then its nested txns in the taken
// branch), all decided on the state before the txn writes anything (etcd's
// compareToPath).
absl::Status TakenPath(const Store& store, const TxnRequest& r, std::vector<bool>* path) {
  bool ok = true;
  for (const Compare& c : r.compare()) {
    absl::StatusOr<bool> holds = Holds(store, c);
    if (!holds.ok()) return holds.status();
    if (!*holds) {
      ok = false;
      break;
    }
  }
  path->push_back(ok);
  for (const RequestOp& op : ok ? r.success() : r.failure()) {
    if (!op.has_request_txn()) continue;
    if (absl::Status st = TakenPath(store, op.request_txn(), path); !st.ok()) return st;
  }
  return absl::OkStatus();
}

bool IsReadOnlyOps(const Ops& ops) {
  return std::all_of(ops.begin(), ops.end(), [](const RequestOp& op) {
    if (op.has_request_txn()) return IsReadOnlyTxn(op.request_txn());
    return op.has_request_range();
  });
}

// ---- range helpers (etcd's apply.go Range) ----

int64_t SortValue(const mvccpb::KeyValue& kv, RangeRequest::SortTarget target) {
  switch (target) {
    case RangeRequest::VERSION: return kv.version();
    case RangeRequest::CREATE: return kv.create_revision();
    case RangeRequest::MOD: return kv.mod_revision();
    default: return 0;
  }
}

void Sort(std::vector<mvccpb::KeyValue>* kvs, RangeRequest::SortTarget target, bool descend) {
  // Stable, so that ties keep key order on every node.
  auto less = [&](const mvccpb::KeyValue& a, const mvccpb::KeyValue& b) {
    if (target == RangeRequest::KEY) return a.key() < b.key();
    if (target == RangeRequest::VALUE) return a.value() < b.value();
    return SortValue(a, target) < SortValue(b, target);
  };
  if (descend) {
    std::stable_sort(kvs->begin(), kvs->end(),
                     [&](const mvccpb::KeyValue& a, const mvccpb::KeyValue& b) { return less(b, a); });
  } else {
    std::stable_sort(kvs->begin(), kvs->end(), less);
  }
}

}  // namespace

absl::Status ValidateRange(const etcdserverpb::RangeRequest& r) {
  if (r.key().empty()) return ErrEmptyKey();
  if (!RangeRequest::SortOrder_IsValid(r.sort_order()) ||
      !RangeRequest::SortTarget_IsValid(r.sort_target())) {
    return absl::InvalidArgumentError("etcdserver: invalid sort option");  // etcd 3.5
  }
  return absl::OkStatus();
}

absl::Status ValidatePut(const etcdserverpb::PutRequest& r) {
  if (r.key().empty()) return ErrEmptyKey();
  if (r.ignore_value() && !r.value().empty()) return ErrValueProvided();
  if (r.ignore_lease() && r.lease() != 0) return ErrLeaseProvided();
  return absl::OkStatus();
}

absl::Status ValidateDeleteRange(const etcdserverpb::DeleteRangeRequest& r) {
  if (r.key().empty()) return ErrEmptyKey();
  return absl::OkStatus();
}

absl::Status ValidateTxn(const etcdserverpb::TxnRequest& r, int64_t txn_ops_max) {
  if (absl::Status st = ValidateTxnOps(r, txn_ops_max); !st.ok()) return st;
  for (const Ops* branch : {&r.success(), &r.failure()}) {
    Writes writes;
    if (absl::Status st = CheckWrites(*branch, &writes); !st.ok()) return st;
  }
  return absl::OkStatus();
}

bool IsReadOnlyTxn(const etcdserverpb::TxnRequest& r) {
  return IsReadOnlyOps(r.success()) && IsReadOnlyOps(r.failure());
}

Applier::Applier(Store* store, const LeaseLookup* leases, ApplierLimits limits)
    : store_(store), leases_(leases), limits_(limits) {
  KEEL_ASSERT(store_ != nullptr && limits_.txn_ops_max > 0);
}

template <typename Reader>
absl::Status Applier::DoRange(const Reader& reader, const etcdserverpb::RangeRequest& r,
                              etcdserverpb::RangeResponse* out) const {
  const bool fetch_all = r.sort_order() != RangeRequest::NONE || r.min_mod_revision() != 0 ||
                         r.max_mod_revision() != 0 || r.min_create_revision() != 0 ||
                         r.max_create_revision() != 0;
  RangeOptions options{.revision = r.revision(), .count_only = r.count_only()};
  // One more than asked, to tell whether there is more; everything when filtering or
  // sorting, which must see every key before it truncates.
  if (!fetch_all && r.limit() > 0) options.limit = r.limit() + 1;
  absl::StatusOr<RangeResult> rr = reader.Range(RangeOf(r.key(), r.range_end()), options);
  if (!rr.ok()) return rr.status();
  std::vector<mvccpb::KeyValue>& kvs = rr->kvs;
  std::erase_if(kvs, [&](const mvccpb::KeyValue& kv) {
    return (r.max_mod_revision() != 0 && kv.mod_revision() > r.max_mod_revision()) ||
           (r.min_mod_revision() != 0 && kv.mod_revision() < r.min_mod_revision()) ||
           (r.max_create_revision() != 0 && kv.create_revision() > r.max_create_revision()) ||
           (r.min_create_revision() != 0 && kv.create_revision() < r.min_create_revision());
  });
  RangeRequest::SortOrder order = r.sort_order();
  // etcd: results come in key order; another target sorts ascending unless told.
  if (r.sort_target() != RangeRequest::KEY && order == RangeRequest::NONE) {
    order = RangeRequest::ASCEND;
  }
  if (order != RangeRequest::NONE) Sort(&kvs, r.sort_target(), order == RangeRequest::DESCEND);
  if (r.limit() > 0 && static_cast<int64_t>(kvs.size()) > r.limit()) {
    kvs.resize(static_cast<size_t>(r.limit()));
    out->set_more(true);
  }
  out->mutable_header()->set_revision(rr->revision);
  out->set_count(rr->count);
  out->mutable_kvs()->Reserve(static_cast<int>(kvs.size()));
  for (mvccpb::KeyValue& kv : kvs) {
    if (r.keys_only()) kv.clear_value();
    *out->add_kvs() = std::move(kv);
  }
  return absl::OkStatus();
}

absl::Status Applier::Range(const etcdserverpb::RangeRequest& r,
                            etcdserverpb::RangeResponse* out) const {
  if (absl::Status st = ValidateRange(r); !st.ok()) return st;
  return DoRange(*store_, r, out);
}

absl::Status Applier::CheckPutLease(const etcdserverpb::PutRequest& r) const {
  if (r.lease() != 0 && (leases_ == nullptr || !leases_->Exists(r.lease()))) {
    return ErrLeaseNotFound();
  }
  return absl::OkStatus();
}

absl::Status Applier::CheckPutPrevious(const etcdserverpb::PutRequest& r) const {
  if (!r.ignore_value() && !r.ignore_lease()) return absl::OkStatus();
  // They keep the previous value or lease: there must be one.
  absl::StatusOr<RangeResult> rr = store_->Range(RangeOf(r.key(), ""), {.count_only = true});
  if (!rr.ok()) return rr.status();
  return rr->count == 0 ? ErrKeyNotFound() : absl::OkStatus();
}

absl::Status Applier::DoPut(Store::Writer& w, const etcdserverpb::PutRequest& r,
                            etcdserverpb::PutResponse* out) {
  std::string value = r.value();
  int64_t lease = r.lease();
  if (r.ignore_value() || r.ignore_lease() || r.prev_kv()) {
    absl::StatusOr<RangeResult> rr = w.Range(RangeOf(r.key(), ""), {});
    if (!rr.ok()) return rr.status();
    if (!rr->kvs.empty()) {
      const mvccpb::KeyValue& prev = rr->kvs.front();
      if (r.ignore_value()) value = prev.value();
      if (r.ignore_lease()) lease = prev.lease();
      if (r.prev_kv()) *out->mutable_prev_kv() = prev;
    } else {
      // CheckPut ran on the state before the request, and a txn cannot delete a key
      // it then puts (ErrDuplicateKey): the key is still there.
      KEEL_ASSERT(!r.ignore_value() && !r.ignore_lease());
    }
  }
  if (absl::Status st = w.Put(r.key(), value, lease); !st.ok()) return st;
  out->mutable_header()->set_revision(w.write_revision());
  return absl::OkStatus();
}

absl::Status Applier::Put(const etcdserverpb::PutRequest& r, etcdserverpb::PutResponse* out,
                          std::vector<mvccpb::Event>* events) {
  if (absl::Status st = ValidatePut(r); !st.ok()) return st;
  // etcd's order for a plain put: the lease, then the previous key.
  if (absl::Status st = CheckPutLease(r); !st.ok()) return st;
  if (absl::Status st = CheckPutPrevious(r); !st.ok()) return st;
  Store::Writer w = store_->Write();
  absl::Status st = DoPut(w, r, out);
  std::vector<mvccpb::Event> changes = w.End();
  events->insert(events->end(), changes.begin(), changes.end());
  return st;
}

absl::Status Applier::DoDeleteRange(Store::Writer& w, const etcdserverpb::DeleteRangeRequest& r,
                                    etcdserverpb::DeleteRangeResponse* out) {
  std::vector<mvccpb::KeyValue> previous;
  absl::StatusOr<int64_t> deleted =
      w.DeleteRange(RangeOf(r.key(), r.range_end()), r.prev_kv() ? &previous : nullptr);
  if (!deleted.ok()) return deleted.status();
  out->set_deleted(*deleted);
  for (mvccpb::KeyValue& kv : previous) *out->add_prev_kvs() = std::move(kv);
  out->mutable_header()->set_revision(w.changed() ? w.write_revision() : store_->revision());
  return absl::OkStatus();
}

absl::Status Applier::DeleteRange(const etcdserverpb::DeleteRangeRequest& r,
                                  etcdserverpb::DeleteRangeResponse* out,
                                  std::vector<mvccpb::Event>* events) {
  if (absl::Status st = ValidateDeleteRange(r); !st.ok()) return st;
  Store::Writer w = store_->Write();
  absl::Status st = DoDeleteRange(w, r, out);
  std::vector<mvccpb::Event> changes = w.End();
  events->insert(events->end(), changes.begin(), changes.end());
  return st;
}

absl::Status Applier::CheckTxnOps(const etcdserverpb::TxnRequest& r,
                                  const std::vector<bool>& path, size_t* at, bool puts) const {
  KEEL_ASSERT(*at < path.size());
  const bool taken = path[(*at)++];
  for (const RequestOp& op : taken ? r.success() : r.failure()) {
    if (op.has_request_txn()) {
      if (absl::Status st = CheckTxnOps(op.request_txn(), path, at, puts); !st.ok()) return st;
    } else if (op.has_request_put() && puts) {
      // etcd's checkRequestPut: the previous key, then the lease.
      if (absl::Status st = CheckPutPrevious(op.request_put()); !st.ok()) return st;
      if (absl::Status st = CheckPutLease(op.request_put()); !st.ok()) return st;
    } else if (op.has_request_range() && !puts) {
      // etcd's checkRequestRange, on the state before the txn.
      const int64_t rev = op.request_range().revision();
      if (rev == 0) continue;
      if (rev > store_->revision()) return ErrFutureRev();
      if (rev < store_->compacted()) return ErrCompacted();
    }
  }
  return absl::OkStatus();
}

template <typename Reader>
absl::Status Applier::ApplyTxnOps(Reader& reader, Store::Writer* w,
                                  const etcdserverpb::TxnRequest& r, const std::vector<bool>& path,
                                  size_t* at, etcdserverpb::TxnResponse* out) {
  const bool taken = path[(*at)++];
  out->set_succeeded(taken);
  out->mutable_header();
  for (const RequestOp& op : taken ? r.success() : r.failure()) {
    etcdserverpb::ResponseOp* resp = out->add_responses();
    absl::Status st;
    switch (op.request_case()) {
      case RequestOp::kRequestRange:
        st = DoRange(reader, op.request_range(), resp->mutable_response_range());
        break;
      case RequestOp::kRequestPut:
        st = DoPut(*w, op.request_put(), resp->mutable_response_put());
        break;
      case RequestOp::kRequestDeleteRange:
        st = DoDeleteRange(*w, op.request_delete_range(), resp->mutable_response_delete_range());
        break;
      case RequestOp::kRequestTxn:
        st = ApplyTxnOps(reader, w, op.request_txn(), path, at, resp->mutable_response_txn());
        break;
      case RequestOp::REQUEST_NOT_SET: break;  // refused by validation
    }
    // Validated and checked before the first write: only storage can fail here.
    if (!st.ok()) {
      KEEL_ASSERT(IsStorageFailure(st));
      return st;
    }
  }
  return absl::OkStatus();
}

absl::Status Applier::ReadTxn(const etcdserverpb::TxnRequest& r,
                              etcdserverpb::TxnResponse* out) const {
  KEEL_ASSERT(IsReadOnlyTxn(r));
  // A read-only txn writes nothing: the const_cast is to share ApplyTxnOps.
  return const_cast<Applier*>(this)->Txn(r, out, nullptr);
}

absl::Status Applier::Txn(const etcdserverpb::TxnRequest& r, etcdserverpb::TxnResponse* out,
                          std::vector<mvccpb::Event>* events) {
  if (absl::Status st = ValidateTxn(r, limits_.txn_ops_max); !st.ok()) return st;
  std::vector<bool> path;
  if (absl::Status st = TakenPath(*store_, r, &path); !st.ok()) return st;
  const bool read_only = IsReadOnlyTxn(r);
  // etcd: every put on the taken path is checked before any range.
  for (const bool puts : {true, false}) {
    if (puts && read_only) continue;
    size_t at = 0;
    if (absl::Status st = CheckTxnOps(r, path, &at, puts); !st.ok()) return st;
  }
  size_t at = 0;
  if (read_only) {
    absl::Status st = ApplyTxnOps(*store_, nullptr, r, path, &at, out);
    out->mutable_header()->set_revision(store_->revision());
    return st;
  }
  KEEL_ASSERT(events != nullptr);
  Store::Writer w = store_->Write();
  absl::Status st = ApplyTxnOps(w, &w, r, path, &at, out);
  out->mutable_header()->set_revision(w.changed() ? w.write_revision() : store_->revision());
  std::vector<mvccpb::Event> changes = w.End();
  events->insert(events->end(), changes.begin(), changes.end());
  return st;
}

absl::Status Applier::Compact(const etcdserverpb::CompactionRequest& r,
                              etcdserverpb::CompactionResponse* out) {
  if (absl::Status st = store_->Compact(r.revision()); !st.ok()) return st;
  out->mutable_header()->set_revision(store_->revision());
  return absl::OkStatus();
}

}  // namespace keel::kv
