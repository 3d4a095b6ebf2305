// The core's errors as etcd's gRPC statuses: clients decide on them whether a write may
// be repeated, so a refusal must never read as "maybe applied", nor the reverse.
#include "net/etcd_api.h"

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"

namespace keel::net {
namespace {

void ExpectMapped(const absl::Status& core, grpc::StatusCode code, const std::string& message) {
  const grpc::Status s = ToGrpcStatus(core);
  EXPECT_EQ(s.error_code(), code) << core;
  EXPECT_EQ(s.error_message(), message) << core;
}

TEST(EtcdApiStatus, RefusalsBeforeProposalAreNoLeader) {
  ExpectMapped(absl::UnavailableError("no leader"), grpc::StatusCode::UNAVAILABLE,
               "etcdserver: no leader");
  ExpectMapped(absl::UnavailableError("no leader; term=7"), grpc::StatusCode::UNAVAILABLE,
               "etcdserver: no leader");
  ExpectMapped(absl::UnavailableError("leadership transfer to 3 in progress"),
               grpc::StatusCode::UNAVAILABLE, "etcdserver: no leader");
}

TEST(EtcdApiStatus, IndeterminateOutcomesAreEtcdsTimeout) {
  ExpectMapped(absl::DeadlineExceededError("request timed out"), grpc::StatusCode::UNAVAILABLE,
               "etcdserver: request timed out");
  ExpectMapped(absl::UnavailableError("node stopped"), grpc::StatusCode::UNAVAILABLE,
               "etcdserver: server stopped");
}

TEST(EtcdApiStatus, OverloadIsTooManyRequests) {
  ExpectMapped(absl::ResourceExhaustedError("too many pending requests"),
               grpc::StatusCode::RESOURCE_EXHAUSTED, "etcdserver: too many requests");
}

TEST(EtcdApiStatus, EtcdsOwnWordsPassThrough) {
  ExpectMapped(absl::OutOfRangeError("etcdserver: mvcc: required revision has been compacted"),
               grpc::StatusCode::OUT_OF_RANGE,
               "etcdserver: mvcc: required revision has been compacted");
  ExpectMapped(absl::FailedPreconditionError("etcdserver: not leader"),
               grpc::StatusCode::FAILED_PRECONDITION, "etcdserver: not leader");
  ExpectMapped(absl::OkStatus(), grpc::StatusCode::OK, "");
}

}  // namespace
}  // namespace keel::net
