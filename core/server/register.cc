#include "core/server/register.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/assert.h"

namespace keel::server {
namespace {

void PutU64(std::string* out, uint64_t v) {
  char buf[8];
  for (int k = 0; k < 8; ++k) buf[k] = static_cast<char>(v >> (8 * k));
  out->append(buf, 8);
}

class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  bool U64(uint64_t* v) {
    if (data_.size() < 8) return false;
    *v = 0;
    for (int k = 0; k < 8; ++k) *v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[k])) << (8 * k);
    data_.remove_prefix(8);
    return true;
  }
  bool Bytes(uint64_t n, std::string* out) {
    if (data_.size() < n) return false;
    out->assign(data_.substr(0, n));
    data_.remove_prefix(n);
    return true;
  }
  bool Done() const { return data_.empty(); }

 private:
  std::string_view data_;
};

}  // namespace

void Register::Apply(LogIndex index, uint64_t request_id, std::string_view command) {
  KEEL_ASSERT(index > applied_);
  applied_ = index;
  if (!seen_.insert(request_id).second) return;  // a duplicate of an applied request
  values_.push_back({request_id, index, std::string(command)});
  if (observer_) observer_(values_.back());
}

std::string Register::TakeSnapshot() const {
  size_t bytes = 8;
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
  return out;
}

absl::Status Register::Parse(LogIndex index, std::string_view data,
                             std::vector<Value>* values, absl::btree_set<uint64_t>* seen) {
  Reader r(data);
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
        !seen->insert(v.request_id).second) {
      return absl::DataLossError("register snapshot values out of order or duplicated");
    }
    values->push_back(std::move(v));
  }
  if (!r.Done()) return absl::DataLossError("register snapshot has trailing bytes");
  return absl::OkStatus();
}

absl::Status Register::CheckSnapshot(LogIndex index, std::string_view data) const {
  std::vector<Value> values;
  absl::btree_set<uint64_t> seen;
  return Parse(index, data, &values, &seen);
}

absl::Status Register::Restore(LogIndex index, std::string_view data) {
  std::vector<Value> values;
  absl::btree_set<uint64_t> seen;
  if (absl::Status st = Parse(index, data, &values, &seen); !st.ok()) return st;
  applied_ = index;
  values_ = std::move(values);
  seen_ = std::move(seen);
  return absl::OkStatus();
}

}  // namespace keel::server
