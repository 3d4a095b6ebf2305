#pragma once
// Raft messages to bytes and back (protobuf, core/raft/raft.proto). Decoding treats the
// bytes as hostile: a wrong type, a size over the limits, entries out of order or a
// snapshot on the wrong message type is an error, never a crash.

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "core/raft/message.h"

namespace keel::raft {

struct DecodeLimits {
  size_t message_bytes_max = 64 << 20;  // a whole frame, snapshot included
  size_t entry_count_max = 100000;
  size_t context_bytes_max = 4096;
  uint64_t snapshot_bytes_max = 1ull << 30;  // a snapshot stream's declared total
};

std::string EncodeMessage(const Message& m);
absl::StatusOr<Message> DecodeMessage(std::string_view bytes, const DecodeLimits& limits = {});

}  // namespace keel::raft
