// Tests for the Raft wire codec (core/raft/codec.h). Decoding treats bytes as hostile:
// every malformed input must come back as an error, never a crash.

#include "core/raft/codec.h"
#include "tests/core/raft/raft_test_util.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace keel::raft {
namespace {

Message FullAppend() {
  Message m = Msg(MessageType::kAppend, 1, 2, 7);
  m.log_term = Term(6);
  m.index = LogIndex(41);
  m.entries.push_back({Term(7), LogIndex(42), EntryType::kNormal, "put a=1"});
  m.entries.push_back({Term(7), LogIndex(43), EntryType::kNormal, std::string("\0\xff", 2)});
  m.commit = LogIndex(40);
  return m;
}

// Appends a protobuf varint.
void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// A hand-built frame with only varint fields 1 (type), 2 (from) and 3 (to), so that the
// type can be any number, including ones EncodeMessage could never produce.
std::string RawFrame(uint64_t type, uint64_t from, uint64_t to) {
  std::string out;
  out.push_back(0x08);  // field 1, varint
  PutVarint(&out, type);
  out.push_back(0x10);  // field 2, varint
  PutVarint(&out, from);
  out.push_back(0x18);  // field 3, varint
  PutVarint(&out, to);
  return out;
}

TEST(RaftCodec, AnAppendRoundTrips) {
  const Message m = FullAppend();
  const absl::StatusOr<Message> got = DecodeMessage(EncodeMessage(m));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(*got == m);
  ASSERT_EQ(got->entries.size(), 2u);
  EXPECT_EQ(got->entries[1].data, std::string("\0\xff", 2));
}

TEST(RaftCodec, EveryMessageTypeRoundTrips) {
  for (uint8_t t = 1; t <= kMessageTypeMax; ++t) {
    Message m = Msg(static_cast<MessageType>(t), 3, 1, 9);
    SCOPED_TRACE(MessageTypeName(m.type));
    m.index = LogIndex(5);
    m.log_term = Term(8);
    m.commit = LogIndex(4);
    m.reject = t % 2 == 0;
    m.reject_hint = LogIndex(2);
    m.context = "ctx";
    if (m.type == MessageType::kSnapshot) {
      m.snapshot = Snapshot{.index = LogIndex(100), .term = Term(8), .data = "state bytes"};
    }
    if (m.type == MessageType::kSnapshotChunk) m.chunk = SnapshotChunk{3, 10, "abc"};
    if (m.type == MessageType::kSnapshotChunkAck) m.chunk = SnapshotChunk{3, 10, ""};
    const absl::StatusOr<Message> got = DecodeMessage(EncodeMessage(m));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(*got == m);
  }
}

TEST(RaftCodec, AForwardedProposalRoundTrips) {
  Message m = Msg(MessageType::kPropose, 2, 1, 0);
  m.entries.push_back({Term(0), LogIndex(0), EntryType::kNormal, "a"});
  m.entries.push_back({Term(0), LogIndex(0), EntryType::kNormal, "b"});
  const absl::StatusOr<Message> got = DecodeMessage(EncodeMessage(m));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(*got == m);
}

TEST(RaftCodec, GarbageBytesAreAnErrorNotACrash) {
  const std::vector<std::string> inputs = {
      std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11),  // endless varint
      std::string("\x0a\x7f", 2),  // length-delimited field longer than the input
      "hello, raft",
      std::string(1, '\x08'),      // a tag without its value
      std::string("\x07\x00", 2),  // wire type 7 does not exist
  };
  for (const std::string& bytes : inputs) {
    const absl::StatusOr<Message> got = DecodeMessage(bytes);
    EXPECT_FALSE(got.ok()) << "decoded " << bytes.size() << " garbage bytes";
  }
}

TEST(RaftCodec, EveryTruncationOfAValidFrameIsAnErrorOrAValidMessage) {
  const std::string bytes = EncodeMessage(FullAppend());
  for (size_t n = 0; n < bytes.size(); ++n) {
    // Must not crash; a prefix that happens to parse must still pass validation.
    const absl::StatusOr<Message> got = DecodeMessage(std::string_view(bytes).substr(0, n));
    if (got.ok()) {
      EXPECT_NE(got->type, MessageType{0});
    }
  }
}

TEST(RaftCodec, AnUnknownMessageTypeIsRejected) {
  // The newest type that needs no payload: the frame builder works.
  ASSERT_TRUE(DecodeMessage(RawFrame(static_cast<uint32_t>(MessageType::kTransferLeader), 1, 2)).ok());
  EXPECT_FALSE(DecodeMessage(RawFrame(0, 1, 2)).ok());
  EXPECT_FALSE(DecodeMessage(RawFrame(kMessageTypeMax + 1, 1, 2)).ok());
  EXPECT_FALSE(DecodeMessage(RawFrame(255, 1, 2)).ok());
  EXPECT_FALSE(DecodeMessage(RawFrame(256 + 1, 1, 2)).ok()) << "no truncation to uint8_t";
}

TEST(RaftCodec, AMessageWithoutSenderOrRecipientIsRejected) {
  EXPECT_FALSE(DecodeMessage(RawFrame(1, 0, 2)).ok());
  EXPECT_FALSE(DecodeMessage(RawFrame(1, 1, 0)).ok());
}

TEST(RaftCodec, AppendEntriesOutOfOrderAreRejected) {
  Message m = FullAppend();
  std::swap(m.entries[0], m.entries[1]);
  EXPECT_FALSE(DecodeMessage(EncodeMessage(m)).ok());
  m = FullAppend();
  m.entries[0].index = LogIndex(1);  // not right after prev index 41
  EXPECT_FALSE(DecodeMessage(EncodeMessage(m)).ok());
}

// `index + 1 + k` must not wrap around: an entry at index 0 after prev index 2^64 - 1 is
// not contiguous, it is garbage.
TEST(RaftCodec, AppendEntryIndexesThatWrapAroundAreRejected) {
  Message m = FullAppend();
  m.index = LogIndex(UINT64_MAX);
  m.entries.resize(1);
  m.entries[0].index = LogIndex(0);
  EXPECT_FALSE(DecodeMessage(EncodeMessage(m)).ok());
}

TEST(RaftCodec, ASnapshotIsAcceptedOnlyOnASnapshotMessage) {
  Message m = FullAppend();
  m.snapshot = Snapshot{.index = LogIndex(3), .term = Term(1), .data = "x"};
  EXPECT_FALSE(DecodeMessage(EncodeMessage(m)).ok());

  const Message s = Msg(MessageType::kSnapshot, 1, 2, 2);
  EXPECT_FALSE(DecodeMessage(EncodeMessage(s)).ok()) << "a snapshot message without one";
}

TEST(RaftCodec, FramesOverTheLimitsAreRejected) {
  const std::string bytes = EncodeMessage(FullAppend());
  EXPECT_FALSE(DecodeMessage(bytes, {.message_bytes_max = bytes.size() - 1}).ok());
  EXPECT_FALSE(DecodeMessage(bytes, {.entry_count_max = 1}).ok());
  Message m = FullAppend();
  m.entries.clear();
  m.context = std::string(100, 'c');
  EXPECT_FALSE(DecodeMessage(EncodeMessage(m), {.context_bytes_max = 99}).ok());
  EXPECT_TRUE(DecodeMessage(EncodeMessage(m), {.context_bytes_max = 100}).ok());
}

// ---- snapshot chunks (core/server/snapshot_stream.h) ----------------------------------

// A chunk (data) or an acknowledgement (no data) of the stream of snapshot (10, term 2).
Message ChunkMessage(MessageType type, uint64_t offset, uint64_t total, std::string data) {
  Message m = Msg(type, 2, 1, 3);
  m.index = LogIndex(10);
  m.log_term = Term(2);
  m.chunk = SnapshotChunk{offset, total, std::move(data)};
  return m;
}

Message Chunk(uint64_t offset, uint64_t total, std::string data) {
  return ChunkMessage(MessageType::kSnapshotChunk, offset, total, std::move(data));
}

Message ChunkAck(uint64_t offset, uint64_t total) {
  return ChunkMessage(MessageType::kSnapshotChunkAck, offset, total, "");
}

bool Decodes(const Message& m, const DecodeLimits& limits = {}) {
  const absl::StatusOr<Message> got = DecodeMessage(EncodeMessage(m), limits);
  if (got.ok()) {
    EXPECT_TRUE(*got == m) << "decoded into another message";
  }
  return got.ok();
}

TEST(RaftCodecChunks, ValidChunksAndAcksRoundTrip) {
  EXPECT_TRUE(Decodes(Chunk(0, 10, "abc")));
  EXPECT_TRUE(Decodes(Chunk(7, 10, "abc")));  // the last bytes exactly
  EXPECT_TRUE(Decodes(Chunk(0, 3, "abc")));   // the whole stream in one chunk
  EXPECT_TRUE(Decodes(ChunkAck(0, 10)));
  EXPECT_TRUE(Decodes(ChunkAck(10, 10)));  // the final ack
  EXPECT_TRUE(Decodes(Chunk(0, 4, std::string("\0\xff\0", 3) + "x")));
}

TEST(RaftCodecChunks, AChunkIsPresentIffTheMessageIsAChunkOrItsAck) {
  Message chunk = Chunk(0, 10, "abc");
  chunk.chunk.reset();
  EXPECT_FALSE(Decodes(chunk));
  Message ack = ChunkAck(3, 10);
  ack.chunk.reset();
  EXPECT_FALSE(Decodes(ack));

  // The chunk would be valid on a chunk message: index and log_term are set.
  Message append = ChunkMessage(MessageType::kAppend, 0, 10, "abc");
  append.chunk.reset();
  ASSERT_TRUE(Decodes(append));
  append.chunk = SnapshotChunk{0, 10, "abc"};
  EXPECT_FALSE(Decodes(append));
  Message snapshot = ChunkMessage(MessageType::kSnapshot, 0, 10, "abc");
  snapshot.snapshot = Snapshot{.index = LogIndex(10), .term = Term(2), .data = "state"};
  EXPECT_FALSE(Decodes(snapshot));
  snapshot.chunk.reset();
  EXPECT_TRUE(Decodes(snapshot));
}

TEST(RaftCodecChunks, AChunkMustNameItsSnapshotsIndexAndTerm) {
  for (Message m : {Chunk(0, 10, "abc"), ChunkAck(3, 10)}) {
    SCOPED_TRACE(MessageTypeName(m.type));
    ASSERT_TRUE(Decodes(m));
    Message no_index = m;
    no_index.index = LogIndex(0);
    EXPECT_FALSE(Decodes(no_index));
    Message no_term = m;
    no_term.log_term = Term(0);
    EXPECT_FALSE(Decodes(no_term));
  }
}

TEST(RaftCodecChunks, ATotalOfZeroOrOverTheLimitIsRejected) {
  EXPECT_FALSE(Decodes(ChunkAck(0, 0)));
  const DecodeLimits limits{.snapshot_bytes_max = 100};
  EXPECT_TRUE(Decodes(Chunk(0, 100, "abc"), limits));
  EXPECT_FALSE(Decodes(Chunk(0, 101, "abc"), limits));
  EXPECT_TRUE(Decodes(ChunkAck(0, 100), limits));
  EXPECT_FALSE(Decodes(ChunkAck(0, 101), limits));
  // The default limit is 1 GiB (a snapshot is one protobuf message: under 2 GiB).
  EXPECT_TRUE(Decodes(ChunkAck(0, 1ull << 30)));
  EXPECT_FALSE(Decodes(ChunkAck(0, (1ull << 30) + 1)));
}

TEST(RaftCodecChunks, BytesPastTheTotalAreRejected) {
  EXPECT_FALSE(Decodes(ChunkAck(11, 10)));     // offset past the end
  EXPECT_FALSE(Decodes(Chunk(8, 10, "abc")));  // one byte past the end
  EXPECT_FALSE(Decodes(Chunk(10, 10, "a")));   // starts at the end
  EXPECT_FALSE(Decodes(Chunk(0, 2, "abc")));
}

// offset + data must not wrap around: a chunk near 2^64 is past any total, not before it.
TEST(RaftCodecChunks, OffsetsNearTheTopOfTheRangeDoNotOverflow) {
  const DecodeLimits limits{.snapshot_bytes_max = UINT64_MAX};
  EXPECT_TRUE(Decodes(Chunk(UINT64_MAX - 3, UINT64_MAX, "abc"), limits));
  EXPECT_FALSE(Decodes(Chunk(UINT64_MAX - 1, UINT64_MAX, "abc"), limits));
  EXPECT_FALSE(Decodes(Chunk(UINT64_MAX, UINT64_MAX, "abc"), limits));
  EXPECT_FALSE(Decodes(Chunk(UINT64_MAX, 10, "abc"), limits));
  EXPECT_FALSE(Decodes(Chunk(UINT64_MAX - 1, 10, "abc"), limits));
  EXPECT_TRUE(Decodes(ChunkAck(UINT64_MAX, UINT64_MAX), limits));
  EXPECT_FALSE(Decodes(ChunkAck(UINT64_MAX, 10), limits));
}

TEST(RaftCodecChunks, AChunkCarriesDataAndAnAckNone) {
  EXPECT_FALSE(Decodes(Chunk(0, 10, "")));
  EXPECT_FALSE(Decodes(Chunk(10, 10, "")));
  EXPECT_FALSE(Decodes(ChunkMessage(MessageType::kSnapshotChunkAck, 0, 10, "abc")));
}

}  // namespace
}  // namespace keel::raft
