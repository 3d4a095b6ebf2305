#include "core/server/kv_state_machine.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/bytes.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/errors.h"
#include "core/kv/memory_backend.h"
#include "core/lease/lease.pb.h"
#include "core/server/command.pb.h"

namespace keel::server {
namespace {

constexpr std::string_view kMarkerMagic = "KKM1";
constexpr std::string_view kDumpMagic = "KKV1";
constexpr int64_t kDedupTrimEvery = 1024;  // entries between trims of the database's window

bool OpsNeedSpace(const google::protobuf::RepeatedPtrField<etcdserverpb::RequestOp>& ops);

bool TxnNeedsSpace(const etcdserverpb::TxnRequest& txn) {
  return OpsNeedSpace(txn.success()) || OpsNeedSpace(txn.failure());
}

bool OpsNeedSpace(const google::protobuf::RepeatedPtrField<etcdserverpb::RequestOp>& ops) {
  return std::any_of(ops.begin(), ops.end(), [](const etcdserverpb::RequestOp& op) {
    return op.has_request_put() || (op.has_request_txn() && TxnNeedsSpace(op.request_txn()));
  });
}

// etcd's capped applier: under NOSPACE, puts, txns that put and lease grants are refused.
bool CommandNeedsSpace(const serverpb::Command& c) {
  switch (c.request_case()) {
    case serverpb::Command::kPut:
    case serverpb::Command::kLeaseGrant: return true;
    case serverpb::Command::kTxn: return TxnNeedsSpace(c.txn());
    default: return false;
  }
}

absl::Status Fatal(const absl::Status& st) {
  if (st.ok() || kv::IsStorageFailure(st)) return st;
  return absl::InternalError(absl::StrCat("storage: ", st.ToString()));
}

}  // namespace

// A parsed "KKV1" snapshot; the views point into the snapshot's bytes.
struct KvStateMachine::Dump {
  uint64_t applied = 0;
  std::vector<std::pair<kv::Revision, std::string_view>> revisions;
  std::vector<std::pair<int64_t, std::string_view>> leases;
  std::vector<std::pair<uint64_t, int64_t>> requests;
  int64_t compacted = -1;
  int64_t lease_clock_ms = 0;
};

KvStateMachine::KvStateMachine(kv::Backend* backend, KvConfig config, Logger log)
    : backend_(backend), config_(config), log_(std::move(log)) {
  KEEL_ASSERT(backend_ != nullptr && config_.dedup_window_entries > 0);
  leases_ = std::make_unique<lease::LeaseTable>(backend_, config_.lease);
  store_ = std::make_unique<kv::Store>(backend_, leases_.get());
  applier_ = std::make_unique<kv::Applier>(store_.get(), leases_.get(), config_.applier);
}

KvStateMachine::~KvStateMachine() = default;

absl::Status KvStateMachine::Open() { return Load(backend_); }

absl::Status KvStateMachine::Load(kv::Backend* backend) {
  KEEL_ASSERT(backend == backend_);
  if (absl::Status st = leases_->LoadLeases(); !st.ok()) return st;
  if (absl::Status st = store_->Load(); !st.ok()) return st;
  if (absl::Status st = leases_->CheckLoaded(); !st.ok()) return st;
  absl::StatusOr<std::optional<int64_t>> applied = backend_->GetMeta(kv::kMetaConsistentIndex);
  if (!applied.ok()) return Fatal(applied.status());
  if (applied->value_or(0) < 0) return absl::DataLossError("negative consistent index");
  applied_ = LogIndex(static_cast<uint64_t>(applied->value_or(0)));
  recent_ids_.clear();
  recent_order_.clear();
  const int64_t window_start = static_cast<int64_t>(applied_.value) - config_.dedup_window_entries;
  std::vector<std::pair<int64_t, uint64_t>> window;
  absl::Status st = backend_->ScanRequestIds([&](uint64_t id, int64_t index) {
    if (index > window_start) window.emplace_back(index, id);
  });
  if (!st.ok()) return Fatal(st);
  std::sort(window.begin(), window.end());
  for (const auto& [index, id] : window) {
    if (index <= 0 || static_cast<uint64_t>(index) > applied_.value || !recent_ids_.insert(id).second) {
      return absl::DataLossError("request id window is inconsistent with the applied index");
    }
    recent_order_.emplace_back(LogIndex(static_cast<uint64_t>(index)), id);
  }
  trimmed_through_ = std::max<int64_t>(0, window_start);
  return absl::OkStatus();
}

bool KvStateMachine::NeedsSpace(std::string_view command) const {
  serverpb::Command c;
  // A command that does not parse fails at apply without writing anything.
  return c.ParseFromArray(command.data(), static_cast<int>(command.size())) &&
         CommandNeedsSpace(c);
}

absl::Status KvStateMachine::Apply(LogIndex index, uint64_t request_id, std::string_view command,
                                   const ApplyContext& context) {
  KEEL_ASSERT(index > applied_);
  if (!health_.ok()) return health_;
  // The window before this entry: ids applied at (index - 1 - window, index - 1]. A
  // machine restarted at index - 1 loads exactly these, so it decides alike.
  Forget(index - 1);
  if (!health_.ok()) return health_;
  absl::Status result;
  std::vector<mvccpb::Event> events;
  serverpb::Command c;
  const bool duplicate = request_id != 0 && recent_ids_.contains(request_id);
  if (duplicate) {
    result = absl::DeadlineExceededError(
        "etcdserver: a duplicate of a request applied before; its outcome is unknown here");
  } else if (!c.ParseFromArray(command.data(), static_cast<int>(command.size()))) {
    log_.Warn("MalformedCommand").Field("index", index).Field("bytes", command.size());
    result = absl::InvalidArgumentError("etcdserver: malformed command");
  } else if (context.nospace && CommandNeedsSpace(c)) {
    result = NoSpaceError();
  } else {
    applying_ = index;
    result = Dispatch(c, context, &events);
  }
  if (kv::IsStorageFailure(result)) health_ = result;
  // The applied index and the window join the same transaction as the changes.
  applied_ = index;
  if (health_.ok()) {
    health_ = Fatal(backend_->PutMeta(kv::kMetaConsistentIndex, static_cast<int64_t>(index.value)));
  }
  // A dropped duplicate leaves no trace: the window keeps the first one's index.
  if (health_.ok() && !duplicate && request_id != 0) Remember(request_id, index);
  if (!health_.ok()) return health_;
  if (!events.empty() && listener_ != nullptr) listener_->OnEvents(events);
  return result;
}

void KvStateMachine::Remember(uint64_t request_id, LogIndex index) {
  recent_ids_.insert(request_id);
  recent_order_.emplace_back(index, request_id);
  health_ = Fatal(backend_->PutRequestId(request_id, static_cast<int64_t>(index.value)));
}

void KvStateMachine::Forget(LogIndex through_applied) {
  const int64_t window_start =
      static_cast<int64_t>(through_applied.value) - config_.dedup_window_entries;
  while (!recent_order_.empty() &&
         static_cast<int64_t>(recent_order_.front().first.value) <= window_start) {
    recent_ids_.erase(recent_order_.front().second);
    recent_order_.pop_front();
  }
  // The database keeps a few more (trimmed in batches); loading filters by index.
  if (window_start - trimmed_through_ >= kDedupTrimEvery) {
    health_ = Fatal(backend_->DeleteRequestIdsThrough(window_start));
    trimmed_through_ = window_start;
  }
}

absl::Status KvStateMachine::Dispatch(const serverpb::Command& c, const ApplyContext& context,
                                      std::vector<mvccpb::Event>* events) {
  auto respond = [&](auto&& response) {
    if (context.response != nullptr) *context.response = std::move(response);
  };
  absl::Status st;
  switch (c.request_case()) {
    case serverpb::Command::kPut: {
      etcdserverpb::PutResponse r;
      st = applier_->Put(c.put(), &r, events);
      if (st.ok()) respond(std::move(r));
      return st;
    }
    case serverpb::Command::kDeleteRange: {
      etcdserverpb::DeleteRangeResponse r;
      st = applier_->DeleteRange(c.delete_range(), &r, events);
      if (st.ok()) respond(std::move(r));
      return st;
    }
    case serverpb::Command::kTxn: {
      etcdserverpb::TxnResponse r;
      st = applier_->Txn(c.txn(), &r, events);
      if (st.ok()) respond(std::move(r));
      return st;
    }
    case serverpb::Command::kCompaction: {
      etcdserverpb::CompactionResponse r;
      st = applier_->Compact(c.compaction(), &r);
      if (st.ok()) respond(std::move(r));
      return st;
    }
    case serverpb::Command::kLeaseGrant:
    case serverpb::Command::kLeaseRevoke:
    case serverpb::Command::kLeaseCheckpoint: return ApplyLease(c, context, events);
    case serverpb::Command::REQUEST_NOT_SET: break;
  }
  return absl::InvalidArgumentError("etcdserver: empty command");
}

absl::Status KvStateMachine::ApplyLease(const serverpb::Command& c, const ApplyContext& context,
                                        std::vector<mvccpb::Event>* events) {
  if (c.has_lease_grant()) {
    // The server picks the id before it proposes (etcd does too): 0 never gets here.
    if (c.lease_grant().id() <= 0) return absl::InvalidArgumentError("etcdserver: bad lease id");
    absl::StatusOr<int64_t> ttl =
        leases_->Grant(c.lease_grant().id(), c.lease_grant().ttl(), applying_.value);
    if (!ttl.ok()) return ttl.status();
    etcdserverpb::LeaseGrantResponse r;
    r.mutable_header()->set_revision(store_->revision());
    r.set_id(c.lease_grant().id());
    r.set_ttl(*ttl);
    if (context.response != nullptr) *context.response = std::move(r);
    if (listener_ != nullptr) listener_->OnLeaseGranted(c.lease_grant().id());
    return absl::OkStatus();
  }
  if (c.has_lease_revoke()) {
    const int64_t id = c.lease_revoke().id();
    if (absl::Status st = leases_->Revoke(id, store_.get(), events); !st.ok()) return st;
    etcdserverpb::LeaseRevokeResponse r;
    r.mutable_header()->set_revision(store_->revision());
    if (context.response != nullptr) *context.response = std::move(r);
    if (listener_ != nullptr) listener_->OnLeaseRevoked(id);
    return absl::OkStatus();
  }
  const leasepb::Checkpoint& cp = c.lease_checkpoint();
  if (cp.term() != context.term.value) {
    // Proposed by a leader of another term and forwarded or re-proposed after it lost
    // leadership: its clock is not this term's leader's (etcd #15247).
    log_.Info("IgnoredStaleLeaseCheckpoint").Field("checkpoint_term", cp.term())
        .Field("entry_term", context.term);
    return absl::OkStatus();
  }
  std::vector<int64_t> revoked;
  if (absl::Status st = leases_->ApplyCheckpoint(cp, store_.get(), events, &revoked); !st.ok()) {
    return st;
  }
  log_.Debug("AppliedLeaseCheckpoint").Field("term", cp.term()).Field("sequence", cp.sequence())
      .Field("clock_ms", cp.clock_ms()).Field("renewals", cp.renewals_size())
      .Field("revoked", revoked.size());
  if (listener_ != nullptr) listener_->OnLeaseCheckpoint(cp, revoked);
  return absl::OkStatus();
}

std::string KvStateMachine::TakeSnapshot() const {
  std::string out(kMarkerMagic);
  PutU64(&out, applied_.value);
  return out;
}

std::string KvStateMachine::ExportSnapshot() const {
  KEEL_ASSERT(health_.ok());
  std::string out(kDumpMagic);
  PutU64(&out, applied_.value);
  std::string revisions;
  uint64_t count = 0;
  absl::Status st = backend_->ScanRevisions(
      std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(),
      [&](kv::Revision rev, std::string_view bytes) {
        PutI64(&revisions, rev.main);
        PutI64(&revisions, rev.sub);
        PutU32(&revisions, static_cast<uint32_t>(bytes.size()));
        revisions.append(bytes);
        ++count;
        return true;
      });
  // The database was readable a moment ago (the node applies from it): a failure here
  // is the disk failing under us.
  KEEL_ASSERT(st.ok());
  PutU64(&out, count);
  out += revisions;
  std::string leases;
  count = 0;
  st = backend_->ScanLeases([&](int64_t id, std::string_view bytes) {
    PutI64(&leases, id);
    PutU32(&leases, static_cast<uint32_t>(bytes.size()));
    leases.append(bytes);
    ++count;
  });
  KEEL_ASSERT(st.ok());
  PutU64(&out, count);
  out += leases;
  PutU64(&out, recent_order_.size());
  for (const auto& [index, id] : recent_order_) {
    PutU64(&out, id);
    PutI64(&out, static_cast<int64_t>(index.value));
  }
  PutI64(&out, store_->compacted());
  PutI64(&out, leases_->clock_ms());
  return out;
}

absl::Status KvStateMachine::ParseDump(std::string_view data, Dump* out) {
  if (data.substr(0, 4) != kDumpMagic) {
    return absl::DataLossError("not a keel keyspace snapshot (bad magic)");
  }
  ByteReader r(data.substr(4));
  uint64_t count = 0;
  if (!r.U64(&out->applied) || !r.U64(&count) || count > r.remaining() / 20) {
    return absl::DataLossError("keyspace snapshot: bad header");
  }
  for (uint64_t k = 0; k < count; ++k) {
    kv::Revision rev;
    uint32_t size = 0;
    std::string_view bytes;
    if (!r.I64(&rev.main) || !r.I64(&rev.sub) || !r.U32(&size) || !r.View(size, &bytes)) {
      return absl::DataLossError("keyspace snapshot: truncated revisions");
    }
    if (!out->revisions.empty() && rev <= out->revisions.back().first) {
      return absl::DataLossError("keyspace snapshot: revisions out of order");
    }
    out->revisions.emplace_back(rev, bytes);
  }
  if (!r.U64(&count) || count > r.remaining() / 12) {
    return absl::DataLossError("keyspace snapshot: bad lease count");
  }
  for (uint64_t k = 0; k < count; ++k) {
    int64_t id = 0;
    uint32_t size = 0;
    std::string_view bytes;
    if (!r.I64(&id) || !r.U32(&size) || !r.View(size, &bytes)) {
      return absl::DataLossError("keyspace snapshot: truncated leases");
    }
    out->leases.emplace_back(id, bytes);
  }
  if (!r.U64(&count) || count > r.remaining() / 16) {
    return absl::DataLossError("keyspace snapshot: bad request id count");
  }
  for (uint64_t k = 0; k < count; ++k) {
    uint64_t id = 0;
    int64_t index = 0;
    if (!r.U64(&id) || !r.I64(&index)) return absl::DataLossError("keyspace snapshot: truncated");
    out->requests.emplace_back(id, index);
  }
  if (!r.I64(&out->compacted) || !r.I64(&out->lease_clock_ms) || !r.Done()) {
    return absl::DataLossError("keyspace snapshot: bad trailer");
  }
  return absl::OkStatus();
}

// Writes a parsed dump into an emptied backend.
static absl::Status WriteDump(const KvStateMachine::Dump& d, kv::Backend* b);

absl::Status KvStateMachine::CheckSnapshot(LogIndex index, std::string_view data) const {
  Dump dump;
  if (absl::Status st = ParseDump(data, &dump); !st.ok()) return st;
  // dump.applied may be below index: the entries between carried no command.
  // Loading it into memory checks everything Open() would, without touching the disk.
  kv::MemoryBackend scratch;
  if (absl::Status st = WriteDump(dump, &scratch); !st.ok()) return st;
  KvStateMachine trial(&scratch, config_, log_);
  if (absl::Status st = trial.Open(); !st.ok()) {
    return absl::DataLossError(absl::StrCat("keyspace snapshot: ", st.message()));
  }
  return absl::OkStatus();
}

static absl::Status WriteDump(const KvStateMachine::Dump& d, kv::Backend* b) {
  for (const auto& [rev, bytes] : d.revisions) {
    if (absl::Status st = b->PutRevision(rev, bytes); !st.ok()) return st;
  }
  for (const auto& [id, bytes] : d.leases) {
    if (absl::Status st = b->PutLease(id, bytes); !st.ok()) return st;
  }
  for (const auto& [id, index] : d.requests) {
    if (absl::Status st = b->PutRequestId(id, index); !st.ok()) return st;
  }
  if (d.compacted >= 0) {
    if (absl::Status st = b->PutMeta(kv::kMetaCompactedRevision, d.compacted); !st.ok()) return st;
  }
  if (absl::Status st = b->PutMeta(kv::kMetaLeaseClock, d.lease_clock_ms); !st.ok()) return st;
  return b->PutMeta(kv::kMetaConsistentIndex, static_cast<int64_t>(d.applied));
}

absl::Status KvStateMachine::Restore(LogIndex index, std::string_view data) {
  if (data.substr(0, 4) == kMarkerMagic) {
    // This node's own snapshot: the state is in the database already, at least as new
    // as the marker says. (The marker's index may be below the snapshot's: entries
    // after it carried no command for the machine.)
    ByteReader r(data.substr(4));
    uint64_t at = 0;
    // (`at` may also be past the snapshot's index: after a peer's newer dump.)
    if (!r.U64(&at) || !r.Done()) return absl::DataLossError("keyspace marker is corrupt");
    if (applied_.value < at) {
      return absl::DataLossError(absl::StrCat("the database is at applied index ", applied_.value,
                                              ", behind its snapshot's ", at));
    }
    return absl::OkStatus();
  }
  // Validated in memory first: on error nothing changes (Node checked it too, before
  // Raft took it; this keeps the contract for any caller).
  if (absl::Status st = CheckSnapshot(index, data); !st.ok()) return st;
  Dump dump;
  if (absl::Status st = ParseDump(data, &dump); !st.ok()) return st;
  // From here on a failure is the disk's.
  if (absl::Status st = Fatal(backend_->ClearKeyspace()); !st.ok()) return health_ = st;
  if (absl::Status st = Fatal(WriteDump(dump, backend_)); !st.ok()) return health_ = st;
  if (absl::Status st = Load(backend_); !st.ok()) return health_ = Fatal(st);
  log_.Info("RestoredKeyspace").Field("index", index).Field("applied", applied_)
      .Field("revision", store_->revision());
  if (listener_ != nullptr) listener_->OnRestored();
  return absl::OkStatus();
}

void KvStateMachine::CheckInvariants() const {
  store_->CheckInvariants();
  leases_->CheckInvariants();
  KEEL_ASSERT(recent_ids_.size() == recent_order_.size());
}

}  // namespace keel::server
