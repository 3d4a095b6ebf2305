#include "core/log.h"

namespace keel {

std::string_view SeverityName(Severity s) {
  switch (s) {
    case Severity::kDebug: return "DEBUG";
    case Severity::kInfo: return "INFO";
    case Severity::kWarn: return "WARN";
    case Severity::kError: return "ERROR";
  }
  return "?";
}

std::string FormatFields(std::span<const LogField> fields) {
  std::string out;
  for (const LogField& f : fields) {
    absl::StrAppend(&out, " ", absl::string_view(f.key.data(), f.key.size()), "=", f.value);
  }
  return out;
}

}  // namespace keel
