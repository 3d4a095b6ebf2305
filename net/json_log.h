#pragma once
// JsonLogSink: keeld's log, one JSON object a line, as etcd's zap logger writes them:
//   {"level":"info","ts":"2026-11-26T12:00:00.123Z","msg":"BecameLeader","term":"3"}
// Field values are strings (the core formats them); keys never collide with the
// envelope's because the core's keys are lower_snake names of its own choosing.
// Safe to use from several threads (gRPC's threads log too): a line is written whole.

#include <cstdio>
#include <mutex>
#include <string>

#include "core/log.h"

namespace keel::net {

class JsonLogSink : public LogSink {
 public:
  explicit JsonLogSink(std::FILE* out = stderr) : out_(out) {}

  void WriteFields(Severity severity, std::string_view name,
                   std::span<const LogField> fields) override;
  void Write(Severity severity, std::string_view name, std::string_view fields) override;

 private:
  std::FILE* out_;
  std::mutex mu_;
};

// Appends `s` as a JSON string literal (quotes included), escaping as RFC 8259 asks.
// Bytes that are not valid UTF-8 are written as \ufffd, so every line parses.
void AppendJsonString(std::string* out, std::string_view s);

}  // namespace keel::net
