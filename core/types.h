#pragma once
// Distinct types for distinct numbers (STYLE.md rule 2): a Term is not a LogIndex is
// not a NodeId. Each is a thin wrapper over uint64_t with only the operations that make
// sense for it; `.value` is the escape hatch for encoding and formatting.

#include <chrono>
#include <compare>
#include <cstdint>
#include <ostream>

namespace keel {

template <typename Tag>
struct StrongU64 {
  uint64_t value = 0;

  constexpr StrongU64() = default;
  constexpr explicit StrongU64(uint64_t v) : value(v) {}
  constexpr auto operator<=>(const StrongU64&) const = default;
  constexpr bool IsZero() const { return value == 0; }

  template <typename H>
  friend H AbslHashValue(H h, StrongU64 v) { return H::combine(std::move(h), v.value); }
  friend std::ostream& operator<<(std::ostream& os, StrongU64 v) { return os << v.value; }
};

struct TermTag {};
struct NodeIdTag {};
// Term: a Raft term. Zero means "no term yet".
using Term = StrongU64<TermTag>;
// NodeId: a cluster member. Zero means "nobody" (no leader, no vote).
using NodeId = StrongU64<NodeIdTag>;
inline constexpr NodeId kNoNode{0};

// LogIndex: a position in the Raft log; index 0 is the empty prefix before entry 1.
// It supports the arithmetic a log needs: stepping by counts, and distances.
struct LogIndex {
  uint64_t value = 0;

  constexpr LogIndex() = default;
  constexpr explicit LogIndex(uint64_t v) : value(v) {}
  constexpr auto operator<=>(const LogIndex&) const = default;
  constexpr LogIndex operator+(uint64_t n) const { return LogIndex(value + n); }
  constexpr LogIndex operator-(uint64_t n) const { return LogIndex(value - n); }
  constexpr uint64_t operator-(LogIndex o) const { return value - o.value; }
  LogIndex& operator++() { ++value; return *this; }

  template <typename H>
  friend H AbslHashValue(H h, LogIndex v) { return H::combine(std::move(h), v.value); }
  friend std::ostream& operator<<(std::ostream& os, LogIndex v) { return os << v.value; }
};

inline Term NextTerm(Term t) { return Term(t.value + 1); }

// Time inside keel is a count of nanoseconds on a monotonic clock that the Env owns.
using Nanos = std::chrono::nanoseconds;
using Millis = std::chrono::milliseconds;

}  // namespace keel
