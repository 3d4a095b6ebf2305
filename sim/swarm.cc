#include "sim/swarm.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "core/rng.h"

namespace keel::sim {
namespace {

enum FaultKind {
  kPartitionFault, kIsolateLeader, kOneWay, kCrash, kPause, kSkew, kDrift, kLossBurst,
  kSwizzleFault, kFlapFault, kTransferFault, kLeaderChurn, kAssassin, kSlowLink,
  kIoError, kDiskFull, kCrashLoopFault, kCrashInInstallFault, kFaultKinds
};

NodeRef Id(int index) { return NodeRef{NodeRef::Kind::kId, NodeId(index + 1), ""}; }
NodeRef Leader() { return NodeRef{NodeRef::Kind::kLeader, NodeId(0), ""}; }

Nanos Between(Rng& r, Nanos lo, Nanos hi) { return Nanos(r.Range(lo.count(), hi.count())); }

NodeRef LeaderOrAny(Rng& r, int cluster) {
  return r.Chance(0.5) ? Leader() : Id(static_cast<int>(r.Uniform(cluster)));
}

// Jepsen's leader-killing nemesis: knock out whoever leads, again and again, each time
// briefly, so that leaders come and go with uncommitted entries in flight.
void AddLeaderChurn(Rng& r, const Scenario& s, Nanos at, std::vector<Step>& out) {
  const Nanos et = s.tick_interval * s.election_ticks;
  auto later = [&](Nanos delay) { return std::min(at + delay, s.run_for - Nanos(1)); };
  const int rounds = static_cast<int>(r.Range(2, 8));
  Nanos t = at;
  for (int k = 0; k < rounds && t < s.run_for; ++k) {
    const bool crash = r.Chance(0.5);
    Step strike;
    strike.at = t;
    strike.kind = crash ? StepKind::kCrash : StepKind::kIsolate;
    strike.a = Leader();
    strike.label = absl::StrFormat("churn%d_%d", out.size(), k);
    Step back;
    back.at = later(t - at + Between(r, Nanos(0), 2 * et));
    back.kind = crash ? StepKind::kRestart : StepKind::kHeal;
    if (crash) back.a = NodeRef{NodeRef::Kind::kLabel, NodeId(0), strike.label};
    out.push_back(std::move(strike));
    out.push_back(std::move(back));
    t += Between(r, s.tick_interval, 3 * et);
  }
}

// One link (or one direction) turns slow and jittery, then recovers.
void AddSlowLink(Rng& r, const Scenario& s, Nanos at, std::vector<Step>& out) {
  const Nanos et = s.tick_interval * s.election_ticks;
  const int n = s.cluster;
  auto later = [&](Nanos delay) { return std::min(at + delay, s.run_for - Nanos(1)); };
  Step step;
  step.at = at;
  const int a = static_cast<int>(r.Uniform(n));
  const int b = static_cast<int>(r.Uniform(n));
  if (a == b) return;
  step.kind = StepKind::kLatency;
  step.a = Id(a);
  step.b = Id(b);
  step.one_way = r.Chance(0.5);
  step.duration = Between(r, s.network.latency_min, et / 2);
  step.duration2 = step.duration + Between(r, Nanos(0), 2 * et);
  out.push_back(step);
  Step back = step;
  back.at = later(Between(r, et, 10 * et));
  back.duration = s.network.latency_min;
  back.duration2 = s.network.latency_max;
  out.push_back(back);
}

// A crash, then a restart soon (often within one fsync: in the middle of an election).
void AddCrashAndRestart(Rng& r, const Scenario& s, Nanos at, std::vector<Step>& out) {
  const Nanos et = s.tick_interval * s.election_ticks;
  const int n = s.cluster;
  auto later = [&](Nanos delay) { return std::min(at + delay, s.run_for - Nanos(1)); };
  Step step;
  step.at = at;
  const int victim = static_cast<int>(r.Uniform(n));
  step.kind = r.Chance(0.5) ? StepKind::kCrash : StepKind::kKill;
  step.a = r.Chance(0.4) ? Leader() : Id(victim);
  const std::string label = absl::StrFormat("crashed%d", out.size());
  step.label = label;
  out.push_back(step);
  const Nanos down = r.Chance(0.3) ? Between(r, Nanos(0), s.disk.fsync_max * 2)
                                   : Between(r, Nanos(0), 4 * et);
  out.push_back(Step{.at = later(down), .kind = StepKind::kRestart,
                     .a = NodeRef{NodeRef::Kind::kLabel, NodeId(0), label}});
}

void AddFault(Rng& r, const Scenario& s, FaultKind kind, Nanos at, std::vector<Step>& out) {
  const Nanos et = s.tick_interval * s.election_ticks;
  const int n = s.cluster;
  Step step;
  step.at = at;
  auto later = [&](Nanos delay) { return std::min(at + delay, s.run_for - Nanos(1)); };
  switch (kind) {
    case kPartitionFault: {
      step.kind = StepKind::kPartition;
      step.groups.resize(2);
      for (int i = 0; i < n; ++i) step.groups[r.Uniform(2)].push_back(Id(i));
      if (step.groups[0].empty() || step.groups[1].empty()) return;
      out.push_back(step);
      out.push_back(Step{.at = later(Between(r, et / 2, 8 * et)), .kind = StepKind::kHeal});
      return;
    }
    case kIsolateLeader:
      step.kind = StepKind::kIsolate;
      step.a = LeaderOrAny(r, n);
      out.push_back(step);
      out.push_back(Step{.at = later(Between(r, et / 2, 6 * et)), .kind = StepKind::kHeal});
      return;
    case kOneWay: {
      step.kind = StepKind::kCut;
      step.one_way = true;
      const int a = static_cast<int>(r.Uniform(n));
      const int b = static_cast<int>(r.Uniform(n));
      if (a == b) return;
      step.a = Id(a);
      step.b = Id(b);
      out.push_back(step);
      Step restore = step;
      restore.kind = StepKind::kRestore;
      restore.at = later(Between(r, et / 2, 6 * et));
      out.push_back(restore);
      return;
    }
    case kCrash:
      AddCrashAndRestart(r, s, at, out);
      return;
    case kPause:
      step.kind = StepKind::kPause;
      step.a = LeaderOrAny(r, n);
      step.duration = Between(r, et / 10, 3 * et);
      out.push_back(step);
      return;
    case kSkew:
      step.kind = StepKind::kSkew;
      step.a = Id(static_cast<int>(r.Uniform(n)));
      step.offset = Between(r, Nanos(0), 2 * et);
      out.push_back(step);
      return;
    case kDrift:
      step.kind = StepKind::kDrift;
      step.a = Id(static_cast<int>(r.Uniform(n)));
      step.value = (r.Unit() - 0.5) * 0.4;
      out.push_back(step);
      return;
    case kLossBurst:
      step.kind = StepKind::kLoss;
      step.value = r.Unit() * 0.3;
      out.push_back(step);
      out.push_back(Step{.at = later(Between(r, et, 8 * et)), .kind = StepKind::kLoss,
                         .value = s.network.loss});
      return;
    case kSwizzleFault:
      step.kind = StepKind::kSwizzle;
      step.duration = Between(r, s.tick_interval / 2, et);
      out.push_back(step);
      return;
    case kFlapFault: {
      step.kind = StepKind::kFlap;
      const int a = static_cast<int>(r.Uniform(n));
      const int b = static_cast<int>(r.Uniform(n));
      if (a == b) return;
      step.a = Id(a);
      step.b = Id(b);
      step.duration = Between(r, s.tick_interval, et);
      step.duration2 = Between(r, et, 10 * et);
      out.push_back(step);
      return;
    }
    case kTransferFault:
      step.kind = StepKind::kTransfer;
      step.a = Id(static_cast<int>(r.Uniform(n)));
      out.push_back(step);
      return;
    case kLeaderChurn:
      AddLeaderChurn(r, s, at, out);
      return;
    case kSlowLink:
      AddSlowLink(r, s, at, out);
      return;
    case kAssassin:
      step.kind = StepKind::kChurn;
      step.duration = Between(r, 2 * et, 20 * et);
      out.push_back(step);
      return;
    case kIoError:
      step.kind = r.Chance(0.5) ? StepKind::kFailWrite : StepKind::kFailSync;
      step.a = LeaderOrAny(r, n);
      out.push_back(step);
      return;
    case kDiskFull: {
      step.kind = StepKind::kFillDisk;
      step.a = LeaderOrAny(r, n);
      step.label = absl::StrCat("full", out.size());
      out.push_back(step);
      out.push_back(Step{.at = later(Between(r, et / 2, 10 * et)), .kind = StepKind::kFreeDisk,
                         .a = NodeRef{NodeRef::Kind::kLabel, NodeId(0), step.label}});
      return;
    }
    case kCrashLoopFault:
      step.kind = StepKind::kCrashLoop;
      step.a = LeaderOrAny(r, n);
      step.duration = Between(r, s.tick_interval, 2 * et);
      step.count = static_cast<int>(r.Range(2, 20));
      out.push_back(step);
      return;
    case kCrashInInstallFault:
      step.kind = StepKind::kCrashInInstall;
      step.a = Id(static_cast<int>(r.Uniform(n)));
      out.push_back(step);
      return;
    case kFaultKinds: break;
  }
}

// A profile of its own: leaders assassinated all run long in a small cluster, with slow
// stop-and-wait replication and no PreVote or CheckQuorum, so deposed leaders keep
// divergent suffixes and new leaders spend many round trips catching followers up.
// This is where Raft's Figure 8 lives (committing an old-term entry by counting
// replicas), which uniform fault mixes almost never reach.
void AddLeaderChurnProfile(Rng& r, Scenario& s) {
  s.cluster = 3;
  s.tick_interval = Millis(100);  // etcd's timing: round trips are short next to elections
  s.run_for = 40 * s.tick_interval * s.election_ticks;
  s.pre_vote = false;
  s.check_quorum = false;
  s.message_bytes_max = 1;
  s.inflight_messages_max = 1;
  s.snapshot_entries = 1000;  // catch-up entry by entry, not by snapshot
  s.disk.fsync_min = DiskSettings{}.fsync_min;  // fast fsyncs: the churn drives this profile
  s.disk.fsync_max = DiskSettings{}.fsync_max;
  s.network.loss = 0;
  s.network.duplicate = 0;
  s.network.latency_min = Millis(1);
  s.network.latency_max = Between(r, Millis(10), Millis(20));
  s.workload.clients = static_cast<int>(r.Range(8, 12));
  s.workload.think = Between(r, Nanos(0), Millis(2));
  const Nanos et = s.tick_interval * s.election_ticks;
  s.workload.timeout = et;  // clients give up on a deposed leader sooner
  s.steps.push_back(Step{.at = et, .kind = StepKind::kChurn, .duration = s.run_for});
}

}  // namespace

Scenario SwarmScenario(uint64_t seed) {
  Rng r(seed ^ 0x5a5a'1234'9e37'79b9ULL);
  Scenario s;
  s.name = "swarm";
  s.seed = seed;
  static constexpr int kSizes[] = {1, 2, 3, 3, 3, 4, 5, 5, 5, 6, 7, 7};
  s.cluster = kSizes[r.Uniform(std::size(kSizes))];
  static constexpr int kTicksMs[] = {10, 20, 50, 100};
  s.tick_interval = Millis(kTicksMs[r.Uniform(std::size(kTicksMs))]);
  s.election_ticks = 10;
  const Nanos et = s.tick_interval * s.election_ticks;
  // etcd 3.4 defaults to PreVote off; deployments run either way, so do we.
  s.pre_vote = r.Chance(0.75);
  s.check_quorum = r.Chance(0.75);
  // Flow control from stop-and-wait with one entry per append (followers ack entry by
  // entry and catch up slowly: Figure 8 territory) to wide pipelines.
  static constexpr size_t kMessageBytes[] = {1, 4096, 64 << 10};
  static constexpr size_t kInflight[] = {1, 8, 256};
  s.message_bytes_max = kMessageBytes[r.Uniform(3)];
  // Frequent snapshots make lagging followers catch up by snapshot in most runs.
  static constexpr uint64_t kSnapshotEntries[] = {20, 100, 1000};
  s.snapshot_entries = kSnapshotEntries[r.Uniform(3)];
  s.inflight_messages_max = kInflight[r.Uniform(3)];

  s.network.latency_min = Between(r, std::chrono::microseconds(50), Millis(2));
  s.network.latency_max = s.network.latency_min + Between(r, Nanos(0), s.tick_interval / 2);
  s.network.loss = r.Chance(0.5) ? 0 : r.Unit() * 0.1;
  s.network.duplicate = r.Chance(0.5) ? 0 : r.Unit() * 0.05;
  s.disk.fsync_min = Between(r, std::chrono::microseconds(20), Millis(1));
  s.disk.fsync_max = s.disk.fsync_min + Between(r, Nanos(0), s.tick_interval / 4);
  s.disk.fsync_spike_probability = r.Chance(0.5) ? 0 : r.Unit() * 0.01;
  s.disk.crash_in_sync_probability = r.Chance(0.5) ? 0 : r.Unit() * 0.01;
  s.disk.crash_in_vote_sync_probability = r.Chance(0.5) ? 0 : r.Unit() * 0.3;
  s.disk.torn_writes = r.Chance(0.5);

  s.workload.clients = static_cast<int>(r.Range(1, 6));
  s.workload.think = Between(r, Nanos(0), s.tick_interval / 2);
  s.workload.timeout = 5 * et;
  s.workload.read_fraction = r.Unit() * 0.3;
  s.run_for = 40 * et;

  if (r.Chance(0.5)) {
    AddLeaderChurnProfile(r, s);
  } else {
    bool enabled[kFaultKinds];
    bool any = false;
    for (bool& e : enabled) any |= (e = r.Chance(0.5));
    const int count = any ? static_cast<int>(r.Range(1, 25)) : 0;
    for (int k = 0; k < count; ++k) {
      FaultKind kind;
      do {
        kind = static_cast<FaultKind>(r.Uniform(kFaultKinds));
      } while (!enabled[kind]);
      AddFault(r, s, kind, Between(r, et, s.run_for - et), s.steps);
    }
  }
  std::stable_sort(s.steps.begin(), s.steps.end(),
                   [](const Step& a, const Step& b) { return a.at < b.at; });
  // Registrars hold leases through the faults; some abandon theirs (drawn last, so the
  // draws above stay as they were).
  s.workload.registrars = r.Chance(0.6) ? static_cast<int>(r.Range(1, 4)) : 0;
  s.workload.abandon_probability = r.Unit() * 0.2;
  s.workload.watchers = r.Chance(0.6) ? static_cast<int>(r.Range(1, 4)) : 0;
  if (r.Chance(0.5)) s.workload.auto_compaction_retention = Between(r, et, 8 * et);
  return s;
}

}  // namespace keel::sim
