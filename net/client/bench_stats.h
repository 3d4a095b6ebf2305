#pragma once
// keel-bench's numbers (net/client/keel_bench.cc): a fixed log-linear latency histogram
// that each worker thread fills without a lock and that merges at the end, a tally of
// errors by message, and the run's report, as text laid out like etcd's tools/benchmark
// or as one JSON object. Pure C++: no gRPC, no clock; every time is a caller's Nanos.
//
// JSON report (one object; keys in this order; times in milliseconds unless the name
// says otherwise):
//   workload, endpoints, clients, conns, workers, rate, total, requests, ok, errors,
//   error_samples [{message, count}], elapsed_s, throughput, throughput_unit,
//   latency_ms {count, min, mean, stddev, p10, p25, p50, p75, p90, p95, p99, p999, max},
//   histogram [{le_ms, count}]
//   load only:  txn_ops, keys
//   lease-keepalive only: leases
//   watch only: watchers, streams, events_expected, events, event_responses, events_per_s,
//               event_latency_ms {same keys as latency_ms}, event_histogram [{le_ms, count}]
// `histogram` counts per bin: a bin holds the latencies in (previous le_ms, le_ms].

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/types.h"

namespace keel::bench {

// LatencyHistogram: counts of latencies in nanoseconds, in fixed buckets.
//
// Buckets (HdrHistogram's layout): values below 2^kSubBucketBits ns are counted exactly;
// above, each power of two [2^e, 2^(e+1)) is cut into 2^kSubBucketBits equal buckets, so
// a bucket is at most 1/128 of its lower bound wide. A value read back (a percentile) is
// its bucket's midpoint, within 0.4% of every value the bucket holds. Values at or above
// 2^kValueBits ns (about 18 minutes) share the top bucket. min(), max(), mean and stddev
// are exact (not bucketed).
//
// Threads: none of its own; one writer at a time (each worker owns one, merged at the end).
class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 7;
  static constexpr int kValueBits = 40;
  static constexpr size_t kBucketCount = static_cast<size_t>(kValueBits - kSubBucketBits + 1)
                                         << kSubBucketBits;

  LatencyHistogram();

  // Requires: latency >= 0.
  void Record(Nanos latency);
  void Merge(const LatencyHistogram& other);

  uint64_t count() const { return count_; }
  // 0 while empty.
  Nanos min() const { return Nanos(count_ == 0 ? 0 : min_ns_); }
  Nanos max() const { return Nanos(max_ns_); }
  double mean_ns() const { return mean_ns_; }
  // Population standard deviation (etcd's report divides by n too).
  double stddev_ns() const;

  // The latency at percentile p by etcd's rank rule (pkg/report): the value of rank
  // ceil(p * (n + 1) / 100) among the n sorted values, clamped to [1, n]. Rank 1 is min(),
  // rank n is max(); the others are their bucket's midpoint. 0 while empty.
  // Requires: 0 <= p <= 100.
  Nanos Percentile(double p) const;

  struct Bin {
    Nanos le;        // upper bound, inclusive
    uint64_t count;  // latencies in (previous bin's le, le]
  };
  // At most bin_count bins from min() to max(), for the report's bar chart: geometric
  // bounds (each bin's le is the same factor above the previous), so that a long tail
  // does not squeeze every latency into the first bin; linear when min() is 0. One bin
  // when min() == max(), none while empty. Requires: bin_count >= 1.
  std::vector<Bin> Bins(int bin_count) const;

  // The bucket layout, for tests. Requires: value >= 0; index < kBucketCount.
  static size_t BucketIndex(int64_t value_ns);
  static int64_t BucketLow(size_t index);
  static int64_t BucketWidth(size_t index);

 private:
  // The value reported for bucket `index`: its midpoint, clamped to [min, max].
  int64_t Representative(size_t index) const;

  std::vector<uint64_t> buckets_;  // kBucketCount counts
  uint64_t count_ = 0;
  int64_t min_ns_ = 0;  // valid when count_ > 0
  int64_t max_ns_ = 0;
  // Welford's running mean and sum of squared deviations; merged by Chan's formula.
  double mean_ns_ = 0;
  double m2_ns2_ = 0;
};

// ErrorTally: how many things failed, and the first kDistinctMax distinct messages with
// their counts, in the order first seen (later distinct messages are only counted).
class ErrorTally {
 public:
  static constexpr size_t kDistinctMax = 16;

  struct Sample {
    std::string message;
    uint64_t count = 0;
  };

  void Add(std::string_view message, uint64_t n = 1);
  void Merge(const ErrorTally& other);

  uint64_t count() const { return count_; }
  const std::vector<Sample>& samples() const { return samples_; }
  // Errors whose message is not among samples().
  uint64_t unsampled_count() const;

 private:
  uint64_t count_ = 0;
  std::vector<Sample> samples_;  // at most kDistinctMax
};

struct LoadFigures {
  int64_t txn_ops = 0;  // puts per Txn
  uint64_t keys = 0;    // keys written by Txns answered OK
};

struct WatchFigures {
  int64_t watchers = 0;
  int64_t streams = 0;
  uint64_t events_expected = 0;    // watchers * puts
  uint64_t events = 0;             // delivered
  uint64_t event_responses = 0;    // WatchResponses that carried them (a server's batching)
  double events_per_s = 0;         // events / (last event received - first put sent)
  LatencyHistogram event_latency;  // put sent -> event received
};

// One run, as keel-bench prints it. `requests`, `ok` and `latency` are the workload's
// RPCs (Txns for load, keepalives for lease-keepalive, puts for watch); `errors` also
// holds failures that are not one RPC's (a watch stream lost, a watcher short of events).
struct RunReport {
  std::string workload;
  std::vector<std::string> endpoints;
  int64_t clients = 0;
  int64_t conns = 0;
  int64_t workers = 0;
  double rate = 0;        // requests/s cap over all clients; 0: none
  int64_t total = 0;      // as asked: --total (keys for load), --puts for watch
  uint64_t requests = 0;  // RPCs sent
  uint64_t ok = 0;        // RPCs answered OK
  ErrorTally errors;
  double elapsed_s = 0;                      // first request sent -> last answer received
  double throughput = 0;                     // per second, of throughput_unit
  std::string throughput_unit = "requests";  // "requests", "keys", "keepalives", "puts"
  LatencyHistogram latency;                  // of the RPCs answered OK
  std::optional<LoadFigures> load;
  std::optional<int64_t> leases;
  std::optional<WatchFigures> watch;
};

// etcd tools/benchmark's layout: Summary, response time histogram, latency
// distribution, then errors; latencies in milliseconds.
std::string FormatText(const RunReport& report);
// One line: the JSON object described at the top of this file.
std::string FormatJson(const RunReport& report);

}  // namespace keel::bench
