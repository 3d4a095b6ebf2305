// keeld: keel's server. Flags are etcd's (net/keeld_config.h); logs are JSON lines on
// stderr (net/json_log.h). With no flags it is a single member serving clients on
// 127.0.0.1:2379 with its data in ./default.keel.
#include <cstdio>

#include "net/json_log.h"
#include "net/keeld_config.h"
#include "net/member.h"

int main(int argc, char** argv) {
  keel::net::ParsedFlags flags = keel::net::ParseKeeldFlags(argc, argv);
  if (flags.exit) {
    std::fputs(flags.output.c_str(), flags.exit_code == 0 ? stdout : stderr);
    return flags.exit_code;
  }
  keel::net::JsonLogSink sink(stderr);
  keel::net::KeelMember member(std::move(flags.config), sink);
  if (absl::Status st = member.Start(); !st.ok()) {
    keel::Logger(&sink, keel::Severity::kError).Error("CannotStart").Field("error", st.message());
    return 1;
  }
  return member.Run();
}
