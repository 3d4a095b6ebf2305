#include "core/raft/codec.h"

#include "absl/strings/str_cat.h"
#include "core/raft/raft.pb.h"

namespace keel::raft {

std::string_view MessageTypeName(MessageType t) {
  switch (t) {
    case MessageType::kAppend: return "Append";
    case MessageType::kAppendResponse: return "AppendResponse";
    case MessageType::kHeartbeat: return "Heartbeat";
    case MessageType::kHeartbeatResponse: return "HeartbeatResponse";
    case MessageType::kVote: return "Vote";
    case MessageType::kVoteResponse: return "VoteResponse";
    case MessageType::kPreVote: return "PreVote";
    case MessageType::kPreVoteResponse: return "PreVoteResponse";
    case MessageType::kSnapshot: return "Snapshot";
    case MessageType::kPropose: return "Propose";
    case MessageType::kReadIndex: return "ReadIndex";
    case MessageType::kReadIndexResponse: return "ReadIndexResponse";
    case MessageType::kTimeoutNow: return "TimeoutNow";
    case MessageType::kTransferLeader: return "TransferLeader";
    case MessageType::kSnapshotChunk: return "SnapshotChunk";
    case MessageType::kSnapshotChunkAck: return "SnapshotChunkAck";
  }
  return "?";
}

std::string EncodeMessage(const Message& m) {
  raftpb::Message pb;
  pb.set_type(static_cast<uint32_t>(m.type));
  pb.set_from(m.from.value);
  pb.set_to(m.to.value);
  pb.set_term(m.term.value);
  pb.set_log_term(m.log_term.value);
  pb.set_index(m.index.value);
  for (const Entry& e : m.entries) {
    raftpb::Entry* pe = pb.add_entries();
    pe->set_term(e.term.value);
    pe->set_index(e.index.value);
    pe->set_type(static_cast<uint32_t>(e.type));
    pe->set_data(e.data);
  }
  pb.set_commit(m.commit.value);
  pb.set_reject(m.reject);
  pb.set_reject_hint(m.reject_hint.value);
  pb.set_context(m.context);
  if (m.snapshot) {
    raftpb::Snapshot* ps = pb.mutable_snapshot();
    ps->set_index(m.snapshot->index.value);
    ps->set_term(m.snapshot->term.value);
    ps->set_data(m.snapshot->data);
  }
  if (m.chunk) {
    raftpb::SnapshotChunk* pc = pb.mutable_chunk();
    pc->set_offset(m.chunk->offset);
    pc->set_total(m.chunk->total);
    pc->set_data(m.chunk->data);
  }
  std::string out;
  pb.SerializeToString(&out);
  return out;
}

absl::StatusOr<Message> DecodeMessage(std::string_view bytes, const DecodeLimits& limits) {
  // Protobuf parses at most INT_MAX bytes (its sizes are ints), whatever the limits say.
  if (bytes.size() > limits.message_bytes_max || bytes.size() > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("raft message of ", bytes.size(),
                                                   " bytes exceeds the limit"));
  }
  raftpb::Message pb;
  if (!pb.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError("raft message does not parse");
  }
  if (pb.type() == 0 || pb.type() > kMessageTypeMax) {
    return absl::InvalidArgumentError(absl::StrCat("unknown raft message type ", pb.type()));
  }
  if (pb.from() == 0 || pb.to() == 0) {
    return absl::InvalidArgumentError("raft message without sender or recipient");
  }
  if (static_cast<size_t>(pb.entries_size()) > limits.entry_count_max ||
      pb.context().size() > limits.context_bytes_max) {
    return absl::InvalidArgumentError("raft message exceeds entry or context limits");
  }
  Message m;
  m.type = static_cast<MessageType>(pb.type());
  m.from = NodeId(pb.from());
  m.to = NodeId(pb.to());
  m.term = Term(pb.term());
  m.log_term = Term(pb.log_term());
  m.index = LogIndex(pb.index());
  m.commit = LogIndex(pb.commit());
  m.reject = pb.reject();
  m.reject_hint = LogIndex(pb.reject_hint());
  m.context = pb.context();
  const bool forwarded = m.type == MessageType::kPropose;
  if (!forwarded && m.index.value > UINT64_MAX - static_cast<uint64_t>(pb.entries_size())) {
    return absl::InvalidArgumentError("raft message entry indexes overflow");
  }
  m.entries.reserve(pb.entries_size());
  for (int k = 0; k < pb.entries_size(); ++k) {
    const raftpb::Entry& pe = pb.entries(k);
    if (pe.type() != static_cast<uint32_t>(EntryType::kNormal)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown entry type ", pe.type()));
    }
    // Appended entries must be contiguous after `index` (forwarded proposals carry none).
    const uint64_t want = forwarded ? 0 : m.index.value + 1 + static_cast<uint64_t>(k);
    if (pe.index() != want || (!forwarded && pe.term() == 0)) {
      return absl::InvalidArgumentError("raft message entries are not contiguous");
    }
    // A log's terms never decrease, and no entry is newer than the message's term.
    if (!forwarded && (pe.term() < (k == 0 ? m.log_term.value : pb.entries(k - 1).term()) ||
                       pe.term() > m.term.value)) {
      return absl::InvalidArgumentError("raft message entry terms out of order");
    }
    m.entries.push_back({Term(pe.term()), LogIndex(pe.index()), EntryType::kNormal,
                         pe.data()});
  }
  if (!m.entries.empty() && m.type != MessageType::kAppend && !forwarded) {
    return absl::InvalidArgumentError("entries on a message that carries none");
  }
  if (pb.has_snapshot() != (m.type == MessageType::kSnapshot)) {
    return absl::InvalidArgumentError("snapshot present iff the message is a snapshot");
  }
  if (pb.has_snapshot()) {
    const raftpb::Snapshot& ps = pb.snapshot();
    if (ps.index() == 0 || ps.term() == 0) {
      return absl::InvalidArgumentError("snapshot without index or term");
    }
    m.snapshot = Snapshot{LogIndex(ps.index()), Term(ps.term()), ps.data()};
  }
  const bool chunk_kind = m.type == MessageType::kSnapshotChunk ||
                          m.type == MessageType::kSnapshotChunkAck;
  if (pb.has_chunk() != chunk_kind) {
    return absl::InvalidArgumentError("snapshot chunk present iff the message is a chunk");
  }
  if (pb.has_chunk()) {
    const raftpb::SnapshotChunk& pc = pb.chunk();
    const bool ack = m.type == MessageType::kSnapshotChunkAck;
    if (m.index.value == 0 || m.log_term.IsZero() || pc.total() == 0 ||
        pc.total() > limits.snapshot_bytes_max || pc.offset() > pc.total() ||
        pc.data().size() > pc.total() - pc.offset() || ack != pc.data().empty()) {
      return absl::InvalidArgumentError("malformed snapshot chunk");
    }
    m.chunk = SnapshotChunk{pc.offset(), pc.total(), pc.data()};
  }
  return m;
}

}  // namespace keel::raft
