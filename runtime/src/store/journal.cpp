#include "store/journal.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "store/store_util.h"
#include "xymqtt/exception.h"

namespace xymqtt::detail {
namespace {

constexpr std::uint32_t magic = 0x314a5958;  // "XYJ1"

[[noreturn]] void fail(const std::string& path, const char* what, int err) {
    throw_file_error("journal", what, path, err);
}

void put32(char* p, std::uint32_t v) { std::memcpy(p, &v, 4); }
void put64(char* p, std::uint64_t v) { std::memcpy(p, &v, 8); }
std::uint64_t get64(const char* p) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

// CRC over the header's length and sequence fields, then the body.
std::uint32_t record_crc(const char* header, const char* body, std::size_t n) {
    return crc32(crc32(0, header + 4, 12), body, n);
}

bool write_all(int fd, const char* p, std::size_t n, off_t off) {
    while (n > 0) {
        const ssize_t w = ::pwrite(fd, p, n, off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= static_cast<std::size_t>(w);
        off += w;
    }
    return true;
}

}  // namespace

std::uint32_t crc32(std::uint32_t crc, const void* data, std::size_t n) {
    // zlib's CRC-32 is the same function (same polynomial, inversion and chaining), and fast: every
    // record (journal, Paho's) carries a CRC over its payload, so a bytewise loop would cost ~160 us
    // per 64 KiB message. crc32_z takes a size_t length, so no piece is cut at uInt's maximum.
    // zlib answers 0 for a null buffer, whatever `crc`: an empty piece must leave the CRC as it is.
    if (n == 0) return crc;
    return static_cast<std::uint32_t>(::crc32_z(crc, static_cast<const Bytef*>(data), n));
}

journal::journal(std::string path, std::size_t capacity, mode m) : path_(std::move(path)), capacity_(capacity) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) fail(path_, "open", errno);
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
        const int err = errno;
        ::close(fd_);
        fail(path_, "stat", err);
    }
    // A journal written with a larger capacity is read in full (its records may reach that far).
    capacity_ = std::max(capacity_, static_cast<std::size_t>(st.st_size));
    if (static_cast<std::size_t>(st.st_size) < capacity_) {
        // Written once, in full: an append then overwrites allocated, initialized blocks, so its
        // fdatasync has no file-system metadata to commit (fallocate would leave unwritten extents).
        const std::vector<char> zeros(std::size_t(64) << 10, 0);
        for (std::size_t off = static_cast<std::size_t>(st.st_size); off < capacity_; off += zeros.size()) {
            const std::size_t n = std::min(zeros.size(), capacity_ - off);
            if (!write_all(fd_, zeros.data(), n, static_cast<off_t>(off))) {
                const int err = errno ? errno : EIO;
                ::close(fd_);
                fail(path_, "create", err);
            }
        }
        const auto slash = path_.rfind('/');
        const std::string dir = slash == std::string::npos ? "." : path_.substr(0, slash);
        const int err = ::fdatasync(fd_) != 0 ? errno : sync_dir(dir);
        if (err) {
            ::close(fd_);
            fail(path_, "sync", err);
        }
    }
    if (m == mode::mapped && capacity_ > 0) {
        void* p = ::mmap(nullptr, capacity_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        if (p == MAP_FAILED) {
            const int err = errno;
            ::close(fd_);
            fail(path_, "map", err);
        }
        map_ = static_cast<char*>(p);
    }
}

journal::~journal() {
    if (map_) ::munmap(map_, capacity_);
    if (fd_ >= 0) ::close(fd_);
}

std::vector<journal::record> journal::recover(std::uint64_t after) const {
    std::vector<char> buf(capacity_);
    std::size_t got = 0;
    while (got < capacity_) {
        const ssize_t r = ::pread(fd_, buf.data() + got, capacity_ - got, static_cast<off_t>(got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) fail(path_, "read", errno);
        if (r == 0) break;
        got += static_cast<std::size_t>(r);
    }
    // The run of records from offset 0 whose sequence numbers follow each other; those after `after`.
    // A record that is not whole ends the run. Past it, a whole record with a greater sequence number
    // than any before (and than `after`) can only be a later commit of this cycle whose predecessor was
    // damaged in place (a page the kernel wrote back out of order before a power loss, a bad sector): the
    // run goes on from there, so that one damaged record does not take the acknowledged ones after it.
    // Records of earlier cycles have smaller numbers, so the scan never takes them.
    auto whole = [&](std::size_t off, std::uint64_t& seq, std::size_t& len) {
        if (off + header_bytes > got) return false;
        const char* h = buf.data() + off;
        len = load_u32(h + 4);
        seq = get64(h + 8);
        return load_u32(h) == magic && len <= got - off - header_bytes &&
               record_crc(h, h + header_bytes, len) == load_u32(h + 16);
    };
    std::vector<record> out;
    std::uint64_t prev = 0;
    std::size_t off = 0;
    while (off + header_bytes <= got) {
        std::uint64_t seq = 0;
        std::size_t len = 0;
        if (!whole(off, seq, len) || (off > 0 && seq != prev + 1)) {
            // Resynchronise on the next whole record numbered past everything seen, if there is one.
            const std::uint64_t floor = std::max(prev, after);
            std::size_t next = off + 1;
            for (; next + header_bytes <= got; ++next)
                if (whole(next, seq, len) && seq > floor) break;
            if (next + header_bytes > got) break;
            off = next;
        }
        if (seq > after) out.push_back(record{seq, std::string(buf.data() + off + header_bytes, len)});
        prev = seq;
        off += header_bytes + len;
    }
    return out;
}

void journal::append(std::uint64_t seq, const std::string& body) {
    char h[header_bytes];
    put32(h, magic);
    put32(h + 4, static_cast<std::uint32_t>(body.size()));
    put64(h + 8, seq);
    put32(h + 16, record_crc(h, body.data(), body.size()));
    if (map_) {
        // The file's blocks were written when it was created, so these stores cannot fault on a full disk.
        std::memcpy(map_ + offset_ + header_bytes, body.data(), body.size());
        std::memcpy(map_ + offset_, h, header_bytes);
        offset_ += header_bytes + body.size();
        return;
    }
    // Header and body in one system call, without copying the body.
    iovec iov[2] = {{h, header_bytes}, {const_cast<char*>(body.data()), body.size()}};
    const ssize_t w = ::pwritev(fd_, iov, 2, static_cast<off_t>(offset_));
    const std::size_t done = w < 0 ? 0 : static_cast<std::size_t>(w);
    bool ok = w >= 0;
    if (ok && done < header_bytes)
        ok = write_all(fd_, h + done, header_bytes - done, static_cast<off_t>(offset_ + done)) &&
             write_all(fd_, body.data(), body.size(), static_cast<off_t>(offset_ + header_bytes));
    else if (ok && done < header_bytes + body.size())
        ok = write_all(fd_, body.data() + (done - header_bytes), header_bytes + body.size() - done,
                       static_cast<off_t>(offset_ + done));
    if (!ok || ::fdatasync(fd_) != 0) {
        const int err = errno ? errno : EIO;
        // Best effort: a record that may have reached the disk must not be replayed after a failed
        // commit. Its header is cleared; the next append overwrites it anyway.
        const char zeros[header_bytes] = {};
        write_all(fd_, zeros, header_bytes, static_cast<off_t>(offset_));
        fail(path_, "append to", err);
    }
    offset_ += header_bytes + body.size();
}

}  // namespace xymqtt::detail
