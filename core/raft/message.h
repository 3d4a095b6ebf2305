#pragma once
// The Raft vocabulary: log entries, the persistent hard state, snapshots and the messages
// peers exchange. Plain structs; core/raft/codec.h turns messages into bytes and back
// (validating everything that arrives from outside).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/types.h"

namespace keel::raft {

enum class EntryType : uint8_t {
  kNormal = 0,  // data for the state machine; empty data is a leader's no-op
};

struct Entry {
  Term term;
  LogIndex index;
  EntryType type = EntryType::kNormal;
  std::string data;

  size_t ByteSize() const { return data.size() + 24; }
  bool operator==(const Entry&) const = default;
};

// HardState: what must be on stable storage before the node may say anything that
// depends on it. Raft Figure 2: currentTerm and votedFor; commit is kept so a restart
// can apply without waiting for the leader.
struct HardState {
  Term term;
  NodeId vote;
  LogIndex commit;

  bool operator==(const HardState&) const = default;
};

// Snapshot: the state machine as of `index` (whose entry had `term`), opaque bytes here.
struct Snapshot {
  LogIndex index;
  Term term;
  std::string data;

  bool operator==(const Snapshot&) const = default;
};

enum class MessageType : uint8_t {
  kAppend = 1,            // leader -> follower: entries after (index, log_term), commit
  kAppendResponse = 2,    // index = last matching index, or reject with a hint
  kHeartbeat = 3,         // leader -> follower: commit, read-index context
  kHeartbeatResponse = 4,
  kVote = 5,              // candidate: (log_term, index) of its last entry
  kVoteResponse = 6,
  kPreVote = 7,           // Raft thesis §9.6: would you vote for me at term+1?
  kPreVoteResponse = 8,
  kSnapshot = 9,          // leader -> lagging follower: a whole snapshot
  kPropose = 10,          // follower -> leader: forwarded client entries (term 0)
  kReadIndex = 11,        // follower -> leader: confirm leadership for a read (term 0)
  kReadIndexResponse = 12,
  kTimeoutNow = 13,       // leader -> transferee: campaign now (Raft thesis §3.10)
  kTransferLeader = 14,   // follower -> leader: please transfer to `index`'s node (term 0)
  // Node-level, never stepped into Raft: a kSnapshot message too large for one message
  // travels as a stream of chunks of its encoding (core/server/snapshot_stream.h).
  // `index` and `log_term` name the snapshot; `chunk` carries the bytes.
  kSnapshotChunk = 15,
  kSnapshotChunkAck = 16,  // receiver -> sender: chunk.offset = bytes received so far
};
inline constexpr uint8_t kMessageTypeMax = 16;
std::string_view MessageTypeName(MessageType t);

// A piece of an encoded kSnapshot message (kSnapshotChunk), or an acknowledgement of
// the bytes received so far (kSnapshotChunkAck: `data` empty).
struct SnapshotChunk {
  uint64_t offset = 0;
  uint64_t total = 0;  // bytes of the whole encoded snapshot message
  std::string data;
  bool operator==(const SnapshotChunk&) const = default;
};

struct Message {
  MessageType type = MessageType::kHeartbeat;
  NodeId from;
  NodeId to;
  Term term;
  Term log_term;     // term of the entry at `index` (append/vote), or a hint (reject)
  LogIndex index;    // prev index (append), last index (vote), match (response)
  std::vector<Entry> entries;
  LogIndex commit;
  bool reject = false;
  LogIndex reject_hint;
  std::string context;  // read-index request context; "transfer" marks a forced vote
  std::optional<Snapshot> snapshot;
  std::optional<SnapshotChunk> chunk;  // kSnapshotChunk, kSnapshotChunkAck

  bool operator==(const Message&) const = default;
};

// A vote forced by leadership transfer ignores leader leases (Raft thesis §3.10, §4.2.3).
inline constexpr std::string_view kCampaignTransfer = "transfer";

}  // namespace keel::raft
