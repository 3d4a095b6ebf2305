#include "net/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

namespace keel::net {
namespace {

TEST(Metrics, ASmallRegistryRendersExactly) {
  Metrics metrics;
  metrics.AddCounter("keel_requests_total", "Requests served.", {{"method", "put"}}).Inc();
  metrics.AddCounter("keel_requests_total", "Requests served.", {{"method", "get"}}).Inc(3);
  metrics.AddGauge("keel_is_leader", "1 if this member leads.").Set(1);
  Histogram& latency = metrics.AddHistogram("keel_latency_seconds", "Latency.", {0.1, 0.5, 1});
  latency.Observe(0.25);
  latency.Observe(0.5);
  latency.Observe(2);
  latency.Observe(0.0625);

  EXPECT_EQ(metrics.Render(),
            "# HELP keel_is_leader 1 if this member leads.\n"
            "# TYPE keel_is_leader gauge\n"
            "keel_is_leader 1\n"
            "# HELP keel_latency_seconds Latency.\n"
            "# TYPE keel_latency_seconds histogram\n"
            "keel_latency_seconds_bucket{le=\"0.1\"} 1\n"
            "keel_latency_seconds_bucket{le=\"0.5\"} 3\n"
            "keel_latency_seconds_bucket{le=\"1\"} 3\n"
            "keel_latency_seconds_bucket{le=\"+Inf\"} 4\n"
            "keel_latency_seconds_sum 2.8125\n"
            "keel_latency_seconds_count 4\n"
            "# HELP keel_requests_total Requests served.\n"
            "# TYPE keel_requests_total counter\n"
            "keel_requests_total{method=\"get\"} 3\n"
            "keel_requests_total{method=\"put\"} 1\n");
}

TEST(Metrics, AnEmptyRegistryRendersNothing) { EXPECT_EQ(Metrics().Render(), ""); }

TEST(Metrics, LabelledHistogramPutsLeLastAndRepeatsLabelsOnSumAndCount) {
  Metrics metrics;
  metrics.AddHistogram("rpc_seconds", "RPC latency.", {1}, {{"method", "Range"}}).Observe(1);
  EXPECT_EQ(metrics.Render(),
            "# HELP rpc_seconds RPC latency.\n"
            "# TYPE rpc_seconds histogram\n"
            "rpc_seconds_bucket{method=\"Range\",le=\"1\"} 1\n"
            "rpc_seconds_bucket{method=\"Range\",le=\"+Inf\"} 1\n"
            "rpc_seconds_sum{method=\"Range\"} 1\n"
            "rpc_seconds_count{method=\"Range\"} 1\n");
}

TEST(Metrics, LabelsAreSortedByNameAndSeriesByLabels) {
  Metrics metrics;
  const std::string help = "Total RPCs completed on the server.";
  auto handled = [&](std::string code, std::string method) -> Counter& {
    // Given in a different order from the rendered one on purpose.
    return metrics.AddCounter("grpc_server_handled_total", help,
                              {{"grpc_service", "etcdserverpb.KV"},
                               {"grpc_method", method},
                               {"grpc_type", "unary"},
                               {"grpc_code", code}});
  };
  handled("OK", "Range").Inc(2);
  handled("OK", "Put").Inc();
  handled("Unavailable", "Put").Inc();

  EXPECT_EQ(metrics.Render(),
            "# HELP grpc_server_handled_total Total RPCs completed on the server.\n"
            "# TYPE grpc_server_handled_total counter\n"
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\","
            "grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\","
            "grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n"
            "grpc_server_handled_total{grpc_code=\"Unavailable\",grpc_method=\"Put\","
            "grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n");
}

TEST(Metrics, LabelValuesEscapeBackslashQuoteAndNewlineAndHelpEscapesBackslashAndNewline) {
  Metrics metrics;
  metrics
      .AddGauge("odd", "help with \\ and \"quotes\"\nand a second line",
                {{"path", "C:\\dir \"x\"\nend"}})
      .Set(2);
  EXPECT_EQ(metrics.Render(),
            "# HELP odd help with \\\\ and \"quotes\"\\nand a second line\n"
            "# TYPE odd gauge\n"
            "odd{path=\"C:\\\\dir \\\"x\\\"\\nend\"} 2\n");
}

TEST(Metrics, SameNameAndLabelsReturnTheSameObject) {
  Metrics metrics;
  Counter& a = metrics.AddCounter("c_total", "c", {{"x", "1"}, {"y", "2"}});
  Counter& same_labels_reordered = metrics.AddCounter("c_total", "c", {{"y", "2"}, {"x", "1"}});
  Counter& other_value = metrics.AddCounter("c_total", "c", {{"x", "1"}, {"y", "3"}});
  EXPECT_EQ(&a, &same_labels_reordered);
  EXPECT_NE(&a, &other_value);

  Gauge& g = metrics.AddGauge("g", "g");
  EXPECT_EQ(&g, &metrics.AddGauge("g", "g"));
  Histogram& h = metrics.AddHistogram("h", "h", {1, 2});
  EXPECT_EQ(&h, &metrics.AddHistogram("h", "h", {1, 2}));

  // The address survives many later registrations (no rehash or reallocation moves it).
  for (int i = 0; i < 1000; ++i) {
    metrics.AddCounter("c_total", "c", {{"x", std::to_string(i)}, {"y", "0"}});
    metrics.AddCounter("filler_" + std::to_string(i), "filler");
  }
  a.Inc(5);
  EXPECT_EQ(metrics.AddCounter("c_total", "c", {{"x", "1"}, {"y", "2"}}).value(), 5);
}

TEST(Metrics, GaugeFuncIsEvaluatedAtEachScrape) {
  Metrics metrics;
  double applied_index = 7;
  int calls = 0;
  metrics.AddGaugeFunc("keel_applied_index", "Last applied index.", [&] {
    ++calls;
    return applied_index;
  });
  EXPECT_EQ(calls, 0);  // not at registration
  EXPECT_EQ(metrics.Render(),
            "# HELP keel_applied_index Last applied index.\n"
            "# TYPE keel_applied_index gauge\n"
            "keel_applied_index 7\n");
  applied_index = 12;
  EXPECT_NE(metrics.Render().find("keel_applied_index 12\n"), std::string::npos);
  EXPECT_EQ(calls, 2);

  // Registering again replaces the function.
  metrics.AddGaugeFunc("keel_applied_index", "Last applied index.", [] { return 1.5; });
  EXPECT_NE(metrics.Render().find("keel_applied_index 1.5\n"), std::string::npos);
}

TEST(Metrics, AGaugeFamilyMayMixGaugesAndFuncs) {
  Metrics metrics;
  metrics.AddGauge("up", "up", {{"part", "b"}}).Set(1);
  metrics.AddGaugeFunc("up", "up", [] { return 0; }, {{"part", "a"}});
  EXPECT_EQ(metrics.Render(),
            "# HELP up up\n# TYPE up gauge\nup{part=\"a\"} 0\nup{part=\"b\"} 1\n");
}

TEST(Metrics, AValueEqualToABoundFallsInThatBucket) {
  Metrics metrics;
  Histogram& h = metrics.AddHistogram("h", "h", {1, 2});
  h.Observe(1);                                         // le=1
  h.Observe(2);                                         // le=2
  h.Observe(std::nextafter(2.0, 3.0));                  // +Inf
  h.Observe(-5);                                        // le=1: below every bound
  h.Observe(std::numeric_limits<double>::quiet_NaN());  // +Inf, as the Go client does
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{2, 3, 5}));
  EXPECT_TRUE(std::isnan(h.sum()));
}

TEST(Metrics, ATrailingInfBoundIsImplied) {
  Metrics metrics;
  Histogram& h = metrics.AddHistogram("h", "h", {1, std::numeric_limits<double>::infinity()});
  EXPECT_EQ(h.bounds(), std::vector<double>{1});
  const std::string text = metrics.Render();
  const size_t first_inf = text.find("le=\"+Inf\"");
  ASSERT_NE(first_inf, std::string::npos);
  EXPECT_EQ(text.find("le=\"+Inf\"", first_inf + 1), std::string::npos);
}

TEST(Metrics, ExponentialBucketsMatchEtcdsWalFsyncBuckets) {
  const std::vector<double> bounds = Metrics::ExponentialBuckets(0.001, 2, 14);
  ASSERT_EQ(bounds.size(), 14u);
  std::vector<std::string> les;
  for (double b : bounds) les.push_back(FormatMetricValue(b));
  // etcd_disk_wal_fsync_duration_seconds as etcd's /metrics shows them.
  EXPECT_EQ(les, (std::vector<std::string>{"0.001", "0.002", "0.004", "0.008", "0.016", "0.032",
                                           "0.064", "0.128", "0.256", "0.512", "1.024", "2.048",
                                           "4.096", "8.192"}));
}

TEST(Metrics, NumbersAreFormattedAsPrometheusReadsThem) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(-0.0), "0");
  EXPECT_EQ(FormatMetricValue(1), "1");
  EXPECT_EQ(FormatMetricValue(-3), "-3");
  EXPECT_EQ(FormatMetricValue(1e6), "1000000");
  EXPECT_EQ(FormatMetricValue(9007199254740991.0), "9007199254740991");  // 2^53 - 1
  EXPECT_EQ(FormatMetricValue(1e20), "1e+20");
  EXPECT_EQ(FormatMetricValue(0.5), "0.5");
  EXPECT_EQ(FormatMetricValue(0.1), "0.1");
  EXPECT_EQ(FormatMetricValue(1e-5), "1e-05");
  EXPECT_EQ(FormatMetricValue(1234.5678), "1234.5678");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(Metrics, ConcurrentUpdatesFromFourThreadsSumExactly) {
  Metrics metrics;
  Counter& counter = metrics.AddCounter("ops_total", "ops");
  Gauge& gauge = metrics.AddGauge("level", "level");
  Histogram& histogram = metrics.AddHistogram("size", "size", {10, 100});
  constexpr int kThreads = 4;
  constexpr int kIncrementsPerThread = 100'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIncrementsPerThread; ++i) {
        counter.Inc();
        gauge.Add(t % 2 == 0 ? 2 : -1);
        histogram.Observe(i % 3 == 0 ? 5 : 50);
      }
    });
  }
  // Scrapes race the updates: each must still be self-consistent (+Inf == count).
  for (int i = 0; i < 20; ++i) {
    const std::vector<uint64_t> counts = histogram.CumulativeCounts();
    EXPECT_LE(counts[0], counts[1]);
    EXPECT_LE(counts[1], counts[2]);
    EXPECT_FALSE(metrics.Render().empty());
  }
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(counter.value(), kThreads * kIncrementsPerThread);
  EXPECT_EQ(gauge.value(), 2 * kIncrementsPerThread * 2 - 1 * kIncrementsPerThread * 2);
  const uint64_t fives = kThreads * ((kIncrementsPerThread + 2) / 3);
  const uint64_t total = kThreads * kIncrementsPerThread;
  EXPECT_EQ(histogram.CumulativeCounts(), (std::vector<uint64_t>{fives, total, total}));
  EXPECT_EQ(histogram.sum(), 5.0 * fives + 50.0 * (total - fives));
}

// Registration mistakes are bugs in keel's source: they stop the process.
class MetricsDeathTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(MetricsDeathTest, ANameRegisteredWithAnotherTypeStops) {
  Metrics metrics;
  metrics.AddCounter("x", "x");
  EXPECT_DEATH(metrics.AddGauge("x", "x"), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddHistogram("x", "x", {1}), "KEEL_ASSERT");
}

TEST_F(MetricsDeathTest, InvalidNamesStop) {
  Metrics metrics;
  EXPECT_DEATH(metrics.AddCounter("1starts_with_digit", "h"), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddCounter("has-dash", "h"), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddCounter("", "h"), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddCounter("ok", "h", {{"__reserved", "v"}}), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddCounter("ok", "h", {{"has:colon", "v"}}), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddCounter("ok", "h", {{"dup", "a"}, {"dup", "b"}}), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddHistogram("ok", "h", {1}, {{"le", "1"}}), "KEEL_ASSERT");
}

TEST_F(MetricsDeathTest, AFamilyMustKeepItsHelpLabelNamesAndBounds) {
  Metrics metrics;
  metrics.AddCounter("c", "help", {{"a", "1"}});
  EXPECT_DEATH(metrics.AddCounter("c", "other help", {{"a", "1"}}), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddCounter("c", "help", {{"b", "1"}}), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddCounter("c", "help"), "KEEL_ASSERT");
  metrics.AddHistogram("h", "help", {1, 2});
  EXPECT_DEATH(metrics.AddHistogram("h", "help", {1, 3}), "KEEL_ASSERT");
}

TEST_F(MetricsDeathTest, BadBoundsAndNegativeIncrementsStop) {
  Metrics metrics;
  EXPECT_DEATH(metrics.AddHistogram("h", "h", {2, 1}), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddHistogram("h", "h", {1, 1}), "KEEL_ASSERT");
  EXPECT_DEATH(metrics.AddCounter("c", "c").Inc(-1), "KEEL_ASSERT");
  metrics.AddGauge("g", "g");
  EXPECT_DEATH(metrics.AddGaugeFunc("g", "g", [] { return 0; }), "KEEL_ASSERT");
}

}  // namespace
}  // namespace keel::net
