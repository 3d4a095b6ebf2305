#include "core/server/kv_server.h"

#include <algorithm>

#include <limits>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/kv/errors.h"
#include "core/lease/lease.pb.h"
#include "core/server/command.pb.h"

namespace keel::server {

absl::Status ErrNotLeader() { return absl::FailedPreconditionError("etcdserver: not leader"); }
absl::Status ErrLeaderChanged() { return absl::UnavailableError("etcdserver: leader changed"); }

namespace {
constexpr int64_t kAwaitRevocation = std::numeric_limits<int64_t>::max();
}  // namespace

KvServer::KvServer(KvServerConfig config, Env& env, Node& node, KvStateMachine& machine)
    : config_(std::move(config)),
      env_(env),
      node_(node),
      machine_(machine),
      log_(env.Log()),
      lessor_(&machine.leases(), config_.lessor),
      watches_(&machine.store(), config_.watch,
               [this](etcdserverpb::ResponseHeader* header) { FillHeader(header); }),
      auto_compactor_(config_.auto_compaction) {
  machine_.SetListener(this);
}

KvServer::~KvServer() {
  // Deferred work is dropped, not run: it may propose (a lease checkpoint), and a server
  // torn down mid-flight (a process death in the simulator) must do nothing more. A
  // graceful stop answers its callers before it destroys the server.
  *alive_ = false;
  machine_.SetListener(nullptr);
  if (tick_timer_ != 0) env_.CancelTimer(tick_timer_);
  if (deferred_timer_ != 0) env_.CancelTimer(deferred_timer_);
}

void KvServer::Start() {
  KEEL_ASSERT(tick_timer_ == 0);
  tick_timer_ = env_.SetTimer(node_.config().tick_interval, [this] { Tick(); });
}

void KvServer::Tick() {
  tick_timer_ = env_.SetTimer(node_.config().tick_interval, [this] { Tick(); });
  if (node_.stopped()) {
    if (lessor_.primary()) lessor_.Demote();
    FailLeaseWaiters(absl::UnavailableError("node stopped"));
    return;
  }
  FollowLeadership();
  if (lessor_.primary()) {
    lessor_.RestIfIdle(env_.Now());
    ProposeCheckpoint();
  }
  ExpireLeaseWaiters();
  FlushWatchEvents();
  watches_.Tick(env_.Now());
  MaybeAutoCompact();
}

void KvServer::FollowLeadership() {
  const raft::Raft& raft = node_.raft();
  // A new leader takes over the leases only once it has applied the first entry of its
  // term: every entry of an earlier term that will ever commit is then applied, lease
  // checkpoints included. Before that, a checkpoint an earlier leader proposed may still
  // commit and move the lease clock past renewals this leader would have made.
  const LogIndex applied = raft.log().applied();
  const bool leads = raft.role() == raft::Role::kLeader &&
                     raft.log().TermAt(applied).value_or(Term(0)) == raft.term();
  if (leads && (!lessor_.primary() || lessor_.term() != raft.term())) {
    FailLeaseWaiters(ErrLeaderChanged());
    lessor_.Promote(raft.term(), env_.Now());
    if (config_.bugs.fresh_ttl_on_promotion) {
      for (const auto& [id, lease] : machine_.leases().leases()) {
        if (!lessor_.Expired(id, env_.Now())) lessor_.Renew(id, env_.Now());
      }
    }
    log_.Info("LessorPromoted").Field("id", raft.id()).Field("term", raft.term())
        .Field("lease_clock_ms", machine_.leases().clock_ms());
  } else if (!leads && lessor_.primary()) {
    lessor_.Demote();
    FailLeaseWaiters(ErrLeaderChanged());
    log_.Info("LessorDemoted").Field("id", raft.id()).Field("term", raft.term());
  }
}

void KvServer::ProposeCheckpoint() {
  std::optional<leasepb::Checkpoint> cp =
      lessor_.TakeCheckpoint(env_.Now(), machine_.applied().value);
  if (!cp) return;
  serverpb::Command c;
  *c.mutable_lease_checkpoint() = *cp;
  node_.Propose(c.SerializeAsString(), [this, alive = alive_, cp = *cp](absl::Status st) {
    // Refused, or its fate unknown: its renewals go again with the next checkpoint (a
    // renewal applied twice is harmless: expiries only grow).
    if (*alive && !st.ok()) lessor_.OnDropped(cp);
  });
}

void KvServer::MaybeAutoCompact() {
  const bool leads = node_.raft().role() == raft::Role::kLeader;
  std::optional<int64_t> target =
      auto_compactor_.Tick(env_.Now(), machine_.store().revision(), leads);
  if (!target) return;
  log_.Info("AutoCompacting").Field("id", node_.raft().id()).Field("revision", *target);
  etcdserverpb::CompactionRequest c;
  c.set_revision(*target);
  Compact(c, [this, alive = alive_](absl::StatusOr<etcdserverpb::CompactionResponse> got) {
    if (!*alive) return;
    const bool done = got.ok() || got.status() == kv::ErrCompacted();
    auto_compactor_.OnResult(env_.Now(), done);
  });
}

void KvServer::FillHeader(etcdserverpb::ResponseHeader* header) const {
  header->set_cluster_id(config_.cluster_id);
  header->set_member_id(node_.raft().id().value);
  header->set_raft_term(node_.raft().term().value);
}

void KvServer::Defer(std::function<void()> fn) {
  deferred_.push_back(std::move(fn));
  if (deferred_timer_ != 0) return;
  deferred_timer_ = env_.SetTimer(Nanos(0), [this] {
    deferred_timer_ = 0;
    RunDeferred();
  });
}

void KvServer::RunDeferred() {
  std::deque<std::function<void()>> run;
  run.swap(deferred_);
  for (auto& fn : run) fn();
}

template <typename Response>
void KvServer::ProposeCommand(std::string command, Reply<Response> reply) {
  node_.ProposeForResult(std::move(command), [this, alive = alive_, reply = std::move(reply)](
                                                 absl::Status st, std::any response) {
    absl::StatusOr<Response> out = absl::InternalError("the state machine gave no response");
    if (!st.ok()) {
      out = std::move(st);
    } else if (Response* r = std::any_cast<Response>(&response); r != nullptr) {
      out = std::move(*r);
    }
    if (!*alive) return reply(std::move(out));  // the server is gone: answer as we can
    if (out.ok()) FillHeader(out->mutable_header());
    Defer([reply, out = std::move(out)]() mutable { reply(std::move(out)); });
  });
}

void KvServer::Range(const etcdserverpb::RangeRequest& r,
                     Reply<etcdserverpb::RangeResponse> reply) {
  if (absl::Status st = kv::ValidateRange(r); !st.ok()) return reply(st);
  auto serve = [this, r, reply] {
    etcdserverpb::RangeResponse resp;
    if (absl::Status st = machine_.applier().Range(r, &resp); !st.ok()) return reply(st);
    FillHeader(resp.mutable_header());
    reply(std::move(resp));
  };
  if (r.serializable()) return serve();
  if (config_.bugs.follower_reads_locally && node_.raft().role() != raft::Role::kLeader) {
    return serve();  // planted: no ReadIndex round, the follower's possibly stale state
  }
  node_.Read([this, alive = alive_, serve, reply](absl::Status st) {
    if (!*alive) return reply(st.ok() ? absl::UnavailableError("server stopped") : st);
    // Served now (at the confirmed read point), answered from a fresh event.
    if (!st.ok()) return Defer([reply, st] { reply(st); });
    Defer(serve);
  });
}

void KvServer::Put(const etcdserverpb::PutRequest& r, Reply<etcdserverpb::PutResponse> reply) {
  if (absl::Status st = kv::ValidatePut(r); !st.ok()) return reply(st);
  serverpb::Command c;
  *c.mutable_put() = r;
  ProposeCommand(c.SerializeAsString(), std::move(reply));
}

void KvServer::DeleteRange(const etcdserverpb::DeleteRangeRequest& r,
                           Reply<etcdserverpb::DeleteRangeResponse> reply) {
  if (absl::Status st = kv::ValidateDeleteRange(r); !st.ok()) return reply(st);
  serverpb::Command c;
  *c.mutable_delete_range() = r;
  ProposeCommand(c.SerializeAsString(), std::move(reply));
}

void KvServer::Txn(const etcdserverpb::TxnRequest& r, Reply<etcdserverpb::TxnResponse> reply) {
  if (absl::Status st = kv::ValidateTxn(r, machine_.applier().limits().txn_ops_max); !st.ok()) {
    return reply(st);
  }
  if (!kv::IsReadOnlyTxn(r)) {
    serverpb::Command c;
    *c.mutable_txn() = r;
    return ProposeCommand(c.SerializeAsString(), std::move(reply));
  }
  // Read-only: a linearizable read, served locally at a confirmed read point.
  node_.Read([this, alive = alive_, r, reply](absl::Status st) {
    if (!*alive) return reply(st.ok() ? absl::UnavailableError("server stopped") : st);
    etcdserverpb::TxnResponse resp;
    if (st.ok()) st = machine_.applier().ReadTxn(r, &resp);
    FillHeader(resp.mutable_header());
    absl::StatusOr<etcdserverpb::TxnResponse> out = std::move(resp);
    if (!st.ok()) out = st;
    Defer([reply, out = std::move(out)]() mutable { reply(std::move(out)); });
  });
}

void KvServer::Compact(const etcdserverpb::CompactionRequest& r,
                       Reply<etcdserverpb::CompactionResponse> reply) {
  serverpb::Command c;
  *c.mutable_compaction() = r;
  ProposeCommand(c.SerializeAsString(), std::move(reply));
}

void KvServer::LeaseGrant(const etcdserverpb::LeaseGrantRequest& r,
                          Reply<etcdserverpb::LeaseGrantResponse> reply) {
  if (r.ttl() > lease::LeaseConfig().max_ttl_seconds) return reply(kv::ErrLeaseTTLTooLarge());
  if (r.id() < 0) return reply(absl::InvalidArgumentError("etcdserver: bad lease id"));
  serverpb::Command c;
  *c.mutable_lease_grant() = r;
  // etcd: the server picks an id when the client did not (a positive int64).
  while (c.lease_grant().id() == 0) {
    c.mutable_lease_grant()->set_id(static_cast<int64_t>(env_.Random().Next() >> 1));
  }
  ProposeCommand(c.SerializeAsString(), std::move(reply));
}

void KvServer::LeaseRevoke(const etcdserverpb::LeaseRevokeRequest& r,
                           Reply<etcdserverpb::LeaseRevokeResponse> reply) {
  serverpb::Command c;
  *c.mutable_lease_revoke() = r;
  ProposeCommand(c.SerializeAsString(), std::move(reply));
}

void KvServer::LeaseKeepAlive(int64_t id, Reply<int64_t> reply) {
  FollowLeadership();
  if (!lessor_.primary()) return reply(ErrNotLeader());
  if (machine_.leases().Find(id) != nullptr && !lessor_.Expired(id, env_.Now())) {
    return RenewNow(id, std::move(reply));
  }
  if (config_.bugs.lease_gone_without_confirmation) return reply(kv::ErrLeaseNotFound());
  ConfirmThenKeepAlive(id, std::move(reply));
}

void KvServer::RenewNow(int64_t id, Reply<int64_t> reply) {
  if (waiters_.size() >= config_.lease_waiters_max) {
    return reply(absl::ResourceExhaustedError("etcdserver: too many requests"));
  }
  AddLeaseWaiter(id, lessor_.Renew(id, env_.Now()), std::move(reply));
  ProposeCheckpoint();  // at once, unless enough are in flight (then it batches)
}

void KvServer::ConfirmThenKeepAlive(int64_t id, Reply<int64_t> reply) {
  node_.Read([this, alive = alive_, id, reply](absl::Status st) {
    if (!*alive) return reply(st.ok() ? absl::UnavailableError("server stopped") : st);
    Defer([this, st, id, reply] { FinishKeepAlive(st, id, reply); });
  });
}

void KvServer::FinishKeepAlive(const absl::Status& confirmed, int64_t id, Reply<int64_t> reply) {
  if (!confirmed.ok()) return reply(confirmed);
  FollowLeadership();
  if (!lessor_.primary()) return reply(ErrNotLeader());
  if (machine_.leases().Find(id) == nullptr) return reply(kv::ErrLeaseNotFound());
  if (!lessor_.Expired(id, env_.Now())) return RenewNow(id, reply);
  // Expired on a confirmed leader's clock: gone once its revocation applies.
  if (waiters_.size() >= config_.lease_waiters_max) {
    return reply(absl::ResourceExhaustedError("etcdserver: too many requests"));
  }
  AddLeaseWaiter(id, kAwaitRevocation, reply);
  ProposeCheckpoint();
}

void KvServer::AddLeaseWaiter(int64_t lease, int64_t expiry_ms, Reply<int64_t> reply) {
  const uint64_t id = next_waiter_id_++;
  waiters_.emplace(id, LeaseWaiter{lease, expiry_ms, std::move(reply)});
  waiters_by_lease_.emplace(lease, id);
  waiter_deadlines_.emplace_back(env_.Now() + config_.request_timeout, id);
}

void KvServer::AnswerLeaseWaiters(int64_t lease, const absl::StatusOr<int64_t>& answer,
                                  int64_t expiry_reached_ms) {
  auto [first, last] = waiters_by_lease_.equal_range(lease);
  for (auto it = first; it != last;) {
    auto w = waiters_.find(it->second);
    KEEL_ASSERT(w != waiters_.end());
    if (answer.ok() && w->second.expiry_ms > expiry_reached_ms) {
      ++it;  // a later renewal, still on its way
      continue;
    }
    Defer([reply = std::move(w->second.reply), answer] { reply(answer); });
    waiters_.erase(w);
    it = waiters_by_lease_.erase(it);
  }
}

void KvServer::FailLeaseWaiters(const absl::Status& status) {
  for (auto& [id, w] : waiters_) Defer([reply = std::move(w.reply), status] { reply(status); });
  waiters_.clear();
  waiters_by_lease_.clear();
  waiter_deadlines_.clear();
}

void KvServer::ExpireLeaseWaiters() {
  const Nanos now = env_.Now();
  while (!waiter_deadlines_.empty() && waiter_deadlines_.front().first <= now) {
    const uint64_t id = waiter_deadlines_.front().second;
    waiter_deadlines_.pop_front();
    auto w = waiters_.find(id);
    if (w == waiters_.end()) continue;  // answered already
    auto [first, last] = waiters_by_lease_.equal_range(w->second.lease);
    for (auto it = first; it != last; ++it) {
      if (it->second == id) {
        waiters_by_lease_.erase(it);
        break;
      }
    }
    Defer([reply = std::move(w->second.reply)] {
      reply(absl::DeadlineExceededError("etcdserver: request timed out"));
    });
    waiters_.erase(w);
  }
}

void KvServer::LeaseTimeToLive(const etcdserverpb::LeaseTimeToLiveRequest& r,
                               Reply<etcdserverpb::LeaseTimeToLiveResponse> reply) {
  FollowLeadership();
  if (!lessor_.primary()) return reply(ErrNotLeader());
  node_.Read([this, alive = alive_, r, reply](absl::Status st) {
    if (!*alive) return reply(st.ok() ? absl::UnavailableError("server stopped") : st);
    Defer([this, st, r, reply] { FinishTimeToLive(st, r, reply); });
  });
}

void KvServer::FinishTimeToLive(const absl::Status& confirmed,
                                const etcdserverpb::LeaseTimeToLiveRequest& r,
                                Reply<etcdserverpb::LeaseTimeToLiveResponse> reply) {
  if (!confirmed.ok()) return reply(confirmed);
  FollowLeadership();
  if (!lessor_.primary()) return reply(ErrNotLeader());
  const lease::LeaseTable::Lease* l = machine_.leases().Find(r.id());
  if (l == nullptr) return reply(kv::ErrLeaseNotFound());
  etcdserverpb::LeaseTimeToLiveResponse resp;
  FillHeader(resp.mutable_header());
  resp.mutable_header()->set_revision(machine_.store().revision());
  resp.set_id(r.id());
  const int64_t remaining_ms = lessor_.ExpiryMs(r.id()) - lessor_.ClockMs(env_.Now());
  resp.set_ttl(std::max<int64_t>(0, remaining_ms / 1000));
  resp.set_grantedttl(l->ttl_seconds);
  if (r.keys()) {
    for (const std::string& key : l->keys) resp.add_keys(key);
  }
  reply(std::move(resp));
}

std::vector<int64_t> KvServer::Leases() const {
  // Soonest to expire first, as etcd's leader lists them: by the expiry the leader's
  // renewals have set, and elsewhere by the replicated table's (then ids break ties).
  std::vector<std::pair<int64_t, int64_t>> by_expiry;
  by_expiry.reserve(machine_.leases().size());
  for (const auto& [id, l] : machine_.leases().leases()) {
    by_expiry.emplace_back(lessor_.primary() ? lessor_.ExpiryMs(id) : l.expiry_ms, id);
  }
  std::sort(by_expiry.begin(), by_expiry.end());
  std::vector<int64_t> out;
  out.reserve(by_expiry.size());
  for (const auto& [expiry, id] : by_expiry) out.push_back(id);
  return out;
}

void KvServer::OnEvents(const std::vector<mvccpb::Event>& events) {
  if (watches_.watchers() == 0 && watch_events_.empty()) return watches_.OnEvents(events);
  watch_events_.insert(watch_events_.end(), events.begin(), events.end());
  if (watch_flush_deferred_) return;
  watch_flush_deferred_ = true;
  Defer([this] {
    watch_flush_deferred_ = false;
    FlushWatchEvents();
  });
}

void KvServer::FlushWatchEvents() {
  if (watch_events_.empty()) return;
  std::vector<mvccpb::Event> events;
  events.swap(watch_events_);
  watches_.OnEvents(events);
}

absl::StatusOr<watch::WatchHub::StreamId> KvServer::OpenWatchStream(
    watch::WatchHub::Sink sink, watch::WatchHub::EncodedSink encoded) {
  return watches_.OpenStream(std::move(sink), std::move(encoded));
}

void KvServer::CloseWatchStream(watch::WatchHub::StreamId stream) { watches_.CloseStream(stream); }

void KvServer::WatchCreate(watch::WatchHub::StreamId stream,
                           const etcdserverpb::WatchCreateRequest& r) {
  FlushWatchEvents();
  watches_.Create(stream, r);
}

void KvServer::WatchCancel(watch::WatchHub::StreamId stream, int64_t watch_id) {
  FlushWatchEvents();
  watches_.Cancel(stream, watch_id);
}

void KvServer::WatchProgress(watch::WatchHub::StreamId stream) {
  FlushWatchEvents();
  watches_.RequestProgress(stream);
}

void KvServer::OnLeaseCheckpoint(const leasepb::Checkpoint& checkpoint,
                                 const std::vector<int64_t>& revoked) {
  lessor_.OnApplied(checkpoint);
  leases_expired_ += revoked.size();
  for (const leasepb::Renewal& r : checkpoint.renewals()) {
    const lease::LeaseTable::Lease* l = machine_.leases().Find(r.id());
    if (l != nullptr) AnswerLeaseWaiters(r.id(), l->ttl_seconds, l->expiry_ms);
  }
  for (int64_t id : revoked) AnswerLeaseWaiters(id, kv::ErrLeaseNotFound(), 0);
}

void KvServer::OnLeaseGranted(int64_t id) {
  // A grant starts its TTL on the leader's clock, as a keepalive would: the table's
  // clock may lag the leader's by up to a checkpoint interval.
  // Even if the table's (lagging) clock says it expired at birth: its TTL starts now.
  if (!lessor_.primary()) return;
  lessor_.RenewGranted(id, env_.Now());
  Defer([this] {
    if (lessor_.primary()) ProposeCheckpoint();
  });
}

void KvServer::OnLeaseRevoked(int64_t id) { AnswerLeaseWaiters(id, kv::ErrLeaseNotFound(), 0); }

void KvServer::OnRestored() {
  FlushWatchEvents();  // they were applied before the state was replaced
  watches_.OnRestored();  // the history they stood on was replaced: catch up anew
  // The lease table was replaced under the lessor: renewals it had on the way are moot.
  FailLeaseWaiters(ErrLeaderChanged());
  if (lessor_.primary()) lessor_.Demote();
}

}  // namespace keel::server
