#pragma once
// Helpers shared by the Raft unit tests.

#include <cstdint>
#include <string>
#include <vector>

#include "core/raft/message.h"

namespace keel::raft {

inline Entry E(uint64_t index, uint64_t term, std::string data = "") {
  return Entry{.term = Term(term), .index = LogIndex(index), .data = std::move(data)};
}

// A message's header; tests fill in the rest.
inline Message Msg(MessageType type, uint64_t from, uint64_t to, uint64_t term) {
  return Message{.type = type, .from = NodeId(from), .to = NodeId(to), .term = Term(term)};
}

// Entries (1, terms[0]), (2, terms[1]), ...
inline std::vector<Entry> EntriesWithTerms(const std::vector<uint64_t>& terms) {
  std::vector<Entry> out;
  for (size_t k = 0; k < terms.size(); ++k) out.push_back(E(k + 1, terms[k]));
  return out;
}

}  // namespace keel::raft
