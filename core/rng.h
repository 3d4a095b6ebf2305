#pragma once
// Rng: the one source of randomness the core may use, reached only through the Env.
// xoshiro256** seeded through splitmix64: fast, small state, and the same sequence on
// every platform and standard library. The distributions are ours on purpose: std::
// distributions differ between standard libraries (DESIGN.md, determinism rules).

#include <cstdint>

#include "core/assert.h"

namespace keel {

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& word : state_) word = SplitMix64(seed);
  }

  uint64_t Next() {
    const uint64_t result = Rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = Rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, bound). Requires: bound > 0. Lemire's multiply-shift with rejection,
  // so there is no modulo bias.
  uint64_t Uniform(uint64_t bound) {
    KEEL_ASSERT(bound > 0);
    for (;;) {
      const unsigned __int128 m = static_cast<unsigned __int128>(Next()) * bound;
      const uint64_t low = static_cast<uint64_t>(m);
      if (low >= bound || low >= (-bound) % bound) return static_cast<uint64_t>(m >> 64);
    }
  }

  // Uniform in [lo, hi]. Requires: lo <= hi.
  int64_t Range(int64_t lo, int64_t hi) {
    KEEL_ASSERT(lo <= hi);
    return lo + static_cast<int64_t>(Uniform(static_cast<uint64_t>(hi - lo) + 1));
  }

  // Uniform in [0, 1).
  double Unit() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

  bool Chance(double probability) { return Unit() < probability; }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t SplitMix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  uint64_t state_[4];
};

}  // namespace keel
