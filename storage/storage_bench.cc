// keel-storage-bench (Google Benchmark): the durable log on this machine's disk.
//
//   BM_LogAppend/batch:N   N entries of 256 B appended and synced as one transaction
//                          (one Ready = one fsync); counters: entries/s, syncs/s.
//   BM_Fsync               a raw write+fdatasync of 4 KiB, for reference: the ceiling
//                          on transactions per second on this disk.
//   BM_SimDiskAppend/N     the same appends on the simulated disk (CPU cost per op).
//
// The database lives in $KEEL_BENCH_DIR (default /tmp); each benchmark removes its files.

#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "storage/sim_vfs.h"
#include "storage/sqlite_storage.h"

namespace keel::storage {
namespace {

std::string BenchDir() {
  const char* dir = std::getenv("KEEL_BENCH_DIR");
  return dir != nullptr ? dir : "/tmp";
}

std::vector<raft::Entry> Batch(uint64_t first, int64_t count) {
  std::vector<raft::Entry> out;
  for (int64_t k = 0; k < count; ++k) {
    out.push_back({Term(1), LogIndex(first + static_cast<uint64_t>(k)),
                   raft::EntryType::kNormal, std::string(256, 'e')});
  }
  return out;
}

void AppendLoop(benchmark::State& state, SqliteStorage& s) {
  uint64_t next = 1;
  for (auto _ : state) {
    std::vector<raft::Entry> batch = Batch(next, state.range(0));
    next += batch.size();
    if (!s.Append(batch).ok() ||
        !s.SaveHardState({Term(1), NodeId(1), LogIndex(next - 1)}).ok() || !s.Sync().ok()) {
      state.SkipWithError("storage failed");
      return;
    }
  }
  state.counters["entries_per_s"] = benchmark::Counter(
      static_cast<double>(next - 1), benchmark::Counter::kIsRate);
  state.counters["syncs_per_s"] = benchmark::Counter(
      static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_LogAppend(benchmark::State& state) {
  const std::string path = absl::StrCat(BenchDir(), "/keel-bench-", getpid(), ".db");
  {
    absl::StatusOr<std::unique_ptr<SqliteStorage>> s = SqliteStorage::Open(path, {});
    if (!s.ok()) {
      state.SkipWithError(std::string(s.status().message()).c_str());
      return;
    }
    AppendLoop(state, **s);
  }
  std::filesystem::remove(path);
  std::filesystem::remove(path + "-wal");
}
BENCHMARK(BM_LogAppend)->ArgName("batch")->Arg(1)->Arg(16)->Arg(256)->UseRealTime();

void BM_Fsync(benchmark::State& state) {
  const std::string path = absl::StrCat(BenchDir(), "/keel-bench-fsync-", getpid());
  const int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
  const std::string block(4096, 'f');
  for (auto _ : state) {
    if (pwrite(fd, block.data(), block.size(), 0) != 4096 || fdatasync(fd) != 0) {
      state.SkipWithError("write or fdatasync failed");
      break;
    }
  }
  close(fd);
  std::filesystem::remove(path);
  state.counters["fsyncs_per_s"] = benchmark::Counter(
      static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Fsync)->UseRealTime();

void BM_SimDiskAppend(benchmark::State& state) {
  Rng rng(1);
  SimDisk disk({.rng = &rng, .now = [] { return Nanos(0); }});
  absl::StatusOr<std::unique_ptr<SqliteStorage>> s =
      SqliteStorage::Open("/bench.db", {.vfs = disk.vfs_name()});
  if (!s.ok()) {
    state.SkipWithError(std::string(s.status().message()).c_str());
    return;
  }
  AppendLoop(state, **s);
  s->reset();
}
BENCHMARK(BM_SimDiskAppend)->ArgName("batch")->Arg(1)->Arg(16)->Arg(256);

}  // namespace
}  // namespace keel::storage

BENCHMARK_MAIN();
