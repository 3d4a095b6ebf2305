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

}  // namespace keel
