// Tests for snapshot streaming (core/server/snapshot_stream.h): SnapshotSender and
// SnapshotReceiver are pure, so the tests hand them messages and read what they return.
// Chunks are 10 bytes with a window of 3, so a 45-byte encoding is five chunks (the last
// one 5 bytes) of which three may be unacknowledged. The encodings are patterns with a
// period (251) that no chunk size divides, so a slice taken from the wrong offset shows.
// The last test runs a sender and a receiver through a lossy, duplicating, reordering
// channel for many seeds. Deterministic: fixed seeds, logical ticks.

#include "core/server/snapshot_stream.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/raft/codec.h"
#include "core/rng.h"
#include "gtest/gtest.h"

namespace keel::server {
namespace {

using raft::Message;
using raft::MessageType;

constexpr NodeId kLeader(1);
constexpr NodeId kFollower(2);
constexpr size_t kChunkBytes = 10;
constexpr size_t kWindowChunks = 3;
constexpr int kIdleTicksMax = 20;

SnapshotStreamConfig TestConfig() {
  return {.chunk_bytes = kChunkBytes,
          .window_chunks = kWindowChunks,
          .snapshot_bytes_max = 1000,
          .idle_ticks_max = kIdleTicksMax};
}

std::string Bytes(size_t n) {
  std::string out(n, '\0');
  for (size_t k = 0; k < n; ++k) out[k] = static_cast<char>((k * 7 + 3) % 251);
  return out;
}

// What names a stream: the leader's term and the snapshot's index and term.
struct StreamId {
  uint64_t term = 3;
  uint64_t index = 7;
  uint64_t snapshot_term = 2;
};

// The kSnapshot message that Raft asks the node to send; the sender reads its header.
Message SnapshotMessage(StreamId id = {}) {
  Message m;
  m.type = MessageType::kSnapshot;
  m.from = kLeader;
  m.to = kFollower;
  m.term = Term(id.term);
  m.snapshot = raft::Snapshot{LogIndex(id.index), Term(id.snapshot_term), "state"};
  return m;
}

// A chunk or an acknowledgement of stream `id`, built from message.h's description.
Message StreamMessage(MessageType type, StreamId id, raft::SnapshotChunk chunk) {
  Message m;
  m.type = type;
  const bool ack = type == MessageType::kSnapshotChunkAck;
  m.from = ack ? kFollower : kLeader;
  m.to = ack ? kLeader : kFollower;
  m.term = Term(id.term);
  m.index = LogIndex(id.index);
  m.log_term = Term(id.snapshot_term);
  m.chunk = std::move(chunk);
  return m;
}

// Chunk `k` of `encoded` (kChunkBytes each).
Message ChunkOf(const std::string& encoded, size_t k, StreamId id = {}) {
  const uint64_t offset = k * kChunkBytes;
  return StreamMessage(MessageType::kSnapshotChunk, id,
                       {offset, encoded.size(), encoded.substr(offset, kChunkBytes)});
}

Message Ack(uint64_t offset, uint64_t total, StreamId id = {}) {
  return StreamMessage(MessageType::kSnapshotChunkAck, id, {offset, total, ""});
}

std::string Show(const Message& m) {
  std::string out = absl::StrCat(std::string(raft::MessageTypeName(m.type)), " ", m.from.value,
                                 "->", m.to.value, " term=", m.term.value, " index=", m.index.value,
                                 " log_term=", m.log_term.value);
  if (m.chunk) {
    absl::StrAppend(&out, " chunk=", m.chunk->offset, "/", m.chunk->total, " (",
                    m.chunk->data.size(), " bytes)");
  }
  return out;
}

// Whole-message equality that prints both messages readably when it fails.
testing::AssertionResult Same(const Message& got, const Message& want) {
  if (got == want) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "got " << Show(got) << "\nwant " << Show(want)
         << (got.chunk && want.chunk && got.chunk->data != want.chunk->data ? " (the data differs)"
                                                                            : "");
}

std::vector<uint64_t> Offsets(const std::vector<Message>& chunks) {
  std::vector<uint64_t> out;
  for (const Message& m : chunks) out.push_back(m.chunk->offset);
  return out;
}

using Offs = std::vector<uint64_t>;

// ---- sender -------------------------------------------------------------------------

TEST(SnapshotSender, AnEncodingOfExactlyOneChunkIsNotStreamedButOneByteMoreIs) {
  const SnapshotSender sender(TestConfig());
  EXPECT_FALSE(sender.NeedsStream(""));
  EXPECT_FALSE(sender.NeedsStream(Bytes(kChunkBytes)));
  EXPECT_TRUE(sender.NeedsStream(Bytes(kChunkBytes + 1)));
  EXPECT_TRUE(sender.NeedsStream(Bytes(1000)));
}

TEST(SnapshotSender, StartSendsTheFirstWindowOfChunksNamingTheSnapshot) {
  SnapshotSender sender(TestConfig());
  const std::string encoded = Bytes(45);
  const std::vector<Message> out = sender.Start(SnapshotMessage(), encoded);
  ASSERT_EQ(out.size(), kWindowChunks);
  for (size_t k = 0; k < out.size(); ++k) {
    // Header: from, to, the leader's term; index and log_term are the snapshot's.
    EXPECT_TRUE(Same(out[k], ChunkOf(encoded, k))) << k;
  }
  EXPECT_EQ(sender.streams(), 1u);
}

TEST(SnapshotSender, AWindowLargerThanTheEncodingSendsItAllWithAShorterLastChunk) {
  SnapshotSender sender({.chunk_bytes = kChunkBytes, .window_chunks = 8});
  const std::string encoded = Bytes(45);
  const std::vector<Message> out = sender.Start(SnapshotMessage(), encoded);
  ASSERT_EQ(out.size(), 5u);
  for (size_t k = 0; k < out.size(); ++k) EXPECT_TRUE(Same(out[k], ChunkOf(encoded, k))) << k;
  EXPECT_EQ(out.back().chunk->data.size(), 5u);
  std::string joined;
  for (const Message& m : out) joined += m.chunk->data;
  EXPECT_EQ(joined, encoded);
}

TEST(SnapshotSender, AcksSlideTheWindowAndTheFinalAckEndsTheStream) {
  SnapshotSender sender(TestConfig());
  const std::string encoded = Bytes(45);
  ASSERT_EQ(Offsets(sender.Start(SnapshotMessage(), encoded)), (Offs{0, 10, 20}));

  // One chunk acknowledged: one more may go.
  const std::vector<Message> after_one = sender.OnAck(Ack(10, 45));
  ASSERT_EQ(after_one.size(), 1u);
  EXPECT_TRUE(Same(after_one[0], ChunkOf(encoded, 3)));
  // Two more: the window has room for two, but only the 5-byte tail is left.
  const std::vector<Message> after_three = sender.OnAck(Ack(30, 45));
  ASSERT_EQ(after_three.size(), 1u);
  EXPECT_TRUE(Same(after_three[0], ChunkOf(encoded, 4)));
  EXPECT_TRUE(sender.OnAck(Ack(40, 45)).empty());  // everything is out
  EXPECT_EQ(sender.streams(), 1u);

  EXPECT_TRUE(sender.OnAck(Ack(45, 45)).empty());
  EXPECT_EQ(sender.streams(), 0u);
  // Gone for good: neither a late ack nor the resend timer brings anything back.
  EXPECT_TRUE(sender.OnAck(Ack(20, 45)).empty());
  for (int k = 0; k < 3 * kIdleTicksMax; ++k) EXPECT_TRUE(sender.Tick().empty()) << k;
}

TEST(SnapshotSender, AcksOfAnotherStreamAreIgnored) {
  const std::string encoded = Bytes(45);
  struct Case {
    const char* what;
    Message ack;
  };
  Message stranger = Ack(30, 45);
  stranger.from = NodeId(3);
  const std::vector<Case> cases = {
      {"another snapshot index", Ack(30, 45, {.index = 8})},
      {"another snapshot term", Ack(30, 45, {.snapshot_term = 1})},
      {"another leader term", Ack(30, 45, {.term = 4})},
      {"another total", Ack(30, 46)},
      {"another peer", stranger},
      {"another snapshot's final ack", Ack(45, 45, {.index = 8})},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    SnapshotSender sender(TestConfig());
    ASSERT_EQ(sender.Start(SnapshotMessage(), encoded).size(), kWindowChunks);
    EXPECT_TRUE(sender.OnAck(c.ack).empty());
    EXPECT_EQ(sender.streams(), 1u);
    // Nothing was acknowledged: the stream's own ack of 10 lets exactly chunk 3 go.
    EXPECT_EQ(Offsets(sender.OnAck(Ack(10, 45))), (Offs{30}));
  }
}

TEST(SnapshotSender, AnAckThatGoesBackwardsChangesNothing) {
  SnapshotSender sender(TestConfig());
  ASSERT_EQ(sender.Start(SnapshotMessage(), Bytes(45)).size(), kWindowChunks);
  ASSERT_EQ(Offsets(sender.OnAck(Ack(20, 45))), (Offs{30, 40}));

  EXPECT_TRUE(sender.OnAck(Ack(20, 45)).empty());  // a duplicate
  EXPECT_TRUE(sender.OnAck(Ack(0, 45)).empty());
  EXPECT_TRUE(sender.OnAck(Ack(10, 45)).empty());

  // The go-back resend starts where the acks reached: 20, not 10 or 0.
  EXPECT_TRUE(sender.Tick().empty());
  EXPECT_TRUE(sender.Tick().empty());
  EXPECT_EQ(Offsets(sender.Tick()), (Offs{20, 30, 40}));
}

TEST(SnapshotSender, StartingTheSnapshotThatIsStreamingSendsNothingAndKeepsItsProgress) {
  SnapshotSender sender(TestConfig());
  const std::string encoded = Bytes(45);
  ASSERT_EQ(sender.Start(SnapshotMessage(), encoded).size(), kWindowChunks);
  ASSERT_EQ(Offsets(sender.OnAck(Ack(20, 45))), (Offs{30, 40}));

  // Raft's probe timer asks again while the stream is slow.
  EXPECT_TRUE(sender.Start(SnapshotMessage(), encoded).empty());
  EXPECT_EQ(sender.streams(), 1u);
  EXPECT_TRUE(sender.Tick().empty());
  EXPECT_TRUE(sender.Tick().empty());
  EXPECT_EQ(Offsets(sender.Tick()), (Offs{20, 30, 40}));  // not restarted from 0
  EXPECT_TRUE(sender.OnAck(Ack(45, 45)).empty());
  EXPECT_EQ(sender.streams(), 0u);
}

// Raft asks again, with its newest snapshot, while a stream of this term still moves:
// the stream carries on (restarting it would never finish a slow one).
TEST(SnapshotSender, ANewerSnapshotOfTheSameTermDoesNotRestartAMovingStream) {
  const std::string old_encoding = Bytes(45);
  for (const StreamId id : {StreamId{.index = 9}, StreamId{.snapshot_term = 3}}) {
    SCOPED_TRACE(absl::StrCat("snapshot ", id.index, " at term ", id.snapshot_term));
    SnapshotSender sender(TestConfig());
    ASSERT_EQ(sender.Start(SnapshotMessage(), old_encoding).size(), kWindowChunks);
    ASSERT_EQ(sender.OnAck(Ack(20, 45)).size(), 2u);
    EXPECT_TRUE(sender.Start(SnapshotMessage(id), Bytes(51)).empty());
    EXPECT_EQ(sender.streams(), 1u);
    // The old stream goes on: its final ack completes it.
    EXPECT_TRUE(sender.OnAck(Ack(45, 45)).empty());
    EXPECT_EQ(sender.streams(), 0u);
  }
}

// A stream that stopped moving (three idle ticks) is replaced by the newer snapshot.
TEST(SnapshotSender, ANewerSnapshotReplacesAStalledStream) {
  const std::string new_encoding = Bytes(52).substr(1);
  const StreamId id{.index = 9};
  SnapshotSender sender(TestConfig());
  ASSERT_EQ(sender.Start(SnapshotMessage(), Bytes(45)).size(), kWindowChunks);
  for (int k = 0; k < 3; ++k) (void)sender.Tick();
  const std::vector<Message> out = sender.Start(SnapshotMessage(id), new_encoding);
  ASSERT_EQ(out.size(), kWindowChunks);
  for (size_t k = 0; k < out.size(); ++k) EXPECT_TRUE(Same(out[k], ChunkOf(new_encoding, k, id))) << k;
}

// A leader of a newer term starts over.
TEST(SnapshotSender, AStreamOfANewTermReplacesTheStream) {
  const std::string old_encoding = Bytes(45);
  const std::string new_encoding = Bytes(52).substr(1);  // 51 bytes, shifted pattern
  for (const StreamId id : {StreamId{.term = 4}}) {
    SCOPED_TRACE(
        absl::StrCat("term ", id.term, ", snapshot ", id.index, " at term ", id.snapshot_term));
    SnapshotSender sender(TestConfig());
    ASSERT_EQ(sender.Start(SnapshotMessage(), old_encoding).size(), kWindowChunks);
    ASSERT_EQ(sender.OnAck(Ack(20, 45)).size(), 2u);

    const std::vector<Message> out = sender.Start(SnapshotMessage(id), new_encoding);
    ASSERT_EQ(out.size(), kWindowChunks);
    for (size_t k = 0; k < out.size(); ++k) {
      EXPECT_TRUE(Same(out[k], ChunkOf(new_encoding, k, id))) << k;
    }
    EXPECT_EQ(sender.streams(), 1u);
    // The old stream's acks are about nothing now; the new one's move it.
    EXPECT_TRUE(sender.OnAck(Ack(45, 45)).empty());
    EXPECT_EQ(sender.streams(), 1u);
    EXPECT_EQ(Offsets(sender.OnAck(Ack(10, 51, id))), (Offs{30}));
  }
}

TEST(SnapshotSender, StreamsToDifferentPeersAreIndependent) {
  SnapshotSender sender(TestConfig());
  Message to_three = SnapshotMessage();
  to_three.to = NodeId(3);
  ASSERT_EQ(sender.Start(SnapshotMessage(), Bytes(45)).size(), kWindowChunks);
  const std::vector<Message> three = sender.Start(to_three, Bytes(45));
  ASSERT_EQ(three.size(), kWindowChunks);
  EXPECT_EQ(three[0].to, NodeId(3));
  EXPECT_EQ(sender.streams(), 2u);

  EXPECT_TRUE(sender.OnAck(Ack(45, 45)).empty());  // node 2 has it all
  EXPECT_EQ(sender.streams(), 1u);
  Message from_three = Ack(10, 45);
  from_three.from = NodeId(3);
  const std::vector<Message> more = sender.OnAck(from_three);
  ASSERT_EQ(Offsets(more), (Offs{30}));
  EXPECT_EQ(more[0].to, NodeId(3));
}

// Go-back-N: a stream without progress for three ticks resends its unacknowledged window.
TEST(SnapshotSender, ThreeTicksWithoutProgressResendTheUnacknowledgedWindow) {
  SnapshotSender sender(TestConfig());
  const std::string encoded = Bytes(45);
  ASSERT_EQ(sender.Start(SnapshotMessage(), encoded).size(), kWindowChunks);
  EXPECT_TRUE(sender.Tick().empty());
  EXPECT_TRUE(sender.Tick().empty());
  const std::vector<Message> resent = sender.Tick();
  ASSERT_EQ(resent.size(), kWindowChunks);
  for (size_t k = 0; k < resent.size(); ++k) {
    EXPECT_TRUE(Same(resent[k], ChunkOf(encoded, k))) << k;
  }

  // Progress restarts the count: two ticks after it nothing, the third resends from it.
  EXPECT_TRUE(sender.Tick().empty());
  ASSERT_EQ(Offsets(sender.OnAck(Ack(10, 45))), (Offs{30}));
  EXPECT_TRUE(sender.Tick().empty());
  EXPECT_TRUE(sender.Tick().empty());
  EXPECT_EQ(Offsets(sender.Tick()), (Offs{10, 20, 30}));
}

TEST(SnapshotSender, AStreamIdleForIdleTicksMaxIsDropped) {
  SnapshotSender sender(TestConfig());
  ASSERT_EQ(sender.Start(SnapshotMessage(), Bytes(45)).size(), kWindowChunks);
  size_t resent = 0;
  for (int k = 1; k < kIdleTicksMax; ++k) resent += sender.Tick().size();
  EXPECT_EQ(sender.streams(), 1u);
  EXPECT_EQ(resent, kWindowChunks * ((kIdleTicksMax - 1) / 3));  // at ticks 3, 6, ..., 18

  EXPECT_TRUE(sender.Tick().empty());
  EXPECT_EQ(sender.streams(), 0u);
  EXPECT_TRUE(sender.OnAck(Ack(10, 45)).empty());
  // Raft asks again later: the same snapshot starts afresh.
  EXPECT_EQ(Offsets(sender.Start(SnapshotMessage(), Bytes(45))), (Offs{0, 10, 20}));
}

// ---- receiver -----------------------------------------------------------------------

// Feeds chunks `order` of `encoded` to `receiver` and returns the offsets acknowledged
// after each (-1: no ack); `complete` gets the assembled encoding if one came out.
std::vector<int64_t> Feed(SnapshotReceiver& receiver, const std::string& encoded,
                          const std::vector<size_t>& order,
                          std::optional<std::string>* complete = nullptr, StreamId id = {}) {
  std::vector<int64_t> acks;
  for (size_t k : order) {
    SnapshotReceiver::Result r = receiver.OnChunk(ChunkOf(encoded, k, id), kFollower);
    if (r.ack) {
      EXPECT_TRUE(Same(*r.ack, Ack(r.ack->chunk->offset, encoded.size(), id)));
    }
    acks.push_back(r.ack ? static_cast<int64_t>(r.ack->chunk->offset) : -1);
    if (r.complete) {
      EXPECT_NE(complete, nullptr) << "completed at chunk " << k;
      if (complete != nullptr) *complete = std::move(r.complete);
    }
  }
  return acks;
}

using Acks = std::vector<int64_t>;

TEST(SnapshotReceiver, ChunksInOrderAreAckedAndAssembleTheEncodingOnce) {
  SnapshotReceiver receiver(TestConfig());
  const std::string encoded = Bytes(45);
  std::optional<std::string> complete;
  EXPECT_EQ(Feed(receiver, encoded, {0, 1, 2, 3}, &complete), (Acks{10, 20, 30, 40}));
  EXPECT_FALSE(complete.has_value());
  EXPECT_EQ(receiver.assemblies(), 1u);

  EXPECT_EQ(Feed(receiver, encoded, {4}, &complete), (Acks{45}));
  ASSERT_TRUE(complete.has_value());
  EXPECT_EQ(*complete, encoded);
  EXPECT_EQ(receiver.assemblies(), 0u);
}

TEST(SnapshotReceiver, ChunksPastAGapAreHeldUntilTheGapFills) {
  SnapshotReceiver receiver(TestConfig());
  const std::string encoded = Bytes(45);
  std::optional<std::string> complete;
  // Chunk 2 before the stream's start is the middle of an unknown stream: ignored.
  EXPECT_EQ(Feed(receiver, encoded, {2, 0, 1, 3}, &complete), (Acks{-1, 10, 20, 20}));
  // 3 was held: 2 fills the gap and the ack jumps past both.
  EXPECT_EQ(Feed(receiver, encoded, {2}, &complete), (Acks{40}));
  EXPECT_FALSE(complete.has_value());
  EXPECT_EQ(Feed(receiver, encoded, {4}, &complete), (Acks{45}));
  ASSERT_TRUE(complete.has_value());
  EXPECT_EQ(*complete, encoded);

  SnapshotReceiver reordered(TestConfig());
  complete.reset();
  EXPECT_EQ(Feed(reordered, encoded, {0, 4, 2, 3, 1}, &complete), (Acks{10, 10, 10, 10, 45}));
  ASSERT_TRUE(complete.has_value());
  EXPECT_EQ(*complete, encoded);
  EXPECT_EQ(reordered.assemblies(), 0u);
}

TEST(SnapshotReceiver, AtMostAWindowOfChunksIsHeldPastAGap) {
  SnapshotReceiver receiver(TestConfig());
  const std::string encoded = Bytes(85);  // 9 chunks
  std::optional<std::string> complete;
  ASSERT_EQ(Feed(receiver, encoded, {0, 2, 3, 4, 5}, &complete), (Acks{10, 10, 10, 10, 10}));
  // 2, 3 and 4 were held; 5 was one too many and is gone.
  EXPECT_EQ(Feed(receiver, encoded, {1}, &complete), (Acks{50}));
  EXPECT_EQ(Feed(receiver, encoded, {6}, &complete), (Acks{50}));
  EXPECT_EQ(Feed(receiver, encoded, {5, 7, 8}, &complete), (Acks{70, 80, 85}));
  ASSERT_TRUE(complete.has_value());
  EXPECT_EQ(*complete, encoded);
}

TEST(SnapshotReceiver, DuplicatesAreAckedAgainAndChangeNothing) {
  SnapshotReceiver receiver(TestConfig());
  const std::string encoded = Bytes(45);
  std::optional<std::string> complete;
  EXPECT_EQ(Feed(receiver, encoded, {0, 0, 1, 0, 1}, &complete), (Acks{10, 10, 20, 20, 20}));
  EXPECT_EQ(Feed(receiver, encoded, {3, 3, 2, 3}, &complete), (Acks{20, 20, 40, 40}));
  EXPECT_EQ(receiver.assemblies(), 1u);
  EXPECT_EQ(Feed(receiver, encoded, {4}, &complete), (Acks{45}));
  ASSERT_TRUE(complete.has_value());
  EXPECT_EQ(*complete, encoded);  // no byte twice
}

TEST(SnapshotReceiver, TheMiddleOfAnUnknownStreamIsIgnoredWithoutAnAck) {
  SnapshotReceiver receiver(TestConfig());
  const std::string encoded = Bytes(45);
  EXPECT_EQ(Feed(receiver, encoded, {1, 3, 4}), (Acks{-1, -1, -1}));
  EXPECT_EQ(receiver.assemblies(), 0u);
  // Also after a stream of another snapshot started.
  ASSERT_EQ(Feed(receiver, encoded, {0}, nullptr, {.index = 6}), (Acks{10}));
  EXPECT_EQ(Feed(receiver, encoded, {1}), (Acks{-1}));
  EXPECT_EQ(receiver.assemblies(), 1u);
}

TEST(SnapshotReceiver, AStreamLargerThanSnapshotBytesMaxIsIgnored) {
  SnapshotReceiver receiver(TestConfig());  // snapshot_bytes_max = 1000
  EXPECT_EQ(Feed(receiver, Bytes(1001), {0}), (Acks{-1}));
  EXPECT_EQ(receiver.assemblies(), 0u);
  EXPECT_EQ(Feed(receiver, Bytes(1000), {0}), (Acks{10}));
  EXPECT_EQ(receiver.assemblies(), 1u);
}

TEST(SnapshotReceiver, AnOlderLeadersStreamNeverReplacesANewerOnes) {
  SnapshotReceiver receiver(TestConfig());
  const std::string encoded = Bytes(45);
  const StreamId newer{.term = 3};
  const StreamId older{.term = 2};
  std::optional<std::string> complete;
  ASSERT_EQ(Feed(receiver, encoded, {0}, &complete, newer), (Acks{10}));
  EXPECT_EQ(Feed(receiver, encoded, {0, 1}, &complete, older), (Acks{-1, -1}));
  EXPECT_EQ(receiver.assemblies(), 1u);
  EXPECT_EQ(Feed(receiver, encoded, {1, 2, 3, 4}, &complete, newer), (Acks{20, 30, 40, 45}));
  ASSERT_TRUE(complete.has_value());
  EXPECT_EQ(*complete, encoded);
}

TEST(SnapshotReceiver, ANewerLeadersStreamReplacesAnOlderOne) {
  SnapshotReceiver receiver(TestConfig());
  const std::string old_encoding = Bytes(45);
  const std::string new_encoding = Bytes(52).substr(1);
  const StreamId older{.term = 2};
  const StreamId newer{.term = 3};
  std::optional<std::string> complete;
  ASSERT_EQ(Feed(receiver, old_encoding, {0, 1, 2}, &complete, older), (Acks{10, 20, 30}));
  EXPECT_EQ(Feed(receiver, new_encoding, {0}, &complete, newer), (Acks{10}));
  EXPECT_EQ(receiver.assemblies(), 1u);
  // The older stream is gone: its next chunk is the middle of an unknown stream.
  EXPECT_EQ(Feed(receiver, old_encoding, {3}, &complete, older), (Acks{-1}));
  EXPECT_EQ(Feed(receiver, new_encoding, {1, 2, 3, 4, 5}, &complete, newer),
            (Acks{20, 30, 40, 50, 51}));
  ASSERT_TRUE(complete.has_value());
  EXPECT_EQ(*complete, new_encoding);
}

// The same snapshot encoded to another length (another message around it) is another
// stream: it starts over rather than mix the bytes of two encodings.
TEST(SnapshotReceiver, AStreamOfTheSameSnapshotWithAnotherTotalStartsOver) {
  SnapshotReceiver receiver(TestConfig());
  const std::string first = Bytes(45);
  const std::string second = Bytes(52).substr(1);
  std::optional<std::string> complete;
  ASSERT_EQ(Feed(receiver, first, {0, 1}, &complete), (Acks{10, 20}));
  EXPECT_EQ(Feed(receiver, second, {0}, &complete), (Acks{10}));
  EXPECT_EQ(Feed(receiver, first, {2}, &complete), (Acks{-1}));
  EXPECT_EQ(Feed(receiver, second, {1, 2, 3, 4, 5}, &complete), (Acks{20, 30, 40, 50, 51}));
  EXPECT_EQ(complete, second);
}

TEST(SnapshotReceiver, AssembliesFromDifferentSendersAreIndependent) {
  SnapshotReceiver receiver(TestConfig());
  const std::string encoded = Bytes(45);
  Message from_three = ChunkOf(encoded, 0);
  from_three.from = NodeId(3);
  ASSERT_EQ(Feed(receiver, encoded, {0, 1}), (Acks{10, 20}));
  const SnapshotReceiver::Result r = receiver.OnChunk(from_three, kFollower);
  ASSERT_TRUE(r.ack.has_value());
  EXPECT_EQ(r.ack->to, NodeId(3));
  EXPECT_EQ(r.ack->chunk->offset, 10u);
  EXPECT_EQ(receiver.assemblies(), 2u);
  std::optional<std::string> complete;
  EXPECT_EQ(Feed(receiver, encoded, {2, 3, 4}, &complete), (Acks{30, 40, 45}));
  EXPECT_EQ(complete, encoded);
  EXPECT_EQ(receiver.assemblies(), 1u);
}

TEST(SnapshotReceiver, TickDropsAnAssemblyIdleForIdleTicksMax) {
  SnapshotReceiver receiver(TestConfig());
  const std::string encoded = Bytes(45);
  ASSERT_EQ(Feed(receiver, encoded, {0}), (Acks{10}));
  for (int k = 1; k < kIdleTicksMax; ++k) receiver.Tick();
  EXPECT_EQ(receiver.assemblies(), 1u);
  ASSERT_EQ(Feed(receiver, encoded, {1}), (Acks{20}));  // progress restarts the count
  for (int k = 1; k < kIdleTicksMax; ++k) receiver.Tick();
  EXPECT_EQ(Feed(receiver, encoded, {1, 3}), (Acks{20, 20}));  // no progress: no reset
  EXPECT_EQ(receiver.assemblies(), 1u);
  receiver.Tick();
  EXPECT_EQ(receiver.assemblies(), 0u);
  EXPECT_EQ(Feed(receiver, encoded, {2}), (Acks{-1}));  // forgotten
}

// ---- sender and receiver over a bad network -----------------------------------------

struct Channel {
  double loss_probability = 0.4;
  double duplicate_probability = 0.1;
  bool reorder = true;  // any message in flight may be delivered next; else FIFO
};

struct Delivery {
  std::optional<std::string> complete;  // what the receiver assembled, if it did
  int starts = 0;                       // streams the sender started
  int ticks = 0;                        // ticks it took
  size_t chunks_sent = 0;
};

// Streams `encoded` from a sender to a receiver through `channel`, which loses,
// duplicates and reorders messages, for at most `ticks_max` ticks; each tick delivers as
// many messages as were in flight when it began. Like Raft's probe, a new
// Start follows a dropped stream. Every message passes through the codec.
Delivery StreamThrough(Channel channel, uint64_t seed, const Message& snapshot,
                       const std::string& encoded, int ticks_max) {
  SnapshotStreamConfig config = TestConfig();
  config.window_chunks = 4;
  config.chunk_bytes = 16;
  config.snapshot_bytes_max = 1 << 20;
  SnapshotSender sender(config);
  SnapshotReceiver receiver(config);
  Rng rng(seed);
  Delivery out;
  std::vector<Message> in_flight;
  auto send = [&](std::vector<Message> ms) {
    for (Message& m : ms) {
      out.chunks_sent += m.type == MessageType::kSnapshotChunk ? 1 : 0;
      absl::StatusOr<Message> decoded = raft::DecodeMessage(raft::EncodeMessage(m));
      EXPECT_TRUE(decoded.ok() && *decoded == m) << Show(m) << ": " << decoded.status();
      in_flight.push_back(std::move(m));
    }
  };
  for (; out.ticks < ticks_max && !out.complete; ++out.ticks) {
    if (sender.streams() == 0) {
      ++out.starts;
      send(sender.Start(snapshot, encoded));
    }
    for (size_t round = in_flight.size(); round > 0 && !in_flight.empty() && !out.complete;
         --round) {
      const size_t k = channel.reorder ? rng.Uniform(in_flight.size()) : 0;
      Message m = std::move(in_flight[k]);
      in_flight.erase(in_flight.begin() + static_cast<ptrdiff_t>(k));
      if (rng.Chance(channel.loss_probability)) continue;
      if (rng.Chance(channel.duplicate_probability)) in_flight.push_back(m);
      if (m.type == MessageType::kSnapshotChunkAck) {
        send(sender.OnAck(m));
        continue;
      }
      SnapshotReceiver::Result r = receiver.OnChunk(m, m.to);
      if (r.ack) send({*r.ack});
      out.complete = std::move(r.complete);
    }
    send(sender.Tick());
    receiver.Tick();
  }
  return out;
}

TEST(SnapshotStream, ALossyDuplicatingReorderingChannelAlwaysDeliversTheWholeSnapshot) {
  Message snapshot = SnapshotMessage();
  Rng data_rng(99);
  snapshot.snapshot->data.resize(1000);
  for (char& ch : snapshot.snapshot->data) ch = static_cast<char>(data_rng.Next());
  const std::string encoded = raft::EncodeMessage(snapshot);
  ASSERT_GT(encoded.size(), 60 * 16u);

  int restarts = 0;
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    const Delivery d = StreamThrough({}, seed, snapshot, encoded, /*ticks_max=*/1000);
    ASSERT_TRUE(d.complete.has_value()) << "no complete snapshot; reproduce: seed " << seed;
    ASSERT_EQ(*d.complete, encoded) << "seed " << seed;
    restarts += d.starts - 1;
  }
  // Bad enough that some streams stall, are dropped and start again (the receiver resumes
  // them where it was), but most finish on their first start.
  EXPECT_GT(restarts, 0);
  EXPECT_LT(restarts, 100);

  // A perfect channel: one start, each chunk sent once, a window per round trip (two
  // ticks).
  const Delivery perfect =
      StreamThrough({.loss_probability = 0, .duplicate_probability = 0, .reorder = false}, 1,
                    snapshot, encoded, 1000);
  EXPECT_EQ(perfect.complete, encoded);
  EXPECT_EQ(perfect.starts, 1);
  const size_t chunks = (encoded.size() + 15) / 16;
  EXPECT_EQ(perfect.chunks_sent, chunks);
  EXPECT_LE(perfect.ticks, static_cast<int>(2 * (chunks + 3) / 4));
}

}  // namespace
}  // namespace keel::server
