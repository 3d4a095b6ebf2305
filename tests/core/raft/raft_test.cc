// Tests for the Raft state machine (core/raft/raft.h), driven through a small in-memory
// network: N Raft instances, a message queue (FIFO unless a test asks for reordering),
// "storage" that persists each Ready before its messages_after_persist go out, and the
// ability to drop messages between chosen pairs of nodes. After every call into a node
// the harness runs its CheckInvariants() and checks Election Safety, State Machine
// Safety and read-index linearizability. Every test is deterministic (fixed seeds, no
// clocks). Persistence is synchronous, so a crash between sending and fsync is not
// modelled here; targeted tests check which Ready list a message is in instead.

#include "core/raft/raft.h"
#include "tests/core/raft/raft_test_util.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace keel::raft {
namespace {

NodeId N(uint64_t id) { return NodeId(id); }


RecoveredState Recovered(uint64_t term, std::vector<Entry> entries, uint64_t commit = 0) {
  RecoveredState r;
  r.hard_state = HardState{.term = Term(term), .vote = kNoNode, .commit = LogIndex(commit)};
  r.entries = std::move(entries);
  return r;
}

// The terms of every entry a node's log holds, FirstIndex() through LastIndex().
std::vector<uint64_t> LogTerms(const Raft& r) {
  std::vector<uint64_t> out;
  for (LogIndex i = r.log().FirstIndex(); i <= r.log().LastIndex(); ++i) {
    const std::optional<Term> t = r.log().TermAt(i);
    out.push_back(t.has_value() ? t->value : UINT64_MAX);
  }
  return out;
}

std::string Describe(const Message& m) {
  return absl::StrCat(std::string(MessageTypeName(m.type)), " ", m.from.value, "->", m.to.value,
                      " term=", m.term.value, " index=", m.index.value,
                      " log_term=", m.log_term.value, " entries=", m.entries.size(),
                      " commit=", m.commit.value, m.reject ? " REJECT" : "");
}

// The harness's state machine is the list of applied data; a snapshot carries it whole.
std::string EncodeState(const std::vector<std::string>& applied_data) {
  return absl::StrJoin(applied_data, ",");
}
std::vector<std::string> DecodeState(const std::string& data) {
  if (data.empty()) return {};
  return absl::StrSplit(data, ',');
}

Config MakeConfig(uint64_t id, size_t node_count) {
  Config c;
  c.id = N(id);
  for (uint64_t k = 1; k <= node_count; ++k) c.voters.push_back(N(k));
  return c;
}

// ---------------------------------------------------------------------------------------
// The harness

struct NetworkOptions {
  size_t node_count = 3;
  uint64_t seed = 1;
  std::function<void(Config&)> configure = {};        // applied to every node's Config
  std::map<uint64_t, RecoveredState> recovered = {};  // per node; absent: a brand-new node
};

class Network {
 public:
  struct Node {
    Config config;
    std::unique_ptr<Rng> rng;
    std::unique_ptr<Raft> raft;
    // Storage: what the node made durable, as a restart would find it.
    RecoveredState storage;
    // The state machine: what the node applied.
    LogIndex applied;
    std::vector<std::string> applied_data;  // data of applied non-empty entries, in order
    std::vector<Snapshot> installed_snapshots;
    std::vector<ReadState> read_states;
    std::vector<LogIndex> commit_history;  // every distinct committed index, in order
  };

  explicit Network(NetworkOptions options)
      : options_(std::move(options)), fault_rng_(options_.seed ^ 0xFA017) {
    for (uint64_t id = 1; id <= options_.node_count; ++id) {
      Node& n = nodes_[id];
      n.config = MakeConfig(id, options_.node_count);
      if (options_.configure) options_.configure(n.config);
      n.rng = std::make_unique<Rng>(options_.seed * 1000 + id);
      auto it = options_.recovered.find(id);
      if (it != options_.recovered.end()) n.storage = it->second;
      Start(id);
    }
  }

  Raft& raft(uint64_t id) { return *nodes_.at(id).raft; }
  Node& node(uint64_t id) { return nodes_.at(id); }

  // ---- faults
  void Cut(uint64_t a, uint64_t b) {
    cut_.insert({a, b});
    cut_.insert({b, a});
  }
  void CutOneWay(uint64_t from, uint64_t to) { cut_.insert({from, to}); }
  void Isolate(uint64_t id) {
    for (const auto& [other, n] : nodes_) {
      if (other != id) Cut(id, other);
    }
  }
  void Heal() {
    cut_.clear();
    drop_if = nullptr;
  }
  // Drops every message for which it returns true (in addition to cut links).
  std::function<bool(const Message&)> drop_if;
  // Message faults, each drawn from a seeded Rng: loss; delivery of a random queued
  // message instead of the oldest; delivery twice.
  double loss_probability = 0;
  double reorder_probability = 0;
  double duplicate_probability = 0;

  // ---- driving
  // Processes Readys and delivers messages until nothing is left to do.
  void Stabilize() {
    for (int round = 0; round < 100000; ++round) {
      bool busy = false;
      for (auto& [id, n] : nodes_) {
        while (n.raft->HasReady()) {
          HandleReady(id);
          busy = true;
        }
      }
      if (queue_.empty() && !busy) return;
      while (!queue_.empty()) {
        size_t k = 0;
        if (queue_.size() > 1 && Chance(reorder_probability)) {
          k = fault_rng_.Uniform(queue_.size());
        }
        Message m = std::move(queue_[k]);
        queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(k));
        if (Chance(duplicate_probability)) queue_.push_back(m);
        Deliver(std::move(m));
      }
    }
    ADD_FAILURE() << "the network did not go quiet";
  }

  void Tick(uint64_t id, int ticks = 1) {
    for (int k = 0; k < ticks; ++k) {
      raft(id).Tick();
      AfterEvent(id);
      Stabilize();
    }
  }

  // Every node ticks once per round; the network settles after each round.
  void TickAll(int rounds) {
    for (int k = 0; k < rounds; ++k) {
      for (auto& [id, n] : nodes_) {
        n.raft->Tick();
        AfterEvent(id);
      }
      Stabilize();
    }
  }

  // Ticks every node until some node is leader; returns it (0 if none after the limit).
  uint64_t TickUntilLeader(int rounds_max = 200) {
    for (int k = 0; k < rounds_max; ++k) {
      if (uint64_t l = Leader(); l != 0) return l;
      TickAll(1);
    }
    return Leader();
  }

  // ReadIndex on `id`, remembering the highest index committed anywhere right now: a
  // linearizable read must not be served from a point before it.
  absl::Status ReadIndex(uint64_t id, const std::string& context) {
    LogIndex committed;
    for (const auto& [other, n] : nodes_) {
      committed = std::max(committed, n.raft->log().committed());
    }
    read_index_min_[context] = committed;
    return raft(id).ReadIndex(context);
  }

  // Crashes `id` (losing everything not persisted) and starts it from its storage.
  void Restart(uint64_t id) { Start(id); }

  // The host of `id` snapshots its state machine at its applied index and compacts the
  // log (in Raft and in storage) through it.
  void TakeSnapshot(uint64_t id) {
    Node& n = nodes_.at(id);
    if (n.applied < n.raft->log().FirstIndex()) return;  // nothing new to compact
    n.raft->CreateSnapshot(n.applied, EncodeState(n.applied_data));
    n.raft->Compact(n.applied);
    n.storage.snapshot = n.raft->log().snapshot();
    std::erase_if(n.storage.entries, [&](const Entry& e) { return e.index <= n.applied; });
    AfterEvent(id);
  }

  // ---- observing
  // The leader with the highest term, or 0.
  uint64_t Leader() const {
    uint64_t best = 0;
    Term best_term;
    for (const auto& [id, n] : nodes_) {
      if (n.raft->role() == Role::kLeader && (best == 0 || n.raft->term() > best_term)) {
        best = id;
        best_term = n.raft->term();
      }
    }
    return best;
  }
  size_t LeaderCount() const {
    size_t count = 0;
    for (const auto& [id, n] : nodes_) count += n.raft->role() == Role::kLeader ? 1 : 0;
    return count;
  }
  // Every message delivered (not dropped), in delivery order.
  const std::vector<Message>& delivered() const { return delivered_; }
  size_t dropped_count() const { return dropped_count_; }
  size_t CountIf(const std::function<bool(const Message&)>& pred) const {
    size_t count = 0;
    for (const Message& m : delivered_) count += pred(m) ? 1 : 0;
    return count;
  }
  size_t Count(MessageType type, uint64_t from, uint64_t to, bool reject) const {
    return CountIf([&](const Message& m) {
      return m.type == type && m.from == N(from) && m.to == N(to) && m.reject == reject;
    });
  }

 private:
  void Start(uint64_t id) {
    Node& n = nodes_.at(id);
    n.raft = std::make_unique<Raft>(n.config, n.storage, n.rng.get(), Logger{});
    n.applied = n.storage.snapshot ? n.storage.snapshot->index : LogIndex(0);
    n.applied_data =
        n.storage.snapshot ? DecodeState(n.storage.snapshot->data) : std::vector<std::string>{};
    n.commit_history = {n.raft->log().committed()};
    AfterEvent(id);
  }

  void HandleReady(uint64_t id) {
    Node& n = nodes_.at(id);
    Ready rd = n.raft->GetReady();
    // 1. Install the snapshot.
    if (rd.snapshot) {
      n.storage.snapshot = rd.snapshot;
      n.storage.entries.clear();
      n.installed_snapshots.push_back(*rd.snapshot);
      n.applied = rd.snapshot->index;
      n.applied_data = DecodeState(rd.snapshot->data);
    }
    // 2. Persist entries (the first may overwrite a suffix) and the hard state.
    if (!rd.entries.empty()) {
      const LogIndex first = rd.entries.front().index;
      while (!n.storage.entries.empty() && n.storage.entries.back().index >= first) {
        n.storage.entries.pop_back();
      }
      if (!n.storage.entries.empty()) {
        EXPECT_EQ(n.storage.entries.back().index + 1, first) << "node " << id;
      }
      for (const Entry& e : rd.entries) n.storage.entries.push_back(e);
    }
    if (rd.hard_state) n.storage.hard_state = *rd.hard_state;
    // `messages` may go out before persisting; messages_after_persist only after.
    for (Message& m : rd.messages) queue_.push_back(std::move(m));
    for (Message& m : rd.messages_after_persist) queue_.push_back(std::move(m));
    // 3. Apply, in order, each entry exactly once.
    for (const Entry& e : rd.committed_entries) {
      EXPECT_EQ(e.index, n.applied + 1) << "node " << id << " applied out of order";
      n.applied = e.index;
      if (!e.data.empty()) n.applied_data.push_back(e.data);
      // Raft §5.4.3 (State Machine Safety): no two nodes apply different entries at
      // the same index.
      auto [first, inserted] = applied_at_.emplace(e.index.value, e);
      EXPECT_TRUE(first->second == e)
          << "node " << id << " applied (" << e.index << ", term " << e.term
          << ") but another node applied term " << first->second.term << " there";
    }
    for (ReadState& r : rd.read_states) {
      // Thesis §6.4: the read index covers everything committed before the request.
      auto it = read_index_min_.find(r.context);
      if (it != read_index_min_.end()) {
        EXPECT_GE(r.index, it->second) << "node " << id << " read " << r.context;
      }
      n.read_states.push_back(std::move(r));
    }
    n.raft->Advance(rd);
    AfterEvent(id);
  }

  bool Chance(double probability) { return probability > 0 && fault_rng_.Chance(probability); }

  void Deliver(Message m) {
    const uint64_t from = m.from.value;
    const uint64_t to = m.to.value;
    const bool lost = Chance(loss_probability);
    if (lost || cut_.contains({from, to}) || (drop_if && drop_if(m))) {
      ++dropped_count_;
      return;
    }
    delivered_.push_back(m);
    const std::string what = Describe(m);
    const absl::Status st = raft(to).Step(std::move(m));
    EXPECT_TRUE(st.ok()) << what << ": " << st;
    AfterEvent(to);
  }

  // Checks run after every call into a node: its own invariants, and Raft's Election
  // Safety (§5.2: at most one leader per term) across the whole run.
  void AfterEvent(uint64_t id) {
    Node& n = nodes_.at(id);
    n.raft->CheckInvariants();
    if (n.raft->role() == Role::kLeader) {
      auto [it, inserted] = leader_of_term_.emplace(n.raft->term().value, id);
      EXPECT_EQ(it->second, id) << "two leaders in term " << n.raft->term();
    }
    if (n.commit_history.empty() || n.commit_history.back() != n.raft->log().committed()) {
      n.commit_history.push_back(n.raft->log().committed());
    }
  }

  NetworkOptions options_;
  std::map<uint64_t, Node> nodes_;
  std::deque<Message> queue_;
  Rng fault_rng_;
  std::map<std::string, LogIndex> read_index_min_;  // context -> lower bound
  std::set<std::pair<uint64_t, uint64_t>> cut_;     // (from, to) links that drop everything
  std::vector<Message> delivered_;
  size_t dropped_count_ = 0;
  std::map<uint64_t, uint64_t> leader_of_term_;
  std::map<uint64_t, Entry> applied_at_;  // the first entry any node applied at an index
};

// A network whose node 1 is leader (elected by Campaign(), no ticks) and caught up.
Network ElectedNetwork(NetworkOptions options = {}) {
  Network net(std::move(options));
  net.raft(1).Campaign();
  net.Stabilize();
  return net;
}

// For tests that drive one node by hand: takes its Ready, "persists" it and advances.
Ready Drain(Raft& r) {
  Ready rd = r.GetReady();
  r.Advance(rd);
  return rd;
}

std::vector<Message> AllMessages(const Ready& rd) {
  std::vector<Message> out = rd.messages;
  out.insert(out.end(), rd.messages_after_persist.begin(), rd.messages_after_persist.end());
  return out;
}

std::optional<Message> FindMessage(const std::vector<Message>& ms, MessageType type) {
  for (const Message& m : ms) {
    if (m.type == type) return m;
  }
  return std::nullopt;
}

Message Heartbeat(uint64_t from, uint64_t to, uint64_t term, uint64_t commit = 0) {
  Message m = Msg(MessageType::kHeartbeat, from, to, term);
  m.commit = LogIndex(commit);
  return m;
}

// Node 1, leader at `term`, sends node 2 the snapshot (10, term 2) holding "s".
Message SnapshotToTwo(uint64_t term) {
  Message m = Msg(MessageType::kSnapshot, 1, 2, term);
  m.snapshot = Snapshot{.index = LogIndex(10), .term = Term(2), .data = "s"};
  return m;
}

Message VoteRequest(uint64_t from, uint64_t to, uint64_t term, uint64_t last_index,
                    uint64_t last_term, MessageType type = MessageType::kVote) {
  Message m = Msg(type, from, to, term);
  m.index = LogIndex(last_index);
  m.log_term = Term(last_term);
  return m;
}

// ---------------------------------------------------------------------------------------
// Elections

// Raft §5.2: a single node is a quorum of itself.
TEST(RaftElection, SingleNodeElectsItselfAndCommitsAProposal) {
  Network net({.node_count = 1});
  ASSERT_EQ(net.TickUntilLeader(/*rounds_max=*/2 * 10 + 1), 1u);
  EXPECT_EQ(net.raft(1).term(), Term(1));
  EXPECT_EQ(net.raft(1).leader(), N(1));

  ASSERT_TRUE(net.raft(1).Propose({"hello"}).ok());
  net.Stabilize();
  EXPECT_EQ(net.node(1).applied_data, (std::vector<std::string>{"hello"}));
  EXPECT_EQ(net.raft(1).log().committed(), net.raft(1).log().LastIndex());
}

// Raft §5.2: election timeouts are randomized so that one candidate usually wins.
TEST(RaftElection, ThreeNodesElectExactlyOneLeaderAfterTicks) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    Network net({.node_count = 3, .seed = seed});
    const uint64_t leader = net.TickUntilLeader();
    ASSERT_NE(leader, 0u);
    EXPECT_EQ(net.LeaderCount(), 1u);
    for (uint64_t id = 1; id <= 3; ++id) {
      EXPECT_EQ(net.raft(id).leader(), N(leader)) << "node " << id;
      EXPECT_EQ(net.raft(id).term(), net.raft(leader).term()) << "node " << id;
    }
  }
}

TEST(RaftElection, ALeaderThatHearsFromAQuorumKeepsItsTerm) {
  Network net = ElectedNetwork();
  const Term term = net.raft(1).term();
  net.TickAll(100);
  EXPECT_EQ(net.Leader(), 1u);
  EXPECT_EQ(net.raft(1).term(), term);
  EXPECT_EQ(net.raft(2).term(), term);
  EXPECT_EQ(net.raft(3).term(), term);
}

TEST(RaftElection, FiveNodesElectALeaderDespiteOneNodeBeingDown) {
  Network net({.node_count = 5, .seed = 7});
  net.Isolate(5);
  const uint64_t leader = net.TickUntilLeader();
  ASSERT_NE(leader, 0u);
  EXPECT_NE(leader, 5u);
  EXPECT_EQ(net.LeaderCount(), 1u);
}

// Thesis §9.6: a pre-candidate does not raise its term, so a partitioned node that
// rejoins cannot force the leader to step down.
TEST(RaftPreVote, APartitionedNodeThatRejoinsDoesNotDisruptTheLeader) {
  Network net = ElectedNetwork();
  const Term term = net.raft(1).term();
  net.Isolate(3);
  net.TickAll(100);  // node 3's election timer fires several times
  EXPECT_EQ(net.raft(3).term(), term) << "a failed pre-election must not raise the term";
  EXPECT_NE(net.raft(3).role(), Role::kLeader);

  net.Heal();
  net.TickAll(30);
  EXPECT_EQ(net.Leader(), 1u);
  EXPECT_EQ(net.raft(1).term(), term);
  EXPECT_EQ(net.raft(3).role(), Role::kFollower);
  EXPECT_EQ(net.raft(3).leader(), N(1));
}

// The contrast to the test above: it is PreVote (and CheckQuorum) that keeps the term.
TEST(RaftPreVote, WithoutPreVoteARejoiningNodeForcesANewTerm) {
  Network net = ElectedNetwork({.configure = [](Config& c) {
    c.pre_vote = false;
    c.check_quorum = false;
  }});
  const Term term = net.raft(1).term();
  net.Isolate(3);
  net.TickAll(100);
  EXPECT_GT(net.raft(3).term(), term);
  net.Heal();
  net.TickAll(50);
  EXPECT_GT(net.raft(1).term(), term);
}

TEST(RaftPreVote, APreVoteIsAnsweredWithoutChangingTheVotersTermOrVote) {
  Network net({.node_count = 3});
  Raft& r = net.raft(2);
  ASSERT_TRUE(r.Step(VoteRequest(1, 2, /*term=*/1, 0, 0, MessageType::kPreVote)).ok());
  Ready rd = Drain(r);
  std::optional<Message> resp = FindMessage(AllMessages(rd), MessageType::kPreVoteResponse);
  ASSERT_TRUE(resp.has_value());
  EXPECT_FALSE(resp->reject);
  EXPECT_EQ(r.term(), Term(0));
  EXPECT_EQ(r.vote(), kNoNode);
}

// CheckQuorum: a leader that heard from no quorum for an election timeout steps down.
TEST(RaftCheckQuorum, AnIsolatedLeaderStepsDownWithinTwoElectionTimeouts) {
  Network net = ElectedNetwork();
  const int election_ticks = net.raft(1).config().election_ticks;
  net.Isolate(1);
  net.Tick(1, 2 * election_ticks);
  EXPECT_EQ(net.raft(1).role(), Role::kFollower);
  EXPECT_EQ(net.raft(1).leader(), kNoNode);
}

TEST(RaftCheckQuorum, WithoutCheckQuorumAnIsolatedLeaderStaysLeader) {
  Network net = ElectedNetwork({.configure = [](Config& c) { c.check_quorum = false; }});
  net.Isolate(1);
  net.Tick(1, 100);
  EXPECT_EQ(net.raft(1).role(), Role::kLeader);
}

// Thesis §4.2.3: a follower that heard from its leader within the election timeout
// ignores a vote request, so a disruptive server cannot depose a working leader.
TEST(RaftCheckQuorum, AFollowerWithALiveLeaderIgnoresAVoteRequest) {
  Network net = ElectedNetwork();
  const Term term = net.raft(1).term();
  ASSERT_TRUE(net.raft(2)
                  .Step(VoteRequest(3, 2, term.value + 1, net.raft(3).log().LastIndex().value,
                                    net.raft(3).log().LastTerm().value))
                  .ok());
  EXPECT_EQ(net.raft(2).term(), term);
  EXPECT_EQ(net.raft(2).leader(), N(1));
  EXPECT_NE(net.raft(2).vote(), N(3));
}

// Raft §5.4.1: a voter denies its vote to a candidate whose log is less up-to-date.
TEST(RaftElection, ACandidateWithAStaleLogLosesTheVote) {
  Network net({.node_count = 3,
               .configure = [](Config& c) { c.pre_vote = false; },
               .recovered = {{1, Recovered(1, EntriesWithTerms({1}))},
                             {2, Recovered(1, EntriesWithTerms({1, 1}))},
                             {3, Recovered(1, EntriesWithTerms({1, 1}))}}});
  net.raft(1).Campaign();
  net.Stabilize();
  EXPECT_NE(net.raft(1).role(), Role::kLeader);
  EXPECT_NE(net.raft(2).vote(), N(1));
  EXPECT_NE(net.raft(3).vote(), N(1));
  EXPECT_EQ(net.Count(MessageType::kVoteResponse, 2, 1, /*reject=*/true), 1u);
  EXPECT_EQ(net.Count(MessageType::kVoteResponse, 3, 1, /*reject=*/true), 1u);
}

TEST(RaftElection, APreCandidateWithAStaleLogDoesNotEvenRaiseItsTerm) {
  Network net({.node_count = 3,
               .recovered = {{1, Recovered(1, EntriesWithTerms({1}))},
                             {2, Recovered(1, EntriesWithTerms({1, 1}))},
                             {3, Recovered(1, EntriesWithTerms({1, 1}))}}});
  net.raft(1).Campaign();
  net.Stabilize();
  EXPECT_EQ(net.raft(1).role(), Role::kFollower);
  EXPECT_EQ(net.raft(1).term(), Term(1));
  EXPECT_EQ(net.raft(2).term(), Term(1));
}

TEST(RaftElection, ACandidateWithAnUpToDateLogWins) {
  Network net({.node_count = 3,
               .configure = [](Config& c) { c.pre_vote = false; },
               .recovered = {{1, Recovered(1, EntriesWithTerms({1, 1}))},
                             {2, Recovered(1, EntriesWithTerms({1, 1}))},
                             {3, Recovered(1, EntriesWithTerms({1}))}}});
  net.raft(1).Campaign();
  net.Stabilize();
  EXPECT_EQ(net.raft(1).role(), Role::kLeader);
  EXPECT_EQ(net.raft(1).term(), Term(2));
}

// Raft §5.2: each server votes for at most one candidate in a given term.
TEST(RaftElection, ANodeGrantsOneVotePerTerm) {
  Network net({.node_count = 3});
  Raft& r = net.raft(3);
  ASSERT_TRUE(r.Step(VoteRequest(1, 3, /*term=*/1, 0, 0)).ok());
  Ready first = Drain(r);
  std::optional<Message> resp = FindMessage(AllMessages(first), MessageType::kVoteResponse);
  ASSERT_TRUE(resp.has_value());
  EXPECT_FALSE(resp->reject);
  EXPECT_EQ(resp->to, N(1));
  EXPECT_EQ(r.vote(), N(1));

  ASSERT_TRUE(r.Step(VoteRequest(2, 3, /*term=*/1, 0, 0)).ok());
  resp = FindMessage(AllMessages(Drain(r)), MessageType::kVoteResponse);
  ASSERT_TRUE(resp.has_value());
  EXPECT_TRUE(resp->reject) << "a second candidate in the same term";
  EXPECT_EQ(r.vote(), N(1));

  // A retransmitted request from the candidate we voted for is granted again.
  ASSERT_TRUE(r.Step(VoteRequest(1, 3, /*term=*/1, 0, 0)).ok());
  resp = FindMessage(AllMessages(Drain(r)), MessageType::kVoteResponse);
  ASSERT_TRUE(resp.has_value());
  EXPECT_FALSE(resp->reject);
}

// Raft Figure 2: votedFor is persistent state; a restart must not free the vote.
TEST(RaftElection, AVoteIsPersistedWithItsResponseAndSurvivesARestart) {
  Network net({.node_count = 3});
  Raft& r = net.raft(3);
  ASSERT_TRUE(r.Step(VoteRequest(1, 3, /*term=*/1, 0, 0)).ok());
  Ready rd = Drain(r);
  ASSERT_TRUE(rd.hard_state.has_value()) << "the vote must be persisted before it is sent";
  EXPECT_EQ(rd.hard_state->term, Term(1));
  EXPECT_EQ(rd.hard_state->vote, N(1));

  Rng rng(99);
  RecoveredState recovered;
  recovered.hard_state = *rd.hard_state;
  Raft restarted(MakeConfig(3, 3), recovered, &rng, Logger{});
  EXPECT_EQ(restarted.vote(), N(1));
  ASSERT_TRUE(restarted.Step(VoteRequest(2, 3, /*term=*/1, 0, 0)).ok());
  std::optional<Message> resp =
      FindMessage(AllMessages(Drain(restarted)), MessageType::kVoteResponse);
  ASSERT_TRUE(resp.has_value());
  EXPECT_TRUE(resp->reject);
}

TEST(RaftElection, AVoteRequestFromAnOlderTermIsRejected) {
  Network net({.node_count = 3, .recovered = {{2, Recovered(5, {})}}});
  Raft& r = net.raft(2);
  ASSERT_TRUE(r.Step(VoteRequest(1, 2, /*term=*/3, 0, 0)).ok());
  EXPECT_EQ(r.term(), Term(5));
  EXPECT_EQ(r.vote(), kNoNode);
  for (const Message& m : AllMessages(Drain(r))) {
    if (m.type == MessageType::kVoteResponse) {
      EXPECT_TRUE(m.reject);
      EXPECT_EQ(m.term, Term(5));
    }
  }
}

// "Persist before you speak": the vote response leaves only after the vote is durable.
TEST(RaftElection, TheVoteResponseWaitsForPersistence) {
  Network net({.node_count = 3});
  ASSERT_TRUE(net.raft(2).Step(VoteRequest(1, 2, /*term=*/1, 0, 0)).ok());
  Ready rd = Drain(net.raft(2));
  EXPECT_FALSE(FindMessage(rd.messages, MessageType::kVoteResponse).has_value());
  EXPECT_TRUE(FindMessage(rd.messages_after_persist, MessageType::kVoteResponse).has_value());
}

TEST(RaftElection, ARestartedFollowerKeepsItsLogAndRejoins) {
  Network net = ElectedNetwork();
  ASSERT_TRUE(net.raft(1).Propose({"a", "b"}).ok());
  net.Stabilize();
  const LogIndex last = net.raft(2).log().LastIndex();
  const Term term = net.raft(2).term();
  net.Restart(2);
  EXPECT_EQ(net.raft(2).log().LastIndex(), last);
  EXPECT_EQ(net.raft(2).term(), term);
  EXPECT_EQ(net.raft(2).vote(), N(1));
  ASSERT_TRUE(net.raft(1).Propose({"c"}).ok());
  net.TickAll(3);
  EXPECT_EQ(net.Leader(), 1u);
  EXPECT_EQ(net.node(2).applied_data, (std::vector<std::string>{"a", "b", "c"}));
}

// ---------------------------------------------------------------------------------------
// Proposals and replication

TEST(RaftReplication, ALeaderReplicatesAndEveryNodeAppliesTheSameEntries) {
  Network net = ElectedNetwork();
  ASSERT_TRUE(net.raft(1).Propose({"x"}).ok());
  ASSERT_TRUE(net.raft(1).Propose({"y", "z"}).ok());
  net.Stabilize();
  for (uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(net.node(id).applied_data, (std::vector<std::string>{"x", "y", "z"}))
        << "node " << id;
    EXPECT_EQ(net.raft(id).log().committed(), net.raft(1).log().LastIndex());
  }
}

TEST(RaftReplication, AProposalOnAFollowerIsForwardedAndCommitted) {
  Network net = ElectedNetwork();
  ASSERT_TRUE(net.raft(2).Propose({"from-follower"}).ok());
  net.Stabilize();
  EXPECT_EQ(net.Count(MessageType::kPropose, 2, 1, false), 1u);
  for (uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(net.node(id).applied_data, (std::vector<std::string>{"from-follower"}))
        << "node " << id;
  }
}

TEST(RaftReplication, ProposeWithNoLeaderIsUnavailable) {
  Network net({.node_count = 3});
  const absl::Status st = net.raft(1).Propose({"x"});
  EXPECT_TRUE(absl::IsUnavailable(st)) << st;
  EXPECT_TRUE(absl::IsUnavailable(net.raft(1).ReadIndex("r"))) << "reads too";
}

TEST(RaftReplication, ALeaderRefusesProposalsBeyondItsUncommittedBytes) {
  Network net = ElectedNetwork({.configure = [](Config& c) { c.uncommitted_bytes_max = 10; }});
  net.Isolate(1);  // nothing commits
  EXPECT_TRUE(net.raft(1).Propose({"12345678"}).ok());
  net.Stabilize();
  const absl::Status st = net.raft(1).Propose({"12345678"});
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
}

// Raft §5.4.2 (Figure 8): a leader never commits an entry of an earlier term by counting
// replicas. Node 1 holds (2, term 2) from an old term; it is elected in term 4 and, with one
// entry per append, first gets (2, term 2) onto a majority. That must not commit it; only
// the term-4 no-op does, and with it index 2.
constexpr uint64_t kFigure8Term = 3;
NetworkOptions Figure8Options(bool plant_bug) {
  return {.node_count = 3,
          .configure =
              [plant_bug](Config& c) {
                c.message_bytes_max = 1;  // one entry per append
                c.bugs.commit_previous_term_entries = plant_bug;
              },
          .recovered = {{1, Recovered(kFigure8Term, EntriesWithTerms({1, 2}), 1)},
                        {2, Recovered(kFigure8Term, EntriesWithTerms({1}), 1)},
                        {3, Recovered(kFigure8Term, EntriesWithTerms({1}), 1)}}};
}

TEST(RaftCommit, ALeaderCommitsOnlyEntriesOfItsCurrentTerm) {
  Network net(Figure8Options(/*plant_bug=*/false));
  net.raft(1).Campaign();
  net.Stabilize();
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  ASSERT_EQ(net.raft(1).term(), Term(kFigure8Term + 1));
  EXPECT_EQ(LogTerms(net.raft(2)), (std::vector<uint64_t>{1, 2, kFigure8Term + 1}));
  // The commit index jumped from 1 straight to the no-op at 3, never resting on 2.
  EXPECT_EQ(net.node(1).commit_history, (std::vector<LogIndex>{LogIndex(1), LogIndex(3)}));
  for (uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(net.raft(id).log().committed(), LogIndex(3)) << "node " << id;
  }
}

TEST(RaftPlantedBugs, CommitPreviousTermEntriesCommitsAnOldTermEntryByCounting) {
  Network net(Figure8Options(/*plant_bug=*/true));
  net.raft(1).Campaign();
  net.Stabilize();
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  EXPECT_EQ(net.node(1).commit_history,
            (std::vector<LogIndex>{LogIndex(1), LogIndex(2), LogIndex(3)}));
}

// Raft Figure 2, AppendEntries rule 3: a follower's conflicting uncommitted entries are
// deleted and replaced by the leader's.
TEST(RaftReplication, ConflictingFollowerEntriesAreTruncatedAndReplaced) {
  Network net({.node_count = 3,
               .recovered = {{1, Recovered(3, EntriesWithTerms({1, 1, 3}), 1)},
                             {2, Recovered(3, EntriesWithTerms({1, 1, 3}), 1)},
                             {3, Recovered(3, EntriesWithTerms({1, 2, 2, 2}), 1)}}});
  net.raft(1).Campaign();
  net.Stabilize();
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  const std::vector<uint64_t> want = {1, 1, 3, 4};  // ... and the term-4 no-op
  EXPECT_EQ(LogTerms(net.raft(1)), want);
  EXPECT_EQ(LogTerms(net.raft(3)), want);
  EXPECT_EQ(net.raft(3).log().committed(), LogIndex(4));
  // Storage was told to overwrite, too.
  std::vector<uint64_t> stored;
  for (const Entry& e : net.node(3).storage.entries) stored.push_back(e.term.value);
  EXPECT_EQ(stored, want);
}

// An append from before the follower's commit point is old news: the follower answers
// with its commit index (everything up to it matches the leader by Log Matching).
TEST(RaftReplication, AnAppendBelowTheFollowersCommitIsAnsweredWithItsCommitIndex) {
  Network net({.node_count = 3, .recovered = {{2, Recovered(1, EntriesWithTerms({1, 1, 1}), 3)}}});
  Raft& r = net.raft(2);
  Message m = Msg(MessageType::kAppend, 1, 2, 1);
  m.index = LogIndex(1);
  m.log_term = Term(1);
  m.entries = {E(2, 1)};
  m.commit = LogIndex(1);
  ASSERT_TRUE(r.Step(m).ok());
  std::optional<Message> resp = FindMessage(AllMessages(Drain(r)), MessageType::kAppendResponse);
  ASSERT_TRUE(resp.has_value());
  EXPECT_FALSE(resp->reject);
  EXPECT_EQ(resp->index, LogIndex(3));
  EXPECT_EQ(LogTerms(r), (std::vector<uint64_t>{1, 1, 1}));
}

// Fast backtracking (etcd-raft): a rejection carries a hint by term, so a follower with a
// long divergent suffix is repaired in a couple of round trips, not one per entry.
TEST(RaftReplication, FastBacktrackingSkipsALongDivergentSuffixInFewRoundTrips) {
  std::vector<uint64_t> leader_terms = {1};
  leader_terms.insert(leader_terms.end(), 50, 3);
  std::vector<uint64_t> stale_terms = {1};
  stale_terms.insert(stale_terms.end(), 100, 2);
  Network net({.node_count = 3,
               .recovered = {{1, Recovered(3, EntriesWithTerms(leader_terms), 1)},
                             {2, Recovered(3, EntriesWithTerms(leader_terms), 1)},
                             {3, Recovered(3, EntriesWithTerms(stale_terms), 1)}}});
  net.raft(1).Campaign();
  net.Stabilize();
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  EXPECT_LE(net.Count(MessageType::kAppendResponse, 3, 1, /*reject=*/true), 2u);
  EXPECT_EQ(LogTerms(net.raft(3)), LogTerms(net.raft(1)));
  EXPECT_EQ(net.raft(3).log().committed(), net.raft(1).log().LastIndex());
}

// A follower whose disk lost entries it had acknowledged (an fsync that lied) rejects the
// probe at its old match. That must not stall it forever: the leader probes from scratch
// and the follower catches up.
TEST(RaftReplication, AFollowerThatLostAcknowledgedEntriesIsProbedFromScratch) {
  Network net = ElectedNetwork();
  ASSERT_TRUE(net.raft(1).Propose({"a", "b", "c"}).ok());
  net.Stabilize();
  ASSERT_EQ(net.raft(3).log().LastIndex(), net.raft(1).log().LastIndex());
  net.Isolate(3);
  ASSERT_TRUE(net.raft(1).Propose({"d", "e"}).ok());
  net.Stabilize();
  // Node 3 comes back with its term and vote but none of the entries it acknowledged.
  Network::Node& lost = net.node(3);
  lost.storage.entries.clear();
  lost.storage.hard_state.commit = LogIndex(0);
  lost.applied = LogIndex(0);
  lost.applied_data.clear();
  net.Restart(3);
  net.Heal();
  ASSERT_TRUE(net.raft(1).Propose({"f"}).ok());
  for (int round = 0; round < 20; ++round) {
    net.TickAll(1);
    net.Stabilize();
  }
  EXPECT_EQ(LogTerms(net.raft(3)), LogTerms(net.raft(1)));
  EXPECT_EQ(net.raft(3).log().committed(), net.raft(1).log().LastIndex());
}

TEST(RaftReplication, AFollowerThatIsFarBehindCatchesUpInFewRoundTrips) {
  std::vector<uint64_t> leader_terms = {1};
  leader_terms.insert(leader_terms.end(), 50, 3);
  Network net({.node_count = 3,
               .recovered = {{1, Recovered(3, EntriesWithTerms(leader_terms), 1)},
                             {2, Recovered(3, EntriesWithTerms(leader_terms), 1)},
                             {3, Recovered(3, EntriesWithTerms({1}), 1)}}});
  net.raft(1).Campaign();
  net.Stabilize();
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  EXPECT_LE(net.Count(MessageType::kAppendResponse, 3, 1, /*reject=*/true), 1u);
  EXPECT_EQ(LogTerms(net.raft(3)), LogTerms(net.raft(1)));
}

// The leader's flow control: in probe state, one append at a time; a follower that
// answered moves to replicate and gets pipelined appends.
TEST(RaftReplication, AFollowerThatAnsweredIsReplicatedToAndLimitedByTheWindow) {
  Network net = ElectedNetwork({.configure = [](Config& c) { c.inflight_messages_max = 2; }});
  const Progress* pr = net.raft(1).ProgressOf(N(2));
  ASSERT_NE(pr, nullptr);
  EXPECT_EQ(pr->state, ProgressState::kReplicate);
  EXPECT_EQ(pr->match, net.raft(1).log().LastIndex());

  net.CutOneWay(2, 1);  // node 2 receives but its answers are lost
  auto appends_with_entries_to_2 = [&net] {
    return net.CountIf([](const Message& m) {
      return m.type == MessageType::kAppend && m.to == N(2) && !m.entries.empty();
    });
  };
  const size_t before = appends_with_entries_to_2();
  for (int k = 0; k < 5; ++k) {
    ASSERT_TRUE(net.raft(1).Propose({absl::StrCat("p", k)}).ok());
    net.Stabilize();
  }
  // Appends that carry only a commit index take no room in the window; entries do.
  EXPECT_EQ(appends_with_entries_to_2() - before, 2u)
      << "no more appends than the in-flight window";
  EXPECT_TRUE(net.raft(1).ProgressOf(N(2))->IsPaused());
  // Node 3 answered all along: everything is committed regardless.
  EXPECT_EQ(net.raft(1).log().committed(), net.raft(1).log().LastIndex());
}

// ---------------------------------------------------------------------------------------
// Heartbeats

TEST(RaftHeartbeat, HeartbeatsCarryTheCommitIndexToAFollowerThatMissedIt) {
  Network net = ElectedNetwork();
  // Drop node 3's appends that carry no entries: the ones that only announce a commit.
  net.drop_if = [](const Message& m) {
    return m.type == MessageType::kAppend && m.to == N(3) && m.entries.empty();
  };
  ASSERT_TRUE(net.raft(1).Propose({"x"}).ok());
  net.Stabilize();
  const LogIndex committed = net.raft(1).log().committed();
  ASSERT_EQ(committed, net.raft(1).log().LastIndex());
  ASSERT_EQ(net.raft(3).log().LastIndex(), committed) << "node 3 holds the entry";
  ASSERT_LT(net.raft(3).log().committed(), committed) << "but does not know it committed";

  net.Tick(1);  // heartbeat_ticks = 1
  EXPECT_EQ(net.raft(3).log().committed(), committed);
  EXPECT_EQ(net.node(3).applied_data, (std::vector<std::string>{"x"}));
  bool saw = false;
  for (const Message& m : net.delivered()) {
    if (m.type == MessageType::kHeartbeat && m.to == N(3)) {
      saw = true;
      EXPECT_EQ(m.commit, committed);
    }
  }
  EXPECT_TRUE(saw);
}

TEST(RaftHeartbeat, AHeartbeatNeverAnnouncesACommitBeyondTheFollowersMatch) {
  Network net = ElectedNetwork();
  const LogIndex match3 = net.raft(1).ProgressOf(N(3))->match;
  net.drop_if = [](const Message& m) { return m.type == MessageType::kAppend && m.to == N(3); };
  ASSERT_TRUE(net.raft(1).Propose({"x"}).ok());
  net.Stabilize();
  ASSERT_GT(net.raft(1).log().committed(), match3);
  net.Tick(1);
  bool saw = false;
  for (const Message& m : net.delivered()) {
    if (m.type == MessageType::kHeartbeat && m.to == N(3)) {
      saw = true;
      EXPECT_LE(m.commit, match3);
    }
  }
  EXPECT_TRUE(saw);
}

TEST(RaftHeartbeat, AFollowerCommitsWhatAHeartbeatAnnouncesWithinItsLog) {
  Network net({.node_count = 3, .recovered = {{2, Recovered(1, EntriesWithTerms({1, 1, 1}))}}});
  Raft& r = net.raft(2);
  ASSERT_TRUE(r.Step(Heartbeat(1, 2, /*term=*/1, /*commit=*/2)).ok());
  EXPECT_EQ(r.log().committed(), LogIndex(2));
  EXPECT_EQ(r.leader(), N(1));
  Ready rd = Drain(r);
  ASSERT_EQ(rd.committed_entries.size(), 2u);
  EXPECT_EQ(rd.committed_entries.back().index, LogIndex(2));
  EXPECT_TRUE(FindMessage(AllMessages(rd), MessageType::kHeartbeatResponse).has_value());
}

// ---------------------------------------------------------------------------------------
// ReadIndex

// Thesis §6.4: the read index is the commit index, confirmed by a heartbeat round.
TEST(RaftReadIndex, OnTheLeaderItYieldsTheCommitIndexAfterAHeartbeatRound) {
  Network net = ElectedNetwork();
  ASSERT_TRUE(net.raft(1).Propose({"x"}).ok());
  net.Stabilize();
  const LogIndex committed = net.raft(1).log().committed();
  const size_t heartbeats_before = net.Count(MessageType::kHeartbeatResponse, 2, 1, false) +
                                   net.Count(MessageType::kHeartbeatResponse, 3, 1, false);
  ASSERT_TRUE(net.raft(1).ReadIndex("read-1").ok());
  net.Stabilize();
  ASSERT_EQ(net.node(1).read_states.size(), 1u);
  EXPECT_EQ(net.node(1).read_states[0].index, committed);
  EXPECT_EQ(net.node(1).read_states[0].context, "read-1");
  EXPECT_GT(net.Count(MessageType::kHeartbeatResponse, 2, 1, false) +
                net.Count(MessageType::kHeartbeatResponse, 3, 1, false),
            heartbeats_before)
      << "the read must be confirmed by a heartbeat round";
}

TEST(RaftReadIndex, FromAFollowerItIsForwardedAndAnsweredWithTheLeadersCommitIndex) {
  Network net = ElectedNetwork();
  ASSERT_TRUE(net.raft(1).Propose({"x"}).ok());
  net.Stabilize();
  const LogIndex committed = net.raft(1).log().committed();
  ASSERT_TRUE(net.raft(2).ReadIndex("read-2").ok());
  net.Stabilize();
  ASSERT_EQ(net.node(2).read_states.size(), 1u);
  EXPECT_EQ(net.node(2).read_states[0].index, committed);
  EXPECT_EQ(net.node(2).read_states[0].context, "read-2");
  EXPECT_TRUE(net.node(1).read_states.empty()) << "the answer goes to the requester";
  EXPECT_EQ(net.Count(MessageType::kReadIndex, 2, 1, false), 1u);
  EXPECT_EQ(net.Count(MessageType::kReadIndexResponse, 1, 2, false), 1u);
}

TEST(RaftReadIndex, ALeaderCutOffFromTheQuorumNeverAnswers) {
  Network net = ElectedNetwork();
  net.Isolate(1);
  ASSERT_TRUE(net.raft(1).ReadIndex("read-3").ok());
  net.Stabilize();
  net.Tick(1, 3);
  EXPECT_TRUE(net.node(1).read_states.empty());
}

TEST(RaftReadIndex, ASingleNodeAnswersAtOnce) {
  Network net({.node_count = 1});
  net.raft(1).Campaign();
  net.Stabilize();
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  ASSERT_TRUE(net.raft(1).ReadIndex("solo").ok());
  net.Stabilize();
  ASSERT_EQ(net.node(1).read_states.size(), 1u);
  EXPECT_EQ(net.node(1).read_states[0].index, net.raft(1).log().committed());
}

TEST(RaftReadIndex, ReadsBeyondPendingReadsMaxAreRefused) {
  Network net = ElectedNetwork({.configure = [](Config& c) { c.pending_reads_max = 2; }});
  net.Isolate(1);  // no read is ever confirmed
  EXPECT_TRUE(net.raft(1).ReadIndex("a").ok());
  EXPECT_TRUE(net.raft(1).ReadIndex("b").ok());
  const absl::Status st = net.raft(1).ReadIndex("c");
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
}

// Thesis §6.4: a new leader does not know the commit index until an entry of its own term
// commits; a read that arrives earlier waits for it.
TEST(RaftReadIndex, ANewLeaderAnswersOnlyAfterItsNoOpCommits) {
  Network net({.node_count = 3});
  // Let the election through but hold every append back.
  net.drop_if = [](const Message& m) { return m.type == MessageType::kAppend; };
  net.raft(1).Campaign();
  net.Stabilize();
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  ASSERT_TRUE(net.raft(1).ReadIndex("early").ok());
  net.Stabilize();
  EXPECT_TRUE(net.node(1).read_states.empty());

  net.drop_if = nullptr;
  net.Tick(1, 2);  // a heartbeat round makes the leader send its no-op
  ASSERT_EQ(net.node(1).read_states.size(), 1u);
  EXPECT_EQ(net.node(1).read_states[0].index, net.raft(1).log().committed());
  EXPECT_EQ(net.raft(1).log().TermAt(net.node(1).read_states[0].index), net.raft(1).term());
}

// ---------------------------------------------------------------------------------------
// Leadership transfer (thesis §3.10)

TEST(RaftTransfer, TimeoutNowMakesTheTargetLeader) {
  Network net = ElectedNetwork();
  const Term term = net.raft(1).term();
  ASSERT_TRUE(net.raft(1).TransferLeadership(N(2)).ok());
  net.Stabilize();
  EXPECT_EQ(net.Count(MessageType::kTimeoutNow, 1, 2, false), 1u);
  EXPECT_EQ(net.raft(2).role(), Role::kLeader);
  EXPECT_EQ(net.raft(2).term(), Term(term.value + 1));
  EXPECT_EQ(net.raft(1).role(), Role::kFollower);
  EXPECT_EQ(net.raft(1).leader(), N(2));
  EXPECT_EQ(net.LeaderCount(), 1u);
}

TEST(RaftTransfer, AFollowerCanAskTheLeaderForLeadership) {
  Network net = ElectedNetwork();
  ASSERT_TRUE(net.raft(3).TransferLeadership(N(3)).ok());
  net.Stabilize();
  EXPECT_EQ(net.raft(3).role(), Role::kLeader);
  EXPECT_EQ(net.Leader(), 3u);
}

TEST(RaftTransfer, ALaggingTargetIsCaughtUpFirstAndProposalsWaitMeanwhile) {
  Network net = ElectedNetwork();
  net.Cut(1, 3);
  ASSERT_TRUE(net.raft(1).Propose({"x"}).ok());
  net.Stabilize();
  ASSERT_LT(net.raft(3).log().LastIndex(), net.raft(1).log().LastIndex());

  ASSERT_TRUE(net.raft(1).TransferLeadership(N(3)).ok());
  net.Stabilize();
  EXPECT_EQ(net.raft(1).role(), Role::kLeader) << "no TimeoutNow to a lagging node";
  EXPECT_TRUE(absl::IsUnavailable(net.raft(1).Propose({"y"})));

  net.Heal();
  net.Tick(1, 2);
  EXPECT_EQ(net.Leader(), 3u);
  EXPECT_EQ(net.node(3).applied_data.front(), "x");
}

TEST(RaftTransfer, AnUnfinishedTransferIsAbortedAfterAnElectionTimeout) {
  Network net = ElectedNetwork();
  net.Isolate(3);
  ASSERT_TRUE(net.raft(1).TransferLeadership(N(3)).ok());
  net.Stabilize();
  EXPECT_TRUE(absl::IsUnavailable(net.raft(1).Propose({"x"})));
  net.Tick(1, net.raft(1).config().election_ticks);
  EXPECT_EQ(net.raft(1).role(), Role::kLeader);
  EXPECT_TRUE(net.raft(1).Propose({"x"}).ok()) << "the transfer was given up";
}

// ---------------------------------------------------------------------------------------
// Snapshots

TEST(RaftSnapshot, ALaggingFollowerBehindTheCompactionPointGetsASnapshotAndCatchesUp) {
  Network net = ElectedNetwork();
  net.Isolate(3);
  for (int k = 0; k < 5; ++k) {
    ASSERT_TRUE(net.raft(1).Propose({absl::StrCat("e", k)}).ok());
    net.Stabilize();
  }
  const LogIndex snap_index = net.raft(1).log().committed();
  ASSERT_EQ(net.raft(1).log().applied(), snap_index);
  net.TakeSnapshot(1);
  ASSERT_EQ(net.raft(1).log().FirstIndex(), snap_index + 1);
  ASSERT_TRUE(net.raft(1).Propose({"after"}).ok());
  net.Stabilize();

  net.Heal();
  for (int k = 0; k < 20 && net.raft(3).log().committed() < net.raft(1).log().committed(); ++k) {
    net.Tick(1);
  }
  ASSERT_EQ(net.node(3).installed_snapshots.size(), 1u);
  EXPECT_EQ(net.node(3).installed_snapshots[0].index, snap_index);
  EXPECT_EQ(net.node(3).installed_snapshots[0].data, "e0,e1,e2,e3,e4");
  EXPECT_EQ(net.raft(3).log().LastIndex(), net.raft(1).log().LastIndex());
  EXPECT_EQ(net.raft(3).log().committed(), net.raft(1).log().committed());
  EXPECT_EQ(net.node(3).applied, net.raft(1).log().committed());
  EXPECT_EQ(net.node(3).applied_data,
            (std::vector<std::string>{"e0", "e1", "e2", "e3", "e4", "after"}));
  EXPECT_EQ(net.raft(1).ProgressOf(N(3))->state, ProgressState::kReplicate);

  // Restarted, it recovers from its snapshot plus the entries after it.
  net.Restart(3);
  EXPECT_EQ(net.raft(3).log().FirstIndex(), snap_index + 1);
  ASSERT_TRUE(net.raft(1).Propose({"more"}).ok());
  net.Stabilize();
  EXPECT_EQ(net.node(3).applied_data,
            (std::vector<std::string>{"e0", "e1", "e2", "e3", "e4", "after", "more"}));
}

TEST(RaftSnapshot, AFollowerInstallsASnapshotMessageInItsReady) {
  Network net({.node_count = 3});
  ASSERT_TRUE(net.raft(2).Step(SnapshotToTwo(/*term=*/2)).ok());
  Ready rd = Drain(net.raft(2));
  ASSERT_TRUE(rd.snapshot.has_value());
  EXPECT_EQ(rd.snapshot->index, LogIndex(10));
  EXPECT_TRUE(rd.committed_entries.empty());
  EXPECT_EQ(net.raft(2).log().committed(), LogIndex(10));
  EXPECT_EQ(net.raft(2).log().applied(), LogIndex(10));
  std::optional<Message> resp =
      FindMessage(rd.messages_after_persist, MessageType::kAppendResponse);
  ASSERT_TRUE(resp.has_value());
  EXPECT_FALSE(resp->reject);
  EXPECT_EQ(resp->index, LogIndex(10));
  EXPECT_FALSE(net.raft(2).HasReady());
}

// ---------------------------------------------------------------------------------------
// Failures: deposed leaders, restarts, partitions

// Raft §5.3: a leader's entries that never reached a majority are overwritten by the
// next leader's log once the old leader rejoins.
TEST(RaftFailures, ADeposedLeadersUncommittedEntriesAreOverwritten) {
  Network net = ElectedNetwork({.configure = [](Config& c) { c.check_quorum = false; }});
  const Term old_term = net.raft(1).term();
  net.Isolate(1);
  ASSERT_TRUE(net.raft(1).Propose({"lost"}).ok());
  net.Stabilize();
  for (int k = 0; k < 100 && net.Leader() == 1; ++k) net.TickAll(1);
  const uint64_t leader = net.Leader();
  ASSERT_TRUE(leader == 2 || leader == 3) << leader;
  EXPECT_EQ(net.raft(1).role(), Role::kLeader) << "without CheckQuorum it does not know";
  ASSERT_TRUE(net.raft(leader).Propose({"kept"}).ok());
  net.Stabilize();

  net.Heal();
  net.TickAll(5);
  EXPECT_EQ(net.raft(1).role(), Role::kFollower);
  EXPECT_GT(net.raft(1).term(), old_term);
  EXPECT_EQ(net.raft(1).leader(), N(leader));
  EXPECT_EQ(LogTerms(net.raft(1)), LogTerms(net.raft(leader)));
  for (uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(net.node(id).applied_data, (std::vector<std::string>{"kept"})) << "node " << id;
  }
}

// Raft §5.4 (Leader Completeness): committed entries survive the leader's crash.
TEST(RaftFailures, ALeaderThatRestartsLosesNoCommittedEntry) {
  Network net = ElectedNetwork();
  ASSERT_TRUE(net.raft(1).Propose({"a", "b"}).ok());
  net.Stabilize();
  const Term term = net.raft(1).term();
  net.Restart(1);
  EXPECT_EQ(net.raft(1).role(), Role::kFollower);
  EXPECT_EQ(net.raft(1).term(), term);
  EXPECT_EQ(net.raft(1).vote(), N(1));
  const uint64_t leader = net.TickUntilLeader();
  ASSERT_NE(leader, 0u);
  ASSERT_TRUE(net.raft(leader).Propose({"c"}).ok());
  net.Stabilize();
  for (uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(net.node(id).applied_data, (std::vector<std::string>{"a", "b", "c"}))
        << "node " << id;
  }
}

// Raft §5.2 and §5.3: a minority can neither elect a leader nor commit; the majority side
// carries on, and after healing the minority adopts the majority's log.
TEST(RaftFailures, AMinorityPartitionCannotElectOrCommit) {
  Network net = ElectedNetwork({.node_count = 5});
  for (uint64_t a : {1, 2}) {
    for (uint64_t b : {3, 4, 5}) net.Cut(a, b);
  }
  ASSERT_TRUE(net.raft(1).Propose({"minority"}).ok());
  net.TickAll(60);
  EXPECT_NE(net.raft(1).role(), Role::kLeader) << "CheckQuorum deposes it";
  EXPECT_NE(net.raft(2).role(), Role::kLeader);
  const uint64_t leader = net.Leader();
  ASSERT_TRUE(leader >= 3 && leader <= 5) << leader;
  ASSERT_TRUE(net.raft(leader).Propose({"majority"}).ok());
  net.Stabilize();
  EXPECT_TRUE(net.node(1).applied_data.empty());
  EXPECT_TRUE(net.node(2).applied_data.empty());

  net.Heal();
  net.TickAll(30);
  EXPECT_EQ(net.LeaderCount(), 1u);
  for (uint64_t id = 1; id <= 5; ++id) {
    EXPECT_EQ(net.node(id).applied_data, (std::vector<std::string>{"majority"})) << "node " << id;
  }
}

// Seeded random runs: partitions, message loss, reordering and duplication, restarts,
// snapshots, transfers, reads and proposals anywhere. The harness checks Election Safety,
// State Machine Safety and read linearizability after every event; at the end the healed
// cluster must converge on one log.
TEST(RaftFailures, RandomFaultsNeverBreakSafetyAndTheHealedClusterConverges) {
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    Network net({.node_count = 5, .seed = seed});
    Rng rng(seed);
    net.loss_probability = 0.05;
    net.reorder_probability = 0.1;
    net.duplicate_probability = 0.02;
    for (int step = 0; step < 400; ++step) {
      const uint64_t id = 1 + rng.Uniform(5);
      switch (rng.Uniform(20)) {
        case 0:
          net.Heal();
          net.Isolate(id);
          break;
        case 1:
          net.Cut(id, 1 + rng.Uniform(5));
          break;
        case 2:
          net.Heal();
          break;
        case 3:
          net.Restart(id);
          break;
        case 7:
          net.TakeSnapshot(id);
          break;
        case 8:
          (void)net.ReadIndex(id, absl::StrCat("r", step));
          break;
        case 9:
          if (uint64_t leader = net.Leader(); leader != 0) {
            (void)net.raft(leader).TransferLeadership(N(id));
          }
          break;
        case 4:
        case 5:
        case 6:
          (void)net.raft(id).Propose({absl::StrCat("s", seed, "-", step)});
          break;
        default:
          net.TickAll(1);
          break;
      }
      net.Stabilize();
      if (::testing::Test::HasFailure()) return;
    }
    net.Heal();
    net.loss_probability = 0;
    net.reorder_probability = 0;
    net.duplicate_probability = 0;
    // Long enough for a lost snapshot to be presumed lost and resent (two election
    // timeouts) and for a leader left over from a partition to step down (CheckQuorum).
    net.TickAll(3 * 10 * 2);
    // Such a leader may still take an uncommitted proposal with it: retry until a
    // settled leader commits one.
    uint64_t leader = 0;
    for (int attempt = 0; attempt < 5; ++attempt) {
      leader = net.TickUntilLeader();
      ASSERT_NE(leader, 0u);
      const std::string final_data = absl::StrCat("final-", attempt);
      if (net.raft(leader).Propose({final_data}).ok()) net.TickAll(3);
      if (net.node(leader).applied_data.back() == final_data) break;
      net.TickAll(net.raft(leader).config().election_ticks);
    }
    EXPECT_TRUE(net.node(leader).applied_data.back().starts_with("final-"));
    for (uint64_t other = 1; other <= 5; ++other) {
      const RaftLog& log = net.raft(other).log();
      EXPECT_EQ(log.LastIndex(), net.raft(leader).log().LastIndex()) << "node " << other;
      EXPECT_EQ(log.LastTerm(), net.raft(leader).log().LastTerm()) << "node " << other;
      EXPECT_EQ(net.raft(other).log().committed(), net.raft(leader).log().committed());
      EXPECT_EQ(net.node(other).applied_data, net.node(leader).applied_data) << "node " << other;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Planted bugs: each switch must change behaviour, or the simulator's checkers prove
// nothing when they catch (or miss) it.

TEST(RaftPlantedBugs, GrantVoteWithoutLogCheckElectsAStaleCandidate) {
  Network net({.node_count = 3,
               .configure =
                   [](Config& c) {
                     c.pre_vote = false;
                     c.bugs.grant_vote_without_log_check = true;
                   },
               .recovered = {{1, Recovered(1, EntriesWithTerms({1}))},
                             {2, Recovered(1, EntriesWithTerms({1, 1}))},
                             {3, Recovered(1, EntriesWithTerms({1, 1}))}}});
  net.raft(1).Campaign();
  net.Stabilize();
  EXPECT_EQ(net.raft(1).role(), Role::kLeader) << "the bug grants the stale candidate's votes";
}

TEST(RaftPlantedBugs, SendVoteBeforePersistSendsTheVoteResponseEarly) {
  Network net(
      {.node_count = 3, .configure = [](Config& c) { c.bugs.send_vote_before_persist = true; }});
  ASSERT_TRUE(net.raft(2).Step(VoteRequest(1, 2, /*term=*/1, 0, 0)).ok());
  Ready rd = Drain(net.raft(2));
  EXPECT_TRUE(FindMessage(rd.messages, MessageType::kVoteResponse).has_value());
  EXPECT_FALSE(FindMessage(rd.messages_after_persist, MessageType::kVoteResponse).has_value());
}

// ---------------------------------------------------------------------------------------
// Malformed input

TEST(RaftStep, AMessageFromAnUnknownNodeIsAnErrorAndChangesNothing) {
  Network net({.node_count = 3});
  Message m = VoteRequest(9, 1, /*term=*/5, 100, 5);
  const absl::Status st = net.raft(1).Step(m);
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_EQ(net.raft(1).term(), Term(0));
  EXPECT_FALSE(net.raft(1).HasReady());
}

TEST(RaftStep, AMessageForAnotherRecipientIsAnError) {
  Network net({.node_count = 3});
  const absl::Status st = net.raft(1).Step(VoteRequest(2, 3, /*term=*/5, 0, 0));
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(net.raft(1).term(), Term(0));
}

TEST(RaftStep, AMessageClaimingToBeFromItselfIsAnError) {
  Network net({.node_count = 3});
  EXPECT_FALSE(net.raft(1).Step(VoteRequest(1, 1, /*term=*/5, 0, 0)).ok());
  EXPECT_EQ(net.raft(1).term(), Term(0));
}

TEST(RaftStep, ASnapshotPayloadOnANonSnapshotMessageIsAnError) {
  Network net({.node_count = 3});
  Message m = VoteRequest(2, 1, /*term=*/5, 0, 0);
  m.snapshot = Snapshot{.index = LogIndex(1), .term = Term(1), .data = ""};
  EXPECT_FALSE(net.raft(1).Step(m).ok());
  EXPECT_EQ(net.raft(1).term(), Term(0));
}

}  // namespace
}  // namespace keel::raft

namespace keel::raft {
namespace {

// Regression (review): periodic heartbeats carry the newest pending read's context, so a
// read whose own round was lost is still confirmed.
TEST(RaftReadIndex, AReadWhoseHeartbeatRoundWasLostIsConfirmedByALaterRound) {
  Network net = ElectedNetwork();
  ASSERT_TRUE(net.raft(1).Propose({"x"}).ok());
  net.Stabilize();
  net.drop_if = [](const Message& m) {
    return m.type == MessageType::kHeartbeatResponse && !m.context.empty();
  };
  ASSERT_TRUE(net.raft(1).ReadIndex("lost-round").ok());
  net.Stabilize();
  net.drop_if = nullptr;
  net.Tick(1, 30);  // thirty heartbeat rounds, nothing lost any more
  EXPECT_EQ(net.node(1).read_states.size(), 1u) << "read never confirmed";
}

// Regression (review): a probe acked at exactly `match` (after a snapshot) moves the
// follower to replicate instead of leaving it paused until the next heartbeat.
TEST(RaftSnapshot, AFollowerCaughtUpBySnapshotGetsTheNextProposalWithoutWaitingForATick) {
  Network net = ElectedNetwork();
  net.Isolate(2);
  for (int k = 0; k < 5; ++k) ASSERT_TRUE(net.raft(1).Propose({absl::StrCat("v", k)}).ok());
  net.Stabilize();
  net.TakeSnapshot(1);
  net.Heal();
  net.Tick(1, 1);  // heartbeat -> response -> snapshot -> restore -> probe
  net.Stabilize();
  ASSERT_EQ(net.raft(2).log().LastIndex(), net.raft(1).log().LastIndex());
  ASSERT_TRUE(net.raft(1).Propose({"after"}).ok());
  net.Stabilize();
  EXPECT_EQ(net.raft(2).log().LastIndex(), net.raft(1).log().LastIndex())
      << "follower 2 did not receive the new entry without a tick";
}

}  // namespace
}  // namespace keel::raft

namespace keel::raft {
namespace {

// ---------------------------------------------------------------------------------------
// Ready.must_sync (etcd's MustSync): only new entries, a snapshot, or a new term or vote
// need an fsync; a commit index alone may ride along with the next one.

// A single node, elected by Campaign() with no ticks: its first Ready holds the term,
// the vote and the leader's no-op.
struct LoneLeader {
  LoneLeader() : raft(MakeConfig(1, 1), RecoveredState{}, &rng, Logger{}) {
    raft.Campaign();
    EXPECT_EQ(raft.role(), Role::kLeader);
  }
  Rng rng{1};
  Raft raft;
};

TEST(RaftReady, TheElectionsTermVoteAndNoOpMustBeSynced) {
  LoneLeader l;
  ASSERT_TRUE(l.raft.HasReady());
  const Ready rd = Drain(l.raft);
  ASSERT_EQ(rd.entries.size(), 1u);
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->term, Term(1));
  EXPECT_EQ(rd.hard_state->vote, N(1));
  EXPECT_TRUE(rd.must_sync);
}

TEST(RaftReady, ACommitOnlyReadyNeedNotBeSynced) {
  LoneLeader l;
  Drain(l.raft);  // the election: synced
  // The leader's own write is now durable: the no-op commits. Nothing but the commit
  // index changed, so the Ready is persisted without a sync.
  ASSERT_TRUE(l.raft.HasReady());
  const Ready rd = Drain(l.raft);
  EXPECT_TRUE(rd.entries.empty());
  EXPECT_FALSE(rd.snapshot.has_value());
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->commit, LogIndex(1));
  EXPECT_EQ(rd.hard_state->term, Term(1));
  EXPECT_EQ(rd.hard_state->vote, N(1));
  EXPECT_EQ(rd.committed_entries.size(), 1u);
  EXPECT_TRUE(rd.MustPersist());
  EXPECT_FALSE(rd.must_sync);
}

TEST(RaftReady, AProposalsEntryMustBeSyncedAndItsCommitNeedNot) {
  LoneLeader l;
  Drain(l.raft);
  Drain(l.raft);
  ASSERT_FALSE(l.raft.HasReady());

  ASSERT_TRUE(l.raft.Propose({"x"}).ok());
  const Ready append = Drain(l.raft);
  ASSERT_EQ(append.entries.size(), 1u);
  EXPECT_EQ(append.entries[0].data, "x");
  EXPECT_FALSE(append.hard_state.has_value());  // term, vote and commit unchanged
  EXPECT_TRUE(append.must_sync);

  const Ready commit = Drain(l.raft);
  EXPECT_TRUE(commit.entries.empty());
  ASSERT_TRUE(commit.hard_state.has_value());
  EXPECT_EQ(commit.hard_state->commit, LogIndex(2));
  ASSERT_EQ(commit.committed_entries.size(), 1u);
  EXPECT_EQ(commit.committed_entries[0].data, "x");
  EXPECT_FALSE(commit.must_sync);
}

// Raft Figure 2: currentTerm is persistent state, even with no vote cast.
TEST(RaftReady, ANewTermAloneMustBeSynced) {
  Network net({.node_count = 3});
  ASSERT_TRUE(net.raft(1).Step(Heartbeat(2, 1, /*term=*/3)).ok());
  const Ready rd = Drain(net.raft(1));
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->term, Term(3));
  EXPECT_EQ(rd.hard_state->vote, kNoNode);
  EXPECT_EQ(rd.hard_state->commit, LogIndex(0));
  EXPECT_TRUE(rd.entries.empty());
  EXPECT_TRUE(rd.must_sync);
}

// Raft Figure 2: votedFor is persistent state; a vote in the node's current term changes
// only the vote.
TEST(RaftReady, ANewVoteInTheSameTermMustBeSynced) {
  Network net({.node_count = 3, .recovered = {{2, Recovered(5, {})}}});
  ASSERT_TRUE(net.raft(2).Step(VoteRequest(1, 2, /*term=*/5, 0, 0)).ok());
  const Ready rd = Drain(net.raft(2));
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->term, Term(5));
  EXPECT_EQ(rd.hard_state->vote, N(1));
  EXPECT_TRUE(rd.entries.empty());
  EXPECT_TRUE(rd.must_sync);
  std::optional<Message> resp = FindMessage(rd.messages_after_persist, MessageType::kVoteResponse);
  ASSERT_TRUE(resp.has_value());
  EXPECT_FALSE(resp->reject);
}

TEST(RaftReady, AFollowerLearningACommitIndexFromAHeartbeatNeedNotSync) {
  Network net({.node_count = 3,
               .recovered = {{2, Recovered(1, {E(1, 1, "a"), E(2, 1, "b")}, /*commit=*/0)}}});
  ASSERT_TRUE(net.raft(2).Step(Heartbeat(1, 2, /*term=*/1, /*commit=*/2)).ok());
  const Ready rd = Drain(net.raft(2));
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->commit, LogIndex(2));
  EXPECT_EQ(rd.hard_state->term, Term(1));
  EXPECT_EQ(rd.committed_entries.size(), 2u);
  EXPECT_FALSE(rd.must_sync);
}

TEST(RaftReady, AnInstalledSnapshotMustBeSynced) {
  Network net({.node_count = 3, .recovered = {{2, Recovered(2, {})}}});
  // The follower's own term: only the snapshot and the commit change.
  ASSERT_TRUE(net.raft(2).Step(SnapshotToTwo(/*term=*/2)).ok());
  const Ready rd = Drain(net.raft(2));
  ASSERT_TRUE(rd.snapshot.has_value());
  EXPECT_TRUE(rd.entries.empty());
  ASSERT_TRUE(rd.hard_state.has_value());  // the commit index moves to the snapshot's
  EXPECT_EQ(rd.hard_state->term, Term(2));
  EXPECT_EQ(rd.hard_state->vote, kNoNode);
  EXPECT_TRUE(rd.must_sync);
}

TEST(RaftReady, AReadyWithOnlyMessagesPersistsAndSyncsNothing) {
  Network net = ElectedNetwork();
  ASSERT_FALSE(net.raft(1).HasReady());
  net.raft(1).Tick();  // a heartbeat round: messages, no state change
  ASSERT_TRUE(net.raft(1).HasReady());
  const Ready rd = Drain(net.raft(1));
  EXPECT_FALSE(AllMessages(rd).empty());
  EXPECT_FALSE(rd.hard_state.has_value());
  EXPECT_FALSE(rd.MustPersist());
  EXPECT_FALSE(rd.must_sync);
}

}  // namespace
}  // namespace keel::raft
