#pragma once
// Forward declarations of etcd's v3 API messages, for headers that only pass them by
// reference: the generated rpc.pb.h is large, and including it everywhere slows the
// build. .cc files include "core/etcdpb/rpc.pb.h".

namespace etcdserverpb {
class RangeRequest;
class RangeResponse;
class PutRequest;
class PutResponse;
class DeleteRangeRequest;
class DeleteRangeResponse;
class TxnRequest;
class TxnResponse;
class CompactionRequest;
class CompactionResponse;
class LeaseGrantRequest;
class LeaseGrantResponse;
class LeaseRevokeRequest;
class LeaseRevokeResponse;
class LeaseTimeToLiveRequest;
class LeaseTimeToLiveResponse;
class ResponseHeader;
class WatchCreateRequest;
class WatchResponse;
class StatusResponse;
}  // namespace etcdserverpb
