#pragma once
// Named log events with fields (STYLE.md rule 9):
//   logger.Info("BecameLeader").Field("term", term).Field("last", last_index);
// The event is written when the builder goes out of scope. A sink decides where it
// goes: the simulator keeps a trace (and fails a run on any error-level event), keeld
// writes lines to stderr. A disabled severity costs one comparison and no formatting.

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/types.h"

namespace keel {

enum class Severity { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
std::string_view SeverityName(Severity s);

// One field of an event. The key is a string literal at every call site.
struct LogField {
  std::string_view key;
  std::string value;
};

// " key=value key=value" (leading space): the trace's and the tests' form.
std::string FormatFields(std::span<const LogField> fields);

class LogSink {
 public:
  virtual ~LogSink() = default;
  // Sinks that keep fields apart (keeld's JSON lines) override this one; by default the
  // fields are formatted and handed to Write.
  virtual void WriteFields(Severity severity, std::string_view name,
                           std::span<const LogField> fields) {
    Write(severity, name, FormatFields(fields));
  }
  // `fields` is " key=value key=value" (leading space), already formatted.
  virtual void Write(Severity severity, std::string_view name, std::string_view fields) = 0;
};

class LogEvent {
 public:
  LogEvent(LogSink* sink, Severity severity, std::string_view name)
      : sink_(sink), severity_(severity), name_(name) {}
  LogEvent(const LogEvent&) = delete;
  LogEvent& operator=(const LogEvent&) = delete;
  ~LogEvent() {
    if (sink_ != nullptr) sink_->WriteFields(severity_, name_, fields_);
  }

  // `key` must outlive the event: a string literal, as at every call site.
  LogEvent& Field(std::string_view key, const absl::AlphaNum& value) {
    if (sink_ != nullptr) fields_.push_back({key, std::string(value.Piece())});
    return *this;
  }
  LogEvent& Field(std::string_view key, std::string_view value) {
    // Debian's absl keeps its own string_view type: convert std:: views explicitly.
    return Field(key, absl::AlphaNum(absl::string_view(value.data(), value.size())));
  }
  LogEvent& Field(std::string_view key, const char* value) {
    return Field(key, std::string_view(value));
  }
  LogEvent& Field(std::string_view key, const std::string& value) {
    return Field(key, std::string_view(value));
  }
  template <typename Tag>
  LogEvent& Field(std::string_view key, StrongU64<Tag> value) { return Field(key, value.value); }
  // Member ids in hex, as etcd and etcdctl print them (1..9 read the same either way).
  LogEvent& Field(std::string_view key, NodeId value) {
    return Field(key, absl::AlphaNum(absl::Hex(value.value)));
  }
  LogEvent& Field(std::string_view key, LogIndex value) { return Field(key, value.value); }

 private:
  LogSink* sink_;  // null when the severity is disabled
  Severity severity_;
  std::string_view name_;
  std::vector<LogField> fields_;
};

// Logger: a sink plus a threshold; cheap to copy, passed by pointer into the core.
class Logger {
 public:
  Logger() = default;
  Logger(LogSink* sink, Severity min_severity) : sink_(sink), min_(min_severity) {}

  bool Enabled(Severity s) const { return sink_ != nullptr && s >= min_; }
  LogEvent Event(Severity s, std::string_view name) const {
    return LogEvent(Enabled(s) ? sink_ : nullptr, s, name);
  }
  LogEvent Debug(std::string_view name) const { return Event(Severity::kDebug, name); }
  LogEvent Info(std::string_view name) const { return Event(Severity::kInfo, name); }
  LogEvent Warn(std::string_view name) const { return Event(Severity::kWarn, name); }
  LogEvent Error(std::string_view name) const { return Event(Severity::kError, name); }

 private:
  LogSink* sink_ = nullptr;
  Severity min_ = Severity::kInfo;
};

}  // namespace keel
