#include "net/keeld_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

namespace keel::net {
namespace {

using ::testing::HasSubstr;
using Mode = server::AutoCompactionConfig::Mode;

// Reference: etcd 3.4 on this machine, `etcd --name n1 --initial-advertise-peer-urls
// http://127.0.0.1:23801 --initial-cluster n1=http://127.0.0.1:23801` (token
// etcd-cluster), then `etcdctl get x -w json`: the header's member_id and cluster_id.
constexpr uint64_t kEtcdMemberIdN1 = 13668033151171901709ULL;
constexpr uint64_t kEtcdClusterIdN1 = 15118495548433857066ULL;

// Runs ParseKeeldFlags over `args` as if typed after "keeld".
ParsedFlags Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "keeld");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  return ParseKeeldFlags(static_cast<int>(argv.size()), argv.data());
}

std::vector<std::string> Texts(const std::vector<Url>& urls) {
  std::vector<std::string> out;
  for (const Url& u : urls) out.push_back(u.text);
  return out;
}

// --- ParseUrl ---------------------------------------------------------------------------

TEST(KeeldConfigParseUrl, AcceptsHttpHostPort) {
  absl::StatusOr<Url> url = ParseUrl("http://127.0.0.1:2379");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "127.0.0.1");
  EXPECT_EQ(url->port, 2379);
  EXPECT_EQ(url->text, "http://127.0.0.1:2379");
  EXPECT_EQ(url->HostPort(), "127.0.0.1:2379");

  url = ParseUrl("http://localhost:65535");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "localhost");
  EXPECT_EQ(url->port, 65535);

  url = ParseUrl("http://example.com:1");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->port, 1);
}

TEST(KeeldConfigParseUrl, AcceptsBracketedIpv6AndKeepsTheBracketsInHostPort) {
  absl::StatusOr<Url> url = ParseUrl("http://[::1]:2379");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "::1");
  EXPECT_EQ(url->port, 2379);
  EXPECT_EQ(url->HostPort(), "[::1]:2379");
  EXPECT_EQ(url->text, "http://[::1]:2379");

  url = ParseUrl("http://[fe80::1:2]:80/");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "fe80::1:2");
  EXPECT_EQ(url->port, 80);
  EXPECT_EQ(url->text, "http://[fe80::1:2]:80");
}

TEST(KeeldConfigParseUrl, DropsATrailingSlashFromTheNormalizedText) {
  absl::StatusOr<Url> url = ParseUrl("http://127.0.0.1:2380/");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->text, "http://127.0.0.1:2380");
  EXPECT_EQ(url->port, 2380);
}

TEST(KeeldConfigParseUrl, RefusesHttpsSayingKeelHasNoTls) {
  absl::StatusOr<Url> url = ParseUrl("https://127.0.0.1:2379");
  ASSERT_FALSE(url.ok());
  EXPECT_EQ(url.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(url.status().message()), HasSubstr("TLS"));
  EXPECT_THAT(std::string(url.status().message()), HasSubstr("https://127.0.0.1:2379"));

  url = ParseUrl("unixs://sock:1");
  ASSERT_FALSE(url.ok());
  EXPECT_THAT(std::string(url.status().message()), HasSubstr("TLS"));
}

TEST(KeeldConfigParseUrl, RefusesOtherSchemesAndBareHostPort) {
  for (const char* text : {"127.0.0.1:2379", "unix://sock:1", "ftp://a:1", "HTTP//a:1", ""}) {
    absl::StatusOr<Url> url = ParseUrl(text);
    EXPECT_FALSE(url.ok()) << text;
    if (!url.ok()) {
      EXPECT_THAT(std::string(url.status().message()), HasSubstr("http://host:port")) << text;
    }
  }
}

TEST(KeeldConfigParseUrl, RefusesAMissingPort) {
  for (const char* text : {"http://127.0.0.1", "http://localhost/", "http://127.0.0.1:",
                           "http://[::1]", "http://[::1]:"}) {
    EXPECT_FALSE(ParseUrl(text).ok()) << text;
  }
  EXPECT_THAT(std::string(ParseUrl("http://localhost").status().message()), HasSubstr("no port"));
}

TEST(KeeldConfigParseUrl, RefusesPortsOutOfRangeOrNotNumbers) {
  for (const char* text : {"http://a:0", "http://a:65536", "http://a:99999999999", "http://a:abc",
                           "http://a:-1", "http://a:80x", "http://[::1]:0",
                           "http://[::1]:65536"}) {
    absl::StatusOr<Url> url = ParseUrl(text);
    EXPECT_FALSE(url.ok()) << text;
    if (!url.ok()) {
      EXPECT_THAT(std::string(url.status().message()), HasSubstr("port")) << text;
    }
  }
}

// Go's url.Parse (and so etcd) takes only digits after the colon.
TEST(KeeldConfigParseUrl, RefusesAPortWithASignOrSpaces) {
  for (const char* text : {"http://a:+80", "http://a: 80", "http://a:80 "}) {
    EXPECT_FALSE(ParseUrl(text).ok()) << text;
  }
}

TEST(KeeldConfigParseUrl, RefusesAnEmptyOrMalformedHost) {
  for (const char* text : {"http://:2379", "http://[]:2379", "http://a b:1", "http://u@a:1",
                           "http://a/b:1"}) {
    absl::StatusOr<Url> url = ParseUrl(text);
    EXPECT_FALSE(url.ok()) << text;
  }
  EXPECT_THAT(std::string(ParseUrl("http://:2379").status().message()), HasSubstr("bad host"));
}

// --- ParseUrls --------------------------------------------------------------------------

TEST(KeeldConfigParseUrls, SplitsACommaListInOrder) {
  absl::StatusOr<std::vector<Url>> urls =
      ParseUrls("listen-client-urls", "http://a:1,http://[::1]:2,http://c:3/");
  ASSERT_TRUE(urls.ok()) << urls.status();
  EXPECT_EQ(Texts(*urls),
            (std::vector<std::string>{"http://a:1", "http://[::1]:2", "http://c:3"}));
}

TEST(KeeldConfigParseUrls, AnEmptyListIsAnErrorNamingTheFlag) {
  for (const char* list : {"", ",", " , "}) {
    absl::StatusOr<std::vector<Url>> urls = ParseUrls("listen-peer-urls", list);
    ASSERT_FALSE(urls.ok()) << "\"" << list << "\"";
    EXPECT_THAT(std::string(urls.status().message()), HasSubstr("--listen-peer-urls")) << list;
  }
}

TEST(KeeldConfigParseUrls, ABadUrlIsAnErrorNamingTheFlagAndTheUrl) {
  absl::StatusOr<std::vector<Url>> urls =
      ParseUrls("advertise-client-urls", "http://a:1,https://b:2");
  ASSERT_FALSE(urls.ok());
  EXPECT_THAT(std::string(urls.status().message()), HasSubstr("--advertise-client-urls"));
  EXPECT_THAT(std::string(urls.status().message()), HasSubstr("https://b:2"));
  EXPECT_THAT(std::string(urls.status().message()), HasSubstr("TLS"));
}

// --- Member and cluster ids -------------------------------------------------------------

TEST(KeeldConfigIds, MemberIdMatchesEtcd34) {
  EXPECT_EQ(MemberIdFor({"http://127.0.0.1:23801"}, "etcd-cluster"), NodeId(kEtcdMemberIdN1));
}

TEST(KeeldConfigIds, ClusterIdMatchesEtcd34) {
  EXPECT_EQ(ClusterIdFor({NodeId(kEtcdMemberIdN1)}), kEtcdClusterIdN1);
}

TEST(KeeldConfigIds, TheTokenAndTheUrlsChangeTheMemberId) {
  const NodeId base = MemberIdFor({"http://127.0.0.1:23801"}, "etcd-cluster");
  EXPECT_NE(MemberIdFor({"http://127.0.0.1:23801"}, "other-token"), base);
  EXPECT_NE(MemberIdFor({"http://127.0.0.1:23802"}, "etcd-cluster"), base);
  EXPECT_NE(MemberIdFor({"http://127.0.0.1:23801", "http://127.0.0.1:23802"}, "etcd-cluster"),
            base);
}

TEST(KeeldConfigIds, TheClusterIdDoesNotDependOnTheOrderOfMembers) {
  const NodeId a(1), b(2), c(0xffffffffffffffffULL);
  EXPECT_EQ(ClusterIdFor({a, b, c}), ClusterIdFor({c, a, b}));
  EXPECT_EQ(ClusterIdFor({a, b, c}), ClusterIdFor({b, c, a}));
  EXPECT_NE(ClusterIdFor({a, b}), ClusterIdFor({a, b, c}));
}

TEST(KeeldConfigIds, ParseKeeldFlagsDerivesEtcdsIds) {
  ParsedFlags parsed = Parse({"--name", "n1", "--initial-advertise-peer-urls",
                              "http://127.0.0.1:23801", "--listen-peer-urls",
                              "http://127.0.0.1:23801", "--initial-cluster",
                              "n1=http://127.0.0.1:23801"});
  ASSERT_FALSE(parsed.exit) << parsed.output;
  EXPECT_EQ(parsed.config.self, NodeId(kEtcdMemberIdN1));
  EXPECT_EQ(parsed.config.cluster_id, kEtcdClusterIdN1);
  EXPECT_EQ(parsed.config.SelfMember().name, "n1");
}

// --- ParseInitialCluster ----------------------------------------------------------------

TEST(KeeldConfigInitialCluster, ParsesMembersWithTheirEtcdIds) {
  absl::StatusOr<std::vector<ClusterMember>> members =
      ParseInitialCluster("n1=http://127.0.0.1:23801", "etcd-cluster");
  ASSERT_TRUE(members.ok()) << members.status();
  ASSERT_EQ(members->size(), 1u);
  EXPECT_EQ((*members)[0].name, "n1");
  EXPECT_EQ((*members)[0].peer_urls, std::vector<std::string>{"http://127.0.0.1:23801"});
  EXPECT_EQ((*members)[0].id, NodeId(kEtcdMemberIdN1));
}

TEST(KeeldConfigInitialCluster, ANameRepeatedGivesOneMemberWithSortedUrls) {
  absl::StatusOr<std::vector<ClusterMember>> members = ParseInitialCluster(
      "n1=http://b:2380,n2=http://c:2380,n1=http://a:2380/", "etcd-cluster");
  ASSERT_TRUE(members.ok()) << members.status();
  ASSERT_EQ(members->size(), 2u);
  const ClusterMember& n1 = (*members)[0].name == "n1" ? (*members)[0] : (*members)[1];
  ASSERT_EQ(n1.name, "n1");
  EXPECT_EQ(n1.peer_urls, (std::vector<std::string>{"http://a:2380", "http://b:2380"}));
  EXPECT_EQ(n1.id, MemberIdFor({"http://a:2380", "http://b:2380"}, "etcd-cluster"));
}

TEST(KeeldConfigInitialCluster, TheSameUrlUnderTwoNamesIsRefused) {
  absl::StatusOr<std::vector<ClusterMember>> members =
      ParseInitialCluster("n1=http://a:2380,n2=http://a:2380/", "etcd-cluster");
  ASSERT_FALSE(members.ok());
  EXPECT_EQ(members.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(members.status().message()), HasSubstr("http://a:2380"));
  EXPECT_THAT(std::string(members.status().message()), HasSubstr("--initial-cluster"));
}

TEST(KeeldConfigInitialCluster, BadEntriesAreRefusedNamingTheFlag) {
  for (const char* text : {"", ",", "n1", "n1=", "=http://a:1", "n1=https://a:1",
                           "n1=http://a", "n1=http://a:1,n2", "n1=a:1"}) {
    absl::StatusOr<std::vector<ClusterMember>> members =
        ParseInitialCluster(text, "etcd-cluster");
    EXPECT_FALSE(members.ok()) << "\"" << text << "\"";
    if (!members.ok()) {
      EXPECT_THAT(std::string(members.status().message()), HasSubstr("--initial-cluster"))
          << text;
    }
  }
}

TEST(KeeldConfigInitialCluster, MembersAreSortedById) {
  absl::StatusOr<std::vector<ClusterMember>> members = ParseInitialCluster(
      "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380,"
      "d=http://10.0.0.4:2380,e=http://10.0.0.5:2380",
      "etcd-cluster");
  ASSERT_TRUE(members.ok()) << members.status();
  ASSERT_EQ(members->size(), 5u);
  for (size_t i = 1; i < members->size(); ++i) {
    EXPECT_LT((*members)[i - 1].id, (*members)[i].id) << i;
  }
  for (const ClusterMember& m : *members) {
    EXPECT_EQ(m.id, MemberIdFor(m.peer_urls, "etcd-cluster")) << m.name;
  }
}

// --- ParseKeeldFlags: defaults and forms ------------------------------------------------

TEST(KeeldConfigFlags, NoFlagsGiveEtcdsDefaultsMappedToKeels) {
  ParsedFlags parsed = Parse({});
  ASSERT_FALSE(parsed.exit) << parsed.output;
  const KeeldConfig& c = parsed.config;
  EXPECT_EQ(c.name, "default");
  EXPECT_EQ(c.data_dir, "default.keel");
  EXPECT_EQ(Texts(c.listen_client_urls), std::vector<std::string>{"http://127.0.0.1:2379"});
  EXPECT_EQ(Texts(c.advertise_client_urls), std::vector<std::string>{"http://127.0.0.1:2379"});
  EXPECT_EQ(Texts(c.listen_peer_urls), std::vector<std::string>{"http://127.0.0.1:2380"});
  EXPECT_EQ(Texts(c.initial_advertise_peer_urls),
            std::vector<std::string>{"http://127.0.0.1:2380"});
  EXPECT_EQ(Texts(c.listen_metrics_urls), std::vector<std::string>{"http://127.0.0.1:2381"});
  ASSERT_EQ(c.initial_cluster.size(), 1u);
  EXPECT_EQ(c.initial_cluster[0].name, "default");
  EXPECT_EQ(c.initial_cluster[0].peer_urls, std::vector<std::string>{"http://127.0.0.1:2380"});
  EXPECT_EQ(c.initial_cluster[0].id, MemberIdFor({"http://127.0.0.1:2380"}, "etcd-cluster"));
  EXPECT_EQ(c.self, c.initial_cluster[0].id);
  EXPECT_EQ(c.cluster_id, ClusterIdFor({c.self}));
  EXPECT_EQ(c.initial_cluster_state, "new");
  EXPECT_EQ(c.initial_cluster_token, "etcd-cluster");
  EXPECT_EQ(c.heartbeat_interval_ms, 100);
  EXPECT_EQ(c.election_timeout_ms, 1000);
  EXPECT_EQ(c.snapshot_count, 100'000u);
  EXPECT_EQ(c.auto_compaction_mode, "periodic");
  EXPECT_EQ(c.auto_compaction_retention, "0");
  EXPECT_EQ(c.QuotaBytes(), 2LL << 30);
  EXPECT_EQ(c.max_request_bytes, 1536u * 1024u);
  EXPECT_EQ(c.log_level, "info");
}

TEST(KeeldConfigFlags, TheNameSetsTheDefaultDataDirAndInitialCluster) {
  ParsedFlags parsed = Parse({"--name=n7"});
  ASSERT_FALSE(parsed.exit) << parsed.output;
  EXPECT_EQ(parsed.config.data_dir, "n7.keel");
  ASSERT_EQ(parsed.config.initial_cluster.size(), 1u);
  EXPECT_EQ(parsed.config.initial_cluster[0].name, "n7");
  EXPECT_EQ(parsed.config.SelfMember().name, "n7");
}

TEST(KeeldConfigFlags, EqualsAndSpaceFormsAreTheSame) {
  const std::vector<std::string> equals = {
      "--name=n2",
      "--data-dir=/var/lib/keel",
      "--listen-client-urls=http://0.0.0.0:12379,http://[::1]:12379",
      "--advertise-client-urls=http://10.0.0.2:12379",
      "--listen-peer-urls=http://0.0.0.0:12380",
      "--initial-advertise-peer-urls=http://10.0.0.2:12380",
      "--listen-metrics-urls=http://0.0.0.0:12381",
      "--initial-cluster=n1=http://10.0.0.1:12380,n2=http://10.0.0.2:12380",
      "--initial-cluster-state=existing",
      "--initial-cluster-token=tok",
      "--heartbeat-interval=50",
      "--election-timeout=500",
      "--snapshot-count=10",
      "--auto-compaction-mode=revision",
      "--auto-compaction-retention=1000",
      "--quota-backend-bytes=1048576",
      "--max-request-bytes=4096",
      "--log-level=debug",
  };
  std::vector<std::string> spaced;
  for (const std::string& arg : equals) {
    const size_t eq = arg.find('=');
    spaced.push_back(arg.substr(0, eq));
    spaced.push_back(arg.substr(eq + 1));
  }
  for (const std::vector<std::string>& args : {equals, spaced}) {
    ParsedFlags parsed = Parse(args);
    ASSERT_FALSE(parsed.exit) << parsed.output;
    const KeeldConfig& c = parsed.config;
    EXPECT_EQ(c.name, "n2");
    EXPECT_EQ(c.data_dir, "/var/lib/keel");
    EXPECT_EQ(Texts(c.listen_client_urls),
              (std::vector<std::string>{"http://0.0.0.0:12379", "http://[::1]:12379"}));
    EXPECT_EQ(Texts(c.advertise_client_urls), std::vector<std::string>{"http://10.0.0.2:12379"});
    EXPECT_EQ(Texts(c.listen_peer_urls), std::vector<std::string>{"http://0.0.0.0:12380"});
    EXPECT_EQ(Texts(c.initial_advertise_peer_urls),
              std::vector<std::string>{"http://10.0.0.2:12380"});
    EXPECT_EQ(Texts(c.listen_metrics_urls), std::vector<std::string>{"http://0.0.0.0:12381"});
    ASSERT_EQ(c.initial_cluster.size(), 2u);
    EXPECT_EQ(c.initial_cluster_state, "existing");
    EXPECT_EQ(c.initial_cluster_token, "tok");
    EXPECT_EQ(c.self, MemberIdFor({"http://10.0.0.2:12380"}, "tok"));
    EXPECT_EQ(c.SelfMember().name, "n2");
    EXPECT_EQ(c.cluster_id, ClusterIdFor({MemberIdFor({"http://10.0.0.1:12380"}, "tok"),
                                          MemberIdFor({"http://10.0.0.2:12380"}, "tok")}));
    EXPECT_EQ(c.heartbeat_interval_ms, 50);
    EXPECT_EQ(c.election_timeout_ms, 500);
    EXPECT_EQ(c.snapshot_count, 10u);
    EXPECT_EQ(c.auto_compaction_mode, "revision");
    EXPECT_EQ(c.auto_compaction_retention, "1000");
    EXPECT_EQ(c.QuotaBytes(), 1048576);
    EXPECT_EQ(c.max_request_bytes, 4096u);
    EXPECT_EQ(c.log_level, "debug");
  }
}

TEST(KeeldConfigFlags, HelpExitsZeroListingTheFlags) {
  ParsedFlags parsed = Parse({"--help"});
  EXPECT_TRUE(parsed.exit);
  EXPECT_EQ(parsed.exit_code, 0);
  EXPECT_THAT(parsed.output, HasSubstr("--name"));
  EXPECT_THAT(parsed.output, HasSubstr("--initial-cluster"));
  EXPECT_THAT(parsed.output, HasSubstr("--auto-compaction-retention"));
}

TEST(KeeldConfigFlags, VersionExitsZeroWithTheVersion) {
  ParsedFlags parsed = Parse({"--version"});
  EXPECT_TRUE(parsed.exit);
  EXPECT_EQ(parsed.exit_code, 0);
  EXPECT_THAT(parsed.output, HasSubstr("keeld"));
  EXPECT_THAT(parsed.output, HasSubstr("3.4"));
}

// --- ParseKeeldFlags: refusals ----------------------------------------------------------

struct BadFlags {
  std::vector<std::string> args;
  std::string expected;  // a substring of the message; it names the flag
};

TEST(KeeldConfigFlags, BadFlagsExitTwoWithAMessageNamingTheFlag) {
  const std::vector<BadFlags> cases = {
      {{"--bogus-flag=1"}, "--bogus-flag"},
      {{"--heartbeat-interval=abc"}, "heartbeat-interval"},
      {{"--heartbeat-interval", "abc"}, "heartbeat-interval"},
      {{"--heartbeat-interval=0"}, "--heartbeat-interval"},
      {{"--heartbeat-interval=300"},
       "--election-timeout[1000ms] should be at least as 5 times as "
       "--heartbeat-interval[300ms]"},
      {{"--election-timeout=400"},
       "--election-timeout[400ms] should be at least as 5 times as "
       "--heartbeat-interval[100ms]"},
      {{"--election-timeout=60000"}, "--election-timeout"},
      {{"--initial-cluster-state=bogus"}, "--initial-cluster-state"},
      {{"--auto-compaction-mode=bogus"}, "--auto-compaction-mode"},
      {{"--auto-compaction-retention=xyz"}, "--auto-compaction-retention"},
      {{"--auto-compaction-mode=revision", "--auto-compaction-retention=1h"},
       "--auto-compaction-retention"},
      {{"--listen-client-urls=https://127.0.0.1:2379"}, "--listen-client-urls"},
      {{"--listen-client-urls=https://127.0.0.1:2379"}, "TLS"},
      {{"--listen-peer-urls=http://127.0.0.1"}, "--listen-peer-urls"},
      {{"--advertise-client-urls="}, "--advertise-client-urls"},
      {{"--listen-metrics-urls=http://a:0"}, "--listen-metrics-urls"},
      {{"--name=n9", "--initial-cluster=n1=http://127.0.0.1:2380"}, "--name"},
      {{"--name=n1", "--initial-cluster=n1=http://127.0.0.1:2390"},
       "--initial-advertise-peer-urls"},
      {{"--name=n1", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=n1=http://127.0.0.1:2380,n1=http://127.0.0.1:2390"},
       "--initial-advertise-peer-urls"},
      {{"--initial-cluster=n1=http://a:1,n2=http://a:1"}, "--initial-cluster"},
      {{"--log-level=loud"}, "--log-level"},
      {{"--max-request-bytes=0"}, "--max-request-bytes"},
      {{"--max-request-bytes=67108865"}, "--max-request-bytes"},
      {{"--max-request-bytes=-1"}, "max-request-bytes"},
      {{"--snapshot-count=0"}, "--snapshot-count"},
      {{"--quota-backend-bytes=-1"}, "--quota-backend-bytes"},
      {{"--name="}, "--name"},
  };
  for (const BadFlags& bad : cases) {
    ParsedFlags parsed = Parse(bad.args);
    std::string shown;
    for (const std::string& a : bad.args) shown += a + " ";
    EXPECT_TRUE(parsed.exit) << shown;
    EXPECT_EQ(parsed.exit_code, 2) << shown;
    EXPECT_THAT(parsed.output, HasSubstr(bad.expected)) << shown;
    EXPECT_THAT(parsed.output, HasSubstr("keeld: ")) << shown;
  }
}

// CLI11 reads "-1" into a uint64_t as 2^64-1 unless told otherwise; keel must not run with
// a snapshot every 18 quintillion entries because of a typo'd sign.
TEST(KeeldConfigFlags, NegativeCountsAreRefused) {
  for (const char* flag : {"--snapshot-count=-1", "--max-request-bytes=-1"}) {
    ParsedFlags parsed = Parse({flag});
    EXPECT_TRUE(parsed.exit) << flag << " gave snapshot_count " << parsed.config.snapshot_count
                             << ", max_request_bytes " << parsed.config.max_request_bytes;
    EXPECT_EQ(parsed.exit_code, 2) << flag;
    EXPECT_THAT(parsed.output, HasSubstr(std::string(flag).substr(0, std::string(flag).find('='))))
        << flag;
  }
}

TEST(KeeldConfigFlags, AdvertisedPeerUrlsMatchTheClusterEntryInAnyOrder) {
  ParsedFlags parsed = Parse({"--name=n1",
                              "--initial-advertise-peer-urls=http://10.0.0.2:2380,http://10.0.0.1:2380",
                              "--initial-cluster=n1=http://10.0.0.1:2380,n1=http://10.0.0.2:2380"});
  ASSERT_FALSE(parsed.exit) << parsed.output;
  EXPECT_EQ(parsed.config.self,
            MemberIdFor({"http://10.0.0.1:2380", "http://10.0.0.2:2380"}, "etcd-cluster"));
  EXPECT_EQ(parsed.config.SelfMember().peer_urls,
            (std::vector<std::string>{"http://10.0.0.1:2380", "http://10.0.0.2:2380"}));
}

TEST(KeeldConfigFlags, ElectionTimeoutOfExactlyFiveHeartbeatsIsAccepted) {
  ParsedFlags parsed = Parse({"--heartbeat-interval=200", "--election-timeout=1000"});
  EXPECT_FALSE(parsed.exit) << parsed.output;
}

// --- AutoCompactionFor ------------------------------------------------------------------

absl::StatusOr<server::AutoCompactionConfig> Compaction(const std::string& mode,
                                                        const std::string& retention) {
  KeeldConfig c;
  c.auto_compaction_mode = mode;
  c.auto_compaction_retention = retention;
  return AutoCompactionFor(c);
}

TEST(KeeldConfigAutoCompaction, PeriodicZeroIsDisabled) {
  for (const char* r : {"0", "0h", "0m", "0s", "0ms"}) {
    absl::StatusOr<server::AutoCompactionConfig> ac = Compaction("periodic", r);
    ASSERT_TRUE(ac.ok()) << r << ": " << ac.status();
    EXPECT_EQ(ac->mode, Mode::kNone) << r;
  }
  absl::StatusOr<server::AutoCompactionConfig> ac = Compaction("revision", "0");
  ASSERT_TRUE(ac.ok()) << ac.status();
  EXPECT_EQ(ac->mode, Mode::kNone);
}

TEST(KeeldConfigAutoCompaction, PeriodicBareNumberIsHours) {
  absl::StatusOr<server::AutoCompactionConfig> ac = Compaction("periodic", "1");
  ASSERT_TRUE(ac.ok()) << ac.status();
  EXPECT_EQ(ac->mode, Mode::kPeriodic);
  EXPECT_EQ(ac->retention_period, std::chrono::hours(1));

  ac = Compaction("periodic", "72");
  ASSERT_TRUE(ac.ok()) << ac.status();
  EXPECT_EQ(ac->retention_period, std::chrono::hours(72));
}

TEST(KeeldConfigAutoCompaction, PeriodicTakesGoDurations) {
  struct Case {
    const char* text;
    Nanos period;
  };
  using namespace std::chrono_literals;
  for (const Case& c : {Case{"30m", 30min}, Case{"1h30m", 90min}, Case{"500ms", 500ms},
                        Case{"90s", 90s}, Case{"2h", 2h}, Case{"1h0m30s", 1h + 30s},
                        Case{"1m500ms", 1min + 500ms}}) {
    absl::StatusOr<server::AutoCompactionConfig> ac = Compaction("periodic", c.text);
    ASSERT_TRUE(ac.ok()) << c.text << ": " << ac.status();
    EXPECT_EQ(ac->mode, Mode::kPeriodic) << c.text;
    EXPECT_EQ(ac->retention_period, c.period) << c.text;
  }
}

TEST(KeeldConfigAutoCompaction, PeriodicRefusesBadDurations) {
  for (const char* r : {"xyz", "", "-1", "-1h", "1x", "1h30", "h", "1.5h", "1d"}) {
    absl::StatusOr<server::AutoCompactionConfig> ac = Compaction("periodic", r);
    EXPECT_FALSE(ac.ok()) << "\"" << r << "\"";
    if (!ac.ok()) {
      EXPECT_THAT(std::string(ac.status().message()), HasSubstr("--auto-compaction-retention"))
          << r;
    }
  }
}

// A retention too long to count in int64 nanoseconds (over ~2562047 h) must be refused, not
// wrap around into a period <= 0 (compaction silently off) or a short one. Go's
// time.ParseDuration, which etcd uses, refuses "999999999h" as an invalid duration.
TEST(KeeldConfigAutoCompaction, PeriodicRefusesARetentionThatOverflows) {
  for (const char* r : {"3000000", "999999999h", "3000000h"}) {
    absl::StatusOr<server::AutoCompactionConfig> ac = Compaction("periodic", r);
    EXPECT_FALSE(ac.ok()) << r << " gave mode " << static_cast<int>(ac->mode) << " period "
                          << ac->retention_period.count() << "ns";
  }
}

TEST(KeeldConfigAutoCompaction, RevisionTakesACount) {
  absl::StatusOr<server::AutoCompactionConfig> ac = Compaction("revision", "1000");
  ASSERT_TRUE(ac.ok()) << ac.status();
  EXPECT_EQ(ac->mode, Mode::kRevision);
  EXPECT_EQ(ac->retention_revisions, 1000);
}

TEST(KeeldConfigAutoCompaction, RevisionRefusesADurationOrANegativeCount) {
  for (const char* r : {"1h", "-5", "xyz", ""}) {
    absl::StatusOr<server::AutoCompactionConfig> ac = Compaction("revision", r);
    EXPECT_FALSE(ac.ok()) << "\"" << r << "\"";
    if (!ac.ok()) {
      EXPECT_THAT(std::string(ac.status().message()), HasSubstr("--auto-compaction-retention"))
          << r;
      EXPECT_THAT(std::string(ac.status().message()), HasSubstr("revision")) << r;
    }
  }
}

}  // namespace
}  // namespace keel::net
