#pragma once
// SimDisk: a simulated disk for SQLite, as a custom sqlite3_vfs, so that the simulator
// runs the real SQLite (and the real storage code) on a disk it controls.
//
// Files live in memory. Each file has a durable image and a current image; writes change
// only the current image until an xSync of that file (like fsync) completes, which is
// when begin_sync says: the simulator's fsync latency. Crash() throws away everything not
// durable by then: every file goes back to its durable image, optionally with a torn
// write: a sector-aligned prefix (512 B granularity) of the last write that was not yet
// durable reaches the disk, as a power cut in mid-write would leave it. Program order is
// kept across files: SQLite issued nothing after a sync until that sync returned, so a
// write issued after the first sync still in flight at the crash never happened and is
// never torn onto the disk (e.g. a WAL reset after a checkpoint whose database fsync had
// not completed).
// File creation and deletion are durable at once (we do not model directory fsyncs).
//
// Fault injection: a hook is asked before every write and sync and may fail it with
// SQLITE_IOERR_WRITE, SQLITE_IOERR_FSYNC or SQLITE_FULL; a capacity makes every write
// that would grow the files past it fail with SQLITE_FULL (a full disk). SQLite itself is made
// deterministic: xRandomness, xCurrentTime and xSleep come from the hooks (WAL salts
// included), never from the machine.
//
// One SimDisk per simulated node; each registers its own VFS under a unique name (pass
// vfs_name() to SqliteStorage::Options). Not thread-safe: one simulation thread uses it.
// Locking is a no-op (one connection per disk, PRAGMA locking_mode=EXCLUSIVE, which
// lets WAL mode run without a shared-memory file).

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/types.h"

struct sqlite3_vfs;

namespace keel::storage {

class SimDisk {
 public:
  enum class Op { kWrite, kSync };
  struct Hooks {
    Rng* rng = nullptr;                       // required: SQLite's randomness
    std::function<Nanos()> now;               // required: SQLite's clock
    // A sync is starting; returns when (virtual time) it completes. Until then its writes
    // are not durable: a crash before that time loses them. Null: syncs complete at once.
    // It must not return before `not_before`: when a sync already in flight on the file
    // completes.
    std::function<Nanos(const std::string& file, Nanos not_before)> begin_sync;
    // Before each write or sync: return SQLITE_OK or the error to fail it with.
    std::function<int(Op op, const std::string& file)> fault;
    // Test-only planted bug: xSync returns OK at once without making anything durable
    // (an fsync that lies, or a storage layer that skips it); the writes reach the disk
    // a second later, when a drive's volatile cache would be written back.
    bool planted_skip_sync = false;
  };

  explicit SimDisk(Hooks hooks);
  ~SimDisk();
  SimDisk(const SimDisk&) = delete;
  SimDisk& operator=(const SimDisk&) = delete;

  const char* vfs_name() const { return name_.c_str(); }

  // SQLite draws WAL salts and temp names from one process-wide PRNG, seeded from the
  // default VFS, not ours. A simulation run reseeds it from its seed before opening any
  // database. Process-wide: runs that share a process must not run concurrently.
  static void SeedSqlite(uint64_t seed);

  // Power loss: unsynced writes vanish; with `tear`, a sector-aligned prefix of each
  // file's last unsynced write survives. Files open at the time go dead: every further
  // operation on them fails with an I/O error (so closing the old connection cannot
  // write anything), and a new connection sees the durable images.
  // The disk stays off until PowerOn(): meanwhile every operation fails, deletes and
  // opens included, so the old connection's close (which may try to checkpoint and
  // delete the WAL) changes nothing.
  void Crash(bool tear);
  // The process dies (kill -9) but the machine stays up: every write it made, synced or
  // not, is still in the page cache and visible to the next process, and becomes
  // durable as the kernel writes it back (here: at the next sync) or is lost to a later
  // power cut. Open files go dead as in Crash, and every operation fails until PowerOn,
  // so the dead connection's close changes nothing.
  void ProcessExit() {
    ++epoch_;
    powered_off_ = true;
  }
  void PowerOn() { powered_off_ = false; }

  int open_files() const { return open_files_; }

  // Space: the bytes every file's current image takes, and the disk's size (default:
  // unlimited). Lowering the capacity below what is used fails only later growth.
  uint64_t used_bytes() const { return used_bytes_; }
  uint64_t free_bytes() const { return capacity_ > used_bytes_ ? capacity_ - used_bytes_ : 0; }
  void SetCapacity(uint64_t bytes) { capacity_ = bytes; }
  uint64_t capacity() const { return capacity_; }
  // FNV-1a over every file's name and durable bytes: equal disks, equal digests.
  uint64_t DurableDigest() const;

 private:
  friend struct SimVfsGlue;
  // A change to a file's current image not yet synced: bytes at an offset, or (with
  // `truncate`) a new size.
  struct Change {
    uint64_t offset = 0;
    std::string bytes;
    bool truncate = false;
    uint64_t seq = 0;  // issue order across all files
  };
  struct InFlightSync {
    Nanos completes_at;
    std::vector<Change> changes;
    uint64_t seq = 0;  // when the sync was called, in the same order as Change::seq
  };
  struct File {
    std::string durable;
    std::string current;
    std::vector<Change> unsynced;        // since the last sync began
    std::deque<InFlightSync> in_flight;  // synced, not yet complete; in completion order
  };
  // Folds every in-flight sync that completed by `now` into the durable image:
  // O(bytes written), never O(file size).
  static void FoldCompleted(File& file, Nanos now);
  static void ApplyTo(const Change& change, std::string& image);
  void Remove(const std::string& name);  // deletes a file, durably

  Hooks hooks_;
  std::string name_;
  sqlite3_vfs* vfs_;
  std::map<std::string, File> files_;
  uint64_t epoch_ = 0;  // bumped by Crash; handles from an older epoch are dead
  uint64_t next_seq_ = 1;
  bool powered_off_ = false;
  int open_files_ = 0;
  uint64_t temp_counter_ = 0;
  uint64_t used_bytes_ = 0;
  std::set<std::string> delete_on_close_;  // open with SQLITE_OPEN_DELETEONCLOSE
  uint64_t capacity_ = UINT64_MAX;
};

}  // namespace keel::storage
