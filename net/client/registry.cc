#include "net/client/registry.h"

#include <algorithm>
#include <condition_variable>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/etcdpb/kv.pb.h"
#include "core/etcdpb/rpc.pb.h"
#include "net/client/lease_keeper.h"
#include "net/client/watcher.h"

namespace keel::client {
namespace pb = etcdserverpb;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Keys per Range page when listing (a large service is listed in several answers).
constexpr int64_t kListPageKeys = 1000;
// A listing restarts this many times when compaction passes it between pages.
constexpr int kListAttemptsMax = 3;
constexpr std::string_view kLeaseNotFound = "requested lease not found";
constexpr std::string_view kCompacted = "required revision has been compacted";

absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// ---- validation -----------------------------------------------------------------------

absl::Status ValidateName(std::string_view what, std::string_view name, size_t bytes_max) {
  const absl::string_view w = AbslView(what);
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(w, " is empty"));
  if (name.size() > bytes_max) {
    return absl::InvalidArgumentError(
        absl::StrCat(w, " is ", name.size(), " bytes long; at most ", bytes_max));
  }
  for (char c : name) {
    if (c == '/') {
      return absl::InvalidArgumentError(absl::StrCat(w, " \"", AbslView(name), "\" contains '/'"));
    }
    // Printable ASCII, no space: names appear in keys, command lines and logs.
    if (c <= ' ' || c > '~') {
      return absl::InvalidArgumentError(
          absl::StrCat(w, " contains a byte that is not printable ASCII (or a space)"));
    }
  }
  return absl::OkStatus();
}

bool IsUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t extra = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (extra > s.size() - i - 1) return false;  // truncated
    for (size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

absl::Status ValidateField(absl::string_view what, std::string_view value) {
  if (value.size() > kFieldBytesMax) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is ", value.size(), " bytes long; at most ", kFieldBytesMax));
  }
  if (!IsUtf8(value)) return absl::InvalidArgumentError(absl::StrCat(what, " is not UTF-8"));
  return absl::OkStatus();
}

bool IsKnownField(std::string_view name) {
  return name == "addr" || name == "version" || name == "weight" || name == "zone" ||
         name == "tags";
}

absl::Status ValidateMetadata(const std::map<std::string, std::string>& metadata) {
  if (metadata.size() > kMetadataFieldsMax) {
    return absl::InvalidArgumentError(
        absl::StrCat(metadata.size(), " metadata fields; at most ", kMetadataFieldsMax));
  }
  for (const auto& [name, value] : metadata) {
    if (name.empty() || name.size() > kFieldNameBytesMax || !IsUtf8(name)) {
      return absl::InvalidArgumentError(absl::StrCat("a metadata field name is empty, over ",
                                                     kFieldNameBytesMax, " bytes or not UTF-8"));
    }
    if (IsKnownField(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata field \"", name, "\" is the name of a known field"));
    }
    if (absl::Status st = ValidateField(absl::StrCat("metadata \"", name, "\""), value); !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateServiceName(std::string_view service) {
  return ValidateName("service name", service, kServiceNameBytesMax);
}

absl::Status ValidateInstanceId(std::string_view id) {
  return ValidateName("instance id", id, kInstanceIdBytesMax);
}

absl::Status ValidateAddress(std::string_view addr) {
  auto bad = [addr](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", AbslView(addr.substr(0, 64)), "\": ", why));
  };
  if (addr.size() > kAddrBytesMax) return bad("too long");
  std::string_view host, port;
  if (absl::StartsWith(AbslView(addr), "[")) {
    const size_t close = addr.find("]:");
    if (close == std::string_view::npos) return bad("not [ipv6]:port");
    host = addr.substr(1, close - 1);
    port = addr.substr(close + 2);
    const bool ipv6 = std::all_of(host.begin(), host.end(), [](char c) {
      return absl::ascii_isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
    });
    if (host.empty() || !ipv6) return bad("not an IPv6 address in brackets");
  } else {
    const size_t colon = addr.rfind(':');
    if (colon == std::string_view::npos) return bad("no :port");
    host = addr.substr(0, colon);
    port = addr.substr(colon + 1);
    const bool name = std::all_of(host.begin(), host.end(), [](char c) {
      return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
    });
    if (host.empty()) return bad("no host");
    if (!name) return bad("the host is not a name or an IP address (IPv6 goes in brackets)");
  }
  uint32_t number = 0;
  const bool digits =
      !port.empty() && port.size() <= 5 && std::all_of(port.begin(), port.end(), [](char c) {
        return absl::ascii_isdigit(static_cast<unsigned char>(c));
      });
  if (!digits || !absl::SimpleAtoi(AbslView(port), &number) || number == 0 || number > 65535) {
    return bad("the port is not a number in [1, 65535]");
  }
  return absl::OkStatus();
}

absl::Status ValidateInstance(const Instance& in) {
  if (absl::Status st = ValidateServiceName(in.service); !st.ok()) return st;
  if (absl::Status st = ValidateInstanceId(in.id); !st.ok()) return st;
  if (absl::Status st = ValidateAddress(in.addr); !st.ok()) return st;
  if (absl::Status st = ValidateField("version", in.version); !st.ok()) return st;
  if (absl::Status st = ValidateField("zone", in.zone); !st.ok()) return st;
  if (in.weight < 0 || in.weight > kWeightMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight ", in.weight, " is not in [0, ", kWeightMax, "]"));
  }
  if (in.tags.size() > kTagsMax) {
    return absl::InvalidArgumentError(absl::StrCat(in.tags.size(), " tags; at most ", kTagsMax));
  }
  for (const std::string& tag : in.tags) {
    if (tag.empty()) return absl::InvalidArgumentError("a tag is empty");
    if (absl::Status st = ValidateField("a tag", tag); !st.ok()) return st;
  }
  return ValidateMetadata(in.metadata);
}

// ---- layout -----------------------------------------------------------------------------

std::string InstancesPrefix(std::string_view service) {
  KEEL_ASSERT(ValidateServiceName(service).ok());
  return absl::StrCat(AbslView(kServicesPrefix), AbslView(service), AbslView(kInstancesInfix));
}

std::string InstanceKey(std::string_view service, std::string_view id) {
  KEEL_ASSERT(ValidateInstanceId(id).ok());
  return absl::StrCat(InstancesPrefix(service), AbslView(id));
}

absl::StatusOr<InstanceKeyParts> ParseInstanceKey(std::string_view key) {
  auto outside = [key](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("key \"", absl::CHexEscape(AbslView(key.substr(0, 300))),
                     "\" is outside the layout /services/{service}/instances/{id}: ", why));
  };
  if (!absl::StartsWith(AbslView(key), AbslView(kServicesPrefix))) {
    return outside("no /services/ prefix");
  }
  std::string_view rest = key.substr(kServicesPrefix.size());
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return outside("no /instances/ after the service");
  const std::string_view service = rest.substr(0, slash);
  rest = rest.substr(slash);
  if (!absl::StartsWith(AbslView(rest), AbslView(kInstancesInfix))) {
    return outside("no /instances/ after the service");
  }
  const std::string_view id = rest.substr(kInstancesInfix.size());
  if (absl::Status st = ValidateServiceName(service); !st.ok()) return outside(st.message());
  if (absl::Status st = ValidateInstanceId(id); !st.ok()) return outside(st.message());
  return InstanceKeyParts{.service = std::string(service), .id = std::string(id)};
}

std::string EncodeInstanceValue(const Instance& in) {
  KEEL_ASSERT(ValidateInstance(in).ok());
  Json j = Json::object();
  for (const auto& [name, value] : in.metadata) j[name] = value;
  j["addr"] = in.addr;
  if (!in.version.empty()) j["version"] = in.version;
  j["weight"] = in.weight;
  if (!in.zone.empty()) j["zone"] = in.zone;
  if (!in.tags.empty()) j["tags"] = in.tags;
  // Validated UTF-8 above; `replace` only so that dump() can never throw.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

namespace {

// One known field of a decoded value into `in`; InvalidArgument for a wrong type.
absl::Status DecodeKnownField(const std::string& name, const Json& v, Instance* in) {
  auto wrong = [&name](absl::string_view type) {
    return absl::InvalidArgumentError(absl::StrCat("field \"", name, "\" is not ", type));
  };
  if (name == "weight") {
    if (v.is_number_unsigned()) {
      const uint64_t w = v.get<uint64_t>();
      if (w > static_cast<uint64_t>(kWeightMax)) return wrong("a weight in [0, 1000000]");
      in->weight = static_cast<int64_t>(w);
      return absl::OkStatus();
    }
    if (!v.is_number_integer()) return wrong("an integer");
    in->weight = v.get<int64_t>();  // negative: ValidateInstance refuses it
    return absl::OkStatus();
  }
  if (name == "tags") {
    if (!v.is_array()) return wrong("an array of strings");
    if (v.size() > kTagsMax) return wrong("an array of at most 64 tags");
    for (const Json& tag : v) {
      if (!tag.is_string()) return wrong("an array of strings");
      in->tags.push_back(tag.get<std::string>());
    }
    return absl::OkStatus();
  }
  if (!v.is_string()) return wrong("a string");
  std::string* field = name == "addr" ? &in->addr : name == "version" ? &in->version : &in->zone;
  *field = v.get<std::string>();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Instance> DecodeInstance(std::string_view key, std::string_view value) {
  absl::StatusOr<InstanceKeyParts> parts = ParseInstanceKey(key);
  if (!parts.ok()) return parts.status();
  auto bad = [&key](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("the value of ", absl::CHexEscape(AbslView(key)), " ", why));
  };
  if (value.size() > kValueBytesMax) {
    return bad(absl::StrCat("is ", value.size(), " bytes long; at most ", kValueBytesMax));
  }
  // No exceptions: a parse error gives a discarded value.
  const Json j = Json::parse(value.begin(), value.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return bad("is not JSON");
  if (!j.is_object()) return bad("is not a JSON object");
  Instance in{.service = std::move(parts->service), .id = std::move(parts->id)};
  bool has_addr = false;
  for (const auto& [name, v] : j.items()) {
    if (IsKnownField(name)) {
      if (absl::Status st = DecodeKnownField(name, v, &in); !st.ok()) return bad(st.message());
      has_addr = has_addr || name == "addr";
    } else if (v.is_string()) {
      in.metadata[name] = v.get<std::string>();
    }  // other types: another writer's fields, ignored (see the header)
  }
  if (!has_addr) return bad("has no \"addr\"");
  if (absl::Status st = ValidateInstance(in); !st.ok()) return bad(st.message());
  return in;
}

namespace {

absl::StatusOr<Instance> DecodeKeyValue(const mvccpb::KeyValue& kv) {
  absl::StatusOr<Instance> in = DecodeInstance(kv.key(), kv.value());
  if (in.ok()) {
    in->mod_revision = kv.mod_revision();
    in->lease = kv.lease();
  }
  return in;
}

bool IsLeaseNotFound(const absl::Status& st) {
  return absl::IsNotFound(st) && absl::StrContains(st.message(), AbslView(kLeaseNotFound));
}

bool IsCompacted(const absl::Status& st) {
  return absl::IsOutOfRange(st) && absl::StrContains(st.message(), AbslView(kCompacted));
}

// Exponential from `min` to `max` over rounds 0, 1, ..., jittered into [half, whole].
Nanos Backoff(Nanos min, Nanos max, int round, std::mt19937_64& rng) {
  KEEL_ASSERT(min > Nanos(0) && min <= max && round >= 0);
  Nanos whole = min;
  for (int i = 0; i < round && whole < max; ++i) whole *= 2;
  whole = std::min(whole, max);
  const int64_t half = whole.count() / 2;
  return Nanos(half + static_cast<int64_t>(rng() % static_cast<uint64_t>(half + 1)));
}

struct Listing {
  std::vector<mvccpb::KeyValue> kvs;  // in key order
  int64_t revision = 0;               // all of them as of this revision
};

// Every key with `prefix` as of one revision (linearizable), kListPageKeys per answer.
// A compaction between pages restarts the listing (at most kListAttemptsMax times).
absl::StatusOr<Listing> ListPrefix(Client& client, std::string_view prefix, size_t keys_max) {
  const std::string end = PrefixEnd(prefix);
  absl::Status last;
  for (int attempt = 0; attempt < kListAttemptsMax; ++attempt) {
    Listing out;
    std::string from(prefix);
    while (true) {
      pb::RangeRequest r;
      r.set_key(from);
      r.set_range_end(end);
      r.set_limit(kListPageKeys);
      r.set_revision(out.revision);  // 0 for the first page: now
      absl::StatusOr<pb::RangeResponse> page = client.Range(r);
      if (!page.ok()) {
        last = page.status();
        break;
      }
      if (out.revision == 0) out.revision = page->header().revision();
      for (mvccpb::KeyValue& kv : *page->mutable_kvs()) out.kvs.push_back(std::move(kv));
      if (out.kvs.size() > keys_max) {
        return absl::ResourceExhaustedError(
            absl::StrCat("more than ", keys_max, " keys under ", AbslView(prefix), ": not listed"));
      }
      if (!page->more() || page->kvs_size() == 0) return out;
      from = out.kvs.back().key() + std::string(1, '\0');
    }
    if (!IsCompacted(last) || out.revision == 0) return last;
  }
  return last;
}

}  // namespace

// ---- registrar ----------------------------------------------------------------------------

// Invariant: an instance in `instances` has its key bound to `lease`, unless `dirty` (a
// recovery is due: the registrar's thread, or the next Register, puts them all again).
struct Registrar::Impl {
  Impl(Client& c, RegistrarOptions o)
      : client(c),
        options(std::move(o)),
        keeper(std::make_unique<LeaseKeeper>(c)),
        rng(RandomSeed()) {}

  // What a recovery did. `status` is the first instance's put (when one was named), or
  // the whole round's. `replaced`/`by`: a lost lease whose instances are now all under
  // `by` (for Report; 0: nothing to report).
  struct Outcome {
    absl::Status status;
    int64_t replaced = 0;
    int64_t by = 0;
  };

  void Run();
  // Puts `instance` (already in `instances`) under the lease, recovering first if due.
  Outcome WriteOne(const Instance& instance, Clock::time_point deadline);
  // Replaces the lease if it is gone (or there is none), then puts every instance,
  // `first` (if not null) before the others. Requires: op_mu held.
  Outcome Recover(Clock::time_point deadline, const Instance* first);
  absl::StatusOr<int64_t> GrantLease(Clock::time_point deadline);
  // One write of our own key, repeated on indeterminate errors until `deadline`.
  absl::Status RepeatOwnWrite(const std::function<absl::Status(CallOptions)>& attempt,
                              Clock::time_point deadline);
  absl::Status PutOwnKey(const Instance& instance, int64_t lease, Clock::time_point deadline);
  void OnLost(int64_t lease);
  // Counts a completed replacement and calls `recovered`. Requires: no lock held.
  void Report(const Outcome& done);
  bool Halted() const {
    std::lock_guard lock(mu);
    return stopping || closed;
  }
  // Sleeps for `pause` unless halted first; returns whether still running.
  bool PauseUnlessHalted(Nanos pause) {
    std::unique_lock lock(mu);
    return !cv.wait_for(lock, pause, [this] { return stopping || closed; });
  }
  Nanos NextBackoff(int round) {
    std::lock_guard lock(mu);
    return Backoff(options.recover_backoff_min, options.recover_backoff_max, round, rng);
  }
  void JoinThread() {
    std::lock_guard lock(join_mu);
    if (thread.joinable()) thread.join();
  }

  Client& client;
  const RegistrarOptions options;
  std::unique_ptr<LeaseKeeper> keeper;

  // Serializes what talks to the server on the registrar's behalf (Register, Deregister,
  // recovery, Close): held across calls, taken before `mu`, never held in callbacks.
  std::mutex op_mu;

  mutable std::mutex mu;
  std::condition_variable cv;
  // Guarded by mu:
  std::map<std::string, Instance> instances;  // by key
  int64_t lease = 0;                          // the lease our keys are bound to (0: none)
  bool lease_gone = false;                    // `lease` is lost, or may be: replace it
  bool dirty = false;    // some instances may not be bound to `lease`: put them all
  int64_t replaced = 0;  // the lost lease a recovery under way replaces (0: none)
  bool closed = false;
  bool stopping = false;
  int64_t recoveries = 0;
  std::mt19937_64 rng;  // backoff jitter

  std::mutex join_mu;
  std::thread thread;
};

void Registrar::Impl::OnLost(int64_t lost) {
  // The keeper's thread (or ours): nothing slow here (lease_keeper.h).
  std::lock_guard lock(mu);
  if (lease != lost) return;  // a lease replaced already
  lease_gone = true;
  dirty = true;
  cv.notify_all();
}

absl::Status Registrar::Impl::RepeatOwnWrite(
    const std::function<absl::Status(CallOptions)>& attempt, Clock::time_point deadline) {
  // Our own key, our own value (or its deletion): repeating it after an indeterminate
  // error is harmless, unlike a counter's increment (client.h).
  int round = 0;
  while (true) {
    const Nanos left = deadline - Clock::now();
    if (left <= Nanos(0)) return absl::DeadlineExceededError("keel registrar: deadline passed");
    absl::Status st = attempt({.timeout = std::min<Nanos>(left, client.config().request_timeout)});
    if (st.ok()) return st;
    // An attempt that ran out of its own time (a proposal forwarded to a leader that just
    // died waits out the server's request timeout) is indeterminate too: repeat it while
    // the registrar's deadline allows.
    if (!ShouldRetry(st, /*idempotent=*/true) && !absl::IsDeadlineExceeded(st)) return st;
    if (Clock::now() >= deadline) return st;
    if (!PauseUnlessHalted(std::min<Nanos>(NextBackoff(round++), deadline - Clock::now()))) {
      return absl::CancelledError(
          absl::StrCat("keel registrar: closing; last error: ", st.ToString()));
    }
  }
}

absl::Status Registrar::Impl::PutOwnKey(const Instance& instance, int64_t with_lease,
                                        Clock::time_point deadline) {
  pb::PutRequest r;
  r.set_key(InstanceKey(instance.service, instance.id));
  r.set_value(EncodeInstanceValue(instance));
  r.set_lease(with_lease);
  absl::Status st =
      RepeatOwnWrite([&](CallOptions o) { return client.Put(r, o).status(); }, deadline);
  // Gone behind our back (revoked, or expired while we could not renew it).
  if (IsLeaseNotFound(st)) OnLost(with_lease);
  return st;
}

absl::StatusOr<int64_t> Registrar::Impl::GrantLease(Clock::time_point deadline) {
  pb::LeaseGrantRequest r;
  r.set_ttl(options.ttl_seconds);
  int64_t granted = 0;
  // A grant repeated after an indeterminate error may leave a lease nobody renews: it
  // expires by its TTL and holds no key.
  absl::Status st = RepeatOwnWrite(
      [&](CallOptions o) {
        absl::StatusOr<pb::LeaseGrantResponse> got = client.LeaseGrant(r, o);
        if (!got.ok()) return got.status();
        if (!got->error().empty()) return absl::InternalError(got->error());
        if (got->id() <= 0) {
          return absl::InternalError(absl::StrCat("granted a bad lease id ", got->id()));
        }
        granted = got->id();
        return absl::OkStatus();
      },
      deadline);
  if (!st.ok()) return st;
  return granted;
}

Registrar::Impl::Outcome Registrar::Impl::Recover(Clock::time_point deadline,
                                                  const Instance* first) {
  int64_t current = 0;
  bool gone = false;
  std::vector<Instance> all;
  {
    std::lock_guard lock(mu);
    current = lease;
    gone = lease_gone;
    if (first != nullptr) all.push_back(*first);
    for (const auto& [key, in] : instances) {
      if (first == nullptr || in.service != first->service || in.id != first->id) {
        all.push_back(in);
      }
    }
    if (all.empty() && (current == 0 || gone)) {
      // Nothing to put: the next Register grants a lease.
      lease = 0;
      lease_gone = dirty = false;
      replaced = 0;
    }
  }
  if (current != 0 && gone) keeper->Forget(current);
  if (all.empty() && (current == 0 || gone)) return {};
  int64_t use = current;
  if (current == 0 || gone) {
    absl::StatusOr<int64_t> granted = GrantLease(deadline);
    if (!granted.ok()) return {.status = granted.status()};
    use = *granted;
    {
      std::lock_guard lock(mu);
      if (current != 0 && replaced == 0) replaced = current;
      lease = use;
      lease_gone = false;
      dirty = true;
    }
    // Its first renewal goes out at once; a loss from now on is this lease's.
    absl::Status kept =
        keeper->Keep(use, options.ttl_seconds, [this, use](absl::Status) { OnLost(use); });
    if (!kept.ok()) return {.status = kept};
  }
  for (size_t i = 0; i < all.size(); ++i) {
    absl::Status st = PutOwnKey(all[i], use, deadline);
    if (st.ok()) continue;
    // The named instance's Register fails with its put; the others are left to the
    // registrar's thread (still dirty).
    if (i > 0 && first != nullptr) {
      std::lock_guard lock(mu);
      cv.notify_all();
      return {};
    }
    return {.status = st};
  }
  Outcome out;
  std::lock_guard lock(mu);
  if (lease == use && !lease_gone) {
    dirty = false;
    out = {.replaced = replaced, .by = use};
    replaced = 0;
  }
  return out;
}

Registrar::Impl::Outcome Registrar::Impl::WriteOne(const Instance& instance,
                                                   Clock::time_point deadline) {
  // Requires: op_mu held; `instance` is in `instances`.
  int64_t current = 0;
  {
    std::lock_guard lock(mu);
    if (lease != 0 && !lease_gone && !dirty) current = lease;
  }
  if (current == 0) return Recover(deadline, &instance);
  absl::Status st = PutOwnKey(instance, current, deadline);
  if (IsLeaseNotFound(st)) return Recover(deadline, &instance);
  return {.status = st};
}

void Registrar::Impl::Run() {
  int round = 0;
  while (true) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [this] {
        return stopping || closed || ((lease_gone || dirty) && !instances.empty());
      });
      if (stopping || closed) return;
    }
    Outcome done;
    {
      std::lock_guard op(op_mu);
      if (Halted()) return;
      done = Recover(Clock::now() + options.register_timeout, nullptr);
    }
    if (!done.status.ok()) {
      if (Halted()) return;
      if (options.recovery_failed) options.recovery_failed(done.status);
      if (!PauseUnlessHalted(NextBackoff(round++))) return;
      continue;
    }
    round = 0;
    Report(done);
  }
}

void Registrar::Impl::Report(const Outcome& done) {
  if (done.replaced == 0 || done.by == 0) return;
  {
    std::lock_guard lock(mu);
    ++recoveries;
  }
  if (options.recovered) options.recovered(done.replaced, done.by);
}

Registrar::Registrar(Client& client, RegistrarOptions options)
    : impl_(std::make_unique<Impl>(client, std::move(options))) {
  const RegistrarOptions& o = impl_->options;
  KEEL_ASSERT(o.ttl_seconds > 0);
  KEEL_ASSERT(o.register_timeout > Nanos(0));
  KEEL_ASSERT(o.recover_backoff_min > Nanos(0) && o.recover_backoff_min <= o.recover_backoff_max);
  impl_->thread = std::thread([impl = impl_.get()] { impl->Run(); });
}

Registrar::~Registrar() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->JoinThread();
  // After the thread: it uses the keeper. The keeper's callbacks only touch mu and cv.
  impl_->keeper.reset();
}

absl::Status Registrar::Register(const Instance& instance) {
  if (absl::Status st = ValidateInstance(instance); !st.ok()) return st;
  Instance in = instance;
  in.mod_revision = 0;
  in.lease = 0;
  const std::string key = InstanceKey(in.service, in.id);
  std::unique_lock op(impl_->op_mu);
  std::optional<Instance> previous;
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->closed) return absl::FailedPreconditionError("keel registrar: closed");
    auto it = impl_->instances.find(key);
    if (it != impl_->instances.end()) {
      previous = it->second;
    } else if (impl_->instances.size() >= kRegistrarInstancesMax) {
      return absl::ResourceExhaustedError(
          absl::StrCat("keel registrar: at most ", kRegistrarInstancesMax, " instances"));
    }
    impl_->instances[key] = in;
  }
  const Impl::Outcome done = impl_->WriteOne(in, Clock::now() + impl_->options.register_timeout);
  if (!done.status.ok()) {
    std::lock_guard lock(impl_->mu);
    if (previous) {
      impl_->instances[key] = *previous;
    } else {
      impl_->instances.erase(key);
    }
    impl_->cv.notify_all();  // a recovery left due is the registrar thread's now
    return done.status;
  }
  op.unlock();
  impl_->Report(done);
  return absl::OkStatus();
}

absl::Status Registrar::Deregister(std::string_view service, std::string_view id) {
  if (absl::Status st = ValidateServiceName(service); !st.ok()) return st;
  if (absl::Status st = ValidateInstanceId(id); !st.ok()) return st;
  const std::string key = InstanceKey(service, id);
  std::lock_guard op(impl_->op_mu);
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->closed) return absl::FailedPreconditionError("keel registrar: closed");
    if (impl_->instances.erase(key) == 0) {
      return absl::NotFoundError(absl::StrCat("keel registrar: ", key, " is not registered here"));
    }
  }
  pb::DeleteRangeRequest r;
  r.set_key(key);
  return impl_->RepeatOwnWrite(
      [&](CallOptions o) { return impl_->client.DeleteRange(r, o).status(); },
      Clock::now() + impl_->options.register_timeout);
}

absl::Status Registrar::Close() {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->closed) return absl::OkStatus();
    impl_->closed = true;
  }
  impl_->cv.notify_all();
  impl_->JoinThread();
  std::lock_guard op(impl_->op_mu);
  int64_t revoke = 0;
  {
    std::lock_guard lock(impl_->mu);
    revoke = impl_->lease;
    impl_->lease = 0;
    impl_->instances.clear();
  }
  if (revoke == 0) return absl::OkStatus();
  impl_->keeper->Forget(revoke);
  pb::LeaseRevokeRequest r;
  r.set_id(revoke);
  // Retried by the client (a repeat is at worst "not found").
  absl::StatusOr<pb::LeaseRevokeResponse> got =
      impl_->client.LeaseRevoke(r, {.timeout = impl_->options.register_timeout});
  if (!got.ok() && !IsLeaseNotFound(got.status())) return got.status();
  return absl::OkStatus();  // revoked, or gone already (with its keys)
}

int64_t Registrar::lease() const {
  std::lock_guard lock(impl_->mu);
  return impl_->lease_gone ? 0 : impl_->lease;
}

int64_t Registrar::recoveries() const {
  std::lock_guard lock(impl_->mu);
  return impl_->recoveries;
}

std::vector<Instance> Registrar::registered() const {
  std::lock_guard lock(impl_->mu);
  std::vector<Instance> out;
  for (const auto& [key, in] : impl_->instances) out.push_back(in);
  return out;
}

// ---- discovery ----------------------------------------------------------------------------

namespace {

// One change for the callbacks, computed under the lock, fired after it.
struct Change {
  enum class Kind { kAdded, kUpdated, kRemoved, kInvalid } kind;
  Instance before;  // updated, removed
  Instance after;   // added, updated
  std::string key;  // invalid
  absl::Status why;
};

}  // namespace

struct Discovery::Impl {
  Impl(Client& c, std::string s, DiscoveryCallbacks cb, DiscoveryOptions o)
      : client(c), service(std::move(s)), callbacks(std::move(cb)), options(o), rng(RandomSeed()) {}

  void Run();
  void OnEvents(const std::vector<mvccpb::Event>& events);
  void OnCompacted();
  // Under mu: the change one event makes to the cache.
  void ApplyLocked(const mvccpb::Event& event, std::vector<Change>* changes);
  // A listing as a cache (invalid keys to `changes`).
  std::map<std::string, Instance> CacheOf(const Listing& listing, std::vector<Change>* changes);
  // Under mu: the cache becomes `next`; the differences go to `changes`.
  void ReplaceLocked(std::map<std::string, Instance> next, std::vector<Change>* changes);
  void Fire(const std::vector<Change>& changes);
  std::unique_ptr<Watcher> NewWatcher(int64_t start_revision);
  bool Relist();

  Client& client;
  const std::string service;
  const DiscoveryCallbacks callbacks;
  const DiscoveryOptions options;

  std::mutex start_mu;    // one Start at a time
  std::mutex deliver_mu;  // one delivery (apply, then callbacks) at a time: revision order
  mutable std::mutex mu;
  std::condition_variable cv;
  // Guarded by mu:
  std::map<std::string, Instance> cache;  // by id
  int64_t revision = 0;
  bool started = false;
  bool stopping = false;
  bool relist = false;  // compaction passed the watch
  std::mt19937_64 rng;

  // Start's, then the discovery thread's; the destructor's after joining that thread.
  std::unique_ptr<Watcher> watcher;
  std::thread thread;
};

void Discovery::Impl::Fire(const std::vector<Change>& changes) {
  for (const Change& c : changes) {
    switch (c.kind) {
      case Change::Kind::kAdded:
        if (callbacks.added) callbacks.added(c.after);
        break;
      case Change::Kind::kUpdated:
        if (callbacks.updated) callbacks.updated(c.before, c.after);
        break;
      case Change::Kind::kRemoved:
        if (callbacks.removed) callbacks.removed(c.before);
        break;
      case Change::Kind::kInvalid:
        if (callbacks.invalid) callbacks.invalid(c.key, c.why);
        break;
    }
  }
}

void Discovery::Impl::ApplyLocked(const mvccpb::Event& event, std::vector<Change>* changes) {
  const mvccpb::KeyValue& kv = event.kv();
  absl::StatusOr<InstanceKeyParts> parts = ParseInstanceKey(kv.key());
  const bool put = event.type() == mvccpb::Event::PUT;
  if (!parts.ok() || parts->service != service) {
    // Nothing of ours was at that key: a deletion is nothing to report.
    if (put)
      changes->push_back(
          {.kind = Change::Kind::kInvalid,
           .key = kv.key(),
           .why = parts.ok() ? absl::InvalidArgumentError("other service") : parts.status()});
    return;
  }
  auto it = cache.find(parts->id);
  absl::StatusOr<Instance> next =
      put ? DecodeKeyValue(kv) : absl::StatusOr<Instance>(absl::NotFoundError("deleted"));
  if (put && !next.ok()) {
    changes->push_back({.kind = Change::Kind::kInvalid, .key = kv.key(), .why = next.status()});
  }
  if (!next.ok()) {
    // Deleted, or overwritten with something that is no instance: gone either way.
    if (it != cache.end()) {
      changes->push_back({.kind = Change::Kind::kRemoved, .before = std::move(it->second)});
      cache.erase(it);
    }
    return;
  }
  if (it != cache.end()) {
    changes->push_back({.kind = Change::Kind::kUpdated, .before = it->second, .after = *next});
    it->second = *std::move(next);
    return;
  }
  if (cache.size() >= kInstancesPerServiceMax) {
    changes->push_back({.kind = Change::Kind::kInvalid,
                        .key = kv.key(),
                        .why = absl::ResourceExhaustedError(absl::StrCat(
                            "more than ", kInstancesPerServiceMax, " instances: skipped"))});
    return;
  }
  changes->push_back({.kind = Change::Kind::kAdded, .after = *next});
  cache.emplace(parts->id, *std::move(next));
}

void Discovery::Impl::OnEvents(const std::vector<mvccpb::Event>& events) {
  // The watcher's thread.
  std::lock_guard deliver(deliver_mu);
  std::vector<Change> changes;
  {
    std::lock_guard lock(mu);
    if (stopping) return;
    for (const mvccpb::Event& e : events) {
      ApplyLocked(e, &changes);
      revision = std::max(revision, e.kv().mod_revision());
    }
  }
  Fire(changes);
}

void Discovery::Impl::OnCompacted() {
  // The watcher's thread: it stops after this; the discovery thread lists again.
  std::lock_guard lock(mu);
  relist = true;
  cv.notify_all();
}

std::map<std::string, Instance> Discovery::Impl::CacheOf(const Listing& listing,
                                                         std::vector<Change>* changes) {
  std::map<std::string, Instance> out;
  for (const mvccpb::KeyValue& kv : listing.kvs) {
    absl::StatusOr<Instance> in = DecodeKeyValue(kv);
    if (in.ok() && in->service != service) in = absl::InvalidArgumentError("other service");
    if (!in.ok()) {
      changes->push_back({.kind = Change::Kind::kInvalid, .key = kv.key(), .why = in.status()});
      continue;
    }
    std::string id = in->id;
    out.emplace(std::move(id), *std::move(in));
  }
  return out;
}

void Discovery::Impl::ReplaceLocked(std::map<std::string, Instance> next,
                                    std::vector<Change>* changes) {
  // Both maps are sorted by id: one merge walk finds the differences.
  auto a = cache.begin();
  auto b = next.begin();
  while (a != cache.end() || b != next.end()) {
    if (b == next.end() || (a != cache.end() && a->first < b->first)) {
      changes->push_back({.kind = Change::Kind::kRemoved, .before = a->second});
      ++a;
    } else if (a == cache.end() || b->first < a->first) {
      changes->push_back({.kind = Change::Kind::kAdded, .after = b->second});
      ++b;
    } else {
      if (!(a->second == b->second)) {
        changes->push_back(
            {.kind = Change::Kind::kUpdated, .before = a->second, .after = b->second});
      }
      ++a;
      ++b;
    }
  }
  cache = std::move(next);
}

std::unique_ptr<Watcher> Discovery::Impl::NewWatcher(int64_t start_revision) {
  const std::string prefix = InstancesPrefix(service);
  WatchCallbacks cb;
  cb.events = [this](const std::vector<mvccpb::Event>& events, int64_t) { OnEvents(events); };
  cb.compacted = [this](int64_t) { OnCompacted(); };
  cb.connected = [this](const std::string& endpoint) {
    if (callbacks.connected) callbacks.connected(endpoint);
  };
  cb.failed = [this](const absl::Status& why) {
    if (callbacks.error) callbacks.error(why);
  };
  return std::make_unique<Watcher>(
      client,
      WatchOptions{.key = prefix, .range_end = PrefixEnd(prefix), .start_revision = start_revision},
      std::move(cb));
}

bool Discovery::Impl::Relist() {
  // The discovery thread. Returns false when stopping.
  int round = 0;
  while (true) {
    {
      std::lock_guard lock(mu);
      if (stopping) return false;
    }
    absl::StatusOr<Listing> listing =
        ListPrefix(client, InstancesPrefix(service), kInstancesPerServiceMax);
    if (listing.ok()) {
      std::vector<Change> changes;
      int64_t at = 0;
      {
        std::lock_guard deliver(deliver_mu);
        std::map<std::string, Instance> next = CacheOf(*listing, &changes);
        {
          std::lock_guard lock(mu);
          if (stopping) return false;
          ReplaceLocked(std::move(next), &changes);
          revision = at = listing->revision;
          relist = false;
        }
        Fire(changes);
        if (callbacks.relisted) callbacks.relisted(at);
      }
      watcher = NewWatcher(at + 1);
      return true;
    }
    if (callbacks.error) callbacks.error(listing.status());
    std::unique_lock lock(mu);
    const Nanos pause =
        Backoff(options.relist_backoff_min, options.relist_backoff_max, round++, rng);
    if (cv.wait_for(lock, pause, [this] { return stopping; })) return false;
  }
}

void Discovery::Impl::Run() {
  while (true) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [this] { return stopping || relist; });
      if (stopping) return;
    }
    // The old watcher stopped after reporting the compaction: joining it is quick.
    watcher.reset();
    if (!Relist()) return;
  }
}

Discovery::Discovery(Client& client, std::string service, DiscoveryCallbacks callbacks,
                     DiscoveryOptions options)
    : impl_(std::make_unique<Impl>(client, std::move(service), std::move(callbacks), options)) {
  KEEL_ASSERT(options.relist_backoff_min > Nanos(0));
  KEEL_ASSERT(options.relist_backoff_min <= options.relist_backoff_max);
}

Discovery::~Discovery() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  KEEL_ASSERT(impl_->thread.get_id() != std::this_thread::get_id());
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->watcher.reset();  // cancels the watch; waits for a callback that is running
}

absl::Status Discovery::Start() {
  if (absl::Status st = ValidateServiceName(impl_->service); !st.ok()) return st;
  std::lock_guard start(impl_->start_mu);
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->started) return absl::FailedPreconditionError("keel discovery: started already");
  }
  absl::StatusOr<Listing> listing =
      ListPrefix(impl_->client, InstancesPrefix(impl_->service), kInstancesPerServiceMax);
  if (!listing.ok()) return listing.status();
  {
    std::lock_guard deliver(impl_->deliver_mu);
    std::vector<Change> changes;
    std::map<std::string, Instance> next = impl_->CacheOf(*listing, &changes);
    {
      std::lock_guard lock(impl_->mu);
      impl_->ReplaceLocked(std::move(next), &changes);  // from empty: all added
      impl_->revision = listing->revision;
      impl_->started = true;
    }
    impl_->Fire(changes);
  }
  // From the revision after the listing: nothing missed, nothing twice.
  impl_->watcher = impl_->NewWatcher(listing->revision + 1);
  impl_->thread = std::thread([impl = impl_.get()] { impl->Run(); });
  return absl::OkStatus();
}

std::vector<Instance> Discovery::Instances() const {
  std::lock_guard lock(impl_->mu);
  std::vector<Instance> out;
  out.reserve(impl_->cache.size());
  for (const auto& [id, in] : impl_->cache) out.push_back(in);
  return out;
}

int64_t Discovery::revision() const {
  std::lock_guard lock(impl_->mu);
  return impl_->revision;
}

absl::StatusOr<ServicesListing> Services(Client& client) {
  absl::StatusOr<Listing> listing =
      ListPrefix(client, kServicesPrefix, kInstancesPerServiceMax * 10);
  if (!listing.ok()) return listing.status();
  ServicesListing out{.revision = listing->revision};
  std::map<std::string, size_t> counts;
  for (const mvccpb::KeyValue& kv : listing->kvs) {
    absl::StatusOr<Instance> in = DecodeKeyValue(kv);
    if (!in.ok()) {
      ++out.invalid_count;
      continue;
    }
    ++counts[in->service];
  }
  for (auto& [service, count] : counts) {
    out.services.push_back({.service = service, .instance_count = count});
  }
  return out;
}

// ---- pickers ------------------------------------------------------------------------------

uint64_t RandomSeed() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

absl::StatusOr<Instance> RandomPicker::Pick(const std::vector<Instance>& instances) {
  if (instances.empty()) return absl::NotFoundError("no instance to pick");
  std::lock_guard lock(mu_);
  std::uniform_int_distribution<size_t> index(0, instances.size() - 1);
  return instances[index(rng_)];
}

absl::StatusOr<Instance> RoundRobinPicker::Pick(const std::vector<Instance>& instances) {
  if (instances.empty()) return absl::NotFoundError("no instance to pick");
  std::lock_guard lock(mu_);
  const Instance* first = nullptr;  // the smallest id
  const Instance* next = nullptr;   // the smallest id after last_id_
  for (const Instance& in : instances) {
    if (first == nullptr || in.id < first->id) first = &in;
    if (picked_ && in.id > last_id_ && (next == nullptr || in.id < next->id)) next = &in;
  }
  const Instance* chosen = next != nullptr ? next : first;
  last_id_ = chosen->id;
  picked_ = true;
  return *chosen;
}

absl::StatusOr<Instance> WeightedPicker::Pick(const std::vector<Instance>& instances) {
  // Weights from a snapshot were validated; others are clamped into [0, kWeightMax].
  auto weight_of = [](const Instance& in) { return std::clamp<int64_t>(in.weight, 0, kWeightMax); };
  int64_t total = 0;
  for (const Instance& in : instances) total += weight_of(in);
  if (total == 0) {
    return absl::NotFoundError(instances.empty() ? "no instance to pick"
                                                 : "no instance with a weight above 0");
  }
  std::lock_guard lock(mu_);
  std::uniform_int_distribution<int64_t> draw(0, total - 1);
  int64_t point = draw(rng_);
  for (const Instance& in : instances) {
    point -= weight_of(in);
    if (point < 0) return in;
  }
  KEEL_ASSERT(false);  // point < total
  return absl::InternalError("unreachable");
}

}  // namespace keel::client
