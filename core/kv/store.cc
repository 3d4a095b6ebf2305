#include "core/kv/store.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/kv/errors.h"

namespace keel::kv {
namespace {

bool IsTombstone(const mvccpb::KeyValue& kv) { return kv.create_revision() == 0; }

absl::Status Corrupt(Revision rev, const char* what) {
  return absl::DataLossError(absl::StrCat("keyspace record at revision ", rev.main, ".",
                                          rev.sub, ": ", what));
}

// Whatever the backend said, its failure is the node's (kv/errors.h): never an answer
// to a client, even if its code looks like one (a full disk is ResourceExhausted).
absl::Status Fatal(const absl::Status& st) {
  if (st.ok() || IsStorageFailure(st)) return st;
  return absl::InternalError(absl::StrCat("storage: ", st.ToString()));
}

}  // namespace

bool KeyRange::Contains(std::string_view k) const {
  if (end.empty()) return k == key;
  if (end == std::string_view("\0", 1)) return k >= key;
  return k >= key && k < end;
}

Store::Store(Backend* backend, LeaseAttachments* leases) : backend_(backend), leases_(leases) {
  KEEL_ASSERT(backend_ != nullptr);
}

absl::Status Store::Load() {
  KEEL_ASSERT(!writing_);
  index_.clear();
  revision_ = 1;
  absl::StatusOr<std::optional<int64_t>> compacted = backend_->GetMeta(kMetaCompactedRevision);
  if (!compacted.ok()) return Fatal(compacted.status());
  compacted_ = compacted->value_or(-1);
  if (compacted_ < -1) return absl::DataLossError("keyspace: bad compacted revision");
  absl::Status corrupt;
  Revision last;
  absl::Status st = backend_->ScanRevisions(
      0, std::numeric_limits<int64_t>::max(), [&](Revision rev, std::string_view bytes) {
        mvccpb::KeyValue kv;
        if (rev.main <= 0 || rev.sub < 0 || rev <= last) {
          corrupt = Corrupt(rev, "out of order");
        } else if (!kv.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())) ||
                   kv.key().empty() || kv.mod_revision() != rev.main) {
          corrupt = Corrupt(rev, "not a KeyValue of this revision");
        } else if (IsTombstone(kv)) {
          auto it = index_.find(kv.key());
          if (it == index_.end() || !it->second.live()) {
            corrupt = Corrupt(rev, "deletes a key that is not live");
          } else {
            it->second.Tombstone(rev);
            if (leases_ != nullptr) leases_->Detach(kv.key());
          }
        } else if (kv.create_revision() > rev.main || kv.version() < 1) {
          corrupt = Corrupt(rev, "bad create revision or version");
        } else {
          KeyIndex& ki = index_[kv.key()];
          if (ki.live()) {
            ki.Put(rev);
          } else {
            // The first put of a generation that survives: compaction may have dropped
            // the generation's beginning, so creation and version come from the record.
            ki.Restore(Revision{kv.create_revision(), 0}, rev, kv.version());
          }
          if (leases_ != nullptr) leases_->Attach(kv.key(), kv.lease());
        }
        last = rev;
        return corrupt.ok();
      });
  if (!st.ok()) return Fatal(st);
  if (!corrupt.ok()) return corrupt;
  // etcd: a compaction may have dropped the newest record (a tombstone), so the
  // revision is at least the compaction point; a new store is at 1.
  revision_ = std::max({last.main, compacted_, int64_t{1}});
  return absl::OkStatus();
}

absl::Status Store::ReadRevision(Revision rev, mvccpb::KeyValue* kv) const {
  absl::StatusOr<std::string> bytes = backend_->GetRevision(rev);
  if (!bytes.ok()) {
    if (absl::IsNotFound(bytes.status())) return Corrupt(rev, "missing");
    return Fatal(bytes.status());
  }
  if (!kv->ParseFromString(*bytes) || kv->mod_revision() != rev.main) {
    return Corrupt(rev, "not a KeyValue of this revision");
  }
  return absl::OkStatus();
}

absl::StatusOr<RangeResult> Store::Range(KeyRange range, const RangeOptions& options) const {
  RangeResult out;
  if (absl::Status st = RangeAt(range, revision_, options, &out); !st.ok()) return st;
  return out;
}

absl::Status Store::RangeAt(KeyRange range, int64_t current, const RangeOptions& options,
                            RangeResult* out) const {
  if (options.revision > current) return ErrFutureRev();
  const int64_t at = options.revision <= 0 ? current : options.revision;
  if (at < compacted_) return ErrCompacted();
  out->revision = current;
  out->count = 0;
  out->kvs.clear();
  return VisitRange(range, [&](const std::string& key, const KeyIndex& ki) -> absl::Status {
    std::optional<KeyIndex::Visible> v = ki.Get(at);
    if (!v) return absl::OkStatus();
    ++out->count;
    if (options.count_only) return absl::OkStatus();
    if (options.limit > 0 && static_cast<int64_t>(out->kvs.size()) >= options.limit) {
      return absl::OkStatus();
    }
    mvccpb::KeyValue& kv = out->kvs.emplace_back();
    if (absl::Status st = ReadRevision(v->modified, &kv); !st.ok()) return st;
    if (kv.key() != key || IsTombstone(kv)) return Corrupt(v->modified, "not the indexed put");
    return absl::OkStatus();
  });
}

template <typename Fn>
absl::Status Store::VisitRange(KeyRange range, Fn visit) const {
  if (range.end.empty()) {
    auto it = index_.find(range.key);
    return it == index_.end() ? absl::OkStatus() : visit(it->first, it->second);
  }
  const bool to_infinity = range.end == std::string_view("\0", 1);
  if (!to_infinity && range.end <= range.key) return absl::OkStatus();
  auto last = to_infinity ? index_.end() : index_.lower_bound(range.end);
  for (auto it = index_.lower_bound(range.key); it != last; ++it) {
    if (absl::Status st = visit(it->first, it->second); !st.ok()) return st;
  }
  return absl::OkStatus();
}

Store::Writer Store::Write() {
  KEEL_ASSERT(!writing_);
  writing_ = true;
  return Writer(this);
}

absl::Status Store::Compact(int64_t rev) {
  KEEL_ASSERT(!writing_);
  if (rev <= compacted_) return ErrCompacted();
  if (rev > revision_) return ErrFutureRev();
  std::vector<Revision> dropped;
  for (auto it = index_.begin(); it != index_.end();) {
    it->second.Compact(rev, &dropped);
    it = it->second.empty() ? index_.erase(it) : std::next(it);
  }
  for (Revision r : dropped) {
    if (absl::Status st = backend_->DeleteRevision(r); !st.ok()) return Fatal(st);
  }
  if (absl::Status st = backend_->PutMeta(kMetaCompactedRevision, rev); !st.ok()) return Fatal(st);
  compacted_ = rev;
  return absl::OkStatus();
}

absl::Status Store::Events(int64_t from, int64_t to, std::vector<mvccpb::Event>* out) const {
  KEEL_ASSERT(compacted_ < from);
  absl::Status corrupt;
  absl::Status st = backend_->ScanRevisions(from, to, [&](Revision rev, std::string_view bytes) {
    mvccpb::Event& ev = out->emplace_back();
    mvccpb::KeyValue* kv = ev.mutable_kv();
    if (!kv->ParseFromArray(bytes.data(), static_cast<int>(bytes.size())) ||
        kv->mod_revision() != rev.main) {
      corrupt = Corrupt(rev, "not a KeyValue of this revision");
      return false;
    }
    ev.set_type(IsTombstone(*kv) ? mvccpb::Event::DELETE : mvccpb::Event::PUT);
    return true;
  });
  return st.ok() ? corrupt : Fatal(st);
}

void Store::CheckInvariants() const {
  for (const auto& [key, ki] : index_) {
    KEEL_ASSERT(!key.empty() && !ki.empty());
    ki.CheckInvariants();
    KEEL_ASSERT(ki.modified().main <= revision_ + (writing_ ? 1 : 0));
  }
  KEEL_ASSERT(compacted_ <= revision_);
}

Store::Writer::Writer(Writer&& other) noexcept
    : store_(other.store_), changes_(std::move(other.changes_)), ended_(other.ended_) {
  other.ended_ = true;
}

Store::Writer::~Writer() {
  // A Writer must be ended: its changes are already in the index and the backend.
  KEEL_ASSERT(ended_);
}

absl::StatusOr<RangeResult> Store::Writer::Range(KeyRange range,
                                                 const RangeOptions& options) const {
  RangeResult out;
  const int64_t current = store_->revision_ + (changed() ? 1 : 0);
  if (absl::Status st = store_->RangeAt(range, current, options, &out); !st.ok()) return st;
  return out;
}

absl::Status Store::Writer::Put(std::string_view key, std::string_view value, int64_t lease) {
  KEEL_ASSERT(!ended_ && !key.empty());
  const Revision rev{write_revision(), static_cast<int64_t>(changes_.size())};
  mvccpb::KeyValue kv;
  kv.set_key(std::string(key));
  kv.set_value(std::string(value));
  kv.set_mod_revision(rev.main);
  kv.set_lease(lease);
  auto it = store_->index_.find(key);
  std::optional<KeyIndex::Visible> prev;
  if (it != store_->index_.end()) prev = it->second.Get(rev.main);
  kv.set_create_revision(prev ? prev->created.main : rev.main);
  kv.set_version(prev ? prev->version + 1 : 1);
  if (absl::Status st = store_->backend_->PutRevision(rev, kv.SerializeAsString()); !st.ok()) {
    return Fatal(st);
  }
  if (it == store_->index_.end()) it = store_->index_.try_emplace(std::string(key)).first;
  it->second.Put(rev);
  if (store_->leases_ != nullptr) store_->leases_->Attach(key, lease);
  mvccpb::Event& ev = changes_.emplace_back();
  ev.set_type(mvccpb::Event::PUT);
  *ev.mutable_kv() = std::move(kv);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Store::Writer::DeleteRange(KeyRange range,
                                                   std::vector<mvccpb::KeyValue>* previous) {
  KEEL_ASSERT(!ended_);
  const int64_t at = store_->revision_ + (changed() ? 1 : 0);
  KEEL_ASSERT(!range.key.empty());
  // The live keys, collected first: deleting changes the index under the walk.
  std::vector<std::string> keys;
  absl::Status st = store_->VisitRange(range, [&](const std::string& key, const KeyIndex& ki) {
    std::optional<KeyIndex::Visible> v = ki.Get(at);
    if (!v) return absl::OkStatus();
    keys.push_back(key);
    if (previous == nullptr) return absl::OkStatus();
    return store_->ReadRevision(v->modified, &previous->emplace_back());
  });
  if (!st.ok()) return st;
  for (const std::string& key : keys) {
    const Revision rev{write_revision(), static_cast<int64_t>(changes_.size())};
    mvccpb::KeyValue tomb;
    tomb.set_key(key);
    tomb.set_mod_revision(rev.main);
    if (absl::Status st = store_->backend_->PutRevision(rev, tomb.SerializeAsString());
        !st.ok()) {
      return Fatal(st);
    }
    store_->index_.find(key)->second.Tombstone(rev);
    if (store_->leases_ != nullptr) store_->leases_->Detach(key);
    mvccpb::Event& ev = changes_.emplace_back();
    ev.set_type(mvccpb::Event::DELETE);
    *ev.mutable_kv() = std::move(tomb);
  }
  return static_cast<int64_t>(keys.size());
}

std::vector<mvccpb::Event> Store::Writer::End() {
  KEEL_ASSERT(!ended_ && store_->writing_);
  ended_ = true;
  store_->writing_ = false;
  if (!changes_.empty()) ++store_->revision_;
  return std::move(changes_);
}

}  // namespace keel::kv
