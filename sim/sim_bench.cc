// keel-sim-bench: how fast the simulator runs a 5-node cluster, in simulated seconds per
// wall second, at three client loads (Google Benchmark). No faults: this measures the
// cost of the core and the simulator per unit of work, which faults only add to.
//
//   build/sim/keel-sim-bench                      (scripts/bench runs it)
//
// Counters: sim_x = simulated seconds per wall second; writes_per_sim_s = the load.

#include <benchmark/benchmark.h>

#include "sim/scenario.h"
#include "sim/simulator.h"

namespace keel::sim {
namespace {

void BM_FiveNodesUnderLoad(benchmark::State& state) {
  Scenario s;
  s.name = "bench";
  s.cluster = 5;
  s.workload.clients = static_cast<int>(state.range(0));
  s.workload.think = Millis(state.range(1));
  s.workload.read_fraction = 0.1;
  s.run_for = Millis(20000);
  double simulated = 0;
  double writes = 0;
  uint64_t seed = 1;
  for (auto _ : state) {
    RunOptions options;
    options.seed = seed++;
    RunResult r = RunScenario(s, options);
    if (!r.ok) state.SkipWithError(r.failures.front().c_str());
    simulated += r.simulated_seconds;
    writes += static_cast<double>(r.writes_ok);
  }
  state.counters["sim_x"] = benchmark::Counter(simulated, benchmark::Counter::kIsRate);
  state.counters["writes_per_sim_s"] = writes / simulated;
}

BENCHMARK(BM_FiveNodesUnderLoad)
    ->ArgNames({"clients", "think_ms"})
    ->Args({1, 50})
    ->Args({2, 20})
    ->Args({4, 10})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace keel::sim

BENCHMARK_MAIN();
