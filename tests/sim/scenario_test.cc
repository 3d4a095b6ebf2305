// Unit tests for the scenario parser (sim/scenario.h): durations, settings, every step
// kind, labels, expectations, and one test per class of error, each checking that the
// message names the file and the line.

#include "sim/scenario.h"

#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace keel::sim {
namespace {

using std::chrono::microseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::HasSubstr;

constexpr std::string_view kName = "x.scenario";

absl::StatusOr<Scenario> Parse(std::string_view text) { return ParseScenario(text, kName); }

Scenario ParseOk(std::string_view text) {
  absl::StatusOr<Scenario> scenario = Parse(text);
  EXPECT_TRUE(scenario.ok()) << scenario.status() << "\n" << text;
  return scenario.ok() ? *scenario : Scenario{};
}

// The whole error message ("x.scenario:LINE: what"), or "" when the text parsed.
std::string ErrorOf(std::string_view text) {
  absl::StatusOr<Scenario> scenario = Parse(text);
  EXPECT_FALSE(scenario.ok()) << "parsed, but should not have:\n" << text;
  if (scenario.ok()) return "";
  EXPECT_EQ(scenario.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(scenario.status().message());
}

// Parses "run 30s" and one step at 1s (on line 2), and returns that step.
Step OneStep(std::string_view step) {
  Scenario scenario = ParseOk("run 30s\nat 1s " + std::string(step) + "\n");
  EXPECT_EQ(scenario.steps.size(), 1u) << step;
  return scenario.steps.empty() ? Step{} : scenario.steps[0];
}

// The error for one step on line 2 of a five-node scenario that runs for 30s.
std::string StepError(std::string_view step) {
  return ErrorOf("cluster 5\nat 1s " + std::string(step) + "\nrun 30s\n");
}

NodeRef Id(uint64_t k) {
  NodeRef ref;
  ref.id = NodeId(k);
  return ref;
}

NodeRef Ref(NodeRef::Kind kind) {
  NodeRef ref;
  ref.kind = kind;
  return ref;
}

NodeRef Label(std::string name) {
  NodeRef ref;
  ref.kind = NodeRef::Kind::kLabel;
  ref.label = std::move(name);
  return ref;
}

// ---------------------------------------------------------------------------------------
// Durations

TEST(ScenarioDuration, AcceptsEveryUnit) {
  EXPECT_EQ(*ParseDuration("200us"), microseconds(200));
  EXPECT_EQ(*ParseDuration("800ms"), Millis(800));
  EXPECT_EQ(*ParseDuration("30s"), seconds(30));
  EXPECT_EQ(*ParseDuration("2m"), minutes(2));
}

TEST(ScenarioDuration, AcceptsDecimalsExactly) {
  EXPECT_EQ(*ParseDuration("1.5s"), Millis(1500));
  EXPECT_EQ(*ParseDuration("0.1s"), Millis(100));
  EXPECT_EQ(*ParseDuration("1.25m"), seconds(75));
  EXPECT_EQ(*ParseDuration("0.5us"), Nanos(500));
  EXPECT_EQ(*ParseDuration("2.500ms"), microseconds(2500));
}

TEST(ScenarioDuration, AcceptsZero) {
  EXPECT_EQ(*ParseDuration("0s"), Nanos(0));
  EXPECT_EQ(*ParseDuration("0.0ms"), Nanos(0));
}

TEST(ScenarioDuration, RejectsAMissingUnit) {
  EXPECT_THAT(ParseDuration("5").status().message(), HasSubstr("'5' has no unit"));
}

TEST(ScenarioDuration, RejectsAnUnknownUnit) {
  EXPECT_THAT(ParseDuration("5h").status().message(), HasSubstr("unknown unit 'h'"));
  EXPECT_THAT(ParseDuration("5ns").status().message(), HasSubstr("unknown unit 'ns'"));
  EXPECT_THAT(ParseDuration("5S").status().message(), HasSubstr("unknown unit 'S'"));
}

TEST(ScenarioDuration, RejectsANegativeValue) {
  EXPECT_THAT(ParseDuration("-5ms").status().message(), HasSubstr("must be >= 0"));
}

TEST(ScenarioDuration, RejectsMalformedNumbers) {
  for (std::string_view text : {"", "ms", ".5s", "5.s", "1.2.3s", "+5ms", "1e3ms", " 5ms"}) {
    EXPECT_FALSE(ParseDuration(text).ok()) << "'" << text << "'";
  }
}

TEST(ScenarioDuration, RejectsOverflow) {
  EXPECT_THAT(ParseDuration("99999999999999999999999s").status().message(), HasSubstr("too large"));
  // One second past the largest int64 count of nanoseconds (about 292 years).
  EXPECT_THAT(ParseDuration("9223372037s").status().message(), HasSubstr("too large"));
  EXPECT_TRUE(ParseDuration("9223372036s").ok());
}

TEST(ScenarioDuration, RejectsPrecisionFinerThanANanosecond) {
  EXPECT_THAT(ParseDuration("1.0000000001s").status().message(),
              HasSubstr("finer than a nanosecond"));
  EXPECT_THAT(ParseDuration("0.0001us").status().message(), HasSubstr("finer than a nanosecond"));
}

// ---------------------------------------------------------------------------------------
// Settings

TEST(ScenarioSettings, OnlyRunIsRequiredAndTheRestKeepTheirDefaults) {
  Scenario s = ParseOk("run 30s\n");
  EXPECT_EQ(s.name, "x.scenario");
  EXPECT_EQ(s.run_for, seconds(30));
  EXPECT_EQ(s.cluster, 3);
  EXPECT_FALSE(s.seed.has_value());
  EXPECT_EQ(s.tick_interval, Millis(100));
  EXPECT_EQ(s.election_ticks, 10);
  EXPECT_EQ(s.network.latency_min, Millis(1));
  EXPECT_EQ(s.workload.clients, 3);
  EXPECT_TRUE(s.steps.empty());
  EXPECT_TRUE(s.expectations.empty());
}

TEST(ScenarioSettings, EveryDirectiveSetsItsFields) {
  Scenario s = ParseOk(
      "cluster 5\n"
      "seed 0xDEADbeef\n"
      "timing tick=50ms election=20\n"
      "network latency=2ms..8ms loss=0.01 duplicate=0.02\n"
      "disk fsync=100us..3ms\n"
      "workload clients=7 think=5ms timeout=2s reads=0.5\n"
      "run 1.5m\n");
  EXPECT_EQ(s.cluster, 5);
  EXPECT_EQ(s.seed, 0xdeadbeefu);
  EXPECT_EQ(s.tick_interval, Millis(50));
  EXPECT_EQ(s.election_ticks, 20);
  EXPECT_EQ(s.network.latency_min, Millis(2));
  EXPECT_EQ(s.network.latency_max, Millis(8));
  EXPECT_DOUBLE_EQ(s.network.loss, 0.01);
  EXPECT_DOUBLE_EQ(s.network.duplicate, 0.02);
  EXPECT_EQ(s.disk.fsync_min, microseconds(100));
  EXPECT_EQ(s.disk.fsync_max, Millis(3));
  EXPECT_EQ(s.workload.clients, 7);
  EXPECT_EQ(s.workload.think, Millis(5));
  EXPECT_EQ(s.workload.timeout, seconds(2));
  EXPECT_DOUBLE_EQ(s.workload.read_fraction, 0.5);
  EXPECT_EQ(s.run_for, seconds(90));
}

TEST(ScenarioSettings, KeysAreOptionalAndTheOthersKeepTheirDefaults) {
  Scenario s = ParseOk("timing election=4\nnetwork loss=0.5\nworkload reads=1\nrun 1s\n");
  EXPECT_EQ(s.tick_interval, Millis(100));
  EXPECT_EQ(s.election_ticks, 4);
  EXPECT_EQ(s.network.latency_max, Millis(5));
  EXPECT_DOUBLE_EQ(s.network.loss, 0.5);
  EXPECT_EQ(s.workload.clients, 3);
  EXPECT_DOUBLE_EQ(s.workload.read_fraction, 1.0);
}

TEST(ScenarioSettings, SeedIsDecimalOrHexAndFitsIn64Bits) {
  EXPECT_EQ(ParseOk("seed 42\nrun 1s").seed, 42u);
  EXPECT_EQ(ParseOk("seed 0xffffffffffffffff\nrun 1s").seed, UINT64_MAX);
  EXPECT_EQ(ParseOk("seed 18446744073709551615\nrun 1s").seed, UINT64_MAX);
  EXPECT_THAT(ErrorOf("seed 18446744073709551616\nrun 1s"), HasSubstr(":1: seed"));
  EXPECT_THAT(ErrorOf("seed 0x1ffffffffffffffff\nrun 1s"), HasSubstr("does not fit in 64 bits"));
  EXPECT_THAT(ErrorOf("seed -1\nrun 1s"), HasSubstr("decimal or 0x hex"));
  EXPECT_THAT(ErrorOf("seed 0x\nrun 1s"), HasSubstr("decimal or 0x hex"));
}

TEST(ScenarioSettings, CommentsAndBlankLinesAreIgnoredButCounted) {
  Scenario s = ParseOk(
      "# a fault story\n"
      "\n"
      "   cluster 5   # five nodes\n"
      "\trun 10s\t\n"
      "at 1s crash n5 # the last one\n");
  EXPECT_EQ(s.cluster, 5);
  ASSERT_EQ(s.steps.size(), 1u);
  EXPECT_EQ(s.steps[0].line, 5);
  EXPECT_EQ(s.steps[0].a, Id(5));
}

TEST(ScenarioSettings, WindowsLineEndingsAreAccepted) {
  Scenario s = ParseOk("cluster 5\r\nrun 10s\r\nat 1s crash n5\r\n");
  EXPECT_EQ(s.run_for, seconds(10));
  ASSERT_EQ(s.steps.size(), 1u);
}

TEST(ScenarioSettings, OutOfRangeValuesAreErrors) {
  EXPECT_EQ(ErrorOf("cluster 8\nrun 1s"),
            "x.scenario:1: cluster size must be an integer in 1..7, got '8'");
  EXPECT_THAT(ErrorOf("cluster 0\nrun 1s"), HasSubstr("x.scenario:1: cluster size"));
  EXPECT_THAT(ErrorOf("timing tick=20s\nrun 1s"), HasSubstr("must be in 1ms..10s"));
  EXPECT_THAT(ErrorOf("timing tick=500us\nrun 1s"), HasSubstr("out of range"));
  EXPECT_THAT(ErrorOf("timing election=1\nrun 1s"), HasSubstr("election must be"));
  EXPECT_THAT(ErrorOf("timing election=1001\nrun 1s"), HasSubstr("in 2..1000"));
  EXPECT_THAT(ErrorOf("network latency=5ms..1ms\nrun 1s"), HasSubstr("minimum above"));
  EXPECT_THAT(ErrorOf("disk fsync=2ms..1ms\nrun 1s"), HasSubstr("minimum above"));
  EXPECT_THAT(ErrorOf("workload clients=65\nrun 1s"), HasSubstr("clients must be"));
  EXPECT_THAT(ErrorOf("workload reads=1.1\nrun 1s"), HasSubstr("[0, 1]"));
  EXPECT_THAT(ErrorOf("workload timeout=0s\nrun 1s"), HasSubstr("timeout must be > 0"));
  EXPECT_THAT(ErrorOf("run 0s"), HasSubstr("x.scenario:1: run length '0s' is out of range"));
  EXPECT_THAT(ErrorOf("run 61m"), HasSubstr("must be > 0 and <= 60m"));
}

TEST(ScenarioSettings, BadProbabilitiesAreErrors) {
  EXPECT_EQ(ErrorOf("run 1s\nnetwork loss=1"),
            "x.scenario:2: loss '1' is out of range: must be in [0, 1)");
  EXPECT_THAT(ErrorOf("network duplicate=-0.1\nrun 1s"), HasSubstr("x.scenario:1: duplicate"));
  EXPECT_THAT(ErrorOf("network loss=nan\nrun 1s"), HasSubstr("loss must be a decimal number"));
  EXPECT_THAT(ErrorOf("network loss=lots\nrun 1s"), HasSubstr("loss must be a decimal number"));
}

TEST(ScenarioSettings, MalformedKeyValuesAreErrors) {
  EXPECT_THAT(ErrorOf("network jitter=1ms\nrun 1s"), HasSubstr("unknown key 'jitter'"));
  EXPECT_THAT(ErrorOf("network loss\nrun 1s"), HasSubstr("expected key=value, got 'loss'"));
  EXPECT_THAT(ErrorOf("network loss=\nrun 1s"), HasSubstr("expected key=value"));
  EXPECT_THAT(ErrorOf("network loss=0.1 loss=0.2\nrun 1s"), HasSubstr("'loss' is given twice"));
  EXPECT_THAT(ErrorOf("timing\nrun 1s"), HasSubstr("'timing' needs at least one of tick="));
  EXPECT_THAT(ErrorOf("network latency=5ms\nrun 1s"), HasSubstr("expected a range"));
}

TEST(ScenarioSettings, UnknownDirectivesAndExtraTokensAreErrors) {
  EXPECT_EQ(ErrorOf("run 1s\nexplode now"), "x.scenario:2: unknown directive 'explode'");
  EXPECT_EQ(ErrorOf("run 30s 40s"), "x.scenario:1: unexpected '40s' (usage: run <duration>)");
  EXPECT_THAT(ErrorOf("cluster 3 5\nrun 1s"), HasSubstr("x.scenario:1: unexpected '5'"));
  EXPECT_THAT(ErrorOf("run"), HasSubstr("x.scenario:1: missing argument"));
}

TEST(ScenarioSettings, ASettingGivenTwiceIsAnError) {
  EXPECT_EQ(ErrorOf("run 1s\nseed 1\n\nseed 2\n"),
            "x.scenario:4: duplicate 'seed' (first set on line 2)");
  EXPECT_THAT(ErrorOf("cluster 3\ncluster 5\nrun 1s"), HasSubstr("x.scenario:2: duplicate"));
}

TEST(ScenarioSettings, ClusterMustComeBeforeAnyStepOrExpectation) {
  EXPECT_EQ(ErrorOf("run 10s\nat 1s crash n1\ncluster 5\n"),
            "x.scenario:3: 'cluster' must come before any step or expectation (the first is on "
            "line 2)");
  EXPECT_THAT(ErrorOf("run 10s\nexpect acked 0s..10s > 0\ncluster 5\n"),
              HasSubstr("x.scenario:3: 'cluster' must come before"));
}

TEST(ScenarioSettings, MissingRunIsAnErrorAtTheLastLine) {
  EXPECT_EQ(ErrorOf("cluster 3\nseed 1\n# no run here\n"),
            "x.scenario:3: missing 'run <duration>'");
  EXPECT_EQ(ErrorOf(""), "x.scenario:1: missing 'run <duration>'");
}

// ---------------------------------------------------------------------------------------
// Steps: one test per kind

TEST(ScenarioSteps, PartitionKeepsEachGroupInOrder) {
  Step step = OneStep("partition {n1,n2} {n3}");
  EXPECT_EQ(step.kind, StepKind::kPartition);
  EXPECT_EQ(step.at, seconds(1));
  EXPECT_EQ(step.line, 2);
  ASSERT_EQ(step.groups.size(), 2u);
  EXPECT_EQ(step.groups[0], (NodeSet{Id(1), Id(2)}));
  EXPECT_EQ(step.groups[1], (NodeSet{Id(3)}));
}

TEST(ScenarioSteps, PartitionSetsMayHaveSpacesAndSymbolicNodes) {
  Step step = OneStep("partition { n1, leader } {follower ,n3}   {n2}");
  ASSERT_EQ(step.groups.size(), 3u);
  EXPECT_EQ(step.groups[0], (NodeSet{Id(1), Ref(NodeRef::Kind::kLeader)}));
  EXPECT_EQ(step.groups[1], (NodeSet{Ref(NodeRef::Kind::kFollower), Id(3)}));
  EXPECT_EQ(step.groups[2], (NodeSet{Id(2)}));
}

TEST(ScenarioSteps, IsolateNamesOneNode) {
  Step step = OneStep("isolate n2");
  EXPECT_EQ(step.kind, StepKind::kIsolate);
  EXPECT_EQ(step.a, Id(2));
}

TEST(ScenarioSteps, CutIsBothWaysUnlessWrittenWithAnArrow) {
  Step both = OneStep("cut n1 n2");
  EXPECT_EQ(both.kind, StepKind::kCut);
  EXPECT_EQ(both.a, Id(1));
  EXPECT_EQ(both.b, Id(2));
  EXPECT_FALSE(both.one_way);
  Step one = OneStep("cut leader -> n3");
  EXPECT_EQ(one.kind, StepKind::kCut);
  EXPECT_EQ(one.a, Ref(NodeRef::Kind::kLeader));
  EXPECT_EQ(one.b, Id(3));
  EXPECT_TRUE(one.one_way);
}

TEST(ScenarioSteps, RestoreIsBothWaysUnlessWrittenWithAnArrow) {
  Step both = OneStep("restore n3 n1");
  EXPECT_EQ(both.kind, StepKind::kRestore);
  EXPECT_EQ(both.a, Id(3));
  EXPECT_EQ(both.b, Id(1));
  EXPECT_FALSE(both.one_way);
  Step one = OneStep("restore n2 -> follower");
  EXPECT_EQ(one.kind, StepKind::kRestore);
  EXPECT_EQ(one.b, Ref(NodeRef::Kind::kFollower));
  EXPECT_TRUE(one.one_way);
}

TEST(ScenarioSteps, HealTakesNoArguments) {
  EXPECT_EQ(OneStep("heal").kind, StepKind::kHeal);
  EXPECT_THAT(StepError("heal n1"), HasSubstr("x.scenario:2: unexpected 'n1' (usage: heal)"));
}

TEST(ScenarioSteps, CrashNamesOneNode) {
  Step step = OneStep("crash leader");
  EXPECT_EQ(step.kind, StepKind::kCrash);
  EXPECT_EQ(step.a, Ref(NodeRef::Kind::kLeader));
}

TEST(ScenarioSteps, RestartTakesOneNodeOrAll) {
  Step one = OneStep("restart n3");
  EXPECT_EQ(one.kind, StepKind::kRestart);
  EXPECT_EQ(one.a, Id(3));
  EXPECT_EQ(OneStep("restart all").a, Ref(NodeRef::Kind::kAll));
}

TEST(ScenarioSteps, PauseHasANodeAndALength) {
  Step step = OneStep("pause n2 800ms");
  EXPECT_EQ(step.kind, StepKind::kPause);
  EXPECT_EQ(step.a, Id(2));
  EXPECT_EQ(step.duration, Millis(800));
  EXPECT_THAT(StepError("pause n2 0ms"), HasSubstr("x.scenario:2: pause length must be > 0"));
  EXPECT_THAT(StepError("pause n2"), HasSubstr("x.scenario:2: missing argument"));
}

TEST(ScenarioSteps, SkewTakesAnOffsetWithOrWithoutAPlusSign) {
  Step plus = OneStep("skew n1 +300ms");
  EXPECT_EQ(plus.kind, StepKind::kSkew);
  EXPECT_EQ(plus.a, Id(1));
  EXPECT_EQ(plus.offset, Millis(300));
  EXPECT_EQ(OneStep("skew n1 2s").offset, seconds(2));
}

TEST(ScenarioSteps, DriftIsARateStrictlyWithinAHalf) {
  Step fast = OneStep("drift n3 0.05");
  EXPECT_EQ(fast.kind, StepKind::kDrift);
  EXPECT_EQ(fast.a, Id(3));
  EXPECT_DOUBLE_EQ(fast.value, 0.05);
  EXPECT_DOUBLE_EQ(OneStep("drift n3 -0.49").value, -0.49);
  EXPECT_THAT(StepError("drift n3 0.5"), HasSubstr("x.scenario:2: drift '0.5' is out of range"));
  EXPECT_THAT(StepError("drift n3 -0.5"), HasSubstr("out of range"));
  EXPECT_THAT(StepError("drift n3 fast"), HasSubstr("drift must be a decimal number"));
}

TEST(ScenarioSteps, LossAndDuplicateAreProbabilities) {
  Step loss = OneStep("loss 0.2");
  EXPECT_EQ(loss.kind, StepKind::kLoss);
  EXPECT_DOUBLE_EQ(loss.value, 0.2);
  Step dup = OneStep("duplicate 0.05");
  EXPECT_EQ(dup.kind, StepKind::kDuplicate);
  EXPECT_DOUBLE_EQ(dup.value, 0.05);
  EXPECT_DOUBLE_EQ(OneStep("loss 0").value, 0.0);
}

TEST(ScenarioSteps, LatencyStoresItsMinimumAndMaximum) {
  Step step = OneStep("latency 1ms..20ms");
  EXPECT_EQ(step.kind, StepKind::kLatency);
  EXPECT_EQ(step.duration, Millis(1));
  EXPECT_EQ(step.duration2, Millis(20));
  EXPECT_THAT(StepError("latency 20ms..1ms"), HasSubstr("x.scenario:2: range '20ms..1ms'"));
}

TEST(ScenarioSteps, LatencyMayNameOneLinkEitherWayOrOneWay) {
  Step both = OneStep("latency n1 n2 5ms..50ms");
  EXPECT_EQ(both.a.id, NodeId(1));
  EXPECT_EQ(both.b.id, NodeId(2));
  EXPECT_FALSE(both.one_way);
  EXPECT_EQ(both.duration, Millis(5));
  EXPECT_EQ(both.duration2, Millis(50));
  Step one = OneStep("latency n2 -> n3 1ms..2ms");
  EXPECT_TRUE(one.one_way);
  EXPECT_EQ(one.b.id, NodeId(3));
  Step global = OneStep("latency 1ms..2ms");
  EXPECT_TRUE(global.a.id.IsZero());
  EXPECT_THAT(StepError("latency n1 n1 1ms..2ms"), HasSubstr("two different nodes"));
}

TEST(ScenarioSteps, ChurnHasADuration) {
  Step step = OneStep("churn 5s");
  EXPECT_EQ(step.kind, StepKind::kChurn);
  EXPECT_EQ(step.duration, std::chrono::seconds(5));
  EXPECT_THAT(StepError("churn 0s"), HasSubstr("churn duration must be > 0"));
}

TEST(ScenarioSettings, RaftDirectiveSetsTheRaftOptions) {
  absl::StatusOr<Scenario> s = ParseScenario(
      "raft pre_vote=off check_quorum=on message_bytes=1 inflight=2 snapshot=50\nrun 1s\n",
      "x.scenario");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->pre_vote);
  EXPECT_TRUE(s->check_quorum);
  EXPECT_EQ(s->message_bytes_max, 1u);
  EXPECT_EQ(s->inflight_messages_max, 2u);
  EXPECT_EQ(s->snapshot_entries, 50u);
  EXPECT_FALSE(ParseScenario("raft pre_vote=maybe\nrun 1s\n", "x.scenario").ok());
  EXPECT_FALSE(ParseScenario("raft inflight=0\nrun 1s\n", "x.scenario").ok());
}

TEST(ScenarioSteps, SwizzleHasAnInterval) {
  Step step = OneStep("swizzle 100ms");
  EXPECT_EQ(step.kind, StepKind::kSwizzle);
  EXPECT_EQ(step.duration, Millis(100));
  EXPECT_THAT(StepError("swizzle 0s"), HasSubstr("swizzle interval must be > 0"));
}

TEST(ScenarioSteps, FlapHasALinkAnIntervalAndATotal) {
  Step step = OneStep("flap n1 n2 200ms 5s");
  EXPECT_EQ(step.kind, StepKind::kFlap);
  EXPECT_EQ(step.a, Id(1));
  EXPECT_EQ(step.b, Id(2));
  EXPECT_EQ(step.duration, Millis(200));
  EXPECT_EQ(step.duration2, seconds(5));
  EXPECT_FALSE(step.one_way);
  EXPECT_THAT(StepError("flap n1 n2 5s 1s"), HasSubstr("x.scenario:2: flap interval"));
  EXPECT_THAT(StepError("flap n1 n2 200ms"), HasSubstr("missing argument"));
}

TEST(ScenarioSteps, TransferNamesTheNewLeader) {
  Step step = OneStep("transfer follower");
  EXPECT_EQ(step.kind, StepKind::kTransfer);
  EXPECT_EQ(step.a, Ref(NodeRef::Kind::kFollower));
}

TEST(ScenarioSteps, FailWriteAndFailSyncNameOneNode) {
  Step write = OneStep("fail-write n2");
  EXPECT_EQ(write.kind, StepKind::kFailWrite);
  EXPECT_EQ(write.a, Id(2));
  EXPECT_EQ(write.at, seconds(1));
  EXPECT_EQ(write.line, 2);
  EXPECT_TRUE(write.label.empty());
  Step sync = OneStep("fail-sync leader");
  EXPECT_EQ(sync.kind, StepKind::kFailSync);
  EXPECT_EQ(sync.a, Ref(NodeRef::Kind::kLeader));
}

TEST(ScenarioSteps, FillDiskNamesOneNode) {
  Step step = OneStep("fill-disk follower");
  EXPECT_EQ(step.kind, StepKind::kFillDisk);
  EXPECT_EQ(step.a, Ref(NodeRef::Kind::kFollower));
}

TEST(ScenarioSteps, FreeDiskTakesOneNodeOrAll) {
  Step one = OneStep("free-disk n3");
  EXPECT_EQ(one.kind, StepKind::kFreeDisk);
  EXPECT_EQ(one.a, Id(3));
  Step all = OneStep("free-disk all");
  EXPECT_EQ(all.kind, StepKind::kFreeDisk);
  EXPECT_EQ(all.a, Ref(NodeRef::Kind::kAll));
}

TEST(ScenarioSteps, DiskFaultStepsTakeExactlyOneNode) {
  for (std::string_view name : {"fail-write", "fail-sync", "fill-disk", "free-disk"}) {
    const std::string step(name);
    EXPECT_EQ(StepError(step),
              "x.scenario:2: missing argument (usage: " + step +
                  (name == "free-disk" ? " A|all)" : " A)"));
    EXPECT_THAT(StepError(step + " n1 n2"),
                HasSubstr("x.scenario:2: unexpected 'n2' (usage: " + step));
    EXPECT_THAT(StepError(step + " n1 5s"), HasSubstr("x.scenario:2: unexpected '5s'"));
    EXPECT_THAT(StepError(step + " n6"), HasSubstr("x.scenario:2: node 'n6' is out of range"));
    EXPECT_THAT(StepError(step + " {n1,n2}"), HasSubstr("x.scenario:2: expected a single node"));
  }
}

TEST(ScenarioSteps, OnlyFreeDiskAmongTheDiskFaultsAcceptsAll) {
  for (std::string_view step : {"fail-write all", "fail-sync all", "fill-disk all"}) {
    EXPECT_THAT(StepError(step), HasSubstr("x.scenario:2: 'all' is not allowed here")) << step;
  }
  EXPECT_TRUE(Parse("run 30s\nat 1s free-disk all\n").ok());
}

TEST(ScenarioSteps, AFilledDiskIsFreedThroughTheLabelOfTheNodeThatFilled) {
  Scenario s = ParseOk(
      "run 30s\n"
      "at 2s fill-disk leader as full\n"
      "at 3s fail-sync full\n"
      "at 9s free-disk full\n");
  ASSERT_EQ(s.steps.size(), 3u);
  EXPECT_EQ(s.steps[0].kind, StepKind::kFillDisk);
  EXPECT_EQ(s.steps[0].label, "full");
  EXPECT_EQ(s.steps[1].kind, StepKind::kFailSync);
  EXPECT_EQ(s.steps[1].a, Label("full"));
  EXPECT_EQ(s.steps[2].kind, StepKind::kFreeDisk);
  EXPECT_EQ(s.steps[2].a, Label("full"));
  EXPECT_EQ(s.steps[2].at, seconds(9));
}

TEST(ScenarioSteps, StepsAreSortedByTimeKeepingFileOrderForEqualTimes) {
  Scenario s = ParseOk(
      "run 30s\n"
      "at 5s crash n1\n"
      "at 1s crash n2\n"
      "at 5s restart n1\n"
      "at 1.0s restart n2\n"
      "at 0s heal\n");
  ASSERT_EQ(s.steps.size(), 5u);
  EXPECT_EQ(s.steps[0].line, 6);
  EXPECT_EQ(s.steps[1].line, 3);
  EXPECT_EQ(s.steps[2].line, 5);
  EXPECT_EQ(s.steps[3].line, 2);
  EXPECT_EQ(s.steps[4].line, 4);
}

TEST(ScenarioSteps, TheLastStepMayStartJustBeforeTheEndOfTheRun) {
  Scenario s = ParseOk("run 30s\nat 29.999s heal\n");
  EXPECT_EQ(s.steps.at(0).at, Millis(29999));
}

// ---------------------------------------------------------------------------------------
// Labels

TEST(ScenarioLabels, AsBindsALabelThatLaterStepsUse) {
  Scenario s = ParseOk(
      "run 30s\n"
      "at 2s crash leader as old_leader\n"
      "at 5s restart old_leader\n"
      "at 5s cut old_leader -> n2\n"
      "at 6s partition {old_leader} {n2,n3}\n");
  ASSERT_EQ(s.steps.size(), 4u);
  EXPECT_EQ(s.steps[0].label, "old_leader");
  EXPECT_EQ(s.steps[0].a, Ref(NodeRef::Kind::kLeader));
  EXPECT_EQ(s.steps[1].a, Label("old_leader"));
  EXPECT_TRUE(s.steps[1].label.empty());
  EXPECT_EQ(s.steps[2].a, Label("old_leader"));
  EXPECT_EQ(s.steps[3].groups[0], (NodeSet{Label("old_leader")}));
}

TEST(ScenarioLabels, EverySingleNodeStepMayBindALabel) {
  for (std::string_view step :
       {"isolate n1 as x", "crash n1 as x", "restart n1 as x", "pause n1 1s as x",
        "skew n1 +1ms as x", "drift n1 0.1 as x", "transfer follower as x",
        "fail-write n1 as x", "fail-sync leader as x", "fill-disk follower as x",
        "free-disk n2 as x"}) {
    EXPECT_EQ(OneStep(step).label, "x") << step;
  }
}

TEST(ScenarioLabels, UsingAnUnboundLabelIsAnError) {
  EXPECT_EQ(StepError("crash ghost"),
            "x.scenario:2: label 'ghost' is not bound by an earlier step");
}

TEST(ScenarioLabels, ALabelBoundOnALaterLineIsNotYetBound) {
  EXPECT_EQ(ErrorOf("run 30s\nat 9s restart x\nat 1s crash leader as x\n"),
            "x.scenario:2: label 'x' is not bound by an earlier step");
}

TEST(ScenarioLabels, ALabelBoundAtALaterTimeIsAnError) {
  EXPECT_EQ(ErrorOf("run 30s\nat 9s crash leader as x\nat 1s restart x\n"),
            "x.scenario:3: label 'x' is bound at 9s (line 2), after this step at 1s");
}

TEST(ScenarioLabels, ALabelCannotBeBoundTwice) {
  EXPECT_EQ(ErrorOf("run 30s\nat 1s crash leader as x\nat 2s crash leader as x\n"),
            "x.scenario:3: label 'x' is already bound on line 2");
}

TEST(ScenarioLabels, ReservedWordsAndBadNamesAreNotLabels) {
  EXPECT_THAT(StepError("crash n1 as leader"), HasSubstr("x.scenario:2: label 'leader' is a "
                                                         "reserved word"));
  EXPECT_THAT(StepError("crash n1 as all"), HasSubstr("reserved word"));
  EXPECT_THAT(StepError("crash n1 as follower"), HasSubstr("reserved word"));
  EXPECT_THAT(StepError("crash n1 as n7"), HasSubstr("label 'n7' is a reserved word"));
  EXPECT_THAT(StepError("crash n1 as Old"), HasSubstr("bad label 'Old'"));
  EXPECT_THAT(StepError("crash n1 as 9x"), HasSubstr("bad label '9x'"));
  EXPECT_THAT(StepError("crash n1 as"), HasSubstr("missing label after 'as'"));
  EXPECT_THAT(StepError("crash n1 as x y"), HasSubstr("unexpected 'y' after 'as x'"));
}

TEST(ScenarioLabels, OnlySingleNodeStepsMayBindALabel) {
  EXPECT_THAT(StepError("cut n1 n2 as x"),
              HasSubstr("x.scenario:2: 'as' is only allowed on single-node steps, not 'cut'"));
  EXPECT_THAT(StepError("heal as x"), HasSubstr("not 'heal'"));
  EXPECT_THAT(StepError("restart all as x"), HasSubstr("'as' needs a single node, not 'all'"));
  EXPECT_THAT(StepError("free-disk all as x"), HasSubstr("x.scenario:2: 'as' needs a single node"));
}

TEST(ScenarioLabels, ExpectationsMayUseALabelBoundByAnEarlierStep) {
  Scenario s = ParseOk(
      "run 30s\n"
      "at 2s crash leader as old\n"
      "expect leader_ms old 10s..30s == 0\n");
  ASSERT_EQ(s.expectations.size(), 1u);
  EXPECT_EQ(s.expectations[0].nodes, (NodeSet{Label("old")}));
  EXPECT_EQ(ErrorOf("run 30s\nexpect leader_ms old 10s..30s == 0\n"),
            "x.scenario:2: label 'old' is not bound by an earlier step");
}

// ---------------------------------------------------------------------------------------
// Expectations

TEST(ScenarioExpectations, ParseEveryFieldAndKeepTheTrimmedLine) {
  Scenario s = ParseOk("run 30s\n  expect commits 0s..30s >= 10  \n");
  ASSERT_EQ(s.expectations.size(), 1u);
  const Expectation& e = s.expectations[0];
  EXPECT_EQ(e.metric, Metric::kCommits);
  EXPECT_TRUE(e.nodes.empty());
  EXPECT_EQ(e.from, Nanos(0));
  EXPECT_EQ(e.to, seconds(30));
  EXPECT_EQ(e.op, Compare::kGe);
  EXPECT_DOUBLE_EQ(e.value, 10);
  EXPECT_EQ(e.line, 2);
  EXPECT_EQ(e.text, "expect commits 0s..30s >= 10");
}

TEST(ScenarioExpectations, NodesAreASingleReferenceOrASet) {
  Scenario s = ParseOk(
      "cluster 5\n"
      "run 30s\n"
      "expect leader_ms n1 5s..10s < 100\n"
      "expect elections {n1, n2} 10s..20s == 0\n"
      "expect leader_commits leader 1.5s..2s > 0.5\n"
      "expect commits all 0s..1s != 3\n");
  ASSERT_EQ(s.expectations.size(), 4u);
  EXPECT_EQ(s.expectations[0].metric, Metric::kLeaderMs);
  EXPECT_EQ(s.expectations[0].nodes, (NodeSet{Id(1)}));
  EXPECT_EQ(s.expectations[0].op, Compare::kLt);
  EXPECT_EQ(s.expectations[1].metric, Metric::kElections);
  EXPECT_EQ(s.expectations[1].nodes, (NodeSet{Id(1), Id(2)}));
  EXPECT_EQ(s.expectations[1].from, seconds(10));
  EXPECT_EQ(s.expectations[1].op, Compare::kEq);
  EXPECT_EQ(s.expectations[2].metric, Metric::kLeaderCommits);
  EXPECT_EQ(s.expectations[2].nodes, (NodeSet{Ref(NodeRef::Kind::kLeader)}));
  EXPECT_EQ(s.expectations[2].from, Millis(1500));
  EXPECT_DOUBLE_EQ(s.expectations[2].value, 0.5);
  // `all` is stored as the empty set, which the header defines as every node.
  EXPECT_TRUE(s.expectations[3].nodes.empty());
  EXPECT_EQ(s.expectations[3].op, Compare::kNe);
}

TEST(ScenarioExpectations, EveryMetricAndComparisonHasAName) {
  Scenario s = ParseOk(
      "run 30s\n"
      "expect acked 0s..1s <= 1\n"
      "expect failed 0s..1s > 1\n");
  ASSERT_EQ(s.expectations.size(), 2u);
  EXPECT_EQ(s.expectations[0].metric, Metric::kAcked);
  EXPECT_EQ(s.expectations[0].op, Compare::kLe);
  EXPECT_EQ(s.expectations[1].metric, Metric::kFailed);
  EXPECT_EQ(s.expectations[1].op, Compare::kGt);
}

TEST(ScenarioExpectations, MalformedExpectationsAreErrors) {
  EXPECT_EQ(ErrorOf("run 30s\nexpect commits 0s..40s >= 1\n"),
            "x.scenario:2: window ends at 40s, after the end of the run (30s)");
  EXPECT_THAT(ErrorOf("run 30s\nexpect commits 5s..5s >= 1\n"),
              HasSubstr("x.scenario:2: window '5s..5s' is empty"));
  EXPECT_THAT(ErrorOf("run 30s\nexpect commits 6s..5s >= 1\n"), HasSubstr("minimum above"));
  EXPECT_THAT(ErrorOf("run 30s\nexpect throughput 0s..5s >= 1\n"),
              HasSubstr("x.scenario:2: unknown metric 'throughput'"));
  EXPECT_THAT(ErrorOf("run 30s\nexpect commits 0s..5s => 1\n"),
              HasSubstr("unknown comparison '=>'"));
  EXPECT_THAT(ErrorOf("run 30s\nexpect commits 0s..5s >= many\n"),
              HasSubstr("expected value must be a decimal number"));
  EXPECT_THAT(ErrorOf("run 30s\nexpect acked n1 0s..5s >= 1\n"),
              HasSubstr("'acked' counts client requests and takes no nodes"));
  EXPECT_THAT(ErrorOf("run 30s\nexpect commits 0s..5s >= 1 2\n"),
              HasSubstr("x.scenario:2: unexpected '2'"));
  EXPECT_THAT(ErrorOf("run 30s\nexpect commits 0s..5s >=\n"), HasSubstr("missing argument"));
  EXPECT_THAT(ErrorOf("run 30s\nexpect commits n4 0s..5s >= 1\n"), HasSubstr("out of range"));
  EXPECT_THAT(ErrorOf("run 30s\nexpect commits {n1,all} 0s..5s >= 1\n"),
              HasSubstr("'all' is not allowed here"));
}

// ---------------------------------------------------------------------------------------
// Errors: one test per class, each naming the line

TEST(ScenarioErrors, UnknownStepNamesTheStepAndTheLine) {
  EXPECT_EQ(ErrorOf("cluster 3\nseed 1\n\n# comment\nrun 30s\n\nat 1s explode n1\n"),
            "x.scenario:7: unknown step 'explode'");
}

TEST(ScenarioErrors, NodeBeyondTheClusterSizeIsOutOfRange) {
  EXPECT_EQ(ErrorOf("run 30s\nat 1s crash n4\n"),
            "x.scenario:2: node 'n4' is out of range: the cluster has n1..n3");
  EXPECT_THAT(StepError("crash n0"), HasSubstr("x.scenario:2: node 'n0' is out of range"));
  EXPECT_THAT(StepError("partition {n1} {n6}"), HasSubstr("node 'n6' is out of range"));
  EXPECT_THAT(StepError("crash n01"), HasSubstr("bad node reference 'n01'"));
  EXPECT_THAT(StepError("crash n99999999999999999999"), HasSubstr("out of range"));
}

TEST(ScenarioErrors, NegativeSkewIsRejected) {
  EXPECT_EQ(StepError("skew n1 -300ms"), "x.scenario:2: clock skew must be >= 0");
}

TEST(ScenarioErrors, BadStepProbabilitiesAreRejected) {
  EXPECT_EQ(StepError("loss 1"), "x.scenario:2: loss '1' is out of range: must be in [0, 1)");
  EXPECT_THAT(StepError("duplicate -0.01"), HasSubstr("x.scenario:2: duplicate '-0.01'"));
  for (std::string_view bad : {"loss inf", "loss nan", "loss 1e-3", "loss 0x0.1p0", "loss .5"}) {
    EXPECT_THAT(StepError(bad), HasSubstr("x.scenario:2: loss must be a decimal number")) << bad;
  }
}

TEST(ScenarioErrors, AStepAtOrAfterTheEndOfTheRunIsRejected) {
  EXPECT_EQ(ErrorOf("run 30s\nat 40s heal\n"),
            "x.scenario:2: step time 40s is not before the end of the run (30s)");
  // `run` may come after the steps; the check waits for the whole file.
  EXPECT_EQ(ErrorOf("at 1s heal\nat 30s heal\nrun 30s\n"),
            "x.scenario:2: step time 30s is not before the end of the run (30s)");
}

TEST(ScenarioErrors, MalformedNodeSetsAreRejected) {
  EXPECT_EQ(StepError("partition {n1,n2} {n3"),
            "x.scenario:2: malformed node set '{n3': no closing '}'");
  EXPECT_EQ(StepError("partition {n1,{n2}} {n3}"),
            "x.scenario:2: malformed node set '{n1,{': '{' inside a set");
  EXPECT_THAT(StepError("partition {n1,,n2} {n3}"), HasSubstr("empty member"));
  EXPECT_THAT(StepError("partition {n1,n2,} {n3}"), HasSubstr("empty member"));
  EXPECT_THAT(StepError("partition {} {n3}"), HasSubstr("empty node set"));
  EXPECT_THAT(StepError("partition {n1}{n2}"), HasSubstr("malformed node set '{n1}{n2}'"));
  EXPECT_THAT(StepError("partition n1 {n2}"), HasSubstr("malformed node set 'n1'"));
  EXPECT_THAT(StepError("partition {n1} n2}"), HasSubstr("malformed node set 'n2}'"));
  EXPECT_THAT(StepError("partition {n1,n1} {n2}"), HasSubstr("names n1 twice"));
  EXPECT_THAT(StepError("partition {n1,n2} {n2,n3}"), HasSubstr("n2 is in two partition groups"));
  EXPECT_THAT(StepError("partition {n1,n2}"), HasSubstr("at least two groups"));
}

TEST(ScenarioErrors, NodeReferencesAreCheckedWhereTheyAppear) {
  EXPECT_THAT(StepError("crash all"), HasSubstr("x.scenario:2: 'all' is not allowed here"));
  EXPECT_THAT(StepError("crash {n1,n2}"), HasSubstr("expected a single node, got '{n1,n2}'"));
  EXPECT_THAT(StepError("crash N1"), HasSubstr("bad node reference 'N1'"));
  EXPECT_THAT(StepError("cut n1 n1"), HasSubstr("two different nodes, got n1 twice"));
  EXPECT_THAT(StepError("cut n1 -> n2 n3"), HasSubstr("unexpected 'n3'"));
  EXPECT_THAT(StepError("cut n1 ->"), HasSubstr("missing argument"));
  EXPECT_THAT(StepError("crash n1 n2"), HasSubstr("unexpected 'n2' (usage: crash A)"));
}

TEST(ScenarioErrors, BadStepTimesAreRejected) {
  EXPECT_THAT(ErrorOf("run 30s\nat 1s\n"), HasSubstr("x.scenario:2: missing step"));
  EXPECT_THAT(ErrorOf("run 30s\nat 1 heal\n"), HasSubstr("x.scenario:2: duration '1' has no unit"));
  EXPECT_THAT(ErrorOf("run 30s\nat -1s heal\n"), HasSubstr("must be >= 0"));
}

TEST(ScenarioErrors, ControlBytesInMessagesAreEscaped) {
  EXPECT_EQ(ErrorOf("run 30s\nat 1s \x01zap\n"), "x.scenario:2: unknown step '\\x01zap'");
}

// Scenario files are untrusted input: every corruption of a valid file must either parse
// or come back as an error naming a line; it must never crash or trip an assert.
TEST(ScenarioErrors, CorruptedFilesAreRejectedWithALineAndNeverCrash) {
  const std::string valid =
      "cluster 5\nseed 0x2a\ntiming tick=10ms election=5\n"
      "network latency=1ms..2ms loss=0.1 duplicate=0.01\ndisk fsync=1us..2ms\n"
      "workload clients=3 think=1ms timeout=1s reads=0.2\nrun 30s\n"
      "at 1s partition {n1, n2} {n3,leader}\nat 2s crash leader as old\nat 3s restart old\n"
      "at 4s cut n1 -> n2\nat 5s skew n2 +3ms\nat 6s drift n3 -0.1\n"
      "at 7s flap n1 n2 1s 2s\nat 8s latency 1.5ms..2ms\nat 9s restart all\n"
      "at 10s fill-disk n1 as full\nat 11s fail-write n2\nat 12s free-disk all\n"
      "expect commits {n1,old} 0s..30s >= 1\nexpect acked 1.5s..2s != 0 # c\n";
  ASSERT_TRUE(Parse(valid).ok());
  const auto names_a_line = ::testing::ContainsRegex("^x\\.scenario:[0-9]+: ");
  const std::string replacements = "{}, \n#.-+>=09nasm\x01";
  for (size_t i = 0; i < valid.size(); ++i) {
    std::vector<std::string> variants = {valid.substr(0, i),
                                         valid.substr(0, i) + valid.substr(i + 1)};
    for (char c : replacements) {
      variants.push_back(valid);
      variants.back()[i] = c;
    }
    for (const std::string& text : variants) {
      absl::StatusOr<Scenario> scenario = Parse(text);
      if (scenario.ok()) continue;
      EXPECT_THAT(std::string(scenario.status().message()), names_a_line) << text;
    }
  }
}

}  // namespace
}  // namespace keel::sim
