// The disk bound of fsync durability, measured on the filesystem of the stores: single-message synced
// commit rates (one put per commit, as the receive callback does) of LMDB with its default flags (the
// bound docs/benchmarks.md reports against), of the stores as shipped, and of a bare fdatasync.
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>

#include "common.h"
#include "xymqtt/store.h"

namespace bench {

namespace {

double store_rate(const std::string& dir, xymqtt::store_kind kind, xymqtt::durability d, long n,
                  std::size_t journal_bytes = xymqtt::store_options{}.journal_bytes) {
    std::filesystem::remove_all(dir);
    xymqtt::store_options so;
    so.durability = d;
    so.journal_bytes = journal_bytes;
    auto s = xymqtt::open_store(kind, dir, so);
    const std::string value(150, 'v');
    for (long i = 0; i < 20; ++i) s->commit({{xymqtt::table::incoming, xymqtt::sequence_id(std::uint64_t(i)), value}});
    const auto t0 = mono_ns();
    for (long i = 0; i < n; ++i)
        s->commit({{xymqtt::table::incoming, xymqtt::sequence_id(std::uint64_t(1000 + i)), value}});
    const double secs = double(mono_ns() - t0) / 1e9;
    s.reset();
    std::filesystem::remove_all(dir);
    return double(n) / secs;
}

double fdatasync_rate(const std::string& dir, long n) {
    std::filesystem::create_directories(dir);
    const auto path = dir + "/fdatasync.bin";
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) throw std::runtime_error("cannot open " + path);
    // Preallocated and synced first: each fdatasync then flushes data only, no file-size change.
    const std::string block(4096, 'z');
    for (int i = 0; i < 64; ++i)
        if (::write(fd, block.data(), block.size()) < 0) throw std::runtime_error("write failed");
    ::fsync(fd);
    const std::string value(150, 'v');
    const auto t0 = mono_ns();
    for (long i = 0; i < n; ++i) {
        if (::pwrite(fd, value.data(), value.size(), off_t(i % 64) * 4096) < 0 || ::fdatasync(fd) != 0) {
            ::close(fd);
            throw std::runtime_error("write/fdatasync failed");
        }
    }
    const double secs = double(mono_ns() - t0) / 1e9;
    ::close(fd);
    std::filesystem::remove(path);
    return double(n) / secs;
}

}  // namespace

int disk_main(const args& a) {
    const auto dir = a.str("dir", "/tmp/xybench-disk");
    const long n = a.num("count", 2000);
    result r;
    r.set("mode", "disk").set("count", double(n));
    r.set("fdatasync_per_s", fdatasync_rate(dir + "/raw", n));
    // Without the write-ahead journal: every commit is an LMDB transaction with default flags (two syncs).
    r.set("lmdb_fsync_commits_per_s",
          store_rate(dir + "/lmdb", xymqtt::store_kind::lmdb, xymqtt::durability::fsync, n, 0));
    r.set("lmdb_journal_commits_per_s",
          store_rate(dir + "/lmdbj", xymqtt::store_kind::lmdb, xymqtt::durability::fsync, n));
    r.set("sqlite_fsync_commits_per_s",
          store_rate(dir + "/sqlite", xymqtt::store_kind::sqlite, xymqtt::durability::fsync, n));
    r.set("lmdb_process_commits_per_s",
          store_rate(dir + "/lmdbp", xymqtt::store_kind::lmdb, xymqtt::durability::process, n * 10));
    r.print();
    return 0;
}

}  // namespace bench
