// The service registry (net/client/registry.h): first the pure parts (the key layout, the
// JSON value, validation of bad input, the pickers with fixed seeds), then registrars and
// discoveries against keeld members run in this process (KeelMember on its own thread,
// loopback ports, data in a fresh temporary directory, removed afterwards). Every test has
// a deadline (TestDeadline); every wait polls a condition until a deadline.

#include "net/client/registry.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/etcdpb/kv.pb.h"
#include "core/etcdpb/rpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "net/client/client.h"
#include "net/client/watcher.h"
#include "tests/net/member_harness.h"

namespace keel::client {
namespace {

namespace pb = etcdserverpb;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

Instance Payment(std::string id, std::string addr) {
  return Instance{.service = "payment", .id = std::move(id), .addr = std::move(addr)};
}

// ---- the layout and the value -------------------------------------------------------------

TEST(RegistryLayout, AnInstanceEncodedThenDecodedIsTheSame) {
  Instance in{.service = "payment",
              .id = "payment-10.0.0.1:8080",
              .addr = "10.0.0.1:8080",
              .version = "1.4.2",
              .weight = 7,
              .zone = "eu-west-1a",
              .tags = {"canary", "grpc", "d\xc3\xa9j\xc3\xa0"},
              .metadata = {{"owner", "team-pay"}, {"region", "eu"}}};
  const std::string key = InstanceKey(in.service, in.id);
  EXPECT_EQ(key, "/services/payment/instances/payment-10.0.0.1:8080");
  absl::StatusOr<Instance> out = DecodeInstance(key, EncodeInstanceValue(in));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, in);
}

TEST(RegistryLayout, TheSeedsGoValueDecodesWithTheDefaults) {
  // The seed's §3 registerService writes exactly this.
  absl::StatusOr<Instance> in = DecodeInstance("/services/payment/instances/i1",
                                               R"({"addr":"10.0.0.1:8080","version":"1.0"})");
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->service, "payment");
  EXPECT_EQ(in->id, "i1");
  EXPECT_EQ(in->addr, "10.0.0.1:8080");
  EXPECT_EQ(in->version, "1.0");
  EXPECT_EQ(in->weight, 1);
  EXPECT_TRUE(in->tags.empty());
  EXPECT_TRUE(in->metadata.empty());
}

TEST(RegistryLayout, ExtraStringFieldsAreMetadataAndOtherExtraFieldsAreIgnored) {
  absl::StatusOr<Instance> in = DecodeInstance(
      "/services/s/instances/i",
      R"({"addr":"h:1","owner":"me","port":8080,"healthy":true,"meta":{"a":"b"},"n":null})");
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->metadata, (std::map<std::string, std::string>{{"owner", "me"}}));
}

TEST(RegistryLayout, TheValueIsCompactJsonWithTheKnownFields) {
  Instance in = Payment("i1", "10.0.0.1:8080");
  in.version = "1.0";
  EXPECT_EQ(EncodeInstanceValue(in), R"({"addr":"10.0.0.1:8080","version":"1.0","weight":1})");
  EXPECT_EQ(InstancesPrefix("payment"), "/services/payment/instances/");
}

TEST(RegistryLayout, KeysOutsideTheLayoutAreRefused) {
  absl::StatusOr<InstanceKeyParts> good = ParseInstanceKey("/services/a.b-c/instances/x:1");
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->service, "a.b-c");
  EXPECT_EQ(good->id, "x:1");
  for (const std::string& key : std::vector<std::string>{
           "", "/services/", "/services/payment", "/services/payment/instances/",
           "/services/payment/instances", "/services//instances/i", "/services/p/instances/a/b",
           "/other/p/instances/a", "/services/p/members/a", "services/p/instances/a",
           "/services/p q/instances/a", std::string("/services/p/instances/a\0b", 25),
           "/services/p/instances/\x01", "/services/p/instances/\xc3\xa9"}) {
    absl::StatusOr<InstanceKeyParts> got = ParseInstanceKey(key);
    EXPECT_TRUE(absl::IsInvalidArgument(got.status())) << absl::CHexEscape(key);
    EXPECT_THAT(got.status().message(), HasSubstr("outside the layout"));
    // And as a key-value: reported, never a crash.
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeInstance(key, R"({"addr":"h:1"})").status()));
  }
}

TEST(RegistryLayout, BadValuesAreReportedAsInvalidArgument) {
  const std::string key = "/services/s/instances/i";
  const std::string deep = std::string(20'000, '[') + std::string(20'000, ']');
  const struct {
    std::string value;
    std::string why;
  } cases[] = {
      {"", "not JSON"},
      {"not json", "not JSON"},
      {R"({"addr":"h:1")", "not JSON"},
      {"{\"addr\":\"h:1\",\"version\":\"\xff\"}", "not JSON"},  // not UTF-8
      {"[1,2]", "not a JSON object"},
      {R"("h:1")", "not a JSON object"},
      {"null", "not a JSON object"},
      {deep, "not a JSON object"},
      {"{}", "no \"addr\""},
      {R"({"version":"1"})", "no \"addr\""},
      {R"({"addr":5})", "\"addr\" is not a string"},
      {R"({"addr":null})", "\"addr\" is not a string"},
      {R"({"addr":"nohost"})", "no :port"},
      {R"({"addr":"h:0"})", "port"},
      {R"({"addr":"h:1","version":3})", "\"version\" is not a string"},
      {R"({"addr":"h:1","zone":["a"]})", "\"zone\" is not a string"},
      {R"({"addr":"h:1","weight":"2"})", "\"weight\" is not an integer"},
      {R"({"addr":"h:1","weight":2.5})", "\"weight\" is not an integer"},
      {R"({"addr":"h:1","weight":1e30})", "\"weight\" is not an integer"},
      {R"({"addr":"h:1","weight":-1})", "weight -1"},
      {R"({"addr":"h:1","weight":18446744073709551615})", "weight"},
      {R"({"addr":"h:1","tags":"a"})", "\"tags\" is not an array"},
      {R"({"addr":"h:1","tags":[1]})", "\"tags\" is not an array of strings"},
      {R"({"addr":"h:1","tags":[""]})", "a tag is empty"},
      {"{\"addr\":\"h:1\",\"x\":\"" + std::string(70'000, 'a') + "\"}", "bytes long"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<Instance> got = DecodeInstance(key, c.value);
    EXPECT_TRUE(absl::IsInvalidArgument(got.status())) << c.value.substr(0, 80);
    EXPECT_THAT(got.status().message(), HasSubstr(c.why)) << c.value.substr(0, 80);
  }
  // Deep nesting in an ignored field is parsed without trouble (and ignored).
  absl::StatusOr<Instance> nested = DecodeInstance(key, R"({"addr":"h:1","x":)" + deep + "}");
  EXPECT_TRUE(nested.ok()) << nested.status();
}

// ---- validation ------------------------------------------------------------------------------

TEST(RegistryValidation, NamesAreNonEmptyPrintableAsciiWithoutSlashOrSpace) {
  EXPECT_TRUE(ValidateServiceName("payment").ok());
  EXPECT_TRUE(ValidateInstanceId("service-payment-10.0.0.1:8080").ok());
  EXPECT_THAT(ValidateServiceName("").message(), HasSubstr("empty"));
  EXPECT_THAT(ValidateInstanceId("").message(), HasSubstr("empty"));
  EXPECT_THAT(ValidateServiceName("a/b").message(), HasSubstr("'/'"));
  EXPECT_THAT(ValidateInstanceId("a/b").message(), HasSubstr("'/'"));
  for (const std::string& bad : std::vector<std::string>{"a b", "tab\t", "nl\n", "\x7f",
                                                         "caf\xc3\xa9", std::string("nul\0", 4)}) {
    EXPECT_TRUE(absl::IsInvalidArgument(ValidateServiceName(bad))) << absl::CHexEscape(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(ValidateInstanceId(bad))) << absl::CHexEscape(bad);
  }
  EXPECT_TRUE(ValidateServiceName(std::string(kServiceNameBytesMax, 's')).ok());
  EXPECT_THAT(ValidateServiceName(std::string(kServiceNameBytesMax + 1, 's')).message(),
              HasSubstr("at most"));
  EXPECT_TRUE(ValidateInstanceId(std::string(kInstanceIdBytesMax, 'i')).ok());
  EXPECT_FALSE(ValidateInstanceId(std::string(kInstanceIdBytesMax + 1, 'i')).ok());
}

TEST(RegistryValidation, AnAddressIsHostColonPort) {
  for (const char* good : {"10.0.0.1:8080", "payment.svc.cluster.local:1", "h_1:65535",
                           "[::1]:2379", "[2001:db8::1]:80", "[::ffff:10.0.0.1]:80"}) {
    EXPECT_TRUE(ValidateAddress(good).ok()) << good << ": " << ValidateAddress(good);
  }
  for (const char* bad :
       {"", "host", "host:", ":80", "h:0", "h:65536", "h:8a", "h:-1", "h:123456", "a:b:80",
        "::1:80", "[::1]", "[]:80", "[zz::1]:80", "ho st:80", "h/x:80", "http://h:80"}) {
    EXPECT_TRUE(absl::IsInvalidArgument(ValidateAddress(bad))) << bad;
  }
}

TEST(RegistryValidation, AnInstancesFieldsAreCheckedAndBounded) {
  const Instance good = Payment("i", "h:1");
  EXPECT_TRUE(ValidateInstance(good).ok());
  auto with = [&good](const std::function<void(Instance&)>& change) {
    Instance in = good;
    change(in);
    return ValidateInstance(in);
  };
  EXPECT_THAT(with([](Instance& in) { in.service = ""; }).message(), HasSubstr("service name"));
  EXPECT_THAT(with([](Instance& in) { in.id = "a/b"; }).message(), HasSubstr("instance id"));
  EXPECT_THAT(with([](Instance& in) { in.addr = std::string("h"); }).message(),
              HasSubstr("address"));
  EXPECT_THAT(with([](Instance& in) { in.weight = -1; }).message(), HasSubstr("weight"));
  EXPECT_THAT(with([](Instance& in) { in.weight = kWeightMax + 1; }).message(),
              HasSubstr("weight"));
  EXPECT_TRUE(with([](Instance& in) { in.weight = 0; }).ok());
  EXPECT_THAT(with([](Instance& in) { in.tags.assign(kTagsMax + 1, "t"); }).message(),
              HasSubstr("tags"));
  EXPECT_THAT(with([](Instance& in) { in.tags = {""}; }).message(), HasSubstr("tag is empty"));
  EXPECT_THAT(with([](Instance& in) { in.version = std::string("\xff"); }).message(),
              HasSubstr("UTF-8"));
  EXPECT_THAT(with([](Instance& in) { in.zone = std::string(kFieldBytesMax + 1, 'z'); }).message(),
              HasSubstr("zone"));
  EXPECT_THAT(with([](Instance& in) { in.metadata["addr"] = "x"; }).message(),
              HasSubstr("known field"));
  EXPECT_THAT(with([](Instance& in) { in.metadata[""] = "x"; }).message(), HasSubstr("empty"));
  EXPECT_THAT(with([](Instance& in) {
                for (size_t i = 0; i <= kMetadataFieldsMax; ++i) in.metadata[absl::StrCat(i)];
              }).message(),
              HasSubstr("metadata fields"));
}

// ---- pickers -----------------------------------------------------------------------------

std::vector<Instance> Three(int64_t wa = 1, int64_t wb = 1, int64_t wc = 1) {
  std::vector<Instance> out = {Payment("c", "h:3"), Payment("a", "h:1"), Payment("b", "h:2")};
  out[0].weight = wc;
  out[1].weight = wa;
  out[2].weight = wb;
  return out;
}

// How often each id was picked in `picks` picks.
std::map<std::string, int> Tally(Picker& picker, const std::vector<Instance>& set, int picks) {
  std::map<std::string, int> out;
  for (int i = 0; i < picks; ++i) {
    absl::StatusOr<Instance> got = picker.Pick(set);
    KEEL_ASSERT(got.ok());
    ++out[got->id];
  }
  return out;
}

TEST(RegistryPickers, AnEmptySetIsNotFound) {
  RandomPicker random(1);
  RoundRobinPicker round_robin;
  WeightedPicker weighted(1);
  for (Picker* p : std::initializer_list<Picker*>{&random, &round_robin, &weighted}) {
    EXPECT_TRUE(absl::IsNotFound(p->Pick({}).status()));
  }
}

TEST(RegistryPickers, RandomIsUniformAndRepeatsItselfForASeed) {
  RandomPicker picker(42);
  const std::map<std::string, int> tally = Tally(picker, Three(), 30'000);
  ASSERT_EQ(tally.size(), 3u);
  for (const auto& [id, n] : tally) {
    EXPECT_NEAR(n, 10'000, 500) << id;  // about 8.7 standard deviations
  }
  RandomPicker again(42), other(43);
  std::vector<std::string> a, b, c;
  RandomPicker first(42);
  for (int i = 0; i < 50; ++i) {
    a.push_back(first.Pick(Three())->id);
    b.push_back(again.Pick(Three())->id);
    c.push_back(other.Pick(Three())->id);
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(RegistryPickers, RoundRobinGoesInIdOrderAndNeitherSkipsNorRepeatsOnChanges) {
  RoundRobinPicker picker;
  std::vector<std::string> order;
  for (int i = 0; i < 6; ++i) order.push_back(picker.Pick(Three())->id);
  EXPECT_THAT(order, ElementsAre("a", "b", "c", "a", "b", "c"));
  // After "c": "a"; then "b" leaves and "bb" arrives: "bb" follows "a", then "c".
  std::vector<Instance> changed = Three();
  EXPECT_EQ(picker.Pick(changed)->id, "a");
  changed.erase(changed.begin() + 2);  // "b"
  changed.push_back(Payment("bb", "h:4"));
  EXPECT_EQ(picker.Pick(changed)->id, "bb");
  EXPECT_EQ(picker.Pick(changed)->id, "c");
  EXPECT_EQ(picker.Pick(changed)->id, "a");
  // Weight does not matter to it.
  EXPECT_EQ(picker.Pick(Three(0, 0, 0))->id, "b");
}

TEST(RegistryPickers, WeightedFollowsTheWeightsAndNeverPicksWeightZero) {
  WeightedPicker picker(7);
  const std::map<std::string, int> tally = Tally(picker, Three(1, 3, 0), 40'000);
  EXPECT_EQ(tally.count("c"), 0u);
  EXPECT_NEAR(tally.at("a"), 10'000, 600);
  EXPECT_NEAR(tally.at("b"), 30'000, 600);
  EXPECT_THAT(picker.Pick(Three(0, 0, 0)).status().message(), HasSubstr("weight above 0"));
  // Default weights (1): uniform.
  const std::map<std::string, int> even = Tally(picker, Three(), 30'000);
  for (const auto& [id, n] : even) EXPECT_NEAR(n, 10'000, 500) << id;
  WeightedPicker x(9), y(9);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(x.Pick(Three(1, 2, 3))->id, y.Pick(Three(1, 2, 3))->id);
}

// ---- the test cluster (tests/net/member_harness.h) -------------------------------------------

using testing::Connect;
using testing::TestCluster;
using testing::TestDeadline;
using testing::WaitFor;

// This file's clusters: their temporary directories and cluster token are named for it.
constexpr std::string_view kClusterName = "keel-registry-test";

// One single-member cluster shared by the tests that need nothing else (each uses its
// own service names): started on first use, stopped after the last test.
TestCluster& SharedMember() { return testing::SharedMember(kClusterName); }

// Registrars in tests recover quickly.
RegistrarOptions FastRecovery(int64_t ttl_seconds) {
  return {.ttl_seconds = ttl_seconds,
          .recover_backoff_min = milliseconds(50),
          .recover_backoff_max = milliseconds(500)};
}

// The instance keys under `service`'s prefix, with their leases: "id@lease".
std::map<std::string, int64_t> StoredLeases(Client& client, const std::string& service) {
  pb::RangeRequest r;
  const std::string prefix = InstancesPrefix(service);
  r.set_key(prefix);
  r.set_range_end(PrefixEnd(prefix));
  absl::StatusOr<pb::RangeResponse> got = client.Range(r);
  EXPECT_TRUE(got.ok()) << got.status();
  std::map<std::string, int64_t> out;
  if (!got.ok()) return out;
  for (const mvccpb::KeyValue& kv : got->kvs()) {
    out[kv.key().substr(prefix.size())] = kv.lease();
  }
  return out;
}

absl::Status PutRaw(Client& client, const std::string& key, const std::string& value) {
  pb::PutRequest r;
  r.set_key(key);
  r.set_value(value);
  return client.Put(r).status();
}

absl::Status Revoke(Client& client, int64_t lease) {
  pb::LeaseRevokeRequest r;
  r.set_id(lease);
  return client.LeaseRevoke(r).status();
}

// What a Discovery reported, as lines: "added i1 h:1", "updated i1 h:2", "removed i1",
// "invalid <key>", "relisted", "connected <endpoint>".
class DiscoveryLog {
 public:
  DiscoveryCallbacks Callbacks() {
    return {
        .added = [this](const Instance& in) { Add(absl::StrCat("added ", in.id, " ", in.addr)); },
        .updated =
            [this](const Instance& before, const Instance& after) {
              Add(absl::StrCat("updated ", after.id, " ", after.addr));
            },
        .removed = [this](const Instance& last) { Add(absl::StrCat("removed ", last.id)); },
        .invalid = [this](std::string_view key,
                          const absl::Status&) { Add("invalid " + std::string(key)); },
        .connected = [this](const std::string& e) { Add(absl::StrCat("connected ", e)); },
        .relisted = [this](int64_t) { Add("relisted"); },
    };
  }
  std::vector<std::string> Lines() const {
    std::lock_guard lock(mu_);
    return lines_;
  }
  // The lines that are changes (no "connected").
  std::vector<std::string> Changes() const {
    std::vector<std::string> out;
    for (const std::string& line : Lines()) {
      if (!absl::StartsWith(line, "connected ")) out.push_back(line);
    }
    return out;
  }
  size_t Count(std::string_view prefix) const {
    std::lock_guard lock(mu_);
    return static_cast<size_t>(std::count_if(lines_.begin(), lines_.end(), [&](const auto& l) {
      return absl::StartsWith(l, absl::string_view(prefix.data(), prefix.size()));
    }));
  }
  bool Has(const std::string& line) const {
    std::lock_guard lock(mu_);
    return std::find(lines_.begin(), lines_.end(), line) != lines_.end();
  }
  void Clear() {
    std::lock_guard lock(mu_);
    lines_.clear();
  }

 private:
  void Add(std::string line) {
    std::lock_guard lock(mu_);
    lines_.push_back(std::move(line));
  }
  mutable std::mutex mu_;
  std::vector<std::string> lines_;
};

std::vector<std::string> Ids(const std::vector<Instance>& instances) {
  std::vector<std::string> out;
  for (const Instance& in : instances) out.push_back(in.id);
  return out;
}

// ---- registrar and discovery against one member -----------------------------------------

TEST(RegistryCluster, ThreeInstancesShareOneLeaseAndDiscoveryListsThem) {
  TestDeadline deadline(seconds(30));
  std::unique_ptr<Client> client = Connect(SharedMember().Endpoints());
  Registrar registrar(*client, FastRecovery(10));
  for (int i = 1; i <= 3; ++i) {
    Instance in = Payment(absl::StrCat("i", i), absl::StrCat("10.0.0.", i, ":8080"));
    in.version = "1.0";
    in.weight = i;
    ASSERT_TRUE(registrar.Register(in).ok());
  }
  const int64_t lease = registrar.lease();
  ASSERT_NE(lease, 0);
  EXPECT_EQ(StoredLeases(*client, "payment"),
            (std::map<std::string, int64_t>{{"i1", lease}, {"i2", lease}, {"i3", lease}}));

  DiscoveryLog log;
  Discovery discovery(*client, "payment", log.Callbacks());
  ASSERT_TRUE(discovery.Start().ok());
  // Start reports what it listed before returning.
  EXPECT_THAT(log.Changes(), ElementsAre("added i1 10.0.0.1:8080", "added i2 10.0.0.2:8080",
                                         "added i3 10.0.0.3:8080"));
  const std::vector<Instance> seen = discovery.Instances();
  ASSERT_THAT(Ids(seen), ElementsAre("i1", "i2", "i3"));
  EXPECT_EQ(seen[2].weight, 3);
  EXPECT_EQ(seen[2].version, "1.0");
  EXPECT_EQ(seen[2].lease, lease);
  EXPECT_GT(discovery.revision(), 0);
  EXPECT_TRUE(absl::IsFailedPrecondition(discovery.Start()));

  absl::StatusOr<ServicesListing> services = Services(*client);
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(services->services,
              ::testing::Contains(ServiceSummary{.service = "payment", .instance_count = 3}));
  ASSERT_TRUE(registrar.Close().ok());
}

TEST(RegistryCluster, DiscoveryReportsRegistrationsUpdatesDeregistrationsAndClose) {
  TestDeadline deadline(seconds(30));
  std::unique_ptr<Client> client = Connect(SharedMember().Endpoints());
  DiscoveryLog log;
  Discovery discovery(*client, "orders", log.Callbacks());
  ASSERT_TRUE(discovery.Start().ok());
  EXPECT_TRUE(discovery.Instances().empty());

  Registrar registrar(*client, FastRecovery(10));
  Instance a{.service = "orders", .id = "a", .addr = "h:1"};
  Instance b{.service = "orders", .id = "b", .addr = "h:2"};
  Instance c{.service = "orders", .id = "c", .addr = "h:3"};
  ASSERT_TRUE(registrar.Register(a).ok());
  ASSERT_TRUE(registrar.Register(b).ok());
  ASSERT_TRUE(registrar.Register(c).ok());
  a.addr = "h:11";
  ASSERT_TRUE(registrar.Register(a).ok());  // an update
  ASSERT_TRUE(registrar.Deregister("orders", "b").ok());
  EXPECT_TRUE(absl::IsNotFound(registrar.Deregister("orders", "b")));
  EXPECT_TRUE(absl::IsNotFound(registrar.Deregister("orders", "nobody")));
  EXPECT_EQ(StoredLeases(*client, "orders").size(), 2u);
  ASSERT_TRUE(WaitFor([&] { return log.Count("") == 6; }, seconds(5)));

  const int64_t lease = registrar.lease();
  ASSERT_TRUE(registrar.Close().ok());
  ASSERT_TRUE(registrar.Close().ok());  // a second Close does nothing
  EXPECT_TRUE(StoredLeases(*client, "orders").empty());
  EXPECT_TRUE(absl::IsFailedPrecondition(registrar.Register(a)));
  pb::LeaseTimeToLiveRequest ttl;
  ttl.set_id(lease);
  absl::StatusOr<pb::LeaseTimeToLiveResponse> left = client->LeaseTimeToLive(ttl);
  ASSERT_TRUE(left.ok()) << left.status();
  EXPECT_EQ(left->ttl(), -1) << "Close revokes the lease";

  ASSERT_TRUE(WaitFor([&] { return log.Count("") == 8; }, seconds(5)));
  std::this_thread::sleep_for(milliseconds(100));  // nothing more comes
  std::vector<std::string> changes = log.Changes();
  // Close's revocation deletes a and c in one revision, in key order.
  EXPECT_THAT(changes, ElementsAre("added a h:1", "added b h:2", "added c h:3", "updated a h:11",
                                   "removed b", "removed a", "removed c"));
  EXPECT_TRUE(discovery.Instances().empty());
}

TEST(RegistryCluster, ALeaseRevokedBehindTheRegistrarsBackIsReplacedAndEveryInstancePutAgain) {
  TestDeadline deadline(seconds(40));
  std::unique_ptr<Client> client = Connect(SharedMember().Endpoints());
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> recovered;
  RegistrarOptions options = FastRecovery(3);  // renewed every second: the loss shows soon
  options.recovered = [&](int64_t old_lease, int64_t new_lease) {
    std::lock_guard lock(mu);
    recovered.emplace_back(old_lease, new_lease);
  };
  Registrar registrar(*client, options);
  for (const char* id : {"r1", "r2", "r3"}) {
    ASSERT_TRUE(registrar.Register({.service = "revoked", .id = id, .addr = "h:1"}).ok());
  }
  DiscoveryLog log;
  Discovery discovery(*client, "revoked", log.Callbacks());
  ASSERT_TRUE(discovery.Start().ok());

  const int64_t first = registrar.lease();
  ASSERT_TRUE(Revoke(*client, first).ok());
  ASSERT_TRUE(WaitFor(
      [&] {
        const std::map<std::string, int64_t> stored = StoredLeases(*client, "revoked");
        return stored.size() == 3 && std::all_of(stored.begin(), stored.end(), [&](auto& kv) {
                 return kv.second != first && kv.second == registrar.lease();
               });
      },
      seconds(10)));
  // Counted (and reported) just after the last put.
  ASSERT_TRUE(WaitFor([&] { return registrar.recoveries() == 1; }, seconds(5)));
  {
    std::lock_guard lock(mu);
    ASSERT_EQ(recovered.size(), 1u);
    EXPECT_EQ(recovered[0].first, first);
    EXPECT_EQ(recovered[0].second, registrar.lease());
  }
  // Discovery saw them go (the revocation) and come back.
  ASSERT_TRUE(WaitFor([&] { return log.Count("added ") == 6; }, seconds(5)));
  EXPECT_EQ(log.Count("removed "), 3u);
  EXPECT_EQ(discovery.Instances().size(), 3u);
  // The new lease is kept alive: the keys outlive a few TTLs.
  std::this_thread::sleep_for(seconds(4));
  EXPECT_EQ(StoredLeases(*client, "revoked").size(), 3u);
  EXPECT_EQ(registrar.recoveries(), 1);
  ASSERT_TRUE(registrar.Close().ok());
}

TEST(RegistryCluster, ARegisterThatFindsTheLeaseGonePutsEveryInstanceAgain) {
  TestDeadline deadline(seconds(30));
  std::unique_ptr<Client> client = Connect(SharedMember().Endpoints());
  // A long TTL: the keeper's next renewal is ~10 s away, so the put finds the loss first.
  Registrar registrar(*client, FastRecovery(30));
  ASSERT_TRUE(registrar.Register({.service = "regone", .id = "a", .addr = "h:1"}).ok());
  const int64_t first = registrar.lease();
  // Let the keeper's first renewal (sent at once on Keep) be answered.
  std::this_thread::sleep_for(milliseconds(200));
  ASSERT_TRUE(Revoke(*client, first).ok());
  EXPECT_TRUE(StoredLeases(*client, "regone").empty());
  ASSERT_TRUE(registrar.Register({.service = "regone", .id = "b", .addr = "h:2"}).ok());
  const int64_t second = registrar.lease();
  EXPECT_NE(second, first);
  EXPECT_EQ(StoredLeases(*client, "regone"),
            (std::map<std::string, int64_t>{{"a", second}, {"b", second}}));
  EXPECT_EQ(registrar.recoveries(), 1);
  ASSERT_TRUE(registrar.Close().ok());
}

TEST(RegistryCluster, TheDestructorStopsWithoutRevokingAndTheKeysExpireByTtl) {
  TestDeadline deadline(seconds(30));
  std::unique_ptr<Client> client = Connect(SharedMember().Endpoints());
  int64_t lease = 0;
  {
    Registrar registrar(*client, FastRecovery(2));
    ASSERT_TRUE(registrar.Register({.service = "dropped", .id = "a", .addr = "h:1"}).ok());
    lease = registrar.lease();
  }
  EXPECT_EQ(StoredLeases(*client, "dropped"), (std::map<std::string, int64_t>{{"a", lease}}));
  ASSERT_TRUE(WaitFor([&] { return StoredLeases(*client, "dropped").empty(); }, seconds(8)));
}

TEST(RegistryCluster, ARegistrarCutOffPastItsTtlRegistersEverythingAgainWhenTheClusterReturns) {
  TestDeadline deadline(seconds(60));
  TestCluster cluster(kClusterName, 1);
  ASSERT_TRUE(cluster.StartAll().ok());
  ASSERT_TRUE(cluster.WaitForLeader());
  std::unique_ptr<Client> client = Connect(cluster.Endpoints());
  std::atomic<int> failures{0};
  RegistrarOptions options = FastRecovery(2);
  // A round repeats its writes until this deadline (a timed-out attempt is indeterminate,
  // so it is repeated too): short, so that rounds fail while the member is away.
  options.register_timeout = seconds(3);
  options.recovery_failed = [&](const absl::Status&) { ++failures; };
  Registrar registrar(*client, options);
  ASSERT_TRUE(registrar.Register({.service = "cutoff", .id = "a", .addr = "h:1"}).ok());
  ASSERT_TRUE(registrar.Register({.service = "cutoff", .id = "b", .addr = "h:2"}).ok());
  const int64_t first = registrar.lease();

  cluster.Stop(0);
  // The keeper cannot renew for longer than the TTL: the lease is lost on its clock, and
  // recovery rounds fail until the member is back.
  ASSERT_TRUE(WaitFor([&] { return failures.load() >= 1; }, seconds(10)));
  ASSERT_TRUE(cluster.Start(0).ok());
  ASSERT_TRUE(WaitFor(
      [&] {
        const int64_t now = registrar.lease();
        return now != 0 && now != first &&
               StoredLeases(*client, "cutoff") ==
                   std::map<std::string, int64_t>{{"a", now}, {"b", now}};
      },
      seconds(20)));
  ASSERT_TRUE(WaitFor([&] { return registrar.recoveries() == 1; }, seconds(5)));
  ASSERT_TRUE(registrar.Close().ok());
  EXPECT_TRUE(StoredLeases(*client, "cutoff").empty());
}

TEST(RegistryCluster, ValuesOthersWroteThatAreNoInstancesAreReportedAsInvalidAndSkipped) {
  TestDeadline deadline(seconds(30));
  std::unique_ptr<Client> client = Connect(SharedMember().Endpoints());
  const std::string prefix = InstancesPrefix("foreign");
  pb::DeleteRangeRequest clear;  // from an earlier run (--gtest_repeat keeps the member)
  clear.set_key(prefix);
  clear.set_range_end(PrefixEnd(prefix));
  ASSERT_TRUE(client->DeleteRange(clear).ok());
  ASSERT_TRUE(PutRaw(*client, prefix + "good", R"({"addr":"10.0.0.1:8080","version":"1.0"})").ok());
  ASSERT_TRUE(PutRaw(*client, prefix + "text", "not json").ok());
  ASSERT_TRUE(PutRaw(*client, prefix + "noaddr", R"({"version":"1.0"})").ok());
  ASSERT_TRUE(PutRaw(*client, prefix + "deep/er", R"({"addr":"h:1"})").ok());

  DiscoveryLog log;
  Discovery discovery(*client, "foreign", log.Callbacks());
  ASSERT_TRUE(discovery.Start().ok());
  // Invalid keys first (as the listing found them, in key order), then the instances.
  EXPECT_THAT(log.Changes(),
              ElementsAre("invalid " + prefix + "deep/er", "invalid " + prefix + "noaddr",
                          "invalid " + prefix + "text", "added good 10.0.0.1:8080"));
  EXPECT_THAT(Ids(discovery.Instances()), ElementsAre("good"));

  // Later: garbage over a good instance removes it; new garbage is reported; deleting
  // garbage is nothing to report; a good value over garbage is an addition.
  log.Clear();
  ASSERT_TRUE(PutRaw(*client, prefix + "good", "{\"addr\":").ok());
  ASSERT_TRUE(PutRaw(*client, prefix + "weight", R"({"addr":"h:1","weight":"heavy"})").ok());
  pb::DeleteRangeRequest del;
  del.set_key(prefix + "text");
  ASSERT_TRUE(client->DeleteRange(del).ok());
  ASSERT_TRUE(PutRaw(*client, prefix + "noaddr", R"({"addr":"h:2"})").ok());
  ASSERT_TRUE(WaitFor([&] { return log.Count("added ") == 1; }, seconds(5)));
  EXPECT_THAT(log.Changes(), ElementsAre("invalid " + prefix + "good", "removed good",
                                         "invalid " + prefix + "weight", "added noaddr h:2"));
  EXPECT_THAT(Ids(discovery.Instances()), ElementsAre("noaddr"));

  absl::StatusOr<ServicesListing> services = Services(*client);
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(services->services,
              ::testing::Contains(ServiceSummary{.service = "foreign", .instance_count = 1}));
  EXPECT_GE(services->invalid_count, 3u);
}

TEST(RegistryCluster, ALargeServiceIsListedPageByPageAtOneRevision) {
  TestDeadline deadline(seconds(60));
  std::unique_ptr<Client> client = Connect(SharedMember().Endpoints());
  // 2500 instances (three pages of 1000), written 125 to a transaction.
  constexpr int kCount = 2500;
  for (int batch = 0; batch < kCount / 125; ++batch) {
    pb::TxnRequest txn;
    for (int i = batch * 125; i < (batch + 1) * 125; ++i) {
      pb::PutRequest* put = txn.add_success()->mutable_request_put();
      put->set_key(InstanceKey("large", absl::StrCat("i", 10'000 + i)));
      put->set_value(absl::StrCat(R"({"addr":"10.1.0.1:)", 1 + i, R"("})"));
    }
    ASSERT_TRUE(client->Txn(txn).ok());
  }
  DiscoveryLog log;
  Discovery discovery(*client, "large", log.Callbacks());
  ASSERT_TRUE(discovery.Start().ok());
  const std::vector<Instance> listed = discovery.Instances();
  ASSERT_EQ(listed.size(), static_cast<size_t>(kCount));
  EXPECT_EQ(listed.front().id, "i10000");
  EXPECT_EQ(listed.back().id, "i12499");
  EXPECT_EQ(log.Count("added "), static_cast<size_t>(kCount));
  absl::StatusOr<ServicesListing> services = Services(*client);
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(services->services,
              ::testing::Contains(ServiceSummary{.service = "large", .instance_count = kCount}));
  pb::DeleteRangeRequest clear;
  clear.set_key(InstancesPrefix("large"));
  clear.set_range_end(PrefixEnd(InstancesPrefix("large")));
  ASSERT_TRUE(client->DeleteRange(clear).ok());
  // The cache changes first, then the callbacks run.
  ASSERT_TRUE(
      WaitFor([&] { return log.Count("removed ") == static_cast<size_t>(kCount); }, seconds(10)));
  EXPECT_TRUE(discovery.Instances().empty());
}

TEST(RegistryCluster, BadInputToTheRegistrarAndDiscoveryIsRefusedNotFatal) {
  TestDeadline deadline(seconds(20));
  std::unique_ptr<Client> client = Connect(SharedMember().Endpoints());
  Registrar registrar(*client, FastRecovery(10));
  EXPECT_TRUE(
      absl::IsInvalidArgument(registrar.Register({.service = "", .id = "a", .addr = "h:1"})));
  EXPECT_TRUE(
      absl::IsInvalidArgument(registrar.Register({.service = "s", .id = "a/b", .addr = "h:1"})));
  EXPECT_TRUE(
      absl::IsInvalidArgument(registrar.Register({.service = "s", .id = "a", .addr = "h"})));
  EXPECT_TRUE(absl::IsInvalidArgument(registrar.Deregister("s/x", "a")));
  EXPECT_EQ(registrar.lease(), 0) << "nothing was granted for bad input";
  EXPECT_TRUE(registrar.registered().empty());
  Discovery empty(*client, "");
  EXPECT_TRUE(absl::IsInvalidArgument(empty.Start()));
  Discovery slash(*client, "a/b");
  EXPECT_TRUE(absl::IsInvalidArgument(slash.Start()));
}

// ---- discovery through member loss and compaction (three members) -----------------------

// A three-member cluster with a registrar whose client avoids member 0, and a discovery
// whose client starts on member 0 with a long first backoff (the changes below land
// while it is away).
struct ThreeMembers {
  ThreeMembers() : cluster(kClusterName, 3) {
    KEEL_ASSERT(cluster.StartAll().ok());
    KEEL_ASSERT(cluster.WaitForLeader());
    writer = Connect({cluster.Endpoint(1), cluster.Endpoint(2)});
    reader = Connect(cluster.Endpoints(),
                     {.retry_backoff_min = seconds(3), .retry_backoff_max = seconds(3)});
  }
  TestCluster cluster;
  std::unique_ptr<Client> writer;
  std::unique_ptr<Client> reader;
};

TEST(RegistryFailover, ARegistrarKeepsEveryInstanceThroughTheStopOfTheLeaderItTalksTo) {
  TestDeadline deadline(seconds(60));
  TestCluster cluster(kClusterName, 3);
  ASSERT_TRUE(cluster.StartAll().ok());
  ASSERT_TRUE(cluster.WaitForLeader());
  // The registrar's client starts on the leader.
  std::unique_ptr<Client> probe = Connect(cluster.Endpoints());
  size_t leader = 3;
  for (size_t i = 0; i < 3; ++i) {
    absl::StatusOr<pb::StatusResponse> st = probe->Status(cluster.Endpoint(i));
    ASSERT_TRUE(st.ok()) << st.status();
    if (st->leader() == st->header().member_id()) leader = i;
  }
  ASSERT_LT(leader, 3u);
  std::vector<std::string> endpoints = {cluster.Endpoint(leader)};
  for (size_t i = 0; i < 3; ++i) {
    if (i != leader) endpoints.push_back(cluster.Endpoint(i));
  }
  std::unique_ptr<Client> client = Connect(endpoints);
  Registrar registrar(*client, FastRecovery(3));
  for (const char* id : {"k1", "k2", "k3"}) {
    ASSERT_TRUE(registrar.Register(Payment(id, "h:1")).ok());
  }
  std::unique_ptr<Client> observer = Connect({endpoints[1], endpoints[2]});

  cluster.Stop(leader);
  ASSERT_TRUE(registrar.Register(Payment("k4", "h:4")).ok());
  // Two TTLs later every instance is still there, under the registrar's lease.
  std::this_thread::sleep_for(seconds(6));
  const int64_t lease = registrar.lease();
  ASSERT_NE(lease, 0);
  EXPECT_EQ(
      StoredLeases(*observer, "payment"),
      (std::map<std::string, int64_t>{{"k1", lease}, {"k2", lease}, {"k3", lease}, {"k4", lease}}));
  ASSERT_TRUE(registrar.Close().ok());
  EXPECT_TRUE(StoredLeases(*observer, "payment").empty());
}

TEST(RegistryFailover, DiscoverySurvivesItsMembersStopWithoutMissingAChangeMadeInTheGap) {
  TestDeadline deadline(seconds(60));
  ThreeMembers t;
  Registrar registrar(*t.writer, FastRecovery(10));
  ASSERT_TRUE(registrar.Register(Payment("i1", "h:1")).ok());
  ASSERT_TRUE(registrar.Register(Payment("i2", "h:2")).ok());
  DiscoveryLog log;
  Discovery discovery(*t.reader, "payment", log.Callbacks());
  ASSERT_TRUE(discovery.Start().ok());
  ASSERT_TRUE(WaitFor([&] { return log.Count("connected ") == 1; }, seconds(5)));
  const std::string attached = t.reader->current_endpoint();
  ASSERT_EQ(attached, t.cluster.Endpoint(0));

  t.cluster.Stop(0);
  ASSERT_TRUE(registrar.Register(Payment("i3", "h:3")).ok());
  ASSERT_TRUE(registrar.Deregister("payment", "i1").ok());
  Instance i2 = Payment("i2", "h:22");
  ASSERT_TRUE(registrar.Register(i2).ok());
  EXPECT_EQ(log.Count("connected "), 1u) << "the changes were meant to land in the gap";
  ASSERT_TRUE(WaitFor([&] { return log.Count("connected ") == 2; }, seconds(10)));
  ASSERT_TRUE(registrar.Register(Payment("i4", "h:4")).ok());
  ASSERT_TRUE(WaitFor([&] { return log.Count("added i4") == 1; }, seconds(5)));
  std::this_thread::sleep_for(milliseconds(200));  // a repeat would show up by now
  EXPECT_THAT(log.Changes(), ElementsAre("added i1 h:1", "added i2 h:2", "added i3 h:3",
                                         "removed i1", "updated i2 h:22", "added i4 h:4"));
  EXPECT_THAT(Ids(discovery.Instances()), ElementsAre("i2", "i3", "i4"));
  std::vector<std::string> connected;
  for (const std::string& line : log.Lines()) {
    if (absl::StartsWith(line, "connected ")) connected.push_back(line);
  }
  ASSERT_EQ(connected.size(), 2u);
  EXPECT_NE(connected[1], "connected " + attached);
  ASSERT_TRUE(registrar.Close().ok());
  ASSERT_TRUE(WaitFor([&] { return discovery.Instances().empty(); }, seconds(5)));
}

TEST(RegistryFailover, DiscoveryPassedByACompactionListsAgainAndReportsTheDifferences) {
  TestDeadline deadline(seconds(60));
  ThreeMembers t;
  Registrar registrar(*t.writer, FastRecovery(10));
  for (const char* id : {"i1", "i2", "i3"}) {
    ASSERT_TRUE(registrar.Register(Payment(id, "h:1")).ok());
  }
  DiscoveryLog log;
  Discovery discovery(*t.reader, "payment", log.Callbacks());
  ASSERT_TRUE(discovery.Start().ok());
  ASSERT_TRUE(WaitFor([&] { return log.Count("connected ") == 1; }, seconds(5)));
  const int64_t listed_at = discovery.revision();
  log.Clear();

  t.cluster.Stop(0);
  // In the gap: i1 goes, i2 changes, i4 comes, i5 comes and goes (never seen: no report).
  ASSERT_TRUE(registrar.Deregister("payment", "i1").ok());
  ASSERT_TRUE(registrar.Register(Payment("i2", "h:2")).ok());
  ASSERT_TRUE(registrar.Register(Payment("i4", "h:4")).ok());
  ASSERT_TRUE(registrar.Register(Payment("i5", "h:5")).ok());
  ASSERT_TRUE(registrar.Deregister("payment", "i5").ok());
  pb::RangeRequest now;
  now.set_key("/");
  absl::StatusOr<pb::RangeResponse> head = t.writer->Range(now);
  ASSERT_TRUE(head.ok()) << head.status();
  pb::CompactionRequest compact;
  compact.set_revision(head->header().revision());
  ASSERT_TRUE(t.writer->Compact(compact).ok());
  ASSERT_GT(head->header().revision(), listed_at + 1);
  EXPECT_EQ(log.Count("connected "), 0u) << "the compaction was meant to land in the gap";

  ASSERT_TRUE(WaitFor([&] { return log.Has("relisted"); }, seconds(15)));
  EXPECT_GE(discovery.revision(), head->header().revision());
  EXPECT_THAT(log.Changes(),
              ElementsAre("removed i1", "updated i2 h:2", "added i4 h:4", "relisted"));
  EXPECT_THAT(Ids(discovery.Instances()), ElementsAre("i2", "i3", "i4"));

  // And it watches again from after the new listing.
  log.Clear();
  ASSERT_TRUE(registrar.Register(Payment("i6", "h:6")).ok());
  ASSERT_TRUE(WaitFor([&] { return log.Count("added i6") == 1; }, seconds(10)));
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_THAT(log.Changes(), ElementsAre("added i6 h:6"));
  ASSERT_TRUE(registrar.Close().ok());
}

}  // namespace
}  // namespace keel::client
