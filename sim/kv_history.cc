#include "sim/kv_history.h"

#include "absl/container/btree_map.h"
#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "sim/register_linearizability.h"

namespace keel::sim {
namespace {

std::string PrefixEnd(std::string prefix) {
  // etcd's GetPrefixRangeEnd: the prefix with its last byte below 0xff incremented.
  while (!prefix.empty() && static_cast<uint8_t>(prefix.back()) == 0xff) prefix.pop_back();
  if (prefix.empty()) return std::string(1, '\0');
  prefix.back() = static_cast<char>(static_cast<uint8_t>(prefix.back()) + 1);
  return prefix;
}

std::string Describe(const KvHistory::Request& r, size_t id) {
  return absl::StrCat(KvOpName(r.op), " #", id, " of client ", r.client, " to n", r.node + 1,
                      " (", r.key, r.value.empty() ? "" : absl::StrCat("=", r.value), ")");
}

bool SameKvs(const google::protobuf::RepeatedPtrField<mvccpb::KeyValue>& a,
             const google::protobuf::RepeatedPtrField<mvccpb::KeyValue>& b) {
  if (a.size() != b.size()) return false;
  for (int i = 0; i < a.size(); ++i) {
    if (a[i].SerializeAsString() != b[i].SerializeAsString()) return false;
  }
  return true;
}

bool HasEvent(const std::vector<mvccpb::Event>& events, mvccpb::Event::EventType type,
              const std::string& key, const std::string* value) {
  for (const mvccpb::Event& e : events) {
    if (e.type() == type && e.kv().key() == key && (value == nullptr || e.kv().value() == *value)) {
      return true;
    }
  }
  return false;
}

// The key as the reference had it at `rev` (nullopt: absent).
std::optional<mvccpb::KeyValue> KeyAt(const KvReference& ref, const std::string& key, int64_t rev) {
  etcdserverpb::RangeRequest r;
  r.set_key(key);
  absl::StatusOr<etcdserverpb::RangeResponse> got = ref.RangeAt(r, rev);
  if (!got.ok() || got->kvs_size() == 0) return std::nullopt;
  return got->kvs(0);
}

}  // namespace

const char* KvOpName(KvOp op) {
  switch (op) {
    case KvOp::kPut: return "put";
    case KvOp::kGet: return "get";
    case KvOp::kSerializableGet: return "serializable get";
    case KvOp::kRange: return "range";
    case KvOp::kDelete: return "delete";
    case KvOp::kCas: return "cas";
    case KvOp::kCompact: return "compact";
  }
  return "?";
}

etcdserverpb::RangeRequest KvHistory::RangeRequestFor(const Request& r) {
  etcdserverpb::RangeRequest out;
  out.set_key(r.key);
  if (r.op == KvOp::kRange) out.set_range_end(PrefixEnd(r.key));
  if (r.op == KvOp::kSerializableGet) out.set_serializable(true);
  return out;
}

etcdserverpb::PutRequest KvHistory::PutRequestFor(const Request& r) {
  etcdserverpb::PutRequest out;
  out.set_key(r.key);
  out.set_value(r.value);
  out.set_prev_kv(true);
  return out;
}

etcdserverpb::DeleteRangeRequest KvHistory::DeleteRequestFor(const Request& r) {
  etcdserverpb::DeleteRangeRequest out;
  out.set_key(r.key);
  out.set_prev_kv(true);
  return out;
}

etcdserverpb::TxnRequest KvHistory::CasRequestFor(const Request& r) {
  etcdserverpb::TxnRequest out;
  etcdserverpb::Compare* c = out.add_compare();
  c->set_key(r.key);
  if (r.expect_missing) {
    c->set_target(etcdserverpb::Compare::VERSION);
    c->set_version(0);
  } else {
    c->set_target(etcdserverpb::Compare::VALUE);
    c->set_value(r.expected);
  }
  c->set_result(etcdserverpb::Compare::EQUAL);
  etcdserverpb::PutRequest* put = out.add_success()->mutable_request_put();
  put->set_key(r.key);
  put->set_value(r.value);
  out.add_failure()->mutable_request_range()->set_key(r.key);
  return out;
}

size_t KvHistory::Begin(Request request) {
  KEEL_ASSERT(request.outcome == Outcome::kPending);
  requests_.push_back(std::move(request));
  ++pending_;
  return requests_.size() - 1;
}

bool KvHistory::Resolve(size_t id, const absl::Status& status, std::string response, Nanos end) {
  Request& r = requests_[id];
  if (r.outcome != Outcome::kPending) return false;
  r.end = end;
  if (status.ok()) {
    r.outcome = Outcome::kOk;
    r.response = std::move(response);
  } else {
    // DeadlineExceeded: the node does not know the fate (Node's contract).
    r.outcome = absl::IsDeadlineExceeded(status) ? Outcome::kTimedOut : Outcome::kFailed;
    r.error = status.ToString();
  }
  --pending_;
  return true;
}

bool KvHistory::TimeOut(size_t id, Nanos end) {
  return Resolve(id, absl::DeadlineExceededError("client timeout"), "", end);
}

std::vector<std::string> KvHistory::Check(const KvReference& reference) const {
  std::vector<std::string> failures;
  for (size_t id = 0; id < requests_.size() && failures.size() < 10; ++id) {
    std::string f = CheckOne(requests_[id], reference);
    if (!f.empty()) failures.push_back(absl::StrCat(Describe(requests_[id], id), ": ", f));
  }
  return failures;
}

std::vector<std::string> KvHistory::CheckPerKey(uint64_t budget,
                                               std::vector<std::string>* gave_up) const {
  absl::btree_map<std::string, std::vector<RegisterOp>> by_key;
  for (size_t id = 0; id < requests_.size(); ++id) {
    const Request& r = requests_[id];
    RegisterOp op;
    switch (r.op) {
      case KvOp::kPut: op.kind = RegisterOp::Kind::kPut; break;
      case KvOp::kGet: op.kind = RegisterOp::Kind::kGet; break;
      case KvOp::kDelete: op.kind = RegisterOp::Kind::kDelete; break;
      case KvOp::kCas: op.kind = RegisterOp::Kind::kCas; break;
      default: continue;  // serializable reads, ranges, compactions: not single-key ops
    }
    op.id = id;
    op.call = r.start;
    op.ret = r.end;
    op.value = r.value;
    if (op.kind == RegisterOp::Kind::kCas && !r.expect_missing) op.expected = r.expected;
    switch (r.outcome) {
      case Outcome::kOk: op.outcome = RegisterOp::Outcome::kOk; break;
      case Outcome::kFailed: op.outcome = RegisterOp::Outcome::kFailed; break;
      default: op.outcome = RegisterOp::Outcome::kIndeterminate; break;
    }
    if (r.outcome == Outcome::kOk) {
      if (r.op == KvOp::kGet) {
        etcdserverpb::RangeResponse g;
        if (!g.ParseFromString(r.response)) continue;
        if (g.kvs_size() > 0) op.observed = g.kvs(0).value();
      } else if (r.op == KvOp::kDelete) {
        etcdserverpb::DeleteRangeResponse d;
        if (!d.ParseFromString(r.response)) continue;
        op.deleted = static_cast<int>(d.deleted());
      } else if (r.op == KvOp::kCas) {
        etcdserverpb::TxnResponse t;
        if (!t.ParseFromString(r.response)) continue;
        op.succeeded = t.succeeded();
        if (!t.succeeded() && t.responses_size() == 1 &&
            t.responses(0).response_range().kvs_size() > 0) {
          op.observed = t.responses(0).response_range().kvs(0).value();
        }
      }
    }
    by_key[r.key].push_back(std::move(op));
  }
  std::vector<std::string> failures;
  for (auto& [key, ops] : by_key) {
    LinearizabilityResult result = CheckRegister(std::move(ops), std::nullopt, budget);
    if (result.gave_up) {
      gave_up->push_back(absl::StrCat("key ", key, ": ", result.explanation));
    } else if (!result.ok) {
      failures.push_back(absl::StrCat("Linearizability (per-key search): key ", key, ": ",
                                      result.explanation));
    }
  }
  return failures;
}

std::string KvHistory::CheckOne(const Request& r, const KvReference& ref) const {
  const bool writes_value = r.op == KvOp::kPut || r.op == KvOp::kCas;
  const int puts = writes_value ? ref.PutsOf(r.key, r.value) : 0;
  if (puts > 1) return absl::StrCat("Durability: its value was put ", puts, " times");
  if (r.outcome == Outcome::kFailed && puts > 0) {
    return absl::StrCat("Integrity: it failed definitely (", r.error, ") but its value was put");
  }
  if (r.outcome != Outcome::kOk) return "";
  switch (r.op) {
    case KvOp::kPut: {
      etcdserverpb::PutResponse p;
      if (!p.ParseFromString(r.response)) return "unparsable response";
      const int64_t rev = p.header().revision();
      if (!HasEvent(ref.EventsAt(rev), mvccpb::Event::PUT, r.key, &r.value)) {
        return absl::StrCat("Agreement: acknowledged at revision ", rev,
                            ", where the reference has no such put");
      }
      std::optional<mvccpb::KeyValue> prev = KeyAt(ref, r.key, rev - 1);
      if (p.has_prev_kv() != prev.has_value() ||
          (prev && p.prev_kv().SerializeAsString() != prev->SerializeAsString())) {
        return absl::StrCat("Agreement: prev_kv {", p.prev_kv().ShortDebugString(),
                            "} differs from the key at revision ", rev - 1, ": {",
                            prev ? prev->ShortDebugString() : "absent", "}");
      }
      return "";
    }
    case KvOp::kDelete: {
      etcdserverpb::DeleteRangeResponse d;
      if (!d.ParseFromString(r.response)) return "unparsable response";
      const int64_t rev = d.header().revision();
      if (d.deleted() == 0) {
        if (KeyAt(ref, r.key, rev)) {
          return absl::StrCat("Agreement: deleted nothing at revision ", rev, ", where the key was live");
        }
        return "";
      }
      if (d.deleted() != 1 || !HasEvent(ref.EventsAt(rev), mvccpb::Event::DELETE, r.key, nullptr)) {
        return absl::StrCat("Agreement: reports ", d.deleted(), " deleted at revision ", rev,
                            ", which the reference does not show");
      }
      std::optional<mvccpb::KeyValue> prev = KeyAt(ref, r.key, rev - 1);
      if (!prev || d.prev_kvs_size() != 1 ||
          d.prev_kvs(0).SerializeAsString() != prev->SerializeAsString()) {
        return "Agreement: prev_kvs differ from the key before the delete";
      }
      return "";
    }
    case KvOp::kCas: {
      etcdserverpb::TxnResponse t;
      if (!t.ParseFromString(r.response)) return "unparsable response";
      const int64_t rev = t.header().revision();
      if (t.succeeded()) {
        std::optional<mvccpb::KeyValue> before = KeyAt(ref, r.key, rev - 1);
        const bool held = r.expect_missing ? !before : (before && before->value() == r.expected);
        if (!HasEvent(ref.EventsAt(rev), mvccpb::Event::PUT, r.key, &r.value) || !held) {
          return absl::StrCat("Agreement: succeeded at revision ", rev,
                              " but the reference does not have the compare holding and the put there");
        }
        return "";
      }
      std::optional<mvccpb::KeyValue> at = KeyAt(ref, r.key, rev);
      const bool held = r.expect_missing ? !at : (at && at->value() == r.expected);
      if (held || puts != 0) {
        return absl::StrCat("Agreement: failed at revision ", rev, " where its compare held");
      }
      if (t.responses_size() != 1 || !t.responses(0).has_response_range() ||
          t.responses(0).response_range().kvs_size() != (at ? 1 : 0) ||
          (at && t.responses(0).response_range().kvs(0).SerializeAsString() != at->SerializeAsString())) {
        return absl::StrCat("Agreement: its failure branch read differs from the key at ", rev);
      }
      return "";
    }
    case KvOp::kGet:
    case KvOp::kSerializableGet:
    case KvOp::kRange: {
      etcdserverpb::RangeResponse g;
      if (!g.ParseFromString(r.response)) return "unparsable response";
      const int64_t rev = g.header().revision();
      absl::StatusOr<etcdserverpb::RangeResponse> want = ref.RangeAt(RangeRequestFor(r), rev);
      if (!want.ok()) {
        return absl::StrCat("Agreement: read at revision ", rev, ", which the reference refuses: ",
                            want.status().ToString());
      }
      if (!SameKvs(g.kvs(), want->kvs()) || g.count() != want->count() || g.more() != want->more()) {
        return absl::StrCat("Agreement: read at revision ", rev,
                            " differs from the reference's range there");
      }
      if (r.op != KvOp::kSerializableGet) {
        const int64_t fresh = ref.RevisionBefore(r.start);
        if (rev < fresh) {
          return absl::StrCat("Linearizability: a stale read at revision ", rev, ": revision ",
                              fresh, " existed before it started");
        }
      }
      return "";
    }
    case KvOp::kCompact: return "";
  }
  return "";
}

}  // namespace keel::sim
