// keel-bench's histogram, error tally and report (net/client/bench_stats.h).
#include "net/client/bench_stats.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace keel::bench {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using H = LatencyHistogram;

// etcd's pkg/report percentile over the sorted values: index ceil(p*(n+1)/100) - 1.
int64_t EtcdPercentile(std::vector<int64_t> values, double p) {
  std::sort(values.begin(), values.end());
  const int64_t n = static_cast<int64_t>(values.size());
  int64_t i = static_cast<int64_t>(std::ceil(p * static_cast<double>(n + 1) / 100.0)) - 1;
  i = std::clamp<int64_t>(i, 0, n - 1);
  return values[static_cast<size_t>(i)];
}

TEST(LatencyHistogram, BucketsTileTheRangeWithoutGapsOrOverlaps) {
  EXPECT_EQ(H::BucketLow(0), 0);
  for (size_t i = 0; i + 1 < H::kBucketCount; ++i) {
    ASSERT_EQ(H::BucketLow(i) + H::BucketWidth(i), H::BucketLow(i + 1)) << "bucket " << i;
  }
  const size_t top = H::kBucketCount - 1;
  EXPECT_EQ(H::BucketLow(top) + H::BucketWidth(top), int64_t{1} << H::kValueBits);
}

TEST(LatencyHistogram, EveryValueLandsInTheBucketThatHoldsIt) {
  std::mt19937_64 rng(7);
  std::vector<int64_t> values = {0, 1, 127, 128, 255, 256, 257, 1000, 999'999, 1'000'000};
  for (int i = 0; i < 100000; ++i) {
    values.push_back(static_cast<int64_t>(rng() >> (64 - H::kValueBits)));
  }
  for (int64_t v : values) {
    const size_t i = H::BucketIndex(v);
    ASSERT_LT(i, H::kBucketCount);
    ASSERT_LE(H::BucketLow(i), v);
    ASSERT_LT(v, H::BucketLow(i) + H::BucketWidth(i)) << v;
  }
}

TEST(LatencyHistogram, BucketsAreExactBelow128nsThenAtMostAHundredTwentyEighthOfTheirValue) {
  for (size_t i = 0; i < 256; ++i) ASSERT_EQ(H::BucketWidth(i), 1) << "bucket " << i;
  for (size_t i = 128; i < H::kBucketCount; ++i) {
    ASSERT_LE(H::BucketWidth(i) * 128, H::BucketLow(i)) << "bucket " << i;
  }
}

TEST(LatencyHistogram, ValuesBeyondTheRangeShareTheTopBucketAndMaxStaysExact) {
  H h;
  const int64_t huge = (int64_t{1} << H::kValueBits) * 3;
  h.Record(Nanos(huge));
  EXPECT_EQ(H::BucketIndex(huge), H::kBucketCount - 1);
  EXPECT_EQ(h.max(), Nanos(huge));
  EXPECT_EQ(h.Percentile(50), Nanos(huge));
}

TEST(LatencyHistogram, AnEmptyHistogramReportsZeros) {
  H h;
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.min(), Nanos(0));
  EXPECT_EQ(h.max(), Nanos(0));
  EXPECT_EQ(h.Percentile(99), Nanos(0));
  EXPECT_EQ(h.stddev_ns(), 0);
  EXPECT_TRUE(h.Bins(10).empty());
}

TEST(LatencyHistogram, OneValueIsEveryPercentile) {
  H h;
  h.Record(Nanos(1'234'567));
  for (double p : {0.0, 10.0, 50.0, 99.9, 100.0}) EXPECT_EQ(h.Percentile(p), Nanos(1'234'567));
  EXPECT_EQ(h.mean_ns(), 1'234'567);
  EXPECT_EQ(h.stddev_ns(), 0);
}

TEST(LatencyHistogram, PercentilesFollowEtcdsRankRuleWithinHalfAPercent) {
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> latency_ns(std::log(2e6), 0.8);  // ~2 ms, long tail
  std::vector<int64_t> values;
  H h;
  for (int i = 0; i < 50000; ++i) {
    const int64_t v = static_cast<int64_t>(latency_ns(rng));
    values.push_back(v);
    h.Record(Nanos(v));
  }
  for (double p : {10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9}) {
    const double want = static_cast<double>(EtcdPercentile(values, p));
    const double got = static_cast<double>(h.Percentile(p).count());
    EXPECT_NEAR(got, want, want * 0.005) << "p" << p;
  }
  EXPECT_EQ(h.Percentile(0).count(), *std::min_element(values.begin(), values.end()));
  EXPECT_EQ(h.Percentile(100).count(), *std::max_element(values.begin(), values.end()));
}

TEST(LatencyHistogram, MeanAndStddevAreExactNotBucketed) {
  H h;
  const std::vector<int64_t> values = {1000, 2000, 3000, 4000, 100'000};
  double sum = 0;
  for (int64_t v : values) {
    h.Record(Nanos(v));
    sum += static_cast<double>(v);
  }
  const double mean = sum / static_cast<double>(values.size());
  double m2 = 0;
  for (int64_t v : values) m2 += (static_cast<double>(v) - mean) * (static_cast<double>(v) - mean);
  EXPECT_DOUBLE_EQ(h.mean_ns(), mean);
  EXPECT_NEAR(h.stddev_ns(), std::sqrt(m2 / static_cast<double>(values.size())), 1e-6);
}

TEST(LatencyHistogram, MergingWorkersEqualsRecordingEverythingInOne) {
  std::mt19937_64 rng(3);
  H all, a, b, empty;
  for (int i = 0; i < 20000; ++i) {
    const Nanos v(static_cast<int64_t>(rng() % 50'000'000));
    all.Record(v);
    (i % 3 == 0 ? a : b).Record(v);
  }
  H merged;
  merged.Merge(empty);
  merged.Merge(a);
  merged.Merge(empty);
  merged.Merge(b);
  EXPECT_EQ(merged.count(), all.count());
  EXPECT_EQ(merged.min(), all.min());
  EXPECT_EQ(merged.max(), all.max());
  EXPECT_NEAR(merged.mean_ns(), all.mean_ns(), 1e-6 * all.mean_ns());
  EXPECT_NEAR(merged.stddev_ns(), all.stddev_ns(), 1e-6 * all.stddev_ns());
  for (double p : {10.0, 50.0, 90.0, 99.0, 99.9})
    EXPECT_EQ(merged.Percentile(p), all.Percentile(p));
}

TEST(LatencyHistogram, BinsAreGeometricFromMinToMaxAndHoldEveryValue) {
  H h;
  for (int i = 0; i < 1000; ++i) h.Record(Nanos(1'000'000 + i * 99'000));  // 1 ms .. ~100 ms
  const std::vector<H::Bin> bins = h.Bins(10);
  ASSERT_EQ(bins.size(), 10u);
  uint64_t total = 0;
  for (size_t i = 0; i < bins.size(); ++i) {
    total += bins[i].count;
    if (i > 0) {
      EXPECT_GT(bins[i].le, bins[i - 1].le);
    }
  }
  EXPECT_EQ(total, h.count());
  EXPECT_EQ(bins.back().le, h.max());
  // Each bound is (max/min)^(1/10) above the previous: 1 ms * 99.901^(1/10) ~ 1.585 ms.
  EXPECT_NEAR(static_cast<double>(bins[0].le.count()), 1.585e6, 0.01e6);
}

TEST(LatencyHistogram, EqualValuesMakeOneBin) {
  H h;
  for (int i = 0; i < 5; ++i) h.Record(Nanos(5000));
  const std::vector<H::Bin> bins = h.Bins(10);
  ASSERT_EQ(bins.size(), 1u);
  EXPECT_EQ(bins[0].le, Nanos(5000));
  EXPECT_EQ(bins[0].count, 5u);
}

TEST(ErrorTally, KeepsTheFirstDistinctMessagesInOrderAndCountsTheRest) {
  ErrorTally t;
  t.Add("b");
  t.Add("a", 3);
  t.Add("b");
  for (size_t i = 0; i < ErrorTally::kDistinctMax + 5; ++i) t.Add(absl::StrCat("m", i));
  EXPECT_EQ(t.count(), 5 + ErrorTally::kDistinctMax + 5);
  ASSERT_EQ(t.samples().size(), ErrorTally::kDistinctMax);
  EXPECT_EQ(t.samples()[0].message, "b");
  EXPECT_EQ(t.samples()[0].count, 2u);
  EXPECT_EQ(t.samples()[1].message, "a");
  EXPECT_EQ(t.samples()[1].count, 3u);
  EXPECT_EQ(t.unsampled_count(), 7u);  // m14 .. m20
}

TEST(ErrorTally, MergeAddsTheSampledCountsAndKeepsTheUnsampledOnesCounted) {
  ErrorTally a, b;
  a.Add("x");
  b.Add("x", 2);
  for (size_t i = 0; i < ErrorTally::kDistinctMax + 2; ++i) b.Add(absl::StrCat("y", i));
  b.Add("z", 4);  // b is full: counted, not sampled
  a.Merge(b);
  EXPECT_EQ(a.count(), 3 + ErrorTally::kDistinctMax + 2 + 4);
  ASSERT_EQ(a.samples().size(), ErrorTally::kDistinctMax);
  EXPECT_EQ(a.samples()[0].message, "x");
  EXPECT_EQ(a.samples()[0].count, 3u);
  EXPECT_EQ(a.samples()[1].message, "y0");
  // b sampled x and y0 .. y14 (y15 .. y17 and z only counted); a has room for y0 .. y14.
  EXPECT_EQ(a.unsampled_count(), 1u + 2u + 4u);
}

RunReport SampleReport() {
  RunReport r;
  r.workload = "put";
  r.endpoints = {"127.0.0.1:2379"};
  r.clients = 64;
  r.conns = 8;
  r.workers = 1;
  r.total = 1000;
  r.requests = 1000;
  r.ok = 998;
  r.errors.Add("UNAVAILABLE: connection reset", 2);
  r.elapsed_s = 0.5;
  r.throughput = 1996;
  for (int i = 1; i <= 998; ++i) r.latency.Record(Nanos(i * 10'000));
  return r;
}

TEST(RunReport, JsonHasTheDocumentedFieldsAndNoWatchFieldsOutsideWatch) {
  const nlohmann::json j = nlohmann::json::parse(FormatJson(SampleReport()));
  EXPECT_EQ(j["workload"], "put");
  EXPECT_EQ(j["endpoints"], nlohmann::json::array({"127.0.0.1:2379"}));
  EXPECT_EQ(j["clients"], 64);
  EXPECT_EQ(j["conns"], 8);
  EXPECT_EQ(j["total"], 1000);
  EXPECT_EQ(j["ok"], 998);
  EXPECT_EQ(j["errors"], 2);
  ASSERT_EQ(j["error_samples"].size(), 1u);
  EXPECT_EQ(j["error_samples"][0]["message"], "UNAVAILABLE: connection reset");
  EXPECT_EQ(j["error_samples"][0]["count"], 2);
  EXPECT_DOUBLE_EQ(j["elapsed_s"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["throughput"].get<double>(), 1996);
  EXPECT_EQ(j["throughput_unit"], "requests/s");
  for (const char* key : {"min", "mean", "stddev", "p50", "p90", "p99", "p999", "max"}) {
    EXPECT_TRUE(j["latency_ms"].contains(key)) << key;
  }
  EXPECT_DOUBLE_EQ(j["latency_ms"]["min"].get<double>(), 0.01);
  EXPECT_DOUBLE_EQ(j["latency_ms"]["max"].get<double>(), 9.98);
  uint64_t binned = 0;
  for (const auto& bin : j["histogram"]) binned += bin["count"].get<uint64_t>();
  EXPECT_EQ(binned, 998u);
  EXPECT_FALSE(j.contains("events"));
  EXPECT_FALSE(j.contains("event_latency_ms"));
}

TEST(RunReport, WatchJsonCarriesEventsAndTheirLatency) {
  RunReport r = SampleReport();
  r.workload = "watch";
  WatchFigures w;
  w.watchers = 10;
  w.streams = 2;
  w.events_expected = 10000;
  w.events = 9980;
  w.events_per_s = 20000;
  w.event_latency.Record(Nanos(1'500'000));
  r.watch = w;
  const nlohmann::json j = nlohmann::json::parse(FormatJson(r));
  EXPECT_EQ(j["events"], 9980);
  EXPECT_EQ(j["events_expected"], 10000);
  EXPECT_DOUBLE_EQ(j["events_per_s"].get<double>(), 20000);
  EXPECT_DOUBLE_EQ(j["event_latency_ms"]["p50"].get<double>(), 1.5);
}

TEST(RunReport, JsonReplacesBytesThatAreNotUtf8InServerMessages) {
  RunReport r = SampleReport();
  r.errors.Add("bad \xff byte");
  EXPECT_NO_THROW(nlohmann::json::parse(FormatJson(r)));
}

TEST(RunReport, TextFollowsEtcdsLayout) {
  const std::string text = FormatText(SampleReport());
  EXPECT_THAT(text, HasSubstr("Summary:\n  Total:\t0.5000 secs.\n"));
  EXPECT_THAT(text, HasSubstr("  Slowest:\t9.980 ms.\n"));
  EXPECT_THAT(text, HasSubstr("  Fastest:\t0.010 ms.\n"));
  EXPECT_THAT(text, HasSubstr("  Requests/sec:\t1996.0\n"));
  EXPECT_THAT(text, HasSubstr("Response time histogram"));
  EXPECT_THAT(text, HasSubstr("  99.9% in "));
  EXPECT_THAT(text, HasSubstr("Errors: 2\n  [2]\tUNAVAILABLE: connection reset\n"));
  EXPECT_THAT(text, Not(HasSubstr("Watch events")));
}

TEST(RunReport, TextWithoutAnyAnswerSkipsTheLatencySections) {
  RunReport r;
  r.workload = "put";
  r.endpoints = {"127.0.0.1:2379"};
  r.total = 3;
  r.errors.Add("UNAVAILABLE: down", 3);
  const std::string text = FormatText(r);
  EXPECT_THAT(text, Not(HasSubstr("Slowest")));
  EXPECT_THAT(text, Not(HasSubstr("distribution")));
  EXPECT_THAT(text, HasSubstr("Errors: 3"));
}

}  // namespace
}  // namespace keel::bench
