#include "sim/kv_reference.h"

#include "absl/strings/str_cat.h"
#include "core/assert.h"
#include "core/etcdpb/rpc.pb.h"
#include "core/lease/lease.pb.h"
#include "core/server/command.pb.h"

namespace keel::sim {

// Collects the events the reference machine reports.
class KvReference::Recorder : public server::KvStateMachine::Listener {
 public:
  explicit Recorder(KvReference* ref) : ref_(ref) {}
  void OnEvents(const std::vector<mvccpb::Event>& events) override {
    for (const mvccpb::Event& e : events) {
      ref_->events_[e.kv().mod_revision()].push_back(e);
      if (e.type() == mvccpb::Event::PUT) ++ref_->puts_[{e.kv().key(), e.kv().value()}];
    }
  }
  void OnLeaseCheckpoint(const leasepb::Checkpoint&, const std::vector<int64_t>& revoked) override {
    for (int64_t id : revoked) ref_->revocations_.push_back({id, ref_->feeding_at_, true});
  }
  void OnLeaseRevoked(int64_t id) override {
    ref_->revocations_.push_back({id, ref_->feeding_at_, false});
  }
  void OnRestored() override {}

 private:
  KvReference* ref_;
};

KvReference::KvReference(const server::KvConfig& config)
    : machine_(std::make_unique<server::KvStateMachine>(&backend_, config, Logger())),
      recorder_(std::make_unique<Recorder>(this)) {
  KEEL_ASSERT(machine_->Open().ok());
  machine_->SetListener(recorder_.get());
}

KvReference::~KvReference() = default;

std::string KvReference::OnApply(LogIndex index, uint64_t request_id, std::string_view command,
                                  const server::StateMachine::ApplyContext& context, Nanos now) {
  if (index <= machine_->applied()) {
    auto it = command_at_.find(index.value);
    if (it != command_at_.end() && it->second != command) {
      return absl::StrCat("State Machine Safety: two different commands applied at index ",
                          index.value);
    }
    return "";
  }
  // Indexes in between carried no command for the machine (a leader's no-op, an alarm).
  command_at_[index.value] = std::string(command);
  // Compactions are left out: the checks read every revision.
  serverpb::Command c;
  const bool compaction = c.ParseFromArray(command.data(), static_cast<int>(command.size())) &&
                          c.has_compaction();
  const int64_t before = revision();
  feeding_at_ = now;
  server::StateMachine::ApplyContext ctx = context;
  ctx.response = nullptr;
  (void)machine_->Apply(index, request_id, compaction ? std::string_view() : command, ctx);
  KEEL_ASSERT(machine_->health().ok());
  for (int64_t r = before + 1; r <= revision(); ++r) first_seen_.push_back(now);
  revision_after_[index.value] = revision();
  return "";
}

std::optional<int64_t> KvReference::RevisionAfter(LogIndex index) const {
  auto it = revision_after_.find(index.value);
  if (it == revision_after_.end()) return std::nullopt;
  return it->second;
}

int64_t KvReference::revision() const { return machine_->store().revision(); }

int64_t KvReference::RevisionBefore(Nanos t) const {
  // first_seen_ grows with revisions and with time.
  auto it = std::lower_bound(first_seen_.begin(), first_seen_.end(), t);
  return 1 + static_cast<int64_t>(it - first_seen_.begin());
}

absl::StatusOr<etcdserverpb::RangeResponse> KvReference::RangeAt(
    const etcdserverpb::RangeRequest& r, int64_t rev) const {
  etcdserverpb::RangeRequest at = r;
  at.set_revision(rev);
  etcdserverpb::RangeResponse out;
  if (absl::Status st = machine_->applier().Range(at, &out); !st.ok()) return st;
  return out;
}

const std::vector<mvccpb::Event>& KvReference::EventsAt(int64_t rev) const {
  static const std::vector<mvccpb::Event> kNone;
  auto it = events_.find(rev);
  return it == events_.end() ? kNone : it->second;
}

int KvReference::PutsOf(const std::string& key, const std::string& value) const {
  auto it = puts_.find({key, value});
  return it == puts_.end() ? 0 : it->second;
}

}  // namespace keel::sim
