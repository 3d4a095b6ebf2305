#pragma once
// Snapshot streaming between peers. A kSnapshot message whose encoding is larger than
// one chunk travels as a stream of kSnapshotChunk messages (core/raft/message.h), each
// carrying a slice of that encoding; the receiver acknowledges the bytes it holds, and
// the sender keeps at most `window_chunks` chunks unacknowledged, so a large snapshot
// never floods the transport's bounded queues. The receiver holds the pieces in memory,
// up to `snapshot_bytes_max`, and only a complete stream becomes a snapshot message;
// installing it is then one storage transaction, so a crash mid-stream or mid-install
// leaves the old state intact.
//
// Loss, duplication and reordering: the receiver holds up to a window of chunks that
// arrive past a gap, and acknowledges only its contiguous prefix; a sender without
// progress for a few ticks resends its unacknowledged window (go-back-N). A duplicate is
// acknowledged again. Streams
// that stay idle for `idle_ticks_max` ticks are dropped on both sides; Raft then probes
// the follower again and sends a fresh snapshot if it still needs one. A stream that is
// still moving is never restarted for a newer snapshot (see SnapshotSender::Start).
//
// Memory: a receiver holds at most one stream per member, each at most
// `snapshot_bytes_max` plus a window of early chunks. The whole snapshot is one protobuf
// message, so the limit stays below protobuf's 2 GiB; larger states need their data
// streamed on its own (the database-file snapshots of the MVCC keyspace).
//
// Both classes are pure: they take and return messages; Node does the I/O.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/raft/message.h"

namespace keel::server {

struct SnapshotStreamConfig {
  size_t chunk_bytes = 1 << 20;          // per chunk message
  size_t window_chunks = 4;              // unacknowledged chunks per stream
  uint64_t snapshot_bytes_max = 1ull << 30;  // the largest stream a receiver accepts
  int idle_ticks_max = 20;               // ticks without progress before a stream is dropped
};

class SnapshotSender {
 public:
  explicit SnapshotSender(SnapshotStreamConfig config) : config_(config) {}

  // Whether `encoded`, the encoding of a kSnapshot message, must be streamed.
  bool NeedsStream(const std::string& encoded) const { return encoded.size() > config_.chunk_bytes; }
  // Starts streaming `snapshot` (encoded as `encoded`) to snapshot.to, replacing a
  // stream of another snapshot to that peer; returns the first chunks to send (none if
  // this snapshot is already streaming there).
  std::vector<raft::Message> Start(const raft::Message& snapshot, std::string encoded);
  // The peer acknowledged bytes; returns the chunks that may be sent now.
  std::vector<raft::Message> OnAck(const raft::Message& ack);
  // Resends the unacknowledged window of streams that made no progress for a while, and
  // drops the ones idle too long.
  std::vector<raft::Message> Tick();
  size_t streams() const { return streams_.size(); }

 private:
  struct Stream {
    raft::Message header;  // from, to, term, snapshot index and term
    std::shared_ptr<const std::string> encoded;
    uint64_t acked = 0;
    uint64_t sent = 0;
    int idle_ticks = 0;
  };
  raft::Message Chunk(const Stream& s, uint64_t offset) const;
  void Fill(Stream& s, std::vector<raft::Message>* out) const;

  SnapshotStreamConfig config_;
  std::map<NodeId, Stream> streams_;  // by receiver
};

class SnapshotReceiver {
 public:
  explicit SnapshotReceiver(SnapshotStreamConfig config) : config_(config) {}

  struct Result {
    std::optional<raft::Message> ack;    // to send back
    std::optional<std::string> complete;  // the whole encoded snapshot message
  };
  // A chunk from a peer (decoded and validated by the codec).
  Result OnChunk(const raft::Message& chunk, NodeId self);
  void Tick();  // drops assemblies idle too long
  size_t assemblies() const { return assemblies_.size(); }

 private:
  struct Assembly {
    Term term;
    Term snapshot_term;
    LogIndex snapshot_index;
    uint64_t total = 0;
    std::string data;                       // the contiguous prefix received
    std::map<uint64_t, std::string> early;  // chunks past a gap, by offset
    uint64_t early_bytes = 0;               // at most EarlyBytesMax()
    int idle_ticks = 0;
  };
  raft::Message Ack(const raft::Message& chunk, const Assembly& a, NodeId self) const;
  uint64_t EarlyBytesMax() const { return config_.window_chunks * config_.chunk_bytes; }

  SnapshotStreamConfig config_;
  std::map<NodeId, Assembly> assemblies_;  // by sender
};

}  // namespace keel::server
