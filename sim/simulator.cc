#include "sim/simulator.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>

#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "core/assert.h"
#include "core/raft/codec.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/server/kv_server.h"
#include "core/server/kv_state_machine.h"
#include "core/server/node.h"
#include "sim/checker.h"
#include "sim/kv_history.h"
#include "sim/kv_reference.h"
#include "sim/lease_checker.h"
#include "sim/watch_checker.h"
#include "sim/node_disk.h"
#include "storage/sim_vfs.h"

namespace keel::sim {
namespace {

using raft::Role;

constexpr uint64_t kAnyIncarnation = UINT64_MAX;
constexpr uint64_t kKeys = 6;  // the workload's key space: small, so clients contend
// Search steps the per-key linearizability check may take per key (kv_history.h).
constexpr uint64_t kLinearizabilityBudget = 100'000;

// The keyspace's settings for a scenario's timing: etcd's minimum lease TTL is
// ceil(1.5 x the election timeout).
// The lease bound's allowances for a scenario (lease_checker.h): drift and skew are
// raised as steps set them (Sim::ApplyStep).
LeaseChecker::Config LeaseCheckerConfigFor(const Scenario& s) {
  const Nanos et = s.tick_interval * s.election_ticks;
  LeaseChecker::Config c;
  c.election_timeout = et;
  c.checkpoint_interval = et / 2;
  // A checkpoint's way: a tick to be proposed, replication, fsyncs (spikes: 100x).
  c.commit_allowance = 2 * et + 3 * 100 * s.disk.fsync_max;
  return c;
}

server::KvConfig KvConfigFor(const Scenario& s) {
  server::KvConfig config;
  const int64_t et_ms = std::chrono::duration_cast<Millis>(s.tick_interval).count() * s.election_ticks;
  config.lease.min_ttl_seconds = std::max<int64_t>(1, (3 * et_ms / 2 + 999) / 1000);
  return config;
}
constexpr int kRecoveryElectionTimeouts = 10;  // issue: a leader within 10 timeouts
// A node raises the NOSPACE alarm below this much free disk; a disk that fills up
// (`fill-disk`) keeps this much room for what is written before the alarm takes hold.
constexpr uint64_t kDiskSpaceReserve = 4 << 20;
constexpr uint64_t kDiskFullHeadroom = 2 << 20;

std::string FormatTime(Nanos t) {
  return absl::StrFormat("%.6fs", static_cast<double>(t.count()) / 1e9);
}

// The heap holds small records; the callbacks live in a slab, so sifting the heap moves
// 24 bytes instead of a std::function.
struct Event {
  Nanos at;
  uint64_t seq;
  uint32_t slot;
};
struct EventLater {
  bool operator()(const Event& a, const Event& b) const {
    return a.at != b.at ? a.at > b.at : a.seq > b.seq;
  }
};

class Sim;

class SimLogSink : public LogSink {
 public:
  SimLogSink(Sim& sim, int node) : sim_(sim), node_(node) {}
  void Write(Severity severity, std::string_view name, std::string_view fields) override;

 private:
  Sim& sim_;
  int node_;
};

class SimEnv : public server::Env {
 public:
  SimEnv(Sim& sim, int node) : sim_(sim), node_(node) {}
  Nanos Now() override;
  server::TimerId SetTimer(Nanos after, std::function<void()> fn) override;
  void CancelTimer(server::TimerId id) override;
  void Send(NodeId to, std::string bytes) override;
  Rng& Random() override;
  server::Storage& Disk() override;
  Logger Log() override;

 private:
  Sim& sim_;
  int node_;
};

// The node's state machine as the checkers see it: every command it applies is shown to
// the RaftChecker (State Machine Safety) and fed to the reference keyspace.
class ObservedMachine : public server::StateMachine {
 public:
  using OnApply = std::function<void(LogIndex, uint64_t, std::string_view, const ApplyContext&)>;
  ObservedMachine(server::StateMachine& inner, OnApply on_apply)
      : inner_(inner), on_apply_(std::move(on_apply)) {}

  absl::Status Apply(LogIndex index, uint64_t request_id, std::string_view command,
                     const ApplyContext& context) override {
    on_apply_(index, request_id, command, context);
    absl::Status st = inner_.Apply(index, request_id, command, context);
    if (after_apply_) after_apply_(index);
    return st;
  }
  void SetAfterApply(std::function<void(LogIndex)> fn) { after_apply_ = std::move(fn); }
  LogIndex applied() const override { return inner_.applied(); }
  absl::Status health() const override { return inner_.health(); }
  bool NeedsSpace(std::string_view command) const override { return inner_.NeedsSpace(command); }
  std::string TakeSnapshot() const override { return inner_.TakeSnapshot(); }
  bool KeepsStateOnDisk() const override { return inner_.KeepsStateOnDisk(); }
  std::string ExportSnapshot() const override { return inner_.ExportSnapshot(); }
  absl::Status CheckSnapshot(LogIndex index, std::string_view data) const override {
    return inner_.CheckSnapshot(index, data);
  }
  absl::Status Restore(LogIndex index, std::string_view data) override {
    return inner_.Restore(index, data);
  }

 private:
  server::StateMachine& inner_;
  OnApply on_apply_;
  std::function<void(LogIndex)> after_apply_;
};

struct SimNode {
  int index = 0;
  NodeId id;
  bool up = false;
  uint64_t incarnation = 0;
  Nanos paused_until{0};
  Nanos busy_until{0};
  // The node's clock: local(t) = clock_local + (t - clock_global) * (1 + drift).
  Nanos clock_local{0};
  Nanos clock_global{0};
  double drift = 0;
  // Declared before `node`, which cancels its timers when it is destroyed.
  absl::btree_set<server::TimerId> timers;
  std::unique_ptr<SimLogSink> sink;
  std::unique_ptr<NodeDisk> disk;  // survives crashes
  std::unique_ptr<SimEnv> env;
  std::unique_ptr<server::KvStateMachine> state;
  std::unique_ptr<server::StateMachine> observed;  // the state machine, as the checkers see it
  std::unique_ptr<server::Node> node;
  std::unique_ptr<server::KvServer> server;
  // Commands applied in the current event, shown to the checkers once its fsync
  // completes (not at all if the node crashes first: then they never happened).
  struct Applied {
    LogIndex index;
    uint64_t request_id;
    std::string command;
    bool nospace;
    Term term;
    int64_t revision_after = 0;
  };
  std::vector<Applied> applied;
  Role role = Role::kFollower;
  Nanos leader_since{0};
  LogIndex commit;
  bool crash_in_install = false;  // crash during the fsync of the next snapshot install
  bool crash_next_sync = false;   // crash during the next fsync
};

using Request = KvHistory::Request;
using Outcome = KvHistory::Outcome;

class Sim {
 public:
  Sim(const Scenario& scenario, const RunOptions& options);
  RunResult Run();

  // Used by SimEnv / SimLogSink.
  Nanos LocalNow(int node) const;
  server::TimerId SetTimer(int node, Nanos after, std::function<void()> fn);
  void CancelTimer(int node, server::TimerId id);
  void Transmit(int from, NodeId to, std::string bytes);
  Rng& rng() { return rng_; }
  SimNode& node(int i) { return nodes_[i]; }
  void OnLog(int node, Severity severity, std::string_view name, std::string_view fields);
  Severity log_threshold() const { return options_.trace ? Severity::kDebug : Severity::kWarn; }

 private:
  // Events.
  void Schedule(Nanos at, std::function<void()> fn);
  void ScheduleOnNode(int node, Nanos at, uint64_t incarnation, std::function<void()> fn);
  void RunOnNode(int node, uint64_t incarnation, std::function<void()> fn);
  struct Observation {
    Role role;
    Term term;
    LogIndex commit;
    LogIndex applied;
  };
  void AfterNodeEvent(int node);
  void ObserveApplied(int node, const std::vector<SimNode::Applied>& applied);
  void Observe(int node, const Observation& o);
  bool RunUntil(Nanos end, const std::function<bool()>& done = nullptr);

  // Nodes.
  void StartNode(int node);
  // Power loss (the default), or the process killed with its page cache intact.
  void CrashNode(int node, bool power_loss = true);
  // The node stopped itself (fail-stop after a storage error): the process exits and a
  // supervisor starts it again a little later.
  void RestartLater(int node, std::string_view why);
  // The simulated operator: disarms the NOSPACE alarm of every member whose disk has
  // room again (etcdctl alarm disarm), until the run ends.
  void OperatorTick();
  bool AlarmsActive() const;
  void CrashLoop(const NodeRef& ref, Nanos interval, int remaining);
  // Power loss at a random point of the fsync running until `busy_until`; the node comes
  // back soon after.
  void CrashDuringSync(int node);
  Nanos BeginSync(int node, bool vote_changed, Nanos not_before);
  int CurrentLeader() const;

  // Network.
  bool Blocked(int from, int to) const {
    return cut_[from][to] || clogged_[from] || clogged_[to];
  }
  void Route(int from, int to, std::string bytes);
  // Runs `send` at departure time unless the node crashed since; a pause defers it.
  void Depart(int node, uint64_t incarnation, std::function<void()> send);
  void SetLink(int a, int b, bool one_way, bool cut);

  // Steps.
  void ApplyStep(const Step& step);
  std::vector<int> Resolve(const NodeRef& ref);
  void Swizzle(Nanos interval);
  void Partition(const std::vector<NodeSet>& groups);
  void Flap(int a, int b, Nanos period, Nanos until, uint64_t generation, bool cut);
  void HealAll();
  void MaybeAssassinate(int node);
  void ChurnTick();
  void Strike(int node, Nanos at);

  // Clients.
  void ScheduleClient(int client, Nanos delay);
  KvOp DrawOp();
  void IssueRequest(int client);
  using CallDone = std::function<void(absl::Status, std::string)>;
  using CallBody = std::function<void(server::KvServer&, CallDone)>;
  // A client's call to one node through the simulated network: there after a latency,
  // refused if the node is down, answered once the node's fsync completes and back after
  // a latency, given up after the workload's timeout. `done` runs exactly once.
  void Call(int target, CallBody body, CallDone done);
  void Send(server::KvServer& server, size_t request, CallDone reply);
  void StartRegistration(int registrar);
  void Registered(int registrar, int64_t lease, int64_t ttl_seconds, Nanos sent);
  void KeepAlive(int registrar, int64_t lease, bool may_abandon);
  void ConnectWatcher(int watcher);
  void OnWatchResponse(int watcher, uint64_t epoch, const etcdserverpb::WatchResponse& response);
  void DisconnectWatcher(int watcher, uint64_t epoch);
  void WatcherTick(int watcher, uint64_t epoch);
  LeaseChecker::Leadership LeadershipHistory() const;
  void Resolve(size_t request, const absl::Status& status, const std::string& response);
  void Learn(const Request& request);

  // Checks.
  void Fail(std::string text);
  void CheckRecoveryLeader();
  bool Converged() const;
  void RunRecoveryAndDrain();
  RunResult Result() const;
  void CheckEndState();
  void CheckExpectations();
  double Measure(const Expectation& e);
  Nanos ElectionTimeout() const { return scenario_.tick_interval * scenario_.election_ticks; }
  void Trace(std::string_view line);

  const Scenario& scenario_;
  RunOptions options_;
  Rng rng_;
  Nanos now_{0};
  uint64_t seq_ = 0;
  uint64_t events_ = 0;
  std::priority_queue<Event, std::vector<Event>, EventLater> queue_;
  std::vector<std::function<void()>> callbacks_;  // by Event::slot
  std::vector<uint32_t> free_slots_;
  std::vector<SimNode> nodes_;
  RaftChecker checker_;
  TraceHash hash_;
  server::TimerId next_timer_ = 1;

  NetworkSettings net_;
  double crash_in_sync_probability_;
  double crash_in_vote_sync_probability_;
  double fsync_spike_probability_;
  std::vector<std::vector<bool>> cut_;
  // Per-link latency [min, max]; a zero max means "use the network's".
  std::vector<std::vector<std::pair<Nanos, Nanos>>> link_latency_;
  std::vector<bool> clogged_;
  uint64_t flap_generation_ = 0;
  Nanos churn_until_{0};
  bool operator_running_ = false;
  absl::btree_map<std::string, int> labels_;
  uint64_t messages_delivered_ = 0;
  uint64_t messages_dropped_ = 0;

  bool clients_active_ = true;
  std::vector<uint64_t> client_seq_;
  KvHistory history_;
  KvReference reference_;
  // Per client: the last value it saw of each key (its next compare-and-swap expects it).
  std::vector<absl::btree_map<std::string, std::string>> client_seen_;
  struct Registrar {
    int64_t lease = 0;  // 0: none held
    Nanos ttl{0};
    int target = 0;     // the member it believes leads
    uint64_t generation = 0;
  };
  std::vector<Registrar> registrars_;
  LeaseChecker lease_checker_;
  struct Watcher {
    int node = -1;
    uint64_t incarnation = 0;  // the node's, when the stream opened
    watch::WatchHub::StreamId stream = 0;
    size_t session = 0;
    bool open = false;
    uint64_t epoch = 0;        // bumps at each (re)connect: an old stream's responses drop
    Nanos departs_at{0};       // a stream sends in order (a response held for an fsync
                               // holds back those after it)
    Nanos delivered_until{0};  // ... and delivers in order
    int64_t resume_from = 0;   // 0: from now
  };
  std::vector<Watcher> watchers_;
  WatchChecker watch_checker_;
  double drift_max_seen_ = 0;
  Nanos skew_forward_total_{0};

  struct CommitEvent { Nanos at; int node; uint64_t count; bool leader; };
  struct LeaderInterval { int node; Nanos from; Nanos to; };
  std::vector<CommitEvent> commit_events_;
  std::vector<LeaderInterval> leader_intervals_;
  std::vector<std::pair<Nanos, int>> elections_;
  std::vector<std::pair<Nanos, int>> crashes_;    // crashes and fail-stops
  std::vector<std::pair<Nanos, int>> snapshots_;  // snapshot installs begun

  Nanos recovery_at_{0};
  Nanos progress_from_{INT64_MAX};  // the recovery window that must show progress
  Nanos progress_to_{INT64_MAX};
  uint64_t progress_writes_ok_ = 0;
  std::vector<std::string> failures_;
};

// ---- SimEnv / sink --------------------------------------------------------------

void SimLogSink::Write(Severity severity, std::string_view name, std::string_view fields) {
  sim_.OnLog(node_, severity, name, fields);
}

Nanos SimEnv::Now() { return sim_.LocalNow(node_); }
server::TimerId SimEnv::SetTimer(Nanos after, std::function<void()> fn) {
  return sim_.SetTimer(node_, after, std::move(fn));
}
void SimEnv::CancelTimer(server::TimerId id) { sim_.CancelTimer(node_, id); }
void SimEnv::Send(NodeId to, std::string bytes) { sim_.Transmit(node_, to, std::move(bytes)); }
Rng& SimEnv::Random() { return sim_.rng(); }
server::Storage& SimEnv::Disk() { return sim_.node(node_).disk->storage(); }
Logger SimEnv::Log() { return Logger(sim_.node(node_).sink.get(), sim_.log_threshold()); }

// ---- construction ---------------------------------------------------------------

Sim::Sim(const Scenario& scenario, const RunOptions& options)
    : scenario_(scenario),
      options_(options),
      rng_(options.seed),
      checker_(scenario.cluster),
      net_(scenario.network),
      crash_in_sync_probability_(scenario.disk.crash_in_sync_probability),
      crash_in_vote_sync_probability_(scenario.disk.crash_in_vote_sync_probability),
      fsync_spike_probability_(scenario.disk.fsync_spike_probability),
      cut_(scenario.cluster, std::vector<bool>(scenario.cluster, false)),
      link_latency_(scenario.cluster,
                    std::vector<std::pair<Nanos, Nanos>>(scenario.cluster, {Nanos(0), Nanos(0)})),
      clogged_(scenario.cluster, false),
      client_seq_(scenario.workload.clients, 0),
      reference_(KvConfigFor(scenario)),
      client_seen_(scenario.workload.clients),
      registrars_(scenario.workload.registrars),
      lease_checker_(LeaseCheckerConfigFor(scenario)),
      watchers_(scenario.workload.watchers) {
  KEEL_ASSERT(scenario.cluster >= 1 && scenario.cluster <= kClusterSizeMax);
  nodes_.resize(scenario.cluster);
  for (int i = 0; i < scenario.cluster; ++i) {
    SimNode& n = nodes_[i];
    n.index = i;
    n.id = NodeId(i + 1);
    n.sink = std::make_unique<SimLogSink>(*this, i);
    NodeDisk::Hooks hooks;
    hooks.now = [this] { return now_; };
    hooks.begin_sync = [this, i](bool vote_changed, Nanos not_before) {
      return BeginSync(i, vote_changed, not_before);
    };
    hooks.observe.on_append = [this, i](std::span<const raft::Entry> entries) {
      const raft::Raft& r = nodes_[i].node->raft();
      checker_.OnAppend(i, r.role() == Role::kLeader, r.term(), entries);
    };
    // The node loads its disk first thing in Start: the checkers see what it recovered.
    hooks.observe.on_load = [this, i](const raft::RecoveredState& recovered) {
      checker_.OnRestart(i, recovered);
      nodes_[i].commit = recovered.hard_state.commit;
    };
    hooks.observe.on_install_snapshot = [this, i](const raft::Snapshot& s) {
      checker_.OnSnapshotInstalled(i, s);
      snapshots_.emplace_back(now_, i);
      if (std::exchange(nodes_[i].crash_in_install, false)) nodes_[i].crash_next_sync = true;
    };
    n.disk = std::make_unique<NodeDisk>(
        std::move(hooks), &rng_,
        NodeDisk::Options{.torn_writes = scenario.disk.torn_writes,
                          .planted_skip_sync = options.planted_skip_fsync});
  }
}

// ---- events ---------------------------------------------------------------------

void Sim::Schedule(Nanos at, std::function<void()> fn) {
  KEEL_ASSERT(at >= now_);
  uint32_t slot;
  if (free_slots_.empty()) {
    slot = static_cast<uint32_t>(callbacks_.size());
    callbacks_.push_back(std::move(fn));
  } else {
    slot = free_slots_.back();
    free_slots_.pop_back();
    callbacks_[slot] = std::move(fn);
  }
  queue_.push(Event{at, seq_++, slot});
}

void Sim::ScheduleOnNode(int node, Nanos at, uint64_t incarnation, std::function<void()> fn) {
  Schedule(at, [this, node, incarnation, fn = std::move(fn)]() mutable {
    RunOnNode(node, incarnation, std::move(fn));
  });
}

void Sim::RunOnNode(int node, uint64_t incarnation, std::function<void()> fn) {
  SimNode& n = nodes_[node];
  if (!n.up || (incarnation != kAnyIncarnation && incarnation != n.incarnation)) return;
  // A paused (GC) or busy (fsync) node processes nothing: the event waits, in order.
  const Nanos ready = std::max(n.paused_until, n.busy_until);
  if (ready > now_) {
    Schedule(ready, [this, node, incarnation, fn = std::move(fn)]() mutable {
      RunOnNode(node, incarnation, std::move(fn));
    });
    return;
  }
  fn();
  AfterNodeEvent(node);
}

void Sim::AfterNodeEvent(int node) {
  SimNode& n = nodes_[node];
  if (!n.up || n.node == nullptr) return;
  if (n.node->stopped()) return RestartLater(node, "stopped after a storage error");
  const raft::Raft& r = n.node->raft();
  r.CheckInvariants();
  checker_.ObserveRole(node, r.role(), r.term());
  // What the node did in this event happened only once its fsync completes: observe it
  // then, and not at all if it crashes first. The node processes nothing meanwhile, so
  // its state then is its state now.
  Observation o{r.role(), r.term(), r.log().committed(), r.log().applied()};
  std::vector<SimNode::Applied> applied;
  applied.swap(n.applied);
  if (n.busy_until <= now_) {
    Observe(node, o);
    ObserveApplied(node, applied);
    return;
  }
  Schedule(n.busy_until, [this, node, o, applied = std::move(applied),
                          incarnation = n.incarnation] {
    if (!nodes_[node].up || nodes_[node].incarnation != incarnation) return;
    Observe(node, o);
    ObserveApplied(node, applied);
  });
}

void Sim::ObserveApplied(int node, const std::vector<SimNode::Applied>& applied) {
  for (const SimNode::Applied& a : applied) {
    if (options_.trace) {
      Trace(absl::StrCat("n", node + 1, " applied index ", a.index.value, " request ",
                         a.request_id, " term ", a.term.value));
    }
    checker_.OnApply(node, a.index, a.request_id);
    const server::StateMachine::ApplyContext context{.nospace = a.nospace, .term = a.term};
    std::string violation = reference_.OnApply(a.index, a.request_id, a.command, context, now_);
    if (!violation.empty()) Fail(absl::StrCat("n", node + 1, ": ", violation));
    // Every node's keyspace is at the committed revision after each index it applies.
    const std::optional<int64_t> want = reference_.RevisionAfter(a.index);
    if (want && *want != a.revision_after && a.revision_after != 0) {
      Fail(absl::StrCat("State Machine Safety: n", node + 1, " is at revision ",
                        a.revision_after, " after applying index ", a.index.value,
                        ", where the committed keyspace is at ", *want));
    }
  }
}

void Sim::Observe(int node, const Observation& o) {
  SimNode& n = nodes_[node];
  checker_.ObserveCommit(node, o.commit);
  if (o.role != n.role) {
    if (o.role == Role::kLeader) {
      n.leader_since = now_;
      elections_.emplace_back(now_, node);
      if (now_ < churn_until_) MaybeAssassinate(node);
    } else if (n.role == Role::kLeader) {
      leader_intervals_.push_back({node, n.leader_since, now_});
    }
    n.role = o.role;
  }
  if (o.commit > n.commit) {
    commit_events_.push_back({now_, node, o.commit - n.commit, o.role == Role::kLeader});
    n.commit = o.commit;
  }
  hash_.Add(static_cast<uint64_t>(node));
  hash_.Add(static_cast<uint64_t>(o.role));
  hash_.Add(o.term.value);
  hash_.Add(o.commit.value);
  hash_.Add(o.applied.value);
}

bool Sim::RunUntil(Nanos end, const std::function<bool()>& done) {
  while (!queue_.empty() && queue_.top().at <= end) {
    if (done && done()) return true;
    const Event ev = queue_.top();
    queue_.pop();
    now_ = ev.at;
    ++events_;
    std::function<void()> fn = std::move(callbacks_[ev.slot]);
    free_slots_.push_back(ev.slot);
    fn();
  }
  now_ = std::max(now_, end);
  return done && done();
}

// ---- nodes ----------------------------------------------------------------------

Nanos Sim::LocalNow(int node) const {
  const SimNode& n = nodes_[node];
  const double elapsed = static_cast<double>((now_ - n.clock_global).count());
  return n.clock_local + Nanos(static_cast<int64_t>(elapsed * (1.0 + n.drift)));
}

server::TimerId Sim::SetTimer(int node, Nanos after, std::function<void()> fn) {
  SimNode& n = nodes_[node];
  const server::TimerId id = next_timer_++;
  // `after` is on the node's clock; a fast clock fires its timers early in real time.
  const auto global = Nanos(static_cast<int64_t>(
      std::ceil(static_cast<double>(after.count()) / (1.0 + n.drift))));
  n.timers.insert(id);
  ScheduleOnNode(node, now_ + global, n.incarnation, [this, node, id, fn = std::move(fn)] {
    if (nodes_[node].timers.erase(id) == 0) return;  // cancelled
    fn();
  });
  return id;
}

void Sim::CancelTimer(int node, server::TimerId id) { nodes_[node].timers.erase(id); }

Nanos Sim::BeginSync(int node, bool vote_changed, Nanos not_before) {
  SimNode& n = nodes_[node];
  const Nanos start = std::max(now_, n.busy_until);
  const DiskSettings& disk = scenario_.disk;
  Nanos latency(rng_.Range(disk.fsync_min.count(), disk.fsync_max.count()));
  if (fsync_spike_probability_ > 0 && rng_.Chance(fsync_spike_probability_)) {
    latency = Nanos(rng_.Range(10 * disk.fsync_max.count(), 100 * disk.fsync_max.count()));
  }
  n.busy_until = std::max(start + latency, not_before);
  const double p = vote_changed ? crash_in_vote_sync_probability_ : crash_in_sync_probability_;
  if (std::exchange(n.crash_next_sync, false) || (p > 0 && rng_.Chance(p))) CrashDuringSync(node);
  return n.busy_until;
}

void Sim::CrashDuringSync(int node) {
  SimNode& n = nodes_[node];
  const Nanos crash_at(rng_.Range(now_.count(), n.busy_until.count() - 1));
  const Nanos down(rng_.Range(0, 4 * scenario_.disk.fsync_max.count()));
  const uint64_t incarnation = n.incarnation;
  Schedule(crash_at, [this, node, incarnation, down] {
    if (nodes_[node].incarnation != incarnation) return;
    Trace(absl::StrCat("n", node + 1, " crashed during fsync"));
    CrashNode(node);
    Schedule(now_ + down, [this, node] {
      if (!nodes_[node].up) StartNode(node);
    });
  });
}

void Sim::CrashLoop(const NodeRef& ref, Nanos interval, int remaining) {
  if (remaining <= 0 || now_ >= scenario_.run_for) return;
  const std::vector<int> target = Resolve(ref);
  if (!target.empty() && nodes_[target.front()].up) {
    const int node = target.front();
    Trace(absl::StrCat("crash-loop: crash n", node + 1, ", ", remaining - 1, " to go"));
    CrashNode(node);
    const Nanos down(rng_.Range(interval.count() / 4, 3 * interval.count() / 4));
    Schedule(now_ + down, [this, node] {
      if (!nodes_[node].up) StartNode(node);
    });
  }
  Schedule(now_ + interval, [this, ref, interval, remaining] { CrashLoop(ref, interval, remaining - 1); });
}

void Sim::StartNode(int node) {
  SimNode& n = nodes_[node];
  KEEL_ASSERT(!n.up);
  n.up = true;
  ++n.incarnation;
  n.timers.clear();
  n.paused_until = now_;
  n.busy_until = now_;
  n.role = Role::kFollower;
  n.env = std::make_unique<SimEnv>(*this, node);
  server::NodeConfig config;
  config.raft.id = n.id;
  for (int i = 0; i < scenario_.cluster; ++i) config.raft.voters.push_back(NodeId(i + 1));
  config.raft.election_ticks = scenario_.election_ticks;
  config.raft.pre_vote = scenario_.pre_vote;
  config.raft.check_quorum = scenario_.check_quorum;
  config.raft.bugs = options_.bugs;
  config.raft.message_bytes_max = scenario_.message_bytes_max;
  config.raft.inflight_messages_max = scenario_.inflight_messages_max;
  config.tick_interval = scenario_.tick_interval;
  config.request_timeout = scenario_.workload.timeout;
  config.snapshot_entries = scenario_.snapshot_entries;
  config.snapshot_catchup_entries = scenario_.snapshot_entries / 5;
  config.space_reserve_bytes = kDiskSpaceReserve;
  // Small chunks: most snapshots travel as streams, through loss and reordering.
  config.snapshot_stream.chunk_bytes = 16 << 10;

  // A full disk or an injected I/O error may keep a node from starting (a write or the
  // open's sync fails): that is the fault, and the supervisor retries. Anything else is
  // a failure to recover.
  auto cannot_start = [&](const absl::Status& st) {
    if ((absl::IsResourceExhausted(st) && n.disk->filled()) || n.disk->io_error_fired()) {
      RestartLater(node, "could not start on a failing disk");
    } else {
      Fail(absl::StrCat("n", node + 1, " cannot recover its disk: ", st.ToString()));
      CrashNode(node);
    }
  };
  if (absl::Status st = n.disk->Open(); !st.ok()) return cannot_start(st);
  n.state = std::make_unique<server::KvStateMachine>(&n.disk->backend(), KvConfigFor(scenario_),
                                                     n.env->Log());
  if (absl::Status st = n.state->Open(); !st.ok()) return cannot_start(st);
  n.observed = std::make_unique<ObservedMachine>(
      *n.state, [this, node](LogIndex index, uint64_t request_id, std::string_view command,
                             const server::StateMachine::ApplyContext& context) {
        nodes_[node].applied.push_back(
            {index, request_id, std::string(command), context.nospace, context.term});
      });
  static_cast<ObservedMachine&>(*n.observed).SetAfterApply([this, node](LogIndex index) {
    SimNode& self = nodes_[node];
    if (!self.applied.empty() && self.applied.back().index == index) {
      self.applied.back().revision_after = self.state->store().revision();
    }
  });
  n.node = std::make_unique<server::Node>(config, *n.env, *n.observed);
  if (absl::Status st = n.node->Start(); !st.ok()) return cannot_start(st);
  server::KvServerConfig server_config;
  server_config.lessor.promotion_pause = ElectionTimeout();
  server_config.lessor.checkpoint_interval = ElectionTimeout() / 2;
  server_config.request_timeout = scenario_.workload.timeout;
  server_config.bugs = options_.server_bugs;
  if (scenario_.workload.auto_compaction_retention > Nanos(0)) {
    server_config.auto_compaction = {.mode = server::AutoCompactionConfig::Mode::kPeriodic,
                                      .retention_period = scenario_.workload.auto_compaction_retention};
  }
  // Small catch-up batches: slow and resuming watchers cross batch boundaries often.
  server_config.watch.catchup_revisions_max = 8;
  server_config.watch.bugs = options_.watch_bugs;
  n.server = std::make_unique<server::KvServer>(server_config, *n.env, *n.node, *n.state);
  n.server->Start();
  AfterNodeEvent(node);
}

void Sim::CrashNode(int node, bool power_loss) {
  SimNode& n = nodes_[node];
  if (!n.up) return;
  if (n.role == Role::kLeader) leader_intervals_.push_back({node, n.leader_since, now_});
  n.role = Role::kFollower;
  n.up = false;
  ++n.incarnation;  // drops its timers and unsent messages
  n.server.reset();
  n.node.reset();
  n.observed.reset();
  n.state.reset();
  n.applied.clear();  // applied in an event whose fsync never completed: never happened
  n.env.reset();
  n.timers.clear();
  if (power_loss) {
    n.disk->Crash();
  } else {
    n.disk->Kill();
  }
  crashes_.emplace_back(now_, node);
  hash_.Add(0xc4a5ULL + static_cast<uint64_t>(node));
}

void Sim::RestartLater(int node, std::string_view why) {
  Trace(absl::StrCat("n", node + 1, " ", absl::string_view(why.data(), why.size()),
                     "; restarting it"));
  CrashNode(node, /*power_loss=*/false);  // the process exits; the machine stays up
  const Nanos delay(rng_.Range(scenario_.tick_interval.count(), 2 * ElectionTimeout().count()));
  Schedule(now_ + delay, [this, node] {
    if (!nodes_[node].up) StartNode(node);
  });
}

void Sim::OperatorTick() {
  const int leader = CurrentLeader();
  if (leader >= 0) {
    for (NodeId member : nodes_[leader].node->nospace_alarms()) {
      const int m = static_cast<int>(member.value) - 1;
      if (m < 0 || m >= scenario_.cluster || nodes_[m].disk->filled()) continue;
      Trace(absl::StrCat("operator: disarm the NOSPACE alarm of n", m + 1));
      ScheduleOnNode(leader, now_, nodes_[leader].incarnation, [this, leader, member] {
        nodes_[leader].node->DisarmAlarm(member, [](absl::Status) {});
      });
    }
  }
  Schedule(now_ + ElectionTimeout() / 2, [this] { OperatorTick(); });
}

bool Sim::AlarmsActive() const {
  for (const SimNode& n : nodes_) {
    if (n.up && n.node != nullptr && !n.node->stopped() && !n.node->nospace_alarms().empty()) {
      return true;
    }
  }
  return false;
}

int Sim::CurrentLeader() const {
  int best = -1;
  for (const SimNode& n : nodes_) {
    if (!n.up || n.node == nullptr || n.node->stopped()) continue;
    const raft::Raft& r = n.node->raft();
    if (r.role() != Role::kLeader) continue;
    if (best < 0 || r.term() > nodes_[best].node->raft().term()) best = n.index;
  }
  return best;
}

// ---- network --------------------------------------------------------------------

void Sim::Transmit(int from, NodeId to, std::string bytes) {
  KEEL_ASSERT(to.value >= 1 && to.value <= nodes_.size());
  SimNode& n = nodes_[from];
  // Messages said after an fsync leave when the fsync completes; a crash before then
  // (the incarnation changes) means they were never said.
  const Nanos depart = std::max(now_, n.busy_until);
  const uint64_t incarnation = n.incarnation;
  const int dest = static_cast<int>(to.value - 1);
  if (depart == now_) {
    Route(from, dest, std::move(bytes));
    return;
  }
  Schedule(depart, [this, from, dest, incarnation, bytes = std::move(bytes)]() mutable {
    Depart(from, incarnation, [this, from, dest, bytes = std::move(bytes)]() mutable {
      Route(from, dest, std::move(bytes));
    });
  });
}

void Sim::Depart(int node, uint64_t incarnation, std::function<void()> send) {
  SimNode& n = nodes_[node];
  if (!n.up || n.incarnation != incarnation) return;  // crashed before its fsync ended
  if (n.paused_until > now_) {
    // A pause that began while the fsync ran holds the send until the thread resumes.
    Schedule(n.paused_until, [this, node, incarnation, send = std::move(send)]() mutable {
      Depart(node, incarnation, std::move(send));
    });
    return;
  }
  send();
}

void Sim::Route(int from, int to, std::string bytes) {
  const int copies = rng_.Chance(net_.duplicate) ? 2 : 1;
  for (int c = 0; c < copies; ++c) {
    if (Blocked(from, to) || rng_.Chance(net_.loss)) {
      ++messages_dropped_;
      continue;
    }
    const auto [lo, hi] = link_latency_[from][to].second > Nanos(0)
                              ? link_latency_[from][to]
                              : std::pair<Nanos, Nanos>{net_.latency_min, net_.latency_max};
    const Nanos latency(rng_.Range(lo.count(), hi.count()));
    std::string payload = c + 1 < copies ? bytes : std::move(bytes);
    ScheduleOnNode(to, now_ + latency, kAnyIncarnation,
                   [this, from, to, payload = std::move(payload)] {
      if (Blocked(from, to)) {  // the partition began while it was in flight
        ++messages_dropped_;
        return;
      }
      ++messages_delivered_;
      hash_.Add(static_cast<uint64_t>(now_.count()));
      hash_.Add(static_cast<uint64_t>(from * 8 + to));
      hash_.Add(payload);
      if (options_.trace) {
        absl::StatusOr<raft::Message> m = raft::DecodeMessage(payload);
        if (m.ok()) {
          Trace(absl::StrFormat("n%d->n%d %s term=%d index=%d log_term=%d entries=%d "
                                "commit=%d reject=%d", from + 1, to + 1,
                                std::string(raft::MessageTypeName(m->type)), m->term.value,
                                m->index.value, m->log_term.value, m->entries.size(),
                                m->commit.value, m->reject ? 1 : 0) +
                (m->chunk ? absl::StrFormat(" chunk=%d+%d/%d", m->chunk->offset,
                                            m->chunk->data.size(), m->chunk->total)
                          : std::string()));
        }
      }
      nodes_[to].node->Receive(payload);
    });
  }
}

void Sim::SetLink(int a, int b, bool one_way, bool cut) {
  cut_[a][b] = cut;
  if (!one_way) cut_[b][a] = cut;
}

void Sim::HealAll() {
  for (auto& row : cut_) std::fill(row.begin(), row.end(), false);
  std::fill(clogged_.begin(), clogged_.end(), false);
  ++flap_generation_;  // stops flapping links
}

// ---- steps ----------------------------------------------------------------------

std::vector<int> Sim::Resolve(const NodeRef& ref) {
  switch (ref.kind) {
    case NodeRef::Kind::kId:
      if (ref.id.IsZero()) return {};  // a step that names no node
      return {static_cast<int>(ref.id.value - 1)};
    case NodeRef::Kind::kAll: {
      std::vector<int> all;
      for (int i = 0; i < scenario_.cluster; ++i) all.push_back(i);
      return all;
    }
    case NodeRef::Kind::kLeader: {
      const int leader = CurrentLeader();
      if (leader < 0) return {};
      return {leader};
    }
    case NodeRef::Kind::kFollower: {
      std::vector<int> followers;
      const int leader = CurrentLeader();
      for (const SimNode& n : nodes_) {
        if (n.up && n.index != leader) followers.push_back(n.index);
      }
      if (followers.empty()) return {};
      return {followers[rng_.Uniform(followers.size())]};
    }
    case NodeRef::Kind::kLabel: {
      auto it = labels_.find(ref.label);
      if (it == labels_.end()) return {};
      return {it->second};
    }
  }
  return {};
}

void Sim::ApplyStep(const Step& step) {
  const std::vector<int> a = Resolve(step.a);
  const std::vector<int> b = Resolve(step.b);
  const bool needs_a =
      step.kind != StepKind::kPartition && step.kind != StepKind::kHeal &&
      step.kind != StepKind::kLoss && step.kind != StepKind::kDuplicate &&
      (step.kind != StepKind::kLatency || step.a.kind != NodeRef::Kind::kId ||
       !step.a.id.IsZero()) &&
      step.kind != StepKind::kSwizzle && step.kind != StepKind::kChurn &&
      step.kind != StepKind::kCrashLoop;  // resolves its node anew at every strike
  if (needs_a && a.empty()) {
    Trace(absl::StrCat("step at line ", step.line, " skipped: no such node now"));
    return;
  }
  if (!step.label.empty()) labels_[step.label] = a.front();
  hash_.Add(0x57e9ULL + static_cast<uint64_t>(step.kind));
  Trace(absl::StrCat("step kind=", static_cast<int>(step.kind), " line=", step.line,
                     a.empty() ? "" : absl::StrCat(" node=n", a.front() + 1)));
  switch (step.kind) {
    case StepKind::kPartition: Partition(step.groups); break;
    case StepKind::kIsolate:
      for (int j = 0; j < scenario_.cluster; ++j) {
        if (j != a.front()) SetLink(a.front(), j, false, true);
      }
      break;
    case StepKind::kCut:
    case StepKind::kRestore:
      if (b.empty()) return;
      SetLink(a.front(), b.front(), step.one_way, step.kind == StepKind::kCut);
      break;
    case StepKind::kHeal: HealAll(); break;
    case StepKind::kCrash:
    case StepKind::kKill:
      for (int i : a) CrashNode(i, step.kind == StepKind::kCrash);
      break;
    case StepKind::kRestart:
      for (int i : a) {
        if (!nodes_[i].up) StartNode(i);
      }
      break;
    case StepKind::kPause:
      for (int i : a) nodes_[i].paused_until = std::max(nodes_[i].paused_until, now_ + step.duration);
      break;
    case StepKind::kSkew:
      for (int i : a) nodes_[i].clock_local += step.offset;
      if (step.offset > Nanos(0)) skew_forward_total_ += step.offset;
      break;
    case StepKind::kDrift:
      for (int i : a) {
        SimNode& n = nodes_[i];
        n.clock_local = LocalNow(i);
        n.clock_global = now_;
        n.drift = step.value;
        drift_max_seen_ = std::max(drift_max_seen_, std::abs(step.value));
      }
      break;
    case StepKind::kLoss: net_.loss = step.value; break;
    case StepKind::kDuplicate: net_.duplicate = step.value; break;
    case StepKind::kLatency:
      if (b.empty()) {
        net_.latency_min = step.duration;
        net_.latency_max = step.duration2;
      } else {
        link_latency_[a.front()][b.front()] = {step.duration, step.duration2};
        if (!step.one_way) link_latency_[b.front()][a.front()] = {step.duration, step.duration2};
      }
      break;
    case StepKind::kSwizzle: Swizzle(step.duration); break;
    case StepKind::kChurn:
      churn_until_ = now_ + step.duration;
      ChurnTick();
      break;
    case StepKind::kFlap:
      if (b.empty()) return;
      Flap(a.front(), b.front(), step.duration, now_ + step.duration2, flap_generation_, true);
      break;
    case StepKind::kFailWrite:
    case StepKind::kFailSync:
      for (int i : a) {
        if (step.kind == StepKind::kFailWrite) {
          nodes_[i].disk->FailNextWrite();
        } else {
          nodes_[i].disk->FailNextSync();
        }
      }
      break;
    case StepKind::kFillDisk:
      for (int i : a) nodes_[i].disk->Fill(kDiskFullHeadroom);
      if (!operator_running_) {
        operator_running_ = true;
        OperatorTick();
      }
      break;
    case StepKind::kFreeDisk:
      for (int i : a) nodes_[i].disk->Free();
      break;
    case StepKind::kCrashLoop: CrashLoop(step.a, step.duration, step.count); break;
    case StepKind::kCrashInInstall:
      for (int i : a) nodes_[i].crash_in_install = true;
      break;
    case StepKind::kTransfer: {
      const int leader = CurrentLeader();
      if (leader < 0) return;
      ScheduleOnNode(leader, now_, nodes_[leader].incarnation, [this, leader, to = a.front()] {
        (void)nodes_[leader].node->TransferLeadership(NodeId(to + 1));
      });
      break;
    }
  }
}

void Sim::Partition(const std::vector<NodeSet>& groups) {
  // Links between groups are cut both ways; nodes in no group keep all their links.
  std::vector<int> group(scenario_.cluster, -1);
  for (size_t g = 0; g < groups.size(); ++g) {
    for (const NodeRef& r : groups[g]) {
      for (int i : Resolve(r)) group[i] = static_cast<int>(g);
    }
  }
  for (int i = 0; i < scenario_.cluster; ++i) {
    for (int j = 0; j < scenario_.cluster; ++j) {
      if (group[i] >= 0 && group[j] >= 0 && group[i] != group[j]) cut_[i][j] = true;
    }
  }
}

void Sim::Swizzle(Nanos interval) {
  // FoundationDB's swizzle-clog: clog about half the nodes one at a time, then unclog
  // them one at a time in a different order.
  std::vector<int> order;
  for (int i = 0; i < scenario_.cluster; ++i) order.push_back(i);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng_.Uniform(i)]);
  order.resize((order.size() + 1) / 2);
  std::vector<int> unclog = order;
  for (size_t i = unclog.size(); i > 1; --i) std::swap(unclog[i - 1], unclog[rng_.Uniform(i)]);
  const uint64_t generation = flap_generation_;
  for (size_t k = 0; k < order.size(); ++k) {
    Schedule(now_ + interval * static_cast<int64_t>(k), [this, n = order[k], generation] {
      if (generation == flap_generation_) clogged_[n] = true;
    });
    Schedule(now_ + interval * static_cast<int64_t>(order.size() + k),
             [this, n = unclog[k]] { clogged_[n] = false; });
  }
}

void Sim::ChurnTick() {
  // Leaders that survive their first moments are struck later, at random.
  if (now_ >= churn_until_) return;
  const int leader = CurrentLeader();
  if (leader >= 0) Strike(leader, now_);
  Schedule(now_ + Nanos(rng_.Range(scenario_.tick_interval.count(),
                                    2 * ElectionTimeout().count())),
           [this] { ChurnTick(); });
}

void Sim::MaybeAssassinate(int node) {
  // Strike while the new leader's first entries are still in flight: within a few
  // message latencies.
  if (rng_.Chance(0.5)) Strike(node, now_ + Nanos(rng_.Range(0, 3 * net_.latency_max.count())));
}

void Sim::Strike(int node, Nanos strike) {
  // Crash or isolate the node at `strike`; it comes back after up to two election
  // timeouts.
  const Nanos back = strike + Nanos(rng_.Range(scenario_.tick_interval.count(),
                                               2 * ElectionTimeout().count()));
  const uint64_t incarnation = nodes_[node].incarnation;
  const uint64_t generation = flap_generation_;
  if (rng_.Chance(0.5)) {
    Schedule(strike, [this, node, incarnation, back] {
      if (nodes_[node].incarnation != incarnation) return;
      Trace(absl::StrCat("churn: crash n", node + 1));
      CrashNode(node);
      Schedule(back, [this, node] {
        if (!nodes_[node].up) StartNode(node);
      });
    });
  } else {
    Schedule(strike, [this, node, generation, back] {
      if (generation != flap_generation_) return;
      Trace(absl::StrCat("churn: isolate n", node + 1));
      clogged_[node] = true;
      Schedule(back, [this, node] { clogged_[node] = false; });
    });
  }
}

void Sim::Flap(int a, int b, Nanos period, Nanos until, uint64_t generation, bool cut) {
  if (generation != flap_generation_) return;
  if (now_ >= until) {
    SetLink(a, b, false, false);
    return;
  }
  SetLink(a, b, false, cut);
  Schedule(now_ + period, [this, a, b, period, until, generation, cut] {
    Flap(a, b, period, until, generation, !cut);
  });
}

// ---- clients --------------------------------------------------------------------

void Sim::ScheduleClient(int client, Nanos delay) {
  Schedule(now_ + delay, [this, client] { IssueRequest(client); });
}

KvOp Sim::DrawOp() {
  if (rng_.Chance(scenario_.workload.read_fraction)) {
    const uint64_t pick = rng_.Uniform(10);
    return pick < 5 ? KvOp::kGet : pick < 7 ? KvOp::kSerializableGet : KvOp::kRange;
  }
  const uint64_t pick = rng_.Uniform(100);
  if (pick < 45) return KvOp::kPut;
  if (pick < 60) return KvOp::kDelete;
  if (pick < 98) return KvOp::kCas;
  return KvOp::kCompact;  // concurrent compaction, now and then
}

void Sim::IssueRequest(int client) {
  if (!clients_active_) return;
  Request req;
  req.client = client;
  req.node = static_cast<int>(rng_.Uniform(scenario_.cluster));
  req.op = DrawOp();
  req.key = absl::StrCat("k", rng_.Uniform(kKeys));
  switch (req.op) {
    case KvOp::kRange: req.key = "k"; break;  // every key: a multi-key read
    case KvOp::kPut:
    case KvOp::kCas: {
      req.value = absl::StrCat("c", client, "-", client_seq_[client]++);
      auto seen = client_seen_[client].find(req.key);
      req.expect_missing = seen == client_seen_[client].end();
      if (!req.expect_missing) req.expected = seen->second;
      break;
    }
    case KvOp::kCompact: req.revision = std::max<int64_t>(1, reference_.revision() - 50); break;
    default: break;
  }
  req.start = now_;
  const size_t id = history_.Begin(std::move(req));
  Call(history_.at(id).node,
       [this, id](server::KvServer& server, CallDone reply) { Send(server, id, std::move(reply)); },
       [this, id](absl::Status st, std::string response) { Resolve(id, st, response); });
}

void Sim::Call(int target, CallBody body, CallDone done) {
  auto finished = std::make_shared<bool>(false);
  auto finish = [finished, done = std::move(done)](absl::Status st, std::string response) {
    if (*finished) return;  // the client gave up already, or the reply came first
    *finished = true;
    done(std::move(st), std::move(response));
  };
  Schedule(now_ + scenario_.workload.timeout, [finish] {
    finish(absl::DeadlineExceededError("client gave up"), "");
  });
  const Nanos there(rng_.Range(net_.latency_min.count(), net_.latency_max.count()));
  Schedule(now_ + there, [this, target, body = std::move(body), finish] {
    if (!nodes_[target].up || nodes_[target].server == nullptr) {
      return finish(absl::UnavailableError("connection refused"), "");  // nothing was sent
    }
    RunOnNode(target, kAnyIncarnation, [this, target, body, finish] {
      body(*nodes_[target].server, [this, target, finish](absl::Status st, std::string response) {
        // The reply leaves once the node's fsync completes, if it does not crash first.
        const SimNode& n = nodes_[target];
        Schedule(std::max(now_, n.busy_until), [this, target, finish, st, incarnation = n.incarnation,
                                                response = std::move(response)]() mutable {
          Depart(target, incarnation, [this, finish, st, response = std::move(response)]() mutable {
            const Nanos back(rng_.Range(net_.latency_min.count(), net_.latency_max.count()));
            Schedule(now_ + back, [finish, st, response = std::move(response)] {
              finish(st, response);
            });
          });
        });
      });
    });
  });
}

void Sim::Send(server::KvServer& server, size_t id, CallDone reply) {
  auto answer = [reply](const auto& got) {
    reply(got.status(), got.ok() ? got->SerializeAsString() : std::string());
  };
  const Request& r = history_.at(id);
  switch (r.op) {
    case KvOp::kGet:
    case KvOp::kSerializableGet:
    case KvOp::kRange:
      return server.Range(KvHistory::RangeRequestFor(r), answer);
    case KvOp::kPut: return server.Put(KvHistory::PutRequestFor(r), answer);
    case KvOp::kDelete: return server.DeleteRange(KvHistory::DeleteRequestFor(r), answer);
    case KvOp::kCas: return server.Txn(KvHistory::CasRequestFor(r), answer);
    case KvOp::kCompact: {
      etcdserverpb::CompactionRequest c;
      c.set_revision(r.revision);
      return server.Compact(c, answer);
    }
  }
}

// ---- registrars: leases kept alive, and abandoned ------------------------------

void Sim::StartRegistration(int r) {
  if (!clients_active_) return;
  Registrar& reg = registrars_[r];
  reg.lease = 0;
  const int64_t min_ttl = KvConfigFor(scenario_).lease.min_ttl_seconds;
  const int64_t ttl = min_ttl + static_cast<int64_t>(rng_.Uniform(2 * min_ttl + 1));
  const Nanos sent = now_;
  const int node = static_cast<int>(rng_.Uniform(scenario_.cluster));
  Call(node,
       [ttl](server::KvServer& server, CallDone reply) {
         etcdserverpb::LeaseGrantRequest g;
         g.set_ttl(ttl);
         server.LeaseGrant(g, [reply](const absl::StatusOr<etcdserverpb::LeaseGrantResponse>& got) {
           reply(got.status(), got.ok() ? got->SerializeAsString() : std::string());
         });
       },
       [this, r, sent](absl::Status st, std::string response) {
         etcdserverpb::LeaseGrantResponse g;
         if (!st.ok() || !g.ParseFromString(response)) {
           Schedule(now_ + scenario_.tick_interval, [this, r] { StartRegistration(r); });
           return;
         }
         Registered(r, g.id(), g.ttl(), sent);
       });
}

void Sim::Registered(int r, int64_t lease, int64_t ttl_seconds, Nanos sent) {
  Registrar& reg = registrars_[r];
  reg.lease = lease;
  reg.ttl = std::chrono::seconds(ttl_seconds);
  lease_checker_.OnGranted(lease, ttl_seconds, sent, now_);
  // Its registration: a key bound to the lease (gone with it).
  const int node = static_cast<int>(rng_.Uniform(scenario_.cluster));
  const std::string key = absl::StrCat("reg/", r);
  const std::string value = absl::StrCat("r", r, "-", reg.generation++);
  Call(node,
       [key, value, lease](server::KvServer& server, CallDone reply) {
         etcdserverpb::PutRequest p;
         p.set_key(key);
         p.set_value(value);
         p.set_lease(lease);
         server.Put(p, [reply](const absl::StatusOr<etcdserverpb::PutResponse>& got) {
           reply(got.status(), "");
         });
       },
       [](absl::Status, std::string) {});
  Schedule(now_ + reg.ttl / 3, [this, r, lease] { KeepAlive(r, lease, /*may_abandon=*/true); });
}

void Sim::KeepAlive(int r, int64_t lease, bool may_abandon) {
  Registrar& reg = registrars_[r];
  if (reg.lease != lease) return;
  if (!clients_active_ || (may_abandon && rng_.Chance(scenario_.workload.abandon_probability))) {
    lease_checker_.OnAbandoned(lease, now_);
    reg.lease = 0;
    if (clients_active_) {
      Schedule(now_ + Nanos(rng_.Range(0, reg.ttl.count())), [this, r] { StartRegistration(r); });
    }
    return;
  }
  const Nanos sent = now_;
  Call(reg.target,
       [lease](server::KvServer& server, CallDone reply) {
         server.LeaseKeepAlive(lease, [reply](const absl::StatusOr<int64_t>& got) {
           reply(got.status(), "");
         });
       },
       [this, r, lease, sent](absl::Status st, std::string) {
         Registrar& self = registrars_[r];
         if (options_.trace) {
           Trace(absl::StrCat("registrar ", r, " keepalive of lease ", lease, " sent at ",
                              FormatTime(sent), " to n", self.target + 1, ": ", st.ToString()));
         }
         if (self.lease != lease) return;
         if (st.ok()) {
           lease_checker_.OnKeepAliveOk(lease, sent, now_);
           Schedule(now_ + self.ttl / 3, [this, r, lease] { KeepAlive(r, lease, true); });
         } else if (absl::IsNotFound(st)) {
           lease_checker_.OnKeepAliveNotFound(lease, sent, now_);
           StartRegistration(r);  // as a registry client does: register anew
         } else {
           // Not the leader, unreachable or slow: the next member, at once.
           self.target = (self.target + 1) % scenario_.cluster;
           Schedule(now_ + scenario_.tick_interval, [this, r, lease] { KeepAlive(r, lease, false); });
         }
       });
}

// ---- watchers: streams that disconnect and resume ---------------------------------

void Sim::ConnectWatcher(int w) {
  if (!clients_active_) return;
  Watcher& watcher = watchers_[w];
  const uint64_t epoch = ++watcher.epoch;
  watcher.open = false;
  watcher.node = static_cast<int>(rng_.Uniform(scenario_.cluster));
  const bool prev_kv = rng_.Chance(0.5);
  watcher.session = watch_checker_.Begin(
      {.watcher = w, .key = "k", .end = "l", .start = watcher.resume_from, .prev_kv = prev_kv});
  const Nanos there(rng_.Range(net_.latency_min.count(), net_.latency_max.count()));
  Schedule(now_ + there, [this, w, epoch, prev_kv] {
    Watcher& self = watchers_[w];
    if (self.epoch != epoch) return;
    SimNode& n = nodes_[self.node];
    if (!n.up || n.server == nullptr) {  // refused: try another member soon
      Schedule(now_ + scenario_.tick_interval, [this, w, epoch] {
        if (watchers_[w].epoch == epoch) ConnectWatcher(w);
      });
      return;
    }
    RunOnNode(self.node, kAnyIncarnation, [this, w, epoch, prev_kv] {
      Watcher& me = watchers_[w];
      if (me.epoch != epoch || nodes_[me.node].server == nullptr) return;
      // The stream: responses reach the client in order, after a latency. A slow client
      // refuses one now and then (the hub then catches it up from history).
      auto sink = [this, w, epoch](const etcdserverpb::WatchResponse& r) {
        Watcher& client = watchers_[w];
        if (client.epoch != epoch) return true;
        if (r.events_size() > 0 && rng_.Chance(0.05)) return false;
        // It leaves once the member's fsync completes (it came from entries applied in
        // this event), if the member does not crash first; then it travels in order.
        const int node = client.node;
        const SimNode& n = nodes_[node];
        client.departs_at = std::max({now_, n.busy_until, client.departs_at});
        Schedule(client.departs_at, [this, w, epoch, r, node, incarnation = n.incarnation] {
          Depart(node, incarnation, [this, w, epoch, r] {
            Watcher& c = watchers_[w];
            if (c.epoch != epoch) return;
            const Nanos latency(rng_.Range(net_.latency_min.count(), net_.latency_max.count()));
            c.delivered_until = std::max(c.delivered_until, now_ + latency);
            Schedule(c.delivered_until, [this, w, epoch, r] { OnWatchResponse(w, epoch, r); });
          });
        });
        return true;
      };
      absl::StatusOr<watch::WatchHub::StreamId> stream =
          nodes_[me.node].server->OpenWatchStream(sink);
      if (!stream.ok()) return;
      me.stream = *stream;
      me.incarnation = nodes_[me.node].incarnation;
      me.open = true;
      etcdserverpb::WatchCreateRequest create;
      create.set_key("k");
      create.set_range_end("l");
      create.set_start_revision(me.resume_from);
      create.set_prev_kv(prev_kv);
      nodes_[me.node].server->WatchCreate(me.stream, create);
    });
  });
  // It disconnects after a while and resumes elsewhere; meanwhile it watches its member.
  Schedule(now_ + Nanos(rng_.Range(ElectionTimeout().count(), 4 * ElectionTimeout().count())),
           [this, w, epoch] { DisconnectWatcher(w, epoch); });
  Schedule(now_ + scenario_.tick_interval * 3, [this, w, epoch] { WatcherTick(w, epoch); });
}

void Sim::OnWatchResponse(int w, uint64_t epoch, const etcdserverpb::WatchResponse& response) {
  Watcher& watcher = watchers_[w];
  if (watcher.epoch != epoch) return;
  watch_checker_.OnResponse(watcher.session, response);
  watcher.resume_from = watch_checker_.last_revision(watcher.session) + 1;
  if (response.canceled()) {
    // Compacted away: the client lists again; here it resumes where it may.
    if (response.compact_revision() > 0) watcher.resume_from = response.compact_revision();
    DisconnectWatcher(w, epoch);
  }
}

void Sim::DisconnectWatcher(int w, uint64_t epoch) {
  Watcher& watcher = watchers_[w];
  if (watcher.epoch != epoch) return;
  if (watch_checker_.start(watcher.session) > 0) {
    watcher.resume_from = watch_checker_.last_revision(watcher.session) + 1;
  }
  ++watcher.epoch;  // what is still on its way from the old stream is dropped
  if (watcher.open) {
    const int node = watcher.node;
    const uint64_t incarnation = watcher.incarnation;
    const watch::WatchHub::StreamId stream = watcher.stream;
    watcher.open = false;
    RunOnNode(node, incarnation, [this, node, stream] {
      if (nodes_[node].server != nullptr) nodes_[node].server->CloseWatchStream(stream);
    });
  }
  const Nanos pause(rng_.Range(0, ElectionTimeout().count()));
  Schedule(now_ + pause, [this, w] { ConnectWatcher(w); });
}

void Sim::WatcherTick(int w, uint64_t epoch) {
  Watcher& watcher = watchers_[w];
  if (watcher.epoch != epoch || !clients_active_) return;
  const SimNode& n = nodes_[watcher.node];
  if (watcher.open && (!n.up || n.incarnation != watcher.incarnation)) {
    return DisconnectWatcher(w, epoch);  // the member went away: the stream broke
  }
  if (watcher.open && rng_.Chance(0.3)) {
    const int node = watcher.node;
    const watch::WatchHub::StreamId stream = watcher.stream;
    RunOnNode(node, watcher.incarnation, [this, node, stream] {
      if (nodes_[node].server != nullptr) nodes_[node].server->WatchProgress(stream);
    });
  }
  Schedule(now_ + scenario_.tick_interval * 3, [this, w, epoch] { WatcherTick(w, epoch); });
}

void Sim::Resolve(size_t id, const absl::Status& status, const std::string& response) {
  if (!history_.Resolve(id, status, response, now_)) return;
  const Request& r = history_.at(id);
  hash_.Add(0xc11eULL + static_cast<uint64_t>(r.outcome) * 131 + id);
  if (r.outcome == Outcome::kOk) Learn(r);
  if (r.start >= progress_from_ && r.start < progress_to_) {
    // With a leader in place, no request may be refused outright (a compaction may
    // be refused for its revision). One may still time out where the offered load
    // exceeds what the flow-control settings can replicate to a lagging follower; the
    // drain's convergence check catches followers that never catch up.
    if (r.outcome == Outcome::kFailed && r.op != KvOp::kCompact) {
      Fail(absl::StrCat("Liveness: a ", KvOpName(r.op), " to n", r.node + 1, " started at ",
                        FormatTime(r.start), " after recovery was refused: ", r.error));
    }
    if (r.outcome == Outcome::kOk && r.write()) ++progress_writes_ok_;
  }
  ScheduleClient(r.client, Nanos(rng_.Range(0, scenario_.workload.think.count())));
}

void Sim::Learn(const Request& r) {
  // What the client now believes each key holds: its next compare-and-swap expects it.
  absl::btree_map<std::string, std::string>& seen = client_seen_[r.client];
  auto remember = [&](const mvccpb::KeyValue* kv) {
    if (kv == nullptr) {
      seen.erase(r.key);
    } else {
      seen[r.key] = kv->value();
    }
  };
  switch (r.op) {
    case KvOp::kGet:
    case KvOp::kSerializableGet: {
      etcdserverpb::RangeResponse g;
      if (g.ParseFromString(r.response)) remember(g.kvs_size() > 0 ? &g.kvs(0) : nullptr);
      break;
    }
    case KvOp::kPut: seen[r.key] = r.value; break;
    case KvOp::kDelete: seen.erase(r.key); break;
    case KvOp::kCas: {
      etcdserverpb::TxnResponse t;
      if (!t.ParseFromString(r.response)) break;
      if (t.succeeded()) {
        seen[r.key] = r.value;
      } else if (t.responses_size() == 1) {
        const etcdserverpb::RangeResponse& g = t.responses(0).response_range();
        remember(g.kvs_size() > 0 ? &g.kvs(0) : nullptr);
      }
      break;
    }
    default: break;
  }
}

// ---- checks ---------------------------------------------------------------------

void Sim::Fail(std::string text) {
  Trace(absl::StrCat("FAIL ", text));
  if (failures_.size() < 20) failures_.push_back(std::move(text));
}

void Sim::OnLog(int node, Severity severity, std::string_view name, std::string_view fields) {
  if (options_.trace) {
    Trace(absl::StrCat("n", node + 1, " ", absl::string_view(SeverityName(severity).data(), SeverityName(severity).size()), " ",
                       absl::string_view(name.data(), name.size()),
                       absl::string_view(fields.data(), fields.size())));
  }
  // A node whose disk was made to fail, or filled up, may stop over it (fail-stop, as
  // etcd panics on ENOSPC): that is the fault at work, not a bug.
  const bool expected =
      name == "StorageFailed" &&
      (nodes_[node].disk->io_error_fired() ||
       (nodes_[node].disk->filled() &&
        absl::StrContains(absl::string_view(fields.data(), fields.size()), "RESOURCE_EXHAUSTED")));
  if (severity == Severity::kError && !expected) {
    Fail(absl::StrCat("n", node + 1, " logged an error: ",
                      absl::string_view(name.data(), name.size()),
                      absl::string_view(fields.data(), fields.size())));
  }
}

void Sim::Trace(std::string_view line) {
  if (!options_.trace) return;
  std::printf("%s %.*s\n", FormatTime(now_).c_str(), static_cast<int>(line.size()), line.data());
}

void Sim::CheckRecoveryLeader() {
  const int leader = CurrentLeader();
  Term max_term;
  for (const SimNode& n : nodes_) {
    if (n.up && n.node && !n.node->stopped()) max_term = std::max(max_term, n.node->raft().term());
  }
  if (leader < 0 || nodes_[leader].node->raft().term() != max_term) {
    Fail(absl::StrCat("Liveness: no leader ", kRecoveryElectionTimeouts,
                      " election timeouts after every fault healed (at ",
                      FormatTime(recovery_at_), ")"));
  }
}

bool Sim::Converged() const {
  if (history_.pending() > 0) return false;
  const int leader = CurrentLeader();
  if (leader < 0) return false;
  const LogIndex last = nodes_[leader].node->raft().log().LastIndex();
  for (const SimNode& n : nodes_) {
    if (!n.up || n.node->stopped()) return false;
    // What it applied is observed once its fsync completes: wait for that too.
    if (n.busy_until > now_) return false;
    const raft::RaftLog& log = n.node->raft().log();
    if (log.committed() != last || log.applied() != last) return false;
  }
  return true;
}

LeaseChecker::Leadership Sim::LeadershipHistory() const {
  LeaseChecker::Leadership out;
  for (const auto& [at, node] : elections_) out.elections.push_back(at);
  // Time in which no leader could commit: no node leads (from the roles observed), or
  // the one that does has no quorum (deposed, or isolated with CheckQuorum off). While
  // leases exist a working leader commits a checkpoint every half election timeout, so
  // a longer gap between commits made by leaders is such time too.
  std::vector<std::pair<Nanos, Nanos>> spans;
  std::vector<std::pair<Nanos, Nanos>> led;
  for (const LeaderInterval& l : leader_intervals_) led.emplace_back(l.from, l.to);
  for (const SimNode& n : nodes_) {
    if (n.up && n.role == Role::kLeader) led.emplace_back(n.leader_since, now_);
  }
  std::sort(led.begin(), led.end());
  Nanos covered{0};
  for (const auto& [from, to] : led) {
    if (from > covered) spans.emplace_back(covered, from);
    covered = std::max(covered, to);
  }
  if (covered < now_) spans.emplace_back(covered, now_);
  const LeaseChecker::Config c = LeaseCheckerConfigFor(scenario_);
  const Nanos gap_max = c.checkpoint_interval + c.commit_allowance;
  Nanos last{0};
  for (const CommitEvent& e : commit_events_) {
    if (!e.leader) continue;
    if (e.at - last > gap_max) spans.emplace_back(last, e.at);
    last = std::max(last, e.at);
  }
  if (now_ - last > gap_max) spans.emplace_back(last, now_);
  // Merged, so that no time counts twice.
  std::sort(spans.begin(), spans.end());
  for (const auto& [a, b] : spans) {
    if (!out.stalled.empty() && a <= out.stalled.back().second) {
      out.stalled.back().second = std::max(out.stalled.back().second, b);
    } else {
      out.stalled.emplace_back(a, b);
    }
  }
  return out;
}

void Sim::CheckEndState() {
  // Every node holds the reference's keyspace: same revision, keys, values and leases.
  etcdserverpb::RangeRequest all;
  all.set_key(std::string(1, '\0'));
  all.set_range_end(std::string(1, '\0'));
  etcdserverpb::RangeResponse want;
  KEEL_ASSERT(reference_.machine().applier().Range(all, &want).ok());
  for (const SimNode& n : nodes_) {
    if (!n.up || n.state == nullptr) continue;
    etcdserverpb::RangeResponse got;
    const absl::Status st = n.state->applier().Range(all, &got);
    std::string differs;
    if (!st.ok()) {
      differs = st.ToString();
    } else if (got.header().revision() != want.header().revision()) {
      differs = absl::StrCat("revision ", got.header().revision(), " vs ",
                             want.header().revision(), ": ", got.ShortDebugString(), " vs ",
                             want.ShortDebugString());
    } else if (got.SerializeAsString() != want.SerializeAsString()) {
      differs = absl::StrCat("keys or values: ", got.ShortDebugString(), " vs ",
                             want.ShortDebugString());
    } else if (n.state->leases().leases().size() != reference_.machine().leases().leases().size()) {
      differs = "leases";
    }
    if (!differs.empty()) {
      Fail(absl::StrCat("State Machine Safety: n", n.index + 1,
                        "'s keyspace differs from the committed one at the end: ", differs));
      return;
    }
  }
  for (std::string& f : history_.Check(reference_)) Fail(std::move(f));
  std::vector<std::string> gave_up;
  for (std::string& f : history_.CheckPerKey(kLinearizabilityBudget, &gave_up)) {
    Fail(std::move(f));
  }
  for (const std::string& g : gave_up) Trace(absl::StrCat("per-key search gave up: ", g));
}

double Sim::Measure(const Expectation& e) {
  std::vector<bool> in(scenario_.cluster, e.nodes.empty());
  for (const NodeRef& ref : e.nodes) {
    for (int i : Resolve(ref)) in[i] = true;
  }
  double total = 0;
  switch (e.metric) {
    case Metric::kCommits:
    case Metric::kLeaderCommits:
      for (const CommitEvent& c : commit_events_) {
        if (c.at >= e.from && c.at < e.to && in[c.node] &&
            (e.metric == Metric::kCommits || c.leader)) {
          total += static_cast<double>(c.count);
        }
      }
      break;
    case Metric::kLeaderMs:
      for (const LeaderInterval& l : leader_intervals_) {
        if (!in[l.node]) continue;
        const Nanos lo = std::max(l.from, e.from);
        const Nanos hi = std::min(l.to, e.to);
        if (hi > lo) total += static_cast<double>((hi - lo).count()) / 1e6;
      }
      break;
    case Metric::kElections:
      for (const auto& [at, node] : elections_) {
        if (at >= e.from && at < e.to && in[node]) total += 1;
      }
      break;
    case Metric::kAcked:
    case Metric::kPuts:
      for (const Request& r : history_.requests()) {
        const bool counted = e.metric == Metric::kAcked
                                 ? r.write()
                                 : r.op == KvOp::kPut || r.op == KvOp::kCas;
        if (counted && r.outcome == Outcome::kOk && r.end >= e.from && r.end < e.to) total += 1;
      }
      break;
    case Metric::kFailed:
      for (const Request& r : history_.requests()) {
        if (r.start >= e.from && r.start < e.to && r.outcome != Outcome::kOk) {
          total += 1;
        }
      }
      break;
    case Metric::kReads:
      for (const Request& r : history_.requests()) {
        if (r.read() && r.outcome == Outcome::kOk && r.end >= e.from && r.end < e.to) {
          total += 1;
        }
      }
      break;
    case Metric::kSnapshots:
    case Metric::kCrashes:
      for (const auto& [at, node] : e.metric == Metric::kSnapshots ? snapshots_ : crashes_) {
        if (at >= e.from && at < e.to && in[node]) total += 1;
      }
      break;
  }
  return total;
}

void Sim::CheckExpectations() {
  for (const Expectation& e : scenario_.expectations) {
    const double v = Measure(e);
    bool ok = false;
    switch (e.op) {
      case Compare::kEq: ok = v == e.value; break;
      case Compare::kNe: ok = v != e.value; break;
      case Compare::kLt: ok = v < e.value; break;
      case Compare::kLe: ok = v <= e.value; break;
      case Compare::kGt: ok = v > e.value; break;
      case Compare::kGe: ok = v >= e.value; break;
    }
    if (!ok) {
      Fail(absl::StrCat("Expectation at line ", e.line, " failed: '", e.text, "' measured ",
                        v));
    }
  }
}

// ---- the run --------------------------------------------------------------------

RunResult Sim::Run() {
  // SQLite's PRNG (WAL salts) is process-wide: seed it from the run's seed.
  storage::SimDisk::SeedSqlite(options_.seed);
  for (int i = 0; i < scenario_.cluster; ++i) StartNode(i);
  for (const Step& step : scenario_.steps) {
    Schedule(step.at, [this, &step] { ApplyStep(step); });
  }
  for (int c = 0; c < scenario_.workload.clients; ++c) {
    ScheduleClient(c, Nanos(rng_.Range(0, scenario_.workload.think.count())));
  }
  for (int w = 0; w < scenario_.workload.watchers; ++w) {
    Schedule(Nanos(rng_.Range(0, ElectionTimeout().count())), [this, w] { ConnectWatcher(w); });
  }
  for (int r = 0; r < scenario_.workload.registrars; ++r) {
    registrars_[r].target = static_cast<int>(rng_.Uniform(scenario_.cluster));
    Schedule(Nanos(rng_.Range(0, ElectionTimeout().count() * 2)), [this, r] { StartRegistration(r); });
  }
  Nanos progress_at{0};
  const Nanos progress_every = std::max<Nanos>(scenario_.run_for / 50, Millis(1));
  // A safety violation ends the run at once: what follows would only bury it.
  auto failed = [this] { return !failures_.empty() || !checker_.violations().empty(); };
  while (now_ < scenario_.run_for && !failed()) {
    RunUntil(std::min(scenario_.run_for, now_ + progress_every), failed);
    if (options_.progress && now_ >= progress_at) {
      std::fprintf(stderr, "\r  %s  sim %6.1fs / %.1fs  events %" PRIu64 "  failures %zu   ",
                   scenario_.name.c_str(), now_.count() / 1e9, scenario_.run_for.count() / 1e9,
                   events_, failures_.size());
      progress_at = now_ + progress_every;
    }
  }
  if (options_.progress) std::fprintf(stderr, "\n");
  if (!failed()) RunRecoveryAndDrain();
  for (const std::string& v : checker_.violations()) Fail(v);
  if (failures_.empty() && Converged()) CheckEndState();
  for (SimNode& n : nodes_) {
    if (n.up && n.role == Role::kLeader) leader_intervals_.push_back({n.index, n.leader_since, now_});
  }
  if (failures_.empty()) {
    for (const KvReference::Revocation& r : reference_.revocations()) {
      lease_checker_.OnRevoked(r.lease, r.at, r.expired);
    }
    lease_checker_.SetClocks(drift_max_seen_, skew_forward_total_);
    for (std::string& f : lease_checker_.Check(now_, LeadershipHistory())) Fail(std::move(f));
    for (std::string& f : watch_checker_.Check(reference_)) Fail(std::move(f));
  }
  CheckExpectations();
  return Result();
}

void Sim::RunRecoveryAndDrain() {
  const Nanos et = ElectionTimeout();

  // Phase 2: recovery. Every fault heals; a leader must follow, and requests succeed.
  recovery_at_ = now_;
  Trace("recovery: healing every fault");
  HealAll();
  churn_until_ = now_;
  net_ = scenario_.network;  // latency back to the scenario's, and no loss or duplicates
  net_.loss = 0;
  net_.duplicate = 0;
  for (auto& row : link_latency_) std::fill(row.begin(), row.end(), std::pair<Nanos, Nanos>{});
  crash_in_sync_probability_ = 0;
  crash_in_vote_sync_probability_ = 0;
  fsync_spike_probability_ = 0;
  for (SimNode& n : nodes_) {
    n.paused_until = std::min(n.paused_until, now_);
    n.disk->Heal();
    n.crash_in_install = n.crash_next_sync = false;
  }
  for (int i = 0; i < scenario_.cluster; ++i) {
    if (!nodes_[i].up) StartNode(i);
  }
  const Nanos leader_by = now_ + et * kRecoveryElectionTimeouts;
  RunUntil(leader_by);
  CheckRecoveryLeader();
  // Disks have room again; the operator disarms the alarms, and only then are writes
  // expected to succeed.
  if (operator_running_ &&
      !RunUntil(now_ + et * kRecoveryElectionTimeouts, [this] { return !AlarmsActive(); })) {
    Fail(absl::StrCat("Liveness: a NOSPACE alarm was still active ", kRecoveryElectionTimeouts,
                      " election timeouts after every disk had room again"));
  }
  progress_from_ = now_;
  progress_to_ = now_ + et * kRecoveryElectionTimeouts;
  const LogIndex committed_before = checker_.max_committed();
  RunUntil(progress_to_);
  const bool committed_more = checker_.max_committed() > committed_before;

  // Phase 3: drain. No new requests; everything resolves and every node converges.
  clients_active_ = false;
  const Nanos drain_by = now_ + scenario_.workload.timeout + et * kRecoveryElectionTimeouts;
  if (!RunUntil(drain_by, [this] { return Converged(); })) {
    Fail(absl::StrCat("Liveness: the cluster did not converge by ", FormatTime(drain_by),
                      " after faults healed"));
  }
  bool writes_issued = false;
  for (const Request& r : history_.requests()) {
    writes_issued |= r.write() && r.start >= progress_from_;
  }
  // Progress: writes succeed, or at least commit. Under an offered load above what the
  // flow-control settings can replicate, every client may time out while the cluster
  // commits steadily; that is overload, not a liveness failure.
  if (writes_issued && progress_writes_ok_ == 0 && !committed_more) {
    Fail(absl::StrCat("Liveness: nothing committed in the ", kRecoveryElectionTimeouts,
                      " election timeouts after a leader was due (from ",
                      FormatTime(progress_from_), ")"));
  }
}

RunResult Sim::Result() const {
  RunResult result;
  result.ok = failures_.empty();
  result.trace_hash = hash_.value();
  result.failures = failures_;
  result.simulated_seconds = static_cast<double>(now_.count()) / 1e9;
  result.events = events_;
  size_t writes_ok = 0, writes = 0, reads_ok = 0, reads = 0;
  for (const Request& r : history_.requests()) {
    if (!r.write() && !r.read()) continue;
    (r.write() ? writes : reads)++;
    if (r.outcome == Outcome::kOk) (r.write() ? writes_ok : reads_ok)++;
  }
  result.writes_ok = writes_ok;
  result.summary = absl::StrFormat(
      "seed=0x%x nodes=%d sim=%.1fs events=%d msgs=%d/%d writes=%d/%d reads=%d/%d "
      "leases=%d/%d elections=%d commit=%d hash=0x%016x %s",
      options_.seed, scenario_.cluster, result.simulated_seconds, events_, messages_delivered_,
      messages_delivered_ + messages_dropped_, writes_ok, writes, reads_ok, reads,
      lease_checker_.expired(), lease_checker_.leases(),
      elections_.size(), checker_.max_committed().value, result.trace_hash,
      result.ok ? "OK" : "FAIL");
  return result;
}

}  // namespace

RunResult RunScenario(const Scenario& scenario, const RunOptions& options) {
  Sim sim(scenario, options);
  return sim.Run();
}

}  // namespace keel::sim
