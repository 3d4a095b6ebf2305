#include "storage/sim_vfs.h"

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "core/assert.h"

namespace keel::storage {
namespace {
constexpr Nanos kLyingCacheWriteback = Millis(1000);  // planted_skip_sync
}  // namespace

// The sqlite3_file SQLite allocates for us (szOsFile bytes); `base` must come first.
struct SimFileHandle {
  sqlite3_file base;
  SimDisk* disk;
  std::string* name;
  uint64_t epoch;  // the disk's epoch when opened: older means the power went out since
  bool delete_on_close;
};

struct SimVfsGlue {
  static SimDisk* Disk(sqlite3_vfs* vfs) { return static_cast<SimDisk*>(vfs->pAppData); }
  static SimFileHandle* Handle(sqlite3_file* f) { return reinterpret_cast<SimFileHandle*>(f); }
  static SimDisk::File& FileOf(sqlite3_file* f) {
    SimFileHandle* h = Handle(f);
    return h->disk->files_.at(*h->name);
  }
  static bool Dead(sqlite3_file* f) { return Handle(f)->epoch != Handle(f)->disk->epoch_; }
  static int Fault(SimDisk* disk, SimDisk::Op op, const std::string& name) {
    return disk->hooks_.fault ? disk->hooks_.fault(op, name) : SQLITE_OK;
  }

  // ---- io methods ----
  static int Close(sqlite3_file* f) {
    SimFileHandle* h = Handle(f);
    if (h->delete_on_close && !Dead(f)) h->disk->Remove(*h->name);
    if (h->delete_on_close) h->disk->delete_on_close_.erase(*h->name);
    --h->disk->open_files_;
    delete h->name;
    h->name = nullptr;
    return SQLITE_OK;
  }
  static int Read(sqlite3_file* f, void* out, int amount, sqlite3_int64 offset) {
    if (Dead(f)) return SQLITE_IOERR_READ;
    const std::string& data = FileOf(f).current;
    const uint64_t off = static_cast<uint64_t>(offset);
    const uint64_t available = off < data.size() ? data.size() - off : 0;
    const uint64_t n = std::min<uint64_t>(available, static_cast<uint64_t>(amount));
    if (n > 0) std::memcpy(out, data.data() + off, n);
    if (n < static_cast<uint64_t>(amount)) {
      // SQLite requires the unread tail zero-filled on a short read.
      std::memset(static_cast<char*>(out) + n, 0, static_cast<size_t>(amount) - n);
      return SQLITE_IOERR_SHORT_READ;
    }
    return SQLITE_OK;
  }
  static int Write(sqlite3_file* f, const void* in, int amount, sqlite3_int64 offset) {
    SimFileHandle* h = Handle(f);
    if (Dead(f)) return SQLITE_IOERR_WRITE;
    if (int rc = Fault(h->disk, SimDisk::Op::kWrite, *h->name); rc != SQLITE_OK) return rc;
    SimDisk::File& file = FileOf(f);
    const uint64_t end = static_cast<uint64_t>(offset) + static_cast<uint64_t>(amount);
    if (end > file.current.size() && end - file.current.size() > h->disk->free_bytes()) {
      return SQLITE_FULL;
    }
    Record(h->disk, file, {static_cast<uint64_t>(offset),
                           std::string(static_cast<const char*>(in), amount), false,
                           h->disk->next_seq_++});
    return SQLITE_OK;
  }
  static int Truncate(sqlite3_file* f, sqlite3_int64 size) {
    if (Dead(f)) return SQLITE_IOERR_TRUNCATE;
    SimDisk* disk = Handle(f)->disk;
    Record(disk, FileOf(f), {static_cast<uint64_t>(size), "", true, disk->next_seq_++});
    return SQLITE_OK;
  }
  // Applies a change to the current image, keeping the disk's used bytes.
  static void Record(SimDisk* disk, SimDisk::File& file, SimDisk::Change change) {
    disk->used_bytes_ -= file.current.size();
    file.unsynced.push_back(std::move(change));
    SimDisk::ApplyTo(file.unsynced.back(), file.current);
    disk->used_bytes_ += file.current.size();
  }
  static int Sync(sqlite3_file* f, int flags) {
    SimFileHandle* h = Handle(f);
    if (Dead(f)) return SQLITE_IOERR_FSYNC;
    if (int rc = Fault(h->disk, SimDisk::Op::kSync, *h->name); rc != SQLITE_OK) return rc;
    SimDisk::File& file = FileOf(f);
    SimDisk* disk = h->disk;
    const Nanos now = disk->hooks_.now();
    // The planted lie returns at once, and the writes reach the disk only when the
    // drive's volatile cache is written back, a while later; a crash before then loses
    // them although SQLite was told they were durable.
    // A sync ends no earlier than one already in flight on the file (a killed
    // process's, say): fsync returns once everything dirty at the call is on disk.
    const Nanos not_before = file.in_flight.empty() ? now : file.in_flight.back().completes_at;
    const Nanos done =
        disk->hooks_.planted_skip_sync ? std::max(now + kLyingCacheWriteback, not_before)
        : disk->hooks_.begin_sync      ? disk->hooks_.begin_sync(*h->name, not_before)
                                       : not_before;
    KEEL_ASSERT(done >= now);
    KEEL_ASSERT(file.in_flight.empty() || file.in_flight.back().completes_at <= done);
    file.in_flight.push_back({done, std::move(file.unsynced), disk->next_seq_++});
    file.unsynced.clear();
    SimDisk::FoldCompleted(file, now);
    return SQLITE_OK;
  }
  static int FileSize(sqlite3_file* f, sqlite3_int64* size) {
    if (Dead(f)) return SQLITE_IOERR_FSTAT;
    *size = static_cast<sqlite3_int64>(FileOf(f).current.size());
    return SQLITE_OK;
  }
  static int Lock(sqlite3_file*, int) { return SQLITE_OK; }
  static int Unlock(sqlite3_file*, int) { return SQLITE_OK; }
  static int CheckReservedLock(sqlite3_file*, int* out) {
    *out = 0;
    return SQLITE_OK;
  }
  static int FileControl(sqlite3_file*, int, void*) { return SQLITE_NOTFOUND; }
  static int SectorSize(sqlite3_file*) { return 512; }
  // No atomic-write or safe-append promises: SQLite must assume writes can tear.
  static int DeviceCharacteristics(sqlite3_file*) { return 0; }

  // ---- vfs methods ----
  static int Open(sqlite3_vfs* vfs, const char* name, sqlite3_file* f, int flags, int* out) {
    SimDisk* disk = Disk(vfs);
    SimFileHandle* h = Handle(f);
    h->base.pMethods = nullptr;  // SQLite calls xClose only if this is set
    if (disk->powered_off_) return SQLITE_IOERR;
    std::string path = name != nullptr ? std::string(name)
                                       : absl::StrCat("temp-", ++disk->temp_counter_);
    auto it = disk->files_.find(path);
    if (it == disk->files_.end()) {
      if ((flags & SQLITE_OPEN_CREATE) == 0) return SQLITE_CANTOPEN;
      disk->files_.emplace(path, SimDisk::File{});
    }
    h->disk = disk;
    h->epoch = disk->epoch_;
    h->name = new std::string(std::move(path));
    h->delete_on_close = (flags & SQLITE_OPEN_DELETEONCLOSE) != 0;
    if (h->delete_on_close) disk->delete_on_close_.insert(*h->name);
    h->base.pMethods = &kIoMethods;
    ++disk->open_files_;
    if (out != nullptr) *out = flags;
    return SQLITE_OK;
  }
  static int Delete(sqlite3_vfs* vfs, const char* name, int) {
    if (Disk(vfs)->powered_off_) return SQLITE_IOERR_DELETE;
    Disk(vfs)->Remove(name);
    return SQLITE_OK;
  }
  static int Access(sqlite3_vfs* vfs, const char* name, int, int* out) {
    if (Disk(vfs)->powered_off_) return SQLITE_IOERR_ACCESS;
    *out = Disk(vfs)->files_.contains(name) ? 1 : 0;
    return SQLITE_OK;
  }
  static int FullPathname(sqlite3_vfs*, const char* name, int size, char* out) {
    if (static_cast<int>(std::strlen(name)) >= size) return SQLITE_CANTOPEN;
    std::strcpy(out, name);
    return SQLITE_OK;
  }
  static void* DlOpen(sqlite3_vfs*, const char*) { return nullptr; }
  static void DlError(sqlite3_vfs*, int size, char* out) {
    if (size > 0) out[0] = '\0';
  }
  static void (*DlSym(sqlite3_vfs*, void*, const char*))(void) { return nullptr; }
  static void DlClose(sqlite3_vfs*, void*) {}
  static int Randomness(sqlite3_vfs* vfs, int n, char* out) {
    Rng& rng = *Disk(vfs)->hooks_.rng;
    for (int k = 0; k < n; ++k) out[k] = static_cast<char>(rng.Next());
    return n;
  }
  static int Sleep(sqlite3_vfs*, int microseconds) { return microseconds; }
  static int CurrentTime(sqlite3_vfs* vfs, double* julian_day) {
    const double seconds = static_cast<double>(Disk(vfs)->hooks_.now().count()) / 1e9;
    *julian_day = 2440587.5 + seconds / 86400.0;  // the Unix epoch as a Julian day
    return SQLITE_OK;
  }
  static int GetLastError(sqlite3_vfs*, int, char*) { return 0; }

  static constexpr sqlite3_io_methods kIoMethods = {
      1,        Close, Read, Write, Truncate, Sync, FileSize, Lock, Unlock, CheckReservedLock,
      FileControl, SectorSize, DeviceCharacteristics,
      nullptr,  nullptr, nullptr, nullptr,  // shared memory: not supported (exclusive mode)
      nullptr,  nullptr,                    // mmap: not supported
  };
};

SimDisk::SimDisk(Hooks hooks) : hooks_(std::move(hooks)) {
  KEEL_ASSERT(hooks_.rng != nullptr && hooks_.now != nullptr);
  static std::atomic<uint64_t> next_id{1};  // only names the VFS; affects no behaviour
  name_ = absl::StrCat("keel-sim-disk-", next_id.fetch_add(1));
  vfs_ = new sqlite3_vfs{};
  vfs_->iVersion = 1;
  vfs_->szOsFile = sizeof(SimFileHandle);
  vfs_->mxPathname = 512;
  vfs_->zName = name_.c_str();
  vfs_->pAppData = this;
  vfs_->xOpen = SimVfsGlue::Open;
  vfs_->xDelete = SimVfsGlue::Delete;
  vfs_->xAccess = SimVfsGlue::Access;
  vfs_->xFullPathname = SimVfsGlue::FullPathname;
  vfs_->xDlOpen = SimVfsGlue::DlOpen;
  vfs_->xDlError = SimVfsGlue::DlError;
  vfs_->xDlSym = SimVfsGlue::DlSym;
  vfs_->xDlClose = SimVfsGlue::DlClose;
  vfs_->xRandomness = SimVfsGlue::Randomness;
  vfs_->xSleep = SimVfsGlue::Sleep;
  vfs_->xCurrentTime = SimVfsGlue::CurrentTime;
  vfs_->xGetLastError = SimVfsGlue::GetLastError;
  KEEL_ASSERT(sqlite3_vfs_register(vfs_, /*makeDflt=*/0) == SQLITE_OK);
}

SimDisk::~SimDisk() {
  KEEL_ASSERT(open_files_ == 0);
  sqlite3_vfs_unregister(vfs_);
  delete vfs_;
}

void SimDisk::ApplyTo(const Change& change, std::string& image) {
  if (change.truncate) {
    image.resize(change.offset);
    return;
  }
  const uint64_t end = change.offset + change.bytes.size();
  if (image.size() < end) image.resize(end, '\0');
  std::memcpy(image.data() + change.offset, change.bytes.data(), change.bytes.size());
}

void SimDisk::Remove(const std::string& name) {
  auto it = files_.find(name);
  if (it == files_.end()) return;
  used_bytes_ -= it->second.current.size();
  files_.erase(it);
}

void SimDisk::FoldCompleted(File& file, Nanos now) {
  while (!file.in_flight.empty() && file.in_flight.front().completes_at <= now) {
    for (const Change& c : file.in_flight.front().changes) ApplyTo(c, file.durable);
    file.in_flight.pop_front();
  }
}

void SimDisk::Crash(bool tear) {
  ++epoch_;
  powered_off_ = true;
  const Nanos now = hooks_.now();
  // Files to be deleted on close are gone after a crash, as the OS drops an unlinked
  // file's blocks once its last handle goes.
  for (const std::string& name : delete_on_close_) files_.erase(name);
  delete_on_close_.clear();
  used_bytes_ = 0;
  // The first sync still in flight: the process was blocked in it, so nothing it issued
  // afterwards happened.
  uint64_t cutoff = UINT64_MAX;
  for (auto& [name, file] : files_) {
    FoldCompleted(file, now);
    if (!file.in_flight.empty()) cutoff = std::min(cutoff, file.in_flight.front().seq);
  }
  for (auto& [name, file] : files_) {
    // The newest write issued before the cutoff that is not durable.
    const Change* last = nullptr;
    auto consider = [&](const Change& c) {
      if (c.seq < cutoff && (last == nullptr || c.seq > last->seq)) last = &c;
    };
    for (const InFlightSync& sync : file.in_flight) {
      for (const Change& c : sync.changes) consider(c);
    }
    for (const Change& c : file.unsynced) consider(c);
    if (tear && last != nullptr && !last->truncate) {
      // A power cut mid-write: some whole sectors of the last write made it.
      Change torn = *last;
      const uint64_t sectors = (torn.bytes.size() + 511) / 512;
      torn.bytes.resize(std::min<uint64_t>(hooks_.rng->Uniform(sectors + 1) * 512,
                                           torn.bytes.size()));
      if (!torn.bytes.empty()) ApplyTo(torn, file.durable);
    }
    file.unsynced.clear();
    file.in_flight.clear();
    file.current = file.durable;
    used_bytes_ += file.current.size();
  }
}

}  // namespace keel::storage

namespace keel::storage {

void SimDisk::SeedSqlite(uint64_t seed) {
  sqlite3_test_control(SQLITE_TESTCTRL_PRNG_SEED, static_cast<int>(seed ^ (seed >> 32)),
                       nullptr);
}

uint64_t SimDisk::DurableDigest() const {
  uint64_t h = 0xcbf29ce484222325ULL;
  auto add = [&h](std::string_view bytes) {
    for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ULL;
  };
  for (const auto& [name, file] : files_) {
    add(name);
    add(file.durable);
  }
  return h;
}

}  // namespace keel::storage
