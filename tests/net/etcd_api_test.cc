// The core's errors as etcd's gRPC statuses: clients decide on them whether a write may
// be repeated, so a refusal must never read as "maybe applied", nor the reverse.
//
// WatchWire: a watch response as slices (the response without its events, then the
// events' shared bytes) must be, on the wire, exactly the response a typed server would
// have sent, merges included, and must keep the shared bytes alive on its own. And the
// raw Watch method: requests are parsed by keel, so bytes that do not parse end the
// stream with InvalidArgument (against an in-process member).
#include "net/etcd_api.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "core/etcdpb/kv.pb.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/watch/watch_hub.h"
#include "gtest/gtest.h"
#include "tests/net/member_harness.h"

namespace keel::net {
namespace {

namespace pb = etcdserverpb;

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

// ---- WatchWire ---------------------------------------------------------------------------

mvccpb::Event Event(const std::string& key, const std::string& value, int64_t revision) {
  mvccpb::Event e;
  e.set_type(value.empty() ? mvccpb::Event::DELETE : mvccpb::Event::PUT);
  e.mutable_kv()->set_key(key);
  e.mutable_kv()->set_value(value);
  e.mutable_kv()->set_mod_revision(revision);
  return e;
}

pb::WatchResponse Meta(int64_t watch_id, int64_t revision) {
  pb::WatchResponse r;
  r.set_watch_id(watch_id);
  r.mutable_header()->set_cluster_id(7);
  r.mutable_header()->set_member_id(9);
  r.mutable_header()->set_raft_term(3);
  r.mutable_header()->set_revision(revision);
  return r;
}

// What the client reads: the buffer's bytes, in order.
std::string Bytes(WatchWire& wire) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(wire.buffer().Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(out.size(), wire.bytes());
  EXPECT_EQ(wire.buffer().Length(), wire.bytes());
  return out;
}

pb::WatchResponse Parsed(WatchWire& wire) {
  pb::WatchResponse r;
  EXPECT_TRUE(r.ParseFromString(Bytes(wire)));
  return r;
}

TEST(WatchWire, AnEventResponseIsByteForByteTheTypedResponse) {
  const mvccpb::Event put = Event("/a", "1", 5);
  const mvccpb::Event del = Event("/b", "", 5);
  mvccpb::KeyValue prev;
  prev.set_key("/b");
  prev.set_value(std::string(200, 'v'));
  prev.set_mod_revision(4);
  pb::WatchResponse typed = Meta(2, 5);
  *typed.add_events() = put;
  *typed.add_events() = del;
  *typed.mutable_events(1)->mutable_prev_kv() = prev;
  const std::vector<watch::EncodedEvent> events = {watch::EncodeEvent(put),
                                                   watch::EncodeEvent(del, &prev)};
  WatchWire wire = WatchWire::Events(Meta(2, 5), events);
  EXPECT_EQ(wire.merge_key(), 2);
  EXPECT_EQ(Bytes(wire), typed.SerializeAsString());
}

TEST(WatchWire, AControlResponseIsWholeAndNeverMerges) {
  pb::WatchResponse created = Meta(-1, 5);
  created.set_created(true);
  created.set_canceled(true);
  created.set_cancel_reason("mvcc: watcher range is empty");
  WatchWire wire = WatchWire::Whole(created);
  EXPECT_FALSE(wire.merge_key().has_value());
  EXPECT_EQ(Bytes(wire), created.SerializeAsString());
}

TEST(WatchWire, AMergeAppendsTheLaterEventsAndTakesTheLaterHeaderAsTheTypedMergeDid) {
  const mvccpb::Event e1 = Event("/a", "1", 5), e2 = Event("/a", "2", 6), e3 = Event("/c", "3", 6);
  WatchWire first = WatchWire::Events(Meta(4, 5), std::vector{watch::EncodeEvent(e1)});
  WatchWire later =
      WatchWire::Events(Meta(4, 6), std::vector{watch::EncodeEvent(e2), watch::EncodeEvent(e3)});
  const size_t later_bytes = later.bytes();
  const size_t first_bytes = first.bytes();
  first.Merge(std::move(later));
  pb::WatchResponse expected = Meta(4, 6);
  *expected.add_events() = e1;
  *expected.add_events() = e2;
  *expected.add_events() = e3;
  EXPECT_EQ(Bytes(first), expected.SerializeAsString());
  // The earlier response's header is gone: its bytes no longer count.
  EXPECT_EQ(first.bytes(), first_bytes + later_bytes - Meta(4, 5).ByteSizeLong());
  // And protobuf's own merge of the two responses reads the same.
  pb::WatchResponse merged = Meta(4, 5);
  *merged.add_events() = e1;
  pb::WatchResponse more = Meta(4, 6);
  *more.add_events() = e2;
  *more.add_events() = e3;
  merged.MergeFrom(more);
  EXPECT_EQ(Parsed(first).SerializeAsString(), merged.SerializeAsString());
}

TEST(WatchWire, EveryResponseReferencesTheSameBytesAndKeepsThemAliveAfterTheHubLetGo) {
  watch::EncodedEvent shared = watch::EncodeEvent(Event("/k", "v", 8));
  const std::string copy = *shared;
  WatchWire::Slices slices;
  std::vector<WatchWire> wires;
  for (int64_t id = 0; id < 3; ++id) {
    wires.push_back(WatchWire::Events(Meta(id, 8), std::vector{shared}, &slices));
  }
  EXPECT_EQ(slices.size(), 1u);
  for (WatchWire& wire : wires) {
    std::vector<grpc::Slice> dumped;
    ASSERT_TRUE(wire.buffer().Dump(&dumped).ok());
    ASSERT_EQ(dumped.size(), 2u);
    // Not a copy: the slice is the hub's string itself.
    EXPECT_EQ(reinterpret_cast<const char*>(dumped[1].begin()), shared->data());
  }
  // The hub and the cache let go; what is still to be written holds the bytes.
  const grpc::ByteBuffer written = wires[1].buffer();
  shared.reset();
  slices = WatchWire::Slices();
  wires.clear();
  std::vector<grpc::Slice> dumped;
  ASSERT_TRUE(written.Dump(&dumped).ok());
  ASSERT_EQ(dumped.size(), 2u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(dumped[1].begin()), dumped[1].size()), copy);
  pb::WatchResponse r;
  std::string bytes;
  for (const grpc::Slice& s : dumped)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  ASSERT_TRUE(r.ParseFromString(bytes));
  ASSERT_EQ(r.events_size(), 1);
  EXPECT_EQ(r.events(0).kv().key(), "/k");
  EXPECT_EQ(r.watch_id(), 1);
}

// ---- the raw Watch method ----------------------------------------------------------------

// One step of a call on `cq`: waits for `tag` and returns whether it went through.
bool Step(grpc::CompletionQueue& cq, void* tag) {
  void* got = nullptr;
  bool ok = false;
  EXPECT_TRUE(cq.Next(&got, &ok));
  EXPECT_EQ(got, tag);
  return ok;
}

grpc::ByteBuffer BufferOf(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

TEST(EtcdApiWatch, ARequestThatDoesNotParseEndsTheStreamWithInvalidArgument) {
  client::testing::TestDeadline deadline(std::chrono::seconds(60));
  client::testing::TestCluster& cluster = client::testing::SharedMember("keel-client-test");
  auto channel = grpc::CreateChannel(cluster.Endpoint(0), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      stub.PrepareCall(&context, "/etcdserverpb.Watch/Watch", &cq);
  int tags[5];
  call->StartCall(&tags[0]);
  ASSERT_TRUE(Step(cq, &tags[0]));
  // A good request first: the stream serves it.
  pb::WatchRequest create;
  create.mutable_create_request()->set_key("/raw/k");
  call->Write(BufferOf(create.SerializeAsString()), &tags[1]);
  ASSERT_TRUE(Step(cq, &tags[1]));
  grpc::ByteBuffer got;
  call->Read(&got, &tags[2]);
  ASSERT_TRUE(Step(cq, &tags[2]));
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(got.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  pb::WatchResponse created;
  ASSERT_TRUE(created.ParseFromString(bytes));
  EXPECT_TRUE(created.created());
  EXPECT_EQ(created.watch_id(), 0);
  // Then bytes that are no WatchRequest (a truncated length-delimited field).
  call->Write(BufferOf(std::string("\x0a\x7f\x01", 3)), &tags[3]);
  Step(cq, &tags[3]);  // may fail: the server may have ended the stream already
  grpc::Status status;
  call->Finish(&status, &tags[4]);
  ASSERT_TRUE(Step(cq, &tags[4]));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
}

}  // namespace
}  // namespace keel::net
