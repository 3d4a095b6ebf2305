#include "net/json_log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/log.h"

namespace keel::net {
namespace {

// A FILE* over memory (open_memstream), read back after each event's fflush.
class MemFile {
 public:
  MemFile() : file_(open_memstream(&buf_, &len_)) {}
  ~MemFile() {
    std::fclose(file_);
    std::free(buf_);
  }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  std::FILE* file() { return file_; }
  std::string Text() {
    std::fflush(file_);
    return std::string(buf_, len_);
  }
  std::vector<std::string> Lines() {  // each without its '\n'; a tail with none is kept too
    std::vector<std::string> lines;
    const std::string text = Text();
    size_t start = 0;
    while (start < text.size()) {
      const size_t nl = text.find('\n', start);
      if (nl == std::string::npos) {
        lines.push_back(text.substr(start));
        break;
      }
      lines.push_back(text.substr(start, nl - start));
      start = nl + 1;
    }
    return lines;
  }

 private:
  char* buf_ = nullptr;
  size_t len_ = 0;
  std::FILE* file_;
};

// --- A minimal JSON checker ---------------------------------------------------------------
// Accepts exactly one object whose values are all strings (the sink writes nothing else),
// following RFC 8259: no raw control characters in strings, only the defined escapes,
// \u escapes with surrogate pairs, valid UTF-8 everywhere. Returns the members in order
// with the strings decoded, or nullopt if the text is not such an object.
using Members = std::vector<std::pair<std::string, std::string>>;

class JsonChecker {
 public:
  explicit JsonChecker(std::string_view text) : s_(text) {}

  std::optional<Members> ParseObject() {
    Members members;
    SkipSpace();
    if (!Eat('{')) return std::nullopt;
    SkipSpace();
    if (Eat('}')) return Finish(std::move(members));
    while (true) {
      SkipSpace();
      std::optional<std::string> key = ParseString();
      if (!key) return std::nullopt;
      SkipSpace();
      if (!Eat(':')) return std::nullopt;
      SkipSpace();
      std::optional<std::string> value = ParseString();
      if (!value) return std::nullopt;
      members.emplace_back(*std::move(key), *std::move(value));
      SkipSpace();
      if (Eat('}')) return Finish(std::move(members));
      if (!Eat(',')) return std::nullopt;
    }
  }

 private:
  std::optional<Members> Finish(Members members) {
    SkipSpace();
    if (i_ != s_.size()) return std::nullopt;
    return members;
  }
  void SkipSpace() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
      ++i_;
    }
  }
  bool Eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  unsigned char Byte(size_t k) const { return static_cast<unsigned char>(s_[k]); }

  static void AppendUtf8(std::string* out, uint32_t cp) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  std::optional<uint32_t> Hex4() {
    if (i_ + 4 > s_.size()) return std::nullopt;
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else return std::nullopt;
    }
    return v;
  }

  // One valid UTF-8 sequence at i_, copied to out; false if the bytes are not UTF-8.
  bool CopyUtf8(std::string* out) {
    const unsigned char c = Byte(i_);
    size_t n;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; min = 0x10000; }
    else return false;
    if (i_ + n > s_.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((Byte(i_ + k) & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (Byte(i_ + k) & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    out->append(s_.substr(i_, n));
    i_ += n;
    return true;
  }

  std::optional<std::string> ParseString() {
    if (!Eat('"')) return std::nullopt;
    std::string out;
    while (true) {
      if (i_ >= s_.size()) return std::nullopt;
      const unsigned char c = Byte(i_);
      if (c == '"') {
        ++i_;
        return out;
      }
      if (c < 0x20) return std::nullopt;  // raw control characters are not allowed
      if (c >= 0x80) {
        if (!CopyUtf8(&out)) return std::nullopt;
        continue;
      }
      ++i_;
      if (c != '\\') {
        out.push_back(static_cast<char>(c));
        continue;
      }
      if (i_ >= s_.size()) return std::nullopt;
      const char e = s_[i_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          std::optional<uint32_t> cp = Hex4();
          if (!cp) return std::nullopt;
          if (*cp >= 0xDC00 && *cp <= 0xDFFF) return std::nullopt;  // lone low surrogate
          if (*cp >= 0xD800 && *cp <= 0xDBFF) {
            if (!Eat('\\') || !Eat('u')) return std::nullopt;
            std::optional<uint32_t> low = Hex4();
            if (!low || *low < 0xDC00 || *low > 0xDFFF) return std::nullopt;
            *cp = 0x10000 + ((*cp - 0xD800) << 10) + (*low - 0xDC00);
          }
          AppendUtf8(&out, *cp);
          break;
        }
        default: return std::nullopt;
      }
    }
  }

  std::string_view s_;
  size_t i_ = 0;
};

std::optional<Members> ParseJsonLine(std::string_view line) {
  return JsonChecker(line).ParseObject();
}

// AppendJsonString's output, parsed back by the checker: the decoded string, or nullopt.
std::optional<std::string> RoundTrip(std::string_view s) {
  std::string json = "{\"k\":";
  AppendJsonString(&json, s);
  json.push_back('}');
  std::optional<Members> m = ParseJsonLine(json);
  if (!m || m->size() != 1) return std::nullopt;
  return (*m)[0].second;
}

std::string Json(std::string_view s) {
  std::string out;
  AppendJsonString(&out, s);
  return out;
}

const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// --- The checker checks -----------------------------------------------------------------

TEST(JsonLogChecker, RefusesWhatIsNotJson) {
  EXPECT_TRUE(ParseJsonLine(R"({"a":"b","c":"\u00e9\n"})"));
  EXPECT_FALSE(ParseJsonLine(R"({"a":"b")"));
  EXPECT_FALSE(ParseJsonLine(R"({"a":"b"} x)"));
  EXPECT_FALSE(ParseJsonLine("{\"a\":\"\n\"}"));      // raw newline
  EXPECT_FALSE(ParseJsonLine(R"({"a":"\x41"})"));     // no \x escape in JSON
  EXPECT_FALSE(ParseJsonLine(R"({"a":"\ud800"})"));   // lone surrogate
  EXPECT_FALSE(ParseJsonLine("{\"a\":\"\xFF\"}"));    // not UTF-8
  EXPECT_FALSE(ParseJsonLine("{\"a\":\"\xC0\xAF\"}"));  // overlong
}

// --- AppendJsonString -------------------------------------------------------------------

TEST(JsonLogAppendJsonString, PlainTextIsQuoted) {
  EXPECT_EQ(Json(""), "\"\"");
  EXPECT_EQ(Json("hello world"), "\"hello world\"");
  std::string out = "prefix:";
  AppendJsonString(&out, "x");
  EXPECT_EQ(out, "prefix:\"x\"");  // appends, keeps what was there
}

TEST(JsonLogAppendJsonString, EscapesQuoteBackslashAndWhitespace) {
  EXPECT_EQ(Json("a\"b"), R"("a\"b")");
  EXPECT_EQ(Json("a\\b"), R"("a\\b")");
  EXPECT_EQ(Json("a\nb\rc\td"), R"("a\nb\rc\td")");
  EXPECT_EQ(Json("\"\\\n"), R"("\"\\\n")");
  EXPECT_EQ(Json("/"), "\"/\"");  // the solidus may stay as it is
}

TEST(JsonLogAppendJsonString, EscapesOtherControlBytesAsU00XX) {
  EXPECT_EQ(Json(std::string_view("\0", 1)), R"("\u0000")");
  EXPECT_EQ(Json("\x01"), R"("\u0001")");
  EXPECT_EQ(Json("\b\f"), R"("\u0008\u000c")");
  EXPECT_EQ(Json("\x1b[0m"), R"("\u001b[0m")");
  EXPECT_EQ(Json("\x1f"), R"("\u001f")");
  EXPECT_EQ(Json("\x7f"), "\"\x7f\"");  // DEL is not a control character to JSON
  // Every byte below 0x20 round-trips.
  std::string all;
  for (int c = 0; c < 0x20; ++c) all.push_back(static_cast<char>(c));
  EXPECT_EQ(RoundTrip(all), all);
}

TEST(JsonLogAppendJsonString, KeepsValidMultiByteUtf8AsIs) {
  for (const char* s : {"caf\xC3\xA9",                     // é (2 bytes)
                        "\xE6\x97\xA5\xE6\x9C\xAC",         // 日本 (3 bytes each)
                        "\xF0\x9F\x98\x80",                 // 😀 (4 bytes)
                        "\xEF\xBF\xBF",                     // U+FFFF
                        "\xF4\x8F\xBF\xBF",                 // U+10FFFF, the last code point
                        "\xED\x9F\xBF",                     // U+D7FF, just below surrogates
                        "\xEE\x80\x80",                     // U+E000, just above them
                        "\xC2\x80",                         // U+0080, smallest 2-byte
                        "a\xC3\xA9" "b\xF0\x9F\x98\x80" "c"}) {
    std::string quoted = "\"";
    quoted.append(s);
    quoted.push_back('"');
    EXPECT_EQ(Json(s), quoted) << s;
    EXPECT_EQ(RoundTrip(s), std::string(s)) << s;
  }
}

TEST(JsonLogAppendJsonString, ReplacesInvalidUtf8ByteByByte) {
  struct Case {
    std::string input;
    std::string json;  // the exact output
  };
  const std::vector<Case> cases = {
      {"a\x80" "b", R"("a\ufffdb")"},                       // lone continuation byte
      {"\xBF", R"("\ufffd")"},                              // another
      {"a\xC3", R"("a\ufffd")"},                            // truncated at the end
      {"\xC3" "a", R"("\ufffda")"},                         // truncated before ASCII
      {"\xE6\x97" "x", R"("\ufffd\ufffdx")"},               // 3-byte cut after 2
      {"\xF0\x9F\x98", R"("\ufffd\ufffd\ufffd")"},          // 4-byte cut after 3
      {"\xC0\xAF", R"("\ufffd\ufffd")"},                    // overlong '/'
      {"\xC1\xBF", R"("\ufffd\ufffd")"},                    // overlong
      {"\xE0\x80\xAF", R"("\ufffd\ufffd\ufffd")"},          // overlong, 3 bytes
      {"\xF0\x80\x80\xAF", R"("\ufffd\ufffd\ufffd\ufffd")"},  // overlong, 4 bytes
      {"\xED\xA0\x80", R"("\ufffd\ufffd\ufffd")"},          // surrogate U+D800
      {"\xED\xBF\xBF", R"("\ufffd\ufffd\ufffd")"},          // surrogate U+DFFF
      {"\xF4\x90\x80\x80", R"("\ufffd\ufffd\ufffd\ufffd")"},  // U+110000, past Unicode
      {"\xFF", R"("\ufffd")"},
      {"\xFE", R"("\ufffd")"},
      {"\xF8\x88\x80\x80\x80", R"("\ufffd\ufffd\ufffd\ufffd\ufffd")"},  // 5-byte form
      {"\xC3\xA9\xFF\xC3\xA9", "\"\xC3\xA9\\ufffd\xC3\xA9\""},  // valid around invalid
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Json(c.input), c.json) << c.json;
    std::optional<std::string> back = RoundTrip(c.input);
    ASSERT_TRUE(back.has_value()) << c.json;
    EXPECT_EQ(back->find('\x80'), std::string::npos);
  }
  EXPECT_EQ(RoundTrip("a\xFF" "b"), "a" + kReplacement + "b");
}

TEST(JsonLogAppendJsonString, EveryByteAndEveryPairOfBytesRoundTripsAsJson) {
  for (int a = 0; a < 256; ++a) {
    const std::string one(1, static_cast<char>(a));
    ASSERT_TRUE(RoundTrip(one).has_value()) << a;
    for (int b = 0; b < 256; ++b) {
      const std::string two = {static_cast<char>(a), static_cast<char>(b)};
      ASSERT_TRUE(RoundTrip(two).has_value()) << a << "," << b;
    }
  }
}

// --- JsonLogSink ------------------------------------------------------------------------

// "2026-11-26T12:00:00.123Z" to milliseconds since the epoch, or nullopt if not that form.
std::optional<int64_t> Rfc3339MillisUtc(const std::string& ts) {
  static const std::regex kForm(R"(^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})Z$)");
  std::smatch m;
  if (!std::regex_match(ts, m, kForm)) return std::nullopt;
  std::tm tm{};
  tm.tm_year = std::stoi(m[1]) - 1900;
  tm.tm_mon = std::stoi(m[2]) - 1;
  tm.tm_mday = std::stoi(m[3]);
  tm.tm_hour = std::stoi(m[4]);
  tm.tm_min = std::stoi(m[5]);
  tm.tm_sec = std::stoi(m[6]);
  if (tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
      tm.tm_sec > 60) {
    return std::nullopt;
  }
  return static_cast<int64_t>(timegm(&tm)) * 1000 + std::stoi(m[7]);
}

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

TEST(JsonLogSink, WritesOneLinePerEventWithLevelTsMsgThenFieldsInOrder) {
  MemFile mem;
  JsonLogSink sink(mem.file());
  Logger logger(&sink, Severity::kDebug);
  const int64_t before = NowMillis();
  logger.Info("BecameLeader").Field("term", uint64_t{3}).Field("id", "n1").Field("z", "last");
  logger.Debug("Tick");
  logger.Warn("SlowFsync").Field("took_ms", int64_t{1200});
  logger.Error("Corrupt").Field("path", std::string("/var/lib/keel/wal"));
  const int64_t after = NowMillis();

  const std::string text = mem.Text();
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  const std::vector<std::string> lines = mem.Lines();
  ASSERT_EQ(lines.size(), 4u) << text;

  struct Expected {
    std::string level, msg;
    Members fields;
  };
  const std::vector<Expected> expected = {
      {"info", "BecameLeader", {{"term", "3"}, {"id", "n1"}, {"z", "last"}}},
      {"debug", "Tick", {}},
      {"warn", "SlowFsync", {{"took_ms", "1200"}}},
      {"error", "Corrupt", {{"path", "/var/lib/keel/wal"}}},
  };
  for (size_t i = 0; i < lines.size(); ++i) {
    std::optional<Members> m = ParseJsonLine(lines[i]);
    ASSERT_TRUE(m.has_value()) << lines[i];
    ASSERT_EQ(m->size(), 3 + expected[i].fields.size()) << lines[i];
    EXPECT_EQ((*m)[0], (std::pair<std::string, std::string>("level", expected[i].level)));
    EXPECT_EQ((*m)[1].first, "ts");
    EXPECT_EQ((*m)[2], (std::pair<std::string, std::string>("msg", expected[i].msg)));
    EXPECT_EQ(Members(m->begin() + 3, m->end()), expected[i].fields) << lines[i];

    std::optional<int64_t> ts = Rfc3339MillisUtc((*m)[1].second);
    ASSERT_TRUE(ts.has_value()) << (*m)[1].second;
    EXPECT_GE(*ts, before) << (*m)[1].second;
    EXPECT_LE(*ts, after) << (*m)[1].second;
  }
  // The exact shape, with the timestamp cut out.
  const size_t ts_start = lines[0].find("\"ts\":\"") + 6;
  std::string without_ts = lines[0];
  without_ts.erase(ts_start, 24);
  EXPECT_EQ(without_ts,
            R"({"level":"info","ts":"","msg":"BecameLeader","term":"3","id":"n1","z":"last"})");
}

TEST(JsonLogSink, EventsBelowTheLoggersThresholdAreNotWritten) {
  MemFile mem;
  JsonLogSink sink(mem.file());
  Logger logger(&sink, Severity::kWarn);
  logger.Debug("Hidden");
  logger.Info("Hidden").Field("k", "v");
  logger.Warn("Shown");
  const std::vector<std::string> lines = mem.Lines();
  ASSERT_EQ(lines.size(), 1u);
  std::optional<Members> m = ParseJsonLine(lines[0]);
  ASSERT_TRUE(m.has_value()) << lines[0];
  EXPECT_EQ((*m)[2].second, "Shown");
}

TEST(JsonLogSink, EscapesNamesKeysAndValuesSoEveryLineParses) {
  MemFile mem;
  JsonLogSink sink(mem.file());
  Logger logger(&sink, Severity::kDebug);
  const std::string nasty = std::string("q\"b\\n\nr\rt\tc\x01 nul") + std::string(1, '\0') +
                            "\xC3\xA9\xFF\xED\xA0\x80\xF0\x9F\x98\x80";
  logger.Info("Weird\"Name\n").Field("key\"\\", nasty).Field("empty", "");
  const std::vector<std::string> lines = mem.Lines();
  ASSERT_EQ(lines.size(), 1u) << mem.Text();  // the raw newlines were escaped
  std::optional<Members> m = ParseJsonLine(lines[0]);
  ASSERT_TRUE(m.has_value()) << lines[0];
  ASSERT_EQ(m->size(), 5u);
  EXPECT_EQ((*m)[2].second, "Weird\"Name\n");
  EXPECT_EQ((*m)[3].first, "key\"\\");
  EXPECT_EQ((*m)[3].second, std::string("q\"b\\n\nr\rt\tc\x01 nul") + std::string(1, '\0') +
                                "\xC3\xA9" + kReplacement + kReplacement + kReplacement +
                                kReplacement + "\xF0\x9F\x98\x80");
  EXPECT_EQ((*m)[4], (std::pair<std::string, std::string>("empty", "")));
}

TEST(JsonLogSink, PreformattedFieldsBecomeOneFieldsMember) {
  MemFile mem;
  JsonLogSink sink(mem.file());
  sink.Write(Severity::kWarn, "Legacy", " a=1 b=two");
  const std::vector<std::string> lines = mem.Lines();
  ASSERT_EQ(lines.size(), 1u);
  std::optional<Members> m = ParseJsonLine(lines[0]);
  ASSERT_TRUE(m.has_value()) << lines[0];
  ASSERT_EQ(m->size(), 4u);
  EXPECT_EQ((*m)[0].second, "warn");
  EXPECT_EQ((*m)[2].second, "Legacy");
  EXPECT_EQ((*m)[3], (std::pair<std::string, std::string>("fields", " a=1 b=two")));
}

TEST(JsonLogSink, WritesToATmpfileToo) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    JsonLogSink sink(f);
    Logger logger(&sink, Severity::kInfo);
    logger.Info("One").Field("k", "v");
    logger.Info("Two");
  }
  std::rewind(f);
  std::string text;
  char buf[256];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  std::fclose(f);
  ASSERT_EQ(std::count(text.begin(), text.end(), '\n'), 2) << text;
  EXPECT_THAT(text, ::testing::HasSubstr(R"("msg":"One","k":"v"})"));
  EXPECT_THAT(text, ::testing::HasSubstr(R"("msg":"Two"})"));
}

TEST(JsonLogSink, ConcurrentWritersProduceWholeLines) {
  constexpr int kThreads = 4;
  constexpr int kEventsPerThread = 1000;
  MemFile mem;
  JsonLogSink sink(mem.file());
  Logger logger(&sink, Severity::kDebug);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&logger, t] {
      for (int i = 0; i < kEventsPerThread; ++i) {
        logger.Info("Event")
            .Field("thread", int64_t{t})
            .Field("i", int64_t{i})
            .Field("pad", std::string(static_cast<size_t>(50 + (i * 7 + t) % 200), 'x'));
      }
    });
  }
  for (std::thread& th : threads) th.join();

  const std::string text = mem.Text();
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  const std::vector<std::string> lines = mem.Lines();
  ASSERT_EQ(lines.size(), static_cast<size_t>(kThreads * kEventsPerThread));
  std::map<int, int> next_by_thread;  // each thread's events appear in its own order
  for (const std::string& line : lines) {
    std::optional<Members> m = ParseJsonLine(line);
    ASSERT_TRUE(m.has_value()) << line;
    ASSERT_EQ(m->size(), 6u) << line;
    ASSERT_EQ((*m)[3].first, "thread");
    ASSERT_EQ((*m)[4].first, "i");
    const int t = std::stoi((*m)[3].second);
    const int i = std::stoi((*m)[4].second);
    ASSERT_EQ((*m)[5].second.size(), static_cast<size_t>(50 + (i * 7 + t) % 200)) << line;
    EXPECT_EQ(i, next_by_thread[t]) << "thread " << t;
    next_by_thread[t] = i + 1;
  }
  ASSERT_EQ(next_by_thread.size(), static_cast<size_t>(kThreads));
  for (const auto& [t, next] : next_by_thread) EXPECT_EQ(next, kEventsPerThread) << t;
}

}  // namespace
}  // namespace keel::net
