#pragma once
// The service registry over keel (or etcd): what issue 6 calls "the seed's register /
// discover flows done right". The seed's §3 sketch grants a lease, puts one key and
// watches a prefix; it forgets lost leases, disconnects and compaction. This file does not.
//
// Layout. One key per instance, bound to its registrar's lease:
//
//   /services/{service}/instances/{id}  ->  {"addr": "10.0.0.1:8080", "version": "1.0",
//                                             "weight": 1, "zone": "az1", "tags": ["a"],
//                                             "any-other-field": "a string", ...}
//
// Only "addr" is required (the seed's Go program writes {"addr", "version"}). Extra string
// fields are metadata; extra fields of other JSON types are ignored, so that a richer
// writer does not hide its instances. Anything else under /services/ (a key outside the
// layout, a value that is not JSON, lacks "addr" or has a field of the wrong type) is
// reported and skipped, never a crash: these bytes come from whoever can write to the
// cluster.
//
// Registrar. One lease for all its instances (seed §2.3.4: keys that share a lease cost one
// renewal), granted on first use and kept alive by a LeaseKeeper. When the lease is lost
// (the keeper's `lost` callback, or a put answered "requested lease not found"), a new one
// is granted and every instance is put again: on the registrar's thread, with backoff,
// until it succeeds or the registrar closes. Puts of its own keys are repeated on
// indeterminate errors (timed out, leader changed, connection lost): writing the same value
// twice is harmless. Close() revokes the lease (every key goes at once); the destructor
// only stops (the keys go when the TTL runs out).
//
// Discovery. List (linearizable), then watch from the list's revision + 1; the Watcher
// resumes after disconnects from the revision after the last it delivered; when compaction
// passes it, list again, report the differences, and watch from the new revision + 1.
// Nothing is missed, nothing reported twice.
//
// Pickers choose one instance of a snapshot: random, round-robin, weighted.
//
// Threads: every public method may be called from any thread. State is guarded by a mutex
// that is never held while a callback runs or while a call to the server is made.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/types.h"
#include "net/client/client.h"

namespace keel::client {

// ---- layout ---------------------------------------------------------------------------

inline constexpr std::string_view kServicesPrefix = "/services/";
inline constexpr std::string_view kInstancesInfix = "/instances/";

// Limits (STYLE.md rule 5). Each one reached is an InvalidArgument the caller sees.
inline constexpr size_t kServiceNameBytesMax = 128;
inline constexpr size_t kInstanceIdBytesMax = 256;
inline constexpr size_t kAddrBytesMax = 262;       // a 253-byte host name, ':', a port
inline constexpr size_t kFieldBytesMax = 1024;     // version, zone, a tag, a metadata value
inline constexpr size_t kFieldNameBytesMax = 128;  // a metadata field's name
inline constexpr size_t kTagsMax = 64;
inline constexpr size_t kMetadataFieldsMax = 64;
inline constexpr size_t kValueBytesMax = 64 * 1024;         // a value is not parsed beyond this
inline constexpr int64_t kWeightMax = 1'000'000;            // weights summed in int64: no overflow
inline constexpr size_t kInstancesPerServiceMax = 100'000;  // one Discovery's cache
inline constexpr size_t kRegistrarInstancesMax = 10'000;    // one Registrar's instances

struct Instance {
  std::string service;  // the {service} of the key
  std::string id;       // the {id} of the key
  std::string addr;     // host:port (a host name, an IPv4 address or [IPv6])
  std::string version;
  int64_t weight = 1;  // [0, kWeightMax]; 0: the weighted picker never picks it
  std::string zone;
  std::vector<std::string> tags;
  std::map<std::string, std::string> metadata;  // the other string fields of the value

  // From the server, when decoded from a key-value (not part of the value):
  int64_t mod_revision = 0;
  int64_t lease = 0;

  bool operator==(const Instance&) const = default;
};

// Printable ASCII without space or '/', non-empty, at most kServiceNameBytesMax /
// kInstanceIdBytesMax bytes. InvalidArgument names the problem.
absl::Status ValidateServiceName(std::string_view service);
absl::Status ValidateInstanceId(std::string_view id);
// host:port: the port a number in [1, 65535]; the host a name or IPv4 address (letters,
// digits, '.', '-', '_') or an IPv6 address in brackets.
absl::Status ValidateAddress(std::string_view addr);
// Every field against the rules and limits above; metadata names must not be one of the
// known fields' ("addr", "version", "weight", "zone", "tags"); strings must be UTF-8.
absl::Status ValidateInstance(const Instance& instance);

// "/services/{service}/instances/". Requires: ValidateServiceName(service).ok().
std::string InstancesPrefix(std::string_view service);
// "/services/{service}/instances/{id}". Requires: both valid.
std::string InstanceKey(std::string_view service, std::string_view id);

struct InstanceKeyParts {
  std::string service;
  std::string id;
};
// The parts of an instance key; InvalidArgument for a key outside the layout.
absl::StatusOr<InstanceKeyParts> ParseInstanceKey(std::string_view key);

// The JSON value of an instance (its service, id, mod_revision and lease are not in it).
// Requires: ValidateInstance(instance).ok().
std::string EncodeInstanceValue(const Instance& instance);
// The instance stored as (key, value), validated as ValidateInstance does. InvalidArgument
// says what is wrong: a key outside the layout, a value over kValueBytesMax, not JSON, not
// an object, no "addr", a known field of the wrong type, a limit exceeded.
absl::StatusOr<Instance> DecodeInstance(std::string_view key, std::string_view value);

// ---- registrar ------------------------------------------------------------------------

struct RegistrarOptions {
  int64_t ttl_seconds = 10;                 // the shared lease's TTL
  Nanos register_timeout = Millis(10'000);  // one Register / Deregister / recovery round
  Nanos recover_backoff_min = Millis(100);
  Nanos recover_backoff_max = Millis(5'000);
  // After every instance was put again under `new_lease`, replacing a lost `old_lease`:
  // on the registrar's thread, or on a Register's that found the lease gone (after its
  // locks are released; it may call the registrar, but not Close() it or destroy it).
  std::function<void(int64_t old_lease, int64_t new_lease)> recovered;
  // On the registrar's thread, after a recovery round failed (another follows, after a
  // backoff).
  std::function<void(const absl::Status& why)> recovery_failed;
};

class Registrar {
 public:
  // Requires: client outlives the registrar; options.ttl_seconds > 0; the timeouts > 0.
  Registrar(Client& client, RegistrarOptions options = {});
  // Stops the background work and the keeper, waiting for a call in flight (at most
  // register_timeout). Does not revoke the lease: call Close() for that.
  ~Registrar();
  Registrar(const Registrar&) = delete;
  Registrar& operator=(const Registrar&) = delete;

  // Puts the instance's key bound to the registrar's lease. The lease is granted now if
  // there is none; if it is found gone (or a recovery is due), a new one is granted and
  // every instance is put again, this one first (the others' puts, if they fail, are
  // left to the registrar's thread). Registering a (service, id) again replaces its value.
  // Returns once this key is written, or the error: the instance is then not registered
  // (a put whose outcome was unknown may have landed; its key lives until the lease
  // ends). InvalidArgument for a bad instance, FailedPrecondition after Close(),
  // ResourceExhausted for a new instance past kRegistrarInstancesMax.
  absl::Status Register(const Instance& instance);
  // Deletes the key of an instance this registrar registered. NotFound if it did not;
  // on another error the instance is forgotten all the same (its key, if still there,
  // lives until the lease ends).
  absl::Status Deregister(std::string_view service, std::string_view id);
  // Revokes the lease: every key of this registrar is deleted at once. Later Registers
  // fail. A lease already gone is not an error. Call it on shutdown.
  // Requires: not called from the registrar's callbacks.
  absl::Status Close();

  int64_t lease() const;                     // 0: none yet (or being replaced)
  int64_t recoveries() const;                // leases replaced after a loss
  std::vector<Instance> registered() const;  // sorted by key

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- discovery ------------------------------------------------------------------------

// All of them optional. They run one at a time, in revision order, never while the
// discovery's state lock is held (they may call Instances()); they must not destroy the
// Discovery. `added` fires for each instance listed by Start() too, before Start returns.
struct DiscoveryCallbacks {
  std::function<void(const Instance&)> added;
  std::function<void(const Instance& before, const Instance& after)> updated;
  std::function<void(const Instance& last)> removed;  // as last seen
  // A key under the service's prefix that is not a valid instance: skipped.
  std::function<void(std::string_view key, const absl::Status& why)> invalid;
  // The watch (re)connected to `endpoint`.
  std::function<void(const std::string& endpoint)> connected;
  // Compaction passed the watch: listed again at `revision` (changes reported).
  std::function<void(int64_t revision)> relisted;
  // Something the discovery cannot fix by itself (the watch was refused; a relist
  // failed and is retried after a backoff).
  std::function<void(const absl::Status& why)> error;
};

struct DiscoveryOptions {
  Nanos relist_backoff_min = Millis(100);
  Nanos relist_backoff_max = Millis(5'000);
};

class Discovery {
 public:
  // Requires: client outlives the discovery.
  Discovery(Client& client, std::string service, DiscoveryCallbacks callbacks = {},
            DiscoveryOptions options = {});
  // Stops the watch and the relisting: waits for a callback that is running, and for a
  // relisting's call in flight (at most the client's request timeout).
  ~Discovery();
  Discovery(const Discovery&) = delete;
  Discovery& operator=(const Discovery&) = delete;

  // Lists the service's instances, fills the cache (firing `added`), then watches. Errors:
  // InvalidArgument for a bad service name, FailedPrecondition when started already,
  // ResourceExhausted past kInstancesPerServiceMax, the list's error (then Start may be
  // called again).
  absl::Status Start();
  // A snapshot of the cache, sorted by id.
  std::vector<Instance> Instances() const;
  // Every change through this revision is in the cache (0 before Start).
  int64_t revision() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct ServiceSummary {
  std::string service;
  size_t instance_count = 0;
  bool operator==(const ServiceSummary&) const = default;
};
struct ServicesListing {
  std::vector<ServiceSummary> services;  // sorted by name; only services with instances
  size_t invalid_count = 0;              // keys under /services/ skipped as invalid
  int64_t revision = 0;                  // listed at
};
// Every service with its valid instances' count (keelctl services): one linearizable
// listing of /services/, page by page at one revision. ResourceExhausted past
// kInstancesPerServiceMax * 10 keys.
absl::StatusOr<ServicesListing> Services(Client& client);

// ---- pickers --------------------------------------------------------------------------

// Chooses one instance of a snapshot (Discovery::Instances()). NotFound when there is
// nothing to choose. Thread-safe: one picker may serve several threads.
class Picker {
 public:
  virtual ~Picker() = default;
  virtual absl::StatusOr<Instance> Pick(const std::vector<Instance>& instances) = 0;
};

// A seed from std::random_device, for pickers not under test.
uint64_t RandomSeed();

// Uniform over every instance, weight ignored.
class RandomPicker : public Picker {
 public:
  explicit RandomPicker(uint64_t seed = RandomSeed()) : rng_(seed) {}
  absl::StatusOr<Instance> Pick(const std::vector<Instance>& instances) override;

 private:
  std::mutex mu_;
  std::mt19937_64 rng_;  // guarded by mu_
};

// In the order of instance ids, weight ignored: the instance with the smallest id after
// the last one picked, wrapping around. Instances that come and go do not make it skip
// or repeat the others.
class RoundRobinPicker : public Picker {
 public:
  absl::StatusOr<Instance> Pick(const std::vector<Instance>& instances) override;

 private:
  std::mutex mu_;
  std::string last_id_;  // guarded by mu_
  bool picked_ = false;  // guarded by mu_
};

// Each instance with probability weight / (sum of weights); weight 0 is never picked
// (NotFound when every weight is 0).
class WeightedPicker : public Picker {
 public:
  explicit WeightedPicker(uint64_t seed = RandomSeed()) : rng_(seed) {}
  absl::StatusOr<Instance> Pick(const std::vector<Instance>& instances) override;

 private:
  std::mutex mu_;
  std::mt19937_64 rng_;  // guarded by mu_
};

}  // namespace keel::client
