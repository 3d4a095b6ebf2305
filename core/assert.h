#pragma once
// KEEL_ASSERT: programmer errors stop the process, in every build type (STYLE.md rule 3).
// Never assert on bytes from a peer, a client or a disk: validate those and return a
// Status instead.

#include <cstdio>
#include <cstdlib>

namespace keel::internal {
[[noreturn]] inline void AssertFailed(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "KEEL_ASSERT failed: %s at %s:%d\n", expr, file, line);
  std::fflush(stderr);
  std::abort();
}
}  // namespace keel::internal

#define KEEL_ASSERT(cond)                                                   \
  do {                                                                      \
    if (!(cond)) [[unlikely]]                                               \
      ::keel::internal::AssertFailed(#cond, __FILE__, __LINE__);            \
  } while (0)
