#include "core/server/register.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/bytes.h"

namespace keel::server {

absl::Status Register::Apply(LogIndex index, uint64_t request_id, std::string_view command,
                             const ApplyContext& context) {
  KEEL_ASSERT(index > applied_);
  applied_ = index;
  // A duplicate of a request seen before has that request's fate: applied once, or
  // rejected for good (it must not slip in after the alarm is disarmed).
  // The duplicate of a rejected request reports the rejection again: its client may be
  // waiting on this copy, the first having been skipped by a snapshot install.
  if (auto [it, inserted] = seen_.try_emplace(request_id, context.nospace); !inserted) {
    return it->second ? NoSpaceError() : absl::OkStatus();
  }
  if (context.nospace) {
    rejected_.push_back(request_id);
    return NoSpaceError();
  }
  values_.push_back({request_id, index, std::string(command)});
  if (observer_) observer_(values_.back());
  return absl::OkStatus();
}

std::string Register::TakeSnapshot() const {
  size_t bytes = 16 + 8 * rejected_.size();
  for (const Value& v : values_) bytes += 24 + v.data.size();
  std::string out;
  out.reserve(bytes);
  PutU64(&out, values_.size());
  for (const Value& v : values_) {
    PutU64(&out, v.request_id);
    PutU64(&out, v.index.value);
    PutU64(&out, v.data.size());
    out += v.data;
  }
  PutU64(&out, rejected_.size());
  for (uint64_t id : rejected_) PutU64(&out, id);
  return out;
}

absl::Status Register::Parse(LogIndex index, std::string_view data, State* state) {
  std::vector<Value>* values = &state->values;
  absl::btree_map<uint64_t, bool>* seen = &state->seen;
  ByteReader r(data);
  uint64_t count = 0;
  if (!r.U64(&count)) return absl::DataLossError("register snapshot header is corrupt");
  for (uint64_t k = 0; k < count; ++k) {
    Value v;
    uint64_t at = 0;
    uint64_t size = 0;
    if (!r.U64(&v.request_id) || !r.U64(&at) || !r.U64(&size) || !r.Bytes(size, &v.data)) {
      return absl::DataLossError(absl::StrCat("register snapshot truncated at value ", k));
    }
    v.index = LogIndex(at);
    if (at == 0 || at > index.value || (!values->empty() && values->back().index >= v.index) ||
        !seen->try_emplace(v.request_id, false).second) {
      return absl::DataLossError("register snapshot values out of order or duplicated");
    }
    values->push_back(std::move(v));
  }
  uint64_t rejected = 0;
  if (!r.U64(&rejected)) return absl::DataLossError("register snapshot truncated at rejections");
  for (uint64_t k = 0; k < rejected; ++k) {
    uint64_t id = 0;
    if (!r.U64(&id)) return absl::DataLossError("register snapshot truncated at rejections");
    if (!seen->try_emplace(id, true).second) {
      return absl::DataLossError("register snapshot names a request twice");
    }
    state->rejected.push_back(id);
  }
  if (!r.Done()) return absl::DataLossError("register snapshot has trailing bytes");
  return absl::OkStatus();
}

absl::Status Register::CheckSnapshot(LogIndex index, std::string_view data) const {
  State state;
  return Parse(index, data, &state);
}

absl::Status Register::Restore(LogIndex index, std::string_view data) {
  State state;
  if (absl::Status st = Parse(index, data, &state); !st.ok()) return st;
  applied_ = index;
  values_ = std::move(state.values);
  seen_ = std::move(state.seen);
  rejected_ = std::move(state.rejected);
  return absl::OkStatus();
}

}  // namespace keel::server
