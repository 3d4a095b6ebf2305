#include "net/client/bench_stats.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/assert.h"

namespace keel::bench {

// ---- LatencyHistogram -------------------------------------------------------------

namespace {

constexpr int64_t kSubBucketCount = int64_t{1} << LatencyHistogram::kSubBucketBits;
constexpr int64_t kValueLimit = int64_t{1} << LatencyHistogram::kValueBits;  // exclusive

}  // namespace

LatencyHistogram::LatencyHistogram() : buckets_(kBucketCount, 0) {}

// Below 2 * kSubBucketCount the index is the value itself. Above, a value with highest
// bit e keeps its top kSubBucketBits + 1 bits as m in [128, 256) after a right shift of
// e - kSubBucketBits; the index is shift * 128 + m, which continues where the previous
// power of two ended.
size_t LatencyHistogram::BucketIndex(int64_t value_ns) {
  KEEL_ASSERT(value_ns >= 0);
  const uint64_t v = static_cast<uint64_t>(std::min(value_ns, kValueLimit - 1));
  if (v < static_cast<uint64_t>(kSubBucketCount)) return static_cast<size_t>(v);
  const int shift = std::bit_width(v) - 1 - kSubBucketBits;
  const uint64_t m = v >> shift;
  const size_t index = static_cast<size_t>(shift) * kSubBucketCount + m;
  KEEL_ASSERT(index < kBucketCount);
  return index;
}

int64_t LatencyHistogram::BucketLow(size_t index) {
  KEEL_ASSERT(index < kBucketCount);
  if (index < 2 * static_cast<size_t>(kSubBucketCount)) return static_cast<int64_t>(index);
  const int shift = static_cast<int>(index / kSubBucketCount) - 1;
  const int64_t m = static_cast<int64_t>(index) - shift * kSubBucketCount;
  return m << shift;
}

int64_t LatencyHistogram::BucketWidth(size_t index) {
  KEEL_ASSERT(index < kBucketCount);
  if (index < 2 * static_cast<size_t>(kSubBucketCount)) return 1;
  return int64_t{1} << (index / kSubBucketCount - 1);
}

void LatencyHistogram::Record(Nanos latency) {
  const int64_t v = latency.count();
  KEEL_ASSERT(v >= 0);
  ++buckets_[BucketIndex(v)];
  if (count_ == 0) {
    min_ns_ = v;
    max_ns_ = v;
  } else {
    min_ns_ = std::min(min_ns_, v);
    max_ns_ = std::max(max_ns_, v);
  }
  ++count_;
  const double delta = static_cast<double>(v) - mean_ns_;
  mean_ns_ += delta / static_cast<double>(count_);
  m2_ns2_ += delta * (static_cast<double>(v) - mean_ns_);
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  if (other.count_ == 0) return;
  for (size_t i = 0; i < kBucketCount; ++i) buckets_[i] += other.buckets_[i];
  if (count_ == 0) {
    min_ns_ = other.min_ns_;
    max_ns_ = other.max_ns_;
  } else {
    min_ns_ = std::min(min_ns_, other.min_ns_);
    max_ns_ = std::max(max_ns_, other.max_ns_);
  }
  // Chan et al.: the combined mean and sum of squared deviations of two samples.
  const double na = static_cast<double>(count_);
  const double nb = static_cast<double>(other.count_);
  const double n = na + nb;
  const double delta = other.mean_ns_ - mean_ns_;
  mean_ns_ += delta * nb / n;
  m2_ns2_ += other.m2_ns2_ + delta * delta * na * nb / n;
  count_ += other.count_;
}

double LatencyHistogram::stddev_ns() const {
  if (count_ == 0) return 0;
  return std::sqrt(std::max(0.0, m2_ns2_ / static_cast<double>(count_)));
}

int64_t LatencyHistogram::Representative(size_t index) const {
  const int64_t mid = BucketLow(index) + (BucketWidth(index) - 1) / 2;
  return std::clamp(mid, min_ns_, max_ns_);
}

Nanos LatencyHistogram::Percentile(double p) const {
  KEEL_ASSERT(p >= 0 && p <= 100);
  if (count_ == 0) return Nanos(0);
  const double n = static_cast<double>(count_);
  // 1-based rank, as etcd's ceil(p*(n+1)/100) - 1 is a 0-based index.
  const uint64_t rank = static_cast<uint64_t>(std::clamp(std::ceil(p * (n + 1) / 100.0), 1.0, n));
  if (rank == 1) return min();
  if (rank == count_) return max();
  uint64_t seen = 0;
  for (size_t i = 0; i < kBucketCount; ++i) {
    seen += buckets_[i];
    if (seen >= rank) return Nanos(Representative(i));
  }
  KEEL_ASSERT(false && "bucket counts sum to less than count_");
  return max();
}

std::vector<LatencyHistogram::Bin> LatencyHistogram::Bins(int bin_count) const {
  KEEL_ASSERT(bin_count >= 1);
  if (count_ == 0) return {};
  if (min_ns_ == max_ns_) return {Bin{max(), count_}};
  const double lo = static_cast<double>(min_ns_);
  const double hi = static_cast<double>(max_ns_);
  std::vector<Bin> bins(static_cast<size_t>(bin_count));
  for (int k = 1; k <= bin_count; ++k) {
    const double f = static_cast<double>(k) / bin_count;
    const double le = lo > 0 ? lo * std::pow(hi / lo, f) : lo + (hi - lo) * f;
    bins[k - 1] = Bin{Nanos(static_cast<int64_t>(std::ceil(le))), 0};
  }
  bins.back().le = max();  // exactly, whatever the rounding above
  // Bounds rounded to whole nanoseconds may repeat at the low end: drop the repeats.
  bins.erase(std::unique(bins.begin(), bins.end(),
                         [](const Bin& a, const Bin& b) { return a.le == b.le; }),
             bins.end());
  size_t k = 0;
  for (size_t i = 0; i < kBucketCount; ++i) {
    if (buckets_[i] == 0) continue;
    const int64_t v = Representative(i);
    while (bins[k].le.count() < v) ++k;  // bins.back().le == max >= v: stays in range
    bins[k].count += buckets_[i];
  }
  return bins;
}

// ---- ErrorTally -------------------------------------------------------------------

void ErrorTally::Add(std::string_view message, uint64_t n) {
  if (n == 0) return;
  count_ += n;
  for (Sample& s : samples_) {
    if (s.message == message) {
      s.count += n;
      return;
    }
  }
  if (samples_.size() < kDistinctMax) samples_.push_back(Sample{std::string(message), n});
}

void ErrorTally::Merge(const ErrorTally& other) {
  for (const Sample& s : other.samples_) Add(s.message, s.count);
  count_ += other.unsampled_count();
}

uint64_t ErrorTally::unsampled_count() const {
  uint64_t sampled = 0;
  for (const Sample& s : samples_) sampled += s.count;
  KEEL_ASSERT(sampled <= count_);
  return count_ - sampled;
}

// ---- text report ------------------------------------------------------------------

namespace {

constexpr int kBinCount = 10;
constexpr int kBarWidthMax = 40;
constexpr double kPercentiles[] = {10, 25, 50, 75, 90, 95, 99, 99.9};

double Ms(Nanos d) { return static_cast<double>(d.count()) / 1e6; }

// "requests" -> "Requests/sec", as etcd labels its throughput.
std::string PerSecondLabel(std::string_view unit) {
  std::string label(unit);
  if (!label.empty()) label[0] = static_cast<char>(std::toupper(label[0]));
  return label + "/sec";
}

void AppendSummary(const LatencyHistogram& h, double elapsed_s, double throughput,
                   std::string_view unit, std::string* out) {
  absl::StrAppendFormat(out, "\nSummary:\n  Total:\t%.4f secs.\n", elapsed_s);
  if (h.count() > 0) {
    absl::StrAppendFormat(out, "  Slowest:\t%.3f ms.\n", Ms(h.max()));
    absl::StrAppendFormat(out, "  Fastest:\t%.3f ms.\n", Ms(h.min()));
    absl::StrAppendFormat(out, "  Average:\t%.3f ms.\n", h.mean_ns() / 1e6);
    absl::StrAppendFormat(out, "  Stddev:\t%.3f ms.\n", h.stddev_ns() / 1e6);
  }
  absl::StrAppendFormat(out, "  %s:\t%.1f\n", PerSecondLabel(unit), throughput);
}

void AppendHistogram(const LatencyHistogram& h, const char* title, std::string* out) {
  const std::vector<LatencyHistogram::Bin> bins = h.Bins(kBinCount);
  if (bins.empty()) return;
  uint64_t count_max = 0;
  for (const auto& b : bins) count_max = std::max(count_max, b.count);
  absl::StrAppend(out, "\n", title, " histogram (ms, upper bounds):\n");
  for (const auto& b : bins) {
    const int bar = static_cast<int>(b.count * kBarWidthMax / count_max);
    std::string bars;
    for (int i = 0; i < bar; ++i) bars += "\u220e";  // etcd's bar character
    absl::StrAppendFormat(out, "  %10.3f [%d]\t|%s\n", Ms(b.le), b.count, bars);
  }
}

void AppendDistribution(const LatencyHistogram& h, const char* title, std::string* out) {
  if (h.count() == 0) return;
  absl::StrAppend(out, "\n", title, " distribution:\n");
  for (double p : kPercentiles) {
    absl::StrAppendFormat(out, "  %g%% in %.3f ms.\n", p, Ms(h.Percentile(p)));
  }
}

void AppendErrors(const ErrorTally& errors, std::string* out) {
  if (errors.count() == 0) {
    absl::StrAppend(out, "\nErrors: none\n");
    return;
  }
  absl::StrAppend(out, "\nErrors: ", errors.count(), "\n");
  for (const ErrorTally::Sample& s : errors.samples()) {
    absl::StrAppendFormat(out, "  [%d]\t%s\n", s.count, s.message);
  }
  if (errors.unsampled_count() > 0) {
    absl::StrAppendFormat(out, "  [%d]\t(other messages)\n", errors.unsampled_count());
  }
}

std::string Count(int64_t n, const char* one, const char* many) {
  return absl::StrCat(n, " ", n == 1 ? one : many);
}

std::string Headline(const RunReport& r) {
  std::string line = absl::StrCat("keel-bench ", r.workload, ": ");
  if (r.watch.has_value()) {
    absl::StrAppend(&line, Count(r.watch->watchers, "watcher", "watchers"), " on ",
                    Count(r.watch->streams, "stream", "streams"), ", ",
                    Count(r.total, "put", "puts"), " by ");
  } else if (r.load.has_value()) {
    absl::StrAppend(&line, Count(r.total, "key", "keys"), " in Txns of ",
                    Count(r.load->txn_ops, "put", "puts"), " by ");
  } else {
    absl::StrAppend(&line, r.total, " ", r.throughput_unit, " by ");
  }
  absl::StrAppend(&line, Count(r.clients, "client", "clients"), " over ",
                  Count(r.conns, "conn", "conns"), " to ", absl::StrJoin(r.endpoints, ","));
  if (r.leases.has_value()) absl::StrAppend(&line, ", ", *r.leases, " leases");
  if (r.rate > 0) absl::StrAppendFormat(&line, ", at most %g/s", r.rate);
  return line;
}

}  // namespace

std::string FormatText(const RunReport& r) {
  std::string out = Headline(r) + "\n";
  AppendSummary(r.latency, r.elapsed_s, r.throughput, r.throughput_unit, &out);
  if (r.load.has_value()) {
    absl::StrAppendFormat(&out, "  Txns/sec:\t%.1f\n  Keys written:\t%d\n",
                          r.elapsed_s > 0 ? static_cast<double>(r.ok) / r.elapsed_s : 0,
                          r.load->keys);
  }
  AppendHistogram(r.latency, "Response time", &out);
  AppendDistribution(r.latency, "Latency", &out);
  if (r.watch.has_value()) {
    const WatchFigures& w = *r.watch;
    absl::StrAppendFormat(&out, "\nWatch events:\n  Events:\t%d of %d expected.\n", w.events,
                          w.events_expected);
    absl::StrAppendFormat(&out, "  Events/sec:\t%.1f\n", w.events_per_s);
    if (w.event_responses > 0) {
      absl::StrAppendFormat(&out, "  Events/response:\t%.1f\n",
                            static_cast<double>(w.events) / static_cast<double>(w.event_responses));
    }
    if (w.event_latency.count() > 0) {
      absl::StrAppendFormat(&out, "  Slowest:\t%.3f ms.\n  Fastest:\t%.3f ms.\n",
                            Ms(w.event_latency.max()), Ms(w.event_latency.min()));
      absl::StrAppendFormat(&out, "  Average:\t%.3f ms.\n  Stddev:\t%.3f ms.\n",
                            w.event_latency.mean_ns() / 1e6, w.event_latency.stddev_ns() / 1e6);
    }
    AppendHistogram(w.event_latency, "Put-to-event latency", &out);
    AppendDistribution(w.event_latency, "Put-to-event latency", &out);
  }
  AppendErrors(r.errors, &out);
  return out;
}

// ---- JSON report ------------------------------------------------------------------

namespace {

using Json = nlohmann::ordered_json;

// Milliseconds, rounded to the nanosecond so that the output stays short.
double RoundMs(double ms) { return std::round(ms * 1e6) / 1e6; }

Json LatencyJson(const LatencyHistogram& h) {
  Json j;
  j["count"] = h.count();
  j["min"] = RoundMs(Ms(h.min()));
  j["mean"] = RoundMs(h.mean_ns() / 1e6);
  j["stddev"] = RoundMs(h.stddev_ns() / 1e6);
  const struct {
    const char* name;
    double p;
  } points[] = {{"p10", 10}, {"p25", 25}, {"p50", 50}, {"p75", 75},
                {"p90", 90}, {"p95", 95}, {"p99", 99}, {"p999", 99.9}};
  for (const auto& pt : points) j[pt.name] = RoundMs(Ms(h.Percentile(pt.p)));
  j["max"] = RoundMs(Ms(h.max()));
  return j;
}

Json BinsJson(const LatencyHistogram& h) {
  Json bins = Json::array();
  for (const auto& b : h.Bins(kBinCount)) {
    bins.push_back(Json{{"le_ms", RoundMs(Ms(b.le))}, {"count", b.count}});
  }
  return bins;
}

}  // namespace

std::string FormatJson(const RunReport& r) {
  Json j;
  j["workload"] = r.workload;
  j["endpoints"] = r.endpoints;
  j["clients"] = r.clients;
  j["conns"] = r.conns;
  j["workers"] = r.workers;
  j["rate"] = r.rate;
  j["total"] = r.total;
  j["requests"] = r.requests;
  j["ok"] = r.ok;
  j["errors"] = r.errors.count();
  j["error_samples"] = Json::array();
  for (const ErrorTally::Sample& s : r.errors.samples()) {
    j["error_samples"].push_back(Json{{"message", s.message}, {"count", s.count}});
  }
  j["elapsed_s"] = r.elapsed_s;
  j["throughput"] = r.throughput;
  j["throughput_unit"] = r.throughput_unit + "/s";
  j["latency_ms"] = LatencyJson(r.latency);
  j["histogram"] = BinsJson(r.latency);
  if (r.load.has_value()) {
    j["txn_ops"] = r.load->txn_ops;
    j["keys"] = r.load->keys;
  }
  if (r.leases.has_value()) j["leases"] = *r.leases;
  if (r.watch.has_value()) {
    j["watchers"] = r.watch->watchers;
    j["streams"] = r.watch->streams;
    j["events_expected"] = r.watch->events_expected;
    j["events"] = r.watch->events;
    j["event_responses"] = r.watch->event_responses;
    j["events_per_s"] = r.watch->events_per_s;
    j["event_latency_ms"] = LatencyJson(r.watch->event_latency);
    j["event_histogram"] = BinsJson(r.watch->event_latency);
  }
  // Error messages come from servers: replace bytes that are not UTF-8 rather than throw.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace keel::bench
