#pragma once
// etcd's client-visible errors for the keyspace, with etcd 3.4's gRPC codes and messages
// (etcdserver/api/v3rpc/rpctypes): clients match on both, so they are part of the wire
// contract. absl's status codes are gRPC's, one for one.
//
// Storage failures are not among them: they come back as Internal or DataLoss
// (IsStorageFailure), which the node treats as fatal (fail-stop), never as an answer.

#include "absl/status/status.h"

namespace keel::kv {

inline absl::Status ErrEmptyKey() {
  return absl::InvalidArgumentError("etcdserver: key is not provided");
}
inline absl::Status ErrKeyNotFound() {
  return absl::InvalidArgumentError("etcdserver: key not found");
}
inline absl::Status ErrValueProvided() {
  return absl::InvalidArgumentError("etcdserver: value is provided");
}
inline absl::Status ErrLeaseProvided() {
  return absl::InvalidArgumentError("etcdserver: lease is provided");
}
inline absl::Status ErrTooManyOps() {
  return absl::InvalidArgumentError("etcdserver: too many operations in txn request");
}
inline absl::Status ErrDuplicateKey() {
  return absl::InvalidArgumentError("etcdserver: duplicate key given in txn request");
}
inline absl::Status ErrRequestTooLarge() {
  return absl::InvalidArgumentError("etcdserver: request is too large");
}
inline absl::Status ErrCompacted() {
  return absl::OutOfRangeError("etcdserver: mvcc: required revision has been compacted");
}
inline absl::Status ErrFutureRev() {
  return absl::OutOfRangeError("etcdserver: mvcc: required revision is a future revision");
}
inline absl::Status ErrLeaseNotFound() {
  return absl::NotFoundError("etcdserver: requested lease not found");
}
inline absl::Status ErrLeaseExist() {
  return absl::FailedPreconditionError("etcdserver: lease already exists");
}
inline absl::Status ErrLeaseTTLTooLarge() {
  return absl::OutOfRangeError("etcdserver: too large lease TTL");
}

inline bool IsStorageFailure(const absl::Status& status) {
  return status.code() == absl::StatusCode::kInternal ||
         status.code() == absl::StatusCode::kDataLoss;
}

}  // namespace keel::kv
