#pragma once
// Little-endian fixed-width encoding for keel's own binary formats (snapshots,
// frames). ByteReader never reads past its input: every read says whether it fit, so
// bytes from a peer or the disk are validated, never trusted.

#include <cstdint>
#include <string>
#include <string_view>

namespace keel {

inline void PutU64(std::string* out, uint64_t v) {
  char buf[8];
  for (int k = 0; k < 8; ++k) buf[k] = static_cast<char>(v >> (8 * k));
  out->append(buf, 8);
}
inline void PutI64(std::string* out, int64_t v) { PutU64(out, static_cast<uint64_t>(v)); }
inline void PutU32(std::string* out, uint32_t v) {
  char buf[4];
  for (int k = 0; k < 4; ++k) buf[k] = static_cast<char>(v >> (8 * k));
  out->append(buf, 4);
}

class ByteReader {
 public:
  explicit ByteReader(std::string_view data) : data_(data) {}
  bool U64(uint64_t* v) {
    if (data_.size() < 8) return false;
    *v = 0;
    for (int k = 0; k < 8; ++k) *v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[k])) << (8 * k);
    data_.remove_prefix(8);
    return true;
  }
  bool I64(int64_t* v) {
    uint64_t u = 0;
    if (!U64(&u)) return false;
    *v = static_cast<int64_t>(u);
    return true;
  }
  bool U32(uint32_t* v) {
    if (data_.size() < 4) return false;
    *v = 0;
    for (int k = 0; k < 4; ++k) *v |= static_cast<uint32_t>(static_cast<uint8_t>(data_[k])) << (8 * k);
    data_.remove_prefix(4);
    return true;
  }
  // A view of the next n bytes (valid while the input is).
  bool View(uint64_t n, std::string_view* out) {
    if (data_.size() < n) return false;
    *out = data_.substr(0, n);
    data_.remove_prefix(n);
    return true;
  }
  bool Bytes(uint64_t n, std::string* out) {
    std::string_view v;
    if (!View(n, &v)) return false;
    out->assign(v);
    return true;
  }
  size_t remaining() const { return data_.size(); }
  bool Done() const { return data_.empty(); }

 private:
  std::string_view data_;
};

}  // namespace keel
