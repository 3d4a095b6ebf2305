#include "net/keeld_config.h"

#include <algorithm>
#include <limits>
#include <map>

#include <openssl/sha.h>

#include <CLI/CLI.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace keel::net {
namespace {

absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t BigEndian64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

uint64_t Sha1Prefix(std::string_view bytes) {
  unsigned char digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  return BigEndian64(digest);
}

// Go's time.ParseDuration for the units an operator writes here: "1h", "30m", "1h30m",
// "90s", "500ms". Only positive whole numbers per unit.
absl::StatusOr<Nanos> ParseGoDuration(std::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError("empty duration");
  Nanos total{0};
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size() && text[j] >= '0' && text[j] <= '9') ++j;
    if (j == i || j - i > 9) return absl::InvalidArgumentError("bad duration");
    int64_t n = 0;
    if (!absl::SimpleAtoi(Absl(text.substr(i, j - i)), &n)) {
      return absl::InvalidArgumentError("bad duration");
    }
    // Nanoseconds in an int64 last 292 years: refuse more, as Go's ParseDuration does,
    // rather than wrap around into a period that switches compaction off.
    constexpr int64_t kMaxHours = std::numeric_limits<int64_t>::max() / 3'600'000'000'000;
    size_t k = j;
    while (k < text.size() && !(text[k] >= '0' && text[k] <= '9')) ++k;
    const std::string_view unit = text.substr(j, k - j);
    Nanos part;
    if (unit == "h" && n <= kMaxHours) part = std::chrono::hours(n);
    else if (unit == "m" && n <= kMaxHours * 60) part = std::chrono::minutes(n);
    else if (unit == "s" || unit == "ms") {
      part = unit == "s" ? Nanos(std::chrono::seconds(n)) : Nanos(std::chrono::milliseconds(n));
    } else if (unit == "h" || unit == "m") {
      return absl::InvalidArgumentError("duration out of range");
    } else {
      return absl::InvalidArgumentError("bad duration unit (use h, m, s or ms)");
    }
    if (total.count() > std::numeric_limits<int64_t>::max() - part.count()) {
      return absl::InvalidArgumentError("duration out of range");
    }
    total += part;
    i = k;
  }
  return total;
}

}  // namespace

std::string Url::HostPort() const {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<Url> ParseUrl(std::string_view text) {
  absl::string_view rest = Absl(text);
  const std::string shown(text);
  if (absl::StartsWith(rest, "https://") || absl::StartsWith(rest, "unixs://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", shown, "\": keel does not serve TLS yet; use http://"));
  }
  if (!absl::ConsumePrefix(&rest, "http://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", shown, "\" is not a URL of the form http://host:port"));
  }
  rest = absl::StripSuffix(rest, "/");
  Url url;
  absl::string_view port_text;
  if (absl::ConsumePrefix(&rest, "[")) {  // [IPv6]:port
    const size_t close = rest.find("]:");
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("\"", shown, "\": bad IPv6 host"));
    }
    url.host = std::string(rest.substr(0, close));
    port_text = rest.substr(close + 2);
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("\"", shown, "\" has no port"));
    }
    url.host = std::string(rest.substr(0, colon));
    port_text = rest.substr(colon + 1);
  }
  uint32_t port = 0;
  // Digits only: SimpleAtoi would take a sign or spaces, which Go's url.Parse refuses.
  if (port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("\"", shown, "\" has a bad port"));
  }
  if (url.host.empty() || url.host.find_first_of("/?#@ ") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("\"", shown, "\" has a bad host"));
  }
  if (!absl::SimpleAtoi(port_text, &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("\"", shown, "\" has a bad port"));
  }
  url.port = static_cast<uint16_t>(port);
  url.text = absl::StrCat("http://", url.HostPort());
  return url;
}

absl::StatusOr<std::vector<Url>> ParseUrls(std::string_view flag, std::string_view comma_list) {
  std::vector<Url> urls;
  for (absl::string_view part : absl::StrSplit(Absl(comma_list), ',', absl::SkipWhitespace())) {
    absl::StatusOr<Url> url = ParseUrl(std::string_view(part.data(), part.size()));
    if (!url.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", Absl(flag), ": ", url.status().message()));
    }
    urls.push_back(*std::move(url));
  }
  if (urls.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", Absl(flag), " needs at least one URL"));
  }
  return urls;
}

NodeId MemberIdFor(const std::vector<std::string>& sorted_peer_urls, std::string_view token) {
  std::string bytes = absl::StrJoin(sorted_peer_urls, "");
  bytes.append(token);
  return NodeId(Sha1Prefix(bytes));
}

uint64_t ClusterIdFor(std::vector<NodeId> members) {
  std::sort(members.begin(), members.end());
  std::string bytes;
  for (NodeId id : members) {
    for (int shift = 56; shift >= 0; shift -= 8) {
      bytes.push_back(static_cast<char>((id.value >> shift) & 0xff));
    }
  }
  return Sha1Prefix(bytes);
}

absl::StatusOr<std::vector<ClusterMember>> ParseInitialCluster(std::string_view text,
                                                               std::string_view token) {
  std::map<std::string, std::vector<std::string>> urls_by_name;
  for (absl::string_view part : absl::StrSplit(Absl(text), ',', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    if (kv.first.empty() || kv.second.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--initial-cluster: \"", part, "\" is not name=http://host:port"));
    }
    absl::StatusOr<Url> url = ParseUrl(std::string_view(kv.second.data(), kv.second.size()));
    if (!url.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--initial-cluster: ", url.status().message()));
    }
    urls_by_name[std::string(kv.first)].push_back(url->text);
  }
  if (urls_by_name.empty()) {
    return absl::InvalidArgumentError("--initial-cluster names no member");
  }
  std::vector<ClusterMember> members;
  std::map<std::string, std::string> owner_of_url;
  for (auto& [name, urls] : urls_by_name) {
    std::sort(urls.begin(), urls.end());
    for (const std::string& url : urls) {
      auto [it, inserted] = owner_of_url.emplace(url, name);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--initial-cluster: ", url, " is given twice (", it->second, ", ", name, ")"));
      }
    }
    ClusterMember m{.name = name, .peer_urls = urls, .id = MemberIdFor(urls, token)};
    if (m.id.IsZero()) return absl::InvalidArgumentError("--initial-cluster: a member id is 0");
    members.push_back(std::move(m));
  }
  std::sort(members.begin(), members.end(),
            [](const ClusterMember& a, const ClusterMember& b) { return a.id < b.id; });
  for (size_t i = 1; i < members.size(); ++i) {
    if (members[i].id == members[i - 1].id) {
      return absl::InvalidArgumentError("--initial-cluster: two members share an id");
    }
  }
  return members;
}

const ClusterMember& KeeldConfig::SelfMember() const {
  for (const ClusterMember& m : initial_cluster) {
    if (m.id == self) return m;
  }
  static const ClusterMember none;
  return none;
}

absl::Status Finalize(KeeldConfig* c) {
  if (c->name.empty()) return absl::InvalidArgumentError("--name must not be empty");
  if (c->data_dir.empty()) c->data_dir = c->name + ".keel";
  if (c->heartbeat_interval_ms <= 0) {
    return absl::InvalidArgumentError("--heartbeat-interval must be positive (milliseconds)");
  }
  // etcd's rules: the election timeout is at least 5 heartbeats and at most 50 s.
  if (c->election_timeout_ms < 5 * c->heartbeat_interval_ms) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--election-timeout[", c->election_timeout_ms,
        "ms] should be at least as 5 times as --heartbeat-interval[", c->heartbeat_interval_ms,
        "ms]"));
  }
  if (c->election_timeout_ms > 50'000) {
    return absl::InvalidArgumentError("--election-timeout is longer than 50000 ms");
  }
  if (c->snapshot_count == 0) return absl::InvalidArgumentError("--snapshot-count must be > 0");
  if (c->quota_backend_bytes < 0) {
    return absl::InvalidArgumentError("--quota-backend-bytes must not be negative");
  }
  if (c->max_request_bytes == 0 || c->max_request_bytes > (64u << 20)) {
    return absl::InvalidArgumentError("--max-request-bytes must be in (0, 64 MiB]");
  }
  if (c->initial_cluster_state != "new" && c->initial_cluster_state != "existing") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--initial-cluster-state must be \"new\" or \"existing\", not \"",
        c->initial_cluster_state, "\""));
  }
  if (c->auto_compaction_mode != "periodic" && c->auto_compaction_mode != "revision") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--auto-compaction-mode must be \"periodic\" or \"revision\", not \"",
        c->auto_compaction_mode, "\""));
  }
  if (absl::Status st = AutoCompactionFor(*c).status(); !st.ok()) return st;
  if (c->log_level != "debug" && c->log_level != "info" && c->log_level != "warn" &&
      c->log_level != "error") {
    return absl::InvalidArgumentError("--log-level must be debug, info, warn or error");
  }

  std::vector<std::string> advertised;
  for (const Url& u : c->initial_advertise_peer_urls) advertised.push_back(u.text);
  std::sort(advertised.begin(), advertised.end());
  for (const ClusterMember& m : c->initial_cluster) {
    if (m.name != c->name) continue;
    if (m.peer_urls != advertised) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--initial-cluster has ", m.name, "=", absl::StrJoin(m.peer_urls, ","),
          " but --initial-advertise-peer-urls is ", absl::StrJoin(advertised, ",")));
    }
    c->self = m.id;
  }
  if (c->self.IsZero()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--initial-cluster has no member named \"", c->name, "\" (--name)"));
  }
  std::vector<NodeId> ids;
  for (const ClusterMember& m : c->initial_cluster) ids.push_back(m.id);
  c->cluster_id = ClusterIdFor(ids);
  return absl::OkStatus();
}

absl::StatusOr<server::AutoCompactionConfig> AutoCompactionFor(const KeeldConfig& c) {
  using Mode = server::AutoCompactionConfig::Mode;
  server::AutoCompactionConfig out;
  const std::string& r = c.auto_compaction_retention;
  if (c.auto_compaction_mode == "revision") {
    int64_t revisions = 0;
    if (!absl::SimpleAtoi(r, &revisions) || revisions < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--auto-compaction-retention \"", r, "\": revision mode takes a revision count"));
    }
    if (revisions > 0) out = {.mode = Mode::kRevision, .retention_revisions = revisions};
    return out;
  }
  // Periodic: a duration, or a bare number of hours (etcd's rule).
  int64_t hours = 0;
  Nanos period{0};
  if (absl::SimpleAtoi(r, &hours)) {
    if (hours < 0) return absl::InvalidArgumentError("--auto-compaction-retention is negative");
    absl::StatusOr<Nanos> d = ParseGoDuration(absl::StrCat(hours, "h"));
    if (!d.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--auto-compaction-retention \"", r, "\": ", d.status().message()));
    }
    period = *d;
  } else {
    absl::StatusOr<Nanos> d = ParseGoDuration(r);
    if (!d.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--auto-compaction-retention \"", r, "\": ", d.status().message()));
    }
    period = *d;
  }
  if (period > Nanos(0)) out = {.mode = Mode::kPeriodic, .retention_period = period};
  return out;
}

ParsedFlags ParseKeeldFlags(int argc, const char* const* argv) {
  ParsedFlags out;
  KeeldConfig& c = out.config;
  CLI::App app("keeld: an etcd-compatible, Raft-replicated registry (keel)", "keeld");
  app.option_defaults()->always_capture_default();
  std::string listen_client = "http://127.0.0.1:2379";
  std::string advertise_client = "http://127.0.0.1:2379";
  std::string listen_peer = "http://127.0.0.1:2380";
  std::string advertise_peer = "http://127.0.0.1:2380";
  std::string listen_metrics = "http://127.0.0.1:2381";
  std::string initial_cluster;
  app.add_option("--name", c.name, "Human-readable name for this member");
  app.add_option("--data-dir", c.data_dir, "Path to the data directory (default: <name>.keel)");
  app.add_option("--listen-client-urls", listen_client, "URLs to listen on for client traffic");
  app.add_option("--advertise-client-urls", advertise_client,
                 "This member's client URLs to advertise to the cluster");
  app.add_option("--listen-peer-urls", listen_peer, "URLs to listen on for peer traffic");
  app.add_option("--initial-advertise-peer-urls", advertise_peer,
                 "This member's peer URLs to advertise to the cluster");
  app.add_option("--listen-metrics-urls", listen_metrics,
                 "URLs to serve /metrics and /health on (HTTP)");
  app.add_option("--initial-cluster", initial_cluster,
                 "Initial cluster: name=peer-url,... (default: <name>=<initial-advertise-peer-urls>)");
  app.add_option("--initial-cluster-state", c.initial_cluster_state, "new or existing");
  app.add_option("--initial-cluster-token", c.initial_cluster_token,
                 "Initial cluster token (member and cluster ids derive from it)");
  app.add_option("--heartbeat-interval", c.heartbeat_interval_ms,
                 "Time (in milliseconds) of a heartbeat interval");
  app.add_option("--election-timeout", c.election_timeout_ms,
                 "Time (in milliseconds) for an election to timeout");
  // Unsigned flags: CLI11 would wrap "-1" around; etcd's flag package refuses it.
  app.add_option("--snapshot-count", c.snapshot_count,
                 "Number of committed transactions to trigger a snapshot")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--auto-compaction-mode", c.auto_compaction_mode, "periodic or revision");
  app.add_option("--auto-compaction-retention", c.auto_compaction_retention,
                 "Auto compaction retention (periodic: 1h, 30m or hours; revision: count); 0 disables");
  app.add_option("--quota-backend-bytes", c.quota_backend_bytes,
                 "Raise the NOSPACE alarm when the database exceeds this size (0: 2 GiB)");
  app.add_option("--max-request-bytes", c.max_request_bytes,
                 "Maximum client request size in bytes the server will accept")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", c.log_level, "debug, info, warn or error");
  app.set_version_flag("--version", "keeld (keel) 0.1.0, etcd API 3.4");

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    out.exit = true;
    out.exit_code = 0;
    out.output = e.get_name() == "CallForVersion" ? std::string(e.what()) + "\n" : app.help();
    return out;
  } catch (const CLI::ParseError& e) {
    out.exit = true;
    out.exit_code = 2;
    out.output = absl::StrCat("keeld: ", e.what(), "\nRun keeld --help for the flags.\n");
    return out;
  }

  auto fail = [&out](const absl::Status& st) -> ParsedFlags& {
    out.exit = true;
    out.exit_code = 2;
    out.output = absl::StrCat("keeld: ", st.message(), "\n");
    return out;
  };
  struct UrlFlag {
    const char* name;
    const std::string* text;
    std::vector<Url>* urls;
  };
  for (const UrlFlag& f : {UrlFlag{"listen-client-urls", &listen_client, &c.listen_client_urls},
                           UrlFlag{"advertise-client-urls", &advertise_client, &c.advertise_client_urls},
                           UrlFlag{"listen-peer-urls", &listen_peer, &c.listen_peer_urls},
                           UrlFlag{"initial-advertise-peer-urls", &advertise_peer,
                                   &c.initial_advertise_peer_urls},
                           UrlFlag{"listen-metrics-urls", &listen_metrics, &c.listen_metrics_urls}}) {
    absl::StatusOr<std::vector<Url>> urls = ParseUrls(f.name, *f.text);
    if (!urls.ok()) return fail(urls.status());
    *f.urls = *std::move(urls);
  }
  if (initial_cluster.empty()) {
    std::vector<std::string> parts;
    for (const Url& u : c.initial_advertise_peer_urls) parts.push_back(c.name + "=" + u.text);
    initial_cluster = absl::StrJoin(parts, ",");
  }
  absl::StatusOr<std::vector<ClusterMember>> members =
      ParseInitialCluster(initial_cluster, c.initial_cluster_token);
  if (!members.ok()) return fail(members.status());
  c.initial_cluster = *std::move(members);
  if (absl::Status st = Finalize(&c); !st.ok()) return fail(st);
  return out;
}

}  // namespace keel::net
