#include "sim/register_linearizability.h"

#include <algorithm>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"

namespace keel::sim {
namespace {

using Value = std::optional<std::string>;

std::string Show(const Value& v) { return v ? "\"" + *v + "\"" : "absent"; }

// Applies op to state; false if the op's known output is impossible from state.
bool Step(const RegisterOp& op, const Value& state, Value& next) {
  const bool known = op.outcome == RegisterOp::Outcome::kOk;
  switch (op.kind) {
    case RegisterOp::Kind::kPut:
      next = op.value;
      return true;
    case RegisterOp::Kind::kGet:
      next = state;
      return !known || op.observed == state;
    case RegisterOp::Kind::kDelete:
      next = std::nullopt;
      return !known || op.deleted < 0 || op.deleted == (state.has_value() ? 1 : 0);
    case RegisterOp::Kind::kCas: {
      const bool match = state == op.expected;
      next = match ? Value(op.value) : state;
      if (!known) return true;
      return op.succeeded ? match : (!match && op.observed == state);
    }
  }
  return false;
}

struct Memo {
  std::vector<uint64_t> bits;
  Value state;
  bool operator==(const Memo&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const Memo& m) {
    return H::combine(std::move(h), m.bits, m.state);
  }
};

// One call or return, in a doubly linked list that the search lifts entries out of.
struct Entry {
  bool is_call = true;
  size_t op = 0;
  Nanos time{0};
  int match = -1;  // call: its return entry (-1: indeterminate, none); return: its call
  int prev = -1;
  int next = -1;
};

}  // namespace

std::string DescribeRegisterOp(const RegisterOp& op) {
  std::ostringstream os;
  os << "op " << op.id << " (";
  const bool known = op.outcome == RegisterOp::Outcome::kOk;
  switch (op.kind) {
    case RegisterOp::Kind::kPut:
      os << "put \"" << op.value << "\"";
      break;
    case RegisterOp::Kind::kGet:
      os << "get";
      if (known) os << " -> " << Show(op.observed);
      break;
    case RegisterOp::Kind::kDelete:
      os << "delete";
      if (known && op.deleted >= 0) os << " -> " << op.deleted;
      break;
    case RegisterOp::Kind::kCas:
      os << "cas " << Show(op.expected) << " => \"" << op.value << "\"";
      if (known) os << (op.succeeded ? " -> ok" : " -> failed, saw " + Show(op.observed));
      break;
  }
  os << ", [" << op.call.count() << ", ";
  switch (op.outcome) {
    case RegisterOp::Outcome::kOk: os << op.ret.count() << "]"; break;
    case RegisterOp::Outcome::kIndeterminate: os << "timed out)"; break;
    case RegisterOp::Outcome::kFailed: os << "failed)"; break;
  }
  if (op.outcome == RegisterOp::Outcome::kOk) os << ")";
  return os.str();
}

LinearizabilityResult CheckRegister(std::vector<RegisterOp> ops, Value initial,
                                    uint64_t budget) {
  // Definitely failed ops never happened; indeterminate gets constrain nothing.
  std::erase_if(ops, [](const RegisterOp& op) {
    return op.outcome == RegisterOp::Outcome::kFailed ||
           (op.outcome == RegisterOp::Outcome::kIndeterminate &&
            op.kind == RegisterOp::Kind::kGet);
  });
  LinearizabilityResult result;
  const size_t n = ops.size();
  if (n == 0) return result;

  // Entry 0 is the list head; events follow, by time, calls before returns at equal time
  // (touching intervals are concurrent), then by op index for determinism.
  struct Event {
    Nanos time;
    bool is_call;
    size_t op;
  };
  std::vector<Event> events;
  for (size_t i = 0; i < n; ++i) {
    events.push_back({ops[i].call, true, i});
    if (ops[i].outcome == RegisterOp::Outcome::kOk) {
      events.push_back({std::max(ops[i].ret, ops[i].call), false, i});
    }
  }
  std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
    if (a.time != b.time) return a.time < b.time;
    if (a.is_call != b.is_call) return a.is_call;
    return a.op < b.op;
  });
  std::vector<Entry> list(events.size() + 1);
  std::vector<int> call_of(n, -1), ret_of(n, -1);
  for (size_t k = 0; k < events.size(); ++k) {
    const int e = static_cast<int>(k + 1);
    list[e].is_call = events[k].is_call;
    list[e].op = events[k].op;
    list[e].time = events[k].time;
    (events[k].is_call ? call_of : ret_of)[events[k].op] = e;
  }
  for (size_t k = 0; k < list.size(); ++k) {
    list[k].prev = static_cast<int>(k) - 1;
    list[k].next = k + 1 < list.size() ? static_cast<int>(k + 1) : -1;
  }
  for (size_t i = 0; i < n; ++i) {
    list[call_of[i]].match = ret_of[i];
    if (ret_of[i] >= 0) list[ret_of[i]].match = call_of[i];
  }
  auto remove = [&](int e) {
    list[list[e].prev].next = list[e].next;
    if (list[e].next >= 0) list[list[e].next].prev = list[e].prev;
  };
  auto restore = [&](int e) {
    list[list[e].prev].next = e;
    if (list[e].next >= 0) list[list[e].next].prev = e;
  };

  size_t unfinished = 0;  // kOk ops not yet linearized
  for (const RegisterOp& op : ops) unfinished += op.outcome == RegisterOp::Outcome::kOk;

  std::vector<uint64_t> linearized((n + 63) / 64, 0);
  Value state = std::move(initial);
  struct Frame {
    int call;
    Value state;  // before the op
  };
  std::vector<Frame> stack;
  absl::flat_hash_set<Memo> seen;

  // The deepest point at which the search got stuck, for the explanation.
  size_t best_depth = 0;
  bool have_best = false;
  std::vector<size_t> best_prefix;
  std::vector<size_t> best_candidates;
  size_t best_blocker = 0;
  Value best_state;

  int entry = list[0].next;
  while (unfinished > 0) {
    if (result.steps >= budget) {
      result.gave_up = true;
      result.explanation = "gave up after " + std::to_string(result.steps) +
                           " steps; longest prefix linearized: " +
                           std::to_string(have_best ? best_depth : stack.size()) + " ops";
      return result;
    }
    const Entry& e = list[entry];  // never -1: a kOk op's return is still in the list
    if (e.is_call) {
      ++result.steps;
      Value next;
      const RegisterOp& op = ops[e.op];
      if (Step(op, state, next)) {
        Memo memo{linearized, next};
        memo.bits[e.op / 64] |= uint64_t{1} << (e.op % 64);
        if (seen.insert(memo).second) {
          stack.push_back({entry, std::move(state)});
          state = std::move(next);
          linearized = std::move(memo.bits);
          remove(entry);
          if (e.match >= 0) {
            remove(e.match);
            --unfinished;
          }
          entry = list[0].next;
          continue;
        }
      }
      entry = e.next;
      continue;
    }
    // A return: its op must be linearized by now, and none of the candidates fit.
    if (!have_best || stack.size() > best_depth) {
      have_best = true;
      best_depth = stack.size();
      best_blocker = ops[e.op].id;
      best_state = state;
      best_prefix.clear();
      for (const Frame& f : stack) best_prefix.push_back(ops[list[f.call].op].id);
      best_candidates.clear();
      for (int c = list[0].next; c != entry; c = list[c].next) {
        if (list[c].is_call) best_candidates.push_back(ops[list[c].op].id);
      }
    }
    if (stack.empty()) break;
    ++result.steps;
    Frame top = std::move(stack.back());
    stack.pop_back();
    const Entry& undone = list[top.call];
    linearized[undone.op / 64] &= ~(uint64_t{1} << (undone.op % 64));
    if (undone.match >= 0) {
      restore(undone.match);
      ++unfinished;
    }
    restore(top.call);
    state = std::move(top.state);
    entry = undone.next;
  }
  if (unfinished == 0) return result;

  result.ok = false;
  std::ostringstream os;
  os << "no linearization: longest prefix linearized: " << best_depth << " ops";
  if (!best_prefix.empty()) {
    os << " (";
    const size_t from = best_prefix.size() > 8 ? best_prefix.size() - 8 : 0;
    if (from > 0) os << "..., ";
    for (size_t k = from; k < best_prefix.size(); ++k) {
      os << (k > from ? ", " : "") << best_prefix[k];
    }
    os << ")";
  }
  os << ", leaving the value " << Show(best_state) << "; then no candidate (ops ";
  for (size_t k = 0; k < best_candidates.size(); ++k) {
    os << (k ? ", " : "") << best_candidates[k];
  }
  os << ") can come next, yet op " << best_blocker << " must be linearized before time ";
  for (const RegisterOp& op : ops) {
    if (op.id == best_blocker) {
      os << op.ret.count() << ": " << DescribeRegisterOp(op);
      break;
    }
  }
  result.explanation = os.str();
  return result;
}

}  // namespace keel::sim
