#include "store/session_records_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string_view>

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

std::size_t record_bytes(std::size_t key_bytes, std::size_t value_bytes) {
    return header_bytes + key_bytes + value_bytes;
}

// The 12-byte header of a record: CRC-32 of the rest of the header, the key and the value; the key
// length (top bit set for a removal); the value length.
void make_header(char* h, std::string_view key, const std::string_view* value) {
    const auto klen = static_cast<std::uint32_t>(key.size());
    const auto vlen = static_cast<std::uint32_t>(value ? value->size() : 0);
    const std::uint32_t fields[2] = {value ? klen : klen | removal_bit, vlen};
    std::memcpy(h + 4, fields, 8);
    std::uint32_t crc = crc32(crc32(0, h + 4, 8), key.data(), klen);
    if (vlen) crc = crc32(crc, value->data(), vlen);
    std::memcpy(h, &crc, 4);
}

// Writes one record into the mapping at `out`: the body first, so that a header is only ever complete
// over a complete body, whatever the moment the process dies.
void write_record(char* out, std::string_view key, const std::string_view* value) {
    char* body = out + header_bytes;
    std::memcpy(body, key.data(), key.size());
    if (value && !value->empty()) std::memcpy(body + key.size(), value->data(), value->size());
    char h[header_bytes];
    make_header(h, key, value);
    std::memcpy(out, h, header_bytes);
}

// Writes all of `iov` at `off` of `fd`. @return 0 or an errno
int pwrite_all(int fd, std::vector<iovec> iov, off_t off) {
    std::size_t first = 0;
    while (first < iov.size()) {
        const ssize_t w = ::pwritev(fd, iov.data() + first, static_cast<int>(std::min<std::size_t>(iov.size() - first, IOV_MAX)), off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        off += w;
        for (auto left = static_cast<std::size_t>(w); left > 0 && first < iov.size();) {
            const std::size_t take = std::min(left, iov[first].iov_len);
            iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + take;
            iov[first].iov_len -= take;
            left -= take;
            if (iov[first].iov_len == 0) ++first;
        }
    }
    return 0;
}

std::size_t page_round(std::size_t n) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return (n + page - 1) / page * page;
}

}  // namespace

session_records_file::session_records_file(const std::string& dir, bool durable_compaction, std::size_t min_capacity)
    : dir_(dir), path_(dir + "/records"), durable_compaction_(durable_compaction), min_capacity_(min_capacity) {
    make_private_dir(dir_);
    // Drops removed records and a torn tail, and maps a file with room to write.
    std::vector<std::pair<std::string, std::string>> loaded;
    for (auto& [k, v] : load()) loaded.emplace_back(k, std::move(v));
    std::vector<std::pair<std::string_view, std::string_view>> live;
    for (const auto& [k, v] : loaded) live.emplace_back(k, v);
    rewrite(live, 0);
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

std::unordered_map<std::string, std::string> session_records_file::load() const {
    std::unordered_map<std::string, std::string> out;
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return out;
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
        const std::size_t n = record_bytes(klen, vlen);
        if (n > got - off || load_u32(h) != crc32(crc32(0, h + 4, 8), h + header_bytes, n - header_bytes)) break;
        std::string key(h + header_bytes, klen);
        if (removal)
            out.erase(key);
        else
            out[std::move(key)].assign(h + header_bytes + klen, vlen);
        off += n;
    }
    return out;
}

void session_records_file::compact(std::size_t extra) {
    std::vector<std::pair<std::string_view, std::string_view>> live;
    live.reserve(records_.size());
    for (const auto& [k, at] : records_) live.emplace_back(k, std::string_view(map_ + at.off, at.len));
    rewrite(live, extra);
}

void session_records_file::rewrite(const std::vector<std::pair<std::string_view, std::string_view>>& live,
                                   std::size_t extra) {
    std::size_t bytes = 0;
    for (const auto& [k, v] : live) bytes += record_bytes(k.size(), v.size());
    const std::size_t cap = page_round(std::max(min_capacity_, 4 * (bytes + extra)));
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
    // Written with pwritev, not through the new mapping: a page written through a mapping costs a fault.
    std::unordered_map<std::string, location> located;
    located.reserve(live.size());
    std::vector<char> headers(live.size() * header_bytes);
    std::vector<iovec> iov;
    iov.reserve(live.size() * 3);
    std::size_t used = 0;
    for (std::size_t i = 0; i < live.size(); ++i) {
        const auto& [k, v] = live[i];
        char* h = headers.data() + i * header_bytes;
        make_header(h, k, &v);
        iov.push_back({h, header_bytes});
        iov.push_back({const_cast<char*>(k.data()), k.size()});
        if (!v.empty()) iov.push_back({const_cast<char*>(v.data()), v.size()});
        located.emplace(std::string(k), location{used + header_bytes + k.size(), v.size()});
        used += record_bytes(k.size(), v.size());
    }
    if (const int err = pwrite_all(fd, std::move(iov), 0)) abandon("write", err);
    if (durable_compaction_ && ::fdatasync(fd) != 0) abandon("sync", errno);
    void* m = ::mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) abandon("map", errno);
    map = static_cast<char*>(m);
    if (::rename(tmp.c_str(), path_.c_str()) != 0) abandon("rename", errno);
    unmap();
    fd_ = fd;
    map_ = map;
    capacity_ = cap;
    used_ = used;
    records_ = std::move(located);
    if (durable_compaction_) {
        // The rename itself must survive a power loss too.
        if (const int err = sync_dir(dir_)) fail(dir_, "sync", err);
    }
}

std::size_t session_records_file::append(const std::string& key, const std::string* value) {
    const std::size_t vlen = value ? value->size() : 0;
    const std::size_t n = record_bytes(key.size(), vlen);
    if (used_ + n > capacity_) compact(n);
    const std::string_view v = value ? std::string_view(*value) : std::string_view();
    if (vlen < pwrite_above) {
        write_record(map_ + used_, key, value ? &v : nullptr);
    } else {
        // A large record costs a page fault per page through the mapping; one system call is cheaper.
        char h[header_bytes];
        make_header(h, key, &v);
        std::vector<iovec> iov{{h, header_bytes}, {const_cast<char*>(key.data()), key.size()},
                               {const_cast<char*>(v.data()), v.size()}};
        if (const int err = pwrite_all(fd_, std::move(iov), static_cast<off_t>(used_))) fail(path_, "write", err);
    }
    const std::size_t at = used_ + header_bytes + key.size();
    used_ += n;
    return at;
}

void session_records_file::put(const std::string& key, const std::string& value, bool sync) {
    std::lock_guard<std::mutex> lk(mu_);
    const std::size_t at = append(key, &value);
    records_[key] = location{at, value.size()};
    // The shared mapping's dirty pages are the file's page cache: syncing the file writes them.
    if (sync && ::fdatasync(fd_) != 0) fail(path_, "sync", errno);
}

std::optional<std::string> session_records_file::get(const std::string& key) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = records_.find(key);
    if (it == records_.end()) return std::nullopt;
    return std::string(map_ + it->second.off, it->second.len);
}

void session_records_file::remove(const std::string& key) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = records_.find(key);
    if (it == records_.end()) return;
    append(key, nullptr);
    records_.erase(key);
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
    rewrite({}, 0);
}

std::size_t session_records_file::capacity() const {
    std::lock_guard<std::mutex> lk(mu_);
    return capacity_;
}

}  // namespace xymqtt::detail
