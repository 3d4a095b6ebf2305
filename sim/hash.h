#pragma once
// Stable 64-bit hashing for trace hashes and the log checker. absl::Hash is seeded per
// process, so it cannot be used where a value must be the same on every run.

#include <cstdint>
#include <string_view>

namespace keel::sim {

// FNV-1a, 64 bit.
class TraceHash {
 public:
  void Add(std::string_view bytes) {
    for (unsigned char c : bytes) {
      h_ ^= c;
      h_ *= 0x100000001b3ULL;
    }
  }
  void Add(uint64_t v) {
    for (int k = 0; k < 8; ++k) {
      h_ ^= static_cast<uint8_t>(v >> (8 * k));
      h_ *= 0x100000001b3ULL;
    }
  }
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

inline uint64_t ChainHash(uint64_t previous, uint64_t term, std::string_view data) {
  TraceHash h;
  h.Add(previous);
  h.Add(term);
  h.Add(data);
  return h.value();
}

}  // namespace keel::sim
