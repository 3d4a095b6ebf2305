// keelctl: the registry from the command line (net/client/registry.h), against keeld or
// etcd, with etcdctl's --endpoints.
//
//   keelctl register payment 10.0.0.1:8080 --ttl 10 --meta version=1.0
//       registers until Ctrl-C or SIGTERM, then deregisters (revokes its lease)
//   keelctl discover payment [--watch] [--pick random|round-robin|weighted]
//       prints the instances (one line each), then with --watch each change
//   keelctl services
//       services with their instance counts
//
// Output lines are flushed as they are written, so scripts can read them live. Exit
// codes: 0 done, 1 failed, 2 bad usage.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "net/client/client.h"
#include "net/client/registry.h"

namespace keel::client {
namespace {

std::mutex out_mu;  // callbacks print from the client's threads

void Print(const std::string& line) {
  std::lock_guard lock(out_mu);
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

int Fail(const absl::Status& st) {
  std::lock_guard lock(out_mu);
  std::fprintf(stderr, "keelctl: %s\n", std::string(st.message()).c_str());
  return 1;
}

// A bad argument, found before anything is sent: exit 2, as a parse error.
int Usage(const absl::Status& st) {
  Fail(st);
  return 2;
}

// "id addr version=1.0 weight=1 zone=az1 tags=a,b k=v": the fields that are set.
std::string Describe(const Instance& i) {
  std::string line = absl::StrCat(i.id, " ", i.addr);
  if (!i.version.empty()) absl::StrAppend(&line, " version=", i.version);
  absl::StrAppend(&line, " weight=", i.weight);
  if (!i.zone.empty()) absl::StrAppend(&line, " zone=", i.zone);
  if (!i.tags.empty()) absl::StrAppend(&line, " tags=", absl::StrJoin(i.tags, ","));
  for (const auto& [k, v] : i.metadata) absl::StrAppend(&line, " ", k, "=", v);
  return line;
}

// Blocks SIGINT and SIGTERM in every thread (call before any thread starts), so that
// WaitForSignal receives them synchronously.
sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

int WaitForSignal(const sigset_t& set) {
  int signal = 0;
  sigwait(&set, &signal);
  return signal;
}

// --meta k=v: the known fields (version, weight, zone, tags) fill the instance's fields;
// the rest are metadata.
absl::Status ApplyMeta(const std::vector<std::string>& meta, Instance* instance) {
  for (const std::string& item : meta) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--meta \"", item, "\" is not key=value"));
    }
    const std::string key = item.substr(0, eq);
    const std::string value = item.substr(eq + 1);
    if (key == "version") {
      instance->version = value;
    } else if (key == "zone") {
      instance->zone = value;
    } else if (key == "weight") {
      if (!absl::SimpleAtoi(value, &instance->weight)) {
        return absl::InvalidArgumentError(absl::StrCat("--meta weight=\"", value, "\" is not a number"));
      }
    } else if (key == "tags") {
      instance->tags = absl::StrSplit(value, ',', absl::SkipEmpty());
    } else if (key == "addr") {
      return absl::InvalidArgumentError("--meta addr: the address is the second argument");
    } else {
      instance->metadata[key] = value;
    }
  }
  return absl::OkStatus();
}

struct Common {
  std::string endpoints = "127.0.0.1:2379";
  int64_t dial_timeout_ms = 2000;
  int64_t command_timeout_ms = 5000;
};

absl::StatusOr<std::unique_ptr<Client>> Connect(const Common& common) {
  absl::StatusOr<std::vector<std::string>> endpoints = ParseEndpoints(common.endpoints);
  if (!endpoints.ok()) return endpoints.status();
  ClientConfig config;
  config.endpoints = *std::move(endpoints);
  config.dial_timeout = Millis(common.dial_timeout_ms);
  config.request_timeout = Millis(common.command_timeout_ms);
  return Client::Connect(std::move(config));
}

int Register(const Common& common, const std::string& service, const std::string& addr,
             std::string id, int64_t ttl, const std::vector<std::string>& meta,
             const sigset_t& stop_signals) {
  Instance instance{.service = service, .id = id.empty() ? service + "-" + addr : id, .addr = addr};
  if (absl::Status st = ApplyMeta(meta, &instance); !st.ok()) return Usage(st);
  if (absl::Status st = ValidateInstance(instance); !st.ok()) return Usage(st);
  absl::StatusOr<std::vector<std::string>> endpoints = ParseEndpoints(common.endpoints);
  if (!endpoints.ok()) return Usage(endpoints.status());
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(common);
  if (!client.ok()) return Fail(client.status());
  RegistrarOptions options{
      .ttl_seconds = ttl,
      .recovered =
          [](int64_t old_lease, int64_t new_lease) {
            Print(absl::StrCat("re-registered lease ", absl::Hex(new_lease, absl::kZeroPad16), " (lease ",
                               absl::Hex(old_lease, absl::kZeroPad16), " was lost)"));
          },
      .recovery_failed =
          [](const absl::Status& why) {
            std::lock_guard lock(out_mu);
            std::fprintf(stderr, "keelctl: registering again failed (retrying): %s\n",
                         std::string(why.message()).c_str());
          },
  };
  Registrar registrar(**client, options);
  if (absl::Status st = registrar.Register(instance); !st.ok()) return Fail(st);
  Print(absl::StrCat("registered ", InstanceKey(service, instance.id), " lease ",
                     absl::Hex(registrar.lease(), absl::kZeroPad16)));
  WaitForSignal(stop_signals);
  if (absl::Status st = registrar.Close(); !st.ok()) return Fail(st);
  Print(absl::StrCat("deregistered ", InstanceKey(service, instance.id)));
  return 0;
}

int Discover(const Common& common, const std::string& service, bool watch,
             const std::string& pick, const sigset_t& stop_signals) {
  std::unique_ptr<Picker> picker;
  if (pick == "random") picker = std::make_unique<RandomPicker>();
  else if (pick == "round-robin") picker = std::make_unique<RoundRobinPicker>();
  else if (pick == "weighted") picker = std::make_unique<WeightedPicker>();
  else if (!pick.empty()) {
    return Usage(absl::InvalidArgumentError("--pick takes random, round-robin or weighted"));
  }
  if (absl::Status st = ValidateServiceName(service); !st.ok()) return Usage(st);
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(common);
  if (!client.ok()) return Fail(client.status());

  // Until Start returns, `added` lists; after it, every callback is a change.
  std::atomic<bool> listing{true};
  DiscoveryCallbacks callbacks{
      .added = [&listing](const Instance& i) { Print((listing ? "" : "+ ") + Describe(i)); },
      .updated = [](const Instance&, const Instance& after) { Print("~ " + Describe(after)); },
      .removed = [](const Instance& last) { Print(absl::StrCat("- ", last.id, " ", last.addr)); },
      .invalid =
          [](std::string_view key, const absl::Status& why) {
            std::lock_guard lock(out_mu);
            std::fprintf(stderr, "keelctl: skipped %.*s: %s\n", static_cast<int>(key.size()),
                         key.data(), std::string(why.message()).c_str());
          },
      .relisted = [](int64_t revision) { Print(absl::StrCat("# listed again at revision ", revision)); },
      .error =
          [](const absl::Status& why) {
            std::lock_guard lock(out_mu);
            std::fprintf(stderr, "keelctl: %s\n", std::string(why.message()).c_str());
          },
  };
  Discovery discovery(**client, service, callbacks);
  if (absl::Status st = discovery.Start(); !st.ok()) return Fail(st);
  listing = false;
  if (picker) {
    absl::StatusOr<Instance> chosen = picker->Pick(discovery.Instances());
    if (!chosen.ok()) return Fail(chosen.status());
    Print("picked " + Describe(*chosen));
  }
  if (!watch) return 0;
  Print(absl::StrCat("# watching from revision ", discovery.revision() + 1));
  WaitForSignal(stop_signals);
  return 0;
}

int Services(const Common& common) {
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(common);
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<ServicesListing> listing = client::Services(**client);
  if (!listing.ok()) return Fail(listing.status());
  for (const ServiceSummary& s : listing->services) {
    Print(absl::StrCat(s.service, " ", s.instance_count));
  }
  if (listing->invalid_count > 0) {
    std::lock_guard lock(out_mu);
    std::fprintf(stderr, "keelctl: %zu keys under /services/ are not valid instances\n",
                 listing->invalid_count);
  }
  return 0;
}

int Main(int argc, char** argv) {
  const sigset_t stop_signals = BlockStopSignals();
  CLI::App app("keelctl: register and discover services in keel (or etcd)", "keelctl");
  app.require_subcommand(1);
  Common common;
  app.add_option("--endpoints", common.endpoints, "gRPC endpoints, comma-separated")
      ->capture_default_str();
  app.add_option("--dial-timeout", common.dial_timeout_ms, "dial timeout in milliseconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--command-timeout", common.command_timeout_ms,
                 "timeout of one call in milliseconds, retries included")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  std::string service, addr, id, pick;
  int64_t ttl = 10;
  std::vector<std::string> meta;
  bool watch = false;
  CLI::App* reg = app.add_subcommand("register", "register an instance until Ctrl-C or SIGTERM");
  reg->add_option("service", service, "service name")->required();
  reg->add_option("addr", addr, "the instance's host:port")->required();
  reg->add_option("--id", id, "instance id (default: <service>-<addr>)");
  reg->add_option("--ttl", ttl, "lease TTL in seconds")->capture_default_str()->check(CLI::PositiveNumber);
  reg->add_option("--meta", meta, "key=value (version, weight, zone, tags=a,b, or any other)");
  CLI::App* disc = app.add_subcommand("discover", "list a service's instances");
  disc->add_option("service", service, "service name")->required();
  disc->add_flag("--watch", watch, "then print each change until Ctrl-C or SIGTERM");
  disc->add_option("--pick", pick, "also pick one: random, round-robin or weighted");
  CLI::App* svcs = app.add_subcommand("services", "services with their instance counts");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (*reg) return Register(common, service, addr, id, ttl, meta, stop_signals);
  if (*disc) return Discover(common, service, watch, pick, stop_signals);
  if (*svcs) return Services(common);
  return 2;
}

}  // namespace
}  // namespace keel::client

int main(int argc, char** argv) { return keel::client::Main(argc, argv); }
