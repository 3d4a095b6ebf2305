#include "net/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "core/assert.h"

namespace keel::net {

namespace {

bool IsMetricNameChar(char c, bool first) {
  const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
  return letter || (!first && c >= '0' && c <= '9');
}

bool IsValidMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsMetricNameChar(name[i], i == 0)) return false;
  }
  return true;
}

// Label names are metric names without ':'; a leading "__" is Prometheus' own.
bool IsValidLabelName(std::string_view name) {
  if (!IsValidMetricName(name) || name.find(':') != std::string_view::npos) return false;
  return name.substr(0, 2) != "__";
}

// Sorted by name, validated: the registry's canonical form of a label set.
Labels CanonicalLabels(const Labels& labels) {
  Labels sorted = labels;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    KEEL_ASSERT(IsValidLabelName(sorted[i].first));
    if (i > 0) KEEL_ASSERT(sorted[i - 1].first != sorted[i].first);
  }
  return sorted;
}

std::vector<std::string> LabelNames(const Labels& labels) {
  std::vector<std::string> names;
  names.reserve(labels.size());
  for (const auto& [name, value] : labels) names.push_back(name);
  return names;
}

// Label values escape backslash, double quote and newline; HELP text escapes only
// backslash and newline (exposition format 0.0.4).
void AppendEscaped(std::string_view text, bool escape_quote, std::string& out) {
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && escape_quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

// `{a="x",b="y"}`, with an extra `le` label last for histogram buckets; nothing at all
// for a series without labels.
void AppendLabels(const Labels& labels, std::string_view le, std::string& out) {
  if (labels.empty() && le.empty()) return;
  out += '{';
  bool first = true;
  for (const auto& [name, value] : labels) {
    if (!first) out += ',';
    first = false;
    out += name;
    out += "=\"";
    AppendEscaped(value, /*escape_quote=*/true, out);
    out += '"';
  }
  if (!le.empty()) {
    if (!first) out += ',';
    out += "le=\"";
    out += le;
    out += '"';
  }
  out += '}';
}

void AppendSample(std::string_view name, std::string_view suffix, const Labels& labels,
                  std::string_view le, std::string_view value, std::string& out) {
  out += name;
  out += suffix;
  AppendLabels(labels, le, out);
  out += ' ';
  out += value;
  out += '\n';
}

}  // namespace

std::string FormatMetricValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  constexpr double kExactIntegersMax = 9007199254740992.0;  // 2^53
  char buf[32];
  std::to_chars_result result;
  if (v == std::trunc(v) && std::fabs(v) < kExactIntegersMax) {
    result = std::to_chars(buf, buf + sizeof(buf), static_cast<int64_t>(v));
  } else {
    result = std::to_chars(buf, buf + sizeof(buf), v);  // shortest round-trip form
  }
  KEEL_ASSERT(result.ec == std::errc());
  return std::string(buf, result.ptr);
}

void Counter::Inc(double by) {
  KEEL_ASSERT(by >= 0);  // also rejects NaN
  value_.fetch_add(by, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  // The +Inf bucket is always there; an explicit one would be written twice.
  if (!bounds_.empty() && bounds_.back() == std::numeric_limits<double>::infinity()) {
    bounds_.pop_back();
  }
  for (size_t i = 0; i < bounds_.size(); ++i) {
    KEEL_ASSERT(!std::isnan(bounds_[i]));
    if (i > 0) KEEL_ASSERT(bounds_[i - 1] < bounds_[i]);
  }
  bucket_counts_ = std::vector<std::atomic<uint64_t>>(bounds_.size() + 1);
}

void Histogram::Observe(double v) {
  // First bound >= v ("le"); NaN compares false everywhere and lands in +Inf, as in
  // Prometheus' Go client.
  size_t bucket = bounds_.size();
  if (!std::isnan(v)) {
    bucket = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  }
  bucket_counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> cumulative(bucket_counts_.size());
  uint64_t total = 0;
  for (size_t i = 0; i < bucket_counts_.size(); ++i) {
    total += bucket_counts_[i].load(std::memory_order_relaxed);
    cumulative[i] = total;
  }
  return cumulative;
}

// One series: exactly one of the four members is set, by the family's type (a gauge
// family may mix Gauge objects and functions).
struct Metrics::Series {
  std::unique_ptr<Counter> counter;
  std::unique_ptr<Gauge> gauge;
  std::unique_ptr<Histogram> histogram;
  std::function<double()> gauge_fn;
};

struct Metrics::Family {
  std::string help;
  Type type;
  std::vector<std::string> label_names;  // sorted; the same for every series
  std::vector<double> bounds;            // histograms only; the same for every series
  std::map<Labels, Series> series;       // keys in canonical (sorted) form
};

Metrics::Metrics() = default;
Metrics::~Metrics() = default;

Metrics::Family& Metrics::FindOrCreateFamily(std::string_view name, std::string_view help,
                                             Type type, const Labels& sorted_labels) {
  KEEL_ASSERT(IsValidMetricName(name));
  auto it = families_.find(name);
  if (it == families_.end()) {
    auto family = std::make_unique<Family>();
    family->help = std::string(help);
    family->type = type;
    family->label_names = LabelNames(sorted_labels);
    it = families_.emplace(std::string(name), std::move(family)).first;
  }
  Family& family = *it->second;
  KEEL_ASSERT(family.type == type);
  KEEL_ASSERT(family.help == help);
  KEEL_ASSERT(family.label_names == LabelNames(sorted_labels));
  return family;
}

Metrics::Series& Metrics::FindOrCreateSeries(std::string_view name, std::string_view help,
                                             Type type, const Labels& labels) {
  Labels sorted = CanonicalLabels(labels);
  Family& family = FindOrCreateFamily(name, help, type, sorted);
  return family.series[std::move(sorted)];
}

Counter& Metrics::AddCounter(std::string_view name, std::string_view help, const Labels& labels) {
  std::lock_guard lock(mu_);
  Series& series = FindOrCreateSeries(name, help, Type::kCounter, labels);
  if (series.counter == nullptr) series.counter = std::make_unique<Counter>();
  return *series.counter;
}

Gauge& Metrics::AddGauge(std::string_view name, std::string_view help, const Labels& labels) {
  std::lock_guard lock(mu_);
  Series& series = FindOrCreateSeries(name, help, Type::kGauge, labels);
  KEEL_ASSERT(series.gauge_fn == nullptr);  // already registered by AddGaugeFunc
  if (series.gauge == nullptr) series.gauge = std::make_unique<Gauge>();
  return *series.gauge;
}

Histogram& Metrics::AddHistogram(std::string_view name, std::string_view help,
                                 std::vector<double> bounds, const Labels& labels) {
  for (const auto& [label_name, value] : labels) KEEL_ASSERT(label_name != "le");
  auto histogram = std::make_unique<Histogram>(std::move(bounds));  // validates bounds
  std::lock_guard lock(mu_);
  Labels sorted = CanonicalLabels(labels);
  Family& family = FindOrCreateFamily(name, help, Type::kHistogram, sorted);
  if (family.series.empty()) family.bounds = histogram->bounds();
  KEEL_ASSERT(family.bounds == histogram->bounds());
  Series& series = family.series[std::move(sorted)];
  if (series.histogram == nullptr) series.histogram = std::move(histogram);
  return *series.histogram;
}

void Metrics::AddGaugeFunc(std::string_view name, std::string_view help, std::function<double()> fn,
                           const Labels& labels) {
  KEEL_ASSERT(fn != nullptr);
  std::lock_guard lock(mu_);
  Series& series = FindOrCreateSeries(name, help, Type::kGauge, labels);
  KEEL_ASSERT(series.gauge == nullptr);  // already registered by AddGauge
  series.gauge_fn = std::move(fn);
}

void Metrics::RenderFamily(const std::string& name, const Family& family, std::string& out) {
  out += "# HELP ";
  out += name;
  out += ' ';
  AppendEscaped(family.help, /*escape_quote=*/false, out);
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += family.type == Type::kCounter ? "counter"
         : family.type == Type::kGauge ? "gauge"
                                       : "histogram";
  out += '\n';
  for (const auto& [labels, series] : family.series) {
    switch (family.type) {
      case Type::kCounter:
        AppendSample(name, "", labels, "", FormatMetricValue(series.counter->value()), out);
        break;
      case Type::kGauge: {
        const double v = series.gauge_fn ? series.gauge_fn() : series.gauge->value();
        AppendSample(name, "", labels, "", FormatMetricValue(v), out);
        break;
      }
      case Type::kHistogram: {
        const Histogram& h = *series.histogram;
        // Read the counts once: _count must equal the +Inf bucket in every scrape.
        const std::vector<uint64_t> cumulative = h.CumulativeCounts();
        for (size_t i = 0; i < cumulative.size(); ++i) {
          const std::string le =
              i < h.bounds().size() ? FormatMetricValue(h.bounds()[i]) : std::string("+Inf");
          AppendSample(name, "_bucket", labels, le, std::to_string(cumulative[i]), out);
        }
        AppendSample(name, "_sum", labels, "", FormatMetricValue(h.sum()), out);
        AppendSample(name, "_count", labels, "", std::to_string(cumulative.back()), out);
        break;
      }
    }
  }
}

std::string Metrics::Render() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [name, family] : families_) RenderFamily(name, *family, out);
  return out;
}

std::vector<double> Metrics::ExponentialBuckets(double start, double factor, int count) {
  KEEL_ASSERT(start > 0);
  KEEL_ASSERT(factor > 1);
  KEEL_ASSERT(count >= 1);
  std::vector<double> buckets(count);
  // Repeated multiplication, not pow(): the same doubles as the Go client, so the "le"
  // strings match etcd's exactly.
  double next = start;
  for (double& bucket : buckets) {
    bucket = next;
    next *= factor;
  }
  return buckets;
}

}  // namespace keel::net
