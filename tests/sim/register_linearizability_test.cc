// The register linearizability search must bite: each illegal history is caught, and each
// legal one (however its concurrent ops are interleaved) is accepted.
#include "sim/register_linearizability.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

namespace keel::sim {
namespace {

using Kind = RegisterOp::Kind;
using Outcome = RegisterOp::Outcome;
using Value = std::optional<std::string>;

constexpr uint64_t kBudget = 1'000'000;

std::string V(int i) {
  std::string s = "v";
  s += std::to_string(i);
  return s;
}

class History {
 public:
  History& Put(int64_t call, int64_t ret, std::string v) {
    RegisterOp op = Base(Kind::kPut, call, ret);
    op.value = std::move(v);
    return Add(std::move(op));
  }
  History& Get(int64_t call, int64_t ret, Value observed) {
    RegisterOp op = Base(Kind::kGet, call, ret);
    op.observed = std::move(observed);
    return Add(std::move(op));
  }
  History& Delete(int64_t call, int64_t ret, int deleted) {
    RegisterOp op = Base(Kind::kDelete, call, ret);
    op.deleted = deleted;
    return Add(std::move(op));
  }
  History& Cas(int64_t call, int64_t ret, Value expected, std::string v, bool succeeded,
               Value observed = std::nullopt) {
    RegisterOp op = Base(Kind::kCas, call, ret);
    op.expected = std::move(expected);
    op.value = std::move(v);
    op.succeeded = succeeded;
    op.observed = std::move(observed);
    return Add(std::move(op));
  }
  // The last op added timed out / definitely failed.
  History& TimedOut() {
    ops_.back().outcome = Outcome::kIndeterminate;
    return *this;
  }
  History& Failed() {
    ops_.back().outcome = Outcome::kFailed;
    return *this;
  }
  LinearizabilityResult Check(Value initial = std::nullopt, uint64_t budget = kBudget) const {
    return CheckRegister(ops_, std::move(initial), budget);
  }
  std::vector<RegisterOp>& ops() { return ops_; }

 private:
  RegisterOp Base(Kind kind, int64_t call, int64_t ret) {
    RegisterOp op;
    op.kind = kind;
    op.call = Nanos(call);
    op.ret = Nanos(ret);
    op.id = ops_.size();
    return op;
  }
  History& Add(RegisterOp op) {
    ops_.push_back(std::move(op));
    return *this;
  }
  std::vector<RegisterOp> ops_;
};

bool Linearizable(const LinearizabilityResult& r) { return r.ok && !r.gave_up; }

TEST(RegisterLinearizability, AcceptsALegalSequentialHistory) {
  auto r = History()
               .Get(0, 1, std::nullopt)
               .Put(2, 3, "a")
               .Get(4, 5, "a")
               .Put(6, 7, "b")
               .Get(8, 9, "b")
               .Delete(10, 11, 1)
               .Get(12, 13, std::nullopt)
               .Delete(14, 15, 0)
               .Check();
  EXPECT_TRUE(Linearizable(r)) << r.explanation;
}

TEST(RegisterLinearizability, RejectsAnIllegalSequentialHistory) {
  auto r = History().Put(0, 1, "a").Put(2, 3, "b").Get(4, 5, "a").Check();
  EXPECT_FALSE(r.ok);
  EXPECT_FALSE(r.gave_up);
  EXPECT_NE(r.explanation.find("op 2"), std::string::npos) << r.explanation;
}

TEST(RegisterLinearizability, StartsFromTheGivenInitialValue) {
  EXPECT_TRUE(Linearizable(History().Get(0, 1, "x").Check("x")));
  EXPECT_FALSE(History().Get(0, 1, "x").Check().ok);
}

TEST(RegisterLinearizability, AcceptsConcurrentOpsThatFitInOnlyOneOrder) {
  // Two overlapping puts; the later get pins the order a-then-b, the earlier overlapping
  // read of "a" needs put a first, and a read of absent needs the get before both.
  auto r = History()
               .Put(0, 10, "b")
               .Put(0, 10, "a")
               .Get(0, 10, "a")
               .Get(0, 10, std::nullopt)
               .Get(11, 12, "b")
               .Check();
  EXPECT_TRUE(Linearizable(r)) << r.explanation;
}

TEST(RegisterLinearizability, RejectsConcurrentReadsThatNeedTwoOrders) {
  // Both puts overlap both reads, but one reader saw a then b and the other b then a.
  auto r = History()
               .Put(0, 100, "a")
               .Put(0, 100, "b")
               .Get(1, 10, "a")
               .Get(20, 30, "b")
               .Get(1, 10, "b")
               .Get(20, 30, "a")
               .Check();
  EXPECT_FALSE(r.ok) << r.explanation;
}

TEST(RegisterLinearizability, TreatsTouchingIntervalsAsConcurrent) {
  // The put returns at 10, the get is called at 10: either order is allowed.
  EXPECT_TRUE(Linearizable(History().Put(0, 10, "a").Get(10, 20, std::nullopt).Check()));
}

TEST(RegisterLinearizability, RejectsAStaleReadAfterACompletedPut) {
  auto r = History().Put(0, 10, "a").Put(20, 30, "b").Get(31, 40, "a").Check();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.explanation.find("no linearization"), std::string::npos) << r.explanation;
}

TEST(RegisterLinearizability, RejectsAReadOfAValueNeverWritten) {
  auto r = History().Put(0, 10, "a").Get(5, 15, "zzz").Check();
  EXPECT_FALSE(r.ok);
}

TEST(RegisterLinearizability, AcceptsATimedOutPutThatIsSeenLater) {
  // Called at 0, timed out; seen long after its client gave up on it.
  auto r = History().Put(0, 0, "a").TimedOut().Get(100, 110, std::nullopt).Get(200, 210, "a")
               .Check();
  EXPECT_TRUE(Linearizable(r)) << r.explanation;
}

TEST(RegisterLinearizability, AcceptsATimedOutPutThatIsNeverSeen) {
  auto r = History().Put(0, 0, "a").TimedOut().Get(100, 110, std::nullopt).Check();
  EXPECT_TRUE(Linearizable(r)) << r.explanation;
}

TEST(RegisterLinearizability, RejectsATimedOutPutSeenBeforeItWasCalled) {
  auto r = History().Get(0, 10, "a").Put(20, 20, "a").TimedOut().Check();
  EXPECT_FALSE(r.ok);
}

TEST(RegisterLinearizability, RejectsAReadOfADefinitelyFailedPut) {
  History h;
  h.Put(0, 10, "a").Failed().Get(20, 30, "a");
  EXPECT_FALSE(h.Check().ok);
  // The same put, had it only timed out, could explain the read.
  h.ops()[0].outcome = Outcome::kIndeterminate;
  EXPECT_TRUE(Linearizable(h.Check()));
}

TEST(RegisterLinearizability, ChecksCasSuccess) {
  EXPECT_TRUE(Linearizable(
      History().Put(0, 1, "a").Cas(2, 3, "a", "b", true).Get(4, 5, "b").Check()));
  // A cas on absent succeeds only when the key is absent.
  EXPECT_TRUE(Linearizable(History().Cas(0, 1, std::nullopt, "a", true).Get(2, 3, "a").Check()));
  EXPECT_FALSE(History().Put(0, 1, "a").Cas(2, 3, std::nullopt, "b", true).Check().ok);
  // It cannot succeed against a value already replaced.
  EXPECT_FALSE(History().Put(0, 1, "a").Put(2, 3, "c").Cas(4, 5, "a", "b", true).Check().ok);
  // And its write is what later reads see.
  EXPECT_FALSE(History().Put(0, 1, "a").Cas(2, 3, "a", "b", true).Get(4, 5, "a").Check().ok);
}

TEST(RegisterLinearizability, ChecksCasFailure) {
  EXPECT_TRUE(Linearizable(
      History().Put(0, 1, "c").Cas(2, 3, "a", "b", false, "c").Get(4, 5, "c").Check()));
  // It cannot fail when the value matched.
  EXPECT_FALSE(History().Put(0, 1, "a").Cas(2, 3, "a", "b", false, "a").Check().ok);
  // It must not have written.
  EXPECT_FALSE(History().Put(0, 1, "c").Cas(2, 3, "a", "b", false, "c").Get(4, 5, "b").Check().ok);
}

TEST(RegisterLinearizability, RejectsAFailedCasWhoseObservedValueContradictsTheOrder) {
  // put a, then put b (both done) and then the cas saw "a": stale.
  auto stale = History().Put(0, 1, "a").Put(2, 3, "b").Cas(4, 5, "x", "y", false, "a").Check();
  EXPECT_FALSE(stale.ok) << stale.explanation;
  // Overlapping the put of b, seeing "a" is fine.
  auto racing = History().Put(0, 1, "a").Put(2, 10, "b").Cas(4, 5, "x", "y", false, "a").Check();
  EXPECT_TRUE(Linearizable(racing)) << racing.explanation;
}

TEST(RegisterLinearizability, ChecksDeleteCounts) {
  EXPECT_TRUE(Linearizable(History().Put(0, 1, "a").Delete(2, 3, 1).Get(4, 5, std::nullopt)
                               .Check()));
  EXPECT_FALSE(History().Put(0, 1, "a").Delete(2, 3, 0).Check().ok);
  EXPECT_FALSE(History().Delete(0, 1, 1).Check().ok);
  EXPECT_FALSE(History().Put(0, 1, "a").Delete(2, 3, 1).Get(4, 5, "a").Check().ok);
  // Unknown count: either is fine.
  EXPECT_TRUE(Linearizable(History().Delete(0, 1, -1).Put(2, 3, "a").Delete(4, 5, -1).Check()));
  // A timed-out delete may explain a later absence.
  EXPECT_TRUE(Linearizable(
      History().Put(0, 1, "a").Delete(2, 2, 1).TimedOut().Get(10, 11, std::nullopt).Check()));
}

TEST(RegisterLinearizability, ReportsGivingUpWhenTheBudgetRunsOut) {
  // Ten concurrent puts and a read of a value none wrote: the search must try every order.
  History h;
  for (int i = 0; i < 10; ++i) h.Put(0, 100, V(i));
  h.Get(0, 100, "nobody");
  auto r = h.Check(std::nullopt, 50);
  EXPECT_TRUE(r.ok);
  EXPECT_TRUE(r.gave_up);
  EXPECT_NE(r.explanation.find("gave up"), std::string::npos) << r.explanation;
  // With budget enough, the memoized search finishes and says no.
  auto full = h.Check(std::nullopt, kBudget);
  EXPECT_FALSE(full.ok);
  EXPECT_FALSE(full.gave_up);
}

// A real sequential execution by `clients` concurrent clients: each op takes effect at a
// moment strictly inside its interval, in the order those moments fall. Some ops time out
// (and then took effect, or not). With unique_values, every written value is distinct.
std::vector<RegisterOp> RandomLegalHistory(uint64_t seed, int count, int clients,
                                           bool unique_values) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
  struct InFlight {
    RegisterOp op;
    int64_t effect;
    bool applies;
  };
  std::vector<std::optional<InFlight>> busy(clients);
  std::vector<RegisterOp> done;
  Value state;
  int started = 0;
  int written = 0;
  auto fresh = [&] {
    return V(unique_values ? written++ : pick(4));
  };
  for (int64_t t = 0; started < count || std::any_of(busy.begin(), busy.end(),
                                                     [](auto& b) { return b.has_value(); });
       ++t) {
    // Effects at t, in client order (the "real" linearization).
    for (auto& b : busy) {
      if (!b || b->effect != t || !b->applies) continue;
      RegisterOp& op = b->op;
      switch (op.kind) {
        case Kind::kPut: state = op.value; break;
        case Kind::kGet: op.observed = state; break;
        case Kind::kDelete:
          op.deleted = state ? 1 : 0;
          state = std::nullopt;
          break;
        case Kind::kCas:
          op.succeeded = state == op.expected;
          if (op.succeeded) {
            state = op.value;
          } else {
            op.observed = state;
          }
          break;
      }
    }
    // Returns at t.
    for (auto& b : busy) {
      if (b && b->op.ret == Nanos(t)) {
        done.push_back(std::move(b->op));
        b.reset();
      }
    }
    // Calls at t.
    for (auto& b : busy) {
      if (b || started >= count || pick(3) != 0) continue;
      RegisterOp op;
      op.id = static_cast<size_t>(started++);
      op.call = Nanos(t);
      const int k = pick(10);
      op.kind = k < 4 ? Kind::kGet : k < 7 ? Kind::kPut : k < 8 ? Kind::kDelete : Kind::kCas;
      if (op.kind == Kind::kPut || op.kind == Kind::kCas) op.value = fresh();
      if (op.kind == Kind::kCas) {
        // Usually the value the client last knew of; sometimes a guess.
        op.expected = pick(2) == 0 ? state : (pick(3) == 0 ? Value() : Value(V(pick(4))));
      }
      const int64_t effect = t + 1 + pick(6);
      op.ret = Nanos(effect + pick(6));
      bool applies = true;
      if (op.kind != Kind::kGet && pick(20) == 0) {
        op.outcome = Outcome::kIndeterminate;
        applies = pick(2) == 0;
      }
      b = InFlight{std::move(op), effect, applies};
    }
  }
  return done;
}

TEST(RegisterLinearizability, AcceptsALargeRandomLegalHistory) {
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    auto ops = RandomLegalHistory(seed, 300, 5, false);
    ASSERT_EQ(ops.size(), 300u);
    // The history is really concurrent: many ops overlap another.
    size_t overlapping = 0;
    for (const RegisterOp& a : ops) {
      overlapping += std::any_of(ops.begin(), ops.end(), [&](const RegisterOp& b) {
        return &a != &b && a.call <= b.ret && b.call <= a.ret;
      });
    }
    EXPECT_GT(overlapping, 200u);
    auto r = CheckRegister(ops, std::nullopt, kBudget);
    EXPECT_TRUE(Linearizable(r)) << "seed " << seed << ": " << r.explanation
                                 << " after " << r.steps << " steps";
  }
}

TEST(RegisterLinearizability, RejectsTheLargeHistoryWithOneReadAltered) {
  auto ops = RandomLegalHistory(1, 300, 5, false);
  // A read in the middle now sees a value nobody wrote.
  size_t victim = ops.size();
  for (size_t i = ops.size() / 2; i < ops.size(); ++i) {
    if (ops[i].kind == Kind::kGet) {
      victim = i;
      break;
    }
  }
  ASSERT_LT(victim, ops.size());
  ops[victim].observed = "never-written";
  auto r = CheckRegister(ops, std::nullopt, kBudget);
  EXPECT_FALSE(r.ok) << r.explanation;
  EXPECT_FALSE(r.gave_up);
  EXPECT_NE(r.explanation.find("op " + std::to_string(ops[victim].id)), std::string::npos)
      << r.explanation;
}

TEST(RegisterLinearizability, RejectsTheLargeHistoryWithOneReadMadeStale) {
  // Unique values: a read of a value whose put was followed, strictly in real time, by a
  // completed put before the read was called, is stale.
  auto ops = RandomLegalHistory(7, 300, 5, true);
  ASSERT_TRUE(Linearizable(CheckRegister(ops, std::nullopt, kBudget)));
  bool altered = false;
  for (size_t g = ops.size() / 2; g < ops.size() && !altered; ++g) {
    if (ops[g].kind != Kind::kGet) continue;
    for (const RegisterOp& a : ops) {
      if (a.kind != Kind::kPut || a.outcome != Outcome::kOk) continue;
      for (const RegisterOp& b : ops) {
        if (b.kind != Kind::kPut || b.outcome != Outcome::kOk) continue;
        if (a.ret < b.call && b.ret < ops[g].call && ops[g].observed != a.value) {
          ops[g].observed = a.value;
          altered = true;
          break;
        }
      }
      if (altered) break;
    }
  }
  ASSERT_TRUE(altered);
  auto r = CheckRegister(ops, std::nullopt, kBudget);
  EXPECT_FALSE(r.ok) << r.explanation;
  EXPECT_FALSE(r.gave_up);
}

}  // namespace
}  // namespace keel::sim
