#include "core/server/snapshot_stream.h"

#include <algorithm>

namespace keel::server {
namespace {
// Ticks without progress before the sender resends its unacknowledged window.
constexpr int kResendTicks = 3;
}  // namespace

raft::Message SnapshotSender::Chunk(const Stream& s, uint64_t offset) const {
  raft::Message m = s.header;
  m.type = raft::MessageType::kSnapshotChunk;
  const uint64_t total = s.encoded->size();
  const uint64_t length = std::min<uint64_t>(config_.chunk_bytes, total - offset);
  m.chunk = raft::SnapshotChunk{offset, total, s.encoded->substr(offset, length)};
  return m;
}

void SnapshotSender::Fill(Stream& s, std::vector<raft::Message>* out) const {
  const uint64_t total = s.encoded->size();
  const uint64_t window = config_.window_chunks * config_.chunk_bytes;
  while (s.sent < total && s.sent - s.acked < window) {
    out->push_back(Chunk(s, s.sent));
    s.sent += out->back().chunk->data.size();
  }
}

std::vector<raft::Message> SnapshotSender::Start(const raft::Message& snapshot,
                                                 std::string encoded) {
  // Raft asks again when a snapshot takes long (its probe timer), with its newest
  // snapshot. A stream of this term that is still moving carries on, even of an older
  // snapshot: starting over would mean a snapshot that takes longer to send than the
  // probe timer never arrives while writes go on. The follower then catches up from the
  // older snapshot (by entries, or by the next snapshot). A stalled stream is dropped
  // by Tick, and the next ask starts afresh.
  if (auto it = streams_.find(snapshot.to);
      it != streams_.end() && it->second.header.term == snapshot.term &&
      it->second.idle_ticks < kResendTicks) {
    return {};
  }
  Stream s;
  s.header.from = snapshot.from;
  s.header.to = snapshot.to;
  s.header.term = snapshot.term;
  s.header.index = snapshot.snapshot->index;
  s.header.log_term = snapshot.snapshot->term;
  s.encoded = std::make_shared<const std::string>(std::move(encoded));
  std::vector<raft::Message> out;
  Fill(s, &out);
  streams_[snapshot.to] = std::move(s);
  return out;
}

std::vector<raft::Message> SnapshotSender::OnAck(const raft::Message& ack) {
  std::vector<raft::Message> out;
  auto it = streams_.find(ack.from);
  if (it == streams_.end()) return out;
  Stream& s = it->second;
  if (ack.index != s.header.index || ack.log_term != s.header.log_term ||
      ack.term != s.header.term || ack.chunk->total != s.encoded->size()) {
    return out;  // about another stream
  }
  if (ack.chunk->offset > s.acked) {  // the total matched: offset <= the stream's size
    s.acked = ack.chunk->offset;
    s.sent = std::max(s.sent, s.acked);  // an ack from before a go-back may pass `sent`
    s.idle_ticks = 0;
  }
  if (s.acked == s.encoded->size()) {
    streams_.erase(it);  // delivered; Raft hears of the install from the follower
    return out;
  }
  Fill(s, &out);
  return out;
}

std::vector<raft::Message> SnapshotSender::Tick() {
  std::vector<raft::Message> out;
  for (auto it = streams_.begin(); it != streams_.end();) {
    Stream& s = it->second;
    if (++s.idle_ticks >= config_.idle_ticks_max) {
      it = streams_.erase(it);
      continue;
    }
    if (s.idle_ticks % kResendTicks == 0) {
      s.sent = s.acked;  // go back: resend the unacknowledged window
      Fill(s, &out);
    }
    ++it;
  }
  return out;
}

raft::Message SnapshotReceiver::Ack(const raft::Message& chunk, const Assembly& a,
                                    NodeId self) const {
  raft::Message ack;
  ack.type = raft::MessageType::kSnapshotChunkAck;
  ack.from = self;
  ack.to = chunk.from;
  ack.term = chunk.term;
  ack.index = chunk.index;
  ack.log_term = chunk.log_term;
  ack.chunk = raft::SnapshotChunk{a.data.size(), a.total, ""};
  return ack;
}

SnapshotReceiver::Result SnapshotReceiver::OnChunk(const raft::Message& chunk, NodeId self) {
  Result result;
  const raft::SnapshotChunk& c = *chunk.chunk;
  auto it = assemblies_.find(chunk.from);
  const bool known = it != assemblies_.end() && it->second.term == chunk.term &&
                     it->second.snapshot_index == chunk.index &&
                     it->second.snapshot_term == chunk.log_term && it->second.total == c.total;
  if (!known) {
    // A stream starts at offset 0; the middle of one we do not hold (its start was lost,
    // or we dropped it) is ignored until the sender gives up and Raft sends afresh.
    // An older leader's stream never replaces a newer one's.
    if (c.offset != 0 || c.total > config_.snapshot_bytes_max) return result;
    // An older leader's stream never replaces a newer one's, nor (a late duplicate of
    // a first chunk) an older snapshot's a newer one's of the same leader.
    if (it != assemblies_.end() &&
        (it->second.term > chunk.term ||
         (it->second.term == chunk.term && it->second.snapshot_index > chunk.index))) {
      return result;
    }
    Assembly fresh;
    fresh.term = chunk.term;
    fresh.snapshot_term = chunk.log_term;
    fresh.snapshot_index = chunk.index;
    fresh.total = c.total;
    it = assemblies_.insert_or_assign(chunk.from, std::move(fresh)).first;
  }
  Assembly& a = it->second;
  if (c.offset == a.data.size()) {
    a.data += c.data;
    a.idle_ticks = 0;
    // Chunks that arrived early now fit on.
    for (auto p = a.early.begin(); p != a.early.end() && p->first <= a.data.size();
         p = a.early.erase(p)) {
      a.early_bytes -= p->second.size();
      if (p->first + p->second.size() > a.data.size()) {
        a.data.append(p->second, a.data.size() - p->first);
      }
    }
  } else if (c.offset > a.data.size() && a.early_bytes + c.data.size() <= EarlyBytesMax()) {
    // Reordered: hold it (at most a window's worth of bytes) until the gap fills.
    if (a.early.try_emplace(c.offset, c.data).second) a.early_bytes += c.data.size();
  }
  // A duplicate changes nothing; the ack says where we are.
  result.ack = Ack(chunk, a, self);
  if (a.data.size() == a.total) {
    result.complete = std::move(a.data);
    assemblies_.erase(it);
  }
  return result;
}

void SnapshotReceiver::Tick() {
  for (auto it = assemblies_.begin(); it != assemblies_.end();) {
    if (++it->second.idle_ticks >= config_.idle_ticks_max) {
      it = assemblies_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace keel::server
