#pragma once
// MemoryBackend: kv::Backend in ordered maps. The state machine loads a peer's snapshot
// into one to validate it before it touches the node's database; unit tests use it as
// their backend (it can be told to fail the next write, to test that storage failures
// surface).

#include <map>
#include <string>

#include "core/kv/backend.h"

namespace keel::kv {

class MemoryBackend : public Backend {
 public:
  absl::Status PutRevision(Revision rev, std::string_view kv_bytes) override {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    if (!revisions_.emplace(rev, std::string(kv_bytes)).second) {
      return absl::InternalError("revision written twice");
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> GetRevision(Revision rev) const override {
    auto it = revisions_.find(rev);
    if (it == revisions_.end()) return absl::NotFoundError("no such revision");
    return it->second;
  }
  absl::Status DeleteRevision(Revision rev) override {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    revisions_.erase(rev);
    return absl::OkStatus();
  }
  absl::Status ScanRevisions(int64_t from, int64_t to, RevisionVisitor visit) const override {
    for (auto it = revisions_.lower_bound(Revision{from, 0});
         it != revisions_.end() && it->first.main < to; ++it) {
      if (!visit(it->first, it->second)) break;
    }
    return absl::OkStatus();
  }
  absl::Status PutMeta(std::string_view name, int64_t value) override {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    meta_[std::string(name)] = value;
    return absl::OkStatus();
  }
  absl::StatusOr<std::optional<int64_t>> GetMeta(std::string_view name) const override {
    auto it = meta_.find(std::string(name));
    if (it == meta_.end()) return std::optional<int64_t>();
    return std::optional<int64_t>(it->second);
  }
  absl::Status PutLease(int64_t id, std::string_view lease_bytes) override {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    leases_[id] = std::string(lease_bytes);
    return absl::OkStatus();
  }
  absl::Status DeleteLease(int64_t id) override {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    leases_.erase(id);
    return absl::OkStatus();
  }
  absl::Status ScanLeases(LeaseVisitor visit) const override {
    for (const auto& [id, bytes] : leases_) visit(id, bytes);
    return absl::OkStatus();
  }

  absl::Status PutRequestId(uint64_t request_id, int64_t index) override {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    requests_[request_id] = index;
    return absl::OkStatus();
  }
  absl::Status DeleteRequestIdsThrough(int64_t index) override {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    std::erase_if(requests_, [&](const auto& r) { return r.second <= index; });
    return absl::OkStatus();
  }
  absl::Status ScanRequestIds(RequestVisitor visit) const override {
    for (const auto& [id, index] : requests_) visit(id, index);
    return absl::OkStatus();
  }
  absl::Status ClearKeyspace() override {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    revisions_.clear();
    meta_.clear();
    leases_.clear();
    requests_.clear();
    return absl::OkStatus();
  }

  void FailNextWrite() { fail_next_write_ = true; }
  std::map<Revision, std::string>& revisions() { return revisions_; }
  size_t revision_count() const { return revisions_.size(); }

 private:
  absl::Status MaybeFail() {
    if (!fail_next_write_) return absl::OkStatus();
    fail_next_write_ = false;
    return absl::InternalError("injected write failure");
  }

  std::map<Revision, std::string> revisions_;
  std::map<std::string, int64_t> meta_;
  std::map<int64_t, std::string> leases_;
  std::map<uint64_t, int64_t> requests_;
  bool fail_next_write_ = false;
};

}  // namespace keel::kv
