#include "core/raft/raft.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/assert.h"

namespace keel::raft {

std::string_view RoleName(Role r) {
  switch (r) {
    case Role::kFollower: return "follower";
    case Role::kPreCandidate: return "pre-candidate";
    case Role::kCandidate: return "candidate";
    case Role::kLeader: return "leader";
  }
  return "?";
}

Raft::Raft(Config config, RecoveredState recovered, Rng* rng, Logger logger)
    : config_(std::move(config)),
      rng_(rng),
      logger_(logger),
      log_(std::move(recovered.snapshot), std::move(recovered.entries),
           recovered.hard_state.commit) {
  KEEL_ASSERT(rng_ != nullptr);
  KEEL_ASSERT(!config_.id.IsZero());
  KEEL_ASSERT(IsVoter(config_.id));
  KEEL_ASSERT(config_.heartbeat_ticks > 0 && config_.election_ticks > config_.heartbeat_ticks);
  KEEL_ASSERT(config_.message_bytes_max > 0 && config_.inflight_messages_max > 0 &&
              config_.inflight_bytes_max > 0 && config_.pending_reads_max > 0);
  std::sort(config_.voters.begin(), config_.voters.end());
  KEEL_ASSERT(std::adjacent_find(config_.voters.begin(), config_.voters.end()) ==
              config_.voters.end());
  term_ = recovered.hard_state.term;
  vote_ = recovered.hard_state.vote;
  persisted_hard_state_ = CurrentHardState();
  BecomeFollower(term_, kNoNode);
  logger_.Info("RaftStarted").Field("id", config_.id).Field("term", term_)
      .Field("last", log_.LastIndex()).Field("commit", log_.committed());
}

bool Raft::IsVoter(NodeId id) const {
  return std::find(config_.voters.begin(), config_.voters.end(), id) != config_.voters.end();
}

const Progress* Raft::ProgressOf(NodeId peer) const {
  auto it = progress_.find(peer);
  return it == progress_.end() ? nullptr : &it->second;
}

// ---- role changes ---------------------------------------------------------------

void Raft::ResetElectionTimeout() {
  // Randomized in [election, 2 * election) ticks, as etcd-raft (Raft §5.2).
  randomized_election_ticks_ =
      config_.election_ticks + static_cast<int>(rng_->Uniform(config_.election_ticks));
}

void Raft::Reset(Term term) {
  if (term_ != term) {
    term_ = term;
    vote_ = kNoNode;
  }
  lead_ = kNoNode;
  election_elapsed_ = 0;
  heartbeat_elapsed_ = 0;
  ResetElectionTimeout();
  lead_transferee_ = kNoNode;
  votes_.clear();
  progress_.clear();
  pending_reads_.clear();
  reads_before_commit_.clear();
  uncommitted_bytes_ = 0;
}

void Raft::BecomeFollower(Term term, NodeId leader) {
  Reset(term);
  role_ = Role::kFollower;
  lead_ = leader;
}

void Raft::BecomePreCandidate() {
  KEEL_ASSERT(role_ != Role::kLeader);
  // A pre-candidate changes neither term nor vote (thesis §9.6): a failed pre-election
  // leaves no trace that could disrupt the cluster.
  votes_.clear();
  lead_ = kNoNode;
  role_ = Role::kPreCandidate;
  logger_.Debug("BecamePreCandidate").Field("id", config_.id).Field("term", term_);
}

void Raft::BecomeCandidate() {
  KEEL_ASSERT(role_ != Role::kLeader);
  Reset(NextTerm(term_));
  vote_ = config_.id;
  role_ = Role::kCandidate;
  logger_.Debug("BecameCandidate").Field("id", config_.id).Field("term", term_);
}

void Raft::BecomeLeader() {
  KEEL_ASSERT(role_ == Role::kCandidate);
  Reset(term_);
  role_ = Role::kLeader;
  lead_ = config_.id;
  for (NodeId id : config_.voters) {
    Progress pr(log_.LastIndex() + 1, config_.inflight_messages_max,
                config_.inflight_bytes_max);
    pr.recent_active = true;
    if (id == config_.id) {
      pr.match = log_.stable();
      pr.BecomeReplicate();
      pr.next = log_.LastIndex() + 1;
    }
    progress_.emplace(id, std::move(pr));
  }
  // Raft §5.4.2 / §8: a no-op of the new term lets the leader commit earlier entries
  // and learn the commit index for read-only requests.
  std::vector<Entry> noop;
  noop.push_back({term_, log_.LastIndex() + 1, EntryType::kNormal, ""});
  log_.Append(std::move(noop));
  logger_.Info("BecameLeader").Field("id", config_.id).Field("term", term_)
      .Field("last", log_.LastIndex()).Field("commit", log_.committed());
  BroadcastAppend();
}

// ---- elections ------------------------------------------------------------------

void Raft::Campaign() {
  if (role_ == Role::kLeader) return;
  CampaignAs(config_.pre_vote ? CampaignType::kPreElection : CampaignType::kElection);
}

void Raft::CampaignAs(CampaignType type) {
  Term vote_term;
  MessageType request;
  if (type == CampaignType::kPreElection) {
    BecomePreCandidate();
    vote_term = NextTerm(term_);
    request = MessageType::kPreVote;
  } else {
    BecomeCandidate();
    vote_term = term_;
    request = MessageType::kVote;
  }
  RecordVote(config_.id, true);
  if (role_ == Role::kLeader || (type == CampaignType::kPreElection &&
                                 role_ == Role::kCandidate)) {
    return;  // a single-node cluster won on its own vote
  }
  for (NodeId peer : config_.voters) {
    if (peer == config_.id) continue;
    Message m;
    m.type = request;
    m.to = peer;
    m.term = vote_term;
    m.index = log_.LastIndex();
    m.log_term = log_.LastTerm();
    if (type == CampaignType::kTransfer) m.context = std::string(kCampaignTransfer);
    Send(std::move(m));
  }
}

void Raft::RecordVote(NodeId from, bool granted) {
  votes_.emplace(from, granted);  // the first answer from a node counts
  size_t yes = 0;
  size_t no = 0;
  for (const auto& [id, g] : votes_) (g ? yes : no)++;
  if (yes >= Quorum()) {
    if (role_ == Role::kPreCandidate) {
      CampaignAs(CampaignType::kElection);
    } else if (role_ == Role::kCandidate) {
      BecomeLeader();
    }
  } else if (no >= Quorum()) {
    // Lost: back to follower at our own term (a pre-candidate never raised it).
    BecomeFollower(term_, kNoNode);
  }
}

// ---- Step -----------------------------------------------------------------------

absl::Status Raft::Step(Message m) {
  KEEL_ASSERT(!ready_outstanding_);
  if (m.to != config_.id) {
    return absl::InvalidArgumentError(absl::StrCat("message for node ", m.to.value,
                                                   " delivered to node ", config_.id.value));
  }
  if (m.from == config_.id || !IsVoter(m.from)) {
    return absl::InvalidArgumentError(
        absl::StrCat("message from node ", m.from.value, " which is not a peer"));
  }
  if (m.snapshot.has_value() != (m.type == MessageType::kSnapshot)) {
    return absl::InvalidArgumentError("snapshot payload on a message that is not a snapshot");
  }
  if (m.type == MessageType::kSnapshotChunk || m.type == MessageType::kSnapshotChunkAck) {
    return absl::InvalidArgumentError("snapshot chunks are the node's, not Raft's");
  }
  if (!HandleTerm(m)) return absl::OkStatus();

  if (m.type == MessageType::kVote || m.type == MessageType::kPreVote) {
    HandleVoteRequest(m);
    return absl::OkStatus();
  }
  switch (role_) {
    case Role::kLeader: StepLeader(std::move(m)); break;
    case Role::kCandidate:
    case Role::kPreCandidate: StepCandidate(std::move(m)); break;
    case Role::kFollower: StepFollower(std::move(m)); break;
  }
  return absl::OkStatus();
}

bool Raft::HandleTerm(const Message& m) {
  const bool local_kind = m.type == MessageType::kPropose ||
                          m.type == MessageType::kReadIndex ||
                          m.type == MessageType::kTransferLeader;
  if (local_kind || m.term == term_) return true;

  if (m.term > term_) {
    if (m.type == MessageType::kVote || m.type == MessageType::kPreVote) {
      const bool forced = m.context == kCampaignTransfer;
      const bool in_lease = config_.check_quorum && !lead_.IsZero() &&
                            election_elapsed_ < config_.election_ticks;
      if (!forced && in_lease) {
        // Thesis §4.2.3: we heard from a leader within the minimum election timeout;
        // a disruptive server must not depose it.
        logger_.Debug("IgnoredVoteInLease").Field("id", config_.id).Field("from", m.from)
            .Field("term", m.term);
        return false;
      }
    }
    if (m.type == MessageType::kPreVote) return true;  // never changes our term
    if (m.type == MessageType::kPreVoteResponse && !m.reject) return true;
    const bool from_leader = m.type == MessageType::kAppend ||
                             m.type == MessageType::kHeartbeat ||
                             m.type == MessageType::kSnapshot;
    logger_.Debug("SawHigherTerm").Field("id", config_.id).Field("term", m.term)
        .Field("from", m.from);
    // Raft Figure 2: a follower's timer restarts on hearing from the leader or on
    // granting a vote, not on a mere term change. A candidate whose log is behind must
    // not keep resetting the timers of the nodes that could win (without PreVote it
    // would livelock the cluster; etcd-raft resets here).
    const int elapsed = election_elapsed_;
    BecomeFollower(m.term, from_leader ? m.from : kNoNode);
    if (m.type == MessageType::kVote) election_elapsed_ = elapsed;
    return true;
  }

  // m.term < term_.
  if ((config_.check_quorum || config_.pre_vote) &&
      (m.type == MessageType::kAppend || m.type == MessageType::kHeartbeat)) {
    // A stale leader: tell it our term so it steps down. Without this, a node whose
    // pre-votes keep failing could never raise the stale leader's term (etcd-raft).
    Message resp;
    resp.type = MessageType::kAppendResponse;
    resp.to = m.from;
    Send(std::move(resp));
  } else if (m.type == MessageType::kPreVote) {
    Message resp;
    resp.type = MessageType::kPreVoteResponse;
    resp.to = m.from;
    resp.reject = true;
    Send(std::move(resp));
  }
  return false;
}

void Raft::HandleVoteRequest(const Message& m) {
  const bool pre = m.type == MessageType::kPreVote;
  // Raft §5.2: one vote per term. A pre-vote for a later term promises nothing.
  const bool can_vote = vote_ == m.from || (vote_.IsZero() && lead_.IsZero()) ||
                        (pre && m.term > term_);
  const bool up_to_date = config_.bugs.grant_vote_without_log_check ||
                          log_.IsUpToDate(m.index, m.log_term);  // Raft §5.4.1
  Message resp;
  resp.type = pre ? MessageType::kPreVoteResponse : MessageType::kVoteResponse;
  resp.to = m.from;
  if (can_vote && up_to_date) {
    resp.term = m.term;  // Send() keeps an explicit term on vote responses
    if (!pre) {
      election_elapsed_ = 0;
      vote_ = m.from;
    }
  } else {
    resp.reject = true;
  }
  logger_.Debug(resp.reject ? "RejectedVote" : "GrantedVote").Field("id", config_.id)
      .Field("candidate", m.from).Field("term", m.term).Field("pre", pre ? 1 : 0);
  Send(std::move(resp));
}

void Raft::StepCandidate(Message&& m) {
  switch (m.type) {
    case MessageType::kAppend:
      BecomeFollower(m.term, m.from);
      HandleAppend(std::move(m));
      break;
    case MessageType::kHeartbeat:
      BecomeFollower(m.term, m.from);
      HandleHeartbeat(m);
      break;
    case MessageType::kSnapshot:
      BecomeFollower(m.term, m.from);
      HandleSnapshot(std::move(m));
      break;
    case MessageType::kPreVoteResponse:
      if (role_ == Role::kPreCandidate) RecordVote(m.from, !m.reject);
      break;
    case MessageType::kVoteResponse:
      if (role_ == Role::kCandidate) RecordVote(m.from, !m.reject);
      break;
    default:
      break;  // proposals and reads find no leader here; callers time out
  }
}

void Raft::StepFollower(Message&& m) {
  switch (m.type) {
    case MessageType::kAppend:
      election_elapsed_ = 0;
      lead_ = m.from;
      HandleAppend(std::move(m));
      break;
    case MessageType::kHeartbeat:
      election_elapsed_ = 0;
      lead_ = m.from;
      HandleHeartbeat(m);
      break;
    case MessageType::kSnapshot:
      election_elapsed_ = 0;
      lead_ = m.from;
      HandleSnapshot(std::move(m));
      break;
    case MessageType::kTimeoutNow:
      if (m.from != lead_) break;  // only our leader may hand us leadership
      logger_.Info("TimeoutNow").Field("id", config_.id).Field("term", term_)
          .Field("from", m.from);
      // Thesis §3.10: the leader chose us; campaign at once, skipping the pre-vote.
      CampaignAs(CampaignType::kTransfer);
      break;
    case MessageType::kReadIndexResponse:
      // Only the leader of our term confirms read points; anything else is stale.
      if (m.from == lead_) read_states_.push_back({m.index, std::move(m.context)});
      break;
    default:
      break;  // proposals from peers are not re-forwarded: no forwarding loops
  }
}

// ---- follower handlers ----------------------------------------------------------

void Raft::HandleAppend(Message&& m) {
  Message resp;
  resp.type = MessageType::kAppendResponse;
  resp.to = m.from;
  if (m.index < log_.committed()) {
    resp.index = log_.committed();  // everything up to commit matches by definition
    Send(std::move(resp));
    return;
  }
  const LogIndex prev_index = m.index;
  const Term prev_term = m.log_term;
  const LogIndex leader_commit = m.commit;
  bool conflict_below_commit = false;
  std::optional<LogIndex> last_new =
      log_.MaybeAppend(prev_index, prev_term, std::move(m.entries), &conflict_below_commit);
  if (conflict_below_commit) {
    logger_.Error("AppendConflictsWithCommitted").Field("id", config_.id)
        .Field("from", m.from).Field("term", m.term).Field("commit", log_.committed());
    return;
  }
  if (last_new.has_value()) {
    log_.CommitTo(std::min(leader_commit, *last_new));
    resp.index = *last_new;
    Send(std::move(resp));
    return;
  }
  // Fast backtracking (etcd-raft): point the leader at the last entry that could match,
  // skipping every entry of a term the leader's log does not have at that position.
  auto [hint_index, hint_term] =
      log_.FindConflictByTerm(std::min(prev_index, log_.LastIndex()), prev_term);
  resp.index = prev_index;
  resp.reject = true;
  resp.reject_hint = hint_index;
  resp.log_term = hint_term;
  Send(std::move(resp));
}

void Raft::HandleHeartbeat(const Message& m) {
  // The leader sends min(match, commit), so this prefix of our log matches its log.
  log_.CommitTo(std::min(m.commit, log_.LastIndex()));
  Message resp;
  resp.type = MessageType::kHeartbeatResponse;
  resp.to = m.from;
  resp.context = m.context;
  Send(std::move(resp));
}

void Raft::HandleSnapshot(Message&& m) {
  KEEL_ASSERT(m.snapshot.has_value());
  Snapshot& s = *m.snapshot;
  Message resp;
  resp.type = MessageType::kAppendResponse;
  resp.to = m.from;
  if (s.index <= log_.committed()) {
    resp.index = log_.committed();
  } else if (log_.MatchTerm(s.index, s.term)) {
    // We already hold the snapshot's last entry: fast-forward the commit instead.
    log_.CommitTo(s.index);
    resp.index = log_.committed();
  } else {
    logger_.Info("RestoringSnapshot").Field("id", config_.id).Field("index", s.index)
        .Field("term", s.term);
    log_.Restore(std::move(s));
    snapshot_pending_install_ = true;
    resp.index = log_.LastIndex();
  }
  Send(std::move(resp));
}

// ---- leader ---------------------------------------------------------------------

void Raft::StepLeader(Message&& m) {
  switch (m.type) {
    case MessageType::kAppendResponse: HandleAppendResponse(m); break;
    case MessageType::kHeartbeatResponse: HandleHeartbeatResponse(m); break;
    case MessageType::kPropose: {
      std::vector<std::string> data;
      for (Entry& e : m.entries) data.push_back(std::move(e.data));
      absl::Status st = AppendProposal(std::move(data));
      if (!st.ok()) {
        logger_.Debug("DroppedForwardedProposal").Field("id", config_.id)
            .Field("from", m.from).Field("reason", st.message());
      }
      break;
    }
    case MessageType::kReadIndex: HandleReadIndexRequest(std::move(m.context), m.from); break;
    case MessageType::kTransferLeader: (void)TransferLeadership(m.from); break;
    default: break;
  }
}

void Raft::HandleAppendResponse(const Message& m) {
  auto it = progress_.find(m.from);
  KEEL_ASSERT(it != progress_.end());
  Progress& pr = it->second;
  pr.recent_active = true;
  if (m.reject) {
    LogIndex next_probe = m.reject_hint;
    if (m.log_term.value > 0) {
      next_probe = log_.FindConflictByTerm(m.reject_hint, m.log_term).first;
    }
    if (pr.state != ProgressState::kReplicate && m.index + 1 == pr.next && m.index <= pr.match) {
      // The follower rejects the probe at an entry it acknowledged. Either the rejection
      // is an old one, overtaken by the ack (the network reorders), or the follower's
      // disk lost acknowledged writes (an fsync that lied, a restored backup); the two
      // look the same. Probe from scratch: cheap if the rejection was stale, and the
      // only way forward if the entries are gone, where probing at `match` forever
      // would livelock.
      logger_.Warn("FollowerRejectedAtMatch").Field("id", config_.id)
          .Field("follower", m.from).Field("rejected", m.index).Field("match", pr.match);
      pr.match = LogIndex(0);
    }
    if (pr.MaybeDecreaseTo(m.index, next_probe)) {
      if (pr.state == ProgressState::kReplicate) pr.BecomeProbe();
      SendAppend(m.from, true);
    }
    return;
  }
  if (m.index > log_.LastIndex()) {
    logger_.Warn("AppendResponseBeyondLog").Field("id", config_.id).Field("from", m.from)
        .Field("index", m.index).Field("last", log_.LastIndex());
    return;
  }
  const bool was_paused = pr.IsPaused();
  // An ack of exactly `match` while probing (the probe after a snapshot, say) still
  // proves where the follower's log matches: start replicating from there.
  const bool probe_confirmed = pr.state == ProgressState::kProbe && m.index == pr.match;
  if (!pr.MaybeUpdate(m.index) && !probe_confirmed) return;
  switch (pr.state) {
    case ProgressState::kProbe: pr.BecomeReplicate(); break;
    case ProgressState::kSnapshot:
      if (pr.match >= pr.pending_snapshot) pr.BecomeProbe();
      break;
    case ProgressState::kReplicate: pr.inflights.FreeTo(m.index); break;
  }
  if (MaybeCommit()) {
    BroadcastAppend();
  } else if (was_paused) {
    SendAppend(m.from, true);
  }
  while (SendAppend(m.from, false)) {
  }
  if (m.from == lead_transferee_ && pr.match == log_.LastIndex()) {
    SendTimeoutNow(m.from);
  }
}

void Raft::HandleHeartbeatResponse(const Message& m) {
  auto it = progress_.find(m.from);
  KEEL_ASSERT(it != progress_.end());
  Progress& pr = it->second;
  pr.recent_active = true;
  pr.probe_sent = false;  // a lost probe is retried once per heartbeat round
  // Lost appends fill the in-flight window and would stall a follower forever: free
  // one slot per heartbeat so an append goes out; the follower's rejection of it (a gap)
  // sends the leader back to probing from the follower's real match (as etcd-raft).
  if (pr.state == ProgressState::kReplicate && pr.inflights.Full()) pr.inflights.FreeFirst();
  if (pr.match < log_.LastIndex()) SendAppend(m.from, true);
  if (m.context.empty() || pending_reads_.empty()) return;

  auto read = std::find_if(pending_reads_.begin(), pending_reads_.end(),
                           [&](const PendingRead& r) { return r.context == m.context; });
  if (read == pending_reads_.end()) return;
  read->acks.insert(m.from);
  if (read->acks.size() < Quorum()) return;
  // A quorum confirmed leadership at the time of this read, and so of every read
  // queued before it: answer them all, in order.
  const auto end = read + 1;
  for (auto r = pending_reads_.begin(); r != end; ++r) AnswerRead(*r);
  pending_reads_.erase(pending_reads_.begin(), end);
}

absl::Status Raft::Propose(std::vector<std::string> data) {
  KEEL_ASSERT(!ready_outstanding_);
  if (role_ == Role::kLeader) return AppendProposal(std::move(data));
  if (lead_.IsZero()) {
    return absl::UnavailableError(absl::StrCat("no leader; term=", term_.value));
  }
  Message m;
  m.type = MessageType::kPropose;
  m.to = lead_;
  for (std::string& d : data) m.entries.push_back({Term(0), LogIndex(0), EntryType::kNormal,
                                                   std::move(d)});
  Send(std::move(m));
  return absl::OkStatus();
}

absl::Status Raft::AppendProposal(std::vector<std::string>&& data) {
  KEEL_ASSERT(role_ == Role::kLeader);
  if (!lead_transferee_.IsZero()) {
    return absl::UnavailableError(absl::StrCat("leadership transfer to ",
                                               lead_transferee_.value, " in progress"));
  }
  size_t bytes = 0;
  for (const std::string& d : data) bytes += d.size();
  if (uncommitted_bytes_ > 0 && uncommitted_bytes_ + bytes > config_.uncommitted_bytes_max) {
    return absl::ResourceExhaustedError("too many uncommitted bytes at the leader");
  }
  uncommitted_bytes_ += bytes;
  std::vector<Entry> entries;
  LogIndex next = log_.LastIndex() + 1;
  for (std::string& d : data) {
    entries.push_back({term_, next, EntryType::kNormal, std::move(d)});
    ++next;
  }
  log_.Append(std::move(entries));
  BroadcastAppend();
  return absl::OkStatus();
}

absl::Status Raft::ReadIndex(std::string context) {
  KEEL_ASSERT(!ready_outstanding_);
  if (role_ == Role::kLeader) {
    if (pending_reads_.size() + reads_before_commit_.size() >= config_.pending_reads_max) {
      return absl::ResourceExhaustedError("too many pending reads");
    }
    HandleReadIndexRequest(std::move(context), config_.id);
    return absl::OkStatus();
  }
  if (lead_.IsZero()) {
    return absl::UnavailableError(absl::StrCat("no leader; term=", term_.value));
  }
  Message m;
  m.type = MessageType::kReadIndex;
  m.to = lead_;
  m.context = std::move(context);
  Send(std::move(m));
  return absl::OkStatus();
}

void Raft::HandleReadIndexRequest(std::string context, NodeId requester) {
  KEEL_ASSERT(role_ == Role::kLeader);
  if (pending_reads_.size() + reads_before_commit_.size() >= config_.pending_reads_max) {
    return;  // the requester times out; a limit reached is never silent growth
  }
  PendingRead read{std::move(context), log_.committed(), requester, {config_.id}};
  if (!CommittedEntryInCurrentTerm()) {
    // Thesis §6.4: until its no-op commits, a new leader does not know the commit index.
    reads_before_commit_.push_back(std::move(read));
    return;
  }
  if (Quorum() == 1 || config_.bugs.read_index_without_heartbeat) {
    AnswerRead(read);
    return;
  }
  const std::string ctx = read.context;
  pending_reads_.push_back(std::move(read));
  BroadcastHeartbeat(ctx);
}

void Raft::AnswerRead(const PendingRead& read) {
  if (read.requester == config_.id) {
    read_states_.push_back({read.index, read.context});
    return;
  }
  Message m;
  m.type = MessageType::kReadIndexResponse;
  m.to = read.requester;
  m.index = read.index;
  m.context = read.context;
  Send(std::move(m));
}

void Raft::ReleaseReadsWaitingForCommit() {
  if (reads_before_commit_.empty() || !CommittedEntryInCurrentTerm()) return;
  std::deque<PendingRead> waiting;
  waiting.swap(reads_before_commit_);
  for (PendingRead& r : waiting) HandleReadIndexRequest(std::move(r.context), r.requester);
}

bool Raft::CommittedEntryInCurrentTerm() const {
  return log_.TermAt(log_.committed()) == term_;
}

absl::Status Raft::TransferLeadership(NodeId to) {
  if (role_ != Role::kLeader) {
    if (lead_.IsZero()) return absl::UnavailableError("no leader");
    if (to != config_.id) {
      return absl::FailedPreconditionError("a follower can only ask for leadership itself");
    }
    Message m;
    m.type = MessageType::kTransferLeader;
    m.to = lead_;
    Send(std::move(m));
    return absl::OkStatus();
  }
  if (to == config_.id) return absl::OkStatus();
  if (!IsVoter(to)) return absl::InvalidArgumentError(absl::StrCat("no member ", to.value));
  if (lead_transferee_ == to) return absl::OkStatus();
  logger_.Info("TransferringLeadership").Field("id", config_.id).Field("to", to)
      .Field("term", term_);
  lead_transferee_ = to;
  election_elapsed_ = 0;  // the transfer must finish within one election timeout
  if (progress_.at(to).match == log_.LastIndex()) {
    SendTimeoutNow(to);
  } else {
    SendAppend(to, true);
  }
  return absl::OkStatus();
}

void Raft::SendTimeoutNow(NodeId to) {
  Message m;
  m.type = MessageType::kTimeoutNow;
  m.to = to;
  Send(std::move(m));
}

bool Raft::MaybeCommit() {
  KEEL_ASSERT(role_ == Role::kLeader);
  std::vector<LogIndex> matches;
  matches.reserve(progress_.size());
  for (const auto& [id, pr] : progress_) matches.push_back(pr.match);
  std::sort(matches.begin(), matches.end(), std::greater<>());
  const LogIndex quorum_index = matches[Quorum() - 1];
  if (quorum_index <= log_.committed()) return false;
  // Raft §5.4.2: never commit an entry from a previous term by counting replicas; it is
  // committed indirectly once an entry of the current term is.
  if (log_.TermAt(quorum_index) != term_ && !config_.bugs.commit_previous_term_entries) {
    return false;
  }
  if (config_.bugs.commit_previous_term_entries && log_.TermAt(quorum_index) != term_) {
    logger_.Info("PlantedBugCommittedPreviousTerm").Field("id", config_.id)
        .Field("index", quorum_index).Field("term", term_);
  }
  log_.CommitTo(quorum_index);
  ReleaseReadsWaitingForCommit();
  return true;
}

// ---- sending --------------------------------------------------------------------

bool Raft::SendAppend(NodeId to, bool send_if_empty) {
  Progress& pr = progress_.at(to);
  if (pr.IsPaused()) return false;
  const LogIndex prev = pr.next - 1;
  const std::optional<Term> prev_term = log_.TermAt(prev);
  if (!prev_term.has_value() || pr.next < log_.FirstIndex()) return SendSnapshot(to, pr);

  Message m;
  m.type = MessageType::kAppend;
  m.to = to;
  m.index = prev;
  m.log_term = *prev_term;
  m.commit = log_.committed();
  if (pr.next <= log_.LastIndex()) {
    m.entries = log_.Slice(pr.next, log_.LastIndex() + 1, config_.message_bytes_max);
  }
  if (m.entries.empty() && !send_if_empty) return false;
  if (!m.entries.empty()) {
    size_t bytes = 0;
    for (const Entry& e : m.entries) bytes += e.ByteSize();
    pr.SentEntries(m.entries.back().index, bytes);
  } else if (pr.state == ProgressState::kProbe) {
    pr.probe_sent = true;
  }
  Send(std::move(m));
  return true;
}

bool Raft::SendSnapshot(NodeId to, Progress& pr) {
  if (!pr.recent_active) return false;  // don't ship a snapshot into the void
  const std::optional<Snapshot>& snap = log_.snapshot();
  KEEL_ASSERT(snap.has_value());  // entries are only compacted below a snapshot
  Message m;
  m.type = MessageType::kSnapshot;
  m.to = to;
  m.snapshot = *snap;
  pr.BecomeSnapshot(snap->index);
  logger_.Info("SendingSnapshot").Field("id", config_.id).Field("to", to)
      .Field("index", snap->index).Field("bytes", snap->data.size());
  Send(std::move(m));
  return true;
}

void Raft::BroadcastAppend() {
  for (NodeId id : config_.voters) {
    if (id != config_.id) SendAppend(id, true);
  }
}

void Raft::BroadcastHeartbeat(const std::string& context) {
  for (NodeId id : config_.voters) {
    if (id == config_.id) continue;
    Message m;
    m.type = MessageType::kHeartbeat;
    m.to = id;
    // Never tell a follower to commit past what it is known to hold.
    m.commit = std::min(progress_.at(id).match, log_.committed());
    m.context = context;
    Send(std::move(m));
  }
}

void Raft::Send(Message m) {
  m.from = config_.id;
  const bool local_kind = m.type == MessageType::kPropose ||
                          m.type == MessageType::kReadIndex ||
                          m.type == MessageType::kTransferLeader;
  const bool vote_response = m.type == MessageType::kVoteResponse ||
                             m.type == MessageType::kPreVoteResponse;
  const bool vote_request = m.type == MessageType::kVote || m.type == MessageType::kPreVote;
  if (local_kind) {
    m.term = Term(0);  // forwarded like a local request, valid in any term
  } else if (!(vote_request || (vote_response && !m.term.IsZero()))) {
    m.term = term_;
  }
  // Persist before you speak: everything a follower or candidate says may depend on
  // its term, vote or log, so it waits for the fsync. A leader's appends may go out
  // first (thesis §10.2.1); it counts itself only once its own write is durable.
  bool early = role_ == Role::kLeader &&
               (m.type == MessageType::kAppend || m.type == MessageType::kHeartbeat ||
                m.type == MessageType::kSnapshot || m.type == MessageType::kTimeoutNow);
  if (config_.bugs.send_vote_before_persist && vote_response) early = true;
  (early ? messages_ : messages_after_persist_).push_back(std::move(m));
}

// ---- ticks ----------------------------------------------------------------------

void Raft::Tick() {
  KEEL_ASSERT(!ready_outstanding_);
  if (role_ == Role::kLeader) {
    TickHeartbeat();
  } else {
    TickElection();
  }
}

void Raft::TickElection() {
  ++election_elapsed_;
  if (election_elapsed_ >= randomized_election_ticks_) {
    election_elapsed_ = 0;
    logger_.Debug("ElectionTimeout").Field("id", config_.id).Field("term", term_);
    Campaign();
  }
}

void Raft::TickHeartbeat() {
  ++heartbeat_elapsed_;
  ++election_elapsed_;
  for (auto& [id, pr] : progress_) {
    if (pr.state != ProgressState::kSnapshot) continue;
    // A snapshot message can be lost; after two election timeouts without an answer,
    // probe again (which resends the snapshot if it is still needed).
    if (++pr.snapshot_elapsed_ticks >= 2 * config_.election_ticks) pr.BecomeProbe();
  }
  if (election_elapsed_ >= config_.election_ticks) {
    election_elapsed_ = 0;
    if (config_.check_quorum) {
      size_t active = 0;
      for (auto& [id, pr] : progress_) {
        if (id == config_.id || pr.recent_active) ++active;
        if (id != config_.id) pr.recent_active = false;
      }
      if (active < Quorum()) {
        // CheckQuorum: a leader cut off from a quorum steps down, so clients fail
        // over and it stops answering reads it can no longer confirm.
        logger_.Info("SteppedDownNoQuorum").Field("id", config_.id).Field("term", term_);
        BecomeFollower(term_, kNoNode);
        return;
      }
    }
    if (!lead_transferee_.IsZero()) {
      logger_.Info("TransferAborted").Field("id", config_.id).Field("to", lead_transferee_);
      lead_transferee_ = kNoNode;
    }
  }
  if (heartbeat_elapsed_ >= config_.heartbeat_ticks) {
    heartbeat_elapsed_ = 0;
    // Carry the newest pending read's context: if its own round was lost, this round
    // confirms it and every read queued before it (etcd's lastPendingRequestCtx).
    BroadcastHeartbeat(pending_reads_.empty() ? std::string() : pending_reads_.back().context);
  }
}

// ---- Ready / Advance ------------------------------------------------------------

bool Raft::HasReady() const {
  return snapshot_pending_install_ || log_.stable() < log_.LastIndex() ||
         CurrentHardState() != persisted_hard_state_ || !messages_.empty() ||
         !messages_after_persist_.empty() || !read_states_.empty() ||
         log_.HasNextCommitted();
}

Ready Raft::GetReady() {
  KEEL_ASSERT(!ready_outstanding_);
  ready_outstanding_ = true;
  Ready rd;
  if (snapshot_pending_install_) rd.snapshot = log_.snapshot();
  rd.entries = log_.UnstableEntries();
  if (CurrentHardState() != persisted_hard_state_) rd.hard_state = CurrentHardState();
  rd.messages.swap(messages_);
  rd.messages_after_persist.swap(messages_after_persist_);
  rd.read_states.swap(read_states_);
  if (!snapshot_pending_install_) rd.committed_entries = log_.NextCommitted(config_.apply_bytes_max);
  rd.must_sync = rd.snapshot || !rd.entries.empty() ||
                 (rd.hard_state && (rd.hard_state->term != persisted_hard_state_.term ||
                                    rd.hard_state->vote != persisted_hard_state_.vote));
  return rd;
}

void Raft::Advance(const Ready& rd) {
  KEEL_ASSERT(ready_outstanding_);
  ready_outstanding_ = false;
  if (rd.snapshot) {
    snapshot_pending_install_ = false;
    log_.AppliedTo(rd.snapshot->index);
  }
  if (!rd.entries.empty()) log_.StableTo(rd.entries.back().index);
  if (rd.hard_state) persisted_hard_state_ = *rd.hard_state;
  if (!rd.committed_entries.empty()) {
    log_.AppliedTo(rd.committed_entries.back().index);
    if (role_ == Role::kLeader) {
      size_t bytes = 0;
      for (const Entry& e : rd.committed_entries) bytes += e.data.size();
      uncommitted_bytes_ -= std::min(uncommitted_bytes_, bytes);
    }
  }
  if (role_ == Role::kLeader) {
    // The leader's own write is durable only now: count it towards the quorum.
    if (progress_.at(config_.id).MaybeUpdate(log_.stable()) && MaybeCommit()) {
      BroadcastAppend();
    }
  }
}

void Raft::CreateSnapshot(LogIndex index, std::string data) {
  KEEL_ASSERT(!ready_outstanding_);
  const std::optional<Term> term = log_.TermAt(index);
  KEEL_ASSERT(term.has_value());
  log_.SetSnapshot({index, *term, std::move(data)});
}

void Raft::Compact(LogIndex through) {
  KEEL_ASSERT(!ready_outstanding_);
  KEEL_ASSERT(log_.snapshot().has_value() && through <= log_.snapshot()->index);
  log_.CompactTo(through);
}

void Raft::CheckInvariants() const {
  log_.CheckInvariants();
  KEEL_ASSERT(term_ >= persisted_hard_state_.term);
  switch (role_) {
    case Role::kLeader:
      KEEL_ASSERT(lead_ == config_.id);
      KEEL_ASSERT(vote_ == config_.id);
      KEEL_ASSERT(progress_.size() == config_.voters.size());
      for (const auto& [id, pr] : progress_) {
        KEEL_ASSERT(pr.match < pr.next);
        KEEL_ASSERT(pr.match <= log_.LastIndex());
      }
      break;
    case Role::kCandidate:
      KEEL_ASSERT(vote_ == config_.id);
      KEEL_ASSERT(lead_.IsZero());
      break;
    case Role::kPreCandidate:
      KEEL_ASSERT(lead_.IsZero());
      break;
    case Role::kFollower:
      KEEL_ASSERT(progress_.empty());
      break;
  }
}

}  // namespace keel::raft
