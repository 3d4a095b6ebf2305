// keel-lease-bench: the lease table at scale (issue: 100,000 leases on a node; expiry
// work grows with the leases that expire, not with all leases). Over the in-memory
// backend, so the figures are the table's own work, not SQLite's.
//
//   build/core/keel-lease-bench
#include <benchmark/benchmark.h>

#include "core/kv/memory_backend.h"
#include "core/kv/store.h"
#include "core/lease/lease.pb.h"
#include "core/lease/lease_table.h"

namespace keel::lease {
namespace {

struct Table {
  explicit Table(int64_t leases) : table(&backend, LeaseConfig{}), store(&backend, &table) {
    for (int64_t id = 1; id <= leases; ++id) {
      // Expiries spread over 100 s of lease clock; one key per lease.
      (void)table.Grant(id, 2 + id % 100);
      kv::Store::Writer w = store.Write();
      (void)w.Put("reg/" + std::to_string(id), "v", id);
      w.End();
    }
  }
  kv::MemoryBackend backend;
  LeaseTable table;
  kv::Store store;
};

// A checkpoint that renews 1,000 leases and expires none: its cost must not grow with
// the number of leases held.
void BM_CheckpointRenewing1000(benchmark::State& state) {
  Table t(state.range(0));
  int64_t clock = 1;
  for (auto _ : state) {
    leasepb::Checkpoint cp;
    cp.set_term(1);
    cp.set_clock_ms(clock++);
    for (int64_t id = 1; id <= 1000; ++id) {
      leasepb::Renewal* r = cp.add_renewals();
      r->set_id(id);
      r->set_expiry_ms(1'000'000 + clock);
    }
    std::vector<mvccpb::Event> events;
    std::vector<int64_t> revoked;
    benchmark::DoNotOptimize(t.table.ApplyCheckpoint(cp, &t.store, &events, &revoked));
  }
  state.SetItemsProcessed(state.iterations() * 1000);
}
BENCHMARK(BM_CheckpointRenewing1000)->Arg(1'000)->Arg(100'000)->Unit(benchmark::kMicrosecond);

// Expiring leases: each checkpoint moves the clock 1 s and revokes the leases due in
// it (1% of them here), each with its key in its own revision.
void BM_CheckpointExpiring(benchmark::State& state) {
  for (auto _ : state) {
    state.PauseTiming();
    Table t(state.range(0));
    state.ResumeTiming();
    int64_t revoked_total = 0;
    for (int64_t second = 1; second <= 10; ++second) {
      leasepb::Checkpoint cp;
      cp.set_term(1);
      cp.set_clock_ms(second * 1000 + 2000);
      std::vector<mvccpb::Event> events;
      std::vector<int64_t> revoked;
      benchmark::DoNotOptimize(t.table.ApplyCheckpoint(cp, &t.store, &events, &revoked));
      revoked_total += static_cast<int64_t>(revoked.size());
    }
    state.counters["revoked"] = static_cast<double>(revoked_total);
  }
}
BENCHMARK(BM_CheckpointExpiring)->Arg(10'000)->Arg(100'000)->Unit(benchmark::kMillisecond)
    ->Iterations(3);

}  // namespace
}  // namespace keel::lease

BENCHMARK_MAIN();
