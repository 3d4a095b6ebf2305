// Parser for the scenario line language (sim/scenario.h; the language is documented in
// scenarios/README.md).
//
// Each line is parsed on its own, in file order, straight into the Scenario. That is
// why `cluster` must come before any step or expectation (node references are checked
// against the cluster size as they are read) and why a label must be bound on an earlier
// line than its use. What needs the whole file (that `run` exists, that every step and
// window fits inside it) is checked by Finish(), which then sorts the steps. The first
// problem ends the parse: the caller never sees a partly parsed Scenario.
//
// Every helper below returns a bare message ("unknown step 'explode'"); Parser::Parse()
// adds the "name:LINE: " prefix in one place.

#include "sim/scenario.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/types/span.h"

namespace keel::sim {
namespace {

using Tokens = std::vector<std::string>;
using Args = absl::Span<const std::string>;

// Limits (STYLE.md rule 5). A scenario is a story a person reads, so these are far above
// anything hand-written; they only stop a corrupt or hostile file from growing without end.
constexpr size_t kLineCountMax = 100'000;
constexpr size_t kStepCountMax = 10'000;
constexpr size_t kExpectationCountMax = 1'000;
constexpr size_t kLabelBytesMax = 32;
// Untrusted text echoed in a message is escaped and cut to this length.
constexpr size_t kQuotedBytesMax = 40;

constexpr Nanos kRunMax = std::chrono::hours(1);
constexpr Nanos kTickMin = Millis(1);
constexpr Nanos kTickMax = std::chrono::seconds(10);
constexpr int kElectionTicksMin = 2;
constexpr int kElectionTicksMax = 1000;
constexpr int kClientsMax = 64;
constexpr double kDriftMagnitudeMax = 0.5;  // exclusive: a clock must still move forward

absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// 'text', escaped so that control bytes from the file cannot garble a terminal or a log.
std::string Quote(absl::string_view text) {
  if (text.size() > kQuotedBytesMax) {
    return absl::StrCat("'", absl::CHexEscape(text.substr(0, kQuotedBytesMax)), "...'");
  }
  return absl::StrCat("'", absl::CHexEscape(text), "'");
}

bool AllDigits(absl::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), absl::ascii_isdigit);
}

template <typename Entry, size_t N>
const Entry* FindByName(const Entry (&table)[N], absl::string_view name) {
  for (const Entry& entry : table) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------
// Durations

struct DurationUnit {
  absl::string_view name;
  int64_t nanos;
};
constexpr DurationUnit kDurationUnits[] = {
    {"us", 1'000}, {"ms", 1'000'000}, {"s", 1'000'000'000}, {"m", 60'000'000'000}};

// Exact decimal arithmetic, no floating point: "0.1s" must be 100000000ns on every
// machine, or two runs of one seed could differ.
absl::StatusOr<Nanos> ParseDurationText(absl::string_view text) {
  if (text.empty()) return Invalid("missing duration");
  if (text[0] == '-') return Invalid(absl::StrCat("duration ", Quote(text), " must be >= 0"));
  size_t unit_at = 0;
  while (unit_at < text.size() && (absl::ascii_isdigit(text[unit_at]) || text[unit_at] == '.')) {
    ++unit_at;
  }
  absl::string_view number = text.substr(0, unit_at);
  absl::string_view unit_name = text.substr(unit_at);
  std::vector<absl::string_view> parts = absl::StrSplit(number, '.');
  if (!AllDigits(parts[0]) || parts.size() > 2 || (parts.size() == 2 && !AllDigits(parts[1]))) {
    return Invalid(absl::StrCat("malformed duration ", Quote(text),
                                " (expected a number and a unit, like 800ms or 1.5s)"));
  }
  if (unit_name.empty()) {
    return Invalid(absl::StrCat("duration ", Quote(text), " has no unit (us, ms, s or m)"));
  }
  const DurationUnit* unit = FindByName(kDurationUnits, unit_name);
  if (unit == nullptr) {
    return Invalid(absl::StrCat("duration ", Quote(text), " has an unknown unit ", Quote(unit_name),
                                " (expected us, ms, s or m)"));
  }
  const absl::Status too_large = Invalid(absl::StrCat("duration ", Quote(text), " is too large"));
  uint64_t whole = 0;
  if (!absl::SimpleAtoi(parts[0], &whole)) return too_large;  // all digits: only overflow fails
  absl::uint128 nanos = absl::uint128(whole) * absl::uint128(unit->nanos);
  if (parts.size() == 2) {
    absl::string_view fraction = parts[1];
    while (!fraction.empty() && fraction.back() == '0') fraction.remove_suffix(1);
    // Past 11 significant fraction digits no unit (at most 6e10 ns) yields whole nanoseconds.
    const absl::Status too_fine =
        Invalid(absl::StrCat("duration ", Quote(text), " is finer than a nanosecond"));
    if (fraction.size() > 11) return too_fine;
    uint64_t digits = 0;
    if (!fraction.empty() && !absl::SimpleAtoi(fraction, &digits)) return too_fine;
    absl::uint128 scale = 1;
    for (size_t i = 0; i < fraction.size(); ++i) scale *= 10;
    const absl::uint128 scaled = absl::uint128(digits) * absl::uint128(unit->nanos);
    if (scaled % scale != 0) return too_fine;
    nanos += scaled / scale;
  }
  if (nanos > absl::uint128(std::numeric_limits<int64_t>::max())) return too_large;
  return Nanos(static_cast<int64_t>(absl::Uint128Low64(nanos)));
}

// For messages: the largest unit that shows `d` exactly, so 90s prints as "90s", not "1.5m".
std::string FormatDuration(Nanos d) {
  if (d == Nanos(0)) return "0s";
  for (auto it = std::rbegin(kDurationUnits); it != std::rend(kDurationUnits); ++it) {
    if (d.count() % it->nanos == 0) return absl::StrCat(d.count() / it->nanos, it->name);
  }
  return absl::StrCat(d.count(), "ns");
}

// `min..max`, both durations, min <= max.
absl::StatusOr<std::pair<Nanos, Nanos>> ParseDurationRange(absl::string_view text) {
  const size_t dots = text.find("..");
  if (dots == absl::string_view::npos) {
    return Invalid(absl::StrCat("expected a range like 1ms..5ms, got ", Quote(text)));
  }
  absl::StatusOr<Nanos> min = ParseDurationText(text.substr(0, dots));
  if (!min.ok()) return min.status();
  absl::StatusOr<Nanos> max = ParseDurationText(text.substr(dots + 2));
  if (!max.ok()) return max.status();
  if (*min > *max) {
    return Invalid(absl::StrCat("range ", Quote(text), " has its minimum above its maximum"));
  }
  return std::make_pair(*min, *max);
}

// ---------------------------------------------------------------------------------------
// Numbers

absl::StatusOr<int> ParseIntInRange(absl::string_view text, absl::string_view what, int lo,
                                    int hi) {
  int value = 0;
  if (!AllDigits(text) || !absl::SimpleAtoi(text, &value) || value < lo || value > hi) {
    return Invalid(
        absl::StrFormat("%s must be an integer in %d..%d, got %s", what, lo, hi, Quote(text)));
  }
  return value;
}

// Plain decimal only: SimpleAtod alone would also take "inf", "nan", "1e9" and hex floats,
// none of which a person writing a fault story means.
absl::StatusOr<double> ParseFinite(absl::string_view text, absl::string_view what) {
  absl::string_view digits = text;
  if (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) digits.remove_prefix(1);
  std::vector<absl::string_view> parts = absl::StrSplit(digits, '.');
  double value = 0;
  if (!AllDigits(parts[0]) || parts.size() > 2 || (parts.size() == 2 && !AllDigits(parts[1])) ||
      !absl::SimpleAtod(text, &value) || !std::isfinite(value)) {
    return Invalid(absl::StrCat(what, " must be a decimal number like 0.05, got ", Quote(text)));
  }
  return value;
}

// A probability in [0, 1), or in [0, 1] when `one_allowed`. A loss of exactly 1 is refused
// for the network: a link that drops everything is a `cut`, and says so.
absl::StatusOr<double> ParseProbability(absl::string_view text, absl::string_view what,
                                        bool one_allowed = false) {
  absl::StatusOr<double> value = ParseFinite(text, what);
  if (!value.ok()) return value.status();
  const bool in_range = *value >= 0 && (one_allowed ? *value <= 1 : *value < 1);
  if (!in_range) {
    return Invalid(absl::StrCat(what, " ", Quote(text), " is out of range: must be in [0, 1",
                                one_allowed ? "]" : ")"));
  }
  return value;
}

absl::StatusOr<uint64_t> ParseSeed(absl::string_view text) {
  uint64_t seed = 0;
  const bool hex = absl::StartsWith(text, "0x") || absl::StartsWith(text, "0X");
  absl::string_view digits = hex ? text.substr(2) : text;
  const bool digits_ok =
      hex ? !digits.empty() && std::all_of(digits.begin(), digits.end(), absl::ascii_isxdigit)
          : AllDigits(digits);
  if (!digits_ok) {
    return Invalid(absl::StrCat("seed must be a decimal or 0x hex integer, got ", Quote(text)));
  }
  const bool fits = hex ? absl::SimpleHexAtoi(digits, &seed) : absl::SimpleAtoi(digits, &seed);
  if (!fits) return Invalid(absl::StrCat("seed ", Quote(text), " does not fit in 64 bits"));
  return seed;
}

// ---------------------------------------------------------------------------------------
// Tokens and node references

// Splits on whitespace after dropping the comment. Inside {...} whitespace is dropped
// instead, so `{n1, n2}` is the one token `{n1,n2}`.
absl::StatusOr<Tokens> Tokenize(absl::string_view line) {
  line = line.substr(0, line.find('#'));
  Tokens tokens;
  std::string token;
  bool in_set = false;
  for (char c : line) {
    if (in_set) {
      if (c == '{') {
        return Invalid(absl::StrCat("malformed node set ", Quote(token + c), ": '{' inside a set"));
      }
      if (c == '}') in_set = false;
      if (!absl::ascii_isspace(static_cast<unsigned char>(c))) token.push_back(c);
      continue;
    }
    if (absl::ascii_isspace(static_cast<unsigned char>(c))) {
      if (!token.empty()) tokens.push_back(std::move(token));
      token.clear();
      continue;
    }
    if (c == '{') in_set = true;
    token.push_back(c);
  }
  if (in_set) return Invalid(absl::StrCat("malformed node set ", Quote(token), ": no closing '}'"));
  if (!token.empty()) tokens.push_back(std::move(token));
  return tokens;
}

std::string RefName(const NodeRef& ref) {
  switch (ref.kind) {
    case NodeRef::Kind::kId:
      return absl::StrCat("n", ref.id.value);
    case NodeRef::Kind::kLeader:
      return "leader";
    case NodeRef::Kind::kFollower:
      return "follower";
    case NodeRef::Kind::kAll:
      return "all";
    case NodeRef::Kind::kLabel:
      return ref.label;
  }
  return "?";
}

bool IsNodeIdSyntax(absl::string_view text) {
  return text.size() >= 2 && text[0] == 'n' && AllDigits(text.substr(1));
}

bool IsLabelSyntax(absl::string_view text) {
  if (text.empty() || !(absl::ascii_islower(text[0]) || text[0] == '_')) return false;
  return std::all_of(text.begin(), text.end(), [](char c) {
    return absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '_';
  });
}

// The name in `as NAME`: label syntax, and not a word that already means a node.
absl::Status CheckLabelName(absl::string_view name) {
  if (!IsLabelSyntax(name)) {
    return Invalid(absl::StrCat("bad label ", Quote(name), " (expected [a-z_][a-z0-9_]*)"));
  }
  if (name.size() > kLabelBytesMax) {
    return Invalid(
        absl::StrCat("label ", Quote(name), " is longer than ", kLabelBytesMax, " characters"));
  }
  if (name == "leader" || name == "follower" || name == "all" || name == "as" ||
      IsNodeIdSyntax(name)) {
    return Invalid(absl::StrCat("label ", Quote(name), " is a reserved word"));
  }
  return absl::OkStatus();
}

// One node reference. `all` only where the caller says a set of nodes makes sense.
absl::StatusOr<NodeRef> ParseNodeRef(absl::string_view text, int cluster, bool all_allowed) {
  NodeRef ref;
  if (text.find_first_of("{},") != absl::string_view::npos) {
    return Invalid(absl::StrCat("expected a single node, got ", Quote(text)));
  }
  if (text == "leader") {
    ref.kind = NodeRef::Kind::kLeader;
  } else if (text == "follower") {
    ref.kind = NodeRef::Kind::kFollower;
  } else if (text == "all") {
    if (!all_allowed) {
      return Invalid("'all' is not allowed here (only in restart, free-disk and expect)");
    }
    ref.kind = NodeRef::Kind::kAll;
  } else if (IsNodeIdSyntax(text)) {
    if (text.size() > 2 && text[1] == '0') {
      return Invalid(absl::StrCat("bad node reference ", Quote(text), " (no leading zeros)"));
    }
    int k = 0;
    if (!absl::SimpleAtoi(text.substr(1), &k) || k < 1 || k > cluster) {
      return Invalid(absl::StrFormat("node %s is out of range: the cluster has n1..n%d",
                                     Quote(text), cluster));
    }
    ref.id = NodeId(static_cast<uint64_t>(k));
  } else if (IsLabelSyntax(text)) {
    ref.kind = NodeRef::Kind::kLabel;
    ref.label = std::string(text);
  } else {
    return Invalid(absl::StrCat("bad node reference ", Quote(text),
                                " (expected nK, leader, follower or a label)"));
  }
  return ref;
}

// `{a,b,...}`: at least one node, none twice, never `all`.
absl::StatusOr<NodeSet> ParseNodeSet(absl::string_view text, int cluster) {
  if (text.size() < 2 || text.front() != '{' || text.back() != '}' ||
      text.find_first_of("{}", 1) != text.size() - 1) {
    return Invalid(absl::StrCat("malformed node set ", Quote(text), " (expected {n1,n2,...})"));
  }
  absl::string_view inner = text.substr(1, text.size() - 2);
  if (inner.empty()) return Invalid("empty node set '{}'");
  NodeSet set;
  for (absl::string_view member : absl::StrSplit(inner, ',')) {
    if (member.empty()) {
      return Invalid(absl::StrCat("malformed node set ", Quote(text), ": empty member"));
    }
    absl::StatusOr<NodeRef> ref = ParseNodeRef(member, cluster, /*all_allowed=*/false);
    if (!ref.ok()) return ref.status();
    if (std::find(set.begin(), set.end(), *ref) != set.end()) {
      return Invalid(absl::StrCat("node set ", Quote(text), " names ", RefName(*ref), " twice"));
    }
    // Distinct references beyond the cluster size must name some node twice at run time.
    if (set.size() == static_cast<size_t>(kClusterSizeMax)) {
      return Invalid(
          absl::StrCat("node set ", Quote(text), " has more than ", kClusterSizeMax, " members"));
    }
    set.push_back(std::move(*ref));
  }
  return set;
}

absl::Status CheckArity(Args args, size_t count, absl::string_view usage) {
  if (args.size() < count) return Invalid(absl::StrCat("missing argument (usage: ", usage, ")"));
  if (args.size() > count) {
    return Invalid(absl::StrCat("unexpected ", Quote(args[count]), " (usage: ", usage, ")"));
  }
  return absl::OkStatus();
}

// `key=value ...` in source order; every key known, none twice, at least one.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseKeyValues(
    Args args, absl::string_view directive, std::initializer_list<absl::string_view> keys) {
  std::string expected;
  for (absl::string_view key : keys)
    absl::StrAppend(&expected, expected.empty() ? "" : ", ", key, "=");
  if (args.empty())
    return Invalid(absl::StrCat("'", directive, "' needs at least one of ", expected));
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const std::string& arg : args) {
    const size_t eq = arg.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size()) {
      return Invalid(absl::StrCat("expected key=value, got ", Quote(arg)));
    }
    std::string key = arg.substr(0, eq);
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
      return Invalid(absl::StrCat("unknown key ", Quote(key), " for '", directive, "' (expected ",
                                  expected, ")"));
    }
    for (const auto& [seen, value] : pairs) {
      if (seen == key) return Invalid(absl::StrCat("key ", Quote(key), " is given twice"));
    }
    pairs.emplace_back(std::move(key), arg.substr(eq + 1));
  }
  return pairs;
}

// ---------------------------------------------------------------------------------------
// Steps and expectations: names

struct StepSpec {
  absl::string_view name;
  StepKind kind;
  absl::string_view usage;
  bool single_node;  // may end with `as NAME`
};
constexpr StepSpec kStepSpecs[] = {
    {"partition", StepKind::kPartition, "partition {A,...} {B,...} [{C,...}...]", false},
    {"isolate", StepKind::kIsolate, "isolate A", true},
    {"cut", StepKind::kCut, "cut A B | cut A -> B", false},
    {"restore", StepKind::kRestore, "restore A B | restore A -> B", false},
    {"heal", StepKind::kHeal, "heal", false},
    {"crash", StepKind::kCrash, "crash A", true},
    {"kill", StepKind::kKill, "kill A", true},
    {"restart", StepKind::kRestart, "restart A|all", true},
    {"pause", StepKind::kPause, "pause A <duration>", true},
    {"skew", StepKind::kSkew, "skew A [+]<duration>", true},
    {"drift", StepKind::kDrift, "drift A <rate>", true},
    {"loss", StepKind::kLoss, "loss <probability>", false},
    {"duplicate", StepKind::kDuplicate, "duplicate <probability>", false},
    {"latency", StepKind::kLatency,
     "latency <min>..<max> | latency A B <min>..<max> | latency A -> B <min>..<max>", false},
    {"swizzle", StepKind::kSwizzle, "swizzle <interval>", false},
    {"flap", StepKind::kFlap, "flap A B <interval> <total>", false},
    {"transfer", StepKind::kTransfer, "transfer A", true},
    {"churn", StepKind::kChurn, "churn <duration>", false},
    {"fail-write", StepKind::kFailWrite, "fail-write A", true},
    {"fail-sync", StepKind::kFailSync, "fail-sync A", true},
    {"fill-disk", StepKind::kFillDisk, "fill-disk A", true},
    {"free-disk", StepKind::kFreeDisk, "free-disk A|all", true},
    {"crash-loop", StepKind::kCrashLoop, "crash-loop A <interval> <count>", true},
    {"crash-in-install", StepKind::kCrashInInstall, "crash-in-install A", true},
};

struct MetricName {
  absl::string_view name;
  Metric metric;
  bool per_node;  // false: counts client requests, so naming nodes would mean nothing
};
constexpr MetricName kMetricNames[] = {
    {"commits", Metric::kCommits, true},    {"leader_commits", Metric::kLeaderCommits, true},
    {"leader_ms", Metric::kLeaderMs, true}, {"elections", Metric::kElections, true},
    {"acked", Metric::kAcked, false},       {"failed", Metric::kFailed, false},
    {"reads", Metric::kReads, false},       {"snapshots", Metric::kSnapshots, true},
    {"crashes", Metric::kCrashes, true},    {"puts", Metric::kPuts, false},
};

struct CompareName {
  absl::string_view name;
  Compare op;
};
constexpr CompareName kCompareNames[] = {
    {"==", Compare::kEq}, {"!=", Compare::kNe}, {"<", Compare::kLt},
    {"<=", Compare::kLe}, {">", Compare::kGt},  {">=", Compare::kGe},
};

// ---------------------------------------------------------------------------------------
// The parser

class Parser {
 public:
  explicit Parser(absl::string_view name) : name_(name) { scenario_.name = name_; }

  absl::StatusOr<Scenario> Parse(absl::string_view text);

 private:
  struct Binding {
    int line = 0;
    Nanos at{0};
  };

  absl::Status ErrorAt(int line, const absl::Status& status) const {
    return Invalid(absl::StrFormat("%s:%d: %s", name_, line, status.message()));
  }
  absl::StatusOr<NodeRef> Node(absl::string_view text, bool all_allowed = false) const {
    return ParseNodeRef(text, scenario_.cluster, all_allowed);
  }

  absl::Status ParseLine(const Tokens& tokens, absl::string_view source);
  absl::Status ParseSetting(const std::string& directive, Args args);
  absl::Status ParseTiming(Args args);
  absl::Status ParseNetwork(Args args);
  absl::Status ParseDisk(Args args);
  absl::Status ParseRaft(Args args);
  absl::Status ParseWorkload(Args args);
  absl::Status ParseRun(Args args);
  absl::Status ParseStep(const Tokens& tokens);
  absl::StatusOr<std::string> TakeLabel(const StepSpec& spec, Args& args) const;
  absl::Status ParseStepArgs(const StepSpec& spec, Args args, Step& step) const;
  absl::Status ParseNodeStep(const StepSpec& spec, Args args, Step& step) const;
  absl::Status ParseLinkStep(const StepSpec& spec, Args args, Step& step) const;
  absl::Status ParsePartition(Args args, Step& step) const;
  absl::Status CheckLabelUse(const NodeRef& ref, const Step* step) const;
  absl::Status BindLabels(const Step& step);
  absl::Status ParseExpectation(const Tokens& tokens, absl::string_view source);
  absl::StatusOr<NodeSet> ParseExpectationNodes(absl::string_view text) const;
  absl::Status Finish(int last_line);

  std::string name_;
  int line_ = 0;
  Scenario scenario_;
  std::map<std::string, int> setting_lines_;  // directive -> the line that set it
  int first_node_use_line_ = 0;               // first step or expectation; 0: none yet
  std::map<std::string, Binding> labels_;     // bound by `as NAME`
};

absl::StatusOr<Scenario> Parser::Parse(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  // A final newline ends the last line; it does not start another.
  if (lines.size() > 1 && lines.back().empty()) lines.pop_back();
  if (lines.size() > kLineCountMax) {
    return ErrorAt(kLineCountMax + 1, Invalid(absl::StrCat("more than ", kLineCountMax, " lines")));
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    line_ = static_cast<int>(i) + 1;
    const absl::string_view source = absl::StripAsciiWhitespace(lines[i]);
    absl::StatusOr<Tokens> tokens = Tokenize(source);
    absl::Status status = tokens.status();
    if (tokens.ok() && !tokens->empty()) status = ParseLine(*tokens, source);
    if (!status.ok()) return ErrorAt(line_, status);
  }
  absl::Status status = Finish(static_cast<int>(lines.size()));
  if (!status.ok()) return status;
  return std::move(scenario_);
}

absl::Status Parser::ParseLine(const Tokens& tokens, absl::string_view source) {
  const std::string& directive = tokens[0];
  if (directive == "at") return ParseStep(tokens);
  if (directive == "expect") return ParseExpectation(tokens, source);
  static constexpr absl::string_view kSettings[] = {"cluster", "seed",     "timing", "raft",
                                                    "network", "disk",     "workload", "run"};
  if (std::find(std::begin(kSettings), std::end(kSettings), directive) == std::end(kSettings)) {
    return Invalid(absl::StrCat("unknown directive ", Quote(directive)));
  }
  const auto [it, first] = setting_lines_.emplace(directive, line_);
  if (!first) {
    return Invalid(absl::StrFormat("duplicate '%s' (first set on line %d)", directive, it->second));
  }
  return ParseSetting(directive, Args(tokens).subspan(1));
}

absl::Status Parser::ParseSetting(const std::string& directive, Args args) {
  if (directive == "cluster") {
    // Node references are range-checked as they are read, against this size.
    if (first_node_use_line_ != 0) {
      return Invalid(absl::StrFormat(
          "'cluster' must come before any step or expectation (the first is on line %d)",
          first_node_use_line_));
    }
    absl::Status arity = CheckArity(args, 1, "cluster N");
    if (!arity.ok()) return arity;
    absl::StatusOr<int> size = ParseIntInRange(args[0], "cluster size", 1, kClusterSizeMax);
    if (!size.ok()) return size.status();
    scenario_.cluster = *size;
    return absl::OkStatus();
  }
  if (directive == "seed") {
    absl::Status arity = CheckArity(args, 1, "seed N");
    if (!arity.ok()) return arity;
    absl::StatusOr<uint64_t> seed = ParseSeed(args[0]);
    if (!seed.ok()) return seed.status();
    scenario_.seed = *seed;
    return absl::OkStatus();
  }
  if (directive == "timing") return ParseTiming(args);
  if (directive == "network") return ParseNetwork(args);
  if (directive == "disk") return ParseDisk(args);
  if (directive == "workload") return ParseWorkload(args);
  if (directive == "raft") return ParseRaft(args);
  return ParseRun(args);
}

absl::Status Parser::ParseTiming(Args args) {
  auto pairs = ParseKeyValues(args, "timing", {"tick", "election"});
  if (!pairs.ok()) return pairs.status();
  for (const auto& [key, value] : *pairs) {
    if (key == "tick") {
      absl::StatusOr<Nanos> tick = ParseDurationText(value);
      if (!tick.ok()) return tick.status();
      if (*tick < kTickMin || *tick > kTickMax) {
        return Invalid(absl::StrCat("tick ", Quote(value), " is out of range: must be in ",
                                    FormatDuration(kTickMin), "..", FormatDuration(kTickMax)));
      }
      scenario_.tick_interval = *tick;
    } else {
      absl::StatusOr<int> ticks =
          ParseIntInRange(value, "election", kElectionTicksMin, kElectionTicksMax);
      if (!ticks.ok()) return ticks.status();
      scenario_.election_ticks = *ticks;
    }
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseNetwork(Args args) {
  auto pairs = ParseKeyValues(args, "network", {"latency", "loss", "duplicate"});
  if (!pairs.ok()) return pairs.status();
  NetworkSettings& network = scenario_.network;
  for (const auto& [key, value] : *pairs) {
    if (key == "latency") {
      auto range = ParseDurationRange(value);
      if (!range.ok()) return range.status();
      std::tie(network.latency_min, network.latency_max) = *range;
    } else {
      absl::StatusOr<double> p = ParseProbability(value, key);
      if (!p.ok()) return p.status();
      (key == "loss" ? network.loss : network.duplicate) = *p;
    }
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseRaft(Args args) {
  auto pairs = ParseKeyValues(args, "raft", {"pre_vote", "check_quorum", "message_bytes",
                                             "inflight", "snapshot"});
  if (!pairs.ok()) return pairs.status();
  for (const auto& [key, value] : *pairs) {
    if (key == "pre_vote" || key == "check_quorum") {
      if (value != "on" && value != "off") {
        return Invalid(absl::StrCat(key, " must be on or off, not ", Quote(value)));
      }
      (key == "pre_vote" ? scenario_.pre_vote : scenario_.check_quorum) = value == "on";
    } else if (key == "snapshot") {
      absl::StatusOr<int> n = ParseIntInRange(value, key, 5, 1000000);
      if (!n.ok()) return n.status();
      scenario_.snapshot_entries = static_cast<uint64_t>(*n);
    } else {
      absl::StatusOr<int> n = key == "message_bytes"
                                  ? ParseIntInRange(value, key, 1, 64 << 20)
                                  : ParseIntInRange(value, key, 1, 4096);
      if (!n.ok()) return n.status();
      (key == "message_bytes" ? scenario_.message_bytes_max : scenario_.inflight_messages_max) =
          static_cast<size_t>(*n);
    }
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseDisk(Args args) {
  auto pairs = ParseKeyValues(args, "disk", {"fsync", "spikes", "crash_in_sync", "torn"});
  if (!pairs.ok()) return pairs.status();
  for (const auto& [key, value] : *pairs) {
    if (key == "fsync") {
      auto range = ParseDurationRange(value);
      if (!range.ok()) return range.status();
      std::tie(scenario_.disk.fsync_min, scenario_.disk.fsync_max) = *range;
    } else if (key == "crash_in_sync" || key == "spikes") {
      absl::StatusOr<double> p = ParseProbability(value, key);
      if (!p.ok()) return p.status();
      if (key == "spikes") {
        scenario_.disk.fsync_spike_probability = *p;
      } else {
        scenario_.disk.crash_in_sync_probability = *p;
        scenario_.disk.crash_in_vote_sync_probability = *p;
      }
    } else {
      if (value != "on" && value != "off") {
        return Invalid(absl::StrCat("torn must be on or off, not ", Quote(value)));
      }
      scenario_.disk.torn_writes = value == "on";
    }
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseWorkload(Args args) {
  auto pairs = ParseKeyValues(args, "workload",
                              {"clients", "think", "timeout", "reads", "registrars", "abandon",
                               "watchers"});
  if (!pairs.ok()) return pairs.status();
  WorkloadSettings& workload = scenario_.workload;
  for (const auto& [key, value] : *pairs) {
    if (key == "clients") {
      absl::StatusOr<int> clients = ParseIntInRange(value, "clients", 0, kClientsMax);
      if (!clients.ok()) return clients.status();
      workload.clients = *clients;
    } else if (key == "registrars" || key == "watchers") {
      absl::StatusOr<int> n = ParseIntInRange(value, key, 0, kClientsMax);
      if (!n.ok()) return n.status();
      (key == "registrars" ? workload.registrars : workload.watchers) = *n;
    } else if (key == "reads" || key == "abandon") {
      absl::StatusOr<double> p = ParseProbability(value, key, /*one_allowed=*/true);
      if (!p.ok()) return p.status();
      (key == "reads" ? workload.read_fraction : workload.abandon_probability) = *p;
    } else {
      absl::StatusOr<Nanos> d = ParseDurationText(value);
      if (!d.ok()) return d.status();
      // A zero timeout would fail every request before it could be sent.
      if (key == "timeout" && *d == Nanos(0)) return Invalid("timeout must be > 0");
      (key == "think" ? workload.think : workload.timeout) = *d;
    }
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseRun(Args args) {
  absl::Status arity = CheckArity(args, 1, "run <duration>");
  if (!arity.ok()) return arity;
  absl::StatusOr<Nanos> run = ParseDurationText(args[0]);
  if (!run.ok()) return run.status();
  if (*run == Nanos(0) || *run > kRunMax) {
    return Invalid(absl::StrCat("run length ", Quote(args[0]),
                                " is out of range: must be > 0 and <= ", FormatDuration(kRunMax)));
  }
  scenario_.run_for = *run;
  return absl::OkStatus();
}

absl::Status Parser::ParseStep(const Tokens& tokens) {
  if (tokens.size() < 3) return Invalid("missing step (usage: at <time> <step> ...)");
  if (scenario_.steps.size() == kStepCountMax) {
    return Invalid(absl::StrCat("more than ", kStepCountMax, " steps"));
  }
  if (first_node_use_line_ == 0) first_node_use_line_ = line_;
  Step step;
  step.line = line_;
  absl::StatusOr<Nanos> at = ParseDurationText(tokens[1]);
  if (!at.ok()) return at.status();
  step.at = *at;
  const StepSpec* spec = FindByName(kStepSpecs, tokens[2]);
  if (spec == nullptr) return Invalid(absl::StrCat("unknown step ", Quote(tokens[2])));
  step.kind = spec->kind;
  Args args = Args(tokens).subspan(3);
  absl::StatusOr<std::string> label = TakeLabel(*spec, args);
  if (!label.ok()) return label.status();
  absl::Status status = ParseStepArgs(*spec, args, step);
  if (!status.ok()) return status;
  if (!label->empty() && step.a.kind == NodeRef::Kind::kAll) {
    return Invalid("'as' needs a single node, not 'all'");
  }
  step.label = std::move(*label);
  status = BindLabels(step);
  if (!status.ok()) return status;
  scenario_.steps.push_back(std::move(step));
  return absl::OkStatus();
}

// Removes a trailing `as NAME` from `args` and returns NAME ("" when there is none).
absl::StatusOr<std::string> Parser::TakeLabel(const StepSpec& spec, Args& args) const {
  const auto as = std::find(args.begin(), args.end(), "as");
  if (as == args.end()) return std::string();
  if (!spec.single_node) {
    return Invalid(
        absl::StrCat("'as' is only allowed on single-node steps, not '", spec.name, "'"));
  }
  const size_t at = static_cast<size_t>(as - args.begin());
  if (at + 1 == args.size()) return Invalid("missing label after 'as'");
  if (at + 2 < args.size()) {
    return Invalid(
        absl::StrCat("unexpected ", Quote(args[at + 2]), " after 'as ", args[at + 1], "'"));
  }
  absl::Status valid = CheckLabelName(args[at + 1]);
  if (!valid.ok()) return valid;
  std::string label = args[at + 1];
  args = args.subspan(0, at);
  return label;
}

absl::Status Parser::ParseStepArgs(const StepSpec& spec, Args args, Step& step) const {
  switch (spec.kind) {
    case StepKind::kPartition:
      return ParsePartition(args, step);
    case StepKind::kCut:
    case StepKind::kRestore:
    case StepKind::kFlap:
      return ParseLinkStep(spec, args, step);
    case StepKind::kHeal:
      return CheckArity(args, 0, spec.usage);
    case StepKind::kLoss:
    case StepKind::kDuplicate: {
      absl::Status arity = CheckArity(args, 1, spec.usage);
      if (!arity.ok()) return arity;
      absl::StatusOr<double> p = ParseProbability(args[0], spec.name);
      if (!p.ok()) return p.status();
      step.value = *p;
      return absl::OkStatus();
    }
    case StepKind::kLatency: {
      if (args.size() > 1) {
        // One link: the ends as for cut/restore, then the range.
        absl::Status link = ParseLinkStep(spec, args.subspan(0, args.size() - 1), step);
        if (!link.ok()) return link;
      } else {
        absl::Status arity = CheckArity(args, 1, spec.usage);
        if (!arity.ok()) return arity;
      }
      auto range = ParseDurationRange(args.back());
      if (!range.ok()) return range.status();
      std::tie(step.duration, step.duration2) = *range;
      return absl::OkStatus();
    }
    case StepKind::kSwizzle:
    case StepKind::kChurn: {
      absl::Status arity = CheckArity(args, 1, spec.usage);
      if (!arity.ok()) return arity;
      absl::StatusOr<Nanos> interval = ParseDurationText(args[0]);
      if (!interval.ok()) return interval.status();
      if (*interval == Nanos(0)) {
        return Invalid(spec.kind == StepKind::kChurn ? "churn duration must be > 0"
                                                     : "swizzle interval must be > 0");
      }
      step.duration = *interval;
      return absl::OkStatus();
    }
    case StepKind::kCrashLoop: {
      absl::Status arity = CheckArity(args, 3, spec.usage);
      if (!arity.ok()) return arity;
      absl::StatusOr<NodeRef> a = Node(args[0]);
      if (!a.ok()) return a.status();
      step.a = std::move(*a);
      absl::StatusOr<Nanos> interval = ParseDurationText(args[1]);
      if (!interval.ok()) return interval.status();
      if (*interval < Millis(1)) return Invalid("crash-loop interval must be >= 1ms");
      step.duration = *interval;
      absl::StatusOr<int> count = ParseIntInRange(args[2], "crash-loop count", 1, 10000);
      if (!count.ok()) return count.status();
      step.count = *count;
      return absl::OkStatus();
    }
    default:
      return ParseNodeStep(spec, args, step);
  }
}

// isolate, crash, kill, restart, transfer, fail-write, fail-sync, fill-disk, free-disk (A),
// pause (A duration), skew (A offset), drift (A rate).
absl::Status Parser::ParseNodeStep(const StepSpec& spec, Args args, Step& step) const {
  const bool has_value = spec.kind == StepKind::kPause || spec.kind == StepKind::kSkew ||
                         spec.kind == StepKind::kDrift;
  absl::Status arity = CheckArity(args, has_value ? 2 : 1, spec.usage);
  if (!arity.ok()) return arity;
  absl::StatusOr<NodeRef> a = Node(args[0], /*all_allowed=*/spec.kind == StepKind::kRestart ||
                                                 spec.kind == StepKind::kFreeDisk);
  if (!a.ok()) return a.status();
  step.a = std::move(*a);
  if (spec.kind == StepKind::kPause) {
    absl::StatusOr<Nanos> length = ParseDurationText(args[1]);
    if (!length.ok()) return length.status();
    if (*length == Nanos(0)) return Invalid("pause length must be > 0");
    step.duration = *length;
  } else if (spec.kind == StepKind::kSkew) {
    // A monotonic clock never goes back; a backwards jump is not a fault keel models.
    absl::string_view offset = args[1];
    if (absl::StartsWith(offset, "-")) return Invalid("clock skew must be >= 0");
    absl::ConsumePrefix(&offset, "+");
    absl::StatusOr<Nanos> skew = ParseDurationText(offset);
    if (!skew.ok()) return skew.status();
    step.offset = *skew;
  } else if (spec.kind == StepKind::kDrift) {
    absl::StatusOr<double> rate = ParseFinite(args[1], "drift");
    if (!rate.ok()) return rate.status();
    if (!(std::fabs(*rate) < kDriftMagnitudeMax)) {
      return Invalid(
          absl::StrCat("drift ", Quote(args[1]), " is out of range: must be > -0.5 and < 0.5"));
    }
    step.value = *rate;
  }
  return absl::OkStatus();
}

// cut and restore (A B | A -> B), flap (A B interval total).
absl::Status Parser::ParseLinkStep(const StepSpec& spec, Args args, Step& step) const {
  const bool flap = spec.kind == StepKind::kFlap;
  step.one_way = !flap && args.size() >= 2 && args[1] == "->";
  const size_t ends = step.one_way ? 3 : 2;
  absl::Status arity = CheckArity(args, flap ? 4 : ends, spec.usage);
  if (!arity.ok()) return arity;
  absl::StatusOr<NodeRef> a = Node(args[0]);
  if (!a.ok()) return a.status();
  absl::StatusOr<NodeRef> b = Node(args[ends - 1]);
  if (!b.ok()) return b.status();
  if (*a == *b) {
    return Invalid(absl::StrCat("a link needs two different nodes, got ", RefName(*a), " twice"));
  }
  step.a = std::move(*a);
  step.b = std::move(*b);
  if (!flap) return absl::OkStatus();
  absl::StatusOr<Nanos> interval = ParseDurationText(args[2]);
  if (!interval.ok()) return interval.status();
  absl::StatusOr<Nanos> total = ParseDurationText(args[3]);
  if (!total.ok()) return total.status();
  if (*interval == Nanos(0) || *interval > *total) {
    return Invalid("flap interval must be > 0 and no longer than the total");
  }
  step.duration = *interval;
  step.duration2 = *total;
  return absl::OkStatus();
}

absl::Status Parser::ParsePartition(Args args, Step& step) const {
  if (args.size() > static_cast<size_t>(kClusterSizeMax)) {
    return Invalid(absl::StrCat("partition has more than ", kClusterSizeMax, " groups"));
  }
  for (const std::string& arg : args) {
    absl::StatusOr<NodeSet> group = ParseNodeSet(arg, scenario_.cluster);
    if (!group.ok()) return group.status();
    for (const NodeRef& ref : *group) {
      for (const NodeSet& earlier : step.groups) {
        if (std::find(earlier.begin(), earlier.end(), ref) != earlier.end()) {
          return Invalid(absl::StrCat(RefName(ref), " is in two partition groups"));
        }
      }
    }
    step.groups.push_back(std::move(*group));
  }
  // Checked after the groups so that `{n1}{n2}` reads as a malformed set, not as one group.
  if (step.groups.size() < 2) {
    return Invalid("partition needs at least two groups (usage: partition {A,...} {B,...})");
  }
  return absl::OkStatus();
}

// A label is usable once bound on an earlier line. For a step, the binding step must also
// not run later: steps are sorted by time, so a binding at a later time would come after.
absl::Status Parser::CheckLabelUse(const NodeRef& ref, const Step* step) const {
  if (ref.kind != NodeRef::Kind::kLabel) return absl::OkStatus();
  const auto it = labels_.find(ref.label);
  if (it == labels_.end()) {
    return Invalid(absl::StrCat("label ", Quote(ref.label), " is not bound by an earlier step"));
  }
  if (step != nullptr && it->second.at > step->at) {
    return Invalid(absl::StrFormat("label %s is bound at %s (line %d), after this step at %s",
                                   Quote(ref.label), FormatDuration(it->second.at), it->second.line,
                                   FormatDuration(step->at)));
  }
  return absl::OkStatus();
}

absl::Status Parser::BindLabels(const Step& step) {
  std::vector<const NodeRef*> refs = {&step.a, &step.b};
  for (const NodeSet& group : step.groups) {
    for (const NodeRef& ref : group) refs.push_back(&ref);
  }
  for (const NodeRef* ref : refs) {
    absl::Status status = CheckLabelUse(*ref, &step);
    if (!status.ok()) return status;
  }
  if (step.label.empty()) return absl::OkStatus();
  const auto [it, first] = labels_.emplace(step.label, Binding{.line = step.line, .at = step.at});
  if (!first) {
    return Invalid(absl::StrFormat("label %s is already bound on line %d", Quote(step.label),
                                   it->second.line));
  }
  return absl::OkStatus();
}

// expect <metric> [<nodes>] <from>..<to> <op> <number>
absl::Status Parser::ParseExpectation(const Tokens& tokens, absl::string_view source) {
  constexpr absl::string_view kUsage = "expect <metric> [<nodes>] <from>..<to> <op> <number>";
  if (tokens.size() != 5 && tokens.size() != 6) {
    return tokens.size() < 5 ? CheckArity(Args(tokens), 5, kUsage)
                             : CheckArity(Args(tokens), 6, kUsage);
  }
  if (scenario_.expectations.size() == kExpectationCountMax) {
    return Invalid(absl::StrCat("more than ", kExpectationCountMax, " expectations"));
  }
  if (first_node_use_line_ == 0) first_node_use_line_ = line_;
  Expectation e;
  e.line = line_;
  e.text = std::string(source);
  const MetricName* metric = FindByName(kMetricNames, tokens[1]);
  if (metric == nullptr) {
    return Invalid(absl::StrCat("unknown metric ", Quote(tokens[1]),
                                " (expected commits, leader_commits, leader_ms, elections, "
                                "acked or failed)"));
  }
  e.metric = metric->metric;
  // Six tokens whose third is a window are five and an extra token, not a node list.
  const bool has_nodes = tokens.size() == 6 && tokens[2].find("..") == std::string::npos;
  if (tokens.size() == 6 && !has_nodes) return CheckArity(Args(tokens), 5, kUsage);
  if (has_nodes) {
    if (!metric->per_node) {
      return Invalid(
          absl::StrCat("metric '", metric->name, "' counts client requests and takes no nodes"));
    }
    absl::StatusOr<NodeSet> nodes = ParseExpectationNodes(tokens[2]);
    if (!nodes.ok()) return nodes.status();
    e.nodes = std::move(*nodes);
  }
  const size_t rest = has_nodes ? 3 : 2;
  auto window = ParseDurationRange(tokens[rest]);
  if (!window.ok()) return window.status();
  std::tie(e.from, e.to) = *window;
  if (e.from == e.to) return Invalid(absl::StrCat("window ", Quote(tokens[rest]), " is empty"));
  const CompareName* op = FindByName(kCompareNames, tokens[rest + 1]);
  if (op == nullptr) {
    return Invalid(absl::StrCat("unknown comparison ", Quote(tokens[rest + 1]),
                                " (expected ==, !=, <, <=, > or >=)"));
  }
  e.op = op->op;
  absl::StatusOr<double> value = ParseFinite(tokens[rest + 2], "expected value");
  if (!value.ok()) return value.status();
  e.value = *value;
  scenario_.expectations.push_back(std::move(e));
  return absl::OkStatus();
}

// A single reference or a {set}; labels must be bound by a step on an earlier line.
absl::StatusOr<NodeSet> Parser::ParseExpectationNodes(absl::string_view text) const {
  NodeSet nodes;
  if (absl::StartsWith(text, "{")) {
    absl::StatusOr<NodeSet> set = ParseNodeSet(text, scenario_.cluster);
    if (!set.ok()) return set.status();
    nodes = std::move(*set);
  } else {
    absl::StatusOr<NodeRef> ref = Node(text, /*all_allowed=*/true);
    if (!ref.ok()) return ref.status();
    // `all` means the same as naming no nodes; one spelling is simpler for the evaluator.
    if (ref->kind != NodeRef::Kind::kAll) nodes.push_back(std::move(*ref));
  }
  for (const NodeRef& ref : nodes) {
    absl::Status status = CheckLabelUse(ref, /*step=*/nullptr);
    if (!status.ok()) return status;
  }
  return nodes;
}

// Checks that need the whole file, in file order, then sorts the steps.
absl::Status Parser::Finish(int last_line) {
  if (!setting_lines_.contains("run")) {
    return ErrorAt(std::max(last_line, 1), Invalid("missing 'run <duration>'"));
  }
  const Nanos run = scenario_.run_for;
  for (const Step& step : scenario_.steps) {
    if (step.at >= run) {
      return ErrorAt(step.line,
                     Invalid(absl::StrFormat("step time %s is not before the end of the run (%s)",
                                             FormatDuration(step.at), FormatDuration(run))));
    }
  }
  for (const Expectation& e : scenario_.expectations) {
    if (e.to > run) {
      return ErrorAt(e.line,
                     Invalid(absl::StrFormat("window ends at %s, after the end of the run (%s)",
                                             FormatDuration(e.to), FormatDuration(run))));
    }
  }
  std::stable_sort(scenario_.steps.begin(), scenario_.steps.end(),
                   [](const Step& x, const Step& y) { return x.at < y.at; });
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Scenario> ParseScenario(std::string_view text, std::string_view name) {
  Parser parser(ToAbsl(name));
  return parser.Parse(ToAbsl(text));
}

absl::StatusOr<Nanos> ParseDuration(std::string_view text) {
  return ParseDurationText(ToAbsl(text));
}

}  // namespace keel::sim
