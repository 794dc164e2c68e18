#include "store/session_records_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "store/journal.h"
#include "store/store_util.h"
#include "xymqtt/exception.h"

namespace xymqtt::detail {
namespace {

constexpr std::size_t header_bytes = 12;
constexpr std::uint32_t removal_bit = 0x80000000u;

[[noreturn]] void fail(const std::string& path, const char* what, int err) {
    throw_file_error("paho records", what, path, err);
}

std::size_t record_bytes(const std::string& key, const std::string* value) {
    return header_bytes + key.size() + (value ? value->size() : 0);
}

// Writes one record at `out` (record_bytes long): the body first, so that a header is only ever
// complete over a complete body, whatever the moment the process dies.
void write_record(char* out, const std::string& key, const std::string* value) {
    const auto klen = static_cast<std::uint32_t>(key.size());
    const auto vlen = static_cast<std::uint32_t>(value ? value->size() : 0);
    char* body = out + header_bytes;
    std::memcpy(body, key.data(), klen);
    if (vlen) std::memcpy(body + klen, value->data(), vlen);
    const std::uint32_t fields[2] = {value ? klen : klen | removal_bit, vlen};
    std::memcpy(out + 4, fields, 8);
    const std::uint32_t crc = crc32(crc32(0, out + 4, 8), body, std::size_t(klen) + vlen);
    std::memcpy(out, &crc, 4);
}

std::size_t page_round(std::size_t n) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return (n + page - 1) / page * page;
}

}  // namespace

session_records_file::session_records_file(const std::string& dir, bool durable_compaction, std::size_t min_capacity)
    : dir_(dir), path_(dir + "/records"), durable_compaction_(durable_compaction), min_capacity_(min_capacity) {
    make_private_dir(dir_);
    load();
    compact(0);  // drops removed records and a torn tail, and maps a file with room to write
}

session_records_file::session_records_file(const std::string& dir, const store_options& opts)
    : session_records_file(dir, opts.durability == durability::fsync) {}

session_records_file::~session_records_file() { unmap(); }

void session_records_file::unmap() {
    if (map_) ::munmap(map_, capacity_);
    if (fd_ >= 0) ::close(fd_);
    map_ = nullptr;
    fd_ = -1;
}

void session_records_file::load() {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return;
        fail(path_, "open", errno);
    }
    struct stat st {};
    std::string bytes;
    if (::fstat(fd, &st) == 0) bytes.resize(static_cast<std::size_t>(st.st_size));
    std::size_t got = 0;
    while (got < bytes.size()) {
        const ssize_t r = ::pread(fd, bytes.data() + got, bytes.size() - got, static_cast<off_t>(got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += static_cast<std::size_t>(r);
    }
    ::close(fd);
    // The log ends at the first record that is not whole: the unused (zero) end, or a torn write.
    for (std::size_t off = 0; off + header_bytes <= got;) {
        const char* h = bytes.data() + off;
        const std::uint32_t klen = load_u32(h + 4) & ~removal_bit;
        const std::uint32_t vlen = load_u32(h + 8);
        const bool removal = load_u32(h + 4) & removal_bit;
        const std::size_t n = header_bytes + std::size_t(klen) + vlen;
        if (n > got - off || load_u32(h) != crc32(crc32(0, h + 4, 8), h + header_bytes, n - header_bytes)) break;
        std::string key(h + header_bytes, klen);
        if (removal)
            records_.erase(key);
        else
            records_[std::move(key)].assign(h + header_bytes + klen, vlen);
        off += n;
    }
}

void session_records_file::compact(std::size_t extra) {
    std::size_t live = 0;
    for (const auto& [k, v] : records_) live += record_bytes(k, &v);
    const std::size_t cap = page_round(std::max(min_capacity_, 2 * (live + extra)));
    const std::string tmp = path_ + ".new";
    const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) fail(tmp, "open", errno);
    char* map = nullptr;
    auto abandon = [&](const char* what, int err) {
        if (map) ::munmap(map, cap);
        ::close(fd);
        ::unlink(tmp.c_str());
        fail(tmp, what, err);
    };
    // Blocks reserved up front: see the file comment (SIGBUS).
    if (const int err = ::posix_fallocate(fd, 0, static_cast<off_t>(cap))) abandon("allocate", err);
    void* m = ::mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) abandon("map", errno);
    map = static_cast<char*>(m);
    std::size_t used = 0;
    for (const auto& [k, v] : records_) {
        write_record(map + used, k, &v);
        used += record_bytes(k, &v);
    }
    if (durable_compaction_ && ::fdatasync(fd) != 0) abandon("sync", errno);
    if (::rename(tmp.c_str(), path_.c_str()) != 0) abandon("rename", errno);
    unmap();
    fd_ = fd;
    map_ = map;
    capacity_ = cap;
    used_ = used;
    if (durable_compaction_) {
        // The rename itself must survive a power loss too.
        if (const int err = sync_dir(dir_)) fail(dir_, "sync", err);
    }
}

void session_records_file::append(const std::string& key, const std::string* value) {
    const std::size_t n = record_bytes(key, value);
    if (used_ + n > capacity_) compact(n);
    write_record(map_ + used_, key, value);
    used_ += n;
}

void session_records_file::put(const std::string& key, const std::string& value, bool sync) {
    std::lock_guard<std::mutex> lk(mu_);
    append(key, &value);
    records_[key] = value;
    // The shared mapping's dirty pages are the file's page cache: syncing the file writes them.
    if (sync && ::fdatasync(fd_) != 0) fail(path_, "sync", errno);
}

std::optional<std::string> session_records_file::get(const std::string& key) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = records_.find(key);
    if (it == records_.end()) return std::nullopt;
    return it->second;
}

void session_records_file::remove(const std::string& key) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = records_.find(key);
    if (it == records_.end()) return;
    append(key, nullptr);
    records_.erase(it);
}

std::vector<std::string> session_records_file::keys() const {
    std::vector<std::string> out;
    {
        std::lock_guard<std::mutex> lk(mu_);
        out.reserve(records_.size());
        for (const auto& [k, v] : records_) out.push_back(k);
    }
    std::sort(out.begin(), out.end());
    return out;
}

void session_records_file::clear() {
    std::lock_guard<std::mutex> lk(mu_);
    auto kept = std::move(records_);
    records_.clear();
    try {
        compact(0);
    } catch (...) {
        records_ = std::move(kept);
        throw;
    }
}

std::size_t session_records_file::capacity() const {
    std::lock_guard<std::mutex> lk(mu_);
    return capacity_;
}

}  // namespace xymqtt::detail
