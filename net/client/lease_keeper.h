#pragma once
// LeaseKeeper: keeps leases alive over one LeaseKeepAlive stream, as clientv3's
// KeepAlive does, through leader changes and endpoint loss.
//
// Each kept lease is renewed every TTL/3 (the server's granted TTL, from the last
// answer). When the stream fails, the keeper opens a new one on the client's next
// endpoint after a backoff and renews at once every lease whose renewal is due. A lease
// the server answers with TTL 0 is gone (expired or revoked): the keeper stops keeping
// it and calls its `lost` callback once; so does a lease not renewed before its TTL ran
// out on the keeper's clock (it may be gone; the caller checks and registers again).
//
// A stream that answers nothing for a request timeout is given up as failed. Renewals
// are sent one at a time per lease (never more in flight than leases kept).
//
// Threads: one for the schedule and the writes, and while a stream is open, one that
// reads its answers (gRPC's sync Read blocks). Callbacks run on the first; they may call
// Keep/Forget but must not block for long, nor destroy the keeper. Destruction stops the
// threads and the stream (the leases are not revoked).

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "net/client/client.h"

namespace keel::client {

class LeaseKeeper {
 public:
  // Requires: client outlives the keeper.
  explicit LeaseKeeper(Client& client);
  ~LeaseKeeper();
  LeaseKeeper(const LeaseKeeper&) = delete;
  LeaseKeeper& operator=(const LeaseKeeper&) = delete;

  // The most leases one keeper keeps (STYLE.md rule 5).
  static constexpr size_t kLeasesMax = 10'000;

  // Starts keeping `lease` (granted with `ttl_seconds`) alive: its first renewal goes out
  // at once. `lost` is called once if it is found gone (NotFound: the server answered
  // TTL <= 0) or could not be renewed in time (DeadlineExceeded: no answer to a renewal
  // sent within its TTL, on the keeper's steady clock); the keeper then forgets it.
  // Keeping a lease twice replaces its callback.
  // Errors (and `lost` is never called): InvalidArgument for an id or TTL <= 0,
  // ResourceExhausted when kLeasesMax leases are kept.
  absl::Status Keep(int64_t lease, int64_t ttl_seconds,
                    std::function<void(absl::Status why)> lost);
  // Stops keeping it (it expires by its TTL unless revoked).
  void Forget(int64_t lease);

  // The remaining TTL (seconds) the server reported in its last answer, or NotFound.
  absl::StatusOr<int64_t> LastTtl(int64_t lease) const;
  size_t kept() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::client
