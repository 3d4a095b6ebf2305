#pragma once
// Scenario: one fault story for the simulator, parsed from a small line language
// (scenarios/*.scenario, documented in scenarios/README.md). The same structure is
// produced by the swarm generator for `keel-sim --seed N`, so a random run and a
// hand-written story go through one code path.
//
// Scenario files are untrusted input: every malformed line is an error naming the
// file's line, and nothing is half-parsed.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/types.h"

namespace keel::sim {

inline constexpr int kClusterSizeMax = 7;

// A node named in a step or an expectation: `n3`, `leader` (the current leader when
// the step runs), `follower` (a live non-leader chosen by the seed), `all`, or a label
// bound earlier by `as NAME`.
struct NodeRef {
  enum class Kind { kId, kLeader, kFollower, kAll, kLabel };
  Kind kind = Kind::kId;
  NodeId id;          // kId
  std::string label;  // kLabel
  bool operator==(const NodeRef&) const = default;
};
using NodeSet = std::vector<NodeRef>;

enum class StepKind {
  kPartition,  // partition {n1,n2} {n3,n4,n5}: links between groups cut both ways
  kIsolate,    // isolate A: every link of A cut both ways
  kCut,        // cut A B (both ways) | cut A -> B (one way)
  kRestore,    // restore A B | restore A -> B
  kHeal,       // heal: every link restored
  kCrash,      // crash A: power loss; volatile state and unsynced writes lost
  kKill,       // kill A: the process is killed; what it wrote, synced or not, survives
               // in the page cache (until a power loss)
  kRestart,    // restart A (A may be `all`: every crashed node)
  kPause,      // pause A 800ms: a GC pause, nothing processed, timers fire late
  kSkew,       // skew A +300ms: A's clock jumps forward
  kDrift,      // drift A 0.05: A's clock runs 5% fast (negative: slow), > -0.5 and < 0.5
  kLoss,       // loss 0.2: each message dropped with this probability
  kDuplicate,  // duplicate 0.05
  kLatency,    // latency 1ms..20ms (every link without its own setting) |
               // latency A B 5ms..50ms (one link, both ways) | latency A -> B ...
  kSwizzle,    // swizzle 100ms: isolate about half the nodes one by one, then restore
               // them one by one in another order, `duration` apart
  kFlap,       // flap A B 200ms 5s: toggle the link every `duration` for `duration2`
  kTransfer,   // transfer A: the leader hands leadership to A
  kChurn,      // churn 5s: for `duration`, each new leader is, with probability 1/2,
               // isolated or crashed within a few message latencies of its election
               // and back a little later (a leader-assassination nemesis)
  kFailWrite,  // fail-write A: A's next disk write fails with EIO; A stops (fail-stop)
               // and its supervisor restarts it a little later
  kFailSync,   // fail-sync A: the same for A's next fsync
  kFillDisk,   // fill-disk A: A's disk fills up (a little room is left); A raises the
               // NOSPACE alarm and the cluster refuses writes, serving reads
  kFreeDisk,   // free-disk A|all: room again; the operator disarms the alarm
  kCrashLoop,  // crash-loop A 300ms 50: crash A (resolved anew each time: `leader`
               // strikes whoever leads) every `duration`, `count` times; each time it
               // restarts before the next strike
  kCrashInInstall,  // crash-in-install A: A loses power in the middle of the fsync of the
                    // next snapshot it installs from the leader
};

struct Step {
  Nanos at{0};
  StepKind kind = StepKind::kHeal;
  int line = 0;                  // in the scenario file; 0 when generated
  std::vector<NodeSet> groups;   // kPartition
  NodeRef a;                     // the node of single-node steps; first end of a link
  NodeRef b;                     // the other end of a link
  bool one_way = false;          // kCut/kRestore with "->"
  Nanos duration{0};             // kPause length, kSwizzle and kFlap interval
  Nanos duration2{0};            // kFlap total length; kLatency max (duration = min)
                                 // kLatency names a link in a and b, or none
  Nanos offset{0};               // kSkew (>= 0: a monotonic clock never goes back)
  double value = 0;              // kLoss, kDuplicate (in [0, 1)), kDrift
  int count = 0;                 // kCrashLoop
  std::string label;             // "as NAME": binds the node this step resolved to
};

enum class Metric {
  kCommits,        // entries newly committed on the nodes within the window (sum)
  kLeaderCommits,  // ... counting only advances made while the node was leader
  kLeaderMs,       // milliseconds any of the nodes spent as leader within the window
  kElections,      // times any of the nodes became leader within the window
  kAcked,          // client writes acknowledged within the window (names no nodes)
  kPuts,           // ... of them, writes that need space (puts, compare-and-swaps): what
                   // the NOSPACE alarm refuses; deletes still pass, as in etcd
  kFailed,         // client requests started within the window that did not succeed
                   // (names no nodes)
  kReads,          // client reads answered OK within the window (names no nodes)
  kSnapshots,      // snapshots from the leader that the nodes began to install
  kCrashes,        // times the nodes crashed or stopped (fail-stop)
};
enum class Compare { kEq, kNe, kLt, kLe, kGt, kGe };

// expect <metric> [nodes] <from>..<to> <op> <number>
struct Expectation {
  Metric metric = Metric::kCommits;
  NodeSet nodes;  // empty: every node
  Nanos from{0};
  Nanos to{0};
  Compare op = Compare::kEq;
  double value = 0;
  int line = 0;
  std::string text;  // the source line, for messages
};

struct NetworkSettings {
  Nanos latency_min = Millis(1);
  Nanos latency_max = Millis(5);
  double loss = 0;
  double duplicate = 0;
};

struct DiskSettings {
  Nanos fsync_min = std::chrono::microseconds(200);
  Nanos fsync_max = Millis(2);
  double fsync_spike_probability = 0.001;  // per fsync: it takes 10..100x fsync_max
                                           // (`disk spikes=P`), as a real disk now and then
  double crash_in_sync_probability = 0;  // per fsync: power loss before it completes
                                         // (`disk crash_in_sync=P`)
  double crash_in_vote_sync_probability = 0;  // the same, for fsyncs of a new term or vote
  bool torn_writes = true;  // a crash may tear the last write not yet durable (`torn=on`)
};

struct WorkloadSettings {
  int clients = 3;                      // 0..64
  Nanos think = Millis(20);             // pause between a client's requests
  Nanos timeout = Millis(3000);         // a client gives up on a request after this
  double read_fraction = 0.1;           // share of requests that are linearizable reads
  // Registrars (`registrars=N`): each grants a lease, puts a key on it and keeps it
  // alive every TTL/3 at the leader; at each keepalive it abandons its lease (stops
  // renewing, registers anew later) with `abandon=P`.
  int registrars = 0;
  double abandon_probability = 0.05;
  // Watchers (`watchers=N`): each watches the workload's keys through a stream to one
  // member, now and then asks for progress, is sometimes a slow client (refuses a
  // response), and disconnects and resumes from the revision after the last it saw.
  int watchers = 0;
  // etcd's periodic auto-compaction on every member, keeping this much history (0: off;
  // the swarm draws it: compaction runs under watchers and readers).
  Nanos auto_compaction_retention{0};
};

struct Scenario {
  std::string name;
  int cluster = 3;                      // 1..kClusterSizeMax
  std::optional<uint64_t> seed;         // `seed N`; the command line overrides it
  Nanos tick_interval = Millis(100);    // `timing tick=100ms election=10`
  int election_ticks = 10;
  bool pre_vote = true;                 // Raft options; the swarm varies them
  bool check_quorum = true;
  size_t message_bytes_max = 4096;      // small, so flow control happens in every run
  size_t inflight_messages_max = 64;
  uint64_t snapshot_entries = 1000;     // applied entries between snapshots (etcd:
                                        // --snapshot-count); the log keeps 1/5 after one
  NetworkSettings network;              // `network latency=1ms..5ms loss=0 duplicate=0`
  DiskSettings disk;                    // `disk fsync=200us..2ms spikes=0.001
                                        //  crash_in_sync=0 torn=on`
  WorkloadSettings workload;            // `workload clients=3 think=20ms timeout=3s reads=0.1`
  Nanos run_for{0};                     // `run 30s`, required
  std::vector<Step> steps;              // ordered by `at`, stable for equal times
  std::vector<Expectation> expectations;
};

// Parses a scenario file. `name` is used in error messages ("name:LINE: ...").
absl::StatusOr<Scenario> ParseScenario(std::string_view text, std::string_view name);

// Durations: an integer or decimal followed by us, ms, s or m ("1.5s", "800ms").
absl::StatusOr<Nanos> ParseDuration(std::string_view text);

}  // namespace keel::sim
