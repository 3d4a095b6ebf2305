#pragma once
// A Prometheus metrics registry, served by keeld at GET /metrics (net/http_server.h).
//
// Families are registered by name (etcd's names, so that etcd dashboards and alerts
// carry over: etcd_disk_wal_fsync_duration_seconds, grpc_server_handled_total, ...);
// each family holds one series per label set. Registration is find-or-create and
// returns a reference that stays valid for the registry's life, so a hot path looks
// its series up once and then calls Inc/Set/Observe, which are lock-free and may run on
// any thread. Registration and Render take the registry's mutex.
//
// Registering a name with another type, other help text, other label names, other
// histogram bounds, or an invalid metric or label name is a programming error and stops
// the process (KEEL_ASSERT): these are fixed strings in keel's source, never input.
//
// Render produces the text exposition format 0.0.4:
//   https://prometheus.io/docs/instrumenting/exposition_formats/
// families in name order, each with one # HELP and one # TYPE line, then its series in
// label order. Numbers are written as Prometheus writes them, except that integral
// values below 2^53 are written as integers ("1000000", not Go's "1e+06").

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keel::net {

// The Content-Type of Render's output.
inline constexpr std::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

// Label pairs of one series, (name, value). Order does not matter: the registry keeps
// them sorted by name, so {a=1,b=2} and {b=2,a=1} name the same series.
using Labels = std::vector<std::pair<std::string, std::string>>;

// A value that only goes up: requests served, bytes written.
class Counter {
 public:
  // Requires: by >= 0 (a counter that goes down breaks rate()).
  void Inc(double by = 1);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// A value that goes up and down: leader changes pending, open connections.
class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double d) { value_.fetch_add(d, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into buckets by upper bound (Prometheus' "le": a value equal to
// a bound falls in that bucket), plus their sum and count. Lock-free: a scrape that
// races an Observe may see the new sum before the new bucket count, never a count that
// disagrees with the buckets (count is the buckets' total).
class Histogram {
 public:
  // Requires: `bounds` strictly increasing, no NaN; a trailing +Inf is implied.
  explicit Histogram(std::vector<double> bounds);

  void Observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Cumulative counts, one per bound and then one for +Inf (== the total count).
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  // One per bound, then the +Inf overflow bucket; not cumulative. Never resized, so the
  // atomics never move.
  std::vector<std::atomic<uint64_t>> bucket_counts_;
  std::atomic<double> sum_{0};
};

class Metrics {
 public:
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Find-or-create. The same name and labels return the same object, whose address is
  // stable for the registry's life. Requires: `name` matches [a-zA-Z_:][a-zA-Z0-9_:]*,
  // label names match [a-zA-Z_][a-zA-Z0-9_]* without a leading "__" and are distinct;
  // a name already registered has this type, this help and these label names.
  Counter& AddCounter(std::string_view name, std::string_view help, const Labels& labels = {});
  Gauge& AddGauge(std::string_view name, std::string_view help, const Labels& labels = {});
  // As above; also requires: every series of the family has the same `bounds` (see
  // Histogram), and no label is named "le" (Render uses it for the buckets).
  Histogram& AddHistogram(std::string_view name, std::string_view help, std::vector<double> bounds,
                          const Labels& labels = {});

  // A gauge computed when scraped, on the scraping thread, under the registry's mutex:
  // `fn` must not call back into this registry. Registering the same name and labels
  // again replaces the function. Requires: that series is not a Gauge from AddGauge.
  void AddGaugeFunc(std::string_view name, std::string_view help, std::function<double()> fn,
                    const Labels& labels = {});

  // The whole registry in the text exposition format 0.0.4 (see the file comment).
  std::string Render() const;

  // {start, start*factor, ..., start*factor^(count-1)}, as Prometheus' Go client makes
  // them (etcd's WAL fsync histogram: ExponentialBuckets(0.001, 2, 14)).
  // Requires: start > 0, factor > 1, count >= 1.
  static std::vector<double> ExponentialBuckets(double start, double factor, int count);

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Series;
  struct Family;

  Family& FindOrCreateFamily(std::string_view name, std::string_view help, Type type,
                             const Labels& sorted_labels);
  Series& FindOrCreateSeries(std::string_view name, std::string_view help, Type type,
                             const Labels& labels);
  static void RenderFamily(const std::string& name, const Family& family, std::string& out);

  mutable std::mutex mu_;
  // std::map: Render walks families in name order.
  std::map<std::string, std::unique_ptr<Family>, std::less<>> families_;
};

// Number formatting used by Render (exposed for tests): "+Inf", "-Inf", "NaN"; integral
// values with |v| < 2^53 as integers; anything else in the shortest form that reads
// back to the same double.
std::string FormatMetricValue(double v);

}  // namespace keel::net
